--- The weft command's run log: the progress line and the job log.
--
-- It watches the groups, maps and eaches of the main state (weft.group's
-- observer).  The job log has one JSON object per line and per finished
-- job (a map's items count one by one):
--
--   {"group":"map#1","label":"a.png","index":1,"start":12.5,"duration":0.031,
--    "status":"ok"}
--
-- status is "ok", "error" (the job raised), "panic" (the job died outside
-- its function: hard cancel, a closed pool) or "canceled" (its context
-- ended); "error" carries the message.  start is on weft.now()'s clock.
-- Groups are named by their `name` option, else "group#N", "map#N",
-- "each#N" in the order the run makes them, so a rerun of the same script
-- names them the same and --resume can skip the map items whose label
-- already succeeded.
local core = require "weft.core"
local group = require "weft.group"

local M = {}

local Log = {}
Log.__index = Log

local ESC = {
  ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
}

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return ESC[c] or ("\\u%04x"):format(c:byte())
  end) .. '"'
end

local function json_value(v)
  local t = type(v)
  if t == "string" then return json_string(v) end
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    if math.type(v) == "integer" then return tostring(v) end
    return ("%.6f"):format(v):gsub("0+$", ""):gsub("%.$", ".0")
  end
  if t == "boolean" then return tostring(v) end
  return "null"
end

local FIELDS = { "group", "label", "index", "start", "duration", "status", "error" }

local function json_line(rec)
  local parts = {}
  for _, k in ipairs(FIELDS) do
    if rec[k] ~= nil then parts[#parts + 1] = json_string(k) .. ":" .. json_value(rec[k]) end
  end
  return "{" .. table.concat(parts, ",") .. "}\n"
end

-- Reads the flat JSON objects of a job log (what json_line writes); lines
-- that do not parse are skipped.
local UNESC = { b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

local function parse_line(line)
  local rec, pos = {}, line:find("{", 1, true)
  if not pos then return nil end
  pos = pos + 1
  while true do
    local k, e = line:match('^%s*"([%w_]+)"%s*:%s*()', pos)
    if not k then return rec end
    pos = e
    local c = line:sub(pos, pos)
    if c == '"' then
      local buf, i = {}, pos + 1
      while true do
        local ch = line:sub(i, i)
        if ch == "" then return nil end
        if ch == '"' then break end
        if ch == "\\" then
          local n = line:sub(i + 1, i + 1)
          if n == "u" then
            buf[#buf + 1] = utf8.char(tonumber(line:sub(i + 2, i + 5), 16) or 63)
            i = i + 6
          else
            buf[#buf + 1] = UNESC[n] or n
            i = i + 2
          end
        else
          buf[#buf + 1] = ch
          i = i + 1
        end
      end
      rec[k] = table.concat(buf)
      pos = i + 1
    else
      local v, e2 = line:match("^([^,}%s]+)()", pos)
      if not v then return nil end
      rec[k] = math.tointeger(tonumber(v)) or tonumber(v)
      pos = e2
    end
    local sep, e3 = line:match("^%s*([,}])()", pos)
    if sep ~= "," then return rec end
    pos = e3
  end
end

local function key(g, label)
  return tostring(g) .. "\0" .. tostring(label)
end

--- Starts the run log: opts.joblog (a file name), opts.resume, opts.progress.
-- Returns the log, or nil and a message.
function M.start(opts)
  local log = setmetatable({ failed = 0, done = 0, timing = opts.joblog ~= nil }, Log)
  if opts.joblog then
    if opts.resume then
      local fh = io.open(opts.joblog, "r")
      if fh then
        log.resume = {}
        for line in fh:lines() do
          local rec = parse_line(line)
          if rec and rec.status == "ok" and rec.group and rec.label ~= nil then
            log.resume[key(rec.group, rec.label)] = true
          end
        end
        fh:close()
      end
    end
    local fh, err = io.open(opts.joblog, opts.resume and "a" or "w")
    if not fh then return nil, "--joblog: " .. err end
    fh:setvbuf("line")
    log.fh = fh
  end
  if opts.progress then log.bar = core._progress() end
  group.observe(log)
  return log
end

function Log:submitted(n)
  if self.bar then self.bar:add(n, 0, 0) end
end

function Log:finished(rec)
  self.done = self.done + 1
  local failed = rec.status ~= "ok"
  if failed then self.failed = self.failed + 1 end
  if self.bar then self.bar:add(0, 1, failed and 1 or 0) end
  if self.fh then self.fh:write(json_line(rec)) end
end

-- Items of a batch finished without a record each (no job log kept).
function Log:finished_batch(n, failed)
  failed = failed or 0
  self.done = self.done + n
  self.failed = self.failed + failed
  if self.bar then self.bar:add(0, n, failed) end
end

function Log:skip(g, label)
  return self.resume ~= nil and self.resume[key(g, label)] == true
end

--- Ends the log: clears the progress line, closes the file.  Idempotent.
function Log:finish()
  group.observe(nil)
  if self.bar then self.bar:stop() self.bar = nil end
  if self.fh then self.fh:close() self.fh = nil end
end

M.parse_line = parse_line
M.json_line = json_line

return M
