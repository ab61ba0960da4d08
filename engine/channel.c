/*
** channel.c: channels (channel.h).
**
** Owns: the ring of buffered messages and the FIFO queues of waiting
** operations.
**
** The ring is a bounded MPMC queue (Vyukov's): each slot has a sequence
** number saying whether it is free for position p (2p) or holds the
** message of position p (2p + 1); a sender reserves the position in the
** tail word by compare-and-swap, fills the slot and publishes it (release);
** a receiver does the same with the head word.  The low bits of each word
** are flags:
**   WAIT    tail: senders are queued; head: receivers are queued
**   CLOSED  tail only: the channel is closed
**   LOCKED  both: the ring is not at its full size yet (it grows under
**           the lock), so every operation takes the lock
** A send or receive without the lock (the fast path) succeeds only on a
** word without flags, so a flag stops every such operation on its side:
** once senders are queued (or the channel is closed) only ch->mu's holder
** reserves tail positions, and once receivers are queued only its holder
** takes from the head.  Which is what keeps the hand-over exact: a queued
** sender is moved into the ring as room appears, before any new sender,
** and a message reaches queued receivers in order.
**
** Locking: ch->mu guards the queues, the flags' changes, the ring's growth
** and whatever serves the queued operations; it is taken alone, and under
** it only leaf locks (a park's, a worker's, to wake) are taken; the cycle
** collector (cycle.c) takes it under its own lock, with trylock but for a
** garbage channel, and pauses the fast paths while it reads the ring
** (gc_pause).  A message's buffer is linked (weft_buf_link) before the
** message can reach the ring.  No wake-up
** is lost between the two paths: a waiter sets its flag, then checks the
** ring again before it stays queued; a fast send checks the receivers'
** flag after publishing, a fast receive the senders' flag after freeing
** its slot, and takes the lock to serve that queue when it is set (Dekker,
** through ch->waiting: see order_waiting; one of the two sees the other).
** A slow op serves the queues before its own (FIFO).  Rings with room for
** a send being written, or a receive being read, count as full, or empty,
** until it is done; a receive on a closed channel waits for such a send
** to be published (its sender then serves the queue) rather than report
** it drained.  An op's selection is claimed with a compare-and-swap under the
** lock of the channel completing it, so one op of a select completes,
** once; ops whose selection is already claimed (by another channel) are
** dropped from a queue when met.
*/
#include "channel.h"

#include <assert.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>

#include "runtime.h"

/* Rings up to this many slots are made at their full size when the first
   message is buffered, and from then on used without the lock; larger
   ones grow by doubling under the lock and go lock-free once full size. */
#define FIXED_MAX 16384

#define F_WAIT ((uint64_t)1)
#define F_CLOSED ((uint64_t)2)
#define F_LOCKED ((uint64_t)4)
#define FLAGS ((uint64_t)7)
#define POS_SHIFT 3
#define POS_ONE ((uint64_t)1 << POS_SHIFT)

typedef _Atomic uint64_t atomic_u64; /* positions never wrap, on any target */

typedef struct queue {
  weft_chan_op *head, *tail;
} queue;

typedef struct slot {
  atomic_u64 seq;
  weft_msg msg;
} slot;

struct weft_chan {
  weft_object obj;
  weft_runtime *rt;
  /* read by every op, seldom written */
  long cap;
  slot *ring;        /* size slots; fixed once F_LOCKED is cleared */
  size_t size, mask; /* mask: size - 1 when size is a power of two, else 0 */
  char pad0[64];
  atomic_uint waiting; /* the WAIT flags again: W_SEND, W_RECV */
  char pad1[64];
  /* the slow path */
  pthread_mutex_t mu;
  queue sendq, recvq;
  /* the senders' and the receivers' words, each on a cache line of its own */
  char pad2[64];
  atomic_u64 tail;
  char pad3[64];
  atomic_u64 head;
  char pad4[64];
};

/* Copies of the tail's and the head's WAIT flags in a word of its own, so
   that a fast op looks at the other side's flag without taking the other
   side's cache line. */
#define W_SEND 1u
#define W_RECV 2u

/*
** The Dekker step between a fast op and a waiter: a seq_cst
** read-modify-write of ch->waiting (adding nothing) after the op, or
** after the flag is set, and before looking at the other.  Either the
** waiter's comes first in the word's order and the fast op's reads its
** flag, or the fast op's comes first and the waiter's synchronizes with
** it, so that the waiter sees the op.  (Not atomic_thread_fence:
** ThreadSanitizer does not model fences.)  Returns the flags.
*/
static unsigned order_waiting(atomic_uint *waiting) {
  return atomic_fetch_add(waiting, 0u);
}

static uint64_t pos_of(uint64_t w) { return w >> POS_SHIFT; }

static slot *slot_at(weft_chan *ch, uint64_t pos) {
  return &ch->ring[ch->mask != 0 ? pos & ch->mask : pos % ch->size];
}

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
/* the ring */

/*
** Puts *v at the tail (then *v is NONE): 1; 0 when full.  With locked
** false (no lock held) gives -1, doing nothing, when the tail word has a
** flag; ch->mu's holder passes true, keeps the flags, and must know the
** ring is there (not LOCKED with size 0).
*/
static int ring_put(weft_chan *ch, weft_msg *v, bool locked) {
  uint64_t w = atomic_load_explicit(&ch->tail, memory_order_acquire);
  for (;;) {
    if (!locked && (w & FLAGS) != 0) return -1;
    uint64_t pos = pos_of(w);
    slot *s = slot_at(ch, pos);
    uint64_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
    int64_t dif = (int64_t)(seq - 2 * pos);
    if (dif == 0) {
      if (atomic_compare_exchange_weak_explicit(&ch->tail, &w, w + POS_ONE,
                                                memory_order_acquire,
                                                memory_order_acquire)) {
        s->msg = *v;
        v->tag = WEFT_MSG_NONE;
        atomic_store_explicit(&s->seq, 2 * pos + 1, memory_order_release);
        return 1;
      }
    } else if (dif < 0) {
      return 0; /* the slot still holds (or hands out) the last lap's */
    } else {
      w = atomic_load_explicit(&ch->tail, memory_order_acquire);
    }
  }
}

/* Takes the message at the head into *out: 1; 0 when there is none
   published (empty, or its sender is still writing it); -1 as ring_put. */
static int ring_get(weft_chan *ch, weft_msg *out, bool locked) {
  uint64_t w = atomic_load_explicit(&ch->head, memory_order_acquire);
  for (;;) {
    if (!locked && (w & FLAGS) != 0) return -1;
    if (ch->size == 0) return 0; /* locked: nothing buffered yet */
    uint64_t pos = pos_of(w);
    slot *s = slot_at(ch, pos);
    uint64_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
    int64_t dif = (int64_t)(seq - (2 * pos + 1));
    if (dif == 0) {
      if (atomic_compare_exchange_weak_explicit(&ch->head, &w, w + POS_ONE,
                                                memory_order_acquire,
                                                memory_order_acquire)) {
        *out = s->msg;
        atomic_store_explicit(&s->seq, 2 * (pos + ch->size),
                              memory_order_release);
        return 1;
      }
    } else if (dif < 0) {
      return 0;
    } else {
      w = atomic_load_explicit(&ch->head, memory_order_acquire);
    }
  }
}

static uint64_t tail_word(weft_chan *ch) {
  return atomic_load_explicit(&ch->tail, memory_order_acquire);
}

static uint64_t head_word(weft_chan *ch) {
  return atomic_load_explicit(&ch->head, memory_order_acquire);
}

/* Reserved positions not yet taken (messages, and sends being written). */
static uint64_t ring_count(weft_chan *ch) {
  uint64_t h = pos_of(head_word(ch)); /* first: the tail is never behind it */
  return pos_of(tail_word(ch)) - h;
}

/* ch->mu held.  Whether a send could put a message now. */
static bool has_room(weft_chan *ch) {
  uint64_t t = tail_word(ch);
  if (t & F_LOCKED) return ring_count(ch) < (size_t)ch->cap;
  uint64_t pos = pos_of(t);
  return atomic_load_explicit(&slot_at(ch, pos)->seq, memory_order_acquire) ==
         2 * pos;
}

/* ch->mu held.  Whether a message is published at the head. */
static bool has_msg(weft_chan *ch) {
  if (ch->size == 0) return false;
  uint64_t pos = pos_of(head_word(ch));
  return atomic_load_explicit(&slot_at(ch, pos)->seq, memory_order_acquire) ==
         2 * pos + 1;
}

/* ch->mu held.  Closed, and nothing left in the ring nor being written
   into it (once closed, only the lock's holder may reserve). */
static bool closed_drained(weft_chan *ch) {
  uint64_t t = tail_word(ch);
  return (t & F_CLOSED) != 0 && pos_of(head_word(ch)) == pos_of(t);
}

/* ch->mu held, LOCKED: a ring of `size` slots holding the messages of the
   old one (all published: every op takes the lock meanwhile); the lock
   is dropped from the words once it has its full size.  false: no memory. */
static bool ring_grow(weft_chan *ch, size_t size) {
  slot *ring = weft_alloc(ch->rt, size * sizeof *ring);
  if (ring == NULL) return false;
  uint64_t h = pos_of(head_word(ch)), t = pos_of(tail_word(ch));
  for (uint64_t p = h; p < t; p++) {
    slot *s = &ring[p % size];
    s->msg = slot_at(ch, p)->msg;
    atomic_init(&s->seq, 2 * p + 1);
  }
  for (uint64_t p = t; p < h + size; p++) {
    slot *s = &ring[p % size];
    s->msg.tag = WEFT_MSG_NONE;
    atomic_init(&s->seq, 2 * p);
  }
  weft_free(ch->rt, ch->ring, ch->size * sizeof *ch->ring);
  ch->ring = ring;
  ch->size = size;
  ch->mask = (size & (size - 1)) == 0 ? size - 1 : 0;
  if (size == (size_t)ch->cap) { /* release: the fast paths see the ring */
    atomic_fetch_and_explicit(&ch->tail, ~F_LOCKED, memory_order_release);
    atomic_fetch_and_explicit(&ch->head, ~F_LOCKED, memory_order_release);
  }
  return true;
}

/* ch->mu held, has_room: grows a LOCKED ring that is full (to its full
   size at once up to FIXED_MAX); false: no memory. */
static bool make_room(weft_chan *ch) {
  if (!(tail_word(ch) & F_LOCKED) || ring_count(ch) < ch->size) return true;
  size_t size = (size_t)ch->cap;
  if (size > FIXED_MAX) {
    size = ch->size < 8 ? 8 : ch->size * 2;
    if (size > (size_t)ch->cap) size = (size_t)ch->cap;
  }
  return ring_grow(ch, size);
}

/* ch->mu held: puts *v: 1; 0 when full (a fast sender took the room);
   -1 when out of memory (*v kept). */
static int put_locked(weft_chan *ch, weft_msg *v) {
  return make_room(ch) ? ring_put(ch, v, true) : -1;
}

/* ch->mu held: the WAIT flags of the senders' (send) or the receivers'
   side say whether its queue is empty. */
static void set_wait(weft_chan *ch, bool send) {
  atomic_u64 *word = send ? &ch->tail : &ch->head;
  unsigned bit = send ? W_SEND : W_RECV;
  bool want = (send ? ch->sendq.head : ch->recvq.head) != NULL;
  if (want == ((atomic_load(&ch->waiting) & bit) != 0))
    return; /* as it is: a set flag stays visible, nothing is written */
  if (want) {
    atomic_fetch_or(word, F_WAIT); /* seq_cst */
    atomic_fetch_or(&ch->waiting, bit);
  } else {
    atomic_fetch_and(&ch->waiting, ~bit);
    atomic_fetch_and(word, ~F_WAIT);
  }
}

/*
** ch->mu held.  Serves the queued ops of a buffered channel as far as the
** ring allows: moves queued senders' values into the room there is (in
** the order they queued), hands published messages to queued receivers
** (in order), and once the channel is closed and drained completes the
** receivers left with closed.  With the WAIT flags set no one but the
** lock's holder reserves on that side, so a room or message seen here is
** still there when taken.
*/
static void serve(weft_chan *ch) {
  if (ch->cap == 0) {
    weft_chan_op *op;
    if (closed_drained(ch))
      while ((op = take_peer(&ch->recvq)) != NULL) complete(op, true);
    return;
  }
  for (bool progress = true; progress;) {
    progress = false;
    /* grown before a peer is claimed (a claim cannot be undone); never
       needed in fact: senders queue only on a full ring, at full size */
    while (ch->sendq.head != NULL && has_room(ch) && make_room(ch)) {
      weft_chan_op *peer = take_peer(&ch->sendq);
      if (peer == NULL) break;
      ring_put(ch, &peer->msg, true);
      complete(peer, false);
      progress = true;
    }
    while (ch->recvq.head != NULL) {
      bool msg = has_msg(ch);
      if (!msg && !closed_drained(ch)) break;
      weft_chan_op *peer = take_peer(&ch->recvq);
      if (peer == NULL) break;
      if (msg) ring_get(ch, &peer->msg, true);
      complete(peer, !msg);
      progress = true;
    }
  }
  set_wait(ch, true);
  set_wait(ch, false);
}

/* After a fast put (bit W_RECV) or get (W_SEND): serve the other side if
   it has ops queued. */
static void serve_if(weft_chan *ch, unsigned bit) {
  if ((order_waiting(&ch->waiting) & bit) == 0) return;
  pthread_mutex_lock(&ch->mu);
  serve(ch);
  pthread_mutex_unlock(&ch->mu);
}

/* ---------------------------------------------------------------------- */

void weft_msg_release(weft_msg *m) {
  if (m->tag == WEFT_MSG_BUF) weft_buf_release(m->u.buf);
  m->tag = WEFT_MSG_NONE;
}

static void chan_destroy(weft_object *o) {
  weft_chan *ch = (weft_chan *)o;
  weft_runtime *rt = ch->rt;
  uint64_t h = pos_of(head_word(ch)), t = pos_of(tail_word(ch));
  for (uint64_t p = h; p < t; p++) weft_msg_release(&slot_at(ch, p)->msg);
  weft_free(rt, ch->ring, ch->size * sizeof *ch->ring);
  pthread_mutex_destroy(&ch->mu);
  weft_free(rt, ch, sizeof *ch);
  weft_runtime_release(rt);
}

/*
** For the cycle collector (cycle.c): a channel's edges are its buffered
** messages (the ring; a blocked sender's message belongs to its call,
** which holds the channel from outside).  Edges are read under ch->mu,
** try-locked: the collector never waits for a channel.  Clear empties the
** ring of a garbage channel (no one can send or receive on it any more)
** and hands the messages over with ch->mu released.
*/
static weft_runtime *chan_gc_runtime(weft_object *o) {
  return ((weft_chan *)o)->rt;
}

static weft_object *chan_gc_next(weft_object *o) {
  (void)o;
  return NULL;
}

/*
** ch->mu held: stops the fast paths (the LOCKED flag on both words: a fast
** op that has not reserved its position yet takes the lock instead); *set
** says whether it set the flag (then gc_resume clears it).  Returns whether
** every send already reserved is published, so that the ring from head to
** tail can be read; it does not wait for one that is not (a sender between
** its reservation and publishing, which holds the channel: it is live).
*/
static bool gc_pause(weft_chan *ch, bool *set) {
  *set = !(atomic_fetch_or(&ch->tail, F_LOCKED) & F_LOCKED);
  atomic_fetch_or(&ch->head, F_LOCKED);
  uint64_t h = pos_of(head_word(ch)), t = pos_of(tail_word(ch));
  for (uint64_t p = h; p < t && ch->size > 0; p++)
    if (atomic_load_explicit(&slot_at(ch, p)->seq, memory_order_acquire) !=
        2 * p + 1)
      return false;
  return true;
}

static void gc_resume(weft_chan *ch, bool set) {
  if (!set) return;  /* the ring is still growing: LOCKED stays */
  atomic_fetch_and_explicit(&ch->tail, ~F_LOCKED, memory_order_release);
  atomic_fetch_and_explicit(&ch->head, ~F_LOCKED, memory_order_release);
}

static bool chan_gc_edges(weft_object *o, weft_gc_visit *v) {
  weft_chan *ch = (weft_chan *)o;
  if (pthread_mutex_trylock(&ch->mu) != 0) return false;
  bool set, ok = gc_pause(ch, &set);  /* not: counts as live */
  uint64_t h = pos_of(head_word(ch)), t = pos_of(tail_word(ch));
  for (uint64_t p = h; ok && p < t; p++) {
    weft_msg *m = &slot_at(ch, p)->msg;
    if (m->tag == WEFT_MSG_BUF) ok = v->buf(v, m->u.buf);
  }
  gc_resume(ch, set);
  pthread_mutex_unlock(&ch->mu);
  return ok;
}

static void chan_gc_clear(weft_object *o, weft_gc_visit *v) {
  weft_chan *ch = (weft_chan *)o;
  pthread_mutex_lock(&ch->mu);
  bool set, ready = gc_pause(ch, &set);
  assert(ready);  /* garbage: no sender is in the middle of a send */
  (void)ready;
  uint64_t h = pos_of(head_word(ch)), t = pos_of(tail_word(ch));
  for (uint64_t p = h; p < t; p++) {  /* taken out: the buffers go to v */
    slot *s = slot_at(ch, p);
    weft_msg m = s->msg;
    s->msg.tag = WEFT_MSG_NONE;
    atomic_store_explicit(&s->seq, 2 * (p + ch->size), memory_order_release);
    atomic_fetch_add(&ch->head, POS_ONE);
    pthread_mutex_unlock(&ch->mu);
    if (m.tag == WEFT_MSG_BUF) v->buf(v, m.u.buf);
    pthread_mutex_lock(&ch->mu);
  }
  gc_resume(ch, set);
  pthread_mutex_unlock(&ch->mu);
}

static const weft_gc_ops chan_gc_ops = {chan_gc_runtime, chan_gc_next,
                                        chan_gc_edges, chan_gc_clear};

const weft_class weft_chan_class = {"weft.channel", chan_destroy,
                                    &chan_gc_ops};

weft_chan *weft_chan_new(weft_runtime *rt, long cap) {
  weft_chan *ch = weft_alloc(rt, sizeof *ch);
  if (ch == NULL) return NULL;
  memset(ch, 0, sizeof *ch);
  /* a plain mutex: it is taken only when ops queue, or to serve them */
  if (pthread_mutex_init(&ch->mu, NULL) != 0) {
    weft_free(rt, ch, sizeof *ch);
    return NULL;
  }
  weft_object_init(&ch->obj, &weft_chan_class);
  ch->cap = cap;
  atomic_init(&ch->tail, F_LOCKED); /* no ring yet */
  atomic_init(&ch->head, F_LOCKED);
  atomic_init(&ch->waiting, 0u);
  weft_runtime_retain(rt);
  ch->rt = rt;
  return ch;
}

/* Before a message can be stored: its buffer's handles are tracked by
   the cycle collector (nothing to do for inline values and plain data). */
static void msg_link(weft_msg *m) {
  if (m->tag == WEFT_MSG_BUF) weft_buf_link(m->u.buf);
}

int weft_chan_try_send(weft_chan *ch, weft_msg *v) {
  msg_link(v);
  if (ch->cap > 0) {
    int r = ring_put(ch, v, false);
    if (r == 1) {
      serve_if(ch, W_RECV);
      return WEFT_CHAN_OK;
    }
    if (r == 0) return WEFT_CHAN_BLOCK; /* full, nobody queued, open */
  }
  int r = WEFT_CHAN_OK;
  pthread_mutex_lock(&ch->mu);
  weft_chan_op *peer;
  if (tail_word(ch) & F_CLOSED) {
    r = WEFT_CHAN_CLOSED;
  } else if (ch->cap == 0) {
    if ((peer = take_peer(&ch->recvq)) != NULL) {
      peer->msg = *v;
      v->tag = WEFT_MSG_NONE;
      complete(peer, false);
    } else {
      r = WEFT_CHAN_BLOCK;
    }
  } else {
    serve(ch); /* queued senders go first */
    int put = ch->sendq.head != NULL || !has_room(ch) ? 0 : put_locked(ch, v);
    if (put == 1)
      serve(ch); /* to a queued receiver */
    else
      r = put == 0 ? WEFT_CHAN_BLOCK : WEFT_CHAN_NOMEM;
  }
  pthread_mutex_unlock(&ch->mu);
  return r;
}

int weft_chan_try_recv(weft_chan *ch, weft_msg *out) {
  if (ch->cap > 0) {
    int r = ring_get(ch, out, false);
    if (r == 1) {
      serve_if(ch, W_SEND);
      return WEFT_CHAN_OK;
    }
    if (r == 0) { /* nothing published, nobody queued */
      uint64_t h = head_word(ch), t = tail_word(ch);
      if ((h & FLAGS) == 0) /* else: take the lock below */
        return (t & F_CLOSED) && pos_of(h) == pos_of(t) ? WEFT_CHAN_CLOSED
                                                        : WEFT_CHAN_BLOCK;
    }
  }
  int r = WEFT_CHAN_OK;
  pthread_mutex_lock(&ch->mu);
  weft_chan_op *peer;
  if (ch->cap == 0) {
    if ((peer = take_peer(&ch->sendq)) != NULL) {
      *out = peer->msg;
      peer->msg.tag = WEFT_MSG_NONE;
      complete(peer, false);
    } else {
      r = closed_drained(ch) ? WEFT_CHAN_CLOSED : WEFT_CHAN_BLOCK;
    }
  } else {
    serve(ch); /* queued receivers go first */
    if (ch->recvq.head == NULL && ring_get(ch, out, true) == 1)
      serve(ch); /* a queued sender takes the room */
    else
      r = ch->recvq.head == NULL && closed_drained(ch) ? WEFT_CHAN_CLOSED
                                                       : WEFT_CHAN_BLOCK;
  }
  pthread_mutex_unlock(&ch->mu);
  return r;
}

void weft_chan_close(weft_chan *ch) {
  pthread_mutex_lock(&ch->mu);
  if (!(atomic_fetch_or(&ch->tail, F_CLOSED) & F_CLOSED)) {
    weft_chan_op *op;
    while ((op = take_peer(&ch->sendq)) != NULL) complete(op, true);
    serve(ch); /* receivers: what is buffered, then closed */
  }
  pthread_mutex_unlock(&ch->mu);
}

bool weft_chan_closed(weft_chan *ch) {
  return (tail_word(ch) & F_CLOSED) != 0;
}

long weft_chan_len(weft_chan *ch) {
  uint64_t n = ring_count(ch);
  return n > (size_t)ch->cap ? ch->cap : (long)n;
}

long weft_chan_cap(weft_chan *ch) { return ch->cap; }

/* ch->mu held: whether op could proceed now (queued ops served first).
   A receive on a closed channel with a send still being written waits
   for it: its sender serves the queue once it is published. */
static bool op_ready(weft_chan_op *op) {
  weft_chan *ch = op->ch;
  bool closed = (tail_word(ch) & F_CLOSED) != 0;
  if (ch->cap == 0)
    return closed || has_peer(op->send ? &ch->recvq : &ch->sendq, op->sel);
  if (op->send) return closed || has_room(ch);
  return has_msg(ch) || closed_drained(ch);
}

bool weft_chan_enqueue(weft_chan_op *op) {
  weft_chan *ch = op->ch;
  if (op->send) msg_link(&op->msg);  /* a receiver may ring it */
  pthread_mutex_lock(&ch->mu);
  serve(ch);
  bool ready = op_ready(op);
  if (!ready) {
    queue *q = op->send ? &ch->sendq : &ch->recvq;
    queue_push(q, op);
    if (ch->cap > 0) set_wait(ch, op->send);
    /* a fast op that missed the flag ran before it: look again (Dekker,
       see order_waiting) */
    order_waiting(&ch->waiting);
    if (op_ready(op)) {
      queue_unlink(q, op);
      if (ch->cap > 0) set_wait(ch, op->send);
      ready = true;
    }
  }
  pthread_mutex_unlock(&ch->mu);
  return !ready;
}

void weft_chan_dequeue(weft_chan_op *op) {
  weft_chan *ch = op->ch;
  pthread_mutex_lock(&ch->mu);
  if (op->queued) {
    queue *q = op->send ? &ch->sendq : &ch->recvq;
    queue_unlink(q, op);
    if (ch->cap > 0) set_wait(ch, op->send);
  }
  pthread_mutex_unlock(&ch->mu);
}
