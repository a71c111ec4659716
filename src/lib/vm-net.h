/* SPDX-License-Identifier: MIT */
/* A VM's NAT network (vm-net.c), on top of the host networking module (net/). */
#ifndef SMOLVM_VM_NET_H
#define SMOLVM_VM_NET_H

#include "smolvm.h"

typedef struct smolvm_vm_net {
    char tap[16];
    char mac[18];
    char ip[16];
    char gateway[16];
    char netmask[16];
    char dns[16];
    int have_dns;
} smolvm_vm_net;

/* The address pool: $SMOLVM_NET_CIDR, else 172.16.0.0/16. */
const char *smolvm_nat_cidr(void);

/* Can network 'nat' work here (privilege, tun, nf_tables, an uplink)? */
int smolvm_nat_usable(smolvm_error **err);

/* Lease (idempotent), TAP and rules for the VM, with its forwards from the store. */
int smolvm_vm_net_up(smolvm_vm *vm, smolvm_vm_net *n, smolvm_error **err);
/* Remove the VM's TAP and rules (idempotent; failures are logged). */
void smolvm_vm_net_down(smolvm_ctx *ctx, const char *vm_id);
/* Add or remove one forward's rules for a running VM. */
int smolvm_vm_net_forward(smolvm_vm *vm, const char *addr, int host_port, int guest_port, int add,
                          smolvm_error **err);
/* Remove TAPs and rules of VMs not in live_ids (NULL-terminated). */
void smolvm_vm_net_gc(smolvm_ctx *ctx, const char *const *live_ids);

#endif
