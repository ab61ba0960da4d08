/*
** value_test.c: the copier's C API (value.h) between two real lua_States,
** as the engine uses it: encode in one state, decode in another, from other
** threads too.  Prints TAP.
*/
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "value.h"
#include "weft.h"

#include "tap.h"


/* Engine allocations, counted: every byte must be back at the end. */
static atomic_long engine_bytes;

static void *counting_alloc(void *ud, void *p, size_t osize, size_t nsize) {
  (void)ud;
  if (p != NULL) atomic_fetch_sub(&engine_bytes, (long)osize);
  if (nsize == 0) {
    free(p);
    return NULL;
  }
  void *q = realloc(p, nsize);
  if (q != NULL)
    atomic_fetch_add(&engine_bytes, (long)nsize);
  else if (p != NULL)
    atomic_fetch_add(&engine_bytes, (long)osize);
  return q;
}

/* A Lua allocator that fails once `budget` bytes are in use. */
typedef struct limit {
  size_t used, budget;
} limit;

static void *limited_alloc(void *ud, void *p, size_t osize, size_t nsize) {
  limit *l = ud;
  if (p == NULL) osize = 0;
  if (nsize == 0) {
    l->used -= osize;
    free(p);
    return NULL;
  }
  if (nsize > osize && l->used + (nsize - osize) > l->budget) return NULL;
  void *q = realloc(p, nsize);
  if (q != NULL) l->used = l->used - osize + nsize;
  return q;
}

static lua_State *new_state(weft_runtime *rt, lua_State *L) {
  if (L == NULL) L = luaL_newstate();
  luaL_openlibs(L);
  if (weft_runtime_open(rt, L) != 0) abort();
  luaL_requiref(L, "weft.core", luaopen_weft_core, 0);
  lua_pop(L, 1);
  return L;
}

/* encode(L): runs chunk in L, encodes its results; buffer into *out. */
typedef struct job {
  const char *chunk;
  weft_buf *buf;
} job;

static int encode_k(lua_State *L) {
  job *j = lua_touserdata(L, 1);
  int base = lua_gettop(L);
  if (luaL_dostring(L, j->chunk) != LUA_OK) return lua_error(L);
  j->buf = weft_buf_encode(L, base + 1, lua_gettop(L) - base, "args", 1);
  return 0;
}

/* Returns NULL, or the error message (static storage of L2's string). */
static const char *encode(lua_State *L, job *j) {
  j->buf = NULL;
  lua_pushcfunction(L, encode_k);
  lua_pushlightuserdata(L, j);
  if (lua_pcall(L, 1, 0, 0) == LUA_OK) return NULL;
  return lua_tostring(L, -1);
}

/* decode_k(buf, check): decodes buf and calls the global function check
   with the values; returns its result. */
static int decode_k(lua_State *L) {
  weft_buf *b = lua_touserdata(L, 1);
  lua_getglobal(L, "check");
  int n = weft_buf_decode(L, b);
  lua_call(L, n, 1);
  return 1;
}

/* Decodes b into L and evaluates `check` (a chunk returning a function of
   the values that returns true or a message). */
static int decode_check(lua_State *L, weft_buf *b, const char *checker,
                        char *msg, size_t msglen) {
  int top = lua_gettop(L);
  if (luaL_loadstring(L, checker) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
    snprintf(msg, msglen, "checker: %s", lua_tostring(L, -1));
    lua_settop(L, top);
    return 0;
  }
  lua_setglobal(L, "check");
  lua_pushcfunction(L, decode_k);
  lua_pushlightuserdata(L, b);
  int ok = lua_pcall(L, 1, 1, 0) == LUA_OK && lua_toboolean(L, -1) &&
           lua_type(L, -1) == LUA_TBOOLEAN;
  snprintf(msg, msglen, "%s", ok ? "" : luaL_tolstring(L, -1, NULL));
  lua_settop(L, top);
  return ok;
}

/* Pushes a userdata without a metatable and a light userdata as globals. */
static void add_raw_userdata(lua_State *L) {
  lua_newuserdatauv(L, 8, 0);
  lua_setglobal(L, "raw_ud");
  lua_pushlightuserdata(L, L);
  lua_setglobal(L, "light_ud");
}

typedef struct reader {
  weft_runtime *rt;
  weft_buf *buf;
  int ok;
} reader;

static void *decode_thread(void *arg) {
  reader *r = arg;
  lua_State *L = new_state(r->rt, NULL);
  char msg[256];
  r->ok = 1;
  for (int i = 0; i < 200 && r->ok; i++)
    r->ok = decode_check(L, r->buf,
                         "return function(t) return #t.items == 1000 and "
                         "t.items[1000].id == 1000 and t.me == t end",
                         msg, sizeof msg);
  lua_close(L);
  return NULL;
}

int main(void) {
  weft_config cfg = {0};
  cfg.workers = -1; /* no runtime pool */
  cfg.alloc = counting_alloc;
  char err[128];
  weft_runtime *rt = weft_runtime_new(&cfg, err, sizeof err);
  if (rt == NULL) {
    printf("Bail out! %s\n", err);
    return 1;
  }
  lua_State *a = new_state(rt, NULL), *b = new_state(rt, NULL);
  add_raw_userdata(a);

  lua_pushinteger(b, 99);
  lua_setglobal(b, "only_in_b");

  struct { const char *name, *make, *checker; } cases[] = {
      {"scalars keep their types", "return nil, true, 7, 7.0, -0.0, 'a\\0b'",
       "return function(...) local n, t, i, f, z, s = ... "
       "return select('#', ...) == 6 and n == nil and t == true and "
       "math.type(i) == 'integer' and math.type(f) == 'float' and "
       "1/z == -math.huge and s == 'a\\0b' end"},
      {"tables keep cycles and aliasing across states",
       "local t = {x = {}}; t.self = t; t.y = t.x; return t, t",
       "return function(t, u) return t == u and t.self == t and t.x == t.y end"},
      {"_ENV binds to the receiver's globals",
       "local up = 1; return function() return up, only_in_b end",
       "return function(f) local u, g = f() return u == 1 and g == 99 end"},
      {"C functions resolve by name in the receiver",
       "return string.format, print",
       "return function(f, p) return f == string.format and p == print end"},
      {"metatables are copied and set",
       "return setmetatable({}, {__index = function(_, k) return k .. '!' end})",
       "return function(t) return t.a == 'a!' end"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    job j;
    char msg[512];
    int top_a = lua_gettop(a), top_b = lua_gettop(b);
    j.chunk = cases[i].make;
    const char *e = encode(a, &j);
    if (e != NULL) {
      check(0, cases[i].name, e);
      lua_settop(a, top_a);
      continue;
    }
    int ok = decode_check(b, j.buf, cases[i].checker, msg, sizeof msg);
    weft_buf_release(j.buf);
    check(ok && lua_gettop(a) == top_a && lua_gettop(b) == top_b,
          cases[i].name, msg);
  }

  struct { const char *name, *make, *expect; } bad[] = {
      {"userdata without a name is refused", "return {u = raw_ud}",
       "args[1].u: cannot copy userdata"},
      {"light userdata is refused", "return 1, {light_ud}",
       "args[2][1]: cannot copy light userdata"},
      {"a C closure unknown to package.loaded is refused",
       "return coroutine.wrap(print)", "args[1]: cannot copy C function"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    job j;
    int top = lua_gettop(a);
    j.chunk = bad[i].make;
    const char *e = encode(a, &j);
    char detail[512];
    snprintf(detail, sizeof detail, "got: %s", e ? e : "(copied)");
    int ok = e != NULL && strstr(e, bad[i].expect) != NULL;
    if (j.buf) weft_buf_release(j.buf);
    lua_settop(a, top);
    check(ok, bad[i].name, detail);
  }

  /* a C function whose module the receiver has not loaded */
  {
    job j = {"package.loaded.fakemod = {f = coroutine.wrap(print)} "
             "return package.loaded.fakemod.f", NULL};
    char msg[512];
    int top = lua_gettop(b);
    const char *e = encode(a, &j);
    int ok = e == NULL &&
             !decode_check(b, j.buf, "return function() return true end", msg,
                           sizeof msg) &&
             strstr(msg, "fakemod.f: its module is not loaded") != NULL &&
             lua_gettop(b) == top;
    if (j.buf) weft_buf_release(j.buf);
    check(ok, "a C function missing in the receiver fails the decode", msg);
  }

  /* memory errors while decoding into a limited state: caught, and the
     state is usable afterwards */
  {
    limit lim = {0, 1 << 20};
    lua_State *small = lua_newstate(limited_alloc, &lim);
    new_state(rt, small);
    job j = {"local t = {} for i = 1, 200000 do t[i] = {i} end return t", NULL};
    char msg[512];
    const char *e = encode(a, &j);
    int top = lua_gettop(small);
    int failed = e == NULL &&
                 !decode_check(small, j.buf, "return function() return true end",
                               msg, sizeof msg);
    int mem = strstr(msg, "not enough memory") != NULL;
    lua_gc(small, LUA_GCCOLLECT);
    int usable = luaL_dostring(small, "return #string.rep('x', 1000)") == LUA_OK &&
                 lua_tointeger(small, -1) == 1000;
    lua_settop(small, top);
    if (j.buf) weft_buf_release(j.buf);
    lua_close(small);
    check(failed && mem && usable,
          "a decode that runs out of memory fails cleanly", msg);
  }

  /* one buffer decoded by four threads at once */
  {
    job j = {"local t = {items = {}} for i = 1, 1000 do t.items[i] = {id = i} end "
             "t.me = t return t", NULL};
    const char *e = encode(a, &j);
    reader r[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
      r[i] = (reader){rt, j.buf, 0};
      pthread_create(&th[i], NULL, decode_thread, &r[i]);
    }
    int ok = e == NULL;
    for (int i = 0; i < 4; i++) {
      pthread_join(th[i], NULL);
      ok = ok && r[i].ok;
    }
    if (j.buf) weft_buf_release(j.buf);
    check(ok, "threads decode one buffer concurrently", NULL);
  }

  lua_close(a);
  lua_close(b);
  weft_runtime_close(rt, 0);
  char detail[64];
  snprintf(detail, sizeof detail, "%ld engine bytes still allocated",
           (long)atomic_load(&engine_bytes));
  check(atomic_load(&engine_bytes) == 0,
        "every engine allocation is freed at teardown", detail);
  return tap_done();
}
