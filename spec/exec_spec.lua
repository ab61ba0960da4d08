-- weft.exec (issue 6, item 5): running programs from any state, capture,
-- stdin, env and cwd, and termination of the whole process group when the
-- context ends, with no zombie left.  Every wait is bounded: each exec
-- runs under a context with a timeout, and futures are waited on with one.
-- Timings are generous bounds, never measurements.
local weft = require "weft"

local CANCELED, DEADLINE = weft.CANCELED, weft.DEADLINE_EXCEEDED

-- The shared harness (spec/harness.lua): bounded (here a context under the
-- background context that ends by itself after d seconds, default 20),
-- await, eventually.  No root and no pools here.
local harness = dofile("spec/harness.lua").configure { bounded_under = "background" }
local bg = harness.bg
local bounded, await, eventually = harness.bounded, harness.await, harness.eventually

-- Under the sanitizer runs spec/run preloads the sanitizer runtime into
-- lua5.4 (LD_PRELOAD), and children inherit it: dash crashes with
-- ThreadSanitizer preloaded (it does outside weft too).  There, exec gives
-- each child our environment minus LD_PRELOAD, unless a test gives its own.
local clean_env
if (os.getenv("LD_PRELOAD") or "") ~= "" then
  local r = assert(weft.exec(bounded(), { "env", "-0" }, { capture = true }))
  clean_env = {}
  for k, v in r.stdout:gmatch("([^=%z]+)=([^%z]*)%z") do
    if k ~= "LD_PRELOAD" then clean_env[k] = v end
  end
end

local function exec(ctx, cmd, opts)
  if clean_env and not (opts and opts.env) then
    local o = { env = clean_env }
    for k, v in pairs(opts or {}) do o[k] = v end
    opts = o
  end
  return weft.exec(ctx, cmd, opts)
end

local function mypid()
  local f = assert(io.open("/proc/self/stat"))
  local s = f:read("l")
  f:close()
  return tonumber(s:match("^(%d+)"))
end

-- Every process: { pid, state, ppid, pgrp }, from /proc (through exec).
local function processes()
  local r = assert(exec(bounded(), { "sh", "-c", "cat /proc/[0-9]*/stat 2>/dev/null; true" },
                             { capture = true, max_output = 1 << 26 }))
  local t = {}
  for line in r.stdout:gmatch("[^\n]+") do
    local pid, state, ppid, pgrp = line:match("^(%d+) %(.*%) (%S) (%d+) (%d+)")
    if pid then
      t[#t + 1] = { pid = tonumber(pid), state = state, ppid = tonumber(ppid), pgrp = tonumber(pgrp) }
    end
  end
  return t
end

-- The pids of this process's zombie children.
local function zombies()
  local me, z = mypid(), {}
  for _, p in ipairs(processes()) do
    if p.ppid == me and p.state == "Z" then z[#z + 1] = p.pid end
  end
  return z
end

-- Whether pid is a live process (a zombie is dead: only its parent's
-- wait is missing, and its parent is then not us, see zombies()).
local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local s = f:read("a") or ""
  f:close()
  local state = s:match("^%d+ %(.*%) (%S)")
  return state ~= nil and state ~= "Z" and state ~= "X"
end

-- The pids a shell wrote into a file, one a line.
local function read_pids(path)
  local pids = {}
  local f = io.open(path)
  if f then
    for l in f:lines() do pids[#pids + 1] = tonumber(l) end
    f:close()
  end
  return pids
end

local tmpfiles
before_each(function() tmpfiles = {} end)
after_each(function()
  for _, p in ipairs(tmpfiles) do os.remove(p) end
end)
local function tmpname()
  local p = os.tmpname()
  tmpfiles[#tmpfiles + 1] = p
  return p
end

describe("weft.exec", function()
  describe("exit status", function()
    it("reports a zero exit as ok", function()
      local r = assert(exec(bounded(), { "true" }))
      assert.equal(0, r.status)
      assert.is_true(r.ok)
      assert.is_nil(r.signal)
      assert.is_false(r.truncated)
      assert.is_nil(r.stdout)
      assert.is_nil(r.stderr)
    end)

    it("reports a nonzero exit", function()
      local r = assert(exec(bounded(), { "false" }))
      assert.equal(1, r.status)
      assert.is_false(r.ok)
      r = assert(exec(bounded(), { "sh", "-c", "exit 7" }))
      assert.equal(7, r.status)
      assert.is_false(r.ok)
    end)

    it("reports a death by signal", function()
      local r = assert(exec(bounded(), { "sh", "-c", "kill -9 $$" }))
      assert.is_nil(r.status)
      assert.equal(9, r.signal)
      assert.is_false(r.ok)
    end)

    it("passes arguments as they are, numbers included, with no shell", function()
      local r = assert(exec(bounded(), { "printf", "[%s]", "a b", "$HOME", "*", 42 },
                                 { stdout = "capture" }))
      assert.equal("[a b][$HOME][*][42]", r.stdout)
    end)
  end)

  describe("output", function()
    it("captures stdout and stderr apart", function()
      local r = assert(exec(bounded(), { "sh", "-c", "echo out; echo err >&2; echo out2" },
                                 { capture = true }))
      assert.equal("out\nout2\n", r.stdout)
      assert.equal("err\n", r.stderr)
    end)

    it("captures one stream, sends the other to /dev/null or to stdout", function()
      local r = assert(exec(bounded(), { "sh", "-c", "echo out; echo err >&2" },
                                 { stdout = "capture", stderr = "null" }))
      assert.equal("out\n", r.stdout)
      assert.is_nil(r.stderr)
      r = assert(exec(bounded(), { "sh", "-c", "echo out; echo err >&2" },
                           { stdout = "null", stderr = "capture" }))
      assert.is_nil(r.stdout)
      assert.equal("err\n", r.stderr)
      r = assert(exec(bounded(), { "sh", "-c", "echo out; echo err >&2" },
                           { stdout = "capture", stderr = "stdout" }))
      assert.equal("out\nerr\n", r.stdout)
      assert.is_nil(r.stderr)
    end)

    it("gives an empty string for a captured stream that stayed empty", function()
      local r = assert(exec(bounded(), { "true" }, { capture = true }))
      assert.equal("", r.stdout)
      assert.equal("", r.stderr)
    end)

    it("keeps binary output byte for byte", function()
      local r = assert(exec(bounded(), { "printf", "a\\000b\\377" }, { stdout = "capture" }))
      assert.equal("a\0b\255", r.stdout)
    end)

    it("truncates at max_output (1 MiB by default) and reads the rest", function()
      local r = assert(exec(bounded(), { "head", "-c", "3000000", "/dev/zero" }, { capture = true }))
      assert.is_true(r.ok)
      assert.is_true(r.truncated)
      assert.equal(1024 * 1024, #r.stdout)
      assert.equal(("\0"):rep(1024 * 1024), r.stdout)
      r = assert(exec(bounded(), { "head", "-c", "3000000", "/dev/zero" },
                           { capture = true, max_output = 10 }))
      assert.is_true(r.ok)
      assert.is_true(r.truncated)
      assert.equal(10, #r.stdout)
      r = assert(exec(bounded(), { "head", "-c", "100", "/dev/zero" },
                           { capture = true, max_output = 100 }))
      assert.is_false(r.truncated)
      assert.equal(100, #r.stdout)
      r = assert(exec(bounded(), { "echo", "x" }, { capture = true, max_output = 0 }))
      assert.is_true(r.truncated)
      assert.equal("", r.stdout)
    end)
  end)

  describe("stdin", function()
    it("passes a string through cat", function()
      local r = assert(exec(bounded(), { "cat" }, { stdin = "hello\0world\n", capture = true }))
      assert.equal("hello\0world\n", r.stdout)
    end)

    it("feeds large input while reading large output", function()
      local big = ("0123456789abcdef"):rep(200000)  -- 3.2 MB each way
      local r = assert(exec(bounded(), { "cat" },
                                 { stdin = big, capture = true, max_output = #big }))
      assert.is_false(r.truncated)
      assert.equal(#big, #r.stdout)
      assert.is_true(r.stdout == big)
    end)

    it("survives a child that does not read its stdin", function()
      local r = assert(exec(bounded(), { "true" }, { stdin = ("x"):rep(1 << 20) }))
      assert.is_true(r.ok)
    end)

    it("is /dev/null by default", function()
      local r = assert(exec(bounded(), { "cat" }, { capture = true }))
      assert.equal("", r.stdout)
      assert.is_true(r.ok)
    end)
  end)

  describe("environment and directory", function()
    it("replaces the environment with env", function()
      local r = assert(exec(bounded(), { "sh", "-c", 'echo "$FOO|$N|${HOME-unset}"' },
                                 { env = { FOO = "bar baz", N = 42 }, capture = true }))
      assert.equal("bar baz|42|unset\n", r.stdout)
    end)

    it("inherits the environment by default", function()
      local r = assert(weft.exec(bounded(), { "printenv", "PATH" }, { capture = true }))
      assert.equal(os.getenv("PATH") .. "\n", r.stdout)
    end)

    it("runs in cwd", function()
      local r = assert(exec(bounded(), { "pwd" }, { cwd = "/", capture = true }))
      assert.equal("/\n", r.stdout)
      local ok, err = exec(bounded(), { "pwd" }, { cwd = "/no/such/dir" })
      assert.is_nil(ok)
      assert.equal("exec: no such directory: /no/such/dir", err)
      ok, err = exec(bounded(), { "pwd" }, { cwd = "/etc/passwd" })
      assert.is_nil(ok)
      assert.equal("exec: not a directory: /etc/passwd", err)
    end)
  end)

  describe("errors", function()
    -- Under valgrind the spawn cannot report a failed exec (valgrind runs
    -- posix_spawn's vfork-like clone as a fork), so the child exits 127.
    local function spawn_errors_reported()
      if harness.VARIANT ~= "valgrind" then return true end
      pending("valgrind: a failed exec shows as exit status 127")
      return false
    end

    it("reports a program that is not found", function()
      if not spawn_errors_reported() then return end
      local ok, err = exec(bounded(), { "weft-no-such-program", "x" })
      assert.is_nil(ok)
      assert.equal("exec: no such file: weft-no-such-program", err)
      ok, err = exec(bounded(), { "/no/such/prog" })
      assert.is_nil(ok)
      assert.equal("exec: no such file: /no/such/prog", err)
    end)

    it("reports a file that cannot be executed", function()
      if not spawn_errors_reported() then return end
      local ok, err = exec(bounded(), { "/etc/passwd" })
      assert.is_nil(ok)
      assert.equal("exec: permission denied: /etc/passwd", err)
    end)

    it("returns ctx:err() without starting anything when ctx is done", function()
      local ctx, cancel = weft.with_cancel(bg)
      cancel()
      local f = tmpname()
      os.remove(f)
      local ok, err = exec(ctx, { "sh", "-c", "echo > " .. f })
      assert.is_nil(ok)
      assert.equal(CANCELED, err)
      assert.is_nil(io.open(f))
    end)

    it("raises on bad arguments", function()
      local ctx = bounded()
      assert.has_error(function() exec(ctx, "echo {}") end)  -- a template, no item
      assert.has_error(function() exec(ctx, "echo 'unterminated") end)
      assert.has_error(function() exec(ctx, {}) end)
      assert.has_error(function() exec(ctx, { "" }) end)
      assert.has_error(function() exec(ctx, { "echo", {} }) end)
      assert.has_error(function() exec(ctx, { "echo", "a\0b" }) end)
      assert.has_error(function() exec(ctx, { "echo" }, { shell = true }) end)
      assert.has_error(function() exec(ctx, { "echo" }, { stdout = "pipe" }) end)
      assert.has_error(function() exec(ctx, { "echo" }, { stdout = "stdout" }) end)
      assert.has_error(function() exec(ctx, { "echo" }, { max_output = -1 }) end)
      assert.has_error(function() exec(ctx, { "echo" }, { env = { ["A=B"] = "x" } }) end)
      assert.has_error(function() exec(ctx, { "echo" }, { env = { A = true } }) end)
      assert.has_error(function() exec(ctx, { "echo" }, { stdin = 42 }) end)
      assert.has_error(function() exec(ctx, { "echo" }, { grace = math.huge }) end)
      assert.has_error(function() exec({}, { "echo" }) end)
      local ok, err = pcall(weft.exec, ctx, { "echo" }, { grace = "soon" })
      assert.is_false(ok)
      assert.matches("bad option 'grace' to 'exec' %(invalid duration", err)
      ok, err = pcall(weft.exec, ctx, { "echo" }, { captur = true })
      assert.is_false(ok)
      assert.matches("unknown option captur", err, 1, true)
    end)
  end)

  describe("command templates", function()
    it("expands a string cmd with opts.item into one argv, never re-split by a shell", function()
      local ctx = bounded()
      local res = assert(weft.exec(ctx, "printf %s|%s| {} {/.}",
        { item = "dir/it's a $(file).txt", capture = true }))
      assert.equal(0, res.status)
      assert.equal("dir/it's a $(file).txt|it's a $(file)|", res.stdout)
      res = assert(weft.exec(ctx, "echo {#} {name}",
        { item = { name = "x y" }, index = 7, capture = true }))
      assert.equal("7 x y\n", res.stdout)
      res = assert(weft.exec(ctx, "echo plain words", { capture = true }))
      assert.equal("plain words\n", res.stdout)
    end)
  end)

  describe("shell = true", function()
    it("runs a string with /bin/sh -c", function()
      local r = assert(exec(bounded(), "echo $((1 + 2)) | tr 3 x", { shell = true, capture = true }))
      assert.equal("x\n", r.stdout)
      assert.is_true(r.ok)
    end)
  end)

  describe("when ctx ends", function()
    it("kills `sleep 100` promptly and returns ctx:err()", function()
      local t0 = weft.now()
      local ok, err = exec(weft.with_timeout(bg, "200ms"), { "sleep", "100" })
      assert.is_nil(ok)
      assert.equal(DEADLINE, err)
      assert.is_true(weft.now() - t0 < 3)
      assert.same({}, zombies())
    end)

    it("returns the cancel's error when canceled from elsewhere", function()
      local pool <close> = assert(weft.pool { workers = 1, name = "canceler" })
      local ctx, cancel = weft.with_cancel(bounded())
      local f = assert(pool:submit(bg, function(_, c)
        weft.sleep(weft.background(), "100ms")
        c("stop")
      end, cancel))
      local ok, err = exec(ctx, { "sleep", "100" }, { capture = true })
      assert.is_nil(ok)
      assert.equal(CANCELED, err)
      assert.is_true((await(f)))
    end)

    it("kills the whole process group: the child's children too", function()
      local pidfile = tmpname()
      local t0 = weft.now()
      local ok, err = exec(weft.with_timeout(bg, "300ms"),
                                { "sh", "-c", 'echo $$ > "$1"; sleep 100 & echo $! >> "$1"; wait', "sh", pidfile })
      assert.is_nil(ok)
      assert.equal(DEADLINE, err)
      assert.is_true(weft.now() - t0 < 3)
      local pids = read_pids(pidfile)
      assert.equal(2, #pids)
      assert.is_true(eventually(function() return not alive(pids[1]) and not alive(pids[2]) end, 5))
      assert.same({}, zombies())
    end)

    it("waits for processes the child left holding its pipes, and kills them", function()
      local pidfile = tmpname()
      local ok, err = exec(weft.with_timeout(bg, "300ms"),
                                { "sh", "-c", 'sleep 100 & echo $! > "$1"', "sh", pidfile },
                                { capture = true })
      assert.is_nil(ok)
      assert.equal(DEADLINE, err)
      local pids = read_pids(pidfile)
      assert.equal(1, #pids)
      assert.is_true(eventually(function() return not alive(pids[1]) end, 5))
      assert.same({}, zombies())
    end)

    it("SIGKILLs a group that ignores SIGTERM after the grace", function()
      local pidfile = tmpname()
      local t0 = weft.now()
      local ok, err = exec(weft.with_timeout(bg, "100ms"),
                                { "sh", "-c", 'trap "" TERM; echo $$ > "$1"; sleep 100 & echo $! >> "$1"; wait',
                                  "sh", pidfile },
                                { grace = "500ms", capture = true })
      local elapsed = weft.now() - t0
      assert.is_nil(ok)
      assert.equal(DEADLINE, err)
      assert.is_true(elapsed >= 0.5, "returned after " .. elapsed .. "s, before the grace")
      assert.is_true(elapsed < 5, "returned after " .. elapsed .. "s")
      local pids = read_pids(pidfile)
      assert.equal(2, #pids)
      assert.is_true(eventually(function() return not alive(pids[1]) and not alive(pids[2]) end, 5))
      assert.same({}, zombies())
    end)

    it("does not wait for the grace once the group is gone", function()
      local t0 = weft.now()
      local ok, err = exec(weft.with_timeout(bg, "100ms"), { "sh", "-c", "sleep 100 & wait" },
                                { grace = 30 })
      assert.is_nil(ok)
      assert.equal(DEADLINE, err)
      assert.is_true(weft.now() - t0 < 10)
    end)

    it("gives a stopped process its SIGTERM", function()
      local t0 = weft.now()
      local ok, err = exec(weft.with_timeout(bg, "300ms"), { "sh", "-c", "kill -STOP $$" },
                                { grace = 30 })
      assert.is_nil(ok)
      assert.equal(DEADLINE, err)
      assert.is_true(weft.now() - t0 < 10)
      assert.same({}, zombies())
    end)

    it("returns the result of a program that finished before ctx ended", function()
      local ctx, cancel = weft.with_cancel(bounded())
      local r = assert(exec(ctx, { "echo", "done" }, { capture = true }))
      cancel()
      assert.equal("done\n", r.stdout)
    end)
  end)

  describe("in pool jobs", function()
    it("parks the job: one worker carries four execs at once", function()
      local pool <close> = assert(weft.pool { workers = 1, limit = 4, name = "exec" })
      -- the execs wait under ctx; the jobs run under another context, so
      -- ending ctx ends the execs (not the jobs, by hard cancel)
      local ctx, cancel = weft.with_cancel(bounded(30))
      local fs = {}
      for i = 1, 4 do
        fs[i] = assert(pool:submit(bounded(30), function(_, c, n)
          return exec(c, { "sh", "-c", "echo $0; sleep 100", n }, { capture = true })
        end, ctx, i))
      end
      assert.is_true(eventually(function() return pool:stats().parked == 4 end, 10),
                     "parked: " .. pool:stats().parked)
      cancel()
      for i = 1, 4 do
        local ok, r, err = await(fs[i])
        assert.is_true(ok)
        assert.is_nil(r)
        assert.equal(CANCELED, err)
      end
      assert.same({}, zombies())
    end)

    it("runs execs of parallel jobs to completion", function()
      local pool <close> = assert(weft.pool { workers = 1, limit = 4, name = "exec" })
      local ctx = bounded(30)
      local fs = {}
      for i = 1, 8 do
        fs[i] = assert(pool:submit(ctx, function(c, n)
          local r = assert(exec(c, { "sh", "-c", "sleep 0.2; cat; echo $0", n },
                                     { stdin = "in" .. n .. ",", capture = true }))
          return r.stdout, r.status
        end, i))
      end
      for i = 1, 8 do
        local ok, out, status = await(fs[i])
        assert.is_true(ok, out)
        assert.equal("in" .. i .. "," .. i .. "\n", out)
        assert.equal(0, status)
      end
      assert.same({}, zombies())
    end)

    it("ends the process of a job stopped by hard cancel", function()
      local pool <close> = assert(weft.pool { workers = 1, name = "exec" })
      local pidfile = tmpname()
      local jctx, cancel = weft.with_cancel(bounded(30))
      -- the exec waits under a context that does not end: only the job's does
      local f = assert(pool:submit(jctx, function(_, long, path)
        return exec(long, { "sh", "-c", 'echo $$ > "$1"; exec sleep 100', "sh", path },
                         { grace = "200ms" })
      end, bounded(30), pidfile))
      assert.is_true(eventually(function() return #read_pids(pidfile) == 1 end, 10))
      cancel()
      local ok, err = await(f)
      assert.is_false(ok)
      assert.equal(CANCELED, err)
      -- ended and reaped as the error unwound the call, before the job
      -- finished (not at some later collection of the worker's state)
      assert.is_false(alive(read_pids(pidfile)[1]))
      assert.same({}, zombies())
    end)

    it("lets pool:close() wait for an exec in progress", function()
      local pool = assert(weft.pool { workers = 1, name = "exec" })
      local f = assert(pool:submit(bounded(30), function(c)
        return exec(c, { "sh", "-c", "sleep 0.3; echo finished" }, { capture = true })
      end))
      weft.sleep(bg, "50ms")
      assert.is_true(pool:close("20s"))
      local ok, r = await(f)
      assert.is_true(ok)
      assert.equal("finished\n", r.stdout)
    end)

    it("ends an exec in progress when pool:close(timeout) interrupts its job", function()
      local pool = assert(weft.pool { workers = 1, name = "exec" })
      local pidfile = tmpname()
      local f = assert(pool:submit(bounded(30), function(c, path)
        return exec(c, { "sh", "-c", 'echo $$ > "$1"; exec sleep 100', "sh", path },
                         { grace = "200ms" })
      end, pidfile))
      assert.is_true(eventually(function() return #read_pids(pidfile) == 1 end, 10))
      local t0 = weft.now()
      assert.is_true(pool:close("200ms"))
      assert.is_true(weft.now() - t0 < 10)
      local ok, err = await(f)
      assert.is_false(ok)
      assert.equal("pool closed", err)
      local pid = read_pids(pidfile)[1]
      assert.is_false(alive(pid))
      assert.same({}, zombies())
    end)
  end)

  it("works from a coroutine of the main state (blocking)", function()
    local co = coroutine.wrap(function()
      return exec(bounded(), { "echo", "co" }, { capture = true })
    end)
    assert.equal("co\n", co().stdout)
  end)

  it("leaves no zombie after many runs", function()
    for i = 1, 50 do
      assert(exec(bounded(), { "true" }))
      if i % 10 == 0 then
        exec(weft.with_timeout(bg, "10ms"), { "sleep", "1" })
      end
    end
    assert.same({}, zombies())
  end)
end)
