-- SPDX-License-Identifier: MIT
-- smolvm.slurm without a cluster: what --slurm refuses before submitting, the job
-- script a node runs (with a stand-in smolvm-lua and the SLURM_* variables a node
-- sets), the result handed over through its FIFO, and --only in the interpreter.
local h = require "helpers"
local slurm = require "smolvm.slurm"
local recipe = require "smolvm.recipe"

local SMOLVM_LUA = os.getenv("SMOLVM_LUA")
  or ((os.getenv("SMOLVM_BUILD_DIR") or "../../build") .. "/smolvm-lua")

local function sandboxes(decls)
  local list = {}
  for i, d in ipairs(decls) do list[i] = { name = d[1], body = d[2], errors = {} } end
  return assert(recipe.validate(list))
end

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"rc=$?\""))
  local out = p:read("*a")
  p:close()
  return (out:gsub("rc=%d+%s*$", "")), tonumber(out:match("rc=(%d+)%s*$"))
end

describe("smolvm.slurm", function()
  local dir
  before_each(function() dir = h.mktemp_dir() end)
  after_each(function() h.rm_rf(dir) end)

  it("refuses what cannot travel to a node, each with its place", function()
    h.write(dir .. "/r.lua", "-- recipe\n")
    h.write(dir .. "/in.txt", "x")
    local sbs = sandboxes({
      { "a", { keep = true, steps = { { upload = { from = dir .. "/in.txt", to = "/in" } } } } },
      { "b", { steps = { "true", { download = { from = "/etc/os-release", to = dir .. "/o" } } } } },
    })
    local errs = slurm.validate(sbs, { file = dir .. "/r.lua", keep = true, wait = "soon" },
      { { label = "curl it" } })
    assert.same({
      "--keep: a sandbox of a Slurm job ends with its job; --keep and --slurm do not go together",
      "--wait: expected seconds > 0, got \"soon\"",
      'sandbox "a": keep: a sandbox of a Slurm job ends with its job (drop keep, or run it without --slurm)',
      'sandbox "a": steps[1].upload: host files do not travel with a Slurm job (no shared'
        .. " filesystem is assumed); put the content in files = { ... } or a write step",
      'sandbox "b": steps[2].download: host files do not travel with a Slurm job (no shared'
        .. " filesystem is assumed); put the content in files = { ... } or a write step",
      'host_check "curl it": host checks need every VM on this host; they do not run with --slurm',
    }, errs)
    assert.same({ "--slurm: the recipe must be a file (its text travels with each job), not stdin" },
      slurm.validate({}, {}, {}))
    assert.same({}, slurm.validate(sandboxes({ { "c", { steps = { "true" } } } }),
      { file = dir .. "/r.lua", wait = "90" }, {}))
  end)

  it("asks for the sandbox's vcpus and memory plus the VMM's overhead", function()
    local sb = sandboxes({ { "a", { vcpus = 3, memory = 700, steps = { "true" } } } })[1]
    local cpus, mem = slurm.resources(sb)
    assert.equal(3, cpus)
    assert.equal(700 + slurm.VMM_OVERHEAD_MIB, mem)
    assert.equal(160, slurm.VMM_OVERHEAD_MIB)
  end)

  it("reads array task lists as scontrol prints them", function()
    assert.same({ 0 }, slurm._task_ids("0"))
    assert.same({ 0, 2, 3, 4 }, slurm._task_ids("0,2-4"))
    assert.same({ 1, 2 }, slurm._task_ids("1-2%2"))
    assert.equal("invalid partition specified: x; Batch job submission failed: Invalid partition"
      .. " name specified", slurm._slurm_error("sbatch: error: invalid partition specified: x\n"
      .. "sbatch: error: Batch job submission failed: Invalid partition name specified\n"))
  end)

  it("writes a job script that runs its task's sandbox and hands the result over", function()
    local text = 'sandbox "one" { steps = { "true" } }\nsandbox "two" { steps = { "true" } }\n'
    h.write(dir .. "/recipe.lua", text)
    local b64 = sh("base64 -w 76 " .. h.quote(dir .. "/recipe.lua"))
    -- A stand-in smolvm-lua: records its arguments and the recipe it got, prints JSON.
    h.write(dir .. "/fake-lua", "#!/bin/sh\necho \"$@\" >" .. dir .. "/args\ncp \"$4\" " .. dir
      .. "/got.lua\necho '{\"format\":1,\"status\":1,\"sandboxes\":[{\"name\":\"'\"$3\"'\"}]}'\nexit 1\n")
    os.execute("chmod +x " .. h.quote(dir .. "/fake-lua"))
    local sbs = sandboxes({ { "one", { steps = { "true" } } }, { "two", { steps = { "true" } } } })
    local saved = slurm.NODE_DIR
    slurm.NODE_DIR = dir
    local script = slurm.job_script(sbs, b64, dir .. "/fake-lua", "r.lua")
    slurm.NODE_DIR = saved
    h.write(dir .. "/job.sh", script)
    -- The node: task 1 of job 42. The controller's side, as its srun step does: make
    -- the FIFO if the job has not, and read it.
    local d = h.quote(dir .. "/smolvm-slurm-42")
    local out, rc = sh("cd " .. h.quote(dir) .. " && mkdir -p " .. d .. " && mkfifo " .. d
      .. "/result.fifo && { (SLURM_JOB_ID=42 SLURM_ARRAY_TASK_ID=1 SLURMD_NODENAME=n7"
      .. " timeout 60 sh job.sh >job.out 2>job.err; echo $? >job.rc) & timeout 60 cat " .. d
      .. "/result.fifo; wait; }")
    assert.equal(0, rc, out)
    assert.equal('{"format":1,"status":1,"sandboxes":[{"name":"two"}]}\n', out)
    assert.equal("1\n", h.read(dir .. "/job.rc")) -- the sandbox's own status
    assert.equal("--json --only two " .. dir .. "/smolvm-slurm-42/recipe.lua\n", h.read(dir .. "/args"))
    assert.equal(text, h.read(dir .. "/got.lua"))
    assert.truthy(h.read(dir .. "/job.err"):find("sandbox two on n7, restart 0", 1, true))
    assert.is_false(h.exists(dir .. "/smolvm-slurm-42")) -- taken: the job cleans up
    -- A task id the script does not know fails clearly.
    out, rc = sh("cd " .. h.quote(dir) .. " && SLURM_JOB_ID=43 SLURM_ARRAY_TASK_ID=9 sh job.sh")
    assert.equal(2, rc)
    assert.truthy(out:find("no sandbox for array task '9'", 1, true), out)
  end)

  it("keeps the job alive while smolvm-lua tears down after scancel", function()
    -- The stand-in smolvm-lua says when it runs, and on SIGTERM takes a second to
    -- "tear down" before it exits 143, as the real one does.
    h.write(dir .. "/fake-lua", "#!/bin/sh\ntrap 'sleep 1; echo torn-down >" .. dir
      .. "/got; exit 143' TERM\necho >" .. dir .. "/ready\nsleep 30 & wait\n")
    os.execute("chmod +x " .. h.quote(dir .. "/fake-lua") .. "; mkfifo " .. h.quote(dir .. "/ready"))
    local sbs = sandboxes({ { "one", { steps = { "true" } } } })
    local saved = slurm.NODE_DIR
    slurm.NODE_DIR = dir
    h.write(dir .. "/job.sh", slurm.job_script(sbs, "", dir .. "/fake-lua", "r.lua"))
    slurm.NODE_DIR = saved
    -- As slurmstepd does at scancel: SIGTERM to every process of the job at once.
    local out, rc = sh("cd " .. h.quote(dir) .. " && t0=$(date +%s); SLURM_JOB_ID=44"
      .. " SLURM_ARRAY_TASK_ID=0 setsid sh job.sh 2>job.err & pid=$!; timeout 20 cat ready"
      .. " >/dev/null; kill -TERM -$pid; wait $pid; echo status=$? took=$(( $(date +%s) - t0 ))")
    assert.equal(0, rc, out)
    assert.truthy(out:find("status=143", 1, true), out)
    assert.truthy(tonumber(out:match("took=(%d+)")) < 10, out) -- no 300 s hand-off wait
    assert.equal("torn-down\n", h.read(dir .. "/got"))
    assert.truthy(h.read(dir .. "/job.err"):find("signalled; smolvm-lua exited 143", 1, true))
    assert.is_false(h.exists(dir .. "/smolvm-slurm-44"))
  end)

  it("says what it would submit under --check", function()
    h.write(dir .. "/r.lua", 'sandbox "a" { memory = 256, steps = { "true" } }\n'
      .. 'sandbox "b" { memory = 512, vcpus = 1, steps = { "true" } }\n'
      .. 'sandbox "c" { memory = 256, steps = { "true" } }\n')
    local out, rc = sh(h.quote(SMOLVM_LUA) .. " --slurm --check --partition kvm " .. h.quote(dir .. "/r.lua"))
    assert.equal(0, rc, out)
    assert.truthy(out:find("slurm: 1 job array of 2 (a c): 2 cpu, 416 MiB each (256 + 160 VMM overhead), partition kvm", 1, true), out)
    assert.truthy(out:find("slurm: 1 job array of 1 (b): 1 cpu, 672 MiB each", 1, true), out)
  end)
end)

describe("smolvm-lua --only", function()
  local dir
  before_each(function() dir = h.mktemp_dir() end)
  after_each(function() h.rm_rf(dir) end)

  it("checks the whole recipe and keeps the one sandbox", function()
    h.write(dir .. "/r.lua", 'sandbox "a" { steps = { "true" } }\nsandbox "b" { steps = { "true", "true" } }\n')
    local out, rc = sh(h.quote(SMOLVM_LUA) .. " --check --only b " .. h.quote(dir .. "/r.lua"))
    assert.equal(0, rc, out)
    assert.truthy(out:find("recipe ok: 1 sandbox, 2 steps", 1, true), out)
    out, rc = sh(h.quote(SMOLVM_LUA) .. " --check --only=zzz " .. h.quote(dir .. "/r.lua"))
    assert.equal(2, rc, out)
    assert.truthy(out:find("--only: no sandbox \"zzz\" in the recipe; it has a, b", 1, true), out)
    h.write(dir .. "/bad.lua", 'sandbox "a" { memory = 1 }\nsandbox "b" { steps = { "true" } }\n')
    out, rc = sh(h.quote(SMOLVM_LUA) .. " --check --only b " .. h.quote(dir .. "/bad.lua"))
    assert.equal(2, rc, out) -- the rest of the recipe is still checked
    assert.truthy(out:find('sandbox "a": memory', 1, true), out)
  end)
end)
