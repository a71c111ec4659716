#!/bin/sh
# SPDX-License-Identifier: MIT
# The rockspec works: from a clean copy of the source tree, `luarocks make` builds the
# module through the CMake build and installs it into a temporary tree, and lua5.4
# loads it from there (with that tree's paths only) and can use it.
# Usage: luarocks-make.sh SOURCE_DIR. Exit 77 (skipped) without luarocks or lua5.4.
set -eu
src=$1
for tool in luarocks lua5.4 cmake; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "SKIP: no $tool (apt-get install luarocks lua5.4 cmake)" >&2
        exit 77
    fi
done
rockspec=$(cd "$src" && ls lua/smolvm-*.rockspec)
work=$(mktemp -d /tmp/smolvm-rock.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM
copy=$work/src tree=$work/tree
mkdir "$copy"

# A clean tree: the files git knows (tracked, or new and not ignored), never a build
# directory; without git, everything but build directories.
if git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$src" && git ls-files -z --cached --others --exclude-standard) |
        (cd "$src" && xargs -0 cp --parents -t "$copy")
else
    tar -C "$src" --exclude='./build*' --exclude=./.git -cf - . | tar -C "$copy" -xf -
fi

echo "luarocks make $rockspec --tree $tree"
(cd "$copy" && luarocks --lua-version 5.4 make "$rockspec" --tree "$tree") >"$work/make.log" 2>&1 || {
    cat "$work/make.log" >&2
    echo "FAIL: luarocks make" >&2
    exit 1
}
grep "is now installed" "$work/make.log" || true

# Only the module: its Lua files and core.so, nothing of the C library's own install.
fail() { echo "FAIL: $*" >&2; exit 1; }
[ -f "$tree/share/lua/5.4/smolvm/init.lua" ] || fail "no smolvm/init.lua in the tree"
[ -f "$tree/lib/lua/5.4/smolvm/core.so" ] || fail "no smolvm/core.so in the tree"
extra=$(cd "$tree" && find . -type f ! -path './share/lua/5.4/smolvm/*' \
    ! -path './lib/lua/5.4/smolvm/core.so' ! -path './lib/luarocks/*')
[ -z "$extra" ] || fail "the rock installed more than the module: $extra"
luarocks --lua-version 5.4 --tree "$tree" list --porcelain | grep -q '^smolvm	0\.2\.0-1	installed' ||
    fail "luarocks does not list smolvm 0.2.0-1 as installed"

# Load it with the tree's paths (and the system's defaults after them, which hold no
# smolvm in a clean environment: the test checks where each file came from).
out=$(cd "$work" && env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 -u LUA_INIT \
    -u LUA_INIT_5_4 SMOLVM_STATE_DIR="$work/state" sh -c '
    eval "$(luarocks --lua-version 5.4 --tree "$1" path)"
    exec lua5.4 -e "
      local smolvm = require \"smolvm\"
      print(package.searchpath(\"smolvm\", package.path))
      print(package.searchpath(\"smolvm.core\", package.cpath))
      print(smolvm.VERSION)
      local ok, err = pcall(smolvm.VM, { memory = \"lots\" })
      print(ok, (tostring(err):gsub(\"^.-: \", \"\", 1)))
      local checks = assert(smolvm.doctor())
      local state
      for _, c in ipairs(checks) do if c.name == \"state\" then state = c.detail end end
      print(state)"' sh "$tree") || fail "lua5.4 could not load the installed module"
echo "$out"
echo "$out" | sed -n 1p | grep -qx "$tree/share/lua/5.4/smolvm/init.lua" || fail "smolvm not loaded from the tree"
echo "$out" | sed -n 2p | grep -qx "$tree/lib/lua/5.4/smolvm/core.so" || fail "smolvm.core not loaded from the tree"
echo "$out" | sed -n 3p | grep -qx '[0-9][0-9.]*' || fail "no smolvm.VERSION"
echo "$out" | sed -n 4p | grep -q '^false.*memory' || fail "option validation did not run"
echo "$out" | sed -n 5p | grep -qx "$work/state/smolvm.db" || fail "the binding did not open its state"
echo "ok: luarocks make installs a module lua5.4 loads"
