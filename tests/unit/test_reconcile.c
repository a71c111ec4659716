/* SPDX-License-Identifier: MIT */
/* The reconcile decision as a table: what a row needs, given what was observed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "util.h"
#include "vm-reconcile.h"

typedef struct decide_case {
    const char *status;
    bool alive, has_pid;
    smolvm_reconcile_action want;
} decide_case;

static void test_decide_table(void **state)
{
    static const decide_case cases[] = {
        {"running", true, true, SMOLVM_RECONCILE_NONE},
        {"running", false, true, SMOLVM_RECONCILE_DIED},
        {"running", false, false, SMOLVM_RECONCILE_DIED},
        /* a start or stop in progress whose lock is free: its controller is gone */
        {"starting", true, true, SMOLVM_RECONCILE_FINISH_START},
        {"starting", false, false, SMOLVM_RECONCILE_FINISH_START},
        {"stopping", true, true, SMOLVM_RECONCILE_FINISH_STOP},
        {"stopping", false, false, SMOLVM_RECONCILE_FINISH_STOP},
        /* paused is running with its CPUs stopped */
        {"paused", true, true, SMOLVM_RECONCILE_NONE},
        {"paused", false, true, SMOLVM_RECONCILE_DIED},
        {"suspending", true, true, SMOLVM_RECONCILE_FINISH_SUSPEND},
        {"suspending", false, false, SMOLVM_RECONCILE_FINISH_SUSPEND},
        {"suspended", false, false, SMOLVM_RECONCILE_NONE},
        {"suspended", true, false, SMOLVM_RECONCILE_KILL_ORPHAN},
        /* not running: nothing may be alive or recorded */
        {"created", false, false, SMOLVM_RECONCILE_NONE},
        {"stopped", false, false, SMOLVM_RECONCILE_NONE},
        {"error", false, false, SMOLVM_RECONCILE_NONE},
        {"stopped", true, false, SMOLVM_RECONCILE_KILL_ORPHAN},
        {"error", false, true, SMOLVM_RECONCILE_KILL_ORPHAN},
        {"created", true, true, SMOLVM_RECONCILE_KILL_ORPHAN},
        /* an unknown or missing status is treated as not running */
        {"bogus", false, false, SMOLVM_RECONCILE_NONE},
        {NULL, true, false, SMOLVM_RECONCILE_KILL_ORPHAN},
    };
    size_t i;

    (void)state;
    for (i = 0; i < SMOLVM_ARRAY_SIZE(cases); i++) {
        const decide_case *c = &cases[i];
        smolvm_reconcile_action got = smolvm_reconcile_decide(c->status, c->alive, c->has_pid);

        if (got != c->want)
            fail_msg("case %zu (%s, alive %d, pid %d): got %d, want %d", i,
                     c->status ? c->status : "NULL", c->alive, c->has_pid, got, c->want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decide_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
