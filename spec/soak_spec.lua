-- spec/soak_spec.lua: the soak run of bench/soak.lua at CI size, and the
-- leak check of objects made and dropped in a loop (issue 8, item 5).
--
-- The soak (20,000 jobs; 3,000 under the sanitizers) is bench/soak.lua's own
-- code, loaded as a module: jobs through pools (submit, try_submit, a
-- second pool), groups (every on_error policy), map/each and channels
-- (producer and consumer jobs, weft.select), with random cancels and
-- panics.  Every job id must get exactly one outcome (each future's
-- on_done exactly once; group and map jobs as far as their results show
-- them), pool:stats() must add up (and match the outcomes, for the pools
-- whose every job is a future seen here), and after everything is closed, dropped and collected the thread
-- count, RSS (plain runs only: the sanitizers' shadow memory and
-- quarantine make RSS meaningless there) and weft.core._engine_live() must
-- be back at the baseline measured after a warm-up round.  The seed is in
-- the test's name; WEFT_SOAK_SEED replays one (the mix of work replays, the
-- timing does not):
--   WEFT_SOAK_SEED=1234 LUA_PATH=... busted spec/soak_spec.lua
--
-- Every wait has a bound: the soak's waits hang under `root` (each round
-- under a context with a timeout of its own, `round_bound`), futures and
-- blocking calls here take bounded() contexts or await().
local harness = dofile("spec/harness.lua").configure { close_timeout = "10s" }
local weft = require "weft"

local soak = assert(loadfile("bench/soak.lua"))("--module")

local VARIANT, SANITIZED = harness.VARIANT, harness.SANITIZED
local bounded, await = harness.bounded, harness.await
local DEADLINE = weft.DEADLINE_EXCEEDED

local SEED = tonumber(os.getenv("WEFT_SOAK_SEED")) or os.time()
local JOBS = SANITIZED and 3000 or 20000
local LOOPS = SANITIZED and 60 or 300

local function scale_note(from)
  return SANITIZED and (" (scaled down from %s under %s)"):format(from, VARIANT) or ""
end

-- TAP comment lines (spec/run counts only `ok`/`not ok` lines)
local function note(text)
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do print("# " .. line) end
  io.stdout:flush()
end

describe("soak", function()
  local root
  before_each(function() root = harness.start() end)
  after_each(harness.finish)

  it(("%d jobs through pools, groups, map/each and channels with random cancels and panics: "
    .. "each job id seen once, stats add up, threads/RSS/engine allocations back to baseline (seed %d)%s")
    :format(JOBS, SEED, SANITIZED and (" (scaled down from 20,000 under %s; RSS not checked)"):format(VARIANT)
      or ""), function()
    local report = soak.run {
      jobs = JOBS, seed = SEED, base = root, round_bound = 20,
      warmup = SANITIZED and 600 or 2000, round_scale = SANITIZED and 0.3 or 1,
      rss_margin_kb = SANITIZED and math.huge or nil,
      log = note,
    }
    note(report.text)
    assert(report.ok, ("%d violations (seed %d):\n%s"):format(report.nviolations, SEED,
      table.concat(report.violations, "\n")))
    assert.equals(JOBS, report.jobs)
  end)
end)

---------------------------------------------------------------------------
-- objects made and dropped in a loop, from the main state and from jobs

-- Run in a worker (no upvalue but _ENV): makes and drops contexts,
-- channels (values left in them, blocked waiters whose contexts end),
-- a pool of its own (made and closed, or dropped) and its futures; some
-- sub-work on `other`, some of it never waited for.
local function worker_objects(ctx, i, other, shared)
  local w = require "weft"
  local c1, cancel1 = w.with_cancel(ctx)
  local c2 = w.with_timeout(c1, (i % 3) * 0.0005)
  local c3 = w.with_value(c2, "v", { i = i, pad = ("x"):rep(i % 64) })
  local c4 = w.with_deadline(c3, w.now() + 3600)
  if i % 2 == 0 then cancel1({ cause = i }) end
  assert(c4:value("v").i == i)
  -- channels with values left in them, one inside another
  local ch = w.chan(i % 4)
  for k = 1, i % 4 do assert(ch:try_send({ k = k, s = ("y"):rep(k) })) end
  if i % 3 == 0 then ch:close() end
  local outer = w.chan(1)
  assert(outer:try_send(ch))
  shared:try_send({ from = "job", i = i })  -- to the main state's channel
  -- blocked waiters whose contexts end: recv, send on a full channel, select
  local v, err = w.chan():recv(w.with_timeout(ctx, 0.0003))
  assert(v == nil and err == w.DEADLINE_EXCEEDED, tostring(err))
  local full = w.chan(1)
  full:try_send(1)
  assert(full:send(w.with_timeout(ctx, 0.0003), 2) == nil)
  local wc, wcancel = w.with_cancel(ctx)
  wcancel("stop")
  assert(full:send(wc, 2) == nil)
  local sel = w.select(w.with_timeout(ctx, 0.0002), { { recv = w.chan() }, { send = full, value = 3 } })
  assert(sel == nil)
  -- futures on the other pool: waited, and dropped unwaited
  local f = assert(other:submit(ctx, function(_, x) return x + 1 end, i))
  assert(select(2, f:wait(ctx)) == i + 1)
  other:submit(ctx, function(_, x) return x end, i)  -- dropped
  -- a pool of the job's own
  if i % 4 == 0 then
    local p = assert(w.pool { workers = 1, limit = 2, queue = 1, name = "leak-inner" })
    local g = assert(p:submit(ctx, function(_, x) return x * 3 end, i))
    assert(select(2, g:wait(ctx)) == i * 3)
    p:submit(ctx, function(c) return w.sleep(c, 0.0005) end)  -- dropped; w: copied by name
    if i % 8 == 0 then
      assert(p:close(5))
    end  -- else dropped: this worker's collector closes it
  end
  return i
end

-- The same from the main state: contexts, channels, pools, futures.
local function main_objects(i, pool, other, root, shared)
  local c1, cancel1 = weft.with_cancel(root)
  local c2 = weft.with_timeout(c1, (i % 5) * 0.0004)
  local c3 = weft.with_value(c2, i % 7, { i = i })
  local c4 = weft.with_deadline(c3, weft.now() + (i % 2 == 0 and 3600 or 0.0001))
  assert(c4:value(i % 7).i == i)
  if i % 3 ~= 0 then cancel1("dropped " .. i) end  -- others: collected uncanceled
  -- channels: values left in them; blocked waiters whose contexts end
  local ch = weft.chan(i % 5)
  for k = 1, i % 5 do ch:try_send({ k = k }) end
  if i % 2 == 0 then ch:close() end
  local v, err = weft.chan():recv(weft.with_timeout(root, 0.0002))
  assert(v == nil and err == DEADLINE)
  local sel = weft.select(weft.with_timeout(root, 0.0001), { { recv = weft.chan() }, { recv = ch } })
  assert(sel == 2 or sel == nil)
  -- a job blocked on a channel of ours, its context canceled from here
  local jc, jcancel = weft.with_cancel(root)
  local blocked = assert(pool:submit(jc, function(c, chan) return chan:recv(c) end, weft.chan()))
  -- futures: on_done then dropped; waited; dropped unresolved
  local done = 0
  pool:submit(bounded(), function(_, x) return x end, i):on_done(function() done = done + 1 end)
  local f = assert(pool:submit(bounded(), worker_objects, i, other, shared))
  pool:try_submit(bounded(), function() end)  -- dropped (or refused: saturated)
  jcancel("soak: waiter released")
  -- failed at its park point, or (canceled before it parked) recv said so
  local r = { await(blocked) }
  assert((r[1] == false and r[2] == weft.CANCELED) or (r[1] == true and r[2] == nil and r[3] == weft.CANCELED),
    tostring(r[2]))
  assert.same({ true, i }, { await(f) })
  -- a pool of our own: closed, closed with a timeout over a sleeping job, or dropped
  if i % 3 == 0 then
    local p = assert(weft.pool { workers = 1 + i % 2, limit = 4, name = "leak-main" })
    local g = assert(p:submit(bounded(), function(_, x) return x end, i))
    local sc, scancel = weft.with_cancel(root)
    local s = assert(p:submit(sc, function(c) return require("weft").sleep(c, 5) end))
    assert.same({ true, i }, { await(g) })
    assert(harness.eventually(function() return p:stats().parked == 1 end), "the sleeper never parked")
    if i % 9 == 0 then  -- interrupted by close(timeout)
      if not p:close(0.002) then  -- nil: the job took longer than that to end (slow sanitized runs)
        assert(p:close(10))
      end
      assert.same({ false, "pool closed" }, { await(s) })
    elseif i % 9 == 3 then  -- dropped with its sleeper canceled: the collector closes it
      scancel("dropped")
    else
      scancel("closing")
      assert(p:close(5))
      assert.same({ false, weft.CANCELED }, { await(s) })
    end
  end
  return function() return done end
end

describe("leaks", function()
  local root
  before_each(function() root = harness.start() end)
  after_each(harness.finish)

  it(("objects created and dropped in a loop from many states leak nothing: contexts, channels (values "
    .. "left in them, blocked waiters whose contexts end), pools (also made and closed inside jobs) and "
    .. "futures, %d iterations%s"):format(LOOPS, scale_note("300")), function()
    local function round(n)
      local pool = assert(weft.pool { workers = 2, limit = 16, queue = 16, name = "leak" })
      local other = assert(weft.pool { workers = 1, limit = 64, queue = 64, name = "leak-other" })
      local shared = weft.chan(4)
      local counters = {}
      for i = 1, n do counters[i] = main_objects(i, pool, other, root, shared) end
      assert(pool:close(10))
      assert(other:close(10))
      -- every on_done callback arrives, once
      local deadline = weft.now() + 10
      local function delivered()
        local d = 0
        for _, c in ipairs(counters) do d = d + c() end
        return d
      end
      while delivered() < n and weft.now() < deadline do
        if weft.poll() == 0 then weft.sleep(bounded(), 0.001) end
      end
      assert.equals(n, delivered())
    end
    -- warm-up: what the engine makes once and keeps (this state's inbox
    -- of completions; the timer's heap, which keeps its capacity: grown
    -- here to 16,384 entries, more than this loop's contexts with a
    -- deadline alive at once, collected or not) is made before the baseline
    round(8)
    do
      local hold = {}
      for i = 1, 16384 do hold[i] = weft.with_timeout(root, 3600) end
      assert(#hold == 16384)
    end
    local blocks0, bytes0 = soak.live()
    local _, threads0 = soak.proc()
    round(LOOPS)
    assert.equals(0, weft.poll())
    local blocks1, bytes1 = soak.live()
    local _, threads1 = soak.proc()
    note(("engine allocations: %d blocks %d bytes before, %d blocks %d bytes after; threads %d before, %d after")
      :format(blocks0, bytes0, blocks1, bytes1, threads0, threads1))
    assert.same({ blocks0, bytes0 }, { blocks1, bytes1 })
    assert.equals(threads0, threads1)
  end)
end)

---------------------------------------------------------------------------
-- cycles through engine objects (fuzz/known-bugs/crash-cancel-cause-holds-its-canceler):
-- a cause or a buffered message holding a handle that leads back to its
-- holder.  Every case is made and dropped ROUNDS times; the engine's blocks
-- must be back where they were (before the cycle collector, each round
-- left 3 or 4 blocks behind).  The semantic checks keep one handle, collect,
-- and look through it: what the cycle reaches must still be there.

describe("cycles through causes and channel messages", function()
  local root
  before_each(function() root = harness.start() end)
  after_each(harness.finish)

  local ROUNDS = SANITIZED and 20 or 100

  -- Runs make() (which builds a cycle and drops it) once to warm up, then
  -- ROUNDS times; the engine's live blocks and bytes must not move.
  local function no_leak(make, warmup)
    for _ = 1, warmup or 1 do make() end
    local blocks0, bytes0 = soak.live()
    for _ = 1, ROUNDS do make() end
    local blocks1, bytes1 = soak.live()
    local deadline = weft.now() + 5  -- a worker may still be dropping its last references
    while (blocks1 ~= blocks0 or bytes1 ~= bytes0) and weft.now() < deadline do
      weft.sleep(weft.background(), 0.01)
      blocks1, bytes1 = soak.live()
    end
    assert.same({ blocks0, bytes0 }, { blocks1, bytes1 },
      ("%d blocks %d bytes left after %d rounds"):format(blocks1 - blocks0, bytes1 - bytes0, ROUNDS))
  end

  it("a context canceled with itself as the cause is freed; ctx:cause() == ctx while it lives", function()
    no_leak(function()
      local c, cancel = weft.with_cancel(weft.background())
      cancel(c)
    end)
    local c, cancel = weft.with_cancel(root)
    cancel(c)
    cancel = nil  -- luacheck: ignore
    collectgarbage(); collectgarbage()
    assert.equals(weft.CANCELED, c:err())
    assert.equals(c, c:cause())
    assert.equals(c, c:cause():cause())
  end)

  it("a context canceled with its own cancel function as the cause is freed; the cause still cancels", function()
    no_leak(function()
      local c, cancel = weft.with_cancel(root)
      cancel(cancel)
      return c
    end)
    local c, cancel = weft.with_cancel(root)
    cancel(cancel)
    collectgarbage(); collectgarbage()
    assert.equals(cancel, c:cause())
    cancel = nil  -- luacheck: ignore
    collectgarbage(); collectgarbage()
    local k = c:cause()
    assert.equals("userdata", type(k))
    k("again")  -- the context is done: a no-op, but the function is alive
    assert.equals(k, c:cause())
  end)

  it("a cause holding the context and a descendant is freed; both still see it", function()
    no_leak(function()
      local c, cancel = weft.with_cancel(root)
      local d = weft.with_value(weft.with_cancel(c), "k", 1)
      cancel({ c, d, n = 2 })
    end)
    local c, cancel = weft.with_cancel(root)
    local mid = weft.with_cancel(c)
    local d = weft.with_value(mid, "k", 1)
    cancel({ c, d, n = 2 })
    c, cancel, mid = nil, nil, nil  -- luacheck: ignore
    collectgarbage(); collectgarbage()
    local t = d:cause()  -- the children got the parent's cause
    assert.equals(d, t[2])
    assert.equals(2, t.n)
    assert.equals(weft.CANCELED, t[1]:err())
    assert.equals(t[1], t[1]:cause()[1])
    assert.equals(d, t[1]:cause()[2])
    assert.equals(1, d:value("k"))
  end)

  it("a parent canceled with a cause holding its child is freed; the child still sees the cause", function()
    no_leak(function()
      local c, cancel = weft.with_cancel(root)
      local child = weft.with_cancel(c)
      cancel({ child = child })
    end)
    no_leak(function()  -- the child ended first: only the parent holds the cause
      local c, cancel = weft.with_cancel(root)
      local child, cancel_child = weft.with_cancel(c)
      cancel_child("first")
      cancel({ child = child })
    end)
    local c, cancel = weft.with_cancel(root)
    local child = weft.with_cancel(c)
    cancel({ child = child })
    c, cancel = nil, nil  -- luacheck: ignore
    collectgarbage(); collectgarbage()
    assert.equals(weft.CANCELED, child:err())
    assert.equals(child, child:cause().child)
  end)

  it("a channel sent through itself and never received is freed; received, it is itself", function()
    no_leak(function()
      local ch = weft.chan(1)
      assert(ch:send(root, ch))
    end)
    no_leak(function()  -- a message holding it, among plain ones
      local ch = weft.chan(4)
      assert(ch:send(root, 1))
      assert(ch:try_send({ ch, "x" }))
      assert(ch:send(root, "plain"))
    end)
    local ch = weft.chan(2)
    assert(ch:send(root, ch))
    assert(ch:send(root, { ch = ch }))
    collectgarbage(); collectgarbage()
    assert.equals(2, ch:len())
    assert.equals(ch, ch:recv(root))
    assert.equals(ch, ch:recv(root).ch)
    assert.equals(0, ch:len())
  end)

  it("a channel holding a context whose cause holds the channel is freed; received, the cause is there", function()
    no_leak(function()
      local ch = weft.chan(1)
      local c, cancel = weft.with_cancel(root)
      cancel({ ch })
      assert(ch:send(root, c))
    end)
    no_leak(function()  -- a value context whose value holds the channel
      local ch = weft.chan(1)
      assert(ch:send(root, weft.with_value(root, "ch", ch)))
    end)
    local ch = weft.chan(1)
    do
      local c, cancel = weft.with_cancel(root)
      cancel({ ch })
      assert(ch:send(root, c))
    end
    collectgarbage(); collectgarbage()
    local got = ch:recv(root)
    assert.equals(weft.CANCELED, got:err())
    assert.equals(ch, got:cause()[1])
  end)

  it("cycles made in a worker state are freed; the worker sees ctx:cause() == ctx", function()
    local pool = harness.new_pool { workers = 2, name = "cycles" }
    local function job(_, c, cancel, ch)
      cancel(c)
      assert(ch:send(c, ch) == nil)  -- c is done: the send refuses
      assert(ch:try_send({ ch, c }))
      return c:cause() == c
    end
    no_leak(function()
      local c, cancel = weft.with_cancel(root)
      assert.same({ true, true }, { await(pool:submit(root, job, c, cancel, weft.chan(1))) })
    end, ROUNDS)  -- warm-up: the pool's own tables reach their size
  end)
end)

---------------------------------------------------------------------------
-- found by the soak

describe("pool:close(timeout)", function()
  local root
  before_each(function() root = harness.start() end)
  after_each(harness.finish)

  -- pool:close(timeout) interrupts the jobs not started yet too (admitted,
  -- or queued): they end as they start, without running, so close returns
  -- and no spinning job outlives the pool (found by the soak).
  it("interrupts jobs not started yet (admitted or queued): all futures resolve, close returns true", function()
    local ctx, cancel = weft.with_cancel(root)
    local p = assert(weft.pool { workers = 1, limit = 2, queue = 1 })
    local spin = harness.spin
    local fs = {}
    for i = 1, 3 do fs[i] = assert(p:submit(ctx, spin)) end  -- running, admitted, queued
    harness.eventually(function() return p:stats().running == 1 end)
    local closed = { p:close(0.05) }
    local r = {}
    for i = 1, 3 do r[i] = { fs[i]:wait(weft.with_timeout(root, 0.5)) } end
    cancel("test over")  -- whatever happened, the jobs stop now
    assert(p:close(10))
    assert.same({ true }, closed)
    for i = 1, 3 do assert.same({ false, "pool closed" }, r[i], "job " .. i) end
  end)
end)
