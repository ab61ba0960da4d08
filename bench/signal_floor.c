/*
** signal_floor.c: what hard cancel cannot beat on this machine.  Hard
** cancel interrupts a running job by sending its worker thread a signal
** whose handler installs the hook (engine/pool.c); this program measures
** that delivery alone, in C with no Lua: from pthread_kill of a thread
** spinning on the other core to its handler running, 200 times, 1 ms
** apart (the pattern of pool_bench.lua's cancel latency case).  Prints
** "median P50 us, p99 P99 us, pthread_kill returns after R us (median)".
*/
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define SAMPLES 200

static atomic_int hits;
static atomic_int stop;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void on_signal(int sig) {
  (void)sig;
  atomic_fetch_add(&hits, 1);
}

static void *spin(void *arg) {
  (void)arg;
  while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
  }
  return NULL;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(void) {
  struct sigaction sa = {0};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGUSR1, &sa, NULL) != 0) return 1;
  pthread_t th;
  if (pthread_create(&th, NULL, spin, NULL) != 0) return 1;
  static double lat[SAMPLES], ret[SAMPLES];
  struct timespec gap = {0, 1000000L};
  for (int i = 0; i < SAMPLES; i++) {
    nanosleep(&gap, NULL);
    int before = atomic_load(&hits);
    double t0 = now();
    pthread_kill(th, SIGUSR1);
    ret[i] = (now() - t0) * 1e6;
    double limit = t0 + 1.0;  /* bounded: a lost signal ends the run */
    while (atomic_load(&hits) == before)
      if (now() > limit) return 2;
    lat[i] = (now() - t0) * 1e6;
  }
  atomic_store(&stop, 1);
  pthread_join(th, NULL);
  qsort(lat, SAMPLES, sizeof *lat, by_value);
  qsort(ret, SAMPLES, sizeof *ret, by_value);
  printf("median %.1f us, p99 %.1f us, pthread_kill returns after %.1f us "
         "(median)\n",
         lat[SAMPLES / 2], lat[SAMPLES * 99 / 100], ret[SAMPLES / 2]);
  return 0;
}
