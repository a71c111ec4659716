/* SPDX-License-Identifier: MIT */
/* A VM's typed configuration: options checked and resolved, its stored JSON form. */
#include "util.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <stddef.h>
#include <string.h>

#include "error.h"
#include "store.h"
#include "vm-config.h"

static const char *const disk_format_names[_SMOLVM_DISK_FORMAT_MAX] = {
    [SMOLVM_DISK_FORMAT_QCOW2] = "qcow2",
    [SMOLVM_DISK_FORMAT_RAW] = "raw",
};

const char *smolvm_disk_format_to_string(smolvm_disk_format f)
{
    return f >= 0 && f < _SMOLVM_DISK_FORMAT_MAX ? disk_format_names[f] : NULL;
}

static smolvm_disk_format disk_format_from_string(const char *s)
{
    int i;

    for (i = 0; s && i < _SMOLVM_DISK_FORMAT_MAX; i++)
        if (strcmp(s, disk_format_names[i]) == 0)
            return (smolvm_disk_format)i;
    return _SMOLVM_DISK_FORMAT_INVALID;
}

static void strv_free(char **v)
{
    char **p;

    for (p = v; p && *p; p++)
        free(*p);
    free(v);
}

smolvm_vm_config *smolvm_vm_config_free(smolvm_vm_config *c)
{
    if (!c)
        return NULL;
    free(c->image);
    free(c->kernel);
    free(c->disk_path);
    free(c->overlay_disk);
    free(c->guest_ip);
    free(c->cidr);
    strv_free(c->env);
    strv_free(c->labels);
    free(c->template_name);
    free(c->forwards);
    smolvm_egress_policy_clear(&c->egress);
    free(c);
    return NULL;
}

void smolvm_vm_config_freep(smolvm_vm_config **c)
{
    smolvm_vm_config_free(*c);
}

/* ---------------------------------------------------------------- options */

static int env_name_valid(const char *s, size_t n)
{
    size_t i;

    if (n == 0 || !((s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z') || s[0] == '_'))
        return 0;
    for (i = 1; i < n; i++)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return 0;
    return 1;
}

/* Every option checked here too: C callers get the same errors as Lua ones. */
static int label_valid(const char *s)
{
    const char *eq = strchr(s, '=');
    size_t i;

    if (!eq || eq == s || strlen(s) > SMOLVM_LABEL_MAX)
        return 0;
    for (i = 0; s[i]; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    return 1;
}

/* The limits the guest's init holds its boot environment to (src/guest/config.c):
 * refused here, at create, with the reason, rather than failing the guest's boot. */
static int env_value_check(const char *entry, const char *eq, size_t *total, smolvm_error **err)
{
    int name_len = (int)(eq - entry) > 64 ? 64 : (int)(eq - entry);
    size_t len = strlen(entry);

    if (len > SMOLVM_ENV_ENTRY_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "env: '%.*s' is longer than %d bytes (%zu)", name_len,
                          entry, SMOLVM_ENV_ENTRY_MAX, len);
    for (const char *p = eq + 1; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            smolvm_err(err, SMOLVM_EINVAL,
                       "env: value of '%.*s' has control character 0x%02x at byte %zu", name_len,
                       entry, (unsigned)(unsigned char)*p, (size_t)(p - eq));
            return smolvm_err_hint(err, "the boot environment takes printable text only; pass "
                                        "other bytes per command (run's env) or in a file");
        }
    *total += len + 5; /* its "env=...\n" line on the config disk */
    if (*total > SMOLVM_ENV_TOTAL_MAX)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "env: more than %d bytes in all (the guest's config disk holds them)",
                          SMOLVM_ENV_TOTAL_MAX);
    return 0;
}

int smolvm_vm_options_check(smolvm_vm_options *out, const smolvm_vm_options *in, smolvm_error **err)
{
    smolvm_vm_options o = SMOLVM_VM_OPTIONS_INIT;
    size_t i, n, total = 0;
    int r;

    if (in->version < 1 || in->version > SMOLVM_VM_OPTIONS_VERSION)
        return smolvm_err(err, SMOLVM_EINVAL, "vm options: unknown version %u", in->version);
    /* A version 1 struct ends before the version 2 fields: read only what it has. */
    memcpy(&o, in,
           in->version == 1   ? offsetof(smolvm_vm_options, transport)
           : in->version == 2 ? offsetof(smolvm_vm_options, template_name)
                              : sizeof(o));
    if (o.vcpus == 0)
        o.vcpus = SMOLVM_VCPUS_DEFAULT;
    if (o.memory_mib == 0)
        o.memory_mib = SMOLVM_MEMORY_DEFAULT;
    if (!o.image)
        o.image = "default";
    if (o.id && !smolvm_id_valid(o.id))
        return smolvm_err(err, SMOLVM_EINVAL, "id: expected [a-z0-9][a-z0-9_-]{0,62}, got '%.80s'",
                          o.id);
    if (o.vcpus < SMOLVM_VCPUS_MIN || o.vcpus > SMOLVM_VCPUS_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "vcpus: expected %d..%d, got %u", SMOLVM_VCPUS_MIN,
                          SMOLVM_VCPUS_MAX, o.vcpus);
    if (o.memory_mib < SMOLVM_MEMORY_MIN || o.memory_mib > SMOLVM_MEMORY_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "memory: expected %d..%d (MiB), got %u",
                          SMOLVM_MEMORY_MIN, SMOLVM_MEMORY_MAX, o.memory_mib);
    if (!smolvm_disk_mode_to_string(o.disk))
        return smolvm_err(err, SMOLVM_EINVAL, "disk: expected isolated or shared");
    if (!smolvm_backend_to_string(o.backend))
        return smolvm_err(err, SMOLVM_EINVAL, "backend: expected auto, qemu or firecracker");
    if (!smolvm_accel_to_string(o.accel))
        return smolvm_err(err, SMOLVM_EINVAL, "accel: expected auto, kvm or tcg");
    if (!smolvm_net_mode_to_string(o.network))
        return smolvm_err(err, SMOLVM_EINVAL, "network: expected auto, nat, user or none");
    if (!smolvm_transport_to_string(o.transport))
        return smolvm_err(err, SMOLVM_EINVAL, "transport: expected auto, agent or ssh");
    if (o.ttl_ms < 0 || o.ttl_ms > SMOLVM_TTL_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "ttl: expected 0..%lld ms, got %lld",
                          (long long)SMOLVM_TTL_MAX, (long long)o.ttl_ms);
    for (n = 0; o.labels && o.labels[n]; n++) {
        if (n >= SMOLVM_LABELS_MAX)
            return smolvm_err(err, SMOLVM_EINVAL, "labels: more than %d", SMOLVM_LABELS_MAX);
        if (!label_valid(o.labels[n]))
            return smolvm_err(err, SMOLVM_EINVAL,
                              "labels: expected key=value of at most %d bytes without control "
                              "characters, got '%.80s'",
                              SMOLVM_LABEL_MAX, o.labels[n]);
    }
    for (n = 0; o.env && o.env[n]; n++) {
        const char *eq = strchr(o.env[n], '=');

        if (n >= SMOLVM_ENV_MAX)
            return smolvm_err(err, SMOLVM_EINVAL, "env: more than %d entries", SMOLVM_ENV_MAX);
        if (!eq || !env_name_valid(o.env[n], (size_t)(eq - o.env[n])))
            return smolvm_err(err, SMOLVM_EINVAL,
                              "env: expected NAME=value with NAME [A-Za-z_][A-Za-z0-9_]*, "
                              "got '%.80s'",
                              o.env[n]);
        if ((r = env_value_check(o.env[n], eq, &total, err)) < 0)
            return r;
    }
    {
        smolvm_egress_policy e;

        if ((r = smolvm_egress_policy_copy(&e, &o.egress, "egress", err)) < 0)
            return r;
        smolvm_egress_policy_clear(&e);
    }
    if (o.n_forwards > SMOLVM_FORWARDS_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "forwards: more than %d", SMOLVM_FORWARDS_MAX);
    for (i = 0; i < o.n_forwards; i++) {
        const smolvm_forward *f = &o.forwards[i];
        struct in_addr a;
        size_t j;

        if (f->host_port < 1 || f->host_port > 65535 || f->guest_port < 1 || f->guest_port > 65535)
            return smolvm_err(err, SMOLVM_EINVAL,
                              "forwards[%zu]: ports must be 1..65535, got host %d guest %d", i + 1,
                              f->host_port, f->guest_port);
        if (f->host_address && inet_pton(AF_INET, f->host_address, &a) != 1)
            return smolvm_err(err, SMOLVM_EINVAL,
                              "forwards[%zu]: host address '%.64s' is not an IPv4 address", i + 1,
                              f->host_address);
        for (j = 0; j < i; j++)
            if (o.forwards[j].host_port == f->host_port)
                return smolvm_err(err, SMOLVM_EINVAL,
                                  "forwards[%zu]: host port %d is already forwarded by "
                                  "forwards[%zu]",
                                  i + 1, f->host_port, j + 1);
    }
    *out = o;
    return 0;
}

void smolvm_vm_resolve_needs(const smolvm_vm_options *o, bool *nat, bool *firecracker)
{
    *nat = o->network == SMOLVM_NET_NAT || o->network == SMOLVM_NET_AUTO;
    *firecracker = o->backend == SMOLVM_BACKEND_FIRECRACKER ||
                   (o->backend == SMOLVM_BACKEND_AUTO && o->accel != SMOLVM_ACCEL_TCG &&
                    o->network != SMOLVM_NET_USER);
}

/* The message of a host fact as this call's error. */
static int fact_err(smolvm_error **err, const smolvm_error *fact)
{
    return smolvm_err(err, smolvm_error_code(fact), "%s", smolvm_error_message(fact));
}

int smolvm_vm_resolve(smolvm_backend *backend, smolvm_net_mode *network, const smolvm_vm_options *o,
                      const smolvm_vm_host_facts *f, smolvm_error **err)
{
    bool nat_ok = (o->network == SMOLVM_NET_NAT || o->network == SMOLVM_NET_AUTO) && !f->nat;
    bool fc_ok;

    if (o->backend == SMOLVM_BACKEND_FIRECRACKER) {
        if (o->accel == SMOLVM_ACCEL_TCG)
            return smolvm_err(err, SMOLVM_EINVAL,
                              "backend 'firecracker' needs accel 'kvm' (it cannot emulate)");
        if (f->firecracker)
            return fact_err(err, f->firecracker);
        if (o->network == SMOLVM_NET_USER)
            return smolvm_err(err, SMOLVM_EINVAL,
                              "network 'user': backend 'firecracker' has no user networking "
                              "(use network = \"nat\" or \"none\")");
        fc_ok = true;
    } else if (o->backend == SMOLVM_BACKEND_AUTO) {
        fc_ok = o->accel != SMOLVM_ACCEL_TCG && o->network != SMOLVM_NET_USER &&
                (o->network != SMOLVM_NET_AUTO || nat_ok) && !f->firecracker;
    } else {
        fc_ok = false;
    }
    *backend = fc_ok ? SMOLVM_BACKEND_FIRECRACKER : SMOLVM_BACKEND_QEMU;
    *network = o->network;
    if (*network == SMOLVM_NET_AUTO)
        *network = nat_ok ? SMOLVM_NET_NAT : fc_ok ? SMOLVM_NET_NONE : SMOLVM_NET_USER;
    if (*network == SMOLVM_NET_NAT && f->nat)
        return fact_err(err, f->nat);
    return smolvm_egress_check_network(o->egress.mode, *network, err);
}

/* ---------------------------------------------------------------- building */

static int dup_into(char **dst, const char *src)
{
    if (!src)
        return 0;
    *dst = strdup(src);
    return *dst ? 0 : -1;
}

int smolvm_vm_config_new(smolvm_vm_config **out, const smolvm_vm_options *o, smolvm_backend backend,
                         smolvm_net_mode network, const smolvm_vm_placement *w, smolvm_error **err)
{
    _cleanup_(smolvm_vm_config_freep) smolvm_vm_config *c = calloc(1, sizeof(*c));
    size_t i, n_env = 0;
    int bad = 0, r;

    if (!c)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    while (o->env && o->env[n_env])
        n_env++;
    c->vcpus = o->vcpus;
    c->memory_mib = o->memory_mib;
    c->disk = o->disk;
    c->backend = backend;
    c->accel = o->accel;
    c->network = network;
    c->env = calloc(n_env + 1, sizeof(*c->env));
    c->forwards = calloc(o->n_forwards ? o->n_forwards : 1, sizeof(*c->forwards));
    if (!c->env || !c->forwards)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    for (i = 0; i < n_env; i++)
        bad |= dup_into(&c->env[i], o->env[i]);
    c->n_env = n_env;
    for (i = 0; i < o->n_forwards; i++) {
        const smolvm_forward *f = &o->forwards[i];

        snprintf(c->forwards[i].host_address, sizeof(c->forwards[i].host_address), "%s",
                 f->host_address ? f->host_address : "127.0.0.1");
        c->forwards[i].host_port = f->host_port;
        c->forwards[i].guest_port = f->guest_port;
    }
    c->n_forwards = o->n_forwards;
    bad |= dup_into(&c->image, w->image) | dup_into(&c->kernel, w->kernel);
    if (backend == SMOLVM_BACKEND_FIRECRACKER) {
        /* No qcow2: the raw base read-only under a per-VM overlay upper disk. */
        bad |= dup_into(&c->disk_path, w->rootfs);
        c->disk_format = SMOLVM_DISK_FORMAT_RAW;
        if (o->disk == SMOLVM_DISK_ISOLATED)
            bad |= !(c->overlay_disk = smolvm_strdupf("%s/upper.ext4", w->dir));
    } else if (o->disk == SMOLVM_DISK_SHARED && !w->template_name) {
        bad |= dup_into(&c->disk_path, w->rootfs);
        c->disk_format = SMOLVM_DISK_FORMAT_RAW;
    } else {
        bad |= !(c->disk_path = smolvm_strdupf("%s/disk.qcow2", w->dir));
        c->disk_format = SMOLVM_DISK_FORMAT_QCOW2;
    }
    if (network == SMOLVM_NET_USER)
        bad |= dup_into(&c->guest_ip, w->user_ip);
    if (network == SMOLVM_NET_NAT)
        bad |= dup_into(&c->cidr, w->cidr); /* The agent works with every network (it has its own
                                               channel); ssh needs one. */
    c->transport = o->transport != SMOLVM_TRANSPORT_AUTO ? o->transport
                   : w->image_has_agent                  ? SMOLVM_TRANSPORT_AGENT
                                                         : SMOLVM_TRANSPORT_SSH;
    c->ttl_ms = o->ttl_ms;
    if (w->template_name)
        bad |= dup_into(&c->template_name, w->template_name);
    for (n_env = 0; o->labels && o->labels[n_env]; n_env++)
        ;
    c->labels = calloc(n_env + 1, sizeof(*c->labels));
    bad |= !c->labels;
    for (i = 0; c->labels && i < n_env; i++)
        bad |= dup_into(&c->labels[i], o->labels[i]);
    c->n_labels = c->labels ? n_env : 0;
    if (bad)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if ((r = smolvm_egress_policy_copy(&c->egress, &o->egress, "egress", err)) < 0 ||
        (r = smolvm_egress_policy_resolve(&c->egress, network, err)) < 0)
        return r;
    *out = TAKE_PTR(c);
    return 0;
}

/* ---------------------------------------------------------------- JSON */

static int set_str(json_t *o, const char *key, const char *v)
{
    return v ? json_object_set_new(o, key, json_string(v)) : 0;
}

int smolvm_vm_config_to_json(char **out, const smolvm_vm_config *c, smolvm_error **err)
{
    json_t *o = json_object(), *env = json_array(), *fwds = json_array(), *labels = json_object();
    int bad = !o || !env || !fwds || !labels;
    size_t i;
    char *text;

    for (i = 0; !bad && i < c->n_labels; i++) {
        const char *eq = strchr(c->labels[i], '=');
        char key[SMOLVM_LABEL_MAX + 1];

        (void)snprintf(key, sizeof(key), "%.*s", (int)(eq - c->labels[i]), c->labels[i]);
        bad |= json_object_set_new(labels, key, json_string(eq + 1));
    }
    for (i = 0; !bad && i < c->n_env; i++)
        bad |= json_array_append_new(env, json_string(c->env[i]));
    for (i = 0; !bad && i < c->n_forwards; i++)
        bad |= json_array_append_new(fwds, json_pack("{s:s, s:i, s:i}", "host_address",
                                                     c->forwards[i].host_address, "host_port",
                                                     c->forwards[i].host_port, "guest_port",
                                                     c->forwards[i].guest_port));
    if (!bad) {
        bad |= json_object_set_new(o, "vcpus", json_integer(c->vcpus));
        bad |= json_object_set_new(o, "memory", json_integer(c->memory_mib));
        bad |= set_str(o, "disk", smolvm_disk_mode_to_string(c->disk));
        bad |= set_str(o, "image", c->image);
        bad |= set_str(o, "backend", smolvm_backend_to_string(c->backend));
        bad |= set_str(o, "accel", smolvm_accel_to_string(c->accel));
        bad |= set_str(o, "network", smolvm_net_mode_to_string(c->network));
        bad |= json_object_set(o, "env", env);
        bad |= json_object_set(o, "forwards", fwds);
        bad |= set_str(o, "kernel", c->kernel);
        bad |= set_str(o, "disk_path", c->disk_path);
        bad |= set_str(o, "disk_format", smolvm_disk_format_to_string(c->disk_format));
        bad |= set_str(o, "overlay_disk", c->overlay_disk);
        bad |= set_str(o, "guest_ip", c->guest_ip);
        bad |= set_str(o, "cidr", c->cidr);
        bad |= set_str(o, "transport", smolvm_transport_to_string(c->transport));
        bad |= json_object_set_new(o, "ttl_ms", json_integer(c->ttl_ms));
        bad |= json_object_set(o, "labels", labels);
        bad |= json_object_set_new(o, "egress", smolvm_egress_policy_to_json(&c->egress));
        bad |= set_str(o, "template", c->template_name);
    }
    text = bad ? NULL : json_dumps(o, JSON_COMPACT);
    json_decref(o);
    json_decref(env);
    json_decref(fwds);
    json_decref(labels);
    if (!text)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    *out = text;
    return 0;
}

/* A string member; optional ones may be absent (*dst stays NULL). */
static int get_str(json_t *o, const char *key, bool required, char **dst)
{
    json_t *v = json_object_get(o, key);

    if (!v)
        return required ? -1 : 0;
    if (!json_is_string(v))
        return -1;
    *dst = strdup(json_string_value(v));
    return *dst ? 0 : -1;
}

static int get_uint(json_t *o, const char *key, unsigned lo, unsigned hi, unsigned *dst)
{
    json_t *v = json_object_get(o, key);

    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return -1;
    *dst = (unsigned)json_integer_value(v);
    return 0;
}

static int get_env(json_t *o, smolvm_vm_config *c)
{
    json_t *arr = json_object_get(o, "env"), *v;
    size_t i;

    if (!json_is_array(arr) || json_array_size(arr) > SMOLVM_ENV_MAX)
        return -1;
    c->env = calloc(json_array_size(arr) + 1, sizeof(*c->env));
    if (!c->env)
        return -1;
    json_array_foreach (arr, i, v) {
        if (!json_is_string(v) || !(c->env[i] = strdup(json_string_value(v))))
            return -1;
        c->n_env++;
    }
    return 0;
}

static int get_forwards(json_t *o, smolvm_vm_config *c)
{
    json_t *arr = json_object_get(o, "forwards"), *v;
    size_t i;

    if (!json_is_array(arr) || json_array_size(arr) > SMOLVM_FORWARDS_MAX)
        return -1;
    c->forwards = calloc(json_array_size(arr) ? json_array_size(arr) : 1, sizeof(*c->forwards));
    if (!c->forwards)
        return -1;
    json_array_foreach (arr, i, v) {
        const char *addr = json_string_value(json_object_get(v, "host_address"));
        json_t *hp = json_object_get(v, "host_port"), *gp = json_object_get(v, "guest_port");

        if (!addr || strlen(addr) > 15 || !json_is_integer(hp) || !json_is_integer(gp))
            return -1;
        snprintf(c->forwards[i].host_address, sizeof(c->forwards[i].host_address), "%s", addr);
        c->forwards[i].host_port = (int)json_integer_value(hp);
        c->forwards[i].guest_port = (int)json_integer_value(gp);
        c->n_forwards++;
    }
    return 0;
}

/* "labels": {key: value} (absent in 0.1 records). */
static int get_labels(json_t *o, smolvm_vm_config *c)
{
    json_t *obj = json_object_get(o, "labels"), *v;
    const char *key;
    size_t n = 0;

    if (obj && (!json_is_object(obj) || json_object_size(obj) > SMOLVM_LABELS_MAX))
        return -1;
    c->labels = calloc((obj ? json_object_size(obj) : 0) + 1, sizeof(*c->labels));
    if (!c->labels)
        return -1;
    json_object_foreach (obj, key, v) {
        if (!json_is_string(v) ||
            !(c->labels[n] = smolvm_strdupf("%s=%s", key, json_string_value(v))))
            return -1;
        c->n_labels = ++n;
    }
    return 0;
}

int smolvm_vm_config_from_json(smolvm_vm_config **out, const char *text, smolvm_error **err)
{
    _cleanup_(smolvm_vm_config_freep) smolvm_vm_config *c = calloc(1, sizeof(*c));
    _cleanup_free_ char *disk = NULL, *backend = NULL, *accel = NULL, *network = NULL,
                        *format = NULL, *transport = NULL;
    json_error_t jerr;
    json_t *o;
    int bad;

    if (!c)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    o = json_loads(text ? text : "", 0, &jerr);
    if (!json_is_object(o)) {
        json_decref(o);
        return smolvm_err(err, SMOLVM_EDB, "stored config is not a JSON object: %s", jerr.text);
    }
    bad = get_uint(o, "vcpus", SMOLVM_VCPUS_MIN, SMOLVM_VCPUS_MAX, &c->vcpus) ||
          get_uint(o, "memory", SMOLVM_MEMORY_MIN, SMOLVM_MEMORY_MAX, &c->memory_mib) ||
          get_str(o, "disk", true, &disk) || get_str(o, "image", true, &c->image) ||
          get_str(o, "backend", true, &backend) || get_str(o, "accel", true, &accel) ||
          get_str(o, "network", true, &network) || get_env(o, c) || get_forwards(o, c) ||
          get_str(o, "kernel", true, &c->kernel) || get_str(o, "disk_path", true, &c->disk_path) ||
          get_str(o, "disk_format", true, &format) ||
          get_str(o, "overlay_disk", false, &c->overlay_disk) ||
          get_str(o, "guest_ip", false, &c->guest_ip) || get_str(o, "cidr", false, &c->cidr) ||
          get_str(o, "transport", false, &transport) || get_labels(o, c) ||
          get_str(o, "template", false, &c->template_name);
    c->ttl_ms = json_integer_value(json_object_get(o, "ttl_ms"));
    /* Records made before egress policies have none: the default for their network. */
    if (!bad && json_object_get(o, "egress") &&
        smolvm_egress_policy_from_json(&c->egress, json_object_get(o, "egress"), NULL) < 0)
        bad = 1;
    json_decref(o);
    if (bad)
        return smolvm_err(err, SMOLVM_EDB, "stored config: a member is missing or malformed");
    c->disk = smolvm_disk_mode_from_string(disk);
    c->backend = smolvm_backend_from_string(backend);
    c->accel = smolvm_accel_from_string(accel);
    c->network = smolvm_net_mode_from_string(network);
    c->disk_format = disk_format_from_string(format);
    /* 0.1 records have no transport: they were made for ssh. */
    c->transport = transport ? smolvm_transport_from_string(transport) : SMOLVM_TRANSPORT_SSH;
    if (c->transport < 0 || c->transport == SMOLVM_TRANSPORT_AUTO || c->ttl_ms < 0)
        return smolvm_err(err, SMOLVM_EDB, "stored config: bad transport or ttl");
    if (c->disk < 0 || c->backend < 0 || c->backend == SMOLVM_BACKEND_AUTO || c->accel < 0 ||
        c->network < 0 || c->network == SMOLVM_NET_AUTO || c->disk_format < 0)
        return smolvm_err(err, SMOLVM_EDB,
                          "stored config: unknown disk, backend, accel, network "
                          "or disk format");
    if (c->network == SMOLVM_NET_NAT && !c->cidr)
        return smolvm_err(err, SMOLVM_EDB, "stored config: network 'nat' without a cidr");
    if (smolvm_egress_policy_resolve(&c->egress, c->network, NULL) < 0)
        return smolvm_err(err, SMOLVM_EDB,
                          "stored config: an egress policy network '%s' cannot "
                          "enforce",
                          smolvm_net_mode_to_string(c->network));
    *out = TAKE_PTR(c);
    return 0;
}
