/* SPDX-License-Identifier: MIT */
#ifndef SMOLVM_CONTEXT_H
#define SMOLVM_CONTEXT_H

#include "smolvm.h"

struct smolvm_ctx {
    char *state_dir; /* created, mode 0700 */
    char *image_dir; /* not created: images are built by scripts/build-image.sh */
    char *db_path;   /* state_dir/smolvm.db */
    smolvm_store *store;
    smolvm_log_fn log;
    void *log_payload;
    int log_level;
};

#endif
