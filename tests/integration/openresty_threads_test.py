#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The thread-pool example service (examples/openresty-threads: smolvm.worker through
ngx.run_worker_thread, for hosts without cosockets) in a real nginx on 127.0.0.1.

Starts Debian's nginx with the lua module on a free port, its own prefix and its own
smolvm state dir, and checks what a user of the service would: code runs and its
output comes back, exit codes, timeouts, that /health keeps answering fast while a
sandbox boots (the event loop is never blocked), and that a named sandbox survives
`nginx -s reload`. Cleans up (sandboxes, nginx, VMMs of its state dir, temp files)
even on failure. Exit 77 (skipped) with the reason when nginx, its lua module,
lua-cjson, the LuaJIT build of smolvm or a usable host is missing.

Env (set by ctest): SMOLVM_SOURCE_DIR, SMOLVM_BUILD_DIR, SMOLVM_LUA.
"""
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

SKIP = 77
HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("SMOLVM_SOURCE_DIR") or os.path.normpath(os.path.join(HERE, "..", ".."))
BUILD = os.environ.get("SMOLVM_BUILD_DIR") or os.path.join(SRC, "build")
SMOLVM_LUA = os.environ.get("SMOLVM_LUA") or os.path.join(BUILD, "smolvm-lua")
MODULES = "/usr/lib/nginx/modules"
BOOT_LIMIT = 120  # seconds for any request that boots a sandbox (TCG, loaded CI)


def skip(reason):
    print("SKIP: " + reason, file=sys.stderr)
    sys.exit(SKIP)


def log(msg):
    print(msg, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Failed(Exception):
    pass


def check(cond, what, detail=None):
    if not cond:
        raise Failed(what + ("" if detail is None else ": " + repr(detail)))
    log("ok - " + what)


class Service:
    def __init__(self, port):
        self.port = port

    def request(self, method, path, body=None, headers=None, timeout=BOOT_LIMIT):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, data
        finally:
            conn.close()

    def json(self, method, path, obj=None, timeout=BOOT_LIMIT):
        body = None if obj is None else json.dumps(obj)
        headers = {"Content-Type": "application/json"} if obj is not None else {}
        status, data = self.request(method, path, body, headers, timeout)
        try:
            return status, json.loads(data)
        except ValueError:
            return status, {"raw": data.decode(errors="replace")}

    def run(self, code, **opts):
        opts["code"] = code
        return self.json("POST", "/run", opts)

    def health(self):
        t0 = time.monotonic()
        status, data = self.request("GET", "/health", timeout=10)
        return time.monotonic() - t0, status, data


def preconditions():
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not nginx:
        skip("nginx is not installed (Debian: nginx)")
    for m in ("ndk_http_module.so", "ngx_http_lua_module.so"):
        if not os.path.exists(os.path.join(MODULES, m)):
            skip("%s/%s missing (Debian: libnginx-mod-http-lua)" % (MODULES, m))
    luajit = shutil.which("luajit")
    if not luajit:
        skip("luajit is not installed (Debian: luajit2)")
    if subprocess.run([luajit, "-e", 'require "cjson"'], capture_output=True).returncode != 0:
        skip("lua-cjson for LuaJIT is missing (Debian: lua-cjson)")
    core = os.path.join(BUILD, "luajit", "smolvm", "core.so")
    if not os.path.exists(core):
        skip("%s not built (configure with LuaJIT found)" % core)
    if not os.path.exists(SMOLVM_LUA):
        skip("%s not built" % SMOLVM_LUA)
    return nginx


def host_missing(env):
    out = subprocess.run([SMOLVM_LUA, "-e", """
      for _, c in ipairs(require("smolvm").doctor()) do
        if c.required and not c.ok then print(c.name .. ": " .. c.detail) end
      end"""], capture_output=True, text=True, env=env, timeout=60)
    if out.returncode != 0:
        return "doctor failed: " + out.stderr.strip()
    return out.stdout.strip()


def vmm_pids(state):
    """Processes whose command line names a path inside our state dir (the VMMs)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if (state + "/").encode() in cmd:
            pids.append(int(d))
    return pids


def _ignore(fn, *args, **kw):
    try:
        fn(*args, **kw)
    except Exception:
        pass


def reload_and_wait(cmd, env, master):
    """nginx -s reload, then wait until only new workers are left."""
    before = worker_pids(master)
    rl = subprocess.run(cmd + ["-s", "reload"], env=env, capture_output=True, text=True)
    check(rl.returncode == 0, "nginx -s reload", rl.stderr)
    deadline = time.monotonic() + 30
    while set(worker_pids(master)) & set(before) or not worker_pids(master):
        if time.monotonic() > deadline:
            raise Failed("old workers still running 30 s after reload: %r" % before)
        time.sleep(0.1)
    log("# workers %r replaced by %r" % (before, worker_pids(master)))


def worker_pids(master):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True, text=True)
    return sorted(int(p) for p in out.stdout.split())


def main():
    nginx = preconditions()
    tmp = tempfile.mkdtemp(prefix="smolvm-openresty-threads.")
    prefix = os.path.join(tmp, "nginx")
    state = os.path.join(tmp, "state")
    os.makedirs(os.path.join(prefix, "logs"))
    os.makedirs(state)
    env = dict(os.environ)
    env["SMOLVM_STATE_DIR"] = state
    env["LUA_PATH"] = "%s/lua/?.lua;%s/lua/?/init.lua;;" % (SRC, SRC)
    env["LUA_CPATH"] = "%s/luajit/?.so;;" % BUILD

    missing = host_missing(env)
    if missing:
        shutil.rmtree(tmp, ignore_errors=True)
        skip("this host cannot run sandboxes:\n" + missing)

    # The example as shipped; only the port changes, and one worker, so that every
    # /health request is served by the very worker that waits for the boot.
    port = free_port()
    with open(os.path.join(SRC, "examples", "openresty-threads", "nginx.conf")) as f:
        conf = f.read()
    assert "listen 127.0.0.1:8080;" in conf and "worker_processes 2;" in conf
    conf = conf.replace("listen 127.0.0.1:8080;", "listen 127.0.0.1:%d;" % port)
    conf = conf.replace("worker_processes 2;", "worker_processes 1;")
    with open(os.path.join(prefix, "nginx.conf"), "w") as f:
        f.write(conf)
    shutil.copy(os.path.join(SRC, "examples", "openresty-threads", "sandbox.lua"), prefix)

    cmd = [nginx, "-p", prefix, "-c", "nginx.conf"]
    if os.geteuid() == 0:
        cmd += ["-g", "user root;"]  # else workers run as nobody: no image, no state dir
    svc = Service(port)
    named = []
    master = None

    def on_term(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)

    try:
        t = subprocess.run(cmd + ["-t"], env=env, capture_output=True, text=True)
        check(t.returncode == 0, "nginx -t accepts the example config", t.stderr)
        subprocess.run(cmd, env=env, check=True)
        with open(os.path.join(prefix, "logs", "nginx.pid")) as f:
            master = int(f.read())
        deadline = time.monotonic() + 10
        while True:
            try:
                if svc.health()[1] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise Failed("nginx did not answer /health")
            time.sleep(0.05)
        log("# nginx %d on 127.0.0.1:%d, state %s" % (master, port, state))

        # --- code runs in a fresh sandbox, output comes back
        status, r = svc.run("print(6*7)", lang="python")
        check(status == 200 and r.get("stdout") == "42\n" and r.get("exit_code") == 0
              and r.get("stderr") == "" and r.get("timed_out") is False,
              "POST python code: stdout 42, exit 0", (status, r))
        check(r.get("fresh") is True and isinstance(r.get("boot_ms"), int),
              "the answer says it ran in a fresh sandbox", r)
        boot_ms = r["boot_ms"]
        fresh_id = r.get("sandbox")
        st, _ = svc.json("GET", "/sandboxes/%s" % fresh_id)
        check(st == 404, "the fresh sandbox is gone after the request", st)

        # --- raw body + query string; a failing command gives its exit code
        status, data = svc.request("POST", "/run?lang=sh",
                                   "echo out; echo err >&2; exit 3", {"Content-Type": "text/plain"})
        r = json.loads(data)
        check(status == 200 and r.get("exit_code") == 3 and r.get("stdout") == "out\n"
              and r.get("stderr") == "err\n", "failing command: exit code 3, stdout, stderr", r)

        # --- past the timeout: a timeout answer, in about the timeout (plus the boot)
        t0 = time.monotonic()
        status, r = svc.run("echo started; sleep 60", timeout=2)
        took = time.monotonic() - t0
        check(status == 200 and r.get("timed_out") is True and r.get("exit_code") is None
              and r.get("timeout") == 2, "command past its timeout: timed_out answer", r)
        check(took < 2 + BOOT_LIMIT / 2 and took < 40,
              "the timeout answer came without waiting for the command (%.1f s)" % took, took)

        # --- bad requests
        status, r = svc.run("", lang="sh")
        check(status == 400 and r.get("code") == "EINVAL", "empty code: 400", (status, r))
        status, r = svc.run("true", sandbox="no-such-sandbox")
        check(status == 404 and r.get("code") == "ENOENT", "unknown sandbox: 404", (status, r))

        # --- /health latency while a sandbox boots
        result = {}

        def boot():
            t = time.monotonic()
            result["t0"] = t
            result["resp"] = svc.run("true")
            result["t1"] = time.monotonic()

        interval = max(0.01, boot_ms / 1000.0 / 40)  # >= 20 samples even if this boot is faster
        th = threading.Thread(target=boot)
        th.start()
        samples = []  # (start time, latency)
        while th.is_alive():
            s = time.monotonic()
            lat, st, _ = svc.health()
            check_st = st == 200
            if not check_st:
                raise Failed("/health answered %d during a boot" % st)
            samples.append((s, lat))
            time.sleep(max(0.0, interval - (time.monotonic() - s)))
        th.join()
        status, r = result["resp"]
        check(status == 200 and r.get("exit_code") == 0, "the request booting meanwhile succeeded", r)
        boot_s = r["boot_ms"] / 1000.0
        # Samples that started while the sandbox was booting (create .. ready).
        t0 = result["t0"]
        during = [lat for (s, lat) in samples if t0 <= s <= t0 + boot_s]
        med = statistics.median(during) * 1000 if during else float("nan")
        mx = max(during) * 1000 if during else float("nan")
        log("# /health during a %.0f ms boot: n=%d median %.2f ms, max %.2f ms "
            "(all %d samples over the request: max %.2f ms)"
            % (boot_s * 1000, len(during), med, mx, len(samples), max(l for _, l in samples) * 1000))
        check(len(during) >= 20, "at least 20 /health requests spread across the boot", len(during))
        check(mx < boot_s * 1000 / 10,
              "/health max latency %.2f ms < boot time / 10 (%.0f ms)" % (mx, boot_s * 100), mx)

        # --- a named sandbox survives nginx -s reload
        name = "ngx-%d" % os.getpid()
        named.append(name)
        status, r = svc.json("POST", "/sandboxes", {"id": name})
        check(status == 201 and r.get("id") == name and r.get("status") == "running",
              "POST /sandboxes starts a named sandbox", (status, r))
        status, r = svc.run("echo kept > /tmp/mark; cat /tmp/mark", sandbox=name)
        check(status == 200 and r.get("stdout") == "kept\n" and r.get("fresh") is False,
              "code runs in the named sandbox", r)
        status, r = svc.json("POST", "/sandboxes", {"id": name})
        check(status == 409 and r.get("code") == "EEXIST", "a second sandbox of that name: 409", (status, r))
        probe = ("import socket\n"
                 "try:\n"
                 "    socket.create_connection(('10.0.2.2', %d), timeout=3)\n"
                 "    print('connected')\n"
                 "except OSError as e:\n"
                 "    print('blocked', e)\n" % port)
        status, r = svc.run(probe, lang="python", sandbox=name, timeout=20)
        check(status == 200 and r.get("stdout", "").startswith("blocked"),
              "code in a sandbox cannot reach the service on the host (user net, restricted)", r)

        reload_and_wait(cmd, env, master)
        status, r = svc.json("GET", "/sandboxes/%s" % name)
        check(status == 200 and r.get("id") == name and r.get("status") == "running",
              "after reload: the sandbox is found by id, still running", (status, r))
        status, r = svc.run("cat /tmp/mark", sandbox=name)
        check(status == 200 and r.get("stdout") == "kept\n",
              "after reload: the same sandbox (its file is there)", r)
        status, r = svc.json("GET", "/sandboxes")
        check(status == 200 and any(v.get("id") == name for v in r), "GET /sandboxes lists it", r)

        # --- overload: more requests than the pool takes get 503, the worker survives
        # (a task posted to a full thread_pool queue crashes lua-nginx-module 0.10.23)
        small = conf.replace("threads=4 max_queue=64", "threads=1 max_queue=1")
        small = small.replace("max_tasks = 32,", "max_tasks = 2,")
        assert small.count("threads=1 max_queue=1") == 1 and "max_tasks = 2," in small
        with open(os.path.join(prefix, "nginx.conf"), "w") as f:
            f.write(small)
        reload_and_wait(cmd, env, master)
        codes = []
        lock = threading.Lock()

        def slow():
            st, _ = svc.run("sleep 2", sandbox=name, timeout=20)
            with lock:
                codes.append(st)
        ths = [threading.Thread(target=slow) for _ in range(4)]
        for th in ths:
            th.start()
            time.sleep(0.1)
        for th in ths:
            th.join()
        check(sorted(codes) == [200, 200, 503, 503],
              "pool of 1 thread, max_tasks 2: 2 requests run, 2 get 503", codes)
        with open(os.path.join(prefix, "logs", "error.log")) as f:
            check("exited on signal" not in f.read(), "no worker crashed under overload")
        with open(os.path.join(prefix, "nginx.conf"), "w") as f:
            f.write(conf)  # back to the example's pool: the sweep below needs a free thread
        reload_and_wait(cmd, env, master)

        status, r = svc.json("DELETE", "/sandboxes/%s" % name)
        check(status == 200 and r.get("deleted") is True, "DELETE /sandboxes/NAME", (status, r))
        named.remove(name)
        status, _ = svc.json("GET", "/sandboxes/%s" % name)
        check(status == 404, "deleted sandbox: 404", status)

        # --- a worker killed mid-request: its fresh sandbox is deleted by the next one
        with open(os.path.join(prefix, "logs", "error.log")) as f:
            errlog = f.read()  # before the kill, which nginx logs as an alert
        doomed = threading.Thread(target=lambda: _ignore(svc.run, "sleep 100", timeout=100))
        doomed.daemon = True
        doomed.start()
        orphan = None
        deadline = time.monotonic() + BOOT_LIMIT
        while orphan is None and time.monotonic() < deadline:
            st, lst = svc.json("GET", "/sandboxes", timeout=10)
            running = [v["id"] for v in lst if v.get("id", "").startswith("fresh-")
                       and v.get("status") == "running"] if st == 200 else []
            orphan = running[0] if running else None
            time.sleep(0.2)
        check(orphan is not None, "a fresh sandbox is running for the slow request", orphan)
        time.sleep(1)  # let its command start
        (worker,) = worker_pids(master)
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 60
        gone = False
        while time.monotonic() < deadline:
            try:
                st, _ = svc.json("GET", "/sandboxes/%s" % orphan, timeout=10)
                if st == 404:
                    gone = True
                    break
            except OSError:
                pass  # the master is starting the new worker
            time.sleep(0.5)
        check(gone, "after its worker was killed, the new worker deleted the orphan %s" % orphan)

        check("unknown process" not in errlog,
              "nginx reaped none of smolvm's children (SIGCHLD reset in workers)")
        bad = [l for l in errlog.splitlines() if "[alert]" in l or "[emerg]" in l or "[crit]" in l]
        check(not bad, "no alert/crit/emerg in error.log", bad)
        log("# PASS")
        return 0
    except Failed as e:
        log("not ok - " + str(e))
        try:
            with open(os.path.join(prefix, "logs", "error.log")) as f:
                log("# error.log (tail):\n" + "".join(f.readlines()[-30:]))
        except OSError:
            pass
        return 1
    finally:
        for name in named:
            try:
                svc.json("DELETE", "/sandboxes/%s" % name, timeout=30)
            except Exception:
                pass
        if master:
            subprocess.run(cmd + ["-s", "stop"], env=env, capture_output=True)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and os.path.exists("/proc/%d" % master):
                time.sleep(0.05)
            if os.path.exists("/proc/%d" % master):
                for pid in [master] + worker_pids(master):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
        for pid in vmm_pids(state):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
