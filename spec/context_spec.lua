-- Contexts: the cancellation tree (DESIGN.md, "Contexts").
-- Every wait here has a bound; timings are bounds, never measurements.
local weft = require "weft"
local core = require "weft.core"

local CANCELED, DEADLINE = weft.CANCELED, weft.DEADLINE_EXCEEDED

-- Sleeps about d seconds without busy waiting: waits on a context that is
-- never canceled.
local function sleep(d)
  local c = weft.with_cancel(weft.background())
  assert.is_false(c:wait(d))
end

describe("constants", function()
  it("exports the error strings", function()
    assert.equal("context canceled", weft.CANCELED)
    assert.equal("context deadline exceeded", weft.DEADLINE_EXCEEDED)
  end)
end)

describe("background", function()
  it("is never done and has no deadline, value or cause", function()
    local bg = weft.background()
    assert.is_nil(bg:err())
    assert.is_false(bg:done())
    assert.is_nil(bg:cause())
    assert.is_nil(bg:deadline())
    assert.is_nil(bg:value("k"))
  end)

  it("is one object", function()
    assert.equal(weft.background(), weft.background())
    assert.equal(weft.background(), weft.copy(weft.background()))
  end)

  it("refuses to wait forever", function()
    local bg = weft.background()
    assert.has_error(function() bg:wait() end,
      "ctx:wait() without a timeout on a context that can never end would block forever")
    assert.has_error(function() bg:wait(math.huge) end)
    local v = weft.with_value(bg, "k", 1)
    assert.has_error(function() v:wait() end)
    assert.is_false(bg:wait(0))
    assert.is_false(v:wait(0.01))
  end)

  it("has a tostring", function()
    assert.matches("^weft.context: ", tostring(weft.background()))
  end)
end)

-- Go's TestCause table, translated.
describe("err and cause", function()
  local bg = weft.background()

  it("with_cancel: live, then canceled without a cause", function()
    local c, cancel = weft.with_cancel(bg)
    assert.is_nil(c:err())
    assert.is_nil(c:cause())
    assert.is_false(c:done())
    cancel()
    assert.equal(CANCELED, c:err())
    assert.equal(CANCELED, c:cause())
    assert.is_true(c:done())
  end)

  it("with_cancel: canceled with a cause", function()
    local c, cancel = weft.with_cancel(bg)
    cancel("boom")
    assert.equal(CANCELED, c:err())
    assert.equal("boom", c:cause())
  end)

  it("a table cause is copied to the caller", function()
    local c, cancel = weft.with_cancel(bg)
    local cause = { code = 7, list = { 1, 2 } }
    cancel(cause)
    local got = c:cause()
    assert.same(cause, got)
    assert.are_not.equal(cause, got)
    got.code = 8
    assert.equal(7, c:cause().code)
  end)

  it("a nil cause means the error", function()
    local c, cancel = weft.with_cancel(bg)
    cancel(nil)
    assert.equal(CANCELED, c:cause())
  end)

  it("an uncopyable cause raises and leaves the context live", function()
    local c, cancel = weft.with_cancel(bg)
    assert.has_error(function() cancel(coroutine.create(print)) end)
    assert.is_nil(c:err())
    cancel("later")
    assert.equal("later", c:cause())
  end)

  it("a parent's cause is its children's cause", function()
    local p, cancel = weft.with_cancel(bg)
    local c = weft.with_cancel(p)
    local gc = weft.with_value(weft.with_cancel(c), "k", "v")
    cancel("parent's cause")
    assert.equal(CANCELED, c:err())
    assert.equal("parent's cause", c:cause())
    assert.equal(CANCELED, gc:err())
    assert.equal("parent's cause", gc:cause())
  end)

  it("a child canceled first keeps its own cause", function()
    local p, pcancel = weft.with_cancel(bg)
    local c, ccancel = weft.with_cancel(p)
    ccancel("child")
    pcancel("parent")
    assert.equal("child", c:cause())
    assert.equal("parent", p:cause())
  end)

  it("a parent without a cause gives its children none", function()
    local p, cancel = weft.with_cancel(bg)
    local c = weft.with_cancel(p)
    cancel()
    assert.equal(CANCELED, c:cause())
  end)

  it("deadline exceeded: the cause is the error", function()
    local c = weft.with_timeout(bg, 0)
    assert.equal(DEADLINE, c:err())
    assert.equal(DEADLINE, c:cause())
    local d, cancel = weft.with_deadline(bg, weft.now() - 1)
    assert.equal(DEADLINE, d:err())
    cancel("too late")
    assert.equal(DEADLINE, d:cause())
  end)

  it("a parent's deadline reaches its children with its error", function()
    local p = weft.with_timeout(bg, 0.02)
    local c = weft.with_cancel(p)
    assert.is_true(c:wait(5))
    assert.equal(DEADLINE, c:err())
    assert.equal(DEADLINE, c:cause())
  end)

  it("the first cancel wins and its cause stays", function()
    local c, cancel = weft.with_cancel(bg)
    cancel("first")
    cancel("second")
    cancel()
    assert.equal("first", c:cause())
    assert.equal(CANCELED, c:err())
  end)

  it("cancel after a deadline keeps the deadline's error", function()
    local c, cancel = weft.with_timeout(bg, 0.01)
    assert.is_true(c:wait(5))
    cancel("late")
    assert.equal(DEADLINE, c:err())
    assert.equal(DEADLINE, c:cause())
  end)

  it("cancel returns nothing", function()
    local _, cancel = weft.with_cancel(bg)
    assert.equal(0, select("#", cancel("x")))
  end)
end)

describe("the tree", function()
  local bg = weft.background()

  it("a child of a done parent is done at once", function()
    local p, cancel = weft.with_cancel(bg)
    cancel("gone")
    local c1 = weft.with_cancel(p)
    local c2 = weft.with_timeout(p, 100)
    local c3 = weft.with_value(p, "k", "v")
    local c4 = weft.with_deadline(p, weft.now() + 100)
    for _, c in ipairs { c1, c2, c3, c4 } do
      assert.is_true(c:done())
      assert.equal(CANCELED, c:err())
      assert.equal("gone", c:cause())
      assert.is_true(c:wait(0))
    end
    assert.equal("v", c3:value("k"))
  end)

  it("a child of an expired parent is expired at once", function()
    local p = weft.with_timeout(bg, 0)
    local c = weft.with_cancel(p)
    assert.equal(DEADLINE, c:err())
  end)

  it("canceling a parent ends every descendant", function()
    local root, cancel = weft.with_cancel(bg)
    local all = {}
    local function grow(parent, depth)
      if depth == 0 then return end
      for i = 1, 3 do
        local c
        if i == 1 then c = weft.with_cancel(parent)
        elseif i == 2 then c = weft.with_value(parent, depth, i)
        else c = weft.with_timeout(parent, 100) end
        all[#all + 1] = c
        grow(c, depth - 1)
      end
    end
    grow(root, 5)
    assert.equal(3 + 9 + 27 + 81 + 243, #all)
    for _, c in ipairs(all) do assert.is_false(c:done()) end
    cancel()
    for _, c in ipairs(all) do assert.equal(CANCELED, c:err()) end
  end)

  it("canceling a child leaves the parent and siblings live", function()
    local p = weft.with_cancel(bg)
    local a, cancel_a = weft.with_cancel(p)
    local b = weft.with_cancel(p)
    local a1 = weft.with_cancel(a)
    cancel_a()
    assert.is_true(a:done())
    assert.is_true(a1:done())
    assert.is_false(p:done())
    assert.is_false(b:done())
  end)

  it("cancel removes the child from its parent at once", function()
    local p = weft.with_cancel(bg)
    local keep = {}
    for i = 1, 10 do keep[i] = { weft.with_cancel(p) } end
    assert.equal(10, core._ctx_children_count(p))
    for i = 1, 10, 2 do keep[i][2]() end
    assert.equal(5, core._ctx_children_count(p))
    for i = 2, 10, 2 do keep[i][2]() end
    assert.equal(0, core._ctx_children_count(p))
  end)

  it("a collected child leaves its parent's list", function()
    local p = weft.with_cancel(bg)
    do
      for _ = 1, 100 do weft.with_cancel(p) end
    end
    collectgarbage()
    collectgarbage()
    assert.equal(0, core._ctx_children_count(p))
  end)

  it("children of the background are not linked anywhere", function()
    assert.equal(0, core._ctx_children_count(bg))
    local _ = weft.with_cancel(bg)
    assert.equal(0, core._ctx_children_count(bg))
  end)

  it("value contexts over a cancelable parent are linked and end", function()
    local p, cancel = weft.with_cancel(bg)
    local v = weft.with_value(p, "a", 1)
    local c = weft.with_cancel(v)
    assert.equal(1, core._ctx_children_count(p))
    assert.equal(1, core._ctx_children_count(v))
    cancel("x")
    assert.equal("x", v:cause())
    assert.equal("x", c:cause())
    assert.equal(0, core._ctx_children_count(p))
  end)

  it("a million short-lived contexts under one live parent do not grow",
    function()
    local p = weft.with_cancel(bg)
    local function burst(n)
      for _ = 1, n do
        local c, cancel = weft.with_cancel(p)
        cancel()
        assert(c:done())
      end
    end
    burst(10000)
    collectgarbage()
    collectgarbage()
    local mem0, live0 = collectgarbage("count"), core._ctx_live()
    burst(1000000)
    assert.equal(0, core._ctx_children_count(p))
    collectgarbage()
    collectgarbage()
    assert.equal(live0, core._ctx_live())
    assert.is_true(collectgarbage("count") < mem0 + 1024,
      "Lua memory grew by " .. (collectgarbage("count") - mem0) .. " KB")
    assert.is_false(p:done())
  end)

  it("a million short-lived timeouts do not grow", function()
    collectgarbage()
    collectgarbage()
    local live0 = core._ctx_live()
    for _ = 1, 1000000 do
      local _, cancel = weft.with_timeout(bg, 3600)
      cancel()
    end
    collectgarbage()
    collectgarbage()
    assert.equal(live0, core._ctx_live())
  end)

  it("a chain of 100,000 nested contexts cancels without recursion", function()
    local root, cancel = weft.with_cancel(bg)
    local leaf = root
    for i = 1, 100000 do
      if i % 3 == 0 then
        leaf = weft.with_value(leaf, "depth", i)
      else
        leaf = weft.with_cancel(leaf)
      end
    end
    assert.equal(99999, leaf:value("depth"))
    cancel("deep")
    assert.is_true(leaf:done())
    assert.equal("deep", leaf:cause())
    root, leaf, cancel = nil, nil, nil -- luacheck: ignore 311 (dropped for the collector)
    collectgarbage()
    collectgarbage()
  end)

  it("a chain of 100,000 live contexts is freed without recursion", function()
    local live0 = core._ctx_live()
    local leaf = weft.with_cancel(bg)
    for _ = 1, 100000 do leaf = weft.with_cancel(leaf) end
    assert.equal(live0 + 100001, core._ctx_live())
    leaf = nil -- luacheck: ignore 311 (dropped for the collector)
    collectgarbage()
    collectgarbage()
    assert.equal(live0, core._ctx_live())
  end)
end)

describe("deadlines", function()
  local bg = weft.background()

  it("a deadline in the past is exceeded at once", function()
    local c = weft.with_deadline(bg, weft.now() - 10)
    assert.equal(DEADLINE, c:err())
    assert.is_true(c:done())
    local d = weft.with_deadline(bg, -1e300)
    assert.equal(DEADLINE, d:err())
  end)

  it("deadline() reports the earliest ancestor deadline", function()
    local now = weft.now()
    local a = weft.with_deadline(bg, now + 100)
    local b = weft.with_deadline(a, now + 200)
    local c = weft.with_deadline(b, now + 50)
    local v = weft.with_value(c, "k", 1)
    local d = weft.with_cancel(v)
    assert.equal(now + 100, a:deadline())
    assert.equal(now + 100, b:deadline())
    assert.equal(now + 50, c:deadline())
    assert.equal(now + 50, v:deadline())
    assert.equal(now + 50, d:deadline())
    assert.is_nil(weft.with_cancel(bg):deadline())
    assert.is_nil(weft.with_timeout(bg, math.huge):deadline())
  end)

  it("with_timeout takes durations as numbers and strings", function()
    local t0 = weft.now()
    local c = weft.with_timeout(bg, "250ms")
    local d = c:deadline()
    assert.is_true(d >= t0 + 0.25 and d < weft.now() + 0.25 + 1e-6)
    local e = weft.with_timeout(bg, 1.5)
    assert.is_true(e:deadline() >= t0 + 1.5)
  end)

  it("timeouts fire with nobody looking", function()
    local c = weft.with_timeout(bg, 0.05)
    local child = weft.with_cancel(c)
    sleep(0.3)
    assert.equal(DEADLINE, c:err())
    assert.equal(DEADLINE, child:err())
  end)

  it("an earlier child deadline fires before its parent's", function()
    local p = weft.with_timeout(bg, 100)
    local c = weft.with_timeout(p, 0.02)
    assert.is_true(c:wait(5))
    assert.equal(DEADLINE, c:err())
    assert.is_false(p:done())
    -- c leaves p's list once its end has settled, just after its waiters
    -- are woken: give the timer thread that moment (bounded)
    local deadline = weft.now() + 5
    while core._ctx_children_count(p) ~= 0 and weft.now() < deadline do
      weft.sleep(bg, 0.001)
    end
    assert.equal(0, core._ctx_children_count(p))
  end)

  it("many timers fire in deadline order", function()
    local now = weft.now()
    local cs = {}
    for i = 20, 1, -1 do cs[i] = weft.with_deadline(bg, now + i * 0.005) end
    assert.is_true(cs[20]:wait(5))
    for i = 1, 20 do assert.equal(DEADLINE, cs[i]:err()) end
  end)

  it("a canceled timeout never reports a deadline", function()
    local c, cancel = weft.with_timeout(bg, 0.02)
    cancel()
    sleep(0.1)
    assert.equal(CANCELED, c:err())
  end)
end)

describe("wait", function()
  local bg = weft.background()

  it("returns false at its timeout", function()
    local c = weft.with_cancel(bg)
    local t0 = weft.now()
    assert.is_false(c:wait(0.05))
    local el = weft.now() - t0
    assert.is_true(el >= 0.04 and el < 2, "waited " .. el)
    assert.is_false(c:wait("10ms"))
    assert.is_false(c:wait(0))
  end)

  it("returns true at once when done", function()
    local c, cancel = weft.with_cancel(bg)
    cancel()
    assert.is_true(c:wait())
    assert.is_true(c:wait(0))
    assert.is_true(c:wait(10))
  end)

  it("wakes when a timer ends the context", function()
    local c = weft.with_timeout(bg, 0.05)
    local t0 = weft.now()
    assert.is_true(c:wait(5))
    assert.is_true(weft.now() - t0 < 2)
    assert.equal(DEADLINE, c:err())
  end)

  it("wakes when an ancestor's timer ends it", function()
    local p = weft.with_timeout(bg, 0.05)
    local c = weft.with_value(weft.with_cancel(p), "k", 1)
    local t0 = weft.now()
    assert.is_true(c:wait())
    assert.is_true(weft.now() - t0 < 2)
  end)

  it("can wait without a timeout on a context that will end", function()
    local c = weft.with_timeout(bg, 0.01)
    assert.is_true(c:wait())
  end)

  it("many short waits", function()
    for _ = 1, 50 do
      local c = weft.with_timeout(bg, 0.001)
      assert.is_true(c:wait(5))
    end
  end)
end)

describe("values", function()
  local bg = weft.background()

  it("the nearest ancestor wins", function()
    local a = weft.with_value(bg, "k", "a")
    local b = weft.with_cancel(a)
    local c = weft.with_value(b, "k", "c")
    local d = weft.with_value(c, "other", 1)
    assert.equal("a", a:value("k"))
    assert.equal("a", b:value("k"))
    assert.equal("c", c:value("k"))
    assert.equal("c", d:value("k"))
    assert.equal(1, d:value("other"))
    assert.is_nil(c:value("other"))
    assert.is_nil(d:value("missing"))
  end)

  it("values are copied in and out", function()
    local t = { n = 1, nested = { "x" } }
    local c = weft.with_value(bg, "t", t)
    t.n = 2
    local got = c:value("t")
    assert.equal(1, got.n)
    got.n = 3
    got.nested[1] = "y"
    local again = c:value("t")
    assert.equal(1, again.n)
    assert.equal("x", again.nested[1])
    assert.are_not.equal(got, again)
  end)

  it("keeps value types", function()
    local c = weft.with_value(bg, "i", 3)
    c = weft.with_value(c, "f", 3.5)
    c = weft.with_value(c, "b", false)
    c = weft.with_value(c, "s", "a\0b")
    assert.equal("integer", math.type(c:value("i")))
    assert.equal(3.5, c:value("f"))
    assert.equal(false, c:value("b"))
    assert.equal("a\0b", c:value("s"))
  end)

  it("normalizes keys: 1 and 1.0 are one key", function()
    local c = weft.with_value(bg, 1.0, "one")
    assert.equal("one", c:value(1))
    assert.equal("one", c:value(1.0))
    local d = weft.with_value(bg, 2, "two")
    assert.equal("two", d:value(2.0))
    local e = weft.with_value(bg, -0.0, "zero")
    assert.equal("zero", e:value(0))
    local f = weft.with_value(bg, 1.5, "x")
    assert.equal("x", f:value(1.5))
    assert.is_nil(f:value(1))
    local g = weft.with_value(bg, 2^63, "big")
    assert.equal("big", g:value(2^63))
  end)

  it("keys of different types differ", function()
    local c = weft.with_value(bg, "1", "string")
    c = weft.with_value(c, true, "bool")
    assert.equal("string", c:value("1"))
    assert.is_nil(c:value(1))
    assert.equal("bool", c:value(true))
    assert.is_nil(c:value(false))
  end)

  it("refuses bad keys", function()
    for _, k in ipairs { {}, print, coroutine.create(print), bg } do
      assert.has_error(function() weft.with_value(bg, k, 1) end)
      assert.has_error(function() bg:value(k) end)
    end
    assert.has_error(function() weft.with_value(bg, nil, 1) end)
    assert.has_error(function() weft.with_value(bg, 0 / 0, 1) end)
    assert.has_error(function() bg:value(0 / 0) end)
    assert.has_error(function() bg:value() end)
  end)

  it("refuses uncopyable values", function()
    assert.has_error(function()
      weft.with_value(bg, "k", coroutine.create(print))
    end)
    assert.has_error(function()
      weft.with_value(bg, "k", { io.stdout })
    end)
  end)

  it("a nil value reads as nil", function()
    local c = weft.with_value(bg, "k", "v")
    c = weft.with_value(c, "k", nil)
    assert.is_nil(c:value("k"))
  end)

  it("a context can be a value (shared, not copied)", function()
    local inner = weft.with_cancel(bg)
    local c = weft.with_value(bg, "ctx", inner)
    assert.equal(inner, c:value("ctx"))
  end)
end)

describe("handles", function()
  it("are shared by reference", function()
    local c = weft.with_cancel(weft.background())
    assert.equal(c, weft.copy(c))
    local t = weft.copy { c = c }
    assert.equal(c, t.c)
  end)

  it("the cancel function survives its context's other handles", function()
    local cancel
    do
      local _
      _, cancel = weft.with_cancel(weft.background())
    end
    collectgarbage()
    cancel("ok")
  end)
end)

describe("argument errors", function()
  local bg = weft.background()
  local bad = { nil, 1, "s", {}, print, true }

  it("constructors want a context", function()
    for i = 1, #bad + 1 do
      local v = bad[i]
      assert.has_error(function() weft.with_cancel(v) end)
      assert.has_error(function() weft.with_timeout(v, 1) end)
      assert.has_error(function() weft.with_deadline(v, 1) end)
      assert.has_error(function() weft.with_value(v, "k", 1) end)
    end
    assert.has_error(function() weft.with_cancel(io.stdout) end)
  end)

  it("names the argument", function()
    local ok, err = pcall(weft.with_cancel, 42)
    assert.is_false(ok)
    assert.matches("bad argument #1", err)
    assert.matches("weft.context expected", err)
  end)

  it("with_timeout wants a duration", function()
    assert.has_error(function() weft.with_timeout(bg) end)
    assert.has_error(function() weft.with_timeout(bg, -1) end)
    assert.has_error(function() weft.with_timeout(bg, 0 / 0) end)
    assert.has_error(function() weft.with_timeout(bg, "soon") end)
    assert.has_error(function() weft.with_timeout(bg, {}) end)
  end)

  it("with_deadline wants a number", function()
    assert.has_error(function() weft.with_deadline(bg) end)
    assert.has_error(function() weft.with_deadline(bg, "soon") end)
    assert.has_error(function() weft.with_deadline(bg, 0 / 0) end)
    assert.has_error(function() weft.with_deadline(bg, {}) end)
  end)

  it("methods want a context", function()
    for _, m in ipairs { "err", "done", "cause", "deadline", "value", "wait" } do
      assert.has_error(function() bg[m](nil) end)
      assert.has_error(function() bg[m]({}) end)
      assert.has_error(function() bg[m](42, 1) end)
    end
  end)

  it("wait wants a duration", function()
    local c = weft.with_cancel(bg)
    assert.has_error(function() c:wait(-1) end)
    assert.has_error(function() c:wait("never") end)
    assert.has_error(function() c:wait({}) end)
  end)

  it("test hooks want a context", function()
    assert.has_error(function() core._ctx_children_count(nil) end)
    assert.equal("number", type(core._ctx_live()))
  end)
end)
