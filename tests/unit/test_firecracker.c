/* SPDX-License-Identifier: MIT */
/*
 * The Firecracker backend and REST client against tests/fixtures/fake-firecracker.py,
 * which serves the API the way firecracker does and checks every request against the
 * v1.16.1 contract (schema and order rules), writes the guest's serial console to its
 * stdout and implements the hybrid vsock (docs/firecracker.md). The backend spawns the
 * VMM as our child with the console pipe we pass in (as the supervisor does); the
 * tests read that pipe and reap the child. The last tests run smolvm-supervisor with
 * backend firecracker through the fake, whose guest agent is the real agent built for
 * the host (tests/fixtures/agent-host.c). The binary download is tested against an
 * HTTP server on 127.0.0.1 serving an archive built here. Skips (77) without python3
 * and PyYAML.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdbool.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent-client.h"
#include "agent-proto.h"
#include "confine.h"
#include "error.h"
#include "host.h"
#include "proc.h"
#include "sock.h"
#include "sv-spec.h"
#include "util.h"
#include "vmm/fc-api.h"
#include "tool.h"
#include "vmm/fc-binary.h"
#include "vmm/fc-jailer.h"
#include "vmm/vmm.h"

static char tmpdir[] = "/tmp/smolvm-test-fc-XXXXXX";
static char fake[1024], kernel[600], rootfs[600], cfgdisk[600], statedir[600];
static const char *CMDLINE = "console=ttyS0 reboot=k panic=-1 root=/dev/vda rw "
                             "init=/sbin/smolvm-init quiet";

static const smolvm_vmm_ops *fc = &smolvm_vmm_firecracker;

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    int st;

    va_start(ap, fmt);
    (void)vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *path_in(const char *dir, const char *name)
{
    char *p = smolvm_strdupf("%s/%s", dir, name);

    assert_non_null(p);
    return p;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    (void)fputs(text, f);
    (void)fclose(f);
}

static int setup(void **state)
{
    (void)state;
    if (!mkdtemp(tmpdir))
        return -1;
    (void)snprintf(kernel, sizeof(kernel), "%s/vmlinux", tmpdir);
    (void)snprintf(rootfs, sizeof(rootfs), "%s/rootfs.ext4", tmpdir);
    (void)snprintf(cfgdisk, sizeof(cfgdisk), "%s/config.img", tmpdir);
    (void)snprintf(statedir, sizeof(statedir), "%s/state", tmpdir);
    write_text(kernel, "not really a kernel\n");
    write_text(rootfs, "not really a disk\n");
    write_text(cfgdisk, "smolvm-config 1\nend\n");
    (void)setenv(SMOLVM_FC_ENV, fake, 1);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return smolvm_rm_rf(tmpdir, NULL);
}

/* A fresh VM dir and request log; the fake's behaviour switches are reset. */
static char *new_vm(const char *name)
{
    char *d = path_in(tmpdir, name);
    char *log = path_in(d, "requests.log");

    assert_int_equal(smolvm_mkdir_p(d, 0700, NULL), 0);
    (void)setenv("FAKE_FC_LOG", log, 1);
    (void)unsetenv("FAKE_FC_FAIL");
    (void)unsetenv("FAKE_FC_BOOT");
    (void)unsetenv("FAKE_FC_IGNORE_CAD");
    (void)unsetenv("FAKE_FC_AGENT");
    (void)unsetenv("FAKE_FC_AGENT_RESTARTS");
    (void)unsetenv("FAKE_FC_GUEST_PORTS");
    free(log);
    return d;
}

/* <dir>/vsock.sock, the hybrid vsock's socket as the supervisor names it (a few
 * buffers in turn: configs of different dirs live at once). */
static const char *vsock_path(const char *dir)
{
    static char bufs[4][700];
    static unsigned next;
    char *b = bufs[next++ % 4];

    (void)snprintf(b, sizeof(bufs[0]), "%s/%s", dir, SMOLVM_SV_VSOCK);
    return b;
}

static void base_config(smolvm_vmm_config *c, const char *dir)
{
    memset(c, 0, sizeof(*c));
    c->vm_id = "vm-test_1";
    c->dir = dir;
    c->kernel = kernel;
    c->disk = rootfs;
    c->disk_format = "raw";
    c->config_disk = cfgdisk;
    c->cmdline = CMDLINE;
    c->vcpus = 2;
    c->memory_mib = 256;
    c->accel = SMOLVM_ACCEL_KVM;
    c->network = SMOLVM_NET_NONE;
    c->console_fd = c->ctl_fd = c->agent_fd = -1;
    c->vsock_uds = vsock_path(dir); /* as the supervisor always gives it */
}

/* The request log the fake wrote: an array of {method, path, body, status, ...}. */
static json_t *requests(const char *dir)
{
    char *p = path_in(dir, "requests.log");
    FILE *f = fopen(p, "r");
    json_t *a = json_array();
    char line[8192];

    free(p);
    assert_non_null(f);
    while (fgets(line, sizeof(line), f)) {
        json_t *j = json_loads(line, 0, NULL);

        assert_non_null(j);
        json_array_append_new(a, j);
    }
    (void)fclose(f);
    return a;
}

/* No request of the log broke the contract. */
static void assert_no_violation(json_t *reqs)
{
    size_t i;
    json_t *r;

    json_array_foreach (reqs, i, r) {
        if (json_is_true(json_object_get(r, "violation")))
            fail_msg("contract violation: %s %s: %s",
                     json_string_value(json_object_get(r, "method")),
                     json_string_value(json_object_get(r, "path")),
                     json_string_value(json_object_get(r, "fault")));
    }
}

static json_t *find_request(json_t *reqs, const char *method, const char *path)
{
    size_t i;
    json_t *r;

    json_array_foreach (reqs, i, r) {
        if (strcmp(json_string_value(json_object_get(r, "method")), method) == 0 &&
            strcmp(json_string_value(json_object_get(r, "path")), path) == 0)
            return r;
    }
    return NULL;
}

static void assert_err_contains(smolvm_error *e, const char *text)
{
    assert_non_null(e);
    if (!strstr(smolvm_error_message(e), text))
        fail_msg("error '%s' does not contain '%s'", smolvm_error_message(e), text);
}

static int file_contains(const char *dir, const char *name, const char *text)
{
    char *p = path_in(dir, name), *data = NULL;
    int found;

    found = smolvm_read_file(p, 1 << 20, &data, NULL, NULL) == 0 && strstr(data, text);
    free(p);
    free(data);
    return found;
}

static const char *instance_state(const char *dir)
{
    static char state[32];
    char *text = NULL;
    json_t *j;
    smolvm_error *err = NULL;

    if (fc->describe(dir, smolvm_now_ms() + 3000, &text, &err) < 0) {
        fail_msg("describe: %s", smolvm_error_message(err));
    }
    j = json_loads(text, 0, NULL);
    (void)snprintf(state, sizeof(state), "%s",
                   json_string_value(json_object_get(json_object_get(j, "instance"), "state")));
    assert_string_equal(json_string_value(json_object_get(j, "backend")), "firecracker");
    json_decref(j);
    free(text);
    return state;
}

/* ---------------------------------------------------------------- the VMM, our child */

/* A spawned VMM as the supervisor holds it: our child, and the read end of its serial
 * console (the pipe whose write end went into the config as console_fd). */
typedef struct running {
    pid_t pid;
    uint64_t start;
    int console;
    char out[65536]; /* what the console said so far */
    size_t len;
} running;

/* Read the console until it has said text (1), it ended because every writer is gone
 * (0), or the deadline passed (-1). text NULL: until the end. */
static int console_until(running *r, const char *text, int64_t deadline)
{
    for (;;) {
        struct pollfd p = {.fd = r->console, .events = POLLIN};
        ssize_t n;
        int w;

        r->out[r->len] = '\0';
        if (text && strstr(r->out, text))
            return 1;
        if (r->console < 0)
            return 0;
        if (r->len == sizeof(r->out) - 1)
            fail_msg("the console said more than %zu bytes", sizeof(r->out) - 1);
        w = poll(&p, 1, smolvm_remaining_ms(deadline));
        if (w < 0 && errno == EINTR)
            continue;
        if (w == 0)
            return -1;
        n = read(r->console, r->out + r->len, sizeof(r->out) - 1 - r->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            (void)close(r->console);
            r->console = -1;
            continue;
        }
        r->len += (size_t)n;
    }
}

static void console_close(running *r)
{
    if (r->console >= 0)
        (void)close(r->console);
    r->console = -1;
}

/* spawn (or restore, with snap) with a fresh console pipe; our copy of the write end is
 * closed once the VMM has it, so the pipe ends when the VMM does. */
static int spawn_or_restore(smolvm_vmm_config *c, running *r, const char *snap, const char *mem,
                            int64_t deadline, smolvm_error **err)
{
    int p[2], rc;
    int64_t pid = 0;

    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    memset(r, 0, sizeof(*r));
    r->console = p[0];
    c->console_fd = p[1];
    smolvm_vmm_snapshot s = {.state_path = snap, .mem_path = mem};

    rc = snap ? fc->restore(c, &s, &pid, &r->start, deadline, err)
              : fc->spawn(c, &pid, &r->start, deadline, err);
    (void)close(p[1]);
    c->console_fd = -1;
    if (rc < 0) {
        console_close(r);
        return rc;
    }
    r->pid = (pid_t)pid;
    assert_true(r->pid > 0);
    return 0;
}

/* As the supervisor spawns: the vsock socket a stopped firecracker left is cleared
 * first (firecracker binds it and refuses an existing path). */
static int spawn_vm(smolvm_vmm_config *c, running *r, int64_t deadline, smolvm_error **err)
{
    if (c->vsock_uds)
        (void)unlink(c->vsock_uds);
    return spawn_or_restore(c, r, NULL, NULL, deadline, err);
}

/* Wait for a child to exit (its pidfd; under valgrind, which lacks pidfd_open, the
 * library's bounded fallback), then reap it: 0, or SMOLVM_ETIMEDOUT. */
static int wait_child(pid_t pid, int64_t deadline, int *status)
{
    uint64_t start;

    if (smolvm_pid_start_time(pid, &start, NULL) == 0 &&
        smolvm_pid_wait_exit(pid, start, deadline, NULL) < 0)
        return SMOLVM_ETIMEDOUT;
    assert_int_equal(waitpid(pid, status, 0), pid);
    return 0;
}

/* Every child of ours has been reaped: a failed spawn leaves no process, not even a
 * zombie. */
static void assert_no_children(void)
{
    errno = 0;
    assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
    assert_int_equal(errno, ECHILD);
}

/* Booted: the console carries the init's milestones, in order, up to ready. */
static void start_vm(smolvm_vmm_config *c, running *r)
{
    static const char *const stages[] = {"smolvm: init ", "smolvm: mounted ", "smolvm: config ",
                                         "smolvm: sshd ", "smolvm: ready "};
    smolvm_error *err = NULL;
    const char *at;
    size_t i;

    if (spawn_vm(c, r, smolvm_now_ms() + 10000, &err) < 0)
        fail_msg("spawn: %s", smolvm_error_message(err));
    if (console_until(r, "smolvm: ready ", smolvm_now_ms() + 10000) != 1)
        fail_msg("no 'smolvm: ready' on the console; it said: %s", r->out);
    for (i = 0, at = r->out; i < SMOLVM_ARRAY_SIZE(stages); i++) {
        at = strstr(at, stages[i]);
        if (!at)
            fail_msg("console: '%s' missing or out of order in: %s", stages[i], r->out);
    }
}

/* Ctrl-Alt-Del: the guest powers off, the VMM exits 0 and its console ends. */
static void stop_vm(const char *dir, running *r)
{
    smolvm_error *err = NULL;
    int status = 0;

    if (fc->poweroff(dir, smolvm_now_ms() + 3000, &err) < 0)
        fail_msg("poweroff: %s", smolvm_error_message(err));
    assert_int_equal(wait_child(r->pid, smolvm_now_ms() + 5000, &status), 0);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(console_until(r, NULL, smolvm_now_ms() + 3000), 0);
    assert_non_null(strstr(r->out, "smolvm: poweroff "));
    r->pid = 0;
}

/* What the supervisor does for a firecracker VM: listen where the guest's connections
 * to host port 1024 arrive (<vsock>_1024). */
static int agent_listener(const char *dir)
{
    char *path = smolvm_strdupf("%s_%d", vsock_path(dir), SMOLVM_AGENT_VSOCK_PORT);
    smolvm_error *err = NULL;
    int fd = -1;

    assert_non_null(path);
    (void)unlink(path);
    if (smolvm_unix_listen(path, &fd, &err) < 0)
        fail_msg("listen: %s", smolvm_error_message(err));
    free(path);
    return fd;
}

/* Accept one connection within the deadline (-1 when none came). */
static int accept_within(int lfd, int64_t deadline)
{
    struct pollfd p = {.fd = lfd, .events = POLLIN};

    if (poll(&p, 1, smolvm_remaining_ms(deadline)) != 1)
        return -1;
    return accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
}

/* Read from fd until buf holds want (or want NULL: until EOF); returns the bytes read,
 * -1 at the deadline. buf is NUL-terminated. */
static ssize_t read_until(int fd, char *buf, size_t size, const char *want, int64_t deadline)
{
    size_t len = 0;

    buf[0] = '\0';
    while (len < size - 1 && !(want && strstr(buf, want))) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        ssize_t n;

        if (poll(&p, 1, smolvm_remaining_ms(deadline)) != 1)
            return -1;
        n = read(fd, buf + len, size - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        buf[len] = '\0';
    }
    return (ssize_t)len;
}

/* ---------------------------------------------------------------- tests */

static void test_available(void **state)
{
    smolvm_error *err = NULL;
    const char *why = NULL;
    int kvm = smolvm_host_kvm_usable(&why);
    int r = fc->available(SMOLVM_ACCEL_KVM, &err);

    (void)state;
    if (kvm) {
        assert_int_equal(r, 0); /* the fake answers --version like firecracker */
    } else {
        /* Here (PVM-backed /dev/kvm): a clear refusal naming the cause and a way out. */
        assert_int_equal(r, SMOLVM_EHOST);
        assert_err_contains(err, "backend 'firecracker' needs kvm");
        assert_err_contains(err, why);
        assert_err_contains(err, "backend = \"qemu\"");
    }
    err = smolvm_error_free(err);

    (void)setenv(SMOLVM_FC_ENV, "/nonexistent/firecracker", 1);
    {
        char *bin = NULL;

        assert_int_equal(smolvm_fc_find_binary(&bin, &err), SMOLVM_EHOST);
        assert_err_contains(err, "/nonexistent/firecracker");
        err = smolvm_error_free(err);
    }
    (void)setenv(SMOLVM_FC_ENV, fake, 1);
    {
        char *version = NULL, *bin = NULL;

        assert_int_equal(smolvm_fc_find_binary(&bin, NULL), 0);
        assert_string_equal(bin, fake);
        assert_int_equal(smolvm_fc_binary_version(bin, &version, 0, &err), 0);
        assert_string_equal(version, "1.16.1");
        free(version);
        free(bin);
    }
    assert_true(smolvm_fc_version_cmp("1.16.1", "1.4.0") > 0);
    assert_true(smolvm_fc_version_cmp("1.4", "1.4.0") == 0);
    assert_true(smolvm_fc_version_cmp("0.25.2", "1.4.0") < 0);
    assert_true(smolvm_fc_valid_id("rootfs_1"));
    assert_false(smolvm_fc_valid_id("root-fs"));
    assert_false(smolvm_fc_valid_id(""));
    assert_false(smolvm_fc_valid_id("a/b"));
}

/* A fake firecracker of our own, not through the backend (for the raw API): our child,
 * up once it says so on stderr. */
typedef struct bare {
    pid_t pid;
    int err; /* its stderr, kept open while it runs */
    char *sock;
} bare;

static void bare_start(bare *b, const char *dir, const char *id)
{
    char buf[512];
    int p[2];

    b->sock = path_in(dir, "fc.sock");
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    b->pid = fork();
    assert_true(b->pid >= 0);
    if (b->pid == 0) {
        int null = open("/dev/null", O_RDWR);

        if (null < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0 || dup2(p[1], 2) < 0 ||
            prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
            _exit(127);
        execl(fake, fake, "--api-sock", b->sock, "--id", id, (char *)NULL);
        _exit(127);
    }
    (void)close(p[1]);
    b->err = p[0];
    if (read_until(b->err, buf, sizeof(buf), "Running Firecracker", smolvm_now_ms() + 10000) < 0 ||
        !strstr(buf, "Running Firecracker"))
        fail_msg("the fake firecracker did not come up: %s", buf);
}

static void bare_stop(bare *b)
{
    int status;

    if (b->pid > 0) {
        (void)kill(b->pid, SIGKILL);
        (void)waitpid(b->pid, &status, 0);
    }
    b->pid = 0;
    if (b->err >= 0)
        (void)close(b->err);
    b->err = -1;
    free(b->sock);
    b->sock = NULL;
}

/* Configure, start, pause, snapshot, resume, stop: every request within the contract. */
static void test_lifecycle(void **state)
{
    char *dir = new_vm("life"), *snap = path_in(dir, "snap.state"), *mem = path_in(dir, "snap.mem");
    smolvm_vmm_config c;
    smolvm_error *err = NULL;
    running r = {.console = -1};
    json_t *reqs, *q;
    int64_t t0;
    const char *expect[] = {"GET /version",        "PUT /logger",      "PUT /metrics",
                            "PUT /machine-config", "PUT /boot-source", "PUT /drives/rootfs",
                            "PUT /drives/config",  "PUT /vsock",       "PUT /entropy",
                            "PUT /actions"};
    struct stat st;
    size_t i;

    (void)state;
    base_config(&c, dir);
    t0 = smolvm_now_ms();
    start_vm(&c, &r);
    print_message("spawn to ready (fake, 30 ms boot): %lld ms\n",
                  (long long)(smolvm_now_ms() - t0));
    assert_string_equal(instance_state(dir), "Running");
    /* vmm.log keeps firecracker's stderr from its first line (its logger too). */
    assert_true(file_contains(dir, SMOLVM_VMM_STDERR_LOG, "Running Firecracker v1.16.1"));
    /* PUT /vsock bound the device's socket before the boot, where the VM dir says. */
    assert_int_equal(stat(c.vsock_uds, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));

    /* Firecracker refuses a snapshot of a running VM: the backend pauses it first, and
     * it stays paused. */
    {
        smolvm_vmm_snapshot s = {.state_path = snap, .mem_path = mem};

        assert_int_equal(fc->snapshot(dir, &s, smolvm_now_ms() + 3000, &err), 0);
    }
    assert_string_equal(instance_state(dir), "Paused");
    assert_int_equal(access(snap, F_OK), 0);
    assert_int_equal(access(mem, F_OK), 0);
    assert_int_equal(fc->resume(dir, smolvm_now_ms() + 3000, &err), 0);
    assert_string_equal(instance_state(dir), "Running");
    stop_vm(dir, &r);

    reqs = requests(dir);
    assert_no_violation(reqs);
    for (i = 0; i < SMOLVM_ARRAY_SIZE(expect); i++) {
        q = json_array_get(reqs, i);
        assert_non_null(q);
        char got[128];

        (void)snprintf(got, sizeof(got), "%s %s", json_string_value(json_object_get(q, "method")),
                       json_string_value(json_object_get(q, "path")));
        assert_string_equal(got, expect[i]);
        assert_true(json_integer_value(json_object_get(q, "status")) < 300);
    }
    q = find_request(reqs, "PUT", "/machine-config");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(q, "body"), "vcpu_count")),
                     2);
    q = find_request(reqs, "PUT", "/drives/rootfs");
    assert_true(json_is_true(json_object_get(json_object_get(q, "body"), "is_root_device")));
    assert_true(json_is_false(json_object_get(json_object_get(q, "body"), "is_read_only")));
    q = find_request(reqs, "PUT", "/drives/config");
    assert_true(json_is_true(json_object_get(json_object_get(q, "body"), "is_read_only")));
    q = find_request(reqs, "PUT", "/vsock");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(q, "body"), "guest_cid")),
                     3);
    assert_string_equal(json_string_value(json_object_get(json_object_get(q, "body"), "uds_path")),
                        c.vsock_uds);
    json_decref(reqs);

    /* A stopped VM: control calls say so instead of hanging on a stale socket. */
    assert_int_equal(fc->pause(dir, smolvm_now_ms() + 1000, &err), SMOLVM_ESTATE);
    err = smolvm_error_free(err);

    /* The snapshot names its drives relative to firecracker's working directory (the
     * VM's <dir>/fc, or its chroot): a firecracker started elsewhere finds none. */
    {
        char *dir3 = new_vm("restore-raw");
        smolvm_fc_api *api = NULL;
        bare b = {.err = -1};

        bare_start(&b, dir3, "raw");
        assert_int_equal(smolvm_fc_api_new(&api, b.sock, &err), 0);
        smolvm_fc_load load = {.snapshot_path = snap, .mem_path = mem, .resume = 1};

        assert_int_equal(smolvm_fc_snapshot_load(api, &load, smolvm_now_ms() + 5000, &err),
                         SMOLVM_EVMM);
        assert_err_contains(err, "BackingFile");
        assert_err_contains(err, "\"rootfs\"");
        err = smolvm_error_free(err);
        api = smolvm_fc_api_free(api);
        bare_stop(&b);
        free(dir3);
    }

    /* Restore the snapshot in a fresh process in another dir: it runs without booting
     * again, its vsock device at this VM's socket (vsock_override). */
    {
        char *dir2 = new_vm("restored");
        char line[64];
        int s;

        c.dir = dir2;
        c.vsock_uds = vsock_path(dir2);
        (void)setenv("FAKE_FC_GUEST_PORTS", "{\"52\": \"cat\"}", 1);
        if (spawn_or_restore(&c, &r, snap, mem, smolvm_now_ms() + 10000, &err) < 0)
            fail_msg("restore: %s", smolvm_error_message(err));
        assert_string_equal(instance_state(dir2), "Running");
        reqs = requests(dir2);
        assert_no_violation(reqs);
        q = find_request(reqs, "PUT", "/snapshot/load");
        assert_non_null(q);
        assert_true(json_is_true(json_object_get(json_object_get(q, "body"), "resume_vm")));
        assert_string_equal(
            json_string_value(json_object_get(
                json_object_get(json_object_get(q, "body"), "vsock_override"), "uds_path")),
            c.vsock_uds);
        assert_null(find_request(reqs, "PUT", "/boot-source"));
        json_decref(reqs);
        /* The restored device answers at the new socket: the guest's listener is there. */
        assert_int_equal(smolvm_unix_connect(c.vsock_uds, smolvm_now_ms() + 3000, &s, &err), 0);
        assert_int_equal(write(s, "CONNECT 52\n", 11), 11);
        assert_true(read_until(s, line, sizeof(line), "\n", smolvm_now_ms() + 3000) > 0);
        assert_string_equal(line, "OK 1073741824\n");
        (void)close(s);
        stop_vm(dir2, &r);
        assert_null(strstr(r.out, "Linux version")); /* no boot */
        free(dir2);
    }
    assert_no_children();
    free(snap);
    free(mem);
    free(dir);
}

/* disk = "shared": the base itself, attached read-only and mounted "ro", no overlay. */
static void test_read_only_disk(void **state)
{
    char *dir = new_vm("shared");
    smolvm_vmm_config c;
    running r = {.console = -1};
    json_t *reqs, *q;
    const char *args;

    (void)state;
    base_config(&c, dir);
    c.disk_read_only = true;
    start_vm(&c, &r);
    stop_vm(dir, &r);
    reqs = requests(dir);
    assert_no_violation(reqs);
    q = find_request(reqs, "PUT", "/drives/rootfs");
    assert_true(json_is_true(json_object_get(json_object_get(q, "body"), "is_read_only")));
    assert_null(find_request(reqs, "PUT", "/drives/overlay"));
    q = find_request(reqs, "PUT", "/boot-source");
    args = json_string_value(json_object_get(json_object_get(q, "body"), "boot_args"));
    assert_non_null(strstr(args, " root=/dev/vda ro "));
    assert_null(strstr(args, " rw "));
    assert_null(strstr(args, "smolvm.overlay="));
    json_decref(reqs);
    assert_no_children();
    free(dir);
}

/* An isolated disk: read-only base, per-VM ext4 upper layer created in milliseconds. */
static void test_overlay_disk(void **state)
{
    char *dir = new_vm("overlay"), *upper = path_in(dir, "upper.ext4");
    smolvm_vmm_config c;
    running r = {.console = -1};
    json_t *reqs, *q;
    const char *args;
    struct stat st;
    int64_t t0, t1;

    (void)state;
    base_config(&c, dir);
    c.overlay_disk = upper;
    c.overlay_mib = 8192;
    t0 = smolvm_now_ms();
    start_vm(&c, &r);
    t1 = smolvm_now_ms();
    assert_int_equal(stat(upper, &st), 0);
    assert_int_equal(st.st_size, (off_t)8192 << 20);
    assert_true(st.st_blocks * 512 < (16 << 20)); /* sparse */
    assert_int_equal(sh("dumpe2fs -h '%s' 2>/dev/null | grep -q 'smolvm-upper'", upper), 0);
    print_message("start with an 8 GiB overlay disk created: %lld ms\n", (long long)(t1 - t0));
    stop_vm(dir, &r);

    reqs = requests(dir);
    assert_no_violation(reqs);
    q = find_request(reqs, "PUT", "/drives/rootfs");
    assert_true(json_is_true(json_object_get(json_object_get(q, "body"), "is_read_only")));
    q = find_request(reqs, "PUT", "/drives/overlay");
    assert_non_null(q);
    assert_true(json_is_false(json_object_get(json_object_get(q, "body"), "is_read_only")));
    q = find_request(reqs, "PUT", "/boot-source");
    args = json_string_value(json_object_get(json_object_get(q, "body"), "boot_args"));
    assert_non_null(strstr(args, " root=/dev/vda ro "));
    assert_null(strstr(args, " rw "));
    assert_non_null(strstr(args, "smolvm.overlay=/dev/vdc"));
    json_decref(reqs);

    /* A second start reuses the upper layer: the VM's writes survive a restart. */
    assert_int_equal(sh("debugfs -w -R 'mkdir kept' '%s' >/dev/null 2>&1", upper), 0);
    start_vm(&c, &r);
    stop_vm(dir, &r);
    assert_int_equal(sh("debugfs -R 'ls' '%s' 2>/dev/null | grep -q kept", upper), 0);

    {
        char *u2 = path_in(dir, "timing.ext4");
        int64_t best = INT64_MAX;
        int i;

        /* The disk creation alone, as a user's "isolated" disk pays it. */
        for (i = 0; i < 5; i++) {
            char *argv[] = {"mkfs.ext4",
                            "-q",
                            "-F",
                            "-m",
                            "0",
                            "-L",
                            "smolvm-upper",
                            "-E",
                            "lazy_itable_init=1,lazy_journal_init=1",
                            u2,
                            NULL};
            int fd;

            t0 = smolvm_now_ms();
            fd = open(u2, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            assert_true(fd >= 0);
            assert_int_equal(ftruncate(fd, (off_t)8192 << 20), 0);
            (void)close(fd);
            assert_int_equal(smolvm_tool_run(argv, smolvm_now_ms() + 10000, NULL, NULL), 0);
            t1 = smolvm_now_ms() - t0;
            best = t1 < best ? t1 : best;
            (void)unlink(u2);
        }
        print_message("overlay disk (8 GiB sparse ext4) creation: best of 5 %lld ms\n",
                      (long long)best);
        assert_true(best < 500);
        free(u2);
    }
    free(upper);
    free(dir);
}

static void test_bad_config(void **state)
{
    char *dir = new_vm("bad");
    smolvm_vmm_config c;
    smolvm_error *err = NULL;
    running r = {.console = -1};

    (void)state;
    base_config(&c, dir);
    c.disk_format = "qcow2";
    assert_int_equal(spawn_vm(&c, &r, smolvm_now_ms() + 3000, &err), SMOLVM_EINVAL);
    assert_err_contains(err, "raw files only");
    err = smolvm_error_free(err);

    base_config(&c, dir);
    c.network = SMOLVM_NET_USER;
    assert_int_equal(spawn_vm(&c, &r, smolvm_now_ms() + 3000, &err), SMOLVM_EINVAL);
    assert_err_contains(err, "no user-mode networking");
    err = smolvm_error_free(err);

    base_config(&c, dir);
    c.accel = SMOLVM_ACCEL_TCG;
    assert_int_equal(spawn_vm(&c, &r, smolvm_now_ms() + 3000, &err), SMOLVM_EINVAL);
    assert_err_contains(err, "accel 'kvm'");
    err = smolvm_error_free(err);

    base_config(&c, dir);
    c.network = SMOLVM_NET_NAT;
    c.tap_name = "tap0; rm -rf /";
    c.mac = "52:54:00:12:34:56";
    assert_int_equal(spawn_vm(&c, &r, smolvm_now_ms() + 3000, &err), SMOLVM_EINVAL);
    assert_err_contains(err, "invalid tap name");
    err = smolvm_error_free(err);
    assert_no_children(); /* refused before anything ran */

    /* NAT: the TAP is handed to firecracker as network interface eth0. */
    base_config(&c, dir);
    c.network = SMOLVM_NET_NAT;
    c.tap_name = "smolvm-tap0";
    c.mac = "52:54:00:12:34:56";
    start_vm(&c, &r);
    stop_vm(dir, &r);
    {
        json_t *reqs = requests(dir), *q = find_request(reqs, "PUT", "/network-interfaces/eth0");

        assert_no_violation(reqs);
        assert_non_null(q);
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(q, "body"), "host_dev_name")),
            "smolvm-tap0");
        json_decref(reqs);
    }
    free(dir);
}

/* Failures during configuration: firecracker's fault_message, no process left (the
 * backend reaps its child). */
static void test_config_errors(void **state)
{
    char *dir = new_vm("cfgerr"), *pidfile = path_in(dir, SMOLVM_VMM_PIDFILE),
         *sock = path_in(dir, "fc.sock");
    char missing[700];
    smolvm_vmm_config c;
    smolvm_error *err = NULL;
    running r = {.console = -1};

    (void)state;
    base_config(&c, dir);
    (void)snprintf(missing, sizeof(missing), "%s/no-such-kernel", tmpdir);
    c.kernel = missing;
    assert_int_equal(spawn_vm(&c, &r, smolvm_now_ms() + 5000, &err), SMOLVM_EVMM);
    assert_err_contains(err, "PUT /boot-source: firecracker answered 400: The kernel file "
                             "cannot be opened");
    err = smolvm_error_free(err);
    assert_int_equal(access(pidfile, F_OK), -1);
    assert_int_equal(access(sock, F_OK), -1);
    assert_no_children();

    base_config(&c, dir);
    (void)setenv("FAKE_FC_FAIL", "PUT /drives/config", 1);
    assert_int_equal(spawn_vm(&c, &r, smolvm_now_ms() + 5000, &err), SMOLVM_EVMM);
    assert_err_contains(err, "PUT /drives/config: firecracker answered 400: injected failure");
    err = smolvm_error_free(err);
    assert_int_equal(access(pidfile, F_OK), -1);
    assert_no_children();
    (void)unsetenv("FAKE_FC_FAIL");

    /* The vsock socket's path is taken (a supervisor that did not clear it): firecracker
     * cannot bind it. */
    write_text(c.vsock_uds, "in the way\n");
    assert_int_equal(spawn_or_restore(&c, &r, NULL, NULL, smolvm_now_ms() + 5000, &err),
                     SMOLVM_EVMM);
    assert_err_contains(err, "PUT /vsock: firecracker answered 400: Cannot create backend for "
                             "vsock device: UnixBind(");
    assert_err_contains(err, "os error 98");
    err = smolvm_error_free(err);
    assert_int_equal(access(pidfile, F_OK), -1);
    assert_no_children();
    assert_int_equal(unlink(c.vsock_uds), 0);

    /* A binary that is not firecracker at all: it exits, and says why. */
    (void)setenv(SMOLVM_FC_ENV, "/bin/false", 1);
    assert_true(spawn_vm(&c, &r, smolvm_now_ms() + 5000, &err) < 0);
    assert_non_null(err);
    err = smolvm_error_free(err);
    (void)setenv(SMOLVM_FC_ENV, fake, 1);
    assert_int_equal(access(pidfile, F_OK), -1);
    assert_no_children();

    /* One VMM per dir. */
    start_vm(&c, &r);
    {
        running r2 = {.console = -1};

        assert_int_equal(spawn_vm(&c, &r2, smolvm_now_ms() + 3000, &err), SMOLVM_EEXIST);
        err = smolvm_error_free(err);
    }
    stop_vm(dir, &r);
    assert_no_children();
    free(pidfile);
    free(sock);
    free(dir);
}

/* Boot failures as the console shows them (the supervisor turns them into errors; see
 * test_sv_boot_errors): the guest's error line, a silent guest, a VMM that dies, a
 * guest that ignores Ctrl-Alt-Del. */
static void test_boot_errors(void **state)
{
    char *dir = new_vm("booterr");
    smolvm_vmm_config c;
    smolvm_error *err = NULL;
    running r = {.console = -1};
    int64_t t0;
    int status = 0;

    (void)state;
    base_config(&c, dir);
    (void)setenv("FAKE_FC_BOOT", "error", 1);
    assert_int_equal(spawn_vm(&c, &r, smolvm_now_ms() + 5000, &err), 0);
    assert_int_equal(console_until(&r, "smolvm: error: ", smolvm_now_ms() + 5000), 1);
    assert_int_equal(console_until(&r, "\n", smolvm_now_ms() + 1000), 1);
    assert_non_null(strstr(r.out, "smolvm: error: config disk: no smolvm config disk found"));
    assert_null(strstr(r.out, "smolvm: ready"));
    stop_vm(dir, &r);

    /* Silent guest: the kernel's first line, then nothing, until any deadline. */
    (void)setenv("FAKE_FC_BOOT", "silent", 1);
    assert_int_equal(spawn_vm(&c, &r, smolvm_now_ms() + 5000, &err), 0);
    t0 = smolvm_now_ms();
    assert_int_equal(console_until(&r, "smolvm: ", t0 + 300), -1);
    assert_true(smolvm_now_ms() - t0 < 1000);
    assert_non_null(strstr(r.out, "Linux version"));

    /* The VMM dies: its console ends at once (the pipe has no other writer), and the
     * child is ours to reap. */
    (void)kill(r.pid, SIGKILL);
    t0 = smolvm_now_ms();
    assert_int_equal(console_until(&r, NULL, t0 + 5000), 0);
    assert_true(smolvm_now_ms() - t0 < 1000);
    assert_int_equal(wait_child(r.pid, smolvm_now_ms() + 2000, &status), 0);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    assert_no_children();

    /* The guest ignores Ctrl-Alt-Del: poweroff is delivered, the VMM stays; quit ends
     * it (the caller's fallback after its poweroff deadline). */
    (void)unsetenv("FAKE_FC_BOOT");
    (void)setenv("FAKE_FC_IGNORE_CAD", "1", 1);
    start_vm(&c, &r);
    assert_int_equal(fc->poweroff(dir, smolvm_now_ms() + 3000, &err), 0);
    assert_int_equal(wait_child(r.pid, smolvm_now_ms() + 300, &status), SMOLVM_ETIMEDOUT);
    assert_int_equal(fc->quit(dir, smolvm_now_ms() + 3000, &err), 0);
    assert_false(smolvm_pid_alive(r.pid, r.start));
    assert_int_equal(wait_child(r.pid, smolvm_now_ms() + 2000, &status), 0);
    assert_true(WIFEXITED(status)); /* SIGTERM: firecracker exits */
    assert_int_equal(console_until(&r, NULL, smolvm_now_ms() + 2000), 0);
    assert_null(strstr(r.out, "smolvm: poweroff"));
    assert_no_children();

    /* Control calls on a stopped VM say so. */
    assert_int_equal(fc->pause(dir, smolvm_now_ms() + 1000, &err), SMOLVM_ESTATE);
    assert_err_contains(err, "is the vm running?");
    err = smolvm_error_free(err);
    assert_int_equal(fc->quit(dir, smolvm_now_ms() + 1000, &err), SMOLVM_ESTATE);
    err = smolvm_error_free(err);
    free(dir);
}

/* The hybrid vsock as firecracker documents it (docs/vsock.md): the guest's connection
 * to host port 1024 arrives at <uds>_1024; a host connection to <uds> says
 * "CONNECT <port>" and gets "OK <host port>" and the guest's listener; no listener or a
 * bad command closes it; a paused guest answers once it runs; a snapshot resets every
 * connection and the agent connects again. */
static void test_vsock(void **state)
{
    char *dir = new_vm("vsock");
    smolvm_vmm_config c;
    smolvm_error *err = NULL;
    running r = {.console = -1};
    char buf[256];
    int lfd, g, h1, h2, h;

    (void)state;
    base_config(&c, dir);
    lfd = agent_listener(dir);
    (void)setenv("FAKE_FC_AGENT", "sh -c 'printf guest-agent; exec cat'", 1);
    (void)setenv("FAKE_FC_GUEST_PORTS", "{\"52\": \"cat\", \"53\": \"echo port 53\"}", 1);
    start_vm(&c, &r);

    /* Guest-initiated: the agent's connection, both ways. */
    g = accept_within(lfd, smolvm_now_ms() + 5000);
    assert_true(g >= 0);
    assert_true(read_until(g, buf, sizeof(buf), "guest-agent", smolvm_now_ms() + 3000) > 0);
    assert_string_equal(buf, "guest-agent");
    assert_int_equal(write(g, "ping\n", 5), 5);
    assert_true(read_until(g, buf, sizeof(buf), "\n", smolvm_now_ms() + 3000) > 0);
    assert_string_equal(buf, "ping\n");

    /* Host-initiated: the handshake, host ports from 1 << 30, the command's case as
     * firecracker ignores it, data right behind the command reaching the guest. */
    assert_int_equal(smolvm_unix_connect(c.vsock_uds, smolvm_now_ms() + 3000, &h1, &err), 0);
    assert_int_equal(write(h1, "CONNECT 52\n", 11), 11);
    assert_true(read_until(h1, buf, sizeof(buf), "\n", smolvm_now_ms() + 3000) > 0);
    assert_string_equal(buf, "OK 1073741824\n");
    assert_int_equal(write(h1, "abc", 3), 3);
    assert_true(read_until(h1, buf, sizeof(buf), "abc", smolvm_now_ms() + 3000) > 0);
    assert_string_equal(buf, "abc");
    assert_int_equal(smolvm_unix_connect(c.vsock_uds, smolvm_now_ms() + 3000, &h2, &err), 0);
    assert_int_equal(write(h2, "connect 52\nxyz", 14), 14);
    assert_true(read_until(h2, buf, sizeof(buf), "xyz", smolvm_now_ms() + 3000) > 0);
    assert_string_equal(buf, "OK 1073741825\nxyz");
    assert_int_equal(smolvm_unix_connect(c.vsock_uds, smolvm_now_ms() + 3000, &h, &err), 0);
    assert_int_equal(write(h, "CONNECT 53\n", 11), 11);
    assert_int_equal(read_until(h, buf, sizeof(buf), NULL, smolvm_now_ms() + 3000), 22);
    assert_string_equal(buf, "OK 1073741826\nport 53\n");
    (void)close(h);

    /* Refused: closed without an OK. */
    {
        static const char *const bad[] = {"CONNECT 99\n", "HELLO 5200\n", "CONNECT x52\n",
                                          "CONNECT 4294967296\n", "CONNECT\n"};
        size_t i;

        for (i = 0; i < SMOLVM_ARRAY_SIZE(bad); i++) {
            assert_int_equal(smolvm_unix_connect(c.vsock_uds, smolvm_now_ms() + 3000, &h, &err), 0);
            assert_int_equal(write(h, bad[i], strlen(bad[i])), (ssize_t)strlen(bad[i]));
            (void)shutdown(h, SHUT_WR);
            if (read_until(h, buf, sizeof(buf), NULL, smolvm_now_ms() + 3000) != 0)
                fail_msg("'%.*s' was answered: '%s'", (int)strlen(bad[i]) - 1, bad[i], buf);
            (void)close(h);
        }
    }

    /* Paused, the guest cannot accept: the OK comes once it runs again. */
    assert_int_equal(fc->pause(dir, smolvm_now_ms() + 3000, &err), 0);
    assert_int_equal(smolvm_unix_connect(c.vsock_uds, smolvm_now_ms() + 3000, &h, &err), 0);
    assert_int_equal(write(h, "CONNECT 52\n", 11), 11);
    assert_int_equal(read_until(h, buf, sizeof(buf), "\n", smolvm_now_ms() + 200), -1);
    assert_int_equal(fc->resume(dir, smolvm_now_ms() + 3000, &err), 0);
    assert_true(read_until(h, buf, sizeof(buf), "\n", smolvm_now_ms() + 3000) > 0);
    assert_string_equal(buf, "OK 1073741827\n");

    /* A snapshot resets every connection (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET); after the
     * resume the agent connects again. */
    {
        char *snap = path_in(dir, "s.state"), *mem = path_in(dir, "s.mem");
        int g2;

        smolvm_vmm_snapshot s = {.state_path = snap, .mem_path = mem};

        assert_int_equal(fc->pause(dir, smolvm_now_ms() + 3000, &err), 0);
        assert_int_equal(fc->snapshot(dir, &s, smolvm_now_ms() + 3000, &err), 0);
        assert_int_equal(read_until(g, buf, sizeof(buf), NULL, smolvm_now_ms() + 3000), 0);
        assert_int_equal(read_until(h1, buf, sizeof(buf), NULL, smolvm_now_ms() + 3000), 0);
        assert_int_equal(read_until(h, buf, sizeof(buf), NULL, smolvm_now_ms() + 3000), 0);
        assert_int_equal(accept_within(lfd, smolvm_now_ms() + 200), -1); /* paused */
        assert_int_equal(fc->resume(dir, smolvm_now_ms() + 3000, &err), 0);
        g2 = accept_within(lfd, smolvm_now_ms() + 5000);
        assert_true(g2 >= 0);
        assert_true(read_until(g2, buf, sizeof(buf), "guest-agent", smolvm_now_ms() + 3000) > 0);
        (void)close(g2);
        free(snap);
        free(mem);
    }
    (void)close(g);
    (void)close(h);
    (void)close(h1);
    (void)close(h2);
    stop_vm(dir, &r);
    {
        json_t *reqs = requests(dir);

        assert_no_violation(reqs);
        json_decref(reqs);
    }
    (void)close(lfd);
    assert_no_children();
    free(dir);
}

/* The fake itself: it must catch what firecracker would refuse (so the tests above
 * prove something), answering with fault_message errors the client reports. */
static void test_contract_checks(void **state)
{
    char *dir = new_vm("contract");
    smolvm_fc_api *api = NULL;
    smolvm_error *err = NULL;
    int64_t dl = smolvm_now_ms() + 5000;
    bare b = {.err = -1};
    char *v1 = path_in(dir, "v1.sock"), *v2 = path_in(dir, "v2.sock");
    int status = 0;
    struct {
        const char *method, *path, *body, *fault;
    } bad[] = {
        {"PUT", "/machine-config", "{\"vcpu_count\": 0, \"mem_size_mib\": 128}",
         "below the minimum 1"},
        {"PUT", "/machine-config", "{\"vcpu_count\": 33, \"mem_size_mib\": 128}",
         "above the maximum 32"},
        {"PUT", "/machine-config", "{\"vcpu_count\": 2}",
         "missing required field "
         "'mem_size_mib'"},
        {"PUT", "/machine-config", "{\"vcpu_count\": \"2\", \"mem_size_mib\": 128}",
         "expected integer"},
        {"PUT", "/machine-config", "{\"vcpu_count\": 2, \"mem_size_mib\": 128, \"cpus\": 1}",
         "unknown field 'cpus'"},
        {"PUT", "/drives/root-fs",
         "{\"drive_id\": \"root-fs\", \"is_root_device\": true, \"is_read_only\": true, "
         "\"path_on_host\": \"/etc/hostname\"}",
         "Invalid ID"},
        {"PUT", "/drives/a", "{\"drive_id\": \"b\", \"is_root_device\": false}",
         "does not match the id from the body"},
        {"PUT", "/drives/a",
         "{\"drive_id\": \"a\", \"is_root_device\": false, "
         "\"cache_type\": \"Fast\"}",
         "is not one of"},
        {"PUT", "/vsock", "{\"guest_cid\": 2, \"uds_path\": \"/tmp/v.sock\"}",
         "below the minimum 3"},
        {"PUT", "/vsock", "{\"guest_cid\": 3}", "missing required field 'uds_path'"},
        {"PUT", "/vsock", "{\"guest_cid\": 3, \"uds_path\": 7}", "expected string"},
        {"PUT", "/vsock", "{\"guest_cid\": 3, \"uds_path\": \"/no/such/dir/v.sock\"}",
         "Cannot create backend for vsock device"},
        {"PATCH", "/vm", "{\"state\": \"Paused\"}", "not supported before starting"},
        {"PUT", "/actions", "{\"action_type\": \"InstanceStart\"}", "without kernel configuration"},
        {"PUT", "/actions", "{\"action_type\": \"Reboot\"}", "is not one of"},
        {"PUT", "/snapshot/create",
         "{\"snapshot_path\": \"/tmp/s\", \"mem_file_path\": "
         "\"/tmp/m\"}",
         "not supported before starting"},
        {"GET", "/no-such-resource", NULL, "Invalid request method and/or path"},
        {"DELETE", "/machine-config", NULL, "Invalid request method and/or path"},
    };
    size_t i;
    json_t *reqs;

    (void)state;
    bare_start(&b, dir, "contract");
    assert_int_equal(smolvm_fc_api_new(&api, b.sock, &err), 0);

    for (i = 0; i < SMOLVM_ARRAY_SIZE(bad); i++) {
        json_t *body = bad[i].body ? json_loads(bad[i].body, 0, NULL) : NULL;
        char where[128];

        assert_true(!bad[i].body || body);
        assert_int_equal(smolvm_fc_api_call(api, bad[i].method, bad[i].path, body, NULL, dl, &err),
                         SMOLVM_EVMM);
        (void)snprintf(where, sizeof(where), "%s %s: firecracker answered 400: ", bad[i].method,
                       bad[i].path);
        assert_err_contains(err, where);
        assert_err_contains(err, bad[i].fault);
        err = smolvm_error_free(err);
        json_decref(body);
    }
    /* The client refuses ids firecracker would refuse, before sending anything. */
    {
        smolvm_fc_drive d = {"root/../x", rootfs, 1, 0};

        assert_int_equal(smolvm_fc_put_drive(api, &d, dl, &err), SMOLVM_EINVAL);
        assert_err_contains(err, "drive id 'root/../x'");
        err = smolvm_error_free(err);
    }

    /* Order rules: one start, no configuration after it, snapshot load only fresh. */
    assert_int_equal(smolvm_fc_put_boot_source(api, kernel, CMDLINE, dl, &err), 0);
    {
        smolvm_fc_load load = {.snapshot_path = "/tmp/s", .mem_path = rootfs, .resume = 1};

        assert_int_equal(smolvm_fc_snapshot_load(api, &load, dl, &err), SMOLVM_EVMM);
    }
    assert_err_contains(err, "not allowed after configuring");
    err = smolvm_error_free(err);
    /* The vsock device's socket is bound when it is configured; a second PUT replaces
     * the device and its socket (firecracker's VsockBuilder::insert). */
    assert_int_equal(smolvm_fc_put_vsock(api, 3, v1, dl, &err), 0);
    assert_int_equal(access(v1, F_OK), 0);
    assert_int_equal(smolvm_fc_put_vsock(api, 4, v2, dl, &err), 0);
    assert_int_equal(access(v1, F_OK), -1);
    assert_int_equal(access(v2, F_OK), 0);
    assert_int_equal(smolvm_fc_put_vsock(api, 2, v1, dl, &err), SMOLVM_EINVAL); /* client */
    assert_err_contains(err, "guest cid 2 is below 3");
    err = smolvm_error_free(err);
    assert_int_equal(smolvm_fc_action(api, "InstanceStart", dl, &err), 0);
    assert_int_equal(smolvm_fc_put_vsock(api, 3, v1, dl, &err), SMOLVM_EVMM);
    assert_err_contains(err, "PUT /vsock: firecracker answered 400: The requested operation is "
                             "not supported after starting");
    err = smolvm_error_free(err);
    assert_int_equal(smolvm_fc_action(api, "InstanceStart", dl, &err), SMOLVM_EVMM);
    assert_err_contains(err, "PUT /actions: firecracker answered 400: The requested operation "
                             "is not supported after starting the microVM");
    err = smolvm_error_free(err);
    assert_int_equal(smolvm_fc_put_machine_config(api, 1, 128, dl, &err), SMOLVM_EVMM);
    assert_err_contains(err, "after starting");
    err = smolvm_error_free(err);
    {
        json_t *info = NULL;
        char *v = NULL;

        assert_int_equal(smolvm_fc_describe(api, &info, dl, &err), 0);
        assert_string_equal(json_string_value(json_object_get(info, "state")), "Running");
        assert_string_equal(json_string_value(json_object_get(info, "id")), "contract");
        json_decref(info);
        assert_int_equal(smolvm_fc_version(api, &v, dl, &err), 0);
        assert_string_equal(v, "1.16.1");
        free(v);
    }
    assert_int_equal(smolvm_fc_action(api, "SendCtrlAltDel", dl, &err), 0);
    assert_int_equal(wait_child(b.pid, smolvm_now_ms() + 5000, &status), 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    b.pid = 0;
    /* No VMM: the client says so instead of hanging. */
    assert_int_equal(smolvm_fc_version(api, &(char *){NULL}, smolvm_now_ms() + 1000, &err),
                     SMOLVM_ESTATE);
    assert_err_contains(err, "is the vm running?");
    err = smolvm_error_free(err);
    api = smolvm_fc_api_free(api);

    reqs = requests(dir);
    assert_true(json_array_size(reqs) >= SMOLVM_ARRAY_SIZE(bad));
    json_decref(reqs);
    bare_stop(&b);
    free(v1);
    free(v2);
    free(dir);
}

/* ---------------------------------------------------------------- jailer */

static char fake_jailer[1024];

/* The jail's ids: an unprivileged user when we are root (as the jailer needs), our own
 * otherwise (the fake can then skip the chown the real jailer does). */
static unsigned jail_uid(void)
{
    return getuid() == 0 ? 65534 : getuid();
}

static void jail_env(void)
{
    char id[16];

    (void)snprintf(id, sizeof(id), "%u", jail_uid());
    (void)setenv(SMOLVM_FC_JAILER_ENV, fake_jailer, 1);
    (void)setenv(SMOLVM_FC_JAILER_UID_ENV, id, 1);
    (void)setenv(SMOLVM_FC_JAILER_GID_ENV, id, 1);
}

static void unjail_env(void)
{
    (void)unsetenv(SMOLVM_FC_JAILER_ENV);
    (void)unsetenv(SMOLVM_FC_JAILER_UID_ENV);
    (void)unsetenv(SMOLVM_FC_JAILER_GID_ENV);
    (void)unsetenv(SMOLVM_FC_JAILER_CGROUP_ENV);
}

static void assert_same_file(const char *a, const char *b)
{
    struct stat sa, sb;

    assert_int_equal(stat(a, &sa), 0);
    assert_int_equal(stat(b, &sb), 0);
    assert_true(sa.st_ino == sb.st_ino && sa.st_dev == sb.st_dev);
}

static const char *body_str(json_t *reqs, const char *method, const char *path, const char *key)
{
    json_t *q = find_request(reqs, method, path);

    assert_non_null(q);
    return json_string_value(json_object_get(json_object_get(q, "body"), key));
}

/* Jailed: the jailer gets its documented arguments, firecracker sees only the chroot
 * (every file linked in, readable by the jail uid), and everything that finds a VM
 * from its dir (socket, pidfile, console) still does. */
static void test_jailer_lifecycle(void **state)
{
    char *dir = new_vm("jailed"), *upper = path_in(dir, "upper.ext4"), *root, *p, *jail;
    smolvm_vmm_config c;
    smolvm_error *err = NULL;
    running r = {.console = -1};
    json_t *reqs;
    struct stat st;
    pid_t pid;
    uint64_t start;
    char buf[64];
    int lfd, g;

    (void)state;
    base_config(&c, dir);
    c.vm_id = "vm-jail-1";
    c.overlay_disk = upper;
    lfd = agent_listener(dir);
    (void)setenv("FAKE_FC_AGENT", "sh -c 'printf jailed-agent; exec cat'", 1);
    jail_env();
    (void)setenv(SMOLVM_FC_JAILER_CGROUP_ENV, "smolvm", 1);
    start_vm(&c, &r); /* the console: the jailer's stdout, then firecracker's */
    assert_string_equal(instance_state(dir), "Running"); /* through <dir>/fc.sock */
    assert_true(smolvm_pid_find_vmm(dir, SMOLVM_VMM_PIDFILE, &pid, &start));
    assert_int_equal(pid, (pid_t)r.pid);
    /* The guest's vsock connection comes out of the chroot at /vsock.sock_1024, a hard
     * link to the supervisor's listener given to the jail uid. */
    g = accept_within(lfd, smolvm_now_ms() + 5000);
    assert_true(g >= 0);
    assert_true(read_until(g, buf, sizeof(buf), "jailed-agent", smolvm_now_ms() + 3000) > 0);
    (void)close(g);
    (void)unsetenv("FAKE_FC_AGENT");

    root = smolvm_strdupf("%s/jail/fake-firecracker.py/vm-jail-1/root", dir);
    assert_non_null(root);
    p = path_in(root, "fake-firecracker.py"); /* the jailer copies the exec file in */
    assert_int_equal(access(p, X_OK), 0);
    free(p);
    p = path_in(root, "rootfs");
    assert_same_file(p, rootfs); /* a hard link, not a copy */
    free(p);
    p = path_in(root, "vmlinux");
    assert_same_file(p, kernel);
    free(p);
    p = path_in(root, "overlay");
    assert_same_file(p, upper);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_uid, jail_uid());
    free(p);
    p = path_in(dir, SMOLVM_VMM_STDERR_LOG);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_uid, jail_uid());
    free(p);
    assert_int_equal(stat(root, &st), 0);
    assert_int_equal(st.st_uid, jail_uid());
    p = path_in(dir, "fc.sock");
    assert_int_equal(lstat(p, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    free(p);
    p = path_in(root, SMOLVM_SV_VSOCK "_1024");
    {
        char *listener = smolvm_strdupf("%s_1024", c.vsock_uds);

        assert_same_file(p, listener);
        free(listener);
    }
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_uid, jail_uid());
    free(p);
    p = path_in(root, SMOLVM_SV_VSOCK); /* the device's own socket, bound in the chroot */
    assert_int_equal(stat(p, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    free(p);

    stop_vm(dir, &r);

    reqs = requests(dir);
    assert_no_violation(reqs);
    assert_string_equal(body_str(reqs, "PUT", "/boot-source", "kernel_image_path"), "/vmlinux");
    /* Drives by relative names (from the jail's "/"), so a snapshot restores elsewhere. */
    assert_string_equal(body_str(reqs, "PUT", "/drives/rootfs", "path_on_host"), "rootfs");
    assert_string_equal(body_str(reqs, "PUT", "/drives/config", "path_on_host"), "config");
    assert_string_equal(body_str(reqs, "PUT", "/drives/overlay", "path_on_host"), "overlay");
    assert_string_equal(body_str(reqs, "PUT", "/logger", "log_path"), "/vmm.log");
    assert_string_equal(body_str(reqs, "PUT", "/metrics", "metrics_path"), "/fc-metrics.json");
    assert_string_equal(body_str(reqs, "PUT", "/vsock", "uds_path"), "/" SMOLVM_SV_VSOCK);
    json_decref(reqs);

    /* Started again: a fresh jail; quit removes it. */
    start_vm(&c, &r);
    stop_vm(dir, &r);
    start_vm(&c, &r);
    assert_int_equal(fc->quit(dir, smolvm_now_ms() + 3000, &err), 0);
    assert_int_equal(wait_child(r.pid, smolvm_now_ms() + 3000, &(int){0}), 0);
    console_close(&r);
    jail = path_in(dir, "jail");
    assert_int_equal(access(jail, F_OK), -1);

    /* After a clean stop the jail stays until the next start or the delete, which
     * removes the VM dir and with it the jail; the shared base loses only its link. */
    start_vm(&c, &r);
    stop_vm(dir, &r);
    assert_int_equal(access(jail, F_OK), 0);
    assert_int_equal(stat(rootfs, &st), 0);
    assert_int_equal(st.st_nlink, 2);
    assert_int_equal(smolvm_rm_rf(dir, NULL), 0);
    assert_int_equal(stat(rootfs, &st), 0);
    assert_int_equal(st.st_nlink, 1);
    (void)close(lfd);
    assert_no_children();
    unjail_env();
    free(jail);
    free(root);
    free(upper);
    free(dir);
}

/* The realpath of the file a snapshot load opened for drive `id` (the fake's note). */
static const char *opened(json_t *reqs, const char *id)
{
    json_t *q = find_request(reqs, "PUT", "/snapshot/load");

    assert_non_null(q);
    return json_string_value(
        json_object_get(json_object_get(json_object_get(q, "note"), "opened"), id));
}

/* ... is host_path: the same file (jailed, a hard link to it in the chroot). */
static void assert_opened(json_t *reqs, const char *id, const char *host_path)
{
    const char *got = opened(reqs, id);
    struct stat a, b;

    if (!got || stat(got, &a) < 0 || stat(host_path, &b) < 0 || a.st_dev != b.st_dev ||
        a.st_ino != b.st_ino)
        fail_msg("snapshot load opened '%s' for drive %s, not '%s'", got ? got : "(nothing)", id,
                 host_path);
}

/* A clone's own copies of the files a VM's firecracker writes or reads as its own. */
static void clone_files(smolvm_vmm_config *c, const char *dir, const char *src_upper)
{
    char *cfg = path_in(dir, "config.img"), *upper = path_in(dir, "upper.ext4");

    assert_int_equal(smolvm_copy_file(cfgdisk, cfg, 0644, NULL), 0);
    assert_int_equal(smolvm_copy_file(src_upper, upper, 0600, NULL), 0);
    c->dir = dir;
    c->config_disk = cfg; /* freed by the caller */
    c->overlay_disk = upper;
    c->vsock_uds = vsock_path(dir);
}

/* Templates on firecracker (docs/firecracker.md, "Snapshots"): a snapshot taken
 * unjailed and one taken jailed, each restored in other VMs' dirs, unjailed and jailed,
 * after the source VM's dir is gone. Each restored firecracker opens that VM's own
 * drives (by the relative names the snapshot holds), listens on its own vsock socket,
 * and uses its own TAP; the shared memory file is never written, and a jailed snapshot
 * comes out of the jail as root's files. */
static void test_snapshot_clones(void **state)
{
    char *tdir = path_in(tmpdir, "tpl"), *snap = path_in(tdir, "state"),
         *mem = path_in(tdir, "mem");
    char *src_upper = path_in(tmpdir, "tpl-upper.ext4");
    smolvm_error *err = NULL;
    json_t *reqs, *q, *body;
    struct stat st;
    int pass;

    (void)state;
    for (pass = 0; pass < 2; pass++) {
        bool jailed_src = pass == 1;
        char *src = new_vm(jailed_src ? "snap-src-j" : "snap-src");
        char *upper = path_in(src, "upper.ext4");
        smolvm_vmm_config c;
        running r = {.console = -1};
        int lfd = agent_listener(src); /* jailed: linked into the chroot */

        (void)smolvm_rm_rf(tdir, NULL);
        assert_int_equal(mkdir(tdir, 0700), 0);
        base_config(&c, src);
        c.vm_id = "vm-snap-src";
        c.overlay_disk = upper;
        if (jailed_src) {
            jail_env();
        } else {
            /* Unjailed, the TAP is only a name to the fake: network_overrides is checked. */
            c.network = SMOLVM_NET_NAT;
            c.tap_name = "smtap-src";
            c.mac = "52:54:00:12:34:56";
        }
        start_vm(&c, &r);
        {
            smolvm_vmm_snapshot s = {.state_path = snap, .mem_path = mem};

            if (fc->snapshot(src, &s, smolvm_now_ms() + 3000, &err) < 0)
                fail_msg("snapshot: %s", smolvm_error_message(err));
        }
        /* Ours, whoever wrote them: the state private, the memory readable by the jail
         * uid of a clone (its dir is 0700). */
        assert_int_equal(stat(snap, &st), 0);
        assert_int_equal(st.st_uid, getuid());
        assert_int_equal(st.st_mode & 07777, 0600);
        assert_int_equal(stat(mem, &st), 0);
        assert_int_equal(st.st_uid, getuid());
        assert_int_equal(st.st_mode & 07777, 0644);
        assert_int_equal(st.st_size, 256 << 20);
        assert_int_equal(st.st_nlink, 1);
        if (jailed_src) {
            char *left = smolvm_strdupf(
                "%s/jail/fake-firecracker.py/vm-snap-src/root%s/snapshot.mem", src, src);

            assert_int_equal(access(left, F_OK), -1); /* taken out, not copied */
            free(left);
            reqs = requests(src);
            q = find_request(reqs, "PUT", "/snapshot/create");
            body = json_object_get(q, "body");
            /* Written where the jail uid may write: the API socket's dir in the chroot. */
            assert_non_null(strstr(json_string_value(json_object_get(body, "snapshot_path")),
                                   "/snapshot.state"));
            assert_ptr_equal(strstr(json_string_value(json_object_get(body, "mem_file_path")), src),
                             json_string_value(json_object_get(body, "mem_file_path")));
            json_decref(reqs);
        }
        (void)unlink(src_upper);
        assert_int_equal(smolvm_copy_file(upper, src_upper, 0600, NULL), 0);
        assert_int_equal(kill(r.pid, SIGKILL), 0);
        assert_int_equal(wait_child(r.pid, smolvm_now_ms() + 3000, &(int){0}), 0);
        console_close(&r);
        /* Nothing of the source VM is needed any more. */
        (void)close(lfd);
        assert_int_equal(smolvm_rm_rf(src, NULL), 0);
        unjail_env();

        for (int jailed = 0; jailed < 2; jailed++) {
            char *dir;
            smolvm_vmm_config k;
            char line[64];
            int s;

            if (jailed && !jailed_src)
                continue; /* a jailed clone of a NAT snapshot would need a real TAP */
            dir = new_vm(jailed ? "clone-j" : "clone");
            base_config(&k, dir);
            k.vm_id = jailed ? "vm-clone-j" : "vm-clone";
            clone_files(&k, dir, src_upper);
            if (!jailed_src) {
                k.network = SMOLVM_NET_NAT;
                k.tap_name = "smtap-clone";
                k.mac = "52:54:00:12:34:57";
            }
            if (jailed)
                jail_env();
            lfd = agent_listener(dir);
            (void)setenv("FAKE_FC_GUEST_PORTS", "{\"52\": \"cat\"}", 1);

            if (spawn_or_restore(&k, &r, snap, mem, smolvm_now_ms() + 10000, &err) < 0)
                fail_msg("restore (%s snapshot, %s): %s", jailed_src ? "jailed" : "unjailed",
                         jailed ? "jailed" : "unjailed", smolvm_error_message(err));
            assert_string_equal(instance_state(dir), "Running");
            reqs = requests(dir);
            assert_no_violation(reqs);
            assert_null(find_request(reqs, "PUT", "/boot-source"));
            assert_opened(reqs, "rootfs", rootfs);
            assert_opened(reqs, "config", k.config_disk);
            assert_opened(reqs, "overlay", k.overlay_disk);
            q = find_request(reqs, "PUT", "/snapshot/load");
            body = json_object_get(q, "body");
            assert_string_equal(json_string_value(json_object_get(
                                    json_object_get(body, "mem_backend"), "backend_type")),
                                "File");
            if (!jailed_src)
                assert_string_equal(
                    json_string_value(json_object_get(
                        json_object_get(json_object_get(q, "note"), "taps"), "eth0")),
                    "smtap-clone");
            if (jailed) {
                char *root = smolvm_strdupf("%s/jail/fake-firecracker.py/%s/root", dir, k.vm_id);
                char *m = path_in(root, "snapshot.mem");

                assert_string_equal(json_string_value(json_object_get(body, "snapshot_path")),
                                    "/snapshot.state");
                assert_same_file(m, mem); /* linked, not copied */
                free(m);
                free(root);
            }
            json_decref(reqs);
            /* The restored vsock device listens at this VM's socket (jailed: in its
             * chroot). */
            {
                char *dev = jailed ? smolvm_strdupf("%s/jail/fake-firecracker.py/%s/root/%s", dir,
                                                    k.vm_id, SMOLVM_SV_VSOCK)
                                   : strdup(k.vsock_uds);

                assert_int_equal(smolvm_unix_connect(dev, smolvm_now_ms() + 3000, &s, &err), 0);
                free(dev);
            }
            assert_int_equal(write(s, "CONNECT 52\n", 11), 11);
            assert_true(read_until(s, line, sizeof(line), "\n", smolvm_now_ms() + 3000) > 0);
            assert_non_null(strstr(line, "OK "));
            (void)close(s);
            stop_vm(dir, &r);
            assert_null(strstr(r.out, "Linux version")); /* no boot */
            /* The template's memory is still the template's, not given to a jail uid. */
            assert_int_equal(stat(mem, &st), 0);
            assert_int_equal(st.st_uid, getuid());
            assert_int_equal(st.st_mode & 07777, 0644);
            unjail_env();
            (void)close(lfd);
            free((char *)k.config_disk);
            free((char *)k.overlay_disk);
            assert_int_equal(smolvm_rm_rf(dir, NULL), 0);
            assert_int_equal(stat(mem, &st), 0);
            assert_int_equal(st.st_nlink, 1); /* the clone's jail held a link only */
            free(dir);
        }
        free(upper);
        free(src);
    }
    assert_no_children();
    (void)smolvm_rm_rf(tdir, NULL);
    (void)unlink(src_upper);
    free(src_upper);
    free(snap);
    free(mem);
    free(tdir);
}

/* Refused before anything runs, each with what to do; failures after the spawn leave
 * no process and no jail. */
static void test_jailer_errors(void **state)
{
    char *dir = new_vm("jailbad"), *jail = path_in(dir, "jail"), *fcdir = strdup(fake);
    char *upper = path_in(dir, "upper.ext4");
    smolvm_vmm_config c;
    smolvm_error *err = NULL;
    running r = {.console = -1};
    char want[1200];
    int lfd;

    (void)state;
    base_config(&c, dir);
    c.vm_id = "vm-jail-2";
    lfd = agent_listener(dir);
    jail_env();
    (void)unsetenv(SMOLVM_FC_JAILER_UID_ENV);
    assert_int_equal(spawn_vm(&c, &r, smolvm_now_ms() + 5000, &err), SMOLVM_EINVAL);
    assert_err_contains(err, "SMOLVM_JAILER_UID is required");
    err = smolvm_error_free(err);

    (void)setenv(SMOLVM_FC_JAILER_UID_ENV, "0", 1);
    assert_int_equal(spawn_vm(&c, &r, smolvm_now_ms() + 5000, &err), SMOLVM_EINVAL);
    assert_err_contains(err, "SMOLVM_JAILER_UID 0 is root");
    err = smolvm_error_free(err);

    (void)setenv(SMOLVM_FC_JAILER_UID_ENV, "12x", 1);
    assert_int_equal(spawn_vm(&c, &r, smolvm_now_ms() + 5000, &err), SMOLVM_EINVAL);
    assert_err_contains(err, "'12x' is not a number");
    err = smolvm_error_free(err);

    jail_env();
    (void)setenv(SMOLVM_FC_JAILER_GID_ENV, "0", 1);
    assert_int_equal(spawn_vm(&c, &r, smolvm_now_ms() + 5000, &err), SMOLVM_EINVAL);
    assert_err_contains(err, "SMOLVM_JAILER_GID 0 is root");
    err = smolvm_error_free(err);

    /* Our ids may hold '_', the jailer's may not. */
    jail_env();
    c.vm_id = "vm_2";
    assert_int_equal(spawn_vm(&c, &r, smolvm_now_ms() + 5000, &err), SMOLVM_EINVAL);
    assert_err_contains(err, "vm id 'vm_2' is not a valid jailer id");
    err = smolvm_error_free(err);
    c.vm_id = "vm-jail-2";

    (void)setenv(SMOLVM_FC_JAILER_CGROUP_ENV, "/abs", 1);
    assert_int_equal(spawn_vm(&c, &r, smolvm_now_ms() + 5000, &err), SMOLVM_EINVAL);
    assert_err_contains(err, "is not a relative cgroup path");
    err = smolvm_error_free(err);
    (void)unsetenv(SMOLVM_FC_JAILER_CGROUP_ENV);

    /* SMOLVM_JAILER=1: the jailer next to firecracker, as the download installs it. */
    (void)setenv(SMOLVM_FC_JAILER_ENV, "1", 1);
    *strrchr(fcdir, '/') = '\0';
    assert_int_equal(spawn_vm(&c, &r, smolvm_now_ms() + 5000, &err), SMOLVM_EHOST);
    {
        char *canon = realpath(fcdir, NULL);

        assert_non_null(canon);
        (void)snprintf(want, sizeof(want), "no jailer at '%s/jailer'", canon);
        free(canon);
    }
    assert_err_contains(err, want);
    err = smolvm_error_free(err);
    (void)setenv(SMOLVM_FC_JAILER_ENV, "jailer", 1);
    assert_int_equal(spawn_vm(&c, &r, smolvm_now_ms() + 5000, &err), SMOLVM_EINVAL);
    assert_err_contains(err, "must be 1 (the jailer next to firecracker) or an absolute path");
    err = smolvm_error_free(err);
    assert_int_equal(access(jail, F_OK), -1);

    /* A kernel the jail uid cannot read: refused before firecracker would fail on it. */
    jail_env();
    if (getuid() == 0) {
        char *k = path_in(dir, "private-vmlinux");

        write_text(k, "kernel\n");
        assert_int_equal(chmod(k, 0600), 0);
        c.kernel = k;
        assert_int_equal(spawn_vm(&c, &r, smolvm_now_ms() + 5000, &err), SMOLVM_EPERM);
        assert_err_contains(err, "is not readable by the jail's uid 65534");
        err = smolvm_error_free(err);
        assert_int_equal(access(jail, F_OK), -1);
        assert_false(smolvm_pid_find_vmm(dir, SMOLVM_VMM_PIDFILE, &(pid_t){0}, &(uint64_t){0}));
        c.kernel = kernel;
        free(k);

        /* A root attached read-write (no overlay, not disk_read_only): the jail must
         * be able to write it. */
        assert_int_equal(spawn_vm(&c, &r, smolvm_now_ms() + 5000, &err), SMOLVM_EPERM);
        assert_err_contains(err, "is attached read-write but not writable by the jail's uid");
        err = smolvm_error_free(err);
        assert_int_equal(access(jail, F_OK), -1);
    }
    c.overlay_disk = upper;

    /* Firecracker refuses a request: killed, jail removed, its words in the error. */
    (void)setenv("FAKE_FC_FAIL", "PUT /boot-source", 1);
    assert_int_equal(spawn_vm(&c, &r, smolvm_now_ms() + 5000, &err), SMOLVM_EVMM);
    assert_err_contains(err, "injected failure");
    err = smolvm_error_free(err);
    assert_int_equal(access(jail, F_OK), -1);
    (void)unsetenv("FAKE_FC_FAIL");

    /* The jailer exits before firecracker is up (a stand-in that exits at once). */
    (void)setenv(SMOLVM_FC_JAILER_ENV, "/bin/false", 1);
    assert_int_equal(spawn_vm(&c, &r, smolvm_now_ms() + 5000, &err), SMOLVM_EVMM);
    err = smolvm_error_free(err);
    assert_int_equal(access(jail, F_OK), -1);
    assert_no_children();
    (void)close(lfd);
    unjail_env();
    free(upper);
    free(fcdir);
    free(jail);
    free(dir);
}

/* network "nat" jailed: the TAP the networking module made as root is given to the
 * jail uid, or jailed firecracker could not attach to it. In a network namespace of
 * its own (a child process), as root only. */
static void test_jailer_tap(void **state)
{
    pid_t child;
    int status = 0;

    (void)state;
    if (getuid() != 0) {
        print_message("skipped: creating a tap needs root\n");
        return;
    }
    child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        char *dir, *upper;
        smolvm_vmm_config c;
        running r = {.console = -1};
        smolvm_error *err = NULL;
        int owned;

        if (unshare(CLONE_NEWNET) < 0)
            _exit(77);
        if (sh("ip tuntap add dev fcjail0 mode tap") != 0)
            _exit(77);
        dir = new_vm("jailtap");
        upper = path_in(dir, "upper.ext4");
        base_config(&c, dir);
        c.vm_id = "vm-jail-3";
        c.overlay_disk = upper;
        c.network = SMOLVM_NET_NAT;
        c.tap_name = "fcjail0";
        c.mac = "52:54:00:12:34:56";
        c.vsock_uds = NULL; /* not the point here */
        jail_env();
        if (spawn_vm(&c, &r, smolvm_now_ms() + 5000, &err) < 0) {
            fprintf(stderr, "spawn: %s\n", smolvm_error_message(err));
            _exit(3);
        }
        owned = sh("ip -d link show fcjail0 | grep -qE 'user (nobody|65534) group "
                   "(nogroup|nobody|65534)'") == 0;
        (void)fc->quit(dir, smolvm_now_ms() + 3000, NULL);
        (void)waitpid(r.pid, NULL, 0);
        _exit(owned ? 0 : 4);
    }
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) == 77) {
        print_message("skipped: no network namespace or tap here\n");
        return;
    }
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* The fake jailer refuses what the real one (or smolvm's use of it) would not take. */
static void test_jailer_contract_checks(void **state)
{
    char *base = path_in(tmpdir, "jailbase");
    struct {
        const char *args, *fault;
    } bad[] = {
        {"--id j1 --exec-file F --gid 7 --chroot-base-dir B --cgroup-version 2 -- --api-sock "
         "/s",
         "missing required argument '--uid'"},
        {"--id j_1 --exec-file F --uid 7 --gid 7 --chroot-base-dir B --cgroup-version 2 -- "
         "--api-sock /s",
         "invalid id 'j_1'"},
        {"--id j1 --exec-file /bin/true --uid 7 --gid 7 --chroot-base-dir B --cgroup-version 2 "
         "-- --api-sock /s",
         "must include 'firecracker'"},
        {"--id j1 --exec-file F --uid x --gid 7 --chroot-base-dir B --cgroup-version 2 -- "
         "--api-sock /s",
         "--uid 'x' is not a number"},
        {"--id j1 --exec-file F --uid 7 --gid 7 --chroot-base-dir rel --cgroup-version 2 -- "
         "--api-sock /s",
         "chroot base 'rel' is not absolute"},
        {"--id j1 --exec-file F --uid 7 --gid 7 --chroot-base-dir B --cgroup-version 1 -- "
         "--api-sock /s",
         "--cgroup-version 2"},
        {"--id j1 --exec-file F --uid 7 --gid 7 --chroot-base-dir B --cgroup-version 2 "
         "--daemonize -- --api-sock /s",
         "--daemonize"},
        {"--id j1 --exec-file F --uid 7 --gid 7 --chroot-base-dir B --cgroup-version 2 -- "
         "--id j1 --api-sock /s",
         "the jailer passes it"},
        {"--id j1 --exec-file F --uid 7 --gid 7 --chroot-base-dir B --cgroup-version 2 -- "
         "--api-sock s",
         "an absolute --api-sock"},
        {"--id j1 --exec-file F --uid 7 --gid 7 --chroot-base-dir B --cgroup-version 2 -- "
         "--api-sock /no/such/dir/s",
         "does not exist in the jail"},
    };
    size_t i;

    (void)state;
    for (i = 0; i < SMOLVM_ARRAY_SIZE(bad); i++) {
        /* F: the fake firecracker, B: a base dir. */
        char args[1024], *o = args;
        const char *s;

        for (s = bad[i].args; *s && o < args + sizeof(args) - 600; s++) {
            if ((*s == 'F' || *s == 'B') && s[1] == ' ' && s[-1] == ' ')
                o += sprintf(o, "'%s'", *s == 'F' ? fake : base);
            else
                *o++ = *s;
        }
        *o = '\0';
        if (sh("out=$('%s' %s 2>&1) && exit 1; echo \"$out\" | grep -qF -- \"%s\"", fake_jailer,
               args, bad[i].fault) != 0)
            fail_msg("fake jailer did not refuse with '%s': %s", bad[i].fault, args);
    }
    (void)smolvm_rm_rf(base, NULL);
    free(base);
}

/* ---------------------------------------------------------------- the supervisor */

/* smolvm-supervisor with backend firecracker, through the fake: the launch report, the
 * agent over the hybrid vsock (the fake connects the guest's agent, the real one built
 * for the host, to <dir>/vsock.sock_1024), readiness, commands, power-off, and hostile
 * or failing guests. The library's start cannot run here (it refuses firecracker
 * without KVM), so the tests drive the supervisor from its spec, as the library does. */

static pid_t sv_pid;
static bool sv_overlay; /* the VM gets an upper layer of its own (a read-only base) */
static const smolvm_sv_restore *sv_restore; /* the VM continues from this snapshot */

typedef struct sv_vm {
    char *dir;
    pid_t vmm;
    uint64_t vmm_start;
    char *sock; /* <dir>/agent.sock */
} sv_vm;

/* Write the spec for dir (from new_vm, taken over) and start the supervisor (our child;
 * it dies with us), then read its report: "ok <vmm pid> <start time>" or
 * "error <code> <message>" into report. */
static void sv_launch(sv_vm *v, char *dir, smolvm_sv_transport transport, char *report, size_t size)
{
    smolvm_sv_spec spec;
    smolvm_error *err = NULL;
    char *log, *upper;
    int st[2];

    v->dir = dir;
    v->sock = path_in(v->dir, SMOLVM_SV_SOCK);
    log = path_in(v->dir, SMOLVM_SV_LOG);
    memset(&spec, 0, sizeof(spec));
    spec.vm_id = (char *)"vm-fc-sv";
    spec.dir = v->dir;
    spec.state_dir = statedir;
    spec.backend = SMOLVM_BACKEND_FIRECRACKER;
    spec.transport = transport;
    spec.console_max = SMOLVM_CONSOLE_MAX_DEFAULT;
    base_config(&spec.vmm, v->dir);
    spec.vmm.vm_id = spec.vm_id;
    upper = sv_overlay ? path_in(v->dir, "upper.ext4") : NULL;
    spec.vmm.overlay_disk = upper;
    if (sv_restore)
        spec.restore = *sv_restore;
    /* As root the supervisor jails firecracker by default (test_sv_jailed_by_default);
     * the other tests run it unjailed. */
    (void)setenv(SMOLVM_FC_JAILER_ENV, "0", 0);
    if (smolvm_sv_spec_write(&spec, &err) < 0)
        fail_msg("spec: %s", smolvm_error_message(err));
    free(upper);

    assert_int_equal(pipe2(st, O_CLOEXEC), 0);
    sv_pid = fork();
    assert_true(sv_pid >= 0);
    if (sv_pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
        int w = fcntl(st[1], F_DUPFD, 3); /* not close-on-exec: the status fd */
        char n[16];

        if (fd < 0 || null < 0 || w < 0 || dup2(null, 0) < 0 || dup2(fd, 1) < 0 ||
            dup2(fd, 2) < 0 || prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
            _exit(127);
        (void)snprintf(n, sizeof(n), "%d", w);
        execl(SMOLVM_SUPERVISOR_BIN, "smolvm-supervisor", "--status-fd", n, v->dir, (char *)NULL);
        _exit(127);
    }
    (void)close(st[1]);
    if (read_until(st[0], report, size, "\n", smolvm_now_ms() + 15000) <= 0)
        fail_msg("no report from the supervisor (see %s)", log);
    (void)close(st[0]);
    free(log);
    if (strncmp(report, "ok ", 3) == 0) {
        long long pid = 0;
        unsigned long long start = 0;

        assert_int_equal(sscanf(report, "ok %lld %llu", &pid, &start), 2);
        v->vmm = (pid_t)pid;
        v->vmm_start = start;
    }
}

static void sv_free(sv_vm *v)
{
    free(v->dir);
    free(v->sock);
}

/* The supervisor ended, on its own, within the deadline, with status 0. */
static void sv_wait_exit(int64_t deadline)
{
    int status = 0;

    if (wait_child(sv_pid, deadline, &status) < 0)
        fail_msg("the supervisor did not exit in time");
    sv_pid = 0;
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static json_t *sv_status(sv_vm *v)
{
    smolvm_agent *a = NULL;
    smolvm_error *err = NULL;
    json_t *reply = NULL;

    if (smolvm_agent_connect(&a, v->sock, false, smolvm_now_ms() + 3000, &err) < 0 ||
        smolvm_agent_call(&reply, a, json_pack("{s:s}", "op", "status"), smolvm_now_ms() + 3000,
                          &err) < 0)
        fail_msg("status: %s", smolvm_error_message(err));
    smolvm_agent_free(a);
    return reply;
}

typedef struct cmd_result {
    char out[2][4096];
    size_t len[2];
    long long exit_code;
} cmd_result;

/* Run cmd through the supervisor and the agent; input (or NULL) is its stdin. */
static int run_cmd(smolvm_agent *a, const char *cmd, const char *input, cmd_result *res,
                   smolvm_error **err)
{
    smolvm_agent_stream *st = NULL;
    smolvm_agent_event ev;
    int64_t deadline = smolvm_now_ms() + 10000;
    bool replied = false;
    int r;

    memset(res, 0, sizeof(*res));
    res->exit_code = -1;
    r = smolvm_agent_request(
        &st, a, json_pack("{s:s, s:s, s:b}", "op", "exec", "cmd", cmd, "stdin", input != NULL), 0,
        err);
    while (r == 0 && (r = smolvm_agent_next(&ev, st, deadline, err)) == 0) {
        if (ev.kind == SMOLVM_AGENT_EV_REPLY && !replied) {
            json_t *w = json_object_get(ev.json, "window");

            replied = true;
            assert_true(json_integer_value(json_object_get(ev.json, "pid")) > 0);
            if (input) {
                smolvm_agent_set_send_window(st, (uint64_t)json_integer_value(w));
                if ((r = smolvm_agent_write(st, 0, input, strlen(input), deadline, err)) < 0 ||
                    (r = smolvm_agent_eof(st, 0, err)) < 0)
                    break;
            }
        } else if (ev.kind == SMOLVM_AGENT_EV_DATA && (ev.fd == 1 || ev.fd == 2)) {
            size_t *len = &res->len[ev.fd - 1], k = ev.len;

            if (k > sizeof(res->out[0]) - 1 - *len)
                k = sizeof(res->out[0]) - 1 - *len;
            memcpy(res->out[ev.fd - 1] + *len, ev.data, k);
            *len += k;
            res->out[ev.fd - 1][*len] = '\0';
            if ((r = smolvm_agent_grant(st, (uint32_t)ev.len, err)) < 0)
                break;
        } else if (ev.kind == SMOLVM_AGENT_EV_EXIT) {
            res->exit_code = json_integer_value(json_object_get(ev.json, "exit_code"));
        }
        if (ev.fin)
            break;
    }
    smolvm_agent_stream_free(st);
    return r;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

    return x < y ? -1 : x > y;
}

/* The agent transport end to end: ready when the agent's hello arrives over vsock,
 * commands with output, exit code and stdin, a status, then power-off through the
 * agent, which ends the fake firecracker and with it the supervisor. */
static void test_sv_agent(void **state)
{
    sv_vm v = {0};
    smolvm_agent *a = NULL;
    smolvm_error *err = NULL;
    char report[256], *agent_cmd, *rec, *dir;
    cmd_result res;
    json_t *hello, *reply;
    int64_t t0, rtt[21];
    smolvm_sv_exit ex;
    size_t i;

    (void)state;
    dir = new_vm("sv-agent");
    rec = path_in(tmpdir, "sv-agent-rec");
    assert_int_equal(smolvm_mkdir_p(rec, 0700, NULL), 0);
    agent_cmd = smolvm_strdupf("'%s' --record '%s' --cwd '%s'", SMOLVM_AGENT_HOST, rec, rec);
    assert_non_null(agent_cmd);
    (void)setenv("FAKE_FC_AGENT", agent_cmd, 1);
    t0 = smolvm_now_ms();
    sv_launch(&v, dir, SMOLVM_SV_AGENT, report, sizeof(report));
    if (!v.vmm)
        fail_msg("supervisor: %s", report);
    /* The report names the VMM: the fake, alive, its start time, its pidfile. */
    assert_true(smolvm_pid_alive(v.vmm, v.vmm_start));
    {
        pid_t p;
        uint64_t s;

        assert_true(smolvm_pid_find_vmm(v.dir, SMOLVM_VMM_PIDFILE, &p, &s));
        assert_int_equal(p, v.vmm);
        assert_true(s == v.vmm_start);
    }

    if (smolvm_agent_connect(&a, v.sock, true, smolvm_now_ms() + 10000, &err) < 0)
        fail_msg("connect: %s", smolvm_error_message(err));
    print_message("supervisor launch to agent ready (fake, 30 ms boot): %lld ms\n",
                  (long long)(smolvm_now_ms() - t0));
    hello = smolvm_agent_hello(a);
    assert_true(json_is_true(json_object_get(hello, "ready")));
    assert_string_equal(json_string_value(json_object_get(hello, "vm")), "vm-fc-sv");
    assert_string_equal(json_string_value(json_object_get(hello, "transport")), "agent");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(hello, "agent"), "agent")),
        "smolvm-agent 0.2.0");

    /* A command: its output on both streams and its exit code. */
    assert_int_equal(run_cmd(a, "echo out; echo err >&2; exit 3", NULL, &res, &err), 0);
    assert_string_equal(res.out[0], "out\n");
    assert_string_equal(res.out[1], "err\n");
    assert_int_equal(res.exit_code, 3);
    /* stdin, streamed in. */
    assert_int_equal(run_cmd(a, "tr a-z A-Z", "hello over vsock\n", &res, &err), 0);
    assert_string_equal(res.out[0], "HELLO OVER VSOCK\n");
    assert_int_equal(res.exit_code, 0);
    /* Its cwd is the one the agent was given: it runs where the "guest" is. */
    assert_int_equal(run_cmd(a, "pwd", NULL, &res, &err), 0);
    assert_true(strncmp(res.out[0], rec, strlen(rec)) == 0);

    /* Round trips of `true` (client -> supervisor -> fake's vsock -> agent -> back). */
    for (i = 0; i < SMOLVM_ARRAY_SIZE(rtt); i++) {
        int64_t s = smolvm_now_ms();

        assert_int_equal(run_cmd(a, "true", NULL, &res, &err), 0);
        assert_int_equal(res.exit_code, 0);
        rtt[i] = smolvm_now_ms() - s;
    }
    qsort(rtt, SMOLVM_ARRAY_SIZE(rtt), sizeof(rtt[0]), cmp_i64);
    print_message("exec 'true' through supervisor + vsock + host agent: median %lld ms, "
                  "max %lld ms (%zu runs)\n",
                  (long long)rtt[SMOLVM_ARRAY_SIZE(rtt) / 2],
                  (long long)rtt[SMOLVM_ARRAY_SIZE(rtt) - 1], SMOLVM_ARRAY_SIZE(rtt));

    /* The agent dies mid-command: that stream ends with the reason, the supervisor
     * stays; the guest restarts its agent, which connects again over vsock and serves
     * new commands. */
    {
        smolvm_agent_stream *st = NULL;
        smolvm_agent_event ev;
        long agent_pid;
        int64_t dl = smolvm_now_ms() + 10000;
        int r;

        assert_int_equal(run_cmd(a, "echo $PPID", NULL, &res, &err), 0);
        agent_pid = strtol(res.out[0], NULL, 10);
        assert_true(agent_pid > 1);
        /* cat with stdin from the agent: it ends when the agent does, nothing lingers. */
        assert_int_equal(smolvm_agent_request(
                             &st, a,
                             json_pack("{s:s, s:s, s:b}", "op", "exec", "cmd", "cat", "stdin", 1),
                             0, &err),
                         0);
        assert_int_equal(smolvm_agent_next(&ev, st, dl, &err), 0);
        assert_int_equal(ev.kind, SMOLVM_AGENT_EV_REPLY);
        assert_int_equal(kill((pid_t)agent_pid, SIGKILL), 0);
        while ((r = smolvm_agent_next(&ev, st, dl, &err)) == 0 && !ev.fin)
            ;
        assert_int_equal(r, SMOLVM_EIO);
        assert_err_contains(err, "the agent channel was lost: connection closed");
        err = smolvm_error_free(err);
        smolvm_agent_stream_free(st);
        assert_int_equal(waitpid(sv_pid, NULL, WNOHANG), 0);
        /* Clients get no event for the agent's return: its status is asked again, a
         * bounded number of times. */
        for (;;) {
            struct timespec ts = {0, 20 * 1000 * 1000};
            bool back;

            reply = sv_status(&v);
            back = json_is_true(json_object_get(reply, "agent"));
            json_decref(reply);
            if (back)
                break;
            if (smolvm_remaining_ms(dl) == 0)
                fail_msg("the agent did not connect again");
            (void)nanosleep(&ts, NULL);
        }
        assert_int_equal(run_cmd(a, "echo back", NULL, &res, &err), 0);
        assert_string_equal(res.out[0], "back\n");
        assert_true(file_contains(v.dir, SMOLVM_SV_LOG, "agent channel closed: connection closed"));
    }

    reply = sv_status(&v);
    assert_string_equal(json_string_value(json_object_get(reply, "state")), "ready");
    assert_true(json_is_true(json_object_get(reply, "agent")));
    assert_int_equal(json_integer_value(json_object_get(reply, "vmm_pid")), v.vmm);
    assert_non_null(strstr(json_string_value(json_object_get(reply, "milestone")), "'agent'"));
    json_decref(reply);

    /* Power-off: the supervisor asks the agent, the agent signals the guest's init, the
     * guest powers off, firecracker exits, the supervisor records it and exits. */
    assert_int_equal(smolvm_agent_call(&reply, a, json_pack("{s:s}", "op", "poweroff"),
                                       smolvm_now_ms() + 3000, &err),
                     0);
    json_decref(reply);
    t0 = smolvm_now_ms();
    sv_wait_exit(smolvm_now_ms() + 10000);
    print_message("poweroff to supervisor exit: %lld ms\n", (long long)(smolvm_now_ms() - t0));
    assert_false(smolvm_pid_alive(v.vmm, v.vmm_start));
    {
        char *p = path_in(rec, "poweroff");

        assert_int_equal(access(p, F_OK), 0); /* the agent's hook ran, recorded only */
        free(p);
    }
    assert_int_equal(smolvm_sv_exit_read(&ex, v.dir, &err), 0);
    assert_int_equal(ex.exit_code, 0);
    assert_int_equal(ex.signal, 0);
    assert_true(file_contains(v.dir, SMOLVM_VMM_CONSOLE_LOG, "smolvm: power off (Terminated)"));
    assert_true(file_contains(v.dir, SMOLVM_VMM_CONSOLE_LOG, "smolvm: ready "));
    assert_true(file_contains(v.dir, SMOLVM_SV_LOG, "guest ready after"));
    /* The client's connection says the VM is gone. */
    assert_true(run_cmd(a, "true", NULL, &res, &err) < 0);
    err = smolvm_error_free(err);
    {
        json_t *reqs = requests(v.dir);

        assert_no_violation(reqs);
        assert_non_null(find_request(reqs, "PUT", "/vsock"));
        json_decref(reqs);
    }
    smolvm_agent_free(a);
    free(agent_cmd);
    free(rec);
    sv_free(&v);
}

/* transport "ssh": ready on the init's "smolvm: ready" line on the serial console; no
 * agent, so commands are refused with the reason; power-off is Ctrl-Alt-Del. */
/* As root, with SMOLVM_JAILER unset, firecracker runs jailed as the uid the supervisor
 * took for its VMM; without a jailer next to firecracker that is an error that says
 * how to run unjailed, and nothing is left running. */
/* A template and its clone through the supervisor, as the library makes them
 * (docs/templates.md): the snapshot op writes the state and firecracker's memory file
 * into the template's dir; a second supervisor, in another dir with a copy of the
 * upper disk, continues from them without a boot. Firecracker resets vsock on restore,
 * so the guest's agent connects again and says hello; the clone takes its identity
 * (the library's hostname, the host's entropy and clock) before it counts as ready,
 * then runs commands. Unjailed, and jailed (as root) with the VMM's own uid. */
static void test_sv_template(void **state)
{
    const char *why = NULL;
    int pass;

    (void)state;
    for (pass = 0; pass < 2; pass++) {
        bool jailed = pass == 1;
        sv_vm v = {0}, k = {0};
        smolvm_agent *a = NULL;
        smolvm_error *err = NULL;
        char report[512], *agent_cmd, *rec, *krec, *tdir, *state_path, *mem_path, *upper, *kdir,
            *kupper, *idpath;
        json_t *reply = NULL, *id, *identity;
        cmd_result res;
        smolvm_sv_restore rs;
        struct stat st;

        if (jailed && !smolvm_confine_uid_possible(&why)) {
            print_message("jailed pass skipped: %s\n", why);
            break;
        }
        unjail_env();
        (void)setenv(SMOLVM_FC_JAILER_ENV, jailed ? fake_jailer : "0", 1);
        tdir = path_in(tmpdir, jailed ? "sv-tpl-j" : "sv-tpl");
        rec = path_in(tmpdir, jailed ? "sv-tpl-rec-j" : "sv-tpl-rec");
        krec = path_in(tmpdir, jailed ? "sv-clone-rec-j" : "sv-clone-rec");
        assert_int_equal(smolvm_mkdir_p(tdir, 0700, NULL), 0);
        assert_int_equal(smolvm_mkdir_p(rec, 0777, NULL), 0);
        assert_int_equal(smolvm_mkdir_p(krec, 0777, NULL), 0);
        /* Jailed, the agent runs as the jail's uid: its record dirs must let it write. */
        assert_int_equal(chmod(rec, 0777), 0);
        assert_int_equal(chmod(krec, 0777), 0);

        /* The template's VM: booted, then snapshotted into tdir. (new_vm resets the
         * fake's switches: before FAKE_FC_AGENT.) */
        v.dir = new_vm(jailed ? "sv-src-j" : "sv-src");
        agent_cmd = smolvm_strdupf("'%s' --record '%s' --cwd '%s'", SMOLVM_AGENT_HOST, rec, rec);
        (void)setenv("FAKE_FC_AGENT", agent_cmd, 1);
        free(agent_cmd);
        sv_overlay = true;
        sv_launch(&v, v.dir, SMOLVM_SV_AGENT, report, sizeof(report));
        if (!v.vmm)
            fail_msg("supervisor: %s", report);
        if (smolvm_agent_connect(&a, v.sock, true, smolvm_now_ms() + 10000, &err) < 0) {
            char *cmd =
                smolvm_strdupf("tail -n 5 '%s/%s' '%s/vmm.log' >&2", v.dir, SMOLVM_SV_LOG, v.dir);

            (void)!system(cmd);
            fail_msg("connect (%s): %s", jailed ? "jailed" : "unjailed", smolvm_error_message(err));
        }
        assert_int_equal(run_cmd(a, "echo template", NULL, &res, &err), 0);
        assert_string_equal(res.out[0], "template\n");
        if (smolvm_agent_call(&reply, a, json_pack("{s:s, s:s}", "op", "snapshot", "dir", tdir),
                              smolvm_now_ms() + 10000, &err) < 0)
            fail_msg("snapshot: %s", smolvm_error_message(err));
        assert_string_equal(json_string_value(json_object_get(reply, "memory")), "file");
        assert_true(json_integer_value(json_object_get(reply, "state_bytes")) > 0);
        smolvm_agent_free(a);
        a = NULL;
        state_path = path_in(tdir, "state");
        mem_path = path_in(tdir, "mem");
        assert_int_equal(stat(state_path, &st), 0);
        assert_int_equal(st.st_uid, getuid());
        assert_int_equal(stat(mem_path, &st), 0);
        assert_int_equal(st.st_size, 256 << 20);
        /* The template's VM goes; its files are not needed by the clone. */
        upper = path_in(v.dir, "upper.ext4");
        kdir = path_in(tmpdir, jailed ? "sv-clone-j" : "sv-clone");
        assert_int_equal(smolvm_mkdir_p(kdir, 0700, NULL), 0);
        kupper = path_in(kdir, "upper.ext4");
        assert_int_equal(smolvm_copy_file(upper, kupper, 0600, NULL), 0);
        /* As the library does after a snapshot: the VM resumed, and (the snapshot reset
         * vsock) its agent back, so the stop's poweroff reaches it rather than the
         * closed channel (which would leave the supervisor its 10 s grace, then a kill). */
        {
            smolvm_agent *c = NULL;
            json_t *ok = NULL;
            int64_t dl = smolvm_now_ms() + 10000;

            if (smolvm_agent_connect(&c, v.sock, false, smolvm_now_ms() + 3000, &err) < 0 ||
                smolvm_agent_call(&ok, c, json_pack("{s:s}", "op", "resume"),
                                  smolvm_now_ms() + 3000, &err) < 0)
                fail_msg("resume: %s", smolvm_error_message(err));
            json_decref(ok);
            smolvm_agent_free(c);
            for (;;) {
                struct timespec ts = {0, 20 * 1000 * 1000};
                json_t *st_reply = sv_status(&v);
                bool back = json_is_true(json_object_get(st_reply, "agent"));

                json_decref(st_reply);
                if (back)
                    break;
                if (smolvm_remaining_ms(dl) == 0)
                    fail_msg("the template's agent did not connect again after the resume");
                (void)nanosleep(&ts, NULL);
            }
        }
        (void)kill(sv_pid, SIGTERM);
        sv_wait_exit(smolvm_now_ms() + 10000);
        assert_int_equal(smolvm_rm_rf(v.dir, NULL), 0);

        /* The clone. */
        free(new_vm(jailed ? "sv-clone-j" : "sv-clone")); /* its request log */
        agent_cmd = smolvm_strdupf("'%s' --record '%s' --cwd '%s'", SMOLVM_AGENT_HOST, krec, krec);
        (void)setenv("FAKE_FC_AGENT", agent_cmd, 1);
        free(agent_cmd);
        identity = json_pack("{s:s}", "hostname", "vm-fc-clone");
        rs = (smolvm_sv_restore){
            .set = true,
            .state = state_path,
            .mem = mem_path,
            .mem_private = true,
            .agent = json_object_get(reply, "agent"),
            .next_stream = (uint32_t)json_integer_value(json_object_get(reply, "next_stream")),
            .identity = identity};
        sv_restore = &rs;
        sv_launch(&k, kdir, SMOLVM_SV_AGENT, report, sizeof(report));
        sv_restore = NULL;
        sv_overlay = false;
        if (!k.vmm)
            fail_msg("clone's supervisor: %s", report);
        if (smolvm_agent_connect(&a, k.sock, true, smolvm_now_ms() + 10000, &err) < 0)
            fail_msg("connect to the clone: %s", smolvm_error_message(err));
        /* Ready only with its identity applied by the (reconnected) agent. */
        idpath = path_in(krec, "identity.json");
        id = json_load_file(idpath, 0, NULL);
        assert_non_null(id);
        assert_string_equal(json_string_value(json_object_get(id, "hostname")), "vm-fc-clone");
        assert_int_equal(json_integer_value(json_object_get(id, "entropy_len")), 64);
        assert_true(json_is_true(json_object_get(id, "has_time")));
        assert_true(llabs((long long)json_integer_value(json_object_get(id, "time_ms")) -
                          (long long)smolvm_wall_ms()) < 10000);
        json_decref(id);
        assert_int_equal(run_cmd(a, "echo clone", NULL, &res, &err), 0);
        assert_string_equal(res.out[0], "clone\n");
        {
            json_t *reqs = requests(kdir);
            json_t *q;

            assert_no_violation(reqs);
            assert_null(find_request(reqs, "PUT", "/boot-source")); /* no boot */
            q = find_request(reqs, "PUT", "/snapshot/load");
            assert_non_null(q);
            assert_opened(reqs, "overlay", kupper);
            json_decref(reqs);
        }
        assert_false(file_contains(kdir, SMOLVM_VMM_CONSOLE_LOG, "smolvm: init "));
        smolvm_agent_free(a);
        (void)kill(sv_pid, SIGTERM);
        sv_wait_exit(smolvm_now_ms() + 10000);
        assert_false(smolvm_pid_alive(k.vmm, k.vmm_start));
        json_decref(identity);
        json_decref(reply);
        free(idpath);
        free(upper);
        free(kupper);
        free(state_path);
        free(mem_path);
        (void)smolvm_rm_rf(tdir, NULL);
        free(tdir);
        free(rec);
        free(krec);
        sv_free(&v);
        sv_free(&k);
    }
    unjail_env();
    assert_no_children();
}

static void test_sv_jailed_by_default(void **state)
{
    sv_vm v = {0};
    smolvm_agent *a = NULL;
    smolvm_error *err = NULL;
    smolvm_fc_jail j;
    char report[512], env[8192], *dir, *p, *environ_path;
    const char *why = NULL;
    cmd_result res;
    size_t n = 0;
    int fd;
    unsigned long uid;

    (void)state;
    if (!smolvm_confine_uid_possible(&why)) {
        print_message("skipped: %s\n", why);
        skip();
    }
    /* The library's rule, unset: jailed when the VMM has a uid of its own... */
    dir = new_vm("jail-default");
    unjail_env();
    assert_int_equal(smolvm_fc_jail_config(&j, fake, "vm-x", dir, 0, &err), 0);
    assert_null(j.jailer); /* no uid of its own (not root): not jailed */
    smolvm_fc_jail_done(&j);
    assert_true(smolvm_fc_jail_config(&j, fake, "vm-x", dir, SMOLVM_VMM_UID_BASE, &err) < 0);
    assert_err_contains(err, "as root firecracker runs jailed");
    assert_err_contains(err, SMOLVM_FC_JAILER_ENV "=0 runs it unjailed");
    err = smolvm_error_free(err);
    smolvm_fc_jail_done(&j);
    (void)setenv(SMOLVM_FC_JAILER_ENV, "0", 1);
    assert_int_equal(smolvm_fc_jail_config(&j, fake, "vm-x", dir, SMOLVM_VMM_UID_BASE, &err), 0);
    assert_null(j.jailer);
    smolvm_fc_jail_done(&j);

    /* ...and through the supervisor: the jailer is given the VMM's uid and gid. */
    (void)setenv(SMOLVM_FC_JAILER_ENV, fake_jailer, 1);
    (void)setenv("FAKE_FC_AGENT", SMOLVM_AGENT_HOST, 1);
    sv_overlay = true; /* the base image is shared: read-only to the jail uid */
    sv_launch(&v, dir, SMOLVM_SV_AGENT, report, sizeof(report));
    sv_overlay = false;
    if (!v.vmm)
        fail_msg("supervisor: %s", report);
    environ_path = smolvm_strdupf("/proc/%ld/environ", (long)v.vmm);
    fd = open(environ_path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    for (ssize_t k; n < sizeof(env) - 1 && (k = read(fd, env + n, sizeof(env) - 1 - n)) > 0;)
        n += (size_t)k;
    (void)close(fd);
    env[n] = '\0';
    for (p = env; p < env + n && strncmp(p, "FAKE_FC_UID=", 12) != 0; p += strlen(p) + 1)
        ;
    assert_true(p < env + n);
    uid = strtoul(p + 12, NULL, 10);
    assert_true(uid >= SMOLVM_VMM_UID_BASE && uid < SMOLVM_VMM_UID_BASE + SMOLVM_VMM_UID_COUNT);
    if (smolvm_agent_connect(&a, v.sock, true, smolvm_now_ms() + 10000, &err) < 0)
        fail_msg("connect: %s", smolvm_error_message(err));
    assert_int_equal(run_cmd(a, "echo jailed", NULL, &res, &err), 0);
    assert_string_equal(res.out[0], "jailed\n");
    smolvm_agent_free(a);
    (void)kill(sv_pid, SIGTERM);
    sv_wait_exit(smolvm_now_ms() + 10000);
    assert_false(smolvm_pid_alive(v.vmm, v.vmm_start));
    free(environ_path);
    sv_free(&v);
}

static void test_sv_ssh(void **state)
{
    sv_vm v = {0};
    smolvm_agent *a = NULL;
    smolvm_error *err = NULL;
    char report[256];
    cmd_result res;
    json_t *hello, *reply;

    (void)state;
    sv_launch(&v, new_vm("sv-ssh"), SMOLVM_SV_SSH, report, sizeof(report));
    if (!v.vmm)
        fail_msg("supervisor: %s", report);
    if (smolvm_agent_connect(&a, v.sock, true, smolvm_now_ms() + 10000, &err) < 0)
        fail_msg("connect: %s", smolvm_error_message(err));
    hello = smolvm_agent_hello(a);
    assert_true(json_is_true(json_object_get(hello, "ready")));
    assert_string_equal(json_string_value(json_object_get(hello, "transport")), "ssh");
    assert_true(json_is_null(json_object_get(hello, "agent")));
    assert_int_equal(run_cmd(a, "true", NULL, &res, &err), SMOLVM_ESTATE);
    assert_err_contains(err, "this vm has no agent (its transport is 'ssh')");
    err = smolvm_error_free(err);
    reply = sv_status(&v);
    assert_non_null(strstr(json_string_value(json_object_get(reply, "milestone")), "'ready'"));
    json_decref(reply);
    assert_int_equal(smolvm_agent_call(&reply, a, json_pack("{s:s}", "op", "poweroff"),
                                       smolvm_now_ms() + 3000, &err),
                     0);
    json_decref(reply);
    sv_wait_exit(smolvm_now_ms() + 10000);
    assert_false(smolvm_pid_alive(v.vmm, v.vmm_start));
    assert_true(file_contains(v.dir, SMOLVM_VMM_CONSOLE_LOG, "smolvm: power off (Interrupt)"));
    {
        json_t *reqs = requests(v.dir);

        assert_no_violation(reqs);
        assert_non_null(find_request(reqs, "PUT", "/actions")); /* SendCtrlAltDel */
        json_decref(reqs);
    }
    smolvm_agent_free(a);
    sv_free(&v);
}

/* A raw client: HELLO asking to wait for ready, then the frames until a GOAWAY, whose
 * code and message are returned. */
static int raw_hello(const char *sock)
{
    static const char hello[] = "{\"version\":1,\"client\":\"raw\",\"ready\":true}";
    smolvm_agent_header h = {sizeof(hello) - 1, 0, SMOLVM_AGENT_HELLO, 0, 0};
    uint8_t buf[SMOLVM_AGENT_HEADER_SIZE + sizeof(hello)];
    smolvm_error *err = NULL;
    int fd = -1;

    if (smolvm_unix_connect(sock, smolvm_now_ms() + 3000, &fd, &err) < 0)
        fail_msg("connect: %s", smolvm_error_message(err));
    smolvm_agent_header_encode(buf, &h);
    memcpy(buf + SMOLVM_AGENT_HEADER_SIZE, hello, sizeof(hello) - 1);
    assert_int_equal(write(fd, buf, SMOLVM_AGENT_HEADER_SIZE + sizeof(hello) - 1),
                     (ssize_t)(SMOLVM_AGENT_HEADER_SIZE + sizeof(hello) - 1));
    return fd;
}

/* The frames of a stream of bytes; the first GOAWAY's JSON (NULL: none). */
static json_t *find_goaway(const uint8_t *data, size_t len)
{
    size_t off = 0;

    while (len - off >= SMOLVM_AGENT_HEADER_SIZE) {
        smolvm_agent_header h;

        if (smolvm_agent_header_decode(data + off, &h, NULL) < 0 ||
            len - off - SMOLVM_AGENT_HEADER_SIZE < h.length)
            return NULL;
        if (h.type == SMOLVM_AGENT_GOAWAY)
            return json_loadb((const char *)data + off + SMOLVM_AGENT_HEADER_SIZE, h.length, 0,
                              NULL);
        off += SMOLVM_AGENT_HEADER_SIZE + h.length;
    }
    return NULL;
}

static json_t *raw_goaway(int fd, int64_t deadline)
{
    static uint8_t buf[65536];
    size_t len = 0;

    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        json_t *j;
        ssize_t n;

        if ((j = find_goaway(buf, len)))
            return j;
        if (len == sizeof(buf) || poll(&p, 1, smolvm_remaining_ms(deadline)) != 1)
            return NULL;
        n = read(fd, buf + len, sizeof(buf) - len);
        if (n <= 0)
            return NULL;
        len += (size_t)n;
    }
}

/* A guest that cannot become ready: the supervisor says why, to every client, at once. */
static void test_sv_boot_errors(void **state)
{
    sv_vm v = {0};
    smolvm_agent *a = NULL;
    smolvm_error *err = NULL;
    char report[256];
    json_t *reply, *g;
    smolvm_sv_exit ex;
    int64_t t0;
    char *dir;
    int fd;

    (void)state;
    /* The guest's error line: clients waiting for ready get it as the error. */
    dir = new_vm("sv-booterr");
    (void)setenv("FAKE_FC_AGENT", SMOLVM_AGENT_HOST, 1);
    (void)setenv("FAKE_FC_BOOT", "error", 1);
    sv_launch(&v, dir, SMOLVM_SV_AGENT, report, sizeof(report));
    if (!v.vmm)
        fail_msg("supervisor: %s", report);
    t0 = smolvm_now_ms();
    assert_int_equal(smolvm_agent_connect(&a, v.sock, true, t0 + 5000, &err), SMOLVM_EVMM);
    assert_err_contains(err, "the guest reported an error: config disk: no smolvm config disk "
                             "found");
    assert_true(smolvm_now_ms() - t0 < 2000);
    err = smolvm_error_free(err);
    assert_true(file_contains(v.dir, SMOLVM_SV_LOG, "the guest reported an error: config disk"));
    /* SIGTERM: the supervisor powers the guest off (Ctrl-Alt-Del: it has no agent) and
     * exits with the VMM. */
    assert_int_equal(kill(sv_pid, SIGTERM), 0);
    sv_wait_exit(smolvm_now_ms() + 10000);
    assert_false(smolvm_pid_alive(v.vmm, v.vmm_start));
    sv_free(&v);
    (void)unsetenv("FAKE_FC_BOOT");

    /* A guest that never says more than its kernel's first line: the deadline is the
     * client's; the supervisor keeps booting and says how far the boot got. */
    dir = new_vm("sv-silent");
    (void)setenv("FAKE_FC_BOOT", "silent", 1);
    sv_launch(&v, dir, SMOLVM_SV_AGENT, report, sizeof(report));
    if (!v.vmm)
        fail_msg("supervisor: %s", report);
    t0 = smolvm_now_ms();
    assert_int_equal(smolvm_agent_connect(&a, v.sock, true, t0 + 300, &err), SMOLVM_ETIMEDOUT);
    assert_true(smolvm_now_ms() - t0 < 1000);
    err = smolvm_error_free(err);
    reply = sv_status(&v);
    assert_string_equal(json_string_value(json_object_get(reply, "state")), "booting");
    assert_string_equal(json_string_value(json_object_get(reply, "milestone")), "");
    assert_false(json_is_true(json_object_get(reply, "agent")));
    json_decref(reply);

    /* The VMM dies while a client waits: the client hears why at once (the pidfd), the
     * supervisor records the signal and exits. */
    fd = raw_hello(v.sock);
    assert_int_equal(kill(v.vmm, SIGKILL), 0);
    t0 = smolvm_now_ms();
    g = raw_goaway(fd, t0 + 5000);
    assert_non_null(g);
    assert_true(smolvm_now_ms() - t0 < 1000);
    assert_string_equal(json_string_value(json_object_get(g, "code")), "EVMM");
    assert_non_null(strstr(json_string_value(json_object_get(g, "message")),
                           "the vm stopped before it was ready (last milestone: none"));
    json_decref(g);
    (void)close(fd);
    sv_wait_exit(smolvm_now_ms() + 5000);
    assert_int_equal(smolvm_sv_exit_read(&ex, v.dir, &err), 0);
    assert_int_equal(ex.signal, SIGKILL);
    sv_free(&v);
}

/* A hostile agent: what it sends over vsock ends its channel with a clear error in the
 * supervisor's log, and the supervisor keeps serving. Each case is a program that
 * writes the bytes, then keeps what the supervisor sent until the channel closes, then
 * says so on a FIFO. */
static void test_sv_hostile_agent(void **state)
{
    static const char http[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    static const char v2[] = "{\"version\":2,\"agent\":\"other\"}";
    static const char ok[] = "{\"version\":1,\"agent\":\"hostile\",\"uptime_ms\":1}";
    struct {
        const char *name;
        uint8_t bytes[256];
        size_t len;
        const char *why;
        bool ready; /* the hello was accepted before the channel broke */
    } cases[] = {
        {"sv-http", {0}, 0, "length over 65536", false},
        {"sv-version", {0}, 0, "unsupported agent protocol version", false},
        {"sv-type", {0}, 0, "unknown type", true},
    };
    size_t i;

    (void)state;
    memcpy(cases[0].bytes, http, sizeof(http) - 1);
    cases[0].len = sizeof(http) - 1;
    {
        smolvm_agent_header h = {sizeof(v2) - 1, 0, SMOLVM_AGENT_HELLO, 0, 0};

        smolvm_agent_header_encode(cases[1].bytes, &h);
        memcpy(cases[1].bytes + SMOLVM_AGENT_HEADER_SIZE, v2, sizeof(v2) - 1);
        cases[1].len = SMOLVM_AGENT_HEADER_SIZE + sizeof(v2) - 1;
    }
    {
        smolvm_agent_header h = {sizeof(ok) - 1, 0, SMOLVM_AGENT_HELLO, 0, 0};
        uint8_t *b = cases[2].bytes;

        smolvm_agent_header_encode(b, &h);
        memcpy(b + SMOLVM_AGENT_HEADER_SIZE, ok, sizeof(ok) - 1);
        b += SMOLVM_AGENT_HEADER_SIZE + sizeof(ok) - 1;
        memcpy(b, "\0\0\0\0\0\0\0\x01\x63\0\0\0", 12); /* type 99 on stream 1 */
        cases[2].len = SMOLVM_AGENT_HEADER_SIZE + sizeof(ok) - 1 + 12;
    }

    for (i = 0; i < SMOLVM_ARRAY_SIZE(cases); i++) {
        char *bytes = path_in(tmpdir, "hostile.bin"), *got = path_in(tmpdir, "hostile.got");
        char *fifo = path_in(tmpdir, "hostile.fifo"), *cmd, report[256], buf[16];
        smolvm_agent *a = NULL;
        smolvm_error *err = NULL;
        char *data = NULL;
        size_t len = 0;
        cmd_result res;
        json_t *g, *reply;
        sv_vm v = {0};
        char *dir = new_vm(cases[i].name);
        int ff, fd;

        (void)unlink(fifo);
        assert_int_equal(mkfifo(fifo, 0600), 0);
        ff = open(fifo, O_RDWR | O_NONBLOCK | O_CLOEXEC); /* never EOF: waits for the line */
        assert_true(ff >= 0);
        {
            FILE *f = fopen(bytes, "wb");

            assert_non_null(f);
            assert_int_equal(fwrite(cases[i].bytes, 1, cases[i].len, f), cases[i].len);
            (void)fclose(f);
        }
        cmd =
            smolvm_strdupf("sh -c \"cat '%s'; cat > '%s'; echo closed > '%s'\"", bytes, got, fifo);
        (void)setenv("FAKE_FC_AGENT", cmd, 1);
        (void)setenv("FAKE_FC_AGENT_RESTARTS", "0", 1);
        sv_launch(&v, dir, SMOLVM_SV_AGENT, report, sizeof(report));
        if (!v.vmm)
            fail_msg("supervisor: %s", report);
        if (read_until(ff, buf, sizeof(buf), "closed", smolvm_now_ms() + 10000) < 0)
            fail_msg("%s: the supervisor did not close the hostile agent's channel", cases[i].name);
        /* In its log, with the reason; to the agent, a GOAWAY EPROTO saying the same. */
        {
            char *line = smolvm_strdupf("agent channel closed: %s", cases[i].why);

            if (!file_contains(v.dir, SMOLVM_SV_LOG, line))
                fail_msg("%s: no '%s' in the supervisor's log", cases[i].name, line);
            free(line);
        }
        assert_int_equal(smolvm_read_file(got, 1 << 20, &data, &len, NULL), 0);
        g = find_goaway((const uint8_t *)data, len);
        assert_non_null(g);
        assert_string_equal(json_string_value(json_object_get(g, "code")), "EPROTO");
        assert_string_equal(json_string_value(json_object_get(g, "message")), cases[i].why);
        json_decref(g);
        free(data);

        /* Still serving: its status, and a client's request gets the reason. */
        assert_int_equal(waitpid(sv_pid, NULL, WNOHANG), 0);
        reply = sv_status(&v);
        assert_false(json_is_true(json_object_get(reply, "agent")));
        assert_string_equal(json_string_value(json_object_get(reply, "state")),
                            cases[i].ready ? "ready" : "booting");
        json_decref(reply);
        if (cases[i].ready) {
            assert_int_equal(smolvm_agent_connect(&a, v.sock, true, smolvm_now_ms() + 3000, &err),
                             0);
            assert_int_equal(run_cmd(a, "true", NULL, &res, &err), SMOLVM_ESTATE);
            assert_err_contains(err, "the agent channel was lost");
            err = smolvm_error_free(err);
            smolvm_agent_free(a);
        } else {
            fd = raw_hello(v.sock); /* waits for a ready that does not come */
            assert_null(raw_goaway(fd, smolvm_now_ms() + 200));
            (void)close(fd);
        }
        assert_int_equal(kill(sv_pid, SIGTERM), 0);
        sv_wait_exit(smolvm_now_ms() + 10000);
        assert_false(smolvm_pid_alive(v.vmm, v.vmm_start));
        (void)close(ff);
        free(cmd);
        free(bytes);
        free(got);
        free(fifo);
        sv_free(&v);
    }
}

/* ---------------------------------------------------------------- download */

static pid_t http_pid;
static int http_port;

/* python3's http.server on 127.0.0.1, an ephemeral port, serving dir. */
static void http_start(const char *dir)
{
    int fds[2];
    char buf[32] = "";
    ssize_t n;

    assert_int_equal(pipe(fds), 0);
    http_pid = fork();
    assert_true(http_pid >= 0);
    if (http_pid == 0) {
        (void)dup2(fds[1], 1);
        (void)close(fds[0]);
        execl("/usr/bin/python3", "python3", "-c",
              "import functools, http.server, sys\n"
              "class Quiet(http.server.SimpleHTTPRequestHandler):\n"
              "    def log_message(self, *a): pass\n"
              "h = functools.partial(Quiet, directory=sys.argv[1])\n"
              "s = http.server.HTTPServer(('127.0.0.1', 0), h)\n"
              "print(s.server_address[1], flush=True)\n"
              "s.serve_forever()\n",
              dir, (char *)NULL);
        _exit(127);
    }
    (void)close(fds[1]);
    /* Read the whole line: print() may write the number and the newline separately,
     * and closing the pipe early would kill the server with EPIPE. */
    for (size_t got = 0; got < sizeof(buf) - 1 && !strchr(buf, '\n'); got += (size_t)n) {
        n = read(fds[0], buf + got, sizeof(buf) - 1 - got);
        assert_true(n > 0);
        buf[got + (size_t)n] = '\0';
    }
    (void)close(fds[0]);
    http_port = atoi(buf);
    assert_true(http_port > 0);
}

static void http_stop(void)
{
    (void)kill(http_pid, SIGTERM);
    (void)waitpid(http_pid, NULL, 0);
}

typedef struct progress {
    uint64_t last_done, last_total;
    int calls;
} progress;

static void on_progress(uint64_t done, uint64_t total, void *payload)
{
    progress *p = payload;

    p->last_done = done;
    p->last_total = total;
    p->calls++;
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;

    if (!d)
        return -1;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.' || (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."));
    (void)closedir(d);
    return n;
}

static void test_download(void **state)
{
    char *srv = path_in(tmpdir, "www"), *dest = path_in(tmpdir, "bin"), *url = NULL, *path = NULL,
         *version = NULL, *sha = NULL;
    const char *wrong = "0000000000000000000000000000000000000000000000000000000000000000";
    smolvm_fc_download_opts o = {0};
    smolvm_error *err = NULL;
    progress p = {0};
    struct stat st;
    char *shafile;

    (void)state;
    /* A release archive laid out like upstream's: release-vX-arch/firecracker-vX-arch,
     * the fake standing in for the binary. */
    assert_int_equal(sh("set -e; d='%s/rel/release-v1.16.1-x86_64'; mkdir -p \"$d\" '%s';"
                        "cp '%s' \"$d/firecracker-v1.16.1-x86_64\";"
                        "printf '#!/bin/sh\\necho jailer\\n' > \"$d/jailer-v1.16.1-x86_64\";"
                        "echo debug > \"$d/firecracker-v1.16.1-x86_64.debug\";"
                        "tar -czf '%s/fc.tgz' -C '%s/rel' release-v1.16.1-x86_64;"
                        "sha256sum '%s/fc.tgz' | cut -d' ' -f1 > '%s/fc.sha'",
                        tmpdir, srv, fake, srv, tmpdir, srv, tmpdir),
                     0);
    shafile = path_in(tmpdir, "fc.sha");
    assert_int_equal(smolvm_read_file(shafile, 128, &sha, NULL, NULL), 0);
    sha[strcspn(sha, "\n")] = '\0';
    free(shafile);
    http_start(srv);
    url = smolvm_strdupf("http://127.0.0.1:%d/fc.tgz", http_port);

    /* Wrong checksum: refused, the download deleted, nothing installed. */
    o.url = url;
    o.sha256 = wrong;
    o.dest_dir = dest;
    o.progress = on_progress;
    o.payload = &p;
    o.timeout_ms = 20000;
    assert_int_equal(smolvm_fc_download(&o, &path, &err), SMOLVM_EIO);
    assert_err_contains(err, "sha256 mismatch: expected '0000");
    assert_err_contains(err, sha);
    assert_err_contains(err, "the download was deleted");
    err = smolvm_error_free(err);
    assert_null(path);
    assert_int_equal(count_entries(dest), 0);

    /* Not there: the server's answer. */
    {
        char *missing = smolvm_strdupf("http://127.0.0.1:%d/nope.tgz", http_port);

        o.url = missing;
        assert_int_equal(smolvm_fc_download(&o, &path, &err), SMOLVM_EIO);
        assert_err_contains(err, "answered 404");
        err = smolvm_error_free(err);
        assert_int_equal(count_entries(dest), 0);
        free(missing);
    }

    /* Right checksum: installed, executable, version checked, progress reported. */
    o.url = url;
    o.sha256 = sha;
    p = (progress){0};
    if (smolvm_fc_download(&o, &path, &err) < 0)
        fail_msg("download: %s", smolvm_error_message(err));
    assert_non_null(path);
    assert_int_equal(stat(path, &st), 0);
    assert_true(st.st_mode & S_IXUSR);
    assert_int_equal(smolvm_fc_binary_version(path, &version, 0, &err), 0);
    assert_string_equal(version, "1.16.1");
    assert_true(p.calls > 0);
    assert_int_equal(stat(path, &st), 0);
    {
        char *tgz = path_in(srv, "fc.tgz");
        struct stat ts;

        assert_int_equal(stat(tgz, &ts), 0);
        assert_int_equal(p.last_done, (uint64_t)ts.st_size);
        free(tgz);
    }
    assert_int_equal(count_entries(dest), 2); /* firecracker, jailer; no temp files */
    http_stop();
    free(version);
    free(path);
    free(url);
    free(sha);
    free(srv);
    free(dest);
}

/* After each test, passed or failed: no child of ours keeps running (a failed test's
 * VMM or supervisor would fail the next test's checks), no jailer setting lingers. */
static int each_teardown(void **state)
{
    DIR *d = opendir("/proc");
    struct dirent *e;

    (void)state;
    unjail_env();
    sv_pid = 0;
    while (d && (e = readdir(d))) {
        char path[64], *text = NULL, *p;
        long pid = strtol(e->d_name, &p, 10);

        if (pid <= 0 || *p)
            continue;
        (void)snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
        if (smolvm_read_file(path, 4096, &text, NULL, NULL) == 0 && (p = strrchr(text, ')')) &&
            strtol(p + 4, NULL, 10) == (long)getpid()) {
            (void)kill((pid_t)pid, SIGKILL);
            (void)waitpid((pid_t)pid, NULL, 0);
        }
        free(text);
    }
    if (d)
        (void)closedir(d);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_available, each_teardown),
        cmocka_unit_test_teardown(test_lifecycle, each_teardown),
        cmocka_unit_test_teardown(test_overlay_disk, each_teardown),
        cmocka_unit_test_teardown(test_read_only_disk, each_teardown),
        cmocka_unit_test_teardown(test_bad_config, each_teardown),
        cmocka_unit_test_teardown(test_config_errors, each_teardown),
        cmocka_unit_test_teardown(test_boot_errors, each_teardown),
        cmocka_unit_test_teardown(test_vsock, each_teardown),
        cmocka_unit_test_teardown(test_contract_checks, each_teardown),
        cmocka_unit_test_teardown(test_download, each_teardown),
        cmocka_unit_test_teardown(test_jailer_lifecycle, each_teardown),
        cmocka_unit_test_teardown(test_jailer_errors, each_teardown),
        cmocka_unit_test_teardown(test_jailer_tap, each_teardown),
        cmocka_unit_test_teardown(test_jailer_contract_checks, each_teardown),
        cmocka_unit_test_teardown(test_snapshot_clones, each_teardown),
        cmocka_unit_test_teardown(test_sv_agent, each_teardown),
        cmocka_unit_test_teardown(test_sv_ssh, each_teardown),
        cmocka_unit_test_teardown(test_sv_jailed_by_default, each_teardown),
        cmocka_unit_test_teardown(test_sv_template, each_teardown),
        cmocka_unit_test_teardown(test_sv_boot_errors, each_teardown),
        cmocka_unit_test_teardown(test_sv_hostile_agent, each_teardown),
    };
    const char *src = getenv("SMOLVM_SOURCE_DIR");

    (void)snprintf(fake, sizeof(fake), "%s/tests/fixtures/fake-firecracker.py",
                   src && *src ? src : ".");
    (void)snprintf(fake_jailer, sizeof(fake_jailer), "%s/tests/fixtures/fake-jailer.py",
                   src && *src ? src : ".");
    if (access(fake, X_OK) < 0 || access(fake_jailer, X_OK) < 0) {
        printf("SKIP: '%s' not found (set SMOLVM_SOURCE_DIR)\n", fake);
        return 77;
    }
    if (system("/usr/bin/python3 -c 'import yaml' >/dev/null 2>&1") != 0) {
        printf("SKIP: python3 with PyYAML is needed for the fake firecracker "
               "(apt-get install python3-yaml)\n");
        return 77;
    }
    if (system("command -v mkfs.ext4 >/dev/null && command -v tar >/dev/null && "
               "command -v setpriv >/dev/null") != 0) {
        printf("SKIP: mkfs.ext4, tar and setpriv (the fake's children die with it) are "
               "needed\n");
        return 77;
    }
    return cmocka_run_group_tests(tests, setup, teardown);
}
