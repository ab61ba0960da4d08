/*
** runtime.h: the runtime object every engine object hangs off: allocator,
** log sink, deadline timer, background context.  No global state: each
** lua_State that loaded weft finds its runtime in its registry.
*/
#ifndef WEFT_RUNTIME_H
#define WEFT_RUNTIME_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>

#include <lua.h>

#include "timer.h"
#include "weft.h"

struct weft_ctx;

struct weft_runtime {
  atomic_long refs;          /* host, bound states, live objects */
  lua_Alloc alloc;
  void *alloc_ud;
  weft_log_fn log;
  void *log_ud;
  weft_timer timer;          /* deadlines; its thread starts on first use */
  struct weft_ctx *background;
};

/* Engine allocations through the runtime's allocator; NULL on failure. */
void *weft_alloc(weft_runtime *rt, size_t n);
void *weft_realloc(weft_runtime *rt, void *p, size_t osize, size_t nsize);
void weft_free(weft_runtime *rt, void *p, size_t n);

void weft_runtime_retain(weft_runtime *rt);
void weft_runtime_release(weft_runtime *rt);

/* The runtime L is bound to; raises if weft.core was not opened in L. */
weft_runtime *weft_runtime_of(lua_State *L);

/* Binds L to a runtime of its own unless a host bound one; raises on
   failure.  Used by luaopen_weft_core. */
void weft_runtime_ensure(lua_State *L);

/* One log line through the runtime's sink.  Any thread; no Lua calls. */
void weft_log(weft_runtime *rt, const char *fmt, ...);

/* Monotonic clock, in seconds (weft.now()). */
double weft_now(void);

#endif
