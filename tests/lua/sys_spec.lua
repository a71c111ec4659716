-- SPDX-License-Identifier: MIT
-- smolvm.sys: shell quoting, terminal detection and the clock, with the binding and
-- with the pure-Lua fallbacks used when smolvm.core is a stand-in.
local h = require "helpers"

local function fresh_sys(core)
  package.loaded["smolvm.sys"] = nil
  local saved = package.loaded["smolvm.core"]
  package.loaded["smolvm.core"] = core
  local sys = require "smolvm.sys"
  package.loaded["smolvm.core"] = saved
  package.loaded["smolvm.sys"] = nil
  return sys
end

local function sh_out(cmd)
  local p = assert(io.popen(cmd))
  local s = p:read("*a")
  p:close()
  return s
end

describe("smolvm.sys", function()
  local real = fresh_sys(require "smolvm.core")
  local fallback = fresh_sys({}) -- a stand-in core without the helpers

  it("quotes words so sh gives them back unchanged", function()
    for _, sys in ipairs({ real, fallback }) do
      local words = { "plain", "with space", "it's", "$HOME", "a\"b", "*", "", "-n", "x;y" }
      local out = sh_out("printf '%s\\n' " .. sys.command_line(words))
      assert.equal(table.concat(words, "\n") .. "\n", out)
      assert.equal("a/b.c", sys.shell_quote("a/b.c"))
    end
  end)

  it("tells terminals from files and pipes", function()
    for _, sys in ipairs({ real, fallback }) do
      local code = "package.path = " .. string.format("%q", package.path)
        .. " package.cpath = " .. string.format("%q", package.cpath)
        .. (sys == fallback and " package.loaded['smolvm.core'] = {}" or "")
        .. " local s = require 'smolvm.sys' io.stderr:write(tostring(s.isatty(0)), ' ',"
        .. " tostring(s.isatty(1)), ' ', tostring(s.isatty(2)), '\\n')"
      local cmd = h.INTERP .. " -e " .. h.quote(code)
      -- stdin a pipe, stdout a file, stderr the pipe we read
      local dir = h.mktemp_dir()
      local out = sh_out("echo | " .. cmd .. " 2>&1 >" .. dir .. "/o")
      assert.equal("false false false\n", out)
      -- all three on a pseudo-terminal made by script(1)
      if h.exists("/usr/bin/script") then
        out = sh_out("script -qec " .. h.quote(cmd) .. " /dev/null </dev/null")
        assert.equal("true true true\r\n", out)
      end
      h.rm_rf(dir)
    end
  end)

  it("takes isatty and the clock from smolvm.core when it has them", function()
    local core = require "smolvm.core"
    assert.is_function(core.isatty)
    assert.is_function(core.monotonic_ms)
    assert.has_error(function() core.isatty(-1) end)
    local calls = 0
    local sys = fresh_sys({ isatty = function() calls = calls + 1 return true end,
                            monotonic_ms = function() return 4200 end })
    assert.is_true(sys.isatty(2))
    assert.equal(1, calls)
    assert.equal(4200, sys.monotonic_ms())
    assert.equal(4.2, sys.now())
  end)

  it("has a clock that moves forward in milliseconds", function()
    for _, sys in ipairs({ real, fallback }) do
      local t0 = sys.monotonic_ms()
      os.execute("sleep 0.2")
      local d = sys.monotonic_ms() - t0
      assert.is_true(d >= 150 and d < 5000, "elapsed " .. d .. " ms")
    end
  end)
end)
