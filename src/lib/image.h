/* SPDX-License-Identifier: MIT */
/* Guest images (built by scripts/build-image.sh) and per-VM disks. */
#ifndef SMOLVM_IMAGE_H
#define SMOLVM_IMAGE_H

#include <stdbool.h>
#include <stdint.h>

#include "smolvm.h"

typedef struct smolvm_image {
    char *name;
    char *dir;      /* <image dir>/<name> */
    char *kernel;   /* dir/vmlinux */
    char *rootfs;   /* dir/rootfs.ext4 (raw) */
    bool has_agent; /* the manifest names our guest agent */
    /* From the manifest (scripts/build-image.sh), each checked; NULL when absent. */
    char *built;           /* UTC, ISO 8601 */
    char *inputs_hash;     /* what the build was made from (scripts/build-image.sh) */
    char *kernel_version;  /* uname -r of the kernel */
    char **extra_packages; /* NULL-terminated; packages asked for beyond the default set */
    bool has_manifest;
    bool complete; /* kernel and rootfs are there */
    uint64_t size; /* bytes the directory's files take on disk */
} smolvm_image;

/* A valid image name: a valid VM id other than "templates". */
bool smolvm_image_name_valid(const char *name);

/* A valid Debian package name: [a-z0-9][a-z0-9+.-]+, at most SMOLVM_PACKAGE_NAME_MAX. */
bool smolvm_package_name_valid(const char *name);

/* What is in the image directory `name`, complete or not (size and manifest read).
 * No such directory: SMOLVM_ENOENT. */
int smolvm_image_load(smolvm_ctx *ctx, const char *name, smolvm_image **out, smolvm_error **err);

/* Find an image by name (same charset as VM ids) with both of its files. Missing:
 * SMOLVM_EHOST with a hint to build it. */
int smolvm_image_find(smolvm_ctx *ctx, const char *name, smolvm_image **out, smolvm_error **err);
smolvm_image *smolvm_image_free(smolvm_image *img);

/* Remove the directory of image `name`, holding the lock builds take (a build
 * running: SMOLVM_ESTATE): renamed aside first, then deleted. None: SMOLVM_ENOENT.
 * No policy here (who uses it): see image-remove.c. */
int smolvm_image_dir_remove(smolvm_ctx *ctx, const char *name, smolvm_error **err);

/* Make the VM's root disk in vm_dir. isolated: a qcow2 overlay backed by the
 * read-only base (cost independent of image size); shared: the base itself. */
int smolvm_image_make_disk(const smolvm_image *img, int disk_mode, const char *vm_dir,
                           char **disk_path, const char **format, smolvm_error **err);

#endif
