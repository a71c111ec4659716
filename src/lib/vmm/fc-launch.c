/* SPDX-License-Identifier: MIT */
/*
 * Starting a firecracker process for a VM and finding it again (docs/firecracker.md):
 * its config checked, spawned (through the jailer when SMOLVM_JAILER says so) in the
 * VM's dir, its API socket awaited and its version checked; the files it is given
 * (drives under relative names, the vsock socket) linked into its chroot or <dir>/fc;
 * and what a failed start leaves removed. Used to boot (firecracker.c) and to restore
 * (fc-snapshot.c).
 */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent-proto.h"
#include "error.h"
#include "host.h"
#include "proc.h"
#include "vmm/fc-api.h"
#include "vmm/fc-binary.h"
#include "vmm/fc-internal.h"
#include "vmm/fc-jailer.h"
#include "vmm/vmm-internal.h"
#include "vmm/vmm.h"

#define FC_AGENT_PORT_TEXT "1024" /* SMOLVM_AGENT_VSOCK_PORT, for names built at compile time */
#define CLEANUP_KILL_MS 3000
#define SOCKET_CONNECT_TRIES 50 /* bind() to listen() gap only: microseconds */
#define DEAD_CHECK_MS 100       /* only without pidfd (kernel < 5.3) */

/* ---------------------------------------------------------------- validation */

int smolvm_fc_check_config(const smolvm_vmm_config *c, smolvm_error **err)
{
    struct sockaddr_un sa;
    int r;

    if ((r = smolvm_vmm_check_machine(c, err)) < 0)
        return r;
    if (strlen(c->dir) + sizeof("/" FC_API_SOCK) > sizeof(sa.sun_path))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "socket path '%s/" FC_API_SOCK "' is longer than %zu bytes (use a "
                          "shorter state dir)",
                          c->dir, sizeof(sa.sun_path) - 1);
    if (!c->disk_format || strcmp(c->disk_format, "raw") != 0)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "firecracker: disk format '%s' is not supported (firecracker takes "
                          "raw files only)",
                          c->disk_format ? c->disk_format : "(null)");

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

/* The VMM of dir from its pidfile, if it is alive and still ours (its command line
 * names the dir). */
int smolvm_fc_find_vmm(const char *dir, pid_t *pid, uint64_t *start)
{
    return smolvm_pid_find_vmm(dir, SMOLVM_VMM_PIDFILE, pid, start);
}

void smolvm_fc_remove_runtime_files(const char *dir)
{
    static const char *const names[] = {FC_API_SOCK, SMOLVM_VMM_PIDFILE};

    _cleanup_free_ char *files = smolvm_vmm_path(dir, FC_FILES_DIR);

    smolvm_vmm_remove_files(dir, names, SMOLVM_ARRAY_SIZE(names));
    if (files)
        (void)smolvm_rm_rf(files, NULL);
}

int smolvm_fc_api_open(const char *dir, smolvm_fc_api **api, smolvm_error **err)
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
int smolvm_fc_touch(const char *path, smolvm_error **err)
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

void smolvm_fc_launched_done(smolvm_fc_launched *l)
{
    if (l->pidfd >= 0)
        (void)close(l->pidfd);
    l->pidfd = -1;
    l->api = smolvm_fc_api_free(l->api);
    smolvm_fc_jail_done(&l->jail);
}

/* The path jailed firecracker is to be given for host_path: a link in its chroot.
 * Unjailed, host_path itself. */
int smolvm_fc_vmm_path(const smolvm_fc_launched *l, const char *host_path, const char *name,
                       int how, char **out, smolvm_error **err)
{
    if (l->jail.jailer)
        return smolvm_fc_jail_add(&l->jail, host_path, name, how, out, err);
    if (!(*out = strdup(host_path)))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    return 0;
}

/* A drive's path for firecracker: the relative name, which is a link in its chroot
 * (jailed) or in <dir>/fc (unjailed: a symbolic link to host_path). */
static int drive_path(const smolvm_fc_launched *l, const char *dir, const char *host_path,
                      const char *name, int how, char **out, smolvm_error **err)
{
    _cleanup_free_ char *linked = NULL, *link = NULL;
    int r;

    if (l->jail.jailer) {
        if ((r = smolvm_fc_jail_add(&l->jail, host_path, name, how, &linked, err)) < 0)
            return r;
    } else {
        if (!(link = smolvm_strdupf("%s/" FC_FILES_DIR "/%s", dir, name)))
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        (void)unlink(link);
        if (symlink(host_path, link) < 0)
            return smolvm_err_errno(err, errno, "link '%s'", link);
    }
    if (!(*out = strdup(name)))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    return 0;
}

void smolvm_fc_drives_done(smolvm_fc_drives *d)
{
    free(d->disk);
    free(d->config);
    free(d->overlay);
}

/* The VM's drives made available to firecracker under their relative names. The root
 * is read-only under an overlay or when it is the shared image itself. */
int smolvm_fc_link_drives(const smolvm_vmm_config *c, const smolvm_fc_launched *l,
                          smolvm_fc_drives *d, smolvm_error **err)
{
    bool ro = c->overlay_disk || c->disk_read_only;
    int r;

    *d = (smolvm_fc_drives){0};
    if ((r = drive_path(l, c->dir, c->disk, "rootfs", ro ? SMOLVM_FC_JAIL_RO : SMOLVM_FC_JAIL_RW,
                        &d->disk, err)) < 0 ||
        (c->config_disk && (r = drive_path(l, c->dir, c->config_disk, "config", SMOLVM_FC_JAIL_RO,
                                           &d->config, err)) < 0) ||
        (c->overlay_disk && (r = drive_path(l, c->dir, c->overlay_disk, "overlay",
                                            SMOLVM_FC_JAIL_RW_OWN, &d->overlay, err)) < 0)) {
        smolvm_fc_drives_done(d);
        return r;
    }
    return 0;
}

/* Jailed, the agent's listener (the supervisor's socket at <vsock_uds>_1024) linked
 * into the chroot, where firecracker connects to /vsock.sock_1024 (a link to a socket's
 * inode reaches the same listener), and the device's socket path for firecracker. */
int smolvm_fc_vsock_path(const smolvm_vmm_config *c, const smolvm_fc_launched *l, char **out,
                         smolvm_error **err)
{
    _cleanup_free_ char *listener = NULL, *linked = NULL;
    int r;

    if (!l->jail.jailer) {
        if (!(*out = strdup(c->vsock_uds)))
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        return 0;
    }
    listener = smolvm_strdupf("%s_%d", c->vsock_uds, SMOLVM_AGENT_VSOCK_PORT);
    if (!listener)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if ((r = smolvm_fc_jail_add(&l->jail, listener, FC_VSOCK_NAME "_" FC_AGENT_PORT_TEXT,
                                SMOLVM_FC_JAIL_RW_OWN, &linked, err)) < 0)
        return r;
    if (!(*out = strdup("/" FC_VSOCK_NAME)))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    return 0;
}

/* Wait (inotify on the dir + the VMM's pidfd) until the API socket exists. */
static int wait_socket(const char *dir, const char *sock, int ino, const smolvm_fc_launched *l,
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
int smolvm_fc_launch(const smolvm_vmm_config *cfg, smolvm_fc_launched *l, int64_t deadline,
                     smolvm_error **err)
{
    _cleanup_free_ char *bin = NULL, *sock = NULL, *vmm_log = NULL, *pidfile = NULL,
                        *pidtext = NULL, *version = NULL, *watch = NULL, *jail_sock = NULL,
                        *files = NULL;
    _cleanup_close_ int ino = -1;
    char id[65];
    pid_t held;
    uint64_t held_start;
    int r, tries;

    *l = (smolvm_fc_launched){.pidfd = -1};
    if ((r = smolvm_fc_check_config(cfg, err)) < 0)
        return r;
    if ((r = smolvm_fc_find_binary(&bin, err)) < 0)
        return r;
    if ((r = smolvm_fc_jail_config(&l->jail, bin, cfg->vm_id, cfg->dir,
                                   cfg->confine ? cfg->confine->uid : 0, err)) < 0)
        return r;

    sock = smolvm_vmm_path(cfg->dir, FC_API_SOCK);
    vmm_log = smolvm_vmm_path(cfg->dir, SMOLVM_VMM_STDERR_LOG);
    pidfile = smolvm_vmm_path(cfg->dir, SMOLVM_VMM_PIDFILE);
    if (!sock || !vmm_log || !pidfile)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    /* Never pull the socket from under a VMM that still runs in this dir. */
    if (smolvm_fc_find_vmm(cfg->dir, &held, &held_start))
        return smolvm_err(err, SMOLVM_EEXIST, "a vmm (pid %ld) is already running in '%s'",
                          (long)held, cfg->dir);
    smolvm_fc_remove_runtime_files(cfg->dir);
    smolvm_fc_jail_remove(cfg->dir);
    /* This boot's complaints, from the first byte. */
    if ((r = smolvm_fc_touch(vmm_log, err)) < 0)
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
    } else {
        if (!(watch = strdup(cfg->dir)) || !(files = smolvm_vmm_path(cfg->dir, FC_FILES_DIR)))
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        if (mkdir(files, 0700) < 0)
            return smolvm_err_errno(err, errno, "create '%s'", files);
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
            .cwd = files, /* unjailed: where its drives' links are; the jailer chdirs */
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

        smolvm_fc_remove_runtime_files(cfg->dir);
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
int smolvm_fc_fail_launched(const smolvm_vmm_config *cfg, smolvm_fc_launched *l, int r,
                            smolvm_error **err)
{
    _cleanup_free_ char *tail = NULL;

    if (l->pid <= 0) {
        /* Refused before anything was spawned: the dir may belong to a live VMM. */
        if (l->jail_made) {
            smolvm_fc_remove_runtime_files(cfg->dir);
            smolvm_fc_jail_remove(cfg->dir);
        }
        smolvm_fc_launched_done(l);
        return r;
    }
    if (l->start)
        (void)smolvm_pid_kill(l->pid, l->start, smolvm_now_ms() + CLEANUP_KILL_MS, NULL);
    (void)waitpid(l->pid, NULL, 0); /* our child: reaped here */
    smolvm_fc_launched_done(l);
    smolvm_fc_remove_runtime_files(cfg->dir);
    smolvm_fc_jail_remove(cfg->dir);
    tail = console_tail(cfg->dir);
    if (tail && *tail && r != SMOLVM_EINVAL)
        smolvm_err_hint(err, "console: %s", tail);
    return r;
}
