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
 */
#include "util-internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>
#include <sqlite3.h>

#include "error-internal.h"
#include "store-internal.h"

/* PRAGMA application_id of a smolvm database: "SmoL" in ASCII. */
#define STORE_APPLICATION_ID 0x536d6f4c
#define STORE_BUSY_TIMEOUT_MS 10000
#define STORE_HINT "move it away or set SMOLVM_STATE_DIR"
#define STORE_TEXT_MAX 4096         /* reason, event detail: truncated beyond */
#define STORE_CONFIG_MAX (1u << 20) /* config JSON: rejected beyond */
#define STORE_EVENTS_KEEP 10000     /* the event log keeps the newest rows */
#define STORE_ID_ATTEMPTS 32

struct smolvm_store {
    sqlite3 *db;
    char *path;
};

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
};
#define STORE_SCHEMA_VERSION ((int)SMOLVM_ARRAY_SIZE(migrations))

/* ---------------------------------------------------------------- helpers */

static void finalizep(sqlite3_stmt **st)
{
    if (*st)
        (void)sqlite3_finalize(*st);
}
#define _cleanup_stmt_ _cleanup_(finalizep)

static void closedbp(sqlite3 **db)
{
    if (*db)
        (void)sqlite3_close_v2(*db);
}
#define _cleanup_db_ _cleanup_(closedbp)

static int is_busy(int rc)
{
    return (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED;
}

/* An SQLite failure as a one-line SMOLVM_EDB error naming the file. */
static int db_fail(sqlite3 *db, const char *path, int rc, const char *what, smolvm_error **err)
{
    if (is_busy(rc))
        return smolvm_err(err, SMOLVM_EDB, "state database '%s' is locked by another process (%s)",
                          path, what);
    if ((rc & 0xff) == SQLITE_NOMEM)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if ((rc & 0xff) == SQLITE_CORRUPT || (rc & 0xff) == SQLITE_NOTADB)
        return smolvm_err(err, SMOLVM_EDB, "state database '%s' is damaged: %s: %s (%s)", path,
                          what, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc), STORE_HINT);
    return smolvm_err(err, SMOLVM_EDB, "state database '%s': %s: %s", path, what,
                      db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
}

static int store_fail(smolvm_store *s, int rc, const char *what, smolvm_error **err)
{
    return db_fail(s->db, s->path, rc, what, err);
}

static int prep(smolvm_store *s, sqlite3_stmt **st, const char *sql, smolvm_error **err)
{
    int rc = sqlite3_prepare_v2(s->db, sql, -1, st, NULL);

    if (rc != SQLITE_OK)
        return store_fail(s, rc, "prepare", err);
    return 0;
}

static int exec(smolvm_store *s, const char *sql, const char *what, smolvm_error **err)
{
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);

    if (rc != SQLITE_OK)
        return store_fail(s, rc, what, err);
    return 0;
}

/* Rolls back on every early return; set to NULL once committed. */
static void rollbackp(smolvm_store **s)
{
    if (*s && !sqlite3_get_autocommit((*s)->db))
        (void)sqlite3_exec((*s)->db, "ROLLBACK", NULL, NULL, NULL);
}
#define _cleanup_txn_ _cleanup_(rollbackp)

static int begin_immediate(smolvm_store *s, smolvm_error **err)
{
    return exec(s, "BEGIN IMMEDIATE", "begin transaction", err);
}

static int begin_read(smolvm_store *s, smolvm_error **err)
{
    return exec(s, "BEGIN", "begin transaction", err);
}

static int commit(smolvm_store *s, smolvm_error **err)
{
    return exec(s, "COMMIT", "commit", err);
}

static int bind_text(sqlite3_stmt *st, int i, const char *v)
{
    return v ? sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

/* Bind at most STORE_TEXT_MAX bytes of v, cut on a UTF-8 character boundary. */
static int bind_text_capped(sqlite3_stmt *st, int i, const char *v)
{
    size_t n;

    if (!v)
        return sqlite3_bind_null(st, i);
    n = strnlen(v, STORE_TEXT_MAX + 1);
    if (n > STORE_TEXT_MAX) {
        n = STORE_TEXT_MAX;
        while (n > 0 && ((unsigned char)v[n] & 0xc0) == 0x80)
            n--;
    }
    return sqlite3_bind_text(st, i, v, (int)n, SQLITE_STATIC);
}

static char *column_strdup(sqlite3_stmt *st, int i, int *oom)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    char *r;

    if (!t)
        return NULL;
    r = strdup((const char *)t);
    if (!r)
        *oom = 1;
    return r;
}

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
    r = precheck(path, err);
    if (r == 0)
        r = open_rw(s, err);
    if (r == 0)
        r = migrate(s, err);
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
    free(s->path);
    free(s);
    return NULL;
}

const char *smolvm_store_path(const smolvm_store *s)
{
    return s->path;
}

/* ---------------------------------------------------------------- VMs */

int smolvm_id_valid(const char *id)
{
    size_t i;

    if (!id || !((id[0] >= 'a' && id[0] <= 'z') || (id[0] >= '0' && id[0] <= '9')))
        return 0;
    for (i = 1; id[i]; i++) {
        char c = id[i];

        if (i >= SMOLVM_ID_MAX)
            return 0;
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static int status_valid(const char *status)
{
    static const char *const known[] = {"created",  "starting", "running",
                                        "stopping", "stopped",  "error"};

    for (size_t i = 0; status && i < SMOLVM_ARRAY_SIZE(known); i++)
        if (strcmp(status, known[i]) == 0)
            return 1;
    return 0;
}

static int check_id(const char *id, smolvm_error **err)
{
    if (!smolvm_id_valid(id))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "invalid vm id '%.80s' (expected [a-z0-9][a-z0-9_-]{0,62})",
                          id ? id : "");
    return 0;
}

smolvm_vm_row *smolvm_vm_row_free(smolvm_vm_row *row)
{
    if (!row)
        return NULL;
    free(row->id);
    free(row->status);
    free(row->backend);
    free(row->config_json);
    free(row->dir);
    free(row->reason);
    free(row);
    return NULL;
}

void smolvm_vm_rows_free(smolvm_vm_row **rows, size_t n)
{
    if (!rows)
        return;
    for (size_t i = 0; i < n; i++)
        smolvm_vm_row_free(rows[i]);
    free(rows);
}

static void vm_row_freep(smolvm_vm_row **row)
{
    smolvm_vm_row_free(*row);
}

static int insert_vm(smolvm_store *s, const smolvm_vm_row *row, const char *config, int64_t now,
                     smolvm_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int rc, r;

    r = prep(s, &st,
             "INSERT INTO vms (id, status, backend, config, dir, reason, pid, pid_start, "
             "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
             err);
    if (r < 0)
        return r;
    (void)bind_text(st, 1, row->id);
    (void)bind_text(st, 2, row->status ? row->status : "created");
    (void)bind_text(st, 3, row->backend);
    (void)bind_text(st, 4, config);
    (void)bind_text(st, 5, row->dir);
    (void)bind_text_capped(st, 6, row->reason);
    (void)sqlite3_bind_int64(st, 7, row->pid);
    (void)sqlite3_bind_int64(st, 8, (int64_t)row->pid_start);
    (void)sqlite3_bind_int64(st, 9, now);
    (void)sqlite3_bind_int64(st, 10, now);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return 0;
    if (rc == SQLITE_CONSTRAINT_PRIMARYKEY)
        return smolvm_err(err, SMOLVM_EEXIST, "vm '%s' already exists", row->id);
    return store_fail(s, rc, "insert vm", err);
}

int smolvm_store_vm_insert(smolvm_store *s, smolvm_vm_row *row, smolvm_error **err)
{
    _cleanup_txn_ smolvm_store *txn = NULL;
    _cleanup_free_ char *generated = NULL;
    const char *config = row->config_json ? row->config_json : "{}";
    int64_t now = smolvm_wall_ms();
    json_t *parsed;
    int r;

    if (row->id) {
        r = check_id(row->id, err);
        if (r < 0)
            return r;
    }
    if (row->status && !status_valid(row->status))
        return smolvm_err(err, SMOLVM_EINVAL, "invalid vm status '%.40s'", row->status);
    if (strlen(config) > STORE_CONFIG_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "vm config is larger than %u bytes",
                          STORE_CONFIG_MAX);
    parsed = json_loads(config, JSON_REJECT_DUPLICATES, NULL);
    r = json_is_object(parsed);
    json_decref(parsed);
    if (!r)
        return smolvm_err(err, SMOLVM_EINVAL, "vm config is not a JSON object");

    r = begin_immediate(s, err);
    if (r < 0)
        return r;
    txn = s;
    if (row->id) {
        r = insert_vm(s, row, config, now, err);
    } else {
        /* 32 random bits: a clash is rare, and the constraint catches it. */
        for (int attempt = 0;; attempt++) {
            uint32_t rnd;
            smolvm_error *e = NULL;

            if (attempt == STORE_ID_ATTEMPTS)
                return smolvm_err(err, SMOLVM_ENOSPC, "no free vm id after %d attempts",
                                  STORE_ID_ATTEMPTS);
            r = smolvm_random(&rnd, sizeof(rnd), err);
            if (r < 0)
                return r;
            free(generated);
            generated = smolvm_strdupf("vm-%08x", rnd);
            if (!generated)
                return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
            row->id = generated;
            r = insert_vm(s, row, config, now, &e);
            row->id = NULL;
            if (r != SMOLVM_EEXIST) {
                if (r < 0 && err && !*err)
                    *err = e;
                else
                    smolvm_error_free(e);
                break;
            }
            smolvm_error_free(e);
        }
    }
    if (r == 0)
        r = commit(s, err);
    if (r < 0)
        return r;
    txn = NULL;
    if (generated)
        row->id = TAKE_PTR(generated);
    row->created_at = row->updated_at = now;
    if (!row->status && !(row->status = strdup("created")))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    return 0;
}

#define VM_COLUMNS                                                                                 \
    "id, status, backend, config, dir, reason, pid, pid_start, created_at, updated_at"

static int row_from_stmt(sqlite3_stmt *st, smolvm_vm_row **out, smolvm_error **err)
{
    smolvm_vm_row *row = calloc(1, sizeof(*row));
    int oom = 0;

    if (!row)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    row->id = column_strdup(st, 0, &oom);
    row->status = column_strdup(st, 1, &oom);
    row->backend = column_strdup(st, 2, &oom);
    row->config_json = column_strdup(st, 3, &oom);
    row->dir = column_strdup(st, 4, &oom);
    row->reason = column_strdup(st, 5, &oom);
    row->pid = sqlite3_column_int64(st, 6);
    row->pid_start = (uint64_t)sqlite3_column_int64(st, 7);
    row->created_at = sqlite3_column_int64(st, 8);
    row->updated_at = sqlite3_column_int64(st, 9);
    if (oom) {
        smolvm_vm_row_free(row);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    *out = row;
    return 0;
}

int smolvm_store_vm_get(smolvm_store *s, const char *id, smolvm_vm_row **out, smolvm_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int rc, r;

    r = check_id(id, err);
    if (r < 0)
        return r;
    r = prep(s, &st, "SELECT " VM_COLUMNS " FROM vms WHERE id = ?", err);
    if (r < 0)
        return r;
    (void)bind_text(st, 1, id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return smolvm_err(err, SMOLVM_ENOENT, "no vm '%s'", id);
    if (rc != SQLITE_ROW)
        return store_fail(s, rc, "read vm", err);
    return row_from_stmt(st, out, err);
}

int smolvm_store_vm_list(smolvm_store *s, smolvm_vm_row ***out, size_t *n, smolvm_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    smolvm_vm_row **rows = NULL;
    size_t count = 0, cap = 0;
    int rc, r;

    r = prep(s, &st, "SELECT " VM_COLUMNS " FROM vms ORDER BY created_at, id", err);
    if (r < 0)
        return r;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (count == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            smolvm_vm_row **nrows = realloc(rows, ncap * sizeof(*rows));

            if (!nrows) {
                smolvm_vm_rows_free(rows, count);
                return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
            }
            rows = nrows;
            cap = ncap;
        }
        r = row_from_stmt(st, &rows[count], err);
        if (r < 0) {
            smolvm_vm_rows_free(rows, count);
            return r;
        }
        count++;
    }
    if (rc != SQLITE_DONE) {
        smolvm_vm_rows_free(rows, count);
        return store_fail(s, rc, "list vms", err);
    }
    *out = rows;
    *n = count;
    return 0;
}

/* Run a one-row UPDATE/DELETE on a VM: SMOLVM_ENOENT when the VM does not exist. */
static int step_vm_change(smolvm_store *s, sqlite3_stmt *st, const char *id, const char *what,
                          smolvm_error **err)
{
    int rc = sqlite3_step(st);

    if (rc != SQLITE_DONE)
        return store_fail(s, rc, what, err);
    if (sqlite3_changes(s->db) == 0)
        return smolvm_err(err, SMOLVM_ENOENT, "no vm '%s'", id);
    return 0;
}

int smolvm_store_vm_set_status(smolvm_store *s, const char *id, const char *status,
                               const char *reason, smolvm_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int r;

    r = check_id(id, err);
    if (r < 0)
        return r;
    if (!status_valid(status))
        return smolvm_err(err, SMOLVM_EINVAL, "invalid vm status '%.40s'", status ? status : "");
    r = prep(s, &st, "UPDATE vms SET status = ?, reason = ?, updated_at = ? WHERE id = ?", err);
    if (r < 0)
        return r;
    (void)bind_text(st, 1, status);
    (void)bind_text_capped(st, 2, reason);
    (void)sqlite3_bind_int64(st, 3, smolvm_wall_ms());
    (void)bind_text(st, 4, id);
    return step_vm_change(s, st, id, "update vm status", err);
}

int smolvm_store_vm_set_pid(smolvm_store *s, const char *id, int64_t pid, uint64_t pid_start,
                            smolvm_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int r;

    r = check_id(id, err);
    if (r < 0)
        return r;
    if (pid < 0 || pid > INT32_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "invalid pid '%lld'", (long long)pid);
    r = prep(s, &st, "UPDATE vms SET pid = ?, pid_start = ?, updated_at = ? WHERE id = ?", err);
    if (r < 0)
        return r;
    (void)sqlite3_bind_int64(st, 1, pid);
    (void)sqlite3_bind_int64(st, 2, pid ? (int64_t)pid_start : 0);
    (void)sqlite3_bind_int64(st, 3, smolvm_wall_ms());
    (void)bind_text(st, 4, id);
    return step_vm_change(s, st, id, "update vm pid", err);
}

int smolvm_store_vm_delete(smolvm_store *s, const char *id, smolvm_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int r;

    r = check_id(id, err);
    if (r < 0)
        return r;
    /* One statement, one transaction: ON DELETE CASCADE removes leases and ports. */
    r = prep(s, &st, "DELETE FROM vms WHERE id = ?", err);
    if (r < 0)
        return r;
    (void)bind_text(st, 1, id);
    return step_vm_change(s, st, id, "delete vm", err);
}

/* ---------------------------------------------------------------- IP leases */

/* "a.b.c.d/p", p in 8..30, no host bits: network address and prefix. */
static int parse_cidr(const char *cidr, uint32_t *net, int *prefix, smolvm_error **err)
{
    char addr[INET_ADDRSTRLEN], *end;
    const char *slash;
    struct in_addr in;
    uint32_t mask;
    long p;

    if (!cidr)
        return smolvm_err(err, SMOLVM_EINVAL, "missing cidr");
    slash = strchr(cidr, '/');
    if (!slash || (size_t)(slash - cidr) >= sizeof(addr))
        return smolvm_err(err, SMOLVM_EINVAL, "invalid cidr '%.64s' (expected a.b.c.d/prefix)",
                          cidr);
    memcpy(addr, cidr, (size_t)(slash - cidr));
    addr[slash - cidr] = '\0';
    if (inet_pton(AF_INET, addr, &in) != 1)
        return smolvm_err(err, SMOLVM_EINVAL, "invalid cidr '%.64s' (expected a.b.c.d/prefix)",
                          cidr);
    errno = 0;
    p = strtol(slash + 1, &end, 10);
    if (errno || end == slash + 1 || *end || p < 8 || p > 30)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "invalid cidr '%.64s' (the prefix length must be 8 to 30)", cidr);
    mask = ~(uint32_t)0 << (32 - p);
    *net = ntohl(in.s_addr);
    if (*net & ~mask)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "invalid cidr '%.64s' (host bits are set; the network is "
                          "'%u.%u.%u.%u/%ld')",
                          cidr, (*net & mask) >> 24, (*net & mask) >> 16 & 255,
                          (*net & mask) >> 8 & 255, *net & mask & 255, p);
    *prefix = (int)p;
    return 0;
}

static void format_ip(uint32_t ip, char out[16])
{
    (void)snprintf(out, 16, "%u.%u.%u.%u", ip >> 24, ip >> 16 & 255, ip >> 8 & 255, ip & 255);
}

/* The lease a VM holds in cidr, if any: 1 found, 0 none. */
static int lease_of(smolvm_store *s, const char *vm_id, const char *cidr, char out[16],
                    smolvm_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int rc, r;

    r = prep(s, &st, "SELECT ip FROM ip_leases WHERE vm_id = ? AND cidr = ? ORDER BY ip_num", err);
    if (r < 0)
        return r;
    (void)bind_text(st, 1, vm_id);
    (void)bind_text(st, 2, cidr);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return 0;
    if (rc != SQLITE_ROW)
        return store_fail(s, rc, "read ip lease", err);
    (void)snprintf(out, 16, "%s", (const char *)sqlite3_column_text(st, 0));
    return 1;
}

int smolvm_store_lease_ip(smolvm_store *s, const char *vm_id, const char *cidr, char out[16],
                          smolvm_error **err)
{
    _cleanup_txn_ smolvm_store *txn = NULL;
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    uint32_t net = 0, first, last, ip;
    char text[16];
    int prefix = 0, rc, r;

    r = check_id(vm_id, err);
    if (r == 0)
        r = parse_cidr(cidr, &net, &prefix, err);
    if (r < 0)
        return r;
    first = net + 2;                                      /* skip the network and .1 */
    last = net + (uint32_t)((1ull << (32 - prefix)) - 2); /* skip the broadcast */

    r = begin_immediate(s, err);
    if (r < 0)
        return r;
    txn = s;
    r = lease_of(s, vm_id, cidr, text, err);
    if (r < 0)
        return r;
    if (r == 0) {
        /* The lowest free address: `first` itself, else the first leased address in
         * range whose successor is free. Walks the ip_num index in order and stops at
         * the first gap. */
        r = prep(s, &st,
                 "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM ip_leases WHERE ip_num = ?1)"
                 " THEN ?1 ELSE (SELECT l.ip_num + 1 FROM ip_leases l"
                 "  WHERE l.ip_num >= ?1 AND l.ip_num < ?2 AND NOT EXISTS"
                 "   (SELECT 1 FROM ip_leases m WHERE m.ip_num = l.ip_num + 1)"
                 "  ORDER BY l.ip_num LIMIT 1) END",
                 err);
        if (r < 0)
            return r;
        (void)sqlite3_bind_int64(st, 1, first);
        (void)sqlite3_bind_int64(st, 2, last);
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW)
            return store_fail(s, rc, "find a free ip", err);
        if (sqlite3_column_type(st, 0) == SQLITE_NULL)
            return smolvm_err(err, SMOLVM_ENOSPC, "no free address left in '%s'", cidr);
        ip = (uint32_t)sqlite3_column_int64(st, 0);
        (void)sqlite3_finalize(TAKE_PTR(st));
        format_ip(ip, text);

        r = prep(s, &st, "INSERT INTO ip_leases (ip, ip_num, cidr, vm_id) VALUES (?, ?, ?, ?)",
                 err);
        if (r < 0)
            return r;
        (void)bind_text(st, 1, text);
        (void)sqlite3_bind_int64(st, 2, ip);
        (void)bind_text(st, 3, cidr);
        (void)bind_text(st, 4, vm_id);
        rc = sqlite3_step(st);
        if (rc == SQLITE_CONSTRAINT_FOREIGNKEY)
            return smolvm_err(err, SMOLVM_ENOENT, "no vm '%s'", vm_id);
        if (rc != SQLITE_DONE)
            return store_fail(s, rc, "insert ip lease", err);
    }
    r = commit(s, err);
    if (r < 0)
        return r;
    txn = NULL;
    memcpy(out, text, sizeof(text));
    return 0;
}

static int delete_by_vm(smolvm_store *s, const char *sql, const char *vm_id, const char *what,
                        smolvm_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int rc, r;

    r = check_id(vm_id, err);
    if (r == 0)
        r = prep(s, &st, sql, err);
    if (r < 0)
        return r;
    (void)bind_text(st, 1, vm_id);
    rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        return store_fail(s, rc, what, err);
    return 0;
}

int smolvm_store_release_ips(smolvm_store *s, const char *vm_id, smolvm_error **err)
{
    return delete_by_vm(s, "DELETE FROM ip_leases WHERE vm_id = ?", vm_id, "release ip leases",
                        err);
}

/* ---------------------------------------------------------------- ports */

static int check_port_args(const char *vm_id, const char *kind, const char *host_addr,
                           int guest_port, const char *proto, smolvm_error **err)
{
    int r = check_id(vm_id, err);

    if (r < 0)
        return r;
    if (!kind || (strcmp(kind, "ssh") != 0 && strcmp(kind, "forward") != 0))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "invalid port kind '%.40s' (expected 'ssh' or 'forward')",
                          kind ? kind : "");
    if (!host_addr || !*host_addr || strlen(host_addr) >= INET6_ADDRSTRLEN)
        return smolvm_err(err, SMOLVM_EINVAL, "invalid host address '%.64s'",
                          host_addr ? host_addr : "");
    if (guest_port < 0 || guest_port > 65535)
        return smolvm_err(err, SMOLVM_EINVAL, "invalid guest port '%d' (expected 0..65535)",
                          guest_port);
    if (!proto || (strcmp(proto, "tcp") != 0 && strcmp(proto, "udp") != 0))
        return smolvm_err(err, SMOLVM_EINVAL, "invalid protocol '%.40s' (expected 'tcp' or 'udp')",
                          proto ? proto : "");
    return 0;
}

static int insert_port(smolvm_store *s, const char *vm_id, const char *kind, const char *host_addr,
                       int host_port, int guest_port, const char *proto, smolvm_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int rc, r;

    r = prep(s, &st,
             "INSERT INTO ports (host_address, host_port, proto, vm_id, guest_port, kind) "
             "VALUES (?, ?, ?, ?, ?, ?)",
             err);
    if (r < 0)
        return r;
    (void)bind_text(st, 1, host_addr);
    (void)sqlite3_bind_int(st, 2, host_port);
    (void)bind_text(st, 3, proto);
    (void)bind_text(st, 4, vm_id);
    (void)sqlite3_bind_int(st, 5, guest_port);
    (void)bind_text(st, 6, kind);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return 0;
    if (rc == SQLITE_CONSTRAINT_UNIQUE)
        return smolvm_err(err, SMOLVM_EEXIST, "host port '%s:%d/%s' is already in use", host_addr,
                          host_port, proto);
    if (rc == SQLITE_CONSTRAINT_FOREIGNKEY)
        return smolvm_err(err, SMOLVM_ENOENT, "no vm '%s'", vm_id);
    return store_fail(s, rc, "insert port", err);
}

int smolvm_store_port_add(smolvm_store *s, const char *vm_id, const char *kind,
                          const char *host_addr, int host_port, int guest_port, const char *proto,
                          smolvm_error **err)
{
    _cleanup_txn_ smolvm_store *txn = NULL;
    int r;

    r = check_port_args(vm_id, kind, host_addr, guest_port, proto, err);
    if (r < 0)
        return r;
    if (host_port < 1 || host_port > 65535)
        return smolvm_err(err, SMOLVM_EINVAL, "invalid host port '%d' (expected 1..65535)",
                          host_port);
    r = begin_immediate(s, err);
    if (r < 0)
        return r;
    txn = s;
    r = insert_port(s, vm_id, kind, host_addr, host_port, guest_port, proto, err);
    if (r == 0)
        r = commit(s, err);
    if (r < 0)
        return r;
    txn = NULL;
    return 0;
}

int smolvm_store_port_alloc(smolvm_store *s, const char *vm_id, const char *kind,
                            const char *host_addr, int lo, int hi, int guest_port,
                            const char *proto, int (*usable)(int port, void *payload),
                            void *payload, int *out_port, smolvm_error **err)
{
    _cleanup_txn_ smolvm_store *txn = NULL;
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    uint8_t taken[65536 / 8] = {0};
    int port = 0, rc, r;

    r = check_port_args(vm_id, kind, host_addr, guest_port, proto, err);
    if (r < 0)
        return r;
    if (lo < 1 || hi > 65535 || lo > hi)
        return smolvm_err(err, SMOLVM_EINVAL, "invalid host port range '%d-%d'", lo, hi);

    r = begin_immediate(s, err);
    if (r < 0)
        return r;
    txn = s;
    r = prep(s, &st,
             "SELECT host_port FROM ports WHERE host_address = ? AND proto = ?"
             " AND host_port BETWEEN ? AND ?",
             err);
    if (r < 0)
        return r;
    (void)bind_text(st, 1, host_addr);
    (void)bind_text(st, 2, proto);
    (void)sqlite3_bind_int(st, 3, lo);
    (void)sqlite3_bind_int(st, 4, hi);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int p = sqlite3_column_int(st, 0);

        taken[p / 8] |= (uint8_t)(1u << (p % 8));
    }
    if (rc != SQLITE_DONE)
        return store_fail(s, rc, "read ports", err);
    /* usable() runs under the write lock: other allocators wait for it. */
    for (int p = lo; p <= hi && !port; p++)
        if (!(taken[p / 8] & (1u << (p % 8))) && (!usable || usable(p, payload)))
            port = p;
    if (!port)
        return smolvm_err(err, SMOLVM_ENOSPC, "no free host port in '%d-%d' on '%s'", lo, hi,
                          host_addr);
    r = insert_port(s, vm_id, kind, host_addr, port, guest_port, proto, err);
    if (r == 0)
        r = commit(s, err);
    if (r < 0)
        return r;
    txn = NULL;
    *out_port = port;
    return 0;
}

int smolvm_store_port_remove(smolvm_store *s, const char *vm_id, const char *host_addr,
                             int host_port, const char *proto, smolvm_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int rc, r;

    r = check_id(vm_id, err);
    if (r == 0)
        r = prep(s, &st,
                 "DELETE FROM ports WHERE vm_id = ? AND host_address = ? AND host_port = ?"
                 " AND proto = ?",
                 err);
    if (r < 0)
        return r;
    (void)bind_text(st, 1, vm_id);
    (void)bind_text(st, 2, host_addr);
    (void)sqlite3_bind_int(st, 3, host_port);
    (void)bind_text(st, 4, proto);
    rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        return store_fail(s, rc, "remove port", err);
    if (sqlite3_changes(s->db) == 0)
        return smolvm_err(err, SMOLVM_ENOENT, "vm '%s' has no host port '%s:%d/%s'", vm_id,
                          host_addr ? host_addr : "", host_port, proto ? proto : "");
    return 0;
}

int smolvm_store_port_get(smolvm_store *s, const char *vm_id, const char *kind, int *out_port,
                          smolvm_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int rc, r;

    r = check_id(vm_id, err);
    if (r == 0)
        r = prep(s, &st,
                 "SELECT host_port FROM ports WHERE vm_id = ? AND kind = ? ORDER BY rowid LIMIT 1",
                 err);
    if (r < 0)
        return r;
    (void)bind_text(st, 1, vm_id);
    (void)bind_text(st, 2, kind);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return smolvm_err(err, SMOLVM_ENOENT, "vm '%s' has no '%s' port", vm_id, kind ? kind : "");
    if (rc != SQLITE_ROW)
        return store_fail(s, rc, "read port", err);
    *out_port = sqlite3_column_int(st, 0);
    return 0;
}

int smolvm_store_release_ports(smolvm_store *s, const char *vm_id, smolvm_error **err)
{
    return delete_by_vm(s, "DELETE FROM ports WHERE vm_id = ?", vm_id, "release ports", err);
}

/* ---------------------------------------------------------------- events */

int smolvm_store_event(smolvm_store *s, const char *vm_id, const char *kind, const char *detail,
                       smolvm_error **err)
{
    _cleanup_txn_ smolvm_store *txn = NULL;
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int rc, r;

    if (!kind || !*kind || strlen(kind) > 64)
        return smolvm_err(err, SMOLVM_EINVAL, "invalid event kind '%.64s'", kind ? kind : "");
    r = begin_immediate(s, err);
    if (r < 0)
        return r;
    txn = s;
    r = prep(s, &st, "INSERT INTO events (at, vm_id, kind, detail) VALUES (?, ?, ?, ?)", err);
    if (r < 0)
        return r;
    (void)sqlite3_bind_int64(st, 1, smolvm_wall_ms());
    (void)bind_text(st, 2, vm_id);
    (void)bind_text(st, 3, kind);
    (void)bind_text_capped(st, 4, detail);
    rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        return store_fail(s, rc, "append event", err);
    (void)sqlite3_finalize(TAKE_PTR(st));
    /* Bounded log: the newest STORE_EVENTS_KEEP rows stay. */
    r = prep(s, &st, "DELETE FROM events WHERE id <= ? - ?", err);
    if (r < 0)
        return r;
    (void)sqlite3_bind_int64(st, 1, sqlite3_last_insert_rowid(s->db));
    (void)sqlite3_bind_int(st, 2, STORE_EVENTS_KEEP);
    rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        return store_fail(s, rc, "trim events", err);
    r = commit(s, err);
    if (r < 0)
        return r;
    txn = NULL;
    return 0;
}

/* ---------------------------------------------------------------- JSON */

#define _cleanup_json_ _cleanup_(json_decrefp) /* from jansson.h */

/* Steal v into obj[key]; false on failure (v is released either way). */
static int jset(json_t *obj, const char *key, json_t *v)
{
    return v && json_object_set_new(obj, key, v) == 0;
}

static json_t *jstr(const char *v)
{
    return v ? json_string(v) : json_null();
}

static json_t *jcol(sqlite3_stmt *st, int i)
{
    if (sqlite3_column_type(st, i) == SQLITE_INTEGER)
        return json_integer(sqlite3_column_int64(st, i));
    return jstr((const char *)sqlite3_column_text(st, i));
}

/* Rows of a query as objects, one key per column (named by the column). */
static int rows_json(smolvm_store *s, const char *sql, const char *vm_id, json_t **out,
                     smolvm_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    _cleanup_json_ json_t *arr = json_array();
    int rc, r;

    if (!arr)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    r = prep(s, &st, sql, err);
    if (r < 0)
        return r;
    if (vm_id)
        (void)bind_text(st, 1, vm_id);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *o = json_object();

        if (!o || json_array_append_new(arr, o) < 0)
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        for (int i = 0; i < sqlite3_column_count(st); i++)
            if (!jset(o, sqlite3_column_name(st, i), jcol(st, i)))
                return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    if (rc != SQLITE_DONE)
        return store_fail(s, rc, "read", err);
    *out = TAKE_PTR(arr);
    return 0;
}

static int vm_json(smolvm_store *s, const smolvm_vm_row *row, json_t **out, smolvm_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    _cleanup_json_ json_t *o = json_object();
    json_t *config, *ports = NULL;
    int rc, r, ok;

    if (!o)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    config = row->config_json ? json_loads(row->config_json, 0, NULL) : NULL;
    ok = jset(o, "id", json_string(row->id)) && jset(o, "status", jstr(row->status)) &&
         jset(o, "backend", jstr(row->backend)) &&
         jset(o, "config", config ? config : json_object()) && jset(o, "dir", jstr(row->dir)) &&
         jset(o, "reason", jstr(row->reason)) && jset(o, "pid", json_integer(row->pid)) &&
         jset(o, "created_at", json_integer(row->created_at)) &&
         jset(o, "updated_at", json_integer(row->updated_at));
    if (!ok)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");

    r = prep(s, &st, "SELECT ip FROM ip_leases WHERE vm_id = ? ORDER BY ip_num LIMIT 1", err);
    if (r < 0)
        return r;
    (void)bind_text(st, 1, row->id);
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return store_fail(s, rc, "read ip lease", err);
    if (!jset(o, "ip", rc == SQLITE_ROW ? jcol(st, 0) : json_null()))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");

    r = rows_json(s,
                  "SELECT host_address, host_port, guest_port, proto, kind FROM ports"
                  " WHERE vm_id = ? ORDER BY host_address, host_port, proto",
                  row->id, &ports, err);
    if (r < 0)
        return r;
    if (!jset(o, "ports", ports))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    *out = TAKE_PTR(o);
    return 0;
}

static int dump(json_t *j, char **out, smolvm_error **err)
{
    char *text = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);

    if (!text)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    *out = text;
    return 0;
}

/* A read transaction, so the JSON is one consistent snapshot. Ends with rollbackp. */
#define READ_SNAPSHOT(s, err)                                                                      \
    _cleanup_txn_ smolvm_store *txn_ = NULL;                                                       \
    do {                                                                                           \
        int r_ = begin_read(s, err);                                                               \
        if (r_ < 0)                                                                                \
            return r_;                                                                             \
        txn_ = (s);                                                                                \
    } while (0)

int smolvm_store_list_json(smolvm_store *s, char **out, smolvm_error **err)
{
    _cleanup_json_ json_t *arr = json_array();
    smolvm_vm_row **rows = NULL;
    size_t n = 0;
    int r;

    if (!arr)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    READ_SNAPSHOT(s, err);
    r = smolvm_store_vm_list(s, &rows, &n, err);
    if (r < 0)
        return r;
    for (size_t i = 0; i < n && r == 0; i++) {
        json_t *o = NULL;

        r = vm_json(s, rows[i], &o, err);
        if (r == 0 && json_array_append_new(arr, o) < 0)
            r = smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    smolvm_vm_rows_free(rows, n);
    if (r < 0)
        return r;
    return dump(arr, out, err);
}

int smolvm_store_get_json(smolvm_store *s, const char *id, char **out, smolvm_error **err)
{
    _cleanup_(vm_row_freep) smolvm_vm_row *row = NULL;
    _cleanup_json_ json_t *o = NULL;
    int r;

    READ_SNAPSHOT(s, err);
    r = smolvm_store_vm_get(s, id, &row, err);
    if (r == 0)
        r = vm_json(s, row, &o, err);
    if (r < 0)
        return r;
    return dump(o, out, err);
}

int smolvm_store_leases_json(smolvm_store *s, char **out, smolvm_error **err)
{
    _cleanup_json_ json_t *arr = NULL;
    int r;

    r = rows_json(s, "SELECT ip, cidr, vm_id FROM ip_leases ORDER BY ip_num", NULL, &arr, err);
    if (r < 0)
        return r;
    return dump(arr, out, err);
}

int smolvm_store_forwards_json(smolvm_store *s, char **out, smolvm_error **err)
{
    _cleanup_json_ json_t *arr = NULL;
    int r;

    r = rows_json(s,
                  "SELECT vm_id, host_address, host_port, guest_port, proto, kind FROM ports"
                  " ORDER BY host_address, host_port, proto",
                  NULL, &arr, err);
    if (r < 0)
        return r;
    return dump(arr, out, err);
}
