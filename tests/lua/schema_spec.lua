-- SPDX-License-Identifier: MIT
-- smolvm.schema: VM option validation, defaults and messages (no VMs needed).
local schema = require "smolvm.schema"

local function errs_of(opts)
  local ok, errs = schema.validate_vm(opts)
  assert.is_nil(ok)
  return table.concat(errs, "\n"), errs
end

describe("schema.validate_vm", function()
  it("fills the defaults", function()
    local o = assert(schema.validate_vm({}))
    assert.same({ vcpus = 2, memory = 512, disk = "isolated", image = "default",
                  backend = "auto", accel = "auto", network = "auto", forwards = {}, env = {},
                  transport = "auto" }, o)
    assert.is_nil(o.id)
    assert(schema.validate_vm(nil))
  end)

  it("keeps valid values and normalizes env values to strings", function()
    local o = assert(schema.validate_vm{ id = "web-1", vcpus = 32, memory = 128, disk = "shared",
      backend = "qemu", accel = "tcg", network = "none", image = "deb12",
      forwards = { { host = 8080, guest = 80 }, { host = 8443, guest = 443, address = "0.0.0.0" } },
      env = { A = "x", B_2 = 3 } })
    assert.equal("web-1", o.id)
    assert.equal(32, o.vcpus)
    assert.equal("3", o.env.B_2)
    assert.equal("0.0.0.0", o.forwards[2].address)
    assert.equal(2, #o.forwards)
  end)

  it("accepts integral floats on every Lua (no math.type)", function()
    local o = assert(schema.validate_vm{ memory = 1024.0 })
    assert.equal(1024, o.memory)
  end)

  local cases = {
    { { memory = "lots" }, 'memory: expected integer 128..16384, got string "lots"' },
    { { memory = 64 }, "memory: expected integer 128..16384, got integer 64" },
    { { memory = 20000 }, "memory: expected integer 128..16384, got integer 20000" },
    { { vcpus = 1.5 }, "vcpus: expected integer 1..32, got number 1.5" },
    { { vcpus = 0 }, "vcpus: expected integer 1..32, got integer 0" },
    { { id = "Web" }, 'id: expected string matching [a-z0-9][a-z0-9_-]{0,62}, got string "Web"' },
    { { id = string.rep("a", 64) }, "id: expected string matching" },
    { { id = "-x" }, 'got string "-x"' },
    { { disk = "isolatd" }, 'disk: expected one of "isolated", "shared", got string "isolatd" (did you mean "isolated"?)' },
    { { backend = "kvm" }, 'backend: expected one of "auto", "qemu", "firecracker", got string "kvm"' },
    { { accel = true }, "accel: expected one of \"auto\", \"kvm\", \"tcg\", got boolean true" },
    { { network = "bridge" }, 'network: expected one of "auto", "nat", "user", "none"' },
    { { image = "../etc" }, "image: expected string, an image name" },
    { { memroy = 512 }, 'memroy: unknown field (did you mean "memory"?)' },
    { { cpus = 2 }, 'cpus: unknown field (did you mean "vcpus"?)' },
    { { zzzzzz = 1 }, "zzzzzz: unknown field" },
    { { forwards = { { host = 0, guest = 80 } } }, "forwards[1].host: expected integer 1..65535, got integer 0" },
    { { forwards = { { host = 80 } } }, "forwards[1].guest: required field missing" },
    { { forwards = { { host = 80, guest = 80, address = "localhost" } } },
      'forwards[1].address: expected IPv4 address string, got string "localhost"' },
    { { forwards = { { host = 80, guest = 80, adress = "1.2.3.4" } } },
      'forwards[1].adress: unknown field (did you mean "address"?)' },
    { { forwards = { { host = 80, guest = 1 }, { host = 80, guest = 2 } } },
      "forwards[2].host: host port 80 already forwarded by forwards[1]" },
    { { forwards = "8080:80" }, 'forwards: expected list (table), got string "8080:80"' },
    { { env = { ["1X"] = "a" } }, 'env: bad key: expected NAME matching [A-Za-z_][A-Za-z0-9_]*, got string "1X"' },
    { { env = { A = {} } }, "env.A: expected string or number, got table" },
    { { env = { A = "red \27[31m" } }, "env.A: control characters are not allowed (the guest's boot environment is printable text)" },
    { { env = { A = ("x"):rep(4097) } }, "env.A: too long: at most 4096 bytes" },
    { "opts", 'expected table of options, got string "opts"' },
    { { egress = "internt" }, 'egress: expected "internet", "none" or table { allow = { entries } }, got string "internt" (did you mean "internet"?)' },
    { { egress = true }, "egress: expected \"internet\", \"none\" or table { allow = { entries } }, got boolean true" },
    { { egress = {} }, "egress.allow: required field missing" },
    { { egress = { allow = "pypi.org" } }, 'egress.allow: expected list (table), got string "pypi.org"' },
    { { egress = { alow = {} } }, 'egress.alow: unknown field (did you mean "allow"?)' },
    { { egress = { allow = { "pypi.org", 7 } } }, "egress.allow[2]: expected a domain name" },
    { { egress = { allow = { "10.0.0.1/8" } } },
      "egress.allow[1]: '10.0.0.1/8' has host bits set (did you mean '10.0.0.0/8'?)" },
    { { egress = { allow = { "http://pypi.org" } } },
      "egress.allow[1]: expected a domain name ('pypi.org'), '*.suffix', '*' or an IPv4 address or CIDR ('198.51.100.0/24'), got 'http://pypi.org'" },
  }
  for _, c in ipairs(cases) do
    it("rejects " .. c[2], function()
      local all = errs_of(c[1])
      assert.truthy(all:find(c[2], 1, true), "got: " .. all)
    end)
  end

  it("takes egress policies and normalizes names to lowercase", function()
    assert.equal("none", assert(schema.validate_vm{ egress = "none" }).egress)
    assert.equal("internet", assert(schema.validate_vm{ egress = "internet" }).egress)
    assert.is_nil(assert(schema.validate_vm{}).egress) -- the library's default for the network
    local o = assert(schema.validate_vm{ egress = { allow = { "PyPI.org", "*.pythonhosted.org",
                                                                "198.51.100.0/24", "*" } } })
    assert.same({ allow = { "pypi.org", "*.pythonhosted.org", "198.51.100.0/24", "*" } }, o.egress)
    local many = {}
    for i = 1, 257 do many[i] = "h" .. i .. ".example" end
    local all = errs_of{ egress = { allow = many } }
    assert.truthy(all:find("egress.allow: too many items: at most 256, got 257", 1, true), all)
    assert.same({ allow = {} }, schema.check_egress{ allow = {} })
    local bad, msg = schema.check_egress("open")
    assert.is_nil(bad)
    assert.truthy(msg:find('egress: expected "internet"', 1, true), msg)
  end)

  it("limits forwards to 64 and env to 256", function()
    local fw, env = {}, {}
    for i = 1, 65 do fw[i] = { host = 1000 + i, guest = 80 } end
    for i = 1, 257 do env["V" .. i] = "x" end
    local all = errs_of{ forwards = fw, env = env }
    assert.truthy(all:find("forwards: too many items: at most 64, got 65", 1, true), all)
    assert.truthy(all:find("env: too many entries: at most 256, got 257", 1, true), all)
  end)

  it("reports every error at once", function()
    local _, errs = errs_of{ memory = "x", vcpus = 99, dsik = "shared" }
    assert.equal(3, #errs)
  end)
end)

describe("schema.validate_recipe", function()
  it("normalizes steps and uses the name as the VM id", function()
    local sbs = assert(schema.validate_recipe{ { name = "web", body = {
      steps = { "ls", { run = "x", expect = { stdout = "y" } }, { write = { path = "/a", content = "" } } },
      files = { ["/etc/x"] = "1" } } } })
    local sb = sbs[1]
    assert.equal("web", sb.id)
    assert.is_false(sb.keep)
    assert.same({ kind = "run", run = "ls", expect = { exit = 0 }, background = false,
                  timeout = schema.DEFAULT_STEP_TIMEOUT }, sb.steps[1])
    assert.equal(0, sb.steps[2].expect.exit)
    assert.equal("write", sb.steps[3].kind)
    assert.equal(512, sb.vm.memory)
  end)

  it("prefixes paths with the sandbox", function()
    local ok, errs = schema.validate_recipe{ { name = "web", body = {
      steps = { "a", "b", { run = "c", expect = { exit = "0" } } } } } }
    assert.is_nil(ok)
    assert.same({ 'sandbox "web": steps[3].expect.exit: expected integer 0..255, got string "0"' }, errs)
  end)

  it("finds forward clashes across sandboxes, by address", function()
    local ok, errs = schema.validate_recipe{
      { name = "a", body = { forwards = { { host = 8080, guest = 1 } } } },
      { name = "b", body = { forwards = { { host = 8080, guest = 1, address = "127.0.0.2" } } } },
      { name = "c", body = { forwards = { { host = 8080, guest = 1 } } } },
    }
    assert.is_nil(ok)
    assert.equal(1, #errs)
    assert.truthy(errs[1]:find('sandbox "c": forwards[1].host: port 8080 on 127.0.0.1 clashes with sandbox "a"', 1, true))
  end)

  it("suggests within step fields", function()
    local _, errs = schema.validate_recipe{ { name = "x", body = { steps = { { rnu = "ls" } } } } }
    assert.same({ 'sandbox "x": steps[1].rnu: unknown field (did you mean "run"?)' }, errs)
  end)
end)

describe("schema helpers", function()
  it("suggests the nearest name", function()
    assert.equal("memory", schema.suggest("memroy", { "vcpus", "memory" }))
    assert.equal("run", schema.suggest("rnu", { "run", "upload" }))
    assert.is_nil(schema.suggest("qqqqq", { "run", "upload" }))
  end)
  it("describes values", function()
    assert.equal('string "a"', schema.describe("a"))
    assert.equal("integer 3", schema.describe(3))
    assert.equal("number 0.5", schema.describe(0.5))
    assert.equal("nothing", schema.describe(nil))
  end)
end)
