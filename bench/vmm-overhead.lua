#!/usr/bin/env smolvm-lua
-- SPDX-License-Identifier: MIT
-- The VMM's memory above the guest's RAM, for the Slurm jobs' memory request
-- (lua/smolvm/slurm.lua VMM_OVERHEAD_MIB, docs/cluster.md). For each guest size: boot
-- a sandbox (network "user"), fill most of its RAM from python3 and do some CPU work,
-- then read the VMM's peak RSS (VmHWM). Overhead = VmHWM - guest RAM, a lower bound:
-- the guest never touches every page of its RAM.
--   build/smolvm-lua bench/vmm-overhead.lua [MIB...]        (default 256 512)
local smolvm = require "smolvm"

local function status_kb(pid, key)
  local f = io.open("/proc/" .. pid .. "/status")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return tonumber(s:match(key .. ":%s+(%d+)"))
end

local sizes = {}
for i = 1, #arg do sizes[i] = assert(math.tointeger(tonumber(arg[i])), "sizes in MiB") end
if #sizes == 0 then sizes = { 256, 512 } end

print(string.format("%-8s %-10s %-12s %-12s %s", "guest", "backend", "VmRSS kB", "VmHWM kB", "overhead MiB"))
for _, mib in ipairs(sizes) do
  local vm <close> = assert(smolvm.VM{ memory = mib, vcpus = 1, network = "user" })
  assert(vm:start{ timeout = 180 })
  local fill = mib - 90 -- what the guest kernel and python leave free
  local r = assert(vm:run("python3 -c 'x = bytearray(" .. fill .. " * 2**20); import hashlib;"
    .. " [hashlib.sha256(str(i).encode()).hexdigest() for i in range(200000)]'", { timeout = 300 }))
  assert(r.exit_code == 0, r.stderr)
  local info = vm:info()
  local rss, hwm = status_kb(info.pid, "VmRSS"), status_kb(info.pid, "VmHWM")
  print(string.format("%-8s %-10s %-12d %-12d %.0f", mib .. " MiB", info.backend, rss, hwm,
    (hwm - mib * 1024) / 1024))
  vm:delete()
end
