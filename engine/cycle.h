/*
** cycle.h: the collector of reference cycles through engine objects
** (cycle.c): a context whose cause holds a handle leading back to it, a
** channel whose buffered message holds a handle leading back to it.
*/
#ifndef WEFT_CYCLE_H
#define WEFT_CYCLE_H

#include <stdbool.h>

#include "object.h"
#include "weft.h"

/* Marks o and the chain of objects it holds for life (weft_gc_ops.next)
   as tracked.  Called for each handle of a buffer being linked. */
void weft_cycle_mark(weft_object *o);

/*
** Called by a release of a tracked object (object.c) before its count is
** lowered: when no outside reference would be left, takes the caller's
** reference over (queues o), runs the collector and returns true; else
** returns false and the caller drops its reference as usual.
*/
bool weft_cycle_offer(weft_object *o);

/* Queues o with a new reference, when it is tracked, belongs to rt and is
   not queued yet (the caller holds a buffer that holds o); returns whether
   it did.  The caller runs the collector afterwards. */
bool weft_cycle_offer_held(weft_runtime *rt, weft_object *o);

/* Collects what was queued on rt, unless another thread is collecting
   (that one then does).  Any thread; the caller holds a reference to rt. */
void weft_cycle_run(weft_runtime *rt);

#endif
