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

-- tests/integration/pty-session.py MODE ID: a session through a real pseudo-terminal.
local function pty_session(mode, vmid)
  local cmd = "python3 " .. q(SRC .. "/tests/integration/pty-session.py") .. " " .. mode .. " "
    .. q(LUA) .. " " .. q(SRC .. "/scripts/smolvm") .. " " .. q(vmid)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"__status=$?\""))
  local out = p:read("a")
  p:close()
  return out, tonumber(out:match("__status=(%d+)%s*$"))
end

-- Start a command in the background (it replaces its subshell, so the pid is its
-- own); its pid.
local function background(cmd)
  local p = assert(io.popen("( exec " .. cmd .. " ) >/dev/null 2>&1 & echo $!"))
  local pid = tonumber(p:read("a"):match("%d+"))
  p:close()
  return pid
end

describe("the smolvm command", function()
  local id = "cli-test"
  local idp = id:gsub("%-", "%%-") -- as a Lua pattern
  local ssh_id = "cli-ssh"

  lazy_setup(function()
    -- A kept recipe sandbox is how users usually get one to manage; a second one on
    -- the SSH transport for its shell. The console bound is the smallest (64 KiB), so
    -- logs -f sees the log rotate.
    local recipe = os.tmpname()
    local f = assert(io.open(recipe, "w"))
    f:write(('sandbox %q { network = "user", memory = 256, vcpus = 1, keep = true, '
      .. 'steps = { "echo ready > /root/state" } }\n'):format(id))
    f:write(('sandbox %q { network = "user", transport = "ssh", memory = 256, vcpus = 1, '
      .. 'keep = true, steps = { "true" } }\n'):format(ssh_id))
    f:close()
    local p = assert(io.popen("SMOLVM_CONSOLE_MAX=65536 " .. q(LUA) .. " " .. q(recipe)
      .. " 2>&1; echo \"__status=$?\""))
    local out = p:read("a")
    p:close()
    os.remove(recipe)
    assert.truthy(out:find("__status=0", 1, true), out)
  end)

  lazy_teardown(function()
    smolvm("rm -f " .. id .. " " .. ssh_id)
  end)

  it("lists the sandbox as a table, as JSON and as ids", function()
    local out, status = smolvm("ls")
    assert.are.equal(0, status, out)
    assert.truthy(out:find("^ID%s+STATUS"), out)
    assert.truthy(out:find(idp .. "%s+running"), out)
    out = smolvm("ls --json")
    assert.truthy(out:find('"id":%s*"' .. idp .. '"'), out)
    out = smolvm("ls -q")
    assert.are.equal(ssh_id .. "\n" .. id .. "\n", out)
    -- ps without an id is ls, as before
    assert.truthy(smolvm("ps"):find(idp .. "%s+running"))
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

  it("opens a shell on a terminal through the agent's PTY (tty, resize, Ctrl-C, exit status)", function()
    local out, status = pty_session("shell", id)
    assert.are.equal(0, status, out)
  end)

  it("runs exec -it on a terminal with the command's exit status", function()
    local out, status = pty_session("exec", id)
    assert.are.equal(0, status, out)
  end)

  it("gives the terminal its mode back when a session gets SIGTERM", function()
    local out, status = pty_session("term", id)
    assert.are.equal(0, status, out)
  end)

  it("opens a shell over ssh for a transport = \"ssh\" sandbox, then removes it", function()
    local out, status = pty_session("ssh", ssh_id)
    assert.are.equal(0, status, out)
    -- No ssh_config of the user, no forwarding, the pinned key: see ssh_command's
    -- unit test (tests/lua/cli_spec.lua); the private known_hosts directory is gone.
    local left = h.sh("ls -d /tmp/smolvm-ssh.* 2>/dev/null | wc -l")
    assert.are.equal("0", left:match("%d+"), "temporary known_hosts directories left behind")
    out, status = smolvm("rm -f " .. ssh_id)
    assert.are.equal(0, status, out)
  end)

  it("lists a sandbox's processes and attaches to one (replay, follow, detach)", function()
    local spawn = q(LUA) .. " -e " .. q([[
local vm = assert(require("smolvm").VM.from_id("cli-test"))
local p = assert(vm:spawn("i=0; while [ $i -lt 600 ]; do i=$((i+1)); echo tick-$i; sleep 0.5; done", { keep = true }))
print(p.pid)]])
    local out = h.sh(spawn)
    local pid = tonumber(out:match("^(%d+)"))
    assert.truthy(pid, out)
    assert.truthy(h.wait_for(function() return smolvm("ps " .. id):find("tick", 1, true) end, 30))
    local list, status = smolvm("ps " .. id)
    assert.are.equal(0, status, list)
    assert.truthy(list:find("^PID%s+STATUS%s+STARTED%s+COMMAND"), list)
    assert.truthy(list:find("\n" .. pid .. "%s+running%s+.-echo tick%-"), list)
    local js = smolvm("ps --json " .. id)
    assert.truthy(js:find('"pid":' .. pid, 1, true), js)
    -- Ctrl-C (SIGINT) after a few seconds: the kept output came first (tick-1), the
    -- live output after, and the process runs on.
    h.sh("sleep 3")
    out = h.sh("(" .. q(LUA) .. " " .. q(SRC .. "/scripts/smolvm") .. " attach " .. id .. " " .. pid
      .. " 2>&1 & a=$!; sleep 4; kill -INT $a; wait $a; echo __status=$?)")
    status = tonumber(out:match("__status=(%d+)"))
    assert.are.equal(130, status, out)
    assert.truthy(out:find("tick-1\n", 1, true), out)
    local last = 0
    for n in out:gmatch("tick%-(%d+)") do last = math.max(last, tonumber(n)) end
    assert.is_true(last >= 8, "live output after the replay: " .. out)
    assert.truthy(out:find("detached from process " .. pid, 1, true), out)
    list = smolvm("ps " .. id)
    assert.truthy(list:find("\n" .. pid .. "%s+running"), list)
    -- A process that ends: attach follows it to its end and exits with its status.
    out = h.sh(q(LUA) .. " -e " .. q([[
local vm = assert(require("smolvm").VM.from_id("cli-test"))
local p = assert(vm:spawn("echo started; sleep 2; echo finished; exit 4", { keep = true }))
print(p.pid)]]))
    local pid2 = assert(tonumber(out:match("^(%d+)")), out)
    out, status = smolvm("attach " .. id .. " " .. pid2)
    assert.are.equal(4, status, out)
    assert.truthy(out:find("started\nfinished\n", 1, true), out)
    out, status = smolvm("attach " .. id .. " 999999")
    assert.are.equal(1, status, out)
    smolvm("exec " .. id .. " -- kill " .. pid)
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

  it("follows the console log as it grows and across its rotation (logs -f)", function()
    local dir = smolvm("inspect " .. id):match('"dir":%s*"([^"]+)"')
    assert.truthy(dir)
    local file = os.tmpname()
    local pid = background(q(LUA) .. " " .. q(SRC .. "/scripts/smolvm") .. " logs -f " .. id .. " > " .. q(file))
    local ok, out, status, got = pcall(function()
      h.sh("sleep 2")
      -- About 90 KB through the console: with a 64 KiB bound it rotates at 32 KiB.
      local o, st = smolvm("exec -t 300 " .. id .. " -- sh -c "
        .. q("i=0; while [ $i -lt 9000 ]; do echo rot-$i; i=$((i+1)); done > /dev/console"))
      return o, st, h.wait_for(function()
        local s = readfile(file) or ""
        return s:find("rot%-8999\r?\n") and s -- the console's tty ends lines with \r\n
      end, 120)
    end)
    h.sh("kill -INT " .. pid)
    os.remove(file)
    assert.is_true(ok, out)
    assert.are.equal(0, status, out)
    assert.truthy(got, "logs -f never showed the last line")
    local expect, missing = 0, nil
    for n in got:gmatch("rot%-(%d+)") do
      n = tonumber(n)
      if n ~= expect then missing = missing or ("rot-" .. expect .. " then rot-" .. n) end
      expect = n + 1
    end
    assert.is_nil(missing, "lines lost or out of order: " .. tostring(missing))
    assert.are.equal(9000, expect)
    assert.truthy(readfile(dir .. "/console.log.1"), "the log did not rotate")
    -- -n: only the last lines of what is there, then it follows.
    out = smolvm("logs -n 2 " .. id)
    assert.truthy(out:find("rot%-8999\r?\n$"), out)
    local n = 0
    for _ in out:gmatch("\n") do n = n + 1 end
    assert.are.equal(2, n, out)
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

  it("pauses and resumes it; a paused sandbox refuses commands", function()
    local out, status = smolvm("pause " .. id)
    assert.are.equal(0, status, out)
    assert.are.equal(id .. "\n", out)
    assert.truthy(smolvm("ls"):find(idp .. "%s+paused"), (smolvm("ls")))
    out, status = smolvm("exec " .. id .. " -- true")
    assert.are.equal(125, status, out)
    assert.truthy(out:find("paused", 1, true), out)
    assert.truthy(out:find("hint: resume it first: smolvm resume " .. id, 1, true), out)
    out, status = smolvm("resume " .. id)
    assert.are.equal(0, status, out)
    out, status = smolvm("exec " .. id .. " -- cat /root/state")
    assert.are.equal(0, status, out)
    assert.are.equal("ready\n", out)
  end)

  it("snapshots it into a template, lists it, runs clones of it and removes it", function()
    local tpl = "cli-tpl"
    finally(function() smolvm("rm -f cli-clone") smolvm("template rm " .. tpl) end)
    local out, status = smolvm("snapshot " .. id .. " " .. tpl)
    assert.are.equal(0, status, out)
    assert.are.equal(tpl .. "\n", out)
    out, status = smolvm("snapshot " .. id .. " " .. tpl)
    assert.are.equal(1, status, out)
    assert.truthy(out:find("template 'cli-tpl' already exists", 1, true), out)
    assert.truthy(out:find("smolvm template rm cli-tpl", 1, true), out)
    out, status = smolvm("snapshot " .. id .. " Bad")
    assert.are.equal(2, status, out)
    -- ls: a table, JSON, names.
    out, status = smolvm("template ls")
    assert.are.equal(0, status, out)
    assert.truthy(out:find("^NAME%s+IMAGE%s+MEMORY%s+CREATED%s+SIZE%s+STALE\n"), out)
    assert.truthy(out:find("\ncli%-tpl%s+default%s+256%s+%d+s ago%s+%d+ MiB%s+%-\n"), out)
    out = smolvm("template ls --json")
    local list = require("smolvm.core").json_decode(out)
    assert.are.equal(1, #list, out)
    assert.are.equal(tpl, list[1].name)
    assert.are.equal(256, list[1].memory)
    assert.are.equal(id, list[1].source_vm)
    assert.is_nil(list[1].stale)
    assert.are.equal(tpl .. "\n", (smolvm("template ls -q")))
    -- run --template: a clone, with what the template's VM had written.
    out, status = smolvm("run --template " .. tpl .. " -- cat /root/state")
    assert.are.equal(0, status, out)
    assert.are.equal("ready\n", out)
    out, status = smolvm("run --template " .. tpl .. " -m 512 -- true")
    assert.are.equal(2, status, out)
    assert.truthy(out:find("memory: a clone has its template's memory (256 MiB), got 512", 1, true), out)
    out, status = smolvm("run --template no-such-tpl -- true")
    assert.are.equal(125, status, out)
    assert.truthy(out:find("template 'no-such-tpl' not found", 1, true), out)
    assert.truthy(out:find("hint: 'smolvm template ls'", 1, true), out)
    -- rm: refused while a clone uses it, naming the clone.
    out, status = smolvm("run --template " .. tpl .. " --keep --name cli-clone -- true")
    assert.are.equal(0, status, out)
    out, status = smolvm("template rm " .. tpl)
    assert.are.equal(1, status, out)
    assert.truthy(out:find("template 'cli-tpl' is in use by cli-clone", 1, true), out)
    assert.are.equal(tpl .. "\n", (smolvm("template ls -q")))
    out, status = smolvm("rm -f cli-clone")
    assert.are.equal(0, status, out)
    out, status = smolvm("template rm " .. tpl)
    assert.are.equal(0, status, out)
    assert.are.equal(tpl .. "\n", out)
    assert.are.equal("", (smolvm("template ls -q")))
    out, status = smolvm("template rm " .. tpl)
    assert.are.equal(1, status, out)
    assert.truthy(out:find("template 'cli-tpl' not found", 1, true), out)
    out, status = smolvm("template frob")
    assert.are.equal(2, status, out)
  end)

  it("suspends it and starts it again where it was; starts a stopped one with a boot", function()
    local function uptime()
      local out, status = smolvm("exec " .. id .. " -- cat /proc/uptime")
      assert.are.equal(0, status, out)
      return tonumber(out:match("^(%S+)"))
    end
    local before = uptime()
    local out, status = smolvm("suspend " .. id)
    assert.are.equal(0, status, out)
    assert.truthy(smolvm("ls"):find(idp .. "%s+suspended"), (smolvm("ls")))
    out, status = smolvm("start " .. id)
    assert.are.equal(0, status, out)
    assert.are.equal(id .. "\n", out)
    -- The guest's clock went on from where it was: no boot (a boot starts near 0 s).
    local after = uptime()
    assert.is_true(after >= before, ("uptime %.2f after, %.2f before"):format(after, before))
    out = smolvm("exec " .. id .. " -- cat /root/state")
    assert.are.equal("ready\n", out)
    out, status = smolvm("stop " .. id)
    assert.are.equal(0, status, out)
    -- A stopped sandbox cannot be paused or saved: one line naming it, and the fix.
    out, status = smolvm("pause " .. id)
    assert.are.equal(1, status, out)
    assert.are.equal("smolvm: pause '" .. id .. "': the vm is stopped, not running\n"
      .. "hint: start it first: smolvm start " .. id .. "\n", out)
    out, status = smolvm("snapshot " .. id .. " cli-tpl2")
    assert.are.equal(1, status, out)
    assert.truthy(out:find("the vm is stopped, not running", 1, true), out)
    assert.are.equal("", (smolvm("template ls -q")))
    out, status = smolvm("start " .. id)
    assert.are.equal(0, status, out)
    local booted = uptime()
    assert.is_true(booted < after, ("uptime %.2f after a boot, %.2f before it"):format(booted, after))
    assert.are.equal("ready\n", (smolvm("exec " .. id .. " -- cat /root/state")))
    out, status = smolvm("start no-such-vm")
    assert.are.equal(1, status, out)
    assert.truthy(out:find("no such sandbox 'no-such-vm'", 1, true), out)
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
