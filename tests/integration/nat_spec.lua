-- SPDX-License-Identifier: MIT
-- network = "nat" with real guests. Run by nat-netns.sh inside namespaces it made:
-- this process is the "host" (uplink up0 198.51.100.1, default route to the outside
-- namespace 198.51.100.2, which serves HTTP on :8000 and tells who called; see
-- nat-netns.sh for its other hosts and its resolver).
local smolvm = require "smolvm"

local OUT = assert(os.getenv("SMOLVM_NAT_OUTSIDE_NS"), "run through nat-netns.sh")
local h = require "helpers"
local LUA, BOOT, sh, tmpfile = h.LUA, h.BOOT, h.sh, h.tmpfile

local function nft_rules()
  return (sh("nft list table inet smolvm"))
end

local function links()
  return (sh("ip -o link show"))
end

-- Start a tiny HTTP server in the guest, answering "guest:<hostname>".
local function serve(vm, port)
  assert(vm:write_file("/srv/index.html", "guest:" .. vm.id .. "\n"))
  assert(vm:run(("nohup python3 -m http.server %d -d /srv >/dev/null 2>&1 &"):format(port)))
  local r = assert(vm:run(("for i in $(seq 50); do python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", %d), 1)' 2>/dev/null && exit 0; sleep 0.1; done; exit 1"):format(port)))
  assert.are.equal(0, r.exit_code, "guest server did not come up")
end

describe("network nat", function()
  local a, b

  lazy_setup(function()
    a = assert(smolvm.VM{ id = "nat-a", network = "nat", memory = 256, vcpus = 1,
                          forwards = { { host = 18080, guest = 8080 } } })
    b = assert(smolvm.VM{ id = "nat-b", network = "nat", memory = 256, vcpus = 1 })
    assert(a:start{ timeout = BOOT })
    assert(b:start{ timeout = BOOT })
    serve(a, 8080)
    serve(b, 8080)
  end)

  lazy_teardown(function()
    if a then a:delete() end
    if b then b:delete() end
  end)

  it("gives each VM its own address, TAP and tagged rules", function()
    assert.truthy(a.ip:match("^172%.16%.%d+%.%d+$"))
    assert.truthy(b.ip:match("^172%.16%.%d+%.%d+$"))
    assert.are_not.equal(a.ip, b.ip)
    assert.truthy(links():find("sv-nat-a", 1, true))
    assert.truthy(nft_rules():find('comment "vm:nat-a"', 1, true))
    assert.are.equal(a.ip .. "\n", assert(a:run("ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1")).stdout)
  end)

  it("reaches the outside world through masquerade", function()
    local r = assert(a:run("curl -s --max-time 5 http://198.51.100.2:8000/"))
    assert.are.equal(0, r.exit_code, r.stderr)
    assert.are.equal("client=198.51.100.1 host=198.51.100.2\n", r.stdout) -- the uplink, not the guest
  end)

  it("forwards 127.0.0.1:18080 to the guest for the host itself, through the supervisor's proxy", function()
    local out = sh("curl -s --max-time 5 http://127.0.0.1:18080/index.html")
    assert.are.equal("guest:nat-a\n", out)
    -- no DNAT of loopback (it would need route_localnet): the supervisor listens there
    assert.falsy(nft_rules():find("fwd:127.0.0.1:18080", 1, true))
    local listeners = sh("ss -Hltnp 'sport = :18080'")
    assert.truthy(listeners:find("127.0.0.1:18080", 1, true), listeners)
    assert.truthy(listeners:find("smolvm-supervis", 1, true), listeners)
    assert.are.equal("0\n", sh("cat /proc/sys/net/ipv4/conf/sv-nat-a/route_localnet"))
  end)

  it("adds a forward on the uplink address that the outside can use, and removes it", function()
    assert(a:forward(18081, 8080, "198.51.100.1"))
    local cmd = ("ip netns exec %s curl -s --max-time 5 http://198.51.100.1:18081/index.html"):format(OUT)
    assert.are.equal("guest:nat-a\n", (sh(cmd)))
    assert(a:unforward(18081))
    local out, code = sh(cmd)
    assert.are_not.equal(0, code, out)
  end)

  it("keeps 127.0.0.1 forwards unreachable from outside", function()
    local out, code = sh(("ip netns exec %s curl -s --max-time 3 http://198.51.100.1:18080/"):format(OUT))
    assert.are_not.equal(0, code, out)
  end)

  it("keeps guests from reaching each other", function()
    local ok = assert(b:run("curl -s --max-time 3 http://127.0.0.1:8080/index.html")).stdout
    assert.are.equal("guest:nat-b\n", ok) -- b's server works
    local r = assert(a:run(("curl -s --max-time 3 http://%s:8080/index.html"):format(b.ip)))
    assert.are_not.equal(0, r.exit_code)
    assert.are.equal("", r.stdout)
  end)

  it("keeps guests from the host's own services and from link-local metadata", function()
    local pid = sh("python3 -m http.server 9999 --bind 0.0.0.0 >/dev/null 2>&1 & echo $!"):match("%d+")
    assert(h.wait_for(function() return sh("ss -Hltn 'sport = :9999'"):find("9999", 1, true) end, 20),
           "the host's server did not come up")
    assert.truthy(sh("curl -s --max-time 3 -o /dev/null -w '%{http_code}' http://127.0.0.1:9999/"):find("200"))
    for _, target in ipairs({ "172.16.0.1:9999", "198.51.100.1:9999", "169.254.169.254:80" }) do
      local r = assert(a:run("curl -s --max-time 3 http://" .. target .. "/"))
      assert.are_not.equal(0, r.exit_code, target .. " was reachable")
    end
    sh("kill " .. pid)
  end)
end)

describe("network nat cleanup", function()
  it("removes exactly a deleted VM's TAP, rules and lease", function()
    local c = assert(smolvm.VM{ id = "nat-c", network = "nat", memory = 256, vcpus = 1 })
    local d = assert(smolvm.VM{ id = "nat-d", network = "nat", memory = 256, vcpus = 1 })
    assert(c:start{ timeout = BOOT })
    assert(d:start{ timeout = BOOT })
    assert(c:delete())
    assert.falsy(links():find("sv-nat-c", 1, true))
    assert.falsy(nft_rules():find("vm:nat-c", 1, true))
    for _, l in ipairs(smolvm.Net():leases()) do assert.are_not.equal("nat-c", l.vm_id) end
    -- the other VM keeps everything
    assert.truthy(links():find("sv-nat-d", 1, true))
    assert.truthy(nft_rules():find('comment "vm:nat-d"', 1, true))
    assert.are.equal(0, assert(d:run("curl -s --max-time 5 http://198.51.100.2:8000/")).exit_code)
    assert(d:stop())
    assert.falsy(links():find("sv-nat-d", 1, true)) -- stopped: no TAP, no rules
    assert.falsy(nft_rules():find("vm:nat-d", 1, true))
    assert(d:delete())
  end)

  it("cleans up after a controller killed during start, at the next command", function()
    local script = tmpfile([[
      local smolvm = require "smolvm"
      local vm = assert(smolvm.VM{ id = "nat-k", network = "nat", memory = 256, vcpus = 1 })
      vm:keep()
      io.stdout:write("created\n"); io.stdout:flush()
      vm:start{ timeout = 120 }
    ]])
    local pid = sh(("%q %q >%q.out 2>&1 & echo $!"):format(LUA, script, script)):match("%d+")
    local deadline = os.time() + 60
    repeat sh("sleep 0.2") until links():find("sv-nat-k", 1, true) or os.time() > deadline
    assert.truthy(links():find("sv-nat-k", 1, true), "the TAP never appeared")
    sh("kill -9 " .. pid .. "; while kill -0 " .. pid .. " 2>/dev/null; do sleep 0.05; done")
    smolvm.VM.list() -- the next command reconciles
    assert.falsy(links():find("sv-nat-k", 1, true))
    assert.falsy(nft_rules():find("vm:nat-k", 1, true))
    assert(assert(smolvm.VM.from_id("nat-k")):delete())
    for _, l in ipairs(smolvm.Net():leases()) do assert.are_not.equal("nat-k", l.vm_id) end
  end)

  it("hands distinct addresses and ports to 8 VMs created in parallel", function()
    local script = tmpfile([[
      local smolvm = require "smolvm"
      local i = tonumber(arg[1])
      local vm = assert(smolvm.VM{ id = "par-" .. i, network = "nat",
                                   forwards = { { host = 19000 + i, guest = 80 } } })
      vm:keep()
    ]])
    local cmds = {}
    for i = 1, 8 do cmds[#cmds + 1] = ("%q %q %d &"):format(LUA, script, i) end
    local out, code = sh(table.concat(cmds, " ") .. " wait")
    assert.are.equal(0, code, out)
    local ips, n = {}, 0
    for _, l in ipairs(smolvm.Net():leases()) do
      if l.vm_id:match("^par%-") then
        assert.is_nil(ips[l.ip], "duplicate " .. l.ip)
        ips[l.ip] = true
        n = n + 1
      end
    end
    assert.are.equal(8, n)
    for i = 1, 8 do assert(assert(smolvm.VM.from_id("par-" .. i)):delete()) end
  end)
end)
