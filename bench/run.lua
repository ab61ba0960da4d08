--- bench/run.lua: runs every bench/*_bench.lua and prints a table per file.
--
-- Usage: lua5.4 bench/run.lua [filter]   (make bench [BENCH=filter])
-- Only files whose name contains filter run.  Benchmarks are reported,
-- never asserted: the numbers go into the README's performance table.
--
-- A bench file returns a table of cases, or nothing when it prints its own
-- results (then running it is all the harness does).  The shape:
--
--   return {
--     baseline = "plain table copy",  -- name of the case the others are
--                                      -- compared with; default: the first
--     repeats = 7,                     -- timed runs per case (median kept);
--                                      -- default 5, after one warm-up run
--     { name = "plain table copy",     -- cases run and print in this order
--       n = 10000,                     -- operations per run (default 1)
--       setup = function() return state end,    -- optional, once per case
--       run = function(n, state) ... end,       -- does n operations
--       teardown = function(state) end },       -- optional
--     { name = "weft.copy", n = 10000, run = function(n) ... end },
--   }
--
-- For each case the harness prints the median time of one run, the time
-- per operation, and the ratio of its median to the baseline's (x2.00 is
-- twice as slow).  If run returns a string, it is printed as a note.
-- Times are wall-clock: weft.now() when weft loads, else os.clock (CPU).
-- A case that raises is reported and the others still run; the exit status
-- is then nonzero.

local ok_weft, weft = pcall(require, "weft")
local now = ok_weft and weft.now or os.clock
local clock_name = ok_weft and "wall clock (weft.now)" or "CPU time (os.clock; weft did not load)"

local function list_bench_files(filter)
  local files = {}
  local p = assert(io.popen("ls bench/*_bench.lua 2>/dev/null"))
  for line in p:lines() do
    if not filter or line:find(filter, 1, true) then files[#files + 1] = line end
  end
  p:close()
  table.sort(files)
  return files
end

local median = dofile("bench/stats.lua").median

local function format_time(t)
  if t >= 1 then return ("%.3f s"):format(t) end
  if t >= 1e-3 then return ("%.3f ms"):format(t * 1e3) end
  if t >= 1e-6 then return ("%.3f us"):format(t * 1e6) end
  return ("%.1f ns"):format(t * 1e9)
end

local function time_case(case, repeats)
  local n = case.n or 1
  local state
  if case.setup then state = case.setup() end
  local times, note = {}, nil
  local ok, err = pcall(function()
    case.run(n, state) -- warm-up
    for i = 1, repeats do
      collectgarbage "collect"
      local t0 = now()
      local r = case.run(n, state)
      times[i] = now() - t0
      if type(r) == "string" then note = r end
    end
  end)
  if case.teardown then pcall(case.teardown, state) end
  if not ok then return nil, tostring(err) end
  return median(times), note, n
end

local function run_file(path)
  print(("## %s"):format(path))
  local chunk, lerr = loadfile(path)
  if not chunk then
    print("error: " .. lerr)
    return false
  end
  local ok, spec = pcall(chunk)
  if not ok then
    print("error: " .. tostring(spec))
    return false
  end
  if spec == nil then return true end -- printed its own results
  if type(spec) ~= "table" or #spec == 0 then
    print("error: a bench file returns a list of cases (or nothing)")
    return false
  end

  local repeats = spec.repeats or 5
  local baseline_name = spec.baseline or spec[1].name
  local results, all_ok = {}, true
  for i, case in ipairs(spec) do
    local m, note, n = time_case(case, repeats) -- on error: nil, message
    results[i] = { name = case.name or ("case " .. i), median = m, note = note, n = n }
    if not m then all_ok = false end
    if case.name == baseline_name then results.baseline = m end
  end

  print(("%d runs per case, median; %s"):format(repeats, clock_name))
  print()
  print("| case | median run | per op | vs baseline |")
  print("| --- | ---: | ---: | ---: |")
  for _, r in ipairs(results) do
    if not r.median then
      print(("| %s | error: %s | | |"):format(r.name, r.note))
    else
      local ratio = "-"
      if results.baseline and results.baseline > 0 then
        ratio = ("x%.2f"):format(r.median / results.baseline)
      end
      if r.name == baseline_name then ratio = "baseline" end
      local per_op = r.n > 1 and format_time(r.median / r.n) or "-"
      local line = ("| %s | %s | %s | %s |"):format(r.name, format_time(r.median), per_op, ratio)
      if r.note then line = line .. " " .. r.note end
      print(line)
    end
  end
  print()
  return all_ok
end

local files = list_bench_files(arg and arg[1] ~= "" and arg[1] or nil)
if #files == 0 then
  print("no bench/*_bench.lua" .. (arg and arg[1] and (" matching " .. arg[1]) or ""))
  os.exit(0)
end
local all_ok = true
for _, path in ipairs(files) do
  if not run_file(path) then all_ok = false end
end
os.exit(all_ok and 0 or 1)
