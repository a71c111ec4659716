/* SPDX-License-Identifier: MIT */
/*
 * The agent protocol codec (src/common/agent-proto.c) against the shared test vectors
 * (tests/fixtures/agent-vectors.json): every valid frame decodes to its fields and
 * encodes back to its bytes, every invalid header is refused with its reason, and
 * byte streams split at awkward points give the same frames.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "agent-proto.h"

static json_t *vectors;

static size_t unhex(const char *hex, uint8_t **out)
{
    size_t n = strlen(hex) / 2;
    uint8_t *b = malloc(n ? n : 1);
    assert_non_null(b);
    assert_int_equal(strlen(hex) % 2, 0);
    for (size_t i = 0; i < 2 * n; i++) {
        char c = hex[i];
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (v < 0)
            fail_msg("bad hex digit '%c' in the vectors", c);
        b[i / 2] = (uint8_t)(i % 2 ? b[i / 2] | v : v << 4);
    }
    *out = b;
    return n;
}

static const char *str_member(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    assert_non_null(s);
    return s;
}

static long long int_member(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    assert_true(json_is_integer(v));
    return json_integer_value(v);
}

static json_t *frame_by_name(const char *name)
{
    size_t i;
    json_t *f;
    json_array_foreach (json_object_get(vectors, "frames"), i, f) {
        if (strcmp(str_member(f, "name"), name) == 0)
            return f;
    }
    fail_msg("no frame named '%s' in the vectors", name);
    return NULL;
}

static void test_valid_frames(void **state)
{
    size_t i;
    json_t *f;
    json_t *frames = json_object_get(vectors, "frames");
    assert_true(json_array_size(frames) >= 11);
    int seen[_SMOLVM_AGENT_TYPE_MAX] = {0};

    json_array_foreach (frames, i, f) {
        uint8_t *hdr, *payload, out[SMOLVM_AGENT_HEADER_SIZE];
        size_t hn = unhex(str_member(f, "header_hex"), &hdr);
        size_t pn = unhex(str_member(f, "payload_hex"), &payload);
        smolvm_agent_header h;
        const char *why = NULL;

        assert_int_equal(hn, SMOLVM_AGENT_HEADER_SIZE);
        if (smolvm_agent_header_decode(hdr, &h, &why) != 0)
            fail_msg("frame '%s' refused: %s", str_member(f, "name"), why);
        assert_int_equal(h.length, int_member(f, "length"));
        assert_int_equal(h.length, pn);
        assert_int_equal(h.stream, int_member(f, "stream"));
        assert_int_equal(h.type, int_member(f, "type"));
        assert_int_equal(h.flags, int_member(f, "flags"));
        assert_int_equal(h.fd, int_member(f, "fd"));
        assert_string_equal(smolvm_agent_type_name(h.type), str_member(f, "type_name"));
        seen[h.type] = 1;
        smolvm_agent_header_encode(out, &h);
        assert_memory_equal(out, hdr, SMOLVM_AGENT_HEADER_SIZE);
        json_t *text = json_object_get(f, "payload_text");
        if (text) {
            assert_int_equal(json_string_length(text), pn);
            assert_memory_equal(json_string_value(text), payload, pn);
        }
        free(hdr);
        free(payload);
    }
    for (int t = 1; t < _SMOLVM_AGENT_TYPE_MAX; t++)
        if (!seen[t])
            fail_msg("no valid vector of type %s", smolvm_agent_type_name(t));
    assert_string_equal(smolvm_agent_type_name(0), "?");
    assert_string_equal(smolvm_agent_type_name(12), "?");
}

static void test_invalid_headers(void **state)
{
    size_t i;
    json_t *v;
    json_t *invalid = json_object_get(vectors, "invalid");
    assert_true(json_array_size(invalid) >= 10);

    json_array_foreach (invalid, i, v) {
        uint8_t *hdr;
        smolvm_agent_header h = {.length = 7777};
        const char *why = NULL;
        assert_int_equal(unhex(str_member(v, "hex"), &hdr), SMOLVM_AGENT_HEADER_SIZE);
        if (smolvm_agent_header_decode(hdr, &h, &why) != -1)
            fail_msg("invalid header '%s' was accepted", str_member(v, "name"));
        assert_non_null(why);
        if (strcmp(why, str_member(v, "reason")) != 0)
            fail_msg("'%s': reason '%s', want '%s'", str_member(v, "name"), why,
                     str_member(v, "reason"));
        assert_int_equal(h.length, 7777); /* output untouched on failure */

        /* The reader refuses it too, and stays refused. */
        smolvm_agent_reader *r = malloc(sizeof(*r));
        size_t avail;
        const uint8_t *payload;
        assert_non_null(r);
        smolvm_agent_reader_init(r);
        uint8_t *space = smolvm_agent_reader_space(r, &avail);
        assert_true(avail >= SMOLVM_AGENT_HEADER_SIZE);
        memcpy(space, hdr, SMOLVM_AGENT_HEADER_SIZE);
        smolvm_agent_reader_commit(r, SMOLVM_AGENT_HEADER_SIZE);
        assert_int_equal(smolvm_agent_reader_next(r, &h, &payload, &why), -1);
        assert_string_equal(why, str_member(v, "reason"));
        assert_int_equal(smolvm_agent_reader_next(r, &h, &payload, &why), -1);
        free(r);
        free(hdr);
    }
}

/* Feed each chunk through the reader's free space (possibly in several pieces, as a
 * short read would) and compare the frames that come out. */
static void test_streams(void **state)
{
    size_t i;
    json_t *s;
    json_t *streams = json_object_get(vectors, "streams");
    assert_true(json_array_size(streams) >= 3);

    json_array_foreach (streams, i, s) {
        smolvm_agent_reader *r = malloc(sizeof(*r));
        json_t *chunks = json_object_get(s, "chunks_hex"), *want = json_object_get(s, "frames");
        const char *err_want = json_string_value(json_object_get(s, "error"));
        size_t got = 0, j;
        json_t *c;
        int failed = 0;

        assert_non_null(r);
        smolvm_agent_reader_init(r);
        json_array_foreach (chunks, j, c) {
            uint8_t *bytes;
            size_t n = unhex(json_string_value(c), &bytes), off = 0;
            while (off < n && !failed) {
                size_t avail;
                uint8_t *space = smolvm_agent_reader_space(r, &avail);
                assert_true(avail > 0);
                size_t k = n - off < avail ? n - off : avail;
                memcpy(space, bytes + off, k);
                smolvm_agent_reader_commit(r, k);
                off += k;
                for (;;) {
                    smolvm_agent_header h;
                    const uint8_t *payload;
                    const char *why = NULL;
                    int rc = smolvm_agent_reader_next(r, &h, &payload, &why);
                    if (rc == 0)
                        break;
                    if (rc < 0) {
                        if (!err_want)
                            fail_msg("stream '%s': error '%s'", str_member(s, "name"), why);
                        assert_string_equal(why, err_want);
                        failed = 1;
                        break;
                    }
                    assert_true(got < json_array_size(want));
                    json_t *f = frame_by_name(json_string_value(json_array_get(want, got)));
                    uint8_t *hdr, *wp, enc[SMOLVM_AGENT_HEADER_SIZE];
                    unhex(str_member(f, "header_hex"), &hdr);
                    size_t wn = unhex(str_member(f, "payload_hex"), &wp);
                    smolvm_agent_header_encode(enc, &h);
                    assert_memory_equal(enc, hdr, SMOLVM_AGENT_HEADER_SIZE);
                    assert_int_equal(h.length, wn);
                    if (wn)
                        assert_memory_equal(payload, wp, wn);
                    free(hdr);
                    free(wp);
                    got++;
                }
            }
            free(bytes);
        }
        assert_int_equal(got, json_array_size(want));
        assert_int_equal(failed, err_want != NULL);
        free(r);
    }
}

/* A reader with a maximal frame in progress always has room to finish it, wherever
 * the previous frames left its start. */
static void test_reader_room(void **state)
{
    smolvm_agent_reader *r = malloc(sizeof(*r));
    uint8_t hdr[SMOLVM_AGENT_HEADER_SIZE];
    smolvm_agent_header h = {.length = 100, .stream = 1, .type = SMOLVM_AGENT_DATA, .fd = 1};
    smolvm_agent_header got;
    const uint8_t *payload;
    const char *why;
    size_t avail;

    assert_non_null(r);
    smolvm_agent_reader_init(r);
    /* one small frame plus the first 12 bytes of a maximal one */
    uint8_t *p = smolvm_agent_reader_space(r, &avail);
    smolvm_agent_header_encode(p, &h);
    memset(p + 12, 'a', 100);
    h.length = SMOLVM_AGENT_FRAME_MAX;
    smolvm_agent_header_encode(p + 112, &h);
    smolvm_agent_reader_commit(r, 124);
    assert_int_equal(smolvm_agent_reader_next(r, &got, &payload, &why), 1);
    assert_int_equal(got.length, 100);
    assert_int_equal(smolvm_agent_reader_next(r, &got, &payload, &why), 0);
    size_t total = 0;
    while (total < SMOLVM_AGENT_FRAME_MAX) {
        p = smolvm_agent_reader_space(r, &avail);
        assert_true(avail > 0);
        size_t k = SMOLVM_AGENT_FRAME_MAX - total < avail ? SMOLVM_AGENT_FRAME_MAX - total : avail;
        memset(p, 'b', k);
        smolvm_agent_reader_commit(r, k);
        total += k;
    }
    assert_int_equal(smolvm_agent_reader_next(r, &got, &payload, &why), 1);
    assert_int_equal(got.length, SMOLVM_AGENT_FRAME_MAX);
    assert_int_equal(payload[0], 'b');
    assert_int_equal(payload[SMOLVM_AGENT_FRAME_MAX - 1], 'b');
    assert_int_equal(smolvm_agent_reader_next(r, &got, &payload, &why), 0);
    (void)hdr;
    free(r);
}

int main(void)
{
    const char *src = getenv("SMOLVM_SOURCE_DIR");
    char path[4096];
    json_error_t e;

    snprintf(path, sizeof(path), "%s/tests/fixtures/agent-vectors.json", src ? src : ".");
    vectors = json_load_file(path, 0, &e);
    if (!vectors) {
        fprintf(stderr, "cannot load '%s': %s (set SMOLVM_SOURCE_DIR)\n", path, e.text);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_frames),
        cmocka_unit_test(test_invalid_headers),
        cmocka_unit_test(test_streams),
        cmocka_unit_test(test_reader_room),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    json_decref(vectors);
    return rc;
}
