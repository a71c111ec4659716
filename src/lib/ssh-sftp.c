/* SPDX-License-Identifier: MIT */
/* Files in the guest over SFTP, on the command session (started on first use).
 * Files are streamed in chunks, never loaded whole (except smolvm_ssh_read, bounded).
 * Each wait is bounded by an idle deadline that moves on with every chunk, and by the
 * call's own deadline, which does not: a stalled transfer fails after the idle time, a
 * trickling one at the call's deadline. */
#include "ssh-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>

#include "error.h"
#include "util.h"

#define SFTP_IDLE_MS 30000
#define SFTP_CHUNK (256u * 1024)
#define REMOTE_PATH_MAX 4096
#define DEFAULT_WRITE_MODE 0644
#define DIR_MODE 0755

/* The next wait's end: the idle time from now, or the call's deadline if sooner. */
static int64_t idle_deadline(const smolvm_ssh *s)
{
    int64_t d = smolvm_now_ms() + SFTP_IDLE_MS;

    return s->call_deadline && s->call_deadline < d ? s->call_deadline : d;
}

static void begin_call(smolvm_ssh *s, int64_t deadline)
{
    s->call_start = smolvm_now_ms();
    s->call_deadline = deadline ? deadline : s->call_start + SMOLVM_SSH_FILE_TIMEOUT_MS;
}

/* The call's deadline passed: checked between chunks too, since a peer that always has
 * a little more ready never makes a wait time out. */
static bool call_over(const smolvm_ssh *s)
{
    return s->call_deadline && smolvm_now_ms() >= s->call_deadline;
}

/* A wait that ended at the call's deadline: said as such (not as an idle timeout). */
static int deadline_fail(smolvm_ssh *s, smolvm_error **err, const char *ctx)
{
    s->broken = true; /* a request is left outstanding */
    return smolvm_err(err, SMOLVM_ETIMEDOUT,
                      "%s: timed out: not done within the call's deadline (%lld ms)",
                      ctx ? ctx : "sftp", (long long)(s->call_deadline - s->call_start));
}

/* "<context>: no such file" and friends for SFTP status codes; transport failures
 * as smolvm_ssh_fail. */
static int sftp_fail(smolvm_ssh *s, int rc, smolvm_error **err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int sftp_fail(smolvm_ssh *s, int rc, smolvm_error **err, const char *fmt, ...)
{
    _cleanup_free_ char *ctx = NULL;
    unsigned long fx;
    va_list ap;

    va_start(ap, fmt);
    if (vasprintf(&ctx, fmt, ap) < 0)
        ctx = NULL;
    va_end(ap);
    if (rc != LIBSSH2_ERROR_SFTP_PROTOCOL) {
        if (rc == SMOLVM_SSH_RC_TIMEOUT)
            s->broken = true; /* a request is left outstanding */
        if (rc == SMOLVM_SSH_RC_TIMEOUT && call_over(s))
            return deadline_fail(s, err, ctx);
        return smolvm_ssh_fail(s, rc, err, "%s", ctx ? ctx : "sftp");
    }
    fx = libssh2_sftp_last_error(s->sftp);
    switch (fx) {
    case LIBSSH2_FX_NO_SUCH_FILE:
    case LIBSSH2_FX_NO_SUCH_PATH: return smolvm_err(err, SMOLVM_ENOENT, "%s: no such file", ctx);
    case LIBSSH2_FX_NOT_A_DIRECTORY:
        return smolvm_err(err, SMOLVM_ENOENT, "%s: not a directory", ctx);
    case LIBSSH2_FX_PERMISSION_DENIED:
    case LIBSSH2_FX_WRITE_PROTECT:
        return smolvm_err(err, SMOLVM_EPERM, "%s: permission denied", ctx);
    case LIBSSH2_FX_FILE_ALREADY_EXISTS:
        return smolvm_err(err, SMOLVM_EEXIST, "%s: file exists", ctx);
    case LIBSSH2_FX_NO_SPACE_ON_FILESYSTEM:
    case LIBSSH2_FX_QUOTA_EXCEEDED:
        return smolvm_err(err, SMOLVM_EIO, "%s: no space left on device", ctx);
    case LIBSSH2_FX_FAILURE:
        return smolvm_err(err, SMOLVM_EIO, "%s: failed (sftp status 'failure')", ctx);
    default: return smolvm_err(err, SMOLVM_EIO, "%s: sftp status %lu", ctx, fx);
    }
}

static int sftp_start(smolvm_ssh *s, smolvm_error **err)
{
    int64_t deadline = idle_deadline(s);
    int r = smolvm_ssh_usable(s, err);

    if (r < 0)
        return r;
    while (!s->sftp) {
        s->sftp = libssh2_sftp_init(s->session);
        if (s->sftp)
            break;
        r = libssh2_session_last_errno(s->session);
        if (r == LIBSSH2_ERROR_EAGAIN)
            r = smolvm_ssh_wait(s, deadline);
        if (r < 0) {
            /* A refused subsystem leaves the transport fine; anything else does not. */
            if (r != LIBSSH2_ERROR_CHANNEL_FAILURE && r != LIBSSH2_ERROR_CHANNEL_REQUEST_DENIED)
                s->broken = true;
            if (r == SMOLVM_SSH_RC_TIMEOUT && call_over(s))
                return deadline_fail(s, err, "start sftp in guest");
            return smolvm_ssh_fail(s, r, err, "start sftp in guest");
        }
    }
    return 0;
}

static int check_remote_path(const char *path, smolvm_error **err)
{
    if (!path || !*path)
        return smolvm_err(err, SMOLVM_EINVAL, "empty guest path");
    if (strlen(path) > REMOTE_PATH_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "guest path too long (at most %d bytes)",
                          REMOTE_PATH_MAX);
    return 0;
}

/* ---------------------------------------------------------------- handles */

struct handle {
    smolvm_ssh *s;
    LIBSSH2_SFTP_HANDLE *h;
};

static int handle_close(struct handle *hd)
{
    int64_t deadline = idle_deadline(hd->s);
    int rc = 0;

    if (!hd->h)
        return 0;
    if (hd->s->broken) {
        /* Do not talk to a broken transport; libssh2 frees the handle with the
         * session. */
        hd->h = NULL;
        return 0;
    }
    SMOLVM_SSH_RETRY(hd->s, deadline, rc, libssh2_sftp_close_handle(hd->h));
    hd->h = NULL;
    if (rc == SMOLVM_SSH_RC_TIMEOUT)
        hd->s->broken = true;
    return rc;
}

static void handle_closep(struct handle *hd)
{
    (void)handle_close(hd);
}

static int open_remote(struct handle *hd, const char *path, unsigned long flags, long mode,
                       smolvm_error **err, const char *what)
{
    int64_t deadline = idle_deadline(hd->s);
    int rc;

    for (;;) {
        hd->h = libssh2_sftp_open_ex(hd->s->sftp, path, (unsigned)strlen(path), flags, mode,
                                     LIBSSH2_SFTP_OPENFILE);
        if (hd->h)
            return 0;
        rc = libssh2_session_last_errno(hd->s->session);
        if (rc == LIBSSH2_ERROR_EAGAIN)
            rc = smolvm_ssh_wait(hd->s, deadline);
        if (rc < 0)
            return sftp_fail(hd->s, rc, err, "%s '%s' in guest", what, path);
    }
}

/* ---------------------------------------------------------------- directories */

static int remote_stat(smolvm_ssh *s, const char *path, LIBSSH2_SFTP_ATTRIBUTES *st)
{
    int64_t deadline = idle_deadline(s);
    int rc;

    SMOLVM_SSH_RETRY(
        s, deadline, rc,
        libssh2_sftp_stat_ex(s->sftp, path, (unsigned)strlen(path), LIBSSH2_SFTP_STAT, st));
    return rc;
}

static bool is_missing(smolvm_ssh *s, int rc)
{
    unsigned long fx;

    if (rc != LIBSSH2_ERROR_SFTP_PROTOCOL)
        return false;
    fx = libssh2_sftp_last_error(s->sftp);
    return fx == LIBSSH2_FX_NO_SUCH_FILE || fx == LIBSSH2_FX_NO_SUCH_PATH;
}

/* mkdir -p of the directory holding `path`. */
static int make_parents(smolvm_ssh *s, const char *path, smolvm_error **err)
{
    _cleanup_free_ char *dir = strdup(path);
    LIBSSH2_SFTP_ATTRIBUTES st;
    char *slash, *p;
    int rc;

    if (!dir)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return 0; /* in the sftp server's cwd, or directly under / */
    *slash = '\0';
    /* Usually the directory is there: one round trip. */
    rc = remote_stat(s, dir, &st);
    if (rc == 0) {
        if ((st.flags & LIBSSH2_SFTP_ATTR_PERMISSIONS) && !LIBSSH2_SFTP_S_ISDIR(st.permissions))
            return smolvm_err(err, SMOLVM_EINVAL, "create '%s' in guest: '%s' is not a directory",
                              path, dir);
        return 0;
    }
    if (!is_missing(s, rc))
        return sftp_fail(s, rc, err, "create directory '%s' in guest", dir);
    for (p = dir + 1;; p++) {
        bool last = *p == '\0';
        int64_t deadline = idle_deadline(s);

        if (*p != '/' && !last)
            continue;
        *p = '\0';
        rc = remote_stat(s, dir, &st);
        if (rc != 0) {
            if (!is_missing(s, rc))
                return sftp_fail(s, rc, err, "create directory '%s' in guest", dir);
            SMOLVM_SSH_RETRY(s, deadline, rc,
                             libssh2_sftp_mkdir_ex(s->sftp, dir, (unsigned)strlen(dir), DIR_MODE));
            /* Lost a race with someone creating it: fine if it is there now. */
            if (rc != 0 && remote_stat(s, dir, &st) != 0)
                return sftp_fail(s, rc, err, "create directory '%s' in guest", dir);
        } else if ((st.flags & LIBSSH2_SFTP_ATTR_PERMISSIONS) &&
                   !LIBSSH2_SFTP_S_ISDIR(st.permissions)) {
            return smolvm_err(err, SMOLVM_EINVAL, "create '%s' in guest: '%s' is not a directory",
                              path, dir);
        }
        if (last)
            break;
        *p = '/';
    }
    return 0;
}

/* ---------------------------------------------------------------- writing */

static int write_all(struct handle *hd, const char *data, size_t len, const char *path,
                     smolvm_error **err)
{
    size_t off = 0;

    while (off < len) {
        int64_t deadline = idle_deadline(hd->s);
        ssize_t n;

        if (call_over(hd->s))
            return sftp_fail(hd->s, SMOLVM_SSH_RC_TIMEOUT, err, "write '%s' in guest", path);
        /* On EAGAIN libssh2 wants the same buffer again: it may have sent part. */
        while ((n = libssh2_sftp_write(hd->h, data + off, len - off)) == LIBSSH2_ERROR_EAGAIN) {
            int w = smolvm_ssh_wait(hd->s, deadline);

            if (w < 0) {
                n = w;
                break;
            }
        }
        if (n < 0)
            return sftp_fail(hd->s, (int)n, err, "write '%s' in guest", path);
        off += (size_t)n;
    }
    return 0;
}

/* The remote umask applied at creation; set the mode asked for. */
static int set_mode(struct handle *hd, unsigned mode, const char *path, smolvm_error **err)
{
    LIBSSH2_SFTP_ATTRIBUTES a = {.flags = LIBSSH2_SFTP_ATTR_PERMISSIONS,
                                 .permissions = mode & 07777};
    int64_t deadline = idle_deadline(hd->s);
    int rc;

    SMOLVM_SSH_RETRY(hd->s, deadline, rc, libssh2_sftp_fsetstat(hd->h, &a));
    if (rc)
        return sftp_fail(hd->s, rc, err, "set mode of '%s' in guest", path);
    return 0;
}

static int finish_write(struct handle *hd, const char *path, smolvm_error **err)
{
    int rc = handle_close(hd);

    /* Closing is when the server reports a failed final flush. */
    if (rc)
        return sftp_fail(hd->s, rc, err, "write '%s' in guest", path);
    return 0;
}

int smolvm_ssh_write(smolvm_ssh *s, const char *remote, const void *data, size_t len, unsigned mode,
                     int64_t deadline, smolvm_error **err)
{
    _cleanup_(handle_closep) struct handle hd = {.s = s};
    int r;

    if (s)
        begin_call(s, deadline);
    if ((r = check_remote_path(remote, err)) < 0)
        return r;
    if (!data && len)
        return smolvm_err(err, SMOLVM_EINVAL, "write '%s' in guest: no data", remote);
    if (mode == 0)
        mode = DEFAULT_WRITE_MODE;
    if (mode > 07777)
        return smolvm_err(err, SMOLVM_EINVAL, "write '%s' in guest: invalid mode %o", remote, mode);
    if ((r = sftp_start(s, err)) < 0 || (r = make_parents(s, remote, err)) < 0)
        return r;
    r = open_remote(&hd, remote, LIBSSH2_FXF_WRITE | LIBSSH2_FXF_CREAT | LIBSSH2_FXF_TRUNC,
                    (long)mode, err, "write");
    if (r < 0)
        return r;
    /* Chunked so that the idle deadline covers one chunk, not the whole buffer. */
    for (size_t off = 0; off < len; off += SFTP_CHUNK) {
        size_t n = len - off < SFTP_CHUNK ? len - off : SFTP_CHUNK;

        if ((r = write_all(&hd, (const char *)data + off, n, remote, err)) < 0)
            return r;
    }
    if ((r = set_mode(&hd, mode, remote, err)) < 0)
        return r;
    return finish_write(&hd, remote, err);
}

int smolvm_ssh_upload(smolvm_ssh *s, const char *local, const char *remote, int64_t deadline,
                      smolvm_error **err)
{
    _cleanup_(handle_closep) struct handle hd = {.s = s};
    _cleanup_free_ char *chunk = NULL;
    _cleanup_close_ int fd = -1;
    struct stat st;
    int r;

    if (s)
        begin_call(s, deadline);
    if ((r = check_remote_path(remote, err)) < 0)
        return r;
    if (!local || !*local)
        return smolvm_err(err, SMOLVM_EINVAL, "upload: empty host path");
    fd = open(local, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return smolvm_err_errno(err, errno, "upload '%s'", local);
    if (fstat(fd, &st) < 0)
        return smolvm_err_errno(err, errno, "upload '%s'", local);
    if (!S_ISREG(st.st_mode))
        return smolvm_err(err, SMOLVM_EINVAL, "upload '%s': not a regular file", local);
    chunk = malloc(SFTP_CHUNK);
    if (!chunk)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if ((r = sftp_start(s, err)) < 0 || (r = make_parents(s, remote, err)) < 0)
        return r;
    r = open_remote(&hd, remote, LIBSSH2_FXF_WRITE | LIBSSH2_FXF_CREAT | LIBSSH2_FXF_TRUNC,
                    (long)(st.st_mode & 07777), err, "write");
    if (r < 0)
        return r;
    for (;;) {
        ssize_t n = read(fd, chunk, SFTP_CHUNK);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return smolvm_err_errno(err, errno, "upload '%s': read", local);
        if (n == 0)
            break;
        if ((r = write_all(&hd, chunk, (size_t)n, remote, err)) < 0)
            return r;
    }
    if ((r = set_mode(&hd, st.st_mode & 07777, remote, err)) < 0)
        return r;
    return finish_write(&hd, remote, err);
}

/* ---------------------------------------------------------------- reading */

/* Open for reading and stat through the handle (one round trip less than a path
 * stat, and no race between the two). */
static int open_for_read(struct handle *hd, const char *remote, LIBSSH2_SFTP_ATTRIBUTES *st,
                         smolvm_error **err)
{
    int64_t deadline;
    int r, rc;

    if ((r = sftp_start(hd->s, err)) < 0)
        return r;
    if ((r = open_remote(hd, remote, LIBSSH2_FXF_READ, 0, err, "read")) < 0)
        return r;
    deadline = idle_deadline(hd->s);
    SMOLVM_SSH_RETRY(hd->s, deadline, rc, libssh2_sftp_fstat_ex(hd->h, st, 0));
    if (rc)
        return sftp_fail(hd->s, rc, err, "read '%s' in guest", remote);
    if ((st->flags & LIBSSH2_SFTP_ATTR_PERMISSIONS) && !LIBSSH2_SFTP_S_ISREG(st->permissions))
        return smolvm_err(err, SMOLVM_EINVAL, "read '%s' in guest: not a regular file", remote);
    return 0;
}

/* Next chunk into buf; 0 at end of file. */
static ssize_t read_chunk(struct handle *hd, char *buf, size_t size, const char *remote,
                          smolvm_error **err)
{
    int64_t deadline = idle_deadline(hd->s);
    ssize_t n;

    if (call_over(hd->s))
        return sftp_fail(hd->s, SMOLVM_SSH_RC_TIMEOUT, err, "read '%s' in guest", remote);
    while ((n = libssh2_sftp_read(hd->h, buf, size)) == LIBSSH2_ERROR_EAGAIN) {
        int w = smolvm_ssh_wait(hd->s, deadline);

        if (w < 0) {
            n = w;
            break;
        }
    }
    if (n < 0)
        return sftp_fail(hd->s, (int)n, err, "read '%s' in guest", remote);
    return n;
}

/* A file over its cap: the same error for what the size said and what arrived. */
static int too_large(smolvm_error **err, const char *what, const char *remote, uint64_t max)
{
    return smolvm_err(err, SMOLVM_ENOSPC,
                      "%s '%s' in guest: the file is larger than %llu bytes, the most a "
                      "transfer from a guest may bring",
                      what, remote, (unsigned long long)max);
}

int smolvm_ssh_read(smolvm_ssh *s, const char *remote, size_t max, char **data, size_t *len,
                    int64_t deadline, smolvm_error **err)
{
    _cleanup_(handle_closep) struct handle hd = {.s = s};
    _cleanup_free_ char *buf = NULL;
    LIBSSH2_SFTP_ATTRIBUTES st;
    size_t used = 0, cap;
    int r;

    if (s)
        begin_call(s, deadline);
    if ((r = check_remote_path(remote, err)) < 0)
        return r;
    if (!data || !len)
        return smolvm_err(err, SMOLVM_EINVAL, "read '%s' in guest: missing output", remote);
    if (max == 0)
        max = SMOLVM_READ_FILE_MAX;
    if ((r = open_for_read(&hd, remote, &st, err)) < 0)
        return r;
    if ((st.flags & LIBSSH2_SFTP_ATTR_SIZE) && st.filesize > max)
        return too_large(err, "read", remote, max);
    /* The size is a hint (files change); the limit is enforced on what arrives. */
    cap = (st.flags & LIBSSH2_SFTP_ATTR_SIZE) ? (size_t)st.filesize + 1 : 4096;
    if (cap > max + 1)
        cap = max + 1;
    buf = malloc(cap + 1);
    if (!buf)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    for (;;) {
        ssize_t n;

        if (used == cap) {
            size_t ncap = cap * 2 > max + 1 ? max + 1 : cap * 2;
            char *p;

            if (ncap <= cap)
                return too_large(err, "read", remote, max);
            p = realloc(buf, ncap + 1);
            if (!p)
                return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
            buf = p;
            cap = ncap;
        }
        n = read_chunk(&hd, buf + used, cap - used > SFTP_CHUNK ? SFTP_CHUNK : cap - used, remote,
                       err);
        if (n < 0)
            return (int)n;
        if (n == 0)
            break;
        used += (size_t)n;
        if (used > max)
            return too_large(err, "read", remote, max);
    }
    buf[used] = '\0';
    (void)handle_close(&hd);
    *len = used;
    *data = TAKE_PTR(buf);
    return 0;
}

int smolvm_ssh_download(smolvm_ssh *s, const char *remote, const char *local, uint64_t max,
                        int64_t deadline, smolvm_error **err)
{
    _cleanup_(handle_closep) struct handle hd = {.s = s};
    _cleanup_free_ char *chunk = NULL, *tmp = NULL, *dir = NULL;
    _cleanup_close_ int fd = -1;
    LIBSSH2_SFTP_ATTRIBUTES st;
    uint64_t total = 0;
    unsigned mode;
    char *slash;
    int r;

    if (s)
        begin_call(s, deadline);
    if (max == 0)
        max = SMOLVM_SSH_DOWNLOAD_MAX;
    if ((r = check_remote_path(remote, err)) < 0)
        return r;
    if (!local || !*local)
        return smolvm_err(err, SMOLVM_EINVAL, "download: empty host path");
    if ((r = open_for_read(&hd, remote, &st, err)) < 0)
        return r;
    if ((st.flags & LIBSSH2_SFTP_ATTR_SIZE) && st.filesize > max)
        return too_large(err, "download", remote, max);
    mode = smolvm_guest_file_mode((st.flags & LIBSSH2_SFTP_ATTR_PERMISSIONS)
                                      ? (unsigned)(st.permissions & 07777)
                                      : DEFAULT_WRITE_MODE);
    dir = strdup(local);
    chunk = malloc(SFTP_CHUNK);
    tmp = smolvm_strdupf("%s.smolvm-XXXXXX", local);
    if (!dir || !chunk || !tmp)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        if ((r = smolvm_mkdir_p(dir, DIR_MODE, err)) < 0)
            return smolvm_err_wrap(err, "download '%s'", remote);
    }
    /* A temp file renamed into place: a failed download never leaves half a file. */
    fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return smolvm_err_errno(err, errno, "download '%s' to '%s'", remote, local);
    for (;;) {
        ssize_t n = read_chunk(&hd, chunk, SFTP_CHUNK, remote, err);
        size_t off = 0;

        if (n < 0) {
            r = (int)n;
            goto fail;
        }
        if (n == 0)
            break;
        /* The size was a hint: what arrives is what counts. */
        total += (uint64_t)n;
        if (total > max) {
            r = too_large(err, "download", remote, max);
            goto fail;
        }
        while (off < (size_t)n) {
            ssize_t w = write(fd, chunk + off, (size_t)n - off);

            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0) {
                r = smolvm_err_errno(err, errno, "download '%s' to '%s'", remote, local);
                goto fail;
            }
            off += (size_t)w;
        }
    }
    /* The temporary file was private (0600) while it filled. */
    if (fchmod(fd, mode) < 0 || close(TAKE_FD(fd)) < 0) {
        r = smolvm_err_errno(err, errno, "download '%s' to '%s'", remote, local);
        goto fail;
    }
    if (rename(tmp, local) < 0) {
        r = smolvm_err_errno(err, errno, "download '%s' to '%s'", remote, local);
        goto fail;
    }
    return 0;
fail:
    (void)unlink(tmp);
    return r;
}
