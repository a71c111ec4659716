/* SPDX-License-Identifier: MIT */
/* Context creation: the state directory it will trust (L5 in docs/security.md) and the
 * host limits it resolves from options and the environment. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "context.h"
#include "error.h"
#include "util.h"

static char dir[] = "/tmp/smolvm-test-ctx-XXXXXX";

static int setup(void **state)
{
    (void)state;
    (void)unsetenv("SMOLVM_DOWNLOAD_MAX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return smolvm_rm_rf(dir, NULL);
}

static char *sub(const char *name)
{
    char *p = smolvm_strdupf("%s/%s", dir, name);

    assert_non_null(p);
    return p;
}

/* Context creation in state directory `path`: 0 or the error's code; msg gets its
 * message (or ""). */
static int open_in(const char *path, char *msg, size_t size)
{
    smolvm_ctx_options o = SMOLVM_CTX_OPTIONS_INIT;
    smolvm_ctx *ctx = NULL;
    smolvm_error *err = NULL;
    int r;

    o.state_dir = path;
    r = smolvm_ctx_new(&ctx, &o, &err);
    (void)snprintf(msg, size, "%s", err ? smolvm_error_message(err) : "");
    smolvm_error_free(err);
    smolvm_ctx_free(ctx);
    return r;
}

static bool has_db(const char *path)
{
    char *db = smolvm_strdupf("%s/smolvm.db", path);
    bool yes = access(db, F_OK) == 0;

    free(db);
    return yes;
}

static void test_fresh_and_private_dirs(void **state)
{
    char msg[512], *fresh = sub("fresh/state"), *priv = sub("private");
    struct stat st;

    (void)state;
    assert_int_equal(open_in(fresh, msg, sizeof(msg)), 0);
    assert_int_equal(stat(fresh, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0700);
    assert_true(has_db(fresh));
    /* Readable by others is not a problem; writable would be. */
    assert_int_equal(mkdir(priv, 0700), 0);
    assert_int_equal(chmod(priv, 0755), 0);
    assert_int_equal(open_in(priv, msg, sizeof(msg)), 0);
    free(fresh);
    free(priv);
}

static void test_writable_by_others_refused(void **state)
{
    static const struct {
        unsigned mode;
        const char *who;
    } cases[] = {
        {0770, "writable by its group (mode 0770)"},
        {0703, "writable by others (mode 0703)"},
        {0777, "writable by group and others (mode 0777)"},
        {01777, "writable by group and others (mode 1777)"}, /* sticky like /tmp: still no */
    };
    char msg[512], want[600];

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *d = smolvm_strdupf("%s/open-%zu", dir, i);

        assert_non_null(d);
        assert_int_equal(mkdir(d, 0700), 0);
        assert_int_equal(chmod(d, cases[i].mode), 0);
        assert_int_equal(open_in(d, msg, sizeof(msg)), SMOLVM_EPERM);
        (void)snprintf(want, sizeof(want), "state directory '%s' is %s (chmod go-w '%s')", d,
                       cases[i].who, d);
        assert_string_equal(msg, want);
        assert_false(has_db(d)); /* refused before anything was made in it */
        free(d);
    }
}

static void test_foreign_owner_refused(void **state)
{
    char msg[512], *d = sub("theirs"), want[700];

    (void)state;
    if (geteuid() != 0) {
        print_message("skip: making a directory owned by someone else needs root\n");
        free(d);
        return;
    }
    assert_int_equal(mkdir(d, 0700), 0);
    assert_int_equal(chown(d, 65534, 65534), 0);
    assert_int_equal(open_in(d, msg, sizeof(msg)), SMOLVM_EPERM);
    (void)snprintf(want, sizeof(want),
                   "state directory '%s' belongs to uid 65534, not to this user (uid 0) (use a "
                   "state directory of your own: $SMOLVM_STATE_DIR or "
                   "smolvm_ctx_options.state_dir)",
                   d);
    assert_string_equal(msg, want);
    assert_false(has_db(d));
    free(d);
}

static void test_not_a_directory(void **state)
{
    char msg[512], *f = sub("a-file");
    FILE *fp = fopen(f, "w");

    (void)state;
    assert_non_null(fp);
    (void)fclose(fp);
    assert_true(open_in(f, msg, sizeof(msg)) < 0);
    assert_non_null(strstr(msg, f));
    free(f);
}

/* download_max: the option, else $SMOLVM_DOWNLOAD_MAX, else 1 GiB. */
static void test_download_max(void **state)
{
    smolvm_ctx_options o = SMOLVM_CTX_OPTIONS_INIT;
    smolvm_ctx *ctx = NULL;
    smolvm_error *err = NULL;
    char *d = sub("dl");

    (void)state;
    o.state_dir = d;
    assert_int_equal(smolvm_ctx_new(&ctx, &o, &err), 0);
    assert_true(ctx->download_max == SMOLVM_DOWNLOAD_MAX_DEFAULT);
    ctx = smolvm_ctx_free(ctx);
    (void)setenv("SMOLVM_DOWNLOAD_MAX", "4096", 1);
    assert_int_equal(smolvm_ctx_new(&ctx, &o, &err), 0);
    assert_true(ctx->download_max == 4096);
    ctx = smolvm_ctx_free(ctx);
    o.download_max = 100; /* the option wins */
    assert_int_equal(smolvm_ctx_new(&ctx, &o, &err), 0);
    assert_true(ctx->download_max == 100);
    ctx = smolvm_ctx_free(ctx);
    o.download_max = 0;
    (void)setenv("SMOLVM_DOWNLOAD_MAX", "1k", 1);
    assert_int_equal(smolvm_ctx_new(&ctx, &o, &err), SMOLVM_EINVAL);
    assert_non_null(strstr(smolvm_error_message(err), "SMOLVM_DOWNLOAD_MAX"));
    err = smolvm_error_free(err);
    (void)unsetenv("SMOLVM_DOWNLOAD_MAX");
    free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fresh_and_private_dirs),
        cmocka_unit_test(test_writable_by_others_refused),
        cmocka_unit_test(test_foreign_owner_refused),
        cmocka_unit_test(test_not_a_directory),
        cmocka_unit_test(test_download_max),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
