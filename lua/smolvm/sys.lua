-- SPDX-License-Identifier: MIT
--- smolvm.sys: what the facade needs from the operating system: shell quoting,
-- terminal detection, a monotonic clock and reading small JSON files. One copy, used by the recipe runner, the
-- `smolvm` command, the Slurm controller and the thread-pool worker.
--
-- Where the binding is loaded, terminal detection and the clock come from smolvm.core
-- (isatty(2), CLOCK_MONOTONIC). Without it (a busted spec with a stand-in module, a
-- host without the built module) the fallbacks are pure Lua: `[ -t FD ]` through the
-- shell (answered once per descriptor) and /proc/uptime (10 ms steps).
--
-- Pure Lua for 5.1/LuaJIT and 5.4.

local M = {}

local core
do
  local ok, c = pcall(require, "smolvm.core")
  if ok and type(c) == "table" then core = c end
end

--- shell_quote(s) -> s as one word for sh: unchanged when it holds only characters
-- the shell never interprets, else in single quotes.
function M.shell_quote(s)
  s = tostring(s)
  if s:match("^[%w@%%+=:,./_-]+$") then return s end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

--- command_line(words) -> the words as one shell command line, each quoted.
function M.command_line(words)
  local q = {}
  for i, a in ipairs(words) do q[i] = M.shell_quote(a) end
  return table.concat(q, " ")
end

local tty_cache = {}

local function shell_isatty(fd)
  local ok, how, code = os.execute("[ -t " .. fd .. " ]")
  if type(ok) == "number" then return ok == 0 end -- Lua 5.1
  return ok == true and how == "exit" and code == 0
end

--- isatty(fd) -> whether descriptor fd (0 stdin, 1 stdout, 2 stderr) is a terminal.
function M.isatty(fd)
  if core and type(core.isatty) == "function" then return core.isatty(fd) end
  local v = tty_cache[fd]
  if v == nil then
    v = shell_isatty(math.floor(tonumber(fd) or -1))
    tty_cache[fd] = v
  end
  return v
end

local function uptime_ms()
  local f = io.open("/proc/uptime", "r")
  if f then
    local t = tonumber((f:read("*l") or ""):match("^(%S+)"))
    f:close()
    if t then return math.floor(t * 1000 + 0.5) end
  end
  return os.time() * 1000
end

--- monotonic_ms() -> milliseconds of a clock that never jumps (for durations and
-- deadlines; its origin is arbitrary).
function M.monotonic_ms()
  if core and type(core.monotonic_ms) == "function" then return core.monotonic_ms() end
  return uptime_ms()
end

--- now() -> monotonic_ms() in seconds (a float), for timings shown to users.
function M.now()
  return M.monotonic_ms() / 1000
end

--- poll(fds, timeout_ms) -> { ready, ... } | nil, msg, code: wait until one of the
-- descriptors is readable (or hung up), at most timeout_ms (< 0: without limit);
-- ready[i] says whether fds[i] is. A signal ends the wait early: nil, "interrupted",
-- "EINTR". nil (the function) where the binding is not loaded.
M.poll = core and core.poll

--- read_json(path [, max]) -> the JSON object or array in the file, or nil (no file,
-- more than max bytes (default 256 KiB), not JSON, or no binding to decode it).
function M.read_json(path, max)
  max = max or 256 * 1024
  if not (core and core.json_decode) then return nil end
  local f = io.open(path, "rb")
  if not f then return nil end
  local text = f:read(max + 1)
  f:close()
  if type(text) ~= "string" or #text > max then return nil end
  local ok, v = pcall(core.json_decode, text)
  if ok and type(v) == "table" then return v end
  return nil
end

--- term_cols(fd) -> the width of the terminal on fd, or nil.
function M.term_cols(fd)
  if not (core and core.tty_size) then return nil end
  local rows, cols = core.tty_size(fd)
  if not rows then return nil end
  return cols
end

return M
