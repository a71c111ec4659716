/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the guest init's config disk parser (src/guest/config.c): any
 * bytes as the first bytes of a disk, read the way config_load reads /dev/vdX. What it
 * accepts must be what the protocol allows (docs/guest-protocol.md, "Config disk"): a
 * valid hostname, env entries NAME=value without control characters, at most
 * GUEST_ENV_MAX of them, a decoded host key, every string inside the disk buffer.
 */
#include "guest.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* config_load's log line; config_parse_disk never logs. */
void guest_log(const char *fmt, ...)
{
    (void)fmt;
}

static char disk[GUEST_CONFIG_MAX + 1];

static void inside(const char *p)
{
    if (!p || p < disk || p > disk + GUEST_CONFIG_MAX || strlen(p) > GUEST_CONFIG_MAX)
        abort();
}

static void check_env(const char *e)
{
    const char *eq = strchr(e, '=');

    inside(e);
    if (!eq || eq == e)
        abort();
    for (const char *p = e; p < eq; p++)
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || *p == '_' ||
              (p > e && *p >= '0' && *p <= '9')))
            abort();
    for (const char *p = eq + 1; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct guest_config cfg;
    char err[256];
    int r;

    if (size > GUEST_CONFIG_MAX)
        size = GUEST_CONFIG_MAX; /* config_load reads at most this much */
    memcpy(disk, data, size);
    err[0] = '\0';
    r = config_parse_disk(&cfg, disk, size, err, sizeof(err));
    if (r < 0) {
        if (!err[0] || strnlen(err, sizeof(err)) >= sizeof(err))
            abort(); /* a refusal always says why */
        return 0;
    }
    if (r > 0)
        return 0; /* not a config disk */
    if (!cfg.authorized_key || !cfg.host_key || cfg.host_key_len == 0 ||
        cfg.host_key_len > GUEST_CONFIG_MAX || cfg.n_env > GUEST_ENV_MAX)
        abort();
    inside(cfg.authorized_key);
    if (strchr(cfg.authorized_key, '\n'))
        abort();
    if (cfg.hostname) {
        size_t n = strlen(cfg.hostname);

        inside(cfg.hostname);
        if (n == 0 || n > 63 ||
            strspn(cfg.hostname, "abcdefghijklmnopqrstuvwxyz"
                                 "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.") != n)
            abort();
    }
    for (size_t i = 0; i < cfg.n_env; i++)
        check_env(cfg.env[i]);
    return 0;
}
