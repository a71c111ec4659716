/* SPDX-License-Identifier: MIT */
/* A VM's NAT network: lease, TAP and nftables rules (src/lib/net), tied to the VM's
 * life: up before the VMM starts, down when it stops, gone when it is deleted. */
#include "util.h"

#include <arpa/inet.h>
#include <string.h>

#include "context.h"
#include "error.h"
#include "net/net.h"
#include "vm-internal.h"
#include "vm-net.h"

#define DEFAULT_CIDR "172.16.0.0/16"

const char *smolvm_nat_cidr(void)
{
    const char *c = getenv("SMOLVM_NET_CIDR");

    return c && *c ? c : DEFAULT_CIDR;
}

/* Is there a default route (an uplink to masquerade out of)? /proc/net/route lists
 * it as destination 00000000 with mask 00000000. */
static int have_uplink(void)
{
    _cleanup_fclose_ FILE *f = fopen("/proc/net/route", "re");
    char line[256], ifname[32];
    unsigned long dest, gw, mask;
    unsigned flags;

    if (getenv("SMOLVM_NET_UPLINK") && *getenv("SMOLVM_NET_UPLINK"))
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

int smolvm_nat_usable(smolvm_error **err)
{
    int r = smolvm_net_available(err);

    if (r < 0)
        return smolvm_err_wrap(err, "network 'nat'");
    if (!have_uplink())
        return smolvm_err(err, SMOLVM_ENET,
                          "network 'nat': no default route to send guest traffic out of "
                          "(set SMOLVM_NET_UPLINK=IFNAME, or use network = \"user\")");
    return 0;
}

/* The first IPv4 resolver of the host that a guest can reach: not loopback (guests
 * cannot talk to the host's own services). SMOLVM_DNS overrides. */
static int pick_dns(char out[16])
{
    _cleanup_fclose_ FILE *f = NULL;
    const char *env = getenv("SMOLVM_DNS");
    char line[256], addr[64];
    struct in_addr a;

    if (env && inet_pton(AF_INET, env, &a) == 1) {
        snprintf(out, 16, "%s", env);
        return 1;
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

int smolvm_vm_net_up(smolvm_vm *vm, smolvm_vm_net *n, smolvm_error **err)
{
    _cleanup_free_ char *raw = NULL;
    smolvm_net_forward fwds[SMOLVM_NET_MAX_FORWARDS];
    const char *cidr = smolvm_vm_cfg_str(vm, "cidr");
    json_t *info, *p;
    size_t i, k = 0;
    int prefix, r;

    int64_t t0 = smolvm_now_ms();

    memset(n, 0, sizeof(*n));
    if (!cidr)
        cidr = smolvm_nat_cidr();
    if ((r = smolvm_nat_usable(err)) < 0)
        return r;
    if ((r = smolvm_net_pool_info(cidr, n->gateway, &prefix, n->netmask, err)) < 0)
        return r;
    /* The VM's lease from create; the store hands the same one back. */
    if ((r = smolvm_store_lease_ip(vm->ctx->store, vm->id, cidr, n->ip, err)) < 0)
        return smolvm_err_wrap(err, "lease an address in '%s'", cidr);
    if ((r = smolvm_store_get_json(vm->ctx->store, vm->id, &raw, err)) < 0)
        return r;
    info = json_loads(raw, 0, NULL);
    json_array_foreach (json_object_get(info, "ports"), i, p) {
        const char *kind = json_string_value(json_object_get(p, "kind"));

        if (!kind || strcmp(kind, "forward") != 0 || k >= SMOLVM_NET_MAX_FORWARDS)
            continue;
        fwds[k].host_addr = json_string_value(json_object_get(p, "host_address"));
        fwds[k].host_port = (int)json_integer_value(json_object_get(p, "host_port"));
        fwds[k].guest_port = (int)json_integer_value(json_object_get(p, "guest_port"));
        k++;
    }
    r = smolvm_net_vm_up(vm->id, n->ip, n->gateway, prefix, getenv("SMOLVM_NET_UPLINK"), fwds, k,
                         n->tap, err);
    json_decref(info);
    if (r < 0)
        return smolvm_err_wrap(err, "network 'nat'");
    mac_for(vm->id, n->mac);
    n->have_dns = pick_dns(n->dns);
    smolvm_log(vm->ctx, SMOLVM_LOG_DEBUG, "vm '%s': network up (%s, %s) in %lld ms", vm->id, n->tap,
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

int smolvm_vm_net_forward(smolvm_vm *vm, const char *addr, int host_port, int guest_port, int add,
                          smolvm_error **err)
{
    char ip[16];
    int r;

    r = smolvm_store_lease_ip(vm->ctx->store, vm->id, smolvm_vm_cfg_str(vm, "cidr"), ip, err);
    if (r < 0)
        return r;
    return add ? smolvm_net_forward_add(vm->id, ip, addr, host_port, guest_port, err)
               : smolvm_net_forward_remove(vm->id, ip, addr, host_port, guest_port, err);
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
