/* SPDX-License-Identifier: MIT */
/* The VM's DNS filter (dns.h): queries from the guest, the allow list, upstream
 * queries and the answers rebuilt for the guest. Messages through ldns only. */
#include "dns.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ldns/ldns.h>

#include "error.h"

#define MSG_MAX 4096  /* largest message read from either side */
#define GUEST_UDP 512 /* a guest without EDNS takes this much */
#define UPSTREAM_EDNS 1232
#define MAX_CHAIN 16   /* CNAME hops followed */
#define MAX_ANSWERS 64 /* records passed on */
#define NAME_MAX_LEN 253
#define DEFAULT_TIMEOUT 3000
#define DEFAULT_PENDING 128

typedef struct pending {
    struct pending *next;
    sv_dns *d;
    int fd; /* connected to the upstream */
    int64_t timer;
    uint16_t id;     /* of our upstream query */
    ldns_pkt *query; /* the guest's, parsed */
    char name[NAME_MAX_LEN + 1];
    struct sockaddr_in from;
} pending;

struct sv_dns {
    sv_loop *loop;
    int fd;
    struct sockaddr_in upstream;
    char **allow;
    size_t n_allow;
    int allow_all;
    sv_dns_answer_fn on_answer;
    sv_dns_refused_fn on_refused;
    void *data;
    int timeout_ms;
    size_t max_pending, n_pending;
    pending *pending;
    double tokens; /* refusal reports */
    int64_t tokens_at;
    sv_dns_stats stats;
};

/* ---------------------------------------------------------------- the allow list */

static void free_list(char **l, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(l[i]);
    free(l);
}

/* A name or "*.name", lowercase, without a final dot, labels of [a-z0-9_-]. */
static int check_entry(const char *e, char **out, smolvm_error **err)
{
    size_t len = e ? strlen(e) : 0, label = 0;
    const char *name = e;
    char *copy;

    if (len == 1 && e[0] == '*') {
        *out = strdup("*");
        return *out ? 0 : smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    if (len > 2 && e[0] == '*' && e[1] == '.')
        name = e + 2;
    if (len && e[len - 1] == '.')
        len--;
    if (len == 0 || len > NAME_MAX_LEN)
        goto bad;
    for (const char *p = name; p < e + len; p++) {
        if (*p == '.') {
            if (label == 0 || p[-1] == '-')
                goto bad;
            label = 0;
        } else if (isalnum((unsigned char)*p) || *p == '_' || (*p == '-' && label > 0)) {
            if (++label > 63)
                goto bad;
        } else {
            goto bad;
        }
    }
    if (label == 0 || e[len - 1] == '-')
        goto bad;
    if (!(copy = strndup(e, len)))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    for (char *p = copy; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    *out = copy;
    return 0;
bad:
    return smolvm_err(err, SMOLVM_EINVAL,
                      "dns: invalid allowed name '%s' (expected a name like 'pypi.org', a "
                      "pattern like '*.github.com', or '*')",
                      e ? e : "(null)");
}

int sv_dns_set_allow(sv_dns *d, const char *const *allow, smolvm_error **err)
{
    size_t n = 0;
    char **l;
    int all = 0, r;

    while (allow && allow[n])
        if (++n > SV_DNS_MAX_ALLOW)
            return smolvm_err(err, SMOLVM_EINVAL, "dns: too many allowed names (at most %d)",
                              SV_DNS_MAX_ALLOW);
    if (!(l = calloc(n ? n : 1, sizeof(*l))))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if ((r = check_entry(allow[i], &l[i], err)) < 0) {
            free_list(l, i);
            return r;
        }
        if (strcmp(l[i], "*") == 0)
            all = 1;
    }
    free_list(d->allow, d->n_allow);
    d->allow = l;
    d->n_allow = n;
    d->allow_all = all;
    return 0;
}

static int allowed(const sv_dns *d, const char *name)
{
    size_t len = strlen(name);

    if (d->allow_all)
        return 1;
    for (size_t i = 0; i < d->n_allow; i++) {
        const char *a = d->allow[i];

        if (a[0] == '*' && a[1] == '.') {
            size_t sl = strlen(a + 1); /* ".suffix" */

            if (len > sl && strcmp(name + len - sl, a + 1) == 0)
                return 1;
        } else if (strcmp(name, a) == 0) {
            return 1;
        }
    }
    return 0;
}

/* The name of a dname as allow entries are written; 0 if it cannot be one (escaped
 * bytes, too long). */
static int name_of(const ldns_rdf *dname, char out[NAME_MAX_LEN + 1])
{
    char *s = ldns_rdf2str(dname);
    size_t len;
    int ok = 0;

    if (!s)
        return 0;
    len = strlen(s);
    if (len && s[len - 1] == '.')
        s[--len] = '\0';
    if (len <= NAME_MAX_LEN && !strchr(s, '\\')) {
        for (size_t i = 0; i <= len; i++)
            out[i] = (char)tolower((unsigned char)s[i]);
        ok = 1;
    }
    free(s);
    return ok;
}

/* ---------------------------------------------------------------- answers to the guest */

static void send_pkt(sv_dns *d, ldns_pkt *p, const struct sockaddr_in *to, size_t max)
{
    uint8_t *wire = NULL;
    size_t size = 0;

    if (ldns_pkt2wire(&wire, p, &size) != LDNS_STATUS_OK)
        return;
    if (size > max) { /* too big for the guest: the header and question, truncated */
        ldns_rr_list *none = ldns_rr_list_new();

        free(wire);
        wire = NULL;
        ldns_rr_list_deep_free(ldns_pkt_answer(p));
        ldns_pkt_set_answer(p, none);
        ldns_pkt_set_ancount(p, 0);
        ldns_pkt_set_tc(p, true);
        if (!none || ldns_pkt2wire(&wire, p, &size) != LDNS_STATUS_OK || size > max) {
            free(wire);
            return;
        }
    }
    (void)sendto(d->fd, wire, size, MSG_DONTWAIT, (const struct sockaddr *)to, sizeof(*to));
    free(wire);
}

/* How much the guest can take: its EDNS size (512..MSG_MAX), else 512. */
static size_t guest_max(const ldns_pkt *q)
{
    size_t s = q && ldns_pkt_edns(q) ? ldns_pkt_edns_udp_size(q) : GUEST_UDP;

    return s < GUEST_UDP ? GUEST_UDP : s > MSG_MAX ? MSG_MAX : s;
}

/* An answer with rcode and no records; q may be NULL (only the id is known). */
static void reply_rcode(sv_dns *d, const ldns_pkt *q, uint16_t id, ldns_pkt_rcode rcode,
                        const struct sockaddr_in *to)
{
    ldns_pkt *p = ldns_pkt_new();

    if (!p)
        return;
    ldns_pkt_set_id(p, q ? ldns_pkt_id(q) : id);
    ldns_pkt_set_qr(p, true);
    ldns_pkt_set_opcode(p, LDNS_PACKET_QUERY);
    ldns_pkt_set_rcode(p, (uint8_t)rcode);
    if (q) {
        ldns_pkt_set_rd(p, ldns_pkt_rd(q));
        ldns_pkt_set_ra(p, true);
        if (ldns_pkt_qdcount(q) == 1)
            (void)ldns_pkt_push_rr(p, LDNS_SECTION_QUESTION,
                                   ldns_rr_clone(ldns_rr_list_rr(ldns_pkt_question(q), 0)));
    }
    send_pkt(d, p, to, guest_max(q));
    ldns_pkt_free(p);
}

/* ---------------------------------------------------------------- upstream */

static void pending_free(pending *q)
{
    sv_dns *d = q->d;

    for (pending **pp = &d->pending; *pp; pp = &(*pp)->next)
        if (*pp == q) {
            *pp = q->next;
            break;
        }
    if (q->timer > 0)
        sv_loop_cancel(d->loop, q->timer);
    if (q->fd >= 0) {
        sv_loop_del(d->loop, q->fd);
        (void)close(q->fd);
    }
    ldns_pkt_free(q->query);
    free(q);
    d->n_pending--;
}

static void fail_pending(pending *q)
{
    q->d->stats.servfail++;
    reply_rcode(q->d, q->query, 0, LDNS_RCODE_SERVFAIL, &q->from);
    pending_free(q);
}

static void on_timeout(sv_loop *loop, void *data)
{
    pending *q = data;

    (void)loop;
    q->timer = 0;
    fail_pending(q);
}

/* The upstream's answer, checked, as the guest's: the question as the guest asked it,
 * the records on the CNAME chain from our name (the rest dropped), A records reported
 * first. NULL when the answer does not answer our question. */
static ldns_pkt *rebuild(pending *q, const ldns_pkt *up)
{
    const ldns_rr *gq = ldns_rr_list_rr(ldns_pkt_question(q->query), 0);
    const ldns_rr *uq;
    ldns_rr_type qtype = ldns_rr_get_type(gq);
    const ldns_rdf *current = ldns_rr_owner(gq);
    ldns_rr_list *an = ldns_pkt_answer(up);
    size_t n = an ? ldns_rr_list_rr_count(an) : 0, passed = 0;
    ldns_pkt *p;

    if (ldns_pkt_qdcount(up) != 1 || !(uq = ldns_rr_list_rr(ldns_pkt_question(up), 0)) ||
        ldns_dname_compare(ldns_rr_owner(uq), ldns_rr_owner(gq)) != 0 ||
        ldns_rr_get_type(uq) != qtype || ldns_rr_get_class(uq) != LDNS_RR_CLASS_IN ||
        !ldns_pkt_qr(up) || ldns_pkt_get_opcode(up) != LDNS_PACKET_QUERY)
        return NULL;
    if (!(p = ldns_pkt_new()))
        return NULL;
    ldns_pkt_set_id(p, ldns_pkt_id(q->query));
    ldns_pkt_set_qr(p, true);
    ldns_pkt_set_opcode(p, LDNS_PACKET_QUERY);
    ldns_pkt_set_rd(p, ldns_pkt_rd(q->query));
    ldns_pkt_set_ra(p, ldns_pkt_ra(up));
    ldns_pkt_set_rcode(p, (uint8_t)ldns_pkt_get_rcode(up));
    ldns_pkt_set_tc(p, ldns_pkt_tc(up));
    (void)ldns_pkt_push_rr(p, LDNS_SECTION_QUESTION, ldns_rr_clone(gq));
    if (ldns_pkt_tc(up)) /* truncated upstream: pass TC on, without partial records */
        return p;
    for (int hop = 0; hop <= MAX_CHAIN; hop++) {
        const ldns_rdf *next = NULL;

        for (size_t i = 0; i < n && passed < MAX_ANSWERS; i++) {
            const ldns_rr *rr = ldns_rr_list_rr(an, i);
            ldns_rr_type t = ldns_rr_get_type(rr);
            const ldns_rdf *rd = ldns_rr_rd_count(rr) ? ldns_rr_rdf(rr, 0) : NULL;

            if (ldns_rr_get_class(rr) != LDNS_RR_CLASS_IN || !rd ||
                ldns_dname_compare(ldns_rr_owner(rr), current) != 0)
                continue;
            if (t == LDNS_RR_TYPE_CNAME && qtype != LDNS_RR_TYPE_CNAME) {
                if (!next && ldns_rdf_get_type(rd) == LDNS_RDF_TYPE_DNAME) {
                    next = rd;
                    (void)ldns_pkt_push_rr(p, LDNS_SECTION_ANSWER, ldns_rr_clone(rr));
                    passed++;
                }
                continue;
            }
            if (t != qtype)
                continue;
            if (t == LDNS_RR_TYPE_A) {
                char addr[INET_ADDRSTRLEN];

                if (ldns_rdf_size(rd) != 4 ||
                    !inet_ntop(AF_INET, ldns_rdf_data(rd), addr, sizeof(addr)))
                    continue;
                /* before the guest can know the address, it is allowed */
                if (q->d->on_answer)
                    q->d->on_answer(q->name, addr, ldns_rr_ttl(rr), q->d->data);
                q->d->stats.answered_a++;
            }
            (void)ldns_pkt_push_rr(p, LDNS_SECTION_ANSWER, ldns_rr_clone(rr));
            passed++;
        }
        if (!next)
            break;
        current = next;
    }
    return p;
}

static void on_upstream(sv_loop *loop, int fd, uint32_t events, void *data)
{
    pending *q = data;
    uint8_t buf[MSG_MAX];
    ldns_pkt *up = NULL, *answer;
    ssize_t n;

    (void)loop;
    (void)events;
    n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT | MSG_TRUNC);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n < 0 || (size_t)n > sizeof(buf) || ldns_wire2pkt(&up, buf, (size_t)n) != LDNS_STATUS_OK) {
        ldns_pkt_free(up);
        q->d->stats.malformed++;
        fail_pending(q); /* refused by the host, unreadable, too big */
        return;
    }
    if (ldns_pkt_id(up) != q->id) { /* not the answer to our query: keep waiting */
        ldns_pkt_free(up);
        return;
    }
    answer = rebuild(q, up);
    ldns_pkt_free(up);
    if (!answer) {
        q->d->stats.malformed++;
        fail_pending(q);
        return;
    }
    send_pkt(q->d, answer, &q->from, guest_max(q->query));
    ldns_pkt_free(answer);
    pending_free(q);
}

/* Ask the upstream a fresh query for the guest's question. Takes query. */
static void forward(sv_dns *d, ldns_pkt *query, const char *name, const struct sockaddr_in *from)
{
    const ldns_rr *gq = ldns_rr_list_rr(ldns_pkt_question(query), 0);
    pending *q = NULL;
    ldns_pkt *up = NULL;
    uint8_t *wire = NULL;
    size_t size = 0;

    if (d->n_pending >= d->max_pending || !(q = calloc(1, sizeof(*q))))
        goto fail;
    q->d = d;
    q->fd = -1;
    q->query = query;
    q->from = *from;
    (void)snprintf(q->name, sizeof(q->name), "%s", name);
    q->next = d->pending;
    d->pending = q;
    d->n_pending++;
    up = ldns_pkt_query_new(ldns_rdf_clone(ldns_rr_owner(gq)), ldns_rr_get_type(gq),
                            LDNS_RR_CLASS_IN, LDNS_RD);
    if (!up)
        goto fail_q;
    ldns_pkt_set_random_id(up);
    ldns_pkt_set_edns_udp_size(up, UPSTREAM_EDNS);
    q->id = ldns_pkt_id(up);
    if (ldns_pkt2wire(&wire, up, &size) != LDNS_STATUS_OK)
        goto fail_q;
    /* its own socket: a random source port, and only the upstream's datagrams reach it */
    q->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (q->fd < 0 || connect(q->fd, (struct sockaddr *)&d->upstream, sizeof(d->upstream)) < 0 ||
        send(q->fd, wire, size, MSG_DONTWAIT) != (ssize_t)size ||
        sv_loop_add(d->loop, q->fd, EPOLLIN, on_upstream, q) < 0) {
        if (q->fd >= 0)
            (void)close(q->fd);
        q->fd = -1;
        goto fail_q;
    }
    q->timer = sv_loop_timer(d->loop, sv_now_ms() + d->timeout_ms, on_timeout, q);
    if (q->timer < 0)
        goto fail_q;
    free(wire);
    ldns_pkt_free(up);
    return;
fail_q:
    free(wire);
    ldns_pkt_free(up);
    fail_pending(q);
    return;
fail:
    d->stats.servfail++;
    reply_rcode(d, query, 0, LDNS_RCODE_SERVFAIL, from);
    ldns_pkt_free(query);
}

/* ---------------------------------------------------------------- queries */

static void report_refused(sv_dns *d, const char *name, uint16_t qtype)
{
    int64_t now = sv_now_ms();

    d->tokens += (double)(now - d->tokens_at) * SV_DNS_REPORT_RATE / 1000.0;
    if (d->tokens > SV_DNS_REPORT_BURST)
        d->tokens = SV_DNS_REPORT_BURST;
    d->tokens_at = now;
    if (d->tokens < 1) {
        d->stats.unreported++;
        return;
    }
    d->tokens -= 1;
    if (d->on_refused)
        d->on_refused(name, qtype, d->data);
}

static void on_query(sv_loop *loop, int fd, uint32_t events, void *data)
{
    sv_dns *d = data;

    (void)loop;
    (void)events;
    /* a bounded number per wake-up, so upstream answers are not starved */
    for (int round = 0; round < 64; round++) {
        uint8_t buf[MSG_MAX];
        struct sockaddr_in from;
        socklen_t fl = sizeof(from);
        ldns_pkt *q = NULL;
        const ldns_rr *qr;
        char name[NAME_MAX_LEN + 1];
        ssize_t n =
            recvfrom(fd, buf, sizeof(buf), MSG_DONTWAIT | MSG_TRUNC, (struct sockaddr *)&from, &fl);

        if (n < 0)
            return; /* EAGAIN, or an ICMP error of an earlier reply */
        d->stats.queries++;
        if (fl != sizeof(from) || from.sin_family != AF_INET || n < 12)
            continue; /* too short to have an id: no answer */
        if ((size_t)n > sizeof(buf) || ldns_wire2pkt(&q, buf, (size_t)n) != LDNS_STATUS_OK) {
            ldns_pkt_free(q);
            d->stats.malformed++;
            if ((buf[2] & 0x80) == 0) /* a query that does not parse; never answer answers */
                reply_rcode(d, NULL, (uint16_t)(buf[0] << 8 | buf[1]), LDNS_RCODE_FORMERR, &from);
            continue;
        }
        if (ldns_pkt_qr(q)) { /* an answer sent to us: never answered */
            d->stats.malformed++;
            ldns_pkt_free(q);
            continue;
        }
        if (ldns_pkt_get_opcode(q) != LDNS_PACKET_QUERY) {
            reply_rcode(d, q, 0, LDNS_RCODE_NOTIMPL, &from);
            ldns_pkt_free(q);
            continue;
        }
        if (ldns_pkt_qdcount(q) != 1 || !(qr = ldns_rr_list_rr(ldns_pkt_question(q), 0)) ||
            ldns_pkt_ancount(q) || ldns_pkt_nscount(q)) {
            d->stats.malformed++;
            reply_rcode(d, q, 0, LDNS_RCODE_FORMERR, &from);
            ldns_pkt_free(q);
            continue;
        }
        if (!name_of(ldns_rr_owner(qr), name) || ldns_rr_get_class(qr) != LDNS_RR_CLASS_IN ||
            !allowed(d, name)) {
            d->stats.refused++;
            report_refused(d, name_of(ldns_rr_owner(qr), name) ? name : "(unreadable)",
                           (uint16_t)ldns_rr_get_type(qr));
            reply_rcode(d, q, 0, LDNS_RCODE_NXDOMAIN, &from);
            ldns_pkt_free(q);
            continue;
        }
        d->stats.allowed++;
        if (ldns_rr_get_type(qr) == LDNS_RR_TYPE_AAAA) { /* no IPv6 for guests */
            reply_rcode(d, q, 0, LDNS_RCODE_NOERROR, &from);
            ldns_pkt_free(q);
            continue;
        }
        forward(d, q, name, &from);
    }
}

/* ---------------------------------------------------------------- life */

static int parse_addr(const char *text, int port, const char *what, struct sockaddr_in *out,
                      smolvm_error **err)
{
    memset(out, 0, sizeof(*out));
    out->sin_family = AF_INET;
    if (!text || inet_pton(AF_INET, text, &out->sin_addr) != 1)
        return smolvm_err(err, SMOLVM_EINVAL, "dns: invalid %s address '%s'", what,
                          text ? text : "(null)");
    if (port < 0 || port > 65535)
        return smolvm_err(err, SMOLVM_EINVAL, "dns: invalid %s port '%d'", what, port);
    out->sin_port = htons((uint16_t)(port ? port : 53));
    return 0;
}

int sv_dns_new(sv_dns **out, sv_loop *loop, const sv_dns_options *o, smolvm_error **err)
{
    struct sockaddr_in bind_sa;
    sv_dns *d;
    int r;

    if (!loop || !o || o->version != SV_DNS_OPTIONS_VERSION)
        return smolvm_err(err, SMOLVM_EINVAL, "dns: missing loop or options");
    if (o->timeout_ms < 0 || o->max_pending > SV_DNS_MAX_PENDING)
        return smolvm_err(err, SMOLVM_EINVAL, "dns: options out of range (at most %d pending)",
                          SV_DNS_MAX_PENDING);
    if (o->ifname && (!*o->ifname || strlen(o->ifname) >= 16))
        return smolvm_err(err, SMOLVM_EINVAL, "dns: invalid link name '%s'", o->ifname);
    if (!(d = calloc(1, sizeof(*d))))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    d->loop = loop;
    d->fd = -1;
    d->on_answer = o->on_answer;
    d->on_refused = o->on_refused;
    d->data = o->data;
    d->timeout_ms = o->timeout_ms ? o->timeout_ms : DEFAULT_TIMEOUT;
    d->max_pending = o->max_pending ? o->max_pending : DEFAULT_PENDING;
    d->tokens = SV_DNS_REPORT_BURST;
    d->tokens_at = sv_now_ms();
    if ((r = parse_addr(o->bind_addr, o->port, "listen", &bind_sa, err)) < 0 ||
        (r = parse_addr(o->upstream, o->upstream_port, "upstream", &d->upstream, err)) < 0 ||
        (r = sv_dns_set_allow(d, o->allow, err)) < 0)
        goto fail;
    d->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (d->fd < 0) {
        r = smolvm_err_errno(err, errno, "dns: socket");
        goto fail;
    }
    /* bound to the TAP: this VM's queries only, and a socket per VM on one address */
    if (o->ifname && setsockopt(d->fd, SOL_SOCKET, SO_BINDTODEVICE, o->ifname,
                                (socklen_t)strlen(o->ifname) + 1) < 0) {
        r = smolvm_err_errno(err, errno, "dns: bind to link '%s'", o->ifname);
        goto fail;
    }
    if (bind(d->fd, (struct sockaddr *)&bind_sa, sizeof(bind_sa)) < 0) {
        int e = errno;

        r = e == EADDRINUSE ? smolvm_err(err, SMOLVM_EEXIST, "dns: '%s:%d' is in use%s%s",
                                         o->bind_addr, o->port ? o->port : 53,
                                         o->ifname ? " on link " : "", o->ifname ? o->ifname : "")
                            : smolvm_err_errno(err, e, "dns: bind '%s:%d'", o->bind_addr,
                                               o->port ? o->port : 53);
        goto fail;
    }
    if ((r = sv_loop_add(loop, d->fd, EPOLLIN, on_query, d)) < 0) {
        r = smolvm_err_errno(err, -r, "dns: watch the socket");
        goto fail;
    }
    *out = d;
    return 0;
fail:
    if (d->fd >= 0)
        (void)close(d->fd);
    d->fd = -1;
    sv_dns_free(d);
    return r;
}

void sv_dns_get_stats(const sv_dns *d, sv_dns_stats *out)
{
    if (d)
        *out = d->stats;
    else
        memset(out, 0, sizeof(*out));
}

sv_dns *sv_dns_free(sv_dns *d)
{
    if (!d)
        return NULL;
    while (d->pending)
        pending_free(d->pending);
    if (d->fd >= 0) {
        sv_loop_del(d->loop, d->fd);
        (void)close(d->fd);
    }
    free_list(d->allow, d->n_allow);
    free(d);
    return NULL;
}
