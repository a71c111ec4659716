/* SPDX-License-Identifier: MIT */
/* A VM's agent transport: its connection to the supervisor, and commands, files and
 * processes over it (docs/agent-protocol.md). */
#ifndef SMOLVM_VM_AGENT_H
#define SMOLVM_VM_AGENT_H

#include <stdint.h>

#include "vm-internal.h"

/* The connection of a running VM: reconnected when broken, SMOLVM_ESTATE when the VM is
 * not running. */
int smolvm_vm_agent_ensure(smolvm_vm *vm, int64_t deadline, smolvm_error **err);
void smolvm_vm_agent_drop(smolvm_vm *vm);

int smolvm_vm_agent_run(smolvm_run_result **out, smolvm_vm *vm, const char *cmd,
                        const smolvm_run_options *opts, smolvm_error **err);
int smolvm_vm_agent_read(char **data, size_t *len, smolvm_vm *vm, const char *remote, size_t max,
                         smolvm_error **err);
int smolvm_vm_agent_write(smolvm_vm *vm, const char *remote, const void *data, size_t len,
                          unsigned mode, smolvm_error **err);
int smolvm_vm_agent_upload(smolvm_vm *vm, const char *local, const char *remote,
                           smolvm_error **err);
int smolvm_vm_agent_download(smolvm_vm *vm, const char *remote, const char *local, size_t max,
                             smolvm_error **err);

#endif
