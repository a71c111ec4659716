/* SPDX-License-Identifier: MIT */
/* QMP client against a fake QEMU on a socketpair, served from a thread. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "error.h"
#include "util.h"
#include "vmm/qmp.h"

#define GREETING                                                                                   \
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, "             \
    "\"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n"

static void srv_send(int fd, const char *s)
{
    size_t len = strlen(s);

    while (len > 0) {
        ssize_t w = send(fd, s, len, MSG_NOSIGNAL);

        if (w <= 0)
            return;
        s += w;
        len -= (size_t)w;
    }
}

/* Read one request line and return its id (-1 on EOF) and command name. */
static long srv_request(int fd, char *cmd, size_t cmdlen)
{
    char line[4096];
    size_t n = 0;
    json_t *req;
    long id;

    while (n < sizeof(line) - 1) {
        ssize_t r = read(fd, line + n, 1);

        if (r <= 0)
            return -1;
        if (line[n] == '\n')
            break;
        n++;
    }
    line[n] = '\0';
    req = json_loads(line, 0, NULL);
    if (!req)
        return -1;
    id = (long)json_integer_value(json_object_get(req, "id"));
    (void)snprintf(cmd, cmdlen, "%s", json_string_value(json_object_get(req, "execute")));
    json_decref(req);
    return id;
}

static void srv_reply(int fd, long id, const char *body)
{
    char out[4096];

    (void)snprintf(out, sizeof(out), "{%s, \"id\": %ld}\r\n", body, id);
    srv_send(fd, out);
}

/* Greeting plus the capabilities negotiation every session starts with. */
static void srv_hello(int fd)
{
    char cmd[64];
    long id;

    srv_send(fd, GREETING);
    id = srv_request(fd, cmd, sizeof(cmd));
    if (id >= 0 && strcmp(cmd, "qmp_capabilities") == 0)
        srv_reply(fd, id, "\"return\": {}");
}

#define EVENT(name)                                                                                \
    "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"" name "\"}\r\n"

static void *srv_basic(void *arg)
{
    int fd = *(int *)arg;
    char cmd[64];
    long id;

    srv_hello(fd);
    /* query-status: a stale reply, an event, the real reply, then another event. */
    id = srv_request(fd, cmd, sizeof(cmd));
    srv_reply(fd, id + 1000, "\"return\": {\"stale\": true}");
    srv_send(fd, EVENT("STOP"));
    srv_reply(fd, id, "\"return\": {\"status\": \"running\", \"running\": true}");
    srv_send(fd, EVENT("RESUME"));
    /* bogus: an error reply. */
    id = srv_request(fd, cmd, sizeof(cmd));
    srv_reply(fd, id,
              "\"error\": {\"class\": \"CommandNotFound\", "
              "\"desc\": \"The command bogus has not been found\"}");
    /* quit: reply, then close. */
    id = srv_request(fd, cmd, sizeof(cmd));
    srv_send(fd, EVENT("SHUTDOWN"));
    srv_reply(fd, id, "\"return\": {}");
    (void)shutdown(fd, SHUT_RDWR);
    return NULL;
}

static void *srv_oversized(void *arg)
{
    int fd = *(int *)arg;
    char cmd[64];
    char *big;
    long id;

    srv_hello(fd);
    id = srv_request(fd, cmd, sizeof(cmd));
    (void)id;
    big = malloc(2 * SMOLVM_QMP_MESSAGE_MAX);
    memset(big, ' ', 2 * SMOLVM_QMP_MESSAGE_MAX - 1);
    memcpy(big, "{\"return\": \"", 12);
    big[2 * SMOLVM_QMP_MESSAGE_MAX - 1] = '\0';
    srv_send(fd, big); /* fails with EPIPE once the client gives up: fine */
    free(big);
    return NULL;
}

static void *srv_silent(void *arg)
{
    int fd = *(int *)arg;
    char cmd[64];

    srv_hello(fd);
    (void)srv_request(fd, cmd, sizeof(cmd));
    (void)srv_request(fd, cmd, sizeof(cmd)); /* block until the client closes */
    return NULL;
}

static void *srv_bad_greeting(void *arg)
{
    srv_send(*(int *)arg, "{\"hello\": 1}\r\n");
    return NULL;
}

typedef struct fixture {
    int sv[2];
    pthread_t thread;
} fixture;

static smolvm_qmp *start(fixture *f, void *(*fn)(void *), int expect, smolvm_error **err)
{
    smolvm_qmp *q = NULL;
    int r;

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, f->sv), 0);
    assert_int_equal(pthread_create(&f->thread, NULL, fn, &f->sv[1]), 0);
    r = smolvm_qmp_open_fd(&q, f->sv[0], smolvm_now_ms() + 5000, err);
    assert_int_equal(r, expect);
    return q;
}

static void finish(fixture *f, smolvm_qmp *q)
{
    smolvm_qmp_free(q);
    if (!q)
        (void)shutdown(f->sv[1], SHUT_RDWR);
    else
        (void)shutdown(f->sv[1], SHUT_RDWR);
    assert_int_equal(pthread_join(f->thread, NULL), 0);
    (void)close(f->sv[1]);
}

static void test_execute_events_errors(void **state)
{
    fixture f;
    smolvm_error *err = NULL;
    smolvm_qmp *q;
    json_t *ret = NULL, *ev = NULL;

    (void)state;
    q = start(&f, srv_basic, 0, &err);
    assert_string_equal(smolvm_qmp_version(q), "7.2.22");

    assert_int_equal(
        smolvm_qmp_execute(q, "query-status", NULL, &ret, smolvm_now_ms() + 5000, &err), 0);
    assert_string_equal(json_string_value(json_object_get(ret, "status")), "running");
    json_decref(ret);

    /* STOP arrived before the reply and was queued. */
    assert_int_equal(smolvm_qmp_wait_event(q, "STOP", &ev, smolvm_now_ms() + 5000, &err), 0);
    assert_string_equal(json_string_value(json_object_get(ev, "event")), "STOP");
    json_decref(ev);

    assert_int_equal(smolvm_qmp_execute(q, "bogus", NULL, NULL, smolvm_now_ms() + 5000, &err),
                     SMOLVM_EVMM);
    assert_non_null(strstr(smolvm_error_message(err), "The command bogus has not been found"));
    assert_non_null(strstr(smolvm_error_message(err), "'bogus'"));
    err = smolvm_error_free(err);

    /* RESUME came after the query-status reply, while waiting for the error reply. */
    assert_int_equal(smolvm_qmp_wait_event(q, "RESUME", NULL, smolvm_now_ms() + 5000, &err), 0);

    assert_int_equal(smolvm_qmp_execute(q, "quit", NULL, NULL, smolvm_now_ms() + 5000, &err), 0);
    assert_int_equal(smolvm_qmp_wait_event(q, "SHUTDOWN", NULL, smolvm_now_ms() + 5000, &err), 0);
    assert_int_equal(smolvm_qmp_wait_closed(q, smolvm_now_ms() + 5000, &err), 0);
    /* After EOF, commands fail cleanly. */
    assert_int_equal(
        smolvm_qmp_execute(q, "query-status", NULL, NULL, smolvm_now_ms() + 1000, &err),
        SMOLVM_EVMM);
    err = smolvm_error_free(err);
    finish(&f, q);
}

static void test_oversized_reply(void **state)
{
    fixture f;
    smolvm_error *err = NULL;
    smolvm_qmp *q;

    (void)state;
    q = start(&f, srv_oversized, 0, &err);
    assert_int_equal(smolvm_qmp_execute(q, "query-big", NULL, NULL, smolvm_now_ms() + 5000, &err),
                     SMOLVM_EVMM);
    assert_non_null(strstr(smolvm_error_message(err), "larger than"));
    err = smolvm_error_free(err);
    finish(&f, q);
}

static void test_timeouts(void **state)
{
    fixture f;
    smolvm_error *err = NULL;
    smolvm_qmp *q;
    int64_t t0;

    (void)state;
    q = start(&f, srv_silent, 0, &err);
    t0 = smolvm_now_ms();
    assert_int_equal(smolvm_qmp_execute(q, "cont", NULL, NULL, t0 + 150, &err), SMOLVM_ETIMEDOUT);
    assert_true(smolvm_now_ms() - t0 >= 140);
    err = smolvm_error_free(err);
    t0 = smolvm_now_ms();
    assert_int_equal(smolvm_qmp_wait_event(q, "RESET", NULL, t0 + 100, &err), SMOLVM_ETIMEDOUT);
    assert_non_null(strstr(smolvm_error_message(err), "'RESET'"));
    err = smolvm_error_free(err);
    finish(&f, q);
}

static void test_bad_greeting(void **state)
{
    fixture f;
    smolvm_error *err = NULL;
    smolvm_qmp *q;

    (void)state;
    q = start(&f, srv_bad_greeting, SMOLVM_EVMM, &err);
    assert_null(q);
    assert_non_null(strstr(smolvm_error_message(err), "greeting"));
    err = smolvm_error_free(err);
    assert_int_equal(pthread_join(f.thread, NULL), 0);
    (void)close(f.sv[1]);
}

static void test_connect_nobody(void **state)
{
    smolvm_error *err = NULL;
    smolvm_qmp *q = NULL;

    (void)state;
    assert_int_equal(smolvm_qmp_connect(&q, "/nonexistent/qmp.sock", smolvm_now_ms() + 1000, &err),
                     SMOLVM_ESTATE);
    assert_null(q);
    assert_non_null(strstr(smolvm_error_message(err), "'/nonexistent/qmp.sock'"));
    err = smolvm_error_free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_execute_events_errors),
        cmocka_unit_test(test_oversized_reply),
        cmocka_unit_test(test_timeouts),
        cmocka_unit_test(test_bad_greeting),
        cmocka_unit_test(test_connect_nobody),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
