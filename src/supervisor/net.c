/* SPDX-License-Identifier: MIT */
/*
 * The VM's network as its supervisor serves it (network "nat"; docs/supervisor.md and
 * docs/network.md). The library sets the TAP and the rules up before the supervisor
 * starts; from then on this keeps them so, and serves what the rules cannot:
 *
 *   - the DNS filter on the gateway (dns.h): the allow list's names ("*" for an
 *     "internet" VM), each A answer opened in the VM's dynamic set for its TTL
 *     (floored at TTL_FLOOR_S) before the guest sees it;
 *   - the proxy of loopback forwards (proxy.h): 127.0.0.1 is never NATed;
 *   - denied attempts, from NFLOG and from the filter's refusals, written to the
 *     store's event log as "egress-denied", at most EVENTS_RATE a second;
 *   - smolvm_net_vm_ensure every ENSURE_MS, so a flushed ruleset comes back;
 *   - the operations "egress", "forward" and "unforward" on agent.sock, which change
 *     the policy and the forwards here, so that what the repair compares against is
 *     always what the VM has now.
 */
#include "supervisor.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dns.h"
#include "egress.h"
#include "error.h"
#include "net/net.h"
#include "proxy.h"
#include "store.h"
#include "util.h"

#define ENSURE_MS 2000        /* how often the rules are checked (and repaired) */
#define TTL_FLOOR_S 30        /* a resolved address stays allowed at least this long */
#define EVENTS_RATE 10        /* denied attempts recorded per second ... */
#define EVENTS_BURST 20       /* ... with this burst */
#define EVENTS_PENDING_MAX 64 /* waiting to be written */
#define EVENTS_FLUSH_MS 1000  /* at most one write to the store per this */
#define EVENTS_KEEP 1000      /* denied attempts of the VM kept in the store */
#define NFLOG_BATCH 32
#define NFLOG_ROUNDS 4     /* batches read per wake-up */
#define LOG_EVERY_MS 10000 /* repeated failures are logged at most this often */

struct sv_net {
    sv *s;
    smolvm_sv_net *spec; /* s->spec->net: its egress and forwards are kept current */
    smolvm_net_egress egress;
    const char **cidrs; /* of spec->egress, as egress.allow points to them */
    smolvm_net_forward fwds[SMOLVM_FORWARDS_MAX];
    smolvm_net_vm vm; /* spec as the network module takes it */
    sv_proxy *proxy;
    sv_dns *dns;
    smolvm_nflog *nflog;
    int64_t ensure_timer;
    char ensure_failure[256];
    unsigned repairs;
    /* Denied attempts waiting to be written. */
    smolvm_store *store;
    char *pending[EVENTS_PENDING_MAX];
    int64_t pending_at[EVENTS_PENDING_MAX];
    size_t n_pending;
    double tokens;
    int64_t tokens_at, last_flush, flush_timer;
    uint64_t unrecorded;
    /* Answers whose address could not be opened. */
    uint64_t allow_failures;
    int64_t allow_logged_at;
};

/* Milliseconds with a fraction since t0 (CLOCK_MONOTONIC), for the logged timings. */
static double since_ms(const struct timespec *t0)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) / 1e6;
}

static sv_net *exiting; /* flushed by the atexit handler: the supervisor ends with exit() */

static const char *loopback_side(const char *addr)
{
    /* a forward on every address: its 127.0.0.1 side is the proxy's */
    return strcmp(addr, "0.0.0.0") == 0 ? "127.0.0.1" : addr;
}

static void rebuild_vm(sv_net *n)
{
    smolvm_net_vm vm = SMOLVM_NET_VM_INIT;

    for (size_t i = 0; i < n->spec->n_forwards; i++) {
        n->fwds[i].host_addr = n->spec->forwards[i].host_address;
        n->fwds[i].host_port = n->spec->forwards[i].host_port;
        n->fwds[i].guest_port = n->spec->forwards[i].guest_port;
    }
    vm.vm_id = n->s->spec->vm_id;
    vm.guest_ip = n->spec->guest_ip;
    vm.gateway = n->spec->gateway;
    vm.prefix = n->spec->prefix;
    vm.uplink = n->spec->uplink;
    vm.forwards = n->fwds;
    vm.n_forwards = n->spec->n_forwards;
    vm.egress = &n->egress;
    n->vm = vm;
}

static bool have_resolver(const sv_net *n)
{
    return n->spec->upstream[0] != '\0';
}

/* ---------------------------------------------------------------- events */

static smolvm_store *store_of(sv_net *n)
{
    _cleanup_free_ char *path = NULL;
    smolvm_error *e = NULL;

    if (n->store)
        return n->store;
    if (!(path = smolvm_strdupf("%s/smolvm.db", n->s->spec->state_dir)))
        return NULL;
    if (smolvm_store_open(&n->store, path, &e) < 0) {
        sv_log(n->s, "events: open the store: %s", smolvm_error_message(e));
        smolvm_error_free(e);
        n->store = NULL;
    }
    return n->store;
}

static void flush_events(sv_net *n)
{
    smolvm_store *st;
    smolvm_error *e = NULL;

    n->last_flush = sv_now_ms();
    if (n->unrecorded) {
        sv_log(n->s, "egress: %llu denied attempts over %d/s were not recorded",
               (unsigned long long)n->unrecorded, EVENTS_RATE);
        n->unrecorded = 0;
    }
    if (!n->n_pending)
        return;
    if ((st = store_of(n)) &&
        smolvm_store_events_append(st, n->s->spec->vm_id, "egress-denied", n->pending_at,
                                   (const char *const *)n->pending, n->n_pending, EVENTS_KEEP,
                                   &e) < 0) {
        sv_log(n->s, "events: %s", smolvm_error_message(e));
        smolvm_error_free(e);
    }
    for (size_t i = 0; i < n->n_pending; i++)
        free(n->pending[i]);
    n->n_pending = 0;
}

static void flush_due(sv_loop *loop, void *data)
{
    sv_net *n = data;

    (void)loop;
    n->flush_timer = 0;
    flush_events(n);
}

static void at_exit(void)
{
    if (exiting)
        flush_events(exiting);
}

static const char *proto_name(uint8_t p, char buf[8])
{
    switch (p) {
    case IPPROTO_TCP: return "tcp";
    case IPPROTO_UDP: return "udp";
    case IPPROTO_ICMP: return "icmp";
    default: (void)snprintf(buf, 8, "%u", p); return buf;
    }
}

/* One denied attempt: queued for the store, within the rate. name: the refused query's. */
static void record(sv_net *n, int64_t at, const char *dst, int port, const char *proto,
                   const char *name)
{
    int64_t now = sv_now_ms();
    json_t *o;
    char *text;

    n->tokens += (double)(now - n->tokens_at) * EVENTS_RATE / 1000.0;
    if (n->tokens > EVENTS_BURST)
        n->tokens = EVENTS_BURST;
    n->tokens_at = now;
    if (n->tokens < 1 || n->n_pending >= EVENTS_PENDING_MAX) {
        n->unrecorded++;
        return;
    }
    o = json_pack("{s:s, s:i, s:s}", "dst", dst, "port", port, "protocol", proto);
    if (o && name)
        (void)json_object_set_new(o, "name", json_string(name));
    text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text)
        return;
    n->tokens -= 1;
    n->pending_at[n->n_pending] = at;
    n->pending[n->n_pending++] = text;
    if (!n->flush_timer) {
        int64_t due = n->last_flush + EVENTS_FLUSH_MS;

        n->flush_timer = sv_loop_timer(n->s->loop, due > now ? due : now, flush_due, n);
        if (n->flush_timer < 0) {
            n->flush_timer = 0;
            flush_events(n);
        }
    }
}

static void nflog_io(sv_loop *loop, int fd, uint32_t events, void *data)
{
    sv_net *n = data;
    smolvm_net_denied recs[NFLOG_BATCH];
    smolvm_error *e = NULL;
    int got;

    (void)loop;
    (void)fd;
    (void)events;
    for (int round = 0; round < NFLOG_ROUNDS; round++) {
        if ((got = smolvm_nflog_read(n->nflog, recs, NFLOG_BATCH, &e)) < 0) {
            sv_log(n->s, "egress: %s", smolvm_error_message(e));
            smolvm_error_free(e);
            return;
        }
        for (int i = 0; i < got; i++) {
            char buf[8];

            record(n, recs[i].time_ms, recs[i].dst, recs[i].dst_port,
                   proto_name(recs[i].protocol, buf), NULL);
        }
        if (got < NFLOG_BATCH)
            return;
    }
}

/* ---------------------------------------------------------------- the DNS filter */

static void on_answer(const char *name, const char *addr, uint32_t ttl, void *data)
{
    sv_net *n = data;
    smolvm_error *e = NULL;
    unsigned t = ttl < TTL_FLOOR_S          ? TTL_FLOOR_S
                 : ttl > SMOLVM_NET_MAX_TTL ? SMOLVM_NET_MAX_TTL
                                            : ttl;

    /* Only an allow list consults the dynamic set; "internet" passes public addresses. */
    if (n->spec->egress.mode != SMOLVM_EGRESS_ALLOW)
        return;
    if (smolvm_net_egress_allow(n->s->spec->vm_id, addr, t, &e) < 0) {
        int64_t now = sv_now_ms();

        n->allow_failures++;
        if (now - n->allow_logged_at >= LOG_EVERY_MS) {
            sv_log(n->s, "egress: '%s' -> %s: %s (%llu such failures)", name, addr,
                   smolvm_error_message(e), (unsigned long long)n->allow_failures);
            n->allow_logged_at = now;
        }
        smolvm_error_free(e);
    }
}

static void on_refused(const char *name, uint16_t qtype, void *data)
{
    sv_net *n = data;

    (void)qtype;
    record(n, smolvm_wall_ms(), n->spec->gateway, 53, "udp", name);
}

/* The filter's list for policy p: NULL when p gets no DNS. *names is freed by the
 * caller (the strings are p's). */
static const char **filter_names(const smolvm_egress_policy *p, bool resolver, smolvm_error **err)
{
    static const char *const everything[] = {"*", NULL};
    const char **cidrs = NULL, **names = NULL, **out;

    if (!resolver || p->mode == SMOLVM_EGRESS_NONE)
        return NULL;
    if (p->mode == SMOLVM_EGRESS_INTERNET) {
        if (!(out = malloc(sizeof(everything))))
            (void)smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        else
            memcpy(out, everything, sizeof(everything));
        return out;
    }
    if (smolvm_egress_policy_split(p, &cidrs, NULL, &names, NULL, err) < 0)
        return NULL;
    free(cidrs);
    return names;
}

/* Make the filter serve p's names (started if it is not running); a policy without
 * DNS leaves it as it is (stopped after the rules changed). */
static int dns_apply(sv_net *n, const smolvm_egress_policy *p, smolvm_error **err)
{
    sv_dns_options o = SV_DNS_OPTIONS_INIT;
    _cleanup_free_ const char **names = NULL;
    int r;

    if (!have_resolver(n) || p->mode == SMOLVM_EGRESS_NONE)
        return 0;
    if (!(names = filter_names(p, true, err)))
        return SMOLVM_ENOMEM;
    if (n->dns)
        return sv_dns_set_allow(n->dns, names, err);
    o.bind_addr = n->spec->gateway;
    o.ifname = n->spec->tap;
    o.upstream = n->spec->upstream;
    o.allow = names;
    o.on_answer = on_answer;
    o.on_refused = on_refused;
    o.data = n;
    if ((r = sv_dns_new(&n->dns, n->s->loop, &o, err)) < 0)
        return r;
    return 0;
}

/* ---------------------------------------------------------------- repair */

static void ensure_due(sv_loop *loop, void *data);

static void arm_ensure(sv_net *n)
{
    n->ensure_timer = sv_loop_timer(n->s->loop, sv_now_ms() + ENSURE_MS, ensure_due, n);
    if (n->ensure_timer < 0) {
        n->ensure_timer = 0;
        sv_log(n->s, "network: cannot arm the repair timer; rules are no longer checked");
    }
}

static void ensure_due(sv_loop *loop, void *data)
{
    sv_net *n = data;
    smolvm_error *e = NULL;
    unsigned repaired = 0;

    (void)loop;
    n->ensure_timer = 0;
    /* stopping: the library takes the network down, which must not be undone */
    if (n->s->state == SV_STOPPING || n->s->vmm_exited)
        return;
    if (smolvm_net_vm_ensure(&n->vm, &repaired, &e) < 0) {
        if (strcmp(n->ensure_failure, smolvm_error_message(e)) != 0) {
            (void)snprintf(n->ensure_failure, sizeof(n->ensure_failure), "%s",
                           smolvm_error_message(e));
            sv_log(n->s, "network: %s", n->ensure_failure);
        }
        smolvm_error_free(e);
    } else if (repaired) {
        char what[96];
        smolvm_store *st;

        n->ensure_failure[0] = '\0';
        n->repairs++;
        (void)snprintf(what, sizeof(what), "%s%s%s%s",
                       repaired & SMOLVM_NET_MISSING_TABLE ? " table" : "",
                       repaired & SMOLVM_NET_MISSING_BASE ? " shared-rules" : "",
                       repaired & SMOLVM_NET_MISSING_VM ? " vm-rules" : "",
                       repaired & SMOLVM_NET_MISSING_LINK ? " link" : "");
        sv_log(n->s, "network: repaired:%s", what);
        if ((st = store_of(n)))
            (void)smolvm_store_event(st, n->s->spec->vm_id, "network-repaired", what + 1, NULL);
    } else {
        n->ensure_failure[0] = '\0';
    }
    arm_ensure(n);
}

/* ---------------------------------------------------------------- start, stop */

static void report_failure(sv *s, smolvm_error *e)
{
    char line[1200];
    ssize_t w;

    sv_log(s, "%s", smolvm_error_message(e));
    if (s->status_fd >= 0) {
        (void)snprintf(line, sizeof(line), "error %d %s\n", smolvm_error_code(e),
                       smolvm_error_message(e));
        for (char *p = line + 6; *p && p < line + sizeof(line) - 2; p++)
            if (*p == '\n' && p[1])
                *p = ' ';
        do
            w = write(s->status_fd, line, strlen(line));
        while (w < 0 && errno == EINTR);
        (void)close(s->status_fd);
        s->status_fd = -1;
    }
    smolvm_error_free(e);
}

static sv_net *net_free(sv_net *n)
{
    if (!n)
        return NULL;
    if (exiting == n)
        exiting = NULL;
    if (n->ensure_timer)
        sv_loop_cancel(n->s->loop, n->ensure_timer);
    if (n->flush_timer)
        sv_loop_cancel(n->s->loop, n->flush_timer);
    flush_events(n);
    if (n->nflog)
        sv_loop_del(n->s->loop, smolvm_nflog_fd(n->nflog));
    n->nflog = smolvm_nflog_free(n->nflog);
    n->dns = sv_dns_free(n->dns);
    n->proxy = sv_proxy_free(n->proxy);
    n->store = smolvm_store_free(n->store);
    free(n->cidrs);
    free(n);
    return NULL;
}

int sv_net_start(sv *s)
{
    smolvm_sv_net *spec = s->spec->net;
    smolvm_error *e = NULL;
    sv_net *n;
    struct timespec t0;
    size_t proxied = 0;
    int r;

    if (!spec)
        return 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (!(n = calloc(1, sizeof(*n)))) {
        report_failure(s, (smolvm_err(&e, SMOLVM_ENOMEM, "out of memory"), e));
        return -1;
    }
    n->s = s;
    n->spec = spec;
    n->tokens = EVENTS_BURST;
    n->tokens_at = sv_now_ms();
    if ((r = smolvm_egress_policy_net(&n->egress, &n->cidrs, &spec->egress, have_resolver(n), &e)) <
        0)
        goto fail;
    rebuild_vm(n);
    if ((r = sv_proxy_new(&n->proxy, s->loop, NULL, &e)) < 0)
        goto fail;
    for (size_t i = 0; i < spec->n_forwards; i++) {
        const smolvm_sv_fwd *f = &spec->forwards[i];

        if (!smolvm_net_forward_proxied(f->host_address))
            continue;
        if ((r = sv_proxy_add(n->proxy, loopback_side(f->host_address), f->host_port,
                              spec->guest_ip, f->guest_port, &e)) < 0)
            goto fail;
        proxied++;
    }
    if ((r = smolvm_nflog_open(&n->nflog, smolvm_net_log_group(spec->guest_ip), s->spec->vm_id,
                               &e)) < 0)
        goto fail;
    if ((r = sv_loop_add(s->loop, smolvm_nflog_fd(n->nflog), EPOLLIN, nflog_io, n)) < 0) {
        r = smolvm_err_errno(&e, -r, "nflog: watch the socket");
        goto fail;
    }
    if ((r = dns_apply(n, &spec->egress, &e)) < 0)
        goto fail;
    arm_ensure(n);
    s->net = n;
    exiting = n;
    (void)atexit(at_exit);
    sv_log(s, "network: egress %s, dns %s, %zu forwards (%zu proxied), up in %.3f ms",
           smolvm_egress_mode_to_string(spec->egress.mode), n->dns ? "filtered" : "none",
           spec->n_forwards, proxied, since_ms(&t0));
    return 0;
fail:
    (void)smolvm_err_wrap(&e, "network of vm '%s'", s->spec->vm_id);
    net_free(n);
    report_failure(s, e);
    return -1;
}

/* ---------------------------------------------------------------- operations */

static int op_egress(sv_net *n, json_t *req, json_t **reply, smolvm_error **err)
{
    smolvm_egress_policy p = {0};
    smolvm_net_egress egress;
    const char **cidrs = NULL;
    smolvm_net_vm vm;
    struct timespec t0;
    int r;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    if ((r = smolvm_egress_policy_from_json(&p, json_object_get(req, "egress"), err)) < 0)
        return r;
    if ((r = smolvm_egress_policy_resolve(&p, SMOLVM_NET_NAT, err)) < 0 ||
        (r = smolvm_egress_policy_net(&egress, &cidrs, &p, have_resolver(n), err)) < 0)
        goto out;
    /* the filter's names first, then the rules in one batch */
    if ((r = dns_apply(n, &p, err)) < 0)
        goto out;
    vm = n->vm;
    vm.egress = &egress;
    if ((r = smolvm_net_egress_set(&vm, err)) < 0) {
        (void)dns_apply(n, &n->spec->egress, NULL); /* the old names back */
        goto out;
    }
    if (p.mode == SMOLVM_EGRESS_NONE || !have_resolver(n))
        n->dns = sv_dns_free(n->dns);
    smolvm_egress_policy_clear(&n->spec->egress);
    n->spec->egress = p;
    memset(&p, 0, sizeof(p));
    free(n->cidrs);
    n->cidrs = TAKE_PTR(cidrs);
    n->egress = egress;
    rebuild_vm(n);
    sv_log(n->s, "egress: now %s (%zu allow entries) after %.3f ms",
           smolvm_egress_mode_to_string(n->spec->egress.mode), n->spec->egress.n_allow,
           since_ms(&t0));
    *reply = json_pack("{s:f}", "ms", since_ms(&t0));
out:
    free(cidrs);
    smolvm_egress_policy_clear(&p);
    return r;
}

static int find_forward(const sv_net *n, const char *addr, int port)
{
    for (size_t i = 0; i < n->spec->n_forwards; i++)
        if (n->spec->forwards[i].host_port == port &&
            strcmp(n->spec->forwards[i].host_address, addr) == 0)
            return (int)i;
    return -1;
}

static int op_forward(sv_net *n, bool add, json_t *req, json_t **reply, smolvm_error **err)
{
    const char *addr = json_string_value(json_object_get(req, "host_address"));
    json_int_t hp = json_integer_value(json_object_get(req, "host_port"));
    json_int_t gp = json_integer_value(json_object_get(req, "guest_port"));
    const char *vm_id = n->s->spec->vm_id;
    struct in_addr a;
    int i, r;

    if (!addr || strlen(addr) > 15 || inet_pton(AF_INET, addr, &a) != 1 || hp < 1 || hp > 65535)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "forward: expected host_address (IPv4) and "
                          "host_port 1..65535");
    i = find_forward(n, addr, (int)hp);
    if (!add) {
        if (i < 0)
            return smolvm_err(err, SMOLVM_ENOENT, "no forward '%s:%lld'", addr, (long long)hp);
        if ((r = smolvm_net_forward_remove(vm_id, n->spec->guest_ip, addr, (int)hp, 0, err)) < 0)
            return r;
        if (smolvm_net_forward_proxied(addr))
            (void)sv_proxy_remove(n->proxy, loopback_side(addr), (int)hp);
        n->spec->forwards[i] = n->spec->forwards[--n->spec->n_forwards];
        rebuild_vm(n);
        *reply = json_object();
        return 0;
    }
    if (gp < 1 || gp > 65535)
        return smolvm_err(err, SMOLVM_EINVAL, "forward: expected guest_port 1..65535");
    if (i >= 0)
        return smolvm_err(err, SMOLVM_EEXIST, "host port '%s:%lld' is already forwarded", addr,
                          (long long)hp);
    if (n->spec->n_forwards >= SMOLVM_FORWARDS_MAX)
        return smolvm_err(err, SMOLVM_ENOSPC, "vm '%s' has %d forwards (at most %d)", vm_id,
                          SMOLVM_FORWARDS_MAX, SMOLVM_FORWARDS_MAX);
    /* NAT for every other address (no rule for loopback), the proxy for loopback */
    if ((r = smolvm_net_forward_add(vm_id, n->spec->guest_ip, addr, (int)hp, (int)gp, err)) < 0)
        return r;
    if (smolvm_net_forward_proxied(addr) &&
        (r = sv_proxy_add(n->proxy, loopback_side(addr), (int)hp, n->spec->guest_ip, (int)gp,
                          err)) < 0) {
        (void)smolvm_net_forward_remove(vm_id, n->spec->guest_ip, addr, (int)hp, 0, NULL);
        return r;
    }
    i = (int)n->spec->n_forwards++;
    (void)snprintf(n->spec->forwards[i].host_address, sizeof(n->spec->forwards[i].host_address),
                   "%s", addr);
    n->spec->forwards[i].host_port = (int)hp;
    n->spec->forwards[i].guest_port = (int)gp;
    rebuild_vm(n);
    *reply = json_object();
    return 0;
}

bool sv_net_op(sv *s, const char *op, json_t *req, json_t **reply, smolvm_error **err)
{
    bool egress = strcmp(op, "egress") == 0, fwd = strcmp(op, "forward") == 0,
         unfwd = strcmp(op, "unforward") == 0;

    *reply = NULL;
    if (!egress && !fwd && !unfwd)
        return false;
    if (!s->net)
        (void)smolvm_err(err, SMOLVM_ESTATE, "%s: the vm has no network 'nat'", op);
    else if (s->state == SV_STOPPING)
        (void)smolvm_err(err, SMOLVM_ESTATE, "%s: the vm is stopping", op);
    else if (egress)
        (void)op_egress(s->net, req, reply, err);
    else
        (void)op_forward(s->net, fwd, req, reply, err);
    return true;
}
