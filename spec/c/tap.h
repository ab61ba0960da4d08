/*
** tap.h: TAP output for the C tests that include it (spec/run compiles
** each test file in spec/c alone; this header is not a test).  check()
** prints one "ok"/"not ok" line, with a detail line when it fails;
** tap_done() prints the plan and returns the exit status.
*/
#ifndef WEFT_SPEC_TAP_H
#define WEFT_SPEC_TAP_H

#include <stdio.h>

static int tap_failures, tap_count;

static void check(int ok, const char *name, const char *detail) {
  tap_count++;
  if (!ok) tap_failures++;
  printf("%sok %d - %s\n", ok ? "" : "not ", tap_count, name);
  if (!ok && detail) printf("# %s\n", detail);
}

static int tap_done(void) {
  printf("1..%d\n", tap_count);
  return tap_failures != 0;
}

#endif
