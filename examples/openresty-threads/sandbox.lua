-- SPDX-License-Identifier: MIT
--- Content handlers of the example code-running service (examples/openresty-threads/nginx.conf).
--
--   POST /run                 run code, answer { stdout, stderr, exit_code, ... }
--        body: JSON { "code": "...", "lang": "sh"|"python", "timeout": seconds,
--                     "sandbox": "name" }   (only "code" required)
--        or the code itself (any other Content-Type), options in the query string:
--              /run?lang=python&timeout=5&sandbox=name
--        Without "sandbox": a fresh sandbox boots for the request and is deleted after.
--        With it: the command runs in that long-lived sandbox (see below).
--        200 { stdout, stderr, exit_code, timed_out = false, duration_ms, sandbox,
--              fresh, boot_ms? }                     the code ran (whatever its exit)
--        200 { timed_out = true, exit_code = null, timeout, error, sandbox, fresh }
--                                                    killed at the timeout
--        400 bad request, 404 no such sandbox, 503 no sandbox could be booted or the
--        thread pool is full, 500 anything else; errors are { error, code }.
--   POST   /sandboxes         { "id": "name" } -> 201 { id, status, boot_ms }
--   GET    /sandboxes         -> [ { id, status }, ... ]
--   GET    /sandboxes/NAME    -> { id, status, ... } (vm:info())
--   DELETE /sandboxes/NAME    -> { id, deleted = true }
--
-- Nothing here calls a blocking smolvm function: every such call goes through
-- ngx.run_worker_thread to smolvm.worker, by VM id, with plain values.

local cjson = require "cjson.safe"
local schema = require "smolvm.schema" -- pure Lua: option rules, no blocking calls

local M = {}

local config = {
  pool = "smolvm",
  vm = { memory = 256, vcpus = 1, network = "user" },
  boot_timeout = 60,
  default_timeout = 10,
  max_timeout = 120,
  -- Tasks one worker may have in the pool (running or queued). Keep it below the
  -- thread_pool's threads + max_queue: a task posted to a full queue crashes the
  -- worker in lua-nginx-module 0.10.23 (glibc "free(): invalid pointer", SIGABRT), so
  -- the handlers answer 503 before that can happen.
  max_tasks = 32,
}

-- How code reaches the guest: on stdin, so its size is not bound by the command line.
local LANGS = {
  sh = "sh -s",
  python = "python3 -",
}


--- configure{ pool=, vm=, boot_timeout=, default_timeout=, max_timeout=, max_tasks= }
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

-- Status for a smolvm failure code.
local function status_of(code)
  if code == "ENOENT" then return 404 end
  if code == "EEXIST" then return 409 end
  if code == "EINVAL" then return 400 end
  if code == "ESTATE" then return 409 end
  return 500
end

-- Call smolvm.worker.fn(...) in the pool. Returns the function's own results
-- (value | nil, msg, code, ...); a raised error or a full queue becomes nil, msg, code.
local function pack(...) return { n = select("#", ...), ... } end

local tasks = 0 -- this worker's tasks in the pool

local function call(fn, ...)
  if tasks >= config.max_tasks then
    return nil, "busy: " .. tasks .. " sandbox tasks in progress, try again later", "EBUSY"
  end
  tasks = tasks + 1
  local res = pack(pcall(ngx.run_worker_thread, config.pool, "smolvm.worker", fn, ...))
  tasks = tasks - 1
  if not res[1] then -- ngx.run_worker_thread itself raised
    res = pack(false, res[2])
  else
    res = pack(unpack(res, 2, res.n))
  end
  if not res[1] then
    local msg = tostring(res[2])
    ngx.log(ngx.ERR, "smolvm.worker.", fn, ": ", msg)
    if msg:find("queue", 1, true) or msg:find("overflow", 1, true) then
      return nil, "busy: " .. msg, "EBUSY"
    end
    return nil, msg, "EWORKER"
  end
  return unpack(res, 2, res.n)
end

local valid_id = schema.valid_id

local function read_body()
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if not body then
    local file = ngx.req.get_body_file()
    if file then
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
    local t = cjson.decode(body)
    if type(t) ~= "table" then return nil, "body: expected a JSON object" end
    req = t
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

-- Fresh sandboxes are named "fresh-<worker pid>-<n>", so that a worker that finds
-- one whose worker is gone (killed mid-request) knows it is an orphan.
local FRESH = "fresh"
local fresh_n = 0

local function fresh_id()
  fresh_n = fresh_n + 1
  -- Milliseconds since start-up make names unique across workers that reuse a pid.
  return require("smolvm.worker").owned_id(FRESH, ngx.worker.pid(),
    string.format("%x-%d", math.floor(ngx.now() * 1000) % 0x100000000, fresh_n))
end

--- init_worker(): from init_worker_by_lua. Resets SIGCHLD for smolvm (see
--- docs/openresty.md) and deletes, in the background, fresh sandboxes left behind by
--- workers that died in the middle of a request.
function M.init_worker()
  local ok, err = require("smolvm.worker").init_worker()
  if not ok then ngx.log(ngx.WARN, "smolvm.worker.init_worker: ", err) end
  ngx.timer.at(0, function(premature)
    if premature then return end
    local n, msg = call("reap", FRESH)
    if n == nil then
      ngx.log(ngx.ERR, "reaping orphaned sandboxes: ", msg)
    elseif n > 0 then
      ngx.log(ngx.NOTICE, "deleted ", n, " sandbox(es) of dead workers")
    end
  end)
end

--- POST /run
function M.run()
  if ngx.req.get_method() ~= "POST" then
    ngx.header["Allow"] = "POST"
    return fail(405, "use POST", "EINVAL")
  end
  local req, perr = parse_run()
  if not req then return fail(400, perr, "EINVAL") end

  local cmd = LANGS[req.lang]
  local run_opts = { timeout = req.timeout, stdin = req.code }
  local r, msg, code, where
  if req.sandbox then
    r, msg, code = call("run", req.sandbox, cmd, run_opts)
    where = { stage = "run", id = req.sandbox }
  else
    local vm = {}
    for k, v in pairs(config.vm) do vm[k] = v end
    vm.id = fresh_id()
    r, msg, code, where = call("run_fresh", cmd, {
      vm = vm, boot_timeout = config.boot_timeout, run = run_opts,
    })
    where = where or {}
  end

  if r then
    return reply(200, {
      stdout = r.stdout, stderr = r.stderr, exit_code = r.exit_code,
      signal = r.signal, truncated = r.truncated, timed_out = false,
      duration_ms = r.duration_ms, boot_ms = r.boot_ms,
      sandbox = req.sandbox or r.id, fresh = req.sandbox == nil,
    })
  end
  if code == "ETIMEDOUT" and where.stage == "run" then
    return reply(200, {
      timed_out = true, exit_code = cjson.null, timeout = req.timeout, error = msg,
      sandbox = req.sandbox or where.id, fresh = req.sandbox == nil,
    })
  end
  if where.stage == "boot" or where.stage == "create" or code == "EBUSY" then
    return fail(503, msg, code)
  end
  return fail(status_of(code), msg, code)
end

--- POST /sandboxes, GET /sandboxes
function M.sandboxes()
  local method = ngx.req.get_method()
  if method == "GET" then
    local list, msg, code = call("list")
    if not list then return fail(500, msg, code) end
    local out = {}
    for _, info in ipairs(list) do
      out[#out + 1] = { id = info.id, status = info.status }
    end
    if #out == 0 then -- Debian's lua-cjson encodes an empty table as {}
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
  if t.id:sub(1, #FRESH + 1) == FRESH .. "-" then
    return fail(400, "id: names starting with \"" .. FRESH .. "-\" are for fresh sandboxes", "EINVAL")
  end
  local opts = {}
  for k, v in pairs(config.vm) do opts[k] = v end
  opts.id = t.id
  local id, msg, code = call("launch", opts, config.boot_timeout)
  if not id then
    return fail(code == "EEXIST" and 409 or 503, msg, code)
  end
  return reply(201, { id = id, status = "running", boot_ms = msg })
end

--- GET/DELETE /sandboxes/NAME
function M.sandbox()
  local id = ngx.var.uri:match("^/sandboxes/([^/]+)$")
  if not valid_id(id) then return fail(404, "no such sandbox", "ENOENT") end
  local method = ngx.req.get_method()
  if method == "GET" then
    local info, msg, code = call("info", id)
    if not info then return fail(status_of(code), msg, code) end
    return reply(200, info)
  elseif method == "DELETE" then
    local ok, msg, code = call("delete", id)
    if not ok then return fail(status_of(code), msg, code) end
    return reply(200, { id = id, deleted = true })
  end
  ngx.header["Allow"] = "GET, DELETE"
  return fail(405, "use GET or DELETE", "EINVAL")
end

return M
