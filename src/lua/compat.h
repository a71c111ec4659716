/* SPDX-License-Identifier: MIT */
/*
 * The Lua 5.3/5.4 C API subset smolvm.core is written against, shimmed for the 5.1 API
 * (LuaJIT, PUC 5.1). Like lua-cjson's and LPeg's compat blocks: our own static
 * functions, renamed in by macro, so they never clash with a LuaJIT that already
 * exports some of them. No lua_newuserdatauv and no lua_toclose: both ABIs use the
 * same calls.
 */
#ifndef SMOLVM_LUA_COMPAT_H
#define SMOLVM_LUA_COMPAT_H

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#if LUA_VERSION_NUM == 501

static inline void smolvm_compat_setfuncs(lua_State *L, const luaL_Reg *l, int nup)
{
    luaL_checkstack(L, nup + 1, "too many upvalues");
    for (; l->name; l++) {
        int i;

        for (i = 0; i < nup; i++)
            lua_pushvalue(L, -nup);
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
}
#undef luaL_setfuncs
#define luaL_setfuncs smolvm_compat_setfuncs

static inline void *smolvm_compat_testudata(lua_State *L, int idx, const char *tname)
{
    void *p = lua_touserdata(L, idx);

    if (!p || !lua_getmetatable(L, idx))
        return NULL;
    lua_getfield(L, LUA_REGISTRYINDEX, tname);
    if (!lua_rawequal(L, -1, -2))
        p = NULL;
    lua_pop(L, 2);
    return p;
}
#undef luaL_testudata
#define luaL_testudata smolvm_compat_testudata

static inline void smolvm_compat_setmetatable(lua_State *L, const char *tname)
{
    luaL_getmetatable(L, tname);
    lua_setmetatable(L, -2);
}
#undef luaL_setmetatable
#define luaL_setmetatable smolvm_compat_setmetatable

#undef luaL_newlibtable
#undef luaL_newlib
#define luaL_newlibtable(L, l) lua_createtable(L, 0, sizeof(l) / sizeof((l)[0]) - 1)
#define luaL_newlib(L, l) (luaL_newlibtable(L, l), luaL_setfuncs(L, l, 0))

#define lua_rawlen(L, i) lua_objlen(L, (i))

#define lua_absindex(L, i) (((i) > 0 || (i) <= LUA_REGISTRYINDEX) ? (i) : lua_gettop(L) + (i) + 1)

static inline void smolvm_compat_rawgetp(lua_State *L, int idx, const void *p)
{
    if (idx < 0 && idx > LUA_REGISTRYINDEX)
        idx = lua_gettop(L) + idx + 1;
    lua_pushlightuserdata(L, (void *)p);
    lua_rawget(L, idx);
}
#define lua_rawgetp smolvm_compat_rawgetp

static inline void smolvm_compat_rawsetp(lua_State *L, int idx, const void *p)
{
    if (idx < 0 && idx > LUA_REGISTRYINDEX)
        idx = lua_gettop(L) + idx + 1;
    lua_pushlightuserdata(L, (void *)p);
    lua_insert(L, -2);
    lua_rawset(L, idx);
}
#define lua_rawsetp smolvm_compat_rawsetp

/* 5.1 has only doubles: an integer is a number with no fractional part. */
static inline int smolvm_compat_isinteger(lua_State *L, int idx)
{
    if (lua_type(L, idx) == LUA_TNUMBER) {
        lua_Number n = lua_tonumber(L, idx);

        return n == (lua_Number)(lua_Integer)n;
    }
    return 0;
}
#define lua_isinteger smolvm_compat_isinteger

/* lua_getfield returns the type since 5.3. */
static inline int smolvm_compat_getfield(lua_State *L, int idx, const char *k)
{
    lua_getfield(L, idx, k);
    return lua_type(L, -1);
}
#define smolvm_getfield smolvm_compat_getfield

#else /* 5.3, 5.4 */

#define smolvm_getfield lua_getfield

#endif

#endif
