/* SPDX-License-Identifier: MIT */
/*
 * Host-side networking (src/lib/net) with real packets, only inside network
 * namespaces this test creates: every test runs in a child that unshare()s a fresh
 * namespace (gone with the process), playing the host. Helper processes unshare
 * further namespaces: "out" (the world beyond the uplink: an "internet" host on
 * 198.51.100.2 and 203.0.113.5, plus hosts on private and special addresses that a
 * guest must not reach) and guests (a veth whose host end is named like the VM's TAP,
 * configured by the module exactly as a TAP would be). Nothing touches the real
 * host's links or nftables; no packet leaves the test's namespaces.
 *
 * Needs root (CAP_NET_ADMIN + CAP_SYS_ADMIN for unshare); exits 77 otherwise.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "net/net.h"
#include "util.h"

/* Inside the namespace child: a failed check prints and ends the child with 1. */
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            _exit(1);                                                                              \
        }                                                                                          \
    } while (0)
#define OK(call)                                                                                   \
    do {                                                                                           \
        smolvm_error *e_ = NULL;                                                                   \
        int r_ = (call);                                                                           \
        CHECK(r_ == 0, "%s -> %d: %s", #call, r_, e_ ? smolvm_error_message(e_) : "");             \
        smolvm_error_free(e_);                                                                     \
    } while (0)

#define UPLINK_HOST "198.51.100.1" /* the host's address on the uplink */
#define INTERNET "198.51.100.2"    /* an "internet" host, beyond the uplink */
#define INTERNET2 "203.0.113.5"    /* another one */
#define GATEWAY "172.16.0.1"
#define DROPPED 4    /* probe step: no answer before the deadline */
#define SHORT_MS 500 /* deadline of a probe that must not get through */

/* Addresses beyond the uplink that INTERNET mode refuses (all served in "out"). */
static const char *const private_hosts[] = {"10.1.0.1", "172.20.0.1", "192.168.1.1", "100.64.0.1",
                                            "169.254.169.254"};

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    int r;

    va_start(ap, fmt);
    (void)vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    r = system(cmd);
    CHECK(r == 0, "'%s' exited %d", cmd, r);
}

/* Output of a command, at most size-1 bytes. */
static void sh_out(char *out, size_t size, const char *cmd)
{
    FILE *f = popen(cmd, "r");
    size_t n;

    CHECK(f != NULL, "popen '%s'", cmd);
    n = fread(out, 1, size - 1, f);
    out[n] = '\0';
    (void)pclose(f);
}

static int64_t now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

    return (x > y) - (x < y);
}

static int64_t median(int64_t *v, size_t n)
{
    qsort(v, n, sizeof(*v), cmp_i64);
    return v[n / 2];
}

/* ---------------------------------------------------------------- namespaces */

typedef struct ns {
    pid_t pid;
    char path[64]; /* /proc/PID/ns/net */
} ns;

static ns ns_new(void)
{
    int p[2];
    char c;
    ns n = {0};

    CHECK(pipe(p) == 0, "pipe");
    n.pid = fork();
    CHECK(n.pid >= 0, "fork");
    if (n.pid == 0) {
        (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (unshare(CLONE_NEWNET) < 0)
            _exit(1);
        (void)write(p[1], "x", 1);
        for (;;)
            pause();
    }
    close(p[1]);
    CHECK(read(p[0], &c, 1) == 1, "namespace helper did not start");
    close(p[0]);
    (void)snprintf(n.path, sizeof(n.path), "/proc/%d/ns/net", (int)n.pid);
    return n;
}

/* Run fn in namespace n (NULL: this one) in a child; its exit status is the result. */
static pid_t in_ns(const ns *n, void (*fn)(void *), void *arg)
{
    pid_t pid = fork();

    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (n) {
            int fd = open(n->path, O_RDONLY | O_CLOEXEC);

            if (fd < 0 || setns(fd, CLONE_NEWNET) < 0)
                _exit(99);
            close(fd);
        }
        fn(arg);
        _exit(0);
    }
    return pid;
}

static int wait_status(pid_t pid)
{
    int status = 0;

    CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
    return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
}

/* ---------------------------------------------------------------- TCP */

/* A TCP server answering every connection with the peer address it saw. */
typedef struct server_arg {
    const char *addr;
    int port, echo, ready_fd;
} server_arg;

static void server_main(void *p)
{
    server_arg *a = p;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)a->port)};
    int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);

    (void)inet_pton(AF_INET, a->addr, &sa.sin_addr);
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 64) < 0) {
        perror("server bind");
        _exit(2);
    }
    (void)signal(SIGCHLD, SIG_IGN);
    (void)write(a->ready_fd, "x", 1);
    for (;;) {
        struct sockaddr_in peer;
        socklen_t len = sizeof(peer);
        int c = accept(fd, (struct sockaddr *)&peer, &len);
        char text[32];

        if (c < 0)
            continue;
        if (a->echo) { /* echo every byte back until EOF, one process per client */
            if (fork() == 0) {
                char buf[256];
                ssize_t n;

                (void)prctl(PR_SET_PDEATHSIG, SIGKILL);

                while ((n = read(c, buf, sizeof(buf))) > 0)
                    (void)write(c, buf, (size_t)n);
                _exit(0);
            }
            close(c);
            continue;
        }
        (void)inet_ntop(AF_INET, &peer.sin_addr, text, sizeof(text));
        (void)strcat(text, "\n");
        (void)write(c, text, strlen(text));
        close(c);
    }
}

static pid_t server_start_mode(const ns *n, const char *addr, int port, int echo)
{
    int p[2];
    char c;
    server_arg a = {addr, port, echo, -1};
    pid_t pid;

    CHECK(pipe(p) == 0, "pipe");
    a.ready_fd = p[1];
    pid = in_ns(n, server_main, &a);
    close(p[1]);
    CHECK(read(p[0], &c, 1) == 1, "server on %s:%d did not start", addr, port);
    close(p[0]);
    return pid;
}

static pid_t server_start(const ns *n, const char *addr, int port)
{
    return server_start_mode(n, addr, port, 0);
}

/* Connect (non-blocking, with a deadline) and read the server's line. */
typedef struct probe_arg {
    const char *addr;
    int port, timeout_ms, out_fd;
} probe_arg;

static void probe_main(void *p)
{
    probe_arg *a = p;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)a->port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct pollfd pf = {.fd = fd, .events = POLLOUT};
    char buf[64] = {0};
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    ssize_t n;

    (void)inet_pton(AF_INET, a->addr, &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS)
        _exit(3);
    if (poll(&pf, 1, a->timeout_ms) != 1)
        _exit(DROPPED); /* timed out: dropped */
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr)
        _exit(5); /* refused or unreachable */
    pf.events = POLLIN;
    if (poll(&pf, 1, 2000) != 1)
        _exit(6);
    n = read(fd, buf, sizeof(buf) - 1);
    if (n <= 0)
        _exit(7);
    (void)write(a->out_fd, buf, (size_t)n);
    _exit(0);
}

/* 0 and the peer address the server saw in `seen`, or the failing step (>0). */
static int probe_t(const ns *n, const char *addr, int port, int timeout_ms, char seen[32])
{
    int p[2], st;
    probe_arg a = {addr, port, timeout_ms, -1};
    pid_t pid;
    ssize_t len;

    CHECK(pipe(p) == 0, "pipe");
    a.out_fd = p[1];
    pid = in_ns(n, probe_main, &a);
    close(p[1]);
    st = wait_status(pid);
    len = read(p[0], seen, 31);
    close(p[0]);
    seen[len > 0 ? len : 0] = '\0';
    if (len > 0 && seen[len - 1] == '\n')
        seen[len - 1] = '\0';
    return st;
}

static int probe(const ns *n, const char *addr, int port, char seen[32])
{
    return probe_t(n, addr, port, 2000, seen);
}

/* Must not get through: a short deadline, dropped (not refused) expected. */
static void must_drop(const ns *n, const char *addr, int port, const char *what)
{
    char seen[32];
    int r = probe_t(n, addr, port, SHORT_MS, seen);

    CHECK(r == DROPPED, "%s -> %s:%d: step %d (want it dropped)", what, addr, port, r);
}

static void must_reach(const ns *n, const char *addr, int port, const char *what)
{
    char seen[32];
    int r = probe(n, addr, port, seen);

    CHECK(r == 0, "%s -> %s:%d: step %d (want an answer)", what, addr, port, r);
}

/* A connection held open in namespace n: each 'p' on cmd sends a byte and reports
 * 'y' when the echo server sent it back within 700 ms, 'n' otherwise. */
typedef struct conn {
    pid_t pid;
    int cmd, res;
} conn;

typedef struct conn_arg {
    const char *addr;
    int port, cmd, res;
} conn_arg;

static void conn_main(void *p)
{
    conn_arg *a = p;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)a->port)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = {2, 0};
    char c;

    (void)inet_pton(AF_INET, a->addr, &sa.sin_addr);
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    c = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 ? 'c' : 'x';
    (void)write(a->res, &c, 1);
    while (read(a->cmd, &c, 1) == 1 && c == 'p') {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        char back = 0;

        c = 'n';
        if (write(fd, "z", 1) == 1 && poll(&pf, 1, 700) == 1 && read(fd, &back, 1) == 1 &&
            back == 'z')
            c = 'y';
        (void)write(a->res, &c, 1);
    }
}

static conn conn_open(const ns *n, const char *addr, int port)
{
    int cmd[2], res[2];
    conn_arg a;
    conn cn;
    char c = 0;

    CHECK(pipe(cmd) == 0 && pipe(res) == 0, "pipe");
    a = (conn_arg){addr, port, cmd[0], res[1]};
    cn.pid = in_ns(n, conn_main, &a);
    close(cmd[0]);
    close(res[1]);
    cn.cmd = cmd[1];
    cn.res = res[0];
    CHECK(read(cn.res, &c, 1) == 1 && c == 'c', "connection to %s:%d failed", addr, port);
    return cn;
}

static int conn_ping(conn *cn)
{
    char c = 'p';

    CHECK(write(cn->cmd, &c, 1) == 1 && read(cn->res, &c, 1) == 1, "connection helper gone");
    return c == 'y';
}

static void conn_close(conn *cn)
{
    char q = 'q'; /* the helper holds the pipe's write end too: no EOF to wait for */

    (void)write(cn->cmd, &q, 1);
    close(cn->cmd);
    close(cn->res);
    (void)wait_status(cn->pid);
}

/* ---------------------------------------------------------------- UDP */

/* A UDP server: every datagram is answered with "pong" and reported on report_fd as
 * "<source address> <payload>\n". */
typedef struct udp_arg {
    const char *addr;
    int port, ready_fd, report_fd;
} udp_arg;

static void udp_main(void *p)
{
    udp_arg *a = p;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)a->port)};
    int fd = socket(AF_INET, SOCK_DGRAM, 0);

    (void)inet_pton(AF_INET, a->addr, &sa.sin_addr);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        perror("udp bind");
        _exit(2);
    }
    (void)write(a->ready_fd, "x", 1);
    for (;;) {
        struct sockaddr_in peer;
        socklen_t len = sizeof(peer);
        char buf[256], line[300], from[32];
        ssize_t n = recvfrom(fd, buf, sizeof(buf) - 1, 0, (struct sockaddr *)&peer, &len);

        if (n < 0)
            continue;
        buf[n] = '\0';
        (void)inet_ntop(AF_INET, &peer.sin_addr, from, sizeof(from));
        (void)snprintf(line, sizeof(line), "%s %s\n", from, buf);
        if (a->report_fd >= 0)
            (void)write(a->report_fd, line, strlen(line));
        (void)sendto(fd, "pong", 4, 0, (struct sockaddr *)&peer, len);
    }
}

/* Start it; *report (may be NULL) receives the read end of its report pipe. */
static pid_t udp_start(const ns *n, const char *addr, int port, int *report)
{
    int p[2], r[2] = {-1, -1};
    char c;
    udp_arg a = {addr, port, -1, -1};
    pid_t pid;

    CHECK(pipe(p) == 0, "pipe");
    if (report) {
        CHECK(pipe2(r, O_NONBLOCK) == 0, "pipe");
        a.report_fd = r[1];
    }
    a.ready_fd = p[1];
    pid = in_ns(n, udp_main, &a);
    close(p[1]);
    CHECK(read(p[0], &c, 1) == 1, "udp server on %s:%d did not start", addr, port);
    close(p[0]);
    if (report) {
        close(r[1]);
        *report = r[0];
    }
    return pid;
}

typedef struct udp_probe_arg {
    const char *addr;
    int port;
} udp_probe_arg;

static void udp_probe_main(void *p)
{
    udp_probe_arg *a = p;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)a->port)};
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    char buf[16] = {0};

    (void)inet_pton(AF_INET, a->addr, &sa.sin_addr);
    if (sendto(fd, "ping", 4, 0, (struct sockaddr *)&sa, sizeof(sa)) != 4)
        _exit(3);
    if (poll(&pf, 1, SHORT_MS) != 1)
        _exit(DROPPED);
    if (recv(fd, buf, sizeof(buf) - 1, 0) != 4 || strcmp(buf, "pong") != 0)
        _exit(5);
    _exit(0);
}

/* 0 if a "ping" to addr:port got its "pong", DROPPED if nothing came back. */
static int udp_probe(const ns *n, const char *addr, int port)
{
    udp_probe_arg a = {addr, port};

    return wait_status(in_ns(n, udp_probe_main, &a));
}

/* Send one UDP datagram with a forged IPv4 header (raw socket) from namespace n. */
typedef struct raw_arg {
    const char *src, *dst, *payload;
    int sport, dport;
} raw_arg;

static void raw_main(void *p)
{
    raw_arg *a = p;
    int fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    size_t plen = strlen(a->payload);
    uint8_t pkt[256] = {0};
    struct iphdr *ip = (struct iphdr *)pkt;
    struct udphdr *udp = (struct udphdr *)(pkt + sizeof(*ip));
    struct sockaddr_in to = {.sin_family = AF_INET};

    if (fd < 0)
        _exit(2);
    ip->version = 4;
    ip->ihl = 5;
    ip->ttl = 64;
    ip->protocol = IPPROTO_UDP;
    ip->tot_len = htons((uint16_t)(sizeof(*ip) + sizeof(*udp) + plen));
    (void)inet_pton(AF_INET, a->src, &ip->saddr); /* the kernel fills id and checksum */
    (void)inet_pton(AF_INET, a->dst, &ip->daddr);
    udp->source = htons((uint16_t)a->sport);
    udp->dest = htons((uint16_t)a->dport);
    udp->len = htons((uint16_t)(sizeof(*udp) + plen)); /* checksum 0: none, valid in IPv4 */
    memcpy(pkt + sizeof(*ip) + sizeof(*udp), a->payload, plen);
    to.sin_addr.s_addr = ip->daddr;
    if (sendto(fd, pkt, sizeof(*ip) + sizeof(*udp) + plen, 0, (struct sockaddr *)&to, sizeof(to)) <
        0)
        _exit(3);
    _exit(0);
}

static void raw_send(const ns *n, const char *src, int sport, const char *dst, int dport,
                     const char *payload)
{
    raw_arg a = {src, dst, payload, sport, dport};
    int r = wait_status(in_ns(n, raw_main, &a));

    CHECK(r == 0, "raw send from %s: step %d", src, r);
}

/* Wait up to ms for a line containing `needle` in a UDP server's report pipe. */
static int report_has(int fd, const char *needle, int ms)
{
    static char acc[8192];
    static size_t used;
    int64_t deadline = now_us() + (int64_t)ms * 1000;

    for (;;) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int64_t left = (deadline - now_us()) / 1000;
        ssize_t n;

        if (used && memmem(acc, used, needle, strlen(needle)))
            return 1;
        if (left <= 0 || poll(&pf, 1, (int)left) != 1)
            return 0;
        n = read(fd, acc + used, sizeof(acc) - used - 1);
        if (n > 0)
            used += (size_t)n;
        if (used > sizeof(acc) - 512)
            used = 0;
    }
}

/* ---------------------------------------------------------------- the world */

static ns out_ns;
/* gc_race's stand-in for the store: "<registry>.<pid of the test's namespace child>" */
static const char *registry = "/tmp/smolvm-test-net-registry";

/* In the test's own namespace: lo up, uplink veth "up0" to the "out" namespace with a
 * default route through it; "out" answers TCP :8000 and UDP :53, :5353, :9300 on every
 * address, among them the internet hosts and the refused ones. rp_filter is off, so
 * only smolvm's rules stand between a forged packet and its target. */
static void world(void)
{
    sh("ip link set lo up && sysctl -qw net.ipv4.conf.all.rp_filter=0 "
       "net.ipv4.conf.default.rp_filter=0");
    out_ns = ns_new();
    sh("ip link add up0 type veth peer name eth0 netns %d", (int)out_ns.pid);
    sh("ip addr add " UPLINK_HOST "/24 dev up0 && ip link set up0 up");
    sh("ip route add default via " INTERNET);
    sh("nsenter --net=%s sh -c 'ip link set lo up && ip link set eth0 up && "
       "ip addr add " INTERNET "/24 dev eth0 && ip addr add " INTERNET2 "/32 dev eth0 && "
       "for a in %s %s %s %s %s; do ip addr add $a/32 dev eth0; done && "
       "ip route add default dev eth0'",
       out_ns.path, private_hosts[0], private_hosts[1], private_hosts[2], private_hosts[3],
       private_hosts[4]);
    (void)server_start(&out_ns, "0.0.0.0", 8000);
    (void)server_start_mode(&out_ns, "0.0.0.0", 8001, 1);
    /* UDP servers on each address: a reply must come from the address asked */
    (void)udp_start(&out_ns, INTERNET, 53, NULL);
    (void)udp_start(&out_ns, INTERNET, 5353, NULL);
    (void)udp_start(&out_ns, INTERNET2, 53, NULL);
    (void)udp_start(&out_ns, INTERNET2, 5353, NULL);
}

/* A guest: namespace with eth0 = ip/32, reaching everything through the gateway (so
 * every packet it sends crosses the host's rules), the host end of its veth named as
 * the module names the VM's TAP, and a server on :80. */
static ns guest(const char *vm_id, const char *ip)
{
    char tap[SMOLVM_NET_IFNAMSIZ];
    ns g = ns_new();

    smolvm_net_tap_name(vm_id, tap);
    sh("ip link add %s type veth peer name eth0 netns %d", tap, (int)g.pid);
    sh("nsenter --net=%s sh -c 'ip link set lo up && ip link set eth0 up && "
       "ip addr add %s/32 dev eth0 && ip route add " GATEWAY " dev eth0 && "
       "ip route add default via " GATEWAY "'",
       g.path, ip);
    (void)server_start(&g, "0.0.0.0", 80);
    return g;
}

/* The spec of a test VM on its veth. */
static smolvm_net_vm spec(const char *vm_id, const char *ip, const smolvm_net_egress *e,
                          const smolvm_net_forward *f, size_t nf)
{
    static char taps[8][SMOLVM_NET_IFNAMSIZ];
    static int next;
    smolvm_net_vm vm = SMOLVM_NET_VM_INIT;
    char *tap = taps[next++ % 8];

    smolvm_net_tap_name(vm_id, tap);
    vm.vm_id = vm_id;
    vm.guest_ip = ip;
    vm.gateway = GATEWAY;
    vm.prefix = 16;
    vm.link = tap;
    vm.forwards = f;
    vm.n_forwards = nf;
    vm.egress = e;
    return vm;
}

static void guest_up(const char *vm_id, const char *ip, const smolvm_net_forward *f, size_t n)
{
    smolvm_net_vm vm = spec(vm_id, ip, NULL, f, n);

    OK(smolvm_net_vm_setup(&vm, NULL, &e_));
}

/* Number of rules whose comment names vm_id (vm_id NULL: all rules of the table;
 * -1 when the table does not exist). */
static int rules_of(const char *vm_id)
{
    char out[65536], needle[96];
    int count = 0;
    const char *p;

    sh_out(out, sizeof(out), "nft list table inet smolvm 2>/dev/null");
    if (!out[0])
        return -1;
    (void)snprintf(needle, sizeof(needle), vm_id ? "comment \"vm:%s" : "comment \"",
                   vm_id ? vm_id : "");
    for (p = out; (p = strstr(p, needle)); p++) {
        char c = p[strlen(needle)];

        if (!vm_id || c == '"' || c == ' ')
            count++;
    }
    return count;
}

static unsigned missing_of(const smolvm_net_vm *vm)
{
    unsigned m = ~0u;

    OK(smolvm_net_vm_check(vm, &m, &e_));
    return m;
}

/* Over netlink: /sys/class/net shows the namespace /sys was mounted in, not ours. */
static int link_exists(const char *name)
{
    char cmd[128];

    (void)snprintf(cmd, sizeof(cmd), "ip link show dev %s >/dev/null 2>&1", name);
    return system(cmd) == 0;
}

/* Run body in a fresh network namespace; the test passes when it exits 0. */
static void run_isolated(void (*body)(void))
{
    char lock[128] = "", reg[160];
    int status = 0, p[2];
    pid_t pid;
    ssize_t n;

    assert_int_equal(pipe(p), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(p[0]);
        if (unshare(CLONE_NEWNET) < 0) {
            perror("unshare(CLONE_NEWNET)");
            _exit(1);
        }
        /* the namespace's lock file, for the parent to remove whatever happens */
        if (smolvm_net_lock_path(lock, sizeof(lock), NULL) == 0)
            (void)write(p[1], lock, strlen(lock));
        close(p[1]);
        alarm(90); /* a hung test ends here, with its namespaces */
        body();
        _exit(0); /* helpers die with us (PDEATHSIG) */
    }
    close(p[1]);
    n = read(p[0], lock, sizeof(lock) - 1);
    close(p[0]);
    lock[n > 0 ? n : 0] = '\0';
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (lock[0])
        (void)unlink(lock);
    (void)snprintf(reg, sizeof(reg), "%s.%d", registry, (int)pid);
    (void)unlink(reg);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("isolated test failed (status 0x%x)", status);
}

/* ---------------------------------------------------------------- tests */

static void body_tap(void)
{
    char tap[SMOLVM_NET_IFNAMSIZ], out[4096];
    struct ifreq ifr = {0};
    smolvm_net_vm vm = SMOLVM_NET_VM_INIT;
    int fd;

    world();
    OK(smolvm_net_available(&e_));
    vm.vm_id = "vm-0a1b2c3d";
    vm.guest_ip = "172.16.0.9";
    vm.gateway = GATEWAY;
    vm.prefix = 16;
    OK(smolvm_net_vm_setup(&vm, tap, &e_));
    CHECK(strcmp(tap, "sv-vm-0a1b2c3d") == 0, "tap name '%s'", tap);
    /* a persistent TAP without packet info, with the gateway and the route */
    sh_out(out, sizeof(out),
           "ip -d link show dev sv-vm-0a1b2c3d; ip -o addr show dev sv-vm-0a1b2c3d; ip route");
    CHECK(strstr(out, "tun type tap pi off") && strstr(out, "persist on"), "link: %s", out);
    CHECK(strstr(out, "inet " GATEWAY "/32"), "no gateway address: %s", out);
    CHECK(strstr(out, "172.16.0.9 dev sv-vm-0a1b2c3d"), "no route: %s", out);
    CHECK(strstr(out, "alias smolvm vm:vm-0a1b2c3d"), "no alias: %s", out);
    CHECK(!strstr(out, "inet6"), "IPv6 address on the TAP: %s", out);
    /* IPv6 off, router advertisements ignored, no route_localnet */
    sh_out(out, sizeof(out),
           "cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv6/conf/sv-vm-0a1b2c3d/disable_ipv6 "
           "/proc/sys/net/ipv6/conf/sv-vm-0a1b2c3d/accept_ra "
           "/proc/sys/net/ipv4/conf/sv-vm-0a1b2c3d/route_localnet | tr '\\n' ' '");
    CHECK(strcmp(out, "1 1 0 0 ") == 0, "ip_forward disable_ipv6 accept_ra route_localnet: '%s'",
          out);
    /* QEMU can attach to it the way it does (vnet_hdr probed and requested) */
    fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    CHECK(fd >= 0, "open tun");
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    memcpy(ifr.ifr_name, tap, strlen(tap));
    CHECK(ioctl(fd, TUNSETIFF, &ifr) == 0, "attach like QEMU: %s", strerror(errno));
    close(fd);
    CHECK(missing_of(&vm) == 0, "a fresh setup is not intact: %u", missing_of(&vm));
    sh_out(out, sizeof(out), "nft list table inet smolvm");
    CHECK(strstr(out, "chain vm-vm-0a1b2c3d-pol") && strstr(out, "set vm-vm-0a1b2c3d-dyn") &&
              strstr(out, "iifname \"sv-vm-0a1b2c3d\" ip saddr 172.16.0.9 accept"),
          "table: %s", out);
    /* a long id gets a hashed, still deterministic name */
    smolvm_net_tap_name("a-very-long-vm-identifier", tap);
    CHECK(strlen(tap) <= 15 && strncmp(tap, "sv-a-v.", 7) == 0, "long name '%s'", tap);
    OK(smolvm_net_vm_down("vm-0a1b2c3d", &e_));
    CHECK(!link_exists("sv-vm-0a1b2c3d"), "tap left after down");
    CHECK(rules_of("vm-0a1b2c3d") == 0, "rules left after down");
    sh_out(out, sizeof(out), "nft list table inet smolvm");
    CHECK(!strstr(out, "vm-vm-0a1b2c3d"), "chains or sets left after down: %s", out);
    OK(smolvm_net_vm_down("vm-0a1b2c3d", &e_));
}

static void test_tap(void **state)
{
    (void)state;
    run_isolated(body_tap);
}

/* Read NFLOG records until every (dst, port) of want is seen or 3 s pass. */
static void expect_denied(smolvm_nflog *log, const char *vm_id, const char *const *dst,
                          const int *port, size_t n)
{
    int seen[16] = {0};
    size_t left = n;
    int64_t deadline = now_us() + 3000000;

    while (left) {
        struct pollfd pf = {.fd = smolvm_nflog_fd(log), .events = POLLIN};
        smolvm_net_denied rec[8];
        int got, w = (int)((deadline - now_us()) / 1000);

        CHECK(w > 0 && poll(&pf, 1, w) == 1, "%zu denied attempts never logged (first: %s:%d)",
              left, dst[0], port[0]);
        got = smolvm_nflog_read(log, rec, 8, NULL);
        CHECK(got >= 0, "nflog read failed");
        for (int i = 0; i < got; i++) {
            CHECK(strcmp(rec[i].vm_id, vm_id) == 0, "record of vm '%s'", rec[i].vm_id);
            CHECK(rec[i].time_ms > 1600000000000 && rec[i].time_ms < smolvm_wall_ms() + 1000,
                  "record time %lld", (long long)rec[i].time_ms);
            for (size_t j = 0; j < n; j++)
                if (!seen[j] && strcmp(rec[i].dst, dst[j]) == 0 && rec[i].dst_port == port[j] &&
                    rec[i].protocol == IPPROTO_TCP) {
                    seen[j] = 1;
                    left--;
                }
        }
    }
}

/* From namespace n: one datagram to each of count ports of addr, as fast as it goes. */
typedef struct flood_arg {
    const char *addr;
    int count;
} flood_arg;

static void flood_main(void *p)
{
    flood_arg *a = p;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);

    for (int i = 0; i < a->count; i++) {
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)(20000 + i))};

        (void)inet_pton(AF_INET, a->addr, &sa.sin_addr);
        (void)sendto(fd, "x", 1, 0, (struct sockaddr *)&sa, sizeof(sa));
    }
}

/* Records of log read within ms (or until more than max arrived). */
static int count_denied(smolvm_nflog *log, int ms, int max)
{
    int64_t deadline = now_us() + (int64_t)ms * 1000;
    int total = 0;

    for (;;) {
        struct pollfd pf = {.fd = smolvm_nflog_fd(log), .events = POLLIN};
        smolvm_net_denied rec[16];
        int w = (int)((deadline - now_us()) / 1000), got;

        if (w <= 0 || total > max || poll(&pf, 1, w) != 1)
            return total;
        got = smolvm_nflog_read(log, rec, 16, NULL);
        CHECK(got >= 0, "nflog read");
        total += got;
    }
}

static void body_internet(void)
{
    smolvm_net_forward fa[] = {{UPLINK_HOST, 8080, 80}, {"0.0.0.0", 8081, 80}};
    smolvm_net_vm a_vm = spec("vma", "172.16.0.2", NULL, fa, 2);
    smolvm_nflog *log = NULL, *log2 = NULL;
    smolvm_error *e = NULL;
    const char *dst[8];
    int port[8];
    char seen[32];
    ns a, b;
    int r;

    world();
    a = guest("vma", "172.16.0.2");
    b = guest("vmb", "172.16.0.3");
    OK(smolvm_nflog_open(&log, smolvm_net_log_group("172.16.0.2"), "vma", &e_));
    /* one reader per group */
    r = smolvm_nflog_open(&log2, smolvm_net_log_group("172.16.0.2"), "vma", &e);
    CHECK(r == SMOLVM_EEXIST, "second reader of a group: %d %s", r,
          e ? smolvm_error_message(e) : "");
    e = smolvm_error_free(e);
    OK(smolvm_net_vm_setup(&a_vm, NULL, &e_));
    guest_up("vmb", "172.16.0.3", NULL, 0);
    (void)server_start(NULL, "0.0.0.0", 9000); /* a host service on every address */

    /* the internet, masqueraded: the server sees the uplink's address */
    r = probe(&a, INTERNET, 8000, seen);
    CHECK(r == 0 && strcmp(seen, UPLINK_HOST) == 0, "guest a -> internet: %d '%s'", r, seen);
    must_reach(&b, INTERNET2, 8000, "guest b");

    /* private and special ranges beyond the uplink: refused (the uplink reaches them) */
    for (size_t i = 0; i < SMOLVM_ARRAY_SIZE(private_hosts); i++) {
        must_reach(NULL, private_hosts[i], 8000, "host (control)");
        must_drop(&a, private_hosts[i], 8000, "guest a");
        dst[i] = private_hosts[i];
        port[i] = 8000;
    }
    /* every address of the host */
    must_reach(NULL, GATEWAY, 9000, "host (control)");
    must_drop(&a, GATEWAY, 9000, "guest a -> host");
    must_drop(&a, UPLINK_HOST, 9000, "guest a -> host");
    dst[5] = GATEWAY, port[5] = 9000;
    dst[6] = UPLINK_HOST, port[6] = 9000;
    /* every refusal above is in a's log, with its destination and port */
    expect_denied(log, "vma", dst, port, 7);
    fprintf(stderr, "  denied attempts: 7 of 7 read from nflog group %u\n",
            smolvm_net_log_group("172.16.0.2"));
    /* a flood of refused attempts is logged at the rule's rate, not in full */
    (void)count_denied(log, 300, 1000); /* the probes' retransmissions */
    {
        flood_arg fa2 = {"10.1.0.1", 500};
        int64_t t0 = now_us();
        int n;

        CHECK(wait_status(in_ns(&a, flood_main, &fa2)) == 0, "flood");
        n = count_denied(log, 1000, 500);
        fprintf(stderr, "  500 refused datagrams in %.0f ms: %d logged (limit %d/s, burst %d)\n",
                (double)(now_us() - t0) / 1000.0, n, SMOLVM_NET_LOG_RATE, SMOLVM_NET_LOG_BURST);
        CHECK(n >= SMOLVM_NET_LOG_RATE &&
                  n <= SMOLVM_NET_LOG_BURST +
                           SMOLVM_NET_LOG_RATE * (int)((now_us() - t0) / 1000000 + 1),
              "%d records for a flood of 500", n);
        CHECK(smolvm_nflog_lost(log) == 0, "the reader lost records");
    }

    /* VMs never reach each other, directly or through a forward (host -> b: control) */
    r = probe(NULL, "172.16.0.3", 80, seen);
    CHECK(r == 0 && strcmp(seen, GATEWAY) == 0, "host -> guest b: %d '%s'", r, seen);
    must_drop(&a, "172.16.0.3", 80, "guest a -> guest b");
    must_drop(&b, "172.16.0.2", 80, "guest b -> guest a");
    must_drop(&b, UPLINK_HOST, 8080, "guest b -> a's forward");

    /* forwards from outside (the guest sees the real client) and from the host */
    r = probe(&out_ns, UPLINK_HOST, 8080, seen);
    CHECK(r == 0 && strcmp(seen, INTERNET) == 0, "outside -> forward: %d '%s'", r, seen);
    r = probe(&out_ns, UPLINK_HOST, 8081, seen);
    CHECK(r == 0 && strcmp(seen, INTERNET) == 0, "outside -> 0.0.0.0 forward: %d '%s'", r, seen);
    must_reach(NULL, UPLINK_HOST, 8080, "host -> forward");
    /* a 0.0.0.0 forward never NATs 127.0.0.1: that side is a proxy's (nothing here) */
    r = probe(NULL, "127.0.0.1", 8081, seen);
    CHECK(r == 5, "host -> 127.0.0.1:8081 was NATed: step %d", r);

    /* a forward added later works, its removal stops it */
    OK(smolvm_net_forward_add("vmb", "172.16.0.3", UPLINK_HOST, 8082, 80, &e_));
    must_reach(&out_ns, UPLINK_HOST, 8082, "outside -> added forward");
    OK(smolvm_net_forward_remove("vmb", NULL, UPLINK_HOST, 8082, 0, &e_));
    r = probe(&out_ns, UPLINK_HOST, 8082, seen);
    CHECK(r == 5, "forward removed but it still answers: step %d", r);
    OK(smolvm_net_forward_remove("vmb", NULL, UPLINK_HOST, 8082, 0, &e_));

    /* down removes exactly a's rules and link; b keeps working */
    {
        int before_b = rules_of("vmb");

        OK(smolvm_net_vm_down("vma", &e_));
        CHECK(rules_of("vma") == 0, "a's rules left: %d", rules_of("vma"));
        CHECK(rules_of("vmb") == before_b, "b's rules changed: %d", rules_of("vmb"));
        CHECK(!link_exists("sv-vma") && link_exists("sv-vmb"), "links after a's down");
        must_reach(&b, INTERNET, 8000, "guest b after a's down");
    }
    log = smolvm_nflog_free(log);
}

static void test_internet(void **state)
{
    (void)state;
    run_isolated(body_internet);
}

static void body_none(void)
{
    smolvm_net_egress eg = SMOLVM_NET_EGRESS_INIT;
    smolvm_net_forward f = {UPLINK_HOST, 8080, 80};
    smolvm_net_vm vm = spec("vmn", "172.16.0.4", &eg, &f, 1);
    char seen[32];
    ns g;
    int r;

    eg.mode = SMOLVM_NET_EGRESS_NONE;
    world();
    g = guest("vmn", "172.16.0.4");
    OK(smolvm_net_vm_setup(&vm, NULL, &e_));
    /* nothing outbound: TCP, UDP, DNS to the gateway, the host */
    must_drop(&g, INTERNET, 8000, "guest (none)");
    CHECK(udp_probe(&g, INTERNET, 5353) == DROPPED, "udp out under none");
    CHECK(udp_probe(&g, GATEWAY, 53) == DROPPED, "dns to the gateway under none");
    /* forwards still answer, replies included; the host still reaches the guest */
    r = probe(&out_ns, UPLINK_HOST, 8080, seen);
    CHECK(r == 0 && strcmp(seen, INTERNET) == 0, "forward under none: %d '%s'", r, seen);
    must_reach(NULL, "172.16.0.4", 80, "host -> guest under none");
}

static void test_none(void **state)
{
    (void)state;
    run_isolated(body_none);
}

static void body_allow(void)
{
    const char *allow[] = {"203.0.113.0/24", "10.1.0.1/32"};
    smolvm_net_egress eg = SMOLVM_NET_EGRESS_INIT;
    smolvm_net_vm vm = spec("vmw", "172.16.0.5", &eg, NULL, 0);
    smolvm_error *e = NULL;
    int dns_report = -1, r;
    conn cn;
    ns g;

    eg.mode = SMOLVM_NET_EGRESS_ALLOW;
    eg.allow = allow;
    eg.n_allow = 2;
    eg.dns = 1;
    world();
    g = guest("vmw", "172.16.0.5");
    OK(smolvm_net_vm_setup(&vm, NULL, &e_));
    (void)udp_start(NULL, GATEWAY, 53, &dns_report); /* the VM's resolver stands here */

    /* the CIDRs, a private one included because it is listed; nothing else */
    must_reach(&g, INTERNET2, 8000, "allowed CIDR");
    must_reach(&g, "10.1.0.1", 8000, "allowed private /32");
    must_drop(&g, INTERNET, 8000, "not allowed");
    must_drop(&g, "10.1.0.2", 8000, "private, next to the allowed one");
    /* DNS: the gateway only, not a resolver inside an allowed CIDR */
    CHECK(udp_probe(&g, GATEWAY, 53) == 0, "dns to the gateway refused");
    CHECK(report_has(dns_report, "172.16.0.5 ping", 1000), "the resolver saw no query");
    CHECK(udp_probe(&g, INTERNET2, 5353) == 0, "udp to an allowed CIDR refused (control)");
    CHECK(udp_probe(&g, INTERNET2, 53) == DROPPED, "dns to another resolver got through");

    /* the dynamic set: an entry lets connections in, and expires */
    r = smolvm_net_egress_allow("vmw", "10.1.0.2", 30, &e);
    CHECK(r == SMOLVM_EINVAL, "a resolved private address was accepted: %d", r);
    fprintf(stderr, "  %s\n", smolvm_error_message(e));
    e = smolvm_error_free(e);
    OK(smolvm_net_egress_allow("vmw", INTERNET, 2, &e_));
    must_reach(&g, INTERNET, 8000, "dynamic entry");
    cn = conn_open(&g, INTERNET, 8001); /* a connection made while the entry lives */
    CHECK(conn_ping(&cn), "echo through the dynamic entry");
    {
        /* the kernel expires the entry 2 s after it was added: wait that long once */
        struct timespec ts = {2, 300000000};
        char out[4096];

        (void)nanosleep(&ts, NULL);
        sh_out(out, sizeof(out), "nft list set inet smolvm vm-vmw-dyn");
        CHECK(!strstr(out, INTERNET), "entry did not expire: %s", out);
    }
    must_drop(&g, INTERNET, 8000, "expired dynamic entry");
    CHECK(conn_ping(&cn), "a connection opened under the entry was cut when it expired");
    /* a change of policy is checked on every packet: the open connection stops */
    eg.n_allow = 1;
    OK(smolvm_net_egress_set(&vm, &e_));
    CHECK(missing_of(&vm) == 0, "after set_egress: %u", missing_of(&vm));
    CHECK(!conn_ping(&cn), "a connection survived a policy change that refuses it");
    conn_close(&cn);
    must_drop(&g, "10.1.0.1", 8000, "CIDR removed at runtime");
    must_reach(&g, INTERNET2, 8000, "CIDR kept at runtime");
    eg.mode = SMOLVM_NET_EGRESS_INTERNET;
    eg.n_allow = 0;
    OK(smolvm_net_egress_set(&vm, &e_));
    must_reach(&g, INTERNET, 8000, "internet after set_egress");
    must_drop(&g, "10.1.0.1", 8000, "private after set_egress(internet)");
    CHECK(missing_of(&vm) == 0, "after set_egress(internet): %u", missing_of(&vm));
}

static void test_allow(void **state)
{
    (void)state;
    run_isolated(body_allow);
}

static void body_spoof(void)
{
    int host_report = -1, out_report = -1;
    ns a, b;

    world();
    a = guest("vma", "172.16.0.2");
    b = guest("vmb", "172.16.0.3");
    guest_up("vma", "172.16.0.2", NULL, 0);
    guest_up("vmb", "172.16.0.3", NULL, 0);
    (void)udp_start(NULL, "0.0.0.0", 9300, &host_report);
    (void)udp_start(&out_ns, "0.0.0.0", 9300, &out_report);
    (void)udp_start(&b, "0.0.0.0", 9301, NULL);

    /* a live flow between the host's :9300 and b's :9301 (the host opened it) */
    {
        struct sockaddr_in h = {.sin_family = AF_INET, .sin_port = htons(9300)};
        struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(9301)};
        struct pollfd pf;
        char buf[8];
        int one = 1, fd = socket(AF_INET, SOCK_DGRAM, 0);

        (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        (void)inet_pton(AF_INET, GATEWAY, &h.sin_addr);
        h.sin_port = htons(9302);
        CHECK(bind(fd, (struct sockaddr *)&h, sizeof(h)) == 0, "bind: %s", strerror(errno));
        (void)inet_pton(AF_INET, "172.16.0.3", &to.sin_addr);
        CHECK(sendto(fd, "hi", 2, 0, (struct sockaddr *)&to, sizeof(to)) == 2, "send to b");
        pf = (struct pollfd){.fd = fd, .events = POLLIN};
        CHECK(poll(&pf, 1, 2000) == 1 && recv(fd, buf, sizeof(buf), 0) == 4,
              "b's reply in the host's flow never came");
        /* a forges b's side of that live flow: nothing may arrive */
        raw_send(&a, "172.16.0.3", 9301, GATEWAY, 9302, "forged-peer");
        pf = (struct pollfd){.fd = fd, .events = POLLIN};
        CHECK(poll(&pf, 1, SHORT_MS) == 0, "a datagram forged from a peer vm reached the host");
        close(fd);
    }
    /* a live flow of a's own to the internet host, then forged sources on its ports */
    CHECK(udp_probe(&a, INTERNET, 9300) == 0, "a -> internet udp (control)");
    raw_send(&a, "172.16.0.2", 40000, INTERNET, 9300, "own-source");
    CHECK(report_has(out_report, "own-source", 2000), "a raw datagram from a's own address "
                                                      "did not arrive (the sender is broken)");
    raw_send(&a, "172.16.0.3", 40000, INTERNET, 9300, "forged-peer-out");
    raw_send(&a, UPLINK_HOST, 40000, INTERNET, 9300, "forged-host-out");
    raw_send(&a, "127.0.0.53", 40000, INTERNET, 9300, "forged-lo-out");
    raw_send(&a, "172.16.0.3", 9301, GATEWAY, 9300, "forged-peer-host");
    raw_send(&a, UPLINK_HOST, 9300, GATEWAY, 9300, "forged-host-host");
    raw_send(&a, "127.0.0.53", 53, GATEWAY, 9300, "forged-lo-host");
    CHECK(!report_has(out_report, "forged", SHORT_MS), "a forged datagram reached the internet");
    CHECK(!report_has(host_report, "forged", 10), "a forged datagram reached the host");
    /* IPv6 from a guest: the TAP has none, and nothing gets through */
    {
        char out[256];

        sh_out(out, sizeof(out), "ip -6 addr show dev sv-vma");
        CHECK(out[0] == '\0', "IPv6 on the TAP: %s", out);
    }
}

static void test_spoof(void **state)
{
    (void)state;
    run_isolated(body_spoof);
}

static void body_flush(void)
{
    smolvm_net_vm vm = spec("vmf", "172.16.0.6", NULL, NULL, 0);
    unsigned missing = 0, repaired = 0;
    int64_t t[20];
    int lo_report = -1;
    ns g;

    world();
    g = guest("vmf", "172.16.0.6");
    OK(smolvm_net_vm_setup(&vm, NULL, &e_));
    (void)udp_start(NULL, "127.0.0.1", 9100, &lo_report); /* a host loopback service */
    /* the guest sends to 127.0.0.1 through its eth0, as a hostile guest can */
    sh("nsenter --net=%s sh -c 'sysctl -qw net.ipv4.conf.eth0.route_localnet=1 && "
       "ip route del local 127.0.0.1 dev lo table local && "
       "ip route del local 127.0.0.0/8 dev lo table local && "
       "ip route add 127.0.0.1/32 via " GATEWAY " dev eth0'",
       g.path);
    (void)udp_probe(&g, "127.0.0.1", 9100);
    CHECK(!report_has(lo_report, "172.16.0.6", SHORT_MS), "guest reached host loopback (rules up)");

    /* what a reload of the nftables service does */
    sh("nft flush ruleset");
    OK(smolvm_net_vm_check(&vm, &missing, &e_));
    CHECK(missing & SMOLVM_NET_MISSING_TABLE, "check missed a flushed ruleset: %u", missing);
    (void)udp_probe(&g, "127.0.0.1", 9100);
    CHECK(!report_has(lo_report, "172.16.0.6", SHORT_MS), "guest reached host loopback (no rules)");
    /* control: route_localnet on (what the TAP had before) opens it; check sees it */
    sh("sysctl -qw net.ipv4.conf.sv-vmf.route_localnet=1");
    (void)udp_probe(&g, "127.0.0.1", 9100);
    CHECK(report_has(lo_report, "172.16.0.6", 2000),
          "with route_localnet and no rules the guest did not reach host loopback: the probe "
          "is broken (control)");
    OK(smolvm_net_vm_check(&vm, &missing, &e_));
    CHECK(missing & SMOLVM_NET_MISSING_LINK, "check missed route_localnet: %u", missing);

    OK(smolvm_net_vm_ensure(&vm, &repaired, &e_));
    CHECK((repaired & (SMOLVM_NET_MISSING_TABLE | SMOLVM_NET_MISSING_LINK)) ==
              (SMOLVM_NET_MISSING_TABLE | SMOLVM_NET_MISSING_LINK),
          "ensure repaired %u", repaired);
    CHECK(missing_of(&vm) == 0, "after ensure: %u", missing_of(&vm));
    (void)udp_probe(&g, "127.0.0.1", 9100);
    CHECK(!report_has(lo_report, "172.16.0.6 ping\n172.16.0.6", SHORT_MS),
          "guest reached host loopback after ensure");
    must_reach(&g, INTERNET, 8000, "guest -> internet after ensure");
    must_drop(&g, "10.1.0.1", 8000, "guest -> private after ensure");
    OK(smolvm_net_vm_ensure(&vm, &repaired, &e_));
    CHECK(repaired == 0, "ensure of an intact vm repaired %u", repaired);

    /* one rule deleted by hand is noticed and put back */
    sh("nft delete rule inet smolvm vm-guard handle $(nft -a list chain inet smolvm vm-guard | "
       "sed -n 's/.*\"vm:vmf\" # handle //p')");
    CHECK(missing_of(&vm) == SMOLVM_NET_MISSING_VM, "deleted rule: %u", missing_of(&vm));
    must_drop(&g, INTERNET, 8000, "guest without its guard rule");
    OK(smolvm_net_vm_ensure(&vm, &repaired, &e_));
    CHECK(repaired == SMOLVM_NET_MISSING_VM && missing_of(&vm) == 0, "repaired %u", repaired);
    must_reach(&g, INTERNET, 8000, "guest after its rule came back");
    /* a hand-made rule in a shared chain is noticed too (and removed) */
    sh("nft 'add rule inet smolvm forward iifname \"sv-*\" accept'");
    CHECK(missing_of(&vm) == SMOLVM_NET_MISSING_BASE, "foreign rule: %u", missing_of(&vm));
    OK(smolvm_net_vm_ensure(&vm, &repaired, &e_));
    CHECK(missing_of(&vm) == 0, "after repairing the shared part: %u", missing_of(&vm));
    must_drop(&g, "10.1.0.1", 8000, "guest -> private after the shared part came back");

    for (int i = 0; i < 20; i++) {
        int64_t t0 = now_us();

        OK(smolvm_net_vm_ensure(&vm, &repaired, &e_));
        t[i] = now_us() - t0;
    }
    fprintf(stderr, "  ensure of an intact vm (check only): median %.2f ms\n",
            (double)median(t, 20) / 1000.0);
}

static void test_flush(void **state)
{
    (void)state;
    run_isolated(body_flush);
}

/* ---- gc against parallel setups in other processes */

#define RACE_N 8

/* The "store": ids appended by starters, read by gc under the network lock. */
static char race_ids[RACE_N + 1][16];
static const char *race_live[RACE_N + 1];

static const char *const *race_live_fn(void *payload, int *failed)
{
    FILE *f = fopen(payload, "re");
    size_t k = 0;

    if (!f) {
        *failed = 1;
        return NULL;
    }
    (void)flock(fileno(f), LOCK_SH);
    while (k < RACE_N && fscanf(f, "%15s", race_ids[k]) == 1) {
        race_live[k] = race_ids[k];
        k++;
    }
    race_live[k] = NULL;
    fclose(f);
    return race_live;
}

static void body_gc_race(void)
{
    char reg[128], ids[RACE_N][16];
    pid_t pids[RACE_N];
    int go[2], rounds = 0, left = RACE_N;

    world();
    (void)snprintf(reg, sizeof(reg), "%s.%d", registry, (int)getpid());
    CHECK(close(open(reg, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) == 0, "registry");
    CHECK(pipe(go) == 0, "pipe");
    for (int i = 0; i < RACE_N; i++) {
        (void)snprintf(ids[i], sizeof(ids[i]), "race%d", i);
        if ((pids[i] = fork()) == 0) {
            smolvm_net_vm vm = SMOLVM_NET_VM_INIT;
            char ip[16];
            FILE *f;
            char c;

            close(go[1]);
            (void)read(go[0], &c, 1); /* all start at once */
            /* a starter records its VM before its network is set up (the store's
             * "starting" row), then sets it up */
            f = fopen(reg, "ae");
            (void)flock(fileno(f), LOCK_EX);
            fprintf(f, "%s\n", ids[i]);
            fclose(f);
            (void)snprintf(ip, sizeof(ip), "172.16.1.%d", i + 2);
            vm.vm_id = ids[i];
            vm.guest_ip = ip;
            vm.gateway = GATEWAY;
            vm.prefix = 16;
            OK(smolvm_net_vm_setup(&vm, NULL, &e_));
            _exit(0);
        }
    }
    close(go[0]);
    close(go[1]); /* go */
    while (left > 0 || rounds < 3) {
        OK(smolvm_net_gc_live(race_live_fn, reg, &e_));
        rounds++;
        for (int i = 0; i < RACE_N; i++) {
            int st;

            if (pids[i] > 0 && waitpid(pids[i], &st, WNOHANG) == pids[i]) {
                CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "setup of %s failed", ids[i]);
                pids[i] = 0;
                left--;
            }
        }
    }
    fprintf(stderr, "  gc ran %d times against %d parallel setups\n", rounds, RACE_N);
    for (int i = 0; i < RACE_N; i++) {
        smolvm_net_vm vm = SMOLVM_NET_VM_INIT;
        char ip[16], tap[SMOLVM_NET_IFNAMSIZ];

        (void)snprintf(ip, sizeof(ip), "172.16.1.%d", i + 2);
        vm.vm_id = ids[i];
        vm.guest_ip = ip;
        vm.gateway = GATEWAY;
        vm.prefix = 16;
        smolvm_net_tap_name(ids[i], tap);
        CHECK(link_exists(tap), "gc lost the TAP of %s", ids[i]);
        CHECK(missing_of(&vm) == 0, "gc lost rules of %s: %u", ids[i], missing_of(&vm));
    }
    /* nothing live any more: everything goes, the table too */
    CHECK(truncate(reg, 0) == 0, "truncate");
    OK(smolvm_net_gc_live(race_live_fn, reg, &e_));
    CHECK(rules_of(NULL) == -1, "table left after gc with none live");
    for (int i = 0; i < RACE_N; i++) {
        char tap[SMOLVM_NET_IFNAMSIZ];

        smolvm_net_tap_name(ids[i], tap);
        CHECK(!link_exists(tap), "TAP %s left", tap);
    }
    (void)unlink(reg);
}

static void test_gc_race(void **state)
{
    (void)state;
    run_isolated(body_gc_race);
}

static void body_gc(void)
{
    const char *live[] = {"vmb", NULL};
    smolvm_net_forward f = {UPLINK_HOST, 8085, 80};
    smolvm_net_vm b = SMOLVM_NET_VM_INIT;

    world();
    OK(smolvm_net_vm_up("vma", "172.16.0.2", GATEWAY, 16, "up0", &f, 1, NULL, &e_));
    OK(smolvm_net_vm_up("vmb", "172.16.0.3", GATEWAY, 16, "up0", NULL, 0, NULL, &e_));
    b.vm_id = "vmb";
    b.guest_ip = "172.16.0.3";
    b.gateway = GATEWAY;
    b.prefix = 16;
    b.uplink = "up0";
    /* someone else's link with our prefix but no smolvm alias is never touched */
    sh("ip tuntap add sv-other mode tap");
    OK(smolvm_net_gc(live, &e_));
    CHECK(!link_exists("sv-vma") && rules_of("vma") == 0, "gc kept a dead vm");
    CHECK(link_exists("sv-vmb") && missing_of(&b) == 0, "gc removed a live vm");
    CHECK(link_exists("sv-other"), "gc removed a link that is not ours");
    /* a live TAP of ours without any rules still keeps the table */
    {
        const char *ghost[] = {"ghost", NULL};

        sh("ip tuntap add sv-ghost mode tap && ip link set sv-ghost alias 'smolvm vm:ghost'");
        OK(smolvm_net_gc(ghost, &e_));
        CHECK(!link_exists("sv-vmb") && rules_of("vmb") == 0, "gc kept vmb");
        CHECK(rules_of(NULL) >= 0, "gc deleted the table while a smolvm TAP exists");
    }
    OK(smolvm_net_gc(NULL, &e_));
    CHECK(!link_exists("sv-ghost") && rules_of(NULL) == -1, "gc(none live) left the table");
    /* and the next VM recreates the table */
    OK(smolvm_net_vm_up("vmc", "172.16.0.4", GATEWAY, 16, "up0", NULL, 0, NULL, &e_));
    CHECK(rules_of("vmc") > 0, "table not recreated");
}

static void test_gc(void **state)
{
    (void)state;
    run_isolated(body_gc);
}

static void body_errors(void)
{
    char tap[SMOLVM_NET_IFNAMSIZ], out[4096];
    smolvm_net_forward taken = {NULL, 8090, 80}, ok = {UPLINK_HOST, 8091, 80};
    smolvm_net_forward many[SMOLVM_NET_MAX_FORWARDS + 1];
    const char *cidrs[SMOLVM_NET_MAX_ALLOW + 1];
    smolvm_net_egress eg = SMOLVM_NET_EGRESS_INIT;
    smolvm_net_vm vm = SMOLVM_NET_VM_INIT;
    smolvm_error *e = NULL;
    int r;

    world();
    (void)server_start(NULL, "127.0.0.1", 8090);
    /* a port some program listens on */
    r = smolvm_net_vm_up("vma", "172.16.0.2", GATEWAY, 16, NULL, &taken, 1, tap, &e);
    CHECK(r == SMOLVM_EEXIST, "taken port: %d", r);
    CHECK(strstr(smolvm_error_message(e), "'127.0.0.1:8090' is in use"), "message: %s",
          smolvm_error_message(e));
    fprintf(stderr, "  taken port: %s\n", smolvm_error_message(e));
    e = smolvm_error_free(e);
    CHECK(!link_exists("sv-vma") && rules_of("vma") <= 0, "half-made after taken port");
    /* a port another VM forwards: found in the nftables step, after the TAP exists */
    OK(smolvm_net_vm_up("vma", "172.16.0.2", GATEWAY, 16, NULL, &ok, 1, tap, &e_));
    r = smolvm_net_vm_up("vmb", "172.16.0.3", GATEWAY, 16, NULL, &ok, 1, tap, &e);
    CHECK(r == SMOLVM_EEXIST && strstr(smolvm_error_message(e), "forwarded to vm 'vma'"),
          "forward conflict: %d %s", r, e ? smolvm_error_message(e) : "");
    fprintf(stderr, "  forwarded: %s\n", smolvm_error_message(e));
    e = smolvm_error_free(e);
    CHECK(!link_exists("sv-vmb") && rules_of("vmb") == 0, "half-made after conflict");
    sh_out(out, sizeof(out), "ip route");
    CHECK(!strstr(out, "172.16.0.3"), "route left: %s", out);
    OK(smolvm_net_vm_up("vmb", "172.16.0.3", GATEWAY, 16, NULL, NULL, 0, tap, &e_));
    r = smolvm_net_forward_add("vmb", "172.16.0.3", "0.0.0.0", 8091, 80, &e);
    CHECK(r == SMOLVM_EEXIST, "0.0.0.0 overlaps " UPLINK_HOST ": %d", r);
    e = smolvm_error_free(e);
    /* at most SMOLVM_NET_MAX_FORWARDS, at setup and when added */
    for (int i = 0; i <= SMOLVM_NET_MAX_FORWARDS; i++)
        many[i] = (smolvm_net_forward){UPLINK_HOST, 10000 + i, 80};
    r = smolvm_net_vm_up("vmc", "172.16.0.4", GATEWAY, 16, NULL, many, SMOLVM_NET_MAX_FORWARDS + 1,
                         tap, &e);
    CHECK(r == SMOLVM_EINVAL && strstr(smolvm_error_message(e), "at most 64"), "65 forwards: %d",
          r);
    e = smolvm_error_free(e);
    OK(smolvm_net_vm_up("vmc", "172.16.0.4", GATEWAY, 16, NULL, many, SMOLVM_NET_MAX_FORWARDS, tap,
                        &e_));
    r = smolvm_net_forward_add("vmc", "172.16.0.4", UPLINK_HOST, 11000, 80, &e);
    CHECK(r == SMOLVM_ENOSPC, "65th forward added: %d", r);
    fprintf(stderr, "  65th forward: %s\n", smolvm_error_message(e));
    e = smolvm_error_free(e);
    /* a missing uplink */
    r = smolvm_net_vm_up("vmd", "172.16.0.5", GATEWAY, 16, "nope0", NULL, 0, tap, &e);
    CHECK(r == SMOLVM_ENET && strstr(smolvm_error_message(e), "'nope0'"), "uplink: %d", r);
    e = smolvm_error_free(e);
    /* bad arguments */
    CHECK(smolvm_net_vm_up("vmd", "172.17.0.3", GATEWAY, 16, NULL, NULL, 0, tap, NULL) ==
              SMOLVM_EINVAL,
          "guest outside the pool accepted");
    CHECK(smolvm_net_vm_up("Bad/Id", "172.16.0.3", GATEWAY, 16, NULL, NULL, 0, tap, NULL) ==
              SMOLVM_EINVAL,
          "bad id accepted");
    /* bad egress policies: each a clear error, nothing made */
    vm.vm_id = "vmd";
    vm.guest_ip = "172.16.0.5";
    vm.gateway = GATEWAY;
    vm.prefix = 16;
    vm.egress = &eg;
    {
        static const struct {
            const char *entry, *message;
        } bad[] = {
            {"10.0.0.1/8", "has host bits set (did you mean '10.0.0.0/8'?)"},
            {"10.0.0.0/33", "invalid allow entry '10.0.0.0/33'"},
            {"example.com", "invalid allow entry 'example.com'"},
            {"1.2.3.4/", "invalid allow entry '1.2.3.4/'"},
        };

        eg.mode = SMOLVM_NET_EGRESS_ALLOW;
        eg.n_allow = 1;
        for (size_t i = 0; i < SMOLVM_ARRAY_SIZE(bad); i++) {
            eg.allow = &bad[i].entry;
            r = smolvm_net_vm_setup(&vm, NULL, &e);
            CHECK(r == SMOLVM_EINVAL && strstr(smolvm_error_message(e), bad[i].message),
                  "allow '%s': %d %s", bad[i].entry, r, e ? smolvm_error_message(e) : "");
            if (i == 0)
                fprintf(stderr, "  bad allow entry: %s\n", smolvm_error_message(e));
            e = smolvm_error_free(e);
        }
    }
    for (int i = 0; i <= SMOLVM_NET_MAX_ALLOW; i++)
        cidrs[i] = "198.51.100.0/24";
    eg.allow = cidrs;
    eg.n_allow = SMOLVM_NET_MAX_ALLOW + 1;
    r = smolvm_net_vm_setup(&vm, NULL, &e);
    CHECK(r == SMOLVM_EINVAL && strstr(smolvm_error_message(e), "at most 256"), "257 entries: %d",
          r);
    e = smolvm_error_free(e);
    eg.mode = SMOLVM_NET_EGRESS_INTERNET;
    eg.n_allow = 1;
    r = smolvm_net_vm_setup(&vm, NULL, &e);
    CHECK(r == SMOLVM_EINVAL && strstr(smolvm_error_message(e), "needs mode 'allow'"),
          "allow list under internet: %d", r);
    e = smolvm_error_free(e);
    eg.mode = (smolvm_net_egress_mode)7;
    eg.n_allow = 0;
    CHECK(smolvm_net_vm_setup(&vm, NULL, NULL) == SMOLVM_EINVAL, "mode 7 accepted");
    CHECK(!link_exists("sv-vmd"), "half-made after bad policies");
    CHECK(smolvm_net_egress_mode_from_name("allow") == SMOLVM_NET_EGRESS_ALLOW &&
              smolvm_net_egress_mode_from_name("nope") == _SMOLVM_NET_EGRESS_INVALID &&
              strcmp(smolvm_net_egress_mode_name(SMOLVM_NET_EGRESS_NONE), "none") == 0,
          "mode names");
    /* runtime calls on a VM that is not up */
    eg.mode = SMOLVM_NET_EGRESS_NONE;
    r = smolvm_net_egress_set(&vm, &e);
    CHECK(r == SMOLVM_ENOENT, "set_egress of a vm that is down: %d", r);
    e = smolvm_error_free(e);
    r = smolvm_net_egress_allow("vmd", INTERNET, 30, &e);
    CHECK(r == SMOLVM_ENOENT, "allow on a vm that is down: %d", r);
    e = smolvm_error_free(e);
    CHECK(smolvm_net_egress_allow("vma", INTERNET, 0, NULL) == SMOLVM_EINVAL, "ttl 0 accepted");
    CHECK(smolvm_net_egress_allow("vma", "300.1.1.1", 30, NULL) == SMOLVM_EINVAL, "bad address");
    {
        char gw[16], mask[16];
        int prefix = 0;

        OK(smolvm_net_pool_info("172.16.0.0/16", gw, &prefix, mask, &e_));
        CHECK(strcmp(gw, GATEWAY) == 0 && prefix == 16 && strcmp(mask, "255.255.0.0") == 0,
              "pool info %s %d %s", gw, prefix, mask);
        CHECK(smolvm_net_pool_info("172.16.0.0/33", gw, &prefix, mask, NULL) == SMOLVM_EINVAL,
              "bad cidr accepted");
    }
    CHECK(smolvm_net_forward_proxied(NULL) && smolvm_net_forward_proxied("127.0.0.1") &&
              smolvm_net_forward_proxied("0.0.0.0") && !smolvm_net_forward_proxied(UPLINK_HOST),
          "forward_proxied");
}

static void test_errors(void **state)
{
    (void)state;
    run_isolated(body_errors);
}

/* Timings are enforced unless SMOLVM_TEST_NO_TIMING is set or the machine is busier
 * than its cores (other work then decides the numbers, not the code). */
static int timing_enforced(void)
{
    FILE *f = fopen("/proc/loadavg", "re");
    double load = 0;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);

    if (getenv("SMOLVM_TEST_NO_TIMING"))
        return 0;
    if (f && fscanf(f, "%lf", &load) == 1 && cores > 0 && load > (double)cores) {
        fprintf(stderr, "  load %.1f on %ld cores: timings shown, not enforced\n", load, cores);
        fclose(f);
        return 0;
    }
    if (f)
        fclose(f);
    return 1;
}

static void body_bench(void)
{
    enum { N = 20 };
    static const char *const allow[20] = {
        "203.0.113.0/28",  "203.0.113.16/28",  "203.0.113.32/28", "203.0.113.48/28",
        "203.0.113.64/28", "203.0.113.96/28",  "198.18.0.0/15",   "192.0.2.0/24",
        "8.8.8.8",         "1.1.1.1",          "9.9.9.9",         "151.101.0.0/16",
        "140.82.112.0/20", "185.199.108.0/22", "104.16.0.0/13",   "13.32.0.0/15",
        "52.84.0.0/15",    "99.84.0.0/16",     "143.204.0.0/16",  "205.251.192.0/19",
    };
    int64_t up[N], down[N], change[N], allow_t[N], check[N];
    smolvm_net_forward f[] = {{NULL, 8100, 22}, {UPLINK_HOST, 8101, 80}};
    smolvm_net_egress eg = SMOLVM_NET_EGRESS_INIT, inet = SMOLVM_NET_EGRESS_INIT;
    smolvm_net_vm vm = SMOLVM_NET_VM_INIT;
    unsigned missing;

    eg.mode = SMOLVM_NET_EGRESS_ALLOW;
    eg.allow = allow;
    eg.n_allow = 20;
    eg.dns = 1;
    vm.vm_id = "bench";
    vm.guest_ip = "172.16.0.2";
    vm.gateway = GATEWAY;
    vm.prefix = 16;
    vm.forwards = f;
    vm.n_forwards = 2;
    vm.egress = &eg;
    world();
    /* neighbours, so the table exists and listings are not empty */
    for (int i = 0; i < 3; i++) {
        char id[16], ip[16];

        (void)snprintf(id, sizeof(id), "other%d", i);
        (void)snprintf(ip, sizeof(ip), "172.16.0.%d", 200 + i);
        OK(smolvm_net_vm_up(id, ip, GATEWAY, 16, NULL, NULL, 0, NULL, &e_));
    }
    for (int i = 0; i < N; i++) {
        int64_t t0 = now_us(), t1;

        OK(smolvm_net_vm_setup(&vm, NULL, &e_));
        t1 = now_us();
        OK(smolvm_net_vm_down("bench", &e_));
        up[i] = t1 - t0;
        down[i] = now_us() - t1;
    }
    OK(smolvm_net_vm_setup(&vm, NULL, &e_));
    for (int i = 0; i < N; i++) {
        int64_t t0 = now_us();

        vm.egress = i % 2 ? &eg : &inet;
        OK(smolvm_net_egress_set(&vm, &e_));
        change[i] = now_us() - t0;
    }
    vm.egress = &eg;
    OK(smolvm_net_egress_set(&vm, &e_));
    for (int i = 0; i < N; i++) {
        char addr[16];
        int64_t t0 = now_us();

        (void)snprintf(addr, sizeof(addr), "151.102.0.%d", i + 1);
        OK(smolvm_net_egress_allow("bench", addr, 60, &e_));
        allow_t[i] = now_us() - t0;
    }
    for (int i = 0; i < N; i++) {
        int64_t t0 = now_us();

        OK(smolvm_net_vm_check(&vm, &missing, &e_));
        check[i] = now_us() - t0;
        CHECK(missing == 0, "bench vm not intact: %u", missing);
    }
    fprintf(stderr,
            "  medians of %d: setup (TAP, 2 forwards, 20-entry allow list) %.2f ms; "
            "down %.2f ms; egress_set %.2f ms; egress_allow %.3f ms; check %.2f ms\n",
            N, (double)median(up, N) / 1000.0, (double)median(down, N) / 1000.0,
            (double)median(change, N) / 1000.0, (double)median(allow_t, N) / 1000.0,
            (double)median(check, N) / 1000.0);
    /* Setup and policy changes are ours to keep fast (issue 12: <= 5 ms each).
     * Teardown is two kernel operations that each wait for an RCU grace period
     * (netdev unregister, nf_tables commit of deletions). */
    CHECK(!timing_enforced() ||
              (median(up, N) <= 5000 && median(change, N) <= 5000 && median(down, N) < 100000),
          "too slow: setup %lld us, egress_set %lld us (limit 5 ms), down %lld us (limit 100 ms)",
          (long long)median(up, N), (long long)median(change, N), (long long)median(down, N));
}

static void test_bench(void **state)
{
    (void)state;
    run_isolated(body_bench);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tap),    cmocka_unit_test(test_internet),
        cmocka_unit_test(test_none),   cmocka_unit_test(test_allow),
        cmocka_unit_test(test_spoof),  cmocka_unit_test(test_flush),
        cmocka_unit_test(test_gc),     cmocka_unit_test(test_gc_race),
        cmocka_unit_test(test_errors), cmocka_unit_test(test_bench),
    };
    pid_t pid;
    int status = 0;

    if (geteuid() != 0) {
        printf("skip: needs root (network namespaces, CAP_NET_ADMIN)\n");
        return 77;
    }
    if (system("command -v ip >/dev/null && command -v nsenter >/dev/null && "
               "command -v nft >/dev/null && command -v sysctl >/dev/null") != 0) {
        printf("skip: needs ip (iproute2), nsenter (util-linux), sysctl (procps) and nft to "
               "build and inspect the test namespaces\n");
        return 77;
    }
    pid = fork();
    if (pid == 0)
        _exit(unshare(CLONE_NEWNET) == 0 ? 0 : 1);
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0) {
        printf("skip: cannot create a network namespace here\n");
        return 77;
    }
    if (getenv("TEST_NET_ONLY")) /* e.g. TEST_NET_ONLY=test_allow */
        cmocka_set_test_filter(getenv("TEST_NET_ONLY"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
