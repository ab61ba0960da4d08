/*
** object.c: reference counts of shared engine objects and their Lua handles.
**
** Owns: the atomic counts, the handle metatables' common part, and each
** state's weak handle cache (a registry table keyed by object address).
** Locking: none; counts are atomic, a handle cache belongs to one state.
** A release of an object the cycle collector tracks may hand the reference
** to the collector (cycle.c), which may run then, in the releasing thread,
** taking only the locks cycle.c lists (never blocking on one but its own
** leaf ones).
*/
#include "object.h"

#include <assert.h>

#include "cycle.h"

static const char cache_key = 0;   /* registry: object address -> handle */

/*
** A handle knows its class and its metatable's address: it is one of ours
** when it has a handle's size and still has the metatable it was made with
** (Lua code cannot write a full userdata's bytes, and debug.setmetatable
** makes a handle fail the test), so checking an argument looks nothing up.
*/
typedef struct handle {
  weft_object *obj;
  const weft_class *cls;
  const void *mt;
  bool uncached;  /* bound by weft_bind_handle, not in the cache yet */
  bool marked;    /* weft_handle_mark */
} handle;

/* The handle at idx, or NULL when that is no handle. */
static handle *as_handle(lua_State *L, int idx) {
  if (lua_type(L, idx) != LUA_TUSERDATA || lua_rawlen(L, idx) != sizeof(handle))
    return NULL;
  handle *h = lua_touserdata(L, idx);
  if (!lua_getmetatable(L, idx)) return NULL;
  bool ours = lua_topointer(L, -1) == h->mt;
  lua_pop(L, 1);
  return ours ? h : NULL;
}

void weft_object_init(weft_object *o, const weft_class *cls) {
  o->cls = cls;
  atomic_init(&o->refs, WEFT_REF_RETAIN);
  atomic_init(&o->inner, 0);
  atomic_init(&o->gc, 0);
  o->gc_next = NULL;
}

void weft_retain(weft_object *o) {
  uint64_t old = atomic_fetch_add_explicit(&o->refs, WEFT_REF_RETAIN,
                                           memory_order_relaxed);
  assert(WEFT_REF_COUNT(old) > 0);
  (void)old;
}

bool weft_try_retain(weft_object *o) {
  uint64_t n = atomic_load_explicit(&o->refs, memory_order_relaxed);
  while (WEFT_REF_COUNT(n) > 0)
    if (atomic_compare_exchange_weak_explicit(&o->refs, &n, n + WEFT_REF_RETAIN,
                                              memory_order_relaxed,
                                              memory_order_relaxed))
      return true;
  return false;
}

/*
** The inner count is raised after the retain and lowered before the
** release, so it never exceeds the inner references really held: a
** release that finds no outside reference left (cycle.c) is never missed,
** at worst it is seen by the next release instead.
*/
void weft_retain_inner(weft_object *o) {
  weft_retain(o);
  atomic_fetch_add_explicit(&o->inner, 1, memory_order_relaxed);
}

bool weft_object_drop(weft_object *o, bool inner) {
  if (inner) atomic_fetch_sub_explicit(&o->inner, 1, memory_order_relaxed);
  if ((atomic_load_explicit(&o->gc, memory_order_acquire) & WEFT_GC_TRACKED) &&
      weft_cycle_offer(o))
    return false;  /* the collector has the reference now */
  uint64_t old = atomic_fetch_sub_explicit(&o->refs, WEFT_REF_ONE,
                                           memory_order_acq_rel);
  return WEFT_REF_COUNT(old) == 1;
}

void weft_release(weft_object *o) {
  if (weft_object_drop(o, false)) o->cls->destroy(o);
}

void weft_release_inner(weft_object *o) {
  if (weft_object_drop(o, true)) o->cls->destroy(o);
}

void weft_release_quiet(weft_object *o) {
  if (WEFT_REF_COUNT(atomic_fetch_sub_explicit(&o->refs, WEFT_REF_ONE,
                                               memory_order_acq_rel)) == 1)
    o->cls->destroy(o);
}

void weft_push_weak_values(lua_State *L, const void *key) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, key) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_createtable(L, 0, 4);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "v");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, key);
}

static void push_cache(lua_State *L) { weft_push_weak_values(L, &cache_key); }

void weft_push_unbound(lua_State *L, const weft_class *cls, int nuv) {
  handle *h = lua_newuserdatauv(L, sizeof *h, nuv);
  h->obj = NULL;  /* no reference until it is bound */
  h->cls = cls;
  h->uncached = h->marked = false;
  luaL_getmetatable(L, cls->name);
  h->mt = lua_topointer(L, -1);
  lua_setmetatable(L, -2);
}

void weft_bind_handle(lua_State *L, int idx, weft_object *o) {
  handle *h = lua_touserdata(L, idx);
  h->obj = o;  /* owns it from here */
  h->uncached = true;
}

void weft_cache_handle(lua_State *L, int idx) {
  handle *h = lua_touserdata(L, idx);
  if (!h->uncached) return;  /* the common case: no table touched */
  idx = lua_absindex(L, idx);
  push_cache(L);
  lua_pushvalue(L, idx);
  lua_rawsetp(L, -2, h->obj);
  lua_pop(L, 1);
  h->uncached = false;
}

void weft_push_object(lua_State *L, weft_object *o) {
  push_cache(L);
  if (lua_rawgetp(L, -1, o) == LUA_TUSERDATA) {
    lua_remove(L, -2);
    return;
  }
  lua_pop(L, 2);
  weft_push_unbound(L, o->cls, 0);
  weft_retain(o);
  weft_bind_handle(L, -1, o);
  weft_cache_handle(L, -1);
}

bool weft_is_handle(lua_State *L, int idx) { return as_handle(L, idx) != NULL; }

weft_object *weft_to_object(lua_State *L, int idx) {
  handle *h = as_handle(L, idx);
  return h != NULL ? h->obj : NULL;
}

weft_object *weft_check_object(lua_State *L, int arg, const weft_class *cls) {
  handle *h = as_handle(L, arg);
  if (h == NULL || h->cls != cls) luaL_typeerror(L, arg, cls->name);
  if (h->obj == NULL) luaL_argerror(L, arg, "handle already released");
  return h->obj;
}

weft_object *weft_handle_take(lua_State *L, int idx) {
  handle *h = as_handle(L, idx);  /* from a __gc, which Lua code can call */
  weft_object *o = h != NULL ? h->obj : NULL;
  if (o != NULL) h->obj = NULL;
  return o;
}

void weft_handle_mark(lua_State *L, int idx) {
  handle *h = as_handle(L, idx);
  if (h != NULL) h->marked = true;
}

bool weft_handle_marked(lua_State *L, int idx) {
  handle *h = as_handle(L, idx);
  return h != NULL && h->marked;
}

static int handle_gc(lua_State *L) {
  handle *h = as_handle(L, 1);  /* debug.getmetatable lets Lua call it */
  if (h != NULL && h->obj != NULL) {
    weft_object *o = h->obj;
    h->obj = NULL;
    weft_release(o);
  }
  return 0;
}

static int handle_tostring(lua_State *L) {
  handle *h = as_handle(L, 1);
  if (h == NULL) return luaL_typeerror(L, 1, "weft handle");
  lua_pushfstring(L, "%s: %p", h->cls->name, (void *)h->obj);
  return 1;
}

void weft_new_class(lua_State *L, const weft_class *cls, const luaL_Reg *l,
                    const luaL_Reg *meta) {
  luaL_newmetatable(L, cls->name);
  lua_pushcfunction(L, handle_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, handle_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushliteral(L, "locked");
  lua_setfield(L, -2, "__metatable");
  if (meta != NULL) luaL_setfuncs(L, meta, 0);
  if (l != NULL) {
    lua_newtable(L);
    luaL_setfuncs(L, l, 0);
    lua_setfield(L, -2, "__index");
  }
}
