-- SPDX-License-Identifier: MIT
--- Recipes (format 1): declaration, validation and the runner.
--
-- smolvm-lua calls `begin{check=, json=, keep=}` before loading the user's file
-- (begin installs the global `sandbox`), then `os.exit(finish())` after it. The file
-- only declares; finish validates everything that was declared (schema.lua) and runs
-- it. Exit status: 0 every step met its expectation, 1 a step (or a sandbox) failed,
-- 2 the recipe is invalid, 3 the host cannot run sandboxes, 130/143 interrupted.
--
-- Side by side: the binding blocks, so one process cannot boot two VMs at once. The
-- runner creates every VM, boots them one after the other, writes their files, then
-- runs the sandboxes' steps interleaved round-robin, one step of each in turn, so no
-- sandbox waits for another to finish. Background steps (`background = true`) keep
-- running in their guest while the others go on, which is how servers overlap.
--
-- VM ids: a sandbox's VM id is its name (or its `id` field), so a sandbox kept with
-- `keep = true` / `--keep` is found afterwards as `smolvm exec web -- sh`. A VM with
-- that id already present (kept from an earlier run) stops the recipe before
-- anything is created.

local schema = require "smolvm.schema"
local json = require "smolvm.json"
local sys = require "smolvm.sys"

local M = {}

M.EXIT_OK, M.EXIT_FAILED, M.EXIT_INVALID, M.EXIT_HOST = 0, 1, 2, 3
M.EXIT_SIGINT, M.EXIT_SIGTERM = 130, 143
M.BOOT_TIMEOUT = tonumber(os.getenv("SMOLVM_BOOT_TIMEOUT") or "") or 180
M.STOP_TIMEOUT = 5

local state -- the recipe being declared: { opts, declared = { ... }, images = { ... } }

local function new_state(opts)
  return { opts = opts or {}, declared = {}, checks = {}, images = {} }
end

------------------------------------------------------------------------ declaring

local function caller_info(level)
  local info = debug.getinfo(level + 1, "Sl") or {}
  local src = info.source or "?"
  local file = src:sub(1, 1) == "@" and src:sub(2) or nil
  return info.currentline, file
end

-- A declaration function `KIND "name" { ... }` that records into state[key].
-- Mistakes in the call itself are recorded with their line and reported by finish
-- with every other error (exit status 2), so a recipe shows all its mistakes at once.
local function declarer(kind, key)
  local form = kind .. ' "name" { ... }'
  return function(name, ...)
    state = state or new_state()
    local line, file = caller_info(2)
    local d = { name = name, line = line, source = file, errors = {} }
    local at = line and ("line " .. line .. ": ") or ""
    local list = state[key]
    list[#list + 1] = d
    if type(name) == "table" and select("#", ...) == 0 then
      d.name = nil
      d.body = name
      d.errors[#d.errors + 1] = "the name is missing: write " .. form
      return function() end
    end
    if select("#", ...) > 0 then
      d.errors[#d.errors + 1] = at .. kind .. " takes one name: write " .. form
    end
    local called = false
    return function(body, ...)
      local bline = caller_info(2) or line
      local bat = bline and ("line " .. bline .. ": ") or ""
      if called then
        d.errors[#d.errors + 1] = bat .. "the body was given twice"
        return function() end
      end
      called = true
      if type(body) ~= "table" or select("#", ...) > 0 then
        d.errors[#d.errors + 1] = bat .. "expected a table after " .. kind .. " "
          .. schema.quote(tostring(name)) .. " (" .. form .. "), got " .. schema.describe(body)
        return function() end
      end
      d.body = body
      return nil
    end
  end
end

--- The global `sandbox`: `sandbox "name" { ...options, steps... }`.
M.sandbox = declarer("sandbox", "declared")

--- The global `image`: `image "name" { packages = { ... } }`, a guest image built
-- (once per run, cached by its definition) before the sandboxes that use it.
M.image = declarer("image", "images")

--- Register a host-side check: `fn(vms)` runs after every sandbox met all its steps,
-- before teardown (forwards are still up), with `vms[name] = vm`. It returns true,
-- or false/nil and a message (the recipe then exits 1). Not run under --check.
function M.host_check(label, fn)
  state = state or new_state()
  if type(label) ~= "string" or type(fn) ~= "function" then
    error("host_check: expected (label string, function)", 2)
  end
  state.checks[#state.checks + 1] = { label = label, fn = fn }
end

--- Start a recipe: remember the flags and install the globals `sandbox` and `image`.
-- @param opts { check = bool, json = bool, keep = bool, only = name, slurm = bool,
--   partition =, account =, time =, wait = (strings, for --slurm), file = the
--   recipe's path, exe = the smolvm-lua binary }
function M.begin(opts)
  state = new_state(opts)
  _G.sandbox = M.sandbox
  _G.image = M.image
end

------------------------------------------------------------------------ helpers

local now = sys.now
M.now = now
local shell_quote = sys.shell_quote
M.shell_quote = shell_quote

local function dirname(p)
  return p and p:match("^(.*)/[^/]*$") or "."
end

local function host_path(sb, p)
  if p:sub(1, 1) == "/" then return p end
  local base = dirname(sb.source)
  if base == "." or base == "" then return p end
  return base .. "/" .. p
end

local function file_exists(p)
  local f = io.open(p, "rb")
  if f then f:close() return true end
  return false
end

local function one_line(s, max)
  s = (s:gsub("%s*\n.*", " ..."))
  if #s > max then s = s:sub(1, max - 3) .. "..." end
  return s
end

local function fmt_secs(t)
  if t < 10 then return string.format("%.2fs", t) end
  if t < 120 then return string.format("%.1fs", t) end
  return string.format("%dm%02ds", math.floor(t / 60), math.floor(t % 60))
end

local function step_label(step)
  if step.kind == "run" then
    return (step.background and "& " or "") .. one_line(step.run, 60)
  elseif step.kind == "upload" then
    return "upload " .. step.from .. " -> " .. step.to
  elseif step.kind == "download" then
    return "download " .. step.from .. " -> " .. step.to
  else
    return "write " .. step.path
  end
end
M.step_label = step_label

local function is_interrupt(err)
  return type(err) == "string" and err:find("interrupted", 1, true) ~= nil
end

local function interrupt_status(err)
  if type(err) == "string" and err:find("TERM", 1, true) then return M.EXIT_SIGTERM end
  return M.EXIT_SIGINT
end

------------------------------------------------------------------------ checking

-- Checks the schema cannot make: host files to upload must exist (or be produced
-- by an earlier download in the recipe).
local function check_host_files(sandboxes, errs)
  local produced = {}
  for _, sb in ipairs(sandboxes) do
    for i, step in ipairs(sb.steps) do
      if step.kind == "download" then
        produced[host_path(sb, step.to)] = true
      elseif step.kind == "upload" then
        local p = host_path(sb, step.from)
        if not produced[p] and not file_exists(p) then
          errs[#errs + 1] = schema.sandbox_prefix(sb.name) .. "steps[" .. i
            .. "].upload.from: no such host file " .. schema.quote(step.from)
            .. (p ~= step.from and (" (looked for " .. schema.quote(p) .. ")") or "")
        end
      end
    end
  end
end

--- Validate what was declared (no VM is touched).
-- @return normalized sandboxes, or nil, the list of errors and the sandboxes that
--   are valid on their own (for checks that add to the list)
function M.validate(declared)
  local errs = {}
  for _, d in ipairs(declared) do
    if d.body == nil and #d.errors == 0 then
      d.errors[#d.errors + 1] = (d.line and ("line " .. d.line .. ": ") or "")
        .. "declared without a body: write sandbox " .. schema.quote(tostring(d.name)) .. " { ... }"
    end
  end
  local sandboxes, verrs = schema.validate_recipe(declared)
  if not sandboxes then
    -- Still check host files of the sandboxes that are otherwise valid, so every
    -- mistake shows at once.
    local partial = {}
    for _, d in ipairs(declared) do
      local sb = d.body ~= nil and schema.validate_sandbox(d.body)
      if sb then
        sb.name, sb.source = d.name, d.source
        partial[#partial + 1] = sb
      end
    end
    check_host_files(partial, verrs)
    return nil, verrs, partial
  end
  check_host_files(sandboxes, errs)
  if #errs > 0 then return nil, errs end
  return sandboxes
end

------------------------------------------------------------------------ output

local Out = {}
Out.__index = Out

local function new_out(opts)
  local o = setmetatable({ json = opts.json, tty = sys.isatty(2), err = io.stderr }, Out)
  o.color = o.tty and os.getenv("NO_COLOR") == nil and os.getenv("TERM") ~= "dumb"
  return o
end

function Out:paint(code, s)
  if not self.color then return s end
  return "\27[" .. code .. "m" .. s .. "\27[0m"
end

function Out:line(s)
  self.err:write(s, "\n")
  self.err:flush()
end

-- On a terminal, show what is running now; the result line overwrites it.
function Out:pending(s)
  if self.tty then
    self.err:write(s, " ...")
    self.err:flush()
    self.pending_shown = true
  end
end

function Out:done(s)
  if self.pending_shown then
    self.err:write("\r\27[K")
    self.pending_shown = false
  end
  self:line(s)
end

local function indent_block(title, text)
  if text == nil or text == "" then return nil end
  local lines = { "  --- " .. title .. " ---" }
  for l in (text:sub(-1) == "\n" and text or text .. "\n"):gmatch("(.-)\n") do
    lines[#lines + 1] = "  " .. l
  end
  return table.concat(lines, "\n")
end

------------------------------------------------------------------------ running

local function fail_host(out, ctx, msg, smolvm)
  ctx.host_error = msg
  out:line("smolvm-lua: the host cannot run sandboxes: " .. msg)
  local hints = {}
  if smolvm and smolvm.doctor then
    local ok, checks = pcall(smolvm.doctor)
    if ok and type(checks) == "table" then
      for _, c in ipairs(checks) do
        if not c.ok then
          out:line("  " .. tostring(c.name) .. ": " .. tostring(c.detail or "failed")
            .. (c.hint and (" (" .. c.hint .. ")") or ""))
          hints[#hints + 1] = { name = c.name, detail = c.detail, hint = c.hint }
        end
      end
    end
  end
  if #hints == 0 then
    out:line("  hint: run 'smolvm doctor' for the host checks")
  end
  ctx.host_hints = hints
end

-- Run a call that follows the "nil, message, code" convention; an interruption
-- reported as a failure is turned back into an error so the teardown path runs.
local function op(f, ...)
  local r, msg, code = f(...)
  if r == nil and (is_interrupt(msg) or code == "EINTR") then
    error(msg or "interrupted", 0)
  end
  return r, msg, code
end

local function run_step(ctx, run, step)
  local vm = run.vm
  local res = { index = run.next, kind = step.kind, label = step_label(step) }
  local t0 = now()
  if step.kind == "run" and step.background then
    run.bg = run.bg + 1
    res.log = "/tmp/smolvm-bg-" .. run.bg .. ".log"
    local cmd = "nohup sh -c " .. shell_quote(step.run) .. " >" .. res.log
      .. " 2>&1 </dev/null & echo $!"
    local r, msg, code = op(vm.run, vm, cmd, { timeout = 30, env = step.env, cwd = step.cwd })
    if not r then
      res.error = "could not start: " .. tostring(msg) .. (code and (" (" .. code .. ")") or "")
    elseif r.exit_code ~= 0 then
      res.error = "could not start: exit status " .. tostring(r.exit_code)
      res.stdout, res.stderr = r.stdout, r.stderr
    else
      res.pid = tonumber((r.stdout or ""):match("%d+"))
    end
  elseif step.kind == "run" then
    local r, msg, code = op(vm.run, vm, step.run, { timeout = step.timeout, env = step.env, cwd = step.cwd })
    if not r then
      if code == "ETIMEDOUT" then
        res.error = "timed out after " .. schema.num_str(step.timeout) .. "s"
      else
        res.error = tostring(msg) .. (code and (" (" .. code .. ")") or "")
      end
    else
      res.exit_code, res.stdout, res.stderr = r.exit_code, r.stdout or "", r.stderr or ""
      local why = {}
      local exp = step.expect or { exit = 0 }
      if r.exit_code ~= exp.exit then
        why[#why + 1] = "exit status " .. tostring(r.exit_code) .. ", expected " .. exp.exit
      end
      if exp.stdout and not res.stdout:find(exp.stdout, 1, true) then
        why[#why + 1] = "stdout does not contain " .. schema.quote(exp.stdout)
      end
      if exp.stderr and not res.stderr:find(exp.stderr, 1, true) then
        why[#why + 1] = "stderr does not contain " .. schema.quote(exp.stderr)
      end
      if #why > 0 then res.error = table.concat(why, "; ") end
    end
  elseif step.kind == "upload" then
    local ok, msg, code = op(vm.upload, vm, host_path(run.sb, step.from), step.to)
    if not ok then res.error = tostring(msg) .. (code and (" (" .. code .. ")") or "") end
  elseif step.kind == "download" then
    local ok, msg, code = op(vm.download, vm, step.from, host_path(run.sb, step.to))
    if not ok then res.error = tostring(msg) .. (code and (" (" .. code .. ")") or "") end
  elseif step.kind == "write" then
    local ok, msg, code = op(vm.write_file, vm, step.path, step.content)
    if not ok then res.error = tostring(msg) .. (code and (" (" .. code .. ")") or "") end
  end
  res.elapsed = now() - t0
  res.ok = res.error == nil
  return res
end

local function report_step(out, run, res)
  local n = #run.sb.steps
  local head = "[" .. run.sb.name .. "] step " .. res.index .. "/" .. n .. " " .. res.label
  if res.ok then
    out:done(head .. " " .. out:paint("32", "ok") .. " " .. fmt_secs(res.elapsed))
  else
    out:done(head .. " " .. out:paint("31", "FAILED") .. " " .. fmt_secs(res.elapsed)
      .. ": " .. res.error)
    local b = indent_block("stdout", res.stdout)
    if b then out:line(b) end
    b = indent_block("stderr", res.stderr)
    if b then out:line(b) end
    if res.log then out:line("  (its output is in " .. res.log .. " in the guest)") end
  end
end

local function fail_sandbox(out, run, msg)
  run.status = "failed"
  run.error = msg
  out:done("[" .. run.sb.name .. "] " .. out:paint("31", "FAILED") .. ": " .. msg)
end

-- Stop and delete what this recipe created, unless kept. Each call is protected:
-- a second Ctrl-C during teardown must not leave the other sandboxes behind.
local function teardown(ctx, out, interrupted)
  for _, run in ipairs(ctx.runs) do
    local keep = (run.sb.keep or ctx.opts.keep) and not interrupted
    if run.vm and keep then
      -- Without keep() the VM object would delete it when collected at exit.
      if run.vm.keep then pcall(run.vm.keep, run.vm) end
      run.kept = true
      out:line("[" .. run.sb.name .. "] kept as " .. run.sb.id .. ": smolvm exec " .. run.sb.id
        .. " -- sh   (remove with: smolvm rm -f " .. run.sb.id .. ")")
    elseif run.vm or run.creating then
      local vm = run.vm
      for _ = 1, 3 do
        local ok = pcall(function()
          if not vm then
            -- Interrupted while smolvm.VM{} was returning: find it by its id.
            local smolvm = require "smolvm"
            vm = smolvm.VM.from_id(run.sb.id)
            if not vm then return end
          end
          if vm.stop then vm:stop{ timeout = M.STOP_TIMEOUT } end
          local d, msg = vm:delete()
          if not d and msg then error(msg, 0) end
        end)
        if ok then run.deleted = true break end
      end
      if not run.deleted then
        out:line("[" .. run.sb.name .. "] could not delete VM " .. run.sb.id
          .. " (remove it with: smolvm rm -f " .. run.sb.id .. ")")
      end
    end
  end
end

-- The phases of a run, in order. Each returns an exit status to stop the run there,
-- or nil to go on; whatever they created is torn down by M.run afterwards.

-- 1. The binding: without it the host cannot run sandboxes.
local function load_binding(ctx, out)
  local ok_load, smolvm = pcall(require, "smolvm")
  if not ok_load then
    fail_host(out, ctx, "cannot load the smolvm Lua binding: "
      .. tostring(smolvm):match("^[^\n]*")
      .. " (build it with 'cmake --build build' and run through smolvm-lua)")
    return M.EXIT_HOST
  end
  ctx.smolvm = smolvm
  -- The library's warnings (the first start under TCG says what that boundary is not).
  if smolvm.configure then
    smolvm.configure{ log = function(level, msg)
      if out.pending_shown then -- a line of its own, not the end of "booting ..."
        out.err:write("\n")
        out.pending_shown = false
      end
      out:line("smolvm: " .. level .. ": " .. msg)
    end }
  end
  return nil
end

-- 2. Ids already taken (by a sandbox kept from an earlier run, say) stop everything
-- before anything is created.
local function check_ids(ctx, out)
  local clash = false
  for _, run in ipairs(ctx.runs) do
    local existing = ctx.smolvm.VM.from_id(run.sb.id)
    if existing then
      clash = true
      fail_sandbox(out, run, "a VM with id " .. schema.quote(run.sb.id)
        .. " already exists (kept from an earlier run?); remove it with 'smolvm rm -f "
        .. run.sb.id .. "' or give the sandbox another id")
    end
  end
  if clash then return M.EXIT_FAILED end
  return nil
end

-- 2b. Images the recipe declares (and its sandboxes use), built or found up to date,
-- each once, before any VM is made from them; the build's lines are shown as they
-- come. A build that fails fails the sandboxes using it and stops the run.
local function build_images(ctx, out)
  local images = ctx.opts.images or {}
  if #images == 0 then return nil end
  ctx.image_results = {}
  local failed = false
  for _, img in ipairs(images) do
    local head = "[image " .. img.name .. "]"
    local t0 = now()
    local res = { name = img.name, packages = img.packages }
    ctx.image_results[#ctx.image_results + 1] = res
    local outcome, msg, code
    if type(ctx.smolvm.image_build) ~= "function" then
      msg = "this smolvm module cannot build images (smolvm.image_build is missing)"
    else
      outcome, msg, code = op(ctx.smolvm.image_build, img.name, {
        packages = img.packages,
        on_line = function(l) out:line(head .. " " .. (l:gsub("^build%-image: ", ""))) end,
      })
    end
    res.elapsed = now() - t0
    if outcome then
      res.ok, res.status = true, outcome
      out:line(head .. " " .. out:paint("32", outcome == "built" and "built" or "up to date")
        .. " " .. fmt_secs(res.elapsed))
    else
      failed = true
      res.ok, res.error, res.code = false, tostring(msg), code
      out:line(head .. " " .. out:paint("31", "FAILED") .. ": " .. tostring(msg))
      for _, run in ipairs(ctx.runs) do
        if run.sb.vm.image == img.name then
          fail_sandbox(out, run, "image " .. schema.quote(img.name) .. " could not be built"
            .. (code == "EPERM" and " (building needs root)" or ""))
        end
      end
    end
  end
  if failed then return M.EXIT_FAILED end
  return nil
end

-- 3. Create every VM (records, disks, keys; nothing runs yet). A sandbox that cannot
-- be created fails alone; a host that cannot run sandboxes stops the run.
local function create_all(ctx, out)
  for _, run in ipairs(ctx.runs) do
    local vmopts = {}
    for k, v in pairs(run.sb.vm) do vmopts[k] = v end
    vmopts.id = run.sb.id -- the sandbox name, so kept sandboxes are found by name
    run.creating = true
    local okc, vm, msg, code = pcall(ctx.smolvm.VM, vmopts)
    if okc and vm then
      run.vm = vm
    else
      if not okc then msg = vm end
      if is_interrupt(msg) then error(msg, 0) end
      run.creating = false
      if code == "EHOST" then
        fail_host(out, ctx, tostring(msg), ctx.smolvm)
        return M.EXIT_HOST
      end
      fail_sandbox(out, run, "create: " .. tostring(msg) .. (code and (" (" .. code .. ")") or ""))
    end
  end
  return nil
end

-- A booted sandbox's `files`, in path order; the first that fails fails the sandbox.
local function write_files(out, run)
  for _, path in ipairs(run.files) do
    local okw, wmsg, wcode = op(run.vm.write_file, run.vm, path, run.sb.files[path])
    if not okw then
      fail_sandbox(out, run, "files[" .. schema.quote(path) .. "]: " .. tostring(wmsg)
        .. (wcode and (" (" .. wcode .. ")") or ""))
      return false
    end
  end
  return true
end

-- 4. Boot them side by side: start_begin launches every VM, start_finish then waits
-- for each (they boot meanwhile). A module without the two halves boots in turn.
-- Each booted sandbox gets its files and becomes "running".
local function boot_all(ctx, out)
  local boot_t0 = now()
  for _, run in ipairs(ctx.runs) do
    if run.vm and run.vm.start_begin then
      run.begun = { op(run.vm.start_begin, run.vm, { timeout = M.BOOT_TIMEOUT }) }
    end
  end
  for _, run in ipairs(ctx.runs) do
    if run.vm then
      local head = "[" .. run.sb.name .. "] boot"
      out:pending(head)
      local okb, msg, code
      if run.begun then
        okb, msg, code = run.begun[1], run.begun[2], run.begun[3]
        if okb then okb, msg, code = op(run.vm.start_finish, run.vm) end
      else
        boot_t0 = now()
        okb, msg, code = op(run.vm.start, run.vm, { timeout = M.BOOT_TIMEOUT })
      end
      run.boot_elapsed = now() - boot_t0
      if not okb then
        if code == "EHOST" then
          out:done(head .. " " .. out:paint("31", "FAILED"))
          fail_host(out, ctx, tostring(msg), ctx.smolvm)
          return M.EXIT_HOST
        end
        fail_sandbox(out, run, "boot: " .. tostring(msg) .. (code and (" (" .. code .. ")") or ""))
      else
        out:done(head .. " " .. out:paint("32", "ok") .. " " .. fmt_secs(run.boot_elapsed))
        write_files(out, run)
        if run.status ~= "failed" then run.status = "running" end
      end
    end
  end
  return nil
end

-- One step of a running sandbox: run it, record and show the result, and move the
-- sandbox on ("ok" after its last step, "failed" at a missed expectation).
local function advance(ctx, out, run)
  local step = run.sb.steps[run.next]
  if not step then
    run.status = "ok"
    return
  end
  out:pending("[" .. run.sb.name .. "] step " .. run.next .. "/" .. #run.sb.steps
    .. " " .. step_label(step))
  local res = run_step(ctx, run, step)
  run.results[#run.results + 1] = res
  report_step(out, run, res)
  if res.ok then
    run.next = run.next + 1
    if run.next > #run.sb.steps then run.status = "ok" end
  else
    run.status = "failed"
    run.error = "step " .. res.index .. "/" .. #run.sb.steps .. ": " .. res.error
  end
end

-- 5. Steps, round-robin: one step of each running sandbox per turn, until none is
-- running. Any sandbox not "ok" then fails the recipe.
local function run_steps(ctx, out)
  local active = true
  while active do
    active = false
    for _, run in ipairs(ctx.runs) do
      if run.status == "running" then
        active = active or run.sb.steps[run.next] ~= nil
        advance(ctx, out, run)
      end
    end
  end
  for _, run in ipairs(ctx.runs) do
    if run.status ~= "ok" then return M.EXIT_FAILED end
  end
  return nil
end

-- 6. Host checks (host_check), after every sandbox met all its steps and before
-- teardown, so forwards still answer. The first that fails fails the recipe.
local function run_host_checks(ctx, out)
  local vms = {}
  for _, run in ipairs(ctx.runs) do vms[run.sb.name] = run.vm end
  for _, c in ipairs(ctx.opts.host_checks or {}) do
    out:pending("[host] " .. c.label)
    local t0 = now()
    local okc, res, msg = pcall(c.fn, vms)
    if not okc and is_interrupt(res) then error(res, 0) end
    if not okc or not res then
      local why = tostring(okc and (msg or "failed") or res)
      out:done("[host] " .. c.label .. " " .. out:paint("31", "FAILED") .. ": " .. why)
      ctx.errors = ctx.errors or {}
      ctx.errors[#ctx.errors + 1] = "host check " .. schema.quote(c.label) .. ": " .. why
      return M.EXIT_FAILED
    end
    out:done("[host] " .. c.label .. " " .. out:paint("32", "ok") .. " " .. fmt_secs(now() - t0))
  end
  return nil
end

local PHASES = { load_binding, check_ids, build_images, create_all, boot_all, run_steps,
                 run_host_checks }

-- Run the phases in order; the first that returns a status ends the run with it.
-- Teardown, the summary and the JSON result are M.run's, whatever happened here.
local function run_all(ctx, out)
  for _, phase in ipairs(PHASES) do
    local status = phase(ctx, out)
    if status ~= nil then return status end
  end
  return M.EXIT_OK
end

local function summary(ctx, out, status)
  local failed = 0
  out:line("")
  for _, r in ipairs(ctx.image_results or {}) do
    out:line(string.format("  image %-10s %s  %s", r.name,
      r.ok and out:paint("32", "ok    ") or out:paint("31", "FAILED"),
      r.ok and (r.status == "built" and "built" or "up to date") or (r.error or "not finished")))
  end
  for _, run in ipairs(ctx.runs) do
    local n = #run.sb.steps
    local done = 0
    for _, r in ipairs(run.results) do if r.ok then done = done + 1 end end
    local note = run.note and ("  (" .. run.note .. ")") or ""
    if run.status == "ok" then
      out:line(string.format("  %-16s %s  %d/%d steps%s", run.sb.name, out:paint("32", "ok    "),
        done, n, note))
    else
      failed = failed + 1
      out:line(string.format("  %-16s %s  %s%s", run.sb.name, out:paint("31", "FAILED"),
        run.error or (run.status == "pending" and "not run" or run.status), note))
    end
  end
  local total = fmt_secs(now() - ctx.t0)
  if status == M.EXIT_OK then
    out:line(string.format("recipe ok: %d sandbox%s, every step met (%s)", #ctx.runs,
      #ctx.runs == 1 and "" or "es", total))
  elseif status == M.EXIT_SIGINT or status == M.EXIT_SIGTERM then
    out:line("recipe interrupted: everything it created was removed (" .. total .. ")")
  elseif status == M.EXIT_HOST then
    out:line("recipe not run: the host cannot run sandboxes")
  else
    out:line(string.format("recipe failed: %d of %d sandbox%s failed (%s)", failed, #ctx.runs,
      #ctx.runs == 1 and "" or "es", total))
  end
end

local function json_result(ctx, status)
  local sbs = json.array()
  for _, run in ipairs(ctx.runs) do
    local steps = json.array()
    for _, r in ipairs(run.results) do
      steps[#steps + 1] = {
        index = r.index, kind = r.kind, label = r.label, ok = r.ok,
        elapsed = math.floor(r.elapsed * 1000 + 0.5) / 1000,
        exit_code = r.exit_code, stdout = r.stdout, stderr = r.stderr,
        error = r.error, pid = r.pid, log = r.log,
      }
    end
    local sb = {
      name = run.sb.name, id = run.sb.id, ok = run.status == "ok",
      status = run.status, error = run.error, steps = steps,
      steps_total = #run.sb.steps, kept = run.kept or false,
      deleted = run.deleted or false,
    }
    for k, v in pairs(run.extra or {}) do sb[k] = v end -- --slurm: node, job_id, ...
    sbs[#sbs + 1] = sb
  end
  local images
  if ctx.image_results then
    images = json.array()
    for _, r in ipairs(ctx.image_results) do
      images[#images + 1] = { name = r.name, packages = json.array(r.packages), ok = r.ok,
        status = r.status, error = r.error, code = r.code,
        elapsed = r.elapsed and math.floor(r.elapsed * 1000 + 0.5) / 1000 }
    end
  end
  return {
    format = 1, status = status, ok = status == 0, images = images,
    interrupted = (status == M.EXIT_SIGINT or status == M.EXIT_SIGTERM),
    elapsed = math.floor((now() - ctx.t0) * 1000 + 0.5) / 1000,
    sandboxes = sbs, errors = json.array(ctx.errors or {}),
    host = ctx.host_error and { error = ctx.host_error, checks = json.array(ctx.host_hints or {}) } or nil,
  }
end

local function print_json(obj)
  io.stdout:write(json.encode(obj), "\n")
  io.stdout:flush()
end

--- Run normalized sandboxes (from M.validate). Returns the exit status.
-- Always tears down what it created (unless kept), including on "interrupted".
function M.run(sandboxes, opts)
  opts = opts or {}
  local out = new_out(opts)
  local ctx = { opts = opts, runs = {}, t0 = now() }
  for _, sb in ipairs(sandboxes) do
    local files = {}
    for p in pairs(sb.files) do files[#files + 1] = p end
    table.sort(files)
    ctx.runs[#ctx.runs + 1] = { sb = sb, status = "pending", next = 1, results = {}, bg = 0, files = files }
  end
  local status
  local ok, err = xpcall(function() return run_all(ctx, out) end, function(e)
    if is_interrupt(e) then return e end
    return debug.traceback(tostring(e), 2)
  end)
  local interrupted = false
  if ok then
    status = err
  elseif is_interrupt(err) then
    interrupted = true
    status = interrupt_status(err)
    out:done("smolvm-lua: interrupted, removing what the recipe created")
  else
    status = M.EXIT_FAILED
    out:done("smolvm-lua: internal error: " .. tostring(err))
  end
  -- Teardown may itself be interrupted (a second Ctrl-C); teardown protects each VM.
  local okt, terr = pcall(teardown, ctx, out, interrupted or status == M.EXIT_HOST)
  if not okt then
    out:line("smolvm-lua: teardown: " .. tostring(terr))
    pcall(teardown, ctx, out, true)
  end
  pcall(summary, ctx, out, status)
  if opts.json then print_json(json_result(ctx, status)) end
  return status
end

-- What --check says about each image to build: a dry run of build-image.sh (reads
-- the image directory and the build scripts, writes nothing).
local function image_plan(images)
  local plan = {}
  local okm, smolvm = pcall(require, "smolvm")
  for _, img in ipairs(images or {}) do
    local p = { name = img.name, packages = img.packages, state = "unknown" }
    if not okm or type(smolvm.image_build) ~= "function" then
      p.detail = "cannot tell: the smolvm binding is not loaded"
    else
      local last
      local st, msg = smolvm.image_build(img.name, { packages = img.packages, dry_run = true,
        on_line = function(l) last = l end })
      if st then
        p.state = st
        p.detail = st == "out-of-date" and last and last:match("would be built.*: (.-)$") or nil
      else
        p.detail = tostring(msg)
      end
    end
    plan[#plan + 1] = p
  end
  return plan
end

local function check_summary(sandboxes, opts, images)
  local plan = image_plan(images)
  if opts.json then
    local sbs = json.array()
    for _, sb in ipairs(sandboxes) do
      local vm = {}
      for k, v in pairs(sb.vm) do vm[k] = v end
      vm.forwards = json.array(vm.forwards)
      vm.env = json.object(vm.env)
      sbs[#sbs + 1] = { name = sb.name, id = sb.id, steps_total = #sb.steps,
                        keep = sb.keep, vm = vm }
    end
    local imgs = json.array()
    for _, p in ipairs(plan) do
      imgs[#imgs + 1] = { name = p.name, packages = json.array(p.packages), state = p.state,
                          detail = p.detail }
    end
    print_json({ format = 1, status = 0, ok = true, checked = true, sandboxes = sbs,
                 images = imgs, errors = json.array() })
    return
  end
  local nsteps = 0
  for _, sb in ipairs(sandboxes) do nsteps = nsteps + #sb.steps end
  io.stdout:write(string.format("recipe ok: %d sandbox%s, %d step%s%s\n", #sandboxes,
    #sandboxes == 1 and "" or "es", nsteps, nsteps == 1 and "" or "s",
    #plan > 0 and (", " .. #plan .. " image" .. (#plan == 1 and "" or "s")) or ""))
  for _, sb in ipairs(sandboxes) do
    local fw = {}
    for _, f in ipairs(sb.vm.forwards) do
      fw[#fw + 1] = (f.address or "127.0.0.1") .. ":" .. f.host .. "->" .. f.guest
    end
    io.stdout:write(string.format("  %-16s %d step%s, %d vcpu, %d MiB%s%s\n", sb.name, #sb.steps,
      #sb.steps == 1 and "" or "s", sb.vm.vcpus, sb.vm.memory,
      #fw > 0 and (", forwards " .. table.concat(fw, " ")) or "",
      sb.keep and ", kept" or ""))
  end
  local says = { ["up-to-date"] = "up to date", ["out-of-date"] = "would be built",
                 unknown = "not known whether it would be built" }
  for _, p in ipairs(plan) do
    io.stdout:write(string.format("  image %-10s %s: %s%s\n", p.name,
      #p.packages > 0 and ("packages " .. table.concat(p.packages, ", ")) or "default packages",
      says[p.state] or p.state, p.detail and (" (" .. p.detail .. ")") or ""))
  end
  io.stdout:flush()
end

local function report_invalid(errs, opts, file)
  if opts.json then
    print_json({ format = 1, status = M.EXIT_INVALID, ok = false, errors = json.array(errs),
                 sandboxes = json.array() })
  end
  io.stderr:write((file and (file .. ": ") or "") .. "invalid recipe (" .. #errs .. " error"
    .. (#errs == 1 and "" or "s") .. "):\n")
  for _, e in ipairs(errs) do io.stderr:write("  ", e, "\n") end
  io.stderr:flush()
end

-- For smolvm.slurm, which prints a cluster run's results as a local run does.
M.new_out, M.report_step, M.summary, M.json_result = new_out, report_step, summary, json_result
M.print_json, M.fmt_secs = print_json, fmt_secs

-- --only NAME: that sandbox alone (its host checks need the others: not run).
local function select_only(sandboxes, name)
  local names = {}
  for _, sb in ipairs(sandboxes) do
    if sb.name == name then return { sb } end
    names[#names + 1] = sb.name
  end
  local s = schema.suggest(name, names)
  return nil, { "--only: no sandbox " .. schema.quote(name) .. " in the recipe"
    .. (s and (" (did you mean " .. schema.quote(s) .. "?)") or "")
    .. "; it has " .. table.concat(names, ", ") }
end

--- Validate declared images (no image is touched).
-- @return normalized images (schema.validate_images) or nil and every error
function M.validate_images(declared)
  for _, d in ipairs(declared) do
    if d.body == nil and #d.errors == 0 then
      d.errors[#d.errors + 1] = (d.line and ("line " .. d.line .. ": ") or "")
        .. "declared without a body: write image " .. schema.quote(tostring(d.name))
        .. " { packages = { ... } }"
    end
  end
  return schema.validate_images(declared)
end

--- The images a run builds, in declaration order: those its sandboxes use and, unless
-- only one sandbox runs (--only), every other declared image too.
function M.images_to_build(images, sandboxes, only)
  local used = {}
  for _, sb in ipairs(sandboxes) do used[sb.vm.image] = true end
  local out = {}
  for _, img in ipairs(images) do
    if used[img.name] or not only then out[#out + 1] = img end
  end
  return out
end

--- Validate and run what the file declared. Returns the exit status (0 when the
-- file declared no sandbox and no image, without output).
function M.finish()
  local st = state or new_state()
  state = nil
  _G.sandbox = nil
  _G.image = nil
  if #st.declared == 0 and #st.images == 0 then return M.EXIT_OK end
  local file = (st.declared[1] or st.images[1]).source
  local sandboxes, errs, partial = M.validate(st.declared)
  local images, ierrs = M.validate_images(st.images)
  if not images then
    errs = errs or {}
    for _, e in ipairs(ierrs) do errs[#errs + 1] = e end
  end
  if not sandboxes or not images then
    -- what --slurm would refuse too, so every mistake shows at once
    if st.opts.slurm and not sandboxes then
      for _, e in ipairs(require("smolvm.slurm").validate(partial or {}, st.opts, st.checks)) do
        errs[#errs + 1] = e
      end
    end
    report_invalid(errs, st.opts, file)
    return M.EXIT_INVALID
  end
  if st.opts.only then
    sandboxes, errs = select_only(sandboxes, st.opts.only)
    if not sandboxes then
      report_invalid(errs, st.opts, file)
      return M.EXIT_INVALID
    end
    st.checks = {}
  end
  if st.opts.slurm then
    -- Everything that cannot travel to a cluster node is an invalid recipe here,
    -- found before anything is submitted.
    local slurm = require "smolvm.slurm"
    errs = slurm.validate(sandboxes, st.opts, st.checks)
    if #errs > 0 then
      report_invalid(errs, st.opts, file)
      return M.EXIT_INVALID
    end
    if st.opts.check then
      check_summary(sandboxes, st.opts)
      slurm.print_plan(sandboxes, st.opts)
      return M.EXIT_OK
    end
    return slurm.run(sandboxes, st.opts)
  end
  local build = M.images_to_build(images, sandboxes, st.opts.only)
  if st.opts.check then
    check_summary(sandboxes, st.opts, build)
    return M.EXIT_OK
  end
  local opts = {}
  for k, v in pairs(st.opts) do opts[k] = v end
  opts.host_checks = st.checks
  opts.images = build
  return M.run(sandboxes, opts)
end

--- For smolvm-lua: the user's file failed to load or raised. In a recipe (or a file
-- that could not even be parsed) that is an invalid recipe: print and return 2.
function M.load_error(msg, opts)
  opts = opts or (state and state.opts) or {}
  state = nil
  report_invalid({ tostring(msg) }, opts, nil)
  return M.EXIT_INVALID
end

return M
