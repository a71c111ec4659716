-- SPDX-License-Identifier: MIT
-- Templates, clones, fork, pause and suspend with real guests (docs/templates.md). Run
-- by nat-netns.sh (root, in namespaces it made) so the clones on network "nat" get
-- TAPs and leases of their own. Templates go to a directory of this run.
local smolvm = require "smolvm"
local core = require "smolvm.core"

local h = require "helpers"
local sh, tmpfile, wait_for, quote = h.sh, h.tmpfile, h.wait_for, h.quote

local TDIR = assert(os.getenv("SMOLVM_TEMPLATE_DIR"), "SMOLVM_TEMPLATE_DIR")
local function now() return core.monotonic_ms() end

-- A Python process that holds a random value in memory and writes it to a file every
-- 0.2 s: alive with the same value wherever the template's memory went.
local HOLDER = [[python3 -c 'import random; print(random.random())' > /tmp/v
(setsid python3 -c '
import time
v = open("/tmp/v").read().strip()
while True:
    open("/tmp/pyval.tmp", "w").write(v)
    __import__("os").rename("/tmp/pyval.tmp", "/tmp/pyval")
    time.sleep(0.2)
' </dev/null >/dev/null 2>&1 &)
for i in $(seq 100); do [ -s /tmp/pyval ] && break; sleep 0.1; done; cat /tmp/v]]

local function stdout(vm, cmd)
  local r = assert(vm:run(cmd, { timeout = 60 }))
  assert.are.equal(0, r.exit_code, cmd .. ": " .. tostring(r.stderr))
  return r.stdout
end

-- The python process of HOLDER writes its value again (so it runs, not only its file).
local function holder_value(vm)
  return stdout(vm, "rm -f /tmp/pyval; for i in $(seq 100); do [ -s /tmp/pyval ] && break; "
                 .. "sleep 0.1; done; cat /tmp/pyval")
end

local function cpu_ticks(pid)
  local f = assert(io.open("/proc/" .. pid .. "/stat"))
  local s = f:read("a")
  f:close()
  local t = {}
  for w in s:match("%) (.*)"):gmatch("%S+") do t[#t + 1] = w end
  return tonumber(t[12]) + tonumber(t[13]) -- utime + stime
end

describe("a template", function()
  local src, value

  setup(function()
    src = assert(smolvm.VM{ memory = 256, vcpus = 1, network = "user" })
    assert(src:start{ timeout = h.BOOT })
    value = stdout(src, HOLDER):gsub("%s+$", "")
    assert.truthy(value:match("^0%.%d+$"), value)
    local t0 = now()
    assert(src:snapshot("it-py"))
    print(("\n  snapshot of a 256 MiB vm: %d ms"):format(now() - t0))
  end)

  teardown(function()
    if src then src:close() end
    smolvm.template_delete("it-py")
  end)

  it("is listed, with its image and memory, in the template directory", function()
    local found
    for _, t in ipairs(assert(smolvm.templates())) do
      if t.name == "it-py" then found = t end
    end
    assert.truthy(found)
    assert.are.equal("default", found.image)
    assert.are.equal(256, found.memory)
    assert.is_nil(found.stale)
    assert.truthy(sh("ls " .. quote(TDIR .. "/it-py")):find("template.json"))
  end)

  it("starts clones whose python process holds the template's value", function()
    local a = assert(smolvm.VM{ template = "it-py", network = "user" })
    local b = assert(smolvm.VM{ template = "it-py", network = "user" })
    local t0 = now()
    assert(a:start{ timeout = h.BOOT })
    local t_start = now() - t0
    assert.are.equal(value, holder_value(a))
    print(("\n  clone: start %d ms, start + first command %d ms"):format(t_start, now() - t0))
    assert(b:start{ timeout = h.BOOT })
    assert.are.equal(value, holder_value(b))
    -- They must differ where the template's identity would make them twins.
    assert.are_not.equal(stdout(a, "head -c 32 /dev/urandom | od -An -tx1"),
                         stdout(b, "head -c 32 /dev/urandom | od -An -tx1"))
    assert.are.equal(a.id, stdout(a, "hostname"):gsub("%s+$", ""))
    assert.are.equal(b.id, stdout(b, "hostname"):gsub("%s+$", ""))
    -- The clock is the host's, not the template's: the guest's time falls within the
    -- command's run on the host's clock (a second either side).
    local before = os.time()
    local guest = tonumber(stdout(a, "date +%s.%N"))
    local after = os.time()
    assert.is_true(guest >= before - 1 and guest <= after + 1,
                   ("guest %.3f, host %d..%d"):format(guest, before, after))
    -- A file written in one clone is in no other and not in the template.
    stdout(a, "echo only-a > /root/mark")
    assert.are.equal("absent\n", stdout(b, "cat /root/mark 2>/dev/null || echo absent"))
    assert.are.equal("absent\n", stdout(src, "cat /root/mark 2>/dev/null || echo absent"))
    -- Deleting a template in use is refused, naming the users.
    local ok, msg, code = smolvm.template_delete("it-py")
    assert.is_nil(ok)
    assert.are.equal("ESTATE", code)
    assert.truthy(msg:find(a.id, 1, true) and msg:find(b.id, 1, true), msg)
    -- Deleting a clone leaves the template usable.
    a:close()
    local c = assert(smolvm.VM{ template = "it-py" })
    b:close()
    assert(c:start{ timeout = h.BOOT })
    assert.are.equal(value, holder_value(c))
    c:close()
  end)

  it("makes clones take its machine: other memory or image is an error", function()
    local vm, msg = smolvm.VM{ template = "it-py", memory = 512 }
    assert.is_nil(vm)
    assert.truthy(msg:find("memory: a clone has its template's memory (256 MiB)", 1, true), msg)
    vm, msg = smolvm.VM{ template = "it-py", network = "nat" }
    assert.is_nil(vm)
    assert.truthy(msg:find("template 'it-py' was made on network 'user'", 1, true), msg)
    vm, msg = smolvm.VM{ template = "no-such-template" }
    assert.is_nil(vm)
    assert.truthy(msg:find("template 'no-such-template' not found", 1, true), msg)
  end)

  it("pauses: no CPU time over 5 s, commands refused, then resumed", function()
    local pid = assert(src:info().pid)
    -- A guest spinning a CPU, so that "no CPU time" means something: running, it takes
    -- most of a host CPU; paused, nothing (a tick or two of QEMU's main loop at most).
    stdout(src, "(setsid sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 &)")
    finally(function()
      if src.status == "paused" then src:resume() end
      src:run("pkill -f 'while :; do :; done'")
    end)
    local spin0 = cpu_ticks(pid)
    sh("sleep 1")
    local spinning = cpu_ticks(pid) - spin0
    assert.truthy(spinning >= 30, "a spinning guest took only " .. spinning .. " ticks in 1 s")
    local t0 = now()
    assert(src:pause())
    local t_pause = now() - t0
    assert.are.equal("paused", src.status)
    local r, msg, code = src:run("true")
    assert.is_nil(r)
    assert.are.equal("ESTATE", code)
    assert.truthy(msg:find("paused"), msg)
    local before = cpu_ticks(pid)
    sh("sleep 5")
    local paused = cpu_ticks(pid) - before
    assert.truthy(paused <= 2, ("paused, the vm took %d ticks in 5 s (running: %d in 1 s)")
                  :format(paused, spinning))
    t0 = now()
    assert(src:resume())
    assert.are.equal(value, holder_value(src))
    print(("\n  pause %d ms; resume + command %d ms"):format(t_pause, now() - t0))
  end)

  it("forks a running vm: clones with its process, the vm going on", function()
    local t0 = now()
    local forks = assert(src:fork{ count = 2 })
    print(("\n  fork{count=2} until both run commands: %d ms"):format(now() - t0))
    assert.are.equal(2, #forks)
    local names = {}
    for _, t in ipairs(assert(smolvm.templates())) do
      if t.ephemeral then names[#names + 1] = t.name end
    end
    assert.are.equal(1, #names)
    for _, f in ipairs(forks) do
      assert.are.equal(value, holder_value(f))
      assert.are.equal(f.id, stdout(f, "hostname"):gsub("%s+$", ""))
    end
    assert.are.equal(value, holder_value(src))
    for _, f in ipairs(forks) do f:close() end
    -- The fork's template went with its last clone.
    for _, t in ipairs(assert(smolvm.templates())) do
      assert.are_not.equal(names[1], t.name)
    end
  end)

  it("suspends to disk and starts where it was", function()
    local vm = assert(smolvm.VM{ template = "it-py", network = "user" })
    assert(vm:start{ timeout = h.BOOT })
    stdout(vm, "echo kept > /root/suspended-mark")
    local t0 = now()
    assert(vm:suspend())
    print(("\n  suspend: %d ms"):format(now() - t0))
    assert.are.equal("suspended", vm.status)
    local dir = vm:info().dir
    assert.truthy(sh("ls " .. quote(dir .. "/suspended")):find("saved.json"))
    assert.are.equal("", (sh("pgrep -f -- " .. quote("[q]emu-system.*" .. dir))))
    assert.are.equal("", (sh("pgrep -f -- " .. quote("[s]molvm-supervisor.*" .. dir))))
    t0 = now()
    assert(vm:start{ timeout = h.BOOT })
    assert.are.equal(value, holder_value(vm))
    print(("\n  start of a suspended vm + command: %d ms"):format(now() - t0))
    assert.are.equal("kept\n", stdout(vm, "cat /root/suspended-mark"))
    -- The saved state is spent.
    assert.is_nil(sh("ls " .. quote(dir)):find("suspended"))
    vm:close()
  end)

  it("gives nat clones their own addresses, and their forwards answer from the right one",
     function()
    local nat = assert(smolvm.VM{ memory = 256, vcpus = 1, network = "nat" })
    assert(nat:start{ timeout = h.BOOT })
    assert(nat:snapshot("it-nat"))
    local a = assert(smolvm.VM{ template = "it-nat",
                                forwards = { { host = 18181, guest = 8000 } } })
    local b = assert(smolvm.VM{ template = "it-nat",
                                forwards = { { host = 18182, guest = 8000 } } })
    assert(a:start{ timeout = h.BOOT })
    assert(b:start{ timeout = h.BOOT })
    assert.truthy(a.ip and b.ip)
    assert.are_not.equal(a.ip, b.ip)
    for _, vm in ipairs({ a, b }) do
      local addr = stdout(vm, "ip -4 -o addr show dev eth0")
      assert.truthy(addr:find(vm.ip .. "/", 1, true), addr)
      stdout(vm, "mkdir -p /srv && hostname > /srv/who && "
                 .. "(setsid python3 -m http.server 8000 -d /srv </dev/null >/dev/null 2>&1 &); "
                 .. "for i in $(seq 120); do curl -s -o /dev/null http://127.0.0.1:8000/who && "
                 .. "break; sleep 0.5; done")
      -- Reachable at its own address from the host, answering as itself.
      local out = sh(("curl -s --max-time 5 http://%s:8000/who"):format(vm.ip))
      assert.truthy(out:find(vm.id, 1, true), vm.ip .. " answered: " .. out)
    end
    for port, vm in pairs({ [18181] = a, [18182] = b }) do
      local got = wait_for(function()
        local out = sh(("curl -s --max-time 3 http://127.0.0.1:%d/who"):format(port))
        return out:find(vm.id, 1, true) and out
      end, 60)
      assert.truthy(got, "forward " .. port .. " did not answer from " .. vm.id)
    end
    assert.are_not.equal(nat.ip, a.ip)
    a:close()
    b:close()
    nat:close()
    assert(smolvm.template_delete("it-nat"))
  end)
end)

describe("a template made from an image that was rebuilt since", function()
  it("is refused with the reason", function()
    -- A private image dir: the default image's files, with a manifest of its own that
    -- this test rewrites as a rebuild would.
    local img = sh("mktemp -d /tmp/smolvm-img.XXXXXX"):gsub("%s+$", "")

    local default = (os.getenv("SMOLVM_IMAGE_DIR")
                     or (os.getenv("HOME") .. "/.local/share/smolvm/images")) .. "/default"
    sh(("mkdir -p %s/t && ln -s %s/vmlinux %s/rootfs.ext4 %s/t/ && cp %s/manifest.json %s/t/")
       :format(quote(img), quote(default), quote(default), quote(img), quote(default), quote(img)))
    local script = tmpfile([[
      local smolvm = require "smolvm"
      local mode = arg[1]
      if mode == "make" then
        local vm = assert(smolvm.VM{ image = "t", memory = 128, vcpus = 1, network = "none" })
        assert(vm:start{ timeout = 120 })
        assert(vm:snapshot("it-stale"))
        vm:close()
        print("made")
      else
        local vm, msg, code = smolvm.VM{ template = "it-stale" }
        print(tostring(vm), code, msg)
      end
    ]])
    local env = "SMOLVM_IMAGE_DIR=" .. quote(img) .. " "
    local out = sh(env .. quote(h.LUA) .. " " .. quote(script) .. " make 2>&1")
    assert.truthy(out:find("made"), out)
    -- "Rebuilt": the manifest says another build.
    sh(("sed -i 's/\"built\": \"[^\"]*\"/\"built\": \"2099-01-01T00:00:00Z\"/' %s/t/manifest.json")
       :format(quote(img)))
    out = sh(env .. quote(h.LUA) .. " " .. quote(script) .. " clone 2>&1")
    assert.truthy(out:find("ESTATE", 1, true), out)
    assert.truthy(out:find("the image was rebuilt", 1, true), out)
    sh(env .. quote(h.LUA) .. " -e 'require(\"smolvm\").template_delete(\"it-stale\")'")
    sh("rm -rf " .. quote(img))
  end)
end)
