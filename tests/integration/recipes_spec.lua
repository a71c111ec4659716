-- SPDX-License-Identifier: MIT
-- Recipes and examples against real VMs, run through smolvm-lua exactly as a user
-- would. Run by tests/integration/run-spec.sh (temporary state dir; skips with the
-- reason when the host cannot run sandboxes).
local smolvm = require "smolvm"

local sh_quote = require("helpers").quote

describe("recipes with real VMs", function()
  local bin = assert(os.getenv("SMOLVM_LUA"), "SMOLVM_LUA: path of smolvm-lua")
  local root = assert(os.getenv("SMOLVM_SOURCE_DIR"), "SMOLVM_SOURCE_DIR")
  local function run(cmd)
    local p = io.popen(cmd .. " 2>&1; echo \"__status=$?\"")
    local out = p:read("*a")
    p:close()
    return tonumber(out:match("__status=(%d+)%s*$")), out
  end
  for _, ex in ipairs({ "hello.lua", "hello-recipe.lua", "data-task.lua", "web-forward.lua",
                        "two-sandboxes.lua", "agent-tool.lua" }) do
    it("example " .. ex .. " runs green", function()
      local status, out = run("cd " .. root .. "/examples && " .. sh_quote(bin) .. " " .. ex)
      assert.equal(0, status, out)
    end)
  end

  it("SIGINT/SIGTERM during a recipe leaves nothing behind", function()
    for _, sig in ipairs({ "INT", "TERM" }) do
      local name = "sigtest-" .. sig:lower()
      local path = os.tmpname()
      local f = assert(io.open(path, "w"))
      f:write('sandbox "' .. name .. '" { keep = true, steps = { "sleep 600" } }\n')
      f:close()
      -- Wait for the step to start, then signal the interpreter.
      local status, out = run(sh_quote(bin) .. " " .. sh_quote(path) .. " & pid=$!; "
        .. "for i in $(seq 1 600); do sleep 0.5; "
        .. sh_quote(bin) .. " " .. sh_quote(root .. "/scripts/smolvm") .. " exec " .. name
        .. " -- pgrep -x sleep >/dev/null 2>&1 && break; done; kill -" .. sig .. " $pid; wait $pid")
      os.remove(path)
      assert.are_not.equal(0, status, out)
      assert.is_nil(smolvm.VM.from_id(name), "VM " .. name .. " left behind:\n" .. out)
    end
  end)
end)
