/* SPDX-License-Identifier: MIT */
/* Commands and files in the guest over SSH (libssh2): one persistent session. */
#ifndef SMOLVM_SSH_H
#define SMOLVM_SSH_H

#include <stddef.h>
#include <stdint.h>

#include "smolvm.h"

typedef struct smolvm_ssh smolvm_ssh;

/* Generate an ed25519 key pair: private key (OpenSSH format, mode 0600) at `path`,
 * public key line ("ssh-ed25519 AAAA... comment") at `path`.pub. */
int smolvm_ssh_keygen(const char *path, const char *comment, smolvm_error **err);

/* Connect (TCP_NODELAY), verify the server's host key against `host_pub` (the exact
 * "ssh-ed25519 AAAA..." line the host generated for this VM; a mismatch is
 * SMOLVM_ESSH, never accepted), authenticate as root with the private key at
 * `key_path`. Retries refused connections until the deadline (the guest is known
 * ready, so this is for races only). */
int smolvm_ssh_connect(smolvm_ssh **out, const char *host, int port, const char *key_path,
                       const char *host_pub, int64_t deadline, smolvm_error **err);
smolvm_ssh *smolvm_ssh_free(smolvm_ssh *s);

/* Run a command. env entries ("K=V") from base_env and then opts->env are exported
 * before it; opts may be NULL. Timeout kills the remote command and returns
 * SMOLVM_ETIMEDOUT. A dropped session is SMOLVM_ESSH (the caller reconnects). */
int smolvm_ssh_exec(smolvm_ssh *s, const char *cmd, const char *const *base_env,
                    const smolvm_run_options *opts, smolvm_run_result **out, smolvm_error **err);

/* SFTP. Parent directories are created. Upload and write keep the mode given (the
 * guest's umask does not apply); a download gets smolvm_guest_file_mode of the guest's.
 *
 * Every call ends by `deadline` (monotonic ms; 0: SMOLVM_SSH_FILE_TIMEOUT_MS from the
 * call's start) however its transfer goes: a peer that keeps sending a trickle cannot
 * hold it longer. Each wait is also bounded by an idle time (30 s) that moves on with
 * every chunk. A call past its deadline is SMOLVM_ETIMEDOUT and leaves the session
 * broken (a request is outstanding): the caller reconnects.
 *
 * download and read take at most `max` bytes (0: SMOLVM_READ_FILE_MAX for read,
 * SMOLVM_SSH_DOWNLOAD_MAX for download): a larger file is SMOLVM_ENOSPC, found from
 * its size before anything is read or from what arrives, and a download leaves no
 * file (not even part of one) on the host. */
#define SMOLVM_SSH_FILE_TIMEOUT_MS (10 * 60 * 1000)
#define SMOLVM_SSH_DOWNLOAD_MAX (1ULL << 30)
int smolvm_ssh_upload(smolvm_ssh *s, const char *local, const char *remote, int64_t deadline,
                      smolvm_error **err);
int smolvm_ssh_download(smolvm_ssh *s, const char *remote, const char *local, uint64_t max,
                        int64_t deadline, smolvm_error **err);
int smolvm_ssh_write(smolvm_ssh *s, const char *remote, const void *data, size_t len, unsigned mode,
                     int64_t deadline, smolvm_error **err);
int smolvm_ssh_read(smolvm_ssh *s, const char *remote, size_t max, char **data, size_t *len,
                    int64_t deadline, smolvm_error **err);

#endif
