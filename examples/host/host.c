/*
** examples/host/host.c: a game-like C host embedding weft (engine/weft.h).
**
** A 60 Hz frame loop drives examples/host/frame.lua, which fans out
** thousands of jobs to the runtime's two workers without ever blocking the
** frame: pool:try_submit, retried on later frames when the pool is full,
** and future:on_done, delivered by weft_runtime_poll within a budget.
** Every state (host and workers) gets a host function (host_noise), a host
** userdata type ("example.vec2") and its constructor; vec2 values travel in
** job arguments and results through weft_register_type's copy hooks.
**
** Build and run from the repository root: see examples/host/README.md.
** Exit status: 0 when every job completed exactly once, 1 when a job
** failed or a completion is missing (or came twice), 2 on a bad argument.
*/
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "weft.h"

#define VEC2 "example.vec2"
#define LUA_PATH_HERE "lua/?.lua;lua/?/init.lua"
#define SCRIPT "examples/host/frame.lua"
#define JOBS 5000
#define FRAME_NS 16666667L   /* 60 Hz */
#define MAX_SECONDS 20
#define MAX_FRAMES (MAX_SECONDS * 60)
#define POLL_BUDGET 0.004    /* seconds of callbacks per frame */
#define SCRIPT_IDX 1         /* frame.lua's table, on the host state's stack */

typedef struct vec2 { double x, y; } vec2;

/* Everything the host owns; hooks get it as their ud. */
typedef struct host {
  const char *log_prefix;
  lua_Integer seed;           /* of host_noise: the same in every state */
  vec2 player;                /* moved by the frame loop */
  double poll_ms[MAX_FRAMES], work_ms[MAX_FRAMES];
} host;

typedef struct summary {      /* frame.lua's summary() */
  lua_Integer jobs, completed, failed, duplicates, host_answers, saturated;
} summary;

/* example.vec2 and host_noise: the same in the host and in every worker */

static void vec2_push(lua_State *L, double x, double y) {
  vec2 *v = lua_newuserdatauv(L, sizeof *v, 0);
  *v = (vec2){x, y};
  luaL_setmetatable(L, VEC2);
}

static int vec2_new(lua_State *L) {
  vec2_push(L, luaL_checknumber(L, 1), luaL_checknumber(L, 2));
  return 1;
}

#define CHECK_VEC2(L) ((const vec2 *)luaL_checkudata(L, 1, VEC2))
static int vec2_x(lua_State *L) {
  lua_pushnumber(L, CHECK_VEC2(L)->x);
  return 1;
}

static int vec2_y(lua_State *L) {
  lua_pushnumber(L, CHECK_VEC2(L)->y);
  return 1;
}

static int vec2_len(lua_State *L) {
  const vec2 *v = CHECK_VEC2(L);
  lua_pushnumber(L, hypot(v->x, v->y));
  return 1;
}

static int vec2_tostring(lua_State *L) {
  const vec2 *v = CHECK_VEC2(L);
  lua_pushfstring(L, "vec2(%f, %f)", v->x, v->y);
  return 1;
}

/* A value in [0, 1) for a lattice point: an integer hash of it. */
static double corner(uint32_t seed, int32_t ix, int32_t iy) {
  uint32_t h = seed ^ ((uint32_t)ix * 0x27d4eb2dU) ^ ((uint32_t)iy * 0x165667b1U);
  h = (h ^ (h >> 15)) * 0x85ebca6bU;
  h = (h ^ (h >> 13)) * 0xc2b2ae35U;
  h ^= h >> 16;
  return h / 4294967296.0;
}

/* host_noise(x, y): smooth value noise in [0, 1), deterministic; the seed
   is the closure's upvalue. */
static int host_noise(lua_State *L) {
  double x = luaL_checknumber(L, 1), y = luaL_checknumber(L, 2);
  luaL_argcheck(L, fabs(x) < 1e9, 1, "out of range");
  luaL_argcheck(L, fabs(y) < 1e9, 2, "out of range");
  uint32_t seed = (uint32_t)lua_tointeger(L, lua_upvalueindex(1));
  double fx = floor(x), fy = floor(y);
  int32_t ix = (int32_t)fx, iy = (int32_t)fy;
  double tx = x - fx, ty = y - fy;
  tx = tx * tx * (3 - 2 * tx);
  ty = ty * ty * (3 - 2 * ty);
  double a = corner(seed, ix, iy), b = corner(seed, ix + 1, iy);
  double c = corner(seed, ix, iy + 1), d = corner(seed, ix + 1, iy + 1);
  double top = a + (b - a) * tx, bottom = c + (d - c) * tx;
  lua_pushnumber(L, top + (bottom - top) * ty);
  return 1;
}

/* The vec2 metatable and the globals vec2 and host_noise. */
static void open_example(lua_State *L, lua_Integer seed) {
  static const luaL_Reg methods[] = {
      {"x", vec2_x}, {"y", vec2_y}, {"len", vec2_len}, {NULL, NULL}};
  if (luaL_newmetatable(L, VEC2)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, vec2_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, vec2_new);
  lua_setglobal(L, "vec2");
  lua_pushinteger(L, seed);
  lua_pushcclosure(L, host_noise, 1);
  lua_setglobal(L, "host_noise");
}

/* weft_register_type hooks: a vec2 travels as its two doubles. */
static size_t vec2_copy_out(lua_State *L, int idx, void *out, size_t cap,
                            void *ud) {
  (void)ud;
  const vec2 *v = luaL_checkudata(L, idx, VEC2);
  if (cap >= sizeof *v) memcpy(out, v, sizeof *v);
  return sizeof *v;
}

static void vec2_copy_in(lua_State *L, const void *data, size_t len,
                         void *ud) {
  (void)ud;
  if (len != sizeof(vec2)) luaL_error(L, VEC2 ": bad copy (%d bytes)", (int)len);
  vec2 v;
  memcpy(&v, data, sizeof v);
  vec2_push(L, v.x, v.y);
}

/* hooks and the host state */

static void log_line(void *ud, const char *line) {  /* any thread */
  const host *h = ud;
  fprintf(stdout, "%s%s\n", h->log_prefix, line);
}

static void init_state(lua_State *L, void *ud) {  /* each worker thread */
  const host *h = ud;
  open_example(L, h->seed);
}

/* player_position(): only the host state has it (jobs use weft.on_host). */
static int player_position(lua_State *L) {
  const host *h = lua_touserdata(L, lua_upvalueindex(1));
  vec2_push(L, h->player.x, h->player.y);
  return 1;
}

/* Under lua_pcall: 1 = the host.  Sets up the state, runs frame.lua and
   returns its table. */
static int setup_k(lua_State *L) {
  host *h = lua_touserdata(L, 1);
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_pushliteral(L, LUA_PATH_HERE);
  lua_setfield(L, -2, "path");
  open_example(L, h->seed);
  lua_pushlightuserdata(L, h);
  lua_pushcclosure(L, player_position, 1);
  lua_setglobal(L, "player_position");
  if (luaL_loadfile(L, SCRIPT) != LUA_OK) return lua_error(L);
  lua_call(L, 0, 1);
  luaL_checktype(L, -1, LUA_TTABLE);
  return 1;
}

static int traceback_h(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  luaL_traceback(L, L, msg != NULL ? msg : "(error object is not a string)", 1);
  return 1;
}

/* Calls script[name](arg) under lua_pcall, leaving nres results; 0, or -1
   after printing the error. */
static int call_script(lua_State *L, const char *name, lua_Integer arg,
                       int nres) {
  lua_pushcfunction(L, traceback_h);
  int h = lua_gettop(L);
  lua_getfield(L, SCRIPT_IDX, name);
  lua_pushinteger(L, arg);
  int r = lua_pcall(L, 1, nres, h);
  lua_remove(L, h);
  if (r == LUA_OK) return 0;
  fprintf(stderr, "host: %s: %s\n", name, lua_tostring(L, -1));
  lua_pop(L, 1);
  return -1;
}

static int read_summary(lua_State *L, summary *s) {
  memset(s, 0, sizeof *s);
  if (call_script(L, "summary", 0, 1) != 0) return -1;
  static const char *const names[] = {"jobs", "completed", "failed",
                                      "duplicates", "host_answers", "saturated"};
  lua_Integer *fields[] = {&s->jobs, &s->completed, &s->failed,
                           &s->duplicates, &s->host_answers, &s->saturated};
  for (int i = 0; i < 6; i++) {
    lua_getfield(L, -1, names[i]);  /* a plain table: no metamethod runs */
    *fields[i] = lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return 0;
}

/* the frame loop */

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Sleeps until frame boundary n after t0. */
static void sleep_until_frame(const struct timespec *t0, long n) {
  long long ns = (long long)t0->tv_nsec + (long long)n * FRAME_NS;
  struct timespec at = {t0->tv_sec + (time_t)(ns / 1000000000LL),
                        (long)(ns % 1000000000LL)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL) == EINTR) {
  }
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {  /* sorts v: its max is v[n - 1] */
  if (n == 0) return 0;
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv) {
  long jobs = JOBS;  /* ./build/example-host [jobs] */
  char *end = NULL;
  if (argc > 1) jobs = strtol(argv[1], &end, 10);
  if ((end != NULL && *end != '\0') || jobs < 1 || jobs > 1000000) {
    fprintf(stderr, "usage: %s [jobs: 1 to 1000000, default %d]\n", argv[0], JOBS);
    return 2;
  }
  host h = {.log_prefix = "[weft] ", .seed = 1337, .player = {10, 0}};
  char err[256];
  weft_config cfg;
  weft_config_init(&cfg);
  cfg.workers = 2;
  cfg.lua_path = LUA_PATH_HERE;
  cfg.log = log_line;
  cfg.log_ud = &h;
  cfg.init_state = init_state;
  cfg.init_state_ud = &h;
  weft_runtime *rt = weft_runtime_new(&cfg, err, sizeof err);
  if (rt == NULL) {
    fprintf(stderr, "host: weft_runtime_new: %s\n", err);
    return 1;
  }
  if (weft_register_type(rt, VEC2, vec2_copy_out, vec2_copy_in, NULL) != 0) {
    fprintf(stderr, "host: weft_register_type failed\n");
    weft_runtime_close(rt, 1.0);
    return 1;
  }
  lua_State *L = luaL_newstate();
  if (L == NULL || weft_runtime_open(rt, L) != 0) {
    fprintf(stderr, "host: cannot make the host state\n");
    weft_runtime_close(rt, 1.0);
    if (L != NULL) lua_close(L);
    return 1;
  }
  int ok = 1, frames = 0, all_done = 0;
  lua_pushcfunction(L, setup_k);
  lua_pushlightuserdata(L, &h);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {  /* frame.lua's table: SCRIPT_IDX */
    fprintf(stderr, "host: %s\n", lua_tostring(L, -1));
    ok = 0;
  } else if (call_script(L, "start", jobs, 0) != 0) {
    ok = 0;
  }

  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  double start = now();
  while (ok && !all_done && frames < MAX_FRAMES &&
         now() - start < MAX_SECONDS) {
    double t = frames / 60.0;
    h.player = (vec2){10 * cos(t), 10 * sin(t)};
    double w0 = now();
    if (call_script(L, "frame", frames + 1, 1) != 0) {
      ok = 0;
      break;
    }
    all_done = lua_toboolean(L, -1);
    lua_pop(L, 1);
    double p0 = now();
    if (weft_runtime_poll(rt, L, 0, POLL_BUDGET) < 0) ok = 0;
    double p1 = now();
    h.poll_ms[frames] = (p1 - p0) * 1e3;
    h.work_ms[frames] = (p1 - w0) * 1e3;
    frames++;
    sleep_until_frame(&t0, frames);
  }
  double elapsed = now() - start;

  summary s = {0};
  if (ok && read_summary(L, &s) != 0) ok = 0;
  printf("frames: %d in %.2f s%s\n", frames, elapsed,
         all_done ? "" : " (stopped before all jobs were done)");
  printf("jobs completed: %lld of %ld (failed %lld, duplicates %lld, "
         "SATURATED retries %lld, on_host answers %lld)\n",
         (long long)s.completed, jobs, (long long)s.failed,
         (long long)s.duplicates, (long long)s.saturated,
         (long long)s.host_answers);
  double poll_med = median(h.poll_ms, frames), work_med = median(h.work_ms, frames);
  printf("poll: longest %.3f ms, median %.3f ms; frame work: longest %.3f ms, "
         "median %.3f ms\n", frames ? h.poll_ms[frames - 1] : 0, poll_med,
         frames ? h.work_ms[frames - 1] : 0, work_med);
  weft_stats st;
  weft_runtime_stats(rt, &st);
  printf("weft stats: completed %ld, failed %ld, latency p50 %.3f ms, p99 "
         "%.3f ms, worker memory %zu KB\n", st.completed,
         st.failed + st.panicked + st.canceled, st.latency_p50 * 1e3,
         st.latency_p99 * 1e3, st.memory_total / 1024);

  int stuck = weft_runtime_close(rt, 1.0);
  printf("workers not stopped: %d\n", stuck);
  int late = weft_runtime_poll(rt, L, 0, 0.1);  /* what close canceled */
  printf("callbacks after close: %d\n", late);
  if (ok && read_summary(L, &s) != 0) ok = 0;  /* again: nothing new, once */
  lua_close(L);
  ok = ok && s.jobs == jobs && s.completed == jobs && s.failed == 0 &&
       s.duplicates == 0 && s.host_answers > 0 && st.completed == jobs &&
       stuck == 0 && late >= 0;
  printf("%s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
