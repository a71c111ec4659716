/* SPDX-License-Identifier: MIT */
/* Commands, files and processes of a VM over its agent (vm-agent.h, smolvm_proc_*). */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

#include "agent-client.h"
#include "error.h"
#include "sv-spec.h"
#include "vm-agent.h"

#define CONNECT_TIMEOUT_MS 30000
#define RUN_DEFAULT_TIMEOUT_MS (3600 * 1000) /* as over SSH: an hour unless asked */
#define RUN_GRACE_MS 5000     /* the agent kills at the timeout; its EXIT may take this long */
#define CALL_TIMEOUT_MS 30000 /* a file operation's step: the guest answers or is stuck */
#define PROC_WINDOW (256u * 1024)
#define FILE_CHUNK (64u * 1024)

/* ---------------------------------------------------------------- connection */

void smolvm_vm_agent_drop(smolvm_vm *vm)
{
    vm->agent = smolvm_agent_free(vm->agent);
}

int smolvm_vm_agent_ensure(smolvm_vm *vm, int64_t deadline, smolvm_error **err)
{
    _cleanup_free_ char *path = NULL;
    const char *status;
    int r;

    if (vm->agent && !smolvm_agent_broken(vm->agent))
        return 0;
    smolvm_vm_agent_drop(vm);
    status = smolvm_vm_status(vm);
    if (strcmp(status, "running") != 0)
        return smolvm_err(err, SMOLVM_ESTATE, "vm '%s' is %s, not running (start it first)", vm->id,
                          status);
    if (!(path = smolvm_strdupf("%s/%s", vm->row->dir, SMOLVM_SV_SOCK)))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    r = smolvm_agent_connect(&vm->agent, path, true, deadline, err);
    return r < 0 ? smolvm_err_wrap(err, "connect to the agent of '%s'", vm->id) : 0;
}

/* A connection error (not a guest's ERROR on one stream) means the next call
 * reconnects. */
static int after(smolvm_vm *vm, int r)
{
    if (r < 0 && vm->agent && smolvm_agent_broken(vm->agent))
        smolvm_vm_agent_drop(vm);
    return r;
}

static json_t *strv_json(const char *const *v)
{
    json_t *a = json_array();

    for (; a && v && *v; v++)
        json_array_append_new(a, json_string(*v));
    return a;
}

/* ---------------------------------------------------------------- output */

typedef struct buf {
    char *data;
    size_t len, cap, limit;
    bool truncated;
} buf;

static int buf_add(buf *b, const uint8_t *p, size_t n)
{
    size_t take = b->len + n > b->limit ? b->limit - b->len : n;

    if (take < n)
        b->truncated = true;
    if (b->len + take + 1 > b->cap) {
        size_t ncap = b->cap ? b->cap : 4096;
        char *nd;

        while (ncap < b->len + take + 1)
            ncap *= 2;
        if (!(nd = realloc(b->data, ncap)))
            return -1;
        b->data = nd;
        b->cap = ncap;
    }
    memcpy(b->data + b->len, p, take);
    b->len += take;
    b->data[b->len] = '\0';
    return 0;
}

static void fill_exit(smolvm_exit *e, json_t *j)
{
    const char *sig = json_string_value(json_object_get(j, "signal"));

    memset(e, 0, sizeof(*e));
    e->exit_code = (int)json_integer_value(json_object_get(j, "exit_code"));
    /* A signal name from the guest: letters and digits only, bounded. */
    if (sig) {
        size_t i;

        for (i = 0; sig[i] && i < sizeof(e->signal) - 1; i++)
            e->signal[i] =
                (sig[i] >= 'A' && sig[i] <= 'Z') || (sig[i] >= '0' && sig[i] <= '9') ? sig[i] : '?';
        e->signal[i] = '\0';
        if (e->signal[0])
            e->exit_code = -1;
    }
    e->timed_out = json_is_true(json_object_get(j, "timed_out"));
    e->duration_ms = json_integer_value(json_object_get(j, "duration_ms"));
}

/* ---------------------------------------------------------------- processes */

struct smolvm_proc {
    smolvm_vm *vm;
    smolvm_agent_stream *st;
    int pid;
    bool eof[3];
    bool exited;
    smolvm_exit exit;
    uint32_t consumed; /* DATA bytes taken since the last WINDOW */
    bool stdin_open;
};

int smolvm_spawn_options_init(smolvm_spawn_options *opts, unsigned version)
{
    smolvm_spawn_options defaults = SMOLVM_SPAWN_OPTIONS_INIT;

    if (version < 1 || version > SMOLVM_SPAWN_OPTIONS_VERSION)
        return SMOLVM_EINVAL;
    *opts = defaults;
    opts->version = version;
    return 0;
}

static int need_agent(smolvm_vm *vm, const char *what, smolvm_error **err)
{
    if (vm->deleted)
        return smolvm_err(err, SMOLVM_ESTATE, "%s in '%s': the vm was deleted", what, vm->id);
    if (vm->cfg->transport != SMOLVM_TRANSPORT_AGENT)
        return smolvm_err(err, SMOLVM_ESTATE,
                          "%s in '%s': needs the agent transport (this vm uses 'ssh')", what,
                          vm->id);
    return smolvm_vm_agent_ensure(vm, smolvm_now_ms() + CONNECT_TIMEOUT_MS, err);
}

/* Open an exec/attach stream and wait for its first REPLY (the pid). */
static int proc_open(smolvm_proc **out, smolvm_vm *vm, json_t *req, bool stdin_open,
                     smolvm_error **err)
{
    _cleanup_free_ smolvm_proc *p = calloc(1, sizeof(*p));
    smolvm_agent_event ev;
    int r;

    if (!p) {
        json_decref(req);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    p->vm = vm;
    p->stdin_open = stdin_open;
    if ((r = after(vm, smolvm_agent_request(&p->st, vm->agent, req, PROC_WINDOW, err))) < 0)
        return r;
    r = after(vm, smolvm_agent_next(&ev, p->st, smolvm_now_ms() + CALL_TIMEOUT_MS, err));
    if (r == 0 && ev.kind != SMOLVM_AGENT_EV_REPLY)
        r = smolvm_err(err, SMOLVM_EIO, "agent: expected the process's pid first");
    if (r == 0) {
        json_t *w = json_object_get(ev.json, "window");

        p->pid = (int)json_integer_value(json_object_get(ev.json, "pid"));
        if (json_is_integer(w))
            smolvm_agent_set_send_window(p->st, (uint64_t)json_integer_value(w));
        if (p->pid <= 0)
            r = smolvm_err(err, SMOLVM_EIO, "agent: no pid in the reply");
    }
    if (r < 0) {
        p->st = smolvm_agent_stream_free(p->st);
        return r;
    }
    *out = TAKE_PTR(p);
    return 0;
}

static json_t *exec_request(const char *cmd, const smolvm_spawn_options *o, bool kill_on_reset)
{
    json_t *req = json_pack("{s:s}", "op", "exec");

    if (!req)
        return NULL;
    if (o && o->argv)
        json_object_set_new(req, "argv", strv_json(o->argv));
    else
        json_object_set_new(req, "cmd", json_string(cmd ? cmd : ""));
    if (o && o->env)
        json_object_set_new(req, "env", strv_json(o->env));
    if (o && o->cwd)
        json_object_set_new(req, "cwd", json_string(o->cwd));
    json_object_set_new(req, "stdin", json_boolean(o && (o->stdin_pipe || o->pty_rows)));
    if (o && o->pty_rows && o->pty_cols)
        json_object_set_new(
            req, "pty",
            json_pack("{s:i, s:i}", "rows", (int)o->pty_rows, "cols", (int)o->pty_cols));
    if (o && o->timeout_ms > 0)
        json_object_set_new(req, "timeout_ms", json_integer(o->timeout_ms));
    json_object_set_new(req, "on_reset", json_string(kill_on_reset ? "kill" : "keep"));
    return req;
}

int smolvm_vm_spawn(smolvm_proc **out, smolvm_vm *vm, const char *cmd,
                    const smolvm_spawn_options *o, smolvm_error **err)
{
    int r;

    if (!cmd && !(o && o->argv))
        return smolvm_err(err, SMOLVM_EINVAL, "spawn: no command");
    if (o && (o->version < 1 || o->version > SMOLVM_SPAWN_OPTIONS_VERSION))
        return smolvm_err(err, SMOLVM_EINVAL, "spawn options: unknown version %u", o->version);
    if ((r = need_agent(vm, "spawn", err)) < 0)
        return r;
    r = proc_open(out, vm, exec_request(cmd, o, !(o && o->keep)),
                  o && (o->stdin_pipe || o->pty_rows), err);
    return r < 0 ? smolvm_err_wrap(err, "spawn in '%s'", vm->id) : 0;
}

int smolvm_vm_attach(smolvm_proc **out, smolvm_vm *vm, int pid, smolvm_error **err)
{
    int r;

    if (pid <= 0)
        return smolvm_err(err, SMOLVM_EINVAL, "attach: pid must be positive, got %d", pid);
    if ((r = need_agent(vm, "attach", err)) < 0)
        return r;
    r = proc_open(out, vm, json_pack("{s:s, s:i}", "op", "attach", "pid", pid), false, err);
    return r < 0 ? smolvm_err_wrap(err, "attach to %d in '%s'", pid, vm->id) : 0;
}

int smolvm_proc_pid(const smolvm_proc *p)
{
    return p->pid;
}

static int64_t deadline_of(int timeout_ms)
{
    return timeout_ms < 0 ? smolvm_now_ms() + RUN_DEFAULT_TIMEOUT_MS : smolvm_now_ms() + timeout_ms;
}

int smolvm_proc_read(smolvm_proc *p, int *stream, const char **data, size_t *len, int timeout_ms,
                     smolvm_error **err)
{
    int64_t deadline = deadline_of(timeout_ms);
    smolvm_agent_event ev;
    int r;

    /* What the caller took last time is credited back now (it is done with it). */
    if (p->consumed >= PROC_WINDOW / 2) {
        if ((r = after(p->vm, smolvm_agent_grant(p->st, p->consumed, err))) < 0)
            return r;
        p->consumed = 0;
    }
    for (;;) {
        if (p->exited || (p->eof[1] && p->eof[2]))
            return 1;
        r = after(p->vm, smolvm_agent_next(&ev, p->st, deadline, err));
        if (r < 0)
            return r;
        switch (ev.kind) {
        case SMOLVM_AGENT_EV_DATA:
            if (ev.fd != 1 && ev.fd != 2)
                continue;
            p->consumed += (uint32_t)ev.len;
            *stream = ev.fd;
            *data = (const char *)ev.data;
            *len = ev.len;
            return 0;
        case SMOLVM_AGENT_EV_EOF:
            if (ev.fd == 1 || ev.fd == 2)
                p->eof[ev.fd] = true;
            break;
        case SMOLVM_AGENT_EV_EXIT:
            fill_exit(&p->exit, ev.json);
            p->exited = true;
            break;
        case SMOLVM_AGENT_EV_REPLY: break;
        }
    }
}

int smolvm_proc_write(smolvm_proc *p, const void *data, size_t len, int timeout_ms,
                      smolvm_error **err)
{
    if (!p->stdin_open)
        return smolvm_err(err, SMOLVM_ESTATE, "write: stdin is not open (spawn with stdin)");
    return after(p->vm, smolvm_agent_write(p->st, 0, data, len, deadline_of(timeout_ms), err));
}

int smolvm_proc_close_stdin(smolvm_proc *p, smolvm_error **err)
{
    if (!p->stdin_open)
        return 0;
    p->stdin_open = false;
    return after(p->vm, smolvm_agent_eof(p->st, 0, err));
}

int smolvm_proc_kill(smolvm_proc *p, const char *signal, smolvm_error **err)
{
    size_t i;

    if (!signal || !*signal || strlen(signal) > 10)
        return smolvm_err(err, SMOLVM_EINVAL, "kill: bad signal name '%.16s'",
                          signal ? signal : "");
    for (i = 0; signal[i]; i++)
        if (!((signal[i] >= 'A' && signal[i] <= 'Z') || (signal[i] >= '0' && signal[i] <= '9')))
            return smolvm_err(err, SMOLVM_EINVAL,
                              "kill: bad signal name '%s' (say TERM, KILL, ...)", signal);
    if (p->exited)
        return 0;
    return after(p->vm, smolvm_agent_control(
                            p->st, json_pack("{s:s, s:s}", "op", "signal", "signal", signal), err));
}

int smolvm_proc_resize(smolvm_proc *p, unsigned rows, unsigned cols, smolvm_error **err)
{
    if (rows < 1 || rows > 1000 || cols < 1 || cols > 1000)
        return smolvm_err(err, SMOLVM_EINVAL, "resize: rows and cols must be 1..1000");
    return after(p->vm, smolvm_agent_control(p->st,
                                             json_pack("{s:s, s:i, s:i}", "op", "resize", "rows",
                                                       (int)rows, "cols", (int)cols),
                                             err));
}

int smolvm_proc_wait(smolvm_exit *out, smolvm_proc *p, int timeout_ms, smolvm_error **err)
{
    int64_t deadline = deadline_of(timeout_ms);
    smolvm_agent_event ev;
    int r;

    while (!p->exited) {
        if (p->consumed >= PROC_WINDOW / 2) {
            if ((r = after(p->vm, smolvm_agent_grant(p->st, p->consumed, err))) < 0)
                return r;
            p->consumed = 0;
        }
        if ((r = after(p->vm, smolvm_agent_next(&ev, p->st, deadline, err))) < 0)
            return r;
        if (ev.kind == SMOLVM_AGENT_EV_DATA)
            p->consumed += (uint32_t)ev.len; /* discarded, credited back */
        else if (ev.kind == SMOLVM_AGENT_EV_EXIT) {
            fill_exit(&p->exit, ev.json);
            p->exited = true;
        }
    }
    *out = p->exit;
    return 0;
}

int smolvm_proc_fd(const smolvm_proc *p)
{
    return p ? smolvm_agent_stream_fd(p->st) : -1;
}

smolvm_proc *smolvm_proc_free(smolvm_proc *p)
{
    if (!p)
        return NULL;
    /* RESET: the agent kills or keeps the process as it was spawned to. */
    smolvm_agent_stream_free(p->st);
    free(p);
    return NULL;
}

int smolvm_vm_processes_json(char **out, smolvm_vm *vm, smolvm_error **err)
{
    json_t *reply = NULL;
    char *text;
    int r;

    if ((r = need_agent(vm, "processes", err)) < 0)
        return r;
    r = after(vm, smolvm_agent_call(&reply, vm->agent, json_pack("{s:s}", "op", "ps"),
                                    smolvm_now_ms() + CALL_TIMEOUT_MS, err));
    if (r < 0)
        return smolvm_err_wrap(err, "processes in '%s'", vm->id);
    text = json_is_array(json_object_get(reply, "processes"))
               ? json_dumps(json_object_get(reply, "processes"), JSON_COMPACT)
               : NULL;
    json_decref(reply);
    if (!text)
        return smolvm_err(err, SMOLVM_EIO, "processes in '%s': a malformed reply", vm->id);
    *out = text;
    return 0;
}

/* ---------------------------------------------------------------- run */

int smolvm_vm_agent_run(smolvm_run_result **out, smolvm_vm *vm, const char *cmd,
                        const smolvm_run_options *o, smolvm_error **err)
{
    smolvm_spawn_options so = SMOLVM_SPAWN_OPTIONS_INIT;
    size_t limit = o && o->output_limit ? o->output_limit : SMOLVM_OUTPUT_LIMIT_DEFAULT;
    buf outb = {.limit = limit}, errb = {.limit = limit};
    int64_t t0 = smolvm_now_ms(), deadline;
    smolvm_proc *p = NULL;
    smolvm_run_result *res = NULL;
    smolvm_exit ex;
    int r, stream;
    const char *data;
    size_t len;

    so.env = o ? o->env : NULL;
    so.cwd = o ? o->cwd : NULL;
    so.stdin_pipe = o && o->stdin_data;
    so.timeout_ms = o ? o->timeout_ms : 0;
    deadline = t0 + (so.timeout_ms > 0 ? so.timeout_ms + RUN_GRACE_MS : RUN_DEFAULT_TIMEOUT_MS);
    if ((r = smolvm_vm_agent_ensure(vm, smolvm_now_ms() + CONNECT_TIMEOUT_MS, err)) < 0)
        return r;
    if ((r = proc_open(&p, vm, exec_request(cmd, &so, true), so.stdin_pipe, err)) < 0)
        return r;
    if (so.stdin_pipe) {
        r = smolvm_proc_write(p, o->stdin_data, o->stdin_len, smolvm_remaining_ms(deadline), err);
        if (r == 0)
            r = smolvm_proc_close_stdin(p, err);
    }
    while (r == 0 && (r = smolvm_proc_read(p, &stream, &data, &len, smolvm_remaining_ms(deadline),
                                           err)) == 0) {
        if (o && o->on_output)
            o->on_output(stream, data, len, o->payload);
        if (buf_add(stream == 1 ? &outb : &errb, (const uint8_t *)data, len) < 0)
            r = smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    if (r == 1)
        r = smolvm_proc_wait(&ex, p, smolvm_remaining_ms(deadline), err);
    if (r == SMOLVM_EINTR || r == SMOLVM_ETIMEDOUT)
        (void)smolvm_proc_kill(p, "KILL", NULL); /* and RESET kills the group too */
    smolvm_proc_free(p);
    if (r == 0 && ex.timed_out) {
        r = smolvm_err(err, SMOLVM_ETIMEDOUT, "command timed out after %d ms (killed)",
                       so.timeout_ms);
    }
    if (r == 0 && !(res = calloc(1, sizeof(*res))))
        r = smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (r < 0) {
        free(outb.data);
        free(errb.data);
        return r;
    }
    res->exit_code = ex.exit_code;
    memcpy(res->signal, ex.signal, sizeof(res->signal));
    res->out = outb.data ? outb.data : strdup("");
    res->out_len = outb.len;
    res->err = errb.data ? errb.data : strdup("");
    res->err_len = errb.len;
    res->truncated = outb.truncated || errb.truncated;
    res->duration_ms = smolvm_now_ms() - t0;
    if (!res->out || !res->err) {
        smolvm_run_result_free(res);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    *out = res;
    return 0;
}

/* ---------------------------------------------------------------- files */

int smolvm_vm_agent_read(char **data, size_t *len, smolvm_vm *vm, const char *remote, size_t max,
                         smolvm_error **err)
{
    smolvm_agent_stream *st = NULL;
    smolvm_agent_event ev;
    buf b = {.limit = max};
    uint32_t consumed = 0;
    int r;

    if ((r = smolvm_vm_agent_ensure(vm, smolvm_now_ms() + CONNECT_TIMEOUT_MS, err)) < 0)
        return r;
    r = after(vm, smolvm_agent_request(&st, vm->agent,
                                       json_pack("{s:s, s:s, s:I}", "op", "read_file", "path",
                                                 remote, "max", (json_int_t)max),
                                       PROC_WINDOW, err));
    while (r == 0 && !smolvm_agent_done(st)) {
        r = after(vm, smolvm_agent_next(&ev, st, smolvm_now_ms() + CALL_TIMEOUT_MS, err));
        if (r < 0)
            break;
        if (ev.kind == SMOLVM_AGENT_EV_DATA) {
            /* Whatever the guest said the size was, the host's limit holds. */
            if (b.len + ev.len > max) {
                r = smolvm_err(err, SMOLVM_ENOSPC, "'%s' is larger than %zu bytes", remote, max);
                break;
            }
            if (buf_add(&b, ev.data, ev.len) < 0) {
                r = smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
                break;
            }
            consumed += (uint32_t)ev.len;
            if (consumed >= PROC_WINDOW / 2) {
                r = after(vm, smolvm_agent_grant(st, consumed, err));
                consumed = 0;
            }
        }
    }
    smolvm_agent_stream_free(st);
    if (r == 0 && !b.data && !(b.data = strdup("")))
        r = smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (r < 0) {
        free(b.data);
        return r;
    }
    *data = b.data;
    *len = b.len;
    return 0;
}

/* Feed chunks from a reader into a write_file stream. */
typedef int (*chunk_fn)(void *src, uint8_t *buf, size_t cap, size_t *got, smolvm_error **err);

static int write_stream(smolvm_vm *vm, const char *remote, unsigned mode, chunk_fn next, void *src,
                        smolvm_error **err)
{
    _cleanup_free_ uint8_t *chunk = malloc(FILE_CHUNK);
    smolvm_agent_stream *st = NULL;
    smolvm_agent_event ev;
    size_t got = 0;
    int r;

    if (!chunk)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if ((r = smolvm_vm_agent_ensure(vm, smolvm_now_ms() + CONNECT_TIMEOUT_MS, err)) < 0)
        return r;
    r = after(vm, smolvm_agent_request(&st, vm->agent,
                                       json_pack("{s:s, s:s, s:i, s:b}", "op", "write_file", "path",
                                                 remote, "mode", (int)(mode & 07777), "mkdirs", 1),
                                       0, err));
    if (r == 0)
        r = after(vm, smolvm_agent_next(&ev, st, smolvm_now_ms() + CALL_TIMEOUT_MS, err));
    if (r == 0 && ev.kind != SMOLVM_AGENT_EV_REPLY)
        r = smolvm_err(err, SMOLVM_EIO, "agent: expected a reply to write_file");
    if (r == 0) {
        json_t *w = json_object_get(ev.json, "window");

        smolvm_agent_set_send_window(st, json_is_integer(w) ? (uint64_t)json_integer_value(w) : 0);
    }
    while (r == 0 && (r = next(src, chunk, FILE_CHUNK, &got, err)) == 0 && got > 0)
        r = after(vm,
                  smolvm_agent_write(st, 0, chunk, got, smolvm_now_ms() + CALL_TIMEOUT_MS, err));
    if (r == 0)
        r = after(vm, smolvm_agent_eof(st, 0, err));
    /* The final REPLY comes once the file is written, synced and renamed. */
    while (r == 0 && !smolvm_agent_done(st))
        r = after(vm, smolvm_agent_next(&ev, st, smolvm_now_ms() + CALL_TIMEOUT_MS, err));
    smolvm_agent_stream_free(st);
    return r;
}

typedef struct mem_src {
    const uint8_t *p;
    size_t left;
} mem_src;

static int mem_next(void *src, uint8_t *b, size_t cap, size_t *got, smolvm_error **err)
{
    mem_src *m = src;

    (void)err;
    *got = m->left < cap ? m->left : cap;
    memcpy(b, m->p, *got);
    m->p += *got;
    m->left -= *got;
    return 0;
}

int smolvm_vm_agent_write(smolvm_vm *vm, const char *remote, const void *data, size_t len,
                          unsigned mode, smolvm_error **err)
{
    mem_src m = {data, len};

    return write_stream(vm, remote, mode, mem_next, &m, err);
}

typedef struct file_src {
    int fd;
    const char *path;
} file_src;

static int file_next(void *src, uint8_t *b, size_t cap, size_t *got, smolvm_error **err)
{
    file_src *f = src;
    ssize_t n;

    do
        n = read(f->fd, b, cap);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return smolvm_err_errno(err, errno, "read '%s'", f->path);
    *got = (size_t)n;
    return 0;
}

int smolvm_vm_agent_upload(smolvm_vm *vm, const char *local, const char *remote, smolvm_error **err)
{
    _cleanup_close_ int fd = open(local, O_RDONLY | O_CLOEXEC);
    file_src f = {fd, local};
    struct stat st;

    if (fd < 0)
        return smolvm_err_errno(err, errno, "open '%s'", local);
    if (fstat(fd, &st) < 0)
        return smolvm_err_errno(err, errno, "stat '%s'", local);
    if (!S_ISREG(st.st_mode))
        return smolvm_err(err, SMOLVM_EINVAL, "'%s' is not a regular file", local);
    return write_stream(vm, remote, st.st_mode & 0777, file_next, &f, err);
}

int smolvm_vm_agent_download(smolvm_vm *vm, const char *remote, const char *local, size_t max,
                             smolvm_error **err)
{
    smolvm_agent_stream *st = NULL;
    smolvm_agent_event ev;
    _cleanup_free_ char *tmp = smolvm_strdupf("%s.smolvm-tmp.%ld", local, (long)getpid());
    _cleanup_close_ int fd = -1;
    unsigned mode = 0644;
    uint32_t consumed = 0;
    size_t total = 0;
    int r;

    if (!tmp)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if ((r = smolvm_vm_agent_ensure(vm, smolvm_now_ms() + CONNECT_TIMEOUT_MS, err)) < 0)
        return r;
    r = after(vm, smolvm_agent_request(&st, vm->agent,
                                       json_pack("{s:s, s:s, s:I}", "op", "read_file", "path",
                                                 remote, "max", (json_int_t)max),
                                       PROC_WINDOW, err));
    if (r == 0 && (fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0)
        r = smolvm_err_errno(err, errno, "create '%s'", tmp);
    while (r == 0 && !smolvm_agent_done(st)) {
        r = after(vm, smolvm_agent_next(&ev, st, smolvm_now_ms() + CALL_TIMEOUT_MS, err));
        if (r < 0)
            break;
        if (ev.kind == SMOLVM_AGENT_EV_REPLY && json_is_integer(json_object_get(ev.json, "mode")))
            mode = (unsigned)json_integer_value(json_object_get(ev.json, "mode"));
        if (ev.kind != SMOLVM_AGENT_EV_DATA)
            continue;
        if (total + ev.len > max) {
            r = smolvm_err(err, SMOLVM_ENOSPC, "'%s' is larger than %zu bytes", remote, max);
            break;
        }
        total += ev.len;
        for (size_t off = 0; r == 0 && off < ev.len;) {
            ssize_t w = write(fd, ev.data + off, ev.len - off);

            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0)
                r = smolvm_err_errno(err, errno, "write '%s'", local);
            else
                off += (size_t)w;
        }
        consumed += (uint32_t)ev.len;
        if (r == 0 && consumed >= PROC_WINDOW / 2) {
            r = after(vm, smolvm_agent_grant(st, consumed, err));
            consumed = 0;
        }
    }
    smolvm_agent_stream_free(st);
    /* The guest's mode bits, but never setuid, setgid, sticky, world-writable or more
     * than the umask allows. */
    if (r == 0 && fchmod(fd, smolvm_guest_file_mode(mode)) < 0)
        r = smolvm_err_errno(err, errno, "chmod '%s'", local);
    if (r == 0 && rename(tmp, local) < 0)
        r = smolvm_err_errno(err, errno, "rename to '%s'", local);
    if (r < 0 && fd >= 0)
        (void)unlink(tmp);
    return r;
}
