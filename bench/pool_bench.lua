--- Pools (issue 3, "Performance"): overhead, scaling and memory.
--
-- Targets (issue 3; never asserted, reported in the README):
--   overhead  >= 500,000 jobs/s (submit + future:wait, <= 1,024 outstanding)
--   scaling   >= 1.95x on 2 workers for 64 CPU-bound jobs of ~20 ms
--   memory    <= 64 KB per idle worker, <= 2 KB per parked job,
--             no creep job after job
-- The derived figures (jobs/s, speedup, KB) are in each case's note; the
-- "vs baseline" column compares with the direct-call loop, which only
-- means something for the overhead case.
local weft = require "weft"

local bg = weft.background()

local function rss_kb()
  local fh = assert(io.open("/proc/self/status"))
  local s = fh:read("a")
  fh:close()
  return tonumber(s:match("VmRSS:%s*(%d+)%s*kB"))
end

-- A bounded wait (a bench must not hang either).
-- One deadline for a whole run, not a context per wait: a context with a
-- deadline per job would cost more than the job (a timer entry each).
local bound = weft.with_timeout(bg, 300)

local function await(f)
  local ok, a = f:wait(bound)
  assert(ok ~= nil, "future still pending at the bench's 300 s bound")
  assert(ok, a)
  return a
end

local median = dofile("bench/stats.lua").median

-- The first line printed by the C program that make bench names in the
-- environment variable var (a figure of the machine, measured in this run).
local function machine_figure(var)
  local exe = os.getenv(var)
  if not exe then return "not measured (run it through make bench)" end
  local p = assert(io.popen("timeout 60 " .. exe))
  local out = p:read("a")
  p:close()
  return (assert(out:match("[^\n]+"), exe .. " printed nothing"))
end

---------------------------------------------------------------------------
-- (a) overhead

local JOBS = 200000
local OUTSTANDING = 1024

local function inc(x) return x + 1 end

local function run_jobs(p, n)
  local ring = {}
  local sum = 0
  for i = 1, n do
    local slot = i % OUTSTANDING + 1
    local f = ring[slot]
    if f then sum = sum + await(f) end
    ring[slot] = p:submit(bg, function(_, x) return x + 1 end, i)
  end
  for _, f in pairs(ring) do sum = sum + await(f) end
  return sum
end

---------------------------------------------------------------------------
-- (b) scaling: a pure-Lua CPU job of about 20 ms, calibrated in this state

local function spin(iters)
  local x = 0
  for i = 1, iters do x = (x + i * 7) % 1000003 end
  return x
end

local SPIN = 1000
do -- double until one call takes >= 20 ms, then scale
  while true do
    local t0 = weft.now()
    spin(SPIN)
    local t = weft.now() - t0
    if t >= 0.005 then
      SPIN = math.floor(SPIN * 0.020 / t)
      break
    end
    SPIN = SPIN * 2
  end
end
local CPU_JOBS = 64
local seq_times = {}

---------------------------------------------------------------------------
-- (c) memory: measured in fresh lua5.4 processes (same LUA_PATH and
-- LUA_CPATH), so memory freed by earlier cases cannot hide the growth.

local RSS_FN = [[
local function rss_kb()
  local fh = assert(io.open("/proc/self/status"))
  local s = fh:read("a")
  fh:close()
  return tonumber(s:match("VmRSS:%s*(%d+)%s*kB"))
end
local weft = require "weft"
local bg = weft.background()
collectgarbage()
]]

-- prints the RSS growth (KB) from making a pool of WORKERS workers (all
-- started, standard libraries and weft loaded)
local IDLE_WORKERS = RSS_FN .. [[
local r0 = rss_kb()
local p = assert(weft.pool { workers = WORKERS })
print(rss_kb() - r0)
p:close()
]]

-- prints the RSS growth (KB) with 10,000 parked jobs, and how many parked
local PARKED = RSS_FN .. [[
local p = assert(weft.pool { workers = 2, limit = 10000 })
local hold, release = weft.with_cancel(bg)
-- warm up: one round of 100 parked jobs, so the pool's own start-up
-- allocations are not counted
local fs = {}
for i = 1, 100 do fs[i] = p:submit(bg, function(_, h) return h:wait(60) end, hold) end
release()
for i = 1, #fs do fs[i]:wait(weft.with_timeout(bg, 60)) end
p:wait()
hold, release = weft.with_cancel(bg)
fs = {}
collectgarbage()
local r0 = rss_kb()
for i = 1, 10000 do fs[i] = p:submit(bg, function(_, h) return h:wait(60) end, hold) end
local deadline = weft.now() + 30
while p:stats().parked < 10000 and weft.now() < deadline do weft.sleep(bg, 0.01) end
local parked = p:stats().parked
print(rss_kb() - r0, parked)
release()
for i = 1, #fs do fs[i]:wait(weft.with_timeout(bg, 60)) end
p:close()
]]

local function child(code)
  local file = os.tmpname()
  local fh = assert(io.open(file, "w"))
  fh:write(code)
  fh:close()
  local p = assert(io.popen("timeout 120 lua5.4 " .. file))
  local out = p:read("a")
  p:close()
  os.remove(file)
  assert(out:match("%d"), "child printed nothing")
  return out
end


-- 200 times: a job fn(ctx) on a fresh pool(opts), its context canceled
-- 1 ms after submit; the latency from cancel() to the future resolving in
-- this state, or (from_result) from the time the job returns as its result.
-- Returns "median X us, p99 Y us (N cancels)" (a job the cancel reached
-- before it started gives no sample for from_result).
local function cancel_latency(opts, fn, from_result)
  local p = assert(weft.pool(opts))
  local lat = {}
  for _ = 1, 200 do
    local ctx, cancel = weft.with_cancel(bg)
    local f = assert(p:submit(ctx, fn))
    weft.sleep(bg, 0.001)
    local t0 = weft.now()
    cancel()
    local _, t = f:wait(bound)  -- made once: no timer armed in the window
    if not from_result then
      lat[#lat + 1] = (weft.now() - t0) * 1e6
    elseif math.type(t) == "float" then  -- else it never started: no sample
      lat[#lat + 1] = (weft.now() - t) * 1e6
    end
  end
  p:close()
  table.sort(lat)
  local n = #lat
  return ("median %.1f us, p99 %.1f us (%d cancels)")
    :format(lat[(n + 1) // 2], lat[math.max(1, math.ceil(n * 0.99))], n)
end

return {
  baseline = "overhead: direct call x + 1 (baseline)",
  repeats = 3,

  { name = "overhead: direct call x + 1 (baseline)", n = JOBS,
    run = function(n)
      local sum = 0
      for i = 1, n do sum = sum + inc(i) end
      return sum > 0 and nil
    end },

  -- (a') what (a) moves between the cores at every job costs a cache line
  -- round trip each (bench/core_rtt.c, C); the host changes it between
  -- runs, and (a) with it
  { name = "overhead floor: a cache line's round trip between the cores (C)", n = 1,
    run = function() return machine_figure("WEFT_CORE_RTT") end },

  { name = "overhead: submit + future:wait, 2 workers, <= 1,024 outstanding", n = JOBS,
    setup = function() return assert(weft.pool { workers = 2, limit = OUTSTANDING }) end,
    run = function(n, p)
      local t0 = weft.now()
      run_jobs(p, n)
      local t = weft.now() - t0
      return ("%.0f jobs/s (target >= 500,000)"):format(n / t)
    end,
    teardown = function(p) p:close() end },

  { name = "scaling: 64 CPU jobs of ~20 ms, sequential in the main state", n = CPU_JOBS,
    run = function(n)
      local t0 = weft.now()
      for _ = 1, n do spin(SPIN) end
      seq_times[#seq_times + 1] = weft.now() - t0
      return ("%.1f ms per job"):format((weft.now() - t0) / n * 1e3)
    end },

  { name = "scaling: the same 64 jobs on a pool of 2 workers", n = CPU_JOBS,
    setup = function() return assert(weft.pool { workers = 2, limit = CPU_JOBS }) end,
    run = function(n, p)
      local t0 = weft.now()
      local fs = {}
      for i = 1, n do fs[i] = p:submit(bg, function(_, k) return spin(k) end, SPIN) end
      for i = 1, n do await(fs[i]) end
      local t = weft.now() - t0
      local seq = #seq_times > 0 and median(seq_times) or nil
      return seq and ("speedup x%.2f vs sequential (target >= 1.95)"):format(seq / t) or nil
    end,
    teardown = function(p) p:close() end },

  { name = "memory: RSS per idle worker (64 vs 2 workers, fresh processes)", n = 1,
    run = function()
      local d2 = tonumber(child((IDLE_WORKERS:gsub("WORKERS", "2"))))
      local d64 = tonumber(child((IDLE_WORKERS:gsub("WORKERS", "64"))))
      return ("%.1f KB per worker (2 workers: +%d KB, 64: +%d KB; target <= 64)")
        :format((d64 - d2) / 62, d2, d64)
    end },

  { name = "memory: RSS per parked job (10,000 parked, fresh process)", n = 1,
    run = function()
      local out = child(PARKED)
      local d, parked = out:match("(%-?%d+)%s+(%d+)")
      d, parked = tonumber(d), tonumber(parked)
      return ("%.2f KB per parked job (%d parked, +%d KB; target <= 2)"):format(d / parked, parked, d)
    end },

  { name = "memory: creep, 100,000 small jobs vs 10,000", n = 1,
    run = function()
      local p = assert(weft.pool { workers = 1, limit = OUTSTANDING })
      local function worker_kb()
        return await(p:submit(bg, function() return collectgarbage("count") end))
      end
      run_jobs(p, 10000)
      collectgarbage()
      local r10, w10 = rss_kb(), worker_kb()
      run_jobs(p, 90000)
      collectgarbage()
      local r100, w100 = rss_kb(), worker_kb()
      p:close()
      return ("worker heap %.0f -> %.0f KB (%+.1f), process RSS %d -> %d KB (%+d)")
        :format(w10, w100, w100 - w10, r10, r100, r100 - r10)
    end },

  -- (d) hard cancel: cancel() of a running `while true do end` job to its
  -- future resolving in the main state (issue 3: <= 20 us median, <= 200 us p99)
  { name = "cancel latency: cancel() of a spinning job to its future resolving", n = 1,
    run = function()
      return cancel_latency({ workers = 2 }, function() while true do end end)
        .. " (target <= 20 / <= 200)"
    end },

  -- (d') the floor under (d): a signal from pthread_kill to its handler on
  -- a thread spinning on the other core, in C (bench/signal_floor.c), the
  -- delivery hard cancel is built on; make bench builds it
  { name = "cancel latency floor: a signal to a spinning thread (C, no Lua)", n = 1,
    run = function() return machine_figure("WEFT_SIGNAL_FLOOR") end },

  -- (e) the same for a job parked in ctx:wait(): it is woken, resumed and
  -- fails at its park point
  { name = "cancel latency: cancel() of a parked job to its future resolving", n = 1,
    run = function()
      return cancel_latency({ workers = 2, limit = 64 }, function(c) c:wait() end)
    end },

  -- (f) cancel before block: the context ends while the job still computes
  -- (hard cancel off), so its next blocking call must return at once: from
  -- the job reaching ctx:wait() to its future resolving in the main state
  { name = "cancel latency: a blocking call after the cancel, to the future resolving", n = 1,
    run = function()
      return cancel_latency({ workers = 2, hard_cancel = false }, function(c)
        local w = require "weft"
        while not c:err() do end  -- computes until the cancel
        local t = w.now()
        c:wait()
        return t
      end, true)
    end },
}
