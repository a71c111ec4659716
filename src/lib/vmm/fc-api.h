/* SPDX-License-Identifier: MIT */
/*
 * A client for the Firecracker REST API (reference/firecracker-v1.16.1.yaml): HTTP/1.1
 * over the VMM's unix socket with libcurl, JSON bodies with jansson. One handle keeps
 * one connection (keep-alive); it is not thread-safe, use one per thread.
 *
 * Every call takes a deadline (monotonic ms). A refused request (4xx/5xx) becomes
 * SMOLVM_EVMM with "<METHOD> <path>: firecracker answered <status>: <fault_message>";
 * no VMM behind the socket is SMOLVM_ESTATE, a passed deadline SMOLVM_ETIMEDOUT.
 */
#ifndef SMOLVM_VMM_FC_API_H
#define SMOLVM_VMM_FC_API_H

#include <jansson.h>
#include <stdint.h>

#include "smolvm.h"

#define SMOLVM_FC_ID_MAX 64 /* drive_id, iface_id: [A-Za-z0-9_]{1,64} */

typedef struct smolvm_fc_api smolvm_fc_api;

/* A handle for the API socket at sock_path (nothing is connected until the first
 * call). Free with smolvm_fc_api_free. */
int smolvm_fc_api_new(smolvm_fc_api **out, const char *sock_path, smolvm_error **err);
smolvm_fc_api *smolvm_fc_api_free(smolvm_fc_api *api);
static inline void smolvm_fc_api_freep(smolvm_fc_api **p)
{
    if (*p)
        *p = smolvm_fc_api_free(*p);
}

/* Is s a resource id Firecracker accepts (drive_id, iface_id)? */
int smolvm_fc_valid_id(const char *s);

/* One request. body (borrowed, may be NULL) is sent as JSON; *reply (may be NULL)
 * receives the parsed JSON answer of a 200 (NULL for 204). */
int smolvm_fc_api_call(smolvm_fc_api *api, const char *method, const char *path, json_t *body,
                       json_t **reply, int64_t deadline, smolvm_error **err);

/* ---- pre-boot configuration */
int smolvm_fc_put_machine_config(smolvm_fc_api *api, unsigned vcpus, unsigned mem_mib,
                                 int64_t deadline, smolvm_error **err);
/* boot_args may be NULL. */
int smolvm_fc_put_boot_source(smolvm_fc_api *api, const char *kernel, const char *boot_args,
                              int64_t deadline, smolvm_error **err);

typedef struct smolvm_fc_drive {
    const char *id;   /* [A-Za-z0-9_]{1,64} */
    const char *path; /* path_on_host */
    int root;         /* is_root_device */
    int read_only;    /* is_read_only */
} smolvm_fc_drive;
/* cache_type "Writeback": guest flushes reach the host file (like the QEMU backend). */
int smolvm_fc_put_drive(smolvm_fc_api *api, const smolvm_fc_drive *d, int64_t deadline,
                        smolvm_error **err);
/* guest_mac may be NULL. */
int smolvm_fc_put_network_interface(smolvm_fc_api *api, const char *iface_id,
                                    const char *host_dev_name, const char *guest_mac,
                                    int64_t deadline, smolvm_error **err);
/* guest_cid >= 3. */
int smolvm_fc_put_vsock(smolvm_fc_api *api, unsigned guest_cid, const char *uds_path,
                        int64_t deadline, smolvm_error **err);
/* level: Error|Warning|Info|Debug|Trace|Off. The file must exist. */
int smolvm_fc_put_logger(smolvm_fc_api *api, const char *log_path, const char *level,
                         int64_t deadline, smolvm_error **err);
/* The file must exist. */
int smolvm_fc_put_metrics(smolvm_fc_api *api, const char *metrics_path, int64_t deadline,
                          smolvm_error **err);
/* A virtio-rng device for the guest (sshd's first getrandom() does not block). */
int smolvm_fc_put_entropy(smolvm_fc_api *api, int64_t deadline, smolvm_error **err);

/* ---- actions and runtime */
/* action: "InstanceStart" | "SendCtrlAltDel" | "FlushMetrics". */
int smolvm_fc_action(smolvm_fc_api *api, const char *action, int64_t deadline, smolvm_error **err);
/* PATCH /vm: paused 1 -> "Paused", 0 -> "Resumed". */
int smolvm_fc_patch_vm(smolvm_fc_api *api, int paused, int64_t deadline, smolvm_error **err);
/* Full snapshot of a paused VM. */
int smolvm_fc_snapshot_create(smolvm_fc_api *api, const char *snapshot_path, const char *mem_path,
                              int64_t deadline, smolvm_error **err);
/* PUT /snapshot/load. */
typedef struct smolvm_fc_load {
    const char *snapshot_path;
    const char *mem_path; /* mem_backend File: firecracker maps it privately */
    int resume;           /* 1: the guest runs right away */
    /* Where the restored vsock device listens (vsock_override); NULL: the snapshot's. */
    const char *vsock_uds;
    /* The TAP of interface "eth0" (network_overrides); NULL: the snapshot's. */
    const char *tap;
} smolvm_fc_load;

/* On a fresh process only (after the logger and metrics at most). */
int smolvm_fc_snapshot_load(smolvm_fc_api *api, const smolvm_fc_load *load, int64_t deadline,
                            smolvm_error **err);
/* GET /: the InstanceInfo object (caller decrefs). */
int smolvm_fc_describe(smolvm_fc_api *api, json_t **info, int64_t deadline, smolvm_error **err);
/* GET /version: "1.16.1" (caller frees). */
int smolvm_fc_version(smolvm_fc_api *api, char **version, int64_t deadline, smolvm_error **err);

#endif
