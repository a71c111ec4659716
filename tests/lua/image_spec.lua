-- SPDX-License-Identifier: MIT
-- Images: the `image "name" { ... }` declaration (validation, every error with its
-- path), the recipe runner's image phase against a stand-in smolvm (built once per
-- run, before any VM, progress prefixed, failures, --check builds nothing, --only), the
-- smolvm.image_* argument checks, and `smolvm image ls/build/rm` through smolvm-lua on
-- temporary image, state and template directories. No image is built here
-- (tests/integration/image_spec.lua does that).

local schema = require "smolvm.schema"
local recipe = require "smolvm.recipe"
local h = require "helpers"
local sh_quote = h.quote

------------------------------------------------------------------------ stand-in

local function fake_smolvm(opts)
  opts = opts or {}
  local log = { created = {}, deleted = {}, builds = {}, events = {} }
  local VM = {}
  local function new_vm(o)
    local vm = { id = o.id, status = "created" }
    function vm:start() self.status = "running" return true end
    function vm:stop() self.status = "stopped" return true end
    function vm:delete() log.deleted[#log.deleted + 1] = self.id return true end
    function vm:keep() return self end
    function vm:write_file() return true end
    function vm:run(cmd)
      return { exit_code = 0, stdout = cmd .. "\n", stderr = "", ok = true }
    end
    return vm
  end
  setmetatable(VM, { __call = function(_, o)
    log.created[#log.created + 1] = o.id .. "@" .. tostring(o.image)
    log.events[#log.events + 1] = "create " .. o.id
    return new_vm(o)
  end })
  function VM.from_id() return nil, "no such vm", "ENOENT" end
  local m = { VM = VM, doctor = function() return {} end }
  function m.image_build(name, o)
    log.builds[#log.builds + 1] = { name = name, packages = o.packages, dry_run = o.dry_run }
    log.events[#log.events + 1] = (o.dry_run and "dry-run " or "build ") .. name
    local r = (opts.results or {})[name] or { "built" }
    if r.raise then error(r.raise, 0) end
    if o.on_line then
      for _, l in ipairs(r.lines or { "build-image: [0s] building image '" .. name .. "'" }) do
        o.on_line(l)
      end
    end
    if o.dry_run then
      if o.on_line then o.on_line("build-image: image '" .. name .. "' would be built: not built yet") end
      return "out-of-date"
    end
    return r[1], r[2], r[3]
  end
  return m, log
end

-- Declare through the globals begin() installs (as a recipe file does), then finish().
local function finish(declare, flags, fake_opts)
  local m, log = fake_smolvm(fake_opts)
  package.loaded["smolvm"] = m
  local saved_err, saved_out = io.stderr, io.stdout
  local err, out = io.tmpfile(), io.tmpfile()
  io.stderr, io.stdout = err, out
  local ok, status = pcall(function()
    recipe.begin(flags or {})
    declare(_G.sandbox, _G.image)
    return recipe.finish()
  end)
  io.stderr, io.stdout = saved_err, saved_out
  package.loaded["smolvm"] = nil
  err:seek("set") out:seek("set")
  local etext, otext = err:read("*a"), out:read("*a")
  assert(ok, status)
  return status, log, etext, otext
end

------------------------------------------------------------------------ schema

describe("image declarations", function()
  local function images(list)
    for _, d in ipairs(list) do d.errors = d.errors or {} end
    return schema.validate_images(list)
  end

  it("normalizes packages: sorted, without duplicates", function()
    local out = assert(images({ { name = "tools", body = { packages = { "jq", "git", "jq" } } },
                                { name = "plain", body = {} } }))
    assert.same({ "git", "jq" }, out[1].packages)
    assert.equal("tools", out[1].name)
    assert.same({}, out[2].packages)
  end)

  it("names every mistake with its path", function()
    local out, errs = images({
      { name = "a", body = { pakages = { "jq" } } },
      { name = "b", body = { packages = { "Jq", "x", 3, "ok-name", "a b" } } },
      { name = "c", body = { packages = "jq" } },
      { name = "Bad", body = {} },
      { name = "templates", body = {} },
      { name = "a", body = {}, line = 7 },
    })
    assert.is_nil(out)
    local text = table.concat(errs, "\n")
    for _, want in ipairs({
      'image "a": pakages: unknown field (did you mean "packages"?)',
      'image "b": packages[1]: expected string, a Debian package name ([a-z0-9][a-z0-9+.-]+), got string "Jq"',
      'image "b": packages[2]: expected string, a Debian package name',
      'image "b": packages[3]: expected string, a Debian package name ([a-z0-9][a-z0-9+.-]+), got integer 3',
      'image "b": packages[5]: expected string, a Debian package name ([a-z0-9][a-z0-9+.-]+), got string "a b"',
      'image "c": packages: expected list (table), got string "jq"',
      'image "Bad": name: expected string matching [a-z0-9][a-z0-9_-]{0,62}, got string "Bad"',
      'image "templates": name: "templates" is reserved',
      'image "a": duplicate image name (line 7), first declared',
    }) do
      assert.truthy(text:find(want, 1, true), "missing: " .. want .. "\nin:\n" .. text)
    end
    assert.falsy(text:find("packages[4]", 1, true), text)
  end)

  it("limits the number of packages", function()
    local many = {}
    for i = 1, 257 do many[i] = "pkg" .. i end
    local _, errs = images({ { name = "big", body = { packages = many } } })
    assert.truthy(errs[1]:find("too many items: at most 256, got 257", 1, true), errs[1])
  end)

  it("reports declaration mistakes with the sandboxes' in one invalid recipe", function()
    local status, log, text = finish(function(sandbox, image)
      image "nobody"
      image { packages = { "jq" } }
      image("two", "names") { packages = {} }
      image "tools" { packages = { "Jq" } }
      sandbox "web" { memroy = 1 }
    end)
    assert.equal(2, status, text)
    assert.same({}, log.builds)
    for _, want in ipairs({
      'image "nobody": line ',
      'declared without a body: write image "nobody" { packages = { ... } }',
      'the name is missing: write image "name" { ... }',
      'image "two": line ',
      'image takes one name: write image "name" { ... }',
      'image "tools": packages[1]: expected string, a Debian package name',
      'sandbox "web": memroy: unknown field (did you mean "memory"?)',
    }) do
      assert.truthy(text:find(want, 1, true), "missing: " .. want .. "\nin:\n" .. text)
    end
  end)

  it("refuses an image name that is not an image name in a sandbox", function()
    local status, _, text = finish(function(sandbox)
      sandbox "web" { image = "../etc" }
    end)
    assert.equal(2, status)
    assert.truthy(text:find('sandbox "web": image: expected string, an image name ([a-z0-9][a-z0-9_-]{0,62})', 1, true), text)
  end)
end)

------------------------------------------------------------------------ runner

describe("a recipe's images (stand-in smolvm)", function()
  it("builds each image once, before any VM, with its progress prefixed", function()
    local status, log, text = finish(function(sandbox, image)
      image "tools" { packages = { "jq", "git" } }
      sandbox "a" { image = "tools", steps = { "jq --version" } }
      sandbox "b" { image = "tools" }
      sandbox "c" {}
    end, {}, { results = { tools = { "built", lines = { "build-image: [0s] kernel", "build-rootfs: [3s] mkfs" } } } })
    assert.equal(0, status, text)
    assert.equal(1, #log.builds)
    assert.same({ name = "tools", packages = { "git", "jq" } }, log.builds[1])
    assert.same({ "build tools", "create a", "create b", "create c" }, log.events)
    assert.same({ "a@tools", "b@tools", "c@default" }, log.created)
    assert.truthy(text:find("[image tools] [0s] kernel\n", 1, true), text)
    assert.truthy(text:find("[image tools] build-rootfs: [3s] mkfs\n", 1, true), text)
    assert.truthy(text:find("[image tools] built ", 1, true), text)
    assert.truthy(text:find("image tools      ok      built", 1, true), text)
  end)

  it("says when an image is up to date", function()
    local status, _, text = finish(function(sandbox, image)
      image "tools" { packages = { "jq" } }
      sandbox "a" { image = "tools" }
    end, {}, { results = { tools = { "up-to-date", lines = { "build-image: image 'tools' is up to date (/x)" } } } })
    assert.equal(0, status, text)
    assert.truthy(text:find("[image tools] image 'tools' is up to date (/x)", 1, true), text)
    assert.truthy(text:find("[image tools] up to date ", 1, true), text)
  end)

  it("fails the sandboxes of an image that could not be built, and creates no VM", function()
    local status, log, text = finish(function(sandbox, image)
      image "tools" { packages = { "nope" } }
      sandbox "a" { image = "tools" }
      sandbox "b" {}
    end, {}, { results = { tools = { nil, "build image 'tools' failed: build-rootfs: no such package in bookworm: nope", "EIO" } } })
    assert.equal(1, status, text)
    assert.same({}, log.created)
    assert.truthy(text:find("[image tools] FAILED: build image 'tools' failed: build-rootfs: no such package", 1, true), text)
    assert.truthy(text:find("[a] FAILED: image \"tools\" could not be built", 1, true), text)
    assert.truthy(text:find("recipe failed", 1, true), text)
  end)

  it("says building needs root", function()
    local status, _, text = finish(function(sandbox, image)
      image "tools" { packages = { "jq" } }
      sandbox "a" { image = "tools" }
    end, {}, { results = { tools = { nil, "build image 'tools': building needs root (run as root, or build it first: sudo env SMOLVM_IMAGE_DIR='/i' /s/build-image.sh --packages jq tools)", "EPERM" } } })
    assert.equal(1, status, text)
    assert.truthy(text:find("needs root", 1, true), text)
    assert.truthy(text:find("sudo env SMOLVM_IMAGE_DIR='/i'", 1, true), text)
    assert.truthy(text:find('could not be built (building needs root)', 1, true), text)
  end)

  it("--check builds nothing and says what would be built", function()
    local status, log, text, stdout = finish(function(sandbox, image)
      image "tools" { packages = { "jq" } }
      sandbox "a" { image = "tools" }
    end, { check = true })
    assert.equal(0, status, text)
    assert.equal(1, #log.builds)
    assert.is_true(log.builds[1].dry_run)
    assert.same({}, log.created)
    assert.truthy(stdout:find("recipe ok: 1 sandbox, 0 steps, 1 image", 1, true), stdout)
    assert.truthy(stdout:find("image tools      packages jq: would be built (not built yet)", 1, true), stdout)
    local _, log2, _, json_out = finish(function(sandbox, image)
      image "tools" { packages = { "jq" } }
      sandbox "a" { image = "tools" }
    end, { check = true, json = true })
    assert.is_true(log2.builds[1].dry_run)
    assert.truthy(json_out:find('"images":[{', 1, true), json_out)
    assert.truthy(json_out:find('"state":"out-of-date"', 1, true), json_out)
  end)

  it("builds every declared image, or with --only the ones its sandbox uses", function()
    local decl = function(sandbox, image)
      image "one" {}
      image "two" {}
      sandbox "a" { image = "one" }
      sandbox "b" {}
    end
    local status, log = finish(decl, {})
    assert.equal(0, status)
    assert.same({ "one", "two" }, { log.builds[1].name, log.builds[2].name })
    status, log = finish(decl, { only = "a" })
    assert.equal(0, status)
    assert.equal(1, #log.builds)
    assert.equal("one", log.builds[1].name)
    status, log = finish(decl, { only = "b" })
    assert.equal(0, status)
    assert.equal(0, #log.builds)
  end)

  it("runs a recipe that only declares images", function()
    local status, log, text = finish(function(_, image)
      image "tools" { packages = { "jq" } }
    end)
    assert.equal(0, status, text)
    assert.equal(1, #log.builds)
  end)

  it("an interrupt during a build removes everything and creates nothing", function()
    local status, log, text = finish(function(sandbox, image)
      image "tools" {}
      sandbox "a" { image = "tools" }
    end, {}, { results = { tools = { raise = "interrupted (SIGINT)" } } })
    assert.equal(130, status, text)
    assert.same({}, log.created)
    assert.truthy(text:find("image tools      FAILED  not finished", 1, true), text)
  end)

  it("reports the images in --json", function()
    local status, _, _, out = finish(function(sandbox, image)
      image "tools" { packages = { "jq" } }
      sandbox "a" { image = "tools" }
    end, { json = true })
    assert.equal(0, status)
    assert.truthy(out:find('"images":[{', 1, true), out)
    assert.truthy(out:find('"status":"built"', 1, true), out)
    assert.truthy(out:find('"packages":["jq"]', 1, true), out)
  end)
end)

------------------------------------------------------------------------ facade

describe("smolvm.image_build / image_delete arguments", function()
  local smolvm = require "smolvm"
  it("raise for a bad name, package or option, naming it", function()
    local cases = {
      { function() smolvm.image_build("Bad") end, "image_build: name: expected string matching" },
      { function() smolvm.image_build("templates") end, 'other than "templates"' },
      { function() smolvm.image_build("t", { packages = { "Jq" } }) end,
        "image_build: packages[1]: expected string, a Debian package name" },
      { function() smolvm.image_build("t", { pakages = {} }) end,
        'image_build: pakages: unknown option (did you mean "packages"?)' },
      { function() smolvm.image_build("t", { force = "yes" }) end,
        "image_build: force: expected boolean, got string" },
      { function() smolvm.image_build("t", { timeout = -1 }) end, "image_build: timeout:" },
      { function() smolvm.image_delete("../x") end, "image_delete: name:" },
      { function() smolvm.image_delete("t", { forse = true }) end, "unknown option" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(c[1])
      assert.is_false(ok)
      assert.truthy(tostring(err):find(c[2], 1, true), tostring(err))
    end
  end)
end)

------------------------------------------------------------------------ the command

describe("smolvm image (through smolvm-lua)", function()
  local SMOLVM_LUA = os.getenv("SMOLVM_LUA")
    or ((os.getenv("SMOLVM_BUILD_DIR") or "../../build") .. "/smolvm-lua")
  local SRC = os.getenv("SMOLVM_SOURCE_DIR") or "../.."
  local dir

  local function smolvm(args, prefix)
    local cmd = (prefix or "") .. "env SMOLVM_STATE_DIR=" .. sh_quote(dir .. "/state")
      .. " SMOLVM_IMAGE_DIR=" .. sh_quote(dir .. "/images")
      .. " SMOLVM_TEMPLATE_DIR=" .. sh_quote(dir .. "/templates") .. " "
      .. sh_quote(SMOLVM_LUA) .. " " .. sh_quote(SRC .. "/scripts/smolvm") .. " " .. args
      .. " </dev/null >" .. dir .. "/out 2>" .. dir .. "/err; echo $?"
    local p = assert(io.popen(cmd))
    local rc = tonumber(p:read("*a"):match("(%d+)%s*$"))
    p:close()
    local function slurp(f)
      local fh = io.open(f, "rb")
      local s = fh and fh:read("*a") or ""
      if fh then fh:close() end
      return s
    end
    return slurp(dir .. "/out"), slurp(dir .. "/err"), rc
  end

  local function fake_image(name, manifest)
    os.execute("mkdir -p " .. sh_quote(dir .. "/images/" .. name))
    h.write(dir .. "/images/" .. name .. "/manifest.json", manifest)
    h.write(dir .. "/images/" .. name .. "/vmlinux", "k")
    h.write(dir .. "/images/" .. name .. "/rootfs.ext4", string.rep("r", 8192))
  end

  before_each(function()
    if not h.exists(SMOLVM_LUA) then pending("smolvm-lua is not built") end
    dir = h.mktemp_dir()
  end)
  after_each(function() if dir then h.rm_rf(dir) end end)

  it("lists images, as a table and as JSON", function()
    local out, err, rc = smolvm("image ls")
    assert.equal(0, rc, err)
    assert.equal("NAME   BUILT   SIZE   AGENT   PACKAGES\n", out)
    fake_image("tools", '{"built": "2026-01-02T03:04:05Z", "agent": "1", "extra_packages": ["git", "jq"]}')
    fake_image("default", '{"built": "2026-01-01T00:00:00Z"}')
    out, err, rc = smolvm("image ls")
    assert.equal(0, rc, err)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal(3, #lines, out)
    assert.truthy(lines[2]:match("^default%s+2026%-01%-01T00:00:00Z%s+%d+ KiB%s+no%s+%-$"), lines[2])
    assert.truthy(lines[3]:match("^tools%s+2026%-01%-02T03:04:05Z%s+%d+ KiB%s+yes%s+git,jq$"), lines[3])
    out, err, rc = smolvm("image ls --json")
    assert.equal(0, rc, err)
    local list = require("smolvm.core").json_decode(out)
    assert.equal(2, #list)
    assert.equal("tools", list[2].name)
    assert.same({ "git", "jq" }, list[2].extra_packages)
    assert.is_true(list[2].agent)
    assert.truthy(out:find('"extra_packages":[]', 1, true), out) -- an array, also when empty
    out = smolvm("image ls -q")
    assert.equal("default\ntools\n", out)
  end)

  it("refuses bad names and packages before anything runs", function()
    local _, err, rc = smolvm("image build Foo")
    assert.equal(2, rc)
    assert.truthy(err:find("invalid image name 'Foo'", 1, true), err)
    _, err, rc = smolvm("image build templates")
    assert.equal(2, rc)
    assert.truthy(err:find("'templates' is reserved", 1, true), err)
    _, err, rc = smolvm("image build tools --packages jq,Jq")
    assert.equal(2, rc)
    assert.truthy(err:find("--packages: invalid Debian package name 'Jq'", 1, true), err)
    _, err, rc = smolvm("image frobnicate")
    assert.equal(2, rc)
    assert.truthy(err:find("unknown image command 'frobnicate'", 1, true), err)
    assert.is_false(h.exists(dir .. "/images"))
  end)

  it("--dry-run says a build is due and builds nothing", function()
    local _, err, rc = smolvm("image build tools --packages jq --dry-run")
    assert.equal(1, rc, err)
    assert.truthy(err:find("image 'tools' would be built (extra packages: jq): not built yet", 1, true), err)
    assert.is_false(h.exists(dir .. "/images"))
  end)

  it("removes an image, refusing 'default' without --force and images templates use", function()
    fake_image("tools", "{}")
    fake_image("default", "{}")
    os.execute("mkdir -p " .. sh_quote(dir .. "/templates/t1"))
    h.write(dir .. "/templates/t1/template.json", '{"image": "tools"}')
    local _, err, rc = smolvm("image rm default")
    assert.equal(1, rc)
    assert.truthy(err:find("image 'default' is the one every sandbox without an image option boots", 1, true), err)
    assert.truthy(h.exists(dir .. "/images/default/rootfs.ext4"))
    _, err, rc = smolvm("image rm tools")
    assert.equal(1, rc)
    assert.truthy(err:find("image 'tools' is in use by template 't1'", 1, true), err)
    assert.truthy(h.exists(dir .. "/images/tools/rootfs.ext4"))
    h.rm_rf(dir .. "/templates/t1")
    local out
    out, err, rc = smolvm("image rm tools")
    assert.equal(0, rc, err)
    assert.equal("tools\n", out)
    assert.is_false(h.exists(dir .. "/images/tools"))
    out, err, rc = smolvm("image rm --force default")
    assert.equal(0, rc, err)
    assert.is_false(h.exists(dir .. "/images/default"))
    _, err, rc = smolvm("image rm tools")
    assert.equal(1, rc)
    assert.truthy(err:find("no image 'tools'", 1, true), err)
  end)

  it("smolvm-lua --check asks about the image and leaves no trace", function()
    local recipe = dir .. "/r.lua"
    h.write(recipe, 'image "tools" { packages = { "jq" } }\nsandbox "a" { image = "tools" }\n')
    local cmd = "env SMOLVM_STATE_DIR=" .. sh_quote(dir .. "/state") .. " SMOLVM_IMAGE_DIR="
      .. sh_quote(dir .. "/images") .. " " .. sh_quote(SMOLVM_LUA) .. " --check " .. sh_quote(recipe)
      .. " 2>&1; echo \"__status=$?\""
    local p = assert(io.popen(cmd))
    local out = p:read("*a")
    p:close()
    assert.truthy(out:find("__status=0", 1, true), out)
    assert.truthy(out:find("image tools      packages jq: would be built (not built yet)", 1, true), out)
    assert.is_false(h.exists(dir .. "/state"))
    assert.is_false(h.exists(dir .. "/images"))
  end)

  it("says building needs root, with the command to run", function()
    local p = io.popen("id -u; command -v setpriv")
    local who = p:read("*a")
    p:close()
    if not who:match("^0\n/") then
      pending("needs root and setpriv to run as another user")
      return
    end
    os.execute("chmod 0777 " .. sh_quote(dir))
    local _, err, rc = smolvm("image build tools --packages jq",
      "setpriv --reuid=65534 --regid=65534 --clear-groups ")
    assert.equal(1, rc, err)
    assert.truthy(err:find("build image 'tools': building needs root", 1, true), err)
    assert.truthy(err:find("sudo env SMOLVM_IMAGE_DIR='" .. dir .. "/images'", 1, true), err)
    assert.truthy(err:find("--packages jq tools", 1, true), err)
    assert.is_false(h.exists(dir .. "/images/tools"))
  end)
end)
