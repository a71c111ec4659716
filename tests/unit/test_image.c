/* SPDX-License-Identifier: MIT */
/* Images: names, the list read from manifests, removal and what refuses it (a VM of the
 * store, a template, a build holding the lock, "default"), and the build driver run
 * against a stand-in build-image.sh (arguments, environment, lines, exit statuses,
 * cancel, timeout, interrupt, the process group killed). No real image is built here:
 * tests/integration/image_spec.lua does that. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "context.h"
#include "error.h"
#include "image.h"
#include "proc.h"
#include "store.h"
#include "util.h"
#include "vm-config.h"

typedef struct fixture {
    char dir[64];
    char images[128];
    char templates[128];
    char script[128];
    smolvm_ctx *ctx;
} fixture;

static void write_file(const char *path, const char *text, unsigned mode)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    assert_true(fputs(text, f) >= 0);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, mode), 0);
}

/* a/b[/c] */
static void join(char *out, size_t n, const char *a, const char *b, const char *c)
{
    (void)snprintf(out, n, "%s/%s%s%s", a, b, c ? "/" : "", c ? c : "");
}

static void mkdirp(const char *a, const char *b)
{
    char path[512];

    join(path, sizeof(path), a, b, NULL);
    assert_int_equal(smolvm_mkdir_p(path, 0755, NULL), 0);
}

static void writep(const char *text, const char *a, const char *b, const char *c)
{
    char path[512];

    join(path, sizeof(path), a, b, c);
    write_file(path, text, 0644);
}

static bool existsp(const char *a, const char *b, const char *c)
{
    char path[512];

    join(path, sizeof(path), a, b, c);
    return access(path, F_OK) == 0;
}

/* A stand-in for build-image.sh: what it does is read from $DIR/mode. */
static const char fake_script[] =
    "#!/bin/sh\n"
    "top=$(dirname \"$SMOLVM_IMAGE_DIR\")\n"
    "echo \"$*\" >\"$top/args\"\n"
    "echo \"$SMOLVM_IMAGE_DIR\" >\"$top/env\"\n"
    "for name; do :; done\n"
    "echo \"build-image: starting $name\"\n"
    "case $(cat \"$top/mode\") in\n"
    "build) mkdir -p \"$SMOLVM_IMAGE_DIR/.$name.tmp\" && rm -rf \"$SMOLVM_IMAGE_DIR/$name\" &&\n"
    "       mv \"$SMOLVM_IMAGE_DIR/.$name.tmp\" \"$SMOLVM_IMAGE_DIR/$name\"; echo built ;;\n"
    "uptodate) echo \"build-image: image '$name' is up to date\" ;;\n"
    "usage) echo \"build-image: invalid image name 'x'\" >&2; exit 2 ;;\n"
    "root) echo \"build-image: must be built, which needs root\" >&2; exit 3 ;;\n"
    "tool) echo \"build-image: 'flock' not found\" >&2; exit 4 ;;\n"
    "due) echo \"build-image: image '$name' would be built: not built yet\"; exit 5 ;;\n"
    "fail) printf 'build-rootfs: no such package: nope\\n\\n'; exit 1 ;;\n"
    "noisy) printf 'a\\tb\\033[31mred\\r\\n'; head -c 10000 /dev/zero | tr '\\0' x; echo;"
    " echo after ;;\n"
    "sleep) sleep 60 & echo $! >\"$top/child\"; echo waiting; wait ;;\n"
    "esac\n";

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    smolvm_ctx_options o = SMOLVM_CTX_OPTIONS_INIT;
    char statedir[128];

    assert_non_null(f);
    strcpy(f->dir, "/tmp/smolvm-test-image-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    (void)snprintf(f->images, sizeof(f->images), "%s/images", f->dir);
    (void)snprintf(f->templates, sizeof(f->templates), "%s/templates", f->dir);
    (void)snprintf(f->script, sizeof(f->script), "%s/build-image.sh", f->dir);
    (void)snprintf(statedir, sizeof(statedir), "%s/state", f->dir);
    write_file(f->script, fake_script, 0755);
    o.state_dir = statedir;
    o.image_dir = f->images;
    assert_int_equal(smolvm_ctx_new(&f->ctx, &o, NULL), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;

    smolvm_ctx_free(f->ctx);
    assert_int_equal(smolvm_rm_rf(f->dir, NULL), 0);
    free(f);
    return 0;
}

/* An image directory with a manifest and both files. */
static void make_image(fixture *f, const char *name, const char *manifest)
{
    mkdirp(f->images, name);
    writep(manifest, f->images, name, "manifest.json");
    writep("kernel", f->images, name, "vmlinux");
    writep("rootfs", f->images, name, "rootfs.ext4");
}

static json_t *list(fixture *f)
{
    char *text = NULL;
    json_t *j;

    assert_int_equal(smolvm_image_list_json(&text, f->ctx, NULL), 0);
    j = json_loads(text, 0, NULL);
    assert_non_null(j);
    free(text);
    return j;
}

/* ---------------------------------------------------------------- names */

static void test_names(void **state)
{
    (void)state;
    assert_true(smolvm_image_name_valid("default"));
    assert_true(smolvm_image_name_valid("t-img_2"));
    assert_false(smolvm_image_name_valid("templates"));
    assert_false(smolvm_image_name_valid("Default"));
    assert_false(smolvm_image_name_valid("-x"));
    assert_false(smolvm_image_name_valid("../x"));
    assert_false(smolvm_image_name_valid(""));
    assert_false(smolvm_image_name_valid(NULL));
    assert_true(smolvm_package_name_valid("jq"));
    assert_true(smolvm_package_name_valid("libstdc++6"));
    assert_true(smolvm_package_name_valid("python3.11-minimal"));
    assert_false(smolvm_package_name_valid("j"));
    assert_false(smolvm_package_name_valid("Jq"));
    assert_false(smolvm_package_name_valid("-jq"));
    assert_false(smolvm_package_name_valid("jq;rm"));
    assert_false(smolvm_package_name_valid("jq=1.6"));
    assert_false(smolvm_package_name_valid(NULL));
}

/* ---------------------------------------------------------------- list */

static void test_list(void **state)
{
    fixture *f = *state;
    json_t *j, *img, *extra;

    /* No image directory yet: nothing built, not an error. */
    j = list(f);
    assert_int_equal(json_array_size(j), 0);
    json_decref(j);

    make_image(f, "tools",
               "{\"built\": \"2026-01-02T03:04:05Z\", \"agent\": \"1\", \"kernel_version\": "
               "\"6.1.1\", \"extra_packages\": [\"jq\", \"BAD\", 3, \"git\"]}");
    make_image(f, "old", "{\"built\": \"2025-01-01T00:00:00Z\"}");
    mkdirp(f->images, "half"); /* a manifest, no files */
    writep("{\"built\": \"\\u0007bell\"}", f->images, "half", "manifest.json");
    mkdirp(f->images, "empty");        /* not an image */
    mkdirp(f->images, ".tools.tmp.1"); /* a build in progress */
    mkdirp(f->images, "templates");    /* reserved */
    mkdirp(f->images, "Bad");
    writep("x", f->images, "stray-file", NULL);

    j = list(f);
    assert_int_equal(json_array_size(j), 3);
    img = json_array_get(j, 0);
    assert_string_equal(json_string_value(json_object_get(img, "name")), "half");
    assert_false(json_is_true(json_object_get(img, "complete")));
    assert_true(json_is_null(json_object_get(img, "built"))); /* control character: dropped */
    img = json_array_get(j, 1);
    assert_string_equal(json_string_value(json_object_get(img, "name")), "old");
    assert_false(json_is_true(json_object_get(img, "agent")));
    assert_int_equal(json_array_size(json_object_get(img, "extra_packages")), 0);
    img = json_array_get(j, 2);
    assert_string_equal(json_string_value(json_object_get(img, "name")), "tools");
    assert_true(json_is_true(json_object_get(img, "complete")));
    assert_true(json_is_true(json_object_get(img, "agent")));
    assert_string_equal(json_string_value(json_object_get(img, "built")), "2026-01-02T03:04:05Z");
    assert_string_equal(json_string_value(json_object_get(img, "kernel_version")), "6.1.1");
    assert_true(json_integer_value(json_object_get(img, "size")) > 0);
    extra = json_object_get(img, "extra_packages");
    assert_int_equal(json_array_size(extra), 2); /* the invalid entries left out */
    assert_string_equal(json_string_value(json_array_get(extra, 0)), "jq");
    assert_string_equal(json_string_value(json_array_get(extra, 1)), "git");
    json_decref(j);
}

/* ---------------------------------------------------------------- remove */

/* A VM record that uses `image`, as vm-create stores it. */
static void vm_using(fixture *f, const char *id, const char *image)
{
    smolvm_vm_options o = SMOLVM_VM_OPTIONS_INIT, checked;
    smolvm_vm_placement w = {"/s/vms/x", image,       "/i/vmlinux", "/i/rootfs.ext4",
                             NULL,       "10.0.2.15", true,         NULL};
    smolvm_vm_config *c = NULL;
    smolvm_vm_row row = {0};
    char *json = NULL;

    o.image = image;
    assert_int_equal(smolvm_vm_options_check(&checked, &o, NULL), 0);
    assert_int_equal(
        smolvm_vm_config_new(&c, &checked, SMOLVM_BACKEND_QEMU, SMOLVM_NET_USER, &w, NULL), 0);
    assert_int_equal(smolvm_vm_config_to_json(&json, c, NULL), 0);
    row.id = (char *)id;
    row.backend = (char *)"qemu";
    row.config_json = json;
    assert_int_equal(smolvm_store_vm_insert(f->ctx->store, &row, NULL), 0);
    free(row.status);
    free(json);
    smolvm_vm_config_free(c);
}

static int expect_remove(fixture *f, const char *name, int force, int code, const char *needle)
{
    smolvm_image_remove_options o = SMOLVM_IMAGE_REMOVE_OPTIONS_INIT;
    smolvm_error *e = NULL;
    int r;

    o.force = force;
    o.template_dir = f->templates;
    r = smolvm_image_remove(f->ctx, name, &o, &e);
    assert_int_equal(r, code);
    if (needle) {
        assert_non_null(e);
        if (!strstr(smolvm_error_message(e), needle))
            fail_msg("'%s' not in '%s'", needle, smolvm_error_message(e));
    }
    smolvm_error_free(e);
    return r;
}

static void test_remove(void **state)
{
    fixture *f = *state;

    make_image(f, "default", "{}");
    make_image(f, "tools", "{}");
    make_image(f, "other", "{}");

    expect_remove(f, "nope", 0, SMOLVM_ENOENT, "no image 'nope'");
    expect_remove(f, "../images", 0, SMOLVM_EINVAL, "invalid name");
    expect_remove(f, "templates", 0, SMOLVM_EINVAL, "invalid name");
    expect_remove(f, "default", 0, SMOLVM_EINVAL, "--force");
    assert_true(existsp(f->images, "default", "rootfs.ext4"));

    /* In use by VMs of the store (named, whatever their status) and by a template. */
    vm_using(f, "vm-a", "tools");
    vm_using(f, "vm-b", "tools");
    vm_using(f, "vm-c", "other");
    mkdirp(f->templates, "t1");
    writep("{\"image\": \"tools\", \"memory\": 256}", f->templates, "t1", "template.json");
    mkdirp(f->templates, "t2");
    writep("{\"image\": \"default\"}", f->templates, "t2", "template.json");
    mkdirp(f->templates, "broken");
    writep("{not json", f->templates, "broken", "template.json");
    expect_remove(f, "tools", 1, SMOLVM_ESTATE, "in use by VM 'vm-a', VM 'vm-b', template 't1'");
    assert_true(existsp(f->images, "tools", "rootfs.ext4"));
    expect_remove(f, "default", 1, SMOLVM_ESTATE, "template 't2'");

    /* The VMs go (as smolvm rm does), the template goes: now it can be removed. */
    assert_int_equal(smolvm_store_vm_delete(f->ctx->store, "vm-a", NULL), 0);
    assert_int_equal(smolvm_store_vm_delete(f->ctx->store, "vm-b", NULL), 0);
    expect_remove(f, "tools", 0, SMOLVM_ESTATE, "template 't1'");
    writep("{\"image\": \"other\"}", f->templates, "t1", "template.json");
    expect_remove(f, "tools", 0, 0, NULL);
    assert_false(existsp(f->images, "tools", NULL));
    expect_remove(f, "other", 0, SMOLVM_ESTATE, "VM 'vm-c', template 't1'");
}

static void test_remove_ok(void **state)
{
    fixture *f = *state;
    char lock[256];
    int fd;

    make_image(f, "tools", "{}");
    vm_using(f, "vm-c", "other");
    /* A build of it holds the lock: refused, untouched. */
    (void)snprintf(lock, sizeof(lock), "%s/.tools.lock", f->images);
    fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(flock(fd, LOCK_EX), 0);
    expect_remove(f, "tools", 0, SMOLVM_ESTATE, "being built");
    assert_true(existsp(f->images, "tools", "rootfs.ext4"));
    (void)close(fd);

    expect_remove(f, "tools", 0, 0, NULL);
    assert_false(existsp(f->images, "tools", NULL));
    expect_remove(f, "tools", 0, SMOLVM_ENOENT, NULL);
    /* Nothing renamed aside is left over. */
    {
        char *text = NULL;

        assert_int_equal(smolvm_image_list_json(&text, f->ctx, NULL), 0);
        assert_string_equal(text, "[]");
        free(text);
    }
    /* The default with force and no user: gone. No template directory: no templates. */
    make_image(f, "default", "{}");
    (void)snprintf(f->templates, sizeof(f->templates), "%s/no-such-dir", f->dir);
    expect_remove(f, "default", 1, 0, NULL);
    assert_false(existsp(f->images, "default", NULL));
}

/* ---------------------------------------------------------------- build */

typedef struct lines {
    char *all;
    size_t n;
    int cancel_at; /* 1-based line number to cancel at, 0: never */
    int interrupt_at;
} lines;

static int on_line(const char *line, void *payload)
{
    lines *l = payload;
    size_t len = l->all ? strlen(l->all) : 0;
    char *s = realloc(l->all, len + strlen(line) + 2);

    assert_non_null(s);
    (void)sprintf(s + len, "%s\n", line);
    l->all = s;
    l->n++;
    if (l->interrupt_at && (int)l->n == l->interrupt_at)
        smolvm_interrupt();
    return l->cancel_at && (int)l->n >= l->cancel_at;
}

static void set_mode(fixture *f, const char *mode)
{
    writep(mode, f->dir, "mode", NULL);
}

static char *slurp(fixture *f, const char *name)
{
    char path[256], *text = NULL;

    (void)snprintf(path, sizeof(path), "%s/%s", f->dir, name);
    if (smolvm_read_file(path, 65536, &text, NULL, NULL) < 0)
        return NULL;
    return text;
}

static int build(fixture *f, const char *name, const char *const *packages, int dry_run, int *built,
                 lines *l, smolvm_error **e)
{
    smolvm_image_build_options o = SMOLVM_IMAGE_BUILD_OPTIONS_INIT;

    o.script = f->script;
    o.packages = packages;
    o.dry_run = dry_run;
    o.on_line = on_line;
    o.payload = l;
    return smolvm_image_build(built, f->ctx, name, &o, e);
}

static void test_build_outcomes(void **state)
{
    fixture *f = *state;
    const char *pk[] = {"jq", "git", NULL};
    lines l = {0};
    smolvm_error *e = NULL;
    char *text;
    int built = -1;

    assert_int_equal(smolvm_mkdir_p(f->images, 0755, NULL), 0);
    set_mode(f, "build");
    assert_int_equal(build(f, "tools", pk, 0, &built, &l, &e), 0);
    assert_int_equal(built, 1);
    assert_non_null(strstr(l.all, "build-image: starting tools\nbuilt\n"));
    text = slurp(f, "args");
    assert_string_equal(text, "--packages jq,git -- tools\n");
    free(text);
    text = slurp(f, "env"); /* the context's image dir, whatever the environment says */
    assert_non_null(text);
    assert_true(strncmp(text, f->images, strlen(f->images)) == 0);
    free(text);
    /* a new directory renamed into place again: built */
    assert_int_equal(build(f, "tools", NULL, 0, &built, &l, NULL), 0);
    assert_int_equal(built, 1);
    text = slurp(f, "args");
    assert_string_equal(text, "--packages  -- tools\n");
    free(text);

    set_mode(f, "uptodate");
    assert_int_equal(build(f, "tools", NULL, 0, &built, &l, NULL), 0);
    assert_int_equal(built, 0);
    set_mode(f, "due");
    assert_int_equal(build(f, "tools", NULL, 1, &built, &l, NULL), 0);
    assert_int_equal(built, 1);
    text = slurp(f, "args");
    assert_string_equal(text, "--packages  --dry-run -- tools\n");
    free(text);
    set_mode(f, "uptodate");
    assert_int_equal(build(f, "tools", NULL, 1, &built, &l, NULL), 0);
    assert_int_equal(built, 0);

    set_mode(f, "usage");
    assert_int_equal(build(f, "tools", NULL, 0, &built, &l, &e), SMOLVM_EINVAL);
    assert_string_equal(smolvm_error_message(e), "build image 'tools': invalid image name 'x'");
    e = smolvm_error_free(e);
    set_mode(f, "root");
    assert_int_equal(build(f, "tools", pk, 0, &built, &l, &e), SMOLVM_EPERM);
    assert_non_null(strstr(smolvm_error_message(e), "needs root"));
    assert_non_null(strstr(smolvm_error_message(e), "sudo env SMOLVM_IMAGE_DIR='"));
    assert_non_null(strstr(smolvm_error_message(e), "--packages jq,git tools"));
    e = smolvm_error_free(e);
    set_mode(f, "tool");
    assert_int_equal(build(f, "tools", NULL, 0, &built, &l, &e), SMOLVM_EHOST);
    e = smolvm_error_free(e);
    set_mode(f, "fail");
    assert_int_equal(build(f, "tools", NULL, 0, &built, &l, &e), SMOLVM_EIO);
    assert_string_equal(smolvm_error_message(e),
                        "build image 'tools' failed: build-rootfs: no such package: nope");
    e = smolvm_error_free(e);
    free(l.all);
}

/* Without a context (a dry run that must leave no trace): the default image directory,
 * and no state directory made. */
static void test_build_without_context(void **state)
{
    fixture *f = *state;
    smolvm_image_build_options o = SMOLVM_IMAGE_BUILD_OPTIONS_INIT;
    char other[256], *text;
    int built = -1;

    (void)snprintf(other, sizeof(other), "%s/elsewhere", f->dir);
    assert_int_equal(setenv("SMOLVM_IMAGE_DIR", other, 1), 0);
    set_mode(f, "uptodate");
    o.script = f->script;
    o.dry_run = 1;
    assert_int_equal(smolvm_image_build(&built, NULL, "tools", &o, NULL), 0);
    assert_int_equal(built, 0);
    (void)unsetenv("SMOLVM_IMAGE_DIR");
    text = slurp(f, "env");
    assert_non_null(text);
    assert_true(strncmp(text, other, strlen(other)) == 0);
    free(text);
    assert_false(existsp(f->dir, "elsewhere", NULL));
}

static void test_build_refused_before_running(void **state)
{
    fixture *f = *state;
    const char *bad_pkg[] = {"jq", "Jq; rm -rf /", NULL};
    smolvm_image_build_options o = SMOLVM_IMAGE_BUILD_OPTIONS_INIT;
    smolvm_error *e = NULL;

    set_mode(f, "build");
    o.script = f->script;
    o.packages = bad_pkg;
    assert_int_equal(smolvm_image_build(NULL, f->ctx, "tools", &o, &e), SMOLVM_EINVAL);
    assert_non_null(strstr(smolvm_error_message(e), "'Jq; rm -rf /'"));
    e = smolvm_error_free(e);
    o.packages = NULL;
    assert_int_equal(smolvm_image_build(NULL, f->ctx, "templates", &o, &e), SMOLVM_EINVAL);
    e = smolvm_error_free(e);
    assert_int_equal(smolvm_image_build(NULL, f->ctx, "a/../b", &o, &e), SMOLVM_EINVAL);
    e = smolvm_error_free(e);
    o.version = 99;
    assert_int_equal(smolvm_image_build(NULL, f->ctx, "tools", &o, &e), SMOLVM_EINVAL);
    e = smolvm_error_free(e);
    o.version = SMOLVM_IMAGE_BUILD_OPTIONS_VERSION;
    o.script = "/nonexistent/build-image.sh";
    assert_int_equal(smolvm_image_build(NULL, f->ctx, "tools", &o, &e), SMOLVM_ENOENT);
    e = smolvm_error_free(e);
    /* none of them ran the script */
    assert_false(existsp(f->dir, "args", NULL));
    assert_int_equal(smolvm_image_build_options_init(&o, 1), 0);
    assert_int_equal(smolvm_image_build_options_init(&o, 2), SMOLVM_EINVAL);
}

static void test_build_lines(void **state)
{
    fixture *f = *state;
    lines l = {0};
    const char *p;

    set_mode(f, "noisy");
    assert_int_equal(build(f, "tools", NULL, 0, NULL, &l, NULL), 0);
    /* control characters become spaces, \r is dropped, a long line is cut at 4 KiB */
    assert_non_null(strstr(l.all, "a b [31mred\n"));
    p = strstr(l.all, "xxxx");
    assert_non_null(p);
    assert_int_equal(strcspn(p, "\n"), 4096);
    assert_non_null(strstr(l.all, "\nafter\n"));
    assert_int_equal(l.n, 4);
    free(l.all);
}

/* The build's whole process group is gone (its background child too). This process is
 * a subreaper (main), so the orphaned child is reparented here and waited for as an
 * event; alarm() bounds the wait. */
static void assert_child_gone(fixture *f)
{
    char *text = slurp(f, "child");
    pid_t child;
    int status;

    assert_non_null(text);
    child = (pid_t)atoi(text);
    free(text);
    assert_true(child > 1);
    (void)alarm(10);
    assert_int_equal(waitpid(child, &status, 0), child);
    (void)alarm(0);
    assert_true(WIFSIGNALED(status));
}

static void test_build_cancel_timeout_interrupt(void **state)
{
    fixture *f = *state;
    smolvm_image_build_options o = SMOLVM_IMAGE_BUILD_OPTIONS_INIT;
    lines l = {0};
    smolvm_error *e = NULL;
    int64_t t0;

    set_mode(f, "sleep");
    writep("", f->dir, "child", NULL);
    l.cancel_at = 2; /* at "waiting" */
    t0 = smolvm_now_ms();
    assert_int_equal(build(f, "tools", NULL, 0, NULL, &l, &e), SMOLVM_EINTR);
    assert_non_null(strstr(smolvm_error_message(e), "cancelled"));
    e = smolvm_error_free(e);
    assert_true(smolvm_now_ms() - t0 < 15000); /* not the script's 60 s */
    assert_child_gone(f);

    writep("", f->dir, "child", NULL);
    o.script = f->script;
    o.timeout_ms = 1500;
    t0 = smolvm_now_ms();
    assert_int_equal(smolvm_image_build(NULL, f->ctx, "tools", &o, &e), SMOLVM_ETIMEDOUT);
    e = smolvm_error_free(e);
    assert_true(smolvm_now_ms() - t0 < 15000);
    assert_child_gone(f);

    writep("", f->dir, "child", NULL);
    l.cancel_at = 0;
    l.interrupt_at = (int)l.n + 2; /* as smolvm-lua's SIGINT handler does, mid-build */
    assert_int_equal(build(f, "tools", NULL, 0, NULL, &l, &e), SMOLVM_EINTR);
    assert_non_null(strstr(smolvm_error_message(e), "interrupted"));
    e = smolvm_error_free(e);
    smolvm_interrupt_clear();
    assert_child_gone(f);
    free(l.all);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test_setup_teardown(test_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remove, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remove_ok, setup, teardown),
        cmocka_unit_test_setup_teardown(test_build_outcomes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_build_without_context, setup, teardown),
        cmocka_unit_test_setup_teardown(test_build_refused_before_running, setup, teardown),
        cmocka_unit_test_setup_teardown(test_build_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_build_cancel_timeout_interrupt, setup, teardown),
    };

    /* Orphans of the builds (their background children) come back to us to be reaped. */
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
