-- spec/host_spec.lua: the host side of weft from Lua: future:on_done,
-- weft.poll, weft.on_host, and the pool options a host relies on
-- (memory_limit, the latency figures of pool:stats()).  The C side of the
-- same API is spec/c/embed_test.c.
local harness = dofile("spec/harness.lua")
local weft = require "weft"

local bounded, await, new_pool = harness.bounded, harness.await, harness.new_pool

-- Polls until cond() holds or 10 s pass; returns whether it held.
local function poll_until(cond)
  local deadline = weft.now() + 10
  while not cond() do
    if weft.now() > deadline then return false end
    weft.poll(0.005)
    weft.sleep(weft.background(), 0.001)
  end
  return true
end

describe("future:on_done and weft.poll", function()
  local root
  before_each(function() root = harness.start() end)
  after_each(harness.finish)

  it("runs the callback in a later poll of this state, with the outcome", function()
    local p = new_pool { workers = 2 }
    local f = p:submit(bounded(), function(_, a, b) return a + b, "x" end, 2, 3)
    local got
    assert.equals(f, f:on_done(function(...) got = table.pack(...) end))
    await(f)
    assert.is_nil(got)  -- resolved, but only a poll delivers it
    assert.is_true(poll_until(function() return got ~= nil end))
    assert.same({ n = 3, true, 5, "x" }, got)
  end)

  it("gives false and the error with its traceback for a failed job", function()
    local p = new_pool { workers = 1, on_panic = function() end }
    local got
    p:submit(bounded(), function() error("kaput", 0) end)
      :on_done(function(ok, err) got = { ok, err } end)
    assert.is_true(poll_until(function() return got ~= nil end))
    assert.is_false(got[1])
    assert.matches("^kaput\nstack traceback", got[2])
  end)

  it("calls each callback exactly once, several per future, in order", function()
    local p = new_pool { workers = 2, limit = 64 }
    local calls, order = {}, {}
    local fs = {}
    for i = 1, 200 do
      fs[i] = p:submit(bounded(), function(_, v) return v end, i)
      fs[i]:on_done(function(_, v) calls[v] = (calls[v] or 0) + 1 end)
    end
    fs[1]:on_done(function() order[#order + 1] = "a" end)
    fs[1]:on_done(function() order[#order + 1] = "b" end)
    for i = 1, 200 do await(fs[i]) end
    assert.is_true(poll_until(function() return #order == 2 end))
    weft.poll(0.05)
    for i = 1, 200 do assert.equals(1, calls[i], "job " .. i) end
    assert.same({ "a", "b" }, order)
  end)

  it("weft.poll(budget, max) runs at most max callbacks and counts them", function()
    local p = new_pool { workers = 1 }
    local n = 0
    local fs = {}
    for i = 1, 5 do
      fs[i] = p:submit(bounded(), function() return true end)
      fs[i]:on_done(function() n = n + 1 end)
    end
    for i = 1, 5 do await(fs[i]) end
    assert.equals(2, weft.poll(1, 2))
    assert.equals(2, n)
    assert.equals(3, weft.poll(1))
    assert.equals(0, weft.poll(0.001))
  end)

  it("an error in a callback is logged; later callbacks still run", function()
    local p = new_pool { workers = 1 }
    local f = p:submit(bounded(), function() return 1 end)
    local second = false
    f:on_done(function() error("callback bug") end)
    f:on_done(function() second = true end)
    await(f)
    assert.is_true(poll_until(function() return second end))
  end)

  it("is refused in workers, which never poll", function()
    local p = new_pool { workers = 1 }
    local inner = p:submit(bounded(), function() return 1 end)
    local _, ok, err = await(p:submit(bounded(), function(_, f)
      return pcall(f.on_done, f, function() end)
    end, inner))
    assert.is_false(ok)
    assert.matches("future:on_done in a worker would never run", err)
    local _, ok2, err2 = await(p:submit(bounded(), function()
      return pcall(require("weft").poll)
    end))
    assert.is_false(ok2)
    assert.matches("weft.poll is for the host thread", err2)
  end)

  it("rejects bad arguments", function()
    local p = new_pool { workers = 1 }
    local f = p:submit(bounded(), function() end)
    assert.has_error(function() f:on_done("x") end)
    assert.has_error(function() f.on_done({}, function() end) end)
    assert.has_error(function() weft.poll("soon") end)
    await(f)
  end)

  it("the runtime made by require has no pool of its own for weft_submit", function()
    -- weft.default_pool() in a plain lua5.4 is made on first use, per state
    local p = weft.default_pool()
    assert.equals(p, weft.default_pool())
    assert.equals("default", p:name())
  end)

  it("pool:stats() reports job latency percentiles", function()
    local p = new_pool { workers = 2 }
    for _ = 1, 50 do await(p:submit(bounded(), function() return 1 end)) end
    local s = p:stats()
    assert.is_true(s.latency_p50 > 0)
    assert.is_true(s.latency_p50 <= s.latency_p90)
    assert.is_true(s.latency_p90 <= s.latency_p99)
    assert.is_true(s.latency_p99 <= s.latency_max)
    assert.is_true(s.latency_max < 10)
    local _ = root
  end)
end)

describe("weft.on_host", function()
  before_each(function() harness.start() end)
  after_each(harness.finish)

  it("runs a function on the polling thread and returns its results to the job", function()
    weft.poll(0.001)  -- this state polls: it is the host
    _G.host_counter = 41  -- a global of the host state only (busted runs
                          -- specs in an environment of their own)
    local p = new_pool { workers = 2 }
    local f = p:submit(bounded(), function(_, d)
      local w = require "weft"
      local ok, v, tag = w.on_host(function(x)
        _G.host_counter = _G.host_counter + x
        return _G.host_counter, "host"
      end, d)
      return ok, v, tag, _G.host_counter  -- the worker has no host_counter
    end, 1)
    local res
    f:on_done(function(...) res = table.pack(...) end)
    assert.is_true(poll_until(function() return res ~= nil end))
    assert.same({ n = 5, true, true, 42, "host", nil }, res)
    assert.equals(42, _G.host_counter)
    _G.host_counter = nil
  end)

  it("gives false and the error when the host function raises", function()
    weft.poll(0.001)
    local p = new_pool { workers = 1, on_panic = function() end }
    local f = p:submit(bounded(), function()
      return require("weft").on_host(function() error("not here") end)
    end)
    local res
    f:on_done(function(...) res = table.pack(...) end)
    assert.is_true(poll_until(function() return res ~= nil end))
    assert.is_true(res[1])
    assert.is_false(res[2])
    assert.matches("not here", res[3])
  end)

  it("is refused outside a worker", function()
    assert.has_error(function() weft.on_host(function() end) end,
      "weft.on_host is for jobs in workers (here, call the function directly)")
  end)

  it("a job waiting on the host is stopped by its context", function()
    weft.poll(0.001)
    local p = new_pool { workers = 1 }
    local ctx, cancel = weft.with_cancel(bounded())
    local f = p:submit(ctx, function()
      return require("weft").on_host(function() return 1 end)
    end)
    weft.sleep(weft.background(), 0.05)
    cancel()
    local ok, err = await(f)  -- no poll: the host never served it
    assert.is_false(ok)
    assert.equals(weft.CANCELED, err)
    weft.poll(0.01)  -- serving it now is harmless
  end)
end)

describe("pool memory_limit", function()
  before_each(function() harness.start() end)
  after_each(harness.finish)

  it("fails a job over the limit with a clear error; the worker goes on", function()
    local p = new_pool { workers = 1, memory_limit = 8 * 1024 * 1024, on_panic = function() end }
    local ok, err = await(p:submit(bounded(), function()
      local t = {}
      -- big strings: few allocations, so the eager collector of make
      -- gc-stress reaches the limit in well under a second
      for i = 1, 1e7 do t[i] = ("x"):rep(1000) .. i end
      return #t
    end))
    assert.is_false(ok)
    assert.matches("^not enough memory %(limit 8 MB%)", err)
    assert.same({ true, 3 }, { await(p:submit(bounded(), function() return 3 end)) })
    local s = p:stats()
    assert.equal(1, s.memory_errors)  -- counted, among the panicked
    assert.equal(1, s.panicked)
    local other = new_pool { workers = 1 }  -- other pools are untouched: 12 MB held
    assert.same({ true, 4 }, { await(other:submit(bounded(), function()
      local t = {} for i = 1, 1200 do t[i] = ("y"):rep(10000) .. i end
      return collectgarbage("count") > 10 * 1024 and #t > 0 and 4
    end)) })
  end)

  it("rejects values that are not a byte count of at least 1 MB", function()
    local msg = "bad option 'memory_limit' to 'pool' (an integer number of bytes >= 1048576 expected)"
    assert.has_error(function() weft.pool { workers = 1, memory_limit = "64MB" } end, msg)
    assert.has_error(function() weft.pool { workers = 1, memory_limit = 1000 } end, msg)
    assert.has_error(function() weft.pool { workers = 1, memory_limit = 1.5e6 + 0.5 } end, msg)
  end)

  it("a limit too small for a worker state fails the pool, not the process", function()
    local p, err = weft.pool { workers = 1, memory_limit = 1 << 20,
      init = function() local t = {} for i = 1, 1e6 do t[i] = i end return #t end }
    assert.is_nil(p)
    assert.matches("not enough memory", err)
  end)
end)
