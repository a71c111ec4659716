/* SPDX-License-Identifier: MIT */
/*
 * A VM's configuration, typed (firecracker's VmResources is the model): options are
 * validated and resolved once at create into a smolvm_vm_config, stored as its JSON
 * serialisation, and parsed back into the struct whenever the row is read. Nothing
 * else reads the stored JSON key by key.
 */
#ifndef SMOLVM_VM_CONFIG_H
#define SMOLVM_VM_CONFIG_H

#include <stdbool.h>

#include "egress.h"
#include "smolvm.h"

typedef enum smolvm_disk_format {
    SMOLVM_DISK_FORMAT_QCOW2,
    SMOLVM_DISK_FORMAT_RAW,
    _SMOLVM_DISK_FORMAT_MAX,
    _SMOLVM_DISK_FORMAT_INVALID = -EINVAL,
} smolvm_disk_format;

/* "qcow2" | "raw" (what the VMM backends take). */
const char *smolvm_disk_format_to_string(smolvm_disk_format f);

/* A forward declared when the VM was made (the store's ports table holds the live
 * set, which smolvm_vm_forward can change later). */
typedef struct smolvm_vm_fwd {
    char host_address[16];
    int host_port;
    int guest_port;
} smolvm_vm_fwd;

typedef struct smolvm_vm_config {
    unsigned vcpus;
    unsigned memory_mib;
    smolvm_disk_mode disk;
    smolvm_backend backend;  /* resolved: qemu or firecracker */
    smolvm_accel accel;      /* as asked (auto is resolved at each start) */
    smolvm_net_mode network; /* resolved: none, user or nat */
    char *image;             /* image name */
    char *kernel;            /* path */
    char *disk_path;         /* the root disk the VMM opens */
    smolvm_disk_format disk_format;
    char *overlay_disk; /* firecracker, isolated: the overlay upper disk; else NULL */
    char *guest_ip;     /* user networking: the guest's fixed address; else NULL */
    char *cidr;         /* nat: the pool the lease comes from; else NULL */
    char **env;         /* NULL-terminated "NAME=value" */
    size_t n_env;
    smolvm_vm_fwd *forwards;
    size_t n_forwards;
    smolvm_transport transport; /* resolved: agent or ssh */
    int64_t ttl_ms;             /* 0: none */
    char **labels;              /* NULL-terminated "key=value" */
    size_t n_labels;
    smolvm_egress_policy egress; /* resolved: internet, none or allow (nat); none otherwise */
    char *template_name; /* made as a clone of this template (its disk backs ours); or NULL */
} smolvm_vm_config;

smolvm_vm_config *smolvm_vm_config_free(smolvm_vm_config *c);
void smolvm_vm_config_freep(smolvm_vm_config **c);

/* Apply the defaults of zeroed fields to a copy of o (pointers borrowed from o) and
 * check every field; the messages name the field ("memory: expected 128..16384 (MiB),
 * got 64"). */
int smolvm_vm_options_check(smolvm_vm_options *out, const smolvm_vm_options *o, smolvm_error **err);

/* What the host can do, for resolving "auto": NULL means usable, else why not. The
 * caller fills only what the options can need (smolvm_vm_resolve_needs). */
typedef struct smolvm_vm_host_facts {
    const smolvm_error *nat;         /* network "nat" */
    const smolvm_error *firecracker; /* backend "firecracker" (binary + usable KVM) */
} smolvm_vm_host_facts;

/* Which facts resolving o looks at. */
void smolvm_vm_resolve_needs(const smolvm_vm_options *o, bool *nat, bool *firecracker);

/* Backend and network for checked options, from the host facts. A pure function:
 * backend "auto" is firecracker where it can run and the network allows it, else qemu;
 * network "auto" is nat where possible, else user (qemu) or none (firecracker, which
 * has no user networking). An egress policy the network cannot enforce (anything but
 * "none" with "user") is SMOLVM_EINVAL. */
int smolvm_vm_resolve(smolvm_backend *backend, smolvm_net_mode *network, const smolvm_vm_options *o,
                      const smolvm_vm_host_facts *facts, smolvm_error **err);

/* Where a new VM's pieces are, decided by the caller. */
typedef struct smolvm_vm_placement {
    const char *dir;           /* the VM's directory */
    const char *image;         /* image name */
    const char *kernel;        /* the image's kernel */
    const char *rootfs;        /* the image's raw root filesystem */
    const char *cidr;          /* nat pool */
    const char *user_ip;       /* user networking guest address */
    bool image_has_agent;      /* the image carries our agent (transport "auto" uses it) */
    const char *template_name; /* a clone of this template: its disk is an overlay of the
                                * template's (never the shared base) */
} smolvm_vm_placement;

/* The configuration of a new VM from checked options and resolved choices. */
int smolvm_vm_config_new(smolvm_vm_config **out, const smolvm_vm_options *o, smolvm_backend backend,
                         smolvm_net_mode network, const smolvm_vm_placement *where,
                         smolvm_error **err);

/* Serialise (the stored form, also the "config" member of vm info). Caller frees. */
int smolvm_vm_config_to_json(char **out, const smolvm_vm_config *c, smolvm_error **err);
/* Parse the stored form; anything missing or of the wrong type is SMOLVM_EDB. */
int smolvm_vm_config_from_json(smolvm_vm_config **out, const char *json, smolvm_error **err);

#endif
