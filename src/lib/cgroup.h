/* SPDX-License-Identifier: MIT */
/*
 * A cgroup per VM, on cgroup v2 and on v1 (docs/security.md): memory, pids and cpu,
 * each from the hierarchy that has it (a v1 mount of its own, else the v2 mount). The
 * VM's group is <mount>/smolvm/<vm id>.<tag>, tag = 8 hex digits of the sha256 of the
 * state directory's real path, so two state directories never share a name and every
 * process using one state directory finds its groups (delete, reconcile). Only the VMM
 * joins it. A group is removed when its VM stops; reconcile removes the ones left by a
 * process that died (an empty group costs nothing, a busy one cannot be removed).
 */
#ifndef SMOLVM_CGROUP_H
#define SMOLVM_CGROUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smolvm.h"

typedef enum smolvm_cg_controller {
    SMOLVM_CG_MEMORY,
    SMOLVM_CG_PIDS,
    SMOLVM_CG_CPU,
    _SMOLVM_CG_MAX,
} smolvm_cg_controller;

#define SMOLVM_CG_PARENT "smolvm" /* the directory under each mount */
#define SMOLVM_CG_HIER_MAX 8

/* Where the controllers are. */
typedef struct smolvm_cg_hier {
    char *mount;          /* the hierarchy's mount point */
    int version;          /* 1 or 2 */
    unsigned controllers; /* bit (1 << smolvm_cg_controller) for each one used from here */
} smolvm_cg_hier;

typedef struct smolvm_cgroup_layout {
    smolvm_cg_hier h[SMOLVM_CG_HIER_MAX];
    size_t n;
    /* Could this process make groups there? Root: the mounts are writable. Anyone
     * else: each <mount>/smolvm exists and is writable by it (delegated). */
    bool usable;
    char why[160]; /* when not usable: why not */
} smolvm_cgroup_layout;

/* This host's layout, from /proc/self/mountinfo and the v2 root's cgroup.controllers.
 * A host without cgroups gives an empty layout (n 0, not usable), not an error. */
int smolvm_cgroup_layout_detect(smolvm_cgroup_layout **out, smolvm_error **err);
/* An empty layout, for tests to fill with smolvm_cgroup_layout_add. */
int smolvm_cgroup_layout_new(smolvm_cgroup_layout **out, smolvm_error **err);
int smolvm_cgroup_layout_add(smolvm_cgroup_layout *l, const char *mount, int version,
                             unsigned controllers, smolvm_error **err);
smolvm_cgroup_layout *smolvm_cgroup_layout_free(smolvm_cgroup_layout *l);

/* "v1 memory, pids, cpu" or "v2 memory, pids; v1 cpu" into out: for doctor. */
void smolvm_cgroup_layout_describe(const smolvm_cgroup_layout *l, char *out, size_t size);

/* <vm id>.<tag> for this state directory. SMOLVM_EINVAL for an invalid id. */
int smolvm_cgroup_name(char out[96], const char *state_dir, const char *vm_id, smolvm_error **err);

typedef struct smolvm_cgroup_limits {
    uint64_t memory_bytes; /* memory (v1 limit_in_bytes and memsw; v2 max, swap 0) */
    uint64_t pids;         /* pids.max */
    unsigned cpu_weight;   /* 1..10000 (v2 cpu.weight; v1 cpu.shares = weight * 1024 / 100) */
} smolvm_cgroup_limits;

typedef struct smolvm_cgroup smolvm_cgroup;

/* Make the VM's group in every hierarchy of l, with these limits, and open its
 * cgroup.procs files (for the VMM to join before exec). A stale empty group of the
 * same name is replaced; a busy one is SMOLVM_EEXIST. On failure nothing is left. */
int smolvm_cgroup_create(smolvm_cgroup **out, const smolvm_cgroup_layout *l, const char *state_dir,
                         const char *vm_id, const smolvm_cgroup_limits *lim, smolvm_error **err);
/* The open cgroup.procs files, borrowed until the handle is freed. */
const int *smolvm_cgroup_procs_fds(const smolvm_cgroup *cg, size_t *n);
/* The group's directory in the hierarchy of controller c, NULL when none has it.
 * Borrowed. */
const char *smolvm_cgroup_path(const smolvm_cgroup *cg, smolvm_cg_controller c);
/* Close the handle; the groups stay (smolvm_cgroup_remove removes them). */
smolvm_cgroup *smolvm_cgroup_free(smolvm_cgroup *cg);

/* Remove the VM's groups (missing ones are fine), then each empty <mount>/smolvm.
 * SMOLVM_ESTATE when a group still has a process. */
int smolvm_cgroup_remove(const smolvm_cgroup_layout *l, const char *state_dir, const char *vm_id,
                         smolvm_error **err);

/* Remove every group of this state directory for which keep(vm_id, payload) says
 * false, asked after the group was seen (so a VM recorded as starting before its group
 * was made is never taken for a leftover). Busy groups stay. Returns how many were
 * removed. */
int smolvm_cgroup_gc(const smolvm_cgroup_layout *l, const char *state_dir,
                     bool (*keep)(const char *vm_id, void *payload), void *payload);

#endif
