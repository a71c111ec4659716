/* SPDX-License-Identifier: MIT */
/* Creating a VM: options checked and resolved, the record, its directory, disk, keys,
 * config disk and leases. On failure nothing is left behind. */
#include "util.h"

#include <string.h>

#include "error.h"
#include "guest-config.h"
#include "image.h"
#include "proc.h"
#include "ssh.h"
#include "template.h"
#include "vm-config.h"
#include "vm-internal.h"
#include "vm-net.h"
#include "vm-ports.h"
#include "vm-ssh.h"
#include "vmm/vmm.h"

#define CREATE_ID_ATTEMPTS 8

int smolvm_vm_options_init(smolvm_vm_options *opts, unsigned version)
{
    smolvm_vm_options defaults = SMOLVM_VM_OPTIONS_INIT;

    if (version < 1 || version > SMOLVM_VM_OPTIONS_VERSION)
        return SMOLVM_EINVAL;
    *opts = defaults;
    opts->version = version;
    return 0;
}

static int generate_id(char out[16], smolvm_error **err)
{
    unsigned char b[4];
    int r = smolvm_random(b, sizeof(b), err);

    if (r < 0)
        return r;
    snprintf(out, 16, "vm-%02x%02x%02x%02x", b[0], b[1], b[2], b[3]);
    return 0;
}

/* What this host can do, asked only where the options leave a choice or need it. */
static int resolve(smolvm_backend *backend, smolvm_net_mode *network, smolvm_ctx *ctx,
                   const smolvm_vm_options *o, smolvm_error **err)
{
    smolvm_error *nat_err = NULL, *fc_err = NULL;
    smolvm_vm_host_facts facts = {0};
    bool need_nat, need_fc;
    int r;

    smolvm_vm_resolve_needs(o, &need_nat, &need_fc);
    if (need_nat && smolvm_nat_usable(ctx, &nat_err) < 0)
        facts.nat = nat_err;
    if (need_fc && smolvm_vmm_firecracker.available(SMOLVM_ACCEL_KVM, &fc_err) < 0)
        facts.firecracker = fc_err;
    r = smolvm_vm_resolve(backend, network, o, &facts, err);
    smolvm_error_free(nat_err);
    smolvm_error_free(fc_err);
    return r;
}

/* A clone takes its machine from its template: what the options say must agree. opts
 * are the caller's (before defaults), o the checked copy that is adjusted. */
static int clone_options(smolvm_vm_options *o, smolvm_template **out, smolvm_ctx *ctx,
                         const smolvm_vm_options *opts, smolvm_error **err)
{
    _cleanup_(smolvm_template_freep) smolvm_template *t = NULL;
    const char *name = o->template_name;
    int r;

    if ((r = smolvm_template_open(&t, ctx, name, err)) < 0)
        return r;

    if (opts->backend != SMOLVM_BACKEND_AUTO && opts->backend != t->backend)
        return smolvm_err(err, SMOLVM_EINVAL, "backend: a clone runs on its template's ('%s')",
                          smolvm_backend_to_string(t->backend));
    if (opts->memory_mib && opts->memory_mib != t->memory_mib)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "memory: a clone has its template's memory (%u MiB), got %u",
                          t->memory_mib, opts->memory_mib);
    if (opts->vcpus && opts->vcpus != t->vcpus)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "vcpus: a clone has its template's vcpus (%u), got %u", t->vcpus,
                          opts->vcpus);
    if (opts->image && strcmp(opts->image, t->image) != 0)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "image: a clone has its template's image ('%s'), got '%s'", t->image,
                          opts->image);
    if (o->transport == SMOLVM_TRANSPORT_SSH)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "transport: a clone is reached through its agent, not 'ssh'");
    if (o->disk == SMOLVM_DISK_SHARED)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "disk: a clone's disk is an overlay of its template's ('isolated')");
    /* The VMM's network backend is part of its saved state (QEMU's user network keeps
     * its connections in the stream; no network means no device). */
    if (o->network != SMOLVM_NET_AUTO && o->network != t->network)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "network: template '%s' was made on network '%s'; its clones are too "
                          "(got '%s')",
                          name, smolvm_net_mode_to_string(t->network),
                          smolvm_net_mode_to_string(o->network));
    o->backend = t->backend;
    o->memory_mib = t->memory_mib;
    o->vcpus = t->vcpus;
    o->image = t->image;
    o->transport = SMOLVM_TRANSPORT_AGENT;
    o->network = t->network;
    *out = TAKE_PTR(t);
    return 0;
}

/* Everything after the record exists; on failure the caller removes dir and record. */
static int prepare(smolvm_vm *vm, const smolvm_image *img, const smolvm_template *tpl,
                   smolvm_error **err)
{
    const char *dir = vm->row->dir;
    const smolvm_vm_config *c = vm->cfg;
    _cleanup_free_ char *hostkey = smolvm_strdupf("%s/%s", dir, SMOLVM_VM_HOST_KEY);
    _cleanup_free_ char *cfgdisk = smolvm_strdupf("%s/%s", dir, SMOLVM_VM_CONFIG_DISK);
    _cleanup_free_ char *client = NULL, *client_pub = NULL, *disk = NULL;
    const char *format;
    size_t i;
    int r, port;

    if (!hostkey || !cfgdisk)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if ((r = smolvm_mkdir_p(dir, 0700, err)) < 0)
        return r;
    if ((r = smolvm_ssh_keygen(hostkey, vm->id, err)) < 0)
        return smolvm_err_wrap(err, "generate the guest host key");
    if ((r = smolvm_client_key(&client, &client_pub, vm->ctx, err)) < 0)
        return r;
    /* qemu: a qcow2 overlay now; firecracker makes its overlay upper disk at start (a
     * clone's is a copy of its template's). */
    if (tpl) {
        if ((r = smolvm_template_make_disk(tpl, dir, &disk, err)) < 0)
            return r;
    } else if (c->backend == SMOLVM_BACKEND_QEMU &&
               (r = smolvm_image_make_disk(img, c->disk, dir, &disk, &format, err)) < 0) {
        return r;
    }
    if ((r = smolvm_config_disk_write(cfgdisk, vm->id, client_pub, hostkey,
                                      (const char *const *)c->env, err)) < 0)
        return r;
    if (c->network == SMOLVM_NET_NAT) {
        char ip[16];

        if ((r = smolvm_store_lease_ip(vm->ctx->store, vm->id, c->cidr, ip, err)) < 0)
            return smolvm_err_wrap(err, "lease an address in '%s'", c->cidr);
    }
    if (c->network == SMOLVM_NET_USER &&
        (r = smolvm_vm_ssh_port_alloc(&port, vm->ctx->store, vm->id, err)) < 0)
        return r;
    for (i = 0; i < c->n_forwards; i++) {
        const smolvm_vm_fwd *f = &c->forwards[i];

        r = smolvm_store_port_add(vm->ctx->store, vm->id, "forward", f->host_address, f->host_port,
                                  f->guest_port, "tcp", err);
        if (r == SMOLVM_EEXIST)
            return smolvm_err_wrap(err, "forward %s:%d", f->host_address, f->host_port);
        if (r < 0)
            return r;
        if (!smolvm_port_bindable(f->host_address, f->host_port))
            return smolvm_err(err, SMOLVM_EEXIST,
                              "forward %s:%d: the port is already in use on this host",
                              f->host_address, f->host_port);
    }
    return 0;
}

/* Insert the record under opts->id, or a fresh random id (retried on a clash). */
static int insert(smolvm_vm_row *row, smolvm_ctx *ctx, const smolvm_vm_options *o,
                  smolvm_backend backend, smolvm_net_mode network, const smolvm_image *img,
                  const smolvm_template *tpl, smolvm_error **err)
{
    char genid[16];
    int r, attempt;

    for (attempt = 0;; attempt++) {
        _cleanup_(smolvm_vm_config_freep) smolvm_vm_config *cfg = NULL;
        const char *id = o->id;
        smolvm_vm_placement where;

        if (!id) {
            if ((r = generate_id(genid, err)) < 0)
                return r;
            id = genid;
        }
        free(row->id);
        free(row->dir);
        free(row->config_json);
        row->config_json = NULL;
        row->id = strdup(id);
        row->dir = smolvm_strdupf("%s/vms/%s", ctx->state_dir, id);
        if (!row->id || !row->dir)
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        where = (smolvm_vm_placement){
            .dir = row->dir,
            .image = img->name,
            .kernel = img->kernel,
            .rootfs = img->rootfs,
            .cidr = ctx->nat_cidr,
            .user_ip = SMOLVM_USER_GUEST_IP,
            .image_has_agent = img->has_agent,
            .template_name = tpl ? tpl->name : NULL,
        };
        if ((r = smolvm_vm_config_new(&cfg, o, backend, network, &where, err)) < 0 ||
            (r = smolvm_vm_config_to_json(&row->config_json, cfg, err)) < 0)
            return r;
        row->status = (char *)"created";
        row->backend = (char *)smolvm_backend_to_string(backend);
        /* An ephemeral VM is owned by this process from its first moment: if it dies
         * before anything runs, the next reconcile deletes what it left. */
        row->owner_pid = o->ephemeral ? getpid() : 0;
        if (o->ephemeral && smolvm_pid_start_time(getpid(), &row->owner_start, err) < 0)
            return r = SMOLVM_EIO;
        row->expires_at = o->ttl_ms > 0 ? smolvm_wall_ms() + o->ttl_ms : 0;
        {
            smolvm_store_quota q = {.max_vms = ctx->max_vms, .max_memory_mib = ctx->max_memory_mib};

            r = smolvm_store_vm_insert_quota(ctx->store, row, &q, err);
        }
        row->status = row->backend = NULL;
        if (r == SMOLVM_EEXIST && !o->id && attempt < CREATE_ID_ATTEMPTS) {
            if (err)
                *err = smolvm_error_free(*err);
            continue;
        }
        if (r == SMOLVM_EEXIST)
            smolvm_err_hint(err, "pick another id, or delete the existing vm '%s'", id);
        if (r == SMOLVM_ENOSPC)
            smolvm_err_wrap(err, "create");
        return r;
    }
}

int smolvm_vm_create(smolvm_vm **out, smolvm_ctx *ctx, const smolvm_vm_options *opts,
                     smolvm_error **err)
{
    smolvm_vm_options defaults = SMOLVM_VM_OPTIONS_INIT, o;
    smolvm_backend backend = SMOLVM_BACKEND_QEMU;
    smolvm_net_mode network = SMOLVM_NET_USER;
    _cleanup_(smolvm_template_freep) smolvm_template *tpl = NULL;
    smolvm_image *img = NULL;
    smolvm_vm *vm = NULL;
    smolvm_vm_row row = {0};
    int r;

    if ((r = smolvm_vm_options_check(&o, opts ? opts : &defaults, err)) < 0)
        return r;
    if (o.template_name && (r = clone_options(&o, &tpl, ctx, opts, err)) < 0)
        return r;
    if ((r = resolve(&backend, &network, ctx, &o, err)) < 0)
        return r;
    if ((r = smolvm_image_find(ctx, o.image, &img, err)) < 0)
        return r;
    if (tpl && (r = smolvm_template_check_image(tpl, img, err)) < 0) {
        smolvm_image_free(img);
        return r;
    }
    r = insert(&row, ctx, &o, backend, network, img, tpl, err);
    if (r == 0 && ((r = smolvm_vm_alloc(&vm, ctx, row.id, err)) < 0 ||
                   (r = smolvm_vm_refresh(vm, err)) < 0 || (r = prepare(vm, img, tpl, err)) < 0)) {
        /* Nothing half-made stays: the directory, then the record (its ports go with
         * it). */
        (void)smolvm_rm_rf(row.dir, NULL);
        (void)smolvm_store_vm_delete(ctx->store, row.id, NULL);
        smolvm_err_wrap(err, "create '%s'", row.id);
        vm = smolvm_vm_free(vm);
    }
    if (r == 0) {
        (void)smolvm_store_event(ctx->store, vm->id, "create", NULL, NULL);
        smolvm_log(ctx, SMOLVM_LOG_DEBUG, "created vm '%s' in '%s'", vm->id, row.dir);
        *out = vm;
    }
    free(row.id);
    free(row.dir);
    free(row.config_json);
    smolvm_image_free(img);
    return r;
}
