/* SPDX-License-Identifier: MIT */
/* QMP client: see qmp.h. JSON is jansson's; framing is one message per line. */
#include "util.h"
#include "sock.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

#include "error.h"
#include "vmm/qmp.h"

#define READ_CHUNK 65536

struct smolvm_qmp {
    int fd;
    char *buf; /* received bytes not yet consumed */
    size_t len, cap;
    json_t *events; /* array, oldest first */
    unsigned long next_id;
    char version[48];
};

smolvm_qmp *smolvm_qmp_free(smolvm_qmp *q)
{
    if (!q)
        return NULL;
    if (q->fd >= 0)
        (void)close(q->fd);
    free(q->buf);
    json_decref(q->events);
    free(q);
    return NULL;
}

const char *smolvm_qmp_version(const smolvm_qmp *q)
{
    return q->version;
}

/* Wait for fd to be ready for `events`; SMOLVM_ETIMEDOUT at the deadline. */
static int wait_fd(int fd, short events, int64_t deadline, const char *what, smolvm_error **err)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, smolvm_remaining_ms(deadline));

        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return smolvm_err_errno(err, errno, "qmp: poll");
        if (r == 0)
            return smolvm_err(err, SMOLVM_ETIMEDOUT, "qmp: timed out waiting for %s", what);
        return 0;
    }
}

static int send_all(smolvm_qmp *q, const char *data, size_t len, int64_t deadline,
                    smolvm_error **err)
{
    while (len > 0) {
        ssize_t w = send(q->fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);

        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int r = wait_fd(q->fd, POLLOUT, deadline, "the vmm to accept a command", err);

            if (r < 0)
                return r;
            continue;
        }
        if (w < 0 && (errno == EPIPE || errno == ECONNRESET))
            return smolvm_err(err, SMOLVM_EVMM, "qmp: the vmm closed the connection");
        if (w < 0)
            return smolvm_err_errno(err, errno, "qmp: send");
        data += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Read one message (a JSON object on one line). Returns 1 at EOF, no error set. */
static int read_message_or_eof(smolvm_qmp *q, json_t **out, int64_t deadline, const char *what,
                               smolvm_error **err)
{
    for (;;) {
        char *nl = q->len ? memchr(q->buf, '\n', q->len) : NULL;
        ssize_t r;

        if (nl) {
            size_t line = (size_t)(nl - q->buf);
            json_error_t jerr;
            json_t *msg = NULL;
            size_t used = line;

            while (used > 0 && (q->buf[used - 1] == '\r' || q->buf[used - 1] == ' '))
                used--;
            if (used > 0)
                msg = json_loadb(q->buf, used, JSON_REJECT_DUPLICATES, &jerr);
            memmove(q->buf, nl + 1, q->len - line - 1);
            q->len -= line + 1;
            if (used == 0)
                continue;
            if (!msg)
                return smolvm_err(err, SMOLVM_EVMM, "qmp: invalid json from the vmm: %s",
                                  jerr.text);
            if (!json_is_object(msg)) {
                json_decref(msg);
                return smolvm_err(err, SMOLVM_EVMM, "qmp: message is not an object");
            }
            *out = msg;
            return 0;
        }
        if (q->len >= SMOLVM_QMP_MESSAGE_MAX)
            return smolvm_err(err, SMOLVM_EVMM, "qmp: message larger than %d bytes",
                              SMOLVM_QMP_MESSAGE_MAX);
        if (q->cap - q->len < READ_CHUNK) {
            size_t ncap = q->cap ? q->cap * 2 : READ_CHUNK * 2;
            char *nb;

            if (ncap > SMOLVM_QMP_MESSAGE_MAX + READ_CHUNK)
                ncap = SMOLVM_QMP_MESSAGE_MAX + READ_CHUNK;
            if (ncap > q->cap) {
                nb = realloc(q->buf, ncap);
                if (!nb)
                    return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
                q->buf = nb;
                q->cap = ncap;
            }
        }
        r = recv(q->fd, q->buf + q->len, q->cap - q->len, MSG_DONTWAIT);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int w = wait_fd(q->fd, POLLIN, deadline, what, err);

            if (w < 0)
                return w;
            continue;
        }
        if (r < 0 && errno == ECONNRESET)
            r = 0;
        if (r < 0)
            return smolvm_err_errno(err, errno, "qmp: receive");
        if (r == 0)
            return 1;
        q->len += (size_t)r;
    }
}

/* Read one message; EOF gives SMOLVM_EVMM. */
static int read_message(smolvm_qmp *q, json_t **out, int64_t deadline, const char *what,
                        smolvm_error **err)
{
    int r = read_message_or_eof(q, out, deadline, what, err);

    if (r == 1)
        return smolvm_err(err, SMOLVM_EVMM, "qmp: the vmm closed the connection");
    return r;
}

static void queue_event(smolvm_qmp *q, json_t *msg)
{
    if (json_array_size(q->events) >= SMOLVM_QMP_EVENTS_MAX)
        (void)json_array_remove(q->events, 0);
    (void)json_array_append(q->events, msg);
}

static int greet(smolvm_qmp *q, int64_t deadline, smolvm_error **err)
{
    json_t *msg = NULL, *qemu;
    int r;

    r = read_message(q, &msg, deadline, "the qmp greeting", err);
    if (r < 0)
        return r;
    if (!json_is_object(json_object_get(msg, "QMP"))) {
        json_decref(msg);
        return smolvm_err(err, SMOLVM_EVMM, "qmp: unexpected greeting");
    }
    qemu = json_object_get(json_object_get(json_object_get(msg, "QMP"), "version"), "qemu");
    (void)snprintf(q->version, sizeof(q->version), "%lld.%lld.%lld",
                   (long long)json_integer_value(json_object_get(qemu, "major")),
                   (long long)json_integer_value(json_object_get(qemu, "minor")),
                   (long long)json_integer_value(json_object_get(qemu, "micro")));
    json_decref(msg);
    return smolvm_qmp_execute(q, "qmp_capabilities", NULL, NULL, deadline, err);
}

int smolvm_qmp_open_fd(smolvm_qmp **out, int fd, int64_t deadline, smolvm_error **err)
{
    smolvm_qmp *q;
    int flags, r;

    q = calloc(1, sizeof(*q));
    if (!q) {
        (void)close(fd);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    q->fd = fd;
    q->next_id = 1;
    q->events = json_array();
    if (!q->events) {
        smolvm_qmp_free(q);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        r = smolvm_err_errno(err, errno, "qmp: set non-blocking");
        smolvm_qmp_free(q);
        return r;
    }
    r = greet(q, deadline, err);
    if (r < 0) {
        smolvm_qmp_free(q);
        return r;
    }
    *out = q;
    return 0;
}

int smolvm_qmp_connect(smolvm_qmp **out, const char *path, int64_t deadline, smolvm_error **err)
{
    int fd = -1, r;

    if ((r = smolvm_unix_connect(path, deadline, &fd, err)) < 0)
        return smolvm_err_wrap(err, "qmp");
    return smolvm_qmp_open_fd(out, fd, deadline, err);
}

/* The first bytes of a command with fd attached (SCM_RIGHTS); *sent: how many. */
static int send_with_fd(smolvm_qmp *q, const char *data, size_t len, int fd, size_t *sent,
                        int64_t deadline, smolvm_error **err)
{
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    struct cmsghdr *c;

    memset(&ctl, 0, sizeof(ctl));
    msg.msg_control = ctl.buf;
    msg.msg_controllen = sizeof(ctl.buf);
    c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
    for (;;) {
        ssize_t w = sendmsg(q->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);

        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int r = wait_fd(q->fd, POLLOUT, deadline, "the vmm to accept a command", err);

            if (r < 0)
                return r;
            continue;
        }
        if (w < 0 && (errno == EPIPE || errno == ECONNRESET))
            return smolvm_err(err, SMOLVM_EVMM, "qmp: the vmm closed the connection");
        if (w < 0)
            return smolvm_err_errno(err, errno, "qmp: sendmsg");
        *sent = (size_t)w;
        return 0;
    }
}

static int execute(smolvm_qmp *q, const char *command, json_t *args, int fd, json_t **ret,
                   int64_t deadline, smolvm_error **err);

int smolvm_qmp_execute(smolvm_qmp *q, const char *command, json_t *args, json_t **ret,
                       int64_t deadline, smolvm_error **err)
{
    return execute(q, command, args, -1, ret, deadline, err);
}

int smolvm_qmp_getfd(smolvm_qmp *q, const char *name, int fd, int64_t deadline, smolvm_error **err)
{
    json_t *args = json_pack("{s:s}", "fdname", name);
    int r;

    if (!args)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    r = execute(q, "getfd", args, fd, NULL, deadline, err);
    json_decref(args);
    return r;
}

static int execute(smolvm_qmp *q, const char *command, json_t *args, int fd, json_t **ret,
                   int64_t deadline, smolvm_error **err)
{
    size_t sent = 0;
    unsigned long id = q->next_id++;
    json_t *req;
    char *text;
    size_t len;
    int r;

    req = json_pack("{s:s, s:I}", "execute", command, "id", (json_int_t)id);
    if (!req || (args && json_object_set(req, "arguments", args) < 0)) {
        json_decref(req);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    text = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    if (!text)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    len = strlen(text);
    /* json_dumps never emits a raw newline, so this stays one line. */
    {
        char *line = realloc(text, len + 2);

        if (!line) {
            free(text);
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        }
        text = line;
        text[len++] = '\n';
        text[len] = '\0';
    }
    r = fd >= 0 ? send_with_fd(q, text, len, fd, &sent, deadline, err) : 0;
    if (r == 0)
        r = send_all(q, text + sent, len - sent, deadline, err);
    free(text);
    if (r < 0)
        return smolvm_err_wrap(err, "qmp '%s'", command);

    for (;;) {
        json_t *msg = NULL, *jid, *val;

        r = read_message(q, &msg, deadline, "the reply", err);
        if (r < 0)
            return smolvm_err_wrap(err, "qmp '%s'", command);
        if (json_object_get(msg, "event")) {
            queue_event(q, msg);
            json_decref(msg);
            continue;
        }
        jid = json_object_get(msg, "id");
        if (!json_is_integer(jid) || (unsigned long)json_integer_value(jid) != id) {
            /* A reply to an earlier command whose wait timed out. */
            json_decref(msg);
            continue;
        }
        val = json_object_get(msg, "error");
        if (val) {
            const char *desc = json_string_value(json_object_get(val, "desc"));
            const char *cls = json_string_value(json_object_get(val, "class"));

            r = smolvm_err(err, SMOLVM_EVMM, "qmp '%s': %s (%s)", command,
                           desc ? desc : "unknown error", cls ? cls : "no class");
            json_decref(msg);
            return r;
        }
        val = json_object_get(msg, "return");
        if (!val) {
            json_decref(msg);
            return smolvm_err(err, SMOLVM_EVMM, "qmp '%s': reply without 'return'", command);
        }
        if (ret)
            *ret = json_incref(val);
        json_decref(msg);
        return 0;
    }
}

int smolvm_qmp_wait_event(smolvm_qmp *q, const char *name, json_t **event, int64_t deadline,
                          smolvm_error **err)
{
    size_t i;
    json_t *msg;

    json_array_foreach (q->events, i, msg) {
        if (strcmp(json_string_value(json_object_get(msg, "event")) ?: "", name) == 0) {
            if (event)
                *event = json_incref(msg);
            (void)json_array_remove(q->events, i);
            return 0;
        }
    }
    for (;;) {
        int r;

        msg = NULL;
        r = read_message(q, &msg, deadline, "an event", err);
        if (r == SMOLVM_ETIMEDOUT)
            return smolvm_err_wrap(err, "qmp: event '%s'", name);
        if (r < 0)
            return r;
        if (strcmp(json_string_value(json_object_get(msg, "event")) ?: "", name) == 0) {
            if (event)
                *event = msg;
            else
                json_decref(msg);
            return 0;
        }
        if (json_object_get(msg, "event"))
            queue_event(q, msg);
        json_decref(msg);
    }
}

int smolvm_qmp_wait_closed(smolvm_qmp *q, int64_t deadline, smolvm_error **err)
{
    for (;;) {
        json_t *msg = NULL;
        int r = read_message_or_eof(q, &msg, deadline, "the vmm to exit", err);

        if (r == 1)
            return 0;
        if (r < 0)
            return r;
        if (json_object_get(msg, "event"))
            queue_event(q, msg);
        json_decref(msg);
    }
}
