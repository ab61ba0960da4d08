/*
** object.h: the header every shared engine object (context; later channel,
** pool, future) starts with, and the Lua handles that point at one.
**
** An object is reference counted with atomics and may be referenced from
** any thread and any lua_State.  A Lua handle is a full userdata holding
** one reference; each state keeps a weak cache so that one object has one
** handle per state (identity survives copies: weft.copy(ctx) == ctx).
*/
#ifndef WEFT_OBJECT_H
#define WEFT_OBJECT_H

#include <stdatomic.h>
#include <stdbool.h>

#include <lauxlib.h>
#include <lua.h>

typedef struct weft_object weft_object;

typedef struct weft_class {
  const char *name;                 /* metatable name, e.g. "weft.context" */
  void (*destroy)(weft_object *o);  /* last reference gone; any thread */
} weft_class;

struct weft_object {
  const weft_class *cls;
  atomic_long refs;
};

void weft_object_init(weft_object *o, const weft_class *cls);
void weft_retain(weft_object *o);
/* Retains o unless its count already reached zero (it is being destroyed). */
bool weft_try_retain(weft_object *o);
void weft_release(weft_object *o);

/*
** Pushes the handle for o in L (the cached one, or a new userdata holding a
** new reference).  The metatable registered under o->cls->name must exist.
** May raise a memory error.
*/
void weft_push_object(lua_State *L, weft_object *o);

/*
** For a call that makes an object: push its handle first, while a failure
** owns nothing (weft_push_unbound; __gc and methods see a released
** handle), then bind the new object to it, handing over the caller's
** reference (weft_bind_handle: the handle owns o before anything can
** raise).  Both may raise a memory error.
*/
void weft_push_unbound(lua_State *L, const weft_class *cls);
void weft_bind_handle(lua_State *L, int idx, weft_object *o);

/* The object of handle at idx if it is a weft handle of any class, else NULL. */
weft_object *weft_to_object(lua_State *L, int idx);

/*
** Takes the reference out of the handle at idx (for a class's own __gc;
** the caller releases it).  A handle has one user value its class may use.
*/
weft_object *weft_handle_take(lua_State *L, int idx);

/* The object of class cls at arg, or raises a type error naming tname. */
weft_object *weft_check_object(lua_State *L, int arg, const weft_class *cls);

/*
** Registers the metatable for cls (named cls->name): methods l as __index,
** a __gc dropping the handle's reference, extra metamethods meta (either
** list may be NULL).  Leaves the metatable on the stack.
*/
void weft_new_class(lua_State *L, const weft_class *cls, const luaL_Reg *l,
                    const luaL_Reg *meta);

#endif
