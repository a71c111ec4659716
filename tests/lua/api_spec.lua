-- SPDX-License-Identifier: MIT
-- The public Lua API without booting a guest: options validation, VERSION, argument
-- checks. The VM lifecycle part creates VMs with network = "none" in a throwaway state
-- directory (no boot) and is skipped when the host has no guest image.

local smolvm = require "smolvm"

local sh_quote = require("helpers").quote

-- The message of the error fn raises (busted's has_error wants exact matches).
local function err_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error")
  return tostring(err)
end

local function rejects(opts, ...)
  local msg = err_of(smolvm.VM, opts)
  for _, want in ipairs({ ... }) do
    assert(msg:find(want, 1, true), "expected " .. string.format("%q", want)
      .. " in error: " .. msg)
  end
  return msg
end

describe("smolvm", function()
  it("has a VERSION", function()
    assert.are.equal("string", type(smolvm.VERSION))
    assert.truthy(smolvm.VERSION:match("^%d+%.%d+%.%d+"))
    assert.are.equal(require("smolvm.core").VERSION, smolvm.VERSION)
  end)

  it("exposes the public entry points", function()
    for _, name in ipairs({ "with", "Net", "Store", "doctor" }) do
      assert.are.equal("function", type(smolvm[name]), name)
    end
    assert.are.equal("function", type(smolvm.VM.from_id))
    assert.are.equal("function", type(smolvm.VM.list))
    assert.truthy(pcall(function() return getmetatable(smolvm.VM).__call end))
  end)
end)

describe("smolvm.VM{} options", function()
  it("rejects vcpus out of range or of the wrong type", function()
    rejects({ vcpus = 0 }, "vcpus", "1..32")
    rejects({ vcpus = 33 }, "vcpus", "1..32")
    rejects({ vcpus = "x" }, "vcpus", "string \"x\"")
    rejects({ vcpus = 1.5 }, "vcpus")
  end)

  it("rejects memory out of range", function()
    rejects({ memory = 127 }, "memory", "128..16384")
    rejects({ memory = 16385 }, "memory", "128..16384")
    rejects({ memory = "lots" }, "memory: expected integer 128..16384, got string \"lots\"")
  end)

  it("rejects malformed ids", function()
    rejects({ id = "UPPER" }, "id:")
    rejects({ id = "-x" }, "id:")
    rejects({ id = string.rep("a", 65) }, "id:")
    rejects({ id = "" }, "id:")
    rejects({ id = 7 }, "id:")
  end)

  it("rejects unknown enum values", function()
    rejects({ disk = "foo" }, "disk", "isolated", "shared")
    rejects({ network = "bogus" }, "network", "nat")
    rejects({ backend = "vbox" }, "backend")
    rejects({ accel = "hvf" }, "accel")
  end)

  it("rejects unknown options with a suggestion", function()
    rejects({ memroy = 512 }, "memroy", "did you mean \"memory\"")
    rejects({ vcpu = 2 }, "vcpu", "did you mean \"vcpus\"")
  end)

  it("rejects malformed forwards", function()
    rejects({ forwards = "8080:80" }, "forwards")
    rejects({ forwards = { { host = 0, guest = 80 } } }, "forwards[1].host")
    rejects({ forwards = { { host = 8080 } } }, "forwards[1].guest")
    rejects({ forwards = { { host = 8080, guest = 70000 } } }, "forwards[1].guest")
    rejects({ forwards = { 8080 } }, "forwards[1]")
    rejects({ forwards = { { host = 8080, guest = 80, address = "localhost" } } },
            "forwards[1].address")
    rejects({ forwards = { { host = 8080, guest = 80 }, { host = 8080, guest = 81 } } },
            "forwards[2].host")
  end)

  it("rejects a bad env", function()
    rejects({ env = { ["1BAD"] = "x" } }, "env")
    rejects({ env = { OK = {} } }, "env.OK")
  end)

  it("reports every error at once, one per line", function()
    local msg = rejects({ vcpus = 0, memory = 1, disk = "foo" }, "vcpus", "memory", "disk")
    local n = select(2, msg:gsub("\n", "\n"))
    assert.is_true(n >= 2, msg)
  end)

  it("blames the caller", function()
    local msg = rejects({ memory = 1 }, "api_spec.lua")
    assert.truthy(msg:find("memory", 1, true))
  end)

  it("rejects non-table options", function()
    rejects("big", "table")
  end)
end)

describe("argument checks", function()
  it("VM.from_id raises on a malformed id", function()
    assert.truthy(err_of(smolvm.VM.from_id, "UPPER"):find("id", 1, true))
    assert.truthy(err_of(smolvm.VM.from_id, nil):find("id", 1, true))
    assert.truthy(err_of(smolvm.VM.from_id, 42):find("id", 1, true))
  end)

  it("smolvm.with raises on a bad function or bad options", function()
    assert.truthy(err_of(smolvm.with, {}, "notafunction"):find("function", 1, true))
    assert.truthy(err_of(smolvm.with, { memory = 1 }, function() end):find("memory", 1, true))
  end)

  it("VM methods refuse a wrong self", function()
    local methods = require("smolvm.vm").methods
    for _, m in ipairs({ "start", "stop", "run", "delete", "info", "keep", "close" }) do
      assert.truthy(err_of(methods[m], {}):find("bad self", 1, true), m)
    end
  end)
end)

-- VM objects without booting: create (network "none"), ownership, close, keep.
describe("VM objects (no boot)", function()
  local mktemp_dir, child = require("helpers").mktemp_dir, require("helpers").child

  local dir
  before_each(function() dir = mktemp_dir() end)
  after_each(function() os.execute("rm -rf " .. sh_quote(dir)) end)

  -- The child prints SKIP when the host cannot create a VM (no image).
  local function run(code)
    local out, rc = child(dir .. "/state", [[
      local smolvm = require "smolvm"
      local probe, msg, code = smolvm.VM{ network = "none", id = "probe" }
      if not probe then print("SKIP " .. tostring(code) .. " " .. tostring(msg)) os.exit(0) end
      assert(probe:delete()) probe:close()
    ]] .. code)
    if out:match("^SKIP") then
      pending(out)
      return nil
    end
    assert.are.equal(0, rc, out)
    return out
  end

  it("creates a VM, reports id/status/info, and deletes it on close", function()
    local out = run([[
      local vm = assert(smolvm.VM{ network = "none" })
      assert(vm.id:match("^vm%-%x+$"), vm.id)
      assert(vm.status == "created", vm.status)
      local info = assert(vm:info())
      assert(info.id == vm.id)
      assert(#smolvm.VM.list() == 1)
      assert(vm:close() == true)
      assert(#smolvm.VM.list() == 0)
      local ok, err = pcall(function() return vm.status end)
      assert(not ok and err:find("attempt to use a closed vm", 1, true), err)
      assert(vm:close() == true) -- idempotent
      print("done")
    ]])
    if out then assert.truthy(out:find("done", 1, true), out) end
  end)

  it("keeps a VM after keep(), and from_id never deletes", function()
    local out = run([[
      local vm = assert(smolvm.VM{ network = "none", id = "kept" }):keep()
      vm:close()
      local again = assert(smolvm.VM.from_id("kept"))
      assert(again.status == "created")
      again:close()
      again = nil collectgarbage() collectgarbage()
      assert(#smolvm.VM.list() == 1)
      local last = assert(smolvm.VM.from_id("kept"))
      assert(last:delete())
      assert(last.status == "deleted")
      last:close()
      local none, msg, code = smolvm.VM.from_id("kept")
      assert(none == nil and code == "ENOENT", tostring(code))
      print("done")
    ]])
    if out then assert.truthy(out:find("done", 1, true), out) end
  end)

  it("deletes an owned VM when it is collected or the state closes", function()
    local out = run([[
      do local vm = assert(smolvm.VM{ network = "none", id = "lost" }) end
      collectgarbage() collectgarbage()
      assert(#smolvm.VM.list() == 0, "collected VM not deleted")
      LEFT = assert(smolvm.VM{ network = "none", id = "atexit" })
      print("done")
    ]])
    if not out then return end
    assert.truthy(out:find("done", 1, true), out)
    local out2 = child(dir .. "/state", 'print(#require("smolvm").VM.list())')
    -- lua5.4 and luajit close the state at exit, running __gc.
    assert.are.equal("0\n", out2)
  end)

  it("refuses a duplicate id with nil, message, EEXIST", function()
    local out = run([[
      local a = assert(smolvm.VM{ network = "none", id = "dup" })
      local b, msg, code = smolvm.VM{ network = "none", id = "dup" }
      assert(b == nil and type(msg) == "string", tostring(msg))
      assert(code == "EEXIST", tostring(code))
      a:close()
      print("done")
    ]])
    if out then assert.truthy(out:find("done", 1, true), out) end
  end)

  it("raises on bad method arguments", function()
    local out = run([[
      local vm = assert(smolvm.VM{ network = "none" })
      local function bad(f, want)
        local ok, err = pcall(f)
        assert(not ok and err:find(want, 1, true), tostring(err))
      end
      bad(function() vm:start{ timeout = -1 } end, "timeout")
      bad(function() vm:start(60) end, "table")
      bad(function() vm:stop{ timeuot = 1 } end, "did you mean \"timeout\"")
      bad(function() vm:run(42) end, "cmd")
      bad(function() vm:run("true", { cwd = 1 }) end, "cwd")
      bad(function() vm:run("true", { env = { ["a b"] = "x" } }) end, "env")
      bad(function() vm:run("true", { stdni = "" }) end, "did you mean \"stdin\"")
      bad(function() vm:forward(0, 80) end, "host_port")
      bad(function() vm:forward(8080, 80, "example.com") end, "host_address")
      bad(function() vm:write_file("/x", 42) end, "data")
      bad(function() vm:read_file(nil) end, "path")
      bad(function() vm:set_egress("open") end, 'set_egress: egress: expected "internet", "none"')
      bad(function() vm:set_egress({ allow = { "10.0.0.1/8" } }) end,
          "set_egress: egress.allow[1]: '10.0.0.1/8' has host bits set")
      bad(function() vm:set_egress() end, "set_egress: egress: expected")
      bad(function() vm:events{ kind = 7 } end, "events: kind")
      bad(function() vm:events{ knd = "x" } end, 'did you mean "kind"')
      vm:close()
      print("done")
    ]])
    if out then assert.truthy(out:find("done", 1, true), out) end
  end)

  it("refuses egress policies a network cannot enforce, and keeps what it can", function()
    local out = run([[
      local vm, msg, code = smolvm.VM{ network = "user", egress = "internet" }
      assert(vm == nil and code == "EINVAL", tostring(code))
      assert(msg:find("egress: 'internet' needs network 'nat'", 1, true), msg)
      assert(msg:find('use network = "nat"', 1, true), msg)
      vm, msg, code = smolvm.VM{ network = "user", egress = { allow = { "pypi.org" } } }
      assert(vm == nil and code == "EINVAL" and msg:find("an allow list needs network 'nat'", 1, true), msg)
      vm, msg, code = smolvm.VM{ network = "none", egress = "internet" }
      assert(vm == nil and code == "EINVAL" and msg:find("has no NIC", 1, true), tostring(msg))
      assert(#smolvm.VM.list() == 0, "a refused create left a record")
      -- user networking: "none" is what it has, and what it shows
      local u = assert(smolvm.VM{ network = "user", egress = "none" })
      assert(u:info().config.egress == "none")
      local ok, m2, c2 = u:set_egress("internet")
      assert(ok == nil and c2 == "EINVAL" and m2:find("needs network 'nat'", 1, true), tostring(m2))
      assert(u:set_egress("none") == true)
      u:close()
      local d = assert(smolvm.VM{ network = "user" })
      assert(d:info().config.egress == "none", "user networking defaults to none")
      d:close()
      print("done")
    ]])
    if out then assert.truthy(out:find("done", 1, true), out) end
  end)

  it("counts the forwards it was created with against the same 64 at run time", function()
    local out = run([[
      local fw = {}
      for i = 1, 60 do fw[i] = { host = 31000 + i, guest = 80 } end
      local vm = assert(smolvm.VM{ network = "user", forwards = fw })
      for i = 1, 4 do assert(vm:forward(32000 + i, 80)) end
      local ok, msg, code = vm:forward(32100, 80)
      assert(ok == nil and code == "ENOSPC", tostring(code))
      assert(msg:find("has 64 forwards (at most 64)", 1, true), msg)
      vm:close()
      print("done")
    ]])
    if out then assert.truthy(out:find("done", 1, true), out) end
  end)

  it("holds at most 64 forwards when they are added, and lists the VM's events", function()
    local out = run([[
      local vm = assert(smolvm.VM{ network = "user" })
      for i = 1, 64 do assert(vm:forward(30000 + i, 80)) end
      local ok, msg, code = vm:forward(30100, 80)
      assert(ok == nil and code == "ENOSPC", tostring(code))
      assert(msg:find("has 64 forwards (at most 64)", 1, true), msg)
      assert(vm:unforward(30001))
      assert(vm:forward(30100, 80))
      local ev = assert(vm:events())
      assert(#ev >= 1 and ev[1].kind == "create" and type(ev[1].time) == "number", tostring(ev[1] and ev[1].kind))
      assert(#assert(vm:events{ kind = "egress-denied" }) == 0)
      vm:close()
      print("done")
    ]])
    if out then assert.truthy(out:find("done", 1, true), out) end
  end)
end)
