/* SPDX-License-Identifier: MIT */
/*
 * smolvm guest init: what init.c, config.c and sshd.c share.
 * The host<->guest contract is docs/guest-protocol.md.
 */
#ifndef SMOLVM_GUEST_H
#define SMOLVM_GUEST_H

#include <signal.h>
#include <stddef.h>
#include <sys/types.h>

#define GUEST_CONFIG_MAX (64 * 1024) /* the protocol's limit on the config disk */
#define GUEST_ENV_MAX 256
#define GUEST_RUN_DIR "/run/smolvm"
#define GUEST_SSH_DIR GUEST_RUN_DIR "/ssh"

/* What the config disk says. Strings point into a static buffer owned by config.c. */
struct guest_config {
    const char *hostname;
    const char *authorized_key;
    const unsigned char *host_key; /* decoded OpenSSH private key file */
    size_t host_key_len;
    const char *env[GUEST_ENV_MAX]; /* "KEY=VALUE" */
    size_t n_env;
};

/* Log a line to the serial console as "smolvm: ..." (no event on hvc0). */
void guest_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Find the config disk (/dev/vd[b-z] whose first line is the magic) and parse it.
 * Returns 0, or -1 with a message in err.
 */
int config_load(struct guest_config *cfg, char *err, size_t errlen);

/* Parse a config disk image held in buf (modified in place, must outlive cfg). */
int config_parse(struct guest_config *cfg, char *buf, size_t len, char *err, size_t errlen);

/* A disk's first len bytes (buf has room for len + 1): 1 when it is not a config disk
 * (no magic line), else config_parse of its text up to the zero padding. */
int config_parse_disk(struct guest_config *cfg, char *buf, size_t len, char *err, size_t errlen);

/* Write the host key and authorized_keys under /run and prepare the sshd argv. */
int sshd_setup(const struct guest_config *cfg, char *err, size_t errlen);

/* Listening socket on port 22 (IPv6 dual-stack when the kernel has IPv6, else IPv4). */
int sshd_listen(char *err, size_t errlen);

/* Fork `sshd -i` serving conn; the child gets orig_mask as its signal mask. */
pid_t sshd_spawn(int conn, int log_fd, const sigset_t *orig_mask);

#endif
