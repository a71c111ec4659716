/* SPDX-License-Identifier: MIT */
/*
 * The reader of a VM's denied attempts: an nfnetlink_log socket bound to the VM's
 * NFLOG group (the group its deny chain logs to, see nft.c), messages built and
 * parsed with libnetfilter_log's libmnl helpers. Non-blocking; the caller watches the
 * fd in its event loop and reads a bounded number of records per wake-up.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <libmnl/libmnl.h>
#include <linux/netfilter/nfnetlink.h>
#include <libnetfilter_log/linux_nfnetlink_log.h>
#include <libnetfilter_log/libnetfilter_log.h>

#include "error.h"
#include "net/net-internal.h"
#include "util.h"

#define NFLOG_BUF 65536
#define NFLOG_RCVBUF (1024 * 1024)
#define NFLOG_COPY 128         /* bytes of each packet: IPv4 header + ports */
#define NFLOG_RECVS_PER_READ 8 /* datagrams one read may consume */
#define NFLOG_TIMEOUT_MS 2000

struct smolvm_nflog {
    struct mnl_socket *nl;
    uint32_t portid, seq;
    uint16_t group;
    char prefix[SMOLVM_NET_IDMAX + 4]; /* "vm:<id>" */
    uint64_t lost;
    size_t len, off; /* the datagram being consumed */
    char buf[NFLOG_BUF];
};

smolvm_nflog *smolvm_nflog_free(smolvm_nflog *log)
{
    if (!log)
        return NULL;
    if (log->nl)
        (void)mnl_socket_close(log->nl);
    free(log);
    return NULL;
}

int smolvm_nflog_fd(const smolvm_nflog *log)
{
    return log && log->nl ? mnl_socket_get_fd(log->nl) : -1;
}

uint64_t smolvm_nflog_lost(const smolvm_nflog *log)
{
    return log ? log->lost : 0;
}

/* Send one config message and wait for its acknowledgement. Returns 0 or -errno. */
static int config(smolvm_nflog *log, struct nlmsghdr *nlh)
{
    char buf[8192];
    int64_t deadline = smolvm_now_ms() + NFLOG_TIMEOUT_MS;
    uint32_t seq = ++log->seq;

    nlh->nlmsg_flags |= NLM_F_ACK;
    nlh->nlmsg_seq = seq;
    if (mnl_socket_sendto(log->nl, nlh, nlh->nlmsg_len) < 0)
        return -errno;
    for (;;) {
        struct pollfd p = {.fd = mnl_socket_get_fd(log->nl), .events = POLLIN};
        ssize_t n;
        int r = poll(&p, 1, smolvm_remaining_ms(deadline));

        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return r < 0 ? -errno : -ETIMEDOUT;
        n = mnl_socket_recvfrom(log->nl, buf, sizeof(buf));
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n < 0)
            return -errno;
        /* packets of the group may already arrive: only our ack ends the wait */
        r = mnl_cb_run(buf, (size_t)n, seq, log->portid, NULL, NULL);
        if (r < 0 && errno == ESRCH) /* another sequence number: not our answer */
            continue;
        if (r < 0)
            return -errno;
        if (r == MNL_CB_STOP)
            return 0;
    }
}

int smolvm_nflog_open(smolvm_nflog **out, unsigned group, const char *vm_id, smolvm_error **err)
{
    char buf[8192];
    smolvm_nflog *log;
    struct nlmsghdr *nlh;
    int r, rcvbuf = NFLOG_RCVBUF;

    if (group < 1 || group > 65535)
        return smolvm_err(err, SMOLVM_EINVAL, "nflog: invalid group '%u' (1..65535)", group);
    if (!vm_id || !*vm_id || strlen(vm_id) >= SMOLVM_NET_IDMAX)
        return smolvm_err(err, SMOLVM_EINVAL, "nflog: invalid vm id '%s'", vm_id ? vm_id : "");
    if (!(log = calloc(1, sizeof(*log))))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    log->group = (uint16_t)group;
    log->seq = (uint32_t)time(NULL);
    (void)snprintf(log->prefix, sizeof(log->prefix), SMOLVM_NET_LOG_PREFIX "%s", vm_id);
    log->nl = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (!log->nl || mnl_socket_bind(log->nl, 0, MNL_SOCKET_AUTOPID) < 0) {
        r = smolvm_err_errno(err, errno, "nflog: open netlink socket");
        goto fail;
    }
    log->portid = mnl_socket_get_portid(log->nl);
    /* a burst of denials must not overflow the socket before the loop wakes up */
    (void)setsockopt(mnl_socket_get_fd(log->nl), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));

    memset(buf, 0, sizeof(buf));
    nlh = nflog_nlmsg_put_header(buf, NFULNL_MSG_CONFIG, AF_UNSPEC, log->group);
    if (nflog_attr_put_cfg_cmd(nlh, NFULNL_CFG_CMD_BIND) < 0 || (r = config(log, nlh)) == -EINVAL) {
        r = smolvm_err(err, SMOLVM_ENET, "nflog: bind group %u: invalid request", group);
        goto fail;
    }
    /* the kernel says EPERM both for a group another socket holds and for a caller
     * without CAP_NET_ADMIN */
    if (r == -EBUSY || r == -EEXIST || (r == -EPERM && smolvm_net_have_admin())) {
        r = smolvm_err(err, SMOLVM_EEXIST, "nflog: group %u already has a reader in this namespace",
                       group);
        goto fail;
    }
    if (r < 0) {
        r = smolvm_err_errno(err, -r, "nflog: bind group %u", group);
        if (r == SMOLVM_EPERM)
            (void)smolvm_err_hint(err, "needs CAP_NET_ADMIN");
        goto fail;
    }
    memset(buf, 0, sizeof(buf));
    nlh = nflog_nlmsg_put_header(buf, NFULNL_MSG_CONFIG, AF_UNSPEC, log->group);
    (void)nflog_attr_put_cfg_mode(nlh, NFULNL_COPY_PACKET, NFLOG_COPY);
    mnl_attr_put_u32(nlh, NFULA_CFG_QTHRESH, htonl(1)); /* each record at once */
    if ((r = config(log, nlh)) < 0) {
        r = smolvm_err_errno(err, -r, "nflog: configure group %u", group);
        goto fail;
    }
    *out = log;
    return 0;
fail:
    smolvm_nflog_free(log);
    return r;
}

/* One NFULNL_MSG_PACKET into rec; 1 if it is a record of ours. */
static int parse_packet(const smolvm_nflog *log, const struct nlmsghdr *nlh, smolvm_net_denied *rec)
{
    struct nlattr *attr[NFULA_MAX + 1] = {0};
    const struct nfgenmsg *g;
    const uint8_t *p;
    size_t len, ihl;
    struct in_addr dst;

    if (nlh->nlmsg_type != ((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET) ||
        nlh->nlmsg_len < NLMSG_LENGTH(sizeof(*g)))
        return 0;
    g = mnl_nlmsg_get_payload(nlh);
    if (ntohs(g->res_id) != log->group || nflog_nlmsg_parse(nlh, attr) < 0)
        return 0;
    if (!attr[NFULA_PREFIX] || !attr[NFULA_PAYLOAD])
        return 0;
    /* the prefix names the VM: exactly ours (the attribute carries its NUL) */
    len = mnl_attr_get_payload_len(attr[NFULA_PREFIX]);
    if (len == 0 || len > sizeof(log->prefix) ||
        strncmp(mnl_attr_get_payload(attr[NFULA_PREFIX]), log->prefix, len) != 0 ||
        ((const char *)mnl_attr_get_payload(attr[NFULA_PREFIX]))[len - 1] != '\0')
        return 0;

    p = mnl_attr_get_payload(attr[NFULA_PAYLOAD]);
    len = mnl_attr_get_payload_len(attr[NFULA_PAYLOAD]);
    if (len < 20 || (p[0] >> 4) != 4)
        return 0;
    ihl = (size_t)(p[0] & 0x0f) * 4;
    if (ihl < 20 || ihl > len)
        return 0;
    memset(rec, 0, sizeof(*rec));
    (void)snprintf(rec->vm_id, sizeof(rec->vm_id), "%s",
                   log->prefix + strlen(SMOLVM_NET_LOG_PREFIX));
    rec->protocol = p[9];
    memcpy(&dst.s_addr, p + 16, 4);
    (void)inet_ntop(AF_INET, &dst, rec->dst, sizeof(rec->dst));
    /* the ports of TCP and UDP, unless the packet is a later fragment */
    if ((rec->protocol == IPPROTO_TCP || rec->protocol == IPPROTO_UDP) && len >= ihl + 4 &&
        ((p[6] & 0x1f) | p[7]) == 0)
        rec->dst_port = (uint16_t)((p[ihl + 2] << 8) | p[ihl + 3]);
    if (attr[NFULA_TIMESTAMP] && mnl_attr_get_payload_len(attr[NFULA_TIMESTAMP]) >=
                                     sizeof(struct nfulnl_msg_packet_timestamp)) {
        struct nfulnl_msg_packet_timestamp ts;

        memcpy(&ts, mnl_attr_get_payload(attr[NFULA_TIMESTAMP]), sizeof(ts));
        rec->time_ms = (int64_t)be64toh(ts.sec) * 1000 + (int64_t)be64toh(ts.usec) / 1000;
    } else {
        rec->time_ms = smolvm_wall_ms();
    }
    return 1;
}

int smolvm_nflog_read(smolvm_nflog *log, smolvm_net_denied *out, size_t max, smolvm_error **err)
{
    size_t got = 0;
    int recvs = 0;

    if (!log || (max && !out))
        return smolvm_err(err, SMOLVM_EINVAL, "nflog: invalid arguments");
    while (got < max) {
        const struct nlmsghdr *nlh;
        int rest;

        if (log->off >= log->len) {
            ssize_t n;

            if (recvs++ >= NFLOG_RECVS_PER_READ)
                break;
            n = recv(mnl_socket_get_fd(log->nl), log->buf, sizeof(log->buf), MSG_DONTWAIT);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                break;
            if (n < 0 && errno == ENOBUFS) { /* the kernel dropped records */
                log->lost++;
                continue;
            }
            if (n < 0)
                return smolvm_err_errno(err, errno, "nflog: read group %u", log->group);
            log->len = (size_t)n;
            log->off = 0;
        }
        /* one message per turn, so a full `out` leaves the rest for the next call */
        nlh = (const struct nlmsghdr *)(log->buf + log->off);
        rest = (int)(log->len - log->off);
        if (!mnl_nlmsg_ok(nlh, rest)) {
            log->off = log->len;
            continue;
        }
        if (parse_packet(log, nlh, &out[got]))
            got++;
        log->off += NLMSG_ALIGN(nlh->nlmsg_len);
    }
    return (int)got;
}
