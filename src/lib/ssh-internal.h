/* SPDX-License-Identifier: MIT */
/* The SSH session shared by ssh.c (connect), ssh-exec.c (commands) and sftp.c (files).
 * Private to those files: everyone else uses ssh-internal.h. */
#ifndef SMOLVM_SSH_INTERNAL_H
#define SMOLVM_SSH_INTERNAL_H

#include <libssh2.h>
#include <libssh2_sftp.h>
#include <stdbool.h>
#include <stdint.h>

#include "ssh.h"

struct smolvm_ssh {
    LIBSSH2_SESSION *session; /* always non-blocking: every wait goes through smolvm_ssh_wait */
    LIBSSH2_SFTP *sftp;       /* started on first use */
    int fd;
    bool broken; /* transport failed or was left mid-request: reconnect */
    char *peer;  /* "host:port", for messages */
    /* The SFTP call in progress: every wait ends by call_deadline (0: none), however
     * many chunks arrive (ssh-sftp.c). */
    int64_t call_deadline, call_start;
};

/* A libssh2 call that gave up because smolvm_ssh_wait hit the deadline. Never a
 * libssh2 error code. */
#define SMOLVM_SSH_RC_TIMEOUT (-100000)

/* Wait until the socket is ready in the direction libssh2 is blocked on. Returns 0,
 * SMOLVM_SSH_RC_TIMEOUT when `deadline` passed, or LIBSSH2_ERROR_BAD_SOCKET when poll
 * itself failed. */
int smolvm_ssh_wait(smolvm_ssh *s, int64_t deadline);

/* Repeat a libssh2 call returning int while it says EAGAIN, waiting on the socket in
 * between; `rc` gets the call's final result or SMOLVM_SSH_RC_TIMEOUT. */
#define SMOLVM_SSH_RETRY(s, deadline, rc, call)                                                    \
    do {                                                                                           \
        while (((rc) = (call)) == LIBSSH2_ERROR_EAGAIN) {                                          \
            int _w = smolvm_ssh_wait((s), (deadline));                                             \
            if (_w < 0) {                                                                          \
                (rc) = _w;                                                                         \
                break;                                                                             \
            }                                                                                      \
        }                                                                                          \
    } while (0)

/* Report a failed libssh2 call: "<context>: <libssh2 message>" as SMOLVM_ESSH, or
 * "<context>: timed out" as SMOLVM_ETIMEDOUT for SMOLVM_SSH_RC_TIMEOUT. Transport
 * failures and timeouts mark the session broken. Returns the code. */
int smolvm_ssh_fail(smolvm_ssh *s, int rc, smolvm_error **err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* SMOLVM_ESSH when the session cannot be used any more (the caller reconnects). */
int smolvm_ssh_usable(smolvm_ssh *s, smolvm_error **err);

#endif
