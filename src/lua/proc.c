/* SPDX-License-Identifier: MIT */
/*
 * "smolvm.proc": a process in a guest (smolvm_proc_*), from vm:spawn or vm:attach.
 * Units are the C API's (milliseconds); lua/smolvm/proc.lua gives it the contract's
 * shape (seconds, proc:lines()).
 *
 *   proc:pid()   proc:fd()  (the descriptor to poll, smolvm_proc_fd)
 *   proc:read(timeout_ms) -> stream, chunk | nil (both streams ended) | nil, msg, code
 *   proc:write(data, timeout_ms) proc:close_stdin() proc:kill(sig) proc:resize(rows, cols)
 *                                               -> true | nil, msg, code
 *   proc:wait(timeout_ms) -> { exit_code=, signal=, ok=, timed_out=, duration_ms= }
 *   proc:close()    (also __gc/__close: a process spawned without keep is killed)
 *
 * A proc holds a reference to its VM userdata, so the VM outlives it; closing the VM
 * closes its procs first.
 */
#include <limits.h>
#include <string.h>

#include "binding.h"

struct smolvm_lua_proc {
    smolvm_proc *p;
    smolvm_lua_vm *owner;
    smolvm_lua_proc *next;
    lua_State *L;
    int vm_ref;
};

typedef smolvm_lua_proc lproc;

static void unlink_proc(lproc *u)
{
    smolvm_lua_proc **pp;

    if (!u->owner)
        return;
    for (pp = &u->owner->procs; *pp; pp = &(*pp)->next)
        if (*pp == u) {
            *pp = u->next;
            break;
        }
    u->owner = NULL;
}

static void close_proc(lproc *u)
{
    u->p = smolvm_proc_free(u->p);
    unlink_proc(u);
    if (u->vm_ref != LUA_NOREF && u->L) {
        luaL_unref(u->L, LUA_REGISTRYINDEX, u->vm_ref);
        u->vm_ref = LUA_NOREF;
    }
}

void smolvm_lua_procs_close(smolvm_lua_vm *vm)
{
    while (vm->procs) {
        lproc *u = vm->procs;

        u->p = smolvm_proc_free(u->p);
        vm->procs = u->next;
        u->owner = NULL;
        /* its registry reference goes with its own close or collection */
    }
}

void smolvm_lua_push_proc(lua_State *L, int vm_idx, smolvm_lua_box *box)
{
    smolvm_lua_vm *vm = smolvm_lua_check_vm(L, vm_idx);
    lproc *u;

    vm_idx = lua_absindex(L, vm_idx);
    u = lua_newuserdata(L, sizeof(*u));
    memset(u, 0, sizeof(*u));
    u->vm_ref = LUA_NOREF;
    luaL_setmetatable(L, SMOLVM_LUA_PROC_MT);
    u->p = box->proc;
    box->proc = NULL;
    u->L = L;
    lua_pushvalue(L, vm_idx);
    u->vm_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    u->owner = vm;
    u->next = vm->procs;
    vm->procs = u;
}

static lproc *check_proc(lua_State *L)
{
    lproc *u = luaL_checkudata(L, 1, SMOLVM_LUA_PROC_MT);

    if (!u->p)
        smolvm_lua_closed_error(L, "proc");
    return u;
}

static int opt_ms(lua_State *L, int idx)
{
    lua_Integer ms = luaL_optinteger(L, idx, -1);

    luaL_argcheck(L, ms >= -1 && ms <= INT_MAX, idx, "timeout in ms out of range");
    return (int)ms;
}

static int push_ok(lua_State *L)
{
    lua_pushboolean(L, 1);
    return 1;
}

static int l_pid(lua_State *L)
{
    lua_pushinteger(L, smolvm_proc_pid(check_proc(L)->p));
    return 1;
}

/* The descriptor to poll before reading with timeout 0 (smolvm_proc_fd). */
static int l_fd(lua_State *L)
{
    lua_pushinteger(L, smolvm_proc_fd(check_proc(L)->p));
    return 1;
}

static int l_read(lua_State *L)
{
    lproc *u = check_proc(L);
    int ms = opt_ms(L, 2), stream = 0, r;
    smolvm_lua_box *box = smolvm_lua_box_new(L);
    const char *data = NULL;
    size_t len = 0;

    r = smolvm_proc_read(u->p, &stream, &data, &len, ms, &box->err);
    if (r < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    smolvm_lua_box_clear(box);
    if (r == 1) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushstring(L, stream == 2 ? "stderr" : "stdout");
    lua_pushlstring(L, data, len);
    return 2;
}

static int l_write(lua_State *L)
{
    lproc *u = check_proc(L);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    int ms = opt_ms(L, 3);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_proc_write(u->p, data, len, ms, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    return push_ok(L);
}

static int l_close_stdin(lua_State *L)
{
    lproc *u = check_proc(L);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_proc_close_stdin(u->p, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    return push_ok(L);
}

static int l_kill(lua_State *L)
{
    lproc *u = check_proc(L);
    const char *sig = luaL_optstring(L, 2, "TERM");
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_proc_kill(u->p, sig, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    return push_ok(L);
}

static int l_resize(lua_State *L)
{
    lproc *u = check_proc(L);
    lua_Integer rows = luaL_checkinteger(L, 2), cols = luaL_checkinteger(L, 3);
    smolvm_lua_box *box;

    luaL_argcheck(L, rows >= 1 && rows <= 1000, 2, "rows must be 1..1000");
    luaL_argcheck(L, cols >= 1 && cols <= 1000, 3, "cols must be 1..1000");
    box = smolvm_lua_box_new(L);
    if (smolvm_proc_resize(u->p, (unsigned)rows, (unsigned)cols, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    return push_ok(L);
}

static int l_wait(lua_State *L)
{
    lproc *u = check_proc(L);
    int ms = opt_ms(L, 2);
    smolvm_lua_box *box = smolvm_lua_box_new(L);
    smolvm_exit e;

    if (smolvm_proc_wait(&e, u->p, ms, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    smolvm_lua_box_clear(box);
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, e.exit_code);
    lua_setfield(L, -2, "exit_code");
    if (e.signal[0]) {
        lua_pushlstring(L, e.signal, strnlen(e.signal, sizeof(e.signal)));
        lua_setfield(L, -2, "signal");
    }
    lua_pushboolean(L, e.exit_code == 0 && !e.signal[0]);
    lua_setfield(L, -2, "ok");
    lua_pushboolean(L, e.timed_out);
    lua_setfield(L, -2, "timed_out");
    lua_pushinteger(L, (lua_Integer)e.duration_ms);
    lua_setfield(L, -2, "duration_ms");
    return 1;
}

static int l_closed(lua_State *L)
{
    lua_pushboolean(L, ((lproc *)luaL_checkudata(L, 1, SMOLVM_LUA_PROC_MT))->p == NULL);
    return 1;
}

static int l_close(lua_State *L)
{
    close_proc(luaL_checkudata(L, 1, SMOLVM_LUA_PROC_MT));
    return push_ok(L);
}

static int l_gc(lua_State *L)
{
    lproc *u = lua_touserdata(L, 1);

    if (u)
        close_proc(u);
    return 0;
}

static int l_tostring(lua_State *L)
{
    lproc *u = luaL_checkudata(L, 1, SMOLVM_LUA_PROC_MT);

    if (u->p)
        lua_pushfstring(L, "smolvm.proc (%d)", smolvm_proc_pid(u->p));
    else
        lua_pushliteral(L, "smolvm.proc (closed)");
    return 1;
}

static const luaL_Reg proc_methods[] = {
    {"pid", l_pid},
    {"fd", l_fd},
    {"read", l_read},
    {"write", l_write},
    {"close_stdin", l_close_stdin},
    {"kill", l_kill},
    {"resize", l_resize},
    {"wait", l_wait},
    {"closed", l_closed},
    {"close", l_close},
    {NULL, NULL},
};

static const luaL_Reg proc_meta[] = {
    {"__gc", l_gc},
    {"__close", l_gc},
    {"__tostring", l_tostring},
    {NULL, NULL},
};

void smolvm_lua_open_proc(lua_State *L)
{
    luaL_newmetatable(L, SMOLVM_LUA_PROC_MT);
    luaL_setfuncs(L, proc_meta, 0);
    luaL_newlib(L, proc_methods);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, SMOLVM_LUA_PROC_MT);
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
}
