-- SPDX-License-Identifier: MIT
--- smolvm.image: guest images (docs/image.md) — list, build, remove.
--
--   smolvm.images()                          -> { { name=, built=, size=, agent=,
--                                                  extra_packages=, ... }, ... }
--   smolvm.image_build(name, { packages = { "jq" }, force =, dry_run =, timeout =,
--                              on_line = function(line) end })
--                                            -> "built" | "up-to-date" | "out-of-date"
--   smolvm.image_delete(name, { force = })   -> true
--
-- Conventions as everywhere: wrong argument types and invalid names raise an error
-- naming the field; operational failures return nil, message, code ("EPERM" when a
-- build needs root, "ESTATE" when the image is in use, "ENOENT" when there is none).
--
-- Pure Lua for 5.1/LuaJIT and 5.4; the work is done by libsmolvm (smolvm.core).

local core = require "smolvm.core"
local schema = require "smolvm.schema"

local M = {}

local function check_name(fn, name)
  if type(name) ~= "string" or not schema.valid_image_name(name) then
    error(fn .. ": name: expected string matching " .. schema.ID_DESC
      .. (name == "templates" and ' other than "templates" (reserved)' or "")
      .. ", got " .. schema.describe(name), 3)
  end
end

local function check_opts(fn, opts, allowed)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error(fn .. ": expected table of options, got " .. schema.describe(opts), 3)
  end
  local known = {}
  for k in pairs(allowed) do known[#known + 1] = k end
  table.sort(known)
  for k, v in pairs(opts) do
    local want = allowed[k]
    if not want then
      local s = schema.suggest(tostring(k), known)
      error(fn .. ": " .. tostring(k) .. ": unknown option"
        .. (s and (" (did you mean " .. schema.quote(s) .. "?)") or ""), 3)
    end
    if type(v) ~= want then
      error(fn .. ": " .. k .. ": expected " .. want .. ", got " .. schema.describe(v), 3)
    end
  end
  return opts
end

--- The images in the image directory, sorted by name. `size` is bytes on disk,
-- `built` an ISO 8601 UTC time (absent when unknown), `agent` whether the image has
-- the guest agent, `extra_packages` what was added to the default package set.
function M.list()
  return core.images()
end

--- Build an image unless it is up to date (scripts/build-image.sh, as root). Blocks
-- until done; each line of the build's progress goes to `on_line` as it comes.
function M.build(name, opts)
  check_name("image_build", name)
  opts = check_opts("image_build", opts, { packages = "table", force = "boolean",
    dry_run = "boolean", timeout = "number", on_line = "function" })
  local img, errs = schema.validate_image({ packages = opts.packages })
  if not img then error("image_build: " .. errs[1], 2) end
  if opts.timeout ~= nil and not (opts.timeout > 0 and opts.timeout <= 24 * 3600) then
    error("image_build: timeout: expected number > 0 and <= 86400, got "
      .. schema.describe(opts.timeout), 2)
  end
  return core.image_build(name, {
    packages = img.packages, force = opts.force, dry_run = opts.dry_run,
    timeout_ms = opts.timeout and math.floor(opts.timeout * 1000) or nil,
    on_line = opts.on_line,
  })
end

--- Delete an image: refused while a VM of the store or a template uses it, and for
-- "default" unless force.
function M.remove(name, opts)
  check_name("image_delete", name)
  opts = check_opts("image_delete", opts, { force = "boolean", template_dir = "string" })
  return core.image_remove(name, { force = opts.force, template_dir = opts.template_dir })
end

return M
