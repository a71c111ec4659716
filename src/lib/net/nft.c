/* SPDX-License-Identifier: MIT */
/*
 * smolvm's nftables table, `inet smolvm`, built with libnftnl and sent with libmnl.
 *
 * Layout (static rules carry the comment "smolvm", per-VM rules "vm:<id>" and forward
 * rules "vm:<id> fwd:<addr>:<port>", so `nft list table inet smolvm` shows the owner):
 *
 *   chain prerouting  nat    prerouting  -100   DNAT of forwards arriving from outside
 *   chain output      nat    output      -100   DNAT of forwards opened by the host
 *   chain postrouting nat    postrouting  100   masquerade out of the uplink; SNAT of
 *                                               host->guest forwards from 127.0.0.0/8
 *   chain forward     filter forward        0   VM<->VM drop, link-local drop,
 *                                               established accept, jump vm-egress,
 *                                               other traffic from/to VMs dropped
 *   chain vm-egress   (regular)                 per VM: its TAP + own address -> uplink
 *   chain input       filter input          0   from VMs: established only
 *
 * Every change is one batch (NFNL_MSG_BATCH_BEGIN .. END): the kernel applies all of
 * it or none. Rules are found again by listing the table and reading the comment in
 * their user data (the same TLV nft(8) writes), then deleted by handle.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libmnl/libmnl.h>
#include <libnftnl/chain.h>
#include <libnftnl/common.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <libnftnl/table.h>
#include <libnftnl/udata.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_conntrack_common.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/rtnetlink.h>

#include "error.h"
#include "net/net-internal.h"
#include "util.h"

#define NFT_FAMILY NFPROTO_INET
#define NFT_TIMEOUT_MS 2000
#define NFT_RECV_SIZE 32768
#define BATCH_MAX (512u * 1024u)
#define MSG_ROOM 4096u /* one rule message never comes near this */
#define COMMENT_STATIC "smolvm"
#define CHAIN_EGRESS "vm-egress"

/* ---------------------------------------------------------------- socket */

typedef struct nft {
    struct mnl_socket *nl;
    uint32_t portid;
    uint32_t seq;
} nft;

static void nft_close(nft *n)
{
    if (n->nl)
        (void)mnl_socket_close(n->nl);
    n->nl = NULL;
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
    n->nl = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC);
    if (!n->nl)
        return nft_err(err, errno, "open netlink socket");
    if (mnl_socket_bind(n->nl, 0, MNL_SOCKET_AUTOPID) < 0) {
        int e = errno;

        nft_close(n);
        return nft_err(err, e, "bind netlink socket");
    }
    n->portid = mnl_socket_get_portid(n->nl);
    n->seq = (uint32_t)time(NULL);
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
        if (r < 0)
            return -1;
        if (r == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        return mnl_socket_recvfrom(n->nl, buf, len);
    }
}

/* ---------------------------------------------------------------- batches */

typedef struct batch {
    char *buf;
    size_t len, cap;
    uint32_t first_seq;
    unsigned n_ack; /* messages carrying NLM_F_ACK */
    int oom;
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
        size_t cap = b->cap ? b->cap * 2 : 16384;
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

    b->first_seq = n->seq;
    if (p)
        batch_push(b, nftnl_batch_begin(p, n->seq++));
}

static void batch_end(nft *n, batch *b)
{
    char *p = batch_room(b);

    if (p)
        batch_push(b, nftnl_batch_end(p, n->seq++));
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
    if (mnl_socket_sendto(n->nl, b->buf, b->len) < 0)
        return -errno;
    while (got < b->n_ack) {
        ssize_t len = nft_recv(n, buf, sizeof(buf), first ? smolvm_now_ms() + 50 : deadline);
        const struct nlmsghdr *nlh;
        int rest;

        if (len < 0) {
            if (first) /* the kernel reports all errors at once: we have them */
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
    char chain[32];
    uint64_t handle;
    char comment[256];
} dump_rule;

typedef struct dump {
    dump_rule *rules;
    size_t n, cap;
    char chains[8][32];
    size_t n_chains;
    int oom;
} dump;

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
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 32;
        dump_rule *p = realloc(d->rules, cap * sizeof(*p));

        if (!p) {
            d->oom = 1;
            goto out;
        }
        d->rules = p;
        d->cap = cap;
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

static int chain_cb(const struct nlmsghdr *nlh, void *data)
{
    dump *d = data;
    struct nftnl_chain *c = nftnl_chain_alloc();

    /* the chain dump does not filter by table: keep ours only */
    if (c && nftnl_chain_nlmsg_parse(nlh, c) >= 0 &&
        strcmp(nftnl_chain_get_str(c, NFTNL_CHAIN_TABLE) ?: "", SMOLVM_NFT_TABLE) == 0 &&
        d->n_chains < SMOLVM_ARRAY_SIZE(d->chains))
        (void)snprintf(d->chains[d->n_chains++], sizeof(d->chains[0]), "%s",
                       nftnl_chain_get_str(c, NFTNL_CHAIN_NAME) ?: "");
    if (c)
        nftnl_chain_free(c);
    return MNL_CB_OK;
}

static void dump_free(dump *d)
{
    free(d->rules);
    memset(d, 0, sizeof(*d));
}

/* Dump rules (what = NFT_MSG_GETRULE) or chains (NFT_MSG_GETCHAIN) of our table. A
 * missing table is an empty result. Returns 0 or -errno. */
static int nft_dump(nft *n, uint16_t what, dump *d)
{
    char buf[NFT_RECV_SIZE];
    int64_t deadline = smolvm_now_ms() + NFT_TIMEOUT_MS;
    uint32_t seq = n->seq++;
    struct nlmsghdr *nlh;
    int r;

    memset(buf, 0, MSG_ROOM); /* attribute padding goes to the kernel too */
    if (what == NFT_MSG_GETRULE) {
        struct nftnl_rule *rule = nftnl_rule_alloc();

        if (!rule)
            return -ENOMEM;
        nlh = nftnl_rule_nlmsg_build_hdr(buf, NFT_MSG_GETRULE, NFT_FAMILY, NLM_F_DUMP, seq);
        nftnl_rule_set_str(rule, NFTNL_RULE_TABLE, SMOLVM_NFT_TABLE);
        nftnl_rule_nlmsg_build_payload(nlh, rule);
        nftnl_rule_free(rule);
    } else {
        struct nftnl_chain *c = nftnl_chain_alloc();

        if (!c)
            return -ENOMEM;
        nlh = nftnl_chain_nlmsg_build_hdr(buf, NFT_MSG_GETCHAIN, NFT_FAMILY, NLM_F_DUMP, seq);
        nftnl_chain_set_str(c, NFTNL_CHAIN_TABLE, SMOLVM_NFT_TABLE);
        nftnl_chain_nlmsg_build_payload(nlh, c);
        nftnl_chain_free(c);
    }
    if (mnl_socket_sendto(n->nl, nlh, nlh->nlmsg_len) < 0)
        return -errno;
    do {
        ssize_t len = nft_recv(n, buf, sizeof(buf), deadline);

        if (len < 0)
            return -errno;
        r = mnl_cb_run(buf, (size_t)len, seq, n->portid,
                       what == NFT_MSG_GETRULE ? rule_cb : chain_cb, d);
    } while (r > 0);
    if (r < 0) {
        if (errno == ENOENT) /* no table */
            return 0;
        return -errno;
    }
    if (d->oom)
        return -ENOMEM;
    return 0;
}

/* ---------------------------------------------------------------- expressions */

/* A rule under construction; expression allocation failures set oom. */
typedef struct rb {
    struct nftnl_rule *r;
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

/* iifname/oifname: exact name, or a prefix match (like nft's "sv-*") when prefix. */
static void m_ifname(rb *b, uint32_t key, const char *name, int prefix)
{
    char pad[SMOLVM_NET_IFNAMSIZ] = {0};

    (void)snprintf(pad, sizeof(pad), "%s", name);
    m_meta(b, key);
    m_cmp(b, NFT_CMP_EQ, pad, prefix ? (uint32_t)strlen(pad) : sizeof(pad));
}

static void m_ipv4(rb *b)
{
    uint8_t v = NFPROTO_IPV4;

    m_meta(b, NFT_META_NFPROTO);
    m_cmp(b, NFT_CMP_EQ, &v, 1);
}

/* ip saddr (offset 12) / daddr (offset 16) within addr_be/plen, plen a multiple of 8. */
static void m_ip_addr(rb *b, uint32_t offset, uint32_t addr_be, int plen, uint32_t op)
{
    struct nftnl_expr *e = ex(b, "payload");

    if (!e)
        return;
    nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER);
    nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_OFFSET, offset);
    nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_LEN, (uint32_t)plen / 8);
    nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_DREG, NFT_REG_1);
    m_cmp(b, op, &addr_be, (uint32_t)plen / 8);
}

static void m_tcp_dport(rb *b, uint16_t port)
{
    uint8_t proto = IPPROTO_TCP;
    uint16_t be = htons(port);
    struct nftnl_expr *e;

    m_meta(b, NFT_META_L4PROTO);
    m_cmp(b, NFT_CMP_EQ, &proto, 1);
    if (!(e = ex(b, "payload")))
        return;
    nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_BASE, NFT_PAYLOAD_TRANSPORT_HEADER);
    nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_OFFSET, 2);
    nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_LEN, 2);
    nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_DREG, NFT_REG_1);
    m_cmp(b, NFT_CMP_EQ, &be, 2);
}

/* ct <key> & mask != 0 (ct state established,related; ct status dnat). */
static void m_ct_bits(rb *b, uint32_t key, uint32_t mask)
{
    uint32_t zero = 0;
    struct nftnl_expr *e = ex(b, "ct");

    if (!e)
        return;
    nftnl_expr_set_u32(e, NFTNL_EXPR_CT_KEY, key);
    nftnl_expr_set_u32(e, NFTNL_EXPR_CT_DREG, NFT_REG_1);
    if (!(e = ex(b, "bitwise")))
        return;
    nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_SREG, NFT_REG_1);
    nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_DREG, NFT_REG_1);
    nftnl_expr_set_u32(e, NFTNL_EXPR_BITWISE_LEN, 4);
    nftnl_expr_set(e, NFTNL_EXPR_BITWISE_MASK, &mask, 4);
    nftnl_expr_set(e, NFTNL_EXPR_BITWISE_XOR, &zero, 4);
    m_cmp(b, NFT_CMP_NEQ, &zero, 4);
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

static int rb_start(rb *b, const char *chain, const char *comment)
{
    struct nftnl_udata_buf *ud;

    memset(b, 0, sizeof(*b));
    if (!(b->r = nftnl_rule_alloc()))
        return -ENOMEM;
    nftnl_rule_set_str(b->r, NFTNL_RULE_TABLE, SMOLVM_NFT_TABLE);
    nftnl_rule_set_str(b->r, NFTNL_RULE_CHAIN, chain);
    nftnl_rule_set_u32(b->r, NFTNL_RULE_FAMILY, NFT_FAMILY);
    if (!(ud = nftnl_udata_buf_alloc(NFT_USERDATA_MAXLEN))) {
        b->oom = 1;
        return -ENOMEM;
    }
    if (!nftnl_udata_put_strz(ud, NFTNL_UDATA_RULE_COMMENT, comment))
        b->oom = 1;
    else
        nftnl_rule_set_data(b->r, NFTNL_RULE_USERDATA, nftnl_udata_buf_data(ud),
                            nftnl_udata_buf_len(ud));
    nftnl_udata_buf_free(ud);
    return 0;
}

/* Append the finished rule to the batch and free it. */
static void rb_finish(nft *n, batch *bt, rb *b)
{
    char *p = batch_room(bt);

    if (!b->r) {
        bt->oom = 1;
        return;
    }
    if (b->oom || !p) {
        bt->oom = 1;
    } else {
        struct nlmsghdr *nlh = nftnl_rule_nlmsg_build_hdr(
            p, NFT_MSG_NEWRULE, NFT_FAMILY, NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK, n->seq++);

        nftnl_rule_nlmsg_build_payload(nlh, b->r);
        batch_push(bt, nlh);
    }
    nftnl_rule_free(b->r);
    b->r = NULL;
}

static void del_rule(nft *n, batch *bt, const dump_rule *dr)
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
    nftnl_rule_set_str(r, NFTNL_RULE_CHAIN, dr->chain);
    nftnl_rule_set_u64(r, NFTNL_RULE_HANDLE, dr->handle);
    nlh = nftnl_rule_nlmsg_build_hdr(p, NFT_MSG_DELRULE, NFT_FAMILY, NLM_F_ACK, n->seq++);
    nftnl_rule_nlmsg_build_payload(nlh, r);
    batch_push(bt, nlh);
    nftnl_rule_free(r);
}

/* ---------------------------------------------------------------- the table */

static const struct {
    const char *name, *type;
    uint32_t hook;
    int32_t prio;
} chains[] = {
    {"prerouting", "nat", NF_INET_PRE_ROUTING, -100},
    {"output", "nat", NF_INET_LOCAL_OUT, -100}, /* `priority dstnat` is refused here */
    {"postrouting", "nat", NF_INET_POST_ROUTING, 100},
    {"forward", "filter", NF_INET_FORWARD, 0},
    {"input", "filter", NF_INET_LOCAL_IN, 0},
    {CHAIN_EGRESS, NULL, 0, 0},
};

static void add_chain(nft *n, batch *bt, unsigned i)
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
    nftnl_chain_set_str(c, NFTNL_CHAIN_NAME, chains[i].name);
    if (chains[i].type) {
        nftnl_chain_set_str(c, NFTNL_CHAIN_TYPE, chains[i].type);
        nftnl_chain_set_u32(c, NFTNL_CHAIN_HOOKNUM, chains[i].hook);
        nftnl_chain_set_s32(c, NFTNL_CHAIN_PRIO, chains[i].prio);
        /* accept: smolvm never decides for traffic that is not its own */
        nftnl_chain_set_u32(c, NFTNL_CHAIN_POLICY, NF_ACCEPT);
    }
    nlh = nftnl_chain_nlmsg_build_hdr(p, NFT_MSG_NEWCHAIN, NFT_FAMILY, NLM_F_CREATE | NLM_F_ACK,
                                      n->seq++);
    nftnl_chain_nlmsg_build_payload(nlh, c);
    batch_push(bt, nlh);
    nftnl_chain_free(c);
}

/* The table, its chains and static rules, in the batch. NEWTABLE is exclusive: a
 * concurrent creator makes the whole batch fail with EEXIST, and the table is then
 * known to be complete. */
static void add_skeleton(nft *n, batch *bt)
{
    const uint32_t est = NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED);
    struct nftnl_table *t = nftnl_table_alloc();
    char *p = batch_room(bt);
    struct nlmsghdr *nlh;
    rb b;

    if (!t || !p) {
        bt->oom = 1;
        if (t)
            nftnl_table_free(t);
        return;
    }
    nftnl_table_set_str(t, NFTNL_TABLE_NAME, SMOLVM_NFT_TABLE);
    nlh = nftnl_table_nlmsg_build_hdr(p, NFT_MSG_NEWTABLE, NFT_FAMILY,
                                      NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK, n->seq++);
    nftnl_table_nlmsg_build_payload(nlh, t);
    batch_push(bt, nlh);
    nftnl_table_free(t);
    for (unsigned i = 0; i < SMOLVM_ARRAY_SIZE(chains); i++)
        add_chain(n, bt, i);

    /* forward: VM <-> VM never, not even established (both ends are ours) */
    (void)rb_start(&b, "forward", COMMENT_STATIC);
    m_ifname(&b, NFT_META_IIFNAME, SMOLVM_NET_LINK_PREFIX, 1);
    m_ifname(&b, NFT_META_OIFNAME, SMOLVM_NET_LINK_PREFIX, 1);
    a_verdict(&b, NF_DROP, NULL);
    rb_finish(n, bt, &b);
    /* forward: link-local targets (cloud metadata 169.254.169.254 and the rest) */
    (void)rb_start(&b, "forward", COMMENT_STATIC);
    m_ifname(&b, NFT_META_IIFNAME, SMOLVM_NET_LINK_PREFIX, 1);
    m_ipv4(&b);
    m_ip_addr(&b, 16, htonl(0xa9fe0000), 16, NFT_CMP_EQ);
    a_verdict(&b, NF_DROP, NULL);
    rb_finish(n, bt, &b);
    (void)rb_start(&b, "forward", COMMENT_STATIC);
    m_ct_bits(&b, NFT_CT_STATE, est);
    a_verdict(&b, NF_ACCEPT, NULL);
    rb_finish(n, bt, &b);
    (void)rb_start(&b, "forward", COMMENT_STATIC);
    m_ifname(&b, NFT_META_IIFNAME, SMOLVM_NET_LINK_PREFIX, 1);
    a_verdict(&b, NFT_JUMP, CHAIN_EGRESS);
    rb_finish(n, bt, &b);
    (void)rb_start(&b, "forward", COMMENT_STATIC);
    m_ifname(&b, NFT_META_IIFNAME, SMOLVM_NET_LINK_PREFIX, 1);
    a_verdict(&b, NF_DROP, NULL);
    rb_finish(n, bt, &b);
    /* forward: into a VM only what a forward's DNAT sent there */
    (void)rb_start(&b, "forward", COMMENT_STATIC);
    m_ifname(&b, NFT_META_OIFNAME, SMOLVM_NET_LINK_PREFIX, 1);
    m_ct_bits(&b, NFT_CT_STATUS, IPS_DST_NAT);
    a_verdict(&b, NF_ACCEPT, NULL);
    rb_finish(n, bt, &b);
    (void)rb_start(&b, "forward", COMMENT_STATIC);
    m_ifname(&b, NFT_META_OIFNAME, SMOLVM_NET_LINK_PREFIX, 1);
    a_verdict(&b, NF_DROP, NULL);
    rb_finish(n, bt, &b);

    /* input: a VM talks to the host only in connections the host opened */
    (void)rb_start(&b, "input", COMMENT_STATIC);
    m_ifname(&b, NFT_META_IIFNAME, SMOLVM_NET_LINK_PREFIX, 1);
    m_ct_bits(&b, NFT_CT_STATE, est);
    a_verdict(&b, NF_ACCEPT, NULL);
    rb_finish(n, bt, &b);
    (void)rb_start(&b, "input", COMMENT_STATIC);
    m_ifname(&b, NFT_META_IIFNAME, SMOLVM_NET_LINK_PREFIX, 1);
    a_verdict(&b, NF_DROP, NULL);
    rb_finish(n, bt, &b);
}

/* 1 when the table has all its chains, 0 when it is missing, -errno otherwise; an
 * incomplete table (someone deleted a chain by hand) is -EBADSLT. */
static int table_state(nft *n)
{
    dump d = {0};
    size_t found = 0;
    int r = nft_dump(n, NFT_MSG_GETCHAIN, &d);

    if (r < 0)
        return r;
    for (size_t i = 0; i < SMOLVM_ARRAY_SIZE(chains); i++)
        for (size_t j = 0; j < d.n_chains; j++)
            if (strcmp(chains[i].name, d.chains[j]) == 0) {
                found++;
                break;
            }
    dump_free(&d);
    if (found == 0)
        return 0;
    return found == SMOLVM_ARRAY_SIZE(chains) ? 1 : -EBADSLT;
}

static int ensure_table(nft *n, smolvm_error **err)
{
    batch bt = {0};
    int r = table_state(n);

    if (r == -EBADSLT)
        return smolvm_err(err, SMOLVM_ENET,
                          "nftables: table 'inet " SMOLVM_NFT_TABLE "' is incomplete (stop "
                          "all VMs and run 'nft delete table inet " SMOLVM_NFT_TABLE "')");
    if (r < 0)
        return nft_err(err, -r, "list table 'inet " SMOLVM_NFT_TABLE "'");
    if (r == 1)
        return 0;
    batch_begin(n, &bt);
    add_skeleton(n, &bt);
    batch_end(n, &bt);
    r = batch_send(n, &bt);
    batch_free(&bt);
    if (r == -EEXIST) /* created concurrently by another process, in one batch */
        r = table_state(n) == 1 ? 0 : -EEXIST;
    if (r < 0)
        return nft_err(err, -r, "create table 'inet " SMOLVM_NFT_TABLE "'");
    return 0;
}

/* ---------------------------------------------------------------- comments */

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

/* ---------------------------------------------------------------- per-VM rules */

static int is_loopback(uint32_t be)
{
    return (ntohl(be) >> 24) == 127;
}

static void add_forward_rules(nft *n, batch *bt, const char *vm_id, uint32_t guest_be,
                              const smolvm_nft_fwd *f)
{
    char comment[SMOLVM_NET_IDMAX + 48];
    static const char *const hooks[] = {"prerouting", "output"};
    rb b;

    fwd_comment(comment, sizeof(comment), vm_id, f->host_be, f->host_port);
    for (unsigned i = 0; i < SMOLVM_ARRAY_SIZE(hooks); i++) {
        int pre = i == 0;

        /* A packet from the network addressed to 127.0.0.1 must never be forwarded
         * (CVE-2020-8558): loopback forwards exist in the output chain only. */
        if (pre && f->host_be && is_loopback(f->host_be))
            continue;
        (void)rb_start(&b, hooks[i], comment);
        m_ipv4(&b);
        if (f->host_be) {
            m_ip_addr(&b, 16, f->host_be, 32, NFT_CMP_EQ);
        } else {
            m_daddr_local(&b);
            if (pre)
                m_ip_addr(&b, 16, htonl(0x7f000000), 8, NFT_CMP_NEQ);
        }
        m_tcp_dport(&b, f->host_port);
        a_counter(&b);
        a_dnat(&b, guest_be, f->guest_port);
        rb_finish(n, bt, &b);
    }
}

static void add_vm_rules(nft *n, batch *bt, const char *vm_id, const char *tap, const char *uplink,
                         uint32_t guest_be)
{
    char comment[SMOLVM_NET_IDMAX + 8];
    rb b;

    (void)snprintf(comment, sizeof(comment), "vm:%s", vm_id);
    /* egress: from its own TAP, with its own address, out of the uplink */
    (void)rb_start(&b, CHAIN_EGRESS, comment);
    m_ifname(&b, NFT_META_IIFNAME, tap, 0);
    m_ifname(&b, NFT_META_OIFNAME, uplink, 0);
    m_ipv4(&b);
    m_ip_addr(&b, 12, guest_be, 32, NFT_CMP_EQ);
    a_counter(&b);
    a_verdict(&b, NF_ACCEPT, NULL);
    rb_finish(n, bt, &b);
    (void)rb_start(&b, "postrouting", comment);
    m_ifname(&b, NFT_META_OIFNAME, uplink, 0);
    m_ipv4(&b);
    m_ip_addr(&b, 12, guest_be, 32, NFT_CMP_EQ);
    a_masq(&b);
    rb_finish(n, bt, &b);
    /* host -> 127.0.0.1:port DNATed to the guest leaves with source 127.0.0.1; the
     * guest must see the gateway instead (and route_localnet lets it leave at all) */
    (void)rb_start(&b, "postrouting", comment);
    m_ifname(&b, NFT_META_OIFNAME, tap, 0);
    m_ipv4(&b);
    m_ip_addr(&b, 12, htonl(0x7f000000), 8, NFT_CMP_EQ);
    a_masq(&b);
    rb_finish(n, bt, &b);
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

/* Run `build` against a fresh listing, retrying when a concurrent change removed a
 * rule we meant to delete (ENOENT) — the listing and the batch are not one step. */
typedef int (*build_fn)(nft *n, batch *bt, const dump *d, void *arg, smolvm_error **err);

static int change(const char *what, build_fn build, void *arg, int need_table, smolvm_error **err)
{
    nft n = {0};
    int r;

    if ((r = nft_open(&n, err)) < 0)
        return smolvm_err_wrap(err, "%s", what);
    if (need_table && (r = ensure_table(&n, err)) < 0) {
        nft_close(&n);
        return smolvm_err_wrap(err, "%s", what);
    }
    for (int attempt = 0;; attempt++) {
        dump d = {0};
        batch bt = {0};

        if ((r = nft_dump(&n, NFT_MSG_GETRULE, &d)) < 0) {
            r = nft_err(err, -r, "list rules");
            break;
        }
        batch_begin(&n, &bt);
        r = build(&n, &bt, &d, arg, err);
        dump_free(&d);
        if (r < 0) {
            batch_free(&bt);
            break;
        }
        if (r == 0) { /* nothing to do */
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
        return smolvm_err_wrap(err, "%s", what);
    return 0;
}

struct vm_set_arg {
    const char *vm_id, *tap, *uplink;
    uint32_t guest_be;
    const smolvm_nft_fwd *fwds;
    size_t n;
};

static int build_vm_set(nft *n, batch *bt, const dump *d, void *arg, smolvm_error **err)
{
    struct vm_set_arg *a = arg;
    int r = check_conflicts(d, a->vm_id, 0, a->fwds, a->n, err);

    if (r < 0)
        return r;
    for (size_t i = 0; i < a->n; i++)
        for (size_t j = 0; j < i; j++)
            if (fwd_overlap(a->fwds[i].host_be, a->fwds[i].host_port, a->fwds[j].host_be,
                            a->fwds[j].host_port))
                return smolvm_err(err, SMOLVM_EEXIST, "host port '%u' is forwarded twice",
                                  (unsigned)a->fwds[i].host_port);
    /* replace whatever this VM had (a restart after a crash) in the same batch */
    for (size_t i = 0; i < d->n; i++)
        if (comment_is_vm(d->rules[i].comment, a->vm_id))
            del_rule(n, bt, &d->rules[i]);
    add_vm_rules(n, bt, a->vm_id, a->tap, a->uplink, a->guest_be);
    for (size_t i = 0; i < a->n; i++)
        add_forward_rules(n, bt, a->vm_id, a->guest_be, &a->fwds[i]);
    return 1;
}

int smolvm_nft_vm_set(const char *vm_id, const char *tap, const char *uplink, uint32_t guest_be,
                      const smolvm_nft_fwd *fwds, size_t n, smolvm_error **err)
{
    struct vm_set_arg a = {vm_id, tap, uplink, guest_be, fwds, n};

    return change("install rules", build_vm_set, &a, 1, err);
}

static int build_vm_remove(nft *n, batch *bt, const dump *d, void *arg, smolvm_error **err)
{
    int any = 0;

    for (size_t i = 0; i < d->n; i++)
        if (comment_is_vm(d->rules[i].comment, arg)) {
            del_rule(n, bt, &d->rules[i]);
            any = 1;
        }
    return any;
}

int smolvm_nft_vm_remove(const char *vm_id, smolvm_error **err)
{
    return change("remove rules", build_vm_remove, (void *)vm_id, 0, err);
}

struct fwd_arg {
    const char *vm_id;
    uint32_t guest_be;
    smolvm_nft_fwd f;
};

static int build_fwd_add(nft *n, batch *bt, const dump *d, void *arg, smolvm_error **err)
{
    struct fwd_arg *a = arg;
    int r = check_conflicts(d, a->vm_id, 1, &a->f, 1, err);

    if (r < 0)
        return r;
    add_forward_rules(n, bt, a->vm_id, a->guest_be, &a->f);
    return 1;
}

int smolvm_nft_forward_add(const char *vm_id, uint32_t guest_be, const smolvm_nft_fwd *f,
                           smolvm_error **err)
{
    struct fwd_arg a = {vm_id, guest_be, *f};

    return change("add forward", build_fwd_add, &a, 1, err);
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
            del_rule(n, bt, &d->rules[i]);
            any = 1;
        }
    }
    return any;
}

int smolvm_nft_forward_remove(const char *vm_id, uint32_t host_be, uint16_t host_port,
                              smolvm_error **err)
{
    struct fwd_arg a = {vm_id, 0, {host_be, host_port, 0}};

    return change("remove forward", build_fwd_remove, &a, 0, err);
}

static int is_live(const char *id, const char *const *live)
{
    for (size_t i = 0; live && live[i]; i++)
        if (strcmp(live[i], id) == 0)
            return 1;
    return 0;
}

static int build_gc(nft *n, batch *bt, const dump *d, void *arg, smolvm_error **err)
{
    const char *const *live = arg;
    int any = 0;

    for (size_t i = 0; i < d->n; i++) {
        char id[SMOLVM_NET_IDMAX];

        if (comment_vm(d->rules[i].comment, id, sizeof(id)) && !is_live(id, live)) {
            del_rule(n, bt, &d->rules[i]);
            any = 1;
        }
    }
    return any;
}

int smolvm_nft_gc(const char *const *live, smolvm_error **err)
{
    nft n = {0};
    batch bt = {0};
    int r;

    if (live && live[0])
        return change("remove stale rules", build_gc, (void *)live, 0, err);
    /* nothing is live: drop the table, the next VM recreates it from this code */
    if ((r = nft_open(&n, err)) < 0)
        return smolvm_err_wrap(err, "remove table");
    batch_begin(&n, &bt);
    {
        struct nftnl_table *t = nftnl_table_alloc();
        char *p = batch_room(&bt);

        if (t && p) {
            struct nlmsghdr *nlh =
                nftnl_table_nlmsg_build_hdr(p, NFT_MSG_DELTABLE, NFT_FAMILY, NLM_F_ACK, n.seq++);

            nftnl_table_set_str(t, NFTNL_TABLE_NAME, SMOLVM_NFT_TABLE);
            nftnl_table_nlmsg_build_payload(nlh, t);
            batch_push(&bt, nlh);
        } else {
            bt.oom = 1;
        }
        if (t)
            nftnl_table_free(t);
    }
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
    int r;

    if ((r = nft_open(&n, err)) < 0)
        return r;
    r = table_state(&n);
    nft_close(&n);
    if (r < 0 && r != -EBADSLT)
        return nft_err(err, -r, "list table 'inet " SMOLVM_NFT_TABLE "'");
    return 0;
}
