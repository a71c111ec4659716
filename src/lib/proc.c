/* SPDX-License-Identifier: MIT */
/*
 * Tracking VMM processes that are not our children. A pid alone can be reused, so a
 * process is always named by pid plus its start time, and every signal or wait goes
 * through a pidfd opened before the start time is checked: once the pidfd is open it
 * cannot be redirected to a newer process with the same pid.
 */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>

#include "error.h"
#include "proc.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

#define STAT_MAX 4096 /* /proc/PID/stat is ~300 bytes; comm is at most 64 */

int smolvm_pidfd_open(pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

static int pidfd_send_signal_(int pidfd, int sig)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

/* Parse state (field 3) and starttime (field 22) from a /proc/PID/stat line. comm
 * (field 2) may contain spaces and parentheses, so fields are counted from the last
 * ')' in the line. */
static int parse_stat(const char *buf, char *state, uint64_t *start)
{
    const char *p = strrchr(buf, ')');
    char *end;
    int field;

    if (!p || p[1] != ' ' || !p[2])
        return -1;
    p += 2;
    *state = *p;
    /* p is at field 3; skip to field 22. */
    for (field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p)
            return -1;
        p++;
    }
    errno = 0;
    *start = strtoull(p, &end, 10);
    if (errno || end == p || (*end != ' ' && *end != '\n' && *end != '\0'))
        return -1;
    return 0;
}

static int read_stat(pid_t pid, char *state, uint64_t *start, smolvm_error **err)
{
    _cleanup_free_ char *buf = NULL;
    char path[64];
    int r;

    if (pid <= 0)
        return smolvm_err(err, SMOLVM_EINVAL, "invalid pid %ld", (long)pid);
    (void)snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
    if ((r = smolvm_read_file(path, STAT_MAX, &buf, NULL, err)) < 0)
        return r;
    if (parse_stat(buf, state, start) < 0)
        return smolvm_err(err, SMOLVM_EIO, "cannot parse '%s'", path);
    return 0;
}

int smolvm_pid_start_time(pid_t pid, uint64_t *out, smolvm_error **err)
{
    uint64_t start;
    char state;
    int r;

    r = read_stat(pid, &state, &start, err);
    if (r < 0)
        return r;
    *out = start;
    return 0;
}

int smolvm_pid_alive(pid_t pid, uint64_t start_time)
{
    uint64_t start;
    char state;

    if (read_stat(pid, &state, &start, NULL) < 0)
        return 0;
    return start == start_time && state != 'Z' && state != 'X';
}

/* A pidfd for pid, verified to be the process started at start_time. Returns the fd,
 * 0-or-positive; -ESRCH (as a plain negative errno) when the process is gone or is
 * another one; other negative errno on failure. */
static int open_verified(pid_t pid, uint64_t start_time)
{
    _cleanup_close_ int fd = -1;
    uint64_t start;
    char state;

    if (pid <= 0)
        return -EINVAL;
    fd = smolvm_pidfd_open(pid);
    if (fd < 0)
        return -errno;
    /* Checked after opening: if the start time matches now, the pidfd is ours. */
    if (read_stat(pid, &state, &start, NULL) < 0 || start != start_time)
        return -ESRCH;
    return TAKE_FD(fd);
}

/* Wait for a pidfd to become readable (the process exited). */
static int wait_pidfd(int fd, pid_t pid, int64_t deadline, smolvm_error **err)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, smolvm_remaining_ms(deadline));

        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return smolvm_err_errno(err, errno, "wait for process %ld", (long)pid);
        if (r > 0)
            return 0;
        return smolvm_err(err, SMOLVM_ETIMEDOUT, "process %ld still running at the deadline",
                          (long)pid);
    }
}

/* Without pidfds (kernel < 5.3, or valgrind, which does not know the syscall) there
 * is no event for the exit of a non-child: fall back to checking every 10 ms, still
 * bounded by the deadline. */
static int wait_without_pidfd(pid_t pid, uint64_t start_time, int64_t deadline, smolvm_error **err)
{
    for (;;) {
        struct timespec ts = {0, 10 * 1000 * 1000};

        if (!smolvm_pid_alive(pid, start_time))
            return 0;
        if (smolvm_remaining_ms(deadline) == 0)
            return smolvm_err(err, SMOLVM_ETIMEDOUT, "process %ld still running at the deadline",
                              (long)pid);
        (void)nanosleep(&ts, NULL);
    }
}

int smolvm_pid_wait_exit(pid_t pid, uint64_t start_time, int64_t deadline, smolvm_error **err)
{
    _cleanup_close_ int fd = open_verified(pid, start_time);

    if (fd == -ESRCH)
        return 0;
    if (fd == -ENOSYS)
        return wait_without_pidfd(pid, start_time, deadline, err);
    if (fd < 0)
        return smolvm_err_errno(err, -fd, "open pidfd for process %ld", (long)pid);
    return wait_pidfd(fd, pid, deadline, err);
}

int smolvm_pid_kill(pid_t pid, uint64_t start_time, int64_t deadline, smolvm_error **err)
{
    _cleanup_close_ int fd = open_verified(pid, start_time);

    if (fd == -ESRCH)
        return 0;
    if (fd == -ENOSYS) {
        /* No pidfd: a small window remains between the check and the kill. */
        if (!smolvm_pid_alive(pid, start_time))
            return 0;
        if (kill(pid, SIGKILL) < 0 && errno != ESRCH)
            return smolvm_err_errno(err, errno, "kill process %ld", (long)pid);
        return wait_without_pidfd(pid, start_time, deadline, err);
    }
    if (fd < 0)
        return smolvm_err_errno(err, -fd, "open pidfd for process %ld", (long)pid);
    if (pidfd_send_signal_(fd, SIGKILL) < 0 && errno != ESRCH)
        return smolvm_err_errno(err, errno, "kill process %ld", (long)pid);
    return wait_pidfd(fd, pid, deadline, err);
}

/* ---------------------------------------------------------------- spawn */

/* Messages from the intermediate child and the grandchild to the caller. Each is
 * written with one write() of less than PIPE_BUF bytes, so they never interleave. */
enum { MSG_PID = 1, MSG_SETUP_ERRNO = 2, MSG_EXEC_ERRNO = 3 };
struct spawn_msg {
    int kind;
    int value;
};

static void send_msg(int fd, int kind, int value)
{
    struct spawn_msg m = {kind, value};

    while (write(fd, &m, sizeof(m)) < 0 && errno == EINTR)
        ;
}

static bool is_kept(int fd, const int *keep, size_t n_keep)
{
    size_t i;

    for (i = 0; i < n_keep; i++)
        if (keep[i] == fd)
            return true;
    return false;
}

/* Mark every fd >= 3 close-on-exec except the kept ones. close_range(CLOEXEC) is
 * 5.11+; older kernels get a bounded fcntl loop (only async-signal-safe calls here). */
static void cloexec_all_but(const int *keep, size_t n_keep)
{
    long max;
    int fd;

    if (n_keep == 0 && syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) == 0)
        return;
    max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536)
        max = 65536;
    for (fd = 3; fd < max; fd++)
        if (!is_kept(fd, keep, n_keep))
            (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
}

/* The child's own confinement (smolvm_spawn_confine): only async-signal-safe calls. */
static int confine_child(const smolvm_spawn_confine *c)
{
    size_t i;
    int cap;

    for (i = 0; i < c->n_cgroup_procs_fds; i++) {
        ssize_t w = write(c->cgroup_procs_fds[i], "0", 1);

        if (w != 1)
            return w < 0 ? errno : EIO;
    }
    if (c->set_oom_score_adj) {
        char buf[16];
        int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC), e = 0;
        ssize_t n, w;
        int v = c->oom_score_adj < 0 ? -c->oom_score_adj : c->oom_score_adj;
        char *p = buf + sizeof(buf);

        if (fd < 0)
            return errno;
        /* No snprintf between fork and exec: the digits by hand. */
        do
            *--p = (char)('0' + v % 10);
        while ((v /= 10) > 0);
        if (c->oom_score_adj < 0)
            *--p = '-';
        n = buf + sizeof(buf) - p;
        w = write(fd, p, (size_t)n);
        if (w != n)
            e = w < 0 ? errno : EIO;
        (void)close(fd);
        if (e)
            return e;
    }
    if (c->lifeline_fd >= 0) {
        int fl = fcntl(c->lifeline_fd, F_GETFL);

        if (fl < 0 || fcntl(c->lifeline_fd, F_SETOWN, getpid()) < 0 ||
            fcntl(c->lifeline_fd, F_SETSIG, SIGKILL) < 0 ||
            fcntl(c->lifeline_fd, F_SETFL, fl | O_ASYNC) < 0)
            return errno;
    }
    if (c->bounding_keep)
        for (cap = 0; cap < 64; cap++) {
            if (c->bounding_keep & (UINT64_C(1) << cap))
                continue;
            if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
                if (errno == EINVAL)
                    break; /* past the kernel's last capability */
                return errno;
            }
        }
    if (c->no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return errno;
    return 0;
}

static _Noreturn void exec_child(const smolvm_spawn_req *req, int msg_fd, int null_fd, int log_fd)
{
    sigset_t none;
    size_t i;
    int sig;

    /* A caller that blocks or ignores signals (nginx ignores SIGPIPE) must not pass
     * that on to the VMM. Handlers are reset by exec; SIG_IGN and the mask are not. */
    for (sig = 1; sig < NSIG; sig++)
        (void)signal(sig, SIG_DFL);
    (void)sigemptyset(&none);
    (void)sigprocmask(SIG_SETMASK, &none, NULL);

    if (dup2(null_fd, STDIN_FILENO) < 0 || dup2(log_fd, STDOUT_FILENO) < 0 ||
        dup2(log_fd, STDERR_FILENO) < 0) {
        send_msg(msg_fd, MSG_SETUP_ERRNO, errno);
        _exit(127);
    }
    if (req->stdout_fd >= 0 && dup2(req->stdout_fd, STDOUT_FILENO) < 0) {
        send_msg(msg_fd, MSG_SETUP_ERRNO, errno);
        _exit(127);
    }
    for (i = 0; i < req->n_keep; i++) {
        int flags = fcntl(req->keep_fds[i], F_GETFD);

        if (flags < 0 || fcntl(req->keep_fds[i], F_SETFD, flags & ~FD_CLOEXEC) < 0) {
            send_msg(msg_fd, MSG_SETUP_ERRNO, errno);
            _exit(127);
        }
    }
    if (req->cwd && chdir(req->cwd) < 0) {
        send_msg(msg_fd, MSG_SETUP_ERRNO, errno);
        _exit(127);
    }
    if (req->confine) {
        int e = confine_child(req->confine);

        if (e) {
            send_msg(msg_fd, MSG_SETUP_ERRNO, e);
            _exit(127);
        }
    }
    cloexec_all_but(req->keep_fds, req->n_keep);
    execvp(req->argv[0], req->argv);
    send_msg(msg_fd, MSG_EXEC_ERRNO, errno);
    _exit(127);
}

/*
 * The two processes of a detached spawn, made with vfork: fork() copies the caller's
 * page tables while holding its address-space lock, and in a large multi-threaded
 * caller (an nginx worker, where this runs on a job thread of the Lua binding) every
 * other thread that faults or maps memory meanwhile waits for it (measured: 30-70 ms
 * stalls of the worker's event loop on a loaded host). The vfork children share the
 * caller's memory and make only system calls until they exec or exit; all signals
 * stay blocked in them until exec_child resets them, so no handler of the caller's
 * runs on its stack. Returns the intermediate child's pid (it has exited by the time
 * this returns), or -1 with errno.
 *
 * AddressSanitizer builds fork instead: ASan intercepts _exit (to run its leak check)
 * and other calls, which a vfork child, sharing the caller's memory, must not run
 * (measured: smolvm-lua ended silently with status 0 right after the spawn).
 */
#if defined(__SANITIZE_ADDRESS__)
#define detached_fork() fork()
#else
#define detached_fork() vfork()
#endif

static pid_t vfork_detached(const smolvm_spawn_req *req, int rd, int wr, int null_fd, int log_fd)
{
    sigset_t all, old;
    pid_t child;

    (void)sigfillset(&all);
    (void)pthread_sigmask(SIG_SETMASK, &all, &old);
    child = detached_fork();
    if (child == 0) {
        pid_t gc;

        (void)close(rd);
        /* A new session: no controlling terminal, not in the caller's process group,
         * so terminal signals and group kills aimed at the caller miss the VMM. */
        if (setsid() < 0) {
            send_msg(wr, MSG_SETUP_ERRNO, errno);
            _exit(1);
        }
        gc = detached_fork();
        if (gc < 0) {
            send_msg(wr, MSG_SETUP_ERRNO, errno);
            _exit(1);
        }
        if (gc == 0)
            exec_child(req, wr, null_fd, log_fd);
        send_msg(wr, MSG_PID, (int)gc);
        _exit(0);
    }
    (void)pthread_sigmask(SIG_SETMASK, &old, NULL);
    return child;
}

int smolvm_spawn(const smolvm_spawn_req *req, pid_t *out_pid, smolvm_error **err)
{
    _cleanup_close_ int null_fd = -1, log_fd = -1, rd = -1, wr = -1;
    int pipefd[2], status;
    pid_t child, pid = -1, parent = getpid();
    struct spawn_msg m;
    int exec_errno = 0, setup_errno = 0;
    size_t i;

    if (!req->argv || !req->argv[0] || !req->log_path)
        return smolvm_err(err, SMOLVM_EINVAL, "spawn: missing argv or log path");
    for (i = 0; i < req->n_keep; i++)
        if (req->keep_fds[i] <= STDERR_FILENO)
            return smolvm_err(err, SMOLVM_EINVAL, "spawn: cannot pass fd %d through",
                              req->keep_fds[i]);

    null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null_fd < 0)
        return smolvm_err_errno(err, errno, "open '/dev/null'");
    log_fd = open(req->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOCTTY, 0600);
    if (log_fd < 0)
        return smolvm_err_errno(err, errno, "open log '%s'", req->log_path);
    if (pipe2(pipefd, O_CLOEXEC) < 0)
        return smolvm_err_errno(err, errno, "pipe");
    rd = pipefd[0];
    wr = pipefd[1];

    child = req->detached ? vfork_detached(req, rd, wr, null_fd, log_fd) : fork();
    if (child < 0)
        return smolvm_err_errno(err, errno, "fork");
    if (child == 0) {
        (void)close(rd);
        /* A new session: no controlling terminal, not in the caller's process group,
         * so terminal signals and group kills aimed at the caller miss the VMM. */
        if (setsid() < 0) {
            send_msg(wr, MSG_SETUP_ERRNO, errno);
            _exit(1);
        }
        /* A child that dies with its parent, even by SIGKILL. The parent may have
         * died between fork and prctl: then there is nobody to serve. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent) {
            send_msg(wr, MSG_SETUP_ERRNO, errno ? errno : ESRCH);
            _exit(1);
        }
        send_msg(wr, MSG_PID, (int)getpid());
        exec_child(req, wr, null_fd, log_fd);
    }

    (void)close(TAKE_FD(wr));
    if (req->detached)
        while (waitpid(child, &status, 0) < 0 && errno == EINTR)
            ;
    /* EOF once the (grand)child has exec'd (its copy of the pipe is close-on-exec) or
     * died. */
    for (;;) {
        ssize_t r = read(rd, &m, sizeof(m));

        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return smolvm_err_errno(err, errno, "spawn '%s': read status", req->argv[0]);
        if (r == 0)
            break;
        if (r != sizeof(m))
            return smolvm_err(err, SMOLVM_EIO, "spawn '%s': short status message", req->argv[0]);
        if (m.kind == MSG_PID)
            pid = (pid_t)m.value;
        else if (m.kind == MSG_EXEC_ERRNO)
            exec_errno = m.value;
        else if (m.kind == MSG_SETUP_ERRNO)
            setup_errno = m.value;
    }
    if (!req->detached && (exec_errno || setup_errno))
        while (waitpid(child, &status, 0) < 0 && errno == EINTR)
            ;
    if (exec_errno)
        return smolvm_err_errno(err, exec_errno, "execute '%s'", req->argv[0]);
    if (setup_errno || pid <= 0)
        return smolvm_err_errno(err, setup_errno ? setup_errno : EIO, "spawn '%s'", req->argv[0]);
    *out_pid = pid;
    return 0;
}

int smolvm_spawn_detached(char *const argv[], const char *log_path, int keep_fd, pid_t *out_pid,
                          smolvm_error **err)
{
    smolvm_spawn_req req = {
        .argv = argv,
        .log_path = log_path,
        .keep_fds = &keep_fd,
        .n_keep = keep_fd >= 0 ? 1 : 0,
        .stdout_fd = -1,
        .detached = true,
    };

    return smolvm_spawn(&req, out_pid, err);
}

int smolvm_pid_find_vmm(const char *dir, const char *pidfile, pid_t *pid, uint64_t *start)
{
    _cleanup_free_ char *path = smolvm_strdupf("%s/%s", dir, pidfile);
    _cleanup_free_ char *text = NULL, *cmdline_path = NULL, *cmdline = NULL;
    size_t len = 0, i;
    long p;

    if (!path || smolvm_read_file(path, 64, &text, NULL, NULL) < 0)
        return 0;
    p = strtol(text, NULL, 10);
    if (p <= 1 || p > INT32_MAX)
        return 0;
    cmdline_path = smolvm_strdupf("/proc/%ld/cmdline", p);
    if (!cmdline_path || smolvm_read_file(cmdline_path, 1 << 20, &cmdline, &len, NULL) < 0)
        return 0;
    for (i = 0; i < len; i++)
        if (cmdline[i] == '\0')
            cmdline[i] = ' ';
    if (!strstr(cmdline, dir) || smolvm_pid_start_time((pid_t)p, start, NULL) < 0)
        return 0;
    *pid = (pid_t)p;
    return smolvm_pid_alive(*pid, *start);
}
