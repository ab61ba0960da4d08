/*
** wait.h: how blocking calls wait.  Every source a call can wait on (a
** context ending, a future resolving, a pool admitting) keeps a list of
** waiters and wakes them; every waiting call parks: a job coroutine yields
** to its worker (which runs other jobs meanwhile and resumes it on the
** same worker), anything else blocks its thread on a condition variable.
*/
#ifndef WEFT_WAIT_H
#define WEFT_WAIT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include <lua.h>

/*
** A waiter is told once when its source fires.  wake() runs on the
** thread that fires the source, with the source's lock held: it must be
** short, must not block, and may take only leaf locks (a park's).  After
** the source's remove returns, wake is not running and will not run.
*/
typedef struct weft_waiter weft_waiter;
struct weft_waiter {
  weft_waiter *prev, *next;
  void (*wake)(weft_waiter *w);
};

/* Intrusive waiter lists; the caller holds the source's lock. */
void weft_waiters_add(weft_waiter **head, weft_waiter *w);
void weft_waiters_remove(weft_waiter **head, weft_waiter *w);  /* if listed */
void weft_waiters_wake_all(weft_waiter **head);

struct weft_job;

/*
** A park: one waiting call.  Thread mode (job == NULL): a mutex and a
** CLOCK_MONOTONIC condvar, in storage the caller provides (sync), so that
** a job's park carries none.  Job mode: the job coroutine yields and its
** worker parks it; weft_park_wake makes it runnable again.
*/
typedef struct weft_park_sync {
  pthread_mutex_t mu;
  pthread_cond_t cv;
} weft_park_sync;

typedef struct weft_park {
  struct weft_job *job;
  weft_park_sync *sync;  /* thread mode */
  atomic_bool woken;     /* thread mode: written under sync->mu */
} weft_park;

/* Job mode, for a job's own coroutine (weft_job_of): cannot fail. */
void weft_park_init_job(weft_park *p, struct weft_job *job);
/* Thread mode, no Lua: s must outlive the park.  0 or an errno. */
int weft_park_init_thread(weft_park *p, weft_park_sync *s);
void weft_park_destroy(weft_park *p);
/* Marks p woken; any thread, leaf lock only. */
void weft_park_wake(weft_park *p);
/* Thread mode: blocks until woken (then clears the flag). */
void weft_park_block(weft_park *p);
/* Thread mode: the same, but at most until deadline (weft_now's clock);
   returns whether it was woken.  Needs no timer, so no allocation. */
bool weft_park_block_until(weft_park *p, double deadline);

/*
** Spins until *flag is set, for at most `seconds`, before a thread goes
** to sleep on a condition variable: mu is held on entry and on return,
** released while spinning.  The flag is read without the lock (a spinner
** taking the lock round after round made the waker contend for it); the
** wakers set it under mu, and the caller checks its real condition under
** mu after.  After the first rounds the CPU is yielded between checks.
*/
#define WEFT_SPIN_SECONDS 50e-6
void weft_spin(pthread_mutex_t *mu, const atomic_bool *flag, double seconds);

/* A waiter that wakes a park. */
typedef struct weft_park_waiter {
  weft_waiter w;
  weft_park *park;
} weft_park_waiter;

void weft_park_waiter_init(weft_park_waiter *pw, weft_park *p);

#endif
