#!/bin/sh
# SPDX-License-Identifier: MIT
# bench-lifecycle with network = "nat", inside network namespaces made here and
# removed afterwards (never this machine's own network): a private "host" namespace
# whose default route is a veth to a throwaway "outside" namespace.
#   sudo bench/lifecycle-nat.sh [bench-lifecycle options, e.g. -n 5 -v]
set -eu
bench=$(cd "$(dirname "$0")/.." && pwd)/build/bench-lifecycle
out=smolvm-bench-out-$$
state=$(mktemp -d /tmp/smolvm-bench-nat.XXXXXX)
ip netns add "$out"
trap 'pkill -9 -f -- "$state/" 2>/dev/null || true; ip netns del "$out"; rm -rf "$state"' EXIT
SMOLVM_STATE_DIR="$state" unshare --net -- sh -ec '
    out=$1 bench=$2; shift 2
    ip link set lo up
    ip link add up0 type veth peer name out0
    ip link set out0 netns "$out"
    ip addr add 10.98.0.1/24 dev up0
    ip link set up0 up
    ip -n "$out" addr add 10.98.0.2/24 dev out0
    ip -n "$out" link set out0 up
    ip route add default via 10.98.0.2
    exec "$bench" -N "$@"
' sh "$out" "$bench" "$@"
