/*
** lchan.c: the Lua binding of channels (DESIGN.md, "Channels"):
** weft.chan, ch:send/recv/try_send/try_recv/close/iter/len/cap/closed, and
** weft.select.
**
** Owns: the operations of a waiting call, kept in its block's extra space
** (binding.h) with a reference to each channel and to the context, so
** the call holds what it waits on whatever the script does to its
** arguments meanwhile.  Locking: none here (channel.c).  A send encodes
** its value before any channel call; a receive decodes after, with
** msg_push_release (a buffer is dropped even when decoding raises) or from
** a message the block owns, so a raise leaks nothing.  A small scalar
** travels inline in the message (channel.h), with no buffer at all.
*/
#include <lauxlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "binding.h"
#include "channel.h"
#include "context.h"
#include "runtime.h"

#define CLOSED_MSG "closed"

static weft_chan *check_chan(lua_State *L, int arg) {
  return (weft_chan *)weft_check_object(L, arg, &weft_chan_class);
}

static int push_closed(lua_State *L) {
  lua_pushnil(L);
  lua_pushliteral(L, CLOSED_MSG);
  return 2;
}

static int nomem(lua_State *L) { return luaL_error(L, "not enough memory"); }

/* The message of the value at v: inline when it is a small scalar, else
   encoded (which may raise, leaking nothing). */
static void msg_encode(lua_State *L, int v, const char *path, weft_msg *m) {
  switch (lua_type(L, v)) {
    case LUA_TBOOLEAN:
      m->tag = lua_toboolean(L, v) ? WEFT_MSG_TRUE : WEFT_MSG_FALSE;
      return;
    case LUA_TNUMBER:
      if (lua_isinteger(L, v)) {
        m->tag = WEFT_MSG_INT;
        m->u.i = lua_tointeger(L, v);
      } else {
        m->tag = WEFT_MSG_FLT;
        m->u.n = lua_tonumber(L, v);
      }
      return;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, v, &len);
      if (len > WEFT_MSG_SHORT) break;
      m->tag = WEFT_MSG_STR;
      m->len = (unsigned char)len;
      memcpy(m->u.s, s, len);
      return;
    }
    default: break;
  }
  weft_buf *b = weft_buf_encode(L, v, 1, path, false);
  m->tag = WEFT_MSG_BUF;
  m->u.buf = b;
}

/* Pushes the value of *m, which is then NONE (a buffer is released even
   when decoding raises). */
static void msg_push_release(lua_State *L, weft_msg *m) {
  weft_msg v = *m;
  m->tag = WEFT_MSG_NONE;
  switch (v.tag) {
    case WEFT_MSG_INT: lua_pushinteger(L, v.u.i); break;
    case WEFT_MSG_FLT: lua_pushnumber(L, v.u.n); break;
    case WEFT_MSG_FALSE: lua_pushboolean(L, 0); break;
    case WEFT_MSG_TRUE: lua_pushboolean(L, 1); break;
    case WEFT_MSG_STR: lua_pushlstring(L, v.u.s, v.len); break;
    default: weft_buf_decode_release(L, v.u.buf); break;
  }
}

/* ---------------------------------------------------------------------- */
/* waiting calls */

/* The extra space of a waiting call's block: its selection and ops. */
typedef struct chanwait {
  weft_chan_sel sel;
  weft_ctx *ctx; /* retained */
  uint64_t rng;
  bool select, nonblocking;
  int n;      /* ops set up so far */
  int *order; /* n indices into ops (select) */
  weft_chan_op ops[];
} chanwait;

static void chanwait_hook(void *extra, bool final) {
  chanwait *w = extra;
  for (int i = 0; i < w->n; i++) {
    weft_chan_op *op = &w->ops[i];
    if (!final) {
      weft_chan_dequeue(op);
      continue;
    }
    weft_msg_release(&op->msg);
    weft_release((weft_object *)op->ch);
  }
  if (final && w->ctx != NULL) weft_ctx_release(w->ctx);
  if (final) w->n = 0, w->ctx = NULL;
}

/* Pushes a block for n ops waiting under the context at ctx_arg. */
static chanwait *chanwait_new(lua_State *L, int n, int ctx_arg, bool select) {
  weft_ctx *ctx = weft_check_ctx(L, ctx_arg);
  size_t size = sizeof(chanwait) + (size_t)n * sizeof(weft_chan_op);
  size_t order = select ? (size_t)n * sizeof(int) : 0;
  weft_block *b = weft_block_new_ex(L, size + order, chanwait_hook);
  chanwait *w = weft_block_extra(b);
  w->sel.park = weft_block_park(b);
  w->select = select;
  w->order = select ? (int *)((char *)w + size) : NULL;
  weft_ctx_retain(ctx);
  w->ctx = ctx;
  return w;
}

/* Sets up the next op of w (send when v is a stack index, else recv). */
static void chanwait_add(lua_State *L, chanwait *w, weft_chan *ch, int v,
                         const char *path) {
  weft_chan_op *op = &w->ops[w->n];
  weft_msg msg = {.tag = WEFT_MSG_NONE};
  if (v != 0) msg_encode(L, v, path, &msg);
  memset(op, 0, sizeof *op);
  weft_retain((weft_object *)ch);
  op->ch = ch;
  op->sel = &w->sel;
  op->send = v != 0;
  op->msg = msg;
  op->index = ++w->n;
  if (w->order != NULL) w->order[op->index - 1] = op->index - 1;
}

static uint64_t next_random(uint64_t *s) { /* splitmix64 */
  uint64_t z = (*s += 0x9e3779b97f4a7c15u);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
  return z ^ (z >> 31);
}

/* Pushes the outcome of op (completed, or found its channel closed). */
static int push_outcome(lua_State *L, chanwait *w, weft_chan_op *op,
                        bool closed) {
  int n = 0;
  if (w->select) {
    lua_pushinteger(L, op->index);
    n = 1;
  }
  if (closed) return n + push_closed(L);
  if (op->send) {
    lua_pushboolean(L, 1);
  } else {
    msg_push_release(L, &op->msg);
  }
  return n + 1;
}

/* One try of every op without waiting, in random order for a select:
   the outcome of the first that could proceed, else -1. */
static int try_ops(lua_State *L, chanwait *w) {
  if (w->order != NULL)
    for (int i = w->n - 1; i > 0; i--) { /* Fisher-Yates */
      int j = (int)(next_random(&w->rng) % (uint64_t)(i + 1));
      int t = w->order[i];
      w->order[i] = w->order[j];
      w->order[j] = t;
    }
  for (int i = 0; i < w->n; i++) {
    weft_chan_op *op = &w->ops[w->order != NULL ? w->order[i] : i];
    int r;
    if (op->send) {
      r = weft_chan_try_send(op->ch, &op->msg); /* OK: the channel took it */
    } else {
      r = weft_chan_try_recv(op->ch, &op->msg);
    }
    if (r == WEFT_CHAN_NOMEM) return nomem(L);
    if (r != WEFT_CHAN_BLOCK)
      return push_outcome(L, w, op, r == WEFT_CHAN_CLOSED);
  }
  return -1;
}

/* The wait loop (binding.h, "Blocking calls"); the block is at kc. */
static int chanwait_k(lua_State *L, int status, lua_KContext kc) {
  (void)status;
  weft_block *b = lua_touserdata(L, (int)kc);
  chanwait *w = weft_block_extra(b);
  for (;;) {
    weft_block_reset(b);
    if (atomic_load_explicit(&w->sel.claimed, memory_order_relaxed))
      return push_outcome(L, w, &w->ops[w->sel.index - 1], w->sel.closed);
    int err = weft_ctx_err(w->ctx);
    if (err != WEFT_LIVE) {
      lua_pushnil(L);
      lua_pushstring(L, weft_ctx_errmsg(err));
      return 2;
    }
    int n = try_ops(L, w);
    if (n >= 0) return n;
    if (w->nonblocking) {
      lua_pushinteger(L, 0);
      return 1;
    }
    if (weft_ctx_can_end(w->ctx) && !weft_block_on_ctx(b, w->ctx)) continue;
    int i = 0;
    while (i < w->n && weft_chan_enqueue(&w->ops[i])) i++;
    if (i < w->n) continue; /* one became ready: try again */
    weft_block_wait(L, b, kc, chanwait_k);
  }
}

/* ---------------------------------------------------------------------- */
/* channels */

static int l_chan(lua_State *L) {
  lua_Integer cap = luaL_optinteger(L, 1, 0);
  luaL_argcheck(L, cap >= 0 && cap <= WEFT_CHAN_MAX_CAP, 1,
                "capacity must be between 0 and 2^30");
  weft_chan *ch = weft_chan_new(weft_runtime_of(L), (long)cap);
  if (ch == NULL) return nomem(L);
  void **g = weft_guard_object(L); /* pushing the handle may raise */
  *g = ch;
  weft_push_object(L, (weft_object *)ch);
  weft_release(weft_guard_take(g));
  return 1;
}

/* ch:send(ctx, v) */
static int c_send(lua_State *L) {
  weft_chan *ch = check_chan(L, 1);
  weft_ctx *ctx = weft_check_ctx(L, 2);
  luaL_argcheck(L, !lua_isnoneornil(L, 3), 3, "cannot send nil");
  lua_settop(L, 3);
  if (weft_ctx_err(ctx) == WEFT_LIVE) { /* fast path: no block */
    weft_msg v;
    msg_encode(L, 3, "value", &v);
    int r = weft_chan_try_send(ch, &v);
    if (r != WEFT_CHAN_BLOCK) {
      if (r == WEFT_CHAN_OK) {
        lua_pushboolean(L, 1);
        return 1;
      }
      weft_msg_release(&v);
      if (r == WEFT_CHAN_CLOSED) return push_closed(L);
      return nomem(L);
    }
    weft_msg_release(&v); /* encoded again below, where nothing leaks it */
  }
  chanwait *w = chanwait_new(L, 1, 2, false);
  chanwait_add(L, w, ch, 3, "value");
  return chanwait_k(L, LUA_OK, 4);
}

/* ch:recv(ctx), with the channel at 1 and the context at 2 */
static int recv(lua_State *L) {
  weft_chan *ch = check_chan(L, 1);
  weft_ctx *ctx = weft_check_ctx(L, 2);
  lua_settop(L, 2);
  if (weft_ctx_err(ctx) == WEFT_LIVE) { /* fast path: no block */
    weft_msg v;
    int r = weft_chan_try_recv(ch, &v);
    if (r == WEFT_CHAN_OK) {
      msg_push_release(L, &v);
      return 1;
    }
    if (r == WEFT_CHAN_CLOSED) return push_closed(L);
  }
  chanwait *w = chanwait_new(L, 1, 2, false);
  chanwait_add(L, w, ch, 0, NULL);
  return chanwait_k(L, LUA_OK, 3);
}

static int c_recv(lua_State *L) { return recv(L); }

static int c_try_send(lua_State *L) {
  weft_chan *ch = check_chan(L, 1);
  luaL_argcheck(L, !lua_isnoneornil(L, 2), 2, "cannot send nil");
  weft_msg v;
  msg_encode(L, 2, "value", &v);
  int r = weft_chan_try_send(ch, &v);
  if (r == WEFT_CHAN_OK) {
    lua_pushboolean(L, 1);
    return 1;
  }
  weft_msg_release(&v);
  if (r == WEFT_CHAN_NOMEM) return nomem(L);
  if (r == WEFT_CHAN_CLOSED) return push_closed(L);
  lua_pushnil(L);
  lua_pushliteral(L, "full");
  return 2;
}

static int c_try_recv(lua_State *L) {
  weft_msg v;
  int r = weft_chan_try_recv(check_chan(L, 1), &v);
  if (r == WEFT_CHAN_OK) {
    msg_push_release(L, &v);
    return 1;
  }
  if (r == WEFT_CHAN_CLOSED) return push_closed(L);
  lua_pushnil(L);
  lua_pushliteral(L, "empty");
  return 2;
}

static int c_close(lua_State *L) {
  weft_chan_close(check_chan(L, 1));
  return 0;
}

static int c_closed(lua_State *L) {
  lua_pushboolean(L, weft_chan_closed(check_chan(L, 1)));
  return 1;
}

static int c_len(lua_State *L) {
  lua_pushinteger(L, weft_chan_len(check_chan(L, 1)));
  return 1;
}

static int c_cap(lua_State *L) {
  lua_pushinteger(L, weft_chan_cap(check_chan(L, 1)));
  return 1;
}

/* The iterator of ch:iter(ctx): upvalues ch, ctx. */
static int iter_next(lua_State *L) {
  lua_settop(L, 0);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, lua_upvalueindex(2));
  return recv(L); /* nil, err when closed or ctx ended: the loop ends */
}

static int c_iter(lua_State *L) {
  check_chan(L, 1);
  weft_check_ctx(L, 2);
  lua_settop(L, 2);
  lua_pushcclosure(L, iter_next, 2);
  return 1;
}

/* ---------------------------------------------------------------------- */
/* weft.select(ctx, cases) */

static int l_select(lua_State *L) {
  weft_ctx *ctx = weft_check_ctx(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  lua_Integer n = luaL_len(L, 2);
  luaL_argcheck(L, n >= 0 && n <= 1000000, 2, "too many cases");
  bool nonblocking =
      lua_getfield(L, 2, "default") != LUA_TNIL && lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (n == 0 && !nonblocking && !weft_ctx_can_end(ctx))
    return luaL_error(L,
                      "select with no cases on a context that can never "
                      "end would block forever");
  chanwait *w = chanwait_new(L, (int)n, 1, true); /* at 3 */
  w->nonblocking = nonblocking;
  w->rng = (uint64_t)(uintptr_t)w ^ (uint64_t)clock();
  w->rng ^= (uint64_t)time(NULL) << 32;
  char path[32];
  for (int i = 1; i <= n; i++) {
    if (lua_geti(L, 2, i) != LUA_TTABLE)
      return luaL_error(L, "bad case %d to 'select' (table expected, got %s)",
                        i, luaL_typename(L, -1));
    int recv_t = lua_getfield(L, -1, "recv");
    int send_t = lua_getfield(L, -2, "send");
    if ((recv_t == LUA_TNIL) == (send_t == LUA_TNIL))
      return luaL_error(L, "bad case %d to 'select' (needs one of recv, send)",
                        i);
    weft_object *o = weft_to_object(L, recv_t != LUA_TNIL ? -2 : -1);
    if (o == NULL || o->cls != &weft_chan_class)
      return luaL_error(L, "bad case %d to 'select' (channel expected)", i);
    weft_chan *ch = (weft_chan *)o;
    int v = 0;
    if (send_t != LUA_TNIL) {
      if (lua_getfield(L, -3, "value") == LUA_TNIL)
        return luaL_error(L, "bad case %d to 'select' (cannot send nil)", i);
      v = lua_gettop(L);
      snprintf(path, sizeof path, "cases[%d].value", i);
    }
    chanwait_add(L, w, ch, v, path);
    lua_settop(L, 3);
  }
  return chanwait_k(L, LUA_OK, 3);
}

/* ---------------------------------------------------------------------- */

static const luaL_Reg chan_methods[] = {
    {"send", c_send},         {"recv", c_recv},
    {"try_send", c_try_send}, {"try_recv", c_try_recv},
    {"close", c_close},       {"closed", c_closed},
    {"iter", c_iter},         {"len", c_len},
    {"cap", c_cap},           {NULL, NULL}};

void weft_open_chan(lua_State *L) {
  weft_new_class(L, &weft_chan_class, chan_methods, NULL);
  lua_pop(L, 1);
  lua_pushcfunction(L, l_chan);
  lua_setfield(L, -2, "chan");
  lua_pushcfunction(L, l_select);
  lua_setfield(L, -2, "select");
}
