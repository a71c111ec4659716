/* SPDX-License-Identifier: MIT */
/*
 * VM links: the TAP device itself (TUN ioctl: the kernel has no netlink way to make
 * one) and everything else over rtnetlink with libnl-route: up, alias, route_localnet,
 * the gateway address, the route to the guest, the default-route uplink, deletion.
 * IPv6 settings go through /proc/sys/net/ipv6/conf/<link>/ (the kernel takes no
 * IPv6 devconf over netlink; /proc/sys/net shows the caller's namespace).
 */
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/ip.h>
#include <linux/rtnetlink.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <netlink/route/link/inet.h>
#include <netlink/route/route.h>

#include "error.h"
#include "net/net-internal.h"
#include "util.h"

#define RTNL_TIMEOUT_MS 2000

static void nl_sockp(struct nl_sock **sk)
{
    if (*sk)
        nl_socket_free(*sk);
}
static void nl_linkp(struct rtnl_link **l)
{
    if (*l)
        rtnl_link_put(*l);
}
static void nl_addrp(struct nl_addr **a)
{
    if (*a)
        nl_addr_put(*a);
}
static void nl_cachep(struct nl_cache **c)
{
    if (*c)
        nl_cache_free(*c);
}
#define _cleanup_nlsock_ _cleanup_(nl_sockp)
#define _cleanup_link_ _cleanup_(nl_linkp)
#define _cleanup_nladdr_ _cleanup_(nl_addrp)
#define _cleanup_cache_ _cleanup_(nl_cachep)

/* A libnl error (negative NLE_*) as a smolvm error. */
static int nl_err(smolvm_error **err, int r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int nl_err(smolvm_error **err, int r, const char *fmt, ...)
{
    char what[128];
    int code = SMOLVM_ENET;
    va_list ap;

    va_start(ap, fmt);
    (void)vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (r == -NLE_PERM || r == -NLE_NOACCESS) {
        return smolvm_err(err, SMOLVM_EPERM,
                          "%s: %s (needs CAP_NET_ADMIN: run as root or grant the "
                          "capability)",
                          what, nl_geterror(r));
    }
    if (r == -NLE_EXIST)
        code = SMOLVM_EEXIST;
    else if (r == -NLE_OBJ_NOTFOUND || r == -NLE_NODEV)
        code = SMOLVM_ENOENT;
    else if (r == -NLE_NOMEM)
        code = SMOLVM_ENOMEM;
    return smolvm_err(err, code, "%s: %s", what, nl_geterror(r));
}

/* A connected rtnetlink socket whose every receive gives up after RTNL_TIMEOUT_MS. */
static int rtnl_open(struct nl_sock **out, smolvm_error **err)
{
    struct timeval tv = {.tv_sec = RTNL_TIMEOUT_MS / 1000,
                         .tv_usec = (RTNL_TIMEOUT_MS % 1000) * 1000};
    _cleanup_nlsock_ struct nl_sock *sk = nl_socket_alloc();
    int r;

    if (!sk)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if ((r = nl_connect(sk, NETLINK_ROUTE)) < 0)
        return nl_err(err, r, "%s", "rtnetlink: connect");
    if (setsockopt(nl_socket_get_fd(sk), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0)
        return smolvm_err_errno(err, errno, "rtnetlink: set receive timeout");
    *out = TAKE_PTR(sk);
    return 0;
}

int smolvm_link_exists(const char *ifname, smolvm_error **err)
{
    _cleanup_nlsock_ struct nl_sock *sk = NULL;
    _cleanup_link_ struct rtnl_link *link = NULL;
    int r;

    if ((r = rtnl_open(&sk, err)) < 0)
        return r;
    r = rtnl_link_get_kernel(sk, 0, ifname, &link);
    if (r == -NLE_OBJ_NOTFOUND || r == -NLE_NODEV)
        return 0;
    if (r < 0)
        return nl_err(err, r, "look up link '%s'", ifname);
    return 1;
}

int smolvm_tap_create(const char *name, smolvm_error **err)
{
    struct ifreq ifr = {0};
    _cleanup_close_ int fd = -1;
    int r;

    if (strlen(name) >= IFNAMSIZ)
        return smolvm_err(err, SMOLVM_EINVAL, "tap name '%s' is too long", name);
    /* TUNSETIFF attaches to an existing TAP of that name instead of failing */
    if ((r = smolvm_link_exists(name, err)) < 0)
        return r;
    if (r)
        return smolvm_err(err, SMOLVM_EEXIST, "create tap '%s': a link of that name exists", name);
    fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        int e = errno, c = smolvm_err_errno(err, e, "create tap '%s': open /dev/net/tun", name);

        if (e == ENOENT || e == ENODEV || e == ENXIO)
            (void)smolvm_err_hint(err, "load the tun module: modprobe tun");
        if (e == EACCES || e == EPERM)
            (void)smolvm_err_hint(err, "needs CAP_NET_ADMIN: run as root");
        return c;
    }
    /* No IFF_VNET_HDR or IFF_MULTI_QUEUE here: the flags that matter belong to the
     * queue QEMU attaches later (it probes vnet_hdr itself); multi-queue must match,
     * and QEMU's default single queue is what we create. */
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    memcpy(ifr.ifr_name, name, strlen(name));
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int e = errno, c = smolvm_err_errno(err, e, "create tap '%s': TUNSETIFF", name);

        if (e == EPERM)
            (void)smolvm_err_hint(err, "needs CAP_NET_ADMIN: run as root");
        return c;
    }
    /* persistent: the device outlives this fd until QEMU opens it and we delete it */
    if (ioctl(fd, TUNSETPERSIST, 1L) < 0) {
        int e = errno;

        (void)smolvm_link_delete(name, NULL);
        return smolvm_err_errno(err, e, "create tap '%s': TUNSETPERSIST", name);
    }
    return 0;
}

/* /proc/sys/net/ipv6/conf/<ifname>/<key>: write value (read back into *out when out
 * is not NULL). Without IPv6 in the kernel there is nothing to turn off: 0, and *out
 * gets the value the caller wants. */
static int ipv6_conf(const char *ifname, const char *key, int value, int *out, smolvm_error **err)
{
    char path[128], buf[16] = {0};
    _cleanup_close_ int fd = -1;
    ssize_t n;

    (void)snprintf(path, sizeof(path), "/proc/sys/net/ipv6/conf/%s/%s", ifname, key);
    fd = open(path, (out ? O_RDONLY : O_WRONLY) | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && access("/proc/sys/net/ipv6", F_OK) < 0) {
        if (out)
            *out = value;
        return 0;
    }
    if (fd < 0)
        return smolvm_err_errno(err, errno, "open '%s'", path);
    if (out) {
        if ((n = read(fd, buf, sizeof(buf) - 1)) <= 0)
            return smolvm_err_errno(err, n < 0 ? errno : EIO, "read '%s'", path);
        *out = atoi(buf);
        return 0;
    }
    n = snprintf(buf, sizeof(buf), "%d\n", value);
    if (write(fd, buf, (size_t)n) != n)
        return smolvm_err_errno(err, errno, "write '%s'", path);
    return 0;
}

int smolvm_link_configure(const char *ifname, const char *vm_id, uint32_t gateway_be,
                          uint32_t guest_be, smolvm_error **err)
{
    _cleanup_nlsock_ struct nl_sock *sk = NULL;
    _cleanup_link_ struct rtnl_link *link = NULL, *change = NULL;
    _cleanup_nladdr_ struct nl_addr *local = NULL, *dst = NULL;
    struct rtnl_addr *addr = NULL;
    struct rtnl_route *route = NULL;
    struct rtnl_nexthop *nh;
    char alias[sizeof(SMOLVM_NET_ALIAS_PREFIX) + SMOLVM_NET_IDMAX];
    int ifindex, r;

    if ((r = rtnl_open(&sk, err)) < 0)
        return r;
    if ((r = rtnl_link_get_kernel(sk, 0, ifname, &link)) < 0)
        return nl_err(err, r, "look up link '%s'", ifname);
    ifindex = rtnl_link_get_ifindex(link);

    /* IPv6 off before the link is up: no link-local address, no router advertisement
     * from a guest ever configures the host (accept_ra first: it still applies to a
     * link whose IPv6 is only disabled) */
    if ((r = ipv6_conf(ifname, "accept_ra", 0, NULL, err)) < 0 ||
        (r = ipv6_conf(ifname, "disable_ipv6", 1, NULL, err)) < 0)
        return SMOLVM_NET_WRAP(r, err, "configure link '%s'", ifname);

    /* One RTM_NEWLINK: up, alias (how gc and operators tell whose link it is), and
     * route_localnet explicitly off: with it a guest's packet to 127.0.0.1 would be
     * routed to host loopback services whenever the rules are gone (a link left by an
     * older smolvm had it on). Loopback forwards are a proxy instead. */
    if (!(change = rtnl_link_alloc()))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    (void)snprintf(alias, sizeof(alias), SMOLVM_NET_ALIAS_PREFIX "%s", vm_id);
    rtnl_link_set_flags(change, IFF_UP);
    rtnl_link_set_ifalias(change, alias);
    if ((r = rtnl_link_inet_set_conf(change, IPV4_DEVCONF_ROUTE_LOCALNET, 0)) < 0)
        return nl_err(err, r, "configure link '%s'", ifname);
    if ((r = rtnl_link_change(sk, link, change, 0)) < 0)
        return nl_err(err, r, "configure link '%s'", ifname);

    /* gateway/32: the host side; the same address on every VM link */
    if (!(local = nl_addr_build(AF_INET, &gateway_be, 4)) ||
        !(dst = nl_addr_build(AF_INET, &guest_be, 4)) || !(addr = rtnl_addr_alloc()))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    nl_addr_set_prefixlen(local, 32);
    nl_addr_set_prefixlen(dst, 32);
    rtnl_addr_set_ifindex(addr, ifindex);
    rtnl_addr_set_family(addr, AF_INET);
    r = rtnl_addr_set_local(addr, local);
    if (r >= 0)
        r = rtnl_addr_add(sk, addr, 0);
    rtnl_addr_put(addr);
    if (r < 0 && r != -NLE_EXIST)
        return nl_err(err, r, "add gateway address on '%s'", ifname);

    /* guest/32 through this link, answered from the gateway address */
    if (!(route = rtnl_route_alloc()) || !(nh = rtnl_route_nh_alloc())) {
        if (route)
            rtnl_route_put(route);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    rtnl_route_set_family(route, AF_INET);
    rtnl_route_set_table(route, RT_TABLE_MAIN);
    rtnl_route_set_scope(route, RT_SCOPE_LINK);
    rtnl_route_set_protocol(route, RTPROT_STATIC);
    rtnl_route_set_type(route, RTN_UNICAST);
    rtnl_route_nh_set_ifindex(nh, ifindex);
    rtnl_route_add_nexthop(route, nh);
    r = rtnl_route_set_dst(route, dst);
    if (r >= 0)
        r = rtnl_route_set_pref_src(route, local);
    /* REPLACE: a stale route to a reused address moves to this link */
    if (r >= 0)
        r = rtnl_route_add(sk, route, NLM_F_REPLACE);
    rtnl_route_put(route);
    if (r < 0)
        return nl_err(err, r, "add route to the guest on '%s'", ifname);
    return 0;
}

/* Does the route table have guest/32 via ifindex? */
static int route_ok(struct nl_sock *sk, int ifindex, uint32_t guest_be, int *ok, smolvm_error **err)
{
    _cleanup_cache_ struct nl_cache *routes = NULL;
    struct nl_object *o;
    int r;

    *ok = 0;
    if ((r = rtnl_route_alloc_cache(sk, AF_INET, 0, &routes)) < 0)
        return nl_err(err, r, "%s", "list routes");
    for (o = nl_cache_get_first(routes); o; o = nl_cache_get_next(o)) {
        struct rtnl_route *rt = (struct rtnl_route *)o;
        struct nl_addr *d = rtnl_route_get_dst(rt);
        struct rtnl_nexthop *nh;

        if (rtnl_route_get_table(rt) == RT_TABLE_MAIN && d && nl_addr_get_prefixlen(d) == 32 &&
            nl_addr_get_len(d) == 4 && memcmp(nl_addr_get_binary_addr(d), &guest_be, 4) == 0 &&
            rtnl_route_get_nnexthops(rt) == 1 && (nh = rtnl_route_nexthop_n(rt, 0)) &&
            rtnl_route_nh_get_ifindex(nh) == ifindex)
            *ok = 1;
    }
    return 0;
}

static int addr_ok(struct nl_sock *sk, int ifindex, uint32_t gateway_be, int *ok,
                   smolvm_error **err)
{
    _cleanup_cache_ struct nl_cache *addrs = NULL;
    struct nl_object *o;
    int r;

    *ok = 0;
    if ((r = rtnl_addr_alloc_cache(sk, &addrs)) < 0)
        return nl_err(err, r, "%s", "list addresses");
    for (o = nl_cache_get_first(addrs); o; o = nl_cache_get_next(o)) {
        struct rtnl_addr *a = (struct rtnl_addr *)o;
        struct nl_addr *l = rtnl_addr_get_local(a);

        if (rtnl_addr_get_ifindex(a) == ifindex && rtnl_addr_get_family(a) == AF_INET && l &&
            nl_addr_get_len(l) == 4 && memcmp(nl_addr_get_binary_addr(l), &gateway_be, 4) == 0)
            *ok = 1;
    }
    return 0;
}

int smolvm_link_check(const char *ifname, uint32_t gateway_be, uint32_t guest_be, int *bad,
                      smolvm_error **err)
{
    _cleanup_nlsock_ struct nl_sock *sk = NULL;
    _cleanup_link_ struct rtnl_link *link = NULL;
    uint32_t localnet = 1;
    int r, v6 = 0, ra = 1, have_route = 0, have_addr = 0;

    if ((r = rtnl_open(&sk, err)) < 0)
        return r;
    r = rtnl_link_get_kernel(sk, 0, ifname, &link);
    if (r == -NLE_OBJ_NOTFOUND || r == -NLE_NODEV)
        return smolvm_err(err, SMOLVM_ENOENT, "link '%s' is gone", ifname);
    if (r < 0)
        return nl_err(err, r, "look up link '%s'", ifname);
    if ((r = rtnl_link_inet_get_conf(link, IPV4_DEVCONF_ROUTE_LOCALNET, &localnet)) < 0)
        return nl_err(err, r, "read the configuration of link '%s'", ifname);
    if ((r = ipv6_conf(ifname, "disable_ipv6", 1, &v6, err)) < 0 ||
        (r = ipv6_conf(ifname, "accept_ra", 0, &ra, err)) < 0 ||
        (r = addr_ok(sk, rtnl_link_get_ifindex(link), gateway_be, &have_addr, err)) < 0 ||
        (r = route_ok(sk, rtnl_link_get_ifindex(link), guest_be, &have_route, err)) < 0)
        return r;
    *bad = localnet != 0 || v6 != 1 || ra != 0 || !have_addr || !have_route ||
           !(rtnl_link_get_flags(link) & IFF_UP);
    return 0;
}

int smolvm_link_delete(const char *ifname, smolvm_error **err)
{
    _cleanup_nlsock_ struct nl_sock *sk = NULL;
    _cleanup_link_ struct rtnl_link *link = rtnl_link_alloc();
    int r;

    if (!link)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if ((r = rtnl_open(&sk, err)) < 0)
        return r;
    rtnl_link_set_name(link, ifname);
    r = rtnl_link_delete(sk, link);
    if (r < 0 && r != -NLE_OBJ_NOTFOUND && r != -NLE_NODEV)
        return nl_err(err, r, "delete link '%s'", ifname);
    return 0;
}

int smolvm_link_default_uplink(char out[SMOLVM_NET_IFNAMSIZ], smolvm_error **err)
{
    _cleanup_nlsock_ struct nl_sock *sk = NULL;
    _cleanup_cache_ struct nl_cache *routes = NULL;
    _cleanup_link_ struct rtnl_link *link = NULL;
    struct nl_object *o;
    uint32_t best_prio = UINT32_MAX;
    int best = 0, r;

    if ((r = rtnl_open(&sk, err)) < 0)
        return r;
    if ((r = rtnl_route_alloc_cache(sk, AF_INET, 0, &routes)) < 0)
        return nl_err(err, r, "%s", "list routes");
    for (o = nl_cache_get_first(routes); o; o = nl_cache_get_next(o)) {
        struct rtnl_route *rt = (struct rtnl_route *)o;
        struct nl_addr *d = rtnl_route_get_dst(rt);
        struct rtnl_nexthop *nh;

        if (rtnl_route_get_table(rt) != RT_TABLE_MAIN || rtnl_route_get_type(rt) != RTN_UNICAST ||
            (d && nl_addr_get_prefixlen(d) != 0) || rtnl_route_get_nnexthops(rt) < 1 ||
            !(nh = rtnl_route_nexthop_n(rt, 0)))
            continue;
        if (rtnl_route_get_priority(rt) < best_prio || !best) {
            best_prio = rtnl_route_get_priority(rt);
            best = rtnl_route_nh_get_ifindex(nh);
        }
    }
    if (!best)
        return smolvm_err(err, SMOLVM_ENET,
                          "no IPv4 default route to find the uplink (set the uplink "
                          "interface in the configuration)");
    if ((r = rtnl_link_get_kernel(sk, best, NULL, &link)) < 0)
        return nl_err(err, r, "%s", "look up the default route's interface");
    (void)snprintf(out, SMOLVM_NET_IFNAMSIZ, "%s", rtnl_link_get_name(link));
    return 0;
}

int smolvm_link_gc(const char *const *live, int *left, smolvm_error **err)
{
    _cleanup_nlsock_ struct nl_sock *sk = NULL;
    _cleanup_cache_ struct nl_cache *links = NULL;
    struct nl_object *o;
    int r, first = 0, kept = 0;

    if ((r = rtnl_open(&sk, err)) < 0)
        return r;
    if ((r = rtnl_link_alloc_cache(sk, AF_UNSPEC, &links)) < 0)
        return nl_err(err, r, "%s", "list links");
    for (o = nl_cache_get_first(links); o; o = nl_cache_get_next(o)) {
        struct rtnl_link *l = (struct rtnl_link *)o;
        const char *name = rtnl_link_get_name(l), *alias = rtnl_link_get_ifalias(l);
        const char *id;
        int keep = 0;

        /* only what smolvm made: the name prefix and the alias both say so */
        if (!name || !alias ||
            strncmp(name, SMOLVM_NET_LINK_PREFIX, strlen(SMOLVM_NET_LINK_PREFIX)) != 0 ||
            strncmp(alias, SMOLVM_NET_ALIAS_PREFIX, strlen(SMOLVM_NET_ALIAS_PREFIX)) != 0)
            continue;
        id = alias + strlen(SMOLVM_NET_ALIAS_PREFIX);
        for (size_t i = 0; live && live[i]; i++)
            if (strcmp(live[i], id) == 0)
                keep = 1;
        if (keep) {
            kept++;
            continue;
        }
        r = rtnl_link_delete(sk, l);
        if (r < 0 && r != -NLE_OBJ_NOTFOUND && r != -NLE_NODEV) {
            kept++;
            if (!first)
                first = nl_err(err, r, "delete link '%s'", name);
        }
    }
    if (left)
        *left = kept;
    return first;
}
