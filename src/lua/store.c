/* SPDX-License-Identifier: MIT */
/*
 * "smolvm.store": a read-mostly view of a state database (smolvm_store_*).
 *
 *   core.store_open([path]) -> store | nil, msg, code
 *       path nil: the default context's database ($SMOLVM_STATE_DIR/smolvm.db, ...),
 *       creating the state directory and the database when absent.
 *   store:path() -> string
 *   store:list() -> { record, ... }      store:get(id) -> record | nil, msg, "ENOENT"
 *   store:leases() -> { lease, ... }     store:forwards() -> { forward, ... }
 *   store:close()  (also __gc and __close; idempotent)
 *
 * A closed store raises "attempt to use a closed store".
 */
#include <string.h>

#include "binding.h"

typedef struct lstore {
    smolvm_store *s;
} lstore;

static smolvm_store *check_store(lua_State *L)
{
    lstore *u = luaL_checkudata(L, 1, SMOLVM_LUA_STORE_MT);

    if (!u->s)
        smolvm_lua_closed_error(L, "store");
    return u->s;
}

static int l_store_open(lua_State *L)
{
    const char *path = luaL_optstring(L, 1, NULL);
    smolvm_lua_box *box;
    lstore *u;

    u = lua_newuserdata(L, sizeof(*u));
    u->s = NULL;
    luaL_setmetatable(L, SMOLVM_LUA_STORE_MT);
    box = smolvm_lua_box_new(L);
    if (!path) {
        smolvm_lua_ctx *c = smolvm_lua_ctx_get(L, box);

        if (!c)
            return smolvm_lua_fail(L, box, SMOLVM_EIO);
        path = smolvm_ctx_db_path(c->ctx); /* lives as long as the state's context */
    }
    if (smolvm_store_open(&u->s, path, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EDB);
    lua_pop(L, 1); /* box */
    return 1;
}

/* __gc, __close and close(): idempotent, never raise. */
static int l_store_close(lua_State *L)
{
    lstore *u = luaL_checkudata(L, 1, SMOLVM_LUA_STORE_MT);

    u->s = smolvm_store_free(u->s);
    return 0;
}

static int l_store_path(lua_State *L)
{
    lua_pushstring(L, smolvm_store_path(check_store(L)));
    return 1;
}

typedef int (*json_getter)(char **out, smolvm_store *s, smolvm_error **err);

static int store_json(lua_State *L, json_getter get)
{
    smolvm_store *s = check_store(L);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (get(&box->text, s, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EDB);
    return smolvm_lua_push_json_text(L, box);
}

static int l_store_list(lua_State *L)
{
    return store_json(L, smolvm_store_list_json);
}

static int l_store_leases(lua_State *L)
{
    return store_json(L, smolvm_store_leases_json);
}

static int l_store_forwards(lua_State *L)
{
    return store_json(L, smolvm_store_forwards_json);
}

static int l_store_get(lua_State *L)
{
    smolvm_store *s = check_store(L);
    const char *id = luaL_checkstring(L, 2);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_store_get_json(&box->text, s, id, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EDB);
    return smolvm_lua_push_json_text(L, box);
}

static int l_store_tostring(lua_State *L)
{
    lstore *u = luaL_checkudata(L, 1, SMOLVM_LUA_STORE_MT);

    if (u->s)
        lua_pushfstring(L, "smolvm.store (%s)", smolvm_store_path(u->s));
    else
        lua_pushliteral(L, "smolvm.store (closed)");
    return 1;
}

static const luaL_Reg store_methods[] = {
    {"path", l_store_path},
    {"list", l_store_list},
    {"get", l_store_get},
    {"leases", l_store_leases},
    {"forwards", l_store_forwards},
    {"close", l_store_close},
    {NULL, NULL},
};

static const luaL_Reg store_meta[] = {
    {"__gc", l_store_close},
    {"__close", l_store_close},
    {"__tostring", l_store_tostring},
    {NULL, NULL},
};

void smolvm_lua_open_store(lua_State *L)
{
    luaL_newmetatable(L, SMOLVM_LUA_STORE_MT);
    luaL_setfuncs(L, store_meta, 0);
    luaL_newlib(L, store_methods);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, SMOLVM_LUA_STORE_MT);
    lua_setfield(L, -2, "__name"); /* 5.1 does not set it; error messages use it */
    lua_pop(L, 1);

    lua_pushcfunction(L, l_store_open);
    lua_setfield(L, -2, "store_open");
}
