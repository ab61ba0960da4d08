-- Error groups, weft.map and weft.each (issue 5; DESIGN.md, "Error groups"
-- and "Deadlocks are errors, never hangs").
--
-- Every wait here has a bound: groups are made under a context with a
-- timeout (`bounded`, under `root`, which is canceled after each test
-- before its pools are closed), futures are awaited with one, and pools
-- keep hard cancel on, so a canceled job ends even when it spins.
-- g:wait() takes no context (Go semantics): the group's parent context is
-- its bound.  Timings are generous bounds, never measurements.
--
-- Job functions run in worker states: they capture only copyable upvalues
-- (the weft module travels by name; contexts, channels, pools and cancel
-- functions are shared handles).  Jobs report through channels; job code
-- raises with error(msg, 0) when a test matches its message.
local weft = require "weft"

local CANCELED, DEADLINE, DEADLOCK = weft.CANCELED, weft.DEADLINE_EXCEEDED, weft.DEADLOCK

-- The shared harness (spec/harness.lua): bounded, await, eventually,
-- new_pool; root (no timeout of its own here) is canceled after each test,
-- then its pools are closed in the order they were made, each with
-- assert(p:close("2s")).  VARIANT is plain | tsan | asan (set by
-- spec/run); big tests are scaled down under the sanitizers, and say so in
-- their names.  spin: see the harness (under ThreadSanitizer a spinning
-- job must call malloc to be stopped, as in spec/pool_cancel_spec.lua).
local harness = dofile("spec/harness.lua").configure { close_timeout = "2s", close_oldest_first = true }
local VARIANT, SANITIZED, spin = harness.VARIANT, harness.SANITIZED, harness.spin
local bounded, await, eventually, new_pool = harness.bounded, harness.await, harness.eventually, harness.new_pool

local function scaled(n, small)
  return SANITIZED and small or n
end

local function scale_note(from)
  return SANITIZED and (" (scaled down from %s under %s)"):format(from, VARIANT) or ""
end

-- pcall(f) raises an error whose message contains `text`.
local function raises(text, f)
  local ok, err = pcall(f)
  assert.is_false(ok, "no error raised; expected: " .. text)
  assert.is_truthy(tostring(err):find(text, 1, true), tostring(err))
end

-- Everything buffered in ch, in order.
local function drain(ch)
  local out = {}
  while ch:len() > 0 do out[#out + 1] = ch:try_recv() end
  return out
end

local function range(n)
  local t = {}
  for i = 1, n do t[i] = i end
  return t
end

local function starts_with(s, prefix)
  return type(s) == "string" and s:sub(1, #prefix) == prefix
end

-- A job that counts the jobs running at once: `active` holds one token per
-- running job, and each job reports how many it saw as it started.
local function tracked(c, active, peaks, d)
  active:try_send(true)
  peaks:try_send(active:len())
  weft.sleep(c, d)
  active:try_recv()
end

local function max_of(t)
  local m = 0
  for _, v in ipairs(t) do if v > m then m = v end end
  return m
end

-- Sorts arr (a copy, in the job's state) by recursive parallel merge sort:
-- each half is a job of a group on the pool running this job, and sends
-- its sorted half back through a channel (a group keeps no results).
local function merge(a, b)
  local out, i, j, k, na, nb = {}, 1, 1, 1, #a, #b
  while i <= na and j <= nb do
    local x, y = a[i], b[j]
    if y < x then out[k] = y; j = j + 1 else out[k] = x; i = i + 1 end
    k = k + 1
  end
  table.move(a, i, na, k, out)
  table.move(b, j, nb, k + na - i + 1, out)
  return out
end

local function psort(ctx, arr, leaf)
  local n = #arr
  if n <= leaf then
    table.sort(arr)
    return arr
  end
  local halves = weft.chan(2)
  local g = weft.group(ctx, { pool = weft.default_pool() })
  local function half(c, part, side, out, leaf_size)
    local ok, err = out:send(c, { side = side, sorted = psort(c, part, leaf_size) })
    if not ok then error(err, 0) end
  end
  local mid = n // 2
  g:go_label("left", half, table.move(arr, 1, mid, 1, {}), 1, halves, leaf)
  g:go_label("right", half, table.move(arr, mid + 1, n, 1, {}), 2, halves, leaf)
  local err = g:wait()
  if err then error(err, 0) end
  local a, b = halves:recv(ctx), halves:recv(ctx)
  if a.side == 2 then a, b = b, a end
  return merge(a.sorted, b.sorted)
end

local function is_sorted(t, n)
  if #t ~= n then return false end
  for i = 2, n do
    if t[i - 1] > t[i] then return false end
  end
  return true
end

before_each(harness.start)
after_each(harness.finish)

describe("weft.group", function()
  it("runs fn(gctx, ...) on the group's pool, with its arguments", function()
    local p = new_pool { workers = 2, limit = 8, name = "g" }
    local out = weft.chan(8)
    local g, gctx = weft.group(bounded(), { pool = p })
    for i = 1, 3 do
      g:go(function(c, expect_ctx, expect_pool, ch, x, t)
        ch:try_send({ same_ctx = c == expect_ctx, same_pool = weft.default_pool() == expect_pool,
                      x = x, tag = t.tag })
      end, gctx, p, out, i, { tag = "t" .. i })
    end
    assert.is_nil(g:wait())
    local got = drain(out)
    assert.equal(3, #got)
    table.sort(got, function(a, b) return a.x < b.x end)
    for i, r in ipairs(got) do
      assert.is_true(r.same_ctx)
      assert.is_true(r.same_pool)
      assert.equal(i, r.x)
      assert.equal("t" .. i, r.tag)
    end
    assert.equal(3, p:stats().submitted)
  end)

  it("wait waits for every job, returns nil when none failed, and cancels gctx", function()
    local p = new_pool { workers = 2, limit = 8 }
    local out = weft.chan(8)
    local g, gctx = weft.group(bounded(), { pool = p })
    for i = 1, 5 do
      g:go(function(c, ch, x)
        weft.sleep(c, 0.01 * x)
        ch:try_send(x)
      end, out, i)
    end
    assert.is_nil(gctx:err())
    assert.is_nil(g:wait())
    assert.equal(5, out:len())
    assert.equal(CANCELED, gctx:err())
  end)

  it("with limit, never runs more than limit jobs of the group at once, and reaches it", function()
    local p = new_pool { workers = 2, limit = 16, name = "lim" }
    local active, peaks = weft.chan(64), weft.chan(64)
    local g = weft.group(bounded(), { pool = p, limit = 3 })
    for _ = 1, 12 do g:go(tracked, active, peaks, "30ms") end
    assert.is_nil(g:wait())
    local seen = drain(peaks)
    assert.equal(12, #seen)
    assert.equal(3, max_of(seen))
  end)

  it("set_limit before any job is the limit", function()
    local p = new_pool { workers = 2, limit = 16 }
    local active, peaks = weft.chan(64), weft.chan(64)
    local g = weft.group(bounded(), { pool = p })
    g:set_limit(2)
    for _ = 1, 8 do g:go(tracked, active, peaks, "30ms") end
    assert.is_nil(g:wait())
    local seen = drain(peaks)
    assert.equal(8, #seen)
    assert.equal(2, max_of(seen))
  end)

  it("g:go blocks while limit jobs are active, and returns once one ended", function()
    local p = new_pool { workers = 2, limit = 8, name = "blocked" }
    local helper = new_pool { workers = 1, name = "helper" }
    local ctx = bounded()
    local release, released = weft.chan(8), weft.chan(1)
    local g = weft.group(ctx, { pool = p, limit = 3 })
    for _ = 1, 3 do
      g:go(function(c, rel) rel:recv(c) end, release)
    end
    -- releases the three jobs after 100 ms, saying so first
    local h = assert(helper:submit(ctx, function(c, rel, said)
      weft.sleep(c, "100ms")
      said:try_send(true)
      for _ = 1, 3 do rel:send(c, true) end
    end, release, released))
    g:go(function() end)
    -- g:go could only return after a job ended, so after the release
    assert.equal(1, released:len())
    assert.is_nil(g:wait())
    assert.is_true((await(h)))
  end)

  it("try_go returns false at the limit, true once a slot is free", function()
    local p = new_pool { workers = 2, limit = 8 }
    local ctx = bounded()
    local release = weft.chan(1)
    local g = weft.group(ctx, { pool = p, limit = 1 })
    assert.is_true(g:try_go(function(c, rel) rel:recv(c) end, release))
    assert.is_false(g:try_go(function() end))
    assert.is_true(release:send(ctx, true))
    assert.is_true(eventually(function() return g:try_go(function() end) end))
    assert.is_nil(g:wait())
  end)

  it("try_go returns false when the pool is full", function()
    local p = new_pool { workers = 1, limit = 1 }
    local ctx = bounded()
    local release = weft.chan(1)
    local g = weft.group(ctx, { pool = p })
    assert.is_true(g:try_go(function(c, rel) rel:recv(c) end, release))
    assert.is_false(g:try_go(function() end))
    assert.is_true(release:send(ctx, true))
    assert.is_nil(g:wait())
  end)

  it("a slot freed by any job is usable while the oldest job still runs", function()
    -- limit counts active jobs: with limit = 2, one job blocked and the
    -- other finished, one more job may start (Go's SetLimit)
    local p = new_pool { workers = 2, limit = 8 }
    local ctx = bounded()
    local release, done = weft.chan(1), weft.chan(1)
    local g = weft.group(ctx, { pool = p, limit = 2 })
    g:go(function(c, rel) rel:recv(c) end, release)
    g:go(function(c, d) d:send(c, true) end, done)
    assert.is_true(done:recv(ctx))
    weft.sleep(ctx, "100ms") -- the second job's future resolves
    local started = g:try_go(function() end)
    release:send(ctx, true)
    assert.is_nil(g:wait())
    assert.is_true(started, "try_go refused a job with 1 of 2 jobs of the group active")
  end)

  it("wait returns the first error to happen, not the first by index", function()
    -- a pool without hard cancel, so the late job fails by itself
    local p = new_pool { workers = 2, limit = 8, hard_cancel = false }
    local g = weft.group(bounded(), { pool = p })
    g:go(function()
      weft.sleep(weft.background(), "200ms")
      error("late", 0)
    end)
    g:go(function() error("early", 0) end)
    local err = g:wait()
    assert.is_string(err)
    assert.is_truthy(starts_with(err, "early"), err)
  end)

  it("a failing job cancels gctx at once: the other jobs see it and stop", function()
    local p = new_pool { workers = 2, limit = 8, hard_cancel = false }
    local seen = weft.chan(8)
    local g, gctx = weft.group(bounded(), { pool = p })
    for _ = 1, 3 do
      g:go(function(c, ch)
        local ended = c:wait("15s")
        ch:try_send({ ended = ended, err = c:err(), cause = c:cause() })
      end, seen)
    end
    g:go(function(c)
      weft.sleep(c, "50ms")
      error("boom", 0)
    end)
    local t0 = weft.now()
    local err = g:wait()
    local elapsed = weft.now() - t0
    assert.is_truthy(starts_with(err, "boom"), err)
    assert.is_true(elapsed < 10, ("wait took %.1f s"):format(elapsed))
    local got = drain(seen)
    assert.equal(3, #got)
    for _, r in ipairs(got) do
      assert.is_true(r.ended)
      assert.equal(CANCELED, r.err)
      assert.is_truthy(starts_with(r.cause, "boom"), r.cause)
    end
    assert.equal(CANCELED, gctx:err())
  end)

  it("hard cancel stops a `while true do end` job when another job fails", function()
    local p = new_pool { workers = 2, limit = 8, name = "hard" }
    local g = weft.group(bounded(), { pool = p })
    g:go(spin)
    g:go(function(c)
      weft.sleep(c, "50ms")
      error("boom", 0)
    end)
    local t0 = weft.now()
    local err = g:wait()
    assert.is_truthy(starts_with(err, "boom"), err)
    assert.is_true(weft.now() - t0 < 10) -- wait returned: the spinning job ended
  end)

  it("a panic is the job's error, with its traceback", function()
    local p = new_pool { workers = 2, limit = 8 }
    local g = weft.group(bounded(), { pool = p })
    g:go(function(_, x)
      local function deep() error("kaboom " .. x) end
      deep()
    end, 7)
    local err = g:wait()
    assert.is_string(err)
    assert.is_truthy(err:find("kaboom 7", 1, true), err)
    assert.is_truthy(err:find("stack traceback", 1, true), err)
    assert.is_truthy(err:find("deep", 1, true), err)
  end)

  it("an error value that is not a string comes back as a value", function()
    local p = new_pool { workers = 2, limit = 8 }
    local g = weft.group(bounded(), { pool = p })
    g:go(function() error({ code = 7, why = "table error" }) end)
    local err = g:wait()
    assert.is_table(err)
    assert.equal(7, err.code)
    assert.equal("table error", err.why)
  end)

  it("a job that raises nil or false still fails the group", function()
    local p = new_pool { workers = 2, limit = 8 }
    for _, policy in ipairs { "cancel", "collect" } do
      local g1 = weft.group(bounded(), { pool = p, on_error = policy })
      g1:go(function() error(nil) end)
      local e1 = g1:wait()
      local g2 = weft.group(bounded(), { pool = p, on_error = policy })
      g2:go(function() error(false) end)
      local e2 = g2:wait()
      assert.is_truthy(e1, policy .. ": error(nil) in a job was lost")
      assert.are_not.equal(CANCELED, e1, policy .. ": error(nil) in a job reported as a cancellation")
      assert.is_truthy(e2, policy .. ": error(false) in a job was lost")
      if policy == "collect" then
        assert.equal(1, #e1)
        assert.is_truthy(e1[1].error, "collect: the entry of error(nil) has no error")
        assert.is_truthy(e2[1].error, "collect: the entry of error(false) has no error")
      end
    end
  end)

  it("gctx ends with its parent: wait returns the parent's error", function()
    local p = new_pool { workers = 2, limit = 8 }
    local g, gctx = weft.group(bounded(0.1), { pool = p })
    g:go(spin)
    g:go(function(c) c:wait("15s") end)
    assert.equal(DEADLINE, g:wait())
    assert.equal(DEADLINE, gctx:err())
  end)
end)

describe("group policies", function()
  it('"collect" returns every error as {index, label, error}, sorted by index, and cancels nothing', function()
    local p = new_pool { workers = 2, limit = 8, name = "collect" }
    local ran = weft.chan(8)
    local g, gctx = weft.group(bounded(), { pool = p, on_error = "collect" })
    g:go(function(c, ch) weft.sleep(c, "150ms") ch:try_send(1) end, ran)
    g:go(function(c) weft.sleep(c, "100ms") error("two", 0) end)
    g:go(function(_, ch) ch:try_send(3) end, ran)
    g:go_label("four", function() error("four") end)
    g:go_label("five", function(_, ch) ch:try_send(5) end, ran)
    local errs = g:wait()
    assert.is_table(errs)
    assert.equal(2, #errs)
    assert.equal(2, errs[1].index)
    assert.is_nil(errs[1].label)
    assert.is_truthy(starts_with(errs[1].error, "two"), errs[1].error)
    assert.equal(4, errs[2].index)
    assert.equal("four", errs[2].label)
    assert.is_truthy(errs[2].error:find("four", 1, true))
    assert.is_truthy(errs[2].error:find("stack traceback", 1, true))
    -- the slow job was not canceled by the failures
    local got = drain(ran)
    table.sort(got)
    assert.same({ 1, 3, 5 }, got)
    assert.equal(CANCELED, gctx:err()) -- wait returned
  end)

  it('"collect" returns nil when no job failed', function()
    local p = new_pool { workers = 2, limit = 8 }
    local g = weft.group(bounded(), { pool = p, on_error = "collect" })
    for _ = 1, 4 do g:go(function() end) end
    assert.is_nil(g:wait())
  end)

  it('"ignore" returns nil, and a failure cancels nothing', function()
    local p = new_pool { workers = 2, limit = 8 }
    local ran = weft.chan(8)
    local g = weft.group(bounded(), { pool = p, on_error = "ignore" })
    g:go(function() error("ignored") end)
    g:go(function(c, ch)
      weft.sleep(c, "150ms")
      ch:try_send(c:err() or "ok")
    end, ran)
    assert.is_nil(g:wait())
    assert.same({ "ok" }, drain(ran))
  end)

  it("retries = 2: a job failing twice then succeeding succeeds; retries = 1: it fails", function()
    local p = new_pool { workers = 2, limit = 8 }
    local function flaky(_, attempts)
      attempts:try_send(true)
      local n = attempts:len()
      if n <= 2 then error("failure " .. n, 0) end
    end
    local a2 = weft.chan(8)
    local g2 = weft.group(bounded(), { pool = p, retries = 2, backoff = "10ms" })
    g2:go(flaky, a2)
    assert.is_nil(g2:wait())
    assert.equal(3, a2:len())

    local a1 = weft.chan(8)
    local g1 = weft.group(bounded(), { pool = p, retries = 1, backoff = "10ms" })
    g1:go(flaky, a1)
    local err = g1:wait()
    assert.is_truthy(starts_with(err, "failure 2"), err)
    assert.equal(2, a1:len())
  end)

  it("backoff doubles between tries and is capped by backoff_max", function()
    local p = new_pool { workers = 2, limit = 8 }
    local stamps = weft.chan(16)
    local g = weft.group(bounded(), { pool = p, retries = 4, backoff = "40ms", backoff_max = "90ms",
                                      on_error = "collect" })
    g:go(function(_, ch)
      ch:try_send(weft.now())
      error("always", 0)
    end, stamps)
    local errs = g:wait()
    assert.equal(1, #errs)
    local t = drain(stamps)
    assert.equal(5, #t)
    -- expected gaps: 40, 80, 90 (not 160), 90 (not 320) ms
    local gaps = {}
    for i = 2, 5 do gaps[i - 1] = t[i] - t[i - 1] end
    assert.is_true(gaps[1] >= 0.039, gaps[1])
    assert.is_true(gaps[2] >= 0.079, gaps[2])
    assert.is_true(gaps[3] >= 0.089, gaps[3])
    assert.is_true(gaps[4] >= 0.089, gaps[4])
    assert.is_true(gaps[4] < 0.3, ("the last gap %.3f s is not capped"):format(gaps[4]))
  end)

  it("no retry once gctx is done", function()
    -- without hard cancel, so the backoff's sleep returns instead of ending the job
    local p = new_pool { workers = 2, limit = 8, hard_cancel = false }
    local parent, cancel = weft.with_cancel(bounded())
    local attempts = weft.chan(16)
    local g = weft.group(parent, { pool = p, retries = 5, backoff = "300ms" })
    g:go(function(_, ch)
      ch:try_send(true)
      error("always", 0)
    end, attempts)
    weft.sleep(bounded(), "100ms") -- the first try failed; the job waits out its backoff
    cancel("stop")
    local t0 = weft.now()
    assert.is_truthy(g:wait())
    assert.is_true(weft.now() - t0 < 1)
    assert.equal(1, attempts:len())
  end)

  it("timeout is per job: a job past it ends with DEADLINE_EXCEEDED, the others are unaffected", function()
    local p = new_pool { workers = 2, limit = 8, name = "timeout" }
    -- valgrind runs one thread at a time, slowly: the sleepers need longer
    local limit = VARIANT == "valgrind" and "2s" or "150ms"
    local g = weft.group(bounded(), { pool = p, timeout = limit, on_error = "collect" })
    -- the spinning job first: a job parked on a worker resumes only there,
    -- so one parked before the spin started on its worker would wait for it
    g:go_label("spin", spin)
    g:go(function(c) weft.sleep(c, "20ms") end)
    g:go(function(c) weft.sleep(c, "20ms") end)
    local errs = g:wait()
    assert.is_table(errs)
    assert.equal(1, #errs)
    assert.equal(1, errs[1].index)
    assert.equal("spin", errs[1].label)
    assert.equal(DEADLINE, errs[1].error)
  end)

  it("timeout is per job, not for the group: sequential jobs each get their own", function()
    local p = new_pool { workers = 2, limit = 8, hard_cancel = false }
    local seen = weft.chan(8)
    local g = weft.group(bounded(), { pool = p, timeout = "250ms", limit = 1 })
    for _ = 1, 3 do
      g:go(function(c, ch)
        weft.sleep(c, "150ms")
        ch:try_send(c:err() or "in time")
      end, seen)
    end
    assert.is_nil(g:wait())
    assert.same({ "in time", "in time", "in time" }, drain(seen))
    -- a job that waits for its context sees the deadline
    local g2 = weft.group(bounded(), { pool = p, timeout = "50ms" })
    g2:go(function(c, ch)
      c:wait("15s")
      ch:try_send(c:err())
    end, seen)
    assert.is_nil(g2:wait())
    assert.same({ DEADLINE }, drain(seen))
  end)

  it("misuse raises clear errors", function()
    local p = new_pool { workers = 2, limit = 8 }
    local ctx = bounded()
    local g = weft.group(ctx, { pool = p })
    g:go(function(c) weft.sleep(c, "200ms") end)
    raises("set_limit: cannot change the limit while jobs of the group run", function() g:set_limit(4) end)
    -- at the caller's line, naming the method and the argument
    local line = debug.getinfo(1, "l").currentline + 2
    local msg = ("group_spec.lua:%d: bad argument #1 to 'go' (function expected, got string)"):format(line)
    raises(msg, function() g:go("not a function") end)
    raises("bad argument #2 to 'go_label' (function expected, got nil)", function() g:go_label("x") end)
    raises("bad argument #1 to 'try_go' (function expected, got number)", function() g:try_go(1) end)
    assert.is_nil(g:wait())
    for _, call in ipairs {
      function() g:go(function() end) end,
      function() g:go_label("x", function() end) end,
      function() g:try_go(function() end) end,
    } do
      local ok, err = pcall(call)
      assert.is_false(ok)
      assert.is_truthy(tostring(err):find("the group was waited on", 1, true), err)
    end
    raises("unknown option frobnicate", function() weft.group(ctx, { pool = p, frobnicate = 1 }) end)
    raises("unknown option batch", function() weft.group(ctx, { pool = p, batch = 10 }) end)
    raises("bad option 'on_error'", function() weft.group(ctx, { pool = p, on_error = "explode" }) end)
    raises("bad option 'limit'", function() weft.group(ctx, { pool = p, limit = 0 }) end)
    raises("bad option 'limit'", function() weft.group(ctx, { pool = p, limit = 1.5 }) end)
    raises("bad option 'retries'", function() weft.group(ctx, { pool = p, retries = -1 }) end)
    raises("bad option 'backoff'", function() weft.group(ctx, { pool = p, backoff = "soon" }) end)
    raises("bad option 'timeout'", function() weft.group(ctx, { pool = p, timeout = {} }) end)
    raises("table expected", function() weft.group(ctx, "fast") end)
  end)

  it("bad options and arguments are reported at the call that takes them, naming it", function()
    local ctx = bounded()
    local fn = function() end
    -- a pool that is not a pool: at weft.group, not at the first g:go
    raises("pool", function() weft.group(ctx, { pool = 42 }) end)
    raises("pool", function() weft.map(ctx, { 1 }, fn, { pool = {} }) end)
    -- the context: named as weft.group's argument
    raises("bad argument #1 to 'group'", function() weft.group(nil) end)
    -- map's and each's options are their argument #4
    raises("bad argument #4 to 'map'", function() weft.map(ctx, { 1 }, fn, "opts") end)
    raises("bad argument #4 to 'each'", function() weft.each(ctx, { 1 }, fn, { frobnicate = 1 }) end)
  end)
end)

describe("weft.map and weft.each", function()
  it("map returns results in the order of items; fn(ctx, item, index); results[i] is its first result", function()
    local p = new_pool { workers = 2, limit = 8 }
    local items = {}
    for i = 1, 500 do items[i] = { name = "item" .. i, delay = (i % 7) * 0.001 } end
    local res, err = weft.map(bounded(), items, function(c, item, i)
      if i % 50 == 0 then weft.sleep(c, item.delay) end -- uneven durations
      if weft.default_pool() ~= p then error("not in a worker of p", 0) end
      return item.name .. "@" .. i, "second result"
    end, { pool = p, batch = 16 })
    assert.is_table(res)
    assert.is_nil(err)
    assert.equal(500, #res)
    for i = 1, 500 do assert.equal("item" .. i .. "@" .. i, res[i]) end
  end)

  local big = scaled(1000000, 50000)
  it(("map of %d small items completes and is correct%s"):format(big, scale_note("1,000,000")), function()
    local p = new_pool { workers = 2, limit = 64, name = "big" }
    local items = range(big)
    local res = weft.map(bounded(60), items, function(_, x, i) return x * 2 + i end, { pool = p })
    assert.is_table(res)
    assert.equal(big, #res)
    local sum = 0
    for i = 1, big do sum = sum + res[i] end
    assert.equal(3 * big * (big + 1) // 2, sum)
    assert.equal(3 * big, res[big])
    -- batched: far fewer jobs than items
    assert.is_true(p:stats().submitted <= big // 100, p:stats().submitted)
  end)

  local small = scaled(2000, 500)
  it(("map with batch = 1 works (%d items, one job each)%s"):format(small, scale_note("2,000")), function()
    local p = new_pool { workers = 2, limit = 16 }
    local res = weft.map(bounded(60), range(small), function(_, x) return -x end, { pool = p, batch = 1 })
    assert.equal(small, #res)
    for i = 1, small do assert.equal(-i, res[i]) end
    assert.equal(small, p:stats().submitted)
  end)

  it("one copy of fn per batch", function()
    local p = new_pool { workers = 2, limit = 16 }
    -- `calls` is copied with fn: each batch counts its own items
    local calls = { n = 0 }
    local res = weft.map(bounded(), range(1000), function()
      calls.n = calls.n + 1
      return calls.n
    end, { pool = p, batch = 100 })
    assert.equal(1000, #res)
    for i = 1, 1000 do assert.equal((i - 1) % 100 + 1, res[i]) end
    assert.equal(10, p:stats().submitted)
  end)

  it('"cancel": nil and the first error, with its traceback', function()
    local p = new_pool { workers = 2, limit = 16 }
    local res, err = weft.map(bounded(), range(200), function(_, x)
      if x == 77 then error("item 77 is bad") end
      return x
    end, { pool = p, batch = 10 })
    assert.is_nil(res)
    assert.is_string(err)
    assert.is_truthy(err:find("item 77 is bad", 1, true), err)
    assert.is_truthy(err:find("stack traceback", 1, true), err)
  end)

  it('"collect": nil and every error {index, error}, sorted by index', function()
    local p = new_pool { workers = 2, limit = 16 }
    local res, errs = weft.map(bounded(), range(300), function(_, x)
      if x % 100 == 7 then error("bad " .. x, 0) end
      return x
    end, { pool = p, batch = 8, on_error = "collect" })
    assert.is_nil(res)
    assert.is_table(errs)
    assert.equal(3, #errs)
    for k, i in ipairs { 7, 107, 207 } do
      assert.equal(i, errs[k].index)
      assert.is_truthy(starts_with(errs[k].error, "bad " .. i), errs[k].error)
    end
  end)

  it('"ignore": the results, failed items nil', function()
    local p = new_pool { workers = 2, limit = 16 }
    local res = weft.map(bounded(), range(100), function(_, x)
      if x % 10 == 0 then error("skip", 0) end
      return x
    end, { pool = p, batch = 7, on_error = "ignore" })
    assert.is_table(res)
    for i = 1, 100 do
      if i % 10 == 0 then assert.is_nil(res[i]) else assert.equal(i, res[i]) end
    end
  end)

  local many = scaled(100000, 20000)
  it(("an early error in a %d-item map cancels the rest promptly%s"):format(many, scale_note("100,000")),
    function()
      local p = new_pool { workers = 2, limit = 64, name = "early" }
      local ran = weft.chan(many)
      local t0 = weft.now()
      local res, err = weft.map(bounded(60), range(many), function(c, x, i)
        ran:try_send(i)
        if i == 10 then error("item 10 failed", 0) end
        weft.sleep(c, "1ms") -- slow-ish: all of it would take over 50 s on 2 workers
        return x
      end, { pool = p })
      local elapsed = weft.now() - t0
      assert.is_nil(res)
      assert.is_truthy(starts_with(err, "item 10 failed"), err)
      print(("# %d of %d items ran before the map ended, in %.3f s (%s)")
        :format(ran:len(), many, elapsed, VARIANT))
      assert.is_true(ran:len() < many // 20, ran:len() .. " items ran")
      assert.is_true(elapsed < 10)
    end)

  it("retries are per item in a map", function()
    local p = new_pool { workers = 2, limit = 16 }
    local tries = {}
    local res, n = weft.map(bounded(), range(50), function(_, x, i)
      tries[i] = (tries[i] or 0) + 1
      if i % 5 == 0 and tries[i] == 1 then error("first try of " .. i, 0) end
      return x * 10
    end, { pool = p, batch = 10, retries = 1, backoff = "5ms" })
    assert.is_table(res, n)
    for i = 1, 50 do assert.equal(10 * i, res[i]) end
  end)

  it("timeout is per item in a map, not per batch", function()
    local p = new_pool { workers = 2, limit = 16 }
    -- 100 items of 10 ms, 50 to a batch: each item is far within 300 ms,
    -- each batch is not
    local res, err = weft.map(bounded(), range(100), function(c, x)
      weft.sleep(c, "10ms")
      return x
    end, { pool = p, batch = 50, timeout = "300ms" })
    assert.is_nil(err)
    assert.equal(100, #res)
  end)

  it("each runs fn for its effects: true | nil, err", function()
    local p = new_pool { workers = 2, limit = 16 }
    local seen = weft.chan(200)
    local ok, err = weft.each(bounded(), range(150), function(_, x, i)
      seen:try_send(x * 1000 + i)
      return "ignored"
    end, { pool = p, batch = 9 })
    assert.is_true(ok)
    assert.is_nil(err)
    local got = drain(seen)
    table.sort(got)
    assert.equal(150, #got)
    for i = 1, 150 do assert.equal(i * 1001, got[i]) end

    local ok2, err2 = weft.each(bounded(), range(150), function(_, x)
      if x == 3 then error("three", 0) end
    end, { pool = p })
    assert.is_nil(ok2)
    assert.is_truthy(starts_with(err2, "three"), err2)
  end)

  it("a context already ended: nil, ctx:err(), nothing runs", function()
    local p = new_pool { workers = 2, limit = 16 }
    local ctx, cancel = weft.with_cancel(bounded())
    cancel()
    local ran = weft.chan(16)
    local res, err = weft.map(ctx, range(10), function(_, x) ran:try_send(x) return x end, { pool = p })
    assert.is_nil(res)
    assert.equal(CANCELED, err)
    local ok, err2 = weft.each(ctx, range(10), function(_, x) ran:try_send(x) end, { pool = p })
    assert.is_nil(ok)
    assert.equal(CANCELED, err2)
    assert.equal(0, ran:len())
  end)

  it("bad arguments raise", function()
    local p = new_pool { workers = 2, limit = 16 }
    local ctx = bounded()
    local fn = function() end
    assert.has_error(function() weft.map(ctx, "items", fn, { pool = p }) end)
    assert.has_error(function() weft.map(ctx, {}, "fn", { pool = p }) end)
    assert.has_error(function() weft.each(ctx, { 1 }, fn, { pool = p, batch = 0 }) end)
    assert.has_error(function() weft.map(ctx, { 1 }, fn, { pool = p, frobnicate = true }) end)
    assert.has_error(function() weft.map(ctx, { 1 }, fn, { pool = p, on_error = "explode" }) end)
    local res, err = weft.map(ctx, {}, fn, { pool = p })
    assert.same({}, res)
    assert.is_nil(err)
  end)
end)

describe("nested fan-out", function()
  -- Opens a group on the pool running this job (weft.default_pool() in a
  -- job) and waits for `subs` sub-jobs; returns the sum of their squares.
  local function fan_out(c, subs, sub_pool)
    local g = weft.group(c, { pool = sub_pool or weft.default_pool() })
    local sums = weft.chan(subs)
    for i = 1, subs do
      g:go(function(cc, x, ch)
        weft.sleep(cc, "10ms")
        ch:try_send(x * x)
      end, i, sums)
    end
    local err = g:wait()
    if err then error(err, 0) end
    local total = 0
    while sums:len() > 0 do total = total + sums:try_recv() end
    return total
  end

  it("weft.default_pool() in a job is the pool running it", function()
    local p = new_pool { workers = 2, limit = 8 }
    local q = new_pool { workers = 1 }
    local ok, same_p, same_q = await(assert(p:submit(bounded(), function(_, pp, qq)
      return weft.default_pool() == pp, weft.default_pool() == qq
    end, p, q)))
    assert.is_true(ok)
    assert.is_true(same_p)
    assert.is_false(same_q)
  end)

  it("a job opens its own group on its own pool (limit large enough: no false deadlock)", function()
    local p = new_pool { workers = 1, limit = 16, name = "nested" }
    local g = weft.group(bounded(), { pool = p })
    local sums = weft.chan(4)
    for _ = 1, 3 do
      g:go(function(c, ch, f) ch:try_send(f(c, 4)) end, sums, fan_out)
    end
    assert.is_nil(g:wait())
    assert.same({ 30, 30, 30 }, drain(sums))
  end)

  it("a job maps over items on its own pool (a map inside a group)", function()
    local p = new_pool { workers = 2, limit = 32 }
    local res = weft.map(bounded(), { 10, 20, 30 }, function(c, x)
      local inner = weft.map(c, range(x), function(_, y) return y end, { batch = 3 })
      local s = 0
      for _, v in ipairs(inner) do s = s + v end
      return s
    end, { pool = p, batch = 1 })
    assert.same({ 55, 210, 465 }, res)
  end)

  -- Both outer jobs are admitted before either fans out: each waits for
  -- the other at a barrier first (else the first could finish alone).
  local function both_then_fan_out(c, ready, f, ...)
    ready:try_send(true)
    while ready:len() < 2 do weft.sleep(c, "1ms") end
    return f(c, ...)
  end

  it("workers = 1, limit = 2, nested groups on the same pool: DEADLOCK, not a hang (futures)", function()
    -- (the outer jobs' errors are panics of this pool: not logged)
    local p = new_pool { workers = 1, limit = 2, name = "tight", on_panic = function() end }
    local ctx = bounded(15)
    local ready = weft.chan(2)
    local f1 = assert(p:submit(ctx, both_then_fan_out, ready, fan_out, 2))
    local f2 = assert(p:submit(ctx, both_then_fan_out, ready, fan_out, 2))
    for _, f in ipairs { f1, f2 } do
      local ok, err = await(f)
      assert.is_false(ok)
      assert.is_truthy(starts_with(err, DEADLOCK), err)
      assert.is_truthy(err:find("tight", 1, true), err)
    end
    assert.is_nil(ctx:err()) -- detected, not timed out
  end)

  it("workers = 1, limit = 2, nested groups on the same pool: DEADLOCK, not a hang (group wait)", function()
    local p = new_pool { workers = 1, limit = 2, name = "tight" }
    local ctx = bounded(15)
    local g = weft.group(ctx, { pool = p })
    local ready = weft.chan(2)
    for _ = 1, 2 do g:go(both_then_fan_out, ready, fan_out, 2) end
    local err = g:wait()
    assert.is_truthy(starts_with(err, DEADLOCK), err)
    assert.is_nil(ctx:err())
  end)

  it("the same work on two pools (outer for jobs, inner for sub-jobs) completes", function()
    local outer = new_pool { workers = 1, limit = 2, name = "outer" }
    local inner = new_pool { workers = 2, limit = 4, name = "inner" }
    local g = weft.group(bounded(), { pool = outer })
    local sums, ready = weft.chan(4), weft.chan(2)
    for _ = 1, 2 do
      g:go(function(c, ch, ...) ch:try_send(both_then_fan_out(c, ...)) end,
        sums, ready, fan_out, 2, inner)
    end
    assert.is_nil(g:wait())
    assert.same({ 5, 5 }, drain(sums))
    assert.equal(2, outer:stats().submitted)
    assert.equal(4, inner:stats().submitted)
  end)

  local sort_n = scaled(200000, 20000)
  it(("merge sort of %d numbers, groups inside groups on a pool with limit 256%s")
    :format(sort_n, scale_note("200,000")), function()
    local p = new_pool { workers = 2, limit = 256, name = "sort" }
    math.randomseed(5)
    local data = {}
    for i = 1, sort_n do data[i] = math.random(1, 1000000) end
    -- 64 leaves: 127 jobs in flight at most
    local leaf = sort_n // 64 + 1
    local ctx = bounded(60)
    local g = weft.group(ctx, { pool = p })
    local out = weft.chan(1)
    g:go(function(c, arr, ch, sort, leaf_size)
      ch:send(c, sort(c, arr, leaf_size))
    end, data, out, psort, leaf)
    assert.is_nil(g:wait())
    local sorted = out:recv(ctx)
    assert.is_true(is_sorted(sorted, sort_n))
    table.sort(data)
    assert.same(data, sorted)
    assert.equal(127, p:stats().submitted)
  end)
end)

describe("the default pool", function()
  it("outside a job: one pool, made on first use, used by groups and maps without a pool", function()
    local dp = weft.default_pool()
    assert.equal(dp, weft.default_pool())
    local before = dp:stats().submitted
    local res = weft.map(bounded(), { 1, 2, 3 }, function(_, x) return weft.default_pool(), x end)
    assert.equal(dp, res[1])
    local g = weft.group(bounded())
    local seen = weft.chan(2)
    g:go(function(_, ch, expect) ch:try_send(weft.default_pool() == expect) end, seen, dp)
    assert.is_nil(g:wait())
    assert.same({ true }, drain(seen))
    assert.is_true(dp:stats().submitted > before)
  end)
end)
