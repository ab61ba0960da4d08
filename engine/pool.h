/*
** pool.h: bounded pools of Lua workers (DESIGN.md, "Pools").
**
** A pool has `workers` threads, each owning one lua_State for its whole
** life; it admits at most `limit` jobs at once (running, parked, or
** admitted and waiting for a thread) and lets `queue` more wait for
** admission.  A job runs as a coroutine of one worker's state; when it
** parks in a blocking weft call, its worker runs other jobs and resumes
** it on the same worker once woken.
*/
#ifndef WEFT_POOL_H
#define WEFT_POOL_H

#include <stdbool.h>
#include <stddef.h>

#include <lua.h>

#include "context.h"
#include "future.h"
#include "object.h"
#include "value.h"
#include "wait.h"
#include "weft.h"

typedef struct weft_pool weft_pool;
typedef struct weft_job weft_job;

extern const weft_class weft_pool_class;

typedef struct weft_pool_config {
  int workers, limit, queue;
  bool hard_cancel;
  bool cooperative;      /* no threads: jobs run in weft_pool_poll */
  size_t memory_limit;   /* bytes per worker state; 0: none */
  const char *name;      /* copied */
  weft_buf *init;        /* a function, or a module name; may be NULL */
  weft_buf *on_panic;    /* a function; may be NULL (log it) */
  const char *path;      /* package.path and cpath for the workers; */
  const char *cpath;     /* NULL: Lua's defaults */
} weft_pool_config;

/*
** Starts the workers and runs init in each; returns once all are ready.
** On failure returns NULL and a message in err.  The config's buffers are
** taken over in every case.  Any thread.
*/
weft_pool *weft_pool_new(weft_runtime *rt, const weft_pool_config *cfg,
                         char *err, size_t errlen);

enum { WEFT_SUBMIT_OK = 0, WEFT_SUBMIT_FULL, WEFT_SUBMIT_CLOSED,
       WEFT_SUBMIT_NOMEM };

/*
** Admits the call (fn and arguments, taken over on success) to run as
** fn(ctx, ...), or queues it; never blocks.  On success *out is the job's
** future (a new reference).  Any thread.
*/
int weft_pool_try_submit(weft_pool *p, weft_ctx *ctx, weft_buf *call,
                         weft_future **out);

/* Waiters for room to submit (false: there is room, or p is closing). */
bool weft_pool_add_admit_waiter(weft_pool *p, weft_waiter *w);
void weft_pool_remove_admit_waiter(weft_pool *p, weft_waiter *w);

/* Waiters for the pool to be idle (false: it is idle now). */
bool weft_pool_add_idle_waiter(weft_pool *p, weft_waiter *w);
void weft_pool_remove_idle_waiter(weft_pool *p, weft_waiter *w);

/*
** Interrupts every job of p: a started one at its next instruction (or
** its next weft call when hard cancel is off), one not started yet as it
** starts, without running; they end as canceled with "pool closed".  For
** pool:close(timeout) and weft_runtime_close.  Any thread.
*/
void weft_pool_kill(weft_pool *p);

/* Stops admission (submit fails from now on, blocked submits wake). */
void weft_pool_shutdown(weft_pool *p);
/* After shutdown and once idle: stops and joins the workers.  Not from a
   worker of p. */
void weft_pool_join(weft_pool *p);
bool weft_pool_is_worker(weft_pool *p);  /* the caller is one of p's */
const char *weft_pool_name(weft_pool *p);

typedef struct weft_pool_stats {
  long workers, limit, queue, running, parked, queued, inflight;
  long admitted;       /* admitted, not started */
  long submitted, completed, failed, panicked, canceled;
  long memory_errors;  /* jobs failed at the memory limit (of panicked) */
  double latency[4];   /* submit to finish: p50, p90, p99, max (seconds) */
} weft_pool_stats;

void weft_pool_get_stats(weft_pool *p, weft_pool_stats *s);

/* Lua bytes of each worker state into out[0 .. n-1] (the rest zeroed);
   returns the total over all of them.  Any thread. */
size_t weft_pool_memory(weft_pool *p, size_t *out, int n);

/*
** Cooperative pools: runs jobs on the calling thread until none is ready
** or the deadline (weft_now() clock) passes, suspending a running job at
** the deadline where Lua allows.  Returns how many job slices ran; 0 when
** p is not cooperative or another thread is polling it.
*/
int weft_pool_poll(weft_pool *p, double deadline);
bool weft_pool_cooperative(weft_pool *p);
/* True when the calling thread is the one that polls cooperative p (a
   thread wait there on p's work could never end). */
bool weft_pool_is_host_thread(weft_pool *p);

/* weft_runtime_close: stops admission to every pool of rt and interrupts
   every started job.  Any thread. */
void weft_pools_stop_all(weft_runtime *rt);
/*
** weft_runtime_close: waits until deadline for p to be idle (running a
** cooperative pool meanwhile), then joins its workers.  Returns 0, or the
** number of workers that did not stop (each logged; p is then not joined
** and must never be freed).  Not from a worker of p.
*/
int weft_pool_finish(weft_pool *p, double deadline);

/* Waits until p is idle (nothing admitted, queued or resolving) or the
   deadline passes, blocking the calling thread; returns whether it is
   idle.  Not from a worker of p. */
bool weft_pool_wait_idle(weft_pool *p, double deadline);

/* The pool whose worker owns state L (any coroutine of it), else NULL. */
weft_pool *weft_pool_of_state(lua_State *L);
/* The job whose own coroutine L is (running now), else NULL. */
weft_job *weft_job_running(lua_State *L);
/* The job whose own coroutine L is, when it may yield; else NULL. */
weft_job *weft_job_of(lua_State *L);
/* Makes a parked job runnable (or marks the wake-up if it has not parked
   yet).  Any thread; takes only its worker's (leaf) lock. */
void weft_job_wake(weft_job *j);
/* From now on hard cancel leaves j alone (but pool:close still stops it):
   a job that failed and cancels its own group finishes with its error.
   The job's own thread. */
void weft_job_shield(weft_job *j);
/* The error ending j under hard cancel (its context's), or WEFT_LIVE. */
int weft_job_canceled(weft_job *j);
/*
** Yields the job of L to its worker, to be resumed at k.  kind and target
** say what it waits for, for deadlock detection: WEFT_WAIT_ADMIT (a pool),
** WEFT_WAIT_FUTURE (a future), or WEFT_WAIT_OTHER (NULL).
*/
enum { WEFT_WAIT_OTHER = 0, WEFT_WAIT_ADMIT, WEFT_WAIT_FUTURE };
int weft_job_park(lua_State *L, lua_KContext kctx, lua_KFunction k, int kind,
                  void *target);
/* The deadlock message if the pool found j's wait hopeless (then clears
   it), else NULL.  The job's own thread. */
const char *weft_job_deadlock(weft_job *j);

#define WEFT_DEADLOCK_MSG "deadlock"
#define WEFT_KILLED_MSG "pool closed"
enum { WEFT_KILLED = 100 };  /* weft_job_canceled: stopped by close */

#endif
