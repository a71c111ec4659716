/* SPDX-License-Identifier: MIT */
/*
 * The VMM backend interface. A backend starts a VMM process for one VM as a child of
 * the caller (the VM's supervisor, src/supervisor), which owns it: the VMM dies with
 * it (PR_SET_PDEATHSIG) and the supervisor reaps it. The guest's channels are file
 * descriptors the supervisor opened and hands over in the config; everything else a
 * backend keeps is in the VM's directory (its control socket, pidfile), so any process
 * can find the VMM again from the directory.
 */
#ifndef SMOLVM_VMM_H
#define SMOLVM_VMM_H

#include <stdbool.h>
#include <stdint.h>

#include "smolvm.h"

struct smolvm_ctx;

typedef struct smolvm_vmm_hostfwd {
    const char *host_address; /* "127.0.0.1" */
    int host_port;
    int guest_port;
} smolvm_vmm_hostfwd;

/* How the supervisor confines the VMM it spawns (docs/security.md). Prepared by the
 * supervisor while it is still privileged; the backend applies it to the process it
 * starts. Fds are the supervisor's and stay open through the spawn. */
typedef struct smolvm_vmm_confine {
    /* The VMM changes to this uid and gid (the same number) itself, after it opened its
     * files and devices (QEMU -runas): no capabilities left. 0: it keeps the caller's. */
    uint32_t uid;
    const char *chroot_dir;      /* an empty directory the VMM chroots into; NULL: none */
    const int *cgroup_procs_fds; /* joined before exec (proc.h smolvm_spawn_confine) */
    size_t n_cgroup_procs_fds;
    int oom_score_adj; /* SMOLVM_VMM_OOM_SCORE_ADJ */
    int lifeline_fd;   /* read end of the supervisor's lifeline pipe; -1: none */
} smolvm_vmm_confine;

/* Everything a backend needs to boot one VM. Paths are absolute. */
typedef struct smolvm_vmm_config {
    const char *vm_id;
    const char *dir;         /* per-VM dir; the backend creates its sockets/logs here */
    const char *kernel;      /* uncompressed vmlinux (PVH entry) */
    const char *disk;        /* root disk */
    const char *disk_format; /* "qcow2" | "raw" */
    const char *config_disk; /* raw, read-only; see docs/guest-protocol.md */
    const char *cmdline;     /* complete kernel command line */
    unsigned vcpus;
    unsigned memory_mib;
    int accel;                          /* SMOLVM_ACCEL_KVM or SMOLVM_ACCEL_TCG (resolved) */
    int network;                        /* SMOLVM_NET_NONE | USER | NAT (resolved) */
    const char *tap_name;               /* NAT: the TAP device */
    const char *mac;                    /* guest MAC, "52:54:00:xx:xx:xx" */
    const smolvm_vmm_hostfwd *hostfwds; /* USER: index 0 is ssh (guest 22) */
    size_t n_hostfwds;
    /* Appended for backends without qcow2 (firecracker; QEMU ignores them). When set,
     * 'disk' (raw) is attached read-only as the lower layer and this raw ext4 file as
     * the writable upper layer of an overlayfs root (the guest init mounts it, see
     * docs/guest-protocol.md); the backend creates it (sparse, mkfs.ext4) if missing. */
    const char *overlay_disk;
    unsigned overlay_mib; /* size of a created overlay_disk; 0: SMOLVM_VMM_OVERLAY_MIB */
    /* disk = "shared": 'disk' is the base image itself, so the VMM opens it read-only
     * (QEMU readonly=on, firecracker is_read_only) and the guest mounts it "ro": no
     * guest write can reach it. The backend rewrites the command line's "rw". */
    bool disk_read_only;
    /* ---- The guest's channels, open before the spawn (the supervisor's ends are the
     * other sides). The VMM gets them as they are; the backend never closes them. */
    int console_fd; /* serial output: the write end of a pipe */
    int ctl_fd;     /* QEMU: hvc0, one end of a connected stream socket; else -1 */
    int agent_fd;   /* QEMU: the agent's virtio-serial port, likewise; -1: none */
    /* Firecracker: the hybrid vsock's unix socket; the guest's connections to host port
     * P arrive at "<vsock_uds>_P" (the supervisor listens there). NULL: no vsock. */
    const char *vsock_uds;
    /* ---- Guest memory (QEMU; Firecracker ignores both). mem_fd >= 3: the guest's RAM
     * is this memfd (the supervisor's, sized memory_mib), mapped shared, so its holder
     * can save it while the VMM is paused (templates, suspend) without the VMM copying
     * it. mem_file: a template's memory file, mapped privately (copy on write: pages
     * stay shared with the file and every other clone until the guest writes them).
     * Neither (mem_fd 0 or -1, mem_file NULL): anonymous memory. */
    int mem_fd;
    const char *mem_file;
    /* Appended: confinement of the VMM process; NULL: none (backends that do not
     * support it ignore it). */
    const smolvm_vmm_confine *confine;
} smolvm_vmm_config;

/* A saved VM (a template or a suspended VM). */
typedef struct smolvm_vmm_snapshot {
    const char *state_path; /* device state: QEMU's migration stream, Firecracker's file */
    const char *mem_path;   /* Firecracker: the memory file (QEMU: cfg's mem_fd/mem_file) */
    /* QEMU: the guest RAM is shared memory that the caller saves (snapshot) or maps
     * (restore) itself, so the stream leaves it out (x-ignore-shared). false: the RAM
     * travels in the stream. */
    bool shared_mem;
} smolvm_vmm_snapshot;

#define SMOLVM_VMM_OVERLAY_MIB 8192

/* The kernel's first choice when the host runs out of memory: a sandbox, not the
 * process that controls it (which keeps the default 0). */
#define SMOLVM_VMM_OOM_SCORE_ADJ 1000
/* QEMU under TCG keeps translated code in a buffer of this size (-accel tcg,tb-size),
 * which fills over the VM's life and is never given back: bounded so the cgroup's
 * memory limit holds (QEMU's default, 1 GiB, would have to be added to every VM). */
#define SMOLVM_VMM_TCG_TB_MIB 256
/* What QEMU uses beyond guest RAM and the TCG buffer, with room: measured ~70 MiB
 * (heap, thread stacks, the kernel image's mapping, the binary) under TCG with 2 vCPUs
 * after boot, python and 64 MiB of disk writes (docs/security.md). */
#define SMOLVM_VMM_OVERHEAD_MIB 128
/* Threads a VMM may have: QEMU's block I/O pool (64), one per vCPU, its own (~10). */
#define SMOLVM_VMM_PIDS_BASE 96

/* The memory limit (bytes) of the VMM of a VM with this much guest RAM: guest RAM +
 * the TCG code buffer (under TCG) + SMOLVM_VMM_OVERHEAD_MIB. */
uint64_t smolvm_vmm_memory_limit(unsigned memory_mib, int accel);

/* Files a backend keeps in the VM dir (shared so generic code can find them). */
#define SMOLVM_VMM_PIDFILE "vmm.pid"
#define SMOLVM_VMM_CONSOLE_LOG "console.log" /* guest serial console */
#define SMOLVM_VMM_STDERR_LOG "vmm.log"      /* the VMM's own stderr */

typedef struct smolvm_vmm_ops {
    const char *name; /* "qemu" */

    /* Is this backend usable on this host with this accel? Fills a reason if not. */
    int (*available)(int accel, smolvm_error **err);

    /* Spawn the VMM as the caller's child with the channels of cfg connected, and
     * return once the guest CPUs run. pid and its start time are returned for tracking;
     * the pidfile is written before anything else can fail, so a caller killed midway
     * leaves a findable process. On failure nothing of the VMM is left. */
    int (*spawn)(const smolvm_vmm_config *cfg, int64_t *pid, uint64_t *pid_start, int64_t deadline,
                 smolvm_error **err);

    /* Pause / resume the guest CPUs. */
    int (*pause)(const char *dir, int64_t deadline, smolvm_error **err);
    int (*resume)(const char *dir, int64_t deadline, smolvm_error **err);

    /* Ask the VMM itself to exit now (QMP quit / no clean guest shutdown). */
    int (*quit)(const char *dir, int64_t deadline, smolvm_error **err);

    /* Add / remove a user-networking host forward at runtime (USER network only). */
    int (*hostfwd_add)(const char *dir, const smolvm_vmm_hostfwd *fwd, int64_t deadline,
                       smolvm_error **err);
    int (*hostfwd_remove)(const char *dir, const smolvm_vmm_hostfwd *fwd, int64_t deadline,
                          smolvm_error **err);

    /* JSON text describing the running VMM (QMP query-status etc). Caller frees. */
    int (*describe)(const char *dir, int64_t deadline, char **out, smolvm_error **err);

    /* ---- Optional: NULL when the backend has no such thing. */

    /* Ask the guest to power off through the VMM (Firecracker: Ctrl-Alt-Del), for a
     * guest with no agent or control channel to ask; returns once delivered. */
    int (*poweroff)(const char *dir, int64_t deadline, smolvm_error **err);

    /* Pause the VM (if it runs) and write its snapshot; it stays paused (resume() goes
     * on). The state file is created (exclusively) and removed again on failure. */
    int (*snapshot)(const char *dir, const smolvm_vmm_snapshot *snap, int64_t deadline,
                    smolvm_error **err);

    /* Like spawn, but the guest continues from a snapshot instead of booting (so there
     * is no ready message to wait for); it runs when this returns. cfg must describe the
     * same machine (vcpus, memory, devices) as the VM the snapshot was taken of. */
    int (*restore)(const smolvm_vmm_config *cfg, const smolvm_vmm_snapshot *snap, int64_t *pid,
                   uint64_t *pid_start, int64_t deadline, smolvm_error **err);
} smolvm_vmm_ops;

extern const smolvm_vmm_ops smolvm_vmm_qemu;
extern const smolvm_vmm_ops smolvm_vmm_firecracker;

/* The ops of a resolved backend (qemu or firecracker). */
const smolvm_vmm_ops *smolvm_vmm_ops_for(smolvm_backend backend);

#endif
