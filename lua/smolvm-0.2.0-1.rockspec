-- SPDX-License-Identifier: MIT
-- The smolvm Lua module (require "smolvm") for Lua 5.4, built by the project's CMake
-- build. From the top of a source tree:
--   luarocks make lua/smolvm-0.2.0-1.rockspec [--tree DIR]
-- It installs the facade (smolvm/*.lua) and the C part (smolvm/core.so, with
-- libsmolvm linked in statically) only: `cmake --install` of the component "lua".
-- The build needs the Debian packages of scripts/install-deps.sh; a sandbox also
-- needs QEMU and a guest image (scripts/build-image.sh), as with any other install.
rockspec_format = "3.0"
package = "smolvm"
version = "0.2.0-1"

source = {
  url = "git+file://./",
  dir = ".",
}

description = {
  summary = "Hardware-isolated microVM sandboxes, scripted from Lua",
  detailed = [[
smolvm runs untrusted code inside QEMU or Firecracker microVMs with their own disk,
network and state, and is scripted from Lua: smolvm.VM{}, vm:start(), vm:run(),
declarative recipes.]],
  license = "MIT",
  labels = { "sandbox", "virtualization", "microvm" },
}

dependencies = {
  "lua >= 5.4, < 5.5",
}

build = {
  type = "command",
  -- build.luarocks/ is this build's own directory; BUILD_TESTING off leaves out the
  -- test suite and its tools, SMOLVM_LUAJIT off the LuaJIT module, SMOLVM_WERROR off
  -- keeps a packager's newer compiler from failing the build on a new warning (the
  -- project's own builds and CI keep -Werror).
  build_command = [[cmake -S . -B build.luarocks -DCMAKE_BUILD_TYPE=Release]]
    .. [[ -DBUILD_TESTING=OFF -DSMOLVM_LUAJIT=OFF -DSMOLVM_WERROR=OFF]]
    .. [[ -DCMAKE_INSTALL_PREFIX="$(PREFIX)"]]
    .. [[ -DSMOLVM_LUA_LDIR="$(LUADIR)" -DSMOLVM_LUA_CDIR="$(LIBDIR)"]]
    .. [[ && cmake --build build.luarocks --target smolvm_lua54 -j2]],
  install_command = [[cmake --install build.luarocks --component lua]],
}
