/*
** future.c: futures (future.h).
**
** Owns: the future's state, result buffer and waiter list.  Locking: f->mu
** guards the waiter list and the transition out of PENDING; state is
** atomic (stored with release after result is set), so reads are
** lock-free; result is immutable once state is not PENDING (but for the
** cycle collector taking it out of a garbage future, cycle.c), and linked
** (weft_buf_link) before it is stored.  Waiters are
** woken under f->mu and may take only leaf locks.
*/
#include "future.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "runtime.h"

struct weft_future {
  weft_object obj;
  weft_runtime *rt;
  pthread_mutex_t mu;
  atomic_int state;
  weft_buf *result;
  weft_waiter *waiters;
  struct weft_pool *pool;  /* immutable once published */
  struct weft_job *job;    /* under the pool's lock */
};

static void future_destroy(weft_object *o) {
  weft_future *f = (weft_future *)o;
  weft_runtime *rt = f->rt;
  weft_buf_release(f->result);
  pthread_mutex_destroy(&f->mu);
  weft_free(rt, f, sizeof *f);
  weft_runtime_release(rt);
}

/*
** For the cycle collector (cycle.c): a future's edge is its result once
** settled (immutable then: read after the acquire of state).  pool and job
** are not references.  Clear takes the result out of a garbage future (no
** one can wait on it any more).
*/
static weft_runtime *future_gc_runtime(weft_object *o) {
  return ((weft_future *)o)->rt;
}

static weft_object *future_gc_next(weft_object *o) {
  (void)o;
  return NULL;
}

static bool future_gc_edges(weft_object *o, weft_gc_visit *v) {
  weft_buf *b = weft_future_result((weft_future *)o);
  return b == NULL || v->buf(v, b);
}

static void future_gc_clear(weft_object *o, weft_gc_visit *v) {
  weft_future *f = (weft_future *)o;
  weft_buf *b = weft_future_result(f);
  if (b == NULL) return;
  f->result = NULL;
  v->buf(v, b);
}

static const weft_gc_ops future_gc_ops = {future_gc_runtime, future_gc_next,
                                          future_gc_edges, future_gc_clear};

const weft_class weft_future_class = {"weft.future", future_destroy,
                                      &future_gc_ops};

weft_future *weft_future_new(weft_runtime *rt) {
  weft_future *f = weft_alloc(rt, sizeof *f);
  if (f == NULL) return NULL;
  memset(f, 0, sizeof *f);
  if (pthread_mutex_init(&f->mu, NULL) != 0) {
    weft_free(rt, f, sizeof *f);
    return NULL;
  }
  weft_object_init(&f->obj, &weft_future_class);
  atomic_init(&f->state, WEFT_FUT_PENDING);
  weft_runtime_retain(rt);
  f->rt = rt;
  return f;
}

void weft_future_retain(weft_future *f) { weft_retain(&f->obj); }
void weft_future_release(weft_future *f) { weft_release(&f->obj); }

bool weft_future_resolve(weft_future *f, int state, weft_buf *result) {
  if (result != NULL) weft_buf_link(result);  /* before the store */
  pthread_mutex_lock(&f->mu);
  if (atomic_load_explicit(&f->state, memory_order_relaxed) != WEFT_FUT_PENDING) {
    pthread_mutex_unlock(&f->mu);
    weft_buf_release(result);
    return false;
  }
  f->result = result;
  atomic_store_explicit(&f->state, state, memory_order_release);
  weft_waiters_wake_all(&f->waiters);
  pthread_mutex_unlock(&f->mu);
  return true;
}

void weft_future_bind(weft_future *f, struct weft_pool *p,
                      struct weft_job *j) {
  f->pool = p;
  f->job = j;
}

void weft_future_unbind_job(weft_future *f) { f->job = NULL; }

struct weft_pool *weft_future_pool(weft_future *f) { return f->pool; }
struct weft_job *weft_future_job(weft_future *f) { return f->job; }

int weft_future_state(weft_future *f) {
  return atomic_load_explicit(&f->state, memory_order_acquire);
}

weft_buf *weft_future_result(weft_future *f) {
  return weft_future_state(f) == WEFT_FUT_PENDING ? NULL : f->result;
}

bool weft_future_add_waiter(weft_future *f, weft_waiter *w) {
  pthread_mutex_lock(&f->mu);
  bool pending =
      atomic_load_explicit(&f->state, memory_order_relaxed) == WEFT_FUT_PENDING;
  if (pending) weft_waiters_add(&f->waiters, w);
  pthread_mutex_unlock(&f->mu);
  return pending;
}

void weft_future_remove_waiter(weft_future *f, weft_waiter *w) {
  pthread_mutex_lock(&f->mu);
  weft_waiters_remove(&f->waiters, w);
  pthread_mutex_unlock(&f->mu);
}
