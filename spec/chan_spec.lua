-- Channels (issue 4, item 5; the contract: weft.chan, ch:send/recv/try_send/
-- try_recv/close/iter/len/cap/closed).  weft.select has its own file,
-- spec/select_spec.lua.
--
-- Every wait here has a bound: blocking calls from the main state take a
-- context with a timeout (`bounded`), futures are awaited with one
-- (`await`), and jobs block only on contexts under `root`, which is
-- canceled after each test before its pools are closed; so a broken
-- engine fails a test instead of hanging it.  Timings are generous bounds,
-- never measurements.
--
-- Job functions run in worker states: they capture only copyable upvalues
-- (the weft module travels by name; channels, contexts and cancel
-- functions are shared handles).  Jobs report through their results and
-- the main state asserts; job code raises with error(msg, 0) at most.
local weft = require "weft"

local CANCELED, DEADLINE, CLOSED = weft.CANCELED, weft.DEADLINE_EXCEEDED, weft.CLOSED

-- The shared harness (spec/harness.lua): bounded, await, eventually,
-- new_pool, parked; root is canceled after each test, then its pools are
-- closed (the newest first).  VARIANT is plain | tsan | asan (set by
-- spec/run); big tests are scaled down under the sanitizers, and say so in
-- their names.
local harness = dofile("spec/harness.lua").configure { root_timeout = 240 }
local VARIANT, SANITIZED = harness.VARIANT, harness.SANITIZED
local bounded, await, eventually = harness.bounded, harness.await, harness.eventually
local new_pool, parked = harness.new_pool, harness.parked
local elapsed_since = harness.elapsed_since

local root
before_each(function() root = harness.start() end)
after_each(harness.finish)

-------------------------------------------------------------------------------
describe("weft.chan", function()
  it("makes channels with a capacity (default 0); len, cap and closed", function()
    local u = weft.chan()
    assert.equal(0, u:cap())
    assert.equal(0, u:len())
    assert.is_false(u:closed())
    assert.equal(0, weft.chan(0):cap())
    assert.equal(2, weft.chan(2.0):cap())

    local b = weft.chan(3)
    assert.equal(3, b:cap())
    assert.equal(0, b:len())
    assert.is_true(b:try_send("a"))
    assert.equal(1, b:len())
    assert.is_true(b:try_send("b"))
    assert.is_true(b:try_send("c"))
    assert.equal(3, b:len())
    assert.same({ nil, "full" }, { b:try_send("d") })
    assert.equal(3, b:len())
    assert.equal("a", b:try_recv())
    assert.equal(2, b:len())
    assert.equal(3, b:cap())
    b:close()
    assert.is_true(b:closed())
    assert.equal(2, b:len())
    assert.equal(3, b:cap())
  end)

  it("rejects a capacity that is not an integer >= 0", function()
    assert.has_error(function() weft.chan(-1) end)
    assert.has_error(function() weft.chan(1.5) end)
    assert.has_error(function() weft.chan("x") end)
    assert.has_error(function() weft.chan({}) end)
  end)

  it("try_recv on an empty channel gives nil, 'empty'; try_send on cap 0 without a receiver gives nil, 'full'",
    function()
    local u = weft.chan(0)
    local r = table.pack(u:try_recv())
    assert.equal(2, r.n)
    assert.is_nil(r[1])
    assert.equal("empty", r[2])
    assert.same({ nil, "full" }, { u:try_send(1) })
    assert.equal(0, u:len())
    -- the refused try_send left nothing behind
    assert.same({ nil, "empty" }, { u:try_recv() })
    local b = weft.chan(2)
    assert.same({ nil, "empty" }, { b:try_recv() })
    assert.is_true(b:try_send(1))
    assert.equal(1, b:try_recv())
    assert.same({ nil, "empty" }, { b:try_recv() })
  end)

  it("carries false, 0, empty strings, floats and nested tables unchanged", function()
    local ch = weft.chan(16)
    local ctx = bounded()
    local values = { false, true, 0, 0.0, -0.0, 1 / 0, "", "a\0b", math.mininteger, { {}, { false } } }
    for _, v in ipairs(values) do assert.is_true(ch:send(ctx, v)) end
    for i, v in ipairs(values) do
      local got, err = ch:recv(ctx)
      assert.is_nil(err)
      assert.same(v, got)
      assert.equal(math.type(v), math.type(got), "value " .. i)
    end
    assert.is_true(ch:try_send(-0.0))
    assert.equal(-1 / 0, 1 / ch:try_recv())
  end)
end)

-------------------------------------------------------------------------------
describe("FIFO order", function()
  it("through a buffered channel, in the main state", function()
    local ch = weft.chan(100)
    local ctx = bounded()
    for i = 1, 100 do assert.is_true(ch:send(ctx, i)) end
    assert.equal(100, ch:len())
    for i = 1, 100 do assert.equal(i, ch:recv(ctx)) end
    -- interleaved sends and receives (the ring wraps around many times)
    local nxt_in, nxt_out = 1, 1
    for round = 1, 500 do
      for _ = 1, round % 7 + 1 do
        if ch:len() < ch:cap() then
          assert.is_true(ch:send(ctx, { n = nxt_in }))
          nxt_in = nxt_in + 1
        end
      end
      for _ = 1, round % 5 + 1 do
        if ch:len() > 0 then
          local v = ch:try_recv()
          assert.equal(nxt_out, v.n)
          nxt_out = nxt_out + 1
        end
      end
    end
    while ch:len() > 0 do
      assert.equal(nxt_out, ch:recv(ctx).n)
      nxt_out = nxt_out + 1
    end
    assert.equal(nxt_in, nxt_out)
  end)

  it("through an unbuffered channel, between the main state and a job (both directions)", function()
    local p = new_pool { workers = 1 }
    local n = 2000
    local u = weft.chan()
    -- a job sends, main receives
    local f = assert(p:submit(root, function(c, ch, count)
      for i = 1, count do
        local ok, err = ch:send(c, i)
        if not ok then return false, err end
      end
      return true
    end, u, n))
    local ctx = bounded(60)
    for i = 1, n do
      local v, err = u:recv(ctx)
      assert.is_nil(err)
      if v ~= i then assert.equal(i, v) end
    end
    assert.same({ true, true }, { await(f) })
    -- main sends, a job receives and checks the order
    f = assert(p:submit(root, function(c, ch, count)
      for i = 1, count do
        local v, err = ch:recv(c)
        if v ~= i then return false, ("got %s (%s) where %d was expected"):format(tostring(v), tostring(err), i) end
      end
      return true
    end, u, n))
    for i = 1, n do assert.is_true(u:send(ctx, i)) end
    assert.same({ true, true }, { await(f) })
  end)

  for _, cap in ipairs { 0, 1, 16 } do
    local n = SANITIZED and 5000 or 20000
    it(("between two pool jobs, capacity %d (%d values)"):format(cap, n), function()
      local p = new_pool { workers = 2, limit = 2 }
      local ch = weft.chan(cap)
      local prod = assert(p:submit(root, function(c, out, count)
        for i = 1, count do
          local ok, err = out:send(c, i)
          if not ok then return false, err end
        end
        out:close()
        return true
      end, ch, n))
      local cons = assert(p:submit(root, function(c, inp)
        local expect = 1
        for v in inp:iter(c) do
          if v ~= expect then return false, ("got %d where %d was expected"):format(v, expect) end
          expect = expect + 1
        end
        return expect - 1, c:err()
      end, ch))
      assert.same({ true, true }, { await(prod, 60) })
      assert.same({ true, n }, { await(cons, 60) })
    end)
  end

  it("blocked senders are served in the order they blocked", function()
    local p = new_pool { workers = 1, limit = 5 }
    local ch = weft.chan(1)
    assert.is_true(ch:try_send(0))
    local fs = {}
    for k = 1, 5 do
      fs[k] = assert(p:submit(root, function(c, out, v) return out:send(c, v) end, ch, k))
      parked(p, k)
    end
    assert.equal(1, ch:len())
    local ctx = bounded()
    for k = 0, 5 do assert.equal(k, ch:recv(ctx)) end
    for k = 1, 5 do assert.same({ true, true }, { await(fs[k]) }) end
    assert.equal(0, ch:len())
  end)

  it("blocked receivers are served in the order they blocked (cap 0 and cap 2)", function()
    for _, cap in ipairs { 0, 2 } do
      local p = new_pool { workers = 1, limit = 5 }
      local ch = weft.chan(cap)
      local fs = {}
      for k = 1, 5 do
        fs[k] = assert(p:submit(root, function(c, inp) return inp:recv(c) end, ch))
        parked(p, k)
      end
      local ctx = bounded()
      for k = 1, 5 do assert.is_true(ch:send(ctx, "v" .. k)) end
      for k = 1, 5 do assert.same({ true, "v" .. k }, { await(fs[k]) }, "cap " .. cap) end
    end
  end)
end)

-------------------------------------------------------------------------------
describe("no message lost or duplicated", function()
  local total = SANITIZED and 100000 or 1000000
  local name = ("4 producers and 4 consumers (pool jobs) move %d integers: count, sum, sum of squares"
    .. " and per-producer order%s"):format(total,
      SANITIZED and (" (scaled down from 1,000,000 under " .. VARIANT .. ")") or "")
  it(name, function()
    local p = new_pool { workers = 4, limit = 8, name = "mpmc" }
    local ch = weft.chan(256)
    local per = total // 4
    local t0 = weft.now()
    local producers, consumers = {}, {}
    -- producer id sends seq * 4 + id for seq = 0 .. per-1: every integer in
    -- [0, total) exactly once overall, increasing per producer
    for id = 0, 3 do
      producers[#producers + 1] = assert(p:submit(root, function(c, out, me, n)
        for seq = 0, n - 1 do
          local ok, err = out:send(c, seq * 4 + me)
          if not ok then return false, err end
        end
        return true
      end, ch, id, per))
    end
    for _ = 1, 4 do
      consumers[#consumers + 1] = assert(p:submit(root, function(c, inp)
        local count, sum, sumsq = 0, 0, 0
        local last = { [0] = -1, -1, -1, -1 }
        local by = { [0] = 0, 0, 0, 0 }
        local disorder = false
        for v in inp:iter(c) do
          count = count + 1
          sum = sum + v
          sumsq = sumsq + v * v
          local me, seq = v % 4, v // 4
          if seq <= last[me] and not disorder then
            disorder = ("producer %d: seq %d after %d"):format(me, seq, last[me])
          end
          last[me] = seq
          by[me] = by[me] + 1
        end
        return count, sum, sumsq, by, disorder, c:err()
      end, ch))
    end
    for k = 1, 4 do assert.same({ true, true }, { await(producers[k], 180) }) end
    ch:close()
    local count, sum, sumsq = 0, 0, 0
    local by = { [0] = 0, 0, 0, 0 }
    for k = 1, 4 do
      local ok, n, s, sq, mine, disorder, err = await(consumers[k], 60)
      assert.is_true(ok, n)
      assert.is_false(disorder)
      assert.is_nil(err)
      count, sum, sumsq = count + n, sum + s, sumsq + sq
      for id = 0, 3 do by[id] = by[id] + mine[id] end
    end
    print(("# %d integers through one channel, 4 producers x 4 consumers: %.2f s (%s)")
      :format(total, elapsed_since(t0), VARIANT))
    assert.equal(total, count)
    assert.same({ [0] = per, per, per, per }, by)
    assert.equal(total * (total - 1) // 2, sum)
    assert.equal((total - 1) * total * (2 * total - 1) // 6, sumsq)
    assert.equal(0, ch:len())
    assert.same({ nil, CLOSED }, { ch:try_recv() })
  end)
end)

-------------------------------------------------------------------------------
-- A buffered channel's ring is used without its lock while no operation is
-- queued on it (engine/channel.c); these mix that fast path with parked
-- senders and receivers, select, try_*, close and the ring's growth.
describe("the lock-free ring and the queued ops", function()
  local n = SANITIZED and 5000 or 40000
  it(("keeps FIFO across the fast path, parked senders and parked receivers (%d values, cap 4)"):format(n),
    function()
    local p = new_pool { workers = 2, limit = 2 }
    local ch = weft.chan(4)
    -- the producer sends by send, try_send and select; the consumer
    -- receives by recv, try_recv and select, and pauses now and then (the
    -- producer fills the ring and parks) or hurries (it empties and parks)
    local prod = assert(p:submit(root, function(c, out, count)
      for i = 1, count do
        local k = i % 3
        if k == 0 then
          local ok, err = out:send(c, i)
          if not ok then return false, err end
        elseif k == 1 then
          if not out:try_send(i) then  -- full: wait for room
            local ok, err = out:send(c, i)
            if not ok then return false, err end
          end
        else
          local idx, ok = weft.select(c, { { send = out, value = i } })
          if idx ~= 1 or ok ~= true then return false, ok end
        end
      end
      out:close()
      return true
    end, ch, n))
    local cons = assert(p:submit(root, function(c, inp)
      local expect = 1
      while true do
        local v, err
        local k = expect % 5
        if k == 0 then
          v = inp:try_recv()
          if v == nil then v, err = inp:recv(c) end
        elseif k == 1 then
          local idx
          idx, v, err = weft.select(c, { { recv = inp } })
          if idx ~= 1 then return false, "select gave " .. tostring(idx) end
        else
          v, err = inp:recv(c)
        end
        if v == nil then
          if err ~= CLOSED then return false, err end
          break
        end
        if v ~= expect then return false, ("got %d where %d was expected"):format(v, expect) end
        expect = expect + 1
        if expect % 1000 == 0 then weft.sleep(c, 0.002) end
      end
      return expect - 1
    end, ch))
    assert.same({ true, true }, { await(prod, 120) })
    assert.same({ true, n }, { await(cons, 120) })
  end)

  it("a send that returned true was received once: 2 producer jobs racing a close by the consumer job (cap 64)",
    function()
    local p = new_pool { workers = 2, limit = 3 }
    local ch = weft.chan(64)
    local fs = {}
    for id = 1, 2 do
      fs[id] = assert(p:submit(root, function(c, out, me)
        local sent, i = {}, 0
        while true do
          i = i + 1
          local v = me * 10000000 + i
          local ok, err
          if i % 2 == 0 then ok, err = out:send(c, v) else ok, err = out:try_send(v) end
          if ok then
            sent[#sent + 1] = v
          elseif err ~= "full" then
            return sent, err
          end
        end
      end, ch, id))
    end
    local fc = assert(p:submit(root, function(c, inp, count)
      local got = {}
      for _ = 1, count do
        local v, err = inp:recv(c)
        if v == nil then return false, err end
        got[#got + 1] = v
      end
      inp:close()
      while true do
        local v, err = inp:recv(c)
        if v == nil then
          if err ~= CLOSED then return false, err end
          break
        end
        got[#got + 1] = v
      end
      -- closed and drained stays so
      local v, err = inp:try_recv()
      if v ~= nil or err ~= CLOSED then return false, "after the drain: " .. tostring(v) end
      return got
    end, ch, SANITIZED and 5000 or 50000))
    local ok, got, cerr = await(fc, 120)
    assert.is_true(ok, got)
    assert.is_table(got, cerr)
    local sent, nsent = {}, 0
    for id = 1, 2 do
      local fine, list, err = await(fs[id], 60)
      assert.is_true(fine, list)
      assert.equal(CLOSED, err)
      for _, v in ipairs(list) do
        sent[v] = true
        nsent = nsent + 1
      end
    end
    local seen, last = {}, { 0, 0 }
    for _, v in ipairs(got) do
      assert.is_nil(seen[v], "received twice: " .. v)
      seen[v] = true
      assert.is_true(sent[v] == true, "received but its send did not return true: " .. v)
      local id, i = v // 10000000, v % 10000000
      assert.is_true(i > last[id], "out of order for producer " .. id)
      last[id] = i
    end
    assert.equal(nsent, #got, "sends that returned true vs values received")
  end)

  it("a capacity above 16,384 grows under the lock, then runs lock-free at its full size; FIFO across the wrap",
    function()
    local cap = 20000
    local ch = weft.chan(cap)
    local ctx = bounded()
    -- one assertion per loop, not per value: 60,000 luassert calls took
    -- the whole bound under gc-stress
    local function sends(from, to, send)
      for i = from, to do
        if send(i) ~= true then return ("send of %d failed"):format(i) end
      end
    end
    local function receives(from, to)
      for i = from, to do
        local v = ch:recv(ctx)
        if v ~= i then return ("expected %d, got %s"):format(i, tostring(v)) end
      end
    end
    assert.is_nil(sends(1, cap, function(i) return ch:try_send(i) end))
    assert.equal(cap, ch:len())
    assert.same({ nil, "full" }, { ch:try_send(0) })
    assert.is_nil(receives(1, cap // 2))
    assert.equal(cap // 2, ch:len())
    assert.is_nil(sends(cap + 1, cap + cap // 2, function(i) return ch:send(ctx, i) end))
    assert.same({ nil, "full" }, { ch:try_send(0) })
    ch:close()
    assert.is_nil(receives(cap // 2 + 1, cap + cap // 2))
    assert.same({ nil, CLOSED }, { ch:recv(ctx) })
    assert.equal(0, ch:len())
  end)

  it("capacity 1 between two jobs: every hand-over in order, len never above 1", function()
    local p = new_pool { workers = 2, limit = 2 }
    local ch = weft.chan(1)
    local m = SANITIZED and 2000 or 20000
    local prod = assert(p:submit(root, function(c, out, count)
      local maxlen = 0
      for i = 1, count do
        local ok, err = out:send(c, i)
        if not ok then return false, err end
        local l = out:len()
        if l > maxlen then maxlen = l end
      end
      out:close()
      return maxlen
    end, ch, m))
    local cons = assert(p:submit(root, function(c, inp)
      local expect = 1
      for v in inp:iter(c) do
        if v ~= expect then return false, ("got %d where %d was expected"):format(v, expect) end
        expect = expect + 1
      end
      return expect - 1
    end, ch))
    local ok, maxlen = await(prod, 60)
    assert.is_true(ok, maxlen)
    assert.is_true(maxlen <= 1, "len " .. tostring(maxlen))
    assert.same({ true, m }, { await(cons, 60) })
  end)
end)

-------------------------------------------------------------------------------
describe("unbuffered hand-over", function()
  it("send on cap 0 from main returns only once a job's receive took the value", function()
    local p = new_pool { workers = 1 }
    local u = weft.chan()
    local f = assert(p:submit(root, function(c, ch)
      weft.sleep(c, 0.2)
      local t = weft.now()
      local v, err = ch:recv(c)
      return t, v, err
    end, u))
    local t0 = weft.now()
    assert.same({ true }, { u:send(bounded(), "hello") })
    local t1 = weft.now()
    local ok, t_recv, v, err = await(f)
    assert.is_true(ok)
    assert.equal("hello", v)
    assert.is_nil(err)
    assert.is_true(t1 >= t_recv, "send returned before the receiver started receiving")
    assert.is_true(t1 - t0 >= 0.15, "send returned after " .. (t1 - t0) .. "s, with no receiver yet")
  end)

  it("a job's send on cap 0 stays blocked until main receives", function()
    local p = new_pool { workers = 1 }
    local u = weft.chan()
    local f = assert(p:submit(root, function(c, ch)
      local ok, err = ch:send(c, { x = 1 })
      return ok, err, weft.now()
    end, u))
    parked(p, 1)
    weft.sleep(root, 0.05)
    assert.is_false(f:done())
    assert.equal(0, u:len())
    local t = weft.now()
    local v = u:recv(bounded())
    assert.same({ x = 1 }, v)
    local ok, sent, err, t_sent = await(f)
    assert.is_true(ok)
    assert.is_true(sent)
    assert.is_nil(err)
    assert.is_true(t_sent >= t)
  end)

  it("a send on cap 0 that times out delivers nothing", function()
    local u = weft.chan()
    local t0 = weft.now()
    assert.same({ nil, DEADLINE }, { u:send(weft.with_timeout(root, 0.1), "lost") })
    assert.is_true(elapsed_since(t0) >= 0.08)
    assert.same({ nil, "empty" }, { u:try_recv() })
    local p = new_pool { workers = 1 }
    local f = assert(p:submit(root, function(_, ch, c) return ch:recv(c) end, u, weft.with_timeout(root, 0.2)))
    assert.same({ true, nil, DEADLINE }, { await(f) })
  end)

  it("try_send on cap 0 succeeds when a receiver waits; try_recv takes from a waiting sender", function()
    local p = new_pool { workers = 1 }
    local u = weft.chan()
    local f = assert(p:submit(root, function(c, ch) return ch:recv(c) end, u))
    parked(p, 1)
    assert.is_true(u:try_send("direct"))
    assert.same({ true, "direct" }, { await(f) })
    assert.same({ nil, "full" }, { u:try_send("nobody") })

    f = assert(p:submit(root, function(c, ch) return ch:send(c, "waiting") end, u))
    parked(p, 1)
    assert.equal("waiting", u:try_recv())
    assert.same({ true, true }, { await(f) })
    assert.same({ nil, "empty" }, { u:try_recv() })
  end)
end)

-------------------------------------------------------------------------------
describe("close", function()
  it("is idempotent; send after close gives nil, CLOSED; receives drain the buffer, then nil, CLOSED", function()
    local ch = weft.chan(3)
    local ctx = bounded()
    assert.is_true(ch:send(ctx, 1))
    assert.is_true(ch:send(ctx, "two"))
    ch:close()
    ch:close()
    assert.is_true(ch:closed())
    assert.same({ nil, CLOSED }, { ch:send(ctx, 3) })
    assert.same({ nil, CLOSED }, { ch:try_send(3) })
    assert.equal(2, ch:len())
    assert.equal(1, ch:recv(ctx))
    assert.equal("two", ch:try_recv())
    assert.same({ nil, CLOSED }, { ch:recv(ctx) })
    assert.same({ nil, CLOSED }, { ch:try_recv() })
    ch:close()
    assert.same({ nil, CLOSED }, { ch:recv(ctx) })
    assert.equal(0, ch:len())

    local u = weft.chan()
    u:close()
    assert.same({ nil, CLOSED }, { u:send(ctx, 1) })
    assert.same({ nil, CLOSED }, { u:try_send(1) })
    assert.same({ nil, CLOSED }, { u:recv(ctx) })
    assert.same({ nil, CLOSED }, { u:try_recv() })
    -- a receive on a closed, drained channel answers at once
    local t0 = weft.now()
    assert.same({ nil, CLOSED }, { u:recv(bounded(5)) })
    assert.is_true(elapsed_since(t0) < 1)
  end)

  it("wakes a main-thread receiver blocked on it (closed from a job)", function()
    local p = new_pool { workers = 1 }
    local ch = weft.chan(2)
    local f = assert(p:submit(root, function(c, x)
      weft.sleep(c, 0.1)
      x:close()
      return x:closed()
    end, ch))
    local t0 = weft.now()
    assert.same({ nil, CLOSED }, { ch:recv(bounded()) })
    assert.is_true(elapsed_since(t0) >= 0.05)
    assert.same({ true, true }, { await(f) })
    assert.is_true(ch:closed())
  end)

  it("wakes a main-thread sender blocked on it; the blocked value is not delivered", function()
    local p = new_pool { workers = 1 }
    for _, cap in ipairs { 0, 1 } do
      local ch = weft.chan(cap)
      if cap == 1 then assert.is_true(ch:try_send("buffered")) end
      local f = assert(p:submit(root, function(c, x)
        weft.sleep(c, 0.1)
        x:close()
        return true
      end, ch))
      assert.same({ nil, CLOSED }, { ch:send(bounded(), "blocked") })
      assert.same({ true, true }, { await(f) })
      if cap == 1 then assert.equal("buffered", ch:recv(bounded())) end
      assert.same({ nil, CLOSED }, { ch:recv(bounded()) })
    end
  end)

  it("wakes every parked sender and receiver with nil, CLOSED", function()
    local p = new_pool { workers = 1, limit = 16 }
    local rch = weft.chan()   -- receivers wait: nothing to take
    local sch = weft.chan(2)  -- senders wait: full
    assert.is_true(sch:try_send("a"))
    assert.is_true(sch:try_send("b"))
    local rs, ss = {}, {}
    for k = 1, 8 do
      rs[k] = assert(p:submit(root, function(c, x) return x:recv(c) end, rch))
      ss[k] = assert(p:submit(root, function(c, x, v) return x:send(c, v) end, sch, "s" .. k))
    end
    parked(p, 16)
    rch:close()
    sch:close()
    for k = 1, 8 do
      assert.same({ true, nil, CLOSED }, { await(rs[k]) })
      assert.same({ true, nil, CLOSED }, { await(ss[k]) })
    end
    -- what was buffered before the close is still there; the blocked values are not
    assert.equal("a", sch:recv(bounded()))
    assert.equal("b", sch:recv(bounded()))
    assert.same({ nil, CLOSED }, { sch:recv(bounded()) })
  end)

  it("a send that returned true was received: 4 producers racing a close, then a drain", function()
    local p = new_pool { workers = 2, limit = 4 }
    local ch = weft.chan(4)
    local fs = {}
    for id = 1, 4 do
      fs[id] = assert(p:submit(root, function(c, out, me)
        local sent, i = {}, 0
        while true do
          i = i + 1
          local v = me * 10000000 + i
          local ok, err = out:send(c, v)
          if ok then sent[#sent + 1] = v else return sent, err end
        end
      end, ch, id))
    end
    local got = {}
    local ctx = bounded(60)
    for _ = 1, 2000 do got[#got + 1] = ch:recv(ctx) end
    ch:close()
    while true do
      local v, err = ch:recv(ctx)
      if v == nil then
        assert.equal(CLOSED, err)
        break
      end
      got[#got + 1] = v
    end
    local sent = {}
    local nsent = 0
    for id = 1, 4 do
      local ok, list, err = await(fs[id])
      assert.is_true(ok, list)
      assert.equal(CLOSED, err)
      for _, v in ipairs(list) do
        sent[v] = true
        nsent = nsent + 1
      end
    end
    local seen = {}
    for _, v in ipairs(got) do
      assert.is_nil(seen[v], "received twice: " .. v)
      seen[v] = true
      assert.is_true(sent[v] == true, "received but its send did not return true: " .. v)
    end
    assert.equal(nsent, #got, "sends that returned true vs values received")
  end)
end)

-------------------------------------------------------------------------------
describe("races: a hand-over against a cancel or a close", function()
  local n = SANITIZED and 200 or 1000
  -- Each round: a job blocks (or is about to block) in send on a cap-0
  -- channel, another job cancels its ctx or closes the channel, and main
  -- receives with a short timeout, all at once.  Whatever wins, a send
  -- that returned true was received exactly once, and a send that
  -- returned nil, err was not received at all.
  for _, how in ipairs { "cancel", "close" } do
    it(("send returns true exactly when main received the value (%s racing, %d rounds)"):format(how, n), function()
      local p = new_pool { workers = 2, limit = 2 }
      local bad, taken, refused = {}, 0, 0
      for i = 1, n do
        local u = weft.chan()
        local x, cancel = weft.with_cancel(root)
        local fs = assert(p:submit(root, function(_, ch, c, v) return ch:send(c, v) end, u, x, i))
        local fk
        if how == "cancel" then
          fk = assert(p:submit(root, function(_, kill) kill() return true end, cancel))
        else
          fk = assert(p:submit(root, function(_, ch) ch:close() return true end, u))
        end
        local got, rerr = u:recv((weft.with_timeout(root, 0.005)))
        local ok, sent, serr = await(fs)
        assert.is_true(ok)
        assert.same({ true, true }, { await(fk) })
        cancel()
        -- anything the channel still holds would be a value delivered late
        local late = u:try_recv()
        if sent == true then
          taken = taken + 1
          if got ~= i then
            bad[#bad + 1] = ("round %d: send returned true, main got %s (%s)"):format(i, tostring(got), tostring(rerr))
          end
        else
          refused = refused + 1
          local want = how == "cancel" and CANCELED or CLOSED
          if serr ~= want then
            bad[#bad + 1] = ("round %d: send gave %s, %s"):format(i, tostring(sent), tostring(serr))
          end
          if got ~= nil then
            bad[#bad + 1] = ("round %d: send gave %s but main got %s"):format(i, tostring(serr), tostring(got))
          end
        end
        if late ~= nil then bad[#bad + 1] = ("round %d: %s left in the channel"):format(i, tostring(late)) end
      end
      print(("# %s race: %d taken, %d refused (%s)"):format(how, taken, refused, VARIANT))
      assert.same({}, bad)
    end)
  end

  it(("recv returns the value exactly when main's send returned true (cancel racing, %d rounds)"):format(n), function()
    local p = new_pool { workers = 2, limit = 2 }
    local bad = {}
    for i = 1, n do
      local u = weft.chan()
      local x, cancel = weft.with_cancel(root)
      local fr = assert(p:submit(root, function(_, ch, c) return ch:recv(c) end, u, x))
      local fk = assert(p:submit(root, function(_, kill) kill() return true end, cancel))
      local sent, serr = u:send((weft.with_timeout(root, 0.005)), i)
      local ok, got, rerr = await(fr)
      assert.is_true(ok)
      assert.same({ true, true }, { await(fk) })
      if sent == true and got ~= i then
        bad[#bad + 1] = ("round %d: send returned true, the receiver got %s (%s)")
          :format(i, tostring(got), tostring(rerr))
      elseif sent ~= true and got ~= nil then
        bad[#bad + 1] = ("round %d: send gave %s, the receiver got %s"):format(i, tostring(serr), tostring(got))
      end
    end
    assert.same({}, bad)
  end)
end)

-------------------------------------------------------------------------------
describe("cancel and deadlines", function()
  it("a main-thread recv and send return nil, CANCELED when a job cancels their ctx", function()
    local p = new_pool { workers = 1 }
    local canceler = function(c, cancel)
      weft.sleep(c, 0.1)
      cancel("from a job")
      return true
    end
    -- recv on an empty channel
    local ch = weft.chan(1)
    local ctx, cancel = weft.with_cancel(bounded())
    local f = assert(p:submit(root, canceler, cancel))
    local t0 = weft.now()
    assert.same({ nil, CANCELED }, { ch:recv(ctx) })
    assert.is_true(elapsed_since(t0) >= 0.05)
    assert.same({ true, true }, { await(f) })
    -- send on a full channel
    assert.is_true(ch:try_send("full"))
    ctx, cancel = weft.with_cancel(bounded())
    f = assert(p:submit(root, canceler, cancel))
    assert.same({ nil, CANCELED }, { ch:send(ctx, "never") })
    assert.same({ true, true }, { await(f) })
    -- send on cap 0: the value is not delivered
    local u = weft.chan()
    ctx, cancel = weft.with_cancel(bounded())
    f = assert(p:submit(root, canceler, cancel))
    assert.same({ nil, CANCELED }, { u:send(ctx, "never") })
    assert.same({ true, true }, { await(f) })
    assert.same({ nil, "empty" }, { u:try_recv() })
    assert.equal("full", ch:try_recv())
    assert.same({ nil, "empty" }, { ch:try_recv() })
  end)

  it("a parked recv and send return nil, CANCELED when main cancels their ctx", function()
    local p = new_pool { workers = 1, limit = 3 }
    local ctx, cancel = weft.with_cancel(root)
    local empty, full, u = weft.chan(1), weft.chan(1), weft.chan()
    assert.is_true(full:try_send("old"))
    local f1 = assert(p:submit(root, function(_, x, c) return x:recv(c) end, empty, ctx))
    local f2 = assert(p:submit(root, function(_, x, c) return x:send(c, "new") end, full, ctx))
    local f3 = assert(p:submit(root, function(_, x, c) return x:send(c, "new") end, u, ctx))
    parked(p, 3)
    cancel("from main")
    assert.same({ true, nil, CANCELED }, { await(f1) })
    assert.same({ true, nil, CANCELED }, { await(f2) })
    assert.same({ true, nil, CANCELED }, { await(f3) })
    assert.equal("old", full:try_recv())
    assert.same({ nil, "empty" }, { full:try_recv() })
    assert.same({ nil, "empty" }, { u:try_recv() })
    -- the channels still work
    assert.is_true(empty:try_send(1))
    assert.equal(1, empty:try_recv())
  end)

  it("a parked recv returns nil, CANCELED when another job cancels its ctx", function()
    local p = new_pool { workers = 2, limit = 2 }
    local ctx, cancel = weft.with_cancel(root)
    local ch = weft.chan()
    local waiter = assert(p:submit(root, function(_, x, c)
      local v, err = x:recv(c)
      return v, err, c:cause()
    end, ch, ctx))
    parked(p, 1)
    local canceler = assert(p:submit(root, function(_, kill) kill("from another job") return true end, cancel))
    assert.same({ true, true }, { await(canceler) })
    assert.same({ true, nil, CANCELED, "from another job" }, { await(waiter) })
  end)

  it("a job parked with its own ctx: hard_cancel = false returns nil, CANCELED; the default fails with CANCELED",
    function()
    local soft = new_pool { workers = 1, hard_cancel = false }
    local ch = weft.chan()
    local ctx, cancel = weft.with_cancel(root)
    local f = assert(soft:submit(ctx, function(c, x) return x:recv(c) end, ch))
    parked(soft, 1)
    cancel()
    assert.same({ true, nil, CANCELED }, { await(f) })

    local hard = new_pool { workers = 1 }
    ctx, cancel = weft.with_cancel(root)
    f = assert(hard:submit(ctx, function(c, x) x:send(c, "never") return "went on" end, ch))
    parked(hard, 1)
    cancel()
    assert.same({ false, CANCELED }, { await(f) })
    assert.same({ nil, "empty" }, { ch:try_recv() })
  end)

  it("with_timeout ends recv and send with DEADLINE_EXCEEDED, in time (main state)", function()
    local empty, full = weft.chan(1), weft.chan(1)
    assert.is_true(full:try_send(0))
    local calls = {
      recv = function(c) return empty:recv(c) end,
      send_full = function(c) return full:send(c, 1) end,
      send_unbuffered = function(c) return weft.chan():send(c, 1) end,
      recv_unbuffered = function(c) return weft.chan():recv(c) end,
    }
    for what, call in pairs(calls) do
      local t0 = weft.now()
      assert.same({ nil, DEADLINE }, { call(weft.with_timeout(root, 0.1)) }, what)
      local dt = elapsed_since(t0)
      assert.is_true(dt >= 0.08 and dt < 5, what .. " took " .. dt .. "s")
    end
    -- a duration string works as well
    local t0 = weft.now()
    assert.same({ nil, DEADLINE }, { empty:recv((weft.with_timeout(root, "100ms"))) })
    assert.is_true(elapsed_since(t0) < 5)
    assert.equal(1, full:len())
  end)

  it("with_timeout ends a parked recv and send with DEADLINE_EXCEEDED, in time", function()
    local p = new_pool { workers = 1, limit = 2 }
    local empty, full = weft.chan(1), weft.chan(1)
    assert.is_true(full:try_send(0))
    local t0 = weft.now()
    local f1 = assert(p:submit(root, function(c, x)
      local t = weft.now()
      local v, err = x:recv((weft.with_timeout(c, 0.1)))
      return v, err, weft.now() - t
    end, empty))
    local f2 = assert(p:submit(root, function(c, x)
      local t = weft.now()
      local v, err = x:send((weft.with_timeout(c, 0.1)), 1)
      return v, err, weft.now() - t
    end, full))
    for _, f in ipairs { f1, f2 } do
      local ok, v, err, dt = await(f)
      assert.is_true(ok)
      assert.is_nil(v)
      assert.equal(DEADLINE, err)
      assert.is_true(dt >= 0.08 and dt < 5, "took " .. dt .. "s")
    end
    assert.is_true(elapsed_since(t0) < 10)
  end)

  it("an ended ctx: recv on an empty channel and send on a full one return at once", function()
    local ctx, cancel = weft.with_cancel(root)
    cancel()
    local dead = weft.with_deadline(root, weft.now() - 1)
    local empty, full = weft.chan(1), weft.chan(1)
    assert.is_true(full:try_send(0))
    local t0 = weft.now()
    assert.same({ nil, CANCELED }, { empty:recv(ctx) })
    assert.same({ nil, CANCELED }, { full:send(ctx, 1) })
    assert.same({ nil, CANCELED }, { weft.chan():send(ctx, 1) })
    assert.same({ nil, DEADLINE }, { empty:recv(dead) })
    assert.same({ nil, DEADLINE }, { full:send(dead, 1) })
    assert.is_true(elapsed_since(t0) < 1)
    assert.equal(0, full:try_recv())
    assert.same({ nil, "empty" }, { full:try_recv() })
  end)
end)

-------------------------------------------------------------------------------
describe("copying values", function()
  -- Booleans, numbers and strings of up to 24 bytes travel inline in the
  -- channel (no encoded buffer); longer strings and tables are encoded.
  -- Both kinds must come back exactly, whichever path carried them.
  local function scalars()
    local vs = { false, true, 0, 0.0, -0.0, 1, -1, 1.5, 2 ^ 53, 1 / 0, -1 / 0,
      math.mininteger, math.maxinteger, math.pi, -math.huge, 5e-324,
      "", "\0", "a\0b", ("x"):rep(23), ("y"):rep(24), ("z"):rep(25), ("\0"):rep(24),
      ("\255"):rep(24) .. "\0", ("long "):rep(40), { 1, "t" } }
    for n = 0, 26 do vs[#vs + 1] = ("%02d"):format(n):rep(13):sub(1, n) end
    return vs
  end
  -- Whether got is exactly v: same type, same integer/float subtype, same
  -- bits for floats (-0.0 vs 0.0), NaN for NaN.
  local function exact(v, got)
    if type(v) ~= type(got) then return false end
    if type(v) == "number" then
      if math.type(v) ~= math.type(got) then return false end
      if v ~= v then return got ~= got end
      return v == got and (v ~= 0 or 1 / v == 1 / got)
    end
    if type(v) == "table" then return v[1] == got[1] and v[2] == got[2] end
    return v == got
  end

  it("inline scalars round-trip exactly: subtypes, -0.0, NaN, extremes, zero bytes, 24/25-byte strings",
    function()
    local vs = scalars()
    local nan = 0 / 0
    local ch = weft.chan(#vs + 1)
    local ctx = bounded()
    for _, v in ipairs(vs) do assert.is_true(ch:send(ctx, v)) end
    assert.is_true(ch:try_send(nan))
    for i, v in ipairs(vs) do
      local got = ch:recv(ctx)
      assert.is_true(exact(v, got), ("value %d: %s (%s) came back as %s (%s)"):format(
        i, tostring(v), math.type(v) or type(v), tostring(got), math.type(got) or type(got)))
    end
    local got = ch:try_recv()
    assert.is_true(got ~= got and math.type(got) == "float", "NaN")
    -- through select, both ways
    for i, v in ipairs(vs) do
      assert.same({ 1, true }, { weft.select(ctx, { { send = ch, value = v } }) })
      local k, w = weft.select(ctx, { { recv = ch } })
      assert.equal(1, k)
      assert.is_true(exact(v, w), "select, value " .. i)
    end
  end)

  for _, cap in ipairs { 0, 1 } do
    it(("inline scalars round-trip exactly between threads, capacity %d (hand-over and parked senders)"):format(cap),
      function()
      local p = new_pool { workers = 2, limit = 2 }
      local vs = scalars()
      local to, from = weft.chan(cap), weft.chan(cap)
      -- the job echoes every value back: through a parked receiver
      -- (cap 0: handed over) and a parked sender (cap 1: moved in)
      local f = assert(p:submit(root, function(c, inp, out)
        local n = 0
        for v in inp:iter(c) do
          local ok, err = out:send(c, v)
          if not ok then return false, err end
          n = n + 1
        end
        out:close()
        return n
      end, to, from))
      local ctx = bounded(60)
      local sender = assert(p:submit(root, function(c, out, list)
        for _, v in ipairs(list) do
          local ok, err = out:send(c, v)
          if not ok then return false, err end
        end
        local ok, err = out:send(c, 0 / 0)
        if not ok then return false, err end
        out:close()
        return true
      end, to, vs))
      for i, v in ipairs(vs) do
        local got, err = from:recv(ctx)
        assert.is_nil(err)
        assert.is_true(exact(v, got), ("value %d: %s (%s) came back as %s (%s)"):format(
          i, tostring(v), math.type(v) or type(v), tostring(got), math.type(got) or type(got)))
      end
      local got = from:recv(ctx)
      assert.is_true(got ~= got and math.type(got) == "float", "NaN")
      assert.same({ nil, CLOSED }, { from:recv(ctx) })
      assert.same({ true, true }, { await(sender, 60) })
      assert.same({ true, #vs + 1 }, { await(f, 60) })
    end)
  end

  it("deep copies a table when it is sent", function()
    local ch = weft.chan(1)
    local t = { name = "job", tags = { "a", "b" } }
    assert.is_true(ch:send(bounded(), t))
    t.name = "changed"
    t.tags[1] = "z"
    local got = ch:recv(bounded())
    assert.are_not.equal(t, got)
    assert.same({ name = "job", tags = { "a", "b" } }, got)
  end)

  it("keeps cycles, shared references and metatables", function()
    local ch = weft.chan(1)
    local shared = { 1 }
    local mt = { __index = function(_, k) return "meta " .. k end }
    local t = setmetatable({ a = shared, b = shared }, mt)
    t.self = t
    assert.is_true(ch:try_send(t))
    local got = ch:try_recv()
    assert.equal(got, got.self)
    assert.equal(got.a, got.b)
    assert.are_not.equal(shared, got.a)
    assert.equal("meta x", got.x)
  end)

  it("copies into a job's state and back", function()
    local p = new_pool { workers = 1 }
    local to, from = weft.chan(1), weft.chan(1)
    local f = assert(p:submit(root, function(c, inp, out)
      local v = inp:recv(c)
      local fine = v.self == v and math.type(v.n) == "integer" and math.type(v.x) == "float"
      v.seen_by_job = true
      return out:send(c, v), fine
    end, to, from))
    local t = { n = 1, x = 1.0, list = { "a", "b" } }
    t.self = t
    assert.is_true(to:send(bounded(), t))
    local got = from:recv(bounded())
    assert.same({ true, true, true }, { await(f) })
    assert.is_nil(t.seen_by_job)
    assert.is_true(got.seen_by_job)
    assert.equal(got, got.self)
    assert.same({ "a", "b" }, got.list)
  end)

  it("sends functions with their upvalues; a job calls them", function()
    local p = new_pool { workers = 1 }
    local ch = weft.chan(1)
    local k = 6
    assert.is_true(ch:try_send(function(x) return x * k end))
    local f = assert(p:submit(root, function(c, x)
      local fn = x:recv(c)
      return fn(7)
    end, ch))
    assert.same({ true, 42 }, { await(f) })
  end)

  it("raises for a value that cannot be copied, naming its path; nothing is sent", function()
    local ch = weft.chan(2)
    local ok, err = pcall(ch.send, ch, bounded(), { conn = io.stdout })
    assert.is_false(ok)
    assert.matches(".conn: cannot copy userdata (FILE*)", err, 1, true)
    ok, err = pcall(ch.try_send, ch, { deep = { list = { 1, io.stderr } } })
    assert.is_false(ok)
    assert.matches(".deep.list[2]: cannot copy userdata (FILE*)", err, 1, true)
    ok, err = pcall(ch.send, ch, bounded(), coroutine.create(print))
    assert.is_false(ok)
    assert.matches("cannot copy thread", err, 1, true)
    local fh = io.stdout
    ok, err = pcall(ch.send, ch, bounded(), function() return fh end)
    assert.is_false(ok)
    assert.matches("upvalue fh", err, 1, true)
    assert.matches("cannot copy userdata (FILE*)", err, 1, true)
    assert.equal(0, ch:len())
    assert.same({ nil, "empty" }, { ch:try_recv() })
    -- the channel still works
    assert.is_true(ch:send(bounded(), "fine"))
    assert.equal("fine", ch:recv(bounded()))
    -- an unbuffered channel with a receiver waiting: the receiver gets nothing
    local p = new_pool { workers = 1 }
    local u = weft.chan()
    local f = assert(p:submit(root, function(c, x) return x:recv(c) end, u))
    parked(p, 1)
    assert.has_error(function() u:send(bounded(), { conn = io.stdout }) end)
    assert.is_false(f:done())
    assert.is_true(u:send(bounded(), "after"))
    assert.same({ true, "after" }, { await(f) })
  end)

  it("raises when sending nil", function()
    for _, cap in ipairs { 0, 1 } do
      local ch = weft.chan(cap)
      assert.has_error(function() ch:send(bounded(), nil) end, "bad argument #2 to 'send' (cannot send nil)")
      assert.has_error(function() ch:send(bounded()) end, "bad argument #2 to 'send' (cannot send nil)")
      local ok, err = pcall(ch.try_send, ch, nil)
      assert.is_false(ok)
      assert.matches("cannot send nil", err, 1, true)
      assert.equal(0, ch:len())
    end
  end)

  it("channels are shared handles: weft.copy(ch) == ch, through channels, job arguments and upvalues", function()
    local ch = weft.chan(4)
    assert.equal(ch, weft.copy(ch))
    assert.equal(ch, weft.copy({ c = ch }).c)
    local outer = weft.chan(1)
    assert.is_true(outer:send(bounded(), ch))
    assert.equal(ch, outer:recv(bounded()))

    local p = new_pool { workers = 1 }
    -- captured as an upvalue by a job; it comes back as the same handle
    local f = assert(p:submit(root, function(c)
      local ok = ch:send(c, "via upvalue")
      return ok, ch
    end))
    local ok, sent, back = await(f)
    assert.is_true(ok)
    assert.is_true(sent)
    assert.equal(ch, back)
    assert.equal("via upvalue", ch:recv(bounded()))

    -- a reply channel sent through a channel to a job
    local requests, reply = weft.chan(1), weft.chan(1)
    f = assert(p:submit(root, function(c, req)
      local msg = req:recv(c)
      local same = msg.reply == msg.again
      msg.reply:send(c, msg.n * 2)
      return msg.reply, same
    end, requests))
    assert.is_true(requests:send(bounded(), { n = 21, reply = reply, again = reply }))
    assert.equal(42, reply:recv(bounded()))
    local ok2, back2, same = await(f)
    assert.is_true(ok2)
    assert.equal(reply, back2)
    assert.is_true(same)
  end)

  it("a job's channel sent back through a channel is the same channel in main", function()
    local p = new_pool { workers = 1 }
    local out = weft.chan(1)
    local f = assert(p:submit(root, function(c, o)
      local mine = weft.chan(1)
      mine:send(c, "inside")
      o:send(c, mine)
      o:send(c, mine)
      return true
    end, out))
    local a = out:recv(bounded())
    local b = out:recv(bounded())
    assert.same({ true, true }, { await(f) })
    assert.equal(a, b)
    assert.equal(1, a:cap())
    assert.equal("inside", a:recv(bounded()))
  end)
end)

-------------------------------------------------------------------------------
describe("iter", function()
  it("ends once the channel is closed and drained; false does not end it", function()
    local ch = weft.chan(10)
    for _, v in ipairs { 1, false, "three", 4 } do assert.is_true(ch:try_send(v)) end
    ch:close()
    local ctx = bounded()
    local got = {}
    for v in ch:iter(ctx) do got[#got + 1] = v end
    assert.same({ 1, false, "three", 4 }, got)
    assert.is_nil(ctx:err())
    assert.equal(0, ch:len())
  end)

  it("ends when closed while it waits (closed from a job)", function()
    local p = new_pool { workers = 1 }
    local ch = weft.chan()
    local f = assert(p:submit(root, function(c, x)
      for i = 1, 3 do x:send(c, i) end
      weft.sleep(c, 0.05)
      x:close()
      return true
    end, ch))
    local ctx = bounded()
    local got = {}
    for v in ch:iter(ctx) do got[#got + 1] = v end
    assert.same({ 1, 2, 3 }, got)
    assert.is_nil(ctx:err())
    assert.same({ true, true }, { await(f) })
  end)

  it("ends when its ctx ends; ctx:err() says why", function()
    local ch = weft.chan(5)
    for i = 1, 3 do assert.is_true(ch:try_send(i)) end
    local ctx = weft.with_timeout(root, 0.2)
    local got = {}
    local t0 = weft.now()
    for v in ch:iter(ctx) do got[#got + 1] = v end
    assert.same({ 1, 2, 3 }, got)
    assert.equal(DEADLINE, ctx:err())
    assert.is_true(elapsed_since(t0) < 5)
    assert.is_false(ch:closed())

    local c2, cancel = weft.with_cancel(root)
    local p = new_pool { workers = 1 }
    local f = assert(p:submit(root, function(c, kill) weft.sleep(c, 0.05) kill() return true end, cancel))
    local n = 0
    for _ in ch:iter(c2) do n = n + 1 end
    assert.equal(0, n)
    assert.equal(CANCELED, c2:err())
    assert.same({ true, true }, { await(f) })
  end)

  it("works in a job: a pipeline of three stages over two channels", function()
    local p = new_pool { workers = 2, limit = 3 }
    local a, b = weft.chan(4), weft.chan()
    local src = assert(p:submit(root, function(c, out)
      for i = 1, 1000 do out:send(c, i) end
      out:close()
      return true
    end, a))
    local sq = assert(p:submit(root, function(c, inp, out)
      for v in inp:iter(c) do out:send(c, v * v) end
      out:close()
      return c:err() == nil
    end, a, b))
    local ctx = bounded(60)
    local sum, n = 0, 0
    for v in b:iter(ctx) do
      sum = sum + v
      n = n + 1
    end
    assert.is_nil(ctx:err())
    assert.equal(1000, n)
    assert.equal(1000 * 1001 * 2001 // 6, sum)
    assert.same({ true, true }, { await(src) })
    assert.same({ true, true }, { await(sq) })
  end)
end)

-------------------------------------------------------------------------------
describe("parking", function()
  it("1 worker, limit 2: a producer and a consumer on an unbuffered channel", function()
    local p = new_pool { workers = 1, limit = 2 }
    local u = weft.chan()
    local cons = assert(p:submit(root, function(c, inp)
      local n, sum, expect = 0, 0, 1
      for v in inp:iter(c) do
        if v ~= expect then return false, "out of order" end
        expect = expect + 1
        n = n + 1
        sum = sum + v
      end
      return n, sum
    end, u))
    local prod = assert(p:submit(root, function(c, out)
      for i = 1, 1000 do
        local ok, err = out:send(c, i)
        if not ok then return false, err end
      end
      out:close()
      return true
    end, u))
    assert.same({ true, true }, { await(prod) })
    assert.same({ true, 1000, 500500 }, { await(cons) })
    local s = p:stats()
    assert.equal(1, s.workers)
  end)

  it("1 worker, limit 64: 64 jobs blocked in recv, then fed from main", function()
    local p = new_pool { workers = 1, limit = 64 }
    local ch = weft.chan()
    local fs = {}
    for i = 1, 64 do
      fs[i] = assert(p:try_submit(root, function(c, inp) return inp:recv(c) end, ch))
    end
    parked(p, 64)
    local s = p:stats()
    assert.equal(64, s.inflight)
    assert.equal(0, s.running)
    local ctx = bounded()
    for i = 1, 64 do assert.is_true(ch:send(ctx, i)) end
    local seen = {}
    for i = 1, 64 do
      local ok, v = await(fs[i])
      assert.is_true(ok)
      assert.is_nil(seen[v])
      seen[v] = true
    end
    for i = 1, 64 do assert.is_true(seen[i]) end
    p:wait()
    assert.equal(64, p:stats().completed)
  end)

  it("1 worker, limit 64: 64 jobs blocked in send on a full channel, drained from main", function()
    local p = new_pool { workers = 1, limit = 64 }
    local ch = weft.chan(1)
    assert.is_true(ch:try_send(0))
    local fs = {}
    for i = 1, 64 do
      fs[i] = assert(p:try_submit(root, function(c, out, v) return out:send(c, v) end, ch, i))
    end
    parked(p, 64)
    local ctx = bounded()
    local seen = {}
    for _ = 0, 64 do
      local v = ch:recv(ctx)
      assert.is_nil(seen[v])
      seen[v] = true
    end
    for i = 0, 64 do assert.is_true(seen[i]) end
    for i = 1, 64 do assert.same({ true, true }, { await(fs[i]) }) end
    assert.same({ nil, "empty" }, { ch:try_recv() })
  end)
end)

-------------------------------------------------------------------------------
describe("memory", function()
  local function rss_kb()
    local fh = io.open("/proc/self/status")
    if not fh then return nil end
    local s = fh:read("a")
    fh:close()
    return tonumber(s:match("VmRSS:%s*(%d+)"))
  end

  local function full_gc()
    collectgarbage()
    collectgarbage()
  end

  -- ASan keeps freed blocks in its quarantine (256 MB), so RSS says
  -- nothing there; LeakSanitizer checks for leaks at exit instead.
  local check_rss = VARIANT ~= "asan" and rss_kb() ~= nil
  local rss_margin_kb = (VARIANT == "tsan" and 48 or 32) * 1024

  it("100,000 channels made and dropped (some holding values, some holding channels) do not grow memory",
    function()
    local pad = string.rep("x", 2048)
    local failures = 0
    local function burst(n)
      for i = 1, n do
        local k = i % 4
        if k == 0 then
          local ch = weft.chan()
          if ch:cap() ~= 0 then failures = failures + 1 end
        elseif k == 1 then
          local ch = weft.chan(2)
          if not ch:try_send(pad .. i) then failures = failures + 1 end
          if not ch:try_send({ i, pad }) then failures = failures + 1 end
        elseif k == 2 then
          local inner = weft.chan(1)
          if not inner:try_send(pad .. i) then failures = failures + 1 end
          local ch = weft.chan(1)
          if not ch:try_send(inner) then failures = failures + 1 end
        else
          local ch = weft.chan(1)
          if not ch:try_send(pad) then failures = failures + 1 end
          ch:close()
        end
        if i % 1000 == 0 then collectgarbage() end
      end
    end
    burst(10000)
    full_gc()
    local mem0, rss0 = collectgarbage("count"), rss_kb()
    -- a leak would keep about 2 KB per channel: 150 MB and more
    burst(100000)
    full_gc()
    local mem1, rss1 = collectgarbage("count"), rss_kb()
    assert.equal(0, failures)
    print(("# 100,000 channels: Lua heap %+d KB, RSS %+d KB (%s)")
      :format(math.floor(mem1 - mem0), (rss1 or 0) - (rss0 or 0), VARIANT))
    assert.is_true(mem1 < mem0 + 1024, "Lua memory grew by " .. (mem1 - mem0) .. " KB")
    if check_rss then
      assert.is_true(rss1 < rss0 + rss_margin_kb, "RSS grew by " .. (rss1 - rss0) .. " KB")
    end
  end)

  it("channels handed to a worker and dropped by both states are freed", function()
    local p = new_pool { workers = 1 }
    local feed = weft.chan(64)
    local f = assert(p:submit(root, function(c, inp)
      local n, held = 0, 0
      for ch in inp:iter(c) do
        n = n + 1
        held = held + ch:len()
        if n % 1000 == 0 then collectgarbage() end
      end
      collectgarbage()
      return n, held
    end, feed))
    local pad = string.rep("y", 2048)
    local ctx = bounded(120)
    local function burst(n)
      for i = 1, n do
        local ch = weft.chan(1)
        ch:try_send(pad .. i)
        assert(feed:send(ctx, ch))
        if i % 1000 == 0 then collectgarbage() end
      end
    end
    burst(5000)
    assert.is_true(eventually(function() return feed:len() == 0 end))
    full_gc()
    local rss0 = rss_kb()
    -- a leak would keep more than 100 MB
    burst(50000)
    feed:close()
    assert.same({ true, 55000, 55000 }, { await(f, 120) })
    full_gc()
    local rss1 = rss_kb()
    print(("# 50,000 channels through a worker: RSS %+d KB (%s)"):format((rss1 or 0) - (rss0 or 0), VARIANT))
    if check_rss then
      assert.is_true(rss1 < rss0 + rss_margin_kb, "RSS grew by " .. (rss1 - rss0) .. " KB")
    end
  end)
end)
