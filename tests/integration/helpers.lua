-- SPDX-License-Identifier: MIT
-- Shared by the real-VM specs (run with this directory as the working directory).
local M = {}

M.LUA = assert(os.getenv("SMOLVM_LUA"), "SMOLVM_LUA: path of smolvm-lua")

-- Network safety: as root in this machine's own network namespace, a spec's VMs on
-- network "auto" would be NATed out of its real uplink. The wrappers ctest uses
-- (run-spec.sh, nat-netns.sh, slurm-cluster.sh) run specs in namespaces of their own
-- and say so (SMOLVM_TEST_NETNS); started by hand as root without one, a spec refuses
-- to run. image-test.sh, whose guests have network "none" and whose builds need the
-- host's mirror, says so too (SMOLVM_TEST_HOST_NETNS_OK).
do
  local f = io.open("/proc/self/status")
  local uid = f and f:read("a"):match("\nUid:%s*(%d+)")
  if f then f:close() end
  if uid == "0" and not os.getenv("SMOLVM_TEST_NETNS") and not os.getenv("SMOLVM_TEST_HOST_NETNS_OK") then
    error("this spec runs VMs as root: run it through ctest, whose wrapper gives it a "
          .. "network namespace of its own, not in this machine's", 0)
  end
end
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
