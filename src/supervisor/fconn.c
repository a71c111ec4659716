/* SPDX-License-Identifier: MIT */
/* Framed connections on the supervisor's loop (fconn.h). */
#include "fconn.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

typedef struct outbuf {
    struct outbuf *next;
    size_t len, off;
    uint8_t data[]; /* header + payload */
} outbuf;

struct sv_fconn {
    sv_loop *loop;
    int fd;
    const sv_fconn_ops *ops;
    void *data;
    smolvm_agent_reader rd;
    outbuf *head, *tail;
    size_t queued;
    bool paused, want_out;
    bool in_io;       /* inside our loop callback: closing is deferred to its end */
    bool closing;     /* close after flushing (GOAWAY) */
    char *close_why;  /* set once it is to be closed */
    char *goaway_why; /* what the GOAWAY said, for closed() */
    int64_t goaway_timer, resume_timer;
};

#define GOAWAY_FLUSH_MS 1000

static void io(sv_loop *loop, int fd, uint32_t events, void *data);
static int flush(sv_fconn *c);

static void update_events(sv_fconn *c)
{
    uint32_t ev = (c->paused || c->closing ? 0 : EPOLLIN) | (c->head ? EPOLLOUT : 0);

    (void)sv_loop_mod(c->loop, c->fd, ev);
}

sv_fconn *sv_fconn_new(sv_loop *loop, int fd, const sv_fconn_ops *ops, void *data)
{
    sv_fconn *c = calloc(1, sizeof(*c));
    int fl = fcntl(fd, F_GETFL);

    if (!c)
        return NULL;
    if (fl >= 0)
        (void)fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    c->loop = loop;
    c->fd = fd;
    c->ops = ops;
    c->data = data;
    smolvm_agent_reader_init(&c->rd);
    if (sv_loop_add(loop, fd, EPOLLIN, io, c) < 0) {
        free(c);
        return NULL;
    }
    return c;
}

void sv_fconn_free(sv_fconn *c)
{
    if (!c)
        return;
    sv_loop_del(c->loop, c->fd);
    if (c->goaway_timer)
        sv_loop_cancel(c->loop, c->goaway_timer);
    if (c->resume_timer)
        sv_loop_cancel(c->loop, c->resume_timer);
    (void)close(c->fd);
    while (c->head) {
        outbuf *b = c->head;

        c->head = b->next;
        free(b);
    }
    free(c->close_why);
    free(c->goaway_why);
    free(c);
}

/* Mark for closing with a reason; done at once unless inside io(). */
static void finish(sv_fconn *c, const char *why)
{
    if (c->close_why)
        return;
    c->close_why = strdup(why ? why : "closed");
    if (!c->in_io) {
        char *w = c->close_why;

        c->close_why = NULL;
        c->ops->closed(c, w ? w : "closed", c->data);
        free(w);
        sv_fconn_free(c);
    }
}

int sv_fconn_send(sv_fconn *c, uint8_t type, uint8_t flags, uint8_t fd, uint32_t stream,
                  const void *payload, size_t len)
{
    smolvm_agent_header h = {(uint32_t)len, stream, type, flags, fd};
    outbuf *b;

    if (c->close_why || c->closing || len > SMOLVM_AGENT_FRAME_MAX)
        return -1;
    b = malloc(sizeof(*b) + SMOLVM_AGENT_HEADER_SIZE + len);
    if (!b)
        return -1;
    b->next = NULL;
    b->len = SMOLVM_AGENT_HEADER_SIZE + len;
    b->off = 0;
    smolvm_agent_header_encode(b->data, &h);
    if (len)
        memcpy(b->data + SMOLVM_AGENT_HEADER_SIZE, payload, len);
    if (c->tail)
        c->tail->next = b;
    else
        c->head = b;
    c->tail = b;
    c->queued += b->len;
    if (!c->in_io)
        update_events(c);
    return 0;
}

int sv_fconn_send_json(sv_fconn *c, uint8_t type, uint8_t flags, uint32_t stream, json_t *obj)
{
    char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    int r = text ? sv_fconn_send(c, type, flags, 0, stream, text, strlen(text)) : -1;

    free(text);
    json_decref(obj);
    return r;
}

static void goaway_timeout(sv_loop *loop, void *data)
{
    sv_fconn *c = data;

    (void)loop;
    c->goaway_timer = 0;
    finish(c, c->goaway_why ? c->goaway_why : "closed after goaway");
}

void sv_fconn_goaway(sv_fconn *c, const char *code, const char *message)
{
    if (c->closing || c->close_why)
        return;
    (void)sv_fconn_send_json(c, SMOLVM_AGENT_GOAWAY, 0, 0,
                             json_pack("{s:s, s:s}", "code", code, "message", message));
    c->closing = true;
    c->goaway_why = strdup(message);
    /* A peer that does not read its GOAWAY does not keep the connection open. */
    c->goaway_timer = sv_loop_timer(c->loop, sv_now_ms() + GOAWAY_FLUSH_MS, goaway_timeout, c);
    if (!c->in_io) {
        if (flush(c) < 0 || !c->head) {
            finish(c, message);
            return;
        }
        update_events(c);
    }
}

size_t sv_fconn_queued(const sv_fconn *c)
{
    return c->queued;
}

/* Frames already in the reader's buffer are not announced by epoll again: a resumed
 * connection processes them from a timer due at once. */
static void resume(sv_loop *loop, void *data)
{
    sv_fconn *c = data;

    c->resume_timer = 0;
    io(loop, c->fd, EPOLLIN, c);
}

void sv_fconn_pause(sv_fconn *c, bool paused)
{
    if (c->paused == paused)
        return;
    c->paused = paused;
    if (!paused && !c->resume_timer)
        c->resume_timer = sv_loop_timer(c->loop, sv_now_ms(), resume, c);
    if (!c->in_io)
        update_events(c);
}

int sv_fconn_fd(const sv_fconn *c)
{
    return c->fd;
}

/* Write what the socket takes now. -1 with errno on a real error. */
static int flush(sv_fconn *c)
{
    while (c->head) {
        struct iovec iov[16];
        outbuf *b = c->head;
        int n = 0;
        ssize_t w;

        for (b = c->head; b && n < 16; b = b->next, n++) {
            iov[n].iov_base = b->data + b->off;
            iov[n].iov_len = b->len - b->off;
        }
        w = writev(c->fd, iov, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (w < 0)
            return -1;
        c->queued -= (size_t)w;
        while (w > 0) {
            b = c->head;
            if ((size_t)w >= b->len - b->off) {
                w -= (ssize_t)(b->len - b->off);
                c->head = b->next;
                if (!c->head)
                    c->tail = NULL;
                free(b);
            } else {
                b->off += (size_t)w;
                w = 0;
            }
        }
    }
    return 0;
}

/* Read and dispatch what is there. Returns 0, 1 at EOF, -1 on error (why set). */
static int drain(sv_fconn *c, const char **why)
{
    for (;;) {
        smolvm_agent_header h;
        const uint8_t *payload;
        size_t avail;
        uint8_t *space;
        ssize_t n;
        int r;

        while ((r = smolvm_agent_reader_next(&c->rd, &h, &payload, why)) == 1) {
            c->ops->frame(c, &h, payload, c->data);
            if (c->close_why || c->closing || c->paused)
                return 0;
        }
        if (r < 0)
            return -1;
        space = smolvm_agent_reader_space(&c->rd, &avail);
        n = read(c->fd, space, avail);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (n < 0) {
            *why = strerror(errno);
            return -1;
        }
        if (n == 0)
            return 1;
        smolvm_agent_reader_commit(&c->rd, (size_t)n);
    }
}

static void io(sv_loop *loop, int fd, uint32_t events, void *data)
{
    sv_fconn *c = data;
    const char *why = NULL;
    bool had_queue = c->head != NULL;
    int r = 0;

    (void)loop;
    (void)fd;
    c->in_io = true;
    if ((events & EPOLLOUT) || c->head) {
        if (flush(c) < 0)
            (void)finish(c, strerror(errno));
    }
    if (!c->close_why && !c->closing && !c->paused && (events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
        r = drain(c, &why);
        if (r < 0)
            sv_fconn_goaway(c, "EPROTO", why ? why : "protocol error");
        else if (r == 1)
            finish(c, "connection closed");
    }
    if (!c->close_why && (c->head || c->closing) && flush(c) < 0)
        finish(c, strerror(errno));
    if (c->closing && !c->head && !c->close_why)
        finish(c, c->goaway_why ? c->goaway_why : "closed after goaway");
    c->in_io = false;
    if (!c->close_why && had_queue && !c->head && c->ops->drained)
        c->ops->drained(c, c->data);
    if (c->close_why) {
        char *w = c->close_why;

        c->close_why = NULL;
        c->ops->closed(c, w, c->data);
        free(w);
        sv_fconn_free(c);
        return;
    }
    update_events(c);
}
