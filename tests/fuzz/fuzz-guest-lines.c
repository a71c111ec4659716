/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the supervisor's reading of the guest init's lines
 * (src/supervisor/guest-lines.c): any bytes, split into lines with the supervisor's
 * 512-byte buffer (fed whole and in pieces of fuzzer-chosen sizes, which must give the
 * same lines), each line read as an hvc0 line and as a console line. Every line is
 * shorter than the buffer and holds no newline or NUL; what a line says points inside
 * it and is bounded.
 */
#include "guest-lines.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CAP 511 /* the supervisor's buffers are 512 bytes, one kept for the NUL */
#define MAX_LINES 4096

struct seen {
    uint64_t sum[MAX_LINES];
    size_t n, cap;
};

static uint64_t fnv(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)p[i]) * 1099511628211ull;
    return h;
}

static void check_parse(const char *line, size_t len, int console)
{
    sv_line l;

    sv_line_parse(&l, line, console);
    switch (l.kind) {
    case SV_LINE_FAILED:
        if (!l.text || l.text < line || l.text > line + len)
            abort();
        break;
    case SV_LINE_MILESTONE:
        if (strnlen(l.stage, sizeof(l.stage)) >= sizeof(l.stage) || !l.stage[0])
            abort();
        break;
    case SV_LINE_POWEROFF:
        if (console) /* only hvc0 may say it (the console is anyone's) */
            abort();
        break;
    case SV_LINE_READY:
    case SV_LINE_OTHER: break;
    default: abort();
    }
}

static void on_line(const char *line, void *payload)
{
    struct seen *s = payload;
    size_t len = strlen(line);

    if (len >= CAP || memchr(line, '\n', len))
        abort();
    check_parse(line, len, 0);
    check_parse(line, len, 1);
    if (s->n < MAX_LINES)
        s->sum[s->n] = fnv(line, len);
    s->n++;
}

static void feed(const uint8_t *data, size_t size, const uint8_t *steps, size_t nsteps,
                 struct seen *out)
{
    static char buf[CAP + 1];
    size_t len = 0, off = 0, k = 0;

    out->n = 0;
    while (off < size) {
        size_t n = nsteps ? steps[k++ % nsteps] : size;

        if (n == 0 || n > size - off)
            n = size - off;
        sv_lines_feed(buf, &len, CAP, (const char *)data + off, n, on_line, out);
        off += n;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct seen whole, pieces;
    size_t nsteps;

    /* The first byte says how many of the next bytes are piece sizes. */
    if (size == 0)
        return 0;
    nsteps = data[0] % 8;
    if (nsteps >= size)
        nsteps = size - 1;
    feed(data + 1 + nsteps, size - 1 - nsteps, NULL, 0, &whole);
    feed(data + 1 + nsteps, size - 1 - nsteps, data + 1, nsteps, &pieces);
    if (whole.n != pieces.n)
        abort();
    for (size_t i = 0; i < whole.n && i < MAX_LINES; i++)
        if (whole.sum[i] != pieces.sum[i])
            abort();
    return 0;
}
