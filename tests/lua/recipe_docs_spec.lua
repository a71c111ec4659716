-- SPDX-License-Identifier: MIT
-- docs/recipes.md is generated from lua/smolvm/schema.lua and must be current.
local root = os.getenv("SMOLVM_SOURCE_DIR") or "../.."
local interp = ({ lua54 = "lua5.4", luajit = "luajit" })[os.getenv("SMOLVM_TEST_INTERP") or ""] or "lua5.4"

describe("docs/recipes.md", function()
  it("matches what scripts/gen-recipe-docs.lua generates", function()
    local p = io.popen(interp .. " " .. root .. "/scripts/gen-recipe-docs.lua --stdout")
    local generated = p:read("*a")
    p:close()
    local f = assert(io.open(root .. "/docs/recipes.md", "rb"))
    local committed = f:read("*a")
    f:close()
    assert.truthy(#generated > 1000)
    assert.equal(generated, committed,
      "docs/recipes.md is out of date: run lua5.4 scripts/gen-recipe-docs.lua")
  end)
  it("documents every schema field", function()
    local schema = require "smolvm.schema"
    local f = assert(io.open(root .. "/docs/recipes.md", "rb"))
    local doc = f:read("*a")
    f:close()
    for _, fl in ipairs(schema.sandbox_fields) do
      assert.truthy(doc:find("| `" .. fl.name .. "` |", 1, true), fl.name)
    end
  end)
end)
