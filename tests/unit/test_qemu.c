/* SPDX-License-Identifier: MIT */
/*
 * The QEMU backend against a real qemu-system-x86_64 (TCG). The failure path needs
 * only QEMU; the runtime tests need the guest kernel of the default image, and the
 * full boot its rootfs (built by scripts/build-image.sh). Missing pieces skip (77).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "proc.h"
#include "util.h"
#include "vmm/qmp.h"
#include "vmm/vmm.h"

static char tmpdir[] = "/tmp/smolvm-test-qemu-XXXXXX";
static char image_dir[512];
static int have_qemu, have_kernel, have_rootfs;

static int exists(const char *dir, const char *name)
{
    char p[700];

    (void)snprintf(p, sizeof(p), "%s/%s", dir, name);
    return access(p, R_OK) == 0;
}

static int setup(void **state)
{
    const char *xdg = getenv("XDG_DATA_HOME"), *home = getenv("HOME");
    smolvm_error *err = NULL;

    (void)state;
    if (!mkdtemp(tmpdir))
        return -1;
    if (xdg && *xdg)
        (void)snprintf(image_dir, sizeof(image_dir), "%s/smolvm/images/default", xdg);
    else
        (void)snprintf(image_dir, sizeof(image_dir), "%s/.local/share/smolvm/images/default",
                       home ? home : "/root");
    have_qemu = smolvm_vmm_qemu.available(SMOLVM_ACCEL_TCG, &err) == 0;
    err = smolvm_error_free(err);
    have_kernel = exists(image_dir, "vmlinux");
    have_rootfs = have_kernel && exists(image_dir, "rootfs.ext4");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return smolvm_rm_rf(tmpdir, NULL);
}

static char *path_in(const char *dir, const char *name)
{
    char *p = smolvm_strdupf("%s/%s", dir, name);

    assert_non_null(p);
    return p;
}

static char *make_vm_dir(const char *name)
{
    char *d = path_in(tmpdir, name);

    assert_int_equal(mkdir(d, 0700), 0);
    return d;
}

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;

    va_start(ap, fmt);
    (void)vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    return system(cmd);
}

/* Is any process running with this VM dir on its command line? */
static int qemu_running_in(const char *dir)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    int found = 0;

    assert_non_null(d);
    while (!found && (e = readdir(d))) {
        char p[300], buf[8192];
        ssize_t n, i;
        int fd;

        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        (void)snprintf(p, sizeof(p), "/proc/%s/cmdline", e->d_name);
        fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        n = read(fd, buf, sizeof(buf) - 1);
        (void)close(fd);
        if (n <= 0)
            continue;
        for (i = 0; i < n; i++)
            if (!buf[i])
                buf[i] = ' ';
        buf[n] = '\0';
        if (strstr(buf, "qemu-system") && strstr(buf, dir)) {
            char st[300], *text = NULL;

            /* Zombies (not reaped by a container's PID 1) do not count. */
            (void)snprintf(st, sizeof(st), "/proc/%s/stat", e->d_name);
            if (smolvm_read_file(st, 4096, &text, NULL, NULL) == 0 && strstr(text, ") Z ") == NULL)
                found = 1;
            free(text);
        }
    }
    (void)closedir(d);
    return found;
}

static unsigned long tsc_khz(void)
{
    char *text = NULL, *p;
    unsigned long khz = 0;

    if (smolvm_read_file("/sys/devices/system/cpu/cpu0/tsc_freq_khz", 64, &text, NULL, NULL) == 0)
        khz = strtoul(text, NULL, 10);
    free(text);
    text = NULL;
    if (!khz && smolvm_read_file("/proc/cpuinfo", 1 << 20, &text, NULL, NULL) == 0 &&
        (p = strstr(text, "cpu MHz")) && (p = strchr(p, ':')))
        khz = (unsigned long)(strtod(p + 1, NULL) * 1000);
    free(text);
    return khz;
}

static int free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    (void)close(fd);
    return ntohs(sa.sin_port);
}

/* First bytes the guest's sshd sends on a forwarded loopback port. */
static int read_banner(int port, char *buf, size_t len, int64_t deadline)
{
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct pollfd p;
    ssize_t n;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        if (fd >= 0)
            (void)close(fd);
        return -1;
    }
    p = (struct pollfd){.fd = fd, .events = POLLIN};
    n = poll(&p, 1, smolvm_remaining_ms(deadline)) == 1 ? read(fd, buf, len - 1) : -1;
    (void)close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    return 0;
}

/* The guest's channels as a supervisor holds them: our ends, and the VMM's ends that
 * go into the config (closed once the VMM has them). */
typedef struct chans {
    int console_rd, ctl, agent;
    int vmm_console, vmm_ctl, vmm_agent;
} chans;

static void chans_open(chans *ch, smolvm_vmm_config *c)
{
    int p[2], s1[2], s2[2];

    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s1), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s2), 0);
    *ch = (chans){p[0], s1[0], s2[0], p[1], s1[1], s2[1]};
    c->console_fd = p[1];
    c->ctl_fd = s1[1];
    c->agent_fd = s2[1];
}

static void chans_vmm_has_them(chans *ch)
{
    (void)close(ch->vmm_console);
    (void)close(ch->vmm_ctl);
    (void)close(ch->vmm_agent);
    ch->vmm_console = ch->vmm_ctl = ch->vmm_agent = -1;
}

static void chans_close(chans *ch)
{
    int *fds[] = {&ch->console_rd,  &ch->ctl,     &ch->agent,
                  &ch->vmm_console, &ch->vmm_ctl, &ch->vmm_agent};

    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
        if (*fds[i] >= 0) {
            (void)close(*fds[i]);
            *fds[i] = -1;
        }
}

/* The next line on hvc0 starting with prefix, within the deadline (0), else -1. */
static int ctl_line(int fd, const char *prefix, char *out, size_t size, int64_t deadline)
{
    char buf[4096];
    size_t len = 0;

    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        char *nl;
        ssize_t n;

        while ((nl = memchr(buf, '\n', len))) {
            *nl = '\0';
            if (strncmp(buf, prefix, strlen(prefix)) == 0) {
                size_t k = strlen(buf) < size - 1 ? strlen(buf) : size - 1;

                memcpy(out, buf, k);
                out[k] = '\0';
                return 0;
            }
            len -= (size_t)(nl + 1 - buf);
            memmove(buf, nl + 1, len);
        }
        if (len == sizeof(buf))
            len = 0;
        if (poll(&p, 1, smolvm_remaining_ms(deadline)) != 1)
            return -1;
        n = read(fd, buf + len, sizeof(buf) - len);
        if (n <= 0)
            return -1;
        len += (size_t)n;
    }
}

static void base_config(smolvm_vmm_config *c, const char *dir, const char *kernel, const char *disk,
                        const char *cmdline)
{
    *c = (smolvm_vmm_config){
        .vm_id = "test",
        .dir = dir,
        .kernel = kernel,
        .disk = disk,
        .disk_format = "raw",
        .cmdline = cmdline,
        .vcpus = 1,
        .memory_mib = 256,
        .accel = SMOLVM_ACCEL_TCG,
        .network = SMOLVM_NET_NONE,
        .console_fd = -1,
        .ctl_fd = -1,
        .agent_fd = -1,
    };
}

static void test_available(void **state)
{
    smolvm_error *err = NULL;

    (void)state;
    if (!have_qemu)
        skip();
    assert_int_equal(smolvm_vmm_qemu.available(SMOLVM_ACCEL_TCG, &err), 0);
    assert_string_equal(smolvm_vmm_qemu.name, "qemu");
}

static void test_missing_kernel(void **state)
{
    _cleanup_free_ char *dir = make_vm_dir("nokernel");
    _cleanup_free_ char *disk = path_in(dir, "disk.img");
    _cleanup_free_ char *pidfile = path_in(dir, SMOLVM_VMM_PIDFILE);
    _cleanup_free_ char *qmp = path_in(dir, "qmp.sock");
    smolvm_vmm_config c;
    smolvm_error *err = NULL;
    chans ch;
    int64_t pid = 0;
    uint64_t start = 0;
    int r;

    (void)state;
    if (!have_qemu)
        skip();
    assert_int_equal(sh("truncate -s 1M '%s'", disk), 0);
    base_config(&c, dir, "/nonexistent/smolvm/vmlinux", disk, "console=ttyS0");
    chans_open(&ch, &c);
    r = smolvm_vmm_qemu.spawn(&c, &pid, &start, smolvm_now_ms() + 20000, &err);
    assert_int_equal(r, SMOLVM_EVMM);
    /* QEMU's own complaint, quoting the path. */
    assert_non_null(strstr(smolvm_error_message(err), "/nonexistent/smolvm/vmlinux"));
    assert_non_null(strstr(smolvm_error_message(err), "qemu"));
    print_message("# error: %s\n", smolvm_error_message(err));
    err = smolvm_error_free(err);
    assert_int_equal(pid, 0);
    assert_false(qemu_running_in(dir));
    assert_int_not_equal(access(pidfile, F_OK), 0);
    assert_int_not_equal(access(qmp, F_OK), 0);

    /* A missing qcow2 disk is found before QEMU runs (its fds are opened for QEMU). */
    base_config(&c, dir, "/bin/sh", "/nonexistent/smolvm/disk.qcow2", "console=ttyS0");
    c.disk_format = "qcow2";
    c.console_fd = ch.vmm_console;
    c.ctl_fd = ch.vmm_ctl;
    c.agent_fd = ch.vmm_agent;
    assert_int_equal(smolvm_vmm_qemu.spawn(&c, &pid, &start, smolvm_now_ms() + 20000, &err),
                     SMOLVM_ENOENT);
    assert_non_null(strstr(smolvm_error_message(err), "/nonexistent/smolvm/disk.qcow2"));
    assert_int_not_equal(access(qmp, F_OK), 0);
    err = smolvm_error_free(err);
    assert_false(qemu_running_in(dir));
    chans_close(&ch);
}

static void test_bad_config(void **state)
{
    smolvm_vmm_config c;
    smolvm_vmm_hostfwd fwd = {"127.0.0.1,hostfwd=tcp::1-:2", 8080, 80};
    smolvm_error *err = NULL;
    int64_t pid = 0;
    uint64_t start = 0;
    chans ch;

    (void)state;
    base_config(&c, tmpdir, "/k", "/d", "x");
    chans_open(&ch, &c);
    c.memory_mib = 1;
    assert_int_equal(smolvm_vmm_qemu.spawn(&c, &pid, &start, smolvm_now_ms() + 1000, &err),
                     SMOLVM_EINVAL);
    err = smolvm_error_free(err);
    /* Without its channels a VMM is not started. */
    base_config(&c, tmpdir, "/k", "/d", "x");
    assert_int_equal(smolvm_vmm_qemu.spawn(&c, &pid, &start, smolvm_now_ms() + 1000, &err),
                     SMOLVM_EINVAL);
    assert_non_null(strstr(smolvm_error_message(err), "channels are required"));
    err = smolvm_error_free(err);
    base_config(&c, tmpdir, "/k", "/d", "x");
    c.console_fd = ch.vmm_console;
    c.ctl_fd = ch.vmm_ctl;
    c.agent_fd = ch.vmm_agent;
    c.network = SMOLVM_NET_USER;
    c.hostfwds = &fwd;
    c.n_hostfwds = 1;
    assert_int_equal(smolvm_vmm_qemu.spawn(&c, &pid, &start, smolvm_now_ms() + 1000, &err),
                     SMOLVM_EINVAL);
    assert_non_null(strstr(smolvm_error_message(err), "'127.0.0.1,hostfwd=tcp::1-:2'"));
    err = smolvm_error_free(err);
    assert_int_equal(smolvm_vmm_qemu.hostfwd_add(tmpdir, &fwd, smolvm_now_ms() + 1000, &err),
                     SMOLVM_EINVAL);
    err = smolvm_error_free(err);
    /* Nothing runs in tmpdir. */
    assert_int_equal(smolvm_vmm_qemu.pause(tmpdir, smolvm_now_ms() + 1000, &err), SMOLVM_ESTATE);
    err = smolvm_error_free(err);
    chans_close(&ch);
}

static const char *status_of(const char *dir)
{
    static char status[32];
    smolvm_error *err = NULL;
    char *text = NULL;
    json_t *j;

    if (smolvm_vmm_qemu.describe(dir, smolvm_now_ms() + 5000, &text, &err) < 0)
        fail_msg("describe: %s", smolvm_error_message(err));
    j = json_loads(text, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "backend")), "qemu");
    assert_non_null(json_object_get(json_object_get(j, "version"), "qemu"));
    (void)snprintf(status, sizeof(status), "%s",
                   json_string_value(json_object_get(json_object_get(j, "status"), "status")));
    json_decref(j);
    free(text);
    return status;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

    return x < y ? -1 : x > y;
}

/* QEMU with the real kernel but an empty disk: the guest panics and, with panic=0,
 * stays there, which is all the QMP operations need. */
static void test_runs_pause_forward_quit(void **state)
{
    _cleanup_free_ char *dir = make_vm_dir("runs");
    _cleanup_free_ char *disk = path_in(dir, "disk.img");
    _cleanup_free_ char *kernel = path_in(image_dir, "vmlinux");
    _cleanup_free_ char *pidfile = path_in(dir, SMOLVM_VMM_PIDFILE);
    smolvm_vmm_hostfwd fwds[1] = {{"127.0.0.1", 0, 22}};
    smolvm_vmm_hostfwd extra = {NULL, 0, 80};
    smolvm_vmm_config c;
    smolvm_error *err = NULL;
    int64_t times[5];
    int i;

    (void)state;
    if (!have_qemu || !have_kernel) {
        print_message("# skipped: no qemu or no kernel at '%s'\n", kernel);
        skip();
    }
    assert_int_equal(sh("truncate -s 1M '%s'", disk), 0);
    fwds[0].host_port = free_port();
    extra.host_port = free_port();
    base_config(&c, dir, kernel, disk, "console=ttyS0 acpi=off panic=0 quiet");
    c.network = SMOLVM_NET_USER;
    c.hostfwds = fwds;
    c.n_hostfwds = 1;
    c.mac = "52:54:00:12:34:56";

    for (i = 0; i < 5; i++) {
        int64_t pid = 0, pid2 = 0, t0;
        uint64_t start = 0, start2 = 0;
        chans ch;

        chans_open(&ch, &c);
        t0 = smolvm_now_ms();
        if (smolvm_vmm_qemu.spawn(&c, &pid, &start, t0 + 20000, &err) < 0)
            fail_msg("spawn: %s", smolvm_error_message(err));
        times[i] = smolvm_now_ms() - t0;
        chans_vmm_has_them(&ch);
        assert_true(smolvm_pid_alive((pid_t)pid, start));
        assert_int_equal(access(pidfile, F_OK), 0);
        assert_string_equal(status_of(dir), "running");

        if (i == 0) {
            /* A second VMM in the same dir is refused before anything is touched. */
            chans ch2;

            chans_open(&ch2, &c);
            assert_int_equal(
                smolvm_vmm_qemu.spawn(&c, &pid2, &start2, smolvm_now_ms() + 5000, &err),
                SMOLVM_EEXIST);
            chans_close(&ch2);
            err = smolvm_error_free(err);
            assert_string_equal(status_of(dir), "running");

            assert_int_equal(smolvm_vmm_qemu.pause(dir, smolvm_now_ms() + 5000, &err), 0);
            assert_string_equal(status_of(dir), "paused");
            assert_int_equal(smolvm_vmm_qemu.resume(dir, smolvm_now_ms() + 5000, &err), 0);
            assert_string_equal(status_of(dir), "running");

            if (smolvm_vmm_qemu.hostfwd_add(dir, &extra, smolvm_now_ms() + 5000, &err) < 0)
                fail_msg("hostfwd_add: %s", smolvm_error_message(err));
            /* The same host port twice: QEMU cannot bind it again. */
            assert_int_equal(smolvm_vmm_qemu.hostfwd_add(dir, &extra, smolvm_now_ms() + 5000, &err),
                             SMOLVM_EEXIST);
            print_message("# duplicate forward: %s\n", smolvm_error_message(err));
            err = smolvm_error_free(err);
            assert_int_equal(
                smolvm_vmm_qemu.hostfwd_remove(dir, &extra, smolvm_now_ms() + 5000, &err), 0);
            assert_int_equal(
                smolvm_vmm_qemu.hostfwd_remove(dir, &extra, smolvm_now_ms() + 5000, &err),
                SMOLVM_ENOENT);
            err = smolvm_error_free(err);
        }

        if (smolvm_vmm_qemu.quit(dir, smolvm_now_ms() + 5000, &err) < 0)
            fail_msg("quit: %s", smolvm_error_message(err));
        assert_false(smolvm_pid_alive((pid_t)pid, start));
        assert_int_equal(waitpid((pid_t)pid, NULL, 0), (pid_t)pid); /* our child */
        chans_close(&ch);
        assert_int_not_equal(access(pidfile, F_OK), 0);
        assert_int_equal(smolvm_vmm_qemu.quit(dir, smolvm_now_ms() + 1000, &err), SMOLVM_ESTATE);
        err = smolvm_error_free(err);
    }
    qsort(times, 5, sizeof(times[0]), cmp_i64);
    print_message("# spawn to cont (ms): %lld %lld %lld %lld %lld, median %lld\n",
                  (long long)times[0], (long long)times[1], (long long)times[2],
                  (long long)times[3], (long long)times[4], (long long)times[2]);
}

/* disk = "shared": the base image is opened read-only by QEMU (query-block says "ro"),
 * the guest is told to mount it "ro", and its bytes are the same afterwards. */
static void test_read_only_disk(void **state)
{
    _cleanup_free_ char *dir = make_vm_dir("ro");
    _cleanup_free_ char *disk = path_in(dir, "base.img");
    _cleanup_free_ char *kernel = path_in(image_dir, "vmlinux");
    _cleanup_free_ char *qmp_path = path_in(dir, "qmp.sock");
    _cleanup_free_ char *cmdline_path = NULL, *args = NULL;
    smolvm_vmm_config c;
    smolvm_error *err = NULL;
    smolvm_qmp *q = NULL;
    json_t *ret = NULL, *dev;
    int64_t pid = 0;
    uint64_t start = 0;
    bool found = false;
    size_t i, n = 0;
    chans ch;

    (void)state;
    if (!have_qemu || !have_kernel) {
        print_message("# skipped: no qemu or no kernel at '%s'\n", kernel);
        skip();
    }
    assert_int_equal(
        sh("head -c 1048576 /dev/urandom > '%s' && sha256sum '%s' > '%s.sum'", disk, disk, disk),
        0);
    base_config(&c, dir, kernel, disk, "console=ttyS0 acpi=off panic=0 root=/dev/vda rw quiet");
    c.disk_read_only = true;
    chans_open(&ch, &c);
    if (smolvm_vmm_qemu.spawn(&c, &pid, &start, smolvm_now_ms() + 20000, &err) < 0)
        fail_msg("spawn: %s", smolvm_error_message(err));
    chans_vmm_has_them(&ch);

    if (smolvm_qmp_connect(&q, qmp_path, smolvm_now_ms() + 5000, &err) < 0 ||
        smolvm_qmp_execute(q, "query-block", NULL, &ret, smolvm_now_ms() + 5000, &err) < 0)
        fail_msg("query-block: %s", smolvm_error_message(err));
    json_array_foreach (ret, i, dev) {
        json_t *ins = json_object_get(dev, "inserted");
        const char *file = json_string_value(json_object_get(ins, "file"));

        if (file && strcmp(file, disk) == 0) {
            found = true;
            assert_true(json_is_true(json_object_get(ins, "ro")));
        }
    }
    assert_true(found);
    json_decref(ret);
    q = smolvm_qmp_free(q);

    /* The kernel is told to mount it read-only too. */
    cmdline_path = smolvm_strdupf("/proc/%lld/cmdline", (long long)pid);
    assert_int_equal(smolvm_read_file(cmdline_path, 65536, &args, &n, NULL), 0);
    for (i = 0; i + 1 < n; i++)
        if (!args[i])
            args[i] = ' ';
    assert_non_null(strstr(args, " root=/dev/vda ro quiet"));
    assert_null(strstr(args, " rw "));
    assert_non_null(strstr(args, ",readonly=on"));

    if (smolvm_vmm_qemu.quit(dir, smolvm_now_ms() + 5000, &err) < 0)
        fail_msg("quit: %s", smolvm_error_message(err));
    assert_int_equal(waitpid((pid_t)pid, NULL, 0), (pid_t)pid);
    chans_close(&ch);
    assert_int_equal(sh("cd '%s' && sha256sum -c --quiet base.img.sum", dir), 0);
}

static void test_boot_ready_poweroff(void **state)
{
    _cleanup_free_ char *dir = make_vm_dir("boot");
    _cleanup_free_ char *disk = path_in(dir, "disk.qcow2");
    _cleanup_free_ char *config = path_in(dir, "config.img");
    _cleanup_free_ char *kernel = path_in(image_dir, "vmlinux");
    _cleanup_free_ char *cmdline = NULL;
    smolvm_vmm_hostfwd fwds[1] = {{"127.0.0.1", 0, 22}};
    smolvm_vmm_config c;
    smolvm_error *err = NULL;
    int64_t pid = 0, t0, t_spawn, t_ready;
    uint64_t start = 0;
    unsigned long khz = tsc_khz();
    char banner[128], line[256];
    chans ch;

    (void)state;
    if (!have_qemu || !have_rootfs) {
        print_message("# skipped: no qemu or no image (vmlinux + rootfs.ext4) in '%s'\n",
                      image_dir);
        skip();
    }
    assert_int_equal(
        sh("qemu-img create -q -f qcow2 -b '%s/rootfs.ext4' -F raw '%s'", image_dir, disk), 0);
    /* The config disk of docs/guest-protocol.md. */
    assert_int_equal(sh("cd '%s' && ssh-keygen -q -t ed25519 -N '' -C t -f client && "
                        "ssh-keygen -q -t ed25519 -N '' -C t -f hostkey && "
                        "{ printf 'smolvm-config "
                        "1\\nhostname=vm-test\\nauthorized_key=%%s\\nhost_key=%%s\\nend\\n' "
                        "\"$(cat client.pub)\" \"$(base64 -w0 hostkey)\"; } > config.img && "
                        "truncate -s 4096 config.img",
                        dir),
                     0);
    cmdline = smolvm_strdupf("console=ttyS0 reboot=t panic=-1 acpi=off tsc_early_khz=%lu "
                             "root=/dev/vda rw rootfstype=ext4 init=/sbin/smolvm-init quiet "
                             "ip=10.0.2.15::10.0.2.2:255.255.255.0:vm-test:eth0:off",
                             khz);
    assert_non_null(cmdline);
    fwds[0].host_port = free_port();
    base_config(&c, dir, kernel, disk, cmdline);
    c.disk_format = "qcow2";
    c.config_disk = config;
    c.memory_mib = 512;
    c.vcpus = 2;
    c.network = SMOLVM_NET_USER;
    c.hostfwds = fwds;
    c.n_hostfwds = 1;

    chans_open(&ch, &c);
    t0 = smolvm_now_ms();
    if (smolvm_vmm_qemu.spawn(&c, &pid, &start, t0 + 20000, &err) < 0)
        fail_msg("spawn: %s", smolvm_error_message(err));
    t_spawn = smolvm_now_ms() - t0;
    chans_vmm_has_them(&ch);
    if (ctl_line(ch.ctl, "smolvm-ready ", line, sizeof(line), t0 + 90000) < 0)
        fail_msg("no 'smolvm-ready' on hvc0");
    t_ready = smolvm_now_ms() - t0;
    print_message("# spawn %lld ms, ready %lld ms (%s)\n", (long long)t_spawn, (long long)t_ready,
                  line);
    assert_int_equal(
        read_banner(fwds[0].host_port, banner, sizeof(banner), smolvm_now_ms() + 10000), 0);
    assert_memory_equal(banner, "SSH-2.0-", 8);

    /* Power off through hvc0, as a supervisor asks a guest without an agent. */
    assert_int_equal(write(ch.ctl, "poweroff\n", 9), 9);
    assert_int_equal(
        ctl_line(ch.ctl, "smolvm-poweroff", line, sizeof(line), smolvm_now_ms() + 20000), 0);
    assert_int_equal(smolvm_pid_wait_exit((pid_t)pid, start, smolvm_now_ms() + 20000, &err), 0);
    assert_int_equal(waitpid((pid_t)pid, NULL, 0), (pid_t)pid);
    assert_false(qemu_running_in(dir));
    chans_close(&ch);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_available),      cmocka_unit_test(test_missing_kernel),
        cmocka_unit_test(test_bad_config),     cmocka_unit_test(test_runs_pause_forward_quit),
        cmocka_unit_test(test_read_only_disk), cmocka_unit_test(test_boot_ready_poweroff),
    };
    int r;

    r = cmocka_run_group_tests(tests, setup, teardown);
    if (r == 0 && (!have_qemu || !have_rootfs)) {
        printf("# skipped parts: %s\n", !have_qemu ? "no qemu-system-x86_64" : "no guest image");
        return 77;
    }
    return r;
}
