/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the Firecracker API client (src/lib/vmm/fc-api.c, libcurl under
 * it): any bytes as the raw HTTP answer on the API socket. A thread plays the VMM on a
 * unix socket in a temporary directory: for each request it reads the request (headers
 * and Content-Length body), answers with the input and closes. The client asks for the
 * instance info, the version and an action (the error path quotes a fault message);
 * each call must return 0 or an error with a message, whatever the answer.
 */
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "error.h"
#include "util.h"
#include "vmm/fc-api.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CALL_MS 2000
#define PEER_MS 3000 /* the thread's own bound on each wait */
#define CALLS 3

static char sock_path[108];
static int listen_fd = -1;

struct peer {
    const uint8_t *data;
    size_t size;
};

static int wait_in(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};

    return poll(&p, 1, PEER_MS) == 1 ? 0 : -1;
}

/* Read one HTTP request: headers, then Content-Length bytes of body. */
static void read_request(int fd)
{
    char buf[16384];
    size_t len = 0, want = 0;
    char *end = NULL;

    while (len < sizeof(buf) - 1) {
        ssize_t n;

        if (end && len >= want)
            return;
        if (wait_in(fd) < 0 || (n = read(fd, buf + len, sizeof(buf) - 1 - len)) <= 0)
            return;
        len += (size_t)n;
        buf[len] = '\0';
        if (!end && (end = strstr(buf, "\r\n\r\n"))) {
            const char *cl = strcasestr(buf, "\r\ncontent-length:");

            want = (size_t)(end + 4 - buf);
            if (cl && cl < end)
                want += strtoul(cl + 17, NULL, 10);
        }
    }
}

static void *serve(void *arg)
{
    const struct peer *p = arg;

    for (int i = 0; i < CALLS; i++) {
        size_t off = 0;
        int c;

        if (wait_in(listen_fd) < 0)
            break;
        c = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0)
            break;
        read_request(c);
        while (off < p->size) {
            ssize_t w = send(c, p->data + off, p->size - off, MSG_NOSIGNAL);

            if (w <= 0)
                break;
            off += (size_t)w;
        }
        (void)close(c);
    }
    return NULL;
}

static char sock_dir[32];

/* The socket and its directory go when the run ends (the replay in every ctest run,
 * libFuzzer's exit). */
static void cleanup(void)
{
    if (listen_fd >= 0)
        (void)close(listen_fd);
    (void)unlink(sock_path);
    (void)rmdir(sock_dir);
}

static void setup(void)
{
    char *dir = sock_dir;
    struct sockaddr_un a = {.sun_family = AF_UNIX};

    (void)snprintf(sock_dir, sizeof(sock_dir), "/tmp/smolvm-fuzz-fc-XXXXXX");
    if (!mkdtemp(dir))
        abort();
    (void)atexit(cleanup);
    (void)snprintf(sock_path, sizeof(sock_path), "%s/api.sock", dir);
    memcpy(a.sun_path, sock_path, strlen(sock_path) + 1);
    listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        listen(listen_fd, 8) < 0)
        abort();
}

static void checked(int r, smolvm_error **err)
{
    if (r > 0 || (r < 0 && (!*err || !smolvm_error_message(*err)[0])))
        abort();
    *err = smolvm_error_free(*err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct peer p = {data, size};
    smolvm_fc_api *api = NULL;
    smolvm_error *err = NULL;
    json_t *info = NULL;
    char *version = NULL;
    pthread_t t;
    int r;

    if (listen_fd < 0)
        setup();
    if (smolvm_fc_api_new(&api, sock_path, &err) < 0)
        abort();
    if (pthread_create(&t, NULL, serve, &p) != 0)
        abort();
    r = smolvm_fc_describe(api, &info, smolvm_now_ms() + CALL_MS, &err);
    checked(r, &err);
    if (r == 0 && !json_is_string(json_object_get(info, "state")))
        abort();
    json_decref(info);
    r = smolvm_fc_version(api, &version, smolvm_now_ms() + CALL_MS, &err);
    checked(r, &err);
    if (r == 0 && !version)
        abort();
    free(version);
    checked(smolvm_fc_action(api, "InstanceStart", smolvm_now_ms() + CALL_MS, &err), &err);
    (void)pthread_join(t, NULL);
    smolvm_fc_api_free(api);
    return 0;
}
