/* SPDX-License-Identifier: MIT */
#include "util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "error.h"
#include "vm-ports.h"

bool smolvm_port_bindable(const char *addr, int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    _cleanup_close_ int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;

    if (fd < 0 || inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
        return false;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    return bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
}

static int bindable_on_loopback(int port, void *payload)
{
    (void)payload;
    return smolvm_port_bindable("127.0.0.1", port);
}

int smolvm_vm_ssh_port_alloc(int *port, smolvm_store *s, const char *vm_id, smolvm_error **err)
{
    uint16_t rnd = 0;
    int lo, r;

    /* Start at a random point of the range: controllers with different state dirs do
     * not see each other's reservations, and lowest-first would make them all race
     * for the same port between the bind check and QEMU's bind. */
    (void)smolvm_random(&rnd, sizeof(rnd), NULL);
    lo = SMOLVM_SSH_PORT_MIN + rnd % (SMOLVM_SSH_PORT_MAX - SMOLVM_SSH_PORT_MIN + 1);
    r = smolvm_store_port_alloc(s, vm_id, "ssh", "127.0.0.1", lo, SMOLVM_SSH_PORT_MAX, 22, "tcp",
                                bindable_on_loopback, NULL, port, err);
    if (r == SMOLVM_ENOSPC && lo > SMOLVM_SSH_PORT_MIN) {
        if (err)
            *err = smolvm_error_free(*err);
        r = smolvm_store_port_alloc(s, vm_id, "ssh", "127.0.0.1", SMOLVM_SSH_PORT_MIN, lo - 1, 22,
                                    "tcp", bindable_on_loopback, NULL, port, err);
    }
    return r < 0 ? smolvm_err_wrap(err, "allocate a host port for ssh") : 0;
}

int smolvm_vm_ports_revalidate(smolvm_ctx *ctx, const char *vm_id, smolvm_error **err)
{
    _cleanup_free_ smolvm_port_row *rows = NULL;
    size_t n = 0, i;
    int r, port;

    if ((r = smolvm_store_ports_list(&rows, &n, ctx->store, vm_id, err)) < 0)
        return r;
    for (i = 0; i < n; i++) {
        const smolvm_port_row *p = &rows[i];

        if (smolvm_port_bindable(p->host_address, p->host_port))
            continue;
        if (p->kind == SMOLVM_PORT_FORWARD)
            return smolvm_err(err, SMOLVM_EEXIST,
                              "forward %s:%d: the port is in use by another program",
                              p->host_address, p->host_port);
        smolvm_log(ctx, SMOLVM_LOG_INFO, "vm '%s': ssh port %d was taken; moving", vm_id,
                   p->host_port);
        if ((r = smolvm_store_port_remove(ctx->store, vm_id, p->host_address, p->host_port,
                                          p->proto, err)) < 0 ||
            (r = smolvm_vm_ssh_port_alloc(&port, ctx->store, vm_id, err)) < 0)
            return r;
    }
    return 0;
}

int smolvm_vm_hostfwds(smolvm_vmm_hostfwd **out, size_t *n_out, smolvm_port_row **rows_out,
                       smolvm_store *s, const char *vm_id, smolvm_error **err)
{
    _cleanup_free_ smolvm_port_row *rows = NULL;
    _cleanup_free_ smolvm_vmm_hostfwd *h = NULL;
    size_t n = 0, i, k = 1;
    int r, ssh = -1;

    if ((r = smolvm_store_ports_list(&rows, &n, s, vm_id, err)) < 0)
        return r;
    if (!(h = calloc(n + 1, sizeof(*h))))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    for (i = 0; i < n; i++) {
        if (rows[i].kind == SMOLVM_PORT_SSH && ssh < 0) {
            ssh = (int)i;
            h[0] = (smolvm_vmm_hostfwd){rows[i].host_address, rows[i].host_port, 22};
        } else if (rows[i].kind == SMOLVM_PORT_FORWARD) {
            h[k++] =
                (smolvm_vmm_hostfwd){rows[i].host_address, rows[i].host_port, rows[i].guest_port};
        }
    }
    if (ssh < 0)
        return smolvm_err(err, SMOLVM_ENOENT, "ssh host port: vm '%s' has no 'ssh' port", vm_id);
    *out = TAKE_PTR(h);
    *n_out = k;
    *rows_out = TAKE_PTR(rows);
    return 0;
}
