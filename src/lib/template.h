/* SPDX-License-Identifier: MIT */
/*
 * Templates on disk (docs/templates.md): a VM frozen under the template directory,
 * <template dir>/<name>/ with
 *   template.json   what it is (below), written last
 *   state           the VMM's device state (QEMU: its migration stream)
 *   mem             the guest memory, when it is not in the state ("memory": "shared")
 *   disk.qcow2      the disk, backed by the image's rootfs (or the parent template's disk)
 *   upper.ext4      firecracker instead: the overlay's upper disk (the image's rootfs is
 *                   the lower)
 * A suspended VM keeps the same files (without the disk) in <vm dir>/suspended/, with
 * the same JSON as saved.json, so one reader serves both.
 */
#ifndef SMOLVM_TEMPLATE_H
#define SMOLVM_TEMPLATE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "image.h"
#include "smolvm.h"

#define SMOLVM_TEMPLATE_JSON "template.json"
#define SMOLVM_SAVED_JSON "saved.json"
#define SMOLVM_SAVED_STATE "state"
#define SMOLVM_SAVED_MEM "mem"
#define SMOLVM_TEMPLATE_DISK "disk.qcow2"
/* Firecracker (no qcow2): the overlay's upper disk, copied (sparse) for each clone; the
 * lower is the image's rootfs, which the template records. */
#define SMOLVM_TEMPLATE_UPPER "upper.ext4"
#define SMOLVM_SUSPENDED_DIR "suspended"

typedef struct smolvm_template {
    char *name; /* NULL for a suspended VM's saved state */
    char *dir;
    json_t *json;             /* the file as read; the strings below are borrowed from it */
    const char *image;        /* image name */
    const char *image_built;  /* its manifest's "built" when the template was made */
    const char *image_inputs; /* its manifest's "inputs_hash" */
    const char *source_vm;
    const char *parent; /* the template whose disk backs this one's, or NULL */
    const char *memory; /* "shared": in mem; "stream": in state; "file": firecracker's mem */
    const char *accel;  /* "kvm" | "tcg" */
    smolvm_backend backend;
    smolvm_net_mode network; /* none: the VM has no network device */
    unsigned vcpus, memory_mib;
    int64_t created_ms; /* wall clock */
    bool ephemeral;     /* made by a fork: removed with its last clone */
    json_t *agent;      /* the agent's hello when it was made */
    uint32_t next_stream;
} smolvm_template;

smolvm_template *smolvm_template_free(smolvm_template *t);
void smolvm_template_freep(smolvm_template **t);

/* A valid template name: the VM id charset. */
bool smolvm_template_name_valid(const char *name);

/* <template dir>/<name> (not checked). */
char *smolvm_template_path(const smolvm_ctx *ctx, const char *name);

/* Read the template `name`. SMOLVM_ENOENT (with a hint) when there is none. */
int smolvm_template_open(smolvm_template **out, smolvm_ctx *ctx, const char *name,
                         smolvm_error **err);
/* Read saved state from dir/json_name (template.json or saved.json). */
int smolvm_template_load(smolvm_template **out, const char *dir, const char *json_name,
                         smolvm_error **err);

/* Does img still hold what t was made from? SMOLVM_ESTATE with the reason if not. */
int smolvm_template_check_image(const smolvm_template *t, const smolvm_image *img,
                                smolvm_error **err);

/* The VMs made from template `name` and the templates made from it (their disks are
 * backed by its disk), as a NULL-terminated array of ids (templates as "template
 * NAME"). Caller frees with smolvm_strv_free. */
int smolvm_template_users(char ***out, smolvm_ctx *ctx, const char *name, smolvm_error **err);
void smolvm_strv_free(char **v);

/* Remove template `name`: refused (SMOLVM_ESTATE, the users named) while anything uses
 * it. */
int smolvm_template_remove(smolvm_ctx *ctx, const char *name, smolvm_error **err);

/* A clone of template `name` is gone: remove the template if it is ephemeral and
 * nothing uses it any more (and so on up its parents). Best effort. */
void smolvm_template_release(smolvm_ctx *ctx, const char *name);

/* A clone's disk in vm_dir: a qcow2 overlay backed by the template's disk. */
int smolvm_template_make_disk(const smolvm_template *t, const char *vm_dir, char **disk_path,
                              smolvm_error **err);

/* Move a finished staging directory into place as template `name`; SMOLVM_EEXIST if
 * there is one already. */
int smolvm_template_commit(smolvm_ctx *ctx, const char *staging, const char *name,
                           smolvm_error **err);

#endif
