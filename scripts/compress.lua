--- compress.lua: processes as jobs, under the weft command.
--
--   bin/weft run --progress --joblog /tmp/compress.log scripts/compress.lua [DIR]
--
-- Writes a few files into DIR (default: a new temporary directory), then
-- gzips each with weft.exec from a weft.each over the default pool.  The
-- command line is a template: an item with spaces stays one argument.
-- Ctrl-C cancels weft.root(): running gzips get SIGTERM, the run exits 130.
local weft = require "weft"

local ctx = weft.root()
local dir = ... or os.tmpname() .. ".d"
assert(os.execute("mkdir -p '" .. dir:gsub("'", "'\\''") .. "'"))

local files = {}
for i = 1, 24 do
  local path = ("%s/file %02d.txt"):format(dir, i)  -- a space in every name
  local fh = assert(io.open(path, "w"))
  fh:write(string.rep(("line %d of a file that compresses well\n"):format(i), 2000))
  fh:close()
  files[#files + 1] = path
end

local t0 = weft.now()
local ok, err = weft.each(ctx, files, function(c, path, i)
  local res, xerr = weft.exec(c, "gzip -9 -f {}", { item = path, index = i, capture = true })
  if not res then error(xerr, 0) end
  if not res.ok then error(("gzip %s: %s"):format(path, res.stderr), 0) end
end, { batch = 1, name = "gzip" })
if not ok then error(err, 0) end

local total = 0
for _, path in ipairs(files) do
  local fh = assert(io.open(path .. ".gz", "rb"))
  total = total + #fh:read("a")
  fh:close()
end
print(("compressed %d files in %s: %d bytes of .gz in %.2f s"):format(
  #files, dir, total, weft.now() - t0))
