/*
** timer.h: the runtime's deadline thread.  One thread per runtime, started
** on the first deadline, sleeping on a monotonic condition variable until
** the earliest entry is due (never polling).
**
** Entries are embedded in their owners (contexts) and are weak: when an
** entry is due, claim() runs under the timer lock and must return false if
** the owner is being destroyed (then the entry is just dropped); fire()
** then runs on the timer thread without the lock.  An owner removes its
** entry before it is freed.  Lock order: owner locks are never held while
** the timer lock is taken from fire(); remove() takes only the timer lock.
*/
#ifndef WEFT_TIMER_H
#define WEFT_TIMER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <time.h>

typedef struct weft_timer_entry weft_timer_entry;

struct weft_timer_entry {
  double when;                              /* weft_now() clock */
  size_t index;                             /* heap slot; SIZE_MAX: none */
  bool (*claim)(weft_timer_entry *e);       /* under the timer lock */
  void (*fire)(weft_timer_entry *e);        /* timer thread, no lock */
};

typedef struct weft_timer {
  pthread_mutex_t mu;
  pthread_cond_t cv;                        /* CLOCK_MONOTONIC */
  weft_timer_entry **heap;
  size_t n, cap;
  bool started, stopped;
  pthread_t thread;
  struct weft_runtime *rt;                  /* for allocation */
} weft_timer;

int weft_timer_init(weft_timer *t, struct weft_runtime *rt);  /* 0 | errno */
/* Stops and joins the thread; later adds fail.  Not from fire(). */
void weft_timer_stop(weft_timer *t);
void weft_timer_destroy(weft_timer *t);    /* after stop */

/*
** Queues e (claim/fire set by the caller) at e->when.  Returns 0, ENOMEM,
** ESHUTDOWN (stopped) or the error of pthread_create.  Any thread.
*/
int weft_timer_add(weft_timer *t, weft_timer_entry *e, double when);
/* Unqueues e if it is still queued.  Any thread, not holding owner locks
   that fire() takes. */
void weft_timer_remove(weft_timer *t, weft_timer_entry *e);

/* The absolute CLOCK_MONOTONIC time of `when` (weft_now's clock), for a
   timed wait on a condition variable with that clock; far or NaN: ~126
   years. */
struct timespec weft_timespec_at(double when);

#endif
