/* SPDX-License-Identifier: MIT */
/*
 * The firecracker binary: finding it, checking its version, and downloading the pinned
 * release archive (sha256-verified before anything in it is used). Also the small
 * process helper the backend uses for mkfs.ext4.
 */
#ifndef SMOLVM_VMM_FC_BINARY_H
#define SMOLVM_VMM_FC_BINARY_H

#include <stdint.h>

#include "smolvm.h"

#define SMOLVM_FC_ENV "SMOLVM_FIRECRACKER" /* path of the binary to use */
/* "1" or a jailer's path: jail each VM (see fc-jailer.h) */
#define SMOLVM_FC_JAILER_ENV "SMOLVM_JAILER"
#define SMOLVM_FC_PINNED_VERSION "1.16.1" /* the API contract we follow */
#define SMOLVM_FC_MIN_VERSION "1.4.0"     /* PUT /entropy and mem_backend */
#define SMOLVM_FC_RELEASE_URL                                                                      \
    "https://github.com/firecracker-microvm/firecracker/releases/download/"                        \
    "v" SMOLVM_FC_PINNED_VERSION "/firecracker-v" SMOLVM_FC_PINNED_VERSION "-%s.tgz"
#define SMOLVM_FC_DOWNLOAD_MAX (256u << 20) /* the release archive is ~10 MB */

/* $XDG_DATA_HOME/smolvm/bin (default ~/.local/share/smolvm/bin). Caller frees. */
int smolvm_fc_bin_dir(char **out, smolvm_error **err);

/* The firecracker to use: $SMOLVM_FIRECRACKER (must be executable), else
 * <bin dir>/firecracker, else 'firecracker' in PATH. SMOLVM_EHOST with a hint when
 * none is found. Caller frees. */
int smolvm_fc_find_binary(char **out, smolvm_error **err);

/* Run `path --version` and return "1.16.1" (caller frees). SMOLVM_EHOST if it is not
 * firecracker or older than SMOLVM_FC_MIN_VERSION. */
int smolvm_fc_binary_version(const char *path, char **version, int64_t deadline,
                             smolvm_error **err);

/* Compare dotted versions "1.16.1" and "1.4": <0, 0, >0. */
int smolvm_fc_version_cmp(const char *a, const char *b);

/* Progress of a download: bytes so far and the total (0 when unknown). */
typedef void (*smolvm_fc_progress_fn)(uint64_t done, uint64_t total, void *payload);

typedef struct smolvm_fc_download_opts {
    const char *url;                /* NULL: the pinned release for this machine */
    const char *sha256;             /* expected, hex; NULL: the pinned one (required with url) */
    const char *dest_dir;           /* NULL: smolvm_fc_bin_dir() */
    smolvm_fc_progress_fn progress; /* may be NULL */
    void *payload;
    int timeout_ms; /* whole download + unpack; 0: 300 s */
} smolvm_fc_download_opts;

/* Download the release archive, verify its sha256 (a mismatch deletes the download
 * and says so: SMOLVM_EIO), unpack it with tar, install firecracker (and jailer) into
 * dest_dir and check the installed binary's version. *path receives the installed
 * firecracker (caller frees). */
int smolvm_fc_download(const smolvm_fc_download_opts *opts, char **path, smolvm_error **err);

#endif
