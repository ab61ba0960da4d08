/*
** sanshim.c: preloaded after the sanitizer runtime when the specs run under
** Debian's lua5.4, whose interpreter and liblua are not instrumented
** (spec/run sanitize).  Not part of weft.
**
** - liblua raises errors with __longjmp_chk (it is built with
**   _FORTIFY_SOURCE), which ThreadSanitizer does not intercept: every Lua
**   error thrown through weft's instrumented C code would leave frames on
**   TSan's shadow stack, which grows until TSan runs out of memory or fails
**   a CHECK.  Forwarding it to longjmp, which TSan does intercept, unwinds
**   the shadow stack.  (AddressSanitizer intercepts __longjmp_chk itself.)
** - lua_close dlcloses C modules before LeakSanitizer and TSan's exit-time
**   checks run, so their reports would show weft.core as <unknown module>:
**   dlclose is made a no-op so the reports name our functions.
**
** Build without _FORTIFY_SOURCE, or longjmp below would itself become
** __longjmp_chk.
*/
#undef _FORTIFY_SOURCE
#include <setjmp.h>

void __longjmp_chk(jmp_buf env, int val) __attribute__((noreturn));
int dlclose(void *handle);

void __longjmp_chk(jmp_buf env, int val) { longjmp(env, val); }

int dlclose(void *handle) {
  (void)handle;
  return 0;
}
