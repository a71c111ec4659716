/* SPDX-License-Identifier: MIT */
/* Building errors inside the library. */
#ifndef SMOLVM_ERROR_H
#define SMOLVM_ERROR_H

#include "smolvm.h"

#include <stdarg.h>

struct smolvm_error {
    int code;
    char *message;
};

/* Set *err (when err is not NULL and *err is NULL) to a new error; returns code so
 * callers can `return smolvm_err(err, SMOLVM_EINVAL, "...")`. Message style:
 * lowercase, no final period, user values in single quotes. */
int smolvm_err(smolvm_error **err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Like smolvm_err, appending ": strerror(errnum)", the code chosen from errnum
 * (ENOENT -> SMOLVM_ENOENT, EACCES/EPERM -> SMOLVM_EPERM, ...). */
int smolvm_err_errno(smolvm_error **err, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefix the message of an existing *err with context: "start 'web': <old>".
 * Returns the error's code (or SMOLVM_EIO if there is no error). */
int smolvm_err_wrap(smolvm_error **err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Append " (hint)" to an existing *err. Returns its code. */
int smolvm_err_hint(smolvm_error **err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Map an errno value to a SMOLVM_E* code. */
int smolvm_code_from_errno(int errnum);

#endif
