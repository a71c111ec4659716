/* SPDX-License-Identifier: MIT */
/*
 * Host-side networking for network = "nat": one TAP per VM, its addresses and routes
 * (netlink), the VM's nftables rules and egress policy in smolvm's own table
 * (`inet smolvm`), and the reader of the VM's denied attempts (NFLOG).
 *
 * Every function here needs CAP_NET_ADMIN in the current network namespace and acts
 * on that namespace only. None keeps state in the process: what exists is read back
 * from the kernel (links named sv-*, rules whose comment is "vm:<id>...", chains and
 * sets named "vm-<id>-..."), so any process can tear down what another set up.
 * Thread-safety: functions may run concurrently from different threads or processes.
 * Setup, teardown, repair, policy changes, forwards and gc hold a host-wide lock (one
 * per network namespace, /run/smolvm/net-<netns inode>.lock), and each nftables change
 * is one atomic batch. Addresses and host ports are leased in the store by the caller.
 * docs/network.md describes the rule layout and what fails closed.
 */
#ifndef SMOLVM_NET_H
#define SMOLVM_NET_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smolvm.h"

/* Interface name size (IFNAMSIZ). */
#define SMOLVM_NET_IFNAMSIZ 16
/* Limits on what a caller may ask for. */
#define SMOLVM_NET_MAX_FORWARDS 64  /* forwards of one VM */
#define SMOLVM_NET_MAX_ALLOW 256    /* CIDRs in one allow list */
#define SMOLVM_NET_MAX_DYNAMIC 4096 /* resolved addresses in a VM's dynamic set at once */
#define SMOLVM_NET_MAX_TTL 86400    /* seconds a resolved address may stay allowed */
/* Denied attempts are logged at most this often per VM (packets per second, burst). */
#define SMOLVM_NET_LOG_RATE 10
#define SMOLVM_NET_LOG_BURST 20

/* One TCP port forward: host_addr:host_port -> guest_ip:guest_port. */
typedef struct smolvm_net_forward {
    const char *host_addr; /* IPv4 text; NULL = "127.0.0.1"; "0.0.0.0" = every local
                            * address. Loopback is never NATed: see
                            * smolvm_net_forward_proxied */
    int host_port;         /* 1..65535 */
    int guest_port;        /* 1..65535 */
} smolvm_net_forward;

/* What a guest may connect to. */
typedef enum smolvm_net_egress_mode {
    SMOLVM_NET_EGRESS_INTERNET, /* public addresses only (the default) */
    SMOLVM_NET_EGRESS_NONE,     /* no outbound connection at all; forwards still answer */
    SMOLVM_NET_EGRESS_ALLOW,    /* the allow list's CIDRs plus the dynamic set */
    _SMOLVM_NET_EGRESS_MAX,
    _SMOLVM_NET_EGRESS_INVALID = -EINVAL,
} smolvm_net_egress_mode;

/* "internet", "none", "allow"; NULL for an invalid mode. */
const char *smolvm_net_egress_mode_name(smolvm_net_egress_mode mode);
/* The mode of a name, or _SMOLVM_NET_EGRESS_INVALID. */
smolvm_net_egress_mode smolvm_net_egress_mode_from_name(const char *name);

/*
 * An egress policy. Under every mode a guest sends only from its own address, never
 * reaches another VM or an address of the host (except the resolver below), and IPv6
 * from it is dropped. INTERNET refuses 0/8, 10/8, 100.64/10, 127/8, 169.254/16,
 * 172.16/12, 192.168/16, 224/4 and 240/4. ALLOW accepts the CIDRs of `allow` (any
 * range the caller lists, private ones included), then refuses the INTERNET ranges,
 * then accepts the VM's dynamic set (smolvm_net_egress_allow, filled from DNS
 * answers), and refuses DNS (udp/tcp 53) to anything but the gateway. Denied
 * attempts are logged to NFLOG group `log_group` with prefix "vm:<id>", rate-limited
 * (SMOLVM_NET_LOG_RATE/s) in the rule.
 */
typedef struct smolvm_net_egress {
    unsigned version;
    smolvm_net_egress_mode mode;
    const char *const *allow; /* ALLOW: n_allow entries "a.b.c.d/len" or "a.b.c.d" */
    size_t n_allow;           /* at most SMOLVM_NET_MAX_ALLOW */
    int dns;                  /* nonzero: the guest may send DNS (udp and tcp 53) to the
                               * gateway, where the caller runs its resolver */
    unsigned log_group;       /* NFLOG group 1..65535; 0 = smolvm_net_log_group(guest) */
} smolvm_net_egress;
#define SMOLVM_NET_EGRESS_VERSION 1
#define SMOLVM_NET_EGRESS_INIT                                                                     \
    {                                                                                              \
        .version = SMOLVM_NET_EGRESS_VERSION                                                       \
    }

/* Everything the network module needs to know about one VM. Strings are borrowed for
 * the call. */
typedef struct smolvm_net_vm {
    unsigned version;
    const char *vm_id;    /* [a-z0-9_-], 1..63 characters */
    const char *guest_ip; /* IPv4 */
    const char *gateway;  /* the pool's gateway (smolvm_net_pool_info) */
    int prefix;           /* the pool's prefix length, 8..30 */
    const char *uplink;   /* interface guest traffic leaves by; NULL = the IPv4 default
                           * route's, looked up at setup (pass the same value to every
                           * later call of this VM) */
    const char *link;     /* NULL: create the TAP; else an existing link that must already
                           * have the TAP's name (tests: a veth whose far end is a "guest") */
    const smolvm_net_forward *forwards;
    size_t n_forwards;               /* at most SMOLVM_NET_MAX_FORWARDS */
    const smolvm_net_egress *egress; /* NULL = INTERNET, no resolver */
} smolvm_net_vm;
#define SMOLVM_NET_VM_VERSION 1
#define SMOLVM_NET_VM_INIT                                                                         \
    {                                                                                              \
        .version = SMOLVM_NET_VM_VERSION                                                           \
    }

/* Check that this process can do host networking here: CAP_NET_ADMIN, /dev/net/tun,
 * nf_tables with NAT. Returns 0, or SMOLVM_EPERM / SMOLVM_EHOST / SMOLVM_ENET with a
 * message naming the missing piece and a hint. */
int smolvm_net_available(smolvm_error **err);

/* The TAP name of a VM: "sv-<id>" when the id has at most 12 characters, else
 * "sv-<first 3>.<8 hex of a hash of the id>". Deterministic, at most 15 characters. */
void smolvm_net_tap_name(const char *vm_id, char out[SMOLVM_NET_IFNAMSIZ]);

/* The interface of this namespace's IPv4 default route (lowest metric): what setup
 * uses when smolvm_net_vm.uplink is NULL. Resolve it once and pass the name to every
 * call of a VM. SMOLVM_ENET when there is no default route. */
int smolvm_net_default_uplink(char out[SMOLVM_NET_IFNAMSIZ], smolvm_error **err);

/* From a pool CIDR ("172.16.0.0/16"): the gateway (first host, the host side of every
 * VM link), the prefix length and the dotted netmask for the guest's ip= argument.
 * Any out may be NULL. SMOLVM_EINVAL for a malformed CIDR or a prefix outside 8..30. */
int smolvm_net_pool_info(const char *cidr, char gateway[16], int *prefix, char netmask[16],
                         smolvm_error **err);

/* The default NFLOG group of a VM: the low 16 bits of its address, so VMs of one pool
 * of /16 or smaller never share one (a group has one reader per namespace). 0 for an
 * invalid address. */
unsigned smolvm_net_log_group(const char *guest_ip);

/* Is host_addr (NULL = 127.0.0.1) a loopback address? Such forwards get no nftables
 * rule (a DNAT of 127.0.0.1 needs route_localnet, which lets a guest reach host
 * loopback services): the caller serves them with a userspace proxy
 * (src/supervisor/proxy.h). A forward on "0.0.0.0" is NATed for every local address
 * except 127.0.0.0/8: its 127.0.0.1 side needs a proxy too. */
bool smolvm_net_forward_proxied(const char *host_addr);

/*
 * Bring a VM's network up: create the TAP (persistent, IFF_TAP|IFF_NO_PI, so QEMU can
 * open it by name later) unless vm->link names one, turn IPv6 off on it (disable_ipv6,
 * accept_ra 0) and route_localnet off, give it the gateway address as a /32 plus a /32
 * route to the guest, set it up, turn on IPv4 forwarding in this namespace, and
 * install the table (if missing or damaged) and every rule, chain and set of the VM in
 * one nftables batch. tap_name (may be NULL) receives the TAP's name. On failure
 * nothing of this call is left behind (an existing TAP of the same VM is replaced,
 * not kept). Host ports taken by another VM's forward or by a listening socket:
 * SMOLVM_EEXIST. Typical cost: about 1 ms with a 20-entry allow list.
 */
int smolvm_net_vm_setup(const smolvm_net_vm *vm, char tap_name[SMOLVM_NET_IFNAMSIZ],
                        smolvm_error **err);

/* What smolvm_net_vm_check found missing or wrong (bits of *missing). */
enum {
    SMOLVM_NET_MISSING_TABLE = 1 << 0, /* no table inet smolvm at all */
    SMOLVM_NET_MISSING_BASE = 1 << 1,  /* a shared chain or rule of the table */
    SMOLVM_NET_MISSING_VM = 1 << 2,    /* a rule, chain or set of this VM */
    SMOLVM_NET_MISSING_LINK = 1 << 3,  /* the TAP's sysctls, address or route */
};

/* Compare the kernel's state with what smolvm_net_vm_setup(vm) installs: the table's
 * shared chains and rules, the VM's rules per chain, its chains and sets, the TAP's
 * route_localnet (0), disable_ipv6 (1), address and route. *missing receives the
 * SMOLVM_NET_MISSING_* bits (0: intact). Read-only, takes no lock; a few netlink dumps
 * (about 0.3 ms with a few VMs), cheap enough to call every second. A missing TAP is
 * SMOLVM_ENOENT: it cannot be repaired under a running VMM. */
int smolvm_net_vm_check(const smolvm_net_vm *vm, unsigned *missing, smolvm_error **err);

/* smolvm_net_vm_check, then, if anything is missing, re-install it under the lock in
 * one batch: the table's missing parts, all of the VM's rules (its dynamic set's
 * entries are kept when the set survived), the link's configuration. *repaired (may
 * be NULL) receives the bits that were repaired (0: nothing was wrong). vm must
 * describe the VM as it is now (its current egress and forwards). */
int smolvm_net_vm_ensure(const smolvm_net_vm *vm, unsigned *repaired, smolvm_error **err);

/* Replace the egress policy of a VM that is up with vm->egress, in one batch: its
 * policy, input and log chains and its allow set are rewritten and its dynamic set
 * emptied; connections that the new policy refuses stop passing at once (every packet
 * a guest sends is checked, not just the first of a connection). SMOLVM_ENOENT when
 * the VM's network is not up. Typical cost: well under 1 ms. */
int smolvm_net_egress_set(const smolvm_net_vm *vm, smolvm_error **err);

/* Allow the guest to reach addr (IPv4) for ttl_s seconds (1..SMOLVM_NET_MAX_TTL), in
 * the VM's dynamic set; adding an address again restarts its timeout (on kernels that
 * update timeouts; older ones keep the first). Only ALLOW mode consults the set.
 * Refused (SMOLVM_EINVAL): an address in one of the INTERNET mode's refused ranges
 * (a DNS answer must never open those: allow them by CIDR). SMOLVM_ENOSPC when the
 * set holds SMOLVM_NET_MAX_DYNAMIC addresses; SMOLVM_ENOENT when the VM is not up.
 * One netlink message, no lock: meant to be called for every A record the resolver
 * passes on, before the answer reaches the guest. */
int smolvm_net_egress_allow(const char *vm_id, const char *addr, unsigned ttl_s,
                            smolvm_error **err);

/* Remove all rules, chains and sets of the VM (one batch) and its TAP. Idempotent:
 * nothing to remove is success. */
int smolvm_net_vm_down(const char *vm_id, smolvm_error **err);

/* Add one forward to a VM that is up (one batch: DNAT in prerouting and output).
 * host_addr NULL = "127.0.0.1": loopback forwards get no rule (see
 * smolvm_net_forward_proxied) and only their arguments are checked here.
 * SMOLVM_EEXIST when the host port is already forwarded (to any VM) or a socket
 * listens on it; SMOLVM_ENOSPC when the VM has SMOLVM_NET_MAX_FORWARDS NATed
 * forwards. */
int smolvm_net_forward_add(const char *vm_id, const char *guest_ip, const char *host_addr,
                           int host_port, int guest_port, smolvm_error **err);

/* Remove the forward host_addr:host_port of the VM. Missing is success. guest_ip and
 * guest_port are not needed to find it and may be NULL/0. */
int smolvm_net_forward_remove(const char *vm_id, const char *guest_ip, const char *host_addr,
                              int host_port, int guest_port, smolvm_error **err);

/* Which VMs are live, asked under the lock. Returns a NULL-terminated array of ids
 * that stays valid until the gc returns (the callback's owner frees it after), or
 * NULL with *failed set to stop the gc. Must list every VM whose network may be up or
 * about to be set up (starting as well as running), since a VM it does not list loses
 * its TAP and rules. */
typedef const char *const *(*smolvm_net_live_fn)(void *payload, int *failed);

/* Under the lock: ask live() which VMs are live, remove the TAPs (links named sv-*
 * whose alias says smolvm made them), rules, chains and sets of every other VM, and
 * delete the whole table only when no smolvm TAP is left and it holds nothing of any
 * VM (so a newer smolvm's table layout takes effect at the next setup). Because the
 * list is read under the same lock as setup, a VM set up concurrently by another
 * process is never collected as long as live() lists it from the moment its setup
 * starts. */
int smolvm_net_gc_live(smolvm_net_live_fn live, void *payload, smolvm_error **err);

/* smolvm_net_gc_live with a list made by the caller beforehand (NULL-terminated;
 * NULL = none live). Racy against setups in other processes when the list was read
 * before the call: prefer smolvm_net_gc_live. */
int smolvm_net_gc(const char *const *live_vm_ids, smolvm_error **err);

/* The lock file of this network namespace (for tests and diagnostics). */
int smolvm_net_lock_path(char *out, size_t size, smolvm_error **err);

/* ---------------------------------------------------------------- before egress */

/* smolvm_net_vm_setup with INTERNET egress and a new TAP. */
int smolvm_net_vm_up(const char *vm_id, const char *guest_ip, const char *gateway, int prefix,
                     const char *uplink, const smolvm_net_forward *forwards, size_t n_forwards,
                     char tap_name[SMOLVM_NET_IFNAMSIZ], smolvm_error **err);

/* smolvm_net_vm_setup with INTERNET egress on an existing link `ifname`. */
int smolvm_net_vm_up_link(const char *ifname, const char *vm_id, const char *guest_ip,
                          const char *gateway, int prefix, const char *uplink,
                          const smolvm_net_forward *forwards, size_t n_forwards,
                          smolvm_error **err);

/* ---------------------------------------------------------------- denied attempts */

/* One refused connection attempt of a guest, from NFLOG. */
typedef struct smolvm_net_denied {
    int64_t time_ms;   /* wall clock, milliseconds since the epoch */
    char vm_id[64];    /* from the log prefix */
    uint8_t protocol;  /* IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, ... */
    char dst[16];      /* destination address, dotted IPv4 */
    uint16_t dst_port; /* TCP/UDP destination port; 0 for other protocols */
} smolvm_net_denied;

typedef struct smolvm_nflog smolvm_nflog;

/* Bind NFLOG group `group` (1..65535) of this namespace for the VM vm_id: only records
 * whose prefix names that VM are returned. A group has one reader per namespace:
 * SMOLVM_EEXIST when another socket holds it. *out is freed with smolvm_nflog_free. */
int smolvm_nflog_open(smolvm_nflog **out, unsigned group, const char *vm_id, smolvm_error **err);

/* The socket to watch for readability (edge or level). Valid until smolvm_nflog_free. */
int smolvm_nflog_fd(const smolvm_nflog *log);

/* Read up to max records without blocking into out; returns how many (0: none now) or
 * a negative SMOLVM_E* code. Records that do not parse (not IPv4, truncated) and other
 * VMs' records are skipped. If the socket overflowed (the kernel dropped records)
 * smolvm_nflog_lost grows. */
int smolvm_nflog_read(smolvm_nflog *log, smolvm_net_denied *out, size_t max, smolvm_error **err);

/* How often the socket overflowed (ENOBUFS: the kernel dropped records because the
 * reader fell behind; how many it dropped is not known). */
uint64_t smolvm_nflog_lost(const smolvm_nflog *log);

smolvm_nflog *smolvm_nflog_free(smolvm_nflog *log);

#endif
