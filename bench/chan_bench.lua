--- Channels (issue item 6): messages per second through a channel between
-- two workers, for capacities 0, 1 and 1024, with small values (integers)
-- and ~1 KB tables (32 strings of 32 bytes, plus a sequence number).
--
-- Target (never asserted, reported in the README): >= 2,000,000 small
-- messages/s with capacity 1024.  For reference: effil's channel between 2
-- threads moves ~1,070,000/s, a LuaLanes linda ~240,000/s (one message per
-- call).
--
-- Each worker -> worker case: a pool of 2 workers (limit 2), a producer
-- job that sends 1..N then closes, a consumer job that receives until
-- closed and returns its count and sum; the main state waits on both
-- futures with a bounded context and checks count, sum and order (a bench
-- that moves wrong data fails loudly).  The two jobs meet before they
-- start (see meet), else the pool often runs both on one worker; the note
-- says on how many threads they ran in each run (warm-up included).
-- Beside them: the same jobs on a pool of 1 worker (hand-over by parking
-- in one thread), the main state sending to one consumer job, and one
-- state sending and receiving by itself (the calls and the copy, no
-- threads).
--
-- The baseline is the same number of values pushed and popped through a
-- plain Lua table queue in one state; weft.copy of the 1 KB table shows
-- what the copy alone costs.  Every wait is bounded by
-- weft.with_timeout(weft.background(), 60).  Notes give messages/s and
-- ns/message over the median run (a channel run is timed from making the
-- channel to both futures resolved).  Cross-thread figures swing widely
-- from run to run on a small or shared machine (a hand-over between two
-- threads costs a wake-up whenever the other thread is not running): run
-- it twice.
local weft = require "weft"

local bg = weft.background()
local CAP = 1024 -- the plain queue's capacity

-- Whether channels are built (they may not be: the channel cases then fail
-- loudly and the baselines still run).  Called in run, not in setup: the
-- harness does not guard setup.
local function need_chan()
  if weft.chan == nil then error("weft.chan is missing: channels are not built into weft.core", 0) end
end

local function bounded() return weft.with_timeout(bg, 60) end

-- future:wait with a bound; returns the job's results, raises its error.
local function await(f)
  local r = table.pack(f:wait(bounded()))
  if r[1] == nil then error("future still pending after 60 s: " .. tostring(r[2]), 0) end
  if not r[1] then error("job failed: " .. tostring(r[2]), 0) end
  return table.unpack(r, 2, r.n)
end

-- The harness prints the note of a case's last run; so that the note
-- agrees with the median in the table, each case records its run times
-- and its note is the median of the timed runs so far (the first run, the
-- harness's warm-up, left out).
local median = dofile("bench/stats.lua").median

local function recorder(unit)
  local times = {}
  return function(n, t, extra)
    times[#times + 1] = t
    local timed = #times > 1 and { table.unpack(times, 2) } or times
    local mt = median(timed)
    return ("%.0f %s/s, %.0f ns each%s"):format(n / mt, unit, mt / n * 1e9, extra or "")
  end
end

---------------------------------------------------------------------------
-- the values

-- ~1 KB: 32 strings of 32 bytes (distinct, so nothing is shared), and seq.
local function make_kb()
  local t = {}
  for i = 1, 32 do t[i] = ("%02d:"):format(i) .. ("x"):rep(29) end
  return t
end
local KB_FIRST, KB_LAST = make_kb()[1], make_kb()[32]
assert(#KB_FIRST == 32 and #KB_LAST == 32)

local function check(what, n, count, sum)
  if count ~= n or sum ~= n * (n + 1) // 2 then
    error(("%s: moved wrong data: count %s (want %d), sum %s (want %d)")
      :format(what, tostring(count), n, tostring(sum), n * (n + 1) // 2), 0)
  end
end

---------------------------------------------------------------------------
-- jobs (copied into the workers; weft travels by name)

-- A job that fails closes the channel first, so the other job ends at once
-- (its send or receive sees it closed) instead of at the 60 s bound.
local function fail(ch, msg)
  ch:close()
  error(msg, 0)
end

-- The OS thread running this job (Linux), to report where the jobs ran.
local function thread_id()
  local fh = io.open("/proc/thread-self/stat")
  if not fh then return nil end
  local line = fh:read("l")
  fh:close()
  return line and tonumber(line:match("^(%d+)"))
end

-- Left alone, the pool often runs both jobs on one worker: the first job
-- parks at once (nothing to receive, or nobody receiving), its worker is
-- free again and takes the second job before the other worker wakes; the
-- hand-over is then a park and resume in one thread.  So that the two
-- jobs run on two workers (two threads), each waits for the other to
-- start without parking: it busy-waits on `ready` (a channel of capacity
-- 2 that each job puts one value into), for at most 10 s.
local function meet(ctx, ch, ready)
  if ready == nil then return end
  ready:try_send(true)
  local deadline = weft.now() + 10
  while ready:len() < 2 do
    if ctx:err() or weft.now() > deadline then fail(ch, "the other job did not start within 10 s") end
  end
end

local function produce_int(ctx, ch, n, ready)
  local tid = thread_id()
  meet(ctx, ch, ready)
  for i = 1, n do
    local ok, err = ch:send(ctx, i)
    if not ok then fail(ch, ("send %d: %s"):format(i, tostring(err))) end
  end
  ch:close()
  return n, tid
end

local function produce_kb(ctx, ch, n, ready)
  local tid = thread_id()
  meet(ctx, ch, ready)
  local t = make_kb()
  for i = 1, n do
    t.seq = i -- the send copies t: changing it afterwards is safe
    local ok, err = ch:send(ctx, t)
    if not ok then fail(ch, ("send %d: %s"):format(i, tostring(err))) end
  end
  ch:close()
  return n, tid
end

-- Receives until closed; checks order (one producer: FIFO) as it goes.
local function consume_int(ctx, ch, ready)
  local tid = thread_id()
  meet(ctx, ch, ready)
  local count, sum = 0, 0
  while true do
    local v, err = ch:recv(ctx)
    if v == nil then
      if err ~= weft.CLOSED then fail(ch, ("recv after %d: %s"):format(count, tostring(err))) end
      break
    end
    count = count + 1
    if v ~= count then fail(ch, ("message %d is %s"):format(count, tostring(v))) end
    sum = sum + v
  end
  return count, sum, tid
end

local function consume_kb(ctx, ch, ready)
  local tid = thread_id()
  meet(ctx, ch, ready)
  local count, sum = 0, 0
  while true do
    local v, err = ch:recv(ctx)
    if v == nil then
      if err ~= weft.CLOSED then fail(ch, ("recv after %d: %s"):format(count, tostring(err))) end
      break
    end
    count = count + 1
    if type(v) ~= "table" or v.seq ~= count or #v ~= 32 or v[1] ~= KB_FIRST or v[32] ~= KB_LAST then
      fail(ch, ("message %d is wrong (seq %s)"):format(count, type(v) == "table" and tostring(v.seq) or type(v)))
    end
    sum = sum + v.seq
  end
  return count, sum, tid
end

---------------------------------------------------------------------------
-- cases

-- worker -> worker: producer and consumer jobs on a pool of 2 workers,
-- made to run on both (meet); workers = 1: both jobs on one worker,
-- handing over by parking.  The note says on how many threads the jobs
-- ran, over the runs.
local function w2w_case(name, cap, n, producer, consumer, target, workers)
  workers = workers or 2
  local rate_note = recorder("msg")
  local placements = {}
  return {
    name = name, n = n,
    setup = function() return assert(weft.pool { workers = workers, limit = 2 }) end,
    run = function(m, p)
      need_chan()
      local ctx = bounded()
      local t0 = weft.now()
      local ch = weft.chan(cap)
      local ready = workers > 1 and weft.chan(2) or nil
      local fc = assert(p:submit(ctx, consumer, ch, ready))
      local fp = assert(p:submit(ctx, producer, ch, m, ready))
      local count, sum, tidc = await(fc)
      local sent, tidp = await(fp)
      local t = weft.now() - t0
      if sent ~= m then error(("producer sent %s of %d"):format(tostring(sent), m), 0) end
      check(name, m, count, sum)
      local where = (tidc == nil or tidp == nil) and "?" or tidc == tidp and "1" or "2"
      placements[#placements + 1] = where
      return rate_note(m, t, ("; jobs on %s threads%s"):format(table.concat(placements, "/"), target or ""))
    end,
    teardown = function(p) p:close() end,
  }
end

-- main state -> one consumer job.
local function m2w_case(name, cap, n, value_kb)
  local consumer = value_kb and consume_kb or consume_int
  local rate_note = recorder("msg")
  return {
    name = name, n = n,
    setup = function() return assert(weft.pool { workers = 2, limit = 2 }) end,
    run = function(m, p)
      need_chan()
      local ctx = bounded()
      local t0 = weft.now()
      local ch = weft.chan(cap)
      local fc = assert(p:submit(ctx, consumer, ch, nil))
      local t = value_kb and make_kb() or nil
      for i = 1, m do
        local v = i
        if t then t.seq = i; v = t end
        local ok, err = ch:send(ctx, v)
        if not ok then
          ch:close()
          error(("main send %d: %s"):format(i, tostring(err)), 0)
        end
      end
      ch:close()
      local count, sum = await(fc)
      local dt = weft.now() - t0
      check(name, m, count, sum)
      return rate_note(m, dt)
    end,
    teardown = function(p) p:close() end,
  }
end

-- A plain bounded FIFO (ring of CAP slots) in one state: push and pop are
-- function calls, as a queue library's would be.
local function new_queue()
  return { head = 1, tail = 1, n = 0 }
end
local function push(q, v)
  if q.n == CAP then return false end
  q[q.tail] = v
  q.tail = q.tail % CAP + 1
  q.n = q.n + 1
  return true
end
local function pop(q)
  if q.n == 0 then return nil end
  local v = q[q.head]
  q[q.head] = nil
  q.head = q.head % CAP + 1
  q.n = q.n - 1
  return v
end

-- push until full, pop until empty, again; same checks as the consumers.
local function queue_run(m, value_kb, rate_note)
  local t0 = weft.now()
  local q = new_queue()
  -- 1 KB: CAP distinct tables, reused slot by slot (the queue is drained
  -- before it refills, so a slot's table has been popped when it is reused)
  local tkb
  if value_kb then
    tkb = {}
    for k = 1, CAP do tkb[k] = make_kb() end
  end
  local count, sum = 0, 0
  local i = 1
  while i <= m or q.n > 0 do
    while i <= m and q.n < CAP do
      local v = i
      if tkb then
        v = tkb[(i - 1) % CAP + 1]
        v.seq = i
      end
      assert(push(q, v))
      i = i + 1
    end
    while true do
      local v = pop(q)
      if v == nil then break end
      count = count + 1
      if tkb then v = v.seq end
      sum = sum + v
    end
  end
  local t = weft.now() - t0
  check("plain queue", m, count, sum)
  return rate_note(m, t)
end

local TARGET = " (target >= 2,000,000/s; effil ~1,070,000/s, Lanes linda ~240,000/s)"

local N_QUEUE = 3000000
local N_COPY = 100000
local N_ONE = 2000000
local N_INT = { [0] = 150000, [1] = 250000, [1024] = 1000000 }
local N_ONE_WORKER = { [0] = 600000, [1024] = 1500000 }
local N_KB = { [0] = 80000, [1] = 100000, [1024] = 120000 }
local N_M2W_INT, N_M2W_KB = 1500000, 120000

local function queue_case(name, value_kb)
  local note = recorder("msg")
  return { name = name, n = N_QUEUE, run = function(m) return queue_run(m, value_kb, note) end }
end

local function copy_case(name)
  local note = recorder("copies")
  return {
    name = name, n = N_COPY,
    run = function(m)
      local t = make_kb()
      local t0 = weft.now()
      local sum = 0
      for i = 1, m do
        t.seq = i
        sum = sum + weft.copy(t).seq
      end
      local dt = weft.now() - t0
      check("weft.copy", m, m, sum)
      return note(m, dt)
    end,
  }
end

-- One state, no threads: send 1,024 then receive them, again, through a
-- capacity-1024 channel (never blocks); the cost of the calls and the copy
-- alone, without any thread hand-over.
local function one_state_case(name)
  local note = recorder("msg")
  return {
    name = name, n = N_ONE,
    run = function(m)
      need_chan()
      local ctx = bounded()
      local t0 = weft.now()
      local ch = weft.chan(1024)
      local count, sum, i = 0, 0, 1
      while i <= m do
        local last = math.min(i + 1023, m)
        for k = i, last do
          local ok, err = ch:send(ctx, k)
          if not ok then error(("send %d: %s"):format(k, tostring(err)), 0) end
        end
        i = last + 1
        for _ = 1, ch:len() do
          local v, err = ch:recv(ctx)
          if v == nil then error(("recv after %d: %s"):format(count, tostring(err)), 0) end
          count = count + 1
          if v ~= count then error(("message %d is %s"):format(count, tostring(v)), 0) end
          sum = sum + v
        end
      end
      ch:close()
      local dt = weft.now() - t0
      check(name, m, count, sum)
      return note(m, dt)
    end,
  }
end

local BASELINE = "plain Lua table queue (ring of 1,024), integers, one state"
local cases = {
  baseline = BASELINE,
  repeats = 5,
  queue_case(BASELINE, false),
  queue_case("plain Lua table queue (ring of 1,024), 1 KB table refs, one state", true),
  copy_case("weft.copy of the 1 KB table, one state"),
  one_state_case("chan cap 1024, one state (no threads): send 1,024, recv 1,024, integers"),
}

for _, cap in ipairs { 0, 1, 1024 } do
  cases[#cases + 1] = w2w_case(("chan cap %d, worker -> worker, integers"):format(cap),
    cap, N_INT[cap], produce_int, consume_int, cap == 1024 and TARGET or nil)
end
for _, cap in ipairs { 0, 1, 1024 } do
  cases[#cases + 1] = w2w_case(("chan cap %d, worker -> worker, 1 KB tables"):format(cap),
    cap, N_KB[cap], produce_kb, consume_kb)
end
-- The same two jobs on a pool of 1 worker: every hand-over is a park and
-- a resume in one thread, with no cross-core traffic.
for _, cap in ipairs { 0, 1024 } do
  cases[#cases + 1] = w2w_case(("chan cap %d, both jobs on 1 worker, integers"):format(cap),
    cap, N_ONE_WORKER[cap], produce_int, consume_int, nil, 1)
end
cases[#cases + 1] = m2w_case("chan cap 1024, main state -> worker, integers", 1024, N_M2W_INT, false)
cases[#cases + 1] = m2w_case("chan cap 1024, main state -> worker, 1 KB tables", 1024, N_M2W_KB, true)

return cases
