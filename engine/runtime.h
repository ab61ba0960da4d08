/*
** runtime.h: the runtime object every engine object hangs off: allocator,
** log sink, deadline timer, background context.  No global state: each
** lua_State that loaded weft finds its runtime in its registry.
*/
#ifndef WEFT_RUNTIME_H
#define WEFT_RUNTIME_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "timer.h"
#include "weft.h"

struct weft_ctx;
struct weft_pool;
struct weft_hostreq;

#define WEFT_MAX_TYPES 32

typedef struct weft_udtype {
  char name[64];
  weft_copy_out_fn copy_out;
  weft_copy_in_fn copy_in;
  void *ud;
} weft_udtype;

/* A cache line.  What different threads write is kept on lines of its
   own (alloc.c's shards, the pool's fields, refs below): a line written
   by another core last costs a core-to-core trip to read. */
#define WEFT_LINE 64

/* p rounded up to a cache line; p comes from an allocation WEFT_LINE
   bytes larger than what is placed at the result. */
static inline void *weft_line_align(void *p) {
  uintptr_t a = (uintptr_t)p;
  return (char *)p + ((WEFT_LINE - a % WEFT_LINE) % WEFT_LINE);
}

/* alloc.c: the block cache and the live counts, sharded by thread. */
typedef struct weft_alloc_cache weft_alloc_cache;

struct weft_runtime {
  atomic_long refs;          /* host, bound states, live objects */
  char refs_line[WEFT_LINE - sizeof(atomic_long)];  /* refs change with every
                                future made or freed: the rest, read by
                                every thread, is kept off its cache line */
  lua_Alloc alloc;
  void *alloc_ud;
  weft_config cfg;           /* the host's hooks (paths and name cleared) */
  weft_timer timer;          /* deadlines; its thread starts on first use */
  struct weft_ctx *background;
  struct weft_ctx *root;     /* weft_submit's jobs' (made on first use,
                                on the host thread); close cancels it */
  struct weft_pool *pool;    /* the runtime pool (a host's), or NULL */
  atomic_bool hosted;        /* made by a host, or polled: on_host works */
  pthread_mutex_t mu;        /* guards what follows */
  struct weft_pool *pools;   /* live pools, for close */
  struct weft_hostreq *reqs, *reqs_tail;  /* weft.on_host calls */
  bool closing;
  atomic_long pending;       /* completions queued for a poll */
  weft_alloc_cache *cache;   /* alloc.c: shards, depots, cache_on */
  weft_udtype types[WEFT_MAX_TYPES];  /* [0, ntypes) immutable once set */
  atomic_int ntypes;
  pthread_mutex_t gcmu;      /* the cycle collector's (cycle.c): only ever
                                try-locked outside it */
  _Atomic(struct weft_object *) gcq;  /* objects offered to it */
};

/* Engine allocations through the runtime's allocator and its cache of
   small blocks (alloc.c); NULL on failure.  Any thread. */
void *weft_alloc(weft_runtime *rt, size_t n);
void *weft_realloc(weft_runtime *rt, void *p, size_t osize, size_t nsize);
void weft_free(weft_runtime *rt, void *p, size_t n);
/* The engine's live blocks and bytes (weft_alloc minus weft_free). */
void weft_alloc_live(weft_runtime *rt, long *blocks, long *bytes);
/* At creation (0, or an errno value) and at the very end of a runtime. */
int weft_alloc_init(weft_runtime *rt);
void weft_alloc_destroy(weft_runtime *rt);

void weft_runtime_retain(weft_runtime *rt);
void weft_runtime_release(weft_runtime *rt);

/* The runtime L is bound to; raises if weft.core was not opened in L. */
weft_runtime *weft_runtime_of(lua_State *L);
/* The same, and a word of L's own (of its binding) for value.c to keep
   the address of the last function it encoded: a hint, never followed. */
weft_runtime *weft_runtime_of_fn(lua_State *L, const void ***last_fn);

/* Binds L to a runtime of its own (no runtime pool) unless a host bound
   one; raises on failure.  Used by luaopen_weft_core. */
void weft_runtime_ensure(lua_State *L);

/* Whether rt is shutting down (weft_runtime_close began).  Any thread. */
bool weft_runtime_closing(weft_runtime *rt);

/* One log line through the runtime's sink.  Any thread; no Lua calls. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
void weft_log(weft_runtime *rt, const char *fmt, ...);

/* Tells the host that a poll has work (the config's wakeup).  Any thread. */
void weft_runtime_wakeup(weft_runtime *rt);

/* The registered host type of the userdata at idx, or -1.  L's thread. */
int weft_runtime_udtype(weft_runtime *rt, lua_State *L, int idx);

/* The completion inbox of L's binding (host.c owns it); NULL slot when
   none yet.  Raises when L has no runtime. */
void **weft_runtime_inbox(lua_State *L);

/* Monotonic clock, in seconds (weft.now()). */
double weft_now(void);

#endif
