/* SPDX-License-Identifier: MIT */
#include "util.h"

#include <cpuid.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include "error.h"
#include "host.h"

#define KVM_GET_API_VERSION_IOCTL 0xAE00 /* _IO(KVMIO, 0x00), avoids linux/kvm.h */

static int cpu_has_hw_virt(void)
{
    _cleanup_fclose_ FILE *f = fopen("/proc/cpuinfo", "re");
    char line[4096];

    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "flags", 5) != 0)
            continue;
        return strstr(line, " vmx") != NULL || strstr(line, " svm") != NULL;
    }
    return 0;
}

int smolvm_host_kvm_usable(const char **why)
{
    _cleanup_close_ int fd = -1;
    struct stat st;

    /* PVM (kvm_pvm) offers /dev/kvm without VT-x/AMD-V: only PVM-built guest kernels
     * run on it; an ordinary kernel dies with "emulation failure". */
    if (stat("/sys/module/kvm_pvm", &st) == 0) {
        *why = "/dev/kvm is provided by kvm_pvm, which cannot run an ordinary guest kernel";
        return 0;
    }
    fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            *why = "/dev/kvm does not exist (no KVM module loaded, or no hardware "
                   "virtualization)";
        else if (errno == EACCES || errno == EPERM)
            *why = "/dev/kvm: permission denied (add your user to group 'kvm')";
        else
            *why = "/dev/kvm cannot be opened";
        return 0;
    }
    if (ioctl(fd, KVM_GET_API_VERSION_IOCTL, 0) != 12) {
        *why = "/dev/kvm does not answer KVM_GET_API_VERSION with version 12";
        return 0;
    }
    if (!cpu_has_hw_virt()) {
        *why = "the CPU flags show no vmx/svm (hardware virtualization)";
        return 0;
    }
    *why = "/dev/kvm is usable and the CPU has hardware virtualization";
    return 1;
}

int smolvm_host_resolve_accel(int requested, int *resolved, const char **note, smolvm_error **err)
{
    const char *why = NULL;
    int kvm = smolvm_host_kvm_usable(&why);

    switch (requested) {
    case SMOLVM_ACCEL_TCG:
        *resolved = SMOLVM_ACCEL_TCG;
        if (note)
            *note = "accel = \"tcg\" was requested";
        return 0;
    case SMOLVM_ACCEL_KVM:
        if (!kvm)
            return smolvm_err(err, SMOLVM_EHOST,
                              "accel 'kvm': %s (use accel = \"tcg\" or \"auto\")", why);
        *resolved = SMOLVM_ACCEL_KVM;
        if (note)
            *note = why;
        return 0;
    case SMOLVM_ACCEL_AUTO:
        *resolved = kvm ? SMOLVM_ACCEL_KVM : SMOLVM_ACCEL_TCG;
        if (note)
            *note = why;
        return 0;
    default: return smolvm_err(err, SMOLVM_EINVAL, "accel: unknown value %d", requested);
    }
}

static unsigned long cpuinfo_mhz_khz(void)
{
    _cleanup_fclose_ FILE *f = fopen("/proc/cpuinfo", "re");
    char line[512];
    double mhz;

    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "cpu MHz : %lf", &mhz) == 1)
            return (unsigned long)(mhz * 1000.0 + 0.5);
    return 0;
}

unsigned long smolvm_host_tsc_khz(void)
{
    unsigned a, b, c, d;

    /* Hypervisor timing leaf (KVM, VMware): TSC frequency in kHz in eax. */
    __cpuid(0x40000000, a, b, c, d);
    if (a >= 0x40000010) {
        __cpuid(0x40000010, a, b, c, d);
        if (a)
            return a;
    }
    /* Intel: TSC = crystal * ebx / eax. */
    __cpuid(0, a, b, c, d);
    if (a >= 0x15) {
        __cpuid(0x15, a, b, c, d);
        if (a && b && c)
            return (unsigned long)((uint64_t)c * b / a / 1000);
    }
    /* With constant_tsc, Linux reports the TSC frequency here. */
    return cpuinfo_mhz_khz();
}

int smolvm_host_find_binary(const char *env, const char *name, char **out, smolvm_error **err)
{
    const char *v = env ? getenv(env) : NULL, *path;
    _cleanup_free_ char *copy = NULL;
    char *dir, *save = NULL;

    if (v && *v) {
        if (access(v, X_OK) < 0)
            return smolvm_err(err, SMOLVM_EHOST, "%s='%s': %s", env, v, strerror(errno));
        if (!(*out = strdup(v)))
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        return 0;
    }
    path = getenv("PATH");
    copy = strdup(path && *path ? path : "/usr/local/bin:/usr/bin:/bin");
    if (!copy)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    for (dir = strtok_r(copy, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
        _cleanup_free_ char *p = smolvm_strdupf("%s/%s", dir, name);

        if (p && access(p, X_OK) == 0) {
            *out = TAKE_PTR(p);
            return 0;
        }
    }
    return smolvm_err(err, SMOLVM_EHOST, "'%s' not found in PATH", name);
}

int smolvm_host_has_net_admin(void)
{
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];

    memset(data, 0, sizeof(data));
    if (syscall(SYS_capget, &hdr, data) < 0)
        return 0;
    return (data[CAP_NET_ADMIN / 32].effective >> (CAP_NET_ADMIN % 32)) & 1;
}
