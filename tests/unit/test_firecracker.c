/* SPDX-License-Identifier: MIT */
/*
 * The Firecracker backend and REST client against tests/fixtures/fake-firecracker.py,
 * which serves the API the way firecracker does and checks every request against the
 * v1.16.1 contract (schema and order rules). The binary download is tested against an
 * HTTP server on 127.0.0.1 serving an archive built here. Skips (77) without python3
 * and PyYAML.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "host.h"
#include "proc.h"
#include "util.h"
#include "vmm/fc-api.h"
#include "tool.h"
#include "vmm/fc-binary.h"
#include "vmm/fc-jailer.h"
#include "vmm/vmm.h"

static char tmpdir[] = "/tmp/smolvm-test-fc-XXXXXX";
static char fake[1024], kernel[600], rootfs[600], cfgdisk[600];
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
    free(log);
    return d;
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

typedef struct running {
    int64_t pid;
    uint64_t start;
    int ctl;
} running;

static void start_vm(const smolvm_vmm_config *c, running *r)
{
    smolvm_error *err = NULL;
    int64_t uptime = -1;

    if (fc->spawn(c, &r->ctl, &r->pid, &r->start, smolvm_now_ms() + 10000, &err) < 0)
        fail_msg("spawn: %s", smolvm_error_message(err));
    if (fc->wait_ready(NULL, c->dir, r->ctl, smolvm_now_ms() + 10000, &uptime, &err) < 0)
        fail_msg("wait_ready: %s", smolvm_error_message(err));
    assert_true(uptime >= 0);
}

static void stop_vm(const char *dir, running *r)
{
    smolvm_error *err = NULL;

    if (fc->poweroff(dir, smolvm_now_ms() + 3000, &err) < 0)
        fail_msg("poweroff: %s", smolvm_error_message(err));
    assert_int_equal(smolvm_pid_wait_exit((pid_t)r->pid, r->start, smolvm_now_ms() + 5000, NULL),
                     0);
    if (r->ctl >= 0)
        (void)close(r->ctl);
    r->ctl = -1;
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

/* Configure, start, pause, snapshot, resume, stop: every request within the contract. */
static void test_lifecycle(void **state)
{
    char *dir = new_vm("life"), *snap = path_in(dir, "snap.state"), *mem = path_in(dir, "snap.mem");
    smolvm_vmm_config c;
    smolvm_error *err = NULL;
    running r = {.ctl = -1};
    json_t *reqs, *q;
    int64_t t0;
    const char *expect[] = {"GET /version",        "PUT /logger",      "PUT /metrics",
                            "PUT /machine-config", "PUT /boot-source", "PUT /drives/rootfs",
                            "PUT /drives/config",  "PUT /entropy",     "PUT /actions"};
    size_t i;

    (void)state;
    base_config(&c, dir);
    t0 = smolvm_now_ms();
    start_vm(&c, &r);
    print_message("spawn to ready (fake, 30 ms boot): %lld ms\n",
                  (long long)(smolvm_now_ms() - t0));
    assert_string_equal(instance_state(dir), "Running");
    assert_true(file_contains(dir, SMOLVM_VMM_CONSOLE_LOG, "smolvm: ready "));

    /* A snapshot of a running VM is refused by firecracker, with its reason. */
    assert_int_equal(fc->snapshot(dir, snap, mem, smolvm_now_ms() + 3000, &err), SMOLVM_EVMM);
    assert_err_contains(err, "PUT /snapshot/create: firecracker answered 400: ");
    assert_err_contains(err, "pause it first");
    err = smolvm_error_free(err);

    assert_int_equal(fc->pause(dir, smolvm_now_ms() + 3000, &err), 0);
    assert_string_equal(instance_state(dir), "Paused");
    assert_int_equal(fc->snapshot(dir, snap, mem, smolvm_now_ms() + 3000, &err), 0);
    assert_int_equal(access(snap, F_OK), 0);
    assert_int_equal(access(mem, F_OK), 0);
    assert_int_equal(fc->resume(dir, smolvm_now_ms() + 3000, &err), 0);
    assert_string_equal(instance_state(dir), "Running");
    stop_vm(dir, &r);
    assert_true(file_contains(dir, SMOLVM_VMM_CONSOLE_LOG, "smolvm: poweroff"));

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
    json_decref(reqs);

    /* A stopped VM: control calls say so instead of hanging on a stale socket. */
    assert_int_equal(fc->pause(dir, smolvm_now_ms() + 1000, &err), SMOLVM_ESTATE);
    err = smolvm_error_free(err);

    /* Restore the snapshot in a fresh process: it runs without booting again. */
    {
        char *dir2 = new_vm("restored");

        c.dir = dir2;
        if (fc->restore(&c, snap, mem, &r.ctl, &r.pid, &r.start, smolvm_now_ms() + 10000, &err) < 0)
            fail_msg("restore: %s", smolvm_error_message(err));
        assert_string_equal(instance_state(dir2), "Running");
        reqs = requests(dir2);
        assert_no_violation(reqs);
        q = find_request(reqs, "PUT", "/snapshot/load");
        assert_non_null(q);
        assert_true(json_is_true(json_object_get(json_object_get(q, "body"), "resume_vm")));
        assert_null(find_request(reqs, "PUT", "/boot-source"));
        json_decref(reqs);
        stop_vm(dir2, &r);
        free(dir2);
    }
    free(snap);
    free(mem);
    free(dir);
}

/* An isolated disk: read-only base, per-VM ext4 upper layer created in milliseconds. */
static void test_overlay_disk(void **state)
{
    char *dir = new_vm("overlay"), *upper = path_in(dir, "upper.ext4");
    smolvm_vmm_config c;
    running r = {.ctl = -1};
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
    running r = {.ctl = -1};

    (void)state;
    base_config(&c, dir);
    c.disk_format = "qcow2";
    assert_int_equal(fc->spawn(&c, &r.ctl, &r.pid, &r.start, smolvm_now_ms() + 3000, &err),
                     SMOLVM_EINVAL);
    assert_err_contains(err, "raw files only");
    err = smolvm_error_free(err);

    base_config(&c, dir);
    c.network = SMOLVM_NET_USER;
    assert_int_equal(fc->spawn(&c, &r.ctl, &r.pid, &r.start, smolvm_now_ms() + 3000, &err),
                     SMOLVM_EINVAL);
    assert_err_contains(err, "no user-mode networking");
    err = smolvm_error_free(err);

    base_config(&c, dir);
    c.accel = SMOLVM_ACCEL_TCG;
    assert_int_equal(fc->spawn(&c, &r.ctl, &r.pid, &r.start, smolvm_now_ms() + 3000, &err),
                     SMOLVM_EINVAL);
    assert_err_contains(err, "accel 'kvm'");
    err = smolvm_error_free(err);

    base_config(&c, dir);
    c.network = SMOLVM_NET_NAT;
    c.tap_name = "tap0; rm -rf /";
    c.mac = "52:54:00:12:34:56";
    assert_int_equal(fc->spawn(&c, &r.ctl, &r.pid, &r.start, smolvm_now_ms() + 3000, &err),
                     SMOLVM_EINVAL);
    assert_err_contains(err, "invalid tap name");
    err = smolvm_error_free(err);

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

/* Failures during configuration: firecracker's fault_message, no process left. */
static void test_config_errors(void **state)
{
    char *dir = new_vm("cfgerr"), *pidfile = path_in(dir, SMOLVM_VMM_PIDFILE),
         *sock = path_in(dir, "fc.sock");
    char missing[700];
    smolvm_vmm_config c;
    smolvm_error *err = NULL;
    running r = {.ctl = -1};

    (void)state;
    base_config(&c, dir);
    (void)snprintf(missing, sizeof(missing), "%s/no-such-kernel", tmpdir);
    c.kernel = missing;
    assert_int_equal(fc->spawn(&c, &r.ctl, &r.pid, &r.start, smolvm_now_ms() + 5000, &err),
                     SMOLVM_EVMM);
    assert_err_contains(err, "PUT /boot-source: firecracker answered 400: The kernel file "
                             "cannot be opened");
    err = smolvm_error_free(err);
    assert_int_equal(access(pidfile, F_OK), -1);
    assert_int_equal(access(sock, F_OK), -1);

    base_config(&c, dir);
    (void)setenv("FAKE_FC_FAIL", "PUT /drives/config", 1);
    assert_int_equal(fc->spawn(&c, &r.ctl, &r.pid, &r.start, smolvm_now_ms() + 5000, &err),
                     SMOLVM_EVMM);
    assert_err_contains(err, "PUT /drives/config: firecracker answered 400: injected failure");
    err = smolvm_error_free(err);
    assert_int_equal(access(pidfile, F_OK), -1);
    (void)unsetenv("FAKE_FC_FAIL");

    /* A binary that is not firecracker at all: it exits, and says why. */
    (void)setenv(SMOLVM_FC_ENV, "/bin/false", 1);
    assert_true(fc->spawn(&c, &r.ctl, &r.pid, &r.start, smolvm_now_ms() + 5000, &err) < 0);
    assert_non_null(err);
    err = smolvm_error_free(err);
    (void)setenv(SMOLVM_FC_ENV, fake, 1);
    assert_int_equal(access(pidfile, F_OK), -1);

    /* One VMM per dir. */
    start_vm(&c, &r);
    {
        running r2 = {.ctl = -1};

        assert_int_equal(fc->spawn(&c, &r2.ctl, &r2.pid, &r2.start, smolvm_now_ms() + 3000, &err),
                         SMOLVM_EEXIST);
        err = smolvm_error_free(err);
    }
    stop_vm(dir, &r);
    free(pidfile);
    free(sock);
    free(dir);
}

/* Boot failures reach the caller at once, with the guest's words. */
static void test_boot_errors(void **state)
{
    char *dir = new_vm("booterr");
    smolvm_vmm_config c;
    smolvm_error *err = NULL;
    running r = {.ctl = -1};
    int64_t t0;

    (void)state;
    base_config(&c, dir);
    (void)setenv("FAKE_FC_BOOT", "error", 1);
    assert_int_equal(fc->spawn(&c, &r.ctl, &r.pid, &r.start, smolvm_now_ms() + 5000, &err), 0);
    assert_int_equal(fc->wait_ready(NULL, dir, r.ctl, smolvm_now_ms() + 5000, NULL, &err),
                     SMOLVM_EVMM);
    assert_err_contains(err, "the guest reported an error: config disk");
    err = smolvm_error_free(err);
    stop_vm(dir, &r);

    /* Silent guest: the deadline, with the last milestone. */
    (void)setenv("FAKE_FC_BOOT", "silent", 1);
    assert_int_equal(fc->spawn(&c, &r.ctl, &r.pid, &r.start, smolvm_now_ms() + 5000, &err), 0);
    t0 = smolvm_now_ms();
    assert_int_equal(fc->wait_ready(NULL, dir, r.ctl, t0 + 300, NULL, &err), SMOLVM_ETIMEDOUT);
    assert_true(smolvm_now_ms() - t0 < 1000);
    assert_err_contains(err, "not ready in time (last milestone: none)");
    err = smolvm_error_free(err);

    /* The VMM dies while we wait: noticed through the pidfd, not at the deadline. */
    (void)kill((pid_t)r.pid, SIGKILL);
    t0 = smolvm_now_ms();
    assert_int_equal(fc->wait_ready(NULL, dir, r.ctl, t0 + 5000, NULL, &err), SMOLVM_EVMM);
    assert_true(smolvm_now_ms() - t0 < 1000);
    assert_err_contains(err, "stopped before it was ready");
    err = smolvm_error_free(err);
    if (r.ctl >= 0)
        (void)close(r.ctl);
    (void)smolvm_pid_wait_exit((pid_t)r.pid, r.start, smolvm_now_ms() + 2000, NULL);

    /* The guest ignores Ctrl-Alt-Del: poweroff is delivered, the VMM stays; quit ends
     * it (the caller's fallback after its poweroff deadline). */
    (void)unsetenv("FAKE_FC_BOOT");
    (void)setenv("FAKE_FC_IGNORE_CAD", "1", 1);
    start_vm(&c, &r);
    assert_int_equal(fc->poweroff(dir, smolvm_now_ms() + 3000, &err), 0);
    assert_int_equal(smolvm_pid_wait_exit((pid_t)r.pid, r.start, smolvm_now_ms() + 300, NULL),
                     SMOLVM_ETIMEDOUT);
    assert_int_equal(fc->quit(dir, smolvm_now_ms() + 3000, &err), 0);
    assert_false(smolvm_pid_alive((pid_t)r.pid, r.start));
    if (r.ctl >= 0)
        (void)close(r.ctl);

    /* Control calls on a stopped VM say so. */
    assert_int_equal(fc->pause(dir, smolvm_now_ms() + 1000, &err), SMOLVM_ESTATE);
    assert_err_contains(err, "is the vm running?");
    err = smolvm_error_free(err);
    assert_int_equal(fc->quit(dir, smolvm_now_ms() + 1000, &err), SMOLVM_ESTATE);
    err = smolvm_error_free(err);
    free(dir);
}

/* The fake itself: it must catch what firecracker would refuse (so the tests above
 * prove something), answering with fault_message errors the client reports. */
static void test_contract_checks(void **state)
{
    char *dir = new_vm("contract"), *sock = path_in(dir, "fc.sock");
    smolvm_fc_api *api = NULL;
    smolvm_error *err = NULL;
    int64_t dl = smolvm_now_ms() + 5000;
    pid_t pid;
    uint64_t start;
    char *argv[] = {fake, "--api-sock", sock, "--id", "contract", NULL};
    char *log = path_in(dir, "fc.out");
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
    assert_int_equal(smolvm_spawn_detached(argv, log, -1, &pid, &err), 0);
    assert_int_equal(smolvm_pid_start_time(pid, &start, NULL), 0);
    while (access(sock, F_OK) < 0 && smolvm_now_ms() < dl) {
        struct timespec ts = {0, 5000000};

        (void)nanosleep(&ts, NULL); /* test only: the backend waits on inotify */
    }
    assert_int_equal(smolvm_fc_api_new(&api, sock, &err), 0);

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
    assert_int_equal(smolvm_fc_snapshot_load(api, "/tmp/s", rootfs, 1, dl, &err), SMOLVM_EVMM);
    assert_err_contains(err, "not allowed after configuring");
    err = smolvm_error_free(err);
    assert_int_equal(smolvm_fc_action(api, "InstanceStart", dl, &err), 0);
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
    assert_int_equal(smolvm_pid_wait_exit(pid, start, smolvm_now_ms() + 5000, NULL), 0);
    /* No VMM: the client says so instead of hanging. */
    assert_int_equal(smolvm_fc_version(api, &(char *){NULL}, smolvm_now_ms() + 1000, &err),
                     SMOLVM_ESTATE);
    assert_err_contains(err, "is the vm running?");
    err = smolvm_error_free(err);
    api = smolvm_fc_api_free(api);

    reqs = requests(dir);
    assert_true(json_array_size(reqs) >= SMOLVM_ARRAY_SIZE(bad));
    json_decref(reqs);
    free(log);
    free(sock);
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
    running r = {.ctl = -1};
    json_t *reqs;
    struct stat st;
    pid_t pid;
    uint64_t start;

    (void)state;
    base_config(&c, dir);
    c.vm_id = "vm-jail-1";
    c.overlay_disk = upper;
    jail_env();
    (void)setenv(SMOLVM_FC_JAILER_CGROUP_ENV, "smolvm", 1);
    start_vm(&c, &r);
    assert_string_equal(instance_state(dir), "Running"); /* through <dir>/fc.sock */
    assert_true(smolvm_pid_find_vmm(dir, SMOLVM_VMM_PIDFILE, &pid, &start));
    assert_int_equal(pid, (pid_t)r.pid);
    assert_true(file_contains(dir, SMOLVM_VMM_CONSOLE_LOG, "smolvm: ready "));

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

    /* Not supported jailed yet: said so, nothing half done. */
    assert_int_equal(fc->snapshot(dir, "/tmp/s", "/tmp/m", smolvm_now_ms() + 1000, &err),
                     SMOLVM_EINVAL);
    assert_err_contains(err, "jailed");
    err = smolvm_error_free(err);
    stop_vm(dir, &r);

    reqs = requests(dir);
    assert_no_violation(reqs);
    assert_string_equal(body_str(reqs, "PUT", "/boot-source", "kernel_image_path"), "/vmlinux");
    assert_string_equal(body_str(reqs, "PUT", "/drives/rootfs", "path_on_host"), "/rootfs");
    assert_string_equal(body_str(reqs, "PUT", "/drives/config", "path_on_host"), "/config");
    assert_string_equal(body_str(reqs, "PUT", "/drives/overlay", "path_on_host"), "/overlay");
    assert_string_equal(body_str(reqs, "PUT", "/logger", "log_path"), "/vmm.log");
    assert_string_equal(body_str(reqs, "PUT", "/metrics", "metrics_path"), "/fc-metrics.json");
    json_decref(reqs);

    /* Started again: a fresh jail; quit removes it. */
    start_vm(&c, &r);
    assert_int_equal(fc->poweroff(dir, smolvm_now_ms() + 3000, &err), 0);
    (void)smolvm_pid_wait_exit((pid_t)r.pid, r.start, smolvm_now_ms() + 5000, NULL);
    if (r.ctl >= 0)
        (void)close(r.ctl);
    start_vm(&c, &r);
    assert_int_equal(fc->quit(dir, smolvm_now_ms() + 3000, &err), 0);
    if (r.ctl >= 0)
        (void)close(r.ctl);
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
    unjail_env();
    free(jail);
    free(root);
    free(upper);
    free(dir);
}

/* Refused before anything runs, each with what to do; failures after the spawn leave
 * no process and no jail. */
static void test_jailer_errors(void **state)
{
    char *dir = new_vm("jailbad"), *jail = path_in(dir, "jail"), *fcdir = strdup(fake);
    char *upper = path_in(dir, "upper.ext4");
    smolvm_vmm_config c;
    smolvm_error *err = NULL;
    running r = {.ctl = -1};
    char want[1200];

    (void)state;
    base_config(&c, dir);
    c.vm_id = "vm-jail-2";
    jail_env();
    (void)unsetenv(SMOLVM_FC_JAILER_UID_ENV);
    assert_int_equal(fc->spawn(&c, &r.ctl, &r.pid, &r.start, smolvm_now_ms() + 5000, &err),
                     SMOLVM_EINVAL);
    assert_err_contains(err, "SMOLVM_JAILER_UID is required");
    err = smolvm_error_free(err);

    (void)setenv(SMOLVM_FC_JAILER_UID_ENV, "0", 1);
    assert_int_equal(fc->spawn(&c, &r.ctl, &r.pid, &r.start, smolvm_now_ms() + 5000, &err),
                     SMOLVM_EINVAL);
    assert_err_contains(err, "SMOLVM_JAILER_UID 0 is root");
    err = smolvm_error_free(err);

    (void)setenv(SMOLVM_FC_JAILER_UID_ENV, "12x", 1);
    assert_int_equal(fc->spawn(&c, &r.ctl, &r.pid, &r.start, smolvm_now_ms() + 5000, &err),
                     SMOLVM_EINVAL);
    assert_err_contains(err, "'12x' is not a number");
    err = smolvm_error_free(err);

    jail_env();
    (void)setenv(SMOLVM_FC_JAILER_GID_ENV, "0", 1);
    assert_int_equal(fc->spawn(&c, &r.ctl, &r.pid, &r.start, smolvm_now_ms() + 5000, &err),
                     SMOLVM_EINVAL);
    assert_err_contains(err, "SMOLVM_JAILER_GID 0 is root");
    err = smolvm_error_free(err);

    /* Our ids may hold '_', the jailer's may not. */
    jail_env();
    c.vm_id = "vm_2";
    assert_int_equal(fc->spawn(&c, &r.ctl, &r.pid, &r.start, smolvm_now_ms() + 5000, &err),
                     SMOLVM_EINVAL);
    assert_err_contains(err, "vm id 'vm_2' is not a valid jailer id");
    err = smolvm_error_free(err);
    c.vm_id = "vm-jail-2";

    (void)setenv(SMOLVM_FC_JAILER_CGROUP_ENV, "/abs", 1);
    assert_int_equal(fc->spawn(&c, &r.ctl, &r.pid, &r.start, smolvm_now_ms() + 5000, &err),
                     SMOLVM_EINVAL);
    assert_err_contains(err, "is not a relative cgroup path");
    err = smolvm_error_free(err);
    (void)unsetenv(SMOLVM_FC_JAILER_CGROUP_ENV);

    /* SMOLVM_JAILER=1: the jailer next to firecracker, as the download installs it. */
    (void)setenv(SMOLVM_FC_JAILER_ENV, "1", 1);
    *strrchr(fcdir, '/') = '\0';
    assert_int_equal(fc->spawn(&c, &r.ctl, &r.pid, &r.start, smolvm_now_ms() + 5000, &err),
                     SMOLVM_EHOST);
    {
        char *canon = realpath(fcdir, NULL);

        assert_non_null(canon);
        (void)snprintf(want, sizeof(want), "no jailer at '%s/jailer'", canon);
        free(canon);
    }
    assert_err_contains(err, want);
    err = smolvm_error_free(err);
    (void)setenv(SMOLVM_FC_JAILER_ENV, "jailer", 1);
    assert_int_equal(fc->spawn(&c, &r.ctl, &r.pid, &r.start, smolvm_now_ms() + 5000, &err),
                     SMOLVM_EINVAL);
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
        assert_int_equal(fc->spawn(&c, &r.ctl, &r.pid, &r.start, smolvm_now_ms() + 5000, &err),
                         SMOLVM_EPERM);
        assert_err_contains(err, "is not readable by the jail's uid 65534");
        err = smolvm_error_free(err);
        assert_int_equal(access(jail, F_OK), -1);
        assert_false(smolvm_pid_find_vmm(dir, SMOLVM_VMM_PIDFILE, &(pid_t){0}, &(uint64_t){0}));
        c.kernel = kernel;
        free(k);

        /* disk = "shared": the base is attached read-write, so the jail must write it. */
        assert_int_equal(fc->spawn(&c, &r.ctl, &r.pid, &r.start, smolvm_now_ms() + 5000, &err),
                         SMOLVM_EPERM);
        assert_err_contains(err, "is attached read-write but not writable by the jail's uid");
        err = smolvm_error_free(err);
        assert_int_equal(access(jail, F_OK), -1);
    }
    c.overlay_disk = upper;

    /* Firecracker refuses a request: killed, jail removed, its words in the error. */
    (void)setenv("FAKE_FC_FAIL", "PUT /boot-source", 1);
    assert_int_equal(fc->spawn(&c, &r.ctl, &r.pid, &r.start, smolvm_now_ms() + 5000, &err),
                     SMOLVM_EVMM);
    assert_err_contains(err, "injected failure");
    err = smolvm_error_free(err);
    assert_int_equal(access(jail, F_OK), -1);
    (void)unsetenv("FAKE_FC_FAIL");

    /* The jailer exits before firecracker is up (a stand-in that exits at once). */
    (void)setenv(SMOLVM_FC_JAILER_ENV, "/bin/false", 1);
    assert_int_equal(fc->spawn(&c, &r.ctl, &r.pid, &r.start, smolvm_now_ms() + 5000, &err),
                     SMOLVM_EVMM);
    err = smolvm_error_free(err);
    assert_int_equal(access(jail, F_OK), -1);
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
        running r = {.ctl = -1};
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
        jail_env();
        if (fc->spawn(&c, &r.ctl, &r.pid, &r.start, smolvm_now_ms() + 5000, &err) < 0) {
            fprintf(stderr, "spawn: %s\n", smolvm_error_message(err));
            _exit(3);
        }
        owned = sh("ip -d link show fcjail0 | grep -qE 'user (nobody|65534) group "
                   "(nogroup|nobody|65534)'") == 0;
        (void)fc->quit(dir, smolvm_now_ms() + 3000, NULL);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_available),        cmocka_unit_test(test_lifecycle),
        cmocka_unit_test(test_overlay_disk),     cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_config_errors),    cmocka_unit_test(test_boot_errors),
        cmocka_unit_test(test_contract_checks),  cmocka_unit_test(test_download),
        cmocka_unit_test(test_jailer_lifecycle), cmocka_unit_test(test_jailer_errors),
        cmocka_unit_test(test_jailer_tap),       cmocka_unit_test(test_jailer_contract_checks),
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
    if (system("command -v mkfs.ext4 >/dev/null && command -v tar >/dev/null") != 0) {
        printf("SKIP: mkfs.ext4 and tar are needed\n");
        return 77;
    }
    return cmocka_run_group_tests(tests, setup, teardown);
}
