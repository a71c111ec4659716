/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: arbitrary bytes as a recipe given to `smolvm-lua --safe`, through
 * the same code: the restricted, budgeted Lua state (src/cli/safe-recipe.c with
 * lua/smolvm/declare.lua), the encoding of what it declared, the decoding into a host
 * state and the recipe validator (smolvm.recipe.validate_recipe with smolvm.schema) on that
 * data. Must hold: no crash or sanitizer report, the evaluation ends within its
 * budget, what it encodes decodes, and the validator returns (errors are data, never
 * a raised error). In-process, so the CPU-time limit of the forked evaluation is not
 * here: an input that runs long inside one C call (a pattern that backtracks) shows as
 * a libFuzzer timeout, which smolvm-lua's child process limit covers.
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "binding.h"
#include "safe-recipe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *declare_src;
static size_t declare_len;
static lua_State *host;
static int validate_ref = LUA_NOREF;
static unsigned long runs;

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;

    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0 ||
        !(buf = malloc((size_t)n + 1))) {
        fclose(f);
        return NULL;
    }
    *len = fread(buf, 1, (size_t)n, f);
    fclose(f);
    buf[*len] = '\0';
    return buf;
}

static void init(void)
{
    if (host)
        return;
    declare_src = slurp(SMOLVM_SOURCE_LUA_DIR "/smolvm/declare.lua", &declare_len);
    if (!declare_src) {
        fprintf(stderr, "fuzz-recipe-safe: cannot read %s/smolvm/declare.lua\n",
                SMOLVM_SOURCE_LUA_DIR);
        abort();
    }
    host = luaL_newstate();
    luaL_openlibs(host);
    lua_getglobal(host, "package");
    lua_getfield(host, -1, "preload");
    lua_pushcfunction(host, luaopen_smolvm_core);
    lua_setfield(host, -2, "smolvm.core");
    lua_pop(host, 1);
    lua_pushstring(host, SMOLVM_SOURCE_LUA_DIR "/?.lua");
    lua_setfield(host, -2, "path");
    lua_pop(host, 1);
    if (luaL_dostring(host, "return require('smolvm.recipe').validate_recipe") != LUA_OK) {
        fprintf(stderr, "fuzz-recipe-safe: %s\n", lua_tostring(host, -1));
        abort();
    }
    validate_ref = luaL_ref(host, LUA_REGISTRYINDEX);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    safe_limits lim = {8u << 20, 500000ul, 0, 0, NULL};
    safe_input in = {(const char *)data, size, "=fuzz", NULL, 0};
    char *out = NULL, *err = NULL;
    const char *derr = NULL;
    size_t outlen = 0;
    int top;

    init();
    in.declare_src = declare_src;
    in.declare_len = declare_len;
    if (safe_eval(&in, &lim, &out, &outlen, &err) < 0) {
        if (!err || !*err)
            abort(); /* every refusal says why */
        free(err);
        return 0;
    }
    top = lua_gettop(host);
    lua_rawgeti(host, LUA_REGISTRYINDEX, validate_ref);
    if (safe_decode(host, out, outlen, &derr) < 0) {
        fprintf(stderr, "fuzz-recipe-safe: its own encoding does not decode: %s\n", derr);
        abort();
    }
    free(out);
    if (lua_pcall(host, 1, LUA_MULTRET, 0) != LUA_OK) {
        fprintf(stderr, "fuzz-recipe-safe: the validator raised: %s\n",
                lua_isstring(host, -1) ? lua_tostring(host, -1) : "(not a string)");
        abort();
    }
    lua_settop(host, top);
    if (++runs % 256 == 0)
        lua_gc(host, LUA_GCCOLLECT, 0);
    return 0;
}
