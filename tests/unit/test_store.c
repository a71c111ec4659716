/* SPDX-License-Identifier: MIT */
/* The state database: schema, refusing damaged or foreign files, allocations, JSON. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <sqlite3.h>

#include "error.h"
#include "store.h"
#include "util.h"

typedef struct fixture {
    char dir[64];
    char path[128];
    smolvm_store *s;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    strcpy(f->dir, "/tmp/smolvm-test-store-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    (void)snprintf(f->path, sizeof(f->path), "%s/smolvm.db", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;

    smolvm_store_free(f->s);
    assert_int_equal(smolvm_rm_rf(f->dir, NULL), 0);
    free(f);
    return 0;
}

/* Setup plus an open store. */
static int setup_open(void **state)
{
    fixture *f;
    smolvm_error *err = NULL;

    setup(state);
    f = *state;
    assert_int_equal(smolvm_store_open(&f->s, f->path, &err), 0);
    assert_null(err);
    return 0;
}

/* ---------------------------------------------------------------- helpers */

static void raw_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    char *msg = NULL;

    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
        fail_msg("%s: %s", sql, msg);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

static int64_t raw_int(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t v;

    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static char *raw_text(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    char *v;

    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    v = strdup((const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* The whole file content (a cheap stand-in for a hash, and exact). */
static char *slurp(const char *path, size_t *len)
{
    char *data = NULL;

    assert_int_equal(smolvm_read_file(path, 64u << 20, &data, len, NULL), 0);
    return data;
}

static void write_bytes(const char *path, const void *data, size_t len)
{
    FILE *fp = fopen(path, "wb");

    assert_non_null(fp);
    assert_int_equal(fwrite(data, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

static int exists(const char *path)
{
    return access(path, F_OK) == 0;
}

/* Opening must fail with one-line SMOLVM_EDB naming the file and containing `want`,
 * leave the file's bytes as they were, and (when no_side_files) create no -wal/-shm. */
static void assert_refused(fixture *f, const char *want, int no_side_files)
{
    smolvm_store *s = NULL;
    smolvm_error *err = NULL;
    char *before, *after, wal[160], shm[160];
    size_t blen, alen;

    (void)snprintf(wal, sizeof(wal), "%s-wal", f->path);
    (void)snprintf(shm, sizeof(shm), "%s-shm", f->path);
    before = slurp(f->path, &blen);
    assert_int_equal(smolvm_store_open(&s, f->path, &err), SMOLVM_EDB);
    assert_null(s);
    assert_non_null(err);
    assert_int_equal(smolvm_error_code(err), SMOLVM_EDB);
    assert_non_null(strstr(smolvm_error_message(err), f->path));
    if (!strstr(smolvm_error_message(err), want))
        fail_msg("message '%s' lacks '%s'", smolvm_error_message(err), want);
    assert_null(strchr(smolvm_error_message(err), '\n'));
    print_message("refused: %s\n", smolvm_error_message(err));
    smolvm_error_free(err);
    after = slurp(f->path, &alen);
    assert_int_equal(alen, blen);
    assert_memory_equal(before, after, blen);
    if (no_side_files) {
        assert_false(exists(wal));
        assert_false(exists(shm));
    }
    free(before);
    free(after);
}

static void vm_new(smolvm_store *s, const char *id)
{
    smolvm_vm_row row = {0};
    smolvm_error *err = NULL;

    row.id = (char *)id;
    row.backend = (char *)"qemu";
    row.config_json = (char *)"{\"memory\":256}";
    assert_int_equal(smolvm_store_vm_insert(s, &row, &err), 0);
    assert_null(err);
    free(row.status);
}

static json_t *parse(char *text)
{
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);

    if (!j)
        fail_msg("bad JSON '%s': %s", text, je.text);
    free(text);
    return j;
}

/* ---------------------------------------------------------------- opening */

static void test_schema_created(void **state)
{
    fixture *f = *state;
    smolvm_error *err = NULL;
    struct stat sb;
    char *mode;

    assert_int_equal(smolvm_store_open(&f->s, f->path, &err), 0);
    assert_string_equal(smolvm_store_path(f->s), f->path);
    assert_int_equal(stat(f->path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    f->s = smolvm_store_free(f->s);

    assert_int_equal(raw_int(f->path, "PRAGMA application_id"), 0x536d6f4c);
    assert_true(raw_int(f->path, "PRAGMA user_version") >= 1);
    mode = raw_text(f->path, "PRAGMA journal_mode");
    assert_string_equal(mode, "wal");
    free(mode);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM sqlite_schema WHERE type = 'table'"
                                      " AND name IN ('vms', 'ip_leases', 'ports', 'events')"),
                     4);
    /* Foreign keys are declared (and enforced: see test_delete_cascades). */
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM pragma_foreign_key_list('ports')"), 1);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM pragma_foreign_key_list('ip_leases')"),
                     1);
}

static void test_reopen_idempotent(void **state)
{
    fixture *f = *state;
    const char *dump = "SELECT group_concat(sql, ';') FROM"
                       " (SELECT sql FROM sqlite_schema ORDER BY name)";
    char *first, *again;
    int64_t v;

    assert_int_equal(smolvm_store_open(&f->s, f->path, NULL), 0);
    vm_new(f->s, "keep");
    f->s = smolvm_store_free(f->s);
    first = raw_text(f->path, dump);
    v = raw_int(f->path, "PRAGMA user_version");
    for (int i = 0; i < 3; i++) {
        assert_int_equal(smolvm_store_open(&f->s, f->path, NULL), 0);
        f->s = smolvm_store_free(f->s);
    }
    again = raw_text(f->path, dump);
    assert_string_equal(first, again);
    assert_int_equal(raw_int(f->path, "PRAGMA user_version"), v);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM vms WHERE id = 'keep'"), 1);
    free(first);
    free(again);
}

static void test_empty_file_initialised(void **state)
{
    fixture *f = *state;

    write_bytes(f->path, "", 0);
    assert_int_equal(smolvm_store_open(&f->s, f->path, NULL), 0);
    vm_new(f->s, "a");
    f->s = smolvm_store_free(f->s);
    assert_int_equal(raw_int(f->path, "PRAGMA application_id"), 0x536d6f4c);
}

static void test_newer_version_refused(void **state)
{
    fixture *f = *state;

    assert_int_equal(smolvm_store_open(&f->s, f->path, NULL), 0);
    f->s = smolvm_store_free(f->s);
    raw_exec(f->path, "PRAGMA user_version = 999");
    assert_refused(f, "was written by a newer smolvm", 0);
}

static void test_random_bytes_refused(void **state)
{
    fixture *f = *state;
    unsigned char junk[8192];

    assert_int_equal(smolvm_random(junk, sizeof(junk), NULL), 0);
    write_bytes(f->path, junk, sizeof(junk));
    assert_refused(f, "is not a smolvm database", 1);

    write_bytes(f->path, "hello\n", 6);
    assert_refused(f, "is not a smolvm database", 1);
}

/* A real smolvm database with a few pages of data, closed cleanly. */
static size_t make_real_db(fixture *f)
{
    char *data;
    size_t len;

    assert_int_equal(smolvm_store_open(&f->s, f->path, NULL), 0);
    for (int i = 0; i < 200; i++) {
        char id[64], ip[16];

        (void)snprintf(id, sizeof(id), "vm%03d-with-a-longer-name-to-use-pages", i);
        vm_new(f->s, id);
        assert_int_equal(smolvm_store_lease_ip(f->s, id, "10.1.0.0/16", ip, NULL), 0);
    }
    f->s = smolvm_store_free(f->s);
    data = slurp(f->path, &len);
    free(data);
    assert_true(len >= 8 * 4096);
    return len;
}

static void test_truncated_db_refused(void **state)
{
    fixture *f = *state;
    size_t len = make_real_db(f);

    assert_int_equal(truncate(f->path, (off_t)(len / 2 / 4096 * 4096)), 0);
    assert_refused(f, "is damaged", 0);
}

static void test_damaged_page_refused(void **state)
{
    fixture *f = *state;
    size_t len = make_real_db(f);
    unsigned char junk[4096];
    int fd;

    /* Overwrite a page in the middle (not page 1: the header stays valid). */
    assert_int_equal(smolvm_random(junk, sizeof(junk), NULL), 0);
    fd = open(f->path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, junk, sizeof(junk), (off_t)(len / 2 / 4096 * 4096)),
                     (ssize_t)sizeof(junk));
    close(fd);
    assert_refused(f, "is damaged", 0);
}

static void test_foreign_sqlite_refused(void **state)
{
    fixture *f = *state;

    /* An application's database without an application_id. */
    raw_exec(f->path, "CREATE TABLE notes (t TEXT); INSERT INTO notes VALUES ('mine')");
    assert_refused(f, "is not a smolvm database", 1);
    assert_int_equal(unlink(f->path), 0);

    /* In WAL mode, and with its own application_id. */
    raw_exec(f->path, "PRAGMA journal_mode = WAL; PRAGMA application_id = 1234;"
                      "CREATE TABLE notes (t TEXT)");
    assert_refused(f, "is not a smolvm database", 1);
}

static void test_bad_path(void **state)
{
    fixture *f = *state;
    smolvm_error *err = NULL;
    char path[160];

    (void)snprintf(path, sizeof(path), "%s/missing/smolvm.db", f->dir);
    assert_int_equal(smolvm_store_open(&f->s, path, &err), SMOLVM_ENOENT);
    assert_non_null(strstr(smolvm_error_message(err), path));
    smolvm_error_free(err);
    err = NULL;
    /* A directory is not a database either. */
    assert_int_equal(smolvm_store_open(&f->s, f->dir, &err), SMOLVM_EDB);
    smolvm_error_free(err);
}

/* ---------------------------------------------------------------- VMs */

static void test_vm_ids(void **state)
{
    fixture *f = *state;
    smolvm_vm_row row = {0}, *got = NULL;
    smolvm_error *err = NULL;
    char *generated;

    row.config_json = (char *)"{\"vcpus\":2}";
    assert_int_equal(smolvm_store_vm_insert(f->s, &row, &err), 0);
    assert_non_null(row.id);
    assert_int_equal(strlen(row.id), 11);
    assert_memory_equal(row.id, "vm-", 3);
    assert_int_equal(strspn(row.id + 3, "0123456789abcdef"), 8);
    assert_true(smolvm_id_valid(row.id));
    assert_string_equal(row.status, "created");
    assert_true(row.created_at > 0);
    generated = row.id;
    free(row.status);

    assert_int_equal(smolvm_store_vm_get(f->s, generated, &got, &err), 0);
    assert_string_equal(got->id, generated);
    assert_string_equal(got->config_json, "{\"vcpus\":2}");
    got = smolvm_vm_row_free(got);

    /* An explicit id, then the same id again. */
    memset(&row, 0, sizeof(row));
    row.id = (char *)"web";
    row.status = (char *)"created";
    assert_int_equal(smolvm_store_vm_insert(f->s, &row, &err), 0);
    assert_int_equal(smolvm_store_vm_insert(f->s, &row, &err), SMOLVM_EEXIST);
    assert_string_equal(smolvm_error_message(err), "vm 'web' already exists");
    err = smolvm_error_free(err);
    row.id = generated;
    assert_int_equal(smolvm_store_vm_insert(f->s, &row, NULL), SMOLVM_EEXIST);

    /* Invalid input. */
    row.id = (char *)"Web!";
    assert_int_equal(smolvm_store_vm_insert(f->s, &row, &err), SMOLVM_EINVAL);
    assert_non_null(strstr(smolvm_error_message(err), "'Web!'"));
    err = smolvm_error_free(err);
    row.id = (char *)"ok";
    row.config_json = (char *)"[1]";
    assert_int_equal(smolvm_store_vm_insert(f->s, &row, NULL), SMOLVM_EINVAL);
    row.config_json = NULL;
    row.status = (char *)"flying";
    assert_int_equal(smolvm_store_vm_insert(f->s, &row, NULL), SMOLVM_EINVAL);

    assert_true(smolvm_id_valid("a"));
    assert_true(smolvm_id_valid("0-a_b"));
    assert_false(smolvm_id_valid(""));
    assert_false(smolvm_id_valid("-a"));
    assert_false(smolvm_id_valid("a/b"));
    /* 63 characters at most. */
    assert_true(smolvm_id_valid("a2345678901234567890123456789012345678901234567890"
                                "1234567890123"));
    assert_false(smolvm_id_valid("a2345678901234567890123456789012345678901234567890"
                                 "12345678901234"));

    assert_int_equal(smolvm_store_vm_get(f->s, "nope", &got, &err), SMOLVM_ENOENT);
    assert_string_equal(smolvm_error_message(err), "no vm 'nope'");
    smolvm_error_free(err);
    free(generated);
}

static void test_vm_update_list(void **state)
{
    fixture *f = *state;
    smolvm_vm_row **rows = NULL, *got = NULL;
    size_t n = 0;
    char big[8000];

    vm_new(f->s, "b");
    vm_new(f->s, "a");
    assert_int_equal(smolvm_store_vm_set_status(f->s, "a", "error", "vmm died", NULL), 0);
    assert_int_equal(smolvm_store_vm_set_pid(f->s, "a", 4242, 99887766554433ull, NULL), 0);
    assert_int_equal(smolvm_store_vm_set_status(f->s, "a", "bogus", NULL, NULL), SMOLVM_EINVAL);
    assert_int_equal(smolvm_store_vm_set_status(f->s, "zz", "running", NULL, NULL), SMOLVM_ENOENT);
    assert_int_equal(smolvm_store_vm_set_pid(f->s, "zz", 1, 1, NULL), SMOLVM_ENOENT);

    assert_int_equal(smolvm_store_vm_get(f->s, "a", &got, NULL), 0);
    assert_string_equal(got->status, "error");
    assert_string_equal(got->reason, "vmm died");
    assert_int_equal(got->pid, 4242);
    assert_true(got->pid_start == 99887766554433ull);
    assert_true(got->updated_at >= got->created_at);
    got = smolvm_vm_row_free(got);

    /* Long reasons are capped, not refused. */
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(smolvm_store_vm_set_status(f->s, "a", "stopped", big, NULL), 0);
    assert_int_equal(smolvm_store_vm_get(f->s, "a", &got, NULL), 0);
    assert_int_equal(strlen(got->reason), 4096);
    got = smolvm_vm_row_free(got);

    assert_int_equal(smolvm_store_vm_list(f->s, &rows, &n, NULL), 0);
    assert_int_equal(n, 2);
    smolvm_vm_rows_free(rows, n);

    assert_int_equal(smolvm_store_event(f->s, "a", "start", "detail", NULL), 0);
    assert_int_equal(smolvm_store_event(f->s, NULL, "reconcile", NULL, NULL), 0);
    assert_int_equal(smolvm_store_event(f->s, NULL, "", NULL, NULL), SMOLVM_EINVAL);
}

/* ---------------------------------------------------------------- leases */

static void lease(smolvm_store *s, const char *vm, const char *cidr, const char *want)
{
    smolvm_error *err = NULL;
    char ip[16];

    if (smolvm_store_lease_ip(s, vm, cidr, ip, &err) != 0)
        fail_msg("lease %s: %s", vm, smolvm_error_message(err));
    assert_string_equal(ip, want);
}

static void test_lease_lowest_free(void **state)
{
    fixture *f = *state;
    smolvm_error *err = NULL;
    char ip[16];

    vm_new(f->s, "a");
    vm_new(f->s, "b");
    vm_new(f->s, "c");
    vm_new(f->s, "d");
    lease(f->s, "a", "172.16.0.0/16", "172.16.0.2"); /* .0 network, .1 gateway */
    lease(f->s, "b", "172.16.0.0/16", "172.16.0.3");
    lease(f->s, "c", "172.16.0.0/16", "172.16.0.4");
    lease(f->s, "a", "172.16.0.0/16", "172.16.0.2"); /* same VM, same lease */

    /* A freed address in the middle is reused first. */
    assert_int_equal(smolvm_store_release_ips(f->s, "b", NULL), 0);
    lease(f->s, "d", "172.16.0.0/16", "172.16.0.3");
    lease(f->s, "b", "172.16.0.0/16", "172.16.0.5");
    /* And the lowest one too. */
    assert_int_equal(smolvm_store_release_ips(f->s, "a", NULL), 0);
    lease(f->s, "a", "172.16.0.0/16", "172.16.0.2");

    /* Crossing a byte boundary. */
    vm_new(f->s, "x");
    vm_new(f->s, "y");
    for (int i = 6; i <= 255; i++) {
        char id[16], want[16];

        (void)snprintf(id, sizeof(id), "n%d", i);
        (void)snprintf(want, sizeof(want), "172.16.0.%d", i);
        vm_new(f->s, id);
        lease(f->s, id, "172.16.0.0/16", want);
    }
    lease(f->s, "x", "172.16.0.0/16", "172.16.1.0");
    lease(f->s, "y", "10.0.0.0/8", "10.0.0.2");

    assert_int_equal(smolvm_store_lease_ip(f->s, "ghost", "172.16.0.0/16", ip, &err),
                     SMOLVM_ENOENT);
    smolvm_error_free(err);
}

static void test_lease_exhausted(void **state)
{
    fixture *f = *state;
    smolvm_error *err = NULL;
    char ip[16];

    vm_new(f->s, "a");
    vm_new(f->s, "b");
    lease(f->s, "a", "192.168.7.4/30", "192.168.7.6"); /* .4 net, .5 gw, .7 broadcast */
    assert_int_equal(smolvm_store_lease_ip(f->s, "b", "192.168.7.4/30", ip, &err), SMOLVM_ENOSPC);
    assert_string_equal(smolvm_error_message(err), "no free address left in '192.168.7.4/30'");
    err = smolvm_error_free(err);
    assert_int_equal(smolvm_store_release_ips(f->s, "a", NULL), 0);
    lease(f->s, "b", "192.168.7.4/30", "192.168.7.6");

    /* /29: 8 addresses, 5 leasable (.2 to .6). */
    for (int i = 0; i < 6; i++) {
        char id[16], want[16];
        int r;

        (void)snprintf(id, sizeof(id), "s%d", i);
        vm_new(f->s, id);
        r = smolvm_store_lease_ip(f->s, id, "10.9.9.8/29", ip, NULL);
        if (i < 5) {
            assert_int_equal(r, 0);
            (void)snprintf(want, sizeof(want), "10.9.9.%d", 10 + i);
            assert_string_equal(ip, want);
        } else {
            assert_int_equal(r, SMOLVM_ENOSPC);
        }
    }
}

static void test_lease_invalid_cidr(void **state)
{
    fixture *f = *state;
    static const char *const bad[] = {
        "10.0.0.0",  "10.0.0.0/31", "10.0.0.0/7", "10.0.0.1/24",   "300.0.0.0/24", "x/24",
        "10.0.0.0/", "10.0.0.0/2x", "",           "10.0.0.0/24/1", "::1/64",       "10.0.0.0/-8",
    };
    smolvm_error *err = NULL;
    char ip[16];

    vm_new(f->s, "a");
    for (size_t i = 0; i < SMOLVM_ARRAY_SIZE(bad); i++) {
        if (smolvm_store_lease_ip(f->s, "a", bad[i], ip, &err) != SMOLVM_EINVAL)
            fail_msg("cidr '%s' accepted", bad[i]);
        assert_non_null(strstr(smolvm_error_message(err), "cidr"));
        err = smolvm_error_free(err);
    }
    assert_int_equal(smolvm_store_lease_ip(f->s, "a", NULL, ip, NULL), SMOLVM_EINVAL);
}

/* ---------------------------------------------------------------- ports */

static int reject_odd_and_2000(int port, void *payload)
{
    (*(int *)payload)++;
    return port % 2 == 0 && port != 2000;
}

static int reject_all(int port, void *payload)
{
    return 0;
}

static void test_ports(void **state)
{
    fixture *f = *state;
    smolvm_error *err = NULL;
    int port = 0, calls = 0;

    vm_new(f->s, "a");
    vm_new(f->s, "b");
    assert_int_equal(
        smolvm_store_port_add(f->s, "a", "forward", "127.0.0.1", 8080, 80, "tcp", NULL), 0);
    assert_int_equal(
        smolvm_store_port_add(f->s, "b", "forward", "127.0.0.1", 8080, 81, "tcp", &err),
        SMOLVM_EEXIST);
    assert_string_equal(smolvm_error_message(err),
                        "host port '127.0.0.1:8080/tcp' is already in use");
    err = smolvm_error_free(err);
    /* Another address or protocol is another port. */
    assert_int_equal(smolvm_store_port_add(f->s, "b", "forward", "0.0.0.0", 8080, 81, "tcp", NULL),
                     0);
    assert_int_equal(
        smolvm_store_port_add(f->s, "b", "forward", "127.0.0.1", 8080, 81, "udp", NULL), 0);
    assert_int_equal(
        smolvm_store_port_add(f->s, "ghost", "forward", "127.0.0.1", 9, 9, "tcp", NULL),
        SMOLVM_ENOENT);
    assert_int_equal(smolvm_store_port_add(f->s, "a", "forward", "127.0.0.1", 0, 9, "tcp", NULL),
                     SMOLVM_EINVAL);
    assert_int_equal(smolvm_store_port_add(f->s, "a", "forward", "127.0.0.1", 9, 9, "sctp", NULL),
                     SMOLVM_EINVAL);
    assert_int_equal(smolvm_store_port_add(f->s, "a", "bogus", "127.0.0.1", 9, 9, "tcp", NULL),
                     SMOLVM_EINVAL);

    /* Allocation: 2002 is taken, usable() rejects odd ports and 2000. */
    assert_int_equal(
        smolvm_store_port_add(f->s, "b", "forward", "127.0.0.1", 2002, 22, "tcp", NULL), 0);
    assert_int_equal(smolvm_store_port_alloc(f->s, "a", "ssh", "127.0.0.1", 2000, 2010, 22, "tcp",
                                             reject_odd_and_2000, &calls, &port, NULL),
                     0);
    assert_int_equal(port, 2004);
    assert_int_equal(calls, 4); /* 2000, 2001, 2003, 2004: taken ports are not asked */
    assert_int_equal(smolvm_store_port_alloc(f->s, "a", "forward", "127.0.0.1", 2000, 2010, 22,
                                             "tcp", NULL, NULL, &port, NULL),
                     0);
    assert_int_equal(port, 2000);
    assert_int_equal(smolvm_store_port_alloc(f->s, "a", "forward", "127.0.0.1", 2000, 2010, 22,
                                             "tcp", reject_all, NULL, &port, &err),
                     SMOLVM_ENOSPC);
    assert_string_equal(smolvm_error_message(err),
                        "no free host port in '2000-2010' on '127.0.0.1'");
    err = smolvm_error_free(err);
    assert_int_equal(smolvm_store_port_alloc(f->s, "a", "forward", "127.0.0.1", 10, 9, 22, "tcp",
                                             NULL, NULL, &port, NULL),
                     SMOLVM_EINVAL);
    /* Exhaust a small range. */
    assert_int_equal(smolvm_store_port_alloc(f->s, "b", "forward", "127.0.0.1", 3000, 3001, 1,
                                             "tcp", NULL, NULL, &port, NULL),
                     0);
    assert_int_equal(smolvm_store_port_alloc(f->s, "b", "forward", "127.0.0.1", 3000, 3001, 1,
                                             "tcp", NULL, NULL, &port, NULL),
                     0);
    assert_int_equal(port, 3001);
    assert_int_equal(smolvm_store_port_alloc(f->s, "b", "forward", "127.0.0.1", 3000, 3001, 1,
                                             "tcp", NULL, NULL, &port, NULL),
                     SMOLVM_ENOSPC);

    port = 0;
    assert_int_equal(smolvm_store_port_get(f->s, "a", "ssh", &port, NULL), 0);
    assert_int_equal(port, 2004);
    assert_int_equal(smolvm_store_port_get(f->s, "b", "ssh", &port, NULL), SMOLVM_ENOENT);
    assert_int_equal(smolvm_store_port_remove(f->s, "a", "127.0.0.1", 2004, "tcp", NULL), 0);
    assert_int_equal(smolvm_store_port_remove(f->s, "a", "127.0.0.1", 2004, "tcp", NULL),
                     SMOLVM_ENOENT);
    assert_int_equal(smolvm_store_port_get(f->s, "a", "ssh", &port, NULL), SMOLVM_ENOENT);
    assert_int_equal(smolvm_store_release_ports(f->s, "b", NULL), 0);
    assert_int_equal(smolvm_store_port_add(f->s, "a", "forward", "127.0.0.1", 3000, 1, "tcp", NULL),
                     0);
}

/* ---------------------------------------------------------------- delete, JSON */

static void test_delete_cascades(void **state)
{
    fixture *f = *state;
    char ip[16], *text = NULL;
    int port;

    vm_new(f->s, "a");
    vm_new(f->s, "b");
    assert_int_equal(smolvm_store_lease_ip(f->s, "a", "10.0.0.0/24", ip, NULL), 0);
    assert_int_equal(smolvm_store_lease_ip(f->s, "b", "10.0.0.0/24", ip, NULL), 0);
    assert_int_equal(
        smolvm_store_port_add(f->s, "a", "forward", "127.0.0.1", 8080, 80, "tcp", NULL), 0);
    assert_int_equal(smolvm_store_port_alloc(f->s, "a", "ssh", "127.0.0.1", 2200, 2300, 22, "tcp",
                                             NULL, NULL, &port, NULL),
                     0);
    assert_int_equal(smolvm_store_vm_delete(f->s, "a", NULL), 0);
    assert_int_equal(smolvm_store_vm_delete(f->s, "a", NULL), SMOLVM_ENOENT);

    assert_int_equal(smolvm_store_leases_json(&text, f->s, NULL), 0);
    assert_string_equal(text, "[{\"ip\":\"10.0.0.3\",\"cidr\":\"10.0.0.0/24\",\"vm_id\":\"b\"}]");
    free(text);
    assert_int_equal(smolvm_store_forwards_json(&text, f->s, NULL), 0);
    assert_string_equal(text, "[]");
    free(text);
    /* The freed address and port are free again. */
    vm_new(f->s, "c");
    lease(f->s, "c", "10.0.0.0/24", "10.0.0.2");
    assert_int_equal(
        smolvm_store_port_add(f->s, "c", "forward", "127.0.0.1", 8080, 80, "tcp", NULL), 0);
}

static void test_json(void **state)
{
    fixture *f = *state;
    smolvm_error *err = NULL;
    json_t *arr, *o, *p;
    char *text = NULL, ip[16];

    assert_int_equal(smolvm_store_list_json(&text, f->s, NULL), 0);
    assert_string_equal(text, "[]");
    free(text);

    vm_new(f->s, "web");
    vm_new(f->s, "idle");
    assert_int_equal(smolvm_store_vm_set_pid(f->s, "web", 77, 5, NULL), 0);
    assert_int_equal(smolvm_store_lease_ip(f->s, "web", "172.16.0.0/16", ip, NULL), 0);
    assert_int_equal(
        smolvm_store_port_add(f->s, "web", "forward", "127.0.0.1", 8080, 80, "tcp", NULL), 0);

    assert_int_equal(smolvm_store_list_json(&text, f->s, NULL), 0);
    arr = parse(text);
    assert_true(json_is_array(arr));
    assert_int_equal(json_array_size(arr), 2);
    json_decref(arr);

    assert_int_equal(smolvm_store_get_json(&text, f->s, "web", NULL), 0);
    o = parse(text);
    assert_string_equal(json_string_value(json_object_get(o, "id")), "web");
    assert_string_equal(json_string_value(json_object_get(o, "status")), "created");
    assert_string_equal(json_string_value(json_object_get(o, "backend")), "qemu");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "config"), "memory")),
                     256);
    assert_true(json_is_null(json_object_get(o, "dir")));
    assert_true(json_is_null(json_object_get(o, "reason")));
    assert_int_equal(json_integer_value(json_object_get(o, "pid")), 77);
    assert_true(json_integer_value(json_object_get(o, "created_at")) > 1600000000000LL);
    assert_true(json_is_integer(json_object_get(o, "updated_at")));
    assert_string_equal(json_string_value(json_object_get(o, "ip")), "172.16.0.2");
    assert_int_equal(json_array_size(json_object_get(o, "ports")), 1);
    p = json_array_get(json_object_get(o, "ports"), 0);
    assert_string_equal(json_string_value(json_object_get(p, "host_address")), "127.0.0.1");
    assert_int_equal(json_integer_value(json_object_get(p, "host_port")), 8080);
    assert_int_equal(json_integer_value(json_object_get(p, "guest_port")), 80);
    assert_string_equal(json_string_value(json_object_get(p, "proto")), "tcp");
    assert_string_equal(json_string_value(json_object_get(p, "kind")), "forward");
    json_decref(o);

    assert_int_equal(smolvm_store_get_json(&text, f->s, "idle", NULL), 0);
    o = parse(text);
    assert_true(json_is_null(json_object_get(o, "ip")));
    assert_int_equal(json_array_size(json_object_get(o, "ports")), 0);
    json_decref(o);

    assert_int_equal(smolvm_store_get_json(&text, f->s, "gone", &err), SMOLVM_ENOENT);
    smolvm_error_free(err);

    assert_int_equal(smolvm_store_forwards_json(&text, f->s, NULL), 0);
    assert_string_equal(text, "[{\"vm_id\":\"web\",\"host_address\":\"127.0.0.1\","
                              "\"host_port\":8080,\"guest_port\":80,\"proto\":\"tcp\","
                              "\"kind\":\"forward\"}]");
    free(text);
    assert_int_equal(smolvm_store_leases_json(&text, f->s, NULL), 0);
    assert_string_equal(text, "[{\"ip\":\"172.16.0.2\",\"cidr\":\"172.16.0.0/16\","
                              "\"vm_id\":\"web\"}]");
    free(text);
}

/* The forward limit holds at add time; events are listed per VM and kind, newest kept. */
static void test_forward_limit_and_events(void **state)
{
    fixture *f = *state;
    smolvm_error *err = NULL;
    smolvm_event_row *rows = NULL;
    const char *details[3] = {"{\"dst\":\"198.51.100.9\"}", "{\"dst\":\"198.51.100.10\"}", NULL};
    const int64_t at[1] = {1234567};
    size_t n = 0;

    vm_new(f->s, "a");
    vm_new(f->s, "b");
    for (int i = 0; i < 3; i++)
        assert_int_equal(smolvm_store_forward_add(f->s, "a", "127.0.0.1", 9000 + i, 80, 3, NULL),
                         0);
    assert_int_equal(smolvm_store_forward_add(f->s, "a", "127.0.0.1", 9010, 80, 3, &err),
                     SMOLVM_ENOSPC);
    assert_string_equal(smolvm_error_message(err), "vm 'a' has 3 forwards (at most 3)");
    err = smolvm_error_free(err);
    /* another VM's forwards are its own; a taken port is still taken */
    assert_int_equal(smolvm_store_forward_add(f->s, "b", "127.0.0.1", 9010, 80, 3, NULL), 0);
    assert_int_equal(smolvm_store_forward_add(f->s, "b", "127.0.0.1", 9000, 80, 3, NULL),
                     SMOLVM_EEXIST);

    assert_int_equal(smolvm_store_event(f->s, "a", "start", NULL, NULL), 0);
    for (int round = 0; round < 3; round++)
        assert_int_equal(
            smolvm_store_events_append(f->s, "a", "egress-denied", NULL, details, 2, 3, NULL), 0);
    assert_int_equal(
        smolvm_store_events_append(f->s, "b", "egress-denied", at, details, 1, 3, NULL), 0);
    /* a's: the newest 3 of its 6 denied attempts, oldest first; its start event stays */
    assert_int_equal(smolvm_store_events_list(&rows, &n, f->s, "a", "egress-denied", 100, NULL), 0);
    assert_int_equal(n, 3);
    assert_string_equal(rows[0].detail, details[1]);
    assert_string_equal(rows[2].detail, details[1]);
    assert_true(rows[0].id < rows[1].id && rows[1].id < rows[2].id);
    assert_true(rows[0].at > 0);
    rows = smolvm_event_rows_free(rows, n);
    assert_int_equal(smolvm_store_events_list(&rows, &n, f->s, "a", NULL, 100, NULL), 0);
    assert_int_equal(n, 4);
    assert_string_equal(rows[0].kind, "start");
    assert_null(rows[0].detail);
    rows = smolvm_event_rows_free(rows, n);
    /* the limit takes the newest */
    assert_int_equal(smolvm_store_events_list(&rows, &n, f->s, "a", NULL, 2, NULL), 0);
    assert_int_equal(n, 2);
    assert_string_equal(rows[1].kind, "egress-denied");
    rows = smolvm_event_rows_free(rows, n);
    assert_int_equal(smolvm_store_events_list(&rows, &n, f->s, "b", "egress-denied", 10, NULL), 0);
    assert_int_equal(n, 1);
    assert_int_equal(rows[0].at, 1234567); /* the time given, not the time written */
    rows = smolvm_event_rows_free(rows, n);
    assert_int_equal(smolvm_store_events_append(f->s, "a", "", NULL, details, 1, 3, NULL),
                     SMOLVM_EINVAL);

    /* the stored config can be replaced */
    assert_int_equal(smolvm_store_vm_set_config(f->s, "a", "{\"x\":1}", NULL), 0);
    assert_int_equal(smolvm_store_vm_set_config(f->s, "ghost", "{}", NULL), SMOLVM_ENOENT);
}

/* ---------------------------------------------------------------- quotas */

static int insert_mib(smolvm_store *s, const char *id, unsigned mib, const smolvm_store_quota *q,
                      smolvm_error **err)
{
    _cleanup_free_ char *config = smolvm_strdupf("{\"memory\": %u, \"vcpus\": 1}", mib);
    smolvm_vm_row row = {.id = (char *)id, .config_json = config, .dir = (char *)"/x"};
    int r = smolvm_store_vm_insert_quota(s, &row, q, err);

    if (r == 0)
        free(row.status);
    return r;
}

static void test_quota_vms(void **state)
{
    fixture *f = *state;
    smolvm_store_quota q = {.max_vms = 2};
    smolvm_error *err = NULL;

    assert_int_equal(insert_mib(f->s, "a", 512, &q, &err), 0);
    assert_int_equal(insert_mib(f->s, "b", 512, &q, &err), 0);
    assert_int_equal(insert_mib(f->s, "c", 512, &q, &err), SMOLVM_ENOSPC);
    /* Named, with the use, and a hint. */
    assert_string_equal(smolvm_error_message(err),
                        "quota 'max_vms' reached: 2 of 2 vms exist (delete a vm, or raise max_vms "
                        "($SMOLVM_MAX_VMS))");
    err = smolvm_error_free(err);
    /* Nothing of the refused one was recorded. */
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM vms"), 2);
    assert_int_equal(smolvm_store_vm_get(f->s, "c", &(smolvm_vm_row *){NULL}, &err), SMOLVM_ENOENT);
    err = smolvm_error_free(err);
    /* A deleted VM frees its place. */
    assert_int_equal(smolvm_store_vm_delete(f->s, "a", &err), 0);
    assert_int_equal(insert_mib(f->s, "c", 512, &q, &err), 0);
    /* No quota: no limit. */
    assert_int_equal(insert_mib(f->s, "d", 512, NULL, &err), 0);
}

static void test_quota_memory(void **state)
{
    fixture *f = *state;
    smolvm_store_quota q = {.max_memory_mib = 1024};
    smolvm_error *err = NULL;
    uint64_t mib = 0;
    unsigned vms = 0;

    assert_int_equal(insert_mib(f->s, "a", 512, &q, &err), 0);
    assert_int_equal(insert_mib(f->s, "b", 256, &q, &err), 0);
    assert_int_equal(insert_mib(f->s, "c", 512, &q, &err), SMOLVM_ENOSPC);
    assert_string_equal(smolvm_error_message(err),
                        "quota 'max_memory_mib' reached: 512 MiB more would make 1280 of 1024 MiB "
                        "(2 vms hold 768 MiB) (delete a vm, ask for less memory, or raise "
                        "max_memory_mib ($SMOLVM_MAX_MEMORY_MIB))");
    err = smolvm_error_free(err);
    /* Exactly up to the quota is within it. */
    assert_int_equal(insert_mib(f->s, "c", 256, &q, &err), 0);
    assert_int_equal(smolvm_store_usage(f->s, &vms, &mib, &err), 0);
    assert_int_equal(vms, 3);
    assert_int_equal(mib, 1024);
    assert_int_equal(insert_mib(f->s, "d", 128, &q, &err), SMOLVM_ENOSPC);
    err = smolvm_error_free(err);
    /* Both quotas: the count is checked first. */
    q.max_vms = 3;
    assert_int_equal(insert_mib(f->s, "d", 128, &q, &err), SMOLVM_ENOSPC);
    assert_non_null(strstr(smolvm_error_message(err), "'max_vms'"));
    err = smolvm_error_free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_schema_created, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_idempotent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_file_initialised, setup, teardown),
        cmocka_unit_test_setup_teardown(test_newer_version_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_random_bytes_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated_db_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged_page_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_foreign_sqlite_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_path, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vm_ids, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_vm_update_list, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_lease_lowest_free, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_lease_exhausted, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_lease_invalid_cidr, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_ports, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_delete_cascades, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_json, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_forward_limit_and_events, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_quota_vms, setup_open, teardown),
        cmocka_unit_test_setup_teardown(test_quota_memory, setup_open, teardown),
    };

    return cmocka_run_group_tests_name("store", tests, NULL, NULL);
}
