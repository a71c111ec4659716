#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Does smolvm ever hold an nginx worker's event loop? For docs/openresty.md.

Against a running examples/openresty service with one worker: N fresh sandboxes start
and each runs a command (N concurrent POST /run) while
  - another process probes GET /health every 10 ms (latency as a client sees it), and
  - this process samples the worker's main thread every ~1 ms (/proc/PID/task/PID/stat,
    wchan, schedstat) and, for every stretch it was not sleeping in epoll_wait, how
    much of it the thread spent on a CPU and how much waiting for one.
A stretch with little CPU time and much waiting is the host's scheduler (other work on
the cores), not smolvm; time in state D names the kernel lock waited for (wchan).

  bench/openresty-stalls.py PORT NGINX_MASTER_PID [N]       (as root: the probe and the
                                                             sampler get nice -10)
"""
import collections
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

PROBER = r"""
import http.client, json, sys, threading, time
port = int(sys.argv[1])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
lat = []
while not stop.is_set():
    t = time.monotonic()
    c.request("GET", "/health")
    c.getresponse().read()
    lat.append((time.monotonic() - t) * 1000)
    time.sleep(max(0.0, 0.01 - (time.monotonic() - t)))
print(json.dumps(lat))
"""


def priority():
    os.setsid()
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write("-10")
        os.nice(-10)
    except OSError:
        pass


def run(port, code):
    """POST /run and read the whole response; returns (status line, body bytes)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=900)
    body = code.encode()
    s.sendall(b"POST /run?timeout=120 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    s.close()
    return data.split(b"\r\n", 1)[0].decode(), data


def sample(worker, stop, out):
    base = "/proc/%d/task/%d/" % (worker, worker)
    while not stop.is_set():
        try:
            with open(base + "stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(base + "wchan") as f:
                wchan = f.read()
            with open(base + "schedstat") as f:
                cpu, wait = (int(x) for x in f.read().split()[:2])
        except OSError:
            break
        out.append((time.monotonic(), state, wchan, cpu, wait))
        time.sleep(0.001)


def main():
    port, master = int(sys.argv[1]), int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True,
                         text=True).stdout.split()
    if len(out) != 1:
        sys.exit("expected one worker under %d, found %r" % (master, out))
    worker = int(out[0])
    prober = subprocess.Popen([sys.executable, "-c", PROBER, str(port)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, preexec_fn=priority)
    samples, stop = [], threading.Event()
    sampler = threading.Thread(target=sample, args=(worker, stop, samples))
    sampler.start()
    time.sleep(0.5)
    results = [None] * n

    def one(i):
        results[i] = run(port, "echo hello-%d" % i)
    t0 = time.monotonic()
    ths = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    wall = time.monotonic() - t0
    stop.set()
    sampler.join()
    lat = json.loads(prober.communicate("", timeout=30)[0])
    ok = sum(1 for i, r in enumerate(results) if r and b"hello-%d\n" % i in r[1]
             and b"X-Exit-Code: 0" in r[1])
    lat.sort()
    print("%d sandboxes started and ran a command in %.1f s (%d ok)" % (n, wall, ok))
    print("/health: n=%d median %.2f ms, p99 %.2f ms, max %.2f ms, %d over 20 ms"
          % (len(lat), statistics.median(lat), lat[min(len(lat) - 1, int(len(lat) * 0.99))],
             lat[-1], sum(1 for x in lat if x > 20)))
    # Stretches the main thread was not asleep (S), with their CPU and wait times.
    runs, cur = [], None
    for s in samples:
        if s[1] == "S":
            if cur:
                runs.append(cur)
            cur = None
            continue
        if cur and cur["state"] == s[1]:
            cur["end"], cur["cpu1"], cur["wait1"] = s[0], s[3], s[4]
            cur["wchan"][s[2]] += 1
        else:
            if cur:
                runs.append(cur)
            cur = {"state": s[1], "start": s[0], "end": s[0], "cpu0": s[3], "cpu1": s[3],
                   "wait0": s[4], "wait1": s[4], "wchan": collections.Counter([s[2]])}
    runs.sort(key=lambda r: r["start"] - r["end"])
    print("worker main thread: on a CPU %.0f ms, waiting for one %.0f ms, over %.0f s; "
          "states %s" % ((samples[-1][3] - samples[0][3]) / 1e6, (samples[-1][4] - samples[0][4])
                         / 1e6, samples[-1][0] - samples[0][0],
                         dict(collections.Counter(s[1] for s in samples))))
    # The longest time the thread ran without a break (cpu time growing with the
    # clock between samples): what an event loop that blocks would show.
    streak = best = 0.0
    for a, b in zip(samples, samples[1:]):
        dt, dcpu = (b[0] - a[0]) * 1e9, b[3] - a[3]
        streak = streak + dcpu if b[1] != "S" and dt > 0 and dcpu >= 0.8 * dt else 0.0
        best = max(best, streak)
    print("longest stretch on a CPU without a break (sampled): %.1f ms" % (best / 1e6))
    print("longest stretches awake (state, length, on a CPU, waiting for one, wchan):")
    for r in runs[:10]:
        print("  %s %6.1f ms  cpu %5.1f ms  wait %5.1f ms  %s"
              % (r["state"], (r["end"] - r["start"]) * 1000, (r["cpu1"] - r["cpu0"]) / 1e6,
                 (r["wait1"] - r["wait0"]) / 1e6, dict(r["wchan"].most_common(3))))


if __name__ == "__main__":
    main()
