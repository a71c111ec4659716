/* SPDX-License-Identifier: MIT */
/* What the host hands a guest at boot: the kernel command line, and the config disk
 * as the host writes it (src/lib/guest-config.c) read back by the guest's own parser
 * (src/guest/config.c, compiled into this test). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "guest-config.h"
#include "guest.h"
#include "util.h"

/* The guest's logger: the parser under test only logs on success. */
void guest_log(const char *fmt, ...)
{
    (void)fmt;
}

static void test_cmdline(void **state)
{
    char *s = NULL;

    (void)state;
    assert_int_equal(smolvm_kernel_cmdline(&s, "vm-1", SMOLVM_NET_NAT, "172.16.0.2", "172.16.0.1",
                                           "255.255.0.0", "192.0.2.53", 2500000, NULL),
                     0);
    assert_string_equal(
        s, "console=ttyS0 reboot=t panic=-1 acpi=off no_timer_check tsc_early_khz=2500000 "
           "tsc=reliable root=/dev/vda rw rootfstype=ext4 init=/sbin/smolvm-init quiet "
           "ip=172.16.0.2::172.16.0.1:255.255.0.0:vm-1:eth0:off "
           "smolvm.dns=192.0.2.53");
    free(s);
    /* network none: no ip=; kvm: no tsc_early_khz */
    assert_int_equal(
        smolvm_kernel_cmdline(&s, "vm-1", SMOLVM_NET_NONE, NULL, NULL, NULL, NULL, 0, NULL), 0);
    assert_null(strstr(s, "ip="));
    assert_null(strstr(s, "tsc_early_khz"));
    assert_null(strstr(s, "smolvm.dns"));
    free(s);
}

static char dir[] = "/tmp/smolvm-test-guestcfg-XXXXXX";

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* Host writer -> guest parser: every value arrives intact. */
static void test_config_disk_round_trip(void **state)
{
    char key[300], disk[300], *buf = NULL;
    const char *env[] = {"A=1", "PATH_EXTRA=/opt/x:/y", "EMPTY=", NULL};
    /* a host key file with bytes that base64 must carry: NUL, high bytes, newlines */
    static const char keytext[] = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAA\xff\x01\n-----END\n";
    struct guest_config cfg;
    char err[256];
    size_t len = 0;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(key, sizeof(key), "%s/key", dir);
    snprintf(disk, sizeof(disk), "%s/config.img", dir);
    write_text(key, keytext);
    assert_int_equal(
        smolvm_config_disk_write(disk, "vm-abc", "ssh-ed25519 AAAAC3 smolvm\n", key, env, NULL), 0);
    assert_int_equal(smolvm_read_file(disk, 65536, &buf, &len, NULL), 0);
    assert_int_equal(len % 4096, 0); /* whole sectors */
    /* the guest stops at the zero padding, as config_load does */
    len = strlen(buf);
    assert_int_equal(config_parse(&cfg, buf, len, err, sizeof(err)), 0);
    assert_string_equal(cfg.hostname, "vm-abc");
    assert_string_equal(cfg.authorized_key, "ssh-ed25519 AAAAC3 smolvm");
    assert_int_equal(cfg.host_key_len, sizeof(keytext) - 1);
    assert_memory_equal(cfg.host_key, keytext, sizeof(keytext) - 1);
    assert_int_equal(cfg.n_env, 3);
    assert_string_equal(cfg.env[1], "PATH_EXTRA=/opt/x:/y");
    assert_string_equal(cfg.env[2], "EMPTY=");
    free(buf);
    (void)smolvm_rm_rf(dir, NULL);
}

/* What the host refuses to write, the guest would refuse to read. */
static void test_config_disk_refusals(void **state)
{
    char key[300], disk[300];
    const char *env_nl[] = {"A=line1\nline2", NULL};
    smolvm_error *e = NULL;
    struct guest_config cfg;
    char err[256], bad[] = "smolvm-config 1\nhostname=a b\nend\n";
    char truncated[] = "smolvm-config 1\nhostname=vm\n";

    (void)state;
    memcpy(dir + strlen(dir) - 6, "XXXXXX", 6);
    assert_non_null(mkdtemp(dir));
    snprintf(key, sizeof(key), "%s/key", dir);
    snprintf(disk, sizeof(disk), "%s/config.img", dir);
    write_text(key, "k");
    assert_int_equal(smolvm_config_disk_write(disk, "vm", "ssh-ed25519 A", key, env_nl, &e),
                     SMOLVM_EINVAL);
    assert_non_null(strstr(smolvm_error_message(e), "newline"));
    smolvm_error_free(e);
    assert_int_equal(config_parse(&cfg, bad, strlen(bad), err, sizeof(err)), -1);
    assert_non_null(strstr(err, "invalid hostname"));
    assert_int_equal(config_parse(&cfg, truncated, strlen(truncated), err, sizeof(err)), -1);
    assert_non_null(strstr(err, "missing 'end'"));
    (void)smolvm_rm_rf(dir, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cmdline),
        cmocka_unit_test(test_config_disk_round_trip),
        cmocka_unit_test(test_config_disk_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
