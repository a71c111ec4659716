-- SPDX-License-Identifier: MIT
-- An image built for real from a recipe, as a user would: `image "t-img-PID" {
-- packages = { "jq" } }` and a sandbox on it. The first run builds it (the kernel from
-- the build cache) and jq answers in the guest; the second run finds it up to date
-- (manifest untouched, says so, seconds); `smolvm image rm` refuses while a VM uses it,
-- then removes it. Run by tests/integration/image-test.sh (root, temporary state,
-- image and template directories, removed afterwards whatever happens).
local smolvm = require "smolvm"
local h = require "helpers"
local LUA, q = h.LUA, h.quote
local SRC = assert(os.getenv("SMOLVM_SOURCE_DIR"))
local IMAGES = assert(os.getenv("SMOLVM_IMAGE_DIR"), "SMOLVM_IMAGE_DIR (set by image-test.sh)")

local function pid()
  local f = assert(io.open("/proc/self/stat"))
  local p = f:read("*l"):match("^(%d+)")
  f:close()
  return p
end

local name = "t-img-" .. pid()
local namep = name:gsub("%-", "%%-") -- as a Lua pattern
local box = name .. "-box"
local dir = IMAGES .. "/" .. name

-- Run a command; its stdout+stderr, exit status and wall time.
local clock = require("smolvm.sys").now
local function run(cmd)
  local t0 = clock()
  local p = assert(io.popen(cmd .. " 2>&1; echo \"__status=$?\""))
  local out = p:read("a")
  p:close()
  local status = tonumber(out:match("__status=(%d+)%s*$"))
  return out:gsub("__status=%d+%s*$", ""), status, clock() - t0
end

local function manifest()
  local text = h.readfile(dir .. "/manifest.json")
  return text and require("smolvm.core").json_decode(text)
end

local function is_file(p)
  local _, code = h.sh("test -f " .. q(p))
  return code == 0
end

local function smolvm_cmd(args)
  return run(q(LUA) .. " " .. q(SRC .. "/scripts/smolvm") .. " " .. args)
end

describe("an image from a recipe", function()
  local recipe = h.tmpfile(([[
image %q { packages = { "jq" } }
sandbox %q {
  image = %q, network = "none", memory = 256, vcpus = 1,
  steps = {
    { run = "jq --version", expect = { stdout = "jq-1." } },
    { run = "echo '{\"a\": 41}' | jq .a+1", expect = { stdout = "42" } },
  },
}
]]):format(name, box, name))
  local vm

  lazy_teardown(function()
    os.remove(recipe)
    if vm then pcall(vm.delete, vm) end
    local left = smolvm.VM.from_id(box)
    if left then pcall(left.delete, left) end
    h.sh("rm -rf " .. q(dir))
    -- build-rootfs.sh's log of this image, in the build scripts' cache
    local cache = (os.getenv("XDG_CACHE_HOME") or (os.getenv("HOME") .. "/.cache")) .. "/smolvm/build"
    os.remove(cache .. "/rootfs-" .. name .. ".log")
  end)

  local first
  it("is built on the first run, and the sandbox on it has jq", function()
    local out, status, secs = run(q(LUA) .. " " .. q(recipe))
    assert.equal(0, status, out)
    -- the build's progress, live and prefixed, then the result
    assert.truthy(out:find("[image " .. name .. "] [", 1, true), out)
    assert.truthy(out:find("[image " .. name .. "] build-rootfs: ", 1, true), out)
    assert.truthy(out:find("[image " .. name .. "] built ", 1, true), out)
    assert.truthy(out:find("[" .. box .. "] step 2/2", 1, true), out)
    first = manifest()
    assert.is_table(first, "no manifest in " .. dir)
    assert.same({ "jq" }, first.extra_packages)
    assert.is_string(first.packages.jq)
    assert.is_string(first.built)
    io.stderr:write(("\n  first run (build + boot + steps): %.1f s\n"):format(secs))
    -- smolvm image ls shows it, with its package and the agent
    local ls = smolvm_cmd("image ls")
    assert.truthy(ls:find(namep .. "%s+%S+%s+%d+ MiB%s+yes%s+jq\n"), ls)
  end)

  it("is up to date on the second run: not rebuilt, and says so", function()
    assert.is_table(first, "the first run did not build it")
    local st0 = (h.sh("stat -c %i " .. q(dir)))
    local out, status, secs = run(q(LUA) .. " " .. q(recipe))
    assert.equal(0, status, out)
    assert.truthy(out:find("image '" .. name .. "' is up to date", 1, true), out)
    local check = tonumber(out:match("%[image " .. namep .. "%] up to date ([%d.]+)s"))
    assert.is_number(check, out)
    assert.truthy(check < 10, "the up-to-date check took " .. check .. " s")
    assert.falsy(out:find("build-rootfs", 1, true), out)
    assert.equal(first.built, manifest().built)
    assert.equal(st0, (h.sh("stat -c %i " .. q(dir))))
    io.stderr:write(("  second run (up-to-date check %.2f s + boot + steps): %.1f s\n"):format(check, secs))
  end)

  it("is not removed while a VM uses it, then is", function()
    assert.is_table(first, "the first run did not build it")
    vm = assert(smolvm.VM{ id = box, image = name, network = "none", memory = 256 })
    local out, status = smolvm_cmd("image rm " .. name)
    assert.equal(1, status, out)
    assert.truthy(out:find("image '" .. name .. "' is in use by VM '" .. box .. "'", 1, true), out)
    assert.is_true(is_file(dir .. "/rootfs.ext4"))
    assert.is_table(manifest())
    assert(vm:delete())
    vm = nil
    out, status = smolvm_cmd("image rm " .. name)
    assert.equal(0, status, out)
    local _, code = h.sh("test -e " .. q(dir))
    assert.are_not.equal(0, code, dir .. " is still there")
    out = smolvm_cmd("image ls -q")
    assert.falsy(out:find(name, 1, true), out)
  end)
end)
