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
#include "egress.h"
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
    expect_bad(&o, "env: value of 'X' has control character 0x0a at byte 2");
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

/* ---- egress policies: entries, resolution against the network, the stored form */

static void expect_entry_bad(const char *entry, const char *needle)
{
    smolvm_error *e = NULL;

    assert_int_equal(smolvm_egress_entry_check(entry, &e), SMOLVM_EINVAL);
    if (!strstr(smolvm_error_message(e), needle))
        fail_msg("'%s': '%s' lacks '%s'", entry, smolvm_error_message(e), needle);
    smolvm_error_free(e);
}

static void test_egress_entries(void **state)
{
    static const char *const good[] = {"pypi.org",
                                       "*.pythonhosted.org",
                                       "*",
                                       "198.51.100.0/24",
                                       "198.51.100.7",
                                       "0.0.0.0/0",
                                       "A-B.Example.COM",
                                       "_dmarc.example.org",
                                       "localhost",
                                       "x.1a"};
    char long_name[300];

    (void)state;
    for (size_t i = 0; i < SMOLVM_ARRAY_SIZE(good); i++)
        if (smolvm_egress_entry_check(good[i], NULL) != 0)
            fail_msg("'%s' refused", good[i]);
    expect_entry_bad("10.0.0.1/8", "'10.0.0.1/8' has host bits set (did you mean '10.0.0.0/8'?)");
    expect_entry_bad("198.51.100.0/33", "invalid address '198.51.100.0/33'");
    expect_entry_bad("1.2.3", "invalid address '1.2.3'");
    expect_entry_bad("300.1.1.1", "invalid address");
    expect_entry_bad("pypi.org.", "without the final dot");
    expect_entry_bad("foo bar", "a space, a control or a non-ASCII character");
    expect_entry_bad("a\nb", "a space, a control");
    expect_entry_bad("", "got an empty string");
    expect_entry_bad("a..b", "expected a domain name ('pypi.org'), '*.suffix', '*' or an IPv4");
    expect_entry_bad("-a.org", "got '-a.org'");
    expect_entry_bad("a.*.org", "got 'a.*.org'");
    expect_entry_bad("**", "got '**'");
    expect_entry_bad("http://pypi.org", "got 'http://pypi.org'");
    expect_entry_bad("example.123", "got 'example.123'");
    memset(long_name, 'a', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';
    expect_entry_bad(long_name, "is longer than 253 bytes");
}

static void test_egress_options(void **state)
{
    smolvm_vm_options o = SMOLVM_VM_OPTIONS_INIT, checked;
    const char *allow[] = {"PyPI.org", "*.pythonhosted.org", "198.51.100.0/24", NULL};
    const char *bad[] = {"pypi.org", "10.0.0.1/8", NULL};
    smolvm_vm_placement w = {"/s/vms/x",    "default",   "/i/vmlinux", "/i/rootfs.ext4",
                             "10.9.0.0/16", "10.0.2.15", false,        NULL};
    smolvm_vm_host_facts facts = {NULL, NULL};
    smolvm_backend b;
    smolvm_net_mode n;
    smolvm_vm_config *c = NULL, *back = NULL;
    smolvm_error *e = NULL;
    char *text = NULL;
    const char **cidrs = NULL, **names = NULL;
    size_t nc = 0, nn = 0;

    (void)state;
    o.egress.mode = SMOLVM_EGRESS_ALLOW;
    o.egress.allow = bad;
    expect_bad(&o, "egress.allow[2]: '10.0.0.1/8' has host bits set");
    o.egress.mode = SMOLVM_EGRESS_INTERNET;
    expect_bad(&o, "egress.allow: only with mode 'allow', not 'internet'");
    o.egress.mode = (smolvm_egress_mode)9;
    o.egress.allow = NULL;
    expect_bad(&o, "egress: invalid mode '9'");

    /* user networking takes only "none"; the message says to use nat */
    o.egress.mode = SMOLVM_EGRESS_INTERNET;
    o.network = SMOLVM_NET_USER;
    assert_int_equal(smolvm_vm_resolve(&b, &n, &o, &facts, &e), SMOLVM_EINVAL);
    assert_non_null(strstr(smolvm_error_message(e), "egress: 'internet' needs network 'nat'"));
    assert_non_null(strstr(smolvm_error_message(e), "use network = \"nat\""));
    e = smolvm_error_free(e);
    o.egress.mode = SMOLVM_EGRESS_NONE;
    assert_int_equal(smolvm_vm_resolve(&b, &n, &o, &facts, NULL), 0);
    /* auto that falls back to user: the policy decides */
    o.network = SMOLVM_NET_AUTO;
    o.egress.mode = SMOLVM_EGRESS_ALLOW;
    o.egress.allow = allow;
    facts.nat = (smolvm_err(&e, SMOLVM_ENET, "no nat"), e);
    assert_int_equal(smolvm_vm_resolve(&b, &n, &o, &facts, NULL), SMOLVM_EINVAL);
    facts.nat = NULL;
    e = smolvm_error_free(e);

    /* nat: the allow list normalised, stored and read back */
    o.network = SMOLVM_NET_NAT;
    assert_int_equal(smolvm_vm_options_check(&checked, &o, NULL), 0);
    assert_int_equal(
        smolvm_vm_config_new(&c, &checked, SMOLVM_BACKEND_QEMU, SMOLVM_NET_NAT, &w, NULL), 0);
    assert_int_equal(c->egress.mode, SMOLVM_EGRESS_ALLOW);
    assert_int_equal(c->egress.n_allow, 3);
    assert_string_equal(c->egress.allow[0], "pypi.org");
    assert_int_equal(smolvm_vm_config_to_json(&text, c, NULL), 0);
    assert_non_null(strstr(
        text, "\"egress\":{\"allow\":[\"pypi.org\",\"*.pythonhosted.org\",\"198.51.100.0/24\"]}"));
    assert_int_equal(smolvm_vm_config_from_json(&back, text, NULL), 0);
    assert_int_equal(back->egress.mode, SMOLVM_EGRESS_ALLOW);
    assert_string_equal(back->egress.allow[2], "198.51.100.0/24");
    assert_int_equal(smolvm_egress_policy_split(&back->egress, &cidrs, &nc, &names, &nn, NULL), 0);
    assert_int_equal(nc, 1);
    assert_int_equal(nn, 2);
    assert_string_equal(cidrs[0], "198.51.100.0/24");
    assert_null(cidrs[1]);
    assert_string_equal(names[1], "*.pythonhosted.org");
    assert_null(names[2]);
    free(cidrs);
    free(names);
    free(text);
    smolvm_vm_config_free(c);
    smolvm_vm_config_free(back);

    /* the default: internet with nat, none otherwise */
    o.egress.mode = SMOLVM_EGRESS_DEFAULT;
    o.egress.allow = NULL;
    assert_int_equal(smolvm_vm_options_check(&checked, &o, NULL), 0);
    assert_int_equal(
        smolvm_vm_config_new(&c, &checked, SMOLVM_BACKEND_QEMU, SMOLVM_NET_NAT, &w, NULL), 0);
    assert_int_equal(c->egress.mode, SMOLVM_EGRESS_INTERNET);
    assert_int_equal(smolvm_vm_config_to_json(&text, c, NULL), 0);
    assert_non_null(strstr(text, "\"egress\":\"internet\""));
    free(text);
    smolvm_vm_config_free(c);
    assert_int_equal(
        smolvm_vm_config_new(&c, &checked, SMOLVM_BACKEND_QEMU, SMOLVM_NET_USER, &w, NULL), 0);
    assert_int_equal(c->egress.mode, SMOLVM_EGRESS_NONE);
    smolvm_vm_config_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enum_names),     cmocka_unit_test(test_zero_means_default),
        cmocka_unit_test(test_bad_options),    cmocka_unit_test(test_resolve_table),
        cmocka_unit_test(test_resolve_needs),  cmocka_unit_test(test_json_round_trip),
        cmocka_unit_test(test_json_bad),       cmocka_unit_test(test_egress_entries),
        cmocka_unit_test(test_egress_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
