-- SPDX-License-Identifier: MIT
--- smolvm.declare: what a recipe file calls while it loads (`sandbox "x" { ... }`,
-- `image "x" { ... }`, `template "x" { ... }`, `host_check`) and the restricted
-- environments it loads in.
--
-- Pure: this module requires nothing and uses only the standard string and table
-- functions, so smolvm-lua can load it into the separate, budgeted Lua state that
-- evaluates a `--safe` recipe (src/cli/safe-recipe.c). A declaration records facts
-- only (the values given, the line, how the call was made); smolvm.recipe turns the
-- facts into error messages once everything is loaded, so a --safe recipe and a
-- trusted one are reported in the same words.
--
-- Environments (M.env): "check" for `smolvm-lua --check` (no host side effect: no
-- commands, no writes, no loading of other code; files can be read) and "safe" for
-- `--safe` (the declarations, string, table, math, utf8, os.getenv and os.time,
-- nothing else). A name that is left out raises where the recipe uses it:
-- `recipe.lua:3: os.execute is not available in --safe recipes`.
--
-- Pure Lua for 5.1/LuaJIT and 5.4.

local M = {}

--- The kinds of declaration, in the order a run makes them (images, then the templates
-- booted from them, then the sandboxes).
M.KINDS = { "image", "template", "sandbox" }

--- A new declaration collector: { declared = { d, ... }, checks = { c, ... } }, the
-- declarations of every kind in the order they were made.
-- A declaration d is { kind = "sandbox"|"image"|"template", name =, body =, line =, source =,
-- extra_args = bool, body_line =, body_extra = bool, body_bad = true (the body is not
-- a table), twice = { line, ... } (the body was given again) }.
function M.collector()
  return { declared = {}, checks = {} }
end

-- The line and file of the code `level` calls above the caller of this function.
local function where(getinfo, level)
  if not getinfo then return nil, nil end
  local info = getinfo(level + 1, "Sl") or {}
  local src = info.source or "?"
  local file = src:sub(1, 1) == "@" and src:sub(2) or nil
  return info.currentline, file
end

--- The declaration function of `kind` for a collector: `KIND "name" { ... }`.
-- getinfo (debug.getinfo) gives the lines.
function M.declaration_function(col, kind, getinfo)
  return function(name, ...)
    local line, file = where(getinfo, 2)
    local d = { kind = kind, name = name, line = line, source = file }
    col.declared[#col.declared + 1] = d
    if type(name) == "table" and select("#", ...) == 0 then
      -- KIND { ... }: the name is missing and this table is the body.
      d.name = nil
      d.body = name
      d.missing_name = true
      return function() end
    end
    if select("#", ...) > 0 then d.extra_args = true end
    local called = false
    return function(body, ...)
      local bline = where(getinfo, 2) or line
      if called then
        d.twice = d.twice or {}
        d.twice[#d.twice + 1] = bline or false
        return function() end
      end
      called = true
      d.body_line = bline
      if type(body) ~= "table" or select("#", ...) > 0 then
        d.body_bad = true
        d.bad_value = body
        return function() end
      end
      d.body = body
      return nil
    end
  end
end

--- The `sandbox` function of a collector.
function M.sandbox_function(col, getinfo)
  return M.declaration_function(col, "sandbox", getinfo)
end

--- Every declaration function of a collector: { sandbox = fn, image = fn, ... }.
function M.functions(col, getinfo)
  local fns = {}
  for _, kind in ipairs(M.KINDS) do fns[kind] = M.declaration_function(col, kind, getinfo) end
  return fns
end

--- The `host_check` function of a collector: `host_check(label, fn)`.
function M.host_check_function(col)
  return function(label, fn)
    if type(label) ~= "string" or type(fn) ~= "function" then
      error("host_check: expected (label string, function)", 2)
    end
    col.checks[#col.checks + 1] = { label = label, fn = fn }
  end
end

------------------------------------------------------------------------ data only

local function key_path(path, k, first)
  local ks
  if type(k) == "string" and k:match("^[%a_][%w_]*$") then
    ks = first and k or ("." .. k)
  else
    ks = "[" .. (type(k) == "string" and string.format("%q", k) or tostring(k)) .. "]"
  end
  return first and (path .. ": " .. ks) or (path .. ks)
end

--- check_data(declared) -> nil | message: what a --safe recipe declared must be data
-- (strings, numbers, booleans and tables of them, keys not tables), since data is all
-- that leaves its Lua state. Walks raw (next), so no metamethod of the recipe runs.
function M.check_data(declared)
  local seen = {}
  local function walk(v, path, depth)
    local t = type(v)
    if t == "string" or t == "number" or t == "boolean" or t == "nil" then return nil end
    if t ~= "table" then
      return path .. ": expected data (a string, number, boolean or table), got " .. t
    end
    if seen[v] then return nil end
    if depth >= 100 then return path .. ": tables nested more than 100 deep" end
    seen[v] = true
    for k, x in next, v do
      local kt = type(k)
      if kt ~= "string" and kt ~= "number" and kt ~= "boolean" then
        return key_path(path, "?", depth == 0) .. ": a " .. kt .. " as a key is not data"
      end
      local e = walk(x, key_path(path, k, depth == 0), depth + 1)
      if e then return e end
    end
    return nil
  end
  for i, d in ipairs(declared) do
    local kind = type(d.kind) == "string" and d.kind or "sandbox"
    local prefix = type(d.name) == "string" and (kind .. " " .. string.format("%q", d.name))
      or (kind .. " #" .. i)
    local e = walk(d.name, prefix .. ": its name", 1) or walk(d.body, prefix, 0)
      or walk(d.bad_value, prefix .. ": the value after its name", 1)
    if e then return e .. " (a --safe recipe declares data only)" end
  end
  return nil
end

------------------------------------------------------------------------ environments

local BASE = { "assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal", "rawget",
               "rawlen", "rawset", "select", "setmetatable", "tonumber", "tostring", "type",
               "unpack", "xpcall", "_VERSION" }
local LIBS = { "string", "table", "math", "utf8" }
-- Names a recipe may know from ordinary Lua, refused with a message (any other unknown
-- global is nil, as usual).
local REFUSED = { "io", "os", "require", "load", "loadfile", "loadstring", "dofile", "debug",
                  "package", "collectgarbage", "module", "setfenv", "getfenv", "print",
                  "coroutine", "newproxy", "jit", "ffi", "bit" }
local CHECK_OS = { "getenv", "time", "clock", "date", "difftime" }
local SAFE_OS = { "getenv", "time" }

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

local function refusing(why, name)
  return function(_, k)
    error((name and (name .. ".") or "") .. tostring(k) .. " is not available " .. why, 2)
  end
end

-- A table that holds `allowed` and raises for any other key.
local function partial(name, allowed, why)
  local t = {}
  for k, v in pairs(allowed) do t[k] = v end
  return setmetatable(t, { __index = refusing(why, name), __metatable = false })
end

--- The environment a recipe file is loaded in under --check ("check") or --safe
-- ("safe").
-- @param kind "check" or "safe"
-- @param g the standard globals to take the allowed functions from (_G)
-- @param decl { sandbox =, image =, template = (M.functions), host_check = fn (check
--   only), pcall =, xpcall = (the budget-aware versions in the --safe state),
--   print = fn(...) (check only) }
function M.env(kind, g, decl)
  local why = kind == "safe" and "in --safe recipes"
    or "under --check (it runs no host side effect)"
  local env = {}
  for _, k in ipairs(BASE) do env[k] = g[k] end
  env.pcall = decl.pcall or env.pcall
  env.xpcall = decl.xpcall or env.xpcall
  -- No finalizers: Lua runs them with hooks off, so the instruction budget could not
  -- stop one. An object is marked for finalization only if its metatable has __gc
  -- when it is set, so refusing it here is enough.
  local setmt = g.setmetatable
  env.setmetatable = function(t, mt)
    if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
      error("__gc metamethods are not available " .. why, 2)
    end
    return setmt(t, mt)
  end
  -- The string metatable stays out of reach: its __index is the real string table.
  local getmt = g.getmetatable
  env.getmetatable = function(v)
    if type(v) == "string" then return nil end
    return getmt(v)
  end
  for _, k in ipairs(LIBS) do
    if type(g[k]) == "table" then env[k] = copy(g[k]) end
  end
  if env.string then env.string.dump = nil end
  local os_allowed = {}
  for _, k in ipairs(kind == "safe" and SAFE_OS or CHECK_OS) do
    os_allowed[k] = g.os and g.os[k]
  end
  env.os = partial("os", os_allowed, why)
  for _, k in ipairs(M.KINDS) do env[k] = decl[k] end
  if kind == "check" then
    -- Reading files has no side effect; nothing can be written, run or loaded.
    local real_open, real_lines = g.io.open, g.io.lines
    env.io = partial("io", {
      open = function(path, mode)
        mode = mode or "r"
        if mode ~= "r" and mode ~= "rb" then
          error("io.open mode " .. string.format("%q", tostring(mode)) .. " is not available " .. why, 2)
        end
        return real_open(path, mode)
      end,
      lines = function(path, ...)
        if path == nil then error("io.lines() of stdin is not available " .. why, 2) end
        return real_lines(path, ...)
      end,
    }, why)
    env.coroutine = g.coroutine and copy(g.coroutine)
    env.print = decl.print
    env.arg = g.arg
    -- require "smolvm.recipe" gives the declarations (host_check), nothing else.
    local recipe_api = { host_check = decl.host_check }
    for _, k in ipairs(M.KINDS) do recipe_api[k] = decl[k] end
    env.require = function(name)
      if name == "smolvm.recipe" then return recipe_api end
      error("require " .. string.format("%q", tostring(name)) .. " is not available " .. why, 2)
    end
  end
  env._G = env
  local refused = {}
  for _, k in ipairs(REFUSED) do
    if env[k] == nil then refused[k] = true end
  end
  return setmetatable(env, {
    __index = function(_, k)
      if refused[k] then error(tostring(k) .. " is not available " .. why, 2) end
      return nil
    end,
    __metatable = false,
  })
end

return M
