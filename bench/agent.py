#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Agent timings over several cold boots, against the issue's targets.

    python3 bench/agent.py [-n BOOTS] [-i ITERATIONS] [IMAGE_DIR]

Boots the image (default: $SMOLVM_TEST_IMAGE, else "default") under plain QEMU with
the agent port, as tests/integration/agent_test.py does, and prints medians over the
boots of: spawn -> HELLO and spawn -> hvc0 ready, exec `true` (median of ITERATIONS)
against the guest's own posix_spawn of `/bin/sh -c true` measured inside the guest in
the same run, read_file of a small file, 1 MiB write_file + read_file, and stdout
throughput of `head -c 100M /dev/zero` (and, as the guest's own ceiling, the same
producer into a pipe read by `dd` inside the guest).
"""
import argparse
import importlib.util
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "agent_test", os.path.join(os.path.dirname(HERE), "tests", "integration", "agent_test.py"))
at = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(at)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=3, help="cold boots")
    ap.add_argument("-i", type=int, default=50, help="iterations per timing")
    ap.add_argument("image_dir", nargs="?")
    a = ap.parse_args()
    image_dir = a.image_dir or at.ib.default_image_dir(os.environ.get("SMOLVM_TEST_IMAGE", "default"))
    why = at.ib.check_image(image_dir)
    if why:
        print("SKIP: " + why)
        return 77
    runs = []
    for i in range(a.n):
        m = at.boot_and_check(image_dir, n=a.i)
        runs.append(m)
        print("boot %d: %s" % (i + 1, ", ".join("%s=%.2f" % kv for kv in sorted(m.items()))))

    def med(k):
        return statistics.median(r[k] for r in runs)

    print("\nmedians over %d boots (%d iterations each):" % (a.n, a.i))
    print("  spawn -> HELLO            %7.2f s   (spawn -> hvc0 ready %.2f s)" % (med("hello_s"), med("ready_s")))
    ex, sp = med("exec_true_ms"), med("guest_spawn_ms")
    print("  exec true                 %7.2f ms  guest posix_spawn sh -c true %.2f ms: +%.2f ms (target <= +3 ms) %s"
          % (ex, sp, ex - sp, "ok" if ex - sp <= 3 else "MISSED"))
    rf = med("read_file_ms")
    print("  read_file small           %7.2f ms  (target <= 2 ms) %s" % (rf, "ok" if rf <= 2 else "MISSED"))
    wr = med("mib_write_read_ms")
    print("  1 MiB write + read        %7.1f ms  (target <= 50 ms) %s" % (wr, "ok" if wr <= 50 else "MISSED"))
    mb = med("stdout_mb_s")
    print("  stdout head -c 100M       %7.1f MB/s (target >= 50 MB/s) %s; in the guest into a pipe read by dd: %.1f MB/s"
          % (mb, "ok" if mb >= 50 else "MISSED", med("guest_pipe_mb_s")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
