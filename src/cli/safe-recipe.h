/* SPDX-License-Identifier: MIT */
/*
 * `smolvm-lua --safe FILE`: a recipe from an untrusted source, evaluated where it
 * cannot touch the host (docs/smolvm-lua.md, "--safe").
 *
 * The recipe runs in a Lua state of its own, made for it and thrown away after: its
 * environment holds the declarations (sandbox, image, template), string, table, math,
 * utf8, os.getenv and os.time and nothing else (lua/smolvm/declare.lua, "safe"); the state
 * has a memory budget (its allocator refuses past it) and an instruction budget (a
 * count hook), and pcall cannot catch either. safe_eval_forked() (safe-child.c) does
 * this in a child process that also has a CPU-time limit and a wall-clock deadline (a
 * Lua pattern can run long inside one instruction), no descriptor but its pipe and a
 * seccomp filter that allows computing and writing the result only.
 * What leaves that state is data only: the declarations, encoded by this file and
 * decoded into the caller's state by safe_decode().
 *
 * Encoding ("SMR1", then one value): 'n' nil, 'f' false, 't' true, 'i' int64 LE,
 * 'd' double (IEEE 754 bits, LE), 's' u32 LE length + bytes, 'T' u32 id + (key value)
 * pairs + 'e' (a table; ids count up from 0 in order of appearance), 'r' u32 id (a
 * table seen before, so shared tables and cycles survive).
 */
#ifndef SMOLVM_CLI_SAFE_RECIPE_H
#define SMOLVM_CLI_SAFE_RECIPE_H

#include <signal.h>
#include <stddef.h>

#include <lua.h>

typedef struct safe_limits {
    size_t memory;              /* bytes of Lua heap */
    unsigned long instructions; /* Lua VM instructions */
    unsigned cpu_seconds;       /* forked only: RLIMIT_CPU of the child */
    unsigned wall_seconds;      /* forked only: the parent's deadline */
    /* forked only: polled when a signal interrupts the wait; non-zero stops the child */
    const volatile sig_atomic_t *stop;
} safe_limits;

#define SAFE_MEMORY_DEFAULT (64u * 1024 * 1024)
#define SAFE_INSTRUCTIONS_DEFAULT 10000000ul
#define SAFE_CPU_SECONDS_DEFAULT 10u
#define SAFE_WALL_SECONDS_DEFAULT 30u
#define SAFE_LIMITS_INIT                                                                           \
    {                                                                                              \
        SAFE_MEMORY_DEFAULT, SAFE_INSTRUCTIONS_DEFAULT, SAFE_CPU_SECONDS_DEFAULT,                  \
            SAFE_WALL_SECONDS_DEFAULT, NULL                                                        \
    }

/* The recipe source, its chunk name ("@path" or "=stdin") and the source of
 * lua/smolvm/declare.lua (trusted: it provides the declarations). */
typedef struct safe_input {
    const char *src;
    size_t len;
    const char *name;
    const char *declare_src;
    size_t declare_len;
} safe_input;

/* Evaluate in this process. 0 with *out / *outlen the encoded list of declarations
 * (malloc'd, the caller frees); -1 with *err a message (malloc'd), e.g.
 * "recipe.lua:3: os.execute is not available in --safe recipes". */
int safe_eval(const safe_input *in, const safe_limits *lim, char **out, size_t *outlen, char **err);

/* The same in a child process (safe-child.c): adds the CPU limit, the deadline,
 * PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, rlimits and the seccomp filter. */
int safe_eval_forked(const safe_input *in, const safe_limits *lim, char **out, size_t *outlen,
                     char **err);

/* Push the value buf encodes onto L. 0, or -1 with *err a static message (the stack
 * as it was). Bounded: nesting, counts and lengths are checked against len. */
int safe_decode(lua_State *L, const char *buf, size_t len, const char **err);

#endif
