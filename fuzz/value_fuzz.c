/*
** value_fuzz.c: a libFuzzer target for the value copier (engine/value.c).
**
** An input is a small program for a stack machine that builds a value graph
** in a fresh state A: scalars of every kind (math.mininteger, -0.0, NaNs,
** infinities, strings with zeros, long strings), tables with keys of any
** kind, aliasing and cycles, metatables with metamethods (__index, __gc,
** __mode...), Lua functions made from a fixed set of snippets with their
** upvalues set and joined (debug.setupvalue/upvaluejoin), open upvalues of
** a suspended coroutine, library C functions and modules (also modules of
** its own, which the receivers have, lack or have differently, and which it
** may replace between two copies), weft handles, host userdata (a
** registered type, whose copy_out or copy_in may refuse or misbehave), and
** refused values (coroutines, light userdata, io.stdout, plain userdata, C
** functions not in a library) at any depth.  The values left on the
** machine's stack are then copied A -> B -> A' (A' is a third state, or A
** itself) with weft_buf_encode and weft_buf_decode, and checked:
**
**   - when the graph holds a refused value (found by a walk that follows
**     what the encoder follows), the encode raises "...: cannot copy ..."
**     (or the host type's own error), leaves the stack balanced, leaks no
**     engine memory, and A stays usable;
**   - otherwise the copies in B and in A' have the same shape as the
**     original: a bijection between original and copied tables and
**     functions (aliasing and cycles kept), math.type and bits of numbers,
**     bytes of strings, metatables, functions' bytecode, upvalue names,
**     values and sharing, _ENV bound to the receiver's globals, modules and
**     C functions by name, handles shared, host userdata bytes; functions
**     called with a fixed argument give the same results (when that means
**     anything: no _ENV was rebound);
**   - a decode that needs a module or C function the receiver lacks (or
**     has differently), or a host value whose copy_in fails, raises with
**     the stack balanced and the receiver usable;
**   - weft_buf_decode_array_into agrees with the copy; scalars encode to
**     the same bytes in every state (weft_buf_equal), and a string as
**     weft_buf_new_string makes it;
**   - every engine allocation is back once the buffers are released;
**   - when the program asks for it, the N-th allocation (of a Lua state or
**     of the engine) fails during one phase of the copy, and from then on
**     until the phase ends: the phase either succeeds or raises "not enough
**     memory" with the stack balanced, nothing leaked and the state usable.
**
** Any mismatch prints a line on stderr and calls abort().  The input is
** bounded (MAX_OPS ops, MAX_STACK values, string and box sizes, an
** instruction budget for calls) so an execution takes about a millisecond.
**
** Built with -DFUZZ_TRACE it prints one line per input and per copy on
** stderr (what was built, refused or compared): to check what seeds do.
** Built with -DFUZZ_SKIP_KNOWN it steers around the engine bugs that are
** still open (fuzz/README.md), so a fuzzing session can look for others.
**
** Deliberate tolerances (documented behaviour of value.c, see the README in
** this folder): an upvalue named _ENV arrives as the receiver's globals;
** functions with no upvalue but _ENV and the same bytecode may arrive as
** one closure (the decoder's load cache), so a table keyed by two of them
** may arrive with one entry; weak tables may lose entries whose key or
** value is collectable; host userdata is rebuilt per occurrence (its
** identity is not kept); an upvalue shared (debug.upvaluejoin) between an
** _ENV and another name is written after whichever the encoder meets first;
** a handle reached again through a finalizer after B's collector released
** it is refused ("a released handle").
*/
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "object.h"  /* weft_to_object, weft_push_object: handles */
#include "runtime.h" /* live engine allocations (weft_alloc_live) */
#include "value.h"
#include "weft.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#ifdef FUZZ_TRACE
#define TRACE(...) fprintf(stderr, __VA_ARGS__)
#else
#define TRACE(...) ((void)0)
#endif

enum {
  INPUT_CAP = 4096, /* bytes of an input that are read */
  MAX_OPS = 200,
  MAX_STACK = 24,   /* values on the machine's stack */
  MAX_SHORT = 15,   /* short strings: bytes taken from the input */
  MAX_LONG = 600,   /* long strings: at most this many bytes */
  MAX_BOX = 100,    /* host userdata bytes (more than the encoder's 64) */
  BUDGET = 20000    /* instructions per call (count hook) */
};

#define BOX_MT "fuzz.box"
#define OTHER_MT "fuzz.other"

static void die(const char *fmt, ...)
    __attribute__((noreturn, format(printf, 1, 2)));

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("value_fuzz: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  abort();
}

/* ---------------------------------------------------------------------- */
/* the host type: a userdata holding bytes; first byte 0xFF: copy_out
   refuses it, 0xFE: copy_out keeps asking for more room */

typedef struct box {
  size_t len;
  unsigned char bytes[];
} box;

static size_t box_out(lua_State *L, int idx, void *out, size_t cap, void *ud) {
  (void)ud;
  const box *b = luaL_checkudata(L, idx, BOX_MT);
  if (b->len > 0 && b->bytes[0] == 0xFF) luaL_error(L, "fuzz.box refused");
  if (b->len > 0 && b->bytes[0] == 0xFE) return cap + 1;
  if (b->len <= cap) memcpy(out, b->bytes, b->len);
  return b->len;
}

static void push_box(lua_State *L, const void *data, size_t len) {
  box *b = lua_newuserdatauv(L, sizeof *b + len, 0);
  b->len = len;
  if (len > 0) memcpy(b->bytes, data, len);
  luaL_setmetatable(L, BOX_MT);
}

/* first byte 0xFD: pushes nothing; 0xFC: two values; 0xFB: raises */
static void box_in(lua_State *L, const void *data, size_t len, void *ud) {
  (void)ud;
  unsigned char first = len > 0 ? *(const unsigned char *)data : 0;
  if (first == 0xFD) return;
  if (first == 0xFB) luaL_error(L, "fuzz.box copy_in refused");
  push_box(L, data, len);
  if (first == 0xFC) lua_pushboolean(L, 1);
}

/* An allocator that can be told to fail: once `left` growing allocations
   have been served, every further one fails (left < 0: no limit). */
typedef struct memctl {
  long left;
} memctl;

static void *fuzz_alloc(void *ud, void *p, size_t osize, size_t nsize) {
  memctl *m = ud;
  if (nsize == 0) {
    free(p);
    return NULL;
  }
  if (m->left >= 0 && (p == NULL || nsize > osize)) {
    if (m->left == 0) return NULL;
    m->left--;
  }
  return realloc(p, nsize);
}

/*
** The runtime: made on the first input and reused by every later one (no
** pool, no thread).  This is the file's only mutable static; it is never
** closed (the process ends with it).  Its allocator's memctl is malloc'd
** and reached through it (rt->alloc_ud).
*/
static weft_runtime *shared_runtime;

static memctl *engine_mem(weft_runtime *rt) { return rt->alloc_ud; }

static weft_runtime *runtime(void) {
  if (shared_runtime == NULL) {
    weft_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.workers = -1;
    cfg.alloc = fuzz_alloc;
    cfg.alloc_ud = malloc(sizeof(memctl));
    if (cfg.alloc_ud == NULL) die("out of memory");
    ((memctl *)cfg.alloc_ud)->left = -1;
    char err[128];
    /* every engine allocation reaches fuzz_alloc, so a failure injected
       at the Nth one does not depend on earlier inputs (the block cache
       would carry blocks from one input to the next) */
    setenv("WEFT_NO_BLOCK_CACHE", "1", 1);
    shared_runtime = weft_runtime_new(&cfg, err, sizeof err);
    if (shared_runtime == NULL) die("weft_runtime_new: %s", err);
    if (weft_register_type(shared_runtime, BOX_MT, box_out, box_in, NULL) != 0)
      die("weft_register_type failed");
  }
  return shared_runtime;
}

static void budget_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_pushliteral(L, "fuzz: instruction budget");
  lua_error(L);
}

/* (Re)starts the instruction budget of L's thread. */
static void arm(lua_State *L) {
  lua_sethook(L, budget_hook, LUA_MASKCOUNT, BUDGET);
}

static int panic(lua_State *L) {
  die("unprotected Lua error: %s", lua_tostring(L, -1));
}

static lua_State *new_state(weft_runtime *rt, memctl *m) {
  m->left = -1;
  lua_State *L = lua_newstate(fuzz_alloc, m);
  if (L == NULL) die("lua_newstate failed");
  lua_atpanic(L, panic);
  luaL_openlibs(L);
  if (weft_runtime_open(rt, L) != 0) die("weft_runtime_open failed");
  luaL_requiref(L, "weft.core", luaopen_weft_core, 0);
  lua_pop(L, 1);
  luaL_newmetatable(L, BOX_MT);
  luaL_newmetatable(L, OTHER_MT);
  lua_pop(L, 2);
  arm(L); /* bounds finalizers run at lua_close too */
  return L;
}

/* GC modes, two bits: default incremental, incremental with no pause and
   big steps (a collection runs through everything), generational, and
   generational with minor collections as often as possible. */
static void set_gc(lua_State *L, unsigned mode) {
  switch (mode & 3) {
    case 1: lua_gc(L, LUA_GCINC, 1, 400, 1); break;
    case 2: lua_gc(L, LUA_GCGEN, 0, 0); break;
    case 3: lua_gc(L, LUA_GCGEN, 1, 10); break;
    default: break;
  }
}

/* ---------------------------------------------------------------------- */
/* input */

typedef struct input {
  const uint8_t *p;
  size_t n, i;
} input;

static unsigned get(input *in) { return in->i < in->n ? in->p[in->i++] : 0; }

static uint64_t get64(input *in) {
  uint64_t v = 0;
  for (int k = 0; k < 8; k++) v |= (uint64_t)get(in) << (8 * k);
  return v;
}

static const lua_Integer special_ints[] = {
    0, 1, -1, 2, 3, 7, 10, 255, 256, -129, 65536,
    INT32_MAX, INT32_MIN, (lua_Integer)INT32_MAX + 1,
    (lua_Integer)1 << 53, ((lua_Integer)1 << 53) + 1,
    LUA_MAXINTEGER, LUA_MININTEGER, LUA_MININTEGER + 1};
#define NINTS (sizeof special_ints / sizeof special_ints[0])

/* Bit patterns: zeros, small and huge values, subnormals, infinities,
   quiet/negative/signalling/payload NaNs, 2^53 + 1, +-2^63, 1.5. */
static const uint64_t special_floats[] = {
    0x0000000000000000ull, 0x8000000000000000ull, 0x3FF0000000000000ull,
    0xBFF0000000000000ull, 0x3FF8000000000000ull, 0xC004000000000000ull,
    0x4000000000000000ull, 0x3FB999999999999Aull, 0x7FEFFFFFFFFFFFFFull,
    0xFFEFFFFFFFFFFFFFull, 0x0000000000000001ull, 0x8000000000000001ull,
    0x0010000000000000ull, 0x7FF0000000000000ull, 0xFFF0000000000000ull,
    0x7FF8000000000000ull, 0xFFF8000000000000ull, 0x7FF0000000000001ull,
    0x7FF8DEADBEEF0000ull, 0x4340000000000001ull, 0x43E0000000000000ull,
    0xC3E0000000000000ull, 0x4059000000000000ull};
#define NFLOATS (sizeof special_floats / sizeof special_floats[0])

static double bits_to_double(uint64_t u) {
  double d;
  memcpy(&d, &u, sizeof d);
  return d;
}

static void push_int(lua_State *L, input *in) {
  unsigned k = get(in);
  if (k & 0x80)
    lua_pushinteger(L, (lua_Integer)get64(in));
  else
    lua_pushinteger(L, special_ints[k % NINTS]);
}

static void push_float(lua_State *L, input *in) {
  unsigned k = get(in);
  if (k & 0x80)
    lua_pushnumber(L, bits_to_double(get64(in)));
  else
    lua_pushnumber(L, bits_to_double(special_floats[k % NFLOATS]));
}

static void push_short(lua_State *L, input *in) {
  char s[MAX_SHORT];
  size_t len = get(in) % (MAX_SHORT + 1);
  for (size_t i = 0; i < len; i++) s[i] = (char)get(in);
  lua_pushlstring(L, s, len);
}

/* 41 to MAX_LONG bytes (longer than Lua's short strings): a pattern of up
   to 8 input bytes repeated. */
static void push_long(lua_State *L, input *in) {
  char s[MAX_LONG], pat[8];
  size_t len = 41 + (get(in) | get(in) << 8) % (MAX_LONG - 40);
  size_t np = get(in) % 8 + 1;
  for (size_t i = 0; i < np; i++) pat[i] = (char)get(in);
  for (size_t i = 0; i < len; i++) s[i] = pat[i % np];
  lua_pushlstring(L, s, len);
}

/* ---------------------------------------------------------------------- */
/* snippets: every function the machine builds comes from one of these
   (pure: a call changes nothing but its own locals) */

static const char *const snippets[] = {
    "return function(a) return a end",
    "local x return function(a) return x end",
    "local x, y return function(a) return y, x, a end",
    "local x, y, z return function(a) return x, y, z end",
    "return function(a) return type(a), math.type(a) end",
    "local x return function(a) if type(x) == 'function' then return x(a) "
    "end return x end",
    "local f f = function(a) if type(a) == 'number' and a > 0 then "
    "return f(a - 1) end return a end return f",
    "local t return function(a) if type(t) == 'table' then "
    "return rawget(t, a), t[a] end return t end",
    "local x, y return function(a) local g = function() return x, a end "
    "return g, y end",
    "return function(a) return a // 2, a / 2, -0.0, 1/0, -(1/0), "
    "math.mininteger, 'a\\0b' end",
    "local x return function(...) return select('#', ...), x end",
    "local s = 'a string constant longer than forty bytes, kept in an "
    "upvalue' return function(a) return s .. a end",
    "local x, y return function(a) return rawequal(x, y), x == y end",
    "return ...", /* the main chunk itself: only _ENV */
    "local x, y return function(a) return pcall(x, a, y) end",
    "local k <const> = 42 return function(a) return k + a end",
};
#define NSNIP (sizeof snippets / sizeof snippets[0])
#define SNIP_CHUNK 13

/* the chunk run inside a coroutine: yields a closure whose upvalues stay
   open (they live on the suspended coroutine's stack) */
static const char open_snippet[] =
    "local x, y = ... coroutine.yield(function(a) return x, y, a end)";

static const char *const tm_names[] = {
    "__index", "__newindex", "__call", "__gc",  "__mode", "__eq",
    "__len",   "__close",    "__name", "__metatable", "__tostring",
    "__lt",    "__le",       "__concat", "__unm", "__add", "__pairs"};
#define NTM (sizeof tm_names / sizeof tm_names[0])

static const char *const modes[] = {"k", "v", "kv"};

/* library values: 'm' a module (package.loaded[name]), 'c' a C function
   (a path from the globals), 'g' the globals, 's' the strings' metatable,
   'l' package.loaded itself (a plain table full of modules); 'r' marks
   values the harness must not call (require searches the file system) */
static const struct lib {
  char kind;
  const char *path;
} libs[] = {
    {'m', "string"},    {'m', "math"},        {'m', "table"},
    {'m', "utf8"},      {'m', "coroutine"},   {'m', "os"},
    {'m', "io"},        {'m', "package"},     {'m', "debug"},
    {'m', "weft.core"}, {'g', "_G"},          {'s', ""},
    {'l', ""},          {'c', "type"},        {'c', "math.type"},
    {'c', "rawequal"},  {'c', "rawget"},      {'c', "select"},
    {'c', "tonumber"},  {'c', "string.len"},  {'c', "string.lower"},
    {'c', "math.abs"},  {'c', "math.max"},    {'c', "getmetatable"},
    {'c', "assert"},    {'c', "error"},       {'c', "string.format"},
    {'c', "pcall"},     {'c', "utf8.char"},   {'c', "ipairs"},
    {'r', "require"},
};
#define NLIBS (sizeof libs / sizeof libs[0])

/* Pushes the value at a dotted path from the globals. */
static void push_path(lua_State *L, const char *path) {
  char part[32];
  lua_pushglobaltable(L);
  while (*path) {
    size_t n = strcspn(path, ".");
    if (n >= sizeof part) die("path too long");
    memcpy(part, path, n);
    part[n] = 0;
    lua_getfield(L, -1, part);
    lua_remove(L, -2);
    path += n + (path[n] == '.');
  }
}

/* A C function no library exports (refused by the encoder, unless the
   machine's own module fz.cmod exports it). */
static int stray_cfunction(lua_State *L) {
  lua_pushinteger(L, lua_gettop(L));
  return 1;
}

/* The machine's module that is itself a C function (fz.fmod). */
static int module_cfunction(lua_State *L) {
  lua_pushboolean(L, lua_gettop(L) > 0);
  return 1;
}

/* package.preload functions of the receivers for fz.mod */
static int preload_mod(lua_State *L) {
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "preloaded");
  lua_setfield(L, -2, "origin");
  return 1;
}

static int preload_fail(lua_State *L) {
  return luaL_error(L, "fz.mod refuses to load here");
}

/* package.loaded[name] = value on top (popped) */
static void set_loaded(lua_State *L, const char *name) {
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_insert(L, -2);
  lua_setfield(L, -2, name);
  lua_pop(L, 1);
}

/* The machine's tables of C functions: fz.cmod, and one whose name holds a
   zero byte. */
static const char nul_name[] = "fz.c\0mod";

/* package.loaded[fz.cmod or nul_name] = {f = fn}; leaves the table */
static void push_cmod(lua_State *L, int nul, lua_CFunction fn) {
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, fn);
  lua_setfield(L, -2, "f");
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (nul)
    lua_pushlstring(L, nul_name, sizeof nul_name - 1);
  else
    lua_pushliteral(L, "fz.cmod");
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/* The machine's modules in a receiving state: mode 1 has them all (fz.mod
   through package.preload, fz.cmod and its twin with a zero in its name
   as the sender has them (`cmods`: bit 0 fz.cmod, bit 1 the twin; fz.cmod
   when it has neither), and fz.fmod with the same C functions), mode 2
   has them differently (fz.mod fails to load, other C functions), mode 0
   lacks them.  A receiver with a name of a C function the sender lacks
   could send it back by that name (A->B->A). */
static void setup_receiver(lua_State *L, int mode, int cmods) {
  if (mode == 0) return;
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, mode == 1 ? preload_mod : preload_fail);
  lua_setfield(L, -2, "fz.mod");
  lua_pop(L, 1);
  if (cmods == 0) cmods = 1;
  for (int twin = 0; twin <= 1; twin++) {
    if (!(cmods >> twin & 1)) continue;
    push_cmod(L, twin, mode == 1 ? stray_cfunction : module_cfunction);
    lua_pop(L, 1);
  }
  lua_pushcfunction(L, mode == 1 ? module_cfunction : stray_cfunction);
  set_loaded(L, "fz.fmod");
}

/* ---------------------------------------------------------------------- */
/* function dumps */

typedef struct dbuf {
  char *p;
  size_t n, cap;
} dbuf;

static int dbuf_writer(lua_State *L, const void *p, size_t n, void *ud) {
  (void)L;
  dbuf *d = ud;
  if (d->n + n > d->cap) {
    size_t cap = d->cap ? d->cap : 256;
    while (cap < d->n + n) cap *= 2;
    char *q = realloc(d->p, cap);
    if (q == NULL) die("out of memory");
    d->p = q;
    d->cap = cap;
  }
  memcpy(d->p + d->n, p, n);
  d->n += n;
  return 0;
}

/* The bytecode of the Lua function at idx (d->p is malloc'd). */
static void dump(lua_State *L, int idx, int strip, dbuf *d) {
  memset(d, 0, sizeof *d);
  lua_pushvalue(L, idx);
  if (lua_dump(L, dbuf_writer, d, strip) != 0) die("lua_dump failed");
  lua_pop(L, 1);
}

static int nups(lua_State *L, int idx) {
  lua_Debug ar;
  lua_pushvalue(L, idx);
  lua_getinfo(L, ">u", &ar);
  return ar.nups;
}

static int is_env(const char *name) {
  return name != NULL && strcmp(name, "_ENV") == 0;
}

/* ---------------------------------------------------------------------- */
/* the machine */

enum {
  OP_NIL, OP_BOOL, OP_INT, OP_FLOAT, OP_SSTR, OP_LSTR, OP_TABLE, OP_SETKEY,
  OP_SETIDX, OP_ALIAS, OP_SETMETA, OP_METAFIELD, OP_FUNC, OP_SETUP, OP_JOIN,
  OP_REFUSED, OP_LIB, OP_GC, OP_POP, OP_DUP, OP_BOX, OP_HANDLE, OP_OPENUP,
  OP_FAIL, OP_MODULE, NOPS
};

/* copy phases, for OP_FAIL */
enum { PH_NONE, PH_ENCODE_A, PH_DECODE_B, PH_ENCODE_B, PH_DECODE_C, NPHASES };

typedef struct fz {
  input in;
  int nroots;      /* in: how many values to copy; out: how many there are */
  int env_altered; /* an _ENV upvalue was set or joined: calls may differ */
  int env_mixed;   /* an _ENV upvalue was joined with a non-_ENV one */
  int nocall;      /* a value the harness must not call is in play */
  unsigned serial;
  int fail_phase;  /* OP_FAIL: in this phase (PH_*) ... */
  int fail_engine; /* ... the engine's allocator (else the state's) ... */
  long fail_after; /* ... fails after this many allocations */
  int recv_mods;   /* OP_MODULE: the receivers' modules (setup_receiver) */
  int cmods;       /* OP_MODULE: A's fz.cmod (bit 0) and its twin named
                      with a zero byte (bit 1) */
} fz;

/* build_k's fixed slots; the machine's stack is above S_BASE */
enum { S_FZ = 1, S_TABS, S_FUNS, S_OBJS, S_ANCHOR, S_BASE = S_ANCHOR };

static int depth(lua_State *L) { return lua_gettop(L) - S_BASE; }

/* Makes room for one more value on the machine's stack. */
static void room(lua_State *L) {
  if (depth(L) >= MAX_STACK) lua_remove(L, S_BASE + 1);
}

/* Appends the value on top to the list at slot (not popped). */
static void add(lua_State *L, int slot) {
  lua_pushvalue(L, -1);
  lua_rawseti(L, slot, (lua_Integer)lua_rawlen(L, slot) + 1);
}

/* Pushes list[k % #list + 1]; false (nothing pushed) if the list is empty. */
static int pick(lua_State *L, int slot, unsigned k) {
  lua_Unsigned n = lua_rawlen(L, slot);
  if (n == 0) return 0;
  lua_rawgeti(L, slot, (lua_Integer)(k % n) + 1);
  return 1;
}

static void push_refused(lua_State *L, input *in) {
  switch (get(in) % 7) {
    case 0: lua_newthread(L); break;
    case 1: lua_pushlightuserdata(L, (void *)(uintptr_t)(get(in) + 1)); break;
    case 2: push_path(L, "io.stdout"); break;
    case 3: lua_newuserdatauv(L, get(in) % 16, (int)(get(in) % 2)); break;
    case 4: lua_pushcfunction(L, stray_cfunction); break;
    case 5:
      lua_pushinteger(L, 1);
      lua_pushcclosure(L, stray_cfunction, 1);
      break;
    default:
      lua_newuserdatauv(L, 4, 0);
      luaL_setmetatable(L, OTHER_MT);
  }
}

/* Pushes a key of kind k (from the input); may push nil or NaN (the caller
   checks).  Kinds 6 and 7 take an existing value. */
static void push_key(lua_State *L, fz *f, unsigned k, int below,
                     int *consumed) {
  input *in = &f->in;
  *consumed = 0;
  switch (k % 8) {
    case 0: lua_pushinteger(L, (lua_Integer)(get(in) % 20) - 5); break;
    case 1: push_int(L, in); break;
    case 2: push_float(L, in); break;
    case 3: lua_pushboolean(L, (int)(get(in) & 1)); break;
    case 4: push_short(L, in); break;
    case 5: push_long(L, in); break;
    case 6: /* the value under the top of the machine's stack (below the
               table just picked) */
      if (below) {
        lua_pushvalue(L, -3);
        *consumed = 1;
      } else {
        lua_pushnil(L);
      }
      break;
    default:
      if (!pick(L, S_OBJS, get(in))) lua_pushnil(L);
  }
}

/* Whether the key on top can be stored and compared: not nil or NaN, not a
   host userdata (no identity across a copy) nor a C closure (found by
   name, a different closure in each state). */
static int usable_key(lua_State *L) {
  switch (lua_type(L, -1)) {
    case LUA_TNIL: return 0;
    case LUA_TNUMBER: {
      lua_Number d = lua_tonumber(L, -1);
      return lua_isinteger(L, -1) || d == d;
    }
    case LUA_TUSERDATA: return luaL_testudata(L, -1, BOX_MT) == NULL;
    case LUA_TFUNCTION:
      if (lua_iscfunction(L, -1) && lua_getupvalue(L, -1, 1) != NULL) {
        lua_pop(L, 1);
        return 0;
      }
      return 1;
    default: return 1;
  }
}

static void load_snippet(lua_State *L, fz *f, unsigned s, unsigned fl) {
  char name[32];
  if (fl & 1)
    snprintf(name, sizeof name, "=s%u.%u", s, f->serial++);
  else
    snprintf(name, sizeof name, "=s%u", s);
  const char *src = snippets[s];
  if (luaL_loadbufferx(L, src, strlen(src), name, "t") != LUA_OK)
    lua_error(L);
  if (fl & 2) { /* stripped: no upvalue names, no lines */
    dbuf d;
    dump(L, -1, 1, &d);
    lua_pop(L, 1);
    int st = luaL_loadbufferx(L, d.p, d.n, name, "b");
    free(d.p);
    if (st != LUA_OK) lua_error(L);
  }
  if (s != SNIP_CHUNK) {
    arm(L);
    lua_call(L, 0, 1);
  }
}

static void op_openup(lua_State *L, fz *f) {
  lua_State *co = lua_newthread(L);
  add(L, S_ANCHOR);
  lua_pop(L, 1);
  char name[32];
  snprintf(name, sizeof name, "=open.%u", f->serial++);
  if (luaL_loadbufferx(co, open_snippet, strlen(open_snippet), name, "t") !=
      LUA_OK)
    die("open snippet: %s", lua_tostring(co, -1));
  int nres = 0;
  arm(co);
  if (lua_resume(co, L, 0, &nres) != LUA_YIELD || nres != 1)
    die("open snippet did not yield a function");
  lua_xmove(co, L, 1);
}

/* a copy out of a state (encode, below) */
typedef struct enc_job {
  int n;
  const char *root;
  int index;
  weft_buf *buf;
} enc_job;

static int encode(lua_State *L, int first, int n, enc_job *j);
static void op_module(lua_State *L, fz *f);

static void step(lua_State *L, fz *f, unsigned op) {
  input *in = &f->in;
  switch (op % NOPS) {
    case OP_NIL: room(L); lua_pushnil(L); break;
    case OP_BOOL: room(L); lua_pushboolean(L, (int)(get(in) & 1)); break;
    case OP_INT: room(L); push_int(L, in); break;
    case OP_FLOAT: room(L); push_float(L, in); break;
    case OP_SSTR: room(L); push_short(L, in); break;
    case OP_LSTR: room(L); push_long(L, in); break;
    case OP_TABLE: {
      int narr = (int)(get(in) % 9), nrec = (int)(get(in) % 9);
      room(L);
      lua_createtable(L, narr, nrec);
      add(L, S_TABS);
      add(L, S_OBJS);
      break;
    }
    case OP_SETKEY: { /* tabs[i][key] = pop() */
      unsigned ti = get(in), kind = get(in);
      int consumed, d = depth(L);
      if (d < 1 || !pick(L, S_TABS, ti)) break;
      int t = lua_gettop(L);
      push_key(L, f, kind, d >= 2, &consumed);
      if (!usable_key(L)) {
        lua_settop(L, t - 1);
        break;
      }
      lua_pushvalue(L, t - 1);
      lua_rawset(L, t);
      lua_settop(L, t - 2 - consumed);
      break;
    }
    case OP_SETIDX: { /* tabs[i][n] = pop() */
      unsigned ti = get(in), k = get(in);
      lua_Integer n =
          k & 0x80 ? special_ints[k % NINTS] : (lua_Integer)(k % 12) + 1;
      if (depth(L) < 1 || !pick(L, S_TABS, ti)) break;
      lua_pushvalue(L, -2);
      lua_rawseti(L, -2, n);
      lua_pop(L, 2);
      break;
    }
    case OP_ALIAS: {
      unsigned k = get(in);
      room(L);
      if (!pick(L, S_OBJS, k)) lua_pushnil(L);
      break;
    }
    case OP_SETMETA: {
      unsigned ti = get(in), mi = get(in);
      if (!pick(L, S_TABS, ti)) break;
      if (mi % 5 == 0)
        lua_pushnil(L);
      else
        pick(L, S_TABS, mi);
      lua_setmetatable(L, -2);
      lua_pop(L, 1);
      break;
    }
    case OP_METAFIELD: { /* tabs[i].__name = pop() (or a mode) */
      unsigned ti = get(in), ni = get(in);
      const char *name = tm_names[ni % NTM];
      int mode = strcmp(name, "__mode") == 0;
      unsigned mi = mode ? get(in) : 0;
      if ((!mode && depth(L) < 1) || !pick(L, S_TABS, ti)) break;
      lua_pushstring(L, name);
      if (mode)
        lua_pushstring(L, modes[mi % 3]);
      else
        lua_pushvalue(L, -3);
      lua_rawset(L, -3);
      lua_pop(L, mode ? 1 : 2);
      break;
    }
    case OP_FUNC: {
      unsigned s = get(in) % NSNIP, fl = get(in);
      room(L);
      load_snippet(L, f, s, fl);
      add(L, S_FUNS);
      add(L, S_OBJS);
      break;
    }
    case OP_SETUP: { /* debug.setupvalue(funs[i], n, pop()) */
      unsigned fi = get(in), ui = get(in);
      if (depth(L) < 1 || !pick(L, S_FUNS, fi)) break;
      int fn = lua_gettop(L), nu = nups(L, fn);
      if (nu == 0) {
        lua_pop(L, 1);
        break;
      }
      int i = (int)(ui % (unsigned)nu) + 1;
      if (is_env(lua_getupvalue(L, fn, i))) f->env_altered = 1;
      lua_pop(L, 1);
      lua_pushvalue(L, fn - 1);
      lua_setupvalue(L, fn, i);
      lua_settop(L, fn - 2);
      break;
    }
    case OP_JOIN: { /* debug.upvaluejoin(funs[a], i, funs[b], j) */
      unsigned a = get(in), ai = get(in), b = get(in), bi = get(in);
      if (!pick(L, S_FUNS, a)) break;
      pick(L, S_FUNS, b);
      int f1 = lua_gettop(L) - 1, f2 = f1 + 1;
      int n1 = nups(L, f1), n2 = nups(L, f2);
      if (n1 > 0 && n2 > 0) {
        int i = (int)(ai % (unsigned)n1) + 1, j = (int)(bi % (unsigned)n2) + 1;
        int e1 = is_env(lua_getupvalue(L, f1, i));
        int e2 = is_env(lua_getupvalue(L, f2, j));
        lua_pop(L, 2);
        if (e1 != e2) f->env_mixed = f->env_altered = 1;
        lua_upvaluejoin(L, f1, i, f2, j);
      }
      lua_pop(L, 2);
      break;
    }
    case OP_REFUSED:
      room(L);
      push_refused(L, in);
      add(L, S_ANCHOR);
      break;
    case OP_LIB: {
      const struct lib *l = &libs[get(in) % NLIBS];
      room(L);
      switch (l->kind) {
        case 'm':
          lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
          lua_getfield(L, -1, l->path);
          lua_remove(L, -2);
          break;
        case 'g': lua_pushglobaltable(L); break;
        case 's':
          lua_pushliteral(L, "");
          lua_getmetatable(L, -1);
          lua_remove(L, -2);
          break;
        case 'l': lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE); break;
        default:
          if (l->kind == 'r') f->nocall = 1;
          push_path(L, l->path);
      }
      break;
    }
    case OP_GC:
      switch (get(in) % 4) {
        case 0: lua_gc(L, LUA_GCCOLLECT); break;
        case 1: lua_gc(L, LUA_GCSTEP, 0); break;
        case 2: lua_gc(L, LUA_GCSTEP, 64); break;
        default: set_gc(L, get(in));
      }
      break;
    case OP_POP:
      if (depth(L) > 0) lua_pop(L, 1);
      break;
    case OP_DUP: {
      unsigned k = get(in);
      int d = depth(L);
      if (d == 0) break;
      lua_pushvalue(L, lua_gettop(L) - (int)(k % (unsigned)d));
      room(L); /* may drop the bottom value, not the copy */
      break;
    }
    case OP_BOX: {
      unsigned char b[MAX_BOX];
      size_t len = get(in) % (MAX_BOX + 1);
      for (size_t i = 0; i < len; i++) b[i] = (unsigned char)get(in);
      room(L);
      push_box(L, b, len);
      add(L, S_ANCHOR);
      break;
    }
    case OP_HANDLE: {
      unsigned k = get(in) % 3;
      room(L);
      lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
      lua_getfield(L, -1, "weft.core");
      lua_remove(L, -2);
      if (k == 0) {
        lua_getfield(L, -1, "background");
        lua_call(L, 0, 1);
      } else {
        lua_getfield(L, -1, "with_cancel");
        lua_getfield(L, -2, "background");
        lua_call(L, 0, 1);
        lua_call(L, 1, 2); /* core ctx cancel */
        /* anchor both: a handle collected in the middle of a copy would
           free its object and move the engine's memory under the check */
        add(L, S_ANCHOR);
        lua_pushvalue(L, -2);
        add(L, S_ANCHOR);
        lua_pop(L, 1);
        if (k == 1) lua_pop(L, 1);
        else lua_remove(L, -2);
      }
      lua_remove(L, -2);
      add(L, S_ANCHOR);
      break;
    }
    case OP_OPENUP:
      room(L);
      op_openup(L, f);
      add(L, S_FUNS);
      add(L, S_OBJS);
      break;
    case OP_FAIL: {
      unsigned ph = get(in), lo = get(in), hi = get(in);
      f->fail_phase = (int)((ph & 15) % NPHASES);
      f->fail_engine = (ph >> 4) & 1;
      f->fail_after = (long)(lo | (hi % 8) << 8);
      break;
    }
    default: op_module(L, f);
  }
}

/*
** The machine's own modules: 0 package.loaded["fz.mod"] = a table of the
** graph (set or replaced: replacing keeps the count of package.loaded);
** 1 removes it; 2 fz.cmod = {f = stray_cfunction} (pushed); 3 fz.fmod =
** module_cfunction (pushed); 4 encodes the top value and drops the buffer
** (a copy between two changes of package.loaded); 5-7 what the receivers
** have (setup_receiver's mode).  With 2, an odd second byte names the
** module "fz.c\0mod" (a zero byte in a module's name).
*/
static void op_module(lua_State *L, fz *f) {
  unsigned k = get(&f->in), ti = get(&f->in);
  switch (k % 8) {
    case 0:
      if (pick(L, S_TABS, ti)) set_loaded(L, "fz.mod");
      break;
    case 1:
      lua_pushnil(L);
      set_loaded(L, "fz.mod");
      break;
    case 2: {
      int nul = ti & 1;
      room(L);
      push_cmod(L, nul, stray_cfunction);
      add(L, S_ANCHOR);
      f->cmods |= 1 << nul;
      break;
    }
    case 3:
      room(L);
      lua_pushcfunction(L, module_cfunction);
      lua_pushvalue(L, -1);
      set_loaded(L, "fz.fmod");
      break;
    case 4: {
      if (depth(L) < 1) break;
      enc_job j = {1, "warm", 0, NULL};
      if (encode(L, lua_gettop(L), 1, &j) == LUA_OK)
        weft_buf_release(j.buf);
      else
        lua_pop(L, 1);
      break;
    }
    default: f->recv_mods = (int)(k % 8) - 5;
  }
}

/* Under lua_pcall: runs the program; returns the values to copy. */
static int build_k(lua_State *L) {
  fz *f = lua_touserdata(L, S_FZ);
  luaL_checkstack(L, MAX_STACK + 40, "fuzz");
  static const char *const lists[] = {"fz.tabs", "fz.funs", "fz.objs",
                                      "fz.anchor"};
  for (int i = 0; i < 4; i++) { /* anchored in the registry for good */
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, lists[i]);
  }
  for (int n = 0; n < MAX_OPS && f->in.i < f->in.n; n++) {
    step(L, f, get(&f->in));
    if (lua_gettop(L) > S_BASE + MAX_STACK) die("machine stack overflow");
  }
  int d = depth(L);
  if (f->nroots > d) f->nroots = d;
  return f->nroots;
}

/* ---------------------------------------------------------------------- */
/* what the encoder must refuse: a walk over what it follows */

/* what the encoder refuses; what a decode fails on (W_CUSTOM: the
   machine's modules and their C functions, unless the receiver has them as
   the sender (mode 1); W_CUSTOM0: the table fz.cmod, which receivers of
   mode 2 have too; W_MODFN: a C function only the table the program made
   fz.mod exports (no receiver's fz.mod has it); W_MAYBE: one that fz.mod
   and another module of the machine's export (the encoder names it after
   whichever it meets first); W_BOX_IN: copy_in fails) */
enum { W_CANNOT = 1, W_BOX_REFUSED = 2, W_BOX_TWICE = 4, W_CUSTOM = 8,
       W_CUSTOM0 = 16, W_BOX_IN = 32, W_MODFN = 64, W_MAYBE = 128,
       W_ENCODE = W_CANNOT | W_BOX_REFUSED | W_BOX_TWICE };

typedef struct walk {
  /* 1: follow every upvalue (what the encoder may meet); 0: skip upvalues
     named _ENV and those joined with one (what it must meet: it writes an
     upvalue shared with an _ENV it met first as a join, whatever its name) */
  int follow_env;
  int flags;
} walk;

/* slots of walk_k */
enum { WK_LIB = 1, WK_SEEN, WK_TODO, WK_G, WK_ENVS };

/* Pushes the set of upvalue ids of the _ENV upvalues of every function the
   machine made. */
static void push_env_ids(lua_State *L) {
  lua_newtable(L);
  lua_getfield(L, LUA_REGISTRYINDEX, "fz.funs");
  for (lua_Integer k = 1; lua_rawgeti(L, -1, k) == LUA_TFUNCTION; k++) {
    int fn = lua_gettop(L), nu = nups(L, fn);
    for (int i = 1; i <= nu; i++) {
      if (is_env(lua_getupvalue(L, fn, i))) {
        lua_pushboolean(L, 1);
        lua_rawsetp(L, fn - 2, lua_upvalueid(L, fn, i));
      }
      lua_settop(L, fn);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
}

/* set[value at v] |= bits */
static void set_bits(lua_State *L, int set, int v, lua_Integer bits) {
  lua_pushvalue(L, v);
  lua_pushvalue(L, v);
  lua_Integer old =
      lua_rawget(L, set) == LUA_TNUMBER ? lua_tointeger(L, -1) : 0;
  lua_pop(L, 1);
  lua_pushinteger(L, old | bits);
  lua_rawset(L, set);
}

/* what push_libset records: module tables (standard, fz.mod, fz.cmod and
   its twin) and who exports a C function (bits) */
enum { L_STDMOD = 1, L_MOD = 2, L_CMOD = 4, L_FN = 8, L_FN_STD = 16,
       L_FN_OWN = 32, L_FN_MOD = 64 };

/* Pushes a set of what package.loaded reaches, as the encoder's index
   sees it: module tables, and for each C function (a module, or a
   string-keyed field of one) which modules export it. */
static void push_libset(lua_State *L) {
  lua_newtable(L);
  int set = lua_gettop(L);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushnil(L);
  while (lua_next(L, set + 1)) { /* set loaded name module */
    int mod = set + 3;
    if (lua_type(L, mod - 1) == LUA_TSTRING) {
      size_t len;
      const char *name = lua_tolstring(L, mod - 1, &len);
      int own = len >= 3 && memcmp(name, "fz.", 3) == 0;
      int is_mod = own && len == 6 && memcmp(name, "fz.mod", 6) == 0;
      lua_Integer fn = L_FN | (!own ? L_FN_STD : is_mod ? L_FN_MOD : L_FN_OWN);
      if (lua_iscfunction(L, mod)) {
        set_bits(L, set, mod, fn);
      } else if (lua_istable(L, mod)) {
        set_bits(L, set, mod, !own ? L_STDMOD : is_mod ? L_MOD : L_CMOD);
        lua_pushnil(L);
        while (lua_next(L, mod)) {
          if (lua_type(L, -2) == LUA_TSTRING && lua_iscfunction(L, -1))
            set_bits(L, set, lua_gettop(L), fn);
          lua_pop(L, 1);
        }
      }
    }
    lua_settop(L, mod - 1);
  }
  lua_pop(L, 1);
}

static lua_Integer setget(lua_State *L, int set, int v) {
  lua_pushvalue(L, v);
  lua_rawget(L, set);
  lua_Integer r = lua_tointeger(L, -1);
  lua_pop(L, 1);
  return r;
}

/* Classifies the value at v; tables and Lua functions not seen yet go on
   the to-do list. */
static void visit(lua_State *L, walk *w, int v) {
  v = lua_absindex(L, v);
  switch (lua_type(L, v)) {
    case LUA_TTABLE: {
      if (lua_rawequal(L, v, WK_G)) return;
      lua_Integer k = setget(L, WK_LIB, v);
      if (k & L_STDMOD) return;
      if (k & L_MOD) { w->flags |= W_CUSTOM; return; }
      if (k & L_CMOD) { w->flags |= W_CUSTOM0; return; }
      break;
    }
    case LUA_TFUNCTION:
      if (lua_iscfunction(L, v)) {
        lua_Integer k = setget(L, WK_LIB, v);
        if (!(k & L_FN))
          w->flags |= W_CANNOT;
        else if (k & L_FN_STD)
          ; /* the standard libraries are indexed first */
        else if ((k & L_FN_MOD) && (k & L_FN_OWN))
          w->flags |= W_MAYBE;
        else if (k & L_FN_MOD)
          w->flags |= W_MODFN;
        else
          w->flags |= W_CUSTOM;
        return;
      }
      break;
    case LUA_TUSERDATA: {
      if (weft_to_object(L, v) != NULL) return;
      const box *b = luaL_testudata(L, v, BOX_MT);
      if (b == NULL)
        w->flags |= W_CANNOT;
      else if (b->len > 0 && b->bytes[0] == 0xFF)
        w->flags |= W_BOX_REFUSED;
      else if (b->len > 0 && b->bytes[0] == 0xFE)
        w->flags |= W_BOX_TWICE;
      else if (b->len > 0 && b->bytes[0] >= 0xFB && b->bytes[0] <= 0xFD)
        w->flags |= W_BOX_IN;
      return;
    }
    case LUA_TTHREAD:
    case LUA_TLIGHTUSERDATA: w->flags |= W_CANNOT; return;
    default: return;
  }
  if (setget(L, WK_SEEN, v)) return;
  lua_pushvalue(L, v);
  lua_pushinteger(L, 1);
  lua_rawset(L, WK_SEEN);
  lua_pushvalue(L, v);
  lua_rawseti(L, WK_TODO, (lua_Integer)lua_rawlen(L, WK_TODO) + 1);
}

/* Under lua_pcall: 1 = the walk, 2.. = the values. */
static int walk_k(lua_State *L) {
  walk *w = lua_touserdata(L, 1);
  int n = lua_gettop(L) - 1;
  lua_rotate(L, 1, -1); /* the values, then the walk */
  lua_pop(L, 1);
  luaL_checkstack(L, 16, "fuzz");
  push_libset(L);
  lua_newtable(L);
  lua_newtable(L);
  lua_pushglobaltable(L);
  push_env_ids(L);
  lua_rotate(L, 1, 5); /* WK_LIB, WK_SEEN, WK_TODO, WK_G, WK_ENVS, values */
  for (int i = 0; i < n; i++) visit(L, w, WK_ENVS + 1 + i);
  lua_Integer ntodo;
  while ((ntodo = (lua_Integer)lua_rawlen(L, WK_TODO)) > 0) {
    lua_rawgeti(L, WK_TODO, ntodo);
    lua_pushnil(L);
    lua_rawseti(L, WK_TODO, ntodo);
    int o = lua_gettop(L);
    if (lua_istable(L, o)) {
      lua_pushnil(L);
      while (lua_next(L, o)) {
        visit(L, w, -2);
        visit(L, w, -1);
        lua_pop(L, 1);
      }
      if (lua_getmetatable(L, o)) visit(L, w, -1);
    } else {
      int nu = nups(L, o);
      for (int i = 1; i <= nu; i++) {
        const char *name = lua_getupvalue(L, o, i);
        int skip = 0;
        if (!w->follow_env) {
          skip = is_env(name) ||
                 lua_rawgetp(L, WK_ENVS, lua_upvalueid(L, o, i)) != LUA_TNIL;
          if (!is_env(name)) lua_pop(L, 1);
        }
        if (!skip) visit(L, w, -1);
        lua_pop(L, 1);
      }
    }
    lua_settop(L, o - 1);
  }
  return 0;
}

static int walk_values(lua_State *L, int first, int n, int follow_env) {
  walk w = {follow_env, 0};
  lua_pushcfunction(L, walk_k);
  lua_pushlightuserdata(L, &w);
  for (int i = 0; i < n; i++) lua_pushvalue(L, first + i);
  if (lua_pcall(L, n + 1, 0, 0) != LUA_OK)
    die("walk: %s", lua_tostring(L, -1));
  return w.flags;
}

/* ---------------------------------------------------------------------- */
/* encode and decode under protected calls */



/* Under lua_pcall: 1 = the job, 2.. = the values. */
static int enc_k(lua_State *L) {
  enc_job *j = lua_touserdata(L, 1);
  int top = lua_gettop(L);
  j->buf = weft_buf_encode(L, 2, j->n, j->root, j->index != 0);
  if (lua_gettop(L) != top)
    die("encode changed the stack: %d -> %d", top, lua_gettop(L));
  return 0;
}

/* Encodes n values at first; returns LUA_OK (j->buf set) or the status
   with the message on top. */
static int encode(lua_State *L, int first, int n, enc_job *j) {
  j->n = n;
  j->buf = NULL;
  lua_pushcfunction(L, enc_k);
  lua_pushlightuserdata(L, j);
  for (int i = 0; i < n; i++) lua_pushvalue(L, first + i);
  return lua_pcall(L, n + 1, 0, 0);
}

typedef struct dec_job {
  weft_buf *buf;
  int release; /* weft_buf_decode_release (the caller retained buf) */
} dec_job;

static int dec_k(lua_State *L) {
  dec_job *j = lua_touserdata(L, 1);
  lua_pop(L, 1);
  int top = lua_gettop(L), count = weft_buf_count(j->buf);
  int m = j->release ? weft_buf_decode_release(L, j->buf)
                     : weft_buf_decode(L, j->buf);
  if (m != count || lua_gettop(L) != top + m)
    die("decode pushed %d values for %d (returned %d)", lua_gettop(L) - top,
        count, m);
  return m;
}

/* Decodes b onto L's stack (n values expected); returns the status (the
   message on top when it is not LUA_OK). */
static int decode(lua_State *L, weft_buf *b, int release, int n) {
  dec_job j = {b, release};
  int top = lua_gettop(L);
  if (release) weft_buf_retain(b);
  lua_pushcfunction(L, dec_k);
  lua_pushlightuserdata(L, &j);
  int st = lua_pcall(L, 1, LUA_MULTRET, 0);
  if (st == LUA_OK && lua_gettop(L) - top != n)
    die("decode gave %d values for %d", lua_gettop(L) - top, n);
  return st;
}

typedef struct arr_job {
  weft_buf *buf;
  lua_Integer offset, result;
} arr_job;

/* Under lua_pcall: pushes a table filled by weft_buf_decode_array_into
   (with a sentinel at [offset] when offset > 0). */
static int arr_k(lua_State *L) {
  arr_job *j = lua_touserdata(L, 1);
  lua_newtable(L);
  if (j->offset > 0) {
    lua_pushliteral(L, "sentinel");
    lua_rawseti(L, -2, j->offset);
  }
  int top = lua_gettop(L);
  j->result = weft_buf_decode_array_into(L, j->buf, -1, j->offset);
  if (lua_gettop(L) != top) die("decode_array_into changed the stack");
  return 1;
}

/* ---------------------------------------------------------------------- */
/* structural comparison of original values (in X) with their copies (in
   Y; X == Y is allowed).  Tables and functions are paired by a bijection:
   X registry "cmp.x.fwd" maps an original to an id, Y's "cmp.y.bwd" a copy
   to the same id; "cmp.*.obj" map ids back.  Pairs to look inside go
   through a work list ("cmp.*.w"); entries keyed by tables or functions not
   paired yet wait in "cmp.*.dk".  Upvalues are paired by their ids
   ("cmp.*.upv"). */

typedef struct cmp {
  lua_State *X, *Y;
  const char *what; /* "A->B", for messages */
  int calls;        /* call functions and compare their results */
  int env_mixed;    /* any upvalue may hold the receiver's globals */
  lua_Integer nextid, whead, wtail, ndefer;
  int ncalls;
} cmp;

static const char *const cmp_keys[] = {
    "cmp.x.fwd", "cmp.x.obj", "cmp.x.upv", "cmp.x.w", "cmp.x.dk",
    "cmp.y.bwd", "cmp.y.obj", "cmp.y.upv", "cmp.y.w", "cmp.y.dk"};

static void reg(lua_State *L, const char *k) {
  lua_getfield(L, LUA_REGISTRYINDEX, k);
}

static void fail(cmp *c, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 2, 3)));

static void fail(cmp *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "value_fuzz: %s: ", c->what);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  abort();
}

static lua_Integer map_get(lua_State *L, const char *map, int idx) {
  idx = lua_absindex(L, idx);
  reg(L, map);
  lua_pushvalue(L, idx);
  lua_rawget(L, -2);
  lua_Integer id = lua_tointeger(L, -1);
  lua_pop(L, 2);
  return id;
}

static void map_set(lua_State *L, const char *map, const char *objs, int idx,
                    lua_Integer id) {
  idx = lua_absindex(L, idx);
  reg(L, map);
  lua_pushvalue(L, idx);
  lua_pushinteger(L, id);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  if (objs == NULL) return;
  reg(L, objs);
  lua_pushvalue(L, idx);
  lua_rawseti(L, -2, id);
  lua_pop(L, 1);
}

static int is_globals(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  lua_pushglobaltable(L);
  int r = lua_rawequal(L, idx, -1);
  lua_pop(L, 1);
  return r;
}

/* A function the decoder may load once for several originals: no upvalue,
   or one that is named _ENV or holds the globals. */
static int cacheable(lua_State *L, int idx) {
  if (lua_iscfunction(L, idx)) return 0;
  int nu = nups(L, idx);
  if (nu == 0) return 1;
  if (nu > 1) return 0;
  const char *name = lua_getupvalue(L, idx, 1);
  int r = is_env(name) || is_globals(L, -1);
  lua_pop(L, 1);
  return r;
}

/* Whether the functions at a in A and b in B have the same bytecode. */
static int same_dump(lua_State *A, int a, lua_State *B, int b) {
  dbuf x, y;
  dump(A, a, 0, &x);
  dump(B, b, 0, &y);
  int r = x.n == y.n && memcmp(x.p, y.p, x.n) == 0;
  free(x.p);
  free(y.p);
  return r;
}

/* Original x may share the copy already paired with id's original: both
   cacheable with the same bytecode. */
static int collapse_ok(cmp *c, int xi, lua_Integer id) {
  lua_State *X = c->X;
  if (!lua_isfunction(X, xi) || !cacheable(X, xi)) return 0;
  reg(X, "cmp.x.obj");
  lua_rawgeti(X, -1, id);
  int o = lua_gettop(X);
  int r = lua_isfunction(X, o) && cacheable(X, o) && same_dump(X, xi, X, o);
  lua_pop(X, 2);
  return r;
}

static void work_push(cmp *c, int xi, int yi) {
  lua_Integer k = ++c->wtail;
  reg(c->X, "cmp.x.w");
  lua_pushvalue(c->X, xi);
  lua_rawseti(c->X, -2, k);
  lua_pop(c->X, 1);
  reg(c->Y, "cmp.y.w");
  lua_pushvalue(c->Y, yi);
  lua_rawseti(c->Y, -2, k);
  lua_pop(c->Y, 1);
}

/* Pairs the objects at xi and yi (same kind). */
static void pair(cmp *c, int xi, int yi) {
  lua_Integer ix = map_get(c->X, "cmp.x.fwd", xi);
  lua_Integer iy = map_get(c->Y, "cmp.y.bwd", yi);
  if (ix < 0) fail(c, "a module the receiver lacks was copied");
  if (ix != 0 && ix == iy) return;
  if (ix != 0)
    fail(c, "one original %s has two copies (ids %lld and %lld)",
         luaL_typename(c->X, xi), (long long)ix, (long long)iy);
  if (iy != 0) {
    if (collapse_ok(c, xi, iy)) {
      map_set(c->X, "cmp.x.fwd", NULL, xi, iy);
      return;
    }
    fail(c, "one copied %s stands for two originals (aliasing added)",
         luaL_typename(c->Y, yi));
  }
  lua_Integer id = ++c->nextid;
  map_set(c->X, "cmp.x.fwd", "cmp.x.obj", xi, id);
  map_set(c->Y, "cmp.y.bwd", "cmp.y.obj", yi, id);
  work_push(c, xi, yi);
}

/* Compares the original at xi with the copy at yi (absolute indices). */
static void compare_value(cmp *c, int xi, int yi, int result) {
  lua_State *X = c->X, *Y = c->Y;
  int tx = lua_type(X, xi), ty = lua_type(Y, yi);
  if (tx != ty)
    fail(c, "%s copied as %s", lua_typename(X, tx), lua_typename(Y, ty));
  switch (tx) {
    case LUA_TNIL: return;
    case LUA_TBOOLEAN:
      if (lua_toboolean(X, xi) != lua_toboolean(Y, yi))
        fail(c, "boolean differs");
      return;
    case LUA_TNUMBER:
      if (lua_isinteger(X, xi) != lua_isinteger(Y, yi))
        fail(c, "number subtype differs");
      if (lua_isinteger(X, xi)) {
        if (lua_tointeger(X, xi) != lua_tointeger(Y, yi))
          fail(c, "integer %lld copied as %lld",
               (long long)lua_tointeger(X, xi),
               (long long)lua_tointeger(Y, yi));
      } else {
        lua_Number a = lua_tonumber(X, xi), b = lua_tonumber(Y, yi);
        if (memcmp(&a, &b, sizeof a) != 0)
          fail(c, "float %a copied as %a", a, b);
      }
      return;
    case LUA_TSTRING: {
      size_t la, lb;
      const char *a = lua_tolstring(X, xi, &la), *b = lua_tolstring(Y, yi, &lb);
      if (la != lb || memcmp(a, b, la) != 0)
        fail(c, "string of %zu bytes copied as %zu different bytes", la, lb);
      return;
    }
    case LUA_TTABLE: pair(c, xi, yi); return;
    case LUA_TFUNCTION:
      if (lua_iscfunction(X, xi) != lua_iscfunction(Y, yi))
        fail(c, "C/Lua function kind differs");
      if (lua_iscfunction(X, xi)) {
        if (lua_tocfunction(X, xi) != lua_tocfunction(Y, yi))
          fail(c, "a C function copied as another");
        return;
      }
      pair(c, xi, yi);
      return;
    case LUA_TUSERDATA: {
      weft_object *ox = weft_to_object(X, xi), *oy = weft_to_object(Y, yi);
      if (ox != NULL || oy != NULL) {
        if (ox != oy) fail(c, "a handle copied as another object");
        return;
      }
      const box *bx = luaL_testudata(X, xi, BOX_MT);
      const box *by = luaL_testudata(Y, yi, BOX_MT);
      if (bx != NULL || by != NULL) {
        if (bx == NULL || by == NULL || bx->len != by->len ||
            (bx->len > 0 && memcmp(bx->bytes, by->bytes, bx->len) != 0))
          fail(c, "host userdata copied with other bytes");
        return;
      }
      if (!result) fail(c, "a refused userdata was copied");
      return;
    }
    case LUA_TLIGHTUSERDATA:
      if (!result) fail(c, "a light userdata was copied");
      if (lua_touserdata(X, xi) != lua_touserdata(Y, yi))
        fail(c, "light userdata differs");
      return;
    default: /* threads, in call results only */
      if (!result) fail(c, "a thread was copied");
  }
}

/* Pushes onto Y the copy of the original key at xi in X, if known. */
static int push_key_copy(cmp *c, int xi) {
  lua_State *X = c->X, *Y = c->Y;
  switch (lua_type(X, xi)) {
    case LUA_TBOOLEAN: lua_pushboolean(Y, lua_toboolean(X, xi)); return 1;
    case LUA_TNUMBER:
      if (lua_isinteger(X, xi))
        lua_pushinteger(Y, lua_tointeger(X, xi));
      else
        lua_pushnumber(Y, lua_tonumber(X, xi));
      return 1;
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(X, xi, &n);
      lua_pushlstring(Y, s, n);
      return 1;
    }
    case LUA_TFUNCTION:
      if (lua_iscfunction(X, xi)) { /* light C functions only (usable_key) */
        lua_pushcfunction(Y, lua_tocfunction(X, xi));
        return 1;
      }
      break;
    case LUA_TUSERDATA: {
      weft_object *o = weft_to_object(X, xi);
      if (o == NULL) fail(c, "a userdata key that is not a handle");
      weft_push_object(Y, o);
      return 1;
    }
    case LUA_TTABLE: break;
    default: fail(c, "a %s key was copied", luaL_typename(X, xi));
  }
  lua_Integer id = map_get(X, "cmp.x.fwd", xi);
  if (id == 0) return 0;
  if (id < 0) fail(c, "a module the receiver lacks was copied (a key)");
  reg(Y, "cmp.y.obj");
  lua_rawgeti(Y, -1, id);
  lua_remove(Y, -2);
  return 1;
}

static int collectable(lua_State *L, int idx) {
  int t = lua_type(L, idx);
  return t == LUA_TTABLE || t == LUA_TFUNCTION || t == LUA_TUSERDATA ||
         t == LUA_TTHREAD;
}

/* What a table may lose in its copy: 1 entries with collectable keys, 2
   with collectable values (weak modes), 4 entries keyed by cacheable
   functions (two of them may arrive as one key; then only the key is
   checked). */
enum { LOSE_KEYS = 1, LOSE_VALUES = 2, LOSE_FKEYS = 4 };

static int weakness(lua_State *L, int idx) {
  int w = 0, ncache = 0;
  idx = lua_absindex(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (lua_isfunction(L, -1) && cacheable(L, lua_gettop(L))) ncache++;
  }
  if (ncache >= 2) w |= LOSE_FKEYS;
  if (lua_getmetatable(L, idx)) {
    lua_pushliteral(L, "__mode");
    if (lua_rawget(L, -2) == LUA_TSTRING) {
      const char *m = lua_tostring(L, -1);
      if (strchr(m, 'k')) w |= LOSE_KEYS;
      if (strchr(m, 'v')) w |= LOSE_VALUES;
    }
    lua_pop(L, 2);
  }
  return w;
}

/* Compares entry (key at xk, value at xv) of original xt with copy yt. */
static void compare_entry(cmp *c, int xt, int xk, int xv, int yt, int weak) {
  lua_State *X = c->X, *Y = c->Y;
  int ty = lua_gettop(Y);
  if (!push_key_copy(c, xk)) { /* a table or function key not paired yet */
    lua_Integer k = ++c->ndefer;
    reg(X, "cmp.x.dk");
    lua_pushvalue(X, xt);
    lua_rawseti(X, -2, 3 * k - 2);
    lua_pushvalue(X, xk);
    lua_rawseti(X, -2, 3 * k - 1);
    lua_pushvalue(X, xv);
    lua_rawseti(X, -2, 3 * k);
    lua_pop(X, 1);
    reg(Y, "cmp.y.dk");
    lua_pushvalue(Y, yt);
    lua_rawseti(Y, -2, k);
    lua_settop(Y, ty);
    return;
  }
  lua_rawget(Y, yt);
  if (lua_isnil(Y, -1)) {
    if (!(((weak & LOSE_VALUES) && collectable(X, xv)) ||
          ((weak & LOSE_KEYS) && collectable(X, xk))))
      fail(c, "an entry (%s key) is missing in the copy", luaL_typename(X, xk));
  } else if (!((weak & LOSE_FKEYS) && lua_isfunction(X, xk) &&
               cacheable(X, xk))) {
    compare_value(c, xv, lua_gettop(Y), 0);
  }
  lua_settop(Y, ty);
}

static lua_Integer count_entries(lua_State *L, int t) {
  lua_Integer n = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    n++;
  }
  return n;
}

static void compare_table(cmp *c, int xt, int yt) {
  lua_State *X = c->X, *Y = c->Y;
  int weak = weakness(X, xt);
  lua_Integer nx = 0, ny = count_entries(Y, yt);
  lua_pushnil(X);
  while (lua_next(X, xt)) {
    int xk = lua_gettop(X) - 1;
    nx++;
    compare_entry(c, xt, xk, xk + 1, yt, weak);
    lua_settop(X, xk);
  }
  if (ny > nx || (ny < nx && !weak))
    fail(c, "a table of %lld entries copied with %lld", (long long)nx,
         (long long)ny);
  int tx = lua_gettop(X), ty = lua_gettop(Y);
  int hx = lua_getmetatable(X, xt), xm = lua_gettop(X);
  int hy = lua_getmetatable(Y, yt);
  if (hx != hy) fail(c, "metatable %s in the copy", hx ? "missing" : "added");
  if (hx) compare_value(c, xm, lua_gettop(Y), 0);
  lua_settop(Y, ty);
  lua_settop(X, tx);
}

static void compare_upvalue_ids(cmp *c, int xf, int yf, int i, int yglobals) {
  lua_State *X = c->X, *Y = c->Y;
  void *ux = lua_upvalueid(X, xf, i), *uy = lua_upvalueid(Y, yf, i);
  reg(X, "cmp.x.upv");
  lua_rawgetp(X, -1, ux);
  if (lua_isnil(X, -1)) {
    lua_pushlightuserdata(X, uy);
    lua_rawsetp(X, -3, ux);
  } else if (lua_touserdata(X, -1) != uy) {
    fail(c, "upvalue %d: shared in the original, not in the copy", i);
  }
  lua_pop(X, 2);
  reg(Y, "cmp.y.upv");
  lua_rawgetp(Y, -1, uy);
  if (lua_isnil(Y, -1)) {
    lua_pushlightuserdata(Y, ux);
    lua_rawsetp(Y, -3, uy);
  } else if (lua_touserdata(Y, -1) != ux && !yglobals) {
    fail(c, "upvalue %d: shared in the copy, not in the original", i);
  }
  lua_pop(Y, 2);
}

/* Calls the functions at xf and yf with 3 and compares what they do. */
static void compare_calls(cmp *c, int xf, int yf) {
  lua_State *X = c->X, *Y = c->Y;
  int tx = lua_gettop(X);
  c->ncalls++;
  lua_pushvalue(X, xf);
  lua_pushinteger(X, 3);
  arm(X);
  int sx = lua_pcall(X, 1, LUA_MULTRET, 0);
  int ty = lua_gettop(Y);
  lua_pushvalue(Y, yf);
  lua_pushinteger(Y, 3);
  arm(Y);
  int sy = lua_pcall(Y, 1, LUA_MULTRET, 0);
  arm(X);
  arm(Y);
  int nx = lua_gettop(X) - tx, ny = lua_gettop(Y) - ty;
  if (X == Y) nx = ty - tx; /* Y's results are above X's */
  if (sx != sy || nx != ny)
    fail(c, "a call gives status %d with %d results, its copy %d with %d%s%s",
         sx, nx, sy, ny, sx ? ": " : "", sx ? lua_tostring(X, tx + 1) : "");
  for (int i = 1; i <= nx; i++) compare_value(c, tx + i, ty + i, 1);
  lua_settop(Y, ty);
  lua_settop(X, tx);
}

static void compare_function(cmp *c, int xf, int yf) {
  lua_State *X = c->X, *Y = c->Y;
  if (!same_dump(X, xf, Y, yf)) fail(c, "a function copied with other bytecode");
  int nu = nups(X, xf);
  if (nups(Y, yf) != nu) fail(c, "upvalue count differs");
  for (int i = 1; i <= nu; i++) {
    int tx = lua_gettop(X), ty = lua_gettop(Y);
    const char *nx = lua_getupvalue(X, xf, i);
    const char *ny = lua_getupvalue(Y, yf, i);
    if (strcmp(nx, ny) != 0) fail(c, "upvalue %d named %s, copy %s", i, nx, ny);
    int yg = is_globals(Y, -1);
    compare_upvalue_ids(c, xf, yf, i, yg);
    /* _ENV arrives as the receiver's globals; when an _ENV upvalue was
       joined with another one, which of them wins depends on the order */
    if (is_env(nx) && !yg && !c->env_mixed)
      fail(c, "upvalue _ENV not bound to the receiver's globals");
    if (!(yg && (is_env(nx) || c->env_mixed)))
      compare_value(c, lua_gettop(X) - (X == Y), lua_gettop(Y), 0);
    lua_settop(Y, ty);
    lua_settop(X, tx);
  }
  if (c->calls) compare_calls(c, xf, yf);
}

/* Work list and waiting entries until nothing moves. */
static void drain(cmp *c) {
  lua_State *X = c->X, *Y = c->Y;
  for (;;) {
    while (c->whead < c->wtail) {
      lua_Integer k = ++c->whead;
      int tx = lua_gettop(X), ty = lua_gettop(Y);
      reg(X, "cmp.x.w");
      lua_rawgeti(X, -1, k);
      int xo = lua_gettop(X);
      reg(Y, "cmp.y.w");
      lua_rawgeti(Y, -1, k);
      int yo = lua_gettop(Y);
      if (lua_istable(X, xo))
        compare_table(c, xo, yo);
      else
        compare_function(c, xo, yo);
      lua_settop(Y, ty);
      lua_settop(X, tx);
    }
    /* waiting entries whose key is paired now; else, a table with one
       waiting entry and one unpaired object key in its copy: pair them */
    int moved = 0;
    for (int pass = 0; pass < 2 && !moved; pass++)
      for (lua_Integer k = 1; k <= c->ndefer; k++) {
        int tx = lua_gettop(X), ty = lua_gettop(Y);
        reg(X, "cmp.x.dk");
        int dk = lua_gettop(X);
        lua_rawgeti(X, dk, 3 * k - 2);
        if (lua_isnil(X, -1)) {
          lua_settop(X, tx);
          continue;
        }
        lua_rawgeti(X, dk, 3 * k - 1);
        lua_rawgeti(X, dk, 3 * k);
        int xt = dk + 1, xk = dk + 2, xv = dk + 3;
        reg(Y, "cmp.y.dk");
        lua_rawgeti(Y, -1, k);
        int yt = lua_gettop(Y);
        int done = 0;
        if (map_get(X, "cmp.x.fwd", xk) != 0) {
          done = 1;
        } else if (pass == 1) {
          /* unresolved entries of this table, unpaired object keys of yt */
          lua_Integer same = 0;
          for (lua_Integer j = 1; j <= c->ndefer; j++) {
            lua_rawgeti(X, dk, 3 * j - 2);
            if (lua_rawequal(X, -1, xt)) same++;
            lua_pop(X, 1);
          }
          int nfree = 0;
          lua_pushnil(Y); /* the one unpaired key, when there is one */
          int yk = lua_gettop(Y);
          lua_pushnil(Y);
          while (lua_next(Y, yt)) {
            lua_pop(Y, 1);
            int t = lua_type(Y, -1);
            if (t == lua_type(X, xk) &&
                (t == LUA_TTABLE ||
                 (t == LUA_TFUNCTION && !lua_iscfunction(Y, -1))) &&
                map_get(Y, "cmp.y.bwd", -1) == 0 && nfree++ == 0) {
              lua_pushvalue(Y, -1);
              lua_replace(Y, yk);
            }
          }
          if (same == 1 && nfree == 1) {
            compare_value(c, xk, yk, 0);
            done = 1;
          }
        }
        if (done) {
          int weak = weakness(X, xt);
          compare_entry(c, xt, xk, xv, yt, weak);
          lua_pushnil(X);
          lua_rawseti(X, dk, 3 * k - 2);
          moved = 1;
        }
        lua_settop(Y, ty);
        lua_settop(X, tx);
      }
    if (!moved) return;
  }
}

/*
** Compares n originals at xfirst in X with n copies at yfirst in Y.  GC is
** stopped in both meanwhile (no finalizer runs in a call, no weak entry
** goes away under the comparison).
*/
static void compare(lua_State *X, int xfirst, lua_State *Y, int yfirst, int n,
                    const char *what, const fz *f) {
  cmp c;
  memset(&c, 0, sizeof c);
  c.X = X;
  c.Y = Y;
  c.what = what;
  c.calls = !f->env_altered && !f->nocall;
  c.env_mixed = f->env_mixed;
  luaL_checkstack(X, 64, "fuzz");
  luaL_checkstack(Y, 64, "fuzz");
  lua_gc(X, LUA_GCSTOP);
  lua_gc(Y, LUA_GCSTOP);
  for (size_t i = 0; i < sizeof cmp_keys / sizeof cmp_keys[0]; i++) {
    lua_State *L = cmp_keys[i][4] == 'x' ? X : Y;
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, cmp_keys[i]);
  }
  /* the globals and every module pair with the receiver's */
  lua_pushglobaltable(X);
  int xg = lua_gettop(X);
  lua_pushglobaltable(Y);
  lua_Integer id = ++c.nextid;
  map_set(X, "cmp.x.fwd", "cmp.x.obj", xg, id);
  map_set(Y, "cmp.y.bwd", "cmp.y.obj", lua_gettop(Y), id);
  lua_pop(Y, 1);
  lua_settop(X, xg - 1);
  lua_getfield(X, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  int xl = lua_gettop(X);
  lua_pushnil(X);
  while (lua_next(X, xl)) {
    int xv = lua_gettop(X);
    if (lua_type(X, xv - 1) == LUA_TSTRING && lua_istable(X, xv) &&
        map_get(X, "cmp.x.fwd", xv) == 0) {
      size_t len;  /* the name may hold a zero byte: "fz.c\0mod" */
      const char *name = lua_tolstring(X, xv - 1, &len);
      lua_getfield(Y, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
      lua_pushlstring(Y, name, len);
      lua_rawget(Y, -2);
      if (lua_istable(Y, -1)) {
        id = ++c.nextid;
        map_set(X, "cmp.x.fwd", "cmp.x.obj", xv, id);
        map_set(Y, "cmp.y.bwd", "cmp.y.obj", lua_gettop(Y), id);
      } else { /* the copy must not reach it (it travels by name) */
        map_set(X, "cmp.x.fwd", NULL, xv, -1);
      }
      lua_pop(Y, 2);
    }
    lua_settop(X, xv - 1);
  }
  lua_settop(X, xl - 1);
  /* roots first: pair them all, then look inside */
  for (int i = 0; i < n; i++) compare_value(&c, xfirst + i, yfirst + i, 0);
  drain(&c);
  for (size_t i = 0; i < sizeof cmp_keys / sizeof cmp_keys[0]; i++) {
    lua_State *L = cmp_keys[i][4] == 'x' ? X : Y;
    lua_pushnil(L);
    lua_setfield(L, LUA_REGISTRYINDEX, cmp_keys[i]);
  }
  lua_gc(X, LUA_GCRESTART);
  lua_gc(Y, LUA_GCRESTART);
  TRACE("  %s: %d values, %lld objects paired, %lld keyed late, %d calls\n",
        what, n, (long long)c.nextid, (long long)c.ndefer, c.ncalls);
}

/* ---------------------------------------------------------------------- */
/* weft_buf_decode_array_into against the copy */

static int is_module(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  int r = 0;
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    if (lua_type(L, -2) == LUA_TSTRING && lua_rawequal(L, -1, idx)) r = 1;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return r;
}

static int is_scalar(lua_State *L, int idx) {
  int t = lua_type(L, idx);
  return t == LUA_TBOOLEAN || t == LUA_TNUMBER || t == LUA_TSTRING;
}

/* Same scalar (subtype and bits for numbers), or both nil. */
static int same_scalar(lua_State *L, int a, int b) {
  if (lua_type(L, a) != lua_type(L, b)) return 0;
  if (lua_type(L, a) != LUA_TNUMBER) return lua_rawequal(L, a, b);
  if (lua_isinteger(L, a) != lua_isinteger(L, b)) return 0;
  if (lua_isinteger(L, a)) return lua_tointeger(L, a) == lua_tointeger(L, b);
  lua_Number x = lua_tonumber(L, a), y = lua_tonumber(L, b);
  return memcmp(&x, &y, sizeof x) == 0;
}

/* Checks weft_buf_decode_array_into(b) in B: a plain array of scalars
   (original at A[1], copy at B[1]) is stored at [offset + 1 ..]; anything
   else is refused with -1, a sequence never. */
static void check_array(lua_State *A, lua_State *B, weft_buf *b,
                        lua_Integer offset) {
  arr_job j = {b, offset, 0};
  lua_pushcfunction(B, arr_k);
  lua_pushlightuserdata(B, &j);
  if (lua_pcall(B, 1, 1, 0) != LUA_OK)
    die("decode_array_into: %s", lua_tostring(B, -1));
  int t = lua_gettop(B);
  int plain = lua_istable(A, 1) && !is_globals(A, 1) && !is_module(A, 1) &&
              !lua_getmetatable(A, 1);
  lua_Integer count = 0, maxkey = 0;
  if (plain) {
    lua_pushnil(A);
    while (lua_next(A, 1)) {
      if (!lua_isinteger(A, -2) || lua_tointeger(A, -2) < 1 ||
          !is_scalar(A, -1))
        plain = 0;
      else if (lua_tointeger(A, -2) > maxkey)
        maxkey = lua_tointeger(A, -2);
      count++;
      lua_pop(A, 1);
    }
  }
  lua_Integer nt = count_entries(B, t) - (offset > 0);
  if (offset > 0) {
    lua_rawgeti(B, t, offset);
    size_t len;
    const char *s = lua_tolstring(B, -1, &len);
    if (s == NULL || len != 8 || memcmp(s, "sentinel", 8) != 0)
      die("decode_array_into overwrote [offset]");
    lua_pop(B, 1);
  }
  if (j.result == -1) {
    if (plain && maxkey == count)
      die("decode_array_into refused a sequence of %lld scalars",
          (long long)count);
    if (nt != 0) die("decode_array_into refused but stored %lld values",
                     (long long)nt);
  } else if (j.result >= 0) {
    if (!plain) die("decode_array_into took a value that is not a plain array");
    if (nt != count || maxkey > j.result)
      die("decode_array_into stored %lld values of %lld (n %lld)",
          (long long)nt, (long long)count, (long long)j.result);
    for (lua_Integer i = 1; i <= j.result; i++) {
      lua_rawgeti(B, t, offset + i);
      lua_rawgeti(B, 1, i);
      if (!same_scalar(B, -1, -2))
        die("decode_array_into: [%lld] differs", (long long)i);
      lua_pop(B, 2);
    }
  } else {
    die("decode_array_into returned %lld", (long long)j.result);
  }
  lua_settop(B, t - 1);
}

/* ---------------------------------------------------------------------- */
/* one input */

static void check_engine(weft_runtime *rt, long blocks, long bytes,
                         const char *when) {
  long nb, nn;
  weft_alloc_live(rt, &nb, &nn);
  if (nb != blocks || nn != bytes)
    die("engine memory %s: %ld blocks, %ld bytes (expected %ld, %ld)", when,
        nb, nn, blocks, bytes);
}

/* Arms the allocation failure the program asked for, if it is for phase
   ph (L's allocator is m). */
static void arm_fail(const fz *f, int ph, weft_runtime *rt, memctl *m) {
  if (f->fail_phase != ph) return;
  if (f->fail_engine)
    engine_mem(rt)->left = f->fail_after;
  else
    m->left = f->fail_after;
}

static void disarm(weft_runtime *rt, memctl *m) {
  engine_mem(rt)->left = -1;
  m->left = -1;
}

/* L still works: a full collection, then a table copied out and back. */
static void check_usable(lua_State *L, const char *what) {
  int top = lua_gettop(L);
  lua_gc(L, LUA_GCCOLLECT);
  lua_createtable(L, 1, 0);
  lua_pushinteger(L, 1);
  lua_rawseti(L, -2, 1);
  enc_job j = {0, "v", 0, NULL};
  if (encode(L, top + 1, 1, &j) != LUA_OK)
    die("%s: state unusable: %s", what, lua_tostring(L, -1));
  if (decode(L, j.buf, 0, 1) != LUA_OK)
    die("%s: state unusable: %s", what, lua_tostring(L, -1));
  weft_buf_release(j.buf);
  lua_settop(L, top);
}

/* A phase of L failed while allocations were failing: the message (on
   top; L's stack was at top before the phase) says so, and L works. */
static void check_oom(lua_State *L, int top, const char *phase) {
  const char *msg = lua_tostring(L, -1);
  if (lua_gettop(L) != top + 1)
    die("%s: stack unbalanced after running out of memory", phase);
  if (msg == NULL || strstr(msg, "not enough memory") == NULL)
    die("%s: unexpected error while allocations fail: %s", phase,
        msg != NULL ? msg : "(not a string)");
  TRACE("  %s: %s\n", phase, msg);
  lua_pop(L, 1);
  check_usable(L, phase);
}

/* Scalars encode to the same bytes wherever they are (b1 from A, b2 from
   the copies in B); a string without zeros as weft_buf_new_string makes
   it. */
static void check_scalars(weft_runtime *rt, lua_State *A, int n,
                          const weft_buf *b1, const weft_buf *b2) {
  for (int i = 1; i <= n; i++)
    if (!lua_isnil(A, i) && !lua_isboolean(A, i) && !lua_isnumber(A, i) &&
        lua_type(A, i) != LUA_TSTRING)
      return;
  if (!weft_buf_equal(b1, b1) || !weft_buf_equal(b1, b2))
    die("scalars encoded to other bytes in the receiver");
  if (n == 1 && lua_type(A, 1) == LUA_TSTRING) {
    size_t len;
    const char *str = lua_tolstring(A, 1, &len);
    if (strlen(str) != len) return;
    weft_buf *b = weft_buf_new_string(rt, str);
    if (b == NULL) die("weft_buf_new_string failed");
    int same = weft_buf_equal(b, b1) && weft_buf_count(b) == 1;
    weft_buf_release(b);
    if (!same) die("weft_buf_new_string differs from the encoder");
  }
}

/*
** Header (two bytes), then the program:
**   h0: bits 0-1 GC mode of A, 2-3 of B, 4-5 of A'; bit 6: A' is A itself;
**       bit 7: full collection in B after the decode
**   h1: bits 0-2 values to copy - 1; bit 3: paths "args[i]" (else "v");
**       bit 4: decode into B with weft_buf_decode_release (else into A');
**       bit 5: full collection in A' after the decode; bit 6: release the
**       first buffer before the second decode; bit 7: array offset 10
*/
static void run(weft_runtime *rt, const uint8_t *data, size_t size) {
  fz f;
  memset(&f, 0, sizeof f);
  f.in.p = data;
  f.in.n = size;
  unsigned h0 = get(&f.in), h1 = get(&f.in);
  f.nroots = (int)(h1 & 7) + 1;
  const char *root = h1 & 8 ? "args" : "v";
  int index = (h1 & 8) != 0;
  memctl mem[3]; /* the allocators of A, B and A' */
  lua_State *B = NULL, *C = NULL;
  weft_buf *b1 = NULL, *b2 = NULL;

  lua_State *A = new_state(rt, &mem[0]);
  set_gc(A, h0);
  lua_pushcfunction(A, build_k);
  lua_pushlightuserdata(A, &f);
  if (lua_pcall(A, 1, LUA_MULTRET, 0) != LUA_OK)
    die("build: %s", lua_tostring(A, -1));
  int n = lua_gettop(A);
  if (n != f.nroots) die("build left %d values for %d", n, f.nroots);

  int must = walk_values(A, 1, n, 0);
  int may = f.env_mixed ? walk_values(A, 1, n, 1) : must;
  TRACE("input: %zu bytes, %zu read; %d values; refuse %d/%d; env %d%d, "
        "nocall %d, fail %d%c%ld\n", size, f.in.i, n, must, may,
        f.env_altered, f.env_mixed, f.nocall, f.fail_phase,
        f.fail_engine ? 'e' : 'l', f.fail_after);
  long blocks, bytes;
  weft_alloc_live(rt, &blocks, &bytes);
  enc_job j = {0, root, index, NULL};
  arm_fail(&f, PH_ENCODE_A, rt, &mem[0]);
  int st = encode(A, 1, n, &j);
  disarm(rt, &mem[0]);
  if (st != LUA_OK) {
    const char *msg = lua_tostring(A, -1);
    if (f.fail_phase == PH_ENCODE_A && msg != NULL &&
        strstr(msg, "not enough memory") != NULL) {
      check_oom(A, n, "encoding in A");
    } else {
      if (lua_gettop(A) != n + 1) die("stack unbalanced by a refused encode");
      if (msg == NULL) die("encode raised a non-string error");
      if ((may & W_ENCODE) == 0)
        die("encode refused a copyable value: %s", msg);
      int ok = ((may & W_CANNOT) && strstr(msg, ": cannot copy ") != NULL &&
                strncmp(msg, root, strlen(root)) == 0) ||
               ((may & W_BOX_REFUSED) && strstr(msg, "fuzz.box refused")) ||
               ((may & W_BOX_TWICE) &&
                strstr(msg, "asked for more room twice"));
      if (!ok) die("unexpected encode error (flags %d): %s", may, msg);
      TRACE("  refused: %s\n", msg);
      lua_pop(A, 1);
      check_usable(A, "A after a refused encode");
    }
    check_engine(rt, blocks, bytes, "after a failed encode");
    goto done;
  }
  b1 = j.buf;
  if (must & W_ENCODE)
    die("encode copied a graph holding a refused value (%d)", must);
  if (lua_gettop(A) != n) die("stack unbalanced by an encode");
  if (weft_buf_count(b1) != n)
    die("buffer of %d values for %d", weft_buf_count(b1), n);

  B = new_state(rt, &mem[1]);
  set_gc(B, h0 >> 2);
  setup_receiver(B, f.recv_mods, f.cmods);
  int dec_must = (must & (W_BOX_IN | W_MODFN)) ||
                 ((must & W_CUSTOM) && f.recv_mods != 1) ||
                 ((must & W_CUSTOM0) && f.recv_mods == 0);
  arm_fail(&f, PH_DECODE_B, rt, &mem[1]);
  st = decode(B, b1, (h1 >> 4) & 1, n);
  disarm(rt, &mem[1]);
  if (st != LUA_OK) {
    const char *msg = lua_tostring(B, -1);
    if (msg == NULL) die("decode raised a non-string error");
    if (f.fail_phase == PH_DECODE_B && strstr(msg, "not enough memory")) {
      check_oom(B, 0, "decoding in B");
    } else {
      int ok = ((((may & W_CUSTOM) && f.recv_mods != 1) ||
                 ((may & W_CUSTOM0) && f.recv_mods == 0) ||
                 (may & (W_MODFN | W_MAYBE))) &&
                (strstr(msg, "cannot copy module 'fz.") ||
                 strstr(msg, "cannot copy C function fz."))) ||
               ((may & W_BOX_IN) &&
                (strstr(msg, "fuzz.box: copy_in must push exactly one value") ||
                 strstr(msg, "fuzz.box copy_in refused")));
      if (!ok) die("decode failed (flags %d, receiver %d): %s", may,
                   f.recv_mods, msg);
      if (lua_gettop(B) != 1) die("stack unbalanced by a failed decode");
      TRACE("  decode refused: %s\n", msg);
      lua_pop(B, 1);
      check_usable(B, "B after a failed decode");
    }
    goto done;
  }
  if (dec_must) die("decode succeeded without what it needs (%d)", must);
  if (h0 & 0x80) lua_gc(B, LUA_GCCOLLECT);
  compare(A, 1, B, 1, n, "A->B", &f);
  if (n >= 1) check_array(A, B, b1, h1 & 0x80 ? 10 : 0);

  j.buf = NULL;
  arm_fail(&f, PH_ENCODE_B, rt, &mem[1]);
  st = encode(B, 1, n, &j);
  disarm(rt, &mem[1]);
  if (st != LUA_OK) {
    const char *why = lua_tostring(B, -1);
    /* documented: a handle reached again through a finalizer (B's
       collector ran it, the copy resurrected by another finalizer) is
       released and refused */
    if (why != NULL && strstr(why, "(a released handle: its __gc ran)")) {
      TRACE("  B: a released handle refused\n");
      goto done;
    }
    if (f.fail_phase != PH_ENCODE_B)
      die("encoding the copy failed: %s", why);
    check_oom(B, n, "encoding in B");
    goto done;
  }
  b2 = j.buf;
  check_scalars(rt, A, n, b1, b2);
  if (h1 & 0x40) {
    weft_buf_release(b1);
    b1 = NULL;
  }
  C = h0 & 0x40 ? A : new_state(rt, &mem[2]);
  if (C != A) { /* (A has every module B's values name) */
    set_gc(C, h0 >> 4);
    setup_receiver(C, f.recv_mods, f.cmods);
  }
  int cfirst = lua_gettop(C) + 1;
  memctl *mc = C == A ? &mem[0] : &mem[2];
  arm_fail(&f, PH_DECODE_C, rt, mc);
  st = decode(C, b2, !((h1 >> 4) & 1), n);
  disarm(rt, mc);
  if (st != LUA_OK) {
    if (f.fail_phase != PH_DECODE_C)
      die("decode failed: %s", lua_tostring(C, -1));
    check_oom(C, cfirst - 1, "decoding in A'");
    goto done;
  }
  if (h1 & 0x20) lua_gc(C, LUA_GCCOLLECT);
  compare(A, 1, C, cfirst, n, C == A ? "A->B->A" : "A->B->A'", &f);

done:
  weft_buf_release(b2);
  weft_buf_release(b1);
  if (C != NULL && C != A) lua_close(C);
  if (B != NULL) lua_close(B);
  lua_close(A);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  weft_runtime *rt = runtime();
  long blocks, bytes;
  weft_alloc_live(rt, &blocks, &bytes);
  run(rt, data, size < INPUT_CAP ? size : INPUT_CAP);
  check_engine(rt, blocks, bytes, "after the states are closed");
  return 0;
}
