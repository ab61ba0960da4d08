/*
** channel.c: channels (channel.h).
**
** Owns: the ring of buffered messages and the FIFO queues of waiting
** operations.  Locking: ch->mu guards everything but the refcount; it is
** taken alone, and under it only leaf locks (a park's, a worker's, to wake)
** are taken.  An op's selection is claimed with a compare-and-swap under
** the lock of the channel completing it, so one op of a select completes,
** once; ops whose selection is already claimed (by another channel) are
** dropped from a queue when met.
*/
#include "channel.h"

#include <pthread.h>
#include <string.h>

#include "runtime.h"

typedef struct queue {
  weft_chan_op *head, *tail;
} queue;

struct weft_chan {
  weft_object obj;
  weft_runtime *rt;
  pthread_mutex_t mu;
  long cap;
  weft_msg *ring; /* size slots, grown up to cap */
  long size, head, count;
  bool closed;
  queue sendq, recvq;
};

static void queue_push(queue *q, weft_chan_op *op) {
  op->next = NULL;
  op->prev = q->tail;
  if (q->tail != NULL)
    q->tail->next = op;
  else
    q->head = op;
  q->tail = op;
  op->queued = true;
}

static void queue_unlink(queue *q, weft_chan_op *op) {
  if (op->prev != NULL)
    op->prev->next = op->next;
  else
    q->head = op->next;
  if (op->next != NULL)
    op->next->prev = op->prev;
  else
    q->tail = op->prev;
  op->prev = op->next = NULL;
  op->queued = false;
}

static bool claimed(const weft_chan_op *op) {
  return atomic_load_explicit(&op->sel->claimed, memory_order_relaxed) != 0;
}

/* The first op of q whose selection this call claims (unlinked), dropping
   the stale ones met before it; NULL if none. */
static weft_chan_op *take_peer(queue *q) {
  weft_chan_op *op;
  while ((op = q->head) != NULL) {
    queue_unlink(q, op);
    int expect = 0;
    if (atomic_compare_exchange_strong(&op->sel->claimed, &expect, 1))
      return op;
  }
  return NULL;
}

/* Whether q holds an op another call could complete with (not self's). */
static bool has_peer(const queue *q, const weft_chan_sel *self) {
  for (const weft_chan_op *op = q->head; op != NULL; op = op->next)
    if (op->sel != self && !claimed(op)) return true;
  return false;
}

static void complete(weft_chan_op *op, bool closed) {
  op->sel->index = op->index;
  op->sel->closed = closed;
  weft_park_wake(op->sel->park);
}

/* ---------------------------------------------------------------------- */

void weft_msg_release(weft_msg *m) {
  if (m->tag == WEFT_MSG_BUF) weft_buf_release(m->u.buf);
  m->tag = WEFT_MSG_NONE;
}

static void chan_destroy(weft_object *o) {
  weft_chan *ch = (weft_chan *)o;
  weft_runtime *rt = ch->rt;
  for (long i = 0; i < ch->count; i++)
    weft_msg_release(&ch->ring[(ch->head + i) % ch->size]);
  weft_free(rt, ch->ring, (size_t)ch->size * sizeof *ch->ring);
  pthread_mutex_destroy(&ch->mu);
  weft_free(rt, ch, sizeof *ch);
  weft_runtime_release(rt);
}

const weft_class weft_chan_class = {"weft.channel", chan_destroy};

weft_chan *weft_chan_new(weft_runtime *rt, long cap) {
  weft_chan *ch = weft_alloc(rt, sizeof *ch);
  if (ch == NULL) return NULL;
  memset(ch, 0, sizeof *ch);
  /* a plain mutex: an adaptive (spinning) one halved the throughput of a
     busy channel between two workers here (bench/chan_bench.lua) */
  if (pthread_mutex_init(&ch->mu, NULL) != 0) {
    weft_free(rt, ch, sizeof *ch);
    return NULL;
  }
  weft_object_init(&ch->obj, &weft_chan_class);
  ch->cap = cap;
  weft_runtime_retain(rt);
  ch->rt = rt;
  return ch;
}

/* Room for one more message in the ring (count < cap); false: no memory. */
static bool ring_reserve(weft_chan *ch) {
  if (ch->count < ch->size) return true;
  long size = ch->size < 8 ? 8 : ch->size * 2;
  if (size > ch->cap) size = ch->cap;
  weft_msg *ring = weft_alloc(ch->rt, (size_t)size * sizeof *ring);
  if (ring == NULL) return false;
  for (long i = 0; i < ch->count; i++)
    ring[i] = ch->ring[(ch->head + i) % ch->size];
  weft_free(ch->rt, ch->ring, (size_t)ch->size * sizeof *ch->ring);
  ch->ring = ring;
  ch->size = size;
  ch->head = 0;
  return true;
}

/* Moves *v into the ring (*v is then NONE). */
static void ring_push(weft_chan *ch, weft_msg *v) {
  ch->ring[(ch->head + ch->count) % ch->size] = *v;
  ch->count++;
  v->tag = WEFT_MSG_NONE;
}

static void ring_pop(weft_chan *ch, weft_msg *out) {
  *out = ch->ring[ch->head];
  ch->head = (ch->head + 1) % ch->size;
  ch->count--;
}

/* Moves *from to *to (*from is then NONE). */
static void msg_move(weft_msg *to, weft_msg *from) {
  *to = *from;
  from->tag = WEFT_MSG_NONE;
}

int weft_chan_try_send(weft_chan *ch, weft_msg *v) {
  int r = WEFT_CHAN_OK;
  pthread_mutex_lock(&ch->mu);
  weft_chan_op *peer;
  if (ch->closed) {
    r = WEFT_CHAN_CLOSED;
  } else if ((peer = take_peer(&ch->recvq)) != NULL) {
    msg_move(&peer->msg, v);
    complete(peer, false);
  } else if (ch->count >= ch->cap) {
    r = WEFT_CHAN_BLOCK;
  } else if (!ring_reserve(ch)) {
    r = WEFT_CHAN_NOMEM;
  } else {
    ring_push(ch, v);
  }
  pthread_mutex_unlock(&ch->mu);
  return r;
}

int weft_chan_try_recv(weft_chan *ch, weft_msg *out) {
  int r = WEFT_CHAN_OK;
  pthread_mutex_lock(&ch->mu);
  weft_chan_op *peer;
  if (ch->count > 0) {
    ring_pop(ch, out);
    if ((peer = take_peer(&ch->sendq)) != NULL) { /* the ring has room */
      ring_push(ch, &peer->msg);
      complete(peer, false);
    }
  } else if ((peer = take_peer(&ch->sendq)) != NULL) { /* capacity 0 */
    msg_move(out, &peer->msg);
    complete(peer, false);
  } else {
    r = ch->closed ? WEFT_CHAN_CLOSED : WEFT_CHAN_BLOCK;
  }
  pthread_mutex_unlock(&ch->mu);
  return r;
}

void weft_chan_close(weft_chan *ch) {
  pthread_mutex_lock(&ch->mu);
  if (!ch->closed) {
    ch->closed = true;
    weft_chan_op *op;
    while ((op = take_peer(&ch->recvq)) != NULL) complete(op, true);
    while ((op = take_peer(&ch->sendq)) != NULL) complete(op, true);
  }
  pthread_mutex_unlock(&ch->mu);
}

bool weft_chan_closed(weft_chan *ch) {
  pthread_mutex_lock(&ch->mu);
  bool closed = ch->closed;
  pthread_mutex_unlock(&ch->mu);
  return closed;
}

long weft_chan_len(weft_chan *ch) {
  pthread_mutex_lock(&ch->mu);
  long n = ch->count;
  pthread_mutex_unlock(&ch->mu);
  return n;
}

long weft_chan_cap(weft_chan *ch) { return ch->cap; }

bool weft_chan_enqueue(weft_chan_op *op) {
  weft_chan *ch = op->ch;
  pthread_mutex_lock(&ch->mu);
  bool ready = ch->closed ||
               (op->send ? has_peer(&ch->recvq, op->sel) || ch->count < ch->cap
                         : has_peer(&ch->sendq, op->sel) || ch->count > 0);
  if (!ready) queue_push(op->send ? &ch->sendq : &ch->recvq, op);
  pthread_mutex_unlock(&ch->mu);
  return !ready;
}

void weft_chan_dequeue(weft_chan_op *op) {
  weft_chan *ch = op->ch;
  pthread_mutex_lock(&ch->mu);
  if (op->queued) queue_unlink(op->send ? &ch->sendq : &ch->recvq, op);
  pthread_mutex_unlock(&ch->mu);
}
