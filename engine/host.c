/*
** host.c: work delivered on the host thread (host.h): future:on_done,
** weft.on_host (weft._host_call), weft_submit, weft_runtime_poll and
** weft.poll.
**
** Owns: the inbox of each state that registered on_done callbacks (its
** binding points to it) and its nodes; the runtime's queue of host
** requests (rt->reqs).  The callbacks themselves live in the registry of
** the state that registered them, and run only in that state's poll.
**
** Locking: box->mu guards an inbox's lists; it is a leaf, taken by a
** node's wake-up under the future's lock.  rt->mu guards the request
** queue and the closing flag; nothing else is taken under it here.  No
** Lua call runs with either held.  The host's wakeup hook is called with
** no lock of this file held (possibly under a future's lock).
*/
#include "host.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>

#include <lauxlib.h>

#include "binding.h"
#include "context.h"
#include "future.h"
#include "pool.h"
#include "runtime.h"

static const char callbacks_key = 0;  /* registry: fn of each node, by ref */

/* ---------------------------------------------------------------------- */
/* inboxes: on_done callbacks waiting for their futures, then for a poll */

typedef struct inbox inbox;

typedef struct done_node {
  weft_waiter w;             /* on the future while pending */
  inbox *box;
  weft_future *f;            /* retained */
  int ref;                   /* the callback, in the callbacks table */
  struct done_node *prev, *next;  /* box->mu: pending list, or ready queue */
} done_node;

struct inbox {
  pthread_mutex_t mu;
  weft_runtime *rt;
  done_node *pending;              /* waiting for their futures */
  done_node *ready, *ready_tail;   /* resolved, FIFO */
};

static void unlink_pending(inbox *box, done_node *n) {
  if (n->prev != NULL)
    n->prev->next = n->next;
  else
    box->pending = n->next;
  if (n->next != NULL) n->next->prev = n->prev;
  n->prev = n->next = NULL;
}

/* Moves n to the ready queue; box->mu held. */
static void make_ready(inbox *box, done_node *n) {
  unlink_pending(box, n);
  if (box->ready_tail != NULL)
    box->ready_tail->next = n;
  else
    box->ready = n;
  box->ready_tail = n;
  atomic_fetch_add(&box->rt->pending, 1);
}

/* The future resolved (under its lock). */
static void done_wake(weft_waiter *w) {
  done_node *n = (done_node *)w;
  inbox *box = n->box;
  pthread_mutex_lock(&box->mu);
  make_ready(box, n);
  pthread_mutex_unlock(&box->mu);
  weft_runtime_wakeup(box->rt);
}

static done_node *pop_ready(inbox *box) {
  pthread_mutex_lock(&box->mu);
  done_node *n = box->ready;
  if (n != NULL) {
    box->ready = n->next;
    if (box->ready == NULL) box->ready_tail = NULL;
    atomic_fetch_sub(&box->rt->pending, 1);
  }
  pthread_mutex_unlock(&box->mu);
  return n;
}

static void node_free(weft_runtime *rt, done_node *n) {
  weft_future_release(n->f);
  weft_free(rt, n, sizeof *n);
}

void weft_inbox_free(weft_runtime *rt, void *p) {
  inbox *box = p;
  long dropped = 0;
  for (;;) {  /* detach each pending node from its future first */
    pthread_mutex_lock(&box->mu);
    done_node *n = box->pending;
    pthread_mutex_unlock(&box->mu);
    if (n == NULL) break;
    weft_future_remove_waiter(n->f, &n->w);  /* its wake is over now */
    pthread_mutex_lock(&box->mu);
    bool still = n->prev != NULL || box->pending == n;
    if (still) unlink_pending(box, n);
    pthread_mutex_unlock(&box->mu);
    if (still) {  /* never resolved: dropped */
      dropped++;
      node_free(rt, n);
    }
  }
  for (done_node *n; (n = pop_ready(box)) != NULL; dropped++) node_free(rt, n);
  if (dropped > 0)
    weft_log(rt, "weft: %ld on_done callbacks never ran (their state was "
             "closed before a poll delivered them)", dropped);
  pthread_mutex_destroy(&box->mu);
  weft_free(rt, box, sizeof *box);
}

/* The inbox of L, made on first use; raises when out of memory. */
static inbox *inbox_of(lua_State *L, weft_runtime *rt) {
  void **slot = weft_runtime_inbox(L);
  if (*slot != NULL) return *slot;
  inbox *box = weft_alloc(rt, sizeof *box);
  if (box == NULL) luaL_error(L, "not enough memory");
  memset(box, 0, sizeof *box);
  if (pthread_mutex_init(&box->mu, NULL) != 0) {
    weft_free(rt, box, sizeof *box);
    luaL_error(L, "weft: cannot make a mutex");
  }
  box->rt = rt;
  *slot = box;
  return box;
}

/* Pushes the callbacks table of L. */
static void push_callbacks(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &callbacks_key) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &callbacks_key);
}

/* future:on_done(fn): fn(true, results...) or fn(false, err) runs in this
   state, in a later poll, once the job is over.  Returns the future. */
int weft_future_on_done(lua_State *L) {
  weft_future *f = (weft_future *)weft_check_object(L, 1, &weft_future_class);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  if (weft_pool_of_state(L) != NULL)
    return luaL_error(L, "future:on_done in a worker would never run (only "
                         "the host polls); use future:wait");
  weft_runtime *rt = weft_runtime_of(L);
  inbox *box = inbox_of(L, rt);
  push_callbacks(L);
  lua_pushvalue(L, 2);
  int ref = luaL_ref(L, 3);
  done_node *n = weft_alloc(rt, sizeof *n);
  if (n == NULL) {
    luaL_unref(L, 3, ref);
    return luaL_error(L, "not enough memory");
  }
  memset(n, 0, sizeof *n);
  n->w.wake = done_wake;
  n->box = box;
  n->f = f;
  n->ref = ref;
  weft_future_retain(f);
  pthread_mutex_lock(&box->mu);
  n->next = box->pending;
  if (box->pending != NULL) box->pending->prev = n;
  box->pending = n;
  pthread_mutex_unlock(&box->mu);
  if (!weft_future_add_waiter(f, &n->w)) {  /* over already: next poll */
    pthread_mutex_lock(&box->mu);
    make_ready(box, n);
    pthread_mutex_unlock(&box->mu);
    weft_runtime_wakeup(rt);
  }
  lua_settop(L, 1);
  return 1;
}

/* ---------------------------------------------------------------------- */
/* host requests: weft.on_host(fn, ...) from a worker */

struct weft_hostreq {
  weft_future *f;     /* retained: the asking job waits on it */
  weft_buf *call;     /* fn and its arguments */
  struct weft_hostreq *next;
};

static void resolve_closed(weft_runtime *rt, weft_future *f) {
  weft_future_resolve(f, WEFT_FUT_ERROR,
                      weft_buf_new_string(rt, "weft runtime closed"));
}

/* weft._host_call(fn, ...) -> a future of fn(...) run by the host's poll */
static int l_host_call(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  weft_runtime *rt = weft_runtime_of(L);
  if (weft_pool_of_state(L) == NULL)
    return luaL_error(L, "weft.on_host is for jobs in workers (here, call "
                         "the function directly)");
  if (!atomic_load(&rt->hosted))
    return luaL_error(L, "weft.on_host: no host polls this runtime (a C host "
                         "calls weft_runtime_poll, a main script weft.poll)");
  void **g = weft_guard_buf(L);
  *g = weft_buf_encode(L, 1, lua_gettop(L) - 1, "args", 1);
  weft_future *f = weft_future_new(rt);
  struct weft_hostreq *r = weft_alloc(rt, sizeof *r);
  if (f == NULL || r == NULL) {
    if (f != NULL) weft_future_release(f);
    weft_free(rt, r, r != NULL ? sizeof *r : 0);
    return luaL_error(L, "not enough memory");
  }
  void **gf = weft_guard_object(L);  /* pushing the handle may raise */
  *gf = f;
  weft_push_object(L, (weft_object *)f);
  r->f = f;
  r->call = weft_guard_take(g);
  r->next = NULL;
  weft_future_retain(f);
  pthread_mutex_lock(&rt->mu);
  bool closing = rt->closing;
  if (!closing) {
    if (rt->reqs_tail != NULL)
      rt->reqs_tail->next = r;
    else
      rt->reqs = r;
    rt->reqs_tail = r;
  }
  pthread_mutex_unlock(&rt->mu);
  if (closing) {
    resolve_closed(rt, f);
    weft_future_release(f);
    weft_buf_release(r->call);
    weft_free(rt, r, sizeof *r);
  } else {
    atomic_fetch_add(&rt->pending, 1);
    weft_runtime_wakeup(rt);
  }
  weft_release(weft_guard_take(gf));
  return 1;
}

static struct weft_hostreq *pop_request(weft_runtime *rt) {
  pthread_mutex_lock(&rt->mu);
  struct weft_hostreq *r = rt->reqs;
  if (r != NULL) {
    rt->reqs = r->next;
    if (rt->reqs == NULL) rt->reqs_tail = NULL;
    atomic_fetch_sub(&rt->pending, 1);
  }
  pthread_mutex_unlock(&rt->mu);
  return r;
}

void weft_host_fail_requests(weft_runtime *rt) {
  for (struct weft_hostreq *r; (r = pop_request(rt)) != NULL;) {
    resolve_closed(rt, r->f);
    weft_future_release(r->f);
    weft_buf_release(r->call);
    weft_free(rt, r, sizeof *r);
  }
}

/* ---------------------------------------------------------------------- */
/* poll */

static int deliver_k(lua_State *L);
static int deliver_failure_k(lua_State *L);
static int serve_k(lua_State *L);

/* Message handler: the message and a traceback of the callback's own
   frames (those above deliver_k and the like, not the host's below). */
static int traceback_h(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL)
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  int own = 0;  /* levels 1..own are the callback's */
  lua_Debug ar;
  for (int level = 1; lua_getstack(L, level, &ar); level++) {
    lua_getinfo(L, "f", &ar);
    lua_CFunction f = lua_tocfunction(L, -1);
    lua_pop(L, 1);
    if (f == deliver_k || f == deliver_failure_k || f == serve_k) {
      own = level - 1;
      break;
    }
  }
  luaL_traceback(L, L, msg, 1);
  const char *tb = lua_tostring(L, -1), *cut = strstr(tb, "stack traceback:");
  for (int i = 0; cut != NULL && i <= own && own <= 10; i++)
    cut = strchr(cut + 1, '\n');  /* past the header and `own` levels */
  if (cut != NULL && own <= 10) lua_pushlstring(L, tb, (size_t)(cut - tb));
  return 1;
}

/* Under lua_pcall: 1 = the request.  Runs fn(...) and encodes the results
   into r->call's place (the call is released first). */
static int serve_k(lua_State *L) {
  struct weft_hostreq *r = lua_touserdata(L, 1);
  lua_settop(L, 0);
  weft_buf *call = r->call;
  r->call = NULL;
  weft_buf_decode_release(L, call);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  r->call = weft_buf_encode(L, 1, lua_gettop(L), "results", 1);
  return 0;
}

/* Under lua_pcall: 1 = the message.  Encodes it into r->call (2). */
static int encode_msg_k(lua_State *L) {
  struct weft_hostreq *r = lua_touserdata(L, 2);
  r->call = weft_buf_encode(L, 1, 1, "error", 0);
  return 0;
}

static void serve(lua_State *L, weft_runtime *rt, struct weft_hostreq *r) {
  int top = lua_gettop(L);
  lua_pushcfunction(L, traceback_h);
  lua_pushcfunction(L, serve_k);
  lua_pushlightuserdata(L, r);
  int state = WEFT_FUT_OK;
  if (lua_pcall(L, 1, 0, top + 1) != LUA_OK) {
    state = WEFT_FUT_ERROR;
    weft_buf_release(r->call);
    r->call = NULL;
    lua_pushcfunction(L, encode_msg_k);
    lua_insert(L, -2);
    lua_pushlightuserdata(L, r);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) r->call = NULL;
  }
  lua_settop(L, top);
  weft_future_resolve(r->f, state, r->call);  /* NULL: "not enough memory" */
  weft_future_release(r->f);
  weft_free(rt, r, sizeof *r);
}

/* Under lua_pcall: 1 = the callback, 2 = the future (light). */
static int deliver_k(lua_State *L) {
  weft_future *f = lua_touserdata(L, 2);
  bool *called = lua_touserdata(L, 3);
  lua_settop(L, 1);
  int n = weft_push_outcome(L, f);
  *called = true;
  lua_call(L, n, 0);
  return 0;
}

/* Under lua_pcall: 1 = the callback, 2 = the message. */
static int deliver_failure_k(lua_State *L) {
  lua_pushboolean(L, 0);
  lua_insert(L, 2);
  lua_call(L, 2, 0);
  return 0;
}

/* Runs n's callback with the job's outcome; when the outcome cannot even
   be rebuilt here (memory), with false and that error instead: it runs
   once either way, unless that fails too (then the log says so). */
static void deliver(lua_State *L, weft_runtime *rt, done_node *n) {
  int top = lua_gettop(L);
  bool called = false;
  push_callbacks(L);
  lua_rawgeti(L, -1, n->ref);
  luaL_unref(L, -2, n->ref);
  lua_remove(L, -2);  /* top + 1: the callback */
  lua_pushcfunction(L, traceback_h);
  lua_pushcfunction(L, deliver_k);
  lua_pushvalue(L, top + 1);
  lua_pushlightuserdata(L, n->f);
  lua_pushlightuserdata(L, &called);
  if (lua_pcall(L, 3, 0, top + 2) != LUA_OK && called)
    weft_log(rt, "weft: error in an on_done callback: %s",
             lua_tostring(L, -1) ? lua_tostring(L, -1) : "(error)");
  if (!called) {
    lua_pushcfunction(L, deliver_failure_k);
    lua_pushvalue(L, top + 1);
    lua_pushvalue(L, -3);  /* the error */
    if (lua_pcall(L, 2, 0, top + 2) != LUA_OK)
      weft_log(rt, "weft: an on_done callback could not run: %s",
               lua_tostring(L, -1) ? lua_tostring(L, -1) : "(error)");
  }
  lua_settop(L, top);
  node_free(rt, n);
}

/* Under lua_pcall: 1 = rt (light), 2 = max count, 3 = budget (seconds). */
static int poll_k(lua_State *L) {
  weft_runtime *rt = lua_touserdata(L, 1);
  lua_Integer max = lua_tointeger(L, 2);
  double budget = lua_tonumber(L, 3);
  if (weft_runtime_of(L) != rt)
    return luaL_error(L, "weft_runtime_poll: the state is bound to another "
                         "runtime");
  atomic_store(&rt->hosted, true);
  double deadline = weft_now() + budget;
  void **slot = weft_runtime_inbox(L);
  weft_pool *coop = rt->pool != NULL && weft_pool_cooperative(rt->pool)
                        ? rt->pool : NULL;
  lua_Integer count = 0;
  if (budget <= 0) {  /* no time bound: only what is ready now */
    lua_Integer ready = (lua_Integer)atomic_load(&rt->pending);
    max = max > 0 && max < ready ? max : ready;
    if (max == 0) {
      lua_pushinteger(L, 0);
      return 1;
    }
  }
  bool more = true;
  while (more && (max <= 0 || count < max)) {
    more = false;
    struct weft_hostreq *r = pop_request(rt);
    if (r != NULL) {
      serve(L, rt, r);
      count++;
      more = true;
    }
    done_node *n = *slot != NULL && (max <= 0 || count < max)
                       ? pop_ready(*slot) : NULL;
    if (n != NULL) {
      deliver(L, rt, n);
      count++;
      more = true;
    }
    if (budget > 0 && weft_now() >= deadline) break;
    if (!more && coop != NULL && budget > 0)
      more = weft_pool_poll(coop, deadline) > 0;
  }
  lua_pushinteger(L, count);
  return 1;
}

int weft_runtime_poll(weft_runtime *rt, lua_State *L, int max_count,
                      double budget_seconds) {
  int top = lua_gettop(L);
  if (!lua_checkstack(L, 8)) return -1;
  lua_pushcfunction(L, poll_k);
  lua_pushlightuserdata(L, rt);
  lua_pushinteger(L, max_count);
  lua_pushnumber(L, budget_seconds);
  int r = -1;
  if (lua_pcall(L, 3, 1, 0) == LUA_OK)
    r = (int)lua_tointeger(L, -1);
  else
    weft_log(rt, "weft: poll failed: %s",
             lua_tostring(L, -1) ? lua_tostring(L, -1) : "(error)");
  lua_settop(L, top);
  return r;
}

/* weft.poll([budget [, max]]) -> the number of callbacks run */
static int l_poll(lua_State *L) {
  if (weft_pool_of_state(L) != NULL)
    return luaL_error(L, "weft.poll is for the host thread, not a worker");
  double budget = lua_isnoneornil(L, 1) ? 0 : weft_check_duration(L, 1);
  lua_Integer max = luaL_optinteger(L, 2, 0);
  lua_settop(L, 0);
  lua_pushcfunction(L, poll_k);
  lua_pushlightuserdata(L, weft_runtime_of(L));
  lua_pushinteger(L, max);
  lua_pushnumber(L, budget);
  lua_call(L, 3, 1);
  return 1;
}

/* ---------------------------------------------------------------------- */
/* weft_submit */

/* Under lua_pcall: 1 = rt (light), 2 = fn, 3.. = args.  Pushes the status
   and the future or a message. */
static int submit_k(lua_State *L) {
  weft_runtime *rt = lua_touserdata(L, 1);
  if (weft_runtime_of(L) != rt)
    return luaL_error(L, "weft_submit: the state is bound to another runtime");
  luaL_requiref(L, "weft.core", luaopen_weft_core, 0);  /* the metatables */
  lua_pop(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  void **g = weft_guard_buf(L);
  *g = weft_buf_encode(L, 2, lua_gettop(L) - 2, "args", 1);
  if (rt->root == NULL) {
    rt->root = weft_ctx_new(rt, weft_ctx_background(rt), INFINITY);
    if (rt->root == NULL) return luaL_error(L, "not enough memory");
  }
  weft_future *f = NULL;
  int r = weft_pool_try_submit(rt->pool, rt->root, *g, &f);
  if (r == WEFT_SUBMIT_OK) {
    weft_guard_take(g);  /* the job owns it */
    void **gf = weft_guard_object(L);
    *gf = f;
    lua_pushinteger(L, WEFT_OK);
    weft_push_object(L, (weft_object *)f);
    weft_release(weft_guard_take(gf));
    return 2;
  }
  lua_pushinteger(L, r == WEFT_SUBMIT_FULL     ? WEFT_SATURATED
                     : r == WEFT_SUBMIT_CLOSED ? WEFT_CLOSED
                                               : WEFT_ERROR);
  lua_pushstring(L, r == WEFT_SUBMIT_FULL     ? "saturated"
                    : r == WEFT_SUBMIT_CLOSED ? "closed"
                                              : "not enough memory");
  return 2;
}

int weft_submit(weft_runtime *rt, lua_State *L, int nargs) {
  if (nargs < 0 || !lua_checkstack(L, 4)) return WEFT_ERROR;
  bool closed = weft_runtime_closing(rt);
  if (closed || rt->pool == NULL) {
    lua_pop(L, nargs + 1);
    lua_pushstring(L, closed ? "closed" : "the runtime has no pool");
    return closed ? WEFT_CLOSED : WEFT_ERROR;
  }
  lua_pushcfunction(L, submit_k);
  lua_insert(L, -(nargs + 2));
  lua_pushlightuserdata(L, rt);
  lua_insert(L, -(nargs + 2));
  if (lua_pcall(L, nargs + 2, 2, 0) != LUA_OK) return WEFT_ERROR;  /* msg */
  int r = (int)lua_tointeger(L, -2);
  lua_remove(L, -2);
  return r;
}

/* ---------------------------------------------------------------------- */

static const luaL_Reg funcs[] = {
    {"poll", l_poll}, {"_host_call", l_host_call}, {NULL, NULL}};

void weft_open_host(lua_State *L) { luaL_setfuncs(L, funcs, 0); }
