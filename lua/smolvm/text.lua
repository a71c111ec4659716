-- SPDX-License-Identifier: MIT
--- smolvm.text: guest text made safe to show.
--
-- What a guest prints is hostile: escape sequences can retitle or reprogram the
-- user's terminal, and invalid UTF-8 breaks JSON readers. Everything the recipe
-- runner and the `smolvm` command show from a guest (on a terminal or in JSON) goes
-- through sanitize(): tab and newline stay, every other control character (C0, DEL
-- and the C1 range U+0080..U+009F) becomes a visible escape (`\x1b`, `\u009b`),
-- invalid UTF-8 becomes U+FFFD. Interactive sessions (`smolvm shell`, `exec -it`)
-- pass bytes through unchanged: there the guest drives a terminal on purpose.
--
-- Pure Lua for 5.1/LuaJIT and 5.4.

local M = {}

local byte, fmt, concat = string.byte, string.format, table.concat

-- Bytes that need a look: controls other than tab/newline, DEL, and every non-ASCII
-- byte (checked as UTF-8).
local SPECIAL = "[%z\1-\8\11-\31\127-\255]"
local REPLACEMENT = "\239\191\189" -- U+FFFD

-- Length of the valid UTF-8 sequence at s[i] (lead byte c >= 0x80), or nil.
local function utf8_len(s, i, c)
  local n, lo, hi
  if c >= 0xC2 and c <= 0xDF then n = 2
  elseif c == 0xE0 then n, lo = 3, 0xA0
  elseif c == 0xED then n, hi = 3, 0x9F -- no UTF-16 surrogates
  elseif c >= 0xE1 and c <= 0xEF then n = 3
  elseif c == 0xF0 then n, lo = 4, 0x90
  elseif c >= 0xF1 and c <= 0xF3 then n = 4
  elseif c == 0xF4 then n, hi = 4, 0x8F -- at most U+10FFFF
  else return nil end
  for k = 1, n - 1 do
    local b = byte(s, i + k)
    if not b then return nil end
    local min, max = 0x80, 0xBF
    if k == 1 then min, max = lo or min, hi or max end
    if b < min or b > max then return nil end
  end
  return n
end

--- sanitize(s) -> s with control characters escaped and invalid UTF-8 replaced.
-- Non-strings are converted with tostring first.
function M.sanitize(s)
  if type(s) ~= "string" then s = tostring(s) end
  local i = s:find(SPECIAL)
  if not i then return s end
  local out, start, len = {}, 1, #s
  while i do
    if i > start then out[#out + 1] = s:sub(start, i - 1) end
    local c = byte(s, i)
    if c < 0x80 then
      out[#out + 1] = fmt("\\x%02x", c)
      i = i + 1
    else
      local n = utf8_len(s, i, c)
      if not n then
        out[#out + 1] = REPLACEMENT
        i = i + 1
      elseif c == 0xC2 and byte(s, i + 1) < 0xA0 then
        out[#out + 1] = fmt("\\u%04x", byte(s, i + 1)) -- C1 control
        i = i + 2
      else
        out[#out + 1] = s:sub(i, i + n - 1)
        i = i + n
      end
    end
    start = i
    if i > len then break end
    i = s:find(SPECIAL, i)
  end
  if start <= len then out[#out + 1] = s:sub(start) end
  return concat(out)
end

--- One line of output as a terminal would leave it: a carriage return before the
-- newline is dropped, and text overwritten by an earlier carriage return (progress
-- bars) is not shown. Then sanitized.
function M.display_line(line)
  line = line:gsub("\r+$", "")
  local last = line:match("^.*\r(.-)$")
  if last and last ~= "" then line = last end
  return M.sanitize(line)
end

M.LINE_MAX = 64 * 1024

--- A splitter of a byte stream into whole lines: feed(chunk) calls emit(line) for
-- every complete line (without its "\n"), flush() emits what is left. A line longer
-- than LINE_MAX is emitted in pieces, so a guest that never prints a newline cannot
-- grow it without bound.
function M.lines(emit)
  local buf = ""
  local self = {}
  function self.feed(chunk)
    buf = buf .. chunk
    local start = 1
    while true do
      local nl = buf:find("\n", start, true)
      if not nl then break end
      emit(buf:sub(start, nl - 1))
      start = nl + 1
    end
    buf = buf:sub(start)
    while #buf > M.LINE_MAX do
      emit(buf:sub(1, M.LINE_MAX))
      buf = buf:sub(M.LINE_MAX + 1)
    end
  end
  function self.flush()
    if buf ~= "" then
      local rest = buf
      buf = ""
      emit(rest)
    end
  end
  return self
end

return M
