--- weft.template: command templates for weft.exec (LPeg).
--
-- A template is a command line with GNU parallel's replacement strings:
--
--   convert {} -resize 50% --out={/.}.png
--
-- The text is split into words when it is parsed, the way a shell would:
-- whitespace separates words; '...' quotes literally; "..." quotes and
-- still expands replacement strings; a backslash escapes the character
-- after it (in "...", only " \ { and }; elsewhere a backslash is kept).
-- "{{" and "}}" are literal braces outside single quotes (so a literal
-- brace in "..." is "{{" or "\{": sh -c "awk '{{print}}'").  An expansion
-- is then one argv entry per word: a replacement is inserted into its
-- word and never split again, so an item with spaces, quotes, globs or
-- "$(...)" in it is one argument (or part of one), passed to the program
-- as is.  No shell is involved anywhere.
--
-- Replacement strings (inside a word, or a word on their own):
--   {}      the item
--   {.}     the item without its extension
--   {/}     the basename of the item
--   {//}    the dirname of the item
--   {/.}    the basename without its extension
--   {#}     the job number (the index argument of expand)
--   {name}  the field `name` of a table item (a Lua identifier)
--   {n}     the field [n] of a table item, n >= 1; a string or number
--           item counts as the one-element list { item }, as GNU parallel's
--           {1} is its first input source
--   {n.} {n/} {n//} {n/.}   the path forms of field [n]
-- Names take no path forms ({name.} is an unknown replacement string), and
-- GNU parallel's other strings ({%}, {##}, {= perl =}, --plus) are unknown.
--
-- The path forms are GNU parallel's own definitions (its --rpl list):
--   {.}   s:\.[^/.]+$::      "dir/a.tar.gz" -> "dir/a.tar", "a" -> "a",
--                            "sub.dir/a" -> "sub.dir/a", ".bashrc" -> "",
--                            "a." -> "a."
--   {/}   s:.*/::            "dir/a.txt" -> "a.txt", "a/b/" -> ""
--   {//}  File::Basename::dirname: "dir/a" -> "dir", "a" -> ".",
--                            "a/b/" -> "a", "/a" -> "/", "/" -> "/"
--   {/.}  s:.*/::; s:\.[^/.]+$::
-- One deliberate difference: a newline in an item is an ordinary
-- character (Perl's "." stops at newlines, so GNU parallel's {/} of
-- "x\ny/z" is "x\nz"; here it is "z").
--
-- As in GNU parallel, a template with no replacement string at all
-- ({#} and fields count) gets {} appended as a last word: "gzip -9"
-- expands like "gzip -9 {}".  Text in single quotes or escaped braces is
-- not a replacement string.
--
-- parse(s) returns a template t (t.source: the text, also tostring(t);
-- t.implicit: true when {} was appended), or nil and a message with the line
-- and column (counted in characters), the template line and a caret:
--   template:1:9: unterminated double quote
--     convert "{}.png
--             ^
-- t:expand(item, index) returns the argv table (a fresh array of strings,
-- one per word; empty words stay empty strings).  Numbers become strings
-- as tostring does.  An expansion the item cannot satisfy (a missing
-- field, a table item for {}, a field that is not a string or number)
-- returns nil and a message naming the replacement and its column, since
-- that depends on the data:
--   template:1:6: {name}: the item has no field "name"
-- A NUL byte, which no argument can hold, is refused in the template (a
-- parse error) and in a value (an expansion error).  Misuse raises: a
-- non-string template, an item that is not a string, number or table, a
-- missing or non-integer index for a template with {#}.  template.expand(s,
-- item, index) is parse and expand in one call.  The grammar is compiled
-- once, at load.
local lpeg = require "lpeg"
local shared = require "weft.grammar"

local P, R, S, C, Cc, Cp, Ct = lpeg.P, lpeg.R, lpeg.S, lpeg.C, lpeg.Cc, lpeg.Cp, lpeg.Ct
local match = lpeg.match
local concat, unpack = table.concat, table.unpack
local tointeger, mtype = math.tointeger, math.type

local template = {}

-- Messages ------------------------------------------------------------------

local quote = shared.quote

-- Line, column (in UTF-8 characters when the line is valid UTF-8) and the
-- text of the line holding byte pos, and the prefix of that line before pos.
local function locate(s, pos)
  local line, start = 1, 1
  for nl in s:sub(1, pos - 1):gmatch "()\n" do
    line, start = line + 1, nl + 1
  end
  local stop = s:find("\n", pos, true) or #s + 1
  local prefix = s:sub(start, pos - 1)
  local col = (utf8.len(prefix) or #prefix) + 1
  return line, col, s:sub(start, stop - 1), prefix
end

local function where(s, pos)
  local line, col = locate(s, pos)
  return ("template:%d:%d: "):format(line, col)
end

-- "template:L:C: reason", then the line and a caret under column C.
local function parse_error(s, pos, reason)
  local line, col, text, prefix = locate(s, pos)
  local pad
  if utf8.len(prefix) then
    pad = prefix:gsub(utf8.charpattern, function(c) return c == "\t" and "\t" or " " end)
  else
    pad = prefix:gsub("[^\t]", " ")
  end
  text = text:gsub("[%z\1-\8\11-\31\127]", "?") -- one byte each: the caret stays aligned
  return ("template:%d:%d: %s\n  %s\n  %s^"):format(line, col, reason, text, pad)
end

-- The grammar ---------------------------------------------------------------

-- A template matches as a list of words; a word is a list of parts: strings
-- (literal text), replacement nodes { kind = "item" | "index" | "field" |
-- "seq", op = "" | "." | "/" | "//" | "/.", key = n or name, text = "{..}",
-- pos = byte }, and, at the first problem, one failure { fail = reason,
-- pos = byte } that swallows the rest of the input (so it is the last
-- part of the last word).

local rest = shared.rest
local space = S " \t\n\r\v\f"
local special = space + S "'\"\\{}"

local failure, fail = shared.failure, shared.fail

-- replacement strings
local op = C(P "//" + P "/." + P "/" + P ".") + Cc ""
local ident = C((R("az", "AZ") + "_") * (R("az", "AZ", "09") + "_") ^ 0)
local position = C(R "19" * R "09" ^ 0) / function(d) return tointeger(tonumber(d)) or tonumber(d) end

-- { kind, op, key, text, pos }: Cp() before the brace, then the whole
-- "{...}" text, then the kind and its values
local replacement = Cp() * C(P "{" * (
      Cc "seq" * P "#"
      + Cc "index" * position * op
      + Cc "field" * ident
      + Cc "item" * op
    ) * P "}")
  / function(pos, text, kind, a, b)
    local n = { kind = kind, op = "", text = text, pos = pos }
    if kind == "index" then n.key, n.op = a, b
    elseif kind == "field" then n.key = a
    elseif kind == "item" then n.op = a
    end
    return n
  end

local unknown = Cp() * C(P "{" * (1 - S "{}") ^ 0 * P "}") * rest
  / failure(function(text) return "unknown replacement string " .. quote(text) end)
local brace = P "{{" * Cc "{" + P "}}" * Cc "}" + replacement + unknown
  + fail(P "{", 'unmatched "{" (write "{{" for a literal brace)')
  + fail(P "}", 'unmatched "}" (write "}}" for a literal brace)')

-- '...': literal; no escapes
local single = P "'" * C((1 - P "'") ^ 0) * P "'" + fail(P "'", "unterminated single quote")

-- "...": replacements expand; \" \\ \{ \} are escapes, other backslashes stay
local dq_part = P "\\" * C(S '"\\{}') + C((1 - S '"\\{}') ^ 1) + C(P "\\") + brace
local double = Cp() * P '"' * Ct(dq_part ^ 0) * (P '"' * Cc(true) + Cc(false))
  / function(pos, parts, closed)
    local last = parts[#parts]
    if not closed and not (type(last) == "table" and last.fail) then
      return { fail = "unterminated double quote", pos = pos }
    end
    return unpack(parts)
  end

local unquoted = C((1 - special) ^ 1)
  + P "\\" * C(1)
  + fail(P "\\", "backslash at the end of the template")

local part = unquoted + single + double + brace
local word = Ct(part ^ 1)
local grammar = Ct(space ^ 0 * (word * space ^ 0) ^ 0) * -P(1)

-- Path forms (GNU parallel's definitions) -------------------------------------

local function strip_ext(s) -- s:\.[^/.]+$::
  local i = s:find "%.[^/.]+$"
  return i and s:sub(1, i - 1) or s
end

local function basename(s) -- s:.*/::
  return (s:match "[^/]*$")
end

-- Perl's File::Basename::dirname on Unix: fileparse, then trailing slashes
-- stripped (keeping one character); when the basename was empty (the path
-- ended in "/"), once more from the stripped directory.
local function strip_slashes(d) -- s{(.)/*\z}{$1}s
  local t = d:match "^(.-)/*$"
  if t == "" then t = d:sub(1, 1) end
  return t
end

local function fileparse(s) -- m{^(.*/)?(.*)}s, directory "./" when none
  local dir, base = s:match "^(.*/)(.*)$"
  if not dir then return "./", s end
  return dir, base
end

local function dirname(s)
  local dir, base = fileparse(s)
  dir = strip_slashes(dir)
  if base == "" then
    dir = strip_slashes((fileparse(dir)))
  end
  return dir
end

local ops = {
  [""] = function(s) return s end,
  ["."] = strip_ext,
  ["/"] = basename,
  ["//"] = dirname,
  ["/."] = function(s) return strip_ext(basename(s)) end,
}

-- Templates -----------------------------------------------------------------

local Template = {}
Template.__index = Template
Template.__name = "weft.template"

function Template.__tostring(t)
  return t.source
end

local function describe(n, source)
  if n.implicit then return "template: {} (appended: the template has no replacement string): " end
  return where(source, n.pos) .. n.text .. ": "
end

local function text_of(v)
  if type(v) == "string" then return v end
  if type(v) == "number" then return tostring(v) end
  return nil
end

-- The string for one replacement node, or nil and a message.
local function value(t, n, item, index)
  local kind = n.kind
  if kind == "seq" then return index end
  local it = type(item)
  local v
  if kind == "item" then
    v = text_of(item)
    if v == nil then
      return nil, describe(n, t.source) .. "the item is a table (use {name} or {1} for its fields)"
    end
  elseif kind == "field" then
    if it ~= "table" then
      return nil, describe(n, t.source) .. ("the item is a %s, not a table with fields"):format(it)
    end
    v = item[n.key]
    if v == nil then
      return nil, describe(n, t.source) .. ("the item has no field %s"):format(quote(n.key))
    end
  else -- index
    if it == "table" then
      v = item[n.key]
    elseif n.key == 1 then
      v = item
    end
    if v == nil then
      return nil, describe(n, t.source) .. ("the item has no field [%s]"):format(n.key)
    end
  end
  local s = text_of(v)
  if s == nil then
    local name = kind == "field" and quote(n.key) or ("[" .. n.key .. "]")
    return nil, describe(n, t.source) .. ("field %s is a %s, not a string or number"):format(name, type(v))
  end
  if s:find("\0", 1, true) then
    return nil, describe(n, t.source) .. "the value has a NUL byte (an argument cannot hold one)"
  end
  return ops[n.op](s)
end

-- The job number as a string (false when the template has no {#}), or nil
-- and the message for a bad argument (argn: the item's argument number).
local function arguments(t, item, index, argn)
  local it = type(item)
  if it ~= "string" and it ~= "number" and it ~= "table" then
    return nil, ("bad argument #%d to 'expand' (string, number or table expected, got %s)"):format(argn, it)
  end
  if not t._seq then return false end
  local i = mtype(index) == "float" and tointeger(index) or index
  if mtype(i) ~= "integer" then
    local got = mtype(index) == "float" and "non-integer number" or type(index)
    return nil, ("bad argument #%d to 'expand' (job number expected for {#}, got %s)"):format(argn + 1, got)
  end
  return ("%d"):format(i)
end

local function expand(t, item, index)
  local argv, buf = {}, {}
  local words = t._words
  for i = 1, #words do
    local w = words[i]
    if type(w) == "string" then
      argv[i] = w
    else
      for j = 1, #w do
        local p = w[j]
        if type(p) == "string" then
          buf[j] = p
        else
          local v, err = value(t, p, item, index)
          if v == nil then return nil, err end
          buf[j] = v
        end
      end
      argv[i] = concat(buf, "", 1, #w)
    end
  end
  return argv
end

--- The argv for one item: an array of strings, or nil and a message.
function Template:expand(item, index)
  if getmetatable(self) ~= Template then
    error(("calling 'expand' on bad self (weft.template expected, got %s)"):format(type(self)), 2)
  end
  local seq, bad = arguments(self, item, index, 1)
  if seq == nil then error(bad, 2) end
  return expand(self, item, seq)
end

-- Builds the template from the matched words: adjacent literals merged,
-- words without replacements kept as plain strings.
local function build(s, words)
  local t = setmetatable({ source = s, _words = {}, _seq = false, implicit = false }, Template)
  local any = false
  for i = 1, #words do
    local w, out, lit = words[i], {}, {}
    for j = 1, #w do
      local p = w[j]
      if type(p) == "string" then
        lit[#lit + 1] = p
      else
        if #lit > 0 then out[#out + 1] = concat(lit); lit = {} end
        any = true
        if p.kind == "seq" then t._seq = true end
        out[#out + 1] = p
      end
    end
    if #lit > 0 then out[#out + 1] = concat(lit) end
    if #out == 0 then
      t._words[i] = ""
    elseif #out == 1 and type(out[1]) == "string" then
      t._words[i] = out[1]
    else
      t._words[i] = out
    end
  end
  if not any then
    t.implicit = true
    t._words[#t._words + 1] = { { kind = "item", op = "", text = "{}", implicit = true } }
  end
  return t
end

--- A template for the command line s, or nil and a message.
function template.parse(s)
  if type(s) ~= "string" then
    error(("bad argument #1 to 'parse' (string expected, got %s)"):format(type(s)), 2)
  end
  local nul = s:find("\0", 1, true)
  if nul then
    return nil, parse_error(s, nul, "NUL byte in the template (an argument cannot hold one)")
  end
  local words = match(grammar, s)
  local last = words[#words]
  last = last and last[#last]
  if type(last) == "table" and last.fail then
    return nil, parse_error(s, last.pos, last.fail)
  end
  if #words == 0 then
    return nil, "template:1:1: empty template"
  end
  return build(s, words)
end

local cache = setmetatable({}, { __mode = "v" })

--- parse(s) and t:expand(item, index) in one call (parsed templates are
--- cached while in use).
function template.expand(s, item, index)
  if type(s) ~= "string" then
    error(("bad argument #1 to 'expand' (string expected, got %s)"):format(type(s)), 2)
  end
  local t = cache[s]
  if not t then
    local err
    t, err = template.parse(s)
    if not t then return nil, err end
    cache[s] = t
  end
  local seq, bad = arguments(t, item, index, 2)
  if seq == nil then error(bad, 2) end
  return expand(t, item, seq)
end

return template
