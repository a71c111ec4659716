/* SPDX-License-Identifier: MIT */
/*
 * The VM's DNS filter, on the supervisor's event loop (loop.h): a UDP resolver bound
 * to the VM's gateway address, port 53, and (SO_BINDTODEVICE) to the VM's TAP, so that
 * every VM's supervisor has its own on the same address. It answers only names on its
 * allow list; everything else gets NXDOMAIN and is reported. Allowed queries are asked
 * again of an upstream resolver (a fresh query: random id, own socket and port, only
 * the question), its answer is checked (id, one question equal to ours, the chain of
 * CNAMEs from our name, sizes) and rebuilt for the guest from the records on that
 * chain only. Each A record passed on is reported before the answer is sent, so the
 * caller can open the address in the VM's nftables set (smolvm_net_egress_allow) in
 * time for the guest's connect. AAAA queries get an empty answer (guests have no IPv6).
 * Messages are parsed and built with ldns. Only UDP: an answer too large for the
 * guest's buffer goes back truncated (TC), without records.
 */
#ifndef SMOLVM_SV_DNS_H
#define SMOLVM_SV_DNS_H

#include <stddef.h>
#include <stdint.h>

#include "loop.h"
#include "smolvm.h"

typedef struct sv_dns sv_dns;

/* An A record passed to the guest: the name asked (lowercase, no final dot), the
 * address (dotted IPv4) and the record's TTL as the upstream gave it (the caller
 * applies its floor). Called before the answer leaves. */
typedef void (*sv_dns_answer_fn)(const char *name, const char *addr, uint32_t ttl, void *data);

/* A query refused because its name is not allowed (name lowercase, at most 253
 * characters; qtype as asked). Rate-limited: at most SV_DNS_REPORT_RATE per second
 * (burst SV_DNS_REPORT_BURST); the rest are counted in sv_dns_stats. */
typedef void (*sv_dns_refused_fn)(const char *name, uint16_t qtype, void *data);

typedef struct sv_dns_options {
    unsigned version;
    const char *bind_addr;        /* IPv4 address to listen on (the VM's gateway) */
    int port;                     /* 0 = 53 */
    const char *ifname;           /* SO_BINDTODEVICE to this link (the TAP); NULL = none */
    const char *upstream;         /* IPv4 address of the resolver asked for allowed names */
    int upstream_port;            /* 0 = 53 */
    const char *const *allow;     /* NULL-terminated: "pypi.org" (that name), "*.github.com"
                                   * (every name below it, not itself), "*" (every name) */
    sv_dns_answer_fn on_answer;   /* may be NULL */
    sv_dns_refused_fn on_refused; /* may be NULL */
    void *data;                   /* passed to both */
    int timeout_ms;               /* for an upstream answer; 0 = 3000 (then SERVFAIL) */
    size_t max_pending;           /* queries waiting for upstream at once; 0 = 128 (beyond:
                                   * SERVFAIL at once) */
} sv_dns_options;
#define SV_DNS_OPTIONS_VERSION 1
#define SV_DNS_OPTIONS_INIT                                                                        \
    {                                                                                              \
        .version = SV_DNS_OPTIONS_VERSION                                                          \
    }

#define SV_DNS_MAX_ALLOW 256 /* names and patterns in an allow list */
#define SV_DNS_MAX_PENDING 1024
#define SV_DNS_REPORT_RATE 10 /* refusal reports per second */
#define SV_DNS_REPORT_BURST 20

typedef struct sv_dns_stats {
    uint64_t queries, allowed, refused, answered_a, servfail, malformed, unreported;
} sv_dns_stats;

/* Listen (the socket exists when this returns) and serve on loop (borrowed; it must
 * outlive the resolver). Strings of o are copied. SMOLVM_EINVAL names the bad option
 * or allow entry; SMOLVM_EEXIST when the address and port (on that link) are taken. */
int sv_dns_new(sv_dns **out, sv_loop *loop, const sv_dns_options *o, smolvm_error **err);

/* Replace the allow list (NULL-terminated, as in the options); queries already sent
 * upstream are answered as they come. On error the old list stays. */
int sv_dns_set_allow(sv_dns *d, const char *const *allow, smolvm_error **err);

void sv_dns_get_stats(const sv_dns *d, sv_dns_stats *out);

/* Stop: close the socket and every pending upstream query. NULL is fine. */
sv_dns *sv_dns_free(sv_dns *d);

#endif
