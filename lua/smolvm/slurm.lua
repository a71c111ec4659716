-- SPDX-License-Identifier: MIT
--- smolvm.slurm: `smolvm-lua --slurm FILE`, a recipe's sandboxes as Slurm jobs.
--
-- The controller (this module, on the submit host) validates the recipe locally
-- (recipe.lua already did; validate() adds what cannot travel to a node), then
-- submits one job array per resource shape: one array task per sandbox, requesting
-- the sandbox's vcpus and its memory plus the VMM's overhead, requeueable. Each task
-- is a shell script carrying the recipe text itself (base64), so no shared
-- filesystem is assumed: on its node it decodes the recipe and runs
-- `smolvm-lua --json --only NAME` with that node's own smolvm state. The task hands
-- its JSON result back through Slurm: the controller attaches a step to the running
-- job (`srun --jobid=J --overlap`) that reads the result from a FIFO in the job's
-- directory on the node, so both sides wait on an open(2), not on a timer.
--
-- The controller waits within --wait seconds, asking slurmctld for the tasks' states
-- (Slurm has no event a client can wait on: sbatch --wait and srun ask too) and
-- shows progress, replays each sandbox's step lines when its result arrives and
-- prints the summary, JSON and exit status of a local run. A node that fails is
-- Slurm's to handle: the task is requeued and runs again elsewhere; its sandbox then
-- says it reran. Ctrl-C (or SIGTERM) cancels every job (scancel).
--
-- Pure Lua for 5.1/LuaJIT and 5.4; the Slurm commands (sbatch, scontrol, srun,
-- scancel) and sh, base64, mkfifo and timeout run as child processes.

local schema = require "smolvm.schema"
local sys = require "smolvm.sys"

local M = {}

--- MiB added to each job's memory request for the VMM itself. Measured for QEMU 7.2
-- under TCG (bench/vmm-overhead.lua: VmHWM of qemu-system-x86_64 minus the guest's
-- RAM once the guest filled it): 111-129 MiB for 256 and 512 MiB guests, most of it
-- TCG's translation cache; 160 leaves a margin (docs/cluster.md). KVM needs less:
-- set SMOLVM_SLURM_OVERHEAD_MIB on such clusters.
M.VMM_OVERHEAD_MIB = tonumber(os.getenv("SMOLVM_SLURM_OVERHEAD_MIB") or "") or 160
M.DEFAULT_WAIT = 3600  -- seconds the controller waits for all jobs (--wait)
M.POLL_INTERVAL = 2    -- seconds between two looks at the jobs' states
M.HANDOFF_WAIT = 300   -- seconds a finished job waits for the controller to fetch
M.MAX_RECIPE = 1024 * 1024 -- bytes: the recipe travels inside the job script
M.CANCEL_WAIT = 30     -- seconds to wait for cancelled jobs to leave the queue
M.MAX_FETCHES = 20     -- result steps tried per sandbox (each run of its job needs one)
--- A directory on every node's own disk for the jobs' logs and scratch (their recipe
-- and result): NODE_DIR/smolvm-slurm-JOBID(.log). The controller's
-- SMOLVM_SLURM_DIR, else /tmp; it must exist on the nodes.
M.NODE_DIR = os.getenv("SMOLVM_SLURM_DIR") or "/tmp"

local q = sys.shell_quote

------------------------------------------------------------------------ checks

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  return s
end

--- Errors for what a cluster run cannot do (the list is empty when all is well).
-- Host files (upload/download), host checks and kept sandboxes stay on the nodes.
-- Templates: each node makes the ones its sandbox is made from (its job runs the
-- recipe with --only); so a template must be declared by the recipe, and used by one
-- sandbox only (two jobs on one node would make it at once).
function M.validate(sandboxes, opts, checks, templates)
  local errs = {}
  local function add(s) errs[#errs + 1] = s end
  if not opts.file then
    add("--slurm: the recipe must be a file (its text travels with each job), not stdin")
  else
    local text, err = read_file(opts.file)
    if not text then
      add("--slurm: cannot read " .. schema.quote(opts.file) .. ": " .. tostring(err))
    elseif #text > M.MAX_RECIPE then
      add("--slurm: the recipe is " .. #text .. " bytes; at most " .. M.MAX_RECIPE
        .. " travel inside a job script")
    end
  end
  if opts.keep then
    add("--keep: a sandbox of a Slurm job ends with its job; --keep and --slurm do not go together")
  end
  if opts.wait ~= nil then
    local w = tonumber(opts.wait)
    if not w or w <= 0 or w ~= w then
      add("--wait: expected seconds > 0, got " .. schema.quote(tostring(opts.wait)))
    end
  end
  for _, sb in ipairs(sandboxes) do
    local at = schema.sandbox_prefix(sb.name)
    if sb.keep then
      add(at .. "keep: a sandbox of a Slurm job ends with its job (drop keep, or run it without --slurm)")
    end
    for i, step in ipairs(sb.steps) do
      if step.kind == "upload" or step.kind == "download" then
        add(at .. "steps[" .. i .. "]." .. step.kind .. ": host files do not travel with a Slurm"
          .. " job (no shared filesystem is assumed); put the content in files = { ... } or a"
          .. " write step")
      end
    end
  end
  for _, c in ipairs(checks or {}) do
    add("host_check " .. schema.quote(c.label) .. ": host checks need every VM on this host;"
      .. " they do not run with --slurm")
  end
  local declared, users = {}, {}
  for _, t in ipairs(templates or {}) do declared[t.name] = t end
  for _, sb in ipairs(sandboxes) do
    local name = sb.vm.template
    if name and not declared[name] then
      add(schema.sandbox_prefix(sb.name) .. "template: " .. schema.quote(name) .. " is not declared"
        .. " in the recipe; under --slurm each node makes the templates its sandbox needs, from"
        .. " a template block (add template " .. schema.quote(name) .. " { ... })")
    elseif name then
      users[name] = users[name] or {}
      table.insert(users[name], sb.name)
    end
  end
  for _, t in ipairs(templates or {}) do
    local u = users[t.name]
    if u and #u > 1 then
      add("template " .. schema.quote(t.name) .. ": used by sandboxes " .. table.concat(u, ", ")
        .. "; under --slurm each node makes its own templates, and two jobs on one node would"
        .. " make it at once: give each sandbox its own template block, or run without --slurm")
    end
  end
  return errs
end

--- cpus, MiB that a sandbox's job requests.
function M.resources(sb)
  local vm = sb.clone_of and sb.clone_of.vm or sb.vm -- a clone: its template's machine
  return vm.vcpus, vm.memory + M.VMM_OVERHEAD_MIB
end

-- Sandboxes grouped by resource shape, in recipe order: { { cpus=, mem=, sbs={...} } }
local function groups_of(sandboxes)
  local list, by = {}, {}
  for _, sb in ipairs(sandboxes) do
    local cpus, mem = M.resources(sb)
    local key = cpus .. "x" .. mem
    if not by[key] then
      by[key] = { cpus = cpus, mem = mem, sbs = {} }
      list[#list + 1] = by[key]
    end
    table.insert(by[key].sbs, sb)
  end
  return list
end

local function names_of(sbs)
  local n = {}
  for i, sb in ipairs(sbs) do n[i] = sb.name end
  return table.concat(n, " ")
end

--- --check --slurm: what would be submitted.
function M.print_plan(sandboxes, opts)
  for _, g in ipairs(groups_of(sandboxes)) do
    io.stdout:write(string.format("  slurm: 1 job array of %d (%s): %d cpu, %d MiB each (%d + %d"
      .. " VMM overhead)%s\n", #g.sbs, names_of(g.sbs), g.cpus, g.mem, g.mem - M.VMM_OVERHEAD_MIB,
      M.VMM_OVERHEAD_MIB, opts.partition and (", partition " .. opts.partition) or ""))
  end
  io.stdout:flush()
end

------------------------------------------------------------------------ processes

-- Run a shell command; its stdout, stderr (from a file) and exit status.
local function sh(cmd, tmp)
  local errf = tmp .. "/cmd.err"
  local p = assert(io.popen(cmd .. " 2>" .. q(errf) .. "; echo \"__rc=$?\""))
  local out = p:read("*a") or ""
  p:close()
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  out = out:gsub("__rc=%d+%s*$", "")
  return out, read_file(errf) or "", rc or 255
end

local function first_line(s)
  return (s:match("^%s*([^\n]*)") or ""):gsub("%s+$", "")
end

-- "sbatch: error: X\nsbatch: error: Y" -> "X; Y"
local function slurm_error(err)
  local parts = {}
  for l in err:gmatch("[^\n]+") do
    l = l:gsub("^%w+: error: ", ""):gsub("^%w+: ", "")
    if l ~= "" then parts[#parts + 1] = l end
  end
  return table.concat(parts, "; ")
end

local function base64_file(path, tmp)
  local out, err, rc = sh("base64 -w 76 " .. q(path), tmp)
  if rc ~= 0 then return nil, "base64: " .. first_line(err) end
  return out
end

------------------------------------------------------------------------ the job

-- NODE_DIR/smolvm-slurm-JOBID on the node: where a task keeps its recipe and result.
local function job_dir(jobid) return M.NODE_DIR .. "/smolvm-slurm-" .. jobid end

--- The batch script of one job array: the task id picks the sandbox. safe: the
-- recipe came with --safe, and is evaluated so on the nodes too.
function M.job_script(sbs, recipe_b64, exe, label, safe)
  local lines = {
    "#!/bin/sh",
    "# smolvm-lua --slurm: one sandbox of " .. label .. " per array task (generated; see",
    "# docs/cluster.md). The recipe travels below; the result goes back to the controller",
    "# through the FIFO result.fifo, which its srun step reads.",
    "set -u",
    'case "${SLURM_ARRAY_TASK_ID:-}" in',
  }
  for i, sb in ipairs(sbs) do
    lines[#lines + 1] = (i - 1) .. ") name=" .. q(sb.name) .. " ;;"
  end
  local handoff = M.HANDOFF_WAIT
  local rest = {
    '*) echo "smolvm job: no sandbox for array task \'${SLURM_ARRAY_TASK_ID:-}\'" >&2; exit 2 ;;',
    "esac",
    -- scancel and the time limit signal every process of the job; when this shell
    -- exits, Slurm kills what is left at once. So it stays until smolvm-lua has torn
    -- its VM down (a trap runs after the foreground command), then skips the hand-off.
    "terminated=",
    "trap 'terminated=1' TERM INT",
    "lua=${SMOLVM_SLURM_LUA:-" .. q(exe) .. "}",
    "dir=" .. q(job_dir("")) .. "$SLURM_JOB_ID",
    'rm -f "$dir/result.json"',
    'mkdir -p "$dir" || exit 1',
    "base64 -d >\"$dir/recipe.lua\" <<'SMOLVM_RECIPE'",
    (recipe_b64:gsub("\n$", "")),
    "SMOLVM_RECIPE",
    'echo "smolvm job $SLURM_JOB_ID: sandbox $name on ${SLURMD_NODENAME:-?},'
      .. ' restart ${SLURM_RESTART_COUNT:-0}, state ${SMOLVM_STATE_DIR:-default}" >&2',
    -- SIGTERM (scancel, the time limit) reaches smolvm-lua, which tears its VM down.
    '"$lua" --json ' .. (safe and "--safe " or "") .. '--only "$name" "$dir/recipe.lua" >"$dir/result.json"',
    "status=$?",
    'if [ -n "$terminated" ]; then',
    '  echo "smolvm job: signalled; smolvm-lua exited $status after its teardown" >&2',
    '  rm -rf "$dir"',
    "  exit $status",
    "fi",
    'if [ ! -s "$dir/result.json" ]; then',
    '  printf \'{"format":1,"status":%d,"ok":false,"sandboxes":[],"errors":["smolvm-lua'
      .. ' (%s) exited %d without a result"]}\\n\' "$status" "$lua" "$status" >"$dir/result.json"',
    "fi",
    '[ -p "$dir/result.fifo" ] || mkfifo "$dir/result.fifo" 2>/dev/null || [ -p "$dir/result.fifo" ]',
    "if timeout " .. handoff .. ' sh -c \'cat "$1" >"$2"\' sh "$dir/result.json" "$dir/result.fifo"; then',
    '  rm -rf "$dir"',
    "else",
    '  echo "smolvm job: no controller took the result within ' .. handoff
      .. ' s; it stays in $dir/result.json" >&2',
    "fi",
    "exit $status",
  }
  for _, l in ipairs(rest) do lines[#lines + 1] = l end
  return table.concat(lines, "\n") .. "\n"
end

-- The srun step that takes a task's result: it makes the FIFO if the task has not yet,
-- and blocks in cat until the task writes its JSON into it.
local function fetch_command(jobid)
  local dir = q(job_dir(jobid))
  return "srun --jobid=" .. jobid .. " --overlap --nodes=1 --ntasks=1 --mem=0 --quiet"
    .. " --job-name=smolvm-result sh -c " .. q('mkdir -p ' .. dir .. ' && { [ -p ' .. dir
    .. '/result.fifo ] || mkfifo ' .. dir .. '/result.fifo 2>/dev/null || [ -p ' .. dir
    .. '/result.fifo ]; } && exec cat ' .. dir .. '/result.fifo')
end

------------------------------------------------------------------------ controller

local TERMINAL = {
  COMPLETED = true, FAILED = true, CANCELLED = true, TIMEOUT = true, OUT_OF_MEMORY = true,
  BOOT_FAIL = true, DEADLINE = true, PREEMPTED = true, SPECIAL_EXIT = true,
  -- NODE_FAIL is terminal only when Slurm did not requeue the job
}
local PENDING = { PENDING = true, REQUEUED = true, REQUEUE_FED = true, REQUEUE_HOLD = true,
                  RESIZING = true, SUSPENDED = true, CONFIGURING = true }

-- "0,2-3%4" -> { 0, 2, 3 }
local function task_ids(spec)
  local ids = {}
  spec = spec:gsub("%%%d+$", "")
  for part in spec:gmatch("[^,]+") do
    local a, b = part:match("^(%d+)%-(%d+)$")
    if a then
      for i = tonumber(a), tonumber(b) do ids[#ids + 1] = i end
    elseif part:match("^%d+$") then
      ids[#ids + 1] = tonumber(part)
    end
  end
  return ids
end

-- scontrol show job -o ARRAY: { [task] = { jobid=, state=, reason=, node=, restarts=, exit= } }
local function job_states(array_id, tmp)
  local out, err, rc = sh("scontrol show job -o " .. q(array_id), tmp)
  if rc ~= 0 then return nil, slurm_error(err) end
  local tasks = {}
  for line in out:gmatch("[^\n]+") do
    local f = {}
    for k, v in line:gmatch("(%S+)=(%S*)") do f[k] = v end
    if f.ArrayJobId == tostring(array_id) and f.ArrayTaskId then
      local node = f.BatchHost or f.NodeList
      if node == "(null)" or node == "" then node = nil end
      for _, t in ipairs(task_ids(f.ArrayTaskId)) do
        tasks[t] = { jobid = f.JobId, state = f.JobState, reason = f.Reason, node = node,
                     restarts = tonumber(f.Restarts) or 0, exit = f.ExitCode }
      end
    end
  end
  return tasks
end

local Ctl = {}
Ctl.__index = Ctl

function Ctl:msg(s)
  self.out:done(s)
end

-- Submit one array per resource shape; nothing stays queued when one fails.
function Ctl:submit(sandboxes)
  local label = self.opts.file:match("([^/]+)$") or "recipe"
  local b64, err = base64_file(self.opts.file, self.tmp)
  if not b64 then return nil, err end
  local exe = self.opts.exe or "smolvm-lua"
  for gi, g in ipairs(groups_of(sandboxes)) do
    local script = self.tmp .. "/job-" .. gi .. ".sh"
    local f = assert(io.open(script, "w"))
    f:write(M.job_script(g.sbs, b64, exe, label, self.opts.safe))
    f:close()
    local args = { "env", "-u", "SMOLVM_STATE_DIR", "sbatch", "--parsable", "--requeue",
      "--array=0-" .. (#g.sbs - 1), "--job-name=smolvm-" .. label:gsub("%.lua$", ""),
      "--cpus-per-task=" .. g.cpus, "--mem=" .. g.mem .. "M", "--chdir=" .. M.NODE_DIR,
      "--output=" .. M.NODE_DIR .. "/smolvm-slurm-%A_%a.log" }
    if self.opts.partition then args[#args + 1] = "--partition=" .. self.opts.partition end
    if self.opts.account then args[#args + 1] = "--account=" .. self.opts.account end
    if self.opts.time then args[#args + 1] = "--time=" .. self.opts.time end
    args[#args + 1] = script
    local out, serr, rc = sh(sys.command_line(args), self.tmp)
    local id = out:match("^%s*(%d+)")
    if rc ~= 0 or not id then
      local why = slurm_error(serr)
      if why == "" then why = "sbatch exited " .. rc end
      local hint
      if why:lower():find("partition", 1, true) then
        hint = "'sinfo -s' lists the partitions"
      elseif why:lower():find("account", 1, true) then
        hint = "'sacctmgr show assoc user=$USER' lists your accounts"
      elseif why:lower():find("time limit", 1, true) then
        hint = "--time takes minutes, MM:SS, HH:MM:SS or D-HH"
      end
      return nil, "sbatch: " .. why .. (hint and (" (" .. hint .. ")") or "")
    end
    self.arrays[#self.arrays + 1] = id
    for ti, sb in ipairs(g.sbs) do
      local run = self.by_name[sb.name]
      run.array, run.task = id, ti - 1
      run.job_id = id .. "_" .. (ti - 1)
    end
    self:msg(string.format("[slurm] submitted job %s: %s (%d cpu, %d MiB each)%s", id,
      names_of(g.sbs), g.cpus, g.mem,
      self.opts.partition and (" to partition " .. self.opts.partition) or ""))
  end
  return true
end

function Ctl:cancel()
  if #self.arrays == 0 then return end
  sh("scancel " .. table.concat(self.arrays, " "), self.tmp)
  -- Wait (bounded) until none of them is still pending or running.
  local deadline = sys.now() + M.CANCEL_WAIT
  while sys.now() < deadline do
    local live = false
    for _, a in ipairs(self.arrays) do
      local tasks = job_states(a, self.tmp)
      for _, t in pairs(tasks or {}) do
        if not TERMINAL[t.state] and t.state ~= "NODE_FAIL" then live = true end
      end
    end
    if not live then return end
    sh("sleep 1", self.tmp)
  end
end

function Ctl:kill_fetchers()
  for _, run in ipairs(self.runs) do
    if run.fetch then
      sh("kill -KILL -" .. run.fetch.pid .. " 2>/dev/null", self.tmp) -- dash: no "--"
      run.fetch = nil
    end
  end
end

-- Start the result step of a running task, in a session of its own (so a Ctrl-C at
-- the terminal reaches the controller, which cancels, and not srun).
function Ctl:start_fetch(run, t)
  local base = self.tmp .. "/fetch-" .. run.sb.name .. "-" .. (run.fetches + 1)
  run.fetches = run.fetches + 1
  local cmd = "setsid sh -c " .. q(fetch_command(t.jobid) .. ' >"$1" 2>"$2"; echo $? >"$3"')
    .. " sh " .. q(base .. ".json") .. " " .. q(base .. ".err") .. " " .. q(base .. ".rc")
    .. " </dev/null >/dev/null 2>&1 & echo $!"
  local out = sh(cmd, self.tmp)
  run.fetch = { pid = tonumber(out:match("%d+")) or 0, base = base, restarts = t.restarts,
                node = t.node }
end

-- The fetch step ended: the task's result, or nil and why not.
function Ctl:finish_fetch(run)
  local f = run.fetch
  local rc = tonumber(read_file(f.base .. ".rc") or "")
  if not rc then return nil end -- still running
  run.fetch = nil
  local text = read_file(f.base .. ".json") or ""
  if rc ~= 0 or text == "" then
    return false, "srun: " .. (slurm_error(read_file(f.base .. ".err") or "") ~= ""
      and slurm_error(read_file(f.base .. ".err")) or ("exited " .. rc))
  end
  local core = require "smolvm.core"
  local r, err = core.json_decode(text)
  if type(r) ~= "table" then return false, "its result is not JSON: " .. tostring(err) end
  return r
end

local function to_results(steps)
  local res = {}
  for i, s in ipairs(type(steps) == "table" and steps or {}) do
    res[i] = { index = s.index, kind = s.kind, label = s.label, ok = s.ok == true,
               elapsed = tonumber(s.elapsed) or 0, exit_code = s.exit_code, stdout = s.stdout,
               stderr = s.stderr, error = s.error, pid = s.pid, log = s.log }
  end
  return res
end

-- A task's JSON result becomes the sandbox's run, as a local run would have it.
function Ctl:accept(run, r, t)
  local node = (t and t.node) or run.node or "?"
  run.node = node
  run.restarts = t and t.restarts or run.restarts or 0
  local sbr
  for _, s in ipairs(type(r.sandboxes) == "table" and r.sandboxes or {}) do
    if s.name == run.sb.name then sbr = s end
  end
  if sbr then
    run.results = to_results(sbr.steps)
    run.status = sbr.ok and "ok" or (sbr.status == "ok" and "failed" or (sbr.status or "failed"))
    run.error = sbr.error
    run.deleted = sbr.deleted
  else
    run.status = "failed"
    local why = type(r.errors) == "table" and r.errors[1] or nil
    if type(r.host) == "table" and r.host.error then
      why = "the host cannot run sandboxes: " .. tostring(r.host.error)
    end
    run.error = "on " .. node .. ": " .. tostring(why or ("status " .. tostring(r.status)))
  end
  run.job_status = tonumber(r.status)
  run.done = true
  if run.restarts > 0 then
    run.note = "reran on " .. node .. " after Slurm requeued it " .. run.restarts .. "x"
  end
  run.extra = { node = node, job_id = run.job_id, restarts = run.restarts,
                reran = run.restarts > 0 }
  for _, res in ipairs(run.results) do self.recipe.report_step(self.out, run, res) end
  self:msg("[" .. run.sb.name .. "] " .. (run.status == "ok" and self.out:paint("32", "ok")
    or self.out:paint("31", "FAILED")) .. " on " .. node .. " (job " .. run.job_id
    .. (run.restarts > 0 and (", reran " .. run.restarts .. "x") or "") .. ")"
    .. (run.status ~= "ok" and run.error and (": " .. run.error) or ""))
end

function Ctl:fail_run(run, why)
  run.status, run.error, run.done = "failed", why, true
  run.extra = { node = run.node, job_id = run.job_id, restarts = run.restarts or 0,
                reran = (run.restarts or 0) > 0 }
  self:msg("[" .. run.sb.name .. "] " .. self.out:paint("31", "FAILED") .. ": " .. why)
end

-- One look at every task: start fetch steps, take results, note reruns and ends.
function Ctl:poll()
  local counts = { pending = 0, running = 0, done = 0 }
  for _, a in ipairs(self.arrays) do
    local tasks, err = job_states(a, self.tmp)
    if not tasks then
      self.errors = (self.errors or 0) + 1
      if self.errors == 1 or self.errors % 15 == 0 then
        self:msg("[slurm] scontrol: " .. err .. " (retrying)")
      end
    end
    for _, run in ipairs(self.runs) do
      if run.array == a and not run.done then
        local t = tasks and tasks[run.task]
        if t then
          if t.restarts > (run.restarts or 0) then
            self:msg("[" .. run.sb.name .. "] requeued by Slurm (job " .. run.job_id .. ", restart "
              .. t.restarts .. (run.node and (", was on " .. run.node) or "") .. ")")
            run.restarts = t.restarts
          end
          if t.node and t.state == "RUNNING" and t.node ~= run.node then
            run.node = t.node
            self:msg("[" .. run.sb.name .. "] running on " .. t.node .. " (job " .. run.job_id .. ")")
          end
          run.last = t
        end
        if run.fetch then
          local r, why = self:finish_fetch(run)
          if r then
            self:accept(run, r, run.last)
          elseif r == false then
            run.fetch_error = why
          end
        end
        if not run.done and not run.fetch then
          if not t then
            if tasks then
              self:fail_run(run, "its Slurm job " .. run.job_id
                .. " is gone from the queue without a result")
            end
          elseif t.state == "RUNNING" then
            if run.fetches >= M.MAX_FETCHES then
              self:fail_run(run, "could not take its result from job " .. run.job_id
                .. " after " .. run.fetches .. " tries: " .. tostring(run.fetch_error))
            else
              self:start_fetch(run, t)
            end
          else
            -- NODE_FAIL is final only when Slurm does not requeue the job.
            run.node_fail = t.state == "NODE_FAIL" and (run.node_fail or 0) + 1 or 0
            if TERMINAL[t.state] or run.node_fail >= 3 then
              self:fail_run(run, "its Slurm job " .. run.job_id .. " ended " .. t.state
                .. " (exit " .. tostring(t.exit) .. ")" .. (t.node and (" on " .. t.node) or "")
                .. " without a result" .. (run.fetch_error and (": " .. run.fetch_error) or "")
                .. "; its log is " .. M.NODE_DIR .. "/smolvm-slurm-" .. run.job_id .. ".log on "
                .. (t.node or "its node"))
            end
          end
        end
      end
      if run.array == a then
        if run.done then counts.done = counts.done + 1
        elseif run.last and (run.last.state == "RUNNING" or run.last.state == "COMPLETING") then
          counts.running = counts.running + 1
        else counts.pending = counts.pending + 1 end
      end
    end
  end
  local line = string.format("[slurm] %d pending, %d running, %d done", counts.pending,
    counts.running, counts.done)
  if line ~= self.progress then
    self.progress = line
    self:msg(line)
  end
  return counts.done == #self.runs
end

function Ctl:wait()
  local deadline = sys.now() + self.wait_s
  while not self:poll() do
    if sys.now() >= deadline then
      for _, run in ipairs(self.runs) do
        if not run.done then
          self:fail_run(run, "no result within --wait " .. schema.num_str(self.wait_s) .. "s (job "
            .. run.job_id .. (run.last and (" " .. run.last.state .. ", reason "
            .. tostring(run.last.reason)) or "") .. "); its job was cancelled")
        end
      end
      return false
    end
    sh("sleep " .. M.POLL_INTERVAL, self.tmp)
  end
  return true
end

local function is_interrupt(err)
  return type(err) == "string" and err:find("interrupted", 1, true) ~= nil
end

--- Run validated sandboxes on the cluster. Returns the exit status of a local run.
function M.run(sandboxes, opts)
  local recipe = require "smolvm.recipe"
  local out = recipe.new_out(opts)
  local ctx = { opts = opts, runs = {}, t0 = sys.now() }
  local ctl = setmetatable({ opts = opts, out = out, recipe = recipe, runs = ctx.runs,
                             by_name = {}, arrays = {},
                             wait_s = tonumber(opts.wait) or M.DEFAULT_WAIT }, Ctl)
  for _, sb in ipairs(sandboxes) do
    local run = { sb = sb, status = "pending", next = 1, results = {}, fetches = 0, restarts = 0 }
    ctx.runs[#ctx.runs + 1] = run
    ctl.by_name[sb.name] = run
  end
  local p = assert(io.popen("mktemp -d /tmp/smolvm-slurmctl.XXXXXX"))
  ctl.tmp = (p:read("*l") or "")
  p:close()
  if ctl.tmp == "" then error("mktemp failed") end
  for _, tool in ipairs({ "sbatch", "scontrol", "srun", "scancel" }) do
    local _, _, rc = sh("command -v " .. tool, ctl.tmp)
    if rc ~= 0 then
      out:line("smolvm-lua: --slurm: no '" .. tool .. "' here (install slurm-client, and point"
        .. " SLURM_CONF at the cluster's slurm.conf)")
      if opts.json then recipe.print_json(recipe.json_result(ctx, recipe.EXIT_HOST)) end
      os.execute("rm -rf " .. q(ctl.tmp))
      return recipe.EXIT_HOST
    end
  end

  local status
  local ok, err = xpcall(function()
    local submitted, serr = ctl:submit(sandboxes)
    if not submitted then
      ctl:cancel()
      ctx.host_error = serr
      out:line("smolvm-lua: --slurm: " .. serr .. "; nothing is left queued")
      return recipe.EXIT_HOST
    end
    if not ctl:wait() then
      ctl:cancel()
      return recipe.EXIT_FAILED
    end
    local host_only, any_failed = true, false
    for _, run in ipairs(ctx.runs) do
      if run.status ~= "ok" then
        any_failed = true
        if run.job_status ~= recipe.EXIT_HOST then host_only = false end
      end
    end
    if not any_failed then return recipe.EXIT_OK end
    return host_only and recipe.EXIT_HOST or recipe.EXIT_FAILED
  end, function(e)
    if is_interrupt(e) then return e end
    return debug.traceback(tostring(e), 2)
  end)
  if ok then
    status = err
  else
    if is_interrupt(err) then
      status = err:find("TERM", 1, true) and recipe.EXIT_SIGTERM or recipe.EXIT_SIGINT
      out:done("smolvm-lua: interrupted, cancelling the Slurm jobs")
    else
      status = recipe.EXIT_FAILED
      out:done("smolvm-lua: internal error: " .. tostring(err))
    end
    pcall(ctl.cancel, ctl)
  end
  pcall(ctl.kill_fetchers, ctl)
  os.execute("rm -rf " .. q(ctl.tmp))
  for _, run in ipairs(ctx.runs) do
    if not run.done and (status == recipe.EXIT_SIGINT or status == recipe.EXIT_SIGTERM) then
      run.status, run.error = "failed", "cancelled"
      run.extra = { node = run.node, job_id = run.job_id, restarts = run.restarts, reran = false }
    end
  end
  pcall(recipe.summary, ctx, out, status)
  if opts.json then recipe.print_json(recipe.json_result(ctx, status)) end
  return status
end

M._task_ids, M._slurm_error = task_ids, slurm_error -- for the specs

return M
