-- SPDX-License-Identifier: MIT
-- Shared by the real-VM specs (run with this directory as the working directory).
local M = {}

M.LUA = assert(os.getenv("SMOLVM_LUA"), "SMOLVM_LUA: path of smolvm-lua")
M.BOOT = 120 -- seconds; TCG boots take seconds, a loaded CI machine more

--- Single-quote a word for sh.
function M.quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- Run a shell command; its stdout+stderr and exit status (0 on success).
function M.sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  local ok, _, code = p:close()
  return out, ok and 0 or code
end

--- A new temporary file holding content (chmod mode when given); its path.
function M.tmpfile(content, mode)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
  if mode then M.sh(("chmod %s %q"):format(mode, path)) end
  return path
end

--- A file's content, or nil when it cannot be read.
function M.readfile(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

--- pred()'s first truthy value within seconds, else nil.
function M.wait_for(pred, seconds)
  local deadline = os.time() + seconds
  repeat
    local v = pred()
    if v then return v end
    M.sh("sleep 0.2")
  until os.time() > deadline
  return nil
end

return M
