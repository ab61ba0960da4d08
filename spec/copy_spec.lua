-- weft.copy: every rule of DESIGN.md "Values crossing states", through a
-- real buffer round trip (encode out of the state, decode back into it).
local weft = require "weft"
local copy = weft.copy

local function pack(...) return { n = select("#", ...), ... } end

-- The message of a failed copy, with the "file:line:" prefix Lua adds to
-- errors raised from C left out.
local function copy_error(...)
  local ok, err = pcall(copy, ...)
  assert.is_false(ok, "the copy should have been refused")
  return err
end

describe("weft.copy", function()
  describe("scalars", function()
    it("keeps nil, booleans and the number of values", function()
      local r = pack(copy(nil, true, false, nil))
      assert.equal(4, r.n)
      assert.is_nil(r[1])
      assert.is_true(r[2])
      assert.is_false(r[3])
      assert.is_nil(r[4])
      assert.equal(0, select("#", copy()))
    end)

    it("keeps integers as integers, at the extremes too", function()
      for _, v in ipairs { 0, 1, -1, math.maxinteger, math.mininteger } do
        local r = copy(v)
        assert.equal("integer", math.type(r))
        assert.equal(v, r)
      end
    end)

    it("keeps floats as floats: integral, -0.0, inf, NaN", function()
      assert.equal("float", math.type(copy(3.0)))
      assert.equal(3.0, copy(3.0))
      assert.equal(0.1, copy(0.1))
      assert.equal(-math.huge, 1 / copy(-0.0))
      assert.equal(math.huge, 1 / copy(0.0))
      assert.equal(math.huge, copy(math.huge))
      assert.equal(-math.huge, copy(-math.huge))
      local nan = copy(0 / 0)
      assert.equal("float", math.type(nan))
      assert.is_true(nan ~= nan)
    end)

    it("keeps strings byte for byte", function()
      local bytes = {}
      for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
      local all = table.concat(bytes)
      assert.equal(all, copy(all))
      assert.equal("", copy(""))
      assert.equal("a\0b", copy("a\0b"))
      local big = string.rep("xyz\0", 1 << 18)
      assert.equal(big, copy(big))
    end)
  end)

  describe("tables", function()
    it("makes a new table with the same contents", function()
      local t = { 1, 2, 3, x = "y", [2.5] = true, [-1] = "neg", [true] = 0,
                  nested = { deeper = { "z" } } }
      local r = copy(t)
      assert.are_not.equal(t, r)
      assert.are.same(t, r)
      assert.are_not.equal(t.nested, r.nested)
    end)

    it("keeps arrays with holes", function()
      local r = copy { 1, nil, 3, [10] = 10 }
      assert.equal(1, r[1])
      assert.is_nil(r[2])
      assert.equal(3, r[3])
      assert.equal(10, r[10])
    end)

    it("preserves cycles", function()
      local t = { name = "root" }
      t.self = t
      t.child = { parent = t }
      local r = copy(t)
      assert.equal(r, r.self)
      assert.equal(r, r.child.parent)
      assert.are_not.equal(t, r)
    end)

    it("preserves shared references inside a value", function()
      local shared = { "s" }
      local r = copy { a = shared, b = shared, list = { shared, shared } }
      assert.equal(r.a, r.b)
      assert.equal(r.a, r.list[1])
      assert.equal(r.a, r.list[2])
      assert.are_not.equal(shared, r.a)
    end)

    it("preserves aliasing across the values of one copy", function()
      local t = {}
      local a, b, c = copy(t, t, { t })
      assert.equal(a, b)
      assert.equal(a, c[1])
    end)

    it("keeps tables used as keys, with their identity", function()
      local k = { "key" }
      local r = copy { [k] = "v", k = k }
      assert.equal("v", r[r.k])
      assert.are.same({ "key" }, r.k)
    end)

    it("copies metatables, sharing one metatable between tables", function()
      local mt = { __index = function(_, key) return key .. "!" end }
      local a, b = setmetatable({}, mt), setmetatable({}, mt)
      local r = copy { a = a, b = b }
      assert.equal("x!", r.a.x)
      local rmt = getmetatable(r.a)
      assert.are_not.equal(mt, rmt)
      assert.equal(rmt, getmetatable(r.b))
    end)

    it("copies a table that is its own metatable", function()
      local t = { __index = { hello = "world" } }
      setmetatable(t, t)
      local r = copy(t)
      assert.equal(r, getmetatable(r))
      assert.equal("world", r.hello)
    end)

    it("reads raw: no metamethod runs during the copy", function()
      local function boom() error("metamethod called") end
      local t = setmetatable({ x = 1 }, { __index = boom, __newindex = boom,
                                          __pairs = boom, __len = boom })
      local r = copy(t)
      assert.equal(1, rawget(r, "x"))
      assert.has_error(function() return r.missing end)
    end)

    it("keeps a protected metatable protected", function()
      local t = setmetatable({}, { __metatable = "locked" })
      assert.equal("locked", getmetatable(copy(t)))
    end)

    it("gives the copy a working finalizer", function()
      -- upvalues are copied by value, so count through the globals
      rawset(_G, "weft_spec_gc_ran", 0)
      do
        local _ = copy(setmetatable({}, { __gc = function()
          rawset(_G, "weft_spec_gc_ran", rawget(_G, "weft_spec_gc_ran") + 1)
        end }))
      end
      collectgarbage()
      collectgarbage()
      -- the original and the copy each ran it once
      assert.equal(2, rawget(_G, "weft_spec_gc_ran"))
      rawset(_G, "weft_spec_gc_ran", nil)
    end)
  end)

  describe("Lua functions", function()
    it("copies upvalues by value", function()
      local n = 10
      local function add(x) n = n + x; return n end
      local r = copy(add)
      assert.equal(15, r(5))
      assert.equal(10, n)
      assert.equal(11, add(1))
    end)

    it("binds _ENV when it is not the first upvalue", function()
      local x = 42
      local function f() return x, print, _G end
      local r = copy(f)
      local a, p, g = r()
      assert.equal(42, a)
      assert.equal(print, p)
      assert.equal(_G, g)
    end)

    it("binds a custom _ENV to the receiver's globals too", function()
      -- a sandbox or module environment belongs to the sending state; the
      -- copy runs against the receiver's globals, as load(string.dump(f))
      local function make()
        local _ENV = setmetatable({ y = 7 }, { __index = _G }) -- luacheck: ignore 211
        return function() return y, print end -- luacheck: ignore 113
      end
      local y, p = copy(make())()
      assert.is_nil(y)
      assert.equal(print, p)
    end)

    it("copies mutually recursive local functions", function()
      local is_even, is_odd
      function is_even(k) if k == 0 then return true end return is_odd(k - 1) end
      function is_odd(k) if k == 0 then return false end return is_even(k - 1) end
      local e = copy(is_even)
      assert.is_true(e(10))
      assert.is_false(e(7))
    end)

    it("copies recursive local functions", function()
      local function fact(k) if k <= 1 then return 1 end return k * fact(k - 1) end
      assert.equal(3628800, copy(fact)(10))
    end)

    it("keeps upvalues shared between functions copied together", function()
      local count = 0
      local function inc() count = count + 1; return count end
      local function get() return count end
      local i, g = copy(inc, get)
      i()
      i()
      assert.equal(2, g())
      assert.equal(0, count)
      local t = copy { inc = inc, get = get }
      t.inc()
      assert.equal(1, t.get())
    end)

    it("links a function to its copied table", function()
      local t = { v = 1 }
      function t.get() return t.v end
      local r = copy(t)
      r.v = 2
      assert.equal(2, r.get())
      assert.equal(1, t.get())
    end)

    it("keeps debug information (source and lines) for tracebacks", function()
      local function f() error("boom") end
      local info, rinfo = debug.getinfo(f, "S"), debug.getinfo(copy(f), "S")
      assert.equal(info.short_src, rinfo.short_src)
      assert.equal(info.linedefined, rinfo.linedefined)
      local ok, err = pcall(copy(f))
      assert.is_false(ok)
      assert.matches("copy_spec.lua:%d+: boom", err)
    end)

    it("copies vararg functions and functions without upvalues", function()
      local r = copy(function(...) return select("#", ...), ... end)
      assert.are.same({ 3, "a", "b", "c" }, { r("a", "b", "c") })
    end)

    -- the encoder keeps the bytecode of a function that comes again and
    -- again; a function of another prototype at a collected one's
    -- address (each round below reuses the last one's) is not it
    it("copies each function as itself when the same ones come again and when addresses are reused", function()
      local function a() return "a" end
      local function b() return "b" end
      local got = {}
      for _, f in ipairs { a, a, a, b, a, a, b, b, b, a } do got[#got + 1] = copy(f)() end
      assert.equal("aaabaabbba", table.concat(got))
      local wrong = 0
      for i = 1, 200 do
        local f = i % 2 == 0 and function() return "even" end or function() return "odd" end
        if copy(f)() ~= (i % 2 == 0 and "even" or "odd") then wrong = wrong + 1 end
        f = nil -- luacheck: ignore 311
        collectgarbage()
      end
      assert.equal(0, wrong)
    end)
  end)

  describe("C functions", function()
    it("copies them by name from package.loaded", function()
      assert.equal(print, copy(print))
      assert.equal(string.format, copy(string.format))
      assert.equal(io.write, copy(io.write))
      assert.equal(require, copy(require))
    end)

    it("copies modules in package.loaded by name, not by value", function()
      assert.equal(string, copy(string))
      assert.equal(weft, copy(weft))
      local function job() return weft.now, string.rep end
      local now, rep = copy(job)()
      assert.equal(weft.now, now)
      assert.equal(string.rep, rep)
      local r = copy { lib = string, list = { math } }
      assert.equal(string, r.lib)
      assert.equal(math, r.list[1])
    end)

    it("finds modules loaded after a first copy", function()
      copy({})
      local mod = { answer = 42 }
      package.loaded["weft_spec_late"] = mod
      assert.equal(mod, copy(mod))
      package.loaded["weft_spec_late"] = nil
      local r = copy(mod)
      assert.are_not.equal(mod, r)
      assert.equal(42, r.answer)
    end)

    it("copies a module replaced in package.loaded by value", function()
      local old = { answer = 42 }
      package.loaded["weft_spec_swap"] = old
      assert.equal(old, copy(old))
      package.loaded["weft_spec_swap"] = { answer = 0 }  -- same count
      local r = copy(old)
      package.loaded["weft_spec_swap"] = nil
      assert.are_not.equal(old, r)
      assert.equal(42, r.answer)
    end)

    it("finds a module added as another is removed", function()
      package.loaded["weft_spec_gone"] = {}
      copy({})
      package.loaded["weft_spec_gone"] = nil
      local mod = {}
      package.loaded["weft_spec_new"] = mod  -- same count
      local ok, r = pcall(copy, mod)
      package.loaded["weft_spec_new"] = nil
      assert.is_true(ok, r)
      assert.equal(mod, r)
    end)

    it("follows a C function moved to another field of its module", function()
      local fn = coroutine.wrap(function() end)
      package.loaded["weft_spec_move"] = { a = fn }
      assert.equal(fn, copy(fn))
      package.loaded.weft_spec_move.a = nil
      package.loaded.weft_spec_move.b = fn
      local ok, r = pcall(copy, fn)
      package.loaded["weft_spec_move"] = nil
      assert.is_true(ok, r)
      assert.equal(fn, r)
    end)

    it("copies C functions of a module whose name holds a zero byte", function()
      local fn = coroutine.wrap(function() end)
      package.loaded["weft\0spec"] = { f = fn }
      local ok, r = pcall(copy, { f = fn })
      package.loaded["weft\0spec"] = nil
      assert.is_true(ok, r)
      assert.equal(fn, r.f)
    end)

    it("refuses one that package.loaded does not reach", function()
      local wrapped = coroutine.wrap(function() end)
      assert.matches("^args%[1%]%.f: cannot copy C function %(not found in package.loaded%)$",
                     copy_error { f = wrapped })
    end)

    it("finds functions of modules loaded after a first copy", function()
      copy(print)
      package.loaded["weft_spec_fake"] = { fn = coroutine.wrap(function() end) }
      local fn = package.loaded.weft_spec_fake.fn
      assert.equal(fn, copy(fn))
      package.loaded["weft_spec_fake"] = nil
    end)
  end)

  describe("weft handles", function()
    it("refuses a handle the collector released (reached again through a finalizer)", function()
      local msg
      do
        local holder = {}
        -- made before the handle, so finalized after it (Lua runs
        -- finalizers in the reverse order they were marked); both become
        -- garbage at once, at the end of this block
        local fin = setmetatable({}, { __gc = function()
          msg = select(2, pcall(weft.copy, holder))
        end })
        holder.t = { [weft.with_cancel(weft.background())] = true }
        assert(fin)
      end
      collectgarbage()
      collectgarbage()
      assert.matches("cannot copy userdata %(weft.context%) %(a released handle: its __gc ran%) as a table key", msg)
    end)

    it("shares a future by reference, also one just made by submit", function()
      local p = weft.pool { workers = 1 }
      local f = p:submit(weft.background(), function() return 1 end)
      assert.equal(f, copy(f))
      local r = copy { f, { f } }
      assert.equal(f, r[1])
      assert.equal(f, r[2][1])
      local ch = weft.chan(1)
      local g = p:submit(weft.background(), function() return 2 end)
      assert(ch:try_send(g))
      assert.equal(g, ch:try_recv())
      assert.same({ true, 2 }, { g:wait(weft.with_timeout(weft.background(), 10)) })
      p:close()
    end)


    it("shares contexts by reference", function()
      local ctx = weft.with_cancel(weft.background())
      assert.equal(ctx, copy(ctx))
      local r = copy { ctx = ctx, again = ctx }
      assert.equal(ctx, r.ctx)
      assert.equal(ctx, r.again)
    end)
  end)

  describe("refused values", function()
    it("names the type and the path", function()
      assert.equal("args[1].conn: cannot copy userdata (FILE*)",
                   copy_error { conn = io.stdout })
      assert.equal("args[2].conn: cannot copy userdata (FILE*)",
                   copy_error(1, { conn = io.stdout }))
      assert.equal("args[2].a[1]: cannot copy thread",
                   copy_error(1, { a = { coroutine.create(print) } }))
      assert.equal("args[1]: cannot copy thread", copy_error(coroutine.running()))
      assert.equal('args[1]["a b"][true][2.5]: cannot copy userdata (FILE*)',
                   copy_error { ["a b"] = { [true] = { [2.5] = io.stderr } } })
    end)

    it("names keys, metatables and upvalues", function()
      assert.equal("args[1].t: cannot copy userdata (FILE*) as a table key",
                   copy_error { t = { [io.stdout] = 1 } })
      assert.equal("args[1]<metatable>.__index: cannot copy userdata (FILE*)",
                   copy_error(setmetatable({}, { __index = io.stdout })))
      local out = io.stdout
      local function f() return out end
      assert.equal("args[1].cb<upvalue out>: cannot copy userdata (FILE*)",
                   copy_error { cb = f })
    end)

    it("leaves the state usable after a failed copy", function()
      local ctx = weft.with_cancel(weft.background())
      for _ = 1, 20000 do
        local ok = pcall(copy, { ctx, { deep = { io.stdout } } }, "x")
        assert.is_false(ok)
      end
      assert.are.same({ 1, { 2 } }, copy { 1, { 2 } })
      assert.equal(ctx, copy(ctx))
    end)
  end)

  describe("deep nesting", function()
    local function nest(depth)
      local root = {}
      local cur = root
      for _ = 1, depth do
        cur.next = {}
        cur = cur.next
      end
      return root
    end

    it("copies 100,000 levels", function()
      local r = copy(nest(100000))
      local depth, cur = 0, r
      while cur.next do depth, cur = depth + 1, cur.next end
      assert.equal(100000, depth)
    end)

    it("fails cleanly past the Lua stack limit, and the state recovers", function()
      local ok, err = pcall(copy, nest(1000000))
      assert.is_false(ok)
      assert.matches("nested too deeply", err)
      assert.are.same({ a = { 1 } }, copy { a = { 1 } })
    end)

    it("copies 100,000 nested functions", function()
      local f = function() return 0 end
      for _ = 1, 100000 do
        local inner = f
        f = function() return inner end
      end
      local r, depth = copy(f), 0
      while true do
        local v = r()
        if type(v) ~= "function" then break end
        r, depth = v, depth + 1
      end
      assert.equal(100000, depth)
    end)
  end)
end)
