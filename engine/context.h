/*
** context.h: the cancellation tree (Go's context package, in C), shared by
** every lua_State of every thread.
*/
#ifndef WEFT_CONTEXT_H
#define WEFT_CONTEXT_H

#include <math.h>
#include <stdbool.h>
#include <stddef.h>

#include <lua.h>

#include "object.h"
#include "value.h"
#include "wait.h"
#include "weft.h"

typedef struct weft_ctx weft_ctx;

enum { WEFT_LIVE = 0, WEFT_CANCELED = 1, WEFT_DEADLINE_EXCEEDED = 2 };

#define WEFT_CANCELED_MSG "context canceled"
#define WEFT_DEADLINE_MSG "context deadline exceeded"

extern const weft_class weft_ctx_class;

void weft_ctx_retain(weft_ctx *c);
void weft_ctx_release(weft_ctx *c);

/*
** The runtime's background context: never canceled, holds no reference on
** rt (rt holds it).  Made once by weft_runtime_new; NULL when out of memory.
*/
weft_ctx *weft_ctx_new_background(weft_runtime *rt);
/* rt->background, borrowed. */
weft_ctx *weft_ctx_background(weft_runtime *rt);

/*
** A new cancelable child of parent (a new reference), with its own
** deadline (INFINITY: none; in the past: exceeded at once).  NULL with
** errno set (ENOMEM, or the timer's error) on failure.
*/
weft_ctx *weft_ctx_new(weft_runtime *rt, weft_ctx *parent, double deadline);

/* A value child: key and value buffers are taken over (not retained),
   also on failure (NULL, errno), when they are released. */
weft_ctx *weft_ctx_with_value(weft_runtime *rt, weft_ctx *parent,
                              weft_buf *key, weft_buf *value);

/*
** Ends c with err (WEFT_CANCELED or WEFT_DEADLINE_EXCEEDED) and cause
** (retained; NULL: the cause is the error).  The first end wins.  Returns
** once c and all its descendants are done.  Any thread, no locks held.
*/
void weft_ctx_cancel(weft_ctx *c, int err, weft_buf *cause);

int weft_ctx_err(weft_ctx *c);                    /* WEFT_LIVE .. ; lock-free */
const char *weft_ctx_errmsg(int err);             /* NULL for WEFT_LIVE */
/* The cause once c is done (NULL: none given, the cause is the error). */
weft_buf *weft_ctx_cause(weft_ctx *c);
double weft_ctx_deadline(weft_ctx *c);            /* INFINITY: none */
/* The nearest value for key, or NULL. */
const weft_buf *weft_ctx_value(weft_ctx *c, const weft_buf *key);
/* False for contexts that can never end (background, values over it). */
bool weft_ctx_can_end(weft_ctx *c);

/* Adds w unless c is already done (then returns false); a context that
   can never end keeps no waiter (returns true).  Any thread. */
bool weft_ctx_add_waiter(weft_ctx *c, weft_waiter *w);
void weft_ctx_remove_waiter(weft_ctx *c, weft_waiter *w);

/* Blocks the calling thread until c ends or timeout seconds pass (INFINITY:
   no bound).  Returns whether c is done. */
bool weft_ctx_wait(weft_ctx *c, double timeout);

/* Test hooks (weft.core._ctx_children_count, weft.core._ctx_live): the
   children currently linked under c; the contexts alive in rt, background
   excluded.  Any thread. */
size_t weft_ctx_debug_children(weft_ctx *c);
long weft_ctx_debug_live(weft_runtime *rt);

/* Lua side: push a handle, check an argument. */
void weft_push_ctx(lua_State *L, weft_ctx *c);
weft_ctx *weft_check_ctx(lua_State *L, int arg);

#endif
