/* SPDX-License-Identifier: MIT */
/*
 * Loopback port forwards as a userspace TCP proxy, on the supervisor's event loop
 * (loop.h): listens on host_addr:host_port (127.0.0.1 for the forwards nftables must
 * not NAT, see smolvm_net_forward_proxied) and, for each connection, connects to
 * guest_ip:guest_port and copies both ways. Each direction has one fixed buffer; a
 * side is not read while the other has not taken what was read (backpressure), a FIN
 * is passed on as a shutdown of the other side's writing half, an error or reset on
 * one side resets the other. Connections beyond the cap wait in the listen backlog.
 * Single-threaded, like the loop.
 */
#ifndef SMOLVM_SV_PROXY_H
#define SMOLVM_SV_PROXY_H

#include <stddef.h>

#include "loop.h"
#include "smolvm.h"

typedef struct sv_proxy sv_proxy;

typedef struct sv_proxy_options {
    unsigned version;
    size_t max_conns;       /* open connections over all forwards; 0 = 256 */
    size_t buf_size;        /* bytes buffered per direction of a connection; 0 = 64 KiB */
    int connect_timeout_ms; /* to the guest; 0 = 10000 */
} sv_proxy_options;
#define SV_PROXY_OPTIONS_VERSION 1
#define SV_PROXY_OPTIONS_INIT                                                                      \
    {                                                                                              \
        .version = SV_PROXY_OPTIONS_VERSION                                                        \
    }

/* Limits on what a caller may ask for. */
#define SV_PROXY_MAX_FORWARDS 64
#define SV_PROXY_MAX_CONNS 4096
#define SV_PROXY_MAX_BUF (1024 * 1024)

/* A proxy on loop (borrowed; it must outlive the proxy). opts may be NULL. */
int sv_proxy_new(sv_proxy **out, sv_loop *loop, const sv_proxy_options *opts, smolvm_error **err);

/* Start forwarding host_addr:host_port (NULL = 127.0.0.1; IPv4) to guest_ip:guest_port.
 * The listening socket exists when this returns. SMOLVM_EEXIST when the address is
 * taken (by this proxy or another program), SMOLVM_ENOSPC beyond
 * SV_PROXY_MAX_FORWARDS, SMOLVM_EINVAL for bad arguments. */
int sv_proxy_add(sv_proxy *p, const char *host_addr, int host_port, const char *guest_ip,
                 int guest_port, smolvm_error **err);

/* Stop forwarding host_addr:host_port: close its listening socket and its open
 * connections (both sides reset). Returns 0, or SMOLVM_ENOENT when there is no such
 * forward. */
int sv_proxy_remove(sv_proxy *p, const char *host_addr, int host_port);

/* Open connections (being connected or copying), over all forwards. */
size_t sv_proxy_connections(const sv_proxy *p);

/* Close every forward and connection and stop watching their fds. NULL is fine. */
sv_proxy *sv_proxy_free(sv_proxy *p);

#endif
