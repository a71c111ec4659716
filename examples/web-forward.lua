-- SPDX-License-Identifier: MIT
-- A web server in a sandbox, its port forwarded to the host and checked from there.
--
-- Forwards bind to 127.0.0.1 (with the rootless "user" network they are QEMU host
-- forwards on that address). Steps run in the guest, so the recipe first checks the
-- server inside with curl, then a host check (smolvm.recipe.host_check, run after
-- the steps and before teardown) fetches it through the forward from the host.
--   smolvm-lua examples/web-forward.lua        (WEB_PORT=... to pick another port)
local PORT = tonumber(os.getenv("WEB_PORT") or "18080")

sandbox "web" {
  network = "user", -- rootless and closed to the outside; "nat" (root) gives it egress
  memory = 256,
  forwards = { { host = PORT, guest = 8000 } },
  files = { ["/srv/index.html"] = "<h1>hello from smolvm</h1>\n" },
  steps = {
    { run = "python3 -m http.server 8000 -d /srv", background = true },
    { run = "for i in $(seq 50); do curl -sf localhost:8000 && exit 0; sleep 0.2; done; exit 1",
      expect = { stdout = "hello from smolvm" } },
  },
}

require("smolvm.recipe").host_check("curl http://127.0.0.1:" .. PORT .. "/", function()
  local p = io.popen("curl -sf --max-time 10 http://127.0.0.1:" .. PORT .. "/")
  local body = p:read("*a")
  p:close()
  if body:find("hello from smolvm", 1, true) then return true end
  return false, "no answer through the forward (got " .. #body .. " bytes)"
end)
