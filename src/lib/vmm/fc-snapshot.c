/* SPDX-License-Identifier: MIT */
/*
 * Firecracker snapshots (docs/firecracker.md, "Snapshots"): a paused VM written to a
 * state and a memory file, and a fresh firecracker continuing from them, in this VM's
 * dir or jail, with this VM's drives, vsock socket and TAP. Jailed, the files go into
 * and come out of the chroot here; what comes out was written by the jail's uid and
 * is checked before it is ours.
 */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "vmm/fc-api.h"
#include "vmm/fc-internal.h"
#include "vmm/fc-jailer.h"
#include "vmm/vmm-internal.h"
#include "vmm/vmm.h"

/* A file jailed firecracker wrote (from, in its chroot) moved to `to` (created, must
 * not exist) as ours with mode. Its writer is not trusted: it must be a plain file of
 * the jail uid with one link, and a state no larger than FC_SNAP_STATE_MAX. */
static int take_from_jail(const char *from, const char *to, unsigned mode, uint64_t max,
                          unsigned jail_uid, smolvm_error **err)
{
    _cleanup_close_ int fd = open(from, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    char fdpath[32];
    struct stat st;
    int r = 0;

    if (fd < 0)
        return smolvm_err_errno(err, errno, "jailer: the snapshot file '%s'", from);
    if (fstat(fd, &st) < 0)
        return smolvm_err_errno(err, errno, "jailer: stat '%s'", from);
    if (!S_ISREG(st.st_mode) || st.st_nlink != 1 || st.st_uid != jail_uid ||
        (max && (uint64_t)st.st_size > max))
        return smolvm_err(err, SMOLVM_EVMM,
                          "jailer: '%s' is not a plain file of the jail's uid %u%s (refused)", from,
                          jail_uid, max ? " within the size a state has" : "");
    if (fchown(fd, 0, 0) < 0 || fchmod(fd, mode) < 0)
        return smolvm_err_errno(err, errno, "jailer: take '%s'", from);
    /* The file checked, through its fd: the name may have been swapped since. */
    (void)snprintf(fdpath, sizeof(fdpath), "/proc/self/fd/%d", fd);
    if (linkat(AT_FDCWD, fdpath, AT_FDCWD, to, AT_SYMLINK_FOLLOW) < 0) {
        if (errno != EXDEV)
            return smolvm_err_errno(err, errno, "jailer: move '%s' to '%s'", from, to);
        if ((r = smolvm_copy_fd_to_file(fd, to, mode, err)) < 0)
            return smolvm_err_wrap(err, "copy '%s' to '%s'", from, to);
    }
    (void)unlink(from);
    return 0;
}

int smolvm_fc_snapshot(const char *dir, const smolvm_vmm_snapshot *snap, int64_t deadline,
                       smolvm_error **err)
{
    _cleanup_(smolvm_fc_api_freep) smolvm_fc_api *api = NULL;
    _cleanup_free_ char *sock = NULL, *jail_sock = NULL, *state = NULL, *mem = NULL,
                        *host_state = NULL, *host_mem = NULL;
    struct stat st;
    int r;

    if (!snap->state_path || !snap->mem_path)
        return smolvm_err(err, SMOLVM_EINVAL, "firecracker: a snapshot needs a memory file");
    if ((r = smolvm_fc_api_open(dir, &api, err)) < 0)
        return r;
    if (smolvm_fc_jailed(dir)) {
        /* Jailed firecracker writes in the one dir of its chroot that its uid may write,
         * the API socket's (<root><dir>, reached through the link <dir>/fc.sock); the
         * files are then taken out of the jail. */
        if (!(sock = smolvm_vmm_path(dir, FC_API_SOCK)) || !(jail_sock = realpath(sock, NULL)))
            return smolvm_err(err, SMOLVM_ESTATE, "jailer: no api socket in '%s'", dir);
        *strrchr(jail_sock, '/') = '\0';
        state = smolvm_strdupf("%s/" FC_SNAP_STATE, dir);
        mem = smolvm_strdupf("%s/" FC_SNAP_MEM, dir);
        host_state = smolvm_strdupf("%s/" FC_SNAP_STATE, jail_sock);
        host_mem = smolvm_strdupf("%s/" FC_SNAP_MEM, jail_sock);
        if (!state || !mem || !host_state || !host_mem)
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        if (stat(jail_sock, &st) < 0)
            return smolvm_err_errno(err, errno, "jailer: stat '%s'", jail_sock);
        (void)unlink(host_state);
        (void)unlink(host_mem);
    } else if (!(state = strdup(snap->state_path)) || !(mem = strdup(snap->mem_path))) {
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    /* Firecracker snapshots only a paused VM. */
    if ((r = smolvm_fc_patch_vm(api, 1, deadline, err)) < 0 ||
        (r = smolvm_fc_snapshot_create(api, state, mem, deadline, err)) < 0)
        goto fail;
    if (host_state && ((r = take_from_jail(host_state, snap->state_path, 0600, FC_SNAP_STATE_MAX,
                                           st.st_uid, err)) < 0 ||
                       (r = take_from_jail(host_mem, snap->mem_path, 0644, 0, st.st_uid, err)) < 0))
        goto fail;
    /* A clone's firecracker (as its own uid) maps the memory file read-only. */
    if (!host_state && chmod(snap->mem_path, 0644) < 0) {
        r = smolvm_err_errno(err, errno, "chmod '%s'", snap->mem_path);
        goto fail;
    }
    return 0;
fail:
    if (host_state) {
        (void)unlink(host_state);
        (void)unlink(host_mem);
    }
    (void)unlink(snap->state_path);
    (void)unlink(snap->mem_path);
    return r;
}

/* Jailed: the snapshot's files for firecracker in the chroot. The state is copied (it
 * is small, and firecracker may read only its own); the memory is linked read-only
 * (firecracker maps it privately: copy on write), so it must be readable by the jail
 * uid (a template's is 0644 in a 0700 dir) and on the jail's file system. */
static int jail_snapshot(const smolvm_fc_launched *l, const smolvm_vmm_snapshot *snap, char **state,
                         char **mem, smolvm_error **err)
{
    _cleanup_free_ char *host = smolvm_strdupf("%s/" FC_SNAP_STATE, l->jail.root);
    int r;

    if (!host)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    (void)unlink(host);
    if ((r = smolvm_copy_file(snap->state_path, host, 0600, err)) < 0)
        return smolvm_err_wrap(err, "jailer");
    if (lchown(host, l->jail.uid, l->jail.gid) < 0)
        return smolvm_err_errno(err, errno, "jailer: chown '%s'", host);
    if (!(*state = strdup("/" FC_SNAP_STATE)))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    return smolvm_fc_jail_add(&l->jail, snap->mem_path, FC_SNAP_MEM, SMOLVM_FC_JAIL_RO, mem, err);
}

int smolvm_fc_restore(const smolvm_vmm_config *cfg, const smolvm_vmm_snapshot *snap,
                      int64_t *out_pid, uint64_t *out_start, int64_t deadline, smolvm_error **err)
{
    _cleanup_free_ char *log = smolvm_vmm_path(cfg->dir, SMOLVM_VMM_STDERR_LOG);
    _cleanup_free_ char *jlog = NULL, *uds = NULL, *state = NULL, *mem = NULL;
    smolvm_fc_load load = {0};
    smolvm_fc_drives d = {0};
    smolvm_fc_launched l;
    int r;

    if (!log)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (!snap->state_path || !snap->mem_path)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "firecracker: a snapshot has a state and a memory file");
    r = smolvm_fc_launch(cfg, &l, deadline, err);
    if (r == 0)
        r = smolvm_fc_vmm_path(&l, log, SMOLVM_VMM_STDERR_LOG, SMOLVM_FC_JAIL_RW_OWN, &jlog, err);
    if (r == 0)
        r = smolvm_fc_put_logger(l.api, jlog, "Warning", deadline, err);
    /* The snapshot names its drives by relative names: this VM's links (in its jail or
     * <dir>/fc) make them this VM's files. */
    if (r == 0)
        r = smolvm_fc_link_drives(cfg, &l, &d, err);
    if (r == 0 && l.jail.jailer) {
        r = jail_snapshot(&l, snap, &state, &mem, err);
    } else if (r == 0 && (!(state = strdup(snap->state_path)) || !(mem = strdup(snap->mem_path)))) {
        r = smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    /* The snapshot names the vsock socket and TAP of the VM it was taken from; the
     * restored guest's agent must reach this VM's supervisor, its network this VM's TAP. */
    if (r == 0 && cfg->vsock_uds)
        r = smolvm_fc_vsock_path(cfg, &l, &uds, err);
    if (r == 0) {
        load = (smolvm_fc_load){.snapshot_path = state,
                                .mem_path = mem,
                                .resume = 1,
                                .vsock_uds = uds,
                                .tap = cfg->network == SMOLVM_NET_NAT ? cfg->tap_name : NULL};
        r = smolvm_fc_snapshot_load(l.api, &load, deadline, err);
    }
    smolvm_fc_drives_done(&d);
    if (r < 0)
        return smolvm_fc_fail_launched(cfg, &l, r, err);
    *out_pid = l.pid;
    *out_start = l.start;
    smolvm_fc_launched_done(&l);
    return 0;
}
