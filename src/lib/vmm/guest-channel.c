/* SPDX-License-Identifier: MIT */
/*
 * The host end of the guest channel (virtio console, docs/guest-protocol.md): waiting
 * for readiness and asking for power-off. Backend independent: it only needs the
 * connected socket or the VM dir's ctl.sock.
 */
#include "util.h"
#include "sock.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "error.h"
#include "vmm/vmm.h"

#define LINE_MAX_BYTES 512 /* protocol lines are short; longer ones are skipped */

typedef struct line_reader {
    int fd;
    char buf[LINE_MAX_BYTES];
    size_t len;
    int skipping; /* inside an over-long line */
} line_reader;

/* Next complete line (NUL-terminated, without '\n') into line. Returns 0, 1 at EOF,
 * or a negative code (SMOLVM_ETIMEDOUT at the deadline). */
static int read_line(line_reader *lr, char *line, int64_t deadline, smolvm_error **err)
{
    for (;;) {
        char *nl = memchr(lr->buf, '\n', lr->len);
        ssize_t r;

        if (nl) {
            size_t n = (size_t)(nl - lr->buf);
            int skipped = lr->skipping;

            memcpy(line, lr->buf, n);
            line[n] = '\0';
            if (n > 0 && line[n - 1] == '\r')
                line[n - 1] = '\0';
            memmove(lr->buf, nl + 1, lr->len - n - 1);
            lr->len -= n + 1;
            lr->skipping = 0;
            if (skipped)
                continue;
            return 0;
        }
        if (lr->len == sizeof(lr->buf)) {
            lr->len = 0;
            lr->skipping = 1;
        }
        r = recv(lr->fd, lr->buf + lr->len, sizeof(lr->buf) - lr->len, MSG_DONTWAIT);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd p = {.fd = lr->fd, .events = POLLIN};
            int w = poll(&p, 1, smolvm_remaining_ms(deadline));

            if (w < 0 && errno != EINTR)
                return smolvm_err_errno(err, errno, "guest channel: poll");
            if (w < 0 && smolvm_interrupted())
                return smolvm_err(err, SMOLVM_EINTR, "interrupted while waiting for the guest");
            if (w == 0)
                return SMOLVM_ETIMEDOUT;
            continue;
        }
        if (r < 0 && errno == ECONNRESET)
            r = 0;
        if (r < 0)
            return smolvm_err_errno(err, errno, "guest channel: read");
        if (r == 0)
            return 1;
        lr->len += (size_t)r;
    }
}

int smolvm_vmm_wait_ready(struct smolvm_ctx *ctx, int ctl_fd, int64_t deadline, int64_t *uptime_ms,
                          smolvm_error **err)
{
    line_reader lr = {.fd = ctl_fd};
    char line[LINE_MAX_BYTES + 1], stage[32];
    const char *last = "none";
    char last_buf[64] = "";
    int64_t ms;

    for (;;) {
        int r = read_line(&lr, line, deadline, err);

        if (r == 1)
            return smolvm_err(err, SMOLVM_EVMM,
                              "the vm stopped before it was ready (last milestone: %s; see "
                              "'" SMOLVM_VMM_CONSOLE_LOG "')",
                              last);
        if (r == SMOLVM_ETIMEDOUT)
            return smolvm_err(err, SMOLVM_ETIMEDOUT,
                              "the guest was not ready in time (last milestone: %s)", last);
        if (r < 0)
            return r;
        if (sscanf(line, "smolvm-ready %" SCNd64, &ms) == 1) {
            smolvm_log(ctx, SMOLVM_LOG_DEBUG, "guest ready at %" PRId64 " ms", ms);
            if (uptime_ms)
                *uptime_ms = ms;
            return 0;
        }
        if (strncmp(line, "smolvm-error ", 13) == 0) {
            /* The guest cannot become ready (bad config disk, sshd setup failed):
             * fail now instead of at the deadline. "smolvm-error <ms> <message>" */
            const char *msg = line + 13;

            msg += strspn(msg, "0123456789");
            msg += strspn(msg, " ");
            return smolvm_err(err, SMOLVM_EVMM, "the guest reported an error: %.200s", msg);
        }
        if (sscanf(line, "smolvm-boot %31s %" SCNd64, stage, &ms) == 2) {
            smolvm_log(ctx, SMOLVM_LOG_DEBUG, "guest boot: %s at %" PRId64 " ms", stage, ms);
            (void)snprintf(last_buf, sizeof(last_buf), "'%s' at %" PRId64 " ms", stage, ms);
            last = last_buf;
            continue;
        }
        smolvm_log(ctx, SMOLVM_LOG_DEBUG, "guest channel: ignored line '%.80s'", line);
    }
}

int smolvm_vmm_request_poweroff(const char *dir, int64_t deadline, smolvm_error **err)
{
    static const char msg[] = "poweroff\n";
    _cleanup_free_ char *path = smolvm_strdupf("%s/" SMOLVM_VMM_CTL_SOCK, dir);
    _cleanup_close_ int fd = -1;
    line_reader lr;
    char line[LINE_MAX_BYTES + 1];
    ssize_t w;
    int r;

    if (!path)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if ((r = smolvm_unix_connect(path, deadline, &fd, err)) < 0)
        return r;
    do
        w = send(fd, msg, sizeof(msg) - 1, MSG_NOSIGNAL);
    while (w < 0 && errno == EINTR);
    if (w < 0)
        return smolvm_err_errno(err, errno, "send poweroff to '%s'", path);
    if (w != (ssize_t)sizeof(msg) - 1)
        return smolvm_err(err, SMOLVM_EIO, "send poweroff to '%s': short write", path);

    /* The guest acknowledges with "smolvm-poweroff"; the VMM exiting (EOF) also means
     * it was heard. Anything else on the channel is old news. */
    lr = (line_reader){.fd = fd};
    for (;;) {
        r = read_line(&lr, line, deadline, err);

        if (r == 1)
            return 0;
        if (r == SMOLVM_ETIMEDOUT)
            return smolvm_err(err, SMOLVM_ETIMEDOUT,
                              "the guest did not acknowledge 'poweroff' in time (a VMM serves "
                              "one channel client at a time: is another one connected?)");
        if (r < 0)
            return r;
        if (strncmp(line, "smolvm-poweroff", 15) == 0)
            return 0;
    }
}
