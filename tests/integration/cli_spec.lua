-- SPDX-License-Identifier: MIT
-- The `smolvm` command line against a real sandbox, as a user types it. Run by
-- tests/integration/run-spec.sh (temporary state dir, private network namespace).
local h = require "helpers"
local LUA, q, readfile = h.LUA, h.quote, h.readfile
local SRC = assert(os.getenv("SMOLVM_SOURCE_DIR"))

-- Run `smolvm ARGS`; returns stdout+stderr and the exit status.
local function smolvm(args, stdin)
  local cmd = q(LUA) .. " " .. q(SRC .. "/scripts/smolvm") .. " " .. args
  if stdin then cmd = "printf %s " .. q(stdin) .. " | " .. cmd end
  local p = assert(io.popen(cmd .. " 2>&1; echo \"__status=$?\""))
  local out = p:read("a")
  p:close()
  local status = tonumber(out:match("__status=(%d+)%s*$"))
  return out:gsub("__status=%d+%s*$", ""), status
end

describe("the smolvm command", function()
  local id = "cli-test"
  local idp = id:gsub("%-", "%%-") -- as a Lua pattern

  lazy_setup(function()
    -- A kept recipe sandbox is how users usually get one to manage.
    local recipe = os.tmpname()
    local f = assert(io.open(recipe, "w"))
    f:write(('sandbox %q { network = "user", memory = 256, vcpus = 1, keep = true, '
      .. 'steps = { "echo ready > /root/state" } }\n'):format(id))
    f:close()
    local p = assert(io.popen(q(LUA) .. " " .. q(recipe) .. " 2>&1; echo \"__status=$?\""))
    local out = p:read("a")
    p:close()
    os.remove(recipe)
    assert.truthy(out:find("__status=0", 1, true), out)
  end)

  lazy_teardown(function()
    smolvm("rm -f " .. id)
  end)

  it("lists the sandbox as a table, as JSON and as ids", function()
    local out, status = smolvm("ls")
    assert.are.equal(0, status, out)
    assert.truthy(out:find("^ID%s+STATUS"), out)
    assert.truthy(out:find(idp .. "%s+running"), out)
    out = smolvm("ls --json")
    assert.truthy(out:find('"id":%s*"' .. idp .. '"'), out)
    out = smolvm("ls -q")
    assert.are.equal(id .. "\n", out)
  end)

  it("inspects it", function()
    local out, status = smolvm("inspect " .. id)
    assert.are.equal(0, status, out)
    assert.truthy(out:find('"status":%s*"running"'), out)
    assert.truthy(out:find('"console_log"', 1, true), out)
  end)

  it("execs commands with their exit status, env, cwd and stdin", function()
    local out, status = smolvm("exec " .. id .. " -- cat /root/state")
    assert.are.equal(0, status, out)
    assert.are.equal("ready\n", out)
    out, status = smolvm("exec -e GREETING=hi -w /tmp " .. id .. " -- sh -c 'echo $GREETING; pwd; exit 7'")
    assert.are.equal(7, status)
    assert.are.equal("hi\n/tmp\n", out)
    out = smolvm("exec -i " .. id .. " -- tr a-z A-Z", "piped")
    assert.are.equal("PIPED", out)
  end)

  it("copies files both ways", function()
    local src = os.tmpname()
    local f = assert(io.open(src, "w"))
    f:write("from the host\n")
    f:close()
    local out, status = smolvm(("cp %s %s:/srv/in.txt"):format(q(src), id))
    assert.are.equal(0, status, out)
    assert.are.equal("from the host\n", (smolvm("exec " .. id .. " -- cat /srv/in.txt")))
    local dst = os.tmpname()
    out, status = smolvm(("cp %s:/srv/in.txt %s"):format(id, q(dst)))
    assert.are.equal(0, status, out)
    assert.are.equal("from the host\n", readfile(dst))
    os.remove(src)
    os.remove(dst)
  end)

  it("shows the console log", function()
    local out, status = smolvm("logs " .. id)
    assert.are.equal(0, status, out)
    assert.truthy(out:find("smolvm: ready", 1, true), out)
  end)

  it("runs a command in a throwaway sandbox", function()
    local out, status = smolvm("run -m 256 --cpus 1 -e X=7 -- sh -c 'echo x=$X; exit 3'")
    assert.are.equal(3, status, out)
    assert.are.equal("x=7\n", out)
    assert.are.equal(id .. "\n", (smolvm("ls -q"))) -- only the kept one is left
    out, status = smolvm("run -m lots -- true")
    assert.are.equal(2, status, out)
    assert.truthy(out:find("memory", 1, true), out)
  end)

  it("explains mistakes", function()
    local out, status = smolvm("exec no-such-vm -- true")
    assert.are.equal(125, status)
    assert.truthy(out:find("no-such-vm", 1, true), out)
    out, status = smolvm("lss")
    assert.are.equal(2, status)
    assert.truthy(out:find("did you mean", 1, true), out)
    out, status = smolvm("rm " .. id)
    assert.are.equal(1, status, out) -- running: needs -f
  end)

  it("stops it, prunes it, and leaves nothing", function()
    local info = smolvm("inspect " .. id)
    local dir = info:match('"dir":%s*"([^"]+)"')
    assert.truthy(dir, info)
    local out, status = smolvm("stop " .. id)
    assert.are.equal(0, status, out)
    assert.truthy(smolvm("ls"):find(idp .. "%s+stopped"))
    out, status = smolvm("prune -f")
    assert.are.equal(0, status, out)
    assert.truthy(out:find("deleted " .. id, 1, true), out)
    assert.are.equal("", (smolvm("ls -q")))
    assert.is_nil(readfile(dir .. "/config.img"))
  end)
end)
