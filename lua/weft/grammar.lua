--- weft.grammar: what weft's LPeg grammars (durations, command templates)
-- share to report their first problem: a failure capture that records the
-- reason and the position and swallows the rest of the input, and the
-- quoting of offending text in messages.
local lpeg = require "lpeg"

local P, Cp = lpeg.P, lpeg.Cp

local M = {}

--- Any rest of the input.
M.rest = P(1) ^ 0

--- A capture function making the failure table { fail = reason, pos = byte };
-- reason is a string, or a function of the captured text.
function M.failure(reason)
  return function(pos, text)
    local why = reason
    if type(why) == "function" then why = why(text) end
    return { fail = why, pos = pos }
  end
end

--- pattern, then the rest of the input, as a failure at pattern's start.
function M.fail(pattern, reason)
  return Cp() * pattern * M.rest / M.failure(reason)
end

local escapes = { ["\n"] = "\\n", ["\t"] = "\\t", ["\r"] = "\\r", ['"'] = '\\"', ["\\"] = "\\\\" }

--- text in double quotes, control characters and quotes escaped.
function M.quote(text)
  return '"' .. text:gsub('[%c"\\]', function(c)
    return escapes[c] or ("\\%03d"):format(c:byte())
  end) .. '"'
end

return M
