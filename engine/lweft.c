/*
** lweft.c: the weft.core module: opening it into a state, weft.copy, the
** clock, durations and the error constants.  Per-concept functions live in
** their own binding files (lcontext.c).
**
** Owns: nothing shared; state lives in the runtime (runtime.c).
*/
#include <math.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "binding.h"
#include "context.h"
#include "object.h"
#include "runtime.h"
#include "value.h"

static const char duration_key = 0;  /* registry: the LPeg duration parser */

double weft_check_duration(lua_State *L, int arg) {
  if (lua_type(L, arg) == LUA_TNUMBER) {
    double d = lua_tonumber(L, arg);
    luaL_argcheck(L, d >= 0, arg, "duration must be a number >= 0");
    return d;
  }
  if (lua_type(L, arg) != LUA_TSTRING)
    luaL_typeerror(L, arg, "duration (number or string)");
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &duration_key) != LUA_TFUNCTION)
    luaL_error(L, "weft: duration parser missing (load weft, not weft.core)");
  lua_pushvalue(L, arg);
  lua_call(L, 1, 2);
  if (lua_isnil(L, -2)) luaL_argerror(L, arg, lua_tostring(L, -1));
  double d = lua_tonumber(L, -2);
  lua_pop(L, 2);
  return d;
}

/* weft.copy(...): every argument through a buffer and back. */
static int l_copy(lua_State *L) {
  int n = lua_gettop(L);
  void **g = weft_guard_buf(L);  /* decoding may raise */
  weft_buf *b = weft_buf_encode(L, 1, n, "args", 1);
  *g = b;
  int m = weft_buf_decode(L, b);
  weft_buf_release(weft_guard_take(g));
  return m;
}

#define GUARD_BUF "weft.guard.buffer"
#define GUARD_OBJECT "weft.guard.object"

static int guard_buf_gc(lua_State *L) {
  weft_buf_release(weft_guard_take(lua_touserdata(L, 1)));
  return 0;
}

static int guard_object_gc(lua_State *L) {
  weft_object *o = weft_guard_take(lua_touserdata(L, 1));
  if (o != NULL) weft_release(o);
  return 0;
}

static void **new_guard(lua_State *L, const char *mt) {
  void **g = lua_newuserdatauv(L, sizeof *g, 0);
  *g = NULL;
  luaL_setmetatable(L, mt);
  return g;
}

void **weft_guard_buf(lua_State *L) { return new_guard(L, GUARD_BUF); }
void **weft_guard_object(lua_State *L) { return new_guard(L, GUARD_OBJECT); }

void *weft_guard_take(void **g) {
  void *p = *g;
  *g = NULL;
  return p;
}

static int l_now(lua_State *L) {
  lua_pushnumber(L, weft_now());
  return 1;
}

static int l_ncpu(lua_State *L) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  lua_pushinteger(L, n > 0 ? n : 1);
  return 1;
}

/* weft._typeof(v): the class of a weft handle ("weft.pool", ...), or nil */
static int l_typeof(lua_State *L) {
  weft_object *o = weft_to_object(L, 1);
  if (o == NULL) return 0;
  lua_pushstring(L, o->cls->name);
  return 1;
}

static int l_bind_duration(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &duration_key);
  return 0;
}

/* weft._engine_live() -> blocks, bytes: the engine's own allocations alive
   in this runtime (leak checks). */
static int l_engine_live(lua_State *L) {
  weft_runtime *rt = weft_runtime_of(L);
  long blocks, bytes;
  weft_alloc_live(rt, &blocks, &bytes);
  lua_pushinteger(L, (lua_Integer)blocks);
  lua_pushinteger(L, (lua_Integer)bytes);
  return 2;
}

static const luaL_Reg funcs[] = {
    {"copy", l_copy},
    {"_engine_live", l_engine_live},
    {"now", l_now},
    {"ncpu", l_ncpu},
    {"_bind_duration", l_bind_duration},
    {"_typeof", l_typeof},
    {NULL, NULL},
};

int luaopen_weft_core(lua_State *L) {
  weft_runtime_ensure(L);
  luaL_newmetatable(L, GUARD_BUF);
  lua_pushcfunction(L, guard_buf_gc);
  lua_setfield(L, -2, "__gc");
  luaL_newmetatable(L, GUARD_OBJECT);
  lua_pushcfunction(L, guard_object_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 2);
  luaL_newlib(L, funcs);
  lua_pushliteral(L, WEFT_VERSION);
  lua_setfield(L, -2, "_VERSION");
  lua_pushliteral(L, WEFT_CANCELED_MSG);
  lua_setfield(L, -2, "CANCELED");
  lua_pushliteral(L, WEFT_DEADLINE_MSG);
  lua_setfield(L, -2, "DEADLINE_EXCEEDED");
  weft_open_context(L);
  weft_open_pool(L);
  weft_open_chan(L);
  weft_open_exec(L);
  weft_open_host(L);
  weft_open_signals(L);
  weft_open_progress(L);
  return 1;
}
