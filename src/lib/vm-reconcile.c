/* SPDX-License-Identifier: MIT */
/* The VM lock and reconcile: the store made to agree with the processes that exist. */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>

#include "cgroup.h"
#include "error.h"
#include "proc.h"
#include "sv-spec.h"
#include "template.h"
#include "vm-config.h"
#include "vm-net.h"
#include "vm-reconcile.h"
#include "vmm/vmm.h"

#define CONSOLE_TAIL_BYTES 1024
#define CONSOLE_TAIL_LINES 6
#define KILL_TIMEOUT_MS 2000

int smolvm_vm_lock(int *fd, const char *dir, const char *id, const char *what, int wait_ms,
                   smolvm_error **err)
{
    _cleanup_free_ char *path = smolvm_strdupf("%s/%s", dir, SMOLVM_VM_LOCK);
    _cleanup_close_ int lfd = -1;
    int64_t deadline = smolvm_now_ms() + wait_ms;
    int pause_ms = 1;

    if (!path)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    lfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lfd < 0)
        return smolvm_err_errno(err, errno, "%s '%s': open lock '%s'", what, id, path);
    /* flock(2) cannot wait with a deadline, so a short holder (a reconcile) is waited
     * out with a bounded backoff; a long one (a start) is reported, not waited for. */
    while (flock(lfd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK && smolvm_remaining_ms(deadline) > 0) {
            struct timespec ts = {0, (long)pause_ms * 1000000L};

            (void)nanosleep(&ts, NULL);
            pause_ms = pause_ms < 50 ? pause_ms * 2 : 50;
            continue;
        }
        if (errno == EWOULDBLOCK)
            return smolvm_err(err, SMOLVM_ESTATE,
                              "%s '%s': another process is starting, stopping or deleting "
                              "this vm (try again when it is done)",
                              what, id);
        return smolvm_err_errno(err, errno, "%s '%s': lock", what, id);
    }
    *fd = TAKE_FD(lfd);
    return 0;
}

bool smolvm_vm_vmm_alive(const smolvm_vm_row *row, pid_t *pid, uint64_t *start)
{
    if (row->pid > 0 && smolvm_pid_alive((pid_t)row->pid, row->pid_start)) {
        *pid = (pid_t)row->pid;
        *start = row->pid_start;
        return true;
    }
    return row->dir && smolvm_pid_find_vmm(row->dir, SMOLVM_VMM_PIDFILE, pid, start);
}

void smolvm_vm_reap_supervisor(const smolvm_vm_row *row, int64_t deadline)
{
    pid_t pid = (pid_t)row->sv_pid;

    /* The supervisor itself deletes sandboxes through the library: not itself. */
    if (pid <= 0 || pid == getpid() || !smolvm_pid_alive(pid, row->sv_start))
        return;
    if (smolvm_pid_wait_exit(pid, row->sv_start, deadline, NULL) < 0)
        (void)smolvm_pid_kill(pid, row->sv_start, smolvm_now_ms() + KILL_TIMEOUT_MS, NULL);
}

void smolvm_vm_kill_vmm(const smolvm_vm_row *row)
{
    pid_t pid;
    uint64_t start;

    if (smolvm_vm_vmm_alive(row, &pid, &start))
        (void)smolvm_pid_kill(pid, start, smolvm_now_ms() + KILL_TIMEOUT_MS, NULL);
    /* Its supervisor exits once the VMM is gone; waited for briefly, then killed. */
    smolvm_vm_reap_supervisor(row, smolvm_now_ms() + KILL_TIMEOUT_MS);
}

void smolvm_vm_cgroup_remove(smolvm_ctx *ctx, const char *id)
{
    smolvm_cgroup_layout *l = NULL;
    smolvm_error *e = NULL;

    if (smolvm_cgroup_layout_detect(&l, NULL) == 0 && l->usable &&
        smolvm_cgroup_remove(l, ctx->state_dir, id, &e) < 0)
        smolvm_log(ctx, SMOLVM_LOG_WARN, "vm '%s': %s", id, smolvm_error_message(e));
    smolvm_error_free(e);
    smolvm_cgroup_layout_free(l);
}

/* Did the guest power itself off (said so on its control channel, as its supervisor
 * recorded)? Console text is not believed: any guest process can print anything. */
static bool guest_powered_off(const char *dir)
{
    smolvm_sv_exit ex;

    return smolvm_sv_exit_read(&ex, dir, NULL) == 0 && ex.guest_poweroff;
}

/* An owner process that is gone, or a ttl that has passed. */
static bool lifetime_over(const smolvm_vm_row *row)
{
    if (row->owner_pid > 0 && !smolvm_pid_alive((pid_t)row->owner_pid, row->owner_start))
        return true;
    return row->expires_at > 0 && smolvm_wall_ms() >= row->expires_at;
}

char *smolvm_vm_console_tail(const char *dir)
{
    _cleanup_free_ char *path = smolvm_strdupf("%s/%s", dir, SMOLVM_VMM_CONSOLE_LOG);
    char *tail =
        path ? smolvm_file_tail(path, 0, CONSOLE_TAIL_BYTES, CONSOLE_TAIL_LINES, "|") : NULL;

    return tail ? tail : strdup("");
}

smolvm_reconcile_action smolvm_reconcile_decide(const char *status, bool vmm_alive, bool has_pid)
{
    if (!status)
        status = "";
    if (strcmp(status, "running") == 0 || strcmp(status, "paused") == 0)
        return vmm_alive ? SMOLVM_RECONCILE_NONE : SMOLVM_RECONCILE_DIED;
    if (strcmp(status, "suspending") == 0)
        return SMOLVM_RECONCILE_FINISH_SUSPEND;
    if (strcmp(status, "starting") == 0)
        return SMOLVM_RECONCILE_FINISH_START;
    if (strcmp(status, "stopping") == 0)
        return SMOLVM_RECONCILE_FINISH_STOP;
    /* created / stopped / error: any VMM still around is an orphan. */
    return vmm_alive || has_pid ? SMOLVM_RECONCILE_KILL_ORPHAN : SMOLVM_RECONCILE_NONE;
}

static smolvm_reconcile_action decide_row(const smolvm_vm_row *row)
{
    uint64_t start;
    pid_t pid;
    smolvm_reconcile_action a = smolvm_reconcile_decide(
        row->status, smolvm_vm_vmm_alive(row, &pid, &start), row->pid != 0 || row->sv_pid != 0);

    /* A sandbox whose owner died or whose ttl passed, with nothing running (a running
     * one's supervisor ends it itself). */
    if (a == SMOLVM_RECONCILE_NONE && row->status && strcmp(row->status, "running") != 0 &&
        strcmp(row->status, "paused") != 0 && lifetime_over(row))
        return SMOLVM_RECONCILE_END;
    return a;
}

static bool row_is_nat(const smolvm_vm_row *row)
{
    smolvm_vm_config *c = NULL;
    bool nat =
        smolvm_vm_config_from_json(&c, row->config_json, NULL) == 0 && c->network == SMOLVM_NET_NAT;

    smolvm_vm_config_free(c);
    return nat;
}

static void vm_row_freep(smolvm_vm_row **row)
{
    smolvm_vm_row_free(*row);
}

/* Nothing runs any more: the directory, then the record (leases and ports go with it). */
static int end_vm(smolvm_ctx *ctx, const smolvm_vm_row *row, smolvm_error **err)
{
    int r;

    smolvm_vm_kill_vmm(row);
    smolvm_vm_cgroup_remove(ctx, row->id);
    if (row_is_nat(row))
        smolvm_vm_net_down(ctx, row->id);
    if ((r = smolvm_rm_rf(row->dir, err)) < 0 ||
        (r = smolvm_store_vm_delete(ctx->store, row->id, err)) < 0)
        return r;
    (void)smolvm_store_event(ctx->store, row->id, "delete",
                             row->owner_pid ? "its owner process exited" : "its ttl passed", NULL);
    {
        smolvm_vm_config *c = NULL;

        if (smolvm_vm_config_from_json(&c, row->config_json, NULL) == 0 && c->template_name)
            smolvm_template_release(ctx, c->template_name);
        smolvm_vm_config_free(c);
    }
    return 0;
}

int smolvm_vm_reconcile_row(int *changed, smolvm_ctx *ctx, const smolvm_vm_row *seen,
                            smolvm_error **err)
{
    _cleanup_close_ int lock = -1;
    _cleanup_free_ char *tail = NULL, *reason = NULL;
    _cleanup_(vm_row_freep) smolvm_vm_row *row = NULL;
    smolvm_reconcile_action action;
    int r = 0;

    if (changed)
        *changed = 0;
    if (!seen->dir || access(seen->dir, F_OK) < 0)
        return 0;
    /* A healthy VM is only read: readers never take the lock that start, stop and
     * delete need. */
    if (decide_row(seen) == SMOLVM_RECONCILE_NONE)
        return 0;
    /* Whoever holds the lock is acting on this VM right now; its view wins. */
    if (smolvm_vm_lock(&lock, seen->dir, seen->id, "reconcile", 0, NULL) < 0)
        return 0;
    /* What was read before the lock may be stale (a stop that just finished): decide
     * on the row as it is now. */
    if (smolvm_store_vm_get(ctx->store, seen->id, &row, NULL) < 0)
        return 0;
    action = decide_row(row);
    switch (action) {
    case SMOLVM_RECONCILE_NONE: return 0;
    case SMOLVM_RECONCILE_DIED:
        smolvm_vm_reap_supervisor(row, smolvm_now_ms() + KILL_TIMEOUT_MS);
        tail = smolvm_vm_console_tail(row->dir);
        if (guest_powered_off(row->dir)) {
            r = smolvm_store_vm_set_status(ctx->store, row->id, "stopped", "the guest powered off",
                                           err);
        } else {
            reason = smolvm_strdupf("the vmm exited unexpectedly; console: %s",
                                    tail && *tail ? tail : "(empty)");
            r = smolvm_store_vm_set_status(ctx->store, row->id, "error",
                                           reason ? reason : "the vmm exited unexpectedly", err);
        }
        break;
    case SMOLVM_RECONCILE_FINISH_START:
        /* The process that was starting it died: finish the job. */
        smolvm_vm_kill_vmm(row);
        r = smolvm_store_vm_set_status(ctx->store, row->id, "error",
                                       "start interrupted (the controlling process exited)", err);
        break;
    case SMOLVM_RECONCILE_FINISH_STOP:
        smolvm_vm_kill_vmm(row);
        r = smolvm_store_vm_set_status(ctx->store, row->id, "stopped", NULL, err);
        break;
    case SMOLVM_RECONCILE_FINISH_SUSPEND: {
        /* The suspend wrote saved.json into suspended.tmp before anything else ended;
         * only a rename was left if it is whole. */
        _cleanup_free_ char *tmp = smolvm_strdupf("%s/suspended.tmp", row->dir);
        _cleanup_free_ char *fin = smolvm_strdupf("%s/suspended", row->dir);
        _cleanup_free_ char *rec = tmp ? smolvm_strdupf("%s/saved.json", tmp) : NULL;

        smolvm_vm_kill_vmm(row);
        if (rec && fin && access(rec, F_OK) == 0 && rename(tmp, fin) == 0) {
            r = smolvm_store_vm_set_status(ctx->store, row->id, "suspended", NULL, err);
        } else {
            if (tmp)
                (void)smolvm_rm_rf(tmp, NULL);
            r = smolvm_store_vm_set_status(ctx->store, row->id, "stopped",
                                           "suspend interrupted (the controlling process exited)",
                                           err);
        }
        break;
    }
    case SMOLVM_RECONCILE_KILL_ORPHAN: smolvm_vm_kill_vmm(row); break;
    case SMOLVM_RECONCILE_END:
        if ((r = end_vm(ctx, row, err)) == 0 && changed)
            *changed = 1;
        return r;
    }
    if (r == 0)
        r = smolvm_store_vm_set_pid(ctx->store, row->id, 0, 0, err);
    if (r == 0)
        r = smolvm_store_vm_set_supervisor(ctx->store, row->id, 0, 0, err);
    if (r == 0 && row_is_nat(row))
        smolvm_vm_net_down(ctx, row->id);
    if (r == 0)
        smolvm_vm_cgroup_remove(ctx, row->id);
    if (r == 0) {
        (void)smolvm_store_event(ctx->store, row->id, "reconcile", row->status, NULL);
        if (changed)
            *changed = 1;
        /* Stopped now, and nobody wants it any more. */
        if (lifetime_over(row))
            r = end_vm(ctx, row, err);
    }
    return r;
}

/* A group is kept while its VM may have a VMM: asked of the store after the group was
 * seen, so a start (recorded before its supervisor makes the group) is never undone. */
static bool cgroup_in_use(const char *vm_id, void *payload)
{
    smolvm_ctx *ctx = payload;
    smolvm_vm_row *row = NULL;
    bool live;

    if (smolvm_store_vm_get(ctx->store, vm_id, &row, NULL) < 0)
        return false;
    live = row->status &&
           (strcmp(row->status, "running") == 0 || strcmp(row->status, "starting") == 0 ||
            strcmp(row->status, "stopping") == 0);
    smolvm_vm_row_free(row);
    return live;
}

static void cgroup_gc(smolvm_ctx *ctx)
{
    smolvm_cgroup_layout *l = NULL;
    int n;

    if (smolvm_cgroup_layout_detect(&l, NULL) == 0 && l->usable &&
        (n = smolvm_cgroup_gc(l, ctx->state_dir, cgroup_in_use, ctx)) > 0)
        smolvm_log(ctx, SMOLVM_LOG_DEBUG, "reconcile: removed %d stale cgroup(s)", n);
    smolvm_cgroup_layout_free(l);
}

int smolvm_reconcile(int *changed, smolvm_ctx *ctx, smolvm_error **err)
{
    smolvm_vm_row **rows = NULL;
    size_t n = 0, i;
    int r, c, total = 0;
    bool any_nat = false;

    r = smolvm_store_vm_list(ctx->store, &rows, &n, err);
    if (r < 0)
        return r;
    for (i = 0; i < n; i++)
        if (smolvm_vm_reconcile_row(&c, ctx, rows[i], NULL) == 0)
            total += c;
    smolvm_vm_rows_free(rows, n);
    /* TAPs and rules of VMs that are gone or not running (killed controllers,
     * deleted state) are collected against the store as it is under the network lock,
     * so a NAT start in another process is never mistaken for a leftover. */
    rows = NULL;
    n = 0;
    if (smolvm_store_vm_list(ctx->store, &rows, &n, NULL) == 0)
        for (i = 0; i < n && !any_nat; i++)
            any_nat = row_is_nat(rows[i]);
    smolvm_vm_rows_free(rows, n);
    if (any_nat)
        smolvm_vm_net_gc(ctx);
    cgroup_gc(ctx);
    if (changed)
        *changed = total;
    return 0;
}
