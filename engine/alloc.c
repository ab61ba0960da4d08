/*
** alloc.c: the engine's memory (weft_alloc, weft_realloc, weft_free).
**
** Owns: the counts of live engine blocks and bytes (leak checks and
** weft_runtime_stats see the engine's memory come back to where it was)
** and each runtime's cache of small free blocks.
**
** Why a cache: the engine's small objects are made on one thread and freed
** on another (a job and its call on the submitting thread, freed by a
** worker; a result the other way round), which is malloc's worst case:
** every free lands in another thread's arena, under its lock, and the
** maker's own free lists stay empty.  Blocks of up to 512 bytes are kept
** per size class and handed out again, to any thread.
**
** Why shards: one cache shared by every thread put one lock per class on
** every allocation's path, and the submitting thread and the workers took
** it in turn, each time pulling its cache line from the other core.  Each
** thread now takes a shard of its own (the first time it allocates from a
** runtime, round-robin, remembered in a thread-local slot) and keeps its
** free blocks there; the shards trade whole magazines (MAG blocks) with a
** per-class depot, so that blocks freed on a worker reach the submitting
** thread one lock round per MAG blocks (Bonwick and Adams, "Magazines and
** Vmem", 2001: a loaded and a previous magazine per shard, so that a thread
** alternating between taking and giving does not trade at every step).
** The live counts are kept per shard for the same reason.
**
** A depot keeps up to 1 MB of the classes of 64 and 128 bytes: the
** submitting thread's collector frees futures in bursts of thousands (one
** cycle's garbage), which a smaller depot handed back to malloc, only for
** the workers to malloc them again (1,024 jobs in flight: 86% of the
** 128-byte blocks missed the cache with 256 kept, 2% with 1 MB).  The
** larger classes (jobs, calls, results) flow steadily and keep 256 KB:
** a block kept here is one the Lua states' malloc cannot reuse (10,000
** parked jobs: +0.14 KB of RSS a job with 1 MB for every class).  At most
** 3 MB in a runtime's depots, and only after that many blocks were in use
** at once; a thread holds up to 2 * MAG blocks of each class besides.
**
** Magazines are small (MAG 8): blocks a thread holds are blocks the other
** threads allocate anew, and in a burst (10,000 jobs submitted, then
** parked) that grew RSS per parked job from 1.94 KB with one shared cache
** to 2.12 KB with magazines of 32 and 2.06 KB with 16; 1.99 KB with 8.  A
** depot round per 8 blocks did not measurably slow the overhead loop.
**
** Locking: a shard's mutex guards its magazines; it is uncontended unless
** more than SHARDS threads allocate.  A depot's mutex is taken under a
** shard's, never the other way round; both are leaves.
** The counts are atomic.  The cache is off under AddressSanitizer and when
** WEFT_NO_BLOCK_CACHE=1 (spec/run sets it for valgrind and the allocation
** sweep; the fuzz target too): reused blocks would hide a use after free
** from them, and the sweep wants every allocation to reach its failing
** allocator.
*/
#include "runtime.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CLASSES 6  /* blocks of 64 to 512 bytes */
#define SHARDS 16
#define MAG 8         /* blocks per magazine */
#define DEPOT_SMALL (1024 * 1024)  /* kept in full magazines: up to 128 */
#define DEPOT_LARGE (256 * 1024)   /* bytes, and past them */
#define DEPOT_EMPTY 8  /* empty magazines a depot keeps */

/* A magazine: an array of free blocks of one class.  The blocks are never
   written while cached, so taking one does not read memory another thread
   wrote last (a load that would wait for that thread's core). */
typedef struct mag {
  struct mag *next;  /* in a depot's list */
  int n;
  void *blocks[MAG];
} mag;

typedef struct shard {
  pthread_mutex_t mu;
  mag *loaded[CLASSES];  /* mu: blocks are taken from and given to it */
  mag *prev[CLASSES];    /* mu: NULL, empty or full */
  atomic_long blocks, bytes;  /* live counts: this shard's share */
} shard;

typedef struct depot {
  pthread_mutex_t mu;
  mag *full, *empty;  /* mu */
  int nfull, nempty;
} depot;

/* Each shard and depot on cache lines of its own. */
#define PADDED(T) (((sizeof(T) + WEFT_LINE - 1) / WEFT_LINE) * WEFT_LINE)

struct weft_alloc_cache {
  size_t size;        /* as allocated: the shards are aligned within */
  bool on;
  atomic_uint next;   /* the slot the next new thread takes */
  char *shards;       /* SHARDS shards, then CLASSES depots, each PADDED */
};

/* The class's block sizes: past 128 bytes, steps of at most half a class,
   so that a block wastes less than a third of itself. */
static const size_t class_size[CLASSES] = {64, 128, 192, 256, 384, 512};

#if defined(__SANITIZE_ADDRESS__)
#define CACHE_BUILT false
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CACHE_BUILT false
#endif
#endif
#ifndef CACHE_BUILT
#define CACHE_BUILT true
#endif

/* The calling thread's slot (1-based; 0 until it first allocates), taken
   from the first runtime it allocates from and used for all of them: a
   hint for spreading threads over shards, never a correctness matter.
   Initial-exec, as pool.c's tls_worker, for the same reason. */
static _Thread_local unsigned tls_slot
    __attribute__((tls_model("initial-exec")));

static shard *shard_at(weft_alloc_cache *k, int i) {
  return (shard *)(k->shards + (size_t)i * PADDED(shard));
}

static depot *depot_of(weft_alloc_cache *k, int c) {
  size_t at = SHARDS * PADDED(shard) + (size_t)c * PADDED(depot);
  return (depot *)(k->shards + at);
}

static shard *my_shard(weft_alloc_cache *k) {
  unsigned s = tls_slot;
  if (s == 0) {
    s = atomic_fetch_add_explicit(&k->next, 1, memory_order_relaxed);
    s = s % SHARDS + 1;
    tls_slot = s;
  }
  return shard_at(k, (int)s - 1);
}

/* The class of a block of n bytes, or -1 when it is not cached. */
static int class_of(size_t n) {
  for (int c = 0; c < CLASSES; c++)
    if (n <= class_size[c]) return c;
  return -1;
}

static void count(shard *s, long blocks, long bytes) {
  if (blocks != 0)
    atomic_fetch_add_explicit(&s->blocks, blocks, memory_order_relaxed);
  atomic_fetch_add_explicit(&s->bytes, bytes, memory_order_relaxed);
}

/* Frees m's blocks (of class c) and, unless keep, m itself. */
static void mag_free(weft_runtime *rt, int c, mag *m, bool keep) {
  if (m == NULL) return;
  for (int i = 0; i < m->n; i++)
    rt->alloc(rt->alloc_ud, m->blocks[i], class_size[c], 0);
  m->n = 0;
  if (!keep) rt->alloc(rt->alloc_ud, m, sizeof *m, 0);
}

static void mag_free_list(weft_runtime *rt, int c, mag *m) {
  while (m != NULL) {
    mag *n = m->next;
    mag_free(rt, c, m, false);
    m = n;
  }
}

int weft_alloc_init(weft_runtime *rt) {
  size_t size = sizeof(weft_alloc_cache) + WEFT_LINE +
                SHARDS * PADDED(shard) + CLASSES * PADDED(depot);
  void *mem = rt->alloc(rt->alloc_ud, NULL, 0, size);
  if (mem == NULL) return ENOMEM;
  memset(mem, 0, size);
  weft_alloc_cache *k = mem;
  k->size = size;
  k->shards = weft_line_align((char *)mem + sizeof *k);
  atomic_init(&k->next, 0);
  const char *off = getenv("WEFT_NO_BLOCK_CACHE");
  k->on = CACHE_BUILT && !(off != NULL && strcmp(off, "1") == 0);
  pthread_mutexattr_t a;
  int e = pthread_mutexattr_init(&a), i = 0, c = 0;
  if (e != 0) {
    rt->alloc(rt->alloc_ud, mem, size, 0);
    return e;
  }
  pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ADAPTIVE_NP);
  for (; i < SHARDS; i++) {
    shard *s = shard_at(k, i);
    atomic_init(&s->blocks, 0);
    atomic_init(&s->bytes, 0);
    if ((e = pthread_mutex_init(&s->mu, &a)) != 0) break;
  }
  for (; e == 0 && c < CLASSES; c++)
    if ((e = pthread_mutex_init(&depot_of(k, c)->mu, &a)) != 0) break;
  pthread_mutexattr_destroy(&a);
  if (e == 0) {
    rt->cache = k;
    return 0;
  }
  while (c-- > 0) pthread_mutex_destroy(&depot_of(k, c)->mu);
  while (i-- > 0) pthread_mutex_destroy(&shard_at(k, i)->mu);
  rt->alloc(rt->alloc_ud, mem, size, 0);
  return e;
}

void weft_alloc_destroy(weft_runtime *rt) {
  weft_alloc_cache *k = rt->cache;
  for (int i = 0; i < SHARDS; i++) {
    shard *s = shard_at(k, i);
    for (int c = 0; c < CLASSES; c++) {
      mag_free(rt, c, s->loaded[c], false);
      mag_free(rt, c, s->prev[c], false);
    }
    pthread_mutex_destroy(&s->mu);
  }
  for (int c = 0; c < CLASSES; c++) {
    depot *d = depot_of(k, c);
    mag_free_list(rt, c, d->full);
    mag_free_list(rt, c, d->empty);
    pthread_mutex_destroy(&d->mu);
  }
  rt->cache = NULL;
  rt->alloc(rt->alloc_ud, k, k->size, 0);
}

void weft_alloc_live(weft_runtime *rt, long *blocks, long *bytes) {
  long nb = 0, ns = 0;
  for (int i = 0; i < SHARDS; i++) {
    shard *s = shard_at(rt->cache, i);
    nb += atomic_load_explicit(&s->blocks, memory_order_relaxed);
    ns += atomic_load_explicit(&s->bytes, memory_order_relaxed);
  }
  *blocks = nb;
  *bytes = ns;
}

/*
** A block of class c from the caller's shard: from its loaded magazine,
** else from its previous one (full), else from a full one of the depot
** (which takes the empty one back); NULL when there is none.  s->mu held;
** *drop is set to a magazine to free (the depot has enough empty ones).
*/
static void *take_cached(weft_alloc_cache *k, shard *s, int c, mag **drop) {
  mag *m = s->loaded[c], *pv = s->prev[c];
  if (m == NULL || m->n == 0) {
    if (pv != NULL && pv->n > 0) {
      s->prev[c] = m;
      s->loaded[c] = m = pv;
    } else {
      depot *d = depot_of(k, c);
      pthread_mutex_lock(&d->mu);
      mag *f = d->full;
      if (f != NULL) {
        d->full = f->next;
        d->nfull--;
        if (m != NULL && d->nempty < DEPOT_EMPTY) {
          m->next = d->empty;
          d->empty = m;
          d->nempty++;
        } else {
          *drop = m;
        }
      }
      pthread_mutex_unlock(&d->mu);
      if (f == NULL) return NULL;
      s->loaded[c] = m = f;
    }
  }
  return m->blocks[--m->n];
}

/* s: the caller's shard (my_shard), looked up once per call. */
static void *take(weft_runtime *rt, shard *s, int c) {
  weft_alloc_cache *k = rt->cache;
  void *p = NULL;
  if (k->on) {
    mag *drop = NULL;
    pthread_mutex_lock(&s->mu);
    p = take_cached(k, s, c, &drop);
    pthread_mutex_unlock(&s->mu);
    mag_free(rt, c, drop, false);
  }
  return p != NULL ? p : rt->alloc(rt->alloc_ud, NULL, 0, class_size[c]);
}

/*
** Gives p (of class c) to the caller's shard: to its loaded magazine, else
** to its previous one (empty), else the previous one (full) goes to the
** depot and an empty one from the depot (or a new one) is loaded.  Returns
** false when p could not be kept.  s->mu held; *drop is set to a full
** magazine to free (the depot has enough full ones).
*/
static bool give_cached(weft_runtime *rt, shard *s, int c, void *p,
                        mag **drop) {
  mag *m = s->loaded[c], *pv = s->prev[c];
  if (m == NULL || m->n == MAG) {
    if (pv != NULL && pv->n == 0) {
      s->prev[c] = m;
      s->loaded[c] = m = pv;
    } else {
      depot *d = depot_of(rt->cache, c);
      pthread_mutex_lock(&d->mu);
      size_t keep = class_size[c] <= 128 ? DEPOT_SMALL : DEPOT_LARGE;
      if (pv != NULL && (size_t)d->nfull * MAG * class_size[c] < keep) {
        pv->next = d->full;
        d->full = pv;
        d->nfull++;
        pv = NULL;
      }
      mag *e = d->empty;
      if (e != NULL) {
        d->empty = e->next;
        d->nempty--;
      }
      pthread_mutex_unlock(&d->mu);
      s->prev[c] = m;  /* full or NULL; the old one is the depot's now, */
      s->loaded[c] = NULL;  /* or refused (pv), to free or to reuse */
      if (e == NULL && pv != NULL) {  /* reuse the one the depot refused */
        mag_free(rt, c, pv, true);
        e = pv;
      } else {
        *drop = pv;
      }
      if (e == NULL) e = rt->alloc(rt->alloc_ud, NULL, 0, sizeof *e);
      if (e == NULL) return false;  /* no magazine: p goes to the allocator */
      e->n = 0;
      s->loaded[c] = m = e;
    }
  }
  m->blocks[m->n++] = p;
  return true;
}

static void give(weft_runtime *rt, shard *s, int c, void *p) {
  if (rt->cache->on) {
    mag *drop = NULL;
    pthread_mutex_lock(&s->mu);
    bool kept = give_cached(rt, s, c, p, &drop);
    pthread_mutex_unlock(&s->mu);
    mag_free(rt, c, drop, false);
    if (kept) return;
  }
  rt->alloc(rt->alloc_ud, p, class_size[c], 0);
}

void *weft_alloc(weft_runtime *rt, size_t n) {
  shard *s = my_shard(rt->cache);
  int c = class_of(n);
  void *p = c >= 0 ? take(rt, s, c) : rt->alloc(rt->alloc_ud, NULL, 0, n);
  if (p != NULL) count(s, 1, (long)n);
  return p;
}

void weft_free(weft_runtime *rt, void *p, size_t n) {
  if (p == NULL) return;
  shard *s = my_shard(rt->cache);
  int c = class_of(n);
  if (c >= 0)
    give(rt, s, c, p);
  else
    rt->alloc(rt->alloc_ud, p, n, 0);
  count(s, -1, -(long)n);
}

void *weft_realloc(weft_runtime *rt, void *p, size_t osize, size_t nsize) {
  if (p == NULL) return weft_alloc(rt, nsize);
  shard *s = my_shard(rt->cache);
  int oc = class_of(osize), nc = class_of(nsize);
  void *q;
  if (oc >= 0 && oc == nc) {
    q = p;  /* the block has room already */
  } else if (oc >= 0 || nc >= 0) {  /* into or out of a class: move */
    q = nc >= 0 ? take(rt, s, nc) : rt->alloc(rt->alloc_ud, NULL, 0, nsize);
    if (q == NULL) return NULL;
    memcpy(q, p, osize < nsize ? osize : nsize);
    if (oc >= 0)
      give(rt, s, oc, p);
    else
      rt->alloc(rt->alloc_ud, p, osize, 0);
  } else {
    q = rt->alloc(rt->alloc_ud, p, osize, nsize);
    if (q == NULL) return NULL;
  }
  count(s, 0, (long)nsize - (long)osize);
  return q;
}
