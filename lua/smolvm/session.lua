-- SPDX-License-Identifier: MIT
--- smolvm.session: the interactive and following parts of the `smolvm` command
-- (smolvm.cli): a terminal session on a guest's PTY (`smolvm shell`, `exec -it`),
-- following a guest process's output (`attach`) and a console log (`logs -f`).
--
-- A terminal session spawns the command on a PTY in the guest (the agent's), puts
-- the host terminal in raw mode, and then waits on three things at once with
-- core.poll: host stdin (forwarded as typed, Ctrl-C included: it is the guest's),
-- the agent connection (output, written to stdout as it comes) and SIGWINCH (the new
-- size goes to the guest's PTY). The terminal mode is put back however it ends: the
-- command exiting, an error, SIGINT/SIGTERM from outside (smolvm-lua's handler
-- restores it at once), or an exit that skips all that (atexit). The command's exit
-- status is returned; killed by a signal it is 128 + the signal's number.
--
-- Needs the binding's host helpers (smolvm.core: tty_raw, tty_size, winch, poll,
-- read_fd, follow). Pure Lua for 5.1/LuaJIT and 5.4.

local core = require "smolvm.core"

local M = {}

local SIGNALS = { HUP = 1, INT = 2, QUIT = 3, ILL = 4, TRAP = 5, ABRT = 6, BUS = 7, FPE = 8,
                  KILL = 9, USR1 = 10, SEGV = 11, USR2 = 12, PIPE = 13, ALRM = 14, TERM = 15,
                  XCPU = 24, XFSZ = 25 }

--- exit_status(st) -> the status a shell would give a process that ended so
-- (st from proc:wait: { exit_code=, signal= }).
function M.exit_status(st)
  if st.signal then return 128 + (SIGNALS[st.signal] or 9) end
  if type(st.exit_code) ~= "number" or st.exit_code < 0 then return 128 + 9 end
  return st.exit_code
end

local function write_out(stream, chunk)
  local f = stream == "stderr" and io.stderr or io.stdout
  f:write(chunk)
  f:flush()
end

-- The terminal's size, or the classic 24x80 when stdout is not a terminal.
local function term_size()
  local rows, cols = core.tty_size(1)
  if not rows then rows, cols = core.tty_size(0) end
  if not rows then return 24, 80 end
  if rows > 1000 then rows = 1000 end
  if cols > 1000 then cols = 1000 end
  return rows, cols
end
M.term_size = term_size

-- A TERM value safe to pass on (a terminfo name), else a common one.
local function term_name()
  local t = os.getenv("TERM")
  if t and #t <= 64 and t:match("^[%w%.%+%-_]+$") and t ~= "dumb" then return t end
  return "xterm-256color"
end

-- Take all output that has arrived; true when both streams have ended.
local function drain(p)
  while true do
    local stream, chunk, code = p:read{ timeout = 0 }
    if stream then
      write_out(stream, chunk)
    elseif chunk == nil then
      return true
    elseif code == "ETIMEDOUT" then
      return false
    else
      error({ msg = tostring(chunk), code = code }, 0)
    end
  end
end

-- The loop of a terminal session once the process runs. Returns the exit status.
local function pump(p, stdin_open)
  while true do
    if drain(p) then break end
    local fds = { p:fd() }
    if stdin_open then fds[2] = 0 end
    local ready, winch = core.poll(fds, -1)
    if winch then
      local rows, cols = term_size()
      p:resize(rows, cols)
    end
    if ready and stdin_open and ready[2] then
      local data, err, code = core.read_fd(0, 65536)
      if data == nil and code ~= "EAGAIN" then
        error({ msg = "read stdin: " .. tostring(err), code = code }, 0)
      elseif data == "" then
        -- End of input (not a terminal): the guest's PTY gets end-of-file.
        stdin_open = false
        p:close_stdin()
      elseif data then
        local ok, werr, wcode = p:write(data)
        if not ok then error({ msg = "write to the guest: " .. tostring(werr), code = wcode }, 0) end
      end
    end
  end
  local st, err, code = p:wait{ timeout = 30 }
  if not st then error({ msg = "waiting for its exit status: " .. tostring(err), code = code }, 0) end
  return M.exit_status(st)
end

--- terminal(vm, cmd, opts) -> exit status | nil, msg, code: run cmd on a PTY in the
-- guest, connected to this terminal. opts: { env =, cwd = }.
function M.terminal(vm, cmd, opts)
  opts = opts or {}
  local rows, cols = term_size()
  local env = {}
  for k, v in pairs(opts.env or {}) do env[k] = v end
  env.TERM = env.TERM or term_name()
  local p, err, code = vm:spawn(cmd, { pty = { rows = rows, cols = cols }, env = env,
                                       cwd = opts.cwd, keep = false })
  if not p then return nil, err, code end
  local raw
  if core.isatty(0) then
    raw, err, code = core.tty_raw(0)
    if not raw then
      p:close()
      return nil, "raw terminal: " .. tostring(err), code
    end
  end
  core.winch(true)
  local ok, res = pcall(pump, p, true)
  core.winch(false)
  if raw then raw:restore() end
  p:close() -- kills the process if it still runs (the session was cut short)
  if not ok then
    if type(res) == "table" then return nil, res.msg, res.code end
    error(res, 0) -- "interrupted": the caller's status
  end
  return res
end

--- follow(vm, pid) -> exit status | nil, msg, code: the output a process made so far
-- (what the guest kept of it), then its live output, until it ends. Ctrl-C (SIGINT)
-- ends the following: raises "interrupted"; the process runs on.
function M.follow_proc(vm, pid)
  local p, err, code = vm:attach(pid)
  if not p then return nil, err, code end
  local ok, res = pcall(function()
    while true do
      local stream, chunk, rcode = p:read{ timeout = 3600 }
      if stream then
        write_out(stream, chunk)
      elseif chunk == nil then
        break
      elseif rcode ~= "ETIMEDOUT" then
        if rcode == "EINTR" then error("interrupted", 0) end
        error({ msg = tostring(chunk), code = rcode }, 0)
      end
    end
    local st, werr, wcode = p:wait{ timeout = 30 }
    if not st then error({ msg = tostring(werr), code = wcode }, 0) end
    return M.exit_status(st)
  end)
  p:close() -- an attach stream never kills the process
  if not ok then
    if type(res) == "table" then return nil, res.msg, res.code end
    error(res, 0)
  end
  return res
end

--- follow_log(path, emit) -> true | nil, msg, code: emit(chunk) for what the file
-- holds and then for what is appended, across rotation, until its directory goes
-- (the sandbox was deleted: true) or SIGINT (raises "interrupted").
-- tail_lines: start with only the last N lines of what is there now.
function M.follow_log(path, emit, tail_lines)
  local f, err, code = core.follow(path)
  if not f then return nil, err, code end
  local ok, res, rmsg, rcode = pcall(function()
    if tail_lines then
      -- What is there now, without waiting; keep its last N lines.
      local parts = {}
      while true do
        local chunk, _, c = f:read(0)
        if not chunk then
          if c == "ENOENT" then break end
          if c ~= "ETIMEDOUT" and c ~= "EINTR" then return nil, "read " .. path, c end
          if c == "ETIMEDOUT" then break end
        else
          parts[#parts + 1] = chunk
        end
      end
      local all = table.concat(parts)
      local lines = {}
      for l in all:gmatch("[^\n]*\n?") do if l ~= "" then lines[#lines + 1] = l end end
      for i = math.max(1, #lines - tail_lines + 1), #lines do emit(lines[i]) end
    end
    while true do
      local chunk, msg, c = f:read(-1)
      if chunk then
        emit(chunk)
      elseif c == "ENOENT" then
        return true
      elseif c ~= "EINTR" and c ~= "ETIMEDOUT" then
        return nil, msg, c
      end
    end
  end)
  f:close()
  if not ok then error(res, 0) end
  return res, rmsg, rcode
end

return M
