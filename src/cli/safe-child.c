/* SPDX-License-Identifier: MIT */
/*
 * safe_eval_forked (safe-recipe.h): the --safe evaluation in a child process that
 * cannot do more than compute and hand its result back.
 *
 * The child: default signal dispositions, dies with its parent (PR_SET_PDEATHSIG),
 * no new privileges, stdin/stdout/stderr on /dev/null and no other descriptor but its
 * result pipe (fd 3), RLIMIT_CPU, no core dumps, no file growth, no further
 * descriptors (RLIMIT_NOFILE 4), and then a seccomp filter (libseccomp) that allows
 * only what a Lua state needs to compute and write its result: memory (brk, mmap
 * without PROT_EXEC, munmap, mremap, madvise), the clock, write to fd 3, exit (and
 * sigaltstack, which the sanitizers' longjmp asks). Any
 * other system call kills it (SIGSYS), so even a recipe that broke the Lua VM could
 * not open a file or run a program. The parent reads the result within the
 * wall-clock deadline, kills the child past it (or on `stop`), and reaps it.
 */
#define _GNU_SOURCE
#include "safe-recipe.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <seccomp.h>

#define RESULT_SLACK (1u << 20) /* bytes of a result beyond the memory budget */
#define RESULT_FD 3

__attribute__((format(printf, 1, 2))) static char *strdupf(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    int r;

    va_start(ap, fmt);
    r = vasprintf(&s, fmt, ap);
    va_end(ap);
    return r < 0 ? NULL : s;
}

static const char *display_name(const char *chunk)
{
    return chunk[0] == '@' || chunk[0] == '=' ? chunk + 1 : chunk;
}

/* Only computing and writing the result: everything else kills the process. */
static int confine(void)
{
    static const int allowed[] = {
        SCMP_SYS(brk),          SCMP_SYS(munmap),        SCMP_SYS(mremap),
        SCMP_SYS(madvise),      SCMP_SYS(exit),          SCMP_SYS(exit_group),
        SCMP_SYS(rt_sigreturn), SCMP_SYS(clock_gettime), SCMP_SYS(gettimeofday),
        SCMP_SYS(time),         SCMP_SYS(futex),         SCMP_SYS(sigaltstack),
    };
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
    size_t i;
    int r = ctx ? 0 : -ENOMEM;

    for (i = 0; r == 0 && i < sizeof(allowed) / sizeof(allowed[0]); i++)
        r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, allowed[i], 0);
    if (r == 0) /* memory, never executable */
        r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(mmap), 1,
                             SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
    if (r == 0) /* the result, nowhere else */
        r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(write), 1,
                             SCMP_A0(SCMP_CMP_EQ, RESULT_FD));
    if (r == 0)
        r = seccomp_load(ctx);
    seccomp_release(ctx);
    return r;
}

static int64_t now_ms(void)
{
    struct timespec ts;

    (void)clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* In the child: confine, evaluate, write 'D' + data or 'E' + message to fd 3. */
static void __attribute__((noreturn))
child(int fd, pid_t parent, const safe_input *in, const safe_limits *lim)
{
    struct rlimit cpu = {lim->cpu_seconds, lim->cpu_seconds + 1}, none = {0, 0}, files = {4, 4};
    char *out = NULL, *err = NULL;
    size_t len = 0;
    int null, r;

    (void)signal(SIGINT, SIG_DFL);
    (void)signal(SIGTERM, SIG_DFL);
    (void)signal(SIGPIPE, SIG_DFL);
    (void)signal(SIGWINCH, SIG_DFL);
    (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);
    (void)prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    if (fd != RESULT_FD && dup2(fd, RESULT_FD) < 0)
        _exit(127);
    null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
        (void)dup2(null, 0);
        (void)dup2(null, 1);
        (void)dup2(null, 2);
    }
    closefrom(RESULT_FD + 1);
    (void)setrlimit(RLIMIT_CPU, &cpu);
    (void)setrlimit(RLIMIT_FSIZE, &none);
    (void)setrlimit(RLIMIT_CORE, &none);
    (void)setrlimit(RLIMIT_NOFILE, &files);
    if ((r = confine()) < 0) {
        /* Fail closed: no evaluation without the filter. */
        char msg[128];
        int n = snprintf(msg, sizeof(msg), "Ecannot confine the --safe evaluation (seccomp: %s)",
                         strerror(-r));

        (void)write_all(RESULT_FD, msg, n > 0 ? (size_t)n : 0);
        _exit(125);
    }
    r = safe_eval(in, lim, &out, &len, &err);
    if (r == 0)
        r = write_all(RESULT_FD, "D", 1) || write_all(RESULT_FD, out, len);
    else
        r = write_all(RESULT_FD, "E", 1) || write_all(RESULT_FD, err, strlen(err));
    _exit(r == 0 ? 0 : 126);
}

int safe_eval_forked(const safe_input *in, const safe_limits *lim, char **out, size_t *outlen,
                     char **err)
{
    const char *name = display_name(in->name);
    int64_t deadline = now_ms() + (int64_t)lim->wall_seconds * 1000;
    size_t cap = lim->memory + RESULT_SLACK, len = 0, size = 0;
    pid_t parent = getpid(), pid;
    char *buf = NULL, *why = NULL;
    int p[2], status = 0, timed_out = 0, stopped = 0;

    if (pipe2(p, O_CLOEXEC) < 0) {
        *err = strdupf("%s: --safe: pipe: %s", name, strerror(errno));
        return -1;
    }
    fflush(NULL); /* nothing buffered is written twice */
    pid = fork();
    if (pid < 0) {
        *err = strdupf("%s: --safe: fork: %s", name, strerror(errno));
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0) {
        close(p[0]);
        child(p[1], parent, in, lim);
    }
    close(p[1]);
    for (;;) {
        struct pollfd pf = {.fd = p[0], .events = POLLIN};
        int64_t left = deadline - now_ms();
        ssize_t n;
        int w;

        if (left <= 0) {
            timed_out = 1;
            break;
        }
        w = poll(&pf, 1, (int)(left > 60000 ? 60000 : left));
        if (w < 0 && errno == EINTR) {
            if (lim->stop && *lim->stop) {
                stopped = 1;
                break;
            }
            continue;
        }
        if (w <= 0)
            continue;
        if (len == size) {
            size_t nsize = size ? size * 2 : 65536;
            char *nb;

            if (size >= cap || !(nb = realloc(buf, nsize > cap ? cap : nsize))) {
                why = strdupf("%s: the --safe result is larger than its budget", name);
                break;
            }
            buf = nb;
            size = nsize > cap ? cap : nsize;
        }
        n = read(p[0], buf + len, size - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(p[0]);
    if (timed_out || stopped || why)
        (void)kill(pid, SIGKILL);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (stopped)
        why = strdupf("%s: interrupted", name);
    else if (timed_out)
        why = strdupf("%s: the recipe ran longer than %u s (the --safe deadline)", name,
                      lim->wall_seconds);
    else if (!why && WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);

        if (sig == SIGXCPU || sig == SIGKILL)
            why = strdupf("%s: the recipe used more than %u s of CPU time (the --safe budget)",
                          name, lim->cpu_seconds);
        else if (sig == SIGSYS)
            why = strdupf("%s: the --safe evaluation made a system call it may not (killed by "
                          "its seccomp filter)",
                          name);
        else
            why = strdupf("%s: the --safe evaluation ended by signal %d", name, sig);
    } else if (!why && (len == 0 || (buf[0] != 'D' && buf[0] != 'E')))
        why = strdupf("%s: the --safe evaluation gave no result (exit status %d)", name,
                      WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    if (why) {
        free(buf);
        *err = why ? why : strdup("not enough memory");
        return -1;
    }
    if (buf[0] == 'E') {
        *err = strndup(buf + 1, len - 1);
        free(buf);
        if (!*err)
            *err = strdup("not enough memory");
        return -1;
    }
    memmove(buf, buf + 1, len - 1);
    *out = buf;
    *outlen = len - 1;
    return 0;
}
