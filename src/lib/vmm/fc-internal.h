/* SPDX-License-Identifier: MIT */
/*
 * What the firecracker backend's files share: fc-launch.c starts (and finds) a
 * firecracker process, firecracker.c boots and controls it, fc-snapshot.c saves a VM
 * and continues one from a snapshot (docs/firecracker.md, "Snapshots").
 */
#ifndef SMOLVM_VMM_FC_INTERNAL_H
#define SMOLVM_VMM_FC_INTERNAL_H

#include <stdint.h>
#include <sys/types.h>

#include "smolvm.h"
#include "vmm/fc-api.h"
#include "vmm/fc-jailer.h"
#include "vmm/vmm.h"

#define FC_API_SOCK "fc.sock"
#define FC_VSOCK_NAME "vsock.sock"
/* Unjailed firecracker runs in <dir>/fc, where its drives are links named as in a jail:
 * firecracker gets them by relative names ("rootfs", "config", "overlay"), which its
 * snapshot records, so a snapshot loads in another VM's dir (or jail) and opens that
 * VM's files. */
#define FC_FILES_DIR "fc"
#define FC_SNAP_STATE "snapshot.state" /* jailed: where firecracker writes a snapshot */
#define FC_SNAP_MEM "snapshot.mem"
#define FC_SNAP_STATE_MAX (64u << 20) /* device state: kilobytes; more is not a state */

/* Refuse a config firecracker cannot run, before anything is made. */
int smolvm_fc_check_config(const smolvm_vmm_config *c, smolvm_error **err);
/* The VMM of dir from its pidfile, if it is alive and still ours (its command line
 * names the dir). */
int smolvm_fc_find_vmm(const char *dir, pid_t *pid, uint64_t *start);
/* Remove what a firecracker leaves in dir (socket, pidfile, <dir>/fc). */
void smolvm_fc_remove_runtime_files(const char *dir);
/* Create (or truncate) a file firecracker will open but not create. */
int smolvm_fc_touch(const char *path, smolvm_error **err);

/* A firecracker process being started, with its API client and jail. */
typedef struct smolvm_fc_launched {
    pid_t pid;
    uint64_t start;
    int pidfd;
    smolvm_fc_api *api;
    smolvm_fc_jail jail; /* jail.jailer NULL: not jailed */
    int jail_made;       /* the jail dir was (re)made for this launch */
} smolvm_fc_launched;

/* Spawn firecracker in cfg->dir (through the jailer when SMOLVM_JAILER says so) and
 * return once its API answers, its version checked. */
int smolvm_fc_launch(const smolvm_vmm_config *cfg, smolvm_fc_launched *l, int64_t deadline,
                     smolvm_error **err);
/* After a failed start: kill firecracker, remove what it left, say what it said;
 * returns r. */
int smolvm_fc_fail_launched(const smolvm_vmm_config *cfg, smolvm_fc_launched *l, int r,
                            smolvm_error **err);
/* Release l (the process goes on). */
void smolvm_fc_launched_done(smolvm_fc_launched *l);

/* The path jailed firecracker is to be given for host_path: a link in its chroot
 * named name. Unjailed, host_path itself. */
int smolvm_fc_vmm_path(const smolvm_fc_launched *l, const char *host_path, const char *name,
                       int how, char **out, smolvm_error **err);

typedef struct smolvm_fc_drives {
    char *disk, *config, *overlay; /* as firecracker is given them */
} smolvm_fc_drives;

/* The VM's drives made available to firecracker under their relative names. */
int smolvm_fc_link_drives(const smolvm_vmm_config *c, const smolvm_fc_launched *l,
                          smolvm_fc_drives *d, smolvm_error **err);
void smolvm_fc_drives_done(smolvm_fc_drives *d);

/* The vsock device's socket path for firecracker (jailed: in the chroot, with the
 * agent's listener linked in). */
int smolvm_fc_vsock_path(const smolvm_vmm_config *c, const smolvm_fc_launched *l, char **out,
                         smolvm_error **err);

/* A client of dir's API socket; SMOLVM_ESTATE when there is none. */
int smolvm_fc_api_open(const char *dir, smolvm_fc_api **api, smolvm_error **err);

/* The backend's snapshot and restore (vmm.h). */
int smolvm_fc_snapshot(const char *dir, const smolvm_vmm_snapshot *snap, int64_t deadline,
                       smolvm_error **err);
int smolvm_fc_restore(const smolvm_vmm_config *cfg, const smolvm_vmm_snapshot *snap,
                      int64_t *out_pid, uint64_t *out_start, int64_t deadline, smolvm_error **err);

#endif
