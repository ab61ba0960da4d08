--- The weft command (bin/weft): run workflow scripts.
--
--   weft run [options] FLOW.lua [ARGS...]
--   weft run [options] -e 'lua code' [ARGS...]
--
-- The script runs in this (the main) state with weft loaded; it gets its
-- arguments as `arg` and `...`; weft.root() is the run's root context,
-- canceled by the first SIGINT or SIGTERM (the cause names the signal) and
-- ended by --timeout.  Exit status: 0 success, 1 the workflow failed, 2
-- usage error, 124 --timeout expired, 130 SIGINT, 143 SIGTERM.
local M = {}

local USAGE = [[
usage: weft run [options] FLOW.lua [ARGS...]
       weft run [options] -e 'lua code' [ARGS...]
       weft --version | --help

Runs a workflow script with weft loaded; weft.root() is the run's root
context (canceled by SIGINT/SIGTERM, ended by --timeout).

options:
  --workers N         size of the default pool (weft.default_pool())
  --timeout DURATION  deadline of the root context ("90s", "5m", ...)
  --joblog FILE       one JSON line per finished job of a group or map
  --resume            with --joblog: skip map/each items that succeeded
  --progress          a status line on stderr (default: when it is a terminal)
  --no-progress       no status line
  --quiet             no progress, no summary; errors only
  -e CODE             run CODE instead of a file (ARGS follow)
  --version           print the version and exit
  --help              this text

exit status: 0 success, 1 the workflow failed, 2 usage error,
124 --timeout expired, 130 interrupted (SIGINT), 143 terminated (SIGTERM)
]]

local function usage_error(msg)
  io.stderr:write("weft: ", msg, "\n", "try 'weft --help'\n")
  return 2
end

-- Parses the arguments after "run": options, then the script (or -e) and
-- its arguments.  Returns the options table, or nil and a message.
local function parse_run(args)
  local o = { args = {} }
  local i = 1
  local function value(flag)
    i = i + 1
    local v = args[i]
    if v == nil then return nil, flag .. " needs a value" end
    return v
  end
  while i <= #args do
    local a = args[i]
    local flag, inline = a:match("^(%-%-[%w-]+)=(.*)$")
    if flag then a = flag end
    local function take(name)
      if inline ~= nil then return inline end
      return value(name)
    end
    local err
    if a == "--workers" then
      local v
      v, err = take(a)
      if v then
        o.workers = math.tointeger(tonumber(v))
        if not o.workers or o.workers < 1 then return nil, "--workers: an integer >= 1 expected" end
      end
    elseif a == "--timeout" then
      o.timeout, err = take(a)
    elseif a == "--joblog" then
      o.joblog, err = take(a)
    elseif a == "--resume" then
      o.resume = true
    elseif a == "--progress" then
      o.progress = true
    elseif a == "--no-progress" then
      o.progress = false
    elseif a == "--quiet" or a == "-q" then
      o.quiet = true
    elseif a == "--help" or a == "-h" then
      return { help = true }
    elseif a == "--version" then
      return { version = true }
    elseif a == "-e" then
      o.code, err = value(a)
      if o.code then
        table.move(args, i + 1, #args, 1, o.args)
        if o.resume and not o.joblog then return nil, "--resume needs --joblog FILE" end
        return o
      end
    elseif a == "--" then
      i = i + 1
      break
    elseif a:sub(1, 1) == "-" and a ~= "-" then
      return nil, "unknown option " .. a
    else
      break
    end
    if err then return nil, err end
    i = i + 1
  end
  o.script = args[i]
  if o.script == nil then return nil, "no workflow script given" end
  table.move(args, i + 1, #args, 1, o.args)
  if o.resume and not o.joblog then return nil, "--resume needs --joblog FILE" end
  return o
end

local function is_tty(fd)
  local ok, posix = pcall(require, "posix.unistd")
  if ok and posix.isatty then return posix.isatty(fd) == 1 end
  return os.execute("test -t " .. fd) == true  -- no redirection: it tests fd
end

-- Runs the script described by o; returns the exit status.
local function run(o, weft)
  local core = require "weft.core"
  local progress = not o.quiet and (o.progress == true or (o.progress == nil and is_tty(2)))
  local root, cancel_root = weft.with_cancel(weft.background())
  local signals = core._catch_signals(root)  -- before any other thread starts
  local deadline_ctx = root
  if o.timeout then
    local d, err = weft.duration(o.timeout)
    if not d then return usage_error("--timeout: " .. err) end
    deadline_ctx = weft.with_timeout(root, d)
  end
  weft.root = function() return deadline_ctx end
  if o.workers then weft.set_default_workers(o.workers) end

  local run_log = require "weft.runlog"
  local log, lerr = run_log.start {
    joblog = o.joblog, resume = o.resume,
    progress = progress,
  }
  if not log then
    io.stderr:write("weft: ", lerr, "\n")
    return 2
  end

  local chunk, err
  if o.code then
    chunk, err = load(o.code, "=(command line)", "t")
  else
    chunk, err = loadfile(o.script, "t")
  end
  if not chunk then  -- a file that cannot be read is a usage error
    log:finish()
    io.stderr:write("weft: ", err, "\n")
    local readable = o.script and io.open(o.script, "r")
    if readable then readable:close() end
    return (o.code or not readable) and 2 or 1
  end
  _G.arg = { [0] = o.script or "-e" }
  for k, v in ipairs(o.args) do _G.arg[k] = v end

  local ok, rerr = xpcall(chunk, function(e)
    if type(e) ~= "string" then return e end
    local tb = debug.traceback(e, 2)  -- without the command's own frames
    local cut = tb:find("\n\t%[C%]: in function 'xpcall'")
    return cut and tb:sub(1, cut - 1) or tb
  end, table.unpack(o.args))
  log:finish()
  local sig = signals:received()
  cancel_root()
  local status = 0
  if sig then
    status = sig == "SIGINT" and 130 or 143
  elseif deadline_ctx:err() == weft.DEADLINE_EXCEEDED and (not ok or log.failed > 0) then
    status = 124
  elseif not ok then
    status = 1
  end
  if not ok then
    local msg = rerr
    if type(msg) ~= "string" then
      local mt = getmetatable(msg)
      msg = (mt and mt.__tostring) and tostring(msg) or ("(error object is a %s value)"):format(type(msg))
    end
    if status == 124 then
      io.stderr:write("weft: timed out after ", o.timeout, "\n")
    elseif sig then
      io.stderr:write("weft: ", sig == "SIGINT" and "interrupted" or "terminated", "\n")
    end
    if status == 1 or not o.quiet then io.stderr:write("weft: ", msg, "\n") end
  elseif status == 124 then
    io.stderr:write("weft: timed out after ", o.timeout, "\n")
  end
  return status
end

--- Runs the command with the argument list args; returns the exit status.
function M.main(args)
  local weft = require "weft"
  local cmd = args[1]
  if cmd == nil or cmd == "--help" or cmd == "-h" or cmd == "help" then
    io.stdout:write(USAGE)
    return cmd == nil and 2 or 0
  end
  if cmd == "--version" or cmd == "version" then
    io.stdout:write("weft ", weft._VERSION, " (", _VERSION, ")\n")
    return 0
  end
  if cmd ~= "run" then return usage_error("unknown command '" .. cmd .. "'") end
  local o, err = parse_run(table.move(args, 2, #args, 1, {}))
  if not o then return usage_error(err) end
  if o.help then io.stdout:write(USAGE) return 0 end
  if o.version then io.stdout:write("weft ", weft._VERSION, " (", _VERSION, ")\n") return 0 end
  return run(o, weft)
end

return M
