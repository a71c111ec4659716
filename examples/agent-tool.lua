-- SPDX-License-Identifier: MIT
-- An agent tool: run untrusted code (written by a model) in a throwaway sandbox and
-- return what happened, as a table ready to serialize into the model's context.
-- smolvm.with always stops and deletes the sandbox, even when the code misbehaves.
-- network = "user" is closed to the outside (no outbound connections at all; egress
-- policies need network = "nat"): the code can compute, not call home.
--   smolvm-lua examples/agent-tool.lua
local smolvm = require "smolvm"

local MAX_OUTPUT = 8 * 1024

local function clip(s)
  if #s <= MAX_OUTPUT then return s end
  return s:sub(1, MAX_OUTPUT) .. "\n[... " .. (#s - MAX_OUTPUT) .. " bytes cut]"
end

--- run_code{ language = "python"|"sh", code = string, timeout = seconds }
--- -> { ok, exit_code, stdout, stderr } or { ok = false, error = message }
local function run_code(args)
  local file = args.language == "python" and "/tmp/main.py" or "/tmp/main.sh"
  local cmd = (args.language == "python" and "python3 " or "sh ") .. file
  local result, err = smolvm.with({ memory = 512, network = "user" }, function(vm)
    assert(vm:write_file(file, args.code))
    local r, msg, code = vm:run(cmd, { timeout = args.timeout or 30 })
    if not r then return { ok = false, error = msg .. " (" .. tostring(code) .. ")" } end
    return { ok = r.exit_code == 0, exit_code = r.exit_code,
             stdout = clip(r.stdout), stderr = clip(r.stderr) }
  end)
  if not result then return { ok = false, error = err } end
  return result
end

local r = run_code{ language = "python", code = "print(sum(range(10)))\n" }
print(require("smolvm.json").encode(r))
assert(r.ok and r.stdout == "45\n", "unexpected result")

local bad = run_code{ language = "python", code = "raise SystemExit(3)\n" }
print(require("smolvm.json").encode(bad))
assert(bad.exit_code == 3)
