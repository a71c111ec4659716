/* SPDX-License-Identifier: MIT */
/*
 * The config disk: a raw, read-only virtio-blk drive carrying the VM's secrets
 * (docs/guest-protocol.md, "Config disk"). Secrets never go on the kernel command
 * line, which every process in the guest can read.
 */
#define _GNU_SOURCE
#include "guest.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define MAGIC "smolvm-config 1"

static char disk[GUEST_CONFIG_MAX + 1];
static unsigned char host_key[GUEST_CONFIG_MAX];

static int __attribute__((format(printf, 3, 4)))
fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Standard base64 with optional padding; returns the decoded length or -1. */
static long b64_decode(const char *in, unsigned char *out, size_t outlen)
{
    unsigned acc = 0;
    int bits = 0;
    size_t n = 0;

    for (; *in && *in != '='; in++) {
        int v = b64_value((unsigned char)*in);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n == outlen)
                return -1;
            out[n++] = (unsigned char)(acc >> bits);
        }
    }
    while (*in == '=')
        in++;
    return *in ? -1 : (long)n;
}

static int valid_hostname(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '.'))
            return 0;
    return 1;
}

static int valid_env(const char *s)
{
    const char *p = s;
    if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || *p == '_'))
        return 0;
    for (p++; *p && *p != '='; p++)
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
              *p == '_'))
            return 0;
    if (*p != '=')
        return 0;
    for (p++; *p; p++) /* a control character could end the sshd option line */
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return 0;
    return 1;
}

int config_parse(struct guest_config *cfg, char *buf, size_t len, char *err, size_t errlen)
{
    char *line = buf, *end = buf + len;
    int seen_end = 0;

    memset(cfg, 0, sizeof(*cfg));
    for (int lineno = 1; line < end && !seen_end; lineno++) {
        char *nl = memchr(line, '\n', (size_t)(end - line));
        if (!nl)
            return fail(err, errlen, "config: line %d is not terminated", lineno);
        *nl = '\0';
        if (memchr(line, '\0', (size_t)(nl - line)))
            return fail(err, errlen, "config: NUL byte in line %d", lineno);

        if (lineno == 1) {
            if (strcmp(line, MAGIC) != 0)
                return fail(err, errlen, "config: bad magic (want '%s')", MAGIC);
        } else if (strcmp(line, "end") == 0) {
            seen_end = 1;
        } else if (strncmp(line, "hostname=", 9) == 0) {
            if (!valid_hostname(line + 9))
                return fail(err, errlen, "config: invalid hostname '%s'", line + 9);
            cfg->hostname = line + 9;
        } else if (strncmp(line, "authorized_key=", 15) == 0) {
            cfg->authorized_key = line + 15;
        } else if (strncmp(line, "host_key=", 9) == 0) {
            long n = b64_decode(line + 9, host_key, sizeof(host_key));
            if (n <= 0)
                return fail(err, errlen, "config: %s is not valid base64", "host_key");
            cfg->host_key = host_key;
            cfg->host_key_len = (size_t)n;
        } else if (strncmp(line, "env=", 4) == 0) {
            if (!valid_env(line + 4))
                return fail(err, errlen, "config: invalid env entry '%.64s'", line + 4);
            if (cfg->n_env == GUEST_ENV_MAX)
                return fail(err, errlen, "config: more than %d env entries", GUEST_ENV_MAX);
            cfg->env[cfg->n_env++] = line + 4;
        } /* unknown keys are ignored so the format can grow */
        line = nl + 1;
    }
    if (!seen_end)
        return fail(err, errlen, "config: missing '%s' line (truncated disk?)", "end");
    if (!cfg->authorized_key || !cfg->host_key)
        return fail(err, errlen, "config: authorized_key and host_key are required");
    return 0;
}

int config_parse_disk(struct guest_config *cfg, char *buf, size_t len, char *err, size_t errlen)
{
    if (len < sizeof(MAGIC) || memcmp(buf, MAGIC "\n", sizeof(MAGIC)) != 0)
        return 1;
    buf[len] = '\0';
    /* Stop at the zero padding so it is not mistaken for a NUL in a line. */
    char *z = memchr(buf, '\0', len);
    if (z)
        len = (size_t)(z - buf);
    return config_parse(cfg, buf, len, err, errlen);
}

int config_load(struct guest_config *cfg, char *err, size_t errlen)
{
    char dev[] = "/dev/vdb";

    for (char c = 'b'; c <= 'z'; c++) {
        dev[7] = c;
        int fd = open(dev, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            if (errno == ENOENT) /* virtio-blk names are dense: no vdX, no later one */
                break;
            continue;
        }
        size_t len = 0;
        ssize_t n;
        while (len < GUEST_CONFIG_MAX && (n = read(fd, disk + len, GUEST_CONFIG_MAX - len)) > 0)
            len += (size_t)n;
        close(fd);
        int r = config_parse_disk(cfg, disk, len, err, errlen);
        if (r > 0)
            continue; /* some other disk (a scratch disk, a data volume) */
        if (r < 0)
            return -1;
        guest_log("config from %s", dev);
        return 0;
    }
    return fail(err, errlen, "config: no config disk found in /dev/vd[b-z]");
}
