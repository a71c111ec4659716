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
#include "vm-config.h"

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

/* The host's check of a VM's env (at create): 0 or the error code; msg its message. */
static int host_check(const char **env, char *msg, size_t size)
{
    smolvm_vm_options o = SMOLVM_VM_OPTIONS_INIT, out;
    smolvm_error *e = NULL;
    int r;

    o.env = env;
    r = smolvm_vm_options_check(&out, &o, &e);
    (void)snprintf(msg, size, "%s", e ? smolvm_error_message(e) : "");
    smolvm_error_free(e);
    return r;
}

/* The guest's parser on a config disk holding these env lines. */
static int guest_parse(const char **env, char *err, size_t errlen)
{
    static char buf[GUEST_CONFIG_MAX + 1];
    struct guest_config cfg;
    size_t n =
        (size_t)snprintf(buf, sizeof(buf), "smolvm-config 1\nauthorized_key=k\nhost_key=AAAA\n");

    for (; *env; env++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "env=%s\n", *env);
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, "end\n");
    assert_true(n < sizeof(buf));
    return config_parse(&cfg, buf, n, err, errlen);
}

/* Host and guest hold the boot environment to the same limits: whatever the host
 * accepts at create boots, and what the guest would refuse the host refuses first,
 * saying why (issue 17, L3). */
static void test_host_and_guest_agree(void **state)
{
    static const char *const ctrl[] = {"T=a\tb", "E=\x1b[31m", "D=x\x7f", "R=a\rb", "N=a\nb"};
    const char *one[2] = {NULL, NULL}, **many;
    char msg[512], err[256], key[300], disk[300], hostkey[700];
    size_t i, total = 0;

    (void)state;
    assert_int_equal(GUEST_ENV_MAX, SMOLVM_ENV_MAX);
    assert_int_equal(GUEST_CONFIG_MAX, SMOLVM_CONFIG_DISK_MAX);
    for (i = 0; i < sizeof(ctrl) / sizeof(ctrl[0]); i++) {
        one[0] = ctrl[i];
        assert_int_equal(host_check(one, msg, sizeof(msg)), SMOLVM_EINVAL);
        if (!strstr(msg, "has control character 0x") || !strstr(msg, "printable text only"))
            fail_msg("'%s': %s", ctrl[i], msg);
        if (ctrl[i][0] != 'N') /* a newline ends the guest's line before its check */
            assert_int_equal(guest_parse(one, err, sizeof(err)), -1);
    }
    one[0] = "E=\x1b[31m";
    assert_int_equal(host_check(one, msg, sizeof(msg)), SMOLVM_EINVAL);
    assert_string_equal(msg, "env: value of 'E' has control character 0x1b at byte 1 (the boot "
                             "environment takes printable text only; pass other bytes per "
                             "command (run's env) or in a file)");
    /* Printable text, UTF-8 and '=' in values: both take them. */
    one[0] = "U=caf\xc3\xa9 a=b";
    assert_int_equal(host_check(one, msg, sizeof(msg)), 0);
    assert_int_equal(guest_parse(one, err, sizeof(err)), 0);

    /* The most the host takes, entries and bytes (11 of the longest, 244 of the
     * shortest and one to fill), fits the guest's disk and parses. */
    many = calloc(SMOLVM_ENV_MAX + 2, sizeof(*many));
    assert_non_null(many);
    for (i = 0; i < SMOLVM_ENV_MAX; i++) {
        size_t len = i < 11 ? SMOLVM_ENV_ENTRY_MAX : 5;
        char *e;

        if (i == SMOLVM_ENV_MAX - 1)
            len = SMOLVM_ENV_TOTAL_MAX - total - 5;
        assert_true(len >= 5 && len <= SMOLVM_ENV_ENTRY_MAX);
        e = malloc(len + 2); /* room for one byte more below */
        assert_non_null(e);
        (void)snprintf(e, 6, "V%03zu=", i);
        memset(e + 5, 'x', len - 5);
        e[len] = '\0';
        many[i] = e;
        total += len + 5;
    }
    assert_int_equal(total, SMOLVM_ENV_TOTAL_MAX);
    assert_int_equal(host_check(many, msg, sizeof(msg)), 0);
    memcpy(dir + strlen(dir) - 6, "XXXXXX", 6);
    assert_non_null(mkdtemp(dir));
    snprintf(key, sizeof(key), "%s/key", dir);
    snprintf(disk, sizeof(disk), "%s/config.img", dir);
    memset(hostkey, 'k', sizeof(hostkey) - 1); /* an ed25519 key file is ~411 bytes */
    hostkey[sizeof(hostkey) - 1] = '\0';
    write_text(key, hostkey);
    assert_int_equal(smolvm_config_disk_write(disk, "vm-max",
                                              "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx smolvm", key,
                                              many, NULL),
                     0);
    {
        struct guest_config cfg;
        char *buf = NULL;
        size_t len = 0;

        assert_int_equal(smolvm_read_file(disk, SMOLVM_CONFIG_DISK_MAX, &buf, &len, NULL), 0);
        assert_int_equal(config_parse_disk(&cfg, buf, len, err, sizeof(err)), 0);
        assert_int_equal(cfg.n_env, SMOLVM_ENV_MAX);
        assert_string_equal(cfg.env[SMOLVM_ENV_MAX - 1], many[SMOLVM_ENV_MAX - 1]);
        free(buf);
    }
    (void)smolvm_rm_rf(dir, NULL);
    /* One byte more, or one entry more: the host refuses, naming the limit. */
    (void)strcat((char *)many[SMOLVM_ENV_MAX - 1], "x");
    assert_int_equal(host_check(many, msg, sizeof(msg)), SMOLVM_EINVAL);
    assert_string_equal(msg, "env: more than 49152 bytes in all (the guest's config disk holds "
                             "them)");
    ((char *)many[SMOLVM_ENV_MAX - 1])[5] = '\0';
    many[SMOLVM_ENV_MAX] = "EXTRA=1";
    assert_int_equal(host_check(many, msg, sizeof(msg)), SMOLVM_EINVAL);
    assert_string_equal(msg, "env: more than 256 entries");
    assert_int_equal(guest_parse(many, err, sizeof(err)), -1);
    assert_string_equal(err, "config: more than 256 env entries");
    for (i = 0; i < SMOLVM_ENV_MAX; i++)
        free((char *)many[i]);
    free(many);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cmdline),
        cmocka_unit_test(test_config_disk_round_trip),
        cmocka_unit_test(test_config_disk_refusals),
        cmocka_unit_test(test_host_and_guest_agree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
