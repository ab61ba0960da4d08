/*
** lprogress.c: the weft command's status line (weft._progress): jobs
** done/total, running, failed, rate, elapsed and ETA, redrawn on stderr a
** few times a second by a thread of its own, so it moves while the main
** state is blocked in a wait.
**
** Owns: the line's counters (atomics, updated from Lua) and its thread.
** Locking: mu and cv only to stop the thread; the counters are atomic.
*/
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>

#include "binding.h"
#include "runtime.h"

#define PROGRESS_MT "weft.progress"
#define PERIOD_NS 250000000L

typedef struct progress {
  atomic_long total, done, failed;
  double start;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool stop, running, drawn;
  pthread_t thread;
} progress;

static void clock_span(char *out, size_t n, double s) {
  long t = (long)(s + 0.5);
  if (t >= 3600)
    snprintf(out, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  else
    snprintf(out, n, "%ld:%02ld", t / 60, t % 60);
}

static void draw(progress *p) {
  long total = atomic_load(&p->total), done = atomic_load(&p->done);
  long failed = atomic_load(&p->failed);
  double elapsed = weft_now() - p->start;
  double rate = elapsed > 0 ? (double)done / elapsed : 0;
  char el[32], eta[32] = "?";
  clock_span(el, sizeof el, elapsed);
  if (rate > 0 && total >= done) clock_span(eta, sizeof eta, (double)(total - done) / rate);
  char line[200];
  int n = snprintf(line, sizeof line,
                   "\r\033[Kweft: %ld/%ld done, %ld running, %ld failed, "
                   "%.1f/s, %s elapsed, ETA %s",
                   done, total, total - done, failed, rate, el, eta);
  if (n > 0) {
    ssize_t w = write(STDERR_FILENO, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
    (void)w;
    p->drawn = true;
  }
}

static void *progress_main(void *arg) {
  progress *p = arg;
  pthread_mutex_lock(&p->mu);
  while (!p->stop) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += PERIOD_NS;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    if (!p->stop && atomic_load(&p->total) > 0) draw(p);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

static progress *check_progress(lua_State *L) {
  return luaL_checkudata(L, 1, PROGRESS_MT);
}

/* p:add(total, done, failed): adds to the counters */
static int p_add(lua_State *L) {
  progress *p = check_progress(L);
  atomic_fetch_add(&p->total, (long)luaL_optinteger(L, 2, 0));
  atomic_fetch_add(&p->done, (long)luaL_optinteger(L, 3, 0));
  atomic_fetch_add(&p->failed, (long)luaL_optinteger(L, 4, 0));
  return 0;
}

/* p:stop(): ends the thread and clears the line; idempotent */
static int p_stop(lua_State *L) {
  progress *p = check_progress(L);
  if (!p->running) return 0;
  pthread_mutex_lock(&p->mu);
  p->stop = true;
  pthread_cond_signal(&p->cv);
  pthread_mutex_unlock(&p->mu);
  pthread_join(p->thread, NULL);
  p->running = false;
  pthread_cond_destroy(&p->cv);
  pthread_mutex_destroy(&p->mu);
  if (p->drawn) {
    ssize_t w = write(STDERR_FILENO, "\r\033[K", 4);
    (void)w;
  }
  return 0;
}

/* weft._progress() -> a status line, drawn until :stop() */
static int l_progress(lua_State *L) {
  progress *p = lua_newuserdatauv(L, sizeof *p, 0);
  memset(p, 0, sizeof *p);
  if (luaL_newmetatable(L, PROGRESS_MT)) {
    lua_pushcfunction(L, p_stop);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    lua_pushcfunction(L, p_add);
    lua_setfield(L, -2, "add");
    lua_pushcfunction(L, p_stop);
    lua_setfield(L, -2, "stop");
    lua_setfield(L, -2, "__index");
  }
  lua_setmetatable(L, -2);
  p->start = weft_now();
  pthread_condattr_t a;
  int e = pthread_condattr_init(&a);
  if (e == 0) e = pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  if (e == 0) e = pthread_cond_init(&p->cv, &a);
  pthread_condattr_destroy(&a);
  if (e == 0 && (e = pthread_mutex_init(&p->mu, NULL)) != 0)
    pthread_cond_destroy(&p->cv);
  if (e == 0 && (e = pthread_create(&p->thread, NULL, progress_main, p)) != 0) {
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
  }
  if (e != 0) return luaL_error(L, "cannot show progress: %s", strerror(e));
  p->running = true;
  return 1;
}

void weft_open_progress(lua_State *L) {
  lua_pushcfunction(L, l_progress);
  lua_setfield(L, -2, "_progress");
}
