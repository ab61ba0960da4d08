/*
** lsignal.c: SIGINT and SIGTERM as cancellation, for the weft command
** (weft._catch_signals).  Signals belong to the whole process, so this is
** for a program's main state (the command, or a host that wants it), not
** for libraries.
**
** Owns: one catcher (a userdata anchored in the registry) and its thread,
** which sigwait()s for the two signals: the first cancels the catcher's
** context with a cause naming the signal, the second ends the process at
** once with status 128 + signal.  So does the first when the context has
** ended already (the weft command's run is over and it waits for pools
** dropped with jobs running): there is nothing left for it to cancel, and
** a supervisor's one SIGTERM must still stop the process.  The signals
** are blocked in the calling thread, so every thread made afterwards
** (workers, the timer) inherits the mask and only the catcher's thread
** takes them.  Locking: none; the signal received is atomic, the rest is
** written before the thread starts.
*/
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>

#include "binding.h"
#include "context.h"
#include "runtime.h"

#define CATCHER_MT "weft.signals"

typedef struct catcher {
  weft_ctx *ctx;      /* retained */
  weft_buf *int_cause, *term_cause;
  atomic_int received;  /* the first signal, or 0 */
  atomic_bool stop;
  pthread_t thread;
  bool running;
} catcher;

static void *catcher_main(void *arg) {
  catcher *c = arg;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  for (;;) {
    int sig;
    if (sigwait(&set, &sig) != 0) continue;
    if (atomic_load(&c->stop)) return NULL;
    int first = 0;
    bool live = weft_ctx_err(c->ctx) == WEFT_LIVE;
    if (atomic_compare_exchange_strong(&c->received, &first, sig) && live) {
      weft_ctx_cancel(c->ctx, WEFT_CANCELED,
                      sig == SIGINT ? c->int_cause : c->term_cause);
      continue;
    }
    static const char second[] = "weft: second signal, exiting now\n";
    static const char ended[] =
        "weft: signal after the run ended, exiting now\n";
    ssize_t n = first != 0 ? write(STDERR_FILENO, second, sizeof second - 1)
                           : write(STDERR_FILENO, ended, sizeof ended - 1);
    (void)n;
    _exit(128 + sig);
  }
}

static int catcher_gc(lua_State *L) {
  catcher *c = luaL_checkudata(L, 1, CATCHER_MT);
  if (c->running) {
    atomic_store(&c->stop, true);
    pthread_kill(c->thread, SIGTERM);  /* its sigwait takes it */
    pthread_join(c->thread, NULL);
    c->running = false;
  }
  weft_buf_release(c->int_cause);
  weft_buf_release(c->term_cause);
  c->int_cause = c->term_cause = NULL;
  if (c->ctx != NULL) weft_ctx_release(c->ctx);
  c->ctx = NULL;
  return 0;
}

/* catcher:received() -> "SIGINT" | "SIGTERM" | nil, and the number */
static int catcher_received(lua_State *L) {
  catcher *c = luaL_checkudata(L, 1, CATCHER_MT);
  int sig = atomic_load(&c->received);
  if (sig == 0) return 0;
  lua_pushstring(L, sig == SIGINT ? "SIGINT" : "SIGTERM");
  lua_pushinteger(L, sig);
  return 2;
}

/* weft._catch_signals(ctx) -> catcher (once per state) */
static int l_catch_signals(lua_State *L) {
  weft_ctx *ctx = weft_check_ctx(L, 1);
  if (lua_getfield(L, LUA_REGISTRYINDEX, CATCHER_MT ".active") != LUA_TNIL)
    return luaL_error(L, "signals are already caught in this state");
  lua_pop(L, 1);
  catcher *c = lua_newuserdatauv(L, sizeof *c, 0);
  memset(c, 0, sizeof *c);
  if (luaL_newmetatable(L, CATCHER_MT)) {
    lua_pushcfunction(L, catcher_gc);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    lua_pushcfunction(L, catcher_received);
    lua_setfield(L, -2, "received");
    lua_setfield(L, -2, "__index");
  }
  lua_setmetatable(L, -2);
  weft_ctx_retain(ctx);
  c->ctx = ctx;
  lua_pushliteral(L, "interrupted (SIGINT)");
  c->int_cause = weft_buf_encode(L, -1, 1, "cause", false);
  lua_pushliteral(L, "terminated (SIGTERM)");
  c->term_cause = weft_buf_encode(L, -1, 1, "cause", false);
  lua_pop(L, 2);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  int e = pthread_sigmask(SIG_BLOCK, &set, NULL);
  if (e == 0) e = pthread_create(&c->thread, NULL, catcher_main, c);
  if (e != 0) return luaL_error(L, "cannot catch signals: %s", strerror(e));
  c->running = true;
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, CATCHER_MT ".active");
  return 1;
}

void weft_open_signals(lua_State *L) {
  lua_pushcfunction(L, l_catch_signals);
  lua_setfield(L, -2, "_catch_signals");
}
