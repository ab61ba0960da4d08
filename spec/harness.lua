-- spec/harness.lua: the test harness the specs share (not a spec itself:
-- busted runs spec/*_spec.lua only).  Each spec loads a fresh copy, so its
-- state is the spec's own:
--
--   local harness = dofile("spec/harness.lua")   -- busted runs from the repo root
--   harness.configure { root_timeout = 240 }
--   local bounded, await, new_pool = harness.bounded, harness.await, harness.new_pool
--   local root
--   before_each(function() root = harness.start() end)
--   after_each(harness.finish)
--
-- Every wait has a bound: blocking calls from the main state take a context
-- with a timeout (`bounded`), futures are awaited with one (`await`), and
-- jobs block only on contexts under `root`, which h.finish cancels before
-- it closes the test's pools; so a broken engine fails a test instead of
-- hanging it.  Timings are generous bounds, never measurements.
--
-- The asserts here are busted's (luassert), as in the specs themselves.
local assert = require "luassert"
local weft = require "weft"

local bg = weft.background()

local h = { bg = bg }

-- plain | tsan | asan (set by spec/run); big tests are scaled down under
-- the sanitizers, and say so in their names.
h.VARIANT = os.getenv("WEFT_TEST_VARIANT") or "plain"
h.SANITIZED = h.VARIANT ~= "plain"

-- Spins without ever yielding, until hard cancel interrupts it.  Under
-- ThreadSanitizer a signal reaches a thread only when it enters an
-- intercepted function, and a loop that never leaves Debian's
-- (uninstrumented) liblua would never see the cancel signal: there the loop
-- allocates (calls malloc).  The plain and ASan runs use the pure loop.
-- (No upvalues: jobs capture it and it is copied into their states.)
h.spin = h.VARIANT == "tsan" and function() while true do local _ = {} end end
                               or function() while true do end end

-- The options of h.configure (see there).
local root_timeout          -- nil: root has no timeout of its own
local bound = 20            -- default seconds of bounded() and await()
local under_root = true     -- bounded() contexts hang under root (else bg)
local close_timeout         -- nil: pools[i]:close(); else assert(close(t))
local close_oldest_first = false

-- The current test's root context, its cancel function and the pools made
-- with new_pool.  `base` is the parent of bounded() contexts.
local root, cancel_root
local pools
local base

-- h.configure(opts): per spec, before its tests run.
--   root_timeout        seconds: root = weft.with_timeout(bg, root_timeout);
--                       nil: root = weft.with_cancel(bg)
--   bound               default seconds of bounded(d) and await(f, d) (20)
--   bounded_under       "root" (default) or "background": the parent of the
--                       contexts bounded() makes
--   close_timeout       nil: each pool is closed with p:close(); else with
--                       assert(p:close(close_timeout))
--   close_oldest_first  close the pools in the order they were made
--                       (default: the newest first)
function h.configure(opts)
  opts = opts or {}
  root_timeout = opts.root_timeout
  bound = opts.bound or 20
  assert(opts.bounded_under == nil or opts.bounded_under == "root" or opts.bounded_under == "background",
    "bounded_under: \"root\" or \"background\"")
  under_root = opts.bounded_under ~= "background"
  base = not under_root and bg or nil
  close_timeout = opts.close_timeout
  close_oldest_first = opts.close_oldest_first or false
  return h
end
h.configure()

-- before_each: a fresh root context and pool list; returns root.
function h.start()
  if root_timeout then
    root, cancel_root = weft.with_timeout(bg, root_timeout)
  else
    root, cancel_root = weft.with_cancel(bg)
  end
  if under_root then base = root end
  pools = {}
  return root
end

local function close(p)
  if close_timeout then
    assert(p:close(close_timeout))
  else
    p:close()
  end
end

-- after_each: cancels root (releasing any job still waiting on it), then
-- closes every pool made with new_pool.
function h.finish()
  cancel_root("test over")
  if close_oldest_first then
    for _, p in ipairs(pools) do close(p) end
  else
    for i = #pools, 1, -1 do close(pools[i]) end
  end
  pools = nil
end

-- A context (under root, or bg: see bounded_under) that ends by itself
-- after d seconds (default: the `bound` option, 20).
function h.bounded(d)
  return (weft.with_timeout(base, d or bound))
end

-- f:wait() with a bound; fails the test (instead of hanging) when the
-- future is still pending after d seconds.  Returns what f:wait returns.
function h.await(f, d)
  local r = table.pack(f:wait(h.bounded(d or bound)))
  assert(r[1] ~= nil, "future still pending after " .. (d or bound) .. "s: " .. tostring(r[2]))
  return table.unpack(r, 1, r.n)
end

-- Polls cond() every 5 ms until it is true or d seconds (default 10)
-- passed; returns whether it became true.
function h.eventually(cond, d)
  local deadline = weft.now() + (d or 10)
  while not cond() do
    if weft.now() > deadline then return false end
    weft.sleep(bg, 0.005)
  end
  return true
end

-- weft.pool(opts), closed by h.finish after the test.
function h.new_pool(opts)
  local p, err = weft.pool(opts)
  assert(p, err)
  pools[#pools + 1] = p
  return p
end

-- Waits until n jobs of p are parked (blocked in a weft call).
function h.parked(p, n)
  assert(h.eventually(function() return p:stats().parked == n end),
    "expected " .. n .. " parked jobs, have " .. p:stats().parked)
end

-- Seconds since t0 (a weft.now() reading).
function h.elapsed_since(t0) return weft.now() - t0 end

return h
