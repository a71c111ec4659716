-- SPDX-License-Identifier: MIT
-- Shared by the busted specs in this directory (on LUA_PATH from ctest).
local M = {}

--- Single-quote a word for sh.
function M.quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- A new temporary directory.
function M.mktemp_dir()
  local p = assert(io.popen("mktemp -d"))
  local d = p:read("*l")
  p:close()
  return d
end

function M.rm_rf(d)
  os.execute("rm -rf " .. M.quote(d))
end

function M.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

function M.read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

function M.write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

--- The interpreter these specs run under ("lua5.4" or "luajit").
M.INTERP = os.getenv("SMOLVM_TEST_INTERP") == "luajit" and "luajit" or "lua5.4"

--- Run Lua code in a child interpreter (same ABI, same LUA_PATH/LUA_CPATH) with
--- SMOLVM_STATE_DIR set; returns its stdout+stderr and exit status.
function M.child(state_dir, code)
  local cmd = "SMOLVM_STATE_DIR=" .. M.quote(state_dir) .. " " .. M.INTERP .. " -e "
    .. M.quote(code) .. " 2>&1; echo \"rc=$?\""
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return (out:gsub("rc=%d+%s*$", "")), tonumber(out:match("rc=(%d+)%s*$"))
end

return M
