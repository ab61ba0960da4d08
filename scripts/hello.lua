--- hello.lua: a first look at weft (make demo).
-- Contexts with deadlines, durations, and copying values between states.
local weft = require "weft"

print(("weft %s on %d CPUs"):format(weft._VERSION, weft.ncpu()))

-- Durations are numbers of seconds, or strings.
for _, d in ipairs { "250ms", "1m30s", "1.5h" } do
  print(("duration %-6s = %g s"):format(d, weft.duration(d)))
end
local _, err = weft.duration "10 minutes"
print("bad duration:  " .. err)

-- A context that ends by itself: wait for it, with a bound.
local root = weft.background()
local ctx, cancel = weft.with_timeout(root, "50ms")
local t0 = weft.now()
local done = ctx:wait "1s"
print(("waited %.0f ms: done=%s err=%q"):format((weft.now() - t0) * 1e3, done, ctx:err()))
cancel() -- canceling an ended context changes nothing: the first end wins
assert(ctx:err() == weft.DEADLINE_EXCEEDED)

-- Canceling a parent ends its children, with the cause given.
local parent, stop = weft.with_cancel(root)
local child = weft.with_timeout(parent, "1h")
stop "shutting down"
print(("child: err=%q cause=%q"):format(child:err(), child:cause()))

-- Values are copied when they cross states; weft.copy shows what arrives.
local job = { name = "resize", sizes = { 64, 128 }, ctx = child }
job.self = job
local copy = weft.copy(job)
print(("copy: new table=%s, cycle kept=%s, context shared=%s"):format(
  copy ~= job, copy.self == copy, copy.ctx == child))

-- A pool of worker threads, each with its own Lua state: fan out, fan in.
local pool <close> = assert(weft.pool { workers = 2, limit = 8, name = "demo" })
local work = weft.with_timeout(root, "10s")
local futures = {}
for i = 1, 8 do
  futures[i] = assert(pool:submit(work, function(job_ctx, n)
    local sum = 0
    for k = 1, n * 100000 do sum = sum + k % 7 end
    weft.sleep(job_ctx, "10ms") -- parks: the worker runs other jobs meanwhile
    return n, sum
  end, i))
end
for i = 1, #futures do
  local ok, n, sum = futures[i]:wait(work)
  print(("job %d: ok=%s sum=%d"):format(n, ok, sum))
end

-- A job's error is a recovered panic: reported, the worker lives on.
local ok, perr = assert(pool:submit(work, function() error("boom") end)):wait()
print(("panic recovered: ok=%s err=%s"):format(ok, perr:match("^[^\n]*")))
local s = pool:stats()
print(("stats: submitted=%d completed=%d panicked=%d"):format(s.submitted, s.completed, s.panicked))
