/* SPDX-License-Identifier: MIT */
/* Templates on disk: reading, checking against the image, users, removal (template.h). */
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "context.h"
#include "error.h"
#include "store.h"
#include "template.h"
#include "tool.h"
#include "vm-config.h"

#define TEMPLATE_JSON_MAX (256 * 1024)
#define QEMU_IMG_TIMEOUT_MS 30000

smolvm_template *smolvm_template_free(smolvm_template *t)
{
    if (t) {
        free(t->name);
        free(t->dir);
        json_decref(t->json);
        free(t);
    }
    return NULL;
}

void smolvm_template_freep(smolvm_template **t)
{
    *t = smolvm_template_free(*t);
}

void smolvm_strv_free(char **v)
{
    for (char **p = v; p && *p; p++)
        free(*p);
    free(v);
}

bool smolvm_template_name_valid(const char *name)
{
    return name && smolvm_id_valid(name);
}

char *smolvm_template_path(const smolvm_ctx *ctx, const char *name)
{
    return smolvm_strdupf("%s/%s", ctx->template_dir, name);
}

static const char *str(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

int smolvm_template_load(smolvm_template **out, const char *dir, const char *json_name,
                         smolvm_error **err)
{
    _cleanup_(smolvm_template_freep) smolvm_template *t = calloc(1, sizeof(*t));
    _cleanup_free_ char *path = smolvm_strdupf("%s/%s", dir, json_name), *text = NULL;
    json_t *image, *vmm, *agent;
    json_error_t jerr;
    json_int_t next;
    int r;

    if (!t || !path || !(t->dir = strdup(dir)))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if ((r = smolvm_read_file(path, TEMPLATE_JSON_MAX, &text, NULL, err)) < 0)
        return r;
    t->json = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(t->json))
        return smolvm_err(err, SMOLVM_EINVAL, "'%s': not a JSON object: %s", path, jerr.text);
    image = json_object_get(t->json, "image");
    vmm = json_object_get(t->json, "vmm");
    agent = json_object_get(t->json, "agent");
    t->image = str(image, "name");
    t->image_built = str(image, "built");
    t->image_inputs = str(image, "inputs_hash");
    t->source_vm = str(t->json, "source_vm");
    t->parent = str(t->json, "parent");
    t->memory = str(t->json, "memory");
    t->accel = str(vmm, "accel");
    t->backend = smolvm_backend_from_string(str(vmm, "backend"));
    t->network = smolvm_net_mode_from_string(str(vmm, "network"));
    t->vcpus = (unsigned)json_integer_value(json_object_get(vmm, "vcpus"));
    t->memory_mib = (unsigned)json_integer_value(json_object_get(vmm, "memory_mib"));
    t->created_ms = json_integer_value(json_object_get(t->json, "created_ms"));
    t->ephemeral = json_is_true(json_object_get(t->json, "ephemeral"));
    t->agent = json_object_get(agent, "hello");
    next = json_integer_value(json_object_get(agent, "next_stream"));
    if (json_integer_value(json_object_get(t->json, "format")) != 1 || !t->memory ||
        (strcmp(t->memory, "shared") && strcmp(t->memory, "stream") && strcmp(t->memory, "file")) ||
        !t->accel || (int)t->backend < 0 || t->backend == SMOLVM_BACKEND_AUTO ||
        (int)t->network < 0 || t->network == SMOLVM_NET_AUTO || t->vcpus < SMOLVM_VCPUS_MIN ||
        t->vcpus > SMOLVM_VCPUS_MAX || t->memory_mib < SMOLVM_MEMORY_MIN ||
        t->memory_mib > SMOLVM_MEMORY_MAX || !json_is_object(t->agent) || next <= 0 ||
        next > UINT32_MAX / 2 || (t->parent && !smolvm_template_name_valid(t->parent)))
        return smolvm_err(err, SMOLVM_EINVAL, "'%s': a member is missing or malformed", path);
    t->next_stream = (uint32_t)next;
    *out = TAKE_PTR(t);
    return 0;
}

int smolvm_template_open(smolvm_template **out, smolvm_ctx *ctx, const char *name,
                         smolvm_error **err)
{
    _cleanup_free_ char *dir = NULL;
    smolvm_template *t = NULL;
    struct stat st;
    int r;

    if (!smolvm_template_name_valid(name))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "template: invalid name '%s' (expected [a-z0-9][a-z0-9_-]{0,62})",
                          name ? name : "");
    if (!(dir = smolvm_template_path(ctx, name)))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (stat(dir, &st) < 0) {
        smolvm_err(err, SMOLVM_ENOENT, "template '%s' not found in '%s'", name, ctx->template_dir);
        return smolvm_err_hint(err,
                               "make it from a running vm (vm:snapshot('%s')) or with a "
                               "recipe's template block",
                               name);
    }
    if ((r = smolvm_template_load(&t, dir, SMOLVM_TEMPLATE_JSON, err)) < 0)
        return smolvm_err_wrap(err, "template '%s'", name);
    if (!(t->name = strdup(name))) {
        smolvm_template_free(t);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    *out = t;
    return 0;
}

int smolvm_template_check_image(const smolvm_template *t, const smolvm_image *img,
                                smolvm_error **err)
{
    const char *name = t->name ? t->name : "(saved)";

    if (!t->image || strcmp(t->image, img->name) != 0)
        return smolvm_err(err, SMOLVM_ESTATE, "template '%s' was made from image '%s', not '%s'",
                          name, t->image ? t->image : "?", img->name);
    if (!t->image_built || !img->built || strcmp(t->image_built, img->built) != 0 ||
        !t->image_inputs || !img->inputs_hash || strcmp(t->image_inputs, img->inputs_hash) != 0) {
        smolvm_err(err, SMOLVM_ESTATE,
                   "template '%s' was made from image '%s' as built %s; the image was rebuilt "
                   "(%s) since, and a clone would run the old memory on the new disk",
                   name, img->name, t->image_built ? t->image_built : "(unknown)",
                   img->built ? img->built : "no manifest");
        return smolvm_err_hint(err,
                               "make the template again (smolvm template rm %s, then "
                               "snapshot a vm of the new image)",
                               name);
    }
    return 0;
}

/* ---------------------------------------------------------------- users */

static int strv_push(char ***v, size_t *n, char *s)
{
    char **nv;

    if (!s)
        return SMOLVM_ENOMEM;
    nv = realloc(*v, (*n + 2) * sizeof(*nv));
    if (!nv) {
        free(s);
        return SMOLVM_ENOMEM;
    }
    nv[(*n)++] = s;
    nv[*n] = NULL;
    *v = nv;
    return 0;
}

int smolvm_template_users(char ***out, smolvm_ctx *ctx, const char *name, smolvm_error **err)
{
    smolvm_vm_row **rows = NULL;
    char **v = calloc(1, sizeof(*v));
    size_t n = 0, nrows = 0, i;
    DIR *d;
    int r;

    if (!v)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if ((r = smolvm_store_vm_list(ctx->store, &rows, &nrows, err)) < 0) {
        free(v);
        return r;
    }
    for (i = 0; r == 0 && i < nrows; i++) {
        smolvm_vm_config *c = NULL;

        if (smolvm_vm_config_from_json(&c, rows[i]->config_json, NULL) == 0 && c->template_name &&
            strcmp(c->template_name, name) == 0)
            r = strv_push(&v, &n, strdup(rows[i]->id));
        smolvm_vm_config_free(c);
    }
    smolvm_vm_rows_free(rows, nrows);
    d = opendir(ctx->template_dir);
    for (struct dirent *de; r == 0 && d && (de = readdir(d));) {
        _cleanup_free_ char *dir = NULL;
        smolvm_template *t = NULL;

        if (de->d_name[0] == '.' || !(dir = smolvm_template_path(ctx, de->d_name)))
            continue;
        if (smolvm_template_load(&t, dir, SMOLVM_TEMPLATE_JSON, NULL) == 0 && t->parent &&
            strcmp(t->parent, name) == 0)
            r = strv_push(&v, &n, smolvm_strdupf("template %s", de->d_name));
        smolvm_template_free(t);
    }
    if (d)
        closedir(d);
    if (r < 0) {
        smolvm_strv_free(v);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    *out = v;
    return 0;
}

/* Rename the directory aside first, so a removal killed half-way never leaves a
 * template that looks whole. */
static int remove_dir(smolvm_ctx *ctx, const char *name, smolvm_error **err)
{
    _cleanup_free_ char *dir = smolvm_template_path(ctx, name);
    _cleanup_free_ char *trash =
        smolvm_strdupf("%s/.%s.removing.%ld", ctx->template_dir, name, (long)getpid());

    if (!dir || !trash)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (rename(dir, trash) < 0)
        return errno == ENOENT ? 0 : smolvm_err_errno(err, errno, "remove template '%s'", name);
    return smolvm_rm_rf(trash, err);
}

int smolvm_template_remove(smolvm_ctx *ctx, const char *name, smolvm_error **err)
{
    _cleanup_(smolvm_template_freep) smolvm_template *t = NULL;
    char **users = NULL;
    int r;

    if ((r = smolvm_template_open(&t, ctx, name, err)) < 0)
        return r;
    if ((r = smolvm_template_users(&users, ctx, name, err)) < 0)
        return r;
    if (users[0]) {
        char list[512] = "";
        size_t i;

        for (i = 0; users[i] && i < 8; i++)
            (void)snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", i ? ", " : "",
                           users[i]);
        if (users[i])
            (void)snprintf(list + strlen(list), sizeof(list) - strlen(list), ", ...");
        smolvm_err(err, SMOLVM_ESTATE, "template '%s' is in use by %s", name, list);
        smolvm_strv_free(users);
        return smolvm_err_hint(err, "delete those first (their disks are backed by its disk)");
    }
    smolvm_strv_free(users);
    return remove_dir(ctx, name, err);
}

void smolvm_template_release(smolvm_ctx *ctx, const char *name)
{
    char cur[80];

    if (!name || snprintf(cur, sizeof(cur), "%s", name) >= (int)sizeof(cur))
        return;
    /* A chain of fork templates is short; the bound only guards against a loop. */
    for (int depth = 0; depth < 64; depth++) {
        _cleanup_(smolvm_template_freep) smolvm_template *t = NULL;
        char **users = NULL;
        bool unused;

        if (smolvm_template_open(&t, ctx, cur, NULL) < 0 || !t->ephemeral)
            return;
        if (smolvm_template_users(&users, ctx, cur, NULL) < 0)
            return;
        unused = !users[0];
        smolvm_strv_free(users);
        if (!unused || remove_dir(ctx, cur, NULL) < 0)
            return;
        smolvm_log(ctx, SMOLVM_LOG_DEBUG, "removed template '%s' (its last clone is gone)", cur);
        if (!t->parent || snprintf(cur, sizeof(cur), "%s", t->parent) >= (int)sizeof(cur))
            return;
    }
}

int smolvm_template_make_disk(const smolvm_template *t, const char *vm_dir, char **disk_path,
                              smolvm_error **err)
{
    bool fc = t->backend == SMOLVM_BACKEND_FIRECRACKER;
    _cleanup_free_ char *path =
        smolvm_strdupf("%s/%s", vm_dir, fc ? SMOLVM_TEMPLATE_UPPER : "disk.qcow2");
    _cleanup_free_ char *base =
        smolvm_strdupf("%s/%s", t->dir, fc ? SMOLVM_TEMPLATE_UPPER : SMOLVM_TEMPLATE_DISK);
    int r;

    if (!path || !base)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (fc) {
        /* No backing files for raw disks: the clone's upper disk is a copy, which costs
         * what the template's steps wrote (holes stay holes; shared extents where the
         * file system can). */
        r = smolvm_copy_file(base, path, 0600, err);
    } else {
        char *argv[] = {"qemu-img", "create", "-q", "-f", "qcow2", "-F",
                        "qcow2",    "-b",     base, path, NULL};

        r = smolvm_tool_run(argv, smolvm_now_ms() + QEMU_IMG_TIMEOUT_MS, NULL, err);
    }
    if (r < 0)
        return smolvm_err_wrap(err, "create disk '%s'", path);
    *disk_path = TAKE_PTR(path);
    return 0;
}

int smolvm_template_commit(smolvm_ctx *ctx, const char *staging, const char *name,
                           smolvm_error **err)
{
    _cleanup_free_ char *dir = smolvm_template_path(ctx, name);

    if (!dir)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    /* rename() onto an existing non-empty directory fails: the first one wins. */
    if (rename(staging, dir) < 0) {
        if (errno == EEXIST || errno == ENOTEMPTY)
            return smolvm_err(err, SMOLVM_EEXIST, "template '%s' already exists", name);
        return smolvm_err_errno(err, errno, "rename '%s' to '%s'", staging, dir);
    }
    return 0;
}

/* ---------------------------------------------------------------- public */

static uint64_t dir_bytes(const char *dir)
{
    static const char *const names[] = {SMOLVM_SAVED_STATE, SMOLVM_SAVED_MEM, SMOLVM_TEMPLATE_DISK,
                                        SMOLVM_TEMPLATE_UPPER, SMOLVM_TEMPLATE_JSON};
    uint64_t total = 0;

    for (size_t i = 0; i < SMOLVM_ARRAY_SIZE(names); i++) {
        _cleanup_free_ char *p = smolvm_strdupf("%s/%s", dir, names[i]);
        struct stat st;

        if (p && stat(p, &st) == 0)
            total += (uint64_t)st.st_blocks * 512; /* what it takes, holes not counted */
    }
    return total;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const smolvm_template_info *)a)->name, ((const smolvm_template_info *)b)->name);
}

void smolvm_templates_free(smolvm_template_info *list, size_t n)
{
    for (size_t i = 0; list && i < n; i++) {
        free(list[i].name);
        free(list[i].image);
        free(list[i].source_vm);
        free(list[i].stale);
    }
    free(list);
}

int smolvm_templates(smolvm_template_info **out, size_t *n, smolvm_ctx *ctx, smolvm_error **err)
{
    smolvm_template_info *list = NULL;
    size_t count = 0;
    DIR *d = opendir(ctx->template_dir);

    *out = NULL;
    *n = 0;
    if (!d)
        return errno == ENOENT ? 0 : smolvm_err_errno(err, errno, "open '%s'", ctx->template_dir);
    for (struct dirent *de; (de = readdir(d));) {
        _cleanup_(smolvm_template_freep) smolvm_template *t = NULL;
        smolvm_image *img = NULL;
        smolvm_error *why = NULL;
        smolvm_template_info *nl, *ti;

        if (de->d_name[0] == '.' || smolvm_template_open(&t, ctx, de->d_name, NULL) < 0)
            continue; /* staging, removal in progress, or not a template */
        nl = realloc(list, (count + 1) * sizeof(*nl));
        if (!nl) {
            closedir(d);
            smolvm_templates_free(list, count);
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        }
        list = nl;
        ti = &list[count++];
        *ti = (smolvm_template_info){
            .name = strdup(t->name),
            .image = strdup(t->image ? t->image : ""),
            .vcpus = t->vcpus,
            .memory_mib = t->memory_mib,
            .created_at = t->created_ms,
            .source_vm = t->source_vm ? strdup(t->source_vm) : NULL,
            .ephemeral = t->ephemeral,
            .disk_bytes = dir_bytes(t->dir),
        };
        if (smolvm_image_find(ctx, ti->image, &img, &why) == 0)
            (void)smolvm_template_check_image(t, img, &why);
        if (why)
            ti->stale = strdup(smolvm_error_message(why));
        smolvm_error_free(why);
        smolvm_image_free(img);
        if (!ti->name || !ti->image) {
            closedir(d);
            smolvm_templates_free(list, count);
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        }
    }
    closedir(d);
    if (count)
        qsort(list, count, sizeof(*list), by_name);
    *out = list;
    *n = count;
    return 0;
}

int smolvm_template_delete(smolvm_ctx *ctx, const char *name, smolvm_error **err)
{
    return smolvm_template_remove(ctx, name, err);
}
