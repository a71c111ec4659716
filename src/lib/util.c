/* SPDX-License-Identifier: MIT */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <ftw.h>
#include <stdarg.h>
#include <string.h>
#include <sys/random.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <time.h>

#include "error.h"

static volatile sig_atomic_t interrupt_flag;

void smolvm_interrupt(void)
{
    interrupt_flag = 1;
}

void smolvm_interrupt_clear(void)
{
    interrupt_flag = 0;
}

int smolvm_interrupted(void)
{
    return interrupt_flag != 0;
}

int64_t smolvm_now_ms(void)
{
    struct timespec ts;

    (void)clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t smolvm_wall_ms(void)
{
    struct timespec ts;

    (void)clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int smolvm_remaining_ms(int64_t deadline)
{
    int64_t left = deadline - smolvm_now_ms();

    if (left < 0)
        return 0;
    if (left > INT32_MAX)
        return INT32_MAX;
    return (int)left;
}

char *smolvm_strdupf(const char *fmt, ...)
{
    va_list ap;
    char *s;

    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

int smolvm_mkdir_p(const char *path, unsigned mode, smolvm_error **err)
{
    _cleanup_free_ char *copy = strdup(path);
    char *p;

    if (!copy)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    for (p = copy + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(copy, mode) < 0 && errno != EEXIST)
            return smolvm_err_errno(err, errno, "create directory '%s'", copy);
        *p = '/';
    }
    if (mkdir(copy, mode) < 0 && errno != EEXIST)
        return smolvm_err_errno(err, errno, "create directory '%s'", copy);
    return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    if (flag == FTW_DP)
        return rmdir(path) < 0 && errno != ENOENT ? -1 : 0;
    return unlink(path) < 0 && errno != ENOENT ? -1 : 0;
}

int smolvm_rm_rf(const char *path, smolvm_error **err)
{
    if (nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS) < 0 && errno != ENOENT)
        return smolvm_err_errno(err, errno, "remove '%s'", path);
    return 0;
}

int smolvm_read_file(const char *path, size_t max, char **out, size_t *len, smolvm_error **err)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    _cleanup_free_ char *buf = NULL;
    size_t n = 0, cap = 0;
    ssize_t r;

    if (fd < 0)
        return smolvm_err_errno(err, errno, "open '%s'", path);
    for (;;) {
        if (n + 1 >= cap) {
            size_t ncap = cap ? cap * 2 : 4096;
            char *nb;

            if (ncap > max + 1)
                ncap = max + 1;
            if (n + 1 >= ncap)
                return smolvm_err(err, SMOLVM_EINVAL, "'%s' is larger than %zu bytes", path, max);
            nb = realloc(buf, ncap);
            if (!nb)
                return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
            buf = nb;
            cap = ncap;
        }
        r = read(fd, buf + n, cap - n - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return smolvm_err_errno(err, errno, "read '%s'", path);
        if (r == 0)
            break;
        n += (size_t)r;
    }
    if (!buf && !(buf = malloc(1)))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    buf[n] = '\0';
    if (len)
        *len = n;
    *out = TAKE_PTR(buf);
    return 0;
}

int smolvm_write_file_atomic(const char *path, const void *data, size_t len, unsigned mode,
                             smolvm_error **err)
{
    _cleanup_free_ char *tmp = smolvm_strdupf("%s.tmp.%ld", path, (long)getpid());
    _cleanup_close_ int fd = -1;
    const char *p = data;

    if (!tmp)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return smolvm_err_errno(err, errno, "create '%s'", tmp);
    while (len > 0) {
        ssize_t w = write(fd, p, len);

        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            int e = errno;

            (void)unlink(tmp);
            return smolvm_err_errno(err, e, "write '%s'", tmp);
        }
        p += w;
        len -= (size_t)w;
    }
    if (fsync(fd) < 0 || rename(tmp, path) < 0) {
        int e = errno;

        (void)unlink(tmp);
        return smolvm_err_errno(err, e, "write '%s'", path);
    }
    return 0;
}

/* One data segment [pos, end) of in to the same offsets of out. */
static int copy_range(int in, int out, off_t pos, off_t end, bool *plain, smolvm_error **err)
{
    while (pos < end) {
        size_t want =
            (size_t)(end - pos) < SMOLVM_COPY_CHUNK ? (size_t)(end - pos) : SMOLVM_COPY_CHUNK;
        off_t opos = pos;
        ssize_t n;

        /* copy_file_range shares extents where the file system can (XFS, btrfs) and
         * stays in the kernel elsewhere; across file systems it may refuse. */
        if (*plain) {
            if (lseek(out, pos, SEEK_SET) < 0)
                return smolvm_err_errno(err, errno, "seek");
            n = sendfile(out, in, &pos, want);
        } else {
            n = copy_file_range(in, &pos, out, &opos, want, 0);
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && !*plain && (errno == EXDEV || errno == EINVAL || errno == ENOSYS)) {
            *plain = true;
            continue;
        }
        if (n < 0)
            return smolvm_err_errno(err, errno, "copy");
        if (n == 0)
            return smolvm_err(err, SMOLVM_EIO, "copy: short read");
    }
    return 0;
}

int smolvm_copy_fd_sparse(int in, int out, uint64_t size, uint64_t *copied, smolvm_error **err)
{
    bool plain = false;
    off_t off = 0;
    int r;

    if (copied)
        *copied = 0;
    while ((uint64_t)off < size) {
        off_t data = lseek(in, off, SEEK_DATA), hole;

        if (data < 0 && errno == ENXIO)
            break; /* only holes from here */
        if (data < 0 && errno == EINVAL) {
            data = off; /* no SEEK_DATA here: all of it is data */
            hole = (off_t)size;
        } else if (data < 0) {
            return smolvm_err_errno(err, errno, "seek the data");
        } else if ((hole = lseek(in, data, SEEK_HOLE)) < 0) {
            return smolvm_err_errno(err, errno, "seek a hole");
        }
        if ((uint64_t)hole > size)
            hole = (off_t)size;
        if ((r = copy_range(in, out, data, hole, &plain, err)) < 0)
            return r;
        if (copied)
            *copied += (uint64_t)(hole - data);
        off = hole;
    }
    return 0;
}

int smolvm_copy_fd_to_file(int in, const char *dst, unsigned mode, smolvm_error **err)
{
    _cleanup_close_ int out = -1;
    struct stat st;
    int r;

    if (fstat(in, &st) < 0)
        return smolvm_err_errno(err, errno, "stat");
    out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (out < 0)
        return smolvm_err_errno(err, errno, "create '%s'", dst);
    /* Holes stay holes: a sparse 8 GiB overlay disk costs what it holds. */
    if (ftruncate(out, st.st_size) < 0)
        r = smolvm_err_errno(err, errno, "size '%s'", dst);
    else
        r = smolvm_copy_fd_sparse(in, out, (uint64_t)st.st_size, NULL, err);
    if (r == 0 && fsync(out) < 0)
        r = smolvm_err_errno(err, errno, "fsync '%s'", dst);
    if (r < 0)
        (void)unlink(dst);
    return r;
}

int smolvm_copy_file(const char *src, const char *dst, unsigned mode, smolvm_error **err)
{
    _cleanup_close_ int in = open(src, O_RDONLY | O_CLOEXEC);

    if (in < 0)
        return smolvm_err_errno(err, errno, "open '%s'", src);
    if (smolvm_copy_fd_to_file(in, dst, mode, err) < 0)
        return smolvm_err_wrap(err, "copy '%s' to '%s'", src, dst);
    return 0;
}

int smolvm_random(void *buf, size_t len, smolvm_error **err)
{
    char *p = buf;

    while (len > 0) {
        ssize_t r = getrandom(p, len, 0);

        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return smolvm_err_errno(err, errno, "getrandom");
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

char *smolvm_file_tail(const char *path, long long from, size_t max_bytes, int max_lines,
                       const char *sep)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    _cleanup_free_ char *buf = NULL;
    char *lines[64], *p, *save = NULL, *out;
    size_t n = 0, k = 0, i, len = 0;
    struct stat st;
    ssize_t r;
    off_t at;

    if (fd < 0 || fstat(fd, &st) < 0 || max_lines < 1 || !(buf = malloc(max_bytes + 1)))
        return NULL;
    if (max_lines > (int)SMOLVM_ARRAY_SIZE(lines))
        max_lines = (int)SMOLVM_ARRAY_SIZE(lines);
    at = st.st_size > (off_t)max_bytes ? st.st_size - (off_t)max_bytes : 0;
    if (at < from)
        at = (off_t)from;
    while (n < max_bytes && (r = pread(fd, buf + n, max_bytes - n, at + (off_t)n)) > 0)
        n += (size_t)r;
    buf[n] = '\0';
    for (i = 0; i < n; i++)
        if (buf[i] == '\0' || ((unsigned char)buf[i] < 0x20 && buf[i] != '\n' && buf[i] != '\r'))
            buf[i] = ' ';
    for (p = strtok_r(buf, "\r\n", &save); p; p = strtok_r(NULL, "\r\n", &save)) {
        if (!*p)
            continue;
        if (k == (size_t)max_lines) {
            memmove(lines, lines + 1, sizeof(lines[0]) * (k - 1));
            k--;
        }
        lines[k++] = p;
    }
    if (k == 0)
        return NULL;
    for (i = 0; i < k; i++)
        len += strlen(lines[i]) + strlen(sep);
    out = malloc(len + 1);
    if (!out)
        return NULL;
    out[0] = '\0';
    for (i = 0; i < k; i++) {
        if (i > 0)
            strcat(out, sep);
        strcat(out, lines[i]);
    }
    return out;
}

/* The umask without changing it: /proc/self/status has it since Linux 4.7; umask()
 * itself can only be read by setting it, which races with other threads. */
static mode_t current_umask(void)
{
    char buf[4096];
    ssize_t n;
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    const char *p;
    mode_t m;

    if (fd >= 0) {
        n = read(fd, buf, sizeof(buf) - 1);
        (void)close(fd);
        if (n > 0) {
            buf[n] = '\0';
            if ((p = strstr(buf, "\nUmask:")))
                return (mode_t)(strtoul(p + 7, NULL, 8) & 0777);
        }
    }
    m = umask(022);
    (void)umask(m);
    return m;
}

unsigned smolvm_guest_file_mode(unsigned guest_mode)
{
    return guest_mode & 0775 & ~(unsigned)current_umask();
}
