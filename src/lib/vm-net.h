/* SPDX-License-Identifier: MIT */
/* A VM's NAT network (vm-net.c), on top of the host networking module (net/): lease,
 * TAP and rules, tied to the VM's life. */
#ifndef SMOLVM_VM_NET_H
#define SMOLVM_VM_NET_H

#include <stdbool.h>

#include "context.h"
#include "vm-config.h"

typedef struct smolvm_vm_net {
    char tap[16];
    char mac[18];
    char ip[16];
    char gateway[16];
    char netmask[16];
    char dns[16];
    bool have_dns;
} smolvm_vm_net;

/* Can network 'nat' work here (privilege, tun, nf_tables, an uplink)? */
int smolvm_nat_usable(const smolvm_ctx *ctx, smolvm_error **err);

/* Lease (idempotent), TAP and rules for the VM, with its forwards from the store. */
int smolvm_vm_net_up(smolvm_vm_net *n, smolvm_ctx *ctx, const char *vm_id,
                     const smolvm_vm_config *cfg, smolvm_error **err);
/* Remove the VM's TAP and rules (idempotent; failures are logged). */
void smolvm_vm_net_down(smolvm_ctx *ctx, const char *vm_id);
/* Add (add = true) or remove one forward's rules for a running VM. */
int smolvm_vm_net_forward(smolvm_ctx *ctx, const char *vm_id, const smolvm_vm_config *cfg,
                          const char *addr, int host_port, int guest_port, bool add,
                          smolvm_error **err);
/* Remove TAPs and rules of VMs not in live_ids (NULL-terminated). */
void smolvm_vm_net_gc(smolvm_ctx *ctx, const char *const *live_ids);

#endif
