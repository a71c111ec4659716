/* SPDX-License-Identifier: MIT */
/* Guest images (built by scripts/build-image.sh) and per-VM disks. */
#ifndef SMOLVM_IMAGE_H
#define SMOLVM_IMAGE_H

#include <stdbool.h>
#include <stdint.h>

#include "smolvm.h"

typedef struct smolvm_image {
    char *name;
    char *dir;         /* <image dir>/<name> */
    char *kernel;      /* dir/vmlinux */
    char *rootfs;      /* dir/rootfs.ext4 (raw) */
    bool has_agent;    /* the manifest names our guest agent */
    char *built;       /* the manifest's "built" (when the build finished), or NULL */
    char *inputs_hash; /* the manifest's "inputs_hash", or NULL */
} smolvm_image;

/* Find an image by name (same charset as VM ids). Missing: SMOLVM_EHOST with a hint
 * to build it. */
int smolvm_image_find(smolvm_ctx *ctx, const char *name, smolvm_image **out, smolvm_error **err);
smolvm_image *smolvm_image_free(smolvm_image *img);

/* Make the VM's root disk in vm_dir. isolated: a qcow2 overlay backed by the
 * read-only base (cost independent of image size); shared: the base itself. */
int smolvm_image_make_disk(const smolvm_image *img, int disk_mode, const char *vm_dir,
                           char **disk_path, const char **format, smolvm_error **err);

#endif
