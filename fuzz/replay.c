/*
** replay.c: runs fuzz inputs through LLVMFuzzerTestOneInput (value_fuzz.c)
** without libFuzzer, as regression tests; prints TAP.
**
**   replay [FILE | DIR]...     default: fuzz/corpus/value
**
** A directory stands for its files (not dot files), in name order.  Each
** input runs in a child process, so one that aborts (a mismatch, a
** sanitizer report) is "not ok" and the others still run.  A path is
** printed without a leading "fuzz/" (ok 3 - corpus/value/table-cycle).
** Exit status 1 when any input failed (or none was found).
*/
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { TIMEOUT = 60 }; /* seconds per input */

typedef struct list {
  char **v;
  size_t n, cap;
} list;

static void add(list *l, const char *s) {
  if (l->n == l->cap) {
    l->cap = l->cap ? 2 * l->cap : 64;
    l->v = realloc(l->v, l->cap * sizeof *l->v);
    if (l->v == NULL) {
      perror("replay");
      exit(2);
    }
  }
  l->v[l->n] = strdup(s);
  if (l->v[l->n++] == NULL) {
    perror("replay");
    exit(2);
  }
}

static int by_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Adds path, or the files of directory path in name order. */
static int add_path(list *l, const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) {
    fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
    return -1;
  }
  if (!S_ISDIR(st.st_mode)) {
    add(l, path);
    return 0;
  }
  DIR *d = opendir(path);
  if (d == NULL) {
    fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
    return -1;
  }
  list names = {0};
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.') add(&names, e->d_name);
  closedir(d);
  if (names.n > 0) qsort(names.v, names.n, sizeof *names.v, by_name);
  for (size_t i = 0; i < names.n; i++) {
    size_t len = strlen(path) + strlen(names.v[i]) + 2;
    char *full = malloc(len);
    if (full == NULL) {
      perror("replay");
      exit(2);
    }
    snprintf(full, len, "%s%s%s", path,
             path[strlen(path) - 1] == '/' ? "" : "/", names.v[i]);
    if (stat(full, &st) == 0 && S_ISREG(st.st_mode)) add(l, full);
    free(full);
    free(names.v[i]);
  }
  free(names.v);
  return 0;
}

/* In the child: runs one input; exits 0, or dies. */
static void run_one(const char *path) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
    _exit(3);
  }
  size_t cap = 4096, n = 0;
  unsigned char *buf = malloc(cap);
  size_t got;
  while (buf != NULL && (got = fread(buf + n, 1, cap - n, f)) > 0) {
    n += got;
    if (n == cap) {
      unsigned char *more = realloc(buf, cap * 2);
      if (more == NULL) free(buf);
      buf = more;
      cap *= 2;
    }
  }
  fclose(f);
  if (buf == NULL) _exit(3);
  alarm(TIMEOUT);
  LLVMFuzzerTestOneInput(buf, n);
  free(buf);
  exit(0);
}

int main(int argc, char **argv) {
  list inputs = {0};
  int bad = 0;
  if (argc < 2)
    bad |= add_path(&inputs, "fuzz/corpus/value") != 0;
  for (int i = 1; i < argc; i++) bad |= add_path(&inputs, argv[i]) != 0;
  int failures = 0;
  for (size_t i = 0; i < inputs.n; i++) {
    const char *path = inputs.v[i];
    const char *shown = strncmp(path, "fuzz/", 5) == 0 ? path + 5 : path;
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
      perror("replay: fork");
      return 2;
    }
    if (pid == 0) run_one(path);
    int status;
    while (waitpid(pid, &status, 0) < 0)
      if (errno != EINTR) {
        perror("replay: waitpid");
        return 2;
      }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
      printf("ok %zu - %s\n", i + 1, shown);
    } else {
      failures++;
      printf("not ok %zu - %s\n", i + 1, shown);
      if (WIFSIGNALED(status))
        printf("# killed by signal %d%s\n", WTERMSIG(status),
               WTERMSIG(status) == SIGALRM ? " (timeout)" : "");
      else
        printf("# exit status %d\n", WEXITSTATUS(status));
    }
    free(inputs.v[i]);
  }
  printf("1..%zu\n", inputs.n);
  free(inputs.v);
  return failures > 0 || bad || inputs.n == 0;
}
