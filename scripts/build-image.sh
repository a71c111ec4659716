#!/bin/sh
# SPDX-License-Identifier: MIT
# Build the smolvm guest image: kernel + rootfs + manifest.json, into
#   ${XDG_DATA_HOME:-$HOME/.local/share}/smolvm/images/<name>/
#
#   sudo scripts/build-image.sh [--force] [NAME]      (NAME defaults to "default")
#
# Skips the build when the image there was made from the same inputs (this directory's
# scripts, the kernel config fragment, src/guest, src/common) and its files are intact. The new
# image is assembled in a temporary directory next to the target and renamed into
# place, so a failed build never leaves a half image where a good one is looked for.
# Work files live in ${XDG_CACHE_HOME:-$HOME/.cache}/smolvm/build (the kernel is
# cached there by the hash of its own inputs). See docs/image.md.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
force=0
[ "${1:-}" = "--force" ] && { force=1; shift; }
name=${1:-default}
images=${XDG_DATA_HOME:-$HOME/.local/share}/smolvm/images
target="$images/$name"
export SMOLVM_BUILD_DIR=${SMOLVM_BUILD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/smolvm/build}
t0=$(date +%s)

die() { echo "build-image: $*" >&2; exit 1; }
stage() { echo "build-image: [$(($(date +%s) - t0))s] $*"; }

case $name in
    ''|.*|*/*) die "invalid image name '$name'" ;;
esac
[ "$(id -u)" -eq 0 ] || die "must run as root (the rootfs is built with mmdebstrap --mode=root); try: sudo $0 $*"
for c in sha256sum:coreutils flock:util-linux; do
    command -v "${c%%:*}" >/dev/null 2>&1 ||
        die "'${c%%:*}' not found (package '${c#*:}'; run scripts/install-deps.sh as root)"
done

# Everything that decides what the image contains. The package list lives in
# build-rootfs.sh, so it is covered too.
inputs_hash=$(cd "$top" && for f in scripts/build-image.sh scripts/build-kernel.sh \
        scripts/build-rootfs.sh scripts/guest-kernel.config \
        $(ls src/guest/* src/common/* | LC_ALL=C sort); do
        printf '%s\n' "$f"; sha256sum <"$f"; done | sha256sum | cut -d' ' -f1)

# Prints the sha256 the manifest records for file $2 (one "name": {...} per line).
manifest_sha() { sed -n "s/^ *\"$2\": {\"sha256\": \"\([0-9a-f]*\)\".*/\1/p" "$1"; }

up_to_date() {
    m="$target/manifest.json"
    [ -f "$m" ] || return 1
    grep -q "\"inputs_hash\": \"$inputs_hash\"" "$m" || return 1
    for f in vmlinux rootfs.ext4; do
        [ -f "$target/$f" ] || return 1
        want=$(manifest_sha "$m" "$f")
        [ -n "$want" ] && [ "$(sha256sum <"$target/$f" | cut -d' ' -f1)" = "$want" ] || return 1
    done
}

mkdir -p "$images" "$SMOLVM_BUILD_DIR"
# One build per image name at a time; a second one waits, then finds it up to date.
exec 9>"$images/.$name.lock"
flock 9

if [ $force -eq 0 ] && up_to_date; then
    echo "build-image: image '$name' is up to date ($target)"
    exit 0
fi

tmp="$images/.$name.tmp.$$"
trap 'rm -rf "$tmp"' EXIT INT TERM
rm -rf "$tmp"
mkdir -p "$tmp"

stage "kernel"
"$here/build-kernel.sh" "$tmp"
stage "rootfs"
"$here/build-rootfs.sh" "$tmp"
[ -f "$tmp/vmlinux" ] && [ -f "$tmp/rootfs.ext4" ] || die "a build step failed (see above)"

stage "manifest"
kernel_release=$(cat "$tmp/kernel.release")
n_packages=$(wc -l <"$tmp/packages.tsv")
{
    echo "{"
    echo "  \"format\": 1,"
    echo "  \"name\": \"$name\","
    echo "  \"built\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
    echo "  \"inputs_hash\": \"$inputs_hash\","
    echo "  \"kernel_version\": \"$kernel_release\","
    # The guest agent (src/guest/agent-*.c) is in every image built here; the value is
    # the agent protocol version it speaks (docs/agent-protocol.md).
    echo "  \"agent\": \"1\","
    echo "  \"kernel_cmdline_hint\": \"console=ttyS0 reboot=t panic=-1 acpi=off root=/dev/vda rw rootfstype=ext4 init=/sbin/smolvm-init quiet\","
    echo "  \"files\": {"
    for f in vmlinux rootfs.ext4; do
        sep=,; [ $f = rootfs.ext4 ] && sep=
        echo "    \"$f\": {\"sha256\": \"$(sha256sum <"$tmp/$f" | cut -d' ' -f1)\", \"size\": $(stat -c %s "$tmp/$f")}$sep"
    done
    echo "  },"
    echo "  \"packages\": {"
    # Debian package names and versions never contain '"' or '\'.
    awk -F'\t' '{ printf "%s    \"%s\": \"%s\"", (NR > 1 ? ",\n" : ""), $1, $2 } END { print "" }' \
        "$tmp/packages.tsv"
    echo "  }"
    echo "}"
} >"$tmp/manifest.json"
rm -f "$tmp/kernel.release" "$tmp/packages.tsv"
chmod 0755 "$tmp"
chmod 0644 "$tmp"/*

# Swap in: the old image stays complete until the new one is ready.
if [ -e "$target" ]; then
    mv "$target" "$images/.$name.old.$$"
fi
mv "$tmp" "$target"
rm -rf "$images/.$name.old.$$"
trap - EXIT INT TERM

k=$(stat -c %s "$target/vmlinux")
r=$(stat -c %s "$target/rootfs.ext4")
ru=$(du -k "$target/rootfs.ext4" | cut -f1)
echo "build-image: image '$name' built in $(($(date +%s) - t0))s: kernel $kernel_release" \
     "($((k / 1048576)) MiB), rootfs $((r / 1048576)) MiB ($((ru / 1024)) MiB allocated)," \
     "$n_packages packages -> $target"
