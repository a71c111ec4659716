#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The guest agent in a real guest (docs/agent-protocol.md), under plain QEMU.

    tests/integration/agent_test.py [IMAGE_DIR]

Boots IMAGE_DIR (default: the image named by $SMOLVM_TEST_IMAGE, else "default") with
the agent's virtio-serial port, speaks the protocol from Python (framing checked first
against tests/fixtures/agent-vectors.json) and checks: HELLO arrives; exec output, exit
codes, env from the config disk, stdin, a PTY; read_file/write_file of 1 MiB; a
protocol error ends the session and a reconnect gets a fresh HELLO; a VM without a NIC
runs commands; `poweroff` powers the VM off. Prints the timings it measures (spawn to
HELLO vs spawn to the hvc0 ready line, exec `true` vs the guest's own posix_spawn,
read_file, 1 MiB write+read, stdout MB/s); bench/agent.py repeats them over several
boots. Exit 0 pass, 1 fail, 77 skip (no image, no QEMU). Python stdlib only; only
loopback traffic (user networking with restrict=on).
"""
import base64
import importlib.util
import json
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

SKIP = 77
HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
_spec = importlib.util.spec_from_file_location("image_boot", os.path.join(HERE, "image-boot.py"))
ib = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ib)
Fail = ib.Fail

HELLO, REQUEST, REPLY, DATA, WINDOW, EOF, EXIT, CONTROL, ERROR, RESET, GOAWAY = range(1, 12)
FIN = 1
FRAME_MAX = 65536
HOSTNAME = "vm-agenttest"
ENV = {"SOME_ENV": 'hello "world" \\ #1 $HOME', "SECOND": "2"}


# ---------------------------------------------------------------- framing

def encode(ftype, stream, payload=b"", flags=0, fd=0):
    return struct.pack(">IIBBBB", len(payload), stream, ftype, flags, fd, 0) + payload


def decode_header(b):
    """(length, stream, type, flags, fd) or raises ValueError(reason), as the C codec."""
    length, stream, ftype, flags, fd, reserved = struct.unpack(">IIBBBB", b[:12])
    if length > FRAME_MAX:
        raise ValueError("length over 65536")
    if not 1 <= ftype <= 11:
        raise ValueError("unknown type")
    if flags & ~FIN:
        raise ValueError("unknown flags")
    if reserved:
        raise ValueError("reserved byte not 0")
    if fd > 2:
        raise ValueError("fd over 2")
    if fd and ftype not in (DATA, WINDOW, EOF):
        raise ValueError("fd set on a frame without fd")
    if stream == 0 and ftype not in (HELLO, GOAWAY):
        raise ValueError("frame on stream 0 other than HELLO/GOAWAY")
    if stream != 0 and ftype in (HELLO, GOAWAY):
        raise ValueError("HELLO/GOAWAY not on stream 0")
    if ftype == WINDOW and length != 4:
        raise ValueError("WINDOW payload not 4 bytes")
    if ftype in (EOF, RESET) and length:
        raise ValueError("EOF/RESET with a payload")
    if ftype in (EXIT, ERROR) and not flags & FIN:
        raise ValueError("EXIT/ERROR without FIN")
    return length, stream, ftype, flags, fd


def check_vectors():
    """This client's framing against the shared vectors (what every implementation does)."""
    with open(os.path.join(SRC, "tests", "fixtures", "agent-vectors.json")) as f:
        vec = json.load(f)
    frames = {}
    for fr in vec["frames"]:
        hdr, payload = bytes.fromhex(fr["header_hex"]), bytes.fromhex(fr["payload_hex"])
        got = decode_header(hdr)
        want = (fr["length"], fr["stream"], fr["type"], fr["flags"], fr["fd"])
        if got != want:
            raise Fail("vector %s decodes to %r, want %r" % (fr["name"], got, want))
        if encode(fr["type"], fr["stream"], payload, fr["flags"], fr["fd"]) != hdr + payload:
            raise Fail("vector %s does not encode back" % fr["name"])
        frames[fr["name"]] = hdr + payload
    for bad in vec["invalid"]:
        try:
            decode_header(bytes.fromhex(bad["hex"]))
        except ValueError as e:
            if str(e) != bad["reason"]:
                raise Fail("invalid %s: reason %r, want %r" % (bad["name"], str(e), bad["reason"]))
        else:
            raise Fail("invalid header %s accepted" % bad["name"])
    for s in vec["streams"]:
        r = Reader()
        got, err = [], None
        for c in s["chunks_hex"]:
            try:
                got += r.feed(bytes.fromhex(c))
            except ValueError as e:
                err = str(e)
                break
        want = [frames[n] for n in s["frames"]]
        if [encode(t, st, p, fl, fd) for (st, t, fl, fd, p) in got] != want or err != s.get("error"):
            raise Fail("stream vector %s: got %d frames, error %r" % (s["name"], len(got), err))
    return len(vec["frames"]), len(vec["invalid"]), len(vec["streams"])


class Reader:
    def __init__(self):
        self.buf = b""

    def feed(self, data):
        """Whole frames as (stream, type, flags, fd, payload); raises ValueError."""
        buf = self.buf + data if self.buf else data
        out, pos, n = [], 0, len(buf)
        while n - pos >= 12:  # by offset: slicing the rest each time is quadratic
            length, stream, ftype, flags, fd = decode_header(buf[pos:pos + 12])
            if n - pos < 12 + length:
                break
            out.append((stream, ftype, flags, fd, buf[pos + 12:pos + 12 + length]))
            pos += 12 + length
        self.buf = buf[pos:]
        return out


class Client:
    """One session with the agent over QEMU's chardev socket."""

    def __init__(self, path, timeout=60):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.reader = Reader()
        self.pending = []
        self.next_id = 1
        self.timeout = timeout

    def close(self):
        self.sock.close()

    def send(self, ftype, stream, payload=b"", flags=0, fd=0):
        self.sock.sendall(encode(ftype, stream, payload, flags, fd))

    def send_json(self, ftype, stream, obj, flags=0):
        self.send(ftype, stream, json.dumps(obj).encode(), flags)

    def recv(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Fail("no frame from the agent within %ss" % (timeout or self.timeout))
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                continue
            data = self.sock.recv(1 << 20)
            if not data:
                return None
            self.pending += self.reader.feed(data)
        stream, ftype, flags, fd, payload = self.pending.pop(0)
        body = json.loads(payload) if ftype in (HELLO, REPLY, EXIT, ERROR, GOAWAY) else payload
        return stream, ftype, flags, fd, body

    def hello(self, timeout=60):
        f = self.recv(timeout)
        if f is None or f[1] != HELLO or f[4].get("version") != 1:
            raise Fail("expected HELLO, got %r" % (f,))
        self.send_json(HELLO, 0, {"version": 1, "client": "agent_test.py"})
        return f[4]

    def request(self, req, flags=0):
        sid = self.next_id
        self.next_id += 2
        self.send_json(REQUEST, sid, req, flags)
        return sid

    def window(self, sid, n):
        self.send(WINDOW, sid, struct.pack(">I", n))

    def call(self, req):
        """A request that ends at once: the final REPLY's JSON, or raises on ERROR."""
        sid = self.request(req)
        while True:
            f = self.recv()
            if f is None:
                raise Fail("connection closed during %r" % req)
            if f[0] != sid:
                continue
            if f[1] == ERROR:
                raise Fail("%s: %s" % (req.get("op"), f[4]))
            if f[1] == REPLY and f[2] & FIN:
                return f[4]

    def run(self, req, stdin=None, window=1 << 24):
        """exec (or attach): {"reply", "out": {1: bytes, 2: bytes}, "exit"|"error"}."""
        req = dict(req, window=window)
        if stdin is not None:
            req["stdin"] = True
        sid = self.request(req)
        res = {"out": {1: b"", 2: b""}, "eof": set()}
        while True:
            f = self.recv()
            if f is None:
                raise Fail("connection closed during %r" % req)
            stream, ftype, flags, fd, body = f
            if stream != sid:
                continue
            if ftype == REPLY:
                res["reply"] = body
                if stdin is not None:
                    for i in range(0, len(stdin), FRAME_MAX):
                        self.send(DATA, sid, stdin[i:i + FRAME_MAX])
                    self.send(EOF, sid)
            elif ftype == DATA:
                res["out"][fd] += body  # small outputs only: measure() streams the big one
                if body:
                    self.window(sid, len(body))
            elif ftype == EOF:
                res["eof"].add(fd)
            elif ftype in (EXIT, ERROR):
                res["exit" if ftype == EXIT else "error"] = body
                return res

    def write_file(self, path, data, mode=0o644):
        sid = self.request({"op": "write_file", "path": path, "mode": mode, "mkdirs": True})
        f = self.recv()
        if f[1] != REPLY:
            raise Fail("write_file: %r" % (f,))
        window, sent = f[4]["window"], 0
        while True:
            while sent < len(data) and window > 0:
                n = min(FRAME_MAX, window, len(data) - sent)
                self.send(DATA, sid, data[sent:sent + n])
                sent += n
                window -= n
                if sent == len(data):
                    self.send(EOF, sid)
            if not data and sent == 0:
                self.send(EOF, sid)
                sent = -1
            f = self.recv()
            if f[1] == WINDOW:
                window += struct.unpack(">I", f[4])[0]
            elif f[1] == REPLY and f[2] & FIN:
                return f[4]
            else:
                raise Fail("write_file: %r" % (f,))

    def read_file(self, path, window=1 << 24):
        sid = self.request({"op": "read_file", "path": path, "window": window})
        data = b""
        while True:
            f = self.recv()
            if f[0] != sid:
                continue
            if f[1] == ERROR:
                raise Fail("read_file %s: %s" % (path, f[4]))
            if f[1] == DATA:
                data += f[4]
                self.window(sid, len(f[4]))
            if f[1] == EOF:
                return data


# ---------------------------------------------------------------- the VM

class VM:
    """QEMU microvm with the agent port; shaped like image-boot.py and src/lib/vmm/qemu.c."""

    def __init__(self, image_dir, tmp, network=True, memory=512):
        self.tmp = tmp
        ib.make_keys(tmp)
        cfg = os.path.join(tmp, "config.img")
        ib.write_config_disk(cfg, tmp, HOSTNAME, ENV)
        self.console = os.path.join(tmp, "console.log")
        ctl_path = os.path.join(tmp, "ctl.sock")
        self.agent_path = os.path.join(tmp, "agent.sock")
        self.ctl_listen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctl_listen.bind(ctl_path)
        self.ctl_listen.listen(1)
        # QEMU serves the agent port on a socket we bound: connectable at once, no wait
        # for a file to appear.
        self.agent_listen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.agent_listen.bind(self.agent_path)
        self.agent_listen.listen(4)
        khz = ib.tsc_khz()
        append = ("console=ttyS0 reboot=t panic=-1 acpi=off%s root=/dev/vda rw "
                  "rootfstype=ext4 init=/sbin/smolvm-init quiet"
                  % (" tsc_early_khz=%d" % khz if khz else ""))
        if network:
            append += (" ip=10.0.2.15::10.0.2.2:255.255.255.0:%s:eth0:off smolvm.dns=10.0.2.3"
                       % HOSTNAME)
        argv = [
            "qemu-system-x86_64", "-M", "microvm,acpi=off,x-option-roms=off,rtc=on",
            "-accel", "tcg", "-cpu", "max", "-m", str(memory), "-smp", "2",
            "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
            "-kernel", os.path.join(image_dir, "vmlinux"), "-append", append,
            "-drive", "id=root,file=%s,format=raw,if=none,snapshot=on"
            % os.path.join(image_dir, "rootfs.ext4"),
            "-device", "virtio-blk-device,drive=root",
            "-drive", "id=cfg,file=%s,format=raw,if=none,readonly=on" % cfg,
            "-device", "virtio-blk-device,drive=cfg",
            "-chardev", "file,id=ser,path=" + self.console, "-serial", "chardev:ser",
            "-device", "virtio-serial-device",
            "-chardev", "socket,id=ctl,path=%s,server=off" % ctl_path,
            "-device", "virtconsole,chardev=ctl",
            "-chardev", "socket,id=agent,fd=%d,server=on,wait=off" % self.agent_listen.fileno(),
            "-device", "virtserialport,chardev=agent,name=org.smolvm.agent.0",
            "-device", "virtio-rng-device",
        ]
        if network:
            argv += ["-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-device,netdev=n0"]
        self.t_spawn = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE,
                                     pass_fds=[self.agent_listen.fileno()])
        self.ctl, self.ctl_buf, self.lines = None, b"", []

    def pump_ctl(self, timeout):
        """Read hvc0 lines for up to timeout seconds (returns early on a line)."""
        fds = [self.ctl or self.ctl_listen, self.proc.stderr]
        r, _, _ = select.select(fds, [], [], timeout)
        for s in r:
            if s is self.ctl_listen:
                self.ctl, _ = self.ctl_listen.accept()
            elif s is self.proc.stderr:
                err = os.read(self.proc.stderr.fileno(), 65536)
                if not err:
                    self.proc.wait()
                    raise Fail("qemu exited (%s)\n%s" % (self.proc.returncode, self.console_tail()))
            else:
                data = self.ctl.recv(65536)
                if not data:
                    self.ctl.close()
                    self.ctl = None
                    continue
                self.ctl_buf += data
                while b"\n" in self.ctl_buf:
                    line, self.ctl_buf = self.ctl_buf.split(b"\n", 1)
                    self.lines.append((time.monotonic(), line.decode(errors="replace")))

    def ready_time(self, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            for t, line in self.lines:
                if line.startswith("smolvm-ready"):
                    return t - self.t_spawn
                if line.startswith("smolvm-error"):
                    raise Fail("guest reported: " + line)
            left = deadline - time.monotonic()
            if left <= 0:
                raise Fail("no smolvm-ready within %ss: %r" % (timeout, self.lines))
            self.pump_ctl(left)

    def console_tail(self, n=30):
        try:
            with open(self.console, errors="replace") as f:
                return "console.log (tail):\n" + "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Fail("qemu still running %ss after poweroff\n%s" % (timeout, self.console_tail()))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for s in (self.ctl, self.ctl_listen, self.agent_listen):
            if s:
                s.close()


def connect_hello(vm, timeout=60):
    """Connect at once and wait for the agent's HELLO, reading hvc0 meanwhile.
    Returns (client, hello, seconds from spawn to HELLO)."""
    c = Client(vm.agent_path)
    deadline = time.monotonic() + timeout
    while not c.pending:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Fail("no HELLO within %ss\n%s" % (timeout, vm.console_tail()))
        fds = [c.sock, vm.ctl or vm.ctl_listen, vm.proc.stderr]
        r, _, _ = select.select(fds, [], [], left)
        if c.sock in r:
            data = c.sock.recv(65536)
            if not data:
                raise Fail("agent socket closed before HELLO")
            t_hello = time.monotonic()
            c.pending += c.reader.feed(data)
        if [s for s in r if s is not c.sock]:
            vm.pump_ctl(0)
    hello = c.hello()
    return c, hello, t_hello - vm.t_spawn


# ---------------------------------------------------------------- checks

def expect(cond, what):
    if not cond:
        raise Fail(what)


GUEST_SPAWN = r"""
import os, time
def one():
    t = time.perf_counter()
    pid = os.posix_spawn('/bin/sh', ['sh', '-c', 'true'], os.environ)
    os.waitpid(pid, 0)
    return (time.perf_counter() - t) * 1000
for _ in range(5): one()
ts = sorted(one() for _ in range(%d))
print('%%.3f' %% ts[len(ts) // 2])
"""


def measure(c, n=50):
    """Timings through the agent; returns a dict of numbers (ms, MB/s)."""
    m = {}
    for _ in range(5):
        c.run({"op": "exec", "cmd": "true"})
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        r = c.run({"op": "exec", "cmd": "true"})
        ts.append((time.perf_counter() - t) * 1000)
        expect(r.get("exit", {}).get("exit_code") == 0, "true failed: %r" % r)
    m["exec_true_ms"] = statistics.median(ts)
    r = c.run({"op": "exec", "argv": ["python3", "-c", GUEST_SPAWN % n]})
    expect(r.get("exit", {}).get("exit_code") == 0, "guest posix_spawn bench: %r" % r)
    m["guest_spawn_ms"] = float(r["out"][1])
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        data = c.read_file("/etc/hostname")
        ts.append((time.perf_counter() - t) * 1000)
    expect(data == (HOSTNAME + "\n").encode(), "read_file /etc/hostname: %r" % data)
    m["read_file_ms"] = statistics.median(ts)
    blob = os.urandom(1 << 20)
    t = time.perf_counter()
    c.write_file("/tmp/blob", blob)
    back = c.read_file("/tmp/blob")
    m["mib_write_read_ms"] = (time.perf_counter() - t) * 1000
    expect(back == blob, "1 MiB round trip differs (%d bytes back)" % len(back))
    sid = c.request({"op": "exec", "cmd": "head -c 100000000 /dev/zero", "window": 1 << 24})
    got, owed, t0 = 0, 0, time.perf_counter()
    while True:
        stream, ftype, flags, fd, body = c.recv()
        if stream != sid:
            continue
        if ftype == DATA:
            got += len(body)
            owed += len(body)
            if owed >= 1 << 20:  # give the window back a MiB at a time
                c.window(sid, owed)
                owed = 0
        elif ftype == EXIT:
            break
    m["stdout_mb_s"] = got / 1e6 / (time.perf_counter() - t0)
    expect(got == 100000000, "head -c 100M gave %d bytes" % got)
    # The guest's own ceiling in the same run: the same producer into a pipe read by dd.
    r = c.run({"op": "exec", "cmd": "head -c 100000000 /dev/zero | dd of=/dev/null bs=64k 2>&1 | "
               "sed -n 's/.* copied, \\([0-9.]*\\) s.*/\\1/p'"})
    m["guest_pipe_mb_s"] = 100 / float(r["out"][1])
    return m


def behaviour(c):
    r = c.run({"op": "exec", "cmd": "echo out; echo err >&2; echo \"$SOME_ENV\"; echo $SECOND; "
               "echo $K; hostname; pwd; exit 4", "env": ["K=per-command"]})
    expect(r["out"][1] == ("out\n%s\n2\nper-command\n%s\n/root\n" % (ENV["SOME_ENV"], HOSTNAME)).encode(),
           "exec stdout %r" % r["out"][1])
    expect(r["out"][2] == b"err\n", "exec stderr %r" % r["out"][2])
    expect(r["exit"]["exit_code"] == 4 and r["eof"] == {1, 2}, "exec exit %r" % r)
    r = c.run({"op": "exec", "cmd": "tr a-z A-Z"}, stdin=b"streamed in\n" * 10000)
    expect(r["out"][1] == b"STREAMED IN\n" * 10000, "stdin through tr: %d bytes" % len(r["out"][1]))
    r = c.run({"op": "exec", "cmd": "tty; stty size", "pty": {"rows": 33, "cols": 101}})
    expect(r["out"][1].startswith(b"/dev/pts/") and b"33 101" in r["out"][1], "pty: %r" % r["out"][1])
    r = c.run({"op": "exec", "cmd": "sleep 100 & sleep 100", "timeout_ms": 500})
    expect(r["exit"]["timed_out"] and r["exit"]["signal"] == "KILL", "timeout: %r" % r["exit"])
    r = c.run({"op": "exec", "cmd": "pgrep -x sleep || echo none"})
    expect(r["out"][1] == b"none\n", "sleep left after the timeout: %r" % r["out"][1])
    st = c.call({"op": "stat", "path": "/usr/sbin/smolvm-agent"})
    expect(st["type"] == "file" and st["mode"] == 0o755, "stat: %r" % st)


def protocol_error(vm, c):
    """Garbage ends the session with GOAWAY; after the host reconnects, a fresh HELLO."""
    c.send(REQUEST, 0, b"{}")  # a REQUEST on stream 0
    f = c.recv()
    expect(f is not None and f[1] == GOAWAY and f[4]["code"] == "EPROTO", "want GOAWAY, got %r" % (f,))
    c.close()
    # The guest sees only the port's current state: a close followed at once by a new
    # connection would go unnoticed, so reconnect after 100 ms (docs/agent-protocol.md).
    for attempt in range(10):
        time.sleep(0.1)
        c2 = Client(vm.agent_path)
        try:
            c2.hello(timeout=1 + attempt)
            break
        except Fail:
            c2.close()
    else:
        raise Fail("no fresh HELLO after reconnecting\n" + vm.console_tail())
    expect("uptime_ms" in c2.call({"op": "ping"}), "ping after reconnect")
    return c2


def boot_and_check(image_dir, network=True, do_measure=True, n=50):
    """One VM: returns the numbers measured. Raises Fail."""
    with tempfile.TemporaryDirectory(prefix="smolvm-agenttest-") as tmp:
        vm = VM(image_dir, tmp, network=network)
        c = None
        try:
            c, hello, t_hello = connect_hello(vm)
            expect(hello.get("agent", "").startswith("smolvm-agent") and "exec" in hello["features"],
                   "hello %r" % hello)
            t_ready = vm.ready_time()
            stages = [l.split()[1] for _, l in vm.lines if l.startswith("smolvm-boot ")]
            expect("agent" in stages, "no agent milestone in %r" % stages)
            nums = {"hello_s": t_hello, "ready_s": t_ready}
            if network:
                behaviour(c)
                if do_measure:
                    nums.update(measure(c, n))
                c = protocol_error(vm, c)
            else:
                r = c.run({"op": "exec", "cmd": "echo ok; ls /sys/class/net"})
                expect(r["out"][1] == b"ok\nlo\n" and r["exit"]["exit_code"] == 0,
                       "network=none exec: %r" % r)
                c.write_file("/root/x", b"no network needed")
                expect(c.read_file("/root/x") == b"no network needed", "files without a NIC")
            t0 = time.monotonic()
            c.call({"op": "poweroff"})
            rc = vm.wait_exit(20)
            expect(rc == 0, "qemu exit status %d after poweroff" % rc)
            nums["poweroff_s"] = time.monotonic() - t0
            return nums
        finally:
            if c:
                c.close()
            vm.kill()


def no_agent(image_dir):
    """Why the image cannot run this test (built before the agent), or None."""
    try:
        r = subprocess.run(["debugfs", "-R", "stat /usr/sbin/smolvm-agent",
                            os.path.join(image_dir, "rootfs.ext4")],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None  # cannot tell: boot it and see
    if "Inode:" not in r.stdout:
        return ("image '%s' has no /usr/sbin/smolvm-agent (built before the agent; rebuild "
                "it with scripts/build-image.sh, or set SMOLVM_TEST_IMAGE)" % image_dir)
    return None


def main():
    image = os.environ.get("SMOLVM_TEST_IMAGE", "default")
    image_dir = sys.argv[1] if len(sys.argv) > 1 else ib.default_image_dir(image)
    why = ib.check_image(image_dir) or no_agent(image_dir)
    if why:
        print("SKIP: " + why)
        return SKIP
    try:
        print("vectors: %d frames, %d invalid headers, %d streams agree" % check_vectors())
        m = boot_and_check(image_dir)
        print("spawn -> HELLO %.2fs, spawn -> hvc0 ready %.2fs" % (m["hello_s"], m["ready_s"]))
        print("exec true %.2f ms (median of 50) vs guest posix_spawn sh -c true %.2f ms: +%.2f ms"
              % (m["exec_true_ms"], m["guest_spawn_ms"], m["exec_true_ms"] - m["guest_spawn_ms"]))
        print("read_file small %.2f ms (median of 50)" % m["read_file_ms"])
        print("1 MiB write_file + read_file %.1f ms" % m["mib_write_read_ms"])
        print("stdout of head -c 100M /dev/zero: %.1f MB/s (in the guest, the same into a pipe "
              "read by dd: %.1f MB/s)" % (m["stdout_mb_s"], m["guest_pipe_mb_s"]))
        print("poweroff -> qemu exit %.2fs" % m["poweroff_s"])
        m2 = boot_and_check(image_dir, network=False)
        print("network=none: commands and files ok (HELLO after %.2fs)" % m2["hello_s"])
    except Fail as e:
        print("FAIL: %s" % e)
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
