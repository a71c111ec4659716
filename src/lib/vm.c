/* SPDX-License-Identifier: MIT */
/* VM records: create (validate, record, prepare), open, describe, list. */
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

#include "context.h"
#include "error.h"
#include "host.h"
#include "image.h"
#include "ssh.h"
#include "guest-config.h"
#include "vm-internal.h"
#include "vm-net.h"
#include "vmm/vmm.h"

#define ENV_ENTRY_MAX 4096

static const char *const disk_names[] = {"isolated", "shared"};
static const char *const backend_names[] = {"auto", "qemu", "firecracker"};
static const char *const accel_names[] = {"auto", "kvm", "tcg"};
static const char *const network_names[] = {"auto", "none", "user", "nat"};

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
static int validate(const smolvm_vm_options *o, smolvm_error **err)
{
    size_t i, n;

    if (o->version < 1 || o->version > SMOLVM_VM_OPTIONS_VERSION)
        return smolvm_err(err, SMOLVM_EINVAL, "vm options: unknown version %u", o->version);
    if (o->id && !smolvm_id_valid(o->id))
        return smolvm_err(err, SMOLVM_EINVAL, "id: expected [a-z0-9][a-z0-9_-]{0,62}, got '%.80s'",
                          o->id);
    if (o->vcpus < SMOLVM_VCPUS_MIN || o->vcpus > SMOLVM_VCPUS_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "vcpus: expected %d..%d, got %u", SMOLVM_VCPUS_MIN,
                          SMOLVM_VCPUS_MAX, o->vcpus);
    if (o->memory_mib < SMOLVM_MEMORY_MIN || o->memory_mib > SMOLVM_MEMORY_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "memory: expected %d..%d (MiB), got %u",
                          SMOLVM_MEMORY_MIN, SMOLVM_MEMORY_MAX, o->memory_mib);
    if (o->disk != SMOLVM_DISK_ISOLATED && o->disk != SMOLVM_DISK_SHARED)
        return smolvm_err(err, SMOLVM_EINVAL, "disk: expected isolated or shared");
    if (o->backend < SMOLVM_BACKEND_AUTO || o->backend > SMOLVM_BACKEND_FIRECRACKER)
        return smolvm_err(err, SMOLVM_EINVAL, "backend: expected auto, qemu or firecracker");
    if (o->accel < SMOLVM_ACCEL_AUTO || o->accel > SMOLVM_ACCEL_TCG)
        return smolvm_err(err, SMOLVM_EINVAL, "accel: expected auto, kvm or tcg");
    if (o->network < SMOLVM_NET_AUTO || o->network > SMOLVM_NET_NAT)
        return smolvm_err(err, SMOLVM_EINVAL, "network: expected auto, none, user or nat");
    for (n = 0; o->env && o->env[n]; n++) {
        const char *eq = strchr(o->env[n], '=');

        if (n >= SMOLVM_ENV_MAX)
            return smolvm_err(err, SMOLVM_EINVAL, "env: more than %d entries", SMOLVM_ENV_MAX);
        if (!eq || !env_name_valid(o->env[n], (size_t)(eq - o->env[n])))
            return smolvm_err(err, SMOLVM_EINVAL,
                              "env: expected NAME=value with NAME [A-Za-z_][A-Za-z0-9_]*, "
                              "got '%.80s'",
                              o->env[n]);
        if (strlen(o->env[n]) > ENV_ENTRY_MAX || strchr(o->env[n], '\n'))
            return smolvm_err(err, SMOLVM_EINVAL,
                              "env: '%.*s' is longer than %d bytes or has a newline",
                              (int)(eq - o->env[n]), o->env[n], ENV_ENTRY_MAX);
    }
    if (o->n_forwards > SMOLVM_FORWARDS_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "forwards: more than %d", SMOLVM_FORWARDS_MAX);
    for (i = 0; i < o->n_forwards; i++) {
        const smolvm_forward *f = &o->forwards[i];
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
            if (o->forwards[j].host_port == f->host_port)
                return smolvm_err(err, SMOLVM_EINVAL,
                                  "forwards[%zu]: host port %d is already forwarded by "
                                  "forwards[%zu]",
                                  i + 1, f->host_port, j + 1);
    }
    return 0;
}

const char *smolvm_vm_cfg_str(const smolvm_vm *vm, const char *key)
{
    return json_string_value(json_object_get(vm->config, key));
}

long long smolvm_vm_cfg_int(const smolvm_vm *vm, const char *key)
{
    return json_integer_value(json_object_get(vm->config, key));
}

const char **smolvm_vm_env(const smolvm_vm *vm)
{
    json_t *env = json_object_get(vm->config, "env"), *v;
    const char **out = calloc(json_array_size(env) + 1, sizeof(*out));
    size_t i;

    if (!out)
        return NULL;
    json_array_foreach (env, i, v)
        out[i] = json_string_value(v);
    return out;
}

int smolvm_vm_lock(const char *dir, const char *id, const char *what, int wait_ms, int *fd,
                   smolvm_error **err)
{
    _cleanup_free_ char *path = smolvm_strdupf("%s/%s", dir, SMOLVM_VM_LOCK);
    _cleanup_close_ int lfd = -1;
    int64_t deadline = smolvm_now_ms() + wait_ms;
    int pause_ms = 1;

    if (!path)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    lfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lfd < 0)
        return smolvm_err_errno(err, errno, "%s '%s': open lock '%s'", what, id, path);
    /* flock(2) cannot wait with a deadline, so a short holder (a reconcile) is waited
     * out with a bounded backoff; a long one (a start) is reported, not waited for. */
    while (flock(lfd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK && smolvm_remaining_ms(deadline) > 0) {
            struct timespec ts = {0, (long)pause_ms * 1000000L};

            (void)nanosleep(&ts, NULL);
            pause_ms = pause_ms < 50 ? pause_ms * 2 : 50;
            continue;
        }
        if (errno == EWOULDBLOCK)
            return smolvm_err(err, SMOLVM_ESTATE,
                              "%s '%s': another process is starting, stopping or deleting "
                              "this vm (try again when it is done)",
                              what, id);
        return smolvm_err_errno(err, errno, "%s '%s': lock", what, id);
    }
    *fd = TAKE_FD(lfd);
    return 0;
}

/* Create the installation's client key once. Two processes racing both generate a
 * key, and link() lets exactly one of them become the key; the public half is linked
 * first so a private key never exists without it. */
int smolvm_client_key(smolvm_ctx *ctx, char **key_path, char **pub_line, smolvm_error **err)
{
    _cleanup_free_ char *path = smolvm_strdupf("%s/id_ed25519", ctx->state_dir);
    _cleanup_free_ char *pub = NULL, *tmp = NULL, *tmppub = NULL, *finalpub = NULL;
    int r;

    if (!path)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (access(path, R_OK) < 0) {
        tmp = smolvm_strdupf("%s.tmp.%ld", path, (long)getpid());
        tmppub = smolvm_strdupf("%s.pub", tmp ? tmp : "");
        finalpub = smolvm_strdupf("%s.pub", path);
        if (!tmp || !tmppub || !finalpub)
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        (void)unlink(tmp);
        (void)unlink(tmppub);
        r = smolvm_ssh_keygen(tmp, "smolvm", err);
        if (r < 0)
            return smolvm_err_wrap(err, "create the ssh client key");
        if (access(path, R_OK) < 0) {
            (void)unlink(finalpub);
            if (link(tmppub, finalpub) == 0 && link(tmp, path) < 0 && errno != EEXIST) {
                r = smolvm_err_errno(err, errno, "create '%s'", path);
                (void)unlink(tmp);
                (void)unlink(tmppub);
                return r;
            }
        }
        (void)unlink(tmp);
        (void)unlink(tmppub);
    }
    free(finalpub);
    finalpub = smolvm_strdupf("%s.pub", path);
    if (!finalpub)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    r = smolvm_read_file(finalpub, 4096, &pub, NULL, err);
    if (r < 0)
        return r;
    pub[strcspn(pub, "\n")] = '\0';
    *key_path = TAKE_PTR(path);
    *pub_line = TAKE_PTR(pub);
    return 0;
}

int smolvm_vm_refresh(smolvm_vm *vm, smolvm_error **err)
{
    smolvm_vm_row *row = NULL;
    json_t *config;
    json_error_t jerr;
    int r;

    r = smolvm_store_vm_get(vm->ctx->store, vm->id, &row, err);
    if (r < 0)
        return r;
    config = json_loads(row->config_json ? row->config_json : "{}", 0, &jerr);
    if (!config) {
        smolvm_vm_row_free(row);
        return smolvm_err(err, SMOLVM_EDB, "vm '%s': stored config is not JSON: %s", vm->id,
                          jerr.text);
    }
    smolvm_vm_row_free(vm->row);
    json_decref(vm->config);
    vm->row = row;
    vm->config = config;
    return 0;
}

static int generate_id(char out[16], smolvm_error **err)
{
    unsigned char b[4];
    int r = smolvm_random(b, sizeof(b), err);

    if (r < 0)
        return r;
    snprintf(out, 16, "vm-%02x%02x%02x%02x", b[0], b[1], b[2], b[3]);
    return 0;
}

int smolvm_port_bindable(int port, void *payload)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    const char *addr = payload;
    _cleanup_close_ int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;

    if (fd < 0 || inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
        return 0;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    return bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
}

/* NAT networking (TAP + nftables) needs CAP_NET_ADMIN, tun, nf_tables, an uplink. */
static int nat_available(smolvm_error **err)
{
    return smolvm_nat_usable(err);
}

/* backend "auto" is firecracker where it can run (binary + usable KVM) and the
 * network allows it, else qemu. network "auto" is nat where possible, else user
 * (qemu) or none (firecracker, which has no user networking). */
static int resolve_backend(const smolvm_vm_options *o, int *backend, int *network,
                           smolvm_error **err)
{
    int fc_ok, nat_ok, r;

    nat_ok = o->network == SMOLVM_NET_NAT || o->network == SMOLVM_NET_AUTO
                 ? nat_available(NULL) == 0
                 : 0;
    if (o->backend == SMOLVM_BACKEND_FIRECRACKER) {
        if (o->accel == SMOLVM_ACCEL_TCG)
            return smolvm_err(err, SMOLVM_EINVAL,
                              "backend 'firecracker' needs accel 'kvm' (it cannot emulate)");
        if ((r = smolvm_vmm_firecracker.available(SMOLVM_ACCEL_KVM, err)) < 0)
            return r;
        if (o->network == SMOLVM_NET_USER)
            return smolvm_err(err, SMOLVM_EINVAL,
                              "network 'user': backend 'firecracker' has no user networking "
                              "(use network = \"nat\" or \"none\")");
        fc_ok = 1;
    } else if (o->backend == SMOLVM_BACKEND_AUTO) {
        fc_ok = o->accel != SMOLVM_ACCEL_TCG && o->network != SMOLVM_NET_USER &&
                (o->network != SMOLVM_NET_AUTO || nat_ok) &&
                smolvm_vmm_firecracker.available(SMOLVM_ACCEL_KVM, NULL) == 0;
    } else {
        fc_ok = 0;
    }
    *backend = fc_ok ? SMOLVM_BACKEND_FIRECRACKER : SMOLVM_BACKEND_QEMU;
    *network = o->network;
    if (*network == SMOLVM_NET_AUTO)
        *network = nat_ok ? SMOLVM_NET_NAT : fc_ok ? SMOLVM_NET_NONE : SMOLVM_NET_USER;
    if (*network == SMOLVM_NET_NAT && (r = nat_available(err)) < 0)
        return r;
    return 0;
}

static json_t *build_config(const smolvm_vm_options *o, const smolvm_image *img, const char *dir,
                            int backend, int network)
{
    json_t *c = json_object(), *env = json_array(), *fwds = json_array();
    size_t i;

    if (!c || !env || !fwds) {
        json_decref(c);
        json_decref(env);
        json_decref(fwds);
        return NULL;
    }
    for (i = 0; o->env && o->env[i]; i++)
        json_array_append_new(env, json_string(o->env[i]));
    for (i = 0; i < o->n_forwards; i++)
        json_array_append_new(
            fwds, json_pack("{s:s, s:i, s:i}", "host_address",
                            o->forwards[i].host_address ? o->forwards[i].host_address : "127.0.0.1",
                            "host_port", o->forwards[i].host_port, "guest_port",
                            o->forwards[i].guest_port));
    json_object_set_new(c, "vcpus", json_integer(o->vcpus));
    json_object_set_new(c, "memory", json_integer(o->memory_mib));
    json_object_set_new(c, "disk", json_string(disk_names[o->disk]));
    json_object_set_new(c, "image", json_string(img->name));
    json_object_set_new(c, "backend", json_string(backend_names[backend]));
    json_object_set_new(c, "accel", json_string(accel_names[o->accel]));
    json_object_set_new(c, "network", json_string(network_names[network]));
    json_object_set_new(c, "env", env);
    json_object_set_new(c, "forwards", fwds);
    json_object_set_new(c, "kernel", json_string(img->kernel));
    if (backend == SMOLVM_BACKEND_FIRECRACKER) {
        /* No qcow2: the raw base read-only under a per-VM overlay upper disk. */
        json_object_set_new(c, "disk_path", json_string(img->rootfs));
        json_object_set_new(c, "disk_format", json_string("raw"));
        if (o->disk == SMOLVM_DISK_ISOLATED) {
            char *p = smolvm_strdupf("%s/upper.ext4", dir);

            json_object_set_new(c, "overlay_disk", json_string(p ? p : ""));
            free(p);
        }
    } else if (o->disk == SMOLVM_DISK_SHARED) {
        json_object_set_new(c, "disk_path", json_string(img->rootfs));
        json_object_set_new(c, "disk_format", json_string("raw"));
    } else {
        char *p = smolvm_strdupf("%s/disk.qcow2", dir);

        json_object_set_new(c, "disk_path", json_string(p ? p : ""));
        json_object_set_new(c, "disk_format", json_string("qcow2"));
        free(p);
    }
    if (network == SMOLVM_NET_USER)
        json_object_set_new(c, "guest_ip", json_string(SMOLVM_USER_GUEST_IP));
    if (network == SMOLVM_NET_NAT)
        json_object_set_new(c, "cidr", json_string(smolvm_nat_cidr()));
    return c;
}

int smolvm_vm_alloc_ssh_port(smolvm_vm *vm, int *port, smolvm_error **err)
{
    uint16_t rnd = 0;
    int lo, r;

    /* Start at a random point of the range: controllers with different state dirs do
     * not see each other's reservations, and lowest-first would make them all race
     * for the same port between the bind check and QEMU's bind. */
    (void)smolvm_random(&rnd, sizeof(rnd), NULL);
    lo = SMOLVM_SSH_PORT_MIN + rnd % (SMOLVM_SSH_PORT_MAX - SMOLVM_SSH_PORT_MIN + 1);
    r = smolvm_store_port_alloc(vm->ctx->store, vm->id, "ssh", "127.0.0.1", lo, SMOLVM_SSH_PORT_MAX,
                                22, "tcp", smolvm_port_bindable, (void *)"127.0.0.1", port, err);
    if (r == SMOLVM_ENOSPC && lo > SMOLVM_SSH_PORT_MIN) {
        if (err)
            *err = smolvm_error_free(*err);
        r = smolvm_store_port_alloc(vm->ctx->store, vm->id, "ssh", "127.0.0.1", SMOLVM_SSH_PORT_MIN,
                                    lo - 1, 22, "tcp", smolvm_port_bindable, (void *)"127.0.0.1",
                                    port, err);
    }
    return r < 0 ? smolvm_err_wrap(err, "allocate a host port for ssh") : 0;
}

/* Everything after the record exists; on failure the caller removes dir and record. */
static int prepare(smolvm_vm *vm, const smolvm_vm_options *o, const smolvm_image *img, int network,
                   smolvm_error **err)
{
    const char *dir = vm->row->dir;
    _cleanup_free_ char *hostkey = smolvm_strdupf("%s/%s", dir, SMOLVM_VM_HOST_KEY);
    _cleanup_free_ char *cfgdisk = smolvm_strdupf("%s/%s", dir, SMOLVM_VM_CONFIG_DISK);
    _cleanup_free_ char *client = NULL, *client_pub = NULL, *disk = NULL;
    _cleanup_free_ const char **env = NULL;
    const char *format;
    size_t i;
    int r, port;

    if (!hostkey || !cfgdisk)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if ((r = smolvm_mkdir_p(dir, 0700, err)) < 0)
        return r;
    if ((r = smolvm_ssh_keygen(hostkey, vm->id, err)) < 0)
        return smolvm_err_wrap(err, "generate the guest host key");
    if ((r = smolvm_client_key(vm->ctx, &client, &client_pub, err)) < 0)
        return r;
    /* qemu: a qcow2 overlay now; firecracker makes its overlay upper disk at start. */
    if (strcmp(vm->row->backend, "qemu") == 0 &&
        (r = smolvm_image_make_disk(img, o->disk, dir, &disk, &format, err)) < 0)
        return r;
    env = smolvm_vm_env(vm);
    if (!env)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if ((r = smolvm_config_disk_write(cfgdisk, vm->id, client_pub, hostkey, env, err)) < 0)
        return r;
    if (network == SMOLVM_NET_NAT) {
        char ip[16];

        if ((r = smolvm_store_lease_ip(vm->ctx->store, vm->id, smolvm_nat_cidr(), ip, err)) < 0)
            return smolvm_err_wrap(err, "lease an address in '%s'", smolvm_nat_cidr());
    }
    if (network == SMOLVM_NET_USER) {
        if ((r = smolvm_vm_alloc_ssh_port(vm, &port, err)) < 0)
            return r;
    }
    for (i = 0; i < o->n_forwards; i++) {
        const smolvm_forward *f = &o->forwards[i];
        const char *addr = f->host_address ? f->host_address : "127.0.0.1";

        r = smolvm_store_port_add(vm->ctx->store, vm->id, "forward", addr, f->host_port,
                                  f->guest_port, "tcp", err);
        if (r == SMOLVM_EEXIST)
            return smolvm_err_wrap(err, "forward %s:%d", addr, f->host_port);
        if (r < 0)
            return r;
        if (!smolvm_port_bindable(f->host_port, (void *)addr))
            return smolvm_err(err, SMOLVM_EEXIST,
                              "forward %s:%d: the port is already in use on this host", addr,
                              f->host_port);
    }
    return 0;
}

int smolvm_vm_create(smolvm_vm **out, smolvm_ctx *ctx, const smolvm_vm_options *opts,
                     smolvm_error **err)
{
    smolvm_vm_options defaults = SMOLVM_VM_OPTIONS_INIT;
    smolvm_image *img = NULL;
    smolvm_vm *vm = NULL;
    smolvm_vm_row row = {0};
    char genid[16];
    json_t *config = NULL;
    int r, backend = SMOLVM_BACKEND_QEMU, network = SMOLVM_NET_USER, attempt;

    if (!opts)
        opts = &defaults;
    if ((r = validate(opts, err)) < 0)
        return r;

    if ((r = resolve_backend(opts, &backend, &network, err)) < 0)
        return r;
    if ((r = smolvm_image_find(ctx, opts->image ? opts->image : "default", &img, err)) < 0)
        return r;

    vm = calloc(1, sizeof(*vm));
    if (!vm) {
        smolvm_image_free(img);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    vm->ctx = ctx;
    for (attempt = 0;; attempt++) {
        const char *id = opts->id;

        if (!id) {
            if ((r = generate_id(genid, err)) < 0)
                goto fail;
            id = genid;
        }
        free(row.id);
        free(row.dir);
        free(row.config_json);
        row.id = strdup(id);
        row.dir = smolvm_strdupf("%s/vms/%s", ctx->state_dir, id);
        json_decref(config);
        config = build_config(opts, img, row.dir ? row.dir : "", backend, network);
        row.config_json = config ? json_dumps(config, JSON_COMPACT) : NULL;
        row.status = (char *)"created";
        row.backend = (char *)backend_names[backend];
        if (!row.id || !row.dir || !row.config_json) {
            r = smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
            goto fail;
        }
        r = smolvm_store_vm_insert(ctx->store, &row, err);
        if (r == SMOLVM_EEXIST && !opts->id && attempt < 8) {
            if (err)
                *err = smolvm_error_free(*err);
            continue;
        }
        if (r == SMOLVM_EEXIST)
            smolvm_err_hint(err, "pick another id, or delete the existing vm '%s'", id);
        if (r < 0)
            goto fail;
        break;
    }
    vm->id = strdup(row.id);
    if (!vm->id) {
        r = smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        (void)smolvm_store_vm_delete(ctx->store, row.id, NULL);
        goto fail;
    }
    if ((r = smolvm_vm_refresh(vm, err)) < 0 || (r = prepare(vm, opts, img, network, err)) < 0) {
        /* Nothing half-made stays: the directory, then the record (its ports go with
         * it). */
        (void)smolvm_rm_rf(row.dir, NULL);
        (void)smolvm_store_vm_delete(ctx->store, vm->id, NULL);
        smolvm_err_wrap(err, "create '%s'", vm->id);
        goto fail;
    }
    (void)smolvm_store_event(ctx->store, vm->id, "create", NULL, NULL);
    smolvm_log(ctx, SMOLVM_LOG_DEBUG, "created vm '%s' in '%s'", vm->id, row.dir);
    free(row.id);
    free(row.dir);
    free(row.config_json);
    json_decref(config);
    smolvm_image_free(img);
    *out = vm;
    return 0;

fail:
    free(row.id);
    free(row.dir);
    free(row.config_json);
    json_decref(config);
    smolvm_image_free(img);
    smolvm_vm_free(vm);
    return r;
}

int smolvm_vm_open(smolvm_vm **out, smolvm_ctx *ctx, const char *id, smolvm_error **err)
{
    smolvm_vm *vm;
    int r;

    if (!id || !smolvm_id_valid(id))
        return smolvm_err(err, SMOLVM_EINVAL, "id: expected [a-z0-9][a-z0-9_-]{0,62}, got '%.80s'",
                          id ? id : "");
    vm = calloc(1, sizeof(*vm));
    if (!vm || !(vm->id = strdup(id))) {
        free(vm);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    vm->ctx = ctx;
    r = smolvm_vm_refresh(vm, err);
    if (r == 0) {
        (void)smolvm_vm_reconcile_row(ctx, vm->row, NULL, NULL);
        r = smolvm_vm_refresh(vm, err);
    }
    if (r < 0) {
        if (r == SMOLVM_ENOENT && err && *err) {
            *err = smolvm_error_free(*err);
            smolvm_err(err, SMOLVM_ENOENT, "vm '%s' not found", id);
        }
        smolvm_vm_free(vm);
        return r;
    }
    *out = vm;
    return 0;
}

void smolvm_vm_drop_ssh(smolvm_vm *vm)
{
    vm->ssh = smolvm_ssh_free(vm->ssh);
}

smolvm_vm *smolvm_vm_free(smolvm_vm *vm)
{
    if (!vm)
        return NULL;
    smolvm_vm_start_abandon(vm);
    smolvm_vm_drop_ssh(vm);
    smolvm_vm_row_free(vm->row);
    json_decref(vm->config);
    free(vm->id);
    free(vm);
    return NULL;
}

const char *smolvm_vm_id(const smolvm_vm *vm)
{
    return vm->id;
}

const char *smolvm_vm_status(smolvm_vm *vm)
{
    static const char *const known[] = {"created",  "starting", "running",
                                        "stopping", "stopped",  "error"};
    size_t i;

    if (vm->deleted)
        return "deleted";
    if (smolvm_vm_refresh(vm, NULL) < 0)
        return vm->row ? "error" : "deleted";
    (void)smolvm_vm_reconcile_row(vm->ctx, vm->row, NULL, NULL);
    if (smolvm_vm_refresh(vm, NULL) < 0)
        return "deleted";
    for (i = 0; i < SMOLVM_ARRAY_SIZE(known); i++)
        if (vm->row->status && strcmp(vm->row->status, known[i]) == 0)
            return known[i];
    return "error";
}

/* Fields derived from the directory layout, for humans and the CLI. */
static void augment(json_t *info)
{
    const char *dir = json_string_value(json_object_get(info, "dir"));
    json_t *cfg = json_object_get(info, "config"), *ports = json_object_get(info, "ports"), *p;
    size_t i;

    if (dir) {
        char *log = smolvm_strdupf("%s/%s", dir, SMOLVM_VMM_CONSOLE_LOG);
        char *key = smolvm_strdupf("%s/%s.pub", dir, SMOLVM_VM_HOST_KEY);

        if (log)
            json_object_set_new(info, "console_log", json_string(log));
        if (key)
            json_object_set_new(info, "host_key", json_string(key));
        free(log);
        free(key);
    }
    if (json_is_null(json_object_get(info, "ip")) || !json_object_get(info, "ip")) {
        json_t *gip = json_object_get(cfg, "guest_ip");

        if (gip)
            json_object_set(info, "ip", gip);
    }
    json_array_foreach (ports, i, p) {
        const char *kind = json_string_value(json_object_get(p, "kind"));

        if (kind && strcmp(kind, "ssh") == 0)
            json_object_set(info, "ssh_port", json_object_get(p, "host_port"));
    }
}

int smolvm_vm_info_json(smolvm_vm *vm, char **out, smolvm_error **err)
{
    _cleanup_free_ char *raw = NULL;
    json_t *info;
    int r;

    if (vm->deleted)
        return smolvm_err(err, SMOLVM_ENOENT, "vm '%s' was deleted", vm->id);
    (void)smolvm_vm_status(vm);
    r = smolvm_store_get_json(vm->ctx->store, vm->id, &raw, err);
    if (r < 0)
        return r;
    info = json_loads(raw, 0, NULL);
    if (!info)
        return smolvm_err(err, SMOLVM_EDB, "vm '%s': bad record", vm->id);
    augment(info);
    *out = json_dumps(info, JSON_COMPACT);
    json_decref(info);
    return *out ? 0 : smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
}

int smolvm_vm_list_json(smolvm_ctx *ctx, char **out, smolvm_error **err)
{
    _cleanup_free_ char *raw = NULL;
    json_t *list, *v;
    size_t i;
    int r;

    if ((r = smolvm_reconcile(ctx, NULL, err)) < 0)
        return r;
    if ((r = smolvm_store_list_json(ctx->store, &raw, err)) < 0)
        return r;
    list = json_loads(raw, 0, NULL);
    if (!list)
        return smolvm_err(err, SMOLVM_EDB, "bad vm list");
    json_array_foreach (list, i, v)
        augment(v);
    *out = json_dumps(list, JSON_COMPACT);
    json_decref(list);
    return *out ? 0 : smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
}
