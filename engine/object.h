/*
** object.h: the header every shared engine object (context; later channel,
** pool, future) starts with, and the Lua handles that point at one.
**
** An object is reference counted with atomics and may be referenced from
** any thread and any lua_State.  A Lua handle is a full userdata holding
** one reference; each state keeps a weak cache so that one object has one
** handle per state (identity survives copies: weft.copy(ctx) == ctx).
**
** References can form cycles (a cause or a channel message holding a handle
** that leads back to its holder); cycle.c collects them.  For it, an object
** keeps, besides its count, how many retains it ever had (in the same
** word, so a retain is still one atomic add), how many of its references
** are "inner" (held by buffers, child contexts, cancel functions: edges the
** collector can see), and its class may describe its edges (weft_gc_ops).
*/
#ifndef WEFT_OBJECT_H
#define WEFT_OBJECT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <lauxlib.h>
#include <lua.h>

typedef struct weft_object weft_object;
typedef struct weft_gc_ops weft_gc_ops;
struct weft_buf;
struct weft_runtime;

typedef struct weft_class {
  const char *name;                 /* metatable name, e.g. "weft.context" */
  void (*destroy)(weft_object *o);  /* last reference gone; any thread */
  const weft_gc_ops *gc;            /* NULL: the cycle collector treats the
                                       object as holding nothing */
} weft_class;

/* The refs word: the count in the low 32 bits, the number of retains so
   far (wrapping) in the high 32 bits. */
#define WEFT_REF_ONE ((uint64_t)1)
#define WEFT_REF_RETAIN (((uint64_t)1 << 32) | 1)
#define WEFT_REF_COUNT(w) ((uint32_t)(w))

/* Bits of weft_object.gc and of a buffer's flags (cycle.c). */
enum { WEFT_GC_TRACKED = 1, WEFT_GC_QUEUED = 2 };

struct weft_object {
  const weft_class *cls;
  _Atomic uint64_t refs;     /* count | retains << 32 */
  atomic_long inner;         /* references held by buffers, children,
                                cancel functions (<= their real number) */
  atomic_uint gc;            /* WEFT_GC_* */
  weft_object *gc_next;      /* the collector's queue (QUEUED) */
};

/*
** What the cycle collector needs of a class (cycle.c).  edges and clear get
** a visitor: obj and buf report an edge (clear: a buffer taken out of o,
** whose reference the visitor takes over); they return false to stop.
*/
typedef struct weft_gc_visit weft_gc_visit;
struct weft_gc_visit {
  bool (*obj)(weft_gc_visit *v, weft_object *o);
  bool (*buf)(weft_gc_visit *v, struct weft_buf *b);
};

struct weft_gc_ops {
  struct weft_runtime *(*runtime)(weft_object *o);
  /* The one object o holds for its whole life (a context's parent, a
     cancel function's context), or NULL.  Immutable. */
  weft_object *(*next)(weft_object *o);
  /* Reports every object and buffer o holds now (next included).  False
     when it cannot look now (a lock is busy): o then counts as live. */
  bool (*edges)(weft_object *o, weft_gc_visit *v);
  /* o is garbage (nothing outside the collector can reach it): takes out
     of o the buffers that can close a cycle (set after o was made: a
     cause, a channel's messages, a future's result), each to v->buf. */
  void (*clear)(weft_object *o, weft_gc_visit *v);
};

void weft_object_init(weft_object *o, const weft_class *cls);
void weft_retain(weft_object *o);
/* Retains o unless its count already reached zero (it is being destroyed). */
bool weft_try_retain(weft_object *o);
void weft_release(weft_object *o);
/*
** Drops one reference and returns true when it was the last one (the
** caller then destroys o, e.g. in a loop instead of a recursion).  With
** inner, the reference was an inner one (retained by weft_retain_inner).
*/
bool weft_object_drop(weft_object *o, bool inner);
/* A reference held by an edge the collector sees: a buffer's handle, a
   child context's parent, a cancel function's context. */
void weft_retain_inner(weft_object *o);
void weft_release_inner(weft_object *o);
/* Drops a reference without offering o to the cycle collector (the
   collector's own references); destroys o when it was the last. */
void weft_release_quiet(weft_object *o);

/*
** Pushes the handle for o in L (the cached one, or a new userdata holding a
** new reference).  The metatable registered under o->cls->name must exist.
** May raise a memory error.
*/
void weft_push_object(lua_State *L, weft_object *o);

/*
** For a call that makes an object: push its handle first, while a failure
** owns nothing (weft_push_unbound, which may raise a memory error; __gc
** and methods see a released handle), then bind the new object to it,
** handing over the caller's reference (weft_bind_handle never raises).
** Such a handle is the only one of its new object, so it stays out of the
** state's cache until it is copied (weft_cache_handle, from the encoder):
** decoding is the only way the object can come back to the state.  The
** handle has nuv user values (nil), for the caller.
*/
void weft_push_unbound(lua_State *L, const weft_class *cls, int nuv);
void weft_bind_handle(lua_State *L, int idx, weft_object *o);
/* Puts the live handle at idx in L's cache if it was bound by
   weft_bind_handle and is not there yet (a flag: no table lookup). */
void weft_cache_handle(lua_State *L, int idx);

/* Whether the value at idx is a weft handle of any class, released or not
   (its __gc ran: a finalizer that resurrects it can still reach it). */
bool weft_is_handle(lua_State *L, int idx);

/* The object of handle at idx if it is a weft handle of any class, else NULL. */
weft_object *weft_to_object(lua_State *L, int idx);

/* Takes the reference out of the handle at idx (for a class's own __gc;
   the caller releases it). */
weft_object *weft_handle_take(lua_State *L, int idx);

/* A mark its class may set on one handle of an object (a pool's owner
   handle, whose __gc closes the pool): set it, or test the handle at idx. */
void weft_handle_mark(lua_State *L, int idx);
bool weft_handle_marked(lua_State *L, int idx);

/* Pushes the registry table at key, a table with weak values made on
   first use.  May raise a memory error. */
void weft_push_weak_values(lua_State *L, const void *key);

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
