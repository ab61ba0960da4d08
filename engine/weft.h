/*
** weft.h: the one header a C host includes to embed weft.
**
** A runtime owns the engine's allocator, its deadline timer and the
** background context; everything weft creates hangs off one runtime, and
** there is no global mutable state, so several runtimes may live side by
** side in one process.  Thread rules are given on each function.
*/
#ifndef WEFT_H
#define WEFT_H

#include <stddef.h>

#include <lua.h>

#define WEFT_VERSION "0.1.0"

typedef struct weft_runtime weft_runtime;

/* Receives one line of log text (no trailing newline). */
typedef void (*weft_log_fn)(void *ud, const char *line);

typedef struct weft_config {
  lua_Alloc alloc;    /* engine allocations; NULL: realloc/free */
  void *alloc_ud;
  weft_log_fn log;    /* NULL: lines go to stderr */
  void *log_ud;
} weft_config;

/*
** Creates a runtime.  cfg may be NULL for the defaults.  On failure returns
** NULL and writes a message into err (if errlen > 0).  Any thread.
*/
weft_runtime *weft_runtime_new(const weft_config *cfg, char *err,
                               size_t errlen);

/*
** Binds L to rt: a later require "weft" in L uses rt.  Call it before
** weft is loaded into L, from the thread that owns L.  The binding holds a
** reference on rt that is dropped when L is closed.  Returns 0, or -1 when
** L already has a runtime or memory ran out.
*/
int weft_runtime_open(weft_runtime *rt, lua_State *L);

/*
** Stops the runtime's timer thread (deadlines no longer fire) and drops
** the host's reference; memory goes once no state or handle uses it.
** Call it once, from the host thread, never from a weft callback.
*/
void weft_runtime_close(weft_runtime *rt);

/* The C half of require "weft". */
int luaopen_weft_core(lua_State *L);

#endif
