/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the codec (src/common/agent-proto.c): any bytes, fed to the
 * incremental reader whole and in pieces of fuzzer-chosen sizes, must give the same
 * frames (or the same error), every frame within bounds, every accepted header
 * re-encoding to its own bytes.
 */
#include "agent-proto.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_FRAMES 4096

struct seen {
    smolvm_agent_header h[MAX_FRAMES];
    uint64_t sum[MAX_FRAMES];
    size_t n;
    const char *why;
};

static uint64_t fnv(const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static int header_eq(const smolvm_agent_header *a, const smolvm_agent_header *b)
{
    return a->length == b->length && a->stream == b->stream && a->type == b->type &&
           a->flags == b->flags && a->fd == b->fd;
}

/* Feed data in pieces whose sizes come from steps (cycled); 0 means "all that fits". */
static void parse(const uint8_t *data, size_t size, const uint8_t *steps, size_t nsteps,
                  struct seen *out)
{
    static smolvm_agent_reader r;
    size_t off = 0, k = 0;

    smolvm_agent_reader_init(&r);
    out->n = 0;
    out->why = NULL;
    while (off < size) {
        size_t avail;
        uint8_t *space = smolvm_agent_reader_space(&r, &avail);
        if (avail == 0)
            abort(); /* the reader promises room while it is not in error */
        size_t want = nsteps ? steps[k++ % nsteps] : 0;
        size_t n = want ? want : avail;
        if (n > avail)
            n = avail;
        if (n > size - off)
            n = size - off;
        memcpy(space, data + off, n);
        smolvm_agent_reader_commit(&r, n);
        off += n;
        for (;;) {
            smolvm_agent_header h;
            const uint8_t *payload;
            const char *why = NULL;
            int rc = smolvm_agent_reader_next(&r, &h, &payload, &why);
            if (rc == 0)
                break;
            if (rc < 0) {
                if (!why)
                    abort();
                out->why = why;
                return;
            }
            if (h.length > SMOLVM_AGENT_FRAME_MAX || h.type == 0 ||
                h.type >= _SMOLVM_AGENT_TYPE_MAX || h.fd > 2 || (h.flags & ~SMOLVM_AGENT_FIN))
                abort();
            uint8_t enc[SMOLVM_AGENT_HEADER_SIZE];
            smolvm_agent_header back;
            smolvm_agent_header_encode(enc, &h);
            if (smolvm_agent_header_decode(enc, &back, NULL) != 0 || !header_eq(&back, &h))
                abort();
            if (out->n < MAX_FRAMES) {
                out->h[out->n] = h;
                out->sum[out->n] = fnv(payload, h.length);
            }
            out->n++;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct seen a, b;
    /* The first byte says how many of the next bytes are piece sizes. */
    size_t nsteps = size ? data[0] % 16 : 0;
    if (1 + nsteps > size)
        nsteps = 0;
    const uint8_t *steps = data + 1;
    const uint8_t *body = size ? data + 1 + nsteps : data;
    size_t blen = size ? size - 1 - nsteps : 0;

    parse(body, blen, NULL, 0, &a);
    parse(body, blen, steps, nsteps, &b);
    if (a.n != b.n || (a.why == NULL) != (b.why == NULL) || (a.why && strcmp(a.why, b.why)))
        abort();
    for (size_t i = 0; i < a.n && i < MAX_FRAMES; i++)
        if (!header_eq(&a.h[i], &b.h[i]) || a.sum[i] != b.sum[i])
            abort();
    /* The header decoder on its own agrees with what the reader said of the first. */
    if (blen >= SMOLVM_AGENT_HEADER_SIZE) {
        smolvm_agent_header h;
        const char *why = NULL;
        int rc = smolvm_agent_header_decode(body, &h, &why);
        if ((rc < 0) != (a.n == 0 && a.why != NULL))
            abort();
    }
    return 0;
}
