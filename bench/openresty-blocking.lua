#!/usr/bin/env luajit
-- SPDX-License-Identifier: MIT
-- How long smolvm's C calls hold the calling thread, for docs/openresty.md ("What
-- blocks"). For N sandboxes (network "none", 256 MiB, 1 vCPU):
--   direct: the library's blocking calls as a plain Lua host makes them
--           (vm_create, start_begin, start_finish, stop, delete);
--   jobs:   what the same calls cost the event loop inside nginx (smolvm.ngx): making
--           the job (copying its arguments, its socket, a thread) and taking its
--           result. The wait in between is for a socket (here poll(2) through the FFI,
--           in nginx a cosocket) and holds nothing. Readiness is the supervisor's hello
--           read by smolvm.client over an FFI unix socket, as nginx does over a
--           cosocket, and one `true` runs through it.
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/luajit/?.so;;" \
--     SMOLVM_STATE_DIR=/tmp/bench-state luajit bench/openresty-blocking.lua [N]
local core = require "smolvm.core"
local client = require "smolvm.client"
local ffi = require "ffi"

ffi.cdef [[
  struct smolvm_bench_sockaddr_un { unsigned short sun_family; char sun_path[108]; };
  struct smolvm_bench_pollfd { int fd; short events; short revents; };
  struct smolvm_bench_timespec { long tv_sec; long tv_nsec; };
  int socket(int, int, int);
  int connect(int, const void *, unsigned int);
  int poll(struct smolvm_bench_pollfd *, unsigned long, int);
  long read(int, void *, unsigned long);
  long write(int, const void *, unsigned long);
  int close(int);
  int clock_gettime(int, struct smolvm_bench_timespec *);
]]

local N = tonumber(arg[1]) or 5
local ts = ffi.new("struct smolvm_bench_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

-- A blocking unix socket with the cosocket interface smolvm.client takes.
local Sock = {}
Sock.__index = Sock
local function unix_connect(path)
  local fd = ffi.C.socket(1, 1, 0) -- AF_UNIX, SOCK_STREAM
  local sa = ffi.new("struct smolvm_bench_sockaddr_un")
  sa.sun_family = 1
  ffi.copy(sa.sun_path, path)
  if ffi.C.connect(fd, sa, ffi.sizeof(sa)) ~= 0 then
    ffi.C.close(fd)
    return nil, "connect failed"
  end
  return setmetatable({ fd = fd, ms = 30000 }, Sock)
end
function Sock:settimeout(ms) self.ms = ms end
function Sock:close() if self.fd then ffi.C.close(self.fd) self.fd = nil end return true end
function Sock:send(data)
  local n = ffi.C.write(self.fd, data, #data)
  if n ~= #data then return nil, "write failed" end
  return n
end
function Sock:receive(n)
  local parts, have = {}, 0
  local buf = ffi.new("char[?]", n)
  local deadline = now() + self.ms
  while have < n do
    local p = ffi.new("struct smolvm_bench_pollfd", { fd = self.fd, events = 1 })
    local left = math.floor(deadline - now())
    if left <= 0 or ffi.C.poll(p, 1, left) == 0 then return nil, "timeout", table.concat(parts) end
    local got = tonumber(ffi.C.read(self.fd, buf, n - have))
    if got <= 0 then return nil, "closed", table.concat(parts) end
    parts[#parts + 1] = ffi.string(buf, got)
    have = have + got
  end
  return table.concat(parts)
end

-- Wait for a job's answer on its socket (what a cosocket does in nginx).
local function wait(job)
  local fd = ffi.C.socket(1, 1, 0) -- AF_UNIX, SOCK_STREAM
  local sa = ffi.new("struct smolvm_bench_sockaddr_un")
  sa.sun_family = 1
  ffi.copy(sa.sun_path, job:path())
  if ffi.C.connect(fd, sa, ffi.sizeof(sa)) == 0 then
    local p = ffi.new("struct smolvm_bench_pollfd", { fd = fd, events = 1 })
    ffi.C.poll(p, 1, 600000)
    local buf = ffi.new("char[8]")
    ffi.C.read(fd, buf, 8)
  end
  ffi.C.close(fd)
  assert(job:done(), "the job did not finish")
end

local samples = {}
local function timed(name, f, ...)
  local t = now()
  local a, b, c = f(...)
  local list = samples[name] or {}
  samples[name] = list
  list[#list + 1] = now() - t
  return a, b, c
end

local opts = { memory = 256, vcpus = 1, network = "none", ephemeral = true }

-- jobs: only the calls on this thread are timed
local vms, dirs = {}, {}
for i = 1, N do
  local job = timed("job create: make", core.vm_create, opts, true)
  wait(job)
  local vm, info = timed("job create: result", job.result, job)
  vms[i], dirs[i] = assert(vm), info.dir
end
local function each_job(op, ...)
  for _, vm in ipairs(vms) do
    local job = timed("job " .. op .. ": make", vm.job, vm, op, ...)
    wait(job)
    local ok, msg = timed("job " .. op .. ": result", job.result, job)
    assert(ok, msg)
  end
end
each_job("start_begin", 120000)
local t_true = {}
for i = 1, N do
  local sock = assert(unix_connect(dirs[i] .. "/agent.sock"))
  local conn = client.new(sock, { now = now })
  assert(conn:handshake{ ready = true, timeout = 120000 })
  local t = now()
  local st = assert(conn:request({ op = "exec", cmd = "true" }))
  repeat
    local ev = assert(st:next(60000))
  until ev.kind == "exit"
  t_true[#t_true + 1] = now() - t
  conn:close()
end
each_job("start_confirm")
each_job("status")
each_job("stop", 5000)
each_job("delete")
each_job("close")

-- direct: the whole call holds the thread
for _ = 1, N do
  local vm = assert(timed("direct vm_create", core.vm_create, opts))
  assert(timed("direct start_begin", vm.start_begin, vm, 120000))
  vms[#vms + 1] = vm
end
for i = N + 1, #vms do
  local vm = vms[i]
  assert(timed("direct start_finish", vm.start_finish, vm))
  assert(timed("direct status", vm.status, vm))
  assert(timed("direct stop", vm.stop, vm, 5000))
  assert(timed("direct delete", vm.delete, vm))
  vm:close()
end

table.sort(t_true)
print(string.format("`true` through smolvm.client: median %.1f ms (%d runs; the guest's time, not the "
  .. "caller's)", t_true[math.floor((#t_true + 1) / 2)], #t_true))
local names = {}
for k in pairs(samples) do names[#names + 1] = k end
table.sort(names)
print(string.format("%-26s %6s %9s %9s", "call (ms on the caller)", "n", "median", "max"))
for _, k in ipairs(names) do
  local v = samples[k]
  table.sort(v)
  print(string.format("%-26s %6d %9.2f %9.2f", k, #v, v[math.floor((#v + 1) / 2)], v[#v]))
end
