-- SPDX-License-Identifier: MIT
--- smolvm.client: the agent protocol (docs/agent-protocol.md) in pure Lua, for a VM's
-- supervisor socket (<vm dir>/agent.sock). The same wire format as the C client
-- (src/lib/agent-client.c), checked against the same test vectors
-- (tests/fixtures/agent-vectors.json, tests/lua/client_spec.lua).
--
-- It runs over any socket object with the nginx cosocket interface (what
-- ngx.socket.tcp() gives, and LuaSocket's unix sockets too):
--   sock:send(data) -> bytes | nil, err
--   sock:receive(n) -> data | nil, err, partial        ("timeout" keeps the socket usable)
--   sock:settimeout(ms), sock:close()
-- The caller connects the socket; this module frames, multiplexes and flow-controls:
--
--   local conn = client.new(sock, { now = ms_clock })
--   assert(conn:handshake{ ready = true, timeout = 60000 })
--   local st = assert(conn:request({ op = "exec", cmd = "echo hi" }))
--   local ev = assert(st:next(5000))    -- { kind = "reply", json = { pid = 123 } }
--
-- Streams: any number at once on one connection (at most 256 open), each with its own
-- queue. Whoever waits for a stream reads frames for all of them and queues the
-- others'; with several coroutines (nginx light threads) one reads at a time and the
-- rest wait on a condition (opts.cond, e.g. made from ngx.semaphore). Writes are
-- serialised the same way.
--
-- Flow control: a stream grants the server `window` bytes of DATA (default 256 KiB,
-- what it asked for in its REQUEST) and grants more as its caller consumes: what the
-- caller took is credited back at its next call once it reaches half the window. A
-- server that sends past its window is a protocol error. So what a stream holds is
-- bounded by its window, and the other frames a stream may queue by a count; a
-- connection holds at most one frame in progress.
--
-- Errors: nil, message, code (code a smolvm name: "EIO", "ETIMEDOUT", "ESTATE", ...).
-- A stream's ERROR frame ends that stream only; a GOAWAY, a protocol error or a
-- closed socket breaks the connection (conn.broken), and every stream with it.
--
-- Pure Lua for 5.1/LuaJIT and 5.4 (string.byte/char only, no bit operators).

local M = {}

local byte, char, sub, floor = string.byte, string.char, string.sub, math.floor
local concat = table.concat

M.VERSION = 1
M.HEADER_SIZE = 12
M.FRAME_MAX = 65536
M.WINDOW_DEFAULT = 262144
M.WINDOW_MAX = 16777216
M.STREAMS_MAX = 256
M.FIN = 1
-- Frames other than DATA a stream may hold unread (replies, EOFs, the exit).
M.QUEUED_FRAMES_MAX = 64

local T = {
  HELLO = 1, REQUEST = 2, REPLY = 3, DATA = 4, WINDOW = 5, EOF = 6, EXIT = 7,
  CONTROL = 8, ERROR = 9, RESET = 10, GOAWAY = 11,
}
M.TYPES = T
local NAMES = {}
for k, v in pairs(T) do NAMES[v] = k end
M.TYPE_NAMES = NAMES

------------------------------------------------------------------------ JSON

-- lua-cjson when it is there (OpenResty bundles it), else the binding's decoder
-- (jansson) and smolvm.json's encoder.
local json_encode, json_decode, json_null
do
  local ok, cjson = pcall(require, "cjson.safe")
  if ok and type(cjson) == "table" and cjson.decode then
    json_encode, json_decode, json_null = cjson.encode, cjson.decode, cjson.null
  else
    local okc, core = pcall(require, "smolvm.core")
    json_encode = require("smolvm.json").encode
    if okc and type(core) == "table" and core.json_decode then
      json_decode = core.json_decode
    end
  end
end

-- A decoder's null sentinel becomes an absent key (as in the binding: null -> nil).
local function strip_nulls(v, depth)
  if type(v) ~= "table" or depth > 32 then return v end
  for k, x in pairs(v) do
    if x == json_null then v[k] = nil else strip_nulls(x, depth + 1) end
  end
  return v
end

--- decode(text) -> table | nil, why: a JSON object (the only payload the protocol has).
function M.json_decode(text)
  if not json_decode then return nil, "no JSON decoder (install lua-cjson)" end
  local ok, v = pcall(json_decode, text)
  if not ok or type(v) ~= "table" then return nil, "not a JSON object" end
  if json_null ~= nil then strip_nulls(v, 0) end
  return v
end

M.json_encode = json_encode

------------------------------------------------------------------------ framing

local function be32(n)
  return char(floor(n / 16777216) % 256, floor(n / 65536) % 256, floor(n / 256) % 256, n % 256)
end

local function get32(s, i)
  local a, b, c, d = byte(s, i, i + 3)
  return ((a * 256 + b) * 256 + c) * 256 + d
end

--- encode_header{ length=, stream=, type=, flags=, fd= } -> 12 bytes
function M.encode_header(h)
  return be32(h.length or 0) .. be32(h.stream or 0)
      .. char(h.type, h.flags or 0, h.fd or 0, 0)
end

--- frame(type, stream, payload [, flags [, fd]]) -> header .. payload
function M.frame(type, stream, payload, flags, fd)
  payload = payload or ""
  return M.encode_header{ length = #payload, stream = stream, type = type,
                          flags = flags, fd = fd } .. payload
end

--- decode_header(12 bytes) -> { length, stream, type, flags, fd } | nil, why
-- Every check one header allows, in the order of the document's list (the reasons
-- are the C codec's, src/common/agent-proto.c, which the vectors name).
function M.decode_header(s)
  if #s ~= 12 then return nil, "header is not 12 bytes" end
  local length, stream = get32(s, 1), get32(s, 5)
  local ty, flags, fd, reserved = byte(s, 9, 12)
  if length > M.FRAME_MAX then return nil, "length over 65536" end
  if ty == 0 or ty > T.GOAWAY then return nil, "unknown type" end
  if flags > 1 then return nil, "unknown flags" end
  if reserved ~= 0 then return nil, "reserved byte not 0" end
  if fd > 2 then return nil, "fd over 2" end
  if fd ~= 0 and ty ~= T.DATA and ty ~= T.WINDOW and ty ~= T.EOF then
    return nil, "fd set on a frame without fd"
  end
  if stream == 0 and ty ~= T.HELLO and ty ~= T.GOAWAY then
    return nil, "frame on stream 0 other than HELLO/GOAWAY"
  end
  if stream ~= 0 and (ty == T.HELLO or ty == T.GOAWAY) then
    return nil, "HELLO/GOAWAY not on stream 0"
  end
  if ty == T.WINDOW and length ~= 4 then return nil, "WINDOW payload not 4 bytes" end
  if (ty == T.EOF or ty == T.RESET) and length ~= 0 then return nil, "EOF/RESET with a payload" end
  if (ty == T.EXIT or ty == T.ERROR) and flags ~= 1 then return nil, "EXIT/ERROR without FIN" end
  return { length = length, stream = stream, type = ty, flags = flags, fd = fd }
end

--- reader() -> an incremental reader of a byte stream of frames, for transports that
-- deliver arbitrary chunks: r:feed(bytes), then r:next() -> h, payload (a whole frame)
-- | nil (more bytes needed) | false, why (protocol error; the reader stays in error).
-- It holds at most one frame in progress plus what was fed and not yet taken.
function M.reader()
  local r = { buf = "", pos = 1 }
  function r:feed(s)
    if self.err then return end
    if self.pos > 1 then
      self.buf = sub(self.buf, self.pos)
      self.pos = 1
    end
    self.buf = self.buf .. s
  end
  function r:next()
    if self.err then return false, "reader is in error" end
    local avail = #self.buf - self.pos + 1
    if avail < 12 then return nil end
    local h, why = M.decode_header(sub(self.buf, self.pos, self.pos + 11))
    if not h then
      self.err = why
      return false, why
    end
    if avail < 12 + h.length then return nil end
    local p = sub(self.buf, self.pos + 12, self.pos + 11 + h.length)
    self.pos = self.pos + 12 + h.length
    return h, p
  end
  return r
end

------------------------------------------------------------------------ errors

-- Protocol error names to the smolvm codes the Lua API reports (src/lib/agent-client.c).
local CODES = {
  EINVAL = "EINVAL", ENOENT = "ENOENT", EEXIST = "EEXIST", ETIMEDOUT = "ETIMEDOUT",
  EVMM = "EVMM", EIO = "EIO", ENOMEM = "ENOMEM", EPERM = "EPERM", EACCES = "EPERM",
  ENOSPC = "ENOSPC", EFBIG = "ENOSPC", ESTATE = "ESTATE", EBUSY = "ESTATE",
  EPROTO = "EIO", EINTR = "EINTR",
}

--- code(name) -> the smolvm code of a protocol error name; unknown: "EIO".
function M.code(name)
  return CODES[name] or "EIO"
end

-- Text from the guest, for a message: bounded, one line, printable.
local function guest_text(s)
  if type(s) ~= "string" then return nil end
  s = sub(s, 1, 300):gsub("[%c\127]", " ")
  return s
end
M.guest_text = guest_text

------------------------------------------------------------------------ connection

local Conn = {}
Conn.__index = Conn
local Stream = {}
Stream.__index = Stream

local function default_now()
  return floor(os.clock() * 1000)
end

--- new(sock, opts) -> conn. opts (all optional):
--   now       function() -> milliseconds of a monotonic clock (deadlines)
--   cond      function() -> a condition { wait = function(self, ms) end,
--             broadcast = function(self) end } for several coroutines on one connection
--   next_id   function() -> the next stream id (ids must increase on the connection;
--             a pool of connections may share one counter); default: 1, 2, ...
--   client    the name in our hello (default "smolvm.client")
function M.new(sock, opts)
  opts = opts or {}
  local self = setmetatable({
    sock = sock,
    now = opts.now or default_now,
    cond = opts.cond and opts.cond() or nil,
    next_id = opts.next_id,
    client_name = opts.client or ("smolvm.client " .. M.VERSION),
    streams = {},
    nstreams = 0,
    last_id = 0,
    rbuf = {},   -- the partial frame of an interrupted read
    rlen = 0,
    rhead = nil, -- its header, once whole
    reading = false,
    writing = false,
    frames_in = 0,
  }, Conn)
  return self
end

-- Wait for something to change on the connection (another coroutine read a frame or
-- finished reading or writing), at most until the deadline. Without a condition there
-- is nobody else: return at once.
function Conn:_wait(deadline)
  if not self.cond then return true end
  local left = deadline - self.now()
  if left <= 0 then return nil end
  return self.cond:wait(left)
end

function Conn:_wake()
  if self.cond then self.cond:broadcast() end
end

function Conn:_break(code, why)
  if not self.broken then
    self.broken, self.code = why, code
    pcall(self.sock.close, self.sock)
    self:_wake()
  end
end

--- The error of a broken connection.
function Conn:error()
  return "agent connection: " .. tostring(self.broken), self.code or "EIO"
end

function Conn:_protocol_error(why)
  -- Best effort, then close: the peer may learn why.
  pcall(self.sock.send, self.sock,
        M.frame(T.GOAWAY, 0, json_encode({ code = "EPROTO", message = why })))
  self:_break("EIO", "protocol error from the server: " .. why)
end

-- Send bytes; one writer at a time.
function Conn:_send(data, deadline)
  while self.writing do
    if self.broken then return nil, self:error() end
    if not self:_wait(deadline) and self.now() >= deadline then
      return nil, "agent connection: timed out", "ETIMEDOUT"
    end
  end
  if self.broken then return nil, self:error() end
  self.writing = true
  local left = deadline - self.now()
  self.sock:settimeout(left > 1 and left or 1)
  local ok, err = self.sock:send(data)
  self.writing = false
  self:_wake()
  if not ok then
    -- Part of a frame may be on the wire: the connection cannot be used again.
    self:_break("EIO", "send: " .. tostring(err))
    return nil, self:error()
  end
  return true
end

function Conn:_send_frame(ty, stream, payload, flags, fd, deadline)
  return self:_send(M.frame(ty, stream, payload, flags, fd), deadline or (self.now() + 10000))
end

-- Read exactly n more bytes of the frame in progress (kept across timeouts).
function Conn:_fill(n, deadline)
  while self.rlen < n do
    local left = deadline - self.now()
    if left <= 0 then return nil, "timeout" end
    self.sock:settimeout(left)
    local data, err, partial = self.sock:receive(n - self.rlen)
    data = data or partial
    if data and #data > 0 then
      self.rbuf[#self.rbuf + 1] = data
      self.rlen = self.rlen + #data
    end
    if err then
      if err == "timeout" then return nil, "timeout" end
      return nil, err
    end
  end
  local s = concat(self.rbuf)
  self.rbuf, self.rlen = {}, 0
  return s
end

-- Read one frame and dispatch it. true | nil, "timeout" | nil, why (broken).
function Conn:_pump(deadline)
  if not self.rhead then
    local hdr, err = self:_fill(12, deadline)
    if not hdr then
      if err == "timeout" then return nil, "timeout" end
      self:_break("EIO", err == "closed" and "the server closed the connection" or err)
      return nil, self.broken
    end
    local h, why = M.decode_header(hdr)
    if not h then
      self:_protocol_error(why)
      return nil, self.broken
    end
    self.rhead = h
  end
  local h = self.rhead
  local payload = ""
  if h.length > 0 then
    local err
    payload, err = self:_fill(h.length, deadline)
    if not payload then
      if err == "timeout" then return nil, "timeout" end
      self:_break("EIO", err == "closed" and "the server closed the connection" or err)
      return nil, self.broken
    end
  end
  self.rhead = nil
  self:_dispatch(h, payload)
  return true
end

function Conn:_dispatch(h, p)
  local ty = h.type
  self.frames_in = self.frames_in + 1
  if h.stream == 0 then
    if ty == T.GOAWAY then
      local j = M.json_decode(p) or {}
      local code = j.code == "EVMM" and "EVMM" or M.code(j.code)
      self:_break(code, guest_text(j.message) or "the server closed the connection")
    elseif ty == T.HELLO and not self.hello then
      local j = M.json_decode(p)
      if not j then return self:_protocol_error("the server's hello is not a JSON object") end
      self.hello = j
      self:_wake()
    else
      self:_protocol_error("a second HELLO")
    end
    return
  end
  if ty == T.REQUEST or ty == T.CONTROL or ty == T.RESET then
    return self:_protocol_error("a frame type a server may not send")
  end
  local st = self.streams[h.stream]
  if not st or st.fin_seen then return end -- ended or reset: may have been in flight
  if ty == T.WINDOW then
    local n = get32(p, 1)
    st.send_window = st.send_window + n
    if st.send_window > M.WINDOW_MAX then
      return self:_protocol_error("WINDOW over 16 MiB")
    end
    self:_wake()
    return
  end
  if ty == T.DATA then
    if h.length > st.recv_window then
      return self:_protocol_error("DATA beyond the window the client granted")
    end
    st.recv_window = st.recv_window - h.length
  else
    st.nframes = st.nframes + 1
    if st.nframes > M.QUEUED_FRAMES_MAX then
      return self:_protocol_error("too many frames queued on one stream")
    end
  end
  if h.flags == M.FIN then st.fin_seen = true end
  local q = st.queue
  q[q.tail] = { h = h, p = p }
  q.tail = q.tail + 1
  self:_wake()
end

-- Wait until pred() is true (reading frames meanwhile), at most until the deadline.
-- true | nil, msg, code.
function Conn:_until(pred, deadline)
  while not pred() do
    if self.broken then return nil, self:error() end
    if self.now() >= deadline then return nil, "agent connection: timed out", "ETIMEDOUT" end
    if not self.reading then
      self.reading = true
      local ok, err = self:_pump(deadline)
      self.reading = false
      self:_wake()
      if not ok and err ~= "timeout" then return nil, self:error() end
    else
      self:_wait(deadline)
    end
  end
  return true
end

--- conn:handshake{ ready = true, timeout = ms } -> hello | nil, msg, code
-- Our HELLO, then the server's. A supervisor answers once the guest is ready, or at
-- once with ready = false (for status, keep, poweroff).
function Conn:handshake(opts)
  opts = opts or {}
  local deadline = self.now() + (opts.timeout or 30000)
  local hello = { version = M.VERSION, client = self.client_name }
  if opts.ready == false then hello.ready = false end
  local ok, msg, code = self:_send_frame(T.HELLO, 0, json_encode(hello), 0, 0, deadline)
  if not ok then return nil, msg, code end
  ok, msg, code = self:_until(function() return self.hello ~= nil end, deadline)
  if not ok then return nil, msg, code end
  if self.hello.version ~= M.VERSION then
    self:_break("EIO", "the server speaks another agent protocol version")
    return nil, self:error()
  end
  return self.hello
end

--- conn:request(req [, window]) -> stream | nil, msg, code: REQUEST req (a table, sent
-- as JSON) on a new stream granting `window` bytes (default 256 KiB).
function Conn:request(req, window)
  if self.broken then return nil, self:error() end
  if self.nstreams >= M.STREAMS_MAX then
    return nil, "agent connection: 256 streams already open", "ENOSPC"
  end
  window = window or M.WINDOW_DEFAULT
  if window < 1 or window > M.WINDOW_MAX then error("request: window out of range", 2) end
  local id
  if self.next_id then id = self.next_id() else id = self.last_id + 1 end
  if id <= self.last_id or id > 4294967295 then
    return nil, "agent connection: stream ids exhausted", "ENOSPC"
  end
  self.last_id = id
  req.window = window
  local text = json_encode(req)
  if #text > M.FRAME_MAX then return nil, "request larger than 65536 bytes", "EINVAL" end
  local st = setmetatable({
    conn = self, id = id, window = window,
    recv_window = window, consumed = 0,
    send_window = 0, queue = { head = 1, tail = 1 }, nframes = 0,
    fin_seen = false, done = false,
  }, Stream)
  self.streams[id] = st
  self.nstreams = self.nstreams + 1
  local ok, msg, code = self:_send_frame(T.REQUEST, id, text)
  if not ok then
    self:_forget(st)
    return nil, msg, code
  end
  return st
end

function Conn:_forget(st)
  if self.streams[st.id] == st then
    self.streams[st.id] = nil
    self.nstreams = self.nstreams - 1
  end
end

--- conn:idle() -> no stream is open (the connection may go back to a pool).
function Conn:idle()
  return self.nstreams == 0 and not self.broken and not self.rhead and self.rlen == 0
end

--- conn:call(req [, timeout_ms]) -> reply | nil, msg, code: a request answered by one
-- REPLY (ps, stat, status, keep, ...).
function Conn:call(req, timeout)
  local st, msg, code = self:request(req)
  if not st then return nil, msg, code end
  local ev
  ev, msg, code = st:next(timeout or 30000)
  st:close()
  if not ev then return nil, msg, code end
  if ev.kind ~= "reply" then return nil, "agent: expected a reply", "EIO" end
  return ev.json
end

function Conn:close()
  for _, st in pairs(self.streams) do st.done = true end
  self.streams, self.nstreams = {}, 0
  if not self.broken then
    self.broken, self.code = "closed", "EIO"
    pcall(self.sock.close, self.sock)
  end
  self:_wake()
end

------------------------------------------------------------------------ streams

local KINDS = { [T.REPLY] = "reply", [T.DATA] = "data", [T.EOF] = "eof", [T.EXIT] = "exit" }

-- Credit what the caller consumed once it is half the window.
function Stream:_credit()
  if self.consumed >= self.window / 2 and not self.done then
    local n = self.consumed
    self.consumed = 0
    self.recv_window = self.recv_window + n
    return self.conn:_send_frame(T.WINDOW, self.id, be32(n))
  end
  return true
end

--- st:next(timeout_ms) -> event | nil, msg, code. Events:
--   { kind = "reply", json = {...}, fin = bool }
--   { kind = "data", fd = 1|2, data = bytes }   (its bytes count as consumed)
--   { kind = "eof", fd = n, fin = bool }
--   { kind = "exit", json = { exit_code=, signal=, timed_out=, duration_ms= }, fin = true }
-- An ERROR frame is returned as nil, message, code and ends the stream.
function Stream:next(timeout)
  local conn = self.conn
  local deadline = conn.now() + (timeout or 30000)
  local ok, msg, code = self:_credit()
  if not ok then return nil, msg, code end
  local q = self.queue
  if q.head == q.tail then
    if self.done then return nil, "agent stream: already finished", "ESTATE" end
    ok, msg, code = conn:_until(function() return q.head ~= q.tail end, deadline)
    if not ok then return nil, msg, code end
  end
  local f = q[q.head]
  q[q.head] = nil
  q.head = q.head + 1
  local h = f.h
  local fin = h.flags == M.FIN
  if fin then
    self.done = true
    conn:_forget(self)
  end
  if h.type == T.DATA then
    self.consumed = self.consumed + h.length
    return { kind = "data", fd = h.fd, data = f.p }
  end
  self.nframes = self.nframes - 1
  if h.type == T.EOF then return { kind = "eof", fd = h.fd, fin = fin } end
  local j = M.json_decode(f.p)
  if not j then
    self.done = true
    conn:_forget(self)
    return nil, "agent: a reply that is not a JSON object", "EIO"
  end
  if h.type == T.ERROR then
    self.done = true
    conn:_forget(self)
    return nil, guest_text(j.message) or "failed", M.code(j.code)
  end
  local kind = KINDS[h.type]
  if not kind then
    self.done = true
    conn:_forget(self)
    return nil, "agent: unexpected frame type " .. tostring(h.type) .. " on a stream", "EIO"
  end
  return { kind = kind, json = j, fin = fin }
end

--- st:set_send_window(n): what the server's first REPLY said it takes.
function Stream:set_send_window(n)
  if type(n) == "number" and n >= 0 and n <= M.WINDOW_MAX then self.send_window = floor(n) end
end

--- st:write(fd, data [, timeout_ms]) -> true | nil, msg, code: DATA on fd in frames
-- within the window the server granted, waiting for more window meanwhile.
function Stream:write(fd, data, timeout)
  local conn = self.conn
  local deadline = conn.now() + (timeout or 3600000)
  local pos, len = 1, #data
  while pos <= len do
    if self.send_window <= 0 then
      local ok, msg, code = conn:_until(function()
        return self.send_window > 0 or self.fin_seen or self.queue.head ~= self.queue.tail
      end, deadline)
      if not ok then return nil, msg, code end
      if self.send_window <= 0 then
        return nil, "the guest ended the stream before taking all input", "ESTATE"
      end
    end
    local n = len - pos + 1
    if n > self.send_window then n = self.send_window end
    if n > M.FRAME_MAX then n = M.FRAME_MAX end
    local ok, msg, code = conn:_send_frame(T.DATA, self.id, sub(data, pos, pos + n - 1), 0, fd,
                                           deadline)
    if not ok then return nil, msg, code end
    self.send_window = self.send_window - n
    pos = pos + n
  end
  return true
end

--- st:eof(fd) -> true | nil, msg, code
function Stream:eof(fd)
  return self.conn:_send_frame(T.EOF, self.id, "", 0, fd)
end

--- st:control(tbl) -> true | nil, msg, code (signal, resize)
function Stream:control(obj)
  return self.conn:_send_frame(T.CONTROL, self.id, json_encode(obj))
end

--- st:close(): done with the stream; one the server has not finished is RESET (it
-- then sends nothing more on it).
function Stream:close()
  local conn = self.conn
  if not self.done then
    self.done = true
    if not conn.broken and not self.fin_seen then conn:_send_frame(T.RESET, self.id, "") end
  end
  self.queue = { head = 1, tail = 1 }
  conn:_forget(self)
end

M.Conn = Conn
M.Stream = Stream
return M
