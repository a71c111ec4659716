-- SPDX-License-Identifier: MIT
-- Host-wide quotas from Lua: smolvm.configure{ max_vms=, max_memory_mib= } and
-- $SMOLVM_MAX_VMS / $SMOLVM_MAX_MEMORY_MIB. A VM past a quota is refused with
-- nil, message, "ENOSPC", the message naming the quota and its use, and nothing of it
-- is left. VMs are created with network = "none" (no boot) in a throwaway state
-- directory; skipped when the host has no guest image.

local smolvm = require "smolvm"
local h = require "helpers"

local function err_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error")
  return tostring(err)
end

describe("smolvm.configure", function()
  it("raises on unknown fields and wrong types, naming the field", function()
    assert.truthy(err_of(smolvm.configure, "x"):find("expected table", 1, true))
    assert.truthy(err_of(smolvm.configure, { max_vm = 1 })
      :find('max_vm: unknown option (did you mean "max_vms"?)', 1, true))
    assert.truthy(err_of(smolvm.configure, { max_vms = -1 }):find("max_vms: expected integer >= 0", 1, true))
    assert.truthy(err_of(smolvm.configure, { max_vms = 1.5 }):find("max_vms", 1, true))
    assert.truthy(err_of(smolvm.configure, { max_memory_mib = "lots" })
      :find('max_memory_mib: expected integer >= 0 (0: no limit), got string "lots"', 1, true))
    assert.truthy(err_of(smolvm.configure, { log = 3 }):find("log: expected function", 1, true))
  end)
end)

describe("quotas", function()
  local dir
  before_each(function() dir = h.mktemp_dir() end)
  after_each(function() h.rm_rf(dir) end)

  -- Lua code in a child with SMOLVM_STATE_DIR (and env, a string of assignments);
  -- pending when the host cannot create a VM (no image).
  local function run(code, env)
    local probe = [[
      local smolvm = require "smolvm"
      local p, msg, code = smolvm.VM{ network = "none", id = "probe" }
      if not p then print("SKIP " .. tostring(code) .. " " .. tostring(msg)) os.exit(0) end
      assert(p:delete()) p:close()
    ]]
    local cmd = (env or "") .. " SMOLVM_STATE_DIR=" .. h.quote(dir .. "/state") .. " " .. h.INTERP
      .. " -e " .. h.quote(probe .. code) .. " 2>&1; echo \"rc=$?\""
    local p = assert(io.popen(cmd))
    local out = p:read("*a")
    p:close()
    local rc = tonumber(out:match("rc=(%d+)%s*$"))
    out = out:gsub("rc=%d+%s*$", "")
    if out:match("^SKIP") then
      pending(out)
      return nil
    end
    assert.are.equal(0, rc, out)
    return out
  end

  it("refuses the vm past max_vms with ENOSPC, naming the quota", function()
    local out = run([[
      assert(smolvm.configure{ max_vms = 2 })
      local a = assert(smolvm.VM{ network = "none", memory = 128 })
      local b = assert(smolvm.VM{ network = "none", memory = 128 })
      local c, msg, code = smolvm.VM{ network = "none", memory = 128, id = "third" }
      assert(c == nil and code == "ENOSPC", tostring(code) .. " " .. tostring(msg))
      assert(msg:find("quota 'max_vms' reached: 2 of 2 vms exist", 1, true), msg)
      assert(#smolvm.VM.list() == 2)
      assert(smolvm.VM.from_id("third") == nil)
      local u = assert(smolvm.usage())
      assert(u.vms == 2 and u.memory_mib == 256 and u.max_vms == 2 and u.max_memory_mib == 0)
      a:close()
      c = assert(smolvm.VM{ network = "none", memory = 128 }) -- a place is free again
      print("done")
    ]])
    if out then assert.truthy(out:find("done", 1, true), out) end
  end)

  it("refuses the vm past max_memory_mib from the environment", function()
    local out = run([[
      local a = assert(smolvm.VM{ network = "none", memory = 512 })
      local b, msg, code = smolvm.VM{ network = "none", memory = 1024 }
      assert(b == nil and code == "ENOSPC", tostring(code) .. " " .. tostring(msg))
      assert(msg:find("quota 'max_memory_mib' reached: 1024 MiB more would make 1536 of 1024 MiB "
        .. "(1 vms hold 512 MiB)", 1, true), msg)
      assert(msg:find("SMOLVM_MAX_MEMORY_MIB", 1, true), msg)
      b = assert(smolvm.VM{ network = "none", memory = 512 }) -- exactly up to it
      assert(smolvm.usage().memory_mib == 1024)
      -- configure overrides the environment.
      assert(smolvm.configure{ max_memory_mib = 4096 })
      local c = assert(smolvm.VM{ network = "none", memory = 1024 })
      print("done")
    ]], "SMOLVM_MAX_MEMORY_MIB=1024")
    if out then assert.truthy(out:find("done", 1, true), out) end
  end)

  it("refuses a malformed quota in the environment", function()
    local p = assert(io.popen("SMOLVM_MAX_VMS=lots SMOLVM_STATE_DIR=" .. h.quote(dir .. "/state")
      .. " " .. h.INTERP .. " -e " .. h.quote([[
        local l, msg, code = require("smolvm").VM.list()
        print(tostring(l), tostring(code), tostring(msg))
      ]]) .. " 2>&1"))
    local o = p:read("*a")
    p:close()
    assert.truthy(o:find("nil\tEINVAL\tSMOLVM_MAX_VMS: expected a number 0..1000000, got 'lots'",
      1, true), o)
  end)
end)
