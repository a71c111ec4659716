-- SPDX-License-Identifier: MIT
-- smolvm.client, the pure-Lua agent protocol client (what nginx speaks to a VM's
-- supervisor): the shared test vectors (tests/fixtures/agent-vectors.json, the ones
-- the C codec is checked against in tests/unit/test_agent_proto.c), then connections
-- over a socket with the cosocket interface whose other end is a scripted server.
local h = require "helpers"
local core = require "smolvm.core"

local function load_client(without_cjson)
  package.loaded["smolvm.client"] = nil
  local saved_loaded, saved_preload = package.loaded["cjson.safe"], package.preload["cjson.safe"]
  if without_cjson then
    package.loaded["cjson.safe"] = nil
    package.preload["cjson.safe"] = function() error("cjson hidden by the test") end
  end
  local c = require "smolvm.client"
  package.loaded["cjson.safe"], package.preload["cjson.safe"] = saved_loaded, saved_preload
  package.loaded["smolvm.client"] = nil
  return c
end

local client = load_client(false)

local function unhex(s)
  assert(#s % 2 == 0, "odd hex")
  return (s:gsub("..", function(x) return string.char(tonumber(x, 16)) end))
end

local src = os.getenv("SMOLVM_SOURCE_DIR") or "../.."
local vectors = assert(core.json_decode(h.read(src .. "/tests/fixtures/agent-vectors.json")))
local by_name = {}
for _, f in ipairs(vectors.frames) do by_name[f.name] = f end

describe("smolvm.client framing, against the shared vectors", function()
  it("decodes every valid frame to its fields and encodes it back", function()
    local seen = {}
    assert.is_true(#vectors.frames >= 11)
    for _, f in ipairs(vectors.frames) do
      local hdr, payload = unhex(f.header_hex), unhex(f.payload_hex)
      local got, why = client.decode_header(hdr)
      assert(got, f.name .. " refused: " .. tostring(why))
      assert.same({ f.length, f.stream, f.type, f.flags, f.fd },
                  { got.length, got.stream, got.type, got.flags, got.fd }, f.name)
      assert.equal(f.length, #payload)
      assert.equal(f.type_name, client.TYPE_NAMES[got.type])
      assert.equal(hdr, client.encode_header(got), f.name)
      assert.equal(hdr .. payload, client.frame(got.type, got.stream, payload, got.flags, got.fd))
      if f.payload_text then assert.equal(f.payload_text, payload) end
      seen[got.type] = true
    end
    for t = 1, 11 do assert(seen[t], "no valid vector of type " .. client.TYPE_NAMES[t]) end
  end)

  it("refuses every invalid header with the codec's reason", function()
    assert.is_true(#vectors.invalid >= 10)
    for _, v in ipairs(vectors.invalid) do
      local got, why = client.decode_header(unhex(v.hex))
      assert.is_nil(got, v.name)
      assert.equal(v.reason, why, v.name)
      local r = client.reader()
      r:feed(unhex(v.hex))
      local ok, rwhy = r:next()
      assert.is_false(ok)
      assert.equal(v.reason, rwhy)
      assert.is_false((r:next())) -- and stays refused
    end
  end)

  it("reads byte streams split at awkward points into the same frames", function()
    assert.is_true(#vectors.streams >= 3)
    for _, s in ipairs(vectors.streams) do
      local r, got, failed = client.reader(), 0, nil
      for _, chunk in ipairs(s.chunks_hex) do
        r:feed(unhex(chunk))
        while not failed do
          local fh, p = r:next()
          if fh == nil then break end
          if fh == false then failed = p break end
          got = got + 1
          local want = by_name[s.frames[got]]
          assert(want, s.name .. ": more frames than expected")
          assert.equal(unhex(want.header_hex), client.encode_header(fh), s.name)
          assert.equal(unhex(want.payload_hex), p, s.name)
        end
      end
      assert.equal(#s.frames, got, s.name)
      assert.equal(s.error, failed, s.name)
    end
  end)
end)

------------------------------------------------------------------------ a fake server

-- A socket with the cosocket interface; its peer is a scripted server. Bytes the
-- client sends are parsed into frames and handed to server(peer, h, payload, json);
-- what the server pushes is what receive() returns. receive(n) with too few bytes
-- returns nil, "timeout", partial, as a cosocket does when its timeout passes. Each
-- call advances the fake clock by 1 ms.
local function fake(server, cl)
  cl = cl or client
  local peer = { pending = "", sent = {}, closed = false, clock = 0, receives = 0 }
  local reader = cl.reader()
  function peer.now() return peer.clock end
  function peer:push(ty, stream, payload, flags, fd)
    if type(payload) == "table" then payload = cl.json_encode(payload) end
    self.pending = self.pending .. cl.frame(ty, stream, payload or "", flags, fd)
  end
  function peer:push_raw(bytes) self.pending = self.pending .. bytes end
  local sock = {}
  function sock:settimeout() end
  function sock:close() peer.closed = true return true end
  function sock:send(data)
    if peer.closed then return nil, "closed" end
    reader:feed(data)
    while true do
      local fh, p = reader:next()
      if not fh then assert(fh == nil, "the client sent a bad frame: " .. tostring(p)) break end
      local j
      if fh.type ~= client.TYPES.DATA and fh.type ~= client.TYPES.WINDOW and #p > 0 then
        j = assert(cl.json_decode(p))
      end
      peer.sent[#peer.sent + 1] = { h = fh, p = p, json = j }
      if server then server(peer, fh, p, j) end
    end
    return #data
  end
  function sock:receive(n)
    peer.clock = peer.clock + 1
    peer.receives = peer.receives + 1
    if #peer.pending < n and peer.produce then peer:produce() end
    if #peer.pending >= n then
      local d = peer.pending:sub(1, n)
      peer.pending = peer.pending:sub(n + 1)
      return d
    end
    local part = peer.pending
    peer.pending = ""
    if peer.eof then return nil, "closed", part end
    return nil, "timeout", part
  end
  peer.sock = sock
  return peer, cl.new(sock, { now = peer.now })
end

local T = client.TYPES

-- A server that answers the hello like a supervisor, and exec with a pid, output and
-- an exit.
local function supervisor(peer, fh, p, j)
  if fh.type == T.HELLO then
    peer:push(T.HELLO, 0, { version = 1, vm = "vm-test", transport = "agent", ready = true })
  elseif fh.type == T.REQUEST and j.op == "exec" then
    peer:push(T.REPLY, fh.stream, { pid = 100 + fh.stream, window = 262144 })
    peer:push(T.DATA, fh.stream, "out " .. j.cmd .. "\n", 0, 1)
    peer:push(T.DATA, fh.stream, "err\n", 0, 2)
    peer:push(T.EOF, fh.stream, "", 0, 1)
    peer:push(T.EOF, fh.stream, "", 0, 2)
    peer:push(T.EXIT, fh.stream,
              '{"exit_code":3,"signal":null,"timed_out":false,"duration_ms":5}', client.FIN)
  end
end

local function events(st)
  local out = {}
  repeat
    local ev, msg, code = st:next(1000)
    assert(ev, tostring(msg) .. " " .. tostring(code))
    out[#out + 1] = ev
  until st.done
  return out
end

describe("smolvm.client connections", function()
  for _, variant in ipairs({ "cjson", "the binding's JSON" }) do
    it("handshakes and runs a command (" .. variant .. ")", function()
      local cl = load_client(variant ~= "cjson")
      local peer, conn = fake(supervisor, cl)
      local hello = assert(conn:handshake{ ready = true, timeout = 1000 })
      assert.equal("vm-test", hello.vm)
      local mine = peer.sent[1]
      assert.equal(T.HELLO, mine.h.type)
      assert.equal(1, mine.json.version)
      assert.is_nil(mine.json.ready) -- waits for the guest: the default
      local st = assert(conn:request({ op = "exec", cmd = "x" }))
      assert.equal(1, st.id)
      assert.equal(262144, peer.sent[2].json.window)
      local evs = events(st)
      assert.same({ "reply", "data", "data", "eof", "eof", "exit" },
                  (function() local k = {} for i, e in ipairs(evs) do k[i] = e.kind end return k end)())
      assert.equal(101, evs[1].json.pid)
      assert.equal("out x\n", evs[2].data)
      assert.equal(1, evs[2].fd)
      assert.equal(2, evs[3].fd)
      assert.equal(3, evs[6].json.exit_code)
      assert.is_nil(evs[6].json.signal) -- null is an absent key, with either decoder
      assert.is_true(conn:idle())
      local st2 = assert(conn:request({ op = "exec", cmd = "y" }))
      assert.equal(2, st2.id)
    end)
  end

  it("asks for an immediate hello with ready = false", function()
    local peer, conn = fake(supervisor)
    assert(conn:handshake{ ready = false })
    assert.is_false(peer.sent[1].json.ready)
  end)

  it("reports a GOAWAY in place of the hello (the guest failed to boot)", function()
    local peer, conn = fake(function(peer, fh)
      if fh.type == T.HELLO then
        peer:push(T.GOAWAY, 0, { code = "EVMM", message = "the vm stopped before it was ready" })
      end
    end)
    local ok, msg, code = conn:handshake{ timeout = 1000 }
    assert.is_nil(ok)
    assert.equal("EVMM", code)
    assert.matches("the vm stopped before it was ready", msg, 1, true)
    assert.truthy(conn.broken)
    assert.is_true(peer.closed)
    local st, m2, c2 = conn:request({ op = "ps" })
    assert.is_nil(st)
    assert.equal("EVMM", c2)
    assert.truthy(m2)
  end)

  it("times out a hello that does not come, and keeps the connection", function()
    local _, conn = fake(nil)
    local ok, msg, code = conn:handshake{ timeout = 20 }
    assert.is_nil(ok)
    assert.equal("ETIMEDOUT", code)
    assert.truthy(msg)
    assert.falsy(conn.broken)
  end)

  it("multiplexes streams: frames for one are queued while another is read", function()
    local peer, conn = fake(supervisor)
    assert(conn:handshake{})
    local a = assert(conn:request({ op = "exec", cmd = "a" }))
    local b = assert(conn:request({ op = "exec", cmd = "b" }))
    -- All of a's and b's frames are on the wire; reading b first queues a's.
    local eb = events(b)
    assert.equal("out b\n", eb[2].data)
    assert.equal(102, eb[1].json.pid)
    local ea = events(a)
    assert.equal("out a\n", ea[2].data)
    assert.equal(101, ea[1].json.pid)
    assert.is_true(conn:idle())
  end)

  it("gives stream ids from a shared counter (a pool of connections)", function()
    local n = 40
    local function next_id() n = n + 1 return n end
    local peer = fake(supervisor)
    local conn = client.new(peer.sock, { now = peer.now, next_id = next_id })
    assert(conn:handshake{})
    assert.equal(41, assert(conn:request({ op = "exec", cmd = "a" })).id)
    n = 99
    assert.equal(100, assert(conn:request({ op = "exec", cmd = "a" })).id)
    n = 10 -- ids must increase on a connection
    local st, _, code = conn:request({ op = "exec", cmd = "a" })
    assert.is_nil(st)
    assert.equal("ENOSPC", code)
  end)

  it("reads the two-and-a-half vector stream split as it is, over a socket", function()
    local s
    for _, v in ipairs(vectors.streams) do if v.name == "two-and-a-half" then s = v end end
    assert(s)
    local ids = { 1, 4, 4294967294 }
    local i = 0
    local peer = fake(nil)
    local conn = client.new(peer.sock, { now = peer.now,
                                         next_id = function() i = i + 1 return ids[i] end })
    conn.hello = {}
    local st1 = assert(conn:request({ op = "exec", cmd = "x" }))
    local st4 = assert(conn:request({ op = "exec", cmd = "y" }))
    local stb = assert(conn:request({ op = "exec", cmd = "z" }))
    local chunks = {}
    for _, c in ipairs(s.chunks_hex) do chunks[#chunks + 1] = unhex(c) end
    function peer:produce()
      if #chunks > 0 then self.pending = self.pending .. table.remove(chunks, 1) end
    end
    local e4 = events(st4)
    assert.equal("eof", e4[1].kind)
    assert.is_true(e4[1].fin)
    local eb = assert(stb:next(1000))
    assert.equal(unhex(by_name["data-stderr-binary"].payload_hex), eb.data)
    assert.equal(2, eb.fd)
    local e1 = events(st1)
    assert.same({ "reply", "data", "exit" }, { e1[1].kind, e1[2].kind, e1[3].kind })
    assert.equal(123, e1[1].json.pid)
    assert.equal("hi\n", e1[2].data)
  end)

  it("keeps half a frame across a timeout", function()
    local peer, conn = fake(supervisor)
    assert(conn:handshake{})
    local st = assert(conn:request({ op = "cat" }))
    local frame = client.frame(T.DATA, st.id, "0123456789", 0, 1)
    peer:push_raw(frame:sub(1, 7))
    local ev, _, code = st:next(3)
    assert.is_nil(ev)
    assert.equal("ETIMEDOUT", code)
    peer:push_raw(frame:sub(8, 15))
    assert.is_nil((st:next(3)))
    peer:push_raw(frame:sub(16))
    ev = assert(st:next(3))
    assert.equal("0123456789", ev.data)
    assert.falsy(conn.broken)
  end)

  it("returns a stream's ERROR with the C client's codes", function()
    local cases = { ENOENT = "ENOENT", EACCES = "EPERM", EPROTO = "EIO", EBUSY = "ESTATE",
                    EFBIG = "ENOSPC", WHATEVER = "EIO" }
    for name, want in pairs(cases) do
      local _, conn = fake(function(peer, fh, _, j)
        if fh.type == T.HELLO then peer:push(T.HELLO, 0, { version = 1 }) end
        if fh.type == T.REQUEST then
          peer:push(T.ERROR, fh.stream, { code = name, message = "cwd '/nope':\n no\27[31m" },
                    client.FIN)
        end
      end)
      assert(conn:handshake{})
      local st = assert(conn:request({ op = "exec", cmd = "x", cwd = "/nope" }))
      local ev, msg, code = st:next(100)
      assert.is_nil(ev)
      assert.equal(want, code, name)
      assert.equal("cwd '/nope':  no [31m", msg) -- control characters are not passed on
      assert.is_true(st.done)
      assert.is_true(conn:idle())
    end
  end)

  it("honours its window and grants more as output is consumed", function()
    local total, window = 1024 * 1024, 65536
    local sent, outstanding, max_outstanding, grants = 0, 0, 0, 0
    local stream_id
    local peer, conn = fake(function(peer, fh, p, j)
      if fh.type == T.HELLO then peer:push(T.HELLO, 0, { version = 1 }) end
      if fh.type == T.REQUEST then
        stream_id = fh.stream
        outstanding = 0
        assert.equal(window, j.window)
        peer:push(T.REPLY, fh.stream, { pid = 7 })
      end
      if fh.type == T.WINDOW then
        local n = ((p:byte(1) * 256 + p:byte(2)) * 256 + p:byte(3)) * 256 + p:byte(4)
        outstanding = outstanding - n
        grants = grants + 1
      end
    end)
    -- The server writes whenever the client wants bytes, as much as the window allows,
    -- in frames of at most 16 KiB (a guest's pipe).
    function peer:produce()
      if not stream_id then return end
      while sent < total and outstanding < window do
        local n = math.min(16384, window - outstanding, total - sent)
        local chunk = string.rep(string.char(sent % 251), n)
        self:push(T.DATA, stream_id, chunk, 0, 1)
        sent, outstanding = sent + n, outstanding + n
        if outstanding > max_outstanding then max_outstanding = outstanding end
      end
      if sent == total and not self.finished then
        self.finished = true
        self:push(T.EXIT, stream_id, { exit_code = 0 }, client.FIN)
      end
    end
    assert(conn:handshake{})
    local st = assert(conn:request({ op = "exec", cmd = "yes" }, window))
    local got, bad = 0, nil
    while true do
      local ev = assert(st:next(1000))
      if ev.kind == "data" then
        if not bad and ev.data:byte(1) ~= got % 251 then bad = got end
        got = got + #ev.data
        -- What the client holds never exceeds what it granted.
        local queued = 0
        for i = st.queue.head, st.queue.tail - 1 do
          if st.queue[i].h.type == T.DATA then queued = queued + st.queue[i].h.length end
        end
        assert.is_true(queued <= window)
        assert.is_true(st.recv_window >= 0)
      end
      if ev.kind == "exit" then break end
    end
    assert.equal(total, got)
    assert.is_nil(bad)
    assert.is_true(max_outstanding <= window)
    assert.is_true(grants >= total / window) -- credited as consumed, not all at the end
  end)

  it("treats DATA past the window as a protocol error", function()
    -- One frame too big, and two that together are (read while the client waits for
    -- another stream, so nothing was credited in between).
    for _, sizes in ipairs({ { 1025 }, { 1000, 100 } }) do
      local peer, conn = fake(function(peer, fh, _, j)
        if fh.type == T.HELLO then peer:push(T.HELLO, 0, { version = 1 }) end
        if fh.type == T.REQUEST and j.op == "exec" then
          for _, n in ipairs(sizes) do peer:push(T.DATA, fh.stream, string.rep("x", n), 0, 1) end
        end
      end)
      assert(conn:handshake{})
      local st = assert(conn:request({ op = "exec", cmd = "x" }, 1024))
      local other = assert(conn:request({ op = "ps" }))
      local ev, msg, code = other:next(100)
      assert.is_nil(ev)
      assert.equal("EIO", code)
      assert.matches("DATA beyond the window", msg, 1, true)
      local last = peer.sent[#peer.sent]
      assert.equal(T.GOAWAY, last.h.type)
      assert.equal("EPROTO", last.json.code)
      assert.is_true(peer.closed)
      ev, msg, code = st:next(100)
      if ev then ev, msg, code = st:next(100) end -- the first frame may have been fine
      assert.is_nil(ev)
      assert.equal("EIO", code)
    end
  end)

  it("refuses a bad header from the server, and frames a server may not send", function()
    for _, bad in ipairs({ unhex("000100010000000104000100"), -- length over 65536
                           client.frame(T.RESET, 1, ""), client.frame(T.HELLO, 0, "{}") }) do
      local peer, conn = fake(function(peer, fh)
        if fh.type == T.HELLO then peer:push(T.HELLO, 0, { version = 1 }) end
      end)
      assert(conn:handshake{})
      local st = assert(conn:request({ op = "ps" }))
      peer:push_raw(bad)
      local ev, msg, code = st:next(100)
      assert.is_nil(ev)
      assert.equal("EIO", code)
      assert.matches("protocol error", msg, 1, true)
      assert.equal(T.GOAWAY, peer.sent[#peer.sent].h.type)
    end
  end)

  it("bounds the frames one stream may queue", function()
    local peer, conn = fake(function(peer, fh)
      if fh.type == T.HELLO then peer:push(T.HELLO, 0, { version = 1 }) end
      if fh.type == T.REQUEST then
        for _ = 1, client.QUEUED_FRAMES_MAX + 1 do peer:push(T.REPLY, fh.stream, {}) end
      end
    end)
    assert(conn:handshake{})
    local a = assert(conn:request({ op = "x" }))
    local b = assert(conn:request({ op = "y" }))
    -- Reading b reads past all of a's replies, which a never takes.
    local ev, msg = b:next(1000)
    assert.is_nil(ev)
    assert.matches("too many frames", msg, 1, true)
    assert.truthy(conn.broken)
    assert(a)
  end)

  it("writes stdin within the window the server grants", function()
    local frames, window = {}, 100
    local peer, conn = fake(function(peer, fh, p)
      if fh.type == T.HELLO then peer:push(T.HELLO, 0, { version = 1 }) end
      if fh.type == T.REQUEST then peer:push(T.REPLY, fh.stream, { pid = 9, window = 100 }) end
      if fh.type == T.DATA then
        assert.equal(0, fh.fd)
        assert.is_true(#p <= window, "DATA past the granted window")
        window = window - #p
        frames[#frames + 1] = p
        if window == 0 then
          window = window + 70000
          peer:push(T.WINDOW, fh.stream, "\0\1\17\112") -- 70000
        end
      end
    end)
    assert(conn:handshake{})
    local st = assert(conn:request({ op = "exec", cmd = "cat", stdin = true }))
    local ev = assert(st:next(100))
    st:set_send_window(ev.json.window)
    local data = string.rep("abcdefghij", 8000) -- 80000 bytes
    assert(st:write(0, data, 1000))
    assert.equal(data, table.concat(frames))
    assert.equal(100, #frames[1])
    for _, f in ipairs(frames) do assert.is_true(#f <= client.FRAME_MAX) end
    assert(st:eof(0))
    assert.equal(T.EOF, peer.sent[#peer.sent].h.type)
  end)

  it("sends RESET for a stream closed before its end, and nothing after its end", function()
    local peer, conn = fake(supervisor)
    assert(conn:handshake{})
    local st = assert(conn:request({ op = "exec", cmd = "x" }))
    assert(st:next(100))
    st:close()
    local last = peer.sent[#peer.sent]
    assert.equal(T.RESET, last.h.type)
    assert.equal(st.id, last.h.stream)
    assert.is_true(conn:idle())
    -- The rest of its frames are dropped; another stream works.
    local st2 = assert(conn:request({ op = "exec", cmd = "y" }))
    local e2 = events(st2)
    assert.equal("out y\n", e2[2].data)
    local n = #peer.sent
    st2:close()
    assert.equal(n, #peer.sent)
  end)

  it("sends CONTROL frames (signal, resize)", function()
    local peer, conn = fake(supervisor)
    assert(conn:handshake{})
    local st = assert(conn:request({ op = "exec", cmd = "x" }))
    assert(st:control{ op = "signal", signal = "TERM" })
    local last = peer.sent[#peer.sent]
    assert.equal(T.CONTROL, last.h.type)
    assert.same({ op = "signal", signal = "TERM" }, last.json)
  end)

  it("lets several coroutines share a connection, one reading at a time", function()
    -- A little scheduler: receive() without data yields, a condition wait yields.
    local waiting = {}
    local function cond()
      return {
        wait = function() waiting[#waiting + 1] = coroutine.running(); coroutine.yield("cond") end,
        broadcast = function() end,
      }
    end
    local peer = fake(supervisor)
    local reading = 0
    local base_receive = peer.sock.receive
    peer.sock.receive = function(self, n)
      reading = reading + 1
      assert.equal(1, reading, "two readers at once")
      while #peer.pending < n do coroutine.yield("io") end
      local d = base_receive(self, n)
      reading = reading - 1
      return d
    end
    local conn = client.new(peer.sock, { now = peer.now, cond = cond })
    local held = {} -- the server's frames, released one scheduler round at a time
    local release_one = function()
      if #held > 0 then peer.pending = peer.pending .. table.remove(held, 1) end
    end
    local results = {}
    local function task(name)
      return coroutine.create(function()
        local st = assert(conn:request({ op = "exec", cmd = name }))
        results[name] = events(st)
      end)
    end
    conn.hello = {}
    -- What the server answers is held back and dripped, a frame per round.
    local base_send = peer.sock.send
    peer.sock.send = function(self, data)
      local n = base_send(self, data)
      local r = client.reader()
      r:feed(peer.pending)
      peer.pending = ""
      while true do
        local fh, p = r:next()
        if not fh then break end
        held[#held + 1] = client.frame(fh.type, fh.stream, p, fh.flags, fh.fd)
      end
      return n
    end
    local a, b = task("a"), task("b")
    local tasks = { a, b }
    for _ = 1, 200 do
      release_one()
      for _, t in ipairs(tasks) do
        if coroutine.status(t) == "suspended" then
          local ok, err = coroutine.resume(t)
          assert(ok, err)
        end
      end
      if coroutine.status(a) == "dead" and coroutine.status(b) == "dead" then break end
    end
    assert.equal("dead", coroutine.status(a))
    assert.equal("dead", coroutine.status(b))
    assert.equal("out a\n", results.a[2].data)
    assert.equal("out b\n", results.b[2].data)
    assert.is_true(#waiting > 0) -- one of them did wait while the other read
  end)
end)
