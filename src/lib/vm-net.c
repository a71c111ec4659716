/* SPDX-License-Identifier: MIT */
/* A VM's NAT network: lease, TAP and nftables rules (src/lib/net), tied to the VM's
 * life: up before the VMM starts, down when it stops, gone when it is deleted. */
#include "util.h"

#include <arpa/inet.h>
#include <string.h>

#include "context.h"
#include "error.h"
#include "net/net.h"
#include "store.h"
#include "vm-net.h"

/* Is there a default route (an uplink to masquerade out of)? /proc/net/route lists
 * it as destination 00000000 with mask 00000000. */
static int have_uplink(const smolvm_ctx *ctx)
{
    _cleanup_fclose_ FILE *f = fopen("/proc/net/route", "re");
    char line[256], ifname[32];
    unsigned long dest, gw, mask;
    unsigned flags;

    if (ctx->nat_uplink)
        return 1;
    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "%31s %lx %lx %x %*d %*d %*d %lx", ifname, &dest, &gw, &flags, &mask) ==
                5 &&
            dest == 0 && mask == 0 && (flags & 1))
            return 1;
    return 0;
}

int smolvm_nat_usable(const smolvm_ctx *ctx, smolvm_error **err)
{
    int r = smolvm_net_available(err);

    if (r < 0)
        return smolvm_err_wrap(err, "network 'nat'");
    if (!have_uplink(ctx))
        return smolvm_err(err, SMOLVM_ENET,
                          "network 'nat': no default route to send guest traffic out of "
                          "(set SMOLVM_NET_UPLINK=IFNAME, or use network = \"user\")");
    return 0;
}

/* The first IPv4 resolver of the host that a guest can reach: not loopback (guests
 * cannot talk to the host's own services). The context's nat_dns overrides. */
static bool pick_dns(const smolvm_ctx *ctx, char out[16])
{
    _cleanup_fclose_ FILE *f = NULL;
    char line[256], addr[64];
    struct in_addr a;

    if (ctx->nat_dns && inet_pton(AF_INET, ctx->nat_dns, &a) == 1) {
        snprintf(out, 16, "%s", ctx->nat_dns);
        return true;
    }
    if (!(f = fopen("/etc/resolv.conf", "re")))
        return 0;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, " nameserver %63s", addr) == 1 && inet_pton(AF_INET, addr, &a) == 1 &&
            strncmp(addr, "127.", 4) != 0) {
            snprintf(out, 16, "%.15s", addr);
            return 1;
        }
    return 0;
}

/* A stable, locally administered MAC from the VM id (FNV-1a). */
static void mac_for(const char *id, char out[18])
{
    uint32_t h = 2166136261u;

    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 16777619u;
    snprintf(out, 18, "02:5e:%02x:%02x:%02x:%02x", h >> 24, (h >> 16) & 0xff, (h >> 8) & 0xff,
             h & 0xff);
}

int smolvm_vm_net_up(smolvm_vm_net *n, smolvm_ctx *ctx, const char *vm_id,
                     const smolvm_vm_config *cfg, smolvm_error **err)
{
    _cleanup_free_ smolvm_port_row *rows = NULL;
    smolvm_net_forward fwds[SMOLVM_NET_MAX_FORWARDS];
    const char *cidr = cfg->cidr ? cfg->cidr : ctx->nat_cidr;
    size_t i, n_rows = 0, k = 0;
    int prefix, r;
    int64_t t0 = smolvm_now_ms();

    memset(n, 0, sizeof(*n));
    if ((r = smolvm_nat_usable(ctx, err)) < 0)
        return r;
    if ((r = smolvm_net_pool_info(cidr, n->gateway, &prefix, n->netmask, err)) < 0)
        return r;
    /* The VM's lease from create; the store hands the same one back. */
    if ((r = smolvm_store_lease_ip(ctx->store, vm_id, cidr, n->ip, err)) < 0)
        return smolvm_err_wrap(err, "lease an address in '%s'", cidr);
    if ((r = smolvm_store_ports_list(&rows, &n_rows, ctx->store, vm_id, err)) < 0)
        return r;
    for (i = 0; i < n_rows && k < SMOLVM_NET_MAX_FORWARDS; i++) {
        if (rows[i].kind != SMOLVM_PORT_FORWARD)
            continue;
        fwds[k].host_addr = rows[i].host_address;
        fwds[k].host_port = rows[i].host_port;
        fwds[k].guest_port = rows[i].guest_port;
        k++;
    }
    r = smolvm_net_vm_up(vm_id, n->ip, n->gateway, prefix, ctx->nat_uplink, fwds, k, n->tap, err);
    if (r < 0)
        return smolvm_err_wrap(err, "network 'nat'");
    mac_for(vm_id, n->mac);
    n->have_dns = pick_dns(ctx, n->dns);
    smolvm_log(ctx, SMOLVM_LOG_DEBUG, "vm '%s': network up (%s, %s) in %lld ms", vm_id, n->tap,
               n->ip, (long long)(smolvm_now_ms() - t0));
    return 0;
}

void smolvm_vm_net_down(smolvm_ctx *ctx, const char *vm_id)
{
    smolvm_error *e = NULL;
    int64_t t0 = smolvm_now_ms();

    if (smolvm_net_vm_down(vm_id, &e) < 0) {
        smolvm_log(ctx, SMOLVM_LOG_WARN, "vm '%s': network teardown: %s", vm_id,
                   smolvm_error_message(e));
        smolvm_error_free(e);
        return;
    }
    smolvm_log(ctx, SMOLVM_LOG_DEBUG, "vm '%s': network down in %lld ms", vm_id,
               (long long)(smolvm_now_ms() - t0));
}

int smolvm_vm_net_forward(smolvm_ctx *ctx, const char *vm_id, const smolvm_vm_config *cfg,
                          const char *addr, int host_port, int guest_port, bool add,
                          smolvm_error **err)
{
    char ip[16];
    int r;

    r = smolvm_store_lease_ip(ctx->store, vm_id, cfg->cidr ? cfg->cidr : ctx->nat_cidr, ip, err);
    if (r < 0)
        return r;
    return add ? smolvm_net_forward_add(vm_id, ip, addr, host_port, guest_port, err)
               : smolvm_net_forward_remove(vm_id, ip, addr, host_port, guest_port, err);
}

void smolvm_vm_net_gc(smolvm_ctx *ctx, const char *const *live_ids)
{
    smolvm_error *e = NULL;

    if (smolvm_net_available(NULL) < 0)
        return; /* unprivileged: there is nothing of ours to collect */
    if (smolvm_net_gc(live_ids, &e) < 0) {
        smolvm_log(ctx, SMOLVM_LOG_WARN, "network cleanup: %s", smolvm_error_message(e));
        smolvm_error_free(e);
    }
}
