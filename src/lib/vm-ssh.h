/* SPDX-License-Identifier: MIT */
/* A VM's SSH transport: the installation's client key and the VM's persistent
 * session (ssh.c underneath). */
#ifndef SMOLVM_VM_SSH_H
#define SMOLVM_VM_SSH_H

#include <stdint.h>

#include "context.h"
#include "vm-internal.h"

/* Installation-wide SSH client key (created on first use). Caller frees both. */
int smolvm_client_key(char **key_path, char **pub_line, smolvm_ctx *ctx, smolvm_error **err);

/* Open the persistent session of a VM known to be running (no status check). */
int smolvm_vm_ssh_connect(smolvm_vm *vm, int64_t deadline, smolvm_error **err);
/* The session of a running VM: connected if needed, SMOLVM_ESTATE if not running. */
int smolvm_vm_ssh_ensure(smolvm_vm *vm, int64_t deadline, smolvm_error **err);
/* Drop the session (after a failure, or on stop). */
void smolvm_vm_ssh_drop(smolvm_vm *vm);

#endif
