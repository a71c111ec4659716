/* SPDX-License-Identifier: MIT */
/* Unix stream sockets: the VMM control sockets (QMP, the guest channel). */
#ifndef SMOLVM_SOCK_H
#define SMOLVM_SOCK_H

#include <stdint.h>
#include <sys/un.h>

#include "smolvm.h"

/* Fill sa for path; a path too long for sun_path is SMOLVM_EINVAL. */
int smolvm_unix_addr(struct sockaddr_un *sa, const char *path, smolvm_error **err);

/* Bind and listen on path (mode 0600). *out: the listening fd (CLOEXEC). */
int smolvm_unix_listen(const char *path, int *out, smolvm_error **err);

/* Connect to path. Nobody listening (ECONNREFUSED, ENOENT) is SMOLVM_ESTATE; a connect
 * still blocked at the deadline (full backlog) is SMOLVM_ETIMEDOUT. *out: the fd. */
int smolvm_unix_connect(const char *path, int64_t deadline, int *out, smolvm_error **err);

#endif
