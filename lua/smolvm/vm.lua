-- SPDX-License-Identifier: MIT
--- smolvm.vm: the VM object of the Lua API (see docs/lua-api.md).
--
-- A VM object is a table wrapping a "smolvm.vm" userdata from smolvm.core. This file
-- holds the policy: option validation (smolvm.schema), units (seconds here,
-- milliseconds in C), defaults, and who deletes what.
--
-- Ownership: a VM made by smolvm.VM{} owns its VM. Closing it (vm:close(), leaving a
-- `local vm <close>` scope, or garbage collection, including at interpreter exit)
-- stops and deletes the VM, unless vm:keep() was called or it is deleted already. A VM
-- from VM.from_id() owns nothing: closing it only frees the handle. The deletion on
-- collection is done by the userdata's own __gc, so it also happens under LuaJIT,
-- whose tables have no __gc.
--
-- Pure Lua for 5.1/LuaJIT and 5.4.

local core = require "smolvm.core"
local schema = require "smolvm.schema"
local proc = require "smolvm.proc"

local unpack = table.unpack or unpack

-- Inside nginx, where it can wait on cosockets, a VM's waits go through them
-- (smolvm.ngx); everywhere else the binding's blocking calls are used as they are.
local ngx_backend
local function in_nginx()
  if rawget(_G, "ngx") == nil then return nil end
  ngx_backend = ngx_backend or require "smolvm.ngx"
  ngx_backend.prepare()
  return ngx_backend.active() and ngx_backend or nil
end

local function pack(...)
  return { n = select("#", ...), ... }
end

local M = {}

local DEFAULT_START_TIMEOUT = 60
local DEFAULT_STOP_TIMEOUT = 5
local MAX_TIMEOUT = 24 * 3600

local methods = {}
local VM_mt = { __name = "smolvm.vm" }

-- A Lua-side error about an argument, blamed on the caller of the public method.
local function argerror(level, fmt, ...)
  error(string.format(fmt, ...), level + 1)
end

local function describe(v)
  return schema.describe(v)
end

-- Seconds (number > 0) to whole milliseconds, at least 1.
local function to_ms(secs)
  local ms = math.floor(secs * 1000 + 0.5)
  if ms < 1 then ms = 1 end
  return ms
end

local function check_timeout(where, t, default, level)
  if t == nil then return to_ms(default) end
  if type(t) ~= "number" or t ~= t or t <= 0 or t > MAX_TIMEOUT then
    argerror(level + 1, "%s: timeout: expected number of seconds > 0 and <= %d, got %s",
             where, MAX_TIMEOUT, describe(t))
  end
  return to_ms(t)
end

-- Check that opts is nil or a table whose keys are all in `known` (a list).
local function check_opts(where, opts, known, level)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    argerror(level + 1, "%s: expected table of options, got %s", where, describe(opts))
  end
  local set = {}
  for _, k in ipairs(known) do set[k] = true end
  for k in pairs(opts) do
    if not set[k] then
      local s = schema.suggest(k, known)
      argerror(level + 1, "%s: %s: unknown option%s", where, tostring(k),
               s and (" (did you mean \"" .. s .. "\"?)") or "")
    end
  end
  return opts
end

-- The userdata of a VM object; raises at the caller of the public method (level 3)
-- for a bad self or a closed VM.
local function ud(self, level)
  level = level or 3
  local u = type(self) == "table" and rawget(self, "_ud")
  if not u then error("bad self: expected a smolvm VM object (use vm:method())", level) end
  if u:closed() then error("attempt to use a closed vm", level) end
  return u
end

local function wrap(u)
  return setmetatable({ _ud = u, id = u:id() }, VM_mt)
end

VM_mt.__index = function(self, k)
  local m = methods[k]
  if m ~= nil then return m end
  if k == "status" then
    return ud(self, 3):status()
  elseif k == "ip" then
    local info = ud(self, 3):info()
    return info and info.ip or nil
  end
  return nil
end

VM_mt.__tostring = function(self)
  return "smolvm.vm (" .. tostring(rawget(self, "id")) .. ")"
end

-- `local vm <close> = smolvm.VM{...}` (5.4): same as vm:close(), never raises.
VM_mt.__close = function(self)
  pcall(methods.close, self)
end

-- The log handler smolvm.configure{ log = fn } set (nil: the library's lines are not
-- asked for). Lines logged during a call are passed on once it returns.
local log_handler

function M.set_log_handler(fn)
  log_handler = fn
end

local function flush_log(u)
  if not log_handler then return end
  for _, e in ipairs(u:take_log()) do
    pcall(log_handler, e.level, e.message)
  end
end

-- Call u[name](u, ...) and pass its log lines on; its results unchanged.
local function logged(u, name, ...)
  local r = pack(u[name](u, ...))
  flush_log(u)
  return unpack(r, 1, r.n)
end

--- vm:start{ timeout = 60 } -> true | nil, msg, code
function methods.start(self, opts)
  local u = ud(self)
  opts = check_opts("start", opts, { "timeout" }, 2)
  return logged(u, "start", check_timeout("start", opts.timeout, DEFAULT_START_TIMEOUT, 2))
end

--- vm:start_begin{ timeout = 60 } -> true | nil, msg, code
--- vm:start_finish() -> true | nil, msg, code
--- vm:start() in two halves, so several VMs boot at once: begin starts the VM and
--- returns; finish waits for it (the timeout counts from begin). Call begin on each
--- VM, then finish on each.
function methods.start_begin(self, opts)
  local u = ud(self)
  opts = check_opts("start_begin", opts, { "timeout" }, 2)
  return logged(u, "start_begin",
                check_timeout("start_begin", opts.timeout, DEFAULT_START_TIMEOUT, 2))
end

function methods.start_finish(self)
  return logged(ud(self), "start_finish")
end

--- vm:stop{ timeout = 5 } -> true | nil, msg, code
function methods.stop(self, opts)
  local u = ud(self)
  opts = check_opts("stop", opts, { "timeout" }, 2)
  return u:stop(check_timeout("stop", opts.timeout, DEFAULT_STOP_TIMEOUT, 2))
end

--- vm:delete() -> true | nil, msg, code. Stops first if running. The object stays
--- usable for id/status ("deleted") until closed.
function methods.delete(self)
  return ud(self):delete()
end

local function check_env(where, env, level)
  if env == nil then return nil end
  if type(env) ~= "table" then
    argerror(level + 1, "%s: env: expected table { NAME = value }, got %s", where, describe(env))
  end
  local out = {}
  for k, v in pairs(env) do
    if type(k) ~= "string" or not k:match(schema.ENV_NAME_PATTERN) then
      argerror(level + 1, "%s: env: bad name %s (expected [A-Za-z_][A-Za-z0-9_]*)",
               where, describe(k))
    end
    if type(v) == "number" then
      v = schema.num_str(v)
    elseif type(v) ~= "string" then
      argerror(level + 1, "%s: env.%s: expected string or number, got %s", where, k, describe(v))
    end
    out[k] = v
  end
  return out
end

local RUN_OPTIONS = { "timeout", "env", "cwd", "stdin", "on_output" }

--- vm:run(cmd, { timeout=, env=, cwd=, stdin=, on_output=function(stream, chunk) end })
---   -> { stdout, stderr, output, exit_code, ok, signal?, truncated, duration_ms }
---    | nil, msg, code   (a command that exits non-zero is not a failure)
function methods.run(self, cmd, opts)
  local u = ud(self)
  if type(cmd) ~= "string" then
    argerror(2, "run: cmd: expected string, got %s", describe(cmd))
  end
  opts = check_opts("run", opts, RUN_OPTIONS, 2)
  local c = {}
  if opts.timeout ~= nil then c.timeout_ms = check_timeout("run", opts.timeout, nil, 2) end
  c.env = check_env("run", opts.env, 2)
  if opts.cwd ~= nil then
    if type(opts.cwd) ~= "string" or opts.cwd == "" then
      argerror(2, "run: cwd: expected non-empty string, got %s", describe(opts.cwd))
    end
    c.cwd = opts.cwd
  end
  if opts.stdin ~= nil then
    if type(opts.stdin) ~= "string" then
      argerror(2, "run: stdin: expected string, got %s", describe(opts.stdin))
    end
    c.stdin = opts.stdin
  end
  if opts.on_output ~= nil then
    if type(opts.on_output) ~= "function" then
      argerror(2, "run: on_output: expected function(stream, chunk), got %s",
               describe(opts.on_output))
    end
    c.on_output = opts.on_output
  end
  return u:run(cmd, c)
end

local SPAWN_OPTIONS = { "env", "cwd", "stdin", "pty", "timeout", "keep" }

--- vm:spawn(cmd, { env=, cwd=, stdin=true, pty={ rows=24, cols=80 }, timeout=, keep=true })
---   -> proc | nil, msg, code      returns once the process runs (proc.pid is known)
--- keep (default true): the process outlives this proc object (vm:attach(pid) finds it
--- again, from any process); keep = false kills it when the object is closed.
function methods.spawn(self, cmd, opts)
  local u = ud(self)
  if type(cmd) ~= "string" or cmd == "" then
    argerror(2, "spawn: cmd: expected non-empty string, got %s", describe(cmd))
  end
  opts = check_opts("spawn", opts, SPAWN_OPTIONS, 2)
  local c = { env = check_env("spawn", opts.env, 2) }
  if opts.timeout ~= nil then c.timeout_ms = check_timeout("spawn", opts.timeout, nil, 2) end
  if opts.cwd ~= nil then
    if type(opts.cwd) ~= "string" or opts.cwd == "" then
      argerror(2, "spawn: cwd: expected non-empty string, got %s", describe(opts.cwd))
    end
    c.cwd = opts.cwd
  end
  if opts.stdin ~= nil then
    if type(opts.stdin) ~= "boolean" then
      argerror(2, "spawn: stdin: expected boolean, got %s", describe(opts.stdin))
    end
    c.stdin = opts.stdin
  end
  if opts.pty ~= nil then
    local p = opts.pty
    if type(p) ~= "table" then
      argerror(2, "spawn: pty: expected table { rows=, cols= }, got %s", describe(p))
    end
    for k in pairs(p) do
      if k ~= "rows" and k ~= "cols" then argerror(2, "spawn: pty.%s: unknown option", tostring(k)) end
    end
    local rows, cols = p.rows or 24, p.cols or 80
    if not schema.is_integer(rows) or rows < 1 or rows > 1000 then
      argerror(2, "spawn: pty.rows: expected integer 1..1000, got %s", describe(rows))
    end
    if not schema.is_integer(cols) or cols < 1 or cols > 1000 then
      argerror(2, "spawn: pty.cols: expected integer 1..1000, got %s", describe(cols))
    end
    c.pty_rows, c.pty_cols = math.floor(rows), math.floor(cols)
  end
  if opts.keep ~= nil and type(opts.keep) ~= "boolean" then
    argerror(2, "spawn: keep: expected boolean, got %s", describe(opts.keep))
  end
  c.keep = opts.keep ~= false
  local p, msg, code = u:spawn(cmd, c)
  if not p then return nil, msg, code end
  return proc.wrap(p)
end

--- vm:attach(pid) -> proc | nil, msg, code: follow a process started earlier (by any
--- process): its kept output (the last 64 KiB) first, then live output.
function methods.attach(self, pid)
  local u = ud(self)
  if not schema.is_integer(pid) or pid < 1 then
    argerror(2, "attach: pid: expected positive integer, got %s", describe(pid))
  end
  local p, msg, code = u:attach(math.floor(pid))
  if not p then return nil, msg, code end
  return proc.wrap(p)
end

--- vm:processes() -> { { pid=, cmd=, running=, exit_code=, signal=, started_ms= }, ... }
function methods.processes(self)
  return ud(self):processes()
end

local function check_str(where, name, v, level)
  if type(v) ~= "string" or v == "" then
    argerror(level + 1, "%s: %s: expected non-empty string, got %s", where, name, describe(v))
  end
  return v
end

local function check_port(where, name, v, level)
  if not schema.is_integer(v) or v < 1 or v > 65535 then
    argerror(level + 1, "%s: %s: expected integer 1..65535, got %s", where, name, describe(v))
  end
  return math.floor(v)
end

--- vm:upload(local_path, guest_path) -> true | nil, msg, code
function methods.upload(self, local_path, remote)
  local u = ud(self)
  return u:upload(check_str("upload", "local", local_path, 2),
                  check_str("upload", "remote", remote, 2))
end

--- vm:download(guest_path, local_path) -> true | nil, msg, code
function methods.download(self, remote, local_path)
  local u = ud(self)
  return u:download(check_str("download", "remote", remote, 2),
                    check_str("download", "local", local_path, 2))
end

--- vm:write_file(guest_path, data) -> true | nil, msg, code
function methods.write_file(self, path, data)
  local u = ud(self)
  check_str("write_file", "path", path, 2)
  if type(data) ~= "string" then
    argerror(2, "write_file: data: expected string, got %s", describe(data))
  end
  return u:write_file(path, data)
end

--- vm:read_file(guest_path) -> data | nil, msg, code
function methods.read_file(self, path)
  local u = ud(self)
  return u:read_file(check_str("read_file", "path", path, 2))
end

--- vm:forward(host_port, guest_port [, host_address]) -> true | nil, msg, code
function methods.forward(self, host_port, guest_port, host_address)
  local u = ud(self)
  host_port = check_port("forward", "host_port", host_port, 2)
  guest_port = check_port("forward", "guest_port", guest_port, 2)
  if host_address ~= nil and (type(host_address) ~= "string" or not schema.valid_ipv4(host_address)) then
    argerror(2, "forward: host_address: expected IPv4 address string, got %s", describe(host_address))
  end
  return u:forward(host_port, guest_port, host_address)
end

--- vm:unforward(host_port) -> true | nil, msg, code
function methods.unforward(self, host_port)
  local u = ud(self)
  return u:unforward(check_port("unforward", "host_port", host_port, 2))
end

--- vm:set_egress(policy) -> true | nil, msg, code: "internet" | "none" |
--- { allow = { "pypi.org", "*.pythonhosted.org", "198.51.100.0/24" } }. On a running VM
--- it takes effect at once; the next start uses it too. A bad policy raises.
function methods.set_egress(self, policy)
  local u = ud(self)
  local norm, err = schema.check_egress(policy)
  if norm == nil then argerror(2, "set_egress: %s", err) end
  return u:set_egress(norm)
end

--- vm:events{ kind = "egress-denied" } -> { { time=, kind=, dst=, port=, protocol=, name= }, ... }
--- | nil, msg, code: the VM's events, oldest first (time in ms since the epoch).
function methods.events(self, opts)
  local u = ud(self)
  opts = check_opts("events", opts, { "kind" }, 2)
  if opts.kind ~= nil and (type(opts.kind) ~= "string" or opts.kind == "" or #opts.kind > 64) then
    argerror(2, "events: kind: expected non-empty string (e.g. \"egress-denied\"), got %s",
             describe(opts.kind))
  end
  return u:events(opts.kind)
end

--- vm:info() -> table (id, status, config, ip, ports, pid, paths) | nil, msg, code
function methods.info(self)
  return ud(self):info()
end

--- vm:keep() -> vm | nil, msg, code: closing this object will no longer delete the VM,
--- and the VM no longer dies with this process (its ttl still holds).
function methods.keep(self)
  local ok, msg, code = ud(self):keep()
  if not ok then return nil, msg, code end
  return self
end

--- vm:pause() / vm:resume() -> true | nil, msg, code. A paused VM (status "paused")
--- uses no CPU; its commands fail with "ESTATE" until it is resumed.
function methods.pause(self)
  return ud(self):pause()
end

function methods.resume(self)
  return ud(self):resume()
end

--- vm:suspend() -> true | nil, msg, code: memory to disk, the VMM gone (status
--- "suspended", its address kept); vm:start() resumes it where it was.
function methods.suspend(self)
  return ud(self):suspend()
end

--- vm:snapshot(name) -> true | nil, msg, code: a template of the running VM (memory,
--- devices, disk); it goes on running. smolvm.VM{ template = name } makes clones.
function methods.snapshot(self, name)
  local u = ud(self)
  if not schema.valid_id(name) then
    argerror(2, "snapshot: name: expected string matching %s, got %s", schema.ID_DESC,
             describe(name))
  end
  return u:snapshot(name)
end

--- vm:fork{ count = 1, timeout = 60 } -> { vm, ... } | nil, msg, code: count clones of
--- the running VM, each running commands when this returns; the VM goes on. The clones
--- are owned like VMs made by smolvm.VM{} (deleted with their objects unless kept).
function methods.fork(self, opts)
  local u = ud(self)
  opts = check_opts("fork", opts, { "count", "timeout" }, 2)
  local count = opts.count == nil and 1 or opts.count
  if type(count) ~= "number" or count ~= math.floor(count) or count < 1 or count > 64 then
    argerror(2, "fork: count: expected integer 1..64, got %s", describe(opts.count))
  end
  local list, msg, code = u:fork(count, check_timeout("fork", opts.timeout,
                                                      DEFAULT_START_TIMEOUT, 2))
  if not list then return nil, msg, code end
  local out = {}
  for i, c in ipairs(list) do out[i] = wrap(c) end
  return out
end

--- vm:close() -> true | nil, msg, code. Frees the handle; an owned VM (made by VM{},
--- not kept, not deleted) is stopped and deleted first. Idempotent.
function methods.close(self)
  local u = type(self) == "table" and rawget(self, "_ud")
  if not u then error("bad self: expected a smolvm VM object (use vm:method())", 2) end
  return u:close()
end

------------------------------------------------------------------------ constructors

-- Create from options; validation errors raise at `level` (1 = caller of new).
function M.new(opts, level)
  local norm, errs = schema.validate_vm(opts)
  if not norm then
    error(table.concat(errs, "\n"), level + 1)
  end
  -- The binding's units: ttl in milliseconds; a VM made here dies with this process
  -- unless kept.
  local c = {}
  for k, v in pairs(norm) do c[k] = v end
  if norm.ttl then c.ttl_ms = to_ms(norm.ttl) end
  c.ttl = nil
  c.ephemeral = true
  local nb = in_nginx()
  local u, msg, code
  if nb then u, msg, code = nb.create(c) else u, msg, code = core.vm_create(c) end
  if not u then return nil, msg, code end
  return wrap(u)
end

local VM = {}

--- VM.from_id(id) -> vm | nil, msg, code (the object does not own the VM)
function VM.from_id(id)
  if not schema.valid_id(id) then
    error("from_id: id: expected string matching " .. schema.ID_DESC .. ", got " .. describe(id), 2)
  end
  local nb = in_nginx()
  local u, msg, code
  if nb then u, msg, code = nb.open(id) else u, msg, code = core.vm_open(id) end
  if not u then return nil, msg, code end
  return wrap(u)
end

--- VM.list() -> { info, ... } | nil, msg, code
function VM.list()
  local nb = in_nginx()
  if nb then return nb.list() end
  return core.list()
end

--- Is `v` a VM object?
function VM.is_vm(v)
  return getmetatable(v) == VM_mt
end

setmetatable(VM, {
  __call = function(_, opts) return M.new(opts, 2) end,
})

M.VM = VM
M.methods = methods
M.metatable = VM_mt

--- smolvm.with(opts, fn): create a VM, start it, call fn(vm), then always stop and
--- delete it (also when fn raises, or keep() was called). Returns fn's results, or
--- re-raises fn's error after the teardown; nil, msg, code when create/start fails.
function M.with(opts, fn)
  if type(fn) ~= "function" then
    error("with: expected function as argument #2, got " .. describe(fn), 2)
  end
  local vm, msg, code = M.new(opts, 2)
  if not vm then return nil, msg, code end
  local failed = {}
  local res = pack(pcall(function()
    local ok, e, c = vm:start()
    if not ok then return failed, e, c end
    return fn(vm)
  end))
  -- Teardown, each part on its own so one failure does not skip the rest.
  pcall(function() if vm.status == "running" then vm:stop() end end)
  pcall(methods.delete, vm)
  pcall(methods.close, vm)
  if not res[1] then error(res[2], 0) end
  if res[2] == failed then return nil, res[3], res[4] end
  return unpack(res, 2, res.n)
end

return M
