/* SPDX-License-Identifier: MIT */
/*
 * "smolvm.job": one blocking library call on a thread of its own, so that the caller's
 * event loop never waits for it (an nginx worker: lua/smolvm/ngx.lua). The caller
 * waits with its own event loop instead: every job listens on a unix socket of its
 * own, in a private directory, and once the call has returned it answers the first
 * connection with "done\n". job:result() then gives what the call gave, in the
 * binding's usual shapes.
 *
 *   core.vm_create(opts, true) -> job     result: vm, info      (vm.c)
 *   core.job_open(id)          -> job     result: vm, info
 *   core.job_list()            -> job     result: { info, ... }
 *   vm:job(op, ...)            -> job     op and its arguments:
 *     "start_begin" ms | "start_confirm" | "start_abort" code_name message |
 *     "stop" ms | "delete" | "keep" | "close" | "info" | "status" |
 *     "forward" host_port guest_port [address] | "unforward" host_port |
 *     "run" cmd { timeout_ms=, env=, cwd=, stdin=, output_limit= } |
 *     "read_file" path | "write_file" path data | "upload" local remote |
 *     "download" remote local
 *   job:path()   the socket to connect to      job:done()   has the call returned?
 *   job:wait(ms) -> true | nil, "timed out", "ETIMEDOUT"   (blocks this thread: for
 *                hosts without an event loop of their own)
 *   job:result() once, after done: true | value(s) | nil, msg, code
 *
 * VMs made by jobs are "background" handles (binding.h): each has a context (store
 * connection) of its own, so jobs on different VMs run in parallel and never share
 * one (a handle is used by one thread at a time, smolvm.h). While a job works on a VM
 * the handle is lent to it and every other call raises "busy"; the handle comes back
 * at job:result(), or at the next call once the job is done. Closing or collecting a
 * background handle never blocks: stopping and deleting an owned VM, and freeing the
 * handle, run on a thread.
 *
 * Threads block the signals nginx drives its workers with, so those still reach the
 * worker's own thread; the library's helpers reset their mask when they exec.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* dladdr, accept4 */
#endif

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "binding.h"

#define JOB_MT "smolvm.job"
#define ANSWER_WAIT_MS 5000        /* the waiter connects right after making the job */
#define CLOSE_STOP_TIMEOUT_MS 5000 /* as a blocking close (vm.c) */

typedef enum job_op {
    OP_CREATE,
    OP_OPEN,
    OP_LIST,
    OP_START_BEGIN,
    OP_START_CONFIRM,
    OP_START_ABORT,
    OP_STOP,
    OP_DELETE,
    OP_KEEP,
    OP_CLOSE,
    OP_INFO,
    OP_STATUS,
    OP_FORWARD,
    OP_UNFORWARD,
    OP_RUN,
    OP_READ_FILE,
    OP_WRITE_FILE,
    OP_UPLOAD,
    OP_DOWNLOAD,
    OP_PAUSE,
    OP_RESUME,
    OP_SUSPEND,
    OP_SNAPSHOT,
} job_op;

static const char *const op_names[] = {
    [OP_START_BEGIN] = "start_begin",
    [OP_START_CONFIRM] = "start_confirm",
    [OP_START_ABORT] = "start_abort",
    [OP_STOP] = "stop",
    [OP_DELETE] = "delete",
    [OP_KEEP] = "keep",
    [OP_CLOSE] = "close",
    [OP_INFO] = "info",
    [OP_STATUS] = "status",
    [OP_FORWARD] = "forward",
    [OP_UNFORWARD] = "unforward",
    [OP_RUN] = "run",
    [OP_READ_FILE] = "read_file",
    [OP_WRITE_FILE] = "write_file",
    [OP_PAUSE] = "pause",
    [OP_RESUME] = "resume",
    [OP_SUSPEND] = "suspend",
    [OP_SNAPSHOT] = "snapshot",
    [OP_UPLOAD] = "upload",
    [OP_DOWNLOAD] = "download",
};

/* Every pointer field of smolvm_vm_options is copied by create_copy: a new version of
 * the struct has to be looked at here first. */
_Static_assert(SMOLVM_VM_OPTIONS_VERSION == 3,
               "smolvm_vm_options grew: copy its new fields in job.c's create_copy");

typedef struct create_args {
    smolvm_vm_options o;
    char *id, *image, *template_name;
    char **env, **labels;
    smolvm_forward *fw;
} create_args;

struct smolvm_lua_job {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* signalled once done */
    int refs;          /* the userdata, the thread, a lender */
    job_op op;
    bool done;   /* the call returned; results are set and no longer change */
    bool waiter; /* the userdata is alive: somebody may connect */
    bool taken;  /* job:result() was called */
    int listen_fd;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];

    /* The VM worked on: lent by its userdata, or made by the job. */
    smolvm_vm *vm;
    smolvm_lua_ctx *c;
    int owned;
    smolvm_lua_vm *lender; /* main thread only; NULL once it took the VM back or died */
    bool close_after;      /* the lender was collected meanwhile: close vm when done */

    /* arguments */
    int ms, n1, n2, code;
    char *s1, *s2;
    char *data;
    size_t len;
    create_args *create;
    smolvm_run_options run;
    char **run_env;

    /* results */
    int rc;
    smolvm_error *err; /* the library's error; else `why` says what failed here */
    char why[200];
    char *text; /* JSON (info, list) or file contents */
    size_t text_len;
    char *info; /* create, open */
    const char *status;
    smolvm_run_result *result;
};

typedef smolvm_lua_job job;

/* ---------------------------------------------------------------- threads */

/* A library with running threads must never be unloaded (lua_close unloads C
 * modules): pin it the first time a thread starts. */
static void pin_once(void)
{
    Dl_info info;

    /* The handle is never closed: that is the point. */
    if (dladdr((void *)pin_once, &info) && info.dli_fname)
        (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NODELETE | RTLD_NOLOAD);
}

static void pin_library(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;

    (void)pthread_once(&once, pin_once);
}

static int start_thread(void *(*fn)(void *), void *arg)
{
    static const int signals[] = {SIGHUP,  SIGINT,   SIGQUIT, SIGTERM, SIGUSR1,
                                  SIGUSR2, SIGWINCH, SIGALRM, SIGIO,   SIGCHLD};
    sigset_t block, old;
    pthread_attr_t attr;
    pthread_t t;
    size_t i;
    int r;

    pin_library();
    (void)sigemptyset(&block);
    for (i = 0; i < sizeof(signals) / sizeof(signals[0]); i++)
        (void)sigaddset(&block, signals[i]);
    if ((r = pthread_attr_init(&attr)) != 0)
        return r;
    (void)pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    (void)pthread_sigmask(SIG_BLOCK, &block, &old);
    r = pthread_create(&t, &attr, fn, arg);
    (void)pthread_sigmask(SIG_SETMASK, &old, NULL);
    (void)pthread_attr_destroy(&attr);
    return r;
}

/* ---------------------------------------------------------------- closing a VM */

/* What closing a handle does (vm.c's close_lvm): an owned VM is stopped and deleted.
 * Blocks: call it on a thread. Frees vm and c. */
static int close_now(smolvm_vm *vm, smolvm_lua_ctx *c, int owned, smolvm_error **err)
{
    int r = 0;

    if (vm && owned) {
        const char *status = smolvm_vm_status(vm);

        if (strcmp(status, "running") == 0) {
            smolvm_error *e = NULL;

            (void)smolvm_vm_stop(vm, CLOSE_STOP_TIMEOUT_MS, &e);
            e = smolvm_error_free(e); /* delete stops harder if this failed */
        }
        if (strcmp(status, "deleted") != 0)
            r = smolvm_vm_delete(vm, err);
    }
    smolvm_vm_free(vm);
    smolvm_lua_ctx_unref(c);
    return r;
}

typedef struct close_args {
    smolvm_vm *vm;
    smolvm_lua_ctx *c;
    int owned;
} close_args;

static void *close_main(void *arg)
{
    close_args *a = arg;

    (void)close_now(a->vm, a->c, a->owned, NULL);
    free(a);
    return NULL;
}

/* close_now on a thread of its own (inline when no thread can be had). */
static void close_in_background(smolvm_vm *vm, smolvm_lua_ctx *c, int owned)
{
    close_args *a;

    if (!vm && !c)
        return;
    a = malloc(sizeof(*a));
    if (a) {
        *a = (close_args){vm, c, owned};
        if (start_thread(close_main, a) == 0)
            return;
        free(a);
    }
    (void)close_now(vm, c, owned, NULL);
}

/* ---------------------------------------------------------------- job lifetime */

static void strv_free(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

static void create_free(create_args *a)
{
    if (!a)
        return;
    free(a->id);
    free(a->image);
    free(a->template_name);
    strv_free(a->env);
    strv_free(a->labels);
    if (a->fw)
        for (size_t i = 0; i < a->o.n_forwards; i++)
            free((char *)a->fw[i].host_address);
    free(a->fw);
    free(a);
}

/* Frees everything; a VM nobody took is closed (on a thread unless this is one). */
static void job_free(job *j, bool on_thread)
{
    if (j->listen_fd >= 0) {
        (void)close(j->listen_fd);
        (void)unlink(j->path);
    }
    if (on_thread)
        (void)close_now(j->vm, j->c, j->owned, NULL);
    else
        close_in_background(j->vm, j->c, j->owned);
    free(j->s1);
    free(j->s2);
    free(j->data);
    create_free(j->create);
    strv_free(j->run_env);
    smolvm_error_free(j->err);
    free(j->text);
    free(j->info);
    smolvm_run_result_free(j->result);
    pthread_cond_destroy(&j->cv);
    pthread_mutex_destroy(&j->mu);
    free(j);
}

static void job_unref(job *j, bool on_thread)
{
    bool last;

    pthread_mutex_lock(&j->mu);
    last = --j->refs == 0;
    pthread_mutex_unlock(&j->mu);
    if (last)
        job_free(j, on_thread);
}

/* ---------------------------------------------------------------- the socket */

static pthread_mutex_t dir_lock = PTHREAD_MUTEX_INITIALIZER;
static char job_dir[64];
static pid_t job_dir_pid;

/* At exit: the sockets of jobs that never finished, and the directory. */
static void remove_job_dir(void)
{
    DIR *d;
    struct dirent *e;

    if (job_dir_pid != getpid() || !job_dir[0])
        return;
    if ((d = opendir(job_dir))) {
        while ((e = readdir(d)))
            if (e->d_name[0] != '.') {
                char p[sizeof(job_dir) + 300];

                (void)snprintf(p, sizeof(p), "%s/%s", job_dir, e->d_name);
                (void)unlink(p);
            }
        (void)closedir(d);
    }
    (void)rmdir(job_dir);
}

/* The process's private directory for job sockets (0700), made on first use. A
 * forked child (nginx's workers fork from the master) makes its own. */
static int job_dir_get(char *out, size_t size)
{
    static bool registered;
    int r = 0;

    pthread_mutex_lock(&dir_lock);
    if (job_dir_pid != getpid()) {
        const char *tmp = "/tmp";

        (void)snprintf(job_dir, sizeof(job_dir), "%s/smolvm-jobs.%ld.XXXXXX", tmp, (long)getpid());
        if (!mkdtemp(job_dir)) {
            r = -errno;
            job_dir[0] = '\0';
        } else {
            job_dir_pid = getpid();
            if (!registered)
                registered = atexit(remove_job_dir) == 0;
        }
    }
    if (r == 0)
        (void)snprintf(out, size, "%s", job_dir);
    pthread_mutex_unlock(&dir_lock);
    return r;
}

/* Fail with errno's text in j->why. */
static int fail_errno(job *j, const char *what)
{
    (void)snprintf(j->why, sizeof(j->why), "job: %s: %s", what, strerror(errno));
    return SMOLVM_EIO;
}

static int job_listen(job *j)
{
    static unsigned long seq; /* main thread only */
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char dir[sizeof(job_dir)];
    int r, fd;

    if ((r = job_dir_get(dir, sizeof(dir))) < 0) {
        errno = -r;
        return fail_errno(j, "make a directory in /tmp");
    }
    (void)snprintf(j->path, sizeof(j->path), "%s/%lu", dir, ++seq);
    (void)snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", j->path);
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
        return fail_errno(j, "socket");
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 64) < 0) {
        r = fail_errno(j, "listen");
        (void)close(fd);
        (void)unlink(j->path);
        return r;
    }
    j->listen_fd = fd;
    return 0;
}

/* Tell the waiters: the one that made the job connected (or is about to) right after,
 * others (requests waiting for this VM) may have too. Whoever comes after the socket is
 * gone finds the job done. */
static void answer(job *j)
{
    struct pollfd p = {.fd = j->listen_fd, .events = POLLIN};
    int wait_ms = ANSWER_WAIT_MS, w, c;

    for (;;) {
        do
            w = poll(&p, 1, wait_ms);
        while (w < 0 && errno == EINTR);
        if (w <= 0)
            return;
        if ((c = accept4(j->listen_fd, NULL, NULL, SOCK_CLOEXEC)) < 0)
            return;
        (void)!send(c, "done\n", 5, MSG_NOSIGNAL);
        (void)close(c);
        wait_ms = 0; /* then only those already queued */
    }
}

/* ---------------------------------------------------------------- the calls */

static int new_ctx(job *j)
{
    smolvm_ctx *ctx = NULL;
    int r = smolvm_ctx_new(&ctx, NULL, &j->err);

    if (r < 0)
        return r;
    if (!(j->c = calloc(1, sizeof(*j->c)))) {
        smolvm_ctx_free(ctx);
        (void)snprintf(j->why, sizeof(j->why), "out of memory");
        return SMOLVM_ENOMEM;
    }
    j->c->ctx = ctx;
    j->c->refs = 1;
    return 0;
}

static int execute(job *j)
{
    switch (j->op) {
    case OP_CREATE:
    case OP_OPEN: {
        int r = new_ctx(j);

        if (r == 0)
            r = j->op == OP_CREATE ? smolvm_vm_create(&j->vm, j->c->ctx, &j->create->o, &j->err)
                                   : smolvm_vm_open(&j->vm, j->c->ctx, j->s1, &j->err);
        if (r == 0)
            r = smolvm_vm_info_json(&j->info, j->vm, &j->err);
        return r;
    }
    case OP_LIST: {
        int r = new_ctx(j);

        if (r == 0)
            r = smolvm_vm_list_json(&j->text, j->c->ctx, &j->err);
        return r; /* the context goes with the job */
    }
    case OP_START_BEGIN: return smolvm_vm_start_begin(j->vm, j->ms, &j->err);
    case OP_START_CONFIRM: return smolvm_vm_start_confirm(j->vm, &j->err);
    case OP_START_ABORT: return smolvm_vm_start_abort(j->vm, j->code, j->s1, &j->err);
    case OP_STOP: return smolvm_vm_stop(j->vm, j->ms, &j->err);
    case OP_DELETE: return smolvm_vm_delete(j->vm, &j->err);
    case OP_KEEP: {
        int r = smolvm_vm_keep(j->vm, &j->err);

        if (r == 0)
            j->owned = 0;
        return r;
    }
    case OP_CLOSE: {
        int r = close_now(j->vm, j->c, j->owned, &j->err);

        j->vm = NULL;
        j->c = NULL;
        j->owned = 0;
        return r;
    }
    case OP_INFO: return smolvm_vm_info_json(&j->text, j->vm, &j->err);
    case OP_STATUS: j->status = smolvm_vm_status(j->vm); return 0;
    case OP_FORWARD: return smolvm_vm_forward(j->vm, j->s1, j->n1, j->n2, &j->err);
    case OP_UNFORWARD: return smolvm_vm_unforward(j->vm, j->n1, &j->err);
    case OP_RUN: return smolvm_vm_run(&j->result, j->vm, j->s1, &j->run, &j->err);
    case OP_READ_FILE: return smolvm_vm_read_file(&j->text, &j->text_len, j->vm, j->s1, &j->err);
    case OP_WRITE_FILE: return smolvm_vm_write_file(j->vm, j->s1, j->data, j->len, &j->err);
    case OP_UPLOAD: return smolvm_vm_upload(j->vm, j->s1, j->s2, &j->err);
    case OP_DOWNLOAD: return smolvm_vm_download(j->vm, j->s1, j->s2, &j->err);
    case OP_PAUSE: return smolvm_vm_pause(j->vm, &j->err);
    case OP_RESUME: return smolvm_vm_resume(j->vm, &j->err);
    case OP_SUSPEND: return smolvm_vm_suspend(j->vm, &j->err);
    case OP_SNAPSHOT: return smolvm_vm_snapshot(j->vm, j->s1, &j->err);
    }
    (void)snprintf(j->why, sizeof(j->why), "job: unknown operation");
    return SMOLVM_EINVAL;
}

static void *job_main(void *arg)
{
    job *j = arg;
    smolvm_vm *vm = NULL;
    smolvm_lua_ctx *c = NULL;
    bool wait, closing;
    int owned = 0;

    j->rc = execute(j);
    pthread_mutex_lock(&j->mu);
    j->done = true;
    pthread_cond_broadcast(&j->cv);
    wait = j->waiter;
    closing = j->close_after;
    if (closing) {
        vm = j->vm;
        c = j->c;
        owned = j->owned;
        j->vm = NULL;
        j->c = NULL;
    }
    pthread_mutex_unlock(&j->mu);
    if (closing)
        (void)close_now(vm, c, owned, NULL);
    if (wait)
        answer(j);
    job_unref(j, true);
    return NULL;
}

/* ---------------------------------------------------------------- lending */

int smolvm_lua_job_take_back(smolvm_lua_vm *u)
{
    job *j = u->lent;

    if (!j)
        return 0;
    pthread_mutex_lock(&j->mu);
    if (!j->done) {
        pthread_mutex_unlock(&j->mu);
        return -1;
    }
    u->vm = j->vm;
    u->c = j->c;
    u->owned = j->owned;
    j->vm = NULL;
    j->c = NULL;
    j->lender = NULL;
    pthread_mutex_unlock(&j->mu);
    u->lent = NULL;
    job_unref(j, false);
    return 0;
}

void smolvm_lua_job_close_vm(smolvm_lua_vm *u)
{
    job *j = u->lent;

    if (j) {
        pthread_mutex_lock(&j->mu);
        j->lender = NULL;
        if (!j->done) {
            j->close_after = true; /* the job's thread closes it when done */
            pthread_mutex_unlock(&j->mu);
            u->lent = NULL;
            job_unref(j, false);
            return;
        }
        u->vm = j->vm;
        u->c = j->c;
        u->owned = j->owned;
        j->vm = NULL;
        j->c = NULL;
        pthread_mutex_unlock(&j->mu);
        u->lent = NULL;
        job_unref(j, false);
    }
    close_in_background(u->vm, u->c, u->owned);
    u->vm = NULL;
    u->c = NULL;
    u->owned = 0;
}

/* ---------------------------------------------------------------- Lua side */

/* The userdata first, then the job: an error in between leaves nothing behind. */
static job *job_new(lua_State *L, job_op op)
{
    job **ud = lua_newuserdata(L, sizeof(*ud));
    job *j;

    *ud = NULL;
    luaL_setmetatable(L, JOB_MT);
    if (!(j = calloc(1, sizeof(*j))))
        luaL_error(L, "out of memory");
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    j->refs = 1;
    j->waiter = true;
    j->op = op;
    j->listen_fd = -1;
    j->run = (smolvm_run_options)SMOLVM_RUN_OPTIONS_INIT;
    *ud = j;
    return j;
}

static job *check_job(lua_State *L)
{
    job **ud = luaL_checkudata(L, 1, JOB_MT);

    if (!*ud)
        luaL_error(L, "attempt to use a freed job");
    return *ud;
}

static int l_job_gc(lua_State *L)
{
    job **ud = luaL_checkudata(L, 1, JOB_MT);
    job *j = *ud;

    if (!j)
        return 0;
    *ud = NULL;
    pthread_mutex_lock(&j->mu);
    j->waiter = false;
    pthread_mutex_unlock(&j->mu);
    /* A lender keeps its own reference: it takes its VM back once the job is done. */
    job_unref(j, false);
    return 0;
}

/* Start the job's thread (the job on the stack top). Returns 1 (the job), or pushes
 * nil, msg, code and returns 3. lender: the VM userdata lending its handle, or NULL. */
static int job_start(lua_State *L, job *j, smolvm_lua_vm *lender)
{
    int r;

    /* On failure the job's userdata (collected later) frees what was copied. */
    if ((r = job_listen(j)) < 0) {
        lua_pushnil(L);
        lua_pushstring(L, j->why);
        lua_pushstring(L, smolvm_error_name(r));
        return 3;
    }
    if (lender) {
        smolvm_lua_procs_close(lender);
        j->vm = lender->vm;
        j->c = lender->c;
        j->owned = lender->owned;
        j->lender = lender;
        lender->vm = NULL;
        lender->c = NULL;
        lender->lent = j;
        j->refs++;
    }
    j->refs++; /* the thread's */
    if ((r = start_thread(job_main, j)) != 0) {
        j->refs--;
        if (lender) {
            lender->lent = NULL;
            lender->vm = j->vm;
            lender->c = j->c;
            j->vm = NULL;
            j->c = NULL;
            j->lender = NULL;
            j->refs--;
        }
        lua_pushnil(L);
        lua_pushfstring(L, "job: start a thread: %s", strerror(r));
        lua_pushstring(L, smolvm_error_name(SMOLVM_EIO));
        return 3;
    }
    return 1;
}

static char *dup_or_raise(lua_State *L, const char *s)
{
    char *d;

    if (!s)
        return NULL;
    if (!(d = strdup(s)))
        luaL_error(L, "out of memory");
    return d;
}

static char **strv_dup(lua_State *L, const char *const *v)
{
    size_t n = 0, i;
    char **d;

    if (!v)
        return NULL;
    while (v[n])
        n++;
    if (!(d = calloc(n + 1, sizeof(*d))))
        luaL_error(L, "out of memory");
    for (i = 0; i < n; i++)
        if (!(d[i] = strdup(v[i]))) {
            strv_free(d);
            luaL_error(L, "out of memory");
        }
    return d;
}

int smolvm_lua_job_create(lua_State *L, const smolvm_vm_options *o)
{
    job *j = job_new(L, OP_CREATE);
    create_args *a;
    size_t i;

    if (!(a = calloc(1, sizeof(*a))))
        return luaL_error(L, "out of memory");
    j->create = a; /* freed with the job from here on */
    a->o = *o;
    a->o.id = a->id = dup_or_raise(L, o->id);
    a->o.image = a->image = dup_or_raise(L, o->image);
    a->o.template_name = a->template_name = dup_or_raise(L, o->template_name);
    a->o.env = (const char *const *)(a->env = strv_dup(L, o->env));
    a->o.labels = (const char *const *)(a->labels = strv_dup(L, o->labels));
    a->o.forwards = NULL;
    if (o->n_forwards) {
        if (!(a->fw = calloc(o->n_forwards, sizeof(*a->fw))))
            return luaL_error(L, "out of memory");
        for (i = 0; i < o->n_forwards; i++) {
            a->fw[i] = o->forwards[i];
            a->fw[i].host_address = NULL; /* never the borrowed one, even if the copy fails */
            a->fw[i].host_address = dup_or_raise(L, o->forwards[i].host_address);
        }
        a->o.forwards = a->fw;
    }
    return job_start(L, j, NULL);
}

/* core.job_open(id) -> job */
static int l_job_open(lua_State *L)
{
    const char *id = luaL_checkstring(L, 1);
    job *j = job_new(L, OP_OPEN);

    j->s1 = dup_or_raise(L, id);
    return job_start(L, j, NULL);
}

/* core.job_list() -> job */
static int l_job_list(lua_State *L)
{
    return job_start(L, job_new(L, OP_LIST), NULL);
}

static int check_ms(lua_State *L, int idx)
{
    lua_Integer ms = luaL_checkinteger(L, idx);

    luaL_argcheck(L, ms >= 0 && ms <= INT_MAX, idx, "timeout in ms out of range");
    return (int)ms;
}

static int check_port(lua_State *L, int idx)
{
    lua_Integer p = luaL_checkinteger(L, idx);

    luaL_argcheck(L, p >= 1 && p <= 65535, idx, "port must be 1..65535");
    return (int)p;
}

static int code_of(const char *name)
{
    for (int c = -1; c >= _SMOLVM_CODE_MIN; c--)
        if (strcmp(smolvm_error_name(c), name) == 0)
            return c;
    return SMOLVM_EVMM;
}

/* The "run" job's options: { timeout_ms=, env={ K=v }, cwd=, stdin=, output_limit= }. */
static void run_args(lua_State *L, job *j, int t)
{
    smolvm_run_options *o = &j->run;
    lua_Integer v;
    size_t n = 0, i = 0;

    if (lua_isnoneornil(L, t))
        return;
    luaL_checktype(L, t, LUA_TTABLE);
    if (smolvm_getfield(L, t, "timeout_ms") != LUA_TNIL) {
        v = luaL_checkinteger(L, -1);
        luaL_argcheck(L, v >= 0 && v <= INT_MAX, t, "timeout_ms out of range");
        o->timeout_ms = (int)v;
    }
    lua_pop(L, 1);
    if (smolvm_getfield(L, t, "output_limit") != LUA_TNIL) {
        v = luaL_checkinteger(L, -1);
        luaL_argcheck(L, v >= 0 && v <= INT_MAX, t, "output_limit out of range");
        o->output_limit = (size_t)v;
    }
    lua_pop(L, 1);
    if (smolvm_getfield(L, t, "cwd") != LUA_TNIL)
        o->cwd = j->s2 = dup_or_raise(L, luaL_checkstring(L, -1));
    lua_pop(L, 1);
    if (smolvm_getfield(L, t, "stdin") != LUA_TNIL) {
        const char *d = luaL_checklstring(L, -1, &j->len);

        if (!(j->data = malloc(j->len ? j->len : 1)))
            luaL_error(L, "out of memory");
        memcpy(j->data, d, j->len);
        o->stdin_data = j->data;
        o->stdin_len = j->len;
    }
    lua_pop(L, 1);
    if (smolvm_getfield(L, t, "env") == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            n++;
            lua_pop(L, 1);
        }
        if (n > SMOLVM_ENV_MAX)
            luaL_error(L, "option 'env': at most %d entries", SMOLVM_ENV_MAX);
        if (!(j->run_env = calloc(n + 1, sizeof(*j->run_env))))
            luaL_error(L, "out of memory");
        lua_pushnil(L);
        while (lua_next(L, -2) && i < n) {
            if (lua_type(L, -2) != LUA_TSTRING ||
                (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER))
                luaL_error(L, "option 'env': expected NAME = value entries");
            lua_pushvalue(L, -2);
            lua_pushliteral(L, "=");
            lua_pushvalue(L, -3);
            lua_concat(L, 3);
            j->run_env[i++] = dup_or_raise(L, lua_tostring(L, -1));
            lua_pop(L, 2);
        }
        o->env = (const char *const *)j->run_env;
    }
    lua_pop(L, 1);
}

int smolvm_lua_vm_job(lua_State *L)
{
    smolvm_lua_vm *u = smolvm_lua_check_vm(L, 1);
    const char *name = luaL_checkstring(L, 2);
    int op = -1;
    job *j;

    if (!u->background)
        return luaL_error(L, "vm:job: only for vms made by a job");
    for (size_t i = 0; i < sizeof(op_names) / sizeof(op_names[0]); i++)
        if (op_names[i] && strcmp(op_names[i], name) == 0)
            op = (int)i;
    luaL_argcheck(L, op >= 0, 2, "unknown job operation");
    j = job_new(L, (job_op)op); /* stack top; arguments from 3 on */
    switch (j->op) {
    case OP_START_BEGIN:
    case OP_STOP: j->ms = check_ms(L, 3); break;
    case OP_START_ABORT:
        j->code = code_of(luaL_checkstring(L, 3));
        j->s1 = dup_or_raise(L, luaL_checkstring(L, 4));
        break;
    case OP_FORWARD:
        j->n1 = check_port(L, 3);
        j->n2 = check_port(L, 4);
        j->s1 = dup_or_raise(L, luaL_optstring(L, 5, NULL));
        break;
    case OP_UNFORWARD: j->n1 = check_port(L, 3); break;
    case OP_RUN:
        j->s1 = dup_or_raise(L, luaL_checkstring(L, 3));
        run_args(L, j, 4);
        break;
    case OP_READ_FILE:
    case OP_SNAPSHOT: j->s1 = dup_or_raise(L, luaL_checkstring(L, 3)); break;
    case OP_WRITE_FILE: {
        const char *d;

        j->s1 = dup_or_raise(L, luaL_checkstring(L, 3));
        d = luaL_checklstring(L, 4, &j->len);
        if (!(j->data = malloc(j->len ? j->len : 1)))
            return luaL_error(L, "out of memory");
        memcpy(j->data, d, j->len);
        break;
    }
    case OP_UPLOAD:
    case OP_DOWNLOAD:
        j->s1 = dup_or_raise(L, luaL_checkstring(L, 3));
        j->s2 = dup_or_raise(L, luaL_checkstring(L, 4));
        break;
    default: break;
    }
    return job_start(L, j, u);
}

static int l_job_path(lua_State *L)
{
    lua_pushstring(L, check_job(L)->path);
    return 1;
}

static int l_job_done(lua_State *L)
{
    job *j = check_job(L);
    bool done;

    pthread_mutex_lock(&j->mu);
    done = j->done;
    pthread_mutex_unlock(&j->mu);
    lua_pushboolean(L, done);
    return 1;
}

/* job:wait(timeout_ms) -> true | nil, msg, "ETIMEDOUT" */
static int l_job_wait(lua_State *L)
{
    job *j = check_job(L);
    lua_Integer ms = luaL_checkinteger(L, 2);
    struct timespec until;
    bool done;

    luaL_argcheck(L, ms >= 0 && ms <= INT_MAX, 2, "timeout in ms out of range");
    (void)clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)(ms / 1000);
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&j->mu);
    while (!j->done && pthread_cond_timedwait(&j->cv, &j->mu, &until) != ETIMEDOUT)
        ;
    done = j->done;
    pthread_mutex_unlock(&j->mu);
    if (!done) {
        lua_pushnil(L);
        lua_pushfstring(L, "job: not done after %d ms", (int)ms);
        lua_pushstring(L, smolvm_error_name(SMOLVM_ETIMEDOUT));
        return 3;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* A new background VM userdata holding the job's VM. */
static void push_background_vm(lua_State *L, job *j, int owned)
{
    smolvm_lua_vm *u = lua_newuserdata(L, sizeof(*u));

    memset(u, 0, sizeof(*u));
    luaL_setmetatable(L, SMOLVM_LUA_VM_MT);
    u->vm = j->vm;
    u->c = j->c;
    u->owned = owned;
    u->background = 1;
    j->vm = NULL;
    j->c = NULL;
}

static int l_job_result(lua_State *L)
{
    job *j = check_job(L);
    smolvm_lua_box *box;
    bool done;

    pthread_mutex_lock(&j->mu);
    done = j->done;
    pthread_mutex_unlock(&j->mu);
    if (!done)
        return luaL_error(L, "job:result(): the job is not done");
    if (j->taken)
        return luaL_error(L, "job:result(): already taken");
    j->taken = true;
    if (j->lender && j->lender->lent == j)
        (void)smolvm_lua_job_take_back(j->lender);
    if (j->rc < 0 && !j->err) {
        lua_pushnil(L);
        lua_pushstring(L, j->why[0] ? j->why : "job failed");
        lua_pushstring(L, smolvm_error_name(j->rc));
        return 3;
    }
    box = smolvm_lua_box_new(L);
    if (j->rc < 0) {
        box->err = j->err;
        j->err = NULL;
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    }
    switch (j->op) {
    case OP_CREATE:
    case OP_OPEN:
        push_background_vm(L, j, j->op == OP_CREATE);
        box->text = j->info;
        j->info = NULL;
        return 1 + smolvm_lua_push_json_text(L, box);
    case OP_LIST:
    case OP_INFO:
        box->text = j->text;
        j->text = NULL;
        return smolvm_lua_push_json_text(L, box);
    case OP_STATUS: lua_pushstring(L, j->status); return 1;
    case OP_RUN: smolvm_lua_push_run_result(L, j->result); return 1;
    case OP_READ_FILE:
        lua_pushlstring(L, j->text ? j->text : "", j->text ? j->text_len : 0);
        return 1;
    default: lua_pushboolean(L, 1); return 1;
    }
}

static int l_job_tostring(lua_State *L)
{
    job **ud = luaL_checkudata(L, 1, JOB_MT);

    if (*ud)
        lua_pushfstring(L, "smolvm.job (%s)", (*ud)->path);
    else
        lua_pushliteral(L, "smolvm.job (freed)");
    return 1;
}

static const luaL_Reg job_methods[] = {
    {"path", l_job_path},     {"done", l_job_done}, {"wait", l_job_wait},
    {"result", l_job_result}, {NULL, NULL},
};

static const luaL_Reg job_meta[] = {
    {"__gc", l_job_gc},
    {"__tostring", l_job_tostring},
    {NULL, NULL},
};

void smolvm_lua_open_job(lua_State *L)
{
    luaL_newmetatable(L, JOB_MT);
    luaL_setfuncs(L, job_meta, 0);
    luaL_newlib(L, job_methods);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, JOB_MT);
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);

    lua_pushcfunction(L, l_job_open);
    lua_setfield(L, -2, "job_open");
    lua_pushcfunction(L, l_job_list);
    lua_setfield(L, -2, "job_list");
}
