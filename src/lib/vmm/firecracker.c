/* SPDX-License-Identifier: MIT */
/*
 * The Firecracker backend: one firecracker process per VM, configured over its REST
 * API (fc-api.c), readiness from the guest's serial console (firecracker's stdout, the
 * VM's console.log). Starting and finding the process is fc-launch.c's, snapshots and
 * restore fc-snapshot.c's. What is verified against
 * real firecracker and what only against the API contract is in docs/firecracker.md.
 */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>

#include "error.h"
#include "tool.h"
#include "host.h"
#include "proc.h"
#include "vmm/fc-api.h"
#include "vmm/fc-binary.h"
#include "vmm/fc-internal.h"
#include "vmm/fc-jailer.h"
#include "vmm/vmm-internal.h"
#include "vmm/vmm.h"

#define FC_METRICS "fc-metrics.json"
#define FC_GUEST_CID 3 /* the first CID a guest may have (0-2 are reserved) */

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

/* The VM's resources, by API, to a launched firecracker that has not started. */
static int configure(const smolvm_vmm_config *c, const smolvm_fc_launched *l, int64_t deadline,
                     smolvm_error **err)
{
    _cleanup_free_ char *host_log = smolvm_vmm_path(c->dir, SMOLVM_VMM_STDERR_LOG);
    _cleanup_free_ char *host_metrics = smolvm_vmm_path(c->dir, FC_METRICS);
    _cleanup_free_ char *cmdline = NULL, *log = NULL, *metrics = NULL, *kernel = NULL;
    smolvm_fc_api *api = l->api;
    smolvm_fc_drive root = {"rootfs", NULL, 1, 0};
    smolvm_fc_drives d;
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
    /* vmm.log exists since smolvm_fc_launch() and holds firecracker's stderr so far: not
     * truncated again. */
    if ((r = smolvm_fc_touch(host_metrics, err)) < 0)
        return r;
    /* Jailed, each file is linked into the chroot; the logs keep their place in the
     * dir (a hard link is the same file). */
    if ((r = smolvm_fc_vmm_path(l, host_log, SMOLVM_VMM_STDERR_LOG, SMOLVM_FC_JAIL_RW_OWN, &log,
                                err)) < 0 ||
        (r = smolvm_fc_vmm_path(l, host_metrics, FC_METRICS, SMOLVM_FC_JAIL_RW_OWN, &metrics,
                                err)) < 0 ||
        (r = smolvm_fc_vmm_path(l, c->kernel, "vmlinux", SMOLVM_FC_JAIL_RO, &kernel, err)) < 0 ||
        (r = smolvm_fc_link_drives(c, l, &d, err)) < 0)
        return r;
    root.path = d.disk;
    if ((r = smolvm_fc_put_logger(api, log, "Warning", deadline, err)) < 0 ||
        (r = smolvm_fc_put_metrics(api, metrics, deadline, err)) < 0 ||
        (r = smolvm_fc_put_machine_config(api, c->vcpus, c->memory_mib, deadline, err)) < 0 ||
        (r = smolvm_fc_put_boot_source(api, kernel, cmdline, deadline, err)) < 0 ||
        (r = smolvm_fc_put_drive(api, &root, deadline, err)) < 0)
        goto out;
    /* Drives after the root appear as /dev/vdb, /dev/vdc in the order they are added. */
    if (c->config_disk) {
        smolvm_fc_drive cd = {"config", d.config, 0, 1};

        if ((r = smolvm_fc_put_drive(api, &cd, deadline, err)) < 0)
            goto out;
    }
    if (c->overlay_disk) {
        smolvm_fc_drive od = {"overlay", d.overlay, 0, 0};

        if ((r = smolvm_fc_put_drive(api, &od, deadline, err)) < 0)
            goto out;
    }
    if (c->network == SMOLVM_NET_NAT &&
        (r = smolvm_fc_put_network_interface(api, "eth0", c->tap_name, c->mac, deadline, err)) < 0)
        goto out;
    /* The agent's channel: guest-initiated connections to host port P come out at
     * <uds>_P, where the supervisor listens. */
    if (c->vsock_uds) {
        _cleanup_free_ char *uds = NULL;

        if ((r = smolvm_fc_vsock_path(c, l, &uds, err)) < 0 ||
            (r = smolvm_fc_put_vsock(api, FC_GUEST_CID, uds, deadline, err)) < 0)
            goto out;
    }
    /* Seeds the guest's entropy pool, so sshd's first getrandom() does not block. */
    r = smolvm_fc_put_entropy(api, deadline, err);
out:
    smolvm_fc_drives_done(&d);
    return r;
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
    smolvm_fc_launched l;
    int r;

    if (cfg->overlay_disk && (r = smolvm_fc_check_config(cfg, err)) == 0 &&
        (r = create_overlay(cfg->overlay_disk, cfg->overlay_mib, deadline, err)) < 0)
        return r;
    r = smolvm_fc_launch(cfg, &l, deadline, err);
    if (r == 0)
        r = configure(cfg, &l, deadline, err);
    if (r == 0)
        r = smolvm_fc_action(l.api, "InstanceStart", deadline, err);
    if (r < 0)
        return smolvm_fc_fail_launched(cfg, &l, r, err);
    *out_pid = l.pid;
    *out_start = l.start;
    smolvm_fc_launched_done(&l);
    return 0;
}

static int fc_simple(const char *dir, int paused, int64_t deadline, smolvm_error **err)
{
    _cleanup_(smolvm_fc_api_freep) smolvm_fc_api *api = NULL;
    int r;

    if ((r = smolvm_fc_api_open(dir, &api, err)) < 0)
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

    if ((r = smolvm_fc_api_open(dir, &api, err)) < 0)
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

    if (!smolvm_fc_find_vmm(dir, &pid, &start))
        return smolvm_err(err, SMOLVM_ESTATE, "no firecracker running in '%s'", dir);
    if (kill(pid, SIGTERM) < 0 && errno != ESRCH)
        return smolvm_err_errno(err, errno, "kill %ld", (long)pid);
    if (smolvm_pid_wait_exit(pid, start, deadline, err) < 0)
        return SMOLVM_ETIMEDOUT;
    smolvm_fc_remove_runtime_files(dir);
    smolvm_fc_jail_remove(dir);
    return 0;
}

static int fc_describe(const char *dir, int64_t deadline, char **out, smolvm_error **err)
{
    _cleanup_(smolvm_fc_api_freep) smolvm_fc_api *api = NULL;
    json_t *info = NULL, *machine = NULL, *obj;
    _cleanup_free_ char *version = NULL;
    int r;

    if ((r = smolvm_fc_api_open(dir, &api, err)) < 0)
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
    .snapshot = smolvm_fc_snapshot,
    .restore = smolvm_fc_restore,
};
