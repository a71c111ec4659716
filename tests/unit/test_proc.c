/* SPDX-License-Identifier: MIT */
/* Process tracking: detached spawn, start time, liveness, waits and kills. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.h"
#include "proc.h"
#include "util.h"

static char tmpdir[] = "/tmp/smolvm-test-proc-XXXXXX";
static char log_path[256];

static int setup(void **state)
{
    (void)state;
    if (!mkdtemp(tmpdir))
        return -1;
    (void)snprintf(log_path, sizeof(log_path), "%s/out.log", tmpdir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return smolvm_rm_rf(tmpdir, NULL);
}

static pid_t spawn_ok(char *const argv[], int keep_fd)
{
    smolvm_error *err = NULL;
    pid_t pid = 0;
    int r = smolvm_spawn_detached(argv, log_path, keep_fd, &pid, &err);

    if (r < 0)
        fail_msg("spawn: %s", smolvm_error_message(err));
    assert_true(pid > 0);
    return pid;
}

static void test_spawn_alive_kill(void **state)
{
    char *argv[] = {"sleep", "30", NULL};
    smolvm_error *err = NULL;
    uint64_t start = 0;
    pid_t pid = spawn_ok(argv, -1);
    int64_t t0;

    (void)state;
    assert_int_equal(smolvm_pid_start_time(pid, &start, &err), 0);
    assert_true(start > 0);
    assert_true(smolvm_pid_alive(pid, start));
    /* The same pid with another start time is a reused pid: not our process. */
    assert_false(smolvm_pid_alive(pid, start + 1));
    /* Detached: its own session, not our child. */
    assert_int_not_equal(getsid(pid), getsid(0));
    assert_int_equal(waitpid(pid, NULL, WNOHANG), -1);
    assert_int_equal(errno, ECHILD);

    t0 = smolvm_now_ms();
    assert_int_equal(smolvm_pid_wait_exit(pid, start, smolvm_now_ms() + 200, &err),
                     SMOLVM_ETIMEDOUT);
    assert_true(smolvm_now_ms() - t0 >= 190);
    err = smolvm_error_free(err);

    /* A wrong start time must neither be killed nor waited for. */
    assert_int_equal(smolvm_pid_kill(pid, start + 1, smolvm_now_ms() + 1000, &err), 0);
    assert_true(smolvm_pid_alive(pid, start));

    assert_int_equal(smolvm_pid_kill(pid, start, smolvm_now_ms() + 5000, &err), 0);
    assert_false(smolvm_pid_alive(pid, start));
    assert_int_equal(smolvm_pid_wait_exit(pid, start, smolvm_now_ms() + 1000, &err), 0);
}

static void test_wait_exit_success_and_log(void **state)
{
    char *argv[] = {"sh", "-c", "sleep 0.2; echo to-stdout; echo to-stderr >&2", NULL};
    smolvm_error *err = NULL;
    _cleanup_free_ char *text = NULL;
    uint64_t start = 0;
    pid_t pid = spawn_ok(argv, -1);
    struct stat st;

    (void)state;
    assert_int_equal(smolvm_pid_start_time(pid, &start, &err), 0);
    assert_int_equal(smolvm_pid_wait_exit(pid, start, smolvm_now_ms() + 5000, &err), 0);
    assert_false(smolvm_pid_alive(pid, start));
    assert_int_equal(smolvm_read_file(log_path, 4096, &text, NULL, &err), 0);
    assert_non_null(strstr(text, "to-stdout\n"));
    assert_non_null(strstr(text, "to-stderr\n"));
    assert_int_equal(stat(log_path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
}

static void test_keep_fd_and_closed_fds(void **state)
{
    int p[2], leak;
    char cmd[256], buf[64] = "";
    char *argv[] = {"sh", "-c", cmd, NULL};
    ssize_t n;
    pid_t pid;

    (void)state;
    assert_int_equal(pipe(p), 0); /* no CLOEXEC: spawn must close it anyway */
    leak = open("/dev/null", O_RDONLY);
    assert_true(leak >= 0);
    (void)snprintf(cmd, sizeof(cmd),
                   "if [ -e /proc/self/fd/%d ]; then echo leaked >&%d; else echo closed >&%d; fi",
                   leak, p[1], p[1]);
    pid = spawn_ok(argv, p[1]);
    (void)pid;
    (void)close(p[1]);
    n = read(p[0], buf, sizeof(buf) - 1);
    assert_true(n > 0);
    assert_string_equal(buf, "closed\n");
    (void)close(p[0]);
    (void)close(leak);
}

static void test_exec_failure(void **state)
{
    char *argv[] = {"/nonexistent/smolvm-no-such-binary", NULL};
    smolvm_error *err = NULL;
    pid_t pid = 0;

    (void)state;
    assert_int_equal(smolvm_spawn_detached(argv, log_path, -1, &pid, &err), SMOLVM_ENOENT);
    assert_int_equal(pid, 0);
    assert_non_null(strstr(smolvm_error_message(err), "'/nonexistent/smolvm-no-such-binary'"));
    err = smolvm_error_free(err);

    assert_int_equal(smolvm_spawn_detached(argv, "/nonexistent/dir/log", -1, &pid, &err),
                     SMOLVM_ENOENT);
    err = smolvm_error_free(err);
}

static void test_start_time_weird_comm(void **state)
{
    /* comm may hold spaces and parentheses: parsing must count from the last ')'. */
    char link[300];
    char *argv[] = {link, "30", NULL};
    smolvm_error *err = NULL;
    uint64_t start = 0, mine = 0;
    pid_t pid;

    (void)state;
    (void)snprintf(link, sizeof(link), "%s/a) b (c) 1 2", tmpdir);
    assert_int_equal(symlink("/bin/sleep", link), 0);
    pid = spawn_ok(argv, -1);
    assert_int_equal(smolvm_pid_start_time(pid, &start, &err), 0);
    assert_int_equal(smolvm_pid_start_time(getpid(), &mine, &err), 0);
    assert_true(start >= mine);
    assert_true(smolvm_pid_alive(pid, start));
    assert_int_equal(smolvm_pid_kill(pid, start, smolvm_now_ms() + 5000, &err), 0);
    assert_false(smolvm_pid_alive(pid, start));
}

static void test_missing_pid(void **state)
{
    smolvm_error *err = NULL;
    uint64_t start;

    (void)state;
    assert_int_equal(smolvm_pid_start_time(-1, &start, &err), SMOLVM_EINVAL);
    err = smolvm_error_free(err);
    /* pid_max is at most 2^22: this one cannot exist. */
    assert_int_equal(smolvm_pid_start_time(1 << 23, &start, &err), SMOLVM_ENOENT);
    err = smolvm_error_free(err);
    assert_false(smolvm_pid_alive(1 << 23, 1));
    assert_int_equal(smolvm_pid_wait_exit(1 << 23, 1, smolvm_now_ms() + 10, &err), 0);
    assert_int_equal(smolvm_pid_kill(1 << 23, 1, smolvm_now_ms() + 10, &err), 0);
}

/* ---------------------------------------------------------------- confinement */

/* Spawn argv as our child with confine c, stdout to log_path; wait for it. */
static void spawn_confined_wait(char *const argv[], const smolvm_spawn_confine *c)
{
    smolvm_error *err = NULL;
    smolvm_spawn_req req = {
        .argv = argv,
        .log_path = log_path,
        .stdout_fd = -1,
        .confine = c,
    };
    pid_t pid = 0;
    int status = 0;

    (void)unlink(log_path);
    if (smolvm_spawn(&req, &pid, &err) < 0)
        fail_msg("spawn: %s", smolvm_error_message(err));
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void test_confine_oom_nnp_bounding(void **state)
{
    char *argv[] = {"sh", "-c", "cat /proc/self/status; echo oom=$(cat /proc/self/oom_score_adj)",
                    NULL};
    smolvm_spawn_confine c = {
        .set_oom_score_adj = true, .oom_score_adj = 1000, .lifeline_fd = -1, .no_new_privs = true};
    _cleanup_free_ char *text = NULL;
    bool root = geteuid() == 0;

    (void)state;
    /* Bounding set: only CAP_NET_ADMIN and CAP_KILL kept (dropping needs CAP_SETPCAP). */
    if (root)
        c.bounding_keep = (UINT64_C(1) << CAP_NET_ADMIN) | (UINT64_C(1) << CAP_KILL);
    spawn_confined_wait(argv, &c);
    assert_int_equal(smolvm_read_file(log_path, 65536, &text, NULL, NULL), 0);
    assert_non_null(strstr(text, "NoNewPrivs:\t1\n"));
    assert_non_null(strstr(text, "oom=1000\n"));
    if (root)
        assert_non_null(strstr(text, "CapBnd:\t0000000000001020\n"));
}

/* A stand-in supervisor: spawns argv (our module, as the real one does) passing
 * ready_fd through, writes the child's pid and start time to report_fd, then waits to
 * be killed. */
static _Noreturn void stand_in_supervisor(char *const argv[], bool lifeline, int ready_fd,
                                          int report_fd)
{
    int pipefd[2] = {-1, -1}, keep[2] = {ready_fd, -1};
    smolvm_spawn_confine c = {.lifeline_fd = -1};
    smolvm_spawn_req req = {
        .argv = argv, .log_path = log_path, .keep_fds = keep, .n_keep = 1, .stdout_fd = -1};
    pid_t pid = 0;
    uint64_t start = 0;
    long long msg[2];

    if (lifeline) {
        if (pipe2(pipefd, O_CLOEXEC) < 0)
            _exit(2);
        c.lifeline_fd = keep[1] = pipefd[0];
        req.n_keep = 2;
        req.confine = &c;
    }
    if (smolvm_spawn(&req, &pid, NULL) < 0 || smolvm_pid_start_time(pid, &start, NULL) < 0)
        _exit(3);
    if (lifeline)
        (void)close(pipefd[0]);
    msg[0] = pid;
    msg[1] = (long long)start;
    if (write(report_fd, msg, sizeof(msg)) != (ssize_t)sizeof(msg))
        _exit(4);
    for (;;)
        pause();
}

/* Kill a stand-in supervisor whose child changed its uid (as QEMU's -runas does, which
 * clears PR_SET_PDEATHSIG): does the child die? Returns whether it did; a survivor is
 * killed here. */
static bool child_dies_with_supervisor(bool lifeline)
{
    char cmd[64];
    char *argv[] = {
        "setpriv", "--reuid=1879113727", "--regid=1879113727", "--clear-groups", "sh", "-c", cmd,
        NULL};
    int report[2], ready[2], status;
    long long msg[2] = {0, 0};
    char buf[8] = "";
    pid_t sv;
    bool died;

    assert_int_equal(pipe(report), 0);
    assert_int_equal(pipe(ready), 0);
    /* "ready" once the uid is the new one, then the process lives on as sleep. */
    (void)snprintf(cmd, sizeof(cmd), "echo ready >&%d; exec sleep 30", ready[1]);
    sv = fork();
    assert_true(sv >= 0);
    if (sv == 0) {
        (void)close(report[0]);
        (void)close(ready[0]);
        stand_in_supervisor(argv, lifeline, ready[1], report[1]);
    }
    (void)close(report[1]);
    (void)close(ready[1]);
    assert_int_equal(read(report[0], msg, sizeof(msg)), (ssize_t)sizeof(msg));
    assert_int_equal(read(ready[0], buf, sizeof(buf) - 1), 6);
    assert_string_equal(buf, "ready\n");
    (void)close(report[0]);
    (void)close(ready[0]);
    assert_int_equal(kill(sv, SIGKILL), 0);
    assert_int_equal(waitpid(sv, &status, 0), sv);
    died = smolvm_pid_wait_exit((pid_t)msg[0], (uint64_t)msg[1], smolvm_now_ms() + 1500, NULL) == 0;
    if (!died)
        (void)smolvm_pid_kill((pid_t)msg[0], (uint64_t)msg[1], smolvm_now_ms() + 3000, NULL);
    return died;
}

static void test_confine_lifeline(void **state)
{
    (void)state;
    if (geteuid() != 0 || access("/usr/bin/setpriv", X_OK) != 0) {
        print_message("skipped: needs root and setpriv to change the child's uid\n");
        skip();
    }
    /* The premise: after its uid change the child outlives a SIGKILLed parent... */
    assert_false(child_dies_with_supervisor(false));
    /* ...unless the lifeline is armed: then the kernel kills it. */
    assert_true(child_dies_with_supervisor(true));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spawn_alive_kill),
        cmocka_unit_test(test_wait_exit_success_and_log),
        cmocka_unit_test(test_keep_fd_and_closed_fds),
        cmocka_unit_test(test_exec_failure),
        cmocka_unit_test(test_start_time_weird_comm),
        cmocka_unit_test(test_missing_pid),
        cmocka_unit_test(test_confine_oom_nnp_bounding),
        cmocka_unit_test(test_confine_lifeline),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
