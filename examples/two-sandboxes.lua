-- SPDX-License-Identifier: MIT
-- Two sandboxes side by side: each runs its own steps in order; the runner takes one
-- step of each in turn, and background steps keep running meanwhile.
--   smolvm-lua examples/two-sandboxes.lua
sandbox "producer" {
  network = "user", -- rootless and closed to the outside; "nat" (root) gives it egress
  memory = 256,
  steps = {
    { run = "python3 -c 'import json; print(json.dumps({\"n\": 6*7}))' > /tmp/out.json" },
    { run = "cat /tmp/out.json", expect = { stdout = '"n": 42' } },
    { download = { from = "/tmp/out.json", to = "/tmp/smolvm-example-out.json" } },
  },
}

sandbox "worker" {
  network = "user", -- rootless and closed to the outside; "nat" (root) gives it egress
  memory = 256,
  env = { JOBS = 3 },
  steps = {
    { run = "sleep 30", background = true },
    { run = "echo jobs=$JOBS; nproc", expect = { stdout = "jobs=3" } },
    { run = "pgrep -x sleep", expect = { exit = 0 } },
  },
}
