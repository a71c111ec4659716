/* SPDX-License-Identifier: MIT */
/*
 * A cgroup per VM on this host's real hierarchies (v1 here, v2 elsewhere: the same
 * tests): limits written, a process joins before exec, busy groups stay, empty ones go,
 * reconcile's gc keeps what is in use, concurrent creators and removers of the shared
 * parent never fail each other. Needs root (skipped otherwise, exit 77).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cgroup.h"
#include "error.h"
#include "proc.h"
#include "util.h"

static char state_a[] = "/tmp/smolvm-test-cgroup-a-XXXXXX";
static char state_b[] = "/tmp/smolvm-test-cgroup-b-XXXXXX";
static char log_path[300];
static smolvm_cgroup_layout *layout;

static int setup(void **state)
{
    (void)state;
    if (!mkdtemp(state_a) || !mkdtemp(state_b))
        return -1;
    (void)snprintf(log_path, sizeof(log_path), "%s/out.log", state_a);
    return smolvm_cgroup_layout_detect(&layout, NULL);
}

static int teardown(void **state)
{
    (void)state;
    layout = smolvm_cgroup_layout_free(layout);
    (void)smolvm_rm_rf(state_a, NULL);
    return smolvm_rm_rf(state_b, NULL);
}

/* The group's directory in the hierarchy of controller c ("" when none has it). */
static void group_dir(char *out, size_t size, const char *state_dir, const char *id,
                      smolvm_cg_controller c)
{
    char name[96];

    out[0] = '\0';
    assert_int_equal(smolvm_cgroup_name(name, state_dir, id, NULL), 0);
    for (size_t i = 0; i < layout->n; i++)
        if (layout->h[i].controllers & (1u << c))
            (void)snprintf(out, size, "%s/" SMOLVM_CG_PARENT "/%s", layout->h[i].mount, name);
}

static bool exists(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0;
}

static uint64_t read_u64(const char *dir, const char *file)
{
    _cleanup_free_ char *path = smolvm_strdupf("%s/%s", dir, file), *text = NULL;

    assert_int_equal(smolvm_read_file(path, 256, &text, NULL, NULL), 0);
    return strtoull(text, NULL, 10);
}

static void test_layout(void **state)
{
    char desc[128];

    (void)state;
    assert_true(layout->usable);
    smolvm_cgroup_layout_describe(layout, desc, sizeof(desc));
    print_message("layout: %s\n", desc);
    /* The controllers this project needs are somewhere, each once. */
    assert_non_null(strstr(desc, "memory"));
    assert_non_null(strstr(desc, "pids"));
}

static void test_name(void **state)
{
    char a[96], b[96], a2[96];
    smolvm_error *err = NULL;

    (void)state;
    assert_int_equal(smolvm_cgroup_name(a, state_a, "vm-1", NULL), 0);
    assert_int_equal(smolvm_cgroup_name(b, state_b, "vm-1", NULL), 0);
    assert_string_not_equal(a, b); /* two state dirs never share a group */
    /* The real path counts: a trailing slash is the same directory. */
    {
        _cleanup_free_ char *slash = smolvm_strdupf("%s/", state_a);

        assert_int_equal(smolvm_cgroup_name(a2, slash, "vm-1", NULL), 0);
        assert_string_equal(a, a2);
    }
    assert_int_equal(strncmp(a, "vm-1.", 5), 0);
    assert_int_equal(strlen(a), 5 + 8);
    assert_int_equal(smolvm_cgroup_name(a, state_a, "../x", &err), SMOLVM_EINVAL);
    err = smolvm_error_free(err);
}

static void test_create_join_remove(void **state)
{
    smolvm_cgroup_limits lim = {.memory_bytes = 640ull << 20, .pids = 98, .cpu_weight = 200};
    char mem[400], pids[400], cpu[400];
    char *argv[] = {"cat", "/proc/self/cgroup", NULL};
    smolvm_spawn_confine c = {.lifeline_fd = -1};
    smolvm_spawn_req req = {.argv = argv, .log_path = log_path, .stdout_fd = -1, .confine = &c};
    _cleanup_free_ char *out = NULL;
    smolvm_cgroup *cg = NULL;
    smolvm_error *err = NULL;
    char name[96];
    int status;
    pid_t pid;

    (void)state;
    group_dir(mem, sizeof(mem), state_a, "vm-join", SMOLVM_CG_MEMORY);
    group_dir(pids, sizeof(pids), state_a, "vm-join", SMOLVM_CG_PIDS);
    group_dir(cpu, sizeof(cpu), state_a, "vm-join", SMOLVM_CG_CPU);
    if (smolvm_cgroup_create(&cg, layout, state_a, "vm-join", &lim, &err) < 0)
        fail_msg("create: %s", smolvm_error_message(err));
    assert_string_equal(smolvm_cgroup_path(cg, SMOLVM_CG_MEMORY), mem);
    assert_true(exists(mem) && exists(pids));
    /* The limits are in the kernel's files (v1 or v2 names). */
    {
        _cleanup_free_ char *v1 = smolvm_strdupf("%s/memory.limit_in_bytes", mem);

        assert_int_equal(read_u64(mem, exists(v1) ? "memory.limit_in_bytes" : "memory.max"),
                         640ull << 20);
    }
    assert_int_equal(read_u64(pids, "pids.max"), 98);
    if (cpu[0]) {
        _cleanup_free_ char *v1 = smolvm_strdupf("%s/cpu.shares", cpu);

        assert_int_equal(read_u64(cpu, exists(v1) ? "cpu.shares" : "cpu.weight"),
                         exists(v1) ? 2048 : 200);
    }

    /* A child joins before exec: its very first look at itself is in the group. */
    c.cgroup_procs_fds = smolvm_cgroup_procs_fds(cg, &c.n_cgroup_procs_fds);
    assert_int_equal(smolvm_spawn(&req, &pid, &err), 0);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_int_equal(smolvm_read_file(log_path, 65536, &out, NULL, NULL), 0);
    assert_int_equal(smolvm_cgroup_name(name, state_a, "vm-join", NULL), 0);
    assert_non_null(strstr(out, name));
    cg = smolvm_cgroup_free(cg);

    /* Gone (and reaped): the groups go, and the shared parent with them. */
    assert_int_equal(smolvm_cgroup_remove(layout, state_a, "vm-join", &err), 0);
    assert_false(exists(mem));
    assert_false(exists(pids));
    /* Removing again is fine. */
    assert_int_equal(smolvm_cgroup_remove(layout, state_a, "vm-join", &err), 0);
}

/* A group with a process in it stays; create over it is refused. */
static void test_busy(void **state)
{
    smolvm_cgroup_limits lim = {.memory_bytes = 256ull << 20, .pids = 16};
    char *argv[] = {"sleep", "30", NULL};
    smolvm_spawn_confine c = {.lifeline_fd = -1};
    smolvm_spawn_req req = {.argv = argv, .log_path = log_path, .stdout_fd = -1, .confine = &c};
    smolvm_cgroup *cg = NULL, *again = NULL;
    smolvm_error *err = NULL;
    char mem[400];
    int status;
    pid_t pid;

    (void)state;
    group_dir(mem, sizeof(mem), state_a, "vm-busy", SMOLVM_CG_MEMORY);
    assert_int_equal(smolvm_cgroup_create(&cg, layout, state_a, "vm-busy", &lim, &err), 0);
    c.cgroup_procs_fds = smolvm_cgroup_procs_fds(cg, &c.n_cgroup_procs_fds);
    assert_int_equal(smolvm_spawn(&req, &pid, &err), 0);
    cg = smolvm_cgroup_free(cg);

    assert_int_equal(smolvm_cgroup_remove(layout, state_a, "vm-busy", &err), SMOLVM_ESTATE);
    assert_non_null(strstr(smolvm_error_message(err), "still has processes"));
    err = smolvm_error_free(err);
    assert_true(exists(mem));
    assert_int_equal(smolvm_cgroup_create(&again, layout, state_a, "vm-busy", &lim, &err),
                     SMOLVM_EEXIST);
    err = smolvm_error_free(err);
    assert_int_equal(smolvm_cgroup_gc(layout, state_a, NULL, NULL), 0); /* busy: stays */
    assert_true(exists(mem));

    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_int_equal(smolvm_cgroup_remove(layout, state_a, "vm-busy", &err), 0);
    assert_false(exists(mem));
}

static bool keep_vm_live(const char *vm_id, void *payload)
{
    (void)payload;
    return strcmp(vm_id, "vm-live") == 0;
}

/* gc removes this state dir's leftovers only: not the kept ones, not another's. */
static void test_gc(void **state)
{
    smolvm_cgroup_limits lim = {.memory_bytes = 256ull << 20, .pids = 16};
    static const char *const ids[] = {"vm-live", "vm-dead1", "vm-dead2"};
    char d[400];
    smolvm_cgroup *cg = NULL;

    (void)state;
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(smolvm_cgroup_create(&cg, layout, state_a, ids[i], &lim, NULL), 0);
        cg = smolvm_cgroup_free(cg);
    }
    assert_int_equal(smolvm_cgroup_create(&cg, layout, state_b, "vm-dead1", &lim, NULL), 0);
    cg = smolvm_cgroup_free(cg);

    assert_int_equal(smolvm_cgroup_gc(layout, state_a, keep_vm_live, NULL), 2 * (int)layout->n);
    group_dir(d, sizeof(d), state_a, "vm-live", SMOLVM_CG_MEMORY);
    assert_true(exists(d));
    group_dir(d, sizeof(d), state_a, "vm-dead1", SMOLVM_CG_MEMORY);
    assert_false(exists(d));
    group_dir(d, sizeof(d), state_b, "vm-dead1", SMOLVM_CG_MEMORY);
    assert_true(exists(d));

    assert_int_equal(smolvm_cgroup_gc(layout, state_a, NULL, NULL), (int)layout->n);
    assert_int_equal(smolvm_cgroup_remove(layout, state_b, "vm-dead1", NULL), 0);
    /* Nothing of ours left in the hierarchy (the shared parent stays only while other
     * VMs on this host have groups in it). */
    for (size_t i = 0; i < layout->n; i++) {
        _cleanup_free_ char *parent = smolvm_strdupf("%s/" SMOLVM_CG_PARENT, layout->h[i].mount);
        char a[96], b[96];
        DIR *dp = opendir(parent);
        struct dirent *de;

        assert_int_equal(smolvm_cgroup_name(a, state_a, "x", NULL), 0);
        assert_int_equal(smolvm_cgroup_name(b, state_b, "x", NULL), 0);
        while (dp && (de = readdir(dp))) {
            assert_null(strstr(de->d_name, a + 1)); /* ".<tag>" of either state dir */
            assert_null(strstr(de->d_name, b + 1));
        }
        if (dp)
            (void)closedir(dp);
    }
}

/* Creators and removers of different VMs at once: the shared parent may come and go,
 * nobody fails. */
static void test_concurrent(void **state)
{
    enum { PROCS = 6, ROUNDS = 30 };
    pid_t kids[PROCS];
    int i, status;

    (void)state;
    for (i = 0; i < PROCS; i++) {
        kids[i] = fork();
        assert_true(kids[i] >= 0);
        if (kids[i] == 0) {
            smolvm_cgroup_limits lim = {.memory_bytes = 128ull << 20, .pids = 8};
            char id[32];

            (void)snprintf(id, sizeof(id), "vm-race-%d", i);
            for (int k = 0; k < ROUNDS; k++) {
                smolvm_cgroup *cg = NULL;
                smolvm_error *err = NULL;

                if (smolvm_cgroup_create(&cg, layout, state_a, id, &lim, &err) < 0) {
                    fprintf(stderr, "create %s: %s\n", id, smolvm_error_message(err));
                    _exit(1);
                }
                smolvm_cgroup_free(cg);
                if (smolvm_cgroup_remove(layout, state_a, id, &err) < 0) {
                    fprintf(stderr, "remove %s: %s\n", id, smolvm_error_message(err));
                    _exit(1);
                }
            }
            _exit(0);
        }
    }
    for (i = 0; i < PROCS; i++) {
        assert_int_equal(waitpid(kids[i], &status, 0), kids[i]);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    assert_int_equal(smolvm_cgroup_gc(layout, state_a, NULL, NULL), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_name),
        cmocka_unit_test(test_create_join_remove),
        cmocka_unit_test(test_busy),
        cmocka_unit_test(test_gc),
        cmocka_unit_test(test_concurrent),
    };
    smolvm_cgroup_layout *l = NULL;

    if (geteuid() != 0) {
        printf("SKIP: cgroups are made as root (rootless use has no cgroup unless one is "
               "delegated)\n");
        return 77;
    }
    if (smolvm_cgroup_layout_detect(&l, NULL) < 0 || !l->usable) {
        printf("SKIP: no usable cgroup hierarchy here: %s\n", l ? l->why : "detect failed");
        smolvm_cgroup_layout_free(l);
        return 77;
    }
    smolvm_cgroup_layout_free(l);
    return cmocka_run_group_tests(tests, setup, teardown);
}
