/* SPDX-License-Identifier: MIT */
/*
 * Guest images from Lua: core.images(), core.image_build(name, opts),
 * core.image_remove(name, opts). The facade (lua/smolvm/image.lua) checks the
 * arguments' meaning; here only their types.
 */
#include <string.h>

#include "binding.h"

/* images() -> { { name=, dir=, complete=, built=, size=, agent=, extra_packages=,
 * kernel_version= }, ... } | nil, msg, code */
static int l_images(lua_State *L)
{
    smolvm_lua_box *box = smolvm_lua_box_new(L);
    smolvm_lua_ctx *c = smolvm_lua_ctx_get(L, box);

    if (!c || smolvm_image_list_json(&box->text, c->ctx, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    return smolvm_lua_push_json_text(L, box);
}

/* on_line: the Lua function at `fn` gets each line of the build. A Lua error (an
 * interrupt raised by smolvm-lua's hook, say) must not unwind through the library: it
 * is kept, the build is cancelled, and the error is raised again once it returned. */
typedef struct line_cb {
    lua_State *L;
    int fn;
    int err_ref;
} line_cb;

static int on_line(const char *line, void *payload)
{
    line_cb *cb = payload;

    if (cb->err_ref != LUA_NOREF)
        return 1;
    lua_pushvalue(cb->L, cb->fn);
    lua_pushstring(cb->L, line);
    if (lua_pcall(cb->L, 1, 0, 0) != 0) {
        cb->err_ref = luaL_ref(cb->L, LUA_REGISTRYINDEX);
        return 1;
    }
    return 0;
}

static int opt_bool(lua_State *L, int t, const char *field)
{
    int v = smolvm_getfield(L, t, field) != LUA_TNIL && lua_toboolean(L, -1);

    lua_pop(L, 1);
    return v;
}

/* image_build(name [, { packages = { "jq", ... }, force =, dry_run =, timeout_ms =,
 * script =, on_line = function(line) end }]) -> "built" | "up-to-date" | "out-of-date"
 * (dry_run) | nil, msg, code */
static int l_image_build(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    smolvm_image_build_options o = SMOLVM_IMAGE_BUILD_OPTIONS_INIT;
    line_cb cb = {L, 0, LUA_NOREF};
    const char **pkgs = NULL;
    smolvm_lua_box *box;
    smolvm_lua_ctx *c;
    int built = 0, rc;

    lua_settop(L, 2);
    if (!lua_isnil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        if (smolvm_getfield(L, 2, "packages") != LUA_TNIL) { /* stack 3, kept as anchor */
            size_t i, n;

            luaL_argcheck(L, lua_istable(L, 3), 2, "option 'packages': expected table");
            n = lua_rawlen(L, 3);
            if (n > SMOLVM_IMAGE_PACKAGES_MAX)
                return luaL_error(L, "option 'packages': at most %d entries",
                                  SMOLVM_IMAGE_PACKAGES_MAX);
            pkgs = lua_newuserdata(L, sizeof(*pkgs) * (n + 1)); /* stack 4 */
            for (i = 0; i < n; i++) {
                lua_rawgeti(L, 3, (int)i + 1);
                if (lua_type(L, -1) != LUA_TSTRING)
                    return luaL_error(L, "option 'packages[%d]': expected string", (int)i + 1);
                pkgs[i] = lua_tostring(L, -1); /* anchored by the table at 3 */
                lua_pop(L, 1);
            }
            pkgs[n] = NULL;
            o.packages = pkgs;
        } else {
            lua_pushnil(L); /* keep the stack layout: 3 packages, 4 array */
        }
        o.force = opt_bool(L, 2, "force");
        o.dry_run = opt_bool(L, 2, "dry_run");
        if (smolvm_getfield(L, 2, "timeout_ms") != LUA_TNIL) {
            if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0 ||
                lua_tointeger(L, -1) > 0x7fffffff)
                return luaL_error(L, "option 'timeout_ms': expected integer >= 0");
            o.timeout_ms = (int)lua_tointeger(L, -1);
        }
        lua_pop(L, 1);
        if (smolvm_getfield(L, 2, "script") != LUA_TNIL) { /* left on the stack: anchored */
            if (lua_type(L, -1) != LUA_TSTRING)
                return luaL_error(L, "option 'script': expected string");
            o.script = lua_tostring(L, -1);
        }
        if (smolvm_getfield(L, 2, "on_line") == LUA_TFUNCTION) {
            cb.fn = lua_gettop(L);
            o.on_line = on_line;
            o.payload = &cb;
        } else if (!lua_isnil(L, -1)) {
            return luaL_error(L, "option 'on_line': expected function");
        }
    }
    box = smolvm_lua_box_new(L);
    /* A dry run (smolvm-lua --check) leaves no trace: no context, so no state
     * directory or database is created; the default image directory is the one a
     * context would use. */
    c = o.dry_run ? NULL : smolvm_lua_ctx_get(L, box);
    if (!o.dry_run && !c)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    rc = smolvm_image_build(&built, c ? c->ctx : NULL, name, &o, &box->err);
    if (cb.err_ref != LUA_NOREF) {
        smolvm_lua_box_clear(box);
        lua_rawgeti(L, LUA_REGISTRYINDEX, cb.err_ref);
        luaL_unref(L, LUA_REGISTRYINDEX, cb.err_ref);
        return lua_error(L);
    }
    if (rc < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    smolvm_lua_box_clear(box);
    lua_pushstring(L, built ? (o.dry_run ? "out-of-date" : "built") : "up-to-date");
    return 1;
}

/* image_remove(name [, { force =, template_dir = }]) -> true | nil, msg, code */
static int l_image_remove(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    smolvm_image_remove_options o = SMOLVM_IMAGE_REMOVE_OPTIONS_INIT;
    smolvm_lua_box *box;
    smolvm_lua_ctx *c;

    lua_settop(L, 2);
    if (!lua_isnil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        o.force = opt_bool(L, 2, "force");
        if (smolvm_getfield(L, 2, "template_dir") != LUA_TNIL) { /* left: anchored */
            if (lua_type(L, -1) != LUA_TSTRING)
                return luaL_error(L, "option 'template_dir': expected string");
            o.template_dir = lua_tostring(L, -1);
        }
    }
    box = smolvm_lua_box_new(L);
    c = smolvm_lua_ctx_get(L, box);
    if (!c || smolvm_image_remove(c->ctx, name, &o, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    smolvm_lua_box_clear(box);
    lua_pushboolean(L, 1);
    return 1;
}

static const luaL_Reg image_funcs[] = {
    {"images", l_images},
    {"image_build", l_image_build},
    {"image_remove", l_image_remove},
    {NULL, NULL},
};

void smolvm_lua_open_image(lua_State *L)
{
    luaL_setfuncs(L, image_funcs, 0);
}
