/* SPDX-License-Identifier: MIT */
/* ed25519 key pairs, made by OpenSSH's own ssh-keygen rather than by hand-writing the
 * OpenSSH private key format. Costs one process spawn (a few milliseconds). */
#include "ssh-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "error-internal.h"
#include "util-internal.h"

#define KEYGEN_TIMEOUT_MS 10000
#define COMMENT_MAX 256
#define STDERR_KEEP 1024

extern char **environ;

/* Kill and reap a child still running when the scope ends. */
static void reap_childp(pid_t *pid)
{
    if (*pid > 0) {
        (void)kill(*pid, SIGKILL);
        (void)waitpid(*pid, NULL, 0);
    }
}

struct tmpdir {
    char *path;
    char *key;
};

static void tmpdir_cleanup(struct tmpdir *t)
{
    if (t->path) {
        _cleanup_free_ char *pub = smolvm_strdupf("%s.pub", t->key ? t->key : "");

        if (t->key)
            (void)unlink(t->key);
        if (pub)
            (void)unlink(pub);
        (void)rmdir(t->path);
    }
    free(t->key);
    free(t->path);
}

static int spawn_keygen(pid_t *pid, int errfd, char *const argv[], smolvm_error **err)
{
    posix_spawn_file_actions_t fa;
    int e;

    if ((e = posix_spawn_file_actions_init(&fa)) != 0)
        return smolvm_err_errno(err, e, "run ssh-keygen");
    e = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    if (!e)
        e = posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    if (!e)
        e = posix_spawn_file_actions_adddup2(&fa, errfd, 2);
    if (!e) {
        /* The usual place first: the environment of a library's caller (nginx clears
         * it) may have no useful PATH. */
        e = posix_spawn(pid, "/usr/bin/ssh-keygen", &fa, NULL, argv, environ);
        if (e == ENOENT)
            e = posix_spawnp(pid, "ssh-keygen", &fa, NULL, argv, environ);
    }
    (void)posix_spawn_file_actions_destroy(&fa);
    if (e == ENOENT)
        return smolvm_err(err, SMOLVM_EHOST,
                          "run ssh-keygen: not found (install package 'openssh-client')");
    if (e)
        return smolvm_err_errno(err, e, "run ssh-keygen");
    return 0;
}

int smolvm_ssh_keygen(const char *path, const char *comment, smolvm_error **err)
{
    _cleanup_(tmpdir_cleanup) struct tmpdir tmp = {0};
    _cleanup_(reap_childp) pid_t pid = -1;
    _cleanup_close_ int rd = -1, wr = -1, pidfd = -1;
    _cleanup_free_ char *dir = NULL, *pub = NULL, *tmp_pub = NULL;
    char errbuf[STDERR_KEEP + 1];
    size_t errlen = 0;
    int64_t deadline;
    int status = 0, fds[2], r;
    bool exited = false, eof = false;
    char *slash;

    if (!path || !*path || strlen(path) > 4000)
        return smolvm_err(err, SMOLVM_EINVAL, "generate key: invalid path");
    if (!comment)
        comment = "smolvm";
    if (strlen(comment) > COMMENT_MAX || strpbrk(comment, "\r\n"))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "generate key '%s': comment must be one line of at most %d bytes", path,
                          COMMENT_MAX);
    dir = strdup(path);
    pub = smolvm_strdupf("%s.pub", path);
    if (!dir || !pub)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    slash = strrchr(dir, '/');
    if (slash)
        slash[slash == dir ? 1 : 0] = '\0';
    /* ssh-keygen asks before overwriting and writes in place: generate into a private
     * directory next to the target, then rename, so `path` is never half written. */
    tmp.path = smolvm_strdupf("%s/.smolvm-keygen-XXXXXX", slash ? dir : ".");
    if (!tmp.path)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (!mkdtemp(tmp.path)) {
        r = smolvm_err_errno(err, errno, "generate key '%s'", path);
        free(TAKE_PTR(tmp.path));
        return r;
    }
    tmp.key = smolvm_strdupf("%s/key", tmp.path);
    tmp_pub = smolvm_strdupf("%s/key.pub", tmp.path);
    if (!tmp.key || !tmp_pub)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");

    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0)
        return smolvm_err_errno(err, errno, "generate key '%s': pipe", path);
    rd = fds[0];
    wr = fds[1];
    {
        char *argv[] = {"ssh-keygen",    "-q", "-t",    "ed25519", "-N", "", "-C",
                        (char *)comment, "-f", tmp.key, NULL};

        r = spawn_keygen(&pid, wr, argv, err);
        if (r < 0)
            return smolvm_err_wrap(err, "generate key '%s'", path);
    }
    (void)close(TAKE_FD(wr));
    /* The pid stays ours (unreaped) until waitpid, so the pidfd cannot name another
     * process. Without pidfd (old kernel) stderr's EOF marks the exit. */
    pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    deadline = smolvm_now_ms() + KEYGEN_TIMEOUT_MS;
    while (!eof || (pidfd >= 0 && !exited)) {
        struct pollfd p[2] = {{.fd = eof ? -1 : rd, .events = POLLIN},
                              {.fd = exited ? -1 : pidfd, .events = POLLIN}};
        int left = smolvm_remaining_ms(deadline), n;

        if (left <= 0)
            return smolvm_err(err, SMOLVM_ETIMEDOUT,
                              "generate key '%s': ssh-keygen did not finish within %d ms", path,
                              KEYGEN_TIMEOUT_MS);
        n = poll(p, 2, left);
        if (n < 0 && errno != EINTR)
            return smolvm_err_errno(err, errno, "generate key '%s': poll", path);
        if (n <= 0)
            continue;
        if (p[1].revents)
            exited = true;
        if (p[0].revents) {
            char chunk[512];
            ssize_t got = read(rd, chunk, sizeof(chunk));

            if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) {
                eof = true;
            } else if (got > 0) {
                size_t keep = (size_t)got;

                if (keep > STDERR_KEEP - errlen)
                    keep = STDERR_KEEP - errlen;
                memcpy(errbuf + errlen, chunk, keep);
                errlen += keep;
            }
        }
    }
    if (waitpid(pid, &status, 0) < 0)
        return smolvm_err_errno(err, errno, "generate key '%s': wait for ssh-keygen", path);
    pid = -1;
    while (errlen && (errbuf[errlen - 1] == '\n' || errbuf[errlen - 1] == '\r'))
        errlen--;
    errbuf[errlen] = '\0';
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return smolvm_err(err, SMOLVM_EIO, "generate key '%s': ssh-keygen failed (%s %d)%s%s", path,
                          WIFEXITED(status) ? "exit status" : "signal",
                          WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status),
                          errlen ? ": " : "", errbuf);
    /* ssh-keygen already writes 0600; make it so whatever its version does. */
    if (chmod(tmp.key, 0600) < 0 || chmod(tmp_pub, 0644) < 0)
        return smolvm_err_errno(err, errno, "generate key '%s'", path);
    if (rename(tmp_pub, pub) < 0)
        return smolvm_err_errno(err, errno, "generate key '%s': install '%s'", path, pub);
    if (rename(tmp.key, path) < 0)
        return smolvm_err_errno(err, errno, "generate key '%s': install", path);
    return 0;
}
