/* SPDX-License-Identifier: MIT */
/* Between the parts of the network module: links (tap.c) and nftables (nft.c). */
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

/* ---- tap.c: links over netlink (libnl-route) and the TUN ioctl */

/* Create a persistent TAP `name` (IFF_TAP|IFF_NO_PI). An existing link of that name
 * is SMOLVM_EEXIST. */
int smolvm_tap_create(const char *name, smolvm_error **err);

/* Configure link `ifname`: alias "smolvm vm:<id>", route_localnet on, up, gateway/32,
 * route guest_ip/32 via the link. */
int smolvm_link_configure(const char *ifname, const char *vm_id, uint32_t gateway_be,
                          uint32_t guest_be, smolvm_error **err);

/* Delete link `ifname`; a missing link is success. */
int smolvm_link_delete(const char *ifname, smolvm_error **err);

/* 1 if link `ifname` exists, 0 if not, <0 on error. */
int smolvm_link_exists(const char *ifname, smolvm_error **err);

/* The interface of the IPv4 default route (lowest metric). SMOLVM_ENET when none. */
int smolvm_link_default_uplink(char out[SMOLVM_NET_IFNAMSIZ], smolvm_error **err);

/* Delete smolvm's links (alias prefix) whose VM id is not in live (NULL-terminated). */
int smolvm_link_gc(const char *const *live, smolvm_error **err);

/* ---- nft.c: smolvm's nftables table (libnftnl + libmnl) */

typedef struct smolvm_nft_fwd {
    uint32_t host_be; /* 0 = every local address */
    uint16_t host_port;
    uint16_t guest_port;
} smolvm_nft_fwd;

/* Check nf_tables answers (a dump of tables). */
int smolvm_nft_probe(smolvm_error **err);

/* One batch: replace every rule of vm_id with its egress/masquerade rules and forwards.
 * Creates the table first if missing. SMOLVM_EEXIST if a forward's host port belongs
 * to another VM. */
int smolvm_nft_vm_set(const char *vm_id, const char *tap, const char *uplink, uint32_t guest_be,
                      const smolvm_nft_fwd *fwds, size_t n, smolvm_error **err);

/* One batch: delete every rule of vm_id. Nothing to delete is success. */
int smolvm_nft_vm_remove(const char *vm_id, smolvm_error **err);

/* One batch: add (or remove) the DNAT rules of one forward. */
int smolvm_nft_forward_add(const char *vm_id, uint32_t guest_be, const smolvm_nft_fwd *f,
                           smolvm_error **err);
int smolvm_nft_forward_remove(const char *vm_id, uint32_t host_be, uint16_t host_port,
                              smolvm_error **err);

/* Delete the rules of VMs not in live; with live empty, the whole table. */
int smolvm_nft_gc(const char *const *live, smolvm_error **err);

#endif
