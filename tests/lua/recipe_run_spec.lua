-- SPDX-License-Identifier: MIT
-- The recipe runner. Part 1 drives it against a stand-in smolvm module (no VMs): order
-- of steps, expectations, teardown on failure and on "interrupted", keep, exit codes.
-- Part 2 runs examples and a SIGINT teardown with real VMs through smolvm-lua; it is
-- pending (with the reason) when the host cannot run sandboxes.

local recipe = require "smolvm.recipe"
local schema = require "smolvm.schema"

local sh_quote = require("helpers").quote

-- A fake smolvm: commands are words the fake understands.
local function fake_smolvm(opts)
  opts = opts or {}
  local log = { created = {}, deleted = {}, kept = {}, runs = {}, existing = opts.existing or {} }
  local VM = {}
  local function new_vm(o)
    local vm = { id = o.id, status = "created" }
    function vm:start()
      if opts.start_fails then return nil, "no usable VMM", opts.start_fails end
      self.status = "running" return true
    end
    function vm:stop() self.status = "stopped" return true end
    function vm:delete() log.deleted[#log.deleted + 1] = self.id self.status = "deleted" return true end
    function vm:keep() log.kept[#log.kept + 1] = self.id return self end
    function vm:write_file() return true end
    function vm:upload() return true end
    function vm:download() return true end
    function vm:run(cmd, ropts)
      log.runs[#log.runs + 1] = self.id .. ":" .. cmd
      if cmd == "INT" then error("interrupted", 0) end
      local code = cmd:match("^exit (%d+)") or "0"
      local out = cmd:match("^echo (.*)$")
      local err = cmd:match("^warn (.*)$")
      out = out and (out:gsub("\\e", "\27"):gsub("\\xff", "\255") .. "\n") or ""
      err = err and (err .. "\n") or ""
      -- Output as it comes (the agent transport), in two chunks to test the line
      -- splitting.
      if ropts and ropts.on_output then
        if #out > 0 then
          ropts.on_output("stdout", out:sub(1, 2))
          ropts.on_output("stdout", out:sub(3))
        end
        if #err > 0 then ropts.on_output("stderr", err) end
      end
      return { exit_code = tonumber(code), stdout = out, stderr = err, ok = code == "0" }
    end
    if opts.streaming then
      -- The agent transport: spawn, read as it comes, poll. The fake's whole output and
      -- exit are already in hand when spawn returns (as when they come in the same read
      -- as the spawn's reply), and its descriptor never becomes readable.
      function vm:info() return { config = { transport = "agent" } } end
      function vm:spawn(cmd)
        log.runs[#log.runs + 1] = self.id .. ":" .. cmd
        local out = cmd:match("^echo (.*)$")
        local q = out and { { "stdout", out .. "\n" } } or {}
        local proc = {}
        function proc:read()
          local e = table.remove(q, 1)
          if e then return e[1], e[2] end
          return nil, nil
        end
        function proc:fd() return opts.streaming end
        function proc:wait() return { exit_code = 0 } end
        function proc:kill() return true end
        function proc:close() return true end
        return proc
      end
    end
    return vm
  end
  setmetatable(VM, { __call = function(_, o)
    log.created[#log.created + 1] = o.id
    return new_vm(o)
  end })
  function VM.from_id(id)
    if log.existing[id] then return new_vm({ id = id }) end
    return nil, "no such vm", "ENOENT"
  end
  local m = { VM = VM, doctor = function() return { { name = "kvm", ok = false, detail = "no kvm", hint = "use tcg" } } end }
  return m, log
end

local function run_recipe(decls, flags, fake_opts)
  local m, log = fake_smolvm(fake_opts)
  package.loaded["smolvm"] = m
  local list = {}
  for i, d in ipairs(decls) do list[i] = { name = d[1], body = d[2], errors = {} } end
  local sbs = assert(recipe.validate(list))
  local saved_err, saved_out = io.stderr, io.stdout
  local err, out = io.tmpfile(), io.tmpfile()
  io.stderr, io.stdout = err, out
  local ok, status = pcall(recipe.run, sbs, flags or {})
  io.stderr, io.stdout = saved_err, saved_out
  package.loaded["smolvm"] = nil
  err:seek("set") out:seek("set")
  local etext, otext = err:read("*a"), out:read("*a")
  assert(ok, status)
  return status, log, etext, otext
end

describe("recipe runner (stand-in smolvm)", function()
  it("takes what a streamed command sent before it waits on its descriptor", function()
    local sys = require "smolvm.sys"
    if not sys.poll then pending("no smolvm.core poll") return end
    -- A descriptor that never becomes readable: a FIFO this process holds open for
    -- reading and writing, with nothing written. Its number, from /proc.
    local dir = assert(require("smolvm.core").mkdtemp("/tmp/smolvm-lua-fifo."))
    local fifo = dir .. "/f"
    assert(os.execute("mkfifo " .. sh_quote(fifo)))
    local fh = assert(io.open(fifo, "r+"))
    local pid = assert(io.open("/proc/self/stat")):read("l"):match("^(%d+)")
    local ls = assert(io.popen("ls -l /proc/" .. pid .. "/fd"))
    local fd
    for line in ls:lines() do
      local n, target = line:match(" (%d+) %-> (.*)$")
      if target == fifo then fd = tonumber(n) end
    end
    ls:close()
    assert(fd, "the fifo's descriptor")
    local t0 = sys.now()
    local status, log, text = run_recipe({
      { "a", { steps = { { run = "echo fast", timeout = 5 }, { run = "echo again", timeout = 5 } } } },
    }, {}, { streaming = fd })
    fh:close()
    os.execute("rm -rf " .. sh_quote(dir))
    assert.equal(0, status, text)
    assert.same({ "a:echo fast", "a:echo again" }, log.runs)
    assert.truthy(text:find("a | fast\n", 1, true), text)
    -- Not after each step's timeout (5 s + the kill grace): at once.
    assert.truthy(sys.now() - t0 < 2.5, ("took %.1f s"):format(sys.now() - t0))
  end)

  it("runs sandboxes side by side, round-robin, and deletes them", function()
    local status, log, text = run_recipe({
      { "a", { steps = { "echo a1", "echo a2" } } },
      { "b", { steps = { "echo b1", { run = "echo b2", expect = { stdout = "b2" } } } } },
    })
    assert.equal(0, status, text)
    assert.same({ "a:echo a1", "b:echo b1", "a:echo a2", "b:echo b2" }, log.runs)
    assert.same({ "a", "b" }, log.created)
    assert.same({ "a", "b" }, log.deleted)
    assert.truthy(text:find("[a] step 2/2 echo a2 ok", 1, true), text)
    assert.truthy(text:find("recipe ok: 2 sandboxes", 1, true), text)
  end)

  it("stops a sandbox at its failing step, prints its output, others go on", function()
    local status, log, text = run_recipe({
      { "a", { steps = { { run = "echo nope", expect = { stdout = "yes" } }, "echo never" } } },
      { "b", { steps = { "echo b1", "echo b2" } } },
    })
    assert.equal(1, status)
    assert.same({ "a:echo nope", "b:echo b1", "b:echo b2" }, log.runs)
    assert.same({ "a", "b" }, log.deleted)
    assert.truthy(text:find('stdout does not contain "yes"', 1, true), text)
    assert.truthy(text:find("a | nope\n", 1, true), text) -- shown as it came
    assert.is_nil(text:find("--- stdout ---", 1, true), text) -- not shown twice
    assert.truthy(text:find("recipe failed: 1 of 2 sandboxes failed", 1, true), text)
  end)

  it("shows each line of output as it comes, prefixed with its sandbox", function()
    local status, _, text = run_recipe({
      { "a", { steps = { "echo one", "warn careful" } } },
      { "web", { steps = { "echo two" } } },
    })
    assert.equal(0, status, text)
    -- Whole lines (the fake sends "on" and "e\n"), names padded to line up.
    assert.truthy(text:find("\na   | one\n", 1, true), text)
    assert.truthy(text:find("\na   | careful\n", 1, true), text)
    assert.truthy(text:find("\nweb | two\n", 1, true), text)
    -- Before the step's result line.
    assert.truthy(text:find("a   | one\n[a] step 1/2 echo one ok", 1, true), text)
  end)

  it("keeps a status line of what runs on a terminal, erased before each line", function()
    local status, _, text = run_recipe({
      { "a", { steps = { "echo one" } } }, { "b", { steps = { "echo two" } } },
    }, { tty = true })
    assert.equal(0, status, text)
    assert.truthy(text:find("[a] boot ...\r\27[K[a] boot ", 1, true), text)
    assert.truthy(text:find("[a] step 1/1 echo one ...\r\27[K", 1, true), text)
    -- A line of output erases the status line first (colors or not).
    assert.truthy(text:find("\r\27%[K[^\n]-a |[^\n]- one\n"), text)
  end)

  it("hides the live output with --quiet, and shows a failing step's output", function()
    local status, _, text = run_recipe({
      { "a", { steps = { "echo one", { run = "echo nope", expect = { stdout = "yes" } } } } },
    }, { quiet = true })
    assert.equal(1, status)
    assert.is_nil(text:find("a | ", 1, true), text)
    assert.truthy(text:find("[a] step 1/2 echo one ok", 1, true), text)
    assert.truthy(text:find("--- stdout ---\n  nope", 1, true), text)
  end)

  it("sanitizes guest text on the terminal and in JSON", function()
    -- The fake turns \e into ESC and \xff into an invalid UTF-8 byte.
    local status, _, text, out = run_recipe({
      { "a", { steps = { [[echo \e]0;owned\a \xff end]], { run = [[echo \e[2J]], expect = { exit = 1 } } } } },
    }, { json = true })
    assert.equal(1, status)
    assert.is_nil(text:find("\27", 1, true), "raw ESC on stderr: " .. text)
    assert.is_nil(out:find("\27", 1, true), "raw ESC in JSON: " .. out)
    assert.is_nil(out:find("\255", 1, true), "invalid UTF-8 in JSON: " .. out)
    assert.truthy(text:find("a | \\x1b]0;owned\\a \239\191\189 end", 1, true), text)
    local ok, dkjson = pcall(require, "dkjson")
    if not ok then pending("dkjson not installed") return end
    local r = assert(dkjson.decode(out))
    assert.equal("\\x1b]0;owned\\a \239\191\189 end\n", r.sandboxes[1].steps[1].stdout)
    assert.equal("\\x1b[2J\n", r.sandboxes[1].steps[2].stdout)
  end)

  it("checks the exit status", function()
    local status, _, text = run_recipe({ { "a", { steps = { "exit 3" } } } })
    assert.equal(1, status)
    assert.truthy(text:find("exit status 3, expected 0", 1, true), text)
    status = run_recipe({ { "a", { steps = { { run = "exit 3", expect = { exit = 3 } } } } } })
    assert.equal(0, status)
  end)

  it("starts background steps detached with their log", function()
    local status, log = run_recipe({ { "a", { steps = { { run = "serve 'x'", background = true } } } } })
    assert.equal(0, status)
    assert.equal([[a:nohup sh -c 'serve '\''x'\''' >/tmp/smolvm-bg-1.log 2>&1 </dev/null & echo $!]], log.runs[1])
  end)

  it("tears everything down when interrupted, kept or not", function()
    local status, log, text = run_recipe({
      { "a", { keep = true, steps = { "echo a1", "echo a2" } } },
      { "b", { steps = { "INT" } } },
    })
    assert.equal(130, status)
    assert.same({ "a", "b" }, log.deleted)
    assert.same({}, log.kept)
    assert.truthy(text:find("interrupted", 1, true), text)
  end)

  it("keeps sandboxes with keep = true or --keep", function()
    local status, log, text = run_recipe({ { "a", { keep = true, steps = { "echo" } } }, { "b", {} } })
    assert.equal(0, status, text)
    assert.same({ "a" }, log.kept)
    assert.same({ "b" }, log.deleted)
    assert.truthy(text:find("smolvm exec a -- sh", 1, true), text)
    local _, log2 = run_recipe({ { "a", {} } }, { keep = true })
    assert.same({ "a" }, log2.kept)
    assert.same({}, log2.deleted)
  end)

  it("exits 3 when the host cannot run sandboxes, with doctor's hints", function()
    local status, log, text = run_recipe({ { "a", {} }, { "b", {} } }, {}, { start_fails = "EHOST" })
    assert.equal(3, status, text)
    assert.same({ "a", "b" }, log.deleted)
    assert.truthy(text:find("the host cannot run sandboxes: no usable VMM", 1, true), text)
    assert.truthy(text:find("kvm: no kvm (use tcg)", 1, true), text)
  end)

  it("refuses to reuse an id that exists, creating nothing", function()
    local status, log, text = run_recipe({ { "web", {} } }, {}, { existing = { web = true } })
    assert.equal(1, status)
    assert.same({}, log.created)
    assert.truthy(text:find("smolvm rm -f web", 1, true), text)
  end)

  it("runs host checks after the steps, before teardown", function()
    local seen
    local status, log, text = run_recipe({ { "web", { steps = { "echo up" } } } }, { host_checks = {
      { label = "curl", fn = function(vms) seen = vms.web.status return false, "no answer" end } } })
    assert.equal(1, status)
    assert.equal("running", seen)
    assert.same({ "web" }, log.deleted)
    assert.truthy(text:find("[host] curl FAILED: no answer", 1, true), text)
  end)

  it("prints a machine-readable result with --json", function()
    local status, _, _, out = run_recipe({ { "a", { steps = { "echo hi", "exit 1" } } } }, { json = true })
    assert.equal(1, status)
    local ok, dkjson = pcall(require, "dkjson")
    if not ok then pending("dkjson not installed") return end
    local r = dkjson.decode(out)
    assert.equal(1, r.status)
    assert.is_false(r.ok)
    assert.equal("a", r.sandboxes[1].name)
    assert.equal("hi\n", r.sandboxes[1].steps[1].stdout)
    assert.equal("", r.sandboxes[1].steps[1].stderr)
    assert.equal(1, r.sandboxes[1].steps[2].exit_code)
    assert.is_true(r.sandboxes[1].deleted)
  end)
end)

describe("recipe.load (--check) on " .. (jit and "LuaJIT" or _VERSION), function()
  local h = require "helpers"
  it("compiles the file where os.execute, io.popen and require raise, and reading works", function()
    local dir = h.mktemp_dir()
    local marker = dir .. "/marker"
    h.write(dir .. "/data.txt", "from a file")
    h.write(dir .. "/r.lua", 'local f = assert(io.open("' .. dir .. '/data.txt"))\n'
      .. 'sandbox "a" { files = { ["/x"] = f:read("*a") } }\n'
      .. 'os.execute("touch ' .. marker .. '")\n')
    recipe.begin({ check = true })
    local chunk = assert(recipe.load(dir .. "/r.lua"))
    local ok, err = pcall(chunk)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("r.lua:3: os.execute is not available under --check", 1, true), err)
    assert.is_false(h.exists(marker))
    for _, src in ipairs({ "io.popen('true')", "require('os')", "load('x=1')", "dofile('/dev/null')" }) do
      h.write(dir .. "/s.lua", src .. "\n")
      local c = assert(recipe.load(dir .. "/s.lua"))
      local okc, e = pcall(c)
      assert.is_false(okc, src)
      assert.truthy(tostring(e):find("is not available under --check", 1, true), src .. ": " .. tostring(e))
    end
    -- Precompiled chunks are not recipes.
    h.write(dir .. "/b.lua", string.dump(function() return 1 end))
    local c, e = recipe.load(dir .. "/b.lua")
    assert.is_nil(c)
    assert.truthy(tostring(e):find("binary", 1, true) or tostring(e):find("precompiled", 1, true), e)
    local saved = io.stdout
    io.stdout = io.tmpfile()
    local status = recipe.finish() -- validates what r.lua declared (--check: a summary)
    io.stdout = saved
    assert.equal(0, status)
    h.rm_rf(dir)
  end)
end)
