/*
** runtime.c: creation, binding to lua_States, and teardown of runtimes.
**
** Owns: the runtime struct, its allocator and log sink, the registry
** binding that tells a lua_State which runtime it uses.
** Locking: the reference count is atomic; the rest is immutable after
** weft_runtime_new, except the timer (its own lock, timer.c).
*/
#include "runtime.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>

#include "context.h"

static const char binding_key = 0;  /* registry: the state's binding */
#define BINDING_MT "weft.runtime"

typedef struct binding {
  weft_runtime *rt;
  int owner;  /* the state made the runtime: closing it stops the timer */
} binding;

static void *default_alloc(void *ud, void *p, size_t osize, size_t nsize) {
  (void)ud;
  (void)osize;
  if (nsize == 0) {
    free(p);
    return NULL;
  }
  return realloc(p, nsize);
}

void *weft_alloc(weft_runtime *rt, size_t n) {
  return rt->alloc(rt->alloc_ud, NULL, 0, n);
}

void *weft_realloc(weft_runtime *rt, void *p, size_t osize, size_t nsize) {
  return rt->alloc(rt->alloc_ud, p, osize, nsize);
}

void weft_free(weft_runtime *rt, void *p, size_t n) {
  if (p != NULL) rt->alloc(rt->alloc_ud, p, n, 0);
}

double weft_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void weft_log(weft_runtime *rt, const char *fmt, ...) {
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (rt->log != NULL)
    rt->log(rt->log_ud, line);
  else
    fprintf(stderr, "%s\n", line);
}

static void set_err(char *err, size_t errlen, const char *msg) {
  if (err != NULL && errlen > 0) snprintf(err, errlen, "%s", msg);
}

weft_runtime *weft_runtime_new(const weft_config *cfg, char *err,
                               size_t errlen) {
  weft_config def = {0};
  if (cfg == NULL) cfg = &def;
  lua_Alloc alloc = cfg->alloc != NULL ? cfg->alloc : default_alloc;
  weft_runtime *rt = alloc(cfg->alloc_ud, NULL, 0, sizeof *rt);
  if (rt == NULL) {
    set_err(err, errlen, "not enough memory");
    return NULL;
  }
  memset(rt, 0, sizeof *rt);
  atomic_init(&rt->refs, 1);
  rt->alloc = alloc;
  rt->alloc_ud = cfg->alloc_ud;
  rt->log = cfg->log;
  rt->log_ud = cfg->log_ud;
  int e = weft_timer_init(&rt->timer, rt);
  if (e != 0) {
    set_err(err, errlen, strerror(e));
    alloc(cfg->alloc_ud, rt, sizeof *rt, 0);
    return NULL;
  }
  rt->background = weft_ctx_new_background(rt);
  if (rt->background == NULL) {
    set_err(err, errlen, "not enough memory");
    weft_timer_destroy(&rt->timer);
    alloc(cfg->alloc_ud, rt, sizeof *rt, 0);
    return NULL;
  }
  return rt;
}

void weft_runtime_retain(weft_runtime *rt) {
  atomic_fetch_add_explicit(&rt->refs, 1, memory_order_relaxed);
}

void weft_runtime_release(weft_runtime *rt) {
  if (atomic_fetch_sub_explicit(&rt->refs, 1, memory_order_acq_rel) != 1)
    return;
  weft_timer_stop(&rt->timer);  /* no-op when already stopped */
  weft_timer_destroy(&rt->timer);
  weft_ctx_release(rt->background);
  weft_free(rt, rt, sizeof *rt);
}

void weft_runtime_close(weft_runtime *rt) {
  weft_timer_stop(&rt->timer);
  weft_runtime_release(rt);
}

static int binding_gc(lua_State *L) {
  binding *b = luaL_checkudata(L, 1, BINDING_MT);
  if (b->rt != NULL) {
    weft_runtime *rt = b->rt;
    b->rt = NULL;
    if (b->owner)
      weft_runtime_close(rt);
    else
      weft_runtime_release(rt);
  }
  return 0;
}

/* Pushes a new binding of L to rt; [-0, +1, m] */
static binding *bind(lua_State *L, weft_runtime *rt, int owner) {
  binding *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->rt = NULL;
  if (luaL_newmetatable(L, BINDING_MT)) {
    lua_pushcfunction(L, binding_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  b->rt = rt;
  b->owner = owner;
  lua_rawsetp(L, LUA_REGISTRYINDEX, &binding_key);
  return b;
}

static int open_k(lua_State *L) {
  weft_runtime *rt = lua_touserdata(L, 1);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &binding_key) != LUA_TNIL)
    return luaL_error(L, "state already has a weft runtime");
  bind(L, rt, 0);
  return 0;
}

int weft_runtime_open(weft_runtime *rt, lua_State *L) {
  lua_pushcfunction(L, open_k);
  lua_pushlightuserdata(L, rt);
  weft_runtime_retain(rt);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    lua_pop(L, 1);
    weft_runtime_release(rt);
    return -1;
  }
  return 0;
}

weft_runtime *weft_runtime_of(lua_State *L) {
  weft_runtime *rt = NULL;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &binding_key) == LUA_TUSERDATA)
    rt = ((binding *)lua_touserdata(L, -1))->rt;
  lua_pop(L, 1);
  if (rt == NULL) luaL_error(L, "weft.core is not opened in this state");
  return rt;
}

/* Binds L to a runtime of its own unless a host bound one; [-0, +0, e] */
void weft_runtime_ensure(lua_State *L) {
  int t = lua_rawgetp(L, LUA_REGISTRYINDEX, &binding_key);
  lua_pop(L, 1);
  if (t != LUA_TNIL) return;
  char err[128];
  binding *b = bind(L, NULL, 1);
  weft_runtime *rt = weft_runtime_new(NULL, err, sizeof err);
  if (rt == NULL) luaL_error(L, "weft: cannot create runtime: %s", err);
  b->rt = rt;
}
