/* SPDX-License-Identifier: MIT */
/*
 * The agent protocol's framing (docs/agent-protocol.md, "Frames"): header encode and
 * decode with every check a single header allows, and a fixed-memory incremental
 * reader. Shared by the guest agent, the supervisor and the library.
 */
#include "agent-proto.h"

#include <string.h>

static const char *const type_names[_SMOLVM_AGENT_TYPE_MAX] = {
    [SMOLVM_AGENT_HELLO] = "HELLO",   [SMOLVM_AGENT_REQUEST] = "REQUEST",
    [SMOLVM_AGENT_REPLY] = "REPLY",   [SMOLVM_AGENT_DATA] = "DATA",
    [SMOLVM_AGENT_WINDOW] = "WINDOW", [SMOLVM_AGENT_EOF] = "EOF",
    [SMOLVM_AGENT_EXIT] = "EXIT",     [SMOLVM_AGENT_CONTROL] = "CONTROL",
    [SMOLVM_AGENT_ERROR] = "ERROR",   [SMOLVM_AGENT_RESET] = "RESET",
    [SMOLVM_AGENT_GOAWAY] = "GOAWAY",
};

const char *smolvm_agent_type_name(int type)
{
    if (type <= 0 || type >= _SMOLVM_AGENT_TYPE_MAX)
        return "?";
    return type_names[type];
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

void smolvm_agent_header_encode(uint8_t out[SMOLVM_AGENT_HEADER_SIZE], const smolvm_agent_header *h)
{
    put32(out, h->length);
    put32(out + 4, h->stream);
    out[8] = h->type;
    out[9] = h->flags;
    out[10] = h->fd;
    out[11] = 0;
}

int smolvm_agent_header_decode(const uint8_t in[SMOLVM_AGENT_HEADER_SIZE], smolvm_agent_header *h,
                               const char **why)
{
    smolvm_agent_header v = {
        .length = get32(in), .stream = get32(in + 4), .type = in[8], .flags = in[9], .fd = in[10]};
    const char *bad = NULL;

    /* Checked in this order; the test vectors name the first violation. */
    if (v.length > SMOLVM_AGENT_FRAME_MAX)
        bad = "length over 65536";
    else if (v.type == 0 || v.type >= _SMOLVM_AGENT_TYPE_MAX)
        bad = "unknown type";
    else if (v.flags & ~SMOLVM_AGENT_FIN)
        bad = "unknown flags";
    else if (in[11] != 0)
        bad = "reserved byte not 0";
    else if (v.fd > SMOLVM_AGENT_FD_STDERR)
        bad = "fd over 2";
    else if (v.fd != 0 && v.type != SMOLVM_AGENT_DATA && v.type != SMOLVM_AGENT_WINDOW &&
             v.type != SMOLVM_AGENT_EOF)
        bad = "fd set on a frame without fd";
    else if (v.stream == 0 && v.type != SMOLVM_AGENT_HELLO && v.type != SMOLVM_AGENT_GOAWAY)
        bad = "frame on stream 0 other than HELLO/GOAWAY";
    else if (v.stream != 0 && (v.type == SMOLVM_AGENT_HELLO || v.type == SMOLVM_AGENT_GOAWAY))
        bad = "HELLO/GOAWAY not on stream 0";
    else if (v.type == SMOLVM_AGENT_WINDOW && v.length != 4)
        bad = "WINDOW payload not 4 bytes";
    else if ((v.type == SMOLVM_AGENT_EOF || v.type == SMOLVM_AGENT_RESET) && v.length != 0)
        bad = "EOF/RESET with a payload";
    else if ((v.type == SMOLVM_AGENT_EXIT || v.type == SMOLVM_AGENT_ERROR) &&
             !(v.flags & SMOLVM_AGENT_FIN))
        bad = "EXIT/ERROR without FIN";
    if (bad) {
        if (why)
            *why = bad;
        return -1;
    }
    *h = v;
    return 0;
}

void smolvm_agent_reader_init(smolvm_agent_reader *r)
{
    r->start = 0;
    r->len = 0;
}

/* In error the reader holds a poisoned length: len > sizeof(buf) never happens
 * otherwise. */
#define READER_ERROR ((size_t)-1)

uint8_t *smolvm_agent_reader_space(smolvm_agent_reader *r, size_t *avail)
{
    if (r->len == READER_ERROR) {
        *avail = 0;
        return r->buf;
    }
    if (r->start > 0 && r->start + r->len == sizeof(r->buf)) {
        memmove(r->buf, r->buf + r->start, r->len);
        r->start = 0;
    } else if (r->len == 0) {
        r->start = 0;
    }
    *avail = sizeof(r->buf) - r->start - r->len;
    return r->buf + r->start + r->len;
}

void smolvm_agent_reader_commit(smolvm_agent_reader *r, size_t n)
{
    if (r->len != READER_ERROR)
        r->len += n;
}

int smolvm_agent_reader_next(smolvm_agent_reader *r, smolvm_agent_header *h,
                             const uint8_t **payload, const char **why)
{
    smolvm_agent_header v;

    if (r->len == READER_ERROR) {
        if (why)
            *why = "reader is in error";
        return -1;
    }
    if (r->len < SMOLVM_AGENT_HEADER_SIZE)
        return 0;
    if (smolvm_agent_header_decode(r->buf + r->start, &v, why) < 0) {
        r->len = READER_ERROR;
        return -1;
    }
    if (r->len < SMOLVM_AGENT_HEADER_SIZE + (size_t)v.length)
        return 0;
    *h = v;
    *payload = r->buf + r->start + SMOLVM_AGENT_HEADER_SIZE;
    r->start += SMOLVM_AGENT_HEADER_SIZE + v.length;
    r->len -= SMOLVM_AGENT_HEADER_SIZE + v.length;
    return 1;
}
