#!/bin/sh
# SPDX-License-Identifier: MIT
# Build a smolvm guest image: kernel + rootfs + manifest.json, into
#   ${SMOLVM_IMAGE_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/smolvm/images}/<name>/
#
#   sudo scripts/build-image.sh [--force] [--packages a,b,c] [NAME]   (NAME: "default")
#   scripts/build-image.sh --dry-run [--packages a,b,c] [NAME]        would it build?
#
# NAME matches [a-z0-9][a-z0-9_-]{0,62} ("templates" is reserved). --packages adds
# Debian packages (comma-separated, repeatable) to the default set of build-rootfs.sh;
# the list, sorted and without duplicates, is part of the image's definition.
#
# Skips the build when the image there was made from the same inputs (the extra
# packages, this directory's scripts, the kernel config fragment, src/guest,
# src/common) and its files are intact (their sha256, or unchanged since they last
# matched: <name>/.verified); that check needs no root, building does. The
# new image is assembled in a temporary directory next to the target and renamed into
# place, so a failed build never leaves a half image where a good one is looked for.
# Work files live in ${SMOLVM_BUILD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/smolvm/build}
# (the kernel is cached there by the hash of its own inputs, so every image shares
# it). --dry-run only compares the inputs hash and the file sizes (no sha256, no lock,
# nothing written). See docs/image.md.
#
# Exit status: 0 built or up to date (--dry-run: up to date), 1 the build failed,
# 2 bad usage (name, packages), 3 building needs root, 4 a tool is missing,
# 5 --dry-run: the image would be built.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
t0=$(date +%s)

die() { echo "build-image: $*" >&2; exit 1; }
usage() { echo "build-image: $*" >&2; echo "usage: build-image.sh [--force] [--dry-run] [--packages a,b,c] [NAME]" >&2; exit 2; }
stage() { echo "build-image: [$(($(date +%s) - t0))s] $*"; }

force=0 dry_run=0 packages_arg= name= named=0 why=
while [ $# -gt 0 ]; do
    case $1 in
        --force) force=1 ;;
        --dry-run) dry_run=1 ;;
        --packages) [ $# -ge 2 ] || usage "option '--packages' needs a value"
                    packages_arg="$packages_arg,$2"; shift ;;
        --packages=*) packages_arg="$packages_arg,${1#--packages=}" ;;
        -h|--help) sed -n '3,25s/^# \{0,1\}//p' "$0"; exit 0 ;;
        --) shift
            if [ $# -gt 1 ] || { [ $# -eq 1 ] && [ $named -eq 1 ]; }; then usage "one image name only"; fi
            [ $# -eq 0 ] || { name=$1; named=1; }
            break ;;
        -*) usage "unknown option '$1'" ;;
        *) [ $named -eq 0 ] || usage "one image name only, got '$name' and '$1'"; name=$1; named=1 ;;
    esac
    shift
done
[ $named -eq 1 ] || name=default
[ $force -eq 0 ] || why="--force"

# The names the library accepts (smolvm_id_valid); "templates" is kept free for them.
case $name in
    ''|[!a-z0-9]*|*[!a-z0-9_-]*)
        usage "invalid image name '$name' (expected [a-z0-9][a-z0-9_-]{0,62})" ;;
esac
[ ${#name} -le 63 ] || usage "invalid image name '$name' (at most 63 characters)"
[ "$name" != templates ] || usage "the image name 'templates' is reserved"

# Extra packages: Debian policy names (lowercase letters, digits, '+', '-', '.', at
# least two characters, starting with a letter or digit), sorted, duplicates dropped.
extra=
n_extra=0
old_ifs=$IFS
set -f # no globbing of the user's words
IFS=,
for p in ${packages_arg#,}; do
    IFS=$old_ifs
    p=$(printf '%s' "$p" | sed 's/^[[:space:]]*//; s/[[:space:]]*$//')
    case $p in
        '') [ -z "$(printf '%s' "$packages_arg" | tr -d ', \t')" ] && continue
            usage "--packages: empty package name in '${packages_arg#,}'" ;;
        ?|[!a-z0-9]*|*[!a-z0-9+.-]*)
            usage "--packages: invalid package name '$p' (Debian package names are lowercase letters, digits, '+', '-' and '.', at least 2 characters, starting with a letter or digit)" ;;
    esac
    [ ${#p} -le 128 ] || usage "--packages: package name '$p' is longer than 128 characters"
    extra="$extra$p
"
    n_extra=$((n_extra + 1))
done
IFS=$old_ifs
set +f
[ $n_extra -le 256 ] || usage "--packages: at most 256 packages, got $n_extra"
extra=$(printf '%s' "$extra" | LC_ALL=C sort -u | paste -sd, -)
extra_json=$(printf '%s' "$extra" | awk -F, '{ for (i = 1; i <= NF; i++) printf "%s\"%s\"", (i > 1 ? ", " : ""), $i }')

images=${SMOLVM_IMAGE_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/smolvm/images}
target="$images/$name"
export SMOLVM_BUILD_DIR=${SMOLVM_BUILD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/smolvm/build}

for c in sha256sum:coreutils flock:util-linux; do
    command -v "${c%%:*}" >/dev/null 2>&1 || {
        echo "build-image: '${c%%:*}' not found (package '${c#*:}'; run scripts/install-deps.sh as root)" >&2
        exit 4
    }
done

# Everything that decides what the image contains: the extra packages, and the
# scripts (the default package list lives in build-rootfs.sh, so it is covered too).
inputs_hash=$( { printf 'extra_packages=%s\n' "$extra"
        cd "$top" && for f in scripts/build-image.sh scripts/build-kernel.sh \
        scripts/build-rootfs.sh scripts/guest-kernel.config \
        $(ls src/guest/* src/common/* | LC_ALL=C sort); do
        printf '%s\n' "$f"; sha256sum <"$f"; done; } | sha256sum | cut -d' ' -f1)

# Prints the sha256 / size the manifest records for file $2 (one "name": {...} per line).
manifest_sha() { sed -n "s/^ *\"$2\": {\"sha256\": \"\([0-9a-f]*\)\".*/\1/p" "$1"; }
manifest_size() { sed -n "s/^ *\"$2\": {.*\"size\": \([0-9]*\)}.*/\1/p" "$1"; }

# The files' identity as the filesystem sees it (size, inode, mtime, ctime: any write
# changes the ctime), recorded in $target/.verified after the sha256 of both files
# matched, so the next check need not read 1 GiB again while nothing changed.
fingerprint() {
    echo "$inputs_hash"
    stat -c '%n %s %i %.9Y %.9Z' "$target/manifest.json" "$target/vmlinux" "$target/rootfs.ext4"
}
record_verified() {
    fingerprint >"$target/.verified.$$" 2>/dev/null && mv -f "$target/.verified.$$" "$target/.verified" ||
        rm -f "$target/.verified.$$"
    return 0
}

# up_to_date [quick]: is the image there built from these inputs, its files intact?
# Sets `why` when not. quick: sizes instead of sha256 (for --dry-run).
up_to_date() {
    m="$target/manifest.json"
    [ -f "$m" ] || { why="not built yet"; return 1; }
    grep -q "\"inputs_hash\": \"$inputs_hash\"" "$m" ||
        { why="its definition or the build scripts changed"; return 1; }
    for f in vmlinux rootfs.ext4; do
        [ -f "$target/$f" ] || { why="$f is missing"; return 1; }
    done
    if [ "${1:-}" != quick ] && [ -f "$target/.verified" ] &&
        [ "$(fingerprint 2>/dev/null)" = "$(cat "$target/.verified")" ]; then
        return 0
    fi
    for f in vmlinux rootfs.ext4; do
        if [ "${1:-}" = quick ]; then
            want=$(manifest_size "$m" "$f")
            [ -n "$want" ] && [ "$(stat -c %s "$target/$f")" = "$want" ] ||
                { why="$f does not match its manifest"; return 1; }
        else
            want=$(manifest_sha "$m" "$f")
            [ -n "$want" ] && [ "$(sha256sum <"$target/$f" | cut -d' ' -f1)" = "$want" ] ||
                { why="$f does not match its manifest"; return 1; }
        fi
    done
    [ "${1:-}" = quick ] || [ "$(id -u)" -ne 0 ] || record_verified
}

with_packages=${extra:+ (extra packages: $extra)}
if [ $dry_run -eq 1 ]; then
    if [ $force -eq 0 ] && up_to_date quick; then
        echo "build-image: image '$name' is up to date ($target)"
        exit 0
    fi
    echo "build-image: image '$name' would be built$with_packages: $why"
    exit 5
fi

if [ "$(id -u)" -ne 0 ]; then
    # Nothing to build needs no root (and no lock: a build renames its result in whole).
    if [ $force -eq 0 ] && up_to_date; then
        echo "build-image: image '$name' is up to date ($target)"
        exit 0
    fi
    echo "build-image: image '$name' must be built ($why), which needs root (the rootfs is built with mmdebstrap --mode=root); try: sudo env SMOLVM_IMAGE_DIR='$images' $0${extra:+ --packages $extra} $name" >&2
    exit 3
fi

mkdir -p "$images" "$SMOLVM_BUILD_DIR"
# One build per image name at a time; a second one waits, then finds it up to date.
exec 9>"$images/.$name.lock"
if ! flock -n 9; then
    echo "build-image: waiting for another build of image '$name' to finish"
    flock 9
fi

if [ $force -eq 0 ] && up_to_date; then
    echo "build-image: image '$name' is up to date ($target)"
    exit 0
fi

tmp="$images/.$name.tmp.$$"
trap 'rm -rf "$tmp"' EXIT INT TERM
# Builds of this name hold the lock: temporary directories of earlier ones that were
# killed are leftovers.
rm -rf "$images/.$name.tmp."*
mkdir -p "$tmp"

stage "building image '$name'$with_packages ($why)"
stage "kernel"
"$here/build-kernel.sh" "$tmp"
stage "rootfs"
"$here/build-rootfs.sh" --packages "$extra" --log "$SMOLVM_BUILD_DIR/rootfs-$name.log" "$tmp"
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
    echo "  \"kernel_cmdline_hint\": \"console=ttyS0 reboot=t panic=-1 acpi=off no_timer_check root=/dev/vda rw rootfstype=ext4 init=/sbin/smolvm-init quiet\","
    # What was asked for on top of the default set (validated names: no quoting needed).
    echo "  \"extra_packages\": [$extra_json],"
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
record_verified # the sha256 in the manifest were computed from these very files

k=$(stat -c %s "$target/vmlinux")
r=$(stat -c %s "$target/rootfs.ext4")
ru=$(du -k "$target/rootfs.ext4" | cut -f1)
echo "build-image: image '$name' built in $(($(date +%s) - t0))s: kernel $kernel_release" \
     "($((k / 1048576)) MiB), rootfs $((r / 1048576)) MiB ($((ru / 1024)) MiB allocated)," \
     "$n_packages packages$with_packages -> $target"
