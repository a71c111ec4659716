/* SPDX-License-Identifier: MIT */
/* The supervisor's launch spec and exit record (sv-spec.h). */
#include "util.h"

#include <string.h>

#include "error.h"
#include "sv-spec.h"

#define SPEC_MAX (256 * 1024)

static const char *const transport_names[] = {"agent", "ssh"};

static int path_in(char **out, const char *dir, const char *name)
{
    *out = smolvm_strdupf("%s/%s", dir, name);
    return *out ? 0 : SMOLVM_ENOMEM;
}

static json_t *jstr_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *vmm_to_json(const smolvm_vmm_config *c)
{
    json_t *fwds = json_array(), *o;
    size_t i;

    for (i = 0; fwds && i < c->n_hostfwds; i++)
        json_array_append_new(fwds, json_pack("{s:s, s:i, s:i}", "host_address",
                                              c->hostfwds[i].host_address, "host_port",
                                              c->hostfwds[i].host_port, "guest_port",
                                              c->hostfwds[i].guest_port));
    o = json_pack(
        "{s:o, s:o, s:o, s:o, s:o, s:o, s:i, s:i, s:s, s:s, s:o, s:o, s:o, s:o, "
        "s:i}",
        "kernel", jstr_or_null(c->kernel), "disk", jstr_or_null(c->disk), "disk_format",
        jstr_or_null(c->disk_format), "config_disk", jstr_or_null(c->config_disk), "cmdline",
        jstr_or_null(c->cmdline), "vm_id", jstr_or_null(c->vm_id), "vcpus", (int)c->vcpus,
        "memory_mib", (int)c->memory_mib, "accel", smolvm_accel_to_string(c->accel), "network",
        smolvm_net_mode_to_string(c->network), "tap_name", jstr_or_null(c->tap_name), "mac",
        jstr_or_null(c->mac), "hostfwds", fwds ? fwds : json_array(), "overlay_disk",
        jstr_or_null(c->overlay_disk), "overlay_mib", (int)c->overlay_mib);
    if (o && c->disk_read_only)
        (void)json_object_set_new(o, "disk_read_only", json_true());
    return o;
}

static json_t *net_to_json(const smolvm_sv_net *n)
{
    json_t *fwds = json_array();

    for (size_t i = 0; fwds && i < n->n_forwards; i++)
        json_array_append_new(fwds, json_pack("{s:s, s:i, s:i}", "host_address",
                                              n->forwards[i].host_address, "host_port",
                                              n->forwards[i].host_port, "guest_port",
                                              n->forwards[i].guest_port));
    return json_pack("{s:s, s:s, s:s, s:i, s:s, s:s, s:o, s:o}", "tap", n->tap, "guest_ip",
                     n->guest_ip, "gateway", n->gateway, "prefix", n->prefix, "uplink", n->uplink,
                     "upstream", n->upstream, "egress", smolvm_egress_policy_to_json(&n->egress),
                     "forwards", fwds ? fwds : json_array());
}

/* A string member copied into a fixed buffer; -1 when missing or too long. */
static int fixed_str(json_t *o, const char *key, char *out, size_t size)
{
    const char *v = json_string_value(json_object_get(o, key));

    if (!v || strlen(v) >= size)
        return -1;
    memcpy(out, v, strlen(v) + 1);
    return 0;
}

static int net_from_json(smolvm_sv_spec *s, json_t *v)
{
    smolvm_sv_net *n;
    json_t *fwds = json_object_get(v, "forwards"), *f;
    size_t i;

    if (!v || json_is_null(v))
        return 0;
    if (!(n = s->net = calloc(1, sizeof(*n))))
        return -1;
    if (!json_is_object(v) || fixed_str(v, "tap", n->tap, sizeof(n->tap)) ||
        fixed_str(v, "guest_ip", n->guest_ip, sizeof(n->guest_ip)) ||
        fixed_str(v, "gateway", n->gateway, sizeof(n->gateway)) ||
        fixed_str(v, "uplink", n->uplink, sizeof(n->uplink)) ||
        fixed_str(v, "upstream", n->upstream, sizeof(n->upstream)) ||
        !json_is_integer(json_object_get(v, "prefix")) || !json_is_array(fwds) ||
        json_array_size(fwds) > SMOLVM_FORWARDS_MAX ||
        smolvm_egress_policy_from_json(&n->egress, json_object_get(v, "egress"), NULL) < 0 ||
        n->egress.mode == SMOLVM_EGRESS_DEFAULT)
        return -1;
    n->prefix = (int)json_integer_value(json_object_get(v, "prefix"));
    json_array_foreach (fwds, i, f) {
        if (fixed_str(f, "host_address", n->forwards[i].host_address,
                      sizeof(n->forwards[i].host_address)))
            return -1;
        n->forwards[i].host_port = (int)json_integer_value(json_object_get(f, "host_port"));
        n->forwards[i].guest_port = (int)json_integer_value(json_object_get(f, "guest_port"));
    }
    n->n_forwards = json_array_size(fwds);
    return 0;
}

int smolvm_sv_spec_write(const smolvm_sv_spec *s, smolvm_error **err)
{
    _cleanup_free_ char *path = NULL, *text = NULL;
    json_t *o;
    int r;

    if (path_in(&path, s->dir, SMOLVM_SV_SPEC_FILE) < 0)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    o = json_pack("{s:i, s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:o}", "version", 1, "vm",
                  s->vm_id, "dir", s->dir, "state_dir", s->state_dir, "backend",
                  smolvm_backend_to_string(s->backend), "transport", transport_names[s->transport],
                  "owner_pid", (json_int_t)s->owner_pid, "owner_start", (json_int_t)s->owner_start,
                  "expires_at", (json_int_t)s->expires_at, "console_max",
                  (json_int_t)s->console_max, "vmm", vmm_to_json(&s->vmm));
    if (o && s->net && json_object_set_new(o, "net", net_to_json(s->net)) < 0) {
        json_decref(o);
        o = NULL;
    }
    if (o && s->shared_memory)
        (void)json_object_set_new(o, "shared_memory", json_true());
    if (o && s->restore.set) {
        const smolvm_sv_restore *rs = &s->restore;
        json_t *ro =
            json_pack("{s:s, s:o, s:b, s:O?, s:I, s:O?}", "state", rs->state, "mem",
                      jstr_or_null(rs->mem), "mem_private", rs->mem_private, "agent", rs->agent,
                      "next_stream", (json_int_t)rs->next_stream, "identity", rs->identity);

        if (!ro || json_object_set_new(o, "restore", ro) < 0) {
            json_decref(o);
            o = NULL;
        }
    }
    text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    r = smolvm_write_file_atomic(path, text, strlen(text), 0600, err);
    return r < 0 ? smolvm_err_wrap(err, "supervisor spec") : 0;
}

smolvm_sv_spec *smolvm_sv_spec_free(smolvm_sv_spec *s)
{
    if (!s)
        return NULL;
    json_decref(s->json);
    if (s->net)
        smolvm_egress_policy_clear(&s->net->egress);
    free(s->net);
    free(s->hostfwds);
    free(s->vm_id);
    free(s->dir);
    free(s->state_dir);
    free(s);
    return NULL;
}

static void spec_freep(smolvm_sv_spec **s)
{
    smolvm_sv_spec_free(*s);
}

/* A string member (NULL when absent or null; -1 when of another type). */
static int opt_str(json_t *o, const char *key, const char **out)
{
    json_t *v = json_object_get(o, key);

    *out = NULL;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return -1;
    *out = json_string_value(v);
    return 0;
}

static int vmm_from_json(smolvm_sv_spec *s, json_t *v)
{
    smolvm_vmm_config *c = &s->vmm;
    const char *accel = NULL, *network = NULL;
    json_t *fwds = json_object_get(v, "hostfwds"), *f;
    size_t i;

    if (!json_is_object(v) || opt_str(v, "kernel", &c->kernel) || opt_str(v, "disk", &c->disk) ||
        opt_str(v, "disk_format", &c->disk_format) || opt_str(v, "config_disk", &c->config_disk) ||
        opt_str(v, "cmdline", &c->cmdline) || opt_str(v, "vm_id", &c->vm_id) ||
        opt_str(v, "accel", &accel) || opt_str(v, "network", &network) ||
        opt_str(v, "tap_name", &c->tap_name) || opt_str(v, "mac", &c->mac) ||
        opt_str(v, "overlay_disk", &c->overlay_disk))
        return -1;
    c->vcpus = (unsigned)json_integer_value(json_object_get(v, "vcpus"));
    c->memory_mib = (unsigned)json_integer_value(json_object_get(v, "memory_mib"));
    c->overlay_mib = (unsigned)json_integer_value(json_object_get(v, "overlay_mib"));
    c->disk_read_only = json_is_true(json_object_get(v, "disk_read_only"));
    c->accel = smolvm_accel_from_string(accel);
    c->network = smolvm_net_mode_from_string(network);
    if (c->accel < 0 || c->network < 0 || !json_is_array(fwds) ||
        json_array_size(fwds) > SMOLVM_FORWARDS_MAX + 1)
        return -1;
    s->hostfwds = calloc(json_array_size(fwds) + 1, sizeof(*s->hostfwds));
    if (!s->hostfwds)
        return -1;
    json_array_foreach (fwds, i, f) {
        if (opt_str(f, "host_address", &s->hostfwds[i].host_address) < 0)
            return -1;
        s->hostfwds[i].host_port = (int)json_integer_value(json_object_get(f, "host_port"));
        s->hostfwds[i].guest_port = (int)json_integer_value(json_object_get(f, "guest_port"));
    }
    c->hostfwds = s->hostfwds;
    c->n_hostfwds = json_array_size(fwds);
    c->console_fd = c->ctl_fd = c->agent_fd = c->mem_fd = -1;
    return 0;
}

static int restore_from_json(smolvm_sv_restore *rs, json_t *v)
{
    json_int_t next;

    if (!v || json_is_null(v))
        return 0;
    if (!json_is_object(v) || opt_str(v, "state", &rs->state) || !rs->state ||
        rs->state[0] != '/' || opt_str(v, "mem", &rs->mem) || (rs->mem && rs->mem[0] != '/'))
        return -1;
    rs->mem_private = json_is_true(json_object_get(v, "mem_private"));
    rs->agent = json_object_get(v, "agent");
    rs->identity = json_object_get(v, "identity");
    next = json_integer_value(json_object_get(v, "next_stream"));
    if ((rs->agent && !json_is_object(rs->agent)) ||
        (rs->identity && !json_is_object(rs->identity)) || next < 0 || next > UINT32_MAX / 2)
        return -1;
    rs->next_stream = (uint32_t)next;
    rs->set = true;
    return 0;
}

int smolvm_sv_spec_read(smolvm_sv_spec **out, const char *dir, smolvm_error **err)
{
    _cleanup_(spec_freep) smolvm_sv_spec *s = calloc(1, sizeof(*s));
    _cleanup_free_ char *path = NULL, *text = NULL;
    const char *vm = NULL, *d = NULL, *state = NULL, *backend = NULL, *transport = NULL;
    json_error_t jerr;
    int r;

    if (!s || path_in(&path, dir, SMOLVM_SV_SPEC_FILE) < 0)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if ((r = smolvm_read_file(path, SPEC_MAX, &text, NULL, err)) < 0)
        return r;
    s->json = json_loads(text, 0, &jerr);
    if (!json_is_object(s->json))
        return smolvm_err(err, SMOLVM_EINVAL, "'%s': not a JSON object: %s", path, jerr.text);
    if (json_integer_value(json_object_get(s->json, "version")) != 1 ||
        opt_str(s->json, "vm", &vm) || opt_str(s->json, "dir", &d) ||
        opt_str(s->json, "state_dir", &state) || opt_str(s->json, "backend", &backend) ||
        opt_str(s->json, "transport", &transport) || !vm || !d || !state || !transport ||
        vmm_from_json(s, json_object_get(s->json, "vmm")) < 0 ||
        net_from_json(s, json_object_get(s->json, "net")) < 0 ||
        restore_from_json(&s->restore, json_object_get(s->json, "restore")) < 0)
        return smolvm_err(err, SMOLVM_EINVAL, "'%s': a member is missing or malformed", path);
    s->backend = smolvm_backend_from_string(backend);
    s->transport = strcmp(transport, "ssh") == 0 ? SMOLVM_SV_SSH : SMOLVM_SV_AGENT;
    s->owner_pid = (pid_t)json_integer_value(json_object_get(s->json, "owner_pid"));
    s->owner_start = (uint64_t)json_integer_value(json_object_get(s->json, "owner_start"));
    s->expires_at = json_integer_value(json_object_get(s->json, "expires_at"));
    s->console_max = (uint64_t)json_integer_value(json_object_get(s->json, "console_max"));
    s->shared_memory = json_is_true(json_object_get(s->json, "shared_memory"));
    if (s->backend != SMOLVM_BACKEND_QEMU && s->backend != SMOLVM_BACKEND_FIRECRACKER)
        return smolvm_err(err, SMOLVM_EINVAL, "'%s': unknown backend", path);
    if (s->console_max < SMOLVM_CONSOLE_MAX_MIN)
        s->console_max = SMOLVM_CONSOLE_MAX_MIN;
    s->vm_id = strdup(vm);
    s->dir = strdup(d);
    s->state_dir = strdup(state);
    if (!s->vm_id || !s->dir || !s->state_dir)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    s->vmm.dir = s->dir;
    *out = TAKE_PTR(s);
    return 0;
}

int smolvm_sv_exit_write(const char *dir, const smolvm_sv_exit *e, smolvm_error **err)
{
    _cleanup_free_ char *path = NULL, *text = NULL;

    if (path_in(&path, dir, SMOLVM_SV_EXIT_FILE) < 0)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    text = smolvm_strdupf("{\"exit_code\":%d,\"signal\":%d,\"guest_poweroff\":%s}\n", e->exit_code,
                          e->signal, e->guest_poweroff ? "true" : "false");
    if (!text)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    return smolvm_write_file_atomic(path, text, strlen(text), 0600, err);
}

int smolvm_sv_exit_read(smolvm_sv_exit *out, const char *dir, smolvm_error **err)
{
    _cleanup_free_ char *path = NULL, *text = NULL;
    json_t *o;
    int r;

    if (path_in(&path, dir, SMOLVM_SV_EXIT_FILE) < 0)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if ((r = smolvm_read_file(path, 4096, &text, NULL, err)) < 0)
        return r;
    o = json_loads(text, 0, NULL);
    if (!json_is_object(o)) {
        json_decref(o);
        return smolvm_err(err, SMOLVM_EIO, "'%s' is not a JSON object", path);
    }
    out->exit_code = (int)json_integer_value(json_object_get(o, "exit_code"));
    out->signal = (int)json_integer_value(json_object_get(o, "signal"));
    out->guest_poweroff = json_is_true(json_object_get(o, "guest_poweroff"));
    json_decref(o);
    return 0;
}
