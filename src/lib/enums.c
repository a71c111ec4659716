/* SPDX-License-Identifier: MIT */
/* The one name table of each public enum (smolvm.h), used by the library, by the
 * stored configuration and, through the binding, by Lua. */
#include "util.h"

#include <string.h>

#include "smolvm.h"

static const char *const disk_names[_SMOLVM_DISK_MAX] = {
    [SMOLVM_DISK_ISOLATED] = "isolated",
    [SMOLVM_DISK_SHARED] = "shared",
};
static const char *const backend_names[_SMOLVM_BACKEND_MAX] = {
    [SMOLVM_BACKEND_AUTO] = "auto",
    [SMOLVM_BACKEND_QEMU] = "qemu",
    [SMOLVM_BACKEND_FIRECRACKER] = "firecracker",
};
static const char *const accel_names[_SMOLVM_ACCEL_MAX] = {
    [SMOLVM_ACCEL_AUTO] = "auto",
    [SMOLVM_ACCEL_KVM] = "kvm",
    [SMOLVM_ACCEL_TCG] = "tcg",
};
static const char *const net_names[_SMOLVM_NET_MAX] = {
    [SMOLVM_NET_AUTO] = "auto",
    [SMOLVM_NET_NAT] = "nat",
    [SMOLVM_NET_USER] = "user",
    [SMOLVM_NET_NONE] = "none",
};

static const char *const transport_names[_SMOLVM_TRANSPORT_MAX] = {
    [SMOLVM_TRANSPORT_AUTO] = "auto",
    [SMOLVM_TRANSPORT_AGENT] = "agent",
    [SMOLVM_TRANSPORT_SSH] = "ssh",
};

static const char *const egress_names[_SMOLVM_EGRESS_MAX] = {
    [SMOLVM_EGRESS_DEFAULT] = "default",
    [SMOLVM_EGRESS_INTERNET] = "internet",
    [SMOLVM_EGRESS_NONE] = "none",
    [SMOLVM_EGRESS_ALLOW] = "allow",
};

static const char *to_string(const char *const *names, int max, int v)
{
    return v >= 0 && v < max ? names[v] : NULL;
}

static int from_string(const char *const *names, int max, const char *s)
{
    int i;

    for (i = 0; s && i < max; i++)
        if (strcmp(names[i], s) == 0)
            return i;
    return -EINVAL;
}

#define DEFINE_ENUM_NAMES(type, prefix, names, max)                                                \
    const char *prefix##_to_string(type v)                                                         \
    {                                                                                              \
        return to_string(names, max, (int)v);                                                      \
    }                                                                                              \
    type prefix##_from_string(const char *s)                                                       \
    {                                                                                              \
        return (type)from_string(names, max, s);                                                   \
    }

DEFINE_ENUM_NAMES(smolvm_disk_mode, smolvm_disk_mode, disk_names, _SMOLVM_DISK_MAX)
DEFINE_ENUM_NAMES(smolvm_backend, smolvm_backend, backend_names, _SMOLVM_BACKEND_MAX)
DEFINE_ENUM_NAMES(smolvm_accel, smolvm_accel, accel_names, _SMOLVM_ACCEL_MAX)
DEFINE_ENUM_NAMES(smolvm_net_mode, smolvm_net_mode, net_names, _SMOLVM_NET_MAX)
DEFINE_ENUM_NAMES(smolvm_transport, smolvm_transport, transport_names, _SMOLVM_TRANSPORT_MAX)
DEFINE_ENUM_NAMES(smolvm_egress_mode, smolvm_egress_mode, egress_names, _SMOLVM_EGRESS_MAX)
