/* SPDX-License-Identifier: MIT */
/* A VM's host ports: user networking's SSH port, forwards, and whether they can be
 * bound right now. The store keeps them; this decides and checks. */
#ifndef SMOLVM_VM_PORTS_H
#define SMOLVM_VM_PORTS_H

#include <stdbool.h>
#include <stddef.h>

#include "context.h"
#include "store.h"
#include "vmm/vmm.h"

/* Host ports for user networking's SSH forward. */
#define SMOLVM_SSH_PORT_MIN 20000
#define SMOLVM_SSH_PORT_MAX 29999

/* Could a TCP socket be bound to addr (IPv4 text):port right now? */
bool smolvm_port_bindable(const char *addr, int port);

/* Reserve a free, bindable 127.0.0.1 port for the VM's SSH forward. */
int smolvm_vm_ssh_port_alloc(int *port, smolvm_store *s, const char *vm_id, smolvm_error **err);

/* Before a user-networking VM starts: its SSH port, reserved at create, may have been
 * taken since (another state dir, another program): move it. A forward's port the
 * user chose is not moved: taken is SMOLVM_EEXIST naming it. */
int smolvm_vm_ports_revalidate(smolvm_ctx *ctx, const char *vm_id, smolvm_error **err);

/* The forwards QEMU user networking needs (index 0 is ssh → guest 22, then the VM's
 * forwards). *rows holds the strings *out points into; the caller frees both. */
int smolvm_vm_hostfwds(smolvm_vmm_hostfwd **out, size_t *n, smolvm_port_row **rows, smolvm_store *s,
                       const char *vm_id, smolvm_error **err);

#endif
