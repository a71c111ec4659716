/* SPDX-License-Identifier: MIT */
/* Working inside a running VM: commands, files, port forwards. */
#include "util.h"

#include <arpa/inet.h>
#include <stddef.h>
#include <string.h>

#include "error.h"
#include "ssh.h"
#include "vm-config.h"
#include "vm-internal.h"
#include "vm-agent.h"
#include "vm-ssh.h"
#include "vm-supervisor.h"
#include "vmm/vmm.h"

#define CONNECT_TIMEOUT_MS 30000
#define VMM_CALL_TIMEOUT_MS 5000

/* A session error means the connection is gone: drop it so the next call reconnects
 * (a command is never re-sent: it may have run). */
static int after(smolvm_vm *vm, int r)
{
    if (r == SMOLVM_ESSH)
        smolvm_vm_ssh_drop(vm);
    return r;
}

int smolvm_run_options_init(smolvm_run_options *opts, unsigned version)
{
    smolvm_run_options defaults = SMOLVM_RUN_OPTIONS_INIT;

    if (version < 1 || version > SMOLVM_RUN_OPTIONS_VERSION)
        return SMOLVM_EINVAL;
    *opts = defaults;
    opts->version = version;
    return 0;
}

/* After a file call over SSH: a timed-out transfer left a request outstanding, so its
 * session is dropped too. */
static int after_file(smolvm_vm *vm, int r)
{
    if (r == SMOLVM_ETIMEDOUT)
        smolvm_vm_ssh_drop(vm);
    return after(vm, r);
}

/* When an SFTP call must be over, whatever the guest does. */
static int64_t file_deadline(void)
{
    return smolvm_now_ms() + SMOLVM_SSH_FILE_TIMEOUT_MS;
}

static bool agent(const smolvm_vm *vm)
{
    return vm->cfg->transport == SMOLVM_TRANSPORT_AGENT;
}

int smolvm_vm_run(smolvm_run_result **out, smolvm_vm *vm, const char *cmd,
                  const smolvm_run_options *opts, smolvm_error **err)
{
    smolvm_run_options o = SMOLVM_RUN_OPTIONS_INIT;
    int r;

    if (!cmd)
        return smolvm_err(err, SMOLVM_EINVAL, "run: command is NULL");
    if (opts && (opts->version < 1 || opts->version > SMOLVM_RUN_OPTIONS_VERSION))
        return smolvm_err(err, SMOLVM_EINVAL, "run options: unknown version %u", opts->version);
    if (vm->deleted)
        return smolvm_err(err, SMOLVM_ESTATE, "run in '%s': the vm was deleted", vm->id);
    /* A version 1 struct ends before on_output. */
    if (opts)
        memcpy(&o, opts, opts->version == 1 ? offsetof(smolvm_run_options, on_output) : sizeof(o));
    if (agent(vm)) {
        r = smolvm_vm_agent_run(out, vm, cmd, &o, err);
        return r < 0 ? smolvm_err_wrap(err, "run in '%s'", vm->id) : 0;
    }
    /* An open session is used as is: a dead VM shows up as a session error. The
     * status check (database + /proc) is only paid when connecting. */
    if (!vm->ssh && (r = smolvm_vm_ssh_ensure(vm, smolvm_now_ms() + CONNECT_TIMEOUT_MS, err)) < 0)
        return smolvm_err_wrap(err, "run in '%s'", vm->id);
    r = after(vm, smolvm_ssh_exec(vm->ssh, cmd, (const char *const *)vm->cfg->env, &o, out, err));
    if (r == 0 && o.on_output) {
        /* Over SSH the output arrives whole: passed on once, in order. */
        if ((*out)->out_len)
            o.on_output(1, (*out)->out, (*out)->out_len, o.payload);
        if ((*out)->err_len)
            o.on_output(2, (*out)->err, (*out)->err_len, o.payload);
    }
    return r < 0 ? smolvm_err_wrap(err, "run in '%s'", vm->id) : 0;
}

static int ready(smolvm_vm *vm, const char *what, const char *path, smolvm_error **err)
{
    int r;

    if (!path || !*path)
        return smolvm_err(err, SMOLVM_EINVAL, "%s: path is empty", what);
    if (vm->deleted)
        return smolvm_err(err, SMOLVM_ESTATE, "%s in '%s': the vm was deleted", what, vm->id);
    if (agent(vm) || vm->ssh)
        return 0;
    r = smolvm_vm_ssh_ensure(vm, smolvm_now_ms() + CONNECT_TIMEOUT_MS, err);
    return r < 0 ? smolvm_err_wrap(err, "%s in '%s'", what, vm->id) : 0;
}

int smolvm_vm_upload(smolvm_vm *vm, const char *local, const char *remote, smolvm_error **err)
{
    int r;

    if (!local || !*local)
        return smolvm_err(err, SMOLVM_EINVAL, "upload: local path is empty");
    if ((r = ready(vm, "upload", remote, err)) < 0)
        return r;
    r = agent(vm) ? smolvm_vm_agent_upload(vm, local, remote, err)
                  : after_file(vm, smolvm_ssh_upload(vm->ssh, local, remote, file_deadline(), err));
    return r < 0 ? smolvm_err_wrap(err, "upload to '%s'", vm->id) : 0;
}

/* A file over the cap: say where the cap comes from. */
static int download_hint(smolvm_vm *vm, bool read_file, smolvm_error **err)
{
    if (read_file && vm->ctx->download_max >= SMOLVM_READ_FILE_MAX)
        return smolvm_err_hint(err, "read_file returns at most %u bytes; download larger files",
                               SMOLVM_READ_FILE_MAX);
    return smolvm_err_hint(err,
                           "the context's download_max is %llu bytes: raise it with "
                           "smolvm_ctx_options.download_max or $SMOLVM_DOWNLOAD_MAX",
                           (unsigned long long)vm->ctx->download_max);
}

int smolvm_vm_download(smolvm_vm *vm, const char *remote, const char *local, smolvm_error **err)
{
    int r;

    if (!local || !*local)
        return smolvm_err(err, SMOLVM_EINVAL, "download: local path is empty");
    if ((r = ready(vm, "download", remote, err)) < 0)
        return r;
    r = agent(vm)
            ? smolvm_vm_agent_download(vm, remote, local, vm->ctx->download_max, err)
            : after_file(vm, smolvm_ssh_download(vm->ssh, remote, local, vm->ctx->download_max,
                                                 file_deadline(), err));
    if (r == SMOLVM_ENOSPC)
        (void)download_hint(vm, false, err);
    return r < 0 ? smolvm_err_wrap(err, "download from '%s'", vm->id) : 0;
}

int smolvm_vm_write_file(smolvm_vm *vm, const char *remote, const void *data, size_t len,
                         smolvm_error **err)
{
    int r;

    if (!data && len)
        return smolvm_err(err, SMOLVM_EINVAL, "write_file: data is NULL");
    if ((r = ready(vm, "write_file", remote, err)) < 0)
        return r;
    r = agent(vm) ? smolvm_vm_agent_write(vm, remote, data ? data : "", len, 0644, err)
                  : after_file(vm, smolvm_ssh_write(vm->ssh, remote, data ? data : "", len, 0644,
                                                    file_deadline(), err));
    return r < 0 ? smolvm_err_wrap(err, "write_file in '%s'", vm->id) : 0;
}

int smolvm_vm_read_file(char **data, size_t *len, smolvm_vm *vm, const char *remote,
                        smolvm_error **err)
{
    size_t max =
        vm->ctx->download_max < SMOLVM_READ_FILE_MAX ? vm->ctx->download_max : SMOLVM_READ_FILE_MAX;
    int r;

    if ((r = ready(vm, "read_file", remote, err)) < 0)
        return r;
    r = agent(vm) ? smolvm_vm_agent_read(data, len, vm, remote, max, err)
                  : after_file(
                        vm, smolvm_ssh_read(vm->ssh, remote, max, data, len, file_deadline(), err));
    if (r == SMOLVM_ENOSPC)
        (void)download_hint(vm, true, err);
    return r < 0 ? smolvm_err_wrap(err, "read_file in '%s'", vm->id) : 0;
}

static int forward_checks(smolvm_vm *vm, const char *addr, int host_port, smolvm_error **err)
{
    struct in_addr a;

    if (vm->deleted)
        return smolvm_err(err, SMOLVM_ESTATE, "forward in '%s': the vm was deleted", vm->id);
    if (host_port < 1 || host_port > 65535)
        return smolvm_err(err, SMOLVM_EINVAL, "forward: host port must be 1..65535, got %d",
                          host_port);
    if (addr && inet_pton(AF_INET, addr, &a) != 1)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "forward: host address '%.64s' is not an IPv4 address", addr);
    if (smolvm_vm_refresh(vm, err) < 0)
        return SMOLVM_ENOENT;
    if (vm->cfg->network == SMOLVM_NET_NONE)
        return smolvm_err(err, SMOLVM_ESTATE,
                          "forward in '%s': the vm has network 'none'; forwards need 'user' "
                          "or 'nat'",
                          vm->id);
    return 0;
}

static bool is_nat(const smolvm_vm *vm)
{
    return vm->cfg->network == SMOLVM_NET_NAT;
}

int smolvm_vm_forward(smolvm_vm *vm, const char *host_address, int host_port, int guest_port,
                      smolvm_error **err)
{
    const char *addr = host_address ? host_address : "127.0.0.1";
    const smolvm_vmm_ops *ops;
    smolvm_vmm_hostfwd fwd = {addr, host_port, guest_port};
    int r;

    if ((r = forward_checks(vm, addr, host_port, err)) < 0)
        return r;
    if (guest_port < 1 || guest_port > 65535)
        return smolvm_err(err, SMOLVM_EINVAL, "forward: guest port must be 1..65535, got %d",
                          guest_port);
    /* The limit holds in every mode, counted when the forward is added. */
    r = smolvm_store_forward_add(vm->ctx->store, vm->id, addr, host_port, guest_port,
                                 SMOLVM_FORWARDS_MAX, err);
    if (r < 0)
        return smolvm_err_wrap(err, "forward %s:%d", addr, host_port);
    if (strcmp(smolvm_vm_status(vm), "running") != 0)
        return 0; /* applied at the next start */
    if (is_nat(vm)) {
        /* Through the supervisor: it keeps the VM's rules as they should be, and serves
         * loopback forwards with its proxy. */
        r = smolvm_sv_forward(vm->row->dir, true, addr, host_port, guest_port,
                              smolvm_now_ms() + VMM_CALL_TIMEOUT_MS, err);
        if (r < 0) {
            (void)smolvm_store_port_remove(vm->ctx->store, vm->id, addr, host_port, "tcp", NULL);
            return smolvm_err_wrap(err, "forward %s:%d", addr, host_port);
        }
        (void)smolvm_store_event(vm->ctx->store, vm->id, "forward", NULL, NULL);
        return 0;
    }
    ops = smolvm_vmm_ops_for(vm->cfg->backend);
    if (!ops->hostfwd_add) {
        (void)smolvm_store_port_remove(vm->ctx->store, vm->id, addr, host_port, "tcp", NULL);
        return smolvm_err(err, SMOLVM_ESTATE,
                          "forward in '%s': backend '%s' cannot add "
                          "forwards to a running vm",
                          vm->id, smolvm_backend_to_string(vm->cfg->backend));
    }
    r = ops->hostfwd_add(vm->row->dir, &fwd, smolvm_now_ms() + VMM_CALL_TIMEOUT_MS, err);
    if (r < 0) {
        (void)smolvm_store_port_remove(vm->ctx->store, vm->id, addr, host_port, "tcp", NULL);
        return smolvm_err_wrap(err, "forward %s:%d", addr, host_port);
    }
    (void)smolvm_store_event(vm->ctx->store, vm->id, "forward", NULL, NULL);
    return 0;
}

int smolvm_vm_unforward(smolvm_vm *vm, int host_port, smolvm_error **err)
{
    _cleanup_free_ smolvm_port_row *rows = NULL;
    const smolvm_port_row *fwd = NULL;
    const smolvm_vmm_ops *ops;
    size_t i, n = 0;
    int r;

    if ((r = forward_checks(vm, NULL, host_port, err)) < 0)
        return r;
    if ((r = smolvm_store_ports_list(&rows, &n, vm->ctx->store, vm->id, err)) < 0)
        return r;
    for (i = 0; i < n && !fwd; i++)
        if (rows[i].kind == SMOLVM_PORT_FORWARD && rows[i].host_port == host_port)
            fwd = &rows[i];
    if (!fwd)
        return smolvm_err(err, SMOLVM_ENOENT, "unforward in '%s': host port %d is not forwarded",
                          vm->id, host_port);
    if (strcmp(smolvm_vm_status(vm), "running") == 0 && is_nat(vm)) {
        r = smolvm_sv_forward(vm->row->dir, false, fwd->host_address, host_port, fwd->guest_port,
                              smolvm_now_ms() + VMM_CALL_TIMEOUT_MS, err);
        if (r < 0)
            return smolvm_err_wrap(err, "unforward %s:%d", fwd->host_address, host_port);
    } else if (strcmp(smolvm_vm_status(vm), "running") == 0) {
        smolvm_vmm_hostfwd hf = {fwd->host_address, host_port, fwd->guest_port};

        ops = smolvm_vmm_ops_for(vm->cfg->backend);
        if (!ops->hostfwd_remove)
            return smolvm_err(err, SMOLVM_ESTATE,
                              "unforward in '%s': backend '%s' cannot "
                              "remove forwards from a running vm",
                              vm->id, smolvm_backend_to_string(vm->cfg->backend));
        r = ops->hostfwd_remove(vm->row->dir, &hf, smolvm_now_ms() + VMM_CALL_TIMEOUT_MS, err);
        if (r < 0)
            return smolvm_err_wrap(err, "unforward %s:%d", fwd->host_address, host_port);
    }
    return smolvm_store_port_remove(vm->ctx->store, vm->id, fwd->host_address, host_port, "tcp",
                                    err);
}
