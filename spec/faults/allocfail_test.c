/*
** allocfail_test.c: an allocation-failure sweep of the embedding API
** (issue 8, item 2).  Prints TAP.
**
** One counting allocator is every allocator weft and Lua use here: the
** runtime's cfg.alloc (the engine's own memory and, through the engine,
** every worker state's) and the host state's (lua_newstate).  Once armed
** it counts every request for memory (a new block, or a block grown;
** frees and shrinks are never failed: real allocators do not fail them)
** from every thread (an atomic counter) and fails the Nth.  Both policies
** run, "once" with two thirds of the time:
**
**   once    only the Nth request fails; the next one succeeds.  The policy
**           that finds the bugs of recovery paths: the program goes on
**           after the failure, so a missing check, a half-made object or a
**           lost wake-up shows up as a crash, a leak, a hang or a lost
**           completion.  Lua absorbs most of its own failures (an
**           emergency collection, then a retry), so this mostly exercises
**           the engine's own checks.
**   sticky  the Nth request and every one after it fail: Lua's error
**           paths everywhere, and shutdown with no memory at all.
**
** For each N a fixed workload runs from scratch in a forked child (a crash
** or hang of one N is reported with its N and the sweep goes on): a
** runtime (2 workers; ALLOCFAIL_WORKERS=0: cooperative), a host state
** bound to it, and a script that submits jobs with arguments and results,
** copies nested tables (a cycle included) both ways, cancels a context
** while jobs wait on it, passes values between two jobs through a
** channel, runs weft.group and weft.map (inside a job; with workers, on
** the host thread too), asks the host through weft.on_host, lets a job
** panic and registers future:on_done for every job it submits (one from C
** through weft_submit).  The host polls until every completion is in,
** starts two jobs that are still running when it closes (one parked, one
** spinning: stopped by hard cancel), calls weft_runtime_close, polls the
** completions of the stopped jobs, and calls lua_close.  A run must end
** cleanly:
**
**   - no crash (a signal, a sanitizer report) and no hang (the parent
**     kills a child after ALLOCFAIL_TIMEOUT seconds, 10 by default; the
**     child's alarm() is a backstop);
**   - no leak: once lua_close returns, every block and byte the allocator
**     handed out is back (weft_runtime_close reporting stuck workers, whose
**     pool it then leaks on purpose, counts as a leak: no job here is stuck
**     in C).  One exception, under "sticky" only: when Lua could not even
**     call a __gc metamethod ("error in __gc (not enough memory)" in a
**     state's warnings), the engine object that handle held is never
**     released; that is Lua's limit, counted apart and not a failure;
**   - no lost or doubled completion: under "once", every on_done whose
**     registration returned runs exactly once by the end of the polls
**     after close (also when the script failed half-way: what it
**     registered still comes; a "not enough memory" logged in place of a
**     callback is a lost completion); under "sticky", where no Lua code
**     can run any more (not a poll, not a callback), none runs twice; a
**     job that succeeded returned the right values.
**
** An error is a clean outcome: weft_runtime_new returning NULL, a submit
** returning an error, "not enough memory" raised in the script or in a
** job.  "Absorbed" counts the clean runs where the failure surfaced
** nowhere (Lua retried, or the engine recovered).
**
** The sweep: untouched runs first count the allocations the workload makes
** (T; it varies a little with the threads).  Each policy then runs every
** N from 1 for a quarter of its time (start-up), every N of the last few
** hundred up to T plus a margin for another quarter (shutdown: the jobs
** close stops, close, lua_close; the last runs, past T, pass untouched),
** and samples the rest in between, with strides fitted to the time left
** (recomputed as it goes, and jittered so that they cannot alias a
** periodic pattern of allocations).  Settings (environment):
**
**   ALLOCFAIL_POLICY   once, sticky or both (default once; CI runs both,
**                      which splits the budget)
**   ALLOCFAIL_WORKERS  workers of the runtime (default 2; 0: cooperative)
**   ALLOCFAIL_BUDGET   seconds for the sweeps (default 40)
**   ALLOCFAIL_FULL=1   every N, no time budget (some minutes)
**   ALLOCFAIL_FROM, ALLOCFAIL_TO  only N in [FROM, TO]
**   ALLOCFAIL_JOBS     children at once (default twice the CPU count, at
**                      most 8: a run mostly waits)
**   ALLOCFAIL_N=k      N=k once, in this process (no fork), verbose: for
**                      gdb or a sanitizer (ALLOCFAIL_POLICY=sticky for that)
**   ALLOCFAIL_GDB=1    on a hang, every thread's stack (gdb -p)
**   ALLOCFAIL_VERBOSE=1  a line per run
**
** Each failing N gets a "not ok" line; the first of each kind of failure
** (its kind, its message without numbers, the engine frame that crashed or
** whose allocation was failed) also gets the phase, the log's last lines
** and the stacks of the crash and of the injected failure (symbolized with
** addr2line); the summary lists the kinds with their Ns.  The injected
** failure's N is not exactly reproducible with worker threads (they
** allocate concurrently): its stack is what identifies the site.
**
** Built like the other C tests (every engine source file, Lua 5.4, -lm,
** -pthread; -fsanitize=address,undefined for a sanitized run) and run
** from the repository root, where the worker states find lua/weft/.
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
  unsigned long long stalled_ids;  /* which tracked jobs (bit per id) */
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
  int gc_leak;               /* a leak that Lua's failed __gc explains */
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
static long gc_errors;          /* "error in __gc": a finalizer did not run */
static int verbose;
/* How much slower than a plain build this one runs (valgrind, sanitizers):
   the bounds of a run's waits are multiplied by it.  Measured by the
   parent's untouched runs, which use a generous 10 meanwhile. */
static double slow = 1;

static void on_log(void *ud, const char *line) {
  (void)ud;
  pthread_mutex_lock(&log_mu);
  long n;
  const char *m = strstr(line, "weft: ");
  if (m != NULL && sscanf(m, "weft: %ld on_done callbacks never ran", &n) == 1)
    log_never_ran += n;
  if (strstr(line, "error in an on_done callback") != NULL) log_callback_errs++;
  if (strstr(line, "error in __gc") != NULL) gc_errors++;
  int i = shared->nlogs;
  if (i == LOG_TAIL)  /* full: the oldest line goes */
    memmove(shared->logs[0], shared->logs[1], sizeof shared->logs[0] * --i);
  else
    shared->nlogs++;
  snprintf(shared->logs[i], sizeof shared->logs[i], "%s", line);
  pthread_mutex_unlock(&log_mu);
  if (verbose) fprintf(stderr, "# log: %s\n", line);
}

/* The host state's warnings (errors in __gc among them): to the log. */
static void host_warn(void *ud, const char *msg, int tocont) {
  static char line[256];
  static size_t len;
  (void)ud;
  size_t n = strlen(msg);
  if (n > sizeof line - 1 - len) n = sizeof line - 1 - len;
  memcpy(line + len, msg, n);
  len += n;
  line[len] = '\0';
  if (tocont) return;
  len = 0;
  if (line[0] == '@') return;  /* control messages */
  char full[300];
  snprintf(full, sizeof full, "host state: warning: %s", line);
  on_log(NULL, full);
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
  int expect[MAX_TRACKED];   /* E_OK, E_FAIL, E_LINGER */
  long total;                /* deliveries */
  long unexpected;           /* outcomes other than the expected one */
  bool closed;               /* weft_runtime_close was called */
} T;

/* What a tracked job should end with: success; an error; an error that
   only close brings (the job is still running when the host closes). */
enum { E_OK, E_FAIL, E_LINGER };

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

/* note_attempt(id, expect) */
static int l_note_attempt(lua_State *L) {
  int id = track_index(L);
  T.state[id] = 1;
  T.expect[id] = (int)luaL_checkinteger(L, 2);
  return 0;
}

static int l_note_registered(lua_State *L) {
  T.state[track_index(L)] = 2;
  return 0;
}

/* note_done(id, ok) */
static int l_note_done(lua_State *L) {
  int id = track_index(L);
  bool ok = lua_toboolean(L, 2);
  T.delivered[id]++;
  T.total++;
  if (ok != (T.expect[id] == E_OK) || (T.expect[id] == E_LINGER && !T.closed))
    T.unexpected++;
  return 0;
}

static int l_note_bad(lua_State *L) {
  T.bad[track_index(L)]++;
  return 0;
}

/* injected(): whether a failure was injected so far */
static int l_injected(lua_State *L) {
  lua_pushboolean(L, atomic_load(&A.injected) > 0);
  return 1;
}

/* Registered completions not delivered yet (those of the jobs that run
   until close only once close was called). */
static int undelivered(void) {
  int n = 0;
  for (int i = 0; i < T.next; i++)
    if (T.state[i] == 2 && T.delivered[i] == 0 &&
        (T.expect[i] != E_LINGER || T.closed))
      n++;
  return n;
}

/* --- the workload ------------------------------------------------------- */

/* Run in the host state once it is bound to the runtime; WORKERS is the
   runtime's worker count.  A job hit by a failure must not hold the others
   up forever (that would read as a stall, not as the engine's fault): the
   producer and the consumer close their channel whatever happens, the
   canceler cancels whatever happens, the host's on_fail does the same for
   a job that could not even start, and the host cancels the script's root
   context when the script fails half-way (cancel_root_k). */
static const char script[] =
    "package.path = '" LUA_DIRS ";' .. package.path\n"
    "local weft = require 'weft'\n"
    "local pool = weft.default_pool()\n"
    "local bg = weft.background()\n"
    "local root, cancel_root = weft.with_cancel(bg)\n"
    "keep_cancel_root = cancel_root\n"
    /* track(f, check, expect, on_fail): on_done for f; check(results...)
       says whether a success returned what it should; expect: nil
       (success), 'fail', or 'linger' (still running at close: fails
       then); on_fail() runs when the job failed, as a host unblocks what
       depended on a job that could not even start */
    "local EXPECT = { fail = 1, linger = 2 }\n"
    "local function track(f, check, expect, on_fail)\n"
    "  local id = next_id()\n"
    "  local cb = function(ok, ...)\n"
    "    note_done(id, ok)\n"
    "    if not ok and on_fail then on_fail() end\n"
    "    if ok and check and not check(...) then note_bad(id) end\n"
    "  end\n"
    "  note_attempt(id, EXPECT[expect] or 0)\n"
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
    "end, ch), function(s) return s == 'sent' end, nil, function() ch:close() end)\n"
    /* the consumer checks each message; it sees fewer than 8 only when
       the producer failed (a failure was injected); it closes the channel
       whatever happens, so that the producer never waits for it forever */
    "track(submit(root, function(ctx, ch)\n"
    "  local n, sum = 0, 0\n"
    "  local ok, err = pcall(function()\n"
    "    for v in ch:iter(ctx) do\n"
    "      n = n + 1\n"
    "      assert(v[1] == n and v[2] == tostring(n), 'message out of order')\n"
    "      sum = sum + v[1]\n"
    "    end\n"
    "  end)\n"
    "  ch:close()\n"
    "  if not ok then error(err, 0) end\n"
    "  return n, sum\n"
    "end, ch), function(n, s)\n"
    "  return s == n * (n + 1) // 2 and (n == 8 or injected())\n"
    "end, nil, function() ch:close() end)\n"
    /* 3. a context canceled while jobs wait on it */
    "local wctx, wcancel = weft.with_cancel(root)\n"
    "local ready = weft.chan(4)\n"
    "for i = 1, 2 do\n"
    "  track(submit(wctx, function(ctx, ready)\n"
    "    ready:send(ctx, i)\n"
    "    ctx:wait(5)\n"
    "    return 'not canceled'\n"
    "  end, ready), nil, 'fail')\n"
    "end\n"
    "track(submit(root, function(ctx, wctx, ready)\n"
    "  ready:send(ctx, 3)\n"
    "  local done = wctx:wait(5)\n"
    "  return done, wctx:err()\n"
    "end, wctx, ready), function(d, e) return d == true and e == weft.CANCELED end)\n"
    "track(submit(root, function(ctx, ready, wcancel)\n"
    "  local weft = require 'weft'\n"
    "  pcall(function()\n"
    "    local t = weft.with_timeout(ctx, 0.1)\n"
    "    for _ = 1, 3 do ready:recv(t) end\n"
    "  end)\n"
    "  if not pcall(wcancel, 'done waiting') then wcancel() end\n"
    "  return 'canceled'\n"
    "end, ready, wcancel), function(s) return s == 'canceled' end, nil,\n"
    "  function() wcancel() end)\n"
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
    "track(submit(root, function() error('boom') end), nil, 'fail')\n"
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
    /* 7. called by the host once everything above is delivered: jobs
       still running when it closes, one parked and one spinning (stopped
       by hard cancel); started() is the harness's, in every worker */
    "function linger()\n"
    "  track(submit(root, function(ctx)\n"
    "    started()\n"
    "    require('weft').sleep(ctx, 30)\n"
    "    return 'woke'\n"
    "  end), nil, 'linger')\n"
    "  track(submit(root, function() started() SPIN end), nil, 'linger')\n"
    "end\n"
    /* for weft_submit from C */
    "c_job = function(ctx, t) return t.tag, t.n[1] + t.n[2][1] end\n"
    "c_arg = { tag = 'c', n = { 1, { 5 } } }\n";

/* started(), in worker states: a lingering job began. */
static atomic_int nstarted;

static int l_started(lua_State *L) {
  (void)L;
  atomic_fetch_add(&nstarted, 1);
  return 0;
}

static void init_worker(lua_State *L, void *ud) {
  (void)ud;
  lua_register(L, "started", l_started);
}

/* Under lua_pcall: cancels the script's root context, if it made one. */
static int cancel_root_k(lua_State *L) {
  if (lua_getglobal(L, "keep_cancel_root") != LUA_TNIL) lua_call(L, 0, 0);
  return 0;
}

/* Under lua_pcall: the lingering jobs. */
static int linger_k(lua_State *L) {
  lua_getglobal(L, "linger");
  lua_call(L, 0, 0);
  return 0;
}

/* Under lua_pcall: the standard libraries and the tracking functions. */
static int setup_k(lua_State *L) {
  luaL_openlibs(L);
  lua_register(L, "next_id", l_next_id);
  lua_register(L, "note_attempt", l_note_attempt);
  lua_register(L, "note_registered", l_note_registered);
  lua_register(L, "note_done", l_note_done);
  lua_register(L, "note_bad", l_note_bad);
  lua_register(L, "injected", l_injected);
  lua_pushinteger(L, lua_tointeger(L, 1));
  lua_setglobal(L, "WORKERS");
  return 0;
}

/* The spinning job's loop.  Under ThreadSanitizer a signal reaches a
   thread only at an intercepted call, so there (the test runner sets
   SANITIZED) the loop makes one (clock_gettime), without allocating: the
   allocations of a loop would make the workload's count vary. */
static const char *spin_body(void) {
  const char *san = getenv("SANITIZED");
  return san != NULL && san[0] != '\0'
             ? "local now = require('weft').now while true do now() end"
             : "local n = 0 while true do n = n + 1 end";
}

/* Under lua_pcall: the script (SPIN replaced by spin_body()). */
static int script_k(lua_State *L) {
  luaL_Buffer b;
  const char *at = strstr(script, "SPIN");
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, script, (size_t)(at - script));
  luaL_addstring(&b, spin_body());
  luaL_addstring(&b, at + 4);
  luaL_pushresult(&b);
  size_t len;
  const char *chunk = lua_tolstring(L, -1, &len);
  if (luaL_loadbufferx(L, chunk, len, "=workload", "t") != LUA_OK)
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
    /* only a string is read: converting anything else could allocate */
    const char *m = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
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

/* Every block and byte back?  Under "sticky", Lua cannot call a __gc
   metamethod once even its call frame cannot be allocated ("error in
   __gc (not enough memory)"), and the engine object that handle held is
   then never released: Lua's limit, not the engine's, so such a leak is
   counted apart, not as a failure. */
static void check_leak(const char *when) {
  long blocks = atomic_load(&A.blocks), bytes = atomic_load(&A.bytes);
  if (blocks == 0 && bytes == 0) return;
  if (A.sticky && gc_errors > 0 && shared->fail == F_NONE) {
    shared->gc_leak = 1;
    snprintf(shared->msg, sizeof shared->msg, "%ld blocks, %ld bytes still "
             "allocated %s, after %ld __gc calls failed", blocks, bytes, when,
             gc_errors);
    return;
  }
  fail(F_LEAK, "%ld blocks, %ld bytes still allocated %s%s", blocks, bytes,
       when, blocks == 0 ? " (every block freed: a free was given the wrong "
                           "size)" : "");
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
  cfg.init_state = init_worker;
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
    if (weft_runtime_close(rt, 2.0 * slow) != 0)
      fail(F_LEAK, "weft_runtime_close reported stuck workers");
    check_leak("after weft_runtime_close");
    goto out;
  }
  lua_setwarnf(L, host_warn, NULL);
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
      /* as a host would: what the script started under its root context
         ends (a job may wait for one the script never submitted) */
      lua_pushcfunction(L, cancel_root_k);
      if (lua_pcall(L, 0, 0, 0) != LUA_OK) lua_pop(L, 1);
    }
  }
  if (ready) {
    set_phase("weft_submit");
    lua_pushcfunction(L, csubmit_k);
    lua_pushlightuserdata(L, rt);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) note_error(L, "weft_submit");
  }
  set_phase("polling");
  drain(rt, L, 4.0 * slow, 0.25 * slow);
  shared->stalled = undelivered();
  for (int i = 0; i < T.next && i < 64; i++)
    if (T.state[i] == 2 && T.delivered[i] == 0 && T.expect[i] != E_LINGER)
      shared->stalled_ids |= 1ULL << i;
  if (ready) {
    set_phase("lingering jobs");
    lua_pushcfunction(L, linger_k);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) note_error(L, "linger");
    /* until each one submitted runs, or has ended (a failure), or (once
       a failure was injected) nothing happens for a while; polls run them
       in cooperative mode */
    double end = now() + 1.0 * slow, last = now();
    int seen = 0;
    for (;;) {
      int submitted = 0, ended = 0;
      for (int i = 0; i < T.next; i++)
        if (T.expect[i] == E_LINGER && T.state[i] > 0) {
          submitted++;
          ended += T.delivered[i] > 0;
        }
      int progress = atomic_load(&nstarted) + ended;
      if (progress >= submitted || now() > end) break;
      if (progress != seen) {
        seen = progress;
        last = now();
      } else if (atomic_load(&A.injected) > 0 && now() - last > 0.25 * slow) {
        break;
      }
      if (weft_runtime_poll(rt, L, 0, 0.002) < 0) sleep_for(0.001);
      sleep_for(0.0005);
    }
  }
  set_phase("weft_runtime_close");
  T.closed = true;
  int stuck = weft_runtime_close(rt, 2.0 * slow);
  if (stuck != 0)
    fail(F_LEAK, "weft_runtime_close: %d workers did not stop (their pool "
         "is leaked)", stuck);
  set_phase("polling after close");
  drain(rt, L, 2.0 * slow, 0.1 * slow);
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
  /* Under "sticky" no Lua code can run once memory is gone for good: not
     a poll, not a callback, not even the __gc that would log the
     callbacks dropped with the state; a completion not delivered then is
     not the engine's fault (a double one still is).  Under "once" memory
     comes back at once, and the first thing a callback does is count
     itself: every registered callback must run, and a "not enough
     memory" logged in its place is a lost completion. */
  long excused = A.sticky ? lost : 0;
  if (doubled > 0 || unasked > 0)
    fail(F_COMPLETION, "%d completions delivered twice, %d never registered "
         "(of %d tracked)", doubled, unasked, T.next);
  else if (lost > excused)
    fail(F_COMPLETION, "%d registered on_done callbacks never ran (%s%ld "
         "callbacks, %ld dropped with their state; of %d tracked, %ld "
         "delivered)", lost, A.sticky ? "the log accounts for: " : "the log "
         "reports errors in place of ", log_callback_errs, log_never_ran,
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
  else if (shared->error[0] != '\0' || T.next == 0 || T.unexpected > 0)
    shared->outcome = R_CLEAN_ERROR;  /* the script, or a job, failed */
  else
    shared->outcome = R_ABSORBED;
  if (shared->outcome == R_UNTOUCHED && shared->error[0] != '\0') {
    /* no failure injected, yet an error: the workload itself is broken */
    shared->outcome = R_FAIL;
    shared->fail = F_COMPLETION;
    snprintf(shared->msg, sizeof shared->msg, "error without an injected "
             "failure: %s", shared->error);
  }
  if (shared->outcome == R_UNTOUCHED &&
      (T.next == 0 || undelivered() > 0 || shared->stalled > 0 ||
       T.unexpected > 0)) {
    shared->outcome = R_FAIL;
    shared->fail = F_COMPLETION;
    snprintf(shared->msg, sizeof shared->msg, "untouched run: %d tracked, "
             "%d undelivered, %ld needed close, %ld unexpected outcomes",
             T.next, undelivered(), shared->stalled, T.unexpected);
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

static void child_main(long n, int sticky, int workers, int limit) {
  signal(SIGSEGV, on_crash);
  signal(SIGBUS, on_crash);
  signal(SIGFPE, on_crash);
  signal(SIGILL, on_crash);
  signal(SIGABRT, on_crash);
  alarm((unsigned)limit + 2);  /* the parent normally acts first */
  A.fail_at = n;
  A.sticky = sticky;
  workload(workers);
}

/* --- the parent ------------------------------------------------------------ */

static int test_no = 0, nfailures = 0;
static int use_gdb, watchdog = 10;
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

/* Symbolizes frames into out[i] ("function at file:line" for this
   program's own code, by one addr2line call; "symbol+off (library)" from
   dladdr for the rest). */
static void symbolize(void *const *frames, int n, char out[][160]) {
  char cmd[8192];
  int len = snprintf(cmd, sizeof cmd, "addr2line -f -s -e '%s'", exe);
  int own[MAX_FRAMES], nown = 0;
  for (int i = 0; i < n && i < MAX_FRAMES; i++) {
    Dl_info info;
    out[i][0] = '\0';
    if (dladdr(frames[i], &info) == 0 || info.dli_fname == NULL) {
      snprintf(out[i], 160, "%p", frames[i]);
      continue;
    }
    uintptr_t off = (uintptr_t)frames[i] - (uintptr_t)info.dli_fbase;
    if (i > 0) off -= 1;  /* a return address: the call is just before */
    if (info.dli_fbase == main_base && len < (int)sizeof cmd - 24) {
      len += snprintf(cmd + len, sizeof cmd - (size_t)len, " 0x%lx",
                      (unsigned long)off);
      own[nown++] = i;
    }
    const char *base = strrchr(info.dli_fname, '/');
    if (info.dli_sname != NULL)
      snprintf(out[i], 160, "%s+0x%lx (%s)", info.dli_sname,
               (unsigned long)((uintptr_t)frames[i] - (uintptr_t)info.dli_saddr),
               base ? base + 1 : info.dli_fname);
    else
      snprintf(out[i], 160, "?+0x%lx (%s)", (unsigned long)off,
               base ? base + 1 : info.dli_fname);
  }
  if (nown == 0) return;
  snprintf(cmd + len, sizeof cmd - (size_t)len, " 2>/dev/null");
  FILE *pf = popen(cmd, "r");
  if (pf == NULL) return;
  char fn[80], loc[72];
  for (int k = 0; k < nown; k++) {
    if (fgets(fn, sizeof fn, pf) == NULL || fgets(loc, sizeof loc, pf) == NULL)
      break;
    fn[strcspn(fn, "\n")] = '\0';
    loc[strcspn(loc, "\n")] = '\0';
    if (strcmp(fn, "??") != 0) snprintf(out[own[k]], 160, "%s at %s", fn, loc);
  }
  pclose(pf);
}

static void print_stack(const char *title, void *const *frames, int n) {
  char lines[MAX_FRAMES][160];
  symbolize(frames, n, lines);
  printf("#   %s:\n", title);
  for (int i = 0; i < n && i < MAX_FRAMES; i++)
    printf("#     #%d %s\n", i, lines[i]);
}

/* The first frame of a stack that is the engine's (not the allocators',
   the handlers' or Lua's), for grouping failures. */
static void first_engine_frame(void *const *frames, int n, char *out,
                               size_t cap) {
  char lines[MAX_FRAMES][160];
  symbolize(frames, n, lines);
  snprintf(out, cap, "?");
  for (int i = 0; i < n && i < MAX_FRAMES; i++) {
    const char *l = lines[i];
    if (strstr(l, " at ") == NULL || strncmp(l, "counting_alloc", 14) == 0 ||
        strncmp(l, "on_crash", 8) == 0 || strncmp(l, "weft_alloc ", 11) == 0 ||
        strncmp(l, "weft_realloc", 12) == 0 || strncmp(l, "worker_alloc", 12) == 0)
      continue;
    snprintf(out, cap, "%.159s", l);
    return;
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
  long runs, clean, absorbed, untouched, failed, gc_leaks;
  long by_kind[5];
  long max_allocs;
  long first_untouched;  /* the smallest N that passed untouched */
  long stalls;           /* clean runs where a job ended only at close */
  long stall_ns[8];
  char stall_what[8][256];  /* the jobs, and where the failure was */
  long dense_to;         /* every N up to here, */
  long tail_from;        /* from here to the end with this stride, */
  long tail_stride;
  long stride;           /* in between with this one (the widest) */
} tally;

static tally tallies[2];

/* Failures grouped by what they look like: the kind, the message without
   its numbers, and the engine frame that crashed (or, for a leak of
   blocks, the engine frame whose allocation was failed).  The details
   are printed for the first of a group only. */
#define MAX_GROUPS 64
static struct group {
  char sig[400];
  long count;
  int sticky;
  long ns[12];
} groups[MAX_GROUPS];
static int ngroups;

static struct group *group_of(const char *sig, int sticky, bool *first) {
  for (int i = 0; i < ngroups; i++)
    if (groups[i].sticky == sticky && strcmp(groups[i].sig, sig) == 0) {
      *first = false;
      return &groups[i];
    }
  *first = true;
  if (ngroups == MAX_GROUPS) return NULL;
  struct group *g = &groups[ngroups++];
  snprintf(g->sig, sizeof g->sig, "%s", sig);
  g->sticky = sticky;
  return g;
}
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
                 "end (a sanitizer report on stderr?)", WEXITSTATUS(status));
    }
  }
  if (r->allocs > t->max_allocs) t->max_allocs = r->allocs;
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
  if (r->gc_leak) t->gc_leaks++;
  if (r->outcome != R_FAIL && r->stalled > 0) {
    if (t->stalls < 8 && !s->sticky) {
      char frame[160] = "?", ids[64] = "", *o = ids;
      if (r->site_frames > 0)
        first_engine_frame(r->site, r->site_frames, frame, sizeof frame);
      for (int i = 0; i < 64 && o < ids + sizeof ids - 4; i++)
        if (r->stalled_ids >> i & 1) o += snprintf(o, 4, "%s%d", o == ids ? "" : ",", i);
      t->stall_ns[t->stalls] = s->n;
      snprintf(t->stall_what[t->stalls], sizeof t->stall_what[0],
               "jobs %s; failure in %s", ids, frame);
    }
    t->stalls++;
  }
  if (verbose)
    printf("# %s N=%ld: %s (%ld allocations, %.3f s)%s%s%s%s\n", policy, s->n,
           outcome_name[r->outcome], r->allocs, r->seconds,
           r->error[0] ? ": " : "", r->error, r->gc_leak ? "; " : "",
           r->gc_leak ? r->msg : "");
  if (r->outcome != R_FAIL) return;
  nfailures++;
  tap(0, "%s N=%ld: %s: %s", policy, s->n, fail_name[r->fail], r->msg);
  char sig[400], frame[160] = "", *o = sig;
  o += snprintf(sig, sizeof sig, "%s: ", fail_name[r->fail]);
  for (const char *c = r->msg; *c != '\0' && o < sig + 250; c++)
    if (*c < '0' || *c > '9') *o++ = *c;
    else if (o[-1] != '#') *o++ = '#';
  *o = '\0';
  if (r->crash_frames > 0)
    first_engine_frame(r->crash, r->crash_frames, frame, sizeof frame);
  else if (r->fail == F_LEAK && strstr(r->msg, "blocks") != NULL && r->site_frames > 0)
    first_engine_frame(r->site, r->site_frames, frame, sizeof frame);
  if (frame[0] != '\0')
    snprintf(o, sizeof sig - (size_t)(o - sig), " [%s %s]",
             r->crash_frames > 0 ? "crashed in" : "failed allocation in", frame);
  bool first;
  struct group *g = group_of(sig, s->sticky, &first);
  if (g != NULL) {
    if (g->count < (long)(sizeof g->ns / sizeof g->ns[0])) g->ns[g->count] = s->n;
    g->count++;
  }
  if (!first) {
    printf("#   (as N=%ld above: %s)\n", g->ns[0], r->phase);
    return;
  }
  bool injected = r->injected > 0 || r->site_frames > 0;
  printf("#   phase: %s; failure injected: %s%s\n", r->phase,
         injected ? "yes" : "no",
         r->site_frames > 0 ? (r->site_worker ? " (on a worker or the timer "
                                                "thread)"
                                              : " (on the host thread)")
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

/* Waits for a child to end (killing those past the watchdog); returns
   the slot freed. */
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
        char cmd[200];
        printf("# %s N=%ld hangs in phase '%s'; its threads:\n",
               s->sticky ? "sticky" : "once", s->n, results[i].phase);
        fflush(stdout);
        snprintf(cmd, sizeof cmd, "gdb -p %d -batch -ex 'thread apply all bt' "
                 "2>/dev/null | grep '^#\\|^Thread' | sed 's/^/#   /'",
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
  if (r.gc_leak) printf("# leak after a failed __gc (Lua's limit): %s\n", r.msg);
  if (r.site_frames > 0) print_stack("the injected failure", r.site, r.site_frames);
  tap(r.outcome != R_FAIL, "N=%ld", n);
  printf("1..%d\n", test_no);
  return r.outcome == R_FAIL ? 1 : 0;
}

/*
** Runs every N in [lo, hi] that `secs` allow: every one while the rate
** measured so far (recomputed every 10 runs) lets the rest fit, else a
** stride fitted to the time left, with a deterministic jitter of up to
** half of it so that it cannot alias a periodic pattern of allocations.
** The last run is at hi.  Returns the largest stride used (1: every N).
*/
static long span(int sticky, long lo, long hi, double secs, bool full) {
  double start = now();
  long n = lo, launched = 0, stride = 1, widest = 1;
  while (n <= hi) {
    launch(n, sticky);
    launched++;
    if (n == hi) break;
    if (!full && launched % 10 == 0) {
      double el = now() - start, left = secs - el;
      long can = (long)((double)launched / el * (left > 0 ? left : 0));
      long rest = hi - n;
      stride = can > 0 ? (rest + can - 1) / can : rest;
      if (stride > rest / 8) stride = rest / 8;  /* 8 more runs at least */
      if (stride < 1) stride = 1;
      if (stride > widest) widest = stride;
    }
    n += stride == 1 ? 1 : stride - stride / 4 + (launched * 7919) % (stride / 2 + 1);
    if (n > hi) n = hi;
  }
  return widest;
}

/*
** Sweeps one policy over N in [from, to] within `seconds` (unless full):
** every N from `from` while a quarter of the time lasts (start-up); then
** from `tail` to `to`, a quarter of the time: the workload's last
** allocations, the jobs stopped by close, close itself and lua_close
** (shutdown paths, where a failure is the least expected), and a few past
** them; then the rest of the time between the two.
*/
static void sweep(int sticky, long from, long tail, long to, double seconds,
                  bool full) {
  tally *t = &tallies[sticky];
  double start = now();
  long n = from;
  t->dense_to = to;
  for (; n <= to; n++) {  /* the head */
    launch(n, sticky);
    if (!full && now() - start > seconds / 4) break;
  }
  if (n >= to) {
    wait_all();
    return;
  }
  t->dense_to = n;
  if (tail <= n) tail = n + 1;
  t->tail_from = tail;
  t->tail_stride = span(sticky, tail, to, seconds / 4, full);
  if (tail > n + 1)
    t->stride = span(sticky, n + 1, tail - 1, seconds - (now() - start), full);
  wait_all();
}

int main(void) {
  verbose = env_long("ALLOCFAIL_VERBOSE", 0) != 0;
  use_gdb = env_long("ALLOCFAIL_GDB", 0) != 0;
  workers_cfg = (int)env_long("ALLOCFAIL_WORKERS", 2);
  watchdog = (int)env_long("ALLOCFAIL_TIMEOUT", 0);
  const char *pol = getenv("ALLOCFAIL_POLICY");
  bool do_once = pol == NULL || strcmp(pol, "sticky") != 0;
  bool do_sticky = pol != NULL && strcmp(pol, "once") != 0;
  ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  exe[len > 0 ? len : 0] = '\0';
  Dl_info self;
  if (dladdr((void *)&tap, &self) != 0) main_base = self.dli_fbase;
  void *warm[4];
  backtrace(warm, 4);  /* loads libgcc now, not in a child's allocator */
  setvbuf(stdout, NULL, _IOLBF, 0);

  long single = env_long("ALLOCFAIL_N", -1);
  if (single >= 0) return run_one(single, do_sticky && !do_once);

  /* most of a run is waiting (threads, polls): more children than CPUs */
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  if (ncpu < 1) ncpu = 1;
  nslots = (int)env_long("ALLOCFAIL_JOBS", ncpu * 2 > 8 ? 8 : ncpu * 2);
  if (nslots < 1) nslots = 1;
  slots = calloc((size_t)nslots, sizeof *slots);
  results = mmap(NULL, sizeof(result) * (size_t)nslots, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (slots == NULL || results == MAP_FAILED) {
    perror("allocfail");
    return 2;
  }
  double t0 = now();
  bool full = env_long("ALLOCFAIL_FULL", 0) != 0;
  double budget = (double)env_long("ALLOCFAIL_BUDGET", 40);
  printf("# allocation-failure sweep: %d workers%s, %d children at once, "
         "%s\n", workers_cfg, workers_cfg == 0 ? " (cooperative)" : "", nslots,
         full ? "every N" : "time budget");
  if (!full) printf("# time budget %.0f s (ALLOCFAIL_BUDGET)\n", budget);

  /* untouched runs: the allocation count T, and how slow this build is */
  long base_max = 0, base_min = 0;
  double base_time = 0;
  int base_ok = 1, watchdog_set = watchdog;
  slow = 10;
  if (watchdog == 0) watchdog = 120;
  for (int i = 0; i < 3; i++) {
    launch(0, 0);
    wait_all();
    result *r = &results[0];
    if (r->outcome != R_UNTOUCHED) base_ok = 0;
    if (r->allocs > base_max) base_max = r->allocs;
    if (base_min == 0 || r->allocs < base_min) base_min = r->allocs;
    base_time += r->seconds / 3;
  }
  memset(tallies, 0, sizeof tallies);
  slow = base_time / 0.03;  /* a plain build's run: 10 to 30 ms */
  if (slow < 1) slow = 1;
  if (slow > 20) slow = 20;  /* valgrind: the test runner's timeout is 600 s */
  watchdog = watchdog_set > 0 ? watchdog_set : (int)(15 * slow);
  printf("# a run takes %.0f ms here: waits are bounded by %.1f times their "
         "plain bounds, the watchdog is %d s\n", base_time * 1e3, slow,
         watchdog);
  tap(base_ok, "untouched workload: completes, every completion delivered, "
      "nothing leaked (%ld to %ld allocations, %.0f ms a run)", base_min,
      base_max, base_time * 1e3);
  if (!base_ok) {
    printf("1..%d\n", test_no);
    return 1;
  }

  /* past T (plus a margin: it varies with the threads) runs pass untouched */
  long from = env_long("ALLOCFAIL_FROM", 1);
  long to = env_long("ALLOCFAIL_TO", base_max + base_max / 50 + 20);
  /* the shutdown's allocations: the last few hundred (they move with the
     count's spread) */
  long tail = base_min - 300 - (base_max - base_min);
  if (tail > to + 1) tail = to + 1;
  if (tail < from) tail = from;
  for (int sticky = 0; sticky <= 1; sticky++) {
    if (sticky ? !do_sticky : !do_once) continue;
    const char *name = sticky ? "sticky" : "once";
    /* "once" finds the recovery bugs: it gets two thirds of the time */
    double secs = do_once && do_sticky ? budget * (sticky ? 1.0 : 2.0) / 3
                                       : budget;
    double ts = now();
    sweep(sticky, from, tail, to, secs, full);
    tally *t = &tallies[sticky];
    if (t->dense_to >= to)
      printf("# %s: every N from %ld to %ld: %ld runs in %.1f s\n", name, from,
             to, t->runs, now() - ts);
    else
    {
      printf("# %s: every N from %ld to %ld; ", name, from, t->dense_to);
      if (t->tail_stride > 1)
        printf("from %ld to %ld, strides up to %ld; ", t->tail_from, to,
               t->tail_stride);
      else
        printf("every N from %ld to %ld; ", t->tail_from, to);
      printf("in between, strides up to %ld (strides are jittered and fitted "
             "to the time budget): %ld runs in %.1f s (ALLOCFAIL_FULL=1: "
             "every N)\n", t->stride, t->runs, now() - ts);
    }
  }

  /* the summary */
  long swept = 0, clean = 0, untouched = 0, failed = 0, absorbed = 0;
  long kinds[5] = {0};
  for (int s = 0; s <= 1; s++) {
    tally *t = &tallies[s];
    if (t->runs == 0) continue;
    printf("# %s: %ld runs: %ld clean errors, %ld absorbed (injected, and "
           "nothing failed: Lua's emergency collection and retry, or a "
           "recovery), %ld passed untouched (the first at N=%ld), %ld "
           "failures\n", s ? "sticky" : "once", t->runs, t->clean,
           t->absorbed, t->untouched, t->first_untouched, t->failed);
    if (t->stalls > 0 && s == 0) {  /* under "sticky" jobs just starve */
      printf("# %s: %ld clean runs had jobs that ended only when close "
             "stopped them (none in an untouched run; under \"once\" a sign "
             "of a lost wake-up, unless the failure stopped a job another "
             "waited for); N =", s ? "sticky" : "once", t->stalls);
      for (long k = 0; k < t->stalls && k < 8; k++) printf(" %ld", t->stall_ns[k]);
      printf("%s\n", t->stalls > 8 ? " ..." : "");
      for (long k = 0; k < t->stalls && k < 8; k++)
        printf("#   N=%ld: %s\n", t->stall_ns[k], t->stall_what[k]);
    }
    if (t->gc_leaks > 0)
      printf("# %s: %ld clean runs leaked after Lua failed to call a __gc "
             "for want of memory (Lua's limit; not counted as failures)\n",
             s ? "sticky" : "once", t->gc_leaks);
    swept += t->runs;
    clean += t->clean + t->absorbed;
    absorbed += t->absorbed;
    untouched += t->untouched;
    failed += t->failed;
    for (int k = 0; k < 5; k++) kinds[k] += t->by_kind[k];
  }
  printf("# swept %ld allocation sites: %ld clean errors, %ld passed "
         "untouched, %ld failures (the clean errors include %ld absorbed "
         "failures); %.1f s\n", swept, clean, untouched, failed, absorbed,
         now() - t0);
  for (int i = 0; i < ngroups; i++) {
    struct group *g = &groups[i];
    printf("# failure %d (%s, %ld runs): %s; N =", i + 1,
           g->sticky ? "sticky" : "once", g->count, g->sig);
    for (long k = 0; k < g->count && k < 12; k++) printf(" %ld", g->ns[k]);
    printf("%s\n", g->count > 12 ? " ..." : "");
  }
  bool reached_end = true;
  for (int s = 0; s <= 1; s++)
    if (tallies[s].runs > 0 && tallies[s].untouched == 0 &&
        getenv("ALLOCFAIL_TO") == NULL)
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
