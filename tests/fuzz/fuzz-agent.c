/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: arbitrary bytes from a "client" into the agent's frame, stream and
 * JSON handling (src/guest/agent-*.c), over a real socketpair and the real event loop.
 * exec is refused after its request is checked, file operations are confined to a
 * temporary sandbox ('..' refused), identity and poweroff go to hooks that do nothing.
 * The agent lives across inputs, like a long-running one; each input is a connection.
 */
#define _GNU_SOURCE
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct agent *agent;
static char sandbox[64];
static unsigned long runs;

static int no_identity(const struct agent_identity *id, void *payload, const char **code, char *err,
                       size_t errlen)
{
    (void)id, (void)payload, (void)code, (void)err, (void)errlen;
    return 0;
}

static void no_poweroff(void *payload)
{
    (void)payload;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)ftw;
    if (ftw->level == 0)
        return 0; /* keep the sandbox itself */
    return (flag == FTW_DP ? rmdir(path) : unlink(path)) < 0 ? 0 : 0;
}

static void cleanup(void)
{
    if (sandbox[0]) {
        (void)nftw(sandbox, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        (void)rmdir(sandbox);
    }
    agent = agent_free(agent);
}

static void init(void)
{
    snprintf(sandbox, sizeof(sandbox), "/tmp/smolvm-fuzz-agent-XXXXXX");
    if (!mkdtemp(sandbox))
        abort();
    static struct agent_options o;
    o = (struct agent_options){.listen_fd = -1,
                               .exit_when_idle = 1,
                               .no_exec = 1,
                               .file_root = sandbox,
                               .identity = no_identity,
                               .poweroff = no_poweroff,
                               .default_cwd = sandbox};
    signal(SIGPIPE, SIG_IGN);
    if (!(agent = agent_new(&o)))
        abort();
    atexit(cleanup);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t sink[1 << 16];
    int sv[2];
    size_t sent = 0;

    if (!agent)
        init();
    if (++runs % 1000 == 0) /* what the inputs wrote stays bounded */
        (void)nftw(sandbox, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0)
        abort();
    if (agent_add_channel(agent, sv[1], AGENT_CHANNEL_SOCKET) < 0)
        abort();
    /* Feed the input, read everything back, until the agent closes its end. */
    for (int turn = 0; turn < 100000; turn++) {
        if (sent < size) {
            ssize_t n = write(sv[0], data + sent, size - sent);
            if (n > 0)
                sent += (size_t)n;
            if (sent == size)
                (void)shutdown(sv[0], SHUT_WR);
        } else if (size == 0 && turn == 0) {
            (void)shutdown(sv[0], SHUT_WR);
        }
        if (agent_step(agent, 0) < 0)
            abort();
        ssize_t n;
        int closed = 0;
        while ((n = read(sv[0], sink, sizeof(sink))) > 0)
            ;
        if (n == 0)
            closed = 1;
        else if (errno != EAGAIN)
            closed = 1;
        if (closed && sent == size)
            break;
    }
    close(sv[0]);
    /* Let the agent notice and free the connection. */
    for (int i = 0; i < 4 && agent_step(agent, 0) > 0; i++)
        ;
    return 0;
}
