/* SPDX-License-Identifier: MIT */
/* The VM handle, shared by the files of the vm module above vm.c: vm-ssh.c,
 * vm-create.c, vm-lifecycle.c, vm-guest.c. vm.c owns it (open, refresh, free). */
#ifndef SMOLVM_VM_INTERNAL_H
#define SMOLVM_VM_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "agent-client.h"
#include "context.h"
#include "smolvm.h"
#include "ssh.h"
#include "store.h"
#include "vm-config.h"

/* Files in the per-VM directory <state>/vms/<id>/ (the VMM's own: vmm/vmm.h). */
#define SMOLVM_VM_HOST_KEY "ssh_host_ed25519_key"
#define SMOLVM_VM_CONFIG_DISK "config.img"

/* QEMU user networking's fixed addresses. */
#define SMOLVM_USER_GUEST_IP "10.0.2.15"
#define SMOLVM_USER_GATEWAY "10.0.2.2"
#define SMOLVM_USER_DNS "10.0.2.3"

struct smolvm_vm {
    smolvm_ctx *ctx;
    char *id;
    smolvm_vm_row *row;    /* as last read from the store */
    smolvm_vm_config *cfg; /* row->config_json, parsed */
    smolvm_ssh *ssh;       /* SSH transport: persistent session, NULL until first use */
    smolvm_agent *agent;   /* agent transport: connection to the supervisor, likewise */
    bool deleted;
    struct { /* between smolvm_vm_start_begin and _finish */
        bool pending;
        bool was_running;    /* finish only reconnects */
        bool from_suspended; /* continues a suspended VM: its saved state goes at finish */
        int lock;            /* the VM's lock, held throughout */
        int64_t t0, deadline;
    } start;
};

/* A handle for id with nothing read yet. */
int smolvm_vm_alloc(smolvm_vm **out, smolvm_ctx *ctx, const char *id, smolvm_error **err);

/* Re-read the row and its config from the store. */
int smolvm_vm_refresh(smolvm_vm *vm, smolvm_error **err);

#endif
