#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Boot check for the smolvm guest image (docs/image.md, docs/guest-protocol.md).

    tests/integration/image-boot.py [IMAGE_DIR]

Boots IMAGE_DIR (default: $XDG_DATA_HOME/smolvm/images/default) under plain QEMU
microvm with a fresh config disk, waits for `smolvm-ready` on the virtio console,
runs a command over SSH against the pinned host key, then sends `poweroff` and expects
QEMU to exit. Exit 0 pass, 1 fail, 77 skip (no image, no QEMU). Python stdlib only.
Only loopback traffic: user networking with restrict=on, hostfwd on 127.0.0.1.
"""
import base64
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time

SKIP = 77
HOSTNAME = "vm-imgtest"
# Quotes, backslash, '#', '$' and spaces: what could break sshd's SetEnv quoting.
ENV = {"SOME_ENV": 'hello "world" \\ #1 $HOME', "SECOND": "2"}


class Fail(Exception):
    pass


def default_image_dir(name="default"):
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(data, "smolvm", "images", name)


def tsc_khz():
    """Host TSC kHz for tsc_early_khz= (prevents TCG calibration hangs), or None."""
    try:
        with open("/sys/devices/system/cpu/cpu0/tsc_freq_khz") as f:
            return int(f.read())
    except (OSError, ValueError):
        pass
    try:
        out = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
        m = re.search(r"tsc: Detected ([0-9]+)\.([0-9]+) MHz", out)
        if m:
            return int(m.group(1)) * 1000 + int(m.group(2)[:3].ljust(3, "0"))
    except OSError:
        pass
    with open("/proc/cpuinfo") as f:
        m = re.search(r"cpu MHz\s*:\s*([0-9.]+)", f.read())
    return int(float(m.group(1)) * 1000) if m else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_keys(tmp):
    """A throwaway client key and guest host key; returns paths and the host pubkey."""
    for name in ("client", "hostkey"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "smolvm-test",
                        "-f", os.path.join(tmp, name)], check=True)
    with open(os.path.join(tmp, "hostkey.pub")) as f:
        host_pub = f.read().split()
    known = os.path.join(tmp, "known_hosts")
    with open(known, "w") as f:
        f.write("smolvm-test %s %s\n" % (host_pub[0], host_pub[1]))
    return os.path.join(tmp, "client"), known


def write_config_disk(path, tmp, hostname, env):
    """The config disk of docs/guest-protocol.md: text, `end`, zero padding to 4 KiB."""
    with open(os.path.join(tmp, "client.pub")) as f:
        auth = f.read().strip()
    with open(os.path.join(tmp, "hostkey"), "rb") as f:
        host_key = base64.b64encode(f.read()).decode()
    lines = ["smolvm-config 1", "hostname=" + hostname, "authorized_key=" + auth,
             "host_key=" + host_key]
    lines += ["env=%s=%s" % kv for kv in env.items()]
    data = ("\n".join(lines + ["end"]) + "\n").encode()
    data += b"\0" * (-len(data) % 4096)
    with open(path, "wb") as f:
        f.write(data)


class VM:
    """One QEMU microvm booting the image; timings are host monotonic seconds."""

    def __init__(self, image_dir, tmp, hostname=HOSTNAME, env=ENV, memory=512, vcpus=2,
                 cpu="max", rng=True, accel="tcg"):
        self.tmp = tmp
        self.key, self.known = make_keys(tmp)
        cfg = os.path.join(tmp, "config.img")
        write_config_disk(cfg, tmp, hostname, env)
        self.port = free_port()
        self.console = os.path.join(tmp, "console.log")
        ctl_path = os.path.join(tmp, "ctl.sock")
        # We listen and QEMU connects (server=off): no waiting for QEMU's socket to appear.
        self.ctl_listen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctl_listen.bind(ctl_path)
        self.ctl_listen.listen(1)
        khz = tsc_khz()
        append = ("console=ttyS0 reboot=t panic=-1 acpi=off%s root=/dev/vda rw "
                  "rootfstype=ext4 init=/sbin/smolvm-init quiet "
                  "ip=10.0.2.15::10.0.2.2:255.255.255.0:%s:eth0:off smolvm.dns=10.0.2.3"
                  % (" tsc_early_khz=%d" % khz if khz else "", hostname))
        self.argv = [
            "qemu-system-x86_64", "-M", "microvm,acpi=off,x-option-roms=off,rtc=on",
            "-accel", accel, "-cpu", cpu, "-m", str(memory), "-smp", str(vcpus),
            "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
            "-kernel", os.path.join(image_dir, "vmlinux"), "-append", append,
            # snapshot=on: writes go to a temporary overlay, never to the image.
            "-drive", "id=root,file=%s,format=raw,if=none,snapshot=on"
            % os.path.join(image_dir, "rootfs.ext4"),
            "-device", "virtio-blk-device,drive=root",
            "-drive", "id=cfg,file=%s,format=raw,if=none,readonly=on" % cfg,
            "-device", "virtio-blk-device,drive=cfg",
            "-netdev", "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:%d-:22" % self.port,
            "-device", "virtio-net-device,netdev=n0",
            "-chardev", "file,id=ser,path=" + self.console, "-serial", "chardev:ser",
            "-device", "virtio-serial-device",
            "-chardev", "socket,id=ctl,path=%s,server=off" % ctl_path,
            "-device", "virtconsole,chardev=ctl",
        ]
        if rng:  # seeds the guest's entropy pool so sshd's first getrandom() is quick
            self.argv += ["-device", "virtio-rng-device"]
        self.lines = []  # (host time, line) from hvc0
        self.cursor = 0  # lines before this one were seen by wait_line
        self.buf = b""
        self.stderr = b""
        self.t_spawn = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.ctl = None

    def _pump(self, deadline):
        """Wait for console input or QEMU exit (stderr EOF); False at the deadline."""
        fds = [self.proc.stderr]
        fds.append(self.ctl if self.ctl else self.ctl_listen)
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select(fds, [], [], left)
        now = time.monotonic()
        for r in ready:
            if r is self.ctl_listen:
                self.ctl, _ = self.ctl_listen.accept()
            elif r is self.proc.stderr:
                chunk = os.read(self.proc.stderr.fileno(), 65536)
                if not chunk:
                    self.proc.wait()
                    raise Fail("qemu exited with %s: %s\n%s" % (
                        self.proc.returncode, self.stderr.decode(errors="replace").strip(),
                        self.console_tail()))
                self.stderr += chunk
            else:
                chunk = self.ctl.recv(65536)
                if not chunk:
                    self.ctl.close()
                    self.ctl = None
                    continue
                self.buf += chunk
                while b"\n" in self.buf:
                    line, self.buf = self.buf.split(b"\n", 1)
                    self.lines.append((now, line.decode(errors="replace")))
        return True

    def wait_line(self, prefix, timeout):
        """First console line starting with prefix: (host time, line)."""
        deadline = time.monotonic() + timeout
        while True:
            while self.cursor < len(self.lines):
                t, line = self.lines[self.cursor]
                self.cursor += 1
                if line.startswith(prefix):
                    return t, line
                if line.startswith("smolvm-error"):
                    raise Fail("guest reported: " + line)
            if not self._pump(deadline):
                raise Fail("no '%s' within %ss; got %r\n%s" % (
                    prefix, timeout, [l for _, l in self.lines], self.console_tail()))

    def console_tail(self, n=25):
        try:
            with open(self.console, errors="replace") as f:
                return "console.log (tail):\n" + "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def ssh(self, command, timeout=60, options=()):
        argv = ["ssh", "-F", "/dev/null", "-i", self.key, "-p", str(self.port),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "HostKeyAlias=smolvm-test", "-o", "UserKnownHostsFile=" + self.known,
                "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=30",
                "-o", "LogLevel=ERROR"] + list(options) + ["root@127.0.0.1", command]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def banner(self, timeout=30):
        """Seconds since spawn until the guest's sshd sends its version banner."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            data = b""
            while not data.startswith(b"SSH-") or b"\n" not in data:
                chunk = s.recv(256)
                if not chunk:
                    raise Fail("connection closed before the SSH banner: %r" % data)
                data += chunk
        return time.monotonic() - self.t_spawn

    def poweroff(self, timeout=20):
        if self.ctl is None:
            raise Fail("no control connection to send poweroff")
        self.ctl.sendall(b"poweroff\n")
        self.wait_line("smolvm-poweroff", timeout)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Fail("qemu still running %ss after poweroff" % timeout)
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for s in (self.ctl, self.ctl_listen):
            if s:
                s.close()


def check_image(image_dir):
    """Why the image cannot be tested, or None."""
    for f in ("vmlinux", "rootfs.ext4"):
        if not os.path.isfile(os.path.join(image_dir, f)):
            return "no image at '%s' (missing %s; build it with scripts/build-image.sh)" % (
                image_dir, f)
    for tool in ("qemu-system-x86_64", "ssh", "ssh-keygen"):
        if not shutil.which(tool):
            return "'%s' not found (run scripts/install-deps.sh)" % tool
    return None


def main():
    image_dir = sys.argv[1] if len(sys.argv) > 1 else default_image_dir()
    why = check_image(image_dir)
    if why:
        print("SKIP: " + why)
        return SKIP
    with tempfile.TemporaryDirectory(prefix="smolvm-imgtest-") as tmp:
        vm = VM(image_dir, tmp)
        try:
            t_ready, line = vm.wait_line("smolvm-ready", 60)
            print("ready after %.2fs (guest: %s)" % (t_ready - vm.t_spawn, line))
            stages = [l for _, l in vm.lines if l.startswith("smolvm-boot ")]
            want = ["init", "mounted", "config", "agent", "sshd"]
            got = [l.split()[1] for l in stages]
            if "agent" not in got:  # an image from before the agent
                want.remove("agent")
            if got != want:
                raise Fail("milestones %r, want stages %r" % (stages, want))

            # env from the config disk (sshd SetEnv) and from the client (AcceptEnv *)
            r = vm.ssh("echo hi; cat /etc/hostname; echo \"$SOME_ENV\"; echo $SECOND; "
                       "echo $CLIENT_ENV; python3 -c 'print(6*7)'; "
                       "test $(date +%Y) -ge 2024 && echo clock-ok",
                       options=["-o", "SetEnv=CLIENT_ENV=from-client"])
            want_out = "hi\n%s\n%s\n2\nfrom-client\n42\nclock-ok\n" % (
                HOSTNAME, ENV["SOME_ENV"])
            if r.returncode != 0 or r.stdout != want_out:
                raise Fail("ssh: exit %d, stdout %r (want %r), stderr %r" % (
                    r.returncode, r.stdout, want_out, r.stderr))
            print("ssh ok: %r" % r.stdout)

            # A wrong host key must be refused: the pin is what makes SSH safe here.
            with open(vm.known, "w") as f:
                f.write("smolvm-test ssh-ed25519 "
                        "AAAAC3NzaC1lZDI1NTE5AAAAIBvTxTO+9JfTnGrsQ0Y5C5e3F0F6p2nEr3gW7bJ4yAbC\n")
            r = vm.ssh("true")
            if r.returncode == 0:
                raise Fail("ssh accepted a host key that does not match the pin")

            t0 = time.monotonic()
            rc = vm.poweroff()
            if rc != 0:
                raise Fail("qemu exit status %d after poweroff" % rc)
            print("poweroff ok: qemu exited %.2fs after the request" % (time.monotonic() - t0))
            with open(vm.console, errors="replace") as f:
                log = f.read()
            if "smolvm: ready" not in log or "smolvm: poweroff" not in log:
                raise Fail("serial console lacks the milestones\n" + vm.console_tail())
        except Fail as e:
            print("FAIL: %s" % e)
            return 1
        finally:
            vm.kill()
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
