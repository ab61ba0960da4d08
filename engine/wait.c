/*
** wait.c: waiter lists and parks (wait.h).
**
** Owns: nothing shared.  Locking: waiter lists are guarded by their
** source's lock (held by the callers); a thread park's mutex is a leaf
** lock; a job park is woken through the job's worker (pool.c, leaf lock).
*/
#include "wait.h"

#include <sched.h>
#include <time.h>

#include "pool.h"
#include "runtime.h"

void weft_waiters_add(weft_waiter **head, weft_waiter *w) {
  w->prev = NULL;
  w->next = *head;
  if (*head != NULL) (*head)->prev = w;
  *head = w;
}

void weft_waiters_remove(weft_waiter **head, weft_waiter *w) {
  if (w->prev != NULL)
    w->prev->next = w->next;
  else if (*head == w)
    *head = w->next;
  else
    return;  /* not listed: woken already, or never added */
  if (w->next != NULL) w->next->prev = w->prev;
  w->prev = w->next = NULL;
}

void weft_waiters_wake_all(weft_waiter **head) {
  weft_waiter *w = *head;
  *head = NULL;
  while (w != NULL) {
    weft_waiter *next = w->next;
    w->prev = w->next = NULL;
    w->wake(w);
    w = next;
  }
}

void weft_park_init_job(weft_park *p, struct weft_job *job) {
  p->job = job;
  p->sync = NULL;
  p->woken = false;
}

int weft_park_init_thread(weft_park *p, weft_park_sync *s) {
  p->job = NULL;
  p->sync = s;
  p->woken = false;
  int e = pthread_mutex_init(&s->mu, NULL);
  if (e != 0) return e;
  pthread_condattr_t a;
  if ((e = pthread_condattr_init(&a)) == 0) {
    e = pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    if (e == 0) e = pthread_cond_init(&s->cv, &a);
    pthread_condattr_destroy(&a);
  }
  if (e != 0) pthread_mutex_destroy(&s->mu);
  return e;
}

void weft_park_destroy(weft_park *p) {
  if (p->job != NULL) return;
  pthread_cond_destroy(&p->sync->cv);
  pthread_mutex_destroy(&p->sync->mu);
}

void weft_park_wake(weft_park *p) {
  if (p->job != NULL) {
    weft_job_wake(p->job);
    return;
  }
  pthread_mutex_lock(&p->sync->mu);
  p->woken = true;
  pthread_cond_signal(&p->sync->cv);
  pthread_mutex_unlock(&p->sync->mu);
}

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

void weft_spin(pthread_mutex_t *mu, const atomic_bool *flag, double seconds) {
  if (atomic_load_explicit(flag, memory_order_relaxed)) return;
  pthread_mutex_unlock(mu);
  double until = weft_now() + seconds;
  for (int round = 0; !atomic_load_explicit(flag, memory_order_relaxed);
       round++) {
    if (round < 8)
      for (int i = 0; i < 16; i++) cpu_relax();
    else
      sched_yield();  /* a thread sharing our core may be the waker */
    if (round % 8 == 7 && weft_now() >= until) break;
  }
  pthread_mutex_lock(mu);
}

/* A wake-up (a job finishing, a cancel) often comes within microseconds,
   sooner than a sleeping thread is woken and scheduled again: spin first. */
void weft_park_block(weft_park *p) {
  weft_park_sync *s = p->sync;
  pthread_mutex_lock(&s->mu);
  weft_spin(&s->mu, &p->woken, WEFT_SPIN_SECONDS);
  while (!p->woken) pthread_cond_wait(&s->cv, &s->mu);
  p->woken = false;
  pthread_mutex_unlock(&s->mu);
}

bool weft_park_block_until(weft_park *p, double deadline) {
  weft_park_sync *s = p->sync;
  pthread_mutex_lock(&s->mu);
  weft_spin(&s->mu, &p->woken, WEFT_SPIN_SECONDS);
  struct timespec ts = weft_timespec_at(deadline);
  while (!p->woken && weft_now() < deadline)
    pthread_cond_timedwait(&s->cv, &s->mu, &ts);
  bool woken = p->woken;
  p->woken = false;
  pthread_mutex_unlock(&s->mu);
  return woken;
}

static void park_waiter_wake(weft_waiter *w) {
  weft_park_wake(((weft_park_waiter *)w)->park);
}

void weft_park_waiter_init(weft_park_waiter *pw, weft_park *p) {
  pw->w.prev = pw->w.next = NULL;
  pw->w.wake = park_waiter_wake;
  pw->park = p;
}
