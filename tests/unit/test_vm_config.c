/* SPDX-License-Identifier: MIT */
/* The VM configuration: option checks and defaults, backend/network resolution (a
 * table over the host facts), the stored JSON form, and the enum name tables. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "util.h"
#include "vm-config.h"

static void test_enum_names(void **state)
{
    (void)state;
    assert_string_equal(smolvm_net_mode_to_string(SMOLVM_NET_NAT), "nat");
    assert_int_equal(smolvm_net_mode_from_string("none"), SMOLVM_NET_NONE);
    assert_int_equal(smolvm_net_mode_from_string("bridge"), _SMOLVM_NET_INVALID);
    assert_int_equal(smolvm_net_mode_from_string(NULL), _SMOLVM_NET_INVALID);
    assert_null(smolvm_net_mode_to_string(_SMOLVM_NET_MAX));
    assert_null(smolvm_net_mode_to_string(_SMOLVM_NET_INVALID));
    assert_string_equal(smolvm_disk_mode_to_string(SMOLVM_DISK_SHARED), "shared");
    assert_int_equal(smolvm_backend_from_string("firecracker"), SMOLVM_BACKEND_FIRECRACKER);
    assert_int_equal(smolvm_accel_from_string("tcg"), SMOLVM_ACCEL_TCG);
    /* every name parses back to its value */
    for (int i = 0; i < _SMOLVM_NET_MAX; i++)
        assert_int_equal(smolvm_net_mode_from_string(smolvm_net_mode_to_string(i)), i);
}

static void test_zero_means_default(void **state)
{
    smolvm_vm_options in, out;

    (void)state;
    memset(&in, 0, sizeof(in));
    in.version = SMOLVM_VM_OPTIONS_VERSION;
    assert_int_equal(smolvm_vm_options_check(&out, &in, NULL), 0);
    assert_int_equal(out.vcpus, SMOLVM_VCPUS_DEFAULT);
    assert_int_equal(out.memory_mib, SMOLVM_MEMORY_DEFAULT);
    assert_string_equal(out.image, "default");
    assert_int_equal(out.disk, SMOLVM_DISK_ISOLATED);
    assert_int_equal(out.network, SMOLVM_NET_AUTO);
    assert_int_equal(smolvm_vm_options_init(&in, SMOLVM_VM_OPTIONS_VERSION), 0);
    assert_int_equal(smolvm_vm_options_check(&out, &in, NULL), 0);
    assert_int_equal(out.vcpus, 2);
    assert_int_equal(smolvm_vm_options_init(&in, 99), SMOLVM_EINVAL);
}

static void expect_bad(smolvm_vm_options *o, const char *needle)
{
    smolvm_vm_options out;
    smolvm_error *e = NULL;

    assert_int_equal(smolvm_vm_options_check(&out, o, &e), SMOLVM_EINVAL);
    assert_non_null(e);
    if (!strstr(smolvm_error_message(e), needle))
        fail_msg("'%s' does not contain '%s'", smolvm_error_message(e), needle);
    smolvm_error_free(e);
}

static void test_bad_options(void **state)
{
    smolvm_vm_options o = SMOLVM_VM_OPTIONS_INIT;
    const char *env_bad[] = {"1X=y", NULL}, *env_nl[] = {"X=a\nb", NULL};
    smolvm_forward fw[2] = {{NULL, 8080, 80}, {NULL, 8080, 81}};
    smolvm_forward fw_addr[1] = {{"localhost", 8080, 80}};

    (void)state;
    o.memory_mib = 64;
    expect_bad(&o, "memory: expected 128..16384 (MiB), got 64");
    o.memory_mib = 0;
    o.vcpus = 33;
    expect_bad(&o, "vcpus: expected 1..32, got 33");
    o.vcpus = 0;
    o.id = "Bad Id";
    expect_bad(&o, "id: expected [a-z0-9][a-z0-9_-]{0,62}, got 'Bad Id'");
    o.id = NULL;
    o.network = (smolvm_net_mode)7;
    expect_bad(&o, "network: expected auto, nat, user or none");
    o.network = SMOLVM_NET_AUTO;
    o.env = env_bad;
    expect_bad(&o, "env: expected NAME=value");
    o.env = env_nl;
    expect_bad(&o, "has a newline");
    o.env = NULL;
    o.forwards = fw;
    o.n_forwards = 2;
    expect_bad(&o, "forwards[2]: host port 8080 is already forwarded by forwards[1]");
    o.forwards = fw_addr;
    o.n_forwards = 1;
    expect_bad(&o, "host address 'localhost' is not an IPv4 address");
    o.n_forwards = SMOLVM_FORWARDS_MAX + 1;
    expect_bad(&o, "forwards: more than 64");
    o.n_forwards = 0;
    o.version = 7;
    expect_bad(&o, "unknown version 7");
}

/* ---- resolution: (backend, accel, network) x (nat usable?, firecracker usable?) */

typedef struct resolve_case {
    smolvm_backend backend;
    smolvm_accel accel;
    smolvm_net_mode network;
    bool nat_ok, fc_ok;
    int want_r;
    smolvm_backend want_backend;
    smolvm_net_mode want_network;
    const char *want_msg; /* substring of the error, when want_r < 0 */
} resolve_case;

static void test_resolve_table(void **state)
{
    static const resolve_case cases[] = {
        /* auto everything: the best the host has */
        {SMOLVM_BACKEND_AUTO, SMOLVM_ACCEL_AUTO, SMOLVM_NET_AUTO, true, true, 0,
         SMOLVM_BACKEND_FIRECRACKER, SMOLVM_NET_NAT, NULL},
        {SMOLVM_BACKEND_AUTO, SMOLVM_ACCEL_AUTO, SMOLVM_NET_AUTO, true, false, 0,
         SMOLVM_BACKEND_QEMU, SMOLVM_NET_NAT, NULL},
        {SMOLVM_BACKEND_AUTO, SMOLVM_ACCEL_AUTO, SMOLVM_NET_AUTO, false, false, 0,
         SMOLVM_BACKEND_QEMU, SMOLVM_NET_USER, NULL},
        /* firecracker has no user networking: without nat, auto stays on qemu */
        {SMOLVM_BACKEND_AUTO, SMOLVM_ACCEL_AUTO, SMOLVM_NET_AUTO, false, true, 0,
         SMOLVM_BACKEND_QEMU, SMOLVM_NET_USER, NULL},
        {SMOLVM_BACKEND_AUTO, SMOLVM_ACCEL_AUTO, SMOLVM_NET_NONE, false, true, 0,
         SMOLVM_BACKEND_FIRECRACKER, SMOLVM_NET_NONE, NULL},
        {SMOLVM_BACKEND_AUTO, SMOLVM_ACCEL_AUTO, SMOLVM_NET_USER, true, true, 0,
         SMOLVM_BACKEND_QEMU, SMOLVM_NET_USER, NULL},
        /* tcg rules firecracker out */
        {SMOLVM_BACKEND_AUTO, SMOLVM_ACCEL_TCG, SMOLVM_NET_AUTO, true, true, 0, SMOLVM_BACKEND_QEMU,
         SMOLVM_NET_NAT, NULL},
        {SMOLVM_BACKEND_FIRECRACKER, SMOLVM_ACCEL_TCG, SMOLVM_NET_NONE, true, true, SMOLVM_EINVAL,
         0, 0, "needs accel 'kvm'"},
        {SMOLVM_BACKEND_FIRECRACKER, SMOLVM_ACCEL_AUTO, SMOLVM_NET_NONE, true, false, SMOLVM_EHOST,
         0, 0, "no firecracker here"},
        {SMOLVM_BACKEND_FIRECRACKER, SMOLVM_ACCEL_AUTO, SMOLVM_NET_USER, true, true, SMOLVM_EINVAL,
         0, 0, "has no user networking"},
        {SMOLVM_BACKEND_FIRECRACKER, SMOLVM_ACCEL_KVM, SMOLVM_NET_AUTO, false, true, 0,
         SMOLVM_BACKEND_FIRECRACKER, SMOLVM_NET_NONE, NULL},
        /* explicit nat on a host that cannot: the host's reason */
        {SMOLVM_BACKEND_QEMU, SMOLVM_ACCEL_AUTO, SMOLVM_NET_NAT, false, false, SMOLVM_ENET, 0, 0,
         "no nat here"},
        {SMOLVM_BACKEND_QEMU, SMOLVM_ACCEL_AUTO, SMOLVM_NET_AUTO, true, true, 0,
         SMOLVM_BACKEND_QEMU, SMOLVM_NET_NAT, NULL},
    };
    smolvm_error *nat_no = NULL, *fc_no = NULL;
    size_t i;

    (void)state;
    smolvm_err(&nat_no, SMOLVM_ENET, "no nat here");
    smolvm_err(&fc_no, SMOLVM_EHOST, "no firecracker here");
    for (i = 0; i < SMOLVM_ARRAY_SIZE(cases); i++) {
        const resolve_case *c = &cases[i];
        smolvm_vm_options o = SMOLVM_VM_OPTIONS_INIT;
        smolvm_vm_host_facts f = {c->nat_ok ? NULL : nat_no, c->fc_ok ? NULL : fc_no};
        smolvm_backend b = (smolvm_backend)-1;
        smolvm_net_mode n = (smolvm_net_mode)-1;
        smolvm_error *e = NULL;
        int r;

        o.backend = c->backend;
        o.accel = c->accel;
        o.network = c->network;
        r = smolvm_vm_resolve(&b, &n, &o, &f, &e);
        if (r != c->want_r)
            fail_msg("case %zu: r %d, want %d (%s)", i, r, c->want_r,
                     e ? smolvm_error_message(e) : "");
        if (r == 0) {
            if (b != c->want_backend || n != c->want_network)
                fail_msg("case %zu: got %s/%s, want %s/%s", i, smolvm_backend_to_string(b),
                         smolvm_net_mode_to_string(n), smolvm_backend_to_string(c->want_backend),
                         smolvm_net_mode_to_string(c->want_network));
        } else if (!strstr(smolvm_error_message(e), c->want_msg)) {
            fail_msg("case %zu: '%s' lacks '%s'", i, smolvm_error_message(e), c->want_msg);
        }
        smolvm_error_free(e);
    }
    smolvm_error_free(nat_no);
    smolvm_error_free(fc_no);
}

static void test_resolve_needs(void **state)
{
    smolvm_vm_options o = SMOLVM_VM_OPTIONS_INIT;
    bool nat, fc;

    (void)state;
    smolvm_vm_resolve_needs(&o, &nat, &fc);
    assert_true(nat && fc);
    o.network = SMOLVM_NET_USER;
    smolvm_vm_resolve_needs(&o, &nat, &fc);
    assert_false(nat || fc); /* user networking is always qemu: nothing to ask the host */
    o.network = SMOLVM_NET_NONE;
    o.accel = SMOLVM_ACCEL_TCG;
    smolvm_vm_resolve_needs(&o, &nat, &fc);
    assert_false(nat || fc);
}

/* ---- the stored form round-trips exactly */

static void test_json_round_trip(void **state)
{
    smolvm_vm_options o = SMOLVM_VM_OPTIONS_INIT, checked;
    const char *env[] = {"A=1", "B=two words", NULL};
    smolvm_forward fw[1] = {{"0.0.0.0", 8080, 80}};
    smolvm_vm_placement w = {"/s/vms/x",    "default",   "/i/vmlinux", "/i/rootfs.ext4",
                             "10.9.0.0/16", "10.0.2.15", false,        "tpl-1"};
    smolvm_vm_config *c = NULL, *back = NULL;
    char *text = NULL, *text2 = NULL;

    (void)state;
    o.env = env;
    o.forwards = fw;
    o.n_forwards = 1;
    o.memory_mib = 256;
    assert_int_equal(smolvm_vm_options_check(&checked, &o, NULL), 0);
    assert_int_equal(
        smolvm_vm_config_new(&c, &checked, SMOLVM_BACKEND_QEMU, SMOLVM_NET_NAT, &w, NULL), 0);
    assert_string_equal(c->disk_path, "/s/vms/x/disk.qcow2");
    assert_int_equal(c->disk_format, SMOLVM_DISK_FORMAT_QCOW2);
    assert_string_equal(c->cidr, "10.9.0.0/16");
    assert_null(c->guest_ip);
    assert_int_equal(smolvm_vm_config_to_json(&text, c, NULL), 0);
    assert_non_null(strstr(text, "\"network\":\"nat\""));
    assert_non_null(strstr(text, "\"memory\":256"));
    assert_int_equal(smolvm_vm_config_from_json(&back, text, NULL), 0);
    assert_int_equal(back->memory_mib, 256);
    assert_int_equal(back->network, SMOLVM_NET_NAT);
    assert_int_equal(back->n_env, 2);
    assert_string_equal(back->env[1], "B=two words");
    assert_null(back->env[2]);
    assert_int_equal(back->n_forwards, 1);
    assert_string_equal(back->forwards[0].host_address, "0.0.0.0");
    assert_int_equal(back->forwards[0].guest_port, 80);
    assert_string_equal(back->template_name, "tpl-1");
    assert_int_equal(smolvm_vm_config_to_json(&text2, back, NULL), 0);
    assert_string_equal(text, text2);
    free(text);
    free(text2);
    smolvm_vm_config_free(c);
    smolvm_vm_config_free(back);

    /* firecracker isolated: the raw base plus an overlay disk in the VM dir */
    assert_int_equal(
        smolvm_vm_config_new(&c, &checked, SMOLVM_BACKEND_FIRECRACKER, SMOLVM_NET_NONE, &w, NULL),
        0);
    assert_string_equal(c->disk_path, "/i/rootfs.ext4");
    assert_string_equal(c->overlay_disk, "/s/vms/x/upper.ext4");
    assert_int_equal(c->disk_format, SMOLVM_DISK_FORMAT_RAW);
    smolvm_vm_config_free(c);
}

static void test_json_bad(void **state)
{
    static const char *const bad[] = {
        "",
        "[]",
        "{\"vcpus\":2}",
        /* a valid record with one member broken at a time */
        "{\"vcpus\":99,\"memory\":512,\"disk\":\"isolated\",\"image\":\"d\",\"backend\":\"qemu\","
        "\"accel\":\"auto\",\"network\":\"user\",\"env\":[],\"forwards\":[],\"kernel\":\"/k\","
        "\"disk_path\":\"/d\",\"disk_format\":\"qcow2\"}",
        "{\"vcpus\":2,\"memory\":512,\"disk\":\"isolated\",\"image\":\"d\",\"backend\":\"auto\","
        "\"accel\":\"auto\",\"network\":\"user\",\"env\":[],\"forwards\":[],\"kernel\":\"/k\","
        "\"disk_path\":\"/d\",\"disk_format\":\"qcow2\"}",
        "{\"vcpus\":2,\"memory\":512,\"disk\":\"isolated\",\"image\":\"d\",\"backend\":\"qemu\","
        "\"accel\":\"auto\",\"network\":\"nat\",\"env\":[],\"forwards\":[],\"kernel\":\"/k\","
        "\"disk_path\":\"/d\",\"disk_format\":\"qcow2\"}",
        "{\"vcpus\":2,\"memory\":512,\"disk\":\"isolated\",\"image\":\"d\",\"backend\":\"qemu\","
        "\"accel\":\"auto\",\"network\":\"user\",\"env\":[3],\"forwards\":[],\"kernel\":\"/k\","
        "\"disk_path\":\"/d\",\"disk_format\":\"qcow2\"}",
        "{\"vcpus\":2,\"memory\":512,\"disk\":\"isolated\",\"image\":\"d\",\"backend\":\"qemu\","
        "\"accel\":\"auto\",\"network\":\"user\",\"env\":[],\"forwards\":[],\"kernel\":\"/k\","
        "\"disk_path\":\"/d\",\"disk_format\":\"vmdk\"}",
    };
    static const char good[] =
        "{\"vcpus\":2,\"memory\":512,\"disk\":\"isolated\",\"image\":\"d\",\"backend\":\"qemu\","
        "\"accel\":\"auto\",\"network\":\"user\",\"env\":[],\"forwards\":[],\"kernel\":\"/k\","
        "\"disk_path\":\"/d\",\"disk_format\":\"qcow2\",\"guest_ip\":\"10.0.2.15\"}";
    smolvm_vm_config *c = NULL;
    size_t i;

    (void)state;
    for (i = 0; i < SMOLVM_ARRAY_SIZE(bad); i++) {
        smolvm_error *e = NULL;

        if (smolvm_vm_config_from_json(&c, bad[i], &e) != SMOLVM_EDB)
            fail_msg("case %zu parsed", i);
        smolvm_error_free(e);
    }
    /* a record written by 0.1 (same members) still reads */
    assert_int_equal(smolvm_vm_config_from_json(&c, good, NULL), 0);
    assert_string_equal(c->guest_ip, "10.0.2.15");
    smolvm_vm_config_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enum_names),    cmocka_unit_test(test_zero_means_default),
        cmocka_unit_test(test_bad_options),   cmocka_unit_test(test_resolve_table),
        cmocka_unit_test(test_resolve_needs), cmocka_unit_test(test_json_round_trip),
        cmocka_unit_test(test_json_bad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
