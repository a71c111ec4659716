/* SPDX-License-Identifier: MIT */
#include "util.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "context.h"
#include "error.h"
#include "image.h"
#include "proc.h"
#include "store.h"
#include "tool.h"

#define QEMU_IMG_TIMEOUT_MS 30000
#define MANIFEST_MAX (1024 * 1024)
#define MANIFEST_STR_MAX 256 /* "built", "kernel_version" */
#define IMAGES_MAX 4096      /* directories looked at by the list */
#define BUILD_LINE_MAX 4096
#define BUILD_KILL_GRACE_MS 10000 /* SIGTERM to SIGKILL: the scripts remove their temp dirs */
#define BUILD_DRAIN_MS 2000       /* output still arriving after the script exited */

#ifndef SMOLVM_SCRIPTS_INSTALLED
#define SMOLVM_SCRIPTS_INSTALLED "/usr/local/share/smolvm/scripts"
#endif

/* build-image.sh's exit statuses (its header). */
enum {
    BUILD_EXIT_FAILED = 1,
    BUILD_EXIT_USAGE = 2,
    BUILD_EXIT_ROOT = 3,
    BUILD_EXIT_TOOL = 4,
    BUILD_EXIT_DUE = 5, /* --dry-run: a build is due */
};

extern char **environ;

static void strv_free(char **v)
{
    if (v) {
        for (char **p = v; *p; p++)
            free(*p);
        free(v);
    }
}

smolvm_image *smolvm_image_free(smolvm_image *img)
{
    if (img) {
        free(img->name);
        free(img->dir);
        free(img->kernel);
        free(img->rootfs);
        free(img->built);
        free(img->inputs_hash);
        free(img->kernel_version);
        strv_free(img->extra_packages);
        free(img);
    }
    return NULL;
}

static void image_freep(smolvm_image **img)
{
    smolvm_image_free(*img);
}

bool smolvm_image_name_valid(const char *name)
{
    return name && smolvm_id_valid(name) && strcmp(name, "templates") != 0;
}

bool smolvm_package_name_valid(const char *name)
{
    size_t i, n = name ? strlen(name) : 0;

    if (n < 2 || n > SMOLVM_PACKAGE_NAME_MAX)
        return false;
    for (i = 0; i < n; i++) {
        char c = name[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');

        if (!alnum && (i == 0 || (c != '+' && c != '-' && c != '.')))
            return false;
    }
    return true;
}

/* A manifest string member, when it is a string of printable ASCII that fits. */
static char *manifest_str(json_t *m, const char *key)
{
    json_t *v = json_object_get(m, key);
    const char *s = json_string_value(v);

    if (!s || json_string_length(v) > MANIFEST_STR_MAX)
        return NULL;
    for (const char *p = s; *p; p++)
        if (*p < 0x20 || *p > 0x7e)
            return NULL;
    return strdup(s);
}

/* What the image's manifest says about it (scripts/build-image.sh writes it). An image
 * without one, or from before the agent existed, has no agent. The directory may be
 * writable by others than root: every member is checked, a bad one is left out. */
static void read_manifest(smolvm_image *img)
{
    _cleanup_free_ char *path = smolvm_strdupf("%s/manifest.json", img->dir), *text = NULL;
    json_t *m, *extra, *x;
    size_t i, n = 0;

    if (!path || smolvm_read_file(path, MANIFEST_MAX, &text, NULL, NULL) < 0)
        return;
    m = json_loads(text, 0, NULL);
    if (!json_is_object(m)) {
        json_decref(m);
        return;
    }
    img->has_manifest = true;
    img->has_agent = json_is_string(json_object_get(m, "agent"));
    img->built = manifest_str(m, "built");
    img->kernel_version = manifest_str(m, "kernel_version");
    extra = json_object_get(m, "extra_packages");
    if (json_is_array(extra) && json_array_size(extra) <= SMOLVM_IMAGE_PACKAGES_MAX &&
        (img->extra_packages = calloc(json_array_size(extra) + 1, sizeof(char *)))) {
        json_array_foreach (extra, i, x) {
            const char *s = json_string_value(x);

            if (smolvm_package_name_valid(s) && !(img->extra_packages[n++] = strdup(s)))
                break;
        }
    }
    img->inputs_hash = manifest_str(m, "inputs_hash");
    json_decref(m);
}

/* Bytes the regular files of dir take on disk (st_blocks: a sparse rootfs counts what
 * it uses, not its apparent size). */
static uint64_t dir_size(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    uint64_t total = 0;

    if (!d)
        return 0;
    while ((e = readdir(d))) {
        struct stat st;

        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode))
            total += (uint64_t)st.st_blocks * 512;
    }
    closedir(d);
    return total;
}

static int image_new(smolvm_ctx *ctx, const char *name, smolvm_image **out, smolvm_error **err)
{
    smolvm_image *img;

    if (!smolvm_id_valid(name))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "image: invalid name '%s' (expected [a-z0-9][a-z0-9_-]{0,62})",
                          name ? name : "");
    img = calloc(1, sizeof(*img));
    if (!img)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    img->name = strdup(name);
    img->dir = smolvm_strdupf("%s/%s", ctx->image_dir, name);
    img->kernel = smolvm_strdupf("%s/%s/vmlinux", ctx->image_dir, name);
    img->rootfs = smolvm_strdupf("%s/%s/rootfs.ext4", ctx->image_dir, name);
    if (!img->name || !img->dir || !img->kernel || !img->rootfs) {
        smolvm_image_free(img);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    *out = img;
    return 0;
}

int smolvm_image_load(smolvm_ctx *ctx, const char *name, smolvm_image **out, smolvm_error **err)
{
    _cleanup_(image_freep) smolvm_image *img = NULL;
    struct stat st;
    int r;

    if ((r = image_new(ctx, name, &img, err)) < 0)
        return r;
    if (stat(img->dir, &st) < 0 || !S_ISDIR(st.st_mode))
        return smolvm_err(err, SMOLVM_ENOENT, "no image '%s' in '%s'", name, ctx->image_dir);
    img->complete = stat(img->kernel, &st) == 0 && S_ISREG(st.st_mode) &&
                    stat(img->rootfs, &st) == 0 && S_ISREG(st.st_mode);
    img->size = dir_size(img->dir);
    read_manifest(img);
    *out = TAKE_PTR(img);
    return 0;
}

int smolvm_image_find(smolvm_ctx *ctx, const char *name, smolvm_image **out, smolvm_error **err)
{
    smolvm_image *img;
    struct stat st;
    int r;

    if ((r = image_new(ctx, name, &img, err)) < 0)
        return r;
    if (stat(img->kernel, &st) < 0 || stat(img->rootfs, &st) < 0) {
        smolvm_err(err, SMOLVM_EHOST, "image '%s' not found in '%s'", name, img->dir);
        smolvm_err_hint(err,
                        "build it with 'smolvm image build %s' or, as root, "
                        "scripts/build-image.sh%s%s",
                        name, strcmp(name, "default") ? " " : "",
                        strcmp(name, "default") ? name : "");
        smolvm_image_free(img);
        return SMOLVM_EHOST;
    }
    read_manifest(img);
    *out = img;
    return 0;
}

/* ---------------------------------------------------------------- list */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static json_t *image_json(const smolvm_image *img)
{
    json_t *o = json_object(), *extra = json_array();

    if (!o || !extra) {
        json_decref(o);
        json_decref(extra);
        return NULL;
    }
    for (char **p = img->extra_packages; p && *p; p++)
        json_array_append_new(extra, json_string(*p));
    if (json_object_set_new(o, "name", json_string(img->name)) < 0 ||
        json_object_set_new(o, "dir", json_string(img->dir)) < 0 ||
        json_object_set_new(o, "complete", json_boolean(img->complete)) < 0 ||
        json_object_set_new(o, "built", img->built ? json_string(img->built) : json_null()) < 0 ||
        json_object_set_new(o, "size", json_integer((json_int_t)img->size)) < 0 ||
        json_object_set_new(o, "agent", json_boolean(img->has_agent)) < 0 ||
        json_object_set_new(o, "extra_packages", extra) < 0 ||
        json_object_set_new(o, "kernel_version",
                            img->kernel_version ? json_string(img->kernel_version) : json_null()) <
            0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* The image names in the image directory (sorted), at most IMAGES_MAX. */
static int image_names(smolvm_ctx *ctx, char ***out, size_t *n_out, smolvm_error **err)
{
    DIR *d = opendir(ctx->image_dir);
    struct dirent *e;
    char **names = NULL;
    size_t n = 0;

    *out = NULL;
    *n_out = 0;
    if (!d) {
        if (errno == ENOENT)
            return 0; /* nothing built yet */
        return smolvm_err_errno(err, errno, "open image directory '%s'", ctx->image_dir);
    }
    while ((e = readdir(d)) && n < IMAGES_MAX) {
        struct stat st;
        char **nn;

        if (!smolvm_image_name_valid(e->d_name) || fstatat(dirfd(d), e->d_name, &st, 0) < 0 ||
            !S_ISDIR(st.st_mode))
            continue;
        nn = realloc(names, (n + 2) * sizeof(char *));
        if (!nn || !(nn[n] = strdup(e->d_name))) {
            closedir(d);
            names = nn ? nn : names;
            names[n] = NULL;
            strv_free(names);
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        }
        names = nn;
        names[++n] = NULL;
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof(char *), cmp_str);
    *out = names;
    *n_out = n;
    return 0;
}

int smolvm_image_list_json(char **out, smolvm_ctx *ctx, smolvm_error **err)
{
    char **names = NULL;
    size_t i, n = 0;
    json_t *arr;
    char *text;
    int r;

    if ((r = image_names(ctx, &names, &n, err)) < 0)
        return r;
    arr = json_array();
    for (i = 0; arr && i < n; i++) {
        _cleanup_(image_freep) smolvm_image *img = NULL;
        json_t *o;

        /* Gone since readdir, or not an image (no manifest, no image file): skipped. */
        if (smolvm_image_load(ctx, names[i], &img, NULL) < 0)
            continue;
        if (!img->has_manifest && !img->complete && img->size == 0)
            continue;
        if (!(o = image_json(img)) || json_array_append_new(arr, o) < 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    strv_free(names);
    text = arr ? json_dumps(arr, JSON_COMPACT) : NULL;
    json_decref(arr);
    if (!text)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    *out = text;
    return 0;
}

/* ---------------------------------------------------------------- remove */

int smolvm_image_dir_remove(smolvm_ctx *ctx, const char *name, smolvm_error **err)
{
    _cleanup_free_ char *lock = NULL, *dir = NULL, *aside = NULL;
    _cleanup_close_ int fd = -1;
    int r;

    if (!smolvm_image_name_valid(name))
        return smolvm_err(err, SMOLVM_EINVAL, "image: invalid name '%s'", name ? name : "");
    lock = smolvm_strdupf("%s/.%s.lock", ctx->image_dir, name);
    dir = smolvm_strdupf("%s/%s", ctx->image_dir, name);
    aside = smolvm_strdupf("%s/.%s.rm.%ld", ctx->image_dir, name, (long)getpid());
    if (!lock || !dir || !aside)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (access(dir, F_OK) < 0)
        return smolvm_err_errno(err, errno, "remove image '%s'", name);
    /* The lock scripts/build-image.sh holds while it builds and swaps the image in. */
    fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return smolvm_err_errno(err, errno, "remove image '%s': open '%s'", name, lock);
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno != EWOULDBLOCK)
            return smolvm_err_errno(err, errno, "remove image '%s': lock '%s'", name, lock);
        smolvm_err(err, SMOLVM_ESTATE, "image '%s' is being built", name);
        return smolvm_err_hint(err, "remove it once the build is done");
    }
    if (rename(dir, aside) < 0)
        return smolvm_err_errno(err, errno, "remove image '%s': rename '%s'", name, dir);
    if ((r = smolvm_rm_rf(aside, err)) < 0)
        return smolvm_err_wrap(err, "image '%s' is gone, but its files are left in '%s'", name,
                               aside);
    return 0;
}

/* ---------------------------------------------------------------- build */

int smolvm_image_build_options_init(smolvm_image_build_options *opts, unsigned version)
{
    smolvm_image_build_options defaults = SMOLVM_IMAGE_BUILD_OPTIONS_INIT;

    if (version < 1 || version > SMOLVM_IMAGE_BUILD_OPTIONS_VERSION)
        return SMOLVM_EINVAL;
    *opts = defaults;
    opts->version = version;
    return 0;
}

/* build-image.sh: the source tree's when this library is the build tree's (tests, the
 * README's first commands), else the installed one. */
static const char *default_script(void)
{
    Dl_info info;

    if (dladdr((void *)default_script, &info) && info.dli_fname &&
        strncmp(info.dli_fname, SMOLVM_BUILD_DIR "/", strlen(SMOLVM_BUILD_DIR) + 1) == 0)
        return SMOLVM_SOURCE_DIR "/scripts/build-image.sh";
    if (access(SMOLVM_SCRIPTS_INSTALLED "/build-image.sh", R_OK) == 0)
        return SMOLVM_SCRIPTS_INSTALLED "/build-image.sh";
    return SMOLVM_SOURCE_DIR "/scripts/build-image.sh";
}

/* The packages as one comma-separated list, each name checked. */
static int join_packages(char **out, const char *const *packages, smolvm_error **err)
{
    size_t n = 0, len = 0;
    char *s;

    for (n = 0; packages && packages[n]; n++) {
        if (n >= SMOLVM_IMAGE_PACKAGES_MAX)
            return smolvm_err(err, SMOLVM_EINVAL, "image: packages: at most %d, got more",
                              SMOLVM_IMAGE_PACKAGES_MAX);
        if (!smolvm_package_name_valid(packages[n])) {
            smolvm_err(err, SMOLVM_EINVAL, "image: packages: invalid Debian package name '%.200s'",
                       packages[n]);
            return smolvm_err_hint(err, "package names are lowercase letters, digits, '+', '-' "
                                        "and '.', at least 2 characters, starting with a "
                                        "letter or digit");
        }
        len += strlen(packages[n]) + 1;
    }
    if (!(s = calloc(1, len + 1)))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if (i)
            strcat(s, ",");
        strcat(s, packages[i]);
    }
    *out = s;
    return 0;
}

/* The environment of the build: ours, with SMOLVM_IMAGE_DIR set to the context's image
 * directory so the script builds where this context looks. The strings are borrowed
 * from environ except the last one (own_var). */
static char **build_env(char *own_var)
{
    size_t n = 0, k = 0;
    char **env;

    while (environ && environ[n])
        n++;
    if (!(env = calloc(n + 2, sizeof(char *))))
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "SMOLVM_IMAGE_DIR=", 17) != 0)
            env[k++] = environ[i];
    env[k] = own_var;
    return env;
}

typedef struct build_run {
    const smolvm_image_build_options *o;
    char line[BUILD_LINE_MAX + 1];
    size_t len;
    bool skipping;                 /* a too long line: the rest of it is dropped */
    char last[BUILD_LINE_MAX + 1]; /* the last non-empty line, for errors */
    bool cancelled;
} build_run;

static void emit_line(build_run *b)
{
    b->line[b->len] = '\0';
    if (b->len) {
        memcpy(b->last, b->line, b->len + 1);
    }
    if (b->o->on_line && !b->cancelled && b->o->on_line(b->line, b->o->payload) != 0)
        b->cancelled = true;
    b->len = 0;
}

static void feed(build_run *b, const char *data, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)data[i];

        if (c == '\n') {
            if (!b->skipping)
                emit_line(b);
            b->skipping = false;
            b->len = 0;
            continue;
        }
        if (b->skipping || c == '\r')
            continue;
        if (b->len == BUILD_LINE_MAX) {
            emit_line(b);
            b->skipping = true;
            continue;
        }
        b->line[b->len++] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
    }
}

/* SIGTERM to the build's process group, SIGKILL after a grace period, then reap. */
static void kill_build(pid_t pid, int pidfd)
{
    int status;

    (void)kill(-pid, SIGTERM);
    if (pidfd >= 0) {
        struct pollfd p = {pidfd, POLLIN, 0};
        int64_t deadline = smolvm_now_ms() + BUILD_KILL_GRACE_MS;

        while (poll(&p, 1, smolvm_remaining_ms(deadline)) < 0 && errno == EINTR)
            ;
    }
    (void)kill(-pid, SIGKILL);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
}

/* The script's message without its "build-image: " prefix. */
static const char *last_message(const build_run *b)
{
    const char *s = b->last;

    if (strncmp(s, "build-image: ", 13) == 0)
        s += 13;
    return *s ? s : "no output";
}

/* Identity of the image directory: a build renames a new one into place. */
static bool dir_identity(const char *dir, dev_t *dev, ino_t *ino)
{
    struct stat st;

    if (stat(dir, &st) < 0)
        return false;
    *dev = st.st_dev;
    *ino = st.st_ino;
    return true;
}

int smolvm_image_build(int *built, smolvm_ctx *ctx, const char *name,
                       const smolvm_image_build_options *opts, smolvm_error **err)
{
    smolvm_image_build_options o = SMOLVM_IMAGE_BUILD_OPTIONS_INIT;
    _cleanup_free_ char *packages = NULL, *env_var = NULL, *dir = NULL, *own_dir = NULL;
    const char *image_dir;
    _cleanup_free_ char **envp = NULL;
    _cleanup_free_ build_run *b = NULL;
    _cleanup_close_ int rd = -1, pidfd = -1;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    const char *script;
    int pipefd[2], r, status = 0, code;
    int64_t deadline, drain_deadline = 0;
    bool had_dir, timed_out = false, interrupted = false;
    dev_t dev0 = 0, dev1 = 0;
    ino_t ino0 = 0, ino1 = 0;
    pid_t pid;

    if (opts) {
        if (opts->version < 1 || opts->version > SMOLVM_IMAGE_BUILD_OPTIONS_VERSION)
            return smolvm_err(err, SMOLVM_EINVAL, "image build options: unknown version %u",
                              opts->version);
        o = *opts;
    }
    if (!smolvm_image_name_valid(name))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "image: invalid name '%s' (expected [a-z0-9][a-z0-9_-]{0,62}, "
                          "and not 'templates')",
                          name ? name : "");
    if (o.timeout_ms < 0)
        return smolvm_err(err, SMOLVM_EINVAL, "image build: timeout_ms: expected >= 0, got %d",
                          o.timeout_ms);
    if ((r = join_packages(&packages, o.packages, err)) < 0)
        return r;
    script = o.script ? o.script : default_script();
    if (access(script, R_OK) < 0) {
        smolvm_err_errno(err, errno, "build image '%s': the build script '%s'", name, script);
        return smolvm_err_hint(err, "it comes with smolvm's sources (scripts/build-image.sh)");
    }
    if (ctx) {
        image_dir = ctx->image_dir;
    } else if ((r = smolvm_default_image_dir(&own_dir, err)) < 0) {
        return r;
    } else {
        image_dir = own_dir;
    }
    dir = smolvm_strdupf("%s/%s", image_dir, name);
    env_var = smolvm_strdupf("SMOLVM_IMAGE_DIR=%s", image_dir);
    b = calloc(1, sizeof(*b));
    if (!dir || !env_var || !b || !(envp = build_env(env_var)))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    b->o = &o;
    had_dir = dir_identity(dir, &dev0, &ino0);

    {
        char *argv[10];
        int n = 0;

        argv[n++] = (char *)"/bin/sh";
        argv[n++] = (char *)script;
        argv[n++] = (char *)"--packages";
        argv[n++] = packages;
        if (o.force)
            argv[n++] = (char *)"--force";
        if (o.dry_run)
            argv[n++] = (char *)"--dry-run";
        argv[n++] = (char *)"--";
        argv[n++] = (char *)name;
        argv[n] = NULL;
        if (pipe2(pipefd, O_CLOEXEC) < 0)
            return smolvm_err_errno(err, errno, "build image '%s': pipe", name);
        rd = pipefd[0];
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
        posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2);
        posix_spawnattr_init(&attr);
        /* Its own session and process group: killed as a whole, and a Ctrl-C meant
         * for the caller reaches it through the caller (smolvm_interrupt), not twice. */
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);
        r = posix_spawn(&pid, argv[0], &fa, &attr, argv, envp);
        posix_spawnattr_destroy(&attr);
        posix_spawn_file_actions_destroy(&fa);
        (void)close(pipefd[1]);
        if (r != 0)
            return smolvm_err_errno(err, r, "build image '%s': run '%s'", name, script);
    }
    pidfd = smolvm_pidfd_open(pid);
    deadline = smolvm_now_ms() + (o.timeout_ms ? o.timeout_ms : SMOLVM_IMAGE_BUILD_TIMEOUT_DEFAULT);

    /* Lines as they come, until the output ends (every writer gone), the script has
     * exited and its output stopped, the deadline, an interrupt or a cancel. */
    for (;;) {
        struct pollfd p[2] = {{rd, POLLIN, 0}, {pidfd, POLLIN, 0}};
        int64_t until = drain_deadline ? drain_deadline : deadline;
        char buf[8192];
        ssize_t got;

        if (smolvm_interrupted()) {
            interrupted = true;
            break;
        }
        if (b->cancelled)
            break;
        r = poll(p, pidfd >= 0 && !drain_deadline ? 2 : 1, smolvm_remaining_ms(until));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;

            kill_build(pid, pidfd);
            return smolvm_err_errno(err, e, "build image '%s': poll", name);
        }
        if (r == 0) {
            timed_out = !drain_deadline;
            break;
        }
        if (p[1].revents)
            drain_deadline = smolvm_now_ms() + BUILD_DRAIN_MS;
        if (!(p[0].revents & (POLLIN | POLLHUP | POLLERR)))
            continue;
        got = read(rd, buf, sizeof(buf));
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        feed(b, buf, (size_t)got);
    }
    if (b->len && !b->skipping)
        emit_line(b);
    if (interrupted || b->cancelled || timed_out) {
        kill_build(pid, pidfd);
        if (timed_out)
            return smolvm_err(err, SMOLVM_ETIMEDOUT, "build image '%s': not done after %d s", name,
                              (o.timeout_ms ? o.timeout_ms : SMOLVM_IMAGE_BUILD_TIMEOUT_DEFAULT) /
                                  1000);
        return smolvm_err(err, SMOLVM_EINTR, "build image '%s': %s", name,
                          interrupted ? "interrupted" : "cancelled");
    }
    /* The output has ended: the exit follows at once, still under the deadline. */
    if (pidfd >= 0) {
        struct pollfd p = {pidfd, POLLIN, 0};

        while ((r = poll(&p, 1, smolvm_remaining_ms(deadline))) < 0 && errno == EINTR)
            ;
        if (r == 0) {
            kill_build(pid, pidfd);
            return smolvm_err(err, SMOLVM_ETIMEDOUT, "build image '%s': did not exit", name);
        }
    }
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    (void)kill(-pid, SIGKILL); /* anything of its group that outlived it */

    if (!WIFEXITED(status))
        return smolvm_err(err, SMOLVM_EIO, "build image '%s': the build was killed by signal %d",
                          name, WTERMSIG(status));
    code = WEXITSTATUS(status);
    if (code == 0 || (o.dry_run && code == BUILD_EXIT_DUE)) {
        if (built)
            *built = o.dry_run ? code == BUILD_EXIT_DUE
                               : (dir_identity(dir, &dev1, &ino1) &&
                                  (!had_dir || dev0 != dev1 || ino0 != ino1));
        return 0;
    }
    switch (code) {
    case BUILD_EXIT_USAGE:
        return smolvm_err(err, SMOLVM_EINVAL, "build image '%s': %s", name, last_message(b));
    case BUILD_EXIT_ROOT:
        smolvm_err(err, SMOLVM_EPERM,
                   "build image '%s': building needs root (the rootfs is made with "
                   "mmdebstrap --mode=root)",
                   name);
        return smolvm_err_hint(err,
                               "run as root, or build it first: sudo env SMOLVM_IMAGE_DIR='%s' "
                               "%s%s%s %s",
                               image_dir, script, *packages ? " --packages " : "", packages, name);
    case BUILD_EXIT_TOOL:
        return smolvm_err(err, SMOLVM_EHOST, "build image '%s': %s", name, last_message(b));
    default:
        return smolvm_err(err, SMOLVM_EIO, "build image '%s' failed: %s", name, last_message(b));
    }
}

int smolvm_image_make_disk(const smolvm_image *img, int disk_mode, const char *vm_dir,
                           char **disk_path, const char **format, smolvm_error **err)
{
    _cleanup_free_ char *path = NULL;
    int r;

    if (disk_mode == SMOLVM_DISK_SHARED) {
        if (!(*disk_path = strdup(img->rootfs)))
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        *format = "raw";
        return 0;
    }
    path = smolvm_strdupf("%s/disk.qcow2", vm_dir);
    if (!path)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    {
        char *argv[] = {"qemu-img", "create", "-q",        "-f", "qcow2", "-F",
                        "raw",      "-b",     img->rootfs, path, NULL};

        r = smolvm_tool_run(argv, smolvm_now_ms() + QEMU_IMG_TIMEOUT_MS, NULL, err);
    }
    if (r < 0)
        return smolvm_err_wrap(err, "create disk '%s'", path);
    *disk_path = TAKE_PTR(path);
    *format = "qcow2";
    return 0;
}
