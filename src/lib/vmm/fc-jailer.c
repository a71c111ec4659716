/* SPDX-License-Identifier: MIT */
/*
 * Firecracker's jailer, when SMOLVM_JAILER asks for it. We follow the jailer's
 * documented contract (firecracker docs/jailer.md, v1.16.1): it makes
 * <chroot base>/<exec file name>/<id>/root, copies the exec file there, pivots into
 * it, drops to --uid/--gid and execs firecracker with what follows "--"; every path
 * firecracker is given is then relative to that root, and every file it opens must
 * have been linked or copied in by us, readable (or writable) by the jail uid.
 */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "vmm/fc-binary.h"
#include "vmm/fc-jailer.h"

#define JAIL_COPY_MAX (256u << 20) /* read-only files copied across filesystems */
#define CGROUP_MAX 128

/* A uid or gid from the environment: decimal, not root, not the "nobody" -1. */
static int env_id(const char *name, unsigned *out, smolvm_error **err)
{
    const char *v = getenv(name);
    char *end = NULL;
    unsigned long n;

    if (!v || !*v)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "jailer: %s is required with SMOLVM_JAILER (the id the jailed "
                          "firecracker runs as)",
                          name);
    errno = 0;
    n = strtoul(v, &end, 10);
    if (errno || *end || v[0] == '-' || v[0] == '+' || n >= UINT32_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "jailer: %s '%s' is not a number", name, v);
    if (n == 0)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "jailer: %s 0 is root, which defeats the jail (use an unprivileged "
                          "id, for example a dedicated 'smolvm-jail' user)",
                          name);
    *out = (unsigned)n;
    return 0;
}

static int valid_cgroup(const char *s)
{
    size_t n = strlen(s);

    return n > 0 && n <= CGROUP_MAX && s[0] != '/' && !strstr(s, "..") &&
           strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./") == n;
}

/* The jail's uid or gid: the variable when set, else the VMM's own uid. */
static int jail_id(const char *name, uint32_t vmm_uid, unsigned *out, smolvm_error **err)
{
    const char *v = getenv(name);

    if ((!v || !*v) && vmm_uid) {
        *out = vmm_uid;
        return 0;
    }
    return env_id(name, out, err);
}

int smolvm_fc_jail_config(smolvm_fc_jail *j, const char *fc_bin, const char *vm_id, const char *dir,
                          uint32_t vmm_uid, smolvm_error **err)
{
    const char *v = getenv(SMOLVM_FC_JAILER_ENV), *cg = getenv(SMOLVM_FC_JAILER_CGROUP_ENV);
    _cleanup_free_ char *canon = NULL, *fc_dir = NULL;
    bool by_default = !v || !*v;
    const char *name;
    size_t n;
    int r;

    *j = (smolvm_fc_jail){0};
    /* Unset: jailed when the supervisor has a uid of its own for the VMM (it runs as
     * root, docs/security.md), with the jailer next to firecracker. */
    if (by_default && vmm_uid == 0)
        return 0;
    if (by_default)
        v = "1";
    if (strcmp(v, "0") == 0)
        return 0;
    if ((r = jail_id(SMOLVM_FC_JAILER_UID_ENV, vmm_uid, &j->uid, err)) < 0 ||
        (r = jail_id(SMOLVM_FC_JAILER_GID_ENV, vmm_uid, &j->gid, err)) < 0)
        return r;
    n = vm_id ? strlen(vm_id) : 0;
    if (n == 0 || n > 64 ||
        strspn(vm_id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != n)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "jailer: vm id '%.80s' is not a valid jailer id (letters, digits and "
                          "'-', at most 64; use an id without '_' or unset " SMOLVM_FC_JAILER_ENV
                          ")",
                          vm_id ? vm_id : "");
    memcpy(j->id, vm_id, n + 1);
    if (cg && *cg && !valid_cgroup(cg))
        return smolvm_err(
            err, SMOLVM_EINVAL,
            "jailer: " SMOLVM_FC_JAILER_CGROUP_ENV " '%.160s' is not a relative cgroup path", cg);
    if (!(canon = realpath(fc_bin, NULL)))
        return smolvm_err_errno(err, errno, "jailer: firecracker '%s'", fc_bin);
    name = strrchr(canon, '/') + 1;
    /* The jailer refuses an exec file whose name lacks "firecracker". */
    if (!strstr(name, "firecracker"))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "jailer: the firecracker binary '%s' must have 'firecracker' in its "
                          "name (the jailer refuses others)",
                          canon);
    if (strcmp(v, "1") == 0) {
        /* Where the pinned download installs it: next to firecracker. */
        fc_dir = strdup(canon);
        if (!fc_dir)
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        *strrchr(fc_dir, '/') = '\0';
        j->jailer = smolvm_strdupf("%s/jailer", fc_dir);
    } else if (v[0] == '/') {
        j->jailer = strdup(v);
    } else {
        return smolvm_err(err, SMOLVM_EINVAL,
                          "jailer: " SMOLVM_FC_JAILER_ENV
                          " must be 1 (the jailer next to firecracker) or an absolute path, "
                          "got '%.160s'",
                          v);
    }
    j->base = smolvm_strdupf("%s/" SMOLVM_FC_JAIL_DIR, dir);
    j->root = smolvm_strdupf("%s/" SMOLVM_FC_JAIL_DIR "/%s/%s/root", dir, name, j->id);
    j->parent_cgroup = cg && *cg ? strdup(cg) : NULL;
    j->exec_file = TAKE_PTR(canon);
    if (!j->jailer || !j->base || !j->root || (cg && *cg && !j->parent_cgroup))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (access(j->jailer, X_OK) < 0)
        return smolvm_err(err, SMOLVM_EHOST,
                          "jailer: %sno jailer at '%s' (%s; 'smolvm install-firecracker' installs "
                          "it next to firecracker, or set " SMOLVM_FC_JAILER_ENV " to its path%s)",
                          by_default ? "as root firecracker runs jailed, but there is " : "",
                          j->jailer, strerror(errno),
                          by_default ? "; " SMOLVM_FC_JAILER_ENV "=0 runs it unjailed, as root"
                                     : "");
    return 0;
}

void smolvm_fc_jail_done(smolvm_fc_jail *j)
{
    free(j->jailer);
    free(j->exec_file);
    free(j->parent_cgroup);
    free(j->base);
    free(j->root);
    *j = (smolvm_fc_jail){0};
}

/* Give path to the jail uid (ours to give: made for this VM). */
static int give(const smolvm_fc_jail *j, const char *path, smolvm_error **err)
{
    struct stat st;

    if (stat(path, &st) < 0)
        return smolvm_err_errno(err, errno, "jailer: stat '%s'", path);
    if (st.st_uid == j->uid && st.st_gid == j->gid)
        return 0;
    if (chown(path, j->uid, j->gid) < 0)
        return smolvm_err_errno(err, errno,
                                "jailer: chown '%s' to %u:%u (the jailer and smolvm with it "
                                "must run as root)",
                                path, j->uid, j->gid);
    return 0;
}

int smolvm_fc_jail_prepare(const smolvm_fc_jail *j, const char *dir, smolvm_error **err)
{
    _cleanup_free_ char *sockdir = smolvm_strdupf("%s%s", j->root, dir);
    int r;

    if (!sockdir)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if ((r = smolvm_rm_rf(j->base, err)) < 0)
        return smolvm_err_wrap(err, "jailer: remove the old jail");
    /* 0755 up to the root: the jailer makes the root itself owned by the jail uid. */
    if ((r = smolvm_mkdir_p(sockdir, 0755, err)) < 0)
        return smolvm_err_wrap(err, "jailer");
    return give(j, sockdir, err);
}

/* Can uid:gid (no supplementary groups: the jailer drops them) do `want` (R_OK, W_OK)? */
static int may(const struct stat *st, const smolvm_fc_jail *j, int want)
{
    mode_t bits = want == W_OK ? S_IWOTH : S_IROTH;

    if (st->st_uid == j->uid)
        bits <<= 6;
    else if (st->st_gid == j->gid)
        bits <<= 3;
    return (st->st_mode & bits) != 0;
}

static int copy_file(const char *from, const char *to, smolvm_error **err)
{
    _cleanup_close_ int in = open(from, O_RDONLY | O_CLOEXEC), out = -1;
    char buf[65536];
    ssize_t n;

    if (in < 0)
        return smolvm_err_errno(err, errno, "jailer: open '%s'", from);
    out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0400);
    if (out < 0)
        return smolvm_err_errno(err, errno, "jailer: create '%s'", to);
    while ((n = read(in, buf, sizeof(buf))) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 || write(out, buf, (size_t)n) != n)
            return smolvm_err_errno(err, errno ? errno : EIO, "jailer: copy '%s' to '%s'", from,
                                    to);
    }
    return 0;
}

int smolvm_fc_jail_add(const smolvm_fc_jail *j, const char *host_path, const char *name, int how,
                       char **jail_path, smolvm_error **err)
{
    _cleanup_free_ char *dest = smolvm_strdupf("%s/%s", j->root, name);
    struct stat st;
    int r;

    if (!dest)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (stat(host_path, &st) < 0)
        return smolvm_err_errno(err, errno, "jailer: '%s'", host_path);
    if (how == SMOLVM_FC_JAIL_RO && !may(&st, j, R_OK))
        return smolvm_err(err, SMOLVM_EPERM,
                          "jailer: '%s' is not readable by the jail's uid %u / gid %u (make it "
                          "readable by them, for example chmod o+r)",
                          host_path, j->uid, j->gid);
    if (how == SMOLVM_FC_JAIL_RW && (!may(&st, j, R_OK) || !may(&st, j, W_OK)))
        return smolvm_err(err, SMOLVM_EPERM,
                          "jailer: '%s' is attached read-write but not writable by the jail's "
                          "uid %u / gid %u",
                          host_path, j->uid, j->gid);
    (void)unlink(dest);
    if (link(host_path, dest) < 0) {
        int e = errno;

        /* A copy of a shared disk would cost seconds and of a writable one would lose
         * its writes: only small read-only files are copied. */
        if (how != SMOLVM_FC_JAIL_RO || (e != EXDEV && e != EPERM) ||
            (uint64_t)st.st_size > JAIL_COPY_MAX)
            return smolvm_err_errno(err, e,
                                    "jailer: hard link '%s' into the jail '%s' (it must be "
                                    "on the filesystem of the vm dir)",
                                    host_path, j->root);
        if ((r = copy_file(host_path, dest, err)) < 0 || (r = give(j, dest, err)) < 0) {
            (void)unlink(dest);
            return r;
        }
    } else if (how == SMOLVM_FC_JAIL_RW_OWN && (r = give(j, dest, err)) < 0) {
        return r;
    }
    if (!(*jail_path = smolvm_strdupf("/%s", name)))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    return 0;
}

int smolvm_fc_jail_give_tap(const smolvm_fc_jail *j, const char *tap, smolvm_error **err)
{
    _cleanup_close_ int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    struct ifreq ifr;

    if (fd < 0)
        return smolvm_err_errno(err, errno, "jailer: open /dev/net/tun");
    memset(&ifr, 0, sizeof(ifr));
    /* The flags the networking module created it with (single queue). */
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    (void)snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", tap);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0)
        return smolvm_err_errno(err, errno, "jailer: attach to tap '%s'", tap);
    if (ioctl(fd, TUNSETOWNER, (unsigned long)j->uid) < 0 ||
        ioctl(fd, TUNSETGROUP, (unsigned long)j->gid) < 0)
        return smolvm_err_errno(err, errno, "jailer: give tap '%s' to %u:%u", tap, j->uid, j->gid);
    return 0;
}

char **smolvm_fc_jail_argv(const smolvm_fc_jail *j, const char *api_sock)
{
    char **a = calloc(24, sizeof(*a));
    size_t n = 0, i;
    int ok = 1;

    if (!a)
        return NULL;
#define ARG(s) ok &= (a[n++] = (s)) != NULL
    ARG(strdup(j->jailer));
    ARG(strdup("--id"));
    ARG(strdup(j->id));
    ARG(strdup("--exec-file"));
    ARG(strdup(j->exec_file));
    ARG(strdup("--uid"));
    ARG(smolvm_strdupf("%u", j->uid));
    ARG(strdup("--gid"));
    ARG(smolvm_strdupf("%u", j->gid));
    ARG(strdup("--chroot-base-dir"));
    ARG(strdup(j->base));
    ARG(strdup("--cgroup-version"));
    ARG(strdup("2"));
    if (j->parent_cgroup) {
        ARG(strdup("--parent-cgroup"));
        ARG(strdup(j->parent_cgroup));
    }
    /* No --daemonize: we detach the jailer ourselves and keep its stdout, the guest's
     * serial console. The jailer passes --id to firecracker itself. */
    ARG(strdup("--"));
    ARG(strdup("--api-sock"));
    ARG(strdup(api_sock));
#undef ARG
    if (!ok) {
        for (i = 0; i < n; i++)
            free(a[i]);
        free(a);
        return NULL;
    }
    return a;
}

void smolvm_fc_jail_argv_free(char **argv)
{
    size_t i;

    for (i = 0; argv && argv[i]; i++)
        free(argv[i]);
    free(argv);
}

int smolvm_fc_jailed(const char *dir)
{
    _cleanup_free_ char *p = smolvm_strdupf("%s/" SMOLVM_FC_JAIL_DIR, dir);
    struct stat st;

    return p && lstat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

void smolvm_fc_jail_remove(const char *dir)
{
    _cleanup_free_ char *p = smolvm_strdupf("%s/" SMOLVM_FC_JAIL_DIR, dir);

    if (p)
        (void)smolvm_rm_rf(p, NULL);
}
