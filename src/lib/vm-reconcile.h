/* SPDX-License-Identifier: MIT */
/*
 * Keeping the store true to reality: the per-VM lock that start, stop and delete hold,
 * whether a VM's VMM is alive, and reconcile (a dead VMM marked, an interrupted start or
 * stop finished, an orphan killed, leftover network collected). The decision itself
 * is a pure function of what was observed (smolvm_reconcile_decide), tested as a table.
 */
#ifndef SMOLVM_VM_RECONCILE_H
#define SMOLVM_VM_RECONCILE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "context.h"
#include "store.h"

#define SMOLVM_VM_LOCK "lock" /* in the VM's directory */

/* Take the VM's lock, waiting at most wait_ms for a holder to let go (a reconcile holds
 * it for milliseconds, a start for a whole boot). Still held then: another process is
 * acting on the VM, SMOLVM_ESTATE. */
#define SMOLVM_LOCK_WAIT_MS 2000
int smolvm_vm_lock(int *fd, const char *dir, const char *id, const char *what, int wait_ms,
                   smolvm_error **err);

/* Is the row's VMM alive? The recorded pid + start time, then the VMM's own pidfile. */
bool smolvm_vm_vmm_alive(const smolvm_vm_row *row, pid_t *pid, uint64_t *start);
/* Kill the row's VMM if it is alive (bounded wait), and its supervisor. */
void smolvm_vm_kill_vmm(const smolvm_vm_row *row);
/* Wait (until deadline) for the row's supervisor to exit, then kill it. Never the
 * calling process. */
void smolvm_vm_reap_supervisor(const smolvm_vm_row *row, int64_t deadline);
/* Remove the VM's cgroups (docs/security.md), once its VMM is gone. */
void smolvm_vm_cgroup_remove(smolvm_ctx *ctx, const char *id);
/* The last lines of the VM's console log, "|"-joined, "" when there are none. Caller
 * frees. */
char *smolvm_vm_console_tail(const char *dir);

typedef enum smolvm_reconcile_action {
    SMOLVM_RECONCILE_NONE,         /* the row matches reality */
    SMOLVM_RECONCILE_DIED,         /* "running" with no VMM: stopped or error */
    SMOLVM_RECONCILE_FINISH_START, /* "starting", its controller gone: kill, error */
    SMOLVM_RECONCILE_FINISH_STOP,
    /* "stopping", its controller gone: kill, stopped */
    SMOLVM_RECONCILE_FINISH_SUSPEND, /* "suspending", its controller gone: kill; suspended
                                      * if the saved state is whole, else stopped */
    SMOLVM_RECONCILE_KILL_ORPHAN,    /* not running, yet a VMM (or a recorded pid) exists */
    SMOLVM_RECONCILE_END,            /* not running, its owner gone or its ttl passed: delete */
} smolvm_reconcile_action;

/* What a row needs: status as stored, whether its VMM is alive, whether a pid is
 * recorded. ("starting"/"stopping" are acted on only when their lock is free.) */
smolvm_reconcile_action smolvm_reconcile_decide(const char *status, bool vmm_alive, bool has_pid);

/* Reconcile one VM's row with reality. Skipped when another process holds the VM's
 * lock. *changed (may be NULL) is set when the row was updated. */
int smolvm_vm_reconcile_row(int *changed, smolvm_ctx *ctx, const smolvm_vm_row *row,
                            smolvm_error **err);

#endif
