/* SPDX-License-Identifier: MIT */
/* The agent protocol's client side (agent-client.h). */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "agent-proto.h"
#include "agent-client.h"
#include "error.h"
#include "sock.h"

#define CONTROL_WRITE_MS 10000 /* a small frame to a server that always reads */

typedef struct qframe {
    struct qframe *next;
    smolvm_agent_header h;
    uint8_t data[];
} qframe;

struct smolvm_agent_stream {
    smolvm_agent *a;
    smolvm_agent_stream *next;
    uint32_t id;
    qframe *head, *tail;
    uint64_t send_window;
    bool done;
    qframe *cur; /* the frame the last event points into */
    json_t *cur_json;
};

struct smolvm_agent {
    int fd;
    json_t *hello;
    uint32_t last_id;
    smolvm_agent_stream *streams;
    bool broken;
    char why[256];
    int why_code;
    smolvm_agent_reader rd;
};

static const struct {
    const char *name;
    int code;
} codes[] = {
    {"EINVAL", SMOLVM_EINVAL},       {"ENOENT", SMOLVM_ENOENT}, {"EEXIST", SMOLVM_EEXIST},
    {"ETIMEDOUT", SMOLVM_ETIMEDOUT}, {"EVMM", SMOLVM_EVMM},     {"EIO", SMOLVM_EIO},
    {"ENOMEM", SMOLVM_ENOMEM},       {"EPERM", SMOLVM_EPERM},   {"EACCES", SMOLVM_EPERM},
    {"ENOSPC", SMOLVM_ENOSPC},       {"EFBIG", SMOLVM_ENOSPC},  {"ESTATE", SMOLVM_ESTATE},
    {"EBUSY", SMOLVM_ESTATE},        {"EPROTO", SMOLVM_EIO},    {"EINTR", SMOLVM_EINTR},
    {"ENET", SMOLVM_ENET},
};

int smolvm_agent_code(const char *name)
{
    size_t i;

    for (i = 0; name && i < SMOLVM_ARRAY_SIZE(codes); i++)
        if (strcmp(codes[i].name, name) == 0)
            return codes[i].code;
    return SMOLVM_EIO;
}

/* ---------------------------------------------------------------- wire */

static int broken(smolvm_agent *a, int code, const char *why)
{
    if (!a->broken) {
        a->broken = true;
        a->why_code = code;
        (void)snprintf(a->why, sizeof(a->why), "%s", why);
    }
    return code;
}

static int broken_err(smolvm_agent *a, smolvm_error **err)
{
    return smolvm_err(err, a->why_code ? a->why_code : SMOLVM_EIO, "agent connection: %s", a->why);
}

/* Wait for fd to be ready for `events` until the deadline. */
static int wait_fd(smolvm_agent *a, short events, int64_t deadline, smolvm_error **err)
{
    for (;;) {
        struct pollfd p = {.fd = a->fd, .events = events};
        int w = poll(&p, 1, smolvm_remaining_ms(deadline));

        if (w > 0)
            return 0;
        if (w == 0)
            return smolvm_err(err, SMOLVM_ETIMEDOUT, "agent connection: timed out");
        if (errno == EINTR && smolvm_interrupted())
            return smolvm_err(err, SMOLVM_EINTR, "interrupted");
        if (errno != EINTR)
            return smolvm_err_errno(err, errno, "agent connection: poll");
    }
}

static int send_frame(smolvm_agent *a, uint8_t type, uint8_t flags, uint8_t fd, uint32_t stream,
                      const void *payload, size_t len, int64_t deadline, smolvm_error **err)
{
    smolvm_agent_header h = {(uint32_t)len, stream, type, flags, fd};
    uint8_t hdr[SMOLVM_AGENT_HEADER_SIZE];
    struct iovec iov[2] = {{hdr, sizeof(hdr)}, {(void *)payload, len}};
    size_t total = sizeof(hdr) + len, done = 0;
    int r;

    if (a->broken)
        return broken_err(a, err);
    smolvm_agent_header_encode(hdr, &h);
    while (done < total) {
        struct iovec v[2];
        int n = 0;
        ssize_t w;

        if (done < sizeof(hdr)) {
            v[n++] = (struct iovec){hdr + done, sizeof(hdr) - done};
            if (len)
                v[n++] = iov[1];
        } else {
            v[n++] = (struct iovec){(uint8_t *)payload + (done - sizeof(hdr)), total - done};
        }
        /* sendmsg, not writev: a peer that went away is EPIPE, never a SIGPIPE that
         * kills the program using the library. */
        w = sendmsg(a->fd, &(struct msghdr){.msg_iov = v, .msg_iovlen = (size_t)n}, MSG_NOSIGNAL);
        if (w > 0) {
            done += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if ((r = wait_fd(a, POLLOUT, deadline, err)) < 0) {
                /* Half a frame on the wire: the connection cannot be used again. */
                if (done > 0)
                    broken(a, SMOLVM_EIO, "a frame was left half written");
                return r;
            }
            continue;
        }
        broken(a, SMOLVM_EIO, strerror(errno));
        return broken_err(a, err);
    }
    return 0;
}

static int send_json(smolvm_agent *a, uint8_t type, uint32_t stream, json_t *obj, int64_t deadline,
                     smolvm_error **err)
{
    char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    int r;

    json_decref(obj);
    if (!text)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (strlen(text) > SMOLVM_AGENT_FRAME_MAX)
        r = smolvm_err(err, SMOLVM_EINVAL, "request larger than %d bytes", SMOLVM_AGENT_FRAME_MAX);
    else
        r = send_frame(a, type, 0, 0, stream, text, strlen(text), deadline, err);
    free(text);
    return r;
}

static smolvm_agent_stream *find_stream(smolvm_agent *a, uint32_t id)
{
    smolvm_agent_stream *st;

    for (st = a->streams; st; st = st->next)
        if (st->id == id)
            return st;
    return NULL;
}

static void dispatch(smolvm_agent *a, const smolvm_agent_header *h, const uint8_t *p)
{
    smolvm_agent_stream *st;
    qframe *q;

    if (h->stream == 0) {
        if (h->type == SMOLVM_AGENT_GOAWAY) {
            json_t *j = json_loadb((const char *)p, h->length, 0, NULL);
            const char *m = json_string_value(json_object_get(j, "message"));
            const char *c = json_string_value(json_object_get(j, "code"));

            broken(a, c && strcmp(c, "EVMM") == 0 ? SMOLVM_EVMM : smolvm_agent_code(c),
                   m ? m : "the server closed the connection");
            json_decref(j);
        } else if (h->type == SMOLVM_AGENT_HELLO && !a->hello) {
            a->hello = json_loadb((const char *)p, h->length, 0, NULL);
            if (!json_is_object(a->hello))
                broken(a, SMOLVM_EIO, "the server's hello is not a JSON object");
        } else {
            broken(a, SMOLVM_EIO, "unexpected frame on stream 0");
        }
        return;
    }
    if (!(st = find_stream(a, h->stream)) || st->done)
        return; /* freed or finished: frames in flight are dropped */
    if (h->type == SMOLVM_AGENT_WINDOW) {
        if (h->length == 4)
            st->send_window +=
                (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        return;
    }
    q = malloc(sizeof(*q) + h->length + 1);
    if (!q) {
        broken(a, SMOLVM_ENOMEM, "out of memory");
        return;
    }
    q->next = NULL;
    q->h = *h;
    memcpy(q->data, p, h->length);
    q->data[h->length] = 0;
    if (st->tail)
        st->tail->next = q;
    else
        st->head = q;
    st->tail = q;
}

/* Read what arrives before the deadline and dispatch it. */
static int pump(smolvm_agent *a, int64_t deadline, smolvm_error **err)
{
    smolvm_agent_header h;
    const uint8_t *payload;
    const char *why = NULL;
    size_t avail;
    uint8_t *space;
    ssize_t n;
    int r;

    if (a->broken)
        return broken_err(a, err);
    for (;;) {
        space = smolvm_agent_reader_space(&a->rd, &avail);
        n = recv(a->fd, space, avail, MSG_DONTWAIT);
        if (n > 0)
            break;
        if (n == 0) {
            broken(a, SMOLVM_EIO, "the server closed the connection");
            return broken_err(a, err);
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            broken(a, SMOLVM_EIO, strerror(errno));
            return broken_err(a, err);
        }
        if ((r = wait_fd(a, POLLIN, deadline, err)) < 0)
            return r;
    }
    smolvm_agent_reader_commit(&a->rd, (size_t)n);
    while ((r = smolvm_agent_reader_next(&a->rd, &h, &payload, &why)) == 1)
        dispatch(a, &h, payload);
    if (r < 0) {
        char msg[160];

        (void)snprintf(msg, sizeof(msg), "protocol error from the server: %s", why);
        broken(a, SMOLVM_EIO, msg);
    }
    /* Frames that came before the end (a reply, then the GOAWAY of a VMM that powered
     * off) are their streams' to read first: the end is reported by the next pump, to
     * whoever still waits. */
    return 0;
}

/* ---------------------------------------------------------------- connection */

int smolvm_agent_connect(smolvm_agent **out, const char *path, bool wait_ready, int64_t deadline,
                         smolvm_error **err)
{
    smolvm_agent *a = calloc(1, sizeof(*a));
    int r;

    if (!a)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    a->fd = -1;
    smolvm_agent_reader_init(&a->rd);
    r = smolvm_unix_connect(path, deadline, &a->fd, err);
    if (r == 0) {
        int fl = fcntl(a->fd, F_GETFL);

        if (fl >= 0)
            (void)fcntl(a->fd, F_SETFL, fl | O_NONBLOCK);
        r = send_json(a, SMOLVM_AGENT_HELLO, 0,
                      json_pack("{s:i, s:s, s:b}", "version", SMOLVM_AGENT_VERSION, "client",
                                "libsmolvm " SMOLVM_VERSION, "ready", wait_ready),
                      deadline, err);
    }
    while (r == 0 && !a->hello)
        r = pump(a, deadline, err);
    if (r == 0 && a->broken) /* a hello followed by the end is no connection */
        r = broken_err(a, err);
    if (r == 0 && json_integer_value(json_object_get(a->hello, "version")) != SMOLVM_AGENT_VERSION)
        r = smolvm_err(err, SMOLVM_EIO, "the server speaks another agent protocol version");
    if (r < 0) {
        smolvm_agent_free(a);
        return r;
    }
    *out = a;
    return 0;
}

smolvm_agent *smolvm_agent_free(smolvm_agent *a)
{
    if (!a)
        return NULL;
    while (a->streams) {
        smolvm_agent_stream *st = a->streams;

        st->a = NULL;
        a->streams = st->next;
    }
    if (a->fd >= 0)
        (void)close(a->fd);
    json_decref(a->hello);
    free(a);
    return NULL;
}

json_t *smolvm_agent_hello(const smolvm_agent *a)
{
    return a->hello;
}

bool smolvm_agent_broken(const smolvm_agent *a)
{
    return a->broken;
}

/* ---------------------------------------------------------------- streams */

int smolvm_agent_request(smolvm_agent_stream **out, smolvm_agent *a, json_t *req, uint32_t window,
                         smolvm_error **err)
{
    smolvm_agent_stream *st;
    int r;

    if (!req)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (a->broken) {
        json_decref(req);
        return broken_err(a, err);
    }
    st = calloc(1, sizeof(*st));
    if (!st) {
        json_decref(req);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    st->a = a;
    st->id = ++a->last_id;
    if (window)
        json_object_set_new(req, "window", json_integer(window));
    r = send_json(a, SMOLVM_AGENT_REQUEST, st->id, req, smolvm_now_ms() + CONTROL_WRITE_MS, err);
    if (r < 0) {
        free(st);
        return r;
    }
    st->next = a->streams;
    a->streams = st;
    *out = st;
    return 0;
}

static void release_current(smolvm_agent_stream *st)
{
    free(st->cur);
    st->cur = NULL;
    json_decref(st->cur_json);
    st->cur_json = NULL;
}

int smolvm_agent_next(smolvm_agent_event *ev, smolvm_agent_stream *st, int64_t deadline,
                      smolvm_error **err)
{
    int r;

    release_current(st);
    if (!st->a)
        return smolvm_err(err, SMOLVM_EIO, "agent connection: closed");
    while (!st->head) {
        if (st->done)
            return smolvm_err(err, SMOLVM_ESTATE, "agent stream: already finished");
        if ((r = pump(st->a, deadline, err)) < 0)
            return r;
    }
    st->cur = st->head;
    st->head = st->cur->next;
    if (!st->head)
        st->tail = NULL;
    memset(ev, 0, sizeof(*ev));
    ev->fin = st->cur->h.flags & SMOLVM_AGENT_FIN;
    ev->fd = st->cur->h.fd;
    if (ev->fin)
        st->done = true;
    switch (st->cur->h.type) {
    case SMOLVM_AGENT_DATA:
        ev->kind = SMOLVM_AGENT_EV_DATA;
        ev->data = st->cur->data;
        ev->len = st->cur->h.length;
        return 0;
    case SMOLVM_AGENT_EOF: ev->kind = SMOLVM_AGENT_EV_EOF; return 0;
    case SMOLVM_AGENT_REPLY:
    case SMOLVM_AGENT_EXIT:
    case SMOLVM_AGENT_ERROR:
        st->cur_json = json_loadb((const char *)st->cur->data, st->cur->h.length, 0, NULL);
        if (!json_is_object(st->cur_json)) {
            st->done = true;
            return smolvm_err(err, SMOLVM_EIO, "agent: a reply that is not a JSON object");
        }
        if (st->cur->h.type == SMOLVM_AGENT_ERROR) {
            const char *m = json_string_value(json_object_get(st->cur_json, "message"));
            const char *c = json_string_value(json_object_get(st->cur_json, "code"));

            st->done = true;
            /* The guest's words: bounded by the frame, shown as data. */
            return smolvm_err(err, smolvm_agent_code(c), "%.300s", m ? m : "failed");
        }
        ev->kind =
            st->cur->h.type == SMOLVM_AGENT_REPLY ? SMOLVM_AGENT_EV_REPLY : SMOLVM_AGENT_EV_EXIT;
        ev->json = st->cur_json;
        return 0;
    default:
        st->done = true;
        return smolvm_err(err, SMOLVM_EIO, "agent: unexpected frame type %u on a stream",
                          st->cur->h.type);
    }
}

bool smolvm_agent_done(const smolvm_agent_stream *st)
{
    return st->done && !st->head;
}

int smolvm_agent_grant(smolvm_agent_stream *st, uint32_t bytes, smolvm_error **err)
{
    uint8_t b[4] = {(uint8_t)(bytes >> 24), (uint8_t)(bytes >> 16), (uint8_t)(bytes >> 8),
                    (uint8_t)bytes};

    if (!st->a)
        return smolvm_err(err, SMOLVM_EIO, "agent connection: closed");
    if (st->done || bytes == 0)
        return 0;
    return send_frame(st->a, SMOLVM_AGENT_WINDOW, 0, 0, st->id, b, 4,
                      smolvm_now_ms() + CONTROL_WRITE_MS, err);
}

void smolvm_agent_set_send_window(smolvm_agent_stream *st, uint64_t window)
{
    st->send_window = window;
}

int smolvm_agent_write(smolvm_agent_stream *st, int fd, const void *data, size_t len,
                       int64_t deadline, smolvm_error **err)
{
    const uint8_t *p = data;
    int r;

    if (!st->a)
        return smolvm_err(err, SMOLVM_EIO, "agent connection: closed");
    while (len > 0) {
        size_t n = len;

        while (st->send_window == 0) {
            if (st->done || st->head)
                return smolvm_err(err, SMOLVM_ESTATE,
                                  "the guest ended the stream before taking all input");
            if ((r = pump(st->a, deadline, err)) < 0)
                return r;
        }
        if (n > st->send_window)
            n = (size_t)st->send_window;
        if (n > SMOLVM_AGENT_FRAME_MAX)
            n = SMOLVM_AGENT_FRAME_MAX;
        if ((r = send_frame(st->a, SMOLVM_AGENT_DATA, 0, (uint8_t)fd, st->id, p, n, deadline,
                            err)) < 0)
            return r;
        st->send_window -= n;
        p += n;
        len -= n;
    }
    return 0;
}

int smolvm_agent_eof(smolvm_agent_stream *st, int fd, smolvm_error **err)
{
    if (!st->a)
        return smolvm_err(err, SMOLVM_EIO, "agent connection: closed");
    return send_frame(st->a, SMOLVM_AGENT_EOF, 0, (uint8_t)fd, st->id, NULL, 0,
                      smolvm_now_ms() + CONTROL_WRITE_MS, err);
}

int smolvm_agent_control(smolvm_agent_stream *st, json_t *obj, smolvm_error **err)
{
    if (!st->a) {
        json_decref(obj);
        return smolvm_err(err, SMOLVM_EIO, "agent connection: closed");
    }
    return send_json(st->a, SMOLVM_AGENT_CONTROL, st->id, obj, smolvm_now_ms() + CONTROL_WRITE_MS,
                     err);
}

smolvm_agent_stream *smolvm_agent_stream_free(smolvm_agent_stream *st)
{
    smolvm_agent_stream **pp;

    if (!st)
        return NULL;
    release_current(st);
    while (st->head) {
        qframe *q = st->head;

        st->head = q->next;
        free(q);
    }
    if (st->a) {
        if (!st->done && !st->a->broken)
            (void)send_frame(st->a, SMOLVM_AGENT_RESET, 0, 0, st->id, NULL, 0,
                             smolvm_now_ms() + CONTROL_WRITE_MS, NULL);
        for (pp = &st->a->streams; *pp; pp = &(*pp)->next)
            if (*pp == st) {
                *pp = st->next;
                break;
            }
    }
    free(st);
    return NULL;
}

int smolvm_agent_stream_fd(const smolvm_agent_stream *st)
{
    return st && st->a && !st->a->broken ? st->a->fd : -1;
}

int smolvm_agent_call(json_t **reply, smolvm_agent *a, json_t *req, int64_t deadline,
                      smolvm_error **err)
{
    smolvm_agent_stream *st = NULL;
    smolvm_agent_event ev;
    int r;

    if ((r = smolvm_agent_request(&st, a, req, 0, err)) < 0)
        return r;
    r = smolvm_agent_next(&ev, st, deadline, err);
    if (r == 0 && ev.kind != SMOLVM_AGENT_EV_REPLY)
        r = smolvm_err(err, SMOLVM_EIO, "agent: expected a reply");
    if (r == 0)
        *reply = json_incref(ev.json);
    smolvm_agent_stream_free(st);
    return r;
}
