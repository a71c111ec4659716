/* SPDX-License-Identifier: MIT */
/* A VM's egress at run time: changing its policy (through its supervisor, then the
 * stored configuration) and reading its events, denied attempts among them. */
#include "util.h"

#include <jansson.h>
#include <string.h>

#include "egress.h"
#include "error.h"
#include "store.h"
#include "vm-config.h"
#include "vm-internal.h"
#include "vm-reconcile.h"
#include "vm-supervisor.h"

#define SUPERVISOR_CALL_MS 5000

/* Store cfg with its egress replaced by p (cfg itself is left as it was). */
static int store_policy(smolvm_vm *vm, const smolvm_egress_policy *p, smolvm_error **err)
{
    _cleanup_free_ char *text = NULL;
    smolvm_egress_policy old = vm->cfg->egress;
    int r;

    vm->cfg->egress = *p;
    r = smolvm_vm_config_to_json(&text, vm->cfg, err);
    vm->cfg->egress = old;
    if (r < 0)
        return r;
    return smolvm_store_vm_set_config(vm->ctx->store, vm->id, text, err);
}

int smolvm_vm_set_egress(smolvm_vm *vm, const smolvm_egress *policy, smolvm_error **err)
{
    _cleanup_close_ int lock = -1;
    _cleanup_free_ char *detail = NULL;
    smolvm_egress_policy p = {0};
    json_t *j;
    int r;

    if (!policy)
        return smolvm_err(err, SMOLVM_EINVAL, "set_egress: policy is NULL");
    if (vm->deleted)
        return smolvm_err(err, SMOLVM_ESTATE, "set_egress '%s': the vm was deleted", vm->id);
    if (vm->start.pending)
        return smolvm_err(err, SMOLVM_ESTATE, "set_egress '%s': a start is in progress", vm->id);
    if ((r = smolvm_egress_policy_copy(&p, policy, "egress", err)) < 0)
        goto fail;
    /* Under the VM's lock: no start reads the old policy while the new one is stored,
     * no stop takes the network down under the change. */
    if ((r = smolvm_vm_refresh(vm, err)) < 0 ||
        (r = smolvm_vm_lock(&lock, vm->row->dir, vm->id, "set_egress", SMOLVM_LOCK_WAIT_MS, err)) <
            0 ||
        (r = smolvm_vm_refresh(vm, err)) < 0 ||
        (r = smolvm_egress_policy_resolve(&p, vm->cfg->network, err)) < 0)
        goto fail;
    if (vm->cfg->network == SMOLVM_NET_NAT && vm->row->status &&
        strcmp(vm->row->status, "running") == 0 &&
        (r = smolvm_sv_egress(vm->row->dir, &p, smolvm_now_ms() + SUPERVISOR_CALL_MS, err)) < 0)
        goto fail;
    if ((r = store_policy(vm, &p, err)) < 0 || (r = smolvm_vm_refresh(vm, err)) < 0)
        goto fail;
    if ((j = smolvm_egress_policy_to_json(&p))) {
        detail = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
        json_decref(j);
    }
    (void)smolvm_store_event(vm->ctx->store, vm->id, "egress", detail, NULL);
    smolvm_egress_policy_clear(&p);
    return 0;
fail:
    smolvm_egress_policy_clear(&p);
    (void)smolvm_err_wrap(err, "set_egress '%s'", vm->id);
    return r;
}

/* One event as the API shows it: denied attempts with their fields, others with
 * their detail. */
static json_t *event_json(const smolvm_event_row *row)
{
    json_t *o = json_pack("{s:I, s:s}", "time", (json_int_t)row->at, "kind", row->kind);
    json_t *d;

    if (!o || !row->detail)
        return o;
    if (strcmp(row->kind, "egress-denied") == 0 && (d = json_loads(row->detail, 0, NULL))) {
        const char *key;
        json_t *v;

        /* written by the supervisor: only the known fields, of the known types */
        json_object_foreach (d, key, v)
            if ((strcmp(key, "dst") == 0 || strcmp(key, "protocol") == 0 ||
                 strcmp(key, "name") == 0)
                    ? json_is_string(v)
                    : (strcmp(key, "port") == 0 && json_is_integer(v)))
                (void)json_object_set(o, key, v);
        json_decref(d);
        return o;
    }
    (void)json_object_set_new(o, "detail", json_string(row->detail));
    return o;
}

int smolvm_vm_events_json(char **out, smolvm_vm *vm, const char *kind, smolvm_error **err)
{
    smolvm_event_row *rows = NULL;
    size_t n = 0;
    json_t *list;
    char *text;
    int r;

    if (vm->deleted)
        return smolvm_err(err, SMOLVM_ENOENT, "events of '%s': the vm was deleted", vm->id);
    if ((r = smolvm_store_events_list(&rows, &n, vm->ctx->store, vm->id, kind, SMOLVM_EVENTS_MAX,
                                      err)) < 0)
        return smolvm_err_wrap(err, "events of '%s'", vm->id);
    list = json_array();
    for (size_t i = 0; list && i < n; i++)
        if (json_array_append_new(list, event_json(&rows[i])) < 0) {
            json_decref(list);
            list = NULL;
        }
    smolvm_event_rows_free(rows, n);
    text = list ? json_dumps(list, JSON_COMPACT) : NULL;
    json_decref(list);
    if (!text)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    *out = text;
    return 0;
}
