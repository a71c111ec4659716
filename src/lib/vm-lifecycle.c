/* SPDX-License-Identifier: MIT */
/* Start, stop and delete: the VM's life against the store. */
#include "util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <jansson.h>
#include <string.h>

#include "error.h"
#include "guest-config.h"
#include "image.h"
#include "template.h"
#include "host.h"
#include "proc.h"
#include "agent-client.h"
#include "vm-internal.h"
#include "vm-net.h"
#include "vm-ports.h"
#include "vm-reconcile.h"
#include "vm-agent.h"
#include "vm-ssh.h"
#include "vm-supervisor.h"
#include "vmm/vmm.h"

#define DELETE_STOP_TIMEOUT_MS 5000
#define KILL_TIMEOUT_MS 2000
#define START_TIMEOUT_DEFAULT_MS 60000
#define STOP_TIMEOUT_DEFAULT_MS 5000
#define SUPERVISOR_EXIT_MS 2000 /* a supervisor exits at once after its vmm */
#define SUPERVISOR_CALL_MS 5000

static int netmask_prefix(const char *mask)
{
    struct in_addr a;

    if (inet_pton(AF_INET, mask, &a) != 1)
        return 24;
    return __builtin_popcount(a.s_addr);
}

/* What this start continues from instead of booting: a suspended VM's saved state, or
 * (its first start) the template a clone was made of. *out NULL: a boot. */
static int restore_source(smolvm_vm *vm, smolvm_template **out, bool *suspended, smolvm_error **err)
{
    const char *st = vm->row->status ? vm->row->status : "";
    int r;

    *out = NULL;
    *suspended = strcmp(st, "suspended") == 0;
    if (*suspended) {
        _cleanup_free_ char *dir = smolvm_strdupf("%s/%s", vm->row->dir, SMOLVM_SUSPENDED_DIR);

        if (!dir)
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        r = smolvm_template_load(out, dir, SMOLVM_SAVED_JSON, err);
        return r < 0 ? smolvm_err_wrap(err, "the suspended state") : 0;
    }
    if (strcmp(st, "created") == 0 && vm->cfg->template_name) {
        smolvm_image *img = NULL;

        if ((r = smolvm_template_open(out, vm->ctx, vm->cfg->template_name, err)) < 0)
            return r;
        if ((r = smolvm_image_find(vm->ctx, vm->cfg->image, &img, err)) == 0)
            r = smolvm_template_check_image(*out, img, err);
        smolvm_image_free(img);
        if (r < 0)
            *out = smolvm_template_free(*out);
        return r;
    }
    return 0;
}

/* The identity a clone takes before it counts as started (the supervisor adds entropy
 * and the clock); a resumed VM keeps its own. */
static json_t *clone_identity(smolvm_vm *vm, const smolvm_vm_net *nat, bool suspended)
{
    const smolvm_vm_config *c = vm->cfg;
    json_t *id, *net = NULL;

    if (suspended)
        return json_object();
    if (c->network == SMOLVM_NET_NAT)
        net = json_pack("{s:s, s:i, s:s, s:s, s:s?}", "ip", nat->ip, "prefix",
                        netmask_prefix(nat->netmask), "gateway", nat->gateway, "mac", nat->mac,
                        "dns", nat->have_dns ? nat->dns : NULL);
    /* User networking gives every guest the same address: a clone (of a template made
     * on it too) has it already. */
    id = json_pack("{s:s}", "hostname", vm->id);
    if (id && net)
        (void)json_object_set_new(id, "net", net);
    else
        json_decref(net);
    return id;
}

/* What the sandbox's boundary is not, said at the first start under TCG of a state
 * directory (whoever creates the marker says it), not at every start after. Doctor
 * says it every time. */
static void warn_tcg(smolvm_ctx *ctx)
{
    _cleanup_free_ char *marker = NULL;
    _cleanup_close_ int fd = -1;

    /* Nobody listening (no log callback) does not use the state directory's turn. */
    if (ctx->tcg_warned || !ctx->log || ctx->log_level < SMOLVM_LOG_WARN)
        return;
    ctx->tcg_warned = true;
    marker = smolvm_strdupf("%s/" SMOLVM_TCG_MARKER, ctx->state_dir);
    fd = marker ? open(marker, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600) : -1;
    if (fd >= 0)
        smolvm_log(ctx, SMOLVM_LOG_WARN, "%s", SMOLVM_TCG_WARNING);
}

/* Everything up to a running VMM: network, command line, the supervisor (which spawns
 * the VMM). */
static int do_start_begin(smolvm_vm *vm, int64_t deadline, smolvm_error **err)
{
    _cleanup_(smolvm_template_freep) smolvm_template *saved = NULL;
    _cleanup_free_ char *saved_state = NULL, *saved_mem = NULL;
    json_t *identity = NULL;
    bool suspended = false;
    const smolvm_vm_config *c = vm->cfg;
    _cleanup_free_ char *cmdline = NULL, *cfgdisk = NULL;
    _cleanup_free_ smolvm_vmm_hostfwd *fwds = NULL;
    _cleanup_free_ smolvm_port_row *fwd_rows = NULL;
    const char *accel_note = NULL;
    smolvm_sv_spec spec = {0};
    smolvm_vmm_config *cfg = &spec.vmm;
    smolvm_sv_pids pids = {0};
    smolvm_vm_net natnet = {0};
    int accel, r;
    int64_t t0 = smolvm_now_ms();
    unsigned long tsc_khz;
    size_t nfwds = 0;

    r = smolvm_host_resolve_accel(c->accel, &accel, &accel_note, err);
    if (r < 0)
        return r;
    if ((r = restore_source(vm, &saved, &suspended, err)) < 0)
        return r;
    if (saved && strcmp(saved->accel, smolvm_accel_to_string(accel)) != 0)
        return smolvm_err(
            err, SMOLVM_ESTATE, "%s was saved under accel '%s'; this host now uses '%s'",
            suspended ? "the vm" : "its template", saved->accel, smolvm_accel_to_string(accel));
    if (smolvm_vmm_ops_for(c->backend)->available &&
        (r = smolvm_vmm_ops_for(c->backend)->available(accel, err)) < 0)
        return r;
    smolvm_log(vm->ctx, SMOLVM_LOG_DEBUG, "vm '%s': accel %s (%s)", vm->id,
               smolvm_accel_to_string(accel), accel_note);
    if (accel == SMOLVM_ACCEL_TCG)
        warn_tcg(vm->ctx);
    /* "starting" before anything is made: from here on a concurrent reconcile leaves
     * this VM's network alone, and a dead controller is recognised. */
    if ((r = smolvm_store_vm_set_status(vm->ctx->store, vm->id, "starting", NULL, err)) < 0)
        return r;
    tsc_khz = accel == SMOLVM_ACCEL_TCG ? smolvm_host_tsc_khz() : 0;
    if (c->network == SMOLVM_NET_NAT) {
        if ((r = smolvm_vm_net_up(&natnet, vm->ctx, vm->id, c, err)) < 0)
            return r;
        r = smolvm_kernel_cmdline(&cmdline, vm->id, c->network, natnet.ip, natnet.gateway,
                                  natnet.netmask, natnet.have_dns ? natnet.dns : NULL, tsc_khz,
                                  err);
        cfg->tap_name = natnet.tap;
        cfg->mac = natnet.mac;
        spec.net = &natnet.sv; /* the supervisor serves DNS, loopback forwards, repairs */
    } else {
        r = smolvm_kernel_cmdline(&cmdline, vm->id, c->network, SMOLVM_USER_GUEST_IP,
                                  SMOLVM_USER_GATEWAY, "255.255.255.0", SMOLVM_USER_DNS, tsc_khz,
                                  err);
    }
    if (r < 0)
        return r;
    if (c->network == SMOLVM_NET_USER &&
        ((r = smolvm_vm_ports_revalidate(vm->ctx, vm->id, err)) < 0 ||
         (r = smolvm_vm_hostfwds(&fwds, &nfwds, &fwd_rows, vm->ctx->store, vm->id, err)) < 0))
        return r;
    cfgdisk = smolvm_strdupf("%s/%s", vm->row->dir, SMOLVM_VM_CONFIG_DISK);
    if (!cfgdisk)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    cfg->vm_id = vm->id;
    cfg->dir = vm->row->dir;
    cfg->kernel = c->kernel;
    cfg->disk = c->disk_path;
    cfg->disk_format = smolvm_disk_format_to_string(c->disk_format);
    cfg->overlay_disk = c->overlay_disk;
    cfg->disk_read_only = c->disk == SMOLVM_DISK_SHARED; /* the base image itself */
    cfg->config_disk = cfgdisk;
    cfg->cmdline = cmdline;
    cfg->vcpus = c->vcpus;
    cfg->memory_mib = c->memory_mib;
    cfg->accel = accel;
    cfg->network = c->network;
    cfg->hostfwds = fwds;
    cfg->n_hostfwds = nfwds;
    cfg->console_fd = cfg->ctl_fd = cfg->agent_fd = -1;

    spec.vm_id = vm->id;
    spec.dir = vm->row->dir;
    spec.state_dir = vm->ctx->state_dir;
    spec.backend = c->backend;
    spec.transport = c->transport == SMOLVM_TRANSPORT_SSH ? SMOLVM_SV_SSH : SMOLVM_SV_AGENT;
    spec.owner_pid = (pid_t)vm->row->owner_pid;
    spec.owner_start = vm->row->owner_start;
    spec.expires_at = vm->row->expires_at;
    spec.console_max = vm->ctx->console_max;
    /* QEMU's guest RAM is a memfd the supervisor holds: any running VM can be saved
     * (docs/templates.md). */
    spec.shared_memory = c->backend == SMOLVM_BACKEND_QEMU;
    if (saved) {
        saved_state = smolvm_strdupf("%s/%s", saved->dir, SMOLVM_SAVED_STATE);
        saved_mem = strcmp(saved->memory, "stream") != 0
                        ? smolvm_strdupf("%s/%s", saved->dir, SMOLVM_SAVED_MEM)
                        : strdup("");
        identity = clone_identity(vm, &natnet, suspended);
        if (!saved_state || !saved_mem || !identity) {
            json_decref(identity);
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        }
        spec.restore = (smolvm_sv_restore){
            .set = true,
            .state = saved_state,
            .mem = *saved_mem ? saved_mem : NULL,
            .mem_private = !suspended, /* a clone shares its template's pages */
            .agent = saved->agent,
            .next_stream = saved->next_stream,
            .identity = identity,
        };
    }
    vm->start.from_suspended = suspended;
    /* A stale exit record from the last run must not describe this one. */
    {
        _cleanup_free_ char *old = smolvm_strdupf("%s/%s", vm->row->dir, SMOLVM_SV_EXIT_FILE);

        if (old)
            (void)unlink(old);
    }
    r = smolvm_sv_launch(&pids, vm->ctx, &spec, deadline, err);
    json_decref(identity);
    if (pids.sv_pid > 0)
        (void)smolvm_store_vm_set_supervisor(vm->ctx->store, vm->id, pids.sv_pid, pids.sv_start,
                                             NULL);
    if (r < 0)
        return r;
    if ((r = smolvm_store_vm_set_pid(vm->ctx->store, vm->id, pids.vmm_pid, pids.vmm_start, err)) <
        0)
        return r;
    smolvm_log(vm->ctx, SMOLVM_LOG_DEBUG, "vm '%s': supervisor %ld, vmm %ld up after %lld ms",
               vm->id, (long)pids.sv_pid, (long)pids.vmm_pid, (long long)(smolvm_now_ms() - t0));
    return 0;
}

/* The supervisor's idea of where the boot got to, for a timeout's message. */
static void last_milestone(smolvm_vm *vm, char *out, size_t size)
{
    _cleanup_free_ char *path = smolvm_strdupf("%s/%s", vm->row->dir, SMOLVM_SV_SOCK);
    smolvm_agent *a = NULL;
    json_t *reply = NULL;

    (void)snprintf(out, size, "none");
    if (path && smolvm_agent_connect(&a, path, false, smolvm_now_ms() + 1000, NULL) == 0 &&
        smolvm_agent_call(&reply, a, json_pack("{s:s}", "op", "status"), smolvm_now_ms() + 1000,
                          NULL) == 0) {
        const char *m = json_string_value(json_object_get(reply, "milestone"));

        if (m && *m)
            (void)snprintf(out, size, "%s", m);
    }
    json_decref(reply);
    smolvm_agent_free(a);
}

/* The guest is ready (its supervisor said hello): the record says so. */
static int mark_running(smolvm_vm *vm, smolvm_error **err)
{
    int r;

    smolvm_log(vm->ctx, SMOLVM_LOG_DEBUG, "vm '%s': guest ready after %lld ms", vm->id,
               (long long)(smolvm_now_ms() - vm->start.t0));
    if (vm->start.from_suspended) {
        /* Running from it now: the saved state is spent. */
        _cleanup_free_ char *dir = smolvm_strdupf("%s/%s", vm->row->dir, SMOLVM_SUSPENDED_DIR);

        if (dir)
            (void)smolvm_rm_rf(dir, NULL);
    }
    if ((r = smolvm_store_vm_set_status(vm->ctx->store, vm->id, "running", NULL, err)) < 0)
        return r;
    return smolvm_vm_refresh(vm, err);
}

/* From a running VMM to a VM that runs commands: the supervisor's hello (sent when the
 * guest is ready), the record, the transport's session. */
static int do_start_finish(smolvm_vm *vm, int64_t deadline, smolvm_error **err)
{
    _cleanup_free_ char *path = smolvm_strdupf("%s/%s", vm->row->dir, SMOLVM_SV_SOCK);
    int r;

    if (!path)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    smolvm_vm_agent_drop(vm);
    r = smolvm_agent_connect(&vm->agent, path, true, deadline, err);
    if (r == SMOLVM_ETIMEDOUT) {
        char m[96];

        last_milestone(vm, m, sizeof(m));
        if (err)
            *err = smolvm_error_free(*err);
        return smolvm_err(err, SMOLVM_ETIMEDOUT,
                          "the guest was not ready in time (last milestone: %s)", m);
    }
    if (r < 0)
        return r;
    if ((r = mark_running(vm, err)) < 0)
        return r;
    if (vm->cfg->transport == SMOLVM_TRANSPORT_AGENT)
        return 0; /* the connection that saw the hello serves the first command */
    smolvm_vm_agent_drop(vm);
    if (vm->cfg->network == SMOLVM_NET_NONE)
        return 0;
    return smolvm_vm_ssh_connect(vm, deadline, err);
}

/* After a failed start: no VMM left behind, nor its network; the record stays,
 * marked with what went wrong. Returns r. */
static int start_failed(smolvm_vm *vm, int r, smolvm_error **err)
{
    _cleanup_free_ char *tail = NULL, *reason = NULL;
    (void)smolvm_vm_refresh(vm, NULL);
    smolvm_vm_kill_vmm(vm->row);
    smolvm_vm_cgroup_remove(vm->ctx, vm->id);
    smolvm_vm_ssh_drop(vm);
    smolvm_vm_agent_drop(vm);
    if (vm->cfg->network == SMOLVM_NET_NAT)
        smolvm_vm_net_down(vm->ctx, vm->id);
    tail = smolvm_vm_console_tail(vm->row->dir);
    if (tail && *tail && r != SMOLVM_EHOST && r != SMOLVM_EINVAL)
        smolvm_err_hint(err, "console: %s", tail);
    smolvm_err_wrap(err, "start '%s'", vm->id);
    reason = strdup(err && *err ? smolvm_error_message(*err) : "start failed");
    (void)smolvm_store_vm_set_pid(vm->ctx->store, vm->id, 0, 0, NULL);
    (void)smolvm_store_vm_set_supervisor(vm->ctx->store, vm->id, 0, 0, NULL);
    (void)smolvm_store_vm_set_status(vm->ctx->store, vm->id, "error", reason, NULL);
    (void)smolvm_vm_refresh(vm, NULL);
    return r;
}

/* The end of a start that got past begin, however it ended (r < 0: failed, *err says
 * why): the record, the event, the lock. */
static int start_done(smolvm_vm *vm, int r, smolvm_error **err)
{
    if (r < 0)
        r = start_failed(vm, r, err);
    else
        (void)smolvm_store_event(vm->ctx->store, vm->id, "start", NULL, NULL);
    /* The lock goes last: until here no other process may act on the VM. */
    (void)close(vm->start.lock);
    vm->start.lock = -1;
    vm->start.pending = false;
    return r;
}

int smolvm_vm_start_begin(smolvm_vm *vm, int timeout_ms, smolvm_error **err)
{
    _cleanup_close_ int lock = -1;
    int r;

    if (vm->deleted)
        return smolvm_err(err, SMOLVM_ESTATE, "start '%s': the vm was deleted", vm->id);
    if (vm->start.pending)
        return smolvm_err(err, SMOLVM_ESTATE, "start '%s': already starting", vm->id);
    vm->start.t0 = smolvm_now_ms();
    vm->start.deadline = vm->start.t0 + (timeout_ms > 0 ? timeout_ms : START_TIMEOUT_DEFAULT_MS);
    vm->start.lock = -1;
    vm->start.was_running = false;
    if (strcmp(smolvm_vm_status(vm), "running") == 0) {
        vm->start.pending = vm->start.was_running = true; /* finish only (re)connects */
        return 0;
    }
    if (strcmp(smolvm_vm_status(vm), "paused") == 0)
        return smolvm_err(err, SMOLVM_ESTATE, "start '%s': the vm is paused (resume it)", vm->id);
    if ((r = smolvm_vm_lock(&lock, vm->row->dir, vm->id, "start", SMOLVM_LOCK_WAIT_MS, err)) < 0)
        return r;
    if ((r = smolvm_vm_refresh(vm, err)) < 0)
        return r;
    smolvm_vm_ssh_drop(vm);
    smolvm_vm_agent_drop(vm);
    r = do_start_begin(vm, vm->start.deadline, err);
    if (r < 0)
        return start_failed(vm, r, err);
    vm->start.lock = TAKE_FD(lock);
    vm->start.pending = true;
    return 0;
}

int smolvm_vm_start_finish(smolvm_vm *vm, smolvm_error **err)
{
    int r;

    if (!vm->start.pending)
        return smolvm_err(err, SMOLVM_ESTATE, "start '%s': no start in progress", vm->id);
    if (vm->start.was_running) {
        vm->start.pending = false;
        r = vm->cfg->transport == SMOLVM_TRANSPORT_AGENT
                ? smolvm_vm_agent_ensure(vm, vm->start.deadline, err)
            : vm->cfg->network == SMOLVM_NET_NONE
                ? 0
                : smolvm_vm_ssh_connect(vm, vm->start.deadline, err);
        return r < 0 ? smolvm_err_wrap(err, "start '%s'", vm->id) : 0;
    }
    return start_done(vm, do_start_finish(vm, vm->start.deadline, err), err);
}

int smolvm_vm_start_confirm(smolvm_vm *vm, smolvm_error **err)
{
    if (!vm->start.pending)
        return smolvm_err(err, SMOLVM_ESTATE, "start '%s': no start in progress", vm->id);
    if (vm->start.was_running) {
        vm->start.pending = false;
        return 0;
    }
    /* The caller's connection saw the hello: no session of ours to open (the SSH
     * transport connects at its first command). */
    return start_done(vm, mark_running(vm, err), err);
}

int smolvm_vm_start_abort(smolvm_vm *vm, int code, const char *reason, smolvm_error **err)
{
    if (code >= 0 || code < _SMOLVM_CODE_MIN)
        code = SMOLVM_EVMM;
    if (!vm->start.pending)
        return smolvm_err(err, SMOLVM_ESTATE, "start '%s': no start in progress", vm->id);
    (void)smolvm_err(err, code, "%.400s", reason && *reason ? reason : "start abandoned");
    if (vm->start.was_running) {
        vm->start.pending = false;
        return smolvm_err_wrap(err, "start '%s'", vm->id);
    }
    return start_done(vm, code, err);
}

int smolvm_vm_start(smolvm_vm *vm, int timeout_ms, smolvm_error **err)
{
    int r = smolvm_vm_start_begin(vm, timeout_ms, err);

    return r < 0 ? r : smolvm_vm_start_finish(vm, err);
}

/* Clean guest power-off (asked of the supervisor), then VMM quit, then kill: each
 * gets a share of the time. *net_done is set once the VM's NAT network was taken down
 * on the way. The supervisor exits once its VMM is gone; one that lingers is killed. */
static int do_stop(smolvm_vm *vm, int timeout_ms, bool *net_done, smolvm_error **err)
{
    const smolvm_vmm_ops *ops = smolvm_vmm_ops_for(vm->cfg->backend);
    int64_t start_ms = smolvm_now_ms(), deadline = start_ms + timeout_ms;
    int64_t poweroff_deadline = start_ms + timeout_ms * 7 / 10;
    uint64_t pstart;
    pid_t pid;
    int r;

    if (smolvm_vm_vmm_alive(vm->row, &pid, &pstart)) {
        r = smolvm_sv_poweroff(vm->row->dir, poweroff_deadline, NULL);
        if (r == 0 && vm->cfg->network == SMOLVM_NET_NAT) {
            /* The guest is syncing and powering off, which needs no network: take the
             * network down meanwhile rather than after. Its link goes first, so even a
             * guest that only pretended to power off is cut off before its rules go. */
            smolvm_vm_net_down(vm->ctx, vm->id);
            *net_done = true;
        }
        if (r != 0 || smolvm_pid_wait_exit(pid, pstart, poweroff_deadline, NULL) != 0) {
            smolvm_log(vm->ctx, SMOLVM_LOG_INFO,
                       "stop '%s': the guest did not power off in time; asking the vmm to quit",
                       vm->id);
            if (ops->quit(vm->row->dir, deadline, NULL) != 0 ||
                smolvm_pid_wait_exit(pid, pstart, deadline, NULL) != 0) {
                smolvm_log(vm->ctx, SMOLVM_LOG_WARN, "stop '%s': killing the vmm", vm->id);
                if ((r = smolvm_pid_kill(pid, pstart, smolvm_now_ms() + KILL_TIMEOUT_MS, err)) < 0)
                    return r;
            }
        }
    }
    smolvm_vm_reap_supervisor(vm->row, smolvm_now_ms() + SUPERVISOR_EXIT_MS);
    return 0;
}

static int stop_locked(smolvm_vm *vm, int timeout_ms, smolvm_error **err)
{
    /* A stopped, created or failed VM has no network up: it came down at stop, never
     * went up, or came down with the failed start or the reconcile that found it. */
    const char *was = vm->row->status ? vm->row->status : "";
    bool net_done =
        strcmp(was, "stopped") == 0 || strcmp(was, "created") == 0 || strcmp(was, "error") == 0;
    int r;
    smolvm_vm_ssh_drop(vm);
    smolvm_vm_agent_drop(vm);
    if ((r = smolvm_store_vm_set_status(vm->ctx->store, vm->id, "stopping", NULL, err)) < 0)
        return r;
    r = do_stop(vm, timeout_ms, &net_done, err);
    if (r < 0)
        return r;
    smolvm_vm_cgroup_remove(vm->ctx, vm->id);
    if (!net_done && vm->cfg->network == SMOLVM_NET_NAT)
        smolvm_vm_net_down(vm->ctx, vm->id);
    if ((r = smolvm_store_vm_set_pid(vm->ctx->store, vm->id, 0, 0, err)) < 0 ||
        (r = smolvm_store_vm_set_supervisor(vm->ctx->store, vm->id, 0, 0, err)) < 0 ||
        (r = smolvm_store_vm_set_status(vm->ctx->store, vm->id, "stopped", NULL, err)) < 0)
        return r;
    (void)smolvm_store_event(vm->ctx->store, vm->id, "stop", NULL, NULL);
    return smolvm_vm_refresh(vm, err);
}

int smolvm_vm_stop(smolvm_vm *vm, int timeout_ms, smolvm_error **err)
{
    _cleanup_close_ int lock = -1;
    const char *status;
    int r;

    if (vm->deleted)
        return smolvm_err(err, SMOLVM_ESTATE, "stop '%s': the vm was deleted", vm->id);
    status = smolvm_vm_status(vm);
    if (strcmp(status, "running") != 0 && strcmp(status, "paused") != 0 &&
        strcmp(status, "suspended") != 0) {
        smolvm_vm_ssh_drop(vm);
        smolvm_vm_agent_drop(vm);
        return 0;
    }
    if ((r = smolvm_vm_lock(&lock, vm->row->dir, vm->id, "stop", SMOLVM_LOCK_WAIT_MS, err)) < 0)
        return r;
    if (strcmp(status, "suspended") == 0) {
        /* Stopping a suspended VM forgets where it was: the next start boots. */
        _cleanup_free_ char *dir = smolvm_strdupf("%s/%s", vm->row->dir, SMOLVM_SUSPENDED_DIR);

        if (dir)
            (void)smolvm_rm_rf(dir, NULL);
        r = smolvm_store_vm_set_status(vm->ctx->store, vm->id, "stopped", NULL, err);
        return r < 0 ? r : smolvm_vm_refresh(vm, err);
    }
    r = stop_locked(vm, timeout_ms > 0 ? timeout_ms : STOP_TIMEOUT_DEFAULT_MS, err);
    return r < 0 ? smolvm_err_wrap(err, "stop '%s'", vm->id) : 0;
}

int smolvm_vm_delete(smolvm_vm *vm, smolvm_error **err)
{
    _cleanup_close_ int lock = -1;
    int r;

    if (vm->deleted)
        return 0;
    if ((r = smolvm_vm_refresh(vm, err)) < 0) {
        if (r != SMOLVM_ENOENT)
            return smolvm_err_wrap(err, "delete '%s'", vm->id);
        /* Already gone (another process deleted it). */
        if (err)
            *err = smolvm_error_free(*err);
        vm->deleted = true;
        return 0;
    }
    if (access(vm->row->dir, F_OK) == 0 &&
        (r = smolvm_vm_lock(&lock, vm->row->dir, vm->id, "delete", SMOLVM_LOCK_WAIT_MS, err)) < 0)
        return r;
    /* Whatever the recorded status says, no VMM of this VM may survive. */
    if ((r = stop_locked(vm, DELETE_STOP_TIMEOUT_MS, err)) < 0)
        return smolvm_err_wrap(err, "delete '%s'", vm->id);
    /* Directory first, record last: a delete killed half-way is finished by the next. */
    if ((r = smolvm_rm_rf(vm->row->dir, err)) < 0)
        return smolvm_err_wrap(err, "delete '%s'", vm->id);
    if ((r = smolvm_store_vm_delete(vm->ctx->store, vm->id, err)) < 0)
        return smolvm_err_wrap(err, "delete '%s'", vm->id);
    (void)smolvm_store_event(vm->ctx->store, vm->id, "delete", NULL, NULL);
    vm->deleted = true;
    /* A fork's template goes with its last clone. */
    if (vm->cfg->template_name)
        smolvm_template_release(vm->ctx, vm->cfg->template_name);
    return 0;
}

int smolvm_vm_keep(smolvm_vm *vm, smolvm_error **err)
{
    int r;

    if (vm->deleted)
        return smolvm_err(err, SMOLVM_ESTATE, "keep '%s': the vm was deleted", vm->id);
    if ((r = smolvm_vm_refresh(vm, err)) < 0)
        return smolvm_err_wrap(err, "keep '%s'", vm->id);
    if (vm->row->owner_pid == 0)
        return 0;
    /* The record first: a supervisor that dies meanwhile leaves a kept VM, not a VM that
     * the next reconcile deletes. */
    if ((r = smolvm_store_vm_set_lifetime(vm->ctx->store, vm->id, 0, 0, vm->row->expires_at, err)) <
        0)
        return smolvm_err_wrap(err, "keep '%s'", vm->id);
    if (vm->row->sv_pid > 0 && smolvm_pid_alive((pid_t)vm->row->sv_pid, vm->row->sv_start) &&
        (r = smolvm_sv_keep(vm->row->dir, smolvm_now_ms() + SUPERVISOR_CALL_MS, err)) < 0)
        return smolvm_err_wrap(err, "keep '%s'", vm->id);
    return smolvm_vm_refresh(vm, err);
}
