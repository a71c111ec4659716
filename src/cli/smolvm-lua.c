/* SPDX-License-Identifier: MIT */
/*
 * smolvm-lua: a Lua 5.4 interpreter with smolvm built in (docs/smolvm-lua.md).
 *
 *   smolvm-lua [options] [script [args]]
 *     -e stat   execute string 'stat'          -v        print version
 *     --check / --json / --keep / --quiet      recipe options (smolvm.recipe)
 *     --safe    recipe from an untrusted source: evaluated in a budgeted, restricted
 *               Lua state in a child process (safe-recipe.c); only its data returns
 *     --only NAME                              recipe: run that sandbox alone
 *     --slurm [--partition P] [--account A] [--time T] [--wait S]
 *                                              recipe: one Slurm job per sandbox
 *     -         run stdin                      --        stop handling options
 *
 * Like lua.c: `arg` holds the script name at 0, its arguments at 1..n and the
 * interpreter and options at negative indices; errors print a traceback and exit 1.
 * Unlike lua.c there is no REPL. require "smolvm" works without LUA_PATH: smolvm.core
 * is linked in (package.preload) and the facade directory is put first on
 * package.path, the source tree's when running from the build tree, else the
 * installed one.
 *
 * Recipes: before a script runs, smolvm.recipe's begin{check=, json=, keep=, quiet=,
 * safe=, only=, slurm=, partition=, account=, time=, wait=, file=, exe=} installs the
 * declaration functions `sandbox` and `image` (file: the script's path, exe: this
 * binary's, both for the Slurm jobs that rerun the recipe on other nodes); after it
 * returns, finish() runs what was declared and gives the exit status. A script that
 * does not load (syntax error) then exits 2, the "invalid recipe" status.
 *
 * Trust: without --safe the file is host code (every standard library). --check loads
 * it with recipe.load, in an environment with no host side effect; a file that raises
 * there (os.execute is not available under --check) is an invalid recipe. --safe
 * never runs the file in this state: safe_eval_forked() evaluates it and returns its
 * declarations as data, which recipe.finish(declared) validates and runs.
 *
 * SIGINT/SIGTERM make libsmolvm's blocking waits give up (smolvm_interrupt) and raise
 * the Lua error "interrupted" at the next Lua instruction (lua.c's laction), so
 * smolvm.with and <close> tear sandboxes down; VMs still owned by a Lua
 * object are deleted when the state is closed. The exit status is then 128 + signal.
 * A second signal kills the process at once.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "binding.h"
#include "safe-recipe.h"

#define PROGNAME "smolvm-lua"

#define EXIT_LOAD_RECIPE 2

static volatile sig_atomic_t got_signal;
static lua_State *volatile signal_state;

static void usage(FILE *f)
{
    fprintf(f, "usage: " PROGNAME " [options] [script [args]]\n"
               "Available options are:\n"
               "  -e stat   execute string 'stat'\n"
               "  -v        show version information\n"
               "  --check   recipe: validate only, run nothing (no host side effect)\n"
               "  --json    recipe: print a machine-readable result on stdout\n"
               "  --keep    recipe: keep every sandbox when done\n"
               "  --quiet   recipe: do not show the steps' output as it comes\n"
               "  --safe    recipe from an untrusted source: declarations and data only,\n"
               "            in a restricted, budgeted Lua state (without it a recipe is\n"
               "            host code)\n"
               "  --only NAME  recipe: run only the sandbox NAME\n"
               "  --slurm   recipe: run each sandbox as a Slurm job (docs/cluster.md)\n"
               "  --partition P, --account A, --time T\n"
               "            with --slurm: passed to sbatch\n"
               "  --wait S  with --slurm: give up on the jobs after S seconds (3600)\n"
               "  -h        show this help\n"
               "  --        stop handling options\n"
               "  -         stop handling options and execute stdin\n");
}

/* ---------------------------------------------------------------- signals */

/* Back in Lua after the signal: the library's blocking call (if any) has given up.
 * Clear the library's interrupt before raising, so the teardown that the error
 * triggers (stop, delete) is not cut short too. The message names the signal:
 * smolvm.recipe maps "TERM" to status 143. */
static void interrupt_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    lua_sethook(L, NULL, 0, 0);
    smolvm_interrupt_clear();
    luaL_error(L, "interrupted (%s)", got_signal == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void on_signal(int sig)
{
    lua_State *L = signal_state;

    got_signal = sig;
    signal(sig, SIG_DFL);     /* a second one terminates at once */
    smolvm_lua_tty_restore(); /* a raw terminal (smolvm shell) is itself again now */
    if (L) {
        /* A wait inside libsmolvm (boot, command) gives up with SMOLVM_EINTR, killing
         * a running command in the guest, so control returns to Lua promptly. */
        smolvm_interrupt();
        lua_sethook(L, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
    }
}

static void install_signals(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    /* No SA_RESTART: a blocking wait in the library returns early (EINTR) instead of
     * running out its timeout before the teardown can start. */
    sa.sa_flags = 0;
    (void)sigaction(SIGINT, &sa, NULL);
    (void)sigaction(SIGTERM, &sa, NULL);
}

/* ---------------------------------------------------------------- running */

static int msghandler(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);

    if (!msg) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

static void report(lua_State *L)
{
    const char *msg = lua_tostring(L, -1);

    fprintf(stderr, "%s: %s\n", PROGNAME, msg ? msg : "(error object is not a string)");
    fflush(stderr);
    lua_pop(L, 1);
}

/* Call the function below its narg arguments; errors get a traceback. */
static int docall(lua_State *L, int narg, int nres)
{
    int base = lua_gettop(L) - narg, r;

    lua_pushcfunction(L, msghandler);
    lua_insert(L, base);
    signal_state = L;
    r = lua_pcall(L, narg, nres, base);
    lua_remove(L, base);
    return r;
}

static int dostring(lua_State *L, const char *s)
{
    int r = luaL_loadbuffer(L, s, strlen(s), "=(command line)");

    if (r == LUA_OK)
        r = docall(L, 0, 0);
    if (r != LUA_OK)
        report(L);
    return r;
}

/* package.preload["smolvm.core"] and the facade directory first on package.path. */
static void setup_package(lua_State *L)
{
    const char *dir = SMOLVM_INSTALL_LUA_DIR;
    char exe[PATH_MAX], *slash, *build;
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

    if (n > 0) {
        exe[n] = '\0';
        if ((slash = strrchr(exe, '/')))
            *slash = '\0';
        build = realpath(SMOLVM_BUILD_DIR, NULL);
        if (build && strcmp(build, exe) == 0)
            dir = SMOLVM_SOURCE_LUA_DIR;
        free(build);
    }
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_smolvm_core);
    lua_setfield(L, -2, "smolvm.core");
    lua_pop(L, 1);
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", dir, dir,
                    lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);
}

/* arg: script at 0, its arguments at 1.., interpreter and options below 0. */
static void create_arg_table(lua_State *L, char **argv, int argc, int script)
{
    int i;

    lua_createtable(L, argc - script - 1 > 0 ? argc - script - 1 : 0, script + 1);
    for (i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - script);
    }
    lua_setglobal(L, "arg");
}

/* Find smolvm.recipe and call begin(opts). Leaves the module (or nil when there is no
 * recipe engine) on the stack. Returns a lua_pcall status. */
static const char recipe_begin_lua[] =
    "local opts = ...\n"
    "if not package.preload['smolvm.recipe'] and\n"
    "   not (package.searchpath and package.searchpath('smolvm.recipe', package.path)) then\n"
    "  return nil\n"
    "end\n"
    "local recipe = require 'smolvm.recipe'\n"
    "if type(recipe) ~= 'table' or type(recipe.begin) ~= 'function' then return nil end\n"
    "recipe.begin(opts)\n"
    "return recipe\n";

/* The recipe options of the command line (strings borrowed from argv). */
typedef struct recipe_opts {
    int check, json, keep, slurm, quiet, safe;
    const char *only, *partition, *account, *time, *wait;
} recipe_opts;

static void set_str(lua_State *L, const char *key, const char *v)
{
    if (v) {
        lua_pushstring(L, v);
        lua_setfield(L, -2, key);
    }
}

static int recipe_begin(lua_State *L, const recipe_opts *o, const char *fname)
{
    int r = luaL_loadbuffer(L, recipe_begin_lua, sizeof(recipe_begin_lua) - 1, "=recipe");
    char *exe;

    if (r != LUA_OK)
        return r;
    lua_createtable(L, 0, 13);
    lua_pushboolean(L, o->quiet);
    lua_setfield(L, -2, "quiet");
    lua_pushboolean(L, o->safe);
    lua_setfield(L, -2, "safe");
    lua_pushboolean(L, o->check);
    lua_setfield(L, -2, "check");
    lua_pushboolean(L, o->json);
    lua_setfield(L, -2, "json");
    lua_pushboolean(L, o->keep);
    lua_setfield(L, -2, "keep");
    lua_pushboolean(L, o->slurm);
    lua_setfield(L, -2, "slurm");
    set_str(L, "only", o->only);
    set_str(L, "partition", o->partition);
    set_str(L, "account", o->account);
    set_str(L, "time", o->time);
    set_str(L, "wait", o->wait);
    set_str(L, "file", fname && strcmp(fname, "-") != 0 ? fname : NULL);
    exe = realpath("/proc/self/exe", NULL);
    set_str(L, "exe", exe);
    free(exe);
    return docall(L, 1, 1);
}

/* recipe.finish([declared]) -> exit status (integer; nil/true 0, false 1). narg: 1
 * when the declarations (--safe) are on top of the stack. */
static int recipe_finish(lua_State *L, int recipe_idx, int narg, int *status)
{
    int r;

    lua_getfield(L, recipe_idx, "finish");
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 1 + narg);
        *status = 0;
        return LUA_OK;
    }
    if (narg)
        lua_insert(L, -2); /* finish, declared */
    r = docall(L, narg, 1);
    if (r != LUA_OK)
        return r;
    if (lua_isinteger(L, -1))
        *status = (int)(lua_tointeger(L, -1) & 0xff);
    else if (lua_isboolean(L, -1))
        *status = lua_toboolean(L, -1) ? 0 : 1;
    else if (lua_isnil(L, -1))
        *status = 0;
    else
        *status = 1;
    lua_pop(L, 1);
    return LUA_OK;
}

/* The file did not load (syntax error) with a recipe engine present: an invalid
 * recipe. recipe.load_error(msg) reports it (as JSON with --json) and gives the
 * status; without it, print the message and exit 2. */
static int recipe_load_error(lua_State *L, int recipe_idx)
{
    int status = EXIT_LOAD_RECIPE;

    lua_getfield(L, recipe_idx, "load_error");
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 1);
        report(L);
        return status;
    }
    lua_insert(L, -2); /* load_error, msg */
    if (docall(L, 1, 1) != LUA_OK) {
        report(L);
        return status;
    }
    if (lua_isinteger(L, -1))
        status = (int)(lua_tointeger(L, -1) & 0xff);
    lua_pop(L, 1);
    return status;
}

/* The whole of a file (or stdin for "-"), at most max bytes: malloc'd, or NULL with
 * a message on the Lua stack. */
static char *read_whole(lua_State *L, const char *fname, size_t max, size_t *len)
{
    int stdin_ = strcmp(fname, "-") == 0;
    FILE *f = stdin_ ? stdin : fopen(fname, "rb");
    size_t n = 0, cap = 0;
    char *buf = NULL;

    if (!f) {
        lua_pushfstring(L, "cannot open %s: %s", fname, strerror(errno));
        return NULL;
    }
    for (;;) {
        size_t got;

        if (n == cap) {
            char *nb;

            cap = cap ? cap * 2 : 65536;
            if (cap > max + 1)
                cap = max + 1;
            if (n == cap || !(nb = realloc(buf, cap))) {
                lua_pushfstring(L, "%s is larger than %d MiB", fname, (int)(max >> 20));
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) {
                lua_pushfstring(L, "cannot read %s: %s", fname, strerror(errno));
                free(buf);
                buf = NULL;
            }
            break;
        }
    }
    if (!stdin_)
        fclose(f);
    if (buf && n > max) {
        lua_pushfstring(L, "%s is larger than %d MiB", fname, (int)(max >> 20));
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

/* --safe: evaluate the file elsewhere, then recipe.finish(its declarations). */
static int run_safe(lua_State *L, const char *fname, int recipe_idx)
{
    static const char find_declare[] = "return package.searchpath('smolvm.declare', package.path)";
    safe_limits lim = SAFE_LIMITS_INIT;
    safe_input in = {0};
    char *src = NULL, *dsrc = NULL, *out = NULL, *err = NULL;
    const char *derr, *dpath;
    size_t len = 0, dlen = 0, outlen = 0;
    int status;

    if (!(src = read_whole(L, fname, SAFE_MEMORY_DEFAULT, &len)))
        return recipe_load_error(L, recipe_idx);
    if (luaL_loadstring(L, find_declare) != LUA_OK || docall(L, 0, 1) != LUA_OK ||
        !(dpath = lua_tostring(L, -1))) {
        free(src);
        lua_pushliteral(L, "--safe: smolvm.declare not found on package.path");
        return recipe_load_error(L, recipe_idx);
    }
    dsrc = read_whole(L, dpath, 1 << 20, &dlen);
    lua_remove(L, dsrc ? -1 : -2); /* the path */
    if (!dsrc) {
        free(src);
        return recipe_load_error(L, recipe_idx);
    }
    lua_pushfstring(L, strcmp(fname, "-") == 0 ? "=stdin" : "@%s", fname);
    in = (safe_input){src, len, lua_tostring(L, -1), dsrc, dlen};
    lim.stop = &got_signal;
    status = safe_eval_forked(&in, &lim, &out, &outlen, &err);
    lua_pop(L, 1); /* the chunk name */
    free(src);
    free(dsrc);
    if (status < 0) {
        lua_pushstring(L, err ? err : "--safe: not enough memory");
        free(err);
        return recipe_load_error(L, recipe_idx);
    }
    if (safe_decode(L, out, outlen, &derr) < 0) {
        free(out);
        lua_pushfstring(L, "--safe: a malformed result from the evaluation (%s)", derr);
        return recipe_load_error(L, recipe_idx);
    }
    free(out);
    if (recipe_finish(L, recipe_idx, 1, &status) != LUA_OK) {
        report(L);
        return EXIT_FAILURE;
    }
    return status;
}

/* --check: recipe.load(fname) compiles the file in its restricted environment. */
static int load_checked(lua_State *L, int recipe_idx, const char *fname)
{
    lua_getfield(L, recipe_idx, "load");
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 1);
        return luaL_loadfile(L, strcmp(fname, "-") == 0 ? NULL : fname);
    }
    lua_pushstring(L, fname);
    if (docall(L, 1, 2) != LUA_OK)
        return LUA_ERRRUN;
    if (lua_isfunction(L, -2)) {
        lua_pop(L, 1);
        return LUA_OK;
    }
    lua_remove(L, -2);
    if (!lua_isstring(L, -1)) {
        lua_pop(L, 1);
        lua_pushliteral(L, "recipe.load failed");
    }
    return LUA_ERRSYNTAX;
}

static int run_script(lua_State *L, const char *fname, char **args, int nargs, const recipe_opts *o)
{
    int r, i, status = 0, recipe_idx;

    r = recipe_begin(L, o, fname);
    if (r != LUA_OK) {
        report(L);
        return EXIT_FAILURE;
    }
    recipe_idx = lua_gettop(L);
    if ((o->safe || o->check) && lua_isnil(L, recipe_idx)) {
        fprintf(stderr, "%s: --%s needs the recipe engine (smolvm.recipe) on package.path\n",
                PROGNAME, o->safe ? "safe" : "check");
        return EXIT_LOAD_RECIPE;
    }
    if (o->safe)
        return run_safe(L, fname, recipe_idx);

    if (o->check)
        r = load_checked(L, recipe_idx, fname);
    else
        r = luaL_loadfile(L, strcmp(fname, "-") == 0 ? NULL : fname);
    if (r != LUA_OK) {
        if (lua_isnil(L, recipe_idx)) {
            report(L);
            return EXIT_FAILURE;
        }
        return recipe_load_error(L, recipe_idx);
    }
    luaL_checkstack(L, nargs + 1, "too many arguments to script");
    for (i = 0; i < nargs; i++)
        lua_pushstring(L, args[i]);
    if (o->check) {
        /* What the file does that --check refuses is a mistake of the recipe: exit 2,
         * with the message alone (where it happened is in it). */
        signal_state = L;
        if (lua_pcall(L, nargs, 0, 0) != LUA_OK) {
            if (got_signal) {
                report(L);
                return EXIT_FAILURE;
            }
            return recipe_load_error(L, recipe_idx);
        }
    } else if (docall(L, nargs, 0) != LUA_OK) {
        report(L);
        return EXIT_FAILURE;
    }
    if (lua_isnil(L, recipe_idx))
        return EXIT_SUCCESS;
    if (recipe_finish(L, recipe_idx, 0, &status) != LUA_OK) {
        report(L);
        return EXIT_FAILURE;
    }
    return status;
}

/* "--name VALUE" or "--name=VALUE" at argv[*i]: sets *out (NULL past the end of argv,
 * with *i == argc) and returns 1; any other argument returns 0. */
static int option_value(int argc, char **argv, int *i, const char *name, const char **out)
{
    size_t n = strlen(name);
    const char *a = argv[*i];

    if (strncmp(a, name, n) != 0)
        return 0;
    if (a[n] == '=') {
        *out = a + n + 1;
        return 1;
    }
    if (a[n] != '\0')
        return 0;
    if (++*i >= argc) {
        *out = NULL;
        return 1;
    }
    *out = argv[*i];
    return 1;
}

int main(int argc, char **argv)
{
    int i, script = 0, has_e = 0, version = 0;
    int status = EXIT_SUCCESS;
    recipe_opts ro = {0};
    const char *fname = NULL;
    lua_State *L;

    if (argc < 1 || !argv[0]) {
        fprintf(stderr, "%s: no program name\n", PROGNAME);
        return EXIT_FAILURE;
    }
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];

        if (a[0] != '-')
            break;
        if (strcmp(a, "-") == 0)
            break;
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (strcmp(a, "-v") == 0) {
            version = 1;
        } else if (strncmp(a, "-e", 2) == 0) {
            has_e = 1;
            if (a[2] == '\0' && (++i >= argc || !argv[i])) {
                fprintf(stderr, "%s: '-e' needs argument\n", PROGNAME);
                usage(stderr);
                return EXIT_FAILURE;
            }
        } else if (strcmp(a, "--check") == 0) {
            ro.check = 1;
        } else if (strcmp(a, "--json") == 0) {
            ro.json = 1;
        } else if (strcmp(a, "--keep") == 0) {
            ro.keep = 1;
        } else if (strcmp(a, "--quiet") == 0) {
            ro.quiet = 1;
        } else if (strcmp(a, "--safe") == 0) {
            ro.safe = 1;
        } else if (strcmp(a, "--slurm") == 0) {
            ro.slurm = 1;
        } else if (option_value(argc, argv, &i, "--only", &ro.only) ||
                   option_value(argc, argv, &i, "--partition", &ro.partition) ||
                   option_value(argc, argv, &i, "--account", &ro.account) ||
                   option_value(argc, argv, &i, "--time", &ro.time) ||
                   option_value(argc, argv, &i, "--wait", &ro.wait)) {
            if (i >= argc) {
                fprintf(stderr, "%s: '%s' needs a value\n", PROGNAME, a);
                usage(stderr);
                return EXIT_FAILURE;
            }
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return EXIT_SUCCESS;
        } else {
            fprintf(stderr, "%s: unrecognized option '%s'\n", PROGNAME, a);
            usage(stderr);
            return EXIT_FAILURE;
        }
    }
    if (i < argc) {
        script = i;
        fname = argv[i];
    }

    L = luaL_newstate();
    if (!L) {
        fprintf(stderr, "%s: cannot create state: not enough memory\n", PROGNAME);
        return EXIT_FAILURE;
    }
    luaL_openlibs(L);
    setup_package(L);
    create_arg_table(L, argv, argc, script);
    install_signals();
    signal_state = L;

    if (version) {
        printf("%s %s (%s)\n", PROGNAME, SMOLVM_VERSION, LUA_RELEASE);
        fflush(stdout);
    }
    /* -e chunks in order, before the script. */
    for (i = 1; i < (script ? script : argc); i++) {
        const char *a = argv[i], *chunk;

        if (strcmp(a, "--") == 0 || strcmp(a, "-") == 0)
            break;
        if (strncmp(a, "-e", 2) != 0)
            continue;
        chunk = a[2] ? a + 2 : argv[++i];
        if (dostring(L, chunk) != LUA_OK) {
            status = EXIT_FAILURE;
            goto out;
        }
    }

    if (!fname && !has_e && !version) {
        if (isatty(STDIN_FILENO)) {
            usage(stderr);
            status = EXIT_FAILURE;
            goto out;
        }
        fname = "-";
    }
    if (fname)
        status = run_script(L, fname, script ? argv + script + 1 : NULL,
                            script ? argc - script - 1 : 0, &ro);

out:
    /* Closing the state runs __gc: VMs still owned by Lua objects are deleted. A signal
     * arriving now only records itself. */
    signal_state = NULL;
    lua_sethook(L, NULL, 0, 0);
    smolvm_interrupt_clear(); /* a signal not yet seen by Lua must not stop the teardown */
    lua_close(L);
    if (got_signal)
        status = 128 + got_signal;
    return status;
}
