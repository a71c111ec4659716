/* SPDX-License-Identifier: MIT */
/*
 * The agent's event loop and connections: one epoll set, no threads. Frames in
 * through the codec's reader, checked against docs/agent-protocol.md ("Frames",
 * "Streams", "Flow control"); a violation is answered with GOAWAY EPROTO and the
 * connection starts over (a socket is closed, a virtio-serial port waits for the host
 * to reconnect), while the agent and its processes keep running.
 */
#define _GNU_SOURCE
#include "agent-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static int64_t clock_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t agent_now_ms(void)
{
    return clock_ms(CLOCK_MONOTONIC);
}
int64_t agent_realtime_ms(void)
{
    return clock_ms(CLOCK_REALTIME);
}
int64_t agent_uptime_ms(void)
{
    return clock_ms(CLOCK_BOOTTIME);
}

const char *agent_errno_code(int e)
{
    switch (e) {
    case ENOENT:
    case ENOTDIR: return "ENOENT";
    case EEXIST:
    case ENOTEMPTY: return "EEXIST";
    case EACCES: return "EACCES";
    case EPERM:
    case EROFS: return "EPERM";
    case EFBIG: return "EFBIG";
    case ENOSPC:
    case EDQUOT: return "ENOSPC";
    case EINVAL:
    case EISDIR:
    case ENAMETOOLONG:
    case ELOOP: return "EINVAL";
    case EBUSY:
    case ETXTBSY: return "EBUSY";
    default: return "EIO";
    }
}

/* ------------------------------------------------------------------ epoll */

int agent_watch(struct agent *a, struct watch *w, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = w};
    int op;

    if (w->fd < 0 || events == w->events)
        return 0;
    if (events == 0)
        op = EPOLL_CTL_DEL;
    else if (w->events == 0)
        op = EPOLL_CTL_ADD;
    else
        op = EPOLL_CTL_MOD;
    if (epoll_ctl(a->ep, op, w->fd, &ev) < 0)
        return -1;
    w->events = events;
    return 0;
}

/* Out of the epoll set first: a dup of the same file would keep it registered. */
void agent_unwatch_close(struct agent *a, struct watch *w)
{
    if (w->fd < 0)
        return;
    (void)agent_watch(a, w, 0);
    close(w->fd);
    w->fd = -1;
    w->events = 0;
}

/* ------------------------------------------------------------------ buffers */

int buf_append(struct buf *b, const void *p, size_t n)
{
    if (b->start > 0 && b->start + b->len + n > b->cap) {
        memmove(b->p, b->p + b->start, b->len);
        b->start = 0;
    }
    if (b->start + b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->start + b->len + n)
            cap *= 2;
        uint8_t *np = realloc(b->p, cap);
        if (!np)
            return -1;
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->start + b->len, p, n);
    b->len += n;
    return 0;
}

void buf_consume(struct buf *b, size_t n)
{
    b->start += n;
    b->len -= n;
    if (b->len == 0)
        b->start = 0;
}

void buf_free(struct buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* ------------------------------------------------------------------ JSON helpers */

/* Replace invalid UTF-8 with U+FFFD so jansson accepts what the guest holds (file
 * names, command lines) and the host never sees raw bytes as text. */
void agent_utf8(char *out, size_t outlen, const char *s, size_t n)
{
    size_t o = 0;
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n && p[i];) {
        unsigned c = p[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        int ok = len > 0 && i + len <= n;
        for (size_t k = 1; ok && k < len; k++)
            ok = (p[i + k] & 0xc0) == 0x80;
        if (ok && len > 1) { /* no overlong forms, no surrogates, nothing past U+10FFFF */
            unsigned cp = len == 2   ? (c & 0x1f) << 6 | (p[i + 1] & 0x3f)
                          : len == 3 ? (c & 0x0f) << 12 | (p[i + 1] & 0x3f) << 6 | (p[i + 2] & 0x3f)
                                     : (c & 0x07) << 18 | (p[i + 1] & 0x3f) << 12 |
                                           (p[i + 2] & 0x3f) << 6 | (p[i + 3] & 0x3f);
            ok = (len == 2 && cp >= 0x80) ||
                 (len == 3 && cp >= 0x800 && (cp < 0xd800 || cp > 0xdfff)) ||
                 (len == 4 && cp >= 0x10000 && cp <= 0x10ffff);
        }
        const char *src = ok ? (const char *)p + i : "\xef\xbf\xbd";
        size_t sl = ok ? len : 3;
        if (o + sl + 1 > outlen)
            break;
        memcpy(out + o, src, sl);
        o += sl;
        i += ok ? len : 1;
    }
    if (outlen)
        out[o] = '\0';
}

int req_string(json_t *req, const char *key, const char **out, char *err, size_t errlen)
{
    json_t *v = json_object_get(req, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v)) {
        snprintf(err, errlen, "'%s': expected a string", key);
        return -1;
    }
    *out = json_string_value(v);
    return 0;
}

int req_bool(json_t *req, const char *key, int *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(req, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v)) {
        snprintf(err, errlen, "'%s': expected true or false", key);
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

int req_int(json_t *req, const char *key, long long min, long long max, long long *out, char *err,
            size_t errlen)
{
    json_t *v = json_object_get(req, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        snprintf(err, errlen, "'%s': expected an integer %lld..%lld", key, min, max);
        return -1;
    }
    *out = json_integer_value(v);
    return 0;
}

int req_window(json_t *req, uint32_t *out, char *err, size_t errlen)
{
    long long w = SMOLVM_AGENT_WINDOW_DEFAULT;
    if (req_int(req, "window", 0, SMOLVM_AGENT_WINDOW_MAX, &w, err, errlen) < 0)
        return -1;
    *out = (uint32_t)w;
    return 0;
}

/* ------------------------------------------------------------------ sending */

static void conn_broken(struct conn *c);

static int conn_writable(struct conn *c)
{
    return !c->broken && (c->state == C_OPEN || c->state == C_DRAIN);
}

void conn_send(struct conn *c, uint8_t type, uint32_t stream, uint8_t flags, uint8_t fd,
               const struct iovec *iov, int iovcnt)
{
    uint8_t hdr[SMOLVM_AGENT_HEADER_SIZE];
    struct iovec v[4];
    size_t total = SMOLVM_AGENT_HEADER_SIZE, done = 0;
    int n = 1;

    if (!conn_writable(c) || iovcnt > 3)
        return;
    v[0].iov_base = hdr;
    v[0].iov_len = sizeof(hdr);
    for (int i = 0; i < iovcnt; i++) {
        if (iov[i].iov_len == 0)
            continue;
        v[n++] = iov[i];
        total += iov[i].iov_len;
    }
    smolvm_agent_header h = {.length = (uint32_t)(total - SMOLVM_AGENT_HEADER_SIZE),
                             .stream = stream,
                             .type = type,
                             .flags = flags,
                             .fd = fd};
    smolvm_agent_header_encode(hdr, &h);
    /* Control frames wait for the end of the turn (update() flushes), so the frames of
     * one turn leave in one write: under emulation each write to a port is a trip
     * through the VMM. DATA goes at once when nothing waits before it. */
    if (type != SMOLVM_AGENT_DATA) {
        for (int i = 0; i < n; i++)
            if (buf_append(&c->out, v[i].iov_base, v[i].iov_len) < 0) {
                c->broken = 1;
                return;
            }
        return;
    }
    if (c->out.len == 0 && c->kind == AGENT_CHANNEL_PORT && total <= PORT_WRITE_MAX) {
        /* One write, one virtqueue buffer: not a 12-byte one for the header. */
        uint8_t *w = c->agent->wbuf;
        size_t off = 0;
        for (int i = 0; i < n; i++) {
            memcpy(w + off, v[i].iov_base, v[i].iov_len);
            off += v[i].iov_len;
        }
        v[0].iov_base = w;
        v[0].iov_len = off;
        n = 1;
    }
    if (c->out.len == 0) {
        ssize_t w = writev(c->w.fd, v, n);
        if (w < 0 && errno != EAGAIN && errno != EINTR) {
            c->broken = 1; /* dealt with by update(): streams may be mid-iteration */
            return;
        }
        done = w > 0 ? (size_t)w : 0;
    }
    /* Keep what was not written, in order. */
    for (int i = 0; i < n && done < total; i++) {
        if (done >= v[i].iov_len) {
            done -= v[i].iov_len;
            total -= v[i].iov_len;
            continue;
        }
        if (buf_append(&c->out, (uint8_t *)v[i].iov_base + done, v[i].iov_len - done) < 0) {
            c->broken = 1; /* out of memory: this session cannot go on consistently */
            return;
        }
        total -= v[i].iov_len;
        done = 0;
    }
}

void conn_send_json(struct conn *c, uint8_t type, uint32_t stream, uint8_t flags, json_t *obj)
{
    char *s = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (!s || strlen(s) > SMOLVM_AGENT_FRAME_MAX) {
        free(s);
        /* Everything we build is bounded below a frame; this is a bug, not the peer's. */
        if (type == SMOLVM_AGENT_ERROR || stream == 0)
            return;
        conn_error(c, stream, "EIO", "reply does not fit in a frame");
        return;
    }
    struct iovec v = {.iov_base = s, .iov_len = strlen(s)};
    conn_send(c, type, stream, flags, 0, &v, 1);
    free(s);
}

static struct stream *stream_find(struct conn *c, uint32_t id, unsigned *idx)
{
    for (unsigned i = 0; i < c->n_streams; i++)
        if (c->streams[i]->id == id) {
            if (idx)
                *idx = i;
            return c->streams[i];
        }
    return NULL;
}

void conn_error(struct conn *c, uint32_t stream, const char *code, const char *fmt, ...)
{
    char msg[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    char clean[sizeof(msg)];
    agent_utf8(clean, sizeof(clean), msg, strlen(msg));
    conn_send_json(c, SMOLVM_AGENT_ERROR, stream, SMOLVM_AGENT_FIN,
                   json_pack("{s:s, s:s}", "code", code, "message", clean));
    struct stream *s = stream_find(c, stream, NULL);
    if (s) {
        if (s->kind == S_EXEC || s->kind == S_ATTACH)
            exec_reset(s);
        else
            file_reset(s);
        stream_close(s);
    }
}

void conn_reply_chunked(struct conn *c, uint32_t stream, const char *key, json_t *items,
                        json_t *extra)
{
    struct buf b = {0};
    char head[128];
    size_t i;
    json_t *it;
    char *tail = json_dumps(extra, JSON_COMPACT); /* "{...}" */
    int hn = snprintf(head, sizeof(head), "{\"%s\":[", key);
    size_t reserve = (tail ? strlen(tail) : 2) + 2;

    (void)buf_append(&b, head, (size_t)hn);
    json_array_foreach (items, i, it) {
        char *s = json_dumps(it, JSON_COMPACT);
        if (!s)
            continue;
        size_t n = strlen(s);
        int first = b.len == (size_t)hn;
        if (!first && b.len + 1 + n + reserve > SMOLVM_AGENT_FRAME_MAX) {
            (void)buf_append(&b, "]}", 2);
            struct iovec v = {.iov_base = b.p, .iov_len = b.len};
            conn_send(c, SMOLVM_AGENT_REPLY, stream, 0, 0, &v, 1);
            b.len = 0;
            (void)buf_append(&b, head, (size_t)hn);
            first = 1;
        }
        if (!first)
            (void)buf_append(&b, ",", 1);
        (void)buf_append(&b, s, n);
        free(s);
    }
    (void)buf_append(&b, "]", 1);
    if (tail && strlen(tail) > 2) {
        (void)buf_append(&b, ",", 1);
        (void)buf_append(&b, tail + 1, strlen(tail) - 1);
    } else {
        (void)buf_append(&b, "}", 1);
    }
    struct iovec v = {.iov_base = b.p, .iov_len = b.len};
    conn_send(c, SMOLVM_AGENT_REPLY, stream, SMOLVM_AGENT_FIN, 0, &v, 1);
    buf_free(&b);
    free(tail);
    json_decref(items);
    json_decref(extra);
}

/* ------------------------------------------------------------------ streams */

struct stream *stream_new(struct conn *c, uint32_t id, enum stream_kind kind)
{
    struct stream *s;
    if (c->n_streams >= SMOLVM_AGENT_STREAMS_MAX || !(s = calloc(1, sizeof(*s))))
        return NULL;
    s->conn = c;
    s->id = id;
    s->kind = kind;
    s->fd = -1;
    c->streams[c->n_streams++] = s;
    return s;
}

void stream_close(struct stream *s)
{
    struct conn *c = s->conn;
    unsigned i;
    if (stream_find(c, s->id, &i) == s) {
        c->streams[i] = c->streams[--c->n_streams];
    }
    free(s->path);
    free(s->tmp);
    free(s);
}

/* RESET, or the connection went away: each stream ends as its kind says. */
static void stream_reset(struct stream *s)
{
    if (s->kind == S_EXEC || s->kind == S_ATTACH)
        exec_reset(s);
    else
        file_reset(s);
    stream_close(s);
}

/* ------------------------------------------------------------------ connections */

static void conn_hello(struct conn *c)
{
    c->hello_seen = 0;
    c->last_id = 0;
    smolvm_agent_reader_init(c->reader);
    conn_send_json(c, SMOLVM_AGENT_HELLO, 0, 0,
                   json_pack("{s:i, s:s, s:I, s:[ssss]}", "version", SMOLVM_AGENT_VERSION, "agent",
                             AGENT_VERSION_STRING, "uptime_ms", (json_int_t)agent_uptime_ms(),
                             "features", "exec", "pty", "files", "identity"));
}

/* End the session's streams (per on_reset); what is queued for the peer stays. */
static void conn_reset_streams(struct conn *c)
{
    while (c->n_streams > 0)
        stream_reset(c->streams[c->n_streams - 1]);
    smolvm_agent_reader_init(c->reader);
    c->hello_seen = 0;
    c->poweroff_pending = 0;
}

/* Forget the session: the peer is gone, so is what was queued for it. */
static void conn_reset(struct conn *c)
{
    conn_reset_streams(c);
    c->out.start = c->out.len = 0;
}

static void port_check(struct conn *c);
static void conn_flush(struct conn *c);

/* The peer is gone (EOF, reset, write error). */
static void conn_broken(struct conn *c)
{
    struct agent *a = c->agent;
    c->broken = 0;
    if (c->state == C_DEAD || c->state == C_WAIT || c->state == C_DOWN)
        return;
    conn_reset(c);
    if (c->kind == AGENT_CHANNEL_PORT) {
        c->state = C_DOWN;
        (void)agent_watch(a, &c->w, 0);
        port_check(c);
        return;
    }
    agent_unwatch_close(a, &c->w);
    if (c->reconnecting) {
        c->state = C_WAIT;
        c->reconnect_at = agent_now_ms() + c->backoff_ms;
    } else {
        c->state = C_DEAD;
    }
}

/* The guest cannot close a port for the host: ignore input until the host side closes
 * it (a fresh session starts when it reopens). SIGIO on, so that a close is seen even
 * when no epoll event is left for it. */
static void port_drain(struct conn *c)
{
    int fl = fcntl(c->w.fd, F_GETFL);
    c->state = C_DRAIN;
    if (fl >= 0 && !(fl & O_ASYNC)) {
        (void)fcntl(c->w.fd, F_SETOWN, getpid());
        (void)fcntl(c->w.fd, F_SETFL, fl | O_ASYNC);
    }
}

static void protocol_error(struct conn *c, const char *why)
{
    char msg[256];
    snprintf(msg, sizeof(msg), "protocol error: %s", why);
    conn_reset_streams(c); /* frames already queued were valid: they go first */
    conn_send_json(c, SMOLVM_AGENT_GOAWAY, 0, 0,
                   json_pack("{s:s, s:s}", "code", "EPROTO", "message", msg));
    if (c->kind == AGENT_CHANNEL_PORT) {
        port_drain(c);
        return;
    }
    /* Best effort: GOAWAY is written now if the socket takes it, else dropped with it. */
    conn_flush(c);
    conn_broken(c);
}

/* The port's host side: POLLHUP while nobody is connected. The driver sends SIGIO
 * (O_ASYNC) on connect and disconnect, so a down port is not polled at all. */
static void port_check(struct conn *c)
{
    struct pollfd p = {.fd = c->w.fd, .events = POLLIN};
    int fl = fcntl(c->w.fd, F_GETFL);

    if (c->state != C_DOWN && c->state != C_DRAIN)
        return;
    if (poll(&p, 1, 0) < 0)
        return;
    if (p.revents & POLLHUP) {
        /* Old input from a session that ended is not for the next one. */
        while (read(c->w.fd, c->agent->scratch, sizeof(c->agent->scratch)) > 0)
            ;
        if (c->state == C_DRAIN) {
            conn_reset(c);
            c->state = C_DOWN;
            (void)agent_watch(c->agent, &c->w, 0);
        }
        if (fl >= 0 && !(fl & O_ASYNC)) {
            (void)fcntl(c->w.fd, F_SETOWN, getpid());
            (void)fcntl(c->w.fd, F_SETFL, fl | O_ASYNC);
            port_check(c); /* it may have connected before O_ASYNC was on */
        }
        return;
    }
    if (c->state == C_DOWN) {
        if (fl >= 0 && (fl & O_ASYNC))
            (void)fcntl(c->w.fd, F_SETFL, fl & ~O_ASYNC);
        c->state = C_OPEN;
        conn_hello(c);
    }
}

static void conn_start_connect(struct conn *c)
{
    struct agent *a = c->agent;
    int fd = a->o.connect(a->o.payload);
    if (fd < 0) {
        c->state = C_WAIT;
        c->reconnect_at = agent_now_ms() + c->backoff_ms;
        c->backoff_ms = c->backoff_ms * 2 > 1000 ? 1000 : c->backoff_ms * 2;
        return;
    }
    c->w.fd = fd;
    c->w.events = 0;
    c->state = C_CONNECTING;
    (void)agent_watch(a, &c->w, EPOLLOUT);
}

static struct conn *conn_new(struct agent *a, int fd, enum agent_channel kind)
{
    struct conn *c = calloc(1, sizeof(*c));
    struct conn **nc = realloc(a->conns, (a->n_conns + 1) * sizeof(*nc));
    if (nc)
        a->conns = nc;
    if (!c || !nc || !(c->reader = malloc(sizeof(*c->reader)))) {
        free(c);
        return NULL;
    }
    c->agent = a;
    c->kind = kind;
    c->w = (struct watch){.kind = W_CONN, .obj = c, .fd = fd};
    c->backoff_ms = 50;
    c->data_max = kind == AGENT_CHANNEL_PORT ? PORT_WRITE_MAX - SMOLVM_AGENT_HEADER_SIZE
                                             : SMOLVM_AGENT_FRAME_MAX;
    smolvm_agent_reader_init(c->reader);
    a->conns[a->n_conns++] = c;
    return c;
}

static void conn_free(struct conn *c)
{
    conn_reset(c);
    agent_unwatch_close(c->agent, &c->w);
    buf_free(&c->out);
    free(c->reader);
    free(c);
}

/* ------------------------------------------------------------------ requests */

static void request(struct conn *c, uint32_t id, json_t *req)
{
    const char *op = NULL;
    char err[256];

    if (req_string(req, "op", &op, err, sizeof(err)) < 0 || !op) {
        conn_error(c, id, "EINVAL", "request: 'op': expected a string");
        return;
    }
    if (strcmp(op, "exec") == 0)
        exec_request(c, id, req);
    else if (strcmp(op, "attach") == 0)
        attach_request(c, id, req);
    else if (strcmp(op, "ps") == 0)
        ps_request(c, id, req);
    else if (strcmp(op, "read_file") == 0 || strcmp(op, "write_file") == 0 ||
             strcmp(op, "stat") == 0 || strcmp(op, "list") == 0 || strcmp(op, "mkdir") == 0 ||
             strcmp(op, "remove") == 0)
        files_request(c, id, op, req);
    else if (strcmp(op, "identity") == 0)
        identity_request(c, id, req);
    else if (strcmp(op, "ping") == 0)
        conn_send_json(c, SMOLVM_AGENT_REPLY, id, SMOLVM_AGENT_FIN,
                       json_pack("{s:I}", "uptime_ms", (json_int_t)agent_uptime_ms()));
    else if (strcmp(op, "poweroff") == 0) {
        conn_send_json(c, SMOLVM_AGENT_REPLY, id, SMOLVM_AGENT_FIN, json_object());
        c->poweroff_pending = 1;
        if (!c->agent->poweroff_at)
            c->agent->poweroff_at = agent_now_ms() + 1000;
    } else {
        char clean[64];
        agent_utf8(clean, sizeof(clean), op, strlen(op));
        conn_error(c, id, "EINVAL", "unknown op '%s'", clean);
    }
}

/* JSON payloads must be objects; anything else is a protocol error (NULL). */
static json_t *parse_object(const uint8_t *p, size_t n)
{
    json_t *v = json_loadb((const char *)p, n, JSON_REJECT_DUPLICATES, NULL);
    if (v && !json_is_object(v)) {
        json_decref(v);
        return NULL;
    }
    return v;
}

/* One frame from the peer. Returns -1 after a protocol error (the session is over). */
static int conn_frame(struct conn *c, const smolvm_agent_header *h, const uint8_t *p)
{
    struct stream *s;
    json_t *j = NULL;

    if (!c->hello_seen && h->type != SMOLVM_AGENT_HELLO && h->type != SMOLVM_AGENT_GOAWAY) {
        protocol_error(c, "first frame is not HELLO");
        return -1;
    }
    switch (h->type) {
    case SMOLVM_AGENT_HELLO: {
        if (c->hello_seen) {
            protocol_error(c, "HELLO that is not first");
            return -1;
        }
        if (!(j = parse_object(p, h->length))) {
            protocol_error(c, "HELLO is not a JSON object");
            return -1;
        }
        json_t *v = json_object_get(j, "version");
        int ok = json_is_integer(v) && json_integer_value(v) == SMOLVM_AGENT_VERSION;
        json_decref(j);
        if (!ok) {
            protocol_error(c, "HELLO version is not 1");
            return -1;
        }
        c->hello_seen = 1;
        return 0;
    }
    case SMOLVM_AGENT_GOAWAY:
        /* The peer's last frame: the session is over. */
        conn_reset(c);
        if (c->kind == AGENT_CHANNEL_PORT)
            port_drain(c);
        else
            conn_broken(c);
        return -1;
    case SMOLVM_AGENT_REQUEST:
        if (h->stream <= c->last_id) {
            protocol_error(c, "REQUEST id not larger than every earlier id");
            return -1;
        }
        if (c->n_streams >= SMOLVM_AGENT_STREAMS_MAX) {
            protocol_error(c, "more than 256 open streams");
            return -1;
        }
        if (!(j = parse_object(p, h->length))) {
            protocol_error(c, "REQUEST is not a JSON object");
            return -1;
        }
        c->last_id = h->stream;
        request(c, h->stream, j);
        json_decref(j);
        return 0;
    case SMOLVM_AGENT_REPLY:
    case SMOLVM_AGENT_EXIT:
    case SMOLVM_AGENT_ERROR:
        protocol_error(c, "a server-to-client frame sent to the agent");
        return -1;
    default: break;
    }
    /* DATA, WINDOW, EOF, CONTROL, RESET: for an open stream, else ignored. */
    if (h->type == SMOLVM_AGENT_CONTROL && !(j = parse_object(p, h->length))) {
        protocol_error(c, "CONTROL is not a JSON object");
        return -1;
    }
    if ((h->type == SMOLVM_AGENT_DATA || h->type == SMOLVM_AGENT_EOF) &&
        h->fd != SMOLVM_AGENT_FD_STDIN) {
        protocol_error(c, "DATA/EOF to the agent on an fd other than 0");
        return -1;
    }
    s = stream_find(c, h->stream, NULL);
    if (!s) {
        json_decref(j);
        return 0;
    }
    switch (h->type) {
    case SMOLVM_AGENT_DATA:
        if (h->length > s->recv_window) {
            protocol_error(c, "DATA larger than its window");
            return -1;
        }
        s->recv_window -= h->length;
        if (h->length == 0)
            return 0;
        if (s->kind == S_WRITE)
            file_data(s, p, h->length);
        else
            exec_stdin(s, p, h->length);
        return 0;
    case SMOLVM_AGENT_WINDOW: {
        uint32_t inc = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        if ((uint64_t)s->send_window + inc > SMOLVM_AGENT_WINDOW_MAX) {
            protocol_error(c, "WINDOW takes the window over 16 MiB");
            return -1;
        }
        s->send_window += inc;
        return 0;
    }
    case SMOLVM_AGENT_EOF:
        if (s->kind == S_WRITE)
            file_eof(s);
        else if (s->kind == S_EXEC || s->kind == S_ATTACH)
            exec_stdin_eof(s);
        return 0;
    case SMOLVM_AGENT_CONTROL:
        if (s->kind == S_EXEC || s->kind == S_ATTACH)
            exec_control(s, j);
        json_decref(j);
        return 0;
    case SMOLVM_AGENT_RESET: stream_reset(s); return 0;
    }
    return 0;
}

/* Frames already in the reader: 0 when all were taken, -1 when the session stopped or
 * taking more must wait (replies piling up, a poweroff). */
static int conn_frames(struct conn *c)
{
    for (;;) {
        smolvm_agent_header h;
        const uint8_t *payload;
        const char *why = NULL;
        if (c->out.len > OUTQ_HIGH || (c->poweroff_pending && !c->agent->poweroff_done))
            return -1; /* let the peer read its replies first; or power off first */
        int rc = smolvm_agent_reader_next(c->reader, &h, &payload, &why);
        if (rc == 0)
            return 0;
        if (rc < 0) {
            protocol_error(c, why);
            return -1;
        }
        if (conn_frame(c, &h, payload) < 0 || c->state != C_OPEN)
            return -1;
    }
}

static void conn_readable(struct conn *c)
{
    size_t budget = 4 * (SMOLVM_AGENT_FRAME_MAX + SMOLVM_AGENT_HEADER_SIZE);

    if (c->state == C_OPEN && conn_frames(c) < 0)
        return;
    while (budget > 0 && (c->state == C_OPEN || c->state == C_DRAIN)) {
        size_t avail;
        uint8_t *space = smolvm_agent_reader_space(c->reader, &avail);
        if (c->state == C_DRAIN) {
            space = c->agent->scratch;
            avail = sizeof(c->agent->scratch);
        }
        if (avail == 0) { /* cannot happen while frames are taken as they complete */
            protocol_error(c, "reader full");
            return;
        }
        ssize_t n = read(c->w.fd, space, avail);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            if (c->kind == AGENT_CHANNEL_PORT && c->state == C_DRAIN)
                port_check(c);
            else
                conn_broken(c);
            return;
        }
        budget -= (size_t)n < budget ? (size_t)n : budget;
        if (c->state == C_DRAIN)
            continue;
        smolvm_agent_reader_commit(c->reader, (size_t)n);
        if (conn_frames(c) < 0)
            return;
    }
}

static void conn_flush(struct conn *c)
{
    while (c->out.len > 0 && conn_writable(c)) {
        ssize_t n = write(c->w.fd, c->out.p + c->out.start, c->out.len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            conn_broken(c);
            return;
        }
        buf_consume(&c->out, (size_t)n);
    }
}

static void conn_event(struct conn *c, uint32_t ev)
{
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(c->w.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0) {
            agent_unwatch_close(c->agent, &c->w);
            c->state = C_WAIT;
            c->reconnect_at = agent_now_ms() + c->backoff_ms;
            c->backoff_ms = c->backoff_ms * 2 > 1000 ? 1000 : c->backoff_ms * 2;
            return;
        }
        c->backoff_ms = 50;
        c->state = C_OPEN;
        conn_hello(c);
        return;
    }
    if (ev & EPOLLOUT)
        conn_flush(c);
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR))
        conn_readable(c);
    if (c->kind == AGENT_CHANNEL_PORT && (ev & EPOLLHUP) &&
        (c->state == C_OPEN || c->state == C_DRAIN)) {
        conn_reset(c);
        c->state = C_DOWN;
        (void)agent_watch(c->agent, &c->w, 0);
        port_check(c);
    }
}

/* Send what windows and the out queue allow, a frame per stream per round. */
static void conn_pump(struct conn *c)
{
    for (int round = 0; round < 4096; round++) {
        int progress = 0;
        for (unsigned k = 0; k < c->n_streams; k++) {
            if (c->state != C_OPEN || c->broken || c->out.len >= OUTQ_LOW)
                return;
            struct stream *s = c->streams[(c->rr + k) % c->n_streams];
            if (s->kind == S_EXEC || s->kind == S_ATTACH)
                progress |= exec_pump(s);
            else if (s->kind == S_READ)
                progress |= file_pump(s);
        }
        c->rr++;
        if (!progress)
            return;
    }
}

/* ------------------------------------------------------------------ the loop */

struct agent *agent_new(const struct agent_options *o)
{
    struct agent *a = calloc(1, sizeof(*a));
    sigset_t mask;
    char *const *env = o->env ? o->env : environ;

    if (!a)
        return NULL;
    a->o = *o;
    a->ep = epoll_create1(EPOLL_CLOEXEC);
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGIO);
    (void)sigprocmask(SIG_BLOCK, &mask, NULL);
    a->w_sig =
        (struct watch){.kind = W_SIGNAL, .fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK)};
    a->w_listen = (struct watch){.kind = W_LISTEN, .fd = o->listen_fd};
    for (size_t i = 0; env && env[i]; i++)
        a->n_env++;
    a->env = calloc(a->n_env + 1, sizeof(char *));
    for (size_t i = 0; a->env && i < a->n_env; i++)
        if (!(a->env[i] = strdup(env[i])))
            a->n_env = i;
    if (a->ep < 0 || a->w_sig.fd < 0 || !a->env || agent_watch(a, &a->w_sig, EPOLLIN) < 0 ||
        (o->listen_fd >= 0 && agent_watch(a, &a->w_listen, EPOLLIN) < 0)) {
        int e = errno;
        a->w_listen.fd = -1; /* the caller's */
        agent_free(a);
        errno = e;
        return NULL;
    }
    if (o->listen_fd >= 0)
        (void)fcntl(o->listen_fd, F_SETFL, fcntl(o->listen_fd, F_GETFL) | O_NONBLOCK);
    if (!o->no_exec)
        (void)prctl(PR_SET_CHILD_SUBREAPER, 1);
    if (o->connect) {
        struct conn *c = conn_new(a, -1, AGENT_CHANNEL_SOCKET);
        if (!c) {
            a->w_listen.fd = -1;
            agent_free(a);
            errno = ENOMEM;
            return NULL;
        }
        c->reconnecting = 1;
        conn_start_connect(c);
    }
    return a;
}

int agent_add_channel(struct agent *a, int fd, enum agent_channel kind)
{
    struct conn *c = conn_new(a, fd, kind);
    int fl = fcntl(fd, F_GETFL);
    if (!c) {
        close(fd);
        errno = ENOMEM;
        return -1;
    }
    if (fl >= 0)
        (void)fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    if (kind == AGENT_CHANNEL_PORT) {
        c->state = C_DOWN;
        port_check(c);
    } else {
        c->state = C_OPEN;
        conn_hello(c);
    }
    return 0;
}

static void accept_all(struct agent *a)
{
    int fd;
    while ((fd = accept4(a->w_listen.fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK)) >= 0)
        if (agent_add_channel(a, fd, AGENT_CHANNEL_SOCKET) < 0)
            break;
}

static void signals(struct agent *a)
{
    struct signalfd_siginfo si;
    int chld = 0;
    while (read(a->w_sig.fd, &si, sizeof(si)) == sizeof(si)) {
        if (si.ssi_signo == SIGCHLD)
            chld = 1;
        else if (si.ssi_signo == SIGIO)
            for (size_t i = 0; i < a->n_conns; i++)
                if (a->conns[i]->kind == AGENT_CHANNEL_PORT)
                    port_check(a->conns[i]);
    }
    if (chld)
        procs_reap(a);
}

static int64_t next_deadline(struct agent *a)
{
    int64_t d = procs_next_deadline(a);
    for (size_t i = 0; i < a->n_conns; i++)
        if (a->conns[i]->state == C_WAIT && (d < 0 || a->conns[i]->reconnect_at < d))
            d = a->conns[i]->reconnect_at;
    if (a->poweroff_at && !a->poweroff_done && (d < 0 || a->poweroff_at < d))
        d = a->poweroff_at;
    return d;
}

static void update(struct agent *a)
{
    int64_t now = agent_now_ms();
    int poweroff_ready = 0, poweroff_asked = 0;

    procs_tick(a, now);
    for (size_t i = 0; i < a->n_conns;) {
        struct conn *c = a->conns[i];
        if (c->broken)
            conn_broken(c);
        if (c->state == C_WAIT && now >= c->reconnect_at)
            conn_start_connect(c);
        if (c->state == C_OPEN) {
            conn_flush(c);
            conn_pump(c);
            conn_flush(c);
            if (c->broken)
                conn_broken(c);
        } else if (c->state == C_DRAIN) {
            conn_flush(c);
        }
        if (c->state == C_DEAD) {
            conn_free(c);
            a->conns[i] = a->conns[--a->n_conns];
            continue;
        }
        if (c->poweroff_pending) {
            poweroff_asked = 1;
            if (c->out.len == 0)
                poweroff_ready = 1;
        }
        i++;
    }
    /* After its reply is out (or a second at most); nothing more is read before. */
    if (a->poweroff_at && !a->poweroff_done &&
        (poweroff_ready || !poweroff_asked || now >= a->poweroff_at)) {
        a->poweroff_done = 1;
        if (a->o.poweroff)
            a->o.poweroff(a->o.payload);
        else
            (void)kill(1, SIGTERM);
    }
    int reading = !a->poweroff_at || a->poweroff_done;
    for (size_t i = 0; i < a->n_conns; i++) {
        struct conn *c = a->conns[i];
        uint32_t ev = 0;
        /* Frames held back earlier (replies piled up, a poweroff) go on now. */
        if (reading && c->state == C_OPEN && c->out.len <= OUTQ_HIGH &&
            c->reader->len >= SMOLVM_AGENT_HEADER_SIZE) {
            (void)conn_frames(c);
            conn_flush(c);
        }
        if (c->state == C_OPEN)
            ev = (reading && c->out.len <= OUTQ_HIGH ? EPOLLIN : 0) | (c->out.len ? EPOLLOUT : 0);
        else if (c->state == C_DRAIN)
            ev = EPOLLIN | (c->out.len ? EPOLLOUT : 0);
        else if (c->state == C_CONNECTING)
            ev = EPOLLOUT;
        (void)agent_watch(a, &c->w, ev);
    }
    procs_update(a);
}

int agent_step(struct agent *a, int timeout_ms)
{
    struct epoll_event ev[64];

    update(a); /* interest and output for whatever changed since the last turn */
    int64_t d = next_deadline(a);

    if (d >= 0) {
        int64_t left = d - agent_now_ms();
        if (left < 0)
            left = 0;
        if (timeout_ms < 0 || left < timeout_ms)
            timeout_ms = (int)(left > 60000 ? 60000 : left);
    }
    int n = epoll_wait(a->ep, ev, 64, timeout_ms);
    if (n < 0 && errno != EINTR)
        return -1;
    for (int i = 0; i < n; i++) {
        struct watch *w = ev[i].data.ptr;
        switch (w->kind) {
        case W_SIGNAL: signals(a); break;
        case W_LISTEN: accept_all(a); break;
        case W_CONN: conn_event(w->obj, ev[i].events); break;
        case W_OUT:
        case W_IN: proc_event(w->obj, w->kind == W_IN ? -1 : w->idx, ev[i].events); break;
        }
    }
    update(a);
    return a->n_conns > 0 || (a->w_listen.fd >= 0 && !a->o.exit_when_idle) ? 1 : 0;
}

struct agent *agent_free(struct agent *a)
{
    if (!a)
        return NULL;
    for (size_t i = 0; i < a->n_conns; i++)
        conn_free(a->conns[i]);
    free(a->conns);
    procs_kill_all(a);
    for (size_t i = 0; i < a->n_procs; i++)
        proc_free(a->procs[i]);
    for (size_t i = 0; a->env && i < a->n_env; i++)
        free(a->env[i]);
    free(a->env);
    if (a->w_sig.fd >= 0)
        close(a->w_sig.fd);
    if (a->ep >= 0)
        close(a->ep);
    free(a);
    return NULL;
}

int agent_run(const struct agent_options *o, int fd, enum agent_channel kind)
{
    struct agent *a = agent_new(o);
    int rc;
    if (!a) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (fd >= 0 && agent_add_channel(a, fd, kind) < 0) {
        agent_free(a);
        return -1;
    }
    while ((rc = agent_step(a, -1)) > 0)
        ;
    agent_free(a);
    return rc;
}
