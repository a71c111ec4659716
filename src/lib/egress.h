/* SPDX-License-Identifier: MIT */
/*
 * A VM's egress policy as the library keeps it: checked and normalised once (from
 * smolvm_egress), resolved against the VM's network, stored in its configuration and
 * in the supervisor's launch spec, and split for the two places that enforce it: the
 * CIDRs go to nftables (net/net.h), the names to the VM's DNS filter
 * (src/supervisor/dns.h). docs/network.md says what each mode lets through.
 */
#ifndef SMOLVM_EGRESS_H
#define SMOLVM_EGRESS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "net/net.h"
#include "smolvm.h"

typedef struct smolvm_egress_policy {
    smolvm_egress_mode mode; /* after smolvm_egress_policy_resolve: INTERNET, NONE or ALLOW */
    char **allow;            /* ALLOW: NULL-terminated normalised entries (lowercase names,
                              * CIDRs as given); else NULL */
    size_t n_allow;
} smolvm_egress_policy;

/* Free what p holds and zero it (mode DEFAULT). */
void smolvm_egress_policy_clear(smolvm_egress_policy *p);

/* Check in and copy it into out (normalised). field names the policy in messages:
 * "egress.allow[2]: '10.0.0.1/8' has host bits set (did you mean '10.0.0.0/8'?)".
 * Mode DEFAULT stays DEFAULT (see smolvm_egress_policy_resolve). out is left zeroed
 * on failure. */
int smolvm_egress_policy_copy(smolvm_egress_policy *out, const smolvm_egress *in, const char *field,
                              smolvm_error **err);

/* Deep copy of a checked policy. */
int smolvm_egress_policy_dup(smolvm_egress_policy *out, const smolvm_egress_policy *in,
                             smolvm_error **err);

/* Can network (resolved) enforce mode? SMOLVM_EINVAL for anything but DEFAULT and
 * NONE on "user" (the message says to use network "nat") and on "none" (no NIC). */
int smolvm_egress_check_network(smolvm_egress_mode mode, smolvm_net_mode network,
                                smolvm_error **err);

/* Resolve DEFAULT for the VM's (resolved) network: "nat" gets INTERNET, "user" and
 * "none" get NONE; what the network cannot enforce is smolvm_egress_check_network's
 * error. */
int smolvm_egress_policy_resolve(smolvm_egress_policy *p, smolvm_net_mode network,
                                 smolvm_error **err);

/* Is a normalised entry a CIDR (or a single address), rather than a name? */
bool smolvm_egress_entry_is_cidr(const char *entry);

/* The stored form, as a recipe writes it: "internet" | "none" | {"allow": [...]}. NULL
 * when out of memory. */
json_t *smolvm_egress_policy_to_json(const smolvm_egress_policy *p);

/* Parse (and check again) the stored form. SMOLVM_EINVAL when malformed. */
int smolvm_egress_policy_from_json(smolvm_egress_policy *out, const json_t *j, smolvm_error **err);

/* The policy as the network module takes it (net/net.h): its mode, its CIDRs in
 * *cidrs (a NULL-terminated array of pointers into p; the caller frees the array) and
 * DNS to the gateway when the VM has a resolver (have_resolver) and the mode is not
 * NONE. A policy with names and no resolver is SMOLVM_EINVAL (nothing could resolve
 * them). The supervisor and the library both use this, so what one installs the other
 * checks alike. */
int smolvm_egress_policy_net(smolvm_net_egress *out, const char ***cidrs,
                             const smolvm_egress_policy *p, bool have_resolver, smolvm_error **err);

/* The policy's CIDRs and names, each a NULL-terminated array of pointers into p (the
 * caller frees only the two arrays). */
int smolvm_egress_policy_split(const smolvm_egress_policy *p, const char ***cidrs, size_t *n_cidrs,
                               const char ***names, size_t *n_names, smolvm_error **err);

#endif
