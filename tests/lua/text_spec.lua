-- SPDX-License-Identifier: MIT
-- smolvm.text: guest text made safe for terminals and JSON (issue 17, finding L2).

local text = require "smolvm.text"
local S = text.sanitize

describe("text.sanitize", function()
  it("leaves printable text, tabs and newlines alone", function()
    assert.equal("hello\tworld\n", S("hello\tworld\n"))
    assert.equal("", S(""))
  end)

  it("keeps valid UTF-8, 2 to 4 bytes", function()
    local s = "h\195\169llo \226\156\147 \240\159\152\128" -- é ✓ 😀
    assert.equal(s, S(s))
  end)

  it("escapes an OSC title sequence and BEL", function()
    assert.equal("\\x1b]0;x\\x07", S("\27]0;x\7"))
  end)

  it("escapes every C0 control but tab and newline, and DEL", function()
    for c = 0, 31 do
      if c ~= 9 and c ~= 10 then
        assert.equal(string.format("a\\x%02xb", c), S("a" .. string.char(c) .. "b"))
      end
    end
    assert.equal("\\x7f", S("\127"))
    assert.equal("\\x0d", S("\r"))
  end)

  it("escapes C1 controls (CSI as U+009B)", function()
    assert.equal("\\u009b2J", S("\194\1552J"))
    assert.equal("\\u0080", S("\194\128"))
    assert.equal("\194\160", S("\194\160")) -- NBSP is text
  end)

  it("replaces invalid UTF-8 with U+FFFD, byte by byte", function()
    local R = "\239\191\189"
    assert.equal("a" .. R .. "b", S("a\255b"))
    assert.equal(R .. R, S("\192\175"))             -- overlong '/'
    assert.equal(R .. R .. R, S("\237\160\128"))     -- a UTF-16 surrogate
    assert.equal(R .. R .. R .. R, S("\244\144\128\128")) -- above U+10FFFF
    assert.equal("x" .. R .. R, S("x\226\130"))      -- cut short at the end
    assert.equal(R .. "A", S("\128A"))               -- a lone continuation byte
  end)

  it("makes any byte string valid UTF-8 without controls", function()
    math.randomseed(17)
    for _ = 1, 200 do
      local t = {}
      for i = 1, math.random(0, 64) do t[i] = string.char(math.random(0, 255)) end
      local out = S(table.concat(t))
      assert.is_nil(out:find("[%z\1-\8\11-\31\127]"), out)
      assert.equal(out, S(out)) -- idempotent: what it makes is valid and printable
    end
  end)

  it("converts non-strings", function()
    assert.equal("12", S(12))
  end)
end)

describe("text.display_line", function()
  it("shows what a terminal would leave of a progress bar", function()
    assert.equal("100%", text.display_line("10%\r50%\r100%"))
    assert.equal("done", text.display_line("done\r"))
    assert.equal("\\x1b[1mbold", text.display_line("\27[1mbold"))
  end)
end)

describe("text.lines", function()
  it("emits whole lines across chunks and the rest at flush", function()
    local got = {}
    local l = text.lines(function(s) got[#got + 1] = s end)
    l.feed("hel")
    l.feed("lo\nwor")
    assert.same({ "hello" }, got)
    l.feed("ld\n\nlast")
    assert.same({ "hello", "world", "" }, got)
    l.flush()
    assert.same({ "hello", "world", "", "last" }, got)
    l.flush()
    assert.equal(4, #got)
  end)

  it("cuts a line that never ends at LINE_MAX", function()
    local got = {}
    local l = text.lines(function(s) got[#got + 1] = s end)
    l.feed(string.rep("x", text.LINE_MAX * 2 + 5))
    assert.equal(2, #got)
    assert.equal(text.LINE_MAX, #got[1])
    l.flush()
    assert.equal(5, #got[3])
  end)
end)
