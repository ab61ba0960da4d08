/*
** lpool.c: the Lua binding of pools and futures (DESIGN.md, "Pools"):
** weft.pool, pool:submit/try_submit/wait/close/stats, future:wait/done,
** and weft.sleep.
**
** Owns: nothing shared (pools and futures live in pool.c, future.c).  The
** state that made a pool owns it: its handle's __gc there closes the pool
** (once the futures submitted there are unreachable too: each holds the
** pool's handle); handles in other states only drop their reference.
** Locking: none here; arguments are checked and values encoded before any
** engine call.
*/
#include <limits.h>
#include <math.h>
#include <string.h>

#include <lauxlib.h>

#include "binding.h"
#include "context.h"
#include "future.h"
#include "pool.h"
#include "runtime.h"

#define SATURATED_MSG "saturated"
#define CLOSED_MSG "closed"

static weft_pool *check_pool(lua_State *L, int arg) {
  return (weft_pool *)weft_check_object(L, arg, &weft_pool_class);
}

static weft_future *check_future(lua_State *L, int arg) {
  return (weft_future *)weft_check_object(L, arg, &weft_future_class);
}

/* ---------------------------------------------------------------------- */
/* weft.pool{...} */

static int opt_int(lua_State *L, const char *key, int def, int min) {
  int t = lua_getfield(L, 1, key);
  int v = def;
  if (t != LUA_TNIL) {
    int isnum;
    lua_Integer i = lua_tointegerx(L, -1, &isnum);
    if (!isnum || t != LUA_TNUMBER)
      luaL_error(L, "bad option '%s' to 'pool' (integer expected, got %s)",
                 key, luaL_typename(L, -1));
    if (i < min || i > 1000000)
      luaL_error(L, "bad option '%s' to 'pool' (must be between %d and 1000000)",
                 key, min);
    v = (int)i;
  }
  lua_pop(L, 1);
  return v;
}

static const char *const pool_options[] = {
    "workers", "limit", "queue", "init", "name", "on_panic", "hard_cancel",
    "memory_limit", NULL};

static void check_options(lua_State *L) {
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    lua_pop(L, 1);
    const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    int known = 0;
    for (int i = 0; k != NULL && pool_options[i] != NULL; i++)
      known |= strcmp(k, pool_options[i]) == 0;
    if (!known)
      luaL_error(L, "bad argument #1 to 'pool' (unknown option %s)",
                 luaL_tolstring(L, -1, NULL));
  }
}

/* memory_limit: bytes per worker state (an integer >= 1 MB), or nil. */
static size_t opt_memory(lua_State *L) {
  int t = lua_getfield(L, 1, "memory_limit");
  size_t v = 0;
  if (t != LUA_TNIL) {
    int isnum;
    lua_Integer i = lua_tointegerx(L, -1, &isnum);
    if (!isnum || t != LUA_TNUMBER || i < (1 << 20))
      luaL_error(L, "bad option 'memory_limit' to 'pool' (an integer number "
                    "of bytes >= 1048576 expected)");
    v = (size_t)i;
  }
  lua_pop(L, 1);
  return v;
}

static int l_pool(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  check_options(L);
  lua_getglobal(L, "package");  /* the workers search where we search */
  weft_pool_config cfg;
  memset(&cfg, 0, sizeof cfg);
  lua_getfield(L, 2, "path");
  lua_getfield(L, 2, "cpath");
  cfg.path = lua_tostring(L, 3);
  cfg.cpath = lua_tostring(L, 4);
  cfg.workers = opt_int(L, "workers", 0, 1);
  if (cfg.workers == 0) {
    lua_getfield(L, lua_upvalueindex(1), "ncpu");
    lua_call(L, 0, 1);
    cfg.workers = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  cfg.limit = opt_int(L, "limit", cfg.workers, 1);
  if (cfg.limit < cfg.workers)
    luaL_error(L, "bad option 'limit' to 'pool' (%d is less than workers, %d)",
               cfg.limit, cfg.workers);
  cfg.queue = opt_int(L, "queue", 0, 0);
  cfg.memory_limit = opt_memory(L);
  int t = lua_getfield(L, 1, "name");
  if (t != LUA_TNIL && t != LUA_TSTRING)
    luaL_error(L, "bad option 'name' to 'pool' (string expected, got %s)",
               luaL_typename(L, -1));
  cfg.name = t == LUA_TSTRING ? lua_tostring(L, -1) : "pool";
  t = lua_getfield(L, 1, "hard_cancel");
  if (t != LUA_TNIL && t != LUA_TBOOLEAN)
    luaL_error(L, "bad option 'hard_cancel' to 'pool' (boolean expected, got %s)",
               luaL_typename(L, -1));
  cfg.hard_cancel = t == LUA_TNIL || lua_toboolean(L, -1);
  t = lua_getfield(L, 1, "init");
  if (t != LUA_TNIL && t != LUA_TFUNCTION && t != LUA_TSTRING)
    luaL_error(L, "bad option 'init' to 'pool' (function or module name "
                  "expected, got %s)", luaL_typename(L, -1));
  t = lua_getfield(L, 1, "on_panic");
  if (t != LUA_TNIL && t != LUA_TFUNCTION)
    luaL_error(L, "bad option 'on_panic' to 'pool' (function expected, got %s)",
               luaL_typename(L, -1));
  int init = lua_gettop(L) - 1, on_panic = lua_gettop(L);
  void **gi = weft_guard_buf(L);
  void **gp = weft_guard_buf(L);
  if (!lua_isnil(L, init)) *gi = weft_buf_encode(L, init, 1, "init", 0);
  if (!lua_isnil(L, on_panic))
    *gp = weft_buf_encode(L, on_panic, 1, "on_panic", 0);
  weft_runtime *rt = weft_runtime_of(L);
  cfg.init = weft_guard_take(gi);
  cfg.on_panic = weft_guard_take(gp);
  char err[300];
  weft_pool *p = weft_pool_new(rt, &cfg, err, sizeof err);
  if (p == NULL) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  void **g = weft_guard_object(L);
  *g = p;
  weft_push_object(L, (weft_object *)p);
  weft_handle_mark(L, -1);  /* the owner's handle: its __gc closes the pool */
  weft_release(weft_guard_take(g));
  return 1;
}

/* ---------------------------------------------------------------------- */
/* submit */

/*
** The handle of a future a submit made (on top) keeps the pool's handle
** (at 1) alive: the owner's __gc closes the pool, waiting for its jobs,
** and a collection must not stall there while the future can still be
** waited on.
*/
static void hold_pool(lua_State *L) {
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
}

/* Pushes the future of a successful submit, or nil and the error. */
static int submit_result(lua_State *L, int r, weft_future *f) {
  switch (r) {
    case WEFT_SUBMIT_OK: {
      void **g = weft_guard_object(L);  /* pushing the handle may raise */
      *g = f;
      weft_push_unbound(L, &weft_future_class, 1);
      weft_bind_handle(L, -1, weft_guard_take(g));
      hold_pool(L);
      return 1;
    }
    case WEFT_SUBMIT_CLOSED:
      lua_pushnil(L);
      lua_pushliteral(L, CLOSED_MSG);
      return 2;
    case WEFT_SUBMIT_FULL:
      lua_pushnil(L);
      lua_pushliteral(L, SATURATED_MSG);
      return 2;
    default:
      return luaL_error(L, "not enough memory");
  }
}

/* A submit's checked arguments, and its encoded call (fn and arguments)
   in a guard (submit_k: at kc - 1). */
typedef struct call {
  weft_pool *pool;
  weft_ctx *ctx;
  void **guard;
} call;

/* Pushes the guard of the call of submit(pool, ctx, fn, ...). */
static void push_call(lua_State *L) {
  check_pool(L, 1);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  int n = lua_gettop(L) - 2;
  void **g = weft_guard_buf(L);
  *g = weft_buf_encode(L, 3, n, "args", 1);
}

/* Tries the submit once without blocking: pushes its results and returns
   their count, or 0 when the pool is full. */
static int submit_once(lua_State *L, const call *c) {
  weft_future *f = NULL;
  int r = weft_pool_try_submit(c->pool, c->ctx, *c->guard, &f);
  if (r == WEFT_SUBMIT_FULL) return 0;
  if (r == WEFT_SUBMIT_OK) weft_guard_take(c->guard);  /* the job owns it */
  return submit_result(L, r, f);
}

/*
** The common case, with no guard (a finalized userdata per call cost more
** than the rest of a submit): the future's handle is pushed before the
** call is encoded, and nothing raises between the encoding and the handle
** owning the future.  Returns the results' count, or 0 (nothing pushed)
** when the pool is full and the caller goes the guarded way.
*/
static int submit_fast(lua_State *L, weft_ctx *ctx, bool saturated) {
  weft_pool *pool = check_pool(L, 1);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  int n = lua_gettop(L) - 2;
  weft_push_unbound(L, &weft_future_class, 1);
  weft_buf *b = weft_buf_encode(L, 3, n, "args", 1);
  weft_future *f = NULL;
  int r = weft_pool_try_submit(pool, ctx, b, &f);
  if (r == WEFT_SUBMIT_OK) {
    weft_bind_handle(L, -1, (weft_object *)f);
    hold_pool(L);
    return 1;
  }
  weft_buf_release(b);
  lua_pop(L, 1);
  if (r == WEFT_SUBMIT_FULL && !saturated) return 0;
  return submit_result(L, r, NULL);
}

static int p_try_submit(lua_State *L) {
  return submit_fast(L, weft_check_ctx(L, 2), true);
}

/* stack: pool, ctx, ..., guard (call) at kc - 1, block at kc */
static int submit_k(lua_State *L, int status, lua_KContext kc) {
  (void)status;
  weft_block *b = lua_touserdata(L, (int)kc);
  call c = {check_pool(L, 1), weft_check_ctx(L, 2), lua_touserdata(L, (int)kc - 1)};
  for (;;) {
    weft_block_reset(b);
    const char *dl = weft_block_deadlock(b);
    if (dl != NULL) {
      lua_pushnil(L);
      lua_pushstring(L, dl);
      return 2;
    }
    int err = weft_ctx_err(c.ctx);
    if (err != WEFT_LIVE) {
      lua_pushnil(L);
      lua_pushstring(L, weft_ctx_errmsg(err));
      return 2;
    }
    int n = submit_once(L, &c);
    if (n > 0) return n;
    if (!weft_block_on_ctx(b, c.ctx) || !weft_block_on_admit(b, c.pool)) continue;
    weft_block_wait(L, b, kc, submit_k);
  }
}

static int p_submit(lua_State *L) {
  weft_ctx *ctx = weft_check_ctx(L, 2);
  if (weft_ctx_err(ctx) == WEFT_LIVE) {
    int n = submit_fast(L, ctx, false);
    if (n > 0) return n;
  }
  push_call(L);  /* the pool is full (or ctx ended): wait, guarded */
  weft_block_new(L);
  return submit_k(L, LUA_OK, lua_gettop(L));
}

/* ---------------------------------------------------------------------- */
/* wait, close, stats */

/* stack: pool, timeout, close flag, block at 4 (kc).  Waits until idle;
   close(timeout) interrupts the jobs still running at the timeout, then
   gives them as long again before it gives up (never hangs). */
static int idle_k(lua_State *L, int status, lua_KContext kc) {
  (void)status;
  weft_block *b = lua_touserdata(L, (int)kc);
  weft_pool *p = check_pool(L, 1);
  int close = lua_toboolean(L, 3);
  for (;;) {
    weft_block_reset(b);
    if (!weft_block_on_idle(b, p)) break;
    if (!weft_block_on_timeout(b)) {  /* timed out */
      weft_block_reset(b);
      if (!close || lua_toboolean(L, 5)) {
        weft_pool_stats s;
        weft_pool_get_stats(p, &s);
        lua_pushnil(L);
        lua_pushfstring(L, "timeout: pool '%s' still has %d jobs in flight",
                        weft_pool_name(p), (int)s.inflight);
        return 2;
      }
      lua_pushboolean(L, 1);  /* 5: killed once */
      weft_pool_kill(p);
      weft_block_rearm(L, b, lua_tonumber(L, 2));
      continue;
    }
    weft_block_wait(L, b, kc, idle_k);
  }
  if (close) weft_pool_join(p);
  lua_pushboolean(L, 1);
  return 1;
}

static int wait_or_close(lua_State *L, int close) {
  weft_pool *p = check_pool(L, 1);
  double timeout = lua_isnoneornil(L, 2) ? INFINITY : weft_check_duration(L, 2);
  if (weft_pool_is_worker(p))
    return luaL_error(L, "pool '%s': %s from one of its own jobs would wait "
                         "for itself", weft_pool_name(p),
                      close ? "close" : "wait");
  if (p == weft_runtime_of(L)->pool && close)
    return luaL_error(L, "pool '%s' is the runtime's: weft_runtime_close "
                         "closes it", weft_pool_name(p));
  if (weft_pool_is_host_thread(p))
    return luaL_error(L, "pool '%s' is cooperative: its jobs run only in "
                         "weft.poll, so %s here would never return",
                      weft_pool_name(p), close ? "close" : "wait");
  lua_settop(L, 1);
  lua_pushnumber(L, timeout);
  if (close) weft_pool_shutdown(p);
  lua_pushboolean(L, close);
  weft_block *b = weft_block_new(L);
  weft_block_set_timeout(L, b, timeout);
  return idle_k(L, LUA_OK, 4);
}

static int p_wait(lua_State *L) { return wait_or_close(L, 0); }
static int p_close(lua_State *L) { return wait_or_close(L, 1); }

/*
** The owner's handle closes the pool as close() does (never from inside
** the pool), waiting without bound; a wait longer than GC_QUIET_SECONDS is
** logged, naming the pool: a script that dropped a pool with a job still
** running would otherwise stall (at a collection, or at exit) in silence.
** The wait is the thread's, in C: a finalizer that runs as its state
** closes must make nothing that needs a finalizer of its own (Lua runs
** none then), and a Lua block's timeout would outlive it in the timer.
*/
#define GC_QUIET_SECONDS 1.0

static int p_gc(lua_State *L) {
  weft_pool *p = (weft_pool *)weft_to_object(L, 1);
  if (p != NULL && weft_handle_marked(L, 1) && !weft_pool_is_worker(p)) {
    weft_pool_shutdown(p);
    if (!weft_pool_wait_idle(p, weft_now() + GC_QUIET_SECONDS)) {
      weft_pool_stats s;
      weft_pool_get_stats(p, &s);
      long n = s.inflight + s.queued;
      weft_log(weft_runtime_of(L),
               "weft pool '%s': collected without close() while %ld job%s "
               "in flight; waiting for %s to end (pool:close(timeout) "
               "bounds this wait)", weft_pool_name(p), n,
               n == 1 ? " is" : "s are", n == 1 ? "it" : "them");
      weft_pool_wait_idle(p, INFINITY);
    }
    weft_pool_join(p);
  }
  weft_object *o = weft_handle_take(L, 1);
  if (o != NULL) weft_release(o);
  return 0;
}

static int p_stats(lua_State *L) {
  weft_pool_stats s;
  weft_pool_get_stats(check_pool(L, 1), &s);
  lua_createtable(L, 0, 16);
#define FIELD(name)                            \
  lua_pushinteger(L, (lua_Integer)s.name); \
  lua_setfield(L, -2, #name)
  FIELD(workers);
  FIELD(limit);
  FIELD(queue);
  FIELD(running);
  FIELD(parked);
  FIELD(queued);
  FIELD(inflight);
  FIELD(submitted);
  FIELD(completed);
  FIELD(failed);
  FIELD(panicked);
  FIELD(canceled);
  FIELD(memory_errors);
#undef FIELD
  static const char *const lat[] = {"latency_p50", "latency_p90",
                                    "latency_p99", "latency_max"};
  for (int i = 0; i < 4; i++) {
    lua_pushnumber(L, s.latency[i]);
    lua_setfield(L, -2, lat[i]);
  }
  return 1;
}

static int p_name(lua_State *L) {
  lua_pushstring(L, weft_pool_name(check_pool(L, 1)));
  return 1;
}

/* ---------------------------------------------------------------------- */
/* futures */

int weft_push_outcome(lua_State *L, weft_future *f) {
  weft_buf *result = weft_future_result(f);
  lua_pushboolean(L, weft_future_state(f) == WEFT_FUT_OK);
  if (result == NULL) {  /* the worker ran out of memory reporting it */
    lua_pushliteral(L, "not enough memory");
    return 2;
  }
  return 1 + weft_buf_decode(L, result);
}

static int push_outcome(lua_State *L, weft_future *f) {
  if (lua_toboolean(L, lua_upvalueindex(1))) {  /* _settle: no results */
    lua_pushboolean(L, weft_future_state(f) == WEFT_FUT_OK);
    return 1;
  }
  return weft_push_outcome(L, f);
}

/* stack: future, [ctx], block at kc */
static int fwait_k(lua_State *L, int status, lua_KContext kc) {
  (void)status;
  weft_block *b = lua_touserdata(L, (int)kc);
  weft_future *f = check_future(L, 1);
  weft_ctx *ctx = lua_isnoneornil(L, 2) ? NULL : weft_check_ctx(L, 2);
  for (;;) {
    weft_block_reset(b);
    if (weft_future_state(f) != WEFT_FUT_PENDING) return push_outcome(L, f);
    const char *dl = weft_block_deadlock(b);
    if (dl != NULL) {
      lua_pushnil(L);
      lua_pushstring(L, dl);
      return 2;
    }
    if (ctx != NULL && weft_ctx_err(ctx) != WEFT_LIVE) {
      lua_pushnil(L);
      lua_pushstring(L, weft_ctx_errmsg(weft_ctx_err(ctx)));
      return 2;
    }
    if (!weft_block_on_future(b, f)) continue;
    if (ctx != NULL && !weft_block_on_ctx(b, ctx)) continue;
    weft_block_wait(L, b, kc, fwait_k);
  }
}

static int f_wait(lua_State *L) {
  weft_future *f = check_future(L, 1);
  if (!lua_isnoneornil(L, 2)) weft_check_ctx(L, 2);
  if (weft_future_state(f) != WEFT_FUT_PENDING) return push_outcome(L, f);
  lua_settop(L, 2);
  weft_block_new(L);
  return fwait_k(L, LUA_OK, 3);
}

static int f_done(lua_State *L) {
  lua_pushboolean(L, weft_future_state(check_future(L, 1)) != WEFT_FUT_PENDING);
  return 1;
}

/* ---------------------------------------------------------------------- */
/* weft.sleep(ctx, d) and ctx:wait([d]) */

/* stack: ctx, d, block at 3; returns whether ctx ended */
static int ctxwait_k(lua_State *L, int status, lua_KContext kc) {
  (void)status;
  weft_block *b = lua_touserdata(L, 3);
  weft_ctx *ctx = weft_check_ctx(L, 1);
  for (;;) {
    weft_block_reset(b);
    if (weft_ctx_err(ctx) != WEFT_LIVE) break;
    if (!weft_block_on_timeout(b)) break;
    if (!weft_block_on_ctx(b, ctx)) continue;
    weft_block_wait(L, b, kc, ctxwait_k);
  }
  /* A job whose own context ended under hard cancel fails here, whether it
     was parked or still on its way to park when the cancel came. */
  const char *stopped = weft_block_canceled(b);
  if (stopped != NULL) {  /* exactly the context's error: no position */
    lua_pushstring(L, stopped);
    return lua_error(L);
  }
  int err = weft_ctx_err(ctx);
  if (kc == 1) {  /* weft.sleep: true, or nil and the context's error */
    if (err == WEFT_LIVE) {
      lua_pushboolean(L, 1);
      return 1;
    }
    lua_pushnil(L);
    lua_pushstring(L, weft_ctx_errmsg(err));
    return 2;
  }
  lua_pushboolean(L, err != WEFT_LIVE);
  return 1;
}

static int l_sleep(lua_State *L) {
  weft_check_ctx(L, 1);
  double d = weft_check_duration(L, 2);
  lua_settop(L, 2);
  weft_block *b = weft_block_new(L);
  weft_block_set_timeout(L, b, d);
  return ctxwait_k(L, LUA_OK, 1);
}

/* ctx:wait([duration]) -> whether ctx is done */
int weft_ctx_wait_lua(lua_State *L) {
  weft_ctx *c = weft_check_ctx(L, 1);
  double timeout = lua_isnoneornil(L, 2) ? INFINITY : weft_check_duration(L, 2);
  if (isinf(timeout) && !weft_ctx_can_end(c))
    return luaL_error(L, "ctx:wait() without a timeout on a context that can "
                         "never end would block forever");
  lua_settop(L, 2);
  weft_block *b = weft_block_new(L);
  weft_block_set_timeout(L, b, timeout);
  return ctxwait_k(L, LUA_OK, 0);
}

/*
** weft._result_into(future, t, offset) -> n | nil: for map's batches.  When
** the future of a finished job holds, as its first result, a plain array of
** scalars, stores its elements at t[offset + 1 ..] without building the
** array, and returns their count; else nil (the caller waits as usual).
*/
static int l_result_into(lua_State *L) {
  weft_future *f = check_future(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_Integer offset = luaL_checkinteger(L, 3);
  weft_buf *b = weft_future_state(f) == WEFT_FUT_OK ? weft_future_result(f)
                                                    : NULL;
  lua_Integer n = b != NULL && weft_buf_count(b) == 1
                      ? weft_buf_decode_array_into(L, b, 2, offset)
                      : -1;
  if (n < 0) return 0;
  lua_pushinteger(L, n);
  return 1;
}

/*
** weft._wait_any(futures) -> i | nil, err: waits (parks, in a job) until
** one of the futures in the array is resolved and returns its index; nil
** and the message when the pool finds the wait deadlocked.  The futures
** must be of one pool (a group's): the wait is then hopeless exactly when
** the wait on any one of them is, so deadlock detection is told the first.
*/
typedef struct anywait {
  int n;
  struct {
    weft_future *f;  /* retained */
    weft_park_waiter pw;
  } src[];
} anywait;

static void anywait_hook(void *extra, bool final) {
  anywait *a = extra;
  for (int i = 0; i < a->n; i++) {
    if (!final) {
      weft_future_remove_waiter(a->src[i].f, &a->src[i].pw.w);
      continue;
    }
    weft_future_release(a->src[i].f);
  }
  if (final) a->n = 0;
}

static int anywait_k(lua_State *L, int status, lua_KContext kc) {
  (void)status;
  weft_block *b = lua_touserdata(L, (int)kc);
  anywait *a = weft_block_extra(b);
  for (;;) {
    weft_block_reset(b);
    for (int i = 0; i < a->n; i++)
      if (weft_future_state(a->src[i].f) != WEFT_FUT_PENDING) {
        lua_pushinteger(L, i + 1);
        return 1;
      }
    const char *dl = weft_block_deadlock(b);
    if (dl != NULL) {
      lua_pushnil(L);
      lua_pushstring(L, dl);
      return 2;
    }
    int i = 0;
    while (i < a->n && weft_future_add_waiter(a->src[i].f, &a->src[i].pw.w))
      i++;
    if (i < a->n) continue;  /* one resolved meanwhile */
    weft_block_wait(L, b, kc, anywait_k);
  }
}

static int l_wait_any(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_Integer n = luaL_len(L, 1);
  luaL_argcheck(L, n >= 1 && n <= 1000000, 1, "1 to 1000000 futures expected");
  size_t size = sizeof(anywait) + (size_t)n * sizeof(((anywait *)0)->src[0]);
  weft_block *b = weft_block_new_ex(L, size, anywait_hook);
  anywait *a = weft_block_extra(b);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 1, i);
    weft_future *f = check_future(L, -1);
    lua_pop(L, 1);
    weft_future_retain(f);
    a->src[a->n].f = f;
    weft_park_waiter_init(&a->src[a->n].pw, weft_block_park(b));
    a->n++;
  }
  weft_block_set_wait(b, WEFT_WAIT_FUTURE, a->src[0].f);
  return anywait_k(L, LUA_OK, 2);
}

/* weft._table(narr, nrec): a new table with room preallocated */
static int l_table(lua_State *L) {
  lua_Integer narr = luaL_optinteger(L, 1, 0), nrec = luaL_optinteger(L, 2, 0);
  luaL_argcheck(L, narr >= 0 && narr <= INT_MAX, 1, "out of range");
  luaL_argcheck(L, nrec >= 0 && nrec <= INT_MAX, 2, "out of range");
  lua_createtable(L, (int)narr, (int)nrec);
  return 1;
}

/*
** weft._shield(): the job calling it is no longer interrupted by hard
** cancel (pool:close still stops it).  For a group's job that failed and
** is about to cancel its own group: it returns its error instead of being
** stopped by its own cancel.  Outside a job's own coroutine: no effect.
*/
static int l_shield(lua_State *L) {
  weft_job *j = weft_job_of(L);
  if (j != NULL) weft_job_shield(j);
  lua_pushboolean(L, j != NULL);
  return 1;
}

/*
** weft._guard(handler) -> a message handler for xpcall that first shields
** the running job when its context has ended, then returns handler(e).
** It is C, so no Lua instruction runs (and no hard cancel hook fires)
** between the error and the shield: a job stopped by its context's end
** can still return its failure (and the time it took) instead of dying.
*/
static int guarded_handler(lua_State *L) {
  weft_job *j = weft_job_running(L);
  if (j != NULL && weft_job_canceled(j) != WEFT_LIVE) weft_job_shield(j);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

static int l_guard(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_pushcclosure(L, guarded_handler, 1);
  return 1;
}

/* weft._current_pool(): the pool of the worker running this state, else
   the runtime's pool (a host's), else nil */
static int l_current_pool(lua_State *L) {
  weft_pool *p = weft_pool_of_state(L);
  if (p == NULL) p = weft_runtime_of(L)->pool;
  if (p == NULL) return 0;
  weft_push_object(L, (weft_object *)p);
  return 1;
}

/* ---------------------------------------------------------------------- */

static const luaL_Reg pool_methods[] = {
    {"submit", p_submit}, {"try_submit", p_try_submit}, {"wait", p_wait},
    {"close", p_close},   {"stats", p_stats},           {"name", p_name},
    {NULL, NULL}};

static const luaL_Reg pool_meta[] = {
    {"__gc", p_gc}, {"__close", p_close}, {NULL, NULL}};

static const luaL_Reg future_methods[] = {
    {"wait", f_wait},          {"done", f_done}, {"_settle", NULL},
    {"on_done", weft_future_on_done}, {NULL, NULL}};

/* weft.sleep, and what weft.group builds on (weft._...) */
static const luaL_Reg module_funcs[] = {
    {"sleep", l_sleep},           {"_current_pool", l_current_pool},
    {"_result_into", l_result_into}, {"_table", l_table},
    {"_wait_any", l_wait_any},    {"_shield", l_shield},
    {"_guard", l_guard},          {NULL, NULL}};

void weft_open_pool(lua_State *L) {
  weft_new_class(L, &weft_pool_class, pool_methods, pool_meta);
  weft_new_class(L, &weft_future_class, future_methods, NULL);
  lua_getfield(L, -1, "__index");  /* future:_settle([ctx]): wait, no results */
  lua_pushboolean(L, 1);
  lua_pushcclosure(L, f_wait, 1);
  lua_setfield(L, -2, "_settle");
  lua_pop(L, 3);
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, l_pool, 1);  /* the module, for ncpu */
  lua_setfield(L, -2, "pool");
  luaL_setfuncs(L, module_funcs, 0);
  lua_pushliteral(L, SATURATED_MSG);
  lua_setfield(L, -2, "SATURATED");
  lua_pushliteral(L, CLOSED_MSG);
  lua_setfield(L, -2, "CLOSED");
  lua_pushliteral(L, WEFT_DEADLOCK_MSG);
  lua_setfield(L, -2, "DEADLOCK");
}
