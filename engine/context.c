/*
** context.c: the cancellation tree (context.h), shared by every thread.
**
** Owns: weft_ctx objects, their child lists, waiter lists, deadline timer
** entries, and (in the background context's extension) the per-runtime
** "settled" mutex/condvar and the live-context counter.
**
** Immutable after creation: rt, parent, deadline (effective), key, value,
** can_end.  err is atomic (0 while live, stored once under mu, read without
** a lock); cause is written once under mu before err and never changes,
** but for the cycle collector taking it out of a garbage context (cycle.c;
** see ctx_gc_clear for why no one can read it then).  A child's reference
** to its parent is an inner one (object.h) unless the parent is the
** background; causes and values are linked (weft_buf_link) before they
** are stored.
**
** Locking:
**  - c->mu guards c's waiter list, c's child list, and, for each child ch of
**    c, ch->sib_prev/sib_next/linked while ch->linked is true.
**  - Order: a parent's mu before a child's mu; never a parent's mu while
**    holding a child's.  In practice at most one context lock is held at a
**    time.  No context lock is held while taking the timer lock (timer
**    add/remove are called with no locks held), so the timer's claim/fire
**    may take context locks.
**  - The settle mutex (bg->smu) is a leaf lock.
**  - Nothing here calls Lua.
**
** Cancel is iterative (a worklist through the sibling links of detached
** children), so arbitrarily deep trees cannot overflow the C stack, and so
** is destruction (a chain of parents released in a loop).
**
** "cancel returns only after every descendant is done": the thread that
** ends a context owns its subtree until it marks it `settled`; a thread that
** meets a context ended but not yet settled by another thread waits for it
** (wait-for edges always point from an ancestor's owner to a strict
** descendant's owner, so they cannot form a cycle).  The root of a cancel
** leaves its parent's child list only after its subtree is settled, so a
** concurrent cancel of an ancestor always finds it and waits.
**
** A tree belongs to one runtime: a child takes its parent's runtime (its
** timer and settle lock) whatever runtime the caller passes.
*/
#include "context.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "runtime.h"
#include "timer.h"

struct weft_ctx {
  weft_object obj;          /* first: a weft_ctx is a weft_object */
  weft_runtime *rt;         /* retained (not by the background context) */
  weft_ctx *parent;         /* strong reference; NULL for background */
  double deadline;          /* effective: min(own, parent's) */
  weft_buf *key, *value;    /* value contexts only */
  bool can_end;
  bool is_background;
  bool has_timer;           /* entry was armed at least once */
  atomic_int err;
  atomic_bool settled;      /* err set and the whole subtree done */
  pthread_mutex_t mu;
  weft_buf *cause;          /* under mu until err is set; then immutable */
  weft_ctx *child_head;     /* weak: children unlink themselves */
  weft_ctx *sib_prev, *sib_next;  /* parent's mu while linked */
  bool linked;                    /* parent's mu */
  weft_waiter *waiters;     /* mu */
  weft_ctx *done_next;      /* done-list of the thread that ended c */
  weft_timer_entry timer;
};

/* The background context, with the per-runtime settle lock and counter. */
typedef struct bg_ctx {
  weft_ctx c;
  pthread_mutex_t smu;
  pthread_cond_t scv;
  atomic_int nwait;         /* threads waiting for a subtree to settle */
  atomic_long live;         /* contexts of the runtime, background excluded */
} bg_ctx;

static void ctx_destroy(weft_object *o);
static const weft_gc_ops ctx_gc_ops;

const weft_class weft_ctx_class = {"weft.context", ctx_destroy, &ctx_gc_ops};

static bg_ctx *bg_of(weft_runtime *rt) { return (bg_ctx *)rt->background; }

static int mutex_init(pthread_mutex_t *mu) {
#ifdef WEFT_DEBUG
  pthread_mutexattr_t a;
  int e = pthread_mutexattr_init(&a);
  if (e != 0) return e;
  pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK);
  e = pthread_mutex_init(mu, &a);
  pthread_mutexattr_destroy(&a);
  return e;
#else
  return pthread_mutex_init(mu, NULL);
#endif
}

static int mono_cond_init(pthread_cond_t *cv) {
  pthread_condattr_t a;
  int e = pthread_condattr_init(&a);
  if (e != 0) return e;
  e = pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  if (e == 0) e = pthread_cond_init(cv, &a);
  pthread_condattr_destroy(&a);
  return e;
}

void weft_ctx_retain(weft_ctx *c) { weft_retain(&c->obj); }
void weft_ctx_release(weft_ctx *c) { weft_release(&c->obj); }

/* --- destruction ------------------------------------------------------- */

/* Takes c out of its parent's list of children, if it is there. */
static void leave_parent(weft_ctx *c) {
  weft_ctx *p = c->parent;
  if (p == NULL || !p->can_end) return;
  pthread_mutex_lock(&p->mu);
  if (c->linked) {
    if (c->sib_prev != NULL)
      c->sib_prev->sib_next = c->sib_next;
    else
      p->child_head = c->sib_next;
    if (c->sib_next != NULL) c->sib_next->sib_prev = c->sib_prev;
    c->linked = false;
    c->sib_prev = c->sib_next = NULL;
  }
  pthread_mutex_unlock(&p->mu);
}

/* Frees c (count zero) and returns its parent, whose reference the caller
   now has to drop. */
static weft_ctx *destroy_one(weft_ctx *c) {
  weft_runtime *rt = c->rt;
  weft_ctx *p = c->parent;
  if (c->has_timer) weft_timer_remove(&rt->timer, &c->timer);
  leave_parent(c);
  weft_buf_release(c->cause);
  weft_buf_release(c->key);
  weft_buf_release(c->value);
  pthread_mutex_destroy(&c->mu);
  if (c->is_background) {
    bg_ctx *b = (bg_ctx *)c;
    pthread_cond_destroy(&b->scv);
    pthread_mutex_destroy(&b->smu);
    weft_free(rt, b, sizeof *b);
  } else {
    atomic_fetch_sub_explicit(&bg_of(rt)->live, 1, memory_order_relaxed);
    weft_free(rt, c, sizeof *c);
  }
  return p;
}

static void ctx_destroy(weft_object *o) {
  weft_ctx *c = (weft_ctx *)o;
  weft_runtime *rt = c->rt;
  bool background = c->is_background;
  long freed = 0;
  /* Release the chain of parents in a loop, not by recursion.  The
     runtime references of the freed contexts are dropped only after the
     loop: the last one may free the runtime and, with it, the background
     context the chain ends at. */
  do {
    c = destroy_one(c);
    freed++;
    /* a child's reference to a parent other than the background is an
       inner one (child_new); dropping it may offer the parent to the
       cycle collector instead */
  } while (c != NULL && weft_object_drop(&c->obj, !c->is_background));
  if (background) return;  /* the runtime's own, dropped by the runtime */
  while (freed-- > 0) weft_runtime_release(rt);
}

/* --- creation ---------------------------------------------------------- */

static bool timer_claim(weft_timer_entry *e);
static void timer_fire(weft_timer_entry *e);

/* Allocates and initializes a context; NULL with errno on failure. */
static weft_ctx *ctx_alloc(weft_runtime *rt, size_t size) {
  weft_ctx *c = weft_alloc(rt, size);
  if (c == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  memset(c, 0, size);
  int e = mutex_init(&c->mu);
  if (e != 0) {
    weft_free(rt, c, size);
    errno = e;
    return NULL;
  }
  weft_object_init(&c->obj, &weft_ctx_class);
  c->rt = rt;
  c->deadline = INFINITY;
  atomic_init(&c->err, WEFT_LIVE);
  atomic_init(&c->settled, false);
  c->timer.index = SIZE_MAX;
  c->timer.when = INFINITY;
  c->timer.claim = timer_claim;
  c->timer.fire = timer_fire;
  return c;
}

weft_ctx *weft_ctx_new_background(weft_runtime *rt) {
  bg_ctx *b = (bg_ctx *)ctx_alloc(rt, sizeof *b);
  if (b == NULL) return NULL;
  int e = pthread_mutex_init(&b->smu, NULL);
  if (e == 0) {
    e = mono_cond_init(&b->scv);
    if (e != 0) pthread_mutex_destroy(&b->smu);
  }
  if (e != 0) {
    pthread_mutex_destroy(&b->c.mu);
    weft_free(rt, b, sizeof *b);
    errno = e;
    return NULL;
  }
  atomic_init(&b->nwait, 0);
  atomic_init(&b->live, 0);
  b->c.is_background = true;
  b->c.can_end = false;
  return &b->c;
}

weft_ctx *weft_ctx_background(weft_runtime *rt) { return rt->background; }

/*
** Makes a child of parent: links it (or ends it at once when the parent is
** done), arms its timer when its own deadline comes first.
*/
static weft_ctx *child_new(weft_runtime *rt, weft_ctx *parent, double own,
                           bool cancelable, weft_buf *key, weft_buf *value) {
  /* A tree belongs to one runtime (its timer, its settle lock): the
     parent's, whatever state asks. */
  rt = parent->rt;
  weft_ctx *c = ctx_alloc(rt, sizeof *c);
  if (c == NULL) return NULL;
  weft_runtime_retain(rt);
  atomic_fetch_add_explicit(&bg_of(rt)->live, 1, memory_order_relaxed);
  if (parent->is_background)
    weft_ctx_retain(parent);  /* never tracked: no inner count to keep */
  else
    weft_retain_inner(&parent->obj);
  if (value != NULL) weft_buf_link(value);  /* before the store */
  c->parent = parent;
  c->key = key;
  c->value = value;
  c->deadline = own < parent->deadline ? own : parent->deadline;
  c->can_end = cancelable || parent->can_end;

  /* Decided before c is published: other threads read has_timer. */
  bool own_first = own < parent->deadline;
  bool expired = own_first && own <= weft_now();
  c->has_timer = own_first && !expired;

  int perr = WEFT_LIVE;
  weft_buf *pcause = NULL;
  if (parent->can_end) {
    pthread_mutex_lock(&parent->mu);
    perr = atomic_load_explicit(&parent->err, memory_order_acquire);
    if (perr != WEFT_LIVE) {
      pcause = parent->cause;
      if (pcause != NULL) weft_buf_retain(pcause);
    } else {
      c->sib_prev = NULL;
      c->sib_next = parent->child_head;
      if (parent->child_head != NULL) parent->child_head->sib_prev = c;
      parent->child_head = c;
      c->linked = true;
    }
    pthread_mutex_unlock(&parent->mu);
  }
  if (perr != WEFT_LIVE) {  /* a child of a done parent is done at once */
    weft_ctx_cancel(c, perr, pcause);
    weft_buf_release(pcause);
  } else if (expired) {
    weft_ctx_cancel(c, WEFT_DEADLINE_EXCEEDED, NULL);
  } else if (c->has_timer) {
    int e = weft_timer_add(&rt->timer, &c->timer, own);
    if (e != 0) {
      /* Only the parent's list knows c (weakly): dropping our reference
         unlinks and frees it. */
      weft_ctx_release(c);
      errno = e;
      return NULL;
    }
    /* A cancel that ran between linking and arming removed nothing. */
    if (atomic_load_explicit(&c->err, memory_order_acquire) != WEFT_LIVE)
      weft_timer_remove(&rt->timer, &c->timer);
  }
  return c;
}

weft_ctx *weft_ctx_new(weft_runtime *rt, weft_ctx *parent, double deadline) {
  return child_new(rt, parent, deadline, true, NULL, NULL);
}

weft_ctx *weft_ctx_with_value(weft_runtime *rt, weft_ctx *parent,
                              weft_buf *key, weft_buf *value) {
  weft_ctx *c = child_new(rt, parent, INFINITY, false, key, value);
  if (c == NULL) {
    weft_buf_release(key);
    weft_buf_release(value);
  }
  return c;
}

/* --- timer --------------------------------------------------------------- */

static weft_ctx *of_entry(weft_timer_entry *e) {
  return (weft_ctx *)((char *)e - offsetof(weft_ctx, timer));
}

static bool timer_claim(weft_timer_entry *e) {
  return weft_try_retain(&of_entry(e)->obj);
}

static void timer_fire(weft_timer_entry *e) {
  weft_ctx *c = of_entry(e);
  weft_ctx_cancel(c, WEFT_DEADLINE_EXCEEDED, NULL);
  weft_ctx_release(c);
}

/* --- cancel ------------------------------------------------------------ */

/*
** Ends c unless it is done already (then returns false).  Under c->mu:
** stores cause and err, wakes and unlinks the waiters, detaches the
** children, pushing each one that is not being destroyed (retained) onto
** *pending through its sib_next link.
*/
static bool end_one(weft_ctx *c, int err, weft_buf *cause,
                    weft_ctx **pending) {
  pthread_mutex_lock(&c->mu);
  if (atomic_load_explicit(&c->err, memory_order_relaxed) != WEFT_LIVE) {
    pthread_mutex_unlock(&c->mu);
    return false;
  }
  if (cause != NULL) weft_buf_retain(cause);
  c->cause = cause;
  atomic_store_explicit(&c->err, err, memory_order_release);
  weft_waiters_wake_all(&c->waiters);
  weft_ctx *ch = c->child_head;
  c->child_head = NULL;
  while (ch != NULL) {
    weft_ctx *next = ch->sib_next;
    ch->linked = false;
    ch->sib_prev = NULL;
    if (weft_try_retain(&ch->obj)) {
      ch->sib_next = *pending;
      *pending = ch;
    } else {
      ch->sib_next = NULL;  /* being destroyed: it sees linked == false */
    }
    ch = next;
  }
  pthread_mutex_unlock(&c->mu);
  return true;
}

static void wait_settled(weft_ctx *c) {
  if (atomic_load(&c->settled)) return;
  bg_ctx *b = bg_of(c->rt);
  pthread_mutex_lock(&b->smu);
  atomic_fetch_add(&b->nwait, 1);
  while (!atomic_load(&c->settled)) pthread_cond_wait(&b->scv, &b->smu);
  atomic_fetch_sub(&b->nwait, 1);
  pthread_mutex_unlock(&b->smu);
}

void weft_ctx_cancel(weft_ctx *c, int err, weft_buf *cause) {
  weft_ctx *pending = NULL;  /* retained, detached: to end (sib_next) */
  weft_ctx *waitfor = NULL;  /* retained, ended by others (sib_next) */
  weft_ctx *done = NULL;     /* ended by this call (done_next) */
  weft_runtime *rt = c->rt;

  if (cause != NULL) weft_buf_link(cause);  /* before any store */
  if (!end_one(c, err, cause, &pending)) {
    wait_settled(c);
    return;
  }
  c->done_next = NULL;
  done = c;
  if (c->has_timer) weft_timer_remove(&rt->timer, &c->timer);
  while (pending != NULL) {
    weft_ctx *n = pending;
    pending = n->sib_next;
    if (end_one(n, err, cause, &pending)) {
      if (n->has_timer) weft_timer_remove(&rt->timer, &n->timer);
      n->done_next = done;
      done = n;
    } else {
      n->sib_next = waitfor;
      waitfor = n;
    }
  }
  while (waitfor != NULL) {
    weft_ctx *n = waitfor;
    waitfor = n->sib_next;
    wait_settled(n);
    weft_ctx_release(n);
  }
  for (weft_ctx *n = done; n != NULL; n = n->done_next)
    atomic_store(&n->settled, true);
  bg_ctx *b = bg_of(rt);
  if (atomic_load(&b->nwait) > 0) {
    pthread_mutex_lock(&b->smu);
    pthread_cond_broadcast(&b->scv);
    pthread_mutex_unlock(&b->smu);
  }
  /* Only now leave the parent's list: a thread canceling an ancestor
     meanwhile must find c there (done, not settled) and wait for c's
     subtree instead of returning before it is done. */
  leave_parent(c);
  while (done != NULL) {
    weft_ctx *n = done;
    done = n->done_next;
    if (n != c) weft_ctx_release(n);
  }
}

/* --- queries ----------------------------------------------------------- */

int weft_ctx_err(weft_ctx *c) {
  return atomic_load_explicit(&c->err, memory_order_acquire);
}

const char *weft_ctx_errmsg(int err) {
  switch (err) {
    case WEFT_CANCELED: return WEFT_CANCELED_MSG;
    case WEFT_DEADLINE_EXCEEDED: return WEFT_DEADLINE_MSG;
    default: return NULL;
  }
}

weft_buf *weft_ctx_cause(weft_ctx *c) {
  if (atomic_load_explicit(&c->err, memory_order_acquire) == WEFT_LIVE)
    return NULL;
  return c->cause;
}

double weft_ctx_deadline(weft_ctx *c) { return c->deadline; }

const weft_buf *weft_ctx_value(weft_ctx *c, const weft_buf *key) {
  for (; c != NULL; c = c->parent)
    if (c->key != NULL && weft_buf_equal(c->key, key)) return c->value;
  return NULL;
}

bool weft_ctx_can_end(weft_ctx *c) { return c->can_end; }

/* A context that can never end wakes no one: its waiters are not kept,
   and its lock (the background's, shared by most jobs) is not taken. */
bool weft_ctx_add_waiter(weft_ctx *c, weft_waiter *w) {
  if (!c->can_end) return true;
  pthread_mutex_lock(&c->mu);
  bool live = atomic_load_explicit(&c->err, memory_order_relaxed) == WEFT_LIVE;
  if (live) weft_waiters_add(&c->waiters, w);
  pthread_mutex_unlock(&c->mu);
  return live;
}

void weft_ctx_remove_waiter(weft_ctx *c, weft_waiter *w) {
  if (!c->can_end) return;
  pthread_mutex_lock(&c->mu);
  weft_waiters_remove(&c->waiters, w);
  pthread_mutex_unlock(&c->mu);
}

/* --- blocking wait ----------------------------------------------------- */

typedef struct thread_waiter {
  weft_waiter w;          /* first */
  pthread_cond_t cv;      /* CLOCK_MONOTONIC; used with the context's mu */
  bool woken;             /* context's mu */
} thread_waiter;

static void thread_wake(weft_waiter *w) {
  thread_waiter *t = (thread_waiter *)w;
  t->woken = true;
  pthread_cond_signal(&t->cv);
}

bool weft_ctx_wait(weft_ctx *c, double timeout) {
  if (weft_ctx_err(c) != WEFT_LIVE) return true;
  if (!(timeout > 0)) return false;  /* 0 or NaN: just a poll */
  thread_waiter t;
  t.w.prev = t.w.next = NULL;
  t.w.wake = thread_wake;
  t.woken = false;
  if (mono_cond_init(&t.cv) != 0) {
    /* Cannot block without a condvar: degrade to short sleeps. */
    double end = weft_now() + timeout;
    while (weft_ctx_err(c) == WEFT_LIVE && weft_now() < end) {
      struct timespec ts = {0, 1000000L};
      nanosleep(&ts, NULL);
    }
    return weft_ctx_err(c) != WEFT_LIVE;
  }
  bool bounded = timeout < 1e9;  /* beyond ~30 years: no bound */
  struct timespec until = {0, 0};
  if (bounded) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double s = (double)now.tv_sec + timeout;
    time_t sec = (time_t)s;
    long ns = now.tv_nsec + (long)((s - (double)sec) * 1e9);
    while (ns >= 1000000000L) ns -= 1000000000L, sec++;
    until.tv_sec = sec;
    until.tv_nsec = ns;
  }
  pthread_mutex_lock(&c->mu);
  if (atomic_load_explicit(&c->err, memory_order_relaxed) == WEFT_LIVE) {
    weft_waiters_add(&c->waiters, &t.w);
    while (!t.woken) {
      int e = bounded ? pthread_cond_timedwait(&t.cv, &c->mu, &until)
                      : pthread_cond_wait(&t.cv, &c->mu);
      if (e == ETIMEDOUT) break;
    }
    weft_waiters_remove(&c->waiters, &t.w);
  }
  pthread_mutex_unlock(&c->mu);
  pthread_cond_destroy(&t.cv);
  return weft_ctx_err(c) != WEFT_LIVE;
}

/* --- the cycle collector's view (cycle.c) ------------------------------ */

/*
** Edges: the parent (unless the background, which is never garbage), the
** key and value, and the cause once c is done (immutable then: read after
** the acquire of err, no lock).  Clear takes out only the cause of a done
** context: the edge that can close a cycle (a parent, key and value are
** older than c).  c is garbage then: no thread holds it but through the
** parent's list of children or the timer, whose holders only end it (it
** is done already, so they do nothing) and never read its cause; child_new
** and weft_ctx_cause read it only through a strong reference.
*/
static weft_runtime *ctx_gc_runtime(weft_object *o) {
  return ((weft_ctx *)o)->rt;
}

static weft_object *ctx_gc_next(weft_object *o) {
  weft_ctx *p = ((weft_ctx *)o)->parent;
  return p != NULL && !p->is_background ? &p->obj : NULL;
}

static bool ctx_gc_edges(weft_object *o, weft_gc_visit *v) {
  weft_ctx *c = (weft_ctx *)o;
  weft_object *p = ctx_gc_next(o);
  if (p != NULL && !v->obj(v, p)) return false;
  if (c->key != NULL && !v->buf(v, c->key)) return false;
  if (c->value != NULL && !v->buf(v, c->value)) return false;
  weft_buf *cause = weft_ctx_cause(c);
  if (cause != NULL && !v->buf(v, cause)) return false;
  return true;
}

static void ctx_gc_clear(weft_object *o, weft_gc_visit *v) {
  weft_ctx *c = (weft_ctx *)o;
  weft_buf *cause = weft_ctx_cause(c);
  if (cause == NULL) return;
  c->cause = NULL;
  v->buf(v, cause);
}

static const weft_gc_ops ctx_gc_ops = {ctx_gc_runtime, ctx_gc_next,
                                       ctx_gc_edges, ctx_gc_clear};

/* --- test hooks -------------------------------------------------------- */

/* Children currently linked under c (weft.core._ctx_children_count). */
size_t weft_ctx_debug_children(weft_ctx *c) {
  size_t n = 0;
  if (!c->can_end) return 0;
  pthread_mutex_lock(&c->mu);
  for (weft_ctx *ch = c->child_head; ch != NULL; ch = ch->sib_next) n++;
  pthread_mutex_unlock(&c->mu);
  return n;
}

/* Contexts alive in rt, the background excluded (weft.core._ctx_live). */
long weft_ctx_debug_live(weft_runtime *rt) {
  return atomic_load_explicit(&bg_of(rt)->live, memory_order_relaxed);
}
