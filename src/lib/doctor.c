/* SPDX-License-Identifier: MIT */
/* smolvm_doctor_json: what this host can run, each check with a hint when it fails. */
#include "util.h"

#include <errno.h>
#include <jansson.h>
#include <string.h>
#include <sys/stat.h>

#include "cgroup.h"
#include "confine.h"
#include "context.h"
#include "error.h"
#include "host.h"
#include "image.h"
#include "tool.h"
#include "vmm/fc-binary.h"
#include "vmm/vmm.h"

#define VERSION_TIMEOUT_MS 5000

/* required: sandboxes cannot run without it (the recipe runner exits 3). */
static void add(json_t *list, const char *name, int ok, int required, const char *detail,
                const char *hint)
{
    json_t *o = json_pack("{s:s, s:b, s:b, s:s}", "name", name, "ok", ok, "required", required,
                          "detail", detail ? detail : "");

    if (!o)
        return;
    if (!ok && hint)
        json_object_set_new(o, "hint", json_string(hint));
    json_array_append_new(list, o);
}

static void check_binary(json_t *list, const char *env, const char *name, int required,
                         const char *hint)
{
    _cleanup_free_ char *path = NULL, *out = NULL, *detail = NULL;
    smolvm_error *e = NULL;

    if (smolvm_host_find_binary(env, name, &path, &e) < 0) {
        add(list, name, 0, required, smolvm_error_message(e), hint);
        smolvm_error_free(e);
        return;
    }
    {
        char *argv[] = {path, "--version", NULL};

        if (smolvm_tool_run(argv, smolvm_now_ms() + VERSION_TIMEOUT_MS, &out, NULL) == 0)
            out[strcspn(out, "\n")] = '\0';
    }
    detail = smolvm_strdupf("%s%s%s", path, out && *out ? ": " : "", out ? out : "");
    add(list, name, 1, required, detail ? detail : path, NULL);
}

/* Not required: qemu runs everything; firecracker is used by "auto" where it can. */
static void check_firecracker(json_t *list)
{
    _cleanup_free_ char *path = NULL, *version = NULL, *detail = NULL;
    smolvm_error *e = NULL;

    if (smolvm_fc_find_binary(&path, &e) < 0) {
        add(list, "firecracker", 0, 0, smolvm_error_message(e),
            "optional: backend \"auto\" uses qemu; install firecracker (SMOLVM_FIRECRACKER, "
            "~/.local/share/smolvm/bin or PATH) on a host with KVM to use it");
        smolvm_error_free(e);
        return;
    }
    (void)smolvm_fc_binary_version(path, &version, smolvm_now_ms() + VERSION_TIMEOUT_MS, NULL);
    if (smolvm_vmm_firecracker.available(SMOLVM_ACCEL_KVM, &e) < 0) {
        detail = smolvm_strdupf("%s %s found, but: %s", path, version ? version : "",
                                smolvm_error_message(e));
        add(list, "firecracker", 0, 0, detail ? detail : path,
            "backend \"auto\" uses qemu on this host");
        smolvm_error_free(e);
        return;
    }
    detail =
        smolvm_strdupf("%s %s: usable (backend \"auto\" prefers it)", path, version ? version : "");
    add(list, "firecracker", 1, 0, detail ? detail : path, NULL);
}

/* What confines a VMM started from this process (docs/security.md). */
static void check_confinement(json_t *list)
{
    _cleanup_free_ char *detail = NULL;
    smolvm_cgroup_layout *l = NULL;
    const char *why = NULL;
    char cg[128] = "", clash[256];
    int uid = smolvm_confine_uid_possible(&why);
    bool cg_ok;

    if (smolvm_cgroup_layout_detect(&l, NULL) == 0 && l->usable)
        smolvm_cgroup_layout_describe(l, cg, sizeof(cg));
    cg_ok = cg[0] != '\0';
    smolvm_confine_uid_conflicts(clash, sizeof(clash));
    if (uid)
        detail = smolvm_strdupf(
            "vmm: a uid of its own (from %u), chroot, no capabilities, no_new_privs, seccomp, "
            "oom_score_adj %d; cgroup: %s; supervisor: root with only CAP_KILL, "
            "CAP_NET_ADMIN, CAP_NET_BIND_SERVICE, no_new_privs",
            SMOLVM_VMM_UID_BASE, SMOLVM_VMM_OOM_SCORE_ADJ,
            cg_ok ? cg
            : l   ? l->why
                  : "none");
    else
        detail = smolvm_strdupf("vmm: runs as uid %u (%s), no chroot; seccomp, no_new_privs, "
                                "oom_score_adj %d; cgroup: %s",
                                (unsigned)geteuid(), why, SMOLVM_VMM_OOM_SCORE_ADJ,
                                cg_ok ? cg
                                : l   ? l->why
                                      : "none");
    if (uid && clash[0]) {
        _cleanup_free_ char *d = smolvm_strdupf(
            "%s; but the vmm uid range %u..%u is in use: %s", detail ? detail : "",
            SMOLVM_VMM_UID_BASE, SMOLVM_VMM_UID_BASE + SMOLVM_VMM_UID_COUNT - 1, clash);

        add(list, "confinement", 0, 0, d ? d : "vmm uid range in use",
            "free the vmm uid range (docs/security.md): a vmm would share its uid");
    } else {
        add(list, "confinement", uid && cg_ok, 0, detail ? detail : "out of memory",
            uid ? "the cgroup mounts are not writable: vmms run without memory and pids limits"
                : "run as root for a uid and a chroot per vmm and cgroup limits; as a user, "
                  "a cgroup applies only where one is delegated (docs/security.md)");
    }
    smolvm_cgroup_layout_free(l);
}

int smolvm_doctor_json(char **out, smolvm_ctx *ctx, smolvm_error **err)
{
    json_t *list = json_array();
    const char *why = NULL, *note = NULL;
    _cleanup_free_ char *detail = NULL, *probe = NULL;
    smolvm_image *img = NULL;
    smolvm_error *e = NULL;
    struct stat st;
    int kvm, accel = 0;

    if (!list)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");

    kvm = smolvm_host_kvm_usable(&why);
    add(list, "kvm", kvm, 0, why,
        "guests run under TCG emulation instead (seconds to boot, not milliseconds); on a "
        "host with VT-x/AMD-V load kvm_intel or kvm_amd and give access to /dev/kvm");
    (void)smolvm_host_resolve_accel(SMOLVM_ACCEL_AUTO, &accel, &note, NULL);
    detail = smolvm_strdupf("accel \"auto\" uses %s: %s", accel == SMOLVM_ACCEL_KVM ? "kvm" : "tcg",
                            note ? note : "");
    add(list, "accel", 1, 1, detail, NULL);
    add(list, "isolation", accel == SMOLVM_ACCEL_KVM, 0,
        accel == SMOLVM_ACCEL_KVM
            ? "guests run under KVM: hardware virtualization separates them from the host"
            : "guests run under TCG: software emulation is not a hardware security boundary",
        "run untrusted code on a host with VT-x/AMD-V and KVM; accel = \"kvm\" refuses to "
        "start rather than fall back to tcg");
    check_confinement(list);

    check_binary(list, "SMOLVM_QEMU", "qemu-system-x86_64", 1,
                 "install QEMU: apt-get install qemu-system-x86 (scripts/install-deps.sh)");
    check_binary(list, NULL, "qemu-img", 1,
                 "install qemu-utils: apt-get install qemu-utils (scripts/install-deps.sh)");
    check_binary(list, NULL, "ssh-keygen", 1,
                 "install openssh-client: apt-get install openssh-client");
    check_firecracker(list);

    if (smolvm_image_find(ctx, "default", &img, &e) == 0) {
        free(detail);
        detail = smolvm_strdupf("%s (vmlinux, rootfs.ext4)", img->dir);
        add(list, "image", 1, 1, detail, NULL);
    } else {
        add(list, "image", 0, 1, smolvm_error_message(e),
            "build it once, as root: scripts/build-image.sh (about 10 minutes)");
    }
    smolvm_image_free(img);
    e = smolvm_error_free(e);

    probe = smolvm_strdupf("%s/.doctor.%ld", ctx->state_dir, (long)getpid());
    if (probe && smolvm_write_file_atomic(probe, "", 0, 0600, &e) == 0) {
        (void)unlink(probe);
        add(list, "state", 1, 1, ctx->db_path, NULL);
    } else {
        add(list, "state", 0, 1, e ? smolvm_error_message(e) : "out of memory",
            "make the state directory writable or set SMOLVM_STATE_DIR");
    }
    e = smolvm_error_free(e);

    add(list, "tun", stat("/dev/net/tun", &st) == 0, 0,
        stat("/dev/net/tun", &st) == 0 ? "/dev/net/tun present" : "/dev/net/tun missing",
        "network = \"nat\" needs the tun module: modprobe tun");
    add(list, "net_admin", smolvm_host_has_net_admin(), 0,
        smolvm_host_has_net_admin() ? "CAP_NET_ADMIN held"
                                    : "no CAP_NET_ADMIN: network = \"auto\" uses \"user\"",
        "run as root for TAP/NAT networking; user networking needs no privilege");

    *out = json_dumps(list, JSON_COMPACT);
    json_decref(list);
    return *out ? 0 : smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
}
