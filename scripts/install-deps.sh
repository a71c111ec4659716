#!/bin/sh
# SPDX-License-Identifier: MIT
# Install every Debian 12 package smolvm needs to build, test and run.
# Safe to run any number of times: apt-get skips what is already there.
set -eu

BUILD="build-essential cmake pkg-config git ca-certificates clang-format
  liblua5.4-dev lua5.4 libluajit2-5.1-dev luajit2 lua-busted
  libsqlite3-dev sqlite3 libssh2-1-dev libnl-3-dev libnl-route-3-dev
  libnftnl-dev libmnl-dev libnetfilter-log-dev libldns-dev libcurl4-openssl-dev libjansson-dev libcmocka-dev
  libcap-ng-dev libseccomp-dev"
RUNTIME="qemu-system-x86 qemu-utils nftables iproute2 openssh-client procps"
IMAGE="linux-source-6.1 bc bison flex libelf-dev libssl-dev xz-utils cpio kmod
  mmdebstrap e2fsprogs fakeroot"
TEST="openssh-server valgrind nginx libnginx-mod-http-lua lua-cjson curl python3 python3-yaml
  clang libclang-rt-14-dev luarocks slurm-wlm slurmctld slurmd slurm-client munge
  dnsmasq-base"

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: run as root (or through sudo): apt-get needs it" >&2
    exit 1
fi

missing=""
for p in $BUILD $RUNTIME $IMAGE $TEST; do
    if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed'; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    echo "install-deps: all packages present"
    exit 0
fi

echo "install-deps: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
echo "install-deps: done"
