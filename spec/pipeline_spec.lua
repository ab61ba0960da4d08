-- weft.pipeline (issue 4, item 4): stages over bounded channels, each with
-- its own workers; ordered results; the first error cancels the run;
-- backpressure.  The module's header comment is the contract.
--
-- Every wait here has a bound: each pipeline runs under a context with a
-- timeout (`bounded`), under `root`, which is canceled after each test
-- before the test's own pools are closed; a pipeline returns only after its
-- own pool is closed.  So a broken pipeline fails a test (with "context
-- deadline exceeded") instead of hanging it.  Timings are generous bounds,
-- never measurements.
--
-- Stage and source functions run in worker states: they capture only
-- copyable upvalues (the weft module travels by name; channels, contexts and
-- cancel handles are shared handles).  Counters shared with the main state
-- are channels: ch:len() of a channel nobody reads counts its sends.
local weft = require "weft"
local pipeline = require "weft.pipeline"

local CANCELED, DEADLINE = weft.CANCELED, weft.DEADLINE_EXCEEDED

-- The shared harness (spec/harness.lua): bounded (a context under root
-- that ends by itself after d seconds, default 30 here) and new_pool; root
-- is canceled after each test, then its pools are closed (the newest first).
local harness = dofile("spec/harness.lua").configure { root_timeout = 240, bound = 30 }
local bounded, new_pool = harness.bounded, harness.new_pool

local root
before_each(function() root = harness.start() end)
after_each(harness.finish)

local function range(n)
  local t = {}
  for i = 1, n do t[i] = i end
  return t
end

local function sum(t)
  local s = 0
  for _, v in ipairs(t) do s = s + v end
  return s
end

-- Runs the pipeline under a bounded context; returns its results and the
-- seconds it took.
local function timed(source, stages, opts, d)
  local t0 = weft.now()
  local r, err = pipeline.run(bounded(d), source, stages, opts)
  return r, err, weft.now() - t0
end

-- Spins without ever yielding, until hard cancel interrupts it (under
-- ThreadSanitizer the loop allocates: see spec/harness.lua).
local spin = harness.spin

-- A stage that would hold the run for a minute unless canceled.
local function stuck(ctx, v)
  weft.sleep(ctx, 60)
  return v
end

-- The first line of an error message.
local function first_line(s) return (tostring(s):match("^[^\n]*")) end

-------------------------------------------------------------------------------
describe("weft.pipeline outputs", function()
  it("an array through three stages: counts and sums", function()
    local r, err = timed(range(1000), {
      function(_, v) return v * 2 end,                                         -- 1 worker
      { function(_, v) if v % 3 == 0 then return nil end return v + 1 end, workers = 4 },  -- drops
      { fn = function(_, v) return { v = v, s = tostring(v) } end, workers = 2, buffer = 0 },
    })
    assert.is_nil(err)
    -- 2v is a multiple of 3 when v is: 333 of 1..1000 dropped
    assert.equal(667, #r)
    local s = 0
    for _, t in ipairs(r) do
      assert.equal(tostring(t.v), t.s)
      s = s + t.v
    end
    local expect = 0
    for v = 1, 1000 do if v % 3 ~= 0 then expect = expect + 2 * v + 1 end end
    assert.equal(expect, s)
  end)

  it("the same through the module's __call, with every stage parallel and small buffers", function()
    local r, err = pipeline(bounded(), range(500), {
      { function(_, v) return v + 1 end, workers = 3, buffer = 1 },
      { function(_, v) return v * v end, workers = 3, buffer = 1 },
    }, { buffer = 1, workers = 2 })
    assert.is_nil(err)
    assert.equal(500, #r)
    local expect = 0
    for v = 1, 500 do expect = expect + (v + 1) ^ 2 end
    assert.equal(expect, sum(r))
  end)

  it("a function source (generate), a parallel stage and a sink (aggregate)", function()
    local total, seen = 0, 0
    local n, err = timed(function(_, emit)
      for i = 1, 200 do
        local ok, eerr = emit(i)
        if not ok then return nil, eerr end
      end
    end, {
      { function(_, v) return v * 3 end, workers = 4 },
    }, { sink = function(v) total = total + v; seen = seen + 1 end })
    assert.is_nil(err)
    assert.equal(200, n)     -- with a sink: how many outputs it took
    assert.equal(200, seen)
    assert.equal(3 * 200 * 201 / 2, total)
  end)

  it("a channel source is read until closed (fed by a job), and is not closed by the pipeline", function()
    local input = weft.chan(4)
    local feeder = new_pool { workers = 1 }
    local fctx = bounded()
    local f = assert(feeder:submit(fctx, function(ctx, ch)
      for i = 1, 300 do assert(ch:send(ctx, i)) end
      ch:close()
      return true
    end, input))
    local r, err = timed(input, { { function(_, v) return -v end, workers = 3 } })
    assert.is_nil(err)
    assert.equal(300, #r)
    assert.equal(-300 * 301 / 2, sum(r))
    assert.is_true((f:wait(fctx)))

    -- the pipeline only reads its source: an open channel stays open
    local open = weft.chan(3)
    for i = 1, 3 do assert(open:try_send(i)) end
    local r2, err2 = timed(open, { function(_, v) return v end }, nil, 0.3)
    assert.is_nil(r2)
    assert.equal(DEADLINE, err2)
    assert.is_false(open:closed())
  end)

  it("with no stages, returns the source; an empty source gives an empty result", function()
    assert.same({ 1, 2, 3 }, (timed({ 1, 2, 3 }, {})))
    assert.same({ "a", "b" }, (timed({ "a", "b" }, {}, { ordered = true })))
    assert.same({}, (timed({}, { function(_, v) return v end })))
    local r, err = timed(function() end, { function(_, v) return v end }, { ordered = true })
    assert.is_nil(err)
    assert.same({}, r)
    local ch = weft.chan(2)
    ch:try_send("x")
    ch:close()
    assert.same({ "x" }, (timed(ch, {})))
  end)

  it("values keep their types across stages (false passes, nil drops)", function()
    local r, err = timed({ 1, 2, 3, 4 }, {
      function(_, v) if v == 2 then return false end return v end,
      function(_, v) if v == 3 then return nil end return v end,
      function(_, v) if v == 4 then return { 4.0, "four" } end return v end,
    }, { ordered = true })
    assert.is_nil(err)
    assert.same({ 1, false, { 4.0, "four" } }, r)
    assert.equal("float", math.type(r[3][1]))
  end)
end)

-------------------------------------------------------------------------------
describe("weft.pipeline ordered", function()
  it("keeps source order through parallel stages of uneven job durations", function()
    local finished = weft.chan(1000)  -- the order in which stage 1 finished items
    local r, err = timed(range(120), {
      { function(ctx, v)
          -- item 1 is the slowest by far: it finishes after items behind it
          weft.sleep(ctx, v == 1 and 0.1 or (v * 7 % 5) * 0.001)
          finished:try_send(v)
          return v * 10
        end, workers = 4 },
      { function(ctx, v)
          weft.sleep(ctx, (v * 3 % 4) * 0.001)
          if v % 70 == 0 then return nil end   -- drop 70 (a hole the reorder must skip)
          return v + 1
        end, workers = 3 },
    }, { ordered = true })
    assert.is_nil(err)
    local expect = {}
    for v = 1, 120 do
      if (v * 10) % 70 ~= 0 then expect[#expect + 1] = v * 10 + 1 end
    end
    assert.same(expect, r)
    -- and stage 1 did finish out of order
    local order = {}
    for v in function() return (finished:try_recv()) end do order[#order + 1] = v end
    assert.equal(120, #order)
    assert.are_not.same(range(120), order)
  end)

  it("a sink receives the outputs in source order; many drops never stall it", function()
    local got = {}
    local n, err = timed(range(300), {
      { function(ctx, v)
          weft.sleep(ctx, (v % 4) * 0.001)
          if v % 10 ~= 0 then return nil end  -- drops 9 of 10
          return v
        end, workers = 4 },
    }, { ordered = true, buffer = 2, sink = function(v) got[#got + 1] = v end })
    assert.is_nil(err)
    assert.equal(30, n)
    local expect = {}
    for v = 10, 300, 10 do expect[#expect + 1] = v end
    assert.same(expect, got)
  end)

  it("an ordered channel source keeps the channel's order", function()
    local input = weft.chan(50)
    for i = 1, 50 do assert(input:try_send(i)) end
    input:close()
    local r, err = timed(input, {
      { function(ctx, v) weft.sleep(ctx, (v % 3) * 0.002) return v end, workers = 4 },
    }, { ordered = true })
    assert.is_nil(err)
    assert.same(range(50), r)
  end)

  it("completes with unbuffered channels and a window of one item", function()
    local r, err = timed(range(30), {
      { function(ctx, v) weft.sleep(ctx, (v % 3) * 0.001) return v end, workers = 3 },
      { function(_, v) if v % 2 == 0 then return nil end return v end, workers = 2 },
    }, { ordered = true, buffer = 0, window = 1 })
    assert.is_nil(err)
    local expect = {}
    for v = 1, 30, 2 do expect[#expect + 1] = v end
    assert.same(expect, r)
  end)

  it("the window bounds how far the source gets ahead of a slow item", function()
    local emitted = weft.chan(1000)
    local at_first   -- items emitted when item 1 reached the sink
    local n, err = timed(function(_, emit)
      for i = 1, 40 do
        if not emit(i) then return end
        emitted:try_send(i)
      end
    end, {
      { function(ctx, v)
          if v == 1 then weft.sleep(ctx, 0.2) end
          return v
        end, workers = 4 },
    }, { ordered = true, window = 4, sink = function(v)
      if v == 1 then at_first = emitted:len() end
    end })
    assert.is_nil(err)
    assert.equal(40, n)
    assert.is_true(at_first <= 4, "emitted " .. tostring(at_first) .. " with a window of 4")
  end)
end)

-------------------------------------------------------------------------------
describe("weft.pipeline errors", function()
  it("a stage's nil, err cancels every stage at once and is the result", function()
    local r, err, took = timed(range(100), {
      { function(_, v)
          if v == 5 then return nil, "bad item 5" end
          return v
        end, workers = 2 },
      { stuck, workers = 3 },
    }, nil, 120)
    assert.is_nil(r)
    assert.equal("bad item 5", err)
    assert.is_true(took < 20, "took " .. took .. "s")
  end)

  it("a stage's error() comes back with its traceback, not 'context canceled'", function()
    local r, err, took = timed(range(100), {
      { function(_, v)
          if v == 7 then error("stage one broke on 7") end
          return v
        end, workers = 4 },
      { stuck, workers = 3 },
      function(_, v) return v end,
    }, nil, 120)
    assert.is_nil(r)
    assert.is_string(err)
    assert.matches("stage one broke on 7", first_line(err), 1, true)
    assert.matches("pipeline_spec.lua:%d+: stage one broke on 7", first_line(err))
    assert.matches("stack traceback:", err, 1, true)
    -- the traceback is the stage's, without the pipeline's own frames
    assert.matches("pipeline_spec.lua:%d+: in ", err)
    assert.is_nil(err:find("weft/pipeline.lua", 1, true))
    assert.is_true(took < 20, "took " .. took .. "s")
  end)

  it("a panic (a runtime error) and a raised non-string error", function()
    local r, err = timed(range(10), {
      function(_, v)
        local t = nil
        if v == 3 then return t.field end
        return v
      end,
    })
    assert.is_nil(r)
    assert.matches("attempt to index a nil value", first_line(err), 1, true)
    assert.matches("stack traceback:", err, 1, true)

    -- an error value other than a string comes back as it is (a copy) ...
    r, err = timed(range(10), { function() error({ code = 42 }) end })
    assert.is_nil(r)
    assert.same({ code = 42 }, err)
    -- ... unless it cannot leave the worker: then its message, as for a panic
    r, err = timed(range(10), { function() error(coroutine.create(print)) end })
    assert.is_nil(r)
    assert.equal("(error object is a thread value)", err)
  end)

  it("a stage spinning in Lua code is interrupted when the run fails", function()
    -- the sink runs in this thread, so it fails whichever worker spins
    local r, err, took = timed(range(20), {
      function(_, v)
        if v > 1 then spin() end  -- never yields
        return v
      end,
    }, { sink = function(v) error("sink refused " .. v, 0) end }, 120)
    assert.is_nil(r)
    assert.equal("sink refused 1", first_line(err))
    assert.is_true(took < 20, "took " .. took .. "s")
  end)

  it("the source's error: raised, or nil, err returned", function()
    local r, err, took = timed(function(_, emit)
      emit(1)
      emit(2)
      error("source ran dry")
    end, { { stuck, workers = 2 } }, nil, 120)
    assert.is_nil(r)
    assert.matches("source ran dry", first_line(err), 1, true)
    assert.matches("stack traceback:", err, 1, true)
    assert.is_true(took < 20)

    r, err = timed(function(_, emit)
      emit("a")
      return nil, "cannot read input"
    end, { { stuck, workers = 2 } }, { ordered = true }, 120)
    assert.is_nil(r)
    assert.equal("cannot read input", err)

    r, err = timed(function(_, emit) emit(nil) end, { function(_, v) return v end })
    assert.is_nil(r)
    assert.matches("cannot emit nil", first_line(err), 1, true)
  end)

  it("the sink's error, raised or returned", function()
    local failed, calls_after = false, 0
    local r, err, took = timed(range(1000), { { function(_, v) return v end, workers = 2 } }, {
      sink = function(v)
        if failed then calls_after = calls_after + 1 end
        if v == 3 then
          failed = true
          error("sink full")
        end
      end,
    })
    assert.is_nil(r)
    assert.matches("sink full", first_line(err), 1, true)
    assert.matches("stack traceback:", err, 1, true)
    assert.is_true(failed)
    assert.equal(0, calls_after)  -- the sink is not called again
    assert.is_true(took < 20)

    r, err = timed(range(10), {}, {
      ordered = true,
      sink = function(v) if v == 4 then return nil, "disk full" end end,
    })
    assert.is_nil(r)
    assert.equal("disk full", err)
  end)

  it("a value that cannot be copied to the next stage is the error", function()
    local r, err = timed(range(5), { function() return io.stdout end })
    assert.is_nil(r)
    assert.matches("cannot copy userdata", first_line(err), 1, true)
  end)

  it("a stage function that cannot be loaded in a worker fails the run at once", function()
    -- a module of this state only: a worker cannot require it
    package.loaded["pipeline_spec_local_module"] = { scale = 2 }
    local mod = package.loaded["pipeline_spec_local_module"]
    local r, err, took = timed(range(10), {
      { stuck, workers = 2 },
      function(_, v) return v * mod.scale end,
    }, nil, 120)
    package.loaded["pipeline_spec_local_module"] = nil
    assert.is_nil(r)
    assert.matches("cannot copy module", first_line(err), 1, true)
    assert.is_true(took < 20, "took " .. took .. "s")
  end)

  it("an error in an ordered run is not held up by the reorder window", function()
    local r, err, took = timed(range(100), {
      { function(ctx, v)
          if v == 1 then weft.sleep(ctx, 60) end  -- holds every later item back
          if v == 4 then error("item 4 is bad", 0) end
          return v
        end, workers = 4 },
    }, { ordered = true, window = 4 }, 120)
    assert.is_nil(r)
    assert.equal("item 4 is bad", first_line(err))
    assert.is_true(took < 20, "took " .. took .. "s")
  end)

  it("the first error wins when many fail", function()
    local r, err = timed(range(200), {
      { function(_, v) error("fail " .. v, 0) end, workers = 8 },
    })
    assert.is_nil(r)
    assert.matches("^fail %d+$", first_line(err))
  end)

  it("nothing of the run is still running once it has returned", function()
    local ticks = weft.chan(100000)
    local r, err = timed(range(50), {
      { function(ctx, v)
          if v == 1 then
            weft.sleep(ctx, 0.05)
            error("stop", 0)
          end
          while true do  -- ignores the cancel: only the pipeline can stop it
            ticks:try_send(true)
            weft.sleep(ctx, 0.001)
          end
        end, workers = 3 },
    })
    assert.is_nil(r)
    assert.equal("stop", first_line(err))
    local n = ticks:len()
    weft.sleep(bounded(), 0.05)
    assert.equal(n, ticks:len())
  end)
end)

-------------------------------------------------------------------------------
describe("weft.pipeline cancellation", function()
  it("canceling the parent stops the run with ctx:err(), not the cause or a stage's error", function()
    local parent, cancel = weft.with_timeout(root, 120)
    local t0 = weft.now()
    local r, err = pipeline.run(parent, range(100), {
      { function(_, v)
          if v == 10 then cancel("operator said stop") end
          return v
        end },
      { stuck, workers = 2 },
    })
    assert.is_nil(r)
    assert.equal(CANCELED, err)
    assert.is_true(weft.now() - t0 < 20)
  end)

  it("a parent's deadline stops it with weft.DEADLINE_EXCEEDED", function()
    local r, err, took = timed(range(100), { { stuck, workers = 2 } }, nil, 0.2)
    assert.is_nil(r)
    assert.equal(DEADLINE, err)
    assert.is_true(took < 20)
  end)

  it("an ended parent returns at once, running nothing", function()
    local done_ctx, cancel = weft.with_cancel(root)
    cancel("already over")
    local ran = weft.chan(10)
    local t0 = weft.now()
    local r, err = pipeline.run(done_ctx, range(10), {
      function(_, v) ran:try_send(v) return v end,
    })
    assert.is_nil(r)
    assert.equal(CANCELED, err)
    assert.equal(0, ran:len())
    assert.is_true(weft.now() - t0 < 20)
  end)

  it("emit returns true while the run lives; a source stopped by the end is not an error", function()
    local report = weft.chan(100)
    local r, err = timed(function(_, emit)
      for i = 1, 5 do report:try_send(tostring(emit(i))) end
      -- then emits until the run ends; hard cancel stops it in emit or after
      local i = 5
      while true do
        i = i + 1
        local ok, eerr = emit(i)
        if not ok then return nil, eerr end
      end
    end, { {
      function(ctx, v)
        if v > 5 then weft.sleep(ctx, 60) end
        return v
      end, workers = 2 } }, { buffer = 1 }, 0.3)
    assert.is_nil(r)
    assert.equal(DEADLINE, err)
    for _ = 1, 5 do assert.equal("true", (report:try_recv())) end
  end)
end)

-------------------------------------------------------------------------------
describe("weft.pipeline backpressure", function()
  it("a slow last stage bounds how far the source gets ahead", function()
    local B, W = 2, 2
    local emitted = weft.chan(1000)
    local consumed, max_ahead = 0, 0
    local n, err = timed(function(_, emit)
      for i = 1, 60 do
        if not emit(i) then return end
        emitted:try_send(true)
      end
    end, {
      { function(_, v) return v end, workers = W },
      function(ctx, v)  -- slow, one worker
        weft.sleep(ctx, 0.005)
        return v
      end,
    }, { buffer = B, sink = function()
      consumed = consumed + 1
      max_ahead = math.max(max_ahead, emitted:len() - consumed)
    end })
    assert.is_nil(err)
    assert.equal(60, n)
    assert.equal(60, emitted:len())
    -- in flight at most: three channels of B, W + 1 stage workers
    local bound = 3 * B + W + 1
    assert.is_true(max_ahead <= bound, ("source got %d ahead (bound %d)"):format(max_ahead, bound))
    assert.is_true(max_ahead >= 2, "the source never got ahead: " .. max_ahead)
  end)
end)

-------------------------------------------------------------------------------
describe("weft.pipeline misuse", function()
  it("is weft.pipeline once wired into init.lua (the same function behind it)", function()
    if weft.pipeline == nil then
      pending("weft.pipeline is not wired into lua/weft/init.lua yet")
      return
    end
    assert.same({ 2, 4 }, (weft.pipeline(bounded(), { 1, 2 }, { function(_, v) return v * 2 end },
      { ordered = true })))
    local ok, err = pcall(function() weft.pipeline(bounded(), {}, { 1 }) end)
    assert.is_false(ok)
    assert.matches("pipeline_spec.lua:%d+: weft.pipeline: stage 1 must be", err)
  end)

  local function raises(pattern, ...)
    local args = table.pack(...)
    local ok, err = pcall(function()
      pipeline.run(table.unpack(args, 1, args.n))
    end)
    assert.is_false(ok)
    assert.matches(pattern, err, 1, true)
    -- the error names the caller's line
    assert.matches("pipeline_spec.lua:%d+:", err)
  end

  it("raises with a clear message for a bad context, source, stage or option", function()
    local ctx = bounded()
    local id = function(_, v) return v end
    raises("bad argument #1 to 'pipeline' (weft.context expected, got nil)", nil, {}, {})
    raises("source must be an array, a weft channel or a function (got number)", ctx, 5, {})
    raises("source must be an array, a weft channel or a function (got userdata)", ctx, ctx, {})
    raises("stages must be an array (got nil)", ctx, {})
    raises("stages must be an array (found key x)", ctx, {}, { x = id })
    raises("stage 2 must be a function or a table { fn, workers = n, buffer = cap } (got string)",
      ctx, {}, { id, "upper" })
    raises("stage 1: the function (stage[1]) must be a function (got nil)", ctx, {}, { { workers = 2 } })
    raises("stage 1: unknown field worker", ctx, {}, { { id, worker = 2 } })
    raises("stage 1: give the function as [1] or fn, not both", ctx, {}, { { id, fn = id } })
    raises("stage 1: workers must be an integer >= 1 (got 0)", ctx, {}, { { id, workers = 0 } })
    raises("stage 1: buffer must be an integer >= 0 (got -1)", ctx, {}, { { id, buffer = -1 } })
    raises("stage 1: workers must be an integer >= 1 (got 1.5)", ctx, {}, { { id, workers = 1.5 } })
    raises("opts must be a table (got string)", ctx, {}, {}, "ordered")
    raises("unknown option order", ctx, {}, {}, { order = true })
    raises("opts.workers must be an integer >= 1 (got 0)", ctx, {}, {}, { workers = 0 })
    raises("opts.buffer must be an integer >= 0 (got x)", ctx, {}, {}, { buffer = "x" })
    raises("opts.ordered must be a boolean (got string)", ctx, {}, {}, { ordered = "yes" })
    raises("opts.sink must be a function (got table)", ctx, {}, {}, { sink = {} })
    raises("opts.window applies to an ordered pipeline only", ctx, {}, {}, { window = 4 })
    raises("opts.window must be an integer >= 1 (got 0)", ctx, {}, {}, { ordered = true, window = 0 })
  end)

  it("raises when a stage function, the source function or a source item cannot be copied", function()
    local ctx = bounded()
    local out = io.stdout
    raises("stage 2's function cannot be copied to a worker: ", ctx, {}, {
      function(_, v) return v end,
      function(_, v) out:write(v) end,
    })
    raises("the source function cannot be copied to a worker: ", ctx, function() return out end, {})
    raises("weft.pipeline: source[2]: cannot copy userdata (FILE*)", ctx, { 1, io.stderr }, {
      { function(_, v) return v end, workers = 2 },
    })
  end)
end)
