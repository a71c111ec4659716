/* SPDX-License-Identifier: MIT */
/* A cgroup per VM on v1 and v2 (cgroup.h). */
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/evp.h>

#include "cgroup.h"
#include "error.h"
#include "store.h"

#define MOUNTINFO_MAX (1u << 20)
#define CREATE_ATTEMPTS 3 /* a concurrent remover may take the parent away in between */

static const char *const controller_names[_SMOLVM_CG_MAX] = {"memory", "pids", "cpu"};

struct smolvm_cgroup {
    char *path[_SMOLVM_CG_MAX]; /* the group's directory per controller (shared strings) */
    char *dirs[SMOLVM_CG_HIER_MAX];
    int fds[SMOLVM_CG_HIER_MAX];
    size_t n;
};

/* ---------------------------------------------------------------- layout */

int smolvm_cgroup_layout_new(smolvm_cgroup_layout **out, smolvm_error **err)
{
    smolvm_cgroup_layout *l = calloc(1, sizeof(*l));

    if (!l)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    *out = l;
    return 0;
}

smolvm_cgroup_layout *smolvm_cgroup_layout_free(smolvm_cgroup_layout *l)
{
    size_t i;

    if (!l)
        return NULL;
    for (i = 0; i < l->n; i++)
        free(l->h[i].mount);
    free(l);
    return NULL;
}

int smolvm_cgroup_layout_add(smolvm_cgroup_layout *l, const char *mount, int version,
                             unsigned controllers, smolvm_error **err)
{
    if (!mount || mount[0] != '/' || (version != 1 && version != 2) || !controllers)
        return smolvm_err(err, SMOLVM_EINVAL, "cgroup: invalid hierarchy '%s'",
                          mount ? mount : "(null)");
    if (l->n == SMOLVM_CG_HIER_MAX)
        return smolvm_err(err, SMOLVM_ENOSPC, "cgroup: too many hierarchies");
    if (!(l->h[l->n].mount = strdup(mount)))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    l->h[l->n].version = version;
    l->h[l->n].controllers = controllers;
    l->n++;
    l->usable = true;
    return 0;
}

/* The controller bits named in a comma-separated option list ("rw,cpu,cpuacct"). */
static unsigned controllers_in(const char *opts)
{
    _cleanup_free_ char *copy = strdup(opts);
    char *tok, *save = NULL;
    unsigned bits = 0;
    int c;

    if (!copy)
        return 0;
    for (tok = strtok_r(copy, ", \n", &save); tok; tok = strtok_r(NULL, ", \n", &save))
        for (c = 0; c < _SMOLVM_CG_MAX; c++)
            if (strcmp(tok, controller_names[c]) == 0)
                bits |= 1u << c;
    return bits;
}

/* Fields 5 (mount point), the file system type and the super options of a
 * /proc/self/mountinfo line. */
static int parse_mountinfo_line(char *line, char **mnt, char **fstype, char **superopts)
{
    char *save = NULL, *tok;
    int field = 0;

    *mnt = *fstype = *superopts = NULL;
    for (tok = strtok_r(line, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
        field++;
        if (field == 5)
            *mnt = tok;
        if (strcmp(tok, "-") == 0 && field > 6) {
            *fstype = strtok_r(NULL, " ", &save);
            (void)strtok_r(NULL, " ", &save); /* source */
            *superopts = strtok_r(NULL, " ", &save);
            break;
        }
    }
    return *mnt && *fstype && *superopts ? 0 : -1;
}

/* Root may write where the mount is writable; anyone else only into a delegated
 * <mount>/smolvm. Drops the hierarchies this process cannot use. */
static void check_usable(smolvm_cgroup_layout *l)
{
    size_t i, k = 0;
    bool root = geteuid() == 0;

    for (i = 0; i < l->n; i++) {
        _cleanup_free_ char *parent = smolvm_strdupf("%s/" SMOLVM_CG_PARENT, l->h[i].mount);
        bool ok = root ? access(l->h[i].mount, W_OK) == 0 : parent && access(parent, W_OK) == 0;

        if (!ok) {
            (void)snprintf(l->why, sizeof(l->why), "%s",
                           root ? "the cgroup mounts are read-only"
                                : "no cgroup is delegated (a writable <mount>/" SMOLVM_CG_PARENT
                                  " directory)");
            free(l->h[i].mount);
            continue;
        }
        l->h[k++] = l->h[i];
    }
    l->n = k;
    l->usable = k > 0;
    if (k == 0 && !l->why[0])
        (void)snprintf(l->why, sizeof(l->why), "no cgroup hierarchy has memory, pids or cpu");
}

int smolvm_cgroup_layout_detect(smolvm_cgroup_layout **out, smolvm_error **err)
{
    _cleanup_free_ char *text = NULL, *v2 = NULL;
    smolvm_cgroup_layout *l = NULL;
    unsigned v1_bits = 0, v2_bits = 0;
    char *line, *save = NULL;
    int r;

    if ((r = smolvm_cgroup_layout_new(&l, err)) < 0)
        return r;
    if (smolvm_read_file("/proc/self/mountinfo", MOUNTINFO_MAX, &text, NULL, NULL) < 0) {
        (void)snprintf(l->why, sizeof(l->why), "cannot read /proc/self/mountinfo");
        *out = l;
        return 0;
    }
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *mnt, *fstype, *superopts;
        unsigned bits;

        if (parse_mountinfo_line(line, &mnt, &fstype, &superopts) < 0)
            continue;
        if (strcmp(fstype, "cgroup2") == 0 && !v2) {
            if (!(v2 = strdup(mnt))) {
                smolvm_cgroup_layout_free(l);
                return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
            }
            continue;
        }
        if (strcmp(fstype, "cgroup") != 0)
            continue;
        /* A controller is mounted once (bind mounts of it are skipped). */
        bits = controllers_in(superopts) & ~v1_bits;
        if (bits && (r = smolvm_cgroup_layout_add(l, mnt, 1, bits, err)) < 0) {
            smolvm_cgroup_layout_free(l);
            return r;
        }
        v1_bits |= bits;
    }
    if (v2) {
        _cleanup_free_ char *path = smolvm_strdupf("%s/cgroup.controllers", v2);
        _cleanup_free_ char *have = NULL;

        if (path && smolvm_read_file(path, 4096, &have, NULL, NULL) == 0)
            v2_bits = controllers_in(have) & ~v1_bits;
        if (v2_bits && (r = smolvm_cgroup_layout_add(l, v2, 2, v2_bits, err)) < 0) {
            smolvm_cgroup_layout_free(l);
            return r;
        }
    }
    check_usable(l);
    *out = l;
    return 0;
}

void smolvm_cgroup_layout_describe(const smolvm_cgroup_layout *l, char *out, size_t size)
{
    size_t i, n = 0;
    int v, c;

    out[0] = '\0';
    for (v = 2; v >= 1; v--) {
        unsigned bits = 0;
        int k = 0;

        for (i = 0; i < l->n; i++)
            if (l->h[i].version == v)
                bits |= l->h[i].controllers;
        if (!bits || n >= size)
            continue;
        n += (size_t)snprintf(out + n, size - n, "%sv%d ", n ? "; " : "", v);
        for (c = 0; c < _SMOLVM_CG_MAX && n < size; c++)
            if (bits & (1u << c))
                n += (size_t)snprintf(out + n, size - n, "%s%s", k++ ? ", " : "",
                                      controller_names[c]);
    }
}

/* ---------------------------------------------------------------- names */

/* 8 hex digits of sha256(realpath(state_dir)). */
static int state_tag(char out[9], const char *state_dir)
{
    char real[PATH_MAX];
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    const char *p = realpath(state_dir, real) ? real : state_dir;

    if (EVP_Digest(p, strlen(p), md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen < 4)
        return -1;
    (void)snprintf(out, 9, "%02x%02x%02x%02x", md[0], md[1], md[2], md[3]);
    return 0;
}

int smolvm_cgroup_name(char out[96], const char *state_dir, const char *vm_id, smolvm_error **err)
{
    char tag[9];

    if (!smolvm_id_valid(vm_id))
        return smolvm_err(err, SMOLVM_EINVAL, "cgroup: invalid vm id '%.80s'", vm_id ? vm_id : "");
    if (state_tag(tag, state_dir) < 0)
        return smolvm_err(err, SMOLVM_EIO, "cgroup: sha256 failed");
    (void)snprintf(out, 96, "%s.%s", vm_id, tag);
    return 0;
}

/* ---------------------------------------------------------------- files */

/* Write value to dir/name: 0 or an errno. */
static int write_raw(const char *dir, const char *name, const char *value)
{
    char path[PATH_MAX];
    size_t len = strlen(value);
    ssize_t w;
    int fd, e = 0;

    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, name) >= sizeof(path))
        return ENAMETOOLONG;
    fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    w = write(fd, value, len);
    if (w < 0)
        e = errno;
    else if ((size_t)w != len)
        e = EIO;
    (void)close(fd);
    return e;
}

static int write_file(const char *dir, const char *name, const char *value, bool optional,
                      smolvm_error **err)
{
    int e = write_raw(dir, name, value);

    if (e == 0 || (optional && e == ENOENT))
        return 0;
    return smolvm_err_errno(err, e, "cgroup: write '%s' to '%s/%s'", value, dir, name);
}

/* v2: let the children of dir have the controllers in bits. 0 or an errno. */
static int enable_controllers(const char *dir, unsigned bits)
{
    char v[16];
    int c, e;

    for (c = 0; c < _SMOLVM_CG_MAX; c++) {
        if (!(bits & (1u << c)))
            continue;
        (void)snprintf(v, sizeof(v), "+%s", controller_names[c]);
        if ((e = write_raw(dir, "cgroup.subtree_control", v)) != 0)
            return e;
    }
    return 0;
}

static int write_limits(const char *dir, const smolvm_cg_hier *h, const smolvm_cgroup_limits *lim,
                        smolvm_error **err)
{
    char v[32];
    int r = 0;

    if (h->controllers & (1u << SMOLVM_CG_MEMORY) && lim->memory_bytes) {
        (void)snprintf(v, sizeof(v), "%" PRIu64, lim->memory_bytes);
        if (h->version == 1) {
            /* memsw exists only with swap accounting: memory and swap together. */
            r = write_file(dir, "memory.limit_in_bytes", v, false, err);
            if (r == 0)
                r = write_file(dir, "memory.memsw.limit_in_bytes", v, true, err);
        } else {
            r = write_file(dir, "memory.max", v, false, err);
            if (r == 0)
                r = write_file(dir, "memory.swap.max", "0", true, err);
            /* An OOM inside the group ends the whole VMM, not one of its threads. */
            if (r == 0)
                r = write_file(dir, "memory.oom.group", "1", true, err);
        }
        if (r < 0)
            return r;
    }
    if (h->controllers & (1u << SMOLVM_CG_PIDS) && lim->pids) {
        (void)snprintf(v, sizeof(v), "%" PRIu64, lim->pids);
        if ((r = write_file(dir, "pids.max", v, false, err)) < 0)
            return r;
    }
    if (h->controllers & (1u << SMOLVM_CG_CPU) && lim->cpu_weight) {
        unsigned w = lim->cpu_weight > 10000 ? 10000 : lim->cpu_weight;

        if (h->version == 1)
            (void)snprintf(v, sizeof(v), "%u", w * 1024 / 100 < 2 ? 2 : w * 1024 / 100);
        else
            (void)snprintf(v, sizeof(v), "%u", w);
        if ((r = write_file(dir, h->version == 1 ? "cpu.shares" : "cpu.weight", v, false, err)) < 0)
            return r;
    }
    return 0;
}

/* ---------------------------------------------------------------- groups */

smolvm_cgroup *smolvm_cgroup_free(smolvm_cgroup *cg)
{
    size_t i;

    if (!cg)
        return NULL;
    for (i = 0; i < cg->n; i++) {
        if (cg->fds[i] >= 0)
            (void)close(cg->fds[i]);
        free(cg->dirs[i]);
    }
    free(cg);
    return NULL;
}

const int *smolvm_cgroup_procs_fds(const smolvm_cgroup *cg, size_t *n)
{
    *n = cg->n;
    return cg->fds;
}

const char *smolvm_cgroup_path(const smolvm_cgroup *cg, smolvm_cg_controller c)
{
    return c >= 0 && c < _SMOLVM_CG_MAX ? cg->path[c] : NULL;
}

/* One hierarchy: the parent (v2: with the controllers passed down), the group (a stale
 * empty one replaced), its limits. */
static int create_in(char **out_dir, const smolvm_cg_hier *h, const char *name,
                     const smolvm_cgroup_limits *lim, smolvm_error **err)
{
    _cleanup_free_ char *parent = smolvm_strdupf("%s/" SMOLVM_CG_PARENT, h->mount);
    _cleanup_free_ char *dir = smolvm_strdupf("%s/" SMOLVM_CG_PARENT "/%s", h->mount, name);
    int attempt, e = 0, r;

    if (!parent || !dir)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    /* A concurrent remove may take the (empty) parent away between our steps: each
     * ENOENT on the way starts over. */
    for (attempt = 0; attempt < CREATE_ATTEMPTS; attempt++) {
        if (mkdir(parent, 0755) < 0 && errno != EEXIST)
            return smolvm_err_errno(err, errno, "cgroup: mkdir '%s'", parent);
        if (h->version == 2 && geteuid() == 0 && (e = enable_controllers(h->mount, h->controllers)))
            return smolvm_err_errno(err, e, "cgroup: enable controllers in '%s'", h->mount);
        if (h->version == 2 && (e = enable_controllers(parent, h->controllers))) {
            if (e == ENOENT)
                continue;
            return smolvm_err_errno(err, e, "cgroup: enable controllers in '%s'", parent);
        }
        if (mkdir(dir, 0755) == 0)
            break;
        e = errno;
        if (e == EEXIST) {
            if (rmdir(dir) < 0)
                return smolvm_err(err, SMOLVM_EEXIST,
                                  "cgroup '%s' exists and has processes (is the vm running?)", dir);
            continue;
        }
        if (e != ENOENT)
            return smolvm_err_errno(err, e, "cgroup: mkdir '%s'", dir);
    }
    if (attempt == CREATE_ATTEMPTS)
        return smolvm_err_errno(err, e ? e : EIO, "cgroup: mkdir '%s'", dir);
    if ((r = write_limits(dir, h, lim, err)) < 0) {
        (void)rmdir(dir);
        return r;
    }
    *out_dir = TAKE_PTR(dir);
    return 0;
}

int smolvm_cgroup_create(smolvm_cgroup **out, const smolvm_cgroup_layout *l, const char *state_dir,
                         const char *vm_id, const smolvm_cgroup_limits *lim, smolvm_error **err)
{
    smolvm_cgroup *cg;
    char name[96];
    size_t i;
    int c, r;

    if ((r = smolvm_cgroup_name(name, state_dir, vm_id, err)) < 0)
        return r;
    if (!(cg = calloc(1, sizeof(*cg))))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    for (i = 0; i < l->n; i++) {
        _cleanup_free_ char *procs = NULL;

        cg->fds[i] = -1;
        r = create_in(&cg->dirs[i], &l->h[i], name, lim, err);
        cg->n = i + 1;
        if (r == 0 && !(procs = smolvm_strdupf("%s/cgroup.procs", cg->dirs[i])))
            r = smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        if (r == 0 && (cg->fds[i] = open(procs, O_WRONLY | O_CLOEXEC)) < 0)
            r = smolvm_err_errno(err, errno, "cgroup: open '%s'", procs);
        if (r < 0) {
            smolvm_cgroup_free(cg);
            (void)smolvm_cgroup_remove(l, state_dir, vm_id, NULL);
            return r;
        }
        for (c = 0; c < _SMOLVM_CG_MAX; c++)
            if (l->h[i].controllers & (1u << c))
                cg->path[c] = cg->dirs[i];
    }
    *out = cg;
    return 0;
}

int smolvm_cgroup_remove(const smolvm_cgroup_layout *l, const char *state_dir, const char *vm_id,
                         smolvm_error **err)
{
    char name[96];
    size_t i;
    int r, busy = 0;

    if ((r = smolvm_cgroup_name(name, state_dir, vm_id, err)) < 0)
        return r;
    for (i = 0; i < l->n; i++) {
        _cleanup_free_ char *parent = smolvm_strdupf("%s/" SMOLVM_CG_PARENT, l->h[i].mount);
        _cleanup_free_ char *dir = smolvm_strdupf("%s/%s", parent ? parent : "", name);

        if (!parent || !dir)
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        if (rmdir(dir) < 0 && errno != ENOENT) {
            if (!busy)
                (void)smolvm_err(err, SMOLVM_ESTATE, "cgroup: remove '%s': %s", dir,
                                 errno == EBUSY ? "it still has processes" : strerror(errno));
            busy = 1;
        }
        (void)rmdir(parent); /* only when no other VM's group is in it */
    }
    return busy ? SMOLVM_ESTATE : 0;
}

int smolvm_cgroup_gc(const smolvm_cgroup_layout *l, const char *state_dir,
                     bool (*keep)(const char *vm_id, void *payload), void *payload)
{
    char tag[9], suffix[10];
    size_t i, slen;
    int removed = 0;

    if (state_tag(tag, state_dir) < 0)
        return 0;
    (void)snprintf(suffix, sizeof(suffix), ".%s", tag);
    slen = strlen(suffix);
    for (i = 0; i < l->n; i++) {
        _cleanup_free_ char *parent = smolvm_strdupf("%s/" SMOLVM_CG_PARENT, l->h[i].mount);
        DIR *d = parent ? opendir(parent) : NULL;
        struct dirent *de;

        if (!d)
            continue;
        while ((de = readdir(d))) {
            size_t n = strlen(de->d_name);
            char id[SMOLVM_ID_MAX + 1];
            _cleanup_free_ char *dir = NULL;

            if (de->d_type != DT_DIR || n <= slen || n - slen > SMOLVM_ID_MAX ||
                strcmp(de->d_name + n - slen, suffix) != 0)
                continue;
            memcpy(id, de->d_name, n - slen);
            id[n - slen] = '\0';
            if (!smolvm_id_valid(id) || (keep && keep(id, payload)))
                continue;
            dir = smolvm_strdupf("%s/%s", parent, de->d_name);
            if (dir && rmdir(dir) == 0)
                removed++;
        }
        (void)closedir(d);
        (void)rmdir(parent);
    }
    return removed;
}
