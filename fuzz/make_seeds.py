#!/usr/bin/env python3
"""Writes the hand-made seeds of fuzz/corpus/value/ (seed-*), one per feature
of the stack machine in value_fuzz.c.  Run from the repository root:

    python3 fuzz/make_seeds.py

The byte layout mirrors value_fuzz.c: two header bytes (h0, h1), then ops,
each an opcode byte and its operands.  Keep the opcode numbers in step with
the enum there.
"""
import os
import struct

(NIL, BOOL, INT, FLOAT, SSTR, LSTR, TABLE, SETKEY, SETIDX, ALIAS, SETMETA,
 METAFIELD, FUNC, SETUP, JOIN, REFUSED, LIB, GC, POP, DUP, BOX, HANDLE,
 OPENUP, FAIL, MODULE) = range(25)

# indexes into value_fuzz.c's tables
TM = {n: i for i, n in enumerate(
    "__index __newindex __call __gc __mode __eq __len __close __name "
    "__metatable __tostring __lt __le __concat __unm __add __pairs".split())}
LIBS = {n: i for i, n in enumerate(
    "string math table utf8 coroutine os io package debug weft.core _G "
    "strmeta loaded type math.type rawequal rawget select tonumber "
    "string.len string.lower math.abs math.max getmetatable assert error "
    "string.format pcall utf8.char ipairs require".split())}
INTS = [0, 1, -1, 2, 3, 7, 10, 255, 256, -129, 65536, 2**31 - 1, -2**31,
        2**31, 2**53, 2**53 + 1, 2**63 - 1, -2**63, -2**63 + 1]
FLOATS = ["0", "-0", "1", "-1", "1.5", "-2.5", "2", "0.1", "max", "-max",
          "subnormal", "-subnormal", "min", "inf", "-inf", "nan", "-nan",
          "snan", "payload-nan", "2^53+1", "2^63", "-2^63", "100"]
SNIP_ID, SNIP_X, SNIP_XY, SNIP_XYZ, SNIP_TYPE, SNIP_CALLX, SNIP_REC, \
    SNIP_INDEX, SNIP_NESTED, SNIP_CONSTS, SNIP_VARARG, SNIP_STR, SNIP_EQ, \
    SNIP_CHUNK, SNIP_PCALL, SNIP_CONST = range(16)
# OP_REFUSED kinds
THREAD, LIGHTUD, STDOUT, PLAINUD, CFUNC, CCLOSURE, NAMEDUD = range(7)


def hdr(h0=0, roots=1, args=True, release=False, collect_c=False,
        release_first=False, offset=False):
    h1 = (roots - 1) | (8 if args else 0) | (16 if release else 0) | \
        (32 if collect_c else 0) | (64 if release_first else 0) | \
        (128 if offset else 0)
    return bytes([h0, h1])


def gc_modes(a=0, b=0, c=0, self_dest=False, collect_b=False):
    return a | b << 2 | c << 4 | (64 if self_dest else 0) | \
        (128 if collect_b else 0)


def b(*xs):
    return bytes(xs)


def nil():
    return b(NIL)


def boolean(v):
    return b(BOOL, 1 if v else 0)


def int_special(v):
    """An integer from value_fuzz.c's list, else its 8 bytes."""
    if v in INTS:
        return b(INT, INTS.index(v))
    return int_raw(v)


def int_raw(v):
    return b(INT, 0x80) + struct.pack("<q", v)


def flt(name):
    return b(FLOAT, FLOATS.index(name))


def flt_raw(v):
    return b(FLOAT, 0x80) + struct.pack("<d", v)


def sstr(s):
    assert len(s) <= 15
    return b(SSTR, len(s)) + s


def lstr(n, pat):
    assert 41 <= n <= 600 and 1 <= len(pat) <= 8
    k = n - 41
    return b(LSTR, k & 0xff, k >> 8, len(pat) - 1) + pat


def table(narr=0, nrec=0):
    return b(TABLE, narr, nrec)


# keys for SETKEY: (kind, operand bytes)
def k_small(v):
    return b(0, v + 5)


def k_int(v):
    return b(1) + int_special(v)[1:]


def k_float(name):
    return b(2) + flt(name)[1:]


def k_float_raw(v):
    return b(2) + flt_raw(v)[1:]


def k_bool(v):
    return b(3, 1 if v else 0)


def k_str(s):
    return b(4) + sstr(s)[1:]


def k_long(n, pat):
    return b(5) + lstr(n, pat)[1:]


def k_below():
    return b(6)


def k_obj(i):
    return b(7, i)


def setkey(t, key):
    return b(SETKEY, t) + key


def setidx(t, n):
    return b(SETIDX, t, n - 1)


def setidx_special(t, v):
    return b(SETIDX, t, 0x80 | INTS.index(v))


def alias(i):
    return b(ALIAS, i)


def setmeta(t, m):
    assert m % 5 != 0
    return b(SETMETA, t, m)


def clearmeta(t):
    return b(SETMETA, t, 0)


def metafield(t, name, mode=None):
    if name == "__mode":
        return b(METAFIELD, t, TM[name], ["k", "v", "kv"].index(mode))
    return b(METAFIELD, t, TM[name])


def func(s, unique=False, strip=False):
    return b(FUNC, s, (1 if unique else 0) | (2 if strip else 0))


def setup(f, i):
    return b(SETUP, f, i - 1)


def join(f1, i1, f2, i2):
    return b(JOIN, f1, i1 - 1, f2, i2 - 1)


def refused(kind, *extra):
    return b(REFUSED, kind, *extra)


def lib(name):
    return b(LIB, LIBS[name])


def gc(k=0, mode=None):
    return b(GC, k) + (b(mode) if k == 3 else b())


def pop():
    return b(POP)


def dup(k=0):
    return b(DUP, k)


def box(data):
    return b(BOX, len(data)) + data


ENCODE_A, DECODE_B, ENCODE_B, DECODE_C = range(1, 5)


def fail(phase, engine, after):
    """The allocator of the state (or the engine's) fails after `after`
    allocations during `phase`."""
    return b(FAIL, phase | (16 if engine else 0), after & 0xff, after >> 8)


def module_set(t):
    """package.loaded["fz.mod"] = tables[t]"""
    return b(MODULE, 0, t)


def module_remove():
    return b(MODULE, 1, 0)


def module_cmod(nul=False):
    """package.loaded["fz.cmod"] = {f = stray_cfunction}, pushed (named
    "fz.c\\0mod" with nul)"""
    return b(MODULE, 2, 1 if nul else 0)


def module_fmod():
    """package.loaded["fz.fmod"] = module_cfunction, pushed"""
    return b(MODULE, 3, 0)


def warm():
    """encodes the top value and drops the buffer"""
    return b(MODULE, 4, 0)


def receivers(mode):
    """0: lack the fz.* modules, 1: have them, 2: have them differently"""
    return b(MODULE, 5 + mode, 0)


def handle(k):
    return b(HANDLE, k)


def openup():
    return b(OPENUP)


SEEDS = {}


def seed(name, data):
    """A seed; names starting with crash- reproduce an open engine bug
    (fuzz/README.md) and keep their name."""
    name = name if name.startswith("crash-") else "seed-" + name
    assert name not in SEEDS
    SEEDS[name] = data


# Conventions: the values copied are the top `roots` values of the
# machine's stack, so most seeds end by pushing what they built (alias(0):
# the first table or function made).  Indexes are into three lists kept in
# creation order: tables (setkey, setidx, setmeta, metafield), functions
# (setup, join) and objects, tables and functions together (alias, k_obj);
# boxes, handles and refused values are in none (use dup).  Upvalue numbers, from
# debug.getupvalue: s1 x; s2 y,x; s3 x,y,z; s4 _ENV; s5 _ENV,x; s6 _ENV,f;
# s7 _ENV,t; s8 x,y; s10 _ENV,x; s11 s; s12 _ENV,x,y; s14 _ENV,x,y.

# scalars (one value: the encoder's scalar fast path)
seed("scalar-int", hdr() + int_special(-2**63))
seed("scalar-float-negzero", hdr() + flt("-0"))
seed("scalar-string-zeros", hdr() + sstr(b"a\0b\0"))
seed("scalar-nil", hdr() + nil())
seed("empty", hdr())  # no value at all
seed("ints", hdr(roots=8) + b"".join(int_special(v) for v in INTS[-8:]))
seed("ints-raw", hdr(roots=4) + int_raw(0x0123456789abcdef) + int_raw(-2) +
     boolean(True) + boolean(False))
seed("floats", hdr(roots=8) + b"".join(flt(n) for n in FLOATS[:8]))
seed("floats-edge", hdr(roots=8) + b"".join(flt(n) for n in FLOATS[8:16]))
seed("floats-nan", hdr(roots=8) + b"".join(flt(n) for n in FLOATS[15:]) +
     flt_raw(1e-300))
seed("strings", hdr(roots=4) + sstr(b"") + sstr(b"\0") +
     sstr(b"fifteen bytes!!") + lstr(600, b"ab\0cd\xff\x80\0"))
seed("string-long-key-and-value", hdr() + table() + lstr(300, b"xyz") +
     setkey(0, k_long(41, b"\0")) + lstr(45, b"v") +
     setkey(0, k_long(42, b"k")))
# tables
seed("table-array", hdr() + table(4, 0) + b"".join(
    int_special(v) + setidx(0, i + 1) for i, v in enumerate([1, 2, 3, 7])))
seed("table-holes", hdr() + table() + sstr(b"a") + setidx(0, 1) +
     sstr(b"c") + setidx(0, 3) + flt("1.5") + setidx(0, 8) + nil() +
     setidx(0, 1))
seed("table-presized-holes", hdr() + table(8, 8) + boolean(True) +
     setidx(0, 2) + boolean(False) + setidx(0, 7) + int_special(0) +
     setidx_special(0, 2**63 - 1) + int_special(1) + setidx_special(0, -1) +
     int_special(2) + setidx_special(0, 0))
seed("table-keys", hdr() + table() +
     int_special(1) + setkey(0, k_float("1.5")) +
     int_special(2) + setkey(0, k_float("2")) +
     int_special(3) + setkey(0, k_float("-0")) +
     int_special(4) + setkey(0, k_float("inf")) +
     int_special(5) + setkey(0, k_float("-inf")) +
     int_special(6) + setkey(0, k_int(-2**63)) +
     int_special(7) + setkey(0, k_bool(True)) +
     int_special(10) + setkey(0, k_bool(False)) +
     int_special(255) + setkey(0, k_str(b"a\0b")) +
     int_special(256) + setkey(0, k_str(b"")) +
     int_special(0) + setkey(0, k_float("2^63")) +
     int_special(0) + setkey(0, k_float("subnormal")) +
     int_special(0) + setkey(0, k_small(-5)) +
     int_special(0) + setkey(0, k_float("nan")) +  # a NaN key: not set
     pop() + alias(0))
seed("table-cycle", hdr() + table() + alias(0) + setkey(0, k_str(b"self")) +
     alias(0) + setidx(0, 1))
seed("table-alias", hdr(roots=3) + table() + table() + alias(1) +
     setkey(0, k_str(b"a")) + alias(1) + setkey(0, k_str(b"b")) + alias(1))
seed("table-mutual-cycle", hdr(roots=2) + table() + table() + alias(1) +
     setkey(0, k_str(b"next")) + alias(0) + setkey(1, k_str(b"next")))
seed("table-deep", hdr() + table() + b"".join(
    table() + setidx(i, 1) for i in range(80)) + alias(0))
seed("table-keys-objects", hdr() + table() + table() + table() +
     int_special(1) + setkey(0, k_obj(1)) + int_special(2) +
     setkey(0, k_obj(2)) + alias(2) + setkey(1, k_str(b"t2")) +
     func(SNIP_ID) + int_special(3) + setkey(0, k_obj(3)) +
     pop() + pop() + pop() + alias(0))
seed("table-key-below", hdr() + table() + sstr(b"key") + int_special(7) +
     setkey(0, k_below()) + table() + int_special(3) + setkey(0, k_below()) +
     alias(0))
seed("table-key-cycle", hdr() + table() + table() + alias(0) +
     setkey(1, k_obj(0)) + int_special(1) + setkey(0, k_obj(1)) + pop())
# metatables
seed("meta-index-fn", hdr() + table() + table() + setmeta(0, 1) +
     func(SNIP_X) + int_special(7) + setup(0, 1) + metafield(1, "__index") +
     pop() + alias(0))
seed("meta-shared", hdr(roots=3) + table() + table() + table() +
     setmeta(0, 2) + setmeta(1, 2) + alias(2) + metafield(2, "__index") +
     sstr(b"T") + metafield(2, "__name"))
seed("meta-self", hdr() + table() + setmeta(0, 1) + func(SNIP_TYPE) +
     metafield(0, "__call") + func(SNIP_EQ) + metafield(0, "__eq"))
seed("meta-gc", hdr(gc_modes(collect_b=True), collect_c=True) +
     table() + table() + func(SNIP_ID) + metafield(1, "__gc") +
     setmeta(0, 1) + lib("error") + metafield(1, "__close") + pop())
seed("meta-metatable-field", hdr() + table() + table() + sstr(b"locked") +
     metafield(1, "__metatable") + setmeta(0, 1) + table() + setmeta(1, 2) +
     pop() + pop())
seed("meta-clear", hdr() + table() + table() + setmeta(0, 1) + clearmeta(0) +
     pop())
seed("weak-values", hdr(gc_modes(1, 1, 1, collect_b=True), collect_c=True) +
     table() + table() + metafield(1, "__mode", "v") + setmeta(0, 1) +
     table() + setkey(0, k_str(b"w")) + sstr(b"s") + setkey(0, k_str(b"s")) +
     func(SNIP_ID) + setidx(0, 1) + pop())
seed("weak-keys", hdr(gc_modes(2, 2, 3, collect_b=True), collect_c=True) +
     table() + table() + metafield(1, "__mode", "k") + setmeta(0, 1) +
     table() + int_special(1) + setkey(0, k_obj(2)) + pop() +
     int_special(2) + setkey(0, k_str(b"strong")) + pop())
seed("weak-kv-self", hdr(gc_modes(3, 3, 3, True, True), collect_c=True) +
     table() + metafield(0, "__mode", "kv") + setmeta(0, 1) + alias(0) +
     setkey(0, k_str(b"me")))
# functions
for s in range(16):
    seed("func-%02d" % s, hdr() + func(s))
seed("func-upvalues", hdr(roots=2) + func(SNIP_XYZ) + table() +
     setup(0, 1) + sstr(b"y") + setup(0, 2) + flt("-0") + setup(0, 3) +
     alias(1) + alias(0))
seed("func-upvalue-self", hdr() + func(SNIP_X) + alias(0) + setup(0, 1))
seed("func-recursive", hdr() + func(SNIP_REC))
seed("func-call-chain", hdr() + func(SNIP_CALLX) + func(SNIP_CALLX) +
     setup(0, 2) + func(SNIP_CONSTS) + setup(1, 2))
seed("func-join", hdr(roots=2) + func(SNIP_XY) + func(SNIP_XY) +
     join(1, 1, 0, 2) + int_special(3) + setup(0, 2))
seed("func-join-self", hdr() + func(SNIP_XY) + join(0, 2, 0, 1) +
     sstr(b"shared") + setup(0, 1))
seed("func-env-sandbox", hdr() + func(SNIP_TYPE) + table() + setup(0, 1))
seed("func-env-mixed", hdr(roots=2) + func(SNIP_TYPE) + func(SNIP_X) +
     join(1, 1, 0, 1))
seed("func-env-mixed-order", hdr(roots=2) + func(SNIP_X) + func(SNIP_TYPE) +
     table() + setup(0, 1) + join(0, 1, 1, 1))
seed("func-stripped", hdr(roots=2) + func(SNIP_CALLX, strip=True) +
     func(SNIP_INDEX, strip=True) + table() + setup(1, 2) + alias(0) +
     setup(1, 1) + alias(0))
seed("func-in-table", hdr() + table() + func(SNIP_NESTED) +
     setkey(0, k_str(b"f")) + func(SNIP_PCALL) + lib("error") + setup(1, 2) +
     setidx(0, 1))
seed("func-eq-meta", hdr() + func(SNIP_EQ) + table() + table() + table() +
     setmeta(0, 2) + setmeta(1, 2) + func(SNIP_ID) + metafield(2, "__eq") +
     pop() + alias(1) + setup(0, 2) + alias(2) + setup(0, 3) + pop() + pop())
seed("func-index-meta", hdr() + func(SNIP_INDEX) + table() + table() +
     setmeta(0, 1) + lib("string") + metafield(1, "__index") +
     pop() + setup(0, 2))
seed("func-as-keys-collapse", hdr() + table() + func(SNIP_CHUNK) +
     int_special(1) + setkey(0, k_obj(1)) + func(SNIP_CHUNK) +
     int_special(2) + setkey(0, k_obj(2)) + alias(1) + setidx(0, 1) +
     alias(2) + setidx(0, 2) + pop() + pop())
seed("func-as-keys-unique", hdr() + table() + func(SNIP_CHUNK, True) +
     int_special(1) + setkey(0, k_obj(1)) + func(SNIP_CHUNK, True) +
     int_special(2) + setkey(0, k_obj(2)) + pop() + pop())
seed("func-values-collapse", hdr(roots=3) + func(SNIP_TYPE) +
     func(SNIP_TYPE) + func(SNIP_ID) + table() + alias(0) + setidx(3, 1) +
     alias(1) + setidx(3, 2))
seed("func-same-code-other-upvalues", hdr(roots=2) + func(SNIP_X) +
     func(SNIP_X) + int_special(1) + setup(0, 1) + int_special(2) +
     setup(1, 1))
seed("func-open-upvalues", hdr(roots=2) + openup() + openup() +
     sstr(b"open") + setup(0, 1) + join(1, 2, 0, 1))
seed("func-budget", hdr() + func(SNIP_CALLX) + alias(0) + setup(0, 2))
seed("func-pcall-error", hdr() + func(SNIP_PCALL) + lib("error") +
     setup(0, 2) + table() + setup(0, 3))
# refused values
seed("refused-thread-root", hdr(roots=2) + int_special(1) + refused(THREAD))
seed("refused-light-deep", hdr(args=False) + table() + table() +
     alias(1) + setidx(0, 1) + table() + alias(2) + setkey(1, k_str(b"b")) +
     refused(LIGHTUD, 9) + setkey(2, k_str(b"c")) + pop() + pop() +
     alias(0))
seed("refused-stdout-in-meta", hdr() + table() + table() + setmeta(0, 1) +
     refused(STDOUT) + metafield(1, "__index") + pop())
seed("refused-userdata-key", hdr() + table() + refused(PLAINUD, 8, 1) +
     int_special(1) + setkey(0, k_below()))
seed("refused-cfunc-upvalue", hdr() + func(SNIP_X) + refused(CFUNC) +
     setup(0, 1))
seed("refused-cclosure", hdr(roots=3) + table() + refused(CCLOSURE) +
     setidx(0, 2) + int_special(2))
seed("refused-named-userdata", hdr(args=False) + table() +
     refused(NAMEDUD) + setkey(0, k_str(b"u")))
seed("refused-string-metatable", hdr() + lib("strmeta"))
seed("refused-in-env", hdr() + func(SNIP_TYPE) + refused(THREAD) +
     setup(0, 1))
seed("refused-env-mixed", hdr(roots=2) + func(SNIP_TYPE) + func(SNIP_X) +
     refused(THREAD) + setup(0, 1) + join(1, 1, 0, 1))
seed("refused-env-mixed-reversed", hdr(roots=2) + func(SNIP_TYPE) +
     func(SNIP_X) + refused(THREAD) + setup(0, 1) + join(1, 1, 0, 1) +
     alias(0))
seed("refused-after-gc", hdr(gc_modes(1)) + table() + b"".join(
    table() + setidx(i, 1) for i in range(20)) + gc(0) +
    refused(LIGHTUD, 1) + setidx(19, 2) + gc(1))
# library values, modules, handles, boxes
seed("lib-modules", hdr(roots=8) + b"".join(lib(n) for n in
     ["string", "math", "table", "utf8", "coroutine", "os", "io", "debug"]))
seed("lib-more-modules", hdr(roots=4) + b"".join(lib(n) for n in
     ["package", "weft.core", "_G", "loaded"]))
seed("lib-cfunctions", hdr(roots=3) + table() + b"".join(
    lib(n) + setkey(0, k_str(n.encode()[:15])) for n in
    ["type", "math.type", "rawequal", "rawget", "select", "tonumber",
     "string.len", "string.lower", "math.abs", "math.max", "getmetatable",
     "assert", "error", "string.format", "pcall", "utf8.char", "ipairs"]) +
     lib("string.format") + lib("ipairs"))
seed("lib-cfunction-keys", hdr() + table() + lib("type") + int_special(1) +
     setkey(0, k_below()) + lib("string.len") + lib("math.abs") +
     setkey(0, k_below()))
seed("lib-require", hdr(roots=2) + lib("require") + func(SNIP_X) +
     lib("require") + setup(1, 1))
seed("lib-globals-in-table", hdr() + table() + lib("_G") +
     setkey(0, k_str(b"G")) + lib("loaded") + setidx(0, 1))
seed("lib-called", hdr() + table() + func(SNIP_CALLX) + lib("math.type") +
     setup(0, 2) + setidx(0, 1) + func(SNIP_INDEX) + table() + setup(1, 2) +
     setidx(0, 2) + table() + setmeta(1, 2) + lib("getmetatable") +
     metafield(2, "__index") + pop())
seed("handles", hdr(roots=4) + handle(0) + handle(1) + handle(2) + table() +
     alias(0) + setidx(0, 1))
seed("handle-keys", hdr(roots=2) + table() + handle(1) + int_special(1) +
     setkey(0, k_below()) + handle(2) + dup(0) + setidx(0, 1))
seed("handle-called", hdr() + func(SNIP_PCALL) + handle(2) + setup(0, 2) +
     sstr(b"cause") + setup(0, 3))
seed("boxes", hdr(roots=4) + box(b"") + box(b"\0\1\2") + box(bytes(100)) +
     table() + box(b"in a table") + setidx(0, 1))
seed("box-aliased", hdr(roots=3) + box(b"same") + table() + dup(1) +
     setidx(0, 1) + dup(1))
seed("box-refused", hdr() + table() + box(b"\xffno") + setidx(0, 1))
seed("box-twice", hdr() + table() + box(b"\xfemore") +
     setkey(0, k_str(b"b")))
# GC, states, flags
seed("gc-ops", hdr(gc_modes(1, 2, 3)) + table() + table() + alias(1) +
     setidx(0, 1) + gc(0) + gc(1) + gc(2) + gc(3, 2) + table() + pop() +
     gc(3, 1) + gc(0) + pop())
seed("gc-aggressive-graph", hdr(gc_modes(1, 1, 1, collect_b=True),
                                roots=3, collect_c=True) +
     table(3, 3) + table() + func(SNIP_XY) + alias(1) + setup(2, 1) +
     alias(0) + setup(2, 2) + lstr(500, b"gc") + setkey(1, k_str(b"s")) +
     alias(2) + setkey(0, k_str(b"f")) + table() + setmeta(1, 2) +
     func(SNIP_ID) + metafield(2, "__gc") + pop())
seed("gc-generational-graph", hdr(gc_modes(3, 3, 2)) + table() +
     b"".join(table() + alias(i) + setkey(i + 1, k_str(b"up"))
              for i in range(12)))
seed("dest-self", hdr(gc_modes(self_dest=True), roots=2, release=True) +
     table() + alias(0) + setkey(0, k_str(b"self")) + func(SNIP_ID) +
     setidx(0, 1) + alias(0))
seed("dest-self-release-first", hdr(gc_modes(2, 1, 0, True, True), roots=2,
                                    release_first=True, collect_c=True) +
     table() + func(SNIP_CHUNK) + setidx(0, 1) + func(SNIP_CHUNK))
seed("array-into-sequence", hdr(offset=True) + table(3, 0) +
     int_special(1) + setidx(0, 1) + sstr(b"two") + setidx(0, 2) +
     flt("-0") + setidx(0, 3))
seed("array-into-not-plain", hdr(roots=2) + table() + int_special(1) +
     setidx(0, 1) + table() + setidx(0, 2) + table())
seed("array-into-meta", hdr(offset=True) + table() + int_special(1) +
     setidx(0, 1) + table() + setmeta(0, 1) + pop())
seed("array-into-empty", hdr(offset=True) + table())
seed("stack-overflow", hdr(roots=8) + b"".join(
    int_special(INTS[i % len(INTS)]) for i in range(40)) + dup(3) + pop())
seed("eight-roots-mixed", hdr(roots=8, args=False) + nil() + boolean(True) +
     flt("nan") + sstr(b"s") + table() + func(SNIP_ID) + lib("type") +
     handle(0))

# allocation failures: a graph with a bit of everything, then a failure in
# each phase, of the state's allocator and of the engine's
RICH = (table(3, 3) + table() + func(SNIP_XY) + alias(1) + setup(0, 1) +
        alias(0) + setup(0, 2) + lstr(300, b"oom") + setkey(1, k_str(b"s")) +
        alias(2) + setkey(0, k_str(b"f")) + table() + setmeta(1, 2) +
        func(SNIP_ID) + metafield(2, "__gc") + handle(1) + setidx(0, 1) +
        box(bytes(80)) + setidx(0, 2) + lib("string") + setidx(0, 3) +
        lib("type") + setidx(0, 4) + pop())
for phase, pname in [(ENCODE_A, "encode-a"), (DECODE_B, "decode-b"),
                     (ENCODE_B, "encode-b"), (DECODE_C, "decode-c")]:
    for engine in (0, 1):
        for after in (0, 5, 40):
            seed("oom-%s-%s-%d" % (pname, "engine" if engine else "lua", after),
                 hdr(roots=3, release=after == 5) + fail(phase, engine, after) +
                 RICH)

# the machine's own modules
for mode, mname in [(0, "missing"), (1, "same"), (2, "other")]:
    seed("module-table-" + mname, hdr(roots=2) + receivers(mode) + table() +
         module_set(0) + table() + alias(0) + setidx(1, 1) +
         sstr(b"x") + setkey(0, k_str(b"x")))
    seed("module-cfunctions-" + mname, hdr(roots=2) + receivers(mode) +
         table() + module_cmod() + setidx(0, 1) + refused(CFUNC) +
         setidx(0, 2) + module_fmod() + setidx(0, 3) + func(SNIP_X) +
         refused(CFUNC) + setup(0, 1))
seed("module-removed", hdr() + receivers(0) + table() + module_set(0) +
     module_remove() + alias(0) + setidx(0, 1))
seed("module-replaced", hdr(roots=2) + receivers(1) + table() + table() +
     module_set(0) + module_set(1))
# open bug: value.c's index of package.loaded is trusted while
# package.loaded has as many entries as when it was built
seed("crash-stale-module-index-replaced", hdr() + table() + module_set(0) +
     warm() + table() + module_set(1))
seed("crash-stale-module-index-removed", hdr() + table() + module_set(0) +
     warm() + module_remove() + module_cmod() + pop())
seed("module-cmod-table-other", hdr(0, roots=2, args=False, release=True,
                                    collect_c=True) + receivers(2) +
     module_cmod())
seed("loaded-table-back-home", hdr(0xff, roots=8, release=True,
                                   collect_c=True, release_first=True,
                                   offset=True) + receivers(1) + lib("loaded"))
seed("module-warm-refused", hdr() + table() + refused(THREAD) + warm() +
     pop() + warm())
# open bug: a C function of a module whose name holds a zero byte
seed("crash-cfunction-of-module-named-with-zero", hdr() + receivers(1) +
     module_cmod(nul=True) + refused(CFUNC))
# open bug: a context canceled with a cause holding its cancel function
# (here by a finalizer, at lua_close) is never freed
seed("crash-cancel-cause-holds-its-canceler", hdr() + table(7, 0) +
     handle(2) + metafield(0, "__gc") + setmeta(0, 1))
# a table of the graph made a module: its C functions are exported by it
seed("module-table-exports-cfunctions", hdr(roots=2) + receivers(1) +
     table() + lib("type") + setkey(0, k_str(b"t")) + refused(CFUNC) +
     setkey(0, k_str(b"s")) + module_set(0) + module_cmod() + pop() +
     refused(CFUNC) + lib("strmeta"))
# host values whose copy_in fails
seed("box-copyin-nothing", hdr() + table() + box(b"\xfd") + setidx(0, 1))
seed("box-copyin-two", hdr() + table() + box(b"\xfc2") + setidx(0, 1))
seed("box-copyin-raises", hdr(roots=2) + table() + box(b"\xfb!") +
     setkey(0, k_str(b"b")) + table())

# the engine fails while the encoder's map of what it has seen grows (at its
# 33rd entry, here an upvalue: 31 tables in a chain, then a function)
for after in (9, 10):
    seed("oom-encode-a-engine-upvalue-map-%d" % after,
         hdr() + fail(ENCODE_A, 1, after) + table() +
         b"".join(table() + setidx(i, 1) for i in range(30)) +
         func(SNIP_XY) + int_special(1) + setup(0, 1) + setidx(30, 1))


def main():
    out = os.path.join("fuzz", "corpus", "value")
    bugs = os.path.join("fuzz", "known-bugs")  # not replayed by make test
    os.makedirs(out, exist_ok=True)
    os.makedirs(bugs, exist_ok=True)
    for name, data in sorted(SEEDS.items()):
        # a crash-* reproducer stays in the corpus once its bug is fixed
        fixed = os.path.exists(os.path.join(out, name))
        where = bugs if name.startswith("crash-") and not fixed else out
        with open(os.path.join(where, name), "wb") as f:
            f.write(data)
    print("%d seeds written to %s" % (len(SEEDS), out))


if __name__ == "__main__":
    main()
