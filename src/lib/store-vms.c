/* SPDX-License-Identifier: MIT */
/* The state store's VM rows (insert, read, status, pid, delete) and its event log. */
#include "util.h"

#include <string.h>

#include <jansson.h>
#include <sqlite3.h>

#include "error.h"
#include "store-internal.h"

#define STORE_CONFIG_MAX (1u << 20) /* config JSON: rejected beyond */
#define STORE_EVENTS_KEEP 10000     /* the event log keeps the newest rows */
#define STORE_ID_ATTEMPTS 32

/* ---------------------------------------------------------------- VMs */

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

const char *smolvm_vm_status_canonical(const char *status)
{
    static const char *const known[] = {"created", "starting", "running",    "paused",   "stopping",
                                        "stopped", "error",    "suspending", "suspended"};

    for (size_t i = 0; status && i < SMOLVM_ARRAY_SIZE(known); i++)
        if (strcmp(status, known[i]) == 0)
            return known[i];
    return NULL;
}

static int status_valid(const char *status)
{
    return smolvm_vm_status_canonical(status) != NULL;
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

static int insert_vm(smolvm_store *s, const smolvm_vm_row *row, const char *config, int64_t now,
                     smolvm_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int rc, r;

    r = prep(s, &st,
             "INSERT INTO vms (id, status, backend, config, dir, reason, pid, pid_start, "
             "created_at, updated_at, owner_pid, owner_start, expires_at) "
             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    (void)sqlite3_bind_int64(st, 11, row->owner_pid);
    (void)sqlite3_bind_int64(st, 12, (int64_t)row->owner_start);
    (void)sqlite3_bind_int64(st, 13, row->expires_at);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return 0;
    if (rc == SQLITE_CONSTRAINT_PRIMARYKEY)
        return smolvm_err(err, SMOLVM_EEXIST, "vm '%s' already exists", row->id);
    return store_fail(s, rc, "insert vm", err);
}

/* Rows and their guest memory ("memory" of each config), inside the caller's
 * transaction when there is one. */
static int usage(smolvm_store *s, unsigned *vms, uint64_t *memory_mib, smolvm_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int rc, r;

    r = prep(s, &st,
             "SELECT count(*), COALESCE(SUM(CAST(json_extract(config, '$.memory') AS INTEGER)), "
             "0) FROM vms",
             err);
    if (r < 0)
        return r;
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
        return store_fail(s, rc, "count vms", err);
    *vms = (unsigned)sqlite3_column_int64(st, 0);
    *memory_mib = (uint64_t)sqlite3_column_int64(st, 1);
    return 0;
}

int smolvm_store_usage(smolvm_store *s, unsigned *vms, uint64_t *memory_mib, smolvm_error **err)
{
    return usage(s, vms, memory_mib, err);
}

static int check_quota(smolvm_store *s, const smolvm_store_quota *q, uint64_t want_mib,
                       smolvm_error **err)
{
    uint64_t mib = 0;
    unsigned vms = 0;
    int r;

    if (!q || (!q->max_vms && !q->max_memory_mib))
        return 0;
    if ((r = usage(s, &vms, &mib, err)) < 0)
        return r;
    if (q->max_vms && vms >= q->max_vms) {
        smolvm_err(err, SMOLVM_ENOSPC, "quota 'max_vms' reached: %u of %u vms exist", vms,
                   q->max_vms);
        return smolvm_err_hint(err, "delete a vm, or raise max_vms ($SMOLVM_MAX_VMS)");
    }
    if (q->max_memory_mib && mib + want_mib > q->max_memory_mib) {
        smolvm_err(err, SMOLVM_ENOSPC,
                   "quota 'max_memory_mib' reached: %llu MiB more would make %llu of %llu MiB "
                   "(%u vms hold %llu MiB)",
                   (unsigned long long)want_mib, (unsigned long long)(mib + want_mib),
                   (unsigned long long)q->max_memory_mib, vms, (unsigned long long)mib);
        return smolvm_err_hint(err, "delete a vm, ask for less memory, or raise max_memory_mib "
                                    "($SMOLVM_MAX_MEMORY_MIB)");
    }
    return 0;
}

int smolvm_store_vm_insert(smolvm_store *s, smolvm_vm_row *row, smolvm_error **err)
{
    return smolvm_store_vm_insert_quota(s, row, NULL, err);
}

int smolvm_store_vm_insert_quota(smolvm_store *s, smolvm_vm_row *row,
                                 const smolvm_store_quota *quota, smolvm_error **err)
{
    _cleanup_txn_ smolvm_store *txn = NULL;
    _cleanup_free_ char *generated = NULL;
    const char *config = row->config_json ? row->config_json : "{}";
    int64_t now = smolvm_wall_ms();
    json_int_t want_mib = 0;
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
    want_mib = json_integer_value(json_object_get(parsed, "memory"));
    json_decref(parsed);
    if (!r)
        return smolvm_err(err, SMOLVM_EINVAL, "vm config is not a JSON object");

    r = begin_immediate(s, err);
    if (r < 0)
        return r;
    txn = s;
    /* Inside the IMMEDIATE transaction: no other writer between the count and the
     * insert. */
    if ((r = check_quota(s, quota, want_mib > 0 ? (uint64_t)want_mib : 0, err)) < 0)
        return r;
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
    "id, status, backend, config, dir, reason, pid, pid_start, created_at, updated_at, sv_pid, "   \
    "sv_start, owner_pid, owner_start, expires_at"

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
    row->sv_pid = sqlite3_column_int64(st, 10);
    row->sv_start = (uint64_t)sqlite3_column_int64(st, 11);
    row->owner_pid = sqlite3_column_int64(st, 12);
    row->owner_start = (uint64_t)sqlite3_column_int64(st, 13);
    row->expires_at = sqlite3_column_int64(st, 14);
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

/* UPDATE vms SET <a> = ?, <b> = ?, updated_at = now WHERE id = ? */
static int set_pair(smolvm_store *s, const char *id, const char *sql, int64_t a, int64_t b,
                    const char *what, smolvm_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int r;

    if ((r = check_id(id, err)) < 0 || (r = prep(s, &st, sql, err)) < 0)
        return r;
    (void)sqlite3_bind_int64(st, 1, a);
    (void)sqlite3_bind_int64(st, 2, b);
    (void)sqlite3_bind_int64(st, 3, smolvm_wall_ms());
    (void)bind_text(st, 4, id);
    return step_vm_change(s, st, id, what, err);
}

int smolvm_store_vm_set_supervisor(smolvm_store *s, const char *id, int64_t pid, uint64_t pid_start,
                                   smolvm_error **err)
{
    if (pid < 0 || pid > INT32_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "invalid pid '%lld'", (long long)pid);
    return set_pair(s, id, "UPDATE vms SET sv_pid = ?, sv_start = ?, updated_at = ? WHERE id = ?",
                    pid, pid ? (int64_t)pid_start : 0, "update vm supervisor", err);
}

int smolvm_store_vm_set_lifetime(smolvm_store *s, const char *id, int64_t owner_pid,
                                 uint64_t owner_start, int64_t expires_at, smolvm_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int r;

    if (owner_pid < 0 || owner_pid > INT32_MAX || expires_at < 0)
        return smolvm_err(err, SMOLVM_EINVAL, "invalid owner or deadline");
    if ((r = check_id(id, err)) < 0 ||
        (r = prep(s, &st,
                  "UPDATE vms SET owner_pid = ?, owner_start = ?, expires_at = ?, updated_at = ?"
                  " WHERE id = ?",
                  err)) < 0)
        return r;
    (void)sqlite3_bind_int64(st, 1, owner_pid);
    (void)sqlite3_bind_int64(st, 2, owner_pid ? (int64_t)owner_start : 0);
    (void)sqlite3_bind_int64(st, 3, expires_at);
    (void)sqlite3_bind_int64(st, 4, smolvm_wall_ms());
    (void)bind_text(st, 5, id);
    return step_vm_change(s, st, id, "update vm lifetime", err);
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

int smolvm_store_vm_set_config(smolvm_store *s, const char *id, const char *config_json,
                               smolvm_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int r;

    if ((r = check_id(id, err)) < 0)
        return r;
    if (!config_json || strlen(config_json) > STORE_CONFIG_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "config of vm '%s': missing or larger than %u bytes",
                          id, STORE_CONFIG_MAX);
    r = prep(s, &st, "UPDATE vms SET config = ?, updated_at = ? WHERE id = ?", err);
    if (r < 0)
        return r;
    (void)bind_text(st, 1, config_json);
    (void)sqlite3_bind_int64(st, 2, smolvm_wall_ms());
    (void)bind_text(st, 3, id);
    return step_vm_change(s, st, id, "update config", err);
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

static int valid_kind(const char *kind, smolvm_error **err)
{
    if (!kind || !*kind || strlen(kind) > 64)
        return smolvm_err(err, SMOLVM_EINVAL, "invalid event kind '%.64s'", kind ? kind : "");
    return 0;
}

int smolvm_store_events_append(smolvm_store *s, const char *vm_id, const char *kind,
                               const int64_t *at, const char *const *details, size_t n, size_t keep,
                               smolvm_error **err)
{
    _cleanup_txn_ smolvm_store *txn = NULL;
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int64_t now = smolvm_wall_ms();
    int rc, r;

    if ((r = check_id(vm_id, err)) < 0 || (r = valid_kind(kind, err)) < 0)
        return r;
    if (n == 0)
        return 0;
    if ((r = begin_immediate(s, err)) < 0)
        return r;
    txn = s;
    if ((r = prep(s, &st, "INSERT INTO events (at, vm_id, kind, detail) VALUES (?, ?, ?, ?)",
                  err)) < 0)
        return r;
    for (size_t i = 0; i < n; i++) {
        (void)sqlite3_reset(st);
        (void)sqlite3_bind_int64(st, 1, at && at[i] > 0 ? at[i] : now);
        (void)bind_text(st, 2, vm_id);
        (void)bind_text(st, 3, kind);
        (void)bind_text_capped(st, 4, details[i]);
        if ((rc = sqlite3_step(st)) != SQLITE_DONE)
            return store_fail(s, rc, "append events", err);
    }
    (void)sqlite3_finalize(TAKE_PTR(st));
    /* This VM's events of this kind: the newest `keep`; the whole log: the newest
     * STORE_EVENTS_KEEP. */
    if ((r = prep(s, &st,
                  "DELETE FROM events WHERE vm_id = ?1 AND kind = ?2 AND id <= (SELECT id FROM "
                  "events WHERE vm_id = ?1 AND kind = ?2 ORDER BY id DESC LIMIT 1 OFFSET ?3)",
                  err)) < 0)
        return r;
    (void)bind_text(st, 1, vm_id);
    (void)bind_text(st, 2, kind);
    (void)sqlite3_bind_int64(st, 3, (sqlite3_int64)keep);
    if ((rc = sqlite3_step(st)) != SQLITE_DONE)
        return store_fail(s, rc, "trim events", err);
    (void)sqlite3_finalize(TAKE_PTR(st));
    if ((r = prep(s, &st, "DELETE FROM events WHERE id <= ? - ?", err)) < 0)
        return r;
    (void)sqlite3_bind_int64(st, 1, sqlite3_last_insert_rowid(s->db));
    (void)sqlite3_bind_int(st, 2, STORE_EVENTS_KEEP);
    if ((rc = sqlite3_step(st)) != SQLITE_DONE)
        return store_fail(s, rc, "trim events", err);
    if ((r = commit(s, err)) < 0)
        return r;
    txn = NULL;
    return 0;
}

smolvm_event_row *smolvm_event_rows_free(smolvm_event_row *rows, size_t n)
{
    for (size_t i = 0; rows && i < n; i++) {
        free(rows[i].kind);
        free(rows[i].detail);
    }
    free(rows);
    return NULL;
}

int smolvm_store_events_list(smolvm_event_row **out, size_t *n, smolvm_store *s, const char *vm_id,
                             const char *kind, size_t limit, smolvm_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    smolvm_event_row *rows = NULL;
    size_t k = 0;
    int rc, r, oom = 0;

    if ((r = check_id(vm_id, err)) < 0 || (kind && (r = valid_kind(kind, err)) < 0))
        return r;
    if (!(rows = calloc(limit ? limit : 1, sizeof(*rows))))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    /* the newest `limit`, returned oldest first */
    r = prep(s, &st,
             "SELECT id, at, kind, detail FROM (SELECT id, at, kind, detail FROM events WHERE "
             "vm_id = ?1 AND (?2 IS NULL OR kind = ?2) ORDER BY id DESC LIMIT ?3) ORDER BY id",
             err);
    if (r < 0) {
        free(rows);
        return r;
    }
    (void)bind_text(st, 1, vm_id);
    (void)bind_text(st, 2, kind);
    (void)sqlite3_bind_int64(st, 3, (sqlite3_int64)limit);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && k < limit) {
        rows[k].id = sqlite3_column_int64(st, 0);
        rows[k].at = sqlite3_column_int64(st, 1);
        rows[k].kind = column_strdup(st, 2, &oom);
        rows[k].detail = column_strdup(st, 3, &oom);
        k++;
    }
    if (oom || (rc != SQLITE_DONE && rc != SQLITE_ROW)) {
        smolvm_event_rows_free(rows, k);
        return oom ? smolvm_err(err, SMOLVM_ENOMEM, "out of memory")
                   : store_fail(s, rc, "list events", err);
    }
    *out = rows;
    *n = k;
    return 0;
}
