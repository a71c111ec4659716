-- SPDX-License-Identifier: MIT
-- The guest agent and the supervisor with real guests: commands and files with no
-- network, output as it comes, stdin, terminals, attach from another process, kills,
-- clients that go away, the console's bound, and sandboxes that end with their owner
-- or their ttl. Run by run-spec.sh (its own state dir and network namespace).
local smolvm = require "smolvm"
local core = require "smolvm.core"

local h = require "helpers"
local LUA, BOOT = h.LUA, h.BOOT
local sh, tmpfile, readfile, wait_for = h.sh, h.tmpfile, h.readfile, h.wait_for

local function now_ms()
  if core.monotonic_ms then return core.monotonic_ms() end
  return tonumber((sh("date +%s%3N"):gsub("%s", "")))
end

-- Run a Lua snippet in another smolvm-lua process; background: its pid and output file.
local function lua_proc(code, background, env)
  local file = tmpfile(code)
  local prefix = env or ""
  if background then
    local out = sh(("%s %q %q >%q.out 2>&1 & echo $!"):format(prefix, LUA, file, file))
    return tonumber(out:match("%d+")), file .. ".out"
  end
  return sh(("%s %q %q"):format(prefix, LUA, file))
end

local function kill9(pid)
  sh("kill -9 " .. pid)
  assert.truthy(wait_for(function()
    local stat = readfile("/proc/" .. pid .. "/stat")
    return not stat or stat:match("^%d+ %b() Z") ~= nil
  end, 10), "process " .. pid .. " did not die")
end

-- Processes of this test's state dir (VMM or supervisor), by their command lines.
local function procs_of(dir)
  local out = sh(("pgrep -f -- %q"):format("[s]molvm-supervisor.*" .. dir) ..
                 "; " .. ("pgrep -f -- %q"):format("[q]emu-system.*" .. dir .. "/"))
  local n = 0
  for _ in out:gmatch("%d+") do n = n + 1 end
  return n
end

describe("a sandbox with network none", function()
  local vm

  lazy_setup(function()
    vm = assert(smolvm.VM{ memory = 256, vcpus = 1, network = "none" })
    assert(vm:start{ timeout = BOOT })
  end)
  lazy_teardown(function() if vm then vm:delete() end end)

  it("is served by the agent", function()
    assert.are.equal("agent", vm:info().config.transport)
    assert.is_nil(vm.ip)
  end)

  it("runs commands and moves files", function()
    local r = assert(vm:run("echo out; echo err >&2; exit 7"))
    assert.are.same({ "out\n", "err\n", 7 }, { r.stdout, r.stderr, r.exit_code })
    local blob = {}
    for i = 0, 255 do blob[#blob + 1] = string.char(i) end
    blob = table.concat(blob):rep(4096) -- 1 MiB, every byte value
    assert(vm:write_file("/root/blob", blob))
    assert.are.equal(blob, assert(vm:read_file("/root/blob")))
    local local_copy = os.tmpname()
    assert(vm:download("/root/blob", local_copy))
    assert.are.equal(blob, readfile(local_copy))
    assert(vm:upload(local_copy, "/srv/up/blob"))
    assert.are.equal("1048576\n", assert(vm:run("wc -c < /srv/up/blob")).stdout)
    os.remove(local_copy)
  end)

  it("passes stdin, env and cwd, and refuses a cwd that does not exist", function()
    local r = assert(vm:run("cat; echo $A; pwd", { stdin = "in\n", env = { A = "a" }, cwd = "/tmp" }))
    assert.are.equal("in\na\n/tmp\n", r.stdout)
    local ok, err = vm:run("touch /root/ran", { cwd = "/nonexistent" })
    assert.is_nil(ok)
    assert.truthy(err:find("/nonexistent", 1, true), err)
    assert.are.equal(1, assert(vm:run("test -e /root/ran")).exit_code)
  end)

  it("streams output before the command ends", function()
    local t0, times, text = now_ms(), {}, {}
    local r = assert(vm:run("echo first; sleep 2; echo second", {
      on_output = function(stream, chunk)
        times[#times + 1] = now_ms() - t0
        text[#text + 1] = stream .. ":" .. chunk
      end,
    }))
    local total = now_ms() - t0
    assert.are.equal("first\nsecond\n", r.stdout)
    assert.truthy(#times >= 2, table.concat(text, "|"))
    assert.are.equal("stdout:first\n", text[1])
    -- the first line arrived while the command still slept
    assert.truthy(total - times[1] > 1500, ("first chunk at %d ms, end at %d ms"):format(times[1], total))
  end)

  it("streams stdin into a running process", function()
    local p = assert(vm:spawn("cat", { stdin = true, keep = false }))
    assert(p:write("hello "))
    local stream, chunk = assert(p:read{ timeout = 30 })
    assert.are.equal("stdout", stream)
    assert.are.equal("hello ", chunk)
    assert(p:write("world\n"))
    assert(p:close_stdin())
    local rest = {}
    while true do
      local s, c = p:read{ timeout = 30 }
      if not s then break end
      rest[#rest + 1] = c
    end
    assert.are.equal("world\n", table.concat(rest))
    assert.are.equal(0, assert(p:wait()).exit_code)
    p:close()
  end)

  it("gives a process a terminal that follows resizes", function()
    local p = assert(vm:spawn("tty; stty size; read x; stty size", { pty = { rows = 24, cols = 80 }, keep = false }))
    local out = ""
    while not out:find("24 80", 1, true) do
      local s, c = assert(p:read{ timeout = 30 })
      out = out .. c
    end
    assert.truthy(out:find("/dev/pts/", 1, true), out)
    assert(p:resize(40, 120))
    assert(p:write("\n"))
    while not out:find("40 120", 1, true) do
      local s, c = p:read{ timeout = 30 }
      assert.truthy(s, out)
      out = out .. c
    end
    assert.are.equal(0, assert(p:wait()).exit_code)
  end)

  it("kills a command past its timeout, and everything it started", function()
    local ok, err, code = vm:run("sleep 300 & sleep 301", { timeout = 2 })
    assert.is_nil(ok)
    assert.are.equal("ETIMEDOUT", code, err)
    local r = assert(vm:run("pgrep -x sleep || echo none"))
    assert.are.equal("none\n", r.stdout)
  end)

  it("kills a process group with proc:kill", function()
    local p = assert(vm:spawn("sleep 302 & sleep 303", { keep = true }))
    assert(p:kill("KILL"))
    local st = assert(p:wait{ timeout = 30 })
    assert.are.equal("KILL", st.signal)
    assert.is_false(st.ok)
    assert.are.equal("none\n", assert(vm:run("pgrep -x sleep || echo none")).stdout)
  end)

  it("lets another process attach to a running process and replay its output", function()
    local p = assert(vm:spawn("for i in $(seq 1 12); do echo n$i; sleep 0.4; done", { keep = true }))
    local pid = p.pid
    p:close() -- kept: it runs on
    sh("sleep 1.5")
    local listed
    for _, q in ipairs(assert(vm:processes())) do
      if q.pid == pid then listed = q end
    end
    assert.truthy(listed and listed.running, "the process is not listed as running")
    local out = lua_proc(([[
      local smolvm = require "smolvm"
      local vm = assert(smolvm.VM.from_id(%q))
      local p = assert(vm:attach(%d))
      for line in p:lines() do io.write(line, " ") end
      io.write("exit=", assert(p:wait()).exit_code, "\n")
    ]]):format(vm.id, pid))
    -- the lines printed before the attach (replayed) and after it (live), in order
    local want = {}
    for i = 1, 12 do want[#want + 1] = "n" .. i end
    assert.are.equal(table.concat(want, " ") .. " exit=0\n", out)
  end)

  it("stays usable when a client disappears in the middle of a stream", function()
    local pid = lua_proc(([[
      local smolvm = require "smolvm"
      local vm = assert(smolvm.VM.from_id(%q))
      local p = assert(vm:spawn("yes flood", { keep = false }))
      for _ = 1, 50 do assert(p:read()) end
      io.stdout:write("reading\n"); io.stdout:flush()
      os.execute("sleep 600")
    ]]):format(vm.id), true)
    sh("sleep 4")
    kill9(pid)
    local r = assert(vm:run("echo still here"))
    assert.are.equal("still here\n", r.stdout)
    -- the flood it started was killed with its stream (keep = false)
    assert.truthy(wait_for(function()
      return assert(vm:run("pgrep -x yes || echo none")).stdout == "none\n"
    end, 20))
  end)
end)

describe("the supervisor", function()
  it("keeps the console log within its bound while the guest floods it", function()
    local out = lua_proc([[
      local smolvm = require "smolvm"
      local vm = assert(smolvm.VM{ memory = 256, vcpus = 1, network = "none" })
      assert(vm:start{ timeout = 120 })
      local r = assert(vm:run("head -c 3000000 /dev/zero | tr '\\0' x > /dev/ttyS0; echo done", { timeout = 300 }))
      io.write(r.stdout, vm:info().dir, "\n")
      vm:keep()
    ]], false, "SMOLVM_CONSOLE_MAX=262144")
    local dir = out:match("done\n(%S+)\n")
    assert.truthy(dir, out)
    local a = #(readfile(dir .. "/console.log") or "")
    local b = #(readfile(dir .. "/console.log.1") or "")
    assert.truthy(a + b <= 262144, ("console.log %d + console.log.1 %d bytes"):format(a, b))
    assert.truthy(b > 100000, "the log was never rotated")
    assert(assert(smolvm.VM.from_id(dir:match("([^/]+)$"))):delete())
  end)

  it("deletes a sandbox whose owner process is killed", function()
    local pid, outfile = lua_proc([[
      local smolvm = require "smolvm"
      local vm = assert(smolvm.VM{ memory = 256, vcpus = 1, network = "none" })
      assert(vm:start{ timeout = 120 })
      io.stdout:write(vm.id, " ", vm:info().dir, "\n"); io.stdout:flush()
      os.execute("sleep 600")
    ]], true)
    local id, dir
    assert.truthy(wait_for(function()
      id, dir = (readfile(outfile) or ""):match("(vm%-%x+) (%S+)\n")
      return id
    end, BOOT), readfile(outfile))
    assert.are.equal(2, procs_of(dir))
    kill9(pid)
    -- no command from anyone: the supervisor itself ends it
    assert.truthy(wait_for(function() return procs_of(dir) == 0 end, 30), "vmm or supervisor left")
    assert.truthy(wait_for(function() return not readfile(dir .. "/supervisor.json") end, 10))
    local _, _, code = smolvm.VM.from_id(id)
    assert.are.equal("ENOENT", code)
  end)

  it("lets a kept sandbox outlive its owner, until its ttl", function()
    local pid, outfile = lua_proc([[
      local smolvm = require "smolvm"
      local vm = assert(smolvm.VM{ memory = 256, vcpus = 1, network = "none", ttl = 25 })
      assert(vm:start{ timeout = 120 })
      assert(vm:keep())
      io.stdout:write(vm.id, " ", vm:info().dir, "\n"); io.stdout:flush()
      os.execute("sleep 600")
    ]], true)
    local id, dir
    assert.truthy(wait_for(function()
      id, dir = (readfile(outfile) or ""):match("(vm%-%x+) (%S+)\n")
      return id
    end, BOOT), readfile(outfile))
    kill9(pid)
    sh("sleep 2")
    local vm = assert(smolvm.VM.from_id(id))
    assert.are.equal("running", vm.status)
    assert.are.equal("alive\n", assert(vm:run("echo alive")).stdout)
    vm:close()
    assert.truthy(wait_for(function() return procs_of(dir) == 0 end, 60), "still running past its ttl")
    local _, _, code = smolvm.VM.from_id(id)
    assert.are.equal("ENOENT", code)
  end)
end)
