-- SPDX-License-Identifier: MIT
-- disk = "shared" boots the base image itself: the guest gets it read-only, so no
-- write of an untrusted guest persists into later sandboxes or corrupts the overlays
-- that use it as backing file (issue 17, M6). The base is a copy of the image, so
-- the test cannot damage the host's. Run by run-spec.sh (skips without an image).
local core = require "smolvm.core"

local h = require "helpers"
local sh, quote, tmpfile = h.sh, h.quote, h.tmpfile

describe('disk = "shared"', function()
  local images, name = nil, "default"

  lazy_setup(function()
    local paths = assert(core.paths())
    local src = paths.image_dir .. "/" .. name
    images = assert(sh("mktemp -d /tmp/smolvm-shared.XXXXXX")):gsub("%s+$", "")
    local out, code = sh(("mkdir %s && cp --sparse=always %s/vmlinux %s/rootfs.ext4 "
      .. "%s/manifest.json %s/ && cd %s && sha256sum rootfs.ext4 > ../rootfs.sum")
      :format(quote(images .. "/" .. name), quote(src), quote(src), quote(src),
        quote(images .. "/" .. name), quote(images .. "/" .. name)))
    assert(code == 0, out)
  end)

  lazy_teardown(function()
    if images then sh("rm -rf " .. quote(images)) end
  end)

  it("gives the base image to the guest read-only, and it is unchanged after", function()
    local script = tmpfile(([[
      local smolvm = require "smolvm"
      local vm = assert(smolvm.VM{ memory = 256, vcpus = 1, disk = "shared",
                                   network = "none" })
      local ok, err = vm:start{ timeout = %d }
      if not ok then vm:delete() error(err) end
      local r = assert(vm:run("touch /probe; echo rc=$?; grep ' / ' /proc/mounts; "
        .. "dd if=/dev/zero of=/dev/vda bs=4096 count=1 conv=notrunc 2>&1 | tail -1; "
        .. "echo hi > /tmp/t && cat /tmp/t"))
      vm:delete()
      io.write(r.stdout, r.stderr)
    ]]):format(h.BOOT))
    local out, code = sh(("SMOLVM_IMAGE_DIR=%s %s %s"):format(quote(images), quote(h.LUA),
      quote(script)))
    os.remove(script)
    assert.are.equal(0, code, out)
    assert.truthy(out:find("rc=1", 1, true), out)
    assert.truthy(out:find("Read-only file system", 1, true), out)
    assert.truthy(out:match("/dev/root / ext4 ro[,%s]"), out)
    assert.truthy(out:find("\nhi\n", 1, true), out) -- tmpfs stays writable
    -- Not one byte of the base changed (the write to the raw device included).
    local sum, scode = sh(("cd %s && sha256sum -c ../rootfs.sum"):format(quote(images .. "/" .. name)))
    assert.are.equal(0, scode, sum)
  end)
end)
