--- mergesort.lua: recursive parallel merge sort with groups inside groups.
--
-- psort(ctx, arr) splits arr in two halves and sorts each as a job of a
-- group on the pool running it (weft.default_pool() in a job), which splits
-- again, and so on down to leaves of LEAF numbers or fewer, sorted with
-- table.sort; each job then merges its two sorted halves.  A group keeps no
-- results, so each half comes back through a channel.
--
-- Every job of the tree waits (parked, holding its slot) for its two
-- halves, so the pool's limit must hold the whole tree: 2 * leaves - 1
-- jobs.  With a smaller limit the jobs would fill every slot waiting for
-- sub-jobs the pool cannot admit, and the waits would fail with
-- weft.DEADLOCK (try: lua5.4 scripts/mergesort.lua 100000 64 32).
--
-- It prints the time against table.sort on the same numbers, and against
-- the same merge sort run sequentially in this state.  Do not expect a win
-- on a few cores: jobs share no memory, so every level of the tree copies
-- its numbers into the workers and the sorted halves back (about 0.1 s per
-- million numbers and direction), and table.sort is C.  Parallel jobs pay
-- when each element costs more than its copy.
--
-- Run from a checkout, after `make`:
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/?.so;;" lua5.4 scripts/mergesort.lua [n [leaves [limit]]]
local weft = require "weft"

local N = math.tointeger(tonumber(arg[1] or "")) or 1000000
local LEAVES = math.tointeger(tonumber(arg[2] or "")) or 64
local LEAF = N // LEAVES + 1             -- the largest array sorted by one leaf
local LIMIT = math.tointeger(tonumber(arg[3] or "")) or math.max(256, 2 * LEAVES)
local WORKERS = math.max(2, weft.ncpu())

-- Merges two sorted arrays into a new one.
local function merge(a, b)
  local out, i, j, k, na, nb = {}, 1, 1, 1, #a, #b
  while i <= na and j <= nb do
    local x, y = a[i], b[j]
    if y < x then
      out[k] = y; j = j + 1
    else
      out[k] = x; i = i + 1
    end
    k = k + 1
  end
  table.move(a, i, na, k, out)
  table.move(b, j, nb, k + na - i + 1, out)
  return out
end

-- Runs as a job: sorts arr (the job's own copy) and returns it.  It
-- captures only `merge`, `weft` and itself, all copyable.
local function psort(ctx, arr, leaf)
  local n = #arr
  if n <= leaf then
    table.sort(arr)
    return arr
  end
  local halves = weft.chan(2)                  -- room for both: send never waits
  local g = weft.group(ctx, { pool = weft.default_pool() })
  local function half(c, part, side, out, leaf_size)
    local ok, err = out:send(c, { side = side, sorted = psort(c, part, leaf_size) })
    if not ok then error(err, 0) end
  end
  local mid = n // 2
  g:go_label("left", half, table.move(arr, 1, mid, 1, {}), 1, halves, leaf)
  g:go_label("right", half, table.move(arr, mid + 1, n, 1, {}), 2, halves, leaf)
  local err = g:wait()                         -- parks this job until both are done
  if err then error(err, 0) end
  local a, b = halves:recv(ctx), halves:recv(ctx)
  if a.side == 2 then a, b = b, a end
  return merge(a.sorted, b.sorted)
end

-- The same algorithm in one state, for comparison.
local function ssort(arr, leaf)
  local n = #arr
  if n <= leaf then
    table.sort(arr)
    return arr
  end
  local mid = n // 2
  return merge(ssort(table.move(arr, 1, mid, 1, {}), leaf), ssort(table.move(arr, mid + 1, n, 1, {}), leaf))
end

local function check_sorted(t, what)
  assert(#t == N, ("%s: %d numbers, expected %d"):format(what, #t, N))
  for i = 2, N do
    if t[i - 1] > t[i] then error(("%s: not sorted at %d"):format(what, i)) end
  end
end

math.randomseed(42)
local data = {}
for i = 1, N do data[i] = math.random() end

print(("merge sort of %d numbers: %d leaves of <= %d, %d jobs; pool of %d workers, limit %d")
  :format(N, LEAVES, LEAF, 2 * LEAVES - 1, WORKERS, LIMIT))

-- Every wait below ends by this deadline at the latest.
local ctx = weft.with_timeout(weft.background(), "120s")

local pool <close> = assert(weft.pool { workers = WORKERS, limit = LIMIT, name = "sort" })
local t0 = weft.now()
local g = weft.group(ctx, { pool = pool })
local result = weft.chan(1)
g:go(function(c, arr, out, leaf)
  local ok, err = out:send(c, psort(c, arr, leaf))
  if not ok then error(err, 0) end
end, data, result, LEAF)
local err = g:wait()
if err then
  io.stderr:write("merge sort failed: ", tostring(err), "\n")
  os.exit(1)
end
local sorted = assert(result:recv(ctx))
local parallel = weft.now() - t0
check_sorted(sorted, "parallel merge sort")
local s = pool:stats()
assert(s.submitted == 2 * LEAVES - 1 or N <= LEAF, s.submitted)

local copy = table.move(data, 1, N, 1, {})
t0 = weft.now()
local seq = ssort(copy, LEAF)
local sequential = weft.now() - t0
check_sorted(seq, "sequential merge sort")

copy = table.move(data, 1, N, 1, {})
t0 = weft.now()
table.sort(copy)
local builtin = weft.now() - t0
check_sorted(copy, "table.sort")
for i = 1, N do assert(copy[i] == sorted[i]) end

print(("sorted: yes (%d jobs ran)"):format(s.submitted))
print(("parallel merge sort    %7.3f s"):format(parallel))
print(("sequential merge sort  %7.3f s  (parallel x%.2f)"):format(sequential, sequential / parallel))
print(("table.sort             %7.3f s  (parallel x%.2f)"):format(builtin, builtin / parallel))
