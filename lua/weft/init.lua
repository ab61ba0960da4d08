--- weft: job orchestration for Lua 5.4 (see README.md and DESIGN.md).
-- The C engine is weft.core; this module adds the Lua half on top of it.
local core = require "weft.core"

-- The LPeg duration grammar costs about 33 KB in every Lua state, and many
-- worker states never parse a duration string: load it on first use.
local function parse_duration(s)
  return require("weft.duration").parse(s)
end

core._bind_duration(parse_duration)

local weft = {}
for k, v in pairs(core) do
  if k:sub(1, 1) ~= "_" then weft[k] = v end
end
weft._VERSION = core._VERSION

--- Seconds for a duration: a number (seconds, >= 0) or a string such as
-- "250ms", "1.5s", "2m30s". Returns nil and a message for a malformed string.
function weft.duration(d)
  local t = type(d)
  if t == "number" then
    if d ~= d or d < 0 then return nil, "duration must be a number >= 0" end
    return d
  elseif t == "string" then
    return parse_duration(d)
  end
  error(("bad argument #1 to 'duration' (number or string expected, got %s)"):format(t), 2)
end

--- The run's root context: under the weft command, canceled by SIGINT or
-- SIGTERM and ended by --timeout; elsewhere the background context.
function weft.root()
  return core.background()
end

--- weft.on_host(fn, ...): from a job, asks the host thread to run
-- fn(...) (in its next weft_runtime_poll or weft.poll; fn and the values
-- are copied) and waits for it, parked: returns true and fn's results, or
-- false and the error (with its traceback).  The host never waits for it.
function weft.on_host(fn, ...)
  return core._host_call(fn, ...):wait()
end

--- weft.exec(ctx, cmd, opts): cmd may also be a command template (a
-- string, see weft.template): expanded with opts.item and opts.index into
-- an argv, never run by a shell (unless opts.shell).  Without opts.item, a
-- template may hold no replacement string.
local core_exec = core.exec
function weft.exec(ctx, cmd, opts)
  if type(cmd) ~= "string" or (opts and opts.shell) then
    return core_exec(ctx, cmd, opts)
  end
  opts = opts or {}
  local template = require "weft.template"
  local t, err = template.parse(cmd)
  if not t then error(err, 2) end
  local item, index = opts.item, opts.index
  local argv
  if item == nil then
    if not t.implicit then
      error("bad argument #2 to 'exec' (the template has replacement strings "
        .. "but opts.item is nil)", 2)
    end
    argv = t:expand("", index or 1)
    argv[#argv] = nil  -- the implicit {} of an item we do not have
  else
    argv, err = t:expand(item, index or 1)
    if not argv then return nil, err end
  end
  local rest = {}
  for k, v in pairs(opts) do
    if k ~= "item" and k ~= "index" then rest[k] = v end
  end
  return core_exec(ctx, argv, rest)
end

-- The Lua-written parts load on first use, as the duration grammar does:
-- most worker states never touch them.
local lazy = {
  group = "weft.group", map = "weft.group", each = "weft.group",
  default_pool = "weft.group", set_default_workers = "weft.group",
  pipeline = "weft.pipeline", template = "weft.template",
}
setmetatable(weft, {
  __index = function(t, k)
    local m = lazy[k]
    if m == nil then return nil end
    local mod = require(m)
    local v = mod[k]
    if v == nil and m == "weft." .. k then v = mod end  -- weft.template
    rawset(t, k, v)
    return v
  end,
})

return weft
