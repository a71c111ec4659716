/* SPDX-License-Identifier: MIT */
/* The network module's entry points: argument checks, naming, ordering and rollback
 * around the link (tap.c) and nftables (nft.c) parts. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "error.h"
#include "net/net-internal.h"
#include "util.h"

void smolvm_net_tap_name(const char *vm_id, char out[SMOLVM_NET_IFNAMSIZ])
{
    size_t len = vm_id ? strlen(vm_id) : 0;
    uint32_t h = 2166136261u; /* FNV-1a */

    if (len <= SMOLVM_NET_IFNAMSIZ - 1 - strlen(SMOLVM_NET_LINK_PREFIX)) {
        (void)snprintf(out, SMOLVM_NET_IFNAMSIZ, SMOLVM_NET_LINK_PREFIX "%s", vm_id ? vm_id : "");
        return;
    }
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)vm_id[i]) * 16777619u;
    /* '.' never occurs in an id, so this form cannot equal a short id's name */
    (void)snprintf(out, SMOLVM_NET_IFNAMSIZ, SMOLVM_NET_LINK_PREFIX "%.3s.%08x", vm_id, h);
}

static int parse_ip(const char *text, const char *what, uint32_t *be, smolvm_error **err)
{
    struct in_addr a;

    if (!text || inet_pton(AF_INET, text, &a) != 1)
        return smolvm_err(err, SMOLVM_EINVAL, "invalid %s '%s'", what, text ? text : "(null)");
    *be = a.s_addr;
    return 0;
}

static int check_id(const char *vm_id, smolvm_error **err)
{
    size_t len = vm_id ? strlen(vm_id) : 0;

    if (len == 0 || len >= SMOLVM_NET_IDMAX ||
        strspn(vm_id, "abcdefghijklmnopqrstuvwxyz"
                      "0123456789_-") != len)
        return smolvm_err(err, SMOLVM_EINVAL, "invalid vm id '%s'", vm_id ? vm_id : "(null)");
    return 0;
}

static uint32_t mask_of(int prefix)
{
    return prefix ? htonl(~0u << (32 - prefix)) : 0;
}

int smolvm_net_pool_info(const char *cidr, char gateway[16], int *prefix, char netmask[16],
                         smolvm_error **err)
{
    char addr[16];
    int p, n = 0;
    uint32_t be, gw, m;
    struct in_addr a;

    if (!cidr || sscanf(cidr, "%15[0-9.]/%d%n", addr, &p, &n) != 2 || cidr[n] != '\0' ||
        inet_pton(AF_INET, addr, &a) != 1 || p < 8 || p > 30)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "invalid address pool '%s' (expected a.b.c.d/len, len 8..30)",
                          cidr ? cidr : "(null)");
    m = mask_of(p);
    be = a.s_addr & m;
    gw = htonl(ntohl(be) + 1);
    if (gateway) {
        a.s_addr = gw;
        (void)inet_ntop(AF_INET, &a, gateway, 16);
    }
    if (netmask) {
        a.s_addr = m;
        (void)inet_ntop(AF_INET, &a, netmask, 16);
    }
    if (prefix)
        *prefix = p;
    return 0;
}

/* A listening socket on host_addr:port would be shadowed by the DNAT: refuse. */
static int host_port_free(uint32_t host_be, int port, smolvm_error **err)
{
    struct sockaddr_in sa = {
        .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = host_be};
    _cleanup_close_ int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    char addr[INET_ADDRSTRLEN];
    int one = 1;

    (void)inet_ntop(AF_INET, &sa.sin_addr, addr, sizeof(addr));
    if (fd < 0)
        return smolvm_err_errno(err, errno, "check host port '%s:%d'", addr, port);
    /* REUSEADDR: connections in TIME_WAIT do not make a port taken */
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
        return 0;
    if (errno == EADDRINUSE)
        return smolvm_err(err, SMOLVM_EEXIST, "host port '%s:%d' is in use by another program",
                          addr, port);
    if (errno == EADDRNOTAVAIL)
        return smolvm_err(err, SMOLVM_EINVAL, "host address '%s' is not an address of this host",
                          addr);
    return smolvm_err_errno(err, errno, "check host port '%s:%d'", addr, port);
}

static int parse_forward(const char *host_addr, int host_port, int guest_port, smolvm_nft_fwd *out,
                         smolvm_error **err)
{
    uint32_t be = 0;
    int r;

    if ((r = parse_ip(host_addr ? host_addr : "127.0.0.1", "host address", &be, err)) < 0)
        return r;
    if (host_port < 1 || host_port > 65535)
        return smolvm_err(err, SMOLVM_EINVAL, "invalid host port '%d' (expected 1..65535)",
                          host_port);
    if (guest_port < 1 || guest_port > 65535)
        return smolvm_err(err, SMOLVM_EINVAL, "invalid guest port '%d' (expected 1..65535)",
                          guest_port);
    out->host_be = be;
    out->host_port = (uint16_t)host_port;
    out->guest_port = (uint16_t)guest_port;
    return 0;
}

/* The kernel forwards between interfaces only with this on, per namespace. */
static int enable_forwarding(smolvm_error **err)
{
    static const char path[] = "/proc/sys/net/ipv4/ip_forward";
    _cleanup_close_ int fd = open(path, O_RDWR | O_CLOEXEC);
    char c = 0;

    if (fd < 0)
        return smolvm_err_errno(err, errno, "open '%s'", path);
    if (read(fd, &c, 1) == 1 && c == '1')
        return 0;
    if (pwrite(fd, "1\n", 2, 0) != 2)
        return smolvm_err_errno(err, errno, "enable IPv4 forwarding: write '%s'", path);
    return 0;
}

static int vm_up(const char *existing, const char *vm_id, const char *guest_ip, const char *gateway,
                 int prefix, const char *uplink, const smolvm_net_forward *forwards, size_t n,
                 char tap[SMOLVM_NET_IFNAMSIZ], smolvm_error **err)
{
    smolvm_nft_fwd fwds[SMOLVM_NET_MAX_FORWARDS];
    char up[SMOLVM_NET_IFNAMSIZ];
    uint32_t guest_be = 0, gw_be = 0;
    int r, created = 0;

    if ((r = check_id(vm_id, err)) < 0 ||
        (r = parse_ip(guest_ip, "guest address", &guest_be, err)) < 0 ||
        (r = parse_ip(gateway, "gateway address", &gw_be, err)) < 0)
        return r;
    if (prefix < 8 || prefix > 30)
        return smolvm_err(err, SMOLVM_EINVAL, "invalid prefix length '%d' (expected 8..30)",
                          prefix);
    if (((guest_be ^ gw_be) & mask_of(prefix)) || guest_be == gw_be)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "guest address '%s' is not a host of gateway '%s'/%d's network", guest_ip,
                          gateway, prefix);
    if (n > SMOLVM_NET_MAX_FORWARDS || (n && !forwards))
        return smolvm_err(err, SMOLVM_EINVAL, "too many forwards '%zu' (at most %d)", n,
                          SMOLVM_NET_MAX_FORWARDS);
    for (size_t i = 0; i < n; i++) {
        if ((r = parse_forward(forwards[i].host_addr, forwards[i].host_port, forwards[i].guest_port,
                               &fwds[i], err)) < 0 ||
            (r = host_port_free(fwds[i].host_be, fwds[i].host_port, err)) < 0)
            return r;
    }
    smolvm_net_tap_name(vm_id, tap);
    if (existing && strcmp(existing, tap) != 0)
        return smolvm_err(err, SMOLVM_EINVAL, "link '%s' must be named '%s' for vm '%s'", existing,
                          tap, vm_id);
    if (uplink) {
        if (strlen(uplink) >= SMOLVM_NET_IFNAMSIZ)
            return smolvm_err(err, SMOLVM_EINVAL, "invalid uplink '%s'", uplink);
        if ((r = smolvm_link_exists(uplink, err)) < 0)
            return r;
        if (!r)
            return smolvm_err(err, SMOLVM_ENET, "uplink '%s' does not exist", uplink);
        (void)snprintf(up, sizeof(up), "%s", uplink);
    } else if ((r = smolvm_link_default_uplink(up, err)) < 0) {
        return r;
    }
    if ((r = enable_forwarding(err)) < 0)
        return r;

    if (!existing) {
        /* a TAP left by a crashed run of this VM is replaced, not reused */
        if ((r = smolvm_link_delete(tap, err)) < 0 || (r = smolvm_tap_create(tap, err)) < 0)
            goto fail;
        created = 1;
    }
    if ((r = smolvm_link_configure(tap, vm_id, gw_be, guest_be, err)) < 0)
        goto fail;
    if ((r = smolvm_nft_vm_set(vm_id, tap, up, guest_be, fwds, n, err)) < 0)
        goto fail;
    return 0;
fail:
    if (created)
        (void)smolvm_link_delete(tap, NULL);
    return smolvm_err_wrap(err, "network up for vm '%s'", vm_id);
}

int smolvm_net_vm_up(const char *vm_id, const char *guest_ip, const char *gateway, int prefix,
                     const char *uplink, const smolvm_net_forward *forwards, size_t n_forwards,
                     char tap_name[SMOLVM_NET_IFNAMSIZ], smolvm_error **err)
{
    char tap[SMOLVM_NET_IFNAMSIZ];
    int r = vm_up(NULL, vm_id, guest_ip, gateway, prefix, uplink, forwards, n_forwards, tap, err);

    if (r < 0)
        return r;
    if (tap_name)
        memcpy(tap_name, tap, sizeof(tap));
    return 0;
}

int smolvm_net_vm_up_link(const char *ifname, const char *vm_id, const char *guest_ip,
                          const char *gateway, int prefix, const char *uplink,
                          const smolvm_net_forward *forwards, size_t n_forwards, smolvm_error **err)
{
    char tap[SMOLVM_NET_IFNAMSIZ];

    if (!ifname)
        return smolvm_err(err, SMOLVM_EINVAL, "missing link name");
    return vm_up(ifname, vm_id, guest_ip, gateway, prefix, uplink, forwards, n_forwards, tap, err);
}

int smolvm_net_vm_down(const char *vm_id, smolvm_error **err)
{
    char tap[SMOLVM_NET_IFNAMSIZ];
    int r, r2;

    if ((r = check_id(vm_id, err)) < 0)
        return r;
    smolvm_net_tap_name(vm_id, tap);
    /* Both halves always run; the first failure is reported. The link goes first: a
     * guest that is still running (vm_down may overlap its power-off) then has no path
     * left before its isolation rules are removed. Each half mostly waits for an RCU
     * grace period in the kernel (unregistering the netdev, committing rule
     * deletions); running them in parallel threads was measured slower, not faster. */
    r = smolvm_link_delete(tap, err);
    r2 = smolvm_nft_vm_remove(vm_id, r < 0 ? NULL : err);
    if (r < 0 || r2 < 0)
        return smolvm_err_wrap(err, "network down for vm '%s'", vm_id);
    return 0;
}

int smolvm_net_forward_add(const char *vm_id, const char *guest_ip, const char *host_addr,
                           int host_port, int guest_port, smolvm_error **err)
{
    smolvm_nft_fwd f = {0};
    uint32_t guest_be = 0;
    int r;

    if ((r = check_id(vm_id, err)) < 0 ||
        (r = parse_ip(guest_ip, "guest address", &guest_be, err)) < 0 ||
        (r = parse_forward(host_addr, host_port, guest_port, &f, err)) < 0 ||
        (r = host_port_free(f.host_be, host_port, err)) < 0 ||
        (r = smolvm_nft_forward_add(vm_id, guest_be, &f, err)) < 0)
        return smolvm_err_wrap(err, "forward for vm '%s'", vm_id ? vm_id : "(null)");
    return 0;
}

int smolvm_net_forward_remove(const char *vm_id, const char *guest_ip, const char *host_addr,
                              int host_port, int guest_port, smolvm_error **err)
{
    smolvm_nft_fwd f = {0};
    int r;

    (void)guest_ip;
    (void)guest_port;
    if ((r = check_id(vm_id, err)) < 0 ||
        (r = parse_forward(host_addr, host_port, 1, &f, err)) < 0 ||
        (r = smolvm_nft_forward_remove(vm_id, f.host_be, f.host_port, err)) < 0)
        return smolvm_err_wrap(err, "remove forward of vm '%s'", vm_id ? vm_id : "(null)");
    return 0;
}

int smolvm_net_gc(const char *const *live_vm_ids, smolvm_error **err)
{
    int r = smolvm_nft_gc(live_vm_ids, err);
    int r2 = smolvm_link_gc(live_vm_ids, r < 0 ? NULL : err);

    if (r < 0 || r2 < 0)
        return smolvm_err_wrap(err, "network cleanup");
    return 0;
}

static int have_net_admin(void)
{
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct d[2];

    memset(d, 0, sizeof(d));
    if (syscall(SYS_capget, &h, d) < 0)
        return 0;
    return (d[CAP_NET_ADMIN / 32].effective >> (CAP_NET_ADMIN % 32)) & 1;
}

int smolvm_net_available(smolvm_error **err)
{
    _cleanup_close_ int fd = -1;
    int r;

    if (!have_net_admin())
        return smolvm_err(err, SMOLVM_EPERM,
                          "network 'nat' needs CAP_NET_ADMIN (run as root, or use network "
                          "'user')");
    fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;

        return smolvm_err(err, SMOLVM_EHOST,
                          "network 'nat': open /dev/net/tun: %s (load the tun module: "
                          "modprobe tun)",
                          strerror(e));
    }
    if ((r = smolvm_nft_probe(err)) < 0)
        return smolvm_err_wrap(err, "network 'nat'");
    return 0;
}
