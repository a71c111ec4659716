/* SPDX-License-Identifier: MIT */
/*
 * The Firecracker backend: one firecracker process per VM, configured over its REST
 * API (fc-api.c), readiness from the guest's serial console (firecracker's stdout, the
 * VM's console.log). What is verified against real firecracker and what only against
 * the API contract is in docs/firecracker.md.
 */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "context.h"
#include "error.h"
#include "tool.h"
#include "host.h"
#include "proc.h"
#include "agent-proto.h"
#include "vmm/fc-api.h"
#include "vmm/fc-binary.h"
#include "vmm/fc-jailer.h"
#include "vmm/vmm-internal.h"
#include "vmm/vmm.h"

#define FC_API_SOCK "fc.sock"
#define FC_METRICS "fc-metrics.json"
#define FC_GUEST_CID 3 /* the first CID a guest may have (0-2 are reserved) */
#define FC_VSOCK_NAME "vsock.sock"
#define FC_AGENT_PORT_TEXT "1024" /* SMOLVM_AGENT_VSOCK_PORT, for names built at compile time */
#define CLEANUP_KILL_MS 3000
#define LINE_MAX_BYTES 512
#define SOCKET_CONNECT_TRIES 50 /* bind() to listen() gap only: microseconds */
#define DEAD_CHECK_MS 100       /* only without pidfd (kernel < 5.3) */

/* ---------------------------------------------------------------- validation */

static int check_config(const smolvm_vmm_config *c, smolvm_error **err)
{
    struct sockaddr_un sa;

    if (!c->dir || c->dir[0] != '/')
        return smolvm_err(err, SMOLVM_EINVAL, "vmm: the vm dir must be an absolute path");
    if (strlen(c->dir) + sizeof("/" FC_API_SOCK) > sizeof(sa.sun_path))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "socket path '%s/" FC_API_SOCK "' is longer than %zu bytes (use a "
                          "shorter state dir)",
                          c->dir, sizeof(sa.sun_path) - 1);
    if (!c->kernel || !c->disk || !c->cmdline)
        return smolvm_err(err, SMOLVM_EINVAL, "vmm: kernel, disk and cmdline are required");
    if (!c->disk_format || strcmp(c->disk_format, "raw") != 0)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "firecracker: disk format '%s' is not supported (firecracker takes "
                          "raw files only)",
                          c->disk_format ? c->disk_format : "(null)");
    if (c->vcpus < SMOLVM_VCPUS_MIN || c->vcpus > SMOLVM_VCPUS_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "vmm: vcpus %u out of range %d..%d", c->vcpus,
                          SMOLVM_VCPUS_MIN, SMOLVM_VCPUS_MAX);
    if (c->memory_mib < SMOLVM_MEMORY_MIN || c->memory_mib > SMOLVM_MEMORY_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "vmm: memory %u MiB out of range %d..%d",
                          c->memory_mib, SMOLVM_MEMORY_MIN, SMOLVM_MEMORY_MAX);
    if (c->accel != SMOLVM_ACCEL_KVM)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "firecracker runs only with accel 'kvm' (use backend 'qemu' for "
                          "tcg)");
    if (strlen(c->cmdline) > 2048)
        return smolvm_err(err, SMOLVM_EINVAL, "vmm: kernel command line longer than 2048");
    if (c->overlay_mib > 1024 * 1024)
        return smolvm_err(err, SMOLVM_EINVAL, "vmm: overlay size %u MiB above 1 TiB",
                          c->overlay_mib);
    switch (c->network) {
    case SMOLVM_NET_NONE: return 0;
    case SMOLVM_NET_USER:
        return smolvm_err(err, SMOLVM_EINVAL,
                          "firecracker has no user-mode networking (use "
                          "network 'nat' or 'none', or backend 'qemu')");
    case SMOLVM_NET_NAT:
        if (!smolvm_vmm_valid_ifname(c->tap_name))
            return smolvm_err(err, SMOLVM_EINVAL, "vmm: invalid tap name '%s'",
                              c->tap_name ? c->tap_name : "(null)");
        if (!smolvm_vmm_valid_mac(c->mac))
            return smolvm_err(err, SMOLVM_EINVAL, "vmm: invalid mac '%s'",
                              c->mac ? c->mac : "(null)");
        return 0;
    default: return smolvm_err(err, SMOLVM_EINVAL, "vmm: network must be resolved");
    }
}

/* Firecracker's --id: ASCII alphanumeric and '-', 1..64. */
static void instance_id(const char *vm_id, char out[65])
{
    size_t i;

    for (i = 0; vm_id && vm_id[i] && i < 64; i++) {
        char c = vm_id[i];

        out[i] =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ? c : '-';
    }
    if (i == 0)
        out[i++] = 'x';
    out[i] = '\0';
}

/* A sparse raw file with an empty ext4 on it: costs milliseconds whatever its size. */
static int create_overlay(const char *path, unsigned mib, int64_t deadline, smolvm_error **err)
{
    _cleanup_close_ int fd = -1;
    char *argv[] = {"mkfs.ext4",    "-q", "-F",
                    "-m",           "0",  "-L",
                    "smolvm-upper", "-E", "lazy_itable_init=1,lazy_journal_init=1",
                    (char *)path,   NULL};
    int r;

    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno == EEXIST)
        return 0;
    if (fd < 0)
        return smolvm_err_errno(err, errno, "create overlay disk '%s'", path);
    if (ftruncate(fd, (off_t)(mib ? mib : SMOLVM_VMM_OVERLAY_MIB) << 20) < 0) {
        r = smolvm_err_errno(err, errno, "size overlay disk '%s'", path);
        (void)unlink(path);
        return r;
    }
    r = smolvm_tool_run(argv, deadline, NULL, err);
    if (r < 0) {
        (void)unlink(path);
        return smolvm_err_wrap(err, "create overlay disk '%s'", path);
    }
    return 0;
}

/* ---------------------------------------------------------------- process */

/* The VMM of dir from its pidfile, if it is alive and still ours (its command line
 * names the dir). */
static int find_vmm(const char *dir, pid_t *pid, uint64_t *start)
{
    return smolvm_pid_find_vmm(dir, SMOLVM_VMM_PIDFILE, pid, start);
}

static void remove_runtime_files(const char *dir)
{
    static const char *const names[] = {FC_API_SOCK, SMOLVM_VMM_PIDFILE};

    smolvm_vmm_remove_files(dir, names, SMOLVM_ARRAY_SIZE(names));
}

static int api_open(const char *dir, smolvm_fc_api **api, smolvm_error **err)
{
    _cleanup_free_ char *sock = smolvm_vmm_path(dir, FC_API_SOCK);

    if (!sock)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (access(sock, F_OK) < 0)
        return smolvm_err(err, SMOLVM_ESTATE,
                          "no firecracker api socket in '%s' (is the vm "
                          "running?)",
                          dir);
    return smolvm_fc_api_new(api, sock, err);
}

/* Create (or truncate) a file firecracker will open but not create. */
static int touch(const char *path, smolvm_error **err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

    if (fd < 0)
        return smolvm_err_errno(err, errno, "create '%s'", path);
    (void)close(fd);
    return 0;
}

/* The last lines of vmm.log (firecracker's stderr, where its own complaints land
 * before its logger is configured), "|"-joined. */
static char *console_tail(const char *dir)
{
    _cleanup_free_ char *path = smolvm_vmm_path(dir, SMOLVM_VMM_STDERR_LOG);

    return path ? smolvm_file_tail(path, 0, 1023, 64, "|") : NULL;
}

typedef struct launched {
    pid_t pid;
    uint64_t start;
    int pidfd;
    smolvm_fc_api *api;
    smolvm_fc_jail jail; /* jail.jailer NULL: not jailed */
    int jail_made;       /* the jail dir was (re)made for this launch */
} launched;

static void launched_done(launched *l)
{
    if (l->pidfd >= 0)
        (void)close(l->pidfd);
    l->pidfd = -1;
    l->api = smolvm_fc_api_free(l->api);
    smolvm_fc_jail_done(&l->jail);
}

/* The path jailed firecracker is to be given for host_path: a link in its chroot.
 * Unjailed, host_path itself. */
static int vmm_path(const launched *l, const char *host_path, const char *name, int how, char **out,
                    smolvm_error **err)
{
    if (l->jail.jailer)
        return smolvm_fc_jail_add(&l->jail, host_path, name, how, out, err);
    if (!(*out = strdup(host_path)))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    return 0;
}

/* Wait (inotify on the dir + the VMM's pidfd) until the API socket exists. */
static int wait_socket(const char *dir, const char *sock, int ino, const launched *l,
                       int64_t deadline, smolvm_error **err)
{
    for (;;) {
        struct pollfd p[2] = {{.fd = ino, .events = POLLIN}, {.fd = l->pidfd, .events = POLLIN}};
        struct stat st;
        char evbuf[4096];
        int w;

        if (stat(sock, &st) == 0 && S_ISSOCK(st.st_mode))
            return 0;
        if (l->pidfd < 0 && !smolvm_pid_alive(l->pid, l->start))
            return smolvm_err(err, SMOLVM_EVMM,
                              "firecracker exited before its api socket "
                              "was up");
        w = poll(p, l->pidfd >= 0 ? 2 : 1,
                 l->pidfd >= 0 ? smolvm_remaining_ms(deadline)
                               : (smolvm_remaining_ms(deadline) < DEAD_CHECK_MS
                                      ? smolvm_remaining_ms(deadline)
                                      : DEAD_CHECK_MS));
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return smolvm_err_errno(err, errno, "poll");
        if (p[1].revents & POLLIN)
            return smolvm_err(err, SMOLVM_EVMM,
                              "firecracker exited before its api socket "
                              "was up");
        if (p[0].revents & POLLIN)
            while (read(ino, evbuf, sizeof(evbuf)) > 0)
                ;
        if (w == 0 && smolvm_remaining_ms(deadline) == 0)
            return smolvm_err(err, SMOLVM_ETIMEDOUT,
                              "firecracker did not create its api socket in '%s' in time", dir);
    }
}

/* Spawn firecracker in cfg->dir (through the jailer when SMOLVM_JAILER says so) and
 * return once its API answers, its version checked. */
static int launch(const smolvm_vmm_config *cfg, int restoring, launched *l, int64_t deadline,
                  smolvm_error **err)
{
    _cleanup_free_ char *bin = NULL, *sock = NULL, *vmm_log = NULL, *pidfile = NULL,
                        *pidtext = NULL, *version = NULL, *watch = NULL, *jail_sock = NULL;
    _cleanup_close_ int ino = -1;
    char id[65];
    pid_t held;
    uint64_t held_start;
    int r, tries;

    *l = (launched){.pidfd = -1};
    if ((r = check_config(cfg, err)) < 0)
        return r;
    if ((r = smolvm_fc_find_binary(&bin, err)) < 0)
        return r;
    if ((r = smolvm_fc_jail_config(&l->jail, bin, cfg->vm_id, cfg->dir,
                                   cfg->confine ? cfg->confine->uid : 0, err)) < 0)
        return r;
    if (l->jail.jailer && restoring)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "jailer: restoring a snapshot in a jail is not supported yet "
                          "(unset " SMOLVM_FC_JAILER_ENV ")");
    sock = smolvm_vmm_path(cfg->dir, FC_API_SOCK);
    vmm_log = smolvm_vmm_path(cfg->dir, SMOLVM_VMM_STDERR_LOG);
    pidfile = smolvm_vmm_path(cfg->dir, SMOLVM_VMM_PIDFILE);
    if (!sock || !vmm_log || !pidfile)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    /* Never pull the socket from under a VMM that still runs in this dir. */
    if (find_vmm(cfg->dir, &held, &held_start))
        return smolvm_err(err, SMOLVM_EEXIST, "a vmm (pid %ld) is already running in '%s'",
                          (long)held, cfg->dir);
    remove_runtime_files(cfg->dir);
    smolvm_fc_jail_remove(cfg->dir);
    /* This boot's complaints, from the first byte. */
    if ((r = touch(vmm_log, err)) < 0)
        return r;
    if (l->jail.jailer) {
        /* Jailed firecracker binds <root><dir>/fc.sock, which it knows as <dir>/fc.sock:
         * its command line names the dir, as smolvm_pid_find_vmm needs, and the
         * socket is found through the link <dir>/fc.sock like an unjailed one. */
        l->jail_made = 1;
        if ((r = smolvm_fc_jail_prepare(&l->jail, cfg->dir, err)) < 0)
            return r;
        watch = smolvm_strdupf("%s%s", l->jail.root, cfg->dir);
        jail_sock = smolvm_strdupf("%s%s/" FC_API_SOCK, l->jail.root, cfg->dir);
        if (!watch || !jail_sock)
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        if (symlink(jail_sock, sock) < 0)
            return smolvm_err_errno(err, errno, "jailer: link '%s'", sock);
        if (cfg->network == SMOLVM_NET_NAT &&
            (r = smolvm_fc_jail_give_tap(&l->jail, cfg->tap_name, err)) < 0)
            return r;
    } else if (!(watch = strdup(cfg->dir))) {
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }

    ino = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    if (ino < 0)
        return smolvm_err_errno(err, errno, "inotify_init1");
    if (inotify_add_watch(ino, watch, IN_CREATE) < 0)
        return smolvm_err_errno(err, errno, "inotify_add_watch '%s'", watch);

    instance_id(cfg->vm_id, id);
    {
        /* stdout is the guest's serial console, into the supervisor's pipe; stderr (the
         * jailer's complaints, then firecracker's until its logger is configured) goes
         * to vmm.log. A child of the caller, dying with it. */
        char *plain[] = {bin, "--api-sock", sock, "--id", id, NULL};
        char **argv = l->jail.jailer ? smolvm_fc_jail_argv(&l->jail, sock) : plain;
        smolvm_spawn_req req = {
            .argv = argv,
            .log_path = vmm_log,
            .stdout_fd = cfg->console_fd,
            .detached = false,
        };

        if (!argv)
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        r = smolvm_spawn(&req, &l->pid, err);
        if (l->jail.jailer)
            smolvm_fc_jail_argv_free(argv);
        if (r < 0)
            return smolvm_err_wrap(err, "spawn '%s'", l->jail.jailer ? l->jail.jailer : bin);
    }
    pidtext = smolvm_strdupf("%ld\n", (long)l->pid);
    if (!pidtext)
        r = smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (r == 0)
        r = smolvm_write_file_atomic(pidfile, pidtext, strlen(pidtext), 0600, err);
    if (r == 0 && smolvm_pid_start_time(l->pid, &l->start, NULL) < 0) {
        _cleanup_free_ char *tail = console_tail(cfg->dir);

        remove_runtime_files(cfg->dir);
        return smolvm_err(err, SMOLVM_EVMM, "firecracker exited: %s", tail ? tail : "no output");
    }
    if (r < 0)
        return r;
    /* Opened after the start time is known: checked once more, so it is our process. */
    l->pidfd = smolvm_pidfd_open(l->pid);
    if (l->pidfd >= 0 && !smolvm_pid_alive(l->pid, l->start))
        return smolvm_err(err, SMOLVM_EVMM, "firecracker exited right after the spawn");

    if ((r = wait_socket(cfg->dir, sock, ino, l, deadline, err)) < 0)
        return r;
    if ((r = smolvm_fc_api_new(&l->api, sock, err)) < 0)
        return r;
    /* The socket file appears at bind(), a moment before listen(): a refused connection
     * in that gap is retried a bounded number of times, waiting on the pidfd. */
    for (tries = 0;; tries++) {
        smolvm_error *e = NULL;

        r = smolvm_fc_version(l->api, &version, deadline, &e);
        if (r != SMOLVM_ESTATE || tries >= SOCKET_CONNECT_TRIES) {
            if (r < 0 && err && !*err)
                *err = e;
            else
                smolvm_error_free(e);
            break;
        }
        smolvm_error_free(e);
        if (l->pidfd >= 0) {
            struct pollfd p = {.fd = l->pidfd, .events = POLLIN};

            if (poll(&p, 1, 2) > 0)
                return smolvm_err(err, SMOLVM_EVMM, "firecracker exited before it answered");
        }
    }
    if (r < 0)
        return r;
    if (smolvm_fc_version_cmp(version, SMOLVM_FC_MIN_VERSION) < 0)
        return smolvm_err(err, SMOLVM_EHOST,
                          "'%s' is firecracker %s, older than " SMOLVM_FC_MIN_VERSION, bin,
                          version);
    return 0;
}

/* After a failed start: kill firecracker, remove what it left, say what it said. */
static int fail_launched(const smolvm_vmm_config *cfg, launched *l, int r, smolvm_error **err)
{
    _cleanup_free_ char *tail = NULL;

    if (l->pid <= 0) {
        /* Refused before anything was spawned: the dir may belong to a live VMM. */
        if (l->jail_made) {
            remove_runtime_files(cfg->dir);
            smolvm_fc_jail_remove(cfg->dir);
        }
        launched_done(l);
        return r;
    }
    if (l->start)
        (void)smolvm_pid_kill(l->pid, l->start, smolvm_now_ms() + CLEANUP_KILL_MS, NULL);
    (void)waitpid(l->pid, NULL, 0); /* our child: reaped here */
    launched_done(l);
    remove_runtime_files(cfg->dir);
    smolvm_fc_jail_remove(cfg->dir);
    tail = console_tail(cfg->dir);
    if (tail && *tail && r != SMOLVM_EINVAL)
        smolvm_err_hint(err, "console: %s", tail);
    return r;
}

static int configure(const smolvm_vmm_config *c, const launched *l, int64_t deadline,
                     smolvm_error **err)
{
    _cleanup_free_ char *host_log = smolvm_vmm_path(c->dir, SMOLVM_VMM_STDERR_LOG);
    _cleanup_free_ char *host_metrics = smolvm_vmm_path(c->dir, FC_METRICS);
    _cleanup_free_ char *cmdline = NULL, *log = NULL, *metrics = NULL, *kernel = NULL, *disk = NULL,
                        *config = NULL, *overlay = NULL;
    smolvm_fc_api *api = l->api;
    smolvm_fc_drive root = {"rootfs", NULL, 1, 0};
    int r;

    if (!host_log || !host_metrics)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (c->overlay_disk || c->disk_read_only) {
        cmdline = smolvm_vmm_ro_cmdline(c->cmdline, !c->overlay_disk ? NULL
                                                    : c->config_disk ? "/dev/vdc"
                                                                     : "/dev/vdb");
        root.read_only = 1;
    } else {
        cmdline = strdup(c->cmdline);
    }
    if (!cmdline)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    /* vmm.log exists since launch() and holds firecracker's stderr so far: not
     * truncated again. */
    if ((r = touch(host_metrics, err)) < 0)
        return r;
    /* Jailed, each file is linked into the chroot; the logs keep their place in the
     * dir (a hard link is the same file). */
    if ((r = vmm_path(l, host_log, SMOLVM_VMM_STDERR_LOG, SMOLVM_FC_JAIL_RW_OWN, &log, err)) < 0 ||
        (r = vmm_path(l, host_metrics, FC_METRICS, SMOLVM_FC_JAIL_RW_OWN, &metrics, err)) < 0 ||
        (r = vmm_path(l, c->kernel, "vmlinux", SMOLVM_FC_JAIL_RO, &kernel, err)) < 0 ||
        (r = vmm_path(l, c->disk, "rootfs", root.read_only ? SMOLVM_FC_JAIL_RO : SMOLVM_FC_JAIL_RW,
                      &disk, err)) < 0 ||
        (c->config_disk &&
         (r = vmm_path(l, c->config_disk, "config", SMOLVM_FC_JAIL_RO, &config, err)) < 0) ||
        (c->overlay_disk &&
         (r = vmm_path(l, c->overlay_disk, "overlay", SMOLVM_FC_JAIL_RW_OWN, &overlay, err)) < 0))
        return r;
    root.path = disk;
    if ((r = smolvm_fc_put_logger(api, log, "Warning", deadline, err)) < 0 ||
        (r = smolvm_fc_put_metrics(api, metrics, deadline, err)) < 0 ||
        (r = smolvm_fc_put_machine_config(api, c->vcpus, c->memory_mib, deadline, err)) < 0 ||
        (r = smolvm_fc_put_boot_source(api, kernel, cmdline, deadline, err)) < 0 ||
        (r = smolvm_fc_put_drive(api, &root, deadline, err)) < 0)
        return r;
    /* Drives after the root appear as /dev/vdb, /dev/vdc in the order they are added. */
    if (c->config_disk) {
        smolvm_fc_drive d = {"config", config, 0, 1};

        if ((r = smolvm_fc_put_drive(api, &d, deadline, err)) < 0)
            return r;
    }
    if (c->overlay_disk) {
        smolvm_fc_drive d = {"overlay", overlay, 0, 0};

        if ((r = smolvm_fc_put_drive(api, &d, deadline, err)) < 0)
            return r;
    }
    if (c->network == SMOLVM_NET_NAT &&
        (r = smolvm_fc_put_network_interface(api, "eth0", c->tap_name, c->mac, deadline, err)) < 0)
        return r;
    /* The agent's channel: guest-initiated connections to host port P come out at
     * <uds>_P, where the supervisor listens. */
    if (c->vsock_uds) {
        _cleanup_free_ char *uds = NULL, *listener = NULL, *linked = NULL;

        if (l->jail.jailer) {
            /* Chrooted, firecracker connects to /vsock.sock_<port>: the supervisor's
             * listening socket, hard-linked into the jail (a link to a socket's inode
             * reaches the same listener) and given to the jail uid. */
            listener = smolvm_strdupf("%s_%d", c->vsock_uds, SMOLVM_AGENT_VSOCK_PORT);
            uds = strdup("/" FC_VSOCK_NAME);
            if (!listener || !uds)
                return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
            if ((r = smolvm_fc_jail_add(&l->jail, listener, FC_VSOCK_NAME "_" FC_AGENT_PORT_TEXT,
                                        SMOLVM_FC_JAIL_RW_OWN, &linked, err)) < 0)
                return r;
        } else if (!(uds = strdup(c->vsock_uds))) {
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        }
        if ((r = smolvm_fc_put_vsock(api, FC_GUEST_CID, uds, deadline, err)) < 0)
            return r;
    }
    /* Seeds the guest's entropy pool, so sshd's first getrandom() does not block. */
    return smolvm_fc_put_entropy(api, deadline, err);
}

/* ---------------------------------------------------------------- ops */

static int fc_available(int accel, smolvm_error **err)
{
    _cleanup_free_ char *bin = NULL, *version = NULL;
    const char *why = NULL;
    int kvm = smolvm_host_kvm_usable(&why), r;

    if (!kvm)
        return smolvm_err(err, SMOLVM_EHOST,
                          "backend 'firecracker' needs kvm: %s (use backend = \"qemu\", "
                          "which also runs under tcg)",
                          why);
    if (accel == SMOLVM_ACCEL_TCG)
        return smolvm_err(err, SMOLVM_EHOST,
                          "backend 'firecracker' cannot run with accel "
                          "'tcg' (use accel = \"kvm\" or \"auto\")");
    if ((r = smolvm_fc_find_binary(&bin, err)) < 0)
        return smolvm_err_wrap(err, "backend 'firecracker'");
    if ((r = smolvm_fc_binary_version(bin, &version, 0, err)) < 0)
        return smolvm_err_wrap(err, "backend 'firecracker'");
    return 0;
}

static int fc_spawn(const smolvm_vmm_config *cfg, int64_t *out_pid, uint64_t *out_start,
                    int64_t deadline, smolvm_error **err)
{
    launched l;
    int r;

    if (cfg->overlay_disk && (r = check_config(cfg, err)) == 0 &&
        (r = create_overlay(cfg->overlay_disk, cfg->overlay_mib, deadline, err)) < 0)
        return r;
    r = launch(cfg, 0, &l, deadline, err);
    if (r == 0)
        r = configure(cfg, &l, deadline, err);
    if (r == 0)
        r = smolvm_fc_action(l.api, "InstanceStart", deadline, err);
    if (r < 0)
        return fail_launched(cfg, &l, r, err);
    *out_pid = l.pid;
    *out_start = l.start;
    launched_done(&l);
    return 0;
}

static int fc_restore(const smolvm_vmm_config *cfg, const smolvm_vmm_snapshot *snap,
                      int64_t *out_pid, uint64_t *out_start, int64_t deadline, smolvm_error **err)
{
    _cleanup_free_ char *log = smolvm_vmm_path(cfg->dir, SMOLVM_VMM_STDERR_LOG);
    launched l;
    int r;

    if (!log)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    r = launch(cfg, 1, &l, deadline, err);
    if (r == 0)
        r = smolvm_fc_put_logger(l.api, log, "Warning", deadline, err);
    /* The snapshot names the vsock socket of the VM it was taken from; the restored
     * guest's agent must reach this VM's supervisor, which listens at cfg's. */
    if (r == 0)
        r = smolvm_fc_snapshot_load(l.api, snap->state_path, snap->mem_path, 1, cfg->vsock_uds,
                                    deadline, err);
    if (r < 0)
        return fail_launched(cfg, &l, r, err);
    *out_pid = l.pid;
    *out_start = l.start;
    launched_done(&l);
    return 0;
}

static int fc_simple(const char *dir, int paused, int64_t deadline, smolvm_error **err)
{
    _cleanup_(smolvm_fc_api_freep) smolvm_fc_api *api = NULL;
    int r;

    if ((r = api_open(dir, &api, err)) < 0)
        return r;
    return smolvm_fc_patch_vm(api, paused, deadline, err);
}

static int fc_pause(const char *dir, int64_t deadline, smolvm_error **err)
{
    return fc_simple(dir, 1, deadline, err);
}

static int fc_resume(const char *dir, int64_t deadline, smolvm_error **err)
{
    return fc_simple(dir, 0, deadline, err);
}

static int fc_poweroff(const char *dir, int64_t deadline, smolvm_error **err)
{
    _cleanup_(smolvm_fc_api_freep) smolvm_fc_api *api = NULL;
    int r;

    if ((r = api_open(dir, &api, err)) < 0)
        return r;
    /* The guest init powers off on Ctrl-Alt-Del (SIGINT to PID 1); firecracker exits
     * when the guest resets. */
    return smolvm_fc_action(api, "SendCtrlAltDel", deadline, err);
}

/* Firecracker has no quit request: SIGTERM (default action: exit), then wait. */
static int fc_quit(const char *dir, int64_t deadline, smolvm_error **err)
{
    pid_t pid;
    uint64_t start;

    if (!find_vmm(dir, &pid, &start))
        return smolvm_err(err, SMOLVM_ESTATE, "no firecracker running in '%s'", dir);
    if (kill(pid, SIGTERM) < 0 && errno != ESRCH)
        return smolvm_err_errno(err, errno, "kill %ld", (long)pid);
    if (smolvm_pid_wait_exit(pid, start, deadline, err) < 0)
        return SMOLVM_ETIMEDOUT;
    remove_runtime_files(dir);
    smolvm_fc_jail_remove(dir);
    return 0;
}

static int fc_snapshot(const char *dir, const smolvm_vmm_snapshot *snap, int64_t deadline,
                       smolvm_error **err)
{
    _cleanup_(smolvm_fc_api_freep) smolvm_fc_api *api = NULL;
    int r;

    if (smolvm_fc_jailed(dir))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "jailer: snapshots of a jailed vm are not supported yet (start it "
                          "without " SMOLVM_FC_JAILER_ENV ")");
    if ((r = api_open(dir, &api, err)) < 0)
        return r;
    /* Firecracker snapshots only a paused VM. */
    if ((r = smolvm_fc_patch_vm(api, 1, deadline, err)) < 0)
        return r;
    if (!snap->mem_path)
        return smolvm_err(err, SMOLVM_EINVAL, "firecracker: a snapshot needs a memory file");
    return smolvm_fc_snapshot_create(api, snap->state_path, snap->mem_path, deadline, err);
}

static int fc_describe(const char *dir, int64_t deadline, char **out, smolvm_error **err)
{
    _cleanup_(smolvm_fc_api_freep) smolvm_fc_api *api = NULL;
    json_t *info = NULL, *machine = NULL, *obj;
    _cleanup_free_ char *version = NULL;
    int r;

    if ((r = api_open(dir, &api, err)) < 0)
        return r;
    if ((r = smolvm_fc_describe(api, &info, deadline, err)) < 0)
        return r;
    r = smolvm_fc_version(api, &version, deadline, err);
    if (r == 0)
        r = smolvm_fc_api_call(api, "GET", "/machine-config", NULL, &machine, deadline, err);
    if (r < 0) {
        json_decref(info);
        return r;
    }
    obj = json_pack("{s:s, s:o, s:s, s:o*}", "backend", "firecracker", "instance", info, "version",
                    version, "machine", machine);
    return smolvm_vmm_describe_text(out, obj, err);
}

const smolvm_vmm_ops smolvm_vmm_firecracker = {
    .name = "firecracker",
    .available = fc_available,
    .spawn = fc_spawn,
    .pause = fc_pause,
    .resume = fc_resume,
    .quit = fc_quit,
    .hostfwd_add = NULL, /* no user networking: forwards are nftables DNAT (network nat) */
    .hostfwd_remove = NULL,
    .describe = fc_describe,
    .poweroff = fc_poweroff,
    .snapshot = fc_snapshot,
    .restore = fc_restore,
};
