/*
** binding.h: what the Lua binding files share (lweft.c opens the module,
** lcontext.c adds the context functions).
*/
#ifndef WEFT_BINDING_H
#define WEFT_BINDING_H

#include <lua.h>

/*
** Argument arg as a duration in seconds: a number (>= 0, may be inf) or a
** string parsed by the LPeg grammar of lua/weft/duration.lua.  Raises an
** argument error otherwise.
*/
double weft_check_duration(lua_State *L, int arg);

/*
** Guards: a userdata holding one engine reference (a value buffer, or a
** shared object such as a context) while Lua calls that may raise run, so
** a raise leaks nothing.  Push one, store the pointer in it, and take it
** back once nothing can raise any more.
*/
void **weft_guard_buf(lua_State *L);
void **weft_guard_object(lua_State *L);
void *weft_guard_take(void **g);

/* Adds the context functions to the module table on top of the stack and
   registers the context metatable. */
void weft_open_context(lua_State *L);

#endif
