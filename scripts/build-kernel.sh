#!/bin/sh
# SPDX-License-Identifier: MIT
# Build the smolvm guest kernel (a PVH vmlinux, everything built in) from Debian's
# linux-source-6.1: `make tinyconfig` + scripts/guest-kernel.config.
#
#   scripts/build-kernel.sh DEST_DIR     -> DEST_DIR/vmlinux, DEST_DIR/kernel.release
#
# The result is cached under $SMOLVM_BUILD_DIR/kernel/<hash of the inputs> (the
# fragment, this script, the linux-source package version, the compiler), so only a
# change to one of those rebuilds the kernel. The make output goes to a log file.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
fragment="$here/guest-kernel.config"
build_dir=${SMOLVM_BUILD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/smolvm/build}
tarball=/usr/src/linux-source-6.1.tar.xz
t0=$(date +%s)

die() { echo "build-kernel: $*" >&2; exit 1; }
stage() { echo "build-kernel: [$(($(date +%s) - t0))s] $*"; }

[ $# -eq 1 ] || die "usage: build-kernel.sh DEST_DIR"
dest=$1

need_pkg() { # command package
    command -v "$1" >/dev/null 2>&1 ||
        die "'$1' not found (package '$2'; run scripts/install-deps.sh as root)"
}
[ -r "$tarball" ] || die "'$tarball' not found (package 'linux-source-6.1'; run scripts/install-deps.sh as root)"
need_pkg make build-essential
need_pkg gcc build-essential
need_pkg flex flex
need_pkg bison bison
need_pkg bc bc
[ -r /usr/include/libelf.h ] || die "libelf.h not found (package 'libelf-dev'; run scripts/install-deps.sh as root)"

src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || echo unknown)
hash=$( { cat "$fragment" "$0"; echo "$src_version"; gcc --version | head -n1; } |
        sha256sum | cut -c1-16)
cache="$build_dir/kernel/$hash"

if [ ! -f "$cache/vmlinux" ]; then
    # Reproducible-ish: a fixed build user/host and a timestamp from the source.
    SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(stat -c %Y "$tarball")}
    export KBUILD_BUILD_TIMESTAMP="$(date -u -d "@$SOURCE_DATE_EPOCH")"
    export KBUILD_BUILD_USER=smolvm KBUILD_BUILD_HOST=smolvm KBUILD_BUILD_VERSION=1

    src="$build_dir/linux-source-$src_version"
    if [ ! -f "$src/.smolvm-extracted" ]; then
        stage "extracting $tarball"
        rm -rf "$src" "$src.tmp"
        mkdir -p "$src.tmp"
        tar -xJf "$tarball" -C "$src.tmp" --strip-components=1
        touch "$src.tmp/.smolvm-extracted"
        mv "$src.tmp" "$src"
    fi

    obj="$build_dir/kernel-obj-$hash"
    log="$build_dir/kernel-$hash.log"
    mkdir -p "$obj"
    : >"$log"
    stage "configuring (tinyconfig + $(basename "$fragment"))"
    make -C "$src" O="$obj" tinyconfig >>"$log" 2>&1 || { tail -n 30 "$log" >&2; die "tinyconfig failed (log: $log)"; }
    "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$fragment" >>"$log" 2>&1 ||
        { tail -n 30 "$log" >&2; die "merging the fragment failed (log: $log)"; }
    make -C "$src" O="$obj" olddefconfig >>"$log" 2>&1 || { tail -n 30 "$log" >&2; die "olddefconfig failed (log: $log)"; }

    # Kconfig silently drops options whose dependencies are unmet: say which.
    bad=""
    for opt in $(sed -n 's/^\(CONFIG_[A-Z0-9_]*\)=y$/\1/p' "$fragment"); do
        grep -qx "$opt=y" "$obj/.config" || bad="$bad $opt"
    done
    for opt in $(sed -n 's/^# \(CONFIG_[A-Z0-9_]*\) is not set$/\1/p' "$fragment"); do
        grep -q "^$opt=" "$obj/.config" && bad="$bad $opt(should be off)"
    done
    [ -z "$bad" ] || die "options not applied (unmet dependencies?):$bad"

    stage "compiling vmlinux with $(nproc) jobs (log: $log)"
    if ! make -C "$src" O="$obj" -j"$(nproc)" vmlinux >>"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "kernel build failed (full log: $log)"
    fi
    rm -rf "$cache.tmp"
    mkdir -p "$cache.tmp"
    cp "$obj/vmlinux" "$cache.tmp/vmlinux"
    make -s -C "$src" O="$obj" kernelrelease >"$cache.tmp/kernel.release" 2>>"$log"
    cp "$obj/.config" "$cache.tmp/config"
    rm -rf "$cache"
    mv "$cache.tmp" "$cache"
    rm -rf "$obj"
    stage "kernel $(cat "$cache/kernel.release") built"
else
    stage "kernel $(cat "$cache/kernel.release") cached ($cache)"
fi

mkdir -p "$dest"
cp "$cache/vmlinux" "$dest/vmlinux"
cp "$cache/kernel.release" "$dest/kernel.release"
