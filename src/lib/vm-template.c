/* SPDX-License-Identifier: MIT */
/*
 * A running VM paused, resumed, frozen into a template, forked, or suspended to disk
 * (docs/templates.md). The supervisor pauses the VM and writes its device state and
 * memory; this file owns the rest: the template's disk and record, its place under the
 * template directory, the VM's record and network.
 */
#include "util.h"

#include <errno.h>
#include <jansson.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "error.h"
#include "host.h"
#include "image.h"
#include "proc.h"
#include "template.h"
#include "vm-agent.h"
#include "vm-internal.h"
#include "vm-net.h"
#include "vm-reconcile.h"
#include "vm-supervisor.h"
#include "vmm/vmm.h"

#define SV_OP_MS 10000
#define SNAPSHOT_MS 180000 /* guest memory up to 16 GiB goes to disk */
#define QUIT_MS 5000
#define KILL_MS 2000
#define FORK_MAX 64
#define FORK_START_MS 120000

static int op(smolvm_vm *vm, json_t **reply, json_t *req, int64_t timeout_ms, smolvm_error **err)
{
    if (!req)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    return smolvm_sv_call(reply, vm->row->dir, req, smolvm_now_ms() + timeout_ms, err);
}

/* A VM that can be paused or saved: running (or paused), with an agent. */
static int check_live(smolvm_vm *vm, const char *what, bool paused_ok, smolvm_error **err)
{
    const char *st = smolvm_vm_status(vm);

    if (vm->deleted)
        return smolvm_err(err, SMOLVM_ESTATE, "%s '%s': the vm was deleted", what, vm->id);
    if (strcmp(st, "running") != 0 && !(paused_ok && strcmp(st, "paused") == 0))
        return smolvm_err(err, SMOLVM_ESTATE, "%s '%s': the vm is %s, not running", what, vm->id,
                          st);
    if (vm->cfg->transport != SMOLVM_TRANSPORT_AGENT)
        return smolvm_err(err, SMOLVM_EINVAL, "%s '%s': needs the guest agent (transport 'ssh')",
                          what, vm->id);
    return 0;
}

static int set_status(smolvm_vm *vm, const char *status, smolvm_error **err)
{
    int r = smolvm_store_vm_set_status(vm->ctx->store, vm->id, status, NULL, err);

    if (r == 0)
        (void)smolvm_store_event(vm->ctx->store, vm->id, status, NULL, NULL);
    return r < 0 ? r : smolvm_vm_refresh(vm, err);
}

/* ---------------------------------------------------------------- pause, resume */

static int pause_or_resume(smolvm_vm *vm, bool pause, smolvm_error **err)
{
    const char *what = pause ? "pause" : "resume";
    _cleanup_close_ int lock = -1;
    int r;

    if (vm->deleted)
        return smolvm_err(err, SMOLVM_ESTATE, "%s '%s': the vm was deleted", what, vm->id);
    if (strcmp(smolvm_vm_status(vm), pause ? "paused" : "running") == 0)
        return 0;
    if ((r = check_live(vm, what, true, err)) < 0)
        return r;
    if ((r = smolvm_vm_lock(&lock, vm->row->dir, vm->id, what, SMOLVM_LOCK_WAIT_MS, err)) < 0)
        return r;
    if ((r = op(vm, NULL, json_pack("{s:s}", "op", what), SV_OP_MS, err)) < 0)
        return smolvm_err_wrap(err, "%s '%s'", what, vm->id);
    return set_status(vm, pause ? "paused" : "running", err);
}

int smolvm_vm_pause(smolvm_vm *vm, smolvm_error **err)
{
    return pause_or_resume(vm, true, err);
}

int smolvm_vm_resume(smolvm_vm *vm, smolvm_error **err)
{
    return pause_or_resume(vm, false, err);
}

/* ---------------------------------------------------------------- saving */

static void iso_time(char out[32], int64_t ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;

    if (!gmtime_r(&t, &tm) || !strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm))
        (void)snprintf(out, 32, "?");
}

/* The record of what was saved: template.json, or a suspended VM's saved.json. */
static json_t *saved_json(smolvm_vm *vm, const char *name, bool ephemeral, json_t *reply,
                          smolvm_error **err)
{
    smolvm_image *img = NULL;
    const char *note = NULL;
    int64_t now = smolvm_wall_ms();
    char when[32];
    json_t *o;
    int accel;

    if (smolvm_image_find(vm->ctx, vm->cfg->image, &img, err) < 0)
        return NULL;
    if (smolvm_host_resolve_accel(vm->cfg->accel, &accel, &note, err) < 0) {
        smolvm_image_free(img);
        return NULL;
    }
    iso_time(when, now);
    o = json_pack(
        "{s:i, s:s?, s:I, s:s, s:s, s:b, s:s?, s:{s:s, s:s?, s:s?}, "
        "s:{s:s, s:s, s:i, s:i, s:s, s:O?}, s:O, s:{s:O, s:O}, s:{s:O, s:O}}",
        "format", 1, "name", name, "created_ms", (json_int_t)now, "created_at", when, "source_vm",
        vm->id, "ephemeral", ephemeral, "parent", vm->cfg->template_name, "image", "name",
        img->name, "built", img->built, "inputs_hash", img->inputs_hash, "vmm", "backend",
        smolvm_backend_to_string(vm->cfg->backend), "accel", smolvm_accel_to_string(accel), "vcpus",
        (int)vm->cfg->vcpus, "memory_mib", (int)vm->cfg->memory_mib, "network",
        smolvm_net_mode_to_string(vm->cfg->network), "version", json_object_get(reply, "vmm"),
        "memory", json_object_get(reply, "memory"), "agent", "hello",
        json_object_get(reply, "agent"), "next_stream", json_object_get(reply, "next_stream"),
        "bytes", "state", json_object_get(reply, "state_bytes"), "mem",
        json_object_get(reply, "mem_bytes"));
    smolvm_image_free(img);
    if (!o)
        smolvm_err(err, SMOLVM_EVMM, "the supervisor's snapshot reply is incomplete");
    return o;
}

static int write_json(const char *dir, const char *name, json_t *o, smolvm_error **err)
{
    _cleanup_free_ char *path = smolvm_strdupf("%s/%s", dir, name);
    _cleanup_free_ char *text = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS);

    if (!path || !text)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    return smolvm_write_file_atomic(path, text, strlen(text), 0600, err);
}

/* Freeze the running VM into template `name` (ephemeral: a fork's). The VM goes on as
 * it was (running or paused). Locked by the caller. */
static int make_template(smolvm_vm *vm, const char *name, bool ephemeral, smolvm_error **err)
{
    _cleanup_(smolvm_template_freep) smolvm_template *existing = NULL;
    _cleanup_free_ char *staging = NULL, *disk = NULL;
    bool was_paused = strcmp(vm->row->status ? vm->row->status : "", "paused") == 0;
    /* What a clone's disk is made from: QEMU, the disk itself (the clones' qcow2
     * backing file); firecracker, the overlay's upper disk (the lower is the image's
     * rootfs, which the template records). */
    bool fc = vm->cfg->backend == SMOLVM_BACKEND_FIRECRACKER;
    bool paused_by_us = false;
    json_t *reply = NULL, *meta = NULL;
    unsigned char rnd[4];
    int64_t t0 = smolvm_now_ms();
    int r;

    if (!smolvm_template_name_valid(name))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "template: invalid name '%.80s' (expected [a-z0-9][a-z0-9_-]{0,62})",
                          name ? name : "");
    if (smolvm_template_open(&existing, vm->ctx, name, NULL) == 0)
        return smolvm_err(err, SMOLVM_EEXIST, "template '%s' already exists", name);
    if (vm->cfg->disk == SMOLVM_DISK_SHARED ||
        (fc ? !vm->cfg->overlay_disk : vm->cfg->disk_format != SMOLVM_DISK_FORMAT_QCOW2))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "a template needs the vm's own disk (disk 'isolated'), not the "
                          "shared image");
    if ((r = smolvm_random(rnd, sizeof(rnd), err)) < 0 ||
        (r = smolvm_mkdir_p(vm->ctx->template_dir, 0700, err)) < 0)
        return r;
    staging = smolvm_strdupf("%s/.%s.tmp.%02x%02x%02x%02x", vm->ctx->template_dir, name, rnd[0],
                             rnd[1], rnd[2], rnd[3]);
    disk = staging
               ? smolvm_strdupf("%s/%s", staging, fc ? SMOLVM_TEMPLATE_UPPER : SMOLVM_TEMPLATE_DISK)
               : NULL;
    if (!disk)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (mkdir(staging, 0700) < 0)
        return smolvm_err_errno(err, errno, "create '%s'", staging);

    r = op(vm, &reply, json_pack("{s:s, s:s}", "op", "snapshot", "dir", staging), SNAPSHOT_MS, err);
    paused_by_us = r == 0 && !was_paused;
    /* The guest is paused and its disk flushed: the disk as it is now belongs to the
     * memory just saved. */
    if (r == 0)
        r = smolvm_copy_file(fc ? vm->cfg->overlay_disk : vm->cfg->disk_path, disk, 0600, err);
    if (paused_by_us) {
        int rr = op(vm, NULL, json_pack("{s:s}", "op", "resume"), SV_OP_MS, r < 0 ? NULL : err);

        if (r == 0)
            r = rr;
    }
    if (r == 0 && !(meta = saved_json(vm, name, ephemeral, reply, err)))
        r = SMOLVM_EVMM;
    if (r == 0)
        r = write_json(staging, SMOLVM_TEMPLATE_JSON, meta, err);
    if (r == 0)
        r = smolvm_template_commit(vm->ctx, staging, name, err);
    json_decref(reply);
    json_decref(meta);
    if (r < 0) {
        (void)smolvm_rm_rf(staging, NULL);
        return smolvm_err_wrap(err, "snapshot '%s'", vm->id);
    }
    (void)smolvm_store_event(vm->ctx->store, vm->id, "snapshot", name, NULL);
    smolvm_log(vm->ctx, SMOLVM_LOG_DEBUG, "vm '%s': template '%s' made in %lld ms", vm->id, name,
               (long long)(smolvm_now_ms() - t0));
    return 0;
}

int smolvm_vm_snapshot(smolvm_vm *vm, const char *name, smolvm_error **err)
{
    _cleanup_close_ int lock = -1;
    int r;

    if ((r = check_live(vm, "snapshot", true, err)) < 0)
        return r;
    if ((r = smolvm_vm_lock(&lock, vm->row->dir, vm->id, "snapshot", SMOLVM_LOCK_WAIT_MS, err)) < 0)
        return r;
    if ((r = smolvm_vm_refresh(vm, err)) < 0)
        return r;
    return make_template(vm, name, false, err);
}

/* ---------------------------------------------------------------- fork */

static void free_vms(smolvm_vm **v, size_t n, bool delete)
{
    for (size_t i = 0; v && i < n; i++) {
        if (v[i] && delete)
            (void)smolvm_vm_delete(v[i], NULL);
        smolvm_vm_free(v[i]);
    }
    free(v);
}

int smolvm_vm_fork(smolvm_vm ***out, smolvm_vm *vm, size_t count, int timeout_ms,
                   smolvm_error **err)
{
    smolvm_vm_options o;
    smolvm_vm **clones = NULL;
    char name[80];
    unsigned char rnd[3];
    size_t i, made = 0;
    int r;

    if (count < 1 || count > FORK_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "fork: count: expected 1..%d, got %zu", FORK_MAX,
                          count);
    if ((r = check_live(vm, "fork", true, err)) < 0)
        return r;
    if ((r = smolvm_random(rnd, sizeof(rnd), err)) < 0)
        return r;
    (void)snprintf(name, sizeof(name), "fork-%.48s-%02x%02x%02x", vm->id, rnd[0], rnd[1], rnd[2]);
    {
        _cleanup_close_ int lock = -1;

        if ((r = smolvm_vm_lock(&lock, vm->row->dir, vm->id, "fork", SMOLVM_LOCK_WAIT_MS, err)) <
                0 ||
            (r = smolvm_vm_refresh(vm, err)) < 0 || (r = make_template(vm, name, true, err)) < 0)
            return r;
    }
    if (!(clones = calloc(count, sizeof(*clones)))) {
        smolvm_template_release(vm->ctx, name);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    (void)smolvm_vm_options_init(&o, SMOLVM_VM_OPTIONS_VERSION);
    o.template_name = name;
    o.network = vm->cfg->network;
    o.env = (const char *const *)vm->cfg->env;
    o.labels = (const char *const *)vm->cfg->labels;
    o.ttl_ms = vm->cfg->ttl_ms;
    o.ephemeral = vm->row->owner_pid > 0;
    /* Clones boot together: begin all, then finish all. */
    for (i = 0; i < count && r == 0; i++) {
        if ((r = smolvm_vm_create(&clones[i], vm->ctx, &o, err)) == 0) {
            made++;
            r = smolvm_vm_start_begin(clones[i], timeout_ms > 0 ? timeout_ms : FORK_START_MS, err);
        }
    }
    for (i = 0; i < made && r == 0; i++)
        r = smolvm_vm_start_finish(clones[i], err);
    if (r < 0) {
        free_vms(clones, made, true); /* the last delete releases the template */
        smolvm_template_release(vm->ctx, name);
        return smolvm_err_wrap(err, "fork '%s'", vm->id);
    }
    *out = clones;
    return 0;
}

/* ---------------------------------------------------------------- suspend */

int smolvm_vm_suspend(smolvm_vm *vm, smolvm_error **err)
{
    const smolvm_vmm_ops *ops = smolvm_vmm_ops_for(vm->cfg->backend);
    _cleanup_close_ int lock = -1;
    _cleanup_free_ char *staging = NULL, *final = NULL;
    json_t *reply = NULL, *meta = NULL;
    uint64_t pstart;
    pid_t pid;
    int r;

    if ((r = check_live(vm, "suspend", true, err)) < 0)
        return r;
    if ((r = smolvm_vm_lock(&lock, vm->row->dir, vm->id, "suspend", SMOLVM_LOCK_WAIT_MS, err)) < 0)
        return r;
    staging = smolvm_strdupf("%s/%s.tmp", vm->row->dir, SMOLVM_SUSPENDED_DIR);
    final = smolvm_strdupf("%s/%s", vm->row->dir, SMOLVM_SUSPENDED_DIR);
    if (!staging || !final)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    (void)smolvm_rm_rf(staging, NULL);
    (void)smolvm_rm_rf(final, NULL);
    if (mkdir(staging, 0700) < 0)
        return smolvm_err_errno(err, errno, "create '%s'", staging);
    if ((r = smolvm_store_vm_set_status(vm->ctx->store, vm->id, "suspending", NULL, err)) < 0)
        return r;
    smolvm_vm_agent_drop(vm);
    r = op(vm, &reply, json_pack("{s:s, s:s}", "op", "snapshot", "dir", staging), SNAPSHOT_MS, err);
    if (r == 0 && !(meta = saved_json(vm, NULL, false, reply, err)))
        r = SMOLVM_EVMM;
    if (r == 0)
        r = write_json(staging, SMOLVM_SAVED_JSON, meta, err);
    json_decref(reply);
    json_decref(meta);
    if (r < 0) {
        /* Nothing was lost: the VM goes on (its snapshot left it paused). */
        (void)smolvm_rm_rf(staging, NULL);
        (void)op(vm, NULL, json_pack("{s:s}", "op", "resume"), SV_OP_MS, NULL);
        (void)smolvm_store_vm_set_status(vm->ctx->store, vm->id, "running", NULL, NULL);
        (void)smolvm_vm_refresh(vm, NULL);
        return smolvm_err_wrap(err, "suspend '%s'", vm->id);
    }
    /* Saved: the VMM goes, and with it the supervisor. */
    if (smolvm_vm_vmm_alive(vm->row, &pid, &pstart) &&
        (ops->quit(vm->row->dir, smolvm_now_ms() + QUIT_MS, NULL) != 0 ||
         smolvm_pid_wait_exit(pid, pstart, smolvm_now_ms() + QUIT_MS, NULL) != 0))
        (void)smolvm_pid_kill(pid, pstart, smolvm_now_ms() + KILL_MS, NULL);
    smolvm_vm_reap_supervisor(vm->row, smolvm_now_ms() + KILL_MS);
    if (vm->cfg->network == SMOLVM_NET_NAT)
        smolvm_vm_net_down(vm->ctx, vm->id); /* the lease stays: the same address at start */
    if (rename(staging, final) < 0) {
        r = smolvm_err_errno(err, errno, "suspend '%s': rename '%s'", vm->id, staging);
        (void)smolvm_store_vm_set_status(vm->ctx->store, vm->id, "error",
                                         "the suspended state could not be kept", NULL);
        return r;
    }
    if ((r = smolvm_store_vm_set_pid(vm->ctx->store, vm->id, 0, 0, err)) < 0 ||
        (r = smolvm_store_vm_set_supervisor(vm->ctx->store, vm->id, 0, 0, err)) < 0)
        return r;
    return set_status(vm, "suspended", err);
}
