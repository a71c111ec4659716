#!/bin/sh
# SPDX-License-Identifier: MIT
# Run a busted spec that boots real VMs: skip (77) with the reason when this host
# cannot run sandboxes (no image, no QEMU), else run it with the built module.
# Usage: run-spec.sh LUA_INTERPRETER SPEC
set -eu
interp=$1 spec=$2
state=$(mktemp -d /tmp/smolvm-it.XXXXXX)
export SMOLVM_STATE_DIR="$state"
export SMOLVM_TEMPLATE_DIR="$state/templates"
cleanup() {
    # Whatever a failed test left: kill VMMs of this state dir, then remove it.
    pkill -9 -f -- "$state/" 2>/dev/null || true
    rm -rf "$state" "$state.out" "$state.rc"
}
trap cleanup EXIT INT TERM

missing=$("$SMOLVM_LUA" -e '
  for _, c in ipairs(require("smolvm").doctor()) do
    if c.required and not c.ok then print(c.name .. ": " .. c.detail) end
  end')
if [ -n "$missing" ]; then
    echo "SKIP: this host cannot run sandboxes:" >&2
    echo "$missing" >&2
    exit 77
fi
# Network safety: the specs run in a network namespace of their own with only
# loopback, so network = "auto" (nat when privileged) finds no uplink and no VM can
# ever be NATed out of this machine; QEMU user networking stays on loopback.
# The output is also kept, to check that busted got to its summary: an interpreter
# that dies silently with status 0 (it happened: a vfork child under ASan) ran nothing.
out="$state.out"
if [ "$(id -u)" -eq 0 ]; then
    { SMOLVM_TEST_NETNS=1 unshare --net -- sh -c 'ip link set lo up && exec "$0" /usr/bin/busted --output=plainTerminal "$1"' "$interp" "$spec"
      echo $? >"$state.rc"; } 2>&1 | tee "$out"
else
    { "$interp" /usr/bin/busted --output=plainTerminal "$spec"; echo $? >"$state.rc"; } 2>&1 | tee "$out"
fi
status=$(cat "$state.rc" 2>/dev/null || echo 1)
if [ "$status" -eq 0 ] && ! grep -Eq '^[0-9]+ success(es)? / [0-9]+ failures? / ' "$out"; then
    echo "run-spec: '$spec' ended with status 0 but busted printed no summary: it ran nothing" >&2
    status=1
fi
rm -f "$out" "$state.rc"
exit "$status"
