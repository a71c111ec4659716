/* SPDX-License-Identifier: MIT */
/* The network module's entry points: argument checks, naming, ordering and rollback
 * around the link (tap.c) and nftables (nft.c) parts. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/file.h>
#include <sys/stat.h>
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

/* ---------------------------------------------------------------- the lock */

#define LOCK_DIR "/run/smolvm"
#define LOCK_WAIT_MS 10000

int smolvm_net_lock_path(char *out, size_t size, smolvm_error **err)
{
    struct stat st;

    /* one lock per network namespace: the namespace's inode names it */
    if (stat("/proc/self/ns/net", &st) < 0)
        return smolvm_err_errno(err, errno, "network lock: stat '/proc/self/ns/net'");
    (void)snprintf(out, size, LOCK_DIR "/net-%llu.lock", (unsigned long long)st.st_ino);
    return 0;
}

/* Take the host-wide network lock of this namespace; *fd holds it until closed.
 * flock(2) cannot wait with a deadline, so a holder (whose critical section is a few
 * netlink round trips, each with its own 2 s deadline) is waited out with a bounded
 * backoff, as the VM lock is (vm.c). */
static int net_lock(int *fd, smolvm_error **err)
{
    char path[96];
    _cleanup_close_ int lfd = -1;
    int64_t deadline = smolvm_now_ms() + LOCK_WAIT_MS;
    int pause_ms = 1, r;

    if ((r = smolvm_net_lock_path(path, sizeof(path), err)) < 0)
        return r;
    if (mkdir(LOCK_DIR, 0755) < 0 && errno != EEXIST)
        return smolvm_err_errno(err, errno, "network lock: create '%s'", LOCK_DIR);
    lfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (lfd < 0)
        return smolvm_err_errno(err, errno, "network lock: open '%s'", path);
    while (flock(lfd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK && smolvm_remaining_ms(deadline) > 0) {
            struct timespec ts = {0, (long)pause_ms * 1000000L};

            (void)nanosleep(&ts, NULL);
            pause_ms = pause_ms < 20 ? pause_ms * 2 : 20;
            continue;
        }
        if (errno == EWOULDBLOCK)
            return smolvm_err(err, SMOLVM_ETIMEDOUT,
                              "network lock '%s': still held by another process after %d ms", path,
                              LOCK_WAIT_MS);
        return smolvm_err_errno(err, errno, "network lock '%s'", path);
    }
    *fd = TAKE_FD(lfd);
    return 0;
}

/* ---------------------------------------------------------------- egress */

static const char *const egress_names[_SMOLVM_NET_EGRESS_MAX] = {
    [SMOLVM_NET_EGRESS_INTERNET] = "internet",
    [SMOLVM_NET_EGRESS_NONE] = "none",
    [SMOLVM_NET_EGRESS_ALLOW] = "allow",
};

const char *smolvm_net_egress_mode_name(smolvm_net_egress_mode mode)
{
    return mode >= 0 && mode < _SMOLVM_NET_EGRESS_MAX ? egress_names[mode] : NULL;
}

smolvm_net_egress_mode smolvm_net_egress_mode_from_name(const char *name)
{
    for (int i = 0; name && i < _SMOLVM_NET_EGRESS_MAX; i++)
        if (strcmp(egress_names[i], name) == 0)
            return (smolvm_net_egress_mode)i;
    return _SMOLVM_NET_EGRESS_INVALID;
}

unsigned smolvm_net_log_group(const char *guest_ip)
{
    struct in_addr a;
    unsigned g;

    if (!guest_ip || inet_pton(AF_INET, guest_ip, &a) != 1)
        return 0;
    g = ntohl(a.s_addr) & 0xffff;
    return g ? g : 0xffff; /* 0 means "default" in smolvm_net_egress */
}

int smolvm_net_default_uplink(char out[SMOLVM_NET_IFNAMSIZ], smolvm_error **err)
{
    return smolvm_link_default_uplink(out, err);
}

bool smolvm_net_forward_proxied(const char *host_addr)
{
    struct in_addr a;

    if (!host_addr)
        return true;
    if (inet_pton(AF_INET, host_addr, &a) != 1)
        return false;
    return a.s_addr == 0 || (ntohl(a.s_addr) >> 24) == 127;
}

/* "a.b.c.d/len" or "a.b.c.d" as an inclusive range. */
static int parse_cidr(const char *text, smolvm_nft_range *out, smolvm_error **err)
{
    const char *slash = text ? strchr(text, '/') : NULL;
    size_t alen = slash ? (size_t)(slash - text) : text ? strlen(text) : 0;
    char addr[16], *end = NULL;
    int plen = 32;
    struct in_addr a;
    uint32_t ip, mask;

    if (!text || alen == 0 || alen >= sizeof(addr))
        goto bad;
    memcpy(addr, text, alen);
    addr[alen] = '\0';
    if (inet_pton(AF_INET, addr, &a) != 1)
        goto bad;
    if (slash) {
        long l;

        if (slash[1] < '0' || slash[1] > '9')
            goto bad;
        l = strtol(slash + 1, &end, 10);
        if (*end || l < 0 || l > 32)
            goto bad;
        plen = (int)l;
    }
    ip = ntohl(a.s_addr);
    mask = plen ? ~0u << (32 - plen) : 0;
    if (ip & ~mask) {
        struct in_addr net = {.s_addr = htonl(ip & mask)};
        char hint[INET_ADDRSTRLEN];

        (void)inet_ntop(AF_INET, &net, hint, sizeof(hint));
        return smolvm_err(err, SMOLVM_EINVAL,
                          "allow entry '%s' has host bits set (did you mean '%s/%d'?)", text, hint,
                          plen);
    }
    out->lo = ip;
    out->hi = ip | ~mask;
    return 0;
bad:
    return smolvm_err(err, SMOLVM_EINVAL,
                      "invalid allow entry '%s' (expected an IPv4 address or a.b.c.d/len)",
                      text ? text : "(null)");
}

static int cmp_range(const void *a, const void *b)
{
    const smolvm_nft_range *x = a, *y = b;

    return (x->lo > y->lo) - (x->lo < y->lo);
}

/* Sort and merge overlapping or adjacent ranges in place; returns the new count. */
static size_t merge_ranges(smolvm_nft_range *r, size_t n)
{
    size_t k = 0;

    qsort(r, n, sizeof(*r), cmp_range);
    for (size_t i = 0; i < n; i++) {
        if (k && (r[k - 1].hi == UINT32_MAX || r[i].lo <= r[k - 1].hi + 1)) {
            if (r[i].hi > r[k - 1].hi)
                r[k - 1].hi = r[i].hi;
            continue;
        }
        r[k++] = r[i];
    }
    return k;
}

static int is_special(uint32_t ip)
{
    for (size_t i = 0; i < SMOLVM_ARRAY_SIZE(smolvm_nft_special); i++)
        if (ip >= smolvm_nft_special[i].lo && ip <= smolvm_nft_special[i].hi)
            return 1;
    return 0;
}

/* ---------------------------------------------------------------- a VM, parsed */

typedef struct parsed_vm {
    smolvm_nft_vm v;
    char tap[SMOLVM_NET_IFNAMSIZ], uplink[SMOLVM_NET_IFNAMSIZ];
    const char *link;
    uint32_t guest_be, gw_be;
    smolvm_nft_fwd fwds[SMOLVM_NET_MAX_FORWARDS];
    smolvm_nft_range allow[SMOLVM_NET_MAX_ALLOW];
} parsed_vm;

static int parse_egress(const smolvm_net_egress *e, const char *guest_ip, parsed_vm *p,
                        smolvm_error **err)
{
    unsigned group;
    int r;

    p->v.mode = SMOLVM_NET_EGRESS_INTERNET;
    p->v.log_group = (uint16_t)smolvm_net_log_group(guest_ip);
    if (!e)
        return 0;
    if (e->version != SMOLVM_NET_EGRESS_VERSION)
        return smolvm_err(err, SMOLVM_EINVAL, "egress policy: unknown version %u", e->version);
    if (!smolvm_net_egress_mode_name(e->mode))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "egress policy: invalid mode '%d' (expected internet, none or allow)",
                          (int)e->mode);
    p->v.mode = e->mode;
    p->v.dns = e->dns != 0;
    group = e->log_group ? e->log_group : smolvm_net_log_group(guest_ip);
    if (group < 1 || group > 65535)
        return smolvm_err(err, SMOLVM_EINVAL, "egress policy: invalid log group '%u' (1..65535)",
                          e->log_group);
    p->v.log_group = (uint16_t)group;
    if (e->mode != SMOLVM_NET_EGRESS_ALLOW) {
        if (e->n_allow)
            return smolvm_err(err, SMOLVM_EINVAL,
                              "egress policy: an allow list needs mode 'allow', not '%s'",
                              smolvm_net_egress_mode_name(e->mode));
        return 0;
    }
    if (e->n_allow > SMOLVM_NET_MAX_ALLOW)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "egress policy: too many allow entries '%zu' (at most %d; name "
                          "resolution adds addresses without entries)",
                          e->n_allow, SMOLVM_NET_MAX_ALLOW);
    if (e->n_allow && !e->allow)
        return smolvm_err(err, SMOLVM_EINVAL, "egress policy: allow list missing");
    for (size_t i = 0; i < e->n_allow; i++)
        if ((r = parse_cidr(e->allow[i], &p->allow[i], err)) < 0)
            return SMOLVM_NET_WRAP(r, err, "egress policy");
    p->v.n_allow = merge_ranges(p->allow, e->n_allow);
    p->v.allow = p->allow;
    return 0;
}

/* Validate vm into p. check_ports: also probe that the forwards' host ports are free
 * (at setup, before anything of the VM exists). */
static int parse_vm(const smolvm_net_vm *vm, int check_ports, parsed_vm *p, smolvm_error **err)
{
    size_t k = 0;
    int r;

    memset(p, 0, sizeof(*p));
    if (!vm || vm->version != SMOLVM_NET_VM_VERSION)
        return smolvm_err(err, SMOLVM_EINVAL, "network spec: missing or unknown version");
    if ((r = check_id(vm->vm_id, err)) < 0 ||
        (r = parse_ip(vm->guest_ip, "guest address", &p->guest_be, err)) < 0 ||
        (r = parse_ip(vm->gateway, "gateway address", &p->gw_be, err)) < 0)
        return r;
    if (vm->prefix < 8 || vm->prefix > 30)
        return smolvm_err(err, SMOLVM_EINVAL, "invalid prefix length '%d' (expected 8..30)",
                          vm->prefix);
    if (((p->guest_be ^ p->gw_be) & mask_of(vm->prefix)) || p->guest_be == p->gw_be)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "guest address '%s' is not a host of gateway '%s'/%d's network",
                          vm->guest_ip, vm->gateway, vm->prefix);
    if (vm->n_forwards > SMOLVM_NET_MAX_FORWARDS || (vm->n_forwards && !vm->forwards))
        return smolvm_err(err, SMOLVM_EINVAL, "too many forwards '%zu' (at most %d)",
                          vm->n_forwards, SMOLVM_NET_MAX_FORWARDS);
    for (size_t i = 0; i < vm->n_forwards; i++) {
        const smolvm_net_forward *f = &vm->forwards[i];
        smolvm_nft_fwd nf;

        if ((r = parse_forward(f->host_addr, f->host_port, f->guest_port, &nf, err)) < 0 ||
            (check_ports && (r = host_port_free(nf.host_be, nf.host_port, err)) < 0))
            return r;
        if (nf.host_be && (ntohl(nf.host_be) >> 24) == 127)
            continue; /* loopback: the caller's proxy */
        p->fwds[k++] = nf;
    }
    smolvm_net_tap_name(vm->vm_id, p->tap);
    if (vm->link && strcmp(vm->link, p->tap) != 0)
        return smolvm_err(err, SMOLVM_EINVAL, "link '%s' must be named '%s' for vm '%s'", vm->link,
                          p->tap, vm->vm_id);
    p->link = vm->link;
    if (vm->uplink) {
        if (strlen(vm->uplink) >= SMOLVM_NET_IFNAMSIZ)
            return smolvm_err(err, SMOLVM_EINVAL, "invalid uplink '%s'", vm->uplink);
        if ((r = smolvm_link_exists(vm->uplink, err)) < 0)
            return r;
        if (!r)
            return smolvm_err(err, SMOLVM_ENET, "uplink '%s' does not exist", vm->uplink);
        (void)snprintf(p->uplink, sizeof(p->uplink), "%s", vm->uplink);
    } else if ((r = smolvm_link_default_uplink(p->uplink, err)) < 0) {
        return r;
    }
    if ((r = parse_egress(vm->egress, vm->guest_ip, p, err)) < 0)
        return r;
    p->v.vm_id = vm->vm_id;
    p->v.tap = p->tap;
    p->v.uplink = p->uplink;
    p->v.guest_be = p->guest_be;
    p->v.gateway_be = p->gw_be;
    p->v.fwds = p->fwds;
    p->v.n_fwds = k;
    return 0;
}

/* ---------------------------------------------------------------- entry points */

int smolvm_net_vm_setup(const smolvm_net_vm *vm, char tap_name[SMOLVM_NET_IFNAMSIZ],
                        smolvm_error **err)
{
    _cleanup_free_ parsed_vm *p = calloc(1, sizeof(*p));
    _cleanup_close_ int lock = -1;
    int r, created = 0;

    if (!p)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if ((r = parse_vm(vm, 1, p, err)) < 0 || (r = enable_forwarding(err)) < 0 ||
        (r = net_lock(&lock, err)) < 0)
        return SMOLVM_NET_WRAP(r, err, "network up for vm '%s'", vm && vm->vm_id ? vm->vm_id : "");
    if (!p->link) {
        /* a TAP left by a crashed run of this VM is replaced, not reused */
        if ((r = smolvm_link_delete(p->tap, err)) < 0 || (r = smolvm_tap_create(p->tap, err)) < 0)
            goto fail;
        created = 1;
    }
    if ((r = smolvm_link_configure(p->tap, vm->vm_id, p->gw_be, p->guest_be, err)) < 0 ||
        (r = smolvm_nft_vm_set(&p->v, err)) < 0)
        goto fail;
    if (tap_name)
        memcpy(tap_name, p->tap, SMOLVM_NET_IFNAMSIZ);
    return 0;
fail:
    if (created)
        (void)smolvm_link_delete(p->tap, NULL);
    return SMOLVM_NET_WRAP(r, err, "network up for vm '%s'", vm->vm_id);
}

static int check_parsed(const parsed_vm *p, unsigned *missing, smolvm_error **err)
{
    int bad = 0, r;

    *missing = 0;
    if ((r = smolvm_link_check(p->tap, p->gw_be, p->guest_be, &bad, err)) < 0 ||
        (r = smolvm_nft_vm_check(&p->v, missing, err)) < 0)
        return r;
    if (bad)
        *missing |= SMOLVM_NET_MISSING_LINK;
    return 0;
}

int smolvm_net_vm_check(const smolvm_net_vm *vm, unsigned *missing, smolvm_error **err)
{
    parsed_vm p;
    unsigned m = 0;
    int r;

    if ((r = parse_vm(vm, 0, &p, err)) < 0 || (r = check_parsed(&p, &m, err)) < 0)
        return SMOLVM_NET_WRAP(r, err, "check network of vm '%s'",
                               vm && vm->vm_id ? vm->vm_id : "");
    if (missing)
        *missing = m;
    return 0;
}

int smolvm_net_vm_ensure(const smolvm_net_vm *vm, unsigned *repaired, smolvm_error **err)
{
    _cleanup_close_ int lock = -1;
    parsed_vm p;
    unsigned m = 0;
    int r;

    if (repaired)
        *repaired = 0;
    if ((r = parse_vm(vm, 0, &p, err)) < 0 || (r = check_parsed(&p, &m, err)) < 0)
        goto fail;
    if (!m)
        return 0;
    /* under the lock, again: another process may have repaired it meanwhile */
    if ((r = net_lock(&lock, err)) < 0 || (r = check_parsed(&p, &m, err)) < 0)
        goto fail;
    if ((m & SMOLVM_NET_MISSING_LINK) &&
        (r = smolvm_link_configure(p.tap, vm->vm_id, p.gw_be, p.guest_be, err)) < 0)
        goto fail;
    if ((m & ~SMOLVM_NET_MISSING_LINK) && (r = smolvm_nft_vm_repair(&p.v, err)) < 0)
        goto fail;
    if (repaired)
        *repaired = m;
    return 0;
fail:
    return SMOLVM_NET_WRAP(r, err, "repair network of vm '%s'", vm && vm->vm_id ? vm->vm_id : "");
}

int smolvm_net_egress_set(const smolvm_net_vm *vm, smolvm_error **err)
{
    _cleanup_close_ int lock = -1;
    parsed_vm p;
    int r;

    if ((r = parse_vm(vm, 0, &p, err)) < 0 || (r = net_lock(&lock, err)) < 0 ||
        (r = smolvm_nft_vm_policy(&p.v, err)) < 0)
        return SMOLVM_NET_WRAP(r, err, "egress of vm '%s'", vm && vm->vm_id ? vm->vm_id : "");
    return 0;
}

int smolvm_net_egress_allow(const char *vm_id, const char *addr, unsigned ttl_s, smolvm_error **err)
{
    uint32_t be = 0;
    int r;

    if ((r = check_id(vm_id, err)) < 0 || (r = parse_ip(addr, "address", &be, err)) < 0)
        return r;
    if (ttl_s < 1 || ttl_s > SMOLVM_NET_MAX_TTL)
        return smolvm_err(err, SMOLVM_EINVAL, "allow '%s' for vm '%s': invalid ttl '%u' (1..%d)",
                          addr, vm_id, ttl_s, SMOLVM_NET_MAX_TTL);
    if (is_special(ntohl(be)))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "allow '%s' for vm '%s': the address is private or special (a name "
                          "never opens those ranges; allow the address by CIDR)",
                          addr, vm_id);
    if ((r = smolvm_nft_dyn_add(vm_id, be, ttl_s * 1000u, err)) < 0)
        return SMOLVM_NET_WRAP(r, err, "allow '%s' for vm '%s'", addr, vm_id);
    return 0;
}

int smolvm_net_vm_up(const char *vm_id, const char *guest_ip, const char *gateway, int prefix,
                     const char *uplink, const smolvm_net_forward *forwards, size_t n_forwards,
                     char tap_name[SMOLVM_NET_IFNAMSIZ], smolvm_error **err)
{
    smolvm_net_vm vm = SMOLVM_NET_VM_INIT;

    vm.vm_id = vm_id;
    vm.guest_ip = guest_ip;
    vm.gateway = gateway;
    vm.prefix = prefix;
    vm.uplink = uplink;
    vm.forwards = forwards;
    vm.n_forwards = n_forwards;
    return smolvm_net_vm_setup(&vm, tap_name, err);
}

int smolvm_net_vm_up_link(const char *ifname, const char *vm_id, const char *guest_ip,
                          const char *gateway, int prefix, const char *uplink,
                          const smolvm_net_forward *forwards, size_t n_forwards, smolvm_error **err)
{
    smolvm_net_vm vm = SMOLVM_NET_VM_INIT;

    if (!ifname)
        return smolvm_err(err, SMOLVM_EINVAL, "missing link name");
    vm.vm_id = vm_id;
    vm.guest_ip = guest_ip;
    vm.gateway = gateway;
    vm.prefix = prefix;
    vm.uplink = uplink;
    vm.link = ifname;
    vm.forwards = forwards;
    vm.n_forwards = n_forwards;
    return smolvm_net_vm_setup(&vm, NULL, err);
}

int smolvm_net_vm_down(const char *vm_id, smolvm_error **err)
{
    _cleanup_close_ int lock = -1;
    char tap[SMOLVM_NET_IFNAMSIZ];
    int r, r2;

    if ((r = check_id(vm_id, err)) < 0)
        return r;
    if ((r = net_lock(&lock, err)) < 0)
        return SMOLVM_NET_WRAP(r, err, "network down for vm '%s'", vm_id);
    smolvm_net_tap_name(vm_id, tap);
    /* Both halves always run; the first failure is reported. The link goes first: a
     * guest that is still running (vm_down may overlap its power-off) then has no path
     * left before its isolation rules are removed. Each half mostly waits for an RCU
     * grace period in the kernel (unregistering the netdev, committing rule
     * deletions); running them in parallel threads was measured slower, not faster. */
    r = smolvm_link_delete(tap, err);
    r2 = smolvm_nft_vm_remove(vm_id, r < 0 ? NULL : err);
    if (r < 0 || r2 < 0)
        return SMOLVM_NET_WRAP(r < 0 ? r : r2, err, "network down for vm '%s'", vm_id);
    return 0;
}

int smolvm_net_forward_add(const char *vm_id, const char *guest_ip, const char *host_addr,
                           int host_port, int guest_port, smolvm_error **err)
{
    _cleanup_close_ int lock = -1;
    smolvm_nft_fwd f = {0};
    uint32_t guest_be = 0;
    int r;

    if ((r = check_id(vm_id, err)) < 0 ||
        (r = parse_ip(guest_ip, "guest address", &guest_be, err)) < 0 ||
        (r = parse_forward(host_addr, host_port, guest_port, &f, err)) < 0)
        goto fail;
    if (f.host_be && (ntohl(f.host_be) >> 24) == 127)
        return 0; /* loopback: no rule, the caller's proxy serves it */
    if ((r = net_lock(&lock, err)) < 0 || (r = host_port_free(f.host_be, host_port, err)) < 0 ||
        (r = smolvm_nft_forward_add(vm_id, guest_be, &f, SMOLVM_NET_MAX_FORWARDS, err)) < 0)
        goto fail;
    return 0;
fail:
    return SMOLVM_NET_WRAP(r, err, "forward for vm '%s'", vm_id ? vm_id : "(null)");
}

int smolvm_net_forward_remove(const char *vm_id, const char *guest_ip, const char *host_addr,
                              int host_port, int guest_port, smolvm_error **err)
{
    _cleanup_close_ int lock = -1;
    smolvm_nft_fwd f = {0};
    int r;

    (void)guest_ip;
    (void)guest_port;
    if ((r = check_id(vm_id, err)) < 0 || (r = parse_forward(host_addr, host_port, 1, &f, err)) < 0)
        goto fail;
    if (f.host_be && (ntohl(f.host_be) >> 24) == 127)
        return 0;
    if ((r = net_lock(&lock, err)) < 0 ||
        (r = smolvm_nft_forward_remove(vm_id, f.host_be, f.host_port, err)) < 0)
        goto fail;
    return 0;
fail:
    return SMOLVM_NET_WRAP(r, err, "remove forward of vm '%s'", vm_id ? vm_id : "(null)");
}

int smolvm_net_gc_live(smolvm_net_live_fn live_fn, void *payload, smolvm_error **err)
{
    _cleanup_close_ int lock = -1;
    const char *const *live;
    int r, r2, failed = 0, links_left = 0, vms_left = 0;

    if ((r = net_lock(&lock, err)) < 0)
        return SMOLVM_NET_WRAP(r, err, "network cleanup");
    live = live_fn ? live_fn(payload, &failed) : NULL;
    if (failed)
        return smolvm_err(err, SMOLVM_EIO, "network cleanup: the list of live vms failed");
    /* links first (as in vm_down), then rules */
    r = smolvm_link_gc(live, &links_left, err);
    r2 = smolvm_nft_gc(live, &vms_left, r < 0 ? NULL : err);
    if (r < 0 || r2 < 0)
        return SMOLVM_NET_WRAP(r < 0 ? r : r2, err, "network cleanup");
    /* Nothing of any VM left, and no TAP of ours: the table goes, so the next setup
     * recreates it from this code. Never while a TAP exists: its VM may be one that
     * is starting (listed live) and has rules here. */
    if (!links_left && !vms_left && (r = smolvm_nft_table_delete(err)) < 0)
        return SMOLVM_NET_WRAP(r, err, "network cleanup");
    return 0;
}

static const char *const *fixed_live(void *payload, int *failed)
{
    (void)failed;
    return payload;
}

int smolvm_net_gc(const char *const *live_vm_ids, smolvm_error **err)
{
    return smolvm_net_gc_live(fixed_live, (void *)live_vm_ids, err);
}

int smolvm_net_have_admin(void)
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

    if (!smolvm_net_have_admin())
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
        return SMOLVM_NET_WRAP(r, err, "network 'nat'");
    return 0;
}
