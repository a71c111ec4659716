/* SPDX-License-Identifier: MIT */
/*
 * core.constants: the C library's enum names and limits, so Lua never copies them by
 * hand (luv's constants.c). lua/smolvm/schema.lua builds its validation from these.
 *
 *   core.constants.disk     = { "isolated", "shared" }   (in enum order)
 *   core.constants.backend  = { "auto", "qemu", "firecracker" }
 *   core.constants.accel    = { "auto", "kvm", "tcg" }
 *   core.constants.network  = { "auto", "nat", "user", "none" }
 *   core.constants.transport = { "auto", "agent", "ssh" }
 *   core.constants.egress   = { "default", "internet", "none", "allow" }
 *   core.constants.limits   = { vcpus_min=, vcpus_max=, vcpus_default=, memory_min=, ... }
 */
#include "binding.h"

typedef const char *(*enum_name)(int v);

static const char *disk_name(int v)
{
    return smolvm_disk_mode_to_string((smolvm_disk_mode)v);
}
static const char *backend_name(int v)
{
    return smolvm_backend_to_string((smolvm_backend)v);
}
static const char *accel_name(int v)
{
    return smolvm_accel_to_string((smolvm_accel)v);
}
static const char *net_name(int v)
{
    return smolvm_net_mode_to_string((smolvm_net_mode)v);
}

static const char *transport_name(int v)
{
    return smolvm_transport_to_string((smolvm_transport)v);
}

static const char *egress_name(int v)
{
    return smolvm_egress_mode_to_string((smolvm_egress_mode)v);
}

static void push_names(lua_State *L, const char *field, enum_name name)
{
    const char *s;
    int i;

    lua_newtable(L);
    for (i = 0; (s = name(i)); i++) {
        lua_pushstring(L, s);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, field);
}

static void set_int(lua_State *L, const char *field, lua_Integer v)
{
    lua_pushinteger(L, v);
    lua_setfield(L, -2, field);
}

void smolvm_lua_open_constants(lua_State *L)
{
    lua_newtable(L);
    push_names(L, "disk", disk_name);
    push_names(L, "backend", backend_name);
    push_names(L, "accel", accel_name);
    push_names(L, "network", net_name);
    push_names(L, "transport", transport_name);
    push_names(L, "egress", egress_name);
    lua_newtable(L);
    set_int(L, "vcpus_min", SMOLVM_VCPUS_MIN);
    set_int(L, "vcpus_max", SMOLVM_VCPUS_MAX);
    set_int(L, "vcpus_default", SMOLVM_VCPUS_DEFAULT);
    set_int(L, "memory_min", SMOLVM_MEMORY_MIN);
    set_int(L, "memory_max", SMOLVM_MEMORY_MAX);
    set_int(L, "memory_default", SMOLVM_MEMORY_DEFAULT);
    set_int(L, "env", SMOLVM_ENV_MAX);
    set_int(L, "env_entry", SMOLVM_ENV_ENTRY_MAX);
    set_int(L, "forwards", SMOLVM_FORWARDS_MAX);
    set_int(L, "id", SMOLVM_ID_MAX);
    set_int(L, "read_file", SMOLVM_READ_FILE_MAX);
    set_int(L, "output", SMOLVM_OUTPUT_LIMIT_DEFAULT);
    set_int(L, "ttl_ms", SMOLVM_TTL_MAX);
    set_int(L, "labels", SMOLVM_LABELS_MAX);
    set_int(L, "label", SMOLVM_LABEL_MAX);
    set_int(L, "image_packages", SMOLVM_IMAGE_PACKAGES_MAX);
    set_int(L, "package_name", SMOLVM_PACKAGE_NAME_MAX);
    set_int(L, "egress_allow", SMOLVM_EGRESS_ALLOW_MAX);
    set_int(L, "events", SMOLVM_EVENTS_MAX);
    lua_setfield(L, -2, "limits");
    lua_setfield(L, -2, "constants");
}
