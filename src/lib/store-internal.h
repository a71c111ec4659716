/* SPDX-License-Identifier: MIT */
/*
 * Between the parts of the state store: store.c (opening, schema, migrations),
 * store-vms.c (VM rows, the event log), store-alloc.c (IP leases, host ports) and
 * store-json.c (JSON views). The handle and the statement helpers they all use.
 */
#ifndef SMOLVM_STORE_INTERNAL_H
#define SMOLVM_STORE_INTERNAL_H

#include "util.h"

#include <string.h>
#include <sys/types.h>

#include <sqlite3.h>

#include "error.h"
#include "store.h"

#define STORE_HINT "move it away or set SMOLVM_STATE_DIR"
#define STORE_TEXT_MAX 4096 /* reason, event detail: truncated beyond */

struct smolvm_store {
    sqlite3 *db;
    char *path;
    /* The file's identity, counted in store.c's table of files this process has open. */
    dev_t dev;
    ino_t ino;
    bool counted;
};

/* ---------------------------------------------------------------- helpers */

static inline void finalizep(sqlite3_stmt **st)
{
    if (*st)
        (void)sqlite3_finalize(*st);
}
#define _cleanup_stmt_ _cleanup_(finalizep)

static inline int is_busy(int rc)
{
    return (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED;
}

/* An SQLite failure as a one-line SMOLVM_EDB error naming the file. */
static inline int db_fail(sqlite3 *db, const char *path, int rc, const char *what,
                          smolvm_error **err)
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

static inline int store_fail(smolvm_store *s, int rc, const char *what, smolvm_error **err)
{
    return db_fail(s->db, s->path, rc, what, err);
}

static inline int prep(smolvm_store *s, sqlite3_stmt **st, const char *sql, smolvm_error **err)
{
    int rc = sqlite3_prepare_v2(s->db, sql, -1, st, NULL);

    if (rc != SQLITE_OK)
        return store_fail(s, rc, "prepare", err);
    return 0;
}

static inline int exec(smolvm_store *s, const char *sql, const char *what, smolvm_error **err)
{
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);

    if (rc != SQLITE_OK)
        return store_fail(s, rc, what, err);
    return 0;
}

/* Rolls back on every early return; set to NULL once committed. */
static inline void rollbackp(smolvm_store **s)
{
    if (*s && !sqlite3_get_autocommit((*s)->db))
        (void)sqlite3_exec((*s)->db, "ROLLBACK", NULL, NULL, NULL);
}
#define _cleanup_txn_ _cleanup_(rollbackp)

static inline int begin_immediate(smolvm_store *s, smolvm_error **err)
{
    return exec(s, "BEGIN IMMEDIATE", "begin transaction", err);
}

static inline int begin_read(smolvm_store *s, smolvm_error **err)
{
    return exec(s, "BEGIN", "begin transaction", err);
}

static inline int commit(smolvm_store *s, smolvm_error **err)
{
    return exec(s, "COMMIT", "commit", err);
}

static inline int bind_text(sqlite3_stmt *st, int i, const char *v)
{
    return v ? sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

/* Bind at most STORE_TEXT_MAX bytes of v, cut on a UTF-8 character boundary. */
static inline int bind_text_capped(sqlite3_stmt *st, int i, const char *v)
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

static inline int check_id(const char *id, smolvm_error **err)
{
    if (!smolvm_id_valid(id))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "invalid vm id '%.80s' (expected [a-z0-9][a-z0-9_-]{0,62})",
                          id ? id : "");
    return 0;
}

#endif
