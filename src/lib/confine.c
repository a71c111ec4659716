/* SPDX-License-Identifier: MIT */
/* A uid of its own for each VMM (confine.h). */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "confine.h"
#include "error.h"

#define UID_MAP_MAX 65536

/* Is [BASE, BASE + COUNT) inside one extent of this user namespace's uid_map? */
static bool range_mapped(void)
{
    _cleanup_free_ char *text = NULL;
    char *line, *save = NULL;

    if (smolvm_read_file("/proc/self/uid_map", UID_MAP_MAX, &text, NULL, NULL) < 0)
        return false;
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        unsigned long long inside, outside, count;

        if (sscanf(line, "%llu %llu %llu", &inside, &outside, &count) == 3 &&
            inside <= SMOLVM_VMM_UID_BASE &&
            inside + count >= (unsigned long long)SMOLVM_VMM_UID_BASE + SMOLVM_VMM_UID_COUNT)
            return true;
    }
    return false;
}

int smolvm_confine_uid_possible(const char **why)
{
    if (geteuid() != 0) {
        *why = "not root: the vmm runs as the user who started it";
        return 0;
    }
    if (!range_mapped()) {
        *why = "the vmm uid range is not mapped in this user namespace";
        return 0;
    }
    *why = "a uid of its own per vmm";
    return 1;
}

int smolvm_confine_uid_acquire(uint32_t *uid, int *lock_fd, smolvm_error **err)
{
    _cleanup_close_ int fd = -1;
    uint32_t i;

    if (mkdir(SMOLVM_RUN_DIR, 0755) < 0 && errno != EEXIST)
        return smolvm_err_errno(err, errno, "mkdir '" SMOLVM_RUN_DIR "'");
    fd = open(SMOLVM_VMM_UID_LOCK, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return smolvm_err_errno(err, errno, "open '" SMOLVM_VMM_UID_LOCK "'");
    /* Byte i held: uid BASE + i taken. Tried lowest first, so uids are reused. */
    for (i = 0; i < SMOLVM_VMM_UID_COUNT; i++) {
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = i, .l_len = 1};

        if (fcntl(fd, F_OFD_SETLK, &fl) == 0) {
            *uid = SMOLVM_VMM_UID_BASE + i;
            *lock_fd = TAKE_FD(fd);
            return 0;
        }
        if (errno != EAGAIN && errno != EACCES)
            return smolvm_err_errno(err, errno, "lock '" SMOLVM_VMM_UID_LOCK "'");
    }
    return smolvm_err(err, SMOLVM_ENOSPC, "all %u vmm uids are taken", SMOLVM_VMM_UID_COUNT);
}

/* An id file ("name:first:count" per line) with an extent inside the range. */
static bool subid_overlaps(const char *path)
{
    _cleanup_fclose_ FILE *f = fopen(path, "re");
    char line[512];

    while (f && fgets(line, sizeof(line), f)) {
        const char *p = strchr(line, ':');
        unsigned long long first, count;

        if (p && sscanf(p + 1, "%llu:%llu", &first, &count) == 2 &&
            first < (unsigned long long)SMOLVM_VMM_UID_BASE + SMOLVM_VMM_UID_COUNT &&
            first + count > SMOLVM_VMM_UID_BASE)
            return true;
    }
    return false;
}

void smolvm_confine_uid_conflicts(char *out, size_t size)
{
    struct passwd *pw;
    size_t n = 0;

    out[0] = '\0';
    setpwent();
    while ((pw = getpwent()) && n < size)
        if (pw->pw_uid >= SMOLVM_VMM_UID_BASE &&
            pw->pw_uid - SMOLVM_VMM_UID_BASE < SMOLVM_VMM_UID_COUNT)
            n += (size_t)snprintf(out + n, size - n, "%suser '%s' (%u)", n ? ", " : "", pw->pw_name,
                                  (unsigned)pw->pw_uid);
    endpwent();
    if (n < size && subid_overlaps("/etc/subuid"))
        n += (size_t)snprintf(out + n, size - n, "%s/etc/subuid", n ? ", " : "");
    if (n < size && subid_overlaps("/etc/subgid"))
        (void)snprintf(out + n, size - n, "%s/etc/subgid", n ? ", " : "");
}
