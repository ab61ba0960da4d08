-- weft.select (issue 4, item 5): weft.select(ctx, cases) with cases
-- { recv = ch } and { send = ch, value = v }, cases.default = true.
-- Results: i, v (receive) | i, true (send) | i, nil, weft.CLOSED | 0
-- (default, nothing ready) | nil, ctx:err().
--
-- Same rules as spec/chan_spec.lua: every wait is bounded (contexts with
-- timeouts in the main state, `await` for futures, jobs wait on contexts
-- under `root`, canceled after each test before the pools close); jobs
-- capture only copyable upvalues and report through their results.
local weft = require "weft"

local CANCELED, DEADLINE, CLOSED = weft.CANCELED, weft.DEADLINE_EXCEEDED, weft.CLOSED

-- The shared harness (spec/harness.lua), as in spec/chan_spec.lua.
local harness = dofile("spec/harness.lua").configure { root_timeout = 120 }
local VARIANT, SANITIZED = harness.VARIANT, harness.SANITIZED
local bounded, await, new_pool, parked = harness.bounded, harness.await, harness.new_pool, harness.parked
local elapsed_since = harness.elapsed_since

local root
before_each(function() root = harness.start() end)
after_each(harness.finish)

-------------------------------------------------------------------------------
describe("weft.select cases", function()
  it("takes a ready receive case: i, v", function()
    local a, b = weft.chan(1), weft.chan(1)
    assert.is_true(b:try_send({ "from b" }))
    assert.same({ 2, { "from b" } }, { weft.select(bounded(), { { recv = a }, { recv = b } }) })
    assert.equal(0, b:len())
    assert.is_true(a:try_send(false))
    assert.same({ 1, false }, { weft.select(bounded(), { { recv = a }, { recv = b } }) })
  end)

  it("takes a ready send case: i, true; the value is copied when sent", function()
    local full, room = weft.chan(1), weft.chan(1)
    assert.is_true(full:try_send("old"))
    local t = { n = 1 }
    assert.same({ 2, true }, { weft.select(bounded(), { { send = full, value = "x" }, { send = room, value = t } }) })
    t.n = 2
    local got = room:try_recv()
    assert.same({ n = 1 }, got)
    assert.are_not.equal(t, got)
    assert.equal("old", full:try_recv())
    assert.same({ nil, "empty" }, { full:try_recv() })
  end)

  it("mixes receive and send cases: only the ready one is taken, the other does nothing", function()
    local empty, room = weft.chan(1), weft.chan(1)
    assert.same({ 2, true }, { weft.select(bounded(), { { recv = empty }, { send = room, value = 5 } }) })
    assert.equal(5, room:try_recv())
    assert.is_true(empty:try_send("here"))
    local full = weft.chan(1)
    assert.is_true(full:try_send(0))
    assert.same({ 1, "here" }, { weft.select(bounded(), { { recv = empty }, { send = full, value = 6 } }) })
    assert.equal(0, full:try_recv())
    assert.same({ nil, "empty" }, { full:try_recv() })
  end)

  it("default: returns 0 when nothing is ready, takes a ready case otherwise", function()
    local a, u = weft.chan(1), weft.chan()
    local full = weft.chan(1)
    assert.is_true(full:try_send(1))
    local cases = { { recv = a }, { recv = u }, { send = u, value = 1 }, { send = full, value = 2 }, default = true }
    local t0 = weft.now()
    assert.same({ 0 }, { weft.select(bounded(), cases) })
    assert.is_true(elapsed_since(t0) < 1)
    -- nothing was sent by the refused send cases
    assert.same({ nil, "empty" }, { u:try_recv() })
    assert.equal(1, full:len())
    assert.is_true(a:try_send("now"))
    assert.same({ 1, "now" }, { weft.select(bounded(), cases) })
    -- an empty case list with default
    assert.same({ 0 }, { weft.select(bounded(), { default = true }) })
  end)

  it("default with a done ctx never blocks", function()
    local ctx, cancel = weft.with_cancel(root)
    cancel()
    local a = weft.chan(1)
    local t0 = weft.now()
    local r = table.pack(weft.select(ctx, { { recv = a }, default = true }))
    assert.is_true(elapsed_since(t0) < 1)
    -- either answer is fine: nothing ready (0) or the ctx's end
    assert.is_true((r[1] == 0 and r.n == 1) or (r[1] == nil and r[2] == CANCELED), tostring(r[1]))
  end)

  it("a closed channel: receive case drains, then i, nil, CLOSED; send case i, nil, CLOSED", function()
    local ch = weft.chan(2)
    assert.is_true(ch:try_send("last"))
    ch:close()
    local open = weft.chan()
    assert.same({ 2, "last" }, { weft.select(bounded(), { { recv = open }, { recv = ch } }) })
    assert.same({ 2, nil, CLOSED }, { weft.select(bounded(), { { recv = open }, { recv = ch } }) })
    assert.same({ 2, nil, CLOSED }, { weft.select(bounded(), { { recv = open }, { recv = ch }, default = true }) })
    local closed = weft.chan(5)
    closed:close()
    assert.same({ 1, nil, CLOSED }, { weft.select(bounded(), { { send = closed, value = 1 }, { recv = open } }) })
    assert.same({ 1, nil, CLOSED },
      { weft.select(bounded(), { { send = closed, value = 1 }, { recv = open }, default = true }) })
    assert.equal(0, closed:len())
  end)

  it("ctx end: nil, ctx:err() (deadline, cancel, already done), in time", function()
    local a, u = weft.chan(1), weft.chan()
    local cases = { { recv = a }, { send = u, value = 1 } }
    local t0 = weft.now()
    assert.same({ nil, DEADLINE }, { weft.select(weft.with_timeout(root, 0.1), cases) })
    local dt = elapsed_since(t0)
    assert.is_true(dt >= 0.08 and dt < 5, "took " .. dt .. "s")

    local ctx, cancel = weft.with_cancel(root)
    cancel()
    t0 = weft.now()
    assert.same({ nil, CANCELED }, { weft.select(ctx, cases) })
    assert.same({ nil, DEADLINE }, { weft.select(weft.with_deadline(root, weft.now() - 1), cases) })
    assert.is_true(elapsed_since(t0) < 1)
    -- an empty case list waits for the ctx
    t0 = weft.now()
    assert.same({ nil, DEADLINE }, { weft.select(weft.with_timeout(root, 0.1), {}) })
    assert.is_true(elapsed_since(t0) >= 0.08)
    -- the refused send did not deliver
    assert.same({ nil, "empty" }, { u:try_recv() })
  end)

  it("raises for bad arguments", function()
    local a = weft.chan(1)
    assert.has_error(function() weft.select(nil, { { recv = a } }) end)
    assert.has_error(function() weft.select(bounded(), nil) end)
    assert.has_error(function() weft.select(bounded(), { {} }) end)
    assert.has_error(function() weft.select(bounded(), { { recv = 5 } }) end)
    assert.has_error(function() weft.select(bounded(), { { send = {}, value = 1 } }) end)
    assert.has_error(function() weft.select(bounded(), { { send = a } }) end)  -- sending nil
    assert.has_error(function() weft.select(bounded(), { { send = a, value = io.stdout } }) end)
    assert.equal(0, a:len())
  end)
end)

-------------------------------------------------------------------------------
describe("weft.select fairness", function()
  local N = 10000

  -- counts[i] / N within [lo, hi]; and, for uniform random choices, the
  -- share of selects that repeat the previous choice (1/k for k cases:
  -- 0 for round-robin, 1 for "always the first ready").
  local function check(counts, k, lo, hi, repeats)
    for i = 1, k do
      local share = counts[i] / N
      assert.is_true(share >= lo and share <= hi,
        ("case %d chosen %d times of %d (%.1f%%)"):format(i, counts[i], N, share * 100))
    end
    local expected = 1 / k
    local r = repeats / (N - 1)
    assert.is_true(math.abs(r - expected) < 0.1,
      ("%.1f%% of selects repeat the previous choice; uniform random gives %.1f%%"):format(r * 100, expected * 100))
  end

  it("two always-ready receive cases, 10,000 selects: each chosen 40% to 60%, in FIFO order per channel", function()
    local a, b = weft.chan(N), weft.chan(N)
    for i = 1, N do
      assert(a:try_send(i))
      assert(b:try_send(-i))
    end
    local cases = { { recv = a }, { recv = b } }
    local counts, nxt = { 0, 0 }, { 1, -1 }
    local prev, repeats = nil, 0
    local ctx = bounded(60)
    local disorder = 0
    for _ = 1, N do
      local i, v = weft.select(ctx, cases)
      counts[i] = counts[i] + 1
      if v ~= nxt[i] then disorder = disorder + 1 end
      nxt[i] = i == 1 and v + 1 or v - 1
      if i == prev then repeats = repeats + 1 end
      prev = i
    end
    assert.equal(0, disorder)
    check(counts, 2, 0.40, 0.60, repeats)
  end)

  it("three always-ready cases (two receives, one send), 10,000 selects: each chosen 28% to 39%", function()
    local a, b, c = weft.chan(N), weft.chan(N), weft.chan(N)
    for i = 1, N do
      assert(a:try_send(i))
      assert(b:try_send(i))
    end
    local cases = { { recv = a }, { recv = b }, { send = c, value = "s" } }
    local counts = { 0, 0, 0 }
    local prev, repeats = nil, 0
    local ctx = bounded(60)
    for _ = 1, N do
      local i = weft.select(ctx, cases)
      counts[i] = counts[i] + 1
      if i == prev then repeats = repeats + 1 end
      prev = i
    end
    check(counts, 3, 0.28, 0.39, repeats)
    assert.equal(counts[3], c:len())
    assert.equal(N - counts[1], a:len())
    assert.equal(N - counts[2], b:len())
  end)

  it("two closed channels (always ready): each chosen 40% to 60%", function()
    local a, b = weft.chan(), weft.chan(1)
    a:close()
    b:close()
    local cases = { { recv = a }, { send = b, value = 1 } }
    local counts = { 0, 0 }
    local prev, repeats = nil, 0
    local ctx = bounded(60)
    for _ = 1, N do
      local i, v, err = weft.select(ctx, cases)
      assert(v == nil and err == CLOSED)
      counts[i] = counts[i] + 1
      if i == prev then repeats = repeats + 1 end
      prev = i
    end
    check(counts, 2, 0.40, 0.60, repeats)
  end)

  it("in a job: two always-ready receive cases, 10,000 selects: each chosen 40% to 60%", function()
    local p = new_pool { workers = 1 }
    local a, b = weft.chan(N), weft.chan(N)
    for i = 1, N do
      assert(a:try_send(i))
      assert(b:try_send(i))
    end
    local ok, counts, repeats = await(p:submit(root, function(c, x, y, n)
      local cs = { 0, 0 }
      local cases = { { recv = x }, { recv = y } }
      local prev, rep = nil, 0
      for _ = 1, n do
        local i = weft.select(c, cases)
        cs[i] = cs[i] + 1
        if i == prev then rep = rep + 1 end
        prev = i
      end
      return cs, rep
    end, a, b, N), 60)
    assert.is_true(ok, counts)
    check(counts, 2, 0.40, 0.60, repeats)
  end)
end)

-------------------------------------------------------------------------------
describe("weft.select waiting", function()
  it("blocks in the main thread until a job sends", function()
    local p = new_pool { workers = 1 }
    local a, b = weft.chan(), weft.chan(1)
    local f = assert(p:submit(root, function(c, x)
      weft.sleep(c, 0.1)
      return x:send(c, "woken")
    end, b))
    local t0 = weft.now()
    assert.same({ 2, "woken" }, { weft.select(bounded(), { { recv = a }, { recv = b } }) })
    assert.is_true(elapsed_since(t0) >= 0.05)
    assert.same({ true, true }, { await(f) })
  end)

  it("a send case blocks in the main thread until a job receives (cap 0)", function()
    local p = new_pool { workers = 1 }
    local a, u = weft.chan(), weft.chan()
    local f = assert(p:submit(root, function(c, x)
      weft.sleep(c, 0.1)
      local t = weft.now()
      return x:recv(c), t
    end, u))
    local t0 = weft.now()
    assert.same({ 2, true }, { weft.select(bounded(), { { recv = a }, { send = u, value = { k = "v" } } }) })
    local t1 = weft.now()
    local ok, v, t_recv = await(f)
    assert.is_true(ok)
    assert.same({ k = "v" }, v)
    assert.is_true(t1 >= t_recv)
    assert.is_true(t1 - t0 >= 0.05)
  end)

  it("blocks in the main thread until a job closes a channel: i, nil, CLOSED", function()
    local p = new_pool { workers = 1 }
    local a, b = weft.chan(), weft.chan()
    local f = assert(p:submit(root, function(c, x)
      weft.sleep(c, 0.1)
      x:close()
      return true
    end, b))
    assert.same({ 2, nil, CLOSED }, { weft.select(bounded(), { { recv = a }, { recv = b } }) })
    assert.same({ true, true }, { await(f) })
    -- a blocked send case too
    local full = weft.chan(1)
    assert.is_true(full:try_send(1))
    f = assert(p:submit(root, function(c, x)
      weft.sleep(c, 0.1)
      x:close()
      return true
    end, full))
    assert.same({ 2, nil, CLOSED }, { weft.select(bounded(), { { recv = a }, { send = full, value = 2 } }) })
    assert.same({ true, true }, { await(f) })
    assert.equal(1, full:try_recv())
    assert.same({ nil, CLOSED }, { full:try_recv() })
  end)

  it("a losing send case delivers nothing", function()
    local p = new_pool { workers = 1 }
    local u, b = weft.chan(), weft.chan()
    local f = assert(p:submit(root, function(c, x)
      weft.sleep(c, 0.1)
      return x:send(c, "b wins")
    end, b))
    assert.same({ 2, "b wins" }, { weft.select(bounded(), { { send = u, value = "lost" }, { recv = b } }) })
    assert.same({ true, true }, { await(f) })
    assert.same({ nil, "empty" }, { u:try_recv() })
    -- a receiver coming later finds nothing either
    f = assert(p:submit(root, function(_, x, c) return x:recv(c) end, u, weft.with_timeout(root, 0.1)))
    assert.same({ true, nil, DEADLINE }, { await(f) })
  end)

  it("parks in a job: 1 worker, limit 2, woken by another job on that worker", function()
    local p = new_pool { workers = 1, limit = 2 }
    local a, b = weft.chan(), weft.chan()
    local sel = assert(p:submit(root, function(c, x, y)
      return weft.select(c, { { recv = x }, { recv = y } })
    end, a, b))
    parked(p, 1)
    local sender = assert(p:submit(root, function(c, y) return y:send(c, "same worker") end, b))
    assert.same({ true, 2, "same worker" }, { await(sel) })
    assert.same({ true, true }, { await(sender) })

    -- a parked send case, taken by main
    sel = assert(p:submit(root, function(c, x, y)
      return weft.select(c, { { recv = x }, { send = y, value = "to main" } })
    end, a, b))
    parked(p, 1)
    assert.equal("to main", b:recv(bounded()))
    assert.same({ true, 2, true }, { await(sel) })
  end)

  it("64 selects parked on one worker, fed from main through two channels", function()
    local p = new_pool { workers = 1, limit = 64 }
    local a, b = weft.chan(), weft.chan()
    local fs = {}
    for i = 1, 64 do
      fs[i] = assert(p:try_submit(root, function(c, x, y)
        return weft.select(c, { { recv = x }, { recv = y } })
      end, a, b))
    end
    parked(p, 64)
    local ctx = bounded()
    for i = 1, 32 do
      assert.is_true(a:send(ctx, "a" .. i))
      assert.is_true(b:send(ctx, "b" .. i))
    end
    local seen = {}
    for i = 1, 64 do
      local ok, idx, v = await(fs[i])
      assert.is_true(ok)
      assert.equal(idx == 1 and "a" or "b", v:sub(1, 1))
      assert.is_nil(seen[v])
      seen[v] = true
    end
    for i = 1, 32 do
      assert.is_true(seen["a" .. i])
      assert.is_true(seen["b" .. i])
    end
  end)

  it("a parked select returns nil, DEADLINE at its timeout; nil, CANCELED when main cancels its ctx", function()
    local p = new_pool { workers = 1, limit = 2 }
    local a, b = weft.chan(), weft.chan()  -- separate: f1's send case would feed f2's receive
    local ctx, cancel = weft.with_cancel(root)
    local f1 = assert(p:submit(root, function(_, x, c)
      return weft.select(c, { { recv = x }, { send = x, value = 1 } })
    end, a, ctx))
    parked(p, 1)
    local f2 = assert(p:submit(root, function(c, x)
      local t = weft.now()
      local i, err = weft.select((weft.with_timeout(c, 0.1)), { { recv = x } })
      return i, err, weft.now() - t
    end, b))
    local ok, i, err, dt = await(f2)
    assert.is_true(ok)
    assert.is_nil(i)
    assert.equal(DEADLINE, err)
    assert.is_true(dt >= 0.08 and dt < 5, "took " .. dt .. "s")
    assert.is_false(f1:done())
    cancel()
    assert.same({ true, nil, CANCELED }, { await(f1) })
  end)

  it("a main-thread select returns nil, CANCELED when a job cancels its ctx", function()
    local p = new_pool { workers = 1 }
    local ctx, cancel = weft.with_cancel(bounded())
    local f = assert(p:submit(root, function(c, kill)
      weft.sleep(c, 0.1)
      kill()
      return true
    end, cancel))
    local u = weft.chan()
    assert.same({ nil, CANCELED }, { weft.select(ctx, { { recv = u }, { send = u, value = 1 } }) })
    assert.same({ true, true }, { await(f) })
  end)
end)

-------------------------------------------------------------------------------
describe("the same channel in a receive and a send case", function()
  it("buffered: takes whichever can proceed", function()
    local ch = weft.chan(1)
    local cases = { { recv = ch }, { send = ch, value = "x" } }
    assert.same({ 2, true }, { weft.select(bounded(), cases) })  -- empty: only the send can go
    assert.equal(1, ch:len())
    assert.same({ 1, "x" }, { weft.select(bounded(), cases) })   -- full: only the receive can go
    assert.equal(0, ch:len())
  end)

  it("unbuffered: a select never hands its value to itself", function()
    local u = weft.chan()
    local cases = { { recv = u }, { send = u, value = "self" } }
    assert.same({ 0 }, { weft.select(bounded(), { cases[1], cases[2], default = true }) })
    local t0 = weft.now()
    assert.same({ nil, DEADLINE }, { weft.select(weft.with_timeout(root, 0.1), cases) })
    assert.is_true(elapsed_since(t0) >= 0.08)
    -- a job receiving takes the send case; a job sending, the receive case
    local p = new_pool { workers = 1 }
    local f = assert(p:submit(root, function(c, x) return x:recv(c) end, u))
    assert.same({ 2, true }, { weft.select(bounded(), cases) })
    assert.same({ true, "self" }, { await(f) })
    f = assert(p:submit(root, function(c, x) return x:send(c, "other") end, u))
    assert.same({ 1, "other" }, { weft.select(bounded(), cases) })
    assert.same({ true, true }, { await(f) })
  end)

  it("two jobs selecting on the same pair of cases exchange values", function()
    local p = new_pool { workers = 1, limit = 2 }
    local u = weft.chan()
    local fs = {}
    for k = 1, 2 do
      fs[k] = assert(p:submit(root, function(c, x, me)
        return weft.select(c, { { recv = x }, { send = x, value = me } })
      end, u, "job" .. k))
    end
    local r1 = { await(fs[1]) }
    local r2 = { await(fs[2]) }
    -- one sent, the other received what it sent
    local sender, receiver = r1, r2
    if r1[2] == 1 then sender, receiver = r2, r1 end
    assert.same({ true, 2, true }, sender)
    assert.equal(1, receiver[2])
    assert.equal(sender == r1 and "job1" or "job2", receiver[3])
  end)
end)

-------------------------------------------------------------------------------
describe("weft.select races", function()
  local n = SANITIZED and 200 or 1000
  -- two senders arrive at once on the two receive cases of one select:
  -- exactly one send returns true, and it is the value the select returned
  it(("two senders racing for one select's receive cases: exactly one taken (%d rounds)"):format(n), function()
    local p = new_pool { workers = 2, limit = 2 }
    local bad = {}
    for i = 1, n do
      local a, b = weft.chan(), weft.chan()
      local x, cancel = weft.with_cancel(root)
      local sa = assert(p:submit(root, function(_, ch, c) return ch:send(c, "a") end, a, x))
      local sb = assert(p:submit(root, function(_, ch, c) return ch:send(c, "b") end, b, x))
      local idx, v = weft.select(bounded(), { { recv = a }, { recv = b } })
      cancel()
      local _, oka, erra = await(sa)
      local _, okb, errb = await(sb)
      local want = idx == 1 and "a" or "b"
      if v ~= want then bad[#bad + 1] = ("round %d: case %s gave %s"):format(i, tostring(idx), tostring(v)) end
      local winner, loser, lerr = oka, okb, errb
      if idx == 2 then winner, loser, lerr = okb, oka, erra end
      if winner ~= true or loser ~= nil or lerr ~= CANCELED then
        bad[#bad + 1] = ("round %d: case %d taken, senders gave a=%s,%s b=%s,%s")
          :format(i, idx, tostring(oka), tostring(erra), tostring(okb), tostring(errb))
      end
      assert.same({ nil, "empty" }, { a:try_recv() })
      assert.same({ nil, "empty" }, { b:try_recv() })
    end
    assert.same({}, bad)
  end)

  -- two receivers arrive at once on the two send cases of one select:
  -- exactly one receives, the value of the case the select reports
  it(("two receivers racing for one select's send cases: exactly one served (%d rounds)"):format(n), function()
    local p = new_pool { workers = 2, limit = 2 }
    local bad = {}
    for i = 1, n do
      local a, b = weft.chan(), weft.chan()
      local x, cancel = weft.with_cancel(root)
      local ra = assert(p:submit(root, function(_, ch, c) return ch:recv(c) end, a, x))
      local rb = assert(p:submit(root, function(_, ch, c) return ch:recv(c) end, b, x))
      local idx, ok = weft.select(bounded(), { { send = a, value = "a" .. i }, { send = b, value = "b" .. i } })
      cancel()
      local _, va, ea = await(ra)
      local _, vb, eb = await(rb)
      local fine
      if idx == 1 then
        fine = ok == true and va == "a" .. i and vb == nil and eb == CANCELED
      else
        fine = idx == 2 and ok == true and vb == "b" .. i and va == nil and ea == CANCELED
      end
      if not fine then
        bad[#bad + 1] = ("round %d: select %s,%s; receivers a=%s,%s b=%s,%s")
          :format(i, tostring(idx), tostring(ok), tostring(va), tostring(ea), tostring(vb), tostring(eb))
      end
    end
    assert.same({}, bad)
  end)

  -- two selects in jobs, each with a receive case on one channel and a
  -- send case on the other, crossing: every value sent is received once
  it(("crossing selects in two jobs: each value taken once (%d rounds)"):format(n), function()
    local p = new_pool { workers = 2, limit = 2 }
    local bad = {}
    for i = 1, n do
      local a, b = weft.chan(), weft.chan()
      local j1 = assert(p:submit(root, function(c, x, y)
        return weft.select(c, { { send = x, value = "one" }, { recv = y } })
      end, a, b))
      local j2 = assert(p:submit(root, function(c, x, y)
        return weft.select(c, { { send = y, value = "two" }, { recv = x } })
      end, a, b))
      local r1 = { await(j1) }
      local r2 = { await(j2) }
      -- either j1 sent "one" to j2 (r1 = 1,true; r2 = 2,"one") or j2 sent "two" to j1
      local fine = (r1[2] == 1 and r1[3] == true and r2[2] == 2 and r2[3] == "one")
        or (r2[2] == 1 and r2[3] == true and r1[2] == 2 and r1[3] == "two")
      if not fine then
        bad[#bad + 1] = ("round %d: j1 %s,%s j2 %s,%s"):format(i, tostring(r1[2]), tostring(r1[3]),
          tostring(r2[2]), tostring(r2[3]))
      end
    end
    assert.same({}, bad)
  end)
end)

-------------------------------------------------------------------------------
describe("many selects", function()
  local per = SANITIZED and 5000 or 50000
  it(("2 producers selecting send cases, 2 consumers selecting receive cases: %d values, none lost%s")
    :format(4 * per, SANITIZED and (" (scaled down from 200,000 under " .. VARIANT .. ")") or ""), function()
    local p = new_pool { workers = 2, limit = 4 }
    local a, b = weft.chan(8), weft.chan()
    local prods, conss = {}, {}
    for id = 0, 1 do
      prods[#prods + 1] = assert(p:submit(root, function(c, x, y, me, n)
        for seq = 0, n - 1 do
          local i, ok, err = weft.select(c, { { send = x, value = seq * 2 + me }, { send = y, value = seq * 2 + me } })
          if not i or not ok then return false, err or "select failed" end
        end
        return true
      end, a, b, id, 2 * per))
    end
    for _ = 1, 2 do
      conss[#conss + 1] = assert(p:submit(root, function(c, x, y)
        local cases = { { recv = x }, { recv = y } }
        local count, sum, sumsq = 0, 0, 0
        while #cases > 0 do
          local i, v, err = weft.select(c, cases)
          if not i then return false, err end
          if v == nil then
            if err ~= CLOSED then return false, "nil value without CLOSED: " .. tostring(err) end
            table.remove(cases, i)  -- closed and drained: drop the case
          else
            count = count + 1
            sum = sum + v
            sumsq = sumsq + v * v
          end
        end
        return count, sum, sumsq
      end, a, b))
    end
    for k = 1, 2 do assert.same({ true, true }, { await(prods[k], 120) }) end
    a:close()
    b:close()
    local count, sum, sumsq = 0, 0, 0
    for k = 1, 2 do
      local ok, n, s, sq = await(conss[k], 60)
      assert.is_true(ok)
      assert.is_number(n, s)
      count, sum, sumsq = count + n, sum + s, sumsq + sq
    end
    local total = 4 * per
    assert.equal(total, count)
    assert.equal(total * (total - 1) // 2, sum)
    assert.equal((total - 1) * total * (2 * total - 1) // 6, sumsq)
  end)
end)
