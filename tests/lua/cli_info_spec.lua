-- SPDX-License-Identifier: MIT
-- The `smolvm` command reads vm:info() by the documented field names only
-- (smolvm.cli.INFO_FIELDS): each must be in the info of a real VM (created, not
-- started: no guest boots). And `smolvm ls` shows real ages (fmt_age itself: cli_spec). Skipped (77) when this
-- host has no guest image to create a VM from.
local h = require "helpers"
local cli = require "smolvm.cli"

local SMOLVM_LUA = os.getenv("SMOLVM_LUA")
  or ((os.getenv("SMOLVM_BUILD_DIR") or "../../build") .. "/smolvm-lua")
local SRC = os.getenv("SMOLVM_SOURCE_DIR") or "../.."

-- In a child with its own state dir: create one VM per network mode (kept, so it
-- outlives the child) and print "NETWORK FIELD present|absent" for every field.
local PROBE = [[
local smolvm = require "smolvm"
local cli = require "smolvm.cli"
for _, net in ipairs({ "none", "user" }) do
  local vm, err, code = smolvm.VM{ id = "info-" .. net, network = net, memory = 256 }
  if not vm then print("CREATE", tostring(code), tostring(err)) os.exit(3) end
  vm:keep()
  local info = assert(vm:info())
  for _, f in ipairs(cli.INFO_FIELDS) do
    local name = type(f) == "table" and f[1] or f
    local v = info
    for part in name:gmatch("[^.]+") do v = type(v) == "table" and v[part] or nil end
    print(net, name, v ~= nil and "present" or "absent")
  end
end
]]

local state = h.mktemp_dir()
local probe, rc = h.child(state, PROBE)
if rc ~= 0 then
  h.rm_rf(state)
  local code, why = probe:match("CREATE%s+(%S+)%s+([^\n]*)")
  if code == "EHOST" then
    io.stderr:write("SKIP: cannot create a VM here: ", why, "\n")
    os.exit(77)
  end
  error("probe failed (" .. tostring(rc) .. "):\n" .. probe)
end

local function smolvm_cmd(args)
  local p = assert(io.popen("SMOLVM_STATE_DIR=" .. h.quote(state) .. " " .. h.quote(SMOLVM_LUA)
    .. " " .. h.quote(SRC .. "/scripts/smolvm") .. " " .. args .. " 2>&1"))
  local out = p:read("*a")
  p:close()
  return out
end

describe("smolvm command and vm:info()", function()
  teardown(function()
    smolvm_cmd("rm -f info-none info-user")
    h.rm_rf(state)
  end)

  it("finds every field it reads in a real info()", function()
    for _, f in ipairs(cli.INFO_FIELDS) do
      local name = type(f) == "table" and f[1] or f
      local nets = type(f) == "table" and f.networks or { "none", "user" }
      for _, net in ipairs(nets) do
        if net ~= "nat" then
          assert.truthy(probe:find(net .. "\t" .. name .. "\tpresent", 1, true),
            name .. " missing from info() of a network = \"" .. net .. "\" VM:\n" .. probe)
        end
      end
    end
  end)

  it("lists real ages (created_at is milliseconds)", function()
    local out = smolvm_cmd("ls")
    assert.truthy(out:find("info%-none%s.-%d+s ago"), out)
    -- Make one of them two hours older, as the store keeps it.
    local db = state .. "/smolvm.db"
    assert.truthy(os.execute("sqlite3 " .. h.quote(db) .. " \"UPDATE vms SET created_at ="
      .. " created_at - 7200000 WHERE id = 'info-user'\""))
    out = smolvm_cmd("ls")
    assert.truthy(out:find("info%-user%s[^\n]*2h ago"), out)
    assert.truthy(out:find("info%-none%s[^\n]*%ds ago"), out)
    assert.truthy(out:find("127%.0%.0%.1:%d+%->22") == nil, "ssh port shown as a forward:\n" .. out)
  end)
end)
