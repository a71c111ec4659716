/* SPDX-License-Identifier: MIT */
/*
 * Host-side networking (src/lib/net) with real packets, only inside network
 * namespaces this test creates: every test runs in a child that unshare()s a fresh
 * namespace (gone with the process), playing the host. Helper processes unshare
 * further namespaces: "out" (the world beyond the uplink, with a TCP server) and
 * guests (a veth whose host end is named like the VM's TAP, configured by the module
 * exactly as a TAP would be). Nothing touches the real host's links or nftables.
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
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    } while (0)

#define UPLINK_HOST "10.99.0.1"
#define UPLINK_OUT "10.99.0.2"
#define GATEWAY "172.16.0.1"
#define METADATA "169.254.169.254"

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
    char cmd[1024];
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

/* A TCP server answering every connection with the peer address it saw. */
typedef struct server_arg {
    const char *addr;
    int port;
    int ready_fd;
} server_arg;

static void server_main(void *p)
{
    server_arg *a = p;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)a->port)};
    int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);

    (void)inet_pton(AF_INET, a->addr, &sa.sin_addr);
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 16) < 0) {
        perror("server bind");
        _exit(2);
    }
    (void)write(a->ready_fd, "x", 1);
    for (;;) {
        struct sockaddr_in peer;
        socklen_t len = sizeof(peer);
        int c = accept(fd, (struct sockaddr *)&peer, &len);
        char text[32];

        if (c < 0)
            continue;
        (void)inet_ntop(AF_INET, &peer.sin_addr, text, sizeof(text));
        (void)strcat(text, "\n");
        (void)write(c, text, strlen(text));
        close(c);
    }
}

static pid_t server_start(const ns *n, const char *addr, int port)
{
    int p[2];
    char c;
    server_arg a = {addr, port, -1};
    pid_t pid;

    CHECK(pipe(p) == 0, "pipe");
    a.ready_fd = p[1];
    pid = in_ns(n, server_main, &a);
    close(p[1]);
    CHECK(read(p[0], &c, 1) == 1, "server on %s:%d did not start", addr, port);
    close(p[0]);
    return pid;
}

/* Connect (non-blocking, 2 s deadline) and read the server's line. */
typedef struct probe_arg {
    const char *addr;
    int port;
    int out_fd;
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
    if (poll(&pf, 1, 2000) != 1)
        _exit(4); /* timed out: dropped */
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
static int probe(const ns *n, const char *addr, int port, char seen[32])
{
    int p[2], status = 0;
    probe_arg a = {addr, port, -1};
    pid_t pid;
    ssize_t len;

    CHECK(pipe(p) == 0, "pipe");
    a.out_fd = p[1];
    pid = in_ns(n, probe_main, &a);
    close(p[1]);
    CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
    len = read(p[0], seen, 31);
    close(p[0]);
    seen[len > 0 ? len : 0] = '\0';
    if (len > 0 && seen[len - 1] == '\n')
        seen[len - 1] = '\0';
    return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
}

/* ---------------------------------------------------------------- the world */

static ns out_ns;

/* In the test's own namespace: lo up, uplink veth "up0" to the "out" namespace with
 * a default route through it, a server there on UPLINK_OUT:8000 and METADATA:80. */
static void world(void)
{
    sh("ip link set lo up");
    out_ns = ns_new();
    sh("ip link add up0 type veth peer name eth0 netns %d", (int)out_ns.pid);
    sh("ip addr add " UPLINK_HOST "/24 dev up0 && ip link set up0 up");
    sh("ip route add default via " UPLINK_OUT);
    sh("nsenter --net=%s sh -c 'ip link set lo up && ip link set eth0 up && "
       "ip addr add " UPLINK_OUT "/24 dev eth0 && ip addr add " METADATA "/32 dev eth0'",
       out_ns.path);
    (void)server_start(&out_ns, UPLINK_OUT, 8000);
    (void)server_start(&out_ns, METADATA, 80);
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

static void guest_up(const char *vm_id, const char *ip, const smolvm_net_forward *f, size_t n)
{
    char tap[SMOLVM_NET_IFNAMSIZ];

    smolvm_net_tap_name(vm_id, tap);
    OK(smolvm_net_vm_up_link(tap, vm_id, ip, GATEWAY, 16, NULL, f, n, &e_));
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
    int status = 0;
    pid_t pid = fork();

    assert_true(pid >= 0);
    if (pid == 0) {
        (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (unshare(CLONE_NEWNET) < 0) {
            perror("unshare(CLONE_NEWNET)");
            _exit(1);
        }
        alarm(60); /* a hung test ends here, with its namespaces */
        body();
        /* helpers die with us (PDEATHSIG); kill our process group's servers */
        _exit(0);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("isolated test failed (status 0x%x)", status);
}

/* ---------------------------------------------------------------- tests */

static void body_traffic(void)
{
    smolvm_net_forward fa[] = {{UPLINK_HOST, 8080, 80}, {NULL, 8081, 80}};
    char seen[32];
    ns a, b;
    int r;

    world();
    a = guest("vma", "172.16.0.2");
    b = guest("vmb", "172.16.0.3");
    guest_up("vma", "172.16.0.2", fa, 2);
    guest_up("vmb", "172.16.0.3", NULL, 0);
    (void)server_start(NULL, GATEWAY, 9000);
    (void)server_start(NULL, UPLINK_HOST, 9001);

    /* egress, masqueraded: the outside server sees the uplink's address */
    r = probe(&a, UPLINK_OUT, 8000, seen);
    CHECK(r == 0, "guest a -> outside: step %d", r);
    CHECK(strcmp(seen, UPLINK_HOST) == 0, "outside saw '%s'", seen);
    r = probe(&b, UPLINK_OUT, 8000, seen);
    CHECK(r == 0 && strcmp(seen, UPLINK_HOST) == 0, "guest b -> outside: %d '%s'", r, seen);

    /* forward on the uplink address, from outside: the guest sees the real client */
    r = probe(&out_ns, UPLINK_HOST, 8080, seen);
    CHECK(r == 0, "outside -> " UPLINK_HOST ":8080: step %d", r);
    CHECK(strcmp(seen, UPLINK_OUT) == 0, "guest saw '%s'", seen);
    /* the host itself, through the same forward and through the loopback one */
    r = probe(NULL, UPLINK_HOST, 8080, seen);
    CHECK(r == 0, "host -> " UPLINK_HOST ":8080: step %d", r);
    r = probe(NULL, "127.0.0.1", 8081, seen);
    CHECK(r == 0, "host -> 127.0.0.1:8081: step %d", r);
    CHECK(strcmp(seen, GATEWAY) == 0, "guest saw '%s' for a loopback forward", seen);
    /* a loopback forward is not reachable from outside, on any address */
    r = probe(&out_ns, UPLINK_HOST, 8081, seen);
    CHECK(r != 0, "outside reached the loopback-only forward");

    /* the host reaches guests directly (what SSH does): positive control for b's server */
    r = probe(NULL, "172.16.0.3", 80, seen);
    CHECK(r == 0 && strcmp(seen, GATEWAY) == 0, "host -> guest b: %d '%s'", r, seen);
    /* VM <-> VM: dropped both ways, directly and through a forward */
    r = probe(&a, "172.16.0.3", 80, seen);
    CHECK(r == 4, "guest a -> guest b: step %d (want a timeout)", r);
    r = probe(&b, "172.16.0.2", 80, seen);
    CHECK(r == 4, "guest b -> guest a: step %d", r);
    r = probe(&b, UPLINK_HOST, 8080, seen);
    CHECK(r == 4, "guest b -> a's forward: step %d", r);

    /* host services: the host reaches them (control), guests do not */
    r = probe(NULL, GATEWAY, 9000, seen);
    CHECK(r == 0, "host -> its own " GATEWAY ":9000: step %d", r);
    r = probe(&a, GATEWAY, 9000, seen);
    CHECK(r == 4, "guest -> host " GATEWAY ":9000: step %d", r);
    r = probe(&a, UPLINK_HOST, 9001, seen);
    CHECK(r == 4, "guest -> host " UPLINK_HOST ":9001: step %d", r);

    /* link-local (cloud metadata): the host reaches it (control), guests do not */
    r = probe(NULL, METADATA, 80, seen);
    CHECK(r == 0, "host -> " METADATA ": step %d", r);
    r = probe(&a, METADATA, 80, seen);
    CHECK(r == 4, "guest -> " METADATA ": step %d", r);

    /* a forward added later works, and its removal stops it */
    OK(smolvm_net_forward_add("vmb", "172.16.0.3", NULL, 8082, 80, &e_));
    r = probe(NULL, "127.0.0.1", 8082, seen);
    CHECK(r == 0, "host -> 127.0.0.1:8082 after forward_add: step %d", r);
    OK(smolvm_net_forward_remove("vmb", NULL, NULL, 8082, 0, &e_));
    r = probe(NULL, "127.0.0.1", 8082, seen);
    CHECK(r == 5, "forward removed but 127.0.0.1:8082 still answers: step %d", r);
    OK(smolvm_net_forward_remove("vmb", NULL, NULL, 8082, 0, &e_));

    /* down removes exactly a's rules and link; b keeps working */
    {
        int before_b = rules_of("vmb"), before_a = rules_of("vma");

        CHECK(before_a == 6 && before_b == 3, "rules: a %d b %d", before_a, before_b);
        OK(smolvm_net_vm_down("vma", &e_));
        CHECK(rules_of("vma") == 0, "a's rules left: %d", rules_of("vma"));
        CHECK(rules_of("vmb") == before_b, "b's rules changed: %d", rules_of("vmb"));
        CHECK(!link_exists("sv-vma"), "a's link left");
        CHECK(link_exists("sv-vmb"), "b's link gone");
        OK(smolvm_net_vm_down("vma", &e_)); /* idempotent */
        r = probe(&out_ns, UPLINK_HOST, 8080, seen);
        CHECK(r != 0, "a's forward still answers after down");
        r = probe(&b, UPLINK_OUT, 8000, seen);
        CHECK(r == 0, "guest b lost egress after a's down: step %d", r);
    }
}

static void test_traffic(void **state)
{
    (void)state;
    run_isolated(body_traffic);
}

static void body_tap(void)
{
    char tap[SMOLVM_NET_IFNAMSIZ], out[4096], path[128];
    struct ifreq ifr = {0};
    int fd;

    world();
    OK(smolvm_net_available(&e_));
    OK(smolvm_net_vm_up("vm-0a1b2c3d", "172.16.0.9", GATEWAY, 16, NULL, NULL, 0, tap, &e_));
    CHECK(strcmp(tap, "sv-vm-0a1b2c3d") == 0, "tap name '%s'", tap);
    /* a persistent TAP without packet info, with the gateway and the route */
    (void)snprintf(path, sizeof(path), "ip -d link show dev %s", tap);
    sh_out(out, sizeof(out), path);
    CHECK(strstr(out, "tun type tap pi off") && strstr(out, "persist on"), "link: %s", out);
    sh_out(out, sizeof(out),
           "ip -o addr show dev sv-vm-0a1b2c3d; ip route; ip -d link show "
           "dev sv-vm-0a1b2c3d");
    CHECK(strstr(out, "inet " GATEWAY "/32"), "no gateway address: %s", out);
    CHECK(strstr(out, "172.16.0.9 dev sv-vm-0a1b2c3d"), "no route: %s", out);
    CHECK(strstr(out, "alias smolvm vm:vm-0a1b2c3d"), "no alias: %s", out);
    sh_out(out, sizeof(out), "cat /proc/sys/net/ipv4/ip_forward");
    CHECK(out[0] == '1', "ip_forward '%s'", out);
    /* QEMU can attach to it the way it does (vnet_hdr probed and requested) */
    fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    CHECK(fd >= 0, "open tun");
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    memcpy(ifr.ifr_name, tap, strlen(tap));
    CHECK(ioctl(fd, TUNSETIFF, &ifr) == 0, "attach like QEMU: %s", strerror(errno));
    close(fd);
    CHECK(rules_of("vm-0a1b2c3d") == 3, "rules %d", rules_of("vm-0a1b2c3d"));
    /* a long id gets a hashed, still deterministic name */
    smolvm_net_tap_name("a-very-long-vm-identifier", tap);
    CHECK(strlen(tap) <= 15 && strncmp(tap, "sv-a-v.", 7) == 0, "long name '%s'", tap);
    OK(smolvm_net_vm_down("vm-0a1b2c3d", &e_));
    CHECK(!link_exists("sv-vm-0a1b2c3d"), "tap left after down");
    CHECK(rules_of("vm-0a1b2c3d") == 0, "rules left after down");
    OK(smolvm_net_vm_down("vm-0a1b2c3d", &e_));
}

static void test_tap(void **state)
{
    (void)state;
    run_isolated(body_tap);
}

static void body_gc(void)
{
    char tap[SMOLVM_NET_IFNAMSIZ];
    const char *live[] = {"vmb", NULL};
    smolvm_net_forward f = {NULL, 8085, 80};

    world();
    OK(smolvm_net_vm_up("vma", "172.16.0.2", GATEWAY, 16, "up0", &f, 1, tap, &e_));
    OK(smolvm_net_vm_up("vmb", "172.16.0.3", GATEWAY, 16, "up0", NULL, 0, tap, &e_));
    /* someone else's link with our prefix but no smolvm alias is never touched */
    sh("ip tuntap add sv-other mode tap");
    OK(smolvm_net_gc(live, &e_));
    CHECK(!link_exists("sv-vma") && rules_of("vma") == 0, "gc kept a dead vm");
    CHECK(link_exists("sv-vmb") && rules_of("vmb") == 3, "gc removed a live vm");
    CHECK(link_exists("sv-other"), "gc removed a link that is not ours");
    OK(smolvm_net_gc(NULL, &e_));
    CHECK(!link_exists("sv-vmb") && rules_of(NULL) == -1, "gc(none live) left the table");
    /* and the next VM recreates the table */
    OK(smolvm_net_vm_up("vmc", "172.16.0.4", GATEWAY, 16, "up0", NULL, 0, tap, &e_));
    CHECK(rules_of("vmc") == 3, "table not recreated");
}

static void test_gc(void **state)
{
    (void)state;
    run_isolated(body_gc);
}

static void body_errors(void)
{
    char tap[SMOLVM_NET_IFNAMSIZ], out[4096];
    smolvm_net_forward taken = {NULL, 8090, 80}, ok = {NULL, 8091, 80};
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
    /* a port another VM forwards */
    OK(smolvm_net_vm_up("vma", "172.16.0.2", GATEWAY, 16, NULL, &ok, 1, tap, &e_));
    r = smolvm_net_vm_up("vmb", "172.16.0.3", GATEWAY, 16, NULL, &ok, 1, tap, &e);
    CHECK(r == SMOLVM_EEXIST && strstr(smolvm_error_message(e), "forwarded to vm 'vma'"),
          "forward conflict: %d %s", r, e ? smolvm_error_message(e) : "");
    fprintf(stderr, "  forwarded: %s\n", smolvm_error_message(e));
    e = smolvm_error_free(e);
    CHECK(!link_exists("sv-vmb") && rules_of("vmb") == 0, "half-made after conflict");
    r = smolvm_net_forward_add("vmb", "172.16.0.3", "0.0.0.0", 8091, 80, &e);
    CHECK(r == SMOLVM_EEXIST, "0.0.0.0 overlaps 127.0.0.1: %d", r);
    e = smolvm_error_free(e);
    /* a missing uplink */
    r = smolvm_net_vm_up("vmb", "172.16.0.3", GATEWAY, 16, "nope0", NULL, 0, tap, &e);
    CHECK(r == SMOLVM_ENET && strstr(smolvm_error_message(e), "'nope0'"), "uplink: %d", r);
    e = smolvm_error_free(e);
    /* failure after the TAP exists (nftables step): the TAP goes again */
    sh("nft flush chain inet smolvm input && nft delete chain inet smolvm input");
    r = smolvm_net_vm_up("vmb", "172.16.0.3", GATEWAY, 16, NULL, NULL, 0, tap, &e);
    CHECK(r == SMOLVM_ENET, "incomplete table: %d", r);
    fprintf(stderr, "  mid-setup: %s\n", smolvm_error_message(e));
    e = smolvm_error_free(e);
    CHECK(!link_exists("sv-vmb"), "TAP left behind after the nftables step failed");
    sh_out(out, sizeof(out), "ip route");
    CHECK(!strstr(out, "172.16.0.3"), "route left: %s", out);
    /* bad arguments */
    CHECK(smolvm_net_vm_up("vmc", "172.17.0.3", GATEWAY, 16, NULL, NULL, 0, tap, NULL) ==
              SMOLVM_EINVAL,
          "guest outside the pool accepted");
    CHECK(smolvm_net_vm_up("Bad/Id", "172.16.0.3", GATEWAY, 16, NULL, NULL, 0, tap, NULL) ==
              SMOLVM_EINVAL,
          "bad id accepted");
    {
        char gw[16], mask[16];
        int prefix = 0;

        OK(smolvm_net_pool_info("172.16.0.0/16", gw, &prefix, mask, &e_));
        CHECK(strcmp(gw, GATEWAY) == 0 && prefix == 16 && strcmp(mask, "255.255.0.0") == 0,
              "pool info %s %d %s", gw, prefix, mask);
        CHECK(smolvm_net_pool_info("172.16.0.0/33", gw, &prefix, mask, NULL) == SMOLVM_EINVAL,
              "bad cidr accepted");
    }
}

static void test_errors(void **state)
{
    (void)state;
    run_isolated(body_errors);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

    return (x > y) - (x < y);
}

static void body_bench(void)
{
    enum { N = 20 };
    int64_t up[N], down[N];
    smolvm_net_forward f[] = {{NULL, 8100, 22}, {UPLINK_HOST, 8101, 80}};
    char tap[SMOLVM_NET_IFNAMSIZ];
    struct timespec t0, t1, t2;

    world();
    /* a neighbour VM, so the table exists and listings are not empty */
    OK(smolvm_net_vm_up("other", "172.16.0.200", GATEWAY, 16, NULL, NULL, 0, tap, &e_));
    for (int i = 0; i < N; i++) {
        clock_gettime(CLOCK_MONOTONIC, &t0);
        OK(smolvm_net_vm_up("bench", "172.16.0.2", GATEWAY, 16, NULL, f, 2, tap, &e_));
        clock_gettime(CLOCK_MONOTONIC, &t1);
        OK(smolvm_net_vm_down("bench", &e_));
        clock_gettime(CLOCK_MONOTONIC, &t2);
        up[i] = (t1.tv_sec - t0.tv_sec) * 1000000 + (t1.tv_nsec - t0.tv_nsec) / 1000;
        down[i] = (t2.tv_sec - t1.tv_sec) * 1000000 + (t2.tv_nsec - t1.tv_nsec) / 1000;
    }
    qsort(up, N, sizeof(up[0]), cmp_i64);
    qsort(down, N, sizeof(down[0]), cmp_i64);
    fprintf(stderr, "  vm_up (TAP + 2 forwards): median %.2f ms, max %.2f ms\n",
            (double)up[N / 2] / 1000.0, (double)up[N - 1] / 1000.0);
    fprintf(stderr, "  vm_down: median %.2f ms, max %.2f ms\n", (double)down[N / 2] / 1000.0,
            (double)down[N - 1] / 1000.0);
    /* Setup is ours to keep fast. Teardown is two kernel operations that each wait
     * for an RCU grace period (netdev unregister, nf_tables commit of deletions):
     * `ip link del` and `nft delete rule` alone take 7-20 ms each on this machine. */
    CHECK(getenv("SMOLVM_TEST_NO_TIMING") || (up[N / 2] < 20000 && down[N / 2] < 100000),
          "too slow: up %lld us (limit 20 ms), down %lld us (limit 100 ms)", (long long)up[N / 2],
          (long long)down[N / 2]);
}

static void test_bench(void **state)
{
    (void)state;
    run_isolated(body_bench);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tap),    cmocka_unit_test(test_traffic), cmocka_unit_test(test_gc),
        cmocka_unit_test(test_errors), cmocka_unit_test(test_bench),
    };
    pid_t pid;
    int status = 0;

    if (geteuid() != 0) {
        printf("skip: needs root (network namespaces, CAP_NET_ADMIN)\n");
        return 77;
    }
    if (system("command -v ip >/dev/null && command -v nsenter >/dev/null && "
               "command -v nft >/dev/null") != 0) {
        printf("skip: needs ip (iproute2), nsenter (util-linux) and nft to build and inspect "
               "the test namespaces\n");
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
    return cmocka_run_group_tests(tests, NULL, NULL);
}
