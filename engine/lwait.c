/*
** lwait.c: the Lua side of blocking calls (binding.h, "Blocking calls"):
** a block is a userdata holding the park of one waiting call and its
** registrations with the sources it waits on.
**
** Owns: the block, and its timeout: an entry of the runtime's timer
** embedded in the block (no context to allocate).  Locking: none here;
** registration takes each source's lock, waking takes leaf locks
** (wait.h).  Nothing registered survives a block: reset runs before every
** check, and __gc runs it when an error unwinds past the call.  The
** timeout entry wakes the park only while the block is armed (tstate, a
** compare-and-swap under the timer's lock: claim); reset disarms it and
** waits out a wake in progress, so the park (and its job) outlive it; __gc
** unqueues the entry before the block's memory goes.
*/
#include <assert.h>
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <lauxlib.h>

#include "binding.h"
#include "context.h"
#include "future.h"
#include "pool.h"
#include "runtime.h"

#define BLOCK_MT "weft.block"
#define MAX_SOURCES 2  /* a context and one other source */

enum { SRC_CTX, SRC_FUTURE, SRC_ADMIT, SRC_IDLE };
enum { T_OFF, T_ARMED, T_FIRING, T_FIRED };  /* a timeout's state */

struct weft_block {
  weft_park park;  /* a thread's park: its sync after the extra space */
  atomic_int tstate;         /* T_*: whether the timeout may wake now */
  int n;
  int xkind;     /* what the extra registrations wait for (deadlocks) */
  bool park_ready;
  weft_runtime *rt;          /* set (retained) while there is a timeout */
  weft_timer_entry timeout;  /* queued at the deadline, while rt is set */
  double deadline;
  void (*hook)(void *extra, bool final);  /* extra registrations */
  void *extra;
  void *xtarget;
  const char *hopeless;  /* a thread wait that could never end */
  struct {
    int kind;
    void *obj;
    weft_park_waiter pw;
  } src[MAX_SOURCES];
};

/* The timeout may no longer wake the park; a wake in progress is over
   when this returns. */
static void disarm(weft_block *b) {
  if (b->rt == NULL) return;  /* no timeout: nothing can wake through it */
  int st = T_ARMED;
  if (atomic_compare_exchange_strong(&b->tstate, &st, T_OFF)) return;
  while (st == T_FIRING) {  /* on the timer thread, a few instructions */
    sched_yield();
    st = atomic_load(&b->tstate);
  }
  atomic_store(&b->tstate, T_OFF);
}

void weft_block_reset(weft_block *b) {
  disarm(b);
  if (b->hook != NULL) b->hook(b->extra, false);
  for (int i = 0; i < b->n; i++) {
    weft_waiter *w = &b->src[i].pw.w;
    switch (b->src[i].kind) {
      case SRC_CTX: weft_ctx_remove_waiter(b->src[i].obj, w); break;
      case SRC_FUTURE: weft_future_remove_waiter(b->src[i].obj, w); break;
      case SRC_ADMIT: weft_pool_remove_admit_waiter(b->src[i].obj, w); break;
      default: weft_pool_remove_idle_waiter(b->src[i].obj, w);
    }
  }
  b->n = 0;
  if (b->park.job == NULL) b->park.woken = false;
}

static weft_block *of_entry(weft_timer_entry *e) {
  return (weft_block *)((char *)e - offsetof(weft_block, timeout));
}

/* Under the timer's lock: the due timeout wakes the park if armed. */
static bool timeout_claim(weft_timer_entry *e) {
  int st = T_ARMED;
  return atomic_compare_exchange_strong(&of_entry(e)->tstate, &st, T_FIRING);
}

static void timeout_fire(weft_timer_entry *e) {
  weft_block *b = of_entry(e);
  weft_park_wake(&b->park);
  atomic_store(&b->tstate, T_FIRED);
}

/* Unqueues the timeout (disarmed already) and lets the runtime go. */
static void drop_timeout(weft_block *b) {
  if (b->rt == NULL) return;
  weft_timer_remove(&b->rt->timer, &b->timeout);
  weft_runtime_release(b->rt);
  b->rt = NULL;
}

static int block_gc(lua_State *L) {
  weft_block *b = lua_touserdata(L, 1);
  if (!b->park_ready) return 0;
  weft_block_reset(b);
  if (b->hook != NULL) b->hook(b->extra, true);
  drop_timeout(b);
  weft_park_destroy(&b->park);
  b->park_ready = false;
  return 0;
}

/* The extra space, then a thread's park sync, each start at the first
   maximally aligned offset past what comes before. */
#define ALIGN _Alignof(max_align_t)
#define ALIGNED(n) (((n) + ALIGN - 1) / ALIGN * ALIGN)
#define EXTRA_OFFSET ALIGNED(sizeof(weft_block))

weft_block *weft_block_new_ex(lua_State *L, size_t extra,
                              void (*hook)(void *extra, bool final)) {
  weft_job *job = weft_job_of(L);
  size_t sync_at = ALIGNED(EXTRA_OFFSET + extra);
  size_t size = job != NULL ? sync_at : sync_at + sizeof(weft_park_sync);
  weft_block *b = lua_newuserdatauv(L, size, 0);
  memset(b, 0, size);
  b->timeout.index = SIZE_MAX;  /* not queued */
  if (extra > 0) b->extra = (char *)b + EXTRA_OFFSET;
  if (luaL_newmetatable(L, BLOCK_MT)) {
    lua_pushcfunction(L, block_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  if (job != NULL) {
    weft_park_init_job(&b->park, job);
  } else {
    int e = weft_park_init_thread(&b->park,
                                  (weft_park_sync *)((char *)b + sync_at));
    if (e != 0) luaL_error(L, "weft: cannot wait: %s", strerror(e));
  }
  b->park_ready = true;
  b->hook = hook;  /* only once the park is ready: the hook may wake it */
  return b;
}

weft_block *weft_block_new(lua_State *L) {
  return weft_block_new_ex(L, 0, NULL);
}

void *weft_block_extra(weft_block *b) { return b->extra; }

void weft_block_set_wait(weft_block *b, int kind, void *target) {
  b->xkind = kind;
  b->xtarget = target;
}

weft_park *weft_block_park(weft_block *b) { return &b->park; }

void weft_block_set_timeout(lua_State *L, weft_block *b, double seconds) {
  if ((isinf(seconds) && seconds > 0) || b->rt != NULL) return;
  weft_runtime *rt = weft_runtime_of(L);
  b->deadline = weft_now() + (seconds > 0 ? seconds : 0);  /* NaN: now */
  b->timeout.claim = timeout_claim;
  b->timeout.fire = timeout_fire;
  atomic_store(&b->tstate, T_OFF);
  int e = weft_timer_add(&rt->timer, &b->timeout, b->deadline);
  if (e != 0)
    luaL_error(L, "weft: cannot arm a timeout: %s", strerror(e));
  weft_runtime_retain(rt);
  b->rt = rt;
}

void weft_block_rearm(lua_State *L, weft_block *b, double seconds) {
  disarm(b);
  drop_timeout(b);
  weft_block_set_timeout(L, b, seconds);
}

static weft_park_waiter *add(weft_block *b, int kind, void *obj) {
  assert(b->n < MAX_SOURCES);
  int i = b->n++;
  b->src[i].kind = kind;
  b->src[i].obj = obj;
  weft_park_waiter_init(&b->src[i].pw, &b->park);
  return &b->src[i].pw;
}

/* Registers with the result of adding: keeps it only when it was added. */
#define REGISTER(b, kind, obj, addfn)                    \
  do {                                                   \
    weft_park_waiter *pw_ = add(b, kind, obj);           \
    if (!addfn(obj, &pw_->w)) {                          \
      b->n--;                                            \
      return false;                                      \
    }                                                    \
    return true;                                         \
  } while (0)

bool weft_block_on_timeout(weft_block *b) {
  if (b->rt == NULL) return true;
  if (weft_now() >= b->deadline) return false;
  atomic_store(&b->tstate, T_ARMED);
  /* due meanwhile: its claim may have come before the store and dropped
     it (the timer's clock is ours, so now says so too) */
  if (weft_now() >= b->deadline) {
    disarm(b);
    return false;
  }
  return true;
}

bool weft_block_on_ctx(weft_block *b, weft_ctx *c) {
  REGISTER(b, SRC_CTX, c, weft_ctx_add_waiter);
}

bool weft_block_on_future(weft_block *b, weft_future *f) {
  REGISTER(b, SRC_FUTURE, f, weft_future_add_waiter);
}

bool weft_block_on_admit(weft_block *b, weft_pool *p) {
  REGISTER(b, SRC_ADMIT, p, weft_pool_add_admit_waiter);
}

bool weft_block_on_idle(weft_block *b, weft_pool *p) {
  REGISTER(b, SRC_IDLE, p, weft_pool_add_idle_waiter);
}

const char *weft_block_deadlock(weft_block *b) {
  if (b->park.job != NULL) return weft_job_deadlock(b->park.job);
  const char *msg = b->hopeless;
  b->hopeless = NULL;
  return msg;
}

/* Whether source i needs the work of a cooperative pool that this very
   thread runs (then a thread wait on it could never end). */
static bool needs_own_poll(weft_block *b, int i) {
  weft_pool *p = NULL;
  switch (b->src[i].kind) {
    case SRC_FUTURE: p = weft_future_pool(b->src[i].obj); break;
    case SRC_ADMIT: case SRC_IDLE: p = b->src[i].obj; break;
    default: break;
  }
  return p != NULL && weft_pool_is_host_thread(p);
}

const char *weft_block_canceled(weft_block *b) {
  if (b->park.job == NULL) return NULL;
  int err = weft_job_canceled(b->park.job);
  if (err == WEFT_LIVE) return NULL;
  return err == WEFT_KILLED ? WEFT_KILLED_MSG : weft_ctx_errmsg(err);
}

void weft_block_wait(lua_State *L, weft_block *b, lua_KContext kctx,
                     lua_KFunction k) {
  if (b->park.job != NULL) {
    const char *msg = weft_block_canceled(b);
    if (msg != NULL) {  /* hard cancel reaches parked jobs too */
      weft_block_reset(b);
      lua_pushstring(L, msg);  /* exactly the context's error */
      lua_error(L);
    }
    int kind = b->xkind;
    void *target = b->xtarget;
    for (int i = 0; i < b->n; i++)
      if (b->src[i].kind == SRC_ADMIT || b->src[i].kind == SRC_FUTURE) {
        kind = b->src[i].kind == SRC_ADMIT ? WEFT_WAIT_ADMIT : WEFT_WAIT_FUTURE;
        target = b->src[i].obj;
      }
    weft_job_park(L, kctx, k, kind, target);  /* yields: never returns */
    return;
  }
  for (int i = 0; i < b->n; i++)
    if (needs_own_poll(b, i)) {
      b->hopeless = WEFT_DEADLOCK_MSG ": this thread runs the cooperative "
                    "pool it would wait for (its jobs run only in weft.poll); "
                    "use future:on_done, or poll";
      return;  /* the caller's loop resets and reports it */
    }
  weft_park_block(&b->park);
}
