/* SPDX-License-Identifier: MIT */
/*
 * smolvm.core: the C half of the Lua binding (luaossl's `_openssl` + `openssl.*`
 * split). Thin: it converts arguments, calls libsmolvm and converts results; policy
 * (defaults, units, validation, ownership of VMs) lives in the lua/smolvm/ modules.
 *
 * Conventions, for every function here:
 *  - bad argument types raise (luaL_argerror);
 *  - operational failures return nil, message, code where code is
 *    smolvm_error_name() of the library's error ("ENOENT", "EDB", ...);
 *  - JSON text from the library becomes Lua values: object -> table with string keys,
 *    array -> sequence (1-based), string -> string, true/false -> boolean,
 *    integer -> integer (a float in 5.1/LuaJIT), real -> number, null -> nil (an
 *    absent key in an object; a hole in an array — the library does not put null in
 *    arrays).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "binding.h"

#define BOX_MT "smolvm.box"
#define CTX_MT "smolvm.ctx"

/* Registry keys: the state's default context sentinel; the options it is made with
 * (a table set by configure). */
static const char ctx_key = 0;
static const char config_key = 0;

/* ---------------------------------------------------------------- box */

void smolvm_lua_box_clear(smolvm_lua_box *b)
{
    if (!b)
        return;
    b->err = smolvm_error_free(b->err);
    free(b->text);
    b->text = NULL;
    if (b->json)
        json_decref(b->json);
    b->json = NULL;
    b->result = smolvm_run_result_free(b->result);
    b->proc = smolvm_proc_free(b->proc);
}

static int box_gc(lua_State *L)
{
    smolvm_lua_box_clear(luaL_checkudata(L, 1, BOX_MT));
    return 0;
}

smolvm_lua_box *smolvm_lua_box_new(lua_State *L)
{
    smolvm_lua_box *b = lua_newuserdata(L, sizeof(*b));

    memset(b, 0, sizeof(*b));
    luaL_setmetatable(L, BOX_MT);
    return b;
}

/* ---------------------------------------------------------------- context */

typedef struct ctx_sentinel {
    smolvm_lua_ctx *c;
} ctx_sentinel;

void smolvm_lua_ctx_ref(smolvm_lua_ctx *c)
{
    c->refs++;
}

void smolvm_lua_ctx_unref(smolvm_lua_ctx *c)
{
    if (c && --c->refs == 0) {
        smolvm_ctx_free(c->ctx);
        free(c);
    }
}

/* Never raises: it runs from __gc. */
static int ctx_gc(lua_State *L)
{
    ctx_sentinel *s = luaL_checkudata(L, 1, CTX_MT);

    smolvm_lua_ctx_unref(s->c);
    s->c = NULL;
    return 0;
}

static void queue_log(int level, const char *msg, void *payload)
{
    smolvm_lua_ctx *c = payload;

    if (c->n_log == SMOLVM_LUA_LOG_MAX) {
        c->dropped++;
        return;
    }
    c->log[c->n_log].level = level;
    (void)snprintf(c->log[c->n_log].msg, sizeof(c->log[c->n_log].msg), "%s", msg);
    c->n_log++;
}

void smolvm_lua_push_log(lua_State *L, smolvm_lua_ctx *c)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    unsigned i;

    lua_createtable(L, (int)c->n_log + (c->dropped ? 1 : 0), 0);
    for (i = 0; i < c->n_log; i++) {
        int lv = c->log[i].level;

        lua_createtable(L, 0, 2);
        lua_pushstring(L, lv >= 0 && lv <= 3 ? names[lv] : "info");
        lua_setfield(L, -2, "level");
        lua_pushstring(L, c->log[i].msg);
        lua_setfield(L, -2, "message");
        lua_rawseti(L, -2, (int)i + 1);
    }
    if (c->dropped) {
        lua_createtable(L, 0, 2);
        lua_pushstring(L, "warn");
        lua_setfield(L, -2, "level");
        lua_pushfstring(L, "%d more log lines were dropped", (int)c->dropped);
        lua_setfield(L, -2, "message");
        lua_rawseti(L, -2, (int)i + 1);
    }
    c->n_log = c->dropped = 0;
}

/* An integer field of the configure table at the top of the stack (0 when absent). */
static lua_Integer config_int(lua_State *L, const char *field)
{
    lua_Integer v;

    lua_getfield(L, -1, field);
    v = lua_isnumber(L, -1) ? lua_tointeger(L, -1) : 0;
    lua_pop(L, 1);
    return v > 0 ? v : 0;
}

/* The options of the next default context, from configure's table. */
static void config_options(lua_State *L, smolvm_lua_ctx *c, smolvm_ctx_options *o)
{
    (void)smolvm_ctx_options_init(o, SMOLVM_CTX_OPTIONS_VERSION);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &config_key);
    if (lua_istable(L, -1)) {
        o->max_vms = (unsigned)config_int(L, "max_vms");
        o->max_memory_mib = (uint64_t)config_int(L, "max_memory_mib");
        lua_getfield(L, -1, "log");
        if (lua_toboolean(L, -1)) {
            o->log = queue_log;
            o->log_payload = c;
            o->log_level = SMOLVM_LOG_WARN;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

smolvm_lua_ctx *smolvm_lua_ctx_get(lua_State *L, smolvm_lua_box *box)
{
    smolvm_ctx_options o;
    ctx_sentinel *s;
    smolvm_lua_ctx *c;

    lua_rawgetp(L, LUA_REGISTRYINDEX, &ctx_key);
    s = luaL_testudata(L, -1, CTX_MT);
    if (s && s->c) {
        lua_pop(L, 1);
        return s->c;
    }
    lua_pop(L, 1);

    /* Userdata first, then the C resource: an error in between cannot leak it. */
    s = lua_newuserdata(L, sizeof(*s));
    s->c = NULL;
    luaL_setmetatable(L, CTX_MT);
    c = calloc(1, sizeof(*c));
    if (!c) {
        lua_pop(L, 1);
        luaL_error(L, "out of memory");
        return NULL;
    }
    c->refs = 1;
    s->c = c;
    config_options(L, c, &o);
    if (smolvm_ctx_new(&c->ctx, &o, &box->err) < 0) {
        lua_pop(L, 1); /* the sentinel's __gc frees c */
        return NULL;
    }
    lua_rawsetp(L, LUA_REGISTRYINDEX, &ctx_key);
    return c;
}

/* ---------------------------------------------------------------- failures */

int smolvm_lua_fail(lua_State *L, smolvm_lua_box *box, int code)
{
    if (box->err)
        code = smolvm_error_code(box->err);
    lua_pushnil(L);
    lua_pushstring(L, box->err ? smolvm_error_message(box->err) : "operation failed");
    lua_pushstring(L, smolvm_error_name(code));
    smolvm_lua_box_clear(box);
    return 3;
}

void smolvm_lua_closed_error(lua_State *L, const char *what)
{
    luaL_error(L, "attempt to use a closed %s", what);
}

/* ---------------------------------------------------------------- JSON */

static void push_json(lua_State *L, json_t *v, int depth)
{
    luaL_checkstack(L, 4, "JSON nested too deeply");
    if (depth > 200)
        luaL_error(L, "JSON nested too deeply");
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *x;

        lua_createtable(L, 0, (int)json_object_size(v));
        json_object_foreach (v, k, x) {
            if (json_is_null(x))
                continue;
            push_json(L, x, depth + 1);
            lua_setfield(L, -2, k);
        }
        break;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *x;

        lua_createtable(L, (int)json_array_size(v), 0);
        json_array_foreach (v, i, x) {
            if (json_is_null(x))
                continue;
            push_json(L, x, depth + 1);
            lua_rawseti(L, -2, (int)i + 1);
        }
        break;
    }
    case JSON_STRING: lua_pushlstring(L, json_string_value(v), json_string_length(v)); break;
    case JSON_INTEGER: lua_pushinteger(L, (lua_Integer)json_integer_value(v)); break;
    case JSON_REAL: lua_pushnumber(L, (lua_Number)json_real_value(v)); break;
    case JSON_TRUE: lua_pushboolean(L, 1); break;
    case JSON_FALSE: lua_pushboolean(L, 0); break;
    case JSON_NULL:
    default: lua_pushnil(L); break;
    }
}

int smolvm_lua_push_json_text(lua_State *L, smolvm_lua_box *box)
{
    json_error_t jerr;

    box->json = json_loads(box->text ? box->text : "", JSON_DECODE_ANY, &jerr);
    if (!box->json) {
        smolvm_lua_box_clear(box);
        lua_pushnil(L);
        lua_pushfstring(L, "bad JSON from libsmolvm: %s (line %d)", jerr.text, jerr.line);
        lua_pushstring(L, smolvm_error_name(SMOLVM_EIO));
        return 3;
    }
    push_json(L, box->json, 0);
    smolvm_lua_box_clear(box);
    return 1;
}

/* ---------------------------------------------------------------- functions */

/* list() -> { info, ... } | nil, msg, code: every VM in the state, reconciled. */
static int l_list(lua_State *L)
{
    smolvm_lua_box *box = smolvm_lua_box_new(L);
    smolvm_lua_ctx *c = smolvm_lua_ctx_get(L, box);

    if (!c || smolvm_vm_list_json(&box->text, c->ctx, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    return smolvm_lua_push_json_text(L, box);
}

/* doctor() -> { {name=, ok=, detail=, hint=}, ... } | nil, msg, code */
static int l_doctor(lua_State *L)
{
    smolvm_lua_box *box = smolvm_lua_box_new(L);
    smolvm_lua_ctx *c = smolvm_lua_ctx_get(L, box);

    if (!c || smolvm_doctor_json(&box->text, c->ctx, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    return smolvm_lua_push_json_text(L, box);
}

/* firecracker_download([dest_dir]) -> path of the installed binary | nil, msg, code */
static int l_firecracker_download(lua_State *L)
{
    const char *dest = luaL_optstring(L, 1, NULL);
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    if (smolvm_firecracker_download(&box->text, dest, NULL, NULL, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    lua_pushstring(L, box->text);
    return 1;
}

/* reconcile() -> number of VMs whose state changed | nil, msg, code */
static int l_reconcile(lua_State *L)
{
    smolvm_lua_box *box = smolvm_lua_box_new(L);
    smolvm_lua_ctx *c = smolvm_lua_ctx_get(L, box);
    int changed = 0;

    if (!c || smolvm_reconcile(&changed, c->ctx, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    lua_pushinteger(L, changed);
    return 1;
}

/* configure{ max_vms=, max_memory_mib=, log= } -> true: the options of the default
 * context from now on (the facade checked them). The current one is let go: VMs
 * opened from it keep it until they are closed. */
static int l_configure(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_createtable(L, 0, 3);
    lua_getfield(L, 1, "max_vms");
    lua_setfield(L, -2, "max_vms");
    lua_getfield(L, 1, "max_memory_mib");
    lua_setfield(L, -2, "max_memory_mib");
    lua_getfield(L, 1, "log");
    lua_setfield(L, -2, "log");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &config_key);
    lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &ctx_key);
    lua_pushboolean(L, 1);
    return 1;
}

/* usage() -> { vms=, memory_mib=, max_vms=, max_memory_mib= } | nil, msg, code */
static int l_usage(lua_State *L)
{
    smolvm_lua_box *box = smolvm_lua_box_new(L);
    smolvm_lua_ctx *c = smolvm_lua_ctx_get(L, box);

    if (!c || smolvm_ctx_usage_json(&box->text, c->ctx, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    return smolvm_lua_push_json_text(L, box);
}

/* take_log() -> { {level=, message=}, ... }: what the default context logged. */
static int l_take_log(lua_State *L)
{
    smolvm_lua_box *box = smolvm_lua_box_new(L);
    smolvm_lua_ctx *c = smolvm_lua_ctx_get(L, box);

    if (!c)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    smolvm_lua_push_log(L, c);
    return 1;
}

/* paths() -> { state_dir=, image_dir=, db=} of the default context | nil, msg, code */
static int l_paths(lua_State *L)
{
    smolvm_lua_box *box = smolvm_lua_box_new(L);
    smolvm_lua_ctx *c = smolvm_lua_ctx_get(L, box);

    if (!c)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    lua_createtable(L, 0, 3);
    lua_pushstring(L, smolvm_ctx_state_dir(c->ctx));
    lua_setfield(L, -2, "state_dir");
    lua_pushstring(L, smolvm_ctx_image_dir(c->ctx));
    lua_setfield(L, -2, "image_dir");
    lua_pushstring(L, smolvm_ctx_db_path(c->ctx));
    lua_setfield(L, -2, "db");
    lua_pushstring(L, smolvm_ctx_template_dir(c->ctx));
    lua_setfield(L, -2, "template_dir");
    return 1;
}

/* default_paths() -> { image_dir=, template_dir= } | nil, msg, code: where a context
 * would look, without making one (no state directory or database is created; for
 * smolvm-lua --check). */
static int l_default_paths(lua_State *L)
{
    smolvm_lua_box *box = smolvm_lua_box_new(L);

    lua_createtable(L, 0, 2);
    if (smolvm_default_image_dir(&box->text, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    lua_pushstring(L, box->text);
    lua_setfield(L, -2, "image_dir");
    free(box->text);
    box->text = NULL;
    if (smolvm_default_template_dir(&box->text, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    lua_pushstring(L, box->text);
    lua_setfield(L, -2, "template_dir");
    smolvm_lua_box_clear(box);
    return 1;
}

/* sha256(data) -> 64 lowercase hex digits (a recipe's cache keys). */
static int l_sha256(lua_State *L)
{
    static const char hex[] = "0123456789abcdef";
    size_t len;
    const char *data = luaL_checklstring(L, 1, &len);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    char out[2 * EVP_MAX_MD_SIZE];

    if (EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
        return luaL_error(L, "sha256: EVP_Digest failed");
    for (unsigned int i = 0; i < mdlen; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    lua_pushlstring(L, out, 2 * mdlen);
    return 1;
}

/* templates() -> { {name=, image=, vcpus=, memory=, created_at_ms=, source_vm=,
 * ephemeral=, disk_bytes=, stale=}, ... } | nil, msg, code */
static int l_templates(lua_State *L)
{
    smolvm_lua_box *box = smolvm_lua_box_new(L);
    smolvm_lua_ctx *c = smolvm_lua_ctx_get(L, box);
    smolvm_template_info *list = NULL;
    size_t n = 0, i;

    if (!c || smolvm_templates(&list, &n, c->ctx, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    lua_createtable(L, (int)n, 0);
    for (i = 0; i < n; i++) {
        const smolvm_template_info *t = &list[i];

        lua_createtable(L, 0, 9);
        lua_pushstring(L, t->name);
        lua_setfield(L, -2, "name");
        lua_pushstring(L, t->image);
        lua_setfield(L, -2, "image");
        lua_pushinteger(L, t->vcpus);
        lua_setfield(L, -2, "vcpus");
        lua_pushinteger(L, t->memory_mib);
        lua_setfield(L, -2, "memory");
        lua_pushinteger(L, t->created_at);
        lua_setfield(L, -2, "created_at_ms");
        lua_pushstring(L, t->source_vm);
        lua_setfield(L, -2, "source_vm");
        lua_pushboolean(L, t->ephemeral);
        lua_setfield(L, -2, "ephemeral");
        lua_pushinteger(L, (lua_Integer)t->disk_bytes);
        lua_setfield(L, -2, "disk_bytes");
        lua_pushstring(L, t->stale); /* nil when usable */
        lua_setfield(L, -2, "stale");
        lua_rawseti(L, -2, (int)i + 1);
    }
    smolvm_templates_free(list, n);
    lua_remove(L, -2); /* box */
    return 1;
}

/* template_delete(name) -> true | nil, msg, code */
static int l_template_delete(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    smolvm_lua_box *box = smolvm_lua_box_new(L);
    smolvm_lua_ctx *c = smolvm_lua_ctx_get(L, box);

    if (!c || smolvm_template_delete(c->ctx, name, &box->err) < 0)
        return smolvm_lua_fail(L, box, SMOLVM_EIO);
    smolvm_lua_box_clear(box);
    lua_pushboolean(L, 1);
    return 1;
}

/* error_name(code) -> "EINVAL", ... (for tests and tools) */
static int l_error_name(lua_State *L)
{
    lua_pushstring(L, smolvm_error_name((int)luaL_checkinteger(L, 1)));
    return 1;
}

/* ---------------------------------------------------------------- process helpers */

/* isatty(fd) -> boolean: whether the descriptor is a terminal (no shell started, as
 * the pure-Lua fallback in smolvm.sys has to). */
static int l_isatty(lua_State *L)
{
    lua_Integer fd = luaL_checkinteger(L, 1);

    luaL_argcheck(L, fd >= 0 && fd <= 1024, 1, "expected a file descriptor 0..1024");
    lua_pushboolean(L, isatty((int)fd) == 1);
    return 1;
}

/* monotonic_ms() -> integer milliseconds of CLOCK_MONOTONIC: for durations and
 * deadlines (never jumps with the wall clock). */
static int l_monotonic_ms(lua_State *L)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
        return luaL_error(L, "clock_gettime(CLOCK_MONOTONIC) failed");
    lua_pushinteger(L, (lua_Integer)ts.tv_sec * 1000 + (lua_Integer)(ts.tv_nsec / 1000000));
    return 1;
}

/* json_decode(text) -> value | nil, message, "EINVAL": JSON text (from a Slurm job,
 * say) as Lua values, converted as described at the top of this file. Bounded by
 * jansson's own depth limit and push_json's. */
static int l_json_decode(lua_State *L)
{
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    smolvm_lua_box *box = smolvm_lua_box_new(L);
    json_error_t jerr;

    box->json = json_loadb(text, len, JSON_DECODE_ANY, &jerr);
    if (!box->json) {
        lua_pushnil(L);
        lua_pushfstring(L, "bad JSON: %s (line %d, column %d)", jerr.text, jerr.line, jerr.column);
        lua_pushstring(L, smolvm_error_name(SMOLVM_EINVAL));
        return 3;
    }
    push_json(L, box->json, 0);
    smolvm_lua_box_clear(box);
    return 1;
}

static const luaL_Reg core_funcs[] = {
    {"list", l_list},
    {"doctor", l_doctor},
    {"firecracker_download", l_firecracker_download},
    {"reconcile", l_reconcile},
    {"paths", l_paths},
    {"default_paths", l_default_paths},
    {"sha256", l_sha256},
    {"templates", l_templates},
    {"template_delete", l_template_delete},
    {"configure", l_configure},
    {"usage", l_usage},
    {"take_log", l_take_log},
    {"error_name", l_error_name},
    {"isatty", l_isatty},
    {"monotonic_ms", l_monotonic_ms},
    {"json_decode", l_json_decode},
    {NULL, NULL},
};

SMOLVM_EXTERN int luaopen_smolvm_core(lua_State *L)
{
    luaL_newmetatable(L, BOX_MT);
    lua_pushcfunction(L, box_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);

    luaL_newmetatable(L, CTX_MT);
    lua_pushcfunction(L, ctx_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);

    luaL_newlib(L, core_funcs);
    lua_pushstring(L, SMOLVM_VERSION);
    lua_setfield(L, -2, "VERSION");
    smolvm_lua_open_store(L);
    smolvm_lua_open_vm(L);
    smolvm_lua_open_constants(L);
    smolvm_lua_open_proc(L);
    smolvm_lua_open_job(L);
    smolvm_lua_open_image(L);
    smolvm_lua_open_hostio(L);
    return 1;
}
