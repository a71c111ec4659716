/* SPDX-License-Identifier: MIT */
/*
 * Host-side networking for network = "nat": one TAP per VM, its addresses and routes
 * (netlink), and the VM's nftables rules in smolvm's own table (`inet smolvm`).
 *
 * Every function here needs CAP_NET_ADMIN in the current network namespace and acts
 * on that namespace only. None keeps state in the process: what exists is read back
 * from the kernel (links named sv-*, rules whose comment is "vm:<id>..."), so any
 * process can tear down what another set up. Thread-safety: functions may run
 * concurrently from different threads or processes; each nftables change is one
 * atomic batch. Addresses and host ports are leased in the store by the caller.
 */
#ifndef SMOLVM_NET_H
#define SMOLVM_NET_H

#include <stdbool.h>
#include <stddef.h>

#include "smolvm.h"

/* Interface name size (IFNAMSIZ). */
#define SMOLVM_NET_IFNAMSIZ 16
/* Limits on what a caller may ask for in one call. */
#define SMOLVM_NET_MAX_FORWARDS 64

/* One TCP port forward: host_addr:host_port -> guest_ip:guest_port. */
typedef struct smolvm_net_forward {
    const char *host_addr; /* IPv4 text; NULL = "127.0.0.1"; "0.0.0.0" = every local
                            * address except loopback from outside */
    int host_port;         /* 1..65535 */
    int guest_port;        /* 1..65535 */
} smolvm_net_forward;

/* Check that this process can do host networking here: CAP_NET_ADMIN, /dev/net/tun,
 * nf_tables with NAT. Returns 0, or SMOLVM_EPERM / SMOLVM_EHOST / SMOLVM_ENET with a
 * message naming the missing piece and a hint. */
int smolvm_net_available(smolvm_error **err);

/* The TAP name of a VM: "sv-<id>" when the id has at most 12 characters, else
 * "sv-<first 3>.<8 hex of a hash of the id>". Deterministic, at most 15 characters. */
void smolvm_net_tap_name(const char *vm_id, char out[SMOLVM_NET_IFNAMSIZ]);

/* From a pool CIDR ("172.16.0.0/16"): the gateway (first host, the host side of every
 * VM link), the prefix length and the dotted netmask for the guest's ip= argument.
 * Any out may be NULL. SMOLVM_EINVAL for a malformed CIDR or a prefix outside 8..30. */
int smolvm_net_pool_info(const char *cidr, char gateway[16], int *prefix, char netmask[16],
                         smolvm_error **err);

/* Bring a VM's network up: create the TAP (persistent, IFF_TAP|IFF_NO_PI, so QEMU can
 * open it by name later), give it the gateway address as a /32 plus a /32 route to
 * guest_ip, set it up, turn on IPv4 forwarding in this namespace, and install the
 * VM's rules (egress via `uplink`, masquerade, the forwards) in one nftables batch.
 * uplink NULL: the interface of the IPv4 default route. prefix is the pool's (the
 * guest's netmask); it is validated and recorded but the host side needs only /32s.
 * tap_name receives the TAP's name. On failure nothing of this call is left behind
 * (an existing TAP of the same VM is replaced, not kept). Host ports taken by another
 * VM's forward or by a listening socket: SMOLVM_EEXIST. */
int smolvm_net_vm_up(const char *vm_id, const char *guest_ip, const char *gateway, int prefix,
                     const char *uplink, const smolvm_net_forward *forwards, size_t n_forwards,
                     char tap_name[SMOLVM_NET_IFNAMSIZ], smolvm_error **err);

/* Like smolvm_net_vm_up on an existing link `ifname` (named sv-*) instead of a new
 * TAP: the link is configured the same way and is deleted by smolvm_net_vm_down.
 * Used by tests with a veth pair whose far end sits in a "guest" namespace. */
int smolvm_net_vm_up_link(const char *ifname, const char *vm_id, const char *guest_ip,
                          const char *gateway, int prefix, const char *uplink,
                          const smolvm_net_forward *forwards, size_t n_forwards,
                          smolvm_error **err);

/* Remove all rules of the VM (one batch) and its TAP. Idempotent: nothing to remove is
 * success. */
int smolvm_net_vm_down(const char *vm_id, smolvm_error **err);

/* Add one forward to a VM that is up (one batch: DNAT in prerouting, unless host_addr
 * is loopback, and in output). host_addr NULL = "127.0.0.1". SMOLVM_EEXIST when the
 * host port is already forwarded (to any VM) or a socket listens on it. */
int smolvm_net_forward_add(const char *vm_id, const char *guest_ip, const char *host_addr,
                           int host_port, int guest_port, smolvm_error **err);

/* Remove the forward host_addr:host_port of the VM. Missing is success. guest_ip and
 * guest_port are not needed to find it and may be NULL/0. */
int smolvm_net_forward_remove(const char *vm_id, const char *guest_ip, const char *host_addr,
                              int host_port, int guest_port, smolvm_error **err);

/* Remove the TAPs (links named sv-* whose alias says smolvm made them) and the rules
 * of every VM not in live_vm_ids (NULL-terminated; NULL = none live). With no live VM
 * the whole table goes, so the next vm_up recreates it from the current code. */
int smolvm_net_gc(const char *const *live_vm_ids, smolvm_error **err);

#endif
