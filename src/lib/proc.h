/* SPDX-License-Identifier: MIT */
/* Tracking VMM processes that are not our children: pid plus start time. */
#ifndef SMOLVM_PROC_H
#define SMOLVM_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "smolvm.h"

/* pidfd_open(2): a pollable fd that becomes readable when pid exits, or -1 (errno).
 * Close-on-exec. */
int smolvm_pidfd_open(pid_t pid);

/* Start time of pid in clock ticks since boot (/proc/PID/stat field 22). */
int smolvm_pid_start_time(pid_t pid, uint64_t *out, smolvm_error **err);

/* Is the process pid with this start time alive (not a zombie)? A reused pid (other
 * start time) is not. */
int smolvm_pid_alive(pid_t pid, uint64_t start_time);

/* Wait until the process exits (pidfd + poll) or the deadline (monotonic ms) passes:
 * 0 exited, SMOLVM_ETIMEDOUT otherwise. Works for non-children. */
int smolvm_pid_wait_exit(pid_t pid, uint64_t start_time, int64_t deadline, smolvm_error **err);

/* SIGKILL the process if it is still the one (pid + start time), then wait for it to
 * be gone (bounded by deadline). */
int smolvm_pid_kill(pid_t pid, uint64_t start_time, int64_t deadline, smolvm_error **err);

/* What the child does to itself between fork and exec, in this order (each failure
 * fails the spawn with its errno): join cgroups, set its oom_score_adj, arm the
 * lifeline, shrink its capability bounding set, set no_new_privs. */
typedef struct smolvm_spawn_confine {
    /* Open cgroup.procs files (v1: one per hierarchy; v2: one): "0" is written to each,
     * so the program runs in the cgroups from its first instruction. */
    const int *cgroup_procs_fds;
    size_t n_cgroup_procs_fds;
    bool set_oom_score_adj;
    int oom_score_adj; /* -1000..1000 */
    /* The read end of a pipe whose write end only the caller holds: armed (O_ASYNC,
     * F_SETOWN the child, F_SETSIG SIGKILL) so that the kernel SIGKILLs the program when
     * the last writer closes, i.e. when the caller dies. Unlike PR_SET_PDEATHSIG it
     * survives the program changing its own uid. List it in keep_fds too; -1: none. */
    int lifeline_fd;
    /* Capabilities kept in the bounding set (bit n = capability n); every other one is
     * dropped (needs CAP_SETPCAP). 0: untouched. */
    uint64_t bounding_keep;
    bool no_new_privs;
} smolvm_spawn_confine;

/* How smolvm_spawn starts a program. stdin is /dev/null; stdout and stderr go to
 * log_path (appended, created 0600), stdout to stdout_fd instead when it is >= 0; every
 * other fd is closed except keep_fds, passed through at the same numbers. */
typedef struct smolvm_spawn_req {
    char *const *argv;
    const char *log_path;
    const int *keep_fds;
    size_t n_keep;
    int stdout_fd; /* -1: the log */
    /* true: double fork + setsid, so it outlives the caller and is not its child.
     * false: the caller's child in its own session, SIGKILLed when the caller dies
     * (PR_SET_PDEATHSIG); the caller reaps it. */
    bool detached;
    /* Appended: NULL for none. Borrowed for the call. */
    const smolvm_spawn_confine *confine;
    /* Appended: the program's working directory; NULL: the caller's. */
    const char *cwd;
} smolvm_spawn_req;

/* Returns the program's pid once it has exec'd (an exec failure is reported as an error
 * with its errno). */
int smolvm_spawn(const smolvm_spawn_req *req, pid_t *out_pid, smolvm_error **err);

/* smolvm_spawn, detached, with at most one fd (keep_fd >= 3, or -1) passed through. */
int smolvm_spawn_detached(char *const argv[], const char *log_path, int keep_fd, pid_t *out_pid,
                          smolvm_error **err);

/* The VMM of a VM directory, found through the pidfile the VMM wrote itself (so a
 * controller killed between spawning it and recording its pid leaves a findable
 * process): 1 if <dir>/<pidfile> names a live process whose command line contains
 * dir (a reused pid is never taken for it), with its pid and start time; else 0. */
int smolvm_pid_find_vmm(const char *dir, const char *pidfile, pid_t *pid, uint64_t *start);

#endif
