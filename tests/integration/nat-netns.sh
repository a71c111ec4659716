#!/bin/sh
# SPDX-License-Identifier: MIT
# Real guests on network = "nat", inside network namespaces this script makes and
# removes (never the machine's own): the spec runs in a namespace of its own playing
# the host (uplink up0 198.51.100.1, default route to the outside); a second one,
# joined by a veth pair, plays the outside world on the documentation range
# 198.51.100.0/24:
#   198.51.100.2   the "internet" host: HTTP on :8000, answers "client=<caller> host=<address hit>"
#   198.51.100.3   another internet host (same server), reached only by address
#   198.51.100.53  a DNS server of the test's own (dnsmasq): allowed.test and a.cdn.test
#                  -> .2, denied.test -> .3, private.test -> 10.1.0.1, TTL 5 s; other
#                  names REFUSED (it asks nobody else)
#   10.1.0.1, 172.20.0.1, 192.168.1.1, 100.64.0.1   private hosts (same server) that the
#                  host itself reaches, and the default egress policy must refuse.
# Every process of both namespaces is killed by pid, both are deleted, whatever happens.
# Usage: nat-netns.sh LUA SPEC         run a busted spec as the host
#        nat-netns.sh --exec CMD...    run a command as the host (bench/egress.c)
set -eu
interp=$1
shift

if [ "$(id -u)" -ne 0 ]; then
    echo "SKIP: network namespaces, TAP devices and nftables need root" >&2
    exit 77
fi
for tool in ip nft dnsmasq python3 curl; do
    if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
        echo "SKIP: '$tool' is missing (scripts/install-deps.sh installs it)" >&2
        exit 77
    fi
done
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

host="smolvm-host-$$" outside="smolvm-out-$$"
cleanup() {
    for ns in "$host" "$outside"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    done
    # the network lock file of the host namespace (named by its inode)
    ino=$(stat -L -c %i "/run/netns/$host" 2>/dev/null || true)
    [ -n "$ino" ] && rm -f "/run/smolvm/net-$ino.lock"
    ip netns del "$host" 2>/dev/null || true
    ip netns del "$outside" 2>/dev/null || true
    rm -rf "$state"
}
trap cleanup EXIT INT TERM
ip netns add "$host"
ip netns add "$outside"

O="ip netns exec $outside"
H="ip netns exec $host"
$H ip link set lo up
$H ip link add up0 type veth peer name out0
$H ip link set out0 netns "$outside"
$H ip addr add 198.51.100.1/24 dev up0
$H ip link set up0 up
$H ip route add default via 198.51.100.2 dev up0
$O ip link set lo up
$O ip addr add 198.51.100.2/24 dev out0
$O ip addr add 198.51.100.3/24 dev out0
$O ip addr add 198.51.100.53/24 dev out0
for a in 10.1.0.1 172.20.0.1 192.168.1.1 100.64.0.1; do $O ip addr add "$a/32" dev lo; done
$O ip link set out0 up
$O ip route add default via 198.51.100.1 dev out0
# The outside world's server: says who called and which of its addresses was hit.
$O /usr/bin/python3 -c "
import http.server, socketserver
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ('client=%s host=%s\n' % (self.client_address[0], self.connection.getsockname()[0])).encode()
        self.send_response(200); self.send_header('Content-Length', str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
S(('0.0.0.0', 8000), H).serve_forever()
" &
# Its resolver: only the test's names, short TTLs, nothing forwarded anywhere.
$O dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --no-poll \
    --bind-interfaces --listen-address=198.51.100.53 --port=53 --pid-file --user=root \
    --local-ttl=5 --host-record=allowed.test,198.51.100.2 --host-record=a.cdn.test,198.51.100.2 \
    --host-record=denied.test,198.51.100.3 --host-record=private.test,10.1.0.1 \
    --log-facility=- 2>/dev/null &
# Both answer before the spec starts (bounded).
i=0
until $H curl -s --max-time 1 -o /dev/null http://198.51.100.2:8000/ &&
    $H python3 -c "
import socket, sys
q = b'\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07allowed\x04test\x00\x00\x01\x00\x01'
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.5)
s.sendto(q, ('198.51.100.53', 53)); sys.exit(0 if s.recv(512)[:2] == b'\x12\x34' else 1)
" 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -gt 50 ]; then
        echo "nat-netns: the outside's HTTP server or resolver did not come up" >&2
        exit 1
    fi
    sleep 0.1
done

status=0
if [ "$interp" = "--exec" ]; then
    set -- "$@"
else
    set -- "$interp" /usr/bin/busted --output=plainTerminal "$1"
fi
$H env SMOLVM_NAT_OUTSIDE_NS="$outside" SMOLVM_NAT_HOST_NS="$host" SMOLVM_DNS=198.51.100.53 SMOLVM_TEST_NETNS=1 \
    "$@" || status=$?
exit $status
