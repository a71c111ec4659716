#!/bin/sh
# SPDX-License-Identifier: MIT
# Build the smolvm guest root filesystem: Debian bookworm (mmdebstrap minbase) with
# openssh-server, python3, pip, curl, iproute2, our init and our agent, as an ext4 image.
#
#   scripts/build-rootfs.sh [--packages a,b] [--log FILE] DEST_DIR
#       -> DEST_DIR/rootfs.ext4, DEST_DIR/packages.tsv
#
# --packages: Debian packages installed on top of the default set below (build-image.sh
# validates the names; checked again here). --log: where mmdebstrap's and mkfs's output
# goes (default $SMOLVM_BUILD_DIR/rootfs.log).
# Must run as root (mmdebstrap --mode=root, files owned by root in the image).
# Environment: SMOLVM_MIRROR (default: the host's apt mirror), SMOLVM_ROOTFS_FREE_MB
# (free space left in the image, default 1024; the file is sparse so it costs nothing).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
build_dir=${SMOLVM_BUILD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/smolvm/build}
free_mb=${SMOLVM_ROOTFS_FREE_MB:-1024}
suite=bookworm
# Part of the image's inputs hash (this file is hashed), so editing it rebuilds.
packages="openssh-server,python3,python3-pip,ca-certificates,iproute2,curl"
t0=$(date +%s)

die() { echo "build-rootfs: $*" >&2; exit 1; }
stage() { echo "build-rootfs: [$(($(date +%s) - t0))s] $*"; }

extra= log=
while [ $# -gt 1 ]; do
    case $1 in
        --packages) extra=$2; shift 2 ;;
        --log) log=$2; shift 2 ;;
        *) break ;;
    esac
done
[ $# -eq 1 ] || die "usage: build-rootfs.sh [--packages a,b] [--log FILE] DEST_DIR"
dest=$1
log=${log:-$build_dir/rootfs.log}
case ,$extra, in
    *,,*) [ -z "$extra" ] || die "invalid --packages '$extra' (an empty name)" ;;
esac
case $extra in
    *[!a-z0-9+.,-]*) die "invalid --packages '$extra' (Debian package names only)" ;;
esac
[ "$(id -u)" -eq 0 ] || die "must run as root (mmdebstrap needs it to create a root-owned tree); try: sudo $0 $*"
for c in mmdebstrap:mmdebstrap mkfs.ext4:e2fsprogs cc:build-essential; do
    command -v "${c%%:*}" >/dev/null 2>&1 ||
        die "'${c%%:*}' not found (package '${c#*:}'; run scripts/install-deps.sh as root)"
done

# The mirror the host's apt uses (deb822 .sources or one-line .list), so builds work
# where only that mirror is reachable.
host_mirror() { # $1: suite to look for; prints the URI serving it
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        awk -v s="$1" '$1 == "deb" { u = ""; for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { if (u == "") u = $i; else if ($i == s) { print u; exit } } }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk -v s="$1" 'BEGIN { RS = ""; FS = "\n" }
            { u = ""; ok = 0; deb = 0
              for (i = 1; i <= NF; i++) {
                if ($i ~ /^URIs:/) { split($i, a, " "); u = a[2] }
                if ($i ~ /^Types:/ && $i ~ / deb( |$)/) deb = 1
                if ($i ~ /^Suites:/) { n = split($i, b, " "); for (j = 2; j <= n; j++) if (b[j] == s) ok = 1 }
                if ($i ~ /^Enabled: *no/) ok = 0
              }
              if (deb && ok && u != "") { print u; exit } }' "$f"
    done
}
mirror=${SMOLVM_MIRROR:-$(host_mirror $suite | head -n1)}
mirror=${mirror:-http://deb.debian.org/debian}
security=$(host_mirror $suite-security | head -n1)
security=${security:-${mirror%/debian}/debian-security}

# Reproducible-ish: file times clamped to the newest input, not to "now".
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(stat -c %Y "$0" "$top"/src/guest/* "$top"/src/common/* | sort -n | tail -n1)
fi
export SOURCE_DATE_EPOCH

work="$build_dir/rootfs.$$"
# --one-file-system: should mmdebstrap ever leave /proc or /dev mounted in the tree,
# removing it must not reach into them.
trap 'rm -rf --one-file-system "$work"' EXIT INT TERM
rm -rf "$work"
mkdir -p "$work" "$dest"

stage "compiling smolvm-init and smolvm-agent"
init_sources=$(ls "$top"/src/guest/*.c | grep -v '/agent[^/]*\.c$')
# shellcheck disable=SC2086
cc -std=c11 -Wall -Wextra -Werror -static -O2 -s -o "$work/smolvm-init" $init_sources ||
    die "compiling src/guest failed (static glibc comes with build-essential/libc6-dev)"
jansson_a=$(cc -print-file-name=libjansson.a)
[ -f "$jansson_a" ] || die "libjansson.a not found (package 'libjansson-dev'; run scripts/install-deps.sh as root)"
cc -std=gnu11 -Wall -Wextra -Werror -static -O2 -s -I"$top/src/common" -o "$work/smolvm-agent" \
    "$top"/src/guest/agent*.c "$top"/src/common/agent-proto.c "$jansson_a" ||
    die "compiling the agent (src/guest/agent*.c) failed"

stage "mmdebstrap $suite from $mirror${extra:+, extra packages $extra} (log: $log)"
# No recommends (python3-pip would pull in a compiler), no docs/man/locales.
if ! mmdebstrap --variant=minbase --mode=root --format=directory \
    --include="$packages${extra:+,$extra}" \
    --aptopt='APT::Install-Recommends "false"' \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*' \
    --customize-hook="cp '$work/smolvm-init' \"\$1\"/sbin/smolvm-init" \
    --customize-hook='chmod 0755 "$1"/sbin/smolvm-init' \
    --customize-hook="cp '$work/smolvm-agent' \"\$1\"/usr/sbin/smolvm-agent" \
    --customize-hook='chmod 0755 "$1"/usr/sbin/smolvm-agent' \
    --customize-hook='for f in hostname hosts resolv.conf; do rm -f "$1/etc/$f"; ln -s "/run/smolvm/$f" "$1/etc/$f"; done' \
    --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
    --customize-hook='sed -i "s|^root:\\(.*\\):/bin/bash$|root:\\1:/bin/sh|" "$1"/etc/passwd' \
    --customize-hook='printf "[global]\nroot-user-action = ignore\ndisable-pip-version-check = true\n" >"$1"/etc/pip.conf' \
    --customize-hook=': >"$1"/etc/machine-id; : >"$1"/etc/fstab' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old "$1"/var/log/*' \
    "$suite" "$work/root" \
    "deb $mirror $suite main" "deb $mirror $suite-updates main" \
    "deb $security $suite-security main" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    missing=$(sed -n 's/^E: Unable to locate package \([a-z0-9+.-]*\).*/\1/p' "$log" | sort -u | paste -sd' ' -)
    [ -z "$missing" ] || die "no such package in $suite (from $mirror): $missing (full log: $log)"
    die "mmdebstrap failed (full log: $log)"
fi

dpkg-query --admindir="$work/root/var/lib/dpkg" -W -f='${Package}\t${Version}\n' \
    >"$dest/packages.tsv"

used_kb=$(du -sk "$work/root" | cut -f1)
# Content + free space + ~10% for ext4 metadata, rounded up to 64 MiB.
size_mb=$(( (used_kb * 11 / 10 / 1024 + free_mb + 63) / 64 * 64 ))
stage "mkfs.ext4 ${size_mb} MiB (content $((used_kb / 1024)) MiB)"
rm -f "$dest/rootfs.ext4"
truncate -s "${size_mb}M" "$dest/rootfs.ext4"
# -i 16384: plenty of inodes for pip without megabytes of inode tables;
# -m 0: root is the only user; fixed hash seed and timestamps for reproducibility.
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -F -L smolvm-root -m 0 -i 16384 \
    -U 5ab0c0de-0000-4000-8000-000000000002 -E root_owner=0:0,hash_seed=5ab0c0de-0000-4000-8000-000000000001 \
    -d "$work/root" "$dest/rootfs.ext4" >>"$log" 2>&1 ||
    { tail -n 20 "$log" >&2; die "mkfs.ext4 failed (log: $log)"; }
stage "rootfs built ($(wc -l <"$dest/packages.tsv") packages)"
