/* SPDX-License-Identifier: MIT */
/*
 * The state database: one SQLite file shared by every smolvm process of a user.
 *
 * Opening is careful not to touch a file that is not ours: the header is read by hand,
 * and the file is checked over a read-only connection (application_id, schema
 * version, quick_check) before a read-write connection switches it to WAL and applies
 * migrations. Allocations (VM ids, IP leases, host ports) each run in one
 * BEGIN IMMEDIATE transaction and rely on UNIQUE constraints, so concurrent processes
 * never hand out the same value. See docs/state.md.
 *
 * This file opens the database and keeps its schema; VM rows and events are in
 * store-vms.c, leases and ports in store-alloc.c, JSON views in store-json.c, and what
 * they share in store-private.h.
 */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>

#include <sqlite3.h>

#include "error.h"
#include "store-internal.h"

/* PRAGMA application_id of a smolvm database: "SmoL" in ASCII. */
#define STORE_APPLICATION_ID 0x536d6f4c
#define STORE_BUSY_TIMEOUT_MS 10000

/*
 * Forward migrations: step i takes user_version i to i + 1. All pending steps run in
 * one IMMEDIATE transaction together with the user_version and application_id
 * update, so a crash leaves the database at the old version, never half-migrated.
 * Append only; never edit a released step.
 */
static const char *const migrations[] = {
    /* 0 -> 1 */
    "CREATE TABLE vms ("
    "  id TEXT PRIMARY KEY NOT NULL,"
    "  status TEXT NOT NULL,"
    "  backend TEXT,"
    "  config TEXT NOT NULL DEFAULT '{}',"
    "  dir TEXT,"
    "  reason TEXT,"
    "  pid INTEGER NOT NULL DEFAULT 0,"
    "  pid_start INTEGER NOT NULL DEFAULT 0,"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL);"
    "CREATE TABLE ip_leases ("
    "  ip TEXT NOT NULL,"
    "  ip_num INTEGER NOT NULL,"
    "  cidr TEXT NOT NULL,"
    "  vm_id TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,"
    "  UNIQUE (ip),"
    "  UNIQUE (ip_num));"
    "CREATE INDEX ip_leases_vm ON ip_leases(vm_id);"
    "CREATE TABLE ports ("
    "  host_address TEXT NOT NULL,"
    "  host_port INTEGER NOT NULL CHECK (host_port BETWEEN 1 AND 65535),"
    "  proto TEXT NOT NULL CHECK (proto IN ('tcp', 'udp')),"
    "  vm_id TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,"
    "  guest_port INTEGER NOT NULL CHECK (guest_port BETWEEN 0 AND 65535),"
    "  kind TEXT NOT NULL,"
    "  UNIQUE (host_address, host_port, proto));"
    "CREATE INDEX ports_vm ON ports(vm_id);"
    "CREATE TABLE events ("
    "  id INTEGER PRIMARY KEY,"
    "  at INTEGER NOT NULL,"
    "  vm_id TEXT,"
    "  kind TEXT NOT NULL,"
    "  detail TEXT);"
    "CREATE INDEX events_vm ON events(vm_id);",
    /* 1 -> 2 (0.2): the VM's supervisor, its owner process and its deadline. */
    "ALTER TABLE vms ADD COLUMN sv_pid INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE vms ADD COLUMN sv_start INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE vms ADD COLUMN owner_pid INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE vms ADD COLUMN owner_start INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE vms ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0;",
};
#define STORE_SCHEMA_VERSION ((int)SMOLVM_ARRAY_SIZE(migrations))

/* ---------------------------------------------------------------- helpers */
static void closedbp(sqlite3 **db)
{
    if (*db)
        (void)sqlite3_close_v2(*db);
}
#define _cleanup_db_ _cleanup_(closedbp)

/* ---------------------------------------------------------------- opening */

/* "file:" URI for path, percent-encoding anything but unreserved characters and '/'. */
static char *path_uri(const char *path, const char *query)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(path);
    char *u = malloc(5 + 3 * n + 1 + strlen(query) + 1), *p;

    if (!u)
        return NULL;
    p = stpcpy(u, "file:");
    for (const unsigned char *c = (const unsigned char *)path; *c; c++) {
        if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
            strchr("/-._~", *c)) {
            *p++ = (char)*c;
        } else {
            *p++ = '%';
            *p++ = hex[*c >> 4];
            *p++ = hex[*c & 15];
        }
    }
    *p++ = '?';
    strcpy(p, query);
    return u;
}

static int not_smolvm(smolvm_error **err, const char *path, const char *why)
{
    return smolvm_err(err, SMOLVM_EDB, "state database '%s' is not a smolvm database: %s (%s)",
                      path, why, STORE_HINT);
}

static int newer_version(smolvm_error **err, const char *path, int64_t v)
{
    return smolvm_err(err, SMOLVM_EDB,
                      "state database '%s' was written by a newer smolvm (schema version %lld, "
                      "this one knows up to %d)",
                      path, (long long)v, STORE_SCHEMA_VERSION);
}

/* Run a one-value query on a raw connection. */
static int query_int(sqlite3 *db, const char *path, const char *sql, int64_t *out,
                     smolvm_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);

    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(st, 0);
        return 0;
    }
    if ((rc & 0xff) == SQLITE_NOTADB)
        return not_smolvm(err, path, "not an SQLite database");
    return db_fail(db, path, rc, sql, err);
}

/* The first line of PRAGMA quick_check ("ok" when healthy), as one line. */
static int quick_check(sqlite3 *db, const char *path, smolvm_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    const char *res;
    char line[201];
    size_t i;
    int rc = sqlite3_prepare_v2(db, "PRAGMA quick_check(1)", -1, &st, NULL);

    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
        return db_fail(db, path, rc, "quick_check", err);
    res = (const char *)sqlite3_column_text(st, 0);
    if (res && strcmp(res, "ok") == 0)
        return 0;
    (void)snprintf(line, sizeof(line), "%s", res ? res : "no result");
    for (i = 0; line[i]; i++)
        if (line[i] == '\n' || line[i] == '\r' || line[i] == '\t')
            line[i] = ' ';
    return smolvm_err(err, SMOLVM_EDB, "state database '%s' is damaged: %s (%s)", path, line,
                      STORE_HINT);
}

/*
 * Database files this process has SQLite connections to, with how many. POSIX record
 * locks belong to the process: closing any descriptor of a file drops every lock the
 * process holds on it, SQLite's included. precheck() opens the file with open()
 * itself, so it runs only while this process has no connection to that file; a file a
 * connection of ours holds open was checked when that connection was made, and SQLite
 * reports any damage since in the queries themselves. Keyed by device and inode.
 */
#define OPEN_FILES_MAX 16
static struct {
    dev_t dev;
    ino_t ino;
    unsigned count;
} open_files[OPEN_FILES_MAX];
static pthread_mutex_t open_files_lock = PTHREAD_MUTEX_INITIALIZER;

/* Is a connection of this process open on the file at path? */
static bool held_open(const char *path)
{
    struct stat st;
    bool found = false;
    size_t i;

    if (stat(path, &st) < 0)
        return false;
    pthread_mutex_lock(&open_files_lock);
    for (i = 0; i < OPEN_FILES_MAX && !found; i++)
        found = open_files[i].count > 0 && open_files[i].dev == st.st_dev &&
                open_files[i].ino == st.st_ino;
    pthread_mutex_unlock(&open_files_lock);
    return found;
}

/* Count a connection to (dev, ino) in (delta +1) or out (-1). */
static void count_open(dev_t dev, ino_t ino, int delta)
{
    size_t i, free_slot = OPEN_FILES_MAX;

    pthread_mutex_lock(&open_files_lock);
    for (i = 0; i < OPEN_FILES_MAX; i++) {
        if (open_files[i].count > 0 && open_files[i].dev == dev && open_files[i].ino == ino) {
            open_files[i].count = (unsigned)((int)open_files[i].count + delta);
            pthread_mutex_unlock(&open_files_lock);
            return;
        }
        if (open_files[i].count == 0 && free_slot == OPEN_FILES_MAX)
            free_slot = i;
    }
    /* Beyond OPEN_FILES_MAX distinct files the next open simply checks again. */
    if (delta > 0 && free_slot < OPEN_FILES_MAX)
        open_files[free_slot] = (typeof(open_files[0])){dev, ino, 1};
    pthread_mutex_unlock(&open_files_lock);
}

/*
 * Decide whether the file at path may be opened read-write, without changing it.
 * Returns 0 when it is absent (then created empty, mode 0600), empty, an SQLite file
 * with no tables, or a healthy smolvm database of a version we know.
 */
static int precheck(const char *path, smolvm_error **err)
{
    static const char magic[16] = "SQLite format 3";
    _cleanup_close_ int fd = -1;
    _cleanup_free_ char *wal = NULL, *uri = NULL;
    _cleanup_db_ sqlite3 *db = NULL;
    unsigned char hdr[100];
    uint32_t app_id;
    int64_t v, tables;
    struct stat sb;
    ssize_t n;
    int rc, r;

    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0 && errno == ENOENT) {
        /* Another process may create it at the same moment: no O_EXCL, both are fine. */
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY, 0600);
        if (fd < 0)
            return smolvm_err_errno(err, errno, "create state database '%s'", path);
        return 0;
    }
    if (fd < 0)
        return smolvm_err_errno(err, errno, "open state database '%s'", path);
    if (fstat(fd, &sb) < 0)
        return smolvm_err_errno(err, errno, "stat state database '%s'", path);
    if (!S_ISREG(sb.st_mode))
        return not_smolvm(err, path, "not a regular file");
    if (sb.st_size == 0)
        return 0; /* new, or being created by another process (its pages are in the WAL) */

    do
        n = pread(fd, hdr, sizeof(hdr), 0);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return smolvm_err_errno(err, errno, "read state database '%s'", path);
    if ((size_t)n < sizeof(hdr) || memcmp(hdr, magic, sizeof(magic)) != 0)
        return not_smolvm(err, path, "not an SQLite database");
    app_id = (uint32_t)hdr[68] << 24 | (uint32_t)hdr[69] << 16 | (uint32_t)hdr[70] << 8 | hdr[71];
    if (app_id != 0 && app_id != STORE_APPLICATION_ID) {
        char why[96];

        (void)snprintf(why, sizeof(why), "another program's SQLite file (application_id 0x%08x)",
                       app_id);
        return not_smolvm(err, path, why);
    }

    /*
     * A read-only connection to a WAL database creates -wal and -shm files. That is
     * fine for our own file, or one that has a -wal already (whose newest pages may be
     * there). A file with no application_id and no -wal is complete as it is: read it
     * as immutable so nothing is created next to a stranger's file.
     */
    wal = smolvm_strdupf("%s-wal", path);
    if (!wal)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (app_id == STORE_APPLICATION_ID || access(wal, F_OK) == 0)
        uri = path_uri(path, "mode=ro");
    else
        uri = path_uri(path, "mode=ro&immutable=1");
    if (!uri)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    rc = sqlite3_open_v2(uri, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX,
                         NULL);
    if (rc != SQLITE_OK)
        return db_fail(db, path, rc, "open", err);
    (void)sqlite3_extended_result_codes(db, 1);
    (void)sqlite3_busy_timeout(db, STORE_BUSY_TIMEOUT_MS);

    /* Read application_id through SQLite too: the WAL may hold a newer page 1. */
    r = query_int(db, path, "PRAGMA application_id", &v, err);
    if (r < 0)
        return r;
    app_id = (uint32_t)v;
    r = query_int(db, path, "SELECT count(*) FROM sqlite_schema", &tables, err);
    if (r < 0)
        return r;
    if (app_id != STORE_APPLICATION_ID) {
        char why[96];

        if (tables == 0 && app_id == 0)
            return 0; /* an empty SQLite database: adopt it */
        (void)snprintf(why, sizeof(why), "another program's SQLite file (application_id 0x%08x)",
                       app_id);
        return not_smolvm(err, path, why);
    }
    r = query_int(db, path, "PRAGMA user_version", &v, err);
    if (r < 0)
        return r;
    if (v > STORE_SCHEMA_VERSION)
        return newer_version(err, path, v);
    return quick_check(db, path, err);
}

/* Bring the schema to STORE_SCHEMA_VERSION. Idempotent; safe against concurrent
 * openers (the version is read again under the write lock). */
static int migrate(smolvm_store *s, smolvm_error **err)
{
    _cleanup_txn_ smolvm_store *txn = NULL;
    int64_t v, app_id, tables;
    char sql[96];
    int r;

    r = query_int(s->db, s->path, "PRAGMA user_version", &v, err);
    if (r < 0)
        return r;
    if (v == STORE_SCHEMA_VERSION)
        return 0;
    if (v > STORE_SCHEMA_VERSION)
        return newer_version(err, s->path, v);

    r = begin_immediate(s, err);
    if (r < 0)
        return r;
    txn = s;
    r = query_int(s->db, s->path, "PRAGMA user_version", &v, err);
    if (r == 0)
        r = query_int(s->db, s->path, "PRAGMA application_id", &app_id, err);
    if (r == 0)
        r = query_int(s->db, s->path, "SELECT count(*) FROM sqlite_schema", &tables, err);
    if (r < 0)
        return r;
    if (v > STORE_SCHEMA_VERSION)
        return newer_version(err, s->path, v);
    if (app_id != STORE_APPLICATION_ID && (app_id != 0 || tables > 0 || v != 0))
        return not_smolvm(err, s->path, "application_id does not match");
    for (; v < STORE_SCHEMA_VERSION; v++) {
        (void)snprintf(sql, sizeof(sql), "migrate to schema version %lld", (long long)v + 1);
        r = exec(s, migrations[v], sql, err);
        if (r < 0)
            return r;
    }
    (void)snprintf(sql, sizeof(sql), "PRAGMA application_id = %d; PRAGMA user_version = %d",
                   STORE_APPLICATION_ID, STORE_SCHEMA_VERSION);
    r = exec(s, sql, "set schema version", err);
    if (r == 0)
        r = commit(s, err);
    if (r < 0)
        return r;
    txn = NULL;
    return 0;
}

/*
 * Switch to WAL. A new file is converted by whichever process gets the exclusive lock
 * first; SQLite returns SQLITE_BUSY at once, without its busy handler, when two
 * connections try that upgrade together (waiting could deadlock). So back off and
 * retry, as the busy handler would, until the busy timeout. Once the file is in WAL
 * mode this succeeds the first time without taking any write lock.
 */
static int set_wal(smolvm_store *s, smolvm_error **err)
{
    int64_t deadline = smolvm_now_ms() + STORE_BUSY_TIMEOUT_MS;
    unsigned delay_us = 500, seed = (unsigned)getpid() * 2654435761u;

    for (;;) {
        _cleanup_stmt_ sqlite3_stmt *st = NULL;
        const char *mode;
        int rc, r;

        r = prep(s, &st, "PRAGMA journal_mode = WAL", err);
        if (r < 0)
            return r;
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            mode = (const char *)sqlite3_column_text(st, 0);
            if (!mode || strcmp(mode, "wal") != 0)
                return smolvm_err(err, SMOLVM_EDB,
                                  "state database '%s': cannot use WAL mode (got '%s')", s->path,
                                  mode ? mode : "");
            return 0;
        }
        if (!is_busy(rc) || smolvm_now_ms() >= deadline)
            return store_fail(s, rc, "set WAL mode", err);
        seed = seed * 1103515245u + 12345u;
        (void)usleep(delay_us + (seed >> 8) % delay_us);
        if (delay_us < 20000)
            delay_us *= 2;
    }
}

static int open_rw(smolvm_store *s, smolvm_error **err)
{
    int rc, r;

    rc = sqlite3_open_v2(s->path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK)
        return store_fail(s, rc, "open", err);
    (void)sqlite3_extended_result_codes(s->db, 1);
    (void)sqlite3_busy_timeout(s->db, STORE_BUSY_TIMEOUT_MS);
    r = set_wal(s, err);
    if (r < 0)
        return r;
    /* synchronous=NORMAL is durable across application crashes in WAL mode. */
    return exec(s, "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL", "set pragmas", err);
}

int smolvm_store_open(smolvm_store **out, const char *path, smolvm_error **err)
{
    smolvm_store *s;
    int r;

    if (!path || !*path)
        return smolvm_err(err, SMOLVM_EINVAL, "state database path is empty");
    if (strlen(path) >= PATH_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "state database path is too long");
    s = calloc(1, sizeof(*s));
    if (!s || !(s->path = strdup(path))) {
        free(s);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    r = held_open(path) ? 0 : precheck(path, err);
    if (r == 0)
        r = open_rw(s, err);
    if (r == 0)
        r = migrate(s, err);
    if (r == 0) {
        struct stat st;

        if (stat(path, &st) == 0) {
            s->dev = st.st_dev;
            s->ino = st.st_ino;
            s->counted = true;
            count_open(s->dev, s->ino, +1);
        }
    }
    if (r < 0) {
        smolvm_store_free(s);
        return r;
    }
    *out = s;
    return 0;
}

smolvm_store *smolvm_store_free(smolvm_store *s)
{
    if (!s)
        return NULL;
    if (s->db)
        (void)sqlite3_close_v2(s->db);
    if (s->counted)
        count_open(s->dev, s->ino, -1);
    free(s->path);
    free(s);
    return NULL;
}

const char *smolvm_store_path(const smolvm_store *s)
{
    return s->path;
}
