-- SPDX-License-Identifier: MIT
-- A Python data task: upload a script and its data, run it, download the result.
-- Host paths are relative to this file; the result lands in examples/out/.
--   smolvm-lua examples/data-task.lua && cat examples/out/totals.csv
os.execute("mkdir -p '" .. (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/out'")

sandbox "data" {
  network = "user", -- rootless and closed to the outside; "nat" (root) gives it egress
  memory = 512,
  steps = {
    { upload = { from = "data/summarize.py", to = "/work/summarize.py" } },
    { upload = { from = "data/sales.csv", to = "/work/sales.csv" } },
    { run = "python3 summarize.py sales.csv totals.csv", cwd = "/work",
      expect = { stdout = "3 regions" } },
    { run = "cat /work/totals.csv", expect = { stdout = "north,150" } },
    { download = { from = "/work/totals.csv", to = "out/totals.csv" } },
  },
}
