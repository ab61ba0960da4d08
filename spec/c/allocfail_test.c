/*
** allocfail_test.c: an allocation-failure sweep of the embedding API
** (issue 8, item 2).  Prints TAP.
**
** A counting allocator is every allocator weft and Lua use here: the
** runtime's cfg.alloc (the engine's own memory and every worker state's
** lua_Alloc) and the host state's (lua_newstate).  Once armed it counts
** every request for new memory (a new block, or a block grown; frees and
** shrinks are never failed: no real allocator fails them) and fails the
** Nth.  Two policies:
**
**   once    only the Nth request fails; the next one succeeds again.  This
**           is the policy that finds the bugs of recovery paths: the
**           program goes on after the failure, so a missing check, a
**           half-made object or a lost wake-up shows up as a crash, a
**           leak, a hang or a lost completion.  Lua absorbs most of its
**           own failures under it (an emergency collection and a retry),
**           so it mostly exercises the engine's checks.
**   sticky  the Nth request and every one after it fail: Lua's own error
**           paths everywhere, and shutdown with no memory at all.
**
** For N = 1, 2, 3, ... a fixed workload runs from scratch in a forked
** child (so a crash or hang of one N is reported with its N and the sweep
** goes on): a runtime (2 workers, or cooperative with ALLOCFAIL_WORKERS=0),
** a host state bound to it, and a script that submits jobs with arguments
** and results, copies nested tables (a cycle included) both ways, cancels
** a context while jobs wait on it, passes values between two jobs through
** a channel, runs weft.group and weft.map (inside a job, and on the host
** with workers), asks the host through weft.on_host, lets a job panic, and
** registers future:on_done for every job it submits (weft_submit from C
** too); the host then polls, calls weft_runtime_close and lua_close.  A run
** must end cleanly:
**
**   - no crash (signal, sanitizer report) and no hang (a watchdog: the
**     parent kills a child after ALLOCFAIL_TIMEOUT seconds, 10 by default,
**     and the child has alarm() as a backstop);
**   - no leak: after lua_close every block the allocator handed out is
**     back (blocks and bytes; close reporting stuck workers is a leak);
**   - no lost or doubled completion: every on_done whose registration
**     returned runs exactly once (by the end of the polls after close),
**     unless the log says why it did not (a callback that raised, or "on_done
**     callbacks never ran"); none runs twice; a job that succeeded returned
**     the right values.
**
** An error is a clean outcome: weft_runtime_new returning NULL, a submit
** returning an error, a "not enough memory" raised in the script.
**
** The sweep: an untouched run first counts the allocations the workload
** makes (T; with worker threads it varies a little from run to run).  Each
** policy then sweeps every N from 1 up to a bound and samples the rest up
** to T + margin with a stride (jittered, so it cannot alias a periodic
** pattern), as the time budget allows; the sweep of a policy ends when
** runs pass untouched past T.  Settings (environment):
**
**   ALLOCFAIL_POLICY   once, sticky or both (default both)
**   ALLOCFAIL_WORKERS  workers of the runtime (default 2; 0: cooperative)
**   ALLOCFAIL_BUDGET   seconds for the whole sweep (default 80)
**   ALLOCFAIL_FULL=1   every N, no time budget (long)
**   ALLOCFAIL_FROM, ALLOCFAIL_TO  only N in [FROM, TO]
**   ALLOCFAIL_JOBS     children at once (default: the CPU count, at most 4)
**   ALLOCFAIL_N=k      run N=k once, in this process (no fork), verbose:
**                      for gdb or a sanitizer (ALLOCFAIL_POLICY picks one)
**   ALLOCFAIL_GDB=1    on a hang, print every thread's stack (gdb -p)
**   ALLOCFAIL_VERBOSE=1  a line per run
**
** Each failure is printed with its N, the phase the run was in, what went
** wrong, the log's last lines and the stack of the injected failure
** (symbolized with addr2line when it is installed).
**
** Built like the other C tests (with every engine source file, -pthread,
** -lm and Lua 5.4; add -fsanitize=address,undefined for a sanitized run)
** and run from the repository root, where the worker states find lua/weft/.
*/
#include <dlfcn.h>
#include <errno.h>
#include <execinfo.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "weft.h"

#define LUA_DIRS "lua/?.lua;lua/?/init.lua"

/* Sanitized builds stop at the first undefined behaviour (a child that
   dies is reported as a crash with its N). */
const char *__ubsan_default_options(void);
__attribute__((used)) const char *__ubsan_default_options(void) {
  return "halt_on_error=1:print_stacktrace=1";
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

/* --- what a child reports (shared memory, one slot per child) ----------- */

enum { R_UNTOUCHED, R_CLEAN_ERROR, R_ABSORBED, R_FAIL };
static const char *const outcome_name[] = {"untouched", "clean error",
                                           "absorbed", "FAILED"};
enum { F_NONE, F_CRASH, F_HANG, F_LEAK, F_COMPLETION };
static const char *const fail_name[] = {"", "crash", "hang", "leak",
                                        "lost/doubled completion"};

#define MAX_FRAMES 40
#define LOG_TAIL 4

typedef struct result {
  volatile int written;      /* the child got to the end */
  int outcome, fail;
  long allocs;               /* requests for memory counted */
  long injected;             /* failures injected */
  long stalled;              /* completions that needed close */
  double seconds;
  char phase[48];            /* the last phase the child entered */
  char error[256];           /* the clean error, when there was one */
  char msg[512];             /* what failed */
  char logs[LOG_TAIL][200];  /* the log's last lines */
  int nlogs;
  int site_frames;           /* the stack of the (first) injected failure */
  void *site[MAX_FRAMES];
  int site_worker;           /* it was on another thread than the host's */
  int crash_frames;          /* the stack of a crash (signal handler) */
  void *crash[MAX_FRAMES];
  int crash_sig;
} result;

static result *shared;      /* this child's slot */

static void set_phase(const char *p) {
  snprintf(shared->phase, sizeof shared->phase, "%s", p);
}

/* --- the counting allocator --------------------------------------------- */

static struct {
  atomic_int armed;
  atomic_long count;        /* requests since armed */
  long fail_at;             /* 0: never */
  int sticky;
  atomic_long injected;
  atomic_long blocks, bytes;  /* alive now */
  pthread_t host;
} A;

static void *counting_alloc(void *ud, void *p, size_t osize, size_t nsize) {
  (void)ud;
  size_t old = p != NULL ? osize : 0;  /* p == NULL: osize is Lua's tag */
  if (nsize == 0) {
    if (p != NULL) {
      free(p);
      atomic_fetch_sub(&A.blocks, 1);
      atomic_fetch_sub(&A.bytes, (long)old);
    }
    return NULL;
  }
  if (nsize > old && atomic_load(&A.armed)) {
    long k = atomic_fetch_add(&A.count, 1) + 1;
    if (A.fail_at > 0 && (k == A.fail_at || (A.sticky && k > A.fail_at))) {
      if (atomic_fetch_add(&A.injected, 1) == 0 && shared != NULL) {
        shared->site_frames = backtrace(shared->site, MAX_FRAMES);
        shared->site_worker = !pthread_equal(pthread_self(), A.host);
      }
      return NULL;
    }
  }
  void *q = realloc(p, nsize);
  if (q == NULL) return NULL;
  if (p == NULL) atomic_fetch_add(&A.blocks, 1);
  atomic_fetch_add(&A.bytes, (long)nsize - (long)old);
  return q;
}

/* --- the log: counted, its last lines kept ------------------------------ */

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static long log_never_ran;      /* "N on_done callbacks never ran" */
static long log_callback_errs;  /* "error in an on_done callback" */
static int verbose;

static void on_log(void *ud, const char *line) {
  (void)ud;
  pthread_mutex_lock(&log_mu);
  long n;
  const char *m = strstr(line, "weft: ");
  if (m != NULL && sscanf(m, "weft: %ld on_done callbacks never ran", &n) == 1)
    log_never_ran += n;
  if (strstr(line, "error in an on_done callback") != NULL) log_callback_errs++;
  int i = shared->nlogs < LOG_TAIL ? shared->nlogs++ : LOG_TAIL - 1;
  if (i == LOG_TAIL - 1 && shared->nlogs == LOG_TAIL)
    memmove(shared->logs[0], shared->logs[1], sizeof shared->logs[0] * (LOG_TAIL - 1));
  snprintf(shared->logs[i], sizeof shared->logs[i], "%s", line);
  pthread_mutex_unlock(&log_mu);
  if (verbose) fprintf(stderr, "# log: %s\n", line);
}

static void on_panic(void *ud, const char *pool, const char *msg,
                     const char *tb) {
  (void)ud, (void)pool, (void)msg, (void)tb;  /* the panicking job: expected */
}

/* --- completions: what the script registered and what was delivered ----- */

#define MAX_TRACKED 64

static struct {
  int next;                  /* ids handed out */
  int state[MAX_TRACKED];    /* 0 unused, 1 on_done called, 2 it returned */
  int delivered[MAX_TRACKED];
  int bad[MAX_TRACKED];      /* a success with wrong values */
  long total;                /* deliveries */
} T;

static int l_next_id(lua_State *L) {
  if (T.next >= MAX_TRACKED) return luaL_error(L, "too many tracked jobs");
  lua_pushinteger(L, T.next++);
  return 1;
}

static int track_index(lua_State *L) {
  lua_Integer id = luaL_checkinteger(L, 1);
  if (id < 0 || id >= T.next) luaL_error(L, "bad tracked id");
  return (int)id;
}

static int l_note_attempt(lua_State *L) {
  T.state[track_index(L)] = 1;
  return 0;
}

static int l_note_registered(lua_State *L) {
  T.state[track_index(L)] = 2;
  return 0;
}

static int l_note_done(lua_State *L) {
  T.delivered[track_index(L)]++;
  T.total++;
  return 0;
}

static int l_note_bad(lua_State *L) {
  T.bad[track_index(L)]++;
  return 0;
}

/* Registered completions not delivered yet. */
static int undelivered(void) {
  int n = 0;
  for (int i = 0; i < T.next; i++)
    if (T.state[i] == 2 && T.delivered[i] == 0) n++;
  return n;
}

/* --- the workload ------------------------------------------------------- */

/* Run in the host state after `weft` is bound; WORKERS is the runtime's
   worker count.  Everything a job may block on is bounded (a context or a
   timeout), so that a job hit by a failure cannot hold the others up:
   the producer closes its channel whatever happens, the canceler cancels
   whatever happens. */
static const char script[] =
    "package.path = '" LUA_DIRS ";' .. package.path\n"
    "local weft = require 'weft'\n"
    "local pool = weft.default_pool()\n"
    "local bg = weft.background()\n"
    "local root, cancel_root = weft.with_cancel(bg)\n"
    "keep_cancel_root = cancel_root\n"
    /* track(f, check): on_done for f; check(results...) says whether a
       success returned what it should */
    "local function track(f, check)\n"
    "  local id = next_id()\n"
    "  local cb = function(ok, ...)\n"
    "    note_done(id)\n"
    "    if ok and not check(...) then note_bad(id) end\n"
    "  end\n"
    "  note_attempt(id)\n"
    "  f:on_done(cb)\n"
    "  note_registered(id)\n"
    "end\n"
    "track_c = function(f) track(f, function(a, b) return a == 'c' and b == 6 end) end\n"
    "local function submit(ctx, fn, ...)\n"
    "  return assert(pool:try_submit(ctx, fn, ...))\n"
    "end\n"
    /* 1. jobs with arguments and results: nested tables, a cycle */
    "local data = { name = 'data', list = { 1, 2, 3, { 4, 5, { 6 } } },\n"
    "  map = { a = { b = { c = 'deep' } } }, [1.5] = -0.0, [true] = 'yes' }\n"
    "data.self = data\n"
    "for i = 1, 6 do\n"
    "  local f = submit(root, function(ctx, i, t)\n"
    "    local s = 0\n"
    "    for _, v in ipairs(t.list) do if type(v) == 'number' then s = s + v end end\n"
    "    return i, { sum = s, echo = t, deep = t.map.a.b.c, arr = { i, { i * 2 } } }\n"
    "  end, i, data)\n"
    "  track(f, function(j, r)\n"
    "    return j == i and r.sum == 6 and r.deep == 'deep' and r.echo.self == r.echo\n"
    "      and r.echo.list[4][3][1] == 6 and r.arr[2][1] == i * 2\n"
    "      and r.echo[true] == 'yes'\n"
    "  end)\n"
    "end\n"
    /* 2. a channel between two jobs */
    "local ch = weft.chan(2)\n"
    "track(submit(root, function(ctx, ch)\n"
    "  local ok, err = pcall(function()\n"
    "    for i = 1, 8 do assert(ch:send(ctx, { i, tostring(i) })) end\n"
    "  end)\n"
    "  ch:close()\n"
    "  if not ok then error(err, 0) end\n"
    "  return 'sent'\n"
    "end, ch), function(s) return s == 'sent' end)\n"
    "track(submit(root, function(ctx, ch)\n"
    "  local sum = 0\n"
    "  for v in ch:iter(ctx) do sum = sum + v[1] + #v[2] end\n"
    "  return sum\n"
    "end, ch), function(s) return s == 36 + 8 end)\n"
    /* 3. a context canceled while jobs wait on it */
    "local wctx, wcancel = weft.with_cancel(root)\n"
    "local ready = weft.chan(4)\n"
    "for i = 1, 2 do\n"
    "  track(submit(wctx, function(ctx, ready)\n"
    "    ready:send(ctx, i)\n"
    "    ctx:wait(5)\n"
    "    return 'not canceled'\n"
    "  end, ready), function() return false end)\n"
    "end\n"
    "track(submit(root, function(ctx, wctx, ready)\n"
    "  ready:send(ctx, 3)\n"
    "  local done = wctx:wait(5)\n"
    "  return done, wctx:err()\n"
    "end, wctx, ready), function(d, e) return d == true and e == weft.CANCELED end)\n"
    "track(submit(root, function(ctx, ready, wcancel)\n"
    "  local weft = require 'weft'\n"
    "  pcall(function()\n"
    "    local t = weft.with_timeout(ctx, 0.3)\n"
    "    for _ = 1, 3 do ready:recv(t) end\n"
    "  end)\n"
    "  wcancel('done waiting')\n"
    "  return 'canceled'\n"
    "end, ready, wcancel), function(s) return s == 'canceled' end)\n"
    /* 4. weft.group and weft.map inside a job */
    "track(submit(root, function(ctx)\n"
    "  local weft = require 'weft'\n"
    "  local g = weft.group(ctx, { limit = 3 })\n"
    "  local squares = {}\n"
    "  for i = 1, 4 do g:go(function(c, i) return i * i end, i) end\n"
    "  local err = g:wait()\n"
    "  if err then error(err, 0) end\n"
    "  local r, e = weft.map(ctx, { 1, 2, 3, 4, 5 }, function(c, x)\n"
    "    return { x, { x * 2 } }\n"
    "  end)\n"
    "  if not r then error(e, 0) end\n"
    "  local s = 0\n"
    "  for _, v in ipairs(r) do s = s + v[2][1] end\n"
    "  return s\n"
    "end), function(s) return s == 30 end)\n"
    /* 5. weft.on_host, and a job that panics */
    "host_add = function(a, b) return a + b end\n"
    "track(submit(root, function(ctx)\n"
    "  local weft = require 'weft'\n"
    "  local ok, v = weft.on_host(function(x) return host_add(x, 1) end, 41)\n"
    "  if not ok then error(v, 0) end\n"
    "  return v\n"
    "end), function(v) return v == 42 end)\n"
    "track(submit(root, function() error('boom') end), function() return false end)\n"
    /* 6. on the host thread: weft.map blocks it (workers only) */
    "if WORKERS > 0 then\n"
    "  local r = assert(weft.map(root, { { 1 }, { 2 }, { 3 } }, function(c, t)\n"
    "    return { t[1] * 10 }\n"
    "  end))\n"
    "  assert(r[1][1] == 10 and r[2][1] == 20 and r[3][1] == 30)\n"
    "  local g = weft.group(root)\n"
    "  g:go(function() return 1 end)\n"
    "  assert(g:wait() == nil)\n"
    "end\n"
    /* for weft_submit from C */
    "c_job = function(ctx, t) return t.tag, t.n[1] + t.n[2][1] end\n"
    "c_arg = { tag = 'c', n = { 1, { 5 } } }\n";

/* Under lua_pcall: the standard libraries and the tracking functions. */
static int setup_k(lua_State *L) {
  luaL_openlibs(L);
  lua_register(L, "next_id", l_next_id);
  lua_register(L, "note_attempt", l_note_attempt);
  lua_register(L, "note_registered", l_note_registered);
  lua_register(L, "note_done", l_note_done);
  lua_register(L, "note_bad", l_note_bad);
  lua_pushinteger(L, lua_tointeger(L, 1));
  lua_setglobal(L, "WORKERS");
  return 0;
}

/* Under lua_pcall: the script. */
static int script_k(lua_State *L) {
  if (luaL_loadbufferx(L, script, sizeof script - 1, "=workload", "t") != LUA_OK)
    return lua_error(L);
  lua_call(L, 0, 0);
  return 0;
}

/* Under lua_pcall: 1 = rt.  weft_submit(c_job, c_arg) from C, tracked. */
static int csubmit_k(lua_State *L) {
  weft_runtime *rt = lua_touserdata(L, 1);
  lua_settop(L, 0);
  lua_getglobal(L, "c_job");
  lua_getglobal(L, "c_arg");
  int r = weft_submit(rt, L, 1);
  if (r != WEFT_OK) return lua_error(L);  /* its message */
  lua_getglobal(L, "track_c");
  lua_insert(L, -2);
  lua_call(L, 1, 0);
  return 0;
}

static void note_error(lua_State *L, const char *what) {
  if (shared->error[0] == '\0') {
    const char *m = lua_tostring(L, -1);
    snprintf(shared->error, sizeof shared->error, "%s: %s", what,
             m ? m : "(no message)");
  }
  lua_pop(L, 1);
}

static void fail(int kind, const char *fmt, ...) {
  if (shared->fail != F_NONE) return;  /* the first one */
  shared->fail = kind;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(shared->msg, sizeof shared->msg, fmt, ap);
  va_end(ap);
}

/* Polls until every registered completion is delivered, or `limit`
   seconds pass, or (once a failure was injected) nothing arrives for
   `quiet` seconds. */
static void drain(weft_runtime *rt, lua_State *L, double limit, double quiet) {
  double start = now(), last = start;
  long seen = T.total;
  while (undelivered() > 0) {
    double t = now();
    if (t - start > limit) break;
    if (atomic_load(&A.injected) > 0 && t - last > quiet) break;
    if (weft_runtime_poll(rt, L, 0, 0.002) < 0) sleep_for(0.001);
    if (T.total != seen) {
      seen = T.total;
      last = now();
    } else {
      sleep_for(0.0005);
    }
  }
}

/* Every block and byte back? */
static void check_leak(const char *when) {
  long blocks = atomic_load(&A.blocks), bytes = atomic_load(&A.bytes);
  if (blocks != 0 || bytes != 0)
    fail(F_LEAK, "%ld blocks, %ld bytes still allocated %s", blocks, bytes,
         when);
}

static void workload(int workers) {
  double t0 = now();
  A.host = pthread_self();
  atomic_store(&A.armed, 1);
  weft_config cfg;
  weft_config_init(&cfg);
  cfg.workers = workers;
  cfg.lua_path = LUA_DIRS;
  cfg.lua_cpath = "";
  cfg.alloc = counting_alloc;
  cfg.log = on_log;
  cfg.panic = on_panic;
  char err[200] = "";
  set_phase("weft_runtime_new");
  weft_runtime *rt = weft_runtime_new(&cfg, err, sizeof err);
  if (rt == NULL) {
    snprintf(shared->error, sizeof shared->error, "weft_runtime_new: %s", err);
    check_leak("after weft_runtime_new failed");
    goto out;
  }
  set_phase("lua_newstate");
  lua_State *L = lua_newstate(counting_alloc, NULL);
  if (L == NULL) {
    snprintf(shared->error, sizeof shared->error, "lua_newstate: NULL");
    set_phase("weft_runtime_close (no host state)");
    if (weft_runtime_close(rt, 1.0) != 0)
      fail(F_LEAK, "weft_runtime_close reported stuck workers");
    check_leak("after weft_runtime_close");
    goto out;
  }
  bool ready = true;
  set_phase("luaL_openlibs");
  lua_pushcfunction(L, setup_k);
  lua_pushinteger(L, workers);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    note_error(L, "setting up the host state");
    ready = false;
  }
  set_phase("weft_runtime_open");
  if (ready && weft_runtime_open(rt, L) != 0) {
    snprintf(shared->error, sizeof shared->error, "weft_runtime_open: -1");
    ready = false;
  }
  if (ready) {
    set_phase("script");
    lua_pushcfunction(L, script_k);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
      note_error(L, "script");
      ready = false;
    }
  }
  if (ready) {
    set_phase("weft_submit");
    lua_pushcfunction(L, csubmit_k);
    lua_pushlightuserdata(L, rt);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) note_error(L, "weft_submit");
  }
  set_phase("polling");
  drain(rt, L, 4.0, 0.25);
  shared->stalled = undelivered();
  set_phase("weft_runtime_close");
  int stuck = weft_runtime_close(rt, 1.0);
  if (stuck != 0)
    fail(F_LEAK, "weft_runtime_close: %d workers did not stop (their pool "
         "is leaked)", stuck);
  set_phase("polling after close");
  drain(rt, L, 1.0, 0.25);
  set_phase("checking completions");
  int lost = 0, doubled = 0, bad = 0, unasked = 0;
  for (int i = 0; i < T.next; i++) {
    if (T.delivered[i] > 1) doubled++;
    if (T.state[i] == 2 && T.delivered[i] == 0) lost++;
    if (T.state[i] == 0 && T.delivered[i] > 0) unasked++;
    if (T.bad[i] > 0) bad++;
  }
  set_phase("lua_close");
  lua_close(L);
  /* Deliveries the log accounts for: callbacks dropped with their state,
     callbacks that raised before they could count themselves.  Under
     "once" the log may also be hit by the failure itself. */
  long excused = log_never_ran + log_callback_errs;
  if (doubled > 0 || unasked > 0)
    fail(F_COMPLETION, "%d completions delivered twice, %d never registered "
         "(of %d tracked)", doubled, unasked, T.next);
  else if (lost > excused)
    fail(F_COMPLETION, "%d registered on_done callbacks never ran (the log "
         "accounts for %ld; of %d tracked, %ld delivered)", lost, excused,
         T.next, T.total);
  if (bad > 0 && atomic_load(&A.injected) == 0)
    fail(F_COMPLETION, "%d jobs returned wrong values", bad);
  else if (bad > 0)
    fail(F_COMPLETION, "%d jobs returned wrong values after the injected "
         "failure", bad);
  check_leak("after lua_close");
out:
  atomic_store(&A.armed, 0);
  shared->allocs = atomic_load(&A.count);
  shared->injected = atomic_load(&A.injected);
  shared->seconds = now() - t0;
  if (shared->fail != F_NONE)
    shared->outcome = R_FAIL;
  else if (shared->injected == 0)
    shared->outcome = R_UNTOUCHED;
  else if (shared->error[0] != '\0' || T.next == 0)
    shared->outcome = R_CLEAN_ERROR;
  else
    shared->outcome = R_ABSORBED;
  if (shared->outcome == R_UNTOUCHED && shared->error[0] != '\0') {
    /* no failure injected, yet an error: the workload itself is broken */
    shared->outcome = R_FAIL;
    shared->fail = F_COMPLETION;
    snprintf(shared->msg, sizeof shared->msg, "error without an injected "
             "failure: %s", shared->error);
  }
  if (shared->outcome == R_UNTOUCHED && (T.next == 0 || undelivered() > 0 ||
                                         shared->stalled > 0)) {
    shared->outcome = R_FAIL;
    shared->fail = F_COMPLETION;
    snprintf(shared->msg, sizeof shared->msg, "untouched run: %d tracked, "
             "%d undelivered, %ld stalled", T.next, undelivered(),
             shared->stalled);
  }
  shared->written = 1;
}

/* --- the child ------------------------------------------------------------ */

static void on_crash(int sig) {
  if (shared != NULL) {
    shared->crash_sig = sig;
    shared->crash_frames = backtrace(shared->crash, MAX_FRAMES);
  }
  signal(sig, SIG_DFL);
  raise(sig);
}

static void child_main(long n, int sticky, int workers, int watchdog) {
  signal(SIGSEGV, on_crash);
  signal(SIGBUS, on_crash);
  signal(SIGFPE, on_crash);
  signal(SIGILL, on_crash);
  signal(SIGABRT, on_crash);
  alarm((unsigned)watchdog + 2);  /* the parent normally acts first */
  A.fail_at = n;
  A.sticky = sticky;
  workload(workers);
}

/* --- the parent ------------------------------------------------------------ */

static int test_no = 0, nfailures = 0;
static int use_gdb, jobs_at_once = 2, watchdog = 10;
static char exe[4096];
static void *main_base;  /* where this program is loaded */

static void tap(int okay, const char *fmt, ...) {
  test_no++;
  printf("%s %d - ", okay ? "ok" : "not ok", test_no);
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
  fflush(stdout);
}

/* Prints frames as "#i function at file:line" (addr2line for this
   program's own code, dladdr for libraries). */
static void print_stack(const char *title, void *const *frames, int n) {
  printf("#   %s:\n", title);
  for (int i = 0; i < n; i++) {
    Dl_info info;
    char line[512] = "";
    if (dladdr(frames[i], &info) != 0 && info.dli_fname != NULL) {
      uintptr_t off = (uintptr_t)frames[i] - (uintptr_t)info.dli_fbase;
      if (i > 0) off -= 1;  /* a return address: the call is before it */
      bool own = info.dli_fbase == main_base;
      if (own) {
        char cmd[4200 + 64];
        snprintf(cmd, sizeof cmd, "addr2line -f -s -e '%s' 0x%lx 2>/dev/null",
                 exe, (unsigned long)off);
        FILE *pf = popen(cmd, "r");
        char fn[200] = "", loc[200] = "";
        if (pf != NULL) {
          if (fgets(fn, sizeof fn, pf) != NULL && fgets(loc, sizeof loc, pf) != NULL) {
            fn[strcspn(fn, "\n")] = '\0';
            loc[strcspn(loc, "\n")] = '\0';
            snprintf(line, sizeof line, "%s at %s", fn, loc);
          }
          pclose(pf);
        }
      }
      if (line[0] == '\0') {
        const char *base = strrchr(info.dli_fname, '/');
        snprintf(line, sizeof line, "%s+0x%lx (%s)",
                 info.dli_sname ? info.dli_sname : "?",
                 info.dli_sname ? (unsigned long)((uintptr_t)frames[i] -
                                                  (uintptr_t)info.dli_saddr)
                                : (unsigned long)off,
                 base ? base + 1 : info.dli_fname);
      }
    } else {
      snprintf(line, sizeof line, "%p", frames[i]);
    }
    printf("#     #%d %s\n", i, line);
  }
}

typedef struct slot {
  pid_t pid;
  long n;
  int sticky;
  double started;
  bool hung;
} slot;

typedef struct tally {
  long runs, clean, absorbed, untouched, failed;
  long by_kind[5];
  long max_allocs;
  long first_untouched;  /* the smallest N that passed untouched */
  double seconds;
} tally;

static tally tallies[2];
static int nslots;
static slot *slots;
static result *results;

static void report(slot *s, result *r, int status) {
  tally *t = &tallies[s->sticky];
  const char *policy = s->sticky ? "sticky" : "once";
  t->runs++;
  if (!r->written) {  /* died, or was killed */
    r->outcome = R_FAIL;
    if (s->hung) {
      r->fail = F_HANG;
      snprintf(r->msg, sizeof r->msg, "no end after %d s (killed)", watchdog);
    } else if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM) {
      r->fail = F_HANG;
      snprintf(r->msg, sizeof r->msg, "alarm: no end after %d s", watchdog + 2);
    } else {
      r->fail = F_CRASH;
      if (WIFSIGNALED(status))
        snprintf(r->msg, sizeof r->msg, "killed by signal %d (%s)",
                 WTERMSIG(status), strsignal(WTERMSIG(status)));
      else
        snprintf(r->msg, sizeof r->msg, "exited with status %d before the "
                 "end (a sanitizer report above?)", WEXITSTATUS(status));
    }
  }
  if (r->allocs > t->max_allocs) t->max_allocs = r->allocs;
  t->seconds += r->seconds;
  switch (r->outcome) {
    case R_UNTOUCHED:
      t->untouched++;
      if (t->first_untouched == 0 || s->n < t->first_untouched)
        t->first_untouched = s->n;
      break;
    case R_CLEAN_ERROR: t->clean++; break;
    case R_ABSORBED: t->absorbed++; break;
    default: t->failed++; t->by_kind[r->fail]++;
  }
  if (verbose)
    printf("# %s N=%ld: %s (%ld allocations, %.3f s)%s%s\n", policy, s->n,
           outcome_name[r->outcome], r->allocs, r->seconds,
           r->error[0] ? ": " : "", r->error);
  if (r->outcome != R_FAIL) return;
  nfailures++;
  tap(0, "%s N=%ld: %s: %s", policy, s->n, fail_name[r->fail], r->msg);
  printf("#   phase: %s; failure injected: %s%s\n", r->phase,
         r->injected > 0 ? "yes" : "no",
         r->site_frames > 0 ? (r->site_worker ? " (on a worker or timer "
                                                "thread)" : " (on the host thread)")
                            : "");
  if (r->error[0]) printf("#   clean error before it: %s\n", r->error);
  for (int i = 0; i < r->nlogs; i++) printf("#   log: %s\n", r->logs[i]);
  if (r->crash_frames > 0) {
    char title[64];
    snprintf(title, sizeof title, "stack at signal %d", r->crash_sig);
    print_stack(title, r->crash, r->crash_frames);
  }
  if (r->site_frames > 0)
    print_stack("the injected failure", r->site, r->site_frames);
  fflush(stdout);
}

static void reap(int i, int status) {
  report(&slots[i], &results[i], status);
  slots[i].pid = 0;
}

/* Waits for a child of a slot to end (killing it past the watchdog);
   returns the slot freed. */
static int wait_any(void) {
  for (;;) {
    int status;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      for (int i = 0; i < nslots; i++)
        if (slots[i].pid == pid) {
          reap(i, status);
          return i;
        }
      continue;
    }
    double t = now();
    for (int i = 0; i < nslots; i++) {
      slot *s = &slots[i];
      if (s->pid == 0 || s->hung || t - s->started < watchdog) continue;
      s->hung = true;
      if (use_gdb) {
        char cmd[128];
        printf("# %s N=%ld hangs in phase '%s'; its threads:\n",
               s->sticky ? "sticky" : "once", s->n, results[i].phase);
        fflush(stdout);
        snprintf(cmd, sizeof cmd, "gdb -p %d -batch -ex 'thread apply all bt' "
                 "2>/dev/null | sed 's/^/#   /' | grep -v '^#   \\[' ",
                 (int)s->pid);
        if (system(cmd) == -1) printf("#   (gdb failed)\n");
      }
      kill(s->pid, SIGKILL);
    }
    sleep_for(0.0005);
  }
}

static int workers_cfg = 2;

static void launch(long n, int sticky) {
  int i = 0;
  while (i < nslots && slots[i].pid != 0) i++;
  if (i == nslots) i = wait_any();
  memset(&results[i], 0, sizeof results[i]);
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) {
    perror("fork");
    exit(2);
  }
  if (pid == 0) {
    shared = &results[i];
    child_main(n, sticky, workers_cfg, watchdog);
    _exit(0);
  }
  slots[i] = (slot){pid, n, sticky, now(), false};
}

static void wait_all(void) {
  for (;;) {
    bool any = false;
    for (int i = 0; i < nslots; i++) any |= slots[i].pid != 0;
    if (!any) return;
    wait_any();
  }
}

static long env_long(const char *name, long def) {
  const char *v = getenv(name);
  return v != NULL && v[0] != '\0' ? strtol(v, NULL, 10) : def;
}

/* One run of N in this process (ALLOCFAIL_N): for gdb and sanitizers. */
static int run_one(long n, int sticky) {
  static result r;
  shared = &r;
  verbose = 1;
  A.fail_at = n;
  A.sticky = sticky;
  workload(workers_cfg);
  printf("# N=%ld (%s): %s; %ld allocations, %ld injected, %.3f s; phase %s; "
         "%d jobs tracked, %ld completions delivered, %ld needed close\n",
         n, sticky ? "sticky" : "once", outcome_name[r.outcome], r.allocs,
         r.injected, r.seconds, r.phase, T.next, T.total, r.stalled);
  if (r.error[0]) printf("# error: %s\n", r.error);
  if (r.outcome == R_FAIL) printf("# %s: %s\n", fail_name[r.fail], r.msg);
  if (r.site_frames > 0) print_stack("the injected failure", r.site, r.site_frames);
  tap(r.outcome != R_FAIL, "N=%ld", n);
  printf("1..%d\n", test_no);
  return r.outcome == R_FAIL ? 1 : 0;
}

/* Sweeps one policy: every N in [from, dense], then a jittered stride up
   to `to` (and on past it while runs are still touched). */
static void sweep(int sticky, long from, long dense, long to, long stride) {
  long n = from;
  long k = 0;
  while (n <= to) {
    launch(n, sticky);
    if (n < dense || stride <= 1) {
      n++;
    } else {
      k++;
      /* a stride with a deterministic jitter of up to half of it */
      n += stride + (long)((k * 7919) % (stride / 2 + 1)) - stride / 4;
      if (n <= dense) n = dense + 1;
    }
  }
  wait_all();
}

int main(void) {
  verbose = env_long("ALLOCFAIL_VERBOSE", 0) != 0;
  use_gdb = env_long("ALLOCFAIL_GDB", 0) != 0;
  workers_cfg = (int)env_long("ALLOCFAIL_WORKERS", 2);
  watchdog = (int)env_long("ALLOCFAIL_TIMEOUT", 10);
  const char *pol = getenv("ALLOCFAIL_POLICY");
  bool do_once = pol == NULL || strcmp(pol, "sticky") != 0;
  bool do_sticky = pol == NULL || strcmp(pol, "once") != 0;
  ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  exe[len > 0 ? len : 0] = '\0';
  Dl_info self;
  if (dladdr((void *)&tap, &self) != 0) main_base = self.dli_fbase;
  void *warm[4];
  backtrace(warm, 4);  /* loads libgcc now, not in a child's allocator */
  setvbuf(stdout, NULL, _IOLBF, 0);

  long single = env_long("ALLOCFAIL_N", -1);
  if (single >= 0) return run_one(single, do_sticky && !do_once);

  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  jobs_at_once = (int)env_long("ALLOCFAIL_JOBS", ncpu < 1 ? 1 : ncpu > 4 ? 4 : ncpu);
  nslots = jobs_at_once;
  slots = calloc((size_t)nslots, sizeof *slots);
  results = mmap(NULL, sizeof(result) * (size_t)nslots, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (slots == NULL || results == MAP_FAILED) {
    perror("allocfail");
    return 2;
  }
  double t0 = now();
  printf("# allocation-failure sweep: %d workers%s, %d children at once, "
         "watchdog %d s\n", workers_cfg, workers_cfg == 0 ? " (cooperative)" : "",
         nslots, watchdog);

  /* untouched runs: the allocation count T, the time of one run */
  long base_max = 0, base_min = 0;
  double base_time = 0;
  int base_ok = 1;
  for (int i = 0; i < 3; i++) {
    memset(&tallies[0], 0, sizeof tallies[0]);
    launch(0, 0);
    wait_all();
    result *r = &results[0];
    if (r->outcome != R_UNTOUCHED) base_ok = 0;
    if (r->allocs > base_max) base_max = r->allocs;
    if (base_min == 0 || r->allocs < base_min) base_min = r->allocs;
    base_time += r->seconds / 3;
  }
  memset(tallies, 0, sizeof tallies);
  tap(base_ok, "untouched workload: completes, every completion delivered, "
      "nothing leaked (%ld to %ld allocations, %.0f ms a run)", base_min,
      base_max, base_time * 1e3);
  if (!base_ok) {
    printf("1..%d\n", test_no);
    return 1;
  }

  /* the plan: how many runs fit in the budget */
  long to = base_max + base_max / 50 + 20;  /* past T: runs pass untouched */
  long from = env_long("ALLOCFAIL_FROM", 1);
  to = env_long("ALLOCFAIL_TO", to);
  long span = to - from + 1;
  bool full = env_long("ALLOCFAIL_FULL", 0) != 0;
  double budget = (double)env_long("ALLOCFAIL_BUDGET", 80);
  /* a run with a failure often takes longer than an untouched one */
  double per_run = base_time * 1.3 + 0.004;
  long runs = (long)(budget * nslots / per_run);
  int npolicies = do_once + do_sticky;
  long runs_once = do_sticky && do_once ? runs * 2 / 3 : runs;
  long runs_sticky = runs - (do_once ? runs_once : 0);
  for (int sticky = 0; sticky <= 1; sticky++) {
    if (sticky ? !do_sticky : !do_once) continue;
    long budget_runs = sticky ? runs_sticky : runs_once;
    long dense = to, stride = 1;
    if (!full && budget_runs < span) {
      dense = from - 1 + budget_runs / 3;  /* every N up to here ... */
      stride = (to - dense) / (budget_runs - budget_runs / 3);  /* ... then */
      if (stride < 2) stride = 2;
    }
    if (dense >= to)
      printf("# %s: every N from %ld to %ld\n", sticky ? "sticky" : "once",
             from, to);
    else
      printf("# %s: every N from %ld to %ld, then every ~%ld-th (jittered) up "
             "to %ld (the time budget: ALLOCFAIL_FULL=1 sweeps them all)\n",
             sticky ? "sticky" : "once", from, dense, stride, to);
    double ts = now();
    sweep(sticky, from, dense, to, stride);
    tally *t = &tallies[sticky];
    printf("# %s: %ld runs in %.1f s\n", sticky ? "sticky" : "once", t->runs,
           now() - ts);
  }
  (void)npolicies;

  /* the summary */
  long swept = 0, clean = 0, untouched = 0, failed = 0, absorbed = 0;
  long kinds[5] = {0};
  for (int s = 0; s <= 1; s++) {
    tally *t = &tallies[s];
    if (t->runs == 0) continue;
    printf("# %s: %ld runs: %ld clean errors, %ld absorbed (the failure "
           "surfaced nowhere: a retry or a recovery), %ld passed untouched "
           "(first at N=%ld), %ld failures\n", s ? "sticky" : "once", t->runs,
           t->clean, t->absorbed, t->untouched, t->first_untouched, t->failed);
    swept += t->runs;
    clean += t->clean + t->absorbed;
    absorbed += t->absorbed;
    untouched += t->untouched;
    failed += t->failed;
    for (int k = 0; k < 5; k++) kinds[k] += t->by_kind[k];
  }
  printf("# swept %ld allocation sites: %ld clean errors, %ld passed "
         "untouched, %ld failures (clean errors include %ld absorbed "
         "failures); %.1f s\n", swept, clean, untouched, failed, absorbed,
         now() - t0);
  bool reached_end = true;
  for (int s = 0; s <= 1; s++)
    if (tallies[s].runs > 0 && tallies[s].untouched == 0 &&
        env_long("ALLOCFAIL_TO", 0) == 0)
      reached_end = false;
  tap(reached_end, "the sweep went past the workload's last allocation "
      "(runs passed untouched)");
  tap(kinds[F_CRASH] == 0, "no crash (%ld)", kinds[F_CRASH]);
  tap(kinds[F_HANG] == 0, "no hang (%ld)", kinds[F_HANG]);
  tap(kinds[F_LEAK] == 0, "no leak (%ld)", kinds[F_LEAK]);
  tap(kinds[F_COMPLETION] == 0, "no lost or doubled completion, no wrong "
      "result (%ld)", kinds[F_COMPLETION]);
  printf("1..%d\n", test_no);
  return failed == 0 ? 0 : 1;
}
