/* SPDX-License-Identifier: MIT */
/*
 * SSH: the init owns port 22 and runs `sshd -i` (inetd mode) per connection, so the
 * port is open before "ready" is reported and no sshd daemon has to start up first.
 * Keys live on /run (tmpfs): the base image never holds a key, and no key survives
 * the VM.
 */
#define _GNU_SOURCE
#include "guest.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define HOST_KEY GUEST_SSH_DIR "/ssh_host_ed25519_key"
#define AUTH_KEYS GUEST_SSH_DIR "/authorized_keys"

static char *argv_sshd[32];

static int __attribute__((format(printf, 3, 4)))
fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < errlen)
        snprintf(err + n, errlen - (size_t)n, ": %s", strerror(errno));
    return -1;
}

static int write_file(const char *path, const void *data, size_t len, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0)
        return -1;
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            close(fd);
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    /* sshd refuses group/world-readable keys; umask must not decide this. */
    if (fchmod(fd, mode) < 0) {
        close(fd);
        return -1;
    }
    return close(fd);
}

/*
 * sshd -i starts every session with a fresh environment; SetEnv is the sshd_config
 * way to add variables to it (pam_env and /etc/environment are out: UsePAM is off).
 * Only the first SetEnv line counts, so all entries go in one, each double-quoted
 * with \ and " escaped (sshd's argv_split rules).
 */
static char *setenv_option(const struct guest_config *cfg)
{
    size_t cap = sizeof("SetEnv");
    for (size_t i = 0; i < cfg->n_env; i++)
        cap += 3 + 2 * strlen(cfg->env[i]);
    char *s = malloc(cap), *p = s;
    if (!s)
        return NULL;
    p += sprintf(p, "SetEnv");
    for (size_t i = 0; i < cfg->n_env; i++) {
        *p++ = ' ';
        *p++ = '"';
        for (const char *c = cfg->env[i]; *c; c++) {
            if (*c == '"' || *c == '\\')
                *p++ = '\\';
            *p++ = *c;
        }
        *p++ = '"';
    }
    *p = '\0';
    return s;
}

int sshd_setup(const struct guest_config *cfg, char *err, size_t errlen)
{
    /* StrictModes wants root-owned directories that nobody else can write. */
    if (mkdir(GUEST_RUN_DIR, 0755) < 0 && errno != EEXIST)
        return fail(err, errlen, "mkdir %s", GUEST_RUN_DIR);
    if (mkdir(GUEST_SSH_DIR, 0700) < 0 && errno != EEXIST)
        return fail(err, errlen, "mkdir %s", GUEST_SSH_DIR);
    /* sshd's privilege separation directory; Debian expects it on /run. */
    if (mkdir("/run/sshd", 0755) < 0 && errno != EEXIST)
        return fail(err, errlen, "mkdir /run/sshd");
    if (write_file(HOST_KEY, cfg->host_key, cfg->host_key_len, 0600) < 0)
        return fail(err, errlen, "write %s", HOST_KEY);
    size_t klen = strlen(cfg->authorized_key);
    char *keys = malloc(klen + 2);
    if (!keys)
        return fail(err, errlen, "authorized_keys");
    memcpy(keys, cfg->authorized_key, klen);
    keys[klen] = '\n';
    int rc = write_file(AUTH_KEYS, keys, klen + 1, 0600);
    free(keys);
    if (rc < 0)
        return fail(err, errlen, "write %s", AUTH_KEYS);

    char **a = argv_sshd;
    *a++ = "/usr/sbin/sshd";
    *a++ = "-i"; /* inetd mode: the connection is on stdin/stdout */
    *a++ = "-e"; /* log to stderr, which is the serial console */
    *a++ = "-o", *a++ = "LogLevel=ERROR";
    *a++ = "-o", *a++ = "HostKey=" HOST_KEY;
    *a++ = "-o", *a++ = "AuthorizedKeysFile=" AUTH_KEYS;
    *a++ = "-o", *a++ = "PermitRootLogin=prohibit-password";
    *a++ = "-o", *a++ = "PasswordAuthentication=no";
    *a++ = "-o", *a++ = "KbdInteractiveAuthentication=no";
    /* PAM adds nothing for a single pinned key and costs fork/execs per session
     * (pam_motd runs update-motd.d), which TCG makes slow. */
    *a++ = "-o", *a++ = "UsePAM=no";
    *a++ = "-o", *a++ = "UseDNS=no";
    *a++ = "-o", *a++ = "PrintMotd=no";
    *a++ = "-o", *a++ = "PrintLastLog=no";
    /* The host may set per-command variables with the SSH "env" request (libssh2
     * channel_setenv); it is root here anyway, so nothing is gained by refusing. */
    *a++ = "-o", *a++ = "AcceptEnv=*";
    if (cfg->n_env > 0) {
        char *opt = setenv_option(cfg);
        if (!opt)
            return fail(err, errlen, "SetEnv option");
        *a++ = "-o", *a++ = opt;
    }
    *a = NULL;
    return 0;
}

int sshd_listen(char *err, size_t errlen)
{
    int one = 1, zero = 0;
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

    if (fd >= 0) {
        struct sockaddr_in6 a6 = {
            .sin6_family = AF_INET6, .sin6_port = htons(22), .sin6_addr = IN6ADDR_ANY_INIT};
        (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
        (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *)&a6, sizeof(a6)) == 0 && listen(fd, 64) == 0)
            return fd;
        close(fd);
    }
    /* A kernel without IPv6 (the default image) gets here. */
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return fail(err, errlen, "socket");
    struct sockaddr_in a4 = {
        .sin_family = AF_INET, .sin_port = htons(22), .sin_addr.s_addr = htonl(INADDR_ANY)};
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&a4, sizeof(a4)) < 0) {
        close(fd);
        return fail(err, errlen, "bind port 22");
    }
    if (listen(fd, 64) < 0) {
        close(fd);
        return fail(err, errlen, "listen port 22");
    }
    return fd;
}

pid_t sshd_spawn(int conn, int log_fd, const sigset_t *orig_mask)
{
    int one = 1;
    (void)setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    pid_t pid = fork();
    if (pid != 0)
        return pid;

    /* Child: a session of its own, default signals, the connection on 0 and 1. */
    (void)setsid();
    sigprocmask(SIG_SETMASK, orig_mask, NULL);
    if (dup2(conn, 0) < 0 || dup2(conn, 1) < 0)
        _exit(127);
    if (log_fd < 0 || dup2(log_fd, 2) < 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0)
            (void)dup2(null, 2);
    }
    execv(argv_sshd[0], argv_sshd);
    _exit(127);
}
