/* SPDX-License-Identifier: MIT */
/*
 * A small QMP client (QEMU Machine Protocol): line-oriented JSON over a unix socket.
 * Every call takes a deadline (monotonic ms, see smolvm_now_ms). One client is used
 * by one thread at a time. QEMU serves one QMP client per monitor at a time: a second
 * connection waits in the listen backlog until the first one closes.
 */
#ifndef SMOLVM_VMM_QMP_H
#define SMOLVM_VMM_QMP_H

#include <jansson.h>
#include <stdint.h>

#include "smolvm.h"

/* Largest single QMP message accepted; a longer line is an error (SMOLVM_EVMM). */
#define SMOLVM_QMP_MESSAGE_MAX (1024 * 1024)
/* Asynchronous events kept while waiting for replies; older ones are dropped. */
#define SMOLVM_QMP_EVENTS_MAX 64

typedef struct smolvm_qmp smolvm_qmp;

/* Connect to the QMP socket at path, read the greeting and negotiate capabilities.
 * A socket nobody listens on (no VMM) gives SMOLVM_ESTATE. */
int smolvm_qmp_connect(smolvm_qmp **out, const char *path, int64_t deadline, smolvm_error **err);

/* Same over an already connected socket; takes ownership of fd (closed on failure). */
int smolvm_qmp_open_fd(smolvm_qmp **out, int fd, int64_t deadline, smolvm_error **err);

/* Run a command. args (borrowed, may be NULL) is the "arguments" object. On success
 * *ret (may be NULL) receives a new reference to the reply's "return" value. A QMP
 * error reply gives SMOLVM_EVMM with QMP's "desc" in the message. Events that arrive
 * meanwhile are queued for smolvm_qmp_wait_event. */
int smolvm_qmp_execute(smolvm_qmp *q, const char *command, json_t *args, json_t **ret,
                       int64_t deadline, smolvm_error **err);

/* QMP "getfd": hand fd (not consumed) to the VMM under name, for commands that take
 * "fd:NAME" (migrate, migrate-incoming). */
int smolvm_qmp_getfd(smolvm_qmp *q, const char *name, int fd, int64_t deadline, smolvm_error **err);

/* Wait for the event named `name` (queued ones first). *event (may be NULL) receives
 * a new reference to the whole event object. SMOLVM_ETIMEDOUT past the deadline. */
int smolvm_qmp_wait_event(smolvm_qmp *q, const char *name, json_t **event, int64_t deadline,
                          smolvm_error **err);

/* Wait until the peer closes the connection (e.g. after "quit"). */
int smolvm_qmp_wait_closed(smolvm_qmp *q, int64_t deadline, smolvm_error **err);

/* The greeting's QEMU version as "7.2.22" (borrowed, lives as long as q). */
const char *smolvm_qmp_version(const smolvm_qmp *q);

smolvm_qmp *smolvm_qmp_free(smolvm_qmp *q);
static inline void smolvm_qmp_freep(smolvm_qmp **q)
{
    *q = smolvm_qmp_free(*q);
}

#endif
