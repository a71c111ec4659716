/* SPDX-License-Identifier: MIT */
/*
 * smolvm-supervisor [--status-fd N] VM_DIR
 *
 * Started detached by libsmolvm's start (src/lib/vm-supervisor.c) with the launch spec
 * in VM_DIR/supervisor.json. Reports "ok <vmm pid> <vmm start time>" or
 * "error <code> <message>" on fd N once the VMM runs, then serves the VM until it ends.
 * docs/supervisor.md says what it does and why.
 */
#include "supervisor.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "util.h"

#define STOP_GRACE_MS 10000

void sv_log(sv *s, const char *fmt, ...)
{
    char line[1024];
    struct timespec ts;
    struct tm tm;
    va_list ap;
    int n;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = (int)strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    n += snprintf(line + n, sizeof(line) - (size_t)n, ".%03ldZ %s: ", ts.tv_nsec / 1000000,
                  s && s->spec ? s->spec->vm_id : "supervisor");
    va_start(ap, fmt);
    (void)vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    /* Guest text may be in the message: one line, no control characters. */
    for (char *p = line; *p; p++)
        if ((unsigned char)*p < 0x20)
            *p = ' ';
    fprintf(stderr, "%s\n", line);
}

static void stop_timeout(sv_loop *loop, void *data)
{
    sv *s = data;

    (void)loop;
    sv_log(s, "the guest did not power off in time; killing the vmm");
    sv_guest_kill(s);
    sv_vmm_gone(s, SIGKILL);
}

static void signal_io(sv_loop *loop, int fd, uint32_t events, void *data)
{
    sv *s = data;
    struct signalfd_siginfo si;

    (void)events;
    while (read(fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGCHLD) {
            int status;
            pid_t p;

            while ((p = waitpid(-1, &status, WNOHANG)) > 0)
                if (p == s->vmm_pid)
                    sv_vmm_gone(s, status);
        } else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT || si.ssi_signo == SIGHUP) {
            if (s->state != SV_STOPPING) {
                sv_log(s, "signal %d: powering the guest off", (int)si.ssi_signo);
                sv_guest_poweroff(s);
                (void)sv_loop_timer(loop, sv_now_ms() + STOP_GRACE_MS, stop_timeout, s);
            }
        }
    }
}

int main(int argc, char **argv)
{
    sv s = {.status_fd = -1,
            .ctl_fd = -1,
            .console_rd = -1,
            .console_fd = -1,
            .vsock_listen = -1,
            .listen_fd = -1,
            .mem_fd = -1,
            .uid_lock = -1,
            .lifeline_wr = -1,
            .owner_pidfd = -1};
    smolvm_error *e = NULL;
    sigset_t mask;
    const char *dir;
    int i = 1;

    if (argc >= 3 && strcmp(argv[1], "--status-fd") == 0) {
        s.status_fd = atoi(argv[2]);
        i = 3;
    }
    if (argc != i + 1 || argv[i][0] != '/') {
        fprintf(stderr, "usage: smolvm-supervisor [--status-fd N] /ABSOLUTE/VM/DIR\n");
        return 2;
    }
    dir = argv[i];
    s.t0 = sv_now_ms();
    (void)signal(SIGPIPE, SIG_IGN);
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    (void)sigprocmask(SIG_BLOCK, &mask, NULL);
    s.signal_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    s.loop = sv_loop_new();
    if (s.signal_fd < 0 || !s.loop) {
        fprintf(stderr, "supervisor: %s\n", strerror(errno));
        return 1;
    }
    if (smolvm_sv_spec_read(&s.spec, dir, &e) < 0) {
        char line[600];

        (void)snprintf(line, sizeof(line), "error %d %s\n", smolvm_error_code(e),
                       smolvm_error_message(e));
        if (s.status_fd >= 0 && write(s.status_fd, line, strlen(line)) < 0)
            sv_log(&s, "report: %s", strerror(errno));
        sv_log(&s, "%s", smolvm_error_message(e));
        return 1;
    }
    (void)sv_loop_add(s.loop, s.signal_fd, EPOLLIN, signal_io, &s);
    /* Clients may connect as soon as the launcher hears "ok": listen first. */
    /* The network's services before the guest: its first query finds its resolver. */
    if (sv_relay_listen(&s) < 0 || sv_net_start(&s) < 0 || sv_guest_start(&s) < 0)
        return 1;
    if (sv_lifetime_start(&s) < 0)
        return 1;
    if (sv_loop_run(s.loop) < 0) {
        sv_log(&s, "event loop: %s", strerror(errno));
        sv_guest_kill(&s);
        return 1;
    }
    return 0;
}
