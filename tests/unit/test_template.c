/* SPDX-License-Identifier: MIT */
/* Templates on disk (src/lib/template.c) and the file copies they rest on: a sparse
 * file copied keeps its holes and its bytes; a template's record is read and refused
 * when malformed; a clone's disk is made from its template as its backend needs it
 * (QEMU: a qcow2 overlay backed by the template's disk; Firecracker: a sparse copy of
 * the template's upper disk). The templates of real VMs are tested in
 * tests/integration/templates_spec.lua (QEMU) and test_firecracker (the fake). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "template.h"
#include "util.h"

#define GIB (1024LL * 1024 * 1024)

static char tmpdir[64];

static int setup(void **state)
{
    (void)state;
    (void)snprintf(tmpdir, sizeof(tmpdir), "/tmp/smolvm-test-template-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return smolvm_rm_rf(tmpdir, NULL);
}

static char *path_in(const char *dir, const char *name)
{
    char *p = smolvm_strdupf("%s/%s", dir, name);

    assert_non_null(p);
    return p;
}

static void put(int fd, off_t off, const char *text)
{
    assert_int_equal(pwrite(fd, text, strlen(text), off), (ssize_t)strlen(text));
}

static void expect_at(const char *path, off_t off, const char *text)
{
    char buf[64] = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    assert_true(fd >= 0);
    assert_int_equal(pread(fd, buf, strlen(text), off), (ssize_t)strlen(text));
    assert_string_equal(buf, text);
    (void)close(fd);
}

/* A 2 GiB file with 3 small data extents, the last one ending at its end. */
static char *sparse_file(const char *name)
{
    char *p = path_in(tmpdir, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 2 * GIB), 0);
    put(fd, 0, "head");
    put(fd, GIB + 12345, "middle");
    put(fd, 2 * GIB - 4, "tail");
    assert_int_equal(close(fd), 0);
    return p;
}

/* The copy has the size, the bytes (zeros in the holes) and about the blocks of the
 * original: holes stay holes (an 8 GiB overlay disk used to be written out whole). */
static void test_copy_sparse(void **state)
{
    char *src = sparse_file("sparse.img"), *dst = path_in(tmpdir, "copy.img");
    smolvm_error *err = NULL;
    struct stat a, b;
    uint64_t copied = 0;
    int in, out;

    (void)state;
    assert_int_equal(smolvm_copy_file(src, dst, 0640, &err), 0);
    assert_int_equal(stat(src, &a), 0);
    assert_int_equal(stat(dst, &b), 0);
    assert_int_equal(b.st_size, 2 * GIB);
    assert_int_equal(b.st_mode & 07777, 0640);
    assert_true(b.st_blocks <= a.st_blocks + 64); /* kilobytes, not 2 GiB */
    expect_at(dst, 0, "head");
    expect_at(dst, GIB + 12345, "middle");
    expect_at(dst, 2 * GIB - 4, "tail");
    {
        char z[16];
        int fd = open(dst, O_RDONLY | O_CLOEXEC);

        assert_true(fd >= 0); /* a hole reads as zeros */
        assert_int_equal(pread(fd, z, sizeof(z), GIB), (ssize_t)sizeof(z));
        for (size_t i = 0; i < sizeof(z); i++)
            assert_int_equal(z[i], 0);
        (void)close(fd);
    }

    /* The destination must not exist: refused, the existing file left as it was. */
    assert_int_equal(smolvm_copy_file(src, dst, 0600, &err), SMOLVM_EEXIST);
    assert_non_null(strstr(smolvm_error_message(err), "copy.img"));
    err = smolvm_error_free(err);
    assert_int_equal(stat(dst, &b), 0);
    assert_int_equal(b.st_mode & 07777, 0640);

    /* fd to fd: the data counted, not the holes; an empty file copies nothing. */
    in = open(src, O_RDONLY | O_CLOEXEC);
    out = memfd_create("copy", MFD_CLOEXEC);
    assert_true(in >= 0 && out >= 0);
    assert_int_equal(ftruncate(out, 2 * GIB), 0);
    assert_int_equal(smolvm_copy_fd_sparse(in, out, 2 * GIB, &copied, &err), 0);
    assert_true(copied >= 14 && copied <= 3 * 1024 * 1024); /* 3 extents, page-rounded */
    (void)close(out);
    (void)close(in);

    /* A missing source: an error naming it, no destination made. */
    free(dst);
    dst = path_in(tmpdir, "never.img");
    assert_true(smolvm_copy_file("/nonexistent/x.img", dst, 0600, &err) < 0);
    assert_non_null(strstr(smolvm_error_message(err), "/nonexistent/x.img"));
    err = smolvm_error_free(err);
    assert_int_equal(access(dst, F_OK), -1);
    free(src);
    free(dst);
}

/* A template dir with a record for backend (and, for firecracker, an upper disk). */
static char *template_dir(const char *name, const char *backend, const char *memory)
{
    char *dir = path_in(tmpdir, name), *rec;
    json_t *j =
        json_pack("{s:i, s:s, s:I, s:s, s:b, s:{s:s, s:s, s:s}, "
                  "s:{s:s, s:s, s:i, s:i, s:s}, s:s, s:{s:{}, s:i}}",
                  "format", 1, "name", name, "created_ms", (json_int_t)1, "source_vm", "vm-src",
                  "ephemeral", 0, "image", "name", "default", "built", "x", "inputs_hash", "y",
                  "vmm", "backend", backend, "accel", "tcg", "vcpus", 1, "memory_mib", 256,
                  "network", "none", "memory", memory, "agent", "hello", "next_stream", 7);

    assert_non_null(j);
    assert_int_equal(mkdir(dir, 0700), 0);
    rec = path_in(dir, SMOLVM_TEMPLATE_JSON);
    assert_int_equal(json_dump_file(j, rec, 0), 0);
    json_decref(j);
    free(rec);
    return dir;
}

static void test_load(void **state)
{
    char *dir = template_dir("fc-tpl", "firecracker", "file"), *rec;
    smolvm_template *t = NULL;
    smolvm_error *err = NULL;
    FILE *f;

    (void)state;
    assert_int_equal(smolvm_template_load(&t, dir, SMOLVM_TEMPLATE_JSON, &err), 0);
    assert_int_equal(t->backend, SMOLVM_BACKEND_FIRECRACKER);
    assert_string_equal(t->memory, "file");
    assert_int_equal(t->memory_mib, 256);
    assert_int_equal(t->next_stream, 7);
    t = smolvm_template_free(t);

    /* A record that is not what a template writes is refused, naming the file. */
    rec = path_in(dir, SMOLVM_TEMPLATE_JSON);
    f = fopen(rec, "w");
    assert_non_null(f);
    fputs("{\"format\": 1, \"memory\": \"elsewhere\"}", f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(smolvm_template_load(&t, dir, SMOLVM_TEMPLATE_JSON, &err), SMOLVM_EINVAL);
    assert_non_null(strstr(smolvm_error_message(err), "malformed"));
    assert_non_null(strstr(smolvm_error_message(err), rec));
    err = smolvm_error_free(err);
    assert_null(t);
    free(rec);
    free(dir);
}

/* Firecracker: the clone's upper disk is a sparse copy of the template's, at the path
 * the VM's config gives its overlay (<vm dir>/upper.ext4). */
static void test_make_disk_firecracker(void **state)
{
    char *dir = template_dir("fc-disk", "firecracker", "file");
    char *upper = sparse_file("fc-upper.img"), *tupper = path_in(dir, SMOLVM_TEMPLATE_UPPER);
    char *vm = path_in(tmpdir, "vm-fc"), *disk = NULL;
    smolvm_template *t = NULL;
    smolvm_error *err = NULL;
    struct stat st;

    (void)state;
    assert_int_equal(rename(upper, tupper), 0);
    assert_int_equal(mkdir(vm, 0700), 0);
    assert_int_equal(smolvm_template_load(&t, dir, SMOLVM_TEMPLATE_JSON, &err), 0);
    assert_int_equal(smolvm_template_make_disk(t, vm, &disk, &err), 0);
    assert_non_null(strstr(disk, "/vm-fc/upper.ext4"));
    assert_int_equal(stat(disk, &st), 0);
    assert_int_equal(st.st_size, 2 * GIB);
    assert_true(st.st_blocks < 4096 * 8); /* < 16 MiB of blocks */
    expect_at(disk, GIB + 12345, "middle");
    /* A second clone in the same dir would overwrite the first's disk: refused. */
    free(disk);
    disk = NULL;
    assert_true(smolvm_template_make_disk(t, vm, &disk, &err) < 0);
    assert_null(disk);
    err = smolvm_error_free(err);
    /* The template's disk is the template's: unchanged, still there. */
    assert_int_equal(stat(tupper, &st), 0);
    smolvm_template_free(t);
    free(vm);
    free(tupper);
    free(upper);
    free(dir);
}

/* QEMU: a qcow2 overlay whose backing file is the template's disk. */
static void test_make_disk_qemu(void **state)
{
    char *dir = template_dir("q-disk", "qemu", "shared"),
         *base = path_in(dir, SMOLVM_TEMPLATE_DISK);
    char *vm = path_in(tmpdir, "vm-q"), *disk = NULL, *cmd, line[4096] = {0};
    smolvm_template *t = NULL;
    smolvm_error *err = NULL;
    FILE *p;

    (void)state;
    cmd = smolvm_strdupf("qemu-img create -q -f qcow2 '%s' 64M", base);
    if (system(cmd) != 0) {
        free(cmd);
        print_message("skipped: no qemu-img\n");
        skip();
    }
    free(cmd);
    assert_int_equal(mkdir(vm, 0700), 0);
    assert_int_equal(smolvm_template_load(&t, dir, SMOLVM_TEMPLATE_JSON, &err), 0);
    assert_int_equal(smolvm_template_make_disk(t, vm, &disk, &err), 0);
    cmd = smolvm_strdupf("qemu-img info --output=json '%s'", disk);
    p = popen(cmd, "r");
    assert_non_null(p);
    {
        size_t n = fread(line, 1, sizeof(line) - 1, p);
        json_t *info;

        line[n] = '\0';
        assert_int_equal(pclose(p), 0);
        info = json_loads(line, 0, NULL);
        assert_non_null(info);
        assert_string_equal(json_string_value(json_object_get(info, "format")), "qcow2");
        assert_string_equal(json_string_value(json_object_get(info, "backing-filename")), base);
        json_decref(info);
    }
    free(cmd);
    free(disk);
    smolvm_template_free(t);
    free(vm);
    free(base);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_copy_sparse),
        cmocka_unit_test(test_load),
        cmocka_unit_test(test_make_disk_firecracker),
        cmocka_unit_test(test_make_disk_qemu),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
