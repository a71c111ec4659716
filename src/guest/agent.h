/* SPDX-License-Identifier: MIT */
/*
 * smolvm-agent's core as a library: serve the agent protocol (docs/agent-protocol.md)
 * on a channel fd. agent-main.c runs it in the guest on the virtio-serial port or
 * vsock; the host tests (tests/unit/test_agent.c) and the fuzz target run the same
 * code over a socketpair, with hooks instead of the guest-only side effects.
 */
#ifndef SMOLVM_GUEST_AGENT_H
#define SMOLVM_GUEST_AGENT_H

#include <stddef.h>
#include <stdint.h>

#define AGENT_VERSION_STRING "smolvm-agent 0.2.0"

/* An identity from the host (the `identity` op), validated. Absent members: NULL / -1 /
 * has_* 0. Strings are borrowed for the duration of the hook call. */
struct agent_identity {
    const uint8_t *entropy;
    size_t entropy_len; /* 0: none, else 32..512 */
    int has_time;
    int64_t time_ms; /* CLOCK_REALTIME, ms since the epoch */
    const char *hostname;
    int has_net;
    const char *ip, *gateway, *mac, *dns; /* ip and prefix always set when has_net */
    int prefix;
};

struct agent_options {
    /* Base environment of commands, NULL-terminated "K=V" strings (copied by
     * agent_new). NULL: the agent's own environment. */
    char *const *env;
    /* cwd of commands that name none; NULL: "/root". */
    const char *default_cwd;
    /* Apply an identity: 0, or -1 with a message in err and a protocol error code
     * ("EIO", "EPERM", ...) in *code. NULL: agent_identity_apply (the real thing). */
    int (*identity)(const struct agent_identity *id, void *payload, const char **code, char *err,
                    size_t errlen);
    /* Called once after the reply to `poweroff` was sent. NULL: kill(1, SIGTERM)
     * (our PID 1 powers off on SIGTERM). */
    void (*poweroff)(void *payload);
    void *payload;
    /* Accept more connections on this listening socket (tests); -1: none. */
    int listen_fd;
    /* Tests: agent_step returns 0 once no connection is left, even with listen_fd. */
    int exit_when_idle;
    /* A reconnecting stream channel (vsock): returns a non-blocking socket whose
     * connect is in progress (or done), or -1 with errno. NULL: none. */
    int (*connect)(void *payload);
    /* Fuzzing: exec is refused (EPERM) after its request was checked, and every
     * file path is taken relative to file_root ('..' refused). */
    int no_exec;
    const char *file_root;
};

enum agent_channel {
    AGENT_CHANNEL_SOCKET, /* a connected stream: EOF ends the connection */
    AGENT_CHANNEL_PORT,   /* a virtio-serial port: the host comes and goes (POLLHUP, SIGIO) */
};

struct agent;

/* NULL with errno on failure. Blocks SIGCHLD and SIGIO in the calling thread (they
 * arrive on a signalfd) and makes the process a child subreaper unless no_exec. */
struct agent *agent_new(const struct agent_options *o);
/* Serve fd (taken over, closed by the agent). 0 or -1 with errno. */
int agent_add_channel(struct agent *a, int fd, enum agent_channel kind);
/* One turn of the event loop, waiting at most timeout_ms (-1: until an event or a
 * deadline). Returns 1 while there is something to serve, 0 once every connection is
 * gone for good, -1 with errno on a loop failure. */
int agent_step(struct agent *a, int timeout_ms);
/* Kills what still runs (SIGKILL to each process group), frees everything. NULL-safe. */
struct agent *agent_free(struct agent *a);
/* agent_new + agent_add_channel + agent_step until 0 + agent_free. 0 or -1. */
int agent_run(const struct agent_options *o, int fd, enum agent_channel kind);

/* The real identity hook: RNDADDENTROPY, clock_settime, sethostname +
 * /run/smolvm/{hostname,hosts}, eth0 MAC/address/route via ioctls,
 * /run/smolvm/resolv.conf. */
int agent_identity_apply(const struct agent_identity *id, void *payload, const char **code,
                         char *err, size_t errlen);

#endif
