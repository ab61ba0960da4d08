/*
** spec/c/alloc_test.c: the engine's block cache (engine/alloc.c) under an
** allocator that refuses memory.  A thread's freed blocks go into
** magazines it allocates as it needs them; when one cannot be allocated,
** the block goes back to the allocator and the cache must stay whole: no
** block handed out twice, every byte back at the end.  With the cache off
** (WEFT_NO_BLOCK_CACHE=1, AddressSanitizer) the same checks hold
** trivially.
*/
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"
#include "weft.h"

#include "tap.h"


static atomic_long bytes;       /* allocated through flaky_alloc, not freed */
static atomic_bool refusing;    /* refuse what is not a cached block */

/* Refuses, while `refusing`, every new allocation whose size is not a
   multiple of 64: every cached block's size is one, and the magazines'
   bookkeeping is not. */
static void *flaky_alloc(void *ud, void *p, size_t osize, size_t nsize) {
  (void)ud;
  if (p == NULL) osize = 0;
  if (nsize == 0) {
    atomic_fetch_sub(&bytes, (long)osize);
    free(p);
    return NULL;
  }
  if (p == NULL && nsize % 64 != 0 && atomic_load(&refusing)) return NULL;
  void *q = realloc(p, nsize);
  if (q != NULL) atomic_fetch_add(&bytes, (long)nsize - (long)osize);
  return q;
}

static int by_address(const void *a, const void *b) {
  uintptr_t x = (uintptr_t) * (void *const *)a;
  uintptr_t y = (uintptr_t) * (void *const *)b;
  return (x > y) - (x < y);
}

#define SIZE 192   /* one of the cache's classes */
#define GIVEN 40   /* freed with magazines to spare, then while refused */
#define TAKEN 128  /* more than the cache can hold for this thread */

int main(void) {
  weft_config cfg = {0};
  cfg.workers = -1; /* no runtime pool: this thread alone allocates */
  cfg.alloc = flaky_alloc;
  char err[128];
  weft_runtime *rt = weft_runtime_new(&cfg, err, sizeof err);
  if (rt == NULL) {
    printf("Bail out! %s\n", err);
    return 1;
  }
  long blocks0, bytes0;
  weft_alloc_live(rt, &blocks0, &bytes0);

  /* Free GIVEN blocks: the first half while magazines can be made, the
     rest while they cannot (the thread's full magazines go to the depot,
     and no empty one comes back). */
  static void *given[GIVEN], *taken[TAKEN];
  for (int i = 0; i < GIVEN; i++) given[i] = weft_alloc(rt, SIZE);
  for (int i = 0; i < GIVEN; i++) {
    if (i == GIVEN / 2) atomic_store(&refusing, true);
    weft_free(rt, given[i], SIZE);
  }
  atomic_store(&refusing, false);

  /* Take more than was kept: every block handed out must be a different
     one (a magazine owned by the depot and the thread at once would hand
     its blocks out twice). */
  for (int i = 0; i < TAKEN; i++) {
    taken[i] = weft_alloc(rt, SIZE);
    if (taken[i] != NULL) memset(taken[i], i, SIZE);
  }
  int missing = 0, twice = 0;
  static void *sorted[TAKEN];
  memcpy(sorted, taken, sizeof taken);
  qsort(sorted, TAKEN, sizeof *sorted, by_address);
  for (int i = 0; i < TAKEN; i++) {
    if (sorted[i] == NULL) missing++;
    if (i > 0 && sorted[i] != NULL && sorted[i] == sorted[i - 1]) twice++;
  }
  char detail[128];
  snprintf(detail, sizeof detail, "%d of %d blocks handed out twice, %d NULL",
           twice, TAKEN, missing);
  check(twice == 0 && missing == 0,
        "blocks freed while magazines could not be made are never handed "
        "out twice",
        detail);
  int intact = 1;
  for (int i = 0; i < TAKEN; i++)
    for (int k = 0; k < SIZE; k++)
      if (((unsigned char *)taken[i])[k] != (unsigned char)i) intact = 0;
  check(intact, "each block keeps what was written into it", NULL);

  for (int i = 0; i < TAKEN; i++) weft_free(rt, taken[i], SIZE);
  long blocks1, bytes1;
  weft_alloc_live(rt, &blocks1, &bytes1);
  snprintf(detail, sizeof detail,
           "%ld blocks, %ld bytes live (before: %ld, %ld)", blocks1, bytes1,
           blocks0, bytes0);
  check(blocks1 == blocks0 && bytes1 == bytes0,
        "the engine's live counts are back where they were", detail);

  weft_runtime_close(rt, 0);
  snprintf(detail, sizeof detail, "%ld bytes still allocated",
           (long)atomic_load(&bytes));
  check(atomic_load(&bytes) == 0,
        "every byte, cached blocks and magazines too, is freed at teardown",
        detail);
  return tap_done();
}
