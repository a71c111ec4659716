-- SPDX-License-Identifier: MIT
-- Real sandboxes end to end (QEMU microvm; TCG on hosts without usable KVM), through
-- the public Lua contract. Run by tests/integration/run-spec.sh, which skips (77)
-- when the host has no image or QEMU.
local smolvm = require "smolvm"

local h = require "helpers"
local LUA, BOOT = h.LUA, h.BOOT
local sh, tmpfile, readfile, wait_for = h.sh, h.tmpfile, h.readfile, h.wait_for

-- Is any process still using this VM's directory (its QEMU)?
local function vmm_running(dir)
  -- "[q]emu" so the pattern does not match the shell that runs pgrep
  local out = sh(("pgrep -f -- %q"):format("[q]emu-system.*" .. dir .. "/"))
  return out:match("%d+") ~= nil
end

-- SIGKILL, then wait until the process is really gone (its locks released).
local function kill9(pid)
  sh("kill -9 " .. pid)
  assert.truthy(wait_for(function()
    local stat = readfile("/proc/" .. pid .. "/stat")
    return not stat or stat:match("^%d+ %b() Z") ~= nil
  end, 10), "process " .. pid .. " did not die")
end

-- Run a Lua snippet in another smolvm-lua process (a second controller).
local function lua_proc(code, background)
  local file = tmpfile(code)
  if background then
    local out = sh(("%q %q >%q.out 2>&1 & echo $!"):format(LUA, file, file))
    return tonumber(out:match("%d+")), file .. ".out"
  end
  return sh(("%q %q"):format(LUA, file))
end

describe("a running sandbox", function()
  local vm

  lazy_setup(function()
    vm = assert(smolvm.VM{ memory = 256, vcpus = 1, env = { GREETING = "hello" } })
    assert(vm:start{ timeout = BOOT })
  end)

  lazy_teardown(function()
    if vm then vm:delete() end
  end)

  it("runs a command and returns its output", function()
    local r = assert(vm:run("python3 -c 'print(6*7)'"))
    assert.are.equal("42\n", r.stdout)
    assert.are.equal("", r.stderr)
    assert.are.equal(0, r.exit_code)
    assert.is_true(r.ok)
  end)

  it("reports non-zero exit codes and stderr as results, not failures", function()
    local r = assert(vm:run("echo out; echo oops >&2; exit 3"))
    assert.are.equal(3, r.exit_code)
    assert.is_false(r.ok)
    assert.are.equal("out\n", r.stdout)
    assert.are.equal("oops\n", r.stderr)
    assert.truthy(r.output:find("oops", 1, true))
  end)

  it("passes stdin, env and cwd", function()
    assert.are.equal("piped", assert(vm:run("cat", { stdin = "piped" })).stdout)
    local r = assert(vm:run('echo "$GREETING $EXTRA"', { env = { EXTRA = "world" } }))
    assert.are.equal("hello world\n", r.stdout)
    assert.are.equal("/tmp\n", assert(vm:run("pwd", { cwd = "/tmp" })).stdout)
  end)

  it("does not run a command in a cwd that does not exist", function()
    local r, err = vm:run("touch /root/ran-anyway", { cwd = "/nonexistent" })
    if r then assert.is_false(r.ok) else assert.truthy(err) end
    assert.are.equal(1, assert(vm:run("test -e /root/ran-anyway")).exit_code)
  end)

  it("kills a command that passes its timeout", function()
    local t0 = os.time()
    local r, err, code = vm:run("echo $$ > /tmp/slow.pid; sleep 60", { timeout = 1 })
    assert.is_nil(r)
    assert.are.equal("ETIMEDOUT", code)
    assert.truthy(err)
    assert.truthy(os.time() - t0 < 30)
    -- the process is gone, and the session still works
    local chk = assert(vm:run('kill -0 "$(cat /tmp/slow.pid)" 2>/dev/null && echo alive || echo gone'))
    assert.are.equal("gone\n", chk.stdout)
  end)

  it("moves files both ways", function()
    assert(vm:write_file("/srv/deep/dir/hello.txt", "hi there\n"))
    assert.are.equal("hi there\n", assert(vm:read_file("/srv/deep/dir/hello.txt")))

    local src = tmpfile("#!/bin/sh\necho script ran\n", "0755")
    assert(vm:upload(src, "/opt/tools/run.sh"))
    assert.are.equal("script ran\n", assert(vm:run("/opt/tools/run.sh")).stdout)
    assert.are.equal("755\n", assert(vm:run("stat -c %a /opt/tools/run.sh")).stdout)

    assert(vm:run("head -c 300000 /dev/urandom > /root/blob; chmod 600 /root/blob"))
    local dst = os.tmpname()
    assert(vm:download("/root/blob", dst))
    local sum = assert(vm:run("sha256sum /root/blob")).stdout:match("^(%x+)")
    assert.are.equal(sum, (sh(("sha256sum %q"):format(dst))):match("^(%x+)"))
    assert.are.equal("600", (sh(("stat -c %%a %q"):format(dst))):match("%d+"))
    os.remove(src)
    os.remove(dst)
  end)

  it("says which path is missing", function()
    local data, err = vm:read_file("/no/such/file")
    assert.is_nil(data)
    assert.truthy(err:find("/no/such/file", 1, true))
    local ok, err2 = vm:download("/no/such/file", os.tmpname())
    assert.is_nil(ok)
    assert.truthy(err2:find("/no/such/file", 1, true))
  end)

  it("is found by id from another process", function()
    local out, code = lua_proc(([[
      local smolvm = require "smolvm"
      local vm = assert(smolvm.VM.from_id(%q))
      io.write(vm.status, " ", assert(vm:run("hostname")).stdout)
    ]]):format(vm.id))
    assert.are.equal(0, code, out)
    assert.are.equal("running " .. vm.id .. "\n", out)
  end)

  it("is listed and described", function()
    local found
    for _, info in ipairs(smolvm.VM.list()) do
      if info.id == vm.id then found = info end
    end
    assert.truthy(found)
    assert.are.equal("running", found.status)
    assert.are.equal("running", vm:info().status)
    assert.are.equal(vm.id, smolvm.Store():get(vm.id).id)
  end)

  it("keeps its disk across stop and start", function()
    assert(vm:write_file("/root/persist.txt", "still here"))
    assert(vm:stop())
    assert.are.equal("stopped", vm.status)
    assert.is_false(vmm_running(vm:info().dir))
    assert(vm:start{ timeout = BOOT })
    assert.are.equal("still here", assert(vm:read_file("/root/persist.txt")))
  end)
end)

describe("isolated disks", function()
  it("keep one VM's writes from other VMs and from the base image", function()
    local image = (os.getenv("SMOLVM_IMAGE_DIR") or
      ((os.getenv("XDG_DATA_HOME") or (os.getenv("HOME") .. "/.local/share")) .. "/smolvm/images"))
      .. "/default/rootfs.ext4"
    local a = assert(smolvm.VM{ memory = 256, vcpus = 1 })
    local b = assert(smolvm.VM{ memory = 256, vcpus = 1 })
    -- booted side by side
    assert(a:start_begin{ timeout = BOOT })
    assert(b:start_begin{ timeout = BOOT })
    assert(a:start_finish())
    assert(b:start_finish())
    assert.are.equal("running", b.status)
    assert(a:write_file("/root/only-in-a", "a"))
    assert(a:run("sync"))
    assert.are.equal(1, assert(b:run("test -e /root/only-in-a")).exit_code)
    a:delete()
    b:delete()
    local out = sh(("debugfs -R 'stat /root/only-in-a' %q"):format(image))
    assert.truthy(out:find("File not found", 1, true), out)
  end)
end)

describe("a start begun and abandoned", function()
  it("leaves no VMM once the handle is gone and the next command reconciles", function()
    local vm = assert(smolvm.VM{ memory = 256, vcpus = 1 })
    local id, dir = vm.id, vm:info().dir
    vm:keep()
    assert(vm:start_begin{ timeout = BOOT })
    assert.truthy(vmm_running(dir))
    -- while one handle is starting it, nobody else may act on the VM
    local other = assert(smolvm.VM.from_id(id))
    local ok, err, code = other:start{ timeout = BOOT }
    assert.is_nil(ok)
    assert.are.equal("ESTATE", code)
    assert.truthy(err:find("another process", 1, true), err)
    local ok2, _, code2 = other:delete()
    assert.is_nil(ok2)
    assert.are.equal("ESTATE", code2)
    other:close()
    vm:close() -- frees the handle mid-start
    vm = nil
    collectgarbage()
    local listed
    for _, info in ipairs(smolvm.VM.list()) do
      if info.id == id then listed = info end
    end
    assert.are.equal("error", listed.status)
    assert.is_false(vmm_running(dir))
    assert(assert(smolvm.VM.from_id(id)):delete())
  end)
end)

describe("a controller killed with SIGKILL", function()
  it("after start leaves a VM that delete removes completely", function()
    local pid, outfile = lua_proc([[
      local smolvm = require "smolvm"
      local vm = assert(smolvm.VM{ memory = 256, vcpus = 1 })
      vm:keep()
      assert(vm:start{ timeout = 120 })
      io.stdout:write(vm.id, "\n"); io.stdout:flush()
      os.execute("sleep 600")
    ]], true)
    local id = wait_for(function() return (readfile(outfile) or ""):match("(vm%-%x+)\n") end, BOOT)
    assert.truthy(id, readfile(outfile))
    kill9(pid)
    local vm = assert(smolvm.VM.from_id(id))
    assert.are.equal("running", vm.status)
    local dir = vm:info().dir
    assert(vm:delete())
    assert.is_false(vmm_running(dir))
    assert.is_nil(readfile(dir .. "/vmm.pid"))
    local _, _, code = smolvm.VM.from_id(id)
    assert.are.equal("ENOENT", code)
    for _, f in ipairs(smolvm.Net():forwards()) do assert.are_not.equal(id, f.vm_id) end
  end)

  it("during start leaves no VMM running after the next command", function()
    local pid, outfile = lua_proc([[
      local smolvm = require "smolvm"
      local vm = assert(smolvm.VM{ memory = 256, vcpus = 1 })
      vm:keep()
      io.stdout:write(vm.id, "\n"); io.stdout:flush()
      vm:start{ timeout = 120 }
    ]], true)
    local id = wait_for(function() return (readfile(outfile) or ""):match("(vm%-%x+)\n") end, 60)
    assert.truthy(id, readfile(outfile))
    local dir = smolvm.Store():get(id).dir
    assert.truthy(wait_for(function() return vmm_running(dir) end, 60), "qemu never started")
    kill9(pid)
    local listed
    for _, info in ipairs(smolvm.VM.list()) do
      if info.id == id then listed = info end
    end
    assert.are.equal("error", listed.status)
    assert.truthy(listed.reason:find("interrupted", 1, true))
    assert.is_false(vmm_running(dir))
    assert(assert(smolvm.VM.from_id(id)):delete())
    assert.is_nil(smolvm.Store():get(id))
  end)
end)
