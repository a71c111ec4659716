/* SPDX-License-Identifier: MIT */
/* Between the parts of the network module: links (tap.c), nftables (nft.c), the lock
 * and argument checks (net.c), the NFLOG reader (nflog.c). */
#ifndef SMOLVM_NET_INTERNAL_H
#define SMOLVM_NET_INTERNAL_H

#include <stdint.h>

#include "net/net.h"

/* Links made by smolvm carry this alias prefix followed by the VM id. */
#define SMOLVM_NET_ALIAS_PREFIX "smolvm vm:"
/* Every VM link name starts with this. */
#define SMOLVM_NET_LINK_PREFIX "sv-"
/* nftables table (family inet) owned by smolvm. */
#define SMOLVM_NFT_TABLE "smolvm"
/* Room for a VM id and its NUL (ids are at most 63 characters). */
#define SMOLVM_NET_IDMAX 64
/* NFLOG prefix of a VM's denied attempts: this followed by the id. */
#define SMOLVM_NET_LOG_PREFIX "vm:"

/* Add context to *err and return the code r (smolvm_err_wrap itself returns
 * SMOLVM_EIO when the caller passed no err). */
#define SMOLVM_NET_WRAP(r, err, ...) ((void)smolvm_err_wrap((err), __VA_ARGS__), (r))

/* Does this process have CAP_NET_ADMIN (effective)? */
int smolvm_net_have_admin(void);

/* ---- tap.c: links over netlink (libnl-route) and the TUN ioctl */

/* Create a persistent TAP `name` (IFF_TAP|IFF_NO_PI), down. An existing link of that
 * name is SMOLVM_EEXIST. */
int smolvm_tap_create(const char *name, smolvm_error **err);

/* Configure link `ifname`: IPv6 off (disable_ipv6 1, accept_ra 0), then alias
 * "smolvm vm:<id>", route_localnet 0, up, gateway/32, route guest_ip/32 via the link.
 * Idempotent. */
int smolvm_link_configure(const char *ifname, const char *vm_id, uint32_t gateway_be,
                          uint32_t guest_be, smolvm_error **err);

/* Does link ifname look as smolvm_link_configure left it? 0 and *bad = 0 when it does,
 * *bad = 1 when something differs, SMOLVM_ENOENT when the link is gone. */
int smolvm_link_check(const char *ifname, uint32_t gateway_be, uint32_t guest_be, int *bad,
                      smolvm_error **err);

/* Delete link `ifname`; a missing link is success. */
int smolvm_link_delete(const char *ifname, smolvm_error **err);

/* 1 if link `ifname` exists, 0 if not, <0 on error. */
int smolvm_link_exists(const char *ifname, smolvm_error **err);

/* The interface of the IPv4 default route (lowest metric). SMOLVM_ENET when none. */
int smolvm_link_default_uplink(char out[SMOLVM_NET_IFNAMSIZ], smolvm_error **err);

/* Delete smolvm's links (alias prefix) whose VM id is not in live (NULL-terminated).
 * *left (may be NULL) receives how many smolvm links remain. */
int smolvm_link_gc(const char *const *live, int *left, smolvm_error **err);

/* ---- nft.c: smolvm's nftables table (libnftnl + libmnl) */

typedef struct smolvm_nft_fwd {
    uint32_t host_be; /* 0 = every local address (except 127.0.0.0/8) */
    uint16_t host_port;
    uint16_t guest_port;
} smolvm_nft_fwd;

/* An inclusive address range, host byte order (a CIDR after parsing). */
typedef struct smolvm_nft_range {
    uint32_t lo, hi;
} smolvm_nft_range;

/* Everything nft.c installs for one VM, parsed and validated by net.c. */
typedef struct smolvm_nft_vm {
    const char *vm_id, *tap, *uplink;
    uint32_t guest_be, gateway_be;
    const smolvm_nft_fwd *fwds; /* NATed forwards only (no loopback ones) */
    size_t n_fwds;
    smolvm_net_egress_mode mode;
    const smolvm_nft_range *allow; /* sorted, merged, disjoint */
    size_t n_allow;
    int dns;
    uint16_t log_group;
} smolvm_nft_vm;

/* Check nf_tables answers (a dump of tables). */
int smolvm_nft_probe(smolvm_error **err);

/* One batch: create or repair the table's shared chains and rules, and replace every
 * rule, chain and set of the VM (both sets emptied). SMOLVM_EEXIST if a forward's host
 * port belongs to another VM. */
int smolvm_nft_vm_set(const smolvm_nft_vm *v, smolvm_error **err);

/* SMOLVM_NET_MISSING_{TABLE,BASE,VM} bits of what differs from smolvm_nft_vm_set(v). */
int smolvm_nft_vm_check(const smolvm_nft_vm *v, unsigned *missing, smolvm_error **err);

/* Like smolvm_nft_vm_set, keeping the dynamic set's entries when the set exists, and
 * leaving the shared part alone when intact. */
int smolvm_nft_vm_repair(const smolvm_nft_vm *v, smolvm_error **err);

/* One batch: rewrite the VM's policy, input and log chains and allow set, empty its
 * dynamic set. SMOLVM_ENOENT when the VM has no chains. */
int smolvm_nft_vm_policy(const smolvm_nft_vm *v, smolvm_error **err);

/* Add addr to the VM's dynamic set with a timeout. */
int smolvm_nft_dyn_add(const char *vm_id, uint32_t addr_be, uint32_t timeout_ms,
                       smolvm_error **err);

/* One batch: delete every rule, chain and set of vm_id. Nothing to delete is success. */
int smolvm_nft_vm_remove(const char *vm_id, smolvm_error **err);

/* One batch: add (or remove) the DNAT rules of one forward. Adding fails with
 * SMOLVM_ENOSPC when the VM already has max forwards. */
int smolvm_nft_forward_add(const char *vm_id, uint32_t guest_be, const smolvm_nft_fwd *f,
                           size_t max, smolvm_error **err);
int smolvm_nft_forward_remove(const char *vm_id, uint32_t host_be, uint16_t host_port,
                              smolvm_error **err);

/* Delete everything of VMs not in live (NULL-terminated). *left (may be NULL)
 * receives how many VMs still have something in the table. */
int smolvm_nft_gc(const char *const *live, int *left, smolvm_error **err);

/* Delete the whole table; a missing table is success. */
int smolvm_nft_table_delete(smolvm_error **err);

/* The refused ranges of INTERNET mode (host byte order), for net.c's checks. */
extern const smolvm_nft_range smolvm_nft_special[9];

#endif
