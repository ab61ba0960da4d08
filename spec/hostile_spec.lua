-- Hostile jobs (issue 8, item 6): jobs that try to end the process, stop
-- or retune the collector, raise from finalizers and close handlers,
-- recurse without end, yield at their top level, exhaust the memory limit,
-- install hooks, load bytecode, raise odd error values, swallow the cancel
-- error, pollute the worker's globals and ask for huge strings.  Each one
-- gets a clear, specific outcome; neither the worker nor the process dies;
-- and the same pool (one worker, so the same worker state: see
-- `survives`) then runs a normal job.
--
-- The messages asserted are the engine's (engine/pool.c: no_exit,
-- no_sethook, text_only, the top-level yield, the memory limit's message)
-- and Lua 5.4's own.
--
-- Every wait has a bound (the shared harness, spec/harness.lua: bounded,
-- await, eventually); pools are closed with a timeout, so a job the engine
-- cannot stop fails the test instead of hanging it.
local weft = require "weft"

-- luacheck: globals HOSTILE_TOKEN CLOSED_BY_YIELD TOSTRING_CALLS UNDEFINED_GLOBAL

local harness = dofile("spec/harness.lua").configure { root_timeout = 120, close_timeout = 10 }
local bounded, await, eventually, new_pool = harness.bounded, harness.await, harness.eventually, harness.new_pool
local spin = harness.spin

local CANCELED = weft.CANCELED
local MB = 1024 * 1024

local EXIT_MSG = "os.exit is not allowed in a weft worker (it would end the whole process); raise an error"
local SETHOOK_MSG = "debug.sethook is not allowed in a weft worker "
  .. "(weft's hard cancel and cooperative mode use the hook)"
local YIELD_MSG = "attempt to yield from a weft job (coroutine.yield outside a coroutine of the job)"
local BINARY_MSG = "attempt to load a binary chunk (mode is 't')"
local LIMIT_MSG = "not enough memory (limit 8 MB)"

local root
before_each(function() root = harness.start() end)
after_each(harness.finish)

local function quiet() end

-- A pool of one worker: every job of the test runs in the same worker
-- state.  Its init leaves a random token in the state, so a later job can
-- tell that the state it runs in is the very one the hostile job ran in.
local function one_worker(opts)
  opts = opts or {}
  return new_pool { workers = 1, on_panic = quiet, memory_limit = opts.memory_limit,
                    init = function() HOSTILE_TOKEN = math.random(1, 1 << 50) end }
end

local function token_of(p)
  local ok, token = await(p:submit(bounded(), function() return rawget(_ENV, "HOSTILE_TOKEN") end))
  assert.is_true(ok, token)
  assert.is_number(token)
  return token
end

-- The worker that ran the hostile job is alive, runs a normal job, and is
-- the same state (token) as before the hostile job.
local function survives(p, token)
  local ok, v, t = await(p:submit(bounded(), function() return 42, rawget(_ENV, "HOSTILE_TOKEN") end))
  assert.is_true(ok, v)
  assert.equal(42, v)
  assert.equal(token, t, "the worker state was replaced")
end

-- Runs fn(ctx, ...) in p; asserts it failed and that its error starts
-- with `text` (plain); returns the error.
local function fails_with(p, text, fn, ...)
  local ok, err = await(p:submit(bounded(), fn, ...))
  assert.is_false(ok, "the job did not fail")
  assert.is_string(err)
  assert.equal(text, err:sub(1, #text), "unexpected error: " .. err)
  return err
end

-- Like fails_with, but `text` may come after a position ("file:line: ").
local function fails_with_at(p, text, fn, ...)
  local ok, err = await(p:submit(bounded(), fn, ...))
  assert.is_false(ok, "the job did not fail")
  assert.is_string(err)
  local line = err:match("^[^\n]*")
  assert.is_truthy(line == text or line:sub(-#text - 2) == ": " .. text, "unexpected error: " .. err)
  return err
end

local function first_line(s) return (s:match("^[^\n]*")) end

-- The error's traceback part (after the message).
local function traceback_of(err) return err:match("\nstack traceback:\n.*$") or "" end

-- Runs a Lua chunk in a fresh lua5.4 process (same LUA_PATH and LUA_CPATH);
-- returns its stdout and stderr.
local function run_child(code)
  local script = os.tmpname()
  local fh = assert(io.open(script, "w"))
  fh:write(code)
  fh:close()
  local out = assert(io.popen("timeout 60 lua5.4 " .. script .. " 2>&1"))
  local text = out:read("a")
  out:close()
  os.remove(script)
  return text
end

-- A file made by os.tmpname holding `bytes`; its path.
local function temp_file(bytes)
  local file = os.tmpname()
  local fh = assert(io.open(file, "wb"))
  fh:write(bytes)
  fh:close()
  return file
end

-------------------------------------------------------------------------------
describe("os.exit in a job", function()
  it("os.exit(1), os.exit(true) and os.exit(0, true) raise 'os.exit is not allowed in a weft worker'; "
    .. "the process and the worker go on", function()
    local p = one_worker()
    local token = token_of(p)
    fails_with_at(p, EXIT_MSG, function() os.exit(1) end)
    survives(p, token)
    fails_with_at(p, EXIT_MSG, function() os.exit(true) end)
    survives(p, token)
    fails_with_at(p, EXIT_MSG, function() os.exit(0, true) end)
    survives(p, token)
    p:wait(5)
    assert.equal(3, p:stats().panicked)
  end)

  it("pcall(os.exit, 1) returns false and the same message; the job goes on", function()
    local p = one_worker()
    local ok, caught, err, after = await(p:submit(bounded(), function()
      local c, e = pcall(os.exit, 1)
      return c, e, "after"
    end))
    assert.is_true(ok)
    assert.is_false(caught)
    assert.equal(EXIT_MSG, err)
    assert.equal("after", after)
  end)

  it("the main state's os.exit, debug.sethook or load captured as an upvalue is refused as the job is "
    .. "copied in (not the same function there): the job fails before it runs", function()
    local p = one_worker()
    local token = token_of(p)
    local exit, sethook, main_load = os.exit, debug.sethook, load
    local ran = weft.chan(3)
    fails_with(p, "cannot copy C function os.exit: it is not the same function in the receiving state",
      function(_, c) c:try_send("exit ran") exit(1) end, ran)
    fails_with(p, "cannot copy C function debug.sethook: it is not the same function in the receiving state",
      function(_, c) c:try_send("sethook ran") sethook(print, "l") end, ran)
    fails_with(p, "cannot copy C function _G.load: it is not the same function in the receiving state",
      function(_, c) c:try_send("load ran") return main_load("return 1") end, ran)
    assert.equal(0, ran:len())
    survives(p, token)
    p:wait(5)
    assert.equal(3, p:stats().failed)
  end)
end)

-------------------------------------------------------------------------------
describe("the collector", function()
  it("collectgarbage('stop') in a job holds for that job only: weft restarts the collector before the "
    .. "worker's next job", function()
    local p = one_worker()
    local token = token_of(p)
    assert.same({ true, 0, false }, { await(p:submit(bounded(), function()
      return collectgarbage("stop"), collectgarbage("isrunning")
    end)) })
    survives(p, token)
    assert.same({ true, true }, { await(p:submit(bounded(), function() return collectgarbage("isrunning") end)) })
  end)

  it("with the collector stopped, a job making 64 MB of garbage under memory_limit = 8 MB completes "
    .. "(Lua's emergency collection at the limit still runs) and the heap stays under the limit", function()
    local p = one_worker { memory_limit = 8 * MB }
    local token = token_of(p)
    local ok, rounds, peak, running = await(p:submit(bounded(), function()
      collectgarbage("stop")
      local most, n = 0, 0
      for _ = 1, 64 do -- 64 rounds of ~1 MB that become garbage at once
        local t = {} -- luacheck: ignore 241 (garbage, never read)
        for j = 1, 1000 do t[j] = ("x"):rep(1024) end
        n = n + 1
        most = math.max(most, collectgarbage("count"))
      end
      return n, most, collectgarbage("isrunning")
    end))
    assert.is_true(ok, rounds)
    assert.equal(64, rounds)
    assert.is_false(running) -- still stopped: the limit, not the collector, bounded it
    assert.is_true(peak <= 8 * 1024, "peak " .. peak .. " KB")
    local ok2, kb = await(p:submit(bounded(), function() return collectgarbage("count") end))
    assert.is_true(ok2)
    assert.is_true(kb < 8 * 1024, kb .. " KB")
    survives(p, token)
  end)

  -- Without a memory limit nothing else would bound it: weft restarts the
  -- collector after a job stopped it, so later jobs are not left without one.
  it("collectgarbage('stop') does not leave the worker's later jobs without a collector "
    .. "(no growth without bound)", function()
    local p = one_worker()
    local token = token_of(p)
    local function churn() -- 32 rounds of ~1 MB that become garbage at once
      local most = 0
      for _ = 1, 32 do
        local t = {} -- luacheck: ignore 241 (garbage, never read)
        for j = 1, 1000 do t[j] = ("x"):rep(1024) end
        most = math.max(most, collectgarbage("count"))
      end
      return most
    end
    local ok, normal_peak = await(p:submit(bounded(), churn))
    assert.is_true(ok, normal_peak)
    assert.is_true((await(p:submit(bounded(), function() collectgarbage("stop") end))))
    local ok2, peak, running = await(p:submit(bounded(), function(_, f) return f(), collectgarbage("isrunning") end,
      churn))
    assert.is_true(ok2, peak)
    assert.is_true(running)
    survives(p, token)
    assert.is_true(peak < 16 * 1024, ("peak %.0f KB (%.0f KB before the stop)"):format(peak, normal_peak))
  end)

  it("collectgarbage('generational') and ('incremental') switch the worker's mode for its later jobs; "
    .. "jobs run in either mode, up to the memory limit", function()
    local p = one_worker { memory_limit = 8 * MB }
    local token = token_of(p)
    assert.same({ true, "incremental" }, { await(p:submit(bounded(), function()
      return collectgarbage("generational")
    end)) })
    -- a later job finds the worker in generational mode, and works there
    local ok, sum = await(p:submit(bounded(), function()
      local s = 0
      for i = 1, 200000 do local t = { i } s = s + t[1] end
      return s
    end))
    assert.is_true(ok, sum)
    assert.equal(200000 * 200001 // 2, sum)
    fails_with(p, LIMIT_MSG, function()
      local t = {} -- luacheck: ignore 241 (only grows)
      while true do t[#t + 1] = {} end
    end)
    survives(p, token)
    assert.same({ true, "generational" }, { await(p:submit(bounded(), function()
      return collectgarbage("incremental")
    end)) })
    assert.same({ true, "incremental" }, { await(p:submit(bounded(), function()
      return collectgarbage("incremental")
    end)) })
    survives(p, token)
  end)
end)

-------------------------------------------------------------------------------
describe("errors in __gc", function()
  it("an object the job drops raises in __gc: the job's result is unaffected, whether it is finalized "
    .. "during the job or after it; the worker goes on (warnings off in the worker)", function()
    local p = one_worker()
    local token = token_of(p)
    -- finalized inside the job (two full collections)
    assert.same({ true, "result" }, { await(p:submit(bounded(), function()
      warn("@off") -- the worker's warnings: off for this test's worker (the log is checked below)
      setmetatable({}, { __gc = function() error("finalizer broke") end })
      collectgarbage()
      collectgarbage()
      return "result"
    end)) })
    -- dropped without a collection: finalized after the job, or in the next one
    assert.same({ true, "second result" }, { await(p:submit(bounded(), function()
      setmetatable({}, { __gc = function() error("late finalizer broke") end })
      return "second result"
    end)) })
    assert.same({ true, "third result" }, { await(p:submit(bounded(), function()
      collectgarbage()
      collectgarbage()
      return "third result"
    end)) })
    survives(p, token)
    p:wait(5)
    local s = p:stats()
    assert.equal(0, s.panicked)
    assert.equal(0, s.failed)
  end)

  it("the __gc error goes to the log as one warning line prefixed with the pool's name "
    .. "(a child process's stderr)", function()
    if harness.SANITIZED then
      pending("child processes do not run under the sanitizer runtimes")
      return
    end
    local out = run_child([[
      local weft = require "weft"
      local bg = weft.background()
      local p <close> = assert(weft.pool { workers = 1, name = "hostile-gc" })
      local function wait(f) return f:wait(weft.with_timeout(bg, 20)) end
      print("in job", wait(p:submit(bg, function()
        setmetatable({}, { __gc = function() error("finalizer broke") end })
        collectgarbage()
        collectgarbage()
        return "result"
      end)))
      print("dropped", wait(p:submit(bg, function()
        setmetatable({}, { __gc = function() error("late finalizer broke") end })
        return "second result"
      end)))
      print("next", wait(p:submit(bg, function() collectgarbage() collectgarbage() return 42 end)))
      print("panicked", p:stats().panicked)
    ]])
    assert.matches("weft pool 'hostile%-gc': warning: error in __gc %([^\n]*: finalizer broke%)\n", out)
    assert.matches("weft pool 'hostile%-gc': warning: error in __gc %([^\n]*: late finalizer broke%)\n", out)
    assert.matches("in job\ttrue\tresult\n", out, 1, true)
    assert.matches("dropped\ttrue\tsecond result\n", out, 1, true)
    assert.matches("next\ttrue\t42\n", out, 1, true)
    assert.matches("panicked\t0\n", out, 1, true)
    assert.is_nil(out:find("job panicked", 1, true))
  end)
end)

-------------------------------------------------------------------------------
describe("infinite recursion", function()
  it("a Lua function calling itself fails with 'stack overflow'; the worker survives", function()
    local p = one_worker()
    local token = token_of(p)
    local err = fails_with_at(p, "stack overflow", function()
      local function f(n) return f(n + 1) + 1 end
      return f(1)
    end)
    assert.matches("^[^\n]*hostile_spec%.lua:%d+: stack overflow\nstack traceback:\n", err)
    assert.matches("(skipping %d+ levels)", err) -- the traceback is cut, not 200,000 lines
    survives(p, token)
  end)

  it("recursion through metamethods: __index and __tostring functions give 'C stack overflow', an __index "
    .. "chain that loops gives its own error; the worker survives", function()
    local p = one_worker()
    local token = token_of(p)
    fails_with_at(p, "C stack overflow", function()
      local t = setmetatable({}, { __index = function(self, k) return self[k] end })
      return t.anything
    end)
    survives(p, token)
    fails_with_at(p, "C stack overflow", function()
      local t = setmetatable({}, { __tostring = function(self) return tostring(self) end })
      return tostring(t)
    end)
    survives(p, token)
    fails_with_at(p, "'__index' chain too long; possible loop", function()
      local t = {}
      t.__index = t
      return setmetatable(t, t).anything
    end)
    survives(p, token)
  end)

  it("under memory_limit = 8 MB, endless Lua recursion ends as 'not enough memory (limit 8 MB)' first "
    .. "(a full Lua stack is ~16 MB); the worker survives", function()
    local p = one_worker { memory_limit = 8 * MB }
    local token = token_of(p)
    fails_with(p, LIMIT_MSG, function()
      local function f(n) return f(n + 1) + 1 end
      return f(1)
    end)
    survives(p, token)
  end)
end)

-------------------------------------------------------------------------------
describe("coroutine.yield at the job's top level", function()
  it("fails the job with 'attempt to yield from a weft job (...)', also through pcall; "
    .. "the worker survives", function()
    local p = one_worker()
    local token = token_of(p)
    local err = fails_with(p, YIELD_MSG, function() coroutine.yield(1, 2) end)
    assert.matches("^" .. YIELD_MSG:gsub("%p", "%%%0") .. "\nstack traceback:\n\t%[C%]: in function 'coroutine.yield'",
      err)
    survives(p, token)
    -- pcall does not catch it: a yield is no error inside the job
    err = fails_with(p, YIELD_MSG, function() return pcall(coroutine.yield) end)
    assert.matches("in function 'pcall'", traceback_of(err), 1, true)
    survives(p, token)
    p:wait(5)
    assert.equal(2, p:stats().panicked)
  end)

  it("runs the job's pending __close handlers; yields inside the job's own coroutines still work", function()
    local p = one_worker()
    local token = token_of(p)
    fails_with(p, YIELD_MSG, function()
      local _ <close> = setmetatable({}, { __close = function() CLOSED_BY_YIELD = true end })
      coroutine.yield()
    end)
    assert.same({ true, true }, { await(p:submit(bounded(), function() return CLOSED_BY_YIELD end)) })
    assert.same({ true, 6 }, { await(p:submit(bounded(), function()
      local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)
      return gen() + gen() + gen()
    end)) })
    survives(p, token)
  end)
end)

-------------------------------------------------------------------------------
describe("memory_limit = 8 MB", function()
  it("('x'):rep(64 MB) fails with 'not enough memory (limit 8 MB)'; so does ('x'):rep(2^31 - 1); "
    .. "the worker goes on", function()
    local p = one_worker { memory_limit = 8 * MB }
    local token = token_of(p)
    local err = fails_with(p, LIMIT_MSG, function() return #("x"):rep(64 * 1024 * 1024) end)
    assert.matches("in function 'string.rep'", traceback_of(err), 1, true)
    survives(p, token)
    fails_with(p, LIMIT_MSG, function() return #("x"):rep((1 << 31) - 1) end)
    survives(p, token)
    p:wait(5)
    assert.equal(2, p:stats().panicked)
  end)

  it("a table growing without bound, and a string doubling, fail with the limit's message; "
    .. "the worker collects back down and goes on", function()
    local p = one_worker { memory_limit = 8 * MB }
    local token = token_of(p)
    fails_with(p, LIMIT_MSG, function()
      local t = {} -- luacheck: ignore 241 (only grows)
      while true do t[#t + 1] = { #t } end
    end)
    survives(p, token)
    fails_with(p, LIMIT_MSG, function()
      local s = "x"
      while true do s = s .. s end
    end)
    local ok, kb = await(p:submit(bounded(), function() return collectgarbage("count") end))
    assert.is_true(ok)
    assert.is_true(kb < 2 * 1024, "the worker's heap is still " .. kb .. " KB")
    survives(p, token)
    -- and it can use most of its limit again: ~5 MB held at once
    assert.same({ true, 5000 }, { await(p:submit(bounded(), function()
      local t = {}
      for i = 1, 5000 do t[i] = ("y"):rep(1024) end
      return #t
    end)) })
  end)
end)

-------------------------------------------------------------------------------
describe("debug.sethook in a job", function()
  it("is refused with 'debug.sethook is not allowed in a weft worker (...)', clearing the hook too; "
    .. "hard cancel still stops that worker's next spinning job", function()
    local p = one_worker()
    local token = token_of(p)
    fails_with_at(p, SETHOOK_MSG, function() debug.sethook(function() end, "", 1) end)
    fails_with_at(p, SETHOOK_MSG, function() debug.sethook() end)
    fails_with_at(p, SETHOOK_MSG, function()
      local co = coroutine.create(function() end)
      debug.sethook(co, function() end, "l")
    end)
    survives(p, token)
    local ctx, cancel = weft.with_cancel(root)
    local f = p:submit(ctx, spin)
    assert.is_true(eventually(function() return p:stats().running == 1 end))
    cancel()
    assert.same({ false, CANCELED }, { await(f, 10) })
    survives(p, token)
  end)
end)

-------------------------------------------------------------------------------
describe("binary chunks", function()
  it("load(string.dump(f)) gives nil and 'attempt to load a binary chunk (mode is 't')', with mode 'b' "
    .. "and with a reader function too; text chunks still load", function()
    local p = one_worker()
    local token = token_of(p)
    local r = table.pack(await(p:submit(bounded(), function()
      local code = string.dump(function() return "bytecode ran" end)
      local f1, e1 = load(code)
      local f2, e2 = load(code, "=dumped", "b")
      local parts = { code }
      local f3, e3 = load(function() return table.remove(parts) end, "=reader", "bt")
      return f1, e1, f2, e2, f3, e3, load("return 'text ok'")()
    end)))
    assert.is_true(r[1], r[2])
    assert.same({ nil, BINARY_MSG, nil, BINARY_MSG, nil, BINARY_MSG, "text ok" }, { table.unpack(r, 2, 8) })
    survives(p, token)
  end)

  it("loadfile of a file holding bytecode gives nil and the message; dofile raises it", function()
    local p = one_worker()
    local token = token_of(p)
    local file = temp_file(string.dump(function() return "bytecode ran" end))
    local r = table.pack(await(p:submit(bounded(), function(_, path)
      local f1, e1 = loadfile(path)
      local f2, e2 = loadfile(path, "b")
      local ok, e3 = pcall(dofile, path)
      return f1, e1, f2, e2, ok, e3
    end, file)))
    local err = fails_with(p, BINARY_MSG, function(_, path) return dofile(path) end, file)
    os.remove(file)
    assert.is_true(r[1], r[2])
    assert.same({ nil, BINARY_MSG, nil, BINARY_MSG, false, BINARY_MSG }, { table.unpack(r, 2, 7) })
    assert.matches("in function 'dofile'", traceback_of(err), 1, true)
    survives(p, token)
  end)

  it("require of a module file holding bytecode is refused (package.searchers load text only)",
    function()
    local p = one_worker()
    local token = token_of(p)
    local file = temp_file(string.dump(function() return "bytecode module ran" end))
    local dir, name = file:match("^(.*)/([%w_]+)$")
    assert(dir and name, "unusable temporary name " .. file)
    local ok, v = await(p:submit(bounded(), function(_, d, n)
      package.path = d .. "/?;" .. package.path
      return pcall(require, n)
    end, dir, name))
    os.remove(file)
    assert.is_true(ok)
    assert.is_false(v)
    survives(p, token)
  end)
end)

-------------------------------------------------------------------------------
describe("odd error values", function()
  it("a table error, an error whose __tostring raises or returns a table, error(nil): each a clear "
    .. "message and the traceback; the worker survives", function()
    local p = one_worker()
    local token = token_of(p)
    local err = fails_with(p, "(error object is a table value)\nstack traceback:\n",
      function() error({ code = 1 }) end)
    assert.matches("in function 'error'", err, 1, true)
    survives(p, token)
    fails_with(p, "(error object is a table value; its __tostring failed)\nstack traceback:\n", function()
      error(setmetatable({}, { __tostring = function() error("tostring broke") end }))
    end)
    survives(p, token)
    fails_with(p, "(error object is a table value; its __tostring failed)\nstack traceback:\n", function()
      error(setmetatable({}, { __tostring = function() return {} end }))
    end)
    survives(p, token)
    fails_with(p, "(error object is a nil value)\nstack traceback:\n", function() error(nil) end)
    fails_with(p, "(error object is a nil value)\nstack traceback:\n", function() error() end)
    survives(p, token)
    fails_with(p, "custom message\nstack traceback:\n", function()
      error(setmetatable({}, { __tostring = function() return "custom message" end }))
    end)
    survives(p, token)
  end)

  it("an error value's __tostring runs once", function()
    local p = one_worker()
    local token = token_of(p)
    fails_with(p, "counted\n", function()
      error(setmetatable({}, { __tostring = function()
        TOSTRING_CALLS = (TOSTRING_CALLS or 0) + 1
        return "counted"
      end }))
    end)
    local ok, calls = await(p:submit(bounded(), function() return TOSTRING_CALLS end))
    assert.is_true(ok)
    survives(p, token)
    assert.equal(1, calls)
  end)
end)

-------------------------------------------------------------------------------
describe("__close in a job", function()
  it("an error in a __close handler while the job unwinds from another error replaces it "
    .. "(as with pcall); the traceback stays the first's; the worker survives", function()
    local p = one_worker()
    local token = token_of(p)
    local err = fails_with_at(p, "second", function()
      local _ <close> = setmetatable({}, { __close = function() error("second") end })
      error("first")
    end)
    assert.is_nil(first_line(err):find("first", 1, true))
    assert.matches("in function 'error'", traceback_of(err), 1, true)
    survives(p, token)
    -- two handlers raising: closed in reverse order, the last to run wins
    fails_with_at(p, "outer", function()
      local _ <close> = setmetatable({}, { __close = function() error("outer") end })
      local _ <close> = setmetatable({}, { __close = function() error("inner") end })
      error("first")
    end)
    survives(p, token)
  end)

  it("an error in a __close handler as the job returns fails the job with it", function()
    local p = one_worker()
    local token = token_of(p)
    local err = fails_with_at(p, "close failed", function()
      local _ <close> = setmetatable({}, { __close = function() error("close failed") end })
      return "never delivered"
    end)
    assert.matches("in metamethod 'close'", traceback_of(err), 1, true)
    survives(p, token)
    p:wait(5)
    assert.equal(1, p:stats().panicked)
  end)
end)

-------------------------------------------------------------------------------
describe("hard cancel against hostile loops", function()
  it("a pcall loop that swallows the cancel error (`while true do pcall(spin) end`) still ends, "
    .. "as canceled; so does a job that swallows it once and tries to return", function()
    local p = one_worker()
    local token = token_of(p)
    local ctx, cancel = weft.with_cancel(root)
    local f = p:submit(ctx, function() while true do pcall(spin) end end)
    assert.is_true(eventually(function() return p:stats().running == 1 end))
    cancel()
    assert.same({ false, CANCELED }, { await(f, 10) })
    survives(p, token)
    local ctx2, cancel2 = weft.with_cancel(root)
    local f2 = p:submit(ctx2, function()
      local caught, err = pcall(spin)
      return "escaped", caught, err
    end)
    assert.is_true(eventually(function() return p:stats().running == 1 end))
    cancel2()
    assert.same({ false, CANCELED }, { await(f2, 10) })
    survives(p, token)
    p:wait(5)
    assert.equal(2, p:stats().canceled)
  end)

  -- The loops below end by themselves after LOOP seconds, so a broken
  -- cancel costs LOOP seconds instead of a worker; they allocate (calls
  -- to malloc) so that ThreadSanitizer runs deliver the cancel signal.
  local LOOP = 1

  -- The loops' body: allocates until `seconds` have passed (jobs carry it
  -- to their worker as an upvalue).
  local function busy_for(seconds)
    local deadline = weft.now() + seconds
    while weft.now() < deadline do local _ = {} end
  end

  -- Cancels once started() holds, waits for f, checks that it ended as
  -- canceled; returns how long after the cancel it ended.
  local function cancel_and_time(f, cancel, started)
    assert.is_true(started())
    local t0 = weft.now()
    cancel()
    local ok, err = await(f, 10)
    assert.is_false(ok)
    assert.equal(CANCELED, err)
    return weft.now() - t0
  end

  it("stops a loop running inside a coroutine the job made", function()
    local p = one_worker()
    local token = token_of(p)
    local started = weft.chan(1)
    local ctx, cancel = weft.with_cancel(root)
    local f = p:submit(ctx, function(_, ch, loop)
      local inner = coroutine.wrap(function()
        ch:try_send(true)
        busy_for(loop)
        return "the inner loop ended by itself"
      end)
      return inner()
    end, started, LOOP)
    local took = cancel_and_time(f, cancel, function() return started:recv(bounded()) end)
    survives(p, token)
    assert.is_true(took < LOOP / 2)
  end)

  -- The job's own coroutine is stopped by a yield out of the hook (after
  -- which Lua turns hooks back on, as it does not after an error raised
  -- from one), so the __close handlers run as the job unwinds are still
  -- reached by the cancel.
  -- Submits job(ctx, LOOP, spin), whose __close handler loops for LOOP
  -- seconds as it unwinds, cancels it once it runs, and checks that the
  -- cancel stopped that loop too.
  local function stops_looping_close(job)
    local p = one_worker()
    local token = token_of(p)
    local ctx, cancel = weft.with_cancel(root)
    local f = p:submit(ctx, job, LOOP, spin)
    local took = cancel_and_time(f, cancel, function()
      return eventually(function() return p:stats().running == 1 end)
    end)
    survives(p, token)
    assert.is_true(took < LOOP / 2, ("ended %.2f s after the cancel"):format(took))
  end

  it("stops a __close handler that loops while a canceled job unwinds", function()
    stops_looping_close(function(_, loop, s)
      local _ <close> = setmetatable({}, { __close = function()
        busy_for(loop)
      end })
      s()
    end)
  end)

  it("stops a __close handler that loops as a pcall inside the canceled job unwinds", function()
    stops_looping_close(function(_, loop, s)
      pcall(function()
        local _ <close> = setmetatable({}, { __close = function()
          busy_for(loop)
        end })
        s()
      end)
      return "went on after the pcall"
    end)
  end)

  it("stops an error value's __tostring that loops", function()
    local p = one_worker()
    local token = token_of(p)
    local started = weft.chan(1)
    local ctx, cancel = weft.with_cancel(root)
    local f = p:submit(ctx, function(_, ch, loop)
      error(setmetatable({}, { __tostring = function()
        ch:try_send(true)
        busy_for(loop)
        return "slow message"
      end }))
    end, started, LOOP)
    local took = cancel_and_time(f, cancel, function() return started:recv(bounded()) end)
    survives(p, token)
    assert.is_true(took < LOOP / 2)
  end)
end)

-------------------------------------------------------------------------------
-- Worker globals persist between the jobs of one worker (README: a job
-- must not rely on another's), so pollution stays until the pool closes;
-- weft's own calls must keep working through a captured `weft`.
describe("polluted worker globals", function()
  it("setmetatable(_G, {__index = error}): later jobs reading an undefined global fail with that error; "
    .. "a captured weft keeps working in that worker; another pool is clean", function()
    local p = one_worker()
    local token = token_of(p)
    assert.is_true((await(p:submit(bounded(), function()
      setmetatable(_G, { __index = function(_, k) error("no globals: " .. tostring(k), 2) end })
    end))))
    fails_with_at(p, "no globals: UNDEFINED_GLOBAL", function() return UNDEFINED_GLOBAL end)
    survives(p, token)
    local ok, slept, secs, got, copied = await(p:submit(bounded(), function(ctx)
      local ch = weft.chan(1)
      ch:send(ctx, "through a channel")
      -- a duration string loads weft's LPeg grammar in this worker now
      return weft.sleep(ctx, 0.001), weft.duration("1m30s"), ch:recv(ctx), weft.copy({ 7 })[1]
    end))
    assert.is_true(ok, slept)
    assert.same({ true, 90, "through a channel", 7 }, { slept, secs, got, copied })
    local other = one_worker()
    assert.same({ true, nil }, { await(other:submit(bounded(), function() return UNDEFINED_GLOBAL end)) })
  end)

  it("_G = nil: later jobs of that worker see no _G; everything else (a captured weft too) works", function()
    local p = one_worker()
    local token = token_of(p)
    assert.is_true((await(p:submit(bounded(), function() _G = nil end)))) -- luacheck: ignore 121
    assert.same({ true, "nil", "x!" }, { await(p:submit(bounded(), function()
      return type(_G), string.format("%s!", "x")
    end)) })
    assert.same({ true, true, 2 }, { await(p:submit(bounded(), function(ctx)
      return weft.sleep(ctx, 0.001), weft.duration("2s")
    end)) })
    survives(p, token)
  end)

  -- A weakness rather than a crash: weft's Lua half (lua/weft/init.lua)
  -- and the engine's module copy (value.c, require_k) call the global
  -- `require` of the worker when they need a module that is not loaded
  -- there yet, so a job that clobbers it breaks those later in the worker.
  it("require = nil: weft's C calls keep working; its lazily loaded parts and modules not loaded in "
    .. "the worker yet then fail, with errors naming the call or the module", function()
    local p = one_worker()
    local token = token_of(p)
    assert.is_true((await(p:submit(bounded(), function() require = nil end)))) -- luacheck: ignore 121
    assert.same({ true, true, 1.5 }, { await(p:submit(bounded(), function(ctx)
      return weft.sleep(ctx, 0.001), weft.duration(1.5)
    end)) })
    local err = fails_with_at(p, "attempt to call a nil value (global 'require')", function()
      return weft.duration("2s") -- loads the duration grammar on first use
    end)
    assert.matches("weft/init%.lua:%d+: attempt to call a nil value %(global 'require'%)", err)
    local template = require "weft.template" -- loaded here, not yet in the worker: copied by name
    fails_with(p, "cannot copy module 'weft.template': attempt to call a nil value", function()
      return template.parse("echo {}") ~= nil
    end)
    survives(p, token)
  end)

  it("changing a module table (weft.now) persists for the worker's later jobs, modules travel by name; "
    .. "another pool is untouched", function()
    local p = one_worker()
    local token = token_of(p)
    assert.is_true((await(p:submit(bounded(), function() weft.now = function() return -1 end end))))
    assert.same({ true, -1 }, { await(p:submit(bounded(), function() return weft.now() end)) })
    survives(p, token)
    local other = one_worker()
    local ok, now = await(other:submit(bounded(), function() return weft.now() end))
    assert.is_true(ok)
    assert.is_true(now > 0)
  end)
end)

-------------------------------------------------------------------------------
describe("huge sizes", function()
  it("string.format with a huge width or precision, string.rep past the string size limit, table.unpack "
    .. "of 1e8 values, string.byte of 2 MB: ordinary errors; the worker survives", function()
    local p = one_worker()
    local token = token_of(p)
    fails_with_at(p, "invalid conversion specification: '%99999999d'",
      function() return string.format("%99999999d", 1) end)
    fails_with_at(p, "invalid conversion specification: '%.100f'",
      function() return string.format("%.100f", 1) end)
    survives(p, token)
    -- refused before anything is allocated (results are limited to 2^31 - 1 bytes)
    fails_with_at(p, "resulting string too large", function() return ("x"):rep(1 << 62) end)
    fails_with_at(p, "resulting string too large", function() return ("x"):rep(1e10) end)
    fails_with_at(p, "resulting string too large", function() return ("x"):rep(1 << 40, ",") end)
    fails_with_at(p, "resulting string too large", function() return ("x"):rep(1e7):rep(1e7) end)
    survives(p, token)
    fails_with_at(p, "too many results to unpack", function() return table.unpack({}, 1, 1e8) end)
    fails_with_at(p, "stack overflow (string slice too long)",
      function() return ("x"):rep(2 * 1024 * 1024):byte(1, -1) end)
    survives(p, token)
  end)
end)
