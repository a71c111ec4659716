/* SPDX-License-Identifier: MIT */
/*
 * The state store's allocations: IP leases and host ports. Each runs in one
 * BEGIN IMMEDIATE transaction and relies on UNIQUE constraints, so concurrent
 * processes never hand out the same value.
 */
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <string.h>

#include <sqlite3.h>

#include "error.h"
#include "store-internal.h"

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

int smolvm_store_forward_add(smolvm_store *s, const char *vm_id, const char *host_addr,
                             int host_port, int guest_port, size_t max, smolvm_error **err)
{
    _cleanup_txn_ smolvm_store *txn = NULL;
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    int64_t n;
    int rc, r;

    r = check_port_args(vm_id, "forward", host_addr, guest_port, "tcp", err);
    if (r < 0)
        return r;
    if (host_port < 1 || host_port > 65535)
        return smolvm_err(err, SMOLVM_EINVAL, "invalid host port '%d' (expected 1..65535)",
                          host_port);
    /* Counted and added in one IMMEDIATE transaction: two processes adding at once
     * cannot both pass the limit. */
    if ((r = begin_immediate(s, err)) < 0)
        return r;
    txn = s;
    if ((r = prep(s, &st, "SELECT count(*) FROM ports WHERE vm_id = ? AND kind = 'forward'", err)) <
        0)
        return r;
    (void)bind_text(st, 1, vm_id);
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
        return store_fail(s, rc, "count forwards", err);
    n = sqlite3_column_int64(st, 0);
    if (n >= (int64_t)max)
        return smolvm_err(err, SMOLVM_ENOSPC, "vm '%s' has %lld forwards (at most %zu)", vm_id,
                          (long long)n, max);
    if ((r = insert_port(s, vm_id, "forward", host_addr, host_port, guest_port, "tcp", err)) < 0 ||
        (r = commit(s, err)) < 0)
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

static const char *const port_kind_names[_SMOLVM_PORT_KIND_MAX] = {
    [SMOLVM_PORT_SSH] = "ssh",
    [SMOLVM_PORT_FORWARD] = "forward",
};

const char *smolvm_port_kind_to_string(smolvm_port_kind k)
{
    return k >= 0 && k < _SMOLVM_PORT_KIND_MAX ? port_kind_names[k] : NULL;
}

int smolvm_store_ports_list(smolvm_port_row **out, size_t *n_out, smolvm_store *s,
                            const char *vm_id, smolvm_error **err)
{
    _cleanup_stmt_ sqlite3_stmt *st = NULL;
    _cleanup_free_ smolvm_port_row *rows = NULL;
    size_t n = 0, cap = 0;
    int rc, r;

    r = check_id(vm_id, err);
    if (r == 0)
        r = prep(s, &st,
                 "SELECT kind, host_address, host_port, guest_port, proto FROM ports"
                 " WHERE vm_id = ? ORDER BY rowid",
                 err);
    if (r < 0)
        return r;
    (void)bind_text(st, 1, vm_id);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *kind = (const char *)sqlite3_column_text(st, 0);
        const char *addr = (const char *)sqlite3_column_text(st, 1);
        const char *proto = (const char *)sqlite3_column_text(st, 4);
        smolvm_port_row *p;

        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            smolvm_port_row *nr = realloc(rows, ncap * sizeof(*nr));

            if (!nr)
                return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
            rows = nr;
            cap = ncap;
        }
        p = &rows[n];
        memset(p, 0, sizeof(*p));
        p->kind = kind && strcmp(kind, "ssh") == 0 ? SMOLVM_PORT_SSH : SMOLVM_PORT_FORWARD;
        snprintf(p->host_address, sizeof(p->host_address), "%s", addr ? addr : "");
        p->host_port = sqlite3_column_int(st, 2);
        p->guest_port = sqlite3_column_int(st, 3);
        snprintf(p->proto, sizeof(p->proto), "%s", proto ? proto : "");
        n++;
    }
    if (rc != SQLITE_DONE)
        return store_fail(s, rc, "read ports", err);
    *out = TAKE_PTR(rows);
    *n_out = n;
    return 0;
}
