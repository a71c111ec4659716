/* SPDX-License-Identifier: MIT */
/*
 * The guest agent's core (src/guest/agent-*.c), built for the host and run in a child
 * process over a socketpair, driven by a small client built on the codec and jansson.
 * Commands really run (as this user, in temp dirs under /tmp, removed afterwards);
 * identity and poweroff go to recording hooks instead of this machine.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "agent-proto.h"
#include "agent.h"

#define DEADLINE_MS 30000

struct client {
    int fd;
    smolvm_agent_reader *r;
    uint32_t next_id;
};

struct frame {
    smolvm_agent_header h;
    uint8_t *p;
    json_t *j;
};

struct fx {
    char dir[64];
    char sock[100];
    pid_t agent;
    struct client c;
};

static struct fx *F; /* the current test's fixture, for helpers */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int under_valgrind(void)
{
    const char *p = getenv("LD_PRELOAD");
    return p && strstr(p, "vgpreload");
}

/* ------------------------------------------------------------------ the client */

static void send_frame(struct client *c, uint8_t type, uint32_t stream, uint8_t flags, uint8_t fd,
                       const void *p, size_t n)
{
    uint8_t hdr[SMOLVM_AGENT_HEADER_SIZE];
    smolvm_agent_header h = {
        .length = (uint32_t)n, .stream = stream, .type = type, .flags = flags, .fd = fd};
    smolvm_agent_header_encode(hdr, &h);
    struct iovec v[2] = {{hdr, sizeof(hdr)}, {(void *)p, n}};
    size_t total = sizeof(hdr) + n, done = 0;
    while (done < total) {
        struct pollfd pf = {.fd = c->fd, .events = POLLOUT};
        assert_true(poll(&pf, 1, DEADLINE_MS) == 1);
        ssize_t w;
        if (done < sizeof(hdr)) {
            struct iovec rest[2] = {{hdr + done, sizeof(hdr) - done}, {(void *)p, n}};
            w = writev(c->fd, rest, n ? 2 : 1);
        } else {
            w = write(c->fd, (const uint8_t *)p + (done - sizeof(hdr)), total - done);
        }
        if (w < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        assert_true(w > 0);
        done += (size_t)w;
    }
    (void)v;
}

static void send_raw(struct client *c, const void *p, size_t n)
{
    assert_int_equal(write(c->fd, p, n), (ssize_t)n);
}

static void send_text(struct client *c, uint8_t type, uint32_t stream, uint8_t flags,
                      const char *text)
{
    send_frame(c, type, stream, flags, 0, text, strlen(text));
}

static void send_window(struct client *c, uint32_t stream, uint32_t inc)
{
    uint8_t b[4] = {(uint8_t)(inc >> 24), (uint8_t)(inc >> 16), (uint8_t)(inc >> 8), (uint8_t)inc};
    send_frame(c, SMOLVM_AGENT_WINDOW, stream, 0, 0, b, 4);
}

/* A request built with json_pack; returns its stream id. */
static uint32_t request(struct client *c, json_t *req)
{
    char *s = json_dumps(req, JSON_COMPACT);
    uint32_t id = c->next_id += 2;
    assert_non_null(s);
    send_text(c, SMOLVM_AGENT_REQUEST, id, 0, s);
    free(s);
    json_decref(req);
    return id;
}

static void frame_free(struct frame *f)
{
    free(f->p);
    json_decref(f->j);
    memset(f, 0, sizeof(*f));
}

/* Next frame: 1, 0 at EOF; fails the test at the deadline. */
static int recv_frame(struct client *c, struct frame *f)
{
    int64_t deadline = now_ms() + DEADLINE_MS;
    memset(f, 0, sizeof(*f));
    for (;;) {
        const uint8_t *payload;
        const char *why;
        int rc = smolvm_agent_reader_next(c->r, &f->h, &payload, &why);
        if (rc < 0)
            fail_msg("agent sent a bad frame: %s", why);
        if (rc == 1) {
            f->p = malloc(f->h.length + 1);
            memcpy(f->p, payload, f->h.length);
            f->p[f->h.length] = 0;
            if (f->h.type == SMOLVM_AGENT_HELLO || f->h.type == SMOLVM_AGENT_REPLY ||
                f->h.type == SMOLVM_AGENT_EXIT || f->h.type == SMOLVM_AGENT_ERROR ||
                f->h.type == SMOLVM_AGENT_GOAWAY) {
                f->j = json_loadb((const char *)f->p, f->h.length, 0, NULL);
                if (!json_is_object(f->j))
                    fail_msg("%s payload is not a JSON object: %s",
                             smolvm_agent_type_name(f->h.type), f->p);
            }
            return 1;
        }
        int64_t left = deadline - now_ms();
        if (left <= 0)
            fail_msg("no frame from the agent within %d ms", DEADLINE_MS);
        struct pollfd pf = {.fd = c->fd, .events = POLLIN};
        if (poll(&pf, 1, (int)left) <= 0)
            continue;
        size_t avail;
        uint8_t *space = smolvm_agent_reader_space(c->r, &avail);
        ssize_t n = read(c->fd, space, avail);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n <= 0)
            return 0;
        smolvm_agent_reader_commit(c->r, (size_t)n);
    }
}

static void client_hello(struct client *c)
{
    struct frame f;
    assert_int_equal(recv_frame(c, &f), 1);
    assert_int_equal(f.h.type, SMOLVM_AGENT_HELLO);
    assert_int_equal(f.h.stream, 0);
    assert_int_equal(json_integer_value(json_object_get(f.j, "version")), 1);
    assert_string_equal(json_string_value(json_object_get(f.j, "agent")), AGENT_VERSION_STRING);
    assert_true(json_is_integer(json_object_get(f.j, "uptime_ms")));
    frame_free(&f);
    send_text(c, SMOLVM_AGENT_HELLO, 0, 0, "{\"version\": 1, \"client\": \"test_agent\"}");
}

static void client_open(struct client *c, int fd)
{
    c->fd = fd;
    c->r = malloc(sizeof(*c->r));
    c->next_id = 1;
    smolvm_agent_reader_init(c->r);
}

static void client_close(struct client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->r);
    c->r = NULL;
}

static int connect_sock(void)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", F->sock);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

/* A second connection to the same agent, hello exchanged. */
static void client_connect(struct client *c)
{
    client_open(c, connect_sock());
    client_hello(c);
}

/* The one frame answering a request that ends at once (REPLY FIN or ERROR). */
static json_t *one_reply(struct client *c, uint32_t id, int want_type)
{
    struct frame f;
    for (;;) {
        assert_int_equal(recv_frame(c, &f), 1);
        if (f.h.stream == id)
            break;
        frame_free(&f);
    }
    if (f.h.type != want_type)
        fail_msg("stream %u: got %s %s, want %s", id, smolvm_agent_type_name(f.h.type), (char *)f.p,
                 smolvm_agent_type_name(want_type));
    assert_true(f.h.flags & SMOLVM_AGENT_FIN);
    json_t *j = f.j;
    f.j = NULL;
    frame_free(&f);
    return j;
}

static void expect_error(struct client *c, uint32_t id, const char *code)
{
    json_t *e = one_reply(c, id, SMOLVM_AGENT_ERROR);
    const char *got = json_string_value(json_object_get(e, "code"));
    if (!got || strcmp(got, code) != 0)
        fail_msg("stream %u: error %s, want %s", id, json_dumps(e, 0), code);
    assert_true(json_is_string(json_object_get(e, "message")));
    json_decref(e);
}

/* ------------------------------------------------------------------ exec results */

struct result {
    uint32_t id;
    json_t *reply, *exit, *error;
    char *out[3];
    size_t len[3];
    int eof[3];
    int grant; /* give the window back as DATA arrives */
};

static void result_free(struct result *r)
{
    json_decref(r->reply);
    json_decref(r->exit);
    json_decref(r->error);
    free(r->out[1]);
    free(r->out[2]);
    memset(r, 0, sizeof(*r));
}

/* Take frames until every stream in rs has ended (EXIT or ERROR). */
static void collect(struct client *c, struct result *rs, size_t n)
{
    size_t open = n;
    while (open > 0) {
        struct frame f;
        struct result *r = NULL;
        if (recv_frame(c, &f) == 0)
            fail_msg("the agent closed the connection");
        for (size_t i = 0; i < n; i++)
            if (rs[i].id == f.h.stream)
                r = &rs[i];
        if (!r) {
            frame_free(&f);
            continue;
        }
        switch (f.h.type) {
        case SMOLVM_AGENT_REPLY:
            assert_null(r->reply);
            r->reply = json_incref(f.j);
            break;
        case SMOLVM_AGENT_DATA:
            assert_true(f.h.fd == 1 || f.h.fd == 2);
            assert_false(r->eof[f.h.fd]);
            r->out[f.h.fd] = realloc(r->out[f.h.fd], r->len[f.h.fd] + f.h.length + 1);
            memcpy(r->out[f.h.fd] + r->len[f.h.fd], f.p, f.h.length);
            r->len[f.h.fd] += f.h.length;
            r->out[f.h.fd][r->len[f.h.fd]] = 0;
            if (r->grant && f.h.length)
                send_window(c, r->id, f.h.length);
            break;
        case SMOLVM_AGENT_EOF: r->eof[f.h.fd] = 1; break;
        case SMOLVM_AGENT_EXIT:
            r->exit = json_incref(f.j);
            open--;
            break;
        case SMOLVM_AGENT_ERROR:
            r->error = json_incref(f.j);
            open--;
            break;
        case SMOLVM_AGENT_WINDOW: break;
        default:
            fail_msg("unexpected %s on stream %u", smolvm_agent_type_name(f.h.type), f.h.stream);
        }
        frame_free(&f);
    }
}

static void run(struct client *c, json_t *req, struct result *r)
{
    memset(r, 0, sizeof(*r));
    r->grant = 1;
    r->id = request(c, req);
    collect(c, r, 1);
}

static long long exit_code(const struct result *r)
{
    if (!r->exit)
        fail_msg("no EXIT: error %s", r->error ? json_dumps(r->error, 0) : "none");
    return json_integer_value(json_object_get(r->exit, "exit_code"));
}

static const char *out_of(const struct result *r, int fd)
{
    return r->out[fd] ? r->out[fd] : "";
}

/* ------------------------------------------------------------------ the agent */

static int record_identity(const struct agent_identity *id, void *payload, const char **code,
                           char *err, size_t errlen)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/identity.json", (const char *)payload);
    json_t *j = json_pack("{s:i, s:b, s:I, s:s?, s:b, s:s?, s:i, s:s?, s:s?, s:s?}", "entropy_len",
                          (int)id->entropy_len, "has_time", id->has_time, "time_ms",
                          (json_int_t)id->time_ms, "hostname", id->hostname, "has_net", id->has_net,
                          "ip", id->ip, "prefix", id->prefix, "gateway", id->gateway, "mac",
                          id->mac, "dns", id->dns);
    int rc = json_dump_file(j, path, 0);
    json_decref(j);
    if (rc < 0) {
        *code = "EIO";
        snprintf(err, errlen, "cannot record");
        return -1;
    }
    return 0;
}

static void record_poweroff(void *payload)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/poweroff", (const char *)payload);
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0)
        close(fd);
}

static int setup(void **state)
{
    static struct fx fx;
    int sv[2];
    struct sockaddr_un sa = {.sun_family = AF_UNIX};

    memset(&fx, 0, sizeof(fx));
    snprintf(fx.dir, sizeof(fx.dir), "/tmp/smolvm-agent-test-XXXXXX");
    assert_non_null(mkdtemp(fx.dir));
    snprintf(fx.sock, sizeof(fx.sock), "%s/agent.sock", fx.dir);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", fx.sock);
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(lfd, 16), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    setenv("SMOLVM_TEST_BASE", "from-the-agent", 1);
    fflush(NULL);
    fx.agent = fork();
    assert_true(fx.agent >= 0);
    if (fx.agent == 0) {
        struct agent_options o = {.listen_fd = lfd,
                                  .exit_when_idle = 1,
                                  .default_cwd = fx.dir,
                                  .identity = record_identity,
                                  .poweroff = record_poweroff,
                                  .payload = fx.dir};
        close(sv[0]);
        signal(SIGPIPE, SIG_IGN);
        int rc = agent_run(&o, sv[1], AGENT_CHANNEL_SOCKET);
        close(lfd);
        _exit(rc == 0 ? 0 : 1);
    }
    close(sv[1]);
    close(lfd);
    client_open(&fx.c, sv[0]);
    F = &fx;
    client_hello(&fx.c);
    *state = &fx;
    return 0;
}

static void on_alarm(int sig)
{
    (void)sig;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    int st = 0;
    client_close(&fx->c);
    /* The agent ends once its last connection is gone (SIGALRM: the deadline). */
    struct sigaction sa = {.sa_handler = on_alarm}, old;
    sigaction(SIGALRM, &sa, &old);
    alarm(DEADLINE_MS / 1000);
    pid_t w = waitpid(fx->agent, &st, 0);
    alarm(0);
    sigaction(SIGALRM, &old, NULL);
    if (w != fx->agent) {
        fprintf(stderr, "agent did not exit after its connection closed\n");
        kill(fx->agent, SIGKILL);
        assert_int_equal(waitpid(fx->agent, &st, 0), fx->agent);
    }
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fx->dir);
    assert_int_equal(system(cmd), 0);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    return 0;
}

/* ------------------------------------------------------------------ tests */

static void test_hello_ping(void **state)
{
    struct client *c = &F->c;
    json_t *r = one_reply(c, request(c, json_pack("{s:s}", "op", "ping")), SMOLVM_AGENT_REPLY);
    assert_true(json_integer_value(json_object_get(r, "uptime_ms")) > 0);
    json_decref(r);
    expect_error(c, request(c, json_pack("{s:s}", "op", "no-such-op")), "EINVAL");
    expect_error(c, request(c, json_pack("{s:i}", "op", 5)), "EINVAL");
    expect_error(
        c,
        request(c, json_pack("{s:s, s:s, s:s}", "op", "exec", "cmd", "true", "timeout_ms", "soon")),
        "EINVAL");
    expect_error(
        c, request(c, json_pack("{s:s, s:s, s:[s]}", "op", "exec", "cmd", "true", "argv", "true")),
        "EINVAL");
    expect_error(
        c,
        request(c, json_pack("{s:s, s:s, s:[s]}", "op", "exec", "cmd", "true", "env", "no-equals")),
        "EINVAL");
    expect_error(c,
                 request(c, json_pack("{s:s, s:s, s:I}", "op", "exec", "cmd", "true", "window",
                                      (json_int_t)SMOLVM_AGENT_WINDOW_MAX + 1)),
                 "EINVAL");
}

static void test_exec_output_and_status(void **state)
{
    struct client *c = &F->c;
    struct result r;

    run(c, json_pack("{s:s, s:s}", "op", "exec", "cmd", "echo out; echo err >&2; exit 3"), &r);
    assert_true(json_integer_value(json_object_get(r.reply, "pid")) > 0);
    assert_string_equal(out_of(&r, 1), "out\n");
    assert_string_equal(out_of(&r, 2), "err\n");
    assert_true(r.eof[1] && r.eof[2]);
    assert_int_equal(exit_code(&r), 3);
    assert_true(json_is_null(json_object_get(r.exit, "signal")));
    assert_true(json_is_false(json_object_get(r.exit, "timed_out")));
    assert_true(json_is_integer(json_object_get(r.exit, "duration_ms")));
    result_free(&r);

    run(c, json_pack("{s:s, s:s}", "op", "exec", "cmd", "kill -TERM $$"), &r);
    assert_int_equal(exit_code(&r), -1);
    assert_string_equal(json_string_value(json_object_get(r.exit, "signal")), "TERM");
    result_free(&r);

    /* A binary-safe stream: every byte value survives. */
    run(c, json_pack("{s:s, s:s}", "op", "exec", "cmd", "printf '\\000\\001\\377abc\\000'"), &r);
    assert_int_equal(r.len[1], 7);
    assert_memory_equal(r.out[1], "\0\1\377abc\0", 7);
    result_free(&r);
}

static void test_exec_env_cwd(void **state)
{
    struct client *c = &F->c;
    struct result r;
    char want[256];

    run(c,
        json_pack("{s:s, s:s, s:[ss], s:s}", "op", "exec", "cmd",
                  "echo \"$FOO\"; pwd; echo $HOME; echo $SMOLVM_TEST_BASE", "env", "FOO=bar  baz",
                  "HOME=/nowhere", "cwd", "/tmp"),
        &r);
    assert_string_equal(out_of(&r, 1), "bar  baz\n/tmp\n/nowhere\nfrom-the-agent\n");
    result_free(&r);

    /* Without cwd: the agent's default (here the test's directory). */
    run(c, json_pack("{s:s, s:s}", "op", "exec", "cmd", "pwd"), &r);
    snprintf(want, sizeof(want), "%s\n", F->dir);
    assert_string_equal(out_of(&r, 1), want);
    result_free(&r);

    /* A missing cwd: ENOENT, and the command never ran. */
    char marker[128], cmd[256], cwd[128];
    snprintf(marker, sizeof(marker), "%s/marker", F->dir);
    snprintf(cmd, sizeof(cmd), "touch %s", marker);
    snprintf(cwd, sizeof(cwd), "%s/missing", F->dir);
    expect_error(c, request(c, json_pack("{s:s, s:s, s:s}", "op", "exec", "cmd", cmd, "cwd", cwd)),
                 "ENOENT");
    expect_error(c,
                 request(c, json_pack("{s:s, s:[ss], s:s}", "op", "exec", "argv", "touch", marker,
                                      "cwd", cwd)),
                 "ENOENT");
    /* Nothing can have run: a later command in the same place sees no marker. */
    run(c, json_pack("{s:s, s:s}", "op", "exec", "cmd", "true"), &r);
    result_free(&r);
    assert_int_equal(access(marker, F_OK), -1);
    expect_error(
        c, request(c, json_pack("{s:s, s:s, s:s}", "op", "exec", "cmd", "true", "cwd", "relative")),
        "EINVAL");
}

static void test_exec_argv(void **state)
{
    struct client *c = &F->c;
    struct result r;

    run(c, json_pack("{s:s, s:[ssss]}", "op", "exec", "argv", "printf", "%s|", "a b", "c"), &r);
    assert_string_equal(out_of(&r, 1), "a b|c|");
    assert_int_equal(exit_code(&r), 0);
    result_free(&r);

    expect_error(
        c, request(c, json_pack("{s:s, s:[s]}", "op", "exec", "argv", "no-such-program-smolvm")),
        "ENOENT");
    run(c, json_pack("{s:s, s:s}", "op", "exec", "cmd", "no-such-program-smolvm"), &r);
    assert_int_equal(exit_code(&r), 127);
    assert_non_null(strstr(out_of(&r, 2), "not found"));
    result_free(&r);
}

static void test_exec_stdin(void **state)
{
    struct client *c = &F->c;
    struct result r = {.grant = 1};
    struct frame f;

    r.id = request(c, json_pack("{s:s, s:s, s:b}", "op", "exec", "cmd", "cat", "stdin", 1));
    assert_int_equal(recv_frame(c, &f), 1);
    assert_int_equal(f.h.type, SMOLVM_AGENT_REPLY);
    assert_int_equal(json_integer_value(json_object_get(f.j, "window")),
                     SMOLVM_AGENT_WINDOW_DEFAULT);
    frame_free(&f);
    send_frame(c, SMOLVM_AGENT_DATA, r.id, 0, 0, "hello ", 6);
    send_frame(c, SMOLVM_AGENT_DATA, r.id, 0, 0, "world\n", 6);
    send_frame(c, SMOLVM_AGENT_EOF, r.id, 0, 0, NULL, 0);
    r.reply = json_object();
    collect(c, &r, 1);
    assert_string_equal(out_of(&r, 1), "hello world\n");
    assert_int_equal(exit_code(&r), 0);
    result_free(&r);

    /* 4 MiB through `wc -c`, paced by the windows the agent grants. */
    const size_t total = 4u << 20;
    uint8_t *chunk = calloc(1, SMOLVM_AGENT_FRAME_MAX);
    uint32_t id =
        request(c, json_pack("{s:s, s:s, s:b}", "op", "exec", "cmd", "wc -c", "stdin", 1));
    uint64_t window = 0;
    size_t sent = 0;
    char *out = NULL;
    json_t *exit = NULL;
    while (!exit) {
        while (sent < total && window > 0) {
            size_t n =
                total - sent < SMOLVM_AGENT_FRAME_MAX ? total - sent : SMOLVM_AGENT_FRAME_MAX;
            if (n > window)
                n = window;
            send_frame(c, SMOLVM_AGENT_DATA, id, 0, 0, chunk, n);
            sent += n;
            window -= n;
            if (sent == total)
                send_frame(c, SMOLVM_AGENT_EOF, id, 0, 0, NULL, 0);
        }
        assert_int_equal(recv_frame(c, &f), 1);
        assert_int_equal(f.h.stream, id);
        if (f.h.type == SMOLVM_AGENT_REPLY)
            window = (uint64_t)json_integer_value(json_object_get(f.j, "window"));
        else if (f.h.type == SMOLVM_AGENT_WINDOW) {
            window +=
                (uint32_t)f.p[0] << 24 | (uint32_t)f.p[1] << 16 | (uint32_t)f.p[2] << 8 | f.p[3];
            assert_true(window <= SMOLVM_AGENT_WINDOW_DEFAULT);
        } else if (f.h.type == SMOLVM_AGENT_DATA && f.h.fd == 1)
            out = strdup((char *)f.p);
        else if (f.h.type == SMOLVM_AGENT_EXIT)
            exit = json_incref(f.j);
        frame_free(&f);
    }
    assert_non_null(out);
    assert_int_equal(strtoull(out, NULL, 10), total);
    assert_int_equal(json_integer_value(json_object_get(exit, "exit_code")), 0);
    free(out);
    free(chunk);
    json_decref(exit);
}

static long proc_status_kb(pid_t pid, const char *key)
{
    char path[64], line[256];
    long v = -1;
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, key, strlen(key)) == 0)
            v = strtol(line + strlen(key) + 1, NULL, 10);
    fclose(f);
    return v;
}

static long long proc_wchar(pid_t pid)
{
    char path[64], line[256];
    long long v = -1;
    snprintf(path, sizeof(path), "/proc/%d/io", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, "wchar:", 6) == 0)
            v = strtoll(line + 6, NULL, 10);
    fclose(f);
    return v;
}

/* The kernel tells nobody when a writer blocks on a full pipe: watch its write count
 * until it stops moving (bounded). */
static long long wait_blocked(pid_t pid)
{
    long long last = -2;
    int64_t deadline = now_ms() + DEADLINE_MS;
    for (int stable = 0; stable < 3 && now_ms() < deadline;) {
        struct timespec ts = {0, 100 * 1000000};
        nanosleep(&ts, NULL);
        long long w = proc_wchar(pid);
        stable = w == last ? stable + 1 : 0;
        last = w;
    }
    return last;
}

static void test_window_zero_blocks_producer(void **state)
{
    struct client *c = &F->c;
    struct frame f;
    uint32_t id =
        request(c, json_pack("{s:s, s:[s], s:i}", "op", "exec", "argv", "yes", "window", 0));
    assert_int_equal(recv_frame(c, &f), 1);
    assert_int_equal(f.h.type, SMOLVM_AGENT_REPLY);
    pid_t pid = (pid_t)json_integer_value(json_object_get(f.j, "pid"));
    frame_free(&f);
    long rss0 = proc_status_kb(F->agent, "VmRSS:");

    long long written = wait_blocked(pid);
    /* A pipe (64 KiB) and the ring (64 KiB) at most: nothing else holds its output. */
    assert_true(written > 0);
    if (written > 1024 * 1024)
        fail_msg("yes wrote %lld bytes with no window: not blocked", written);
    long rss1 = proc_status_kb(F->agent, "VmRSS:");
    if (!under_valgrind() && rss1 - rss0 > 2048)
        fail_msg("agent RSS grew from %ld to %ld kB with a blocked reader", rss0, rss1);

    /* More window: exactly that much more output arrives, and yes moves again. */
    send_window(c, id, 1 << 20);
    size_t got = 0;
    while (got < (1u << 20)) {
        assert_int_equal(recv_frame(c, &f), 1);
        assert_int_equal(f.h.type, SMOLVM_AGENT_DATA);
        got += f.h.length;
        frame_free(&f);
    }
    assert_int_equal(got, 1u << 20);
    long long written2 = wait_blocked(pid);
    assert_true(written2 >= written + (1 << 20));
    if (written2 > written + (2 << 20))
        fail_msg("yes wrote %lld more bytes for a 1 MiB window", written2 - written);
    long rss2 = proc_status_kb(F->agent, "VmRSS:");
    if (!under_valgrind() && rss2 - rss0 > 2048)
        fail_msg("agent RSS grew from %ld to %ld kB", rss0, rss2);

    send_text(c, SMOLVM_AGENT_CONTROL, id, 0, "{\"op\": \"signal\", \"signal\": \"KILL\"}");
    send_window(c, id, 1 << 24); /* let it drain what is buffered */
    for (;;) {
        assert_int_equal(recv_frame(c, &f), 1);
        int done = f.h.type == SMOLVM_AGENT_EXIT;
        if (done)
            assert_string_equal(json_string_value(json_object_get(f.j, "signal")), "KILL");
        frame_free(&f);
        if (done)
            break;
    }
}

static void test_many_at_once(void **state)
{
    struct client *c = &F->c;
    struct result rs[16];
    int64_t t0 = now_ms();
    for (int i = 0; i < 16; i++) {
        char env[32];
        memset(&rs[i], 0, sizeof(rs[i]));
        rs[i].grant = 1;
        snprintf(env, sizeof(env), "N=%d", i);
        rs[i].id = request(c, json_pack("{s:s, s:s, s:[s]}", "op", "exec", "cmd",
                                        "sleep 1; echo $N; echo e$N >&2", "env", env));
    }
    collect(c, rs, 16);
    int64_t took = now_ms() - t0;
    for (int i = 0; i < 16; i++) {
        char want[16];
        snprintf(want, sizeof(want), "%d\n", i);
        assert_string_equal(out_of(&rs[i], 1), want);
        snprintf(want, sizeof(want), "e%d\n", i);
        assert_string_equal(out_of(&rs[i], 2), want);
        assert_int_equal(exit_code(&rs[i]), 0);
        result_free(&rs[i]);
    }
    if (took > 8000)
        fail_msg("16 commands of 1 s took %lld ms: not concurrent", (long long)took);
}

static void assert_group_gone(pid_t pgid, pid_t other)
{
    errno = 0;
    assert_int_equal(kill(-pgid, 0), -1);
    assert_int_equal(errno, ESRCH);
    if (other > 0) {
        errno = 0;
        assert_int_equal(kill(other, 0), -1);
        assert_int_equal(errno, ESRCH);
    }
}

static void test_timeout_and_kill(void **state)
{
    struct client *c = &F->c;
    struct result r;

    run(c,
        json_pack("{s:s, s:s, s:i}", "op", "exec", "cmd", "sleep 100 & echo $!; sleep 100",
                  "timeout_ms", 300),
        &r);
    assert_int_equal(exit_code(&r), -1);
    assert_true(json_is_true(json_object_get(r.exit, "timed_out")));
    assert_string_equal(json_string_value(json_object_get(r.exit, "signal")), "KILL");
    assert_true(json_integer_value(json_object_get(r.exit, "duration_ms")) >= 300);
    assert_group_gone((pid_t)json_integer_value(json_object_get(r.reply, "pid")),
                      (pid_t)atoi(out_of(&r, 1)));
    result_free(&r);

    /* kill through CONTROL: the whole group, background children too */
    memset(&r, 0, sizeof(r));
    r.grant = 1;
    r.id =
        request(c, json_pack("{s:s, s:s}", "op", "exec", "cmd", "sleep 100 & echo $!; sleep 100"));
    struct frame f;
    pid_t bg = 0, pid = 0;
    while (!bg) {
        assert_int_equal(recv_frame(c, &f), 1);
        if (f.h.type == SMOLVM_AGENT_REPLY)
            pid = (pid_t)json_integer_value(json_object_get(f.j, "pid"));
        if (f.h.type == SMOLVM_AGENT_DATA)
            bg = (pid_t)atoi((char *)f.p);
        frame_free(&f);
    }
    r.reply = json_object();
    send_text(c, SMOLVM_AGENT_CONTROL, r.id, 0, "{\"op\": \"signal\", \"signal\": \"KILL\"}");
    collect(c, &r, 1);
    assert_string_equal(json_string_value(json_object_get(r.exit, "signal")), "KILL");
    assert_true(json_is_false(json_object_get(r.exit, "timed_out")));
    assert_group_gone(pid, bg);
    result_free(&r);

    /* TERM reaches the process */
    memset(&r, 0, sizeof(r));
    r.grant = 1;
    r.id = request(c, json_pack("{s:s, s:s}", "op", "exec", "cmd", "echo started; exec sleep 100"));
    assert_int_equal(recv_frame(c, &f), 1); /* REPLY */
    frame_free(&f);
    assert_int_equal(recv_frame(c, &f), 1); /* "started": sh has set up, exec follows */
    assert_int_equal(f.h.type, SMOLVM_AGENT_DATA);
    frame_free(&f);
    r.reply = json_object();
    send_text(c, SMOLVM_AGENT_CONTROL, r.id, 0, "{\"op\": \"signal\", \"signal\": \"TERM\"}");
    collect(c, &r, 1);
    assert_string_equal(json_string_value(json_object_get(r.exit, "signal")), "TERM");
    result_free(&r);
}

static void test_pty(void **state)
{
    struct client *c = &F->c;
    struct result r = {.grant = 1};
    struct frame f;

    r.id = request(c, json_pack("{s:s, s:s, s:b, s:{s:i, s:i}}", "op", "exec", "cmd",
                                "tty; stty size; read x; stty size; echo \"got $x\"", "stdin", 1,
                                "pty", "rows", 24, "cols", 80));
    char out[4096] = "";
    size_t len = 0;
    while (!strstr(out, "24 80\r\n")) {
        assert_int_equal(recv_frame(c, &f), 1);
        assert_int_equal(f.h.stream, r.id);
        if (f.h.type == SMOLVM_AGENT_DATA) {
            assert_int_equal(f.h.fd, 1); /* a terminal has one output */
            assert_true(len + f.h.length < sizeof(out));
            memcpy(out + len, f.p, f.h.length);
            len += f.h.length;
            out[len] = 0;
            send_window(c, r.id, f.h.length);
        } else {
            assert_int_equal(f.h.type, SMOLVM_AGENT_REPLY);
        }
        frame_free(&f);
    }
    assert_non_null(strstr(out, "/dev/pts/"));
    send_text(c, SMOLVM_AGENT_CONTROL, r.id, 0,
              "{\"op\": \"resize\", \"rows\": 40, \"cols\": 120}");
    send_frame(c, SMOLVM_AGENT_DATA, r.id, 0, 0, "go\n", 3);
    r.reply = json_object();
    collect(c, &r, 1);
    assert_non_null(strstr(out_of(&r, 1), "40 120\r\n"));
    assert_non_null(strstr(out_of(&r, 1), "got go"));
    assert_int_equal(r.len[2], 0);
    assert_int_equal(exit_code(&r), 0);
    result_free(&r);
}

static void test_attach_and_on_reset(void **state)
{
    struct client *c = &F->c, c2;
    struct frame f;
    json_t *j;

    uint32_t id = request(c, json_pack("{s:s, s:s, s:b, s:s}", "op", "exec", "cmd",
                                       "echo first; read x; echo \"second $x\"", "stdin", 1,
                                       "on_reset", "keep"));
    assert_int_equal(recv_frame(c, &f), 1);
    pid_t pid = (pid_t)json_integer_value(json_object_get(f.j, "pid"));
    frame_free(&f);
    assert_int_equal(recv_frame(c, &f), 1);
    assert_int_equal(f.h.type, SMOLVM_AGENT_DATA);
    assert_string_equal((char *)f.p, "first\n");
    frame_free(&f);

    client_connect(&c2);
    /* stdin is held by the exec stream: a second writer is refused */
    expect_error(&c2,
                 request(&c2, json_pack("{s:s, s:i, s:b}", "op", "attach", "pid", pid, "stdin", 1)),
                 "EBUSY");
    send_frame(c, SMOLVM_AGENT_RESET, id, 0, 0, NULL, 0);
    json_decref(one_reply(c, request(c, json_pack("{s:s}", "op", "ping")), SMOLVM_AGENT_REPLY));

    /* on_reset keep: still running, listed by ps */
    j = one_reply(&c2, request(&c2, json_pack("{s:s}", "op", "ps")), SMOLVM_AGENT_REPLY);
    json_t *procs = json_object_get(j, "processes"), *p;
    size_t i;
    int found = 0;
    json_array_foreach (procs, i, p) {
        if (json_integer_value(json_object_get(p, "pid")) == pid) {
            found = 1;
            assert_true(json_is_true(json_object_get(p, "running")));
            assert_true(json_is_null(json_object_get(p, "exit_code")));
            assert_string_equal(json_string_value(json_object_get(p, "cmd")),
                                "echo first; read x; echo \"second $x\"");
        }
    }
    assert_true(found);
    json_decref(j);

    /* attach from the second connection: the kept output, then live, then EXIT */
    struct result r = {.grant = 1};
    r.id = request(&c2, json_pack("{s:s, s:i, s:b}", "op", "attach", "pid", pid, "stdin", 1));
    assert_int_equal(recv_frame(&c2, &f), 1);
    assert_int_equal(f.h.type, SMOLVM_AGENT_REPLY);
    assert_true(json_is_true(json_object_get(f.j, "running")));
    assert_int_equal(json_integer_value(json_object_get(f.j, "dropped")), 0);
    assert_true(json_integer_value(json_object_get(f.j, "window")) > 0);
    frame_free(&f);
    assert_int_equal(recv_frame(&c2, &f), 1);
    assert_int_equal(f.h.type, SMOLVM_AGENT_DATA);
    assert_string_equal((char *)f.p, "first\n");
    frame_free(&f);
    send_frame(&c2, SMOLVM_AGENT_DATA, r.id, 0, 0, "live\n", 5);
    r.reply = json_object();
    collect(&c2, &r, 1);
    assert_string_equal(out_of(&r, 1), "second live\n");
    assert_int_equal(exit_code(&r), 0);
    result_free(&r);

    /* An ended process can still be attached: replay, EOFs, EXIT. */
    run(&c2, json_pack("{s:s, s:i}", "op", "attach", "pid", pid), &r);
    assert_string_equal(out_of(&r, 1), "first\nsecond live\n");
    assert_true(json_is_false(json_object_get(r.reply, "running")));
    assert_int_equal(exit_code(&r), 0);
    result_free(&r);
    expect_error(&c2, request(&c2, json_pack("{s:s, s:i}", "op", "attach", "pid", 999999999)),
                 "ENOENT");

    /* on_reset kill (the default): RESET kills the group */
    id = request(c, json_pack("{s:s, s:s}", "op", "exec", "cmd", "sleep 100 & echo $!; sleep 100"));
    pid_t bg = 0;
    while (!bg) {
        assert_int_equal(recv_frame(c, &f), 1);
        if (f.h.type == SMOLVM_AGENT_REPLY)
            pid = (pid_t)json_integer_value(json_object_get(f.j, "pid"));
        if (f.h.type == SMOLVM_AGENT_DATA)
            bg = (pid_t)atoi((char *)f.p);
        frame_free(&f);
    }
    send_frame(c, SMOLVM_AGENT_RESET, id, 0, 0, NULL, 0);
    /* Following it from here, EXIT comes once its group is gone (it was killed). */
    run(c, json_pack("{s:s, s:i}", "op", "attach", "pid", pid), &r);
    assert_string_equal(json_string_value(json_object_get(r.exit, "signal")), "KILL");
    result_free(&r);
    assert_group_gone(pid, bg);

    /* A connection going away with a keep process leaves it running; the other
     * connection can still kill it. */
    id = request(
        &c2, json_pack("{s:s, s:s, s:s}", "op", "exec", "cmd", "sleep 100", "on_reset", "keep"));
    assert_int_equal(recv_frame(&c2, &f), 1);
    pid = (pid_t)json_integer_value(json_object_get(f.j, "pid"));
    frame_free(&f);
    client_close(&c2);
    json_decref(one_reply(c, request(c, json_pack("{s:s}", "op", "ping")), SMOLVM_AGENT_REPLY));
    assert_int_equal(kill(pid, 0), 0);
    memset(&r, 0, sizeof(r));
    r.grant = 1;
    r.id = request(c, json_pack("{s:s, s:i}", "op", "attach", "pid", pid));
    send_text(c, SMOLVM_AGENT_CONTROL, r.id, 0, "{\"op\": \"signal\", \"signal\": \"KILL\"}");
    collect(c, &r, 1);
    assert_string_equal(json_string_value(json_object_get(r.exit, "signal")), "KILL");
    result_free(&r);
}

static void test_ps(void **state)
{
    struct client *c = &F->c;
    struct result r;
    run(c, json_pack("{s:s, s:s}", "op", "exec", "cmd", "exit 7"), &r);
    pid_t pid = (pid_t)json_integer_value(json_object_get(r.reply, "pid"));
    result_free(&r);
    json_t *j = one_reply(c, request(c, json_pack("{s:s}", "op", "ps")), SMOLVM_AGENT_REPLY);
    json_t *p = json_array_get(json_object_get(j, "processes"), 0);
    assert_int_equal(json_array_size(json_object_get(j, "processes")), 1);
    assert_int_equal(json_integer_value(json_object_get(p, "pid")), pid);
    assert_string_equal(json_string_value(json_object_get(p, "cmd")), "exit 7");
    assert_true(json_is_false(json_object_get(p, "running")));
    assert_int_equal(json_integer_value(json_object_get(p, "exit_code")), 7);
    assert_true(json_is_null(json_object_get(p, "signal")));
    assert_true(json_integer_value(json_object_get(p, "started_ms")) > 1600000000000LL);
    json_decref(j);
}

/* write_file of data (n bytes) respecting the windows; the final REPLY. */
static json_t *write_file(struct client *c, const char *path, const uint8_t *data, size_t n,
                          int mode, int mkdirs)
{
    struct frame f;
    uint32_t id = request(c, json_pack("{s:s, s:s, s:i, s:b}", "op", "write_file", "path", path,
                                       "mode", mode, "mkdirs", mkdirs));
    assert_int_equal(recv_frame(c, &f), 1);
    if (f.h.type == SMOLVM_AGENT_ERROR) {
        json_t *e = json_incref(f.j);
        frame_free(&f);
        return e;
    }
    assert_int_equal(f.h.type, SMOLVM_AGENT_REPLY);
    assert_false(f.h.flags & SMOLVM_AGENT_FIN);
    uint64_t window = (uint64_t)json_integer_value(json_object_get(f.j, "window"));
    frame_free(&f);
    size_t sent = 0;
    int eof = 0;
    for (;;) {
        while (sent < n && window > 0) {
            size_t k = n - sent < SMOLVM_AGENT_FRAME_MAX ? n - sent : SMOLVM_AGENT_FRAME_MAX;
            k = k < window ? k : (size_t)window;
            send_frame(c, SMOLVM_AGENT_DATA, id, 0, 0, data + sent, k);
            sent += k;
            window -= k;
        }
        if (sent == n && !eof) {
            send_frame(c, SMOLVM_AGENT_EOF, id, 0, 0, NULL, 0);
            eof = 1;
        }
        assert_int_equal(recv_frame(c, &f), 1);
        assert_int_equal(f.h.stream, id);
        if (f.h.type == SMOLVM_AGENT_WINDOW) {
            window +=
                (uint32_t)f.p[0] << 24 | (uint32_t)f.p[1] << 16 | (uint32_t)f.p[2] << 8 | f.p[3];
            frame_free(&f);
            continue;
        }
        assert_true(f.h.flags & SMOLVM_AGENT_FIN);
        json_t *j = json_incref(f.j);
        frame_free(&f);
        return j;
    }
}

static uint8_t *read_file(struct client *c, const char *path, size_t *len, json_t **reply)
{
    struct frame f;
    uint8_t *data = NULL;
    *len = 0;
    uint32_t id =
        request(c, json_pack("{s:s, s:s, s:i}", "op", "read_file", "path", path, "window", 100000));
    assert_int_equal(recv_frame(c, &f), 1);
    assert_int_equal(f.h.type, SMOLVM_AGENT_REPLY);
    *reply = json_incref(f.j);
    frame_free(&f);
    for (;;) {
        assert_int_equal(recv_frame(c, &f), 1);
        assert_int_equal(f.h.stream, id);
        if (f.h.type == SMOLVM_AGENT_EOF) {
            assert_int_equal(f.h.fd, 1);
            assert_true(f.h.flags & SMOLVM_AGENT_FIN);
            frame_free(&f);
            return data;
        }
        assert_int_equal(f.h.type, SMOLVM_AGENT_DATA);
        assert_true(f.h.length <= 100000);
        data = realloc(data, *len + f.h.length);
        memcpy(data + *len, f.p, f.h.length);
        *len += f.h.length;
        send_window(c, id, f.h.length);
        frame_free(&f);
    }
}

static void test_files(void **state)
{
    struct client *c = &F->c;
    char path[512], dir[256], p2[512];
    const size_t n = 1 << 20;
    uint8_t *data = malloc(n);
    json_t *j, *e;
    size_t got;

    for (size_t i = 0; i < n; i++)
        data[i] = (uint8_t)(i * 131 + (i >> 12));
    snprintf(dir, sizeof(dir), "%s/a/b", F->dir);
    snprintf(path, sizeof(path), "%s/file", dir);
    j = write_file(c, path, data, n, 0100640, 1);
    assert_int_equal(json_integer_value(json_object_get(j, "size")), n);
    json_decref(j);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, n);
    assert_int_equal(st.st_mode & 07777, 0640);

    uint8_t *back = read_file(c, path, &got, &j);
    assert_int_equal(json_integer_value(json_object_get(j, "size")), n);
    assert_int_equal(json_integer_value(json_object_get(j, "mode")), 0640);
    json_decref(j);
    assert_int_equal(got, n);
    assert_memory_equal(back, data, n);
    free(back);

    j = one_reply(c, request(c, json_pack("{s:s, s:s}", "op", "stat", "path", path)),
                  SMOLVM_AGENT_REPLY);
    assert_string_equal(json_string_value(json_object_get(j, "type")), "file");
    assert_int_equal(json_integer_value(json_object_get(j, "size")), n);
    assert_int_equal(json_integer_value(json_object_get(j, "mode")), 0640);
    assert_true(json_integer_value(json_object_get(j, "mtime_ms")) > 1600000000000LL);
    json_decref(j);

    /* overwrite: the old file is replaced whole, no temporary left behind */
    j = write_file(c, path, (const uint8_t *)"short", 5, 0600, 0);
    assert_int_equal(json_integer_value(json_object_get(j, "size")), 5);
    json_decref(j);
    snprintf(p2, sizeof(p2), "%s/link", dir);
    assert_int_equal(symlink("file", p2), 0);
    j = one_reply(c, request(c, json_pack("{s:s, s:s}", "op", "list", "path", dir)),
                  SMOLVM_AGENT_REPLY);
    json_t *ents = json_object_get(j, "entries");
    assert_int_equal(json_array_size(ents), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(ents, 0), "name")),
                        "file");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(ents, 0), "size")), 5);
    assert_string_equal(json_string_value(json_object_get(json_array_get(ents, 1), "name")),
                        "link");
    assert_string_equal(json_string_value(json_object_get(json_array_get(ents, 1), "type")),
                        "link");
    assert_true(json_is_false(json_object_get(j, "truncated")));
    json_decref(j);

    /* a write abandoned half way (RESET) leaves the old file and no temporary */
    uint32_t id = request(c, json_pack("{s:s, s:s}", "op", "write_file", "path", path));
    struct frame f;
    assert_int_equal(recv_frame(c, &f), 1);
    frame_free(&f);
    send_frame(c, SMOLVM_AGENT_DATA, id, 0, 0, "partial", 7);
    send_frame(c, SMOLVM_AGENT_RESET, id, 0, 0, NULL, 0);
    json_decref(one_reply(c, request(c, json_pack("{s:s}", "op", "ping")), SMOLVM_AGENT_REPLY));
    j = one_reply(c, request(c, json_pack("{s:s, s:s}", "op", "list", "path", dir)),
                  SMOLVM_AGENT_REPLY);
    assert_int_equal(json_array_size(json_object_get(j, "entries")), 2);
    json_decref(j);
    back = read_file(c, path, &got, &j);
    json_decref(j);
    assert_int_equal(got, 5);
    assert_memory_equal(back, "short", 5);
    free(back);

    /* mkdir, remove */
    snprintf(p2, sizeof(p2), "%s/m/n", F->dir);
    json_decref(one_reply(c,
                          request(c, json_pack("{s:s, s:s, s:i, s:b}", "op", "mkdir", "path", p2,
                                               "mode", 0700, "parents", 1)),
                          SMOLVM_AGENT_REPLY));
    assert_int_equal(stat(p2, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0700);
    expect_error(c, request(c, json_pack("{s:s, s:s}", "op", "mkdir", "path", p2)), "EEXIST");
    snprintf(p2, sizeof(p2), "%s/a", F->dir);
    expect_error(c, request(c, json_pack("{s:s, s:s}", "op", "remove", "path", p2)), "EEXIST");
    json_decref(one_reply(
        c, request(c, json_pack("{s:s, s:s, s:b}", "op", "remove", "path", p2, "recursive", 1)),
        SMOLVM_AGENT_REPLY));
    assert_int_equal(lstat(p2, &st), -1);
    expect_error(c, request(c, json_pack("{s:s, s:s}", "op", "stat", "path", p2)), "ENOENT");
    expect_error(c, request(c, json_pack("{s:s, s:s}", "op", "remove", "path", p2)), "ENOENT");

    /* errors */
    expect_error(c, request(c, json_pack("{s:s, s:s}", "op", "read_file", "path", p2)), "ENOENT");
    expect_error(c, request(c, json_pack("{s:s, s:s}", "op", "read_file", "path", F->dir)),
                 "EINVAL");
    expect_error(c, request(c, json_pack("{s:s, s:s}", "op", "read_file", "path", "rel/ative")),
                 "EINVAL");
    expect_error(c, request(c, json_pack("{s:s, s:i}", "op", "read_file", "path", 7)), "EINVAL");
    snprintf(path, sizeof(path), "%s/big", F->dir);
    j = write_file(c, path, data, 1000, 0644, 0);
    json_decref(j);
    expect_error(
        c, request(c, json_pack("{s:s, s:s, s:i}", "op", "read_file", "path", path, "max", 999)),
        "EFBIG");
    snprintf(path, sizeof(path), "%s/missing/x", F->dir);
    e = write_file(c, path, data, 10, 0644, 0);
    assert_string_equal(json_string_value(json_object_get(e, "code")), "ENOENT");
    json_decref(e);
    e = write_file(c, F->dir, data, 10, 0644, 0);
    assert_string_equal(json_string_value(json_object_get(e, "code")), "EINVAL");
    json_decref(e);
    free(data);
}

static void test_identity(void **state)
{
    struct client *c = &F->c;
    struct result r;
    char path[128];

    run(c, json_pack("{s:s, s:s}", "op", "exec", "cmd", "true"), &r);
    result_free(&r);
    /* 32 bytes */
    json_decref(one_reply(
        c,
        request(c, json_pack("{s:s, s:s, s:I, s:s, s:{s:s, s:i, s:s, s:s, s:s}}", "op", "identity",
                             "entropy", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "time_ms",
                             (json_int_t)1700000000123LL, "hostname", "vm-1234abcd", "net", "ip",
                             "172.16.0.5", "prefix", 16, "gateway", "172.16.0.1", "mac",
                             "02:5e:00:00:00:05", "dns", "172.16.0.1")),
        SMOLVM_AGENT_REPLY));
    snprintf(path, sizeof(path), "%s/identity.json", F->dir);
    json_t *rec = json_load_file(path, 0, NULL);
    assert_non_null(rec);
    assert_int_equal(json_integer_value(json_object_get(rec, "entropy_len")), 32);
    assert_int_equal(json_integer_value(json_object_get(rec, "time_ms")), 1700000000123LL);
    assert_string_equal(json_string_value(json_object_get(rec, "hostname")), "vm-1234abcd");
    assert_string_equal(json_string_value(json_object_get(rec, "ip")), "172.16.0.5");
    assert_int_equal(json_integer_value(json_object_get(rec, "prefix")), 16);
    assert_string_equal(json_string_value(json_object_get(rec, "mac")), "02:5e:00:00:00:05");
    json_decref(rec);
    /* the template's history is gone */
    json_t *j = one_reply(c, request(c, json_pack("{s:s}", "op", "ps")), SMOLVM_AGENT_REPLY);
    assert_int_equal(json_array_size(json_object_get(j, "processes")), 0);
    json_decref(j);

    unlink(path);
    expect_error(c, request(c, json_pack("{s:s, s:s}", "op", "identity", "hostname", "bad name")),
                 "EINVAL");
    expect_error(c, request(c, json_pack("{s:s, s:s}", "op", "identity", "entropy", "AAEC")),
                 "EINVAL");
    expect_error(
        c, request(c, json_pack("{s:s, s:{s:s}}", "op", "identity", "net", "ip", "300.1.1.1")),
        "EINVAL");
    expect_error(c,
                 request(c, json_pack("{s:s, s:{s:s, s:i, s:s}}", "op", "identity", "net", "ip",
                                      "10.0.0.2", "prefix", 8, "mac", "01:00:00:00:00:01")),
                 "EINVAL");
    assert_int_equal(access(path, F_OK), -1); /* nothing was applied */

    json_decref(one_reply(c, request(c, json_pack("{s:s}", "op", "poweroff")), SMOLVM_AGENT_REPLY));
    json_decref(one_reply(c, request(c, json_pack("{s:s}", "op", "ping")), SMOLVM_AGENT_REPLY));
    snprintf(path, sizeof(path), "%s/poweroff", F->dir);
    assert_int_equal(access(path, F_OK), 0);
}

/* A protocol error on a connection: GOAWAY EPROTO, the connection closed, and the agent
 * still serves (a fresh connection gets a fresh hello; the main one is untouched). */
static void expect_goaway(struct client *c)
{
    struct frame f;
    assert_int_equal(recv_frame(c, &f), 1);
    if (f.h.type != SMOLVM_AGENT_GOAWAY)
        fail_msg("got %s, want GOAWAY", smolvm_agent_type_name(f.h.type));
    assert_string_equal(json_string_value(json_object_get(f.j, "code")), "EPROTO");
    frame_free(&f);
    assert_int_equal(recv_frame(c, &f), 0); /* closed */
}

static void test_malformed(void **state)
{
    struct client c2;
    char path[4096];
    const char *src = getenv("SMOLVM_SOURCE_DIR");
    snprintf(path, sizeof(path), "%s/tests/fixtures/agent-vectors.json", src ? src : ".");
    json_t *vec = json_load_file(path, 0, NULL), *v;
    size_t i;
    assert_non_null(vec);

    /* every invalid header of the vectors */
    json_array_foreach (json_object_get(vec, "invalid"), i, v) {
        const char *hex = json_string_value(json_object_get(v, "hex"));
        uint8_t hdr[12];
        for (int k = 0; k < 12; k++) {
            unsigned b;
            sscanf(hex + 2 * k, "%2x", &b);
            hdr[k] = (uint8_t)b;
        }
        client_connect(&c2);
        send_raw(&c2, hdr, 12);
        expect_goaway(&c2);
        client_close(&c2);
    }
    json_decref(vec);

    /* a request before HELLO */
    client_open(&c2, connect_sock());
    struct frame f;
    assert_int_equal(recv_frame(&c2, &f), 1);
    frame_free(&f);
    send_text(&c2, SMOLVM_AGENT_REQUEST, 1, 0, "{\"op\":\"ping\"}");
    expect_goaway(&c2);
    client_close(&c2);

    /* the wrong version */
    client_open(&c2, connect_sock());
    assert_int_equal(recv_frame(&c2, &f), 1);
    frame_free(&f);
    send_text(&c2, SMOLVM_AGENT_HELLO, 0, 0, "{\"version\":2}");
    expect_goaway(&c2);
    client_close(&c2);

    static const char *const cases[] = {"hello-twice",       "garbage-json",    "json-array",
                                        "id-not-increasing", "window-over-max", "data-over-window",
                                        "reply-to-agent",    "stdout-to-agent", "too-many-streams"};
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        const char *name = cases[k];
        client_connect(&c2);
        if (strcmp(name, "hello-twice") == 0) {
            send_text(&c2, SMOLVM_AGENT_HELLO, 0, 0, "{\"version\":1}");
        } else if (strcmp(name, "garbage-json") == 0) {
            send_text(&c2, SMOLVM_AGENT_REQUEST, 1, 0, "{\"op\": \"ping\"");
        } else if (strcmp(name, "json-array") == 0) {
            send_text(&c2, SMOLVM_AGENT_REQUEST, 1, 0, "[1, 2]");
        } else if (strcmp(name, "id-not-increasing") == 0) {
            send_text(&c2, SMOLVM_AGENT_REQUEST, 5, 0, "{\"op\":\"ping\"}");
            json_decref(one_reply(&c2, 5, SMOLVM_AGENT_REPLY));
            send_text(&c2, SMOLVM_AGENT_REQUEST, 5, 0, "{\"op\":\"ping\"}");
        } else if (strcmp(name, "window-over-max") == 0) {
            uint32_t id = request(
                &c2, json_pack("{s:s, s:s, s:b}", "op", "exec", "cmd", "sleep 100", "stdin", 1));
            send_window(&c2, id, SMOLVM_AGENT_WINDOW_MAX); /* 262144 already granted */
            assert_int_equal(recv_frame(&c2, &f), 1);      /* REPLY pid */
            frame_free(&f);
        } else if (strcmp(name, "data-over-window") == 0) {
            uint32_t id = request(&c2, json_pack("{s:s, s:s}", "op", "exec", "cmd", "sleep 100"));
            assert_int_equal(recv_frame(&c2, &f), 1); /* REPLY, window 0: no stdin */
            assert_int_equal(json_integer_value(json_object_get(f.j, "window")), 0);
            frame_free(&f);
            send_frame(&c2, SMOLVM_AGENT_DATA, id, 0, 0, "x", 1);
        } else if (strcmp(name, "reply-to-agent") == 0) {
            send_text(&c2, SMOLVM_AGENT_REPLY, 3, SMOLVM_AGENT_FIN, "{}");
        } else if (strcmp(name, "stdout-to-agent") == 0) {
            uint32_t id =
                request(&c2, json_pack("{s:s, s:s, s:b}", "op", "exec", "cmd", "cat", "stdin", 1));
            assert_int_equal(recv_frame(&c2, &f), 1);
            frame_free(&f);
            send_frame(&c2, SMOLVM_AGENT_DATA, id, 0, 1, "x", 1);
        } else {
            /* 256 open streams are fine (reads stalled by a window of 0), the 257th is not */
            char file[256];
            snprintf(file, sizeof(file), "%s/ten", F->dir);
            FILE *fp = fopen(file, "w");
            assert_non_null(fp);
            fputs("0123456789", fp);
            fclose(fp);
            for (int s = 0; s < 257; s++)
                request(&c2,
                        json_pack("{s:s, s:s, s:i}", "op", "read_file", "path", file, "window", 0));
        }
        for (;;) { /* whatever came before, then GOAWAY and the end */
            assert_int_equal(recv_frame(&c2, &f), 1);
            int last = f.h.type == SMOLVM_AGENT_GOAWAY;
            if (last)
                assert_string_equal(json_string_value(json_object_get(f.j, "code")), "EPROTO");
            frame_free(&f);
            if (last)
                break;
        }
        assert_int_equal(recv_frame(&c2, &f), 0);
        client_close(&c2);
    }

    /* The agent goes on: a fresh connection works, and so does the first one. */
    client_connect(&c2);
    json_decref(one_reply(&c2, request(&c2, json_pack("{s:s}", "op", "ping")), SMOLVM_AGENT_REPLY));
    client_close(&c2);
    json_decref(
        one_reply(&F->c, request(&F->c, json_pack("{s:s}", "op", "ping")), SMOLVM_AGENT_REPLY));
    /* what those connections started was killed with them (on_reset kill) */
    json_t *j =
        one_reply(&F->c, request(&F->c, json_pack("{s:s}", "op", "ps")), SMOLVM_AGENT_REPLY);
    json_t *p;
    int n = 0;
    json_array_foreach (json_object_get(j, "processes"), i, p) {
        struct result r;
        pid_t pid = (pid_t)json_integer_value(json_object_get(p, "pid"));
        run(&F->c, json_pack("{s:s, s:i}", "op", "attach", "pid", pid), &r);
        assert_string_equal(json_string_value(json_object_get(r.exit, "signal")), "KILL");
        result_free(&r);
        assert_group_gone(pid, 0);
        n++;
    }
    assert_int_equal(n, 3); /* window-over-max, data-over-window, stdout-to-agent */
    json_decref(j);
}

int main(void)
{
    if (access("/bin/sh", X_OK) < 0) {
        printf("SKIP: no /bin/sh\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hello_ping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exec_output_and_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exec_env_cwd, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exec_argv, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exec_stdin, setup, teardown),
        cmocka_unit_test_setup_teardown(test_window_zero_blocks_producer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_and_kill, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attach_and_on_reset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_identity, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed, setup, teardown),
    };
    if (getenv("SMOLVM_TEST_FILTER"))
        cmocka_set_test_filter(getenv("SMOLVM_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
