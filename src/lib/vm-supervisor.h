/* SPDX-License-Identifier: MIT */
/* The library's side of a VM's supervisor (src/supervisor): launching it, and asking it
 * to power the guest off or to let the sandbox outlive its owner. */
#ifndef SMOLVM_VM_SUPERVISOR_H
#define SMOLVM_VM_SUPERVISOR_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "context.h"
#include "sv-spec.h"

typedef struct smolvm_sv_pids {
    pid_t sv_pid;
    uint64_t sv_start;
    pid_t vmm_pid;
    uint64_t vmm_start;
} smolvm_sv_pids;

/* Where the supervisor binary is: the context's (from $SMOLVM_SUPERVISOR), else the
 * build tree's when this library is the build tree's, else the installed one. */
const char *smolvm_sv_binary(const smolvm_ctx *ctx);

/* Write spec, start the supervisor detached, and return once it says the VMM runs
 * (or why it could not start it). */
int smolvm_sv_launch(smolvm_sv_pids *out, smolvm_ctx *ctx, const smolvm_sv_spec *spec,
                     int64_t deadline, smolvm_error **err);

/* Ask the supervisor of the VM in dir to power the guest off (returns once asked). */
int smolvm_sv_poweroff(const char *dir, int64_t deadline, smolvm_error **err);
/* One of the supervisor's own operations (docs/agent-protocol.md); takes req. *out (may
 * be NULL) gets its reply. */
int smolvm_sv_call(json_t **out, const char *dir, json_t *req, int64_t deadline,
                   smolvm_error **err);
/* No owner any more; the ttl stays as it is. */
int smolvm_sv_keep(const char *dir, int64_t deadline, smolvm_error **err);

/* Network "nat": replace the running VM's egress policy (the DNS filter's names, then
 * the rules in one batch); the supervisor's answer is the result. */
int smolvm_sv_egress(const char *dir, const smolvm_egress_policy *policy, int64_t deadline,
                     smolvm_error **err);
/* Network "nat": add (add = true) or remove a forward of the running VM: NAT rules for
 * other addresses, the supervisor's proxy for loopback ones (both for 0.0.0.0). */
int smolvm_sv_forward(const char *dir, bool add, const char *host_address, int host_port,
                      int guest_port, int64_t deadline, smolvm_error **err);

#endif
