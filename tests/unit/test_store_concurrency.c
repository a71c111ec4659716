/* SPDX-License-Identifier: MIT */
/*
 * Many processes allocating from one state database at once: every VM id, IP lease
 * and host port handed out must be unique, and the lowest free ones are used. The
 * processes start together (a pipe barrier) on a database that does not exist yet,
 * so creation and migration race too. A read-then-write allocation would hand out
 * duplicates or fail here.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "error.h"
#include "store.h"
#include "util.h"

#define WORKERS 8
#define ROUNDS 25
#define CIDR "10.77.0.0/16"
#define PORT_LO 20000
#define PORT_HI 29999

/* What a worker got in one round; written to a shared pipe in one write (< PIPE_BUF,
 * so records from different workers never interleave). */
typedef struct record {
    int worker;
    int ok;
    char id[16];
    uint32_t ip;
    int port;
    char error[200];
} record;

static int usable_port(int port, void *payload)
{
    return 1;
}

static uint32_t ip_num(const char *text)
{
    unsigned a, b, c, d;

    if (sscanf(text, "%u.%u.%u.%u", &a, &b, &c, &d) != 4)
        return 0;
    return a << 24 | b << 16 | c << 8 | d;
}

static void send_record(int fd, const record *rec)
{
    ssize_t n = write(fd, rec, sizeof(*rec));

    if (n != (ssize_t)sizeof(*rec))
        _exit(3);
}

static void worker(int id, const char *path, int barrier_fd, int out_fd)
{
    smolvm_store *s = NULL;
    smolvm_error *err = NULL;
    record rec;
    char c;

    /* Wait until the parent closes the barrier: all workers start together. */
    while (read(barrier_fd, &c, 1) < 0 && errno == EINTR)
        ;
    memset(&rec, 0, sizeof(rec));
    rec.worker = id;
    if (smolvm_store_open(&s, path, &err) < 0) {
        (void)snprintf(rec.error, sizeof(rec.error), "open: %s", smolvm_error_message(err));
        send_record(out_fd, &rec);
        _exit(1);
    }
    for (int i = 0; i < ROUNDS; i++) {
        smolvm_vm_row row = {0};
        char ip[16];
        int r;

        memset(&rec, 0, sizeof(rec));
        rec.worker = id;
        r = smolvm_store_vm_insert(s, &row, &err);
        if (r == 0) {
            (void)snprintf(rec.id, sizeof(rec.id), "%s", row.id);
            r = smolvm_store_lease_ip(s, row.id, CIDR, ip, &err);
        }
        if (r == 0) {
            rec.ip = ip_num(ip);
            r = smolvm_store_port_alloc(s, row.id, "forward", "127.0.0.1", PORT_LO, PORT_HI, 80,
                                        "tcp", usable_port, NULL, &rec.port, &err);
        }
        free(row.id);
        free(row.status);
        rec.ok = r == 0;
        if (r < 0)
            (void)snprintf(rec.error, sizeof(rec.error), "%s", smolvm_error_message(err));
        send_record(out_fd, &rec);
        if (r < 0)
            _exit(1);
    }
    smolvm_store_free(s);
    _exit(0);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

    return x < y ? -1 : x > y;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(a, b);
}

static int setup(void **state)
{
    static char dir[64];

    strcpy(dir, "/tmp/smolvm-test-store-conc-XXXXXX");
    assert_non_null(mkdtemp(dir));
    *state = dir;
    return 0;
}

static int teardown(void **state)
{
    assert_int_equal(smolvm_rm_rf(*state, NULL), 0);
    return 0;
}

static void test_parallel_allocations(void **state)
{
    const char *dir = *state;
    char path[96];
    int barrier[2], results[2], status, failed = 0;
    pid_t pids[WORKERS];
    static record recs[WORKERS * ROUNDS + WORKERS];
    static uint32_t ips[WORKERS * ROUNDS], ports[WORKERS * ROUNDS];
    static char ids[WORKERS * ROUNDS][16];
    size_t n = 0;
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;

    (void)snprintf(path, sizeof(path), "%s/smolvm.db", dir);
    assert_int_equal(pipe(barrier), 0);
    assert_int_equal(pipe(results), 0);
    for (int i = 0; i < WORKERS; i++) {
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0) {
            close(barrier[1]);
            close(results[0]);
            worker(i, path, barrier[0], results[1]);
        }
    }
    close(barrier[0]);
    close(results[1]);
    close(barrier[1]); /* go */

    for (;;) {
        ssize_t r = read(results[0], &recs[n], sizeof(recs[n]));

        if (r < 0 && errno == EINTR)
            continue;
        assert_true(r >= 0);
        if (r == 0)
            break;
        assert_int_equal(r, sizeof(record));
        n++;
        assert_true(n <= SMOLVM_ARRAY_SIZE(recs));
    }
    close(results[0]);
    for (int i = 0; i < WORKERS; i++) {
        assert_int_equal(waitpid(pids[i], &status, 0), pids[i]);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            failed++;
    }
    for (size_t i = 0; i < n; i++)
        if (!recs[i].ok)
            print_error("worker %d: %s\n", recs[i].worker, recs[i].error);
    assert_int_equal(failed, 0);
    assert_int_equal(n, WORKERS * ROUNDS);

    for (size_t i = 0; i < n; i++) {
        assert_true(recs[i].ok);
        ips[i] = recs[i].ip;
        ports[i] = (uint32_t)recs[i].port;
        memcpy(ids[i], recs[i].id, sizeof(ids[i]));
    }
    qsort(ips, n, sizeof(ips[0]), cmp_u32);
    qsort(ports, n, sizeof(ports[0]), cmp_u32);
    qsort(ids, n, sizeof(ids[0]), cmp_str);
    /* Unique, and (nothing was released) exactly the lowest ones. */
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(ips[i], (10u << 24 | 77u << 16) + 2 + i);
        assert_int_equal(ports[i], PORT_LO + i);
        if (i > 0)
            assert_true(strcmp(ids[i - 1], ids[i]) < 0);
    }

    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT (SELECT count(*) FROM vms), (SELECT count(*) FROM"
                                        " ip_leases), (SELECT count(*) FROM ports)",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    for (int i = 0; i < 3; i++)
        assert_int_equal(sqlite3_column_int(st, i), WORKERS * ROUNDS);
    sqlite3_finalize(st);
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "ok");
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* Creators racing for a quota: exactly the quota's worth pass, whatever the timing (a
 * count outside the insert's transaction would let several through at the edge). */
#define QUOTA_VMS 13

static void quota_worker(const char *path, const smolvm_store_quota *q, int barrier_fd, int out_fd)
{
    smolvm_store *s = NULL;
    char c, got[ROUNDS];
    int n = 0;

    while (read(barrier_fd, &c, 1) < 0 && errno == EINTR)
        ;
    if (smolvm_store_open(&s, path, NULL) < 0)
        _exit(1);
    for (int i = 0; i < ROUNDS; i++) {
        smolvm_vm_row row = {.config_json = (char *)"{\"memory\":256}"};
        smolvm_error *err = NULL;
        int r = smolvm_store_vm_insert_quota(s, &row, q, &err);

        if (r < 0 && r != SMOLVM_ENOSPC)
            _exit(2);
        got[n++] = r == 0 ? 'y' : 'n';
        free(row.id);
        free(row.status);
        smolvm_error_free(err);
    }
    if (write(out_fd, got, (size_t)n) != n)
        _exit(3);
    smolvm_store_free(s);
    _exit(0);
}

/* WORKERS processes insert ROUNDS VMs each against q; how many got in. */
static int race_quota(const char *dir, const char *name, const smolvm_store_quota *q)
{
    char path[128], buf[WORKERS * ROUNDS];
    int barrier[2], results[2], status, ok = 0;
    pid_t pids[WORKERS];
    size_t n = 0;

    (void)snprintf(path, sizeof(path), "%s/%s.db", dir, name);
    assert_int_equal(pipe(barrier), 0);
    assert_int_equal(pipe(results), 0);
    for (int i = 0; i < WORKERS; i++) {
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0) {
            close(barrier[1]);
            close(results[0]);
            quota_worker(path, q, barrier[0], results[1]);
        }
    }
    close(barrier[0]);
    close(results[1]);
    close(barrier[1]);
    for (;;) {
        ssize_t r = read(results[0], buf + n, sizeof(buf) - n);

        if (r < 0 && errno == EINTR)
            continue;
        assert_true(r >= 0);
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(results[0]);
    for (int i = 0; i < WORKERS; i++) {
        assert_int_equal(waitpid(pids[i], &status, 0), pids[i]);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    assert_int_equal(n, WORKERS * ROUNDS);
    for (size_t i = 0; i < n; i++)
        ok += buf[i] == 'y';
    return ok;
}

static void test_parallel_quota(void **state)
{
    smolvm_store_quota vms = {.max_vms = QUOTA_VMS};
    smolvm_store_quota mib = {.max_memory_mib = QUOTA_VMS * 256 + 255};

    assert_int_equal(race_quota(*state, "vms", &vms), QUOTA_VMS);
    assert_int_equal(race_quota(*state, "mib", &mib), QUOTA_VMS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_parallel_allocations, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parallel_quota, setup, teardown),
    };

    return cmocka_run_group_tests_name("store_concurrency", tests, NULL, NULL);
}
