/* SPDX-License-Identifier: MIT */
/*
 * A framed connection (docs/agent-protocol.md) on the supervisor's loop: frames come in
 * through a fixed-size reader and go out through a queue written when the socket is
 * writable. Used for the agent channel and for every client.
 */
#ifndef SMOLVM_SV_FCONN_H
#define SMOLVM_SV_FCONN_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent-proto.h"
#include "loop.h"

typedef struct sv_fconn sv_fconn;

typedef struct sv_fconn_ops {
    /* A whole frame; payload borrowed for the call. */
    void (*frame)(sv_fconn *c, const smolvm_agent_header *h, const uint8_t *payload, void *data);
    /* The connection is finished: EOF, an error or a protocol violation (why says
     * which). The fconn is freed right after the callback returns. */
    void (*closed)(sv_fconn *c, const char *why, void *data);
    /* Optional: everything queued has been written (after there was something). */
    void (*drained)(sv_fconn *c, void *data);
} sv_fconn_ops;

/* Take over fd (non-blocking is set here). */
sv_fconn *sv_fconn_new(sv_loop *loop, int fd, const sv_fconn_ops *ops, void *data);
/* Close now (no callback), dropping what is queued. */
void sv_fconn_free(sv_fconn *c);

/* Queue one frame. Returns 0, or -1 when the connection is closing. */
int sv_fconn_send(sv_fconn *c, uint8_t type, uint8_t flags, uint8_t fd, uint32_t stream,
                  const void *payload, size_t len);
/* Queue a frame whose payload is obj (compact JSON; obj is released). */
int sv_fconn_send_json(sv_fconn *c, uint8_t type, uint8_t flags, uint32_t stream, json_t *obj);
/* Send GOAWAY {code, message}, flush what can be flushed, then close (closed() is
 * called with why = message). */
void sv_fconn_goaway(sv_fconn *c, const char *code, const char *message);

/* Bytes queued and not yet written. */
size_t sv_fconn_queued(const sv_fconn *c);
/* Stop or resume reading (backpressure). */
void sv_fconn_pause(sv_fconn *c, bool paused);
int sv_fconn_fd(const sv_fconn *c);

#endif
