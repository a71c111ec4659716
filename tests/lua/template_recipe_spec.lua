-- SPDX-License-Identifier: MIT
-- A recipe's template blocks: the `template "name" { ... }` declaration (validation,
-- every error with its path, the clones that must agree with it), and the runner's
-- template phase against a stand-in smolvm whose templates live in a temporary
-- directory: made after the images and before the sandboxes, cached by the hash of
-- the block and its image's identity (recipe.json next to template.json), made again
-- when either changed, refused when clones use the old one or when the template was not
-- made by a block; --check makes nothing; --only; --json; --safe; --slurm's checks.
-- No VM is booted here (tests/integration/recipes_spec.lua does that).

local schema = require "smolvm.schema"
local recipe = require "smolvm.recipe"
local core = require "smolvm.core"
local h = require "helpers"

------------------------------------------------------------------------ stand-in

-- A smolvm module whose VMs run nothing and whose templates are directories of `dir`
-- (template.json as the library writes it, with the image's manifest identity).
local function fake_smolvm(dir, opts)
  opts = opts or {}
  local log = { created = {}, deleted = {}, events = {}, vmopts = {}, snapshots = {} }
  local tdir, idir = dir .. "/templates", dir .. "/images"
  local function manifest(name)
    return h.exists(idir .. "/" .. name .. "/manifest.json")
      and core.json_decode(h.read(idir .. "/" .. name .. "/manifest.json")) or {}
  end
  local VM = {}
  local function new_vm(o)
    local vm = { id = o.id, status = "created", opts = o }
    function vm:start() self.status = "running" return true end
    function vm:stop() self.status = "stopped" return true end
    function vm:delete()
      log.deleted[#log.deleted + 1] = self.id
      log.events[#log.events + 1] = "delete " .. self.id
      return true
    end
    function vm:keep() return self end
    function vm:write_file() return true end
    function vm:run(cmd, o)
      log.events[#log.events + 1] = self.id .. ": " .. cmd
      if cmd:find("fail", 1, true) then return { exit_code = 3, stdout = "", stderr = "failed\n" } end
      if o and o.on_output then o.on_output("stdout", cmd .. "\n") end
      return { exit_code = 0, stdout = cmd .. "\n", stderr = "", ok = true }
    end
    function vm:snapshot(name)
      log.snapshots[#log.snapshots + 1] = name
      log.events[#log.events + 1] = "snapshot " .. self.id .. " " .. name
      if opts.snapshot_fails then return nil, "snapshot failed", "EVMM" end
      local m = manifest(self.opts.image)
      os.execute("mkdir -p " .. h.quote(tdir .. "/" .. name))
      h.write(tdir .. "/" .. name .. "/template.json", require("smolvm.json").encode({
        format = 1, name = name, created_ms = 1700000000000 + #log.snapshots,
        image = { name = self.opts.image, built = m.built, inputs_hash = m.inputs_hash },
        vmm = { memory_mib = self.opts.memory, vcpus = self.opts.vcpus } }))
      return true
    end
    return vm
  end
  setmetatable(VM, { __call = function(_, o)
    log.created[#log.created + 1] = o.id
    log.vmopts[o.id] = o
    log.events[#log.events + 1] = "create " .. o.id
    return new_vm(o)
  end })
  function VM.from_id(id)
    if (opts.existing or {})[id] then return new_vm({ id = id }) end
    return nil, "no such vm", "ENOENT"
  end
  local m = { VM = VM, doctor = function() return {} end }
  function m.paths() return { template_dir = tdir, image_dir = idir } end
  function m.default_paths() return { template_dir = tdir, image_dir = idir } end
  function m.templates()
    local list = {}
    local p = io.popen("ls " .. h.quote(tdir) .. " 2>/dev/null")
    for name in p:lines() do
      list[#list + 1] = { name = name, stale = (opts.stale or {})[name] }
    end
    p:close()
    return list
  end
  function m.template_delete(name)
    log.events[#log.events + 1] = "template_delete " .. name
    local users = (opts.in_use or {})[name]
    if users then
      return nil, "template '" .. name .. "' is in use by " .. users
        .. " (delete those first (their disks are backed by its disk))", "ESTATE"
    end
    h.rm_rf(tdir .. "/" .. name)
    return true
  end
  function m.image_build(name, o)
    log.events[#log.events + 1] = (o.dry_run and "dry-run " or "build ") .. name
    if o.dry_run then return (opts.image_states or {})[name] or "up-to-date" end
    return "up-to-date"
  end
  return m, log
end

-- Declare through the globals begin() installs (as a recipe file does), then finish().
local function finish(dir, declare, flags, fake_opts)
  local m, log = fake_smolvm(dir, fake_opts)
  package.loaded["smolvm"] = m
  local saved_err, saved_out = io.stderr, io.stdout
  local err, out = io.tmpfile(), io.tmpfile()
  io.stderr, io.stdout = err, out
  local ok, status = pcall(function()
    recipe.begin(flags or {})
    declare(_G.sandbox, _G.template, _G.image)
    return recipe.finish()
  end)
  io.stderr, io.stdout = saved_err, saved_out
  package.loaded["smolvm"] = nil
  err:seek("set") out:seek("set")
  local etext, otext = err:read("*a"), out:read("*a")
  assert(ok, status)
  return status, log, etext, otext
end

local function image_manifest(dir, name, built, inputs)
  os.execute("mkdir -p " .. h.quote(dir .. "/images/" .. name))
  h.write(dir .. "/images/" .. name .. "/manifest.json",
    '{"built": "' .. built .. '", "inputs_hash": "' .. inputs .. '"}')
end

local function index_of(list, v)
  for i, x in ipairs(list) do if x == v then return i end end
  return nil
end

------------------------------------------------------------------------ declarations

describe("template declarations", function()
  local function templates(list)
    for _, d in ipairs(list) do d.errors = d.errors or {} end
    return schema.validate_templates(list)
  end

  it("fills the machine's defaults and keeps steps, files and env", function()
    local out = assert(templates({ { name = "py", body = {
      memory = 256, env = { A = 1 }, files = { ["/x"] = "y" },
      steps = { "echo hi", { run = "srv", background = true } } } } }))
    local t = out[1]
    assert.equal("py", t.name)
    assert.equal("default", t.vm.image)
    assert.equal(256, t.vm.memory)
    assert.equal(2, t.vm.vcpus)
    assert.equal("auto", t.vm.network)
    assert.same({ A = "1" }, t.vm.env)
    assert.same({ ["/x"] = "y" }, t.files)
    assert.equal("run", t.steps[1].kind)
    assert.is_true(t.steps[2].background)
  end)

  it("names every mistake with its path", function()
    local out, errs = templates({
      { name = "a", body = { memroy = 256 } },
      { name = "b", body = { memory = "lots", image = "../x", network = "wifi", steps = { 3 } } },
      { name = "c", body = { forwards = {}, keep = true, template = "a" } },
      { name = "Bad", body = {} },
      { name = "a", body = {}, line = 9 },
    })
    assert.is_nil(out)
    local text = table.concat(errs, "\n")
    for _, want in ipairs({
      'template "a": memroy: unknown field (did you mean "memory"?)',
      'template "b": memory: expected integer 128..16384, got string "lots"',
      'template "b": image: expected string, an image name',
      'template "b": network: expected one of',
      'template "b": steps[1]:',
      'template "c": forwards: unknown field',
      'template "c": keep: unknown field',
      'template "c": template: unknown field',
      'template "Bad": name: expected string matching [a-z0-9][a-z0-9_-]{0,62}, got string "Bad"',
      'template "a": duplicate template name (line 9), first declared',
    }) do
      assert.truthy(text:find(want, 1, true), "missing: " .. want .. "\nin:\n" .. text)
    end
  end)

  it("reports declaration mistakes and clones that disagree, with the rest, in one invalid recipe", function()
    local dir = h.mktemp_dir()
    local status, log, text = finish(dir, function(sandbox, template)
      template "nobody"
      template { memory = 256 }
      template("two", "names") {}
      template "py" { memory = 256, vcpus = 1, network = "none" }
      sandbox "a" { template = "py", memory = 512 }
      sandbox "b" { template = "py", vcpus = 2, image = "other", network = "user" }
      sandbox "c" { template = "py", network = "none" }
      sandbox "d" { memroy = 1 }
    end)
    h.rm_rf(dir)
    assert.equal(2, status, text)
    assert.same({}, log.created)
    for _, want in ipairs({
      'template "nobody": line ',
      'declared without a body: write template "nobody" { image = "default", steps = { ... } }',
      'the name is missing: write template "name" { ... }',
      'template takes one name: write template "name" { ... }',
      'sandbox "a": memory: a clone has its template\'s memory (256 MiB, template "py"), got 512',
      'sandbox "b": vcpus: a clone has its template\'s vcpus (1, template "py"), got 2',
      'sandbox "b": image: a clone has its template\'s image ("default", template "py"), got "other"',
      'sandbox "b": network: template "py" is made on "none"; its clones are too, got "user"',
      'sandbox "d": memroy: unknown field',
    }) do
      assert.truthy(text:find(want, 1, true), "missing: " .. want .. "\nin:\n" .. text)
    end
    assert.falsy(text:find('sandbox "c"', 1, true), text)
  end)

  it("checks host files of its upload steps, which its downloads can produce for sandboxes", function()
    local dir = h.mktemp_dir()
    local status, _, text = finish(dir, function(sandbox, template)
      template "t" { steps = { { upload = { from = "no-such-file", to = "/x" } },
                               { download = { from = "/etc/hostname", to = dir .. "/made" } } } }
      sandbox "a" { template = "t", steps = { { upload = { from = dir .. "/made", to = "/y" } } } }
    end, { check = true })
    h.rm_rf(dir)
    assert.equal(2, status, text)
    assert.truthy(text:find('template "t": steps[1].upload.from: no such host file "no-such-file"', 1, true), text)
    assert.falsy(text:find('sandbox "a"', 1, true), text)
  end)
end)

------------------------------------------------------------------------ cache keys

describe("a template block's cache key", function()
  local function norm(body)
    local out = assert(schema.validate_templates({ { name = "t", body = body, errors = {} } }))
    return out[1]
  end

  it("is the sha256 of its definition: stable, and changed by any field", function()
    assert.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", core.sha256("abc"))
    local base = { memory = 256, steps = { "echo a" } }
    local h1 = recipe.template_hash(norm(base))
    assert.truthy(h1:match("^[0-9a-f]+$") and #h1 == 64, h1)
    assert.equal(h1, recipe.template_hash(norm({ memory = 256, steps = { { run = "echo a" } } })))
    for _, other in ipairs({
      { memory = 512, steps = { "echo a" } },
      { memory = 256, steps = { "echo b" } },
      { memory = 256, steps = { "echo a", "echo a" } },
      { memory = 256, steps = { "echo a" }, env = { X = "1" } },
      { memory = 256, steps = { "echo a" }, files = { ["/f"] = "x" } },
      { memory = 256, steps = { "echo a" }, image = "tools" },
      { memory = 256, steps = { "echo a" }, network = "none" },
      { memory = 256, steps = { { run = "echo a", timeout = 5 } } },
    }) do
      assert.are_not.equal(h1, recipe.template_hash(norm(other)))
    end
  end)

  it("names the VM that makes it within the id limit", function()
    assert.equal("template-py", recipe.builder_id("py"))
    local long = string.rep("a", 63)
    local id = recipe.builder_id(long)
    assert.truthy(#id <= 63 and schema.valid_id(id), id)
    assert.are_not.equal(id, recipe.builder_id(string.rep("a", 62) .. "b"))
  end)

  it("finds the default directories without creating anything", function()
    local p = assert(core.default_paths())
    assert.truthy(p.image_dir:match("^/"), p.image_dir)
    assert.truthy(p.template_dir:match("/templates$") or os.getenv("SMOLVM_TEMPLATE_DIR"), p.template_dir)
  end)
end)

------------------------------------------------------------------------ runner

describe("a recipe's templates (stand-in smolvm)", function()
  local dir
  before_each(function()
    dir = h.mktemp_dir()
    image_manifest(dir, "default", "2026-01-01T00:00:00Z", "i1")
    image_manifest(dir, "tools", "2026-01-02T00:00:00Z", "t1")
  end)
  after_each(function() h.rm_rf(dir) end)

  local function decl(step)
    return function(sandbox, template, image)
      image "tools" { packages = { "jq" } }
      template "py" { image = "tools", memory = 256, vcpus = 1, network = "none",
                      env = { K = "v" }, steps = { step or "echo made", { run = "holder", background = true } } }
      sandbox "a" { template = "py", steps = { "echo in-a" } }
      sandbox "b" { steps = { "echo in-b" } }
    end
  end

  it("makes it after the images and before the sandboxes, records it, and deletes its VM", function()
    local status, log, text = finish(dir, decl())
    assert.equal(0, status, text)
    local ev = log.events
    local i_build = assert(index_of(ev, "build tools"), table.concat(ev, "\n"))
    local i_create = assert(index_of(ev, "create template-py"))
    local i_snap = assert(index_of(ev, "snapshot template-py py"))
    local i_del = assert(index_of(ev, "delete template-py"))
    local i_a = assert(index_of(ev, "create a"))
    assert.is_true(i_build < i_create and i_create < i_snap and i_snap < i_del and i_del < i_a,
      table.concat(ev, "\n"))
    assert.truthy(index_of(ev, "template-py: echo made"))
    -- The VM that makes it: the block's machine, on QEMU with the agent.
    local o = log.vmopts["template-py"]
    assert.equal("tools", o.image)
    assert.equal(256, o.memory)
    assert.equal(1, o.vcpus)
    assert.equal("none", o.network)
    assert.equal("qemu", o.backend)
    assert.equal("agent", o.transport)
    assert.same({ K = "v" }, o.env)
    -- The clone is made from it, with no machine of its own.
    assert.equal("py", log.vmopts.a.template)
    assert.is_nil(log.vmopts.a.memory)
    -- Its record: the block's hash and the image's identity.
    local rec = core.json_decode(h.read(dir .. "/templates/py/recipe.json"))
    assert.equal(1, rec.format)
    assert.equal("py", rec.template)
    assert.truthy(rec.definition:match("^%x+$") and #rec.definition == 64, rec.definition)
    assert.same({ name = "tools", built = "2026-01-02T00:00:00Z", inputs_hash = "t1" }, rec.image)
    assert.truthy(text:find("[template py] step 1/2 echo made ok", 1, true), text)
    assert.truthy(text:find("template py | echo made\n", 1, true), text)
    assert.truthy(text:find("[template py] built ", 1, true), text)
    assert.truthy(text:find('[a] start (clone of template "py") ok', 1, true), text)
    assert.truthy(text:find("  template py      ok      built", 1, true), text)
  end)

  it("reuses it on the next run, and makes it again when a step or its image changed", function()
    assert.equal(0, (finish(dir, decl())))
    local first = core.json_decode(h.read(dir .. "/templates/py/recipe.json")).definition
    local status, log, text = finish(dir, decl())
    assert.equal(0, status, text)
    assert.is_nil(index_of(log.created, "template-py"), table.concat(log.created, " "))
    assert.same({}, log.snapshots)
    assert.truthy(text:find("[template py] up to date (made 2023-11-14T22:13:20Z)", 1, true), text)
    assert.truthy(text:find("  template py      ok      up to date", 1, true), text)
    -- A step changed: the old one goes first, then it is made again.
    status, log, text = finish(dir, decl("echo made differently"))
    assert.equal(0, status, text)
    assert.truthy(text:find("[template py] out of date (its definition changed): removing the old one", 1, true), text)
    assert.is_true(index_of(log.events, "template_delete py") < index_of(log.events, "create template-py"))
    local second = core.json_decode(h.read(dir .. "/templates/py/recipe.json")).definition
    assert.are_not.equal(first, second)
    -- Its image was rebuilt since.
    image_manifest(dir, "tools", "2026-02-02T00:00:00Z", "t2")
    status, log, text = finish(dir, decl("echo made differently"))
    assert.equal(0, status, text)
    assert.truthy(text:find('[template py] out of date (its image "tools" was rebuilt since (built 2026-02-02T00:00:00Z))', 1, true), text)
    assert.same({ "py" }, log.snapshots)
    assert.equal("t2", core.json_decode(h.read(dir .. "/templates/py/recipe.json")).image.inputs_hash)
    -- The library calls it stale (say, another accel).
    status, log, text = finish(dir, decl("echo made differently"), {}, { stale = { py = "made under kvm" } })
    assert.equal(0, status, text)
    assert.truthy(text:find("[template py] out of date (made under kvm)", 1, true), text)
    assert.same({ "py" }, log.snapshots)
  end)

  it("refuses to replace it while clones use it, naming them, and creates nothing", function()
    assert.equal(0, (finish(dir, decl())))
    local status, log, text = finish(dir, decl("echo changed"), {}, { in_use = { py = "web, vm-1" } })
    assert.equal(1, status, text)
    assert.same({}, log.created)
    assert.truthy(text:find('[template py] FAILED: template "py" is out of date (its definition changed) and cannot be removed: template \'py\' is in use by web, vm-1', 1, true), text)
    assert.truthy(text:find('[a] FAILED: template "py" could not be made', 1, true), text)
    assert.truthy(h.exists(dir .. "/templates/py/recipe.json"))
  end)

  it("does not touch a template of that name that no block made", function()
    os.execute("mkdir -p " .. h.quote(dir .. "/templates/py"))
    h.write(dir .. "/templates/py/template.json", '{"format": 1, "created_ms": 1, "image": {"name": "tools"}}')
    local status, log, text = finish(dir, decl())
    assert.equal(1, status, text)
    assert.is_nil(index_of(log.events, "template_delete py"))
    assert.same({}, log.created)
    assert.truthy(text:find('template "py" exists and it was not made by a template block (it has no recipe.json); remove it with \'smolvm template rm py\', or give the block another name', 1, true), text)
  end)

  it("fails its sandboxes when a step fails, snapshots nothing and boots no sandbox", function()
    local status, log, text = finish(dir, decl("fail here"))
    assert.equal(1, status, text)
    assert.same({}, log.snapshots)
    assert.same({ "template-py" }, log.created)
    assert.same({ "template-py" }, log.deleted)
    assert.is_false(h.exists(dir .. "/templates/py"))
    assert.truthy(text:find("[template py] step 1/2 fail here FAILED", 1, true), text)
    assert.truthy(text:find('[a] FAILED: template "py" could not be made', 1, true), text)
    assert.truthy(text:find("  template py      FAILED  step 1/2: exit status 3, expected 0", 1, true), text)
  end)

  it("says why a snapshot failed", function()
    local status, log, text = finish(dir, decl(), {}, { snapshot_fails = true })
    assert.equal(1, status, text)
    assert.same({ "template-py" }, log.deleted)
    assert.truthy(text:find("[template py] FAILED: snapshot: snapshot failed (EVMM)", 1, true), text)
  end)

  it("refuses to start when the VM that makes it exists (another run makes it now)", function()
    local status, log, text = finish(dir, decl(), {}, { existing = { ["template-py"] = true } })
    assert.equal(1, status, text)
    assert.same({}, log.created)
    assert.truthy(text:find('a VM with id "template-py" exists: another run is making template "py" now', 1, true), text)
  end)

  it("--check makes nothing and says what would be made", function()
    local status, log, text, stdout = finish(dir, decl(), { check = true })
    assert.equal(0, status, text)
    assert.same({}, log.created)
    assert.is_false(h.exists(dir .. "/templates"))
    assert.truthy(stdout:find("recipe ok: 2 sandboxes, 2 steps, 1 image, 1 template", 1, true), stdout)
    assert.truthy(stdout:find('  a                1 step, 1 vcpu, 256 MiB, clone of template "py"', 1, true), stdout)
    assert.truthy(stdout:find("  template py      image tools, 1 vcpu, 256 MiB, 2 steps: would be made (not made yet)", 1, true), stdout)
    assert.equal(0, (finish(dir, decl())))
    _, _, _, stdout = finish(dir, decl(), { check = true })
    assert.truthy(stdout:find("2 steps: up to date (made ", 1, true), stdout)
    _, _, _, stdout = finish(dir, decl("echo other"), { check = true })
    assert.truthy(stdout:find("2 steps: would be made (its definition changed)", 1, true), stdout)
    _, _, _, stdout = finish(dir, decl(), { check = true }, { image_states = { tools = "out-of-date" } })
    assert.truthy(stdout:find('2 steps: would be made (its image "tools" would be built first)', 1, true), stdout)
    _, _, _, stdout = finish(dir, decl(), { check = true, json = true })
    local r = core.json_decode(stdout)
    assert.equal("py", r.templates[1].name)
    assert.equal("up-to-date", r.templates[1].state)
    assert.equal(64, #r.templates[1].definition)
  end)

  it("--check says when a clone's template is neither there nor made by a block", function()
    local function declare(sandbox)
      sandbox "c" { template = "elsewhere", steps = { "true" } }
    end
    local status, log, text, stdout = finish(dir, declare, { check = true })
    assert.equal(0, status, text)
    assert.same({}, log.created)
    assert.truthy(stdout:find('clone of template "elsewhere" (not there now, and no template block makes it)', 1, true), stdout)
    os.execute("mkdir -p " .. h.quote(dir .. "/templates/elsewhere"))
    h.write(dir .. "/templates/elsewhere/template.json", "{}")
    _, _, _, stdout = finish(dir, declare, { check = true })
    assert.truthy(stdout:find('clone of template "elsewhere"\n', 1, true), stdout)
    -- a block's template that is not made yet is not "missing": the run makes it
    _, _, _, stdout = finish(dir, decl(), { check = true })
    assert.is_nil(stdout:find("not there now", 1, true), stdout)
  end)

  it("makes only the templates of the sandbox --only runs", function()
    local d = function(sandbox, template)
      template "one" { steps = { "echo 1" } }
      template "two" { steps = { "echo 2" } }
      sandbox "a" { template = "one" }
      sandbox "b" {}
    end
    local status, log = finish(dir, d, {})
    assert.equal(0, status)
    assert.same({ "one", "two" }, log.snapshots)
    h.rm_rf(dir .. "/templates")
    status, log = finish(dir, d, { only = "a" })
    assert.equal(0, status)
    assert.same({ "one" }, log.snapshots)
    status, log = finish(dir, d, { only = "b" })
    assert.equal(0, status)
    assert.same({}, log.snapshots)
  end)

  it("reports the templates and their steps in --json", function()
    local status, _, _, out = finish(dir, decl(), { json = true })
    assert.equal(0, status)
    local r = core.json_decode(out)
    local t = r.templates[1]
    assert.equal("py", t.name)
    assert.equal("tools", t.image)
    assert.equal("built", t.status)
    assert.is_true(t.ok)
    assert.equal(64, #t.definition)
    assert.equal(2, #t.steps)
    assert.equal("echo made\n", t.steps[1].stdout)
  end)
end)

------------------------------------------------------------------------ --safe, --slurm

describe("templates under --safe and --slurm", function()
  local dir
  before_each(function() dir = h.mktemp_dir() end)
  after_each(function() h.rm_rf(dir) end)

  it("--safe refuses host files in a template's steps", function()
    local status, _, text = finish(dir, function(_, template)
      template "t" { steps = { { download = { from = "/etc/hostname", to = dir .. "/x" } } } }
    end, { safe = true, check = true })
    assert.equal(2, status, text)
    assert.truthy(text:find('template "t": steps[1].download: host files are not available to --safe recipes', 1, true), text)
  end)

  it("--slurm wants each clone's template declared and used by one sandbox", function()
    local file = dir .. "/r.lua"
    h.write(file, "-- a recipe\n")
    local status, _, text = finish(dir, function(sandbox, template)
      template "t" { memory = 300, vcpus = 1 }
      sandbox "a" { template = "t" }
      sandbox "b" { template = "t" }
      sandbox "c" { template = "elsewhere" }
    end, { slurm = true, check = true, file = file })
    assert.equal(2, status, text)
    assert.truthy(text:find('template "t": used by sandboxes a, b; under --slurm each node makes its own templates', 1, true), text)
    assert.truthy(text:find('sandbox "c": template: "elsewhere" is not declared in the recipe', 1, true), text)
    local slurm = require "smolvm.slurm"
    local cpus, mem = slurm.resources({ vm = { template = "t" }, clone_of = { vm = { vcpus = 1, memory = 300 } } })
    assert.equal(1, cpus)
    assert.equal(300 + slurm.VMM_OVERHEAD_MIB, mem)
  end)
end)

------------------------------------------------------------------------ the command

describe("smolvm template (through smolvm-lua)", function()
  local SMOLVM_LUA = os.getenv("SMOLVM_LUA")
    or ((os.getenv("SMOLVM_BUILD_DIR") or "../../build") .. "/smolvm-lua")
  local SRC = os.getenv("SMOLVM_SOURCE_DIR") or "../.."
  local dir

  local function smolvm(args)
    local cmd = "env SMOLVM_STATE_DIR=" .. h.quote(dir .. "/state")
      .. " SMOLVM_IMAGE_DIR=" .. h.quote(dir .. "/images")
      .. " SMOLVM_TEMPLATE_DIR=" .. h.quote(dir .. "/templates") .. " "
      .. h.quote(SMOLVM_LUA) .. " " .. h.quote(SRC .. "/scripts/smolvm") .. " " .. args
      .. " </dev/null >" .. dir .. "/out 2>" .. dir .. "/err; echo $?"
    local p = assert(io.popen(cmd))
    local rc = tonumber(p:read("*a"):match("(%d+)%s*$"))
    p:close()
    return h.read(dir .. "/out"), h.read(dir .. "/err"), rc
  end

  -- A template directory as the library writes it (no guest state: nothing boots).
  local function fake_template(name, image, built, record)
    local d = dir .. "/templates/" .. name
    os.execute("mkdir -p " .. h.quote(d))
    h.write(d .. "/template.json", ([[{"format": 1, "name": %q, "created_ms": %d,
      "source_vm": "vm-1", "ephemeral": false, "memory": "shared",
      "image": {"name": %q, "built": %q, "inputs_hash": "i1"},
      "vmm": {"backend": "qemu", "accel": "tcg", "vcpus": 1, "memory_mib": 256, "network": "none"},
      "agent": {"hello": {}, "next_stream": 3}}]]):format(name, os.time() * 1000 - 120000, image, built))
    h.write(d .. "/disk.qcow2", string.rep("d", 4096))
    if record then h.write(d .. "/recipe.json", record) end
  end

  before_each(function()
    if not h.exists(SMOLVM_LUA) then pending("smolvm-lua is not built") end
    dir = h.mktemp_dir()
    image_manifest(dir, "default", "2026-01-01T00:00:00Z", "i1")
    h.write(dir .. "/images/default/vmlinux", "k")
    h.write(dir .. "/images/default/rootfs.ext4", "r")
  end)
  after_each(function() if dir then h.rm_rf(dir) end end)

  it("lists templates as a table, as JSON and as names, with why one is stale", function()
    local out, err, rc = smolvm("template ls")
    assert.equal(0, rc, err)
    assert.equal("NAME   IMAGE   MEMORY   CREATED   SIZE   STALE\n", out)
    fake_template("fresh", "default", "2026-01-01T00:00:00Z",
      '{"format": 1, "template": "fresh", "definition": "abc", "image": {"name": "default"}}')
    fake_template("old", "default", "2025-01-01T00:00:00Z")
    out, err, rc = smolvm("template ls")
    assert.equal(0, rc, err)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal(3, #lines, out)
    assert.truthy(lines[2]:match("^fresh%s+default%s+256%s+2m ago%s+%d+ KiB%s+%-$"), lines[2])
    assert.truthy(lines[3]:match("^old%s+default%s+256%s+2m ago%s+%d+ KiB%s+template 'old' was made from image 'default' as built 2025%-01%-01T00:00:00Z; the image was rebuilt"), lines[3])
    out, err, rc = smolvm("template ls --json")
    assert.equal(0, rc, err)
    local list = core.json_decode(out)
    assert.equal(2, #list)
    assert.equal("fresh", list[1].name)
    assert.equal("abc", list[1].recipe.definition)
    assert.is_nil(list[1].stale)
    assert.is_nil(list[2].recipe)
    assert.truthy(list[2].stale:find("rebuilt", 1, true), list[2].stale)
    out = smolvm("template ls -q")
    assert.equal("fresh\nold\n", out)
  end)

  it("removes templates, and says what is wrong with a name", function()
    fake_template("one", "default", "2026-01-01T00:00:00Z")
    local out, err, rc = smolvm("template rm one")
    assert.equal(0, rc, err)
    assert.equal("one\n", out)
    assert.is_false(h.exists(dir .. "/templates/one"))
    _, err, rc = smolvm("template rm one")
    assert.equal(1, rc)
    assert.truthy(err:find("smolvm: template 'one' not found", 1, true), err)
    assert.truthy(err:find("hint: 'smolvm template ls' lists the templates", 1, true), err)
    _, err, rc = smolvm("template rm Bad")
    assert.equal(2, rc)
    assert.truthy(err:find("invalid template name 'Bad'", 1, true), err)
    _, err, rc = smolvm("template")
    assert.equal(2, rc)
    _, err, rc = smolvm("template lss")
    assert.equal(2, rc)
    assert.truthy(err:find("unknown template command 'lss' (did you mean 'ls'?)", 1, true), err)
  end)

  it("checks the arguments of pause, resume, suspend, start and snapshot before anything runs", function()
    for _, c in ipairs({ { "pause", "pause needs a sandbox ID" }, { "resume", "resume needs a sandbox ID" },
                         { "suspend", "suspend needs a sandbox ID" }, { "start", "start needs a sandbox ID" },
                         { "snapshot web", "usage: smolvm snapshot ID NAME" },
                         { "snapshot web Bad", "invalid template name 'Bad'" },
                         { "start -t soon web", "-t expects seconds > 0" },
                         { "pause -f web", "unknown option '-f'" },
                         { "snapshot --all web t", "unknown option '--all'" } }) do
      local _, err, rc = smolvm(c[1])
      assert.equal(2, rc, c[1] .. ": " .. err)
      assert.truthy(err:find(c[2], 1, true), c[1] .. ": " .. err)
    end
    for _, verb in ipairs({ "pause", "resume", "suspend", "start" }) do
      local _, err, rc = smolvm(verb .. " no-such-vm")
      assert.equal(1, rc, verb)
      assert.truthy(err:find("no such sandbox 'no-such-vm'", 1, true), err)
    end
  end)
end)
