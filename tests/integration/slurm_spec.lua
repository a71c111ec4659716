-- SPDX-License-Identifier: MIT
-- `smolvm-lua --slurm` on a real Slurm cluster of two nodes, made by slurm-cluster.sh
-- (which runs this spec inside the controller's namespace and removes everything
-- afterwards). Each recipe also runs locally, and the two runs must agree: summary
-- lines, exit status, JSON status.
local h = require "helpers"
local LUA, q = h.LUA, h.quote
local TMP = assert(os.getenv("SMOLVM_SLURM_TMP"), "run through slurm-cluster.sh")
local NODES = {}
for name, ns in (os.getenv("SMOLVM_SLURM_NODES") or ""):gmatch("(%S+)=(%S+)") do NODES[name] = ns end
local json_decode = require("smolvm.core").json_decode

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

-- Run smolvm-lua ARGS; stdout, stderr, exit status.
local function smolvm_lua(args, env)
  local base = os.tmpname()
  local p = assert(io.popen((env or "") .. " " .. q(LUA) .. " " .. args .. " >" .. base .. ".out 2>"
    .. base .. ".err </dev/null; echo $?"))
  local status = tonumber(p:read("*a"):match("(%d+)%s*$"))
  p:close()
  local out, err = h.readfile(base .. ".out") or "", h.readfile(base .. ".err") or ""
  os.remove(base) os.remove(base .. ".out") os.remove(base .. ".err")
  return out, err, status
end

local function local_run(file)
  local state = TMP .. "/local-state"
  return smolvm_lua("--json " .. q(file), "SMOLVM_STATE_DIR=" .. q(state))
end

-- The summary a user reads: the per-sandbox lines and the verdict, without timings
-- and without the notes a cluster run adds (reruns).
local function summary(err)
  local lines = {}
  local text = err:match("\n\n(  .*)$") or ""
  for l in text:gmatch("[^\n]+") do
    l = l:gsub("%s*%(reran [^)]*%)", ""):gsub("%s*%([%d.ms]+%)$", "")
    lines[#lines + 1] = l
  end
  return table.concat(lines, "\n")
end

local function jobs_known()
  local out = h.sh("scontrol show job -o 2>/dev/null | grep -c '^JobId='")
  return tonumber(out:match("%d+")) or 0
end

local function queued()
  return (h.sh("squeue -h -o '%i %T %N'"))
end

local function no_vms_left()
  local out = h.sh("pgrep -af " .. q("qemu-syste[m].*" .. TMP) .. " || true")
  return out == "", out
end

local R4 = write(TMP .. "/four.lua", [[
for _, n in ipairs({ "a", "b", "c", "d" }) do
  sandbox(n) {
    network = "user", memory = 256, vcpus = 1,
    files = { ["/root/who"] = n },
    steps = { "cat /root/who", { run = "cat /root/who; echo; uname -s",
                                 expect = { stdout = n .. "\nLinux" } } },
  }
end
]])

local FAIL = write(TMP .. "/fail.lua", [[
sandbox "good" { network = "user", memory = 256, vcpus = 1, steps = { "true" } }
sandbox "bad" {
  network = "user", memory = 256, vcpus = 1,
  steps = { "echo first", { run = "echo nope", expect = { stdout = "yes" } }, "echo never" },
}
]])

describe("smolvm-lua --slurm", function()
  it("runs 4 sandboxes across both nodes, as a local run does", function()
    local lout, lerr, lstatus = local_run(R4)
    assert.are.equal(0, lstatus, lerr)
    local out, err, status = smolvm_lua("--slurm --json " .. q(R4))
    assert.are.equal(0, status, err)
    assert.are.equal(summary(lerr), summary(err))
    assert.truthy(err:find("recipe ok: 4 sandboxes, every step met", 1, true), err)
    assert.truthy(err:find("[slurm] 0 pending, 0 running, 4 done", 1, true), err)
    local r = assert(json_decode(out), out)
    local l = assert(json_decode(lout), lout)
    assert.are.equal(l.status, r.status)
    assert.is_true(r.ok)
    local nodes = {}
    for i, sb in ipairs(r.sandboxes) do
      assert.are.equal(l.sandboxes[i].name, sb.name)
      assert.is_true(sb.ok, sb.name)
      assert.are.equal(2, #sb.steps)
      assert.are.equal(sb.name .. "\nLinux\n", sb.steps[2].stdout)
      assert.truthy(NODES[sb.node], "unknown node " .. tostring(sb.node))
      assert.truthy(tostring(sb.job_id):match("^%d+_%d$"), tostring(sb.job_id))
      assert.is_false(sb.reran)
      nodes[sb.node] = true
    end
    assert.truthy(nodes.node1 and nodes.node2, "both nodes used: " .. out)
    assert.are.equal("", queued())
    assert.truthy(no_vms_left())
  end)

  it("exits 1 for a failing step, with the local run's summary", function()
    local _, lerr, lstatus = local_run(FAIL)
    assert.are.equal(1, lstatus, lerr)
    local out, err, status = smolvm_lua("--slurm --json " .. q(FAIL))
    assert.are.equal(1, status, err)
    assert.are.equal(summary(lerr), summary(err))
    assert.truthy(err:find('stdout does not contain "yes"', 1, true), err)
    assert.truthy(err:find("recipe failed: 1 of 2 sandboxes failed", 1, true), err)
    local r = assert(json_decode(out), out)
    assert.are.equal(1, r.status)
    assert.is_true(r.sandboxes[1].ok)
    assert.is_false(r.sandboxes[2].ok)
    assert.are.equal("nope\n", r.sandboxes[2].steps[2].stdout)
    assert.are.equal("", queued())
  end)

  it("refuses an unknown partition clearly and leaves nothing queued", function()
    local _, err, status = smolvm_lua("--slurm --partition nosuch " .. q(R4))
    assert.are.equal(3, status, err)
    assert.truthy(err:find("invalid partition", 1, true), err)
    assert.truthy(err:find("nosuch", 1, true), err)
    assert.truthy(err:find("sinfo -s", 1, true), err)
    assert.truthy(err:find("nothing is left queued", 1, true), err)
    assert.are.equal("", queued())
  end)

  it("exits 2 for an invalid recipe before submitting anything", function()
    local bad = write(TMP .. "/bad.lua", 'sandbox "x" { memory = "lots", steps = { "true" } }\n'
      .. 'sandbox "y" { steps = { { upload = { from = "/etc/hostname", to = "/tmp/h" } } } }\n')
    local before = jobs_known()
    local _, err, status = smolvm_lua("--slurm " .. q(bad))
    assert.are.equal(2, status, err)
    assert.truthy(err:find('sandbox "x": memory: expected integer 128..16384, got string "lots"', 1, true), err)
    assert.truthy(err:find('sandbox "y": steps[1].upload: host files do not travel', 1, true), err)
    assert.are.equal(before, jobs_known())
    assert.are.equal("", queued())
  end)

  it("cancels its jobs on Ctrl-C, and the nodes delete their VMs", function()
    local long = write(TMP .. "/long.lua", [[
for _, n in ipairs({ "l1", "l2", "l3", "l4" }) do
  sandbox(n) { network = "user", memory = 256, vcpus = 1, steps = { "sleep 120" } }
end
]])
    local base = TMP .. "/int"
    local p = assert(io.popen("sh -c " .. q(q(LUA) .. " --slurm " .. q(long) .. " >" .. base
      .. ".out 2>" .. base .. ".err & echo $!")))
    local pid = p:read("*l")
    p:close()
    -- Ctrl-C once every sandbox is up and in its step, as the nodes' state says.
    local function running()
      local n = 0
      for node in pairs(NODES) do
        local out = h.sh("sqlite3 " .. q(TMP .. "/state-" .. node .. "/smolvm.db")
          .. " \"SELECT count(*) FROM vms WHERE status = 'running'\" 2>/dev/null")
        n = n + (tonumber(out:match("%d+")) or 0)
      end
      return n == 4
    end
    assert.truthy(h.wait_for(running, 180), queued())
    h.sh("kill -INT " .. pid)
    assert.truthy(h.wait_for(function() return h.sh("kill -0 " .. pid .. " 2>&1") ~= "" end, 60))
    local err = h.readfile(base .. ".err")
    assert.truthy(err:find("interrupted, cancelling the Slurm jobs", 1, true), err)
    assert.truthy(err:find("recipe interrupted", 1, true), err)
    assert.truthy(h.wait_for(function() return queued() == "" end, 10), queued())
    assert.truthy(h.wait_for(no_vms_left, 40), select(2, no_vms_left()))
  end)

  it("survives a node failure: Slurm requeues its jobs on the other node", function()
    local slow = write(TMP .. "/slow.lua", [[
for _, n in ipairs({ "s1", "s2", "s3", "s4" }) do
  sandbox(n) { network = "user", memory = 256, vcpus = 1,
               steps = { "sleep 15", { run = "echo done " .. n, expect = { stdout = "done" } } } }
end
]])
    local base = TMP .. "/kill"
    h.sh("sh -c " .. q(q(LUA) .. " --slurm --json " .. q(slow) .. " >" .. base .. ".out 2>"
      .. base .. ".err; echo $? >" .. base .. ".rc") .. " </dev/null >/dev/null 2>&1 &")
    -- Once node1 runs a job, kill the node as a failure would: its slurmd and every
    -- process of the jobs there (smolvm-lua, the VMMs), all at once.
    assert.truthy(h.wait_for(function()
      return queued():find("RUNNING node1", 1, true) and h.readfile(base .. ".err")
        :find("running on node1", 1, true)
    end, 90), queued())
    h.sh("sleep 5")
    h.sh("ip netns pids " .. q(NODES.node1) .. " | xargs -r kill -9")
    assert.truthy(h.wait_for(function() return h.readfile(base .. ".rc") end, 400),
      h.readfile(base .. ".err"))
    local err = h.readfile(base .. ".err")
    assert.are.equal("0", (h.readfile(base .. ".rc"):gsub("%s+", "")), err)
    assert.truthy(err:find("recipe ok: 4 sandboxes, every step met", 1, true), err)
    assert.truthy(err:find("requeued by Slurm", 1, true), err)
    local r = assert(json_decode(h.readfile(base .. ".out")))
    local reran = 0
    for _, sb in ipairs(r.sandboxes) do
      assert.is_true(sb.ok, sb.name)
      if sb.reran then
        reran = reran + 1
        assert.are.equal("node2", sb.node)
        assert.truthy(sb.restarts >= 1)
      end
    end
    assert.truthy(reran >= 1, "no sandbox reran: " .. err)
    assert.truthy(err:find("reran on node2", 1, true), err)
    assert.are.equal("", queued())
  end)
end)
