-- Hard cancel, deadlock detection and bounded close (DESIGN.md, "Deadlocks
-- are errors, never hangs" and "Cancellation reaches running code").
local weft = require "weft"

-- The shared harness (spec/harness.lua) gives the variant (plain | tsan |
-- asan, set by spec/run) and `spin`, a loop that never yields: under
-- ThreadSanitizer, signals reach a thread only when it enters an
-- intercepted function, so there the loop calls malloc.
local harness = dofile("spec/harness.lua")
local bg, spin = harness.bg, harness.spin

-- Waits for f with a bound, so a broken cancel fails instead of hanging.
local function wait(f, bound)
  return f:wait(weft.with_timeout(bg, bound or "5s"))
end

-- Lets the jobs just submitted start running.
local function settle() weft.sleep(bg, "50ms") end

describe("hard cancel", function()
  local pool
  before_each(function() pool = assert(weft.pool { workers = 2, name = "hc" }) end)
  after_each(function() assert(pool:close("2s")) end)

  it("stops `while true do end` when its context is canceled", function()
    local ctx, cancel = weft.with_cancel(bg)
    local f = assert(pool:submit(ctx, spin))
    settle()
    local t0 = weft.now()
    cancel()
    local ok, err = wait(f)
    assert.is_false(ok)
    assert.equal(weft.CANCELED, err)
    assert.is_true(weft.now() - t0 < 1)
    assert.equal(1, pool:stats().canceled)
  end)

  it("stops a loop at its deadline", function()
    local f = assert(pool:submit(weft.with_timeout(bg, "50ms"), spin))
    local ok, err = wait(f)
    assert.is_false(ok)
    assert.equal(weft.DEADLINE_EXCEEDED, err)
  end)

  it("is not defeated by a pcall that swallows the error", function()
    local ctx, cancel = weft.with_cancel(bg)
    local f = assert(pool:submit(ctx, function()
      while true do pcall(spin) end
    end))
    settle()
    cancel()
    local ok, err = wait(f)
    assert.is_false(ok)
    assert.equal(weft.CANCELED, err)
  end)

  it("reaches a job parked on something else than its context", function()
    local never = weft.with_cancel(bg)
    local blocker = assert(pool:submit(never, function(c) return c:wait("30s") end))
    local ctx, cancel = weft.with_cancel(bg)
    local f = assert(pool:submit(ctx, function(_, fut) return fut:wait() end, blocker))
    settle()
    cancel()
    local ok, err = wait(f)
    assert.is_false(ok)
    assert.equal(weft.CANCELED, err)
    assert.is_false(never:done())  -- the blocker still waits (after_each ends it)
    assert.is_false(blocker:done())
  end)

  it("leaves the worker healthy for the next job", function()
    local ctx, cancel = weft.with_cancel(bg)
    local f = assert(pool:submit(ctx, spin))
    settle()
    cancel()
    wait(f)
    local ok, v = wait(assert(pool:submit(bg, function(_, x) return x * 2 end, 21)))
    assert.is_true(ok)
    assert.equal(42, v)
  end)

  it("can be turned off: the job then stops at its next weft call", function()
    local soft = assert(weft.pool { workers = 1, hard_cancel = false })
    local ctx, cancel = weft.with_cancel(bg)
    local f = assert(soft:submit(ctx, function(c)
      local n = 0
      while not c:done() do n = n + 1 end
      return "saw it", n > 0
    end))
    settle()
    cancel()
    local ok, msg, counted = wait(f)
    assert.is_true(ok)
    assert.equal("saw it", msg)
    assert.is_true(counted)
    assert(soft:close("1s"))
  end)
end)

describe("deadlock detection", function()
  -- Recursion that submits to its own pool (LuaLanes' fibonacci test).
  local function fib(ctx, pool, n)
    if n < 2 then return n end
    -- (not assert: busted's adds a position to the message)
    local a, err = pool:submit(ctx, fib, pool, n - 1)
    if not a then error(err, 0) end
    local b, err2 = pool:submit(ctx, fib, pool, n - 2)
    if not b then error(err2, 0) end
    local ok1, x = a:wait()
    local ok2, y = b:wait()
    if not ok1 then error(x, 0) end
    if not ok2 then error(y, 0) end
    return x + y
  end

  it("reports DEADLOCK when recursion outgrows the pool's limit", function()
    local p <close> = assert(weft.pool { workers = 2, limit = 2, name = "fib",
                                         on_panic = function() end })
    local ok, err = wait(assert(p:submit(bg, fib, p, 10)))
    assert.is_false(ok)
    assert.matches("^" .. weft.DEADLOCK .. ": pool 'fib' %(limit 2", err)
    assert.matches("2 in submit to it", err)
  end)

  it("completes the same recursion with a larger limit", function()
    local p <close> = assert(weft.pool { workers = 2, limit = 400 })
    local ok, v = wait(assert(p:submit(bg, fib, p, 10)), "20s")
    assert.is_true(ok)
    assert.equal(55, v)
  end)

  it("completes with two pools: outer for work, inner for sub-work", function()
    local outer <close> = assert(weft.pool { workers = 1, limit = 1, name = "outer" })
    local inner <close> = assert(weft.pool { workers = 2, limit = 2, name = "inner" })
    local f = assert(outer:submit(bg, function(ctx, sub)
      local fs = {}
      for i = 1, 20 do fs[i] = assert(sub:submit(ctx, function(_, v) return v * v end, i)) end
      local sum = 0
      for i = 1, 20 do
        local ok, v = fs[i]:wait()
        assert(ok, v)
        sum = sum + v
      end
      return sum
    end, inner))
    local ok, sum = wait(f)
    assert.is_true(ok)
    assert.equal(2870, sum)
  end)

  it("reports a job waiting on its own queued sub-job", function()
    local p <close> = assert(weft.pool { workers = 1, limit = 1, queue = 4, name = "q" })
    local f = assert(p:submit(bg, function(ctx, pool)
      local sub = assert(pool:submit(ctx, function() return 1 end))
      return sub:wait()
    end, p))
    local ok, got, err = wait(f)
    assert.is_true(ok)  -- the job itself returned what its wait gave
    assert.is_nil(got)
    assert.matches("^deadlock: pool 'q' %(limit 1, queue 4%)", err)
    assert.matches("1 on futures", err)
  end)

  it("has no false positive when sub-jobs can still run", function()
    local p <close> = assert(weft.pool { workers = 1, limit = 2 })
    for _ = 1, 200 do
      local f = assert(p:submit(bg, function(ctx, pool)
        local sub = assert(pool:submit(ctx, function(c)
          weft.sleep(c, 0.0001)
          return 7
        end))
        return sub:wait()
      end, p))
      local ok, inner_ok, v = wait(f)
      assert.is_true(ok)
      assert.is_true(inner_ok)
      assert.equal(7, v)
    end
    assert.equal(0, p:stats().panicked)
  end)
end)

describe("pool:close(timeout)", function()
  it("interrupts what still runs at the timeout, and returns", function()
    local p = assert(weft.pool { workers = 2 })
    local f1 = assert(p:submit(bg, spin))
    local f2 = assert(p:submit(bg, function(ctx) return weft.sleep(ctx, 100) end))
    settle()
    local t0 = weft.now()
    assert.is_true(p:close(0.2))
    assert.is_true(weft.now() - t0 < 2)
    assert.are.same({ false, "pool closed" }, { f1:wait() })
    assert.are.same({ false, "pool closed" }, { f2:wait() })
    assert.equal(2, p:stats().canceled)
  end)

  it("pool:wait(timeout) gives up with a message", function()
    local p = assert(weft.pool { workers = 1 })
    assert(p:submit(bg, function(ctx) return ctx:wait(0.5) end))
    local ok, err = p:wait(0.05)
    assert.is_nil(ok)
    assert.matches("timeout: pool 'pool' still has 1 jobs in flight", err)
    assert.is_true(p:wait("5s"))
    assert.is_true(p:close())
  end)

  it("rejects a bad timeout", function()
    local p <close> = assert(weft.pool { workers = 1 })
    assert.has_error(function() p:close("soon") end)
    assert.has_error(function() p:wait(-1) end)
  end)
end)

describe("cancel functions", function()
  it("can be passed to jobs, which cancel from their worker", function()
    local p <close> = assert(weft.pool { workers = 2 })
    local ctx, cancel = weft.with_cancel(bg)
    assert.equal(cancel, weft.copy(cancel))
    local f = assert(p:submit(bg, function(_, c) c("from a job") end, cancel))
    assert.is_true(wait(f))
    assert.equal(weft.CANCELED, ctx:err())
    assert.equal("from a job", ctx:cause())
  end)

  it("survive a storm: a tree of 100 contexts canceled from jobs on every worker", function()
    local seed = os.time() + math.floor(weft.now() * 1e6) % 1000000
    print("# cancel storm seed " .. seed)
    math.randomseed(seed)
    local p <close> = assert(weft.pool { workers = 2, limit = 256 })
    local ctxs, cancels = { bg }, { false }
    for i = 2, 101 do  -- node i hangs under a random earlier node
      ctxs[i], cancels[i] = weft.with_cancel(ctxs[math.random(1, i - 1)])
    end
    -- a waiter on every context, parked
    local waiters = {}
    for i = 2, 101 do
      waiters[#waiters + 1] = assert(p:submit(ctxs[i], function(c) return c:wait("20s") end))
    end
    -- cancelers, in random order, each from a job
    local order = {}
    for i = 2, 101 do order[#order + 1] = i end
    for i = #order, 2, -1 do
      local j = math.random(1, i)
      order[i], order[j] = order[j], order[i]
    end
    local cancelers = {}
    for _, i in ipairs(order) do
      cancelers[#cancelers + 1] = assert(p:submit(bg, function(_, c, n) c(n) end, cancels[i], i))
    end
    for _, f in ipairs(cancelers) do assert.is_true(wait(f, "20s")) end
    for _, f in ipairs(waiters) do
      -- hard cancel: each waiter resumes with the hook armed and fails
      local ok, err = wait(f, "20s")
      assert.is_false(ok)
      assert.equal(weft.CANCELED, err)
    end
    for i = 2, 101 do assert.is_true(ctxs[i]:done()) end
    local s = p:stats()
    assert.equal(s.submitted, s.completed + s.failed + s.panicked + s.canceled)
  end)
end)

describe("worker warnings", function()
  local child_ok = not harness.SANITIZED

  it("route errors in __gc to the log, prefixed with the pool's name", function()
    if not child_ok then
      pending("child processes do not run under the sanitizer runtimes")
      return
    end
    local script = os.tmpname()
    local fh = assert(io.open(script, "w"))
    fh:write([[
      local weft = require "weft"
      local p <close> = assert(weft.pool { workers = 1, name = "gc" })
      local ok = p:submit(weft.background(), function()
        setmetatable({}, { __gc = function() error("finalizer broke") end })
        collectgarbage()
        collectgarbage()
        return true
      end):wait(weft.with_timeout(weft.background(), "5s"))
      print("job ok", ok)
    ]])
    fh:close()
    local out = io.popen("timeout 30 lua5.4 " .. script .. " 2>&1")
    local text = out:read("a")
    out:close()
    os.remove(script)
    assert.matches("weft pool 'gc': warning: error in __gc %(.-finalizer broke%)", text)
    assert.matches("job ok\ttrue", text)
  end)
end)
