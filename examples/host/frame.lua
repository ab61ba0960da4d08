-- examples/host/frame.lua: the Lua half of the example host (host.c).
--
-- host.c calls start(n) once, then frame(i) every frame until it returns
-- true, then summary().  Nothing here blocks: jobs go out through
-- pool:try_submit (a full pool answers weft.SATURATED at once, and the
-- rest waits for a later frame) and come back through future:on_done,
-- whose callbacks run in this state during the host's weft_runtime_poll.
--
-- From the host: vec2(x, y) and host_noise(x, y) in every state (the C
-- host's init_state puts them in each worker), and player_position() in
-- this state only, so jobs ask for it with weft.on_host.
local weft = require "weft"

local DEFAULT_JOBS = 5000
local ASK_HOST_EVERY = 500   -- jobs 1, 501, 1001... ask the host for the player
local PLAYER_RADIUS = 10     -- host.c moves the player on this circle
local SUBMIT_BUDGET = 0.002  -- seconds of submitting per frame, at most

-- Four octaves of the host's noise.  No upvalue but _ENV: each state loads
-- it once, and it calls that state's own host_noise.
local function fbm(x, y)
  local sum, amp = 0, 0.5
  for _ = 1, 4 do
    sum = sum + amp * host_noise(x, y)
    x, y, amp = x * 2, y * 2, amp * 0.5
  end
  return sum
end

-- A wind field sample: p (a vec2) in, a vec2 out.  Runs in a worker as
-- fn(ctx, p); p and the result cross states through the vec2 copy hooks.
local function wind_at(_, p)
  local x, y = p:x(), p:y()
  return vec2(fbm(x, y), fbm(x + 17.3, y - 4.1))
end

-- The same, and the player's position, asked of the host thread: the job
-- parks until the host's next poll runs the function there.
local function wind_near_player(ctx, p)
  local ok, player = weft.on_host(function() return player_position() end)
  if not ok then error("on_host: " .. tostring(player), 0) end
  return wind_at(ctx, p), player
end

local pool = weft.default_pool()   -- the runtime's pool (2 workers)
local ctx = weft.background()

local jobs, next_job = 0, 1
local seen = {}                    -- seen[i]: job i's completion arrived
local settled, completed, failed, duplicates = 0, 0, 0, 0
local host_answers, saturated = 0, 0

local function point(i)
  return vec2((i % 100) * 0.37, (i // 100) * 0.37)
end

local function record_failure(i, err)
  failed = failed + 1
  if failed <= 3 then print(("job %d failed: %s"):format(i, tostring(err))) end
end

-- The on_done callback of job i: checks the result against the same
-- computation done here, in the host state.
local function on_done_for(i)
  return function(ok, wind, player)
    if seen[i] then
      duplicates = duplicates + 1
      return
    end
    seen[i] = true
    settled = settled + 1
    if not ok then return record_failure(i, wind) end
    local p = point(i)
    local want = wind_at(nil, p)
    if getmetatable(wind) ~= getmetatable(p) or wind:x() ~= want:x()
        or wind:y() ~= want:y() then
      return record_failure(i, "wrong result " .. tostring(wind))
    end
    if i % ASK_HOST_EVERY == 1 then
      if getmetatable(player) ~= getmetatable(p)
          or math.abs(player:len() - PLAYER_RADIUS) > 1e-9 then
        return record_failure(i, "wrong player " .. tostring(player))
      end
      host_answers = host_answers + 1
    end
    completed = completed + 1
  end
end

-- Submits jobs until the pool is full or the frame's submit budget is
-- spent (the rest go on a later frame).
local function pump()
  local deadline = weft.now() + SUBMIT_BUDGET
  while next_job <= jobs and weft.now() < deadline do
    local i = next_job
    local fn = i % ASK_HOST_EVERY == 1 and wind_near_player or wind_at
    local fut, err = pool:try_submit(ctx, fn, point(i))
    if fut then
      fut:on_done(on_done_for(i))
    elseif err == weft.SATURATED then
      saturated = saturated + 1
      return
    else                           -- closed, or a value could not be copied
      seen[i] = true
      settled = settled + 1
      record_failure(i, err)
    end
    next_job = i + 1
  end
end

local M = {}

function M.start(n)
  jobs = (n and n > 0) and n or DEFAULT_JOBS
  pump()
end

function M.frame(_)
  pump()
  return next_job > jobs and settled == jobs
end

function M.summary()
  return {
    jobs = jobs, completed = completed, failed = failed,
    duplicates = duplicates, host_answers = host_answers,
    saturated = saturated,
  }
end

return M
