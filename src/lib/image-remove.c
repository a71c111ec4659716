/* SPDX-License-Identifier: MIT */
/* Removing an image, refused while something uses it: a VM of the store (its disk is
 * an overlay on the image's rootfs, its kernel is the image's) or a template (made from
 * the image). Above vm-config, whose parser reads which image a VM uses. */
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <string.h>
#include <sys/stat.h>

#include "context.h"
#include "error.h"
#include "image.h"
#include "store.h"
#include "vm-config.h"

#define TEMPLATE_JSON_MAX (1024 * 1024)
#define TEMPLATES_MAX 4096 /* template directories looked at */
#define USERS_NAMED 10     /* users named in the refusal; the rest are counted */

int smolvm_image_remove_options_init(smolvm_image_remove_options *opts, unsigned version)
{
    smolvm_image_remove_options defaults = SMOLVM_IMAGE_REMOVE_OPTIONS_INIT;

    if (version < 1 || version > SMOLVM_IMAGE_REMOVE_OPTIONS_VERSION)
        return SMOLVM_EINVAL;
    *opts = defaults;
    opts->version = version;
    return 0;
}

/* Who uses an image, as text for the refusal: "VM 'a', template 't'". */
typedef struct users {
    char text[1024];
    size_t named, more;
} users;

static void add_user(users *u, const char *kind, const char *name)
{
    size_t len = strlen(u->text);
    int n;

    if (u->named == USERS_NAMED) {
        u->more++;
        return;
    }
    n = snprintf(u->text + len, sizeof(u->text) - len, "%s%s '%.64s'", u->named ? ", " : "", kind,
                 name);
    if (n < 0 || (size_t)n >= sizeof(u->text) - len) {
        u->text[len] = '\0';
        u->more++;
        return;
    }
    u->named++;
}

/* VMs of the store whose configuration names the image, whatever their status. A VM
 * whose stored configuration does not parse cannot be started anyway: not counted. */
static int vm_users(smolvm_ctx *ctx, const char *name, users *u, smolvm_error **err)
{
    smolvm_vm_row **rows = NULL;
    size_t n = 0;
    int r;

    if ((r = smolvm_store_vm_list(ctx->store, &rows, &n, err)) < 0)
        return r;
    for (size_t i = 0; i < n; i++) {
        smolvm_vm_config *c = NULL;

        if (smolvm_vm_config_from_json(&c, rows[i]->config_json, NULL) < 0)
            continue;
        if (c->image && strcmp(c->image, name) == 0)
            add_user(u, "VM", rows[i]->id);
        smolvm_vm_config_free(c);
    }
    smolvm_vm_rows_free(rows, n);
    return 0;
}

/* Templates whose <dir>/<name>/template.json has a top-level "image" naming it. No
 * template directory: no templates. */
static int template_users(const char *dir, const char *name, users *u, smolvm_error **err)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    size_t seen = 0;

    if (!d) {
        if (errno == ENOENT || errno == ENOTDIR)
            return 0;
        return smolvm_err_errno(err, errno, "read the template directory '%s'", dir);
    }
    while ((e = readdir(d)) && seen < TEMPLATES_MAX) {
        _cleanup_free_ char *path = NULL, *text = NULL;
        json_t *t;

        if (e->d_name[0] == '.')
            continue;
        seen++;
        if (!(path = smolvm_strdupf("%s/%s/template.json", dir, e->d_name))) {
            closedir(d);
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        }
        if (smolvm_read_file(path, TEMPLATE_JSON_MAX, &text, NULL, NULL) < 0)
            continue;
        t = json_loads(text, 0, NULL);
        if (json_is_string(json_object_get(t, "image")) &&
            strcmp(json_string_value(json_object_get(t, "image")), name) == 0)
            add_user(u, "template", e->d_name);
        json_decref(t);
    }
    closedir(d);
    return 0;
}

int smolvm_image_remove(smolvm_ctx *ctx, const char *name, const smolvm_image_remove_options *opts,
                        smolvm_error **err)
{
    smolvm_image_remove_options o = SMOLVM_IMAGE_REMOVE_OPTIONS_INIT;
    _cleanup_free_ char *tdir = NULL, *dir = NULL;
    users u = {.text = ""};
    struct stat st;
    int r;

    if (opts) {
        if (opts->version < 1 || opts->version > SMOLVM_IMAGE_REMOVE_OPTIONS_VERSION)
            return smolvm_err(err, SMOLVM_EINVAL, "image remove options: unknown version %u",
                              opts->version);
        o = *opts;
    }
    if (!smolvm_image_name_valid(name))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "image: invalid name '%s' (expected [a-z0-9][a-z0-9_-]{0,62})",
                          name ? name : "");
    if (!(dir = smolvm_strdupf("%s/%s", ctx->image_dir, name)))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        smolvm_err(err, SMOLVM_ENOENT, "no image '%s' in '%s'", name, ctx->image_dir);
        return smolvm_err_hint(err, "'smolvm image ls' lists the images");
    }
    if (strcmp(name, "default") == 0 && !o.force) {
        smolvm_err(err, SMOLVM_EINVAL,
                   "image 'default' is the one every sandbox without an image option boots");
        return smolvm_err_hint(err, "remove it anyway with 'smolvm image rm --force default'");
    }
    tdir = strdup(o.template_dir ? o.template_dir : ctx->template_dir);
    if (!tdir)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if ((r = vm_users(ctx, name, &u, err)) < 0 || (r = template_users(tdir, name, &u, err)) < 0)
        return smolvm_err_wrap(err, "remove image '%s'", name);
    if (u.named || u.more) {
        if (u.more)
            smolvm_err(err, SMOLVM_ESTATE, "image '%s' is in use by %s and %zu more", name, u.text,
                       u.more);
        else
            smolvm_err(err, SMOLVM_ESTATE, "image '%s' is in use by %s", name, u.text);
        return smolvm_err_hint(err, "delete them first: smolvm rm -f ID, smolvm template rm NAME");
    }
    return smolvm_image_dir_remove(ctx, name, err);
}
