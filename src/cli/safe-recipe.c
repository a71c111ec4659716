/* SPDX-License-Identifier: MIT */
/* A recipe evaluated in a budgeted Lua state of its own (safe-recipe.h). */
#define _GNU_SOURCE
#include "safe-recipe.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#define MAGIC "SMR1"
#define HOOK_EVERY 1000  /* instructions between two looks at the budget */
#define ERROR_COST 1000  /* instructions an error caught by pcall counts for */
#define ENCODE_DEPTH 128 /* tables nested (check_data allows 100 in a body) */
#define DECODE_DEPTH 200
#define DECODE_VALUES 4000000ul

__attribute__((format(printf, 1, 0))) static char *vstrdupf(const char *fmt, va_list ap)
{
    char *s = NULL;

    if (vasprintf(&s, fmt, ap) < 0)
        return NULL;
    return s;
}

__attribute__((format(printf, 1, 2))) static char *strdupf(const char *fmt, ...)
{
    va_list ap;
    char *s;

    va_start(ap, fmt);
    s = vstrdupf(fmt, ap);
    va_end(ap);
    return s;
}

/* "@path" / "=name" -> what a message calls the recipe. */
static const char *display_name(const char *chunk)
{
    return chunk[0] == '@' || chunk[0] == '=' ? chunk + 1 : chunk;
}

/* ---------------------------------------------------------------- budget */

typedef struct budget {
    const char *chunk; /* the recipe's chunk name, to say where it is */
    size_t used, limit;
    unsigned long count, instructions;
    int mem_exceeded;   /* the allocator refused past the limit */
    int instr_exceeded; /* the hook saw too many instructions */
} budget;

static void *budget_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    budget *b = ud;
    size_t old = ptr ? osize : 0; /* without ptr, osize is a type tag */
    void *n;

    if (nsize == 0) {
        free(ptr);
        b->used -= old;
        return NULL;
    }
    if (nsize > old && (nsize - old > b->limit || b->used + (nsize - old) > b->limit)) {
        b->mem_exceeded = 1;
        return NULL;
    }
    n = realloc(ptr, nsize);
    if (!n)
        return NULL;
    b->used = b->used - old + nsize;
    return n;
}

static budget *budget_of(lua_State *L)
{
    void *ud = NULL;

    (void)lua_getallocf(L, &ud);
    return ud;
}

/* Push "recipe.lua:LINE: ": the innermost line of the recipe itself on the stack
 * (the hook may fire in a declaration function or a metamethod of smolvm.declare). */
static void budget_where(lua_State *L, const budget *b)
{
    lua_Debug ar;
    int level;

    for (level = 0; lua_getstack(L, level, &ar); level++) {
        if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0 && b->chunk &&
            strcmp(ar.source, b->chunk) == 0) {
            lua_pushfstring(L, "%s:%d: ", display_name(b->chunk), ar.currentline);
            return;
        }
    }
    lua_pushfstring(L, "%s: ", b->chunk ? display_name(b->chunk) : "recipe");
}

/* Past the budget the hook raises at every instruction, so nothing the recipe does
 * (a pcall in a loop, an error handler, a finalizer) gets any further. */
/* Push the message of the spent budget: where the recipe is, and which budget. */
static void budget_message(lua_State *L, const budget *b)
{
    budget_where(L, b);
    if (b->instr_exceeded)
        lua_pushfstring(L,
                        "the recipe ran more than %d million Lua instructions (the --safe "
                        "budget; an endless loop?)",
                        (int)(b->instructions / 1000000));
    else
        lua_pushfstring(L, "the recipe needed more than %d MiB of memory (the --safe budget)",
                        (int)(b->limit >> 20));
    lua_concat(L, 2);
}

static void budget_hook(lua_State *L, lua_Debug *ar)
{
    budget *b = budget_of(L);

    (void)ar;
    b->count += HOOK_EVERY;
    if (b->count > b->instructions && !b->instr_exceeded) {
        b->instr_exceeded = 1;
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
    }
    if (!b->instr_exceeded && !b->mem_exceeded)
        return;
    budget_message(L, b);
    lua_error(L);
}

/* An error caught by pcall/xpcall: it costs ERROR_COST instructions of the budget (an
 * error is work in C that the count hook does not see, a thousand instructions' worth
 * or more), so a loop that raises and catches cannot outlast the budget by much.
 * True when the budget is gone: the caller raises again instead of returning. */
static int caught_error(lua_State *L, int status)
{
    budget *b = budget_of(L);

    b->count += ERROR_COST;
    if (b->count > b->instructions && !b->instr_exceeded) {
        b->instr_exceeded = 1;
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
    }
    if (b->instr_exceeded || b->mem_exceeded) {
        lua_pop(L, 1); /* what was caught: the budget's message goes up instead */
        budget_message(L, b);
        return 1;
    }
    return status == LUA_ERRMEM;
}

/* pcall and xpcall of the recipe's environment: an exhausted budget is not theirs to
 * catch. */
static int safe_pcall(lua_State *L)
{
    int status;

    luaL_checkany(L, 1);
    status = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    if (status != LUA_OK && caught_error(L, status))
        return lua_error(L);
    lua_pushboolean(L, status == LUA_OK);
    lua_insert(L, 1);
    return lua_gettop(L);
}

static int safe_xpcall(lua_State *L)
{
    int n = lua_gettop(L), status;

    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 1); /* f, handler, args..., f */
    lua_rotate(L, 3, 1); /* f, handler, f, args... */
    status = lua_pcall(L, n - 2, LUA_MULTRET, 2);
    if (status != LUA_OK && caught_error(L, status))
        return lua_error(L);
    lua_pushboolean(L, status == LUA_OK);
    lua_replace(L, 1); /* true/false, handler, results... */
    lua_remove(L, 2);
    return lua_gettop(L);
}

/* ---------------------------------------------------------------- encoding */

typedef struct outbuf {
    char *data;
    size_t len, cap, limit;
    int full;
} outbuf;

static void put(outbuf *o, const void *p, size_t n)
{
    if (o->full)
        return;
    if (o->len + n > o->limit) {
        o->full = 1;
        return;
    }
    if (o->len + n > o->cap) {
        size_t ncap = o->cap ? o->cap : 4096;
        char *nd;

        while (ncap < o->len + n)
            ncap *= 2;
        if (!(nd = realloc(o->data, ncap))) {
            o->full = 1;
            return;
        }
        o->data = nd;
        o->cap = ncap;
    }
    memcpy(o->data + o->len, p, n);
    o->len += n;
}

static void put_u32(outbuf *o, uint32_t v)
{
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};

    put(o, b, 4);
}

static void put_u64(outbuf *o, uint64_t v)
{
    unsigned char b[8];
    int i;

    for (i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    put(o, b, 8);
}

typedef struct encoder {
    outbuf out;
    int seen;     /* stack index: table -> id */
    uint32_t ids; /* tables so far */
} encoder;

static void encode_value(lua_State *L, encoder *e, int idx, int depth)
{
    idx = lua_absindex(L, idx);
    switch (lua_type(L, idx)) {
    case LUA_TNIL: put(&e->out, "n", 1); break;
    case LUA_TBOOLEAN: put(&e->out, lua_toboolean(L, idx) ? "t" : "f", 1); break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            put(&e->out, "i", 1);
            put_u64(&e->out, (uint64_t)lua_tointeger(L, idx));
        } else {
            double d = (double)lua_tonumber(L, idx);
            uint64_t bits;

            memcpy(&bits, &d, sizeof(bits));
            put(&e->out, "d", 1);
            put_u64(&e->out, bits);
        }
        break;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);

        if (len > UINT32_MAX)
            luaL_error(L, "a string too long to leave the --safe state");
        put(&e->out, "s", 1);
        put_u32(&e->out, (uint32_t)len);
        put(&e->out, s, len);
        break;
    }
    case LUA_TTABLE:
        lua_pushvalue(L, idx);
        if (lua_rawget(L, e->seen) == LUA_TNUMBER) {
            put(&e->out, "r", 1);
            put_u32(&e->out, (uint32_t)lua_tointeger(L, -1));
            lua_pop(L, 1);
            break;
        }
        lua_pop(L, 1);
        if (depth >= ENCODE_DEPTH)
            luaL_error(L, "tables nested more than %d deep", ENCODE_DEPTH);
        luaL_checkstack(L, 4, "encoding the declarations");
        lua_pushvalue(L, idx);
        lua_pushinteger(L, e->ids);
        lua_rawset(L, e->seen);
        put(&e->out, "T", 1);
        put_u32(&e->out, e->ids++);
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            int kt = lua_type(L, -2);

            if (kt != LUA_TSTRING && kt != LUA_TNUMBER && kt != LUA_TBOOLEAN)
                luaL_error(L, "a %s as a key is not data", lua_typename(L, kt));
            encode_value(L, e, -2, depth + 1);
            encode_value(L, e, -1, depth + 1);
            lua_pop(L, 1);
        }
        put(&e->out, "e", 1);
        break;
    default:
        luaL_error(L, "a %s is not data (a --safe recipe declares data only)",
                   luaL_typename(L, idx));
    }
    if (e->out.full)
        luaL_error(L, "the declarations are larger than the --safe budget");
}

/* Protected: encode the value at 1 into the encoder at upvalue-less lightuserdata 2. */
static int encode_protected(lua_State *L)
{
    encoder *e = lua_touserdata(L, 2);

    lua_newtable(L);
    e->seen = lua_gettop(L);
    put(&e->out, MAGIC, 4);
    encode_value(L, e, 1, 0);
    return 0;
}

/* ---------------------------------------------------------------- evaluating */

/* luaL_openlibs without io, os, package, coroutine: only what the environment takes
 * from (debug for the declarations' line numbers; the recipe never sees it). */
static void open_libs(lua_State *L)
{
    static const luaL_Reg libs[] = {
        {LUA_GNAME, luaopen_base},
        {LUA_STRLIBNAME, luaopen_string},
        {LUA_TABLIBNAME, luaopen_table},
        {LUA_MATHLIBNAME, luaopen_math},
        {LUA_UTF8LIBNAME, luaopen_utf8},
        {LUA_DBLIBNAME, luaopen_debug},
        {NULL, NULL},
    };
    static const char *const drop[] = {"dofile",         "loadfile", "load",
                                       "collectgarbage", "print",    NULL};
    const luaL_Reg *l;
    const char *const *d;

    for (l = libs; l->func; l++) {
        luaL_requiref(L, l->name, l->func, 1);
        lua_pop(L, 1);
    }
    /* os: getenv and time, taken from the library, which is then dropped. */
    luaopen_os(L);
    lua_createtable(L, 0, 2);
    lua_getfield(L, -2, "getenv");
    lua_setfield(L, -2, "getenv");
    lua_getfield(L, -2, "time");
    lua_setfield(L, -2, "time");
    lua_setglobal(L, LUA_OSLIBNAME);
    lua_pop(L, 1);
    /* Nothing in this state reads files or compiles code but the loader below. */
    for (d = drop; *d; d++) {
        lua_pushnil(L);
        lua_setglobal(L, *d);
    }
}

typedef struct eval {
    const safe_input *in;
    encoder enc;
} eval;

/* Protected, in the fresh state: declare.lua, the environment, the recipe, the data
 * check, the encoding. */
static int eval_protected(lua_State *L)
{
    eval *ev = lua_touserdata(L, 1);
    const safe_input *in = ev->in;
    int declare, col, env;

    open_libs(L);
    if (luaL_loadbufferx(L, in->declare_src, in->declare_len, "=smolvm.declare", "t") != LUA_OK)
        return lua_error(L);
    lua_call(L, 0, 1);
    declare = lua_gettop(L);

    lua_getfield(L, declare, "collector");
    lua_call(L, 0, 1);
    col = lua_gettop(L);

    /* env = declare.env("safe", _G, declare.functions(col, debug.getinfo) plus
     * { pcall =, xpcall = }): sandbox, image, ... */
    lua_getfield(L, declare, "env");
    lua_pushliteral(L, "safe");
    lua_pushglobaltable(L);
    lua_getfield(L, declare, "functions");
    lua_pushvalue(L, col);
    lua_getglobal(L, LUA_DBLIBNAME);
    lua_getfield(L, -1, "getinfo");
    lua_remove(L, -2);
    lua_call(L, 2, 1);
    lua_pushcfunction(L, safe_pcall);
    lua_setfield(L, -2, "pcall");
    lua_pushcfunction(L, safe_xpcall);
    lua_setfield(L, -2, "xpcall");
    lua_call(L, 3, 1);
    env = lua_gettop(L);

    /* Text only: a precompiled chunk can break the VM's invariants. */
    if (luaL_loadbufferx(L, in->src, in->len, in->name, "t") != LUA_OK)
        return lua_error(L);
    lua_pushvalue(L, env);
    if (!lua_setupvalue(L, -2, 1))
        lua_pop(L, 1);
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_EVERY);
    lua_call(L, 0, 0);

    /* Only data leaves: say where a function or the like was declared. */
    lua_getfield(L, declare, "check_data");
    lua_getfield(L, col, "declared");
    lua_call(L, 1, 1);
    if (lua_isstring(L, -1)) {
        lua_pushfstring(L, "%s: %s", display_name(in->name), lua_tostring(L, -1));
        return lua_error(L);
    }
    lua_pop(L, 1);

    lua_pushcfunction(L, encode_protected);
    lua_getfield(L, col, "declared");
    lua_pushlightuserdata(L, &ev->enc);
    lua_call(L, 2, 0);
    return 0;
}

int safe_eval(const safe_input *in, const safe_limits *lim, char **out, size_t *outlen, char **err)
{
    budget b = {.chunk = in->name, .limit = lim->memory, .instructions = lim->instructions};
    eval ev = {.in = in, .enc = {.out = {.limit = lim->memory}}};
    lua_State *L = lua_newstate(budget_alloc, &b);
    int status;

    if (!L) {
        *err = strdup("cannot create the --safe Lua state: not enough memory");
        return -1;
    }
    lua_pushcfunction(L, eval_protected);
    lua_pushlightuserdata(L, &ev);
    status = lua_pcall(L, 1, 0, 0);
    if (status == LUA_OK && !b.mem_exceeded && !b.instr_exceeded) {
        /* Finalizers the recipe left run at close, inside what is left of the budget. */
        lua_close(L);
        *out = ev.enc.out.data;
        *outlen = ev.enc.out.len;
        return 0;
    }
    if (b.mem_exceeded && !b.instr_exceeded)
        *err = strdupf("%s: the recipe needed more than %zu MiB of memory (the --safe budget)",
                       display_name(in->name), lim->memory >> 20);
    else if (lua_type(L, -1) == LUA_TSTRING)
        *err = strdup(lua_tostring(L, -1));
    else
        *err = strdupf("%s: the recipe raised an error that is not a string (a %s)",
                       display_name(in->name), luaL_typename(L, -1));
    /* Whatever finalizers the recipe left run at close with the budget spent: each
     * stops at its first instruction. */
    b.instr_exceeded = 1;
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
    lua_close(L);
    free(ev.enc.out.data);
    if (!*err)
        *err = strdup("not enough memory");
    return -1;
}

/* ---------------------------------------------------------------- decoding */

typedef struct decoder {
    const unsigned char *p, *end;
    int refs;
    uint32_t tables;
    unsigned long values;
    const char *why;
} decoder;

static void __attribute__((noreturn)) bad(lua_State *L, decoder *d, const char *why)
{
    d->why = why;
    luaL_error(L, "%s", why);
    abort(); /* not reached: luaL_error does not return */
}

static uint64_t get_u(lua_State *L, decoder *d, int n)
{
    uint64_t v = 0;
    int i;

    if (d->end - d->p < n)
        bad(L, d, "truncated");
    for (i = 0; i < n; i++)
        v |= (uint64_t)d->p[i] << (8 * i);
    d->p += n;
    return v;
}

static void decode_value(lua_State *L, decoder *d, int depth)
{
    int tag;

    if (d->p >= d->end)
        bad(L, d, "truncated");
    if (++d->values > DECODE_VALUES)
        bad(L, d, "too many values");
    tag = *d->p++;
    switch (tag) {
    case 'n': lua_pushnil(L); break;
    case 'f': lua_pushboolean(L, 0); break;
    case 't': lua_pushboolean(L, 1); break;
    case 'i': lua_pushinteger(L, (lua_Integer)get_u(L, d, 8)); break;
    case 'd': {
        uint64_t bits = get_u(L, d, 8);
        double v;

        memcpy(&v, &bits, sizeof(v));
        lua_pushnumber(L, v);
        break;
    }
    case 's': {
        uint64_t n = get_u(L, d, 4);

        if (n > (uint64_t)(d->end - d->p))
            bad(L, d, "truncated string");
        lua_pushlstring(L, (const char *)d->p, (size_t)n);
        d->p += n;
        break;
    }
    case 'r': {
        uint64_t id = get_u(L, d, 4);

        if (id >= d->tables)
            bad(L, d, "reference to an unknown table");
        lua_rawgeti(L, d->refs, (lua_Integer)id + 1);
        break;
    }
    case 'T': {
        uint64_t id = get_u(L, d, 4);
        int t;

        if (id != d->tables)
            bad(L, d, "tables out of order");
        if (depth >= DECODE_DEPTH)
            bad(L, d, "tables nested too deep");
        luaL_checkstack(L, 4, "decoding the declarations");
        lua_newtable(L);
        t = lua_gettop(L);
        lua_pushvalue(L, t);
        lua_rawseti(L, d->refs, (lua_Integer)++d->tables);
        for (;;) {
            if (d->p >= d->end)
                bad(L, d, "truncated table");
            if (*d->p == 'e') {
                d->p++;
                break;
            }
            decode_value(L, d, depth + 1);
            if (lua_isnil(L, -1) || (lua_type(L, -1) == LUA_TNUMBER && isnan(lua_tonumber(L, -1))))
                bad(L, d, "a key that cannot be one");
            if (lua_type(L, -1) == LUA_TTABLE)
                bad(L, d, "a table as a key");
            decode_value(L, d, depth + 1);
            lua_rawset(L, t);
        }
        break;
    }
    default: bad(L, d, "unknown tag");
    }
}

static int decode_protected(lua_State *L)
{
    decoder *d = lua_touserdata(L, 1);

    lua_newtable(L);
    d->refs = lua_gettop(L);
    if (d->end - d->p < 4 || memcmp(d->p, MAGIC, 4) != 0)
        bad(L, d, "not a --safe result");
    d->p += 4;
    decode_value(L, d, 0);
    if (d->p != d->end)
        bad(L, d, "bytes after the value");
    return 1;
}

int safe_decode(lua_State *L, const char *buf, size_t len, const char **err)
{
    decoder d = {.p = (const unsigned char *)buf, .end = (const unsigned char *)buf + len};
    int top = lua_gettop(L);

    if (!lua_checkstack(L, 8)) {
        *err = "out of stack";
        return -1;
    }
    lua_pushcfunction(L, decode_protected);
    lua_pushlightuserdata(L, &d);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        *err = d.why ? d.why : "not enough memory";
        lua_settop(L, top);
        return -1;
    }
    return 0;
}
