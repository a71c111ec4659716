-- SPDX-License-Identifier: MIT
-- Jobs of the binding (src/lua/job.c): library calls on threads, as smolvm.ngx uses
-- them inside nginx, here waited for with job:wait. No boot: VMs are created, kept,
-- closed and deleted (network "none"); each case runs in a child interpreter with a
-- state dir of its own, and is pending when the host cannot create a VM (no image).
local h = require "helpers"

local function sh_quote(s) return h.quote(s) end

describe("jobs", function()
  local dir
  before_each(function() dir = h.mktemp_dir() end)
  after_each(function() os.execute("rm -rf " .. sh_quote(dir)) end)

  local function run(code)
    local out, rc = h.child(dir .. "/state", [[
      local core = require "smolvm.core"
      local function done(j) assert(j, "no job") assert(j:wait(120000)) return j:result() end
      local probe, msg, code = core.vm_create({ network = "none", id = "probe" })
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

  it("lists and opens VMs on a thread, with the library's errors", function()
    run([[
      local list = done(core.job_list())
      assert(type(list) == "table" and #list == 0, "a fresh state dir lists nothing")
      local vm, msg, code = done(core.job_open("nope"))
      assert(vm == nil and code == "ENOENT", tostring(msg) .. " " .. tostring(code))
      assert(msg:find("nope", 1, true), msg)
    ]])
  end)

  it("creates a VM with a handle of its own; closing it deletes it", function()
    local out = run([[
      local j = core.vm_create({ network = "none", id = "bg", ephemeral = true }, true)
      assert(j:path():match("^/tmp/smolvm%-jobs%.%d+%.%w+/%d+$"), j:path())
      local vm, info = done(j)
      assert(info.id == "bg" and info.status == "created", info.status)
      local f = io.open(info.dir .. "/config.img") assert(f, "no VM directory") f:close()
      assert(not pcall(j.result, j), "a result is taken once")
      assert(done(vm:job("status")) == "created")
      assert(vm:status() == "created") -- a direct call works on a handle not lent
      local ids = {}
      for _, i in ipairs(done(core.job_list())) do ids[#ids + 1] = i.id end
      assert(#ids == 1 and ids[1] == "bg", table.concat(ids, ","))
      assert(done(vm:job("close")) == true)
      assert(vm:closed(), "closed by its close job")
      assert(#core.list() == 0, "an owned VM is deleted when its handle is closed")
      assert(io.open(info.dir .. "/config.img") == nil, "its directory is gone")
      print(tostring(j))
    ]])
    if out then assert.truthy(out:find("smolvm.job", 1, true), out) end
  end)

  it("keeps a VM: closing the handle then leaves it", function()
    run([[
      local vm = done(core.vm_create({ network = "none", id = "kept", ephemeral = true }, true))
      assert(done(vm:job("keep")) == true)
      assert(done(vm:job("close")) == true)
      local l = core.list()
      assert(#l == 1 and l[1].id == "kept", "a kept VM outlives its handle")
      local again = done(core.job_open("kept"))
      assert(done(again:job("delete")) == true)
      assert(#core.list() == 0)
    ]])
  end)

  it("reports a job's failure as the library's error", function()
    run([[
      local vm = done(core.vm_create({ network = "none", id = "twice" }, true))
      local other, msg, code = done(core.vm_create({ network = "none", id = "twice" }, true))
      assert(other == nil and code == "EEXIST", tostring(msg))
      local ok, m2, c2 = done(vm:job("unforward", 8080))
      assert(ok == nil and c2, tostring(m2))
      assert(done(vm:job("delete")) == true)
      assert(done(vm:job("status")) == "deleted")
    ]])
  end)

  it("raises for bad arguments at once, and for VMs not made by a job", function()
    run([[
      assert(not pcall(core.vm_create, { network = "none", memory = 1 }, true))
      local vm = done(core.vm_create({ network = "none", id = "args" }, true))
      assert(not pcall(vm.job, vm, "no-such-op"))
      assert(not pcall(vm.job, vm, "stop", -1))
      assert(done(vm:job("delete")))
      local plain = assert(core.vm_create({ network = "none", id = "plain" }))
      local ok, err = pcall(plain.job, plain, "status")
      assert(not ok and err:find("only for vms made by a job", 1, true), err)
      assert(plain:delete())
    ]])
  end)

  it("removes its socket directory when the process exits", function()
    local out = run([[
      local j = core.job_list()
      assert(j:wait(60000))
      print("dir " .. j:path():match("^(.*)/%d+$"))
    ]])
    if not out then return end
    local jobdir = out:match("dir (%S+)")
    assert.truthy(jobdir, out)
    assert.is_false(h.exists(jobdir .. "/."), jobdir .. " is left behind")
  end)
end)
