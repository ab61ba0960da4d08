/*
** context_test.c: the context tree driven from several pthreads through
** the C API (engine/context.h).  Prints TAP.
**
** Built by the test runner with every engine source file:
**   cc -std=c11 -D_GNU_SOURCE -Iengine $(pkg-config --cflags lua5.4)
**      spec/c/context_test.c engine/[all .c] -llua5.4 -lm -pthread
*/
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "context.h"
#include "runtime.h"
#include "value.h"

static int test_no = 0, failures = 0;

static void ok(int cond, const char *name) {
  test_no++;
  if (!cond) failures++;
  printf("%s %d - %s\n", cond ? "ok" : "not ok", test_no, name);
  fflush(stdout);
}

/* --- causes: buffers encoded from a private state ------------------------ */

static lua_State *CL;  /* used by the main thread only */

static int encode_k(lua_State *L) {
  weft_buf *b = weft_buf_encode(L, 1, 1, "cause", 0);
  lua_pushlightuserdata(L, b);
  return 1;
}

static weft_buf *make_cause(const char *s) {
  lua_pushcfunction(CL, encode_k);
  lua_pushstring(CL, s);
  if (lua_pcall(CL, 1, 1, 0) != LUA_OK) {
    fprintf(stderr, "encode: %s\n", lua_tostring(CL, -1));
    exit(2);
  }
  weft_buf *b = lua_touserdata(CL, -1);
  lua_pop(CL, 1);
  return b;
}

/* --- a random tree ------------------------------------------------------- */

#define NODES 300
#define THREADS 8

typedef struct tree {
  weft_ctx *node[NODES];
  int parent[NODES];  /* -1 for the root */
} tree;

static unsigned rnd(unsigned *s) {
  *s = *s * 1103515245u + 12345u;
  return (*s >> 16) & 0x7fff;
}

static void tree_build(weft_runtime *rt, tree *t, unsigned *seed) {
  t->node[0] = weft_ctx_new(rt, weft_ctx_background(rt), INFINITY);
  t->parent[0] = -1;
  for (int i = 1; i < NODES; i++) {
    int p = (int)(rnd(seed) % (unsigned)i);
    /* mostly deep: prefer recent nodes */
    if (rnd(seed) % 2) p = i - 1 - (int)(rnd(seed) % (unsigned)(i < 4 ? i : 4));
    t->parent[i] = p;
    t->node[i] = weft_ctx_new(rt, t->node[p], INFINITY);
  }
}

static void tree_free(tree *t) {
  for (int i = NODES - 1; i >= 0; i--) weft_ctx_release(t->node[i]);
}

static int is_under(const tree *t, int n, int anc) {
  for (; n >= 0; n = t->parent[n])
    if (n == anc) return 1;
  return 0;
}

typedef struct canceler {
  pthread_t th;
  pthread_barrier_t *start;
  tree *t;
  int target;
  weft_buf *cause;
  int all_done;  /* every descendant of target done when cancel returned */
} canceler;

static void *cancel_main(void *arg) {
  canceler *k = arg;
  pthread_barrier_wait(k->start);
  weft_ctx_cancel(k->t->node[k->target], WEFT_CANCELED, k->cause);
  k->all_done = 1;
  for (int i = 0; i < NODES; i++)
    if (is_under(k->t, i, k->target) && weft_ctx_err(k->t->node[i]) == 0)
      k->all_done = 0;
  return NULL;
}

static void test_concurrent_cancel(weft_runtime *rt) {
  unsigned seed = 12345;
  int rounds = 200, all_done = 1, causes_ok = 1, first_wins = 1;
  weft_buf *causes[THREADS];
  char name[32];
  for (int i = 0; i < THREADS; i++) {
    snprintf(name, sizeof name, "cause %d", i);
    causes[i] = make_cause(name);
  }
  for (int r = 0; r < rounds; r++) {
    tree t;
    tree_build(rt, &t, &seed);
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, THREADS);
    canceler k[THREADS];
    int targeted[NODES] = {0};
    for (int i = 0; i < THREADS; i++) {
      k[i].start = &start;
      k[i].t = &t;
      /* half on the root, half on random nodes: overlapping subtrees */
      k[i].target = (i % 2 == 0 || r % 3 == 0) ? 0 : (int)(rnd(&seed) % NODES);
      k[i].cause = causes[i];
      targeted[k[i].target] = 1;
      pthread_create(&k[i].th, NULL, cancel_main, &k[i]);
    }
    for (int i = 0; i < THREADS; i++) {
      pthread_join(k[i].th, NULL);
      if (!k[i].all_done) all_done = 0;
    }
    pthread_barrier_destroy(&start);
    for (int i = 0; i < NODES; i++) {
      weft_buf *c = weft_ctx_cause(t.node[i]);
      int known = 0;
      for (int j = 0; j < THREADS; j++)
        if (c == causes[j] && is_under(&t, i, k[j].target)) known = 1;
      if (!known) causes_ok = 0;
      /* not a target itself: it inherited its parent's cause */
      if (!targeted[i] && c != weft_ctx_cause(t.node[t.parent[i]]))
        causes_ok = 0;
    }
    weft_buf *before = weft_ctx_cause(t.node[0]);
    weft_ctx_cancel(t.node[0], WEFT_DEADLINE_EXCEEDED, causes[0]);
    if (weft_ctx_cause(t.node[0]) != before ||
        weft_ctx_err(t.node[0]) != WEFT_CANCELED)
      first_wins = 0;
    tree_free(&t);
  }
  for (int i = 0; i < THREADS; i++) weft_buf_release(causes[i]);
  ok(all_done, "8 threads canceling one tree: every descendant done on return");
  ok(causes_ok, "each context's cause is its first canceler's (inherited down)");
  ok(first_wins, "a later cancel changes neither err nor cause");
}

/* --- waiters ------------------------------------------------------------- */

typedef struct handoff {
  pthread_barrier_t go, back;
  weft_ctx *c;
  int stop;
  int woke_all;      /* every wait returned true */
  double worst;      /* longest wait, seconds */
} handoff;

static void *waiter_main(void *arg) {
  handoff *h = arg;
  for (;;) {
    pthread_barrier_wait(&h->go);
    if (h->stop) return NULL;
    double t0 = weft_now();
    if (!weft_ctx_wait(h->c, 10.0)) h->woke_all = 0;
    double el = weft_now() - t0;
    if (el > h->worst) h->worst = el;
    pthread_barrier_wait(&h->back);
  }
}

static void test_wait_wakeup(weft_runtime *rt) {
  handoff h;
  pthread_t th;
  pthread_barrier_init(&h.go, NULL, 2);
  pthread_barrier_init(&h.back, NULL, 2);
  h.stop = 0;
  h.woke_all = 1;
  h.worst = 0;
  pthread_create(&th, NULL, waiter_main, &h);
  unsigned seed = 7;
  for (int i = 0; i < 10000; i++) {
    h.c = weft_ctx_new(rt, weft_ctx_background(rt), INFINITY);
    pthread_barrier_wait(&h.go);
    /* race the waiter's check-then-block; sometimes let it block first */
    for (unsigned spin = rnd(&seed) % 2000; spin > 0; spin--)
      __asm__ volatile("" ::: "memory");
    weft_ctx_cancel(h.c, WEFT_CANCELED, NULL);
    pthread_barrier_wait(&h.back);
    weft_ctx_release(h.c);
  }
  h.stop = 1;
  pthread_barrier_wait(&h.go);
  pthread_join(th, NULL);
  pthread_barrier_destroy(&h.go);
  pthread_barrier_destroy(&h.back);
  ok(h.woke_all && h.worst < 5.0,
     "10,000 waits woken by a cancel on another thread, none lost");
}

typedef struct flag_waiter {
  weft_waiter w;
  int woken;
} flag_waiter;

static void flag_wake(weft_waiter *w) { ((flag_waiter *)w)->woken++; }

static void test_waiter_api(weft_runtime *rt) {
  weft_ctx *c = weft_ctx_new(rt, weft_ctx_background(rt), INFINITY);
  flag_waiter a = {{NULL, NULL, flag_wake}, 0}, b = a, d = a;
  int added = weft_ctx_add_waiter(c, &a.w) && weft_ctx_add_waiter(c, &b.w) &&
              weft_ctx_add_waiter(c, &d.w);
  weft_ctx_remove_waiter(c, &b.w);
  weft_ctx_cancel(c, WEFT_CANCELED, NULL);
  weft_ctx_remove_waiter(c, &a.w);  /* after the wake: a no-op */
  int late = weft_ctx_add_waiter(c, &b.w);
  ok(added && a.woken == 1 && b.woken == 0 && d.woken == 1 && !late,
     "waiters: woken once, removed ones not, none added once done");
  weft_ctx_release(c);
}

/* --- creation racing a parent's cancel ------------------------------------ */

#define MADE 2000

typedef struct maker {
  weft_runtime *rt;
  weft_ctx *parent;
  weft_ctx *made[MADE];
  int n;
  int drop;  /* release each child at once instead of keeping it */
} maker;

static void *maker_main(void *arg) {
  maker *m = arg;
  for (int i = 0; i < MADE; i++) {
    weft_ctx *c = i % 3 == 0 ? weft_ctx_new(m->rt, m->parent, weft_now() + 60)
                             : weft_ctx_new(m->rt, m->parent, INFINITY);
    if (m->drop)
      weft_ctx_release(c);
    else
      m->made[m->n++] = c;
  }
  return NULL;
}

static void test_create_vs_cancel(weft_runtime *rt) {
  int all_done = 1;
  for (int r = 0; r < 20; r++) {
    weft_ctx *p = weft_ctx_new(rt, weft_ctx_background(rt), INFINITY);
    maker m[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
      m[i].rt = rt;
      m[i].parent = p;
      m[i].n = 0;
      m[i].drop = i == 2;
      pthread_create(&th[i], NULL, maker_main, &m[i]);
    }
    weft_ctx_cancel(p, WEFT_CANCELED, NULL);
    for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 2; i++)
      for (int j = 0; j < m[i].n; j++) {
        if (weft_ctx_err(m[i].made[j]) == 0) all_done = 0;
        weft_ctx_release(m[i].made[j]);
      }
    if (weft_ctx_debug_children(p) != 0) all_done = 0;
    weft_ctx_release(p);
  }
  ok(all_done, "children made while their parent is canceled all end");
}

/* --- deadlines from several threads -------------------------------------- */

static void *deadline_main(void *arg) {
  weft_runtime *rt = arg;
  int good = 1;
  for (int i = 0; i < 50; i++) {
    weft_ctx *c = weft_ctx_new(rt, weft_ctx_background(rt),
                               weft_now() + 0.001 * (i % 5));
    if (!weft_ctx_wait(c, 5.0) || weft_ctx_err(c) != WEFT_DEADLINE_EXCEEDED)
      good = 0;
    weft_ctx_release(c);
  }
  return good ? arg : NULL;
}

static void test_deadlines(weft_runtime *rt) {
  pthread_t th[4];
  int good = 1;
  for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, deadline_main, rt);
  for (int i = 0; i < 4; i++) {
    void *r;
    pthread_join(th[i], &r);
    if (r == NULL) good = 0;
  }
  ok(good, "deadlines fire for waiters on 4 threads");

  weft_ctx *c = weft_ctx_new(rt, weft_ctx_background(rt), weft_now() + 0.01);
  int woke = weft_ctx_wait(c, 5.0);
  ok(woke && weft_ctx_err(c) == WEFT_DEADLINE_EXCEEDED &&
         weft_ctx_cause(c) == NULL,
     "a deadline's cause is the error");
  weft_ctx_release(c);

  /* a timer due while its context is being dropped on another thread */
  for (int i = 0; i < 200; i++) {
    weft_ctx *d = weft_ctx_new(rt, weft_ctx_background(rt), weft_now());
    weft_ctx *e = weft_ctx_new(rt, weft_ctx_background(rt), weft_now() + 1e-4);
    weft_ctx_release(d);
    weft_ctx_release(e);
  }
  /* the timer thread may still hold claimed ones: they go once fired */
  double end = weft_now() + 5;
  while (weft_ctx_debug_live(rt) != 0 && weft_now() < end) {
    struct timespec ts = {0, 1000000L};
    nanosleep(&ts, NULL);
  }
  ok(weft_ctx_debug_live(rt) == 0, "timers racing their contexts' destruction");
}

/* --- deep chains --------------------------------------------------------- */

static void test_deep(weft_runtime *rt) {
  long live0 = weft_ctx_debug_live(rt);
  weft_ctx *root = weft_ctx_new(rt, weft_ctx_background(rt), INFINITY);
  weft_ctx *c = root;
  weft_ctx_retain(root);
  for (int i = 0; i < 1000000; i++) {
    weft_ctx *n = weft_ctx_new(rt, c, INFINITY);
    weft_ctx_release(c);  /* the child holds the parent */
    c = n;
  }
  weft_ctx_cancel(root, WEFT_CANCELED, NULL);
  ok(weft_ctx_err(c) == WEFT_CANCELED, "a chain of 1e6 contexts cancels");
  weft_ctx_release(root);
  weft_ctx_release(c);
  ok(weft_ctx_debug_live(rt) == live0, "and is freed without recursion");
}

/* --- failures: out of memory, closed runtime ------------------------------ */

/* Allocations let through before the next one fails; < 0: never fails. */
static atomic_int fail_after = -1;

static void *failing_alloc(void *ud, void *p, size_t osize, size_t nsize) {
  (void)ud;
  (void)osize;
  if (nsize == 0) {
    free(p);
    return NULL;
  }
  if (atomic_load(&fail_after) == 0) {
    atomic_store(&fail_after, -1);
    return NULL;
  }
  if (atomic_load(&fail_after) > 0) atomic_fetch_sub(&fail_after, 1);
  return realloc(p, nsize);
}

static void test_failures(void) {
  weft_config cfg = {0};
  cfg.workers = -1; /* no runtime pool */
  char err[128];
  cfg.alloc = failing_alloc;
  weft_runtime *rt = weft_runtime_new(&cfg, err, sizeof err);
  if (rt == NULL) {
    ok(0, "runtime with a failing allocator");
    return;
  }
  weft_ctx *p = weft_ctx_new(rt, weft_ctx_background(rt), INFINITY);
  long live0 = weft_ctx_debug_live(rt);
  atomic_store(&fail_after, 0);
  errno = 0;
  weft_ctx *c = weft_ctx_new(rt, p, INFINITY);
  ok(c == NULL && errno == ENOMEM && weft_ctx_debug_live(rt) == live0 &&
         weft_ctx_debug_children(p) == 0,
     "out of memory: NULL, ENOMEM, nothing left behind");
  /* the context is allocated and linked, the timer heap's growth fails */
  atomic_store(&fail_after, 1);
  errno = 0;
  c = weft_ctx_new(rt, p, weft_now() + 10);
  ok(c == NULL && errno == ENOMEM && weft_ctx_debug_live(rt) == live0 &&
         weft_ctx_debug_children(p) == 0,
     "timer out of memory: NULL, ENOMEM, child unlinked and freed");
  atomic_store(&fail_after, -1);
  c = weft_ctx_new(rt, p, weft_now() + 0.01);
  ok(c != NULL && weft_ctx_wait(c, 5.0) &&
         weft_ctx_err(c) == WEFT_DEADLINE_EXCEEDED,
     "the timer works after a failed add");
  weft_ctx_release(c);
  weft_runtime_retain(rt);
  weft_runtime_close(rt, 0);  /* stops the timer */
  errno = 0;
  c = weft_ctx_new(rt, p, weft_now() + 10);
  ok(c == NULL && errno == ESHUTDOWN && weft_ctx_debug_live(rt) == live0 &&
         weft_ctx_debug_children(p) == 0,
     "a deadline on a closed runtime: NULL, ESHUTDOWN, nothing left behind");
  c = weft_ctx_new(rt, p, INFINITY);
  ok(c != NULL, "contexts without deadlines still work once closed");
  weft_ctx_cancel(p, WEFT_CANCELED, NULL);
  ok(weft_ctx_err(c) == WEFT_CANCELED, "and still cancel");
  weft_ctx_release(c);
  weft_ctx_release(p);
  weft_runtime_release(rt);
}

int main(void) {
  char err[128];
  weft_config cfg = {0};
  cfg.workers = -1; /* no runtime pool */
  weft_runtime *rt = weft_runtime_new(&cfg, err, sizeof err);
  if (rt == NULL) {
    printf("Bail out! %s\n", err);
    return 1;
  }
  CL = luaL_newstate();
  if (CL == NULL || weft_runtime_open(rt, CL) != 0) {
    printf("Bail out! cannot open a state\n");
    return 1;
  }
  test_concurrent_cancel(rt);
  test_waiter_api(rt);
  test_wait_wakeup(rt);
  test_create_vs_cancel(rt);
  test_deadlines(rt);
  test_deep(rt);
  ok(weft_ctx_debug_live(rt) == 0, "no context leaked");
  test_failures();
  lua_close(CL);
  weft_runtime_close(rt, 0);
  printf("1..%d\n", test_no);
  return failures != 0;
}
