-- SPDX-License-Identifier: MIT
-- The imperative API: boot a sandbox, run a command, print 42.
--   smolvm-lua examples/hello.lua
local smolvm = require "smolvm"

local vm = assert(smolvm.VM{ memory = 512, network = "user" })
local ok, err = vm:start()
if not ok then
  vm:delete()
  error(err)
end
local r = assert(vm:run("python3 -c 'print(6*7)'"))
io.write(r.stdout)
vm:stop()
vm:delete()
os.exit(r.stdout == "42\n" and 0 or 1)
