-- SPDX-License-Identifier: MIT
-- The confined VMM with real guests (docs/security.md), checked the way an admin
-- would: /proc/PID/status of QEMU and of its supervisor, QEMU's root directory, what a
-- process with QEMU's credentials and root can open, its cgroup's limits, and that
-- nothing is left in /sys/fs/cgroup after delete, even after a SIGKILLed supervisor.
-- Also: the first start under TCG says what that is not; accel = "kvm" never falls
-- back; an ordinary user still runs sandboxes (user networking). Run by
-- tests/integration/run-spec.sh (temporary state dir, private network namespace); the
-- confinement itself needs root.
local h = require "helpers"
local smolvm = require "smolvm"

local q = h.quote
local BASE = 1879048192 -- SMOLVM_VMM_UID_BASE
local ROOT = io.popen("id -u"):read("l") == "0"

local logged = {}
smolvm.configure{ log = function(level, msg) logged[#logged + 1] = level .. ": " .. msg end }

local function status_of(pid)
  local s = h.readfile("/proc/" .. pid .. "/status")
  assert(s, "no process " .. tostring(pid))
  local t = {}
  for k, v in s:gmatch("([%w_]+):%s*([^\n]*)") do t[k] = v end
  return t
end

local function kvm_usable()
  for _, c in ipairs(smolvm.doctor()) do
    if c.name == "kvm" then return c.ok end
  end
  return false
end

-- The cgroup directories of pid, by controller ("memory", "pids"), under the
-- hierarchy it is mounted at (v1: /sys/fs/cgroup/<ctrl>, v2: the cgroup2 mount).
local function cgroups_of(pid)
  local dirs = {}
  local v2mount
  for line in io.lines("/proc/self/mountinfo") do
    local mnt, fstype = line:match("^%S+ %S+ %S+ %S+ (%S+) .- %- (%S+) ")
    if fstype == "cgroup2" and not v2mount then v2mount = mnt end
  end
  for line in io.lines("/proc/" .. pid .. "/cgroup") do
    local ctrls, path = line:match("^%d+:([^:]*):(.*)$")
    if ctrls == "" and v2mount then
      dirs.v2 = v2mount .. path
    else
      for c in (ctrls or ""):gmatch("[^,]+") do dirs[c] = "/sys/fs/cgroup/" .. ctrls .. path end
    end
  end
  return dirs
end

local function exists(path)
  local ok = os.execute("test -e " .. q(path))
  return ok == true or ok == 0
end

-- What a process with uid's credentials, chrooted where pid is, can open.
local PROBE = [[
import os, sys
root, uid = sys.argv[1], int(sys.argv[2])
os.chroot(root)
os.chdir("/")
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
for p in sys.argv[3:]:
    try:
        os.close(os.open(p, os.O_RDONLY))
        print("OPENED " + p)
    except OSError as e:
        print("refused %s %d" % (p, e.errno))
try:
    os.close(os.open("/new", os.O_CREAT | os.O_WRONLY, 0o600))
    print("CREATED /new")
except OSError as e:
    print("refused create %d" % e.errno)
]]

describe("a confined vmm", function()
  if not ROOT then
    it("needs root", function() pending("the uid, chroot and cgroups are made as root") end)
    return
  end

  local vm, info, pid, sv
  setup(function()
    vm = assert(smolvm.VM{ memory = 256, vcpus = 2, network = "user" })
    assert(vm:start{ timeout = h.BOOT })
    info = assert(vm:info())
    pid, sv = info.pid, info.supervisor_pid
  end)
  teardown(function()
    if vm then vm:delete() end
  end)

  it("runs as a uid of its own with no capabilities, no_new_privs and seccomp", function()
    local st = status_of(pid)
    local uids = {}
    for u in st.Uid:gmatch("%d+") do uids[#uids + 1] = tonumber(u) end
    assert.are.equal(4, #uids)
    for _, u in ipairs(uids) do
      assert.are.equal(uids[1], u)
      assert.is_true(u >= BASE and u < BASE + 65536, st.Uid)
    end
    for g in st.Gid:gmatch("%d+") do assert.are.equal(uids[1], tonumber(g)) end
    assert.are.equal("0000000000000000", st.CapEff)
    assert.are.equal("0000000000000000", st.CapPrm)
    assert.are.equal("0000000000000000", st.CapAmb)
    assert.are.equal("1", st.NoNewPrivs)
    assert.are.equal("2", st.Seccomp)
    assert.are.equal("1000", (h.readfile("/proc/" .. pid .. "/oom_score_adj"):gsub("%s", "")))
    -- The guest works.
    local r = assert(vm:run("echo confined"))
    assert.are.equal("confined\n", r.stdout)
  end)

  it("is chrooted into an empty directory and can open nothing outside it", function()
    local root = io.popen("readlink /proc/" .. pid .. "/root"):read("l")
    assert.are.equal(info.dir .. "/vmm-root", root)
    assert.are.equal("", io.popen("ls -A " .. q(root)):read("a"))
    local uid = tonumber(status_of(pid).Uid:match("%d+"))
    local out = h.sh(("python3 -c %s /proc/%d/root %d /etc/passwd %s %s ../../../etc/passwd "
      .. "/proc/self/status /"):format(q(PROBE), pid, uid, q(info.dir .. "/disk.qcow2"),
      q(info.dir .. "/supervisor.json")))
    assert.falsy(out:find("OPENED", 1, true), out)
    assert.falsy(out:find("CREATED", 1, true), out)
    assert.truthy(out:find("refused /etc/passwd", 1, true), out)
    assert.truthy(out:find("refused create", 1, true), out)
    -- And no open directory to start an openat() from.
    local dirs = h.sh("for f in /proc/" .. pid .. "/fd/*; do [ -d \"$f\" ] && echo DIR $f; done; true")
    assert.are.equal("", dirs)
  end)

  it("sits in a cgroup with a memory and a pids limit", function()
    local cg = cgroups_of(pid)
    local mem = cg.memory or cg.v2
    assert.truthy(mem, "no memory cgroup")
    assert.truthy(mem:find("/smolvm/" .. vm.id .. ".", 1, true), mem)
    local limit = h.readfile(mem .. "/memory.limit_in_bytes") or h.readfile(mem .. "/memory.max")
    -- guest RAM + the TCG code buffer (256 MiB, under TCG) + 128 MiB
    local want = (256 + (kvm_usable() and 0 or 256) + 128) * 1024 * 1024
    assert.are.equal(want, tonumber(limit))
    local pids = cg.pids or cg.v2
    assert.are.equal(96 + 2, tonumber(h.readfile(pids .. "/pids.max")))
  end)

  it("has a supervisor that is root with three capabilities only", function()
    local st = status_of(sv)
    assert.are.equal("0", st.Uid:match("%d+"))
    -- CAP_KILL (5), CAP_NET_BIND_SERVICE (10), CAP_NET_ADMIN (12): 0x1420
    assert.are.equal("0000000000001420", st.CapEff)
    assert.are.equal("0000000000001420", st.CapPrm)
    assert.are.equal("0000000000001420", st.CapBnd)
    assert.are.equal("1", st.NoNewPrivs)
  end)

  it("leaves no cgroup after delete", function()
    local cg = cgroups_of(pid)
    assert.truthy(next(cg))
    assert(vm:delete())
    vm = nil
    assert.falsy(h.readfile("/proc/" .. pid .. "/status"), "the vmm survived delete")
    for _, d in pairs(cg) do
      if d:find("/smolvm/", 1, true) then assert.is_false(exists(d), d) end
    end
  end)
end)

describe("a SIGKILLed supervisor", function()
  if not ROOT then return end

  it("takes its vmm with it, and reconcile removes the cgroup", function()
    local vm = assert(smolvm.VM{ memory = 256, vcpus = 1, network = "none" })
    assert(vm:start{ timeout = h.BOOT })
    local info = assert(vm:info())
    local cg = cgroups_of(info.pid)
    assert.truthy((cg.memory or cg.v2 or ""):find("/smolvm/", 1, true))
    local killed = os.execute("kill -KILL " .. info.supervisor_pid)
    assert.is_true(killed == true or killed == 0)
    -- The lifeline: the kernel kills QEMU although it changed its uid.
    assert.truthy(h.wait_for(function() return not h.readfile("/proc/" .. info.pid .. "/status") end, 10),
      "the vmm outlived its supervisor")
    assert(smolvm.reconcile())
    for _, d in pairs(cg) do
      if d:find("/smolvm/", 1, true) then assert.is_false(exists(d), d) end
    end
    assert.are.equal("error", vm.status)
    assert(vm:delete())
  end)
end)

describe("TCG honesty", function()
  it("the first start under TCG warned once, in one line", function()
    if kvm_usable() then pending("this host has KVM") return end
    -- Earlier specs in this file started VMs: exactly one warning for all of them.
    local warnings = {}
    for _, l in ipairs(logged) do
      if l:find("not a hardware security boundary", 1, true) then warnings[#warnings + 1] = l end
    end
    if #warnings == 0 then -- running alone (not root): start one now
      local vm = assert(smolvm.VM{ memory = 256, vcpus = 1, network = "none" })
      assert(vm:start{ timeout = h.BOOT })
      vm:delete()
      for _, l in ipairs(logged) do
        if l:find("not a hardware security boundary", 1, true) then warnings[#warnings + 1] = l end
      end
    end
    assert.are.equal(1, #warnings, table.concat(logged, "\n"))
    assert.truthy(warnings[1]:find("^warn: no usable KVM: guests run under TCG"), warnings[1])
    assert.falsy(warnings[1]:find("\n", 1, true))
  end)

  it("accel = \"kvm\" refuses to start instead of falling back", function()
    if kvm_usable() then pending("this host has KVM") return end
    local vm = assert(smolvm.VM{ memory = 256, accel = "kvm", network = "none" })
    local ok, msg, code = vm:start{ timeout = 30 }
    assert.is_nil(ok)
    assert.are.equal("EHOST", code)
    assert.truthy(msg:find("accel 'kvm'", 1, true), msg)
    local info = assert(vm:info())
    assert.are.equal(0, info.pid or 0)
    local qemus = h.sh("pgrep -f -- " .. q("[q]emu-system.*" .. info.dir .. "/") .. " || true")
    assert.are.equal("", qemus)
    vm:delete()
  end)

  it("doctor says it", function()
    for _, c in ipairs(smolvm.doctor()) do
      if c.name == "isolation" then
        assert.are.equal(kvm_usable(), c.ok)
        if not c.ok then
          assert.truthy(c.detail:find("software emulation is not a hardware security boundary", 1, true))
          assert.truthy(c.hint:find("KVM", 1, true))
        end
        return
      end
    end
    error("no isolation check")
  end)
end)

describe("an ordinary user", function()
  if not ROOT then return end

  it("still runs a sandbox with user networking: no uid change, no cgroup", function()
    local base = assert(io.popen("mktemp -d /tmp/smolvm-rootless.XXXXXX")):read("l")
    finally(function()
      -- "[/]tmp/...": the pattern must not match the shell that runs pkill.
      h.sh("pkill -9 -f -- " .. q("[/]" .. base:sub(2) .. "/") .. "; rm -rf " .. q(base))
    end)
    local paths = require("smolvm.core").paths()
    local img = paths.image_dir .. "/default"
    -- The image through hard links (root's home is closed to others).
    h.sh(("mkdir -p %s/images/default %s/state && ln %s/* %s/images/default/ && chmod 755 %s "
      .. "%s/images %s/images/default && chown 65534:65534 %s/state"):format(
      q(base), q(base), q(img), q(base), q(base), q(base), q(base), q(base)))
    local code = [[
      local smolvm = require "smolvm"
      local vm = assert(smolvm.VM{ memory = 256, vcpus = 1, network = "user" })
      assert(vm:start{ timeout = 120 })
      local info = vm:info()
      local st = io.open("/proc/" .. info.pid .. "/status"):read("a")
      print("VMMUID " .. st:match("Uid:%s*(%d+)"))
      print("NNP " .. st:match("NoNewPrivs:%s*(%d+)"))
      local sst = io.open("/proc/" .. info.supervisor_pid .. "/status"):read("a")
      print("SVCAP " .. sst:match("CapEff:%s*(%x+)"))
      print("CGROUP " .. io.open("/proc/" .. info.pid .. "/cgroup"):read("a"):gsub("\n", " "))
      print("RUN " .. assert(vm:run("echo rootless")).stdout)
      assert(vm:delete())
      print("LEFT " .. #smolvm.VM.list())
    ]]
    local out = h.sh(("cd %s && SMOLVM_STATE_DIR=%s/state SMOLVM_IMAGE_DIR=%s/images "
      .. "LUA_PATH=%s LUA_CPATH=%s setpriv --reuid=65534 --regid=65534 --clear-groups lua5.4 -e %s")
      :format(q(base), q(base), q(base), q(os.getenv("LUA_PATH") or ""),
        q(os.getenv("LUA_CPATH") or ""), q(code)))
    assert.truthy(out:find("VMMUID 65534\n", 1, true), out)
    assert.truthy(out:find("NNP 1\n", 1, true), out)
    assert.truthy(out:find("SVCAP 0000000000000000\n", 1, true), out)
    assert.truthy(out:find("RUN rootless\n", 1, true), out)
    assert.truthy(out:find("LEFT 0\n", 1, true), out)
    assert.falsy(out:match("CGROUP [^\n]*/smolvm/"), out)
  end)
end)
