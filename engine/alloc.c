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
** per size class (at most CACHE_DEPTH each) and handed out again, to any
** thread.  The counts are sharded by thread (a hash of the stack address)
** so that threads do not fight over one cache line per allocation.
**
** Locking: each class has its own mutex (adaptive: its critical sections
** are a few instructions), a leaf taken alone.  The counts are atomic.
** The cache is off under AddressSanitizer and when WEFT_NO_BLOCK_CACHE=1
** (spec/run sets it for valgrind and the allocation sweep; the fuzz
** target too): reused blocks would hide a use after free from them, and
** the sweep wants every allocation to reach its failing allocator.
*/
#include "runtime.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CACHE_DEPTH 256  /* blocks kept per class */

/* The classes' block sizes: past 128 bytes, steps of at most half a
   class, so that a block wastes less than a third of itself. */
static const size_t class_size[WEFT_CACHE_CLASSES] = {64,  128, 192,
                                                      256, 384, 512};

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

/* The class of a block of n bytes, or -1 when it is not cached. */
static int class_of(size_t n) {
  for (int c = 0; c < WEFT_CACHE_CLASSES; c++)
    if (n <= class_size[c]) return c;
  return -1;
}

static weft_alloc_shard *shard(weft_runtime *rt) {
  char here;
  uint64_t a = (uint64_t)(uintptr_t)&here >> 16;  /* one per thread stack */
  a *= 0x9e3779b97f4a7c15u;
  return &rt->live[a >> 61];  /* WEFT_ALLOC_SHARDS is 8 */
}

static void count(weft_runtime *rt, long blocks, long bytes) {
  weft_alloc_shard *s = shard(rt);
  if (blocks != 0)
    atomic_fetch_add_explicit(&s->blocks, blocks, memory_order_relaxed);
  atomic_fetch_add_explicit(&s->bytes, bytes, memory_order_relaxed);
}

bool weft_alloc_init(weft_runtime *rt) {
  for (int i = 0; i < WEFT_ALLOC_SHARDS; i++) {
    atomic_init(&rt->live[i].blocks, 0);
    atomic_init(&rt->live[i].bytes, 0);
  }
  const char *off = getenv("WEFT_NO_BLOCK_CACHE");
  rt->cache_on = CACHE_BUILT && !(off != NULL && strcmp(off, "1") == 0);
  pthread_mutexattr_t a;
  if (pthread_mutexattr_init(&a) != 0) return false;
  pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ADAPTIVE_NP);
  int c = 0;
  for (; c < WEFT_CACHE_CLASSES; c++) {
    weft_block_cache *k = &rt->cache[c];
    k->head = NULL;
    k->n = 0;
    if (pthread_mutex_init(&k->mu, &a) != 0) break;
  }
  pthread_mutexattr_destroy(&a);
  if (c == WEFT_CACHE_CLASSES) return true;
  while (c-- > 0) pthread_mutex_destroy(&rt->cache[c].mu);
  return false;
}

void weft_alloc_destroy(weft_runtime *rt) {
  for (int c = 0; c < WEFT_CACHE_CLASSES; c++) {
    weft_block_cache *k = &rt->cache[c];
    size_t size = class_size[c];
    while (k->head != NULL) {
      void *p = k->head;
      memcpy(&k->head, p, sizeof(void *));
      rt->alloc(rt->alloc_ud, p, size, 0);
    }
    pthread_mutex_destroy(&k->mu);
  }
}

void weft_alloc_live(weft_runtime *rt, long *blocks, long *bytes) {
  long nb = 0, ns = 0;
  for (int i = 0; i < WEFT_ALLOC_SHARDS; i++) {
    nb += atomic_load_explicit(&rt->live[i].blocks, memory_order_relaxed);
    ns += atomic_load_explicit(&rt->live[i].bytes, memory_order_relaxed);
  }
  *blocks = nb;
  *bytes = ns;
}

/* A block of class c from the cache, or from the allocator. */
static void *take(weft_runtime *rt, int c) {
  weft_block_cache *k = &rt->cache[c];
  void *p = NULL;
  if (rt->cache_on) {
    pthread_mutex_lock(&k->mu);
    p = k->head;
    if (p != NULL) {
      memcpy(&k->head, p, sizeof(void *));
      k->n--;
    }
    pthread_mutex_unlock(&k->mu);
  }
  return p != NULL ? p : rt->alloc(rt->alloc_ud, NULL, 0, class_size[c]);
}

/* Gives a block of class c back to the cache, or to the allocator. */
static void give(weft_runtime *rt, int c, void *p) {
  weft_block_cache *k = &rt->cache[c];
  if (rt->cache_on) {
    pthread_mutex_lock(&k->mu);
    bool kept = k->n < CACHE_DEPTH;
    if (kept) {
      memcpy(p, &k->head, sizeof(void *));
      k->head = p;
      k->n++;
    }
    pthread_mutex_unlock(&k->mu);
    if (kept) return;
  }
  rt->alloc(rt->alloc_ud, p, class_size[c], 0);
}

void *weft_alloc(weft_runtime *rt, size_t n) {
  int c = class_of(n);
  void *p = c >= 0 ? take(rt, c) : rt->alloc(rt->alloc_ud, NULL, 0, n);
  if (p != NULL) count(rt, 1, (long)n);
  return p;
}

void weft_free(weft_runtime *rt, void *p, size_t n) {
  if (p == NULL) return;
  int c = class_of(n);
  if (c >= 0)
    give(rt, c, p);
  else
    rt->alloc(rt->alloc_ud, p, n, 0);
  count(rt, -1, -(long)n);
}

void *weft_realloc(weft_runtime *rt, void *p, size_t osize, size_t nsize) {
  if (p == NULL) return weft_alloc(rt, nsize);
  int oc = class_of(osize), nc = class_of(nsize);
  void *q;
  if (oc >= 0 && oc == nc) {
    q = p;  /* the block has room already */
  } else if (oc >= 0 || nc >= 0) {  /* into or out of a class: move */
    q = nc >= 0 ? take(rt, nc) : rt->alloc(rt->alloc_ud, NULL, 0, nsize);
    if (q == NULL) return NULL;
    memcpy(q, p, osize < nsize ? osize : nsize);
    if (oc >= 0)
      give(rt, oc, p);
    else
      rt->alloc(rt->alloc_ud, p, osize, 0);
  } else {
    q = rt->alloc(rt->alloc_ud, p, osize, nsize);
    if (q == NULL) return NULL;
  }
  count(rt, 0, (long)nsize - (long)osize);
  return q;
}
