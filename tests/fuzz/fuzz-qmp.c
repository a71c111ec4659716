/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the QMP client (src/lib/vmm/qmp.c): any bytes as everything a
 * VMM says on its QMP socket, served over a socketpair by a thread (which then closes
 * its side and drains what the client sends). The client goes through a whole session
 * (greeting and capabilities, commands, an fd handed over, an event, the VMM's exit);
 * each call must return, with 0 or an error that has a message, and never crash.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "error.h"
#include "util.h"
#include "vmm/qmp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CALL_MS 2000 /* every byte is there at once: nothing waits this long */

struct peer {
    int fd;
    const uint8_t *data;
    size_t size;
};

static void *serve(void *arg)
{
    struct peer *p = arg;
    char sink[4096];
    size_t off = 0;

    while (off < p->size) {
        ssize_t w = send(p->fd, p->data + off, p->size - off, MSG_NOSIGNAL);

        if (w <= 0)
            break; /* the client closed its side */
        off += (size_t)w;
    }
    (void)shutdown(p->fd, SHUT_WR);
    while (read(p->fd, sink, sizeof(sink)) > 0)
        ;
    (void)close(p->fd);
    return NULL;
}

/* 0, or an error with a message (the error is freed). */
static void checked(int r, smolvm_error **err)
{
    if (r > 0 || (r < 0 && (!*err || !smolvm_error_message(*err)[0])))
        abort();
    *err = smolvm_error_free(*err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct peer p = {.data = data, .size = size};
    smolvm_qmp *q = NULL;
    smolvm_error *err = NULL;
    json_t *ret = NULL, *ev = NULL, *args;
    pthread_t t;
    int sv[2], devnull, r;

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        abort();
    p.fd = sv[1];
    if (pthread_create(&t, NULL, serve, &p) != 0)
        abort();
    r = smolvm_qmp_open_fd(&q, sv[0], smolvm_now_ms() + CALL_MS, &err);
    checked(r, &err);
    if (r == 0) {
        if (strlen(smolvm_qmp_version(q)) >= 48)
            abort();
        r = smolvm_qmp_execute(q, "query-status", NULL, &ret, smolvm_now_ms() + CALL_MS, &err);
        checked(r, &err);
        json_decref(ret);
        devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (devnull >= 0) {
            checked(smolvm_qmp_getfd(q, "fuzz", devnull, smolvm_now_ms() + CALL_MS, &err), &err);
            (void)close(devnull);
        }
        args = json_pack("{s:s}", "uri", "fd:fuzz");
        checked(smolvm_qmp_execute(q, "migrate", args, NULL, smolvm_now_ms() + CALL_MS, &err),
                &err);
        json_decref(args);
        checked(smolvm_qmp_wait_event(q, "STOP", &ev, smolvm_now_ms() + CALL_MS, &err), &err);
        json_decref(ev);
        checked(smolvm_qmp_execute(q, "quit", NULL, NULL, smolvm_now_ms() + CALL_MS, &err), &err);
        checked(smolvm_qmp_wait_closed(q, smolvm_now_ms() + CALL_MS, &err), &err);
        q = smolvm_qmp_free(q);
    }
    (void)pthread_join(t, NULL);
    return 0;
}
