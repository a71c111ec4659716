/* SPDX-License-Identifier: MIT */
/*
 * The loopback forward proxy (src/supervisor/proxy.c) with real TCP, inside network
 * namespaces this test makes: the test's namespace is the host (an uplink and the
 * VM's rules from src/lib/net, so the proxy works under the same isolation as in
 * production), a veth "guest" namespace runs the servers, a child process runs the
 * proxy on its event loop, and the test is the client on 127.0.0.1.
 *
 * Needs root (namespaces, CAP_NET_ADMIN); exits 77 otherwise.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include "error.h"
#include "loop.h"
#include "net/net.h"
#include "netns-util.h"
#include "proxy.h"

#define GUEST "172.16.0.2"
#define GATEWAY "172.16.0.1"
#define P_ECHO 18007   /* -> guest:7, echoes until EOF, then closes */
#define P_SINK 18009   /* -> guest:9, accepts and never reads */
#define P_HOLD 18011   /* -> guest:11, holds each connection until the client ends it */
#define P_CLOSED 18013 /* -> guest:13, nothing listens */
#define MAX_CONNS 3
#define BUF_SIZE 65536

/* ---------------------------------------------------------------- the guest */

typedef struct gsrv {
    int port, mode, report_fd; /* mode: 0 echo, 1 sink, 2 hold */
} gsrv;

static void gsrv_main(void *p)
{
    gsrv *a = p;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)a->port)};
    int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);

    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 64) < 0)
        _exit(2);
    (void)signal(SIGCHLD, SIG_IGN);
    (void)write(a->report_fd, "r", 1);
    for (;;) {
        int c = accept(fd, NULL, NULL);
        char buf[65536];
        ssize_t n;

        if (c < 0)
            continue;
        (void)write(a->report_fd, "a", 1); /* one byte per accepted connection */
        if (fork() != 0) {
            close(c);
            continue;
        }
        (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (a->mode == 1)
            for (;;)
                pause();
        while ((n = read(c, buf, sizeof(buf))) > 0)
            if (a->mode == 0)
                for (ssize_t off = 0; off < n;) {
                    ssize_t w = write(c, buf + off, (size_t)(n - off));

                    if (w <= 0)
                        _exit(0);
                    off += w;
                }
        _exit(0); /* EOF (or reset): close */
    }
}

/* Start a server in g; returns the read end of its accept reports. */
static int gsrv_start(const ns *g, int port, int mode)
{
    int p[2];
    char c;
    gsrv a = {port, mode, -1};

    CHECK(pipe2(p, 0) == 0, "pipe");
    a.report_fd = p[1];
    (void)in_ns(g, gsrv_main, &a);
    close(p[1]);
    CHECK(read(p[0], &c, 1) == 1 && c == 'r', "guest server :%d did not start", port);
    return p[0];
}

/* Count accept reports that arrive within ms. */
static int accepts_within(int fd, int ms)
{
    int64_t deadline = now_us() + (int64_t)ms * 1000;
    int n = 0;

    for (;;) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int left = (int)((deadline - now_us()) / 1000);
        char buf[64];
        ssize_t got;

        if (left <= 0 || poll(&pf, 1, left) != 1)
            return n;
        if ((got = read(fd, buf, sizeof(buf))) > 0)
            n += (int)got;
    }
}

/* ---------------------------------------------------------------- the proxy */

typedef struct proxy_proc {
    pid_t pid;
    int cmd, res;
} proxy_proc;

typedef struct proxy_arg {
    int cmd, res;
} proxy_arg;

typedef struct ctl {
    sv_loop *loop;
    sv_proxy *proxy;
    int cmd, res;
} ctl;

/* Commands: 'n' -> connection count (one byte); 'r' + 2-byte port -> remove ('k' or 'e');
 * 'q' -> free everything (connections open or not) and stop. */
static void on_cmd(sv_loop *loop, int fd, uint32_t events, void *data)
{
    ctl *c = data;
    unsigned char cmd, port[2], out;

    (void)events;
    if (read(fd, &cmd, 1) != 1 || cmd == 'q') {
        sv_loop_stop(loop);
        return;
    }
    if (cmd == 'n') {
        out = (unsigned char)sv_proxy_connections(c->proxy);
    } else if (cmd == 'r' && read(fd, port, 2) == 2) {
        out = sv_proxy_remove(c->proxy, NULL, port[0] << 8 | port[1]) == 0 ? 'k' : 'e';
    } else {
        out = '?';
    }
    (void)write(c->res, &out, 1);
}

static void proxy_main(void *p)
{
    proxy_arg *a = p;
    sv_proxy_options o = SV_PROXY_OPTIONS_INIT;
    ctl c = {sv_loop_new(), NULL, a->cmd, a->res};
    static const int ports[][2] = {{P_ECHO, 7}, {P_SINK, 9}, {P_HOLD, 11}, {P_CLOSED, 13}};

    o.max_conns = MAX_CONNS;
    o.buf_size = BUF_SIZE;
    o.connect_timeout_ms = 2000;
    CHECK(c.loop != NULL, "loop");
    OK(sv_proxy_new(&c.proxy, c.loop, &o, &e_));
    for (size_t i = 0; i < sizeof(ports) / sizeof(ports[0]); i++)
        OK(sv_proxy_add(c.proxy, NULL, ports[i][0], GUEST, ports[i][1], &e_));
    CHECK(sv_loop_add(c.loop, a->cmd, EPOLLIN, on_cmd, &c) == 0, "watch the command pipe");
    (void)write(a->res, "r", 1);
    CHECK(sv_loop_run(c.loop) == 0, "loop failed");
    sv_loop_del(c.loop, a->cmd);
    c.proxy = sv_proxy_free(c.proxy); /* with whatever connections are still open */
    c.loop = sv_loop_free(c.loop);
    (void)write(a->res, "d", 1);
}

static proxy_proc proxy_start(void)
{
    int cmd[2], res[2];
    proxy_arg a;
    proxy_proc pp;
    char c = 0;

    CHECK(pipe(cmd) == 0 && pipe(res) == 0, "pipe");
    a = (proxy_arg){cmd[0], res[1]};
    pp.pid = in_ns(NULL, proxy_main, &a);
    close(cmd[0]);
    close(res[1]);
    pp.cmd = cmd[1];
    pp.res = res[0];
    CHECK(read(pp.res, &c, 1) == 1 && c == 'r', "proxy did not start");
    return pp;
}

static int proxy_conns(proxy_proc *pp)
{
    unsigned char c = 'n';

    CHECK(write(pp->cmd, &c, 1) == 1 && read(pp->res, &c, 1) == 1, "proxy gone");
    return c;
}

static int proxy_remove(proxy_proc *pp, int port)
{
    unsigned char m[3] = {'r', (unsigned char)(port >> 8), (unsigned char)port}, c = 0;

    CHECK(write(pp->cmd, m, 3) == 3 && read(pp->res, &c, 1) == 1, "proxy gone");
    return c == 'k';
}

static void proxy_stop(proxy_proc *pp)
{
    char c = 'q';

    CHECK(write(pp->cmd, &c, 1) == 1, "proxy gone");
    CHECK(read(pp->res, &c, 1) == 1 && c == 'd', "proxy did not free and stop");
    CHECK(wait_status(pp->pid) == 0, "proxy process failed");
}

/* ---------------------------------------------------------------- the world */

static ns guest_ns;
static int rep_echo, rep_sink, rep_hold;

/* The host: an uplink that leads nowhere (a veth pair) with a default route, the guest's veth
 * set up by the network module like a TAP; servers in the guest. */
static void world(void)
{
    smolvm_net_vm vm = SMOLVM_NET_VM_INIT;
    char tap[SMOLVM_NET_IFNAMSIZ];

    sh("ip link add up0 type veth peer name up1 && ip link set up1 up && "
       "ip addr add 198.51.100.1/24 dev up0 && ip link set up0 up && "
       "ip route add default via 198.51.100.2");
    guest_ns = ns_new();
    smolvm_net_tap_name("vmp", tap);
    sh("ip link add %s type veth peer name eth0 netns %d", tap, (int)guest_ns.pid);
    sh("nsenter --net=%s sh -c 'ip link set lo up && ip link set eth0 up && "
       "ip addr add " GUEST "/32 dev eth0 && ip route add " GATEWAY " dev eth0 && "
       "ip route add default via " GATEWAY "'",
       guest_ns.path);
    vm.vm_id = "vmp";
    vm.guest_ip = GUEST;
    vm.gateway = GATEWAY;
    vm.prefix = 16;
    vm.link = tap;
    OK(smolvm_net_vm_setup(&vm, NULL, &e_));
    rep_echo = gsrv_start(&guest_ns, 7, 0);
    rep_sink = gsrv_start(&guest_ns, 9, 1);
    rep_hold = gsrv_start(&guest_ns, 11, 2);
}

static int client(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {5, 0};

    (void)inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    CHECK(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "connect :%d: %s", port,
          strerror(errno));
    return fd;
}

static void run(void (*body)(void))
{
    assert_int_equal(run_in_new_netns(body, 60, smolvm_net_lock_path), 0);
}

/* ---------------------------------------------------------------- tests */

static void body_copy(void)
{
    enum { TOTAL = 4 * 1024 * 1024 };
    unsigned char *out = malloc(TOTAL), *in = malloc(TOTAL);
    size_t sent = 0, got = 0;
    proxy_proc pp;
    int fd;

    world();
    pp = proxy_start();
    CHECK(out && in, "malloc");
    for (size_t i = 0; i < TOTAL; i++) /* every byte value, binary-safe */
        out[i] = (unsigned char)(i * 2654435761u >> 13);
    fd = client(P_ECHO);
    /* send everything, then end our half: the echo must still come back in full */
    while (sent < TOTAL || got < TOTAL) {
        struct pollfd pf = {.fd = fd, .events = POLLIN | (sent < TOTAL ? POLLOUT : 0)};

        CHECK(poll(&pf, 1, 5000) == 1, "stalled at sent %zu got %zu", sent, got);
        if ((pf.revents & POLLOUT) && sent < TOTAL) {
            ssize_t w =
                send(fd, out + sent, TOTAL - sent > 65536 ? 65536 : TOTAL - sent, MSG_DONTWAIT);

            if (w > 0 && (sent += (size_t)w) == TOTAL)
                CHECK(shutdown(fd, SHUT_WR) == 0, "shutdown");
        }
        if (pf.revents & POLLIN) {
            ssize_t r = recv(fd, in + got, TOTAL - got, MSG_DONTWAIT);

            CHECK(r > 0 || (r < 0 && errno == EAGAIN), "echo ended early at %zu: %zd %s", got, r,
                  strerror(errno));
            if (r > 0)
                got += (size_t)r;
        }
    }
    CHECK(memcmp(in, out, TOTAL) == 0, "the echo differs from what was sent");
    /* the guest closed after our FIN: the client sees EOF, and the proxy has no
     * connection left */
    {
        char c;

        CHECK(recv(fd, &c, 1, 0) == 0, "no EOF after the echo");
    }
    CHECK(proxy_conns(&pp) == 0, "proxy still holds %d connections", proxy_conns(&pp));
    close(fd);
    fprintf(stderr, "  %d MiB echoed byte for byte through the proxy, FIN both ways\n",
            TOTAL >> 20);
    /* a port nothing listens on in the guest: the client is closed at once */
    {
        char c;
        int64_t t0 = now_us();
        ssize_t r;

        fd = client(P_CLOSED);
        r = recv(fd, &c, 1, 0);
        CHECK(r <= 0 && now_us() - t0 < 2000000, "refused guest port: %zd after %lld us", r,
              (long long)(now_us() - t0));
        close(fd);
    }
    proxy_stop(&pp);
    free(out);
    free(in);
}

static void test_copy(void **state)
{
    (void)state;
    run(body_copy);
}

static void body_backpressure(void)
{
    proxy_proc pp;
    size_t sent = 0;
    char *chunk = calloc(1, 65536);
    int fd;

    world();
    pp = proxy_start();
    fd = client(P_SINK);
    CHECK(accepts_within(rep_sink, 2000) == 1, "sink did not accept");
    /* the guest never reads: writes must stop once the kernel buffers and the proxy's
     * one buffer are full, instead of the proxy buffering without bound */
    for (;;) {
        struct pollfd pf = {.fd = fd, .events = POLLOUT};
        ssize_t w;

        if (poll(&pf, 1, 500) != 1)
            break; /* stalled: the sender is held back */
        w = send(fd, chunk, 65536, MSG_DONTWAIT);
        CHECK(w > 0 || errno == EAGAIN, "send: %s", strerror(errno));
        if (w > 0)
            sent += (size_t)w;
        CHECK(sent < 64u * 1024 * 1024, "64 MiB accepted for a guest that never reads");
    }
    fprintf(stderr, "  a guest that never reads: the client is held back after %.1f MiB\n",
            (double)sent / (1024 * 1024));
    CHECK(proxy_conns(&pp) == 1, "connection lost");
    close(fd);
    proxy_stop(&pp); /* frees the proxy with the connection still open */
    free(chunk);
}

static void test_backpressure(void **state)
{
    (void)state;
    run(body_backpressure);
}

static void body_cap(void)
{
    proxy_proc pp;
    int fds[MAX_CONNS + 2];

    world();
    pp = proxy_start();
    for (int i = 0; i < MAX_CONNS + 2; i++)
        fds[i] = client(P_HOLD); /* the kernel's backlog takes the extra ones */
    CHECK(accepts_within(rep_hold, 700) == MAX_CONNS, "guest connections beyond the cap");
    CHECK(proxy_conns(&pp) == MAX_CONNS, "proxy holds %d", proxy_conns(&pp));
    /* the cap spans forwards: the echo forward waits too */
    /* one ends: the first waiting client goes through */
    close(fds[0]);
    CHECK(accepts_within(rep_hold, 2000) == 1, "a waiting client did not get through");
    CHECK(proxy_conns(&pp) == MAX_CONNS, "proxy holds %d after one ended", proxy_conns(&pp));
    for (int i = 1; i < MAX_CONNS + 2; i++)
        close(fds[i]);
    CHECK(accepts_within(rep_hold, 2000) == 1, "the last waiting client did not get through");
    proxy_stop(&pp);
}

static void test_cap(void **state)
{
    (void)state;
    run(body_cap);
}

static void body_remove(void)
{
    proxy_proc pp;
    char c = 'x';
    int fd, other;
    ssize_t r;

    world();
    pp = proxy_start();
    fd = client(P_ECHO);
    other = client(P_HOLD);
    CHECK(send(fd, &c, 1, 0) == 1 && recv(fd, &c, 1, 0) == 1 && c == 'x', "echo before remove");
    CHECK(proxy_remove(&pp, P_ECHO), "remove failed");
    CHECK(!proxy_remove(&pp, P_ECHO), "removed twice");
    /* its open connection is reset, its port refuses new ones */
    r = recv(fd, &c, 1, 0);
    CHECK(r < 0 && errno == ECONNRESET, "open connection after remove: %zd %s", r, strerror(errno));
    close(fd);
    {
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(P_ECHO)};
        int s = socket(AF_INET, SOCK_STREAM, 0);

        (void)inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
        CHECK(connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno == ECONNREFUSED,
              "removed forward still accepts");
        close(s);
    }
    /* the other forward's connection is untouched */
    CHECK(proxy_conns(&pp) == 1, "other connection lost: %d", proxy_conns(&pp));
    close(other);
    proxy_stop(&pp);
}

static void test_remove(void **state)
{
    (void)state;
    run(body_remove);
}

static void body_errors(void)
{
    sv_loop *loop = sv_loop_new();
    sv_proxy *p = NULL;
    sv_proxy_options o = SV_PROXY_OPTIONS_INIT;
    smolvm_error *e = NULL;
    int r, fd;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(18100)};

    o.max_conns = SV_PROXY_MAX_CONNS + 1;
    CHECK(sv_proxy_new(&p, loop, &o, NULL) == SMOLVM_EINVAL, "too many connections accepted");
    OK(sv_proxy_new(&p, loop, NULL, &e_));
    OK(sv_proxy_add(p, NULL, 18101, GUEST, 80, &e_));
    r = sv_proxy_add(p, "127.0.0.1", 18101, GUEST, 81, &e);
    CHECK(r == SMOLVM_EEXIST && strstr(smolvm_error_message(e), "'127.0.0.1:18101'"), "twice: %d",
          r);
    e = smolvm_error_free(e);
    /* a port another program holds */
    fd = socket(AF_INET, SOCK_STREAM, 0);
    (void)inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    CHECK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 && listen(fd, 1) == 0, "bind");
    r = sv_proxy_add(p, NULL, 18100, GUEST, 80, &e);
    CHECK(r == SMOLVM_EEXIST && strstr(smolvm_error_message(e), "in use"), "taken: %d", r);
    fprintf(stderr, "  %s\n", smolvm_error_message(e));
    e = smolvm_error_free(e);
    close(fd);
    CHECK(sv_proxy_add(p, "localhost", 18102, GUEST, 80, NULL) == SMOLVM_EINVAL, "name accepted");
    CHECK(sv_proxy_add(p, NULL, 0, GUEST, 80, NULL) == SMOLVM_EINVAL, "port 0 accepted");
    CHECK(sv_proxy_add(p, NULL, 18103, GUEST, 70000, NULL) == SMOLVM_EINVAL, "guest port");
    CHECK(sv_proxy_add(p, NULL, 18104, "300.1.1.1", 80, NULL) == SMOLVM_EINVAL, "guest address");
    CHECK(sv_proxy_remove(p, NULL, 18199) == SMOLVM_ENOENT, "remove of nothing");
    for (int i = 0; i < SV_PROXY_MAX_FORWARDS - 1; i++)
        OK(sv_proxy_add(p, NULL, 18200 + i, GUEST, 80, &e_));
    r = sv_proxy_add(p, NULL, 18300, GUEST, 80, &e);
    CHECK(r == SMOLVM_ENOSPC, "65th forward: %d", r);
    e = smolvm_error_free(e);
    p = sv_proxy_free(p);
    loop = sv_loop_free(loop);
}

static void test_errors(void **state)
{
    (void)state;
    run(body_errors);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_copy),   cmocka_unit_test(test_backpressure),
        cmocka_unit_test(test_cap),    cmocka_unit_test(test_remove),
        cmocka_unit_test(test_errors),
    };
    const char *why = netns_unusable();

    if (why) {
        printf("skip: %s\n", why);
        return 77;
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
