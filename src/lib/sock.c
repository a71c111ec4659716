/* SPDX-License-Identifier: MIT */
#include "util.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>

#include "error.h"
#include "sock.h"

int smolvm_unix_addr(struct sockaddr_un *sa, const char *path, smolvm_error **err)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sa->sun_path))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "socket path '%s' is longer than %zu bytes (use a shorter state dir)",
                          path, sizeof(sa->sun_path) - 1);
    memcpy(sa->sun_path, path, strlen(path) + 1);
    return 0;
}

int smolvm_unix_listen(const char *path, int *out, smolvm_error **err)
{
    struct sockaddr_un sa;
    _cleanup_close_ int fd = -1;
    int r;

    if ((r = smolvm_unix_addr(&sa, path, err)) < 0)
        return r;
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return smolvm_err_errno(err, errno, "socket");
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        return smolvm_err_errno(err, errno, "bind '%s'", path);
    (void)chmod(path, 0600);
    /* The supervisor's agent.sock takes up to 1024 clients, and they come in bursts
     * (an nginx worker opening a connection for each of 100 requests at once); a unix
     * socket whose backlog is full refuses a non-blocking connect with EAGAIN. The
     * kernel caps this at net.core.somaxconn. */
    if (listen(fd, SOMAXCONN) < 0)
        return smolvm_err_errno(err, errno, "listen '%s'", path);
    *out = TAKE_FD(fd);
    return 0;
}

int smolvm_unix_connect(const char *path, int64_t deadline, int *out, smolvm_error **err)
{
    struct sockaddr_un sa;
    _cleanup_close_ int fd = -1;
    int left = smolvm_remaining_ms(deadline);
    /* Never 0: that would mean "no timeout". */
    struct timeval tv = {.tv_sec = left / 1000, .tv_usec = (left % 1000) * 1000 + 1000};
    int r;

    if ((r = smolvm_unix_addr(&sa, path, err)) < 0)
        return r;
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return smolvm_err_errno(err, errno, "socket");
    /* A unix connect blocks only while the listen backlog is full; SO_SNDTIMEO bounds
     * that wait. */
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        if (errno == ECONNREFUSED || errno == ENOENT)
            return smolvm_err(err, SMOLVM_ESTATE, "connect '%s': %s (is the vm running?)", path,
                              strerror(errno));
        if (errno == EAGAIN || errno == EINPROGRESS)
            return smolvm_err(err, SMOLVM_ETIMEDOUT, "connect '%s': timed out", path);
        return smolvm_err_errno(err, errno, "connect '%s'", path);
    }
    *out = TAKE_FD(fd);
    return 0;
}
