-- SPDX-License-Identifier: MIT
--- `smolvm`: the command line for what users do between recipes (scripts/smolvm).
--
-- Docker/podman habits: `smolvm ls`, `inspect`, `exec ID -- CMD...` (`-it`: on a
-- terminal), `shell`, `ps ID`, `attach ID PID`, `cp` with ID:path, `logs [-f]`,
-- `start`, `stop`, `pause`, `resume`, `suspend`, `snapshot`, `rm [-f]`, `prune`,
-- `image ...`, `template ...`, `doctor`. Exit status: 0 done,
-- 1 the operation failed, 2 bad usage, 3 the host cannot run sandboxes; `exec`
-- returns the command's own status, or 125 when smolvm itself failed (as docker).
-- Every failure prints one line `smolvm: <what failed>` and, when the fix is known,
-- a `hint:` line.

local json = require "smolvm.json"
local sys = require "smolvm.sys"

local M = {}

local EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_HOST, EXIT_EXEC = 0, 1, 2, 3, 125

local function eprint(...)
  io.stderr:write(table.concat({ ... }), "\n")
  io.stderr:flush()
end

local function fail(msg, hint, status)
  eprint("smolvm: ", msg)
  if hint then eprint("hint: ", hint) end
  return status or EXIT_FAIL
end

local function usage_error(msg, cmd)
  return fail(msg, "see 'smolvm help" .. (cmd and (" " .. cmd) or "") .. "'", EXIT_USAGE)
end

local function load_smolvm()
  local ok, smolvm = pcall(require, "smolvm")
  if not ok then
    return nil, fail("cannot load the smolvm Lua binding: " .. tostring(smolvm):match("^[^\n]*"),
      "run through smolvm-lua, or build it first: cmake --build build", EXIT_HOST)
  end
  -- The library's warnings on stderr (the first start under TCG says what it means).
  if smolvm.configure then
    smolvm.configure{ log = function(level, msg) eprint("smolvm: ", level, ": ", msg) end }
  end
  return smolvm
end

local shell_quote, is_tty = sys.shell_quote, sys.isatty

--- The fields of vm:info() this command reads (docs/c-api.md, "JSON documents").
-- tests/lua/cli_info_spec.lua checks each against a real info(). `networks` lists
-- where a field is present when it is not for every VM.
M.INFO_FIELDS = {
  "id", "status", "backend", "config.memory", "created_at", "dir", "console_log",
  "host_key", "ports",
  { "ip", networks = { "user", "nat" } },
  { "ssh_port", networks = { "user" } },
}

local function open_vm(smolvm, id)
  local vm, err, code = smolvm.VM.from_id(id)
  if not vm then
    if code == "ENOENT" then
      return nil, fail("no such sandbox '" .. id .. "'", "'smolvm ls' lists the sandboxes")
    end
    return nil, fail("open '" .. id .. "': " .. tostring(err), code == "EDB"
      and "the state database is unusable; check $SMOLVM_STATE_DIR" or nil)
  end
  return vm
end

local function info_of(vm)
  local ok, info = pcall(function() return vm:info() end)
  if ok and type(info) == "table" then return info end
  return { id = vm.id, status = vm.status, ip = vm.ip }
end

-- Parse "-x", "--long", "--long=value" options, stopping at "--" or the first
-- operand when `stop_at_operand`. spec: { ["-f"] = "force", ["--tail"] = { "tail", true } }
local function parse(args, spec, stop_at_operand)
  local opts, rest = {}, {}
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--" then
      for j = i + 1, #args do rest[#rest + 1] = args[j] end
      opts["--"] = true
      break
    elseif a:sub(1, 1) == "-" and a ~= "-" then
      local name, val = a:match("^(%-%-[^=]+)=(.*)$")
      name = name or a
      local s = spec[name]
      if not s then return nil, "unknown option '" .. name .. "'" end
      if type(s) == "table" then
        if val == nil then
          i = i + 1
          val = args[i]
          if val == nil then return nil, "option '" .. name .. "' needs a value" end
        end
        if s.multi then
          opts[s[1]] = opts[s[1]] or {}
          table.insert(opts[s[1]], val)
        else
          opts[s[1]] = val
        end
      else
        opts[s] = true
      end
    else
      rest[#rest + 1] = a
      if stop_at_operand then
        for j = i + 1, #args do rest[#rest + 1] = args[j] end
        break
      end
    end
    i = i + 1
  end
  return opts, rest
end

-- info.ports as ADDRESS:HOST->GUEST,... (the user's forwards, not smolvm's ssh one).
local function fmt_forwards(ports)
  local parts = {}
  for _, p in ipairs(type(ports) == "table" and ports or {}) do
    if type(p) == "table" and p.kind ~= "ssh" then
      parts[#parts + 1] = tostring(p.host_address) .. ":" .. tostring(p.host_port) .. "->"
        .. tostring(p.guest_port)
    end
  end
  return table.concat(parts, ",")
end

--- fmt_age(created_at_ms [, now_s]) -> "42s ago", "5m ago", "3h ago", "2d ago".
-- created_at is wall-clock milliseconds (the library's timestamps); now_s is the
-- wall clock in seconds (default os.time()).
function M.fmt_age(ms, now_s)
  if type(ms) ~= "number" then return "" end
  local d = math.floor(now_s or os.time()) - math.floor(ms / 1000)
  if d < 0 then d = 0 end
  if d < 60 then return d .. "s ago" end
  if d < 3600 then return math.floor(d / 60) .. "m ago" end
  if d < 86400 then return math.floor(d / 3600) .. "h ago" end
  return math.floor(d / 86400) .. "d ago"
end
local fmt_age = M.fmt_age

------------------------------------------------------------------------ commands

local commands = {}
local order = {}

-- rows (arrays of strings, the first the header) in columns as wide as their widest
-- cell, three spaces apart, on stdout.
local function print_columns(rows)
  local w = {}
  for _, r in ipairs(rows) do
    for i, c in ipairs(r) do w[i] = math.max(w[i] or 0, #c) end
  end
  for _, r in ipairs(rows) do
    local cells = {}
    for i, c in ipairs(r) do cells[i] = i < #r and (c .. string.rep(" ", w[i] - #c)) or c end
    io.stdout:write((table.concat(cells, "   "):gsub("%s+$", "")), "\n")
  end
end

local function command(name, usage, summary, fn)
  commands[name] = { name = name, usage = usage, summary = summary, fn = fn }
  order[#order + 1] = name
end

command("ls", "ls [--json] [-q]", "List sandboxes (ID, status, IP, forwards, backend)",
function(args)
  local o, rest = parse(args, { ["--json"] = "json", ["-q"] = "quiet", ["--quiet"] = "quiet",
                                ["-a"] = "all", ["--all"] = "all" })
  if not o then return usage_error(rest, "ls") end
  if #rest > 0 then return usage_error("ls takes no arguments", "ls") end
  local smolvm, st = load_smolvm()
  if not smolvm then return st end
  local ok, list, err = pcall(smolvm.VM.list)
  if not ok or type(list) ~= "table" then
    return fail("list sandboxes: " .. tostring(ok and err or list))
  end
  table.sort(list, function(a, b) return tostring(a.id) < tostring(b.id) end)
  if o.json then
    io.stdout:write(json.encode(json.array(list)), "\n")
    return EXIT_OK
  end
  if o.quiet then
    for _, info in ipairs(list) do io.stdout:write(tostring(info.id), "\n") end
    return EXIT_OK
  end
  local rows = { { "ID", "STATUS", "IP", "FORWARDS", "BACKEND", "MEMORY", "CREATED" } }
  for _, info in ipairs(list) do
    rows[#rows + 1] = {
      tostring(info.id), tostring(info.status or ""),
      tostring(info.ip or "-"),
      fmt_forwards(info.ports),
      tostring(info.backend or ""),
      tostring(type(info.config) == "table" and info.config.memory or ""),
      fmt_age(info.created_at),
    }
  end
  print_columns(rows)
  return EXIT_OK
end)

command("inspect", "inspect ID...", "Show everything known about sandboxes (JSON)",
function(args)
  if #args == 0 then return usage_error("inspect needs a sandbox ID", "inspect") end
  local smolvm, st = load_smolvm()
  if not smolvm then return st end
  local out, status = json.array(), EXIT_OK
  for _, id in ipairs(args) do
    local vm, s = open_vm(smolvm, id)
    if vm then out[#out + 1] = info_of(vm) else status = s end
  end
  if #out > 0 then io.stdout:write(json.encode(out, { indent = "  " }), "\n") end
  return status
end)

--- fmt_event(event) -> one line: "2026-01-02T03:04:05.678Z  egress-denied  tcp 198.51.100.3:8000"
-- (a refused DNS query adds "name=NAME"; other kinds show their detail).
function M.fmt_event(e)
  local t = tonumber(e.time) or 0
  local when = os.date("!%Y-%m-%dT%H:%M:%S", math.floor(t / 1000))
    .. string.format(".%03dZ", math.floor(t % 1000))
  local what
  if e.kind == "egress-denied" then
    what = tostring(e.protocol or "?") .. " " .. tostring(e.dst or "?")
      .. ((tonumber(e.port) or 0) > 0 and (":" .. tostring(e.port)) or "")
      .. (e.name and (" name=" .. tostring(e.name)) or "")
  else
    what = e.detail and tostring(e.detail) or ""
  end
  return (when .. "  " .. tostring(e.kind) .. (what ~= "" and ("  " .. what) or ""))
    :gsub("%c", " ")
end

command("events", "events [--kind KIND] [--json] ID",
  "Show a sandbox's events, oldest first (--kind egress-denied: refused connections and names)",
function(args)
  local o, rest = parse(args, { ["--kind"] = { "kind" }, ["--json"] = "json" })
  if not o then return usage_error(rest, "events") end
  if #rest ~= 1 then return usage_error("events needs one sandbox ID", "events") end
  local smolvm, st = load_smolvm()
  if not smolvm then return st end
  local vm, s = open_vm(smolvm, rest[1])
  if not vm then return s end
  local list, err = vm:events{ kind = o.kind }
  if not list then return fail("events of '" .. rest[1] .. "': " .. tostring(err)) end
  if o.json then
    io.stdout:write(json.encode(json.array(list)), "\n")
    return EXIT_OK
  end
  for _, e in ipairs(list) do io.stdout:write(M.fmt_event(e), "\n") end
  return EXIT_OK
end)

-- -e NAME=VALUE... -> env table (nil when none) | nil, usage message
local function parse_env(list, cmd)
  local env
  for _, kv in ipairs(list or {}) do
    local k, v = kv:match("^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
    if not k then return nil, usage_error("-e expects NAME=VALUE, got '" .. kv .. "'", cmd) end
    env = env or {}
    env[k] = v
  end
  return env
end

-- -t SECONDS -> number (nil when not given) | nil, usage status
local function parse_timeout(t, cmd)
  if t == nil then return nil end
  local n = tonumber(t)
  if not n or n <= 0 then return nil, usage_error("-t expects seconds > 0", cmd) end
  return n
end

-- A command's words as one shell command line, quoted word by word.
local command_line = sys.command_line

-- Pass a run result through as our own output and exit status.
local function emit_result(r)
  io.stdout:write(r.stdout or "")
  io.stdout:flush()
  io.stderr:write(r.stderr or "")
  io.stderr:flush()
  if r.exit_code == nil or r.exit_code < 0 then return 128 + 9 end
  return r.exit_code
end

-- The transport a VM's commands use ("agent" or "ssh"), from its info.
local function transport_of(info)
  return type(info.config) == "table" and info.config.transport or "ssh"
end

local function is_running(id, info)
  if info.status ~= "running" then
    return nil, fail("sandbox '" .. id .. "' is " .. tostring(info.status),
      "it must be running; kept recipe sandboxes stay running until 'smolvm stop'")
  end
  return true
end

local ssh_session -- below: an interactive ssh session (transport "ssh")
local SHELL_CMD = "if [ -x /bin/bash ]; then exec /bin/bash -l; else exec /bin/sh -l; fi"

-- `exec -it` and `shell`: a terminal session on a PTY in the guest.
local function terminal_session(vm, id, cmd, opts, failure_status)
  local info = info_of(vm)
  local ok, st = is_running(id, info)
  if not ok then return failure_status or st end
  if transport_of(info) == "ssh" then
    return ssh_session(info, id, cmd, failure_status)
  end
  local session = require "smolvm.session"
  -- bash when the image has it (people want it), else sh; a login shell either way.
  local status, err, code = session.terminal(vm, cmd or SHELL_CMD, opts)
  if not status then
    return fail((cmd and "exec" or "shell") .. " in '" .. id .. "': " .. tostring(err),
      code == "ESTATE" and "start it first, or check 'smolvm ls'" or nil, failure_status)
  end
  return status
end

command("exec", "exec [-e NAME=VALUE]... [-w DIR] [-t SECONDS] [-i] [--tty|-it] ID -- CMD [ARG...]",
  "Run a command in a running sandbox; exits with its status (-it: on a terminal)",
function(args)
  local o, rest = parse(args, {
    ["-e"] = { "env", multi = true }, ["--env"] = { "env", multi = true },
    ["-w"] = { "cwd" }, ["--workdir"] = { "cwd" },
    ["-t"] = { "timeout" }, ["--timeout"] = { "timeout" },
    ["-i"] = "stdin", ["--interactive"] = "stdin",
    ["--tty"] = "tty", ["-it"] = "tty", ["-ti"] = "tty",
  }, true)
  if not o then return usage_error(rest, "exec") end
  if o.timeout and not tonumber(o.timeout) then
    return usage_error("-t expects seconds > 0, got '" .. o.timeout .. "' (a terminal is -it or --tty)", "exec")
  end
  local id = table.remove(rest, 1)
  if rest[1] == "--" then table.remove(rest, 1) end
  if not id or #rest == 0 then
    return usage_error("usage: smolvm exec ID -- CMD [ARG...]", "exec")
  end
  local env, bad = parse_env(o.env, "exec")
  if bad then return bad end
  local timeout, badt = parse_timeout(o.timeout, "exec")
  if badt then return badt end
  if o.tty and timeout then
    return usage_error("-t SECONDS (a timeout) does not apply to a terminal session (-it)", "exec")
  end
  local smolvm = load_smolvm()
  if not smolvm then return EXIT_EXEC end
  local vm = open_vm(smolvm, id)
  if not vm then return EXIT_EXEC end
  if o.tty then
    return terminal_session(vm, id, command_line(rest), { env = env, cwd = o.cwd }, EXIT_EXEC)
  end
  local stdin
  if o.stdin or not is_tty(0) then stdin = io.stdin:read("*a") end
  local r, err, code = vm:run(command_line(rest), { timeout = timeout, env = env,
                                                    cwd = o.cwd, stdin = stdin })
  if not r then
    local hint
    if code == "ESTATE" and tostring(err):find("paused", 1, true) then
      hint = "resume it first: smolvm resume " .. id
    elseif code == "ESTATE" then hint = "start it first, or check 'smolvm ls'"
    elseif code == "ETIMEDOUT" then hint = "raise the limit with -t SECONDS" end
    return fail("exec in '" .. id .. "': " .. tostring(err), hint, EXIT_EXEC)
  end
  return emit_result(r)
end)

command("run", "run [--name ID] [--template NAME] [-m MIB] [--cpus N] [--network MODE] "
  .. "[-e NAME=VALUE]... [-w DIR] [-t SECONDS] [-i] [--keep] -- CMD [ARG...]",
  "Run a command in a new sandbox (--template: a clone), then delete it (--keep: leave it running)",
function(args)
  local o, rest = parse(args, {
    ["--name"] = { "name" }, ["--template"] = { "template" },
    ["-m"] = { "memory" }, ["--memory"] = { "memory" },
    ["--cpus"] = { "vcpus" }, ["--network"] = { "network" },
    ["-e"] = { "env", multi = true }, ["--env"] = { "env", multi = true },
    ["-w"] = { "cwd" }, ["--workdir"] = { "cwd" },
    ["-t"] = { "timeout" }, ["--timeout"] = { "timeout" },
    ["-i"] = "stdin", ["--interactive"] = "stdin", ["--keep"] = "keep",
  })
  if not o then return usage_error(rest, "run") end
  if #rest == 0 then return usage_error("usage: smolvm run [OPTIONS] -- CMD [ARG...]", "run") end
  -- Not-a-number strings go through as given, so the schema names the field.
  local vmopts = { id = o.name, network = o.network, template = o.template,
                   memory = o.memory and (tonumber(o.memory) or o.memory) or nil,
                   vcpus = o.vcpus and (tonumber(o.vcpus) or o.vcpus) or nil }
  local env, bad = parse_env(o.env, "run")
  if bad then return bad end
  local timeout, badt = parse_timeout(o.timeout, "run")
  if badt then return badt end
  local smolvm = load_smolvm()
  if not smolvm then return EXIT_EXEC end
  local okv, vm, err, code = pcall(smolvm.VM, vmopts)
  if not okv then -- a bad option: the schema's message, without our file:line
    return usage_error((tostring(vm):gsub("^[^\n]-:%d+: ", "")), "run")
  end
  if not vm then
    if code == "EINVAL" then return usage_error("run: " .. tostring(err), "run") end
    local hint = code == "EHOST" and "see 'smolvm doctor'"
      or (o.template and code == "ENOENT") and "'smolvm template ls' lists the templates" or nil
    return fail("run: " .. tostring(err), hint, code == "EHOST" and EXIT_HOST or EXIT_EXEC)
  end
  local stdin
  if o.stdin or not is_tty(0) then stdin = io.stdin:read("*a") end
  local r
  local okr, perr = pcall(function()
    local oks, serr, scode = vm:start()
    if not oks then
      err, code = serr, scode
      return
    end
    r, err, code = vm:run(command_line(rest), { timeout = timeout, env = env,
                                                cwd = o.cwd, stdin = stdin })
  end)
  if o.keep and okr then
    vm:keep()
    io.stderr:write("smolvm: kept sandbox '", vm.id, "'\n")
  else
    vm:delete()
  end
  vm:close()
  if not okr then error(perr, 0) end -- interrupted: the sandbox is gone already
  if not r then return fail("run: " .. tostring(err), nil, EXIT_EXEC) end
  return emit_result(r)
end)

-- The ssh command line for a VM, from its info (transport "ssh"): the installation's
-- client key (`key`, `id_ed25519` in the state directory), the VM's pinned host key
-- (`host_key`, written to a private known_hosts file in `tmpdir`, never trust on first
-- use: a host key that cannot be read refuses the session) and where its sshd
-- answers: with the user network a host forward on 127.0.0.1 (`ssh_port`, also the
-- `ports` entry of kind "ssh"), else the VM's `ip`, port 22. The user's ssh_config is
-- not read (-F /dev/null) and nothing is forwarded (agent, X11, ports): the guest is
-- untrusted. cmd: the command to run on a terminal (nil: a login shell).
function M.ssh_command(info, key, tmpdir, cmd)
  local host, port = "127.0.0.1", info.ssh_port
  for _, p in ipairs(type(info.ports) == "table" and info.ports or {}) do
    if type(p) == "table" and p.kind == "ssh" then
      host, port = p.host_address or host, p.host_port
    end
  end
  if not port then host, port = info.ip, 22 end
  if not host then return nil, "no address to reach its sshd (is it running?)" end
  if not key then return nil, "no ssh key for this installation" end
  if not tmpdir then return nil, "no private directory for its known_hosts file" end
  local f = info.host_key and io.open(info.host_key, "r")
  local line = f and f:read("*l") or nil
  if f then f:close() end
  local keytext = line and line:match("^(%S+%s+%S+)")
  if not keytext then
    return nil, "cannot read its pinned host key " .. (info.host_key and ("'" .. info.host_key .. "'")
      or "(its info has no host_key)")
  end
  local alias = "smolvm-" .. tostring(info.id or "vm")
  local kh = tmpdir .. "/known_hosts"
  local k, kerr = io.open(kh, "w")
  if not k then return nil, "write " .. kh .. ": " .. tostring(kerr) end
  k:write(alias, " ", keytext, "\n")
  k:close()
  local args = { "ssh", "-F", "/dev/null", "-t", "-i", shell_quote(key),
                 "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
                 "-o", "ForwardAgent=no", "-o", "ForwardX11=no", "-o", "ClearAllForwardings=yes",
                 "-o", "PermitLocalCommand=no", "-o", "StrictHostKeyChecking=yes",
                 "-o", "UserKnownHostsFile=" .. shell_quote(kh), "-o", "GlobalKnownHostsFile=/dev/null",
                 "-o", "UpdateHostKeys=no", "-o", "HostKeyAlias=" .. shell_quote(alias),
                 "-o", "LogLevel=ERROR", "-p", tostring(math.floor(tonumber(port) or 22)),
                 "root@" .. shell_quote(host) }
  -- root's login shell is /bin/sh (fast for commands); people want bash
  args[#args + 1] = shell_quote(cmd or "exec /bin/bash -l")
  return table.concat(args, " ")
end

-- The installation's ssh client key: id_ed25519 in the state directory.
local function client_key()
  local ok, core = pcall(require, "smolvm.core")
  local paths = ok and type(core.paths) == "function" and core.paths() or nil
  return paths and paths.state_dir and (paths.state_dir .. "/id_ed25519") or nil
end

-- A private temporary directory (mkdtemp: no name race), or nil and why.
local function private_dir()
  local ok, core = pcall(require, "smolvm.core")
  if not ok or type(core.mkdtemp) ~= "function" then return nil, "no mkdtemp in the binding" end
  local base = os.getenv("TMPDIR")
  if not base or base == "" or not base:match("^/") then base = "/tmp" end
  return core.mkdtemp(base .. "/smolvm-ssh.")
end

ssh_session = function(info, id, cmd, failure_status)
  local tmp, terr = private_dir()
  if not tmp then return fail("shell '" .. id .. "': " .. tostring(terr), nil, failure_status) end
  local line, err = M.ssh_command(info, client_key(), tmp, cmd)
  local function cleanup()
    os.remove(tmp .. "/known_hosts")
    os.remove(tmp)
  end
  if not line then
    cleanup()
    return fail("shell '" .. id .. "': " .. err, "use 'smolvm exec " .. id .. " -- CMD' instead",
      failure_status)
  end
  local ok, how, code = os.execute(line)
  cleanup()
  if type(ok) == "number" then return ok == 0 and 0 or math.floor(ok / 256) end
  if how == "signal" then return 128 + (code or 9) end
  return (how == "exit" and code) or 1
end

command("shell", "shell ID", "Open an interactive shell in a running sandbox (on a terminal)",
function(args)
  if #args ~= 1 then return usage_error("usage: smolvm shell ID", "shell") end
  local smolvm, st = load_smolvm()
  if not smolvm then return st end
  local vm, s = open_vm(smolvm, args[1])
  if not vm then return s end
  return terminal_session(vm, args[1], nil, nil)
end)

command("ps", "ps [--json] [ID]", "Processes started in a sandbox (without ID: same as ls)",
function(args)
  local o, rest = parse(args, { ["--json"] = "json", ["-q"] = "quiet", ["--quiet"] = "quiet",
                                ["-a"] = "all", ["--all"] = "all" })
  if not o then return usage_error(rest, "ps") end
  if #rest == 0 then return commands.ls.fn(args) end
  if #rest > 1 then return usage_error("usage: smolvm ps [--json] ID", "ps") end
  local id = rest[1]
  local smolvm, st = load_smolvm()
  if not smolvm then return st end
  local vm, s = open_vm(smolvm, id)
  if not vm then return s end
  local info = info_of(vm)
  local ok, rs = is_running(id, info)
  if not ok then return rs end
  if transport_of(info) ~= "agent" then
    return fail("ps '" .. id .. "': needs the agent transport (this sandbox uses '"
      .. tostring(transport_of(info)) .. "')", "use 'smolvm exec " .. id .. " -- ps ax'")
  end
  local list, err = vm:processes()
  if not list then return fail("ps '" .. id .. "': " .. tostring(err)) end
  table.sort(list, function(a, b) return (tonumber(a.pid) or 0) < (tonumber(b.pid) or 0) end)
  local text = require "smolvm.text"
  if o.json then
    local out = json.array()
    for i, p in ipairs(list) do
      out[i] = { pid = p.pid, cmd = p.cmd and text.sanitize(p.cmd), running = p.running,
                 exit_code = p.exit_code, signal = p.signal and text.sanitize(p.signal),
                 started_ms = p.started_ms }
    end
    io.stdout:write(json.encode(out), "\n")
    return EXIT_OK
  end
  io.stdout:write(string.format("%-7s %-12s %-9s %s\n", "PID", "STATUS", "STARTED", "COMMAND"))
  for _, p in ipairs(list) do
    local status = p.running and "running"
      or (p.signal and ("killed " .. text.sanitize(p.signal)))
      or ("exited " .. tostring(p.exit_code))
    local cmd = text.sanitize(tostring(p.cmd or ""))
    if #cmd > 200 then cmd = cmd:sub(1, 197) .. "..." end
    io.stdout:write(string.format("%-7s %-12s %-9s %s\n", tostring(p.pid), status,
      fmt_age(p.started_ms), cmd))
  end
  return EXIT_OK
end)

command("attach", "attach ID PID", "Follow a sandbox process's output (kept output first); Ctrl-C detaches",
function(args)
  if #args ~= 2 then return usage_error("usage: smolvm attach ID PID", "attach") end
  local id, pid = args[1], tonumber(args[2])
  if not pid or pid < 1 or pid ~= math.floor(pid) then
    return usage_error("PID must be a positive integer, got '" .. args[2] .. "'", "attach")
  end
  local smolvm, st = load_smolvm()
  if not smolvm then return st end
  local vm, s = open_vm(smolvm, id)
  if not vm then return s end
  local info = info_of(vm)
  local ok, rs = is_running(id, info)
  if not ok then return rs end
  local session = require "smolvm.session"
  local okf, status, err, code = pcall(session.follow_proc, vm, pid)
  if not okf then
    if tostring(status):find("interrupted", 1, true) then
      eprint("smolvm: detached from process " .. pid .. " in '" .. id .. "' (it keeps running)")
      return tostring(status):find("SIGTERM", 1, true) and 143 or 130
    end
    error(status, 0)
  end
  if not status then
    return fail("attach to " .. pid .. " in '" .. id .. "': " .. tostring(err),
      code == "ENOENT" and "'smolvm ps " .. id .. "' lists its processes" or nil)
  end
  return status
end)

-- "ID:/path" names a guest file; anything else (including "./a:b") a host file.
local function split_remote(s)
  local id, path = s:match("^([a-z0-9][a-z0-9_-]*):(.*)$")
  if id and path ~= "" then return id, path end
  return nil, s
end

command("cp", "cp SRC DST", "Copy a file between host and sandbox (ID:/path on one side)",
function(args)
  if #args ~= 2 then return usage_error("usage: smolvm cp SRC DST (one of them ID:/path)", "cp") end
  local sid, spath = split_remote(args[1])
  local did, dpath = split_remote(args[2])
  if (sid and did) or (not sid and not did) then
    return usage_error("exactly one of SRC and DST must be ID:/path", "cp")
  end
  local smolvm, st = load_smolvm()
  if not smolvm then return st end
  local vm, s = open_vm(smolvm, sid or did)
  if not vm then return s end
  local ok, err
  if sid then
    local to = dpath
    local attr = io.open(to .. "/.", "r") -- an existing directory: keep the file name
    if attr then attr:close() to = to:gsub("/$", "") .. "/" .. spath:match("([^/]+)$") end
    ok, err = vm:download(spath, to)
  else
    if not io.open(spath, "rb") then
      return fail("cp: no such host file '" .. spath .. "'")
    end
    local to = dpath
    if to:sub(-1) == "/" then to = to .. spath:match("([^/]+)$") end
    ok, err = vm:upload(spath, to)
  end
  if not ok then return fail("cp: " .. tostring(err), "guest paths are absolute: ID:/root/file") end
  return EXIT_OK
end)

command("logs", "logs [-f] [-n LINES] ID", "Show a sandbox's console log (kernel and init); -f follows",
function(args)
  local o, rest = parse(args, { ["-f"] = "follow", ["--follow"] = "follow",
                                ["-n"] = { "tail" }, ["--tail"] = { "tail" } })
  if not o then return usage_error(rest, "logs") end
  if #rest ~= 1 then return usage_error("usage: smolvm logs [-f] [-n LINES] ID", "logs") end
  local tail
  if o.tail then
    tail = tonumber(o.tail)
    if not tail or tail < 0 or tail ~= math.floor(tail) then
      return usage_error("-n expects a number of lines", "logs")
    end
  end
  local smolvm, st = load_smolvm()
  if not smolvm then return st end
  local vm, s = open_vm(smolvm, rest[1])
  if not vm then return s end
  local info = info_of(vm)
  local path = info.console_log
  if not path then return fail("logs '" .. rest[1] .. "': its info has no console log path") end
  -- The guest writes this text: on a terminal it is shown sanitized, line by line;
  -- into a pipe or file it goes as it is.
  local text = require "smolvm.text"
  local emit
  if is_tty(1) then
    local lines = text.lines(function(l) io.stdout:write(text.display_line(l), "\n") end)
    emit = function(chunk) lines.feed(chunk) io.stdout:flush() end
  else
    emit = function(chunk) io.stdout:write(chunk) io.stdout:flush() end
  end
  -- What the bound rotated out (console.log.1) comes first, unless -n says how much.
  local function read_all(p)
    local f = io.open(p, "rb")
    if not f then return nil end
    local data = f:read("*a")
    f:close()
    return data
  end
  if o.follow then
    if not tail then
      local old = read_all(path .. ".1")
      if old then emit(old) end
    end
    local session = require "smolvm.session"
    local ok, err, code = session.follow_log(path, emit, tail)
    if not ok then return fail("logs '" .. rest[1] .. "': " .. tostring(err)) end
    io.stdout:flush()
    eprint("smolvm: the sandbox's directory is gone (deleted)")
    return EXIT_OK
  end
  local cur = read_all(path)
  if not cur then
    return fail("logs '" .. rest[1] .. "': cannot read " .. path, "the log appears once the sandbox has booted")
  end
  local all = (read_all(path .. ".1") or "") .. cur
  if tail then
    local lines = {}
    for l in all:gmatch("[^\n]*\n?") do if l ~= "" then lines[#lines + 1] = l end end
    all = table.concat(lines, "", math.max(1, #lines - tail + 1))
  end
  emit(all)
  if is_tty(1) and all ~= "" and all:sub(-1) ~= "\n" then io.stdout:write("\n") end
  return EXIT_OK
end)

command("stop", "stop [-t SECONDS] ID...", "Stop sandboxes (clean power-off, then kill)",
function(args)
  local o, rest = parse(args, { ["-t"] = { "timeout" }, ["--time"] = { "timeout" } })
  if not o then return usage_error(rest, "stop") end
  if #rest == 0 then return usage_error("stop needs a sandbox ID", "stop") end
  local smolvm, st = load_smolvm()
  if not smolvm then return st end
  local status = EXIT_OK
  for _, id in ipairs(rest) do
    local vm, s = open_vm(smolvm, id)
    if not vm then status = s else
      local ok, err = vm:stop{ timeout = tonumber(o.timeout) or 5 }
      if ok then print(id) else status = fail("stop '" .. id .. "': " .. tostring(err)) end
    end
  end
  return status
end)

-- "VERB 'ID': MSG", unless the library's message already starts so.
local function about(verb, id, err)
  local s, p = tostring(err), verb .. " '" .. id .. "'"
  if s:sub(1, #p) == p then return s end
  return p .. ": " .. s
end

-- `verb ID...` on each sandbox: fn(vm) -> true | nil, msg, code; prints each id done.
local function each_vm(args, verb, fn, hint_for)
  local smolvm, st = load_smolvm()
  if not smolvm then return st end
  local status = EXIT_OK
  for _, id in ipairs(args) do
    local vm, s = open_vm(smolvm, id)
    if not vm then status = s else
      local ok, err, code = fn(vm)
      if ok then print(id) else
        status = fail(about(verb, id, err), hint_for and hint_for(code, id, err))
      end
      vm:close()
    end
  end
  return status
end

local function state_hint(code, id, err)
  if code == "ESTATE" and tostring(err):find("paused", 1, true) then
    return "resume it first: smolvm resume " .. id
  elseif code == "ESTATE" and tostring(err):find("is stopped", 1, true) then
    return "start it first: smolvm start " .. id
  elseif code == "ESTATE" then
    return "see its status with 'smolvm ls'"
  elseif code == "EINVAL" and tostring(err):find("guest agent", 1, true) then
    return "only sandboxes on the agent transport (the default) can be paused or saved"
  end
  return nil
end

command("start", "start [-t SECONDS] ID...",
  "Start stopped sandboxes (a suspended one continues where it was)",
function(args)
  local o, rest = parse(args, { ["-t"] = { "timeout" }, ["--time"] = { "timeout" } })
  if not o then return usage_error(rest, "start") end
  if #rest == 0 then return usage_error("start needs a sandbox ID", "start") end
  local timeout, bad = parse_timeout(o.timeout, "start")
  if bad then return bad end
  return each_vm(rest, "start", function(vm)
    return vm:start{ timeout = timeout or 120 }
  end, function(code, id, err)
    if code == "ETIMEDOUT" then return "raise the limit with -t SECONDS; 'smolvm logs " .. id .. "'" end
    return state_hint(code, id, err)
  end)
end)

-- pause, resume, suspend: the verb, the same-named VM method, one ID or more.
local function state_command(verb, summary)
  command(verb, verb .. " ID...", summary, function(args)
    local o, rest = parse(args, {})
    if not o then return usage_error(rest, verb) end
    if #rest == 0 then return usage_error(verb .. " needs a sandbox ID", verb) end
    return each_vm(rest, verb, function(vm) return vm[verb](vm) end, state_hint)
  end)
end

state_command("pause", "Stop sandboxes' CPUs (no host CPU used; commands fail until resume)")
state_command("resume", "Continue paused sandboxes")
state_command("suspend",
  "Save running sandboxes to disk and end their VMM ('smolvm start' continues them)")

command("snapshot", "snapshot ID NAME",
  "Make template NAME of a running sandbox (it goes on running)",
function(args)
  local o, rest = parse(args, {})
  if not o then return usage_error(rest, "snapshot") end
  if #rest ~= 2 then return usage_error("usage: smolvm snapshot ID NAME", "snapshot") end
  local schema = require "smolvm.schema"
  local id, name = rest[1], rest[2]
  if not schema.valid_id(name) then
    return usage_error("invalid template name '" .. name .. "' (expected " .. schema.ID_DESC .. ")",
      "snapshot")
  end
  local smolvm, st = load_smolvm()
  if not smolvm then return st end
  local vm, s = open_vm(smolvm, id)
  if not vm then return s end
  local ok, err, code = vm:snapshot(name)
  vm:close()
  if not ok then
    return fail(about("snapshot", id, err), code == "EEXIST"
      and ("remove the old one with 'smolvm template rm " .. name .. "', or pick another name")
      or state_hint(code, id, err))
  end
  print(name)
  return EXIT_OK
end)

command("rm", "rm [-f] ID...", "Delete sandboxes (-f: also running ones)",
function(args)
  local o, rest = parse(args, { ["-f"] = "force", ["--force"] = "force" })
  if not o then return usage_error(rest, "rm") end
  if #rest == 0 then return usage_error("rm needs a sandbox ID", "rm") end
  local smolvm, st = load_smolvm()
  if not smolvm then return st end
  local status = EXIT_OK
  for _, id in ipairs(rest) do
    local vm, s = open_vm(smolvm, id)
    if not vm then status = s
    elseif vm.status == "running" and not o.force then
      status = fail("sandbox '" .. id .. "' is running", "stop it first, or use 'smolvm rm -f " .. id .. "'")
    else
      local ok, err = vm:delete()
      if ok then print(id) else status = fail("rm '" .. id .. "': " .. tostring(err)) end
    end
  end
  return status
end)

command("prune", "prune [-f]", "Delete every stopped or failed sandbox and release leftovers",
function(args)
  local o, rest = parse(args, { ["-f"] = "force", ["--force"] = "force" })
  if not o then return usage_error(rest, "prune") end
  if #rest > 0 then return usage_error("prune takes no arguments", "prune") end
  local smolvm, st = load_smolvm()
  if not smolvm then return st end
  -- VM.list reconciles first: a VM whose VMM died is "error" by now.
  local ok, list = pcall(smolvm.VM.list)
  if not ok or type(list) ~= "table" then return fail("list sandboxes: " .. tostring(list)) end
  local victims = {}
  for _, info in ipairs(list) do
    if info.status == "stopped" or info.status == "error" then victims[#victims + 1] = info.id end
  end
  if #victims == 0 then print("nothing to prune") return EXIT_OK end
  if not o.force and is_tty(0) then
    io.stderr:write("This deletes " .. #victims .. " sandbox(es): " .. table.concat(victims, " ")
      .. "\nAre you sure? [y/N] ")
    local answer = io.stdin:read("*l") or ""
    if not answer:match("^[yY]") then return EXIT_OK end
  end
  local status = EXIT_OK
  for _, id in ipairs(victims) do
    local vm = smolvm.VM.from_id(id)
    local okd, err = true, nil
    if vm then okd, err = vm:delete() end
    if okd then print("deleted " .. id) else status = fail("prune '" .. id .. "': " .. tostring(err)) end
  end
  return status
end)

-- "1.5 GiB", "268 MiB", "12 KiB": sizes in the units people read.
function M.fmt_size(n)
  if type(n) ~= "number" then return "" end
  if n >= 1024 ^ 3 then return string.format("%.1f GiB", n / 1024 ^ 3) end
  if n >= 1024 ^ 2 then return string.format("%d MiB", math.floor(n / 1024 ^ 2 + 0.5)) end
  return string.format("%d KiB", math.floor(n / 1024 + 0.5))
end

-- "--packages a,b" (given once or more) -> sorted list | nil, usage status
local function parse_packages(list)
  local schema = require "smolvm.schema"
  local out, seen = {}, {}
  for _, arg in ipairs(list or {}) do
    for word in (arg .. ","):gmatch("([^,]*),") do
      local p = word:match("^%s*(.-)%s*$")
      if p ~= "" then
        if #p > 128 or not p:match(schema.PACKAGE_PATTERN) then
          return nil, usage_error("--packages: invalid Debian package name '" .. p
            .. "' (lowercase letters, digits, '+', '-' and '.', at least 2 characters,"
            .. " starting with a letter or digit)", "image")
        end
        if not seen[p] then seen[p] = true out[#out + 1] = p end
      end
    end
  end
  table.sort(out)
  return out
end

local image_commands = {}

image_commands.ls = function(args, smolvm)
  local o, rest = parse(args, { ["--json"] = "json", ["-q"] = "quiet", ["--quiet"] = "quiet" })
  if not o then return usage_error(rest, "image") end
  if #rest > 0 then return usage_error("image ls takes no arguments", "image") end
  local list, err = smolvm.images()
  if not list then return fail("list images: " .. tostring(err)) end
  if o.json then
    for _, img in ipairs(list) do img.extra_packages = json.array(img.extra_packages) end
    io.stdout:write(json.encode(json.array(list)), "\n")
    return EXIT_OK
  end
  if o.quiet then
    for _, img in ipairs(list) do io.stdout:write(tostring(img.name), "\n") end
    return EXIT_OK
  end
  local rows = { { "NAME", "BUILT", "SIZE", "AGENT", "PACKAGES" } }
  for _, img in ipairs(list) do
    local pk = img.extra_packages or {}
    rows[#rows + 1] = {
      tostring(img.name),
      img.complete and tostring(img.built or "?") or "incomplete",
      M.fmt_size(img.size), img.agent and "yes" or "no",
      #pk > 0 and table.concat(pk, ",") or "-",
    }
  end
  print_columns(rows)
  return EXIT_OK
end

image_commands.build = function(args, smolvm)
  local o, rest = parse(args, { ["--packages"] = { "packages", multi = true },
                                ["-p"] = { "packages", multi = true },
                                ["--force"] = "force", ["-f"] = "force",
                                ["--dry-run"] = "dry_run", ["-n"] = "dry_run" })
  if not o then return usage_error(rest, "image") end
  if #rest ~= 1 then return usage_error("usage: smolvm image build NAME [--packages A,B] [--force]", "image") end
  local name = rest[1]
  local schema = require "smolvm.schema"
  if not schema.valid_image_name(name) then
    return usage_error("invalid image name '" .. name .. "' (expected " .. schema.ID_DESC
      .. (name == "templates" and ", and 'templates' is reserved" or "") .. ")", "image")
  end
  local packages, bad = parse_packages(o.packages)
  if not packages then return bad end
  local state, err, code = smolvm.image_build(name, {
    packages = packages, force = o.force or false, dry_run = o.dry_run or false,
    on_line = function(line) eprint(line) end,
  })
  if not state then
    return fail(tostring(err), code == "EPERM" and "building needs root; see docs/image.md" or nil)
  end
  if o.dry_run then return state == "up-to-date" and EXIT_OK or EXIT_FAIL end
  return EXIT_OK
end

image_commands.rm = function(args, smolvm)
  local o, rest = parse(args, { ["-f"] = "force", ["--force"] = "force" })
  if not o then return usage_error(rest, "image") end
  if #rest == 0 then return usage_error("image rm needs an image name", "image") end
  local schema = require "smolvm.schema"
  local status = EXIT_OK
  for _, name in ipairs(rest) do
    if not schema.valid_image_name(name) then
      status = usage_error("invalid image name '" .. name .. "'", "image")
    else
      local ok, err = smolvm.image_delete(name, { force = o.force or false })
      -- the library's messages name the image already
      if ok then print(name) else status = fail(tostring(err)) end
    end
  end
  return status
end
image_commands.remove, image_commands.list = image_commands.rm, image_commands.ls

-- `smolvm NAME SUB ...`: the subcommand SUB of group NAME (its functions in fns, the
-- names offered in subs), called with the rest of the arguments and the module.
local function subcommand(name, fns, subs, args)
  local sub = table.remove(args, 1)
  if sub == nil then
    return usage_error("usage: smolvm " .. name .. " " .. table.concat(subs, "|") .. " ...", name)
  end
  local fn = fns[sub]
  if not fn then
    local schema = require "smolvm.schema"
    local s = schema.suggest(sub, subs)
    return usage_error("unknown " .. name .. " command '" .. sub .. "'"
      .. (s and (" (did you mean '" .. s .. "'?)") or ""), name)
  end
  local smolvm, st = load_smolvm()
  if not smolvm then return st end
  return fn(args, smolvm)
end

command("image", "image ls|build|rm [OPTIONS] [NAME...]",
  "Guest images: list, build (as root; cached by definition), remove",
function(args) return subcommand("image", image_commands, { "ls", "build", "rm" }, args) end)
commands.image.details = {
  "  smolvm image ls [--json] [-q]        name, built, size, agent, extra packages",
  "  smolvm image build NAME [--packages A,B] [--force] [--dry-run]",
  "                                       build from Debian packages (as root); up to date: nothing to do",
  "  smolvm image rm [-f] NAME...         refused while a VM or template uses it; -f for 'default'",
}

local template_commands = {}

template_commands.ls = function(args, smolvm)
  local o, rest = parse(args, { ["--json"] = "json", ["-q"] = "quiet", ["--quiet"] = "quiet" })
  if not o then return usage_error(rest, "template") end
  if #rest > 0 then return usage_error("template ls takes no arguments", "template") end
  local list, err = smolvm.templates()
  if not list then return fail("list templates: " .. tostring(err)) end
  if o.json then
    io.stdout:write(json.encode(json.array(list)), "\n")
    return EXIT_OK
  end
  if o.quiet then
    for _, t in ipairs(list) do io.stdout:write(tostring(t.name), "\n") end
    return EXIT_OK
  end
  local rows = { { "NAME", "IMAGE", "MEMORY", "CREATED", "SIZE", "STALE" } }
  for _, t in ipairs(list) do
    rows[#rows + 1] = {
      tostring(t.name), tostring(t.image or ""), tostring(t.memory or ""),
      fmt_age(t.created_at), M.fmt_size(t.disk_bytes),
      -- why clones are refused now (the library's words, one line)
      t.stale and (tostring(t.stale):gsub("%s+", " ")) or "-",
    }
  end
  print_columns(rows)
  return EXIT_OK
end

template_commands.rm = function(args, smolvm)
  local o, rest = parse(args, {})
  if not o then return usage_error(rest, "template") end
  if #rest == 0 then return usage_error("template rm needs a template name", "template") end
  local schema = require "smolvm.schema"
  local status = EXIT_OK
  for _, name in ipairs(rest) do
    if not schema.valid_id(name) then
      status = usage_error("invalid template name '" .. name .. "'", "template")
    else
      local ok, err, code = smolvm.template_delete(name)
      -- the library's messages name the template (and, in use, its users)
      if ok then print(name) else
        status = fail(tostring(err), code == "ENOENT" and "'smolvm template ls' lists the templates" or nil)
      end
    end
  end
  return status
end
template_commands.remove, template_commands.list = template_commands.rm, template_commands.ls

command("template", "template ls|rm [OPTIONS] [NAME...]",
  "Templates (prepared VMs clones start from): list, remove",
function(args) return subcommand("template", template_commands, { "ls", "rm" }, args) end)
commands.template.details = {
  "  smolvm template ls [--json] [-q]     name, image, memory, created, size, why it is stale",
  "  smolvm template rm NAME...           refused while a sandbox or template is made from it",
}

command("doctor", "doctor [--json]", "Check that this host can run sandboxes, with hints",
function(args)
  local o, rest = parse(args, { ["--json"] = "json" })
  if not o then return usage_error(rest, "doctor") end
  local smolvm, st = load_smolvm()
  if not smolvm then return st end
  local ok, checks = pcall(smolvm.doctor)
  if not ok or type(checks) ~= "table" then return fail("doctor: " .. tostring(checks)) end
  if o.json then
    io.stdout:write(json.encode(json.array(checks)), "\n")
  else
    local w = 0
    for _, c in ipairs(checks) do w = math.max(w, #tostring(c.name)) end
    for _, c in ipairs(checks) do
      io.stdout:write(string.format("%s %-" .. w .. "s  %s\n",
        c.ok and "ok  " or (c.required and "FAIL" or "warn"),
        tostring(c.name), tostring(c.detail or "")))
      if not c.ok and c.hint then io.stdout:write(string.rep(" ", w + 7), "hint: ", c.hint, "\n") end
    end
  end
  -- Only what sandboxes cannot run without decides the status (no KVM is TCG).
  for _, c in ipairs(checks) do
    if not c.ok and c.required then return EXIT_HOST end
  end
  return EXIT_OK
end)

command("install-firecracker", "install-firecracker [DIR]",
  "Download the pinned firecracker release, verify its sha256 and install it",
function(args)
  if #args > 1 then return usage_error("usage: smolvm install-firecracker [DIR]", "install-firecracker") end
  local smolvm, st = load_smolvm()
  if not smolvm then return st end
  io.stderr:write("downloading the pinned firecracker release (checksum verified)...\n")
  local path, err = smolvm.firecracker_download(args[1])
  if not path then return fail("install-firecracker: " .. tostring(err)) end
  print(path)
  return EXIT_OK
end)

command("help", "help [COMMAND]", "Show help", function(args)
  return M.help(args[1])
end)

function M.help(name)
  if name then
    local c = commands[name]
    if not c then return usage_error("unknown command '" .. name .. "'") end
    print("usage: smolvm " .. c.usage)
    for _, l in ipairs(c.details or {}) do print(l) end
    print("")
    print(c.summary)
    return EXIT_OK
  end
  print("usage: smolvm COMMAND [ARGS...]")
  print("")
  print("Manage smolvm sandboxes between recipes (run recipes with: smolvm-lua FILE).")
  print("")
  for _, n in ipairs(order) do
    print(string.format("  %-58s %s", commands[n].usage, commands[n].summary))
  end
  print("")
  print("Exit status: 0 ok, 1 failed, 2 bad usage, 3 host cannot run sandboxes;")
  print("exec returns the command's status (125 when smolvm itself failed).")
  return EXIT_OK
end

M.commands, M.order = commands, order

--- Entry point: `main(arg)` returns the exit status.
function M.main(argv)
  argv = argv or {}
  local args = {}
  for i = 1, #argv do args[i] = argv[i] end
  local name = table.remove(args, 1)
  if name == nil or name == "-h" or name == "--help" then
    M.help()
    return name == nil and EXIT_USAGE or EXIT_OK
  end
  local aliases = { list = "ls", delete = "rm", remove = "rm", ssh = "shell" }
  name = aliases[name] or name
  local c = commands[name]
  if not c then
    local schema = require "smolvm.schema"
    local s = schema.suggest(name, order)
    return usage_error("unknown command '" .. name .. "'" .. (s and (" (did you mean '" .. s .. "'?)") or ""))
  end
  if args[1] == "-h" or args[1] == "--help" then return M.help(name) end
  local ok, status = pcall(c.fn, args)
  if not ok then
    if tostring(status):find("interrupted", 1, true) then
      return tostring(status):find("SIGTERM", 1, true) and 143 or 130
    end
    return fail(tostring(status))
  end
  return status
end

return M
