/*
** host.h: delivering work to the host thread (DESIGN.md, "C embedding
** API"): future:on_done callbacks, weft.on_host requests, weft_submit and
** weft_runtime_poll.
*/
#ifndef WEFT_HOST_H
#define WEFT_HOST_H

#include <lua.h>

#include "weft.h"

/* weft_runtime_close: fails every weft.on_host call not yet served.  Any
   thread; rt->closing is already set (no new request is queued). */
void weft_host_fail_requests(weft_runtime *rt);

/* Frees the inbox of a state being closed: completions not delivered are
   dropped (and logged).  Any thread, no Lua. */
void weft_inbox_free(weft_runtime *rt, void *inbox);

#endif
