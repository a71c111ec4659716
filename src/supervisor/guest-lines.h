/* SPDX-License-Identifier: MIT */
/* The guest init's lines (hvc0, or the serial console on firecracker) read into what
 * they say: pure functions, no supervisor state, so they can be fuzzed alone
 * (tests/fuzz/fuzz-guest-lines.c). docs/guest-protocol.md has the lines. */
#ifndef SMOLVM_SV_GUEST_LINES_H
#define SMOLVM_SV_GUEST_LINES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum sv_line_kind {
    SV_LINE_OTHER,     /* nothing the supervisor acts on */
    SV_LINE_READY,     /* the guest is ready: ms */
    SV_LINE_FAILED,    /* the boot failed: text (borrowed from the line) */
    SV_LINE_POWEROFF,  /* the guest powers off (hvc0 only) */
    SV_LINE_MILESTONE, /* a boot stage reached: stage, ms */
} sv_line_kind;

typedef struct sv_line {
    sv_line_kind kind;
    int64_t ms;
    char stage[32];
    const char *text; /* SV_LINE_FAILED: points into the line given */
} sv_line;

/* What one line says. console: the line came from the serial console, where only the
 * "smolvm: ..." forms and a kernel panic count (anything in the guest can write
 * there); else from hvc0, which only the init writes. */
void sv_line_parse(sv_line *out, const char *line, bool console);

/* Split bytes into NUL-terminated lines in buf (cap bytes, one kept for the NUL: pass
 * sizeof(buf) - 1), calling on_line for each complete one. A line longer than cap is
 * dropped whole at its '\n'; a NUL byte inside a line becomes a space, a '\r' before
 * the '\n' is removed. */
void sv_lines_feed(char *buf, size_t *len, size_t cap, const char *data, size_t n,
                   void (*on_line)(const char *line, void *payload), void *payload);

#endif
