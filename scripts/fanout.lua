--- fanout.lua: work that fans out, and fans out again, on two pools.
--
-- The structure the README recommends for nested fan-out: top-level jobs
-- run on an `outer` pool, and each splits its own work into sub-jobs on an
-- `inner` pool.  A job waiting for its sub-jobs then never holds a slot
-- that those sub-jobs need; on a single pool whose limit is too small the
-- same work ends in a deadlock error (shown at the end), never a hang.
--
-- The work: a few "reports", each counting the primes in a range of
-- numbers; a report splits its range into parts counted in parallel.
--   1. every report, with errors collected per report (on_error = "collect")
--   2. a failing report cancels the others at once (on_error = "cancel")
--   3. the same nesting on one pool with too small a limit: weft.DEADLOCK
--
-- Run from a checkout, after `make`:
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/?.so;;" lua5.4 scripts/fanout.lua
local weft = require "weft"

-- Every wait below ends by this deadline at the latest.
local ctx = weft.with_timeout(weft.background(), "60s")

local outer <close> = assert(weft.pool { workers = 2, limit = 4, name = "outer" })
local inner <close> = assert(weft.pool { workers = math.max(2, weft.ncpu()), limit = 16, name = "inner" })

-- Sub-work: the primes in [lo, hi] (trial division; CPU work).
local function count_primes(c, lo, hi)
  if lo < 1 then error(("count_primes: bad range %d..%d"):format(lo, hi)) end
  local n = 0
  for x = math.max(lo, 2), hi do
    local prime = true
    for d = 2, math.floor(math.sqrt(x)) do
      if x % d == 0 then prime = false break end
    end
    if prime then n = n + 1 end
    if x % 4096 == 0 and c:err() then return nil end -- canceled: stop early
  end
  return n
end

-- Top-level work, run on `outer`: a report splits its range into `parts`
-- and counts them on `sub_pool` with weft.map (a group: the first failing
-- part cancels the others and is the report's error).  Everything this
-- function uses arrives as an argument or a copyable upvalue (count_primes).
local function report(c, r, sub_pool, results)
  local parts, step = {}, math.ceil((r.hi - r.lo + 1) / r.parts)
  for lo = r.lo, r.hi, step do parts[#parts + 1] = { lo, math.min(lo + step - 1, r.hi) } end
  local counts, err = weft.map(c, parts, function(cc, part)
    return count_primes(cc, part[1], part[2])
  end, { pool = sub_pool, batch = 1 })
  if not counts then error(err, 0) end
  local total = 0
  for _, n in ipairs(counts) do total = total + n end
  local ok, serr = results:send(c, { name = r.name, primes = total, parts = #parts })
  if not ok then error(serr, 0) end
end

local reports = {
  { name = "small", lo = 1, hi = 200000, parts = 4 },
  { name = "broken", lo = -99, hi = 100000, parts = 4 }, -- its first part fails
  { name = "medium", lo = 200001, hi = 600000, parts = 8 },
  { name = "large", lo = 600001, hi = 1400000, parts = 16 },
  { name = "tail", lo = 1400001, hi = 1600000, parts = 4 },
}

-- 1. Every report; errors collected, each with its job's label.
do
  local results = weft.chan(#reports)
  local t0 = weft.now()
  local g = weft.group(ctx, { pool = outer, limit = 2, on_error = "collect" })
  for _, r in ipairs(reports) do
    g:go_label(r.name, report, r, inner, results)
  end
  local errs = g:wait()
  results:close()
  print(("1. collect: %d reports in %.2f s"):format(#reports, weft.now() - t0))
  for res in results:iter(ctx) do
    print(("   %-7s %7d primes (%d parts)"):format(res.name, res.primes, res.parts))
  end
  for _, e in ipairs(errs or {}) do
    print(("   job %d (%s) failed: %s"):format(e.index, e.label, e.error:match("^[^\n]*")))
  end
  local os_, is_ = outer:stats(), inner:stats()
  print(("   outer ran %d jobs, inner %d"):format(os_.submitted, is_.submitted))
end

-- 2. The default policy: a part of the broken report fails, which fails
-- its map, which fails the report; the group's context is canceled at
-- once, and the reports still running stop (their count loops check the
-- context; hard cancel would stop them anyway).
do
  local results = weft.chan(#reports)
  local t0 = weft.now()
  local g, gctx = weft.group(ctx, { pool = outer })
  for _, r in ipairs(reports) do g:go(report, r, inner, results) end
  local err = g:wait()
  results:close()
  local finished = 0
  for _ in results:iter(ctx) do finished = finished + 1 end
  print(("2. cancel: failed after %.2f s with %q; %d of %d reports finished; gctx: %s")
    :format(weft.now() - t0, err:match("^[^\n]*"), finished, #reports, gctx:err()))
end

-- 3. The same nesting on ONE pool with limit 2: both slots hold reports
-- waiting to submit their parts to that same full pool.  weft detects it
-- and the waits fail with an error starting with weft.DEADLOCK.
do
  local small = assert(weft.pool { workers = 1, limit = 2, name = "one-pool",
                                   on_panic = function() end })
  local results = weft.chan(#reports)
  local g = weft.group(ctx, { pool = small })
  for i = 1, 2 do g:go(report, reports[i], small, results) end
  local t0 = weft.now()
  local err = g:wait()
  print(("3. one pool, limit 2: after %.3f s: %s"):format(weft.now() - t0, err:match("^[^\n]*")))
  assert(err:sub(1, #weft.DEADLOCK) == weft.DEADLOCK)
  small:close("2s")
end
