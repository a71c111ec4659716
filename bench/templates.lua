#!/usr/bin/env smolvm-lua
-- SPDX-License-Identifier: MIT
-- Templates against cold starts, in one run (docs/templates.md, issue targets):
--   cold     VM{} -> start -> first command (the baseline)
--   clone    VM{ template = } -> start -> first command
--   fork     vm:fork{ count = 4 } until all four ran a command
--   pause    pause -> resume -> command
--   suspend  suspend, then start -> command (a clone, and the booted template source)
--   pss      20 clones of a 512 MiB template at once: the sum of Pss over their VMMs
--   density  N clones of a 128 MiB template at once (--density N): created and
--            answering in how long, and their idle CPU (VMM + supervisor) per sandbox
-- Medians over -n runs (default 5). Network "user" (rootless).
--   build/smolvm-lua bench/templates.lua [-n RUNS] [--pss N] [--density N] [--skip-cold]
local smolvm = require "smolvm"
local core = require "smolvm.core"

local runs, pss_n, density_n, skip_cold = 5, 20, 0, false
do
  local i = 1
  while i <= #arg do
    local a = arg[i]
    if a == "-n" then runs = assert(math.tointeger(tonumber(arg[i + 1])), "-n RUNS"); i = i + 1
    elseif a == "--pss" then pss_n = assert(math.tointeger(tonumber(arg[i + 1])), "--pss N"); i = i + 1
    elseif a == "--density" then density_n = assert(math.tointeger(tonumber(arg[i + 1])), "--density N"); i = i + 1
    elseif a == "--skip-cold" then skip_cold = true
    else error("usage: templates.lua [-n RUNS] [--pss N] [--density N] [--skip-cold]") end
    i = i + 1
  end
end

local function now() return core.monotonic_ms() end
local function median(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  local n = #s
  if n == 0 then return 0 end
  return n % 2 == 1 and s[(n + 1) / 2] or (s[n / 2] + s[n / 2 + 1]) / 2
end
local function report(name, t, base)
  local m = median(t)
  local ratio = base and base > 0 and string.format("  %.2f x cold", m / base) or ""
  print(string.format("%-28s median %8.0f ms  (min %.0f, max %.0f, n=%d)%s", name, m,
    math.min(table.unpack(t)), math.max(table.unpack(t)), #t, ratio))
  return m
end
local function must(vm, cmd)
  local r = assert(vm:run(cmd, { timeout = 120 }))
  assert(r.exit_code == 0, cmd .. ": " .. r.stderr)
  return r.stdout
end
local function loadavg()
  local f = io.open("/proc/loadavg")
  local s = f and f:read("l") or "?"
  if f then f:close() end
  return s
end
local function rollup_kb(pid, key)
  local f = io.open("/proc/" .. pid .. "/smaps_rollup")
  if not f then return 0 end
  local s = f:read("a")
  f:close()
  return tonumber(s:match(key .. ":%s+(%d+)")) or 0
end
local function cpu_ticks(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return 0 end
  local s = f:read("a")
  f:close()
  local t = {}
  for w in s:match("%) (.*)"):gmatch("%S+") do t[#t + 1] = w end
  return tonumber(t[12]) + tonumber(t[13])
end

print("load average at start: " .. loadavg())

-- The template: a booted 256 MiB VM that ran a command.
local src = assert(smolvm.VM{ memory = 256, vcpus = 1, network = "user" })
assert(src:start{ timeout = 300 })
must(src, "true")
local t0 = now()
assert(src:snapshot("bench-256"))
print(string.format("snapshot of a running 256 MiB vm: %d ms", now() - t0))

local cold, clone, c_start, c_first, c_second = {}, {}, {}, {}, {}
for i = 1, runs do
  if not skip_cold then
    t0 = now()
    local vm = assert(smolvm.VM{ memory = 256, vcpus = 1, network = "user" })
    assert(vm:start{ timeout = 300 })
    must(vm, "true")
    cold[i] = now() - t0
    vm:close()
  end
  t0 = now()
  local c = assert(smolvm.VM{ template = "bench-256", network = "user" })
  assert(c:start{ timeout = 300 })
  local t1 = now()
  must(c, "true")
  local t2 = now()
  clone[i], c_start[i], c_first[i] = t2 - t0, t1 - t0, t2 - t1
  must(c, "true")
  c_second[i] = now() - t2
  c:close()
end
local base = not skip_cold and report("cold start -> command", cold) or nil
report("clone -> command", clone, base)
-- Where a clone's time goes: create + start (the VMM, the state, the identity), its
-- first command (under TCG the new VMM translates the guest's code again: its
-- translation cache is not part of the template), and a second one (warm).
report("  clone: create + start", c_start)
report("  clone: first command", c_first)
report("  clone: second command", c_second)

local pr, fk, sus = {}, {}, {}
for i = 1, runs do
  t0 = now()
  assert(src:pause())
  assert(src:resume())
  must(src, "true")
  pr[i] = now() - t0
end
report("pause -> resume -> command", pr)
for i = 1, math.max(1, runs // 2) do
  t0 = now()
  local forks = assert(src:fork{ count = 4 })
  for _, f in ipairs(forks) do must(f, "true") end
  fk[i] = now() - t0
  for _, f in ipairs(forks) do f:close() end
end
report("fork{count=4} -> 4 commands", fk)
for i = 1, runs do
  local c = assert(smolvm.VM{ template = "bench-256", network = "user" })
  assert(c:start{ timeout = 300 })
  assert(c:suspend())
  t0 = now()
  assert(c:start{ timeout = 300 })
  must(c, "true")
  sus[i] = now() - t0
  c:close()
end
report("suspended -> start -> command", sus, base)
-- A clone's RAM is its template's file mapped privately (shared pages), so its
-- suspend carries the RAM in the VMM's stream, loaded again at start; a booted VM's
-- RAM is the supervisor's memfd, saved and loaded as a sparse file.
local sus_b = {}
for i = 1, runs do
  assert(src:suspend())
  t0 = now()
  assert(src:start{ timeout = 300 })
  must(src, "true")
  sus_b[i] = now() - t0
end
report("  the same, a booted vm", sus_b, base)
src:close()
smolvm.template_delete("bench-256")

-- Memory: many clones of a 512 MiB template share its pages.
if pss_n > 0 then
  local big = assert(smolvm.VM{ memory = 512, vcpus = 1, network = "user" })
  assert(big:start{ timeout = 300 })
  must(big, "python3 -c 'x = bytearray(200 * 2**20); x[::4096] = b\"x\" * len(x[::4096])'")
  assert(big:snapshot("bench-512"))
  big:close()
  local clones, pss, rss = {}, 0, 0
  for i = 1, pss_n do
    clones[i] = assert(smolvm.VM{ template = "bench-512", network = "user" })
    assert(clones[i]:start_begin{ timeout = 600 })
  end
  for i = 1, pss_n do assert(clones[i]:start_finish()); must(clones[i], "true") end
  for i = 1, pss_n do
    local pid = clones[i]:info().pid
    pss, rss = pss + rollup_kb(pid, "Pss"), rss + rollup_kb(pid, "Rss")
  end
  print(string.format("%d clones of 512 MiB: sum Pss %.0f MiB = %.1f %% of %d x 512 MiB "
    .. "(sum Rss %.0f MiB)", pss_n, pss / 1024, 100 * pss / 1024 / (pss_n * 512), pss_n, rss / 1024))
  for _, c in ipairs(clones) do c:close() end
  smolvm.template_delete("bench-512")
end

-- Density: N clones of a 128 MiB template, all answering; then their idle CPU.
if density_n > 0 then
  local small = assert(smolvm.VM{ memory = 128, vcpus = 1, network = "user" })
  assert(small:start{ timeout = 300 })
  must(small, "true")
  assert(small:snapshot("bench-128"))
  small:close()
  local clones = {}
  t0 = now()
  for i = 1, density_n do
    clones[i] = assert(smolvm.VM{ template = "bench-128", network = "user" })
    assert(clones[i]:start_begin{ timeout = 900 })
  end
  local t_begun = now() - t0
  for i = 1, density_n do assert(clones[i]:start_finish()) end
  local t_ready = now() - t0
  -- Every clone answers a command, all at once (as a pool of sandboxes serving clients
  -- would be asked), not one after the other.
  local procs = {}
  for i = 1, density_n do procs[i] = assert(clones[i]:spawn("true")) end
  for i = 1, density_n do
    local r = assert(procs[i]:wait{ timeout = 300 })
    assert(r.exit_code == 0, "true in clone " .. i)
  end
  local burst = now() - t0
  print(string.format("%d clones of 128 MiB created and answering: %.1f s (all begun %.1f s, " ..
    "all ready %.1f s; load %s)", density_n, burst / 1000, t_begun / 1000, t_ready / 1000,
    loadavg()))
  os.execute("sleep 5") -- let the first commands' work settle
  local pids = {}
  for _, c in ipairs(clones) do
    local info = c:info()
    pids[#pids + 1] = info.pid
    if info.supervisor_pid then pids[#pids + 1] = info.supervisor_pid end
  end
  local before = 0
  for _, p in ipairs(pids) do before = before + cpu_ticks(p) end
  local secs = 20
  os.execute("sleep " .. secs)
  local after = 0
  for _, p in ipairs(pids) do after = after + cpu_ticks(p) end
  local hz = 100
  local per = (after - before) / hz / secs / density_n * 100
  print(string.format("idle CPU over %d s: %.2f %% of a core per sandbox (%.2f cores in all)",
    secs, per, (after - before) / hz / secs))
  for _, c in ipairs(clones) do c:close() end
  smolvm.template_delete("bench-128")
end
print("load average at end: " .. loadavg())
