-- The weft command (bin/weft; lua/weft/cli.lua and lua/weft/runlog.lua) as
-- a user runs it: a child process started from the repository root.
--
-- Every child runs under `timeout 30` so nothing can hang the spec; its
-- stdout and stderr go to files of a temporary folder and its exit status
-- comes back through os.execute.  Workflow scripts are written to that
-- folder.  Signal tests start the command in the background of a small sh
-- script and signal the weft process itself: the workflow writes its own
-- pid (from /proc/self/stat) to a file once it is ready.  (Signaling
-- `timeout` instead would deliver each signal twice: GNU timeout forwards it
-- to its child and again to its whole process group, which weft takes for
-- the second, "exit now" signal.)  Timings are generous bounds, never
-- measurements.
local weft = require "weft"
local runlog = require "weft.runlog"

-- The repository root, from this file's own path (busted runs it as
-- spec/cli_spec.lua from the root, or by an absolute path).
local ROOT = debug.getinfo(1, "S").source:match("^@(.-)/?spec/cli_spec%.lua$")
if ROOT == nil or ROOT == "" then ROOT = "." end

-- Under spec/run's sanitizer variants the runtime is preloaded into every
-- child (sh itself crashes under TSan's), and bin/weft would load the plain
-- build/weft/core.so anyway: this file is for the plain run only.
local VARIANT = os.getenv("WEFT_TEST_VARIANT")
if not (VARIANT == nil or VARIANT == "plain") or (os.getenv("LD_PRELOAD") or ""):find("san") then
  describe("the weft command", function()
    pending("child processes do not run under the sanitizer runtimes")
  end)
  return
end

local SPIN = "while true do end"

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function slurp(path)
  local fh = io.open(path, "rb")
  if not fh then return nil end
  local s = fh:read("a")
  fh:close()
  return s
end

local function spit(path, s)
  local fh = assert(io.open(path, "wb"))
  assert(fh:write(s))
  fh:close()
end

local function exists(path)
  local fh = io.open(path, "rb")
  if fh then fh:close() end
  return fh ~= nil
end

-- Occurrences of the plain string needle in s.
local function count(s, needle)
  local n, at = 0, 1
  while true do
    local i, j = s:find(needle, at, true)
    if not i then return n end
    n, at = n + 1, j + 1
  end
end

local function lines_of(s)
  local t = {}
  for l in s:gmatch("[^\n]+") do t[#t + 1] = l end
  return t
end

local TMP
local seq = 0

-- A fresh path in the temporary folder.
local function tmp(name)
  seq = seq + 1
  return ("%s/%d-%s"):format(TMP, seq, name)
end

-- Writes a workflow script; returns its path.
local function script(code)
  local path = tmp("flow.lua")
  spit(path, code)
  return path
end

-- Runs `bin/weft ARGS...` from the root under `timeout 30`, stdin from
-- /dev/null; env is a table of extra environment variables.  Returns the
-- exit status, stdout, stderr and the time it took.
local function weft_run(args, env)
  local out, err = tmp("out"), tmp("err")
  local words = {}
  for k, v in pairs(env or {}) do words[#words + 1] = k .. "=" .. q(v) end
  words[#words + 1] = "timeout 30 bin/weft"
  for _, a in ipairs(args) do words[#words + 1] = q(a) end
  local cmd = ("cd %s && %s </dev/null >%s 2>%s"):format(q(ROOT), table.concat(words, " "), q(out), q(err))
  local t0 = weft.now()
  local _, how, code = os.execute(cmd)
  local elapsed = weft.now() - t0
  assert.equal("exit", how, "the shell itself was killed: " .. cmd)
  return code, slurp(out) or "", slurp(err) or "", elapsed
end

-- For workflows that get signaled: ready() writes the process's pid to the
-- file named by arg[1] (atomically), for the sh driver below to signal.
local READY = [[
local function ready()
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("n")
  f:close()
  f = assert(io.open(arg[1] .. ".tmp", "w"))
  f:write(pid)
  f:close()
  assert(os.rename(arg[1] .. ".tmp", arg[1]))
end
]]

-- Starts `weft run FLOW READYFILE` in the background of sh, waits (at most
-- 20 s) until the workflow called ready(), then runs the sh commands
-- `signals` (with $pid the weft process) and waits for the command.
-- Returns the exit status (99: the workflow never got ready), stdout,
-- stderr and the time from start to exit.
local function weft_signaled(flow_code, signals)
  local flow = script(READY .. flow_code)
  local ready, out, err = tmp("ready"), tmp("out"), tmp("err")
  local driver = tmp("driver.sh")
  spit(driver, table.concat({
    "cd " .. q(ROOT),
    ("timeout 30 bin/weft run %s %s </dev/null >%s 2>%s &"):format(q(flow), q(ready), q(out), q(err)),
    "tpid=$!",
    "i=0",
    "while [ ! -s " .. q(ready) .. " ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done",
    "if [ ! -s " .. q(ready) .. " ]; then kill $tpid; wait $tpid; exit 99; fi",
    "pid=$(cat " .. q(ready) .. ")",
    signals,
    "wait $tpid",
    "exit $?",
  }, "\n") .. "\n")
  local t0 = weft.now()
  local _, how, code = os.execute("sh " .. q(driver))
  local elapsed = weft.now() - t0
  assert.equal("exit", how)
  return code, slurp(out) or "", slurp(err) or "", elapsed
end

-- A small JSON reader for the job log's flat objects (strings, numbers,
-- true, false, null), independent of weft.runlog's own; it errors on
-- anything else, so the log is checked to be JSON too.
local JSON_ESC = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

local function json_object(line)
  local pos = 1
  local function ws() pos = line:match("^[ \t]*()", pos) end
  local function expect(c)
    ws()
    assert(line:sub(pos, pos) == c, ("JSON: %q expected at %d in %s"):format(c, pos, line))
    pos = pos + 1
  end
  local function str()
    expect('"')
    local buf = {}
    while true do
      local c = line:sub(pos, pos)
      assert(c ~= "", "JSON: unterminated string in " .. line)
      assert(c:byte() >= 32, "JSON: raw control character in a string: " .. line)
      if c == '"' then pos = pos + 1 break end
      if c == "\\" then
        local e = line:sub(pos + 1, pos + 1)
        if e == "u" then
          local hex = line:sub(pos + 2, pos + 5)
          assert(hex:match("^%x%x%x%x$"), "JSON: bad \\u escape in " .. line)
          buf[#buf + 1] = utf8.char(tonumber(hex, 16))
          pos = pos + 6
        else
          buf[#buf + 1] = assert(JSON_ESC[e], "JSON: bad escape in " .. line)
          pos = pos + 2
        end
      else
        buf[#buf + 1] = c
        pos = pos + 1
      end
    end
    return table.concat(buf)
  end
  local function value()
    ws()
    if line:sub(pos, pos) == '"' then return str() end
    for word, v in pairs { ["true"] = true, ["false"] = false, null = "null" } do
      if line:sub(pos, pos + #word - 1) == word then
        pos = pos + #word
        if v == "null" then return nil end
        return v
      end
    end
    local num, e = line:match("^(-?%d+%.?%d*[eE]?[-+]?%d*)()", pos)
    assert(num and tonumber(num), "JSON: value expected at " .. pos .. " in " .. line)
    pos = e
    return math.tointeger(tonumber(num)) or tonumber(num)
  end
  local obj = {}
  expect("{")
  ws()
  if line:sub(pos, pos) == "}" then return obj end
  while true do
    local k = str()
    assert(obj[k] == nil and k ~= nil, "JSON: duplicate key " .. k)
    expect(":")
    obj[k] = value()
    ws()
    local c = line:sub(pos, pos)
    pos = pos + 1
    if c == "}" then break end
    assert(c == ",", "JSON: , or } expected in " .. line)
  end
  ws()
  assert(pos > #line, "JSON: trailing characters in " .. line)
  return obj
end

-- The records of a job log file, checked to be one object per line (and
-- read the same by weft.runlog.parse_line, which --resume uses).
local function joblog(path)
  local text = assert(slurp(path), "no job log at " .. path)
  assert.equal("\n", text:sub(-1), "the job log ends with a newline")
  local recs = {}
  for _, l in ipairs(lines_of(text)) do
    local rec = json_object(l)
    assert.same(rec, runlog.parse_line(l))
    recs[#recs + 1] = rec
  end
  return recs
end

local function by_label(recs)
  local t = {}
  for _, r in ipairs(recs) do
    if r.label ~= nil then
      assert.is_nil(t[r.label], "one record per label: " .. tostring(r.label))
      t[r.label] = r
    end
  end
  return t
end

local STATUSES = { ok = true, error = true, canceled = true, panic = true }

-- Checks the fields every record has; `timed`: start and duration too.
local function check_record(r, timed)
  assert.is_string(r.group)
  assert.equal("integer", math.type(r.index))
  assert.is_true(STATUSES[r.status] == true, "bad status " .. tostring(r.status))
  if r.status == "ok" then
    assert.is_nil(r.error)
  else
    assert.is_string(r.error)
  end
  if timed then
    assert.is_number(r.start, ("record %s/%s has a start"):format(r.group, tostring(r.label or r.index)))
    assert.is_number(r.duration, ("record %s/%s has a duration"):format(r.group, tostring(r.label or r.index)))
    assert.is_true(r.duration >= 0 and r.duration < 30)
  end
end

setup(function()
  local p = assert(io.popen("mktemp -d"))
  TMP = p:read("l")
  p:close()
  assert(TMP and TMP ~= "", "mktemp -d failed")
end)

teardown(function()
  if TMP then os.execute("rm -rf " .. q(TMP)) end
end)

-------------------------------------------------------------------------------
describe("weft usage", function()
  it("--help prints the usage on stdout and exits 0", function()
    local code, out, err = weft_run { "--help" }
    assert.equal(0, code)
    assert.matches("^usage: weft run %[options%] FLOW%.lua %[ARGS%.%.%.%]", out)
    assert.matches("%-%-timeout DURATION", out)
    assert.matches("%-%-joblog FILE", out)
    assert.matches("exit status:", out)
    assert.equal("", err)
  end)

  it("`weft run --help` and `weft run --quiet --help` print the usage too", function()
    for _, args in ipairs { { "run", "--help" }, { "run", "--quiet", "--help" } } do
      local code, out = weft_run(args)
      assert.equal(0, code)
      assert.matches("^usage: weft run", out)
    end
  end)

  it("`weft run --workers 2 --help` prints the usage (an option value does not end the options)", function()
    local code, out, err = weft_run { "run", "--workers", "2", "--help" }
    assert.equal("", err)
    assert.equal(0, code)
    assert.matches("^usage: weft run", out)
  end)

  it("--version prints weft's version and exits 0", function()
    local code, out, err = weft_run { "--version" }
    assert.equal(0, code)
    assert.is_string(weft._VERSION)
    assert.equal("weft " .. weft._VERSION, out:match("^(weft %S+)"))
    assert.equal(1, #lines_of(out))
    assert.equal("", err)
  end)

  it("no arguments: the usage, exit 2", function()
    local code, out = weft_run {}
    assert.equal(2, code)
    assert.matches("^usage: weft run", out)
  end)

  it("an unknown option: exit 2, the message on stderr, nothing on stdout", function()
    local code, out, err = weft_run { "run", "--frobnicate", "x.lua" }
    assert.equal(2, code)
    assert.equal("", out)
    assert.matches("weft: unknown option %-%-frobnicate", err)
    assert.matches("weft %-%-help", err)
  end)

  it("an unknown command: exit 2", function()
    local code, out, err = weft_run { "frobnicate" }
    assert.equal(2, code)
    assert.equal("", out)
    assert.matches("unknown command 'frobnicate'", err)
  end)

  it("`weft run` without a script: exit 2, a message on stderr", function()
    local code, out, err = weft_run { "run" }
    assert.equal(2, code)
    assert.equal("", out)
    assert.matches("weft: no workflow script given", err)
  end)

  it("a script file that does not exist: fails, naming the file, no traceback", function()
    local missing = TMP .. "/no-such-flow.lua"
    local code, out, err = weft_run { "run", missing }
    assert.is_true(code == 1 or code == 2, "exit status " .. code)
    assert.equal("", out)
    assert.equal(1, count(err, "cannot open " .. missing))
    assert.is_nil(err:find("stack traceback", 1, true))
  end)

  it("bad option values are usage errors (exit 2) and run nothing", function()
    local marker = tmp("ran")
    local code_ = ("io.open(%q, 'w'):close()"):format(marker)
    for _, args in ipairs {
      { "run", "--workers", "0", "-e", code_ },
      { "run", "--workers", "many", "-e", code_ },
      { "run", "--timeout", "1x", "-e", code_ },
      { "run", "--timeout=1x", "-e", code_ },
      { "run", "--timeout" },
      { "run", "--resume", script(code_) },
    } do
      local code, out, err = weft_run(args)
      assert.equal(2, code, table.concat(args, " "))
      assert.equal("", out)
      assert.matches("^weft: ", err)
      assert.is_false(exists(marker), table.concat(args, " ") .. " ran the script")
    end
  end)

  it("--resume without --joblog is refused with -e as with a file", function()
    local marker = tmp("ran")
    local code, _, err = weft_run { "run", "--resume", "-e", ("io.open(%q, 'w'):close()"):format(marker) }
    assert.is_false(exists(marker), "the -e code ran")
    assert.equal(2, code)
    assert.matches("%-%-resume needs %-%-joblog", err)
  end)
end)

-------------------------------------------------------------------------------
describe("weft run: arguments", function()
  local SHOW = [[
print("n=" .. select("#", ...))
for i = 1, select("#", ...) do print("...[" .. i .. "]=" .. select(i, ...)) end
print("arg[0]=" .. tostring(arg[0]))
for i = 1, #arg do print("arg[" .. i .. "]=" .. arg[i]) end
]]

  it("passes a file's arguments as ... and arg, arg[0] the script", function()
    local flow = script(SHOW)
    local code, out, err = weft_run { "run", flow, "a", "b c", "--workers", "-e", "" }
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal(table.concat({
      "n=5", "...[1]=a", "...[2]=b c", "...[3]=--workers", "...[4]=-e", "...[5]=",
      "arg[0]=" .. flow, "arg[1]=a", "arg[2]=b c", "arg[3]=--workers", "arg[4]=-e", "arg[5]=",
    }, "\n") .. "\n", out)
  end)

  it("takes options before the script, and -- before a script named like an option", function()
    local flow = script(SHOW)
    local code, out = weft_run { "run", "--workers", "2", "--no-progress", "--", flow, "x" }
    assert.equal(0, code)
    assert.matches("^n=1\n%.%.%.%[1%]=x\n", out)
  end)

  it("-e CODE runs the code with the arguments that follow", function()
    local code, out, err = weft_run { "run", "-e", SHOW, "a", "b" }
    assert.equal("", err)
    assert.equal(0, code)
    local l = lines_of(out)
    assert.equal("n=2", l[1])
    assert.equal("...[1]=a", l[2])
    assert.equal("...[2]=b", l[3])
    assert.equal("arg[1]=a", l[5])
    assert.equal("arg[2]=b", l[6])
    assert.equal(6, #l)
  end)

  it("-e with code that does not compile: exit 2", function()
    local code, out, err = weft_run { "run", "-e", "local x =" }
    assert.equal(2, code)
    assert.equal("", out)
    assert.matches("weft: %(command line%):1:", err)
  end)
end)

-------------------------------------------------------------------------------
describe("weft run: exit status and errors", function()
  it("a script that returns normally exits 0 with nothing on stderr", function()
    local flow = script([[
local weft = require "weft"
local r = assert(weft.map(weft.root(), { 1, 2, 3 }, function(_, x) return x * 10 end))
print(table.concat(r, ","))
return 42
]])
    local code, out, err = weft_run { "run", flow }
    assert.equal(0, code)
    assert.equal("10,20,30\n", out)
    assert.equal("", err)
  end)

  it("a script that raises exits 1; the error once, with its traceback, on stderr", function()
    local flow = script([[
print("before")
local function inner() error("kaboom-4711") end
inner()
print("after")
]])
    local code, out, err = weft_run { "run", flow }
    assert.equal(1, code)
    assert.equal("before\n", out)
    assert.equal(1, count(err, "kaboom-4711"))
    assert.equal(1, count(err, "stack traceback"))
    assert.matches("weft: [^\n]*:2: kaboom%-4711\nstack traceback:", err)
    assert.matches("in local 'inner'", err)
    assert.is_nil(err:find("weft/cli.lua", 1, true), "the command's own frames are cut")
  end)

  it("a job's error raised again by the script is printed once", function()
    local flow = script([[
local weft = require "weft"
local g = weft.group(weft.root())
g:go(function() error("job-broke-99", 0) end)
local err = g:wait()
if err then error(err, 0) end
]])
    local code, out, err = weft_run { "run", flow }
    assert.equal(1, code)
    assert.equal("", out)
    assert.equal(1, count(err, "job-broke-99"))
    assert.matches("stack traceback", err)
  end)

  it("an error object with __tostring, and one without", function()
    local code, _, err = weft_run { "run", "-e",
      [[error(setmetatable({}, { __tostring = function() return "custom-err-7" end }))]] }
    assert.equal(1, code)
    assert.equal(1, count(err, "custom-err-7"))
    code, _, err = weft_run { "run", "-e", "error({})" }
    assert.equal(1, code)
    assert.matches("error object is a table value", err)
  end)

  it("--timeout 300ms ends a group of spinning jobs: exit 124, 'timed out'", function()
    local flow = script(([[
local weft = require "weft"
local g = weft.group(weft.root())
for _ = 1, 2 do g:go(function() %s end) end
local err = g:wait()
if err then error(err, 0) end
print("not reached")
]]):format(SPIN))
    local code, out, err, elapsed = weft_run { "run", "--timeout", "300ms", flow }
    assert.equal(124, code)
    assert.equal("", out)
    assert.matches("timed out", err)
    assert.is_true(elapsed < 5, ("took %.2f s"):format(elapsed))
    assert.is_true(elapsed >= 0.25, ("took %.2f s"):format(elapsed))
  end)

  it("--timeout is the deadline of weft.root()", function()
    local code, out = weft_run { "run", "--timeout=2m", "-e", [[
local weft = require "weft"
local d = weft.root():deadline()
print(d ~= nil and d - weft.now() > 100 and d - weft.now() <= 120)
]] }
    assert.equal(0, code)
    assert.equal("true\n", out)
  end)
end)

-------------------------------------------------------------------------------
describe("weft run: signals", function()
  it("SIGINT cancels the root context (cause naming SIGINT) and exits 130", function()
    local code, out, err, elapsed = weft_signaled([[
local weft = require "weft"
ready()
local done = weft.root():wait("20s")
print("done=" .. tostring(done))
print("cause=" .. tostring(weft.root():cause()))
io.stdout:flush()
error("stopped by " .. tostring(weft.root():cause()), 0)
]], "kill -INT $pid")
    assert.equal(130, code)
    assert.matches("^done=true\ncause=[^\n]*SIGINT", out)
    assert.matches("interrupted", err)
    assert.is_nil(err:find("second signal", 1, true))
    assert.is_true(elapsed < 10, ("took %.2f s"):format(elapsed))
  end)

  it("SIGTERM exits 143 (the script returning normally), the cause naming SIGTERM", function()
    local code, out, err = weft_signaled([[
local weft = require "weft"
ready()
local done = weft.root():wait("20s")
print("done=" .. tostring(done))
print("cause=" .. tostring(weft.root():cause()))
]], "kill -TERM $pid")
    assert.equal(143, code)
    assert.matches("^done=true\ncause=[^\n]*SIGTERM", out)
    assert.is_nil(err:find("second signal", 1, true))
  end)

  it("SIGINT stops a group of spinning jobs", function()
    local code, out, _, elapsed = weft_signaled(([[
local weft = require "weft"
local g = weft.group(weft.root())
for _ = 1, 2 do g:go(function() %s end) end
ready()
local err = g:wait()
print("cause=" .. tostring(weft.root():cause()))
if err then error(err, 0) end
]]):format(SPIN), "kill -INT $pid")
    assert.equal(130, code)
    assert.matches("^cause=[^\n]*SIGINT", out)
    assert.is_true(elapsed < 10, ("took %.2f s"):format(elapsed))
  end)

  it("after the run, a pool dropped with a job still running is waited for (and said so); "
    .. "one SIGTERM ends that wait: exit 143", function()
    local code, out, err, elapsed = weft_signaled(([[
local weft = require "weft"
local p = weft.pool { workers = 1, name = "left-running" }
p:submit(weft.background(), function() %s end)
print("script over")
io.stdout:flush()
ready()
]]):format(SPIN), "sleep 1.5; kill -TERM $pid")
    assert.equal(143, code)
    assert.equal("script over\n", out)
    assert.matches("weft pool 'left%-running': collected without close%(%) while 1 job is in flight", err)
    assert.matches("weft: signal after the run ended, exiting now\n", err)
    assert.is_nil(err:find("second signal", 1, true))
    assert.is_true(elapsed < 10, ("took %.2f s"):format(elapsed))
  end)

  it("a second SIGINT exits at once when the script ignores the first", function()
    local code, out, err, elapsed = weft_signaled([[
local weft = require "weft"
print("started")
io.stdout:flush()
ready()
for _ = 1, 150 do weft.sleep(weft.background(), "100ms") end  -- 15 s, ignoring root
print("survived")
]], "kill -INT $pid; sleep 0.5; kill -INT $pid")
    assert.equal(130, code)
    assert.equal("started\n", out)
    assert.matches("second signal", err)
    assert.is_true(elapsed < 8, ("took %.2f s"):format(elapsed))
  end)
end)

-------------------------------------------------------------------------------
describe("weft run --workers", function()
  it("sets the size of the default pool", function()
    local show = [[print(require("weft").default_pool():stats().workers)]]
    local code, out, err = weft_run { "run", "--workers", "3", "-e", show }
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal("3\n", out)
    code, out = weft_run { "run", "--workers=1", "-e", show }
    assert.equal(0, code)
    assert.equal("1\n", out)
    code, out = weft_run { "run", "-e", show }
    assert.equal(0, code)
    assert.equal(weft.ncpu() .. "\n", out)
  end)
end)

-------------------------------------------------------------------------------
describe("weft run --joblog", function()
  it("writes one JSON line per job of a group and per map item", function()
    local log = tmp("joblog")
    local flow = script([[
local weft = require "weft"
local g = weft.group(weft.root(), { on_error = "collect" })
g:go_label("alpha", function() return 1 end)
g:go_label("beta", function() error("beta-broke", 0) end)
g:go(function(ctx) weft.sleep(ctx, "20ms") end)
local errs = g:wait()
print("group errors " .. #errs)
local r, err = weft.map(weft.root(), { "m1", "m2", 'm"3\t' }, function(_, x)
  if x == "m2" then error("m2-broke", 0) end
  return x
end, { on_error = "collect" })
print("map", r, #err)
]])
    local code, out, err = weft_run { "run", "--workers", "2", "--joblog", log, flow }
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal("group errors 1\nmap\tnil\t1\n", out)
    local recs = joblog(log)
    assert.equal(6, #recs)
    for _, r in ipairs(recs) do check_record(r, true) end

    local groups = {}
    for _, r in ipairs(recs) do groups[r.group] = (groups[r.group] or 0) + 1 end
    assert.same({ ["group#1"] = 3, ["map#2"] = 3 }, groups)

    local l = by_label(recs)
    assert.equal("group#1", l.alpha.group)
    assert.equal(1, l.alpha.index)
    assert.equal("ok", l.alpha.status)
    assert.equal(2, l.beta.index)
    assert.equal("error", l.beta.status)
    assert.matches("^beta%-broke", l.beta.error)
    local third
    for _, r in ipairs(recs) do if r.group == "group#1" and r.index == 3 then third = r end end
    assert.is_table(third, "the unlabeled job has its record")
    assert.equal("ok", third.status)
    assert.is_true(third.duration >= 0.015, "the job slept 20ms: duration " .. third.duration)

    assert.equal("map#2", l.m1.group)
    assert.same({ 1, "ok" }, { l.m1.index, l.m1.status })
    assert.same({ 2, "error" }, { l.m2.index, l.m2.status })
    assert.matches("^m2%-broke", l.m2.error)
    assert.same({ 3, "ok" }, { l['m"3\t'].index, l['m"3\t'].status })
  end)

  it("records the jobs a failure canceled as canceled", function()
    local log = tmp("joblog")
    local flow = script(([[
local weft = require "weft"
local g = weft.group(weft.root())
g:go_label("sleeper", function(ctx) assert(weft.sleep(ctx, "20s")) end)
g:go_label("spinner", function() %s end)
g:go_label("failer", function(ctx) weft.sleep(ctx, "100ms") error("failer-broke", 0) end)
local err = g:wait()
print((tostring(err):gsub("\n.*", "")))
]]):format(SPIN))
    local code, out, _, elapsed = weft_run { "run", "--workers", "4", "--joblog", log, flow }
    assert.equal(0, code)
    assert.equal("failer-broke\n", out)
    assert.is_true(elapsed < 10)
    local l = by_label(joblog(log))
    for _, name in ipairs { "sleeper", "spinner", "failer" } do
      assert.is_table(l[name], "a record for " .. name)
      check_record(l[name], false)
    end
    assert.equal("error", l.failer.status)
    assert.equal("canceled", l.sleeper.status)
    assert.equal("canceled", l.spinner.status)
  end)

  it("gives canceled jobs that had started their start and duration too", function()
    local log = tmp("joblog")
    local flow = script(([[
local weft = require "weft"
local g = weft.group(weft.root())
g:go_label("spinner", function() %s end)
g:go_label("failer", function(ctx) weft.sleep(ctx, "100ms") error("failer-broke", 0) end)
g:wait()
]]):format(SPIN))
    local code = weft_run { "run", "--workers", "2", "--joblog", log, flow }
    assert.equal(0, code)
    local l = by_label(joblog(log))
    assert.is_table(l.spinner)
    assert.equal("canceled", l.spinner.status)
    check_record(l.spinner, true)
    assert.is_true(l.spinner.duration >= 0.05, "the spinner ran ~100ms")
  end)

  it("writes a line for each map item, the canceled ones included", function()
    local log = tmp("joblog")
    local flow = script([[
local weft = require "weft"
local r, err = weft.map(weft.root(), { "s1", "s2", "bad", "s3" }, function(ctx, x)
  if x == "bad" then weft.sleep(ctx, "100ms") error("bad item", 0) end
  assert(weft.sleep(ctx, "20s"))
  return x
end, { batch = 1 })
print(r, (tostring(err):gsub("\n.*", "")))
]])
    local code, out = weft_run { "run", "--workers", "4", "--joblog", log, flow }
    assert.equal(0, code)
    assert.equal("nil\tbad item\n", out)
    local recs = joblog(log)
    local l = by_label(recs)
    assert.is_table(l.bad)
    assert.equal("error", l.bad.status)
    for _, name in ipairs { "s1", "s2", "s3" } do
      assert.is_table(l[name], "no job log line for the canceled map item " .. name)
      assert.equal("canceled", l[name].status)
    end
    assert.equal(4, #recs)
  end)

  it("--resume with the same log re-runs only the map items that failed", function()
    local log = tmp("joblog")
    local flow = script([[
local weft = require "weft"
local ran = assert(arg[1])
local r, err = weft.map(weft.root(), { "f1", "f2", "f3", "f4", "f5" }, function(_, x)
  local fh = assert(io.open(ran, "a"))
  fh:write(x, "\n")
  fh:close()
  if x == "f3" and not os.getenv("WEFT_SPEC_FIX") then error("f3 failed", 0) end
  return x
end, { on_error = "collect", batch = 1 })
if not r then error("map: " .. #err .. " failed", 0) end
print("all ok")
]])
    local function ran(path)
      local t = lines_of(slurp(path) or "")
      table.sort(t)
      return t
    end

    local ran1 = tmp("ran")
    local code, out, err = weft_run { "run", "--joblog", log, flow, ran1 }
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("map: 1 failed", err)
    assert.same({ "f1", "f2", "f3", "f4", "f5" }, ran(ran1))
    local recs = joblog(log)
    assert.equal(5, #recs)
    local l = by_label(recs)
    assert.equal("error", l.f3.status)
    for _, x in ipairs { "f1", "f2", "f4", "f5" } do assert.equal("ok", l[x].status) end

    local ran2 = tmp("ran")
    code, out, err = weft_run({ "run", "--resume", "--joblog", log, flow, ran2 }, { WEFT_SPEC_FIX = "1" })
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal("all ok\n", out)
    assert.same({ "f3" }, ran(ran2))
    recs = joblog(log)
    assert.equal(6, #recs, "the resumed run appends to the log")
    assert.same({ "map#1", "f3", 3, "ok" }, { recs[6].group, recs[6].label, recs[6].index, recs[6].status })

    local ran3 = tmp("ran")
    code = weft_run({ "run", "--resume", "--joblog", log, flow, ran3 }, { WEFT_SPEC_FIX = "1" })
    assert.equal(0, code)
    assert.same({}, ran(ran3), "everything succeeded already")

    local ran4 = tmp("ran")
    code = weft_run({ "run", "--joblog", log, flow, ran4 }, { WEFT_SPEC_FIX = "1" })
    assert.equal(0, code)
    assert.same({ "f1", "f2", "f3", "f4", "f5" }, ran(ran4), "without --resume everything runs")
    assert.equal(5, #joblog(log), "without --resume the log starts over")
  end)
end)

-------------------------------------------------------------------------------
describe("weft run --progress", function()
  -- 10 items of 100 ms, 2 at a time: about half a second, so the line
  -- (redrawn every 250 ms) is drawn at least once.
  local SLOW = [[
local weft = require "weft"
local r = assert(weft.map(weft.root(), { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, function(ctx, x)
  weft.sleep(ctx, "100ms")
  return x
end, { batch = 1, limit = 2 }))
print("n=" .. #r)
]]

  it("draws a status line on stderr and clears it at the end", function()
    local code, out, err = weft_run { "run", "--progress", script(SLOW) }
    assert.equal(0, code)
    assert.equal("n=10\n", out)
    assert.matches("weft: %d+/10 done", err)
    assert.equal("\r\27[K", err:sub(-4), "the line is cleared at the end")
  end)

  it("prints nothing of the sort when stderr is not a terminal", function()
    local code, out, err = weft_run { "run", script(SLOW) }
    assert.equal(0, code)
    assert.equal("n=10\n", out)
    assert.equal("", err)
  end)

  it("--quiet wins over --progress: no status line", function()
    local code, _, err = weft_run { "run", "--progress", "--quiet", script(SLOW) }
    assert.equal(0, code)
    assert.equal("", err)
  end)

  it("is on by default when stderr is a terminal (util-linux script(1) gives a pty)", function()
    if not os.execute("command -v script >/dev/null 2>&1") then
      pending("script(1) is not installed")
      return
    end
    -- Runs bin/weft ARGS on a pty; returns what the pty showed.  script's
    -- own exit status is not looked at (under the ASan variant its own
    -- leak check fails it); the command's is echoed on the pty.
    local function on_pty(args)
      local out = tmp("pty")
      local inner = "timeout 30 bin/weft " .. args .. "; echo weft-status=$?"
      os.execute(("cd %s && timeout 30 script -qec %s /dev/null </dev/null >%s 2>&1"):format(
        q(ROOT), q(inner), q(out)))
      return slurp(out) or ""
    end
    local flow = script(SLOW)
    local text = on_pty("run " .. q(flow))
    assert.matches("n=10", text)
    assert.matches("weft%-status=0", text)
    assert.matches("weft: %d+/10 done", text)
    -- and --no-progress turns it off there
    text = on_pty("run --no-progress " .. q(flow))
    assert.matches("n=10", text)
    assert.matches("weft%-status=0", text)
    assert.is_nil(text:find("done", 1, true))
  end)
end)
