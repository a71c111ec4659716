/* SPDX-License-Identifier: MIT */
/*
 * Clients of <dir>/agent.sock and the streams between them and the agent. Each client
 * stream gets an agent stream id of the supervisor's own; frames are relayed one to
 * one, so windows are end to end. The supervisor also keeps each stream's windows, so
 * a peer that sends past what it was granted (a hostile guest, a broken client) is
 * caught here: what the supervisor holds for a stream never exceeds its window.
 */
#include "supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "error.h"
#include "sock.h"
#include "util.h"

#define AGENT_QUEUE_HIGH (1u << 20)  /* pause clients while this much waits for the guest */
#define CLIENT_QUEUE_MAX (64u << 20) /* a client that reads nothing is dropped past this */
#define CLIENTS_MAX 1024

typedef struct sv_stream {
    uint32_t client_id, agent_id;
    uint64_t to_client; /* DATA bytes the client allows the agent to send */
    uint64_t to_agent;  /* DATA bytes the agent allows the client to send */
} sv_stream;

struct sv_client {
    sv_client *next;
    sv *s;
    sv_fconn *conn;
    bool hello_in, hello_out;
    uint32_t last_id;
    sv_stream *streams;
    size_t n, cap;
};

static void client_closed(sv_fconn *c, const char *why, void *data);
static void client_frame(sv_fconn *c, const smolvm_agent_header *h, const uint8_t *p, void *data);

static sv_stream *by_client_id(sv_client *cl, uint32_t id)
{
    size_t i;

    for (i = 0; i < cl->n; i++)
        if (cl->streams[i].client_id == id)
            return &cl->streams[i];
    return NULL;
}

static sv_stream *by_agent_id(sv *s, uint32_t id, sv_client **owner)
{
    sv_client *cl;
    size_t i;

    for (cl = s->clients; cl; cl = cl->next)
        for (i = 0; i < cl->n; i++)
            if (cl->streams[i].agent_id == id) {
                *owner = cl;
                return &cl->streams[i];
            }
    return NULL;
}

static void unmap(sv_client *cl, sv_stream *st)
{
    size_t i = (size_t)(st - cl->streams);

    cl->streams[i] = cl->streams[--cl->n];
}

static void reply_error(sv_client *cl, uint32_t stream, const char *code, const char *msg)
{
    (void)sv_fconn_send_json(cl->conn, SMOLVM_AGENT_ERROR, SMOLVM_AGENT_FIN, stream,
                             json_pack("{s:s, s:s}", "code", code, "message", msg));
}

static void send_hello(sv_client *cl)
{
    sv *s = cl->s;

    if (cl->hello_out)
        return;
    cl->hello_out = true;
    (void)sv_fconn_send_json(cl->conn, SMOLVM_AGENT_HELLO, 0, 0,
                             json_pack("{s:i, s:s, s:s, s:b, s:O?}", "version",
                                       SMOLVM_AGENT_VERSION, "vm", s->spec->vm_id, "transport",
                                       s->spec->transport == SMOLVM_SV_SSH ? "ssh" : "agent",
                                       "ready", s->state == SV_READY, "agent",
                                       s->agent_hello ? s->agent_info : NULL));
}

void sv_relay_ready(sv *s)
{
    sv_client *cl;

    for (cl = s->clients; cl; cl = cl->next)
        if (cl->hello_in)
            send_hello(cl);
}

void sv_relay_goaway_all(sv *s, const char *code, const char *why)
{
    sv_client *cl, *next;

    for (cl = s->clients; cl; cl = next) {
        next = cl->next;
        sv_fconn_goaway(cl->conn, code, why);
    }
}

size_t sv_relay_clients(const sv *s)
{
    size_t n = 0;

    for (const sv_client *cl = s->clients; cl; cl = cl->next)
        n++;
    return n;
}

/* ---------------------------------------------------------------- from the agent */

void sv_relay_agent_frame(sv *s, const smolvm_agent_header *h, const uint8_t *p)
{
    sv_client *cl = NULL;
    sv_stream *st = by_agent_id(s, h->stream, &cl);

    if (h->type == SMOLVM_AGENT_HELLO || h->stream == 0)
        return; /* GOAWAY closes the channel in fconn; nothing else is valid on 0 */
    if (!st) {
        /* Ended or reset: may have been in flight. Output the agent still has window
         * for (a clone's streams from before its snapshot) is not wanted: stop it. */
        if (h->type == SMOLVM_AGENT_DATA && !(h->flags & SMOLVM_AGENT_FIN) && s->agent)
            (void)sv_fconn_send(s->agent, SMOLVM_AGENT_RESET, 0, 0, h->stream, NULL, 0);
        return;
    }
    switch (h->type) {
    case SMOLVM_AGENT_DATA:
        if (h->length > st->to_client) {
            sv_fconn_goaway(s->agent, "EPROTO", "DATA beyond the window the client granted");
            return;
        }
        st->to_client -= h->length;
        break;
    case SMOLVM_AGENT_WINDOW:
        if (h->length != 4) {
            sv_fconn_goaway(s->agent, "EPROTO", "WINDOW payload is not 4 bytes");
            return;
        }
        st->to_agent += (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        if (st->to_agent > SMOLVM_AGENT_WINDOW_MAX) {
            sv_fconn_goaway(s->agent, "EPROTO", "WINDOW over 16 MiB");
            return;
        }
        break;
    case SMOLVM_AGENT_REPLY: {
        /* The first REPLY of a stream that takes input says how much it takes. */
        json_t *j = json_loadb((const char *)p, h->length, 0, NULL);
        json_t *w = json_object_get(j, "window");

        if (json_is_integer(w) && json_integer_value(w) > 0 &&
            json_integer_value(w) <= SMOLVM_AGENT_WINDOW_MAX)
            st->to_agent = (uint64_t)json_integer_value(w);
        json_decref(j);
        break;
    }
    case SMOLVM_AGENT_EOF:
    case SMOLVM_AGENT_EXIT:
    case SMOLVM_AGENT_ERROR: break;
    default: sv_fconn_goaway(s->agent, "EPROTO", "a frame type the agent may not send"); return;
    }
    (void)sv_fconn_send(cl->conn, h->type, h->flags, h->fd, st->client_id, p, h->length);
    if (h->flags & SMOLVM_AGENT_FIN)
        unmap(cl, st);
    if (sv_fconn_queued(cl->conn) > CLIENT_QUEUE_MAX) {
        sv_log(s, "client dropped: it reads nothing and %u MiB wait for it",
               CLIENT_QUEUE_MAX >> 20);
        sv_fconn_goaway(cl->conn, "ENOSPC", "too much unread output");
    }
}

void sv_relay_agent_lost(sv *s, const char *why)
{
    char msg[300];
    sv_client *cl;

    (void)snprintf(msg, sizeof(msg), "the agent channel was lost: %.200s", why);
    for (cl = s->clients; cl; cl = cl->next) {
        while (cl->n > 0) {
            reply_error(cl, cl->streams[0].client_id, "EIO", msg);
            unmap(cl, &cl->streams[0]);
        }
        sv_fconn_pause(cl->conn, false);
    }
}

/* ---------------------------------------------------------------- from clients */

static int64_t req_int(json_t *req, const char *key, int64_t dflt)
{
    json_t *v = json_object_get(req, key);

    return json_is_integer(v) ? json_integer_value(v) : dflt;
}

/* Operations the supervisor answers itself. Returns true when op was one. */
static bool local_op(sv_client *cl, uint32_t id, const char *op, json_t *req)
{
    sv *s = cl->s;

    if (strcmp(op, "status") == 0) {
        static const char *const names[] = {"booting", "ready", "stopping"};

        /* milestone: where the boot got to, for a start's timeout message. */
        (void)sv_fconn_send_json(
            cl->conn, SMOLVM_AGENT_REPLY, SMOLVM_AGENT_FIN, id,
            json_pack("{s:s, s:s, s:I, s:I, s:b, s:i, s:s}", "vm", s->spec->vm_id, "state",
                      names[s->state], "vmm_pid", (json_int_t)s->vmm_pid, "uptime_ms",
                      (json_int_t)(sv_now_ms() - s->t0), "agent", s->agent_hello, "clients",
                      (int)sv_relay_clients(s), "milestone", s->last_milestone));
        return true;
    }
    if (strcmp(op, "keep") == 0) {
        json_t *ttl = json_object_get(req, "ttl_ms");

        /* Absent: the ttl stays; null: no ttl; a number: a new one from now. */
        sv_lifetime_keep(s, ttl != NULL, json_is_integer(ttl) ? json_integer_value(ttl) : -1);
        (void)sv_fconn_send_json(cl->conn, SMOLVM_AGENT_REPLY, SMOLVM_AGENT_FIN, id, json_object());
        return true;
    }
    if (strcmp(op, "poweroff") == 0) {
        sv_guest_poweroff(s);
        (void)sv_fconn_send_json(cl->conn, SMOLVM_AGENT_REPLY, SMOLVM_AGENT_FIN, id, json_object());
        return true;
    }
    {
        json_t *reply = NULL;
        smolvm_error *e = NULL;
        int r = sv_vm_op(s, op, req, &reply, &e);

        if (r < 0) {
            reply_error(cl, id, smolvm_error_name(smolvm_error_code(e)), smolvm_error_message(e));
            smolvm_error_free(e);
        } else if (r > 0) {
            (void)sv_fconn_send_json(cl->conn, SMOLVM_AGENT_REPLY, SMOLVM_AGENT_FIN, id, reply);
        }
        if (r != 0)
            return true;
    }
    {
        smolvm_error *e = NULL;
        json_t *reply = NULL;

        if (!sv_net_op(s, op, req, &reply, &e))
            return false;
        if (reply)
            (void)sv_fconn_send_json(cl->conn, SMOLVM_AGENT_REPLY, SMOLVM_AGENT_FIN, id, reply);
        else
            reply_error(cl, id, smolvm_error_name(e ? smolvm_error_code(e) : SMOLVM_EIO),
                        e ? smolvm_error_message(e) : "failed");
        smolvm_error_free(e);
        return true;
    }
}

static void request(sv_client *cl, const smolvm_agent_header *h, const uint8_t *p)
{
    sv *s = cl->s;
    json_t *req;
    const char *op;
    int64_t window;
    sv_stream *st;

    if (h->stream <= cl->last_id) {
        sv_fconn_goaway(cl->conn, "EPROTO", "stream ids must increase");
        return;
    }
    cl->last_id = h->stream;
    req = json_loadb((const char *)p, h->length, 0, NULL);
    op = json_string_value(json_object_get(req, "op"));
    if (!json_is_object(req) || !op) {
        json_decref(req);
        sv_fconn_goaway(cl->conn, "EPROTO", "a REQUEST is a JSON object with an \"op\"");
        return;
    }
    if (local_op(cl, h->stream, op, req)) {
        json_decref(req);
        return;
    }
    window = req_int(req, "window", SMOLVM_AGENT_WINDOW_DEFAULT);
    json_decref(req);
    if (window < 0 || window > SMOLVM_AGENT_WINDOW_MAX) {
        reply_error(cl, h->stream, "EINVAL", "window: expected 0..16777216");
        return;
    }
    if (s->state != SV_READY) {
        reply_error(cl, h->stream, "ESTATE",
                    s->failure[0]             ? s->failure
                    : s->state == SV_STOPPING ? "the vm is stopping"
                                              : "the guest is not ready yet");
        return;
    }
    if (s->paused) {
        reply_error(cl, h->stream, "ESTATE", "the vm is paused (resume it first)");
        return;
    }
    if (!s->agent || !s->agent_hello) {
        reply_error(cl, h->stream, "ESTATE",
                    s->spec->transport == SMOLVM_SV_SSH
                        ? "this vm has no agent (its transport is 'ssh')"
                        : "the agent channel was lost");
        return;
    }
    if (cl->n >= SMOLVM_AGENT_STREAMS_MAX) {
        sv_fconn_goaway(cl->conn, "EPROTO", "more than 256 open streams");
        return;
    }
    if (cl->n == cl->cap) {
        size_t ncap = cl->cap ? cl->cap * 2 : 8;
        sv_stream *ns = realloc(cl->streams, ncap * sizeof(*ns));

        if (!ns) {
            reply_error(cl, h->stream, "ENOMEM", "out of memory");
            return;
        }
        cl->streams = ns;
        cl->cap = ncap;
    }
    st = &cl->streams[cl->n++];
    *st = (sv_stream){h->stream, ++s->next_agent_stream, (uint64_t)window, 0};
    (void)sv_fconn_send(s->agent, SMOLVM_AGENT_REQUEST, 0, 0, st->agent_id, p, h->length);
}

static void client_frame(sv_fconn *c, const smolvm_agent_header *h, const uint8_t *p, void *data)
{
    sv_client *cl = data;
    sv *s = cl->s;
    sv_stream *st;

    if (h->type == SMOLVM_AGENT_HELLO) {
        json_t *j = json_loadb((const char *)p, h->length, 0, NULL);
        bool ok = json_is_object(j) &&
                  json_integer_value(json_object_get(j, "version")) == SMOLVM_AGENT_VERSION;
        /* "ready": false asks for the hello at once (for the supervisor's operations). */
        bool now = json_is_false(json_object_get(j, "ready"));

        json_decref(j);
        if (cl->hello_in || !ok) {
            sv_fconn_goaway(c, "EPROTO", cl->hello_in ? "a second HELLO" : "unsupported version");
            return;
        }
        cl->hello_in = true;
        if (s->failure[0] && !now)
            sv_fconn_goaway(c, "EVMM", s->failure);
        else if (s->state == SV_READY || now)
            send_hello(cl);
        return;
    }
    if (!cl->hello_in) {
        sv_fconn_goaway(c, "EPROTO", "the first frame must be HELLO");
        return;
    }
    if (h->type == SMOLVM_AGENT_REQUEST) {
        request(cl, h, p);
    } else if (h->type == SMOLVM_AGENT_GOAWAY) {
        sv_fconn_goaway(c, "OK", "client said goodbye");
        return;
    } else if (!(st = by_client_id(cl, h->stream))) {
        return; /* a stream that ended: the frame may have crossed its end */
    } else {
        switch (h->type) {
        case SMOLVM_AGENT_DATA:
            if (h->length > st->to_agent) {
                sv_fconn_goaway(c, "EPROTO", "DATA beyond the window the agent granted");
                return;
            }
            st->to_agent -= h->length;
            break;
        case SMOLVM_AGENT_WINDOW:
            if (h->length != 4) {
                sv_fconn_goaway(c, "EPROTO", "WINDOW payload is not 4 bytes");
                return;
            }
            st->to_client +=
                (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
            if (st->to_client > SMOLVM_AGENT_WINDOW_MAX) {
                sv_fconn_goaway(c, "EPROTO", "WINDOW over 16 MiB");
                return;
            }
            break;
        case SMOLVM_AGENT_EOF:
        case SMOLVM_AGENT_CONTROL:
        case SMOLVM_AGENT_RESET: break;
        default: sv_fconn_goaway(c, "EPROTO", "a frame type a client may not send"); return;
        }
        if (s->agent)
            (void)sv_fconn_send(s->agent, h->type, h->flags, h->fd, st->agent_id, p, h->length);
        if (h->type == SMOLVM_AGENT_RESET)
            unmap(cl, st);
    }
    /* Backpressure: a client that outruns the guest channel waits. */
    if (s->agent && sv_fconn_queued(s->agent) > AGENT_QUEUE_HIGH)
        sv_fconn_pause(c, true);
}

static void client_closed(sv_fconn *c, const char *why, void *data)
{
    sv_client *cl = data, **pp;
    sv *s = cl->s;
    size_t i;

    (void)c;
    (void)why;
    /* What it left open ends as a RESET would end it (on_reset decides). */
    for (i = 0; i < cl->n && s->agent; i++)
        (void)sv_fconn_send(s->agent, SMOLVM_AGENT_RESET, 0, 0, cl->streams[i].agent_id, NULL, 0);
    for (pp = &s->clients; *pp; pp = &(*pp)->next)
        if (*pp == cl) {
            *pp = cl->next;
            break;
        }
    free(cl->streams);
    free(cl);
}

void sv_relay_agent_drained(sv *s)
{
    for (sv_client *cl = s->clients; cl; cl = cl->next)
        sv_fconn_pause(cl->conn, false);
}

static const sv_fconn_ops client_ops = {client_frame, client_closed, NULL};

static void accept_io(sv_loop *loop, int fd, uint32_t events, void *data)
{
    sv *s = data;
    int c;

    (void)loop;
    (void)events;
    while ((c = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK)) >= 0) {
        sv_client *cl;

        if (sv_relay_clients(s) >= CLIENTS_MAX) {
            (void)close(c);
            continue;
        }
        cl = calloc(1, sizeof(*cl));
        if (!cl) {
            (void)close(c);
            continue;
        }
        cl->s = s;
        cl->conn = sv_fconn_new(s->loop, c, &client_ops, cl);
        if (!cl->conn) {
            (void)close(c);
            free(cl);
            continue;
        }
        cl->next = s->clients;
        s->clients = cl;
    }
}

int sv_relay_listen(sv *s)
{
    _cleanup_free_ char *path = smolvm_strdupf("%s/%s", s->spec->dir, SMOLVM_SV_SOCK);
    smolvm_error *e = NULL;

    if (!path)
        return -ENOMEM;
    (void)unlink(path);
    if (smolvm_unix_listen(path, &s->listen_fd, &e) < 0) {
        sv_log(s, "listen: %s", smolvm_error_message(e));
        smolvm_error_free(e);
        return -EIO;
    }
    (void)fcntl(s->listen_fd, F_SETFL, O_NONBLOCK);
    return sv_loop_add(s->loop, s->listen_fd, EPOLLIN, accept_io, s);
}
