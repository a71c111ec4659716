/* SPDX-License-Identifier: MIT */
/* A VM's NAT network: lease, TAP and nftables rules (src/lib/net), tied to the VM's
 * life: up before the VMM starts, down when it stops, gone when it is deleted. */
#include "util.h"

#include <arpa/inet.h>
#include <string.h>
#include <time.h>

#include "context.h"
#include "egress.h"
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

/* The resolver the VM's DNS filter asks: the context's nat_dns, else the host's first
 * IPv4 nameserver that is not on loopback. */
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

/* Milliseconds with a fraction, for timings finer than smolvm_now_ms. */
static double elapsed_ms(const struct timespec *t0)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) / 1e6;
}

int smolvm_vm_net_up(smolvm_vm_net *n, smolvm_ctx *ctx, const char *vm_id,
                     const smolvm_vm_config *cfg, smolvm_error **err)
{
    _cleanup_free_ smolvm_port_row *rows = NULL;
    _cleanup_free_ const char **cidrs = NULL;
    smolvm_net_forward fwds[SMOLVM_NET_MAX_FORWARDS];
    smolvm_net_vm spec = SMOLVM_NET_VM_INIT;
    smolvm_net_egress egress;
    smolvm_sv_net *sv = &n->sv;
    const char *cidr = cfg->cidr ? cfg->cidr : ctx->nat_cidr;
    size_t i, n_rows = 0;
    int r;
    struct timespec t0, t_setup;
    double setup_ms;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    memset(n, 0, sizeof(*n));
    if ((r = smolvm_nat_usable(ctx, err)) < 0)
        return r;
    if ((r = smolvm_net_pool_info(cidr, n->gateway, &sv->prefix, n->netmask, err)) < 0)
        return r;
    /* The VM's lease from create; the store hands the same one back. */
    if ((r = smolvm_store_lease_ip(ctx->store, vm_id, cidr, n->ip, err)) < 0)
        return smolvm_err_wrap(err, "lease an address in '%s'", cidr);
    /* The uplink is named once: every later check and repair of this VM (in its
     * supervisor) compares against the same one. */
    if (ctx->nat_uplink)
        (void)snprintf(sv->uplink, sizeof(sv->uplink), "%s", ctx->nat_uplink);
    else if ((r = smolvm_net_default_uplink(sv->uplink, err)) < 0)
        return smolvm_err_wrap(err, "network 'nat'");
    n->have_dns = pick_dns(ctx, sv->upstream);
    if ((r = smolvm_egress_policy_net(&egress, &cidrs, &cfg->egress, n->have_dns, err)) < 0)
        return smolvm_err_wrap(err, "network 'nat'");
    if ((r = smolvm_store_ports_list(&rows, &n_rows, ctx->store, vm_id, err)) < 0)
        return r;
    for (i = 0; i < n_rows && sv->n_forwards < SMOLVM_NET_MAX_FORWARDS; i++) {
        smolvm_sv_fwd *f = &sv->forwards[sv->n_forwards];

        if (rows[i].kind != SMOLVM_PORT_FORWARD)
            continue;
        (void)snprintf(f->host_address, sizeof(f->host_address), "%.15s", rows[i].host_address);
        f->host_port = rows[i].host_port;
        f->guest_port = rows[i].guest_port;
        fwds[sv->n_forwards].host_addr = f->host_address;
        fwds[sv->n_forwards].host_port = f->host_port;
        fwds[sv->n_forwards].guest_port = f->guest_port;
        sv->n_forwards++;
    }
    spec.vm_id = vm_id;
    spec.guest_ip = n->ip;
    spec.gateway = n->gateway;
    spec.prefix = sv->prefix;
    spec.uplink = sv->uplink;
    spec.forwards = fwds;
    spec.n_forwards = sv->n_forwards;
    spec.egress = &egress;
    clock_gettime(CLOCK_MONOTONIC, &t_setup);
    if ((r = smolvm_net_vm_setup(&spec, n->tap, err)) < 0)
        return smolvm_err_wrap(err, "network 'nat'");
    setup_ms = elapsed_ms(&t_setup);
    mac_for(vm_id, n->mac);
    /* The guest asks its gateway, where its supervisor's DNS filter answers. */
    if (n->have_dns)
        (void)snprintf(n->dns, sizeof(n->dns), "%s", n->gateway);
    memcpy(sv->tap, n->tap, sizeof(sv->tap));
    memcpy(sv->guest_ip, n->ip, sizeof(sv->guest_ip));
    memcpy(sv->gateway, n->gateway, sizeof(sv->gateway));
    sv->egress = cfg->egress; /* borrowed from cfg for the spec */
    smolvm_log(
        ctx, SMOLVM_LOG_DEBUG,
        "vm '%s': network up (%s, %s, egress %s, %zu allow entries) in %.3f ms (setup %.3f ms)",
        vm_id, n->tap, n->ip, smolvm_egress_mode_to_string(cfg->egress.mode), cfg->egress.n_allow,
        elapsed_ms(&t0), setup_ms);
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

/* The live VMs, read from the store under the network lock (smolvm_net_gc_live): a
 * VM whose start has begun is "starting" before its setup takes that lock. */
typedef struct live_list {
    smolvm_ctx *ctx;
    smolvm_vm_row **rows;
    size_t n;
    const char **ids;
} live_list;

static const char *const *live_vms(void *payload, int *failed)
{
    live_list *l = payload;
    size_t k = 0;

    if (smolvm_store_vm_list(l->ctx->store, &l->rows, &l->n, NULL) < 0 ||
        !(l->ids = calloc(l->n + 1, sizeof(*l->ids)))) {
        *failed = 1;
        return NULL;
    }
    for (size_t i = 0; i < l->n; i++) {
        const char *s = l->rows[i]->status ? l->rows[i]->status : "";

        /* A VM with a VMM, or one that is getting or losing it. */
        if (strcmp(s, "running") == 0 || strcmp(s, "starting") == 0 || strcmp(s, "stopping") == 0 ||
            strcmp(s, "paused") == 0 || strcmp(s, "suspending") == 0)
            l->ids[k++] = l->rows[i]->id;
    }
    return l->ids;
}

void smolvm_vm_net_gc(smolvm_ctx *ctx)
{
    live_list l = {ctx, NULL, 0, NULL};
    smolvm_error *e = NULL;

    if (smolvm_net_available(NULL) < 0)
        return; /* unprivileged: there is nothing of ours to collect */
    if (smolvm_net_gc_live(live_vms, &l, &e) < 0) {
        smolvm_log(ctx, SMOLVM_LOG_WARN, "network cleanup: %s", smolvm_error_message(e));
        smolvm_error_free(e);
    }
    free(l.ids);
    smolvm_vm_rows_free(l.rows, l.n);
}
