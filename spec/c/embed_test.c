/*
** embed_test.c: the embedding API (engine/weft.h) as a C host uses it: a
** frame loop that never blocks, cooperative mode, two runtimes at once,
** host userdata, hooks, memory limits and shutdown.  Prints TAP.
**
** Built by the test runner with every engine source file and run from the
** repository root (the worker states find lua/weft/ there).  Timings are
** printed, never asserted beyond generous bounds.
*/
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "weft.h"

static int test_no = 0, failures = 0;

static void ok(int cond, const char *name) {
  test_no++;
  if (!cond) failures++;
  printf("%s %d - %s\n", cond ? "ok" : "not ok", test_no, name);
  fflush(stdout);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_for(double s) {
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  nanosleep(&ts, NULL);
}

#define LUA_DIRS "lua/?.lua;lua/?/init.lua"

/* A job body that never ends.  Under ThreadSanitizer a signal reaches a
   thread only at an intercepted call, so there the loop allocates (the
   test runner sets SANITIZED); elsewhere it is a bare loop. */
static const char *spin_body(void) {
  const char *san = getenv("SANITIZED");
  return san != NULL && san[0] != '\0' ? "local n = 0 while true do n = #{n} end"
                                        : "local n = 0 while true do n = n + 1 end";
}

/* What the hooks saw; one per runtime, passed as their ud. */
typedef struct seen {
  atomic_int thread_start, thread_stop, init_state, job_begin, job_end;
  atomic_int finished, panics, logs, wakeups;
  char last_log[512];  /* written under mu */
  char last_panic[512];
  pthread_mutex_t mu;
  const char *tag;     /* what init_state gives workers as host_tag() */
} seen;

static void seen_init(seen *s, const char *tag) {
  memset(s, 0, sizeof *s);
  pthread_mutex_init(&s->mu, NULL);
  s->tag = tag;
}

static void on_log(void *ud, const char *line) {
  seen *s = ud;
  atomic_fetch_add(&s->logs, 1);
  pthread_mutex_lock(&s->mu);
  snprintf(s->last_log, sizeof s->last_log, "%s", line);
  pthread_mutex_unlock(&s->mu);
}

static void on_panic(void *ud, const char *pool, const char *msg,
                     const char *tb) {
  seen *s = ud;
  atomic_fetch_add(&s->panics, 1);
  pthread_mutex_lock(&s->mu);
  snprintf(s->last_panic, sizeof s->last_panic, "%s|%s|%s", pool, msg,
           tb ? tb : "");
  pthread_mutex_unlock(&s->mu);
}

static void on_thread_start(void *ud, const char *pool, int index) {
  (void)pool;
  (void)index;
  atomic_fetch_add(&((seen *)ud)->thread_start, 1);
}

static void on_thread_stop(void *ud, const char *pool, int index) {
  (void)pool;
  (void)index;
  atomic_fetch_add(&((seen *)ud)->thread_stop, 1);
}

static void on_job(void *ud, const weft_job_event *ev) {
  seen *s = ud;
  if (ev->what == WEFT_JOB_BEGIN) {
    atomic_fetch_add(&s->job_begin, 1);
  } else {
    atomic_fetch_add(&s->job_end, 1);
    if (ev->finished) atomic_fetch_add(&s->finished, 1);
  }
}

static void on_wakeup(void *ud) { atomic_fetch_add(&((seen *)ud)->wakeups, 1); }

/* --- the host's userdata type: vec2 ------------------------------------- */

typedef struct vec2 {
  double x, y;
} vec2;

static int vec2_new(lua_State *L) {
  vec2 *v = lua_newuserdatauv(L, sizeof *v, 0);
  v->x = luaL_checknumber(L, 1);
  v->y = luaL_checknumber(L, 2);
  luaL_setmetatable(L, "test.vec2");
  return 1;
}

static int vec2_index(lua_State *L) {
  vec2 *v = luaL_checkudata(L, 1, "test.vec2");
  const char *k = luaL_checkstring(L, 2);
  if (strcmp(k, "x") == 0) lua_pushnumber(L, v->x);
  else if (strcmp(k, "y") == 0) lua_pushnumber(L, v->y);
  else lua_pushnil(L);
  return 1;
}

static void open_vec2(lua_State *L) {
  if (luaL_newmetatable(L, "test.vec2")) {
    lua_pushcfunction(L, vec2_index);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, vec2_new);
  lua_setglobal(L, "vec2");
}

static size_t vec2_out(lua_State *L, int idx, void *out, size_t cap,
                       void *ud) {
  (void)ud;
  vec2 *v = luaL_checkudata(L, idx, "test.vec2");
  if (cap >= sizeof *v) memcpy(out, v, sizeof *v);
  return sizeof *v;
}

static void vec2_in(lua_State *L, const void *data, size_t len, void *ud) {
  (void)ud;
  if (len != sizeof(vec2)) luaL_error(L, "bad vec2");
  vec2 *v = lua_newuserdatauv(L, sizeof *v, 0);
  memcpy(v, data, sizeof *v);
  luaL_setmetatable(L, "test.vec2");
}

/* A bigger type: 200 bytes, more than the copier's first offer of room. */
typedef struct blob {
  unsigned char bytes[200];
} blob;

static int blob_new(lua_State *L) {
  blob *b = lua_newuserdatauv(L, sizeof *b, 0);
  for (int i = 0; i < 200; i++) b->bytes[i] = (unsigned char)(i * 7 + 3);
  luaL_setmetatable(L, "test.blob");
  return 1;
}

/* blob_ok(b): whether b holds blob_new's bytes */
static int blob_ok(lua_State *L) {
  blob *b = luaL_checkudata(L, 1, "test.blob");
  int good = 1;
  for (int i = 0; i < 200; i++) good &= b->bytes[i] == (unsigned char)(i * 7 + 3);
  lua_pushboolean(L, good);
  return 1;
}

static size_t blob_out(lua_State *L, int idx, void *out, size_t cap,
                       void *ud) {
  (void)ud;
  blob *b = luaL_checkudata(L, idx, "test.blob");
  if (cap >= sizeof *b) memcpy(out, b, sizeof *b);
  return sizeof *b;
}

static void blob_in(lua_State *L, const void *data, size_t len, void *ud) {
  (void)ud;
  if (len != sizeof(blob)) luaL_error(L, "bad blob");
  memcpy(lua_newuserdatauv(L, sizeof(blob), 0), data, len);
  luaL_setmetatable(L, "test.blob");
}

static void open_blob(lua_State *L) {
  luaL_newmetatable(L, "test.blob");
  lua_pop(L, 1);
  lua_pushcfunction(L, blob_new);
  lua_setglobal(L, "blob");
  lua_pushcfunction(L, blob_ok);
  lua_setglobal(L, "blob_ok");
}

/* --- host functions registered in every worker by init_state ------------ */

static int host_tag(lua_State *L) {
  lua_pushstring(L, lua_tostring(L, lua_upvalueindex(1)));
  return 1;
}

/* Blocks in C, where neither hard cancel nor close can reach it. */
static int host_block(lua_State *L) {
  double end = now() + luaL_checknumber(L, 1);
  while (now() < end) sleep_for(0.01);  /* signals cut one sleep short */
  return 0;
}

static void init_state(lua_State *L, void *ud) {
  seen *s = ud;
  atomic_fetch_add(&s->init_state, 1);
  lua_pushstring(L, s->tag);
  lua_pushcclosure(L, host_tag, 1);
  lua_setglobal(L, "host_tag");
  lua_pushcfunction(L, host_block);
  lua_setglobal(L, "host_block");
  open_vec2(L);
  open_blob(L);
}

/* --- helpers ------------------------------------------------------------- */

static weft_config base_config(seen *s, int workers) {
  weft_config cfg;
  weft_config_init(&cfg);
  cfg.workers = workers;
  cfg.lua_path = LUA_DIRS;
  cfg.lua_cpath = "";
  cfg.init_state = init_state;
  cfg.init_state_ud = s;
  cfg.log = on_log;
  cfg.log_ud = s;
  cfg.panic = on_panic;
  cfg.panic_ud = s;
  cfg.job_hook = on_job;
  cfg.job_hook_ud = s;
  cfg.thread_start = on_thread_start;
  cfg.thread_stop = on_thread_stop;
  cfg.thread_ud = s;
  cfg.wakeup = on_wakeup;
  cfg.wakeup_ud = s;
  return cfg;
}

/* A host state bound to rt with weft loaded as the global weft. */
static lua_State *host_state(weft_runtime *rt) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  open_vec2(L);
  open_blob(L);
  if (weft_runtime_open(rt, L) != 0) return NULL;
  if (luaL_dostring(L, "package.path = '" LUA_DIRS ";' .. package.path\n"
                       "weft = require 'weft'") != LUA_OK) {
    printf("# %s\n", lua_tostring(L, -1));
    return NULL;
  }
  return L;
}

/* Runs chunk in L; returns its first result as an integer (or -1). */
static long run(lua_State *L, const char *chunk) {
  if (luaL_dostring(L, chunk) != LUA_OK) {
    printf("# error: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    return -1;
  }
  long v = lua_isinteger(L, -1) ? (long)lua_tointeger(L, -1) : -1;
  lua_settop(L, 0);
  return v;
}

/* Polls until the global `pending` reaches 0 (and `todo`, if any, is
   empty) or limit seconds pass, calling the global feed() (if any) before
   each poll, as a game submits work each frame; returns the longest
   single poll, in seconds. */
static double poll_until_done(weft_runtime *rt, lua_State *L, double budget,
                              double limit, int *frames) {
  double longest = 0, end = now() + limit;
  int n = 0;
  for (;;) {
    if (lua_getglobal(L, "feed") == LUA_TFUNCTION &&
        lua_pcall(L, 0, 0, 0) != LUA_OK)
      printf("# feed: %s\n", lua_tostring(L, -1));
    lua_settop(L, 0);
    lua_getglobal(L, "pending");
    long pending = (long)lua_tointeger(L, -1);
    lua_getglobal(L, "todo");
    if (lua_istable(L, -1)) pending += (long)luaL_len(L, -1);
    lua_settop(L, 0);
    if (pending == 0 || now() > end) break;
    double t0 = now();
    weft_runtime_poll(rt, L, 0, budget);
    double d = now() - t0;
    if (d > longest) longest = d;
    n++;
    sleep_for(0.001);
  }
  if (frames) *frames = n;
  return longest;
}

/* --- tests ------------------------------------------------------------- */

/* Fans out 10,000 jobs from the host state at 1 KHz "frames": never blocks,
   each completion delivered exactly once, the longest poll near its
   budget. */
static void test_frame_loop(void) {
  seen s;
  seen_init(&s, "frames");
  /* one worker per core but the host thread's, as a game sizes its pool:
     on 2 cores, 2 workers would make the OS preempt the host thread for
     whole time slices (several ms), whatever weft does */
  weft_config cfg = base_config(&s, 1);
  cfg.limit = 256;
  char err[256];
  weft_runtime *rt = weft_runtime_new(&cfg, err, sizeof err);
  ok(rt != NULL, "a runtime with one worker");
  if (rt == NULL) {
    printf("# %s\n", err);
    return;
  }
  ok(atomic_load(&s.thread_start) == 1 && atomic_load(&s.init_state) == 1,
     "thread_start and init_state ran once per worker before new returned");
  lua_State *L = host_state(rt);
  ok(L != NULL, "a host state opened on the runtime");
  long saturated = run(L,
      "seen, pending, failed, saturated = {}, 0, 0, 0\n"
      "local pool = weft.default_pool()\n"
      "local ctx = weft.background()\n"
      "todo = {}\n"
      "for i = 1, 10000 do todo[i] = i end\n"
      "local function job(_, i) local s = 0 for k = 1, 200 do s = s + k end\n"
      "  return i, host_tag() end\n"
      /* the one worker spins until the first feed is done, so that the
         feed meets the limit whatever the speeds of the two threads */
      "local gate, open = weft.with_cancel(ctx)\n"
      "open_gate = open\n"
      "assert(pool:try_submit(ctx, function(_, g) while not g:done() do end end, gate))\n"
      "function feed()\n"
      "  while #todo > 0 do\n"
      "    local i = todo[#todo]\n"
      "    local f, e = pool:try_submit(ctx, job, i)\n"
      "    if not f then assert(e == weft.SATURATED, e) saturated = saturated + 1 return end\n"
      "    todo[#todo] = nil\n"
      "    pending = pending + 1\n"
      "    f:on_done(function(ok, v, tag)\n"
      "      pending = pending - 1\n"
      "      if not ok or tag ~= 'frames' then failed = failed + 1 return end\n"
      "      seen[v] = (seen[v] or 0) + 1\n"
      "    end)\n"
      "  end\n"
      "end\n"
      "feed()\n"
      "open_gate()\n"
      "return saturated");
  ok(saturated > 0,
     "try_submit meets the limit: weft.SATURATED (it never blocks)");
  int frames = 0;
  double t0 = now();
  double longest = poll_until_done(rt, L, 0.002, 60, &frames);
  double took = now() - t0;
  run(L, "feed = nil");
  long bad = run(L,
      "local bad = failed\n"
      "for i = 1, 10000 do if seen[i] ~= 1 then bad = bad + 1 end end\n"
      "return bad");
  ok(bad == 0, "10,000 jobs: every completion delivered exactly once");
  printf("# frame loop: %d polls in %.2f s, longest poll %.2f ms (budget 2 ms)\n",
         frames, took, longest * 1e3);
  ok(longest < 0.2, "the longest poll stays near its budget (bound 200 ms)");
  ok(atomic_load(&s.wakeups) > 0, "the wakeup hook was called");
  weft_stats st;
  weft_runtime_stats(rt, &st);
  printf("# stats: completed %ld, latency p50 %.3f ms p99 %.3f ms, "
         "memory %zu KB (worker 1 %zu KB)\n", st.completed,
         st.latency_p50 * 1e3, st.latency_p99 * 1e3, st.memory_total >> 10,
         st.memory[0] >> 10);
  ok(st.workers == 1 && st.completed == 10001 && st.submitted == 10001 &&
     st.failed == 0 && st.panicked == 0 && st.inflight == 0,
     "stats count every job (the gate's included)");
  ok(st.latency_p50 > 0 && st.latency_p50 <= st.latency_p99 &&
     st.latency_p99 <= st.latency_max, "latency percentiles are ordered");
  ok(st.memory[0] > 10000 && st.memory[1] == 0 &&
     st.memory_total == st.memory[0],
     "Lua memory is accounted per worker");
  ok(atomic_load(&s.finished) == 10001 &&
     atomic_load(&s.job_begin) == atomic_load(&s.job_end),
     "the job hook saw each job begin and finish");
  ok(weft_runtime_close(rt, 2) == 0, "close: every worker stopped");
  ok(atomic_load(&s.thread_stop) == 1, "thread_stop ran on the worker");
  ok(atomic_load(&s.logs) == 0, "nothing was logged");
  lua_close(L);
}

/* Jobs run only inside poll; a busy job is suspended at the budget. */
static void test_cooperative(void) {
  seen s;
  seen_init(&s, "coop");
  weft_config cfg = base_config(&s, 0);
  char err[256];
  weft_runtime *rt = weft_runtime_new(&cfg, err, sizeof err);
  ok(rt != NULL, "a cooperative runtime (workers = 0)");
  if (rt == NULL) {
    printf("# %s\n", err);
    return;
  }
  ok(atomic_load(&s.thread_start) == 0 && atomic_load(&s.init_state) == 1,
     "no thread; one worker state, initialised");
  lua_State *L = host_state(rt);
  run(L,
      "order, pending = {}, 3\n"
      "local pool = weft.default_pool()\n"
      "for i = 1, 3 do\n"
      "  pool:try_submit(weft.background(), function(_, i) return i * 10 end, i)\n"
      "    :on_done(function(ok, v) order[#order + 1] = v pending = pending - 1 end)\n"
      "end");
  sleep_for(0.05);
  ok(run(L, "return #order") == 0, "nothing runs before a poll");
  int n = weft_runtime_poll(rt, L, 0, 0.5);
  ok(n == 3 && run(L, "return order[1] * 100 + order[2] * 10 + order[3]") ==
                   10 * 100 + 20 * 10 + 30,
     "one poll runs the jobs in order and delivers their completions");
  long deadlock = run(L,
      "local f = weft.default_pool():try_submit(weft.background(), function() return 1 end)\n"
      "local ok, err = f:wait()\n"
      "pending = 1\n"
      "f:on_done(function() pending = 0 end)\n"
      "return (ok == nil and err:find(weft.DEADLOCK, 1, true)) and 1 or 0");
  ok(deadlock == 1, "future:wait on the host thread reports a deadlock, "
                    "never hangs");
  poll_until_done(rt, L, 0.01, 5, NULL);
  char chunk[512];
  snprintf(chunk, sizeof chunk,
           "spins, pending = 0, 1\n"
           "weft.default_pool():try_submit(weft.background(), function()\n"
           "  %s end)\n"
           "  :on_done(function(ok, err) spun_err = err pending = 0 end)",
           spin_body());
  run(L, chunk);
  double longest = 0;
  for (int i = 0; i < 5; i++) {
    double t0 = now();
    weft_runtime_poll(rt, L, 0, 0.005);
    double d = now() - t0;
    if (d > longest) longest = d;
  }
  printf("# cooperative: a busy job's polls took at most %.2f ms (budget 5 ms)\n",
         longest * 1e3);
  ok(longest < 0.2, "a poll running `while true do end` returns near its "
                    "budget (bound 200 ms)");
  double t0 = now();
  ok(weft_runtime_close(rt, 1) == 0, "close stops the busy cooperative job");
  ok(now() - t0 < 1.5, "within its timeout");
  weft_runtime_poll(rt, L, 0, 0.01);
  lua_getglobal(L, "spun_err");
  ok(lua_isstring(L, -1) && strstr(lua_tostring(L, -1), "pool closed") != NULL,
     "its completion is delivered after close, as canceled");
  lua_pop(L, 1);
  lua_close(L);
}

/* Two runtimes side by side, each with its own hooks and workers. */
static void test_two_runtimes(void) {
  seen a, b;
  seen_init(&a, "A");
  seen_init(&b, "B");
  weft_config ca = base_config(&a, 2), cb = base_config(&b, 1);
  ca.limit = cb.limit = 256;
  char err[256];
  weft_runtime *ra = weft_runtime_new(&ca, err, sizeof err);
  weft_runtime *rb = weft_runtime_new(&cb, err, sizeof err);
  ok(ra != NULL && rb != NULL, "two runtimes at once");
  if (ra == NULL || rb == NULL) return;
  lua_State *la = host_state(ra), *lb = host_state(rb);
  const char *fan =
      "tags, pending = {}, 200\n"
      "local pool = weft.default_pool()\n"
      "for i = 1, 200 do\n"
      "  local f = assert(pool:try_submit(weft.background(), function()\n"
      "    return host_tag() end))\n"
      "  f:on_done(function(ok, t) tags[t] = (tags[t] or 0) + 1 pending = pending - 1 end)\n"
      "end";
  run(la, fan);
  run(lb, fan);
  double end = now() + 30;
  for (;;) {
    weft_runtime_poll(ra, la, 0, 0.002);
    weft_runtime_poll(rb, lb, 0, 0.002);
    lua_getglobal(la, "pending");
    lua_getglobal(lb, "pending");
    long left = (long)(lua_tointeger(la, -1) + lua_tointeger(lb, -1));
    lua_pop(la, 1);
    lua_pop(lb, 1);
    if (left == 0 || now() > end) break;
    sleep_for(0.001);
  }
  ok(run(la, "return tags.A") == 200 && run(lb, "return tags.B") == 200,
     "each runtime's jobs ran in its own workers");
  ok(weft_runtime_poll(ra, lb, 0, 0.001) == -1,
     "poll with a state of another runtime fails");
  ok(weft_runtime_close(ra, 1) == 0 && weft_runtime_close(rb, 1) == 0,
     "both close");
  ok(atomic_load(&a.thread_stop) == 2 && atomic_load(&b.thread_stop) == 1,
     "each stopped its own threads");
  lua_close(la);
  lua_close(lb);
}

/* Host userdata, weft_submit from C, on_host, panics, memory limits. */
static void test_host_features(void) {
  seen s;
  seen_init(&s, "host");
  weft_config cfg = base_config(&s, 2);
  cfg.limit = 2;
  cfg.memory_limit = 4 << 20;
  char err[256];
  weft_runtime *rt = weft_runtime_new(&cfg, err, sizeof err);
  ok(rt != NULL, "a runtime with a memory limit");
  if (rt == NULL) return;
  ok(weft_register_type(rt, "test.vec2", vec2_out, vec2_in, NULL) == 0 &&
     weft_register_type(rt, "test.vec2", vec2_out, vec2_in, NULL) == -1,
     "a host type registers once");
  lua_State *L = host_state(rt);

  /* weft_submit: a function and a vec2 from C */
  (void)luaL_dostring(L, "return function(ctx, v) return vec2(v.x * 2, v.y + 1), "
                   "getmetatable(v) == debug.getregistry()['test.vec2'] end");
  lua_pushcfunction(L, vec2_new);
  lua_pushnumber(L, 1.5);
  lua_pushnumber(L, -2);
  lua_call(L, 2, 1);
  int r = weft_submit(rt, L, 1);
  ok(r == WEFT_OK && lua_type(L, -1) == LUA_TUSERDATA,
     "weft_submit pushes the job's future");
  lua_setglobal(L, "fut");
  run(L, "pending = 1\n"
         "fut:on_done(function(ok, v, same) pending = 0\n"
         "  res = ok and same and getmetatable(v) == debug.getregistry()['test.vec2']\n"
         "    and v.x == 3 and v.y == -1 end)");
  poll_until_done(rt, L, 0.002, 10, NULL);
  lua_getglobal(L, "res");
  ok(lua_toboolean(L, -1), "a vec2 travels to a job and back, as a vec2");
  lua_pop(L, 1);

  /* a host type bigger than the copier's first offer of room */
  ok(weft_register_type(rt, "test.blob", blob_out, blob_in, NULL) == 0,
     "a second host type registers");
  run(L, "pending = 1\n"
         "weft.default_pool():try_submit(weft.background(), function(_, b)\n"
         "  return blob_ok(b), blob() end, blob())\n"
         ":on_done(function(ok, there, b) pending = 0\n"
         "  blob_res = ok and there and blob_ok(b) end)");
  poll_until_done(rt, L, 0.002, 10, NULL);
  lua_getglobal(L, "blob_res");
  ok(lua_toboolean(L, -1), "a 200-byte host value travels both ways intact");
  lua_pop(L, 1);

  /* unregistered userdata is refused with its path */
  lua_pushcfunction(L, vec2_new);  /* any function: not reached */
  lua_newtable(L);
  lua_newuserdatauv(L, 8, 0);
  lua_setfield(L, -2, "handle");
  r = weft_submit(rt, L, 1);
  ok(r == WEFT_ERROR && strstr(lua_tostring(L, -1), "args[2].handle") != NULL,
     "unregistered userdata is refused, with its path");
  lua_pop(L, 1);

  /* SATURATED: limit 2, both slots held */
  run(L, "gate, cancel_gate = weft.with_cancel(weft.background())\n"
         "held = {}\n"
         "for i = 1, 2 do held[i] = weft.default_pool():try_submit(gate,\n"
         "  function(c) c:wait(10) end) end");
  (void)luaL_dostring(L, "return function() end");
  r = weft_submit(rt, L, 0);
  ok(r == WEFT_SATURATED, "weft_submit on a full pool: WEFT_SATURATED");
  lua_pop(L, 1);
  run(L, "cancel_gate()\n pending = 2\n"
         "for i = 1, 2 do held[i]:on_done(function() pending = pending - 1 end) end");
  poll_until_done(rt, L, 0.002, 10, NULL);

  /* on_host: a job asks the host state for a value */
  run(L, "host_value = 41\n pending = 1\n"
         "weft.default_pool():try_submit(weft.background(), function()\n"
         "  local weft = require 'weft'\n"
         "  local ok, v = weft.on_host(function(d) return host_value + d end, 1)\n"
         "  local ok2, e = weft.on_host(function() error('no!') end)\n"
         "  return ok and v, ok2, e end)\n"
         ":on_done(function(ok, v, ok2, e) pending = 0 asked = ok and v\n"

         "  asked_err = e end)");
  poll_until_done(rt, L, 0.002, 10, NULL);
  ok(run(L, "return asked") == 42, "weft.on_host runs on the host, returns "
                                   "to the job");
  ok(run(L, "return asked_err:find('no!', 1, true) and 1 or 0") == 1,
     "an error in the host function goes back to the job");

  /* panics reach the panic hook, with the traceback */
  run(L, "pending = 1\n"
         "weft.default_pool():try_submit(weft.background(), function()\n"
         "  error('boom') end):on_done(function() pending = 0 end)");
  poll_until_done(rt, L, 0.002, 10, NULL);
  pthread_mutex_lock(&s.mu);
  ok(atomic_load(&s.panics) == 1 && strstr(s.last_panic, "host|") != NULL &&
     strstr(s.last_panic, "boom") != NULL &&
     strstr(s.last_panic, "stack traceback") != NULL,
     "a panic reaches the panic hook with the pool's name and traceback");
  pthread_mutex_unlock(&s.mu);

  /* memory limit: the job fails, the worker goes on */
  run(L, "pending = 2\n"
         "local pool = weft.default_pool()\n"
         "pool:try_submit(weft.background(), function()\n"
         "  local t = {} for i = 1, 1e7 do t[i] = ('x'):rep(64) .. i end end)\n"
         "  :on_done(function(ok, e) mem_err = e pending = pending - 1 end)\n"
         "pool:try_submit(weft.background(), function() return host_tag() end)\n"
         "  :on_done(function(ok, v) after = v pending = pending - 1 end)");
  poll_until_done(rt, L, 0.002, 30, NULL);
  lua_getglobal(L, "mem_err");
  ok(lua_isstring(L, -1) &&
     strstr(lua_tostring(L, -1), "not enough memory (limit 4 MB)") != NULL,
     "over the memory limit: 'not enough memory (limit 4 MB)'");
  lua_pop(L, 1);
  lua_getglobal(L, "after");
  ok(lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "host") == 0,
     "and the workers go on");
  lua_pop(L, 1);
  weft_stats st;
  weft_runtime_stats(rt, &st);
  ok(st.memory[0] < (size_t)(4 << 20) && st.memory[1] < (size_t)(4 << 20),
     "each worker is back under its limit");

  /* shutdown: a spinning job, a parked one, one stuck in C */
  char chunk[512];
  snprintf(chunk, sizeof chunk,
           "pending = 3\n"
           "local pool = weft.default_pool()\n"
           "pool:try_submit(weft.background(), function() %s end)\n"
           "  :on_done(function(ok, e) spin_err = e pending = pending - 1 end)\n"
           "pool:try_submit(weft.background(), function() host_block(1.5) end)\n"
           "  :on_done(function(ok, e) pending = pending - 1 end)\n",
           spin_body());
  run(L, chunk);
  sleep_for(0.1);
  double t0 = now();
  int stuck = weft_runtime_close(rt, 0.3);
  double took = now() - t0;
  printf("# close with a job stuck in C: %d stuck, %.0f ms\n", stuck,
         took * 1e3);
  ok(stuck == 1, "close reports the worker stuck in C code");
  ok(took < 1.0, "and returns within its timeout");
  pthread_mutex_lock(&s.mu);
  ok(strstr(s.last_log, "did not stop") != NULL, "and names it in the log");
  pthread_mutex_unlock(&s.mu);
  weft_runtime_poll(rt, L, 0, 0.01);
  lua_getglobal(L, "spin_err");
  ok(lua_isstring(L, -1) && strstr(lua_tostring(L, -1), "pool closed") != NULL,
     "the spinning job was stopped and its completion delivered");
  lua_pop(L, 1);
  (void)luaL_dostring(L, "return function() end");
  ok(weft_submit(rt, L, 0) == WEFT_CLOSED && lua_gettop(L) == 1,
     "weft_submit after close: WEFT_CLOSED");
  lua_close(L);
  sleep_for(1.6);  /* the stuck job returns; its worker then idles */
}

/* Bad configurations fail with a message, and nothing is left running. */
static void test_bad_config(void) {
  char err[256] = "";
  weft_config cfg;
  weft_config_init(&cfg);
  ok(cfg.workers >= 1 && cfg.limit == 0 && cfg.alloc == NULL,
     "weft_config_init: one worker per CPU, the rest zero");
  cfg.workers = 4;
  cfg.limit = 2;
  ok(weft_runtime_new(&cfg, err, sizeof err) == NULL &&
     strstr(err, "limit") != NULL, "limit below workers is refused");
  weft_config_init(&cfg);
  cfg.workers = 1;
  cfg.lua_path = "/nonexistent/?.lua";
  cfg.lua_cpath = "";
  ok(weft_runtime_new(&cfg, err, sizeof err) == NULL &&
     strstr(err, "module 'weft' not found") != NULL,
     "weft's Lua files missing from lua_path: a clear error");
}

int main(void) {
  test_bad_config();
  test_frame_loop();
  test_cooperative();
  test_two_runtimes();
  test_host_features();
  printf("1..%d\n", test_no);
  return failures == 0 ? 0 : 1;
}
