#!/bin/sh
# SPDX-License-Identifier: MIT
# A real image build (tests/integration/image_spec.lua): needs root (mmdebstrap
# --mode=root) and the host's Debian mirror, which build-rootfs.sh fetches .debs from.
# Everything the test makes lives in one temporary directory (state, images,
# templates) removed at the end, whatever happened; the kernel comes from the
# build scripts' cache (~/.cache/smolvm/build: ctest's SMOLVM_BUILD_DIR, the CMake
# tree, is not that cache). The sandbox uses network = "none", so no guest traffic.
# Usage: image-test.sh LUA SPEC
set -eu
interp=$1 spec=$2

if [ "$(id -u)" -ne 0 ]; then
    echo "SKIP: building an image needs root (mmdebstrap --mode=root)" >&2
    exit 77
fi
for c in mmdebstrap mkfs.ext4 flock; do
    command -v "$c" >/dev/null 2>&1 || { echo "SKIP: '$c' not found (scripts/install-deps.sh)" >&2; exit 77; }
done
missing=$("$SMOLVM_LUA" -e '
  for _, c in ipairs(require("smolvm").doctor()) do
    if c.required and not c.ok and c.name ~= "image" then print(c.name .. ": " .. c.detail) end
  end')
if [ -n "$missing" ]; then
    echo "SKIP: this host cannot run sandboxes:" >&2
    echo "$missing" >&2
    exit 77
fi

top=$(mktemp -d /tmp/smolvm-it-image.XXXXXX)
export SMOLVM_STATE_DIR="$top/state" SMOLVM_IMAGE_DIR="$top/images" SMOLVM_TEMPLATE_DIR="$top/templates"
unset SMOLVM_BUILD_DIR
cleanup() {
    # VMMs and supervisors of this state dir, then everything the test made.
    pkill -9 -f -- "$top/" 2>/dev/null || true
    rm -rf "$top"
}
trap cleanup EXIT INT TERM
mkdir -p "$SMOLVM_STATE_DIR"
# In the host's namespace (mmdebstrap needs its mirror); the spec's guests have network
# "none" (helpers.lua refuses a spec there otherwise).
export SMOLVM_TEST_HOST_NETNS_OK=1
"$interp" /usr/bin/busted --output=plainTerminal "$spec"
