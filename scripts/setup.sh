#!/bin/sh
# SPDX-License-Identifier: MIT
# Everything a fresh Debian 12 machine needs before smolvm runs: packages, the build
# (./build) and the default guest image. Safe to run again: each step skips work
# that is already done.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
t0=$(date +%s)

step() { printf '==> %s (%ss)\n' "$1" "$(( $(date +%s) - t0 ))"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: run as root (in a root shell: su -, or sudo -i): packages and the image build need it" >&2
    exit 1
fi

step "packages"
sh scripts/install-deps.sh

step "build"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >build-configure.log 2>&1 ||
    { cat build-configure.log >&2; exit 1; }
rm -f build-configure.log
cmake --build build -j"$(nproc)"

step "guest image"
sh scripts/build-image.sh

step "done"
