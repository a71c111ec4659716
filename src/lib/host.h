/* SPDX-License-Identifier: MIT */
/* What this host can do: acceleration, VMM binaries, TSC frequency. */
#ifndef SMOLVM_HOST_H
#define SMOLVM_HOST_H

#include "smolvm.h"

/* Can /dev/kvm run an ordinary guest kernel? 1 yes, 0 no with *why set (static
 * text, e.g. PVM-backed or no permission). */
int smolvm_host_kvm_usable(const char **why);

/* One line, for doctor and the first start under TCG of a state directory (which then
 * holds this file; docs/security.md). */
#define SMOLVM_TCG_MARKER "tcg-warned"
#define SMOLVM_TCG_WARNING                                                                         \
    "no usable KVM: guests run under TCG, and software emulation is not a hardware security "      \
    "boundary (run untrusted code on a host with VT-x/AMD-V and KVM; accel = \"kvm\" refuses "     \
    "to start rather than fall back)"

/* Resolve requested SMOLVM_ACCEL_* to KVM or TCG. Explicit "kvm" on a host that
 * cannot use it is SMOLVM_EHOST naming the cause. *note (may be NULL) receives a
 * static sentence saying why this accel was chosen. */
int smolvm_host_resolve_accel(int requested, int *resolved, const char **note, smolvm_error **err);

/* Host TSC frequency in kHz (0 if unknown). Under TCG the guest sees the host TSC;
 * passing tsc_early_khz avoids the PIT calibration that sometimes hangs. */
unsigned long smolvm_host_tsc_khz(void);

/* Path of an executable: the environment variable `env` if set (must be executable),
 * else `name` searched in PATH. Caller frees. SMOLVM_EHOST when absent. */
int smolvm_host_find_binary(const char *env, const char *name, char **out, smolvm_error **err);

/* Does the calling process have CAP_NET_ADMIN (in its user namespace)? */
int smolvm_host_has_net_admin(void);

#endif
