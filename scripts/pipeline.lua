--- pipeline.lua: a three-stage pipeline with weft.pipeline.
--
--   generate (a source job) -> transform (in parallel) -> aggregate (a sink)
--
-- The source emits the numbers 1..N in chunks of CHUNK (one item per number
-- would spend more time passing items than working on them); the transform
-- stage computes the length of the Collatz sequence of each number in a
-- chunk (CPU work of uneven size) on several workers at once; the sink,
-- called here in the main state for each result, keeps the total and the
-- longest sequence.  Bounded channels between the stages keep the source at
-- most a few chunks ahead of the workers.
--
-- Run from a checkout, after `make`:
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/?.so;;" lua5.4 scripts/pipeline.lua
local weft = require "weft"
local pipeline = require "weft.pipeline"

local N, CHUNK = 1000000, 5000
local WORKERS = math.max(2, weft.ncpu())

-- Steps to reach 1 from n (3n + 1 when odd, n / 2 when even).
local function collatz(n)
  local steps = 0
  while n ~= 1 do
    if n % 2 == 0 then n = n // 2 else n = 3 * n + 1 end
    steps = steps + 1
  end
  return steps
end

-- Every wait below ends by this deadline at the latest.
local ctx = weft.with_timeout(weft.background(), "60s")

-- 1. generate: runs as a job in a worker; emit blocks while the stage after
-- it is busy (backpressure) and returns nil, err once the run has ended.
local function generate(_, emit)
  for first = 1, N, CHUNK do
    local ok, err = emit({ first = first, last = math.min(first + CHUNK - 1, N) })
    if not ok then return nil, err end
  end
end

-- 2. transform: a copy of this function runs in each worker's own Lua
-- state; it captures `collatz` (copied with it), nothing else.
local function transform(_, chunk)
  local r = { steps = 0, n = chunk.first, longest = 0 }
  for n = chunk.first, chunk.last do
    local s = collatz(n)
    r.steps = r.steps + s
    if s > r.longest then r.n, r.longest = n, s end
  end
  return r
end

-- 3. aggregate: runs here, one result at a time.
local total, longest = 0, { n = 1, steps = 0 }
local function aggregate(r)
  total = total + r.steps
  if r.longest > longest.steps then longest = { n = r.n, steps = r.longest } end
end

local t0 = weft.now()
local count, err = pipeline.run(ctx, generate, {
  { transform, workers = WORKERS },
}, { sink = aggregate, buffer = 4 })
local took = weft.now() - t0
assert(count, err)
print(("pipeline: %d numbers in %d chunks on %d workers in %.2f s"):format(N, count, WORKERS, took))
print(("  total steps %d; longest: %d takes %d steps"):format(total, longest.n, longest.steps))

-- The same work in one state, to check the result (and to compare times).
t0 = weft.now()
local seq_total, seq_longest = 0, { n = 1, steps = 0 }
for n = 1, N do
  local s = collatz(n)
  seq_total = seq_total + s
  if s > seq_longest.steps then seq_longest = { n = n, steps = s } end
end
print(("sequential: %.2f s; results agree: %s"):format(weft.now() - t0,
  tostring(seq_total == total and seq_longest.n == longest.n)))
assert(seq_total == total and seq_longest.n == longest.n)

-- An error in any stage stops the whole pipeline at once and is the result
-- (with the traceback of a raise); results are then not returned.
local results, perr = pipeline.run(ctx, generate, {
  { function(_, n)
      if n.first > N / 2 then error("cannot transform chunk " .. n.first) end
      return n
    end, workers = WORKERS },
})
print(("failing run: results=%s, err=%q"):format(tostring(results), perr:match("^[^\n]*")))
