-- SPDX-License-Identifier: MIT
--- Recipes (format 1): declaration, validation and the runner.
--
-- smolvm-lua calls `begin{check=, json=, keep=, quiet=, safe=}` before loading the
-- user's file (begin installs the global `sandbox`), then `os.exit(finish())` after
-- it. The file only declares (smolvm.declare records what it calls); finish validates
-- everything that was declared (schema.lua) and runs it. Exit status: 0 every step met
-- its expectation, 1 a step (or a sandbox) failed, 2 the recipe is invalid, 3 the host
-- cannot run sandboxes, 130/143 interrupted.
--
-- Trust: without --safe a recipe is host code: it runs with every Lua library, as the
-- user running smolvm-lua. `--check` loads it in an environment with no host side
-- effect (M.load); `--safe` evaluates it in a separate, budgeted Lua state in a child
-- process (src/cli/safe-recipe.c) and hands finish() only the data it declared.
--
-- Side by side: the runner creates every VM, boots them all at once, writes their
-- files, then runs the sandboxes' steps. A sandbox's steps run in order; sandboxes
-- advance side by side, one step of each per turn. On the agent transport a command
-- step is a spawned process whose output is read as it arrives, so the commands of
-- different sandboxes run at the same time and their output is shown live, line by
-- line, each line prefixed with its sandbox's name (`web | hello`). Without the agent
-- (transport "ssh") a command blocks until it ends and its output is shown then.
-- Background steps (`background = true`) keep running in their guest while the
-- others go on, which is how servers overlap.
--
-- VM ids: a sandbox's VM id is its name (or its `id` field), so a sandbox kept with
-- `keep = true` / `--keep` is found afterwards as `smolvm exec web -- sh`. A VM with
-- that id already present (kept from an earlier run) stops the recipe before
-- anything is created.

local schema = require "smolvm.schema"
local json = require "smolvm.json"
local sys = require "smolvm.sys"
local declare = require "smolvm.declare"
local text = require "smolvm.text"

local M = {}

M.EXIT_OK, M.EXIT_FAILED, M.EXIT_INVALID, M.EXIT_HOST = 0, 1, 2, 3
M.EXIT_SIGINT, M.EXIT_SIGTERM = 130, 143
M.BOOT_TIMEOUT = tonumber(os.getenv("SMOLVM_BOOT_TIMEOUT") or "") or 180
M.STOP_TIMEOUT = 5
M.OUTPUT_LIMIT = 16 * 1024 * 1024 -- bytes of a step's stdout (and of its stderr) kept
M.KILL_GRACE = 15 -- seconds past a step's timeout before the host gives up on the guest

local sanitize = text.sanitize
local getinfo = debug and debug.getinfo

-- The recipe being declared: { opts, declared = { d, ... } (every kind, in order;
-- smolvm.declare), checks = { ... }, decl = { sandbox =, image =, template = },
-- host_check }
local state

local function new_state(opts)
  local col = declare.collector()
  return { opts = opts or {}, declared = col.declared, checks = col.checks,
           decl = declare.functions(col, getinfo),
           host_check = declare.host_check_function(col) }
end

------------------------------------------------------------------------ declaring

--- The global `sandbox`: `sandbox "name" { ...options, steps... }`.
-- Mistakes in the call itself are recorded with their line and reported by finish
-- with every other error (exit status 2), so a recipe shows all its mistakes at once.
function M.sandbox(name, ...)
  state = state or new_state()
  return state.decl.sandbox(name, ...) -- a tail call: the lines are the caller's
end

--- The global `image`: `image "name" { packages = { ... } }`, a guest image built
-- (once per run, cached by its definition) before the sandboxes that use it.
function M.image(name, ...)
  state = state or new_state()
  return state.decl.image(name, ...)
end

--- The global `template`: `template "name" { image =, memory =, steps = { ... } }`, a
-- VM booted once, its steps run, snapshotted as template "name" and deleted; cached by
-- its definition and its image, before the sandboxes (`template = "name"`) made from it.
function M.template(name, ...)
  state = state or new_state()
  return state.decl.template(name, ...)
end

--- Register a host-side check: `fn(vms)` runs after every sandbox met all its steps,
-- before teardown (forwards are still up), with `vms[name] = vm`. It returns true,
-- or false/nil and a message (the recipe then exits 1). Not run under --check, not
-- available under --safe (a host check is host code).
function M.host_check(label, fn)
  state = state or new_state()
  return state.host_check(label, fn) -- a tail call: a bad argument blames the caller
end

--- Start a recipe: remember the flags and install the globals `sandbox`, `image` and
-- `template`.
-- @param opts { check = bool, json = bool, keep = bool, quiet = bool, safe = bool,
--   only = name, slurm = bool, partition =, account =, time =, wait = (strings, for
--   --slurm), file = the recipe's path, exe = the smolvm-lua binary }
function M.begin(opts)
  state = new_state(opts)
  _G.sandbox = state.decl.sandbox
  _G.image = state.decl.image
  _G.template = state.decl.template
end

-- What each kind's body looks like, for the messages below.
local FORMS = {
  sandbox = { "sandbox", '{ ... }' },
  image = { "image", '{ packages = { ... } }' },
  template = { "template", '{ image = "default", steps = { ... } }' },
}

-- The kind of a declaration (what --safe hands over is checked like any data).
local function kind_of(d)
  return FORMS[d.kind] and d.kind or "sandbox"
end

-- The messages of what a declaration's facts say went wrong (smolvm.declare).
local function declaration_errors(d)
  local errs = {}
  local kind = kind_of(d)
  local form = kind .. ' "name" { ... }'
  local function at(line) return line and ("line " .. line .. ": ") or "" end
  if d.missing_name then
    errs[#errs + 1] = "the name is missing: write " .. form
  end
  if d.extra_args then
    errs[#errs + 1] = at(d.line) .. kind .. " takes one name: write " .. form
  end
  if d.body_bad then
    errs[#errs + 1] = at(d.body_line) .. "expected a table after " .. kind .. " "
      .. schema.quote(tostring(d.name)) .. " (" .. form .. "), got "
      .. schema.describe(d.bad_value)
  end
  for _, l in ipairs(type(d.twice) == "table" and d.twice or {}) do
    errs[#errs + 1] = at(type(l) == "number" and l or nil) .. "the body was given twice"
  end
  return errs
end

-- A declaration's facts as messages, once; and the one for a missing body.
local function declaration_facts(d)
  if d.facts_done then return end
  d.errors = d.errors or {}
  for _, e in ipairs(declaration_errors(d)) do d.errors[#d.errors + 1] = e end
  if d.body == nil and #d.errors == 0 then
    local kind = kind_of(d)
    d.errors[#d.errors + 1] = (type(d.line) == "number" and ("line " .. d.line .. ": ") or "")
      .. "declared without a body: write " .. kind .. " " .. schema.quote(tostring(d.name))
      .. " " .. FORMS[kind][2]
  end
  d.facts_done = true
end

--- load(path [, args]) -> chunk | nil, message: the recipe file compiled as the
-- options of begin() say. Text only (a precompiled chunk is refused). Under --check
-- the chunk's environment has no host side effect (smolvm.declare's "check"
-- environment): `os.execute(...)` raises `os.execute is not available under --check`
-- where the recipe calls it. path nil or "-" reads stdin.
function M.load(path)
  state = state or new_state()
  local f, err
  if path == nil or path == "-" then f = io.stdin else f, err = io.open(path, "rb") end
  if not f then return nil, "cannot open " .. tostring(path) .. ": " .. tostring(err) end
  local src = f:read("*a")
  if f ~= io.stdin then f:close() end
  if not src then return nil, "cannot read " .. tostring(path) end
  src = src:gsub("^#[^\n]*", "", 1) -- a shebang line (its newline stays: lines hold)
  local name = (path == nil or path == "-") and "=stdin" or ("@" .. path)
  local env
  if state.opts.check then
    env = declare.env("check", _G, {
      sandbox = state.decl.sandbox, image = state.decl.image, template = state.decl.template,
      host_check = M.host_check,
      print = function(...)
        local t = {}
        for i = 1, select("#", ...) do t[i] = tostring((select(i, ...))) end
        io.stderr:write(sanitize(table.concat(t, "\t")), "\n")
      end,
    })
  end
  if setfenv then -- 5.1 / LuaJIT
    if src:byte(1) == 27 then return nil, name:sub(2) .. ": a precompiled chunk is not a recipe" end
    local chunk, lerr = loadstring(src, name)
    if chunk and env then setfenv(chunk, env) end
    return chunk, lerr
  end
  return load(src, name, "t", env or _G)
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

-- What a step is called in progress lines: the recipe's own words, sanitized (a
-- --safe recipe is untrusted text too).
local function step_label(step)
  local l
  if step.kind == "run" then
    l = (step.background and "& " or "") .. one_line(step.run, 60)
  elseif step.kind == "upload" then
    l = "upload " .. step.from .. " -> " .. step.to
  elseif step.kind == "download" then
    l = "download " .. step.from .. " -> " .. step.to
  else
    l = "write " .. step.path
  end
  return sanitize(l)
end
M.step_label = step_label

local function is_interrupt(err)
  return type(err) == "string" and err:find("interrupted", 1, true) ~= nil
end

local function interrupt_status(err)
  if type(err) == "string" and err:find("TERM", 1, true) then return M.EXIT_SIGTERM end
  return M.EXIT_SIGINT
end

------------------------------------------------------------------------ templates
-- A template block's cache (docs/templates.md, "Templates from recipes"): the library
-- stores nothing of recipes, so the run that makes a template writes its record next
-- to the library's template.json, in the template's own directory:
--   <template dir>/<name>/recipe.json
--   { "format": 1, "template": NAME, "definition": sha256 of the block's definition,
--     "image": { "name":, "built":, "inputs_hash": } (its image's manifest) }
-- It goes with the directory when the template is removed. A template is up to date
-- when that record's definition is the block's, its image is the one on disk now
-- (the manifest's built and inputs_hash, as in template.json) and the library does not
-- call it stale. A template without the record was not made by a template block: a
-- run does not remove it.

M.TEMPLATE_RECORD = "recipe.json"
local read_json = sys.read_json

local function core_module()
  local ok, core = pcall(require, "smolvm.core")
  return ok and type(core) == "table" and core or nil
end

local function str_or_nil(v) return type(v) == "string" and v or nil end

--- The definition of a normalized template, as the text its hash is taken of: every
-- field the block gives (defaults filled), JSON with sorted keys.
function M.template_definition(t)
  return json.encode({ format = 1, image = t.vm.image, vcpus = t.vm.vcpus, memory = t.vm.memory,
                       network = t.vm.network, env = json.object(t.vm.env or {}),
                       files = json.object(t.files or {}), steps = json.array(t.steps or {}) })
end

--- sha256 (hex) of M.template_definition(t).
function M.template_hash(t)
  local core = core_module()
  if not core or type(core.sha256) ~= "function" then
    error("the smolvm binding has no sha256 (rebuild it)", 0)
  end
  return core.sha256(M.template_definition(t))
end

--- The identity of image `name` now: { name =, built =, inputs_hash = } from its
-- manifest, or nil when it has none.
function M.image_identity(image_dir, name)
  local m = read_json(image_dir .. "/" .. name .. "/manifest.json")
  if not m then return nil end
  return { name = name, built = str_or_nil(m.built), inputs_hash = str_or_nil(m.inputs_hash) }
end

local function same_image(a, b)
  return type(a) == "table" and type(b) == "table" and a.built ~= nil and a.built == b.built
    and a.inputs_hash ~= nil and a.inputs_hash == b.inputs_hash
end

--- What is on disk for template block t: { state = "missing" | "up-to-date" | "stale"
-- | "foreign", reason = (stale, foreign), created_at = ms (when it exists), record = }.
-- @param dirs { template_dir =, image_dir = }
-- @param hash M.template_hash(t)
-- @param image the image's identity (M.image_identity), or nil when it is not built
--   or will be built first (then an existing template is stale)
-- @param no_image why image is nil (default: the image is not built)
function M.template_status(dirs, t, hash, image, no_image)
  local dir = dirs.template_dir .. "/" .. t.name
  local tj = read_json(dir .. "/template.json")
  if not tj then
    if file_exists(dir) then -- a directory opens for reading too
      return { state = "foreign", reason = "'" .. dir .. "' holds no readable template.json" }
    end
    return { state = "missing" }
  end
  local created = type(tj.created_ms) == "number" and tj.created_ms or nil
  local rec = read_json(dir .. "/" .. M.TEMPLATE_RECORD)
  if not rec or rec.format ~= 1 or type(rec.definition) ~= "string" then
    return { state = "foreign", created_at = created,
             reason = "it was not made by a template block (it has no " .. M.TEMPLATE_RECORD .. ")" }
  end
  local st = { state = "stale", created_at = created, record = rec }
  local tj_image = type(tj.image) == "table" and tj.image or {}
  if rec.definition ~= hash then
    st.reason = "its definition changed"
  elseif tj_image.name ~= t.vm.image then
    st.reason = "it was made from image " .. schema.quote(tostring(tj_image.name))
      .. ", the block says " .. schema.quote(t.vm.image)
  elseif not image then
    st.reason = no_image or ("its image " .. schema.quote(t.vm.image) .. " is not built")
  elseif not same_image(rec.image, image) or not same_image(tj_image, image) then
    st.reason = "its image " .. schema.quote(t.vm.image) .. " was rebuilt since (built "
      .. tostring(image.built) .. ")"
  else
    st.state = "up-to-date"
  end
  return st
end

-- Write the record of template t (just made, as hash says) from its template.json.
local function write_record(dirs, t, hash)
  local dir = dirs.template_dir .. "/" .. t.name
  local tj = read_json(dir .. "/template.json")
  if not tj then return nil, "cannot read " .. dir .. "/template.json" end
  local img = type(tj.image) == "table" and tj.image or {}
  local text = json.encode({ format = 1, template = t.name, definition = hash,
    image = { name = str_or_nil(img.name), built = str_or_nil(img.built),
              inputs_hash = str_or_nil(img.inputs_hash) } }, { indent = "  " }) .. "\n"
  local path = dir .. "/" .. M.TEMPLATE_RECORD
  local f, err = io.open(path .. ".tmp", "wb")
  if not f then return nil, tostring(err) end
  local okw, werr = f:write(text)
  local okc = f:close()
  if not okw or not okc then
    os.remove(path .. ".tmp")
    return nil, "write " .. path .. ".tmp: " .. tostring(werr)
  end
  local okr, rerr = os.rename(path .. ".tmp", path)
  if not okr then
    os.remove(path .. ".tmp")
    return nil, tostring(rerr)
  end
  return type(tj.created_ms) == "number" and tj.created_ms or true
end

--- The id of the VM that makes template `name` (deleted once it is snapshotted).
function M.builder_id(name)
  local id = "template-" .. name
  if #id <= 63 then return id end
  local core = core_module()
  local tag = core and core.sha256 and core.sha256(name):sub(1, 8) or "x"
  return "template-" .. name:sub(1, 44) .. "-" .. tag
end

local function iso_ms(ms)
  if type(ms) ~= "number" then return "?" end
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(ms / 1000))
end
M.iso_ms = iso_ms

------------------------------------------------------------------------ checking

-- Checks the schema cannot make: host files to upload must exist (or be produced
-- by an earlier download in the recipe: `produced`, shared by the templates, which run
-- first, and the sandboxes). prefix: schema.sandbox_prefix or template_prefix.
local function check_host_files(sandboxes, errs, prefix, produced)
  produced = produced or {}
  prefix = prefix or schema.sandbox_prefix
  for _, sb in ipairs(sandboxes) do
    for i, step in ipairs(sb.steps) do
      if step.kind == "download" then
        produced[host_path(sb, step.to)] = true
      elseif step.kind == "upload" then
        local p = host_path(sb, step.from)
        if not produced[p] and not file_exists(p) then
          errs[#errs + 1] = prefix(sb.name) .. "steps[" .. i
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
function M.validate(declared, produced)
  local errs = {}
  for _, d in ipairs(declared) do declaration_facts(d) end
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
    check_host_files(partial, verrs, nil, produced)
    return nil, verrs, partial
  end
  check_host_files(sandboxes, errs, nil, produced)
  if #errs > 0 then return nil, errs end
  return sandboxes
end

------------------------------------------------------------------------ output

local Out = {}
Out.__index = Out

local COLORS = { "36", "33", "32", "35", "34", "96", "93", "92", "95", "94" }

local function new_out(opts)
  local tty = opts.tty
  if tty == nil then tty = sys.isatty(2) end
  local o = setmetatable({ json = opts.json, quiet = opts.quiet, tty = tty,
                           err = io.stderr, pend = {}, shown = false, prefix_width = 0,
                           colors = {} }, Out)
  o.color = o.tty and os.getenv("NO_COLOR") == nil and os.getenv("TERM") ~= "dumb"
  return o
end

function Out:paint(code, s)
  if not self.color then return s end
  return "\27[" .. code .. "m" .. s .. "\27[0m"
end

-- The transient status line (a terminal only): what is running now.
function Out:clear_status()
  if self.shown then
    self.err:write("\r\27[K")
    self.shown = false
  end
end

function Out:draw_status()
  if not self.tty or #self.pend == 0 then return end
  local parts = {}
  for i, p in ipairs(self.pend) do parts[i] = p.text end
  local s = table.concat(parts, "  |  ") .. " ..."
  local width = 100
  local cols = sys.term_cols and sys.term_cols(2)
  if cols and cols > 10 then width = cols - 1 end
  -- A wrapped status line could not be erased with one \r: cut it to the width.
  if #s > width then s = s:sub(1, width - 3) .. "..." end
  self.err:write(s)
  self.err:flush()
  self.shown = true
end

function Out:line(s)
  self:clear_status()
  self.err:write(s, "\n")
  self:draw_status()
  self.err:flush()
end

-- On a terminal, show what is running now (one entry per key, several at once); the
-- result line (done) replaces it.
function Out:pending(s, key)
  key = key or ""
  for _, p in ipairs(self.pend) do
    if p.key == key then p.text = s self:clear_status() self:draw_status() return end
  end
  self.pend[#self.pend + 1] = { key = key, text = s }
  self:clear_status()
  self:draw_status()
end

function Out:done(s, key)
  key = key or ""
  for i, p in ipairs(self.pend) do
    if p.key == key then table.remove(self.pend, i) break end
  end
  self:line(s)
end

--- Names of the sandboxes whose output is shown, so the prefixes line up.
function Out:set_names(names)
  for i, n in ipairs(names) do
    if #n > self.prefix_width then self.prefix_width = #n end
    self.colors[n] = COLORS[(i - 1) % #COLORS + 1]
  end
end

--- One line of a guest's output, live: `web | hello` (docker compose style).
function Out:output(name, line)
  if self.quiet then return end
  local pad = string.rep(" ", self.prefix_width - #name)
  self:line(self:paint(self.colors[name] or "36", name .. pad .. " |") .. " " .. text.display_line(line))
end

local function indent_block(title, s)
  if s == nil or s == "" then return nil end
  local lines = { "  --- " .. title .. " ---" }
  for l in (s:sub(-1) == "\n" and s or s .. "\n"):gmatch("(.-)\n") do
    lines[#lines + 1] = "  " .. sanitize(l)
  end
  return table.concat(lines, "\n")
end

------------------------------------------------------------------------ running

local function fail_host(out, ctx, msg, smolvm)
  msg = sanitize(msg)
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

local function with_code(msg, code)
  return sanitize(tostring(msg)) .. (code and (" (" .. code .. ")") or "")
end

-- A step's output: kept whole (up to M.OUTPUT_LIMIT per stream) for the result and
-- the expectations, and shown live line by line unless --quiet.
local function new_capture(out, run)
  local cap = { parts = { stdout = {}, stderr = {} }, size = { stdout = 0, stderr = 0 },
                truncated = false, shown = false }
  local name = run.sb.name
  local splitters = {}
  for _, stream in ipairs({ "stdout", "stderr" }) do
    splitters[stream] = text.lines(function(l)
      cap.shown = true
      out:output(name, l)
    end)
  end
  function cap.add(stream, chunk)
    if stream ~= "stdout" and stream ~= "stderr" then return end
    local room = M.OUTPUT_LIMIT - cap.size[stream]
    if room > 0 then
      local piece = #chunk > room and chunk:sub(1, room) or chunk
      local p = cap.parts[stream]
      p[#p + 1] = piece
      cap.size[stream] = cap.size[stream] + #piece
    end
    if #chunk > room then cap.truncated = true end
    if not out.quiet then splitters[stream].feed(chunk) end
  end
  function cap.finish()
    splitters.stdout.flush()
    splitters.stderr.flush()
    return table.concat(cap.parts.stdout), table.concat(cap.parts.stderr)
  end
  return cap
end

-- Whether a command's result met the step's expectation; sets res.error if not.
local function check_expect(step, res)
  local why = {}
  local exp = step.expect or { exit = 0 }
  if res.signal then
    why[#why + 1] = "killed by signal " .. tostring(res.signal) .. ", expected exit status " .. exp.exit
  elseif res.exit_code ~= exp.exit then
    why[#why + 1] = "exit status " .. tostring(res.exit_code) .. ", expected " .. exp.exit
  end
  if exp.stdout and not res.stdout:find(exp.stdout, 1, true) then
    why[#why + 1] = "stdout does not contain " .. schema.quote(exp.stdout)
  end
  if exp.stderr and not res.stderr:find(exp.stderr, 1, true) then
    why[#why + 1] = "stderr does not contain " .. schema.quote(exp.stderr)
  end
  if #why > 0 then res.error = sanitize(table.concat(why, "; ")) end
end

local function new_result(run, step)
  return { index = run.next, kind = step.kind, label = step_label(step), t0 = now() }
end

local function end_result(res)
  res.elapsed = now() - res.t0
  res.t0 = nil
  res.ok = res.error == nil
  return res
end

-- A step run to its end with blocking calls: every kind but a streamed command.
local function run_step(ctx, out, run, step)
  local vm = run.vm
  local res = new_result(run, step)
  if step.kind == "run" and step.background then
    run.bg = run.bg + 1
    res.log = "/tmp/smolvm-bg-" .. run.bg .. ".log"
    local cmd = "nohup sh -c " .. shell_quote(step.run) .. " >" .. res.log
      .. " 2>&1 </dev/null & echo $!"
    local r, msg, code = op(vm.run, vm, cmd, { timeout = 30, env = step.env, cwd = step.cwd })
    if not r then
      res.error = "could not start: " .. with_code(msg, code)
    elseif r.exit_code ~= 0 then
      res.error = "could not start: exit status " .. tostring(r.exit_code)
      res.stdout, res.stderr = r.stdout, r.stderr
    else
      res.pid = tonumber((r.stdout or ""):match("%d+"))
    end
  elseif step.kind == "run" then
    local cap = new_capture(out, run)
    local r, msg, code = op(vm.run, vm, step.run, { timeout = step.timeout, env = step.env,
                                                   cwd = step.cwd, on_output = cap.add })
    cap.finish()
    res.shown_live = cap.shown
    if not r then
      if code == "ETIMEDOUT" then
        res.error = "timed out after " .. schema.num_str(step.timeout) .. "s"
      else
        res.error = with_code(msg, code)
      end
    else
      res.exit_code, res.stdout, res.stderr = r.exit_code, r.stdout or "", r.stderr or ""
      if r.signal and r.signal ~= "" then res.signal = r.signal end
      res.truncated = r.truncated or nil
      check_expect(step, res)
    end
  elseif step.kind == "upload" then
    local ok, msg, code = op(vm.upload, vm, host_path(run.sb, step.from), step.to)
    if not ok then res.error = with_code(msg, code) end
  elseif step.kind == "download" then
    local ok, msg, code = op(vm.download, vm, step.from, host_path(run.sb, step.to))
    if not ok then res.error = with_code(msg, code) end
  elseif step.kind == "write" then
    local ok, msg, code = op(vm.write_file, vm, step.path, step.content)
    if not ok then res.error = with_code(msg, code) end
  end
  return end_result(res)
end

local function report_step(out, run, res)
  local n = #run.sb.steps
  local head = "[" .. run.sb.name .. "] step " .. res.index .. "/" .. n .. " " .. sanitize(res.label)
  if res.ok then
    out:done(head .. " " .. out:paint("32", "ok") .. " " .. fmt_secs(res.elapsed), run.sb.name)
  else
    out:done(head .. " " .. out:paint("31", "FAILED") .. " " .. fmt_secs(res.elapsed)
      .. ": " .. sanitize(res.error), run.sb.name)
    -- Output already shown live is not repeated.
    if not res.shown_live then
      local b = indent_block("stdout", res.stdout)
      if b then out:line(b) end
      b = indent_block("stderr", res.stderr)
      if b then out:line(b) end
    end
    if res.log then out:line("  (its output is in " .. res.log .. " in the guest)") end
  end
end

local function fail_sandbox(out, run, msg)
  msg = sanitize(msg)
  run.status = "failed"
  run.error = msg
  out:done("[" .. run.sb.name .. "] " .. out:paint("31", "FAILED") .. ": " .. msg, run.sb.name)
end

-- Stop and delete what this recipe created, unless kept. Each call is protected:
-- a second Ctrl-C during teardown must not leave the other sandboxes behind. The VMs
-- that made templates are never kept; a template made without its record (the run
-- was interrupted in between) is removed, so it is not taken for someone else's.
local function teardown(ctx, out, interrupted)
  local all = {}
  for _, run in ipairs(ctx.template_runs or {}) do all[#all + 1] = run end
  for _, run in ipairs(ctx.runs) do all[#all + 1] = run end
  for _, run in ipairs(all) do
    -- A command still running (the recipe was interrupted) is killed with its handle.
    if run.job then pcall(run.job.proc.close, run.job.proc) run.job = nil end
    if run.snapshotted and not run.recorded and ctx.smolvm then
      pcall(ctx.smolvm.template_delete, run.template.name)
    end
    local keep = (run.sb.keep or ctx.opts.keep) and not interrupted and not run.template
    if run.vm and keep then
      -- Without keep() the VM object would delete it when collected at exit.
      if run.vm.keep then pcall(run.vm.keep, run.vm) end
      run.kept = true
      out:line("[" .. run.sb.name .. "] kept as " .. run.sb.id .. ": smolvm exec " .. run.sb.id
        .. " -- sh   (remove with: smolvm rm -f " .. run.sb.id .. ")")
    elseif (run.vm or run.creating) and not run.deleted then
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
local function create_all(ctx, out, runs)
  for _, run in ipairs(runs or ctx.runs) do
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
      fail_sandbox(out, run, "create: " .. with_code(msg, code))
    end
  end
  return nil
end

-- A booted sandbox's `files`, in path order; the first that fails fails the sandbox.
local function write_files(out, run)
  for _, path in ipairs(run.files) do
    local okw, wmsg, wcode = op(run.vm.write_file, run.vm, path, run.sb.files[path])
    if not okw then
      fail_sandbox(out, run, "files[" .. schema.quote(path) .. "]: " .. with_code(wmsg, wcode))
      return false
    end
  end
  return true
end

-- Can this sandbox's commands be spawned and read as they run? The agent transport,
-- a module with spawn, and a way to wait on several processes at once.
local function can_stream(run)
  if not (sys.poll and run.vm.spawn and run.vm.info) then return false end
  local ok, info = pcall(run.vm.info, run.vm)
  return ok and type(info) == "table" and type(info.config) == "table"
    and info.config.transport == "agent"
end

-- 4. Boot them side by side: start_begin launches every VM, start_finish then waits
-- for each (they boot meanwhile). A module without the two halves boots in turn.
-- Each booted sandbox gets its files and becomes "running".
local function boot_all(ctx, out, runs)
  runs = runs or ctx.runs
  local boot_t0 = now()
  for _, run in ipairs(runs) do
    if run.vm and run.vm.start_begin then
      run.begun = { op(run.vm.start_begin, run.vm, { timeout = M.BOOT_TIMEOUT }) }
    end
  end
  for _, run in ipairs(runs) do
    if run.vm then
      -- A clone does not boot: it continues its template's memory.
      local head = "[" .. run.sb.name .. "] "
        .. (run.sb.vm.template and ("start (clone of template " .. schema.quote(run.sb.vm.template)
          .. ")") or "boot")
      out:pending(head, run.sb.name)
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
          out:done(head .. " " .. out:paint("31", "FAILED"), run.sb.name)
          fail_host(out, ctx, tostring(msg), ctx.smolvm)
          return M.EXIT_HOST
        end
        fail_sandbox(out, run, "boot: " .. with_code(msg, code))
      else
        out:done(head .. " " .. out:paint("32", "ok") .. " " .. fmt_secs(run.boot_elapsed), run.sb.name)
        write_files(out, run)
        if run.status ~= "failed" then
          run.status = "running"
          run.streaming = can_stream(run)
        end
      end
    end
  end
  return nil
end

-- A step's result is in: record and show it, and move the sandbox on ("ok" after its
-- last step, "failed" at a missed expectation).
local function record(out, run, res)
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

local function pending_label(run, step)
  return "[" .. run.sb.name .. "] step " .. run.next .. "/" .. #run.sb.steps .. " " .. step_label(step)
end

-- A command step as a spawned process (the agent transport): it runs while the
-- other sandboxes' steps do; its output is read as it arrives (pump_job).
local function start_job(out, run, step)
  local res = new_result(run, step)
  local p, msg, code = op(run.vm.spawn, run.vm, step.run, { env = step.env, cwd = step.cwd,
                                                           timeout = step.timeout, keep = false })
  if not p then
    res.error = with_code(msg, code)
    record(out, run, end_result(res))
    return
  end
  run.job = { proc = p, step = step, res = res, cap = new_capture(out, run),
              deadline = now() + step.timeout + M.KILL_GRACE }
end

-- The job's command ended (or failed): its exit status, expectations, result.
local function finish_job(out, run, err)
  local job = run.job
  local res, p = job.res, job.proc
  run.job = nil
  res.stdout, res.stderr = job.cap.finish()
  res.shown_live = job.cap.shown
  res.truncated = job.cap.truncated or nil
  if err then
    res.error = err
  else
    local st, werr, wcode = op(p.wait, p, { timeout = 30 })
    if not st then
      res.error = "waiting for its exit status: " .. with_code(werr, wcode)
    elseif st.timed_out then
      res.error = "timed out after " .. schema.num_str(job.step.timeout) .. "s"
      res.exit_code = st.exit_code
    else
      res.exit_code = st.exit_code
      if st.signal then res.signal = st.signal end
      check_expect(job.step, res)
    end
  end
  pcall(p.close, p)
  record(out, run, end_result(res))
end

-- Take everything the job's process has sent so far, without waiting. Returns whether
-- there was anything (output, or the end).
local function pump_job(out, run)
  local job, took = run.job, false
  while true do
    local stream, chunk, code = op(job.proc.read, job.proc, { timeout = 0 })
    if stream then
      job.cap.add(stream, chunk)
      took = true
    elseif chunk == nil then
      finish_job(out, run) -- both streams ended
      return true
    elseif code == "ETIMEDOUT" then
      return took
    else
      finish_job(out, run, "reading its output: " .. with_code(chunk, code))
      return true
    end
  end
end

-- Wait until a job has output (or its deadline passes), at most until `limit`
-- seconds from now (0: just look).
local function wait_jobs(ctx, out, jobs, limit)
  -- What arrived already (a fast command's whole output and exit can come in the same
  -- read as its spawn's reply) makes no descriptor readable: take it before waiting,
  -- and wait only when there was nothing.
  local took = false
  for _, run in ipairs(jobs) do
    if run.job and pump_job(out, run) then took = true end
  end
  if not took then
    local fds, t = {}, now()
    local wait = limit
    for i, run in ipairs(jobs) do
      fds[i] = run.job.proc:fd()
      local left = run.job.deadline - t
      if wait == nil or left < wait then wait = left end
    end
    if wait < 0 then wait = 0 end
    -- A signal ends the wait early ("EINTR"): look at the jobs, then wait again. Under
    -- smolvm-lua a SIGINT/SIGTERM raises "interrupted" at the next instruction.
    local ok, msg, code = sys.poll(fds, math.floor(wait * 1000 + 0.5))
    if not ok and code ~= "EINTR" then error("poll: " .. tostring(msg), 0) end
    for _, run in ipairs(jobs) do
      if run.job then pump_job(out, run) end
    end
  end
  for _, run in ipairs(jobs) do
    if run.job and now() > run.job.deadline then
      -- The guest should have killed it at its timeout; the host stops waiting.
      pcall(run.job.proc.kill, run.job.proc, "KILL")
      finish_job(out, run, "timed out after " .. schema.num_str(run.job.step.timeout)
        .. "s (the guest did not end it)")
    end
  end
end

-- 5. Steps, side by side: each turn, every running sandbox that is not waiting for a
-- command takes its next step (a streamed command starts and runs on; any other step
-- runs to its end), then the runner waits for output of the commands in flight.
-- Until no sandbox is running. Any sandbox not "ok" then fails the recipe.
local function run_steps(ctx, out, runs)
  runs = runs or ctx.runs
  while true do
    local idle, jobs = false, {}
    for _, run in ipairs(runs) do
      if run.status == "running" and not run.job then
        local step = run.sb.steps[run.next]
        if not step then
          run.status = "ok"
        else
          out:pending(pending_label(run, step), run.sb.name)
          if run.streaming and step.kind == "run" and not step.background then
            start_job(out, run, step)
          else
            record(out, run, run_step(ctx, out, run, step))
          end
          if run.status == "running" and not run.job then idle = true end
        end
      end
      if run.job then jobs[#jobs + 1] = run end
    end
    if #jobs > 0 then
      wait_jobs(ctx, out, jobs, idle and 0 or nil)
    elseif not idle then
      break
    end
  end
  for _, run in ipairs(runs) do
    if run.status ~= "ok" then return M.EXIT_FAILED end
  end
  return nil
end

-- The sandboxes made from template `name` fail with it.
local function fail_clones(ctx, out, name, why)
  for _, run in ipairs(ctx.runs) do
    if run.sb.vm.template == name and run.status ~= "failed" then
      fail_sandbox(out, run, "template " .. schema.quote(name) .. " " .. why)
    end
  end
end

-- One template's result: the line (unless `shown` already) and the record of it.
local function template_failed(ctx, out, res, msg, code, shown)
  res.ok, res.error, res.code = false, sanitize(tostring(msg)), code
  res.elapsed = now() - res.t0
  if not shown then
    out:line("[template " .. res.name .. "] " .. out:paint("31", "FAILED") .. ": " .. res.error)
  end
  fail_clones(ctx, out, res.name, "could not be made")
end

-- 2c. Templates the recipe declares (and its sandboxes use), after the images they
-- boot: each one up to date is reused; else the old one (out of date) is removed and
-- a VM boots, runs the block's steps (live, like a sandbox's), is snapshotted as the
-- template and deleted. The VMs of several templates boot side by side. A template
-- that cannot be made fails the sandboxes made from it and stops the run.
local function build_templates(ctx, out)
  local list = ctx.opts.templates or {}
  if #list == 0 then return nil end
  ctx.template_results, ctx.template_runs = {}, {}
  local dirs, derr = nil, "this smolvm module has no paths()"
  if type(ctx.smolvm.paths) == "function" then dirs, derr = ctx.smolvm.paths() end
  if type(dirs) ~= "table" then
    local res = { name = list[1].name, image = list[1].vm.image, t0 = now() }
    ctx.template_results[1] = res
    template_failed(ctx, out, res, "where templates live: " .. tostring(derr))
    return M.EXIT_FAILED
  end
  local lib = {} -- the library's view: stale, created_at
  local okl, tl = pcall(ctx.smolvm.templates)
  if okl and type(tl) == "table" then
    for _, x in ipairs(tl) do if type(x) == "table" and x.name then lib[x.name] = x end end
  end
  local failed, builds = false, {}
  for _, t in ipairs(list) do
    local head = "[template " .. t.name .. "]"
    local res = { name = t.name, image = t.vm.image, memory = t.vm.memory, t0 = now() }
    ctx.template_results[#ctx.template_results + 1] = res
    local okh, hash = pcall(M.template_hash, t)
    if not okh then
      failed = true
      template_failed(ctx, out, res, hash)
    else
      res.definition = hash
      local st = M.template_status(dirs, t, hash, M.image_identity(dirs.image_dir, t.vm.image))
      local info = lib[t.name]
      if st.state == "up-to-date" and info and info.stale then
        st.state, st.reason = "stale", tostring(info.stale)
      end
      if st.state == "up-to-date" then
        res.ok, res.status, res.created_at = true, "up-to-date", st.created_at
        res.elapsed = now() - res.t0
        out:line(head .. " " .. out:paint("32", "up to date") .. " (made " .. iso_ms(st.created_at)
          .. ")")
      elseif st.state == "foreign" then
        failed = true
        template_failed(ctx, out, res, "template " .. schema.quote(t.name) .. " exists and "
          .. st.reason .. "; remove it with 'smolvm template rm " .. t.name
          .. "', or give the block another name")
      else
        local okd, msg, code = true, nil, nil
        if st.state == "stale" then
          out:line(head .. " out of date (" .. st.reason .. "): removing the old one")
          okd, msg, code = op(ctx.smolvm.template_delete, t.name)
        end
        if not okd then
          failed = true
          template_failed(ctx, out, res, "template " .. schema.quote(t.name) .. " is out of date ("
            .. st.reason .. ") and cannot be removed: " .. tostring(msg), code)
        else
          res.replaced = st.state == "stale" or nil
          builds[#builds + 1] = { t = t, res = res, hash = hash }
        end
      end
    end
  end
  if failed then return M.EXIT_FAILED end
  if #builds == 0 then return nil end

  -- The VMs that make them: a sandbox each, of the block's machine, on QEMU with the
  -- agent (what templates need), never kept.
  local names = {}
  for _, b in ipairs(builds) do
    local t = b.t
    local files = {}
    for path in pairs(t.files) do files[#files + 1] = path end
    table.sort(files)
    local vm = { image = t.vm.image, vcpus = t.vm.vcpus, memory = t.vm.memory,
                 network = t.vm.network, env = t.vm.env, backend = "qemu", transport = "agent" }
    local run = { sb = { name = "template " .. t.name, id = M.builder_id(t.name), vm = vm,
                         files = t.files, steps = t.steps, source = t.source, keep = false },
                  status = "pending", next = 1, results = {}, bg = 0, files = files,
                  template = t, res = b.res, hash = b.hash }
    b.res.run = run
    ctx.template_runs[#ctx.template_runs + 1] = run
    names[#names + 1] = run.sb.name
  end
  out:set_names(names)
  for _, run in ipairs(ctx.template_runs) do
    if ctx.smolvm.VM.from_id(run.sb.id) then
      failed = true
      template_failed(ctx, out, run.res, "a VM with id " .. schema.quote(run.sb.id)
        .. " exists: another run is making template " .. schema.quote(run.template.name)
        .. " now (run again when it is done), or it was left behind (remove it with 'smolvm rm -f "
        .. run.sb.id .. "')")
      run.status = "failed"
    end
  end
  if failed then return M.EXIT_FAILED end
  local status = create_all(ctx, out, ctx.template_runs)
  if status then return status end
  status = boot_all(ctx, out, ctx.template_runs)
  if status then return status end
  run_steps(ctx, out, ctx.template_runs)
  for _, run in ipairs(ctx.template_runs) do
    local t, res = run.template, run.res
    local head = "[template " .. t.name .. "]"
    if run.status ~= "ok" then
      failed = true
      template_failed(ctx, out, res, run.error or "its VM could not be started", nil, true)
    else
      out:pending(head .. " snapshot", run.sb.name)
      local oks, msg, code = op(run.vm.snapshot, run.vm, t.name)
      if oks then
        run.snapshotted = true
        local made, rerr = write_record(dirs, t, run.hash)
        if made then
          run.recorded = true
          res.created_at = type(made) == "number" and made or nil
        else
          pcall(ctx.smolvm.template_delete, t.name)
          oks, msg = nil, "its record " .. M.TEMPLATE_RECORD .. ": " .. tostring(rerr)
        end
      end
      -- Its VM is done either way: gone before the sandboxes boot.
      pcall(function()
        run.vm:stop{ timeout = M.STOP_TIMEOUT }
        local d = run.vm:delete()
        if d then run.deleted = true end
      end)
      if oks then
        res.ok, res.status = true, "built"
        res.elapsed = now() - res.t0
        out:done(head .. " " .. out:paint("32", "built") .. " " .. fmt_secs(res.elapsed), run.sb.name)
      else
        out:done(head .. " snapshot " .. out:paint("31", "FAILED"), run.sb.name)
        failed = true
        template_failed(ctx, out, res, "snapshot: " .. with_code(msg, code), code)
      end
    end
  end
  if failed then return M.EXIT_FAILED end
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

local PHASES = { load_binding, check_ids, build_images, build_templates, create_all, boot_all,
                 run_steps, run_host_checks }

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
  for _, r in ipairs(ctx.template_results or {}) do
    out:line(string.format("  template %-7s %s  %s", r.name,
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
        sanitize(run.error or (run.status == "pending" and "not run" or run.status)), note))
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

-- A run's step results for --json. Guest text (and a --safe recipe's) sanitized:
-- JSON readers get valid UTF-8 and nothing that drives a terminal when printed.
local function json_steps(run)
  local steps = json.array()
  local function clean(v) return v ~= nil and sanitize(v) or nil end
  for _, r in ipairs(run and run.results or {}) do
    steps[#steps + 1] = {
      index = r.index, kind = r.kind, label = clean(r.label), ok = r.ok,
      elapsed = math.floor((r.elapsed or 0) * 1000 + 0.5) / 1000,
      exit_code = r.exit_code, signal = clean(r.signal), stdout = clean(r.stdout),
      stderr = clean(r.stderr), truncated = r.truncated, error = clean(r.error),
      pid = r.pid, log = r.log,
    }
  end
  return steps
end

local function json_result(ctx, status)
  local sbs = json.array()
  for _, run in ipairs(ctx.runs) do
    local steps = json_steps(run)
    local sb = {
      name = run.sb.name, id = run.sb.id, ok = run.status == "ok",
      status = run.status, error = run.error and sanitize(run.error), steps = steps,
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
  local templates
  if ctx.template_results then
    templates = json.array()
    for _, r in ipairs(ctx.template_results) do
      templates[#templates + 1] = { name = r.name, image = r.image, memory = r.memory, ok = r.ok,
        status = r.status, error = r.error, code = r.code, definition = r.definition,
        created_at = r.created_at, replaced = r.replaced, steps = json_steps(r.run),
        elapsed = r.elapsed and math.floor(r.elapsed * 1000 + 0.5) / 1000 }
    end
  end
  return {
    format = 1, status = status, ok = status == 0, images = images, templates = templates,
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
  local names = {}
  for i, run in ipairs(ctx.runs) do names[i] = run.sb.name end
  out:set_names(names)
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

-- What --check says about each template to make (reads the template and image
-- directories where a context would look, creates nothing). iplan: image_plan's.
local function template_plan(templates, iplan)
  local plan = {}
  if #(templates or {}) == 0 then return plan end
  local rebuilt = {}
  for _, p in ipairs(iplan) do if p.state ~= "up-to-date" then rebuilt[p.name] = true end end
  local okm, smolvm = pcall(require, "smolvm")
  local dirs = okm and type(smolvm.default_paths) == "function" and smolvm.default_paths() or nil
  for _, t in ipairs(templates) do
    local p = { name = t.name, image = t.vm.image, memory = t.vm.memory, vcpus = t.vm.vcpus,
                steps = #t.steps, state = "unknown" }
    local okh, hash = pcall(M.template_hash, t)
    if type(dirs) ~= "table" or not okh then
      p.detail = "cannot tell: the smolvm binding is not loaded"
    else
      p.definition = hash
      local image = not rebuilt[t.vm.image] and M.image_identity(dirs.image_dir, t.vm.image) or nil
      local st = M.template_status(dirs, t, hash, image, rebuilt[t.vm.image]
        and ("its image " .. schema.quote(t.vm.image) .. " would be built first") or nil)
      p.created_at = st.created_at
      if st.state == "missing" then
        p.state, p.detail = "out-of-date", "not made yet"
      elseif st.state == "up-to-date" then
        p.state, p.detail = "up-to-date", "made " .. iso_ms(st.created_at)
      elseif st.state == "stale" then
        p.state, p.detail = "out-of-date", st.reason
      else
        p.state, p.detail = "refused", "template " .. schema.quote(t.name) .. " exists and " .. st.reason
      end
    end
    plan[#plan + 1] = p
  end
  return plan
end

-- A copy of v with every string sanitized (what a --safe recipe declared is
-- untrusted text; JSON readers need valid UTF-8).
local function clean_tree(v)
  if type(v) == "string" then return sanitize(v) end
  if type(v) ~= "table" then return v end
  local c = {}
  for k, x in pairs(v) do c[clean_tree(k)] = clean_tree(x) end
  return setmetatable(c, getmetatable(v))
end

local function check_summary(sandboxes, opts, images, templates)
  local plan = image_plan(images)
  local tplan = template_plan(templates, plan)
  if opts.json then
    local sbs = json.array()
    for _, sb in ipairs(sandboxes) do
      local vm = {}
      for k, v in pairs(sb.vm) do vm[k] = clean_tree(v) end
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
    local tpls = json.array()
    for _, p in ipairs(tplan) do
      tpls[#tpls + 1] = { name = p.name, image = p.image, memory = p.memory, vcpus = p.vcpus,
                          steps_total = p.steps, state = p.state, detail = p.detail,
                          definition = p.definition, created_at = p.created_at }
    end
    print_json({ format = 1, status = 0, ok = true, checked = true, sandboxes = sbs,
                 images = imgs, templates = tpls, errors = json.array() })
    return
  end
  -- A clone of a template no block of this recipe makes: is it there now?
  local okm, smolvm = pcall(require, "smolvm")
  local dirs = okm and type(smolvm.default_paths) == "function" and smolvm.default_paths() or nil
  local function missing(sb)
    if not sb.vm.template or sb.clone_of or type(dirs) ~= "table" then return false end
    local f = io.open(dirs.template_dir .. "/" .. sb.vm.template .. "/template.json", "rb")
    if f then f:close() return false end
    return true
  end
  local nsteps = 0
  for _, sb in ipairs(sandboxes) do nsteps = nsteps + #sb.steps end
  io.stdout:write(string.format("recipe ok: %d sandbox%s, %d step%s%s%s\n", #sandboxes,
    #sandboxes == 1 and "" or "es", nsteps, nsteps == 1 and "" or "s",
    #plan > 0 and (", " .. #plan .. " image" .. (#plan == 1 and "" or "s")) or "",
    #tplan > 0 and (", " .. #tplan .. " template" .. (#tplan == 1 and "" or "s")) or ""))
  for _, sb in ipairs(sandboxes) do
    local fw = {}
    for _, f in ipairs(sb.vm.forwards) do
      fw[#fw + 1] = (f.address or "127.0.0.1") .. ":" .. f.host .. "->" .. f.guest
    end
    -- A clone has its template's machine (known when the recipe declares it).
    local mvm = sb.clone_of and sb.clone_of.vm or sb.vm
    local machine = mvm.vcpus and (string.format(", %d vcpu, %d MiB", mvm.vcpus, mvm.memory)) or ""
    io.stdout:write(string.format("  %-16s %d step%s%s%s%s%s\n", sb.name, #sb.steps,
      #sb.steps == 1 and "" or "s", machine,
      sb.vm.template and (", clone of template " .. schema.quote(sb.vm.template)
        .. (missing(sb) and " (not there now, and no template block makes it)" or "")) or "",
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
  local tsays = { ["up-to-date"] = "up to date", ["out-of-date"] = "would be made",
                  refused = "refused", unknown = "not known whether it would be made" }
  for _, p in ipairs(tplan) do
    io.stdout:write(string.format("  template %-7s image %s, %d vcpu, %d MiB, %d step%s: %s%s\n",
      p.name, p.image, p.vcpus, p.memory, p.steps, p.steps == 1 and "" or "s",
      tsays[p.state] or p.state, p.detail and (" (" .. p.detail .. ")") or ""))
  end
  io.stdout:flush()
end

local function report_invalid(errs, opts, file)
  -- A message may quote the recipe's own text (untrusted under --safe).
  local clean = {}
  for i, e in ipairs(errs) do clean[i] = sanitize(e) end
  errs = clean
  if file then file = sanitize(file) end
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
  for _, d in ipairs(declared) do declaration_facts(d) end
  return schema.validate_images(declared)
end

--- The templates a run makes (or finds up to date), in declaration order: those its
-- sandboxes are made from and, unless only one sandbox runs (--only), every other
-- declared template too.
function M.templates_to_build(templates, sandboxes, only)
  local used = {}
  for _, sb in ipairs(sandboxes) do
    if sb.vm.template then used[sb.vm.template] = true end
  end
  local out = {}
  for _, t in ipairs(templates or {}) do
    if used[t.name] or not only then out[#out + 1] = t end
  end
  return out
end

--- The images a run builds, in declaration order: those its sandboxes and the
-- templates it makes boot and, unless only one sandbox runs (--only), every other
-- declared image too.
function M.images_to_build(images, sandboxes, only, templates)
  local used = {}
  for _, sb in ipairs(sandboxes) do
    if sb.vm.image then used[sb.vm.image] = true end
  end
  for _, t in ipairs(templates or {}) do used[t.vm.image] = true end
  local out = {}
  for _, img in ipairs(images) do
    if used[img.name] or not only then out[#out + 1] = img end
  end
  return out
end

--- Validate declared templates (no VM is touched).
-- @return normalized templates (schema.validate_templates) or nil and every error
-- @return normalized templates, or nil, every error and the templates valid on their own
function M.validate_templates(declared, produced)
  for _, d in ipairs(declared) do declaration_facts(d) end
  local templates, errs, partial = schema.validate_templates(declared)
  errs = errs or {}
  check_host_files(templates or partial, errs, schema.template_prefix, produced)
  if #errs > 0 then return nil, errs, templates or partial end
  return templates
end

-- What a sandbox made from a template of this recipe must agree with: the clone has
-- the template's machine (the library refuses the same at create; here it is an
-- invalid recipe, found before anything runs).
local function check_clones(sandboxes, templates, errs)
  local by_name = {}
  for _, t in ipairs(templates) do
    if type(t.name) == "string" and not by_name[t.name] then by_name[t.name] = t end
  end
  for _, sb in ipairs(sandboxes) do
    local t = sb.vm.template and by_name[sb.vm.template]
    if t then
      local at = schema.sandbox_prefix(sb.name)
      for _, k in ipairs({ "image", "vcpus", "memory" }) do
        local v = sb.vm[k]
        if v ~= nil and v ~= t.vm[k] then
          errs[#errs + 1] = at .. k .. ": a clone has its template's " .. k .. " ("
            .. (type(t.vm[k]) == "string" and schema.quote(t.vm[k]) or tostring(t.vm[k]))
            .. (k == "memory" and " MiB" or "") .. ", template " .. schema.quote(t.name)
            .. "), got " .. (type(v) == "string" and schema.quote(v) or tostring(v))
        end
      end
      local net = sb.vm.network
      if net and net ~= "auto" and t.vm.network ~= "auto" and net ~= t.vm.network then
        errs[#errs + 1] = at .. "network: template " .. schema.quote(t.name) .. " is made on "
          .. schema.quote(t.vm.network) .. "; its clones are too, got " .. schema.quote(net)
      end
    end
  end
end

--- Validate every declaration of a recipe, of every kind (no VM or image is touched).
-- @param declared { d, ... } as smolvm.declare records them (d.kind nil: a sandbox)
-- @return { sandboxes =, images =, templates = } (normalized), or nil, every error
--   and the sandboxes that are valid on their own
function M.validate_recipe(declared)
  local lists, errs = { sandbox = {}, image = {}, template = {} }, {}
  if type(declared) ~= "table" then
    return nil, { "recipe: expected a list of declarations, got " .. schema.describe(declared) }, {}
  end
  for i, d in ipairs(declared) do
    if type(d) ~= "table" then
      errs[#errs + 1] = "declaration #" .. i .. ": expected a table, got " .. schema.describe(d)
    elseif d.kind ~= nil and not lists[d.kind] then
      errs[#errs + 1] = "declaration #" .. i .. ": unknown kind " .. schema.describe(d.kind)
    else
      local l = lists[d.kind or "sandbox"]
      l[#l + 1] = d
    end
  end
  local produced = {} -- host files that templates' downloads write, for sandboxes' uploads
  local images, ierrs = M.validate_images(lists.image)
  local templates, terrs, tpartial = M.validate_templates(lists.template, produced)
  local sandboxes, serrs, partial = M.validate(lists.sandbox, produced)
  for _, e in ipairs(serrs or {}) do errs[#errs + 1] = e end
  for _, e in ipairs(ierrs or {}) do errs[#errs + 1] = e end
  for _, e in ipairs(terrs or {}) do errs[#errs + 1] = e end
  check_clones(sandboxes or partial or {}, templates or tpartial or {}, errs)
  if #errs > 0 then return nil, errs, partial or sandboxes or {} end
  return { sandboxes = sandboxes, images = images, templates = templates }
end

-- What a --safe recipe may not declare although the schema allows it: host paths
-- (upload reads a host file, download writes one) and forwards beyond loopback.
local function safe_refusals(sandboxes, templates)
  local errs = {}
  local all = {}
  for _, t in ipairs(templates or {}) do all[#all + 1] = { t, schema.template_prefix } end
  for _, sb in ipairs(sandboxes) do all[#all + 1] = { sb, schema.sandbox_prefix } end
  for _, entry in ipairs(all) do
    local sb = entry[1]
    local prefix = entry[2](sb.name)
    for i, step in ipairs(sb.steps) do
      if step.kind == "upload" or step.kind == "download" then
        errs[#errs + 1] = prefix .. "steps[" .. i .. "]." .. step.kind .. ": host files are not "
          .. "available to --safe recipes (use write = { path =, content = } or files)"
      end
    end
    for i, f in ipairs(sb.vm.forwards or {}) do
      if type(f) == "table" and f.address and f.address ~= "127.0.0.1" then
        errs[#errs + 1] = prefix .. "forwards[" .. i .. "].address: --safe recipes forward on "
          .. "127.0.0.1 only, got " .. schema.quote(f.address)
      end
    end
  end
  return errs
end

--- Validate and run what the file declared. Returns the exit status (0 when the
-- file declared nothing, without output).
-- @param declared (--safe) what the recipe declared, evaluated elsewhere (plain data,
--   see smolvm.declare); default: what the file declared in this state
function M.finish(declared)
  local st = state or new_state()
  state = nil
  _G.sandbox, _G.image, _G.template = nil, nil, nil
  if declared ~= nil then
    st.declared, st.checks = declared, {}
  end
  if type(st.declared) == "table" and #st.declared == 0 then return M.EXIT_OK end
  local first = type(st.declared) == "table" and st.declared[1]
  local file = type(first) == "table" and type(first.source) == "string" and first.source or nil
  local recipe, errs, partial = M.validate_recipe(st.declared)
  local sandboxes, images = recipe and recipe.sandboxes, recipe and recipe.images
  local templates = recipe and recipe.templates
  if not recipe then
    -- what --slurm would refuse too, so every mistake shows at once
    if st.opts.slurm then
      for _, e in ipairs(require("smolvm.slurm").validate(partial or {}, st.opts, st.checks)) do
        errs[#errs + 1] = e
      end
    end
    report_invalid(errs, st.opts, file)
    return M.EXIT_INVALID
  end
  -- A clone's machine is its template's: known here when the recipe declares it.
  local by_name = {}
  for _, t in ipairs(templates or {}) do by_name[t.name] = t end
  for _, sb in ipairs(sandboxes) do
    if sb.vm.template then sb.clone_of = by_name[sb.vm.template] end
  end
  if st.opts.safe then
    errs = safe_refusals(sandboxes, templates)
    if #errs > 0 then
      report_invalid(errs, st.opts, file)
      return M.EXIT_INVALID
    end
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
    errs = slurm.validate(sandboxes, st.opts, st.checks, templates)
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
  local make = M.templates_to_build(templates, sandboxes, st.opts.only)
  local build = M.images_to_build(images, sandboxes, st.opts.only, make)
  if st.opts.check then
    check_summary(sandboxes, st.opts, build, make)
    return M.EXIT_OK
  end
  local opts = {}
  for k, v in pairs(st.opts) do opts[k] = v end
  opts.host_checks = st.checks
  opts.images = build
  opts.templates = make
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
