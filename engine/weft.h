/*
** weft.h: the one header a C host includes to embed weft.
**
** A runtime owns the engine's allocator, its deadline timer, its hooks and
** (for a host) a pool of workers; everything weft creates hangs off one
** runtime, and there is no global mutable state, so several runtimes may
** live side by side in one process.
**
** Threads.  "Host thread" below means the thread that made the runtime (or
** any one thread the host uses for it, one at a time); "any thread" means
** any.  Hooks run on the threads their comment names and must not call
** back into weft unless it says they may.  Nothing here blocks the host
** thread without a bound: submit never waits and never runs a job inline,
** poll returns within its budget, close within its timeout.
**
** A minimal host (README, "Embedding"):
**
**   weft_config cfg;
**   weft_config_init(&cfg);                 // defaults: one worker per CPU
**   weft_runtime *rt = weft_runtime_new(&cfg, err, sizeof err);
**   lua_State *L = luaL_newstate(); luaL_openlibs(L);
**   weft_runtime_open(rt, L);               // require "weft" uses rt
**   ... each frame: weft_runtime_poll(rt, L, 0, 0.002);
**   weft_runtime_close(rt, 1.0);            // then lua_close(L)
*/
#ifndef WEFT_H
#define WEFT_H

#include <stddef.h>

#include <lua.h>

#define WEFT_VERSION "0.1.0"

typedef struct weft_runtime weft_runtime;

/* Receives one line of log text (no trailing newline).  Any thread. */
typedef void (*weft_log_fn)(void *ud, const char *line);

/* A job panicked (raised an error) and its pool has no on_panic: the
   pool's name, the error message and the traceback.  The worker thread. */
typedef void (*weft_panic_fn)(void *ud, const char *pool, const char *msg,
                              const char *traceback);

/* Runs in every new worker state, after the standard libraries and weft
   are loaded and before the pool's init: register host functions and
   metatables here.  Runs under lua_pcall: it may raise, and then the pool
   fails to start with that message.  The worker thread. */
typedef void (*weft_init_state_fn)(lua_State *L, void *ud);

/* A worker thread starts (before init_state runs in its state, which the
   thread making the pool has built) or stops (after its state is closed):
   name it, pin it, set its priority.  The worker thread itself; index
   counts from 1 within the pool. */
typedef void (*weft_thread_fn)(void *ud, const char *pool, int index);

/* Job events for profilers, on the worker thread: BEGIN when a job starts
   or resumes after parking, END when it parks or finishes. */
enum { WEFT_JOB_BEGIN = 0, WEFT_JOB_END = 1 };
typedef struct weft_job_event {
  int what;                 /* WEFT_JOB_BEGIN or WEFT_JOB_END */
  const char *pool;         /* the pool's name */
  int worker;               /* from 1 */
  unsigned long long job;   /* the job's id, unique within its pool */
  int finished;             /* END: 1 when the job is over, 0 when parked */
} weft_job_event;
typedef void (*weft_job_fn)(void *ud, const weft_job_event *ev);

/* Completions or host requests are ready for weft_runtime_poll.  Any
   thread, possibly with weft's locks held: only signal the host (post an
   event, write to an eventfd); never call weft from it. */
typedef void (*weft_wakeup_fn)(void *ud);

typedef struct weft_config {
  /* The runtime's pool (weft.default_pool() in states bound to it, and
     where weft_submit sends jobs): workers > 0 threads, 0 for
     cooperative mode (jobs run only inside weft_runtime_poll, on the
     host thread), or < 0 for none (states make their own default pool
     on first use, as in a stock lua5.4).  limit: jobs admitted at once (>= workers; 0: 64 or
     workers if more); queue: jobs waiting beyond the limit. */
  int workers, limit, queue;
  const char *name;             /* the pool's name; NULL: "host" */
  /* package.path and package.cpath of worker states; NULL: Lua's
     defaults (LUA_PATH_5_4, LUA_PATH, ...).  weft.core itself is always
     preloaded, so a host that links weft statically needs only the Lua
     files of weft (lua/weft/) on the path. */
  const char *lua_path, *lua_cpath;
  /* One allocator for the engine's own memory and every worker state
     (called from any thread: it must be thread-safe); NULL: realloc. */
  lua_Alloc alloc;
  void *alloc_ud;
  /* Bytes each worker state may use (0: no limit); a job that goes over
     fails with "not enough memory (limit ...)" and its worker goes on. */
  size_t memory_limit;
  weft_init_state_fn init_state;
  void *init_state_ud;
  weft_log_fn log;              /* NULL: lines go to stderr */
  void *log_ud;
  weft_panic_fn panic;          /* NULL: one log line with the traceback */
  void *panic_ud;
  weft_job_fn job_hook;         /* NULL: none */
  void *job_hook_ud;
  weft_thread_fn thread_start, thread_stop;  /* NULL: none */
  void *thread_ud;
  weft_wakeup_fn wakeup;        /* NULL: none */
  void *wakeup_ud;
} weft_config;

/* Fills cfg with the defaults: one worker per CPU, everything else zero.
   A zeroed config is valid too and means cooperative mode.  Any thread. */
void weft_config_init(weft_config *cfg);

/*
** Creates a runtime and starts its pool (the workers run init_state before
** this returns).  cfg may be NULL for the defaults.  On failure returns
** NULL and writes a message into err (if errlen > 0).  Any thread; the
** thread that calls it is the host thread of a cooperative runtime.
*/
weft_runtime *weft_runtime_new(const weft_config *cfg, char *err,
                               size_t errlen);

/*
** Binds L to rt: a later require "weft" in L uses rt (weft.core is
** preloaded into L).  Call it before weft is loaded into L, from the thread
** that owns L.  The binding holds a reference on rt that is dropped when L
** is closed.  Returns 0, or -1 when L already has a runtime or memory ran
** out.
*/
int weft_runtime_open(weft_runtime *rt, lua_State *L);

/* Results of weft_submit. */
enum { WEFT_OK = 0, WEFT_SATURATED, WEFT_CLOSED, WEFT_ERROR };

/*
** Submits the function below the top nargs values of L, with those
** arguments, to rt's pool; it runs as fn(ctx, ...) where ctx is the
** runtime's root context (canceled by weft_runtime_close).  Pops the
** function and arguments, and pushes the job's future (a weft.future:
** future:on_done(fn) delivers its outcome in a later poll) and returns
** WEFT_OK; or pushes a message and returns WEFT_SATURATED (the pool is
** full: try again next frame), WEFT_CLOSED, or WEFT_ERROR (a value cannot
** be copied, or memory ran out).  Never blocks, never runs the job on the
** calling thread, never raises.  L must be bound to rt (weft_runtime_open);
** weft.core is loaded into it if it was not.  The thread that owns L.
*/
int weft_submit(weft_runtime *rt, lua_State *L, int nargs);

/*
** Delivers, on the calling thread and in L, what is ready: the callbacks
** of future:on_done registered in L, and the functions workers passed to
** weft.on_host; in cooperative mode it also runs jobs.  Stops after
** max_count callbacks (0: no count limit) or once budget_seconds have
** passed, leaving the rest for the next call (a running cooperative job is
** suspended at the budget where Lua allows).  With budget_seconds <= 0 it
** runs no job and delivers at most what was ready when it was called.  Errors raised by callbacks
** go to the log.  Returns the number of callbacks run, or -1 when L is not
** bound to rt.  The thread that owns L; not from inside a callback.
*/
int weft_runtime_poll(weft_runtime *rt, lua_State *L, int max_count,
                      double budget_seconds);

/*
** Host userdata that may travel in job arguments, results and channel
** messages.  A userdata whose metatable is the registry's tname (as set by
** luaL_newmetatable) is written by copy_out and rebuilt by copy_in in the
** receiving state.  copy_out writes the value's bytes into out (cap bytes)
** and returns their count; when that is more than cap, it is called again
** with room enough.  It may raise to refuse a value.  copy_in pushes the
** new userdata (its state's init_state made the metatable).  Both run on
** the thread of the state they are given, inside a protected call, and
** must not yield.  Unregistered userdata is refused with its path.
*/
typedef size_t (*weft_copy_out_fn)(lua_State *L, int idx, void *out,
                                   size_t cap, void *ud);
typedef void (*weft_copy_in_fn)(lua_State *L, const void *data, size_t len,
                                void *ud);

/*
** Registers a host type with rt (up to 32 types).  Returns 0, or -1 when
** the name is already registered or the table is full.  Any thread; types
** take effect for copies that start after it returns.
*/
int weft_register_type(weft_runtime *rt, const char *tname,
                       weft_copy_out_fn copy_out, weft_copy_in_fn copy_in,
                       void *ud);

#define WEFT_STATS_WORKERS 64

typedef struct weft_stats {
  int workers;                    /* of the runtime's pool */
  int busy;                       /* workers running a job now */
  long queued;                    /* admitted not started + waiting */
  long inflight, parked;
  long submitted, completed, failed, panicked, canceled;
  /* Job latency, submit to completion, in seconds, over the runtime's
     life (0 before the first job): percentiles 50, 90, 99 (each the upper
     bound of a log bucket, within 19%) and the exact max. */
  double latency_p50, latency_p90, latency_p99, latency_max;
  size_t memory[WEFT_STATS_WORKERS];  /* Lua bytes of each worker state */
  size_t memory_total;                /* all worker states */
  long pending_callbacks;             /* completions not yet polled */
  /* The engine's own allocations alive now (not Lua's): blocks and bytes.
     Back where they were once what was made is dropped: a leak check. */
  long engine_blocks, engine_bytes;
} weft_stats;

/* Fills s with a snapshot of the runtime's pool (all zero but the
   callbacks and engine figures when it has none).  Any thread. */
void weft_runtime_stats(weft_runtime *rt, weft_stats *s);

/*
** Shuts the runtime down: cancels its root context, stops every pool it
** has from admitting work and interrupts every running job (hard cancel),
** fails pending weft.on_host calls, then waits at most timeout_seconds for
** the jobs to end and joins the runtime pool's workers.  Completions of the
** interrupted jobs are still delivered by a later weft_runtime_poll (as
** canceled); each is delivered exactly once.  Returns the number of
** workers that did not stop in time (each is named in the log; such a
** worker is stuck in C code and is left running, its memory leaked rather
** than freed under it).  Call it once, from the host thread, never from a
** weft callback; the runtime's memory goes once no state uses it.
*/
int weft_runtime_close(weft_runtime *rt, double timeout_seconds);

/* The C half of require "weft".  A stock lua5.4 gets a runtime of its own
   (no runtime pool: weft.default_pool() is made on first use). */
int luaopen_weft_core(lua_State *L);

#endif
