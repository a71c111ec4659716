/* SPDX-License-Identifier: MIT */
#include "util.h"

#include <string.h>

#include "error.h"
#include "base64.h"
#include "guest-config.h"

/* The whole env the host takes at create (vm-config.c) fits the disk with room for
 * the rest: the magic, a hostname, an authorized key and an ed25519 host key in base64
 * (~600 bytes). */
_Static_assert(SMOLVM_ENV_TOTAL_MAX + 8 * 1024 <= SMOLVM_CONFIG_DISK_MAX,
               "the env a VM may have does not fit its config disk");

/* One line of the config disk: no newline may hide inside a value. */
static int append(char *buf, size_t *n, const char *key, const char *value, smolvm_error **err)
{
    int w;

    if (strchr(value, '\n'))
        return smolvm_err(err, SMOLVM_EINVAL, "%s: value contains a newline", key);
    w = snprintf(buf + *n, SMOLVM_CONFIG_DISK_MAX - *n, "%s=%s\n", key, value);
    if (w < 0 || (size_t)w >= SMOLVM_CONFIG_DISK_MAX - *n)
        return smolvm_err(err, SMOLVM_EINVAL, "guest configuration exceeds %d bytes",
                          SMOLVM_CONFIG_DISK_MAX);
    *n += (size_t)w;
    return 0;
}

int smolvm_config_disk_write(const char *path, const char *hostname, const char *authorized_key,
                             const char *host_key_path, const char *const *env, smolvm_error **err)
{
    _cleanup_free_ char *buf = calloc(1, SMOLVM_CONFIG_DISK_MAX);
    _cleanup_free_ char *key = NULL, *key64 = NULL, *authkey = NULL;
    size_t n = 0, keylen = 0, padded;
    int r;

    if (!buf)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    r = smolvm_read_file(host_key_path, 16 * 1024, &key, &keylen, err);
    if (r < 0)
        return r;
    key64 = malloc(SMOLVM_BASE64_LEN(keylen) + 1);
    if (key64)
        smolvm_base64_encode(key64, (const unsigned char *)key, keylen);
    authkey = strdup(authorized_key);
    if (!key64 || !authkey)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    authkey[strcspn(authkey, "\n")] = '\0';
    n = (size_t)snprintf(buf, SMOLVM_CONFIG_DISK_MAX, "smolvm-config 1\n");
    if ((r = append(buf, &n, "hostname", hostname, err)) < 0 ||
        (r = append(buf, &n, "authorized_key", authkey, err)) < 0 ||
        (r = append(buf, &n, "host_key", key64, err)) < 0)
        return r;
    for (; env && *env; env++)
        if ((r = append(buf, &n, "env", *env, err)) < 0)
            return r;
    if (n + 4 >= SMOLVM_CONFIG_DISK_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "guest configuration exceeds %d bytes",
                          SMOLVM_CONFIG_DISK_MAX);
    memcpy(buf + n, "end\n", 4);
    n += 4;
    /* Block devices come in whole sectors; pad with zeros to 4 KiB. */
    padded = (n + 4095) & ~(size_t)4095;
    return smolvm_write_file_atomic(path, buf, padded, 0600, err);
}

int smolvm_kernel_cmdline(char **out, const char *hostname, int network, const char *guest_ip,
                          const char *gateway, const char *netmask, const char *dns,
                          unsigned long tsc_khz, smolvm_error **err)
{
    _cleanup_free_ char *ip = NULL, *tsc = NULL;
    char *s;

    /* reboot=t + QEMU -no-reboot: a guest reboot ends the VMM; panic=-1 turns a guest
     * panic into that too. acpi=off: microvm then lists virtio-mmio devices on the
     * command line, which is how the kernel finds them. no_timer_check: at boot the
     * kernel checks that the IO-APIC timer ticked 4 times during a wait it times with
     * the TSC; a vCPU the host did not run during that wait sees one tick and panics
     * ("IO-APIC + timer doesn't work", seen with 20 TCG guests starting on 2 cores).
     * A VMM's IO-APIC timer works; Kata passes the same option. */
    if (network != SMOLVM_NET_NONE) {
        ip = smolvm_strdupf(" ip=%s::%s:%s:%s:eth0:off%s%s", guest_ip, gateway, netmask, hostname,
                            dns ? " smolvm.dns=" : "", dns ? dns : "");
        if (!ip)
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    /* TCG (tsc_khz given): the TSC is the host's, so it is exact, but the kernel's
     * watchdog sees emulation delays as skew and falls back to jiffies, whose clock then
     * runs with the timer interrupts QEMU delivers late or in bursts on a busy host
     * (measured: seconds off within a minute). tsc=reliable keeps the TSC. */
    if (tsc_khz && !(tsc = smolvm_strdupf(" tsc_early_khz=%lu tsc=reliable", tsc_khz)))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    s = smolvm_strdupf("console=ttyS0 reboot=t panic=-1 acpi=off no_timer_check%s root=/dev/vda rw "
                       "rootfstype=ext4 init=/sbin/smolvm-init quiet%s",
                       tsc ? tsc : "", ip ? ip : "");
    if (!s)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    *out = s;
    return 0;
}
