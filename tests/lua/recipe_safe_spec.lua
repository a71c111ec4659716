-- SPDX-License-Identifier: MIT
-- Recipes that cannot touch the host (issue 17, item 4 and finding M4), through
-- smolvm-lua as a user runs it: `--check` runs no host side effect, `--safe` loads a
-- recipe from an untrusted source in a restricted, budgeted Lua state and refuses
-- with exit status 2 and the reason. No VM is booted: every recipe here is refused,
-- or checked only.

local h = require "helpers"
local q = h.quote

local bin = os.getenv("SMOLVM_LUA")
local have_bin = bin and h.exists(bin)

describe("recipes that cannot touch the host", function()
  if not have_bin then
    it("needs smolvm-lua", function() pending("smolvm-lua not built ($SMOLVM_LUA=" .. tostring(bin) .. ")") end)
    return
  end

  local dir, state, marker
  before_each(function()
    dir = h.mktemp_dir()
    state = dir .. "/state"
    marker = dir .. "/marker"
  end)
  after_each(function() h.rm_rf(dir) end)

  -- Run smolvm-lua ARGS on a recipe with source src; stdout, stderr, status, seconds.
  local function run(args, src, name)
    local path = dir .. "/" .. (name or "recipe.lua")
    h.write(path, src)
    local t0 = os.time()
    local cmd = "cd " .. q(dir) .. " && SMOLVM_STATE_DIR=" .. q(state) .. " " .. q(bin) .. " "
      .. args .. " " .. q(name or "recipe.lua") .. " >out 2>err; echo $?"
    local p = assert(io.popen(cmd))
    local rc = tonumber(p:read("*a"):match("(%d+)%s*$"))
    p:close()
    return h.read(dir .. "/out"), h.read(dir .. "/err"), rc, os.time() - t0
  end

  -- No VM was created: the state directory holds none (it may not even exist).
  local function no_vm()
    local p = assert(io.popen("SMOLVM_STATE_DIR=" .. q(state) .. " " .. q(bin)
      .. " -e 'print(#require(\"smolvm\").VM.list())' 2>&1"))
    local n = p:read("*a")
    p:close()
    return n == "0\n", n
  end

  local EVIL = 'sandbox "web" { memory = 256, steps = { "echo hi" } }\n'
    .. 'os.execute("touch ' .. "MARKER" .. '")\n'

  it("--check runs nothing of a recipe that calls os.execute", function()
    local src = EVIL:gsub("MARKER", marker)
    local _, err, rc = run("--check", src)
    assert.equal(2, rc, err)
    assert.truthy(err:find("recipe.lua:2: os.execute is not available under --check", 1, true), err)
    assert.is_false(h.exists(marker), "os.execute ran under --check")
    local none, n = no_vm()
    assert.is_true(none, n)
    -- The same file without --check is host code: it does run (here it stops before
    -- any VM, --only names no sandbox of it).
    _, err, rc = run("--only nothing", src)
    assert.equal(2, rc, err)
    assert.is_true(h.exists(marker), "a recipe without --check or --safe is host code")
  end)

  it("--safe refuses it with exit 2 and the reason, and runs none of it", function()
    local src = EVIL:gsub("MARKER", marker)
    for _, args in ipairs({ "--safe", "--safe --check", "--safe --json" }) do
      local out, err, rc = run(args, src)
      assert.equal(2, rc, args .. ": " .. err)
      assert.truthy(err:find("recipe.lua:2: os.execute is not available in --safe recipes", 1, true), err)
      assert.is_false(h.exists(marker))
      if args:find("json") then assert.truthy(out:find('"status":2', 1, true), out) end
    end
    local none, n = no_vm()
    assert.is_true(none, n)
  end)

  it("--safe gives the declarations, string, table, math, utf8, os.getenv, os.time", function()
    local src = [[
local n = #string.rep("ab", 3) + math.floor(2.5) + #table.concat({ "x", "y" })
local who = os.getenv("HOME") and "home" or "none"
sandbox "web" {
  memory = 256 + n,
  env = { WHO = who, T = tostring(os.time() > 0), U = utf8.char(233) },
  steps = { ("echo %s"):format(who), { run = "true", expect = { exit = 0 } } },
}
sandbox "db" { steps = { "echo db" } }
]]
    local out, err, rc = run("--safe --check", src)
    assert.equal(0, rc, err)
    assert.truthy(out:find("recipe ok: 2 sandboxes, 3 steps", 1, true), out)
    assert.truthy(out:find("web%s+2 steps, 2 vcpu, 266 MiB"), out)
  end)

  it("--safe declares images too, and what they hold must be data", function()
    local out, err, rc = run("--safe --check",
      'image "tools" { packages = { "jq" } }\nsandbox "a" { image = "tools" }\n')
    assert.equal(0, rc, err)
    assert.truthy(out:find("recipe ok: 1 sandbox, 0 steps, 1 image", 1, true), out)
    assert.truthy(out:find("image tools      packages jq: ", 1, true), out)
    _, err, rc = run("--safe --check", 'image "tools" { packages = { function() end } }\n')
    assert.equal(2, rc, err)
    assert.truthy(err:find('image "tools": packages[1]: expected data (a string, number, boolean or table), got function', 1, true), err)
    _, err, rc = run("--safe --check", 'image "x"\nimage { }\nimage("y", 2) {}\n')
    assert.equal(2, rc, err)
    for _, want in ipairs({
      'image "x": line 1: declared without a body: write image "x" { packages = { ... } }',
      'image at line 2: the name is missing: write image "name" { ... }',
      'image "y": line 3: image takes one name: write image "name" { ... }',
    }) do
      assert.truthy(err:find(want, 1, true), "missing: " .. want .. "\nin:\n" .. err)
    end
  end)

  it("--safe refuses every way out of the recipe, each with its name", function()
    local cases = {
      { "io.open('/etc/passwd')", "io is not available in --safe recipes" },
      { "require 'os'", "require is not available in --safe recipes" },
      { "load('return 1')", "load is not available in --safe recipes" },
      { "dofile('/etc/passwd')", "dofile is not available in --safe recipes" },
      { "loadfile('x')", "loadfile is not available in --safe recipes" },
      { "debug.getinfo(1)", "debug is not available in --safe recipes" },
      { "package.loaded.x = 1", "package is not available in --safe recipes" },
      { "collectgarbage()", "collectgarbage is not available in --safe recipes" },
      { "print('hi')", "print is not available in --safe recipes" },
      { "os.remove('x')", "os.remove is not available in --safe recipes" },
      { "os.exit(0)", "os.exit is not available in --safe recipes" },
      { "coroutine.wrap(print)", "coroutine is not available in --safe recipes" },
      { "require('smolvm.recipe').host_check('x', function() end)", "require is not available" },
      { "string.dump(function() end)", "attempt to call a nil value (field 'dump')" },
      { "setmetatable({}, { __gc = function() end })", "__gc metamethods are not available in --safe recipes" },
      { "getmetatable('').__index.rep = nil", "attempt to index a nil value" },
    }
    for _, c in ipairs(cases) do
      local _, err, rc = run("--safe --check", 'sandbox "a" {}\n' .. c[1] .. "\n")
      assert.equal(2, rc, c[1] .. ": " .. err)
      assert.truthy(err:find("recipe.lua:2: " .. c[2], 1, true), c[1] .. ": " .. err)
    end
  end)

  it("--safe stops a recipe that loops forever, even inside pcall", function()
    for _, src in ipairs({ "while true do end", "while true do pcall(function() while true do end end) end",
                           "local function f() return f() end f()" }) do
      local _, err, rc, secs = run("--safe", src)
      assert.equal(2, rc, src .. ": " .. err)
      assert.truthy(err:find("recipe.lua:1: the recipe ran more than 10 million Lua instructions", 1, true),
        src .. ": " .. err)
      assert.is_true(secs < 60, "took " .. secs .. " s")
    end
  end)

  it("--safe stops a recipe that allocates without bound", function()
    for _, src in ipairs({ "local t = {} for i = 1, 1e9 do t[i] = ('x'):rep(100) .. i end",
                           "local s = 'x' while true do s = s .. s end",
                           "local t = {} while true do pcall(function() t[#t + 1] = ('y'):rep(1e6) .. #t end) end" }) do
      local _, err, rc = run("--safe", src)
      assert.equal(2, rc, src .. ": " .. err)
      assert.truthy(err:find("the recipe needed more than 64 MiB of memory (the --safe budget)", 1, true)
        or err:find("not enough memory", 1, true), src .. ": " .. err)
    end
  end)

  it("--safe stops a pattern that backtracks for ever inside one call (CPU time)", function()
    -- While it runs, the child that evaluates it is confined: look at it from /proc.
    h.write(dir .. "/bomb.lua", "local s = ('a'):rep(40) s:find(('a*'):rep(40) .. 'b')")
    local p = assert(io.popen("cd " .. q(dir) .. " && " .. q(bin) .. " --safe bomb.lua >/dev/null 2>&1 & "
      .. "parent=$!; child=; for i in $(seq 1 100); do child=$(pgrep -P $parent | head -n1); "
      .. "[ -n \"$child\" ] && break; sleep 0.1; done; sleep 0.5; "
      .. "grep -E '^(Seccomp|NoNewPrivs):' /proc/$child/status; ls /proc/$child/fd | tr '\\n' ' '; echo; "
      .. "grep -E '^Max (cpu time|open files|core file size)' /proc/$child/limits; kill -9 $child $parent"))
    local seen = p:read("*a")
    p:close()
    assert.truthy(seen:find("Seccomp:%s+2"), "no seccomp filter: " .. seen)
    assert.truthy(seen:find("NoNewPrivs:%s+1"), seen)
    assert.truthy(seen:find("\n0 1 2 3 \n", 1, true), "descriptors beyond its pipe: " .. seen)
    assert.truthy(seen:find("Max cpu time%s+10%s"), seen)
    assert.truthy(seen:find("Max open files%s+4%s"), seen)
    assert.truthy(seen:find("Max core file size%s+0%s"), seen)
    local _, err, rc, secs = run("--safe", "local s = ('a'):rep(40) s:find(('a*'):rep(40) .. 'b')")
    assert.equal(2, rc, err)
    assert.truthy(err:find("recipe.lua: the recipe used more than 10 s of CPU time (the --safe budget)", 1, true)
      or err:find("(the --safe deadline)", 1, true), err)
    assert.is_true(secs < 60, "took " .. secs .. " s")
  end)

  it("--safe takes data only: a function is refused with where it was", function()
    local _, err, rc = run("--safe --check", 'sandbox "web" { steps = { "echo", { run = function() end } } }')
    assert.equal(2, rc, err)
    assert.truthy(err:find('sandbox "web": steps[2].run: expected data (a string, number, boolean or table), got function', 1, true), err)
  end)

  it("--safe refuses host paths and forwards beyond loopback", function()
    local _, err, rc = run("--safe --check", [[
sandbox "web" {
  forwards = { { host = 18080, guest = 80, address = "0.0.0.0" } },
  steps = { { upload = { from = "/etc/shadow", to = "/x" } }, { download = { from = "/x", to = "/root/.bashrc" } } },
}]])
    assert.equal(2, rc, err)
    assert.truthy(err:find('sandbox "web": steps[1].upload: host files are not available to --safe recipes', 1, true), err)
    assert.truthy(err:find('sandbox "web": steps[2].download: host files are not available to --safe recipes', 1, true), err)
    assert.truthy(err:find('sandbox "web": forwards[1].address: --safe recipes forward on 127.0.0.1 only, got "0.0.0.0"', 1, true), err)
  end)

  it("--check and --safe refuse a precompiled chunk", function()
    local path = dir .. "/bin.lua"
    local p = assert(io.popen(q(bin) .. " -e " .. q("io.open(" .. string.format("%q", path)
      .. ", 'wb'):write(string.dump(load('sandbox \"x\" {}')))")))
    p:close()
    for _, args in ipairs({ "--check", "--safe" }) do
      local cmd = "SMOLVM_STATE_DIR=" .. q(state) .. " " .. q(bin) .. " " .. args .. " " .. q(path) .. " 2>&1; echo \"rc=$?\""
      local pp = assert(io.popen(cmd))
      local out = pp:read("*a")
      pp:close()
      assert.truthy(out:find("rc=2", 1, true), args .. ": " .. out)
      assert.truthy(out:find("binary chunk", 1, true) or out:find("precompiled", 1, true), args .. ": " .. out)
    end
  end)

  it("--safe shows no raw escape sequence or invalid UTF-8 from the recipe", function()
    local out, err, rc = run("--safe --json", 'sandbox "a" {}\nerror("\\27]0;owned\\7 \\255")')
    assert.equal(2, rc, err)
    assert.is_nil(err:find("\27", 1, true), err)
    assert.is_nil(out:find("\27", 1, true), out)
    assert.is_nil(out:find("\255", 1, true), out)
    assert.truthy(err:find("\\x1b]0;owned\\x07 \239\191\189", 1, true), err)
    out, err, rc = run("--safe --check --json", 'sandbox "a" { env = { X = "\\255" }, steps = { "echo \\27[2J" } }')
    assert.equal(0, rc, err)
    assert.is_nil(out:find("\27", 1, true), out)
    assert.is_nil(out:find("\255", 1, true), out)
  end)

  it("--check reads files but writes, runs and loads nothing", function()
    h.write(dir .. "/index.html", "<h1>hi</h1>")
    local src = [[
local f = assert(io.open("index.html", "rb"))
local html = f:read("*a")
f:close()
require("smolvm.recipe").host_check("later", function() os.execute("touch MARKER") return true end)
print("declaring")
sandbox "web" { files = { ["/srv/index.html"] = html }, steps = { "cat /srv/index.html" } }
]]
    local out, err, rc = run("--check", (src:gsub("MARKER", marker)))
    assert.equal(0, rc, err)
    assert.truthy(out:find("recipe ok: 1 sandbox, 1 step", 1, true), out)
    assert.truthy(err:find("declaring", 1, true), err) -- print goes to stderr
    assert.is_false(h.exists(marker))
    for _, c in ipairs({ { 'io.open("x", "w")', 'io.open mode "w" is not available under --check' },
                         { "io.popen('true')", "io.popen is not available under --check" },
                         { "os.remove('x')", "os.remove is not available under --check" },
                         { "require 'smolvm'", 'require "smolvm" is not available under --check' },
                         { "load('return 1')", "load is not available under --check" } }) do
      local _, e, r = run("--check", 'sandbox "a" {}\n' .. c[1] .. "\n")
      assert.equal(2, r, c[1] .. ": " .. e)
      assert.truthy(e:find("recipe.lua:2: " .. c[2], 1, true), c[1] .. ": " .. e)
    end
  end)
end)
