--- weft.copy against a plain Lua deep copy in one state (issue target:
-- within 3x).  The value: a 10,000-element array of small tables, then the
-- same with a closure of 5 upvalues beside it.
local weft = require "weft"

local function make_items()
  local items = {}
  for i = 1, 10000 do
    items[i] = { id = i, name = "item" .. i, score = i * 0.5, tags = { "a", "b" } }
  end
  return items
end

local function make_closure()
  local a, b, c, d, e = 1, "two", { 3 }, 4.5, true
  return function(x) return x + a, b, c[1], d, e end
end

-- What a careful Lua programmer writes: cycles and aliasing kept, raw
-- access, metatables carried along.
local function deep_copy(v, seen)
  if type(v) ~= "table" then return v end
  local r = seen[v]
  if r then return r end
  r = {}
  seen[v] = r
  for k, x in next, v do r[deep_copy(k, seen)] = deep_copy(x, seen) end
  return setmetatable(r, getmetatable(v))
end

local items = make_items()
local value = { items = items, fn = make_closure() }

return {
  baseline = "lua deep copy, 10,000 small tables",
  repeats = 11,
  { name = "lua deep copy, 10,000 small tables", n = 1,
    run = function() return deep_copy(items, {}) end },
  { name = "weft.copy, 10,000 small tables", n = 1,
    run = function() return weft.copy(items) end },
  { name = "weft.copy, the tables + a closure of 5 upvalues", n = 1,
    run = function() return weft.copy(value) end },
}
