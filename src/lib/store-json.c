/* SPDX-License-Identifier: MIT */
/* The state store's JSON views: VMs (with their IP and ports), leases, forwards. */
#include "util.h"

#include <jansson.h>
#include <sqlite3.h>

#include "error.h"
#include "store-internal.h"

/* ---------------------------------------------------------------- JSON */

static void vm_row_freep(smolvm_vm_row **row)
{
    smolvm_vm_row_free(*row);
}

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
         jset(o, "updated_at", json_integer(row->updated_at)) &&
         jset(o, "supervisor_pid", json_integer(row->sv_pid)) &&
         jset(o, "owner_pid", json_integer(row->owner_pid)) &&
         jset(o, "expires_at", row->expires_at ? json_integer(row->expires_at) : json_null());
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

int smolvm_store_list_json(char **out, smolvm_store *s, smolvm_error **err)
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

int smolvm_store_get_json(char **out, smolvm_store *s, const char *id, smolvm_error **err)
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

int smolvm_store_leases_json(char **out, smolvm_store *s, smolvm_error **err)
{
    _cleanup_json_ json_t *arr = NULL;
    int r;

    r = rows_json(s, "SELECT ip, cidr, vm_id FROM ip_leases ORDER BY ip_num", NULL, &arr, err);
    if (r < 0)
        return r;
    return dump(arr, out, err);
}

int smolvm_store_forwards_json(char **out, smolvm_store *s, smolvm_error **err)
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
