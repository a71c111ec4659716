-- SPDX-License-Identifier: MIT
--- smolvm: hardware-isolated microVM sandboxes from Lua.
--
--   local smolvm = require "smolvm"
--   local vm = assert(smolvm.VM{ memory = 512 })
--   assert(vm:start())
--   local r = assert(vm:run("echo hi"))
--
-- The public contract is in docs/lua-api.md. Conventions: wrong argument types and
-- out-of-range options raise an error naming the field; operational failures return
-- nil, message, code (code a stable string such as "ENOENT", "ETIMEDOUT", "EVMM").
--
-- Pure Lua for 5.1/LuaJIT and 5.4; the C part is smolvm.core.

local core = require "smolvm.core"
local vm = require "smolvm.vm"
local schema = require "smolvm.schema"
local image = require "smolvm.image"
local sys = require "smolvm.sys"

local M = {}

M.VERSION = core.VERSION
M.VM = vm.VM
M.with = vm.with

------------------------------------------------------------------------ Store

--- smolvm.Store([path]) -> store | nil, msg, code
-- path nil: the default state database ($SMOLVM_STATE_DIR/smolvm.db, else
-- $XDG_STATE_HOME/smolvm/smolvm.db, else ~/.local/state/smolvm/smolvm.db), created
-- with its directory when absent. A file that is not a smolvm database (or is damaged)
-- gives nil, message, "EDB" and is left untouched.
-- Methods: store:list(), store:get(id), store:path(), store:leases(),
-- store:forwards(), store:close() (also __close/__gc).
function M.Store(path)
  if path ~= nil and (type(path) ~= "string" or path == "") then
    error("Store: path: expected non-empty string or nil, got " .. schema.describe(path), 2)
  end
  return core.store_open(path)
end

------------------------------------------------------------------------ Net

local Net = {}
local Net_mt = { __index = Net, __name = "smolvm.net" }

local function net_store(self)
  local s = type(self) == "table" and rawget(self, "_store")
  if not s then error("bad self: expected a smolvm Net object (use net:method())", 3) end
  return s
end

--- net:leases() -> { { vm_id=, ip=, ... }, ... } | nil, msg, code
function Net.leases(self) return net_store(self):leases() end
--- net:forwards() -> { { vm_id=, host_address=, host_port=, guest_port=, ... }, ... }
function Net.forwards(self) return net_store(self):forwards() end
function Net.close(self) return net_store(self):close() end
Net_mt.__close = function(self) pcall(Net.close, self) end

--- smolvm.Net() -> net | nil, msg, code: the network state (IP leases, port forwards)
-- of the default state database.
function M.Net()
  local s, msg, code = core.store_open(nil)
  if not s then return nil, msg, code end
  return setmetatable({ _store = s }, Net_mt)
end

------------------------------------------------------------------------ host

--- smolvm.firecracker_download([dest_dir]) -> path | nil, msg, code
--- Downloads the pinned firecracker release, checks its sha256 and installs it where
--- the backend looks (or into dest_dir). Blocks for the download (up to 5 minutes).
function M.firecracker_download(dest_dir)
  return core.firecracker_download(dest_dir)
end

--- smolvm.doctor() -> { { name=, ok=, detail=, hint= }, ... } | nil, msg, code
function M.doctor()
  return core.doctor()
end

------------------------------------------------------------------------ context

local function check_quota(name, v)
  if v == nil then return end
  if type(v) ~= "number" or v ~= v or v < 0 or v % 1 ~= 0 or v > 2 ^ 40 then
    error("configure: " .. name .. ": expected integer >= 0 (0: no limit), got "
      .. schema.describe(v), 3)
  end
end

-- What configure set so far: each call changes only the fields it names.
local config = {}

--- smolvm.configure{ max_vms=, max_memory_mib=, log= } -> true
-- Options of the state's context from now on (VMs already open keep theirs); a field
-- left out keeps its current value:
--   max_vms, max_memory_mib: host-wide quotas over every VM of the state directory
--     (0: $SMOLVM_MAX_VMS / $SMOLVM_MAX_MEMORY_MIB, else none); creating a VM past one
--     fails with nil, message, "ENOSPC", the message naming the quota and its use;
--   log: function(level, message) called with the library's warnings and errors
--     ("warn", "error") after the call that logged them, e.g. the first start under TCG
--     of a state directory saying that software emulation is not a hardware security
--     boundary; false: no more.
-- Unknown fields and wrong types raise.
function M.configure(opts)
  if type(opts) ~= "table" then
    error("configure: expected table of options, got " .. schema.describe(opts), 2)
  end
  local known = { "max_vms", "max_memory_mib", "log" }
  for k in pairs(opts) do
    local found = false
    for _, n in ipairs(known) do found = found or k == n end
    if not found then
      local s = type(k) == "string" and schema.suggest(k, known) or nil
      error("configure: " .. tostring(k) .. ": unknown option"
        .. (s and (" (did you mean \"" .. s .. "\"?)") or ""), 2)
    end
  end
  check_quota("max_vms", opts.max_vms)
  check_quota("max_memory_mib", opts.max_memory_mib)
  if opts.log ~= nil and opts.log ~= false and type(opts.log) ~= "function" then
    error("configure: log: expected function(level, message) or false, got "
      .. schema.describe(opts.log), 2)
  end
  for _, k in ipairs(known) do
    if opts[k] ~= nil then config[k] = opts[k] end
  end
  if config.log == false then config.log = nil end
  vm.set_log_handler(config.log)
  return core.configure{ max_vms = config.max_vms, max_memory_mib = config.max_memory_mib,
                         log = config.log ~= nil }
end

--- smolvm.usage() -> { vms=, memory_mib=, max_vms=, max_memory_mib= } | nil, msg, code
-- What the state directory holds against its quotas (a quota of 0: none).
function M.usage()
  return core.usage()
end

--- smolvm.reconcile() -> number of VMs whose state changed | nil, msg, code
function M.reconcile()
  return core.reconcile()
end

------------------------------------------------------------------------ images

--- smolvm.images() -> { { name=, built=, size=, agent=, extra_packages=, ... }, ... }
--- smolvm.image_build(name, { packages=, force=, dry_run=, timeout=, on_line= })
---   -> "built" | "up-to-date" | "out-of-date" (dry_run) | nil, msg, code
--- smolvm.image_delete(name, { force= }) -> true | nil, msg, code
-- See lua/smolvm/image.lua and docs/image.md.
M.images = image.list
M.image_build = image.build
M.image_delete = image.remove

--- smolvm.list() is VM.list(): every VM's info.
M.list = vm.VM.list

--- smolvm.paths() -> { state_dir=, image_dir=, template_dir=, db= } | nil, msg, code:
-- the directories of this process's context (made, with its database, if need be).
function M.paths()
  return core.paths()
end

--- smolvm.default_paths() -> { image_dir=, template_dir= } | nil, msg, code: where a
-- context would look, without making one (nothing is created).
function M.default_paths()
  return core.default_paths()
end

------------------------------------------------------------------------ templates

--- smolvm.templates() -> { { name=, image=, memory=, vcpus=, created_at=, source_vm=,
--- ephemeral=, disk_bytes=, stale=, recipe= }, ... } | nil, msg, code
-- created_at: wall-clock milliseconds. stale: nil, or why clones of it are refused now
-- (its image was rebuilt). ephemeral: made by vm:fork, removed with its last clone.
-- recipe: for a template made by a recipe's template block, its record (recipe.json
-- in the template's directory): { definition = sha256 of the block, image = { name=,
-- built=, inputs_hash= } }; nil otherwise.
function M.templates()
  local list, msg, code = core.templates()
  if not list then return nil, msg, code end
  local paths = core.paths()
  for _, t in ipairs(list) do
    t.created_at, t.created_at_ms = t.created_at_ms, nil
    local rec = paths and sys.read_json(paths.template_dir .. "/" .. t.name .. "/recipe.json")
    if rec and type(rec.definition) == "string" then
      local img = type(rec.image) == "table" and rec.image or {}
      local function s(v) return type(v) == "string" and v or nil end
      t.recipe = { definition = rec.definition,
                   image = { name = s(img.name), built = s(img.built), inputs_hash = s(img.inputs_hash) } }
    end
  end
  return list
end

--- smolvm.template_delete(name) -> true | nil, msg, code. Refused ("ESTATE", the users
--- named) while a VM or another template is made from it.
function M.template_delete(name)
  if not schema.valid_id(name) then
    error("template_delete: name: expected string matching " .. schema.ID_DESC .. ", got "
          .. schema.describe(name), 2)
  end
  return core.template_delete(name)
end

return M
