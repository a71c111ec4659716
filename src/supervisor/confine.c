/* SPDX-License-Identifier: MIT */
/*
 * The VMM's confinement and the supervisor's own privileges (docs/security.md).
 *
 * Before the spawn, while the supervisor still has what the library gave it: a uid of
 * the VMM's own (root only), an empty directory to chroot into, a cgroup with limits,
 * an oom score that makes the kernel pick the VMM first, and a lifeline pipe. Once the
 * VMM runs, the supervisor keeps only what its remaining work needs and can never get
 * more back (bounding set, locked securebits, no_new_privs).
 */
#include "supervisor.h"

#include <cap-ng.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "util.h"

#define CHROOT_DIR "vmm-root" /* in the VM dir: empty, root's, mode 0500 */

/* What the supervisor keeps after the VMM runs, and why:
 * CAP_KILL             signal its VMM, which runs as another uid (stop, delete, ttl);
 * CAP_NET_ADMIN        take the VM's network down at the end (TAP, nftables rules) and
 *                      open addresses in its egress set as its DNS filter allows them;
 * CAP_NET_BIND_SERVICE the DNS filter on port 53 and loopback forwards to host ports
 *                      below 1024, bound while the VM runs. */
static const int kept_caps[] = {CAP_KILL, CAP_NET_ADMIN, CAP_NET_BIND_SERVICE};

/* A chroot for the VMM: an empty directory only root may enter. */
static int make_chroot(sv *s, smolvm_error **err)
{
    _cleanup_free_ char *dir = smolvm_strdupf("%s/" CHROOT_DIR, s->spec->dir);
    struct stat st;

    if (!dir)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    /* A leftover of an earlier run is empty (its VMM could not write to it): made
     * again, so its mode and owner are ours. */
    if (rmdir(dir) < 0 && errno != ENOENT)
        return smolvm_err_errno(err, errno, "remove '%s'", dir);
    if (mkdir(dir, 0500) < 0)
        return smolvm_err_errno(err, errno, "mkdir '%s'", dir);
    if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid())
        return smolvm_err(err, SMOLVM_EIO, "'%s' is not a directory of ours", dir);
    s->chroot_dir = TAKE_PTR(dir);
    return 0;
}

static int make_cgroup(sv *s, smolvm_error **err)
{
    const smolvm_vmm_config *c = &s->spec->vmm;
    smolvm_cgroup_limits lim = {
        .memory_bytes = smolvm_vmm_memory_limit(c->memory_mib, c->accel),
        .pids = SMOLVM_VMM_PIDS_BASE + c->vcpus,
        /* Shares among sandboxes in proportion to their vCPUs. */
        .cpu_weight = 100 * c->vcpus,
    };
    char desc[128];
    int r;

    if ((r = smolvm_cgroup_layout_detect(&s->cg_layout, err)) < 0)
        return r;
    if (!s->cg_layout->usable) {
        sv_log(s, "confinement: no cgroup (%s)", s->cg_layout->why);
        return 0;
    }
    if ((r = smolvm_cgroup_create(&s->cg, s->cg_layout, s->spec->state_dir, s->spec->vm_id, &lim,
                                  err)) < 0)
        return r;
    smolvm_cgroup_layout_describe(s->cg_layout, desc, sizeof(desc));
    sv_log(s, "confinement: cgroup %s (%s): memory %llu MiB, pids %llu, cpu weight %u",
           smolvm_cgroup_path(s->cg, SMOLVM_CG_MEMORY) ? smolvm_cgroup_path(s->cg, SMOLVM_CG_MEMORY)
                                                       : "-",
           desc, (unsigned long long)(lim.memory_bytes >> 20), (unsigned long long)lim.pids,
           lim.cpu_weight);
    s->confine.cgroup_procs_fds = smolvm_cgroup_procs_fds(s->cg, &s->confine.n_cgroup_procs_fds);
    return 0;
}

int sv_confine_prepare(sv *s, smolvm_error **err)
{
    const char *why = NULL;
    int pipefd[2], r;

    s->confine = (smolvm_vmm_confine){.oom_score_adj = SMOLVM_VMM_OOM_SCORE_ADJ, .lifeline_fd = -1};
    if (s->spec->backend == SMOLVM_BACKEND_FIRECRACKER) {
        /* Firecracker's jailer does the rest (chroot, ids, cgroup, namespaces): it only
         * needs the uid, which is the VMM's alone as QEMU's is (docs/firecracker.md). */
        if (smolvm_confine_uid_possible(&why)) {
            if ((r = smolvm_confine_uid_acquire(&s->confine.uid, &s->uid_lock, err)) < 0)
                return r;
            sv_log(s, "confinement: vmm uid %u (for the jailer)", (unsigned)s->confine.uid);
        }
        s->spec->vmm.confine = &s->confine;
        return 0;
    }
    /* The VMM dies when the supervisor does: the kernel SIGKILLs it when the last
     * writer of this pipe (only the supervisor holds it) closes. */
    if (pipe2(pipefd, O_CLOEXEC) < 0)
        return smolvm_err_errno(err, errno, "lifeline pipe");
    s->confine.lifeline_fd = pipefd[0];
    s->lifeline_wr = pipefd[1];
    if (smolvm_confine_uid_possible(&why)) {
        if ((r = smolvm_confine_uid_acquire(&s->confine.uid, &s->uid_lock, err)) < 0 ||
            (r = make_chroot(s, err)) < 0)
            return r;
        s->confine.chroot_dir = s->chroot_dir;
        sv_log(s, "confinement: vmm uid %u, chroot '%s'", (unsigned)s->confine.uid, s->chroot_dir);
    } else {
        sv_log(s, "confinement: no uid of its own (%s)", why);
    }
    if ((r = make_cgroup(s, err)) < 0)
        return r;
    s->spec->vmm.confine = &s->confine;
    return 0;
}

/* Keep kept_caps, nothing else, and never more: the bounding set, securebits locked
 * (root's uid gives no capabilities on exec), no_new_privs. */
static int drop_privileges(sv *s, smolvm_error **err)
{
    size_t i;

    if (capng_get_caps_process() < 0)
        return smolvm_err(err, SMOLVM_EPERM, "read the supervisor's capabilities");
    if (capng_have_capabilities(CAPNG_SELECT_CAPS) != CAPNG_NONE) {
        capng_clear(CAPNG_SELECT_ALL);
        for (i = 0; i < SMOLVM_ARRAY_SIZE(kept_caps); i++)
            if (capng_update(CAPNG_ADD, CAPNG_EFFECTIVE | CAPNG_PERMITTED | CAPNG_BOUNDING_SET,
                             (unsigned)kept_caps[i]) < 0)
                return smolvm_err(err, SMOLVM_EPERM, "capabilities: update failed");
        if (capng_lock() < 0)
            return smolvm_err_errno(err, errno, "lock securebits");
        if (capng_apply(CAPNG_SELECT_ALL) < 0)
            return smolvm_err(err, SMOLVM_EPERM, "drop the supervisor's capabilities");
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return smolvm_err_errno(err, errno, "no_new_privs");
    sv_log(s, "confinement: supervisor uid %u keeps %s", (unsigned)geteuid(),
           capng_have_capabilities(CAPNG_SELECT_CAPS) == CAPNG_NONE
               ? "no capabilities"
               : "CAP_KILL, CAP_NET_ADMIN, CAP_NET_BIND_SERVICE");
    return 0;
}

int sv_confine_spawned(sv *s, smolvm_error **err)
{
    /* The VMM holds its ends now: ours are only the writer and the groups. */
    if (s->confine.lifeline_fd >= 0)
        (void)close(s->confine.lifeline_fd);
    s->confine.lifeline_fd = -1;
    s->cg = smolvm_cgroup_free(s->cg);
    s->confine.cgroup_procs_fds = NULL;
    s->confine.n_cgroup_procs_fds = 0;
    s->spec->vmm.confine = NULL;
    return drop_privileges(s, err);
}

void sv_confine_release(sv *s)
{
    smolvm_error *e = NULL;

    if (s->confine.lifeline_fd >= 0)
        (void)close(s->confine.lifeline_fd);
    s->confine.lifeline_fd = -1;
    s->cg = smolvm_cgroup_free(s->cg);
    /* Only once the VMM is gone: a group with a process cannot go. */
    if (s->cg_layout && s->cg_layout->usable && (s->vmm_exited || s->vmm_pid <= 0) &&
        smolvm_cgroup_remove(s->cg_layout, s->spec->state_dir, s->spec->vm_id, &e) < 0)
        sv_log(s, "confinement: %s", smolvm_error_message(e));
    smolvm_error_free(e);
    s->cg_layout = smolvm_cgroup_layout_free(s->cg_layout);
    /* A chrooted QEMU cannot remove its pidfile at exit (its path is outside). */
    if (s->chroot_dir && s->vmm_exited) {
        _cleanup_free_ char *pidfile = smolvm_strdupf("%s/" SMOLVM_VMM_PIDFILE, s->spec->dir);

        if (pidfile)
            (void)unlink(pidfile);
    }
}
