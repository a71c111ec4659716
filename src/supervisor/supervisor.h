/* SPDX-License-Identifier: MIT */
/*
 * smolvm-supervisor: one per running VM (docs/supervisor.md). It owns the VMM as its
 * child, holds the guest's channels, serves any number of clients on <dir>/agent.sock
 * with the agent protocol, keeps the console log bounded and ends the sandbox when its
 * owner dies or its ttl passes. What its files share.
 */
#ifndef SMOLVM_SUPERVISOR_H
#define SMOLVM_SUPERVISOR_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "cgroup.h"
#include "confine.h"
#include "fconn.h"
#include "loop.h"
#include "sv-spec.h"

typedef enum sv_state {
    SV_BOOTING,  /* the VMM runs; the guest is not ready yet */
    SV_READY,    /* clients are served */
    SV_STOPPING, /* power off asked for, or the VMM is gone */
} sv_state;

typedef struct sv_client sv_client;
typedef struct sv_net sv_net;

typedef struct sv {
    sv_loop *loop;
    smolvm_sv_spec *spec;
    sv_state state;
    int status_fd; /* the launcher's pipe until the VMM runs */

    /* The VMM, our child. */
    pid_t vmm_pid;
    uint64_t vmm_start;
    bool vmm_exited;
    int signal_fd;

    /* The guest's channels (our ends). */
    sv_fconn *agent;    /* agent protocol, once connected */
    bool agent_hello;   /* the agent said hello: it accepts work */
    json_t *agent_info; /* its hello */
    int vsock_listen;   /* firecracker: <dir>/vsock.sock_1024, the agent connects here */
    int ctl_fd;         /* hvc0 lines (QEMU) */
    char ctl_buf[512];
    size_t ctl_len;
    int console_rd; /* serial output */
    int console_fd; /* console.log being written */
    uint64_t console_written;
    char console_line[512]; /* firecracker: the console carries the init's milestones */
    size_t console_line_len;
    char last_milestone[80];
    char failure[512];   /* why the guest cannot become ready, "" while it may */
    bool guest_poweroff; /* the guest said it powers off */

    /* Clients. */
    int listen_fd;
    sv_client *clients;
    uint32_t next_agent_stream;

    /* Memory and snapshots (snapshot.c). */
    int mem_fd;               /* QEMU: the guest RAM (a memfd), or -1 */
    bool paused;              /* the guest CPUs are stopped (pause, or a snapshot) */
    uint32_t identity_stream; /* a restored guest's identity request, until answered */
    int64_t identity_sent_ms;

    /* Network "nat" (net.c); NULL otherwise. */
    sv_net *net;

    /* Confinement (confine.c). */
    smolvm_vmm_confine confine;
    smolvm_cgroup_layout *cg_layout;
    smolvm_cgroup *cg;
    int uid_lock;    /* holds confine.uid while we live */
    int lifeline_wr; /* the VMM dies when this closes */
    char *chroot_dir;

    /* Lifetime. */
    int owner_pidfd;
    int64_t ttl_timer;
    bool deleting;
    int64_t t0;
} sv;

/* guest.c: the VMM and the guest's channels. */
int sv_guest_start(sv *s);                    /* spawn the VMM with its channels; reports */
void sv_guest_poweroff(sv *s);                /* ask the guest to power off, however it can hear */
void sv_guest_kill(sv *s);                    /* SIGKILL the VMM and reap it */
void sv_guest_ready(sv *s);                   /* the guest accepts work: tell clients */
void sv_guest_failed(sv *s, const char *why); /* it never will: tell clients, stop */

/* relay.c: clients and the streams between them and the agent. */
int sv_relay_listen(sv *s);
void sv_relay_agent_frame(sv *s, const smolvm_agent_header *h, const uint8_t *p);
void sv_relay_agent_lost(sv *s, const char *why);
void sv_relay_agent_drained(sv *s); /* the guest channel's queue is empty again */
void sv_relay_ready(sv *s);         /* send the hello clients are waiting for */
void sv_relay_goaway_all(sv *s, const char *code, const char *why);
size_t sv_relay_clients(const sv *s);

/* snapshot.c: guest memory, pause, snapshot, a restored guest's session and identity. */
int sv_mem_create(sv *s, smolvm_error **err);                 /* the memfd, sized */
int sv_mem_load(sv *s, const char *path, smolvm_error **err); /* a saved memory into it */
void sv_restored_agent(sv *s); /* the channel of a restored guest is attached */
void sv_identity_send(sv *s);  /* ask the agent to take its fresh identity */
/* A frame of our identity request: handled (true) or not ours (false). */
bool sv_identity_frame(sv *s, const smolvm_agent_header *h, const uint8_t *p);
/* pause, resume, snapshot: 1 done (*reply set), 0 not such an op, < 0 failed. */
int sv_vm_op(sv *s, const char *op, json_t *req, json_t **reply, smolvm_error **err);

/* net.c: network "nat": the DNS filter, the loopback proxy, denied attempts, the
 * periodic repair of the rules. Started before the VMM (failures are reported on the
 * status fd); nothing to do for other networks. */
int sv_net_start(sv *s);
/* The operations "egress", "forward" and "unforward": true when op is one of them,
 * with *reply (the REPLY's payload) or *err set. */
bool sv_net_op(sv *s, const char *op, json_t *req, json_t **reply, smolvm_error **err);

/* confine.c: the VMM's confinement, the supervisor's privileges. */
int sv_confine_prepare(sv *s, smolvm_error **err); /* before the spawn: sets spec->vmm.confine */
int sv_confine_spawned(sv *s, smolvm_error **err); /* the VMM runs: drop what is not needed */
void sv_confine_release(sv *s); /* the VMM is gone (or never came): remove its cgroup */

/* lifetime.c: owner, ttl, the end. */
int sv_lifetime_start(sv *s);
/* No owner any more; set_ttl: replace the ttl (ttl_ms < 0: none) — else it stays. */
void sv_lifetime_keep(sv *s, bool set_ttl, int64_t ttl_ms);
void sv_delete_sandbox(sv *s, const char *why); /* kill, remove everything, exit */
/* The VMM is gone: record how, let the library's reconcile see it, exit. */
void sv_vmm_gone(sv *s, int status);

void sv_log(sv *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
