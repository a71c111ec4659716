/* SPDX-License-Identifier: MIT */
/* Start, stop, delete and reconcile: the VM's life against the store. */
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

#include "context.h"
#include "error.h"
#include "host.h"
#include "proc.h"
#include "ssh.h"
#include "guest-config.h"
#include "vm-internal.h"
#include "vm-net.h"
#include "vmm/vmm.h"

#define CONSOLE_TAIL_BYTES 1024
#define CONSOLE_TAIL_LINES 6
#define DELETE_STOP_TIMEOUT_MS 5000
#define KILL_TIMEOUT_MS 2000

const smolvm_vmm_ops *smolvm_vm_backend_ops(const char *name)
{
    if (name && strcmp(name, "firecracker") == 0)
        return &smolvm_vmm_firecracker;
    return &smolvm_vmm_qemu;
}

static const smolvm_vmm_ops *backend_ops(const char *name)
{
    return smolvm_vm_backend_ops(name);
}

/* The last lines of a log file, for error messages ("" if unreadable). Caller frees. */
static char *log_tail(const char *dir, const char *file)
{
    _cleanup_free_ char *path = smolvm_strdupf("%s/%s", dir, file);
    _cleanup_close_ int fd = -1;
    char buf[CONSOLE_TAIL_BYTES + 1], *p, *start;
    off_t size;
    ssize_t n;
    int lines = 0;

    if (!path || (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return strdup("");
    size = lseek(fd, 0, SEEK_END);
    if (size < 0 ||
        lseek(fd, size > CONSOLE_TAIL_BYTES ? size - CONSOLE_TAIL_BYTES : 0, SEEK_SET) < 0)
        return strdup("");
    n = read(fd, buf, CONSOLE_TAIL_BYTES);
    if (n <= 0)
        return strdup("");
    buf[n] = '\0';
    for (p = buf; *p; p++)
        if ((unsigned char)*p < 0x20 && *p != '\n')
            *p = ' ';
    while (n > 0 && buf[n - 1] == '\n')
        buf[--n] = '\0';
    start = buf + n;
    while (start > buf && lines < CONSOLE_TAIL_LINES)
        if (*--start == '\n')
            lines++;
    if (*start == '\n')
        start++;
    for (p = start; *p; p++)
        if (*p == '\n')
            *p = '|';
    return strdup(start);
}

/* Is the VM's VMM alive? Checks the recorded pid+start time, then the pidfile. */
static int vmm_alive(const smolvm_vm_row *row, pid_t *pid, uint64_t *start)
{
    if (row->pid > 0 && smolvm_proc_alive((pid_t)row->pid, row->pid_start)) {
        *pid = (pid_t)row->pid;
        *start = row->pid_start;
        return 1;
    }
    return row->dir && smolvm_proc_find_vmm(row->dir, SMOLVM_VMM_PIDFILE, pid, start);
}

static void kill_vmm(const smolvm_vm_row *row)
{
    pid_t pid;
    uint64_t start;

    if (vmm_alive(row, &pid, &start))
        (void)smolvm_proc_kill(pid, start, smolvm_now_ms() + KILL_TIMEOUT_MS, NULL);
}

static int row_is_nat(const smolvm_vm_row *row)
{
    json_t *c = row->config_json ? json_loads(row->config_json, 0, NULL) : NULL;
    const char *n = json_string_value(json_object_get(c, "network"));
    int nat = n && strcmp(n, "nat") == 0;

    json_decref(c);
    return nat;
}

static void smolvm_vm_row_freep(smolvm_vm_row **row)
{
    smolvm_vm_row_free(*row);
}

/* Does the row disagree with reality (so reconcile has something to do)? */
static int needs_reconcile(const smolvm_vm_row *row)
{
    const char *status = row->status ? row->status : "";
    uint64_t start;
    pid_t pid;

    if (strcmp(status, "running") == 0)
        return !vmm_alive(row, &pid, &start);
    if (strcmp(status, "starting") == 0 || strcmp(status, "stopping") == 0)
        return 1; /* unless its controller still holds the lock */
    return row->pid != 0 || vmm_alive(row, &pid, &start);
}

int smolvm_vm_reconcile_row(smolvm_ctx *ctx, const smolvm_vm_row *seen, int *changed,
                            smolvm_error **err)
{
    _cleanup_close_ int lock = -1;
    _cleanup_free_ char *tail = NULL, *reason = NULL;
    _cleanup_(smolvm_vm_row_freep) smolvm_vm_row *row = NULL;
    const char *status;
    pid_t pid;
    uint64_t start;
    int r;

    if (changed)
        *changed = 0;
    if (!seen->dir || access(seen->dir, F_OK) < 0)
        return 0;
    /* A healthy VM is only read: readers never take the lock that start, stop and
     * delete need. */
    if (!needs_reconcile(seen))
        return 0;
    /* Whoever holds the lock is acting on this VM right now; its view wins. */
    if (smolvm_vm_lock(seen->dir, seen->id, "reconcile", 0, &lock, NULL) < 0)
        return 0;
    /* What was read before the lock may be stale (a stop that just finished): decide
     * on the row as it is now. */
    if (smolvm_store_vm_get(ctx->store, seen->id, &row, NULL) < 0 || !needs_reconcile(row))
        return 0;
    status = row->status ? row->status : "";

    if (strcmp(status, "running") == 0) {
        if (vmm_alive(row, &pid, &start))
            return 0;
        tail = log_tail(row->dir, SMOLVM_VMM_CONSOLE_LOG);
        if (tail && strstr(tail, "smolvm: poweroff")) {
            r = smolvm_store_vm_set_status(ctx->store, row->id, "stopped", "the guest powered off",
                                           err);
        } else {
            reason = smolvm_strdupf("the vmm exited unexpectedly; console: %s",
                                    tail && *tail ? tail : "(empty)");
            r = smolvm_store_vm_set_status(ctx->store, row->id, "error",
                                           reason ? reason : "the vmm exited unexpectedly", err);
        }
    } else if (strcmp(status, "starting") == 0 || strcmp(status, "stopping") == 0) {
        /* The process that was starting or stopping it died: finish the job. */
        kill_vmm(row);
        if (strcmp(status, "starting") == 0)
            r = smolvm_store_vm_set_status(ctx->store, row->id, "error",
                                           "start interrupted (the controlling process "
                                           "exited)",
                                           err);
        else
            r = smolvm_store_vm_set_status(ctx->store, row->id, "stopped", NULL, err);
    } else {
        /* created / stopped / error: any VMM still around is an orphan. */
        if (!vmm_alive(row, &pid, &start) && row->pid == 0)
            return 0;
        kill_vmm(row);
        r = 0;
    }
    if (r == 0)
        r = smolvm_store_vm_set_pid(ctx->store, row->id, 0, 0, err);
    if (r == 0 && row_is_nat(row))
        smolvm_vm_net_down(ctx, row->id);
    if (r == 0) {
        (void)smolvm_store_event(ctx->store, row->id, "reconcile", status, NULL);
        if (changed)
            *changed = 1;
    }
    return r;
}

int smolvm_reconcile(smolvm_ctx *ctx, int *changed, smolvm_error **err)
{
    smolvm_vm_row **rows = NULL;
    const char **live = NULL;
    size_t n = 0, i, k = 0;
    int r, c, total = 0, any_nat = 0;

    r = smolvm_store_vm_list(ctx->store, &rows, &n, err);
    if (r < 0)
        return r;
    for (i = 0; i < n; i++)
        if (smolvm_vm_reconcile_row(ctx, rows[i], &c, NULL) == 0)
            total += c;
    smolvm_vm_rows_free(rows, n);
    /* TAPs and rules of VMs that are gone or not running (killed controllers,
     * deleted state) are collected against the reconciled list. */
    rows = NULL;
    n = 0;
    if (smolvm_store_vm_list(ctx->store, &rows, &n, NULL) == 0 &&
        (live = calloc(n + 1, sizeof(*live)))) {
        for (i = 0; i < n; i++) {
            const char *s = rows[i]->status ? rows[i]->status : "";

            any_nat |= row_is_nat(rows[i]);
            if (strcmp(s, "running") == 0 || strcmp(s, "starting") == 0 ||
                strcmp(s, "stopping") == 0)
                live[k++] = rows[i]->id;
        }
        if (any_nat)
            smolvm_vm_net_gc(ctx, live);
    }
    free(live);
    smolvm_vm_rows_free(rows, n);
    if (changed)
        *changed = total;
    return 0;
}

/* User networking forwards come from the ports table (declared at creation or added
 * later with smolvm_vm_forward), so they survive a stop/start. Index 0 is ssh. */
static int build_hostfwds(smolvm_vm *vm, smolvm_vmm_hostfwd **out, size_t *n, json_t **hold,
                          smolvm_error **err)
{
    _cleanup_free_ char *raw = NULL;
    json_t *info, *ports, *p;
    smolvm_vmm_hostfwd *h;
    size_t i, k = 1;
    int port, r;

    *n = 0;
    *out = NULL;
    *hold = NULL;
    if (strcmp(smolvm_vm_cfg_str(vm, "network"), "user") != 0)
        return 0;
    r = smolvm_store_port_get(vm->ctx->store, vm->id, "ssh", &port, err);
    if (r < 0)
        return smolvm_err_wrap(err, "ssh host port");
    if ((r = smolvm_store_get_json(vm->ctx->store, vm->id, &raw, err)) < 0)
        return r;
    info = json_loads(raw, 0, NULL);
    ports = json_object_get(info, "ports");
    h = calloc(json_array_size(ports) + 1, sizeof(*h));
    if (!info || !h) {
        json_decref(info);
        free(h);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    h[0] = (smolvm_vmm_hostfwd){"127.0.0.1", port, 22};
    json_array_foreach (ports, i, p) {
        const char *kind = json_string_value(json_object_get(p, "kind"));

        if (!kind || strcmp(kind, "forward") != 0)
            continue;
        h[k].host_address = json_string_value(json_object_get(p, "host_address"));
        h[k].host_port = (int)json_integer_value(json_object_get(p, "host_port"));
        h[k].guest_port = (int)json_integer_value(json_object_get(p, "guest_port"));
        k++;
    }
    *out = h;
    *n = k;
    *hold = info;
    return 0;
}

/* The SSH host port was reserved at create time; anything on the host may have
 * bound it since (another state dir, another program). Check right before QEMU binds
 * it and move to a free one if needed. User-chosen forward ports are not moved: a
 * taken one is an error naming it. */
static int revalidate_ports(smolvm_vm *vm, smolvm_error **err)
{
    _cleanup_free_ char *raw = NULL;
    json_t *info, *p;
    size_t i;
    int port, r;

    if (strcmp(smolvm_vm_cfg_str(vm, "network"), "user") != 0)
        return 0;
    if ((r = smolvm_store_port_get(vm->ctx->store, vm->id, "ssh", &port, err)) < 0)
        return r;
    if (!smolvm_port_bindable(port, (void *)"127.0.0.1")) {
        smolvm_log(vm->ctx, SMOLVM_LOG_INFO, "vm '%s': ssh port %d was taken; moving", vm->id,
                   port);
        if ((r = smolvm_store_port_remove(vm->ctx->store, vm->id, "127.0.0.1", port, "tcp", err)) <
                0 ||
            (r = smolvm_vm_alloc_ssh_port(vm, &port, err)) < 0)
            return r;
    }
    if ((r = smolvm_store_get_json(vm->ctx->store, vm->id, &raw, err)) < 0)
        return r;
    info = json_loads(raw, 0, NULL);
    r = 0;
    json_array_foreach (json_object_get(info, "ports"), i, p) {
        const char *kind = json_string_value(json_object_get(p, "kind"));
        const char *addr = json_string_value(json_object_get(p, "host_address"));
        int hp = (int)json_integer_value(json_object_get(p, "host_port"));

        if (kind && addr && strcmp(kind, "forward") == 0 &&
            !smolvm_port_bindable(hp, (void *)addr)) {
            r = smolvm_err(err, SMOLVM_EEXIST,
                           "forward %s:%d: the port is in use by another program", addr, hp);
            break;
        }
    }
    json_decref(info);
    return r;
}

/* Open the persistent SSH session of a running VM (user networking: the host port). */
static int connect_ssh(smolvm_vm *vm, int64_t deadline, smolvm_error **err)
{
    _cleanup_free_ char *key = NULL, *pub = NULL, *hostpub = NULL, *hostpub_path = NULL;
    const char *network = smolvm_vm_cfg_str(vm, "network");
    char host[16] = "127.0.0.1";
    int port = 22, r;

    if (vm->ssh)
        return 0;
    if (strcmp(network, "nat") == 0) {
        /* The host reaches the guest's own address through its TAP. */
        r = smolvm_store_lease_ip(vm->ctx->store, vm->id, smolvm_vm_cfg_str(vm, "cidr"), host, err);
        if (r < 0)
            return r;
    } else if (strcmp(network, "user") == 0) {
        if ((r = smolvm_store_port_get(vm->ctx->store, vm->id, "ssh", &port, err)) < 0)
            return r;
    } else {
        return smolvm_err(err, SMOLVM_ESTATE,
                          "vm '%s' has network 'none': commands and files need a network "
                          "(create it with network = \"user\" or \"nat\")",
                          vm->id);
    }
    if ((r = smolvm_client_key(vm->ctx, &key, &pub, err)) < 0)
        return r;
    hostpub_path = smolvm_strdupf("%s/%s.pub", vm->row->dir, SMOLVM_VM_HOST_KEY);
    if (!hostpub_path)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if ((r = smolvm_read_file(hostpub_path, 4096, &hostpub, NULL, err)) < 0)
        return r;
    hostpub[strcspn(hostpub, "\n")] = '\0';
    r = smolvm_ssh_connect(&vm->ssh, host, port, key, hostpub, deadline, err);
    if (r < 0)
        return smolvm_err_wrap(err, "ssh to vm '%s'", vm->id);
    return 0;
}

int smolvm_vm_ensure_ssh(smolvm_vm *vm, int64_t deadline, smolvm_error **err)
{
    const char *status = smolvm_vm_status(vm);

    if (strcmp(status, "running") != 0) {
        smolvm_vm_drop_ssh(vm);
        return smolvm_err(err, SMOLVM_ESTATE, "vm '%s' is %s, not running (start it first)", vm->id,
                          status);
    }
    return connect_ssh(vm, deadline, err);
}

/* Everything up to a running VMM: network, command line, spawn. *ctl receives the
 * guest channel to wait on. */
static int do_start_begin(smolvm_vm *vm, int64_t deadline, int *ctl_out, smolvm_error **err)
{
    const smolvm_vmm_ops *ops = backend_ops(vm->row->backend);
    _cleanup_free_ char *cmdline = NULL, *cfgdisk = NULL;
    _cleanup_free_ smolvm_vmm_hostfwd *fwds = NULL;
    _cleanup_close_ int ctl = -1;
    _cleanup_(json_decrefp) json_t *fwd_info = NULL;
    const char *network = smolvm_vm_cfg_str(vm, "network"), *accel_note = NULL, *acc;
    smolvm_vmm_config cfg = {0};
    smolvm_vm_net natnet;
    int accel, net, r;
    int64_t pid = 0, t0 = smolvm_now_ms();
    uint64_t pid_start = 0;
    size_t nfwds = 0;

    acc = smolvm_vm_cfg_str(vm, "accel");
    r = smolvm_host_resolve_accel(strcmp(acc, "kvm") == 0   ? SMOLVM_ACCEL_KVM
                                  : strcmp(acc, "tcg") == 0 ? SMOLVM_ACCEL_TCG
                                                            : SMOLVM_ACCEL_AUTO,
                                  &accel, &accel_note, err);
    if (r < 0)
        return r;
    if (ops->available && (r = ops->available(accel, err)) < 0)
        return r;
    smolvm_log(vm->ctx, SMOLVM_LOG_DEBUG, "vm '%s': accel %s (%s)", vm->id,
               accel == SMOLVM_ACCEL_KVM ? "kvm" : "tcg", accel_note);
    /* "starting" before anything is made: from here on a concurrent reconcile leaves
     * this VM's network alone, and a dead controller is recognised. */
    if ((r = smolvm_store_vm_set_status(vm->ctx->store, vm->id, "starting", NULL, err)) < 0)
        return r;
    net = strcmp(network, "user") == 0  ? SMOLVM_NET_USER
          : strcmp(network, "nat") == 0 ? SMOLVM_NET_NAT
                                        : SMOLVM_NET_NONE;
    if (net == SMOLVM_NET_NAT) {
        if ((r = smolvm_vm_net_up(vm, &natnet, err)) < 0)
            return r;
        r = smolvm_kernel_cmdline(&cmdline, vm->id, net, natnet.ip, natnet.gateway, natnet.netmask,
                                  natnet.have_dns ? natnet.dns : NULL,
                                  accel == SMOLVM_ACCEL_TCG ? smolvm_host_tsc_khz() : 0, err);
        cfg.tap_name = natnet.tap;
        cfg.mac = natnet.mac;
    } else {
        r = smolvm_kernel_cmdline(&cmdline, vm->id, net, SMOLVM_USER_GUEST_IP, SMOLVM_USER_GATEWAY,
                                  "255.255.255.0", SMOLVM_USER_DNS,
                                  accel == SMOLVM_ACCEL_TCG ? smolvm_host_tsc_khz() : 0, err);
    }
    if (r < 0)
        return r;
    if ((r = revalidate_ports(vm, err)) < 0)
        return r;
    if ((r = build_hostfwds(vm, &fwds, &nfwds, &fwd_info, err)) < 0)
        return r;
    cfgdisk = smolvm_strdupf("%s/%s", vm->row->dir, SMOLVM_VM_CONFIG_DISK);
    if (!cfgdisk)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    cfg.vm_id = vm->id;
    cfg.dir = vm->row->dir;
    cfg.kernel = smolvm_vm_cfg_str(vm, "kernel");
    cfg.disk = smolvm_vm_cfg_str(vm, "disk_path");
    cfg.disk_format = smolvm_vm_cfg_str(vm, "disk_format");
    cfg.overlay_disk = smolvm_vm_cfg_str(vm, "overlay_disk");
    cfg.config_disk = cfgdisk;
    cfg.cmdline = cmdline;
    cfg.vcpus = (unsigned)smolvm_vm_cfg_int(vm, "vcpus");
    cfg.memory_mib = (unsigned)smolvm_vm_cfg_int(vm, "memory");
    cfg.accel = accel;
    cfg.network = net;
    cfg.hostfwds = fwds;
    cfg.n_hostfwds = nfwds;
    /* User networking is closed to the outside unless the operator opens it for
     * this process: untrusted code gets no egress by accident. */
    cfg.user_egress =
        getenv("SMOLVM_USER_EGRESS") && strcmp(getenv("SMOLVM_USER_EGRESS"), "1") == 0;

    r = ops->spawn(&cfg, &ctl, &pid, &pid_start, deadline, err);
    if (r < 0)
        return r;
    if ((r = smolvm_store_vm_set_pid(vm->ctx->store, vm->id, pid, pid_start, err)) < 0)
        return r;
    smolvm_log(vm->ctx, SMOLVM_LOG_DEBUG, "vm '%s': vmm pid %lld up after %lld ms", vm->id,
               (long long)pid, (long long)(smolvm_now_ms() - t0));
    *ctl_out = TAKE_FD(ctl);
    return 0;
}

/* From a spawned VMM to a VM that runs commands: the guest's ready message, the
 * record, the SSH session. */
static int do_start_finish(smolvm_vm *vm, int ctl, int64_t deadline, smolvm_error **err)
{
    const smolvm_vmm_ops *ops = backend_ops(vm->row->backend);
    int64_t uptime = 0;
    int r;

    r = ops->wait_ready ? ops->wait_ready(vm->ctx, vm->row->dir, ctl, deadline, &uptime, err)
                        : smolvm_vmm_wait_ready(vm->ctx, ctl, deadline, &uptime, err);
    if (r < 0)
        return r;
    smolvm_log(vm->ctx, SMOLVM_LOG_DEBUG, "vm '%s': guest ready after %lld ms (uptime %lld ms)",
               vm->id, (long long)(smolvm_now_ms() - vm->start.t0), (long long)uptime);
    if ((r = smolvm_store_vm_set_status(vm->ctx->store, vm->id, "running", NULL, err)) < 0)
        return r;
    if ((r = smolvm_vm_refresh(vm, err)) < 0)
        return r;
    if (strcmp(smolvm_vm_cfg_str(vm, "network"), "none") == 0)
        return 0;
    return connect_ssh(vm, deadline, err);
}

/* After a failed start: no VMM left behind, nor its network; the record stays,
 * marked with what went wrong. Returns r. */
static int start_failed(smolvm_vm *vm, int r, smolvm_error **err)
{
    _cleanup_free_ char *tail = NULL, *reason = NULL;

    (void)smolvm_vm_refresh(vm, NULL);
    kill_vmm(vm->row);
    smolvm_vm_drop_ssh(vm);
    if (strcmp(smolvm_vm_cfg_str(vm, "network"), "nat") == 0)
        smolvm_vm_net_down(vm->ctx, vm->id);
    tail = log_tail(vm->row->dir, SMOLVM_VMM_CONSOLE_LOG);
    if (tail && *tail && r != SMOLVM_EHOST && r != SMOLVM_EINVAL)
        smolvm_err_hint(err, "console: %s", tail);
    smolvm_err_wrap(err, "start '%s'", vm->id);
    reason = strdup(err && *err ? smolvm_error_message(*err) : "start failed");
    (void)smolvm_store_vm_set_pid(vm->ctx->store, vm->id, 0, 0, NULL);
    (void)smolvm_store_vm_set_status(vm->ctx->store, vm->id, "error", reason, NULL);
    (void)smolvm_vm_refresh(vm, NULL);
    return r;
}

void smolvm_vm_start_abandon(smolvm_vm *vm)
{
    if (!vm->start.pending)
        return;
    /* Releasing the lock with the VM still "starting" lets the next reconcile finish
     * the job (kill the VMM, mark it error), exactly as for a dead controller. */
    if (vm->start.ctl >= 0)
        (void)close(vm->start.ctl);
    if (vm->start.lock >= 0)
        (void)close(vm->start.lock);
    vm->start.pending = 0;
}

int smolvm_vm_start_begin(smolvm_vm *vm, int timeout_ms, smolvm_error **err)
{
    _cleanup_close_ int lock = -1;
    int ctl = -1, r;

    if (vm->deleted)
        return smolvm_err(err, SMOLVM_ESTATE, "start '%s': the vm was deleted", vm->id);
    if (vm->start.pending)
        return smolvm_err(err, SMOLVM_ESTATE, "start '%s': already starting", vm->id);
    vm->start.t0 = smolvm_now_ms();
    vm->start.deadline = vm->start.t0 + (timeout_ms > 0 ? timeout_ms : 60000);
    vm->start.lock = vm->start.ctl = -1;
    if (strcmp(smolvm_vm_status(vm), "running") == 0) {
        vm->start.pending = 1; /* finish only (re)connects the session */
        return 0;
    }
    if ((r = smolvm_vm_lock(vm->row->dir, vm->id, "start", SMOLVM_LOCK_WAIT_MS, &lock, err)) < 0)
        return r;
    if ((r = smolvm_vm_refresh(vm, err)) < 0)
        return r;
    smolvm_vm_drop_ssh(vm);
    r = do_start_begin(vm, vm->start.deadline, &ctl, err);
    if (r < 0)
        return start_failed(vm, r, err);
    vm->start.lock = TAKE_FD(lock);
    vm->start.ctl = ctl;
    vm->start.pending = 1;
    return 0;
}

int smolvm_vm_start_finish(smolvm_vm *vm, smolvm_error **err)
{
    int r;

    if (!vm->start.pending)
        return smolvm_err(err, SMOLVM_ESTATE, "start '%s': no start in progress", vm->id);
    if (vm->start.ctl < 0) {
        /* It was already running. */
        vm->start.pending = 0;
        r = connect_ssh(vm, vm->start.deadline, err);
        return r < 0 ? smolvm_err_wrap(err, "start '%s'", vm->id) : 0;
    }
    r = do_start_finish(vm, vm->start.ctl, vm->start.deadline, err);
    if (r < 0)
        r = start_failed(vm, r, err);
    else
        (void)smolvm_store_event(vm->ctx->store, vm->id, "start", NULL, NULL);
    /* The lock goes last: until here no other process may act on the VM. */
    (void)close(vm->start.ctl);
    (void)close(vm->start.lock);
    vm->start.pending = 0;
    return r;
}

int smolvm_vm_start(smolvm_vm *vm, int timeout_ms, smolvm_error **err)
{
    int r = smolvm_vm_start_begin(vm, timeout_ms, err);

    return r < 0 ? r : smolvm_vm_start_finish(vm, err);
}

/* Clean guest power-off, then VMM quit, then kill: each gets a share of the time. */
/* *net_done is set once the VM's NAT network was taken down on the way. */
static int do_stop(smolvm_vm *vm, int timeout_ms, int *net_done, smolvm_error **err)
{
    const smolvm_vmm_ops *ops = backend_ops(vm->row->backend);
    int64_t start_ms = smolvm_now_ms(), deadline = start_ms + timeout_ms;
    int64_t poweroff_deadline = start_ms + timeout_ms * 7 / 10;
    uint64_t pstart;
    pid_t pid;
    int r;

    if (!vmm_alive(vm->row, &pid, &pstart))
        return 0;
    r = ops->poweroff ? ops->poweroff(vm->row->dir, poweroff_deadline, NULL)
                      : smolvm_vmm_request_poweroff(vm->row->dir, poweroff_deadline, NULL);
    if (r == 0 && strcmp(smolvm_vm_cfg_str(vm, "network"), "nat") == 0) {
        /* The guest is syncing and powering off, which needs no network: take the
         * network down meanwhile rather than after. Its link goes first, so even a
         * guest that only pretended to power off is cut off before its rules go. */
        smolvm_vm_net_down(vm->ctx, vm->id);
        *net_done = 1;
    }
    if (r == 0 && smolvm_proc_wait_exit(pid, pstart, poweroff_deadline, NULL) == 0)
        return 0;
    smolvm_log(vm->ctx, SMOLVM_LOG_INFO,
               "stop '%s': the guest did not power off in time; "
               "asking the vmm to quit",
               vm->id);
    if (ops->quit(vm->row->dir, deadline, NULL) == 0 &&
        smolvm_proc_wait_exit(pid, pstart, deadline, NULL) == 0)
        return 0;
    smolvm_log(vm->ctx, SMOLVM_LOG_WARN, "stop '%s': killing the vmm", vm->id);
    return smolvm_proc_kill(pid, pstart, smolvm_now_ms() + KILL_TIMEOUT_MS, err);
}

static int stop_locked(smolvm_vm *vm, int timeout_ms, smolvm_error **err)
{
    /* A stopped, created or failed VM has no network up: it came down at stop, never
     * went up, or came down with the failed start or the reconcile that found it. */
    const char *was = vm->row->status ? vm->row->status : "";
    int r, net_done = strcmp(was, "stopped") == 0 || strcmp(was, "created") == 0 ||
                      strcmp(was, "error") == 0;

    smolvm_vm_drop_ssh(vm);
    if ((r = smolvm_store_vm_set_status(vm->ctx->store, vm->id, "stopping", NULL, err)) < 0)
        return r;
    r = do_stop(vm, timeout_ms, &net_done, err);
    if (r < 0)
        return r;
    if (!net_done && strcmp(smolvm_vm_cfg_str(vm, "network"), "nat") == 0)
        smolvm_vm_net_down(vm->ctx, vm->id);
    if ((r = smolvm_store_vm_set_pid(vm->ctx->store, vm->id, 0, 0, err)) < 0 ||
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
    if (strcmp(status, "running") != 0) {
        smolvm_vm_drop_ssh(vm);
        return 0;
    }
    if ((r = smolvm_vm_lock(vm->row->dir, vm->id, "stop", SMOLVM_LOCK_WAIT_MS, &lock, err)) < 0)
        return r;
    r = stop_locked(vm, timeout_ms > 0 ? timeout_ms : 5000, err);
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
        vm->deleted = 1;
        return 0;
    }
    if (access(vm->row->dir, F_OK) == 0 &&
        (r = smolvm_vm_lock(vm->row->dir, vm->id, "delete", SMOLVM_LOCK_WAIT_MS, &lock, err)) < 0)
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
    vm->deleted = 1;
    return 0;
}
