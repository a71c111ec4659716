/* SPDX-License-Identifier: MIT */
/*
 * libsmolvm: hardware-isolated microVM sandboxes.
 *
 * Conventions (see docs/c-api.md):
 *  - A fallible function returns 0 or a negative SMOLVM_E* code, takes its output
 *    first and a `smolvm_error **err` last. Outputs are set only on success. When err
 *    is not NULL and the call fails, *err receives an error the caller frees with
 *    smolvm_error_free().
 *  - Handles are opaque. Destructors accept NULL and return NULL.
 *  - Option structs start with `unsigned version`; initialise them with the
 *    matching _INIT macro (or smolvm_*_options_init() from a binding). Fields are only
 *    ever appended, and a zeroed field means its default.
 *  - Enums are types with a name table: smolvm_<enum>_to_string() and
 *    smolvm_<enum>_from_string() (the latter returns the enum's _INVALID value).
 *  - The library never prints; it reports through errors and the log callback.
 *  - Thread safety: a handle may be used by one thread at a time. Different handles
 *    may be used from different threads. Many processes may share one state dir.
 */
#ifndef SMOLVM_H
#define SMOLVM_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SMOLVM_VERSION "0.2.0"

#if defined(__GNUC__)
#define SMOLVM_EXTERN __attribute__((visibility("default")))
#else
#define SMOLVM_EXTERN
#endif

/* ---------------------------------------------------------------- errors */

/* Error codes. Stable: smolvm_error_name() gives the string used by the Lua API. */
typedef enum smolvm_code {
    SMOLVM_OK = 0,
    SMOLVM_EINVAL = -1,    /* bad argument or option */
    SMOLVM_ENOENT = -2,    /* no such VM, image, file */
    SMOLVM_EEXIST = -3,    /* already exists (id, host port) */
    SMOLVM_ETIMEDOUT = -4, /* a deadline passed */
    SMOLVM_EVMM = -5,      /* the VMM failed or died */
    SMOLVM_EIO = -6,       /* system call or file failure */
    SMOLVM_ENOMEM = -7,    /* out of memory */
    SMOLVM_EDB = -8,       /* state database unusable (corrupt, foreign, locked) */
    SMOLVM_EPERM = -9,     /* missing privilege */
    SMOLVM_EHOST = -10,    /* the host cannot run sandboxes (no VMM, no image) */
    SMOLVM_ESSH = -11,     /* SSH transport or authentication failure */
    SMOLVM_ENOSPC = -12,   /* a range is exhausted (addresses, ports, ids) */
    SMOLVM_ESTATE = -13,   /* operation not valid in the VM's current state */
    SMOLVM_ENET = -14,     /* network setup failure */
    SMOLVM_EINTR = -15,    /* interrupted by smolvm_interrupt() */
    _SMOLVM_CODE_MIN = -15,
} smolvm_code;

typedef struct smolvm_error smolvm_error;

/* The code (a SMOLVM_E* value). */
SMOLVM_EXTERN int smolvm_error_code(const smolvm_error *e);
/* The message, borrowed until the error is freed. Never NULL. */
SMOLVM_EXTERN const char *smolvm_error_message(const smolvm_error *e);
/* "EINVAL", "ENOENT", ...: a static string for a code. */
SMOLVM_EXTERN const char *smolvm_error_name(int code);
SMOLVM_EXTERN smolvm_error *smolvm_error_free(smolvm_error *e);

/* Interrupt the blocking calls of this process: a wait that is woken by a signal
 * (poll returning EINTR) after this was called gives up with SMOLVM_EINTR; a running
 * command is killed in the guest first. Async-signal-safe: meant for SIGINT/SIGTERM
 * handlers. Call smolvm_interrupt_clear() before cleaning up (stop, delete), or those
 * calls will be interrupted by the next signal too. */
SMOLVM_EXTERN void smolvm_interrupt(void);
SMOLVM_EXTERN void smolvm_interrupt_clear(void);

/* ---------------------------------------------------------------- context */

typedef enum smolvm_log_level {
    SMOLVM_LOG_ERROR = 0,
    SMOLVM_LOG_WARN = 1,
    SMOLVM_LOG_INFO = 2,
    SMOLVM_LOG_DEBUG = 3,
    _SMOLVM_LOG_MAX,
    _SMOLVM_LOG_INVALID = -EINVAL,
} smolvm_log_level;

/* Called for log lines. `msg` is borrowed for the duration of the call. */
typedef void (*smolvm_log_fn)(int level, const char *msg, void *payload);

typedef struct smolvm_ctx smolvm_ctx;

typedef struct smolvm_ctx_options {
    unsigned version;
    /* State directory (database, keys, per-VM dirs). NULL: $SMOLVM_STATE_DIR, else
     * $XDG_STATE_HOME/smolvm, else ~/.local/state/smolvm. */
    const char *state_dir;
    /* Image directory root. NULL: $SMOLVM_IMAGE_DIR, else
     * $XDG_DATA_HOME/smolvm/images, else ~/.local/share/smolvm/images. */
    const char *image_dir;
    smolvm_log_fn log;
    void *log_payload;
    int log_level; /* highest level passed to log; 0 (SMOLVM_LOG_ERROR) .. 3 */
    /* ---- version 2: network policy. Each NULL/0 field falls back to the environment
     * variable named, read once here (secure_getenv), then to the built-in default. */
    const char *nat_cidr;   /* address pool for network "nat"; $SMOLVM_NET_CIDR, "172.16.0.0/16" */
    const char *nat_uplink; /* interface NAT leaves by; $SMOLVM_NET_UPLINK, the default route's */
    const char *nat_dns;    /* the resolver NAT guests' names are asked of (through the VM's
                             * DNS filter); $SMOLVM_DNS, the host's first non-loopback
                             * nameserver */
    /* Host resources a guest may use (0: the default). */
    uint64_t console_max;  /* console log kept per VM; $SMOLVM_CONSOLE_MAX, else 4 MiB */
    uint64_t download_max; /* bytes download/read_file take from a guest; past it they fail
                            * with SMOLVM_ENOSPC and leave no file. $SMOLVM_DOWNLOAD_MAX,
                            * else 1 GiB (read_file: at most SMOLVM_READ_FILE_MAX) */
    /* ---- version 3: host-wide quotas over every VM of the state directory, whatever
     * its status (each can be started at any time). Checked in the transaction that
     * records a new VM, so concurrent creators cannot both pass; past a quota create
     * fails with SMOLVM_ENOSPC naming it. 0: $SMOLVM_MAX_VMS / $SMOLVM_MAX_MEMORY_MIB,
     * else no limit. */
    unsigned max_vms;        /* most VMs */
    uint64_t max_memory_mib; /* most guest memory, summed over the VMs */
} smolvm_ctx_options;
#define SMOLVM_CTX_OPTIONS_VERSION 3
#define SMOLVM_CTX_OPTIONS_INIT                                                                    \
    {                                                                                              \
        SMOLVM_CTX_OPTIONS_VERSION, NULL, NULL, NULL, NULL, SMOLVM_LOG_INFO, NULL, NULL, NULL, 0,  \
            0, 0, 0                                                                                \
    }

/* Fill opts with the defaults of `version` (for bindings, which cannot use the macro).
 * SMOLVM_EINVAL for a version this library does not know. */
SMOLVM_EXTERN int smolvm_ctx_options_init(smolvm_ctx_options *opts, unsigned version);

/* Create a context: resolves and creates the state directory (mode 0700) and opens
 * the state database. `opts` may be NULL. */
SMOLVM_EXTERN int smolvm_ctx_new(smolvm_ctx **out, const smolvm_ctx_options *opts,
                                 smolvm_error **err);
SMOLVM_EXTERN smolvm_ctx *smolvm_ctx_free(smolvm_ctx *ctx);
/* Borrowed until the context is freed. */
SMOLVM_EXTERN const char *smolvm_ctx_state_dir(const smolvm_ctx *ctx);
SMOLVM_EXTERN const char *smolvm_ctx_image_dir(const smolvm_ctx *ctx);
/* Where templates live: $SMOLVM_TEMPLATE_DIR, else $XDG_DATA_HOME/smolvm/templates,
 * else ~/.local/share/smolvm/templates. */
SMOLVM_EXTERN const char *smolvm_ctx_template_dir(const smolvm_ctx *ctx);
SMOLVM_EXTERN const char *smolvm_ctx_db_path(const smolvm_ctx *ctx);

/* What the state directory holds against the quotas, as JSON:
 * {"vms":N, "memory_mib":M, "max_vms":Q, "max_memory_mib":Q} (a quota of 0: none).
 * Caller frees. */
SMOLVM_EXTERN int smolvm_ctx_usage_json(char **out, smolvm_ctx *ctx, smolvm_error **err);

/* Resolve the default state directory without creating anything. Caller frees. */
SMOLVM_EXTERN int smolvm_default_state_dir(char **out, smolvm_error **err);
/* The image directory a context made without options uses: $SMOLVM_IMAGE_DIR, else
 * $XDG_DATA_HOME/smolvm/images, else ~/.local/share/smolvm/images. Nothing is created.
 * Caller frees. */
SMOLVM_EXTERN int smolvm_default_image_dir(char **out, smolvm_error **err);
/* The template directory a context uses (see smolvm_ctx_template_dir), without making
 * a context: nothing is created. Caller frees. */
SMOLVM_EXTERN int smolvm_default_template_dir(char **out, smolvm_error **err);

/* ---------------------------------------------------------------- store */

typedef struct smolvm_store smolvm_store;

/* Open (creating if absent) a state database file. A file that is not a smolvm
 * database, or is damaged, gives SMOLVM_EDB and is left untouched. */
SMOLVM_EXTERN int smolvm_store_open(smolvm_store **out, const char *path, smolvm_error **err);
SMOLVM_EXTERN smolvm_store *smolvm_store_free(smolvm_store *s);
/* Borrowed until the store is freed. */
SMOLVM_EXTERN const char *smolvm_store_path(const smolvm_store *s);
/* JSON array of VM records (see docs/c-api.md for the fields). Caller frees. */
SMOLVM_EXTERN int smolvm_store_list_json(char **out, smolvm_store *s, smolvm_error **err);
/* JSON object for one VM; SMOLVM_ENOENT if there is none. Caller frees. */
SMOLVM_EXTERN int smolvm_store_get_json(char **out, smolvm_store *s, const char *id,
                                        smolvm_error **err);
/* JSON arrays of IP leases / port forwards across all VMs. Caller frees. */
SMOLVM_EXTERN int smolvm_store_leases_json(char **out, smolvm_store *s, smolvm_error **err);
SMOLVM_EXTERN int smolvm_store_forwards_json(char **out, smolvm_store *s, smolvm_error **err);

/* ---------------------------------------------------------------- VMs */

typedef struct smolvm_vm smolvm_vm;

typedef enum smolvm_disk_mode {
    SMOLVM_DISK_ISOLATED = 0, /* "isolated": copy-on-write, writes never reach the image */
    SMOLVM_DISK_SHARED = 1,   /* "shared": the image itself */
    _SMOLVM_DISK_MAX,
    _SMOLVM_DISK_INVALID = -EINVAL,
} smolvm_disk_mode;

typedef enum smolvm_backend {
    SMOLVM_BACKEND_AUTO = 0, /* "auto": firecracker where usable, else qemu */
    SMOLVM_BACKEND_QEMU = 1,
    SMOLVM_BACKEND_FIRECRACKER = 2,
    _SMOLVM_BACKEND_MAX,
    _SMOLVM_BACKEND_INVALID = -EINVAL,
} smolvm_backend;

typedef enum smolvm_accel {
    SMOLVM_ACCEL_AUTO = 0, /* "auto": kvm where usable, else tcg */
    SMOLVM_ACCEL_KVM = 1,
    SMOLVM_ACCEL_TCG = 2,
    _SMOLVM_ACCEL_MAX,
    _SMOLVM_ACCEL_INVALID = -EINVAL,
} smolvm_accel;

typedef enum smolvm_net_mode {
    SMOLVM_NET_AUTO = 0, /* "auto": nat where privileged, else user */
    SMOLVM_NET_NAT = 1,  /* own address, egress by masquerade (TAP + nftables, root) */
    SMOLVM_NET_USER = 2, /* rootless QEMU user networking */
    SMOLVM_NET_NONE = 3, /* no NIC */
    _SMOLVM_NET_MAX,
    _SMOLVM_NET_INVALID = -EINVAL,
} smolvm_net_mode;

/* What a guest may connect to (network "nat"; docs/network.md). */
typedef enum smolvm_egress_mode {
    SMOLVM_EGRESS_DEFAULT = 0,  /* "default": "internet" with network "nat", else "none" */
    SMOLVM_EGRESS_INTERNET = 1, /* public addresses only: private and special ranges and
                                 * every address of the host refused */
    SMOLVM_EGRESS_NONE = 2,     /* no outbound connection at all; forwards still answer */
    SMOLVM_EGRESS_ALLOW = 3,    /* only the allow list: CIDRs, and names resolved by the VM's
                                 * DNS filter (their addresses for the answers' TTL) */
    _SMOLVM_EGRESS_MAX,
    _SMOLVM_EGRESS_INVALID = -EINVAL,
} smolvm_egress_mode;

typedef enum smolvm_transport {
    SMOLVM_TRANSPORT_AUTO = 0,  /* "auto": the agent when the image has it, else ssh */
    SMOLVM_TRANSPORT_AGENT = 1, /* our guest agent (docs/agent-protocol.md) */
    SMOLVM_TRANSPORT_SSH = 2,   /* sshd in the guest (libssh2) */
    _SMOLVM_TRANSPORT_MAX,
    _SMOLVM_TRANSPORT_INVALID = -EINVAL,
} smolvm_transport;

/* Names ("isolated", "qemu", "kvm", "nat", ...): static strings, NULL when out of
 * range. from_string of an unknown name gives the enum's _INVALID value. */
SMOLVM_EXTERN const char *smolvm_disk_mode_to_string(smolvm_disk_mode v);
SMOLVM_EXTERN smolvm_disk_mode smolvm_disk_mode_from_string(const char *s);
SMOLVM_EXTERN const char *smolvm_backend_to_string(smolvm_backend v);
SMOLVM_EXTERN smolvm_backend smolvm_backend_from_string(const char *s);
SMOLVM_EXTERN const char *smolvm_accel_to_string(smolvm_accel v);
SMOLVM_EXTERN smolvm_accel smolvm_accel_from_string(const char *s);
SMOLVM_EXTERN const char *smolvm_net_mode_to_string(smolvm_net_mode v);
SMOLVM_EXTERN smolvm_net_mode smolvm_net_mode_from_string(const char *s);
SMOLVM_EXTERN const char *smolvm_transport_to_string(smolvm_transport v);
SMOLVM_EXTERN smolvm_transport smolvm_transport_from_string(const char *s);
SMOLVM_EXTERN const char *smolvm_egress_mode_to_string(smolvm_egress_mode v);
SMOLVM_EXTERN smolvm_egress_mode smolvm_egress_mode_from_string(const char *s);

#define SMOLVM_VCPUS_MIN 1
#define SMOLVM_VCPUS_MAX 32
#define SMOLVM_MEMORY_MIN 128
#define SMOLVM_MEMORY_MAX 16384
#define SMOLVM_VCPUS_DEFAULT 2
#define SMOLVM_MEMORY_DEFAULT 512
#define SMOLVM_ENV_MAX 256        /* entries in env */
#define SMOLVM_ENV_ENTRY_MAX 4096 /* bytes of one "NAME=value" */
/* bytes of all of env, each entry counted as its length + 5 (its config disk line);
 * values are printable: no byte below 0x20, no 0x7f (what the guest's init takes) */
#define SMOLVM_ENV_TOTAL_MAX (48 * 1024)
#define SMOLVM_FORWARDS_MAX 64
#define SMOLVM_ID_MAX 63                         /* [a-z0-9][a-z0-9_-]{0,62} */
#define SMOLVM_TTL_MAX (30LL * 24 * 3600 * 1000) /* ms: 30 days */
#define SMOLVM_LABELS_MAX 64
#define SMOLVM_LABEL_MAX 256        /* bytes of one "key=value" */
#define SMOLVM_EGRESS_ALLOW_MAX 256 /* entries in an allow list */
#define SMOLVM_EGRESS_ENTRY_MAX 253 /* bytes of one entry (a domain name's limit) */
#define SMOLVM_EVENTS_MAX 1000      /* events smolvm_vm_events_json returns at most */

/* An egress policy. allow (mode ALLOW only, else NULL) is a NULL-terminated list of
 * entries, each one of: an IPv4 address or CIDR ("198.51.100.0/24"), a domain name
 * ("pypi.org": that name), "*.suffix" (every name below suffix, not suffix itself) or
 * "*" (every name). Names are matched case-insensitively and resolved by the VM's DNS
 * filter; their addresses are allowed for the answer's TTL (at least 30 s), never
 * when private or special (allow those by CIDR). Strings are borrowed for the call. */
typedef struct smolvm_egress {
    smolvm_egress_mode mode;
    const char *const *allow;
} smolvm_egress;

/* Is entry a valid allow-list entry (see smolvm_egress)? 0, or SMOLVM_EINVAL with a
 * message saying what is wrong ("'10.0.0.1/8' has host bits set (did you mean
 * '10.0.0.0/8'?)"), without a field name: callers add theirs. */
SMOLVM_EXTERN int smolvm_egress_entry_check(const char *entry, smolvm_error **err);

typedef struct smolvm_forward {
    const char *host_address; /* NULL: "127.0.0.1" */
    int host_port;            /* 1..65535 */
    int guest_port;           /* 1..65535 */
} smolvm_forward;

typedef struct smolvm_vm_options {
    unsigned version;
    const char *id;          /* NULL: "vm-" + 8 hex chars; else [a-z0-9][a-z0-9_-]{0,62} */
    unsigned vcpus;          /* 1..32; 0: 2 */
    unsigned memory_mib;     /* 128..16384; 0: 512 */
    smolvm_disk_mode disk;   /* default isolated */
    const char *image;       /* image name under the image dir; NULL: "default" */
    smolvm_backend backend;  /* default auto */
    smolvm_accel accel;      /* default auto */
    smolvm_net_mode network; /* default auto */
    const char *const *env;  /* "KEY=value" strings, NULL-terminated; applied to every command */
    const smolvm_forward *forwards;
    size_t n_forwards;
    /* ---- version 2 */
    smolvm_transport transport; /* default auto */
    int64_t ttl_ms;             /* 0: none; else the VM is deleted this long after create */
    const char *const *labels;  /* "key=value" strings, NULL-terminated; for callers to find
                                 * their VMs by (shown in info) */
    int ephemeral;              /* 1: deleted when the creating process exits, even by
                                 * SIGKILL (smolvm_vm_keep undoes it) */
    smolvm_egress egress;       /* default: "internet" with network "nat", else "none";
                                 * network "user" takes only "none" (QEMU's user networking
                                 * cannot enforce a policy) */
    /* ---- version 3 */
    const char *template_name; /* NULL: boot the image; else start as a clone of this
                                * template (its image, vcpus and memory; see
                                * docs/templates.md) */
} smolvm_vm_options;
#define SMOLVM_VM_OPTIONS_VERSION 3
#define SMOLVM_VM_OPTIONS_INIT                                                                     \
    {                                                                                              \
        SMOLVM_VM_OPTIONS_VERSION, NULL, 0, 0, SMOLVM_DISK_ISOLATED, NULL, SMOLVM_BACKEND_AUTO,    \
            SMOLVM_ACCEL_AUTO, SMOLVM_NET_AUTO, NULL, NULL, 0, SMOLVM_TRANSPORT_AUTO, 0, NULL, 0,  \
            {SMOLVM_EGRESS_DEFAULT, NULL}, NULL                                                    \
    }

/* Fill opts with the defaults of `version`; SMOLVM_EINVAL for an unknown version. */
SMOLVM_EXTERN int smolvm_vm_options_init(smolvm_vm_options *opts, unsigned version);

/* Create a VM: validates options, records it in the store, prepares its directory,
 * disk, keys and network leases. Nothing runs yet. On failure nothing is left behind.
 * The VM handle borrows ctx, which must outlive it. */
SMOLVM_EXTERN int smolvm_vm_create(smolvm_vm **out, smolvm_ctx *ctx, const smolvm_vm_options *opts,
                                   smolvm_error **err);
/* Find an existing VM by id (after reconciling its state). SMOLVM_ENOENT if none. */
SMOLVM_EXTERN int smolvm_vm_open(smolvm_vm **out, smolvm_ctx *ctx, const char *id,
                                 smolvm_error **err);
/* Free the handle (closes its SSH session). The VM itself is untouched. */
SMOLVM_EXTERN smolvm_vm *smolvm_vm_free(smolvm_vm *vm);

/* Boot and wait until commands can run (guest ready + SSH session up). */
SMOLVM_EXTERN int smolvm_vm_start(smolvm_vm *vm, int timeout_ms, smolvm_error **err);
/* smolvm_vm_start in two halves, so several VMs boot at once: begin starts the VMM
 * and returns; finish waits (until timeout_ms after begin) for the guest and opens
 * the SSH session. The VM is locked against other processes in between. Freeing the
 * handle between the two abandons the start (the VMM is killed by the next
 * reconcile). Typical: begin on every VM, then finish on every VM. */
SMOLVM_EXTERN int smolvm_vm_start_begin(smolvm_vm *vm, int timeout_ms, smolvm_error **err);
SMOLVM_EXTERN int smolvm_vm_start_finish(smolvm_vm *vm, smolvm_error **err);
/* The end of a start whose readiness the caller waited for itself, instead of with
 * smolvm_vm_start_finish: after smolvm_vm_start_begin, the caller connects to the VM's
 * supervisor (<dir>/agent.sock, docs/agent-protocol.md) with its own event loop (an
 * nginx cosocket, say) and waits for the supervisor's hello.
 * confirm: the hello came; the VM is recorded running and its lock released (no SSH
 * session is opened: the SSH transport connects at its first command).
 * abort: it did not (a GOAWAY, the caller's deadline): `code` (a SMOLVM_E* code;
 * anything else is SMOLVM_EVMM) and `reason` become the error, the VMM is killed and
 * the VM marked "error" as a failed start_finish would. Returns `code`.
 * Both are SMOLVM_ESTATE when no start is pending. They block for store writes (and,
 * abort, for the VMM's exit, at most 2 s). */
SMOLVM_EXTERN int smolvm_vm_start_confirm(smolvm_vm *vm, smolvm_error **err);
SMOLVM_EXTERN int smolvm_vm_start_abort(smolvm_vm *vm, int code, const char *reason,
                                        smolvm_error **err);
/* Clean guest power-off, then VMM quit, then kill, each bounded by the timeout. */
SMOLVM_EXTERN int smolvm_vm_stop(smolvm_vm *vm, int timeout_ms, smolvm_error **err);
/* Stop if running, then remove disk, leases, forwards, rules and the record. The handle
 * stays valid (status "deleted") and must still be freed. */
SMOLVM_EXTERN int smolvm_vm_delete(smolvm_vm *vm, smolvm_error **err);
/* An ephemeral VM no longer dies with the process that made it (its ttl still holds). */
SMOLVM_EXTERN int smolvm_vm_keep(smolvm_vm *vm, smolvm_error **err);

/* ---- Pause, templates, fork, suspend (docs/templates.md). QEMU VMs with the agent. */

/* Stop the guest's CPUs (status "paused"; its VMM uses no CPU); commands fail with
 * SMOLVM_ESTATE until smolvm_vm_resume. Pausing a paused VM does nothing. */
SMOLVM_EXTERN int smolvm_vm_pause(smolvm_vm *vm, smolvm_error **err);
SMOLVM_EXTERN int smolvm_vm_resume(smolvm_vm *vm, smolvm_error **err);
/* Freeze the running VM's memory, devices and disk into template `name` (it goes on
 * running). SMOLVM_EEXIST if the template exists. */
SMOLVM_EXTERN int smolvm_vm_snapshot(smolvm_vm *vm, const char *name, smolvm_error **err);
/* count clones of the running VM, started (each runs commands when this returns). The
 * VM goes on running. *out: an array of count handles; free each, then the array. */
SMOLVM_EXTERN int smolvm_vm_fork(smolvm_vm ***out, smolvm_vm *vm, size_t count, int timeout_ms,
                                 smolvm_error **err);
/* Write the VM's memory to disk and end its VMM (status "suspended"; its address and
 * forwards are kept); smolvm_vm_start resumes it where it was. */
SMOLVM_EXTERN int smolvm_vm_suspend(smolvm_vm *vm, smolvm_error **err);

typedef struct smolvm_template_info {
    char *name;
    char *image;
    unsigned vcpus;
    unsigned memory_mib;
    int64_t created_at;  /* wall clock, ms */
    char *source_vm;     /* the VM it was made from */
    int ephemeral;       /* a fork's: removed with its last clone */
    uint64_t disk_bytes; /* its files on disk */
    char *stale;         /* NULL, or why clones of it are refused now */
} smolvm_template_info;

/* Every template (sorted by name). Free with smolvm_templates_free. */
SMOLVM_EXTERN int smolvm_templates(smolvm_template_info **out, size_t *n, smolvm_ctx *ctx,
                                   smolvm_error **err);
SMOLVM_EXTERN void smolvm_templates_free(smolvm_template_info *list, size_t n);
/* Remove a template; refused (SMOLVM_ESTATE, its users named) while a VM or another
 * template is made from it. */
SMOLVM_EXTERN int smolvm_template_delete(smolvm_ctx *ctx, const char *name, smolvm_error **err);

/* Borrowed until the handle is freed. */
SMOLVM_EXTERN const char *smolvm_vm_id(const smolvm_vm *vm);
/* Current status after reconciling: "created" | "running" | "stopped" | "error" |
 * "deleted". Static string. */
SMOLVM_EXTERN const char *smolvm_vm_status(smolvm_vm *vm);
/* JSON object describing the VM (fields in docs/c-api.md). Caller frees. */
SMOLVM_EXTERN int smolvm_vm_info_json(char **out, smolvm_vm *vm, smolvm_error **err);
/* JSON array of info objects for every VM in the store (reconciled). Caller frees. */
SMOLVM_EXTERN int smolvm_vm_list_json(char **out, smolvm_ctx *ctx, smolvm_error **err);

/* Reconcile every VM in the store with reality (dead VMMs, leftovers). Returns the
 * number of VMs whose state changed in *changed (may be NULL). */
SMOLVM_EXTERN int smolvm_reconcile(int *changed, smolvm_ctx *ctx, smolvm_error **err);

/* ---------------------------------------------------------------- commands */

#define SMOLVM_OUTPUT_LIMIT_DEFAULT (16u * 1024 * 1024) /* per stream */

typedef struct smolvm_run_options {
    unsigned version;
    int timeout_ms;         /* 0: no timeout beyond the library's default (1 hour) */
    const char *const *env; /* "KEY=value", NULL-terminated, added to the VM's env */
    const char *cwd;        /* NULL: root's home */
    const char *stdin_data; /* NULL: empty stdin */
    size_t stdin_len;
    size_t output_limit; /* bytes kept per stream; 0: SMOLVM_OUTPUT_LIMIT_DEFAULT */
    /* ---- version 2 */
    /* Called with each chunk of output as it arrives (stream 1 stdout, 2 stderr), before
     * the command ends; data is borrowed for the call. Agent transport only (over SSH
     * the output arrives whole, and is passed once at the end). */
    void (*on_output)(int stream, const char *data, size_t len, void *payload);
    void *payload;
} smolvm_run_options;
#define SMOLVM_RUN_OPTIONS_VERSION 2
#define SMOLVM_RUN_OPTIONS_INIT                                                                    \
    {                                                                                              \
        SMOLVM_RUN_OPTIONS_VERSION, 0, NULL, NULL, NULL, 0, 0, NULL, NULL                          \
    }

/* Fill opts with the defaults of `version`; SMOLVM_EINVAL for an unknown version. */
SMOLVM_EXTERN int smolvm_run_options_init(smolvm_run_options *opts, unsigned version);

/* What a command did. Allocated by the library, freed with smolvm_run_result_free. */
typedef struct smolvm_run_result {
    int exit_code;   /* -1 when killed by a signal */
    char signal[16]; /* "KILL", "TERM", ... when killed by a signal, else "" */
    char *out;       /* stdout, NUL-terminated (may contain NULs: use out_len) */
    size_t out_len;
    char *err; /* stderr */
    size_t err_len;
    int truncated; /* 1 if either stream exceeded output_limit and was cut */
    int64_t duration_ms;
} smolvm_run_result;

/* Run `cmd` with /bin/sh -c in the guest. A command that exits non-zero is a success
 * of this call (see exit_code). Past the timeout the command is killed in the guest
 * and SMOLVM_ETIMEDOUT returned. */
SMOLVM_EXTERN int smolvm_vm_run(smolvm_run_result **out, smolvm_vm *vm, const char *cmd,
                                const smolvm_run_options *opts, smolvm_error **err);
SMOLVM_EXTERN smolvm_run_result *smolvm_run_result_free(smolvm_run_result *r);

/* ---------------------------------------------------------------- processes
 * Long-running processes with streamed input and output (agent transport). A process
 * keeps running when its handle is freed if it was spawned with `keep`, and any process
 * can follow it again with smolvm_vm_attach. */

typedef struct smolvm_proc smolvm_proc;

typedef struct smolvm_spawn_options {
    unsigned version;
    const char *const *argv; /* NULL: run the cmd argument with /bin/sh -c */
    const char *const *env;  /* "KEY=value", added to the VM's env */
    const char *cwd;         /* NULL: root's home */
    int stdin_pipe;          /* 1: smolvm_proc_write feeds stdin; 0: /dev/null */
    unsigned pty_rows;       /* both non-zero: run on a terminal of this size */
    unsigned pty_cols;
    int timeout_ms; /* 0: none; past it the process group is killed */
    int keep;       /* 1: the process survives the handle (attach later) */
} smolvm_spawn_options;
#define SMOLVM_SPAWN_OPTIONS_VERSION 1
#define SMOLVM_SPAWN_OPTIONS_INIT                                                                  \
    {                                                                                              \
        SMOLVM_SPAWN_OPTIONS_VERSION, NULL, NULL, NULL, 0, 0, 0, 0, 0                              \
    }
SMOLVM_EXTERN int smolvm_spawn_options_init(smolvm_spawn_options *opts, unsigned version);

/* Start a process and return once it runs (its pid is known). cmd is ignored when
 * opts->argv is set. */
SMOLVM_EXTERN int smolvm_vm_spawn(smolvm_proc **out, smolvm_vm *vm, const char *cmd,
                                  const smolvm_spawn_options *opts, smolvm_error **err);
/* Follow a process started earlier (by any client): its kept output first (at most
 * 64 KiB; what was dropped before is lost), then live output. */
SMOLVM_EXTERN int smolvm_vm_attach(smolvm_proc **out, smolvm_vm *vm, int pid, smolvm_error **err);
/* The guest's processes as a JSON array of {pid, cmd, running, exit_code, signal,
 * started_ms}. Caller frees. */
SMOLVM_EXTERN int smolvm_vm_processes_json(char **out, smolvm_vm *vm, smolvm_error **err);

/* The pid in the guest (also its process group). */
SMOLVM_EXTERN int smolvm_proc_pid(const smolvm_proc *p);
/* The next chunk of output: 0 with *stream (1 stdout, 2 stderr), *data and *len (borrowed
 * until the next call on p); 1 when both streams have ended; SMOLVM_ETIMEDOUT when
 * nothing came within timeout_ms (< 0: the library's limit, an hour). */
SMOLVM_EXTERN int smolvm_proc_read(smolvm_proc *p, int *stream, const char **data, size_t *len,
                                   int timeout_ms, smolvm_error **err);
/* Write to stdin (spawned with stdin_pipe or a pty); waits while the guest's window is
 * full, at most timeout_ms. */
SMOLVM_EXTERN int smolvm_proc_write(smolvm_proc *p, const void *data, size_t len, int timeout_ms,
                                    smolvm_error **err);
SMOLVM_EXTERN int smolvm_proc_close_stdin(smolvm_proc *p, smolvm_error **err);
/* Send a signal ("TERM", "KILL", "INT", ...) to the process group. */
SMOLVM_EXTERN int smolvm_proc_kill(smolvm_proc *p, const char *signal, smolvm_error **err);
SMOLVM_EXTERN int smolvm_proc_resize(smolvm_proc *p, unsigned rows, unsigned cols,
                                     smolvm_error **err);

typedef struct smolvm_exit {
    int exit_code;   /* -1 when killed by a signal */
    char signal[16]; /* "KILL", ... or "" */
    int timed_out;
    int64_t duration_ms;
} smolvm_exit;

/* Wait for the end (output not read yet is discarded; the guest keeps the last
 * 64 KiB for attach). */
SMOLVM_EXTERN int smolvm_proc_wait(smolvm_exit *out, smolvm_proc *p, int timeout_ms,
                                   smolvm_error **err);
/* Free the handle: a process spawned without keep is killed; with keep, or attached,
 * it runs on. */
SMOLVM_EXTERN smolvm_proc *smolvm_proc_free(smolvm_proc *p);
/* For an event loop that waits on several processes (or on a process and a terminal)
 * at once: the descriptor that becomes readable when output, an exit or an error may
 * have arrived for p, or -1 when p has no connection. Borrowed: valid until p is freed;
 * do not read it or change its flags. Output already received is held by p and makes
 * no descriptor readable, so read with smolvm_proc_read(timeout_ms = 0) until it
 * returns SMOLVM_ETIMEDOUT before each wait on the descriptor. The connection is
 * shared by every handle made from the same smolvm_vm. */
SMOLVM_EXTERN int smolvm_proc_fd(const smolvm_proc *p);

/* ---------------------------------------------------------------- files */

#define SMOLVM_READ_FILE_MAX (256u * 1024 * 1024)

/* Copy a host file into the guest (parent dirs created, mode preserved). */
SMOLVM_EXTERN int smolvm_vm_upload(smolvm_vm *vm, const char *local, const char *remote,
                                   smolvm_error **err);
/* Copy a guest file to the host (mode preserved). */
SMOLVM_EXTERN int smolvm_vm_download(smolvm_vm *vm, const char *remote, const char *local,
                                     smolvm_error **err);
/* Write bytes to a guest file (parent dirs created, mode 0644). */
SMOLVM_EXTERN int smolvm_vm_write_file(smolvm_vm *vm, const char *remote, const void *data,
                                       size_t len, smolvm_error **err);
/* Read a guest file (at most SMOLVM_READ_FILE_MAX). *data is NUL-terminated; caller frees. */
SMOLVM_EXTERN int smolvm_vm_read_file(char **data, size_t *len, smolvm_vm *vm, const char *remote,
                                      smolvm_error **err);

/* ---------------------------------------------------------------- forwards */

/* Forward host_address:host_port (NULL address: 127.0.0.1) to guest_port. */
SMOLVM_EXTERN int smolvm_vm_forward(smolvm_vm *vm, const char *host_address, int host_port,
                                    int guest_port, smolvm_error **err);
SMOLVM_EXTERN int smolvm_vm_unforward(smolvm_vm *vm, int host_port, smolvm_error **err);

/* ---------------------------------------------------------------- images */

/* Guest images live in the context's image directory, one directory per name
 * (docs/image.md); scripts/build-image.sh builds them. Image names are VM-id shaped,
 * [a-z0-9][a-z0-9_-]{0,62}, and "templates" is reserved. */
#define SMOLVM_IMAGE_PACKAGES_MAX 256                    /* extra Debian packages of one image */
#define SMOLVM_PACKAGE_NAME_MAX 128                      /* bytes of one package name */
#define SMOLVM_IMAGE_BUILD_TIMEOUT_DEFAULT (3600 * 1000) /* ms; a kernel build is minutes */

/* JSON array of the images in the image directory, sorted by name: {name, dir,
 * complete, built, size, agent, extra_packages, kernel_version} (docs/image.md). A
 * directory there counts when it holds a manifest or an image file; an image being
 * built for the first time is not listed until it is complete. Caller frees. */
SMOLVM_EXTERN int smolvm_image_list_json(char **out, smolvm_ctx *ctx, smolvm_error **err);

typedef struct smolvm_image_build_options {
    unsigned version;
    /* Debian packages added to the default set, NULL-terminated (NULL: none); at most
     * SMOLVM_IMAGE_PACKAGES_MAX names of [a-z0-9][a-z0-9+.-]+. Order and duplicates do
     * not matter: the set is part of the image's definition. */
    const char *const *packages;
    int force;      /* 1: build even when up to date */
    int dry_run;    /* 1: build nothing, only say whether a build is due */
    int timeout_ms; /* 0: SMOLVM_IMAGE_BUILD_TIMEOUT_DEFAULT; the build is killed past it */
    /* build-image.sh to run. NULL: the source tree's when this library is the build
     * tree's, else the installed one ($datadir/smolvm/scripts). */
    const char *script;
    /* Called with each line the build prints (progress, then errors), without its
     * newline, control characters as spaces, at most 4 KiB; borrowed for the call.
     * Return non-zero to cancel: the build is killed and SMOLVM_EINTR returned. */
    int (*on_line)(const char *line, void *payload);
    void *payload;
} smolvm_image_build_options;
#define SMOLVM_IMAGE_BUILD_OPTIONS_VERSION 1
#define SMOLVM_IMAGE_BUILD_OPTIONS_INIT                                                            \
    {                                                                                              \
        SMOLVM_IMAGE_BUILD_OPTIONS_VERSION, NULL, 0, 0, 0, NULL, NULL, NULL                        \
    }

/* Fill opts with the defaults of `version`; SMOLVM_EINVAL for an unknown version. */
SMOLVM_EXTERN int smolvm_image_build_options_init(smolvm_image_build_options *opts,
                                                  unsigned version);

/* Build image `name` with build-image.sh into the context's image directory, unless it
 * is up to date (same definition, same build scripts, files intact). ctx may be NULL:
 * the default image directory ($SMOLVM_IMAGE_DIR, ...), and no state database is
 * opened or created (what a dry run that must leave no trace needs). Blocks until the
 * build ends (its own process group, killed on timeout, cancel or smolvm_interrupt:
 * SMOLVM_ETIMEDOUT / SMOLVM_EINTR). *built (may be NULL): 1 when a new image was put in
 * place, 0 when it was up to date; with dry_run, 1 when a build is due. Building needs
 * root (SMOLVM_EPERM, with the command to run as a hint); being up to date does not.
 * Bad name or packages: SMOLVM_EINVAL; a tool missing: SMOLVM_EHOST; the build
 * failing: SMOLVM_EIO with its last line. */
SMOLVM_EXTERN int smolvm_image_build(int *built, smolvm_ctx *ctx, const char *name,
                                     const smolvm_image_build_options *opts, smolvm_error **err);

typedef struct smolvm_image_remove_options {
    unsigned version;
    int force; /* 1: the image named "default" may go too */
    /* Where templates live (each <name>/template.json names its image in "image").
     * NULL: $SMOLVM_TEMPLATE_DIR, else $XDG_DATA_HOME/smolvm/templates, else
     * ~/.local/share/smolvm/templates. */
    const char *template_dir;
} smolvm_image_remove_options;
#define SMOLVM_IMAGE_REMOVE_OPTIONS_VERSION 1
#define SMOLVM_IMAGE_REMOVE_OPTIONS_INIT                                                           \
    {                                                                                              \
        SMOLVM_IMAGE_REMOVE_OPTIONS_VERSION, 0, NULL                                               \
    }

/* Fill opts with the defaults of `version`; SMOLVM_EINVAL for an unknown version. */
SMOLVM_EXTERN int smolvm_image_remove_options_init(smolvm_image_remove_options *opts,
                                                   unsigned version);

/* Delete image `name` (its directory). Refused with SMOLVM_ESTATE, naming them, while
 * a VM of the context's store (any status: its disk is backed by the image) or a
 * template uses it, or while a build of it runs; "default" is refused without force
 * (SMOLVM_EINVAL). SMOLVM_ENOENT when there is no such image. The directory is first
 * renamed aside, so the image is gone at once even if removing its files fails. */
SMOLVM_EXTERN int smolvm_image_remove(smolvm_ctx *ctx, const char *name,
                                      const smolvm_image_remove_options *opts, smolvm_error **err);

/* ---------------------------------------------------------------- egress */

/* Change the VM's egress policy (network "nat"; "user" and "none" take only mode NONE).
 * On a running VM the change takes effect at once, without restarting the guest: the
 * DNS filter's names first, then the rules in one nftables batch; connections the new
 * policy refuses stop passing. The policy is stored in the VM's configuration, so the
 * next start uses it. Blocks for at most a few seconds (the supervisor's answer). */
SMOLVM_EXTERN int smolvm_vm_set_egress(smolvm_vm *vm, const smolvm_egress *policy,
                                       smolvm_error **err);

/* The VM's events, oldest first, as a JSON array (at most the newest SMOLVM_EVENTS_MAX).
 * kind NULL: every kind. Each element has "time" (wall clock, ms since the epoch) and
 * "kind"; "egress-denied" events have "dst" (IPv4 address), "port" (0 when the
 * protocol has none), "protocol" ("tcp", "udp", "icmp" or a number) and, for a DNS
 * query the filter refused, "name"; other kinds have "detail" when they carry one.
 * Denied attempts are recorded by the VM's supervisor, at most 10 per second per VM
 * (burst 20) and the newest 1000 per VM kept. Caller frees. */
SMOLVM_EXTERN int smolvm_vm_events_json(char **out, smolvm_vm *vm, const char *kind,
                                        smolvm_error **err);

/* ---------------------------------------------------------------- host */

/* Host checks as a JSON array of {name, ok, detail, hint}. Caller frees. */
SMOLVM_EXTERN int smolvm_doctor_json(char **out, smolvm_ctx *ctx, smolvm_error **err);

/* Download the pinned firecracker release for this machine with libcurl, verify its
 * sha256 (a mismatch deletes the download and says so), and install firecracker and
 * jailer into dest_dir (NULL: $XDG_DATA_HOME/smolvm/bin, where the backend looks).
 * progress (may be NULL) is called as bytes arrive (total 0 when unknown). *path: the
 * installed binary; caller frees. Needs the network; blocks up to 5 minutes. */
SMOLVM_EXTERN int smolvm_firecracker_download(char **path, const char *dest_dir,
                                              void (*progress)(uint64_t done, uint64_t total,
                                                               void *payload),
                                              void *payload, smolvm_error **err);

#ifdef __cplusplus
}
#endif
#endif
