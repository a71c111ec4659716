/* SPDX-License-Identifier: MIT */
/* A VM's NAT network (vm-net.c), on top of the host networking module (net/): lease,
 * TAP and rules, tied to the VM's life. */
#ifndef SMOLVM_VM_NET_H
#define SMOLVM_VM_NET_H

#include <stdbool.h>

#include "context.h"
#include "sv-spec.h"
#include "vm-config.h"

typedef struct smolvm_vm_net {
    char tap[16];
    char mac[18];
    char ip[16];
    char gateway[16];
    char netmask[16];
    char dns[16];     /* the guest's resolver: the gateway, where the VM's DNS filter answers */
    bool have_dns;    /* the host has a resolver for the filter to ask */
    smolvm_sv_net sv; /* for the supervisor's spec (its egress borrowed from the config) */
} smolvm_vm_net;

/* Can network 'nat' work here (privilege, tun, nf_tables, an uplink)? */
int smolvm_nat_usable(const smolvm_ctx *ctx, smolvm_error **err);

/* Lease (idempotent), TAP and rules for the VM, with its egress policy (from cfg) and
 * its forwards (from the store). n->sv is what the supervisor needs to serve it. */
int smolvm_vm_net_up(smolvm_vm_net *n, smolvm_ctx *ctx, const char *vm_id,
                     const smolvm_vm_config *cfg, smolvm_error **err);
/* Remove the VM's TAP and rules (idempotent; failures are logged). */
void smolvm_vm_net_down(smolvm_ctx *ctx, const char *vm_id);
/* Remove the TAPs and rules of VMs that are not live (running, starting, stopping),
 * the store read under the host-wide network lock. Failures are logged. */
void smolvm_vm_net_gc(smolvm_ctx *ctx);

#endif
