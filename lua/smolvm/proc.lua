-- SPDX-License-Identifier: MIT
--- smolvm.proc: a process in a guest, from vm:spawn() or vm:attach() (docs/lua-api.md).
--
--   local p = assert(vm:spawn("pip install requests", { timeout = 600 }))
--   for line in p:lines() do print(line) end
--   local st = assert(p:wait())          -- { exit_code=, signal=, ok= }
--
-- A table wrapping a "smolvm.proc" userdata of smolvm.core; units here are seconds.
-- Pure Lua for 5.1/LuaJIT and 5.4.

local schema = require "smolvm.schema"

local M = {}

local MAX_TIMEOUT = 24 * 3600

local methods = {}
local Proc_mt = { __name = "smolvm.proc" }

local function argerror(level, fmt, ...)
  error(string.format(fmt, ...), level + 1)
end

local function ud(self)
  local u = type(self) == "table" and rawget(self, "_ud")
  if not u then error("bad self: expected a smolvm proc object (use proc:method())", 3) end
  if u:closed() then error("attempt to use a closed proc", 3) end
  return u
end

-- { timeout = seconds } -> milliseconds, or nil (the library's limit). `zero_ok`:
-- timeout 0 means "do not wait".
local function timeout_ms(where, opts, zero_ok)
  if opts == nil then return nil end
  if type(opts) ~= "table" then
    argerror(3, "%s: expected table of options, got %s", where, schema.describe(opts))
  end
  for k in pairs(opts) do
    if k ~= "timeout" then argerror(3, "%s: %s: unknown option", where, tostring(k)) end
  end
  local t = opts.timeout
  if t == nil then return nil end
  if zero_ok and t == 0 then return 0 end
  if type(t) ~= "number" or t ~= t or t <= 0 or t > MAX_TIMEOUT then
    argerror(3, "%s: timeout: expected number of seconds %s and <= %d, got %s", where,
             zero_ok and ">= 0" or "> 0", MAX_TIMEOUT, schema.describe(t))
  end
  local ms = math.floor(t * 1000 + 0.5)
  return ms < 1 and 1 or ms
end

--- proc:read{ timeout= } -> stream, chunk | nil (both streams ended) | nil, msg, code
-- stream is "stdout" or "stderr"; chunk the bytes as they came. timeout = 0 takes
-- what has arrived without waiting (nil, msg, "ETIMEDOUT" when nothing has).
function methods.read(self, opts)
  local u = ud(self)
  return u:read(timeout_ms("read", opts, true))
end

--- proc:fd() -> integer: for an event loop that waits on several processes (or on a
-- process and a terminal): the descriptor that becomes readable when more may be
-- read, -1 without a connection. Read with { timeout = 0 } until "ETIMEDOUT" before
-- each wait: what has arrived already makes no descriptor readable. Shared by the
-- processes of one VM object.
function methods.fd(self)
  return ud(self):fd()
end

--- proc:lines() -> iterator over stdout lines as they arrive (without "\n"); stderr is
-- passed over. A read error raises.
function methods.lines(self)
  local u = ud(self)
  local buf, done = "", false
  return function()
    while true do
      local nl = buf:find("\n", 1, true)
      if nl then
        local line = buf:sub(1, nl - 1)
        buf = buf:sub(nl + 1)
        return line
      end
      if done then
        if buf ~= "" then
          local rest = buf
          buf = ""
          return rest
        end
        return nil
      end
      local stream, chunk, code = u:read()
      if stream == nil and chunk ~= nil then error(chunk .. " (" .. tostring(code) .. ")", 2) end
      if stream == nil then
        done = true
      elseif stream == "stdout" then
        buf = buf .. chunk
      end
    end
  end
end

--- proc:write(data) -> true | nil, msg, code (stdin: spawn with stdin = true or a pty)
function methods.write(self, data)
  local u = ud(self)
  if type(data) ~= "string" then
    argerror(2, "write: data: expected string, got %s", schema.describe(data))
  end
  return u:write(data)
end

--- proc:close_stdin() -> true | nil, msg, code
function methods.close_stdin(self)
  return ud(self):close_stdin()
end

--- proc:kill([signal]) -> true | nil, msg, code: the signal ("TERM" default) to the
-- process group.
function methods.kill(self, sig)
  local u = ud(self)
  if sig ~= nil and (type(sig) ~= "string" or not sig:match("^[A-Z0-9]+$")) then
    argerror(2, "kill: signal: expected a name such as \"TERM\" or \"KILL\", got %s",
             schema.describe(sig))
  end
  return u:kill(sig or "TERM")
end

--- proc:resize(rows, cols) -> true | nil, msg, code (pty only)
function methods.resize(self, rows, cols)
  local u = ud(self)
  if not schema.is_integer(rows) or rows < 1 or rows > 1000 then
    argerror(2, "resize: rows: expected integer 1..1000, got %s", schema.describe(rows))
  end
  if not schema.is_integer(cols) or cols < 1 or cols > 1000 then
    argerror(2, "resize: cols: expected integer 1..1000, got %s", schema.describe(cols))
  end
  return u:resize(math.floor(rows), math.floor(cols))
end

--- proc:wait{ timeout= } -> { exit_code=, signal=, ok=, timed_out= } | nil, msg, code
-- Output not read yet is discarded (the guest keeps the last 64 KiB for attach).
function methods.wait(self, opts)
  local u = ud(self)
  return u:wait(timeout_ms("wait", opts))
end

--- proc:close(): frees the handle; a process spawned with keep = false is killed.
function methods.close(self)
  local u = type(self) == "table" and rawget(self, "_ud")
  if u then u:close() end
  return true
end

Proc_mt.__index = function(self, k)
  local m = methods[k]
  if m ~= nil then return m end
  if k == "pid" then return ud(self):pid() end
  return nil
end
Proc_mt.__close = function(self) pcall(methods.close, self) end
Proc_mt.__tostring = function(self)
  local u = rawget(self, "_ud")
  return u and tostring(u) or "smolvm.proc"
end

function M.wrap(u)
  return setmetatable({ _ud = u }, Proc_mt)
end

M.methods = methods
return M
