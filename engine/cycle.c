/*
** cycle.c: collects reference cycles through engine objects (cycle.h).
**
** The cycles: a buffer stored into an object (a context's cause, a
** channel's buffered message, a future's result) may hold handles whose
** objects hold that object again (the context itself, its cancel function,
** a descendant, the channel itself, a context whose cause holds the
** channel...).  Reference counts alone never free such a group.
**
** Design: trial deletion (Bacon and Rajan's synchronous cycle collection),
** made safe against concurrent mutators by validation, and run only where
** a cycle can be:
**
**  - Tracking.  Every cycle passes through a buffer stored into an object
**    after the object was made (weft_buf_link: a cause, a channel message, a
**    result), since the other edges (a child's parent, a cancel function's
**    context, a buffer's handles, a context's value) only point at objects
**    older than their holder.  Linking a buffer that holds handles marks
**    the handles' objects, the chains of objects they hold for life
**    (weft_gc_ops.next) and the buffer as TRACKED, before the store.  So
**    every object and buffer on a cycle is tracked; objects and buffers
**    that never meet a handle in a linked buffer never are, and their
**    releases cost what they did (one flag load).
**
**  - Offering.  Each object counts its "inner" references (held by buffers,
**    child contexts, cancel functions: object.c).  A release of a tracked
**    object that leaves no outside reference (count - 1 <= inner) queues
**    the object on its runtime instead of dropping the reference (the queue
**    holds it), and runs the collector.  A release of a tracked buffer that
**    is not the last queues its handles' objects (the releasing call held
**    the last outside reference of a cycle: a cause, say).  The queue is a
**    lock-free stack (rt->gcq); QUEUED keeps an object in it once.
**
**  - Collecting, one root at a time, under rt->gcmu (try-locked: a thread
**    that finds it busy leaves its root queued, and the holder drains the
**    queue again after unlocking):
**     1. from the root, take a reference on every object and buffer with
**        handles reachable through the edges the classes report
**        (weft_gc_ops.edges; a channel's ring under its lock, try-locked:
**        a busy or foreign (other runtime, not tracked) object is not
**        looked into and counts as live);
**     2. read each one's refs word (count | retains << 32);
**     3. trial deletion: a node whose count exceeds 1 (ours) plus its edges
**        from the set is held from outside; it and all it reaches are
**        live; the rest, R, is garbage if nothing changed meanwhile:
**     4. re-read R's objects' edges (they must be the same) and then R's
**        words (they must be the same: no retain, no release since step 2;
**        a retain always moves the high half, so a retain and a release
**        cannot cancel out);
**     5. take out of every object of R the buffers that can close a cycle
**        (weft_gc_ops.clear) and release them and our references: normal
**        counting then frees R.
**
** Why it never frees what is reachable.  Steps 2 < 4 give an instant t
** (after every step-2 read of R, before every step-4 read) at which each
** node of R had the count read and its edges from R were the ones read
** (edges from live nodes only ever add liveness, stale or not).  An edge
** out of a node can only change (a message received, a cause set) by a
** thread holding that node, which would be an outside reference.  So at t
** every reference to a node of R came from a node of R, and no thread held
** one.  After t a thread can only reach R through a weak link (a parent's
** list of children, the timer's heap: weft_try_retain), and such a holder
** only ends contexts already ended or with a cause that cannot hold R
** (encoded from handles its encoder held), then lets go; clear takes
** out only causes of contexts already ended, and messages and results no
** one can receive any more.  Our own references keep R's objects alive
** while they are cleared.
**
** Why it finds every cycle.  When the last outside reference to a garbage
** cycle goes, that release (or a later one, object.c) sees no outside
** reference left on a tracked node and queues it; a collection that
** failed at step 4 did so because a thread used a node of R, and that
** thread's release queues again; our own references are released with an
** offer when the node's word changed while we held it (someone else's
** release may have been hidden by our reference).  Not collected: cycles
** through objects of two runtimes, through edges the classes do not report
** (a pool's queued jobs, a process), and cycles met while the collector
** cannot allocate its tables (then it gives up on that root).
**
** Locking: rt->gcmu is taken only by weft_cycle_run, with trylock, so no
** thread ever waits for it.  Under it the collector takes a channel's lock
** with trylock (edges) and lock (clear of a garbage channel, which no one
** else can hold), and releases references, which may destroy objects
** (their destroy functions take their own leaf locks; releases of tracked
** objects then only queue).  Nothing here calls Lua or allocates Lua
** memory.
*/
#include "cycle.h"

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "pmap.h"
#include "runtime.h"
#include "value.h"

/* --- offering ------------------------------------------------------------ */

static void push(weft_runtime *rt, weft_object *o) {
  weft_object *head = atomic_load_explicit(&rt->gcq, memory_order_relaxed);
  do {
    o->gc_next = head;
  } while (!atomic_compare_exchange_weak_explicit(
      &rt->gcq, &head, o, memory_order_release, memory_order_relaxed));
}

void weft_cycle_mark(weft_object *o) {
  /* The whole chain, even past a tracked object: one being marked by
     another thread may not have its chain marked yet. */
  for (; o != NULL && o->cls->gc != NULL; o = o->cls->gc->next(o))
    if (!(atomic_load_explicit(&o->gc, memory_order_acquire) &
          WEFT_GC_TRACKED))
      atomic_fetch_or_explicit(&o->gc, WEFT_GC_TRACKED, memory_order_seq_cst);
}

/* No reference from outside the engine's edges once one is dropped. */
static bool unheld_after(weft_object *o, uint32_t dropping) {
  uint32_t n = WEFT_REF_COUNT(atomic_load_explicit(&o->refs,
                                                   memory_order_acquire));
  long inner = atomic_load_explicit(&o->inner, memory_order_relaxed);
  return (long)n - (long)dropping <= inner;
}

bool weft_cycle_offer(weft_object *o) {
  uint32_t n = WEFT_REF_COUNT(atomic_load_explicit(&o->refs,
                                                   memory_order_acquire));
  if (n <= 1 || !unheld_after(o, 1)) return false;
  if (atomic_fetch_or_explicit(&o->gc, WEFT_GC_QUEUED, memory_order_acq_rel) &
      WEFT_GC_QUEUED)
    return false;  /* queued already: looked at after this release */
  weft_runtime *rt = o->cls->gc->runtime(o);
  weft_runtime_retain(rt);  /* o may be freed by the run */
  push(rt, o);              /* the caller's reference is the queue's now */
  weft_cycle_run(rt);
  weft_runtime_release(rt);
  return true;
}

bool weft_cycle_offer_held(weft_runtime *rt, weft_object *o) {
  if (!(atomic_load_explicit(&o->gc, memory_order_acquire) &
        WEFT_GC_TRACKED) ||
      o->cls->gc == NULL || o->cls->gc->runtime(o) != rt ||
      !unheld_after(o, 0))
    return false;
  if (atomic_fetch_or_explicit(&o->gc, WEFT_GC_QUEUED, memory_order_acq_rel) &
      WEFT_GC_QUEUED)
    return false;
  weft_retain(o);
  push(rt, o);
  return true;
}

/* --- one collection ------------------------------------------------------ */

enum { N_OBJ, N_BUF };
enum { M_BUILD, M_COMPARE, M_CLEAR };

typedef struct node {
  void *p;
  uint64_t w1;        /* refs word at step 2 */
  uint32_t first, n;  /* its edges: edges[first .. first + n) */
  uint32_t d;         /* edges into it from the set */
  unsigned char kind;
  bool held;          /* we hold a reference (else: not looked into) */
  bool live;
} node;

typedef struct run {
  weft_gc_visit v;    /* first: the visitors cast back */
  weft_runtime *rt;
  int mode;
  bool nomem;
  node *nodes;
  size_t nn, ncap;
  uint32_t *edges;
  size_t ne, ecap;
  weft_pmap map;      /* pointer -> node index */
  size_t at, end;     /* M_COMPARE: the edges expected */
  bool same;
} run;

static bool grow(run *r, void **p, size_t *cap, size_t need, size_t size) {
  if (need <= *cap) return true;
  size_t ncap = *cap ? *cap * 2 : 32;
  while (ncap < need) ncap *= 2;
  void *q = weft_realloc(r->rt, *p, *cap * size, ncap * size);
  if (q == NULL) {
    r->nomem = true;
    return false;
  }
  *p = q;
  *cap = ncap;
  return true;
}

/* The index of p's node, added (and retained, when looked into) if new;
   UINT32_MAX when out of memory. */
static uint32_t node_of(run *r, void *p, int kind) {
  const uint64_t *at = weft_pmap_get(&r->map, p);
  if (at != NULL) return (uint32_t)*at;
  if (r->nn >= UINT32_MAX - 1 ||
      !grow(r, (void **)&r->nodes, &r->ncap, r->nn + 1, sizeof *r->nodes))
    return UINT32_MAX;
  if (!weft_pmap_put(r->rt, &r->map, p, r->nn)) {
    r->nomem = true;
    return UINT32_MAX;
  }
  node *n = &r->nodes[r->nn];
  memset(n, 0, sizeof *n);
  n->p = p;
  n->kind = (unsigned char)kind;
  if (kind == N_BUF) {
    weft_buf_retain(p);  /* alive: its holder is, and we hold that */
    n->held = true;
  } else {
    weft_object *o = p;
    n->held = o->cls->gc != NULL && o->cls->gc->runtime(o) == r->rt &&
              (atomic_load_explicit(&o->gc, memory_order_acquire) &
               WEFT_GC_TRACKED);
    if (n->held)
      weft_retain(o);  /* alive: its holder is */
    else
      n->live = true;  /* not looked into: counts as held from outside */
  }
  return (uint32_t)r->nn++;
}

static bool edge_to(run *r, void *p, int kind) {
  if (r->mode == M_COMPARE) {
    if (r->at >= r->end || r->nodes[r->edges[r->at]].p != p) {
      r->same = false;
      return false;
    }
    r->at++;
    return true;
  }
  uint32_t t = node_of(r, p, kind);
  if (t == UINT32_MAX ||
      !grow(r, (void **)&r->edges, &r->ecap, r->ne + 1, sizeof *r->edges))
    return false;
  r->edges[r->ne++] = t;
  return true;
}

static bool visit_obj(weft_gc_visit *v, weft_object *o) {
  return edge_to((run *)v, o, N_OBJ);
}

static bool visit_buf(weft_gc_visit *v, weft_buf *b) {
  run *r = (run *)v;
  if (r->mode == M_CLEAR) {
    /* Taken out of a garbage object: its objects are held by us or by
       live holders, so this only frees the buffer (and what only it
       held, through the usual releases). */
    weft_buf_release_quiet(b);
    return true;
  }
  if (weft_buf_nhandles(b) == 0) return true;  /* a leaf: cannot cycle */
  return edge_to(r, b, N_BUF);
}

static uint64_t word_of(const node *n) {
  if (n->kind == N_BUF) return weft_buf_refword(n->p);
  return atomic_load_explicit(&((weft_object *)n->p)->refs,
                              memory_order_acquire);
}

/* Step 1: the nodes reachable from the root (node 0), with their edges. */
static bool build(run *r) {
  r->mode = M_BUILD;
  for (size_t i = 0; i < r->nn; i++) {
    r->nodes[i].first = (uint32_t)r->ne;
    if (r->nodes[i].held) {
      void *p = r->nodes[i].p;
      if (r->nodes[i].kind == N_BUF) {
        size_t nh = weft_buf_nhandles(p);
        for (size_t h = 0; h < nh; h++)
          if (!visit_obj(&r->v, weft_buf_handle(p, h))) return false;
      } else {
        weft_object *o = p;
        if (!o->cls->gc->edges(o, &r->v)) {
          if (r->nomem) return false;
          r->ne = r->nodes[i].first;  /* busy: live, not looked into */
          r->nodes[i].live = true;
        }
      }
    }
    r->nodes[i].n = (uint32_t)(r->ne - r->nodes[i].first);
  }
  return !r->nomem;
}

/* Steps 2 to 4; returns the number of garbage nodes (0: none, or a change
   seen: *changed), or -1 when out of memory. */
static long analyze(run *r, bool *changed) {
  size_t nn = r->nn;
  for (size_t i = 0; i < nn; i++)
    if (r->nodes[i].held) r->nodes[i].w1 = word_of(&r->nodes[i]);
  for (size_t i = 0; i < nn; i++)
    for (uint32_t k = 0; k < r->nodes[i].n; k++)
      r->nodes[r->edges[r->nodes[i].first + k]].d++;
  uint32_t *stack = weft_alloc(r->rt, nn * sizeof *stack);
  if (stack == NULL) return -1;
  size_t top = 0;
  for (size_t i = 0; i < nn; i++) {
    node *n = &r->nodes[i];
    if (n->held && !n->live && WEFT_REF_COUNT(n->w1) != 1 + (uint64_t)n->d)
      n->live = true;  /* held from outside (or changing: keep it) */
    if (n->live) stack[top++] = (uint32_t)i;
  }
  while (top > 0) {
    node *n = &r->nodes[stack[--top]];
    for (uint32_t k = 0; k < n->n; k++) {
      node *t = &r->nodes[r->edges[n->first + k]];
      if (!t->live) {
        t->live = true;
        stack[top++] = (uint32_t)(t - r->nodes);
      }
    }
  }
  weft_free(r->rt, stack, nn * sizeof *stack);
  long garbage = 0;
  r->mode = M_COMPARE;
  for (size_t i = 0; i < nn; i++) {
    node *n = &r->nodes[i];
    if (n->live) continue;
    garbage++;
    if (n->kind != N_OBJ) continue;
    weft_object *o = n->p;
    r->at = n->first;
    r->end = (size_t)n->first + n->n;
    r->same = true;
    if (!o->cls->gc->edges(o, &r->v) || !r->same || r->at != r->end) {
      *changed = true;
      return 0;
    }
  }
  for (size_t i = 0; i < nn; i++)
    if (!r->nodes[i].live && word_of(&r->nodes[i]) != r->nodes[i].w1) {
      *changed = true;
      return 0;
    }
  return garbage;
}

/* Collects from root, whose queue reference becomes ours. */
static void collect(weft_runtime *rt, weft_object *root) {
  run r;
  memset(&r, 0, sizeof r);
  r.v.obj = visit_obj;
  r.v.buf = visit_buf;
  r.rt = rt;
  bool changed = false;
  long garbage = 0;
  if (grow(&r, (void **)&r.nodes, &r.ncap, 1, sizeof *r.nodes) &&
      weft_pmap_put(rt, &r.map, root, 0)) {
    node *n = &r.nodes[0];
    memset(n, 0, sizeof *n);
    n->p = root;
    n->kind = N_OBJ;
    n->held = true;  /* the queue's reference */
    r.nn = 1;
    if (build(&r)) garbage = analyze(&r, &changed);
  } else {
    r.nomem = true;
  }
  if (garbage > 0) {
    r.mode = M_CLEAR;
    for (size_t k = 0; k < r.nn; k++)
      if (!r.nodes[k].live && r.nodes[k].kind == N_OBJ) {
        weft_object *o = r.nodes[k].p;
        o->cls->gc->clear(o, &r.v);
      }
  }
  /* Our references: garbage ones quietly (what they held is gone with
     the cleared buffers); others with an offer when someone else used the
     node meanwhile (that one's release may have seen ours as an outside
     reference and left it to us), or when the collection saw a change. */
  if (r.nn == 0) weft_release_quiet(root);  /* could not even start */
  for (size_t k = 0; k < r.nn; k++) {
    node *n = &r.nodes[k];
    if (!n->held) continue;
    bool offer = !r.nomem && !(garbage > 0 && !n->live) &&
                 (changed || word_of(n) != n->w1);
    if (n->kind == N_BUF) {
      if (offer)
        weft_buf_release(n->p);
      else
        weft_buf_release_quiet(n->p);
    } else {
      if (offer)
        weft_release(n->p);
      else
        weft_release_quiet(n->p);
    }
  }
  weft_free(rt, r.nodes, r.ncap * sizeof *r.nodes);
  weft_free(rt, r.edges, r.ecap * sizeof *r.edges);
  weft_pmap_free(rt, &r.map);
}

void weft_cycle_run(weft_runtime *rt) {
  weft_runtime_retain(rt);
  for (;;) {
    if (pthread_mutex_trylock(&rt->gcmu) != 0) break;  /* the holder drains */
    weft_object *list;
    while ((list = atomic_exchange_explicit(&rt->gcq, NULL,
                                            memory_order_acquire)) != NULL) {
      while (list != NULL) {
        weft_object *o = list;
        list = o->gc_next;
        atomic_fetch_and_explicit(&o->gc, ~(unsigned)WEFT_GC_QUEUED,
                                  memory_order_acq_rel);
        collect(rt, o);
      }
    }
    pthread_mutex_unlock(&rt->gcmu);
    /* Queued after our last look and before our unlock: its pusher's
       trylock failed, so it is ours. */
    if (atomic_load_explicit(&rt->gcq, memory_order_acquire) == NULL) break;
  }
  weft_runtime_release(rt);
}
