/* SPDX-License-Identifier: MIT */
/*
 * Helpers for tests that build network namespaces of their own (test_proxy, test_dns):
 * checks that end a namespace child, shell commands, namespace holders, running a
 * function in a namespace. Header-only; each test includes it once.
 */
#ifndef SMOLVM_TEST_NETNS_UTIL_H
#define SMOLVM_TEST_NETNS_UTIL_H

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "smolvm.h"

/* Inside a namespace child: a failed check prints and ends the child with 1. */
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            _exit(1);                                                                              \
        }                                                                                          \
    } while (0)
#define OK(call)                                                                                   \
    do {                                                                                           \
        smolvm_error *e_ = NULL;                                                                   \
        int r_ = (call);                                                                           \
        CHECK(r_ == 0, "%s -> %d: %s", #call, r_, e_ ? smolvm_error_message(e_) : "");             \
        smolvm_error_free(e_);                                                                     \
    } while (0)

static inline void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    int r;

    va_start(ap, fmt);
    (void)vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    r = system(cmd);
    CHECK(r == 0, "'%s' exited %d", cmd, r);
}

static inline int64_t now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

typedef struct ns {
    pid_t pid;
    char path[64]; /* /proc/PID/ns/net */
} ns;

/* A process holding a new network namespace (killed with its parent). */
static inline ns ns_new(void)
{
    int p[2];
    char c;
    ns n = {0};

    CHECK(pipe(p) == 0, "pipe");
    n.pid = fork();
    CHECK(n.pid >= 0, "fork");
    if (n.pid == 0) {
        (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (unshare(CLONE_NEWNET) < 0)
            _exit(1);
        (void)write(p[1], "x", 1);
        for (;;)
            pause();
    }
    close(p[1]);
    CHECK(read(p[0], &c, 1) == 1, "namespace helper did not start");
    close(p[0]);
    (void)snprintf(n.path, sizeof(n.path), "/proc/%d/ns/net", (int)n.pid);
    return n;
}

/* Run fn in namespace n (NULL: this one) in a child; its exit status is the result. */
static inline pid_t in_ns(const ns *n, void (*fn)(void *), void *arg)
{
    pid_t pid = fork();

    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (n) {
            int fd = open(n->path, O_RDONLY | O_CLOEXEC);

            if (fd < 0 || setns(fd, CLONE_NEWNET) < 0)
                _exit(99);
            close(fd);
        }
        fn(arg);
        _exit(0);
    }
    return pid;
}

static inline int wait_status(pid_t pid)
{
    int status = 0;

    CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
    return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
}

/* Run body in a fresh network namespace (a child); 0 when it exited 0. The lock file
 * the network module made for that namespace (lock_path, from
 * smolvm_net_lock_path, may be NULL) is removed whatever happened. */
static inline int run_in_new_netns(void (*body)(void), unsigned alarm_s,
                                   int (*lock_path)(char *, size_t, smolvm_error **))
{
    char lock[128] = "";
    int status = 0, p[2];
    pid_t pid;
    ssize_t n;

    if (pipe(p) < 0 || (pid = fork()) < 0)
        return -1;
    if (pid == 0) {
        (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(p[0]);
        if (unshare(CLONE_NEWNET) < 0) {
            perror("unshare(CLONE_NEWNET)");
            _exit(1);
        }
        if (lock_path && lock_path(lock, sizeof(lock), NULL) == 0)
            (void)write(p[1], lock, strlen(lock));
        close(p[1]);
        alarm(alarm_s); /* a hung test ends here, with its namespaces */
        sh("ip link set lo up");
        body();
        _exit(0);
    }
    close(p[1]);
    n = read(p[0], lock, sizeof(lock) - 1);
    close(p[0]);
    lock[n > 0 ? n : 0] = '\0';
    if (waitpid(pid, &status, 0) != pid)
        status = -1;
    if (lock[0])
        (void)unlink(lock);
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "isolated test failed (status 0x%x)\n", status);
        return -1;
    }
    return 0;
}

/* 0 when this process can make network namespaces and has the tools; else the reason. */
static inline const char *netns_unusable(void)
{
    int status = 0;
    pid_t pid;

    if (geteuid() != 0)
        return "needs root (network namespaces, CAP_NET_ADMIN)";
    if (system("command -v ip >/dev/null && command -v nsenter >/dev/null") != 0)
        return "needs ip (iproute2) and nsenter (util-linux)";
    pid = fork();
    if (pid == 0)
        _exit(unshare(CLONE_NEWNET) == 0 ? 0 : 1);
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0)
        return "cannot create a network namespace here";
    return NULL;
}

#endif
