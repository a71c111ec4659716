/* SPDX-License-Identifier: MIT */
/*
 * The state database (SQLite): VMs, IP leases, host ports / forwards, events.
 * Every allocation is one IMMEDIATE transaction and is unique by constraint, so many
 * processes can allocate at once without handing out a duplicate.
 */
#ifndef SMOLVM_STORE_H
#define SMOLVM_STORE_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#include "smolvm.h"

/* One row of the vms table. Strings are owned by the row. */
typedef struct smolvm_vm_row {
    char *id;
    char *status;       /* "created" | "starting" | "running" | "stopping" | "stopped" | "error" */
    char *backend;      /* "qemu" | "firecracker" */
    char *config_json;  /* the VM options as given, resolved (JSON object) */
    char *dir;          /* per-VM directory: disk, sockets, console log */
    char *reason;       /* why it is in "error"/"stopped" (may be NULL) */
    int64_t pid;        /* VMM pid, 0 when none */
    uint64_t pid_start; /* VMM start time (/proc/PID/stat field 22), 0 when none */
    int64_t created_at; /* wall clock ms */
    int64_t updated_at;
    int64_t sv_pid; /* the VM's supervisor, 0 when none */
    uint64_t sv_start;
    int64_t owner_pid; /* the process whose death deletes the VM, 0 when none */
    uint64_t owner_start;
    int64_t expires_at; /* wall clock ms after which the VM is deleted, 0 when never */
} smolvm_vm_row;

smolvm_vm_row *smolvm_vm_row_free(smolvm_vm_row *row);
void smolvm_vm_rows_free(smolvm_vm_row **rows, size_t n);

/* Valid VM id? */
int smolvm_id_valid(const char *id);

/* The stored VM statuses: created starting running paused stopping stopped error
 * suspending suspended. The static copy of status, or NULL for any other string. */
const char *smolvm_vm_status_canonical(const char *status);

/* Insert a VM. row->id NULL: generate "vm-" + 8 random hex chars, retrying on a
 * clash, and store the generated id in row->id. A given id already in use:
 * SMOLVM_EEXIST. created_at/updated_at are set here. */
int smolvm_store_vm_insert(smolvm_store *s, smolvm_vm_row *row, smolvm_error **err);

/* Host-wide quotas over every VM row (any status); 0: no limit. */
typedef struct smolvm_store_quota {
    unsigned max_vms;
    uint64_t max_memory_mib; /* summed over the rows' config "memory" */
} smolvm_store_quota;

/* smolvm_store_vm_insert within quota (NULL: none), checked in the same transaction
 * as the insert, so two inserts cannot both pass it. Past a quota: SMOLVM_ENOSPC,
 * naming the quota and the current use; nothing is inserted. */
int smolvm_store_vm_insert_quota(smolvm_store *s, smolvm_vm_row *row,
                                 const smolvm_store_quota *quota, smolvm_error **err);

/* How many VM rows there are and their guest memory summed (MiB). */
int smolvm_store_usage(smolvm_store *s, unsigned *vms, uint64_t *memory_mib, smolvm_error **err);
int smolvm_store_vm_get(smolvm_store *s, const char *id, smolvm_vm_row **out, smolvm_error **err);
int smolvm_store_vm_list(smolvm_store *s, smolvm_vm_row ***out, size_t *n, smolvm_error **err);
/* Update status (and reason, may be NULL), touching updated_at. */
int smolvm_store_vm_set_status(smolvm_store *s, const char *id, const char *status,
                               const char *reason, smolvm_error **err);
/* Record the VMM process (pid 0 clears it). */
int smolvm_store_vm_set_pid(smolvm_store *s, const char *id, int64_t pid, uint64_t pid_start,
                            smolvm_error **err);
/* Record the supervisor process (pid 0 clears it). */
int smolvm_store_vm_set_supervisor(smolvm_store *s, const char *id, int64_t pid, uint64_t pid_start,
                                   smolvm_error **err);
/* Who owns the VM (owner_pid 0: nobody) and until when (expires_at 0: no ttl). */
int smolvm_store_vm_set_lifetime(smolvm_store *s, const char *id, int64_t owner_pid,
                                 uint64_t owner_start, int64_t expires_at, smolvm_error **err);

/* Delete the VM and, in the same transaction, its leases and ports. */
int smolvm_store_vm_delete(smolvm_store *s, const char *id, smolvm_error **err);

/* Lease the lowest free address of `cidr` (e.g. "172.16.0.0/16") to vm_id. The
 * network address, the broadcast address and the first host (.1, the gateway side)
 * are never leased. Exhausted: SMOLVM_ENOSPC. A VM holding a lease in that CIDR gets
 * the same one back. out receives dotted quad text. */
int smolvm_store_lease_ip(smolvm_store *s, const char *vm_id, const char *cidr, char out[16],
                          smolvm_error **err);
int smolvm_store_release_ips(smolvm_store *s, const char *vm_id, smolvm_error **err);

/* Host ports. kind: "ssh" (user networking SSH forward) or "forward".
 * Reserve a specific port: SMOLVM_EEXIST if (host_addr, port, proto) is taken. */
int smolvm_store_port_add(smolvm_store *s, const char *vm_id, const char *kind,
                          const char *host_addr, int host_port, int guest_port, const char *proto,
                          smolvm_error **err);
/* Reserve the lowest free port in [lo, hi] for which `usable(port, payload)` returns
 * true (the caller checks the host can bind it; NULL accepts all). SMOLVM_ENOSPC when
 * none. */
int smolvm_store_port_alloc(smolvm_store *s, const char *vm_id, const char *kind,
                            const char *host_addr, int lo, int hi, int guest_port,
                            const char *proto, int (*usable)(int port, void *payload),
                            void *payload, int *out_port, smolvm_error **err);
int smolvm_store_port_remove(smolvm_store *s, const char *vm_id, const char *host_addr,
                             int host_port, const char *proto, smolvm_error **err);
/* The port of kind `kind` of a VM (first one), SMOLVM_ENOENT if none. */
int smolvm_store_port_get(smolvm_store *s, const char *vm_id, const char *kind, int *out_port,
                          smolvm_error **err);
int smolvm_store_release_ports(smolvm_store *s, const char *vm_id, smolvm_error **err);

typedef enum smolvm_port_kind {
    SMOLVM_PORT_SSH,     /* "ssh": user networking's forward to the guest's sshd */
    SMOLVM_PORT_FORWARD, /* "forward": a user's forward */
    _SMOLVM_PORT_KIND_MAX,
    _SMOLVM_PORT_KIND_INVALID = -EINVAL,
} smolvm_port_kind;

/* "ssh" | "forward": the kind strings the functions above take. */
const char *smolvm_port_kind_to_string(smolvm_port_kind k);

/* One row of the ports table. */
typedef struct smolvm_port_row {
    smolvm_port_kind kind;
    char host_address[46];
    int host_port;
    int guest_port;
    char proto[4]; /* "tcp" | "udp" */
} smolvm_port_row;

/* The ports of a VM in the order they were added. Caller frees *out (one array). */
int smolvm_store_ports_list(smolvm_port_row **out, size_t *n, smolvm_store *s, const char *vm_id,
                            smolvm_error **err);

/* Append to the event log (vm_id may be NULL). Failures are ignored by callers. */
int smolvm_store_event(smolvm_store *s, const char *vm_id, const char *kind, const char *detail,
                       smolvm_error **err);

/* Append n events of one kind for vm_id in one transaction, then keep only the newest
 * `keep` of that VM and kind (and the log's overall bound). at: each event's time
 * (wall clock ms; NULL or 0: now). For writers that batch (the supervisor's denied
 * attempts). */
int smolvm_store_events_append(smolvm_store *s, const char *vm_id, const char *kind,
                               const int64_t *at, const char *const *details, size_t n, size_t keep,
                               smolvm_error **err);

/* One row of the event log. */
typedef struct smolvm_event_row {
    int64_t id;
    int64_t at; /* wall clock ms */
    char *kind;
    char *detail; /* may be NULL */
} smolvm_event_row;

/* The newest `limit` events of vm_id (of kind; NULL: all), oldest first. Caller frees
 * with smolvm_event_rows_free. */
int smolvm_store_events_list(smolvm_event_row **out, size_t *n, smolvm_store *s, const char *vm_id,
                             const char *kind, size_t limit, smolvm_error **err);
smolvm_event_row *smolvm_event_rows_free(smolvm_event_row *rows, size_t n);

/* Replace the VM's stored configuration (its JSON; see vm-config.h). */
int smolvm_store_vm_set_config(smolvm_store *s, const char *id, const char *config_json,
                               smolvm_error **err);

/* Reserve a forward (kind "forward", tcp) for vm_id, unless the VM already has `max`
 * of them: SMOLVM_ENOSPC. Counted and inserted in one transaction. */
int smolvm_store_forward_add(smolvm_store *s, const char *vm_id, const char *host_addr,
                             int host_port, int guest_port, size_t max, smolvm_error **err);

#endif
