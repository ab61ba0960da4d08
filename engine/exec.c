/*
** exec.c: child processes (exec.h).
**
** Owns: the process object: the child's pid (and a pidfd when the kernel
** has them), the parent's ends of its pipes, the stdin bytes still to
** write, the capture buffers, the reaper thread and the waiter list.
**
** Threads: the owner starts the process and later finishes it (joins the
** reaper); the reaper alone touches the pipes, buffers and result fields
** until it marks the object done, and the owner reads them only after the
** join.  Locking: p->mu guards the waiter list and the transition to done
** (woken under it, leaf locks only).  The reaper's context waiter and the
** owner's abandon request only write a byte to a non-blocking self-pipe
** that interrupts the reaper's poll; no lock is held around any syscall
** that can block.
**
** Spawning: posix_spawnp (glibc's is a vfork-style clone that reports an
** exec failure as its return value), with POSIX_SPAWN_SETPGROUP (a group
** of its own, so kill(-pid) reaches everything it starts), an empty signal
** mask (pool workers block every signal, and a mask survives exec) and
** SIGPIPE at its default.  Every fd weft opens is close-on-exec and kept
** above 2, and the child closes every fd above 2 (closefrom), so
** concurrent spawns never leak each other's pipes.  The reaper blocks
** every signal: a write to a closed stdin pipe gives EPIPE, not SIGPIPE.
*/
#include "exec.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runtime.h"

#define FIRST_CAPTURE 4096   /* first size of a capture buffer */
#define WRITE_CHUNK 65536    /* stdin bytes per write */
#define REAPER_STACK (256 * 1024)
#define GROUP_SCAN_MAX_MS 100 /* longest wait between looks at a group */
#define EXIT_POLL_MAX_MS 50  /* without a pidfd: longest wait between checks */

typedef struct capture {
  int fd;  /* the parent's read end; -1: closed, or not captured */
  bool on;
  char *data;
  size_t len, cap;
} capture;

struct weft_proc {
  weft_object obj;
  weft_runtime *rt;
  weft_ctx *ctx;  /* retained */
  pthread_mutex_t mu;
  weft_waiter *waiters;  /* under mu */
  atomic_bool done;
  atomic_bool abandon;   /* the owner gave up on it: terminate */
  int wake_r, wake_w;    /* self-pipe interrupting the reaper's poll */
  weft_waiter ctx_w;     /* the reaper's waiter on ctx */
  pid_t pid;
  int pidfd;             /* -1: none (old kernel); exits are polled */
  pthread_t thread;
  bool started, joined;  /* owner only */
  /* the reaper's until done; the owner's after the join */
  int in_fd;
  char *in_data;
  size_t in_len, in_off;
  capture cap[2];
  size_t max_output;
  double grace;
  bool terminated, status_known, truncated, nomem;
  int status, signal;
};

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

static void proc_destroy(weft_object *o) {
  weft_proc *p = (weft_proc *)o;
  weft_runtime *rt = p->rt;
  weft_proc_finish(p); /* the owner did already; never leave a thread */
  close_fd(&p->wake_r);
  close_fd(&p->wake_w);
  close_fd(&p->pidfd);
  close_fd(&p->in_fd);
  weft_free(rt, p->in_data, p->in_len);
  for (int i = 0; i < 2; i++) {
    close_fd(&p->cap[i].fd);
    weft_free(rt, p->cap[i].data, p->cap[i].cap);
  }
  if (p->ctx != NULL) weft_ctx_release(p->ctx);
  pthread_mutex_destroy(&p->mu);
  weft_free(rt, p, sizeof *p);
  weft_runtime_release(rt);
}

const weft_class weft_proc_class = {"weft.process", proc_destroy, NULL};

void weft_proc_retain(weft_proc *p) { weft_retain(&p->obj); }
void weft_proc_release(weft_proc *p) { weft_release(&p->obj); }

bool weft_proc_done(weft_proc *p) {
  return atomic_load_explicit(&p->done, memory_order_acquire);
}

bool weft_proc_add_waiter(weft_proc *p, weft_waiter *w) {
  pthread_mutex_lock(&p->mu);
  bool pending = !atomic_load_explicit(&p->done, memory_order_relaxed);
  if (pending) weft_waiters_add(&p->waiters, w);
  pthread_mutex_unlock(&p->mu);
  return pending;
}

void weft_proc_remove_waiter(weft_proc *p, weft_waiter *w) {
  pthread_mutex_lock(&p->mu);
  weft_waiters_remove(&p->waiters, w);
  pthread_mutex_unlock(&p->mu);
}

/* Interrupts the reaper's poll.  Any thread, any lock held: a write of
   one byte to a non-blocking pipe (full: it is poked already). */
static void poke(weft_proc *p) {
  char c = 0;
  while (write(p->wake_w, &c, 1) < 0 && errno == EINTR) {
  }
}

static void ctx_wake(weft_waiter *w) {
  poke((weft_proc *)((char *)w - offsetof(weft_proc, ctx_w)));
}

/* ---------------------------------------------------------------------- */
/* the reaper */

/* Signals the child's group (the child alone if the group is gone).  The
   leader is not reaped yet, so its pid still names this group. */
static void signal_group(weft_proc *p, int sig) {
  if (kill(-p->pid, sig) != 0 && errno == ESRCH) kill(p->pid, sig);
}

/* Whether the leader has exited (it stays a zombie: WNOWAIT). */
static bool leader_exited(weft_proc *p) {
  siginfo_t si;
  memset(&si, 0, sizeof si);
  if (waitid(P_PID, (id_t)p->pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0)
    return errno != EINTR; /* ECHILD: reaped by someone else (SIGCHLD
                              ignored): it is gone */
  return si.si_pid == p->pid;
}

/* Whether a process other than the leader is alive in group pgid: 1 or
   0, or -1 when /proc cannot tell. */
static int group_alive(pid_t pgid) {
  DIR *d = opendir("/proc");
  if (d == NULL) return -1;
  int alive = 0;
  struct dirent *e;
  char path[64], buf[512];
  while (!alive && (e = readdir(d)) != NULL) {
    if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
    char *end;
    long n = strtol(e->d_name, &end, 10);
    if (*end != '\0' || n == (long)pgid) continue;
    snprintf(path, sizeof path, "/proc/%ld/stat", n);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ssize_t k = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (k <= 0) continue;
    buf[k] = '\0';
    char *r = strrchr(buf, ')'); /* after the command name */
    char state;
    long ppid, pgrp;
    if (r != NULL && sscanf(r + 1, " %c %ld %ld", &state, &ppid, &pgrp) == 3 &&
        pgrp == (long)pgid && state != 'Z' && state != 'X')
      alive = 1;
  }
  closedir(d);
  return alive;
}

/* Reads what is ready on capture i: kept up to max_output, the rest read
   and dropped. */
static void read_capture(weft_proc *p, int i, char *scratch, size_t n) {
  capture *c = &p->cap[i];
  char *dst = scratch;
  size_t room = n;
  bool keep = c->len < p->max_output && !p->nomem;
  if (keep && c->len == c->cap) {
    size_t ncap = c->cap == 0 ? FIRST_CAPTURE : c->cap * 2;
    if (ncap > p->max_output || ncap < c->cap) ncap = p->max_output;
    char *d = weft_realloc(p->rt, c->data, c->cap, ncap);
    if (d == NULL) {
      p->nomem = true;
      keep = false;
    } else {
      c->data = d;
      c->cap = ncap;
    }
  }
  if (keep) {
    dst = c->data + c->len;
    room = c->cap - c->len;
  }
  ssize_t r = read(c->fd, dst, room);
  if (r > 0) {
    if (keep)
      c->len += (size_t)r;
    else
      p->truncated = true;
  } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
    close_fd(&c->fd);
  }
}

static void write_stdin(weft_proc *p) {
  size_t n = p->in_len - p->in_off;
  if (n > WRITE_CHUNK) n = WRITE_CHUNK;
  ssize_t r = write(p->in_fd, p->in_data + p->in_off, n);
  if (r > 0)
    p->in_off += (size_t)r;
  else if (r < 0 && errno != EAGAIN && errno != EINTR)
    close_fd(&p->in_fd); /* EPIPE: the child does not read it */
  if (p->in_off == p->in_len) close_fd(&p->in_fd);
}

static int ms_until(double t) {
  double ms = ceil((t - weft_now()) * 1000);
  return ms <= 0 ? 0 : ms > INT_MAX ? INT_MAX : (int)ms;
}

static int min_timeout(int a, int b) {
  if (a < 0) return b;
  if (b < 0) return a;
  return a < b ? a : b;
}

/*
** The reaper's loop.  Normal end: the leader exited and the captured
** pipes reached EOF (processes it left in its group may hold them: they
** are waited for).  Termination (ctx ended, or abandoned): SIGTERM and
** SIGCONT to the group, then SIGKILL at the end of the grace period,
** unless the leader exited and nothing of its group is left alive first.
** After SIGKILL the pipes are not waited for (only a process outside the
** group could still hold them).
*/
static void reap_loop(weft_proc *p) {
  char scratch[16384];
  bool exited = false, term = false, killed = false;
  double kill_at = INFINITY;
  int backoff = 1, scan = 2;
  for (;;) {
    if (!exited) exited = leader_exited(p);
    if (p->in_fd >= 0 && (exited || p->in_off == p->in_len))
      close_fd(&p->in_fd);
    bool open = p->cap[0].fd >= 0 || p->cap[1].fd >= 0;
    if (exited && !open && !term) return; /* completed */
    if (!term &&
        (atomic_load(&p->abandon) || weft_ctx_err(p->ctx) != WEFT_LIVE)) {
      term = p->terminated = true;
      signal_group(p, SIGTERM);
      signal_group(p, SIGCONT); /* a stopped process gets its SIGTERM */
      kill_at = weft_now() + p->grace;
    }
    if (term && !killed && weft_now() >= kill_at) {
      killed = true;
      signal_group(p, SIGKILL);
    }
    if (exited && killed) return;
    int timeout = -1;
    if (exited && term && !open) { /* is anything of the group left? */
      int alive = group_alive(p->pid);
      if (alive == 0) return;
      if (alive < 0) { /* cannot tell: do not wait for the grace */
        signal_group(p, SIGKILL);
        return;
      }
      timeout = scan; /* 2, 4, .. 100 ms: most go at once */
      scan = scan * 2 > GROUP_SCAN_MAX_MS ? GROUP_SCAN_MAX_MS : scan * 2;
    }
    struct pollfd fds[5];
    int n = 0, ipid = -1, iin = -1, icap[2] = {-1, -1};
    fds[n++] = (struct pollfd){.fd = p->wake_r, .events = POLLIN};
    if (!exited && p->pidfd >= 0) {
      ipid = n;
      fds[n++] = (struct pollfd){.fd = p->pidfd, .events = POLLIN};
    }
    if (p->in_fd >= 0) {
      iin = n;
      fds[n++] = (struct pollfd){.fd = p->in_fd, .events = POLLOUT};
    }
    for (int i = 0; i < 2; i++)
      if (p->cap[i].fd >= 0) {
        icap[i] = n;
        fds[n++] = (struct pollfd){.fd = p->cap[i].fd, .events = POLLIN};
      }
    if (!exited && p->pidfd < 0) timeout = min_timeout(timeout, backoff);
    if (term && !killed) timeout = min_timeout(timeout, ms_until(kill_at));
    int r = poll(fds, (nfds_t)n, timeout);
    if (r < 0) {
      if (errno != EINTR) { /* ENOMEM: try again a little later */
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
      }
      continue;
    }
    if (r == 0 && !exited && p->pidfd < 0 && backoff < EXIT_POLL_MAX_MS)
      backoff *= 2;
    /* a readable pidfd only ends the poll (waitid tells); one that says
       more than waitid would spin the loop: poll the exit instead */
    if (ipid >= 0 && fds[ipid].revents != 0 && !leader_exited(p))
      close_fd(&p->pidfd);
    if (fds[0].revents != 0) {
      char drain[64];
      while (read(p->wake_r, drain, sizeof drain) > 0) {
      }
    }
    if (iin >= 0 && fds[iin].revents != 0) write_stdin(p);
    for (int i = 0; i < 2; i++)
      if (icap[i] >= 0 && fds[icap[i]].revents != 0)
        read_capture(p, i, scratch, sizeof scratch);
  }
}

static void *reaper_main(void *arg) {
  weft_proc *p = arg;
  bool watching = weft_ctx_add_waiter(p->ctx, &p->ctx_w);
  reap_loop(p);
  if (watching) weft_ctx_remove_waiter(p->ctx, &p->ctx_w);
  close_fd(&p->in_fd);
  close_fd(&p->cap[0].fd);
  close_fd(&p->cap[1].fd);
  int st = 0;
  pid_t r;
  while ((r = waitpid(p->pid, &st, 0)) < 0 && errno == EINTR) {
  }
  p->status = -1;
  if (r == p->pid) {
    p->status_known = true;
    if (WIFEXITED(st)) {
      p->status = WEXITSTATUS(st);
    } else if (WIFSIGNALED(st)) {
      p->signal = WTERMSIG(st);
    }
  }
  pthread_mutex_lock(&p->mu);
  atomic_store_explicit(&p->done, true, memory_order_release);
  weft_waiters_wake_all(&p->waiters);
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

/* ---------------------------------------------------------------------- */
/* starting */

/* fd moved above 2 if it is a standard stream's number (so a dup2 onto a
   child's stream cannot clobber it), close-on-exec.  -1 on failure (fd is
   closed then). */
static int high_fd(int fd) {
  if (fd > 2) return fd;
  int n = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  int e = errno;
  close(fd);
  errno = e;
  return n;
}

/* A close-on-exec pipe with both ends above 2; the end the parent keeps
   (0: read, 1: write) is non-blocking.  0 or an errno. */
static int make_pipe(int fds[2], int parent_end) {
  if (pipe2(fds, O_CLOEXEC) != 0) return errno;
  fds[0] = high_fd(fds[0]);
  int e = errno;
  fds[1] = high_fd(fds[1]);
  if (fds[1] < 0) e = errno;
  if (fds[0] < 0 || fds[1] < 0) {
    close_fd(&fds[0]);
    close_fd(&fds[1]);
    return e;
  }
  int fl = fcntl(fds[parent_end], F_GETFL);
  if (fl < 0 || fcntl(fds[parent_end], F_SETFL, fl | O_NONBLOCK) != 0) {
    e = errno;
    close_fd(&fds[0]);
    close_fd(&fds[1]);
    return e;
  }
  return 0;
}

__attribute__((format(printf, 3, 4))) static int fail(char *err,
                                                       size_t errlen,
                                                       const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (errlen > 0) vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  return -1;
}

/* The message for a failed spawn of prog. */
static int spawn_error(int e, const char *prog, char *err, size_t errlen) {
  switch (e) {
    case ENOENT: return fail(err, errlen, "exec: no such file: %s", prog);
    case EACCES:
      return fail(err, errlen, "exec: permission denied: %s", prog);
    case ENOEXEC:
      return fail(err, errlen, "exec: not an executable: %s", prog);
    default: return fail(err, errlen, "exec: %s: %s", strerror(e), prog);
  }
}

/* Sets up the file actions and attributes of the spawn; 0 or an errno. */
static int spawn_setup(posix_spawn_file_actions_t *fa, posix_spawnattr_t *at,
                       const weft_proc_spec *s, int in_r, int out_w,
                       int err_w) {
  sigset_t none, dfl;
  sigemptyset(&none);
  sigemptyset(&dfl);
  sigaddset(&dfl, SIGPIPE);
  int e = posix_spawnattr_setflags(at, POSIX_SPAWN_SETPGROUP |
                                            POSIX_SPAWN_SETSIGMASK |
                                            POSIX_SPAWN_SETSIGDEF);
  if (e == 0) e = posix_spawnattr_setpgroup(at, 0);
  if (e == 0) e = posix_spawnattr_setsigmask(at, &none);
  if (e == 0) e = posix_spawnattr_setsigdefault(at, &dfl);
  if (e == 0)
    e = in_r >= 0 ? posix_spawn_file_actions_adddup2(fa, in_r, 0)
                  : posix_spawn_file_actions_addopen(fa, 0, "/dev/null",
                                                     O_RDONLY, 0);
  if (e == 0 && s->out_mode == WEFT_IO_CAPTURE)
    e = posix_spawn_file_actions_adddup2(fa, out_w, 1);
  if (e == 0 && s->out_mode == WEFT_IO_NULL)
    e = posix_spawn_file_actions_addopen(fa, 1, "/dev/null", O_WRONLY, 0);
  if (e == 0 && s->err_mode == WEFT_IO_CAPTURE)
    e = posix_spawn_file_actions_adddup2(fa, err_w, 2);
  if (e == 0 && s->err_mode == WEFT_IO_NULL)
    e = posix_spawn_file_actions_addopen(fa, 2, "/dev/null", O_WRONLY, 0);
  if (e == 0 && s->err_mode == WEFT_IO_STDOUT)
    e = posix_spawn_file_actions_adddup2(fa, 1, 2);
  if (e == 0 && s->cwd != NULL)
    e = posix_spawn_file_actions_addchdir_np(fa, s->cwd);
#if defined(__GLIBC__) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
  if (e == 0) e = posix_spawn_file_actions_addclosefrom_np(fa, 3);
#endif
  return e;
}

/* Spawns the child of p (its pipes are open); 0 or an errno. */
static int spawn(weft_proc *p, const weft_proc_spec *s, int in_r, int out_w,
                 int err_w) {
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t at;
  int e = posix_spawn_file_actions_init(&fa);
  if (e != 0) return e;
  e = posix_spawnattr_init(&at);
  if (e != 0) {
    posix_spawn_file_actions_destroy(&fa);
    return e;
  }
  e = spawn_setup(&fa, &at, s, in_r, out_w, err_w);
  if (e == 0) {
    char *const *envp = s->envp != NULL ? (char *const *)s->envp : environ;
    e = posix_spawnp(&p->pid, s->argv[0], &fa, &at, (char *const *)s->argv,
                     envp);
  }
  posix_spawnattr_destroy(&at);
  posix_spawn_file_actions_destroy(&fa);
  return e;
}

/* Starts the reaper with every signal blocked; 0 or an errno. */
static int start_reaper(weft_proc *p) {
  pthread_attr_t ta;
  int e = pthread_attr_init(&ta);
  if (e != 0) return e;
  pthread_attr_setstacksize(&ta, REAPER_STACK); /* a hint: may fail */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  e = pthread_create(&p->thread, &ta, reaper_main, p);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&ta);
  return e;
}

int weft_proc_start(weft_runtime *rt, const weft_proc_spec *s,
                    weft_proc **out, char *err, size_t errlen) {
  *out = NULL;
  if (s->cwd != NULL) { /* a clear message, not the child's ENOENT */
    struct stat st;
    if (stat(s->cwd, &st) != 0)
      return errno == ENOENT
                 ? fail(err, errlen, "exec: no such directory: %s", s->cwd)
                 : fail(err, errlen, "exec: %s: %s", strerror(errno), s->cwd);
    if (!S_ISDIR(st.st_mode))
      return fail(err, errlen, "exec: not a directory: %s", s->cwd);
  }
  weft_proc *p = weft_alloc(rt, sizeof *p);
  if (p == NULL) return fail(err, errlen, "not enough memory");
  memset(p, 0, sizeof *p);
  if (pthread_mutex_init(&p->mu, NULL) != 0) {
    weft_free(rt, p, sizeof *p);
    return fail(err, errlen, "exec: cannot create a lock");
  }
  weft_object_init(&p->obj, &weft_proc_class);
  weft_runtime_retain(rt);
  p->rt = rt;
  weft_ctx_retain(s->ctx);
  p->ctx = s->ctx;
  p->wake_r = p->wake_w = p->pidfd = p->in_fd = -1;
  p->cap[0].fd = p->cap[1].fd = -1;
  p->max_output = s->max_output;
  p->grace = s->grace;
  p->ctx_w.wake = ctx_wake;
  atomic_init(&p->done, false);
  atomic_init(&p->abandon, false);

  /* from here on, failures release p (destroy closes what is open) */
  int in_r = -1, out_w = -1, err_w = -1, e = 0;
  int fds[2];
  if ((e = make_pipe(fds, 0)) != 0) goto sys_fail;
  p->wake_r = fds[0];
  p->wake_w = fds[1];
  int fl = fcntl(p->wake_w, F_GETFL);
  if (fl < 0 || fcntl(p->wake_w, F_SETFL, fl | O_NONBLOCK) != 0) {
    e = errno;
    goto sys_fail;
  }
  if (s->in_data != NULL) {
    if (s->in_len > 0) {
      p->in_data = weft_alloc(rt, s->in_len);
      if (p->in_data == NULL) {
        e = ENOMEM;
        goto sys_fail;
      }
      memcpy(p->in_data, s->in_data, s->in_len);
      p->in_len = s->in_len;
    }
    if ((e = make_pipe(fds, 1)) != 0) goto sys_fail;
    in_r = fds[0];
    p->in_fd = fds[1];
  }
  if (s->out_mode == WEFT_IO_CAPTURE) {
    if ((e = make_pipe(fds, 0)) != 0) goto sys_fail;
    p->cap[0].fd = fds[0];
    p->cap[0].on = true;
    out_w = fds[1];
  }
  if (s->err_mode == WEFT_IO_CAPTURE) {
    if ((e = make_pipe(fds, 0)) != 0) goto sys_fail;
    p->cap[1].fd = fds[0];
    p->cap[1].on = true;
    err_w = fds[1];
  }
  e = spawn(p, s, in_r, out_w, err_w);
  close_fd(&in_r);
  close_fd(&out_w);
  close_fd(&err_w);
  if (e != 0) {
    weft_proc_release(p);
    return spawn_error(e, s->argv[0], err, errlen);
  }
#if defined(SYS_pidfd_open) && !defined(WEFT_EXEC_NO_PIDFD)
  p->pidfd = (int)syscall(SYS_pidfd_open, p->pid, 0); /* close-on-exec */
  if (p->pidfd >= 0 && p->pidfd <= 2) p->pidfd = high_fd(p->pidfd);
#endif
  if ((e = start_reaper(p)) != 0) { /* no one to watch it: end it now */
    signal_group(p, SIGKILL);
    while (waitpid(p->pid, NULL, 0) < 0 && errno == EINTR) {
    }
    weft_proc_release(p);
    return fail(err, errlen, "exec: cannot start a thread: %s", strerror(e));
  }
  p->started = true;
  *out = p;
  return 0;

sys_fail:
  close_fd(&in_r);
  close_fd(&out_w);
  close_fd(&err_w);
  weft_proc_release(p);
  return fail(err, errlen, "exec: %s", strerror(e));
}

/* ---------------------------------------------------------------------- */
/* the owner's end */

void weft_proc_finish(weft_proc *p) {
  if (!p->started || p->joined) return;
  if (!weft_proc_done(p)) {
    atomic_store(&p->abandon, true);
    poke(p);
  }
  pthread_join(p->thread, NULL);
  p->joined = true;
}

void weft_proc_get_result(weft_proc *p, weft_proc_result *r) {
  memset(r, 0, sizeof *r);
  r->terminated = p->terminated;
  r->status_known = p->status_known;
  r->status = p->status;
  r->signal = p->signal;
  r->truncated = p->truncated;
  r->nomem = p->nomem;
  if (p->cap[0].on) {
    r->out = p->cap[0].data != NULL ? p->cap[0].data : "";
    r->out_len = p->cap[0].len;
  }
  if (p->cap[1].on) {
    r->err = p->cap[1].data != NULL ? p->cap[1].data : "";
    r->err_len = p->cap[1].len;
  }
}
