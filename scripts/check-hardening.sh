#!/bin/sh
# SPDX-License-Identifier: MIT
# The host binaries a build made carry the hardening CMakeLists.txt asks for in every
# build type (issue 17, L6): executables are PIE, everything has full RELRO (a
# GNU_RELRO segment and BIND_NOW), and calls the stack protector and _FORTIFY_SOURCE
# insert (__stack_chk_fail, __*_chk) are there. Reads the ELF files with readelf/nm.
#   scripts/check-hardening.sh BUILD_DIR
set -eu
build=${1:?usage: check-hardening.sh BUILD_DIR}
command -v readelf >/dev/null && command -v nm >/dev/null || {
    echo "SKIP: readelf and nm are needed (binutils)" >&2
    exit 77
}
fail=0
bad() {
    echo "check-hardening: $1: $2" >&2
    fail=1
}
check() { # FILE KIND(exe|lib)
    f=$1
    [ -f "$f" ] || { bad "$f" "not built"; return; }
    if [ "$2" = exe ]; then
        readelf -hW "$f" | grep -q 'Type:.*DYN' || bad "$f" "not a position-independent executable"
    fi
    readelf -lW "$f" | grep -q GNU_RELRO || bad "$f" "no RELRO segment (-z relro)"
    readelf -dW "$f" | grep -Eq 'BIND_NOW|FLAGS.*NOW' || bad "$f" "lazy binding (-z now missing)"
    syms=$(nm -D "$f" 2>/dev/null || true)
    echo "$syms" | grep -q '__stack_chk_fail' || bad "$f" "no stack protector (-fstack-protector-strong)"
    echo "$syms" | grep -Eq '__[a-z_]+_chk(@|$)' || bad "$f" "no fortified calls (_FORTIFY_SOURCE)"
}
check "$build/smolvm-lua" exe
check "$build/smolvm-supervisor" exe
check "$build/libsmolvm.so" lib
for m in "$build"/lua54/smolvm/core.so "$build"/luajit/smolvm/core.so; do
    [ -f "$m" ] && check "$m" lib
done
[ "$fail" = 0 ] && echo "check-hardening: PIE, full RELRO, stack protector and fortified calls in every host binary"
exit "$fail"
