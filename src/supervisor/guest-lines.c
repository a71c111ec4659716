/* SPDX-License-Identifier: MIT */
/* The guest init's lines: see guest-lines.h. Text the guest sends is bounded by the
 * line buffer and only compared or copied, never used as a format. */
#include "guest-lines.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

void sv_line_parse(sv_line *out, const char *line, bool console)
{
    memset(out, 0, sizeof(*out));
    if (sscanf(line, console ? "smolvm: ready %" SCNd64 : "smolvm-ready %" SCNd64, &out->ms) == 1) {
        out->kind = SV_LINE_READY;
        return;
    }
    if (!console && strncmp(line, "smolvm-error ", 13) == 0) {
        const char *msg = line + 13;

        msg += strspn(msg, "0123456789");
        msg += strspn(msg, " ");
        out->kind = SV_LINE_FAILED;
        out->text = msg;
        return;
    }
    if (console && strncmp(line, "smolvm: error: ", 15) == 0) {
        out->kind = SV_LINE_FAILED;
        out->text = line + 15;
        return;
    }
    if (console && strstr(line, "Kernel panic - not syncing")) {
        out->kind = SV_LINE_FAILED;
        out->text = line;
        return;
    }
    if (!console && strncmp(line, "smolvm-poweroff", 15) == 0) {
        out->kind = SV_LINE_POWEROFF;
        return;
    }
    out->ms = 0;
    if (sscanf(line, console ? "smolvm: %31s %" SCNd64 : "smolvm-boot %31s %" SCNd64, out->stage,
               &out->ms) == 2)
        out->kind = SV_LINE_MILESTONE;
    else
        out->stage[0] = '\0';
}

void sv_lines_feed(char *buf, size_t *len, size_t cap, const char *data, size_t n,
                   void (*on_line)(const char *line, void *payload), void *payload)
{
    size_t i;

    for (i = 0; i < n; i++) {
        char c = data[i];

        if (c == '\n') {
            if (*len < cap) {
                buf[*len] = '\0';
                if (*len > 0 && buf[*len - 1] == '\r')
                    buf[*len - 1] = '\0';
                on_line(buf, payload);
            }
            *len = 0;
        } else if (*len < cap) {
            buf[(*len)++] = c == '\0' ? ' ' : c;
        } /* else the buffer is full: the line is over-long and is dropped at its '\n' */
    }
}
