/* SPDX-License-Identifier: MIT */
/*
 * Shared parts of the smolvm.core binding: the per-state context, the scratch box that
 * owns C results while they are pushed, JSON to Lua conversion and the
 * `nil, message, code` failure convention.
 */
#ifndef SMOLVM_LUA_BINDING_H
#define SMOLVM_LUA_BINDING_H

#include <jansson.h>

#include "compat.h"
#include "smolvm.h"

#define SMOLVM_LUA_VM_MT "smolvm.vm"
#define SMOLVM_LUA_PROC_MT "smolvm.proc"
#define SMOLVM_LUA_STORE_MT "smolvm.store"

/* The default smolvm_ctx of a Lua state, reference counted: the registry sentinel
 * holds one reference, every VM userdata one more, so the context outlives every VM
 * whatever order __gc runs in (lua_close finalizes everything at once). */
#define SMOLVM_LUA_LOG_MAX 16  /* log lines kept until taken; later ones are counted */
#define SMOLVM_LUA_LOG_LEN 512 /* bytes of one (cut beyond) */
typedef struct smolvm_lua_ctx {
    smolvm_ctx *ctx;
    int refs;
    /* Warnings and errors the library logged (when configure{log=} asked for them),
     * kept until smolvm_lua_push_log takes them: the library logs from inside a call,
     * where no Lua function may run. */
    struct {
        int level;
        char msg[SMOLVM_LUA_LOG_LEN];
    } log[SMOLVM_LUA_LOG_MAX];
    unsigned n_log, dropped;
} smolvm_lua_ctx;

void smolvm_lua_ctx_ref(smolvm_lua_ctx *c);
void smolvm_lua_ctx_unref(smolvm_lua_ctx *c);
/* Push { {level="warn", message=}, ... } of c's kept log lines and forget them. */
void smolvm_lua_push_log(lua_State *L, smolvm_lua_ctx *c);

/*
 * Owns what a C call hands back until it is converted, so that a Lua error raised by
 * a push (out of memory) frees it at the next collection instead of leaking it
 * (luaossl's prepsimple). Create the box before the call; everything in it is freed
 * by smolvm_lua_box_clear() or __gc, whichever comes first.
 */
typedef struct smolvm_lua_box {
    smolvm_error *err;
    char *text;
    json_t *json;
    smolvm_run_result *result;
    smolvm_proc *proc;
} smolvm_lua_box;

smolvm_lua_box *smolvm_lua_box_new(lua_State *L);
void smolvm_lua_box_clear(smolvm_lua_box *b);

/* The state's default context, created on first use. NULL with box->err set when it
 * cannot be created. */
smolvm_lua_ctx *smolvm_lua_ctx_get(lua_State *L, smolvm_lua_box *box);

/* Push nil, message, code from box->err (or a generic failure with `code` when the
 * library gave no error) and clear the box. Returns 3. */
int smolvm_lua_fail(lua_State *L, smolvm_lua_box *box, int code);

/* Parse box->text (JSON from the library) and push it as a Lua value. On a parse
 * failure pushes nil, message, "EIO" and returns 3; otherwise returns 1. Clears box. */
int smolvm_lua_push_json_text(lua_State *L, smolvm_lua_box *box);

/* A "smolvm.vm" userdata (vm.c), and the "smolvm.proc" handles made from it (proc.c):
 * they borrow its smolvm_vm, so closing the VM closes them first. */
typedef struct smolvm_lua_proc smolvm_lua_proc;
typedef struct smolvm_lua_job smolvm_lua_job;
typedef struct smolvm_lua_vm {
    smolvm_vm *vm;
    smolvm_lua_ctx *c; /* one reference, so the context outlives the handle */
    int owned;
    smolvm_lua_proc *procs;
    /* Made by a job (job.c): c is this handle's own context, and closing never blocks
     * (what it has to do runs on a thread). */
    int background;
    /* A job works on the handle: vm, c and owned are the job's until it is done. */
    smolvm_lua_job *lent;
} smolvm_lua_vm;

/* The VM userdata at idx, raising for another type or a closed VM. */
smolvm_lua_vm *smolvm_lua_check_vm(lua_State *L, int idx);
/* Push a proc handle made from the VM userdata at vm_idx, taking box->proc (the
 * userdata is made first, so a failing allocation leaves the proc to the box). */
void smolvm_lua_push_proc(lua_State *L, int vm_idx, smolvm_lua_box *box);
/* Close every proc handle of u (before u's VM is freed). */
void smolvm_lua_procs_close(smolvm_lua_vm *u);

/* Jobs (job.c). Take a lent handle back from its job once the job is done: 0, or -1
 * while the job still works on it. */
int smolvm_lua_job_take_back(smolvm_lua_vm *u);
/* Close a background handle without blocking: a lent one is closed by its job when
 * done, another on a thread of its own. */
void smolvm_lua_job_close_vm(smolvm_lua_vm *u);
/* core.vm_create(opts, true): the job that creates the VM described by o (its
 * strings borrowed from the stack; the job copies them). Pushes the job. */
int smolvm_lua_job_create(lua_State *L, const smolvm_vm_options *o);
/* vm:job(op, ...) */
int smolvm_lua_vm_job(lua_State *L);
/* A run result as the table vm:run returns. */
void smolvm_lua_push_run_result(lua_State *L, const smolvm_run_result *r);

/* Registration of each object type (called from luaopen_smolvm_core with the module
 * table on top). */
void smolvm_lua_open_store(lua_State *L);
void smolvm_lua_open_vm(lua_State *L);
void smolvm_lua_open_constants(lua_State *L);
void smolvm_lua_open_proc(lua_State *L);
void smolvm_lua_open_job(lua_State *L);
void smolvm_lua_open_image(lua_State *L); /* functions into the module table */
/* Host terminal, poll, log following (hostio.c): functions added to the module table. */
void smolvm_lua_open_hostio(lua_State *L);
/* Put back the terminal mode that core.tty_raw() changed, if any. Async-signal-safe:
 * smolvm-lua's SIGINT/SIGTERM handler calls it. */
void smolvm_lua_tty_restore(void);

/* Check that a method is called on an object: the object or a closed one raises. */
void smolvm_lua_closed_error(lua_State *L, const char *what);

int luaopen_smolvm_core(lua_State *L);

#endif
