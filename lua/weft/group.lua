--- Error groups, map and each (DESIGN.md, "Error groups").
--
-- A group runs jobs on a pool and waits for all of them, with Go's errgroup
-- as the baseline: g:go(fn, ...) runs fn(gctx, ...); g:wait() waits for
-- every job and returns the first error; with on_error = "cancel" (the
-- default) gctx is canceled as soon as a job fails, and in every case when
-- wait returns.  Policies beyond errgroup: on_error = "collect" (every
-- error, each with its job's index and label) or "ignore"; retries with a
-- doubling, capped backoff; a per-job timeout.
--
-- Everything blocking here is a pool submit or a wait on futures of the
-- group's pool (one, or any of its running jobs' at its limit), so a group
-- used inside a job parks like any blocking call, and the pool's deadlock
-- detection sees through it.
--
-- A group belongs to the state that made it (it is a plain Lua object:
-- pass gctx to jobs, not g).
local core = require "weft.core"

local M = {}

local DEFAULT_BACKOFF = 0.1
local DEFAULT_BACKOFF_MAX = 30
local DEFAULT_LIMIT = 1024

local POLICIES = { cancel = true, collect = true, ignore = true }

---------------------------------------------------------------------------
-- The default pool: in a worker, the pool running it (nested fan-out);
-- elsewhere one pool per state, made on first use.

local default_pool
local default_workers

--- Sets the size of this state's default pool (before its first use).
function M.set_default_workers(n)
  if math.type(n) ~= "integer" or n < 1 then
    error("bad argument #1 to 'set_default_workers' (integer >= 1 expected)", 2)
  end
  if default_pool then
    error("set_default_workers: the default pool already exists", 2)
  end
  default_workers = n
end

function M.default_pool()
  local p = core._current_pool()
  if p then return p end
  if not default_pool then
    local workers = default_workers or core.ncpu()
    default_pool = assert(core.pool {
      workers = workers,
      limit = math.max(DEFAULT_LIMIT, workers),
      name = "default",
    })
  end
  return default_pool
end

---------------------------------------------------------------------------
-- The job wrapper, run in a worker: fn under xpcall with a traceback,
-- retried as the spec says.  Returns true, results... or false, err.

local function seconds(d, what, where)
  if d == nil then return nil end
  if type(d) == "number" and d >= 0 then return d end
  local s, err
  if type(d) == "string" then
    s, err = require("weft.duration").parse(d)
  end
  if s == nil then
    error(("bad option '%s' to '%s' (%s)"):format(what, where,
      err or ("duration expected, got " .. type(d))), 4)
  end
  return s
end

-- A string error gets the traceback of where it was raised, without the
-- frames of weft's own wrapper.
local function traceback(e)
  if e == nil or e == false then  -- as lua.c says it: not a silent success
    e = ("(error object is a %s value)"):format(type(e))
  end
  if type(e) ~= "string" or e == core.CANCELED or e == core.DEADLINE_EXCEEDED then
    return e  -- a context's end is not a bug: no traceback
  end
  local tb = debug.traceback(e, 2)
  local cut = tb:find("\n\t%[C%]: in function 'xpcall'")
    or tb:find("\n\t[^\n]*weft/group%.lua:")
  return cut and tb:sub(1, cut - 1) or tb
end

-- After a failure err: the remaining tries of fn(ctx, ...), with a
-- doubling, capped backoff; spec = {retries, backoff, backoff_max}.
-- Returns true, results... or false, the last error.
local function retry(spec, ctx, err, fn, ...)
  local delay = spec.backoff
  for _ = 1, spec.retries do
    if ctx:err() or not core.sleep(ctx, delay) then break end
    delay = math.min(delay * 2, spec.backoff_max)
    local r = table.pack(xpcall(fn, traceback, ctx, ...))
    if r[1] then return true, table.unpack(r, 2, r.n) end
    err = r[2]
  end
  return false, err
end

-- Tells the group's context about a failure (cancel policy): the first
-- cancel wins, so gctx:cause() is the first error.
local function report(spec, err)
  if not spec.cancel then return end
  core._shield()  -- our own cancel must not stop us: we return err
  if not pcall(spec.cancel, err) then
    spec.cancel(tostring(err))
  end
end

-- A job of a group: fn(ctx, ...) -> true, results... | false, err
local function run_job(ctx, spec, fn, ...)
  local t0 = spec.timing and core.now()
  local r = table.pack(xpcall(fn, t0 and core._guard(traceback) or traceback, ctx, ...))
  if not r[1] and spec.retries > 0 then
    r = table.pack(retry(spec, ctx, r[2], fn, ...))
  end
  if not r[1] then report(spec, r[2]) end
  if t0 then  -- for the weft command's job log: when and how long
    return r[1], t0, core.now() - t0, table.unpack(r, 2, r.n)
  end
  return table.unpack(r, 1, r.n)
end

-- A batch of map/each: items[1..n] are items first..first+n-1.  The items
-- run in one protected loop, so an item costs about a Lua call; a failure
-- is retried (or recorded) alone and the loop goes on after it.  Returns
-- the results (map) and the failures as {index, err} pairs.
local function run_batch(ctx, spec, fn, items, n, first, keep)
  local out = keep and {} or nil
  local failures
  local pos = 1
  local item_timeout = spec.item_timeout
  local function loop()
    for k = pos, n do
      pos = k
      local c = item_timeout and core.with_timeout(ctx, item_timeout) or ctx
      local v = fn(c, items[k], first + k - 1)
      if keep then out[k] = v end
    end
    pos = n + 1
  end
  while pos <= n do
    local ok, err = xpcall(loop, traceback)
    if ok then break end
    local k = pos
    local v
    if spec.retries > 0 then
      local c = item_timeout and core.with_timeout(ctx, item_timeout) or ctx
      ok, v = retry(spec, c, err, fn, items[k], first + k - 1)
    else
      v = err
    end
    if ok then
      if keep then out[k] = v end
    else
      failures = failures or {}
      failures[#failures + 1] = { first + k - 1, v }
      report(spec, v)
      if spec.cancel then break end
    end
    pos = k + 1
  end
  if failures then return out, failures end
  return out  -- alone, so the caller may take it straight into its results
end

-- A batch when the weft command keeps a job log: each item timed alone,
-- and skipped when skip[k] (resumed from the log).  Returns the results,
-- the failures and {start, duration} of each item run.
local function run_batch_logged(ctx, spec, fn, items, n, first, keep, skip)
  local out = keep and {} or nil
  local failures
  local times = {}
  local handler = core._guard(traceback)  -- canceled: return what we have
  for k = 1, n do
    if ctx:err() and spec.cancel then break end
    if not (skip and skip[k]) then
      local c = spec.item_timeout and core.with_timeout(ctx, spec.item_timeout) or ctx
      local t0 = core.now()
      local ok, v = xpcall(fn, handler, c, items[k], first + k - 1)
      if not ok and spec.retries > 0 then
        ok, v = retry(spec, c, v, fn, items[k], first + k - 1)
      end
      times[k] = { t0, core.now() - t0 }
      if ok then
        if keep then out[k] = v end
      else
        failures = failures or {}
        failures[#failures + 1] = { first + k - 1, v }
        report(spec, v)
        if spec.cancel or ctx:err() then break end
      end
    end
  end
  return out, failures or false, times
end

---------------------------------------------------------------------------
-- The weft command's run log (weft.runlog) watches groups and maps of its
-- state through an observer: submitted(n), finished(record), skip(group,
-- label), and `timing` when it keeps a job log.

local observer
local nameless = 0

--- Sets (or, with nil, clears) this state's observer.
function M.observe(obs)
  observer = obs
  nameless = 0
end

local function is_cancellation(v)
  return v == core.CANCELED or v == core.DEADLINE_EXCEEDED
end

local function status_of(err, panicked)
  if err == nil then return "ok" end
  if is_cancellation(err) then return "canceled" end
  return panicked and "panic" or "error"
end

-- An item's label for the job log: the item when it is a string or a
-- number, its `label` field when it is a table that has one, else its index.
local function item_label(item, i)
  local t = type(item)
  if t == "string" or t == "number" then return item end
  if t == "table" and (type(item.label) == "string" or type(item.label) == "number") then
    return item.label
  end
  return i
end

---------------------------------------------------------------------------
-- groups

local Group = {}
Group.__index = Group

local OPTIONS = {
  pool = true, limit = true, on_error = true, retries = true,
  backoff = true, backoff_max = true, timeout = true, name = true,
}

local function check_limit(n, where)
  if n ~= nil and (math.type(n) ~= "integer" or n < 1) then
    error(("bad option 'limit' to '%s' (integer >= 1 expected)"):format(where), 3)
  end
  return n
end

local function new_group(ctx, opts, where, optarg)
  if core._typeof(ctx) ~= "weft.context" then
    error(("bad argument #1 to '%s' (weft.context expected, got %s)")
      :format(where, core._typeof(ctx) or type(ctx)), 3)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error(("bad argument #%d to '%s' (table expected, got %s)")
      :format(optarg, where, type(opts)), 3)
  end
  opts = opts or {}
  for k in pairs(opts) do
    if not OPTIONS[k] and not (where ~= "group" and (k == "batch")) then
      error(("bad argument #%d to '%s' (unknown option %s)"):format(optarg, where, tostring(k)), 3)
    end
  end
  local policy = opts.on_error or "cancel"
  if not POLICIES[policy] then
    error(("bad option 'on_error' to '%s' (cancel, collect or ignore expected, got %s)")
      :format(where, tostring(policy)), 3)
  end
  if opts.pool ~= nil and core._typeof(opts.pool) ~= "weft.pool" then
    error(("bad option 'pool' to '%s' (weft.pool expected, got %s)")
      :format(where, core._typeof(opts.pool) or type(opts.pool)), 3)
  end
  local retries = opts.retries or 0
  if math.type(retries) ~= "integer" or retries < 0 then
    error(("bad option 'retries' to '%s' (integer >= 0 expected)"):format(where), 3)
  end
  if opts.name ~= nil and type(opts.name) ~= "string" then
    error(("bad option 'name' to '%s' (string expected, got %s)"):format(where, type(opts.name)), 3)
  end
  local name = opts.name
  if name == nil and observer then
    nameless = nameless + 1
    name = where .. "#" .. nameless
  end
  local gctx, cancel = core.with_cancel(ctx)
  local g = setmetatable({
    name = name,
    parent = ctx,
    ctx = gctx,
    cancel = cancel,
    pool = opts.pool or M.default_pool(),
    limit = check_limit(opts.limit, where),
    policy = policy,
    timeout = seconds(opts.timeout, "timeout", where),
    spec = {
      retries = retries,
      backoff = seconds(opts.backoff, "backoff", where) or DEFAULT_BACKOFF,
      backoff_max = seconds(opts.backoff_max, "backoff_max", where) or DEFAULT_BACKOFF_MAX,
      cancel = policy == "cancel" and cancel or nil,
      timing = observer ~= nil and observer.timing or nil,
    },
    n = 0,          -- jobs started with go
    head = 1,       -- jobs[head..tail]: in go order, nil once reaped
    tail = 0,
    nactive = 0,
    jobs = {},      -- {future, index, label, batch = {first, n}}
    errors = {},    -- {index, label, error}
    waited = false,
  }, Group)
  return g, gctx
end

--- weft.group(ctx, opts) -> g, gctx
function M.group(ctx, opts)
  return new_group(ctx, opts, "group", 2)
end

function Group:active()
  return self.nactive
end

function Group:fail(index, label, err)
  local errs = self.errors
  errs[#errs + 1] = { index = index, label = label, error = err }
  if self.policy == "cancel" then report(self.spec, err) end
end

-- Collects job i of the queue (waiting for it if need be): its results go
-- into map's results, its errors to the group.
function Group:reap(i)
  local job = self.jobs[i]
  self.jobs[i] = nil
  self.nactive = self.nactive - 1
  while self.head <= self.tail and self.jobs[self.head] == nil do
    self.head = self.head + 1
  end
  local f = job.future
  if job.batch and self.results and not self.spec.timing then
    f:_settle()  -- map: straight into the results
    if core._result_into(f, self.results, job.batch[1] - 1) then
      if observer then observer:finished_batch(job.batch[2]) end
      return
    end
  end
  local r = table.pack(f:wait())
  if job.batch then
    self:reap_batch(job, r)
  elseif r[1] == nil or r[1] == false then  -- deadlock, or killed/canceled
    self:fail(job.index, job.label, r[2])
    self:record(job, nil, nil, r[2], true)
  else
    local ok, err = r[2], r[3]
    local t0, dt
    if self.spec.timing then t0, dt, err = r[3], r[4], r[5] end
    if ok == false then self:fail(job.index, job.label, err) end
    self:record(job, t0, dt, ok == false and err or nil)
  end
end

-- Tells the observer (the weft command) about a finished job.
function Group:record(job, t0, dt, err, panicked)
  if not observer then return end
  observer:finished {
    group = self.name, label = job.label, index = job.index,
    start = t0, duration = dt, status = status_of(err, panicked),
    error = err ~= nil and tostring(err) or nil,
  }
end

function Group:reap_batch(job, r)
  local first, count = job.batch[1], job.batch[2]
  if not r[1] then  -- the batch itself failed (hard cancel, deadlock): all of it
    self:fail(job.index, job.label, r[2])
    if observer then observer:finished_batch(count, count) end
    return
  end
  local out, failures, times = r[2], r[3], r[4]
  if self.on_batch then self.on_batch(job.batch, out) end
  local failed = {}
  for _, e in ipairs(failures or {}) do
    self:fail(e[1], nil, e[2])
    failed[e[1]] = e[2]
  end
  if not observer then return end
  if not times then
    observer:finished_batch(count, #(failures or {}))
    return
  end
  local items = job.items
  for k = 1, count do
    local t = times[k]
    if t then
      local index = first + k - 1
      local err = failed[index]
      observer:finished {
        group = self.name, label = item_label(items[k], index), index = index,
        start = t[1], duration = t[2], status = status_of(err),
        error = err ~= nil and tostring(err) or nil,
      }
    end
  end
end

-- Reaps the jobs already done at the head of the queue (no waiting).
function Group:reap_any_done()
  for i = self.head, self.tail do
    local job = self.jobs[i]
    if job and job.future:done() then self:reap(i) end
  end
end

function Group:reap_done()
  while self.head <= self.tail and self.jobs[self.head].future:done() do
    self:reap(self.head)
  end
end

-- Waits until any job is done and reaps it.  The limit is at most a few
-- thousand jobs, so a scan is fine; the wait is one the pool's deadlock
-- detection sees.
function Group:reap_any()
  local futures, at = {}, {}
  for i = self.head, self.tail do
    local job = self.jobs[i]
    if job then
      if job.future:done() then return self:reap(i) end
      futures[#futures + 1] = job.future
      at[#at + 1] = i
    end
  end
  local k = core._wait_any(futures)
  -- nil: deadlock; then the wait on the oldest job says so too, and fails
  return self:reap(k and at[k] or self.head)
end

-- Misuse of go, go_label and try_go (named `where`; fn is argument #arg),
-- raised at their caller.
function Group:check_go(where, arg, fn)
  if self.waited then
    error(("%s: the group was waited on (its context is canceled); "
      .. "make a new group"):format(where), 3)
  end
  if type(fn) ~= "function" then
    error(("bad argument #%d to '%s' (function expected, got %s)"):format(arg, where, type(fn)), 3)
  end
end

-- A copy error names the values of the submit (args[1] is our runner):
-- say it in the caller's terms, fn and its arguments (g:go) or items (map).
local function copy_error(msg, batch)
  if type(msg) ~= "string" then return msg end
  if batch then
    local k, rest = msg:match("^args%[4%]%[(%d+)%](.*)$")
    if k then return ("items[%d]%s"):format(batch[1] + tonumber(k) - 1, rest) end
  end
  return (msg:gsub("^args%[(%d+)%]", function(n)
    n = tonumber(n)
    if n == 3 then return "fn" end
    return n > 3 and ("args[%d]"):format(n - 3) or nil
  end))
end

-- What a job runs: small functions with no upvalue but _ENV, so a worker
-- loads each once (value.c caches such functions), calling the wrappers
-- above through the worker's own weft.group.
M._run_job, M._run_batch, M._run_batch_logged = run_job, run_batch, run_batch_logged

local function job_entry(...)
  return require("weft.group")._run_job(...)
end

local function batch_entry(...)
  return require("weft.group")._run_batch(...)
end

local function logged_batch_entry(...)
  return require("weft.group")._run_batch_logged(...)
end

function Group:runner(batch)
  if not batch then return job_entry end
  return self.spec.timing and logged_batch_entry or batch_entry
end

function Group:submit(try, label, batch, fn, ...)
  self:reap_done()
  if self.limit then
    if try and self.nactive >= self.limit then
      self:reap_any_done()
      if self.nactive >= self.limit then return false end
    end
    while self.nactive >= self.limit do self:reap_any() end
  end
  local jctx = self.ctx
  if self.timeout then jctx = core.with_timeout(self.ctx, self.timeout) end
  local pool = self.pool
  local ok, f, err = pcall(try and pool.try_submit or pool.submit, pool, jctx,
                           self:runner(batch), self.spec, fn, ...)
  if not ok then  -- a value that cannot be copied: name it as the caller does
    error(copy_error(f, batch), 3)
  end
  if try and not f and err == core.SATURATED then return false end
  self.n = self.n + 1
  local index = batch and batch[1] or self.n
  if not f then
    self:fail(index, label, err)
    return true
  end
  self.tail = self.tail + 1
  self.nactive = self.nactive + 1
  self.jobs[self.tail] = { future = f, index = index, label = label, batch = batch,
                           items = batch and self.spec.timing and (...) or nil }
  if observer and not batch then observer:submitted(1) end
  return true
end

--- g:go(fn, ...): runs fn(gctx, ...) on the group's pool; blocks while the
-- group has `limit` jobs running.
function Group:go(fn, ...)
  self:check_go("go", 1, fn)
  self:submit(false, nil, nil, fn, ...)
end

--- g:go_label(label, fn, ...): the same, naming the job in errors.
function Group:go_label(label, fn, ...)
  self:check_go("go_label", 2, fn)
  self:submit(false, label, nil, fn, ...)
end

--- g:try_go(fn, ...) -> boolean: false, without waiting, when the group is
-- at its limit or the pool is full.
function Group:try_go(fn, ...)
  self:check_go("try_go", 1, fn)
  return self:submit(true, nil, nil, fn, ...)
end

--- g:set_limit(n): as Go's SetLimit; not while jobs run.
function Group:set_limit(n)
  if self:active() > 0 then
    self:reap_done()
    if self:active() > 0 then
      error("set_limit: cannot change the limit while jobs of the group run", 2)
    end
  end
  self.limit = check_limit(n, "set_limit")
end

-- The first error.  A job that fails cancels gctx with its error as the
-- cause (and, under hard cancel, that cancel also ends the job itself, so
-- its future may only say "context canceled"): gctx's cause is the first
-- error, unless gctx ended with its parent.  Else the first error by index
-- that is not a cancellation, else the first.

function Group:first_error()
  local errs = self.errors
  if #errs == 0 then return nil end
  local cause = self.ctx:cause()
  if cause ~= nil and not is_cancellation(cause) and self.parent:err() == nil then
    return cause
  end
  table.sort(errs, function(a, b) return a.index < b.index end)
  for _, e in ipairs(errs) do
    if not is_cancellation(e.error) then return e.error end
  end
  return errs[1].error
end

--- g:wait() -> nil | err: waits for every job; "cancel": the first error;
-- "collect": the list of every error ({index, label, error}), nil if none;
-- "ignore": nil.  gctx is canceled when wait returns.
function Group:wait()
  while self.head <= self.tail do self:reap(self.head) end
  self.waited = true
  self.cancel()
  if self.policy == "ignore" then return nil end
  if self.policy == "collect" then
    if #self.errors == 0 then return nil end
    table.sort(self.errors, function(a, b) return a.index < b.index end)
    return self.errors
  end
  return self:first_error()
end

---------------------------------------------------------------------------
-- map and each: items go to workers in batches, so the cost per item
-- approaches a Lua call: one job (one copy of fn, one future) per batch.

local function batch_size(n, pool, opts)
  if opts.batch ~= nil then
    if math.type(opts.batch) ~= "integer" or opts.batch < 1 then
      error("bad option 'batch' (integer >= 1 expected)", 3)
    end
    return opts.batch
  end
  if opts.timeout ~= nil then return 1 end  -- a timeout is per job: per item
  local workers = pool:stats().workers
  -- about 8 batches per worker, between 1 and 4096 items each
  return math.max(1, math.min(4096, n // (workers * 8)))
end

local function map_or_each(where, ctx, items, fn, opts, keep)
  if type(items) ~= "table" then
    error(("bad argument #2 to '%s' (table expected, got %s)"):format(where, type(items)), 3)
  end
  if type(fn) ~= "function" then
    error(("bad argument #3 to '%s' (function expected, got %s)"):format(where, type(fn)), 3)
  end
  opts = opts or {}
  local g = new_group(ctx, opts, where, 4)
  local n = #items
  local size = batch_size(n, g.pool, opts)
  if g.timeout and size > 1 then  -- a timeout is per item, not per batch
    g.spec.item_timeout, g.timeout = g.timeout, nil
  end
  if not g.limit then  -- bound the batches in flight (and their futures)
    g.limit = g.pool:stats().workers * 4
  end
  local results = keep and core._table(n) or nil
  if keep then
    g.results = results
    g.on_batch = function(batch, out)
      if out then table.move(out, 1, batch[2], batch[1], results) end
    end
  end
  if observer then observer:submitted(n) end
  local first = 1
  while first <= n and not (g.policy == "cancel" and g.ctx:err()) do
    local count = math.min(size, n - first + 1)
    local slice = table.move(items, first, first + count - 1, 1, core._table(count))
    local skip, nskip = nil, 0
    if observer and observer.resume then  -- items that succeeded last time
      for k = 1, count do
        if observer:skip(g.name, item_label(slice[k], first + k - 1)) then
          skip = skip or {}
          skip[k] = true
          nskip = nskip + 1
        end
      end
    end
    if nskip < count then
      g:submit(false, nil, { first, count }, fn, slice, count, first, keep, skip)
    end
    if nskip > 0 then observer:finished_batch(nskip) end  -- done last time
    first = first + count
  end
  local err = g:wait()
  if g.policy == "cancel" then
    if err ~= nil then return nil, err end
    local cerr = ctx:err()  -- the caller's context ended the run
    if first <= n and cerr then return nil, cerr end
  elseif g.policy == "collect" and err ~= nil then
    return nil, err
  end
  if keep then return results end
  return true
end

--- weft.map(ctx, items, fn, opts) -> results (same order) | nil, err
-- fn(ctx, item, index) runs in workers; results[i] is its first result.
function M.map(ctx, items, fn, opts)
  return map_or_each("map", ctx, items, fn, opts, true)
end

--- weft.each(ctx, items, fn, opts) -> true | nil, err
function M.each(ctx, items, fn, opts)
  return map_or_each("each", ctx, items, fn, opts, false)
end

return M
