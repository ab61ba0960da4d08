--- pipeline_ordered.lua: an ordered pipeline with weft.pipeline.
--
-- "Pages" of uneven cost go through two parallel stages (render, then
-- compress); `ordered = true` hands the results over in page order, however
-- the workers finish them.  Each result records when its render finished, so
-- the output shows pages finishing out of order and arriving in order.
--
-- Run from a checkout, after `make`:
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/?.so;;" lua5.4 scripts/pipeline_ordered.lua
local weft = require "weft"
local pipeline = require "weft.pipeline"

local PAGES = 24

-- Every wait below ends by this deadline at the latest.
local ctx = weft.with_timeout(weft.background(), "30s")
local t0 = weft.now()

-- The source: an array, sent in order.  A page's cost is made up (some are
-- ten times slower than others), standing in for I/O or a slow renderer.
local pages = {}
for i = 1, PAGES do
  pages[i] = { number = i, cost = (i * 37 % 10 + 1) * 0.004 }
end

-- Stage 1, render: 4 workers; weft.sleep parks the job, so the worker runs
-- other pages meanwhile.  Captures only weft (a module: it travels by name)
-- and t0 (a number).
local function render(job_ctx, page)
  weft.sleep(job_ctx, page.cost)
  page.rendered_at = weft.now() - t0
  page.text = ("page %02d"):format(page.number)
  return page
end

-- Stage 2, compress: 2 workers; drops page 13 (nil drops an item; the ordered
-- collector skips its place instead of waiting for it).
local function compress(job_ctx, page)
  if page.number == 13 then return nil end
  weft.sleep(job_ctx, 0.002)
  page.size = #page.text * 10
  return page
end

local order = {}
local count, err = pipeline.run(ctx, pages, {
  { render, workers = 4 },
  { compress, workers = 2 },
}, {
  ordered = true,
  sink = function(page)
    order[#order + 1] = page.number
    print(("%s  rendered at %5.1f ms  size %d"):format(page.text, page.rendered_at * 1e3, page.size))
  end,
})
assert(count, err)

print(("%d pages delivered in order: %s"):format(count, table.concat(order, " ")))
print("(the render times above are not increasing: the workers finished out of order)")

-- Without ordered, the same pipeline hands results over as they finish.
local arrival = {}
local _, err2 = pipeline.run(ctx, pages, {
  { render, workers = 4 },
  { compress, workers = 2 },
}, { sink = function(page) arrival[#arrival + 1] = page.number end })
assert(not err2, err2)
print(("unordered arrival:               %s"):format(table.concat(arrival, " ")))
