/* SPDX-License-Identifier: MIT */
/*
 * The supervisor's reading of the guest init's lines (src/supervisor/guest-lines.c):
 * what counts from hvc0, which only the init writes, and what counts from the serial
 * console, which anything in the guest can write (issue 17, L7: a guest process must
 * not turn a crash into "the guest powered off" by printing the init's line).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "guest-lines.h"

static sv_line parse(const char *line, bool console)
{
    sv_line l;

    sv_line_parse(&l, line, console);
    return l;
}

static void test_hvc0(void **state)
{
    sv_line l;

    (void)state;
    l = parse("smolvm-ready 812", false);
    assert_int_equal(l.kind, SV_LINE_READY);
    assert_int_equal(l.ms, 812);
    l = parse("smolvm-boot agent 640", false);
    assert_int_equal(l.kind, SV_LINE_MILESTONE);
    assert_string_equal(l.stage, "agent");
    assert_int_equal(l.ms, 640);
    l = parse("smolvm-error 12 config disk: no smolvm config disk found", false);
    assert_int_equal(l.kind, SV_LINE_FAILED);
    assert_string_equal(l.text, "config disk: no smolvm config disk found");
    assert_int_equal(parse("smolvm-poweroff", false).kind, SV_LINE_POWEROFF);
    /* The console's forms mean nothing on hvc0. */
    assert_int_equal(parse("smolvm: ready 812", false).kind, SV_LINE_OTHER);
    assert_int_equal(parse("Kernel panic - not syncing: VFS", false).kind, SV_LINE_OTHER);
}

static void test_console(void **state)
{
    sv_line l;

    (void)state;
    /* A process in the guest printing the init's poweroff line on the console: not a
     * power-off. */
    assert_int_equal(parse("smolvm-poweroff", true).kind, SV_LINE_OTHER);
    assert_int_equal(parse("smolvm-ready 5", true).kind, SV_LINE_OTHER);
    assert_int_equal(parse("smolvm-error 1 fake", true).kind, SV_LINE_OTHER);
    l = parse("smolvm: ready 900", true);
    assert_int_equal(l.kind, SV_LINE_READY);
    assert_int_equal(l.ms, 900);
    l = parse("smolvm: error: mount /dev/vda: no such device", true);
    assert_int_equal(l.kind, SV_LINE_FAILED);
    assert_string_equal(l.text, "mount /dev/vda: no such device");
    l = parse("[    1.2] Kernel panic - not syncing: Attempted to kill init!", true);
    assert_int_equal(l.kind, SV_LINE_FAILED);
    /* A stage name longer than its field is cut, never overflows it. */
    l = parse("smolvm: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 7", true);
    assert_true(strlen(l.stage) < sizeof(l.stage));
}

struct seen {
    char lines[4][64];
    int n;
};

static void on_line(const char *line, void *payload)
{
    struct seen *s = payload;

    if (s->n < 4)
        (void)strncpy(s->lines[s->n], line, sizeof(s->lines[0]) - 1);
    s->n++;
}

/* Lines split across reads, CRLF, NUL bytes, and an over-long line dropped whole. */
static void test_feed(void **state)
{
    char buf[17];
    size_t len = 0;
    struct seen s = {0};
    static const char a[] = "smolvm-re", b[] = "ady 3\r\nx\0y\n";
    static const char longline[] = "0123456789abcdefghijklmnop\nok\n";

    (void)state;
    sv_lines_feed(buf, &len, sizeof(buf) - 1, a, sizeof(a) - 1, on_line, &s);
    assert_int_equal(s.n, 0);
    sv_lines_feed(buf, &len, sizeof(buf) - 1, b, sizeof(b) - 1, on_line, &s);
    assert_int_equal(s.n, 2);
    assert_string_equal(s.lines[0], "smolvm-ready 3");
    assert_string_equal(s.lines[1], "x y");
    sv_lines_feed(buf, &len, sizeof(buf) - 1, longline, sizeof(longline) - 1, on_line, &s);
    assert_int_equal(s.n, 3);
    assert_string_equal(s.lines[2], "ok");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hvc0),
        cmocka_unit_test(test_console),
        cmocka_unit_test(test_feed),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
