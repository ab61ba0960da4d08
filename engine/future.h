/*
** future.h: the result of one job, resolved exactly once, waited on from
** any state (a shared handle, class "weft.future").
*/
#ifndef WEFT_FUTURE_H
#define WEFT_FUTURE_H

#include <stdbool.h>

#include "object.h"
#include "value.h"
#include "wait.h"
#include "weft.h"

typedef struct weft_future weft_future;

enum { WEFT_FUT_PENDING = 0, WEFT_FUT_OK, WEFT_FUT_ERROR };

extern const weft_class weft_future_class;

weft_future *weft_future_new(weft_runtime *rt);  /* NULL: out of memory */
void weft_future_retain(weft_future *f);
void weft_future_release(weft_future *f);

/*
** Resolves f with state (WEFT_FUT_OK: result holds the job's results;
** WEFT_FUT_ERROR: one error value), taking result over.  Only the first
** resolve counts: later ones release their result and return false.
** Wakes every waiter.  Any thread; no locks held.
*/
bool weft_future_resolve(weft_future *f, int state, weft_buf *result);

/* The state, and once resolved the result (owned by f).  Lock-free. */
int weft_future_state(weft_future *f);
weft_buf *weft_future_result(weft_future *f);

/*
** The pool and job that will resolve f (deadlock detection).  bind runs
** once, before f is published; the job is cleared, under the pool's lock,
** when it finishes, and is read only under that lock.
*/
struct weft_pool;
struct weft_job;
void weft_future_bind(weft_future *f, struct weft_pool *p, struct weft_job *j);
void weft_future_unbind_job(weft_future *f);  /* under the pool's lock */
struct weft_pool *weft_future_pool(weft_future *f);
struct weft_job *weft_future_job(weft_future *f);

/* Adds w unless f is resolved (then returns false). */
bool weft_future_add_waiter(weft_future *f, weft_waiter *w);
void weft_future_remove_waiter(weft_future *f, weft_waiter *w);

#endif
