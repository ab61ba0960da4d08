/*
** runtime.c: creation, binding to lua_States, and teardown of runtimes.
**
** Owns: the runtime struct, its hooks and log sink (the engine's memory
** is alloc.c's), the registry binding that tells a lua_State which
** runtime it uses, the registered host types, and shutdown
** (weft_runtime_close).
** Locking: the reference count is atomic; rt->mu guards the closing flag,
** the list of pools (pool.c), the host requests (host.c) and type
** registration (readers go lock-free through the published count).  The
** config and pool pointer are immutable between new and close; the timer
** has its own lock (timer.c); gcmu and gcq belong to the cycle collector
** (cycle.c: gcmu is only ever try-locked, gcq is a lock-free stack).
** rt->mu is a leaf but for pool.c taking its pools' locks under it (never
** the other way round).
*/
#include "runtime.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>

#include "context.h"
#include "host.h"
#include "pool.h"

static const char binding_key = 0;  /* registry: the state's binding */
#define BINDING_MT "weft.runtime"

typedef struct binding {
  weft_runtime *rt;
  int owner;     /* the state made the runtime: closing it stops the timer */
  void *inbox;   /* host.c: completions to deliver in this state */
  const void *last_fn;  /* value.c: see weft_runtime_of_fn */
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
  if (rt->cfg.log != NULL)
    rt->cfg.log(rt->cfg.log_ud, line);
  else
    fprintf(stderr, "%s\n", line);
}

static void set_err(char *err, size_t errlen, const char *msg) {
  if (err != NULL && errlen > 0) snprintf(err, errlen, "%s", msg);
}

void weft_config_init(weft_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  cfg->workers = n < 1 ? 1 : n > 256 ? 256 : (int)n;
}

/* A runtime with cfg's hooks and no pool; NULL and a message on failure. */
static weft_runtime *runtime_create(const weft_config *cfg, char *err,
                                    size_t errlen) {
  lua_Alloc alloc = cfg->alloc != NULL ? cfg->alloc : default_alloc;
  weft_runtime *rt = alloc(cfg->alloc_ud, NULL, 0, sizeof *rt);
  if (rt == NULL) {
    set_err(err, errlen, "not enough memory");
    return NULL;
  }
  memset(rt, 0, sizeof *rt);
  atomic_init(&rt->refs, 1);
  atomic_init(&rt->pending, 0);
  atomic_init(&rt->ntypes, 0);
  atomic_init(&rt->hosted, false);
  rt->alloc = alloc;
  rt->alloc_ud = cfg->alloc_ud;
  rt->cfg = *cfg;
  rt->cfg.name = rt->cfg.lua_path = rt->cfg.lua_cpath = NULL;  /* not kept */
  int e = weft_alloc_init(rt);
  if (e != 0) {
    set_err(err, errlen, e == ENOMEM ? "not enough memory" : strerror(e));
    alloc(cfg->alloc_ud, rt, sizeof *rt, 0);
    return NULL;
  }
  atomic_init(&rt->gcq, NULL);
  e = pthread_mutex_init(&rt->mu, NULL);
  if (e == 0) {
    e = pthread_mutex_init(&rt->gcmu, NULL);
    if (e != 0) pthread_mutex_destroy(&rt->mu);
  }
  if (e == 0) {
    e = weft_timer_init(&rt->timer, rt);
    if (e != 0) {
      pthread_mutex_destroy(&rt->gcmu);
      pthread_mutex_destroy(&rt->mu);
    }
  }
  if (e != 0) {
    weft_alloc_destroy(rt);
    set_err(err, errlen, strerror(e));
    alloc(cfg->alloc_ud, rt, sizeof *rt, 0);
    return NULL;
  }
  rt->background = weft_ctx_new_background(rt);
  if (rt->background == NULL) {
    set_err(err, errlen, "not enough memory");
    weft_timer_destroy(&rt->timer);
    pthread_mutex_destroy(&rt->gcmu);
    pthread_mutex_destroy(&rt->mu);
    weft_alloc_destroy(rt);
    alloc(cfg->alloc_ud, rt, sizeof *rt, 0);
    return NULL;
  }
  return rt;
}

weft_runtime *weft_runtime_new(const weft_config *cfg, char *err,
                               size_t errlen) {
  weft_config def;
  weft_config_init(&def);
  if (cfg == NULL) cfg = &def;
  if (cfg->workers >= 0 && cfg->limit != 0 && cfg->limit < cfg->workers) {
    set_err(err, errlen, "limit is less than workers");
    return NULL;
  }
  if (cfg->queue < 0 || cfg->limit < 0 || cfg->workers > 4096 ||
      cfg->limit > 1000000 || cfg->queue > 1000000) {
    set_err(err, errlen, "workers must be at most 4096, limit and queue "
                         "between 0 and 1000000");
    return NULL;
  }
  weft_runtime *rt = runtime_create(cfg, err, errlen);
  if (rt == NULL) return NULL;
  atomic_store(&rt->hosted, true);
  if (cfg->workers < 0) return rt;
  weft_pool_config pc;
  memset(&pc, 0, sizeof pc);
  pc.workers = cfg->workers;
  pc.cooperative = cfg->workers == 0;
  pc.limit = cfg->limit > 0 ? cfg->limit
                            : cfg->workers > 64 ? cfg->workers : 64;
  pc.queue = cfg->queue;
  pc.hard_cancel = true;
  pc.name = cfg->name != NULL ? cfg->name : "host";
  pc.path = cfg->lua_path;
  pc.cpath = cfg->lua_cpath;
  pc.memory_limit = cfg->memory_limit;
  rt->pool = weft_pool_new(rt, &pc, err, errlen);
  if (rt->pool == NULL) {
    weft_runtime_close(rt, 0);
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
  pthread_mutex_destroy(&rt->gcmu);
  pthread_mutex_destroy(&rt->mu);
  weft_alloc_destroy(rt);
  rt->alloc(rt->alloc_ud, rt, sizeof *rt, 0);  /* not counted: not weft_free */
}

bool weft_runtime_closing(weft_runtime *rt) {
  pthread_mutex_lock(&rt->mu);
  bool closing = rt->closing;
  pthread_mutex_unlock(&rt->mu);
  return closing;
}

void weft_runtime_wakeup(weft_runtime *rt) {
  if (rt->cfg.wakeup != NULL) rt->cfg.wakeup(rt->cfg.wakeup_ud);
}

int weft_runtime_close(weft_runtime *rt, double timeout_seconds) {
  double deadline = weft_now() + (timeout_seconds > 0 ? timeout_seconds : 0);
  pthread_mutex_lock(&rt->mu);
  rt->closing = true;
  pthread_mutex_unlock(&rt->mu);
  if (rt->root != NULL) weft_ctx_cancel(rt->root, WEFT_CANCELED, NULL);
  weft_host_fail_requests(rt);
  weft_pools_stop_all(rt);
  int stuck = 0;
  if (rt->pool != NULL) {
    stuck = weft_pool_finish(rt->pool, deadline);
    if (stuck == 0) weft_release((weft_object *)rt->pool);  /* else leaked */
    rt->pool = NULL;
  }
  if (rt->root != NULL) weft_ctx_release(rt->root);
  rt->root = NULL;
  weft_timer_stop(&rt->timer);
  weft_runtime_release(rt);
  return stuck;
}

int weft_register_type(weft_runtime *rt, const char *tname,
                       weft_copy_out_fn copy_out, weft_copy_in_fn copy_in,
                       void *ud) {
  if (tname == NULL || copy_out == NULL || copy_in == NULL ||
      strlen(tname) >= sizeof rt->types[0].name)
    return -1;
  pthread_mutex_lock(&rt->mu);
  int n = atomic_load_explicit(&rt->ntypes, memory_order_relaxed);
  int r = n < WEFT_MAX_TYPES ? 0 : -1;
  for (int i = 0; i < n && r == 0; i++)
    if (strcmp(rt->types[i].name, tname) == 0) r = -1;
  if (r == 0) {
    weft_udtype *t = &rt->types[n];
    snprintf(t->name, sizeof t->name, "%s", tname);
    t->copy_out = copy_out;
    t->copy_in = copy_in;
    t->ud = ud;
    atomic_store_explicit(&rt->ntypes, n + 1, memory_order_release);
  }
  pthread_mutex_unlock(&rt->mu);
  return r;
}

int weft_runtime_udtype(weft_runtime *rt, lua_State *L, int idx) {
  int n = atomic_load_explicit(&rt->ntypes, memory_order_acquire);
  for (int i = 0; i < n; i++)
    if (luaL_testudata(L, idx, rt->types[i].name) != NULL) return i;
  return -1;
}

void weft_runtime_stats(weft_runtime *rt, weft_stats *s) {
  memset(s, 0, sizeof *s);
  s->pending_callbacks = atomic_load(&rt->pending);
  weft_alloc_live(rt, &s->engine_blocks, &s->engine_bytes);
  if (rt->pool == NULL) return;
  weft_pool_stats ps;
  weft_pool_get_stats(rt->pool, &ps);
  s->workers = (int)ps.workers;
  s->busy = (int)ps.running;
  s->queued = ps.queued + ps.admitted;
  s->inflight = ps.inflight;
  s->parked = ps.parked;
  s->submitted = ps.submitted;
  s->completed = ps.completed;
  s->failed = ps.failed;
  s->panicked = ps.panicked;
  s->canceled = ps.canceled;
  s->latency_p50 = ps.latency[0];
  s->latency_p90 = ps.latency[1];
  s->latency_p99 = ps.latency[2];
  s->latency_max = ps.latency[3];
  s->memory_total = weft_pool_memory(rt->pool, s->memory, WEFT_STATS_WORKERS);
}

static int binding_gc(lua_State *L) {
  binding *b = luaL_checkudata(L, 1, BINDING_MT);
  if (b->rt != NULL) {
    weft_runtime *rt = b->rt;
    b->rt = NULL;
    if (b->inbox != NULL) weft_inbox_free(rt, b->inbox);
    b->inbox = NULL;
    if (b->owner) weft_timer_stop(&rt->timer);  /* no deadline fires now */
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
  b->inbox = NULL;
  b->last_fn = NULL;
  lua_rawsetp(L, LUA_REGISTRYINDEX, &binding_key);  /* may raise */
  b->rt = rt;  /* the binding holds the reference only once it is kept */
  b->owner = owner;
  return b;
}

static int open_k(lua_State *L) {
  weft_runtime *rt = lua_touserdata(L, 1);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &binding_key) != LUA_TNIL)
    return luaL_error(L, "state already has a weft runtime");
  bind(L, rt, 0);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_weft_core);
  lua_setfield(L, -2, "weft.core");
  return 0;
}

int weft_runtime_open(weft_runtime *rt, lua_State *L) {
  lua_pushcfunction(L, open_k);
  lua_pushlightuserdata(L, rt);
  weft_runtime_retain(rt);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    lua_pop(L, 1);
    /* the binding may have been made before the failure: then it holds
       the reference, and drops it when L is closed */
    binding *b = NULL;
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &binding_key) == LUA_TUSERDATA)
      b = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (b == NULL || b->rt != rt) weft_runtime_release(rt);
    return -1;
  }
  return 0;
}

/* L's binding to a live runtime; raises when there is none. */
static binding *binding_of(lua_State *L) {
  binding *b = NULL;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &binding_key) == LUA_TUSERDATA)
    b = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (b == NULL || b->rt == NULL)
    luaL_error(L, "weft.core is not opened in this state");
  return b;
}

void **weft_runtime_inbox(lua_State *L) { return &binding_of(L)->inbox; }

weft_runtime *weft_runtime_of_fn(lua_State *L, const void ***last_fn) {
  binding *b = binding_of(L);
  if (last_fn != NULL) *last_fn = &b->last_fn;
  return b->rt;
}

weft_runtime *weft_runtime_of(lua_State *L) {
  return weft_runtime_of_fn(L, NULL);
}

/* Binds L to a runtime of its own unless a host bound one; [-0, +0, e] */
void weft_runtime_ensure(lua_State *L) {
  int t = lua_rawgetp(L, LUA_REGISTRYINDEX, &binding_key);
  lua_pop(L, 1);
  if (t != LUA_TNIL) return;
  char err[128];
  binding *b = bind(L, NULL, 1);
  weft_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.workers = -1;
  weft_runtime *rt = runtime_create(&cfg, err, sizeof err);
  if (rt == NULL) luaL_error(L, "weft: cannot create runtime: %s", err);
  b->rt = rt;
}
