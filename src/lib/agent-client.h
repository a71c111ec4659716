/* SPDX-License-Identifier: MIT */
/*
 * A client connection of the agent protocol (docs/agent-protocol.md) to a VM's
 * supervisor: blocking calls with deadlines, many streams at once on one connection.
 * Frames that arrive for a stream other than the one being waited on are queued on
 * their stream; what a stream can queue is bounded by the window it granted.
 *
 * Not thread-safe: one thread uses a connection and its streams at a time.
 */
#ifndef SMOLVM_AGENT_CLIENT_H
#define SMOLVM_AGENT_CLIENT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smolvm.h"

typedef struct smolvm_agent smolvm_agent;
typedef struct smolvm_agent_stream smolvm_agent_stream;

/* Connect to the socket at path and exchange hellos; returns when the server's hello
 * arrived. A supervisor answers when the guest is ready, or at once when wait_ready is
 * false (for its own operations: status, keep, poweroff). A GOAWAY instead is
 * SMOLVM_EVMM with its message; no listener is SMOLVM_ESTATE. */
int smolvm_agent_connect(smolvm_agent **out, const char *path, bool wait_ready, int64_t deadline,
                         smolvm_error **err);
smolvm_agent *smolvm_agent_free(smolvm_agent *a);
/* The server's hello (borrowed). */
json_t *smolvm_agent_hello(const smolvm_agent *a);
/* The connection failed (or the server said goodbye): the caller reconnects. */
bool smolvm_agent_broken(const smolvm_agent *a);

/* Open a stream: send REQUEST req (stolen), granting `window` bytes of DATA from the
 * server (0: the protocol default). The stream is freed with smolvm_agent_stream_free
 * (which RESETs it when the server has not finished it). */
int smolvm_agent_request(smolvm_agent_stream **out, smolvm_agent *a, json_t *req, uint32_t window,
                         smolvm_error **err);

typedef enum smolvm_agent_event_kind {
    SMOLVM_AGENT_EV_REPLY, /* json */
    SMOLVM_AGENT_EV_DATA,  /* fd, data, len */
    SMOLVM_AGENT_EV_EOF,   /* fd */
    SMOLVM_AGENT_EV_EXIT,  /* json */
} smolvm_agent_event_kind;

typedef struct smolvm_agent_event {
    smolvm_agent_event_kind kind;
    int fd;
    const uint8_t *data; /* borrowed until the next call on the stream */
    size_t len;
    json_t *json; /* borrowed until the next call on the stream */
    bool fin;     /* the server's last frame on this stream */
} smolvm_agent_event;

/* The stream's next event, waiting until the deadline. An ERROR frame from the server
 * is returned as the error (code from its "code" name) and ends the stream. DATA is
 * credited back to the server only with smolvm_agent_grant. */
int smolvm_agent_next(smolvm_agent_event *ev, smolvm_agent_stream *st, int64_t deadline,
                      smolvm_error **err);
/* Has the server finished the stream (a FIN was delivered)? */
bool smolvm_agent_done(const smolvm_agent_stream *st);

/* Grant the server `bytes` more DATA on the stream. */
int smolvm_agent_grant(smolvm_agent_stream *st, uint32_t bytes, smolvm_error **err);
/* Send DATA on fd, in frames within the window the server granted, waiting for more
 * window until the deadline. */
int smolvm_agent_write(smolvm_agent_stream *st, int fd, const void *data, size_t len,
                       int64_t deadline, smolvm_error **err);
int smolvm_agent_eof(smolvm_agent_stream *st, int fd, smolvm_error **err);
/* CONTROL frame with obj (stolen). */
int smolvm_agent_control(smolvm_agent_stream *st, json_t *obj, smolvm_error **err);
/* Set the window the server granted for client DATA (from its first REPLY). */
void smolvm_agent_set_send_window(smolvm_agent_stream *st, uint64_t window);

smolvm_agent_stream *smolvm_agent_stream_free(smolvm_agent_stream *st);
/* The socket of the stream's connection (to poll for POLLIN), or -1 once it is gone. */
int smolvm_agent_stream_fd(const smolvm_agent_stream *st);

/* One request whose answer is a single REPLY (FIN): *reply receives it (caller
 * decrefs). */
int smolvm_agent_call(json_t **reply, smolvm_agent *a, json_t *req, int64_t deadline,
                      smolvm_error **err);

/* The SMOLVM_E* code of a protocol error name ("ENOENT" ...); unknown: SMOLVM_EIO. */
int smolvm_agent_code(const char *name);

#endif
