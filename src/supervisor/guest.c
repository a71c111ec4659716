/* SPDX-License-Identifier: MIT */
/* The VMM and the guest's channels: spawn, hvc0 lines, the bounded console, the agent
 * channel's hello, power-off. */
#include "supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.h"
#include "guest-lines.h"
#include "sock.h"
#include "util.h"

#define SPAWN_TIMEOUT_MS 30000
#define POWEROFF_CALL_MS 3000

/* ---------------------------------------------------------------- console */

static int console_open(sv *s)
{
    _cleanup_free_ char *path = smolvm_strdupf("%s/%s", s->spec->dir, SMOLVM_VMM_CONSOLE_LOG);

    if (!path)
        return -ENOMEM;
    if (s->console_fd >= 0)
        (void)close(s->console_fd);
    s->console_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    s->console_written = 0;
    return s->console_fd < 0 ? -errno : 0;
}

/* Keep the log at most console_max bytes: two halves, console.log.1 the older. */
static void console_rotate(sv *s)
{
    _cleanup_free_ char *cur = smolvm_strdupf("%s/%s", s->spec->dir, SMOLVM_VMM_CONSOLE_LOG);
    _cleanup_free_ char *old = smolvm_strdupf("%s/%s.1", s->spec->dir, SMOLVM_VMM_CONSOLE_LOG);

    if (!cur || !old)
        return;
    (void)rename(cur, old);
    if (console_open(s) < 0)
        sv_log(s, "console: reopen: %s", strerror(errno));
}

/* Firecracker has no hvc0: its init's milestones come on the serial console. */
static void console_milestones(sv *s, const char *data, size_t n);

static void console_io(sv_loop *loop, int fd, uint32_t events, void *data)
{
    sv *s = data;
    char buf[16384];
    ssize_t n;

    (void)loop;
    n = read(fd, buf, sizeof(buf));
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        /* Every writer is gone: the VMM exited (SIGCHLD says how). */
        sv_loop_del(s->loop, fd);
        (void)close(fd);
        s->console_rd = -1;
        return;
    }
    if (s->console_fd >= 0) {
        uint64_t half = s->spec->console_max / 2;
        size_t off = 0;

        while (off < (size_t)n) {
            size_t room = s->console_written < half ? (size_t)(half - s->console_written) : 0;
            size_t k = (size_t)n - off < room ? (size_t)n - off : room;
            ssize_t w;

            if (k == 0) {
                console_rotate(s);
                if (s->console_fd < 0)
                    break;
                continue;
            }
            w = write(s->console_fd, buf + off, k);
            if (w <= 0)
                break; /* the log is best effort; the guest never waits for it */
            off += (size_t)w;
            s->console_written += (uint64_t)w;
        }
    }
    if (s->spec->backend == SMOLVM_BACKEND_FIRECRACKER)
        console_milestones(s, buf, (size_t)n);
    (void)events;
}

/* ---------------------------------------------------------------- init's lines */

static void milestone(sv *s, const char *stage, int64_t ms)
{
    (void)snprintf(s->last_milestone, sizeof(s->last_milestone), "'%s' at %" PRId64 " ms", stage,
                   ms);
}

/* One line from the guest's init (hvc0, or the serial console on firecracker),
 * read by guest-lines.c. */
struct line_ctx {
    sv *s;
    bool console;
};

static void init_line(const char *line, void *payload)
{
    const struct line_ctx *lc = payload;
    sv *s = lc->s;
    sv_line l;

    sv_line_parse(&l, line, lc->console);
    switch (l.kind) {
    case SV_LINE_READY:
        milestone(s, "ready", l.ms);
        if (s->spec->transport == SMOLVM_SV_SSH)
            sv_guest_ready(s);
        break;
    case SV_LINE_FAILED: sv_guest_failed(s, l.text); break;
    case SV_LINE_POWEROFF: s->guest_poweroff = true; break;
    case SV_LINE_MILESTONE: milestone(s, l.stage, l.ms); break;
    case SV_LINE_OTHER: break;
    }
}

static void feed_lines(sv *s, char *buf, size_t *len, size_t cap, const char *data, size_t n,
                       bool console)
{
    struct line_ctx lc = {s, console};

    sv_lines_feed(buf, len, cap, data, n, init_line, &lc);
}

static void console_milestones(sv *s, const char *data, size_t n)
{
    if (s->state == SV_BOOTING)
        feed_lines(s, s->console_line, &s->console_line_len, sizeof(s->console_line) - 1, data, n,
                   true);
}

static void ctl_io(sv_loop *loop, int fd, uint32_t events, void *data)
{
    sv *s = data;
    char buf[1024];
    ssize_t n;

    (void)loop;
    (void)events;
    n = read(fd, buf, sizeof(buf));
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        sv_loop_del(s->loop, fd);
        (void)close(fd);
        s->ctl_fd = -1;
        return;
    }
    feed_lines(s, s->ctl_buf, &s->ctl_len, sizeof(s->ctl_buf) - 1, buf, (size_t)n, false);
}

/* ---------------------------------------------------------------- the agent channel */

static void agent_frame(sv_fconn *c, const smolvm_agent_header *h, const uint8_t *p, void *data)
{
    sv *s = data;

    if (!s->agent_hello) {
        json_t *j;

        if (h->type != SMOLVM_AGENT_HELLO) {
            sv_fconn_goaway(c, "EPROTO", "the first frame must be HELLO");
            return;
        }
        j = json_loadb((const char *)p, h->length, 0, NULL);
        if (!json_is_object(j) ||
            json_integer_value(json_object_get(j, "version")) != SMOLVM_AGENT_VERSION) {
            json_decref(j);
            sv_fconn_goaway(c, "EPROTO", "unsupported agent protocol version");
            return;
        }
        json_decref(s->agent_info);
        s->agent_info = j;
        s->agent_hello = true;
        milestone(s, "agent", json_integer_value(json_object_get(j, "uptime_ms")));
        if (s->spec->restore.set && s->state == SV_BOOTING)
            sv_identity_send(s); /* a restored guest is ready once it took its identity */
        else if (s->spec->transport == SMOLVM_SV_AGENT)
            sv_guest_ready(s);
        return;
    }
    if (sv_identity_frame(s, h, p))
        return;
    sv_relay_agent_frame(s, h, p);
}

static void agent_closed(sv_fconn *c, const char *why, void *data)
{
    sv *s = data;

    (void)c;
    s->agent = NULL;
    s->agent_hello = false;
    sv_log(s, "agent channel closed: %s", why);
    sv_relay_agent_lost(s, why);
}

static void agent_drained(sv_fconn *c, void *data)
{
    (void)c;
    sv_relay_agent_drained(data);
}

static const sv_fconn_ops agent_ops = {agent_frame, agent_closed, agent_drained};

static void agent_attach(sv *s, int fd)
{
    s->agent = sv_fconn_new(s->loop, fd, &agent_ops, s);
    if (!s->agent) {
        (void)close(fd);
        sv_log(s, "agent channel: out of memory");
        return;
    }
    if (s->spec->restore.set && s->spec->backend == SMOLVM_BACKEND_QEMU) {
        sv_restored_agent(s); /* its session goes on: no hello either way */
        return;
    }
    /* Our hello first: the agent sends its own when it accepts work. */
    (void)sv_fconn_send_json(s->agent, SMOLVM_AGENT_HELLO, 0, 0,
                             json_pack("{s:i, s:s}", "version", SMOLVM_AGENT_VERSION, "client",
                                       "smolvm-supervisor " SMOLVM_VERSION));
}

/* Firecracker: the agent connects to <vsock>_1024. One agent at a time. */
static void vsock_io(sv_loop *loop, int fd, uint32_t events, void *data)
{
    sv *s = data;
    int c;

    (void)loop;
    (void)events;
    c = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (c < 0)
        return;
    if (s->agent) {
        (void)close(c); /* only one agent connection */
        return;
    }
    agent_attach(s, c);
}

/* ---------------------------------------------------------------- start */

static int report(sv *s, const char *line)
{
    ssize_t w;

    if (s->status_fd < 0)
        return 0;
    do
        w = write(s->status_fd, line, strlen(line));
    while (w < 0 && errno == EINTR);
    (void)close(s->status_fd);
    s->status_fd = -1;
    return w < 0 ? -errno : 0;
}

static int fail_start(sv *s, smolvm_error *e)
{
    char line[1200];

    (void)snprintf(line, sizeof(line), "error %d %s\n", smolvm_error_code(e),
                   smolvm_error_message(e));
    for (char *p = line + 6; *p && p < line + sizeof(line) - 2; p++)
        if (*p == '\n' && p[1])
            *p = ' ';
    (void)report(s, line);
    smolvm_error_free(e);
    return -1;
}

int sv_guest_start(sv *s)
{
    smolvm_vmm_config *cfg = &s->spec->vmm;
    const smolvm_sv_restore *rs = &s->spec->restore;
    const smolvm_vmm_ops *ops = smolvm_vmm_ops_for(s->spec->backend);
    _cleanup_free_ char *vsock = NULL, *vsock_listener = NULL;
    smolvm_error *e = NULL;
    int console[2] = {-1, -1}, ctl[2] = {-1, -1}, agent[2] = {-1, -1};
    int64_t pid = 0;
    char line[96];
    int r;

    if (console_open(s) < 0)
        return fail_start(s,
                          (smolvm_err(&e, SMOLVM_EIO, "open console log: %s", strerror(errno)), e));
    if (pipe2(console, O_CLOEXEC) < 0)
        return fail_start(s, (smolvm_err_errno(&e, errno, "console pipe"), e));
    cfg->console_fd = console[1];
    if (s->spec->backend == SMOLVM_BACKEND_QEMU) {
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) < 0 ||
            socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, agent) < 0)
            return fail_start(s, (smolvm_err_errno(&e, errno, "guest channels"), e));
        cfg->ctl_fd = ctl[1];
        cfg->agent_fd = agent[1];
    } else {
        vsock = smolvm_strdupf("%s/%s", s->spec->dir, SMOLVM_SV_VSOCK);
        vsock_listener = smolvm_strdupf("%s_%d", vsock ? vsock : "", SMOLVM_AGENT_VSOCK_PORT);
        if (!vsock || !vsock_listener)
            return fail_start(s, (smolvm_err(&e, SMOLVM_ENOMEM, "out of memory"), e));
        (void)unlink(vsock);
        (void)unlink(vsock_listener);
        if (smolvm_unix_listen(vsock_listener, &s->vsock_listen, &e) < 0)
            return fail_start(s, e);
        cfg->vsock_uds = vsock;
    }
    if (sv_confine_prepare(s, &e) < 0) {
        sv_confine_release(s);
        return fail_start(s, e);
    }
    if (s->spec->shared_memory && !(rs->set && rs->mem_private)) {
        if (sv_mem_create(s, &e) < 0 || (rs->set && rs->mem && sv_mem_load(s, rs->mem, &e) < 0)) {
            sv_confine_release(s);
            return fail_start(s, (smolvm_err_wrap(&e, "guest memory"), e));
        }
        cfg->mem_fd = s->mem_fd;
    }
    if (rs->set) {
        smolvm_vmm_snapshot snap = {
            .state_path = rs->state, .mem_path = rs->mem, .shared_mem = rs->mem != NULL};

        if (rs->mem_private)
            cfg->mem_file = rs->mem;
        r = ops->restore
                ? ops->restore(cfg, &snap, &pid, &s->vmm_start, sv_now_ms() + SPAWN_TIMEOUT_MS, &e)
                : smolvm_err(&e, SMOLVM_EINVAL, "the %s backend cannot restore", ops->name);
    } else {
        r = ops->spawn(cfg, &pid, &s->vmm_start, sv_now_ms() + SPAWN_TIMEOUT_MS, &e);
    }
    /* The VMM holds its ends now (or failed): ours only from here. */
    (void)close(console[1]);
    if (ctl[1] >= 0)
        (void)close(ctl[1]);
    if (agent[1] >= 0)
        (void)close(agent[1]);
    cfg->console_fd = cfg->ctl_fd = cfg->agent_fd = -1;
    if (r < 0) {
        sv_confine_release(s);
        return fail_start(s, e);
    }
    s->vmm_pid = (pid_t)pid;
    if (s->spec->backend == SMOLVM_BACKEND_QEMU && sv_confine_spawned(s, &e) < 0) {
        /* Fail closed: a supervisor that kept full privileges does not serve a guest. */
        sv_guest_kill(s);
        sv_confine_release(s);
        return fail_start(s, (smolvm_err_wrap(&e, "confine the supervisor"), e));
    }
    s->console_rd = console[0];
    (void)fcntl(s->console_rd, F_SETFL, O_NONBLOCK);
    (void)sv_loop_add(s->loop, s->console_rd, EPOLLIN, console_io, s);
    if (ctl[0] >= 0) {
        s->ctl_fd = ctl[0];
        (void)fcntl(s->ctl_fd, F_SETFL, O_NONBLOCK);
        (void)sv_loop_add(s->loop, s->ctl_fd, EPOLLIN, ctl_io, s);
    }
    if (agent[0] >= 0)
        agent_attach(s, agent[0]);
    if (s->vsock_listen >= 0)
        (void)sv_loop_add(s->loop, s->vsock_listen, EPOLLIN, vsock_io, s);
    (void)snprintf(line, sizeof(line), "ok %ld %" PRIu64 "\n", (long)s->vmm_pid, s->vmm_start);
    (void)report(s, line);
    sv_log(s, "vmm pid %ld running after %lld ms", (long)s->vmm_pid,
           (long long)(sv_now_ms() - s->t0));
    return 0;
}

/* ---------------------------------------------------------------- state */

void sv_guest_ready(sv *s)
{
    if (s->state != SV_BOOTING)
        return;
    s->state = SV_READY;
    sv_log(s, "guest ready after %lld ms (%s)", (long long)(sv_now_ms() - s->t0),
           s->last_milestone);
    sv_relay_ready(s);
}

void sv_guest_failed(sv *s, const char *why)
{
    if (s->state != SV_BOOTING || s->failure[0])
        return;
    (void)snprintf(s->failure, sizeof(s->failure), "the guest reported an error: %.200s", why);
    sv_log(s, "%s", s->failure);
    sv_relay_goaway_all(s, "EVMM", s->failure);
}

void sv_guest_poweroff(sv *s)
{
    const smolvm_vmm_ops *ops = smolvm_vmm_ops_for(s->spec->backend);

    s->state = SV_STOPPING;
    /* A paused guest hears nothing: it powers off from where it was. */
    if (s->paused && ops->resume(s->spec->dir, sv_now_ms() + POWEROFF_CALL_MS, NULL) == 0)
        s->paused = false;
    if (s->agent && s->agent_hello) {
        /* A stream of our own; its reply is not waited for: the VMM exiting is. */
        (void)sv_fconn_send_json(s->agent, SMOLVM_AGENT_REQUEST, 0, ++s->next_agent_stream,
                                 json_pack("{s:s}", "op", "poweroff"));
        return;
    }
    if (s->ctl_fd >= 0) {
        static const char msg[] = "poweroff\n";

        if (write(s->ctl_fd, msg, sizeof(msg) - 1) == (ssize_t)sizeof(msg) - 1)
            return;
    }
    if (ops->poweroff && ops->poweroff(s->spec->dir, sv_now_ms() + POWEROFF_CALL_MS, NULL) == 0)
        return;
    sv_log(s, "poweroff: no way to ask the guest; killing the vmm");
    sv_guest_kill(s);
}

void sv_guest_kill(sv *s)
{
    int status;

    if (s->vmm_pid <= 0 || s->vmm_exited)
        return;
    (void)kill(s->vmm_pid, SIGKILL);
    while (waitpid(s->vmm_pid, &status, 0) < 0 && errno == EINTR)
        ;
    s->vmm_exited = true;
}
