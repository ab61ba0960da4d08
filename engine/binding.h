/*
** binding.h: what the Lua binding files share (lweft.c opens the module,
** lcontext.c adds the context functions).
*/
#ifndef WEFT_BINDING_H
#define WEFT_BINDING_H

#include <stdbool.h>
#include <stddef.h>

#include <lua.h>

/*
** Argument arg as a duration in seconds: a number (>= 0, may be inf) or a
** string parsed by the LPeg grammar of lua/weft/duration.lua.  Raises an
** argument error otherwise.
*/
double weft_check_duration(lua_State *L, int arg);

/*
** Guards: a userdata holding one engine reference (a value buffer, or a
** shared object such as a context) while Lua calls that may raise run, so
** a raise leaks nothing.  Push one, store the pointer in it, and take it
** back once nothing can raise any more.
*/
void **weft_guard_buf(lua_State *L);
void **weft_guard_object(lua_State *L);
void *weft_guard_take(void **g);

/*
** Blocking calls (lwait.c).  A blocking C function pushes a block, then
** loops: reset it, check its condition, register the sources it waits on
** (each on_* returns false when that source has already fired: check
** again), and wait.  In a job's coroutine weft_block_wait yields and the
** job resumes at k (which runs the loop again); elsewhere it blocks the
** thread and returns.  The block's __gc unregisters whatever an error
** left registered.
*/
struct weft_ctx;
struct weft_future;
struct weft_pool;
typedef struct weft_block weft_block;

weft_block *weft_block_new(lua_State *L);        /* pushes it */
/*
** A block with extra zeroed space for registrations the caller keeps
** itself (channel operations): reset calls hook(extra, false) first, to
** undo them; __gc calls hook(extra, false) then hook(extra, true), to free
** what they hold.  The hook must not raise.
*/
struct weft_park;
weft_block *weft_block_new_ex(lua_State *L, size_t extra,
                              void (*hook)(void *extra, bool final));
void *weft_block_extra(weft_block *b);
/* What the extra registrations wait for, for deadlock detection
   (pool.h: WEFT_WAIT_FUTURE and a future, ...); default: other. */
void weft_block_set_wait(weft_block *b, int kind, void *target);
struct weft_park *weft_block_park(weft_block *b);
void weft_block_reset(weft_block *b);             /* unregisters all */
/* Arms a timeout (once, before the loop); may raise. */
void weft_block_set_timeout(lua_State *L, weft_block *b, double seconds);
bool weft_block_on_timeout(weft_block *b);        /* false: it expired */
/* A new timeout from now (after a reset). */
void weft_block_rearm(lua_State *L, weft_block *b, double seconds);
bool weft_block_on_ctx(weft_block *b, struct weft_ctx *c);
bool weft_block_on_future(weft_block *b, struct weft_future *f);
bool weft_block_on_admit(weft_block *b, struct weft_pool *p);
bool weft_block_on_idle(weft_block *b, struct weft_pool *p);
void weft_block_wait(lua_State *L, weft_block *b, lua_KContext kctx,
                     lua_KFunction k);
/* In a job stopped by hard cancel (its context ended, or pool:close gave
   up): the error it fails with at its blocking call; else NULL. */
const char *weft_block_canceled(weft_block *b);
/* After a reset: the deadlock message when the pool found this wait
   hopeless (the call then fails with it), else NULL. */
const char *weft_block_deadlock(weft_block *b);

/* Adds the context functions to the module table on top of the stack and
   registers the context metatable. */
void weft_open_context(lua_State *L);

/* ctx:wait([duration]): parks in a job, blocks elsewhere (lpool.c). */
int weft_ctx_wait_lua(lua_State *L);

/* Adds the pool and future functions (lpool.c). */
void weft_open_pool(lua_State *L);

/* Adds weft.chan, weft.select and the channel metatable (lchan.c). */
void weft_open_chan(lua_State *L);

/* Pushes a resolved future's outcome as future:wait gives it (true,
   results... or false, err); returns the count.  May raise (lpool.c). */
struct weft_future;
int weft_push_outcome(lua_State *L, struct weft_future *f);

/* future:on_done(fn), and weft.poll and weft._host_call (host.c). */
int weft_future_on_done(lua_State *L);
void weft_open_host(lua_State *L);

/* Adds weft.exec (lexec.c). */
void weft_open_exec(lua_State *L);

/* Adds weft._catch_signals, for the weft command (lsignal.c). */
void weft_open_signals(lua_State *L);

/* Adds weft._progress, the weft command's status line (lprogress.c). */
void weft_open_progress(lua_State *L);

#endif
