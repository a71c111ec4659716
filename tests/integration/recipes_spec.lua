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

  -- Write a recipe to a temporary file; its path.
  local function recipe_file(src)
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write(src)
    f:close()
    return path
  end

  it("shows step output live, prefixed, sanitized, and puts it in --json", function()
    local core = require "smolvm.core"
    local path = recipe_file([[
sandbox "live" { network = "none", memory = 256, vcpus = 1, steps = {
  "echo first; sleep 4; echo second >&2",
  { run = "printf '\\033]0;owned\\007 \\377 end\\n'", expect = { stdout = "end" } },
} }
sandbox "other" { network = "none", memory = 256, vcpus = 1, steps = { "echo from-other" } }
]])
    local json_path = path .. ".json"
    -- stderr (the progress) through the pipe line by line, stdout (JSON) to a file.
    local p = assert(io.popen(sh_quote(bin) .. " --json " .. sh_quote(path) .. " 2>&1 >"
      .. sh_quote(json_path) .. "; echo \"__status=$?\""))
    local lines, when, text = {}, {}, {}
    for line in p:lines() do
      lines[#lines + 1] = line
      when[#lines] = core.monotonic_ms()
      text[#text + 1] = line
    end
    p:close()
    local all = table.concat(text, "\n")
    local jf = io.open(json_path, "rb")
    local js = jf and jf:read("a") or ""
    if jf then jf:close() end
    os.remove(path)
    os.remove(json_path)
    assert.truthy(all:find("__status=0", 1, true), all)
    local function at(pat)
      for i, l in ipairs(lines) do if l:find(pat, 1, true) then return when[i], i end end
      error("no line with " .. pat .. " in:\n" .. all)
    end
    local t_first = at("live  | first")
    local t_done = at("[live] step 1/2 echo first")
    assert.is_true(t_done - t_first >= 3000,
      ("the first line came %d ms before its step ended, not live"):format(t_done - t_first))
    assert.truthy(at("live  | second"))
    assert.truthy(at("other | from-other"))
    -- Sanitized on the terminal and in JSON: no ESC or BEL, no invalid UTF-8.
    assert.truthy(all:find("live  | \\x1b]0;owned\\x07 \239\191\189 end", 1, true), all)
    assert.is_nil(all:find("[\27\7\255]"), all)
    assert.is_nil(js:find("[\27\7\255]"), js)
    local r = assert(require("dkjson").decode(js), js)
    local st = r.sandboxes[1].steps
    assert.are.equal("first\n", st[1].stdout)
    assert.are.equal("second\n", st[1].stderr)
    assert.are.equal("\\x1b]0;owned\\x07 \239\191\189 end\n", st[2].stdout)
    assert.are.equal("from-other\n", r.sandboxes[2].steps[1].stdout)
  end)

  it("hides live output with --quiet, keeps it in --json", function()
    local path = recipe_file('sandbox "quiet" { network = "none", memory = 256, vcpus = 1, '
      .. 'steps = { "echo quiet-marker" } }\n')
    local status, out = run(sh_quote(bin) .. " --quiet --json " .. sh_quote(path))
    os.remove(path)
    assert.equal(0, status, out)
    assert.is_nil(out:find("quiet | quiet-marker", 1, true), out)
    assert.truthy(out:find("[quiet] step 1/1 echo quiet-marker ok", 1, true), out)
    assert.truthy(out:find('"stdout":"quiet-marker\\n"', 1, true), out)
  end)

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
