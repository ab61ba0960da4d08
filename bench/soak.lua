--- bench/soak.lua: a soak run of the whole engine (issue 8, item 5).
--
-- Usage (from the repository root, after make):
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/?.so;;" \
--     lua5.4 bench/soak.lua [JOBS [SEED]]
-- JOBS defaults to 1,000,000, SEED to os.time(); the seed is printed first,
-- so a failing run can be replayed (the mix of work replays exactly; the
-- timing, and so which jobs a cancel catches, does not).
--
-- Not a *_bench.lua: bench/run.lua (make bench) does not run it.
-- spec/soak_spec.lua runs the same code at CI size: loaded with
-- loadfile("bench/soak.lua")("--module"), this file returns its module
-- (soak.run, soak.proc, soak.live, soak.JOB) instead of running.
--
-- What a run does.  Jobs go through four long-lived pools, in rounds of a
-- few to a few thousand jobs, each round one of:
--   futures   pool:submit / try_submit on pool A (some on a second pool B),
--             completions taken with future:on_done + weft.poll (some
--             futures dropped at once, kept alive by on_done alone), or
--             also with future:wait, which must agree with on_done
--   group     weft.group on pool G with on_error cancel, collect or ignore,
--             go_label / try_go, sometimes limit, timeout, retries
--   map       weft.map / weft.each on pool G, every policy, various batches
--   chan      producer and consumer jobs on A and B over one or two
--             channels (send/recv/iter and weft.select), then a drain
--   ephemeral a pool made for the round and closed at its end, with or
--             without a timeout (which interrupts running jobs), or
--             dropped unclosed (its __gc closes it)
-- with random cancels (a round's context, or a job's own, canceled at a
-- random moment, from the main state or by a job; some contexts with
-- timeouts or deadlines) and random panics of several kinds (string,
-- level 0, table, __tostring, nil, number, runtime error, coroutine.yield at
-- the job's level, os.exit) and failures (a result that cannot be copied).
-- Some jobs submit to a fourth pool N and wait (nested work), some make
-- and close a pool of their own.
--
-- What it checks (each failure is a violation: printed, exit status 1):
--   * every future resolves exactly once: each job id gets exactly one
--     outcome (its on_done callback once, never a second time, never for
--     another round); the outcome is one its job can have (a value that is
--     the job's own; an error that is its planned panic, or exactly its
--     context's error when that context is done);
--   * group, map and each results agree with what was planned (under
--     collect, every failing job and only those, once each);
--   * channels lose and duplicate nothing: every value a producer sent is
--     received exactly once (by a consumer or the final drain), and no
--     value whose send failed is;
--   * pool:stats() adds up for every pool after every round, and for pools
--     A, B and the ephemeral ones equals the outcomes counted here;
--   * after closing every pool, dropping everything and collecting: RSS and
--     the thread count are back within a small margin of the baseline
--     measured after a warm-up round, and weft.core._engine_live() is back
--     at its baseline exactly.
--
-- The summary counts outcomes by kind: ok, panic, failed (a result that
-- could not be copied), canceled and deadline (the job's context ended),
-- killed (pool:close(timeout)), saturated (try_submit/try_go refused),
-- refused (submit under a context already done), closed (submit after
-- close), and unobserved: group and map jobs whose own outcome the API
-- does not show (on_error "ignore", a "cancel" group that stopped early),
-- checked as a whole instead.
local weft = require "weft"
local core = require "weft.core"

local CANCELED, DEADLINE, CLOSED, SATURATED = weft.CANCELED, weft.DEADLINE_EXCEEDED, weft.CLOSED, weft.SATURATED
local KILLED = "pool closed"
local bg = weft.background()
local now = weft.now
local random = math.random

local M = {}

---------------------------------------------------------------------------
-- process figures

--- RSS (kB) and thread count of this process, from /proc/self/status.
function M.proc()
  local fh = assert(io.open("/proc/self/status"))
  local s = fh:read("a")
  fh:close()
  return tonumber(s:match("VmRSS:%s*(%d+)")), tonumber(s:match("Threads:%s*(%d+)"))
end

--- Collects (twice: finalizers of the first run free more) and returns
-- weft.core._engine_live(): blocks, bytes.
function M.live()
  collectgarbage("collect")
  collectgarbage("collect")
  return core._engine_live()
end

---------------------------------------------------------------------------
-- the job: one function with no upvalue but _ENV, so each worker loads it
-- once (value.c caches such functions) and a job costs what a job costs.
-- job(ctx, id, kind, x, extra): kind says what it does, x is its number
-- (iterations, seconds), extra a handle (a pool, a cancel function) or a
-- table of them (channels).

local function JOB(ctx, id, kind, x, extra)
  if kind == "ok" then
    return id * 2
  elseif kind == "multi" then
    return id * 2, "multi", { id = id }
  elseif kind == "sleep" then  -- parked; a cancel wakes it
    local ok, err = require("weft").sleep(ctx, x)
    if not ok then error(err, 0) end
    return id * 2
  elseif kind == "ctxwait" then  -- parked in ctx:wait, ends either way
    ctx:wait(x)
    if ctx:err() then error(ctx:err(), 0) end
    return id * 2
  elseif kind == "chanwait" then  -- parked on a channel nobody sends on, for x seconds
    local w = require "weft"
    local v, err = w.chan():recv(w.with_timeout(ctx, x))
    if ctx:err() then error(ctx:err(), 0) end
    if v ~= nil or err ~= w.DEADLINE_EXCEEDED then error("chanwait: " .. tostring(err), 0) end
    return id * 2
  elseif kind == "spin" then  -- running Lua: hard cancel stops it
    local s = 0
    for i = 1, x do s = s + i % 7 end
    return id * 2 + s * 0
  elseif kind == "pcall_spin" then  -- a pcall that swallows the cancel
    for _ = 1, 3 do
      pcall(function()
        local s = 0
        for i = 1, x do s = s + i % 7 end
      end)
    end
    return id * 2
  elseif kind == "value" then
    return ctx:value("soak") * 2
  elseif kind == "nested" then  -- sub-work on another pool (extra)
    local f, err = extra:submit(ctx, function(_, v) return v * 2 end, id)
    if not f then error(err, 0) end
    local ok, v = f:wait(ctx)
    if ok == nil then error(v, 0) end  -- ctx ended first
    if not ok then error("nested job failed: " .. tostring(v), 0) end
    return v
  elseif kind == "pool_in_job" then  -- a pool of the job's own
    local w = require "weft"
    local p <close> = assert(w.pool { workers = 1, limit = 2, name = "soak-inner" })
    local f, err = p:submit(ctx, function(_, v) return v * 2 end, id)
    if not f then error(err, 0) end
    local ok, v = f:wait(ctx)
    if ok == nil then error(v, 0) end
    assert(p:close())
    if not ok then error("inner job failed: " .. tostring(v), 0) end
    return v
  elseif kind == "canceler" then  -- cancels extra after x seconds
    require("weft").sleep(ctx, x)
    extra("soak: canceled by a job")
    return id * 2
  elseif kind == "flaky" then  -- fails on its first try in this worker
    local tries = rawget(_G, "SOAK_FLAKY")
    if not tries then
      tries = {}
      rawset(_G, "SOAK_FLAKY", tries)
    end
    if not tries[id] then
      tries[id] = true
      error("soak flaky " .. id, 0)
    end
    tries[id] = nil
    return id * 2
  elseif kind == "err_str" then
    error("soak panic " .. id)
  elseif kind == "err_str0" then
    error("soak panic " .. id, 0)
  elseif kind == "err_table" then
    error({ id = id })
  elseif kind == "err_tostring" then
    error(setmetatable({ id = id }, { __tostring = function(e) return "soak tostring " .. e.id end }))
  elseif kind == "err_nil" then
    error(nil)
  elseif kind == "err_number" then
    error(id)
  elseif kind == "err_runtime" then
    local t = x  -- nil
    return t.field
  elseif kind == "err_yield" then
    coroutine.yield(id)
  elseif kind == "err_exit" then
    os.exit(3)
  elseif kind == "fail" then  -- a result that cannot be copied back
    return id * 2, coroutine.create(print)
  elseif kind == "produce" then  -- x = {from, to, panic_at, select, table}
    local w = require "weft"
    local opctx, ch1, ch2 = extra.ctx, extra.ch1, extra.ch2
    for m = x.from, x.to do
      if m == x.panic_at then error("soak producer panic " .. id, 0) end
      local v = x.table and { m = m, pad = "soak soak soak soak" } or m
      local ok, err
      if ch2 and x.select then
        local i, r, e = w.select(opctx, { { send = ch1, value = v }, { send = ch2, value = v } })
        ok, err = i ~= nil and r == true, i == nil and r or e
      elseif ch2 and m % 2 == 0 then
        ok, err = ch2:send(opctx, v)
      else
        ok, err = ch1:send(opctx, v)
      end
      if not ok then return m, err end  -- m and later: not sent
    end
    return x.to + 1
  elseif kind == "consume" then  -- x = {panic_after, mode}
    local w = require "weft"
    local opctx, ch1, ch2 = extra.ctx, extra.ch1, extra.ch2
    local got = {}
    local function take(v)
      got[#got + 1] = type(v) == "table" and v.m or v
      if #got == x.panic_after then
        error("soak consumer panic ids=" .. table.concat(got, ","), 0)
      end
    end
    if not ch2 and x.mode == "iter" then
      for v in ch1:iter(opctx) do take(v) end
      return got, opctx:err() or w.CLOSED
    elseif not ch2 then
      while true do
        local v, err = ch1:recv(opctx)
        if v == nil then return got, err end
        take(v)
      end
    end
    local open = { ch1, ch2 }
    while #open > 0 do
      local cases = {}
      for k, ch in ipairs(open) do cases[k] = { recv = ch } end
      local i, v, err = w.select(opctx, cases)
      if i == nil then return got, v end  -- opctx ended
      if v == nil then
        if err ~= w.CLOSED then return got, err end
        table.remove(open, i)
      else
        take(v)
      end
    end
    return got, w.CLOSED
  end
  error("soak: unknown kind " .. tostring(kind), 0)
end
M.JOB = JOB

-- the item function of map and each: item = id * 16 + code
local function MAP_FN(ctx, item)
  local code, id = item % 16, item // 16
  if code == 1 then
    error("soak map panic " .. id)
  elseif code == 2 then
    error({ id = id })
  elseif code == 3 then
    local s = 0
    for i = 1, 2000 do s = s + i end
  elseif code == 4 then
    local ok, err = require("weft").sleep(ctx, 0.0002)
    if not ok then error(err, 0) end
  end
  return id * 2
end
local MAP_FAILS = { [1] = true, [2] = true }

---------------------------------------------------------------------------
-- kinds of jobs and what their errors look like

local PANICS = {
  err_str = true, err_str0 = true, err_table = true, err_tostring = true, err_nil = true,
  err_number = true, err_runtime = true, err_yield = true, err_exit = true, flaky = true,
}

local function starts(s, p) return type(s) == "string" and s:sub(1, #p) == p end

-- Whether err is what job id of this kind raises: a string with the
-- traceback (a pool's future), or, through a group's wrapper, the value
-- itself (tables, numbers) or the message with a shorter traceback.
local function is_panic_of(kind, id, err)
  local t = type(err)
  if kind == "err_str" then
    return t == "string" and err:find(": soak panic " .. id .. "\n", 1, true) ~= nil
  elseif kind == "err_str0" then
    return starts(err, "soak panic " .. id .. "\n") or err == "soak panic " .. id
  elseif kind == "err_table" then
    return (t == "table" and err.id == id) or starts(err, "(error object is a table value)")
  elseif kind == "err_tostring" then
    return (t == "table" and tostring(err) == "soak tostring " .. id) or starts(err, "soak tostring " .. id .. "\n")
  elseif kind == "err_nil" then
    return starts(err, "(error object is a nil value)")
  elseif kind == "err_number" then
    return err == id or starts(err, id .. "\n")
  elseif kind == "err_runtime" then
    return t == "string" and err:find("attempt to index a nil value", 1, true) ~= nil
  elseif kind == "err_yield" then
    return starts(err, "attempt to yield from a weft job")
  elseif kind == "err_exit" then
    return t == "string" and err:find("os.exit is not allowed in a weft worker", 1, true) ~= nil
  elseif kind == "flaky" then
    return starts(err, "soak flaky " .. id)
  elseif kind == "produce" then
    return starts(err, "soak producer panic " .. id .. "\n")
  elseif kind == "consume" then
    return starts(err, "soak consumer panic ids=")
  end
  return false
end

local function is_failure_of(kind, err)
  return kind == "fail" and type(err) == "string" and err:find("cannot copy thread", 1, true) ~= nil
end

local function is_cancellation(err) return err == CANCELED or err == DEADLINE end

local function describe(v)
  if type(v) == "string" then
    local line = v:match("^[^\n]*")
    return ("%q"):format(#line > 120 and line:sub(1, 120) .. "..." or line)
  end
  return tostring(v)
end

-- weighted choice: list = { {weight, value}, ... }
local function chooser(list)
  local total = 0
  for _, e in ipairs(list) do total = total + e[1] end
  return function()
    local r = random() * total
    for _, e in ipairs(list) do
      r = r - e[1]
      if r < 0 then return e[2] end
    end
    return list[#list][2]
  end
end

-- kinds of directly submitted jobs
local future_kind = chooser {
  { 300, "ok" }, { 40, "multi" }, { 50, "sleep" }, { 25, "ctxwait" }, { 20, "chanwait" }, { 40, "spin" },
  { 5, "pcall_spin" }, { 40, "value" }, { 40, "nested" }, { 1, "pool_in_job" },
  { 35, "err_str" }, { 25, "err_str0" }, { 20, "err_table" }, { 15, "err_tostring" },
  { 15, "err_nil" }, { 15, "err_number" }, { 25, "err_runtime" }, { 8, "err_yield" },
  { 8, "err_exit" }, { 30, "fail" },
}
-- kinds of group jobs
local group_kind = chooser {
  { 300, "ok" }, { 30, "multi" }, { 40, "sleep" }, { 30, "spin" }, { 30, "nested" },
  { 30, "flaky" }, { 20, "err_str" }, { 15, "err_str0" }, { 10, "err_table" },
  { 10, "err_tostring" }, { 10, "err_nil" }, { 10, "err_number" }, { 15, "err_runtime" },
  { 4, "err_yield" }, { 4, "err_exit" }, { 15, "fail" },
}
-- kinds of jobs on an ephemeral pool
local ephemeral_kind = chooser {
  { 100, "ok" }, { 30, "sleep" }, { 30, "spin" }, { 10, "ctxwait" }, { 10, "chanwait" }, { 20, "err_str" },
  { 10, "err_table" }, { 10, "fail" }, { 10, "nested" }, { 3, "pool_in_job" },
}

local function arg_of(kind)
  if kind == "sleep" then return 0.0002 + random() * 0.0018 end
  if kind == "ctxwait" or kind == "chanwait" then return 0.0005 + random() * 0.0015 end
  if kind == "spin" then return random(1000, 30000) end
  if kind == "pcall_spin" then return random(1000, 10000) end
  return nil
end

local cause_of = chooser {
  { 4, "soak: canceled" }, { 1, 42 }, { 1, { why = "soak" } }, { 1, false },
}

---------------------------------------------------------------------------
-- the run's state

local OUTCOMES = { "ok", "panic", "failed", "canceled", "deadline", "killed",
                   "saturated", "refused", "closed", "unobserved" }
-- pool:stats() field of each outcome (those that reached a pool)
local STAT_OF = { ok = "completed", panic = "panicked", failed = "failed",
                  canceled = "canceled", deadline = "canceled", killed = "canceled" }

local Soak = {}
Soak.__index = Soak

function Soak:violation(fmt, ...)
  self.nviolations = self.nviolations + 1
  local msg = fmt:format(...)
  if self.nviolations <= 40 then
    self.violations[#self.violations + 1] = msg
    self.log("VIOLATION: " .. msg)
  end
end

function Soak:count(outcome, path, n)
  n = n or 1
  self.outcomes[outcome] = self.outcomes[outcome] + n
  self.paths[path] = (self.paths[path] or 0) + n
  self.jobs = self.jobs + n
end

-- A round: ids first..last; futures tracked through on_done.
function Soak:new_round(name, k)
  local first = self.next_id
  self.next_id = first + k
  local R = {
    name = name, first = first, last = first + k - 1, seen = {}, count = 0, expected = 0,
    kind = {}, ctx = {}, pool = {}, handler = {}, results = {},
  }
  R.bound, R.release = weft.with_timeout(self.base, self.round_bound)
  self.round = R
  self.rounds[name] = (self.rounds[name] or 0) + 1
  return R
end

-- The default outcome of a tracked future: from its kind and context.
function Soak:classify(R, id, ok, v1, v2, v3)
  local kind, ctx = R.kind[id], R.ctx[id]
  if ok then
    if PANICS[kind] or kind == "fail" then
      self:violation("job %d (%s, %s round) succeeded with %s", id, kind, R.name, describe(v1))
    elseif v1 ~= id * 2 then
      self:violation("job %d (%s, %s round) returned %s, not its own result %d", id, kind, R.name,
        describe(v1), id * 2)
    elseif kind == "multi" and (v2 ~= "multi" or type(v3) ~= "table" or v3.id ~= id) then
      self:violation("job %d (multi) returned %s, %s, %s", id, describe(v1), describe(v2), describe(v3))
    end
    return "ok"
  end
  local err = v1
  if is_cancellation(err) then
    local cerr = ctx and ctx:err()
    if cerr ~= err then
      self:violation("job %d (%s, %s round) ended with %s but its context's error is %s", id, kind,
        R.name, describe(err), describe(cerr))
    end
    return err == CANCELED and "canceled" or "deadline"
  elseif err == KILLED then
    if not R.closing_pool then
      self:violation("job %d (%s) ended %q outside a pool:close(timeout)", id, kind, err)
    end
    return "killed"
  elseif is_failure_of(kind, err) then
    return "failed"
  elseif is_panic_of(kind, id, err) then
    return "panic"
  end
  self:violation("job %d (%s, %s round) ended with an unexpected error: %s", id, kind, R.name, describe(err))
  return "panic"
end

-- on_done of a tracked future of the current round
function Soak:on_done(id, ...)
  local R = self.round
  if not R or id < R.first or id > R.last then
    self:violation("a completion of job %d arrived outside its round (a duplicate or a late one)", id)
    return
  end
  if R.seen[id] then
    self:violation("job %d completed twice (on_done ran again)", id)
    return
  end
  R.seen[id] = true
  R.count = R.count + 1
  local handler = R.handler[id]
  local outcome
  if handler then
    outcome = handler(id, ...)
  else
    outcome = self:classify(R, id, ...)
  end
  local pool = R.pool[id]
  local expect = pool and self.expect[pool]
  if expect then
    local field = STAT_OF[outcome]
    expect[field] = expect[field] + 1
  end
  self:count(outcome, R.path or R.name)
  R.results[id] = table.pack(...)
end

-- Submits fn(ctx, id, kind, x, extra) to pool (named pname), tracked by
-- on_done; returns the future, or nil and the refusal (counted).
function Soak:submit(R, pname, try, ctx, id, kind, x, extra, keep)
  local pool = self.pools[pname] or R.pools[pname]
  local f, err
  if try then
    f, err = pool:try_submit(ctx, JOB, id, kind, x, extra)
  else
    f, err = pool:submit(ctx, JOB, id, kind, x, extra)
  end
  if not f then
    R.seen[id] = true
    if err == SATURATED and try then
      self:count("saturated", R.path or R.name)
    elseif err == CLOSED then
      if not R.closed_pool then self:violation("submit of job %d: %q from an open pool", id, err) end
      self:count("closed", R.path or R.name)
    elseif is_cancellation(err) and not try and ctx:err() == err then
      self:count("refused", R.path or R.name)
    else
      self:violation("submit of job %d (%s) refused with %s", id, kind, describe(err))
      self:count("refused", R.path or R.name)
    end
    return nil, err
  end
  local expect = self.expect[pname]
  if expect then expect.submitted = expect.submitted + 1 end
  R.kind[id], R.ctx[id], R.pool[id] = kind, ctx, pname
  R.expected = R.expected + 1
  f:on_done(function(...) self:on_done(id, ...) end)
  if keep then return f end
  return true
end

-- Polls until every tracked future of R has delivered its on_done (all of
-- them have resolved by now: their pools were waited on, or closed).
function Soak:drain(R)
  local deadline = now() + self.round_bound
  while R.count < R.expected do
    if weft.poll() == 0 then
      if now() > deadline then
        local lost = {}
        for id = R.first, R.last do
          if not R.seen[id] and #lost < 10 then lost[#lost + 1] = id end
        end
        self:violation("%s round: %d of %d completions never delivered (lost), e.g. jobs %s", R.name,
          R.expected - R.count, R.expected, table.concat(lost, ", "))
        break
      end
      weft.sleep(bg, 0.0001)
    end
  end
  for id = R.first, R.last do
    if not R.seen[id] then
      self:violation("%s round: job %d has no outcome", R.name, id)
      R.seen[id] = true
    end
  end
end

-- Waits (bounded) until the pools named have no job in flight.
function Soak:quiesce(...)
  for i = 1, select("#", ...) do
    local name = select(i, ...)
    local ok, err = self.pools[name]:wait(self.round_bound)
    if not ok then self:violation("pool %s still busy after %ss: %s", name, self.round_bound, tostring(err)) end
  end
end

-- pool:stats() adds up; with an expectation, it equals the outcomes seen.
function Soak:check_stats(name, p, expect, idle)
  local s = p:stats()
  local sum = s.completed + s.failed + s.panicked + s.canceled + s.inflight + s.queued
  if s.submitted ~= sum then
    self:violation("pool %s: stats do not add up: submitted %d ~= completed %d + failed %d + panicked %d "
      .. "+ canceled %d + inflight %d + queued %d", name, s.submitted, s.completed, s.failed, s.panicked,
      s.canceled, s.inflight, s.queued)
  end
  if idle and (s.inflight ~= 0 or s.queued ~= 0) then
    self:violation("pool %s: idle, yet inflight %d, queued %d", name, s.inflight, s.queued)
  end
  if expect then
    for _, k in ipairs { "submitted", "completed", "failed", "panicked", "canceled" } do
      if s[k] ~= expect[k] then
        self:violation("pool %s: stats.%s = %d, the outcomes counted here say %d", name, k, s[k], expect[k])
        expect[k] = s[k]  -- report a difference once
      end
    end
  end
  return s
end

local function new_expect()
  return { submitted = 0, completed = 0, failed = 0, panicked = 0, canceled = 0 }
end

-- A context for job i of a round under rctx: mostly rctx itself, else
-- one with a timeout, a deadline or a cancel of its own (fired later, from
-- the `later` list), and a value for kind "value".
local function job_ctx(rctx, id, kind, i, later)
  local ctx = rctx
  local r = random()
  if r < 0.08 then
    ctx = weft.with_timeout(rctx, random() * 0.003)
  elseif r < 0.11 then
    ctx = weft.with_deadline(rctx, now() + random() * 0.003)
  elseif r < 0.18 then
    local cancel
    ctx, cancel = weft.with_cancel(rctx)
    later[#later + 1] = { at = i + random(0, 40), cancel = cancel }
  end
  if kind == "value" then ctx = weft.with_value(ctx, "soak", id) end
  return ctx
end

local function fire_later(later, i)
  local k = 1
  while k <= #later do
    if i == nil or later[k].at <= i then
      later[k].cancel(cause_of())
      later[k] = later[#later]
      later[#later] = nil
    else
      k = k + 1
    end
  end
end

---------------------------------------------------------------------------
-- rounds

-- Futures on A (and B): on_done only, or also waited (mode "wait").
function Soak:round_futures(k, mode)
  local R = self:new_round(mode == "wait" and "futures(wait)" or "futures", k)
  local rctx, rcancel = weft.with_cancel(R.bound)
  local cancel_at = random() < 0.3 and random(1, k) or nil
  local later, kept = {}, {}
  for i = 1, k do
    local id = R.first + i - 1
    local kind = future_kind()
    local pname = random() < 0.75 and "A" or "B"
    local ctx = job_ctx(rctx, id, kind, i, later)
    local extra = kind == "nested" and self.pools.N or nil
    local f = self:submit(R, pname, random() < 0.3, ctx, id, kind, arg_of(kind), extra, mode == "wait")
    if f and mode == "wait" then kept[#kept + 1] = { id = id, f = f } end
    if i == cancel_at then rcancel(cause_of()) end
    fire_later(later, i)
    if i % 32 == 0 then weft.poll() end
    if random() < 0.01 then weft.sleep(bg, random() * 0.001) end
  end
  fire_later(later)
  if mode == "wait" then
    -- in random order; some first with a wait that times out
    for i = #kept, 2, -1 do
      local j = random(1, i)
      kept[i], kept[j] = kept[j], kept[i]
    end
    for _, e in ipairs(kept) do
      if random() < 0.1 then
        local r = table.pack(e.f:wait(weft.with_timeout(bg, 0.00005)))
        if r[1] == nil and r[2] ~= DEADLINE then
          self:violation("future:wait of job %d with a short timeout gave nil, %s", e.id, describe(r[2]))
        end
      end
      e.wait = table.pack(e.f:wait(R.bound))
      if e.wait[1] == nil then
        self:violation("job %d: future:wait still pending at the round's bound: %s", e.id, describe(e.wait[2]))
      elseif not e.f:done() then
        self:violation("job %d: future:wait returned but future:done() is false", e.id)
      end
    end
  end
  self:quiesce("A", "B", "N")
  self:drain(R)
  for _, e in ipairs(kept) do  -- wait and on_done agree
    local d = R.results[e.id]
    if d and e.wait[1] ~= nil and (d[1] ~= e.wait[1] or (d[1] and d[2] ~= e.wait[2])
        or (not d[1] and type(d[2]) == "string" and d[2] ~= e.wait[2])) then
      self:violation("job %d: future:wait gave %s, %s but on_done %s, %s", e.id, describe(e.wait[1]),
        describe(e.wait[2]), describe(d[1]), describe(d[2]))
    end
  end
  rcancel()
end

-- A weft.group on pool G.
function Soak:round_group(k)
  local R = self:new_round("group", k)
  local policy = ({ "cancel", "collect", "ignore" })[random(1, 3)]
  local pctx, pcancel = weft.with_cancel(R.bound)
  local opts = { pool = self.pools.G, on_error = policy }
  if random() < 0.4 then opts.limit = random(1, 16) end
  local timeout = random() < 0.15
  if timeout then opts.timeout = 0.001 + random() * 0.004 end
  local retries = random() < 0.25
  if retries then
    opts.retries = 1
    opts.backoff = 0.0002
  end
  local g = weft.group(pctx, opts)
  local cancel_at = random() < 0.2 and random(1, k) or nil
  local canceler
  if random() < 0.1 then  -- a job cancels the group's parent during g:wait
    canceler = assert(self.pools.N:submit(R.bound, JOB, 0, "canceler", random() * 0.003, pcancel))
  end
  local index_of = {}  -- group index -> id
  local kinds = {}
  local accepted = 0
  for i = 1, k do
    local id = R.first + i - 1
    local kind = group_kind()
    kinds[id] = kind
    local extra = kind == "nested" and self.pools.N or nil
    local x = arg_of(kind)
    local ok = true
    if random() < 0.15 then
      ok = g:try_go(JOB, id, kind, x, extra)
    else
      g:go_label(id, JOB, id, kind, x, extra)
    end
    if ok then
      accepted = accepted + 1
      index_of[accepted] = id
    else
      kinds[id] = nil
      self:count("saturated", "group")
    end
    if i == cancel_at then pcancel(cause_of()) end
  end
  local err = g:wait()
  if canceler then
    local ok = canceler:wait(R.bound)
    if ok == nil then self:violation("the canceler job of a group round did not finish") end
  end
  local canceled = pctx:err() ~= nil
  local function fails(kind)
    return PANICS[kind] and not (kind == "flaky" and retries) or kind == "fail"
  end
  local function planned_error(e, id)  -- (a flaky job's error stays possible with retries)
    local kind = kinds[id]
    return kind ~= nil and (is_panic_of(kind, id, e) or is_failure_of(kind, e))
  end
  local function allowed_cancellation(e)
    return (e == CANCELED and (canceled or policy == "cancel")) or (e == DEADLINE and (timeout or canceled))
  end
  if policy == "ignore" then
    if err ~= nil then self:violation("group (ignore): g:wait() returned %s", describe(err)) end
    self:count("unobserved", "group", accepted)
  elseif policy == "collect" then
    local failed = {}
    for _, e in ipairs(err or {}) do
      local id = index_of[e.index]
      if not id then
        self:violation("group (collect): an error for index %s, which no job has", tostring(e.index))
      elseif failed[id] then
        self:violation("group (collect): job %d has two errors", id)
      else
        failed[id] = true
        if e.label ~= nil and e.label ~= id then
          self:violation("group (collect): error of index %d labeled %s, not %d", e.index, describe(e.label), id)
        end
        if is_cancellation(e.error) then
          if not allowed_cancellation(e.error) then
            self:violation("group (collect): job %d ended %s with no cancel or timeout", id, describe(e.error))
          end
          self:count(e.error == CANCELED and "canceled" or "deadline", "group")
        elseif planned_error(e.error, id) then
          self:count(kinds[id] == "fail" and "failed" or "panic", "group")
        else
          self:violation("group (collect): job %d (%s) failed with %s", id, kinds[id], describe(e.error))
          self:count("panic", "group")
        end
      end
    end
    for idx = 1, accepted do
      local id = index_of[idx]
      if not failed[id] then
        if fails(kinds[id]) then
          self:violation("group (collect): job %d (%s) is not among the errors", id, kinds[id])
        end
        self:count("ok", "group")
      end
    end
  else  -- cancel: the first error
    local any_fails = false
    for idx = 1, accepted do
      if fails(kinds[index_of[idx]]) then any_fails = true end
    end
    if err == nil then
      if any_fails then self:violation("group (cancel): g:wait() returned nil, yet a job had to fail") end
    elseif is_cancellation(err) then
      if not (canceled or timeout) then
        self:violation("group (cancel): g:wait() returned %s with no cancel or timeout", describe(err))
      end
    else
      local found = false
      for idx = 1, accepted do
        local id = index_of[idx]
        if planned_error(err, id) then
          found = true
          break
        end
      end
      if not found then self:violation("group (cancel): g:wait() returned %s, no job's error", describe(err)) end
    end
    self:count("unobserved", "group", accepted)
  end
  pcancel()
end

-- weft.map or weft.each on pool G.
function Soak:round_map(k)
  local R = self:new_round("map", k)
  local policy = ({ "cancel", "collect", "ignore" })[random(1, 3)]
  local each = random() < 0.25
  local pctx, pcancel = weft.with_cancel(R.bound)
  local opts = { pool = self.pools.G, on_error = policy }
  local r = random()
  if r < 0.15 then
    opts.batch = 1
  elseif r < 0.5 then
    opts.batch = ({ 3, 16, 64, 500 })[random(1, 4)]
  end
  if random() < 0.3 then opts.limit = random(1, 8) end
  local timeout = random() < 0.1
  if timeout then opts.timeout = 0.002 end
  local fail_rate = random() < 0.4 and 0 or random() * 0.01
  local items, codes = {}, {}
  for i = 1, k do
    local code = 0
    r = random()
    if r < fail_rate then
      code = random(1, 2)
    elseif r < 0.02 then
      code = 3
    elseif r < 0.025 then
      code = 4
    end
    codes[i] = code
    items[i] = (R.first + i - 1) * 16 + code
  end
  local canceler
  if random() < 0.2 then
    canceler = assert(self.pools.N:submit(R.bound, JOB, 0, "canceler", random() * 0.004, pcancel))
  end
  local res, err
  if each then
    res, err = weft.each(pctx, items, MAP_FN, opts)
  else
    res, err = weft.map(pctx, items, MAP_FN, opts)
  end
  if canceler then
    local ok = canceler:wait(R.bound)
    if ok == nil then self:violation("the canceler job of a map round did not finish") end
  end
  local canceled = pctx:err() ~= nil
  local name = (each and "each" or "map") .. " (" .. policy .. ")"
  local function planned_error(e, i)
    local code = codes[i]
    local id = R.first + i - 1
    if code == 1 then return type(e) == "string" and e:find(": soak map panic " .. id .. "\n", 1, true) ~= nil end
    if code == 2 then return type(e) == "table" and e.id == id end
    return false
  end
  local nfail = 0
  for i = 1, k do
    if MAP_FAILS[codes[i]] then nfail = nfail + 1 end
  end
  local function check_results()
    if each then
      if res ~= true then self:violation("%s returned %s", name, describe(res)) end
      return
    end
    local ok = 0
    for i = 1, k do
      local v = res[i]
      if v ~= nil then
        if v ~= (R.first + i - 1) * 2 or MAP_FAILS[codes[i]] then
          self:violation("%s: results[%d] = %s (code %d)", name, i, describe(v), codes[i])
        end
        ok = ok + 1
      elseif not MAP_FAILS[codes[i]] and not canceled and not timeout then
        self:violation("%s: results[%d] is nil, the item could not fail", name, i)
      end
    end
    return ok
  end
  if policy == "ignore" then
    if err ~= nil or res == nil then
      self:violation("%s returned %s, %s", name, describe(res), describe(err))
    else
      local ok = check_results()
      if ok then
        self:count("ok", "map", ok)
        self:count("unobserved", "map", k - ok)
      else
        self:count("unobserved", "map", k)
      end
    end
  elseif policy == "collect" then
    if res ~= nil then
      if nfail > 0 then self:violation("%s returned results, yet %d items had to fail", name, nfail) end
      local ok = check_results() or k
      self:count("ok", "map", ok)
      self:count("unobserved", "map", k - ok)
    elseif type(err) ~= "table" then
      self:violation("%s returned nil, %s (not a list of errors)", name, describe(err))
    else
      local seen, counted = {}, 0
      for _, e in ipairs(err) do
        local i = e.index
        if type(i) ~= "number" or i < 1 or i > k or seen[i] then
          self:violation("%s: error index %s out of range or repeated", name, tostring(i))
        else
          seen[i] = true
          if is_cancellation(e.error) then
            if not (canceled or (timeout and e.error == DEADLINE)) then
              self:violation("%s: item %d ended %s with no cancel or timeout", name, i, describe(e.error))
            end
          elseif planned_error(e.error, i) then
            counted = counted + 1
          else
            self:violation("%s: item %d (code %d) failed with %s", name, i, codes[i], describe(e.error))
          end
        end
      end
      if not canceled and not timeout then
        for i = 1, k do
          if MAP_FAILS[codes[i]] and not seen[i] then
            self:violation("%s: item %d had to fail and is not among the errors", name, i)
          end
        end
      end
      self:count("panic", "map", counted)
      self:count("unobserved", "map", k - counted)
    end
  else  -- cancel
    if res ~= nil then
      if nfail > 0 and not canceled then
        self:violation("%s returned results, yet %d items had to fail", name, nfail)
      end
      local ok = check_results() or k
      self:count("ok", "map", ok)
      self:count("unobserved", "map", k - ok)
    else
      if is_cancellation(err) then
        if not (canceled or timeout) then
          self:violation("%s returned nil, %s with no cancel or timeout", name, describe(err))
        end
      else
        local found = false
        for i = 1, k do
          if MAP_FAILS[codes[i]] and planned_error(err, i) then
            found = true
            break
          end
        end
        if not found then self:violation("%s returned nil, %s: no item's error", name, describe(err)) end
      end
      self:count("unobserved", "map", k)
    end
  end
  pcancel()
end

-- Producers and consumers over channels, on A and B.
function Soak:round_chan()
  local nprod, ncons = random(1, 3), random(1, 3)
  local R = self:new_round("chan", nprod + ncons)
  local caps = { 0, 1, 4, 64, 1024 }
  local ch1 = weft.chan(caps[random(1, #caps)])
  local ch2 = random() < 0.5 and weft.chan(caps[random(1, #caps)]) or nil
  local opctx, opcancel
  if random() < 0.2 then
    opctx, opcancel = weft.with_timeout(R.bound, random() * 0.01)
  else
    opctx, opcancel = weft.with_cancel(R.bound)
  end
  if random() < 0.2 then opctx = weft.with_value(opctx, "soak", "chan") end
  local extra = { ctx = opctx, ch1 = ch1, ch2 = ch2 }
  local as_table = random() < 0.2
  local msg = random(50, 3000)
  local prod, cons, futures = {}, {}, {}  -- what producers sent, what consumers got; futures by id
  local next_m = self.next_msg
  self.next_msg = next_m + msg * nprod
  for p = 1, nprod do
    local id = R.first + p - 1
    local spec = { from = next_m + (p - 1) * msg, to = next_m + p * msg - 1, select = random() < 0.5,
                   table = as_table }
    if random() < 0.1 then spec.panic_at = random(spec.from, spec.to) end
    R.handler[id] = function(_, ok, v1, v2)
      local e = { spec = spec }
      if ok then
        if type(v1) ~= "number" or v1 < spec.from or v1 > spec.to + 1 then
          self:violation("producer %d returned %s", id, describe(v1))
          v1 = spec.from
        end
        e.upto = v1 - 1
        if v1 <= spec.to and not is_cancellation(v2) then
          self:violation("producer %d stopped at %d with %s", id, v1, describe(v2))
        end
      elseif spec.panic_at and is_panic_of("produce", id, v1) then
        e.upto = spec.panic_at - 1
      else
        self:violation("producer %d failed: %s", id, describe(v1))
        e.upto = nil
      end
      prod[#prod + 1] = e
      return ok and "ok" or "panic"
    end
    futures[id] = assert(self:submit(R, random() < 0.5 and "A" or "B", false, R.bound, id, "produce", spec, extra,
      true))
  end
  for c = 1, ncons do
    local id = R.first + nprod + c - 1
    local spec = { mode = random() < 0.5 and "iter" or "recv",
                   panic_after = (c > 1 and random() < 0.3) and random(1, 50) or nil }
    R.handler[id] = function(_, ok, v1, v2)
      if ok then
        if type(v1) ~= "table" then
          self:violation("consumer %d returned %s", id, describe(v1))
        else
          cons[#cons + 1] = v1
          if v2 ~= CLOSED and not is_cancellation(v2) then
            self:violation("consumer %d stopped with %s", id, describe(v2))
          end
        end
        return "ok"
      elseif spec.panic_after and is_panic_of("consume", id, v1) then
        local got = {}
        for m in v1:match("ids=([%d,]*)"):gmatch("%d+") do got[#got + 1] = tonumber(m) end
        if #got ~= spec.panic_after then
          self:violation("consumer %d panicked after %d values, planned %d", id, #got, spec.panic_after)
        end
        cons[#cons + 1] = got
        return "panic"
      end
      self:violation("consumer %d failed: %s", id, describe(v1))
      return "panic"
    end
    futures[id] = assert(self:submit(R, random() < 0.5 and "A" or "B", false, R.bound, id, "consume", spec, extra,
      true))
  end
  local cancel = random()
  if cancel < 0.25 then
    weft.sleep(bg, random() * 0.003)
    opcancel(cause_of())
  end
  for i = R.first, R.first + nprod - 1 do
    if futures[i]:wait(R.bound) == nil then self:violation("producer %d still running at the round's bound", i) end
  end
  ch1:close()
  if ch2 then ch2:close() end
  for i = R.first + nprod, R.last do
    if futures[i]:wait(R.bound) == nil then self:violation("consumer %d still running at the round's bound", i) end
  end
  self:quiesce("A", "B")
  self:drain(R)
  -- what was sent, what was received
  local sent, nsent = {}, 0
  for _, e in ipairs(prod) do
    if e.upto then
      for m = e.spec.from, e.upto do
        sent[m] = true
        nsent = nsent + 1
      end
    end
  end
  local got, ngot, left = {}, 0, 0
  local function take(m, where)
    if not sent[m] then
      self:violation("chan round: value %s received (%s) but never sent", describe(m), where)
    elseif got[m] then
      self:violation("chan round: value %d received twice (%s)", m, where)
    else
      got[m] = true
      ngot = ngot + 1
    end
  end
  for _, list in ipairs(cons) do
    for _, m in ipairs(list) do take(m, "by a consumer") end
  end
  for _, ch in ipairs { ch1, ch2 } do
    while true do
      local v, err = ch:try_recv()
      if v == nil then
        if err ~= CLOSED then self:violation("drain: try_recv gave nil, %s on a closed channel", describe(err)) end
        break
      end
      take(type(v) == "table" and v.m or v, "drained")
      left = left + 1
    end
  end
  if ngot ~= nsent then
    self:violation("chan round: %d values sent, %d received (lost: %d)", nsent, ngot, nsent - ngot)
  end
  self.messages = self.messages + nsent
  self.left_in_channels = self.left_in_channels + left
  opcancel()
end

-- A pool made for the round, closed at its end.
function Soak:round_ephemeral(k)
  local R = self:new_round("ephemeral", k + 1)
  local workers = random(1, 2)
  local P = assert(weft.pool { workers = workers, limit = random(workers, 8), queue = random(0, 8),
                               name = "soak-e", on_panic = function() end })
  R.pools = { E = P }
  self.expect.E = new_expect()
  local rctx, rcancel = weft.with_cancel(R.bound)
  local later = {}
  local cancel_at = random() < 0.2 and random(1, k) or nil
  for i = 1, k do
    local id = R.first + i - 1
    local kind = ephemeral_kind()
    self:submit(R, "E", random() < 0.4, job_ctx(rctx, id, kind, i, later), id, kind, arg_of(kind),
      kind == "nested" and self.pools.N or nil)
    if i == cancel_at then rcancel(cause_of()) end
    fire_later(later, i)
  end
  fire_later(later)
  local how = random()
  if how < 0.15 then  -- dropped unclosed: the collector closes it (waiting for its jobs)
    self:submit(R, "E", false, rctx, R.last, "ok")
    local stats_before = P:stats()
    R.pools, P = nil, nil -- luacheck: ignore 311 (dropped, for the collector)
    collectgarbage("collect")
    collectgarbage("collect")
    self:drain(R)
    if stats_before.submitted ~= self.expect.E.submitted then
      self:violation("dropped ephemeral pool: %d submitted, stats said %d", self.expect.E.submitted,
        stats_before.submitted)
    end
    self.expect.E = nil
    self.dropped_pools = self.dropped_pools + 1
    rcancel()
    return
  end
  local timed = how < 0.6
  local closes = 1
  R.closing_pool = timed
  if timed then
    local ok = P:close(random() * 0.003)
    -- close(timeout) interrupts the jobs running then and gives them as
    -- long again to end, else it returns nil, "timeout: ..." (a job slower
    -- than that to end; or a job still queued at the kill, which starts
    -- after it and is never interrupted: the engine bug in
    -- spec/soak_spec.lua).  Either way: close again, bounded
    while not ok and closes < 200 do
      closes = closes + 1
      ok = P:close(0.05)
    end
    if not ok then self:violation("ephemeral pool: still not closed after %d close(timeout) calls", closes) end
    if closes > 1 then self.close_retries = self.close_retries + 1 end
  else
    local ok, err = P:close(self.round_bound)
    if not ok then self:violation("ephemeral pool: close(%ss) failed: %s", self.round_bound, tostring(err)) end
  end
  R.closed_pool = true
  self:submit(R, "E", random() < 0.5, rctx, R.last, "ok")  -- refused: closed
  self:drain(R)
  self:check_stats("E", P, self.expect.E, true)
  self.expect.E = nil
  rcancel()
end

---------------------------------------------------------------------------
-- a run

local round_kind = chooser {
  { 30, "futures" }, { 12, "wait" }, { 20, "group" }, { 8, "map" }, { 15, "chan" }, { 6, "ephemeral" },
}

function Soak:one_round(left)
  local kind = round_kind()
  local scale = self.round_scale
  local function size(lo, hi) return math.min(left, math.max(1, math.floor(random(lo, hi) * scale))) end
  if kind == "futures" then
    self:round_futures(size(50, 600), "on_done")
  elseif kind == "wait" then
    self:round_futures(size(20, 300), "wait")
  elseif kind == "group" then
    self:round_group(size(8, 200))
  elseif kind == "map" then
    self:round_map(size(50, 2000))
  elseif kind == "chan" then
    self:round_chan()
  else
    self:round_ephemeral(math.max(1, math.min(left - 1, size(8, 48))))
  end
end

local function new_soak(opts)
  local S = setmetatable({
    log = opts.log or print,
    base = opts.base or bg,
    round_bound = opts.round_bound or 30,
    round_scale = opts.round_scale or 1,
    next_id = 1, next_msg = 1, jobs = 0, messages = 0, left_in_channels = 0, close_retries = 0, dropped_pools = 0,
    nviolations = 0, violations = {}, outcomes = {}, paths = {}, rounds = {},
    expect = { A = new_expect(), B = new_expect() },
  }, Soak)
  for _, o in ipairs(OUTCOMES) do S.outcomes[o] = 0 end
  return S
end

-- Runs n jobs on fresh pools A, B, G, N, then closes them.
function Soak:run_jobs(n, sample)
  local quiet = function() end
  self.pools = {
    A = assert(weft.pool { workers = 2, limit = 64, queue = 64, name = "soak-a", on_panic = quiet }),
    B = assert(weft.pool { workers = 1, limit = 16, name = "soak-b", on_panic = quiet }),
    G = assert(weft.pool { workers = 2, limit = 64, name = "soak-g", on_panic = quiet }),
    N = assert(weft.pool { workers = 1, limit = 32, queue = 32, name = "soak-n", on_panic = quiet }),
  }
  local nrounds = 0
  while self.jobs < n do
    self:one_round(n - self.jobs)
    self.round.release()  -- its timer goes now, not when collected
    nrounds = nrounds + 1
    self:check_stats("A", self.pools.A, self.expect.A, true)
    self:check_stats("B", self.pools.B, self.expect.B, true)
    self:check_stats("G", self.pools.G, nil, true)
    self:check_stats("N", self.pools.N, nil, false)
    if sample then sample(nrounds) end
    if self.nviolations > 200 then
      self.log("soak: too many violations, stopping early")
      break
    end
  end
  self.round = nil
  for _, name in ipairs { "A", "B", "G", "N" } do
    local p = self.pools[name]
    local ok, err = p:close(self.round_bound)
    if not ok then self:violation("pool %s: close(%ss) failed: %s", name, self.round_bound, tostring(err)) end
    self:check_stats(name, p, self.expect[name], true)
  end
  self.pools = nil
  return nrounds
end

--- soak.run(opts) -> report
-- opts: jobs (1,000,000), seed (os.time()), warmup (jobs of the warm-up
-- round: 2% of jobs, at least 2,000), base (parent context of everything,
-- default background), round_bound (seconds any wait of a round may take,
-- 30), round_scale (jobs per round, as a factor: 1), rss_margin_kb
-- (RSS after the run may exceed the baseline by this much; default below),
-- thread_margin (0), log (print).
-- report: ok, violations (messages), jobs, seconds, rate, outcomes, paths,
-- rounds, messages, rss, threads, live, seed, and text (the summary).
function M.run(opts)
  opts = opts or {}
  local n = opts.jobs or 1000000
  local seed = opts.seed or os.time()
  local log = opts.log or print
  math.randomseed(seed)
  log(("soak: seed %d, %d jobs"):format(seed, n))

  -- warm-up: the same mix, small, then everything dropped; and the
  -- timer's heap grown to 16,384 entries (128 KB: it keeps its capacity;
  -- a context with a deadline holds an entry until it fires, is
  -- canceled or is collected), so that the baseline below is the engine
  -- at rest, not the engine never used
  local warm = new_soak(opts)
  do
    warm.log = function(m) log("warm-up: " .. m) end
    warm:run_jobs(opts.warmup or math.max(2000, n // 50))
    do
      local hold = {}
      for i = 1, 16384 do hold[i] = weft.with_timeout(bg, 3600) end
      assert(#hold == 16384)
    end
    -- the state's on_done inbox is made on first use and kept: make it
    -- now, whatever rounds the warm-up drew, so that it is in the baseline
    local p = assert(weft.pool { workers = 1 })
    local got = false
    p:submit(bg, function() return true end):on_done(function() got = true end)
    local deadline = now() + 10
    while not got and now() < deadline do
      weft.poll()
      weft.sleep(bg, 0.001)
    end
    assert(got, "warm-up: an on_done callback did not run within 10 s")
    p:close()
    weft.poll()
    if warm.nviolations > 0 then
      log(("warm-up: %d violations"):format(warm.nviolations))
    end
  end
  local live0_blocks, live0_bytes = M.live()
  local heap0 = collectgarbage("count")
  local rss0, threads0 = M.proc()
  -- a second measure after a pause: how noisy RSS is at rest
  weft.sleep(bg, 0.05)
  collectgarbage("collect")
  local rss0b = M.proc()
  -- RSS does not come all the way back: glibc keeps the arenas of the
  -- worker threads (one per thread, up to 8 per core) with their free
  -- pages after the threads exit.  Measured on 2 cores: +2 to +7 MB after
  -- 20,000 to 1,000,000 jobs, flat in the number of jobs; +2 MB with
  -- MALLOC_ARENA_MAX=1.  A leak of 12 bytes a job shows at 1,000,000.
  local margin = opts.rss_margin_kb or 12 * 1024
  local thread_margin = opts.thread_margin or 0

  local S = new_soak(opts)
  for _, v in ipairs(warm.violations) do S.violations[#S.violations + 1] = "warm-up: " .. v end
  S.nviolations = warm.nviolations
  local rss_peak, threads_peak = rss0, threads0
  local function sample(nrounds)
    if nrounds % 8 == 0 then
      local r, t = M.proc()
      if r > rss_peak then rss_peak = r end
      if t > threads_peak then threads_peak = t end
    end
  end
  local t0 = now()
  local nrounds = S:run_jobs(n, sample)
  local seconds = now() - t0

  -- nothing may arrive any more
  collectgarbage("collect")
  local late = weft.poll()
  if late ~= 0 then S:violation("%d on_done callbacks ran after the run was over", late) end
  S.round = nil
  local live1_blocks, live1_bytes = M.live()
  local heap1 = collectgarbage("count")
  local rss1, threads1 = M.proc()
  if rss1 > rss_peak then rss_peak = rss1 end
  if live1_blocks ~= live0_blocks or live1_bytes ~= live0_bytes then
    S:violation("engine allocations: %d blocks, %d bytes live after the run; %d blocks, %d bytes before",
      live1_blocks, live1_bytes, live0_blocks, live0_bytes)
  end
  if rss1 > rss0 + margin then
    S:violation("RSS %d kB after the run, baseline %d kB, margin %d kB", rss1, rss0, margin)
  end
  if math.abs(threads1 - threads0) > thread_margin then
    S:violation("%d threads after the run, %d before (margin %d)", threads1, threads0, thread_margin)
  end

  local lines = {}
  local function say(fmt, ...) lines[#lines + 1] = fmt:format(...) end
  say("soak: seed %d", seed)
  say("jobs: %d in %.1f s, %.0f jobs/s (%d rounds)", S.jobs, seconds, S.jobs / seconds, nrounds)
  local o = {}
  for _, k in ipairs(OUTCOMES) do o[#o + 1] = ("%s %d"):format(k, S.outcomes[k]) end
  say("outcomes: %s", table.concat(o, ", "))
  local p = {}
  for _, k in ipairs { "futures", "futures(wait)", "group", "map", "chan", "ephemeral" } do
    p[#p + 1] = ("%s %d"):format(k, S.paths[k] or 0)
  end
  say("jobs by path: %s", table.concat(p, ", "))
  local r = {}
  for _, k in ipairs { "futures", "futures(wait)", "group", "map", "chan", "ephemeral" } do
    r[#r + 1] = ("%s %d"):format(k, S.rounds[k] or 0)
  end
  say("rounds: %s", table.concat(r, ", "))
  say("channel values: %d sent and received exactly once (%d of them drained after the consumers stopped)",
    S.messages, S.left_in_channels)
  say("ephemeral pools: %d, %d dropped unclosed (closed by the collector), %d whose close(timeout) "
    .. "returned nil and was called again", S.rounds.ephemeral or 0, S.dropped_pools, S.close_retries)
  say("RSS: baseline %d kB (%d kB 50 ms later), peak %d kB, after %d kB (%+d kB; margin %s)",
    rss0, rss0b, rss_peak, rss1, rss1 - rss0, margin == math.huge and "none: not checked" or margin .. " kB")
  say("this state's Lua heap: baseline %.0f kB, after %.0f kB", heap0, heap1)
  say("threads: baseline %d, peak %d, after %d (margin %d)", threads0, threads_peak, threads1, thread_margin)
  say("engine allocations (weft.core._engine_live): baseline %d blocks %d bytes, after %d blocks %d bytes",
    live0_blocks, live0_bytes, live1_blocks, live1_bytes)
  say("violations: %d", S.nviolations)
  return {
    ok = S.nviolations == 0, violations = S.violations, nviolations = S.nviolations,
    jobs = S.jobs, seconds = seconds, rate = S.jobs / seconds, outcomes = S.outcomes,
    paths = S.paths, rounds = S.rounds, messages = S.messages, seed = seed,
    rss = { baseline = rss0, peak = rss_peak, after = rss1, margin = margin },
    threads = { baseline = threads0, peak = threads_peak, after = threads1, margin = thread_margin },
    live = { baseline = { live0_blocks, live0_bytes }, after = { live1_blocks, live1_bytes } },
    text = table.concat(lines, "\n"),
  }
end

if ... == "--module" then return M end

---------------------------------------------------------------------------
-- standalone

local n = tonumber(arg and arg[1]) or 1000000
local seed = tonumber(arg and arg[2]) or os.time()
local report = M.run { jobs = math.floor(n), seed = math.floor(seed), log = function(m)
  print(m)
  io.stdout:flush()
end }
print(report.text)
os.exit(report.ok and 0 or 1)
