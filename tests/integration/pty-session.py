#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Drive `smolvm shell` and `smolvm exec -it` through a real pseudo-terminal, as a
user's terminal emulator would (tests/integration/cli_spec.lua runs it).

  pty-session.py shell|exec|term|ssh SMOLVM_LUA SMOLVM_SCRIPT ID

shell: `tty` names a /dev/pts device, `stty size` is the terminal's size and
follows a resize (SIGWINCH), Ctrl-C reaches the guest's foreground command (not
smolvm), `exit 7` exits 7, and the terminal is in its cooked mode again.
exec:  `exec -it ID -- sh -c 'tty; stty size; exit 3'` shows a /dev/pts device and
the size, and exits 3.
term:  SIGTERM to smolvm during a session: it exits 143 and the terminal mode is
restored.
ssh:   `smolvm shell` of a transport = "ssh" sandbox: a terminal too, exit 5.
Prints what it checked; exit status 0 when everything held, 1 otherwise. Every
wait has a deadline.
"""
import fcntl
import os
import pty
import select
import signal
import struct
import sys
import termios
import time

DEADLINE = 60.0


class Session:
    def __init__(self, argv, rows=24, cols=80):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            try:
                os.execvp(argv[0], argv)
            finally:
                os._exit(127)
        self.buf = b""
        self.resize(rows, cols)
        self.cooked = termios.tcgetattr(self.fd)

    def resize(self, rows, cols):
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def send(self, data):
        os.write(self.fd, data)

    def expect(self, pattern, timeout=DEADLINE):
        end = time.monotonic() + timeout
        while pattern not in self.buf:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out waiting for %r; last output %r" % (pattern, self.buf[-400:]))
            r, _, _ = select.select([self.fd], [], [], left)
            if r:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    raise AssertionError("the session ended waiting for %r; last output %r" % (pattern, self.buf[-400:]))
                self.buf += data
        i = self.buf.index(pattern) + len(pattern)
        seen, self.buf = self.buf[:i], self.buf[i:]
        return seen

    def wait(self, timeout=DEADLINE):
        end = time.monotonic() + timeout
        while True:
            # Keep reading, so the child never blocks on a full terminal.
            r, _, _ = select.select([self.fd], [], [], 0.05)
            if r:
                try:
                    self.buf += os.read(self.fd, 65536)
                except OSError:
                    pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > end:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                raise AssertionError("smolvm did not exit; last output %r" % self.buf[-400:])

    def mode_restored(self):
        now = termios.tcgetattr(self.fd)
        # iflag, oflag, cflag, lflag as they were before smolvm made the terminal raw
        return now[:4] == self.cooked[:4]

    def close(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        os.close(self.fd)


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        raise AssertionError(what)


def shell(lua, script, vmid):
    s = Session([lua, script, "shell", vmid])
    try:
        # Markers the shell computes, so the echo of the command line never matches.
        s.send(b"tty; echo M-$((40+2))\r")
        seen = s.expect(b"M-42\r\n")
        check(b"/dev/pts/" in seen, "tty in the guest names a /dev/pts device")
        s.send(b"stty size; echo M-$((40+3))\r")
        check(b"24 80\r\n" in s.expect(b"M-43\r\n"), "stty size is the terminal's size (24 80)")
        s.resize(40, 120)
        time.sleep(0.5)  # SIGWINCH reaches smolvm, the resize the guest
        s.send(b"stty size; echo M-$((40+4))\r")
        check(b"40 120\r\n" in s.expect(b"M-44\r\n"), "stty size follows a resize (40 120)")
        s.send(b"sleep 100; echo M-$((40+5))\r")
        time.sleep(1.0)
        s.send(b"\x03")  # Ctrl-C: the guest's, interrupting sleep
        s.send(b"echo M-$((40+6))\r")
        seen = s.expect(b"M-46\r\n")
        check(b"M-45" not in seen, "Ctrl-C interrupted the guest's command, not smolvm")
        s.send(b"exit 7\r")
        check(s.wait() == 7, "the shell's exit status (7) is smolvm's")
        check(s.mode_restored(), "the terminal is back in its own mode")
    finally:
        s.close()


def exec_it(lua, script, vmid):
    s = Session([lua, script, "exec", "-it", vmid, "--", "sh", "-c", "tty; stty size; exit 3"], 30, 100)
    try:
        status = s.wait()
        out = s.buf
        check(b"/dev/pts/" in out, "exec -it: tty names a /dev/pts device")
        check(b"30 100\r\n" in out, "exec -it: stty size is the terminal's (30 100)")
        check(status == 3, "exec -it: the command's exit status (3) is smolvm's")
        check(s.mode_restored(), "exec -it: the terminal is back in its own mode")
    finally:
        s.close()


def term(lua, script, vmid):
    s = Session([lua, script, "shell", vmid])
    try:
        s.send(b"echo M-$((50+1))\r")
        s.expect(b"M-51\r\n")
        check(not s.mode_restored(), "the terminal is raw during the session")
        os.kill(s.pid, signal.SIGTERM)
        status = s.wait()
        check(status == 143, "SIGTERM ends the session with status 143 (got %d; %r)" % (status, s.buf[-300:]))
        check(s.mode_restored(), "the terminal is back in its own mode after SIGTERM")
    finally:
        s.close()


def ssh(lua, script, vmid):
    s = Session([lua, script, "shell", vmid])
    try:
        s.send(b"tty; echo M-$((60+1))\r")
        check(b"/dev/pts/" in s.expect(b"M-61\r\n"), "ssh shell: a terminal in the guest")
        s.send(b"exit 5\r")
        check(s.wait() == 5, "ssh shell: its exit status (5) is smolvm's")
    finally:
        s.close()


def main(argv):
    if len(argv) != 5 or argv[1] not in ("shell", "exec", "term", "ssh"):
        print(__doc__, file=sys.stderr)
        return 2
    fn = {"shell": shell, "exec": exec_it, "term": term, "ssh": ssh}[argv[1]]
    try:
        fn(argv[2], argv[3], argv[4])
    except AssertionError as e:
        print("FAIL " + str(e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
