/*
** lexec.c: the Lua binding of weft.exec (DESIGN.md, "Helpers").
**
**   weft.exec(ctx, cmd, opts) -> res | nil, err
**
** cmd is an argv table {"prog", "arg1", ...} (strings or numbers; prog is
** searched in PATH; no shell is involved), or, only with opts.shell =
** true, a string run as /bin/sh -c cmd.  opts (all optional):
**   stdout = "inherit" (default) | "null" | "capture"
**   stderr = "inherit" (default) | "null" | "capture" | "stdout" (2>&1)
**   capture = true        stdout and stderr default to "capture"
**   max_output = bytes    kept per captured stream (default 1 MiB); the
**                         rest is read and dropped, and res.truncated is true
**   stdin = string        written to the child's stdin; default /dev/null
**   cwd = dir             the child's working directory
**   env = {K = "v", ...}  the child's whole environment (default: ours)
**   grace = duration      from SIGTERM to SIGKILL when ctx ends (default 5s)
**   shell = true          cmd is a string for /bin/sh -c
** res = { status = exit code | nil, signal = signal number | nil,
**         ok = (status == 0), stdout = string (when captured),
**         stderr = string (when captured), truncated = boolean }
** nil, ctx:err() when ctx ended before the program did: its process group
**   got SIGTERM (and SIGCONT), then SIGKILL after the grace period if any
**   of it was still alive, and it is reaped before the call returns;
** nil, "exec: no such file: prog" (or "exec: permission denied: prog",
**   "exec: no such directory: dir", "exec: <strerror>: prog") when the
**   program cannot be started.  Bad arguments and unknown options raise.
**
** The program runs in a process group of its own, watched by a reaper
** thread (exec.c) that also watches ctx; the call waits for the reaper to
** be done: it parks in a job (its worker runs other jobs) and blocks the
** thread elsewhere, like every weft wait.  A call that is abandoned (its
** job interrupted by hard cancel or pool:close(timeout), or an error
** unwinding past it) terminates its process the same way (SIGTERM, grace,
** SIGKILL) and joins the reaper, through a to-be-closed handle (so at the
** unwind, not at some later collection); no process, zombie or thread
** outlives the call.
**
** Owns: the call's handle on its process (a to-be-closed userdata) and
** the block's registration on it.  Locking: none here.  Every argument is
** checked and converted (strings anchored in a table on the stack) before
** anything is started; a raise after the start leaks nothing (the handle
** and the block hold the process).
*/
#include <math.h>
#include <string.h>

#include <lauxlib.h>

#include "binding.h"
#include "context.h"
#include "exec.h"
#include "runtime.h"

#define PROC_MT "weft.exec.process"
#define DEFAULT_MAX_OUTPUT (1024 * 1024)
#define DEFAULT_GRACE 5.0

/* The extra space of a waiting call's block. */
typedef struct execwait {
  weft_proc *p; /* retained */
  weft_park_waiter pw;
} execwait;

static void execwait_hook(void *extra, bool final) {
  execwait *w = extra;
  if (w->p == NULL) return;
  if (!final) {
    weft_proc_remove_waiter(w->p, &w->pw.w);
    return;
  }
  weft_proc_release(w->p);
  w->p = NULL;
}

/* __close and __gc of the call's handle: ends the process (a no-op once
   the call has its result) and drops the handle's reference. */
static int proc_close(lua_State *L) {
  weft_proc **h = lua_touserdata(L, 1);
  weft_proc *p = *h;
  if (p != NULL) {
    *h = NULL;
    weft_proc_finish(p);
    weft_proc_release(p);
  }
  return 0;
}

/* ---------------------------------------------------------------------- */
/* arguments */

/* Index of the anchor table: every string handed to the spawn is kept
   alive there until the call returns. */
#define ANCHOR 4

/* The string of the value on top (a string or a number), anchored; pops
   it.  Raises when it is neither, or holds a zero byte: "bad <what>: ...)"
   (what: "argument #2 to 'exec' (cmd[2]", say). */
static const char *anchored(lua_State *L, const char *what, size_t *len) {
  int t = lua_type(L, -1);
  if (t != LUA_TSTRING && t != LUA_TNUMBER)
    luaL_error(L, "bad %s: string expected, got %s)", what,
               luaL_typename(L, -1));
  size_t n;
  const char *s = lua_tolstring(L, -1, &n); /* a number: converted in place */
  if (strlen(s) != n) luaL_error(L, "bad %s: contains a zero byte)", what);
  lua_rawseti(L, ANCHOR, (lua_Integer)lua_rawlen(L, ANCHOR) + 1);
  if (len != NULL) *len = n;
  return s;
}

/* A NULL-terminated array of n + 1 pointers, pushed (a userdata). */
static const char **new_array(lua_State *L, size_t n) {
  if (n > 1000000) luaL_error(L, "bad argument to 'exec' (too many strings)");
  const char **a = lua_newuserdatauv(L, (n + 1) * sizeof *a, 0);
  memset(a, 0, (n + 1) * sizeof *a);
  return a;
}

/* argv from the table at 2; pushes the array. */
static const char **check_argv(lua_State *L) {
  lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
  if (n < 1)
    luaL_error(L, "bad argument #2 to 'exec' (empty command: argv table "
                  "expected)");
  const char **argv = new_array(L, (size_t)n);
  char what[64];
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, 2, i);
    snprintf(what, sizeof what, "argument #2 to 'exec' (cmd[%lld]",
             (long long)i);
    argv[i - 1] = anchored(L, what, NULL);
  }
  if (argv[0][0] == '\0')
    luaL_error(L, "bad argument #2 to 'exec' (empty program name)");
  return argv;
}

/* The environment from the table on top (replaced by the array). */
static const char **check_env(lua_State *L) {
  int t = lua_gettop(L);
  size_t n = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    n++;
  }
  const char **envp = new_array(L, n);
  size_t i = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (lua_type(L, -2) != LUA_TSTRING)
      luaL_error(L, "bad option 'env' to 'exec' (names must be strings, "
                    "got %s)", luaL_typename(L, -2));
    size_t klen;
    const char *k = lua_tolstring(L, -2, &klen);
    if (klen == 0 || strlen(k) != klen || strchr(k, '=') != NULL)
      luaL_error(L, "bad option 'env' to 'exec' (invalid name '%s')", k);
    int vt = lua_type(L, -1);
    if (vt != LUA_TSTRING && vt != LUA_TNUMBER)
      luaL_error(L, "bad option 'env' to 'exec' (env.%s: string expected, "
                    "got %s)", k, luaL_typename(L, -1));
    lua_pushvalue(L, -2);
    lua_pushliteral(L, "=");
    lua_pushvalue(L, -3);
    lua_concat(L, 3); /* a number value: converted by the concat */
    char what[96];
    snprintf(what, sizeof what, "option 'env' to 'exec' (env.%.40s", k);
    envp[i++] = anchored(L, what, NULL);
    lua_pop(L, 1); /* the value */
  }
  lua_replace(L, t);
  return envp;
}

/* Under lua_pcall: weft_check_duration of 1. */
static int duration_k(lua_State *L) {
  lua_pushnumber(L, weft_check_duration(L, 1));
  return 1;
}

/* opts.grace on top: seconds (finite, >= 0); pops it. */
static double check_grace(lua_State *L) {
  lua_pushcfunction(L, duration_k);
  lua_insert(L, -2);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    /* "bad argument #1 to '?' (why)": keep the why */
    const char *m = lua_tostring(L, -1);
    const char *why = m != NULL ? strstr(m, "' (") : NULL;
    if (why != NULL) {
      why += 3;
      lua_pushlstring(L, why, strlen(why) - 1);
    } else {
      lua_pushstring(L, m != NULL ? m : "invalid duration");
    }
    luaL_error(L, "bad option 'grace' to 'exec' (%s)", lua_tostring(L, -1));
  }
  double g = lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (!isfinite(g))
    luaL_error(L, "bad option 'grace' to 'exec' (must be finite: a process "
                  "that ignores SIGTERM must still end)");
  return g;
}

static const char *const io_modes[] = {"inherit", "null", "capture", "stdout",
                                       NULL};

/* opts[key] on top: an io mode (stdout for stderr only); pops it. */
static int check_io(lua_State *L, const char *key, int def) {
  int m = def;
  if (!lua_isnil(L, -1)) {
    const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    int n = strcmp(key, "stderr") == 0 ? 4 : 3;
    m = -1;
    for (int i = 0; s != NULL && i < n; i++)
      if (strcmp(s, io_modes[i]) == 0) m = i;
    if (m < 0)
      luaL_error(L, "bad option '%s' to 'exec' (\"inherit\", \"null\", "
                    "\"capture\"%s expected, got %s)", key,
                 n == 4 ? " or \"stdout\"" : "",
                 s != NULL ? s : luaL_typename(L, -1));
  }
  lua_pop(L, 1);
  return m == 0   ? WEFT_IO_INHERIT
         : m == 1 ? WEFT_IO_NULL
         : m == 2 ? WEFT_IO_CAPTURE
                  : WEFT_IO_STDOUT;
}

static const char *const exec_options[] = {
    "stdout", "stderr", "capture", "max_output", "stdin", "cwd", "env",
    "grace",  "shell",  NULL};

static void check_option_names(lua_State *L) {
  lua_pushnil(L);
  while (lua_next(L, 3)) {
    lua_pop(L, 1);
    const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    bool known = false;
    for (int i = 0; k != NULL && exec_options[i] != NULL; i++)
      known |= strcmp(k, exec_options[i]) == 0;
    if (!known)
      luaL_error(L, "bad argument #3 to 'exec' (unknown option %s)",
                 luaL_tolstring(L, -1, NULL));
  }
}

/* Reads opts (at 3, a table or nil) into s; returns opts.shell. */
static bool check_opts(lua_State *L, weft_proc_spec *s) {
  s->max_output = DEFAULT_MAX_OUTPUT;
  s->grace = DEFAULT_GRACE;
  if (lua_isnil(L, 3)) return false;
  check_option_names(L);
  int t = lua_getfield(L, 3, "shell");
  if (t != LUA_TNIL && t != LUA_TBOOLEAN)
    luaL_error(L, "bad option 'shell' to 'exec' (boolean expected, got %s)",
               luaL_typename(L, -1));
  bool shell = lua_toboolean(L, -1);
  lua_pop(L, 1);
  t = lua_getfield(L, 3, "capture");
  if (t != LUA_TNIL && t != LUA_TBOOLEAN)
    luaL_error(L, "bad option 'capture' to 'exec' (boolean expected, got %s)",
               luaL_typename(L, -1));
  int def = lua_toboolean(L, -1) ? 2 : 0;
  lua_pop(L, 1);
  lua_getfield(L, 3, "stdout");
  s->out_mode = check_io(L, "stdout", def);
  lua_getfield(L, 3, "stderr");
  s->err_mode = check_io(L, "stderr", def);
  t = lua_getfield(L, 3, "max_output");
  if (t != LUA_TNIL) {
    int isint;
    lua_Integer n = lua_tointegerx(L, -1, &isint);
    if (t != LUA_TNUMBER || !isint || n < 0)
      luaL_error(L, "bad option 'max_output' to 'exec' (integer >= 0 "
                    "expected)");
    s->max_output = (size_t)n;
  }
  lua_pop(L, 1);
  t = lua_getfield(L, 3, "stdin");
  if (t != LUA_TNIL && t != LUA_TSTRING)
    luaL_error(L, "bad option 'stdin' to 'exec' (string expected, got %s)",
               luaL_typename(L, -1));
  if (t == LUA_TSTRING) {
    s->in_data = lua_tolstring(L, -1, &s->in_len);
    lua_rawseti(L, ANCHOR, (lua_Integer)lua_rawlen(L, ANCHOR) + 1);
  } else {
    lua_pop(L, 1);
  }
  t = lua_getfield(L, 3, "cwd");
  if (t != LUA_TNIL) {
    if (t != LUA_TSTRING)
      luaL_error(L, "bad option 'cwd' to 'exec' (string expected, got %s)",
                 luaL_typename(L, -1));
    s->cwd = anchored(L, "option 'cwd' to 'exec' (cwd", NULL);
  } else {
    lua_pop(L, 1);
  }
  t = lua_getfield(L, 3, "env");
  if (t != LUA_TNIL) {
    if (t != LUA_TTABLE)
      luaL_error(L, "bad option 'env' to 'exec' (table expected, got %s)",
                 luaL_typename(L, -1));
    s->envp = check_env(L);
  } /* the array stays on the stack: it must live until the spawn */
  if (lua_getfield(L, 3, "grace") != LUA_TNIL)
    s->grace = check_grace(L);
  else
    lua_pop(L, 1);
  return shell;
}

/* ---------------------------------------------------------------------- */
/* the call */

static int push_result(lua_State *L, weft_proc *p) {
  weft_proc_finish(p); /* joins the reaper (done: at once) */
  weft_proc_result r;
  weft_proc_get_result(p, &r);
  if (r.terminated) {
    int err = weft_ctx_err(weft_check_ctx(L, 1));
    lua_pushnil(L);
    lua_pushstring(L, err != WEFT_LIVE ? weft_ctx_errmsg(err)
                                       : "exec: terminated");
    return 2;
  }
  if (r.nomem) return luaL_error(L, "not enough memory");
  lua_createtable(L, 0, 6);
  if (r.status_known && r.signal == 0) {
    lua_pushinteger(L, r.status);
    lua_setfield(L, -2, "status");
  }
  if (r.signal != 0) {
    lua_pushinteger(L, r.signal);
    lua_setfield(L, -2, "signal");
  }
  lua_pushboolean(L, r.status_known && r.signal == 0 && r.status == 0);
  lua_setfield(L, -2, "ok");
  if (r.out != NULL) {
    lua_pushlstring(L, r.out, r.out_len);
    lua_setfield(L, -2, "stdout");
  }
  if (r.err != NULL) {
    lua_pushlstring(L, r.err, r.err_len);
    lua_setfield(L, -2, "stderr");
  }
  lua_pushboolean(L, r.truncated);
  lua_setfield(L, -2, "truncated");
  return 1;
}

/* The wait loop (binding.h, "Blocking calls"); the block is at kc, the
   handle below it.  Only the process is waited on: its reaper watches ctx
   and ends it, so the call wakes once it is reaped. */
static int exec_k(lua_State *L, int status, lua_KContext kc) {
  (void)status;
  weft_block *b = lua_touserdata(L, (int)kc);
  execwait *w = weft_block_extra(b);
  for (;;) {
    weft_block_reset(b);
    if (weft_proc_done(w->p)) {
      int n = push_result(L, w->p);
      execwait_hook(w, true); /* the handle's close frees the output now */
      return n;
    }
    if (!weft_proc_add_waiter(w->p, &w->pw.w)) continue;
    weft_block_wait(L, b, kc, exec_k);
  }
}

static int l_exec(lua_State *L) {
  weft_ctx *ctx = weft_check_ctx(L, 1);
  int ct = lua_type(L, 2);
  if (ct != LUA_TTABLE && ct != LUA_TSTRING)
    luaL_error(L, "bad argument #2 to 'exec' (argv table or string "
                  "expected, got %s)", luaL_typename(L, 2));
  if (!lua_isnoneornil(L, 3) && !lua_istable(L, 3))
    luaL_error(L, "bad argument #3 to 'exec' (table expected, got %s)",
               luaL_typename(L, 3));
  lua_settop(L, 3);
  lua_newtable(L); /* ANCHOR */
  weft_proc_spec s;
  memset(&s, 0, sizeof s);
  s.ctx = ctx;
  bool shell = check_opts(L, &s);
  if (ct == LUA_TSTRING) {
    if (!shell)
      luaL_error(L, "bad argument #2 to 'exec' (a string command needs "
                    "opts.shell = true; or give an argv table)");
    const char **argv = new_array(L, 3);
    argv[0] = "/bin/sh";
    argv[1] = "-c";
    lua_pushvalue(L, 2);
    argv[2] = anchored(L, "argument #2 to 'exec' (cmd", NULL);
    s.argv = argv;
  } else {
    if (shell)
      luaL_error(L, "bad argument #2 to 'exec' (opts.shell = true needs a "
                    "string command)");
    s.argv = check_argv(L);
  }
  weft_runtime *rt = weft_runtime_of(L);
  int err = weft_ctx_err(ctx);
  if (err != WEFT_LIVE) {
    lua_pushnil(L);
    lua_pushstring(L, weft_ctx_errmsg(err));
    return 2;
  }
  /* the handle (closed when the call returns or an error unwinds it),
     then the block: both before the start, as pushing them may raise */
  weft_proc **h = lua_newuserdatauv(L, sizeof *h, 0);
  *h = NULL;
  luaL_setmetatable(L, PROC_MT);
  lua_toclose(L, -1);
  weft_block *b = weft_block_new_ex(L, sizeof(execwait), execwait_hook);
  execwait *w = weft_block_extra(b);
  weft_park_waiter_init(&w->pw, weft_block_park(b));
  char msg[512];
  weft_proc *p;
  if (weft_proc_start(rt, &s, &p, msg, sizeof msg) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, msg);
    return 2;
  }
  *h = p;
  weft_proc_retain(p);
  w->p = p;
  return exec_k(L, LUA_OK, lua_gettop(L));
}

void weft_open_exec(lua_State *L) {
  luaL_newmetatable(L, PROC_MT);
  lua_pushcfunction(L, proc_close);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, proc_close);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_exec);
  lua_setfield(L, -2, "exec");
}
