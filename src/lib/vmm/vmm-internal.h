/* SPDX-License-Identifier: MIT */
/* What the VMM backends (qemu.c, firecracker.c) share: crun's handler-utils. */
#ifndef SMOLVM_VMM_INTERNAL_H
#define SMOLVM_VMM_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "smolvm.h"
#include "vmm/vmm.h"

/* dir + "/" + name; NULL when out of memory. Caller frees. */
char *smolvm_vmm_path(const char *dir, const char *name);

/* What every backend requires of a config: an absolute VM dir, a kernel, a disk and
 * a command line, vcpus and memory in range. SMOLVM_EINVAL naming the first fault. */
int smolvm_vmm_check_machine(const smolvm_vmm_config *c, smolvm_error **err);

/* "xx:xx:xx:xx:xx:xx" (hex)? */
bool smolvm_vmm_valid_mac(const char *mac);
/* A Linux interface name of 1..15 characters of [A-Za-z0-9._-]? */
bool smolvm_vmm_valid_ifname(const char *s);

/* The kernel command line with its root mounted read-only ("rw" becomes "ro") and,
 * when overlay_dev is set, smolvm.overlay=<overlay_dev> appended for the guest init.
 * NULL when out of memory. Caller frees. */
char *smolvm_vmm_ro_cmdline(const char *cmdline, const char *overlay_dev);

/* Unlink dir/name for each name (missing files are fine). */
void smolvm_vmm_remove_files(const char *dir, const char *const *names, size_t n);

/* The end of describe(): obj (owned, may be NULL when building it failed) as compact
 * JSON text in *out. */
int smolvm_vmm_describe_text(char **out, json_t *obj, smolvm_error **err);

#endif
