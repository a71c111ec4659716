#!/bin/sh
# SPDX-License-Identifier: MIT
# Build the libFuzzer targets (clang, ASan + UBSan) in build-fuzz/ and run every
# fuzz-* target (or only the NAMEs given: qmp for fuzz-qmp) for SECONDS each, one after
# the other.
#
#   bench/fuzz.sh SECONDS [NAME...]
#
# New inputs go to build-fuzz/corpus/<target>/ (seeded from tests/fuzz/corpus/<target>/),
# crashes to build-fuzz/crash-<target>-*; tests/fuzz/<target>.dict, when there is one,
# is passed as the libFuzzer dictionary. Copy a crash into tests/fuzz/corpus/<target>/
# once it is fixed, so the unit/fuzz-replay-* tests keep it fixed. Exit 1 if a target
# found a crash.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
[ $# -ge 1 ] && [ "$1" -gt 0 ] 2>/dev/null || { echo "usage: bench/fuzz.sh SECONDS [NAME...]" >&2; exit 2; }
secs=$1
shift
build="$top/build-fuzz"
command -v clang >/dev/null 2>&1 ||
    { echo "fuzz: clang not found (packages 'clang' and 'libclang-rt-14-dev'; run scripts/install-deps.sh)" >&2; exit 1; }

log="$build/fuzz-build.log"
mkdir -p "$build"
cmake -S "$top" -B "$build" -DCMAKE_C_COMPILER=clang -DSMOLVM_FUZZ=ON \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$log" 2>&1 ||
    { tail -n 20 "$log" >&2; echo "fuzz: configuring failed (log: $log)" >&2; exit 1; }
if [ $# -gt 0 ]; then
    targets=
    for name in "$@"; do
        [ -f "$top/tests/fuzz/fuzz-$name.c" ] ||
            { echo "fuzz: no target '$name' (tests/fuzz/fuzz-$name.c)" >&2; exit 2; }
        targets="$targets fuzz-$name"
    done
else
    targets=$(cd "$top/tests/fuzz" && ls fuzz-*.c | sed 's/\.c$//')
fi
# shellcheck disable=SC2086
cmake --build "$build" -j2 --target $targets >>"$log" 2>&1 ||
    { tail -n 30 "$log" >&2; echo "fuzz: building failed (log: $log)" >&2; exit 1; }

status=0
for t in $targets; do
    name=${t#fuzz-}
    mkdir -p "$build/corpus/$name"
    echo "fuzz: $t for ${secs}s"
    start=$(date +%s)
    dict=
    [ -f "$top/tests/fuzz/$name.dict" ] && dict="-dict=$top/tests/fuzz/$name.dict"
    # shellcheck disable=SC2086
    if "$build/$t" -max_total_time="$secs" -max_len=200000 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$build/crash-$name-" $dict \
        "$build/corpus/$name" "$top/tests/fuzz/corpus/$name" >"$build/$t.log" 2>&1; then
        result=ok
    else
        result="FOUND A CRASH (see $build/$t.log, $build/crash-$name-*)"
        status=1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$build/$t.log" | tail -n1)
    cov=$(grep -o 'cov: [0-9]*' "$build/$t.log" | tail -n1)
    echo "fuzz: $t: $result after $(($(date +%s) - start))s, ${execs:-?} runs, $cov," \
         "corpus $(ls "$build/corpus/$name" | wc -l) files"
done
exit $status
