-- SPDX-License-Identifier: MIT
--- smolvm.worker: the blocking smolvm calls, as functions for a thread pool.
--
-- Inside nginx, a smolvm call that boots a VM or runs a command blocks for seconds;
-- on the event loop it would stall every request of that worker. Run it in a thread:
--
--   local ok, id, err, code = ngx.run_worker_thread("smolvm", "smolvm.worker",
--                                                   "launch", { memory = 256 }, 60)
--   -- ok: false only if the function raised (then id is the error message);
--   -- id: the VM id, or nil with err, code (smolvm's nil, message, code convention).
--
-- Rules these functions follow, so they can cross between nginx and its threads:
--  - Arguments and results are plain values only (nil, booleans, numbers, strings,
--    tables of those): ngx.run_worker_thread copies them between Lua states. VM
--    objects never cross; every function takes a VM id.
--  - Each pool thread has its own Lua state (lua-nginx-module keeps these states and
--    reuses them for later tasks), so this module is loaded once per state and a VM
--    object made here lives only here. Objects that own a VM (smolvm.VM{}) would
--    delete it when collected: create() calls keep() and closes its object before
--    returning, so the VM outlives the thread state. Handles from VM.from_id() own
--    nothing; they are cached per state (their SSH session is what makes the second
--    command on a VM fast) and dropped after any failure.
--  - Operational failures return nil, message, code; bad arguments raise, which
--    ngx.run_worker_thread reports as ok = false.
--  - Nothing blocks without a deadline: every call takes (or defaults) a timeout in
--    seconds.
--
-- Plain Lua hosts can call these functions directly too (they are ordinary blocking
-- calls); tests do.
--
-- Pure Lua for 5.1/LuaJIT and 5.4.

local smolvm = require "smolvm"

local M = {}

local VM = smolvm.VM

M.DEFAULT_BOOT_TIMEOUT = 60
M.DEFAULT_RUN_TIMEOUT = 30
M.DEFAULT_STOP_TIMEOUT = 5
-- Handles kept per thread state; each holds an SSH session to its guest.
M.MAX_CACHED = 16

-- Milliseconds for the timings in results (a monotonic clock: durations only).
local now_ms = require("smolvm.sys").monotonic_ms
M.now_ms = now_ms

------------------------------------------------------------------------ nginx

--- init_worker() -> true | nil, reason. Call from init_worker_by_lua in each nginx
--- worker, before any sandbox call.
--
-- nginx installs one signal handler for all its processes, and on SIGCHLD it reaps
-- every exited child with waitpid(-1, WNOHANG), also in workers, which have no
-- children of their own. smolvm waits for the helpers it starts (qemu-img,
-- ssh-keygen, the VMM's launcher) by pid: when nginx reaps one first, that wait fails
-- and the call with it (nginx logs "unknown process N exited"). A worker has no use
-- for SIGCHLD, so restore the default action there: exited children then stay
-- waitable until smolvm collects them. Needs LuaJIT's FFI (always there in nginx).
function M.init_worker()
  local ok, ffi = pcall(require, "ffi")
  if not ok or not ffi then return nil, "no LuaJIT FFI" end
  if ffi.os ~= "Linux" then return nil, "SIGCHLD number known for Linux only" end
  pcall(ffi.cdef, [[
    typedef void (*smolvm_worker_sighandler)(int);
    smolvm_worker_sighandler signal(int signum, smolvm_worker_sighandler handler);
  ]])
  local SIGCHLD = 17 -- Linux on x86, arm and most others; not mips or sparc
  if ffi.arch == "mips" or ffi.arch == "mipsel" then SIGCHLD = 18 end
  local SIG_ERR = -1
  local prev = ffi.C.signal(SIGCHLD, ffi.cast("smolvm_worker_sighandler", 0)) -- SIG_DFL
  if ffi.cast("intptr_t", prev) == SIG_ERR then return nil, "signal(SIGCHLD) failed" end
  return true
end

------------------------------------------------------------------------ orphans

local function read_line(path)
  local f = io.open(path)
  if not f then return nil end
  local l = f:read("*l")
  f:close()
  return l
end

--- owned_id(prefix, pid, n) -> a VM id "<prefix>-<pid>-<n>", for a VM that only
--- process pid uses (e.g. a fresh sandbox of one request); see reap().
function M.owned_id(prefix, pid, n)
  return string.format("%s-%d-%s", prefix, pid, tostring(n))
end

--- reap(prefix) -> number deleted | nil, msg, code
--- Delete the VMs named by owned_id(prefix, pid, ...) whose process pid is gone: a
--- worker killed in the middle of a task (nginx -s stop kills workers that do not
--- exit within a second or two; a crash) cannot delete the VM it was using. A pid
--- counts as alive while a process with that pid and this process's name (comm)
--- exists, so a pid reused by an unrelated program does not keep a VM.
function M.reap(prefix)
  if type(prefix) ~= "string" or prefix == "" then
    error("reap: prefix: expected non-empty string", 2)
  end
  local list, msg, code = VM.list()
  if not list then return nil, msg, code end
  local me = read_line("/proc/self/comm")
  local n = 0
  local pat = "^" .. prefix:gsub("%p", "%%%0") .. "%-(%d+)%-"
  for _, info in ipairs(list) do
    local pid = type(info.id) == "string" and tonumber(info.id:match(pat))
    if pid then
      local comm = read_line("/proc/" .. pid .. "/comm")
      if not comm or (me and comm ~= me) then
        if M.delete(info.id) then n = n + 1 end
      end
    end
  end
  return n
end

------------------------------------------------------------------------ handles

local cache, cached = {}, 0

local function forget(id)
  local vm = cache[id]
  if vm then
    cache[id] = nil
    cached = cached - 1
    pcall(vm.close, vm)
  end
end

-- A handle for id (not owning the VM): from this state's cache, else opened.
local function handle(id)
  local vm = cache[id]
  if vm then return vm, true end
  local v, msg, code = VM.from_id(id)
  if not v then return nil, msg, code end
  if cached >= M.MAX_CACHED then
    for k in pairs(cache) do forget(k) break end
  end
  cache[id] = v
  cached = cached + 1
  return v, false
end

-- Call method on id's handle. A cached handle can be stale (the VM was deleted and
-- made again by another process): on a failure that happened before anything ran in
-- the guest (ENOENT, ESTATE) retry once with a fresh handle. Any failure drops it.
local function with_handle(id, method, ...)
  local vm, msg, code = handle(id)
  if not vm then return nil, msg, code end
  local was_cached = msg
  local r, e, c = vm[method](vm, ...)
  if r == nil then
    forget(id)
    if was_cached and (c == "ENOENT" or c == "ESTATE") then
      vm, msg, code = handle(id)
      if not vm then return nil, msg, code end
      r, e, c = vm[method](vm, ...)
      if r == nil then forget(id) end
    end
  end
  return r, e, c
end

local function check_id(where, id)
  if type(id) ~= "string" or id == "" then
    error(where .. ": id: expected VM id string, got " .. type(id), 3)
  end
end

------------------------------------------------------------------------ lifecycle

--- create(opts) -> id | nil, msg, code: make a VM (smolvm.VM options table) that
--- stays until delete(id). Not started.
function M.create(opts)
  local vm, msg, code = VM(opts or {})
  if not vm then return nil, msg, code end
  vm:keep()
  local id = vm.id
  vm:close()
  return id
end

--- start(id [, timeout]) -> true | nil, msg, code: boot and wait until commands run.
function M.start(id, timeout)
  check_id("start", id)
  return with_handle(id, "start", { timeout = timeout or M.DEFAULT_BOOT_TIMEOUT })
end

--- launch(opts [, timeout]) -> id, boot_ms | nil, msg, code: create and start a VM
--- that stays until delete(id); a VM that fails to start is deleted again.
function M.launch(opts, timeout)
  local t0 = now_ms()
  local vm, msg, code = VM(opts or {})
  if not vm then return nil, msg, code end
  local ok, e, c = vm:start{ timeout = timeout or M.DEFAULT_BOOT_TIMEOUT }
  if not ok then
    vm:close() -- owned and not kept: stops and deletes
    return nil, e, c
  end
  vm:keep()
  local id = vm.id
  vm:close()
  return id, now_ms() - t0
end

--- stop(id [, timeout]) -> true | nil, msg, code
function M.stop(id, timeout)
  check_id("stop", id)
  local r, e, c = with_handle(id, "stop", { timeout = timeout or M.DEFAULT_STOP_TIMEOUT })
  forget(id)
  return r, e, c
end

--- delete(id) -> true | nil, msg, code: stop (if running) and delete.
function M.delete(id)
  check_id("delete", id)
  forget(id)
  local vm, msg, code = VM.from_id(id)
  if not vm then return nil, msg, code end
  local r, e, c = vm:delete()
  vm:close()
  return r, e, c
end

--- info(id) -> table | nil, msg, code (vm:info(): id, status, config, ip, ports, ...)
function M.info(id)
  check_id("info", id)
  local vm, msg, code = VM.from_id(id)
  if not vm then return nil, msg, code end
  local r, e, c = vm:info()
  vm:close()
  return r, e, c
end

--- list() -> { info, ... } | nil, msg, code
function M.list()
  return VM.list()
end

------------------------------------------------------------------------ commands

-- vm:run options from a plain table (timeout defaulted).
local function run_opts(opts)
  local o = {}
  if opts then
    for k, v in pairs(opts) do o[k] = v end
  end
  if o.timeout == nil then o.timeout = M.DEFAULT_RUN_TIMEOUT end
  return o
end

--- run(id, cmd [, opts]) -> { stdout, stderr, output, exit_code, ok, signal?,
---   truncated, duration_ms } | nil, msg, code
--- opts: vm:run's { timeout=, env=, cwd=, stdin= }; timeout defaults to
--- DEFAULT_RUN_TIMEOUT seconds. Past it: nil, msg, "ETIMEDOUT" (command killed).
function M.run(id, cmd, opts)
  check_id("run", id)
  return with_handle(id, "run", cmd, run_opts(opts))
end

--- write_file(id, path, data) -> true | nil, msg, code
function M.write_file(id, path, data)
  check_id("write_file", id)
  return with_handle(id, "write_file", path, data)
end

--- read_file(id, path) -> data | nil, msg, code
function M.read_file(id, path)
  check_id("read_file", id)
  return with_handle(id, "read_file", path)
end

--- run_fresh(cmd, opts) -> result | nil, msg, code
--- Boot a new VM, run cmd in it, delete the VM (always, also on failure).
--- opts: { vm = smolvm.VM options, boot_timeout = seconds, run = vm:run options
--- (timeout, env, cwd, stdin) }. The result is run()'s plus id and boot_ms; a
--- failure's code is "ETIMEDOUT" for the command's timeout as for the boot's, so
--- the message says which; the fourth value is a table { stage = "boot"|"run", id,
--- boot_ms }.
function M.run_fresh(cmd, opts)
  if type(cmd) ~= "string" then
    error("run_fresh: cmd: expected string, got " .. type(cmd), 2)
  end
  opts = opts or {}
  local t0 = now_ms()
  local vm, msg, code = VM(opts.vm or {})
  if not vm then return nil, msg, code, { stage = "create" } end
  local id = vm.id
  local ok, e, c = vm:start{ timeout = opts.boot_timeout or M.DEFAULT_BOOT_TIMEOUT }
  local boot_ms = now_ms() - t0
  local r
  if ok then
    r, e, c = vm:run(cmd, run_opts(opts.run))
  end
  -- Teardown whatever happened; close() of an owned VM stops and deletes it.
  pcall(vm.delete, vm)
  pcall(vm.close, vm)
  if not r then
    return nil, e, c, { stage = ok and "run" or "boot", id = id, boot_ms = boot_ms }
  end
  r.id = id
  r.boot_ms = boot_ms
  return r
end

return M
