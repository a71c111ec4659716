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

/* SFTP. Parent directories are created; mode preserved on upload/download. */
int smolvm_ssh_upload(smolvm_ssh *s, const char *local, const char *remote, smolvm_error **err);
int smolvm_ssh_download(smolvm_ssh *s, const char *remote, const char *local, smolvm_error **err);
int smolvm_ssh_write(smolvm_ssh *s, const char *remote, const void *data, size_t len, unsigned mode,
                     smolvm_error **err);
int smolvm_ssh_read(smolvm_ssh *s, const char *remote, size_t max, char **data, size_t *len,
                    smolvm_error **err);

#endif
