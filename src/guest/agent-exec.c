/* SPDX-License-Identifier: MIT */
/*
 * Processes: exec (posix_spawn, never fork: under TCG copying the parent's page
 * tables is most of what a command costs), PTYs, the bounded process table, and each
 * process's output ring. Output flows pipe -> ring -> every attached stream, each
 * from its own cursor: a pipe is read only as far as the slowest reader's window lets
 * the ring hold (docs/agent-protocol.md, "Flow control"); with no reader attached the
 * ring keeps the last 64 KiB and drops the oldest.
 */
#define _GNU_SOURCE
#include "agent-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define PATH_DEFAULT "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* ------------------------------------------------------------------ the ring */

static unsigned seg_last(const struct ring *r)
{
    return (r->seg_first + r->seg_count - 1) % RING_SEGS;
}

static void seg_drop_first(struct ring *r)
{
    r->seg_first = (r->seg_first + 1) % RING_SEGS;
    r->seg_count--;
    if (r->seg_count > 0 && r->segs[r->seg_first].start > r->tail)
        r->tail = r->segs[r->seg_first].start;
}

/* Copy n bytes at absolute position pos out of the ring. */
static void ring_iov(const struct ring *r, uint64_t pos, size_t n, struct iovec iov[2])
{
    size_t off = (size_t)(pos % r->cap);
    size_t first = n < r->cap - off ? n : r->cap - off;
    iov[0].iov_base = r->buf + off;
    iov[0].iov_len = first;
    iov[1].iov_base = r->buf;
    iov[1].iov_len = n - first;
}

static int ring_grow(struct ring *r, size_t need)
{
    size_t cap = r->cap ? r->cap : 4096;
    while (cap < need && cap < SMOLVM_AGENT_REPLAY_MAX)
        cap *= 2;
    if (cap <= r->cap)
        return 0;
    uint8_t *nb = malloc(cap);
    if (!nb)
        return -1;
    size_t kept = (size_t)(r->head - r->tail);
    if (kept > 0) {
        struct iovec from[2];
        ring_iov(r, r->tail, kept, from);
        /* New positions are pos % cap: place the kept bytes there. */
        size_t off = (size_t)(r->tail % cap), done = 0;
        for (int i = 0; i < 2; i++) {
            const uint8_t *src = from[i].iov_base;
            for (size_t left = from[i].iov_len; left > 0;) {
                size_t dpos = (off + done) % cap;
                size_t k = left < cap - dpos ? left : cap - dpos;
                memcpy(nb + dpos, src, k);
                src += k;
                left -= k;
                done += k;
            }
        }
    }
    free(r->buf);
    r->buf = nb;
    r->cap = cap;
    return 0;
}

static uint64_t min_cursor(const struct proc *p)
{
    uint64_t m = p->ring.head;
    for (const struct stream *s = p->readers; s; s = s->next_reader)
        if (s->cursor < m)
            m = s->cursor;
    return m;
}

/* How much of output fd `which` (1, 2) may be read now without overwriting what an
 * attached reader has not sent yet. */
static size_t read_allowance(const struct proc *p, int which)
{
    const struct ring *r = &p->ring;
    if (!p->readers)
        return SMOLVM_AGENT_FRAME_MAX;
    uint64_t mc = min_cursor(p), lag = r->head - mc;
    if (lag >= SMOLVM_AGENT_REPLAY_MAX)
        return 0;
    if (r->seg_count == RING_SEGS && r->segs[seg_last(r)].fd != which &&
        mc < r->segs[(r->seg_first + 1) % RING_SEGS].start)
        return 0; /* a new fd segment would drop one a reader still needs */
    size_t allow = SMOLVM_AGENT_REPLAY_MAX - (size_t)lag;
    return allow < SMOLVM_AGENT_FRAME_MAX ? allow : SMOLVM_AGENT_FRAME_MAX;
}

/* Read at most max bytes of fd into the ring as output `which`. */
static ssize_t ring_read(struct ring *r, int fd, int which, size_t max)
{
    size_t kept = (size_t)(r->head - r->tail);
    if (ring_grow(r, kept + max) < 0)
        return -1;
    if (max > r->cap)
        max = r->cap;
    struct iovec iov[2];
    ring_iov(r, r->head, max, iov);
    ssize_t n = readv(fd, iov, iov[1].iov_len ? 2 : 1);
    if (n <= 0)
        return n;
    if (r->seg_count == 0 || r->segs[seg_last(r)].fd != which) {
        if (r->seg_count == RING_SEGS) {
            r->tail = r->segs[(r->seg_first + 1) % RING_SEGS].start;
            seg_drop_first(r);
        }
        unsigned i = (r->seg_first + r->seg_count) % RING_SEGS;
        r->segs[i].start = r->head;
        r->segs[i].fd = (uint8_t)which;
        r->seg_count++;
    }
    r->head += (uint64_t)n;
    if (r->head - r->tail > r->cap)
        r->tail = r->head - r->cap;
    while (r->seg_count > 1 && r->segs[(r->seg_first + 1) % RING_SEGS].start <= r->tail)
        seg_drop_first(r);
    return n;
}

/* The output fd of position pos and where its run ends. */
static int ring_seg_at(const struct ring *r, uint64_t pos, uint64_t *end)
{
    int fd = 1;
    *end = r->head;
    for (unsigned k = 0; k < r->seg_count; k++) {
        unsigned i = (r->seg_first + k) % RING_SEGS;
        if (r->segs[i].start > pos) {
            *end = r->segs[i].start;
            break;
        }
        fd = r->segs[i].fd;
    }
    return fd;
}

/* ------------------------------------------------------------------ the table */

static void reader_attach(struct proc *p, struct stream *s)
{
    s->proc = p;
    s->prev_reader = NULL;
    s->next_reader = p->readers;
    if (p->readers)
        p->readers->prev_reader = s;
    p->readers = s;
}

static void reader_detach(struct stream *s)
{
    struct proc *p = s->proc;
    if (!p)
        return;
    if (s->prev_reader)
        s->prev_reader->next_reader = s->next_reader;
    else
        p->readers = s->next_reader;
    if (s->next_reader)
        s->next_reader->prev_reader = s->prev_reader;
    if (p->stdin_owner == s)
        p->stdin_owner = NULL;
    s->proc = NULL;
    s->next_reader = s->prev_reader = NULL;
}

void proc_free(struct proc *p)
{
    if (!p)
        return;
    while (p->readers)
        reader_detach(p->readers);
    agent_unwatch_close(p->agent, &p->w_out[0]);
    agent_unwatch_close(p->agent, &p->w_out[1]);
    agent_unwatch_close(p->agent, &p->w_in);
    free(p->ring.buf);
    buf_free(&p->inbuf);
    free(p->cmd);
    free(p);
}

static int proc_forgettable(const struct proc *p)
{
    return !p->running && p->exit_ready && p->w_out[0].fd < 0 && p->w_out[1].fd < 0 && !p->readers;
}

static void proc_forget(struct agent *a, size_t i)
{
    proc_free(a->procs[i]);
    memmove(&a->procs[i], &a->procs[i + 1], (a->n_procs - i - 1) * sizeof(a->procs[0]));
    a->n_procs--;
}

/* Room for one more entry: the oldest that has ended is forgotten. */
static int procs_make_room(struct agent *a)
{
    if (a->n_procs < SMOLVM_AGENT_PROCS_MAX)
        return 0;
    for (size_t i = 0; i < a->n_procs; i++) /* kept in start order */
        if (proc_forgettable(a->procs[i])) {
            proc_forget(a, i);
            return 0;
        }
    return -1;
}

static struct proc *proc_find(struct agent *a, pid_t pid, int running_only)
{
    for (size_t i = a->n_procs; i-- > 0;)
        if (a->procs[i]->pid == pid && (!running_only || a->procs[i]->running))
            return a->procs[i];
    return NULL;
}

static void proc_kill(struct proc *p)
{
    if (!p->running)
        return;
    (void)kill(-p->pid, SIGKILL);
    if (!p->killed) {
        p->killed = 1;
        p->kill_deadline = agent_now_ms() + KILL_WAIT_MS;
    }
}

/* ------------------------------------------------------------------ stdin */

static void stdin_grant(struct proc *p)
{
    struct stream *o = p->stdin_owner;
    if (!o)
        return;
    uint64_t held = (uint64_t)o->recv_window + p->inbuf.len;
    if (held >= STDIN_WINDOW)
        return;
    uint32_t g = (uint32_t)(STDIN_WINDOW - held);
    if (g < 16384 && p->inbuf.len > 0)
        return; /* wait for a worthwhile increment */
    uint8_t inc[4] = {(uint8_t)(g >> 24), (uint8_t)(g >> 16), (uint8_t)(g >> 8), (uint8_t)g};
    struct iovec v = {.iov_base = inc, .iov_len = 4};
    conn_send(o->conn, SMOLVM_AGENT_WINDOW, o->id, 0, 0, &v, 1);
    o->recv_window += g;
}

static void stdin_close(struct proc *p)
{
    agent_unwatch_close(p->agent, &p->w_in);
    buf_free(&p->inbuf);
}

static void stdin_write(struct proc *p)
{
    while (p->inbuf.len > 0 && p->w_in.fd >= 0) {
        ssize_t n = write(p->w_in.fd, p->inbuf.p + p->inbuf.start, p->inbuf.len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0) { /* the process closed its stdin: what is left has no reader */
            stdin_close(p);
            break;
        }
        buf_consume(&p->inbuf, (size_t)n);
    }
    if (p->inbuf.len == 0 && p->stdin_eof && p->w_in.fd >= 0)
        stdin_close(p);
    stdin_grant(p);
}

void exec_stdin(struct stream *s, const uint8_t *data, size_t n)
{
    struct proc *p = s->proc;
    if (!p || p->stdin_owner != s || p->stdin_eof || p->w_in.fd < 0) {
        /* Nowhere to go: drop it, but give the window back so the client is not stuck. */
        s->recv_window += (uint32_t)n;
        return;
    }
    if (buf_append(&p->inbuf, data, n) < 0) {
        s->recv_window += (uint32_t)n;
        return;
    }
    stdin_write(p);
}

void exec_stdin_eof(struct stream *s)
{
    struct proc *p = s->proc;
    if (!p || p->stdin_owner != s || p->stdin_eof)
        return;
    if (p->pty) {
        /* A terminal has no end of input: the line discipline's EOF character is it. */
        struct termios t;
        uint8_t eof = 4;
        if (p->w_in.fd >= 0 && tcgetattr(p->w_in.fd, &t) == 0 && t.c_cc[VEOF])
            eof = t.c_cc[VEOF];
        if (p->w_in.fd >= 0)
            (void)buf_append(&p->inbuf, &eof, 1);
    }
    p->stdin_eof = 1;
    stdin_write(p);
}

/* ------------------------------------------------------------------ control */

static int signal_number(const char *name)
{
    if (strncmp(name, "SIG", 3) == 0)
        name += 3;
    for (int i = 1; i < NSIG; i++) {
        const char *n = sigabbrev_np(i);
        if (n && strcmp(n, name) == 0)
            return i;
    }
    return -1;
}

void exec_control(struct stream *s, json_t *ctl)
{
    struct proc *p = s->proc;
    const char *op = json_string_value(json_object_get(ctl, "op"));
    if (!p || !op)
        return;
    if (strcmp(op, "signal") == 0) {
        const char *name = json_string_value(json_object_get(ctl, "signal"));
        int sig = name ? signal_number(name) : -1;
        if (sig < 0 || !p->running)
            return;
        if (sig == SIGKILL)
            proc_kill(p);
        else
            (void)kill(-p->pid, sig);
    } else if (strcmp(op, "resize") == 0 && p->pty && p->w_out[0].fd >= 0) {
        json_t *r = json_object_get(ctl, "rows"), *c = json_object_get(ctl, "cols");
        if (!json_is_integer(r) || !json_is_integer(c) || json_integer_value(r) < 1 ||
            json_integer_value(r) > 65535 || json_integer_value(c) < 1 ||
            json_integer_value(c) > 65535)
            return;
        struct winsize ws = {.ws_row = (unsigned short)json_integer_value(r),
                             .ws_col = (unsigned short)json_integer_value(c)};
        (void)ioctl(p->w_out[0].fd, TIOCSWINSZ, &ws);
    }
}

void exec_reset(struct stream *s)
{
    struct proc *p = s->proc;
    if (!p)
        return;
    if (s->kind == S_EXEC && !s->keep)
        proc_kill(p);
    reader_detach(s);
}

/* ------------------------------------------------------------------ output */

static json_t *exit_json(const struct proc *p)
{
    json_t *sig = json_null();
    long long code = -1;
    if (WIFEXITED(p->status)) {
        code = WEXITSTATUS(p->status);
    } else if (WIFSIGNALED(p->status)) {
        const char *n = sigabbrev_np(WTERMSIG(p->status));
        char num[16];
        snprintf(num, sizeof(num), "%d", WTERMSIG(p->status));
        sig = json_string(n ? n : num);
    }
    return json_pack("{s:I, s:o, s:b, s:I}", "exit_code", (json_int_t)code, "signal", sig,
                     "timed_out", p->timed_out, "duration_ms", (json_int_t)p->duration_ms);
}

int exec_pump(struct stream *s)
{
    struct proc *p = s->proc;
    struct conn *c = s->conn;
    struct ring *r;

    if (!p)
        return 0;
    r = &p->ring;
    if (s->cursor < r->tail)
        s->cursor = r->tail;
    if (s->cursor < r->head) {
        if (s->send_window == 0)
            return 0;
        uint64_t end;
        int fd = ring_seg_at(r, s->cursor, &end);
        uint64_t n = end - s->cursor;
        if (n > s->send_window)
            n = s->send_window;
        if (n > c->data_max)
            n = c->data_max;
        struct iovec iov[2];
        ring_iov(r, s->cursor, (size_t)n, iov);
        conn_send(c, SMOLVM_AGENT_DATA, s->id, 0, (uint8_t)fd, iov, 2);
        s->cursor += n;
        s->send_window -= (uint32_t)n;
        return 1;
    }
    int progress = 0;
    for (int fd = 1; fd <= 2; fd++)
        if (!s->eof_sent[fd] && p->eof_at[fd] != EOF_OPEN && s->cursor >= p->eof_at[fd]) {
            conn_send(c, SMOLVM_AGENT_EOF, s->id, 0, (uint8_t)fd, NULL, 0);
            s->eof_sent[fd] = 1;
            progress = 1;
        }
    if (s->eof_sent[1] && s->eof_sent[2] && p->exit_ready) {
        conn_send_json(c, SMOLVM_AGENT_EXIT, s->id, SMOLVM_AGENT_FIN, exit_json(p));
        reader_detach(s);
        stream_close(s);
        return 1;
    }
    return progress;
}

static void out_eof(struct proc *p, int i)
{
    p->eof_at[i + 1] = p->ring.head;
    agent_unwatch_close(p->agent, &p->w_out[i]);
}

void proc_event(struct proc *p, int which, uint32_t events)
{
    if (which < 0) {
        if (events & (EPOLLERR | EPOLLHUP)) {
            stdin_close(p);
            stdin_grant(p);
        } else {
            stdin_write(p);
        }
        return;
    }
    size_t allow = read_allowance(p, which + 1);
    if (allow == 0 || p->w_out[which].fd < 0)
        return; /* interest goes away in procs_update */
    ssize_t n = ring_read(&p->ring, p->w_out[which].fd, which + 1, allow);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
        out_eof(p, which); /* EOF; a PTY master says EIO once the terminal is gone */
}

/* ------------------------------------------------------------------ lifecycle */

void procs_reap(struct agent *a)
{
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        struct proc *p = proc_find(a, pid, 1);
        if (!p)
            continue; /* an orphan we adopted as subreaper */
        p->running = 0;
        p->status = st;
        p->duration_ms = agent_now_ms() - p->t0;
        if (!p->killed)
            p->exit_ready = 1;
    }
    /* After a kill, EXIT waits until no process of the group is left. */
    for (size_t i = 0; i < a->n_procs; i++) {
        struct proc *p = a->procs[i];
        if (!p->running && !p->exit_ready && p->killed && kill(-p->pid, SIGKILL) < 0 &&
            errno == ESRCH)
            p->exit_ready = 1;
    }
}

void procs_tick(struct agent *a, int64_t now)
{
    for (size_t i = 0; i < a->n_procs; i++) {
        struct proc *p = a->procs[i];
        if (p->running && p->deadline && now >= p->deadline) {
            p->timed_out = 1;
            p->deadline = 0;
            proc_kill(p);
        }
        if (!p->running && !p->exit_ready && p->killed && now >= p->kill_deadline)
            p->exit_ready = 1; /* something of the group would not die: report anyway */
    }
}

int64_t procs_next_deadline(struct agent *a)
{
    int64_t d = -1;
    for (size_t i = 0; i < a->n_procs; i++) {
        struct proc *p = a->procs[i];
        if (p->running && p->deadline && (d < 0 || p->deadline < d))
            d = p->deadline;
        if (p->killed && !p->exit_ready && (d < 0 || p->kill_deadline < d))
            d = p->kill_deadline;
    }
    return d;
}

void procs_update(struct agent *a)
{
    for (size_t i = 0; i < a->n_procs; i++) {
        struct proc *p = a->procs[i];
        /* A killed group is gone: whatever still holds its pipes (a process that left
         * the group) does not keep its EXIT back. */
        if (p->killed && p->exit_ready)
            for (int k = 0; k < 2; k++)
                if (p->w_out[k].fd >= 0)
                    out_eof(p, k);
        for (int k = 0; k < 2; k++)
            (void)agent_watch(a, &p->w_out[k], read_allowance(p, k + 1) > 0 ? EPOLLIN : 0);
        (void)agent_watch(a, &p->w_in, p->inbuf.len > 0 ? EPOLLOUT : 0);
    }
}

void procs_clear(struct agent *a)
{
    for (size_t i = a->n_procs; i-- > 0;) {
        struct proc *p = a->procs[i];
        if (p->readers)
            continue;
        if (proc_forgettable(p)) {
            proc_forget(a, i);
        } else {
            p->ring.tail = p->ring.head;
            p->ring.seg_count = 0;
        }
    }
}

void procs_kill_all(struct agent *a)
{
    for (size_t i = 0; i < a->n_procs; i++) {
        struct proc *p = a->procs[i];
        if (p->running) {
            (void)kill(-p->pid, SIGKILL);
            (void)waitpid(p->pid, NULL, 0);
            p->running = 0;
        }
    }
}

/* ------------------------------------------------------------------ exec */

struct spawn_req {
    const char *cmd;
    const char *argv[SMOLVM_AGENT_ARGV_MAX + 1];
    size_t argc;
    const char *env[SMOLVM_AGENT_ENV_MAX];
    size_t n_env;
    const char *cwd;
    int want_stdin, pty, keep;
    unsigned rows, cols;
    long long timeout_ms;
    uint32_t window;
};

static int valid_env(const char *s)
{
    const char *p = s;
    if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || *p == '_'))
        return 0;
    for (p++; *p && *p != '='; p++)
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
              *p == '_'))
            return 0;
    return *p == '=';
}

static int parse_exec(struct agent *a, json_t *req, struct spawn_req *r, char *err, size_t n)
{
    json_t *argv = json_object_get(req, "argv"), *env = json_object_get(req, "env");
    json_t *pty = json_object_get(req, "pty"), *v;
    const char *on_reset = "kill";
    size_t i;

    memset(r, 0, sizeof(*r));
    r->cwd = a->o.default_cwd ? a->o.default_cwd : "/root";
    r->rows = 24;
    r->cols = 80;
    if (req_string(req, "cmd", &r->cmd, err, n) < 0 ||
        req_string(req, "cwd", &r->cwd, err, n) < 0 ||
        req_string(req, "on_reset", &on_reset, err, n) < 0 ||
        req_bool(req, "stdin", &r->want_stdin, err, n) < 0 ||
        req_int(req, "timeout_ms", 1, 1LL << 40, &r->timeout_ms, err, n) < 0 ||
        req_window(req, &r->window, err, n) < 0)
        return -1;
    if (argv && json_is_null(argv))
        argv = NULL;
    if (!r->cmd == !argv) {
        snprintf(err, n, "expected one of 'cmd' (a string) or 'argv' (an array)");
        return -1;
    }
    if (argv) {
        if (!json_is_array(argv) || json_array_size(argv) == 0 ||
            json_array_size(argv) > SMOLVM_AGENT_ARGV_MAX) {
            snprintf(err, n, "'argv': expected an array of 1..%d strings", SMOLVM_AGENT_ARGV_MAX);
            return -1;
        }
        json_array_foreach (argv, i, v) {
            if (!json_is_string(v)) {
                snprintf(err, n, "'argv': element %zu is not a string", i + 1);
                return -1;
            }
            r->argv[r->argc++] = json_string_value(v);
        }
        if (!r->argv[0][0]) {
            snprintf(err, n, "'argv': the program name is empty");
            return -1;
        }
    }
    if (env && !json_is_null(env)) {
        if (!json_is_array(env) || json_array_size(env) > SMOLVM_AGENT_ENV_MAX) {
            snprintf(err, n, "'env': expected an array of at most %d strings",
                     SMOLVM_AGENT_ENV_MAX);
            return -1;
        }
        json_array_foreach (env, i, v) {
            if (!json_is_string(v) || !valid_env(json_string_value(v))) {
                snprintf(err, n, "'env': element %zu is not a 'NAME=value' string", i + 1);
                return -1;
            }
            r->env[r->n_env++] = json_string_value(v);
        }
    }
    if (r->cwd[0] != '/' || strlen(r->cwd) > SMOLVM_AGENT_PATH_MAX) {
        snprintf(err, n, "'cwd': expected an absolute path of at most %d bytes",
                 SMOLVM_AGENT_PATH_MAX);
        return -1;
    }
    if (strcmp(on_reset, "kill") == 0) {
        r->keep = 0;
    } else if (strcmp(on_reset, "keep") == 0) {
        r->keep = 1;
    } else {
        snprintf(err, n, "'on_reset': expected \"kill\" or \"keep\"");
        return -1;
    }
    if (pty && !json_is_null(pty)) {
        long long rows = 24, cols = 80;
        if (!json_is_object(pty) || req_int(pty, "rows", 1, 65535, &rows, err, n) < 0 ||
            req_int(pty, "cols", 1, 65535, &cols, err, n) < 0) {
            if (!json_is_object(pty))
                snprintf(err, n, "'pty': expected an object {rows, cols}");
            return -1;
        }
        r->pty = 1;
        r->rows = (unsigned)rows;
        r->cols = (unsigned)cols;
    }
    return 0;
}

static const char *env_get(char *const *env, const char *name)
{
    size_t n = strlen(name);
    for (; *env; env++)
        if (strncmp(*env, name, n) == 0 && (*env)[n] == '=')
            return *env + n + 1;
    return NULL;
}

/* argv[0] through PATH (the command's own), as execvp would; result in out. */
static int find_program(const char *name, char *const *env, char *out, size_t outlen)
{
    if (strchr(name, '/')) {
        snprintf(out, outlen, "%s", name);
        return 0;
    }
    const char *path = env_get(env, "PATH");
    if (!path)
        path = PATH_DEFAULT;
    for (const char *p = path;; p++) {
        const char *e = strchrnul(p, ':');
        struct stat st;
        int len = (int)(e - p);
        if (len == 0)
            snprintf(out, outlen, "%s", name);
        else
            snprintf(out, outlen, "%.*s/%s", len, p, name);
        if (stat(out, &st) == 0 && S_ISREG(st.st_mode) && access(out, X_OK) == 0)
            return 0;
        if (!*e)
            break;
        p = e;
    }
    errno = ENOENT;
    return -1;
}

/* Base environment with the request's entries put over it (same name replaced). */
static char **merge_env(struct agent *a, const struct spawn_req *r)
{
    char **e = calloc(a->n_env + r->n_env + 1, sizeof(char *));
    size_t n = 0;
    if (!e)
        return NULL;
    for (size_t i = 0; i < a->n_env; i++) {
        size_t nl = strcspn(a->env[i], "=");
        int replaced = 0;
        for (size_t k = 0; k < r->n_env && !replaced; k++)
            replaced = strncmp(r->env[k], a->env[i], nl + 1) == 0;
        if (!replaced)
            e[n++] = a->env[i];
    }
    for (size_t k = 0; k < r->n_env; k++) {
        size_t nl = strcspn(r->env[k], "=");
        int later = 0; /* the last of duplicate names wins */
        for (size_t j = k + 1; j < r->n_env && !later; j++)
            later = strncmp(r->env[j], r->env[k], nl + 1) == 0;
        if (!later)
            e[n++] = (char *)r->env[k];
    }
    return e;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* Start the process. 0, or -1 with *code and a message. */
static int spawn(struct agent *a, const struct spawn_req *r, struct proc *p, const char **code,
                 char *err, size_t errlen)
{
    int out[2] = {-1, -1}, errp[2] = {-1, -1}, in[2] = {-1, -1}, master = -1;
    char prog[SMOLVM_AGENT_PATH_MAX + 256], slave[128];
    const char *sh_argv[] = {"sh", "-c", r->cmd, NULL};
    char **envp = merge_env(a, r);
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none, def;
    struct stat st;
    pid_t pid;
    int rc = -1, e = 0;

    if (!envp) {
        *code = "EIO";
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    /* First, so that a missing cwd runs nothing at all. */
    int sr = stat(r->cwd, &st);
    if (sr < 0 || !S_ISDIR(st.st_mode)) {
        e = sr < 0 ? errno : ENOTDIR;
        *code = agent_errno_code(e);
        snprintf(err, errlen, "cwd '%s': %s", r->cwd, strerror(e));
        free(envp);
        return -1;
    }
    if (r->cmd) {
        snprintf(prog, sizeof(prog), "/bin/sh");
    } else if (find_program(r->argv[0], envp, prog, sizeof(prog)) < 0) {
        *code = "ENOENT";
        snprintf(err, errlen, "'%s': command not found", r->argv[0]);
        free(envp);
        return -1;
    }
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    if (r->pty) {
        struct winsize ws = {.ws_row = (unsigned short)r->rows, .ws_col = (unsigned short)r->cols};
        if ((master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0 || grantpt(master) < 0 ||
            unlockpt(master) < 0 || ptsname_r(master, slave, sizeof(slave)) != 0 ||
            ioctl(master, TIOCSWINSZ, &ws) < 0)
            goto sys_fail;
        /* Opened after setsid (POSIX_SPAWN_SETSID runs before file actions) and without
         * O_NOCTTY, the terminal becomes the session's controlling terminal. */
        posix_spawn_file_actions_addopen(&fa, 0, slave, O_RDWR, 0);
        posix_spawn_file_actions_adddup2(&fa, 0, 1);
        posix_spawn_file_actions_adddup2(&fa, 0, 2);
    } else {
        if (pipe2(out, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0)
            goto sys_fail;
        if (r->want_stdin) {
            if (pipe2(in, O_CLOEXEC) < 0)
                goto sys_fail;
            posix_spawn_file_actions_adddup2(&fa, in[0], 0);
        } else {
            posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        }
        posix_spawn_file_actions_adddup2(&fa, out[1], 1);
        posix_spawn_file_actions_adddup2(&fa, errp[1], 2);
    }
    posix_spawn_file_actions_addchdir_np(&fa, r->cwd);
    sigemptyset(&none);
    sigemptyset(&def);
    sigaddset(&def, SIGPIPE); /* the agent ignores it; a command must not inherit that */
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &def);
    posix_spawnattr_setflags(&attr,
                             POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    e = posix_spawn(&pid, prog, &fa, &attr, r->cmd ? (char **)sh_argv : (char **)r->argv, envp);
    if (e != 0) {
        *code = agent_errno_code(e);
        snprintf(err, errlen, "%s '%s': %s",
                 e == ENOENT || e == ENOTDIR ? "cwd or program" : "spawn",
                 r->cmd ? r->cwd : r->argv[0], strerror(e));
        goto done;
    }
    p->pid = pid;
    p->pty = r->pty;
    p->has_stdin = r->want_stdin;
    if (r->pty) {
        p->w_out[0].fd = master;
        master = -1;
        if (r->want_stdin)
            p->w_in.fd = fcntl(p->w_out[0].fd, F_DUPFD_CLOEXEC, 3);
        p->eof_at[2] = 0; /* a terminal has one output */
    } else {
        p->w_out[0].fd = out[0];
        p->w_out[1].fd = errp[0];
        out[0] = errp[0] = -1;
        if (r->want_stdin) {
            p->w_in.fd = in[1];
            in[1] = -1;
        }
    }
    for (int k = 0; k < 2; k++)
        if (p->w_out[k].fd >= 0)
            (void)fcntl(p->w_out[k].fd, F_SETFL, O_NONBLOCK);
    if (p->w_in.fd >= 0)
        (void)fcntl(p->w_in.fd, F_SETFL, O_NONBLOCK | O_WRONLY);
    rc = 0;
    goto done;
sys_fail:
    e = errno;
    *code = agent_errno_code(e);
    snprintf(err, errlen, "%s: %s", r->pty ? "pty" : "pipe", strerror(e));
done:
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close_fd(&out[0]);
    close_fd(&out[1]);
    close_fd(&errp[0]);
    close_fd(&errp[1]);
    close_fd(&in[0]);
    close_fd(&in[1]);
    close_fd(&master);
    free(envp);
    return rc;
}

static char *cmd_line(const struct spawn_req *r)
{
    char joined[CMD_KEEP * 2 + 8], *out = malloc(CMD_KEEP + 1);
    size_t n = 0;
    if (!out)
        return NULL;
    if (r->cmd) {
        agent_utf8(out, CMD_KEEP + 1, r->cmd, strlen(r->cmd));
        return out;
    }
    for (size_t i = 0; i < r->argc && n < sizeof(joined) - 1; i++)
        n += (size_t)snprintf(joined + n, sizeof(joined) - n, "%s%s", i ? " " : "", r->argv[i]);
    if (n > sizeof(joined) - 1)
        n = sizeof(joined) - 1;
    agent_utf8(out, CMD_KEEP + 1, joined, n);
    return out;
}

void exec_request(struct conn *c, uint32_t id, json_t *req)
{
    struct agent *a = c->agent;
    struct spawn_req *r = malloc(sizeof(*r));
    const char *code = "EIO";
    char err[SMOLVM_AGENT_PATH_MAX + 512];
    struct proc *p = NULL;
    struct stream *s;

    if (!r) {
        conn_error(c, id, "EIO", "exec: out of memory");
        return;
    }
    if (parse_exec(a, req, r, err, sizeof(err)) < 0) {
        conn_error(c, id, "EINVAL", "exec: %s", err);
        goto out;
    }
    if (a->o.no_exec) {
        conn_error(c, id, "EPERM", "exec: disabled in this agent");
        goto out;
    }
    if (procs_make_room(a) < 0) {
        conn_error(c, id, "ENOSPC", "exec: %d processes are running or followed",
                   SMOLVM_AGENT_PROCS_MAX);
        goto out;
    }
    if (!(p = calloc(1, sizeof(*p))) || !(p->cmd = cmd_line(r))) {
        free(p);
        conn_error(c, id, "EIO", "exec: out of memory");
        goto out;
    }
    p->agent = a;
    for (int k = 0; k < 2; k++)
        p->w_out[k] = (struct watch){.kind = W_OUT, .obj = p, .idx = k, .fd = -1};
    p->w_in = (struct watch){.kind = W_IN, .obj = p, .fd = -1};
    p->eof_at[1] = p->eof_at[2] = EOF_OPEN;
    p->t0 = agent_now_ms();
    p->started_ms = agent_realtime_ms();
    if (spawn(a, r, p, &code, err, sizeof(err)) < 0) {
        proc_free(p);
        conn_error(c, id, code, "exec: %s", err);
        goto out;
    }
    p->running = 1;
    p->seq = ++a->seq;
    if (r->timeout_ms)
        p->deadline = p->t0 + r->timeout_ms;
    a->procs[a->n_procs++] = p;
    s = stream_new(c, id, S_EXEC); /* room: checked before the request was read */
    if (!s) {
        proc_kill(p);
        conn_error(c, id, "EIO", "exec: out of memory");
        goto out;
    }
    s->send_window = r->window;
    s->keep = r->keep;
    s->eof_sent[2] = (uint8_t)p->pty;
    reader_attach(p, s);
    if (p->w_in.fd >= 0) {
        p->stdin_owner = s;
        s->recv_window = STDIN_WINDOW;
    }
    conn_send_json(
        c, SMOLVM_AGENT_REPLY, id, 0,
        json_pack("{s:i, s:I}", "pid", (int)p->pid, "window", (json_int_t)s->recv_window));
out:
    free(r);
}

void attach_request(struct conn *c, uint32_t id, json_t *req)
{
    struct agent *a = c->agent;
    long long pid = 0;
    int want_stdin = 0;
    uint32_t window;
    char err[256];

    if (req_int(req, "pid", 1, 1LL << 31, &pid, err, sizeof(err)) < 0 || pid == 0 ||
        req_bool(req, "stdin", &want_stdin, err, sizeof(err)) < 0 ||
        req_window(req, &window, err, sizeof(err)) < 0) {
        conn_error(c, id, "EINVAL", "attach: %s", pid ? err : "'pid': expected an integer");
        return;
    }
    struct proc *p = proc_find(a, (pid_t)pid, 0);
    if (!p) {
        conn_error(c, id, "ENOENT", "attach: no process with pid %lld", pid);
        return;
    }
    if (want_stdin && (!p->has_stdin || p->stdin_owner || p->w_in.fd < 0 || p->stdin_eof)) {
        conn_error(c, id, "EBUSY", "attach: the stdin of pid %lld is %s", pid,
                   !p->has_stdin    ? "not streamed"
                   : p->stdin_owner ? "held by another stream"
                                    : "closed");
        return;
    }
    struct stream *s = stream_new(c, id, S_ATTACH);
    if (!s) {
        conn_error(c, id, "EIO", "attach: out of memory");
        return;
    }
    s->send_window = window;
    s->cursor = p->ring.tail;
    s->eof_sent[2] = (uint8_t)p->pty;
    reader_attach(p, s);
    if (want_stdin) {
        p->stdin_owner = s;
        s->recv_window = p->inbuf.len < STDIN_WINDOW ? (uint32_t)(STDIN_WINDOW - p->inbuf.len) : 0;
    }
    conn_send_json(c, SMOLVM_AGENT_REPLY, id, 0,
                   json_pack("{s:i, s:s, s:b, s:I, s:I}", "pid", (int)p->pid, "cmd", p->cmd,
                             "running", p->running, "dropped", (json_int_t)p->ring.tail, "window",
                             (json_int_t)s->recv_window));
}

void ps_request(struct conn *c, uint32_t id, json_t *req)
{
    struct agent *a = c->agent;
    (void)req; /* no members */
    json_t *items = json_array();
    for (size_t i = 0; i < a->n_procs; i++) {
        struct proc *p = a->procs[i];
        json_t *e = p->running ? json_pack("{s:n, s:n}", "exit_code", "signal") : exit_json(p);
        json_object_del(e, "duration_ms");
        json_object_del(e, "timed_out");
        json_object_set_new(e, "pid", json_integer(p->pid));
        json_object_set_new(e, "cmd", json_string(p->cmd));
        json_object_set_new(e, "running", json_boolean(p->running));
        json_object_set_new(e, "started_ms", json_integer(p->started_ms));
        json_array_append_new(items, e);
    }
    conn_reply_chunked(c, id, "processes", items, json_object());
}
