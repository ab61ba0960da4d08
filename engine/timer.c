/*
** timer.c: the runtime's deadline thread (timer.h).
**
** Owns: the min-heap of queued entries (ordered by `when`, each entry's
** `index` kept equal to its heap slot, SIZE_MAX when not queued), the
** thread, and its CLOCK_MONOTONIC condition variable.  The thread sleeps
** in pthread_cond_timedwait until the earliest entry is due or the heap
** changes; it never polls.
**
** Locking: t->mu guards every field of the timer and the `index` of every
** entry.  claim() runs under t->mu; fire() runs with no timer lock held, so
** fire() may take owner locks and call weft_timer_remove/add.  Nothing here
** calls Lua, and the timer thread blocks every signal (a host's SIGINT
** handler keeps running on the host's threads).
**
** Invariant relied upon by runtime.c: the last reference on a runtime is
** dropped only after weft_timer_stop joined the thread (the owner closes
** the runtime first), so the thread never destroys its own timer.
*/
#include "timer.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <time.h>

#include "runtime.h"

#define FIRE_BATCH 16  /* entries fired per unlock of t->mu */

int weft_timer_init(weft_timer *t, struct weft_runtime *rt) {
  pthread_condattr_t ca;
  int e;
  t->heap = NULL;
  t->n = t->cap = 0;
  t->started = t->stopped = false;
  t->rt = rt;
  if ((e = pthread_mutex_init(&t->mu, NULL)) != 0) return e;
  if ((e = pthread_condattr_init(&ca)) != 0) goto fail_mu;
  e = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  if (e == 0) e = pthread_cond_init(&t->cv, &ca);
  pthread_condattr_destroy(&ca);
  if (e != 0) goto fail_mu;
  return 0;
fail_mu:
  pthread_mutex_destroy(&t->mu);
  return e;
}

/* --- heap (t->mu held) -------------------------------------------------- */

static void heap_set(weft_timer *t, size_t i, weft_timer_entry *e) {
  t->heap[i] = e;
  e->index = i;
}

static void sift_up(weft_timer *t, size_t i) {
  weft_timer_entry *e = t->heap[i];
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (t->heap[p]->when <= e->when) break;
    heap_set(t, i, t->heap[p]);
    i = p;
  }
  heap_set(t, i, e);
}

static void sift_down(weft_timer *t, size_t i) {
  weft_timer_entry *e = t->heap[i];
  for (;;) {
    size_t l = 2 * i + 1, m = i;
    double mw = e->when;
    if (l < t->n && t->heap[l]->when < mw) m = l, mw = t->heap[l]->when;
    if (l + 1 < t->n && t->heap[l + 1]->when < mw) m = l + 1;
    if (m == i) break;
    heap_set(t, i, t->heap[m]);
    i = m;
  }
  heap_set(t, i, e);
}

/* Takes the entry at slot i out of the heap. */
static void heap_delete(weft_timer *t, size_t i) {
  weft_timer_entry *e = t->heap[i];
  e->index = SIZE_MAX;
  t->n--;
  if (i == t->n) return;
  heap_set(t, i, t->heap[t->n]);
  if (i > 0 && t->heap[(i - 1) / 2]->when > t->heap[i]->when)
    sift_up(t, i);
  else
    sift_down(t, i);
}

/* --- the thread ---------------------------------------------------------- */

struct timespec weft_timespec_at(double when) {
  struct timespec ts;
  if (!(when < 4e9)) when = 4e9;  /* far future (also NaN): ~126 years */
  if (when < 0) when = 0;
  double s = floor(when);
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((when - s) * 1e9);
  if (ts.tv_nsec >= 1000000000L) ts.tv_nsec = 999999999L;
  return ts;
}

static void *timer_main(void *arg) {
  weft_timer *t = arg;
  weft_timer_entry *batch[FIRE_BATCH];
  pthread_mutex_lock(&t->mu);
  while (!t->stopped) {
    if (t->n == 0) {
      pthread_cond_wait(&t->cv, &t->mu);
      continue;
    }
    double now = weft_now();
    if (t->heap[0]->when > now) {
      struct timespec ts = weft_timespec_at(t->heap[0]->when);
      pthread_cond_timedwait(&t->cv, &t->mu, &ts);
      continue;
    }
    size_t nb = 0;
    while (nb < FIRE_BATCH && t->n > 0 && t->heap[0]->when <= now) {
      weft_timer_entry *e = t->heap[0];
      heap_delete(t, 0);  /* sets e->index = SIZE_MAX */
      if (e->claim(e)) batch[nb++] = e;
    }
    pthread_mutex_unlock(&t->mu);
    for (size_t i = 0; i < nb; i++) batch[i]->fire(batch[i]);
    pthread_mutex_lock(&t->mu);
  }
  pthread_mutex_unlock(&t->mu);
  return NULL;
}

/* Starts the thread with every signal blocked (t->mu held). */
static int start_thread(weft_timer *t) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int e = pthread_create(&t->thread, NULL, timer_main, t);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (e == 0) t->started = true;
  return e;
}

/* --- API ------------------------------------------------------------------ */

int weft_timer_add(weft_timer *t, weft_timer_entry *e, double when) {
  int err = 0;
  pthread_mutex_lock(&t->mu);
  if (t->stopped) {
    err = ESHUTDOWN;
    goto out;
  }
  if (!t->started && (err = start_thread(t)) != 0) goto out;
  if (e->index != SIZE_MAX) heap_delete(t, e->index);  /* re-arm */
  if (t->n == t->cap) {
    size_t ncap = t->cap ? t->cap * 2 : 16;
    weft_timer_entry **h =
        weft_realloc(t->rt, t->heap, t->cap * sizeof *h, ncap * sizeof *h);
    if (h == NULL) {
      err = ENOMEM;
      goto out;
    }
    t->heap = h;
    t->cap = ncap;
  }
  e->when = when;
  heap_set(t, t->n, e);
  t->n++;
  sift_up(t, t->n - 1);
  if (e->index == 0) pthread_cond_signal(&t->cv);  /* new earliest */
out:
  pthread_mutex_unlock(&t->mu);
  return err;
}

void weft_timer_remove(weft_timer *t, weft_timer_entry *e) {
  pthread_mutex_lock(&t->mu);
  /* A removed head only makes the thread wake early once: no signal. */
  if (e->index != SIZE_MAX) heap_delete(t, e->index);
  pthread_mutex_unlock(&t->mu);
}

void weft_timer_stop(weft_timer *t) {
  pthread_mutex_lock(&t->mu);
  bool join = t->started && !t->stopped;
  t->stopped = true;
  pthread_cond_broadcast(&t->cv);
  pthread_mutex_unlock(&t->mu);
  if (!join) return;
  if (pthread_equal(pthread_self(), t->thread))
    pthread_detach(t->thread);  /* misuse (stop from fire): never self-join */
  else
    pthread_join(t->thread, NULL);
}

void weft_timer_destroy(weft_timer *t) {
  weft_free(t->rt, t->heap, t->cap * sizeof *t->heap);
  t->heap = NULL;
  t->n = t->cap = 0;
  pthread_cond_destroy(&t->cv);
  pthread_mutex_destroy(&t->mu);
}
