-- SPDX-License-Identifier: MIT
--- A small JSON encoder for smolvm's machine-readable output (`--json`).
--
-- Only encoding is needed at runtime (the C side parses with jansson), so this stays
-- tiny instead of adding a runtime dependency on dkjson or lua-cjson. Tables with
-- keys 1..n (or marked with json.array) are arrays, other tables objects with keys
-- sorted so the output is stable. Works under Lua 5.1/LuaJIT and 5.4.

local M = {}

local array_mt = { __jsontype = "array" }
local object_mt = { __jsontype = "object" }

--- Mark `t` (default a new table) as an array, so an empty one encodes as [].
function M.array(t) return setmetatable(t or {}, array_mt) end
--- Mark `t` as an object, so an empty one encodes as {}.
function M.object(t) return setmetatable(t or {}, object_mt) end

--- JSON null (a unique sentinel).
M.null = setmetatable({}, { __tostring = function() return "null" end })

local escapes = {
  ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
}

local function encode_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return escapes[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function is_array(t)
  local mt = getmetatable(t)
  if mt and mt.__jsontype then return mt.__jsontype == "array" end
  local n = 0
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k ~= math.floor(k) then return false end
    if k > n then n = k end
  end
  if n == 0 then return false end
  for i = 1, n do if t[i] == nil then return false end end
  return true
end

local encode

local function encode_value(v, seen, out, indent, depth)
  local t = type(v)
  if v == nil or v == M.null then out[#out + 1] = "null"
  elseif t == "boolean" then out[#out + 1] = v and "true" or "false"
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      out[#out + 1] = "null"
    elseif v == math.floor(v) and math.abs(v) < 2^53 then
      out[#out + 1] = string.format("%d", v)
    else
      out[#out + 1] = string.format("%.17g", v)
    end
  elseif t == "string" then out[#out + 1] = encode_string(v)
  elseif t == "table" then
    if seen[v] then error("json: cannot encode a table that contains itself", 0) end
    seen[v] = true
    if is_array(v) then
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then out[#out + 1] = "," end
        if indent then out[#out + 1] = "\n" .. indent:rep(depth + 1) end
        encode_value(v[i], seen, out, indent, depth + 1)
      end
      if indent and #v > 0 then out[#out + 1] = "\n" .. indent:rep(depth) end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k in pairs(v) do
        if type(k) == "string" or type(k) == "number" then keys[#keys + 1] = k end
      end
      table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        if indent then out[#out + 1] = "\n" .. indent:rep(depth + 1) end
        out[#out + 1] = encode_string(tostring(k))
        out[#out + 1] = indent and ": " or ":"
        encode_value(v[k], seen, out, indent, depth + 1)
      end
      if indent and #keys > 0 then out[#out + 1] = "\n" .. indent:rep(depth) end
      out[#out + 1] = "}"
    end
    seen[v] = nil
  else
    error("json: cannot encode a " .. t, 0)
  end
end

--- Encode a Lua value as JSON text: compact, or indented when opts.indent is set
--- (a string such as "  "). Raises on functions, userdata and cycles.
function encode(v, opts)
  local out = {}
  encode_value(v, {}, out, opts and opts.indent, 0)
  return table.concat(out)
end
M.encode = encode

return M
