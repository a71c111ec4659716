#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Cold-boot benchmark for the smolvm guest image under plain QEMU microvm.

    bench/image-boot.py [-n 5] [--cpu max] [--smp 2] [--no-rng] [IMAGE_DIR]

For each of N boots (fresh config disk, fresh QEMU) it measures, on the host clock:
spawn -> `smolvm-ready` on the virtio console, the guest's own uptime in that line,
and spawn -> the first SSH version banner through the port forward. Prints
median/min/max. Uses the same QEMU command line as tests/integration/image-boot.py.
"""
import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "image_boot", os.path.join(here, "..", "tests", "integration", "image-boot.py"))
ib = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ib)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5, help="number of boots (default 5)")
    ap.add_argument("--cpu", default="max", help="QEMU -cpu model (default max)")
    ap.add_argument("--smp", type=int, default=2, help="vCPUs (default 2)")
    ap.add_argument("--memory", type=int, default=512, help="MiB (default 512)")
    ap.add_argument("--no-rng", action="store_true", help="no virtio-rng device")
    ap.add_argument("--accel", default="tcg",
                    help="QEMU -accel (default tcg; smolvm uses tcg,thread=multi for >1 vCPU)")
    ap.add_argument("image_dir", nargs="?", default=ib.default_image_dir())
    args = ap.parse_args()
    why = ib.check_image(args.image_dir)
    if why:
        print("SKIP: " + why)
        return ib.SKIP

    rows = {"spawn->ready (host)": [], "uptime at ready (guest)": [],
            "spawn->ssh banner (host)": [], "poweroff->exit (host)": []}
    for i in range(args.n):
        with tempfile.TemporaryDirectory(prefix="smolvm-bench-") as tmp:
            vm = ib.VM(args.image_dir, tmp, memory=args.memory, vcpus=args.smp,
                       cpu=args.cpu, rng=not args.no_rng, accel=args.accel)
            try:
                t_ready, line = vm.wait_line("smolvm-ready", 60)
                banner = vm.banner()
                t0 = time.monotonic()
                vm.poweroff()
                off = time.monotonic() - t0
            except ib.Fail as e:
                print("FAIL (boot %d): %s" % (i + 1, e))
                return 1
            finally:
                vm.kill()
        ready = t_ready - vm.t_spawn
        uptime = int(line.split()[1]) / 1000.0
        for k, v in zip(rows, (ready, uptime, banner, off)):
            rows[k].append(v)
        print("boot %d: ready %.3fs (guest uptime %.3fs), banner %.3fs, poweroff %.3fs"
              % (i + 1, ready, uptime, banner, off), flush=True)

    print("\n%d boots, cpu=%s smp=%d memory=%d rng=%s, %s"
          % (args.n, args.cpu, args.smp, args.memory, not args.no_rng, args.image_dir))
    print("%-26s %8s %8s %8s" % ("", "median", "min", "max"))
    for k, v in rows.items():
        print("%-26s %7.3fs %7.3fs %7.3fs" % (k, statistics.median(v), min(v), max(v)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
