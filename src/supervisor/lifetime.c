/* SPDX-License-Identifier: MIT */
/* How a sandbox ends: its owner process dies, its ttl passes, or its VMM exits. */
#include "supervisor.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "proc.h"
#include "util.h"

static void owner_io(sv_loop *loop, int fd, uint32_t events, void *data)
{
    (void)loop;
    (void)fd;
    (void)events;
    sv_delete_sandbox(data, "its owner process exited");
}

static void ttl_due(sv_loop *loop, void *data)
{
    sv *s = data;

    (void)loop;
    s->ttl_timer = 0;
    sv_delete_sandbox(s, "its ttl passed");
}

static void arm_ttl(sv *s, int64_t expires_at_wall)
{
    int64_t left = expires_at_wall - smolvm_wall_ms();

    if (s->ttl_timer)
        sv_loop_cancel(s->loop, s->ttl_timer);
    s->ttl_timer = sv_loop_timer(s->loop, sv_now_ms() + (left > 0 ? left : 0), ttl_due, s);
}

int sv_lifetime_start(sv *s)
{
    if (s->spec->owner_pid > 0) {
        /* Opened, then checked: the pidfd refers to the process that was alive with
         * that start time, so a reused pid is never watched instead. */
        s->owner_pidfd = smolvm_pidfd_open(s->spec->owner_pid);
        if (s->owner_pidfd < 0 || !smolvm_pid_alive(s->spec->owner_pid, s->spec->owner_start)) {
            sv_delete_sandbox(s, "its owner process exited before it started");
            return -1;
        }
        if (sv_loop_add(s->loop, s->owner_pidfd, EPOLLIN, owner_io, s) < 0)
            return -1;
    }
    if (s->spec->expires_at > 0)
        arm_ttl(s, s->spec->expires_at);
    return 0;
}

void sv_lifetime_keep(sv *s, bool set_ttl, int64_t ttl_ms)
{
    if (s->owner_pidfd >= 0) {
        sv_loop_del(s->loop, s->owner_pidfd);
        (void)close(s->owner_pidfd);
        s->owner_pidfd = -1;
    }
    if (set_ttl && s->ttl_timer) {
        sv_loop_cancel(s->loop, s->ttl_timer);
        s->ttl_timer = 0;
    }
    if (set_ttl && ttl_ms >= 0)
        arm_ttl(s, smolvm_wall_ms() + ttl_ms);
    sv_log(s, "kept: no owner; %s", s->ttl_timer ? "its ttl holds" : "no ttl");
}

/* The library does the rest of an end (reconcile, delete) as any other process would:
 * through a context of its own on the same state directory. */
static smolvm_ctx *open_ctx(sv *s)
{
    smolvm_ctx_options o = SMOLVM_CTX_OPTIONS_INIT;
    smolvm_ctx *ctx = NULL;
    smolvm_error *e = NULL;

    o.state_dir = s->spec->state_dir;
    if (smolvm_ctx_new(&ctx, &o, &e) < 0) {
        sv_log(s, "open the state: %s", smolvm_error_message(e));
        smolvm_error_free(e);
        return NULL;
    }
    return ctx;
}

void sv_delete_sandbox(sv *s, const char *why)
{
    smolvm_ctx *ctx;
    smolvm_vm *vm = NULL;
    smolvm_error *e = NULL;
    char msg[200];

    if (s->deleting)
        return;
    s->deleting = true;
    sv_log(s, "deleting the sandbox: %s", why);
    (void)snprintf(msg, sizeof(msg), "the sandbox was deleted: %s", why);
    sv_relay_goaway_all(s, "EVMM", msg);
    sv_guest_kill(s);
    sv_confine_release(s);
    ctx = open_ctx(s);
    if (ctx && smolvm_vm_open(&vm, ctx, s->spec->vm_id, &e) == 0 && smolvm_vm_delete(vm, &e) < 0)
        sv_log(s, "delete: %s", smolvm_error_message(e));
    else if (e && smolvm_error_code(e) != SMOLVM_ENOENT)
        sv_log(s, "delete: %s", smolvm_error_message(e));
    smolvm_error_free(e);
    smolvm_vm_free(vm);
    smolvm_ctx_free(ctx);
    exit(0);
}

void sv_vmm_gone(sv *s, int status)
{
    smolvm_sv_exit ex = {0};
    smolvm_ctx *ctx;
    smolvm_vm *vm = NULL;
    smolvm_error *e = NULL;
    char why[sizeof(((sv *)0)->failure)];

    s->vmm_exited = true;
    sv_confine_release(s);
    ex.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    ex.signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    ex.guest_poweroff = s->guest_poweroff;
    if (smolvm_sv_exit_write(s->spec->dir, &ex, &e) < 0) {
        sv_log(s, "record the exit: %s", smolvm_error_message(e));
        e = smolvm_error_free(e);
    }
    if (s->state == SV_BOOTING && !s->failure[0])
        (void)snprintf(s->failure, sizeof(s->failure),
                       "the vm stopped before it was ready (last milestone: %s; see "
                       "'" SMOLVM_VMM_CONSOLE_LOG "')",
                       s->last_milestone[0] ? s->last_milestone : "none");
    (void)snprintf(why, sizeof(why), "%s", s->failure[0] ? s->failure : "the vm stopped");
    sv_log(s, "vmm exited (%s %d%s): %s", ex.signal ? "signal" : "status",
           ex.signal ? ex.signal : ex.exit_code, ex.guest_poweroff ? ", guest powered off" : "",
           why);
    sv_relay_goaway_all(s, "EVMM", why);
    /* Let the store see it now (unless a stop or delete holding the VM's lock is about
     * to record it itself). */
    ctx = open_ctx(s);
    if (ctx && smolvm_vm_open(&vm, ctx, s->spec->vm_id, &e) < 0 &&
        smolvm_error_code(e) != SMOLVM_ENOENT)
        sv_log(s, "reconcile: %s", smolvm_error_message(e));
    smolvm_error_free(e);
    smolvm_vm_free(vm);
    smolvm_ctx_free(ctx);
    exit(0);
}
