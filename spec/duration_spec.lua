-- Durations: the LPeg grammar (weft.duration) and weft.duration(d).

local parse = require("weft.duration").parse

-- cases shared by both entry points: input, seconds, math.type
local good = {
  { "250ms", 0.25, "float" },
  { "1.5s", 1.5, "float" },
  { "2m30s", 150, "integer" },
  { "1h", 3600, "integer" },
  { "10us", 1e-5, "float" },
  { "10µs", 1e-5, "float" }, -- U+00B5
  { "10μs", 1e-5, "float" }, -- U+03BC
  { "0s", 0, "integer" },
  { "1h2m3.5s", 3723.5, "float" },
  { ".5s", 0.5, "float" },
  { "1ns", 1e-9, "float" },
  { "1000ms", 1, "integer" },
  { "0.5m", 30, "integer" },
  { "0.3ms", 0.0003, "float" },
  { "1.25h", 4500, "integer" },
  { "007s", 7, "integer" },
  { "1m0.001s", 60.001, "float" },
  { "3s500ms", 3.5, "float" },
  { "1h1h", 7200, "integer" },
  { "1s1ms1us1ns", 1.001001001, "float" },
}

-- input, a piece of the message that must be there
local bad = {
  { "1x", 'invalid duration "1x": unknown unit "x" at column 2' },
  { "", 'invalid duration "": empty string' },
  { "-1s", 'invalid duration "-1s": negative durations are not allowed at column 1' },
  { "5", 'invalid duration "5": missing unit at column 2' },
  { "0", 'invalid duration "0": missing unit at column 2' },
  { "1h2", 'invalid duration "1h2": missing unit at column 4' },
  { "1.2.3s", 'invalid duration "1.2.3s": unexpected "." at column 4' },
  { " 1s", 'invalid duration " 1s": unexpected " " at column 1' },
  { "1s ", 'invalid duration "1s ": unexpected " " at column 3' },
  { "1 s", 'invalid duration "1 s": unexpected " " at column 2' },
  { "s", 'invalid duration "s": missing number before unit "s" at column 1' },
  { "ms", 'missing number before unit "ms" at column 1' },
  { "sec", 'expected a number, found "sec" at column 1' },
  { "1sec", 'unknown unit "sec" at column 2' },
  { "1S", 'unknown unit "S" at column 2' },
  { "1e3s", 'invalid duration "1e3s": exponents are not allowed at column 2' },
  { "1E-3s", "exponents are not allowed at column 2" },
  { "1.s", "expected a digit after the decimal point at column 3" },
  { "1.", "expected a digit after the decimal point at column 3" },
  { ".", "expected a digit after the decimal point at column 2" },
  { "+1s", 'unexpected "+" at column 1' },
  { "1s-2s", 'unexpected "-" at column 3' },
  { "1s,2s", 'unexpected "," at column 3' },
  { "1µx", 'unknown unit "µx" at column 2' },
  { "1µs2x", 'unknown unit "x" at column 5' }, -- columns count characters
  { "1d", 'unknown unit "d" at column 2' },
  { "1s\n", 'invalid duration "1s\\n": unexpected "\\n" at column 3' },
  { "1s\0", 'unexpected "\\000" at column 3' },
  { "-", 'unexpected "-" at column 1' },
  { ("9"):rep(400) .. "h", "out of range" },
}

local function check_good(fn)
  for _, case in ipairs(good) do
    local input, want, kind = case[1], case[2], case[3]
    local got, err = fn(input)
    assert.is_nil(err, input)
    assert.are.equal(want, got, input)
    assert.are.equal(kind, math.type(got), input)
  end
end

local function check_bad(fn)
  for _, case in ipairs(bad) do
    local input, want = case[1], case[2]
    local got, err = fn(input)
    assert.is_nil(got, input)
    assert.is_string(err, input)
    assert.truthy(err:find(want, 1, true), ("%q: got %q, want %q"):format(input, err, want))
  end
end

describe("weft.duration module", function()
  it("parses good durations into seconds", function()
    check_good(parse)
  end)

  it("rejects malformed strings with nil and a message naming the input", function()
    check_bad(parse)
  end)

  it("rounds each decimal once (exact sums, correctly rounded)", function()
    assert.are.equal(0.1, parse "100ms")
    assert.are.equal(0.3, parse "300ms")
    assert.are.equal(1.1, parse "1s100ms")
    assert.are.equal(0.123456789, parse "123456789ns")
    assert.are.equal(0.000001, parse "1us")
  end)

  it("keeps precision for long numbers, falling back to floats", function()
    local v = parse "99999999999999999999h"
    assert.truthy(math.abs(v - 3.6e23) / 3.6e23 < 1e-15)
    assert.are.equal(1e20, parse "100000000000000000000s")
    assert.are.equal(2 ^ 53, parse "9007199254740992s")
    assert.are.equal("float", math.type(parse "100000000000000000000s"))
  end)

  it("raises for a non-string argument", function()
    assert.has_error(function() parse(1) end, "bad argument #1 to 'parse' (string expected, got number)")
    assert.has_error(function() parse() end, "bad argument #1 to 'parse' (string expected, got nil)")
  end)

  it("handles long inputs without trouble", function()
    assert.are.equal(100000, parse(("1s"):rep(100000)))
    local _, err = parse(("1s"):rep(1000) .. "1x")
    assert.truthy(err:find('unknown unit "x" at column 2002', 1, true))
  end)
end)

describe("weft.duration(d)", function()
  local ok, weft = pcall(require, "weft")

  it("loads (needs the C module: make)", function()
    assert(ok, weft)
  end)

  if not ok then return end

  it("parses good duration strings", function()
    check_good(weft.duration)
  end)

  it("returns nil and a message for malformed strings", function()
    check_bad(weft.duration)
  end)

  it("passes numbers through", function()
    assert.are.equal(0, weft.duration(0))
    assert.are.equal(1.5, weft.duration(1.5))
    assert.are.equal(math.huge, weft.duration(math.huge))
    assert.are.equal("integer", math.type(weft.duration(3)))
  end)

  it("refuses negative numbers and NaN", function()
    local d, err = weft.duration(-1)
    assert.is_nil(d)
    assert.truthy(err:find(">= 0", 1, true))
    d, err = weft.duration(0 / 0)
    assert.is_nil(d)
    assert.is_string(err)
  end)

  it("raises for other types", function()
    for _, v in ipairs { true, {}, print } do
      assert.has_error(function() weft.duration(v) end,
        ("bad argument #1 to 'duration' (number or string expected, got %s)"):format(type(v)))
    end
    assert.has_error(function() weft.duration() end)
  end)
end)
