/* SPDX-License-Identifier: MIT */
/* Running short-lived helper programs (qemu-img, ...) to completion. */
#ifndef SMOLVM_TOOL_H
#define SMOLVM_TOOL_H

#include <stdint.h>

#include "smolvm.h"

/* Run argv (argv[0] a path or a name looked up in PATH) with stdin from /dev/null,
 * wait for it with a deadline (monotonic ms; the child is killed past it:
 * SMOLVM_ETIMEDOUT), and collect up to 64 KiB of its combined stdout+stderr, trailing
 * newlines removed, into *output (may be NULL). Exit status 0 returns 0; any other is
 * SMOLVM_EIO naming the program, its status and its output; a program that cannot be
 * spawned gives the errno's code (SMOLVM_ENOENT when it does not exist). */
int smolvm_tool_run(char *const argv[], int64_t deadline, char **output, smolvm_error **err);

#endif
