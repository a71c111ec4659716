/* SPDX-License-Identifier: MIT */
/* Helpers shared by the VMM backends (vmm-internal.h). */
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "vmm/vmm-internal.h"
#include "vmm/vmm.h"

char *smolvm_vmm_path(const char *dir, const char *name)
{
    return smolvm_strdupf("%s/%s", dir, name);
}

char *smolvm_vmm_ro_cmdline(const char *cmdline, const char *overlay_dev)
{
    size_t n = strlen(cmdline);
    char *out = malloc(n + (overlay_dev ? strlen(overlay_dev) : 0) + 32), *o = out;
    const char *p = cmdline;

    if (!out)
        return NULL;
    while (*p) {
        size_t tok = strcspn(p, " "), sp;

        if (tok == 2 && strncmp(p, "rw", 2) == 0)
            memcpy(o, "ro", 2);
        else
            memcpy(o, p, tok);
        o += tok;
        p += tok;
        sp = strspn(p, " ");
        memcpy(o, p, sp);
        o += sp;
        p += sp;
    }
    *o = '\0';
    if (overlay_dev)
        (void)sprintf(o, "%ssmolvm.overlay=%s", o > out && o[-1] != ' ' ? " " : "", overlay_dev);
    return out;
}

bool smolvm_vmm_valid_mac(const char *mac)
{
    unsigned b[6];
    char tail;

    return mac && strlen(mac) == 17 &&
           sscanf(mac, "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5],
                  &tail) == 6;
}

bool smolvm_vmm_valid_ifname(const char *s)
{
    size_t n = s ? strlen(s) : 0;

    return n > 0 && n <= 15 &&
           strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") == n;
}

void smolvm_vmm_remove_files(const char *dir, const char *const *names, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        _cleanup_free_ char *p = smolvm_vmm_path(dir, names[i]);

        if (p)
            (void)unlink(p);
    }
}

int smolvm_vmm_describe_text(char **out, json_t *obj, smolvm_error **err)
{
    char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;

    json_decref(obj);
    if (!text)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    *out = text;
    return 0;
}

uint64_t smolvm_vmm_memory_limit(unsigned memory_mib, int accel)
{
    uint64_t mib = (uint64_t)memory_mib + SMOLVM_VMM_OVERHEAD_MIB;

    if (accel == SMOLVM_ACCEL_TCG)
        mib += SMOLVM_VMM_TCG_TB_MIB;
    return mib << 20;
}

int smolvm_vmm_check_machine(const smolvm_vmm_config *c, smolvm_error **err)
{
    if (!c->dir || c->dir[0] != '/')
        return smolvm_err(err, SMOLVM_EINVAL, "vmm: the vm dir must be an absolute path");
    if (!c->kernel || !c->disk || !c->cmdline)
        return smolvm_err(err, SMOLVM_EINVAL, "vmm: kernel, disk and cmdline are required");
    if (c->vcpus < SMOLVM_VCPUS_MIN || c->vcpus > SMOLVM_VCPUS_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "vmm: vcpus %u out of range %d..%d", c->vcpus,
                          SMOLVM_VCPUS_MIN, SMOLVM_VCPUS_MAX);
    if (c->memory_mib < SMOLVM_MEMORY_MIN || c->memory_mib > SMOLVM_MEMORY_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "vmm: memory %u MiB out of range %d..%d",
                          c->memory_mib, SMOLVM_MEMORY_MIN, SMOLVM_MEMORY_MAX);
    return 0;
}
