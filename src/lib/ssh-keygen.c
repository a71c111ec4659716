/* SPDX-License-Identifier: MIT */
/* ed25519 key pairs, made by OpenSSH's own ssh-keygen rather than by hand-writing the
 * OpenSSH private key format. Costs one process spawn (a few milliseconds). */
#include "ssh.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "error.h"
#include "tool.h"
#include "util.h"

#define KEYGEN_TIMEOUT_MS 10000
#define COMMENT_MAX 256

struct tmpdir {
    char *path;
    char *key;
};

static void tmpdir_cleanup(struct tmpdir *t)
{
    if (t->path) {
        _cleanup_free_ char *pub = smolvm_strdupf("%s.pub", t->key ? t->key : "");

        if (t->key)
            (void)unlink(t->key);
        if (pub)
            (void)unlink(pub);
        (void)rmdir(t->path);
    }
    free(t->key);
    free(t->path);
}

int smolvm_ssh_keygen(const char *path, const char *comment, smolvm_error **err)
{
    _cleanup_(tmpdir_cleanup) struct tmpdir tmp = {0};
    _cleanup_free_ char *dir = NULL, *pub = NULL, *tmp_pub = NULL;
    int r;
    char *slash;

    if (!path || !*path || strlen(path) > 4000)
        return smolvm_err(err, SMOLVM_EINVAL, "generate key: invalid path");
    if (!comment)
        comment = "smolvm";
    if (strlen(comment) > COMMENT_MAX || strpbrk(comment, "\r\n"))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "generate key '%s': comment must be one line of at most %d bytes", path,
                          COMMENT_MAX);
    dir = strdup(path);
    pub = smolvm_strdupf("%s.pub", path);
    if (!dir || !pub)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    slash = strrchr(dir, '/');
    if (slash)
        slash[slash == dir ? 1 : 0] = '\0';
    /* ssh-keygen asks before overwriting and writes in place: generate into a private
     * directory next to the target, then rename, so `path` is never half written. */
    tmp.path = smolvm_strdupf("%s/.smolvm-keygen-XXXXXX", slash ? dir : ".");
    if (!tmp.path)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (!mkdtemp(tmp.path)) {
        r = smolvm_err_errno(err, errno, "generate key '%s'", path);
        free(TAKE_PTR(tmp.path));
        return r;
    }
    tmp.key = smolvm_strdupf("%s/key", tmp.path);
    tmp_pub = smolvm_strdupf("%s/key.pub", tmp.path);
    if (!tmp.key || !tmp_pub)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");

    {
        /* The usual place first: the environment of a library's caller (nginx clears
         * it) may have no useful PATH. */
        char *exe = access("/usr/bin/ssh-keygen", X_OK) == 0 ? "/usr/bin/ssh-keygen" : "ssh-keygen";
        char *argv[] = {exe,  "-q",    "-t", "ed25519", "-N", "", "-C", (char *)comment,
                        "-f", tmp.key, NULL};

        r = smolvm_tool_run(argv, smolvm_now_ms() + KEYGEN_TIMEOUT_MS, NULL, err);
    }
    if (r == SMOLVM_ENOENT) {
        if (err)
            *err = smolvm_error_free(*err);
        return smolvm_err(err, SMOLVM_EHOST,
                          "generate key '%s': ssh-keygen not found (install package "
                          "'openssh-client')",
                          path);
    }
    if (r < 0)
        return smolvm_err_wrap(err, "generate key '%s'", path);
    /* ssh-keygen already writes 0600; make it so whatever its version does. */
    if (chmod(tmp.key, 0600) < 0 || chmod(tmp_pub, 0644) < 0)
        return smolvm_err_errno(err, errno, "generate key '%s'", path);
    if (rename(tmp_pub, pub) < 0)
        return smolvm_err_errno(err, errno, "generate key '%s': install '%s'", path, pub);
    if (rename(tmp.key, path) < 0)
        return smolvm_err_errno(err, errno, "generate key '%s': install", path);
    return 0;
}
