/* SPDX-License-Identifier: MIT */
/* The VM handle, shared by vm.c (records), vm-lifecycle.c and vm-guest.c. */
#ifndef SMOLVM_VM_INTERNAL_H
#define SMOLVM_VM_INTERNAL_H

#include <jansson.h>
#include <stdint.h>

#include "smolvm.h"
#include "ssh.h"
#include "store.h"

/* Per-VM directory: <state>/vms/<id>/ */
#define SMOLVM_VM_HOST_KEY "ssh_host_ed25519_key"
#define SMOLVM_VM_CONFIG_DISK "config.img"
#define SMOLVM_VM_LOCK "lock"

/* Host ports for user-networking SSH forwards. */
#define SMOLVM_SSH_PORT_MIN 20000
#define SMOLVM_SSH_PORT_MAX 29999

/* QEMU user networking's fixed addresses. */
#define SMOLVM_USER_GUEST_IP "10.0.2.15"
#define SMOLVM_USER_GATEWAY "10.0.2.2"
#define SMOLVM_USER_DNS "10.0.2.3"

struct smolvm_vm {
    smolvm_ctx *ctx;
    char *id;
    smolvm_vm_row *row; /* as last read from the store */
    json_t *config;     /* row->config_json parsed */
    smolvm_ssh *ssh;    /* persistent session, NULL until first use */
    int deleted;
    struct { /* between smolvm_vm_start_begin and _finish */
        int pending;
        int lock; /* the VM's lock, held throughout */
        int ctl;  /* guest channel; -1 when the VM was already running */
        int64_t t0, deadline;
    } start;
};

/* Give up a begun start (the handle is being freed): the VM is left "starting"
 * with its lock released, so the next reconcile kills its VMM. */
void smolvm_vm_start_abandon(smolvm_vm *vm);

/* Re-read the row (and config) from the store. */
int smolvm_vm_refresh(smolvm_vm *vm, smolvm_error **err);

/* Reconcile one VM's row with reality (dead VMM, interrupted start/stop, orphan
 * process). Skipped when another process holds the VM's lock. *changed set when the
 * row was updated. */
int smolvm_vm_reconcile_row(smolvm_ctx *ctx, const smolvm_vm_row *row, int *changed,
                            smolvm_error **err);

/* Take the VM's lock, waiting at most wait_ms for a holder to let go (a reconcile
 * holds it for milliseconds, a start for a whole boot). Still held then: another
 * process is acting on the VM, SMOLVM_ESTATE. */
#define SMOLVM_LOCK_WAIT_MS 2000
int smolvm_vm_lock(const char *dir, const char *id, const char *what, int wait_ms, int *fd,
                   smolvm_error **err);

/* Installation-wide SSH client key (created on first use). Caller frees both. */
int smolvm_client_key(smolvm_ctx *ctx, char **key_path, char **pub_line, smolvm_error **err);

/* Config accessors. */
const char *smolvm_vm_cfg_str(const smolvm_vm *vm, const char *key);
long long smolvm_vm_cfg_int(const smolvm_vm *vm, const char *key);
/* The VM's env as a NULL-terminated array of "K=V" (caller frees the array only;
 * strings are borrowed from vm->config). */
const char **smolvm_vm_env(const smolvm_vm *vm);

/* Connect the persistent SSH session if the VM is running (else SMOLVM_ESTATE). */
int smolvm_vm_ensure_ssh(smolvm_vm *vm, int64_t deadline, smolvm_error **err);

struct smolvm_vmm_ops;
const struct smolvm_vmm_ops *smolvm_vm_backend_ops(const char *name);

/* Can a TCP socket be bound to payload (an IPv4 address string):port right now? */
int smolvm_port_bindable(int port, void *payload);

/* Reserve a free, bindable 127.0.0.1 port for the VM's SSH forward. */
int smolvm_vm_alloc_ssh_port(smolvm_vm *vm, int *port, smolvm_error **err);

/* Drop the SSH session (after a failure, or on stop). */
void smolvm_vm_drop_ssh(smolvm_vm *vm);

#endif
