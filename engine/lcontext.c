/*
** lcontext.c: the Lua binding of contexts (DESIGN.md, "Contexts"):
** weft.background, with_cancel, with_timeout, with_deadline, with_value,
** the ctx methods, and the test hooks _ctx_children_count and _ctx_live.
**
** Owns: nothing shared but cancel functions (objects holding their context
** by an inner reference, object.h); contexts live in context.c.  Per
** state it registers the "weft.context" and "weft.cancel" metatables.
** Engine references held across Lua calls that may raise sit in guards
** (binding.h), so a raise never leaks them.
**
** Locking: none taken here.  Every Lua call that may raise (argument
** checks, duration parsing, encoding, pushing) happens before or after the
** engine calls, which never call back into Lua; blocking waits run with no
** lock held.
*/
#include <errno.h>
#include <math.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "binding.h"
#include "context.h"
#include "runtime.h"
#include "value.h"

void weft_push_ctx(lua_State *L, weft_ctx *c) {
  weft_push_object(L, (weft_object *)c);
}

weft_ctx *weft_check_ctx(lua_State *L, int arg) {
  return (weft_ctx *)weft_check_object(L, arg, &weft_ctx_class);
}

static int fail_new(lua_State *L) {
  int e = errno;
  if (e == ENOMEM || e == 0) return luaL_error(L, "not enough memory");
  if (e == ESHUTDOWN)
    return luaL_error(L, "weft: the runtime is closed (deadlines no longer fire)");
  return luaL_error(L, "weft: cannot create context: %s", strerror(e));
}

/* --- constructors -------------------------------------------------------- */

static int l_background(lua_State *L) {
  weft_push_ctx(L, weft_ctx_background(weft_runtime_of(L)));
  return 1;
}

/*
** A cancel function is a shared handle too (class "weft.cancel", called as
** cancel(cause?)), so it can be passed to jobs in other states: a job may
** cancel its siblings, as Go code passes cancel functions around.
*/
typedef struct canceler {
  weft_object obj;
  weft_runtime *rt;  /* kept alive by ctx (or by the caller, while NULL) */
  weft_ctx *ctx;     /* retained */
} canceler;

static void canceler_destroy(weft_object *o) {
  canceler *k = (canceler *)o;
  weft_ctx *c = k->ctx;
  weft_free(k->rt, k, sizeof *k);
  if (c != NULL) weft_release_inner((weft_object *)c);
}

/* For the cycle collector (cycle.c): a cancel function holds its context
   (an inner reference, set once before it is published) and nothing that
   can close a cycle. */
static weft_runtime *canceler_gc_runtime(weft_object *o) {
  return ((canceler *)o)->rt;
}

static weft_object *canceler_gc_next(weft_object *o) {
  return (weft_object *)((canceler *)o)->ctx;
}

static bool canceler_gc_edges(weft_object *o, weft_gc_visit *v) {
  weft_object *c = canceler_gc_next(o);
  return c == NULL || v->obj(v, c);
}

static void canceler_gc_clear(weft_object *o, weft_gc_visit *v) {
  (void)o;
  (void)v;
}

static const weft_gc_ops canceler_gc_ops = {
    canceler_gc_runtime, canceler_gc_next, canceler_gc_edges,
    canceler_gc_clear};

static const weft_class canceler_class = {"weft.cancel", canceler_destroy,
                                          &canceler_gc_ops};

static int l_cancel(lua_State *L) {
  canceler *k = (canceler *)weft_check_object(L, 1, &canceler_class);
  weft_ctx *c = k->ctx;
  if (weft_ctx_err(c) != WEFT_LIVE) return 0;  /* the first cancel won */
  weft_buf *cause = NULL;
  if (!lua_isnoneornil(L, 2)) cause = weft_buf_encode(L, 2, 1, "cause", 0);
  weft_ctx_cancel(c, WEFT_CANCELED, cause);  /* no Lua call: cannot raise */
  weft_buf_release(cause);
  return 0;
}

/* Pushes ctx, cancel for a new child of the context at arg 1. */
static int push_child(lua_State *L, weft_ctx *parent, double deadline) {
  weft_runtime *rt = weft_runtime_of(L);
  void **g = weft_guard_object(L);
  void **gk = weft_guard_object(L);
  canceler *k = weft_alloc(rt, sizeof *k);
  if (k == NULL) return luaL_error(L, "not enough memory");
  weft_object_init(&k->obj, &canceler_class);
  k->rt = rt;
  k->ctx = NULL;
  *gk = k;
  weft_ctx *c = weft_ctx_new(rt, parent, deadline);
  if (c == NULL) return fail_new(L);
  *g = c;
  weft_retain_inner((weft_object *)c);
  k->ctx = c;
  weft_push_ctx(L, c);
  weft_push_object(L, &k->obj);
  weft_ctx_release(weft_guard_take(g));  /* the handles hold their own */
  weft_release(weft_guard_take(gk));
  return 2;
}

static int l_with_cancel(lua_State *L) {
  weft_ctx *parent = weft_check_ctx(L, 1);
  return push_child(L, parent, INFINITY);
}

static int l_with_timeout(lua_State *L) {
  weft_ctx *parent = weft_check_ctx(L, 1);
  double d = weft_check_duration(L, 2);
  return push_child(L, parent, weft_now() + d);
}

static int l_with_deadline(lua_State *L) {
  weft_ctx *parent = weft_check_ctx(L, 1);
  double t = luaL_checknumber(L, 2);
  luaL_argcheck(L, t == t, 2, "deadline must not be NaN");
  return push_child(L, parent, t);
}

/*
** Checks the key at arg and leaves it there normalized: a float with an
** integral value becomes an integer, so 1 and 1.0 name the same value.
*/
static void check_key(lua_State *L, int arg) {
  switch (lua_type(L, arg)) {
    case LUA_TSTRING:
    case LUA_TBOOLEAN:
      return;
    case LUA_TNUMBER:
      if (!lua_isinteger(L, arg)) {
        lua_Number f = lua_tonumber(L, arg);
        lua_Integer i;
        luaL_argcheck(L, f == f, arg, "key must not be NaN");
        if (floor(f) == f && lua_numbertointeger(f, &i)) {
          lua_pushinteger(L, i);
          lua_replace(L, arg);
        }
      }
      return;
    default:
      luaL_typeerror(L, arg, "string, number or boolean");
  }
}

static int l_with_value(lua_State *L) {
  weft_ctx *parent = weft_check_ctx(L, 1);
  check_key(L, 2);
  lua_settop(L, 3);
  weft_runtime *rt = weft_runtime_of(L);
  void **gc = weft_guard_object(L);
  void **gk = weft_guard_buf(L);
  void **gv = weft_guard_buf(L);
  *gk = weft_buf_encode(L, 2, 1, "key", 0);
  *gv = weft_buf_encode(L, 3, 1, "value", 0);
  weft_ctx *c = weft_ctx_with_value(rt, parent, weft_guard_take(gk), weft_guard_take(gv));
  if (c == NULL) return fail_new(L);
  *gc = c;
  weft_push_ctx(L, c);
  weft_ctx_release(weft_guard_take(gc));
  return 1;
}

/* --- methods ------------------------------------------------------------- */

static int push_err(lua_State *L, int err) {
  const char *m = weft_ctx_errmsg(err);
  if (m == NULL)
    lua_pushnil(L);
  else
    lua_pushstring(L, m);
  return 1;
}

static int m_err(lua_State *L) {
  return push_err(L, weft_ctx_err(weft_check_ctx(L, 1)));
}

static int m_done(lua_State *L) {
  lua_pushboolean(L, weft_ctx_err(weft_check_ctx(L, 1)) != WEFT_LIVE);
  return 1;
}

static int m_cause(lua_State *L) {
  weft_ctx *c = weft_check_ctx(L, 1);
  int err = weft_ctx_err(c);
  weft_buf *cause = weft_ctx_cause(c);  /* owned by c; arg 1 keeps c */
  if (err == WEFT_LIVE || cause == NULL) return push_err(L, err);
  int n = weft_buf_decode(L, cause);
  return n > 0 ? 1 : push_err(L, err);
}

static int m_deadline(lua_State *L) {
  double d = weft_ctx_deadline(weft_check_ctx(L, 1));
  if (isinf(d))
    lua_pushnil(L);
  else
    lua_pushnumber(L, d);
  return 1;
}

static int m_value(lua_State *L) {
  weft_ctx *c = weft_check_ctx(L, 1);
  check_key(L, 2);
  lua_settop(L, 2);
  weft_buf *key = weft_buf_encode(L, 2, 1, "key", 0);  /* nothing raises
                                                           until released */
  const weft_buf *v = weft_ctx_value(c, key);  /* owned by c or ancestors */
  weft_buf_release(key);
  if (v == NULL) {
    lua_pushnil(L);
    return 1;
  }
  int n = weft_buf_decode(L, v);
  if (n == 0) lua_pushnil(L);
  return 1;
}

/* --- test hooks ---------------------------------------------------------- */

static int l_children_count(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)weft_ctx_debug_children(weft_check_ctx(L, 1)));
  return 1;
}

static int l_live(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)weft_ctx_debug_live(weft_runtime_of(L)));
  return 1;
}

static const luaL_Reg methods[] = {
    {"err", m_err},           {"done", m_done},   {"cause", m_cause},
    {"deadline", m_deadline}, {"value", m_value}, {"wait", weft_ctx_wait_lua},
    {NULL, NULL},
};

static const luaL_Reg funcs[] = {
    {"background", l_background},
    {"with_cancel", l_with_cancel},
    {"with_timeout", l_with_timeout},
    {"with_deadline", l_with_deadline},
    {"with_value", l_with_value},
    {"_ctx_children_count", l_children_count},
    {"_ctx_live", l_live},
    {NULL, NULL},
};

static const luaL_Reg cancel_meta[] = {{"__call", l_cancel}, {NULL, NULL}};

void weft_open_context(lua_State *L) {
  weft_new_class(L, &weft_ctx_class, methods, NULL);
  weft_new_class(L, &canceler_class, NULL, cancel_meta);
  lua_pop(L, 2);
  luaL_setfuncs(L, funcs, 0);
}
