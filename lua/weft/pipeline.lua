--- weft.pipeline: a chain of stages over bounded channels (issue 4, item 4;
-- DESIGN.md, "Channels").
--
--   local results, err = weft.pipeline(ctx, source, stages, opts)
--   -- or: local pipeline = require "weft.pipeline"
--   --     pipeline.run(ctx, ...), pipeline.pipeline(ctx, ...), pipeline(ctx, ...)
--
-- source, one of:
--   * an array: items[1 .. #items] are sent in order;
--   * a weft channel: read until it is closed (the pipeline never closes it);
--   * a function source(ctx, emit), run as a job in a worker: emit(v) sends v
--     down the pipeline and returns true, or nil, err once the pipeline has
--     ended (stop then); emit(nil) raises.  The source fails the pipeline by
--     raising or by returning nil, err.
-- stages: an array; each stage is a function fn(ctx, v) -> v2, or a table
--   { fn, workers = n, buffer = cap } (`fn = fn` also works).  A stage's
--   `workers` jobs (default 1) each read the stage's input channel, call fn
--   and send v2 on; nil drops the item; nil, err fails the pipeline, and so
--   does a raise (a string error comes with the traceback where it was
--   raised; another error value is returned as it is, copied).  `buffer` is the
--   capacity of the stage's input channel (default opts.buffer).
-- opts (all optional):
--   workers  threads of the pipeline's pool (default weft.ncpu(); never more
--            than the pipeline has jobs)
--   buffer   default channel capacity (16); also the capacity of the channel
--            from the last stage to the caller
--   ordered  results in source order, whatever order parallel workers finish
--            in
--   window   ordered only: at most this many items between the source and
--            the caller (default: the pipeline's own capacity, the sum of its
--            channel capacities and workers, plus one); bounds the reorder
--            buffer while one slow item holds the others back
--   sink     function(v), called in the caller's state for each output (in
--            source order when ordered) instead of collecting them; a raise
--            or nil, err from it fails the pipeline
-- Returns the outputs as an array (the sink's count of items with a sink), or
-- nil, err: the first error (a stage's, the source's, the sink's), else
-- ctx:err() when ctx ended first.  Misuse (a bad source, stage or option)
-- raises.
--
-- How it runs.  Each run has its own context (weft.with_cancel(ctx)), a pool
-- (closed before returning: no job of the pipeline outlives the call) whose
-- limit admits every job at once (jobs park while they wait on a channel, so
-- the limit may exceed the threads), and channels between the stages:
--
--   source job -> ch0 -> stage 1 (n jobs) -> ch1 -> ... -> chN -> caller
--
-- A closer job waits for stage 1's jobs, closes ch1, waits for stage 2's,
-- closes ch2, and so on; each job returns true only when it ended because
-- its input was closed, and the closer closes a channel only when all the
-- stage's jobs did so and the run is still live, so a closed last channel
-- means every item got through.  Bounded channels are the backpressure: a
-- slow stage fills its input channel, which blocks the stage before it, up
-- to the source.
--
-- Errors: a job catches every error itself, records it (the first one wins,
-- in a second context used only for that) and cancels the run's context,
-- which wakes every job blocked on a channel and interrupts running Lua code
-- (the pool's hard cancel).  An error a job meets after the run ended is an
-- effect of that end and is not recorded, so a canceled parent reports
-- ctx:err(), not a job's "context canceled".  The run returns only once
-- every job has finished: a stage blocked outside weft (in a C call that
-- does not return) holds it until it returns.
--
-- Ordered: the source tags each item with its sequence number; a dropped
-- item goes on as a hole (its number without a value), so the caller's
-- reorder buffer never waits for an item that will not come.  The source
-- takes a token from a window channel before each item and the caller gives
-- it back when it delivers that item in order, which bounds the reorder
-- buffer.
--
-- Jobs are Lua functions copied into worker states (README, "Copying
-- values"): the functions below capture only copyable values (the `weft`
-- module travels by name, channels, contexts, cancel handles and futures are
-- shared handles), and stage and source functions must be copyable too.
-- Those that run in workers read the standard library from the worker's
-- globals instead of capturing its C functions: a C function travels by a
-- name it has in package.loaded, and a module that re-exports one (penlight,
-- busted: pack = table.pack) can lend it a name the worker does not have.
-- The user's functions and the source reach a job through a channel, not as
-- its arguments: a job receives them inside its own error handling, so one
-- that cannot be loaded in a worker (a captured module the worker cannot
-- require, say) fails the run at once instead of leaving a job that never
-- started.
local core = require "weft.core"

local CLOSED = core.CLOSED

local DEFAULT_BUFFER = 16

local M = {}

-- ---------------------------------------------------------------------------
-- What runs in the workers (and, for errors, in the caller)

-- An error value as a message string, by the rules the pool uses for a
-- job's panic (engine/pool.c, report_k): for an error value that cannot be
-- copied out of a worker.
local function message(e)
  local t = type(e)
  if t == "string" or t == "number" then return tostring(e) end
  local mt = debug.getmetatable(e)
  if mt ~= nil and rawget(mt, "__tostring") ~= nil then
    local ok, s = pcall(tostring, e)
    if ok and type(s) == "string" then return s end
    return ("(error object is a %s value; its __tostring failed)"):format(t)
  end
  return ("(error object is a %s value)"):format(t)
end

-- xpcall handler: a string error gets the traceback of where it was raised,
-- as a panic's error reads ("message\nstack traceback:\n..."), without the
-- frames of this module (as weft.group does); another value stays as it is.
local function with_traceback(e)
  if type(e) ~= "string" then return e end
  local tb = debug.traceback(e, 2)
  local cut = tb:find("\n\t[^\n]*weft/pipeline%.lua:")
  return cut and tb:sub(1, cut - 1) or tb
end

-- The first error of the run: records err unless the run has already ended
-- (an error met then is an effect of that end), then cancels the run.  h
-- holds the two cancel handles; an error value that cannot be copied goes
-- by its message.  In a job, nothing runs after cancel(): the job is
-- interrupted at its next instruction.
local function fail(ctx, h, err)
  if not ctx:done() and not pcall(h.record, err) then
    err = message(err)
    h.record(err)
  end
  if not pcall(h.cancel, err) then h.cancel(message(err)) end
end

-- Every job: runs body(ctx, h, ...) and turns any raise into the run's
-- error.  Bodies return true when they ended because their input was
-- closed, else nil, err.
local function job(ctx, h, body, ...)
  local ok, done, err = xpcall(body, with_traceback, ctx, h, ...)
  if not ok then
    fail(ctx, h, done)
    return nil, done
  end
  return done, err
end

-- What a job's channel of user values holds (sent before the job was
-- submitted, so it is there).  Raises when it cannot be loaded here.
local function take(ch)
  local v, err = ch:try_recv()
  if v == nil then error("weft.pipeline: a job's input is missing (" .. tostring(err) .. ")", 0) end
  return v
end

-- Sends one item of the source: tagged with seq, after taking a window
-- token, when ordered (window is then a channel).
local function put(ctx, out, window, seq, v)
  if window then
    local ok, err = window:send(ctx, true)
    if not ok then return nil, err end
    return out:send(ctx, { seq, v })
  end
  return out:send(ctx, v)
end

-- Source bodies: each closes its output once everything went out.
local function array_source(ctx, _, given, out, window)
  local items = take(given)
  for i = 1, #items do
    local ok, err = put(ctx, out, window, i, items[i])
    if not ok then return nil, err end
  end
  if ctx:done() then return nil, ctx:err() end
  out:close()
  return true
end

local function channel_source(ctx, _, input, out, window)
  local seq = 0
  while true do
    local v, err = input:recv(ctx)
    if v == nil then
      if err ~= CLOSED then return nil, err end
      break
    end
    seq = seq + 1
    local ok, serr = put(ctx, out, window, seq, v)
    if not ok then return nil, serr end
  end
  if ctx:done() then return nil, ctx:err() end
  out:close()
  return true
end

local function function_source(ctx, h, given, out, window)
  local fn = take(given)
  local seq = 0
  local function emit(v)
    if v == nil then error("bad argument #1 to 'emit' (cannot emit nil)", 2) end
    seq = seq + 1
    return put(ctx, out, window, seq, v)
  end
  local ok, err = fn(ctx, emit)
  if ok == nil and err ~= nil then
    fail(ctx, h, err)
    return nil, err
  end
  -- a source that ignored a failed emit must not close: the run has ended
  if ctx:done() then return nil, ctx:err() end
  out:close()
  return true
end

-- One job of a stage.  Ordered items are { seq, v }; { seq } is a hole,
-- passed on without calling fn.
local function stage_worker(ctx, h, given, input, out, ordered)
  local fn = take(given)
  while true do
    local item, err = input:recv(ctx)
    if item == nil then
      if err == CLOSED then return true end
      return nil, err
    end
    local seq, v = nil, item
    if ordered then seq, v = item[1], item[2] end
    local r
    if v ~= nil then
      local ferr
      r, ferr = fn(ctx, v)
      if r == nil and ferr ~= nil then
        fail(ctx, h, ferr)
        return nil, ferr
      end
    end
    local ok, serr
    if ordered then
      ok, serr = out:send(ctx, { seq, r })
    elseif r ~= nil then
      ok, serr = out:send(ctx, r)
    else
      ok = true
    end
    if not ok then return nil, serr end
  end
end

-- Closes each stage's output once all its jobs ended cleanly, in stage
-- order.  stages[k] = { futures = { ... }, out = channel }.
local function closer(ctx, h, stages)
  for k = 1, #stages do
    local s = stages[k]
    for i = 1, #s.futures do
      local ok, clean, err = s.futures[i]:wait(ctx)
      if not (ok and clean) then
        -- a job that ended while the run lives failed outside its own
        -- error handling: that is the run's error
        err = ok == false and clean or err or "weft.pipeline: a stage job failed"
        if not ctx:done() then fail(ctx, h, err) end
        return nil, err
      end
    end
    if ctx:done() then return nil, ctx:err() end
    s.out:close()
  end
  return true
end

-- ---------------------------------------------------------------------------
-- Checking the arguments

-- Misuse raises a plain message; run re-raises it at its caller's line.
local function misuse(fmt, ...)
  error("weft.pipeline: " .. fmt:format(...), 0)
end

local function is_handle(x, example)
  return type(x) == "userdata" and debug.getmetatable(x) ~= nil
    and debug.getmetatable(x) == debug.getmetatable(example)
end

local chan_example
local function is_chan(x)
  if type(x) ~= "userdata" or core.chan == nil then return false end
  chan_example = chan_example or core.chan(0)
  return is_handle(x, chan_example)
end

local function count(v, name, min)
  local n = math.tointeger(v)
  if n == nil or n < min then
    misuse("%s must be an integer >= %d (got %s)", name, min, tostring(v))
  end
  return n
end

local function copyable(fn, what)
  local ok, err = pcall(core.copy, fn)
  if not ok then
    misuse("%s cannot be copied to a worker: %s", what, tostring(err))
  end
end

local OPTIONS = { workers = true, buffer = true, ordered = true, window = true, sink = true }
local STAGE_KEYS = { [1] = true, fn = true, workers = true, buffer = true }

local function check_opts(opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then misuse("opts must be a table (got %s)", type(opts)) end
  for k in pairs(opts) do
    if not OPTIONS[k] then misuse("unknown option %s", tostring(k)) end
  end
  local o = {}
  o.workers = opts.workers == nil and core.ncpu() or count(opts.workers, "opts.workers", 1)
  o.buffer = opts.buffer == nil and DEFAULT_BUFFER or count(opts.buffer, "opts.buffer", 0)
  if opts.ordered ~= nil and type(opts.ordered) ~= "boolean" then
    misuse("opts.ordered must be a boolean (got %s)", type(opts.ordered))
  end
  o.ordered = opts.ordered == true
  if opts.window ~= nil then
    if not o.ordered then misuse("opts.window applies to an ordered pipeline only") end
    o.window = count(opts.window, "opts.window", 1)
  end
  if opts.sink ~= nil and type(opts.sink) ~= "function" then
    misuse("opts.sink must be a function (got %s)", type(opts.sink))
  end
  o.sink = opts.sink
  return o
end

local function check_stages(stages, o)
  if type(stages) ~= "table" then misuse("stages must be an array (got %s)", type(stages)) end
  local n = #stages
  for k in pairs(stages) do
    if math.type(k) ~= "integer" or k < 1 or k > n then
      misuse("stages must be an array (found key %s)", tostring(k))
    end
  end
  local out = {}
  for i = 1, n do
    local s, fn, workers, buffer = stages[i], nil, 1, o.buffer
    if type(s) == "function" then
      fn = s
    elseif type(s) == "table" then
      for k in pairs(s) do
        if not STAGE_KEYS[k] then misuse("stage %d: unknown field %s", i, tostring(k)) end
      end
      if s[1] ~= nil and s.fn ~= nil then misuse("stage %d: give the function as [1] or fn, not both", i) end
      fn = s[1] or s.fn
      if type(fn) ~= "function" then
        misuse("stage %d: the function (stage[1]) must be a function (got %s)", i, type(fn))
      end
      if s.workers ~= nil then workers = count(s.workers, ("stage %d: workers"):format(i), 1) end
      if s.buffer ~= nil then buffer = count(s.buffer, ("stage %d: buffer"):format(i), 0) end
    else
      misuse("stage %d must be a function or a table { fn, workers = n, buffer = cap } (got %s)",
        i, type(s))
    end
    copyable(fn, ("stage %d's function"):format(i))
    out[i] = { fn = fn, workers = workers, buffer = buffer }
  end
  return out
end

local function check_source(source)
  local t = type(source)
  if t == "function" then
    copyable(source, "the source function")
    return "function"
  elseif t == "table" then
    return "array"
  elseif is_chan(source) then
    return "channel"
  end
  misuse("source must be an array, a weft channel or a function (got %s)", t)
end

-- ---------------------------------------------------------------------------
-- Running

-- A channel holding n copies of v, for n jobs to take (see take()).
local function given(v, n)
  local ch = core.chan(n)
  for _ = 1, n do ch:try_send(v) end
  return ch
end

-- Submits every job; raises when an item of an array source cannot be
-- copied.  Returns the futures, or nil, err when the run's context ended
-- first.
local function start(pool, pctx, h, kind, source, stages, chans, o, window)
  local futures = {}
  local function submit(body, ...)
    local f, err = pool:submit(pctx, job, h, body, ...)
    if f == nil then return nil, err end
    futures[#futures + 1] = f
    return f
  end
  if kind == "channel" and o.ordered then
    local ok, err = submit(channel_source, source, chans[0], window)
    if not ok then return nil, err end
  elseif kind ~= "channel" then
    local copied, src = pcall(given, source, 1)
    if not copied then  -- an item of the array cannot be copied
      error((tostring(src):gsub("^value", "source")), 0)
    end
    local ok, err = submit(kind == "array" and array_source or function_source,
      src, chans[0], window)
    if not ok then return nil, err end
  end
  local closing = {}
  for k, s in ipairs(stages) do
    local fs, fn = {}, given(s.fn, s.workers)
    for i = 1, s.workers do
      local f, err = submit(stage_worker, fn, chans[k - 1], chans[k], o.ordered)
      if not f then return nil, err end
      fs[i] = f
    end
    closing[k] = { futures = fs, out = chans[k] }
  end
  if #stages > 0 then
    local ok, err = submit(closer, closing)
    if not ok then return nil, err end
  end
  return futures
end

-- Reads the last channel until it is closed, delivering each output (in
-- order when ordered).  Returns true once closed, else nil, err.
local function collect(pctx, last, o, window, deliver)
  local pending, next_seq = {}, 1
  while true do
    local item, err = last:recv(pctx)
    if item == nil then
      if err == CLOSED then return true end
      return nil, err
    end
    if o.ordered then
      pending[item[1]] = item
      local it = pending[next_seq]
      while it ~= nil do
        pending[next_seq] = nil
        next_seq = next_seq + 1
        if it[2] ~= nil then
          local ok, derr = deliver(it[2])
          if not ok then return nil, derr end
        end
        window:try_recv()  -- give back the item's token once it is delivered
        it = pending[next_seq]
      end
    else
      local ok, derr = deliver(item)
      if not ok then return nil, derr end
    end
  end
end

local function check(ctx, source, stages, opts)
  if not is_handle(ctx, core.background()) then
    error(("bad argument #1 to 'pipeline' (weft.context expected, got %s)"):format(type(ctx)), 0)
  end
  if core.chan == nil then misuse("channels (weft.chan) are not available") end
  local o = check_opts(opts)
  return o, check_source(source), check_stages(stages, o)
end

-- The run's channels: chans[0] into stage 1 (the source channel itself when
-- the stages read it directly), chans[k] out of stage k; the window (ordered
-- only); and how many jobs the run has.
local function plan(kind, source, st, o)
  local direct = kind == "channel" and not o.ordered
  local chans = {}
  chans[0] = direct and source or core.chan(st[1] and st[1].buffer or o.buffer)
  for k = 1, #st do
    chans[k] = core.chan(st[k + 1] and st[k + 1].buffer or o.buffer)
  end
  local njobs = direct and 0 or 1
  for _, s in ipairs(st) do njobs = njobs + s.workers end
  if #st > 0 then njobs = njobs + 1 end  -- the closer
  local window
  if o.ordered then
    local size = o.window
    if size == nil then  -- what the channels and workers hold, plus one
      size = 1
      for k = 0, #st do size = size + chans[k]:cap() end
      for _, s in ipairs(st) do size = size + s.workers end
    end
    window = core.chan(size)
  end
  return chans, window, njobs
end

-- deliver(v) hands one output over: keeps it, or calls the sink (whose
-- raise or nil, err fails the run); result() is what the run returns.
local function outputs(o, pctx, h)
  local results, n, sink = {}, 0, o.sink
  local function deliver(v)
    if sink then
      local ok, r, rerr = xpcall(sink, with_traceback, v)
      local err
      if not ok then err = r elseif r == nil then err = rerr end
      if err ~= nil then
        fail(pctx, h, err)
        return nil, err
      end
    else
      results[n + 1] = v
    end
    n = n + 1
    return true
  end
  local function result()
    if sink then return n end
    return results
  end
  return deliver, result
end

function M.run(ctx, source, stages, opts)
  local valid, o, kind, st = pcall(check, ctx, source, stages, opts)
  if not valid then error(o, 2) end
  local chans, window, njobs = plan(kind, source, st, o)

  local pctx, cancel = core.with_cancel(ctx)
  local rctx, record = core.with_cancel(core.background())
  local h = { cancel = cancel, record = record }

  local pool
  if njobs > 0 then
    local workers = math.min(o.workers, njobs)
    local perr
    pool, perr = core.pool { workers = workers, limit = math.max(njobs, workers), name = "pipeline" }
    if pool == nil then
      cancel()
      record()
      return nil, perr
    end
  end

  -- start the jobs, then collect from the last channel
  local deliver, result = outputs(o, pctx, h)
  local setup_ok, futures, serr = true, {}, nil
  if pool then
    setup_ok, futures, serr = pcall(start, pool, pctx, h, kind, source, st, chans, o, window)
  end
  local finished = false
  if setup_ok and futures then
    finished = collect(pctx, chans[#st], o, window, deliver)
  end

  -- stop whatever still runs, and wait for every job
  if not finished then cancel(serr or "weft.pipeline: stopped") end
  if pool then pool:close() end

  local err
  if rctx:done() then  -- the first error of a job or the sink
    err = rctx:cause()
  elseif not finished then
    err = ctx:err()  -- the parent ended the run
    if err == nil and setup_ok then
      for _, f in ipairs(futures or {}) do  -- else an error no job recorded
        local fok, ferr = f:wait(ctx)
        if fok == false then err = ferr break end
      end
    end
    err = err or serr or "weft.pipeline: stopped"
  end
  cancel()
  record()
  if not setup_ok then error("weft.pipeline: " .. tostring(futures), 2) end
  if err ~= nil then return nil, err end
  return result()
end

-- weft.pipeline (init.lua loads this module on first use of that name)
M.pipeline = M.run

return setmetatable(M, {
  __call = function(_, ctx, source, stages, opts)
    return M.run(ctx, source, stages, opts)
  end,
})
