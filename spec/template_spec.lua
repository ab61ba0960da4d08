-- Command templates: the LPeg grammar (weft.template) and its expansion.

local template = require "weft.template"

-- a test name: s quoted on one line (TAP names must not hold newlines)
local function name(s)
  return (("%q"):format(s):gsub("\\\n", "\\n"))
end

-- argv for template s and item (and job number), failing the test on error
local function argv(s, item, index)
  local t, err = template.parse(s)
  assert(t, err)
  local a, xerr = t:expand(item, index)
  assert(a, xerr)
  return a
end

-- the error of template.expand(s, item, index), checked to be nil, message
local function expand_error(s, item, index)
  local a, err = template.expand(s, item, index)
  assert.is_nil(a, s)
  assert.is_string(err, s)
  return err
end

describe("weft.template", function()
  describe("path forms follow GNU parallel", function()
    -- item, {.}, {/}, {//}, {/.}
    local cases = {
      { "a.txt", "a", "a.txt", ".", "a" },
      { "dir/a.tar.gz", "dir/a.tar", "a.tar.gz", "dir", "a.tar" },
      { "a", "a", "a", ".", "a" },                         -- no extension, no dir
      { "dir/a", "dir/a", "a", "dir", "a" },
      { "sub.dir/bar", "sub.dir/bar", "bar", "sub.dir", "bar" }, -- a dot in the dir only
      { "sub.dir/a.b", "sub.dir/a", "a.b", "sub.dir", "a" },
      { ".bashrc", "", ".bashrc", ".", "" },               -- s:\.[^/.]+$:: takes all of it
      { "dir/.bashrc", "dir/", ".bashrc", "dir", "" },
      { "a.", "a.", "a.", ".", "a." },                     -- nothing after the dot
      { "a..b", "a.", "a..b", ".", "a." },
      { "a/b/", "a/b/", "", "a", "" },                     -- trailing slash: empty basename
      { "a/b//", "a/b//", "", "a", "" },
      { "a/", "a/", "", ".", "" },
      { "a.d/", "a.d/", "", ".", "" },
      { "/", "/", "", "/", "" },
      { "//", "//", "", "/", "" },
      { "/a", "/a", "a", "/", "a" },
      { "/a.b", "/a", "a.b", "/", "a" },
      { "/a/", "/a/", "", "/", "" },
      { "a//b.c", "a//b", "b.c", "a", "b" },
      { "./x.y", "./x", "x.y", ".", "x" },
      { "a/b/..", "a/b/..", "..", "a/b", ".." },
      { "", "", "", ".", "" },
      { "dossier/été.png", "dossier/été", "été.png", "dossier", "été" },
      { "my dir/my file.tar.gz", "my dir/my file.tar", "my file.tar.gz", "my dir", "my file.tar" },
      { "x\ny/z.w", "x\ny/z", "z.w", "x\ny", "z" },        -- a newline is an ordinary character
    }
    for _, c in ipairs(cases) do
      it("of " .. name(c[1]), function()
        assert.are.same({ "p", c[1], c[2], c[3], c[4], c[5] }, argv("p {} {.} {/} {//} {/.}", c[1]))
      end)
    end

    it("{#} is the job number", function()
      assert.are.same({ "job", "7", "x" }, argv("job {#} {}", "x", 7))
      assert.are.same({ "job-7.log" }, argv("job-{#}.log", "x", 7.0))
    end)
  end)

  describe("words and quoting", function()
    it("an item with spaces is one argument, never re-split", function()
      assert.are.same({ "echo", "a b  c" }, argv("echo {}", "a b  c"))
      assert.are.same({ "echo", "xa by" }, argv("echo x{}y", "a b"))
      assert.are.same({ "rm", "-f", "\t lead and trail \n" }, argv("rm -f {}", "\t lead and trail \n"))
    end)

    it("quotes and shell syntax in an item are literal", function()
      for _, item in ipairs { [[it's "x"]], "$(rm -rf /)", "*", "a; b | c > d", "\\", "{}", "{{", "'" } do
        assert.are.same({ "echo", item, "--", item }, argv("echo {} -- {}", item))
      end
    end)

    it("an empty item is still an argument", function()
      assert.are.same({ "echo", "", "end" }, argv("echo {} end", ""))
    end)

    it("text and replacements in one word", function()
      assert.are.same({ "convert", "dir/my photo.jpg", "-resize", "50%", "--out=my photo.png" },
        argv("convert {} -resize 50% --out={/.}.png", "dir/my photo.jpg"))
      assert.are.same({ "mv", "a.txt", "a.txt.bak" }, argv("mv {} {}.bak", "a.txt"))
      assert.are.same({ "cp", "x.c", "./out/x.o" }, argv("cp {} {//}/out/{/.}.o", "x.c"))
    end)

    it("quotes in the template group words", function()
      assert.are.same({ "grep", "-e", "hello world", "f" }, argv('grep -e "hello world" {}', "f"))
      assert.are.same({ "grep", "-e", "hello world", "f" }, argv("grep -e 'hello world' {}", "f"))
      assert.are.same({ "premid dlepost" }, argv("pre'mid dle'post{}", ""))
      assert.are.same({ "echo", "a 'b' c" }, argv([[echo "a 'b' c"{}]], ""))
      assert.are.same({ "echo", 'a "b" c' }, argv([[echo 'a "b" c'{}]], ""))
    end)

    it("double quotes expand replacements; single quotes do not", function()
      assert.are.same({ "echo", "my file.bak" }, argv('echo "{.}.bak"', "my file.txt"))
      assert.are.same({ "awk", "{print $1}", "f" }, argv("awk '{print $1}' {}", "f"))
      assert.are.same({ "echo", "{}", "x" }, argv("echo '{}'", "x")) -- no replacement: {} appended
    end)

    it("empty quotes make an empty argument", function()
      assert.are.same({ "a", "", "", "b", "x" }, argv([[a '' "" b {}]], "x"))
    end)

    it("backslash escapes", function()
      assert.are.same({ "a b", "'", '"', "\\", "q", "{}", "x" }, argv([[a\ b \' \" \\ \q \{\} {}]], "x"))
      -- in double quotes: \" \\ \{ \} are escapes, any other backslash stays
      assert.are.same({ 'a"b', "a\\b", "{}", "a\\nb", "x" }, argv([["a\"b" "a\\b" "\{\}" "a\nb" {}]], "x"))
    end)

    it("{{ and }} are literal braces", function()
      assert.are.same({ "echo", "{}", "{x}" }, argv("echo {{}} {{{}}}", "x"))
      assert.are.same({ "echo", "{a}", "{", "}", "" }, argv('echo "{{a}}" {{ }} {}', ""))
      assert.are.same({ "echo", "{{}}", "x" }, argv("echo '{{}}' {}", "x"))
    end)

    it("any whitespace separates words", function()
      assert.are.same({ "a", "b", "c", "d", "x" }, argv("  a\tb\n c \r\n d {}  \n", "x"))
    end)

    it("a replacement can be the program", function()
      assert.are.same({ "./run.sh", "--fast" }, argv("{} --fast", "./run.sh"))
      assert.are.same({ "./run.sh" }, argv("{}", "./run.sh"))
    end)
  end)

  describe("the implicit trailing {}", function()
    it("is appended when the template has no replacement string", function()
      local t = assert(template.parse("gzip -9"))
      assert.is_true(t.implicit)
      assert.are.same({ "gzip", "-9", "my file" }, t:expand("my file"))
      assert.are.same({ "echo", "a.txt" }, argv("echo", "a.txt"))
    end)

    it("is not appended when there is one, {#} and fields included", function()
      assert.is_false(assert(template.parse("echo {.}")).implicit)
      assert.are.same({ "echo", "3" }, argv("echo {#}", "x", 3))
      assert.are.same({ "echo", "n" }, argv("echo {name}", { name = "n" }))
    end)

    it("counts quoted and escaped braces as text", function()
      assert.are.same({ "echo", "{}", "x" }, argv("echo '{}'", "x"))
      assert.are.same({ "echo", "{}", "x" }, argv("echo {{}}", "x"))
      assert.are.same({ "echo", "{}", "x" }, argv([[echo \{\}]], "x"))
    end)

    it("needs a string or number item", function()
      local err = expand_error("echo", { "a" })
      assert.are.equal("template: {} (appended: the template has no replacement string): "
        .. "the item is a table (use {name} or {1} for its fields)", err)
    end)
  end)

  describe("items", function()
    it("numbers become strings as tostring does", function()
      assert.are.same({ "seq", "42", "42", "42" }, argv("seq {} {.} {/}", 42))
      assert.are.same({ "x", "1.5", "1" }, argv("x {} {.}", 1.5))
      assert.are.same({ "x", "-3", "3.0", "1e+100" }, argv("x {1} {2} {3}", { -3, 3.0, 1e100 }))
      assert.are.same({ "x", "9007199254740993" }, argv("x {}", math.tointeger(2 ^ 53) + 1))
    end)

    it("table items give fields by name", function()
      local item = { src = "in/a b.png", dst = "out", q = 90 }
      assert.are.same({ "convert", "in/a b.png", "-quality", "90", "out/x.jpg" },
        argv("convert {src} -quality {q} {dst}/x.jpg", item))
      -- path forms apply to positional fields: {1/.}
      assert.are.same({ "convert", "in/a b.png", "out/a b.jpg" },
        argv("convert {1} {dst}/{1/.}.jpg", { "in/a b.png", dst = "out" }))
      assert.are.same({ "f", "v", "w" }, argv("f {_x1} {end}", { _x1 = "v", ["end"] = "w" }))
    end)

    it("table items give positional fields {1} {2}, with path forms", function()
      assert.are.same({ "cmp", "a/x.c", "b/y.c", "x", "b", "y.c", "a/x" },
        argv("cmp {1} {2} {1/.} {2//} {2/} {1.}", { "a/x.c", "b/y.c" }))
    end)

    it("a string or number item is {1}", function()
      assert.are.same({ "echo", "d/x.y", "x" }, argv("echo {1} {1/.}", "d/x.y"))
      assert.are.same({ "echo", "5" }, argv("echo {1}", 5))
    end)

    it("fields are read with metamethods", function()
      local proxy = setmetatable({}, { __index = function(_, k) return "<" .. k .. ">" end })
      assert.are.same({ "echo", "<name>" }, argv("echo {name}", proxy))
    end)

    it("a missing field is nil and a message naming it", function()
      assert.are.equal('template:1:10: {name}: the item has no field "name"',
        expand_error("echo x y {name}", { other = 1 }))
      assert.are.equal("template:1:10: {2}: the item has no field [2]", expand_error("echo {1} {2}", { "a" }))
      assert.are.equal("template:1:6: {2/.}: the item has no field [2]", expand_error("echo {2/.}", "a"))
      assert.are.equal("template:2:3: {dst}: the item has no field \"dst\"",
        expand_error("cp {src}\n  {dst}", { src = "s" }))
    end)

    it("a field must be a string or number", function()
      assert.are.equal('template:1:6: {f}: field "f" is a boolean, not a string or number',
        expand_error("echo {f}", { f = true }))
      assert.are.equal("template:1:6: {1}: field [1] is a table, not a string or number",
        expand_error("echo {1}", { {} }))
    end)

    it("names need a table item; {} needs a string or number", function()
      assert.are.equal("template:1:6: {name}: the item is a string, not a table with fields",
        expand_error("echo {name}", "x"))
      assert.are.equal("template:1:8: {.}: the item is a table (use {name} or {1} for its fields)",
        expand_error("echo a {.}", { name = "x" }))
    end)

    it("a NUL byte in a value is refused", function()
      assert.are.equal("template:1:6: {}: the value has a NUL byte (an argument cannot hold one)",
        expand_error("echo {}", "a\0b"))
    end)
  end)

  describe("errors point at the line and column", function()
    -- template, the first line of the message
    local bad = {
      { 'convert "{}.png', "template:1:9: unterminated double quote" },
      { "echo 'abc", "template:1:6: unterminated single quote" },
      { [[echo "{}" "abc\"]], "template:1:11: unterminated double quote" },
      { "echo {foo.}", 'template:1:6: unknown replacement string "{foo.}"' },
      { "echo x{%}", 'template:1:7: unknown replacement string "{%}"' },
      { "echo {0}", 'template:1:6: unknown replacement string "{0}"' },
      { "echo {01}", 'template:1:6: unknown replacement string "{01}"' },
      { "echo {a-b}", 'template:1:6: unknown replacement string "{a-b}"' },
      { "echo {1a}", 'template:1:6: unknown replacement string "{1a}"' },
      { "echo {//.}", 'template:1:6: unknown replacement string "{//.}"' },
      { "echo {##}", 'template:1:6: unknown replacement string "{##}"' },
      { "echo { }", 'template:1:6: unknown replacement string "{ }"' },
      { 'echo "{nope/}"', 'template:1:7: unknown replacement string "{nope/}"' },
      { "echo {abc", 'template:1:6: unmatched "{" (write "{{" for a literal brace)' },
      { "echo {a{b}", 'template:1:6: unmatched "{" (write "{{" for a literal brace)' },
      { "echo abc}", 'template:1:9: unmatched "}" (write "}}" for a literal brace)' },
      { "echo {{}", 'template:1:8: unmatched "}" (write "}}" for a literal brace)' },
      { "echo {}}", 'template:1:8: unmatched "}" (write "}}" for a literal brace)' },
      { 'echo "{x"', 'template:1:7: unmatched "{" (write "{{" for a literal brace)' },
      { "echo \\", "template:1:6: backslash at the end of the template" },
      { "", "template:1:1: empty template" },
      { " \t\n  ", "template:1:1: empty template" },
      { "cmd {}\n  --x {y", 'template:2:7: unmatched "{"' },
      { "cmd\n\n'", "template:3:1: unterminated single quote" },
      { "é {bad.}", 'template:1:3: unknown replacement string "{bad.}"' }, -- columns count characters
      { "echo a\0b", "template:1:7: NUL byte in the template" },
      { "echo {x\n}", 'template:1:6: unknown replacement string "{x\\n}"' },
    }
    for _, c in ipairs(bad) do
      it(name(c[1]), function()
        local t, err = template.parse(c[1])
        assert.is_nil(t)
        assert.is_string(err)
        local first = err:match "^[^\n]*"
        assert.truthy(first:find(c[2], 1, true), ("got %q, want %q"):format(first, c[2]))
        assert.are.equal(1, first:find(c[2], 1, true))
        -- template.expand reports the same
        local a, err2 = template.expand(c[1], "x", 1)
        assert.is_nil(a)
        assert.are.equal(err, err2)
      end)
    end

    it("shows the line with a caret under the column", function()
      local _, err = template.parse('convert {}\n\t--out "{/.}.png')
      assert.are.equal('template:2:8: unterminated double quote\n  \t--out "{/.}.png\n  \t      ^', err)
      _, err = template.parse("é {x.}")
      assert.are.equal('template:1:3: unknown replacement string "{x.}"\n  é {x.}\n    ^', err)
    end)
  end)

  describe("API", function()
    it("t.source and tostring(t) are the template text", function()
      local s = "convert {} --out={/.}.png"
      local t = assert(template.parse(s))
      assert.are.equal(s, t.source)
      assert.are.equal(s, tostring(t))
      assert.are.same(argv(tostring(t), "a/b.c"), t:expand("a/b.c"))
    end)

    it("a template expands many items, each into a fresh table", function()
      local t = assert(template.parse("echo {#} {}"))
      local a, b = t:expand("x", 1), t:expand("y", 2)
      assert.are.same({ "echo", "1", "x" }, a)
      assert.are.same({ "echo", "2", "y" }, b)
      assert.are_not.equal(a, b)
      a[2] = "changed"
      assert.are.same({ "echo", "3", "x" }, t:expand("x", 3))
    end)

    it("template.expand parses and expands", function()
      assert.are.same({ "echo", "a b" }, template.expand("echo {}", "a b"))
      assert.are.same({ "echo", "a b" }, template.expand("echo {}", "a b")) -- cached
      local a, err = template.expand("echo {", "x")
      assert.is_nil(a)
      assert.truthy(err:find('^template:1:6: unmatched "{"'))
    end)

    it("misuse raises", function()
      assert.has_error(function() template.parse(nil) end, "bad argument #1 to 'parse' (string expected, got nil)")
      assert.has_error(function() template.expand(42, "x") end,
        "bad argument #1 to 'expand' (string expected, got number)")
      local t = assert(template.parse("echo {}"))
      assert.has_error(function() t:expand(nil) end,
        "bad argument #1 to 'expand' (string, number or table expected, got nil)")
      assert.has_error(function() t:expand(true) end,
        "bad argument #1 to 'expand' (string, number or table expected, got boolean)")
      assert.has_error(function() template.expand("echo {}", print) end,
        "bad argument #2 to 'expand' (string, number or table expected, got function)")
      assert.has_error(function() t.expand("x") end,
        "calling 'expand' on bad self (weft.template expected, got string)")
      local seq = assert(template.parse("echo {#}"))
      assert.has_error(function() seq:expand("x") end,
        "bad argument #2 to 'expand' (job number expected for {#}, got nil)")
      assert.has_error(function() seq:expand("x", 1.5) end,
        "bad argument #2 to 'expand' (job number expected for {#}, got non-integer number)")
      assert.has_error(function() template.expand("echo {#}", "x", "1") end,
        "bad argument #3 to 'expand' (job number expected for {#}, got string)")
      -- without {#} the index is not needed
      assert.are.same({ "echo", "x" }, t:expand("x"))
    end)
  end)
end)
