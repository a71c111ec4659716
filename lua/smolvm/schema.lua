-- SPDX-License-Identifier: MIT
--- The one schema for VM options and recipes (Recipe format 1).
--
-- Every field is declared once below, with its type, range or choices, default and
-- description. The same tables drive validation (`validate_vm`, `validate_recipe`),
-- defaults (filled in the normalized result) and the generated reference
-- `docs/recipes.md` (scripts/gen-recipe-docs.lua). Change a field here and regenerate.
--
-- Validation never stops at the first mistake: it returns every error, each one a
-- string "<path>: <what was expected>, got <what was found>", e.g.
--   memory: expected integer 128..16384, got string "lots"
--   steps[3].expect.exit: expected integer 0..255, got string "0"
--   memroy: unknown field (did you mean "memory"?)
--
-- Pure Lua for 5.1/LuaJIT and 5.4. The enum choices and the C library's limits come
-- from the binding (smolvm.core.constants), never copied here by hand.

local core = require("smolvm.core")
local C = core.constants

local M = {}

M.ID_PATTERN = "^[a-z0-9][a-z0-9_-]*$"   -- plus length 1..63, see check_id
M.ID_DESC = "[a-z0-9][a-z0-9_-]{0,62}"
M.ENV_NAME_PATTERN = "^[A-Za-z_][A-Za-z0-9_]*$"

M.LIMITS = {
  forwards = C.limits.forwards,
  env = C.limits.env,
  files = 1024,
  steps = 1000,
  sandboxes = 64,
  templates = 64,
  string = 1024 * 1024, -- a command, a name or a path
  content = 64 * 1024 * 1024,
  timeout = 24 * 3600,
}

M.DEFAULT_STEP_TIMEOUT = 600

------------------------------------------------------------------------ type nodes
-- A node describes one value. `kind` is one of: string, integer, number, boolean,
-- enum, list, map, record, env_value, step, steps. Fields of a record are an ordered
-- list of { name=, node=, default=, desc= } so documentation keeps their order.

local function field(name, node, default, desc, extra)
  local f = { name = name, node = node, default = default, desc = desc }
  for k, v in pairs(extra or {}) do f[k] = v end
  return f
end

local function abs_path(desc)
  return { kind = "string", abs = true, max_len = 4096, desc = desc }
end

local ENV_MAP = {
  kind = "map",
  key = { pattern = M.ENV_NAME_PATTERN, desc = "NAME matching [A-Za-z_][A-Za-z0-9_]*" },
  value = { kind = "env_value" },
  max = M.LIMITS.env,
}

-- The VM's own env goes to the guest's init at boot, which takes printable values
-- only (the C check at create also counts the name in env_entry, L3).
local BOOT_ENV_MAP = {
  kind = "map",
  key = ENV_MAP.key,
  value = { kind = "env_value", printable = true, max_len = C.limits.env_entry },
  max = M.LIMITS.env,
}

local FORWARD = {
  kind = "record",
  fields = {
    field("host", { kind = "integer", min = 1, max = 65535 }, nil,
          "Host port (required)."),
    field("guest", { kind = "integer", min = 1, max = 65535 }, nil,
          "Guest port (required)."),
    field("address", { kind = "string", ipv4 = true }, nil,
          "Host address to bind (IPv4). Unset: 127.0.0.1."),
  },
  required = { host = true, guest = true },
}

-- "internet" | "none" | { allow = { entry, ... } }; each entry is checked by the C
-- library itself (core.egress_check), so Lua and C accept exactly the same.
local EGRESS = { kind = "egress", max = C.limits.egress_allow }
M.EGRESS = EGRESS

--- VM options: the fields accepted by smolvm.VM{} and by every sandbox.
M.vm_fields = {
  field("id", { kind = "string", id = true }, nil,
        "VM id. Unset: smolvm.VM{} generates \"vm-xxxxxxxx\"; a recipe uses the sandbox name."),
  field("vcpus", { kind = "integer", min = C.limits.vcpus_min, max = C.limits.vcpus_max },
        C.limits.vcpus_default, "Virtual CPUs."),
  field("memory", { kind = "integer", min = C.limits.memory_min, max = C.limits.memory_max },
        C.limits.memory_default, "Guest memory in MiB."),
  field("disk", { kind = "enum", values = C.disk }, C.disk[1],
        "\"isolated\": writes go to a per-VM overlay; \"shared\": boot the base image itself, read-only (writes fail; /tmp and /run are tmpfs)."),
  field("image", { kind = "string", max_len = C.limits.id, pattern = "^[a-z0-9][a-z0-9_-]*$",
                   pattern_desc = "an image name ([a-z0-9][a-z0-9_-]{0,62})" }, "default",
        "Guest image name under the image directory; a recipe's `image \"NAME\" { ... }` declaration is built first."),
  field("backend", { kind = "enum", values = C.backend }, C.backend[1],
        "VMM: \"auto\" picks firecracker when usable, else qemu."),
  field("accel", { kind = "enum", values = C.accel }, C.accel[1],
        "Acceleration: \"auto\" uses KVM when the host really supports it, else TCG."),
  field("network", { kind = "enum", values = C.network }, C.network[1],
        "\"nat\" (own address, egress by policy, masqueraded; TAP + nftables, needs root), \"user\" (rootless; no outbound connections at all, forwards only), \"none\" (no NIC; commands still reach the guest through the agent); \"auto\": nat where it can work (root and an uplink), else user."),
  field("forwards", { kind = "list", items = FORWARD, max = M.LIMITS.forwards, forwards = true },
        nil, "Port forwards { host=, guest=, address= }; at most 64, host ports unique."),
  field("env", BOOT_ENV_MAP, nil,
        "Environment for every command: NAME = string or number (printable, no control characters); at most 256 entries."),
  field("transport", { kind = "enum", values = C.transport }, C.transport[1],
        "How commands and files reach the guest: \"agent\" (our guest agent over a virtio-serial or vsock channel; works with network \"none\"), \"ssh\" (sshd over the network); \"auto\": the agent when the image has it."),
  field("ttl", { kind = "number", gt = 0, max = C.limits.ttl_ms / 1000 }, nil,
        "Seconds after creation at which the sandbox is deleted, running or not."),
  field("labels", { kind = "map", max = C.limits.labels,
                    key = { pattern = "^[%w][%w._/-]*$", desc = "a key of [A-Za-z0-9._/-]" },
                    value = { kind = "string", max_len = C.limits.label, printable = true } }, nil,
        "Labels { key = \"value\" } to find sandboxes by (shown by vm:info() and smolvm ls)."),
  field("egress", EGRESS, nil,
        "What the guest may connect to (network \"nat\"): \"internet\" (public addresses only: private and special ranges and every address of the host refused), \"none\" (no outbound connection; forwards still answer) or { allow = { \"pypi.org\", \"*.pythonhosted.org\", \"198.51.100.0/24\" } } (only those: IPv4 addresses/CIDRs, names, *.suffix or *; a name's addresses for its DNS answer's TTL, at least 30 s, never private ones). Unset: \"internet\" with nat, \"none\" otherwise; user networking takes only \"none\". Change it on a running VM with vm:set_egress()."),
  field("template", { kind = "string", id = true }, nil,
        "Start as a clone of this template (vm:snapshot, a recipe's template block): its memory, devices and disk, with a fresh identity, in a fraction of a boot. The clone has the template's image, vcpus and memory; giving others is an error."),
}

local EXPECT = {
  kind = "record",
  fields = {
    field("exit", { kind = "integer", min = 0, max = 255 }, 0, "Expected exit status."),
    field("stdout", { kind = "string", max_len = M.LIMITS.string }, nil,
          "Substring (plain text) stdout must contain."),
    field("stderr", { kind = "string", max_len = M.LIMITS.string }, nil,
          "Substring (plain text) stderr must contain."),
  },
}

local function transfer(from_node, from_desc, to_node, to_desc)
  return {
    kind = "record",
    fields = { field("from", from_node, nil, from_desc), field("to", to_node, nil, to_desc) },
    required = { from = true, to = true },
  }
end
local HOST_PATH = { kind = "string", nonempty = true, max_len = 4096 }

--- Step kinds. A step is a string (short for { run = "..." }) or a table with exactly
--- one of the keys below.
M.step_kinds = {
  {
    name = "run",
    desc = "Run a shell command (/bin/sh -c) in the guest.",
    fields = {
      field("run", { kind = "string", nonempty = true, max_len = M.LIMITS.string }, nil,
            "The command."),
      field("expect", EXPECT, nil,
            "What the command must do. Unset: exit status 0."),
      field("timeout", { kind = "number", gt = 0, max = M.LIMITS.timeout }, M.DEFAULT_STEP_TIMEOUT,
            "Seconds before the command is killed and the step fails."),
      field("background", { kind = "boolean" }, false,
            "Start detached (nohup ... &, output in /tmp/smolvm-bg-N.log) and go on; cannot have expect."),
      field("env", ENV_MAP, nil, "Extra environment for this command."),
      field("cwd", abs_path(), nil, "Working directory (absolute guest path). Unset: root's home."),
    },
  },
  {
    name = "upload",
    desc = "Copy a host file into the guest: { upload = { from = host path, to = guest path } }.",
    node = transfer(HOST_PATH, "Host file (relative paths: to the recipe's directory).",
                    abs_path(), "Guest path (absolute)."),
  },
  {
    name = "download",
    desc = "Copy a guest file to the host: { download = { from = guest path, to = host path } }.",
    node = transfer(abs_path(), "Guest file (absolute path).",
                    HOST_PATH, "Host path (relative paths: to the recipe's directory)."),
  },
  {
    name = "write",
    desc = "Write a guest file: { write = { path = guest path, content = string } }.",
    node = {
      kind = "record",
      fields = {
        field("path", abs_path(), nil, "Guest path (absolute)."),
        field("content", { kind = "string", max_len = M.LIMITS.content }, nil, "File content."),
      },
      required = { path = true, content = true },
    },
  },
}

--- Recipe-only fields of a sandbox, after the VM options.
M.recipe_fields = {
  field("files", { kind = "map", key = { abs = true, desc = "absolute guest path" },
                   value = { kind = "string", max_len = M.LIMITS.content },
                   max = M.LIMITS.files }, nil,
        "Guest files written before the first step: [\"/abs/path\"] = content."),
  field("steps", { kind = "steps", max = M.LIMITS.steps }, nil,
        "Steps run in order; a step that misses its expectation stops the sandbox."),
  field("keep", { kind = "boolean" }, false,
        "Keep the sandbox (running) when the recipe ends instead of deleting it."),
}

--- Image declarations: `image "name" { packages = { ... } }` (scripts/build-image.sh).
M.IMAGE_RESERVED = { templates = true }
M.PACKAGE_PATTERN = "^[a-z0-9][a-z0-9+.%-]+$"
M.PACKAGE_DESC = "a Debian package name ([a-z0-9][a-z0-9+.-]+)"
M.DEFAULT_PACKAGES = "openssh-server, python3, python3-pip, ca-certificates, iproute2, curl"

M.image_fields = {
  field("packages", { kind = "list", max = C.limits.image_packages,
                      items = { kind = "string", max_len = C.limits.package_name,
                                pattern = M.PACKAGE_PATTERN, pattern_desc = M.PACKAGE_DESC } },
        nil, "Debian packages installed on top of the default set (" .. M.DEFAULT_PACKAGES
          .. " and their dependencies); order and duplicates do not matter."),
}

--- Template declarations: `template "name" { image =, memory =, steps = { ... } }`,
--- booted once, its steps run, then snapshotted as template "name" (docs/templates.md).
local function with_desc(list, name, desc, default)
  for _, f in ipairs(list) do
    if f.name == name then
      return field(name, f.node, default == nil and f.default or default, desc or f.desc)
    end
  end
  error("schema: no field " .. name)
end

M.template_fields = {
  with_desc(M.vm_fields, "image", "Guest image the template boots (a recipe's `image \"NAME\"` block is built first); its clones have it too."),
  with_desc(M.vm_fields, "vcpus", "Virtual CPUs of the template and of every clone."),
  with_desc(M.vm_fields, "memory", "Guest memory in MiB of the template and of every clone."),
  with_desc(M.vm_fields, "network", "Network of the template; its clones have the same kind (\"auto\": resolved when the template is made)."),
  with_desc(M.vm_fields, "env", "Environment for the template's steps (a sandbox made from it sets its own)."),
  with_desc(M.recipe_fields, "files", "Guest files written before the first step; they are in every clone."),
  with_desc(M.recipe_fields, "steps", "Steps run once, before the snapshot; what they leave running (background steps) runs on in every clone."),
}

------------------------------------------------------------------------ helpers

local function is_integer(x)
  return type(x) == "number" and x == x and x ~= math.huge and x ~= -math.huge
    and x == math.floor(x)
end
M.is_integer = is_integer

local function to_integer(x)
  if math.tointeger then return math.tointeger(x) or x end
  return x
end

local function num_str(x)
  if is_integer(x) and math.abs(x) < 2^53 then return string.format("%d", x) end
  return string.format("%.14g", x)
end
M.num_str = num_str

local function quote(s)
  if #s > 60 then s = s:sub(1, 57) .. "..." end
  return (string.format("%q", s):gsub("\\\n", "\\n"))
end
M.quote = quote

--- How a found value is shown in messages: `string "lots"`, `number 1.5`, `table`.
function M.describe(v)
  local t = type(v)
  if t == "string" then return "string " .. quote(v)
  elseif t == "number" then
    return (is_integer(v) and "integer " or "number ") .. num_str(v)
  elseif t == "boolean" then return "boolean " .. tostring(v)
  elseif t == "nil" then return "nothing"
  end
  return t
end

-- Edit distance counting a swap of two neighbours as one edit (optimal string
-- alignment), so "rnu" is one edit from "run".
local function levenshtein(a, b)
  local la, lb = #a, #b
  if la == 0 then return lb end
  if lb == 0 then return la end
  local d = {}
  for i = 0, la do d[i] = { [0] = i } end
  for j = 0, lb do d[0][j] = j end
  for i = 1, la do
    for j = 1, lb do
      local cost = (a:byte(i) == b:byte(j)) and 0 or 1
      local v = math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
      if i > 1 and j > 1 and a:byte(i) == b:byte(j - 1) and a:byte(i - 1) == b:byte(j) then
        v = math.min(v, d[i - 2][j - 2] + 1)
      end
      d[i][j] = v
    end
  end
  return d[la][lb]
end
M.levenshtein = levenshtein

--- The closest known name to `name`, or nil when nothing is close enough.
function M.suggest(name, known)
  if type(name) ~= "string" then return nil end
  local best, bestd
  local lname = name:lower()
  for _, k in ipairs(known) do
    local d = levenshtein(lname, k:lower())
    if k:lower() == lname then d = 0 end
    local limit = (#k <= 3) and 1 or 2
    if (d <= limit or (#lname >= 3 and k:sub(1, #lname) == lname))
       and (not bestd or d < bestd) then
      best, bestd = k, d
    end
  end
  return best
end

local function is_ident(s)
  return type(s) == "string" and s:match("^[A-Za-z_][A-Za-z0-9_]*$") ~= nil
end

local function join(path, key)
  if type(key) == "number" then return path .. "[" .. num_str(key) .. "]" end
  if is_ident(key) then
    return path == "" and key or (path .. "." .. key)
  end
  return path .. "[" .. quote(tostring(key)) .. "]"
end
M.join = join

local function add(errs, path, msg)
  errs[#errs + 1] = (path ~= "" and (path .. ": ") or "") .. msg
end

local function expected(errs, path, what, v)
  add(errs, path, "expected " .. what .. ", got " .. M.describe(v))
end

local function valid_id(s)
  return type(s) == "string" and #s >= 1 and #s <= 63 and s:match(M.ID_PATTERN) ~= nil
end
M.valid_id = valid_id

local function valid_ipv4(s)
  local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return false end
  for _, p in ipairs({ a, b, c, d }) do
    if #p > 3 or tonumber(p) > 255 or (#p > 1 and p:sub(1, 1) == "0") then return false end
  end
  return true
end
M.valid_ipv4 = valid_ipv4

--- Human description of what a node accepts (used in messages and in the docs).
function M.expect_desc(node)
  local k = node.kind
  if k == "integer" then
    if node.min and node.max then return "integer " .. num_str(node.min) .. ".." .. num_str(node.max) end
    return "integer"
  elseif k == "number" then
    if node.gt then return "number > " .. num_str(node.gt) .. (node.max and (" and <= " .. num_str(node.max)) or "") end
    return "number"
  elseif k == "boolean" then return "boolean"
  elseif k == "enum" then
    local q = {}
    for i, v in ipairs(node.values) do q[i] = quote(v) end
    return "one of " .. table.concat(q, ", ")
  elseif k == "string" then
    if node.id then return "string matching " .. M.ID_DESC end
    if node.abs then return "absolute path (string starting with /)" end
    if node.ipv4 then return "IPv4 address string" end
    if node.pattern_desc then return "string, " .. node.pattern_desc end
    if node.nonempty then return "non-empty string" end
    return "string"
  elseif k == "env_value" then return "string or number"
  elseif k == "list" then return "list (table)"
  elseif k == "map" then return "table (map)"
  elseif k == "record" then return "table"
  elseif k == "steps" then return "list of steps (table)"
  elseif k == "egress" then return "\"internet\", \"none\" or table { allow = { entries } }"
  elseif k == "egress_entry" then return "a domain name, \"*.suffix\", \"*\" or an IPv4 address/CIDR"
  elseif k == "step" then return "string or table"
  end
  return k
end

------------------------------------------------------------------------ checking

local check -- forward

local function field_names(fields)
  local names = {}
  for i, f in ipairs(fields) do names[i] = f.name end
  return names
end

local function unknown(errs, path, key, known)
  local p = join(path, key)
  if type(key) ~= "string" then
    add(errs, path, "unexpected key " .. M.describe(key) .. " (fields have names)")
    return
  end
  local s = M.suggest(key, known)
  add(errs, p, "unknown field" .. (s and (" (did you mean " .. quote(s) .. "?)") or ""))
end

-- Check the fields of a record table `v` against `fields`; unknown keys are errors
-- unless listed in `allow`. Fills defaults when `defaults` is true.
local function check_fields(fields, v, path, errs, opts)
  opts = opts or {}
  local out = {}
  local by_name = {}
  for _, f in ipairs(fields) do by_name[f.name] = f end
  local known = opts.known or field_names(fields)
  -- Stable order for unknown-key errors.
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(keys) do
    if not by_name[k] and not (opts.allow and opts.allow[k]) then
      if opts.foreign and opts.foreign[k] then
        add(errs, join(path, k), opts.foreign[k])
      else
        unknown(errs, path, k, known)
      end
    end
  end
  for _, f in ipairs(fields) do
    local x = v[f.name]
    if x == nil then
      if opts.required and opts.required[f.name] then
        add(errs, join(path, f.name), "required field missing (expected " .. M.expect_desc(f.node) .. ")")
      elseif opts.defaults and f.default ~= nil then
        out[f.name] = f.default
      end
    else
      out[f.name] = check(f.node, x, join(path, f.name), errs)
    end
  end
  return out
end

local function check_list_shape(v, path, errs, max)
  local n = 0
  for k in pairs(v) do
    if not is_integer(k) or k < 1 then
      add(errs, join(path, type(k) == "number" and k or tostring(k)),
          "unexpected key in a list (expected items at 1, 2, ...)")
    else
      n = math.max(n, k)
    end
  end
  if max and n > max then
    add(errs, path, "too many items: at most " .. max .. ", got " .. n)
  end
  return n
end

local function check_step(v, path, errs)
  if type(v) == "string" then
    if v == "" then expected(errs, path, "non-empty command string", v) return nil end
    return { kind = "run", run = v, expect = { exit = 0 }, background = false,
             timeout = M.DEFAULT_STEP_TIMEOUT }
  end
  if type(v) ~= "table" then
    expected(errs, path, "string or table with one of run, upload, download, write", v)
    return nil
  end
  local present = {}
  for _, sk in ipairs(M.step_kinds) do
    if v[sk.name] ~= nil then present[#present + 1] = sk end
  end
  if #present > 1 then
    local names = {}
    for i, sk in ipairs(present) do names[i] = sk.name end
    add(errs, path, "a step has exactly one of run, upload, download, write, found "
        .. table.concat(names, " and "))
    return nil
  end
  local all_known = {}
  for _, sk in ipairs(M.step_kinds) do
    if sk.fields then
      for _, f in ipairs(sk.fields) do all_known[#all_known + 1] = f.name end
    else
      all_known[#all_known + 1] = sk.name
    end
  end
  if #present == 0 then
    local before = #errs
    check_fields({}, v, path, errs, { known = all_known })
    if #errs == before then
      add(errs, path, "expected one of run, upload, download, write, got "
          .. (next(v) and "a table without any" or "an empty table"))
    end
    return nil
  end
  local sk = present[1]
  if sk.fields then
    local out = check_fields(sk.fields, v, path, errs, { defaults = true, known = all_known })
    out.kind = "run"
    if out.expect == nil then out.expect = { exit = 0 }
    elseif out.expect.exit == nil then out.expect.exit = 0 end
    if v.background == true and v.expect ~= nil then
      add(errs, join(path, "expect"), "not allowed with background = true (a background step is not waited for)")
    end
    return out
  end
  local foreign = {}
  for _, f in ipairs(M.step_kinds[1].fields) do
    foreign[f.name] = "only allowed in a run step, not in " .. (sk.name == "upload" and "an " or "a ") .. sk.name .. " step"
  end
  check_fields({}, v, path, errs, { allow = { [sk.name] = true }, foreign = foreign, known = all_known })
  local p = join(path, sk.name)
  local body = v[sk.name]
  if type(body) ~= "table" then
    expected(errs, p, "table " .. (sk.name == "write" and "{ path =, content = }" or "{ from =, to = }"), body)
    return nil
  end
  local out = check_fields(sk.node.fields, body, p, errs, { required = sk.node.required })
  out.kind = sk.name
  return out
end

function check(node, v, path, errs)
  local k = node.kind
  if k == "string" then
    if type(v) ~= "string" then expected(errs, path, M.expect_desc(node), v) return nil end
    if node.max_len and #v > node.max_len then
      add(errs, path, "too long: at most " .. node.max_len .. " bytes, got " .. #v)
      return nil
    end
    if node.printable and v:find("%c") then
      add(errs, path, "control characters are not allowed")
      return nil
    end
    if (node.nonempty and v == "")
       or (node.id and not valid_id(v))
       or (node.abs and v:sub(1, 1) ~= "/")
       or (node.ipv4 and not valid_ipv4(v))
       or (node.pattern and not v:match(node.pattern)) then
      expected(errs, path, M.expect_desc(node), v)
      return nil
    end
    return v
  elseif k == "integer" then
    if not is_integer(v) or (node.min and v < node.min) or (node.max and v > node.max) then
      expected(errs, path, M.expect_desc(node), v)
      return nil
    end
    return to_integer(v)
  elseif k == "number" then
    if type(v) ~= "number" or v ~= v or (node.gt and v <= node.gt) or (node.max and v > node.max) then
      expected(errs, path, M.expect_desc(node), v)
      return nil
    end
    return v
  elseif k == "boolean" then
    if type(v) ~= "boolean" then expected(errs, path, "boolean", v) return nil end
    return v
  elseif k == "enum" then
    for _, c in ipairs(node.values) do
      if v == c then return v end
    end
    local msg = "expected " .. M.expect_desc(node) .. ", got " .. M.describe(v)
    local s = M.suggest(v, node.values)
    add(errs, path, msg .. (s and (" (did you mean " .. quote(s) .. "?)") or ""))
    return nil
  elseif k == "env_value" then
    if type(v) == "string" then
      local max = node.max_len or M.LIMITS.string
      if #v > max then add(errs, path, "too long: at most " .. max .. " bytes") return nil end
      if node.printable and v:find("%c") then
        add(errs, path, "control characters are not allowed (the guest's boot environment is printable text)")
        return nil
      end
      return v
    end
    if type(v) == "number" and v == v then return num_str(v) end
    expected(errs, path, "string or number", v)
    return nil
  elseif k == "list" then
    if type(v) ~= "table" then expected(errs, path, M.expect_desc(node), v) return nil end
    local n = check_list_shape(v, path, errs, node.max)
    local out = {}
    for i = 1, n do
      if v[i] == nil then
        add(errs, join(path, i), "missing item (lists cannot have holes)")
      else
        out[#out + 1] = check(node.items, v[i], join(path, i), errs)
      end
    end
    if node.forwards then
      local seen = {}
      for i = 1, n do
        local f = v[i]
        if type(f) == "table" and is_integer(f.host) then
          if seen[f.host] then
            add(errs, join(join(path, i), "host"), "host port " .. num_str(f.host)
                .. " already forwarded by " .. join(path, seen[f.host]))
          else
            seen[f.host] = i
          end
        end
      end
    end
    return out
  elseif k == "map" then
    if type(v) ~= "table" then expected(errs, path, M.expect_desc(node), v) return nil end
    local keys, out = {}, {}
    for key in pairs(v) do keys[#keys + 1] = key end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    if node.max and #keys > node.max then
      add(errs, path, "too many entries: at most " .. node.max .. ", got " .. #keys)
    end
    for _, key in ipairs(keys) do
      local kd = node.key
      if type(key) ~= "string"
         or (kd.pattern and not key:match(kd.pattern))
         or (kd.abs and key:sub(1, 1) ~= "/") then
        add(errs, path, "bad key: expected " .. kd.desc .. ", got " .. M.describe(key))
      else
        out[key] = check(node.value, v[key], join(path, key), errs)
      end
    end
    return out
  elseif k == "record" then
    if type(v) ~= "table" then expected(errs, path, M.expect_desc(node), v) return nil end
    return check_fields(node.fields, v, path, errs, { required = node.required, defaults = true })
  elseif k == "egress" then
    if v == "internet" or v == "none" then return v end
    if type(v) ~= "table" then
      local s = M.suggest(v, { "internet", "none" })
      add(errs, path, "expected " .. M.expect_desc(node) .. ", got " .. M.describe(v)
          .. (s and (" (did you mean " .. quote(s) .. "?)") or ""))
      return nil
    end
    local out = check_fields({
      field("allow", { kind = "list", items = { kind = "egress_entry" }, max = node.max }, nil, ""),
    }, v, path, errs, { required = { allow = true } })
    return out.allow and { allow = out.allow } or nil
  elseif k == "egress_entry" then
    if type(v) ~= "string" then expected(errs, path, M.expect_desc(node), v) return nil end
    local ok, msg = core.egress_check(v)
    if not ok then add(errs, path, msg) return nil end
    return v:lower()
  elseif k == "steps" then
    if type(v) ~= "table" then expected(errs, path, M.expect_desc(node), v) return nil end
    local n = check_list_shape(v, path, errs, node.max)
    local out = {}
    for i = 1, n do
      if v[i] == nil then
        add(errs, join(path, i), "missing step (lists cannot have holes)")
      else
        out[#out + 1] = check_step(v[i], join(path, i), errs) or false
      end
    end
    return out
  end
  error("schema: unknown node kind " .. tostring(k))
end

------------------------------------------------------------------------ public

local function vm_record(v, errs, prefix, fields)
  if type(v) ~= "table" then
    add(errs, prefix, "expected table of options, got " .. M.describe(v))
    return nil
  end
  return check_fields(fields, v, "", errs, { defaults = true })
end

-- given: the options as written. A clone's machine is its template's: the defaults of
-- vcpus, memory and image do not apply to it (only what was written is checked).
local function finish_vm(out, given)
  out.forwards = out.forwards or {}
  out.env = out.env or {}
  if out.template then
    for _, k in ipairs({ "vcpus", "memory", "image" }) do
      if given[k] == nil then out[k] = nil end
    end
  end
  return out
end

--- Validate an egress policy (vm:set_egress): normalized policy, or nil and the errors
--- joined (each with its path under `path`, default "egress").
function M.check_egress(v, path)
  local errs = {}
  local out = check(EGRESS, v, path or "egress", errs)
  if #errs > 0 then return nil, table.concat(errs, "; ") end
  return out
end

--- Validate VM options as given to smolvm.VM{}.
-- @param opts table (not modified)
-- @return normalized options (defaults filled, integers as integers, env values as
--         strings), or nil and a list of error strings.
function M.validate_vm(opts)
  local errs = {}
  if opts == nil then opts = {} end
  local out = vm_record(opts, errs, "", M.vm_fields)
  if #errs > 0 then return nil, errs end
  return finish_vm(out, opts)
end

local sandbox_fields = {}
for _, f in ipairs(M.vm_fields) do sandbox_fields[#sandbox_fields + 1] = f end
for _, f in ipairs(M.recipe_fields) do sandbox_fields[#sandbox_fields + 1] = f end
M.sandbox_fields = sandbox_fields

--- Validate one sandbox body. Paths in errors are relative to the sandbox.
-- @return normalized { vm = vm options, files =, steps =, keep = } or nil, errs
function M.validate_sandbox(body)
  local errs = {}
  local out = vm_record(body, errs, "", sandbox_fields)
  if not out then return nil, errs end
  local sb = { files = out.files or {}, steps = out.steps or {}, keep = out.keep or false }
  out.files, out.steps, out.keep = nil, nil, nil
  sb.vm = finish_vm(out, body)
  if #errs > 0 then return nil, errs end
  return sb
end

local function sandbox_prefix(name, line)
  if type(name) == "string" then return "sandbox " .. quote(name) .. ": " end
  if name == nil and line then return "sandbox at line " .. line .. ": " end
  return "sandbox " .. M.describe(name) .. ": "
end
M.sandbox_prefix = sandbox_prefix

--- A valid image name: a VM id other than the reserved "templates".
function M.valid_image_name(s)
  return M.valid_id(s) and not M.IMAGE_RESERVED[s]
end

--- Validate one image body. Paths in errors are relative to the image.
-- @return normalized { packages = sorted, without duplicates } or nil, errs
function M.validate_image(body)
  local errs = {}
  local out = vm_record(body, errs, "", M.image_fields)
  if not out or #errs > 0 then return nil, errs end
  local seen, packages = {}, {}
  for _, p in ipairs(out.packages or {}) do
    if not seen[p] then seen[p] = true packages[#packages + 1] = p end
  end
  table.sort(packages)
  return { packages = packages }
end

local function image_prefix(name, line)
  if type(name) == "string" then return "image " .. quote(name) .. ": " end
  if name == nil and line then return "image at line " .. line .. ": " end
  return "image " .. M.describe(name) .. ": "
end
M.image_prefix = image_prefix

-- One declaration's own errors and its name (valid, not reserved, not declared twice:
-- names maps the names seen so far to their declarations), each appended to errs.
local function check_declaration(d, prefix, kind, names, errs, reserved)
  local where = d.line and (" (line " .. d.line .. ")") or ""
  for _, e in ipairs(d.errors or {}) do errs[#errs + 1] = prefix .. e end
  if d.name == nil and d.errors and #d.errors > 0 then
    return -- the declaration error already says the name is missing
  elseif type(d.name) ~= "string" or not M.valid_id(d.name) then
    errs[#errs + 1] = prefix .. "name: expected string matching " .. M.ID_DESC
      .. ", got " .. M.describe(d.name)
  elseif reserved and reserved[d.name] then
    errs[#errs + 1] = prefix .. "name: " .. quote(d.name) .. " is reserved"
  elseif names[d.name] then
    errs[#errs + 1] = prefix .. "duplicate " .. kind .. " name" .. where .. ", first declared"
      .. (names[d.name].line and (" at line " .. names[d.name].line) or " earlier")
  else
    names[d.name] = d
  end
end

--- Validate the images a recipe declared (same shape as validate_recipe's list).
-- @return list of normalized images { name, line, packages } or nil and every error
--         (each prefixed `image "name": `).
function M.validate_images(list)
  local errs, out, names = {}, {}, {}
  for _, d in ipairs(list or {}) do
    local prefix = image_prefix(d.name, d.line)
    check_declaration(d, prefix, "image", names, errs, M.IMAGE_RESERVED)
    if d.body ~= nil then
      local img, e = M.validate_image(d.body)
      if not img then
        for _, m in ipairs(e) do errs[#errs + 1] = prefix .. m end
      else
        img.name, img.line = d.name, d.line
        out[#out + 1] = img
      end
    end
  end
  if #errs > 0 then return nil, errs end
  return out
end

--- Validate one template body. Paths in errors are relative to the template.
-- @return normalized { vm = { image, vcpus, memory, network, env }, files =, steps = }
--         or nil, errs
function M.validate_template(body)
  local errs = {}
  local out = vm_record(body, errs, "", M.template_fields)
  if not out or #errs > 0 then return nil, errs end
  local t = { files = out.files or {}, steps = out.steps or {} }
  out.files, out.steps = nil, nil
  out.env = out.env or {}
  t.vm = out
  return t
end

local function template_prefix(name, line)
  if type(name) == "string" then return "template " .. quote(name) .. ": " end
  if name == nil and line then return "template at line " .. line .. ": " end
  return "template " .. M.describe(name) .. ": "
end
M.template_prefix = template_prefix

--- Validate the templates a recipe declared (same shape as validate_recipe's list).
-- @return list of normalized templates { name, line, source, vm, files, steps } or nil,
--         every error (each prefixed `template "name": `) and the templates that are
--         valid on their own.
function M.validate_templates(list)
  local errs, out, names = {}, {}, {}
  list = list or {}
  if #list > M.LIMITS.templates then
    errs[#errs + 1] = "recipe: too many templates: at most " .. M.LIMITS.templates .. ", got " .. #list
  end
  for _, d in ipairs(list) do
    local prefix = template_prefix(d.name, d.line)
    check_declaration(d, prefix, "template", names, errs)
    if d.body ~= nil then
      local t, e = M.validate_template(d.body)
      if not t then
        for _, m in ipairs(e) do errs[#errs + 1] = prefix .. m end
      else
        t.name, t.line, t.source = d.name, d.line, d.source
        out[#out + 1] = t
      end
    end
  end
  if #errs > 0 then return nil, errs, out end
  return out
end

--- Validate what a recipe declared.
-- @param list { { name = string, body = table, line = number|nil, errors = {..}|nil }, ... }
--        in declaration order. `errors` are declaration mistakes already found
--        (reported as they are, after the sandbox prefix).
-- @return list of normalized sandboxes { name, id, line, vm, files, steps, keep }
--         or nil and every error (each prefixed `sandbox "name": `).
function M.validate_recipe(list)
  local errs, out = {}, {}
  if type(list) ~= "table" then
    return nil, { "recipe: expected a list of sandboxes, got " .. M.describe(list) }
  end
  if #list > M.LIMITS.sandboxes then
    errs[#errs + 1] = "recipe: too many sandboxes: at most " .. M.LIMITS.sandboxes .. ", got " .. #list
  end
  local names, ids, ports = {}, {}, {}
  for _, d in ipairs(list) do
    local prefix = sandbox_prefix(d.name, d.line)
    check_declaration(d, prefix, "sandbox", names, errs)
    if d.body ~= nil then
      local sb, e = M.validate_sandbox(d.body)
      if not sb then
        for _, m in ipairs(e) do errs[#errs + 1] = prefix .. m end
      else
        sb.name, sb.line, sb.source = d.name, d.line, d.source
        sb.id = sb.vm.id or d.name
        if type(sb.id) == "string" then
          if ids[sb.id] and ids[sb.id] ~= d.name then
            errs[#errs + 1] = prefix .. "id: VM id " .. quote(sb.id) .. " already used by sandbox "
              .. quote(ids[sb.id])
          end
          ids[sb.id] = ids[sb.id] or d.name
        end
        for i, f in ipairs(sb.vm.forwards) do
          local addr = f.address or "127.0.0.1"
          for key, owner in pairs(ports) do
            local oaddr, oport = key:match("^(.*):(%d+)$")
            if tonumber(oport) == f.host and owner.name ~= d.name
               and (oaddr == addr or oaddr == "0.0.0.0" or addr == "0.0.0.0") then
              errs[#errs + 1] = prefix .. "forwards[" .. i .. "].host: port " .. num_str(f.host)
                .. " on " .. addr .. " clashes with sandbox " .. quote(owner.name)
                .. " forwards[" .. owner.index .. "]"
              break
            end
          end
          local key = addr .. ":" .. num_str(f.host)
          if not ports[key] then ports[key] = { name = d.name, index = i } end
        end
        out[#out + 1] = sb
      end
    end
  end
  if #errs > 0 then return nil, errs end
  return out
end

return M
