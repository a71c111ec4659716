-- SPDX-License-Identifier: MIT
-- smolvm-lua, the interpreter: options, arg, stdin, errors, require "smolvm" from the
-- build tree without LUA_PATH. No VM is booted.

local SMOLVM_LUA = os.getenv("SMOLVM_LUA")
  or ((os.getenv("SMOLVM_BUILD_DIR") or "../../build") .. "/smolvm-lua")

local h = require "helpers"
local sh_quote, mktemp_dir, exists, write = h.quote, h.mktemp_dir, h.exists, h.write

-- Run smolvm-lua with the given shell-quoted argument string; LUA_PATH/LUA_CPATH are
-- cleared so only the binary's own setup is tested. Returns stdout, stderr, status.
local function run(args, opts)
  opts = opts or {}
  local dir = mktemp_dir()
  local env = "env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 -u LUA_INIT"
    .. " -u LUA_INIT_5_4 SMOLVM_STATE_DIR=" .. sh_quote(opts.state or (dir .. "/state"))
  local stdin = opts.stdin and ("< " .. sh_quote(opts.stdin)) or "< /dev/null"
  local cmd = env .. " " .. sh_quote(SMOLVM_LUA) .. " " .. args .. " " .. stdin
    .. " > " .. dir .. "/out 2> " .. dir .. "/err; echo $?"
  local p = assert(io.popen(cmd))
  local rc = tonumber(p:read("*a"):match("(%d+)%s*$"))
  p:close()
  local function slurp(f)
    local h = io.open(f, "rb")
    local s = h and h:read("*a") or ""
    if h then h:close() end
    return s
  end
  local out, err = slurp(dir .. "/out"), slurp(dir .. "/err")
  os.execute("rm -rf " .. sh_quote(dir))
  return out, err, rc
end

describe("smolvm-lua", function()
  local dir
  before_each(function() dir = mktemp_dir() end)
  after_each(function() os.execute("rm -rf " .. sh_quote(dir)) end)

  it("exists", function()
    assert.is_true(exists(SMOLVM_LUA), SMOLVM_LUA)
  end)

  it("prints its version with -v", function()
    local out, _, rc = run("-v")
    assert.are.equal(0, rc)
    assert.truthy(out:find("smolvm-lua " .. require("smolvm").VERSION, 1, true), out)
    assert.truthy(out:find("Lua 5.4", 1, true), out)
  end)

  it("runs -e statements in order", function()
    local out, err, rc = run("-e 'print(1+1)' -e 'x = 3' -e 'print(x * 2)'")
    assert.are.equal(0, rc, err)
    assert.are.equal("2\n6\n", out)
  end)

  it("passes script arguments in arg and ...", function()
    write(dir .. "/s.lua", "print(arg[0], arg[1], arg[2], #arg, ...)\nprint(arg[-1] ~= nil)\n")
    local out, err, rc = run(sh_quote(dir .. "/s.lua") .. " one 'two words'")
    assert.are.equal(0, rc, err)
    assert.are.equal(dir .. "/s.lua\tone\ttwo words\t2\tone\ttwo words\ntrue\n", out)
  end)

  it("runs a script from stdin when no script is given", function()
    write(dir .. "/in.lua", "print('from stdin')\n")
    local out, err, rc = run("", { stdin = dir .. "/in.lua" })
    assert.are.equal(0, rc, err)
    assert.are.equal("from stdin\n", out)
  end)

  it("runs stdin for '-' with arguments", function()
    write(dir .. "/in.lua", "print(arg[0], ...)\n")
    local out, err, rc = run("- a b", { stdin = dir .. "/in.lua" })
    assert.are.equal(0, rc, err)
    assert.are.equal("-\ta\tb\n", out)
  end)

  it("reports a runtime error with a traceback and exits 1", function()
    write(dir .. "/e.lua", "local function f() error('boom') end\nf()\n")
    local out, err, rc = run(sh_quote(dir .. "/e.lua"))
    assert.are.equal(1, rc)
    assert.are.equal("", out)
    assert.truthy(err:find("e.lua:1: boom", 1, true), err)
    assert.truthy(err:find("stack traceback:", 1, true), err)
    assert.truthy(err:find("in local 'f'", 1, true) or err:find("in function 'f'", 1, true)
      or err:find("in upvalue 'f'", 1, true), err)
  end)

  it("reports an -e error with a traceback and exits 1", function()
    local _, err, rc = run("-e 'error(\"nope\")'")
    assert.are.equal(1, rc)
    assert.truthy(err:find("nope", 1, true), err)
    assert.truthy(err:find("stack traceback:", 1, true), err)
  end)

  it("exits with os.exit's status", function()
    local _, _, rc = run("-e 'os.exit(7)'")
    assert.are.equal(7, rc)
  end)

  it("rejects an unknown option", function()
    local _, err, rc = run("--bogus")
    assert.are.equal(1, rc)
    assert.truthy(err:find("--bogus", 1, true), err)
  end)

  it("loads smolvm from the build tree without LUA_PATH", function()
    local state = dir .. "/state"
    local out, err, rc = run("-e 'local s = require(\"smolvm\").Store(); print(#s:list())'",
                             { state = state })
    assert.are.equal(0, rc, err)
    assert.are.equal("0\n", out)
    assert.is_true(exists(state .. "/smolvm.db"))
  end)

  it("preloads smolvm.core", function()
    local out, err, rc = run("-e 'print(type(package.preload[\"smolvm.core\"]), "
      .. "require(\"smolvm.core\").VERSION == require(\"smolvm\").VERSION)'")
    assert.are.equal(0, rc, err)
    assert.are.equal("function\ttrue\n", out)
  end)

  it("runs a plain script that declares nothing with status 0", function()
    write(dir .. "/plain.lua", "local smolvm = require 'smolvm'\nprint(smolvm.VERSION ~= nil)\n")
    local out, err, rc = run(sh_quote(dir .. "/plain.lua"))
    assert.are.equal(0, rc, err)
    assert.are.equal("true\n", out)
  end)

  it("exits 2 when a recipe file does not parse", function()
    write(dir .. "/bad.lua", "sandbox 'x' {\n  memory = = 1\n}\n")
    local _, err, rc = run(sh_quote(dir .. "/bad.lua"))
    assert.are.equal(2, rc)
    assert.truthy(err:find("bad.lua:2", 1, true), err)
  end)

  it("exits 2 for an invalid recipe, checked with --check", function()
    write(dir .. "/inv.lua", "sandbox 'web' { memory = 'lots' }\n")
    local _, err, rc = run("--check " .. sh_quote(dir .. "/inv.lua"))
    assert.are.equal(2, rc)
    assert.truthy(err:find("memory", 1, true), err)
  end)

  it("turns SIGTERM into an 'interrupted' error and exits 143", function()
    write(dir .. "/loop.lua", [[
      local ok, err = pcall(function() while true do end end)
      io.stderr:write("caught: ", tostring(err), "\n")
      error(err, 0)
    ]])
    local script = sh_quote(dir .. "/loop.lua")
    local cmd = "env -u LUA_PATH -u LUA_CPATH " .. sh_quote(SMOLVM_LUA) .. " " .. script
      .. " 2>" .. sh_quote(dir .. "/err") .. " & pid=$!; sleep 0.3; kill -TERM $pid; wait $pid; echo $?"
    local p = assert(io.popen(cmd))
    local rc = tonumber(p:read("*a"):match("(%d+)%s*$"))
    p:close()
    local f = assert(io.open(dir .. "/err", "rb"))
    local err = f:read("*a")
    f:close()
    assert.are.equal(143, rc, err)
    assert.truthy(err:find("caught: .*interrupted"), err)
  end)
end)

describe("smolvm.cli", function()
  it("formats ages from milliseconds", function()
    local now = 1700000000
    assert.equal("5s ago", require("smolvm.cli").fmt_age((now - 5) * 1000, now))
    assert.equal("1m ago", require("smolvm.cli").fmt_age((now - 90) * 1000 + 400, now))
    assert.equal("3h ago", require("smolvm.cli").fmt_age((now - 3 * 3600) * 1000, now))
    assert.equal("2d ago", require("smolvm.cli").fmt_age((now - 2 * 86400 - 7) * 1000, now))
    assert.equal("0s ago", require("smolvm.cli").fmt_age((now + 3) * 1000, now)) -- clock skew
    assert.equal("", require("smolvm.cli").fmt_age(nil, now))
  end)

  it("formats events, denied attempts with what was refused", function()
    local fmt = require("smolvm.cli").fmt_event
    assert.equal("2023-11-14T22:13:20.042Z  egress-denied  tcp 198.51.100.3:8000",
      fmt{ time = 1700000000042, kind = "egress-denied", dst = "198.51.100.3", port = 8000,
           protocol = "tcp" })
    assert.equal("2023-11-14T22:13:20.000Z  egress-denied  udp 172.16.0.1:53 name=denied.test",
      fmt{ time = 1700000000000, kind = "egress-denied", dst = "172.16.0.1", port = 53,
           protocol = "udp", name = "denied.test" })
    assert.equal("2023-11-14T22:13:20.000Z  egress-denied  icmp 10.1.0.1",
      fmt{ time = 1700000000000, kind = "egress-denied", dst = "10.1.0.1", port = 0,
           protocol = "icmp" })
    assert.equal("2023-11-14T22:13:20.000Z  network-repaired  table vm-rules",
      fmt{ time = 1700000000000, kind = "network-repaired", detail = "table vm-rules" })
    assert.equal("2023-11-14T22:13:20.000Z  start", fmt{ time = 1700000000000, kind = "start" })
    assert.equal("2023-11-14T22:13:20.000Z  x  a b", fmt{ time = 1700000000000, kind = "x", detail = "a\nb" })
  end)
end)

describe("smolvm.cli ssh_command (transport = \"ssh\" sandboxes)", function()
  local cli = require "smolvm.cli"
  local dir
  before_each(function() dir = mktemp_dir() end)
  after_each(function() os.execute("rm -rf " .. sh_quote(dir)) end)

  local function info(extra)
    local i = { id = "web", ip = "172.16.0.5", ssh_port = 2222, host_key = dir .. "/host.pub",
                ports = { { kind = "ssh", host_address = "127.0.0.1", host_port = 2222 } } }
    for k, v in pairs(extra or {}) do i[k] = v end
    return i
  end

  it("ignores the user's ssh_config, forwards nothing and pins the host key", function()
    write(dir .. "/host.pub", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample root@web\n")
    local cmd = assert(cli.ssh_command(info(), "/state/id_ed25519", dir, nil))
    for _, want in ipairs({ "ssh -F /dev/null ", "-o ForwardAgent=no", "-o ForwardX11=no",
                            "-o ClearAllForwardings=yes", "-o IdentityAgent=none",
                            "-o IdentitiesOnly=yes", "-o PermitLocalCommand=no",
                            "-o StrictHostKeyChecking=yes", "-o GlobalKnownHostsFile=/dev/null",
                            "-o UserKnownHostsFile=" .. dir .. "/known_hosts",
                            "-o HostKeyAlias=smolvm-web", "-p 2222", "root@127.0.0.1",
                            "-i /state/id_ed25519" }) do
      assert.truthy(cmd:find(want, 1, true), "missing " .. want .. " in " .. cmd)
    end
    -- The known_hosts file holds the pinned key under the alias, nothing else.
    local f = assert(io.open(dir .. "/known_hosts", "rb"))
    assert.equal("smolvm-web ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample\n", f:read("*a"))
    f:close()
    -- A command runs on a terminal instead of the login shell.
    cmd = assert(cli.ssh_command(info(), "/k", dir, "tty; exit 3"))
    assert.truthy(cmd:find("'tty; exit 3'$"), cmd)
  end)

  it("refuses when the host key cannot be read, instead of trusting the guest", function()
    local cmd, err = cli.ssh_command(info(), "/k", dir, nil)
    assert.is_nil(cmd)
    assert.truthy(err:find("cannot read its pinned host key '" .. dir .. "/host.pub'", 1, true), err)
    cmd, err = cli.ssh_command(info({ host_key = false }), "/k", dir, nil)
    assert.is_nil(cmd)
    assert.truthy(err:find("no host_key", 1, true), err)
  end)

  it("makes its private directory with mkdtemp (mode 0700)", function()
    local core = require "smolvm.core"
    local d = assert(core.mkdtemp(dir .. "/x."))
    assert.truthy(d:find("^" .. dir:gsub("%p", "%%%0") .. "/x%.......$"), d)
    local p = assert(io.popen("stat -c %a " .. sh_quote(d)))
    assert.equal("700", p:read("*l"))
    p:close()
    local again = assert(core.mkdtemp(dir .. "/x."))
    assert.are_not.equal(d, again)
  end)
end)

describe("smolvm exec flags", function()
  it("says how to ask for a terminal when -t is given something else than seconds", function()
    local script = (os.getenv("SMOLVM_SOURCE_DIR") or "../..") .. "/scripts/smolvm"
    local _, err, rc = run(sh_quote(script) .. " exec -i -t web sh")
    assert.are.equal(2, rc, err)
    assert.truthy(err:find("-t expects seconds > 0, got 'web' (a terminal is -it or --tty)", 1, true), err)
    _, err, rc = run(sh_quote(script) .. " exec -it -t 5 web -- sh")
    assert.are.equal(2, rc, err)
    assert.truthy(err:find("does not apply to a terminal session", 1, true), err)
  end)
end)
