/* SPDX-License-Identifier: MIT */
#include "util.h"

#include <errno.h>
#include <pwd.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "context.h"
#include "error.h"
#include "store.h"

/* $ENV_VAR, else $XDG_VAR/suffix, else ~/fallback/suffix (XDG base directory spec:
 * relative XDG paths are invalid and ignored). */
static int resolve_dir(char **out, const char *env_var, const char *xdg_var, const char *fallback,
                       const char *suffix, smolvm_error **err)
{
    const char *v = secure_getenv(env_var), *home;
    char *r;

    if (v && *v) {
        r = strdup(v);
    } else if ((v = secure_getenv(xdg_var)) && v[0] == '/') {
        r = smolvm_strdupf("%s/%s", v, suffix);
    } else {
        home = secure_getenv("HOME");
        if (!home || home[0] != '/') {
            struct passwd *pw = getpwuid(getuid());

            home = pw ? pw->pw_dir : NULL;
        }
        if (!home)
            return smolvm_err(err, SMOLVM_EINVAL,
                              "cannot find a home directory for the state (set %s)", env_var);
        r = smolvm_strdupf("%s/%s/%s", home, fallback, suffix);
    }
    if (!r)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    *out = r;
    return 0;
}

int smolvm_default_state_dir(char **out, smolvm_error **err)
{
    return resolve_dir(out, "SMOLVM_STATE_DIR", "XDG_STATE_HOME", ".local/state", "smolvm", err);
}

int smolvm_default_image_dir(char **out, smolvm_error **err)
{
    return resolve_dir(out, "SMOLVM_IMAGE_DIR", "XDG_DATA_HOME", ".local/share", "smolvm/images",
                       err);
}

int smolvm_default_template_dir(char **out, smolvm_error **err)
{
    return resolve_dir(out, "SMOLVM_TEMPLATE_DIR", "XDG_DATA_HOME", ".local/share",
                       "smolvm/templates", err);
}

int smolvm_ctx_options_init(smolvm_ctx_options *opts, unsigned version)
{
    smolvm_ctx_options defaults = SMOLVM_CTX_OPTIONS_INIT;

    if (version < 1 || version > SMOLVM_CTX_OPTIONS_VERSION)
        return SMOLVM_EINVAL;
    *opts = defaults;
    opts->version = version;
    return 0;
}

/* A policy string: the option, else the environment variable, else NULL. */
static int policy_str(char **out, const char *option, const char *env_var)
{
    const char *v = option && *option ? option : secure_getenv(env_var);

    *out = NULL;
    if (!v || !*v)
        return 0;
    *out = strdup(v);
    return *out ? 0 : SMOLVM_ENOMEM;
}

/* A quota: the option, else the environment variable (digits only), else 0 (none). */
static int policy_quota(uint64_t *out, uint64_t option, const char *env_var, uint64_t max,
                        smolvm_error **err)
{
    const char *v = option ? NULL : secure_getenv(env_var);
    char *end;

    *out = option;
    if (option > max)
        return smolvm_err(err, SMOLVM_EINVAL, "ctx options: quota %llu is over %llu",
                          (unsigned long long)option, (unsigned long long)max);
    if (!v || !*v)
        return 0;
    errno = 0;
    *out = strtoull(v, &end, 10);
    if (errno || *end || v[0] < '0' || v[0] > '9' || *out > max)
        return smolvm_err(err, SMOLVM_EINVAL, "%s: expected a number 0..%llu, got '%.40s'", env_var,
                          (unsigned long long)max, v);
    return 0;
}

/* Network policy, resolved once: the options, then the documented environment. */
static int resolve_policy(smolvm_ctx *ctx, const smolvm_ctx_options *o, smolvm_error **err)
{
    smolvm_ctx_options v2 = SMOLVM_CTX_OPTIONS_INIT;
    const char *console;
    uint64_t q;
    int r;

    /* Fields after log_level exist only in version 2 structs, the quotas only in
     * version 3: an older caller's struct is shorter, so only its part is read. */
    if (o->version >= 3)
        v2 = *o;
    else if (o->version == 2)
        memcpy(&v2, o, offsetof(smolvm_ctx_options, max_vms));
    v2.version = SMOLVM_CTX_OPTIONS_VERSION;
    if ((r = policy_quota(&q, v2.max_vms, "SMOLVM_MAX_VMS", 1000000, err)) < 0)
        return r;
    ctx->max_vms = (unsigned)q;
    if ((r = policy_quota(&ctx->max_memory_mib, v2.max_memory_mib, "SMOLVM_MAX_MEMORY_MIB",
                          UINT64_C(1) << 40, err)) < 0)
        return r;
    if (policy_str(&ctx->nat_cidr, v2.nat_cidr, "SMOLVM_NET_CIDR") < 0 ||
        policy_str(&ctx->nat_uplink, v2.nat_uplink, "SMOLVM_NET_UPLINK") < 0 ||
        policy_str(&ctx->nat_dns, v2.nat_dns, "SMOLVM_DNS") < 0)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (!ctx->nat_cidr && !(ctx->nat_cidr = strdup(SMOLVM_NAT_CIDR_DEFAULT)))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    ctx->console_max = v2.console_max;
    if (!ctx->console_max && (console = secure_getenv("SMOLVM_CONSOLE_MAX")))
        ctx->console_max = strtoull(console, NULL, 10);
    if (!ctx->console_max)
        ctx->console_max = 4u * 1024 * 1024;
    if ((r = policy_quota(&ctx->download_max, v2.download_max, "SMOLVM_DOWNLOAD_MAX",
                          UINT64_C(1) << 50, err)) < 0)
        return r;
    if (!ctx->download_max)
        ctx->download_max = SMOLVM_DOWNLOAD_MAX_DEFAULT;
    if (policy_str(&ctx->supervisor, NULL, "SMOLVM_SUPERVISOR") < 0)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    return 0;
}

/* The state directory holds the database, keys and every VM's files, which processes
 * of this user trust: nobody else may be able to change it (L5 in docs/security.md). */
static int check_state_dir(const char *dir, smolvm_error **err)
{
    struct stat st;
    uid_t me = geteuid();

    if (stat(dir, &st) < 0)
        return smolvm_err_errno(err, errno, "state directory '%s'", dir);
    if (!S_ISDIR(st.st_mode))
        return smolvm_err(err, SMOLVM_EINVAL, "state directory '%s' is not a directory", dir);
    if (st.st_uid != me) {
        smolvm_err(err, SMOLVM_EPERM,
                   "state directory '%s' belongs to uid %u, not to this user (uid %u)", dir,
                   (unsigned)st.st_uid, (unsigned)me);
        return smolvm_err_hint(err, "use a state directory of your own: $SMOLVM_STATE_DIR or "
                                    "smolvm_ctx_options.state_dir");
    }
    if (st.st_mode & (S_IWGRP | S_IWOTH)) {
        smolvm_err(err, SMOLVM_EPERM, "state directory '%s' is writable by %s (mode %04o)", dir,
                   (st.st_mode & S_IWGRP) && (st.st_mode & S_IWOTH) ? "group and others"
                   : st.st_mode & S_IWGRP                           ? "its group"
                                                                    : "others",
                   (unsigned)(st.st_mode & 07777));
        return smolvm_err_hint(err, "chmod go-w '%s'", dir);
    }
    return 0;
}

int smolvm_ctx_new(smolvm_ctx **out, const smolvm_ctx_options *opts, smolvm_error **err)
{
    smolvm_ctx_options defaults = SMOLVM_CTX_OPTIONS_INIT;
    smolvm_ctx *ctx;
    int r;

    if (!opts)
        opts = &defaults;
    if (opts->version < 1 || opts->version > SMOLVM_CTX_OPTIONS_VERSION)
        return smolvm_err(err, SMOLVM_EINVAL, "ctx options: unknown version %u", opts->version);
    if (opts->log_level < SMOLVM_LOG_ERROR || opts->log_level > SMOLVM_LOG_DEBUG)
        return smolvm_err(err, SMOLVM_EINVAL, "ctx options: log_level: expected 0..3, got %d",
                          opts->log_level);
    ctx = calloc(1, sizeof(*ctx));
    if (!ctx)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    ctx->log = opts->log;
    ctx->log_payload = opts->log_payload;
    ctx->log_level = opts->log_level;
    if ((r = resolve_policy(ctx, opts, err)) < 0) {
        smolvm_ctx_free(ctx);
        return r;
    }

    if (opts->state_dir)
        r = (ctx->state_dir = strdup(opts->state_dir)) ? 0 : SMOLVM_ENOMEM;
    else
        r = smolvm_default_state_dir(&ctx->state_dir, err);
    if (r == 0) {
        if (opts->image_dir)
            r = (ctx->image_dir = strdup(opts->image_dir)) ? 0 : SMOLVM_ENOMEM;
        else
            r = resolve_dir(&ctx->image_dir, "SMOLVM_IMAGE_DIR", "XDG_DATA_HOME", ".local/share",
                            "smolvm/images", err);
    }
    if (r == 0)
        r = smolvm_default_template_dir(&ctx->template_dir, err);
    if (r == SMOLVM_ENOMEM)
        smolvm_err(err, r, "out of memory");
    if (r == 0)
        r = smolvm_mkdir_p(ctx->state_dir, 0700, err);
    if (r == 0)
        r = check_state_dir(ctx->state_dir, err);
    if (r == 0 && !(ctx->db_path = smolvm_strdupf("%s/smolvm.db", ctx->state_dir)))
        r = smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (r == 0)
        r = smolvm_store_open(&ctx->store, ctx->db_path, err);
    if (r < 0) {
        smolvm_ctx_free(ctx);
        return r;
    }
    *out = ctx;
    return 0;
}

smolvm_ctx *smolvm_ctx_free(smolvm_ctx *ctx)
{
    if (!ctx)
        return NULL;
    smolvm_store_free(ctx->store);
    free(ctx->state_dir);
    free(ctx->image_dir);
    free(ctx->template_dir);
    free(ctx->db_path);
    free(ctx->nat_cidr);
    free(ctx->nat_uplink);
    free(ctx->nat_dns);
    free(ctx->supervisor);
    free(ctx);
    return NULL;
}

int smolvm_ctx_usage_json(char **out, smolvm_ctx *ctx, smolvm_error **err)
{
    uint64_t mib = 0;
    unsigned vms = 0;
    json_t *o;
    int r;

    if ((r = smolvm_store_usage(ctx->store, &vms, &mib, err)) < 0)
        return r;
    o = json_pack("{s:I, s:I, s:I, s:I}", "vms", (json_int_t)vms, "memory_mib", (json_int_t)mib,
                  "max_vms", (json_int_t)ctx->max_vms, "max_memory_mib",
                  (json_int_t)ctx->max_memory_mib);
    *out = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return *out ? 0 : smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
}

const char *smolvm_ctx_state_dir(const smolvm_ctx *ctx)
{
    return ctx->state_dir;
}

const char *smolvm_ctx_image_dir(const smolvm_ctx *ctx)
{
    return ctx->image_dir;
}

const char *smolvm_ctx_template_dir(const smolvm_ctx *ctx)
{
    return ctx->template_dir;
}

const char *smolvm_ctx_db_path(const smolvm_ctx *ctx)
{
    return ctx->db_path;
}

void smolvm_log(struct smolvm_ctx *ctx, int level, const char *fmt, ...)
{
    va_list ap;
    char *msg;

    if (!ctx || !ctx->log || level > ctx->log_level)
        return;
    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0)
        msg = NULL;
    va_end(ap);
    if (msg) {
        ctx->log(level, msg, ctx->log_payload);
        free(msg);
    }
}
