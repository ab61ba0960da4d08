/*
** value.h: copying Lua values between states (DESIGN.md, "Values crossing
** states").  A value list is encoded out of one state into a buffer that
** belongs to no state, and decoded into another state.
**
** A buffer is immutable once encoded and reference counted, so it may be
** read by several threads at once and kept by shared objects (context
** values, causes, channel messages).  It does not own a reference to its
** runtime (whose allocator frees it): whoever holds a buffer keeps the
** runtime alive until the buffer is released (an engine object releases
** its buffers before its runtime; a call holds its state's binding).
*/
#ifndef WEFT_VALUE_H
#define WEFT_VALUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "weft.h"

typedef struct weft_buf weft_buf;
struct weft_object;

/*
** Encodes the n values at idx.. of L.  Value i is named root[i] in error
** paths (root alone when n == 1 and index is false), e.g. "args[2].conn".
** On a refused value raises "<path>: cannot copy <type>" in L; L's stack
** is then as the raise leaves it and nothing leaks.  Call from the thread
** running L, inside L's protected call (any Lua C function is).
*/
weft_buf *weft_buf_encode(lua_State *L, int idx, int n, const char *root,
                          bool index);

/*
** Pushes the buffer's values onto L and returns how many.  May raise
** (memory, or a C function missing in L): call inside L's protected call.
** Any number of threads may decode one buffer at once.
*/
int weft_buf_decode(lua_State *L, const weft_buf *b);
/* The same, then drops the caller's reference to b (also when it raises). */
int weft_buf_decode_release(lua_State *L, weft_buf *b);

/*
** When b's first value is a plain array of scalars (no other key, no
** metatable), stores its elements at t[offset + 1 ..] (raw) and returns
** their count; else returns -1 and does nothing.  May raise (memory).
*/
lua_Integer weft_buf_decode_array_into(lua_State *L, const weft_buf *b,
                                       int t, lua_Integer offset);

/* A buffer holding one string, made without a Lua state; NULL when out
   of memory.  Any thread. */
weft_buf *weft_buf_new_string(weft_runtime *rt, const char *s);

int weft_buf_count(const weft_buf *b);
void weft_buf_retain(weft_buf *b);
void weft_buf_release(weft_buf *b);  /* NULL is allowed */

/* True when a and b encode the same bytes (for scalar keys). */
bool weft_buf_equal(const weft_buf *a, const weft_buf *b);

/*
** For the cycle collector (cycle.c).  weft_buf_link is called before b is
** stored into an object (a cause, a context value, a channel's ring, a
** future's result): when b holds handles it marks what they reach as
** tracked, and b too, whose releases then offer its handles to the
** collector.  A buffer's handles never change.
*/
void weft_buf_link(weft_buf *b);
size_t weft_buf_nhandles(const weft_buf *b);
struct weft_object *weft_buf_handle(const weft_buf *b, size_t i);
uint64_t weft_buf_refword(weft_buf *b);  /* count | retains << 32 */
/* A release that offers nothing to the collector (its own references). */
void weft_buf_release_quiet(weft_buf *b);

#endif
