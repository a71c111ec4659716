/* SPDX-License-Identifier: MIT */
/* What the host hands a guest at boot: the kernel command line and the config disk
 * (docs/guest-protocol.md). */
#ifndef SMOLVM_GUEST_CONFIG_H
#define SMOLVM_GUEST_CONFIG_H

#include "smolvm.h"

#define SMOLVM_CONFIG_DISK_MAX (64 * 1024)

/* Write the config disk (mode 0600): hostname, the client's authorized key line, the
 * guest host private key (file at host_key_path, base64-encoded) and env entries. */
int smolvm_config_disk_write(const char *path, const char *hostname, const char *authorized_key,
                             const char *host_key_path, const char *const *env, smolvm_error **err);

/* The kernel command line for a VM. network: resolved SMOLVM_NET_*; guest_ip,
 * gateway, netmask, dns used unless network is NONE. tsc_khz 0 omits
 * tsc_early_khz. Caller frees. */
int smolvm_kernel_cmdline(char **out, const char *hostname, int network, const char *guest_ip,
                          const char *gateway, const char *netmask, const char *dns,
                          unsigned long tsc_khz, smolvm_error **err);

#endif
