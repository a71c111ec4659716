/* SPDX-License-Identifier: MIT */
/*
 * bench/egress: what an egress policy costs a NAT VM, through the public C API with a
 * real guest:
 *   - setup of the VM's network with a 20-entry allow list (10 CIDRs, 10 names), as
 *     start does it: the library's part (TAP, link, one nftables batch) from its debug
 *     log, the supervisor's (DNS filter, proxy, NFLOG reader) from supervisor.log;
 *   - a runtime policy change (smolvm_vm_set_egress between two 20-entry lists): the
 *     whole call, and the supervisor's part (names, then one batch) from its log;
 *   - the DNS filter's added latency, seen from the guest: the same query for a name
 *     of the test's resolver, asked of the gateway (the filter, which asks the
 *     resolver) and of the resolver directly (egress "internet" lets both through), in
 *     alternating batches (-r rounds of -q queries each way).
 * Prints median/min/max of each.
 *
 *   tests/integration/nat-netns.sh --exec build/bench-egress [-s STARTS] [-n CHANGES]
 *                                                              [-q QUERIES] [-r ROUNDS]
 * Needs root and the namespaces nat-netns.sh makes (its resolver 198.51.100.53 knows
 * allowed.test); never run it on a machine's own network.
 */
#define _GNU_SOURCE
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "smolvm.h"

#define MAXN 1000
#define UPSTREAM "198.51.100.53"

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

static void report(const char *what, double *v, int n)
{
    if (n <= 0) {
        printf("%-58s (no samples)\n", what);
        return;
    }
    qsort(v, (size_t)n, sizeof(*v), cmp);
    printf("%-58s median %8.3f ms  min %8.3f  max %8.3f  (n=%d)\n", what,
           n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2, v[0], v[n - 1], n);
}

static void die(const char *what, smolvm_error *e)
{
    fprintf(stderr, "bench-egress: %s: %s\n", what, e ? smolvm_error_message(e) : "failed");
    exit(1);
}

/* The library's "network up (...) in N ms (setup M ms)" lines. */
static double up_ms[MAXN], setup_ms[MAXN];
static int n_up;

static void on_log(int level, const char *msg, void *payload)
{
    const char *p = strstr(msg, ": network up (");
    double v, w;

    (void)level;
    (void)payload;
    if (p && (p = strstr(p, ") in ")) && sscanf(p, ") in %lf ms (setup %lf ms)", &v, &w) == 2 &&
        n_up < MAXN) {
        up_ms[n_up] = v;
        setup_ms[n_up++] = w;
    }
}

/* Every "<marker> ... <after> N ms" number in the VM's supervisor.log past offset *off. */
static int log_numbers(const char *dir, const char *marker, const char *after, long *off,
                       double *out, int max)
{
    char path[4096], line[1024];
    FILE *f;
    int n = 0;

    (void)snprintf(path, sizeof(path), "%s/supervisor.log", dir);
    if (!(f = fopen(path, "re")))
        return 0;
    (void)fseek(f, *off, SEEK_SET);
    while (fgets(line, sizeof(line), f)) {
        const char *p = strstr(line, marker), *q;
        double v;

        if (p && (q = strstr(p, after)) && sscanf(q + strlen(after), "%lf ms", &v) == 1 && n < max)
            out[n++] = v;
    }
    *off = ftell(f);
    fclose(f);
    return n;
}

static const char *vm_dir(smolvm_vm *vm, char *buf, size_t size)
{
    char *info = NULL;
    json_t *j;

    if (smolvm_vm_info_json(&info, vm, NULL) < 0)
        return NULL;
    j = json_loads(info, 0, NULL);
    (void)snprintf(buf, size, "%s", json_string_value(json_object_get(j, "dir")));
    json_decref(j);
    free(info);
    return buf;
}

/* The guest's clock ticks in steps of a few ms under TCG: each sample is the mean of a
 * batch of n sequential queries, timed as a whole. */
static const char GUEST_DNS[] =
    "import random, socket, struct, sys, time\n"
    "def q(s, server, name):\n"
    "    global qid\n"
    "    qid = (qid + 1) & 0xffff\n"
    "    m = struct.pack('!HHHHHH', qid, 0x0100, 1, 0, 0, 0)\n"
    "    m += b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + "
    "b'\\0\\0\\1\\0\\1'\n"
    "    s.sendto(m, (server, 53)); r = s.recv(1500)\n"
    "    assert r[:2] == m[:2] and r[3] & 15 == 0 and r[7] >= 1, 'bad answer'\n"
    "def batch(server, n):\n"
    "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)\n"
    "    t = time.perf_counter()\n"
    "    for i in range(n): q(s, server, 'allowed.test')\n"
    "    return (time.perf_counter() - t) * 1000 / n\n"
    "qid = 0\n"
    "gw, up, n, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])\n"
    "batch(gw, 5); batch(up, 5)\n"
    "for r in range(rounds):\n"
    "    print('filter %.4f' % batch(gw, n))\n"
    "    print('direct %.4f' % batch(up, n))\n";

/* ---- the same queries timed on the host, on the VM's TAP: from the guest's query to
 * the answer the guest gets, both seen on the wire, so the guest's own clock and
 * scheduling (coarse under TCG) do not count. */

static int tap_open(const char *tap)
{
    struct sockaddr_ll sa = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL)};
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL)), on = 1, buf = 32 << 20;

    if (fd < 0)
        return -1;
    sa.sll_ifindex = (int)if_nametoindex(tap);
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof(buf));
    if (!sa.sll_ifindex || setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof(on)) < 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Drain fd: for each DNS query (to gateway or upstream) and its answer (same id, from
 * that server), the wire time in ms, into via_filter / direct. */
static void tap_times(int fd, const char *gateway, double *via_filter, int *nf, double *direct,
                      int *nd)
{
    static double sent[2][65536];
    uint32_t gw = inet_addr(gateway), up = inet_addr(UPSTREAM);
    unsigned char frame[2048];
    char ctl[256];

    memset(sent, 0, sizeof(sent));
    for (;;) {
        struct iovec iov = {frame, sizeof(frame)};
        struct msghdr mh = {
            .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof(ctl)};
        ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT);
        const unsigned char *ip = frame + 14, *udp;
        struct timespec ts = {0};
        uint32_t src, dst;
        uint16_t sport, dport, id;
        double t;

        if (n < 0)
            return;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS)
                memcpy(&ts, CMSG_DATA(c), sizeof(ts));
        if (n < 14 + 20 + 8 + 12 || (ip[0] >> 4) != 4 || ip[9] != IPPROTO_UDP)
            continue;
        udp = ip + (ip[0] & 15) * 4;
        if (udp + 8 + 12 > frame + n)
            continue;
        memcpy(&src, ip + 12, 4);
        memcpy(&dst, ip + 16, 4);
        sport = (uint16_t)(udp[0] << 8 | udp[1]);
        dport = (uint16_t)(udp[2] << 8 | udp[3]);
        id = (uint16_t)(udp[8] << 8 | udp[9]);
        t = ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
        if (dport == 53 && (dst == gw || dst == up)) {
            sent[dst == gw][id] = t;
        } else if (sport == 53 && (src == gw || src == up) && sent[src == gw][id] > 0) {
            if (src == gw && *nf < MAXN)
                via_filter[(*nf)++] = t - sent[1][id];
            else if (src == up && *nd < MAXN)
                direct[(*nd)++] = t - sent[0][id];
            sent[src == gw][id] = 0;
        }
    }
}

int main(int argc, char **argv)
{
    static const char *const list_a[] = {"198.51.100.2/32",  "198.51.100.3/32", "198.51.100.16/28",
                                         "198.51.100.32/27", "203.0.113.0/25",  "203.0.113.128/26",
                                         "192.0.2.0/24",     "198.18.0.0/15",   "10.1.0.1",
                                         "172.20.0.0/16",    "allowed.test",    "*.cdn.test",
                                         "n1.test",          "n2.test",         "n3.test",
                                         "*.n4.test",        "n5.test",         "n6.test",
                                         "n7.test",          "n8.test",         NULL};
    static const char *const list_b[] = {"198.51.100.4/32",  "198.51.100.5/32", "198.51.100.64/28",
                                         "198.51.100.96/27", "203.0.113.0/26",  "203.0.113.192/26",
                                         "192.0.2.128/25",   "198.18.0.0/16",   "10.1.0.2",
                                         "172.21.0.0/16",    "allowed.test",    "*.cdn.test",
                                         "m1.test",          "m2.test",         "m3.test",
                                         "*.m4.test",        "m5.test",         "m6.test",
                                         "m7.test",          "m8.test",         NULL};
    static double sv_setup[MAXN], change[MAXN], sv_change[MAXN], filt[MAXN], direct[MAXN];
    static double wire_f[MAXN], wire_d[MAXN];
    int n_wf = 0, n_wd = 0, tapfd;
    char gw[16] = "";
    int starts = 3, changes = 50, queries = 50, rounds = 31, n_sv = 0, n_sv_change = 0, n_f = 0,
        n_d = 0;
    static double diff[MAXN];
    smolvm_ctx_options co = SMOLVM_CTX_OPTIONS_INIT;
    smolvm_vm_options vo = SMOLVM_VM_OPTIONS_INIT;
    smolvm_egress a = {SMOLVM_EGRESS_ALLOW, list_a}, b = {SMOLVM_EGRESS_ALLOW, list_b};
    smolvm_egress inet = {SMOLVM_EGRESS_INTERNET, NULL};
    smolvm_ctx *ctx = NULL;
    smolvm_vm *vm = NULL;
    smolvm_error *e = NULL;
    smolvm_run_result *r = NULL;
    char dir[4096], cmd[256];
    long off = 0;
    int opt;

    while ((opt = getopt(argc, argv, "s:n:q:r:")) != -1) {
        if (opt == 's')
            starts = atoi(optarg);
        else if (opt == 'n')
            changes = atoi(optarg);
        else if (opt == 'q')
            queries = atoi(optarg);
        else if (opt == 'r')
            rounds = atoi(optarg);
        else {
            fprintf(stderr,
                    "usage: bench-egress [-s STARTS] [-n CHANGES] [-q QUERIES] [-r ROUNDS]\n");
            return 2;
        }
    }
    if (starts < 1 || starts > 20 || changes < 1 || changes > MAXN || queries < 1 ||
        queries > MAXN || rounds < 1 || rounds > MAXN) {
        fprintf(stderr, "bench-egress: -s 1..20, -n, -q and -r 1..%d\n", MAXN);
        return 2;
    }
    co.log = on_log;
    co.log_level = SMOLVM_LOG_DEBUG;
    if (smolvm_ctx_new(&ctx, &co, &e) < 0)
        die("context", e);
    vo.id = "eg-bench";
    vo.network = SMOLVM_NET_NAT;
    vo.memory_mib = 256;
    vo.vcpus = 1;
    vo.egress = a;
    if (smolvm_vm_create(&vm, ctx, &vo, &e) < 0)
        die("create", e);
    if (!vm_dir(vm, dir, sizeof(dir)))
        die("info", NULL);
    for (int i = 0; i < starts; i++) {
        if (smolvm_vm_start(vm, 180000, &e) < 0)
            die("start", e);
        n_sv += log_numbers(dir, "network: egress", " up in ", &off, sv_setup + n_sv, MAXN - n_sv);
        if (i + 1 < starts && smolvm_vm_stop(vm, 10000, &e) < 0)
            die("stop", e);
    }
    for (int i = 0; i < changes; i++) {
        double t0 = now_ms();

        if (smolvm_vm_set_egress(vm, i % 2 ? &a : &b, &e) < 0)
            die("set_egress", e);
        change[i] = now_ms() - t0;
    }
    n_sv_change = log_numbers(dir, "egress: now", " after ", &off, sv_change, MAXN);
    if (smolvm_vm_set_egress(vm, &inet, &e) < 0)
        die("set_egress internet", e);
    if (smolvm_vm_write_file(vm, "/root/dnsbench.py", GUEST_DNS, sizeof(GUEST_DNS) - 1, &e) < 0)
        die("write the guest's script", e);
    (void)snprintf(cmd, sizeof(cmd),
                   "python3 /root/dnsbench.py $(ip -4 route show default | awk '{print $3}') "
                   "%s %d %d",
                   UPSTREAM, queries, rounds);
    /* the gateway, as the guest's default route says */
    if (smolvm_vm_run(&r, vm, "ip -4 route show default | awk '{print $3}'", NULL, &e) < 0)
        die("read the guest's gateway", e);
    (void)snprintf(gw, sizeof(gw), "%.*s", (int)strcspn(r->out, "\n"), r->out);
    r = smolvm_run_result_free(r);
    if ((tapfd = tap_open("sv-eg-bench")) < 0) {
        perror("bench-egress: packet socket on sv-eg-bench");
        return 1;
    }
    if (smolvm_vm_run(&r, vm, cmd, NULL, &e) < 0)
        die("run the guest's queries", e);
    tap_times(tapfd, gw, wire_f, &n_wf, wire_d, &n_wd);
    close(tapfd);
    if (r->exit_code != 0) {
        fprintf(stderr, "bench-egress: guest queries failed: %s%s\n", r->out, r->err);
        return 1;
    }
    for (char *line = strtok(r->out, "\n"); line; line = strtok(NULL, "\n")) {
        double v;

        if (sscanf(line, "filter %lf", &v) == 1 && n_f < MAXN)
            filt[n_f++] = v;
        else if (sscanf(line, "direct %lf", &v) == 1 && n_d < MAXN)
            direct[n_d++] = v;
    }
    r = smolvm_run_result_free(r);

    printf("egress, one VM, QEMU TCG guest (the host's other load shows up in the numbers)\n");
    report("setup, library, all: leases, ports, uplink, resolver, setup", up_ms, n_up);
    report("setup, library: smolvm_net_vm_setup (TAP, link, one batch)", setup_ms, n_up);
    report("setup, supervisor: DNS filter + proxy + NFLOG reader", sv_setup, n_sv);
    report("policy change: smolvm_vm_set_egress, 20 <-> 20 entries", change, changes);
    report("policy change, supervisor: names + one batch", sv_change, n_sv_change);
    /* each round's two batches ran back to back: their difference is the filter's
     * cost with the host's load of that moment */
    for (int i = 0; i < n_f && i < n_d; i++)
        diff[i] = filt[i] - direct[i];
    report("DNS from the guest, to the resolver (mean of a batch)", direct, n_d);
    report("DNS from the guest, through the filter (mean of a batch)", filt, n_f);
    report("added by the filter (per round, filter - resolver)", diff, n_f < n_d ? n_f : n_d);
    report("DNS on the TAP, query to answer: resolver directly", wire_d, n_wd);
    report("DNS on the TAP, query to answer: through the filter", wire_f, n_wf);
    {
        /* both sorted by report() */
        double mf = n_wf ? wire_f[n_wf / 2] : 0, md = n_wd ? wire_d[n_wd / 2] : 0;

        printf("%-58s %8.3f ms (difference of the medians on the TAP)\n", "added by the filter",
               mf - md);
    }
    if (smolvm_vm_delete(vm, &e) < 0)
        die("delete", e);
    smolvm_vm_free(vm);
    smolvm_ctx_free(ctx);
    return 0;
}
