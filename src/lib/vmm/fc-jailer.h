/* SPDX-License-Identifier: MIT */
/*
 * Optional use of firecracker's jailer (docs/firecracker.md, "The jailer"): its
 * configuration from the environment, the chroot it runs firecracker in, and the
 * files made available inside it. The chroot base is <vm dir>/jail, so deleting the
 * VM dir deletes the chroot, and hard links from the VM dir and image store into it
 * stay on one filesystem.
 */
#ifndef SMOLVM_VMM_FC_JAILER_H
#define SMOLVM_VMM_FC_JAILER_H

#include <stdint.h>

#include "smolvm.h"

#define SMOLVM_FC_JAILER_UID_ENV "SMOLVM_JAILER_UID"
#define SMOLVM_FC_JAILER_GID_ENV "SMOLVM_JAILER_GID"
#define SMOLVM_FC_JAILER_CGROUP_ENV "SMOLVM_JAILER_PARENT_CGROUP"
#define SMOLVM_FC_JAIL_DIR "jail" /* in the VM dir: the jailer's --chroot-base-dir */

typedef struct smolvm_fc_jail {
    char *jailer;        /* the jailer binary; NULL: not jailed */
    char *exec_file;     /* firecracker, canonical (the jailer names the chroot after it) */
    char *parent_cgroup; /* NULL: the jailer's default */
    char *base;          /* <dir>/jail */
    char *root;          /* <base>/<exec file name>/<id>/root: "/" of the jailed firecracker */
    unsigned uid, gid;
    char id[65];
} smolvm_fc_jail;

/* Fill j from the environment for a VM (id, dir) whose firecracker is fc_bin; vmm_uid
 * is the uid the supervisor took for this VMM (0: none, it is not root). SMOLVM_JAILER
 * "0": not jailed (j->jailer stays NULL, 0 returned). Unset or empty: jailed when
 * vmm_uid is given, with the jailer next to firecracker, as vmm_uid (uid and gid),
 * else not. Set: jailed, as SMOLVM_JAILER_UID/GID, or vmm_uid where one is unset.
 * Refuses (SMOLVM_EINVAL / SMOLVM_EHOST) a missing or root uid/gid, a vm id the jailer
 * would refuse, a jailer that is not there. Free with smolvm_fc_jail_done. */
int smolvm_fc_jail_config(smolvm_fc_jail *j, const char *fc_bin, const char *vm_id, const char *dir,
                          uint32_t vmm_uid, smolvm_error **err);

void smolvm_fc_jail_done(smolvm_fc_jail *j);

/* A fresh chroot: the old one (if any) removed, <root>/<dir> made for the API socket
 * and owned by the jail uid (jailed firecracker creates its socket there). */
int smolvm_fc_jail_prepare(const smolvm_fc_jail *j, const char *dir, smolvm_error **err);

/* How a file is made available inside the jail. */
enum {
    SMOLVM_FC_JAIL_RO,     /* shared, read-only: must be readable by the jail uid */
    SMOLVM_FC_JAIL_RW,     /* shared, read-write: must be writable by the jail uid */
    SMOLVM_FC_JAIL_RW_OWN, /* this VM's own file: given to the jail uid */
};

/* Hard link host_path into the chroot as /name (a read-only file that is not on the
 * same filesystem is copied when small; others are refused). *jail_path receives
 * "/name", the path to give jailed firecracker (caller frees). */
int smolvm_fc_jail_add(const smolvm_fc_jail *j, const char *host_path, const char *name, int how,
                       char **jail_path, smolvm_error **err);

/* Let the jail uid/gid attach to the persistent TAP tap (root made it; the kernel lets
 * only its owner, group or CAP_NET_ADMIN attach, and jailed firecracker has none). */
int smolvm_fc_jail_give_tap(const smolvm_fc_jail *j, const char *tap, smolvm_error **err);

/* The jailer's argv (NULL-terminated, caller frees the array and its strings via
 * smolvm_fc_jail_argv_free); firecracker gets --api-sock api_sock after "--". */
char **smolvm_fc_jail_argv(const smolvm_fc_jail *j, const char *api_sock);
void smolvm_fc_jail_argv_free(char **argv);

/* Does dir hold a jail (a VM that was started jailed)? */
int smolvm_fc_jailed(const char *dir);

/* Remove dir's jail, if any. */
void smolvm_fc_jail_remove(const char *dir);

#endif
