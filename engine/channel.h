/*
** channel.h: bounded channels shared by every state (DESIGN.md,
** "Channels"), and the operations a waiting send, receive or select
** queues on them.
**
** Messages are small scalars kept inline (weft_msg: no allocation, no
** reference count) or encoded buffers (value.h): a channel holds at most
** its capacity of them; a blocked sender keeps its own.  A waiting call is
** completed by its counterpart (Go's hand-over): the receiver that finds a
** sender waiting takes its value (or moves it into the ring) and wakes it,
** so a send that returned true was received or is in the ring.
*/
#ifndef WEFT_CHANNEL_H
#define WEFT_CHANNEL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "object.h"
#include "value.h"
#include "wait.h"
#include "weft.h"

typedef struct weft_chan weft_chan;

extern const weft_class weft_chan_class;

#define WEFT_CHAN_MAX_CAP (1L << 30)

/* NULL: out of memory.  cap <= WEFT_CHAN_MAX_CAP. */
weft_chan *weft_chan_new(weft_runtime *rt, long cap);

enum { WEFT_CHAN_OK, WEFT_CHAN_CLOSED, WEFT_CHAN_BLOCK, WEFT_CHAN_NOMEM };

/*
** A message.  A boolean, a number (integer or float, kept bit for bit) or
** a string of at most WEFT_MSG_SHORT bytes is stored inline; any other
** value is an encoded buffer (WEFT_MSG_BUF, owned by whoever holds the
** message).  WEFT_MSG_NONE: no message.  lchan.c makes and pushes them.
*/
#define WEFT_MSG_SHORT 24
enum {
  WEFT_MSG_NONE, WEFT_MSG_BUF, WEFT_MSG_INT, WEFT_MSG_FLT, WEFT_MSG_FALSE,
  WEFT_MSG_TRUE, WEFT_MSG_STR
};
typedef struct weft_msg {
  union {
    weft_buf *buf;
    lua_Integer i;
    lua_Number n;
    char s[WEFT_MSG_SHORT];
  } u;
  unsigned char tag, len; /* len: of a WEFT_MSG_STR */
} weft_msg;

/* Drops what m holds (a buffer's reference); m is then NONE. */
void weft_msg_release(weft_msg *m);

/* Without waiting: OK (*v taken over: then NONE), CLOSED, BLOCK (full;
   *v kept by the caller) or NOMEM.  Any thread. */
int weft_chan_try_send(weft_chan *ch, weft_msg *v);
/* Without waiting: OK (*out set, owned by the caller), CLOSED (closed and
   drained) or BLOCK (empty). */
int weft_chan_try_recv(weft_chan *ch, weft_msg *out);
void weft_chan_close(weft_chan *ch); /* idempotent */
bool weft_chan_closed(weft_chan *ch);
long weft_chan_len(weft_chan *ch);
long weft_chan_cap(weft_chan *ch);

/*
** A waiting call: one or more operations (the cases of a select) sharing
** one selection, which the first counterpart to complete one of them
** claims.  The owner reads index, closed and the ops' msgs only after
** dequeuing every op (weft_chan_dequeue), which orders it after the
** completion.
*/
typedef struct weft_chan_sel {
  atomic_int claimed;
  int index;       /* the op completed, once claimed */
  bool closed;     /* it completed because its channel closed */
  weft_park *park; /* woken on completion */
} weft_chan_sel;

typedef struct weft_chan_op {
  struct weft_chan_op *prev, *next;
  weft_chan *ch;
  weft_chan_sel *sel;
  int index;
  bool send;
  bool queued;
  weft_msg msg; /* send: the value, until taken; recv: the value taken */
} weft_chan_op;

/*
** Queues op on its channel, unless it could complete now (a counterpart
** or room is there, or the channel is closed): then returns false and
** queues nothing, and the caller tries again without waiting.
*/
bool weft_chan_enqueue(weft_chan_op *op);
void weft_chan_dequeue(weft_chan_op *op); /* if queued */

#endif
