/* SPDX-License-Identifier: MIT */
#include "util.h"

#include <errno.h>
#include <string.h>

#include "error.h"
#include "ssh.h"
#include "vm-ssh.h"

/* Create the installation's client key once. Two processes racing both generate a
 * key, and link() lets exactly one of them become the key; the public half is linked
 * first so a private key never exists without it. */
int smolvm_client_key(char **key_path, char **pub_line, smolvm_ctx *ctx, smolvm_error **err)
{
    _cleanup_free_ char *path = smolvm_strdupf("%s/id_ed25519", ctx->state_dir);
    _cleanup_free_ char *pub = NULL, *tmp = NULL, *tmppub = NULL, *finalpub = NULL;
    int r;

    if (!path)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (access(path, R_OK) < 0) {
        tmp = smolvm_strdupf("%s.tmp.%ld", path, (long)getpid());
        tmppub = smolvm_strdupf("%s.pub", tmp ? tmp : "");
        finalpub = smolvm_strdupf("%s.pub", path);
        if (!tmp || !tmppub || !finalpub)
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        (void)unlink(tmp);
        (void)unlink(tmppub);
        r = smolvm_ssh_keygen(tmp, "smolvm", err);
        if (r < 0)
            return smolvm_err_wrap(err, "create the ssh client key");
        if (access(path, R_OK) < 0) {
            (void)unlink(finalpub);
            if (link(tmppub, finalpub) == 0 && link(tmp, path) < 0 && errno != EEXIST) {
                r = smolvm_err_errno(err, errno, "create '%s'", path);
                (void)unlink(tmp);
                (void)unlink(tmppub);
                return r;
            }
        }
        (void)unlink(tmp);
        (void)unlink(tmppub);
    }
    free(finalpub);
    finalpub = smolvm_strdupf("%s.pub", path);
    if (!finalpub)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    r = smolvm_read_file(finalpub, 4096, &pub, NULL, err);
    if (r < 0)
        return r;
    pub[strcspn(pub, "\n")] = '\0';
    *key_path = TAKE_PTR(path);
    *pub_line = TAKE_PTR(pub);
    return 0;
}

int smolvm_vm_ssh_connect(smolvm_vm *vm, int64_t deadline, smolvm_error **err)
{
    _cleanup_free_ char *key = NULL, *pub = NULL, *hostpub = NULL, *hostpub_path = NULL;
    char host[16] = "127.0.0.1";
    int port = 22, r;

    if (vm->ssh)
        return 0;
    switch (vm->cfg->network) {
    case SMOLVM_NET_NAT:
        /* The host reaches the guest's own address through its TAP. */
        r = smolvm_store_lease_ip(vm->ctx->store, vm->id, vm->cfg->cidr, host, err);
        if (r < 0)
            return r;
        break;
    case SMOLVM_NET_USER:
        if ((r = smolvm_store_port_get(vm->ctx->store, vm->id, "ssh", &port, err)) < 0)
            return r;
        break;
    default:
        return smolvm_err(err, SMOLVM_ESTATE,
                          "vm '%s' has network 'none': commands and files need a network "
                          "(create it with network = \"user\" or \"nat\")",
                          vm->id);
    }
    if ((r = smolvm_client_key(&key, &pub, vm->ctx, err)) < 0)
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

int smolvm_vm_ssh_ensure(smolvm_vm *vm, int64_t deadline, smolvm_error **err)
{
    const char *status = smolvm_vm_status(vm);

    if (strcmp(status, "running") != 0) {
        smolvm_vm_ssh_drop(vm);
        return smolvm_err(err, SMOLVM_ESTATE, "vm '%s' is %s, not running (start it first)", vm->id,
                          status);
    }
    return smolvm_vm_ssh_connect(vm, deadline, err);
}

void smolvm_vm_ssh_drop(smolvm_vm *vm)
{
    vm->ssh = smolvm_ssh_free(vm->ssh);
}
