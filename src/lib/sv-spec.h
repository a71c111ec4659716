/* SPDX-License-Identifier: MIT */
/*
 * What the library tells a VM's supervisor (src/supervisor) when it launches it: the
 * VMM to run, how the guest is reached, who owns the sandbox and until when. Written by
 * the library as <vm dir>/supervisor.json, read by the supervisor at start. Both sides
 * use this one definition.
 */
#ifndef SMOLVM_SV_SPEC_H
#define SMOLVM_SV_SPEC_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "egress.h"
#include "smolvm.h"
#include "vmm/vmm.h"

#define SMOLVM_SV_SPEC_FILE "supervisor.json"
#define SMOLVM_SV_SOCK "agent.sock"         /* clients connect here */
#define SMOLVM_SV_EXIT_FILE "vmm-exit.json" /* how the VMM ended, written by the supervisor */
#define SMOLVM_SV_LOG "supervisor.log"      /* the supervisor's own stderr */
#define SMOLVM_SV_VSOCK "vsock.sock"        /* firecracker's hybrid vsock */
#define SMOLVM_CONSOLE_MAX_DEFAULT (4u * 1024 * 1024)
#define SMOLVM_CONSOLE_MAX_MIN (64u * 1024)

typedef enum smolvm_sv_transport {
    SMOLVM_SV_AGENT, /* ready when the agent says hello */
    SMOLVM_SV_SSH,   /* ready when the guest's init says so (sshd listens) */
} smolvm_sv_transport;

/* A VM that continues from a snapshot (a template's clone, a suspended VM) instead of
 * booting. Strings and objects borrowed from the spec's json. */
typedef struct smolvm_sv_restore {
    bool set;
    const char *state;    /* the device state (QEMU: the migration stream) */
    const char *mem;      /* the memory file; NULL: the RAM is in the state */
    bool mem_private;     /* map mem privately, copy on write (a clone); else load it into
                           * the memfd (a suspended VM resuming) */
    json_t *agent;        /* the agent's hello when the snapshot was taken */
    uint32_t next_stream; /* QEMU: the agent's session goes on; the first stream id free */
    json_t *identity;     /* the identity request's hostname and net (the supervisor adds
                           * entropy and the time) */
} smolvm_sv_restore;

/* One port forward of a NAT VM. */
typedef struct smolvm_sv_fwd {
    char host_address[16]; /* IPv4 text */
    int host_port, guest_port;
} smolvm_sv_fwd;

/* Network "nat": what the supervisor serves for the VM's network once the library has
 * set it up (src/supervisor/net.c): the DNS filter on the gateway, the proxy of the
 * loopback forwards, the reader of denied attempts, the periodic repair of the rules,
 * and runtime changes of the policy and the forwards. */
typedef struct smolvm_sv_net {
    char tap[16];
    char guest_ip[16];
    char gateway[16];
    int prefix;
    char uplink[16];
    char upstream[16];           /* the resolver the DNS filter asks; "" when the host has none */
    smolvm_egress_policy egress; /* resolved; owned by a spec that was read, borrowed by the
                                  * library's when writing */
    smolvm_sv_fwd forwards[SMOLVM_FORWARDS_MAX];
    size_t n_forwards;
} smolvm_sv_net;

typedef struct smolvm_sv_spec {
    char *vm_id;
    char *dir;
    char *state_dir;
    smolvm_backend backend;
    smolvm_sv_transport transport;
    pid_t owner_pid;       /* 0: none (the sandbox outlives its creator) */
    uint64_t owner_start;  /* the owner's start time (/proc/PID/stat) */
    int64_t expires_at;    /* wall-clock ms; 0: no ttl */
    uint64_t console_max;  /* bytes of console log kept (two files of half each) */
    smolvm_vmm_config vmm; /* strings borrowed from `json`; fds are set by the supervisor */
    bool shared_memory;    /* QEMU: the guest RAM is a memfd the supervisor makes and holds */
    smolvm_sv_restore restore;
    smolvm_vmm_hostfwd *hostfwds;
    smolvm_sv_net *net; /* network "nat"; NULL otherwise */
    json_t *json;       /* owns the strings above */
} smolvm_sv_spec;

/* Serialise spec (its vmm part without the fds) to dir/supervisor.json, mode 0600. */
int smolvm_sv_spec_write(const smolvm_sv_spec *spec, smolvm_error **err);
/* Read dir/supervisor.json. Caller frees with smolvm_sv_spec_free. */
int smolvm_sv_spec_read(smolvm_sv_spec **out, const char *dir, smolvm_error **err);
smolvm_sv_spec *smolvm_sv_spec_free(smolvm_sv_spec *spec);

/* How the VMM ended (dir/vmm-exit.json). */
typedef struct smolvm_sv_exit {
    int exit_code;       /* -1 when killed by a signal */
    int signal;          /* 0 when it exited */
    bool guest_poweroff; /* the guest said, on its control channel, that it powers off */
} smolvm_sv_exit;

int smolvm_sv_exit_write(const char *dir, const smolvm_sv_exit *e, smolvm_error **err);
/* SMOLVM_ENOENT when the supervisor wrote nothing (it was killed). */
int smolvm_sv_exit_read(smolvm_sv_exit *out, const char *dir, smolvm_error **err);

#endif
