/* SPDX-License-Identifier: MIT */
/*
 * Who the VMM runs as (docs/security.md). When smolvm runs as root, each running VMM
 * gets a uid (and a gid of the same number) of its own from SMOLVM_VMM_UID_BASE on: no
 * /etc/passwd entry, nothing on disk owned by it, so a fresh host needs no setup and
 * two VMMs can never signal or trace each other. A uid is taken by locking its byte of
 * SMOLVM_VMM_UID_LOCK (an open file description lock) for as long as the supervisor
 * lives: unique across state directories, and given back by the kernel when the
 * supervisor ends, even by SIGKILL. Rootless, the VMM keeps the user's uid.
 */
#ifndef SMOLVM_CONFINE_H
#define SMOLVM_CONFINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smolvm.h"

/* 1879048192..1879113727: above systemd's container range (524288..1879048191) and
 * the shadow suite's default subordinate ids (100000..600100000), below 2^31 (see
 * systemd's UIDS-GIDS.md: "unused"). */
#define SMOLVM_VMM_UID_BASE 1879048192u
#define SMOLVM_VMM_UID_COUNT 65536u
#define SMOLVM_RUN_DIR "/run/smolvm"
#define SMOLVM_VMM_UID_LOCK SMOLVM_RUN_DIR "/vmm-uids.lock"

/* Can this process give its VMM a uid of its own? 1 yes; 0 no, with *why (static
 * text): not root, or the range is not mapped in this user namespace. */
int smolvm_confine_uid_possible(const char **why);

/* Take the lowest free uid of the range. *lock_fd holds it (close-on-exec) until it is
 * closed or the process ends. SMOLVM_ENOSPC when all are taken. */
int smolvm_confine_uid_acquire(uint32_t *uid, int *lock_fd, smolvm_error **err);

/* Entries of the user database, /etc/subuid or /etc/subgid inside the range: a short
 * description into out ("" when none). */
void smolvm_confine_uid_conflicts(char *out, size_t size);

#endif
