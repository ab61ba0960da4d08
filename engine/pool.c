/*
** pool.c: worker pools, their jobs and the workers' lua_States (pool.h).
**
** Owns: the pool (admission counters, the queue of admitted jobs not yet
** started, the queue of jobs waiting for admission, admission and idle
** waiters, statistics), its workers (thread, lua_State, the list of parked
** jobs made runnable again) and the jobs.
**
** Locking: p->mu guards the pool's fields and each worker's idle flag and
** link, but for its atomics (resolving and idle_watch, which a finishing
** job reads after releasing p->mu; the per-slice counters).  w->mu guards
** the worker's ready list, kick flag and each of its jobs' parked /
** wake_pending flags; it is a leaf lock (taken under p->mu, under a
** context's or a future's lock by weft_job_wake, never the other way
** round).  p->mu is never held while a context's or a future's lock is
** taken, nor across any Lua call.  A worker's lua_State is touched only
** by its own thread.  Both locks are adaptive (weft_pool_new).
*/
#include "pool.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lualib.h>

#include "runtime.h"

typedef struct worker worker;

#define LAT_BUCKETS 160  /* 4 per octave from 1 microsecond: 40 octaves */
#define SPARE_COROUTINES 8  /* a worker's finished coroutines kept for reuse */

struct weft_job {
  weft_pool *pool;
  weft_buf *call;          /* fn and arguments, until the job starts */
  weft_ctx *ctx;           /* retained */
  weft_future *future;     /* retained */
  weft_job *next;          /* in one of the queues */
  worker *w;               /* set under p->mu as it starts; then fixed */
  lua_State *co;
  int co_ref;
  bool parking;            /* worker thread: the yield is a park */
  bool parked, wake_pending, ready;  /* w->mu */
  weft_waiter cancel;      /* on ctx while it runs (hard cancel) */
  bool watching;           /* cancel is registered */
  int want_kind;           /* worker thread: what the park waits for */
  void *want_target;
  int wait_kind;           /* p->mu: the same, once parked */
  void *wait_target;
  bool queued, started;    /* p->mu */
  weft_job *act_prev, *act_next;  /* p->mu: started, not finished */
  unsigned mark;           /* p->mu: deadlock search */
  bool deadlocked;         /* set under p->mu before the wake */
  atomic_bool killed;      /* pool:close(timeout) gave up waiting */
  bool shielded;           /* worker thread: finishing, hard cancel off */
  bool preempted;          /* worker thread: suspended at a poll's end */
  bool stopping;           /* worker thread: the hook stopped it (a yield) */
  double submitted_at;     /* weft_now() */
  unsigned long long id;   /* p->mu at submit */
};

struct worker {
  weft_pool *pool;
  int index;
  pthread_t thread;
  bool started;
  lua_State *L;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  weft_job *ready, *ready_tail;  /* mu: woken jobs, to resume */
  bool kicked;                   /* mu */
  atomic_bool poked;             /* set under mu with kicked or a push to
                                    ready: what an idle spin watches */
  int nparked;                   /* mu: its jobs parked, not woken */
  _Atomic(weft_job *) current;   /* written by the worker thread only */
  _Atomic(lua_State *) inner;    /* the coroutine the job resumed, if any
                                    (its thread only; read by the signal
                                    handler, which runs on that thread) */
  worker *idle_next;             /* p->mu */
  bool idle;                     /* p->mu */
  char warning[256];             /* the worker thread's: a warning so far */
  size_t warning_len;
  bool warnings_off;
  size_t mem;                    /* the state's bytes (its thread only) */
  int unswept;                   /* jobs since the last collector step */
  lua_CFunction pcall_fn, xpcall_fn;  /* the base library's */
  lua_State *spare[SPARE_COROUTINES];  /* finished job coroutines, clean */
  int spare_ref[SPARE_COROUTINES];     /* their registry references */
  int nspare;
  atomic_size_t mem_seen;        /* mem, for other threads */
  atomic_bool preempt;           /* cooperative: the poll's time is up */
  weft_timer_entry preempt_at;   /* cooperative: fires at a poll's end */
};

/*
** Laid out by who writes what: a submit takes p->mu and touches only the
** two cache lines that follow it (a job's worker writes them too, under
** p->mu, but nothing else there changes); the configuration above them is
** written once; the workers' bookkeeping is below.  Each line moved
** between the cores costs up to half a microsecond on the bench's machine
** (bench/core_rtt.c), and a submit that read six lines the workers wrote
** paid for six.  p is aligned to a cache line (weft_pool_new).
*/
struct weft_pool {
  /* written at creation only */
  weft_object obj;
  weft_runtime *rt;
  void *mem;                 /* the allocation p is aligned within */
  char name[64];
  int nworkers, limit, queue;
  bool hard_cancel;
  bool coop;                 /* cooperative: one worker, no thread */
  weft_buf *init, *on_panic;
  char *path, *cpath;
  size_t path_len, cpath_len;
  worker *workers;
  pthread_t host;            /* cooperative: the thread that made it */
  size_t memory_limit;
  /* submit's: p->mu and what it guards that a submit touches */
  _Alignas(WEFT_LINE) pthread_mutex_t mu;
  int inflight, nqueued;
  weft_job *newq, *newq_tail;
  _Alignas(WEFT_LINE) worker *idle;
  bool shutdown;
  long submitted;
  unsigned long long next_id;
  weft_job *waitq, *waitq_tail;
  /* the workers' and the rest (p->mu unless atomic) */
  _Alignas(WEFT_LINE) pthread_cond_t cv;  /* start-up and join handshakes */
  atomic_int resolving;      /* finished jobs whose future is resolving
                                (raised under mu, lowered without it) */
  atomic_bool idle_watch;    /* set under mu while idle_waiters may be
                                non-empty: a finishing job looks at it
                                after lowering resolving (finish) */
  weft_waiter *admit_waiters, *idle_waiters;
  int nstarted;              /* workers that finished start-up */
  char start_err[256];
  bool stopping, joining, joined;
  long completed, failed, panicked, canceled;
  long memory_errors;        /* of panicked: at the memory limit */
  weft_job *active;          /* started jobs, not finished */
  int nactive, npoolwait;    /* npoolwait: active jobs parked on p's work */
  unsigned gen;
  long deadlocks;
  char deadlock_msg[512];
  atomic_bool polling;       /* cooperative: a thread runs it now */
  atomic_bool killed;        /* weft_pool_kill: every job is told to stop */
  weft_pool *rt_prev, *rt_next;  /* rt->mu: rt's live pools */
  uint64_t latency[LAT_BUCKETS];  /* submit to finish, log buckets */
  double latency_max;
  long latency_n;
  /* changed at every job slice, without a lock */
  _Alignas(WEFT_LINE) atomic_long running, parked;
};

static const char worker_key = 0;    /* worker registry: the worker */
static const char on_panic_key = 0;  /* worker registry: on_panic */
static const char fallback_key[2] = {0};  /* worker registry: "(error)"
                                        and "", kept interned so that
                                        pushing them never allocates
                                        (panicked_job) */

/* ---------------------------------------------------------------------- */
/* queues */

static void push(weft_job **head, weft_job **tail, weft_job *j) {
  j->next = NULL;
  if (*tail != NULL)
    (*tail)->next = j;
  else
    *head = j;
  *tail = j;
}

static weft_job *pop(weft_job **head, weft_job **tail) {
  weft_job *j = *head;
  if (j != NULL) {
    *head = j->next;
    if (*head == NULL) *tail = NULL;
    j->next = NULL;
  }
  return j;
}

/* Wakes w (spinning or asleep): it looks for work again. */
static void kick(worker *w) {
  pthread_mutex_lock(&w->mu);
  w->kicked = true;
  atomic_store_explicit(&w->poked, true, memory_order_relaxed);
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

/* Takes an idle worker off the list for a new job, to be kicked (once
   p->mu is released, where that matters); NULL when none.  p->mu held. */
static worker *claim_idle(weft_pool *p) {
  worker *w = p->idle;
  if (w != NULL) {
    p->idle = w->idle_next;
    w->idle = false;
  }
  return w;
}

/*
** A worker whose own jobs are parked leaves a new job to a sleeping worker
** that has none, so that the jobs of one stage (a producer, its consumers)
** spread over the threads instead of piling up on the first one to look:
** a job never moves once started.  Kicks that worker and returns true;
** false when there is none.  p->mu held; takes the workers' mu.
*/
static bool defer_new_job(weft_pool *p, worker *w) {
  if (p->idle == NULL || (p->idle == w && w->idle_next == NULL))
    return false;  /* nobody to leave it to: no lock taken */
  pthread_mutex_lock(&w->mu);
  int mine = w->nparked;
  pthread_mutex_unlock(&w->mu);
  if (mine == 0) return false;
  for (worker **at = &p->idle; *at != NULL; at = &(*at)->idle_next) {
    worker *o = *at;
    if (o == w) continue;
    pthread_mutex_lock(&o->mu);
    bool free = o->nparked == 0 && o->ready == NULL;
    pthread_mutex_unlock(&o->mu);
    if (!free) continue;
    *at = o->idle_next;  /* as claim_idle does, for o */
    o->idle = false;
    kick(o);
    return true;
  }
  return false;
}

/* ---------------------------------------------------------------------- */
/* hard cancel
**
** A running job whose context ends is interrupted at its next Lua
** instruction by a count hook, installed only then: no cost while nothing
** is canceled.  The canceling thread never touches the job's lua_State:
** it sends CANCEL_SIGNAL to the worker thread, whose handler installs the
** hook on the job's coroutine, from that same thread.  This is the use of
** lua_sethook that Lua documents as safe (lua.c does it from SIGINT);
** calling lua_sethook from another thread would walk the coroutine's
** CallInfo list while its owner may free entries of it (luaE_shrinkCI).
** The hook stays: a pcall that swallows the error meets it again at its
** next instruction.  A worker about to run a job whose context already
** ended installs the hook itself; the fences make sure that either the
** canceler sees the job running (and signals) or the worker sees the
** context done.  When the host already handles CANCEL_SIGNAL, weft leaves
** it alone and hard cancel only acts at the job's next weft call.
*/

#define CANCEL_SIGNAL SIGURG  /* ignored by default; Go preempts with it */

/* A worker thread's own.  Initial-exec: read without __tls_get_addr,
   although weft.core is dlopen'd (glibc keeps static TLS room for such a
   pointer).  Through __tls_get_addr, a new thread's first read went
   through ThreadSanitizer's dynamic-TLS interceptor, whose guess of the
   block's size from the heap sometimes read garbage, and the run died
   with "ThreadSanitizer failed to allocate 0x1ec4... bytes" (what spec/run
   blamed on address randomization). */
static _Thread_local worker *tls_worker
    __attribute__((tls_model("initial-exec")));

/* The error that stops j now (its context's, or close's), else WEFT_LIVE. */
static int stop_error(weft_job *j) {
  if (atomic_load(&j->killed)) return WEFT_KILLED;
  if (j->shielded || !j->pool->hard_cancel) return WEFT_LIVE;
  return weft_ctx_err(j->ctx);
}

static void arm_hook(lua_State *co);

/* Whether the coroutine L runs inside a pcall or xpcall (the base
   library's, noted as the worker's state was built). */
static bool in_pcall(worker *w, lua_State *L) {
  lua_Debug d;
  for (int level = 0; lua_getstack(L, level, &d); level++) {
    if (!lua_getinfo(L, "f", &d)) break;
    lua_CFunction f = lua_tocfunction(L, -1);
    lua_pop(L, 1);
    if (f != NULL && (f == w->pcall_fn || f == w->xpcall_fn)) return true;
  }
  return false;
}

static void cancel_hook(lua_State *L, lua_Debug *ar) {
  worker *w = tls_worker;
  weft_job *j = w != NULL ? atomic_load(&w->current) : NULL;
  if (j == NULL || (j->co != L && atomic_load(&w->inner) != L)) return;
  int err = stop_error(j);
  if (err != WEFT_LIVE && ar->event == LUA_HOOKCOUNT && L == j->co &&
      lua_isyieldable(L) && !j->stopping && !in_pcall(w, L)) {
    /* Outside any pcall, the job's own coroutine stops by yielding out of
       the hook: Lua turns hooks back on after a hook that yields (not
       after one that raises, in a coroutine that then dies), so the stop
       still reaches the __close handlers run as the job is unwound
       (stop_unwound).  Inside a pcall the hook raises, so that the job
       sees its error (a group's job reports its failure and its time);
       the pcall restores the hooks, and the next instruction after it
       meets the hook again. */
    j->stopping = true;
    lua_yield(L, 0);
    return;
  }
  if (err == WEFT_KILLED) luaL_error(L, "%s", WEFT_KILLED_MSG);
  if (err != WEFT_LIVE) luaL_error(L, "%s", weft_ctx_errmsg(err));
  if (atomic_load(&w->preempt)) {
    /* A cooperative poll's time is up: suspend the job where a hook may
       yield (else at a later instruction: the hook stays until then). */
    if (ar->event == LUA_HOOKCOUNT && L == j->co && lua_isyieldable(L)) {
      atomic_store(&w->preempt, false);
      lua_sethook(L, NULL, 0, 0);
      j->preempted = true;
      lua_yield(L, 0);
    }
    return;
  }
  /* Nothing to do (a shielded job, a suspension that came after its poll):
     drop the hook, with the signal blocked so that its handler cannot
     install one half-way, then look again for a stop that came meanwhile. */
  sigset_t set, old;
  sigemptyset(&set);
  sigaddset(&set, CANCEL_SIGNAL);
  pthread_sigmask(SIG_BLOCK, &set, &old);
  lua_sethook(L, NULL, 0, 0);
  if (stop_error(j) != WEFT_LIVE || atomic_load(&w->preempt)) arm_hook(L);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* At its next instruction, and at the next return (a parked job resumed
   in a C continuation that returns straight out of the job, as in
   `return ctx:wait()`, runs no instruction before it ends). */
static void arm_hook(lua_State *co) {
  lua_sethook(co, cancel_hook, LUA_MASKCOUNT | LUA_MASKRET, 1);
}

static void on_cancel_signal(int sig) {
  (void)sig;
  worker *w = tls_worker;
  weft_job *j = w != NULL ? atomic_load(&w->current) : NULL;
  if (j != NULL && (weft_ctx_err(j->ctx) != WEFT_LIVE ||
                   atomic_load(&j->killed) || atomic_load(&w->preempt))) {
    lua_State *inner = atomic_load(&w->inner);
    arm_hook(j->co);
    if (inner != NULL) arm_hook(inner);  /* what runs now */
  }
}

/*
** coroutine.resume and coroutine.wrap in a worker note the coroutine the
** job runs, so that hard cancel reaches a loop inside it too: the signal
** handler arms that coroutine as well, and when it returns to the one
** that resumed it, that one is armed in turn if the job must stop.
*/
static int co_resume(lua_State *L) {
  worker *w = tls_worker;
  weft_job *j = w != NULL ? atomic_load(&w->current) : NULL;
  lua_State *co = lua_tothread(L, 1);
  if (co == NULL) luaL_checktype(L, 1, LUA_TTHREAD);  /* its own message */
  lua_pushvalue(L, lua_upvalueindex(1));  /* the original resume */
  lua_insert(L, 1);
  if (j == NULL) {  /* not from a job: as it was */
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
  }
  lua_State *outer = atomic_load(&w->inner);
  atomic_store(&w->inner, co);
  if (stop_error(j) != WEFT_LIVE) arm_hook(co);
  int status = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
  atomic_store(&w->inner, outer);
  if (stop_error(j) != WEFT_LIVE) arm_hook(outer != NULL ? outer : j->co);
  if (status != LUA_OK) return lua_error(L);
  return lua_gettop(L);
}

/* The function coroutine.wrap returns: upvalue 1 = the coroutine, 2 = the
   worker's resume.  Errors as Lua's own wrap raises them. */
static int co_wrapped(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  int n = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_rotate(L, 1, 2);  /* resume, co, args... */
  lua_call(L, n + 1, LUA_MULTRET);
  if (lua_toboolean(L, 1)) return lua_gettop(L) - 1;
  int stat = lua_status(co);
  if (stat != LUA_OK && stat != LUA_YIELD) {  /* died: close it */
    stat = lua_resetthread(co);
    lua_settop(co, 0);
  }
  if (stat != LUA_ERRMEM && lua_type(L, 2) == LUA_TSTRING) {
    luaL_where(L, 1);
    lua_pushvalue(L, 2);
    lua_concat(L, 2);
    lua_replace(L, 2);
  }
  lua_settop(L, 2);
  return lua_error(L);
}

static int co_wrap(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_State *co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushvalue(L, lua_upvalueindex(1));  /* the worker's resume */
  lua_pushcclosure(L, co_wrapped, 2);
  return 1;
}

/* Installs the handler unless someone else handles the signal. */
static bool install_cancel_signal(void) {
  struct sigaction old, sa;
  if (sigaction(CANCEL_SIGNAL, NULL, &old) != 0) return false;
  if (old.sa_handler == on_cancel_signal) return true;
  if ((old.sa_flags & SA_SIGINFO) ||
      (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN))
    return false;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_cancel_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  return sigaction(CANCEL_SIGNAL, &sa, NULL) == 0;
}

/* The job's context ended (under its lock): wake it if parked, interrupt
   it if running. */
static void cancel_wake(weft_waiter *wt) {
  weft_job *j = (weft_job *)((char *)wt - offsetof(weft_job, cancel));
  worker *w = j->w;
  weft_job_wake(j);
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_load(&w->current) == j && j->pool->hard_cancel)
    pthread_kill(w->thread, CANCEL_SIGNAL);
}

/* ---------------------------------------------------------------------- */
/* jobs */

/* The worker whose state L is (any coroutine of it), else NULL. */
static worker *worker_of(lua_State *L) {
  worker *w = NULL;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &worker_key) == LUA_TLIGHTUSERDATA)
    w = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return w;
}

weft_pool *weft_pool_of_state(lua_State *L) {
  worker *w = worker_of(L);
  return w != NULL ? w->pool : NULL;
}

weft_job *weft_job_running(lua_State *L) {
  worker *w = worker_of(L);
  weft_job *j = w != NULL ? atomic_load(&w->current) : NULL;
  return j != NULL && j->co == L ? j : NULL;
}

weft_job *weft_job_of(lua_State *L) {
  weft_job *j = weft_job_running(L);
  return j != NULL && lua_isyieldable(L) ? j : NULL;
}

void weft_job_wake(weft_job *j) {
  worker *w = j->w;
  pthread_mutex_lock(&w->mu);
  if (j->parked) {
    j->parked = false;
    w->nparked--;
    atomic_fetch_sub(&j->pool->parked, 1);
    j->ready = true;
    push(&w->ready, &w->ready_tail, j);
    atomic_store_explicit(&w->poked, true, memory_order_relaxed);
    pthread_cond_signal(&w->cv);
  } else {
    j->wake_pending = true;  /* it has not parked yet: do not let it */
  }
  pthread_mutex_unlock(&w->mu);
  if (j->pool->coop) weft_runtime_wakeup(j->pool->rt);  /* poll again */
}

void weft_job_shield(weft_job *j) { j->shielded = true; }

int weft_job_canceled(weft_job *j) { return stop_error(j); }

void weft_pool_kill(weft_pool *p) {
  pthread_mutex_lock(&p->mu);
  atomic_store(&p->killed, true);
  /* jobs not started yet end as they start, without running */
  for (weft_job *j = p->newq; j != NULL; j = j->next) atomic_store(&j->killed, true);
  for (weft_job *j = p->waitq; j != NULL; j = j->next) atomic_store(&j->killed, true);
  for (weft_job *j = p->active; j != NULL; j = j->act_next) {
    atomic_store(&j->killed, true);
    weft_job_wake(j);
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load(&j->w->current) == j && p->hard_cancel)
      pthread_kill(j->w->thread, CANCEL_SIGNAL);
  }
  pthread_mutex_unlock(&p->mu);
}

int weft_job_park(lua_State *L, lua_KContext kctx, lua_KFunction k, int kind,
                  void *target) {
  weft_job *j = weft_job_of(L);
  j->parking = true;
  j->want_kind = kind;
  j->want_target = target;
  return lua_yieldk(L, 0, kctx, k);
}

const char *weft_job_deadlock(weft_job *j) {
  if (!j->deadlocked) return NULL;
  j->deadlocked = false;
  return j->pool->deadlock_msg;
}

/* ---------------------------------------------------------------------- */
/* deadlock detection
**
** A pool deadlocks when every job it has started waits, parked, on work
** the pool itself can no longer admit: for admission to this same full
** pool (submit), or for a future of this pool's job that is still queued
** for admission or is itself waiting so (transitively; a cycle counts),
** and no admitted job is left to start.  Nothing else can then free a
** slot.  Checked under p->mu each time a job parks in such a wait: that
** is the only moment a pool can become deadlocked.  Waits on anything
** else (contexts, other pools, channels) are never counted, so there are
** no false positives; those deadlocks are not detected.
*/

static bool pool_full(weft_pool *p) {
  return !p->shutdown && p->inflight >= p->limit && p->nqueued >= p->queue;
}

/* Parked (or parking) and not woken since; p->mu held, takes w->mu. */
static bool still_waiting(weft_job *j) {
  pthread_mutex_lock(&j->w->mu);
  bool waiting = !j->ready && !j->wake_pending;
  pthread_mutex_unlock(&j->w->mu);
  return waiting;
}

/* Whether j can only be woken by work p cannot admit; p->mu held. */
static bool hopeless(weft_pool *p, weft_job *j) {
  unsigned gen = ++p->gen;
  for (;;) {
    if (j->wait_kind == WEFT_WAIT_OTHER || !still_waiting(j)) return false;
    if (j->mark == gen) return true;  /* waits on itself, around a cycle */
    j->mark = gen;
    if (j->wait_kind == WEFT_WAIT_ADMIT) return j->wait_target == p && pool_full(p);
    weft_future *f = j->wait_target;
    if (weft_future_state(f) != WEFT_FUT_PENDING || weft_future_pool(f) != p)
      return false;
    weft_job *k = weft_future_job(f);
    if (k == NULL) return false;
    if (k->queued) return p->inflight >= p->limit;  /* no slot for it */
    if (!k->started) return false;
    j = k;
  }
}

static void detect_deadlock(weft_pool *p) {
  if (p->npoolwait < p->nactive || p->newq != NULL || p->nactive == 0) return;
  int admit = 0, futures = 0;
  for (weft_job *j = p->active; j != NULL; j = j->act_next) {
    if (!hopeless(p, j)) return;
    if (j->wait_kind == WEFT_WAIT_ADMIT)
      admit++;
    else
      futures++;
  }
  p->deadlocks++;
  snprintf(p->deadlock_msg, sizeof p->deadlock_msg,
           WEFT_DEADLOCK_MSG ": pool '%s' (limit %d, queue %d): all %d jobs in "
           "flight wait for work the pool cannot admit (%d in submit to it, "
           "%d on futures of its queued or waiting jobs); use a second pool "
           "for sub-work, or a larger limit",
           p->name, p->limit, p->queue, p->nactive, admit, futures);
  for (weft_job *j = p->active; j != NULL; j = j->act_next) {
    j->deadlocked = true;
    weft_job_wake(j);
  }
}

/*
** An idle worker spins a little (weft_spin) before it sleeps: a job of its
** own parked on a channel is usually woken within microseconds, and a
** caller feeding the pool one job at a time submits the next one soon.
*/
#define SPIN_IDLE_SECONDS 20e-6

/* w->mu held: spins, unless there is work already. */
static void spin(worker *w) {
  if (w->ready != NULL || w->kicked) return;
  atomic_store_explicit(&w->poked, false, memory_order_relaxed);
  weft_spin(&w->mu, &w->poked,
            w->nparked > 0 ? WEFT_SPIN_SECONDS : SPIN_IDLE_SECONDS);
}

/* The job yielded to park: park it, unless it was woken meanwhile. */
static void parked(worker *w, weft_job *j) {
  pthread_mutex_lock(&w->mu);
  if (j->wake_pending) {
    j->wake_pending = false;
    j->ready = true;
    push(&w->ready, &w->ready_tail, j);
  } else {
    j->parked = true;
    w->nparked++;
    atomic_fetch_add(&j->pool->parked, 1);
  }
  pthread_mutex_unlock(&w->mu);
}

static void job_free(weft_job *j) {
  weft_runtime *rt = j->pool->rt;
  weft_buf_release(j->call);
  weft_ctx_release(j->ctx);
  weft_future_release(j->future);
  weft_free(rt, j, sizeof *j);
}

/* OUT_MEMORY: panicked at the pool's memory limit (counted as both) */
enum { OUT_COMPLETED, OUT_FAILED, OUT_PANICKED, OUT_MEMORY, OUT_CANCELED };

/* Latency buckets: 4 per octave of microseconds (within 19%). */
static int latency_bucket(double seconds) {
  double us = seconds * 1e6;
  if (!(us >= 1)) return 0;
  int e;
  double m = frexp(us, &e);  /* us = m * 2^e, 0.5 <= m < 1 */
  int b = 1 + (e - 1) * 4 + (int)((m - 0.5) * 8);
  return b < LAT_BUCKETS ? b : LAT_BUCKETS - 1;
}

/* The upper bound of bucket b, in seconds. */
static double latency_upper(int b) {
  if (b == 0) return 1e-6;
  int e = (b - 1) / 4 + 1, sub = (b - 1) % 4;
  return ldexp(0.5 + (sub + 1) / 8.0, e) * 1e-6;
}

/* The q-quantile (0 < q <= 1) of the latencies; p->mu held. */
static double latency_quantile(weft_pool *p, double q) {
  if (p->latency_n == 0) return 0;
  uint64_t rank = (uint64_t)ceil(q * (double)p->latency_n), seen = 0;
  for (int b = 0; b < LAT_BUCKETS; b++) {
    seen += p->latency[b];
    if (seen >= rank) {
      double up = latency_upper(b);
      return up < p->latency_max ? up : p->latency_max;
    }
  }
  return p->latency_max;
}

/*
** A coroutine that returned (status OK, empty stack, no hook left by a
** cancel) starts the next job as a new one would (lua_resume with a
** function on an empty stack), sparing a thread, a registry slot and
** their collection per job.  Any other is dropped to the collector.
*/
static void keep_or_drop(worker *w, weft_job *j) {
  lua_State *co = j->co;
  if (w->nspare < SPARE_COROUTINES && co != NULL &&
      lua_status(co) == LUA_OK && lua_gettop(co) == 0 &&
      lua_gethook(co) == NULL) {
    w->spare[w->nspare] = co;
    w->spare_ref[w->nspare++] = j->co_ref;
  } else {
    luaL_unref(w->L, LUA_REGISTRYINDEX, j->co_ref);
  }
}

/* Nothing admitted, queued or resolving; p->mu held. */
static bool pool_idle(weft_pool *p) {
  return p->inflight == 0 && p->nqueued == 0 &&
         atomic_load(&p->resolving) == 0;
}

/* Resolves the job's future, keeps or drops its coroutine, gives its slot
   back. */
static void finish(worker *w, weft_job *j, int outcome, int state,
                   weft_buf *result) {
  weft_pool *p = w->pool;
  if (j->watching) weft_ctx_remove_waiter(j->ctx, &j->cancel);
  if (j->co_ref != LUA_NOREF) keep_or_drop(w, j);
  double latency = weft_now() - j->submitted_at;
  /* Counted and slot freed under p->mu, then the future resolved with no
     lock held (its wake-up is a syscall: under p->mu it made the woken
     thread and the workers convoy on p->mu), then the blocked submits and
     idle waiters woken.  So whoever sees the future resolved sees the
     statistics add up and the slot free, and a blocked submit admitted
     into the slot sees the future resolved. */
  pthread_mutex_lock(&p->mu);
  switch (outcome) {
    case OUT_COMPLETED: p->completed++; break;
    case OUT_FAILED: p->failed++; break;
    case OUT_MEMORY: p->memory_errors++; /* fall through */
    case OUT_PANICKED: p->panicked++; break;
    default: p->canceled++;
  }
  p->latency[latency_bucket(latency)]++;
  p->latency_n++;
  if (latency > p->latency_max) p->latency_max = latency;
  p->inflight--;
  if (j->started) {
    if (j->act_prev != NULL)
      j->act_prev->act_next = j->act_next;
    else
      p->active = j->act_next;
    if (j->act_next != NULL) j->act_next->act_prev = j->act_prev;
    p->nactive--;
  }
  weft_future_unbind_job(j->future);
  weft_job *next = pop(&p->waitq, &p->waitq_tail);
  if (next != NULL) {  /* the first queued job takes the slot */
    next->queued = false;
    p->nqueued--;
    p->inflight++;
    push(&p->newq, &p->newq_tail, next);
  }
  bool admit = p->admit_waiters != NULL;
  /* not idle until the future is resolved */
  atomic_fetch_add_explicit(&p->resolving, 1, memory_order_relaxed);
  pthread_mutex_unlock(&p->mu);
  weft_future_resolve(j->future, state, result);
  /* A waiter for idle registers (idle_watch, then resolving read) as this
     lowers resolving and reads idle_watch: both sequentially consistent,
     so either the waiter sees the count lowered or this sees the flag.
     Blocked submits came before the slot was freed, or saw it free. */
  atomic_fetch_sub(&p->resolving, 1);
  if (admit || atomic_load(&p->idle_watch)) {
    pthread_mutex_lock(&p->mu);
    weft_waiters_wake_all(&p->admit_waiters);
    if (pool_idle(p)) {
      weft_waiters_wake_all(&p->idle_waiters);
      atomic_store(&p->idle_watch, false);
    }
    pthread_mutex_unlock(&p->mu);
  }
  job_free(j);
}

/* Under lua_pcall: 1 = the string, 2 = the output. */
static int string_buf_k(lua_State *L) {
  weft_buf **out = lua_touserdata(L, 2);
  lua_pushstring(L, lua_touserdata(L, 1));
  *out = weft_buf_encode(L, -1, 1, "error", 0);
  return 0;
}

/* A buffer holding one string; NULL when out of memory (the future then
   reports "not enough memory").  Never raises. */
static weft_buf *string_buf(lua_State *L, const char *s) {
  weft_buf *b = NULL;
  lua_pushcfunction(L, string_buf_k);
  lua_pushlightuserdata(L, (void *)s);
  lua_pushlightuserdata(L, &b);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) lua_pop(L, 1);
  return b;
}

/* Under lua_pcall in the worker's state: 1 = the job.  Makes the job's
   coroutine and puts fn, ctx, args... on it. */
static int start_k(lua_State *L) {
  weft_job *j = lua_touserdata(L, 1);
  worker *w = j->w;
  lua_State *co;
  if (w->nspare > 0) {
    w->nspare--;
    co = w->spare[w->nspare];
    j->co_ref = w->spare_ref[w->nspare];
  } else {
    co = lua_newthread(L);
    j->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);  /* anchors co; pops it */
  }
  j->co = co;
  int n = weft_buf_decode(co, j->call);
  weft_push_object(co, (weft_object *)j->ctx);
  lua_insert(co, 2);
  lua_pushinteger(L, n + 1);  /* values on co, ctx included */
  return 1;
}

/* Under lua_pcall: 1 = the error value, 2 = the dead coroutine.  Returns
   the message and the traceback. */
static int report_k(lua_State *L) {
  lua_State *co = lua_tothread(L, 2);
  if (lua_type(L, 1) == LUA_TSTRING || lua_type(L, 1) == LUA_TNUMBER) {
    lua_pushvalue(L, 1);
  } else if (luaL_getmetafield(L, 1, "__tostring") != LUA_TNIL) {
    lua_pushvalue(L, 1);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_isstring(L, -1)) {
      lua_pop(L, 1);
      lua_pushfstring(L, "(error object is a %s value; its __tostring failed)",
                      luaL_typename(L, 1));
    }
  } else {
    lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, co, NULL, 0);
  return 2;
}

/* Under lua_pcall: 1 = the message, 2 = the traceback; encodes
   "message\ntraceback" into *ud (3). */
static int encode_error_k(lua_State *L) {
  weft_buf **out = lua_touserdata(L, 3);
  lua_settop(L, 2);
  lua_pushliteral(L, "\n");
  lua_insert(L, 2);
  lua_concat(L, 3);
  *out = weft_buf_encode(L, 1, 1, "error", 0);
  return 0;
}

/* Under lua_pcall: 1 = the output, 2.. = the job's results. */
static int encode_results_k(lua_State *L) {
  weft_buf **out = lua_touserdata(L, 1);
  *out = weft_buf_encode(L, 2, lua_gettop(L) - 1, "results", 1);
  return 0;
}

/* The message of the error on top of L's stack, as a buffer (pops it). */
static weft_buf *error_buf(lua_State *L) {
  /* only a string is read: converting anything else could allocate */
  const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
  weft_buf *b = string_buf(L, msg ? msg : "(error)");
  lua_pop(L, 1);
  return b;
}

/* Under lua_pcall: 1 = the limit, as text. */
static int limit_msg_k(lua_State *L) {
  lua_pushfstring(L, "not enough memory (limit %s)",
                  (const char *)lua_touserdata(L, 1));
  return 1;
}

/*
** The Lua the engine runs for a job whose coroutine stopped (its error's
** __tostring, its pending __close handlers) is still the job's: hard
** cancel and pool:close reach it there too (on the worker's own state,
** as the coroutine it resumed).  Worker thread.
*/
static void job_epilogue_begin(worker *w, weft_job *j) {
  atomic_store(&w->inner, w->L);
  /* a full barrier, as the fence in run() (an exchange: ThreadSanitizer
     refuses a fence here, where it is inlined) */
  (void)atomic_exchange(&w->current, j);
  if (stop_error(j) != WEFT_LIVE) {
    arm_hook(j->co);
    arm_hook(w->L);
  }
}

static void job_epilogue_end(worker *w) {
  atomic_store(&w->current, NULL);  /* the signal handler arms nothing now */
  atomic_store(&w->inner, NULL);
  lua_sethook(w->L, NULL, 0, 0);
}

/* Whether j was stopped by close or its context: it ends as canceled,
   whatever it raised. */
static bool job_stopped(weft_job *j) {
  return atomic_load(&j->killed) || weft_ctx_err(j->ctx) != WEFT_LIVE;
}

static void finish_stopped(worker *w, weft_job *j) {
  int err = weft_ctx_err(j->ctx);
  const char *msg = atomic_load(&j->killed) ? WEFT_KILLED_MSG
                                            : weft_ctx_errmsg(err);
  finish(w, j, OUT_CANCELED, WEFT_FUT_ERROR, string_buf(w->L, msg));
}

/* Ends j, stopped (its error popped, or suspended by the hook): runs its
   pending __close handlers (hard cancel still reaches them: the hook stays
   armed) and finishes it as canceled.  In the epilogue already. */
static void stop_unwound(worker *w, weft_job *j) {
  lua_resetthread(j->co);
  lua_settop(j->co, 0);
  job_epilogue_end(w);
  finish_stopped(w, j);
}

static void panicked_job(worker *w, weft_job *j, int status) {
  lua_State *L = w->L, *co = j->co;
  weft_pool *p = w->pool;
  int top = lua_gettop(L);
  job_epilogue_begin(w, j);
  /* A job stopped by its context or by close reports that: no message or
     traceback of its error to make (ending is final, so checking first
     decides as checking last would). */
  if (job_stopped(j)) {
    lua_pop(co, 1);  /* the error */
    stop_unwound(w, j);
    return;
  }
  /* the error value, its message and the traceback of the dead coroutine */
  lua_xmove(co, L, 1);
  int orig = top + 1, msg = top + 2, tb = top + 3;
  lua_pushcfunction(L, report_k);
  lua_pushvalue(L, orig);
  lua_rawgeti(L, LUA_REGISTRYINDEX, j->co_ref);
  if (lua_pcall(L, 2, 2, 0) != LUA_OK) {
    lua_settop(L, orig);
    lua_pushstring(L, status == LUA_ERRMEM ? "not enough memory" : "(error)");
    lua_pushliteral(L, "");
  }
  /* Close the coroutine's pending to-be-closed variables; as in a pcall,
     an error raised by one of them replaces the job's error (the
     traceback stays that of the first).  A dead coroutine reports its
     own error again: that one is not new. */
  if (lua_resetthread(co) != LUA_OK) {
    lua_xmove(co, L, 1);
    if (!lua_rawequal(L, -1, orig)) {
      lua_pushcfunction(L, report_k);
      lua_insert(L, -2);
      lua_rawgeti(L, LUA_REGISTRYINDEX, j->co_ref);
      if (lua_pcall(L, 2, 2, 0) == LUA_OK) {
        lua_pop(L, 1);
        lua_replace(L, msg);
      } else {
        lua_pop(L, 1);
      }
    } else {
      lua_pop(L, 1);
    }
    lua_settop(co, 0);
  }
  job_epilogue_end(w);
  bool at_limit = status == LUA_ERRMEM && p->memory_limit > 0;
  if (at_limit) {
    lua_gc(L, LUA_GCCOLLECT);  /* what the job held is garbage now */
    char limit[32];
    size_t m = p->memory_limit;
    if (m % (1 << 20) == 0)
      snprintf(limit, sizeof limit, "%zu MB", m >> 20);
    else if (m % 1024 == 0)
      snprintf(limit, sizeof limit, "%zu KB", m >> 10);
    else
      snprintf(limit, sizeof limit, "%zu bytes", m);
    lua_pushcfunction(L, limit_msg_k);
    lua_pushlightuserdata(L, limit);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK) lua_replace(L, msg);
    else lua_pop(L, 1);  /* keep "not enough memory" */
  }
  if (job_stopped(j)) {  /* it came during the report (it interrupts it) */
    lua_settop(L, top);
    finish_stopped(w, j);
    return;
  }
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &on_panic_key) == LUA_TFUNCTION) {
    lua_pushvalue(L, msg);
    lua_pushvalue(L, tb);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
      weft_log(p->rt, "weft pool '%s': error in on_panic: %s", p->name,
               lua_tostring(L, -1) ? lua_tostring(L, -1) : "(error)");
      lua_pop(L, 1);
    }
  } else if (p->rt->cfg.panic != NULL) {
    lua_pop(L, 1);
    p->rt->cfg.panic(p->rt->cfg.panic_ud, p->name, lua_tostring(L, msg),
                     lua_tostring(L, tb));
  } else {
    lua_pop(L, 1);
    weft_log(p->rt, "weft pool '%s': job panicked: %s\n%s", p->name,
             lua_tostring(L, msg), lua_tostring(L, tb));
  }
  weft_buf *b = NULL;
  lua_pushcfunction(L, encode_error_k);
  lua_pushvalue(L, msg);
  lua_pushvalue(L, tb);
  lua_pushlightuserdata(L, &b);
  if (lua_pcall(L, 3, 0, 0) != LUA_OK) b = error_buf(L);
  lua_settop(L, top);
  finish(w, j, at_limit ? OUT_MEMORY : OUT_PANICKED, WEFT_FUT_ERROR, b);
}

/* Runs j on w until it finishes or parks. */
static void run(worker *w, weft_job *j, bool start) {
  lua_State *L = w->L;
  weft_pool *p = w->pool;
  int nargs = 0;
  if (start) {
    if (job_stopped(j)) {  /* close or its context came first */
      finish_stopped(w, j);
      return;
    }
    lua_pushcfunction(L, start_k);
    lua_pushlightuserdata(L, j);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {  /* could not be set up */
      finish(w, j, OUT_FAILED, WEFT_FUT_ERROR, error_buf(L));
      return;
    }
    nargs = (int)lua_tointeger(L, -1) - 1;
    lua_pop(L, 1);
    weft_buf_release(j->call);
    j->call = NULL;
    j->cancel.wake = cancel_wake;
    j->watching = weft_ctx_add_waiter(j->ctx, &j->cancel);
  }
  if (j->wait_kind != WEFT_WAIT_OTHER) {  /* back from a pool wait */
    pthread_mutex_lock(&p->mu);
    j->wait_kind = WEFT_WAIT_OTHER;
    p->npoolwait--;
    pthread_mutex_unlock(&p->mu);
  }
  int nres = 0;
  j->parking = j->preempted = j->stopping = false;
  weft_job_event ev = {WEFT_JOB_BEGIN, p->name, w->index + 1, j->id, 0};
  weft_job_fn hook = p->rt->cfg.job_hook;
  if (hook != NULL) hook(p->rt->cfg.job_hook_ud, &ev);
  atomic_store(&w->current, j);
  atomic_thread_fence(memory_order_seq_cst);
  if ((p->hard_cancel &&
       (weft_ctx_err(j->ctx) != WEFT_LIVE || atomic_load(&j->killed))) ||
      atomic_load(&w->preempt))
    arm_hook(j->co);
  atomic_fetch_add(&p->running, 1);
  int status = lua_resume(j->co, L, nargs, &nres);
  atomic_fetch_sub(&p->running, 1);
  atomic_store(&w->current, NULL);
  if (hook != NULL) {
    ev.what = WEFT_JOB_END;
    ev.finished = status != LUA_YIELD || !(j->parking || j->preempted);
    hook(p->rt->cfg.job_hook_ud, &ev);
  }
  if (status == LUA_YIELD && j->stopping) {  /* hard cancel, from the hook */
    job_epilogue_begin(w, j);
    stop_unwound(w, j);
    return;
  }
  if (status == LUA_YIELD && j->preempted) {  /* the rest in a later poll */
    pthread_mutex_lock(&w->mu);
    j->ready = true;
    push(&w->ready, &w->ready_tail, j);
    pthread_mutex_unlock(&w->mu);
    return;
  }
  if (status == LUA_YIELD && j->parking) {
    if (j->want_kind != WEFT_WAIT_OTHER) {
      pthread_mutex_lock(&p->mu);
      j->wait_kind = j->want_kind;
      j->wait_target = j->want_target;
      p->npoolwait++;
      detect_deadlock(p);
      pthread_mutex_unlock(&p->mu);
    }
    parked(w, j);
    return;
  }
  if (status == LUA_YIELD) {  /* coroutine.yield at the job's own level */
    lua_settop(j->co, 0);
    lua_pushliteral(j->co, "attempt to yield from a weft job "
                           "(coroutine.yield outside a coroutine of the job)");
    status = LUA_ERRRUN;
  }
  if (status != LUA_OK) {
    panicked_job(w, j, status);
  } else {
    weft_buf *b = NULL;
    lua_pushcfunction(L, encode_results_k);
    lua_pushlightuserdata(L, &b);
    lua_xmove(j->co, L, nres);
    if (lua_pcall(L, nres + 1, 0, 0) != LUA_OK)
      finish(w, j, OUT_FAILED, WEFT_FUT_ERROR, error_buf(L));
    else
      finish(w, j, OUT_COMPLETED, WEFT_FUT_OK, b);
  }
  /* j is gone; its coroutine goes with the next collection */
}

/* ---------------------------------------------------------------------- */
/* workers */

static int no_exit(lua_State *L) {
  return luaL_error(L, "os.exit is not allowed in a weft worker "
                       "(it would end the whole process); raise an error");
}

static int no_sethook(lua_State *L) {
  return luaL_error(L, "debug.sethook is not allowed in a weft worker "
                       "(weft's hard cancel and cooperative mode use the hook)");
}

/*
** load, loadfile, dofile and require in a worker take text chunks only:
** Lua does not check binary chunks, and a malformed one can crash the
** process.  The original
** function is upvalue 1; mode is argument `arg`.  (Functions a job carries
** are copied by the engine, which loads their bytecode itself.)
*/
static int text_only(lua_State *L) {
  int arg = (int)lua_tointeger(L, lua_upvalueindex(2));
  if (lua_gettop(L) < arg) lua_settop(L, arg);
  lua_pushliteral(L, "t");
  lua_replace(L, arg);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

static int text_dofile(lua_State *L) {
  const char *name = luaL_optstring(L, 1, NULL);
  lua_settop(L, 1);
  if (luaL_loadfilex(L, name, "t") != LUA_OK) return lua_error(L);
  lua_call(L, 0, LUA_MULTRET);
  return lua_gettop(L) - 1;
}

/* package.searchers[2] in a worker: Lua modules, from text only. */
static int text_searcher(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "searchpath");
  lua_pushvalue(L, 1);
  lua_getfield(L, -3, "path");
  lua_call(L, 2, 2);
  if (lua_isnil(L, -2)) return 1;  /* the files it tried */
  const char *file = lua_tostring(L, -2);
  if (luaL_loadfilex(L, file, "t") != LUA_OK)
    return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s",
                      name, file, lua_tostring(L, -1));
  lua_pushstring(L, file);
  return 2;
}

/* Wraps the global function name with text_only (mode at argument arg). */
static void wrap_text_only(lua_State *L, const char *name, int arg) {
  lua_getglobal(L, name);
  lua_pushinteger(L, arg);
  lua_pushcclosure(L, text_only, 2);
  lua_setglobal(L, name);
}

/*
** Warnings of a worker state (errors in __gc among them) go to the log,
** one line each, prefixed with the pool's name.  "@off" and "@on" work as
** in lua.c, but warnings start on.
*/
static void worker_warn(void *ud, const char *msg, int tocont) {
  worker *w = ud;
  if (w->warning_len == 0 && !tocont && msg[0] == '@') {
    if (strcmp(msg, "@off") == 0) w->warnings_off = true;
    if (strcmp(msg, "@on") == 0) w->warnings_off = false;
    return;
  }
  size_t room = sizeof w->warning - 1 - w->warning_len;
  size_t n = strlen(msg);
  if (n > room) n = room;
  memcpy(w->warning + w->warning_len, msg, n);
  w->warning_len += n;
  w->warning[w->warning_len] = '\0';
  if (tocont) return;
  if (!w->warnings_off)
    weft_log(w->pool->rt, "weft pool '%s': warning: %s", w->pool->name,
             w->warning);
  w->warning_len = 0;
}

/* Under lua_pcall, on the thread that makes the pool: 1 = the worker.  The
   standard libraries, the engine's guards and weft. */
static int build_k(lua_State *L) {
  worker *w = lua_touserdata(L, 1);
  weft_pool *p = w->pool;
  luaL_openlibs(L);
  lua_getglobal(L, "pcall");
  w->pcall_fn = lua_tocfunction(L, -1);
  lua_getglobal(L, "xpcall");
  w->xpcall_fn = lua_tocfunction(L, -1);
  lua_pop(L, 2);
  /* WEFT_GC_STRESS=1 (a test setting, make gc-stress): the collector at
     its most eager, so that every allocation may run a collection step */
  const char *stress = getenv("WEFT_GC_STRESS");
  if (stress != NULL && strcmp(stress, "1") == 0) lua_gc(L, LUA_GCINC, 1, 1000, 1);
  lua_getglobal(L, "os");
  lua_pushcfunction(L, no_exit);
  lua_setfield(L, -2, "exit");
  lua_getglobal(L, "debug");
  lua_pushcfunction(L, no_sethook);
  lua_setfield(L, -2, "sethook");
  wrap_text_only(L, "load", 3);
  wrap_text_only(L, "loadfile", 2);
  lua_pushcfunction(L, text_dofile);
  lua_setglobal(L, "dofile");
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "searchers");
  lua_pushcfunction(L, text_searcher);
  lua_rawseti(L, -2, 2);
  lua_pop(L, 2);
  lua_getglobal(L, "coroutine");
  lua_getfield(L, -1, "resume");
  lua_pushcclosure(L, co_resume, 1);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "resume");
  lua_pushcclosure(L, co_wrap, 1);
  lua_setfield(L, -2, "wrap");
  lua_pop(L, 1);
  lua_getglobal(L, "package");
  if (p->path != NULL) {
    lua_pushlstring(L, p->path, p->path_len);
    lua_setfield(L, -2, "path");
  }
  if (p->cpath != NULL) {
    lua_pushlstring(L, p->cpath, p->cpath_len);
    lua_setfield(L, -2, "cpath");
  }
  lua_settop(L, 1);
  lua_pushliteral(L, "(error)");
  lua_rawsetp(L, LUA_REGISTRYINDEX, &fallback_key[0]);
  lua_pushliteral(L, "");
  lua_rawsetp(L, LUA_REGISTRYINDEX, &fallback_key[1]);
  lua_pushlightuserdata(L, w);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &worker_key);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "weft");
  lua_call(L, 1, 0);
  return 0;
}

/* Under lua_pcall, on the worker's own thread: 1 = the worker.  The host's
   init_state, the pool's on_panic and its init. */
static int init_k(lua_State *L) {
  worker *w = lua_touserdata(L, 1);
  weft_pool *p = w->pool;
  weft_runtime *rt = p->rt;
  if (rt->cfg.init_state != NULL) {
    rt->cfg.init_state(L, rt->cfg.init_state_ud);
    lua_settop(L, 1);
  }
  if (p->on_panic != NULL) {
    weft_buf_decode(L, p->on_panic);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &on_panic_key);
  }
  if (p->init != NULL) {
    weft_buf_decode(L, p->init);
    if (lua_type(L, -1) == LUA_TSTRING) {  /* a module to require */
      lua_getglobal(L, "require");
      lua_insert(L, -2);
    }
    lua_pushinteger(L, w->index + 1);
    lua_call(L, lua_type(L, -3) == LUA_TFUNCTION ? 2 : 1, 0);
  }
  return 0;
}

/*
** A worker state's allocator: the runtime's, counted, and held to the
** pool's memory limit (Lua collects and tries once more before it raises
** a memory error).  The thread that makes the pool builds the state; then
** only the worker's own thread allocates in it (pthread_create orders the
** two).
*/
static void *worker_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  worker *w = ud;
  weft_runtime *rt = w->pool->rt;
  size_t old = ptr != NULL ? osize : 0;
  size_t limit = w->pool->memory_limit;
  if (nsize > old && limit > 0 && w->mem - old + nsize > limit) return NULL;
  void *q = rt->alloc(rt->alloc_ud, ptr, osize, nsize);
  if (q != NULL || nsize == 0) {
    w->mem = w->mem - old + nsize;
    atomic_store_explicit(&w->mem_seen, w->mem, memory_order_relaxed);
  }
  return q;
}

/* Runs fn(w) in w's state under lua_pcall; on an error, closes the state
   and writes the message. */
static bool setup(worker *w, lua_CFunction fn, char *err, size_t errlen) {
  lua_State *L = w->L;
  lua_pushcfunction(L, fn);
  lua_pushlightuserdata(L, w);
  if (lua_pcall(L, 1, 0, 0) == LUA_OK) return true;
  const char *m = lua_tostring(L, -1);
  snprintf(err, errlen, "%s", m ? m : "(error)");
  lua_close(L);
  w->L = NULL;
  return false;
}

/*
** Makes w's state with the standard libraries and weft, on the thread
** that makes the pool (whose stack and malloc arena are in use already):
** an idle worker thread then costs no parsing stack and no arena of its
** own (RSS per idle worker 74 -> 52 KB).
*/
static bool worker_build(worker *w, char *err, size_t errlen) {
  weft_runtime *rt = w->pool->rt;
  lua_State *L = lua_newstate(worker_alloc, w);
  if (L == NULL) {
    snprintf(err, errlen, "not enough memory");
    return false;
  }
  lua_setwarnf(L, worker_warn, w);
  if (weft_runtime_open(rt, L) != 0) {
    snprintf(err, errlen, "not enough memory");
    lua_close(L);
    return false;
  }
  w->L = L;
  return setup(w, build_k, err, errlen);
}

/* The rest, on the worker's own thread (after thread_start). */
static bool worker_init(worker *w, char *err, size_t errlen) {
  return setup(w, init_k, err, errlen);
}

/*
** No creep from job to job: the collector takes a step every GC_EVERY
** jobs and when the worker runs out of work (a step per job cost more
** than a trivial job: it marked the whole state again and again).
*/
#define GC_EVERY 16

static void gc_step(worker *w) {
  w->unswept = 0;
  lua_gc(w->L, LUA_GCSTEP, 0);
}

/*
** Runs one job slice: a woken job, else a new one (unless it is left to
** an idle worker).  Returns false when there was none: then p->mu is held
** (the caller decides whether to sleep or stop).
*/
static bool step(worker *w) {
  weft_pool *p = w->pool;
  pthread_mutex_lock(&w->mu);
  weft_job *j = pop(&w->ready, &w->ready_tail);
  if (j != NULL) j->ready = false;
  pthread_mutex_unlock(&w->mu);
  if (j != NULL) {
    run(w, j, false);
    return true;
  }
  pthread_mutex_lock(&p->mu);
  j = p->newq != NULL && defer_new_job(p, w) ? NULL
                                             : pop(&p->newq, &p->newq_tail);
  if (j == NULL) return false;
  j->started = true;
  j->w = w;  /* under p->mu: weft_pool_kill reads it for active jobs */
  j->act_prev = NULL;
  j->act_next = p->active;
  if (p->active != NULL) p->active->act_prev = j;
  p->active = j;
  p->nactive++;
  pthread_mutex_unlock(&p->mu);
  run(w, j, true);
  /* a job's collectgarbage("stop") is not left to the next ones */
  if (!lua_gc(w->L, LUA_GCISRUNNING)) lua_gc(w->L, LUA_GCRESTART);
  if (++w->unswept >= GC_EVERY) gc_step(w);
  return true;
}

static void *worker_main(void *arg) {
  worker *w = arg;
  weft_pool *p = w->pool;
  weft_config *cfg = &p->rt->cfg;
  tls_worker = w;
  if (p->hard_cancel) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, CANCEL_SIGNAL);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
  }
  if (cfg->thread_start != NULL)
    cfg->thread_start(cfg->thread_ud, p->name, w->index + 1);
  char err[200];
  bool ok = worker_init(w, err, sizeof err);
  pthread_mutex_lock(&p->mu);
  if (!ok && p->start_err[0] == '\0')
    snprintf(p->start_err, sizeof p->start_err, "worker %d: %s", w->index + 1,
             err);
  p->nstarted++;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  while (ok) {
    if (step(w)) continue;  /* else p->mu is held */
    if (p->stopping) {
      pthread_mutex_unlock(&p->mu);
      break;
    }
    if (w->unswept > 0) {  /* out of work: sweep first, then look again */
      pthread_mutex_unlock(&p->mu);
      gc_step(w);
      continue;
    }
    if (!w->idle) {
      w->idle = true;
      w->idle_next = p->idle;
      p->idle = w;
    }
    pthread_mutex_lock(&w->mu);
    pthread_mutex_unlock(&p->mu);
    spin(w);
    while (w->ready == NULL && !w->kicked) pthread_cond_wait(&w->cv, &w->mu);
    w->kicked = false;
    pthread_mutex_unlock(&w->mu);
  }
  if (ok) lua_close(w->L);
  w->L = NULL;
  if (cfg->thread_stop != NULL)
    cfg->thread_stop(cfg->thread_ud, p->name, w->index + 1);
  return NULL;
}

/* ---------------------------------------------------------------------- */
/* cooperative pools: one worker without a thread, run by weft_pool_poll */

static bool preempt_claim(weft_timer_entry *e) {
  (void)e;
  return true;  /* the entry lives as long as its pool */
}

/* The poll's deadline: suspend the running job (as hard cancel does). */
static void preempt_fire(weft_timer_entry *e) {
  worker *w = (worker *)((char *)e - offsetof(worker, preempt_at));
  atomic_store(&w->preempt, true);
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_load(&w->current) != NULL) pthread_kill(w->thread, CANCEL_SIGNAL);
}

bool weft_pool_cooperative(weft_pool *p) { return p->coop; }

bool weft_pool_is_host_thread(weft_pool *p) {
  return p->coop && pthread_equal(p->host, pthread_self());
}

int weft_pool_poll(weft_pool *p, double deadline) {
  if (!p->coop || atomic_exchange(&p->polling, true)) return 0;
  worker *w = &p->workers[0];
  worker *outer = tls_worker;
  w->thread = pthread_self();
  tls_worker = w;
  sigset_t set, old;
  sigemptyset(&set);
  sigaddset(&set, CANCEL_SIGNAL);
  pthread_sigmask(SIG_UNBLOCK, &set, &old);
  atomic_store(&w->preempt, false);
  w->preempt_at.claim = preempt_claim;
  w->preempt_at.fire = preempt_fire;
  /* No timer (out of memory, or the runtime stopped it): no job runs, as
     nothing could suspend it; unless close killed them all: with hard
     cancel each stops at its next instruction anyway (as the timer would
     make it), and one stuck in C would be stuck either way. */
  bool timed = weft_timer_add(&p->rt->timer, &w->preempt_at, deadline) == 0;
  bool may_run = timed || (p->hard_cancel && atomic_load(&p->killed));
  int n = 0;
  while (may_run && weft_now() < deadline) {
    if (!step(w)) {
      pthread_mutex_unlock(&p->mu);
      break;
    }
    n++;
  }
  if (timed) weft_timer_remove(&p->rt->timer, &w->preempt_at);
  atomic_store(&w->preempt, false);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  tls_worker = outer;
  atomic_store(&p->polling, false);
  return n;
}

/* ---------------------------------------------------------------------- */
/* pools */

static void pool_destroy(weft_object *o);

const weft_class weft_pool_class = {"weft.pool", pool_destroy, NULL};

/* A copy of s (NULL stays NULL; *failed set when memory ran out). */
static char *dup_string(weft_runtime *rt, const char *s, size_t *len,
                        bool *failed) {
  if (s == NULL) return NULL;
  *len = strlen(s);
  char *d = weft_alloc(rt, *len + 1);
  if (d != NULL)
    memcpy(d, s, *len + 1);
  else
    *failed = true;
  return d;
}

static void pool_free(weft_pool *p) {
  weft_runtime *rt = p->rt;
  pthread_mutex_lock(&rt->mu);
  if (p->rt_prev != NULL)
    p->rt_prev->rt_next = p->rt_next;
  else if (rt->pools == p)
    rt->pools = p->rt_next;
  if (p->rt_next != NULL) p->rt_next->rt_prev = p->rt_prev;
  pthread_mutex_unlock(&rt->mu);
  for (int i = 0; i < p->nworkers; i++) {
    pthread_cond_destroy(&p->workers[i].cv);
    pthread_mutex_destroy(&p->workers[i].mu);
  }
  weft_free(rt, p->workers, (size_t)p->nworkers * sizeof *p->workers);
  if (p->path != NULL) weft_free(rt, p->path, p->path_len + 1);
  if (p->cpath != NULL) weft_free(rt, p->cpath, p->cpath_len + 1);
  weft_buf_release(p->init);
  weft_buf_release(p->on_panic);
  pthread_cond_destroy(&p->cv);
  pthread_mutex_destroy(&p->mu);
  weft_free(rt, p->mem, sizeof *p + WEFT_LINE);
  weft_runtime_release(rt);
}

/* Closes the states built for workers whose thread never ran (a worker
   thread closes its own state, and clears w->L, as it ends). */
static void close_unstarted(weft_pool *p) {
  for (int i = 0; i < p->nworkers; i++)
    if (p->workers[i].L != NULL) {
      lua_close(p->workers[i].L);
      p->workers[i].L = NULL;
    }
}

weft_pool *weft_pool_new(weft_runtime *rt, const weft_pool_config *cfg,
                         char *err, size_t errlen) {
  char *mem = weft_alloc(rt, sizeof(weft_pool) + WEFT_LINE);
  if (mem == NULL) {
    weft_buf_release(cfg->init);
    weft_buf_release(cfg->on_panic);
    snprintf(err, errlen, "not enough memory");
    return NULL;
  }
  weft_pool *p = weft_line_align(mem);
  memset(p, 0, sizeof *p);
  p->mem = mem;
  weft_object_init(&p->obj, &weft_pool_class);
  weft_runtime_retain(rt);
  p->rt = rt;
  snprintf(p->name, sizeof p->name, "%s", cfg->name ? cfg->name : "pool");
  p->limit = cfg->limit;
  p->queue = cfg->queue;
  p->hard_cancel = cfg->hard_cancel && install_cancel_signal();
  p->init = cfg->init;
  p->on_panic = cfg->on_panic;
  atomic_init(&p->running, 0);
  atomic_init(&p->parked, 0);
  atomic_init(&p->resolving, 0);
  atomic_init(&p->idle_watch, false);
  /* Adaptive, p->mu and the workers' mu: submit and the workers hold them
     for a few instructions each, several times per job; a short spin there
     is cheaper than a futex sleep and wake-up. */
  pthread_mutexattr_t ma;
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
  pthread_mutex_init(&p->mu, &ma);
  pthread_cond_init(&p->cv, NULL);
  p->coop = cfg->cooperative;
  p->memory_limit = cfg->memory_limit;
  atomic_init(&p->polling, false);
  atomic_init(&p->killed, false);
  p->host = pthread_self();
  pthread_mutex_lock(&rt->mu);  /* listed for weft_runtime_close */
  p->rt_next = rt->pools;
  if (rt->pools != NULL) rt->pools->rt_prev = p;
  rt->pools = p;
  pthread_mutex_unlock(&rt->mu);
  bool nomem = false;
  p->path = dup_string(rt, cfg->path, &p->path_len, &nomem);
  p->cpath = dup_string(rt, cfg->cpath, &p->cpath_len, &nomem);
  int nworkers = p->coop ? 1 : cfg->workers;
  p->workers = weft_alloc(rt, (size_t)nworkers * sizeof *p->workers);
  if (nomem || p->workers == NULL) {
    if (p->workers != NULL)  /* pool_free frees p->nworkers of them: none */
      weft_free(rt, p->workers, (size_t)nworkers * sizeof *p->workers);
    p->workers = NULL;
    pthread_mutexattr_destroy(&ma);
    pool_free(p);
    snprintf(err, errlen, "not enough memory");
    return NULL;
  }
  memset(p->workers, 0, (size_t)nworkers * sizeof *p->workers);
  p->nworkers = nworkers;
  int started = 0;
  for (int i = 0; i < p->nworkers; i++) {
    worker *w = &p->workers[i];
    w->pool = p;
    w->index = i;
    atomic_init(&w->mem_seen, 0);
    atomic_init(&w->preempt, false);
    atomic_init(&w->inner, NULL);
    atomic_init(&w->poked, false);
    w->preempt_at.index = SIZE_MAX;
    pthread_mutex_init(&w->mu, &ma);
    pthread_cond_init(&w->cv, NULL);
  }
  pthread_mutexattr_destroy(&ma);
  if (p->coop) {  /* its state is made here; jobs run in weft_pool_poll */
    worker *w = &p->workers[0];
    w->thread = p->host;
    if (!worker_build(w, p->start_err, sizeof p->start_err) ||
        !worker_init(w, p->start_err, sizeof p->start_err)) {
      snprintf(err, errlen, "%s", p->start_err);
      pool_free(p);
      return NULL;
    }
    return p;
  }
  for (int i = 0; i < p->nworkers; i++) {  /* every state, then threads */
    char berr[200];
    if (!worker_build(&p->workers[i], berr, sizeof berr)) {
      snprintf(err, errlen, "worker %d: %s", i + 1, berr);
      close_unstarted(p);
      pool_free(p);
      return NULL;
    }
  }
  /* workers never take signals meant for the host's threads */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  for (int i = 0; i < p->nworkers; i++) {
    worker *w = &p->workers[i];
    int e = pthread_create(&w->thread, NULL, worker_main, w);
    if (e != 0) {
      snprintf(p->start_err, sizeof p->start_err,
               "cannot start worker thread: %s", strerror(e));
      break;
    }
    w->started = true;
    started++;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_mutex_lock(&p->mu);
  while (p->nstarted < started) pthread_cond_wait(&p->cv, &p->mu);
  bool failed = p->start_err[0] != '\0';
  pthread_mutex_unlock(&p->mu);
  if (failed) {
    snprintf(err, errlen, "%s", p->start_err);
    weft_pool_shutdown(p);
    weft_pool_join(p);
    close_unstarted(p);
    pool_free(p);
    return NULL;
  }
  return p;
}

int weft_pool_try_submit(weft_pool *p, weft_ctx *ctx, weft_buf *call,
                         weft_future **out) {
  weft_runtime *rt = p->rt;
  weft_job *j = weft_alloc(rt, sizeof *j);
  weft_future *f = weft_future_new(rt);
  if (j == NULL || f == NULL) {
    weft_free(rt, j, j ? sizeof *j : 0);
    if (f != NULL) weft_future_release(f);
    return WEFT_SUBMIT_NOMEM;
  }
  memset(j, 0, sizeof *j);
  atomic_init(&j->killed, false);
  j->co_ref = LUA_NOREF;
  j->pool = p;
  j->call = call;
  j->ctx = ctx;
  j->future = f;
  j->submitted_at = weft_now();
  weft_future_bind(f, p, j);
  /* The job's references, taken before it is visible to the workers and
     outside p->mu (the context's count is a cache line other threads
     write: the lock is not held while it is fetched). */
  weft_ctx_retain(ctx);
  weft_future_retain(f);  /* one for the job, one for the caller */
  int r = WEFT_SUBMIT_OK;
  worker *idle = NULL;
  pthread_mutex_lock(&p->mu);
  j->id = ++p->next_id;
  if (p->shutdown) {
    r = WEFT_SUBMIT_CLOSED;
  } else if (p->inflight < p->limit) {
    p->inflight++;
    push(&p->newq, &p->newq_tail, j);
    idle = claim_idle(p);
  } else if (p->nqueued < p->queue) {
    p->nqueued++;
    j->queued = true;
    push(&p->waitq, &p->waitq_tail, j);
  } else {
    r = WEFT_SUBMIT_FULL;
  }
  if (r == WEFT_SUBMIT_OK) p->submitted++;
  pthread_mutex_unlock(&p->mu);
  /* Kicked with p->mu released: its wake-up may be a system call, and
     the workers take p->mu at every job. */
  if (idle != NULL) kick(idle);
  if (r != WEFT_SUBMIT_OK) {
    weft_ctx_release(ctx);
    weft_future_release(f);  /* the job's reference */
    weft_future_release(f);  /* the caller's */
    weft_free(rt, j, sizeof *j);
    return r;
  }
  if (p->coop) weft_runtime_wakeup(rt);  /* a poll has work */
  *out = f;
  return r;
}

bool weft_pool_add_admit_waiter(weft_pool *p, weft_waiter *w) {
  pthread_mutex_lock(&p->mu);
  bool full = !p->shutdown && p->inflight >= p->limit && p->nqueued >= p->queue;
  if (full) weft_waiters_add(&p->admit_waiters, w);
  pthread_mutex_unlock(&p->mu);
  return full;
}

void weft_pool_remove_admit_waiter(weft_pool *p, weft_waiter *w) {
  pthread_mutex_lock(&p->mu);
  weft_waiters_remove(&p->admit_waiters, w);
  pthread_mutex_unlock(&p->mu);
}

bool weft_pool_add_idle_waiter(weft_pool *p, weft_waiter *w) {
  pthread_mutex_lock(&p->mu);
  atomic_store(&p->idle_watch, true);  /* before resolving is read */
  bool busy = !pool_idle(p);
  if (busy) weft_waiters_add(&p->idle_waiters, w);
  atomic_store(&p->idle_watch, p->idle_waiters != NULL);
  pthread_mutex_unlock(&p->mu);
  return busy;
}

void weft_pool_remove_idle_waiter(weft_pool *p, weft_waiter *w) {
  pthread_mutex_lock(&p->mu);
  weft_waiters_remove(&p->idle_waiters, w);
  atomic_store(&p->idle_watch, p->idle_waiters != NULL);
  pthread_mutex_unlock(&p->mu);
}

void weft_pool_shutdown(weft_pool *p) {
  pthread_mutex_lock(&p->mu);
  p->shutdown = true;
  weft_waiters_wake_all(&p->admit_waiters);
  pthread_mutex_unlock(&p->mu);
}

void weft_pool_join(weft_pool *p) {
  pthread_mutex_lock(&p->mu);
  if (p->joining) {  /* another thread joins: wait for it */
    while (!p->joined) pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    return;
  }
  p->joining = true;
  p->stopping = true;
  while (p->idle != NULL) kick(claim_idle(p));
  pthread_mutex_unlock(&p->mu);
  if (p->coop && p->workers[0].L != NULL) {  /* no thread: close it here */
    lua_close(p->workers[0].L);
    p->workers[0].L = NULL;
  }
  for (int i = 0; i < p->nworkers; i++) {
    worker *w = &p->workers[i];
    if (!w->started) continue;
    kick(w);
    pthread_join(w->thread, NULL);
    w->started = false;
  }
  pthread_mutex_lock(&p->mu);
  p->joined = true;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

bool weft_pool_is_worker(weft_pool *p) {
  for (int i = 0; i < p->nworkers; i++)
    if (p->workers[i].started && pthread_equal(p->workers[i].thread, pthread_self()))
      return true;
  return false;
}

const char *weft_pool_name(weft_pool *p) { return p->name; }

void weft_pool_get_stats(weft_pool *p, weft_pool_stats *s) {
  pthread_mutex_lock(&p->mu);
  s->workers = p->nworkers;
  s->limit = p->limit;
  s->queue = p->queue;
  s->inflight = p->inflight;
  s->queued = p->nqueued;
  s->admitted = p->inflight - p->nactive;
  s->submitted = p->submitted;
  s->completed = p->completed;
  s->failed = p->failed;
  s->panicked = p->panicked;
  s->canceled = p->canceled;
  s->memory_errors = p->memory_errors;
  s->latency[0] = latency_quantile(p, 0.50);
  s->latency[1] = latency_quantile(p, 0.90);
  s->latency[2] = latency_quantile(p, 0.99);
  s->latency[3] = p->latency_max;
  pthread_mutex_unlock(&p->mu);
  s->running = atomic_load(&p->running);
  s->parked = atomic_load(&p->parked);
}

size_t weft_pool_memory(weft_pool *p, size_t *out, int n) {
  size_t total = 0;
  for (int i = 0; i < n; i++) out[i] = 0;
  for (int i = 0; i < p->nworkers; i++) {
    size_t m = atomic_load_explicit(&p->workers[i].mem_seen,
                                    memory_order_relaxed);
    if (i < n) out[i] = m;
    total += m;
  }
  return total;
}

void weft_pools_stop_all(weft_runtime *rt) {
  pthread_mutex_lock(&rt->mu);
  for (weft_pool *p = rt->pools; p != NULL; p = p->rt_next) {
    weft_pool_shutdown(p);
    weft_pool_kill(p);
  }
  pthread_mutex_unlock(&rt->mu);
}

static bool pool_busy(weft_pool *p) {
  pthread_mutex_lock(&p->mu);
  bool busy = !pool_idle(p);
  pthread_mutex_unlock(&p->mu);
  return busy;
}

/* Allocates nothing, so close still waits when memory ran out. */
bool weft_pool_wait_idle(weft_pool *p, double deadline) {
  weft_park park;
  weft_park_sync sync;
  if (weft_park_init_thread(&park, &sync) != 0) {  /* no condvar: poll */
    while (pool_busy(p) && weft_now() < deadline) {
      struct timespec ts = {0, 1000000L};
      nanosleep(&ts, NULL);
    }
    return !pool_busy(p);
  }
  weft_park_waiter pw;
  weft_park_waiter_init(&pw, &park);
  bool idle = false;
  while (!idle) {
    if (!weft_pool_add_idle_waiter(p, &pw.w)) {
      idle = true;
      break;
    }
    bool woken = weft_park_block_until(&park, deadline);
    weft_pool_remove_idle_waiter(p, &pw.w);
    if (!woken) {
      idle = !pool_busy(p);
      break;
    }
  }
  weft_park_destroy(&park);
  return idle;
}

int weft_pool_finish(weft_pool *p, double deadline) {
  bool idle;
  if (p->coop) {  /* run what is left (interrupted) on this thread */
    while ((idle = !pool_busy(p)) == false && weft_now() < deadline)
      if (weft_pool_poll(p, deadline) == 0) sched_yield();
  } else {
    idle = weft_pool_wait_idle(p, deadline);
  }
  if (idle) {
    weft_pool_join(p);
    return 0;
  }
  int stuck = 0;
  for (int i = 0; i < p->nworkers; i++) {
    if (atomic_load(&p->workers[i].current) == NULL && !p->coop) continue;
    stuck++;
    weft_log(p->rt, "weft pool '%s': worker %d did not stop in time (a job "
             "stuck in C code?); it is left running", p->name, i + 1);
  }
  if (stuck == 0) {
    stuck = 1;
    weft_log(p->rt, "weft pool '%s': jobs still running at the timeout; "
             "the pool is left running", p->name);
  }
  return stuck;
}

static void pool_destroy(weft_object *o) {
  weft_pool *p = (weft_pool *)o;
  if (!p->joined) {  /* never closed: close it now, from this thread */
    if (weft_pool_is_worker(p)) {
      weft_log(p->rt, "weft pool '%s': dropped by its own job; leaked", p->name);
      return;
    }
    weft_pool_shutdown(p);
    if (p->coop)
      weft_pool_finish(p, INFINITY);  /* runs its jobs here; joins */
    else
      weft_pool_wait_idle(p, INFINITY);
    weft_pool_join(p);
  }
  pool_free(p);
}
