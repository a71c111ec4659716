/* SPDX-License-Identifier: MIT */
/*
 * "smolvm.vm": a VM handle (smolvm_vm_*). Units are the C API's: milliseconds,
 * MiB, "KEY=value" env. The facade (lua/smolvm/vm.lua) turns Lua-style options
 * (seconds, tables) into these.
 *
 *   core.vm_create(opts) -> vm | nil, msg, code   (vm owned: see below)
 *   core.vm_create(opts, true) -> job             (job.c: created on a thread)
 *   core.vm_open(id)     -> vm | nil, msg, code   (vm not owned)
 *   vm:id() vm:status() vm:info()
 *   vm:start(timeout_ms) vm:stop(timeout_ms) vm:delete()         -> true | nil, msg, code
 *   vm:run(cmd, { timeout_ms=, env=, cwd=, stdin=, output_limit= }) -> result | nil, msg, code
 *   vm:upload(local, remote) vm:download(remote, local)
 *   vm:write_file(remote, data) vm:read_file(remote) -> data
 *   vm:forward(host_port, guest_port [, host_address]) vm:unforward(host_port)
 *   vm:spawn(cmd, { argv=, env=, cwd=, stdin=, pty_rows=, pty_cols=, timeout_ms=, keep= })
 *     -> proc                       (proc.c)
 *   vm:attach(pid) -> proc         vm:processes() -> { {pid=, cmd=, ...}, ... }
 *   vm:keep() vm:owned() vm:closed() vm:close()
 *   vm:job(op, ...) -> job          (job.c: a blocking call on a thread; VMs made by jobs)
 *   vm:set_egress(policy) -> true | nil, msg, code   (policy as in opts.egress)
 *   vm:events([kind]) -> { { time=, kind=, dst=, port=, protocol=, name=, detail= }, ... }
 *   core.egress_check(entry) -> true | nil, msg      (one allow-list entry)
 *
 * Ownership: a VM made by vm_create is "owned" by its handle. Closing an owned handle
 * (close(), __close, __gc, lua_close at exit) stops the VM (5 s) and deletes it, unless
 * keep() was called or it was deleted already. A handle from vm_open is never owned:
 * closing it only frees the handle. Errors while closing from __gc/__close are
 * swallowed; close() reports them.
 */
#include <limits.h>
#include <string.h>

#include "binding.h"

#define CLOSE_STOP_TIMEOUT_MS 5000

typedef smolvm_lua_vm lvm;

smolvm_lua_vm *smolvm_lua_check_vm(lua_State *L, int idx)
{
    lvm *u = luaL_checkudata(L, idx, SMOLVM_LUA_VM_MT);

    if (u->lent && smolvm_lua_job_take_back(u) < 0)
        luaL_error(L, "vm is busy: a call on it is still running");
    if (!u->vm)
        smolvm_lua_closed_error(L, "vm");
    return u;
}

static lvm *check_lvm(lua_State *L)
{
    return smolvm_lua_check_vm(L, 1);
}

static smolvm_vm *check_vm(lua_State *L)
{
    return check_lvm(L)->vm;
}

static int push_ok(lua_State *L)
{
    lua_pushboolean(L, 1);
    return 1;
}

static int check_ms(lua_State *L, int idx)
{
    lua_Integer ms = luaL_checkinteger(L, idx);

    luaL_argcheck(L, ms >= 0 && ms <= INT_MAX, idx, "timeout in ms out of range");
    return (int)ms;
}

/* A userdata that is a fresh VM handle: userdata first, then the handle. */
static lvm *new_lvm(lua_State *L)
{
    lvm *u = lua_newuserdata(L, sizeof(*u));

    memset(u, 0, sizeof(*u));
    luaL_setmetatable(L, SMOLVM_LUA_VM_MT);
    return u;
}

/* Free the handle, deleting the VM first if this handle owns it. Idempotent. The
 * first error is left in *err (may be NULL). */
static int close_lvm(lvm *u, smolvm_error **err)
{
    int r = 0;

    if (u->background || u->lent) {
        /* Never blocks: a job or a thread does what closing has to. */
        smolvm_lua_procs_close(u);
        smolvm_lua_job_close_vm(u);
        return 0;
    }
    if (!u->vm)
        return 0;
    if (u->owned) {
        const char *status = smolvm_vm_status(u->vm);

        if (strcmp(status, "running") == 0) {
            smolvm_error *e = NULL;

            (void)smolvm_vm_stop(u->vm, CLOSE_STOP_TIMEOUT_MS, &e);
            e = smolvm_error_free(e); /* delete stops harder if this failed */
        }
        if (strcmp(status, "deleted") != 0)
            r = smolvm_vm_delete(u->vm, err);
    }
    smolvm_lua_procs_close(u);
    u->vm = smolvm_vm_free(u->vm);
    smolvm_lua_ctx_unref(u->c);
    u->c = NULL;
    u->owned = 0;
    return r;
}

/* __gc and __close: never raise. */
static int l_vm_gc(lua_State *L)
{
    lvm *u = lua_touserdata(L, 1);

    if (u)
        (void)close_lvm(u, NULL);
    return 0;
}

/* vm:close() -> true | nil, msg, code (the handle is freed either way) */
static int l_vm_close(lua_State *L)
{
    lvm *u = luaL_checkudata(L, 1, SMOLVM_LUA_VM_MT);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (close_lvm(u, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    return push_ok(L);
}

/* ---------------------------------------------------------------- options */

/* The C library's name table is the only one: each enum's from_string. */
typedef int (*enum_parse)(const char *s);
static int parse_disk(const char *s)
{
    return smolvm_disk_mode_from_string(s);
}
static int parse_backend(const char *s)
{
    return smolvm_backend_from_string(s);
}
static int parse_accel(const char *s)
{
    return smolvm_accel_from_string(s);
}
static int parse_net(const char *s)
{
    return smolvm_net_mode_from_string(s);
}
static int parse_transport(const char *s)
{
    return smolvm_transport_from_string(s);
}

static int opt_enum(lua_State *L, int t, const char *field, enum_parse parse, int def)
{
    const char *s;
    int v;

    if (smolvm_getfield(L, t, field) == LUA_TNIL) {
        lua_pop(L, 1);
        return def;
    }
    s = lua_tostring(L, -1);
    v = s ? parse(s) : -1;
    if (v < 0)
        return luaL_error(L, "vm option '%s': invalid value '%s'", field, s ? s : "?");
    lua_pop(L, 1);
    return v;
}

static lua_Integer opt_int(lua_State *L, int t, const char *field, lua_Integer def, lua_Integer min,
                           lua_Integer max)
{
    lua_Integer v;

    if (smolvm_getfield(L, t, field) == LUA_TNIL) {
        lua_pop(L, 1);
        return def;
    }
    if (!lua_isinteger(L, -1))
        return luaL_error(L, "option '%s': expected integer, got %s", field, luaL_typename(L, -1));
    v = lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (v < min || v > max)
        return luaL_error(L, "option '%s': expected integer %d..%d", field, (int)min, (int)max);
    return v;
}

/* A string field, borrowed from table t (which must stay unchanged while used). */
static const char *opt_str(lua_State *L, int t, const char *field)
{
    const char *s = NULL;

    if (smolvm_getfield(L, t, field) != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "option '%s': expected string, got %s", field, luaL_typename(L, -1));
        s = lua_tostring(L, -1);
    }
    lua_pop(L, 1);
    return s;
}

/*
 * A field of table t holding { NAME = value } or { "NAME=value", ... } (env, labels) as a
 * NULL-terminated "NAME=value" array. The array and its strings are anchored on the
 * stack (two values pushed) until the caller pops them. NULL when absent.
 */
static const char *const *opt_pairs(lua_State *L, int t, const char *field)
{
    const char **env;
    int n = 0, i = 0;

    t = lua_absindex(L, t);
    if (smolvm_getfield(L, t, field) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_pushnil(L);
        lua_pushnil(L);
        return NULL;
    }
    if (!lua_istable(L, -1))
        luaL_error(L, "option '%s': expected table", field);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        n++;
        lua_pop(L, 1);
    }
    if (n > SMOLVM_ENV_MAX)
        luaL_error(L, "option '%s': at most %d entries", field, SMOLVM_ENV_MAX);
    lua_createtable(L, n, 0); /* anchor for the strings */
    env = lua_newuserdata(L, sizeof(*env) * (size_t)(n + 1));
    /* stack: env table, anchor, array */
    lua_pushnil(L);
    while (lua_next(L, -4)) {
        if (lua_type(L, -2) == LUA_TSTRING) {
            if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
                luaL_error(L, "option '%s.%s': expected string or number", field,
                           lua_tostring(L, -2));
            lua_pushvalue(L, -2);
            lua_pushliteral(L, "=");
            lua_pushvalue(L, -3);
            lua_concat(L, 3);
        } else if (lua_type(L, -1) == LUA_TSTRING && strchr(lua_tostring(L, -1), '=')) {
            lua_pushvalue(L, -1);
        } else {
            luaL_error(L, "option '%s': expected NAME = value entries", field);
        }
        env[i] = lua_tostring(L, -1);
        lua_rawseti(L, -5, ++i); /* anchor[i] = "K=v" */
        lua_pop(L, 1);
    }
    env[i] = NULL;
    lua_remove(L, -3); /* the table itself; keep anchor + array */
    return env;
}

static const char *const *opt_env(lua_State *L, int t)
{
    return opt_pairs(L, t, "env");
}

/*
 * An egress policy at idx: nil (the default), "internet" | "none", or { allow = { entry,
 * ... } }. Fills *e and pushes one value that anchors what *e points to (the entries stay
 * in the table at idx, which the caller keeps). The library checks the entries.
 */
static void push_egress(lua_State *L, int idx, smolvm_egress *e)
{
    const char **allow;
    size_t n, i;

    idx = lua_absindex(L, idx);
    e->mode = SMOLVM_EGRESS_DEFAULT;
    e->allow = NULL;
    if (lua_isnoneornil(L, idx)) {
        lua_pushnil(L);
        return;
    }
    if (lua_type(L, idx) == LUA_TSTRING) {
        e->mode = smolvm_egress_mode_from_string(lua_tostring(L, idx));
        if (e->mode != SMOLVM_EGRESS_INTERNET && e->mode != SMOLVM_EGRESS_NONE)
            luaL_error(L,
                       "egress: expected \"internet\", \"none\" or { allow = { ... } }, got '%s'",
                       lua_tostring(L, idx));
        lua_pushnil(L);
        return;
    }
    if (!lua_istable(L, idx) || smolvm_getfield(L, idx, "allow") != LUA_TTABLE)
        luaL_error(L, "egress: expected \"internet\", \"none\" or { allow = { ... } }");
    n = lua_rawlen(L, -1);
    if (n > SMOLVM_EGRESS_ALLOW_MAX)
        luaL_error(L, "egress.allow: at most %d entries", SMOLVM_EGRESS_ALLOW_MAX);
    allow = lua_newuserdata(L, sizeof(*allow) * (n + 1));
    for (i = 0; i < n; i++) {
        lua_rawgeti(L, -2, (lua_Integer)i + 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "egress.allow[%d]: expected string", (int)i + 1);
        allow[i] = lua_tostring(L, -1); /* anchored by the allow table */
        lua_pop(L, 1);
    }
    allow[n] = NULL;
    lua_remove(L, -2); /* the allow table stays referenced by the table at idx */
    e->mode = SMOLVM_EGRESS_ALLOW;
    e->allow = allow;
}

/* core.vm_create(opts [, async]) -> vm | nil, msg, code. opts is the facade's
 * normalized table. async: a job that creates it instead (job.c). */
static int l_vm_create(lua_State *L)
{
    smolvm_vm_options o = SMOLVM_VM_OPTIONS_INIT;
    smolvm_forward *fw = NULL;
    smolvm_lua_box *box;
    smolvm_lua_ctx *c;
    const char *image;
    lvm *u;
    int async = lua_toboolean(L, 2);

    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    o.id = opt_str(L, 1, "id");
    /* Absent: 0, the library's default. */
    o.vcpus = (unsigned)opt_int(L, 1, "vcpus", 0, SMOLVM_VCPUS_MIN, SMOLVM_VCPUS_MAX);
    o.memory_mib = (unsigned)opt_int(L, 1, "memory", 0, SMOLVM_MEMORY_MIN, SMOLVM_MEMORY_MAX);
    o.disk = opt_enum(L, 1, "disk", parse_disk, SMOLVM_DISK_ISOLATED);
    o.backend = opt_enum(L, 1, "backend", parse_backend, SMOLVM_BACKEND_AUTO);
    o.accel = opt_enum(L, 1, "accel", parse_accel, SMOLVM_ACCEL_AUTO);
    o.network = opt_enum(L, 1, "network", parse_net, SMOLVM_NET_AUTO);
    o.transport = opt_enum(L, 1, "transport", parse_transport, SMOLVM_TRANSPORT_AUTO);
    o.ttl_ms = opt_int(L, 1, "ttl_ms", 0, 0, SMOLVM_TTL_MAX);
    /* A VM made by VM{} dies with this process unless kept (the facade says which). */
    o.ephemeral = smolvm_getfield(L, 1, "ephemeral") != LUA_TNIL && lua_toboolean(L, -1);
    lua_pop(L, 1);
    if ((image = opt_str(L, 1, "image")))
        o.image = image;
    o.template_name = opt_str(L, 1, "template");
    o.env = opt_env(L, 1); /* stack 2, 3 */

    if (smolvm_getfield(L, 1, "forwards") != LUA_TNIL) { /* stack 4 */
        size_t i, n;

        luaL_argcheck(L, lua_istable(L, 4), 1, "option 'forwards': expected table");
        n = lua_rawlen(L, 4);
        if (n > SMOLVM_FORWARDS_MAX)
            luaL_error(L, "option 'forwards': at most %d entries", SMOLVM_FORWARDS_MAX);
        fw = lua_newuserdata(L, sizeof(*fw) * (n ? n : 1)); /* stack 5 */
        for (i = 0; i < n; i++) {
            lua_rawgeti(L, 4, (int)i + 1);
            if (!lua_istable(L, -1))
                luaL_error(L, "option 'forwards[%d]': expected table", (int)i + 1);
            fw[i].host_port = (int)opt_int(L, -1, "host", 0, 1, 65535);
            fw[i].guest_port = (int)opt_int(L, -1, "guest", 0, 1, 65535);
            fw[i].host_address = opt_str(L, -1, "address");
            if (!fw[i].host_address)
                fw[i].host_address = opt_str(L, -1, "host_address");
            lua_pop(L, 1); /* the entry stays referenced by opts.forwards */
        }
        o.forwards = fw;
        o.n_forwards = n;
    }
    lua_settop(L, 5);
    o.labels = opt_pairs(L, 1, "labels");  /* stack 6, 7 */
    (void)smolvm_getfield(L, 1, "egress"); /* stack 8 */
    push_egress(L, 8, &o.egress);          /* stack 9 */

    if (async)
        return smolvm_lua_job_create(L, &o);
    u = new_lvm(L);
    box = smolvm_lua_box_new(L);
    if (!(c = smolvm_lua_ctx_get(L, box)))
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    if (smolvm_vm_create(&u->vm, c->ctx, &o, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    u->c = c;
    smolvm_lua_ctx_ref(c);
    u->owned = 1;
    lua_pop(L, 1); /* box */
    return 1;
}

/* core.vm_open(id) -> vm | nil, msg, code */
static int l_vm_open(lua_State *L)
{
    const char *id = luaL_checkstring(L, 1);
    smolvm_lua_box *box;
    smolvm_lua_ctx *c;
    lvm *u;

    u = new_lvm(L);
    box = smolvm_lua_box_new(L);
    if (!(c = smolvm_lua_ctx_get(L, box)))
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    if (smolvm_vm_open(&u->vm, c->ctx, id, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_ENOENT);
    u->c = c;
    smolvm_lua_ctx_ref(c);
    lua_pop(L, 1);
    return 1;
}

/* ---------------------------------------------------------------- methods */

static int l_vm_id(lua_State *L)
{
    lua_pushstring(L, smolvm_vm_id(check_vm(L)));
    return 1;
}

static int l_vm_status(lua_State *L)
{
    lua_pushstring(L, smolvm_vm_status(check_vm(L)));
    return 1;
}

static int l_vm_info(lua_State *L)
{
    smolvm_vm *vm = check_vm(L);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_vm_info_json(&box->text, vm, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    return smolvm_lua_push_json_text(L, box);
}

static int l_vm_start(lua_State *L)
{
    smolvm_vm *vm = check_vm(L);
    int ms = check_ms(L, 2);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_vm_start(vm, ms, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EVMM);
    return push_ok(L);
}

static int l_vm_start_begin(lua_State *L)
{
    smolvm_vm *vm = check_vm(L);
    int ms = check_ms(L, 2);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_vm_start_begin(vm, ms, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EVMM);
    return push_ok(L);
}

static int l_vm_start_finish(lua_State *L)
{
    smolvm_vm *vm = check_vm(L);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_vm_start_finish(vm, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EVMM);
    return push_ok(L);
}

static int l_vm_stop(lua_State *L)
{
    smolvm_vm *vm = check_vm(L);
    int ms = check_ms(L, 2);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_vm_stop(vm, ms, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EVMM);
    return push_ok(L);
}

static int l_vm_delete(lua_State *L)
{
    smolvm_vm *vm = check_vm(L);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_vm_delete(vm, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    return push_ok(L);
}

/* vm:keep() -> vm | nil, msg, code: this handle no longer deletes the VM when closed,
 * and the VM no longer dies with this process. */
static int l_vm_keep(lua_State *L)
{
    lvm *u = check_lvm(L);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_vm_keep(u->vm, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    u->owned = 0;
    smolvm_lua_box_clear(box);
    lua_settop(L, 1);
    return 1;
}

/* vm:pause() vm:resume() vm:suspend() -> true | nil, msg, code */
static int l_vm_pause(lua_State *L)
{
    smolvm_vm *vm = check_vm(L);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_vm_pause(vm, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EVMM);
    return push_ok(L);
}

static int l_vm_resume(lua_State *L)
{
    smolvm_vm *vm = check_vm(L);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_vm_resume(vm, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EVMM);
    return push_ok(L);
}

static int l_vm_suspend(lua_State *L)
{
    smolvm_vm *vm = check_vm(L);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_vm_suspend(vm, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EVMM);
    return push_ok(L);
}

/* vm:snapshot(name) -> true | nil, msg, code */
static int l_vm_snapshot(lua_State *L)
{
    smolvm_vm *vm = check_vm(L);
    const char *name = luaL_checkstring(L, 2);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_vm_snapshot(vm, name, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EVMM);
    return push_ok(L);
}

/* vm:fork(count, timeout_ms) -> { vm, ... } | nil, msg, code. The clones are owned
 * when this handle is (they die with it), like VMs from vm_create. */
static int l_vm_fork(lua_State *L)
{
    lvm *u = check_lvm(L);
    lua_Integer count = luaL_checkinteger(L, 2);
    int ms = check_ms(L, 3);
    smolvm_lua_box *box;
    smolvm_vm **clones = NULL;
    size_t i;

    luaL_argcheck(L, count >= 1 && count <= 64, 2, "count: expected 1..64");
    box = smolvm_lua_box_new(L);
    if (smolvm_vm_fork(&clones, u->vm, (size_t)count, ms, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EVMM);
    smolvm_lua_box_clear(box);
    lua_createtable(L, (int)count, 0);
    for (i = 0; i < (size_t)count; i++) {
        lvm *c = new_lvm(L);

        c->vm = clones[i];
        c->c = u->c;
        smolvm_lua_ctx_ref(u->c);
        c->owned = u->owned;
        lua_rawseti(L, -2, (int)i + 1);
    }
    free(clones);
    return 1;
}

/* vm:closed() -> boolean (the only method a closed handle answers) */
static int l_vm_closed(lua_State *L)
{
    lvm *u = luaL_checkudata(L, 1, SMOLVM_LUA_VM_MT);

    lua_pushboolean(L, u->vm == NULL && u->lent == NULL);
    return 1;
}

static int l_vm_owned(lua_State *L)
{
    lua_pushboolean(L, check_lvm(L)->owned);
    return 1;
}

static void set_lstring(lua_State *L, const char *k, const char *s, size_t n)
{
    lua_pushlstring(L, s ? s : "", s ? n : 0);
    lua_setfield(L, -2, k);
}

/* on_output: the Lua function at `fn` is called with (stream, chunk) from inside
 * smolvm_vm_run. A Lua error must not unwind through the library's frames: it is
 * caught, the rest of the output is no longer passed on, and the error is raised again
 * once the run has returned. */
typedef struct output_cb {
    lua_State *L;
    int fn;
    int failed;
    int err_ref;
} output_cb;

static void on_output(int stream, const char *data, size_t len, void *payload)
{
    output_cb *cb = payload;

    if (cb->failed)
        return;
    lua_pushvalue(cb->L, cb->fn);
    lua_pushstring(cb->L, stream == 1 ? "stdout" : "stderr");
    lua_pushlstring(cb->L, data, len);
    if (lua_pcall(cb->L, 2, 0, 0) != 0) {
        cb->failed = 1;
        cb->err_ref = luaL_ref(cb->L, LUA_REGISTRYINDEX);
    }
}

/* vm:run(cmd [, opts]) -> { stdout, stderr, output, exit_code, ok, signal?, truncated,
 * duration_ms } | nil, msg, code */
static int l_vm_run(lua_State *L)
{
    smolvm_vm *vm = check_vm(L);
    const char *cmd = luaL_checkstring(L, 2);
    smolvm_run_options o = SMOLVM_RUN_OPTIONS_INIT;
    output_cb cb = {L, 0, 0, LUA_NOREF};
    smolvm_lua_box *box;
    int rc;

    lua_settop(L, 3);
    if (!lua_isnil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        o.timeout_ms = (int)opt_int(L, 3, "timeout_ms", 0, 0, INT_MAX);
        o.cwd = opt_str(L, 3, "cwd");
        o.output_limit = (size_t)opt_int(L, 3, "output_limit", 0, 0, INT_MAX);
        if (smolvm_getfield(L, 3, "stdin") != LUA_TNIL) {
            if (lua_type(L, -1) != LUA_TSTRING)
                luaL_error(L, "option 'stdin': expected string, got %s", luaL_typename(L, -1));
            o.stdin_data = lua_tolstring(L, -1, &o.stdin_len);
        }
        lua_pop(L, 1); /* still referenced by opts */
        o.env = opt_env(L, 3);
        if (smolvm_getfield(L, 3, "on_output") == LUA_TFUNCTION) {
            cb.fn = lua_gettop(L);
            o.on_output = on_output;
            o.payload = &cb;
        } else {
            lua_pop(L, 1);
        }
    }
    box = smolvm_lua_box_new(L);
    rc = smolvm_vm_run(&box->result, vm, cmd, &o, &box->err);
    if (cb.failed) {
        smolvm_lua_box_clear(box);
        lua_rawgeti(L, LUA_REGISTRYINDEX, cb.err_ref);
        luaL_unref(L, LUA_REGISTRYINDEX, cb.err_ref);
        return lua_error(L);
    }
    if (rc < 0)
        return smolvm_lua_fail(L, box, SMOLVM_ESSH);
    smolvm_lua_push_run_result(L, box->result);
    smolvm_lua_box_clear(box);
    return 1;
}

void smolvm_lua_push_run_result(lua_State *L, const smolvm_run_result *r)
{
    lua_createtable(L, 0, 9);
    set_lstring(L, "stdout", r->out, r->out_len);
    set_lstring(L, "stderr", r->err, r->err_len);
    lua_pushlstring(L, r->out ? r->out : "", r->out ? r->out_len : 0);
    lua_pushlstring(L, r->err ? r->err : "", r->err ? r->err_len : 0);
    lua_concat(L, 2);
    lua_setfield(L, -2, "output");
    lua_pushinteger(L, r->exit_code);
    lua_setfield(L, -2, "exit_code");
    lua_pushboolean(L, r->exit_code == 0);
    lua_setfield(L, -2, "ok");
    if (r->signal[0]) {
        lua_pushlstring(L, r->signal, strnlen(r->signal, sizeof(r->signal)));
        lua_setfield(L, -2, "signal");
    }
    lua_pushboolean(L, r->truncated != 0);
    lua_setfield(L, -2, "truncated");
    lua_pushinteger(L, (lua_Integer)r->duration_ms);
    lua_setfield(L, -2, "duration_ms");
}

static int l_vm_upload(lua_State *L)
{
    smolvm_vm *vm = check_vm(L);
    const char *local = luaL_checkstring(L, 2), *remote = luaL_checkstring(L, 3);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_vm_upload(vm, local, remote, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    return push_ok(L);
}

static int l_vm_download(lua_State *L)
{
    smolvm_vm *vm = check_vm(L);
    const char *remote = luaL_checkstring(L, 2), *local = luaL_checkstring(L, 3);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_vm_download(vm, remote, local, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    return push_ok(L);
}

static int l_vm_write_file(lua_State *L)
{
    smolvm_vm *vm = check_vm(L);
    const char *remote = luaL_checkstring(L, 2);
    size_t len;
    const char *data = luaL_checklstring(L, 3, &len);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_vm_write_file(vm, remote, data, len, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    return push_ok(L);
}

static int l_vm_read_file(lua_State *L)
{
    smolvm_vm *vm = check_vm(L);
    const char *remote = luaL_checkstring(L, 2);
    smolvm_lua_box *box = smolvm_lua_box_new(L);
    size_t len = 0;

    if (smolvm_vm_read_file(&box->text, &len, vm, remote, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    lua_pushlstring(L, box->text ? box->text : "", box->text ? len : 0);
    smolvm_lua_box_clear(box);
    return 1;
}

static int check_port(lua_State *L, int idx)
{
    lua_Integer p = luaL_checkinteger(L, idx);

    luaL_argcheck(L, p >= 1 && p <= 65535, idx, "port must be 1..65535");
    return (int)p;
}

static int l_vm_forward(lua_State *L)
{
    smolvm_vm *vm = check_vm(L);
    int host = check_port(L, 2), guest = check_port(L, 3);
    const char *addr = luaL_optstring(L, 4, NULL);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_vm_forward(vm, addr, host, guest, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_ENET);
    return push_ok(L);
}

static int l_vm_unforward(lua_State *L)
{
    smolvm_vm *vm = check_vm(L);
    int host = check_port(L, 2);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_vm_unforward(vm, host, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_ENET);
    return push_ok(L);
}

/* vm:spawn(cmd, opts) -> proc | nil, msg, code */
static int l_vm_spawn(lua_State *L)
{
    smolvm_vm *vm = check_vm(L);
    const char *cmd = luaL_optstring(L, 2, NULL);
    smolvm_spawn_options o = SMOLVM_SPAWN_OPTIONS_INIT;
    smolvm_lua_box *box;

    lua_settop(L, 3);
    if (!lua_isnil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        o.cwd = opt_str(L, 3, "cwd");
        o.timeout_ms = (int)opt_int(L, 3, "timeout_ms", 0, 0, INT_MAX);
        o.pty_rows = (unsigned)opt_int(L, 3, "pty_rows", 0, 0, 1000);
        o.pty_cols = (unsigned)opt_int(L, 3, "pty_cols", 0, 0, 1000);
        if (smolvm_getfield(L, 3, "stdin") != LUA_TNIL)
            o.stdin_pipe = lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (smolvm_getfield(L, 3, "keep") != LUA_TNIL)
            o.keep = lua_toboolean(L, -1);
        lua_pop(L, 1);
        o.env = opt_env(L, 3); /* stack 4, 5 */
    }
    luaL_argcheck(L, cmd, 2, "expected a command");
    box = smolvm_lua_box_new(L);
    if (smolvm_vm_spawn(&box->proc, vm, cmd, &o, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    smolvm_lua_push_proc(L, 1, box);
    return 1;
}

/* vm:attach(pid) -> proc | nil, msg, code */
static int l_vm_attach(lua_State *L)
{
    smolvm_vm *vm = check_vm(L);
    lua_Integer pid = luaL_checkinteger(L, 2);
    smolvm_lua_box *box;

    luaL_argcheck(L, pid > 0 && pid <= INT_MAX, 2, "pid must be positive");
    box = smolvm_lua_box_new(L);
    if (smolvm_vm_attach(&box->proc, vm, (int)pid, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    smolvm_lua_push_proc(L, 1, box);
    return 1;
}

/* vm:processes() -> { { pid=, cmd=, running=, exit_code=, signal=, started_ms= }, ... } */
static int l_vm_processes(lua_State *L)
{
    smolvm_vm *vm = check_vm(L);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_vm_processes_json(&box->text, vm, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    return smolvm_lua_push_json_text(L, box);
}

/* vm:set_egress(policy) -> true | nil, msg, code */
static int l_vm_set_egress(lua_State *L)
{
    smolvm_vm *vm = check_vm(L);
    smolvm_egress e;
    smolvm_lua_box *box;

    lua_settop(L, 2);
    luaL_argcheck(L, !lua_isnil(L, 2), 2, "expected an egress policy");
    push_egress(L, 2, &e);
    box = smolvm_lua_box_new(L);
    if (smolvm_vm_set_egress(vm, &e, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    return push_ok(L);
}

/* vm:events([kind]) -> { event, ... } | nil, msg, code */
static int l_vm_events(lua_State *L)
{
    smolvm_vm *vm = check_vm(L);
    const char *kind = luaL_optstring(L, 2, NULL);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_vm_events_json(&box->text, vm, kind, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    return smolvm_lua_push_json_text(L, box);
}

/* core.egress_check(entry) -> true | nil, msg: one allow-list entry, as the library
 * checks it (the schema's validation uses this, so Lua and C agree). */
static int l_egress_check(lua_State *L)
{
    const char *entry = luaL_checkstring(L, 1);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_egress_entry_check(entry, &box->err) < 0) {
        lua_pushnil(L);
        lua_pushstring(L, smolvm_error_message(box->err));
        smolvm_lua_box_clear(box);
        return 2;
    }
    smolvm_lua_box_clear(box);
    return push_ok(L);
}

static int l_vm_tostring(lua_State *L)
{
    lvm *u = luaL_checkudata(L, 1, SMOLVM_LUA_VM_MT);

    if (u->lent)
        lua_pushliteral(L, "smolvm.vm (busy)");
    else if (u->vm)
        lua_pushfstring(L, "smolvm.vm (%s)", smolvm_vm_id(u->vm));
    else
        lua_pushliteral(L, "smolvm.vm (closed)");
    return 1;
}

/* vm:take_log() -> { {level=, message=}, ... }: what the VM's context logged. */
static int l_vm_take_log(lua_State *L)
{
    lvm *u = smolvm_lua_check_vm(L, 1);

    smolvm_lua_push_log(L, u->c);
    return 1;
}

static const luaL_Reg vm_methods[] = {
    {"take_log", l_vm_take_log},
    {"id", l_vm_id},
    {"status", l_vm_status},
    {"info", l_vm_info},
    {"start", l_vm_start},
    {"start_begin", l_vm_start_begin},
    {"start_finish", l_vm_start_finish},
    {"stop", l_vm_stop},
    {"delete", l_vm_delete},
    {"run", l_vm_run},
    {"upload", l_vm_upload},
    {"download", l_vm_download},
    {"write_file", l_vm_write_file},
    {"read_file", l_vm_read_file},
    {"forward", l_vm_forward},
    {"unforward", l_vm_unforward},
    {"spawn", l_vm_spawn},
    {"attach", l_vm_attach},
    {"processes", l_vm_processes},
    {"job", smolvm_lua_vm_job},
    {"set_egress", l_vm_set_egress},
    {"events", l_vm_events},
    {"keep", l_vm_keep},
    {"pause", l_vm_pause},
    {"resume", l_vm_resume},
    {"suspend", l_vm_suspend},
    {"snapshot", l_vm_snapshot},
    {"fork", l_vm_fork},
    {"owned", l_vm_owned},
    {"closed", l_vm_closed},
    {"close", l_vm_close},
    {NULL, NULL},
};

static const luaL_Reg vm_meta[] = {
    {"__gc", l_vm_gc},
    {"__close", l_vm_gc},
    {"__tostring", l_vm_tostring},
    {NULL, NULL},
};

void smolvm_lua_open_vm(lua_State *L)
{
    luaL_newmetatable(L, SMOLVM_LUA_VM_MT);
    luaL_setfuncs(L, vm_meta, 0);
    luaL_newlib(L, vm_methods);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, SMOLVM_LUA_VM_MT);
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);

    lua_pushcfunction(L, l_vm_create);
    lua_setfield(L, -2, "vm_create");
    lua_pushcfunction(L, l_vm_open);
    lua_setfield(L, -2, "vm_open");
    lua_pushcfunction(L, l_egress_check);
    lua_setfield(L, -2, "egress_check");
}
