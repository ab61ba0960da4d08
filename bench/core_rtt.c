/*
** core_rtt.c: what one cache line costs to move between the two cores.
** The overhead case of pool_bench.lua hands every job, its future and
** their counters from the submitting thread to a worker and back, so its
** jobs/s follows this figure.  On the bench's virtual machines it is not
** fixed: the host places the two virtual CPUs on sibling hyperthreads
** (~100 ns) or on distant cores (~500 ns), and that changes between runs.
** Two threads bounce one line (each waits for the other's store), 5 runs
** of 200,000 round trips; prints "median N ns (runs: A-B ns)".
*/
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define TRIPS 200000L
#define RUNS 5

static _Alignas(64) atomic_long ball;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Answers every odd value with the next even one, TRIPS times. */
static void *partner(void *arg) {
  long base = *(long *)arg;
  for (long i = 1; i <= TRIPS; i++) {
    long want = base + 2 * i - 1;
    while (atomic_load_explicit(&ball, memory_order_acquire) != want) {
    }
    atomic_store_explicit(&ball, want + 1, memory_order_release);
  }
  return NULL;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(void) {
  double ns[RUNS];
  for (int r = 0; r < RUNS; r++) {
    long base = atomic_load(&ball);
    pthread_t th;
    if (pthread_create(&th, NULL, partner, &base) != 0) return 1;
    double t0 = now();
    for (long i = 1; i <= TRIPS; i++) {
      long back = base + 2 * i;
      atomic_store_explicit(&ball, back - 1, memory_order_release);
      while (atomic_load_explicit(&ball, memory_order_acquire) != back) {
      }
    }
    ns[r] = (now() - t0) / TRIPS * 1e9;
    pthread_join(th, NULL);
  }
  qsort(ns, RUNS, sizeof *ns, by_value);
  printf("median %.0f ns (runs: %.0f-%.0f ns)\n", ns[RUNS / 2], ns[0],
         ns[RUNS - 1]);
  return 0;
}
