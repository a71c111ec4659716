-- SPDX-License-Identifier: MIT
-- Invalid recipes: each must exit with status 2 and say what is wrong, with its path.
-- Run through smolvm-lua ($SMOLVM_LUA; pending when it is not built) with and without
-- --check, and through a small stand-in driver under the current interpreter (the
-- same begin/loadfile/finish sequence), so the recipe engine is tested on both ABIs.
-- No VM is ever created: an invalid recipe is refused before anything runs.

local sh_quote = require("helpers").quote

local function run(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"__status=$?\"")
  local out = p:read("*a")
  p:close()
  local status = tonumber(out:match("__status=(%d+)%s*$"))
  return status, (out:gsub("__status=%d+%s*$", ""))
end

local tmp = os.tmpname()
os.remove(tmp)
assert(os.execute("mkdir -p " .. sh_quote(tmp)))
local data = io.open(tmp .. "/data.csv", "w")
data:write("a,b\n1,2\n")
data:close()

local interp = ({ lua54 = "lua5.4", luajit = "luajit" })[os.getenv("SMOLVM_TEST_INTERP") or ""] or "lua5.4"
local driver = tmp .. "/driver.lua"
do
  local f = assert(io.open(driver, "w"))
  f:write([[
local opts, file = {}, nil
for _, a in ipairs(arg) do
  if a == "--check" then opts.check = true elseif a == "--json" then opts.json = true
  elseif a == "--keep" then opts.keep = true else file = a end
end
local R = require "smolvm.recipe"
R.begin(opts)
local chunk, err = loadfile(file)
if not chunk then io.stderr:write(err, "\n") os.exit(2) end
local ok, e = pcall(chunk)
if not ok then io.stderr:write(tostring(e), "\n") os.exit(1) end
os.exit(R.finish())
]])
  f:close()
end

local S = [["mkdir -p /srv"]]
-- { name, recipe source, expected substrings... }
local cases = {
  { "syntax error", 'sandbox "web" { memory = 256,, }', "unexpected symbol" },
  { "unknown field with did-you-mean", 'sandbox "web" { memroy = 256 }',
    'sandbox "web": memroy: unknown field (did you mean "memory"?)' },
  { "wrong type", 'sandbox "web" { memory = "lots" }',
    'sandbox "web": memory: expected integer 128..16384, got string "lots"' },
  { "out of range", 'sandbox "web" { vcpus = 64 }',
    'sandbox "web": vcpus: expected integer 1..32, got integer 64' },
  { "not an integer", 'sandbox "web" { memory = 256.5 }',
    'sandbox "web": memory: expected integer 128..16384, got number 256.5' },
  { "bad enum with suggestion", 'sandbox "web" { network = "usr" }',
    'sandbox "web": network: expected one of "auto", "nat", "user", "none", got string "usr" (did you mean "user"?)' },
  { "deep path", 'sandbox "web" { steps = { "a", "b", { run = "c", expect = { exit = "0" } } } }',
    'sandbox "web": steps[3].expect.exit: expected integer 0..255, got string "0"' },
  { "duplicate sandbox names", 'sandbox "web" {}\nsandbox "web" {}',
    'sandbox "web": duplicate sandbox name (line 2), first declared at line 1' },
  { "forwards clash across sandboxes",
    'sandbox "a" { forwards = { { host = 8080, guest = 80 } } }\nsandbox "b" { forwards = { { host = 8080, guest = 81 } } }',
    'sandbox "b": forwards[1].host: port 8080 on 127.0.0.1 clashes with sandbox "a" forwards[1]' },
  { "duplicate host port in one sandbox",
    'sandbox "a" { forwards = { { host = 80, guest = 1 }, { host = 80, guest = 2 } } }',
    'sandbox "a": forwards[2].host: host port 80 already forwarded by forwards[1]' },
  { "forward without guest port", 'sandbox "a" { forwards = { { host = 80 } } }',
    'sandbox "a": forwards[1].guest: required field missing' },
  { "forward address not IPv4", 'sandbox "a" { forwards = { { host = 80, guest = 80, address = "localhost" } } }',
    'sandbox "a": forwards[1].address: expected IPv4 address string, got string "localhost"' },
  { "env name", 'sandbox "a" { env = { ["MY-VAR"] = "x" } }',
    'sandbox "a": env: bad key: expected NAME matching [A-Za-z_][A-Za-z0-9_]*, got string "MY-VAR"' },
  { "env value", 'sandbox "a" { env = { X = true } }',
    'sandbox "a": env.X: expected string or number, got boolean true' },
  { "relative file path", 'sandbox "a" { files = { ["srv/index.html"] = "x" } }',
    'sandbox "a": files: bad key: expected absolute guest path, got string "srv/index.html"' },
  { "file content not a string", 'sandbox "a" { files = { ["/x"] = 42 } }',
    'sandbox "a": files["/x"]: expected string, got integer 42' },
  { "step with run and upload", 'sandbox "a" { steps = { { run = "x", upload = { from = "data.csv", to = "/d" } } } }',
    'sandbox "a": steps[1]: a step has exactly one of run, upload, download, write, found run and upload' },
  { "misspelled step key", 'sandbox "a" { steps = { ' .. S .. ', { rnu = "ls" } } }',
    'sandbox "a": steps[2].rnu: unknown field (did you mean "run"?)' },
  { "empty step", 'sandbox "a" { steps = { {} } }',
    'sandbox "a": steps[1]: expected one of run, upload, download, write, got an empty table' },
  { "step not string or table", 'sandbox "a" { steps = { 42 } }',
    'sandbox "a": steps[1]: expected string or table with one of run, upload, download, write, got integer 42' },
  { "expect on a background step", 'sandbox "a" { steps = { { run = "srv", background = true, expect = { exit = 0 } } } }',
    'sandbox "a": steps[1].expect: not allowed with background = true' },
  { "negative timeout", 'sandbox "a" { steps = { { run = "x", timeout = -1 } } }',
    'sandbox "a": steps[1].timeout: expected number > 0 and <= 86400, got integer -1' },
  { "relative cwd", 'sandbox "a" { steps = { { run = "x", cwd = "tmp" } } }',
    'sandbox "a": steps[1].cwd: expected absolute path (string starting with /), got string "tmp"' },
  { "run-only field on upload", 'sandbox "a" { steps = { { upload = { from = "data.csv", to = "/d" }, timeout = 3 } } }',
    'sandbox "a": steps[1].timeout: only allowed in a run step, not in an upload step' },
  { "upload source missing", 'sandbox "a" { steps = { { upload = { from = "missing.csv", to = "/d" } } } }',
    'sandbox "a": steps[1].upload.from: no such host file "missing.csv"' },
  { "upload to relative guest path", 'sandbox "a" { steps = { { upload = { from = "data.csv", to = "d" } } } }',
    'sandbox "a": steps[1].upload.to: expected absolute path (string starting with /), got string "d"' },
  { "write without content", 'sandbox "a" { steps = { { write = { path = "/x" } } } }',
    'sandbox "a": steps[1].write.content: required field missing' },
  { "download body not a table", 'sandbox "a" { steps = { { download = "/x" } } }',
    'sandbox "a": steps[1].download: expected table { from =, to = }, got string "/x"' },
  { "keep not boolean", 'sandbox "a" { keep = "yes" }',
    'sandbox "a": keep: expected boolean, got string "yes"' },
  { "bad sandbox name", 'sandbox "Web Server" {}',
    'sandbox "Web Server": name: expected string matching [a-z0-9][a-z0-9_-]{0,62}, got string "Web Server"' },
  { "missing name", '\nsandbox { steps = {} }',
    'sandbox at line 2: the name is missing: write sandbox "name" { ... }' },
  { "body not a table", 'sandbox "x" "y"',
    'sandbox "x": line 1: expected a table after sandbox "x" (sandbox "name" { ... }), got string "y"' },
  { "declared without a body", 'sandbox "lonely"',
    'sandbox "lonely": line 1: declared without a body: write sandbox "lonely" { ... }' },
  { "steps not a list", 'sandbox "a" { steps = "ls" }',
    'sandbox "a": steps: expected list of steps (table), got string "ls"' },
  { "same VM id twice", 'sandbox "a" { id = "vm1" }\nsandbox "b" { id = "vm1" }',
    'sandbox "b": id: VM id "vm1" already used by sandbox "a"' },
  { "every error at once",
    'sandbox "a" { memory = "x", steps = { { run = 1 } } }\nsandbox "b" { dsik = "shared" }',
    'sandbox "a": memory: expected integer', 'sandbox "a": steps[1].run: expected non-empty string, got integer 1',
    'sandbox "b": dsik: unknown field (did you mean "disk"?)', "invalid recipe (3 errors)" },
}

local function write_case(i, src)
  local path = string.format("%s/case%02d.lua", tmp, i)
  local f = assert(io.open(path, "w"))
  f:write(src, "\n")
  f:close()
  return path
end

local function check_case(cmd, c)
  local status, out = run(cmd)
  assert.equal(2, status, c[1] .. ": exit status (output: " .. out .. ")")
  for j = 3, #c do
    assert.truthy(out:find(c[j], 1, true), c[1] .. ": missing '" .. c[j] .. "' in:\n" .. out)
  end
end

it("has at least 20 kinds of mistake", function()
  assert.is_true(#cases >= 20)
end)

describe("invalid recipes (stand-in driver, " .. interp .. ")", function()
  for i, c in ipairs(cases) do
    it(c[1], function()
      local path = write_case(i, c[2])
      check_case(interp .. " " .. sh_quote(driver) .. " --check " .. sh_quote(path), c)
      check_case(interp .. " " .. sh_quote(driver) .. " " .. sh_quote(path), c)
    end)
  end
end)

local bin = os.getenv("SMOLVM_LUA")
local have_bin = bin and io.open(bin, "rb") ~= nil

describe("invalid recipes (smolvm-lua)", function()
  if not have_bin then
    it("needs smolvm-lua", function() pending("smolvm-lua not built ($SMOLVM_LUA=" .. tostring(bin) .. ")") end)
    return
  end
  for i, c in ipairs(cases) do
    it(c[1], function()
      local path = write_case(i, c[2])
      check_case(sh_quote(bin) .. " --check " .. sh_quote(path), c)
      check_case(sh_quote(bin) .. " " .. sh_quote(path), c)
      check_case(sh_quote(bin) .. " --json " .. sh_quote(path), c)
    end)
  end
end)

describe("valid recipe with --check", function()
  local src = [[
sandbox "web" {
  memory = 256,
  forwards = { { host = 18080, guest = 8000 } },
  files = { ["/srv/index.html"] = "<h1>hello</h1>" },
  steps = {
    "mkdir -p /srv",
    { run = "python3 -m http.server 8000 -d /srv", background = true },
    { run = "curl -s localhost:8000", expect = { exit = 0, stdout = "hello" } },
    { upload = { from = "data.csv", to = "/work/data.csv" } },
  },
}
sandbox "db" { steps = { "echo hi" } }
]]
  local function check_valid(cmd)
    local status, out = run(cmd)
    assert.equal(0, status, out)
    assert.truthy(out:find("recipe ok: 2 sandboxes, 5 steps", 1, true), out)
    assert.truthy(out:find("127.0.0.1:18080->8000", 1, true), out)
  end
  it("exits 0 with a summary (stand-in driver)", function()
    local path = write_case(99, src)
    check_valid(interp .. " " .. sh_quote(driver) .. " --check " .. sh_quote(path))
    local status, out = run(interp .. " " .. sh_quote(driver) .. " --check --json " .. sh_quote(path) .. " 2>/dev/null")
    assert.equal(0, status)
    assert.truthy(out:find('"checked":true', 1, true), out)
  end)
  it("exits 0 with a summary (smolvm-lua)", function()
    if not have_bin then pending("smolvm-lua not built") return end
    check_valid(sh_quote(bin) .. " --check " .. sh_quote(write_case(99, src)))
  end)
  it("a file that declares nothing exits 0 silently", function()
    local path = write_case(98, "local x = 1")
    local status, out = run(interp .. " " .. sh_quote(driver) .. " " .. sh_quote(path))
    assert.equal(0, status)
    assert.equal("", out)
  end)
end)

teardown(function() os.execute("rm -rf " .. sh_quote(tmp)) end)
