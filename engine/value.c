/*
** value.c: copying Lua values between states through a state-independent
** buffer (DESIGN.md, "Values crossing states").
**
** Owns: the buffer format, the encoder and the decoder.  Locking: none; a
** buffer is written by one thread and immutable afterwards (refs and the
** cycle collector's flag atomic).  A buffer's references to its handles'
** objects are inner ones (object.h); a release of a linked buffer with
** handles that is not the last offers them to the cycle collector
** (cycle.c), which may run in the releasing thread.
**
** Both directions are iterative (an explicit frame stack, objects anchored
** on the Lua stack), so 1e5-deep nesting costs no C stack.  The encoder
** keeps its bookkeeping (objects seen, upvalues seen) in C, so on the normal
** path it allocates no Lua memory: no collection, hence no finalizer, can
** run in the middle of a traversal.  Tables are read raw; metatables are set
** only once the whole value is built, so no user metamethod runs mid-copy.
** Each direction runs under its own lua_pcall, so a failure frees the C
** side and re-raises in the caller's state with both stacks balanced.
**
** Format: a byte stream of tagged values.  Tables and Lua functions get ids
** in order of appearance (one id space per buffer, so aliasing across the
** values of one list survives); a later occurrence is a T_REF.  A table is
** T_TABLE narr nrec, its array run (a count n, then the values of keys
** 1..n, T_NIL for a hole: n is a border of the table), the other key/value
** pairs, T_END, then its metatable (a value,
** nil for none).  A function is T_LFUNC, its bytecode, its upvalue count and
** each upvalue: a value, or T_UPJOIN fid n for an upvalue shared with
** upvalue n of function fid.  An upvalue named _ENV, whatever it holds
** (the globals, a sandbox or module environment such as busted's), and the
** sender's globals table wherever else it sits, travel as T_GLOBALS: the
** receiver's globals (as load(string.dump(f)) binds a first upvalue).
** A table that is a module in the sender's package.loaded travels by name
** (T_MODULE): the receiver's package.loaded[name], required if need be;
** C functions travel by name too (T_CFUNC), checked to be the same.
*/
#include "value.h"

#include <stdint.h>
#include <string.h>

#include <lauxlib.h>

#include "cycle.h"
#include "object.h"
#include "pmap.h"
#include "runtime.h"

enum {
  T_NIL, T_FALSE, T_TRUE, T_INT, T_FLT, T_STR, T_TABLE, T_END, T_REF,
  T_LFUNC, T_UPJOIN, T_CFUNC, T_GLOBALS, T_HANDLE, T_MODULE, T_UDATA
};

struct weft_buf {
  _Atomic uint64_t refs;  /* count | retains << 32 (object.h) */
  atomic_uint flags;      /* WEFT_GC_TRACKED: linked into an object (cycle.c) */
  weft_runtime *rt;
  int count;          /* values in the list */
  uint32_t nids;      /* tables and functions */
  unsigned char *data;
  size_t len, cap;
  weft_object **handles;   /* ihandles until there are more */
  size_t nhandles, hcap;
  size_t icap;  /* bytes of inline data after the struct */
  weft_object *ihandles[2];
};

/* A list's buffer fills a block of the cache (alloc.c) with its inline
   data: most scalars and small tables fit in the smaller one, a job's
   call (a small function, a context and a few arguments) in the other. */
#define BUF_BLOCK 192
#define CALL_BUF_BLOCK 256
_Static_assert(sizeof(weft_buf) + 64 <= BUF_BLOCK, "inline room");

static unsigned char *inline_data(weft_buf *b) {
  return (unsigned char *)(b + 1);
}

/* ---------------------------------------------------------------------- */
/* buffers */

/* A buffer whose data starts inline, with room for icap bytes. */
static weft_buf *buf_new(weft_runtime *rt, size_t icap) {
  weft_buf *b = weft_alloc(rt, sizeof *b + icap);
  if (b == NULL) return NULL;
  memset(b, 0, sizeof *b);
  atomic_init(&b->refs, WEFT_REF_RETAIN);
  atomic_init(&b->flags, 0);
  b->rt = rt;  /* not retained: see value.h */
  b->icap = b->cap = icap;
  b->data = inline_data(b);
  b->handles = b->ihandles;
  b->hcap = sizeof b->ihandles / sizeof *b->ihandles;
  return b;
}

void weft_buf_retain(weft_buf *b) {
  atomic_fetch_add_explicit(&b->refs, WEFT_REF_RETAIN, memory_order_relaxed);
}

static void buf_destroy(weft_buf *b) {
  weft_runtime *rt = b->rt;
  for (size_t i = 0; i < b->nhandles; i++) weft_release_inner(b->handles[i]);
  if (b->handles != b->ihandles)
    weft_free(rt, b->handles, b->hcap * sizeof *b->handles);
  if (b->data != inline_data(b)) weft_free(rt, b->data, b->cap);
  weft_free(rt, b, sizeof *b + b->icap);
}

static bool buf_drop(weft_buf *b) {
  return WEFT_REF_COUNT(atomic_fetch_sub_explicit(
             &b->refs, WEFT_REF_ONE, memory_order_acq_rel)) == 1;
}

/*
** A linked buffer holding handles that outlives this release may be what
** kept a cycle alive from outside (a cause the canceling call held): its
** handles are offered to the collector (cycle.c) before the release, while
** b still holds them, and the collector runs after it.
*/
void weft_buf_release(weft_buf *b) {
  if (b == NULL) return;
  if (b->nhandles > 0 &&
      (atomic_load_explicit(&b->flags, memory_order_acquire) &
       WEFT_GC_TRACKED) &&
      WEFT_REF_COUNT(atomic_load_explicit(&b->refs, memory_order_relaxed)) >
          1) {
    weft_runtime *rt = b->rt;
    weft_runtime_retain(rt);
    bool offered = false;
    for (size_t i = 0; i < b->nhandles; i++)
      offered |= weft_cycle_offer_held(rt, b->handles[i]);
    if (buf_drop(b)) buf_destroy(b);
    if (offered) weft_cycle_run(rt);
    weft_runtime_release(rt);
    return;
  }
  if (buf_drop(b)) buf_destroy(b);
}

void weft_buf_release_quiet(weft_buf *b) {
  if (b != NULL && buf_drop(b)) buf_destroy(b);
}

void weft_buf_link(weft_buf *b) {
  if (b->nhandles == 0 ||
      (atomic_load_explicit(&b->flags, memory_order_acquire) &
       WEFT_GC_TRACKED))
    return;
  for (size_t i = 0; i < b->nhandles; i++) weft_cycle_mark(b->handles[i]);
  atomic_fetch_or_explicit(&b->flags, WEFT_GC_TRACKED, memory_order_seq_cst);
}

size_t weft_buf_nhandles(const weft_buf *b) { return b->nhandles; }

weft_object *weft_buf_handle(const weft_buf *b, size_t i) {
  return b->handles[i];
}

uint64_t weft_buf_refword(weft_buf *b) {
  return atomic_load_explicit(&b->refs, memory_order_acquire);
}

int weft_buf_count(const weft_buf *b) { return b->count; }

bool weft_buf_equal(const weft_buf *a, const weft_buf *b) {
  return a->count == b->count && a->len == b->len &&
         a->nhandles == b->nhandles && memcmp(a->data, b->data, a->len) == 0 &&
         (a->nhandles == 0 ||
          memcmp(a->handles, b->handles, a->nhandles * sizeof *a->handles) ==
              0);
}

/* ---------------------------------------------------------------------- */
/* encoder */

enum { F_TABLE, F_FUNC };
/* table phases: the next lua_next, the value of the current key, popping
   the value, the metatable */
enum { P_ARRAY, P_NEXT, P_VALUE, P_POP, P_META };

typedef struct eframe {
  int kind, phase;
  int base;       /* stack slot of the table or function */
  int up, nups;   /* functions: the upvalue being written, their count */
  size_t counts;  /* tables: offset of narr/nrec, patched at T_END */
  uint32_t narr, nrec;
  lua_Integer i, alen;  /* tables: the array run, its next index */
} eframe;

#define ENC_FRAMES 8  /* frames held in the encoder itself */

typedef struct enc {
  lua_State *L;
  weft_buf *b;
  eframe *frames;  /* iframes, or an array of the runtime's */
  size_t nframes, fcap;
  eframe iframes[ENC_FRAMES];
  weft_pmap seen;
  int globals;       /* stack slot of the sender's globals */
  int cfuncs;        /* stack slot of the package.loaded index (nil until used) */
  int first, n;      /* the values to encode */
  const char *root;
  int index;
  int arg;           /* value being encoded, 1-based */
  const void **last_fn;  /* the state's hint (put_dump) */
} enc;

static const char cfunc_key = 0;  /* registry: what package.loaded reaches */

static void *grow(enc *e, void *p, size_t *cap, size_t need, size_t size) {
  size_t n = *cap ? *cap : 16;
  while (n < need) n *= 2;
  void *q = weft_realloc(e->b->rt, p, *cap * size, n * size);
  if (q == NULL) luaL_error(e->L, "not enough memory");
  *cap = n;
  return q;
}

/* Makes room for n more bytes: moves the data out of the inline space,
   or grows it. */
static void make_room(enc *e, size_t n) {
  weft_buf *b = e->b;
  if (b->data == inline_data(b)) {
    size_t cap = 256;  /* one block of the cache's: a function fits */
    unsigned char *p = grow(e, NULL, &cap, b->len + n, 1);
    memcpy(p, b->data, b->len);
    b->data = p;
    b->cap = cap;
  } else {
    b->data = grow(e, b->data, &b->cap, b->len + n, 1);
  }
}

static inline unsigned char *reserve(enc *e, size_t n) {
  weft_buf *b = e->b;
  if (b->cap - b->len < n) make_room(e, n);
  unsigned char *p = b->data + b->len;
  b->len += n;
  return p;
}

/* Room for n more bytes, without writing them. */
static void ensure(enc *e, size_t n) {
  if (e->b->cap - e->b->len < n) {
    reserve(e, n);
    e->b->len -= n;
  }
}

static void put_byte(enc *e, int c) { *reserve(e, 1) = (unsigned char)c; }

static void put_bytes(enc *e, const void *p, size_t n) {
  if (n > 0) memcpy(reserve(e, n), p, n);
}

/* v in 7-bit groups, low first; returns the byte count (at most 10). */
static size_t varint(unsigned char *out, uint64_t v) {
  size_t n = 0;
  do {
    out[n++] = (unsigned char)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
    v >>= 7;
  } while (v != 0);
  return n;
}

static void put_varint(enc *e, uint64_t v) {
  unsigned char tmp[10];
  put_bytes(e, tmp, varint(tmp, v));
}

/* lua_dump writes a function a few bytes at a time: the short pieces are
   copied by a loop rather than a call to memcpy. */
static int dump_writer(lua_State *L, const void *p, size_t n, void *ud) {
  (void)L;
  const unsigned char *s = p;
  unsigned char *d = reserve(ud, n);
  if (n <= 16)
    for (size_t i = 0; i < n; i++) d[i] = s[i];
  else
    memcpy(d, s, n);
  return 0;
}

/*
** Appends the bytecode of the Lua function at v.  A function submitted in
** a loop is dumped twice, not once per job: the state keeps the address
** of the last function it encoded (a hint only: another function may take
** a collected one's address), and when the same address comes again, a
** registry memo holding that function weakly, with its bytecode, says
** whether it is the very same function.
*/
static const char dump_memo_key = 0;  /* registry: {fn, its bytecode} */

static void dump(enc *e, int v) {
  lua_pushvalue(e->L, v);
  if (lua_dump(e->L, dump_writer, e, 0) != 0)
    luaL_error(e->L, "cannot dump function");
  lua_pop(e->L, 1);
}

static void put_dump(enc *e, int v) {
  lua_State *L = e->L;
  const void *fn = lua_topointer(L, v);
  bool again = *e->last_fn == fn;
  *e->last_fn = fn;
  if (!again) {
    dump(e, v);
    return;
  }
  weft_push_weak_values(L, &dump_memo_key);
  int memo = lua_gettop(L);
  lua_rawgeti(L, memo, 1);
  bool same = lua_rawequal(L, -1, v);
  lua_pop(L, 1);
  if (same && lua_rawgeti(L, memo, 2) == LUA_TSTRING) {
    size_t n;
    const char *code = lua_tolstring(L, -1, &n);
    put_bytes(e, code, n);
    lua_pop(L, 2);
    return;
  }
  if (same) lua_pop(L, 1);  /* no bytecode yet */
  size_t at = e->b->len;
  dump(e, v);
  lua_pushvalue(L, v);
  lua_rawseti(L, memo, 1);
  lua_pushlstring(L, (const char *)e->b->data + at, e->b->len - at);
  lua_rawseti(L, memo, 2);
  lua_pop(L, 1);  /* memo */
}

/* Appends a path element for frame f (how its current child is reached). */
static void add_path(lua_State *L, luaL_Buffer *B, const eframe *f) {
  if (f->kind == F_FUNC) {
    const char *name = lua_getupvalue(L, f->base, f->up);
    if (name != NULL) lua_pop(L, 1);
    lua_pushfstring(L, "<upvalue %s>", name && *name ? name : "?");
  } else if (f->phase == P_ARRAY) {
    lua_pushfstring(L, "[%I]", (LUAI_UACINT)f->i);
  } else if (f->phase == P_META) {
    lua_pushliteral(L, "<metatable>");
  } else if (f->phase == P_VALUE) {
    lua_pushliteral(L, "<key>");
  } else {
    int k = f->base + 1;
    switch (lua_type(L, k)) {
      case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, k, &len);
        int ident = len > 0 && !(s[0] >= '0' && s[0] <= '9');
        for (size_t i = 0; ident && i < len; i++)
          ident = s[i] == '_' || (s[i] >= '0' && s[i] <= '9') ||
                  (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z');
        if (ident)
          lua_pushfstring(L, ".%s", s);
        else
          lua_pushfstring(L, "[\"%s\"]", s);
        break;
      }
      case LUA_TNUMBER:
      case LUA_TBOOLEAN:
        lua_pushfstring(L, "[%s]", luaL_tolstring(L, k, NULL));
        lua_remove(L, -2);
        break;
      default:
        lua_pushfstring(L, "[%s]", luaL_typename(L, k));
    }
  }
  luaL_addvalue(B);
}

/* Raises "<path>: cannot copy <what>[ as a table key]" for the value at v. */
static int refuse(enc *e, int v, const char *why) {
  lua_State *L = e->L;
  const char *what;
  switch (lua_type(L, v)) {
    case LUA_TUSERDATA:
      if (luaL_getmetafield(L, v, "__name") == LUA_TSTRING)
        what = lua_pushfstring(L, "userdata (%s)", lua_tostring(L, -1));
      else
        what = "userdata";
      break;
    case LUA_TLIGHTUSERDATA: what = "light userdata"; break;
    case LUA_TFUNCTION: what = "C function"; break;
    default: what = luaL_typename(L, v);
  }
  size_t nf = e->nframes;
  int is_key = nf > 0 && e->frames[nf - 1].kind == F_TABLE &&
               e->frames[nf - 1].phase == P_VALUE;
  luaL_Buffer B;
  luaL_buffinit(L, &B);
  if (e->index)
    lua_pushfstring(L, "%s[%d]", e->root, e->arg);
  else
    lua_pushstring(L, e->root);
  luaL_addvalue(&B);
  for (size_t i = 0; i < nf - (is_key ? 1 : 0); i++) add_path(L, &B, &e->frames[i]);
  lua_pushfstring(L, ": cannot copy %s%s%s", what, why ? why : "",
                  is_key ? " as a table key" : "");
  luaL_addvalue(&B);
  luaL_pushresult(&B);
  return lua_error(L);
}

static eframe *push_frame(enc *e, int kind, int v) {
  lua_State *L = e->L;
  if (!lua_checkstack(L, 8))
    luaL_error(L, "value nested too deeply to copy (%d levels)", (int)e->nframes);
  if (e->nframes == e->fcap) {
    if (e->frames == e->iframes) {  /* out of the inline frames */
      size_t cap = e->fcap;
      eframe *f = grow(e, NULL, &cap, e->nframes + 1, sizeof *f);
      memcpy(f, e->iframes, sizeof e->iframes);
      e->frames = f;
      e->fcap = cap;
    } else {
      e->frames = grow(e, e->frames, &e->fcap, e->nframes + 1, sizeof *e->frames);
    }
  }
  eframe *f = &e->frames[e->nframes++];
  memset(f, 0, sizeof *f);
  f->kind = kind;
  lua_pushvalue(L, v);
  f->base = lua_gettop(L);
  return f;
}

/* Seen before: writes the reference and returns true.  Else registers it. */
static bool seen(enc *e, const void *p) {
  const uint64_t *id = weft_pmap_get(&e->seen, p);
  if (id != NULL) {
    put_byte(e, T_REF);
    put_varint(e, *id);
    return true;
  }
  if (!weft_pmap_put(e->b->rt, &e->seen, p, e->b->nids++))
    luaL_error(e->L, "not enough memory");
  return false;
}

static const char stamp_key = 0;  /* index: stamp of package.loaded */

static uint64_t mix64(uint64_t x) {  /* splitmix64's finalizer */
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9u;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebu;
  return x ^ (x >> 31);
}

/* One slot's identity: its object (strings are interned or held by the
   table, so equal names give equal pointers while the index is alive),
   else its type and value bits. */
static uint64_t slot_id(lua_State *L, int i) {
  const void *p = lua_topointer(L, i);
  if (p != NULL) return (uint64_t)(uintptr_t)p;
  uint64_t bits = 0;
  if (lua_type(L, i) == LUA_TNUMBER) {
    lua_Number n = lua_tonumber(L, i);
    memcpy(&bits, &n, sizeof bits < sizeof n ? sizeof bits : sizeof n);
  } else {
    bits = (uint64_t)lua_toboolean(L, i);
  }
  return mix64(bits ^ (uint64_t)lua_type(L, i) << 56);
}

/* A stamp of package.loaded's name -> module pairs, independent of their
   order (no allocation): replacing, removing or adding a module changes
   it.  The index holds every module it names, so none of their addresses
   can be reused while it is cached. */
static lua_Integer stamp_loaded(lua_State *L) {
  uint64_t h = 0;
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    h += mix64(slot_id(L, -2) ^ mix64(slot_id(L, -1)));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return (lua_Integer)h;
}

/* Pushes the name a C function takes in the index (a module table takes
   its plain name): modlen (4 bytes) mod, then "." field for a module's
   field.  With the module's length given, any byte may occur in either
   part, and name + 4 reads "mod.field" in messages. */
static void push_cname(lua_State *L, int mod, int field) {
  size_t modlen, flen = 0;
  const char *m = lua_tolstring(L, mod, &modlen);
  const char *f = field ? lua_tolstring(L, field, &flen) : NULL;
  uint32_t n32 = (uint32_t)modlen;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, (const char *)&n32, 4);
  luaL_addlstring(&b, m, modlen);
  if (f != NULL) {
    luaL_addchar(&b, '.');
    luaL_addlstring(&b, f, flen);
  }
  luaL_pushresult(&b);
}

/* Pushes what a push_cname name (len > 4) names in L's package.loaded
   (nil if nothing); returns the type of its module there. */
static int resolve_cname(lua_State *L, const char *name, size_t len) {
  uint32_t modlen;
  memcpy(&modlen, name, 4);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushlstring(L, name + 4, modlen);
  int t = lua_rawget(L, -2);
  if (4 + modlen < len) {  /* a field of it */
    if (t == LUA_TTABLE) {
      lua_pushlstring(L, name + 5 + modlen, len - 5 - modlen);
      lua_rawget(L, -2);
    } else {
      lua_pushnil(L);
    }
    lua_remove(L, -2);
  }
  lua_remove(L, -2);
  return t;
}

/* Indexes module mod (at mod, its value above it) into index: the first
   name met for a table or a C function wins. */
static void index_module(lua_State *L, int index, int mod) {
  if (lua_iscfunction(L, mod + 1)) {
    lua_pushvalue(L, mod + 1);
    if (lua_rawget(L, index) == LUA_TNIL) {
      lua_pushvalue(L, mod + 1);
      push_cname(L, mod, 0);
      lua_rawset(L, index);
    }
    lua_pop(L, 1);
    return;
  }
  if (!lua_istable(L, mod + 1)) return;
  lua_pushvalue(L, mod + 1);
  if (lua_rawget(L, index) == LUA_TNIL) {
    lua_pushvalue(L, mod + 1);
    lua_pushvalue(L, mod);
    lua_rawset(L, index);
  }
  lua_pop(L, 1);
  lua_pushnil(L);
  while (lua_next(L, mod + 1)) {  /* ... mod module name f */
    if (lua_type(L, -2) == LUA_TSTRING && lua_iscfunction(L, -1)) {
      lua_pushvalue(L, -1);
      if (lua_rawget(L, index) == LUA_TNIL) {
        lua_pushvalue(L, -2);
        push_cname(L, mod, lua_gettop(L) - 3);
        lua_rawset(L, index);
      }
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
}

/*
** Pushes a new index of what package.loaded reaches: each module table ->
** "mod", each C function -> its push_cname name, and at stamp_key the
** stamp of package.loaded.  A C
** function several modules export (pl.utils.pack is table.pack) takes
** the name of a standard library first, which every state has.
*/
static void build_index(lua_State *L) {
  static const char *const std[] = {"_G",        "string", "table",
                                    "math",      "io",     "os",
                                    "coroutine", "utf8",   "debug",
                                    "package",   NULL};
  lua_newtable(L);
  int index = lua_gettop(L);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  for (int i = 0; std[i] != NULL; i++) {
    lua_pushstring(L, std[i]);
    lua_pushvalue(L, -1);
    lua_rawget(L, index + 1);  /* index loaded name module */
    index_module(L, index, index + 2);
    lua_pop(L, 2);
  }
  lua_pushnil(L);
  while (lua_next(L, index + 1)) {  /* index loaded mod module */
    if (lua_type(L, index + 2) == LUA_TSTRING) index_module(L, index, index + 2);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  lua_pushinteger(L, stamp_loaded(L));
  lua_rawsetp(L, index, &stamp_key);
  lua_pushvalue(L, index);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &cfunc_key);
}

/* Makes the index current at e->cfuncs: the cached one while
   package.loaded holds the modules it was built from. */
static void load_index(enc *e, bool rebuild) {
  lua_State *L = e->L;
  if (!rebuild && lua_rawgetp(L, LUA_REGISTRYINDEX, &cfunc_key) == LUA_TTABLE) {
    lua_rawgetp(L, -1, &stamp_key);
    bool fresh = lua_tointeger(L, -1) == stamp_loaded(L);
    lua_pop(L, 1);
    if (fresh) {
      lua_replace(L, e->cfuncs);
      return;
    }
  }
  lua_pop(L, rebuild ? 0 : 1);
  build_index(L);
  lua_replace(L, e->cfuncs);
}

/* A host userdata (weft_register_type): T_UDATA type len(4) bytes. */
static void encode_udata(enc *e, int v) {
  lua_State *L = e->L;
  weft_runtime *rt = e->b->rt;
  int t = weft_runtime_udtype(rt, L, v);
  if (t < 0) return (void)refuse(e, v, NULL);
  const weft_udtype *ty = &rt->types[t];
  put_byte(e, T_UDATA);
  put_varint(e, (uint64_t)t);
  size_t at = e->b->len, cap = 64;
  reserve(e, 4);
  for (int tries = 0;; tries++) {
    size_t start = e->b->len;
    unsigned char *dst = reserve(e, cap);
    int top = lua_gettop(L);
    size_t n = ty->copy_out(L, v, dst, cap, ty->ud);
    lua_settop(L, top);
    if (n > UINT32_MAX) luaL_error(L, "%s: copy_out result too large", ty->name);
    e->b->len = start + (n <= cap ? n : 0);
    if (n <= cap) {
      uint32_t n32 = (uint32_t)n;
      memcpy(e->b->data + at, &n32, 4);
      return;
    }
    if (tries > 0)
      luaL_error(L, "%s: copy_out asked for more room twice", ty->name);
    cap = n;
  }
}

/* The name of v (a C function or a table) in the index: pushes it, or
   returns false.  A C function missing from the index, or whose name
   there no longer leads to it, rebuilds it once. */
static bool loaded_name(enc *e, int v) {
  lua_State *L = e->L;
  if (lua_isnil(L, e->cfuncs)) load_index(e, false);
  for (int rebuilt = 0;; rebuilt = 1) {
    lua_pushvalue(L, v);
    if (lua_rawget(L, e->cfuncs) == LUA_TSTRING) {
      if (!lua_iscfunction(L, v)) return true;  /* the stamp vouches */
      size_t len;  /* a module's field may have changed since */
      const char *name = lua_tolstring(L, -1, &len);
      resolve_cname(L, name, len);
      bool same = lua_rawequal(L, -1, v);
      lua_pop(L, 1);
      if (same) return true;
    }
    lua_pop(L, 1);
    if (rebuilt || !lua_iscfunction(L, v)) return false;
    load_index(e, true);
  }
}

static void encode_value(enc *e, int v) {
  lua_State *L = e->L;
  switch (lua_type(L, v)) {
    case LUA_TNIL: put_byte(e, T_NIL); break;
    case LUA_TBOOLEAN: put_byte(e, lua_toboolean(L, v) ? T_TRUE : T_FALSE); break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, v)) {
        lua_Integer i = lua_tointeger(L, v);
        put_byte(e, T_INT);
        put_bytes(e, &i, sizeof i);
      } else {
        lua_Number d = lua_tonumber(L, v);
        put_byte(e, T_FLT);
        put_bytes(e, &d, sizeof d);
      }
      break;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, v, &len);
      put_byte(e, T_STR);
      put_varint(e, len);
      put_bytes(e, s, len);
      break;
    }
    case LUA_TTABLE: {
      if (lua_rawequal(L, v, e->globals)) {
        put_byte(e, T_GLOBALS);
        break;
      }
      if (loaded_name(e, v)) {  /* a module: by name */
        size_t len;
        const char *name = lua_tolstring(L, -1, &len);
        put_byte(e, T_MODULE);
        put_varint(e, len);
        put_bytes(e, name, len);
        lua_pop(L, 1);
        break;
      }
      if (seen(e, lua_topointer(L, v))) break;
      eframe *f = push_frame(e, F_TABLE, v);
      put_byte(e, T_TABLE);
      f->counts = e->b->len;
      reserve(e, 8);
      f->alen = (lua_Integer)lua_rawlen(L, v);
      put_varint(e, (uint64_t)f->alen);
      ensure(e, (size_t)f->alen * 9);  /* room for its scalars */
      f->phase = P_ARRAY;
      break;
    }
    case LUA_TFUNCTION: {
      if (lua_iscfunction(L, v)) {
        if (!loaded_name(e, v))
          return (void)refuse(e, v, " (not found in package.loaded)");
        lua_CFunction fn = lua_tocfunction(L, v);
        size_t len;
        const char *name = lua_tolstring(L, -1, &len);
        put_byte(e, T_CFUNC);
        put_bytes(e, &fn, sizeof fn);
        put_varint(e, len);
        put_bytes(e, name, len);
        lua_pop(L, 1);
        break;
      }
      if (seen(e, lua_topointer(L, v))) break;
      eframe *f = push_frame(e, F_FUNC, v);
      lua_Debug ar;
      lua_pushvalue(L, v);
      lua_getinfo(L, ">u", &ar);
      f->nups = ar.nups;
      f->up = 0;
      put_byte(e, T_LFUNC);
      size_t at = e->b->len;
      reserve(e, 4);
      put_dump(e, v);
      uint32_t n = (uint32_t)(e->b->len - at - 4);
      memcpy(e->b->data + at, &n, 4);
      put_byte(e, ar.nups);
      break;
    }
    case LUA_TUSERDATA: {
      weft_object *o = weft_to_object(L, v);
      if (o == NULL) {
        if (weft_is_handle(L, v))  /* reached again through a finalizer */
          return (void)refuse(e, v, " (a released handle: its __gc ran)");
        encode_udata(e, v);
        break;
      }
      weft_cache_handle(L, v);  /* so that it comes back as itself */
      weft_buf *b = e->b;
      if (b->nhandles == b->hcap) {
        if (b->handles == b->ihandles) {  /* move out of the inline slots */
          size_t cap = 0;
          weft_object **h = grow(e, NULL, &cap, b->nhandles + 1, sizeof *h);
          memcpy(h, b->ihandles, sizeof b->ihandles);
          b->handles = h;
          b->hcap = cap;
        } else {
          b->handles = grow(e, b->handles, &b->hcap, b->nhandles + 1,
                            sizeof *b->handles);
        }
      }
      weft_retain_inner(o);
      b->handles[b->nhandles++] = o;
      put_byte(e, T_HANDLE);
      put_varint(e, b->nhandles - 1);
      break;
    }
    default:
      refuse(e, v, NULL);
  }
}

/* One step of the top frame. */
static void step(enc *e) {
  lua_State *L = e->L;
  eframe *f = &e->frames[e->nframes - 1];
  int base = f->base;
  if (f->kind == F_FUNC) {
    lua_settop(L, base);
    if (f->up == f->nups) {  /* done */
      e->nframes--;
      lua_settop(L, base - 1);
      return;
    }
    int i = ++f->up;
    void *id = lua_upvalueid(L, base, i);
    const uint64_t *at = weft_pmap_get(&e->seen, id);
    if (at != NULL) {
      put_byte(e, T_UPJOIN);
      put_varint(e, *at >> 8);
      put_byte(e, (int)(*at & 0xff));
      return;
    }
    const uint64_t fid = *weft_pmap_get(&e->seen, lua_topointer(L, base));
    if (!weft_pmap_put(e->b->rt, &e->seen, id, fid << 8 | (uint64_t)i))
      luaL_error(L, "not enough memory");
    const char *name = lua_getupvalue(L, base, i);
    if (strcmp(name, "_ENV") == 0)  /* a sandbox or module env stays home */
      put_byte(e, T_GLOBALS);
    else
      encode_value(e, base + 1);
    return;
  }
  switch (f->phase) {
    case P_ARRAY:  /* scalars inline; anything else through its frame */
      lua_settop(L, base);
      while (f->i < f->alen) {
        int t = lua_rawgeti(L, base, ++f->i);
        if (t != LUA_TNIL) f->narr++;
        if (t == LUA_TTABLE || t == LUA_TFUNCTION || t == LUA_TUSERDATA ||
            t == LUA_TTHREAD || t == LUA_TLIGHTUSERDATA) {
          encode_value(e, base + 1);
          return;
        }
        encode_value(e, base + 1);
        lua_settop(L, base);
      }
      f->phase = P_NEXT;
      lua_pushnil(L);  /* first key */
      break;
    case P_NEXT:
      while (lua_next(L, base)) {  /* table, key, value */
        if (lua_isinteger(L, base + 1)) {
          lua_Integer k = lua_tointeger(L, base + 1);
          if (k > 0 && k <= f->alen) {  /* in the array run already */
            lua_settop(L, base + 1);
            continue;
          }
          if (k > 0 && k <= INT32_MAX) f->narr++; else f->nrec++;
        } else {
          f->nrec++;
        }
        f->phase = P_VALUE;
        encode_value(e, base + 1);
        return;
      }
      {  /* table */
        uint32_t counts[2] = {f->narr, f->nrec};
        memcpy(e->b->data + f->counts, counts, sizeof counts);
        put_byte(e, T_END);
        f->phase = P_META;
        if (!lua_getmetatable(L, base)) lua_pushnil(L);
        encode_value(e, base + 1);
      }
      break;
    case P_VALUE:
      f->phase = P_POP;
      encode_value(e, base + 2);
      break;
    case P_POP:
      lua_settop(L, base + 1);
      f->phase = P_NEXT;
      break;
    default:  /* P_META done */
      e->nframes--;
      lua_settop(L, base - 1);
  }
}

/* Under lua_pcall: 1 = the encoder, 2.. = the values. */
static int encode_k(lua_State *L) {
  enc *e = lua_touserdata(L, 1);
  e->first = 2;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  e->globals = lua_gettop(L);
  lua_pushnil(L);  /* the C function index, loaded on first use */
  e->cfuncs = lua_gettop(L);
  for (e->arg = 1; e->arg <= e->n; e->arg++) {
    encode_value(e, e->first + e->arg - 1);
    while (e->nframes > 0) step(e);
  }
  return 0;
}

/* One scalar, without a protected call; NULL when v is not a scalar. */
static weft_buf *encode_scalar(lua_State *L, weft_runtime *rt, int v) {
  unsigned char tag;
  const void *p = NULL;
  size_t len = 0;
  lua_Integer i;
  lua_Number d;
  switch (lua_type(L, v)) {
    case LUA_TNIL: tag = T_NIL; break;
    case LUA_TBOOLEAN: tag = lua_toboolean(L, v) ? T_TRUE : T_FALSE; break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, v)) {
        tag = T_INT;
        i = lua_tointeger(L, v);
        p = &i, len = sizeof i;
      } else {
        tag = T_FLT;
        d = lua_tonumber(L, v);
        p = &d, len = sizeof d;
      }
      break;
    case LUA_TSTRING:
      tag = T_STR;
      p = lua_tolstring(L, v, &len);
      break;
    default: return NULL;
  }
  unsigned char head[11];
  size_t h = 0;
  head[h++] = tag;
  if (tag == T_STR)
    for (size_t x = len;; x >>= 7) {  /* the varint of put_varint */
      head[h++] = (unsigned char)((x & 0x7f) | (x > 0x7f ? 0x80 : 0));
      if (x <= 0x7f) break;
    }
  weft_buf *b = buf_new(rt, h + len);
  if (b == NULL) luaL_error(L, "not enough memory");
  b->count = 1;
  memcpy(b->data, head, h);
  if (len > 0) memcpy(b->data + h, p, len);
  b->len = h + len;
  return b;
}

weft_buf *weft_buf_encode(lua_State *L, int idx, int n, const char *root,
                          bool index) {
  const void **last_fn;
  weft_runtime *rt = weft_runtime_of_fn(L, &last_fn);
  idx = lua_absindex(L, idx);
  if (n == 1) {
    weft_buf *b = encode_scalar(L, rt, idx);
    if (b != NULL) return b;
  }
  enc e;
  memset(&e, 0, sizeof e);
  e.L = L;
  e.n = n;
  e.root = root;
  e.index = index;
  e.frames = e.iframes;
  e.fcap = ENC_FRAMES;
  e.last_fn = last_fn;
  size_t block = lua_type(L, idx) == LUA_TFUNCTION && !lua_iscfunction(L, idx)
                     ? CALL_BUF_BLOCK
                     : BUF_BLOCK;
  e.b = buf_new(rt, block - sizeof(weft_buf));
  if (e.b == NULL) luaL_error(L, "not enough memory");
  e.b->count = n;
  if (!lua_checkstack(L, n + 4)) {
    weft_buf_release(e.b);
    luaL_error(L, "too many values to copy");
  }
  lua_pushcfunction(L, encode_k);
  lua_pushlightuserdata(L, &e);
  for (int i = 0; i < n; i++) lua_pushvalue(L, idx + i);
  int status = lua_pcall(L, n + 1, 0, 0);
  if (e.frames != e.iframes) weft_free(rt, e.frames, e.fcap * sizeof *e.frames);
  weft_pmap_free(rt, &e.seen);
  if (status != LUA_OK) {
    weft_buf_release(e.b);
    lua_error(L);
  }
  return e.b;
}

weft_buf *weft_buf_new_string(weft_runtime *rt, const char *str) {
  size_t len = strlen(str);
  unsigned char tmp[10];
  size_t n = varint(tmp, len);
  weft_buf *b = buf_new(rt, 1 + n + len);
  if (b == NULL) return NULL;
  b->count = 1;
  b->data[0] = T_STR;
  memcpy(b->data + 1, tmp, n);
  memcpy(b->data + 1 + n, str, len);
  b->len = 1 + n + len;
  return b;
}

/* ---------------------------------------------------------------------- */
/* decoder */

/* table phases: a key or T_END, the value, the rawset, the metatable;
   function phase: an upvalue value is pending */
enum { D_ARRAY, D_ARRSET, D_KEY, D_VAL, D_SET, D_META, D_UPVAL };

typedef struct dframe {
  int kind, phase;
  int base;
  int up, nups;
  lua_Integer i, alen;  /* tables: the array run, its last index set */
} dframe;

typedef struct dec {
  lua_State *L;
  const weft_buf *b;
  size_t pos;
  dframe *frames;
  size_t nframes, fcap;
  int ids;     /* slot: id + 1 -> table or function */
  int metas;   /* slot: pending table, metatable pairs (nil: none yet) */
  lua_Integer nmetas;
  lua_Integer nextid;
} dec;

typedef struct chunk {
  const char *p;
  size_t n;
} chunk;

static const char *chunk_reader(lua_State *L, void *ud, size_t *size) {
  chunk *c = ud;
  (void)L;
  *size = c->n;
  c->n = 0;
  return *size ? c->p : NULL;
}

static uint64_t get_varint(dec *d) {
  const unsigned char *p = d->b->data;
  uint64_t v = 0;
  int shift = 0;
  unsigned char c;
  do {
    c = p[d->pos++];
    v |= (uint64_t)(c & 0x7f) << shift;
    shift += 7;
  } while (c & 0x80);
  return v;
}

static void get_bytes(dec *d, void *out, size_t n) {
  memcpy(out, d->b->data + d->pos, n);
  d->pos += n;
}

static void dpush_frame(dec *d, int kind, int nups) {
  lua_State *L = d->L;
  if (!lua_checkstack(L, 8))
    luaL_error(L, "value nested too deeply to copy (%d levels)", (int)d->nframes);
  if (d->nframes == d->fcap) {
    size_t cap = d->fcap ? 2 * d->fcap : 16;
    dframe *f = weft_realloc(d->b->rt, d->frames, d->fcap * sizeof *f,
                             cap * sizeof *f);
    if (f == NULL) luaL_error(L, "not enough memory");
    d->frames = f;
    d->fcap = cap;
  }
  dframe *f = &d->frames[d->nframes++];
  f->kind = kind;
  f->phase = kind == F_TABLE ? D_ARRAY : 0;
  f->i = f->alen = 0;
  f->base = lua_gettop(L);
  f->up = 0;
  f->nups = nups;
}

static void register_id(dec *d) {
  lua_pushvalue(d->L, -1);
  lua_rawseti(d->L, d->ids, ++d->nextid);
}

static void push_cfunc(dec *d) {
  lua_State *L = d->L;
  lua_CFunction fn;
  get_bytes(d, &fn, sizeof fn);
  size_t len = (size_t)get_varint(d);
  const char *name = (const char *)d->b->data + d->pos;
  d->pos += len;
  int t = resolve_cname(L, name, len);
  if (lua_tocfunction(L, -1) != fn) {  /* name it: "mod.field" or "mod" */
    lua_pushlstring(L, name + 4, len - 4);
    luaL_error(L, "cannot copy C function %s: %s in the receiving state",
               lua_tostring(L, -1),
               t == LUA_TNIL ? "its module is not loaded"
                             : "it is not the same function");
  }
}

/* Under lua_pcall: require(1). */
static int require_k(lua_State *L) {
  lua_getglobal(L, "require");
  lua_insert(L, 1);
  lua_call(L, 1, 1);
  return 1;
}

/* A module, by name: the receiver's package.loaded[name], else require. */
static void decode_udata(dec *d) {
  lua_State *L = d->L;
  weft_runtime *rt = d->b->rt;
  uint64_t t = get_varint(d);
  uint32_t n;
  memcpy(&n, d->b->data + d->pos, 4);
  d->pos += 4;
  if (t >= (uint64_t)atomic_load_explicit(&rt->ntypes, memory_order_acquire))
    luaL_error(L, "weft: corrupt value buffer (host type %d)", (int)t);
  const weft_udtype *ty = &rt->types[t];
  int top = lua_gettop(L);
  ty->copy_in(L, d->b->data + d->pos, n, ty->ud);
  if (lua_gettop(L) != top + 1)
    luaL_error(L, "%s: copy_in must push exactly one value", ty->name);
  d->pos += n;
}

static void push_module(dec *d) {
  lua_State *L = d->L;
  size_t len = (size_t)get_varint(d);
  const char *name = (const char *)d->b->data + d->pos;
  d->pos += len;
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushlstring(L, name, len);
  if (lua_rawget(L, -2) != LUA_TNIL) {
    lua_remove(L, -2);
    return;
  }
  lua_pop(L, 2);
  lua_pushlstring(L, name, len);  /* stays, for the message */
  lua_pushcfunction(L, require_k);
  lua_pushvalue(L, -2);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK)
    luaL_error(L, "cannot copy module '%s': %s", lua_tostring(L, -2),
               lua_tostring(L, -1));
  lua_remove(L, -2);
}

/*
** Functions without upvalues (but _ENV, which is the globals anyway) are
** loaded once per state: a cache in the registry maps their bytecode to
** the loaded closure (weak values), so a job function sent a thousand
** times to a worker is loaded there once.  Such a closure depends on
** nothing but its arguments and globals, so sharing it is invisible
** (unless a job rebinds its upvalue with the debug library).
*/
static const char load_cache_key = 0;

/* Pushes the cached closure for c's bytecode and returns true, or returns
   false with nothing pushed. */
static bool load_cached(lua_State *L, const chunk *c) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &load_cache_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    return false;
  }
  lua_pushlstring(L, c->p, c->n);
  if (lua_rawget(L, -2) == LUA_TFUNCTION) {
    lua_remove(L, -2);
    return true;
  }
  lua_pop(L, 2);
  return false;
}

/* Caches the closure on top (just loaded from c). */
static void cache_loaded(lua_State *L, const chunk *c) {
  weft_push_weak_values(L, &load_cache_key);
  lua_pushlstring(L, c->p, c->n);
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

static void decode_value(dec *d) {
  lua_State *L = d->L;
  int tag = d->b->data[d->pos++];
  switch (tag) {
    case T_NIL: lua_pushnil(L); break;
    case T_FALSE: lua_pushboolean(L, 0); break;
    case T_TRUE: lua_pushboolean(L, 1); break;
    case T_INT: {
      lua_Integer i;
      get_bytes(d, &i, sizeof i);
      lua_pushinteger(L, i);
      break;
    }
    case T_FLT: {
      lua_Number n;
      get_bytes(d, &n, sizeof n);
      lua_pushnumber(L, n);
      break;
    }
    case T_STR: {
      size_t len = (size_t)get_varint(d);
      lua_pushlstring(L, (const char *)d->b->data + d->pos, len);
      d->pos += len;
      break;
    }
    case T_TABLE: {
      uint32_t counts[2];
      get_bytes(d, counts, sizeof counts);
      lua_createtable(L, (int)counts[0], (int)counts[1]);
      register_id(d);
      dpush_frame(d, F_TABLE, 0);
      d->frames[d->nframes - 1].alen = (lua_Integer)get_varint(d);
      break;
    }
    case T_REF:
      lua_rawgeti(L, d->ids, (lua_Integer)get_varint(d) + 1);
      break;
    case T_LFUNC: {
      uint32_t n;
      get_bytes(d, &n, sizeof n);
      chunk c = {(const char *)d->b->data + d->pos, n};
      d->pos += n;
      int nups = d->b->data[d->pos];
      bool shared = nups == 0 || (nups == 1 && d->b->data[d->pos + 1] == T_GLOBALS);
      const chunk code = c;  /* the reader consumes c */
      if (!shared || !load_cached(L, &code)) {
        if (lua_load(L, chunk_reader, &c, "=(weft copy)", "b") != LUA_OK)
          lua_error(L);
        if (shared) cache_loaded(L, &code);
      }
      d->pos++;
      register_id(d);
      dpush_frame(d, F_FUNC, nups);
      break;
    }
    case T_CFUNC: push_cfunc(d); break;
    case T_MODULE: push_module(d); break;
    case T_GLOBALS: lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS); break;
    case T_HANDLE:
      weft_push_object(L, d->b->handles[get_varint(d)]);
      break;
    case T_UDATA: decode_udata(d); break;
    default:
      luaL_error(L, "weft: corrupt value buffer (tag %d)", tag);
  }
}

static void dstep(dec *d) {
  lua_State *L = d->L;
  dframe *f = &d->frames[d->nframes - 1];
  int base = f->base;
  if (f->kind == F_FUNC) {
    if (f->phase == D_UPVAL) {
      lua_setupvalue(L, base, f->up);
      f->phase = 0;
    }
    if (f->up == f->nups) {
      d->nframes--;
      return;
    }
    f->up++;
    if (d->b->data[d->pos] == T_UPJOIN) {
      d->pos++;
      lua_Integer fid = (lua_Integer)get_varint(d);
      int n = d->b->data[d->pos++];
      lua_rawgeti(L, d->ids, fid + 1);
      lua_upvaluejoin(L, base, f->up, -1, n);
      lua_pop(L, 1);
    } else {
      f->phase = D_UPVAL;
      decode_value(d);
    }
    return;
  }
  switch (f->phase) {
    case D_ARRSET:  /* the value of key i is on top */
      if (lua_isnil(L, -1))
        lua_pop(L, 1);
      else
        lua_rawseti(L, base, f->i);
      f->phase = D_ARRAY;
      /* fall through */
    case D_ARRAY:  /* scalars inline; anything else through its frame */
      while (f->i < f->alen) {
        f->i++;
        int tag = d->b->data[d->pos];
        if (tag > T_STR && tag != T_GLOBALS) {
          f->phase = D_ARRSET;
          decode_value(d);
          return;
        }
        decode_value(d);
        if (lua_isnil(L, -1))
          lua_pop(L, 1);
        else
          lua_rawseti(L, base, f->i);
      }
      f->phase = D_KEY;
      break;
    case D_KEY:
      if (d->b->data[d->pos] == T_END) {
        d->pos++;
        f->phase = D_META;
      } else {
        f->phase = D_VAL;
      }
      decode_value(d);
      break;
    case D_VAL:
      f->phase = D_SET;
      decode_value(d);
      break;
    case D_SET:
      lua_rawset(L, base);
      f->phase = D_KEY;
      break;
    default:  /* D_META: table, metatable or nil */
      if (!lua_isnil(L, base + 1)) {  /* set once every table is built */
        if (lua_isnil(L, d->metas)) {
          lua_newtable(L);
          lua_replace(L, d->metas);
        }
        lua_pushvalue(L, base);
        lua_rawseti(L, d->metas, ++d->nmetas);
        lua_rawseti(L, d->metas, ++d->nmetas);
      }
      lua_settop(L, base);
      d->nframes--;
  }
}

/* Under lua_pcall: 1 = the decoder. */
static int decode_k(lua_State *L) {
  dec *d = lua_touserdata(L, 1);
  if (d->b->nids > 0) lua_createtable(L, (int)d->b->nids, 0);
  else lua_pushnil(L);
  d->ids = lua_gettop(L);
  lua_pushnil(L);
  d->metas = lua_gettop(L);
  for (int i = 0; i < d->b->count; i++) {
    decode_value(d);
    while (d->nframes > 0) dstep(d);
  }
  for (lua_Integer i = 1; i < d->nmetas; i += 2) {
    lua_rawgeti(L, d->metas, i);
    lua_rawgeti(L, d->metas, i + 1);
    lua_setmetatable(L, -2);
    lua_pop(L, 1);
  }
  return d->b->count;
}

/* Pushes the one scalar b holds that cannot raise (no string); else
   returns false and pushes nothing. */
static bool decode_plain(lua_State *L, const weft_buf *b) {
  if (b->count != 1 || b->len == 0) return false;
  dec d = {.L = L, .b = b};
  switch (b->data[0]) {
    case T_NIL: case T_FALSE: case T_TRUE: case T_INT: case T_FLT:
      if (!lua_checkstack(L, 1)) return false;
      decode_value(&d);
      return true;
    default: return false;
  }
}

/* Skips the scalar at d->pos; false when it is not one. */
static bool skip_scalar(dec *d) {
  switch (d->b->data[d->pos++]) {
    case T_NIL: case T_FALSE: case T_TRUE: return true;
    case T_INT: case T_FLT: d->pos += 8; return true;
    case T_STR: d->pos += (size_t)get_varint(d); return true;
    default: return false;
  }
}

lua_Integer weft_buf_decode_array_into(lua_State *L, const weft_buf *b,
                                       int t, lua_Integer offset) {
  t = lua_absindex(L, t);
  dec d = {.L = L, .b = b};
  if (b->count < 1 || b->len == 0 || b->data[0] != T_TABLE) return -1;
  d.pos = 1;
  uint32_t counts[2];
  get_bytes(&d, counts, sizeof counts);
  lua_Integer n = (lua_Integer)get_varint(&d);
  if (counts[1] != 0) return -1;
  size_t start = d.pos;
  for (lua_Integer i = 0; i < n; i++)  /* only scalars, then no pair */
    if (!skip_scalar(&d)) return -1;
  if (d.pos + 2 > b->len || b->data[d.pos] != T_END ||
      b->data[d.pos + 1] != T_NIL)
    return -1;
  d.pos = start;
  for (lua_Integer i = 1; i <= n; i++) {
    decode_value(&d);
    lua_rawseti(L, t, offset + i);
  }
  return n;
}

/* Decodes b under a protected call: its status, the error on top. */
static int decode_protected(lua_State *L, const weft_buf *b) {
  dec d;
  memset(&d, 0, sizeof d);
  d.L = L;
  d.b = b;
  lua_pushcfunction(L, decode_k);
  lua_pushlightuserdata(L, &d);
  int status = lua_pcall(L, 1, b->count, 0);
  weft_free(b->rt, d.frames, d.fcap * sizeof *d.frames);
  return status;
}

int weft_buf_decode(lua_State *L, const weft_buf *b) {
  if (decode_plain(L, b)) return 1;
  if (!lua_checkstack(L, b->count + 8))
    luaL_error(L, "too many values to copy");
  if (decode_protected(L, b) != LUA_OK) lua_error(L);
  return b->count;
}

int weft_buf_decode_release(lua_State *L, weft_buf *b) {
  int n = b->count;
  if (decode_plain(L, b)) {
    weft_buf_release(b);
    return 1;
  }
  if (!lua_checkstack(L, n + 8)) {
    weft_buf_release(b);
    luaL_error(L, "too many values to copy");
  }
  int status = decode_protected(L, b);
  weft_buf_release(b);
  if (status != LUA_OK) lua_error(L);
  return n;
}
