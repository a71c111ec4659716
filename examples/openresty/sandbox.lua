-- SPDX-License-Identifier: MIT
--- Handlers of the example streaming service (examples/openresty/nginx.conf).
--
--   POST /run        run code in a sandbox; its output streams back as it comes
--        body: JSON { "code": "...", "lang": "sh"|"python", "timeout": seconds,
--                     "sandbox": "name" }   (only "code" required)
--        or the code itself (any other Content-Type), options in the query string:
--              /run?lang=python&timeout=5&sandbox=name
--        Without "sandbox": a fresh sandbox boots for the request and is deleted after.
--        With it: the command runs in that long-lived sandbox.
--        200, chunked (default): the output bytes as they come (stdout and stderr as
--            the command wrote them), then trailers X-Exit-Code, X-Signal,
--            X-Timed-Out, X-Duration-Ms (X-Error if the stream broke). Headers:
--            X-Sandbox, X-Pid (the process in the guest), X-Fresh, X-Boot-Ms.
--        200, Accept: text/event-stream: events "started" { sandbox, pid, fresh,
--            boot_ms }, "stdout"/"stderr" (data: the chunk as a JSON string), then
--            "exit" { exit_code, signal, timed_out, duration_ms } or "error".
--        400 bad request, 404 no such sandbox, 413 code over 1 MiB (nginx), 503 no
--        sandbox could be booted or max_fresh are running, 500 anything else; errors
--        before the output starts are JSON { error, code }.
--        A client that disconnects cancels the command: it is killed in the guest.
--   POST   /sandboxes                 { "id": "name" } -> 201 { id, status, boot_ms }
--   GET    /sandboxes                 -> [ { id, status, kind }, ... ]
--   GET    /sandboxes/NAME            -> vm:info()
--   GET    /sandboxes/NAME/processes  -> vm:processes()
--   DELETE /sandboxes/NAME            -> { id, deleted = true }
--
-- Every smolvm call here waits on cosockets (smolvm.ngx): no thread pool, and the
-- worker keeps serving everything else meanwhile.

local cjson = require "cjson.safe"
local smolvm = require "smolvm"
local schema = require "smolvm.schema"

local M = {}

local config = {
  vm = { memory = 256, vcpus = 1, network = "none" },
  boot_timeout = 60,
  default_timeout = 10,
  max_timeout = 120,
  max_fresh = 32,
  max_output = 16 * 1024 * 1024,
}

-- How code reaches the guest: on stdin, so its size is not bound by a command line.
local LANGS = {
  sh = "sh -s",
  python = "python3 -",
}

--- configure{ vm=, boot_timeout=, default_timeout=, max_timeout=, max_fresh=, max_output= }
function M.configure(t)
  for k, v in pairs(t) do
    if config[k] == nil then error("sandbox.configure: unknown key " .. tostring(k), 2) end
    config[k] = v
  end
end

local function reply(status, body)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode(body))
  return ngx.exit(status)
end

local function fail(status, msg, code)
  return reply(status, { error = msg, code = code })
end

local function status_of(code)
  if code == "ENOENT" then return 404 end
  if code == "EEXIST" or code == "ESTATE" then return 409 end
  if code == "EINVAL" then return 400 end
  return 500
end

local valid_id = schema.valid_id

local function read_body()
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if not body then
    if ngx.req.get_body_file() then
      return nil, "request body too large for the memory buffer"
    end
    body = ""
  end
  return body
end

-- The request as { code, lang, timeout, sandbox } or nil, message.
local function parse_run()
  local body, err = read_body()
  if not body then return nil, err end
  local ctype = ngx.var.content_type or ""
  local req
  if ctype:find("application/json", 1, true) then
    req = cjson.decode(body)
    if type(req) ~= "table" then return nil, "body: expected a JSON object" end
  else
    local args = ngx.req.get_uri_args()
    req = { code = body, lang = args.lang, timeout = tonumber(args.timeout) or args.timeout,
            sandbox = args.sandbox }
  end
  if type(req.code) ~= "string" or req.code == "" then
    return nil, "code: expected a non-empty string"
  end
  if req.lang == nil or req.lang == cjson.null then req.lang = "sh" end
  if not LANGS[req.lang] then
    return nil, "lang: expected \"sh\" or \"python\", got " .. tostring(req.lang)
  end
  if req.timeout == nil or req.timeout == cjson.null then req.timeout = config.default_timeout end
  if type(req.timeout) ~= "number" or req.timeout <= 0 or req.timeout > config.max_timeout then
    return nil, "timeout: expected seconds > 0 and <= " .. config.max_timeout
  end
  if req.sandbox == cjson.null then req.sandbox = nil end
  if req.sandbox ~= nil and not valid_id(req.sandbox) then
    return nil, "sandbox: expected a name matching " .. schema.ID_DESC
  end
  return req
end

------------------------------------------------------------------------ sandboxes

-- Named sandboxes this worker has opened: VM objects may be shared by requests (they
-- hold no connection of their own).
local named = {}
local opening = {} -- name -> semaphore while one request opens it for everybody

local function named_vm(id)
  local vm = named[id]
  if vm then return vm end
  local sema = opening[id]
  if sema then
    sema:wait(60)
    if named[id] then return named[id] end
  end
  sema = require("ngx.semaphore").new(0)
  opening[id] = sema
  local v, msg, code = smolvm.VM.from_id(id)
  opening[id] = nil
  sema:post(1000)
  if not v then return nil, msg, code end
  named[id] = v
  return v
end

local fresh_running = 0 -- this worker's fresh sandboxes

local function vm_options(kind, id)
  local opts = { id = id, labels = { service = kind } }
  for k, v in pairs(config.vm) do opts[k] = v end
  return opts
end

-- A fresh sandbox, booted: vm, boot_ms | nil, msg, code, http status.
local function boot_fresh()
  if fresh_running >= config.max_fresh then
    return nil, "busy: " .. fresh_running .. " fresh sandboxes running, try again later",
      "EBUSY", 503
  end
  fresh_running = fresh_running + 1
  local t0 = ngx.now()
  local vm, msg, code = smolvm.VM(vm_options("fresh"))
  if vm then
    local ok
    ok, msg, code = vm:start{ timeout = config.boot_timeout }
    if not ok then
      vm:close()
      vm = nil
    end
  end
  if not vm then
    fresh_running = fresh_running - 1
    return nil, msg, code, 503
  end
  ngx.update_time()
  return vm, math.floor((ngx.now() - t0) * 1000 + 0.5)
end

local function done_fresh(vm)
  local ok, msg = vm:close() -- stops and deletes it (it was made by VM{} and not kept)
  fresh_running = fresh_running - 1
  if not ok then ngx.log(ngx.ERR, "deleting a fresh sandbox: ", msg) end
end

------------------------------------------------------------------------ streaming

local function sse(event, value)
  ngx.print("event: ", event, "\ndata: ", cjson.encode(value), "\n\n")
end

--- POST /run
function M.run()
  if ngx.req.get_method() ~= "POST" then
    ngx.header["Allow"] = "POST"
    return fail(405, "use POST", "EINVAL")
  end
  local req, perr = parse_run()
  if not req then return fail(400, perr, "EINVAL") end
  local events = (ngx.var.http_accept or ""):find("text/event-stream", 1, true) ~= nil

  local vm, boot_ms, msg, code, status
  if req.sandbox then
    vm, msg, code = named_vm(req.sandbox)
    if not vm then return fail(status_of(code), msg, code) end
  else
    vm, boot_ms, code, status = boot_fresh()
    if not vm then return fail(status, boot_ms, code) end
  end

  -- The command starts; keep = false: it dies with this request's stream.
  local p
  p, msg, code = vm:spawn(LANGS[req.lang], { stdin = true, timeout = req.timeout, keep = false })
  if not p and req.sandbox and code == "ESTATE" then
    named[req.sandbox] = nil -- deleted or stopped elsewhere: look again
    vm, msg, code = named_vm(req.sandbox)
    if vm then
      p, msg, code = vm:spawn(LANGS[req.lang], { stdin = true, timeout = req.timeout, keep = false })
    end
  end
  if p then
    local ok
    ok, msg, code = p:write(req.code)
    if ok then ok, msg, code = p:close_stdin() end
    if not ok then p:close() p = nil end
  end
  if not p then
    if not req.sandbox then done_fresh(vm) end
    return fail(code == "ESTATE" and 409 or 500, msg, code)
  end

  -- A client that goes away: the command is killed in the guest (its whole group).
  local gone, answered = false, false
  local ok_abort, abort_err = ngx.on_abort(function()
    if answered then return end -- it went away after its answer: nothing to cancel
    gone = true
    p:kill("KILL")
  end)
  if not ok_abort then ngx.log(ngx.WARN, "no cancel on disconnect: ", abort_err) end

  ngx.status = 200
  ngx.header["Content-Type"] = events and "text/event-stream" or "text/plain; charset=utf-8"
  ngx.header["Cache-Control"] = "no-cache"
  ngx.header["X-Sandbox"] = vm.id
  ngx.header["X-Pid"] = tostring(p.pid)
  ngx.header["X-Fresh"] = req.sandbox and "false" or "true"
  if boot_ms then ngx.header["X-Boot-Ms"] = tostring(boot_ms) end
  if events then
    sse("started", { sandbox = vm.id, pid = p.pid, fresh = req.sandbox == nil,
                     boot_ms = boot_ms })
  end
  ngx.send_headers()
  ngx.flush(true)

  local sent, err, truncated = 0, nil, false
  local t0 = ngx.now()
  while not gone do
    local stream, chunk, rcode = p:read{ timeout = req.timeout + 10 }
    if stream == nil then
      if chunk ~= nil then err = { error = chunk, code = rcode } end
      break
    end
    if sent + #chunk > config.max_output then
      truncated = true
      p:kill("KILL")
      break
    end
    sent = sent + #chunk
    if events then sse(stream, chunk) else ngx.print(chunk) end
    -- Wait until the client took it: a slow client slows the command, never memory.
    if not ngx.flush(true) then
      gone = true
      p:kill("KILL")
    end
  end
  local st
  if not err then
    st, msg, code = p:wait{ timeout = 15 }
    if not st then err = { error = msg, code = code } end
  end
  answered = true
  p:close()
  if truncated and not err then
    err = { error = "more than " .. config.max_output .. " bytes of output (killed)",
            code = "ENOSPC" }
  end
  if not gone then
    if events then
      if err then sse("error", err) end
      if st then
        sse("exit", { exit_code = st.exit_code, signal = st.signal or cjson.null,
                      timed_out = st.timed_out, duration_ms = st.duration_ms })
      end
    else
      if st then
        ngx.var.smolvm_exit_code = tostring(st.exit_code)
        ngx.var.smolvm_signal = st.signal or ""
        ngx.var.smolvm_timed_out = tostring(st.timed_out)
        ngx.var.smolvm_duration_ms = tostring(st.duration_ms)
      end
      if err then ngx.var.smolvm_error = tostring(err.error):gsub("[%c]", " ") end
    end
    ngx.eof()
  end
  -- The client has its answer; a fresh sandbox is deleted after it.
  if not req.sandbox then done_fresh(vm) end
  if gone then
    ngx.update_time()
    ngx.log(ngx.INFO, "client went away after ", ngx.now() - t0, " s: command killed")
    return ngx.exit(499)
  end
end

------------------------------------------------------------------------ sandboxes

--- POST /sandboxes, GET /sandboxes
function M.sandboxes()
  local method = ngx.req.get_method()
  if method == "GET" then
    local list, msg, code = smolvm.VM.list()
    if not list then return fail(500, msg, code) end
    local out = {}
    for _, info in ipairs(list) do
      out[#out + 1] = { id = info.id, status = info.status,
                        kind = info.config and info.config.labels and info.config.labels.service }
    end
    if #out == 0 then -- lua-cjson encodes an empty table as {}
      ngx.header["Content-Type"] = "application/json"
      return ngx.say("[]")
    end
    return reply(200, out)
  end
  if method ~= "POST" then
    ngx.header["Allow"] = "GET, POST"
    return fail(405, "use GET or POST", "EINVAL")
  end
  local body, err = read_body()
  if not body then return fail(400, err, "EINVAL") end
  local t = cjson.decode(body)
  if type(t) ~= "table" or not valid_id(t.id) then
    return fail(400, "body: expected { \"id\": name } with name matching " .. schema.ID_DESC, "EINVAL")
  end
  local t0 = ngx.now()
  local vm, msg, code = smolvm.VM(vm_options("named", t.id))
  if not vm then return fail(code == "EEXIST" and 409 or 503, msg, code) end
  local ok
  ok, msg, code = vm:start{ timeout = config.boot_timeout }
  if ok then ok, msg, code = vm:keep() end -- outlives this request and the worker
  if not ok then
    vm:close()
    return fail(503, msg, code)
  end
  named[t.id] = vm
  ngx.update_time()
  return reply(201, { id = t.id, status = "running",
                      boot_ms = math.floor((ngx.now() - t0) * 1000 + 0.5) })
end

--- GET/DELETE /sandboxes/NAME, GET /sandboxes/NAME/processes
function M.sandbox()
  local id, sub = ngx.var.uri:match("^/sandboxes/([^/]+)/?([%w]*)$")
  if not valid_id(id) or (sub ~= "" and sub ~= "processes") then
    return fail(404, "no such sandbox", "ENOENT")
  end
  local method = ngx.req.get_method()
  local vm, msg, code = named_vm(id)
  if not vm then return fail(status_of(code), msg, code) end
  if sub == "processes" then
    if method ~= "GET" then return fail(405, "use GET", "EINVAL") end
    local list
    list, msg, code = vm:processes()
    if not list then return fail(status_of(code), msg, code) end
    if #list == 0 then
      ngx.header["Content-Type"] = "application/json"
      return ngx.say("[]")
    end
    return reply(200, list)
  end
  if method == "GET" then
    local info
    info, msg, code = vm:info()
    if not info then
      named[id] = nil
      return fail(status_of(code), msg, code)
    end
    return reply(200, info)
  elseif method == "DELETE" then
    local ok
    ok, msg, code = vm:delete()
    named[id] = nil
    if not ok then return fail(status_of(code), msg, code) end
    return reply(200, { id = id, deleted = true })
  end
  ngx.header["Allow"] = "GET, DELETE"
  return fail(405, "use GET or DELETE", "EINVAL")
end

return M
