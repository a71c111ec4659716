/* SPDX-License-Identifier: MIT */
/* The VM handle: open, refresh, status, describe, list, free. */
#include "util.h"

#include <jansson.h>
#include <string.h>

#include "error.h"
#include "vm-internal.h"
#include "vm-reconcile.h"
#include "vmm/vmm.h"

int smolvm_vm_alloc(smolvm_vm **out, smolvm_ctx *ctx, const char *id, smolvm_error **err)
{
    smolvm_vm *vm = calloc(1, sizeof(*vm));

    if (!vm || !(vm->id = strdup(id))) {
        free(vm);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    vm->ctx = ctx;
    vm->start.lock = -1;
    *out = vm;
    return 0;
}

int smolvm_vm_refresh(smolvm_vm *vm, smolvm_error **err)
{
    smolvm_vm_row *row = NULL;
    smolvm_vm_config *cfg = NULL;
    int r;

    r = smolvm_store_vm_get(vm->ctx->store, vm->id, &row, err);
    if (r < 0)
        return r;
    r = smolvm_vm_config_from_json(&cfg, row->config_json, err);
    if (r < 0) {
        smolvm_vm_row_free(row);
        return smolvm_err_wrap(err, "vm '%s'", vm->id);
    }
    smolvm_vm_row_free(vm->row);
    smolvm_vm_config_free(vm->cfg);
    vm->row = row;
    vm->cfg = cfg;
    return 0;
}

int smolvm_vm_open(smolvm_vm **out, smolvm_ctx *ctx, const char *id, smolvm_error **err)
{
    smolvm_vm *vm = NULL;
    int r;

    if (!id || !smolvm_id_valid(id))
        return smolvm_err(err, SMOLVM_EINVAL, "id: expected [a-z0-9][a-z0-9_-]{0,62}, got '%.80s'",
                          id ? id : "");
    if ((r = smolvm_vm_alloc(&vm, ctx, id, err)) < 0)
        return r;
    r = smolvm_vm_refresh(vm, err);
    if (r == 0) {
        (void)smolvm_vm_reconcile_row(NULL, ctx, vm->row, NULL);
        r = smolvm_vm_refresh(vm, err);
    }
    if (r < 0) {
        if (r == SMOLVM_ENOENT && err && *err) {
            *err = smolvm_error_free(*err);
            smolvm_err(err, SMOLVM_ENOENT, "vm '%s' not found", id);
        }
        smolvm_vm_free(vm);
        return r;
    }
    *out = vm;
    return 0;
}

smolvm_vm *smolvm_vm_free(smolvm_vm *vm)
{
    if (!vm)
        return NULL;
    /* A start begun and never finished: releasing the lock with the VM still
     * "starting" lets the next reconcile finish the job (kill the VMM, mark it error),
     * exactly as for a dead controller. */
    if (vm->start.lock >= 0)
        (void)close(vm->start.lock);
    smolvm_ssh_free(vm->ssh);
    smolvm_agent_free(vm->agent);
    smolvm_vm_row_free(vm->row);
    smolvm_vm_config_free(vm->cfg);
    free(vm->id);
    free(vm);
    return NULL;
}

const char *smolvm_vm_id(const smolvm_vm *vm)
{
    return vm->id;
}

const char *smolvm_vm_status(smolvm_vm *vm)
{
    const char *known;

    if (vm->deleted)
        return "deleted";
    if (smolvm_vm_refresh(vm, NULL) < 0)
        return vm->row ? "error" : "deleted";
    (void)smolvm_vm_reconcile_row(NULL, vm->ctx, vm->row, NULL);
    if (smolvm_vm_refresh(vm, NULL) < 0)
        return "deleted";
    known = smolvm_vm_status_canonical(vm->row->status);
    return known ? known : "error";
}

/* Fields derived from the directory layout, for humans and the CLI (docs/c-api.md). */
static void augment(json_t *info)
{
    const char *dir = json_string_value(json_object_get(info, "dir"));
    json_t *cfg = json_object_get(info, "config"), *ports = json_object_get(info, "ports"), *p;
    size_t i;

    if (dir) {
        char *log = smolvm_strdupf("%s/%s", dir, SMOLVM_VMM_CONSOLE_LOG);
        char *key = smolvm_strdupf("%s/%s.pub", dir, SMOLVM_VM_HOST_KEY);

        if (log)
            json_object_set_new(info, "console_log", json_string(log));
        if (key)
            json_object_set_new(info, "host_key", json_string(key));
        free(log);
        free(key);
    }
    if (json_is_null(json_object_get(info, "ip")) || !json_object_get(info, "ip")) {
        json_t *gip = json_object_get(cfg, "guest_ip");

        if (gip)
            json_object_set(info, "ip", gip);
    }
    json_array_foreach (ports, i, p) {
        const char *kind = json_string_value(json_object_get(p, "kind"));

        if (kind && strcmp(kind, "ssh") == 0)
            json_object_set(info, "ssh_port", json_object_get(p, "host_port"));
    }
}

static int augment_text(char **out, const char *raw, smolvm_error **err)
{
    json_t *j = json_loads(raw, 0, NULL), *v;
    size_t i;

    if (!j)
        return smolvm_err(err, SMOLVM_EDB, "bad vm record");
    if (json_is_array(j))
        json_array_foreach (j, i, v)
            augment(v);
    else
        augment(j);
    *out = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return *out ? 0 : smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
}

int smolvm_vm_info_json(char **out, smolvm_vm *vm, smolvm_error **err)
{
    _cleanup_free_ char *raw = NULL;
    int r;

    if (vm->deleted)
        return smolvm_err(err, SMOLVM_ENOENT, "vm '%s' was deleted", vm->id);
    (void)smolvm_vm_status(vm);
    if ((r = smolvm_store_get_json(&raw, vm->ctx->store, vm->id, err)) < 0)
        return r;
    return augment_text(out, raw, err);
}

int smolvm_vm_list_json(char **out, smolvm_ctx *ctx, smolvm_error **err)
{
    _cleanup_free_ char *raw = NULL;
    int r;

    if ((r = smolvm_reconcile(NULL, ctx, err)) < 0)
        return r;
    if ((r = smolvm_store_list_json(&raw, ctx->store, err)) < 0)
        return r;
    return augment_text(out, raw, err);
}
