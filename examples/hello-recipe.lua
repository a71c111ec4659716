-- SPDX-License-Identifier: MIT
-- The smallest recipe: one sandbox, one step with an expectation.
--   smolvm-lua examples/hello-recipe.lua
sandbox "hello" {
  network = "user", -- rootless and closed to the outside; "nat" (root) gives it egress
  steps = {
    { run = "python3 -c 'print(6*7)'", expect = { stdout = "42" } },
  },
}
