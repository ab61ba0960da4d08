/*
** exec.h: child processes (weft.exec; DESIGN.md, "Helpers").
**
** A process object runs one program in a process group of its own and
** watches it from a thread of its own (the reaper), which feeds its stdin,
** reads the pipes it captures (with a size cap), waits for it with
** waitid/waitpid on its pid only (never -1: the host may have children of
** its own; no SIGCHLD handler), and reaps it.  When the object's context
** ends, or its owner abandons it, the reaper sends SIGTERM (and SIGCONT)
** to the whole group, then SIGKILL once the grace period is over if any
** member is still alive; the leader is reaped only after the last signal,
** so its pid (the group's id) cannot be reused by a stranger while the
** group is signaled.  When the reaper is done it marks the object done and
** wakes its waiters (a list like a future's, woken under its lock).
**
** The owner (the Lua call) must end every started process with
** weft_proc_finish, which joins the reaper: no thread and no zombie
** outlives the call, however it ends.
*/
#ifndef WEFT_EXEC_H
#define WEFT_EXEC_H

#include <stdbool.h>
#include <stddef.h>

#include "context.h"
#include "object.h"
#include "wait.h"
#include "weft.h"

typedef struct weft_proc weft_proc;

extern const weft_class weft_proc_class;

/* What a standard output stream of the child is connected to. */
enum {
  WEFT_IO_INHERIT = 0, /* the caller's */
  WEFT_IO_NULL,        /* /dev/null */
  WEFT_IO_CAPTURE,     /* a pipe read by the reaper */
  WEFT_IO_STDOUT       /* stderr only: wherever stdout goes (2>&1) */
};

typedef struct weft_proc_spec {
  const char *const *argv; /* argv[0] is the program (searched in PATH) */
  const char *const *envp; /* the whole environment; NULL: the caller's */
  const char *cwd;         /* NULL: the caller's */
  const char *in_data;     /* written to stdin (copied); NULL: /dev/null */
  size_t in_len;
  int out_mode, err_mode; /* WEFT_IO_* */
  size_t max_output;      /* bytes kept per captured stream */
  double grace;           /* seconds from SIGTERM to SIGKILL */
  weft_ctx *ctx;          /* ends the process; retained by the object */
} weft_proc_spec;

/*
** Starts the program and its reaper.  Returns 0 and the object in *out
** (one reference, for the owner), or -1 with a message in err ("exec: no
** such file: prog", ...); a failed start leaves no process, fd or memory
** behind.  Any thread; blocks only for the spawn itself.
*/
int weft_proc_start(weft_runtime *rt, const weft_proc_spec *spec,
                    weft_proc **out, char *err, size_t errlen);

void weft_proc_retain(weft_proc *p);
void weft_proc_release(weft_proc *p);

/* True once the program is reaped and its pipes are closed.  Lock-free. */
bool weft_proc_done(weft_proc *p);

/* Adds w unless p is done (then returns false).  wake runs on the reaper
   under p's lock (leaf locks only). */
bool weft_proc_add_waiter(weft_proc *p, weft_waiter *w);
void weft_proc_remove_waiter(weft_proc *p, weft_waiter *w);

/*
** Ends p for its owner: if it is still running it is terminated as if its
** context had ended (SIGTERM, the grace period, SIGKILL), then the reaper
** is joined.  Blocks (at most the grace period and a little more).  Only
** the owner calls it, from one thread at a time; later calls return at
** once.  Never from the reaper (a wake callback).
*/
void weft_proc_finish(weft_proc *p);

typedef struct weft_proc_result {
  bool terminated;    /* the group was signaled before the call completed */
  bool status_known;  /* false: someone else reaped it (SIGCHLD ignored) */
  int status;         /* exit code, or -1 when killed by a signal */
  int signal;         /* the signal that ended it, or 0 */
  const char *out, *err;  /* captured bytes (owned by p), NULL if none */
  size_t out_len, err_len;
  bool truncated;     /* a capture hit max_output; the rest was dropped */
  bool nomem;         /* a capture buffer could not grow: output was lost */
} weft_proc_result;

/* The outcome, after weft_proc_finish.  Owner's thread. */
void weft_proc_get_result(weft_proc *p, weft_proc_result *r);

#endif
