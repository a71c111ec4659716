/* SPDX-License-Identifier: MIT */
#include "error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* When even the message cannot be allocated, errors still carry their code. */
static char oom_message[] = "out of memory";

static smolvm_error oom_error = {SMOLVM_ENOMEM, oom_message};

static void set_message(smolvm_error **err, int code, char *msg)
{
    smolvm_error *e;

    if (!err || *err) {
        free(msg);
        return;
    }
    e = malloc(sizeof(*e));
    if (!e || !msg) {
        free(e);
        free(msg);
        *err = &oom_error;
        return;
    }
    e->code = code;
    e->message = msg;
    *err = e;
}

int smolvm_err(smolvm_error **err, int code, const char *fmt, ...)
{
    va_list ap;
    char *msg = NULL;

    if (err && !*err) {
        va_start(ap, fmt);
        if (vasprintf(&msg, fmt, ap) < 0)
            msg = NULL;
        va_end(ap);
        set_message(err, code, msg);
    }
    return code;
}

int smolvm_code_from_errno(int errnum)
{
    switch (errnum) {
    case ENOENT:
    case ENOTDIR: return SMOLVM_ENOENT;
    case EEXIST:
    case EADDRINUSE: return SMOLVM_EEXIST;
    case EACCES:
    case EPERM: return SMOLVM_EPERM;
    case ETIMEDOUT: return SMOLVM_ETIMEDOUT;
    case ENOMEM: return SMOLVM_ENOMEM;
    case EINVAL: return SMOLVM_EINVAL;
    case ENOSPC: return SMOLVM_ENOSPC;
    default: return SMOLVM_EIO;
    }
}

int smolvm_err_errno(smolvm_error **err, int errnum, const char *fmt, ...)
{
    int code = smolvm_code_from_errno(errnum);
    va_list ap;
    char *head = NULL, *msg = NULL;

    if (err && !*err) {
        va_start(ap, fmt);
        if (vasprintf(&head, fmt, ap) < 0)
            head = NULL;
        va_end(ap);
        if (head && asprintf(&msg, "%s: %s", head, strerror(errnum)) < 0)
            msg = NULL;
        free(head);
        set_message(err, code, msg);
    }
    return code;
}

static int rewrite(smolvm_error **err, const char *fmt, va_list ap, int prefix)
    __attribute__((format(printf, 2, 0)));
static int rewrite(smolvm_error **err, const char *fmt, va_list ap, int prefix)
{
    char *extra = NULL, *msg = NULL;
    int r;

    if (!err || !*err)
        return SMOLVM_EIO;
    if ((*err)->message == oom_message)
        return (*err)->code;
    if (vasprintf(&extra, fmt, ap) < 0)
        return (*err)->code;
    if (prefix)
        r = asprintf(&msg, "%s: %s", extra, (*err)->message);
    else
        r = asprintf(&msg, "%s (%s)", (*err)->message, extra);
    free(extra);
    if (r < 0)
        return (*err)->code;
    free((*err)->message);
    (*err)->message = msg;
    return (*err)->code;
}

int smolvm_err_wrap(smolvm_error **err, const char *fmt, ...)
{
    va_list ap;
    int r;

    va_start(ap, fmt);
    r = rewrite(err, fmt, ap, 1);
    va_end(ap);
    return r;
}

int smolvm_err_hint(smolvm_error **err, const char *fmt, ...)
{
    va_list ap;
    int r;

    va_start(ap, fmt);
    r = rewrite(err, fmt, ap, 0);
    va_end(ap);
    return r;
}

int smolvm_error_code(const smolvm_error *e)
{
    return e ? e->code : SMOLVM_OK;
}

const char *smolvm_error_message(const smolvm_error *e)
{
    return e && e->message ? e->message : "no error";
}

const char *smolvm_error_name(int code)
{
    switch (code) {
    case SMOLVM_OK: return "OK";
    case SMOLVM_EINVAL: return "EINVAL";
    case SMOLVM_ENOENT: return "ENOENT";
    case SMOLVM_EEXIST: return "EEXIST";
    case SMOLVM_ETIMEDOUT: return "ETIMEDOUT";
    case SMOLVM_EVMM: return "EVMM";
    case SMOLVM_EIO: return "EIO";
    case SMOLVM_ENOMEM: return "ENOMEM";
    case SMOLVM_EDB: return "EDB";
    case SMOLVM_EPERM: return "EPERM";
    case SMOLVM_EHOST: return "EHOST";
    case SMOLVM_ESSH: return "ESSH";
    case SMOLVM_ENOSPC: return "ENOSPC";
    case SMOLVM_ESTATE: return "ESTATE";
    case SMOLVM_ENET: return "ENET";
    case SMOLVM_EINTR: return "EINTR";
    default: return "EUNKNOWN";
    }
}

smolvm_error *smolvm_error_free(smolvm_error *e)
{
    if (e && e != &oom_error) {
        free(e->message);
        free(e);
    }
    return NULL;
}
