#!/bin/sh
# SPDX-License-Identifier: MIT
# Real guests on network = "nat", inside network namespaces this script makes and
# removes (never the machine's own): the spec runs in a fresh namespace playing the
# host; a second namespace, joined by a veth pair, plays the outside world with a
# small TCP server. Usage: nat-netns.sh LUA SPEC
set -eu
interp=$1 spec=$2

if [ "$(id -u)" -ne 0 ]; then
    echo "SKIP: network namespaces, TAP devices and nftables need root" >&2
    exit 77
fi
state=$(mktemp -d /tmp/smolvm-nat.XXXXXX)
export SMOLVM_STATE_DIR="$state"
export SMOLVM_TEMPLATE_DIR="$state/templates"
missing=$("$SMOLVM_LUA" -e '
  for _, c in ipairs(require("smolvm").doctor()) do
    if c.required and not c.ok then print(c.name .. ": " .. c.detail) end
  end')
if [ -n "$missing" ]; then
    rm -rf "$state"
    echo "SKIP: this host cannot run sandboxes: $missing" >&2
    exit 77
fi

outside="smolvm-out-$$"
cleanup() {
    pkill -9 -f -- "$state/" 2>/dev/null || true
    ip netns pids "$outside" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$outside" 2>/dev/null || true
    rm -rf "$state"
}
trap cleanup EXIT INT TERM
ip netns add "$outside"

status=0
# Everything below runs in a private namespace that vanishes with the process.
unshare --net -- sh -eu -c '
    outside=$1 interp=$2 spec=$3
    ip link set lo up
    ip link add up0 type veth peer name out0
    ip link set out0 netns "$outside"
    ip addr add 10.99.0.1/24 dev up0
    ip link set up0 up
    ip -n "$outside" link set lo up
    ip -n "$outside" addr add 10.99.0.2/24 dev out0
    ip -n "$outside" link set out0 up
    ip route add default via 10.99.0.2 dev up0
    # The outside world: answers with the address it saw the client come from.
    ip netns exec "$outside" /usr/bin/python3 -c "
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (\"client=%s\n\" % self.client_address[0]).encode()
        self.send_response(200); self.send_header(\"Content-Length\", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer((\"10.99.0.2\", 8000), H).serve_forever()
" &
    export SMOLVM_NAT_OUTSIDE_NS="$outside" SMOLVM_DNS=10.99.0.2
    exec "$interp" /usr/bin/busted --output=plainTerminal "$spec"
' sh "$outside" "$interp" "$spec" || status=$?
exit $status
