/* SPDX-License-Identifier: MIT */
#include "util.h"

#include <errno.h>
#include <jansson.h>
#include <string.h>
#include <sys/stat.h>

#include "context.h"
#include "error.h"
#include "image.h"
#include "store.h"
#include "tool.h"

#define QEMU_IMG_TIMEOUT_MS 30000
#define MANIFEST_MAX (1024 * 1024)

smolvm_image *smolvm_image_free(smolvm_image *img)
{
    if (img) {
        free(img->name);
        free(img->dir);
        free(img->kernel);
        free(img->rootfs);
        free(img->built);
        free(img->inputs_hash);
        free(img);
    }
    return NULL;
}

/* What the image's manifest says about it (scripts/build-image.sh writes it). An image
 * without one, or from before the agent existed, has no agent. */
static void read_manifest(smolvm_image *img)
{
    _cleanup_free_ char *path = smolvm_strdupf("%s/manifest.json", img->dir), *text = NULL;
    json_t *m;

    if (!path || smolvm_read_file(path, MANIFEST_MAX, &text, NULL, NULL) < 0)
        return;
    m = json_loads(text, 0, NULL);
    img->has_agent = json_is_string(json_object_get(m, "agent"));
    if (json_is_string(json_object_get(m, "built")))
        img->built = strdup(json_string_value(json_object_get(m, "built")));
    if (json_is_string(json_object_get(m, "inputs_hash")))
        img->inputs_hash = strdup(json_string_value(json_object_get(m, "inputs_hash")));
    json_decref(m);
}

int smolvm_image_find(smolvm_ctx *ctx, const char *name, smolvm_image **out, smolvm_error **err)
{
    smolvm_image *img;
    struct stat st;

    if (!name || !smolvm_id_valid(name))
        return smolvm_err(err, SMOLVM_EINVAL, "image: invalid name '%s'", name ? name : "");
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
    if (stat(img->kernel, &st) < 0 || stat(img->rootfs, &st) < 0) {
        smolvm_err(err, SMOLVM_EHOST, "image '%s' not found in '%s'", name, img->dir);
        smolvm_err_hint(err, "build it with scripts/build-image.sh%s%s",
                        strcmp(name, "default") ? " --name " : "",
                        strcmp(name, "default") ? name : "");
        smolvm_image_free(img);
        return SMOLVM_EHOST;
    }
    read_manifest(img);
    *out = img;
    return 0;
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
