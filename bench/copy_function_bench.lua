--- Copying a closure with 5 upvalues: weft.copy against what Lua itself
-- offers in one state, load(string.dump(f)) and setting the upvalues.
local weft = require "weft"

local a, b, c, d, e = 1, "two", { 3 }, 4.5, true
local function f(x) return x + a, b, c[1], d, e end

local function lua_copy(fn)
  local g = load(string.dump(fn), nil, "b")
  for i = 1, 5 do debug.setupvalue(g, i, select(2, debug.getupvalue(fn, i))) end
  return g
end

return {
  baseline = "lua load(string.dump(f)) + 5 upvalues",
  repeats = 11,
  { name = "lua load(string.dump(f)) + 5 upvalues", n = 10000,
    run = function(n) for _ = 1, n do lua_copy(f) end end },
  { name = "weft.copy(f)", n = 10000,
    run = function(n) for _ = 1, n do weft.copy(f) end end },
}
