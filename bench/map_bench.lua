--- map, each and groups (issue 5, item 3: "weft.map must scale").
--
-- Target (never asserted, reported in the README): >= 5,000,000 items/s
-- for weft.map of 1,000,000 trivial items (fn = function(_, x) return
-- x * 2 end) on a pool of 2 workers (weft.pool { workers = 2 }).  For
-- reference: LuaLanes, batching 64 values per linda call, reaches
-- ~2,600,000/s on this machine.
--
-- Cases:
--   * the baseline: plain sequential Lua, a for loop making the same calls
--     fn(ctx, items[i], i) in one state, into a new results table;
--   * weft.map of the 1,000,000 items (default batching), 2 workers;
--   * weft.each of the same;
--   * weft.map with batch = 64 (LuaLanes' batch size);
--   * per-job overhead: a group of 10,000 tiny g:go jobs, and weft.map with
--     batch = 1 on 20,000 items (one job per item);
--   * a CPU-heavier fn (~2 us per item, calibrated in this state at load
--     on the fastest of 5 rounds) on 200,000 items, sequentially and by
--     weft.map on 2 workers: the note of the second gives the speedup
--     (median over median).
--
-- Every pool is weft.pool { workers = 2 }, made in setup (not timed) and
-- closed in teardown.  Every run gets its own parent context,
-- weft.with_timeout(weft.background(), 120): g:wait and map's waits take no
-- context, but at the deadline the jobs' contexts end and hard cancel (the
-- pool default) stops them, so no wait outlasts it for long.  Results
-- are checked after every run, outside the timed part (map: results[i] for
-- every i; each and groups: the return value and the pool's job counts);
-- a wrong result raises, and the harness reports the case as an error.
--
-- Notes give items/s (jobs/s) and ns per item (job) over the median of the
-- timed runs, the harness's warm-up left out, each run timed from the call
-- to its return (the check excluded), so a note may differ slightly from
-- the table's median run, which includes the check.  The "vs baseline"
-- column compares run times, so it means something only for the cases of
-- 1,000,000 items; the per-job and CPU cases have other counts.  The
-- sequential cases also say which CPU each run (warm-up included) ran on:
-- on a small VM one CPU can be much slower than the other, and a speedup
-- then depends on where the sequential runs landed.
local weft = require "weft"

local bg = weft.background()

local function bounded() return weft.with_timeout(bg, 120) end

local median = dofile("bench/stats.lua").median

-- Records a case's run times; returns the median of the timed runs so far
-- (the first run, the harness's warm-up, left out once there are others).
local function recorder()
  local times = {}
  return function(t)
    times[#times + 1] = t
    return median(#times > 1 and { table.unpack(times, 2) } or times)
  end
end

local function rate(n, t, unit)
  return ("%.0f %s/s, %.1f ns/%s"):format(n / t, unit, t / n * 1e9, unit)
end

local function new_pool() return assert(weft.pool { workers = 2 }) end

-- The CPU this thread last ran on (Linux; "?" elsewhere).  The two CPUs of
-- a small VM need not be equally fast, so the sequential cases say where
-- each of their runs ran ("0>1": started on CPU 0, ended on CPU 1).
local function this_cpu()
  local fh = io.open("/proc/thread-self/stat")
  if not fh then return "?" end
  local s = fh:read("a")
  fh:close()
  local rest = s:match(".*%)%s+(.*)") -- the fields after the command name
  local k = 2
  for f in (rest or ""):gmatch("%S+") do
    k = k + 1
    if k == 39 then return f end -- field 39: processor
  end
  return "?"
end

local function placer()
  local where = {}
  return function(c0, c1)
    where[#where + 1] = c0 == c1 and c0 or (c0 .. ">" .. c1)
    return "; ran on CPU " .. table.concat(where, "/")
  end
end

---------------------------------------------------------------------------
-- items and functions

local N = 1000000      -- trivial items
local N_JOBS = 10000   -- tiny g:go jobs
local N_ONE = 20000    -- map with batch = 1
local N_CPU = 200000   -- ~2 us items

local function range(n)
  local t = {}
  for i = 1, n do t[i] = i end
  return t
end

local ITEMS = range(N)
local ITEMS_ONE = range(N_ONE)
local ITEMS_CPU = range(N_CPU)

local function double(_, x) return x * 2 end

-- map of double over 1..n: results[i] == 2 * i for every i, and no more.
local function check_double(what, n, r, err)
  if r == nil then error(("%s failed: %s"):format(what, tostring(err)), 0) end
  if type(r) ~= "table" then error(("%s returned a %s"):format(what, type(r)), 0) end
  for i = 1, n do
    if r[i] ~= 2 * i then
      error(("%s: results[%d] is %s (want %d)"):format(what, i, tostring(r[i]), 2 * i), 0)
    end
  end
  if r[n + 1] ~= nil or #r ~= n then
    error(("%s: %d results (want %d)"):format(what, #r, n), 0)
  end
end

-- A pool's finished-job counts, to check that each and groups ran their
-- jobs and none failed.
local function counts(p)
  local s = p:stats()
  return { completed = s.completed, bad = s.failed + s.panicked + s.canceled }
end

local function check_counts(what, before, after, want_min, want_max)
  local done, bad = after.completed - before.completed, after.bad - before.bad
  if bad ~= 0 then error(("%s: %d jobs failed, panicked or were canceled"):format(what, bad), 0) end
  if done < want_min or done > want_max then
    error(("%s: %d jobs completed (want %d to %d)"):format(what, done, want_min, want_max), 0)
  end
end

-- The CPU-heavier fn: SPIN steps of an LCG, calibrated to ~2 us a call.
local function lcg(x, k)
  for j = 1, k do x = (x * 31 + j) % 1000003 end
  return x
end

-- Calibration: double until 20,000 calls take >= 20 ms, then time 5 such
-- rounds and scale to 2 us a call on the fastest (the least disturbed).
local SPIN = 16
do
  local function round()
    local t0 = weft.now()
    for i = 1, 20000 do lcg(i, SPIN) end
    return weft.now() - t0
  end
  while round() < 0.02 do SPIN = SPIN * 2 end
  local best = math.huge
  for _ = 1, 5 do best = math.min(best, round()) end
  SPIN = math.max(1, math.floor(SPIN * 2e-6 * 20000 / best + 0.5))
end

local function heavy(_, x) return lcg(x, SPIN) end

local CPU_EXPECTED = {}
local cpu_call_time
do
  local t0 = weft.now()
  for i = 1, N_CPU do CPU_EXPECTED[i] = heavy(nil, i) end
  cpu_call_time = (weft.now() - t0) / N_CPU
end

local function check_heavy(what, r, err)
  if r == nil then error(("%s failed: %s"):format(what, tostring(err)), 0) end
  for i = 1, N_CPU do
    if r[i] ~= CPU_EXPECTED[i] then
      error(("%s: results[%d] is %s (want %d)"):format(what, i, tostring(r[i]), CPU_EXPECTED[i]), 0)
    end
  end
  if #r ~= N_CPU then error(("%s: %d results (want %d)"):format(what, #r, N_CPU), 0) end
end

---------------------------------------------------------------------------
-- cases

local TARGET = " (target >= 5,000,000/s; LuaLanes batch 64: ~2,600,000/s)"
local BASELINE = "sequential Lua: for loop of fn(ctx, x, i), 1,000,000 trivial items (baseline)"

local seq_note = recorder()
local seq_where = placer()
local seq_median -- median of the sequential runs, for the map cases' notes

local function vs_seq(t)
  if not seq_median then return "" end
  return ("; x%.2f the sequential rate"):format(seq_median / t)
end

-- weft.map of double over ITEMS with opts (pool added).
local function map_case(name, opts, target)
  local note = recorder()
  return {
    name = name, n = N,
    setup = new_pool,
    run = function(n, p)
      local o = { pool = p }
      for k, v in pairs(opts) do o[k] = v end
      local ctx, cancel = bounded()
      local t0 = weft.now()
      local r, err = weft.map(ctx, ITEMS, double, o)
      local t = weft.now() - t0
      cancel()
      check_double(name, n, r, err)
      local mt = note(t)
      return rate(n, mt, "item") .. vs_seq(mt) .. (target or "")
    end,
    teardown = function(p) p:close() end,
  }
end

local cpu_seq_times = {}
local cpu_seq_note = recorder()
local cpu_seq_where = placer()
local cpu_map_note = recorder()

return {
  baseline = BASELINE,
  repeats = 5,

  { name = BASELINE, n = N,
    run = function(n)
      local ctx, cancel = bounded()
      local items = ITEMS
      local c0 = this_cpu()
      local t0 = weft.now()
      local r = {}
      for i = 1, n do r[i] = double(ctx, items[i], i) end
      local t = weft.now() - t0
      local where = seq_where(c0, this_cpu())
      cancel()
      check_double("sequential", n, r)
      seq_median = seq_note(t)
      return rate(n, seq_median, "item") .. where
    end },

  map_case("weft.map, 1,000,000 trivial items, 2 workers (default batching)", {}, TARGET),

  { name = "weft.each, the same 1,000,000 items, 2 workers", n = N,
    setup = new_pool,
    run = (function()
      local note = recorder()
      return function(n, p)
        local ctx, cancel = bounded()
        local c0 = counts(p)
        local t0 = weft.now()
        local ok, err = weft.each(ctx, ITEMS, double, { pool = p })
        local t = weft.now() - t0
        cancel()
        if ok ~= true then error(("weft.each failed: %s"):format(tostring(err)), 0) end
        -- batches of at most 4,096 items (README): at least n / 4,096 jobs
        check_counts("weft.each", c0, counts(p), (n + 4095) // 4096, n)
        local mt = note(t)
        return rate(n, mt, "item") .. vs_seq(mt)
      end
    end)(),
    teardown = function(p) p:close() end },

  map_case("weft.map, 1,000,000 trivial items, 2 workers, batch = 64", { batch = 64 },
    " (LuaLanes batch 64: ~2,600,000/s)"),

  { name = "group: 10,000 tiny g:go jobs, 2 workers", n = N_JOBS,
    setup = new_pool,
    run = (function()
      local note = recorder()
      return function(n, p)
        local ctx, cancel = bounded()
        local c0 = counts(p)
        local t0 = weft.now()
        local g = weft.group(ctx, { pool = p })
        for i = 1, n do g:go(double, i) end
        local err = g:wait()
        local t = weft.now() - t0
        cancel()
        if err ~= nil then error(("group failed: %s"):format(tostring(err)), 0) end
        check_counts("group", c0, counts(p), n, n)
        return rate(n, note(t), "job")
      end
    end)(),
    teardown = function(p) p:close() end },

  { name = "weft.map, 20,000 trivial items, 2 workers, batch = 1 (a job per item)", n = N_ONE,
    setup = new_pool,
    run = (function()
      local note = recorder()
      return function(n, p)
        local ctx, cancel = bounded()
        local c0 = counts(p)
        local t0 = weft.now()
        local r, err = weft.map(ctx, ITEMS_ONE, double, { pool = p, batch = 1 })
        local t = weft.now() - t0
        cancel()
        check_double("weft.map batch = 1", n, r, err)
        check_counts("weft.map batch = 1", c0, counts(p), n, n)
        return rate(n, note(t), "item")
      end
    end)(),
    teardown = function(p) p:close() end },

  { name = "CPU fn (~2 us/item), 200,000 items, sequential Lua", n = N_CPU,
    run = function(n)
      local ctx, cancel = bounded()
      local items = ITEMS_CPU
      local c0 = this_cpu()
      local t0 = weft.now()
      local r = {}
      for i = 1, n do r[i] = heavy(ctx, items[i], i) end
      local t = weft.now() - t0
      local where = cpu_seq_where(c0, this_cpu())
      cancel()
      check_heavy("sequential CPU fn", r)
      cpu_seq_times[#cpu_seq_times + 1] = t
      return rate(n, cpu_seq_note(t), "item")
        .. ("; %d LCG steps a call, %.2f us a call at load"):format(SPIN, cpu_call_time * 1e6) .. where
    end },

  { name = "CPU fn (~2 us/item), 200,000 items, weft.map on 2 workers", n = N_CPU,
    setup = new_pool,
    run = function(n, p)
      local ctx, cancel = bounded()
      local t0 = weft.now()
      local r, err = weft.map(ctx, ITEMS_CPU, heavy, { pool = p })
      local t = weft.now() - t0
      cancel()
      check_heavy("weft.map CPU fn", r, err)
      local mt = cpu_map_note(t)
      local speedup = ""
      if #cpu_seq_times > 0 then
        local timed = #cpu_seq_times > 1 and { table.unpack(cpu_seq_times, 2) } or cpu_seq_times
        speedup = ("; speedup x%.2f vs sequential"):format(median(timed) / mt)
      end
      return rate(n, mt, "item") .. speedup
    end,
    teardown = function(p) p:close() end },
}
