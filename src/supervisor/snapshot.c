/* SPDX-License-Identifier: MIT */
/*
 * Guest memory, pause, snapshot, and continuing from a snapshot (docs/templates.md).
 *
 * A QEMU guest's RAM is a memfd this process creates and holds (shared with QEMU), so
 * a paused VM's memory is saved by copying the memfd's pages, not by pushing them
 * through the VMM's migration stream. A restored VM continues its agent session where
 * the snapshot left it (QEMU: the virtio-serial port never saw the host go away), and
 * gets its fresh identity (entropy, clock, hostname, address) before it counts as
 * ready.
 */
#include "supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base64.h"
#include "error.h"
#include "util.h"

#define SNAPSHOT_TIMEOUT_MS 120000
#define PAUSE_TIMEOUT_MS 5000
#define ENTROPY_BYTES 64

/* ---------------------------------------------------------------- memory */

int sv_mem_create(sv *s, smolvm_error **err)
{
    uint64_t size = (uint64_t)s->spec->vmm.memory_mib << 20;
    int fd = memfd_create("smolvm-guest-ram", MFD_CLOEXEC);

    if (fd < 0)
        return smolvm_err_errno(err, errno, "memfd_create");
    if (ftruncate(fd, (off_t)size) < 0) {
        int e = errno;

        (void)close(fd);
        return smolvm_err_errno(err, e, "size the guest memory (%u MiB)", s->spec->vmm.memory_mib);
    }
    s->mem_fd = fd;
    return 0;
}

int sv_mem_load(sv *s, const char *path, smolvm_error **err)
{
    _cleanup_close_ int in = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    uint64_t size = (uint64_t)s->spec->vmm.memory_mib << 20, copied;
    struct stat st;

    if (in < 0)
        return smolvm_err_errno(err, errno, "open '%s'", path);
    if (fstat(in, &st) < 0)
        return smolvm_err_errno(err, errno, "stat '%s'", path);
    if ((uint64_t)st.st_size != size)
        return smolvm_err(err, SMOLVM_EINVAL, "'%s' holds %lld bytes, not the vm's %u MiB", path,
                          (long long)st.st_size, s->spec->vmm.memory_mib);
    return smolvm_copy_fd_sparse(in, s->mem_fd, size, &copied, err);
}

/* ---------------------------------------------------------------- identity */

/* The identity request of a restored guest: the library's hostname and address, our
 * entropy and clock. */
static json_t *identity_request(sv *s)
{
    unsigned char raw[ENTROPY_BYTES];
    char b64[SMOLVM_BASE64_LEN(ENTROPY_BYTES) + 1];
    json_t *req =
        s->spec->restore.identity ? json_deep_copy(s->spec->restore.identity) : json_object();

    if (!req || smolvm_random(raw, sizeof(raw), NULL) < 0) {
        json_decref(req);
        return NULL;
    }
    smolvm_base64_encode(b64, raw, sizeof(raw));
    explicit_bzero(raw, sizeof(raw));
    if (json_object_set_new(req, "op", json_string("identity")) < 0 ||
        json_object_set_new(req, "entropy", json_string(b64)) < 0 ||
        json_object_set_new(req, "time_ms", json_integer(smolvm_wall_ms())) < 0) {
        json_decref(req);
        req = NULL;
    }
    explicit_bzero(b64, sizeof(b64));
    return req;
}

void sv_identity_send(sv *s)
{
    json_t *req = identity_request(s);

    if (!req) {
        sv_guest_failed(s, "identity: out of memory");
        return;
    }
    s->identity_stream = ++s->next_agent_stream;
    s->identity_sent_ms = sv_now_ms();
    (void)sv_fconn_send_json(s->agent, SMOLVM_AGENT_REQUEST, 0, s->identity_stream, req);
}

void sv_restored_agent(sv *s)
{
    const smolvm_sv_restore *rs = &s->spec->restore;

    if (s->spec->backend != SMOLVM_BACKEND_QEMU) {
        /* Firecracker resets vsock connections on restore: the agent reconnects and
         * says hello; the identity follows its hello (sv_guest_agent_hello). */
        return;
    }
    /* The port never closed for the guest: the agent's session goes on. */
    json_decref(s->agent_info);
    s->agent_info = rs->agent ? json_incref(rs->agent) : json_object();
    s->agent_hello = true;
    s->next_agent_stream = rs->next_stream;
    sv_identity_send(s);
}

bool sv_identity_frame(sv *s, const smolvm_agent_header *h, const uint8_t *p)
{
    json_t *j;

    if (!s->identity_stream || h->stream != s->identity_stream)
        return false;
    if (!(h->flags & SMOLVM_AGENT_FIN))
        return true;
    s->identity_stream = 0;
    if (h->type == SMOLVM_AGENT_REPLY) {
        sv_log(s, "identity applied in %lld ms", (long long)(sv_now_ms() - s->identity_sent_ms));
        sv_guest_ready(s);
        return true;
    }
    j = json_loadb((const char *)p, h->length, 0, NULL);
    {
        char why[300];

        (void)snprintf(why, sizeof(why), "identity: %.200s",
                       json_string_value(json_object_get(j, "message")) ?: "the agent refused it");
        sv_guest_failed(s, why);
    }
    json_decref(j);
    return true;
}

/* ---------------------------------------------------------------- operations */

static int op_pause(sv *s, bool pause, smolvm_error **err)
{
    const smolvm_vmm_ops *ops = smolvm_vmm_ops_for(s->spec->backend);
    int r;

    if (s->state != SV_READY)
        return smolvm_err(err, SMOLVM_ESTATE, "the vm is not running");
    if (s->paused == pause)
        return 0;
    r = (pause ? ops->pause : ops->resume)(s->spec->dir, sv_now_ms() + PAUSE_TIMEOUT_MS, err);
    if (r == 0) {
        s->paused = pause;
        sv_log(s, "%s", pause ? "paused" : "resumed");
    }
    return r;
}

/* Write <dir>/state (and <dir>/mem) of the paused VM; it stays paused. */
static int op_snapshot(sv *s, json_t *req, json_t **reply, smolvm_error **err)
{
    const smolvm_vmm_ops *ops = smolvm_vmm_ops_for(s->spec->backend);
    const char *dir = json_string_value(json_object_get(req, "dir"));
    _cleanup_free_ char *state = NULL, *mem = NULL, *version = NULL;
    _cleanup_close_ int out = -1;
    smolvm_vmm_snapshot snap = {0};
    uint64_t copied = 0, size = (uint64_t)s->spec->vmm.memory_mib << 20;
    int64_t t0 = sv_now_ms(), t_state, deadline = t0 + SNAPSHOT_TIMEOUT_MS;
    struct stat st;
    const char *memory;
    int r;

    if (s->state != SV_READY || !s->agent_hello)
        return smolvm_err(err, SMOLVM_ESTATE,
                          "the guest is not ready (a snapshot needs its agent)");
    if (s->identity_stream)
        return smolvm_err(err, SMOLVM_ESTATE, "the guest is still taking its identity");
    if (!ops->snapshot)
        return smolvm_err(err, SMOLVM_EINVAL, "the %s backend cannot snapshot", ops->name);
    if (!dir || dir[0] != '/' || stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "snapshot: 'dir' must be an existing absolute directory");
    state = smolvm_strdupf("%s/state", dir);
    mem = smolvm_strdupf("%s/mem", dir);
    if (!state || !mem)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    snap.state_path = state;
    if (s->spec->backend == SMOLVM_BACKEND_FIRECRACKER) {
        snap.mem_path = mem;
        memory = "file";
    } else {
        snap.shared_mem = s->mem_fd >= 3;
        memory = snap.shared_mem ? "shared" : "stream";
    }
    if ((r = ops->snapshot(s->spec->dir, &snap, deadline, err)) < 0) {
        /* It may have paused before failing; it goes on as it was. */
        if (!s->paused)
            (void)ops->resume(s->spec->dir, sv_now_ms() + PAUSE_TIMEOUT_MS, NULL);
        return r;
    }
    s->paused = true;
    t_state = sv_now_ms();
    if (snap.shared_mem) {
        out = open(mem, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (out < 0)
            return smolvm_err_errno(err, errno, "create '%s'", mem);
        if (ftruncate(out, (off_t)size) < 0)
            r = smolvm_err_errno(err, errno, "size '%s'", mem);
        if (r == 0)
            r = smolvm_copy_fd_sparse(s->mem_fd, out, size, &copied, err);
        if (r == 0 && fsync(out) < 0)
            r = smolvm_err_errno(err, errno, "fsync '%s'", mem);
        if (r < 0) {
            (void)unlink(mem);
            (void)unlink(state);
            return r;
        }
    }
    if (ops->describe && ops->describe(s->spec->dir, deadline, &version, NULL) < 0)
        version = NULL;
    *reply = json_pack("{s:s, s:O?, s:I, s:I, s:I, s:{s:I, s:I}}", "memory", memory, "agent",
                       s->agent_info, "next_stream", (json_int_t)s->next_agent_stream + 1,
                       "state_bytes", (json_int_t)(stat(state, &st) == 0 ? st.st_size : 0),
                       "mem_bytes", (json_int_t)copied, "ms", "state", (json_int_t)(t_state - t0),
                       "mem", (json_int_t)(sv_now_ms() - t_state));
    if (*reply && version) {
        json_t *d = json_loads(version, 0, NULL);

        (void)json_object_set_new(*reply, "vmm", d ? d : json_null());
    }
    sv_log(s, "snapshot in '%s': state %lld ms, memory (%s, %llu MiB) %lld ms", dir,
           (long long)(t_state - t0), memory, (unsigned long long)(copied >> 20),
           (long long)(sv_now_ms() - t_state));
    return *reply ? 0 : smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
}

int sv_vm_op(sv *s, const char *op, json_t *req, json_t **reply, smolvm_error **err)
{
    int r;

    *reply = NULL;
    if (strcmp(op, "pause") == 0 || strcmp(op, "resume") == 0)
        r = op_pause(s, op[0] == 'p', err);
    else if (strcmp(op, "snapshot") == 0)
        r = op_snapshot(s, req, reply, err);
    else
        return 0;
    if (r < 0)
        return r;
    if (!*reply && !(*reply = json_object()))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    return 1;
}
