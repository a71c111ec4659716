-- SPDX-License-Identifier: MIT
--- smolvm.ngx: `require "smolvm"` inside nginx (lua-nginx-module / OpenResty) without
-- stalling the worker's event loop. docs/openresty.md is the user's guide.
--
-- smolvm.VM{}, VM.from_id and VM.list called where nginx can wait (a rewrite, access
-- or content handler, a timer, an ngx.thread of those: M.active()) make VM objects
-- whose waits go through cosockets:
--  - commands, processes and files (run, spawn and the proc methods, attach,
--    processes, read_file, write_file) speak the agent protocol (smolvm.client) to
--    the VM's supervisor on <vm dir>/agent.sock, over ngx.socket.tcp, with a
--    keepalive pool per socket;
--  - the library's blocking calls (create, start's launch, stop, delete, info,
--    status, keep, forwards, upload, download, and everything of the SSH transport)
--    run as jobs on threads of the binding (src/lua/job.c); the handler waits for a
--    job's unix socket with a cosocket;
--  - start is the launch as a job, then the supervisor's hello awaited on a cosocket,
--    then a job that records the VM running (smolvm_vm_start_confirm).
-- The objects are the ones lua/smolvm/vm.lua and proc.lua make (same validation,
-- same results): this file gives them a backend with the binding's interface.
--
-- Rules that come with nginx:
--  - A cosocket belongs to the request (or timer) that made it, so a proc belongs to
--    the request that spawned it; another request finds the process again with
--    vm:attach(pid). VM objects hold no cosocket and may be shared by requests of a
--    worker (a named sandbox cached in a module table).
--  - Streams of one request share one connection per VM (light threads included);
--    an idle connection goes back to the pool.
--  - Closing a VM object (or its collection) never blocks: an owned VM is stopped and
--    deleted on a thread.
--  - The first use resets SIGCHLD to its default in the worker (see reset_sigchld).
--
-- Pure Lua for LuaJIT (nginx) and 5.4 (loadable anywhere; active() is false outside
-- nginx).

local core = require "smolvm.core"
local client = require "smolvm.client"

local M = {}

local floor = math.floor
local unpack = table.unpack or unpack

M.config = {
  pool_size = 64,           -- idle connections kept per VM socket, per worker
  keepalive_timeout = 60000, -- ms an idle pooled connection is kept
  connect_timeout = 5000,   -- ms
  call_timeout = 30000,     -- ms for one step of a file or a reply (as the C client)
}

--- configure{ pool_size=, keepalive_timeout=, connect_timeout=, call_timeout= }
function M.configure(t)
  for k, v in pairs(t) do
    if M.config[k] == nil then error("smolvm.ngx.configure: unknown key " .. tostring(k), 2) end
    if type(v) ~= "number" or v < 1 then
      error("smolvm.ngx.configure: " .. k .. ": expected a positive number", 2)
    end
    M.config[k] = floor(v)
  end
end

------------------------------------------------------------------------ nginx

local YIELDABLE = {
  rewrite = true, access = true, content = true, timer = true,
  ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true,
}

local function ngx_api()
  local n = rawget(_G, "ngx")
  if type(n) == "table" and type(n.get_phase) == "function" and type(n.socket) == "table"
      and type(n.socket.tcp) == "function" then
    return n
  end
  return nil
end

--- active() -> true where nginx can wait on cosockets (the phases above).
function M.active()
  local n = ngx_api()
  if not n then return false end
  local ok, phase = pcall(n.get_phase)
  return ok and YIELDABLE[phase] == true
end

local function phase_error(what)
  local n = ngx_api()
  local phase = n and select(2, pcall(n.get_phase)) or "?"
  error(string.format("%s: cannot wait in the nginx phase '%s' (call it from a rewrite, "
    .. "access or content handler, a timer or an ngx.thread)", what, tostring(phase)), 3)
end

local function now_ms()
  ngx.update_time()
  return ngx.now() * 1000
end

local sigchld_pid

--- reset_sigchld() -> true | nil, reason. nginx installs one SIGCHLD handler in all its
-- processes that reaps every exited child (waitpid(-1)), in workers too; smolvm waits
-- for the helpers it starts (qemu-img, ssh-keygen, the supervisor's launcher) by pid,
-- and such a wait fails when nginx reaped the child first ("unknown process N exited"
-- in the error log). Workers start no children of their own, so the default action is
-- restored in this process (LuaJIT FFI). Done once per process on first use; safe to
-- call again (smolvm.worker.init_worker calls it too).
function M.reset_sigchld()
  if sigchld_pid and sigchld_pid == M.getpid() then return true end
  local ok, ffi = pcall(require, "ffi")
  if not ok or not ffi then return nil, "no LuaJIT FFI" end
  if ffi.os ~= "Linux" then return nil, "SIGCHLD number known for Linux only" end
  pcall(ffi.cdef, [[
    typedef void (*smolvm_ngx_sighandler)(int);
    smolvm_ngx_sighandler signal(int signum, smolvm_ngx_sighandler handler);
  ]])
  local SIGCHLD = 17 -- Linux on x86, arm and most others; not mips or sparc
  if ffi.arch == "mips" or ffi.arch == "mipsel" then SIGCHLD = 18 end
  local prev = ffi.C.signal(SIGCHLD, ffi.cast("smolvm_ngx_sighandler", 0)) -- SIG_DFL
  if ffi.cast("intptr_t", prev) == -1 then return nil, "signal(SIGCHLD) failed" end
  sigchld_pid = M.getpid()
  return true
end

function M.getpid()
  local n = ngx_api()
  if n and n.worker and n.worker.pid then return n.worker.pid() end
  return 0
end

--- prepare(): in an nginx worker (any phase but init, which runs in the master, whose
-- SIGCHLD handler reaps the workers), reset SIGCHLD once. vm.lua calls it before any
-- smolvm call made inside nginx, waiting or not.
function M.prepare()
  local n = ngx_api()
  if not n or sigchld_pid == M.getpid() then return end
  local ok, phase = pcall(n.get_phase)
  if not ok or phase == "init" then return end
  local done, why = M.reset_sigchld()
  if not done then n.log(n.WARN, "smolvm: cannot reset SIGCHLD: ", why) end
end
local prepare = M.prepare

-- A condition for several light threads on one connection (smolvm.client's cond).
local semaphore
local function new_cond()
  semaphore = semaphore or require "ngx.semaphore"
  local sema = semaphore.new(0)
  return {
    wait = function(_, ms) return sema:wait(ms / 1000) end,
    broadcast = function()
      local n = sema:count()
      if n < 0 then sema:post(-n) end
    end,
  }
end

------------------------------------------------------------------------ jobs

-- Wait until job is done (or the deadline): connect to its socket and read its line.
-- Several waiters may wait for one job; one that comes after the job closed its
-- socket finds it done.
local function wait_job(job, deadline)
  while not job:done() do
    local left = floor(deadline - now_ms())
    if left <= 0 then return nil end
    local sock = ngx.socket.tcp()
    sock:settimeouts(M.config.connect_timeout, 1000, left)
    local ok = sock:connect("unix:" .. job:path())
    if ok then
      sock:receive("*l")
      sock:close()
    elseif not job:done() then
      return nil, "cannot reach the job's socket"
    end
  end
  return true
end

-- Run a job made by make(...) and return its result, or nil, msg, code.
local function await(what, timeout_ms, job, msg, code)
  if not job then return nil, what .. ": " .. tostring(msg), code end
  local ok, why = wait_job(job, now_ms() + timeout_ms)
  if not ok then
    if why then return nil, what .. ": " .. why, "EIO" end
    return nil, string.format("%s: no answer after %d ms (it goes on in the background)",
                              what, timeout_ms), "ETIMEDOUT"
  end
  return job:result()
end

------------------------------------------------------------------------ connections

local ids = {} -- socket path -> the last stream id this worker used on it

local function id_counter(path)
  return function()
    local n = (ids[path] or 0) + 1
    ids[path] = n
    return n
  end
end

local function request_conns()
  local ok, ctx = pcall(function() return ngx.ctx end)
  if not ok or type(ctx) ~= "table" then return {} end
  local t = ctx.smolvm_conns
  if not t then
    t = {}
    ctx.smolvm_conns = t
  end
  return t
end

-- A connection to a supervisor, hello exchanged. pooled: from (and later back to)
-- the keepalive pool of ready connections; else a fresh one, its own hello awaited
-- (ready = false asks for an immediate one).
local function dial(path, ready, timeout_ms, pooled)
  local sock = ngx.socket.tcp()
  sock:settimeouts(M.config.connect_timeout, M.config.call_timeout, M.config.call_timeout)
  local ok, err
  if pooled then
    ok, err = sock:connect("unix:" .. path, { pool = "smolvm:" .. path,
                                              pool_size = M.config.pool_size })
  else
    ok, err = sock:connect("unix:" .. path)
  end
  if not ok then
    return nil, "connect to the supervisor: " .. tostring(err) .. " (is the vm running?)", "ESTATE"
  end
  local conn = client.new(sock, { now = now_ms, cond = new_cond, next_id = id_counter(path),
                                  client = "smolvm.ngx " .. core.VERSION })
  conn.path = path
  conn.pooled = pooled
  if pooled and sock:getreusedtimes() > 0 then
    conn.hello = true -- exchanged when it was made
    conn.reused = true
    return conn
  end
  local hello, msg, code = conn:handshake{ ready = ready, timeout = timeout_ms }
  if not hello then
    conn:close()
    return nil, msg, code
  end
  return conn
end

-- The request's connection to path (shared by its light threads), else a new one.
local function conn_for(path)
  local conns = request_conns()
  local c = conns[path]
  if c and not c.broken then return c end
  local msg, code
  c, msg, code = dial(path, true, M.config.call_timeout, true)
  if not c then return nil, msg, code end
  conns[path] = c
  return c
end

-- After a stream ended: a connection with no stream left goes back to the pool (a
-- broken one is forgotten; one with half a frame read is closed).
local function release(conn)
  if not conn.broken and conn.nstreams > 0 then return end
  local conns = request_conns()
  if conns[conn.path] == conn then conns[conn.path] = nil end
  if conn.broken then return end
  if not conn.pooled or not conn:idle() then return conn:close() end
  local ok = conn.sock:setkeepalive(M.config.keepalive_timeout, M.config.pool_size)
  if not ok then return conn:close() end
  conn.broken, conn.code = "returned to the pool", "EIO"
end

-- Open a stream for req on the VM's socket and take its first event. A pooled
-- connection that turns out to be dead (its supervisor went away while it was idle:
-- it broke before a single frame came back) is replaced once.
local function open(path, req, window, timeout_ms)
  for attempt = 1, 2 do
    local conn, msg, code = conn_for(path)
    if not conn then return nil, msg, code end
    local st, ev
    st, msg, code = conn:request(req, window)
    if st then ev, msg, code = st:next(timeout_ms) end
    if ev then return conn, st, ev end
    if st then st:close() end
    local stale = conn.reused and conn.broken and conn.frames_in == 0
    release(conn)
    if not stale or attempt == 2 then return nil, msg, code end
  end
end

------------------------------------------------------------------------ procs

local Proc = {}
Proc.__index = Proc

local function sanitize_signal(s)
  if type(s) ~= "string" or s == "" then return nil end
  return (s:sub(1, 15):gsub("[^A-Z0-9]", "?"))
end

local function exit_of(j)
  local e = { exit_code = floor(tonumber(j.exit_code) or 0), timed_out = j.timed_out == true,
              duration_ms = floor(tonumber(j.duration_ms) or 0) }
  e.signal = sanitize_signal(j.signal)
  if e.signal then e.exit_code = -1 end
  return e
end

local function new_proc(vm, conn, st, pid, stdin_open)
  return setmetatable({ vm = vm, conn = conn, st = st, pid_ = pid, stdin_open = stdin_open,
                        eof = {}, exited = false, closed_ = false }, Proc)
end

local function ms_or_default(ms)
  if ms == nil or ms < 0 then return 3600 * 1000 end -- the library's: an hour
  return ms
end

function Proc:pid() return self.pid_ end
function Proc:closed() return self.closed_ end

function Proc:_ended()
  if self.st.done then release(self.conn) end
end

-- stream, chunk | nil (both streams ended) | nil, msg, code
function Proc:read(ms)
  if not M.active() then phase_error("proc:read") end
  local deadline = now_ms() + ms_or_default(ms)
  while true do
    if self.exited or (self.eof[1] and self.eof[2]) then return nil end
    local ev, msg, code = self.st:next(floor(deadline - now_ms()))
    if not ev then
      self:_ended()
      return nil, msg, code
    end
    if ev.kind == "data" and (ev.fd == 1 or ev.fd == 2) then
      return ev.fd == 2 and "stderr" or "stdout", ev.data
    elseif ev.kind == "eof" then
      self.eof[ev.fd] = true
    elseif ev.kind == "exit" then
      self.exit = exit_of(ev.json)
      self.exited = true
      self:_ended()
    end
  end
end

function Proc:wait(ms)
  if not M.active() then phase_error("proc:wait") end
  local deadline = now_ms() + ms_or_default(ms)
  while not self.exited do
    local ev, msg, code = self.st:next(floor(deadline - now_ms()))
    if not ev then
      self:_ended()
      return nil, msg, code
    end
    if ev.kind == "exit" then
      self.exit = exit_of(ev.json)
      self.exited = true
      self:_ended()
    end -- output not read is discarded (and credited back)
  end
  local e = self.exit
  return { exit_code = e.exit_code, signal = e.signal, ok = e.exit_code == 0 and not e.signal,
           timed_out = e.timed_out, duration_ms = e.duration_ms }
end

function Proc:write(data, ms)
  if not M.active() then phase_error("proc:write") end
  if not self.stdin_open then
    return nil, "write: stdin is not open (spawn with stdin)", "ESTATE"
  end
  return self.st:write(0, data, ms_or_default(ms))
end

function Proc:close_stdin()
  if not self.stdin_open then return true end
  self.stdin_open = false
  return self.st:eof(0)
end

function Proc:kill(sig)
  if self.exited then return true end
  return self.st:control{ op = "signal", signal = sig }
end

function Proc:resize(rows, cols)
  return self.st:control{ op = "resize", rows = rows, cols = cols }
end

function Proc:close()
  if self.closed_ then return true end
  self.closed_ = true
  self.st:close() -- RESET: the agent kills or keeps the process as it was spawned to
  release(self.conn)
  return true
end

Proc.__tostring = function(self)
  return self.closed_ and "smolvm.proc (closed)" or ("smolvm.proc (" .. tostring(self.pid_) .. ")")
end

------------------------------------------------------------------------ VMs

local VM = {}
VM.__index = VM

local OUTPUT_LIMIT = 16 * 1024 * 1024 -- per stream, as the library's
local RUN_GRACE_MS = 5000             -- the agent kills at the timeout; its EXIT may lag
local READ_FILE_MAX = 256 * 1024 * 1024
local FILE_CHUNK = 65536
local JOB_MS = 60000                  -- a job that only touches the store and the host
local CREATE_MS = 120000              -- disks, keys: seconds on a loaded host

local function wrap_vm(ud, info, owned)
  local self = setmetatable({
    ud = ud, id_ = info.id, owned_ = owned, closed_ = false,
    dir = info.dir, transport = info.config and info.config.transport or "agent",
  }, VM)
  -- docs/agent-protocol.md: the supervisor's socket is agent.sock in the VM's directory.
  self.sock = info.dir .. "/agent.sock"
  return self
end

-- A job on this VM: after any job in progress on it (another request's), then ours.
function VM:_job(op, timeout_ms, ...)
  local what = op
  local deadline = now_ms() + timeout_ms
  while self.busy and not self.busy:done() do
    if not wait_job(self.busy, deadline) then
      return nil, string.format("%s in '%s': the vm is busy (another call on it is still "
                                .. "running)", op, self.id_), "ESTATE"
    end
  end
  self.busy = nil
  local job, msg, code = self.ud:job(op, ...)
  if not job then return nil, msg, code end
  self.busy = job
  local res = { await(what, floor(deadline - now_ms()), job) }
  if self.busy == job then self.busy = nil end
  return unpack(res, 1, 3)
end

function VM:id() return self.id_ end
function VM:owned() return self.owned_ end
function VM:closed() return self.closed_ end

local function need(self, what)
  if not M.active() then phase_error(what) end
  prepare()
end

function VM:status()
  need(self, "vm.status")
  local s, msg, code = self:_job("status", JOB_MS)
  if not s then return "error", msg, code end
  return s
end

function VM:info()
  need(self, "vm:info")
  return self:_job("info", JOB_MS)
end

function VM:start_begin(ms)
  need(self, "vm:start_begin")
  self.start_deadline = now_ms() + ms
  local ok, msg, code = self:_job("start_begin", ms + 5000, ms)
  if not ok then self.start_deadline = nil end
  return ok, msg, code
end

-- The supervisor's last boot milestone, for a timeout's message.
local function milestone(path)
  local conn = dial(path, false, 1000)
  if not conn then return "none" end
  local r = conn:call({ op = "status" }, 1000)
  conn:close()
  local m = r and client.guest_text(r.milestone)
  return (m and m ~= "") and m or "none"
end

function VM:start_finish()
  need(self, "vm:start_finish")
  local deadline = self.start_deadline
  if not deadline then
    return nil, "start '" .. self.id_ .. "': no start in progress", "ESTATE"
  end
  self.start_deadline = nil
  local left = floor(deadline - now_ms())
  local conn, msg, code
  -- A connection of its own: its hello is the guest's readiness.
  if left > 0 then conn, msg, code = dial(self.sock, true, left, false) end
  if conn then
    conn:close()
    return self:_job("start_confirm", JOB_MS)
  end
  local reason
  if left <= 0 or code == "ETIMEDOUT" then
    code = "ETIMEDOUT"
    reason = "the guest was not ready in time (last milestone: " .. milestone(self.sock) .. ")"
  else
    -- A GOAWAY says why (EVMM: the guest failed, or the VMM exited).
    reason = tostring(msg):gsub("^agent connection: ", "")
  end
  local ok, amsg, acode = self:_job("start_abort", JOB_MS, code, reason)
  if ok then return nil, "start '" .. self.id_ .. "': " .. reason, code end
  return nil, amsg, acode
end

function VM:start(ms)
  local ok, msg, code = self:start_begin(ms)
  if not ok then return nil, msg, code end
  return self:start_finish()
end

function VM:stop(ms)
  need(self, "vm:stop")
  return self:_job("stop", ms + 10000, ms)
end

function VM:delete()
  need(self, "vm:delete")
  return self:_job("delete", JOB_MS)
end

function VM:keep()
  need(self, "vm:keep")
  local ok, msg, code = self:_job("keep", JOB_MS)
  if not ok then return nil, msg, code end
  self.owned_ = false
  return true
end

-- Pause, suspend and snapshot run on a job's thread (a snapshot copies the guest's
-- memory); fork makes VMs of its own and is not offered here yet.
function VM:pause()
  need(self, "vm:pause")
  return self:_job("pause", JOB_MS)
end

function VM:resume()
  need(self, "vm:resume")
  return self:_job("resume", JOB_MS)
end

function VM:suspend()
  need(self, "vm:suspend")
  return self:_job("suspend", 600 * 1000)
end

function VM:snapshot(name)
  need(self, "vm:snapshot")
  return self:_job("snapshot", 600 * 1000, name)
end

function VM:fork()
  return nil, "fork in '" .. self.id_ .. "': not available inside nginx yet (call it from "
    .. "outside the request path, e.g. a smolvm.worker thread)", "EINVAL"
end

function VM:forward(host_port, guest_port, address)
  need(self, "vm:forward")
  return self:_job("forward", JOB_MS, host_port, guest_port, address)
end

function VM:unforward(host_port)
  need(self, "vm:unforward")
  return self:_job("unforward", JOB_MS, host_port)
end

function VM:upload(local_path, remote)
  need(self, "vm:upload")
  return self:_job("upload", 3600 * 1000, local_path, remote)
end

function VM:download(remote, local_path)
  need(self, "vm:download")
  return self:_job("download", 3600 * 1000, remote, local_path)
end

function VM:close()
  if self.closed_ then return true end
  if not M.active() then
    -- Never blocks: the binding closes it on a thread.
    self.closed_ = true
    return self.ud:close()
  end
  local ok, msg, code = self:_job("close", JOB_MS)
  self.closed_ = true
  return ok, msg, code
end

local function env_list(env)
  if not env then return nil end
  local out = {}
  for k, v in pairs(env) do out[#out + 1] = k .. "=" .. tostring(v) end
  if #out == 0 then return nil end
  table.sort(out)
  return out
end

local function wrapped(prefix, msg, code)
  return nil, prefix .. ": " .. tostring(msg), code
end

-- An exec/attach stream up to its first REPLY (the pid). A guest busy starting other
-- processes may take a while to start this one: as long as the command's own timeout,
-- at least call_timeout.
function VM:_proc_open(req, window, what)
  local first = M.config.call_timeout
  if req.timeout_ms and req.timeout_ms > first then first = req.timeout_ms end
  local conn, st, ev = open(self.sock, req, window, first)
  if not conn then return wrapped(what, st, ev) end
  if ev.kind ~= "reply" or type(ev.json.pid) ~= "number" or ev.json.pid <= 0 then
    st:close()
    release(conn)
    return wrapped(what, "agent: expected the process's pid first", "EIO")
  end
  st:set_send_window(ev.json.window)
  return conn, st, floor(ev.json.pid)
end

local function exec_request(cmd, c, kill_on_reset)
  local req = { op = "exec", cmd = cmd, env = env_list(c.env), cwd = c.cwd,
                on_reset = kill_on_reset and "kill" or "keep" }
  req.stdin = (c.stdin ~= nil and c.stdin ~= false) or c.pty_rows ~= nil
  if c.pty_rows and c.pty_cols then req.pty = { rows = c.pty_rows, cols = c.pty_cols } end
  if c.timeout_ms and c.timeout_ms > 0 then req.timeout_ms = c.timeout_ms end
  return req
end

function VM:run(cmd, c)
  need(self, "vm:run")
  c = c or {}
  local what = "run in '" .. self.id_ .. "'"
  if self.transport ~= "agent" then
    -- SSH: the library's run on a thread; the output arrives whole at the end.
    local r, msg, code = self:_job("run", (c.timeout_ms or 3600000) + 10000, cmd, {
      timeout_ms = c.timeout_ms, env = c.env, cwd = c.cwd, stdin = c.stdin })
    if r and c.on_output then
      if r.stdout ~= "" then c.on_output("stdout", r.stdout) end
      if r.stderr ~= "" then c.on_output("stderr", r.stderr) end
    end
    return r, msg, code
  end
  local t0 = now_ms()
  local timeout = c.timeout_ms or 0
  local deadline = t0 + (timeout > 0 and timeout + RUN_GRACE_MS or 3600 * 1000)
  local conn, st, pid = self:_proc_open(exec_request(cmd, { env = c.env, cwd = c.cwd,
    stdin = c.stdin ~= nil, timeout_ms = timeout }, true), nil, what)
  if not conn then return nil, st, pid end
  local p = new_proc(self, conn, st, pid, c.stdin ~= nil)
  local ok, msg, code = true, nil, nil
  if c.stdin then
    ok, msg, code = p:write(c.stdin, floor(deadline - now_ms()))
    if ok then ok, msg, code = p:close_stdin() end
  end
  local out, err = {}, {}
  local nout, nerr, truncated = 0, 0, false
  local cb_failed, cb_err = false, nil
  while ok do
    local stream, chunk, rcode = p:read(floor(deadline - now_ms()))
    if stream == nil then
      if chunk ~= nil then ok, msg, code = false, chunk, rcode end
      break
    end
    if c.on_output and not cb_failed then
      local cok, e = pcall(c.on_output, stream, chunk)
      if not cok then cb_failed, cb_err = true, e end
    end
    if stream == "stdout" then
      local take = OUTPUT_LIMIT - nout
      if #chunk > take then truncated = true; chunk = chunk:sub(1, take) end
      out[#out + 1] = chunk
      nout = nout + #chunk
    else
      local take = OUTPUT_LIMIT - nerr
      if #chunk > take then truncated = true; chunk = chunk:sub(1, take) end
      err[#err + 1] = chunk
      nerr = nerr + #chunk
    end
  end
  local e
  if ok then
    e, msg, code = p:wait(floor(deadline - now_ms()))
    ok = e ~= nil
  end
  if not ok and (code == "ETIMEDOUT" or code == "EINTR") then
    p:kill("KILL") -- and the RESET kills the group too
  end
  p:close()
  if cb_failed then error(cb_err, 0) end
  if not ok then return wrapped(what, msg, code) end
  if e.timed_out then
    return wrapped(what, string.format("command timed out after %d ms (killed)", timeout),
                   "ETIMEDOUT")
  end
  local so, se = table.concat(out), table.concat(err)
  return { stdout = so, stderr = se, output = so .. se, exit_code = e.exit_code,
           ok = e.exit_code == 0, signal = e.signal, truncated = truncated,
           duration_ms = floor(now_ms() - t0) }
end

function VM:spawn(cmd, c)
  need(self, "vm:spawn")
  c = c or {}
  local what = "spawn in '" .. self.id_ .. "'"
  if self.transport ~= "agent" then
    return nil, what .. ": needs the agent transport (this vm uses 'ssh')", "ESTATE"
  end
  local conn, st, pid = self:_proc_open(exec_request(cmd, c, not c.keep), nil, what)
  if not conn then return nil, st, pid end
  return new_proc(self, conn, st, pid, c.stdin == true or c.pty_rows ~= nil)
end

function VM:attach(pid)
  need(self, "vm:attach")
  local what = "attach to " .. tostring(pid) .. " in '" .. self.id_ .. "'"
  if self.transport ~= "agent" then
    return nil, what .. ": needs the agent transport (this vm uses 'ssh')", "ESTATE"
  end
  local conn, st, got = self:_proc_open({ op = "attach", pid = pid }, nil, what)
  if not conn then return nil, st, got end
  return new_proc(self, conn, st, got, false)
end

function VM:processes()
  need(self, "vm:processes")
  local what = "processes in '" .. self.id_ .. "'"
  if self.transport ~= "agent" then
    return nil, what .. ": needs the agent transport (this vm uses 'ssh')", "ESTATE"
  end
  local conn, st, ev = open(self.sock, { op = "ps" }, nil, M.config.call_timeout)
  if not conn then return wrapped(what, st, ev) end
  st:close()
  release(conn)
  local list = ev.kind == "reply" and ev.json.processes
  if type(list) ~= "table" then return wrapped(what, "a malformed reply", "EIO") end
  return list
end

function VM:read_file(path)
  need(self, "vm:read_file")
  if self.transport ~= "agent" then return self:_job("read_file", 3600 * 1000, path) end
  local what = "read_file in '" .. self.id_ .. "'"
  local conn, st, ev = open(self.sock, { op = "read_file", path = path, max = READ_FILE_MAX },
                            nil, M.config.call_timeout)
  if not conn then return wrapped(what, st, ev) end
  local parts, n = {}, 0
  local msg, code
  while ev do
    if ev.kind == "data" then
      -- Whatever the guest said the size was, the host's limit holds.
      if n + #ev.data > READ_FILE_MAX then
        ev, msg, code = nil, string.format("'%s' is larger than %d bytes", path, READ_FILE_MAX),
          "ENOSPC"
        break
      end
      parts[#parts + 1] = ev.data
      n = n + #ev.data
    end
    if st.done then break end
    ev, msg, code = st:next(M.config.call_timeout)
  end
  st:close()
  release(conn)
  if not ev then return wrapped(what, msg, code) end
  return table.concat(parts)
end

function VM:write_file(path, data)
  need(self, "vm:write_file")
  if self.transport ~= "agent" then return self:_job("write_file", 3600 * 1000, path, data) end
  local what = "write_file in '" .. self.id_ .. "'"
  local conn, st, ev = open(self.sock, { op = "write_file", path = path, mode = 420,
                                         mkdirs = true }, nil, M.config.call_timeout)
  if not conn then return wrapped(what, st, ev) end
  local ok, msg, code = true, nil, nil
  if ev.kind ~= "reply" then ok, msg, code = false, "agent: expected a reply to write_file", "EIO" end
  if ok then
    st:set_send_window(ev.json.window or 0)
    for i = 1, #data, FILE_CHUNK do
      ok, msg, code = st:write(0, data:sub(i, i + FILE_CHUNK - 1), M.config.call_timeout)
      if not ok then break end
    end
  end
  if ok then ok, msg, code = st:eof(0) end
  -- The final REPLY comes once the file is written, synced and renamed.
  while ok and not st.done do
    local e
    e, msg, code = st:next(M.config.call_timeout)
    ok = e ~= nil
  end
  st:close()
  release(conn)
  if not ok then return wrapped(what, msg, code) end
  return true
end

VM.__tostring = function(self) return "smolvm.vm (" .. tostring(self.id_) .. ")" end

------------------------------------------------------------------------ constructors

--- create(c) -> backend | nil, msg, code: c is vm.lua's table for core.vm_create.
function M.create(c)
  prepare()
  local vm, info, code = await("create", CREATE_MS, core.vm_create(c, true))
  if not vm then return nil, info, code end
  return wrap_vm(vm, info, true)
end

--- open(id) -> backend | nil, msg, code
function M.open(id)
  prepare()
  local vm, info, code = await("open '" .. id .. "'", JOB_MS, core.job_open(id))
  if not vm then return nil, info, code end
  return wrap_vm(vm, info, false)
end

--- list() -> { info, ... } | nil, msg, code
function M.list()
  prepare()
  return await("list", JOB_MS, core.job_list())
end

M.VM = VM
M.Proc = Proc
return M
