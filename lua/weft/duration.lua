--- weft.duration: the duration grammar (LPeg).
--
-- A duration is one or more <number><unit> terms, with no spaces or signs:
-- "250ms", "1.5s", "2m30s", "1h2m3.5s", ".5s", "10us".
-- Units: h, m, s, ms, us (also "µs", with U+00B5 or U+03BC), ns.
-- A number is decimal digits with at most one decimal point and at least
-- one digit ("1.5", ".5"; not "1.", not "1e3").  Every term needs a unit,
-- "0" included.  Terms may repeat and come in any order ("1s1h").
--
-- parse(s) returns the duration in seconds: an integer when it is a whole
-- number of seconds ("1h" -> 3600, "1000ms" -> 1), else a float
-- ("250ms" -> 0.25).  The terms are summed exactly in decimal and rounded
-- once, so "0.3ms" gives the float nearest 0.0003 (inputs past 15
-- significant digits fall back to float arithmetic).  A malformed string
-- gives nil and a message naming the input, the reason and the column
-- (counted in characters):
--   invalid duration "1x": unknown unit "x" at column 2
-- A non-string argument raises.  The grammar is compiled once, at load.
local lpeg = require "lpeg"
local shared = require "weft.grammar"

local P, R, S, C, Cc, Cp, Ct = lpeg.P, lpeg.R, lpeg.S, lpeg.C, lpeg.Cc, lpeg.Cp, lpeg.Ct
local match = lpeg.match
local tointeger, max, huge = math.tointeger, math.max, math.huge

local duration = {}

-- Units: seconds per unit as mult / 10^exp.
local units = {
  h = { mult = 3600, exp = 0 },
  m = { mult = 60, exp = 0 },
  s = { mult = 1, exp = 0 },
  ms = { mult = 1, exp = 3 },
  us = { mult = 1, exp = 6 },
  ["µs"] = { mult = 1, exp = 6 }, -- U+00B5 micro sign
  ["μs"] = { mult = 1, exp = 6 }, -- U+03BC Greek small letter mu
  ns = { mult = 1, exp = 9 },
}

-- The grammar ------------------------------------------------------------

-- Captures are term tables { digits = "15", frac = 1, unit = "s" } and, at
-- the first problem, one failure table { fail = reason, pos = byte } that
-- swallows the rest of the input.

local digit = R "09"
local word_char = R("az", "AZ") + R "\128\255" -- letters, and non-ASCII bytes (µ)
local word = word_char ^ 1
local any_char = R "\0\127" + R "\194\244" * R "\128\191" ^ 0 + P(1) -- one UTF-8 character
local rest = shared.rest

-- unit names longest first, and a unit must end where the word ends
local unit = (P "ms" + P "us" + P "µs" + P "μs" + P "ns" + S "hms") * -word_char

local failure, fail = shared.failure, shared.fail

local quote = shared.quote

local function unexpected(text)
  return "unexpected " .. quote(text)
end

local function term_capture(int, frac, u)
  if type(u) == "table" then return u end -- a failure after the number
  return { int = int, frac = frac, unit = u }
end

local fraction = P "." * C(digit ^ 1)
local number = C(digit ^ 1) * (fraction + Cc "") + Cc "" * fraction
-- "1.", "." and "1.s": no digit after the point
local dangling_point = digit ^ 0 * P "." * Cp() * -digit * rest / failure "expected a digit after the decimal point"

local bad_unit = fail(S "eE" * S "+-" ^ -1 * digit, "exponents are not allowed")
  + fail(C(word), function(w) return "unknown unit " .. quote(w) end)
  + fail(-P(1), "missing unit")
  + fail(C(any_char), unexpected)

local term = dangling_point + number * (C(unit) + bad_unit) / term_capture

-- when the input does not start with a number
local no_number = fail(-P(1), "empty string")
  + fail(P "-" * (digit + "."), "negative durations are not allowed")
  + fail(C(unit), function(u) return "missing number before unit " .. quote(u) end)
  + fail(C(word), function(w) return "expected a number, found " .. quote(w) end)
  + fail(C(any_char), unexpected)

local grammar = Ct(term ^ 1 * (-P(1) + fail(C(any_char), unexpected)) + no_number)

-- Evaluation --------------------------------------------------------------

local EXACT = 2 ^ 53 -- integers below this are exact as floats
local pow10 = { [0] = 1 }
for i = 1, 18 do pow10[i] = pow10[i - 1] * 10 end

-- The terms summed exactly as the decimal fraction total / 10^scale, when
-- that fits in 53 bits (one rounding at the end); else nil.
local function exact_sum(terms)
  local scale = 0
  for i = 1, #terms do
    local t = terms[i]
    if #t.int + #t.frac > 15 then return nil end
    scale = max(scale, #t.frac + units[t.unit].exp)
  end
  if scale > 15 then return nil end
  local total = 0
  for i = 1, #terms do
    local t = terms[i]
    local u = units[t.unit]
    local n = tointeger(tonumber(t.int .. t.frac)) * u.mult
    local shift = scale - #t.frac - u.exp
    if n * 1.0 * pow10[shift] >= EXACT then return nil end
    total = total + n * pow10[shift]
    if total >= EXACT then return nil end
  end
  local div = pow10[scale]
  if total % div == 0 then return total // div end
  return total / div
end

-- Past 53 bits: float arithmetic, term by term.
local function float_sum(terms)
  local total = 0.0
  for i = 1, #terms do
    local t = terms[i]
    local u = units[t.unit]
    local n = tonumber((t.int == "" and "0" or t.int) .. "." .. t.frac .. "0")
    total = total + n * u.mult / 10.0 ^ u.exp
  end
  return total
end

-- Column of byte pos, counted in UTF-8 characters when s is valid UTF-8.
local function column(s, pos)
  return (utf8.len(s, 1, pos - 1) or pos - 1) + 1
end

--- Seconds for the duration string s, or nil and a message.
function duration.parse(s)
  if type(s) ~= "string" then
    error(("bad argument #1 to 'parse' (string expected, got %s)"):format(type(s)), 2)
  end
  local caps = match(grammar, s)
  local last = caps[#caps]
  if last.fail then
    local where = s == "" and "" or (" at column %d"):format(column(s, last.pos))
    return nil, ("invalid duration %s: %s%s"):format(quote(s), last.fail, where)
  end
  local seconds = exact_sum(caps) or float_sum(caps)
  if seconds == huge then
    return nil, ("invalid duration %s: out of range"):format(quote(s))
  end
  return seconds
end

return duration
