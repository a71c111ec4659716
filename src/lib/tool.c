/* SPDX-License-Identifier: MIT */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/wait.h>

#include "error.h"
#include "proc.h"
#include "tool.h"

#define TOOL_OUTPUT_MAX (64 * 1024)

extern char **environ;

int smolvm_tool_run(char *const argv[], int64_t deadline, char **output, smolvm_error **err)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none, all;
    _cleanup_close_ int rd = -1, pidfd = -1;
    _cleanup_free_ char *buf = malloc(TOOL_OUTPUT_MAX + 1);
    int pipefd[2], r, status = 0, timed_out = 0;
    size_t n = 0;
    pid_t pid;

    if (!buf)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (pipe2(pipefd, O_CLOEXEC) < 0)
        return smolvm_err_errno(err, errno, "run '%s': pipe", argv[0]);
    rd = pipefd[0];
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
    posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2);
    /* A caller that blocks or ignores signals (an nginx worker ignores SIGPIPE; the
     * Lua binding's job threads block nginx's control signals) must not pass that on
     * to the tool: it gets an empty mask and default actions. */
    (void)sigemptyset(&none);
    (void)sigfillset(&all);
    posix_spawnattr_init(&attr);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    r = posix_spawnp(&pid, argv[0], &fa, &attr, argv, environ);
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
    (void)close(pipefd[1]);
    if (r != 0)
        return smolvm_err_errno(err, r, "run '%s'", argv[0]);

    pidfd = smolvm_pidfd_open(pid);
    /* Read until EOF (all writers gone) or the deadline. */
    for (;;) {
        struct pollfd p = {rd, POLLIN, 0};
        int left = smolvm_remaining_ms(deadline);
        ssize_t got;
        char sink[4096];

        if (left == 0) {
            timed_out = 1;
            break;
        }
        r = poll(&p, 1, left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            timed_out = r == 0;
            break;
        }
        if (n < TOOL_OUTPUT_MAX)
            got = read(rd, buf + n, TOOL_OUTPUT_MAX - n);
        else
            got = read(rd, sink, sizeof(sink));
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        if (n < TOOL_OUTPUT_MAX)
            n += (size_t)got;
    }
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    buf[n] = '\0';
    if (!timed_out && pidfd >= 0) {
        /* Output closed; the exit follows promptly but still gets a deadline. */
        struct pollfd p = {pidfd, POLLIN, 0};

        timed_out = poll(&p, 1, smolvm_remaining_ms(deadline)) == 0;
    }
    if (timed_out)
        (void)kill(pid, SIGKILL);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (timed_out)
        return smolvm_err(err, SMOLVM_ETIMEDOUT, "'%s' did not finish in time", argv[0]);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        char *nl;

        for (nl = buf; (nl = strchr(nl, '\n'));)
            *nl = ' ';
        if (WIFEXITED(status))
            return smolvm_err(err, SMOLVM_EIO, "'%s' exited with status %d: %.300s", argv[0],
                              WEXITSTATUS(status), *buf ? buf : "no output");
        return smolvm_err(err, SMOLVM_EIO, "'%s' was killed by signal %d", argv[0],
                          WTERMSIG(status));
    }
    if (output)
        *output = TAKE_PTR(buf);
    return 0;
}
