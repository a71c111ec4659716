-- SPDX-License-Identifier: MIT
-- smolvm.Store: the state database seen from Lua. No VM is booted.

local smolvm = require "smolvm"

local h = require "helpers"
local sh_quote, mktemp_dir, rm_rf, exists, read, write, child =
  h.quote, h.mktemp_dir, h.rm_rf, h.exists, h.read, h.write, h.child

describe("smolvm.Store", function()
  local dir

  before_each(function() dir = mktemp_dir() end)
  after_each(function() rm_rf(dir) end)

  it("opens an empty database in a fresh SMOLVM_STATE_DIR", function()
    local state = dir .. "/state"
    local out, rc = child(state, [[
      local s = assert(require("smolvm").Store())
      print(#s:list())
      print(s:path())
    ]])
    assert.are.equal(0, rc, out)
    local n, path = out:match("^(%d+)\n([^\n]+)\n$")
    assert.are.equal("0", n, out)
    assert.are.equal(state .. "/smolvm.db", path)
    assert.is_true(exists(state .. "/smolvm.db"))
  end)

  it("creates the database file at the given path", function()
    local path = dir .. "/my.db"
    local s = assert(smolvm.Store(path))
    assert.are.equal(path, s:path())
    assert.are.same({}, s:list())
    assert.are.equal(0, #s:list())
    assert.is_true(exists(path))
    s:close()
  end)

  it("lists empty leases and forwards", function()
    local s = assert(smolvm.Store(dir .. "/x.db"))
    assert.are.same({}, s:leases())
    assert.are.same({}, s:forwards())
    s:close()
  end)

  it("returns nil, message, ENOENT for a missing VM", function()
    local s = assert(smolvm.Store(dir .. "/x.db"))
    local v, msg, code = s:get("vm-missing")
    assert.is_nil(v)
    assert.are.equal("string", type(msg))
    assert.truthy(msg:find("vm-missing", 1, true), msg)
    assert.are.equal("ENOENT", code)
    s:close()
  end)

  it("gives nil and a message for a corrupt database, and leaves it alone", function()
    local path = dir .. "/corrupt.db"
    local junk = string.rep("this is not a database\0", 400)
    write(path, junk)
    local s, msg, code = smolvm.Store(path)
    assert.is_nil(s)
    assert.are.equal("string", type(msg))
    assert.truthy(#msg > 0)
    assert.are.equal("EDB", code)
    assert.are.equal(junk, read(path))
  end)

  it("gives nil and a message for a database in a missing directory", function()
    local s, msg, code = smolvm.Store(dir .. "/no/such/dir/x.db")
    assert.is_nil(s)
    assert.are.equal("string", type(msg))
    assert.are.equal("string", type(code))
  end)

  it("raises when used after close", function()
    local s = assert(smolvm.Store(dir .. "/x.db"))
    s:close()
    for _, m in ipairs({ "list", "leases", "forwards", "path" }) do
      assert.has_error(function() s[m](s) end, "attempt to use a closed store")
    end
    assert.has_error(function() s:get("x") end, "attempt to use a closed store")
  end)

  it("closes idempotently, and __gc after close is harmless", function()
    local s = assert(smolvm.Store(dir .. "/x.db"))
    s:close()
    s:close()
    local mt = getmetatable(s)
    mt.__gc(s)
    if mt.__close then mt.__close(s) end
    s = nil
    collectgarbage()
    collectgarbage()
  end)

  it("is closed by the garbage collector", function()
    for _ = 1, 50 do
      local s = assert(smolvm.Store(dir .. "/x.db"))
      assert.are.equal(0, #s:list())
    end
    collectgarbage()
    collectgarbage()
    local s = assert(smolvm.Store(dir .. "/x.db"))
    assert.are.equal(0, #s:list())
    s:close()
  end)

  it("supports <close> in Lua 5.4", function()
    local chunk = load and _VERSION == "Lua 5.4" and load([[
      local smolvm, path = ...
      local outer
      do
        local s <close> = assert(smolvm.Store(path))
        outer = s
        assert(#s:list() == 0)
      end
      return pcall(outer.list, outer)
    ]])
    if not chunk then return end -- 5.1/LuaJIT: no <close> syntax
    local ok, err = chunk(smolvm, dir .. "/x.db")
    assert.is_false(ok)
    assert.truthy(tostring(err):find("attempt to use a closed store", 1, true))
  end)

  it("has the smolvm.store metatable and a useful tostring", function()
    local s = assert(smolvm.Store(dir .. "/x.db"))
    assert.are.equal("smolvm.store", getmetatable(s).__name)
    assert.truthy(tostring(s):find(dir .. "/x.db", 1, true))
    s:close()
    assert.truthy(tostring(s):find("closed", 1, true))
  end)

  it("raises on a bad path argument", function()
    assert.has_error(function() smolvm.Store(42) end)
    assert.has_error(function() smolvm.Store("") end)
  end)

  it("opens two stores on one database", function()
    local a = assert(smolvm.Store(dir .. "/x.db"))
    local b = assert(smolvm.Store(dir .. "/x.db"))
    assert.are.equal(0, #a:list())
    assert.are.equal(0, #b:list())
    a:close()
    b:close()
  end)

  it("Net() reads leases and forwards of the default database", function()
    local out, rc = child(dir .. "/state", [[
      local net = assert(require("smolvm").Net())
      print(#net:leases(), #net:forwards())
      net:close()
      print(pcall(net.leases, net))
    ]])
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("^0\t0\n"), out)
    assert.truthy(out:find("attempt to use a closed store", 1, true), out)
  end)
end)
