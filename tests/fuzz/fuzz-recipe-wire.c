/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: arbitrary bytes as the result of a `--safe` evaluation, decoded
 * into the caller's Lua state by safe_decode (src/cli/safe-recipe.c). The child
 * process that writes it runs hostile code, so the parent's decoder must hold on any
 * input: no crash or sanitizer report, bounded work, the stack left as it was on a
 * refusal, and one value pushed on success.
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdlib.h>

#include "safe-recipe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;
static unsigned long runs;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *err = NULL;
    int top;

    if (!L) {
        L = luaL_newstate();
        luaL_openlibs(L);
    }
    top = lua_gettop(L);
    if (safe_decode(L, (const char *)data, size, &err) < 0) {
        if (!err || lua_gettop(L) != top)
            abort();
    } else {
        if (lua_gettop(L) != top + 1)
            abort();
        lua_pop(L, 1);
    }
    if (++runs % 1024 == 0)
        lua_gc(L, LUA_GCCOLLECT, 0);
    return 0;
}
