--- bench/stats.lua: what the bench files share (run from the repository
-- root, as make bench does: local median = dofile("bench/stats.lua").median).
local stats = {}

-- The median of a list of numbers (the list is left as it was).
function stats.median(xs)
  local s = { table.unpack(xs) }
  table.sort(s)
  local m = #s // 2
  if #s % 2 == 1 then return s[m + 1] end
  return (s[m] + s[m + 1]) / 2
end

return stats
