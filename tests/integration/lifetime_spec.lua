-- SPDX-License-Identifier: MIT
-- Sandboxes that outlive nobody: their owner process is SIGKILLed at random moments of
-- its life (creating, booting, running a command, idle), and afterwards nothing of
-- any of them is left: no record, directory, supervisor, VMM, lease, TAP or rule. Run by
-- nat-netns.sh (root, in namespaces it made), so half the rounds use network "nat".
-- SMOLVM_KILL_ROUNDS sets the number of rounds (default 50).
local smolvm = require "smolvm"

local h = require "helpers"
local LUA, sh, tmpfile, readfile, wait_for = h.LUA, h.sh, h.tmpfile, h.readfile, h.wait_for
local ROUNDS = tonumber(os.getenv("SMOLVM_KILL_ROUNDS") or "50")
local STATE = assert(os.getenv("SMOLVM_STATE_DIR"))

local function count(cmd)
  local n = 0
  for _ in sh(cmd):gmatch("[^\n]+") do n = n + 1 end
  return n
end

local function leftovers()
  return {
    records = #assert(smolvm.Store()):list(),
    dirs = count(("ls -1 %q/vms 2>/dev/null"):format(STATE)),
    supervisors = count(("pgrep -f -- %q"):format("[s]molvm-supervisor.*" .. STATE)),
    vmms = count(("pgrep -f -- %q"):format("[q]emu-system.*" .. STATE)),
    leases = #assert(smolvm.Net():leases()),
    taps = count("ip -o link show | grep ' sv-'"),
    rules = count("nft -a list table inet smolvm 2>/dev/null | grep 'vm:'"),
  }
end

describe("an owner killed at a random moment", function()
  it(("leaves nothing behind, %d times"):format(ROUNDS), function()
    local script = tmpfile([[
      local smolvm = require "smolvm"
      local vm = assert(smolvm.VM{ memory = 256, vcpus = 1, network = arg[1] })
      assert(vm:start{ timeout = 120 })
      assert(vm:run("echo hi"))
      os.execute("sleep 600")
    ]])
    math.randomseed(os.time())
    local kinds = {}
    for i = 1, ROUNDS do
      local net = i % 2 == 0 and "nat" or "none"
      local pid = tonumber(sh(("%q %q %s >/dev/null 2>&1 & echo $!"):format(LUA, script, net)):match("%d+"))
      -- 0..6 s: from before the record exists to a booted guest idling
      local delay = math.random(0, 6000) / 1000
      sh(("sleep %.3f; kill -9 %d"):format(delay, pid))
      kinds[#kinds + 1] = ("%.1f"):format(delay)
    end
    -- Supervisors end their own sandboxes; what died before it had one is ended by the
    -- next command that reconciles.
    local left
    local clean = wait_for(function()
      smolvm.reconcile()
      left = leftovers()
      for _, n in pairs(left) do if n > 0 then return false end end
      return true
    end, 120)
    if not clean then
      local parts = {}
      for k, n in pairs(left) do parts[#parts + 1] = k .. "=" .. n end
      error("left after " .. ROUNDS .. " kills at " .. table.concat(kinds, " ") .. " s: " ..
            table.concat(parts, ", "))
    end
  end)
end)
