/* SPDX-License-Identifier: MIT */
/* Finding, checking and downloading the firecracker binary (see docs/firecracker.md). */
#include "util.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pwd.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/utsname.h>

#include "error.h"
#include "host.h"
#include "tool.h"
#include "vmm/fc-binary.h"

#define VERSION_TIMEOUT_MS 5000

/* Published sha256 of the pinned release archives (firecracker-vX-<arch>.tgz). */
static const struct {
    const char *arch;
    const char *sha256;
} pinned[] = {
    {"x86_64", "382a02a869e4d6d5cb14c40577f9545e8458021ea8b0b2d3fc10ec14d9c242e6"},
    {"aarch64", "8d0e69f6d6f9a1724551f607f18504052c16c1828ee3d4d7b6e6c73380871e0e"},
};

int smolvm_fc_bin_dir(char **out, smolvm_error **err)
{
    const char *xdg = getenv("XDG_DATA_HOME"), *home = getenv("HOME");
    char *r;

    if (xdg && xdg[0] == '/') {
        r = smolvm_strdupf("%s/smolvm/bin", xdg);
    } else {
        if (!home || home[0] != '/') {
            struct passwd *pw = getpwuid(getuid());

            home = pw ? pw->pw_dir : NULL;
        }
        if (!home)
            return smolvm_err(err, SMOLVM_EINVAL,
                              "cannot find a home directory for the data "
                              "dir (set XDG_DATA_HOME)");
        r = smolvm_strdupf("%s/.local/share/smolvm/bin", home);
    }
    if (!r)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    *out = r;
    return 0;
}

int smolvm_fc_find_binary(char **out, smolvm_error **err)
{
    const char *env = getenv(SMOLVM_FC_ENV);
    _cleanup_free_ char *dir = NULL, *p = NULL;
    int r;

    if (env && *env) {
        if (access(env, X_OK) < 0)
            return smolvm_err(err, SMOLVM_EHOST, SMOLVM_FC_ENV "='%s' is not executable: %s", env,
                              strerror(errno));
        return (*out = strdup(env)) ? 0 : smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    if (smolvm_fc_bin_dir(&dir, NULL) == 0 && (p = smolvm_strdupf("%s/firecracker", dir)) &&
        access(p, X_OK) == 0) {
        *out = TAKE_PTR(p);
        return 0;
    }
    r = smolvm_host_find_binary(NULL, "firecracker", out, NULL);
    if (r == 0)
        return 0;
    return smolvm_err(err, SMOLVM_EHOST,
                      "no firecracker binary: not in " SMOLVM_FC_ENV ", '%s' or PATH (install "
                      "it with 'smolvm install-firecracker' or set " SMOLVM_FC_ENV ")",
                      p ? p : "<data dir>/bin/firecracker");
}

int smolvm_fc_version_cmp(const char *a, const char *b)
{
    int i;

    for (i = 0; i < 3; i++) {
        long x = strtol(a, (char **)&a, 10), y = strtol(b, (char **)&b, 10);

        if (x != y)
            return x < y ? -1 : 1;
        if (*a == '.')
            a++;
        if (*b == '.')
            b++;
    }
    return 0;
}

int smolvm_fc_binary_version(const char *path, char **version, int64_t deadline, smolvm_error **err)
{
    char *argv[] = {(char *)path, "--version", NULL};
    _cleanup_free_ char *out = NULL;
    char v[32];
    const char *p;
    int r;

    if (deadline <= 0)
        deadline = smolvm_now_ms() + VERSION_TIMEOUT_MS;
    r = smolvm_tool_run(argv, deadline, &out, err);
    if (r < 0)
        return smolvm_err_wrap(err, "firecracker version");
    /* "Firecracker v1.16.1\n\nSupported snapshot data format versions: ..." */
    p = strstr(out, "Firecracker v");
    if (!p || sscanf(p, "Firecracker v%31[0-9.]", v) != 1)
        return smolvm_err(err, SMOLVM_EHOST,
                          "'%s' is not firecracker: --version printed "
                          "'%.80s'",
                          path, out);
    if (smolvm_fc_version_cmp(v, SMOLVM_FC_MIN_VERSION) < 0)
        return smolvm_err(err, SMOLVM_EHOST,
                          "'%s' is firecracker %s, older than " SMOLVM_FC_MIN_VERSION
                          " (install " SMOLVM_FC_PINNED_VERSION ")",
                          path, v);
    if (!(*version = strdup(v)))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    return 0;
}

/* ---------------------------------------------------------------- download */

typedef struct fetch {
    int fd;
    EVP_MD_CTX *md;
    uint64_t done;
    int too_big, write_failed;
    const smolvm_fc_download_opts *opts;
} fetch;

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    fetch *f = userdata;
    size_t n = size * nmemb, off = 0;

    if (f->done + n > SMOLVM_FC_DOWNLOAD_MAX) {
        f->too_big = 1;
        return 0;
    }
    if (EVP_DigestUpdate(f->md, ptr, n) != 1)
        return 0;
    while (off < n) {
        ssize_t w = write(f->fd, ptr + off, n - off);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            f->write_failed = errno ? errno : EIO;
            return 0;
        }
        off += (size_t)w;
    }
    f->done += n;
    return n;
}

static int on_progress(void *userdata, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    fetch *f = userdata;

    (void)ultotal;
    (void)ulnow;
    if (f->opts->progress)
        f->opts->progress((uint64_t)dlnow, (uint64_t)dltotal, f->opts->payload);
    return smolvm_interrupted() ? 1 : 0;
}

static void evp_freep(EVP_MD_CTX **p)
{
    if (*p)
        EVP_MD_CTX_free(*p);
}

static void curl_freep(CURL **p)
{
    if (*p)
        curl_easy_cleanup(*p);
}

/* Fetch url into fd, the sha256 (hex) of what was written into hex. */
static int fetch_url(const smolvm_fc_download_opts *o, const char *url, int fd, char hex[65],
                     int64_t deadline, smolvm_error **err)
{
    _cleanup_(evp_freep) EVP_MD_CTX *md = EVP_MD_CTX_new();
    _cleanup_(curl_freep) CURL *c = NULL;
    unsigned char dig[EVP_MAX_MD_SIZE];
    unsigned dlen = 0, i;
    fetch f = {.fd = fd, .md = md, .opts = o};
    char ebuf[CURL_ERROR_SIZE] = "";
    CURLcode rc;
    long status = 0;

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || !md || !(c = curl_easy_init()))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
        return smolvm_err(err, SMOLVM_EIO, "sha256: EVP_DigestInit_ex failed");
    (void)curl_easy_setopt(c, CURLOPT_URL, url);
    (void)curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    (void)curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "https");
    (void)curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    (void)curl_easy_setopt(c, CURLOPT_MAXREDIRS, 5L);
    (void)curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L);
    (void)curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    (void)curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)smolvm_remaining_ms(deadline) + 1);
    (void)curl_easy_setopt(c, CURLOPT_ERRORBUFFER, ebuf);
    (void)curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    (void)curl_easy_setopt(c, CURLOPT_WRITEDATA, &f);
    (void)curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    (void)curl_easy_setopt(c, CURLOPT_XFERINFODATA, &f);
    (void)curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    (void)curl_easy_setopt(c, CURLOPT_USERAGENT, "smolvm/" SMOLVM_FC_PINNED_VERSION);
    rc = curl_easy_perform(c);
    (void)curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (rc == CURLE_WRITE_ERROR && f.too_big)
        return smolvm_err(err, SMOLVM_EIO, "download '%s': larger than %u MiB", url,
                          SMOLVM_FC_DOWNLOAD_MAX >> 20);
    if (rc == CURLE_WRITE_ERROR && f.write_failed)
        return smolvm_err_errno(err, f.write_failed, "download '%s': write", url);
    if (rc == CURLE_OPERATION_TIMEDOUT)
        return smolvm_err(err, SMOLVM_ETIMEDOUT, "download '%s': timed out", url);
    if (rc == CURLE_ABORTED_BY_CALLBACK)
        return smolvm_err(err, SMOLVM_EINTR, "download '%s': interrupted", url);
    if (rc == CURLE_HTTP_RETURNED_ERROR)
        return smolvm_err(err, SMOLVM_EIO, "download '%s': the server answered %ld", url, status);
    if (rc != CURLE_OK)
        return smolvm_err(err, SMOLVM_EIO, "download '%s': %s", url,
                          *ebuf ? ebuf : curl_easy_strerror(rc));
    if (EVP_DigestFinal_ex(md, dig, &dlen) != 1 || dlen != 32)
        return smolvm_err(err, SMOLVM_EIO, "sha256: EVP_DigestFinal_ex failed");
    for (i = 0; i < dlen; i++)
        (void)snprintf(hex + 2 * i, 3, "%02x", dig[i]);
    if (o->progress)
        o->progress(f.done, f.done, o->payload);
    return 0;
}

static void closedirp_(DIR **d)
{
    if (*d)
        (void)closedir(*d);
}

/* The file in an unpacked release whose name starts with prefix ("firecracker-v"),
 * not a debug file. Looks one directory level down (release-vX-arch/). */
static char *find_member(const char *dir, const char *prefix, int depth)
{
    _cleanup_(closedirp_) DIR *d = opendir(dir);
    struct dirent *e;

    if (!d)
        return NULL;
    while ((e = readdir(d))) {
        _cleanup_free_ char *p = NULL;
        struct stat st;

        if (e->d_name[0] == '.')
            continue;
        p = smolvm_strdupf("%s/%s", dir, e->d_name);
        if (!p || lstat(p, &st) < 0)
            continue;
        if (S_ISDIR(st.st_mode) && depth > 0) {
            char *found = find_member(p, prefix, depth - 1);

            if (found)
                return found;
        } else if (S_ISREG(st.st_mode) && strncmp(e->d_name, prefix, strlen(prefix)) == 0 &&
                   !strstr(e->d_name, ".debug")) {
            return TAKE_PTR(p);
        }
    }
    return NULL;
}

int smolvm_fc_download(const smolvm_fc_download_opts *opts, char **path, smolvm_error **err)
{
    _cleanup_free_ char *dest = NULL, *url = NULL, *archive = NULL, *unpack = NULL, *fc = NULL,
                        *jailer = NULL, *target = NULL, *jtarget = NULL, *version = NULL;
    _cleanup_close_ int fd = -1;
    const char *want = opts->sha256;
    struct utsname un;
    char got[65] = "";
    int64_t deadline = smolvm_now_ms() + (opts->timeout_ms > 0 ? opts->timeout_ms : 300000);
    size_t i;
    int r;

    if (opts->url) {
        if (!want)
            return smolvm_err(err, SMOLVM_EINVAL, "download '%s': a sha256 is required", opts->url);
        url = strdup(opts->url);
    } else {
        if (uname(&un) < 0)
            return smolvm_err_errno(err, errno, "uname");
        for (i = 0; i < SMOLVM_ARRAY_SIZE(pinned) && !want; i++)
            if (strcmp(un.machine, pinned[i].arch) == 0)
                want = pinned[i].sha256;
        if (!want)
            return smolvm_err(err, SMOLVM_EHOST, "no pinned firecracker release for '%s'",
                              un.machine);
        url = smolvm_strdupf(SMOLVM_FC_RELEASE_URL, un.machine);
    }
    if (!url)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (strlen(want) != 64 || strspn(want, "0123456789abcdefABCDEF") != 64)
        return smolvm_err(err, SMOLVM_EINVAL, "sha256 '%s' is not 64 hex digits", want);
    if (opts->dest_dir)
        dest = strdup(opts->dest_dir);
    else if ((r = smolvm_fc_bin_dir(&dest, err)) < 0)
        return r;
    if (!dest)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if ((r = smolvm_mkdir_p(dest, 0755, err)) < 0)
        return r;

    archive = smolvm_strdupf("%s/.firecracker-download-XXXXXX", dest);
    if (!archive)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    fd = mkostemp(archive, O_CLOEXEC);
    if (fd < 0)
        return smolvm_err_errno(err, errno, "create '%s'", archive);
    r = fetch_url(opts, url, fd, got, deadline, err);
    if (r == 0 && strcasecmp(got, want) != 0)
        r = smolvm_err(err, SMOLVM_EIO,
                       "download '%s': sha256 mismatch: expected '%s', got '%s' (the download "
                       "was deleted)",
                       url, want, got);
    if (r < 0) {
        (void)unlink(archive);
        return r;
    }

    /* Verified: only now is anything in it looked at. */
    unpack = smolvm_strdupf("%s/.firecracker-unpack-XXXXXX", dest);
    if (!unpack || !mkdtemp(unpack)) {
        (void)unlink(archive);
        return unpack ? smolvm_err_errno(err, errno, "mkdtemp in '%s'", dest)
                      : smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    {
        char *argv[] = {
            "tar", "-xzf", archive, "-C", unpack, "--no-same-owner", "--no-same-permissions", NULL};

        r = smolvm_tool_run(argv, deadline, NULL, err);
    }
    (void)unlink(archive);
    if (r == 0) {
        fc = find_member(unpack, "firecracker-v", 1);
        jailer = find_member(unpack, "jailer-v", 1);
        if (!fc)
            r = smolvm_err(err, SMOLVM_EIO,
                           "download '%s': no 'firecracker-v*' in the "
                           "archive",
                           url);
    }
    if (r == 0) {
        target = smolvm_strdupf("%s/firecracker", dest);
        jtarget = smolvm_strdupf("%s/jailer", dest);
        if (!target || !jtarget)
            r = smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    if (r == 0 && (chmod(fc, 0755) < 0 || rename(fc, target) < 0))
        r = smolvm_err_errno(err, errno, "install '%s'", target);
    if (r == 0 && jailer && (chmod(jailer, 0755) < 0 || rename(jailer, jtarget) < 0))
        r = smolvm_err_errno(err, errno, "install '%s'", jtarget);
    (void)smolvm_rm_rf(unpack, NULL);
    if (r < 0)
        return r;
    if ((r = smolvm_fc_binary_version(target, &version, smolvm_now_ms() + VERSION_TIMEOUT_MS,
                                      err)) < 0)
        return r;
    *path = TAKE_PTR(target);
    return 0;
}

int smolvm_firecracker_download(char **path, const char *dest_dir,
                                void (*progress)(uint64_t done, uint64_t total, void *payload),
                                void *payload, smolvm_error **err)
{
    smolvm_fc_download_opts o = {0};

    o.dest_dir = dest_dir;
    o.progress = progress;
    o.payload = payload;
    return smolvm_fc_download(&o, path, err);
}
