/* SPDX-License-Identifier: MIT */
#ifndef SMOLVM_CONTEXT_H
#define SMOLVM_CONTEXT_H

#include "smolvm.h"

#include <stdbool.h>

#define SMOLVM_NAT_CIDR_DEFAULT "172.16.0.0/16"

struct smolvm_ctx {
    char *state_dir;    /* created, mode 0700 */
    char *image_dir;    /* not created: images are built by scripts/build-image.sh */
    char *template_dir; /* created (0700) when the first template is made */
    char *db_path;      /* state_dir/smolvm.db */
    smolvm_store *store;
    smolvm_log_fn log;
    void *log_payload;
    int log_level;
    /* Network policy, resolved at creation (options, then environment, then default). */
    char *nat_cidr;   /* never NULL */
    char *nat_uplink; /* NULL: the default route's interface */
    char *nat_dns;    /* NULL: the host's first non-loopback nameserver */
    uint64_t console_max;
    uint64_t download_max;
    char *supervisor; /* $SMOLVM_SUPERVISOR, or NULL: found by vm-supervisor.c */
    unsigned max_vms; /* quotas, 0: none (smolvm_ctx_options) */
    uint64_t max_memory_mib;
    bool tcg_warned; /* the first start under TCG said what that means */
};

#define SMOLVM_DOWNLOAD_MAX_DEFAULT (1ULL << 30)

/* smolvm_default_image_dir and smolvm_default_template_dir: public (smolvm.h). */

#endif
