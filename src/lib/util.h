/* SPDX-License-Identifier: MIT */
/* Small helpers shared across the library: cleanup attributes, time, files. */
#ifndef SMOLVM_UTIL_H
#define SMOLVM_UTIL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "smolvm.h"

/* Scope-bound cleanup (systemd style). */
static inline void smolvm_freep(void *p)
{
    free(*(void **)p);
}
static inline void smolvm_closep(int *fd)
{
    if (*fd >= 0)
        (void)close(*fd);
}
static inline void smolvm_fclosep(FILE **f)
{
    if (*f)
        (void)fclose(*f);
}
#define _cleanup_(f) __attribute__((cleanup(f)))
#define _cleanup_free_ _cleanup_(smolvm_freep)
#define _cleanup_close_ _cleanup_(smolvm_closep)
#define _cleanup_fclose_ _cleanup_(smolvm_fclosep)

/* Take ownership out of a cleanup variable. */
#define TAKE_PTR(p)                                                                                \
    ({                                                                                             \
        __typeof__(p) _p = (p);                                                                    \
        (p) = NULL;                                                                                \
        _p;                                                                                        \
    })
#define TAKE_FD(fd)                                                                                \
    ({                                                                                             \
        int _fd = (fd);                                                                            \
        (fd) = -1;                                                                                 \
        _fd;                                                                                       \
    })

#define SMOLVM_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Monotonic and wall clocks, milliseconds. */
int64_t smolvm_now_ms(void);
int64_t smolvm_wall_ms(void);

/* Remaining milliseconds until `deadline` (monotonic ms), never negative. */
int smolvm_remaining_ms(int64_t deadline);

/* asprintf that returns NULL on failure. */
char *smolvm_strdupf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* mkdir -p with the given mode for created directories. */
int smolvm_mkdir_p(const char *path, unsigned mode, smolvm_error **err);

/* Remove a directory tree (like rm -rf); missing is not an error. */
int smolvm_rm_rf(const char *path, smolvm_error **err);

/* The mode a file from a guest gets on the host: the guest's permission bits, but never
 * setuid, setgid, sticky or world-writable, and no more than the process's umask lets
 * through (guest_mode & 0775 & ~umask). A guest file is data, not a program the host
 * should run as its owner. Thread-safe (the umask is read from /proc/self/status). */
unsigned smolvm_guest_file_mode(unsigned guest_mode);

/* Read a whole file (at most max bytes; larger is SMOLVM_EINVAL). NUL-terminated. */
int smolvm_read_file(const char *path, size_t max, char **out, size_t *len, smolvm_error **err);

/* The last max_lines non-empty lines of the file at path, reading at most max_bytes from
 * the end but nothing before offset `from`; control characters become spaces; lines
 * are joined with sep. NULL when the file is unreadable or holds no such line. Caller
 * frees. (For error messages: "console: ...".) */
char *smolvm_file_tail(const char *path, long long from, size_t max_bytes, int max_lines,
                       const char *sep);

/* Write a file atomically (temp file + rename) with the given mode. */
int smolvm_write_file_atomic(const char *path, const void *data, size_t len, unsigned mode,
                             smolvm_error **err);

/* Copy the file src to dst (created, must not exist; mode), synced. A failure leaves
 * no dst. */
int smolvm_copy_file(const char *src, const char *dst, unsigned mode, smolvm_error **err);
/* The same from an open file (its size from fstat). */
int smolvm_copy_fd_to_file(int in, const char *dst, unsigned mode, smolvm_error **err);

/* Copy the data of in (its first size bytes; holes stay holes: out must be sized
 * already) to the same offsets of out. in and out may be on different file systems
 * (a memfd and a disk file). *copied (may be NULL): bytes of data. */
#define SMOLVM_COPY_CHUNK (64u << 20)
int smolvm_copy_fd_sparse(int in, int out, uint64_t size, uint64_t *copied, smolvm_error **err);

/* Fill buf with random bytes from getrandom(). */
int smolvm_random(void *buf, size_t len, smolvm_error **err);

/* Has smolvm_interrupt() been called (and not cleared)? Checked by waits when a
 * signal woke them. */
int smolvm_interrupted(void);

/* Log through the context's callback (no-op when ctx or its callback is NULL). */
struct smolvm_ctx;
void smolvm_log(struct smolvm_ctx *ctx, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
