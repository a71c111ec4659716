-- SPDX-License-Identifier: MIT
-- Recipes and examples against real VMs, run through smolvm-lua exactly as a user
-- would. Run by tests/integration/run-spec.sh (temporary state dir; skips with the
-- reason when the host cannot run sandboxes).
local smolvm = require "smolvm"

local h = require "helpers"
local sh_quote = h.quote
local TDIR = assert(os.getenv("SMOLVM_TEMPLATE_DIR"), "SMOLVM_TEMPLATE_DIR")

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
      if ex == "two-sandboxes.lua" then
        -- What it downloads is its output; the test takes it back.
        local f = assert(io.open("/tmp/smolvm-example-out.json"), "the downloaded file")
        f:close()
        os.remove("/tmp/smolvm-example-out.json")
      end
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

  it("makes a template block once, clones sandboxes from it, reuses it, makes it again when a step changes", function()
    local core = require "smolvm.core"
    local TPL, CLONE = "it-recipe-py", "it-clone"
    -- The template's python process holds a random value in memory (read once, at its
    -- start); its steps also write a file. The sandbox asks the process and reads the
    -- file: both must be what the template's step 1 printed.
    local function recipe_src(version, clone)
      return ([[
template "%s" {
  memory = 256, vcpus = 1, network = "none",
  steps = {
    "python3 -c 'import random; print(random.randrange(10**12))' | tee /root/value",
    { run = [=[exec python3 -c '
import socket
v = open("/root/value").read().strip()
s = socket.socket(socket.AF_UNIX); s.bind("/run/holder.sock"); s.listen(8)
while True:
    c, _ = s.accept(); c.sendall(v.encode()); c.close()
']=], background = true },
    "for i in $(seq 100); do [ -S /run/holder.sock ] && exit 0; sleep 0.1; done; exit 1",
    "echo %s > /root/version",
  },
}
sandbox "%s" {
  template = "%s", keep = true,
  steps = {
    [=[python3 -c '
import socket
s = socket.socket(socket.AF_UNIX); s.connect("/run/holder.sock"); print("held=" + s.recv(64).decode())
']=],
    "cat /root/value /root/version",
  },
}
]]):format(TPL, version, clone, TPL)
    end
    local function cleanup()
      for _, id in ipairs({ CLONE, CLONE .. "2" }) do
        local vm = smolvm.VM.from_id(id)
        if vm then vm:delete() vm:close() end
      end
      smolvm.template_delete(TPL)
    end
    finally(cleanup)
    -- Run the recipe: exit status, progress (stderr), the --json result.
    local function run_recipe(version, clone)
      local path = recipe_file(recipe_src(version, clone or CLONE))
      -- stdout (the JSON) to a file, stderr (the progress) to run()'s pipe
      local status, out = run("{ " .. sh_quote(bin) .. " --json " .. sh_quote(path) .. " >"
        .. sh_quote(path .. ".json") .. "; }")
      local jf = io.open(path .. ".json", "rb")
      local js = jf and jf:read("a") or ""
      if jf then jf:close() end
      os.remove(path)
      os.remove(path .. ".json")
      local ok, r = pcall(core.json_decode, js)
      return status, out, ok and r or {}
    end
    local function template_info()
      for _, t in ipairs(assert(smolvm.templates())) do
        if t.name == TPL then return t end
      end
      return nil
    end
    -- The sandbox started as a clone: its supervisor applied a fresh identity, and its
    -- console shows no kernel boot. Then it is deleted (it was kept for this).
    local function assert_clone_and_delete(id)
      local vm = assert(smolvm.VM.from_id(id))
      local info = vm:info()
      local sv = h.readfile(info.dir .. "/supervisor.log") or ""
      assert.truthy(sv:find("identity applied", 1, true), sv)
      local console = h.readfile(info.console_log) or ""
      assert.is_nil(console:find("Linux version", 1, true), console)
      assert(vm:delete())
      vm:close()
    end
    local function outputs(r)
      local sb = r.sandboxes and r.sandboxes[1] or {}
      local st = sb.steps or {}
      return st[1] and st[1].stdout or "", st[2] and st[2].stdout or ""
    end

    -- 1. Made: its VM boots, runs the steps, is snapshotted and deleted.
    local status, out, r = run_recipe("v1")
    assert.equal(0, status, out)
    assert.equal("built", r.templates[1].status, out)
    local value = r.templates[1].steps[1].stdout:match("^(%d+)\n$")
    assert.truthy(value, r.templates[1].steps[1].stdout)
    assert.truthy(out:find("template " .. TPL .. " | " .. value, 1, true), out) -- live
    local held, file = outputs(r)
    assert.equal("held=" .. value .. "\n", held)
    assert.equal(value .. "\nv1\n", file)
    assert.is_nil(smolvm.VM.from_id("template-" .. TPL), "the template's VM was not deleted")
    local t1 = assert(template_info())
    assert.equal(r.templates[1].definition, t1.recipe.definition)
    assert.equal("default", t1.recipe.image.name)
    local rec = core.json_decode(h.readfile(TDIR .. "/" .. TPL .. "/recipe.json"))
    assert.equal(t1.recipe.definition, rec.definition)
    assert_clone_and_delete(CLONE)

    -- 2. The same recipe again: up to date, not made again, the sandbox a clone of it.
    status, out, r = run_recipe("v1")
    assert.equal(0, status, out)
    assert.equal("up-to-date", r.templates[1].status, out)
    assert.truthy(out:find("[template " .. TPL .. "] up to date", 1, true), out)
    assert.is_nil(out:find("[template " .. TPL .. "] boot", 1, true), out)
    assert.equal(t1.created_at, template_info().created_at)
    held, file = outputs(r)
    assert.equal("held=" .. value .. "\n", held)
    assert.equal(value .. "\nv1\n", file)
    -- (its clone stays for now: the next run must not remove the template under it)

    -- 3. A step changed while a clone of the old template exists: refused, naming it.
    status, out, r = run_recipe("v2", CLONE .. "2")
    assert.equal(1, status, out)
    assert.truthy(out:find("out of date (its definition changed) and cannot be removed: template '"
      .. TPL .. "' is in use by " .. CLONE, 1, true), out)
    assert.equal(t1.created_at, template_info().created_at)
    assert_clone_and_delete(CLONE)

    -- 4. Without the clone: made again, with the new step and a new value.
    status, out, r = run_recipe("v2")
    assert.equal(0, status, out)
    assert.truthy(out:find("[template " .. TPL .. "] out of date (its definition changed): removing the old one", 1, true), out)
    assert.equal("built", r.templates[1].status)
    local t2 = assert(template_info())
    assert.is_true(t2.created_at > t1.created_at)
    assert.are_not.equal(t1.recipe.definition, t2.recipe.definition)
    local value2 = r.templates[1].steps[1].stdout:match("^(%d+)\n$")
    held, file = outputs(r)
    assert.equal("held=" .. value2 .. "\n", held)
    assert.equal(value2 .. "\nv2\n", file)
    assert_clone_and_delete(CLONE)
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
