/* SPDX-License-Identifier: MIT */
/*
 * smolvm's nftables table, `inet smolvm`, built with libnftnl and sent with libmnl.
 *
 * Shared part (rules commented "smolvm"; base chains hold nothing else, so a damaged
 * one is repaired by rewriting its rules):
 *
 *   chain guard       filter prerouting  -300  from sv-*: IPv6 dropped; jump vm-guard
 *                                              (a VM's own source accepted); the rest
 *                                              dropped, before conntrack sees it
 *   chain prerouting  nat    prerouting  -100  DNAT of forwards arriving from outside
 *   chain output      nat    output      -100  DNAT of forwards opened by the host
 *   chain postrouting nat    postrouting  100  masquerade out of the uplink
 *   chain forward     filter forward        0  VM<->VM drop; from sv-*: jump vm-egress,
 *                                              else drop; into sv-*: established or
 *                                              DNATed, else drop
 *   chain input       filter input          0  from sv-*: jump vm-input, else drop
 *   chains vm-guard, vm-egress, vm-input        one dispatch rule per VM (iifname)
 *
 * Per VM (rules commented "vm:<id>", forwards "vm:<id> fwd:<addr>:<port>"):
 *
 *   vm-guard:  iifname TAP ip saddr GUEST accept
 *   vm-egress: iifname TAP goto vm-<id>-out     vm-input: iifname TAP goto vm-<id>-in
 *   chain vm-<id>-out   replies of forwards accept; not to the uplink: deny; goto pol
 *   chain vm-<id>-pol   the egress policy (internet / none / allow list)
 *   chain vm-<id>-in    to the host: replies accept; [DNS to the gateway accept]; deny
 *   chain vm-<id>-deny  new ones: limit + log group G prefix "vm:<id>"; drop
 *   set vm-<id>-allow   the allow list's CIDRs (interval set)
 *   set vm-<id>-dyn     resolved addresses with timeouts
 *
 * Every change is one batch (NFNL_MSG_BATCH_BEGIN .. END): the kernel applies all of
 * it or none. Rules are found again by listing the table and reading the comment in
 * their user data (the same TLV nft(8) writes), then deleted by handle.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libmnl/libmnl.h>
#include <libnftnl/chain.h>
#include <libnftnl/common.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>
#include <libnftnl/udata.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_conntrack_common.h>
#include <linux/netfilter/nf_conntrack_tuple_common.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/rtnetlink.h>

#include "error.h"
#include "net/net-internal.h"
#include "util.h"

#define NFT_FAMILY NFPROTO_INET
#define NFT_TIMEOUT_MS 2000
#define NFT_RECV_SIZE 65536
#define BATCH_MAX (1024u * 1024u)
#define MSG_ROOM 8192u /* one message (a rule, up to ELEMS_PER_MSG elements) fits */
#define ELEMS_PER_MSG 64
#define NAMELEN 96                /* "vm-" + id + "-allow" and room */
#define COMMENT_STATIC "smolvm 2" /* the shared part, layout version 2 */
#define LOG_SNAPLEN 128           /* IPv4 header with options + the ports */
#define TYPE_IPADDR 7             /* nft's ipv4_addr datatype, shown by `nft list` */

const smolvm_nft_range smolvm_nft_special[9] = {
    {0x00000000, 0x00ffffff}, /* 0.0.0.0/8 "this network" */
    {0x0a000000, 0x0affffff}, /* 10.0.0.0/8 */
    {0x64400000, 0x647fffff}, /* 100.64.0.0/10 carrier-grade NAT */
    {0x7f000000, 0x7fffffff}, /* 127.0.0.0/8 */
    {0xa9fe0000, 0xa9feffff}, /* 169.254.0.0/16 link-local, cloud metadata */
    {0xac100000, 0xac1fffff}, /* 172.16.0.0/12 */
    {0xc0a80000, 0xc0a8ffff}, /* 192.168.0.0/16 */
    {0xe0000000, 0xefffffff}, /* 224.0.0.0/4 multicast */
    {0xf0000000, 0xffffffff}, /* 240.0.0.0/4 reserved, broadcast */
};

/* ---------------------------------------------------------------- socket */

typedef struct nft {
    struct mnl_socket *nl;
    uint32_t portid;
    uint32_t seq;
    int bad; /* the socket may hold unread answers: do not reuse it */
} nft;

/*
 * One netlink socket per process, kept open between calls and used by one call at a
 * time. Closing a netlink socket after a batch that deleted anything makes the kernel
 * finish freeing what was deleted first (nf_tables waits out an RCU grace period on
 * NETLINK_URELEASE: 12-20 ms here); a socket that stays open lets that happen in the
 * background, so a policy change or a teardown does not wait for it. A child after
 * fork() opens its own; a socket that saw an error is closed, not reused.
 */
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct mnl_socket *cache_nl;
static pid_t cache_pid;

static void nft_close(nft *n)
{
    if (n->nl) {
        if (n->bad) {
            (void)mnl_socket_close(n->nl);
            cache_nl = NULL;
        }
        n->nl = NULL;
        (void)pthread_mutex_unlock(&cache_lock);
    }
}

static int nft_err(smolvm_error **err, int e, const char *what)
{
    switch (e) {
    case EPERM:
    case EACCES:
        return smolvm_err(err, SMOLVM_EPERM,
                          "nftables: %s: %s (needs CAP_NET_ADMIN: run as root or grant "
                          "the capability)",
                          what, strerror(e));
    case EEXIST: return smolvm_err(err, SMOLVM_EEXIST, "nftables: %s: %s", what, strerror(e));
    case ENOENT: return smolvm_err(err, SMOLVM_ENOENT, "nftables: %s: %s", what, strerror(e));
    case EOPNOTSUPP:
    case EPROTONOSUPPORT:
    case EAFNOSUPPORT:
        return smolvm_err(err, SMOLVM_EHOST,
                          "nftables: %s: %s (the kernel lacks nf_tables or its NAT "
                          "support: modprobe nf_tables nft_nat nft_masq nft_ct nft_fib_inet)",
                          what, strerror(e));
    case ETIMEDOUT:
        return smolvm_err(err, SMOLVM_ETIMEDOUT, "nftables: %s: no answer within %d ms", what,
                          NFT_TIMEOUT_MS);
    default: return smolvm_err(err, SMOLVM_ENET, "nftables: %s: %s", what, strerror(e));
    }
}

static int nft_open(nft *n, smolvm_error **err)
{
    char junk[256];

    (void)pthread_mutex_lock(&cache_lock);
    if (cache_nl && cache_pid != getpid())
        cache_nl = NULL; /* the parent's: leave it to the parent */
    if (!cache_nl) {
        struct mnl_socket *nl = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC);

        if (!nl || mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
            int e = errno;

            if (nl)
                (void)mnl_socket_close(nl);
            (void)pthread_mutex_unlock(&cache_lock);
            return nft_err(err, e, "open netlink socket");
        }
        cache_nl = nl;
        cache_pid = getpid();
    }
    /* nothing of an earlier call may be left to read */
    while (recv(mnl_socket_get_fd(cache_nl), junk, sizeof(junk), MSG_DONTWAIT) > 0)
        ;
    n->nl = cache_nl;
    n->bad = 0;
    n->portid = mnl_socket_get_portid(n->nl);
    n->seq = (uint32_t)time(NULL) ^ (uint32_t)smolvm_now_ms();
    return 0;
}

/* Wait (until deadline) for the socket to be readable, then read one datagram. */
static ssize_t nft_recv(nft *n, void *buf, size_t len, int64_t deadline)
{
    struct pollfd p = {.fd = mnl_socket_get_fd(n->nl), .events = POLLIN};

    for (;;) {
        int r = poll(&p, 1, smolvm_remaining_ms(deadline));

        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            n->bad = 1;
            if (r == 0)
                errno = ETIMEDOUT;
            return -1;
        }
        return mnl_socket_recvfrom(n->nl, buf, len);
    }
}

/* ---------------------------------------------------------------- batches */

/* Rules added per chain: what `check` compares the kernel's listing with. */
typedef struct chain_count {
    char chain[NAMELEN];
    unsigned n;
} chain_count;

typedef struct batch {
    char *buf;
    size_t len, cap;
    unsigned n_ack; /* messages carrying NLM_F_ACK */
    uint32_t set_id;
    int oom;
    chain_count counts[32];
    size_t n_counts;
} batch;

static void batch_free(batch *b)
{
    free(b->buf);
    memset(b, 0, sizeof(*b));
}

/* Room for one more message at b->buf + b->len, or NULL. */
static char *batch_room(batch *b)
{
    if (b->oom)
        return NULL;
    if (b->cap - b->len < MSG_ROOM) {
        size_t cap = b->cap ? b->cap * 2 : 32768;
        char *p;

        if (cap > BATCH_MAX || !(p = realloc(b->buf, cap))) {
            b->oom = 1;
            return NULL;
        }
        memset(p + b->cap, 0, cap - b->cap);
        b->buf = p;
        b->cap = cap;
    }
    return b->buf + b->len;
}

static void batch_push(batch *b, struct nlmsghdr *nlh)
{
    b->len += NLMSG_ALIGN(nlh->nlmsg_len);
    if (nlh->nlmsg_flags & NLM_F_ACK)
        b->n_ack++;
}

static void batch_begin(nft *n, batch *b)
{
    char *p = batch_room(b);

    if (p)
        batch_push(b, nftnl_batch_begin(p, n->seq++));
}

static void batch_end(nft *n, batch *b)
{
    char *p = batch_room(b);

    if (p)
        batch_push(b, nftnl_batch_end(p, n->seq++));
}

static void batch_count(batch *b, const char *chain)
{
    size_t i;

    for (i = 0; i < b->n_counts; i++)
        if (strcmp(b->counts[i].chain, chain) == 0)
            break;
    if (i == b->n_counts) {
        if (i == SMOLVM_ARRAY_SIZE(b->counts))
            return;
        (void)snprintf(b->counts[i].chain, NAMELEN, "%s", chain);
        b->counts[i].n = 0;
        b->n_counts++;
    }
    b->counts[i].n++;
}

/* Send the batch and collect one answer per NLM_F_ACK message. Returns 0, or -errno
 * of the first failing message (the kernel then applied nothing). */
static int batch_send(nft *n, batch *b)
{
    char buf[NFT_RECV_SIZE];
    int64_t deadline = smolvm_now_ms() + NFT_TIMEOUT_MS;
    unsigned got = 0;
    int first = 0;

    if (b->oom)
        return -ENOMEM;
    if (mnl_socket_sendto(n->nl, b->buf, b->len) < 0) {
        n->bad = 1;
        return -errno;
    }
    while (got < b->n_ack) {
        ssize_t len = nft_recv(n, buf, sizeof(buf), first ? smolvm_now_ms() + 50 : deadline);
        const struct nlmsghdr *nlh;
        int rest;

        if (len < 0) {
            n->bad = 1; /* answers may still come: not for the next call to read */
            if (first)  /* the kernel reports all errors at once: we have them */
                break;
            return -errno;
        }
        rest = (int)len;
        for (nlh = (const struct nlmsghdr *)buf; mnl_nlmsg_ok(nlh, rest);
             nlh = mnl_nlmsg_next(nlh, &rest)) {
            if (nlh->nlmsg_type == NLMSG_ERROR) {
                const struct nlmsgerr *e = mnl_nlmsg_get_payload(nlh);

                got++;
                if (e->error && !first)
                    first = e->error;
            }
        }
    }
    return first;
}

/* ---------------------------------------------------------------- dumps */

typedef struct dump_rule {
    char chain[NAMELEN];
    uint64_t handle;
    char comment[256];
} dump_rule;

typedef char name_t[NAMELEN];

typedef struct dump {
    int table; /* the table exists */
    dump_rule *rules;
    size_t n, cap;
    name_t *chains, *sets;
    size_t n_chains, cap_chains, n_sets, cap_sets;
    int oom;
} dump;

static void dump_free(dump *d)
{
    free(d->rules);
    free(d->chains);
    free(d->sets);
    memset(d, 0, sizeof(*d));
}

static int grow(void **p, size_t *cap, size_t n, size_t size)
{
    size_t c;
    void *q;

    if (n < *cap)
        return 0;
    c = *cap ? *cap * 2 : 32;
    if (!(q = realloc(*p, c * size)))
        return -1;
    *p = q;
    *cap = c;
    return 0;
}

static int comment_cb(const struct nftnl_udata *attr, void *data)
{
    char *out = data;
    uint8_t len = nftnl_udata_len(attr);

    if (nftnl_udata_type(attr) == NFTNL_UDATA_RULE_COMMENT && len > 0) {
        size_t n = len < 255 ? len : 255;

        memcpy(out, nftnl_udata_get(attr), n);
        out[n] = '\0';
    }
    return MNL_CB_OK;
}

static int rule_cb(const struct nlmsghdr *nlh, void *data)
{
    dump *d = data;
    struct nftnl_rule *r = nftnl_rule_alloc();
    dump_rule *dr;
    const void *ud;
    uint32_t udlen = 0;

    if (!r || nftnl_rule_nlmsg_parse(nlh, r) < 0 ||
        strcmp(nftnl_rule_get_str(r, NFTNL_RULE_TABLE) ?: "", SMOLVM_NFT_TABLE) != 0)
        goto out;
    if (grow((void **)&d->rules, &d->cap, d->n, sizeof(*d->rules)) < 0) {
        d->oom = 1;
        goto out;
    }
    dr = &d->rules[d->n++];
    memset(dr, 0, sizeof(*dr));
    (void)snprintf(dr->chain, sizeof(dr->chain), "%s",
                   nftnl_rule_get_str(r, NFTNL_RULE_CHAIN) ?: "");
    dr->handle = nftnl_rule_get_u64(r, NFTNL_RULE_HANDLE);
    ud = nftnl_rule_get_data(r, NFTNL_RULE_USERDATA, &udlen);
    if (ud && udlen)
        (void)nftnl_udata_parse(ud, udlen, comment_cb, dr->comment);
out:
    if (r)
        nftnl_rule_free(r);
    return MNL_CB_OK;
}

static void add_name(dump *d, name_t **arr, size_t *n, size_t *cap, const char *table,
                     const char *name)
{
    /* chain and set dumps do not filter by table: keep ours only */
    if (strcmp(table ?: "", SMOLVM_NFT_TABLE) != 0 || !name)
        return;
    if (grow((void **)arr, cap, *n, sizeof(name_t)) < 0) {
        d->oom = 1;
        return;
    }
    (void)snprintf((*arr)[(*n)++], NAMELEN, "%s", name);
}

static int chain_cb(const struct nlmsghdr *nlh, void *data)
{
    dump *d = data;
    struct nftnl_chain *c = nftnl_chain_alloc();

    if (c && nftnl_chain_nlmsg_parse(nlh, c) >= 0)
        add_name(d, &d->chains, &d->n_chains, &d->cap_chains,
                 nftnl_chain_get_str(c, NFTNL_CHAIN_TABLE),
                 nftnl_chain_get_str(c, NFTNL_CHAIN_NAME));
    if (c)
        nftnl_chain_free(c);
    return MNL_CB_OK;
}

static int set_cb(const struct nlmsghdr *nlh, void *data)
{
    dump *d = data;
    struct nftnl_set *s = nftnl_set_alloc();

    if (s && nftnl_set_nlmsg_parse(nlh, s) >= 0)
        add_name(d, &d->sets, &d->n_sets, &d->cap_sets, nftnl_set_get_str(s, NFTNL_SET_TABLE),
                 nftnl_set_get_str(s, NFTNL_SET_NAME));
    if (s)
        nftnl_set_free(s);
    return MNL_CB_OK;
}

static int table_cb(const struct nlmsghdr *nlh, void *data)
{
    dump *d = data;
    struct nftnl_table *t = nftnl_table_alloc();

    if (t && nftnl_table_nlmsg_parse(nlh, t) >= 0 &&
        strcmp(nftnl_table_get_str(t, NFTNL_TABLE_NAME) ?: "", SMOLVM_NFT_TABLE) == 0)
        d->table = 1;
    if (t)
        nftnl_table_free(t);
    return MNL_CB_OK;
}

/* One request (a get of our table, or a dump of rules, chains or sets) and its
 * answers through cb. A missing table is not an error. Returns 0 or -errno. */
static int nft_query(nft *n, uint16_t what, dump *d)
{
    char buf[NFT_RECV_SIZE];
    int64_t deadline = smolvm_now_ms() + NFT_TIMEOUT_MS;
    uint32_t seq = n->seq++;
    uint16_t flags = what == NFT_MSG_GETTABLE ? NLM_F_ACK : NLM_F_DUMP;
    mnl_cb_t cb;
    struct nlmsghdr *nlh;
    int r;

    memset(buf, 0, MSG_ROOM); /* attribute padding goes to the kernel too */
    nlh = nftnl_nlmsg_build_hdr(buf, what, NFT_FAMILY, flags, seq);
    if (what == NFT_MSG_GETRULE) {
        struct nftnl_rule *o = nftnl_rule_alloc();

        if (!o)
            return -ENOMEM;
        nftnl_rule_set_str(o, NFTNL_RULE_TABLE, SMOLVM_NFT_TABLE);
        nftnl_rule_nlmsg_build_payload(nlh, o);
        nftnl_rule_free(o);
        cb = rule_cb;
    } else if (what == NFT_MSG_GETCHAIN) {
        struct nftnl_chain *o = nftnl_chain_alloc();

        if (!o)
            return -ENOMEM;
        nftnl_chain_set_str(o, NFTNL_CHAIN_TABLE, SMOLVM_NFT_TABLE);
        nftnl_chain_nlmsg_build_payload(nlh, o);
        nftnl_chain_free(o);
        cb = chain_cb;
    } else if (what == NFT_MSG_GETSET) {
        struct nftnl_set *o = nftnl_set_alloc();

        if (!o)
            return -ENOMEM;
        nftnl_set_set_str(o, NFTNL_SET_TABLE, SMOLVM_NFT_TABLE);
        nftnl_set_nlmsg_build_payload(nlh, o);
        nftnl_set_free(o);
        cb = set_cb;
    } else {
        struct nftnl_table *o = nftnl_table_alloc();

        if (!o)
            return -ENOMEM;
        nftnl_table_set_str(o, NFTNL_TABLE_NAME, SMOLVM_NFT_TABLE);
        nftnl_table_nlmsg_build_payload(nlh, o);
        nftnl_table_free(o);
        cb = table_cb;
    }
    if (mnl_socket_sendto(n->nl, nlh, nlh->nlmsg_len) < 0) {
        n->bad = 1;
        return -errno;
    }
    do {
        ssize_t len = nft_recv(n, buf, sizeof(buf), deadline);

        if (len < 0)
            return -errno;
        r = mnl_cb_run(buf, (size_t)len, seq, n->portid, cb, d);
    } while (r > 0);
    if (r < 0) {
        if (errno == ENOENT) /* no table */
            return 0;
        n->bad = 1;
        return -errno;
    }
    return d->oom ? -ENOMEM : 0;
}

/* The table and, if it exists, its chains, sets (with_sets) and rules. */
static int nft_dump(nft *n, dump *d, int with_sets)
{
    int r = nft_query(n, NFT_MSG_GETTABLE, d);

    if (r < 0 || !d->table)
        return r;
    if ((r = nft_query(n, NFT_MSG_GETCHAIN, d)) < 0 ||
        (with_sets && (r = nft_query(n, NFT_MSG_GETSET, d)) < 0))
        return r;
    return nft_query(n, NFT_MSG_GETRULE, d);
}

static int has_name(const name_t *arr, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(arr[i], name) == 0)
            return 1;
    return 0;
}

/* ---------------------------------------------------------------- expressions */

/* A rule under construction; expression allocation failures set oom. */
typedef struct rb {
    struct nftnl_rule *r;
    char chain[NAMELEN];
    int oom;
} rb;

static struct nftnl_expr *ex(rb *b, const char *name)
{
    struct nftnl_expr *e = b->oom ? NULL : nftnl_expr_alloc(name);

    if (!e) {
        b->oom = 1;
        return NULL;
    }
    nftnl_rule_add_expr(b->r, e);
    return e;
}

static void m_cmp(rb *b, uint32_t op, const void *data, uint32_t len)
{
    struct nftnl_expr *e = ex(b, "cmp");

    if (!e)
        return;
    nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_SREG, NFT_REG_1);
    nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_OP, op);
    nftnl_expr_set(e, NFTNL_EXPR_CMP_DATA, data, len);
}

static void m_meta(rb *b, uint32_t key)
{
    struct nftnl_expr *e = ex(b, "meta");

    if (!e)
        return;
    nftnl_expr_set_u32(e, NFTNL_EXPR_META_KEY, key);
    nftnl_expr_set_u32(e, NFTNL_EXPR_META_DREG, NFT_REG_1);
}

/* iifname/oifname ==/!= name, or a prefix match (like nft's "sv-*") when prefix. */
static void m_ifname(rb *b, uint32_t key, const char *name, int prefix, uint32_t op)
{
    char pad[SMOLVM_NET_IFNAMSIZ] = {0};

    (void)snprintf(pad, sizeof(pad), "%s", name);
    m_meta(b, key);
    m_cmp(b, op, pad, prefix ? (uint32_t)strlen(pad) : sizeof(pad));
}

static void m_nfproto(rb *b, uint8_t proto)
{
    m_meta(b, NFT_META_NFPROTO);
    m_cmp(b, NFT_CMP_EQ, &proto, 1);
}

static void m_bitwise(rb *b, uint32_t len, const void *mask)
{
    static const uint8_t zero[16];
    struct nftnl_expr *e = ex(b, "bitwise");

    if (!e)
        return;
    nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_SREG, NFT_REG_1);
    nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_DREG, NFT_REG_1);
    nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_LEN, len);
    nftnl_expr_set(e, NFTNL_EXPR_BITWISE_MASK, mask, len);
    nftnl_expr_set(e, NFTNL_EXPR_BITWISE_XOR, zero, len);
}

static void m_payload(rb *b, uint32_t base, uint32_t offset, uint32_t len)
{
    struct nftnl_expr *e = ex(b, "payload");

    if (!e)
        return;
    nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_BASE, base);
    nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_OFFSET, offset);
    nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_LEN, len);
    nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_DREG, NFT_REG_1);
}

/* ip saddr (offset 12) / daddr (offset 16) within addr_be/plen (IPv4 implied). */
static void m_ip_addr(rb *b, uint32_t offset, uint32_t addr_be, int plen, uint32_t op)
{
    uint32_t mask = plen ? htonl(~0u << (32 - plen)) : 0, v = addr_be & mask;

    m_nfproto(b, NFPROTO_IPV4);
    m_payload(b, NFT_PAYLOAD_NETWORK_HEADER, offset, 4);
    if (plen < 32)
        m_bitwise(b, 4, &mask);
    m_cmp(b, op, &v, 4);
}

/* ip daddr in lo..hi (host order), which must be one CIDR block. */
static void m_ip_range(rb *b, uint32_t offset, const smolvm_nft_range *r, uint32_t op)
{
    int plen = 32;

    while (plen > 0 && ((r->hi - r->lo) >> (32 - plen)) != 0)
        plen--;
    m_ip_addr(b, offset, htonl(r->lo), plen, op);
}

/* meta l4proto proto <proto> dport port */
static void m_l4_dport(rb *b, uint8_t proto, uint16_t port)
{
    uint16_t be = htons(port);

    m_meta(b, NFT_META_L4PROTO);
    m_cmp(b, NFT_CMP_EQ, &proto, 1);
    m_payload(b, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
    m_cmp(b, NFT_CMP_EQ, &be, 2);
}

static void m_ct(rb *b, uint32_t key)
{
    struct nftnl_expr *e = ex(b, "ct");

    if (!e)
        return;
    nftnl_expr_set_u32(e, NFTNL_EXPR_CT_KEY, key);
    nftnl_expr_set_u32(e, NFTNL_EXPR_CT_DREG, NFT_REG_1);
}

/* ct <key> & mask != 0 (ct state established,related; ct status dnat). */
static void m_ct_bits(rb *b, uint32_t key, uint32_t mask)
{
    uint32_t zero = 0;

    m_ct(b, key);
    m_bitwise(b, 4, &mask);
    m_cmp(b, NFT_CMP_NEQ, &zero, 4);
}

static void m_ct_reply(rb *b)
{
    uint8_t dir = IP_CT_DIR_REPLY;

    m_ct(b, NFT_CT_DIRECTION);
    m_cmp(b, NFT_CMP_EQ, &dir, 1);
}

static void m_ct_mark(rb *b, uint32_t mark)
{
    m_ct(b, NFT_CT_MARK);
    m_cmp(b, NFT_CMP_EQ, &mark, 4);
}

/* fib daddr type local */
static void m_daddr_local(rb *b)
{
    uint32_t local = RTN_LOCAL;
    struct nftnl_expr *e = ex(b, "fib");

    if (!e)
        return;
    nftnl_expr_set_u32(e, NFTNL_EXPR_FIB_FLAGS, NFTA_FIB_F_DADDR);
    nftnl_expr_set_u32(e, NFTNL_EXPR_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
    nftnl_expr_set_u32(e, NFTNL_EXPR_FIB_DREG, NFT_REG_1);
    m_cmp(b, NFT_CMP_EQ, &local, 4);
}

/* ip daddr @set */
static void m_daddr_in_set(rb *b, const char *set)
{
    struct nftnl_expr *e;

    m_nfproto(b, NFPROTO_IPV4);
    m_payload(b, NFT_PAYLOAD_NETWORK_HEADER, 16, 4);
    if (!(e = ex(b, "lookup")))
        return;
    nftnl_expr_set_u32(e, NFTNL_EXPR_LOOKUP_SREG, NFT_REG_1);
    nftnl_expr_set_str(e, NFTNL_EXPR_LOOKUP_SET, set);
}

static void a_verdict(rb *b, int verdict, const char *chain)
{
    struct nftnl_expr *e = ex(b, "immediate");

    if (!e)
        return;
    nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_DREG, NFT_REG_VERDICT);
    nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_VERDICT, (uint32_t)verdict);
    if (chain)
        nftnl_expr_set_str(e, NFTNL_EXPR_IMM_CHAIN, chain);
}

static void a_ct_mark_set(rb *b, uint32_t mark)
{
    struct nftnl_expr *e = ex(b, "immediate");

    if (!e)
        return;
    nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_DREG, NFT_REG_1);
    nftnl_expr_set(e, NFTNL_EXPR_IMM_DATA, &mark, 4);
    if (!(e = ex(b, "ct")))
        return;
    nftnl_expr_set_u32(e, NFTNL_EXPR_CT_KEY, NFT_CT_MARK);
    nftnl_expr_set_u32(e, NFTNL_EXPR_CT_SREG, NFT_REG_1);
}

static void a_dnat(rb *b, uint32_t addr_be, uint16_t port)
{
    uint16_t pbe = htons(port);
    struct nftnl_expr *e = ex(b, "immediate");

    if (!e)
        return;
    nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_DREG, NFT_REG_1);
    nftnl_expr_set(e, NFTNL_EXPR_IMM_DATA, &addr_be, 4);
    if (!(e = ex(b, "immediate")))
        return;
    nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_DREG, NFT_REG_2);
    nftnl_expr_set(e, NFTNL_EXPR_IMM_DATA, &pbe, 2);
    if (!(e = ex(b, "nat")))
        return;
    nftnl_expr_set_u32(e, NFTNL_EXPR_NAT_TYPE, NFT_NAT_DNAT);
    nftnl_expr_set_u32(e, NFTNL_EXPR_NAT_FAMILY, NFPROTO_IPV4);
    nftnl_expr_set_u32(e, NFTNL_EXPR_NAT_REG_ADDR_MIN, NFT_REG_1);
    nftnl_expr_set_u32(e, NFTNL_EXPR_NAT_REG_PROTO_MIN, NFT_REG_2);
}

static void a_masq(rb *b)
{
    (void)ex(b, "masq");
}

static void a_counter(rb *b)
{
    (void)ex(b, "counter");
}

static void a_limit(rb *b, uint64_t per_second, uint32_t burst)
{
    struct nftnl_expr *e = ex(b, "limit");

    if (!e)
        return;
    nftnl_expr_set_u64(e, NFTNL_EXPR_LIMIT_RATE, per_second);
    nftnl_expr_set_u64(e, NFTNL_EXPR_LIMIT_UNIT, 1);
    nftnl_expr_set_u32(e, NFTNL_EXPR_LIMIT_BURST, burst);
    nftnl_expr_set_u32(e, NFTNL_EXPR_LIMIT_TYPE, NFT_LIMIT_PKTS);
    nftnl_expr_set_u32(e, NFTNL_EXPR_LIMIT_FLAGS, 0);
}

static void a_log(rb *b, uint16_t group, const char *prefix)
{
    struct nftnl_expr *e = ex(b, "log");

    if (!e)
        return;
    nftnl_expr_set_u16(e, NFTNL_EXPR_LOG_GROUP, group);
    nftnl_expr_set_str(e, NFTNL_EXPR_LOG_PREFIX, prefix);
    nftnl_expr_set_u32(e, NFTNL_EXPR_LOG_SNAPLEN, LOG_SNAPLEN);
    nftnl_expr_set_u16(e, NFTNL_EXPR_LOG_QTHRESHOLD, 1); /* deliver each at once */
}

static void rb_start(rb *b, const char *chain, const char *comment)
{
    struct nftnl_udata_buf *ud;

    memset(b, 0, sizeof(*b));
    (void)snprintf(b->chain, sizeof(b->chain), "%s", chain);
    if (!(b->r = nftnl_rule_alloc())) {
        b->oom = 1;
        return;
    }
    nftnl_rule_set_str(b->r, NFTNL_RULE_TABLE, SMOLVM_NFT_TABLE);
    nftnl_rule_set_str(b->r, NFTNL_RULE_CHAIN, chain);
    nftnl_rule_set_u32(b->r, NFTNL_RULE_FAMILY, NFT_FAMILY);
    if (!(ud = nftnl_udata_buf_alloc(NFT_USERDATA_MAXLEN))) {
        b->oom = 1;
        return;
    }
    if (!nftnl_udata_put_strz(ud, NFTNL_UDATA_RULE_COMMENT, comment))
        b->oom = 1;
    else
        nftnl_rule_set_data(b->r, NFTNL_RULE_USERDATA, nftnl_udata_buf_data(ud),
                            nftnl_udata_buf_len(ud));
    nftnl_udata_buf_free(ud);
}

/* Append the finished rule to the batch and free it. */
static void rb_finish(nft *n, batch *bt, rb *b)
{
    char *p = batch_room(bt);

    if (!b->r || b->oom || !p) {
        bt->oom = 1;
    } else {
        struct nlmsghdr *nlh = nftnl_rule_nlmsg_build_hdr(
            p, NFT_MSG_NEWRULE, NFT_FAMILY, NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK, n->seq++);

        nftnl_rule_nlmsg_build_payload(nlh, b->r);
        batch_push(bt, nlh);
        batch_count(bt, b->chain);
    }
    if (b->r)
        nftnl_rule_free(b->r);
    b->r = NULL;
}

/* DELRULE by handle, or (handle 0) every rule of the chain. */
static void del_rule(nft *n, batch *bt, const char *chain, uint64_t handle)
{
    struct nftnl_rule *r = nftnl_rule_alloc();
    char *p = batch_room(bt);
    struct nlmsghdr *nlh;

    if (!r || !p) {
        bt->oom = 1;
        if (r)
            nftnl_rule_free(r);
        return;
    }
    nftnl_rule_set_str(r, NFTNL_RULE_TABLE, SMOLVM_NFT_TABLE);
    nftnl_rule_set_str(r, NFTNL_RULE_CHAIN, chain);
    if (handle)
        nftnl_rule_set_u64(r, NFTNL_RULE_HANDLE, handle);
    nlh = nftnl_rule_nlmsg_build_hdr(p, NFT_MSG_DELRULE, NFT_FAMILY, NLM_F_ACK, n->seq++);
    nftnl_rule_nlmsg_build_payload(nlh, r);
    batch_push(bt, nlh);
    nftnl_rule_free(r);
}

/* ---------------------------------------------------------------- objects */

typedef struct base_chain {
    const char *name, *type;
    uint32_t hook;
    int32_t prio;
} base_chain;

static const base_chain chains[] = {
    {"guard", "filter", NF_INET_PRE_ROUTING, -300}, /* raw: before conntrack */
    {"prerouting", "nat", NF_INET_PRE_ROUTING, -100},
    {"output", "nat", NF_INET_LOCAL_OUT, -100}, /* `priority dstnat` is refused here */
    {"postrouting", "nat", NF_INET_POST_ROUTING, 100},
    {"forward", "filter", NF_INET_FORWARD, 0},
    {"input", "filter", NF_INET_LOCAL_IN, 0},
    {"vm-guard", NULL, 0, 0},
    {"vm-egress", NULL, 0, 0},
    {"vm-input", NULL, 0, 0},
};

/* NEWCHAIN: a base chain from the table above, or (bc NULL) a regular chain. */
static void add_chain(nft *n, batch *bt, const base_chain *bc, const char *name)
{
    struct nftnl_chain *c = nftnl_chain_alloc();
    char *p = batch_room(bt);
    struct nlmsghdr *nlh;

    if (!c || !p) {
        bt->oom = 1;
        if (c)
            nftnl_chain_free(c);
        return;
    }
    nftnl_chain_set_str(c, NFTNL_CHAIN_TABLE, SMOLVM_NFT_TABLE);
    nftnl_chain_set_str(c, NFTNL_CHAIN_NAME, bc ? bc->name : name);
    if (bc && bc->type) {
        nftnl_chain_set_str(c, NFTNL_CHAIN_TYPE, bc->type);
        nftnl_chain_set_u32(c, NFTNL_CHAIN_HOOKNUM, bc->hook);
        nftnl_chain_set_s32(c, NFTNL_CHAIN_PRIO, bc->prio);
        /* accept: smolvm never decides for traffic that is not its own */
        nftnl_chain_set_u32(c, NFTNL_CHAIN_POLICY, NF_ACCEPT);
    }
    nlh = nftnl_chain_nlmsg_build_hdr(p, NFT_MSG_NEWCHAIN, NFT_FAMILY, NLM_F_CREATE | NLM_F_ACK,
                                      n->seq++);
    nftnl_chain_nlmsg_build_payload(nlh, c);
    batch_push(bt, nlh);
    nftnl_chain_free(c);
}

static void del_chain(nft *n, batch *bt, const char *name)
{
    struct nftnl_chain *c = nftnl_chain_alloc();
    char *p = batch_room(bt);
    struct nlmsghdr *nlh;

    if (!c || !p) {
        bt->oom = 1;
        if (c)
            nftnl_chain_free(c);
        return;
    }
    nftnl_chain_set_str(c, NFTNL_CHAIN_TABLE, SMOLVM_NFT_TABLE);
    nftnl_chain_set_str(c, NFTNL_CHAIN_NAME, name);
    nlh = nftnl_chain_nlmsg_build_hdr(p, NFT_MSG_DELCHAIN, NFT_FAMILY, NLM_F_ACK, n->seq++);
    nftnl_chain_nlmsg_build_payload(nlh, c);
    batch_push(bt, nlh);
    nftnl_chain_free(c);
}

static void table_msg(nft *n, batch *bt, uint16_t type)
{
    struct nftnl_table *t = nftnl_table_alloc();
    char *p = batch_room(bt);
    struct nlmsghdr *nlh;

    if (!t || !p) {
        bt->oom = 1;
        if (t)
            nftnl_table_free(t);
        return;
    }
    nftnl_table_set_str(t, NFTNL_TABLE_NAME, SMOLVM_NFT_TABLE);
    nlh = nftnl_table_nlmsg_build_hdr(
        p, type, NFT_FAMILY, (type == NFT_MSG_NEWTABLE ? NLM_F_CREATE : 0) | NLM_F_ACK, n->seq++);
    nftnl_table_nlmsg_build_payload(nlh, t);
    batch_push(bt, nlh);
    nftnl_table_free(t);
}

/* NEWSET (interval or timeout set of IPv4 addresses), DELSET, or flush (DELSETELEM
 * without elements). */
enum { SET_NEW_INTERVAL, SET_NEW_TIMEOUT, SET_DELETE, SET_FLUSH };

static void set_msg(nft *n, batch *bt, const char *name, int op)
{
    struct nftnl_set *s = nftnl_set_alloc();
    char *p = batch_room(bt);
    struct nlmsghdr *nlh;
    uint16_t type = op == SET_DELETE  ? NFT_MSG_DELSET
                    : op == SET_FLUSH ? NFT_MSG_DELSETELEM
                                      : NFT_MSG_NEWSET;

    if (!s || !p) {
        bt->oom = 1;
        if (s)
            nftnl_set_free(s);
        return;
    }
    nftnl_set_set_str(s, NFTNL_SET_TABLE, SMOLVM_NFT_TABLE);
    nftnl_set_set_str(s, NFTNL_SET_NAME, name);
    if (op == SET_NEW_INTERVAL || op == SET_NEW_TIMEOUT) {
        nftnl_set_set_u32(s, NFTNL_SET_FAMILY, NFT_FAMILY);
        nftnl_set_set_u32(s, NFTNL_SET_KEY_TYPE, TYPE_IPADDR);
        nftnl_set_set_u32(s, NFTNL_SET_KEY_LEN, 4);
        nftnl_set_set_u32(s, NFTNL_SET_ID, ++bt->set_id);
        nftnl_set_set_u32(s, NFTNL_SET_FLAGS,
                          op == SET_NEW_INTERVAL ? NFT_SET_INTERVAL : NFT_SET_TIMEOUT);
        if (op == SET_NEW_TIMEOUT)
            nftnl_set_set_u32(s, NFTNL_SET_DESC_SIZE, SMOLVM_NET_MAX_DYNAMIC);
    }
    nlh = nftnl_nlmsg_build_hdr(p, type, NFT_FAMILY,
                                (type == NFT_MSG_NEWSET ? NLM_F_CREATE : 0) | NLM_F_ACK, n->seq++);
    if (op == SET_FLUSH)
        nftnl_set_elems_nlmsg_build_payload(nlh, s);
    else
        nftnl_set_nlmsg_build_payload(nlh, s);
    batch_push(bt, nlh);
    nftnl_set_free(s);
}

/* NEWSETELEM messages: keys (big endian) with flags and timeouts (0 = none). */
typedef struct elem {
    uint32_t key_be;
    uint32_t flags;
    uint64_t timeout_ms;
} elem;

static void add_elems(nft *n, batch *bt, const char *set, const elem *e, size_t count)
{
    for (size_t i = 0; i < count; i += ELEMS_PER_MSG) {
        struct nftnl_set *s = nftnl_set_alloc();
        char *p = batch_room(bt);
        struct nlmsghdr *nlh;

        if (!s || !p) {
            bt->oom = 1;
            if (s)
                nftnl_set_free(s);
            return;
        }
        nftnl_set_set_str(s, NFTNL_SET_TABLE, SMOLVM_NFT_TABLE);
        nftnl_set_set_str(s, NFTNL_SET_NAME, set);
        for (size_t j = i; j < count && j < i + ELEMS_PER_MSG; j++) {
            struct nftnl_set_elem *se = nftnl_set_elem_alloc();

            if (!se) {
                bt->oom = 1;
                break;
            }
            nftnl_set_elem_set(se, NFTNL_SET_ELEM_KEY, &e[j].key_be, 4);
            if (e[j].flags)
                nftnl_set_elem_set_u32(se, NFTNL_SET_ELEM_FLAGS, e[j].flags);
            if (e[j].timeout_ms)
                nftnl_set_elem_set_u64(se, NFTNL_SET_ELEM_TIMEOUT, e[j].timeout_ms);
            nftnl_set_elem_add(s, se);
        }
        nlh = nftnl_nlmsg_build_hdr(p, NFT_MSG_NEWSETELEM, NFT_FAMILY, NLM_F_CREATE | NLM_F_ACK,
                                    n->seq++);
        nftnl_set_elems_nlmsg_build_payload(nlh, s);
        batch_push(bt, nlh);
        nftnl_set_free(s);
    }
}

/* ---------------------------------------------------------------- shared rules */

/* The static rules of one shared chain (NULL: of all of them). */
static void add_statics(nft *n, batch *bt, const char *only)
{
    const uint32_t est = NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED);
    const char *sv = SMOLVM_NET_LINK_PREFIX;
    rb b;

#define WANT(c) (!only || strcmp(only, c) == 0)
    if (WANT("guard")) {
        /* IPv6 is off on TAPs; anything IPv6 that still comes in is dropped */
        rb_start(&b, "guard", COMMENT_STATIC);
        m_ifname(&b, NFT_META_IIFNAME, sv, 1, NFT_CMP_EQ);
        m_nfproto(&b, NFPROTO_IPV6);
        a_verdict(&b, NF_DROP, NULL);
        rb_finish(n, bt, &b);
        /* each VM's own source address, on its own TAP, is all that gets further:
         * forged sources die here, before conntrack, established flow or not */
        rb_start(&b, "guard", COMMENT_STATIC);
        m_ifname(&b, NFT_META_IIFNAME, sv, 1, NFT_CMP_EQ);
        a_verdict(&b, NFT_JUMP, "vm-guard");
        rb_finish(n, bt, &b);
        rb_start(&b, "guard", COMMENT_STATIC);
        m_ifname(&b, NFT_META_IIFNAME, sv, 1, NFT_CMP_EQ);
        a_verdict(&b, NF_DROP, NULL);
        rb_finish(n, bt, &b);
    }
    if (WANT("forward")) {
        /* VM <-> VM never, not even established (both ends are ours) */
        rb_start(&b, "forward", COMMENT_STATIC);
        m_ifname(&b, NFT_META_IIFNAME, sv, 1, NFT_CMP_EQ);
        m_ifname(&b, NFT_META_OIFNAME, sv, 1, NFT_CMP_EQ);
        a_verdict(&b, NF_DROP, NULL);
        rb_finish(n, bt, &b);
        /* from a VM: its policy, every packet (a VM without rules: dropped) */
        rb_start(&b, "forward", COMMENT_STATIC);
        m_ifname(&b, NFT_META_IIFNAME, sv, 1, NFT_CMP_EQ);
        a_verdict(&b, NFT_JUMP, "vm-egress");
        rb_finish(n, bt, &b);
        rb_start(&b, "forward", COMMENT_STATIC);
        m_ifname(&b, NFT_META_IIFNAME, sv, 1, NFT_CMP_EQ);
        a_verdict(&b, NF_DROP, NULL);
        rb_finish(n, bt, &b);
        /* into a VM: replies, and what a forward's DNAT sent there */
        rb_start(&b, "forward", COMMENT_STATIC);
        m_ifname(&b, NFT_META_OIFNAME, sv, 1, NFT_CMP_EQ);
        m_ct_bits(&b, NFT_CT_STATE, est);
        a_verdict(&b, NF_ACCEPT, NULL);
        rb_finish(n, bt, &b);
        rb_start(&b, "forward", COMMENT_STATIC);
        m_ifname(&b, NFT_META_OIFNAME, sv, 1, NFT_CMP_EQ);
        m_ct_bits(&b, NFT_CT_STATUS, IPS_DST_NAT);
        a_verdict(&b, NF_ACCEPT, NULL);
        rb_finish(n, bt, &b);
        rb_start(&b, "forward", COMMENT_STATIC);
        m_ifname(&b, NFT_META_OIFNAME, sv, 1, NFT_CMP_EQ);
        a_verdict(&b, NF_DROP, NULL);
        rb_finish(n, bt, &b);
    }
    if (WANT("input")) {
        rb_start(&b, "input", COMMENT_STATIC);
        m_ifname(&b, NFT_META_IIFNAME, sv, 1, NFT_CMP_EQ);
        a_verdict(&b, NFT_JUMP, "vm-input");
        rb_finish(n, bt, &b);
        rb_start(&b, "input", COMMENT_STATIC);
        m_ifname(&b, NFT_META_IIFNAME, sv, 1, NFT_CMP_EQ);
        a_verdict(&b, NF_DROP, NULL);
        rb_finish(n, bt, &b);
    }
#undef WANT
}

static int comment_vm(const char *comment, char *out, size_t size);

/* Is this rule of a shared chain one of today's static rules (1), a VM's (0), or
 * something else: an older layout's, or added by hand (-1)? */
static int static_kind(const dump_rule *r)
{
    char id[SMOLVM_NET_IDMAX];

    if (strcmp(r->comment, COMMENT_STATIC) == 0)
        return 1;
    return comment_vm(r->comment, id, sizeof(id)) ? 0 : -1;
}

/* The chain's static rules, or ~0u when it holds rules that are neither static nor a
 * VM's. */
static unsigned count_statics(const dump *d, const char *chain)
{
    unsigned c = 0;

    for (size_t i = 0; i < d->n; i++) {
        if (strcmp(d->rules[i].chain, chain) != 0)
            continue;
        switch (static_kind(&d->rules[i])) {
        case 1: c++; break;
        case -1: return ~0u;
        default: break;
        }
    }
    return c;
}

/* How many static rules the chain has in this layout (computed once, under the socket
 * lock that every caller holds). */
static unsigned expected_statics(nft *n, const char *chain)
{
    static batch dry;
    static int done;

    if (!done) {
        memset(&dry, 0, sizeof(dry));
        add_statics(n, &dry, NULL);
        done = !dry.oom;
        free(dry.buf); /* only the counts are kept */
        dry.buf = NULL;
        dry.len = dry.cap = 0;
    }
    for (size_t i = 0; i < dry.n_counts; i++)
        if (strcmp(dry.counts[i].chain, chain) == 0)
            return dry.counts[i].n;
    return 0;
}

/* Is the shared part intact? */
static int base_ok(nft *n, const dump *d)
{
    if (!d->table)
        return 0;
    for (size_t i = 0; i < SMOLVM_ARRAY_SIZE(chains); i++)
        if (!has_name(d->chains, d->n_chains, chains[i].name) ||
            count_statics(d, chains[i].name) != expected_statics(n, chains[i].name))
            return 0;
    return 1;
}

/* Create what is missing of the shared part and rewrite damaged shared chains. */
static void base_repair(nft *n, batch *bt, const dump *d)
{
    /* NLM_F_CREATE without EXCL: a no-op for what exists, so no listing of the table
     * and its chains is needed first */
    table_msg(n, bt, NFT_MSG_NEWTABLE);
    for (size_t i = 0; i < SMOLVM_ARRAY_SIZE(chains); i++)
        add_chain(n, bt, &chains[i], NULL);
    for (size_t i = 0; i < SMOLVM_ARRAY_SIZE(chains); i++) {
        const char *c = chains[i].name;

        if (count_statics(d, c) == expected_statics(n, c))
            continue;
        /* shared chains hold only static rules and VMs' rules: rewrite the static ones
         * (and drop an older layout's), in order */
        for (size_t j = 0; j < d->n; j++)
            if (strcmp(d->rules[j].chain, c) == 0 && static_kind(&d->rules[j]) != 0)
                del_rule(n, bt, c, d->rules[j].handle);
        add_statics(n, bt, c);
    }
}

/* ---------------------------------------------------------------- comments, names */

/* The VM id in a comment "vm:<id>[ ...]" into out; 0 if the comment is not a VM's. */
static int comment_vm(const char *comment, char *out, size_t size)
{
    size_t len;

    if (strncmp(comment, "vm:", 3) != 0)
        return 0;
    comment += 3;
    len = strcspn(comment, " ");
    if (len == 0 || len >= size)
        return 0;
    memcpy(out, comment, len);
    out[len] = '\0';
    return 1;
}

static int comment_is_vm(const char *comment, const char *vm_id)
{
    char id[SMOLVM_NET_IDMAX];

    return comment_vm(comment, id, sizeof(id)) && strcmp(id, vm_id) == 0;
}

/* "fwd:a.b.c.d:port" part of a comment; 0 if none. */
static int comment_fwd(const char *comment, uint32_t *addr_be, uint16_t *port)
{
    const char *f = strstr(comment, " fwd:");
    char addr[16];
    unsigned p;
    struct in_addr a;

    if (!f || sscanf(f + 5, "%15[0-9.]:%u", addr, &p) != 2 || p > 65535 ||
        inet_pton(AF_INET, addr, &a) != 1)
        return 0;
    *addr_be = a.s_addr;
    *port = (uint16_t)p;
    return 1;
}

static void fwd_comment(char *out, size_t size, const char *vm_id, uint32_t host_be, uint16_t port)
{
    char addr[INET_ADDRSTRLEN];
    struct in_addr a = {.s_addr = host_be};

    (void)inet_ntop(AF_INET, &a, addr, sizeof(addr));
    (void)snprintf(out, size, "vm:%s fwd:%s:%u", vm_id, addr, (unsigned)port);
}

/* Do two forwards' host sides overlap (same port, same address or one of them any)? */
static int fwd_overlap(uint32_t a_be, uint16_t a_port, uint32_t b_be, uint16_t b_port)
{
    return a_port == b_port && (a_be == b_be || a_be == 0 || b_be == 0);
}

/* Names of a VM's own chains and sets: "vm-<id>-<suffix>". */
static const char *const vm_chain_suffix[] = {"out", "pol", "in", "deny"}; /* deletion order */
static const char *const vm_set_suffix[] = {"allow", "dyn"};

typedef struct vmn {
    char comment[SMOLVM_NET_IDMAX + 4];
    char out[NAMELEN], pol[NAMELEN], in[NAMELEN], deny[NAMELEN], allow[NAMELEN], dyn[NAMELEN];
} vmn;

static void vm_names(const char *id, vmn *m)
{
    (void)snprintf(m->comment, sizeof(m->comment), "vm:%s", id);
    (void)snprintf(m->out, NAMELEN, "vm-%s-out", id);
    (void)snprintf(m->pol, NAMELEN, "vm-%s-pol", id);
    (void)snprintf(m->in, NAMELEN, "vm-%s-in", id);
    (void)snprintf(m->deny, NAMELEN, "vm-%s-deny", id);
    (void)snprintf(m->allow, NAMELEN, "vm-%s-allow", id);
    (void)snprintf(m->dyn, NAMELEN, "vm-%s-dyn", id);
}

/* The VM id of a chain or set name "vm-<id>-<suffix>"; 0 if it is not a VM's. */
static int name_vm(const char *name, const char *const *suffixes, size_t n_suffixes, char *out,
                   size_t size)
{
    size_t len = strlen(name);

    if (strncmp(name, "vm-", 3) != 0)
        return 0;
    for (size_t i = 0; i < n_suffixes; i++) {
        size_t sl = strlen(suffixes[i]);

        if (len > 3 + sl + 1 && name[len - sl - 1] == '-' &&
            strcmp(name + len - sl, suffixes[i]) == 0 && len - sl - 1 - 3 < size) {
            memcpy(out, name + 3, len - sl - 1 - 3);
            out[len - sl - 1 - 3] = '\0';
            return 1;
        }
    }
    return 0;
}

static int is_vm_chain(const char *chain, const char *vm_id)
{
    char id[SMOLVM_NET_IDMAX];

    return name_vm(chain, vm_chain_suffix, SMOLVM_ARRAY_SIZE(vm_chain_suffix), id, sizeof(id)) &&
           strcmp(id, vm_id) == 0;
}

/* ---------------------------------------------------------------- per-VM rules */

static void add_forward_rules(nft *n, batch *bt, const char *vm_id, uint32_t guest_be,
                              const smolvm_nft_fwd *f)
{
    char comment[SMOLVM_NET_IDMAX + 48];
    static const char *const hooks[] = {"prerouting", "output"};
    rb b;

    fwd_comment(comment, sizeof(comment), vm_id, f->host_be, f->host_port);
    for (unsigned i = 0; i < SMOLVM_ARRAY_SIZE(hooks); i++) {
        rb_start(&b, hooks[i], comment);
        if (f->host_be) {
            m_ip_addr(&b, 16, f->host_be, 32, NFT_CMP_EQ);
        } else {
            /* every local address but loopback (CVE-2020-8558: a packet from the
             * network addressed to 127.0.0.1 is never forwarded; the host's own
             * 127.0.0.1 side is the caller's proxy) */
            m_nfproto(&b, NFPROTO_IPV4);
            m_daddr_local(&b);
            m_ip_addr(&b, 16, htonl(0x7f000000), 8, NFT_CMP_NEQ);
        }
        m_l4_dport(&b, IPPROTO_TCP, f->host_port);
        a_counter(&b);
        a_dnat(&b, guest_be, f->guest_port);
        rb_finish(n, bt, &b);
    }
}

/* The rules of the policy chain (and of the log and input chains, which follow the
 * policy's log group and resolver), with the ct mark of this installation. */
static void add_policy_rules(nft *n, batch *bt, const smolvm_nft_vm *v, const vmn *m, uint32_t mark)
{
    const uint32_t est = NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED);
    rb b;

    /* deny: log the first packet of each refused connection, rate-limited in the rule
     * so a guest cannot flood the reader, then drop every packet */
    rb_start(&b, m->deny, m->comment);
    m_ct_bits(&b, NFT_CT_STATE, NF_CT_STATE_BIT(IP_CT_NEW));
    a_limit(&b, SMOLVM_NET_LOG_RATE, SMOLVM_NET_LOG_BURST);
    a_log(&b, v->log_group, m->comment);
    rb_finish(n, bt, &b);
    rb_start(&b, m->deny, m->comment);
    a_counter(&b);
    a_verdict(&b, NF_DROP, NULL);
    rb_finish(n, bt, &b);

    /* to the host: replies in connections the host opened (SSH, proxies), and DNS to
     * the resolver on the gateway if there is one; nothing else */
    rb_start(&b, m->in, m->comment);
    m_ct_bits(&b, NFT_CT_STATE, est);
    a_verdict(&b, NF_ACCEPT, NULL);
    rb_finish(n, bt, &b);
    if (v->dns) {
        static const uint8_t protos[] = {IPPROTO_UDP, IPPROTO_TCP};

        for (size_t i = 0; i < SMOLVM_ARRAY_SIZE(protos); i++) {
            rb_start(&b, m->in, m->comment);
            m_ip_addr(&b, 16, v->gateway_be, 32, NFT_CMP_EQ);
            m_l4_dport(&b, protos[i], 53);
            a_verdict(&b, NF_ACCEPT, NULL);
            rb_finish(n, bt, &b);
        }
    }
    rb_start(&b, m->in, m->comment);
    a_verdict(&b, NFT_GOTO, m->deny);
    rb_finish(n, bt, &b);

    /* the policy; every packet of the guest's own connections comes through here */
    switch (v->mode) {
    case SMOLVM_NET_EGRESS_NONE:
        rb_start(&b, m->pol, m->comment);
        a_verdict(&b, NFT_GOTO, m->deny);
        rb_finish(n, bt, &b);
        return;
    case SMOLVM_NET_EGRESS_ALLOW: {
        static const uint8_t protos[] = {IPPROTO_UDP, IPPROTO_TCP};

        /* DNS only through the VM's resolver, whatever the CIDRs allow */
        for (size_t i = 0; i < SMOLVM_ARRAY_SIZE(protos); i++) {
            rb_start(&b, m->pol, m->comment);
            m_l4_dport(&b, protos[i], 53);
            a_verdict(&b, NFT_GOTO, m->deny);
            rb_finish(n, bt, &b);
        }
        rb_start(&b, m->pol, m->comment);
        m_daddr_in_set(&b, m->allow);
        a_verdict(&b, NF_ACCEPT, NULL);
        rb_finish(n, bt, &b);
        break;
    }
    default: break;
    }
    for (size_t i = 0; i < SMOLVM_ARRAY_SIZE(smolvm_nft_special); i++) {
        rb_start(&b, m->pol, m->comment);
        m_ip_range(&b, 16, &smolvm_nft_special[i], NFT_CMP_EQ);
        a_verdict(&b, NFT_GOTO, m->deny);
        rb_finish(n, bt, &b);
    }
    if (v->mode == SMOLVM_NET_EGRESS_INTERNET) {
        rb_start(&b, m->pol, m->comment);
        a_verdict(&b, NF_ACCEPT, NULL);
        rb_finish(n, bt, &b);
        return;
    }
    /* a connection let in by a resolved address outlives the address's timeout, but
     * not a change of policy: the mark is new with every installation */
    rb_start(&b, m->pol, m->comment);
    m_ct_bits(&b, NFT_CT_STATE, est);
    m_ct_mark(&b, mark);
    a_verdict(&b, NF_ACCEPT, NULL);
    rb_finish(n, bt, &b);
    rb_start(&b, m->pol, m->comment);
    m_daddr_in_set(&b, m->dyn);
    a_ct_mark_set(&b, mark);
    a_verdict(&b, NF_ACCEPT, NULL);
    rb_finish(n, bt, &b);
    rb_start(&b, m->pol, m->comment);
    a_verdict(&b, NFT_GOTO, m->deny);
    rb_finish(n, bt, &b);
}

/* The allow set's elements: interval starts and ends, as nft(8) writes them. */
static void add_allow_elems(nft *n, batch *bt, const smolvm_nft_vm *v, const vmn *m)
{
    elem e[2 * SMOLVM_NET_MAX_ALLOW + 1];
    size_t k = 0;

    if (v->mode != SMOLVM_NET_EGRESS_ALLOW || v->n_allow == 0)
        return;
    if (v->allow[0].lo != 0)
        e[k++] = (elem){htonl(0), NFT_SET_ELEM_INTERVAL_END, 0};
    for (size_t i = 0; i < v->n_allow && i < SMOLVM_NET_MAX_ALLOW; i++) {
        e[k++] = (elem){htonl(v->allow[i].lo), 0, 0};
        if (v->allow[i].hi != UINT32_MAX)
            e[k++] = (elem){htonl(v->allow[i].hi + 1), NFT_SET_ELEM_INTERVAL_END, 0};
    }
    add_elems(n, bt, m->allow, e, k);
}

static uint32_t new_mark(void)
{
    uint32_t m = 0;

    if (smolvm_random(&m, sizeof(m), NULL) < 0 || m == 0)
        m = (uint32_t)smolvm_now_ms() | 1;
    return m;
}

/* Every rule of the VM (its chains must exist in the batch before). */
static void add_vm_rules(nft *n, batch *bt, const smolvm_nft_vm *v, const vmn *m)
{
    rb b;

    rb_start(&b, "vm-guard", m->comment);
    m_ifname(&b, NFT_META_IIFNAME, v->tap, 0, NFT_CMP_EQ);
    m_ip_addr(&b, 12, v->guest_be, 32, NFT_CMP_EQ);
    a_verdict(&b, NF_ACCEPT, NULL);
    rb_finish(n, bt, &b);

    add_policy_rules(n, bt, v, m, new_mark());

    /* out: replies of forwarded connections (the guest is their DNAT target); only
     * out of the uplink; then the policy */
    rb_start(&b, m->out, m->comment);
    m_ct_reply(&b);
    m_ct_bits(&b, NFT_CT_STATUS, IPS_DST_NAT);
    a_verdict(&b, NF_ACCEPT, NULL);
    rb_finish(n, bt, &b);
    rb_start(&b, m->out, m->comment);
    m_ifname(&b, NFT_META_OIFNAME, v->uplink, 0, NFT_CMP_NEQ);
    a_verdict(&b, NFT_GOTO, m->deny);
    rb_finish(n, bt, &b);
    rb_start(&b, m->out, m->comment);
    a_counter(&b);
    a_verdict(&b, NFT_GOTO, m->pol);
    rb_finish(n, bt, &b);

    rb_start(&b, "vm-egress", m->comment);
    m_ifname(&b, NFT_META_IIFNAME, v->tap, 0, NFT_CMP_EQ);
    a_verdict(&b, NFT_GOTO, m->out);
    rb_finish(n, bt, &b);
    rb_start(&b, "vm-input", m->comment);
    m_ifname(&b, NFT_META_IIFNAME, v->tap, 0, NFT_CMP_EQ);
    a_verdict(&b, NFT_GOTO, m->in);
    rb_finish(n, bt, &b);

    rb_start(&b, "postrouting", m->comment);
    m_ifname(&b, NFT_META_OIFNAME, v->uplink, 0, NFT_CMP_EQ);
    m_ip_addr(&b, 12, v->guest_be, 32, NFT_CMP_EQ);
    a_masq(&b);
    rb_finish(n, bt, &b);

    for (size_t i = 0; i < v->n_fwds; i++)
        add_forward_rules(n, bt, v->vm_id, v->guest_be, &v->fwds[i]);
}

/* Delete everything of vm_id that the dump shows (rules outside its chains first,
 * then its chains, which take their rules with them, then its sets). */
static int del_vm(nft *n, batch *bt, const dump *d, const char *vm_id)
{
    vmn m;
    int any = 0;

    vm_names(vm_id, &m);
    for (size_t i = 0; i < d->n; i++)
        if (comment_is_vm(d->rules[i].comment, vm_id) && !is_vm_chain(d->rules[i].chain, vm_id)) {
            del_rule(n, bt, d->rules[i].chain, d->rules[i].handle);
            any = 1;
        }
    for (size_t i = 0; i < SMOLVM_ARRAY_SIZE(vm_chain_suffix); i++) {
        char name[NAMELEN];

        (void)snprintf(name, sizeof(name), "vm-%s-%s", vm_id, vm_chain_suffix[i]);
        if (has_name(d->chains, d->n_chains, name)) {
            del_chain(n, bt, name);
            any = 1;
        }
    }
    for (size_t i = 0; i < SMOLVM_ARRAY_SIZE(vm_set_suffix); i++) {
        char name[NAMELEN];

        (void)snprintf(name, sizeof(name), "vm-%s-%s", vm_id, vm_set_suffix[i]);
        if (has_name(d->sets, d->n_sets, name)) {
            set_msg(n, bt, name, SET_DELETE);
            any = 1;
        }
    }
    return any;
}

/* Install the VM over whatever of it the dump shows: its rules elsewhere deleted, its
 * chains flushed or created, its sets flushed or created (keep_dyn: the dynamic set's
 * entries stay), then every rule and the allow list. */
static void put_vm(nft *n, batch *bt, const dump *d, const smolvm_nft_vm *v, int keep_dyn)
{
    const char *own[4];
    vmn m;

    vm_names(v->vm_id, &m);
    own[0] = m.deny, own[1] = m.pol, own[2] = m.in, own[3] = m.out;
    for (size_t i = 0; i < d->n; i++)
        if (comment_is_vm(d->rules[i].comment, v->vm_id) &&
            !is_vm_chain(d->rules[i].chain, v->vm_id))
            del_rule(n, bt, d->rules[i].chain, d->rules[i].handle);
    /* created if missing (a no-op otherwise), then emptied, in the same batch */
    for (size_t i = 0; i < SMOLVM_ARRAY_SIZE(own); i++) {
        add_chain(n, bt, NULL, own[i]);
        del_rule(n, bt, own[i], 0);
    }
    set_msg(n, bt, m.allow, SET_NEW_INTERVAL);
    set_msg(n, bt, m.allow, SET_FLUSH);
    set_msg(n, bt, m.dyn, SET_NEW_TIMEOUT);
    if (!keep_dyn)
        set_msg(n, bt, m.dyn, SET_FLUSH);
    add_allow_elems(n, bt, v, &m);
    add_vm_rules(n, bt, v, &m);
}

/* Host port conflicts of fwds against forwards of other VMs (or, with same_vm, any). */
static int check_conflicts(const dump *d, const char *vm_id, int same_vm,
                           const smolvm_nft_fwd *fwds, size_t nf, smolvm_error **err)
{
    for (size_t i = 0; i < d->n; i++) {
        char id[SMOLVM_NET_IDMAX];
        uint32_t a;
        uint16_t p;

        if (!comment_vm(d->rules[i].comment, id, sizeof(id)) ||
            !comment_fwd(d->rules[i].comment, &a, &p))
            continue;
        if (!same_vm && strcmp(id, vm_id) == 0)
            continue;
        for (size_t j = 0; j < nf; j++) {
            char addr[INET_ADDRSTRLEN];
            struct in_addr in = {.s_addr = fwds[j].host_be};

            if (!fwd_overlap(a, p, fwds[j].host_be, fwds[j].host_port))
                continue;
            (void)inet_ntop(AF_INET, &in, addr, sizeof(addr));
            return smolvm_err(err, SMOLVM_EEXIST,
                              "host port '%s:%u' is already forwarded to vm '%s'", addr,
                              (unsigned)fwds[j].host_port, id);
        }
    }
    return 0;
}

/* Run `build` against a fresh listing, retrying when a concurrent change removed
 * something we meant to delete (ENOENT): the listing and the batch are not one step.
 * build returns <0 (error), 0 (nothing to do) or 1 (send the batch). */
typedef int (*build_fn)(nft *n, batch *bt, const dump *d, void *arg, smolvm_error **err);

/* What a change needs listed first: everything, or the rules alone. */
enum { DUMP_ALL, DUMP_RULES };

static int change_dump(const char *what, build_fn build, void *arg, int mode, smolvm_error **err)
{
    nft n = {0};
    int r;

    if ((r = nft_open(&n, err)) < 0)
        return SMOLVM_NET_WRAP(r, err, "%s", what);
    for (int attempt = 0;; attempt++) {
        dump d = {0};
        batch bt = {0};

        if ((r = mode == DUMP_RULES ? nft_query(&n, NFT_MSG_GETRULE, &d) : nft_dump(&n, &d, 1)) <
            0) {
            dump_free(&d);
            r = nft_err(err, -r, "list table 'inet " SMOLVM_NFT_TABLE "'");
            break;
        }
        batch_begin(&n, &bt);
        r = build(&n, &bt, &d, arg, err);
        dump_free(&d);
        if (r <= 0) {
            batch_free(&bt);
            break;
        }
        batch_end(&n, &bt);
        r = batch_send(&n, &bt);
        batch_free(&bt);
        if (r == -ENOENT && attempt < 3)
            continue;
        if (r < 0)
            r = nft_err(err, -r, "apply batch");
        break;
    }
    nft_close(&n);
    if (r < 0)
        return SMOLVM_NET_WRAP(r, err, "%s", what);
    return 0;
}

static int change(const char *what, build_fn build, void *arg, smolvm_error **err)
{
    return change_dump(what, build, arg, DUMP_ALL, err);
}

/* ---------------------------------------------------------------- operations */

struct vm_arg {
    const smolvm_nft_vm *v;
    int keep_dyn;
};

static int build_vm_set(nft *n, batch *bt, const dump *d, void *arg, smolvm_error **err)
{
    struct vm_arg *a = arg;
    const smolvm_nft_vm *v = a->v;
    int r = check_conflicts(d, v->vm_id, 0, v->fwds, v->n_fwds, err);

    if (r < 0)
        return r;
    for (size_t i = 0; i < v->n_fwds; i++)
        for (size_t j = 0; j < i; j++)
            if (fwd_overlap(v->fwds[i].host_be, v->fwds[i].host_port, v->fwds[j].host_be,
                            v->fwds[j].host_port))
                return smolvm_err(err, SMOLVM_EEXIST, "host port '%u' is forwarded twice",
                                  (unsigned)v->fwds[i].host_port);
    base_repair(n, bt, d); /* rewrites only shared chains whose static rules differ */
    put_vm(n, bt, d, v, a->keep_dyn);
    return 1;
}

int smolvm_nft_vm_set(const smolvm_nft_vm *v, smolvm_error **err)
{
    struct vm_arg a = {v, 0};

    return change_dump("install rules", build_vm_set, &a, DUMP_RULES, err);
}

int smolvm_nft_vm_repair(const smolvm_nft_vm *v, smolvm_error **err)
{
    struct vm_arg a = {v, 1};

    return change_dump("repair rules", build_vm_set, &a, DUMP_RULES, err);
}

/* Does the dump hold exactly the VM's rules per chain, its chains and sets? */
static int vm_ok(nft *n, const dump *d, const smolvm_nft_vm *v)
{
    batch dry = {0};
    vmn m;
    int ok = 1;
    unsigned total = 0, seen = 0;

    vm_names(v->vm_id, &m);
    if (!has_name(d->chains, d->n_chains, m.out) || !has_name(d->chains, d->n_chains, m.pol) ||
        !has_name(d->chains, d->n_chains, m.in) || !has_name(d->chains, d->n_chains, m.deny) ||
        !has_name(d->sets, d->n_sets, m.allow) || !has_name(d->sets, d->n_sets, m.dyn))
        return 0;
    add_vm_rules(n, &dry, v, &m);
    if (dry.oom)
        ok = 0;
    for (size_t i = 0; ok && i < dry.n_counts; i++) {
        unsigned c = 0;

        for (size_t j = 0; j < d->n; j++)
            if (strcmp(d->rules[j].chain, dry.counts[i].chain) == 0 &&
                comment_is_vm(d->rules[j].comment, v->vm_id))
                c++;
        if (c != dry.counts[i].n)
            ok = 0;
        total += dry.counts[i].n;
    }
    for (size_t j = 0; j < d->n; j++)
        if (comment_is_vm(d->rules[j].comment, v->vm_id))
            seen++;
    batch_free(&dry);
    return ok && seen == total;
}

int smolvm_nft_vm_check(const smolvm_nft_vm *v, unsigned *missing, smolvm_error **err)
{
    nft n = {0};
    dump d = {0};
    int r;

    if ((r = nft_open(&n, err)) < 0)
        return r;
    r = nft_dump(&n, &d, 1);
    if (r < 0) {
        r = nft_err(err, -r, "list table 'inet " SMOLVM_NFT_TABLE "'");
    } else if (!d.table) {
        *missing = SMOLVM_NET_MISSING_TABLE | SMOLVM_NET_MISSING_BASE | SMOLVM_NET_MISSING_VM;
    } else {
        *missing = (base_ok(&n, &d) ? 0 : SMOLVM_NET_MISSING_BASE) |
                   (vm_ok(&n, &d, v) ? 0 : SMOLVM_NET_MISSING_VM);
    }
    dump_free(&d);
    nft_close(&n);
    return r;
}

/* The policy alone: no listing needed, the VM's chains and sets are named by its id. */
int smolvm_nft_vm_policy(const smolvm_nft_vm *v, smolvm_error **err)
{
    nft n = {0};
    batch bt = {0};
    vmn m;
    int r;

    vm_names(v->vm_id, &m);
    if ((r = nft_open(&n, err)) < 0)
        return SMOLVM_NET_WRAP(r, err, "change egress policy");
    batch_begin(&n, &bt);
    del_rule(&n, &bt, m.pol, 0);
    del_rule(&n, &bt, m.in, 0);
    del_rule(&n, &bt, m.deny, 0);
    set_msg(&n, &bt, m.allow, SET_FLUSH);
    set_msg(&n, &bt, m.dyn, SET_FLUSH);
    add_allow_elems(&n, &bt, v, &m);
    add_policy_rules(&n, &bt, v, &m, new_mark());
    batch_end(&n, &bt);
    r = batch_send(&n, &bt);
    batch_free(&bt);
    nft_close(&n);
    if (r == -ENOENT)
        return smolvm_err(err, SMOLVM_ENOENT,
                          "change egress policy: vm '%s' has no rules (is its network up?)",
                          v->vm_id);
    if (r < 0)
        return nft_err(err, -r, "change egress policy");
    return 0;
}

int smolvm_nft_dyn_add(const char *vm_id, uint32_t addr_be, uint32_t timeout_ms, smolvm_error **err)
{
    nft n = {0};
    batch bt = {0};
    elem e = {addr_be, 0, timeout_ms};
    vmn m;
    int r;

    vm_names(vm_id, &m);
    if ((r = nft_open(&n, err)) < 0)
        return r;
    batch_begin(&n, &bt);
    add_elems(&n, &bt, m.dyn, &e, 1);
    batch_end(&n, &bt);
    r = batch_send(&n, &bt);
    batch_free(&bt);
    nft_close(&n);
    if (r == -ENOENT)
        return smolvm_err(err, SMOLVM_ENOENT, "vm '%s' has no dynamic set (is its network up?)",
                          vm_id);
    if (r == -ENFILE)
        return smolvm_err(err, SMOLVM_ENOSPC,
                          "vm '%s' has %d resolved addresses allowed already (the most at once)",
                          vm_id, SMOLVM_NET_MAX_DYNAMIC);
    if (r < 0)
        return nft_err(err, -r, "add to the dynamic set");
    return 0;
}

static int build_vm_remove(nft *n, batch *bt, const dump *d, void *arg, smolvm_error **err)
{
    return d->table ? del_vm(n, bt, d, arg) : 0;
}

int smolvm_nft_vm_remove(const char *vm_id, smolvm_error **err)
{
    return change("remove rules", build_vm_remove, (void *)vm_id, err);
}

struct fwd_arg {
    const char *vm_id;
    uint32_t guest_be;
    smolvm_nft_fwd f;
    size_t max;
};

static int build_fwd_add(nft *n, batch *bt, const dump *d, void *arg, smolvm_error **err)
{
    struct fwd_arg *a = arg;
    int r = check_conflicts(d, a->vm_id, 1, &a->f, 1, err);
    size_t have = 0;

    if (r < 0)
        return r;
    if (!d->table || !has_name(d->chains, d->n_chains, "prerouting"))
        return smolvm_err(err, SMOLVM_ENOENT, "vm '%s' has no rules (is its network up?)",
                          a->vm_id);
    /* two rules per forward (prerouting, output) */
    for (size_t i = 0; i < d->n; i++) {
        uint32_t h;
        uint16_t p;

        if (strcmp(d->rules[i].chain, "prerouting") == 0 &&
            comment_is_vm(d->rules[i].comment, a->vm_id) &&
            comment_fwd(d->rules[i].comment, &h, &p))
            have++;
    }
    if (have >= a->max)
        return smolvm_err(err, SMOLVM_ENOSPC, "vm '%s' has %zu forwards (at most %zu)", a->vm_id,
                          have, a->max);
    add_forward_rules(n, bt, a->vm_id, a->guest_be, &a->f);
    return 1;
}

int smolvm_nft_forward_add(const char *vm_id, uint32_t guest_be, const smolvm_nft_fwd *f,
                           size_t max, smolvm_error **err)
{
    struct fwd_arg a = {vm_id, guest_be, *f, max};

    return change("add forward", build_fwd_add, &a, err);
}

static int build_fwd_remove(nft *n, batch *bt, const dump *d, void *arg, smolvm_error **err)
{
    struct fwd_arg *a = arg;
    int any = 0;

    for (size_t i = 0; i < d->n; i++) {
        uint32_t h;
        uint16_t p;

        if (comment_is_vm(d->rules[i].comment, a->vm_id) &&
            comment_fwd(d->rules[i].comment, &h, &p) && h == a->f.host_be && p == a->f.host_port) {
            del_rule(n, bt, d->rules[i].chain, d->rules[i].handle);
            any = 1;
        }
    }
    return any;
}

int smolvm_nft_forward_remove(const char *vm_id, uint32_t host_be, uint16_t host_port,
                              smolvm_error **err)
{
    struct fwd_arg a = {vm_id, 0, {host_be, host_port, 0}, 0};

    return change("remove forward", build_fwd_remove, &a, err);
}

static int is_live(const char *id, const char *const *live)
{
    for (size_t i = 0; live && live[i]; i++)
        if (strcmp(live[i], id) == 0)
            return 1;
    return 0;
}

/* Every VM id the dump shows something of, once each (into ids, at most max). */
static size_t dump_vms(const dump *d, char (*ids)[SMOLVM_NET_IDMAX], size_t max)
{
    size_t k = 0;

#define ADD(id)                                                                                    \
    do {                                                                                           \
        size_t j_;                                                                                 \
        for (j_ = 0; j_ < k; j_++)                                                                 \
            if (strcmp(ids[j_], (id)) == 0)                                                        \
                break;                                                                             \
        if (j_ == k && k < max)                                                                    \
            memcpy(ids[k++], (id), SMOLVM_NET_IDMAX);                                              \
    } while (0)
    for (size_t i = 0; i < d->n; i++) {
        char id[SMOLVM_NET_IDMAX] = {0};

        if (comment_vm(d->rules[i].comment, id, sizeof(id)))
            ADD(id);
    }
    for (size_t i = 0; i < d->n_chains; i++) {
        char id[SMOLVM_NET_IDMAX] = {0};

        if (name_vm(d->chains[i], vm_chain_suffix, SMOLVM_ARRAY_SIZE(vm_chain_suffix), id,
                    sizeof(id)))
            ADD(id);
    }
    for (size_t i = 0; i < d->n_sets; i++) {
        char id[SMOLVM_NET_IDMAX] = {0};

        if (name_vm(d->sets[i], vm_set_suffix, SMOLVM_ARRAY_SIZE(vm_set_suffix), id, sizeof(id)))
            ADD(id);
    }
#undef ADD
    return k;
}

struct gc_arg {
    const char *const *live;
    int left;
};

#define GC_MAX_VMS 4096

static int build_gc(nft *n, batch *bt, const dump *d, void *arg, smolvm_error **err)
{
    struct gc_arg *a = arg;
    char(*ids)[SMOLVM_NET_IDMAX] = calloc(GC_MAX_VMS, SMOLVM_NET_IDMAX);
    size_t k;
    int any = 0;

    if (!ids)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    k = dump_vms(d, ids, GC_MAX_VMS);
    a->left = 0;
    for (size_t i = 0; i < k; i++) {
        if (is_live(ids[i], a->live))
            a->left++;
        else if (del_vm(n, bt, d, ids[i]))
            any = 1;
    }
    free(ids);
    return any;
}

int smolvm_nft_gc(const char *const *live, int *left, smolvm_error **err)
{
    struct gc_arg a = {live, 0};
    int r = change("remove stale rules", build_gc, &a, err);

    if (r == 0 && left)
        *left = a.left;
    return r;
}

int smolvm_nft_table_delete(smolvm_error **err)
{
    nft n = {0};
    batch bt = {0};
    int r;

    if ((r = nft_open(&n, err)) < 0)
        return SMOLVM_NET_WRAP(r, err, "remove table");
    batch_begin(&n, &bt);
    table_msg(&n, &bt, NFT_MSG_DELTABLE);
    batch_end(&n, &bt);
    r = batch_send(&n, &bt);
    batch_free(&bt);
    nft_close(&n);
    if (r < 0 && r != -ENOENT)
        return nft_err(err, -r, "remove table 'inet " SMOLVM_NFT_TABLE "'");
    return 0;
}

int smolvm_nft_probe(smolvm_error **err)
{
    nft n = {0};
    dump d = {0};
    int r;

    if ((r = nft_open(&n, err)) < 0)
        return r;
    r = nft_query(&n, NFT_MSG_GETTABLE, &d);
    dump_free(&d);
    nft_close(&n);
    if (r < 0)
        return nft_err(err, -r, "list table 'inet " SMOLVM_NFT_TABLE "'");
    return 0;
}
