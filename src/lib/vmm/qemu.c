/* SPDX-License-Identifier: MIT */
/*
 * The QEMU backend: qemu-system-x86_64 with the microvm machine, driven over QMP.
 * The command line and the reasons for each option are in docs/vmm.md.
 */
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <linux/capability.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "error.h"
#include "proc.h"
#include "sock.h"
#include "agent-proto.h"
#include "vmm/qmp.h"
#include "vmm/vmm-internal.h"
#include "vmm/vmm.h"

#define QEMU_BINARY "qemu-system-x86_64"
#define QMP_SOCK "qmp.sock"
#define NETDEV_ID "n0"
#define QEMU_CONSOLE_FDSET "1"
#define QEMU_DISK_FDSET "2"
#define MEM_ID "ram"
#define STATE_FDNAME "smolvm-state"
/* Migrations here are local file copies: QEMU's default bandwidth cap (for networks)
 * would only slow them down. */
#define MIGRATE_BANDWIDTH (1LL << 40)
#define LOG_TAIL_LINES 4
#define LOG_TAIL_MAX 1024
/* Killing a VMM that failed to start gets its own short deadline: the caller's may
 * already have passed, and SIGKILL takes milliseconds. */
#define CLEANUP_KILL_MS 3000

/* ---------------------------------------------------------------- argv */

typedef struct argv_buf {
    char **v;
    size_t n, cap;
    int oom;
} argv_buf;

static void argv_buf_free(argv_buf *a)
{
    size_t i;

    for (i = 0; i < a->n; i++)
        free(a->v[i]);
    free(a->v);
    a->v = NULL;
    a->n = a->cap = 0;
}

static void argv_push_owned(argv_buf *a, char *s)
{
    if (!s || a->oom) {
        a->oom = 1;
        free(s);
        return;
    }
    if (a->n + 2 > a->cap) {
        size_t ncap = a->cap ? a->cap * 2 : 64;
        char **nv = realloc(a->v, ncap * sizeof(*nv));

        if (!nv) {
            a->oom = 1;
            free(s);
            return;
        }
        a->v = nv;
        a->cap = ncap;
    }
    a->v[a->n++] = s;
    a->v[a->n] = NULL;
}

#define argv_push(a, s) argv_push_owned((a), strdup(s))
#define argv_pushf(a, ...) argv_push_owned((a), smolvm_strdupf(__VA_ARGS__))

/* QEMU option values (key=value,key=value) take a literal comma as ",,". */
static char *qemu_escape(const char *s)
{
    size_t n = 0;
    const char *p;
    char *out, *o;

    for (p = s; *p; p++)
        n += *p == ',' ? 2 : 1;
    out = malloc(n + 1);
    if (!out)
        return NULL;
    for (p = s, o = out; *p; p++) {
        *o++ = *p;
        if (*p == ',')
            *o++ = ',';
    }
    *o = '\0';
    return out;
}

/* ---------------------------------------------------------------- validation */

/* Forwards end up inside QEMU option strings and HMP commands: only an IPv4 literal
 * and numeric ports may get there. */
static int check_fwd(const smolvm_vmm_hostfwd *f, smolvm_error **err)
{
    struct in_addr a;
    const char *addr = f->host_address ? f->host_address : "127.0.0.1";

    if (strlen(addr) > 15 || inet_pton(AF_INET, addr, &a) != 1)
        return smolvm_err(err, SMOLVM_EINVAL, "forward: host address '%s' is not an IPv4 address",
                          addr);
    if (f->host_port < 1 || f->host_port > 65535)
        return smolvm_err(err, SMOLVM_EINVAL, "forward: host port %d out of range 1..65535",
                          f->host_port);
    if (f->guest_port < 1 || f->guest_port > 65535)
        return smolvm_err(err, SMOLVM_EINVAL, "forward: guest port %d out of range 1..65535",
                          f->guest_port);
    return 0;
}

static int check_config(const smolvm_vmm_config *c, smolvm_error **err)
{
    size_t i;
    int r;

    if ((r = smolvm_vmm_check_machine(c, err)) < 0)
        return r;
    if (!c->disk_format || (strcmp(c->disk_format, "qcow2") && strcmp(c->disk_format, "raw")))
        return smolvm_err(err, SMOLVM_EINVAL, "vmm: disk format '%s' is not 'qcow2' or 'raw'",
                          c->disk_format ? c->disk_format : "(null)");
    if (c->accel != SMOLVM_ACCEL_KVM && c->accel != SMOLVM_ACCEL_TCG)
        return smolvm_err(err, SMOLVM_EINVAL, "vmm: accel must be resolved to kvm or tcg");
    if (strlen(c->cmdline) > 4096)
        return smolvm_err(err, SMOLVM_EINVAL, "vmm: kernel command line longer than 4096");
    if (c->console_fd < 3 || c->ctl_fd < 3 || (c->agent_fd >= 0 && c->agent_fd < 3))
        return smolvm_err(err, SMOLVM_EINVAL, "vmm: the console and control channels are required");
    if ((c->mem_fd >= 3 && c->mem_file) || (c->mem_file && c->mem_file[0] != '/'))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "vmm: guest memory is a memfd or an absolute memory file, not both");
    if (c->confine && ((c->confine->chroot_dir && c->confine->chroot_dir[0] != '/') ||
                       (c->confine->lifeline_fd >= 0 && c->confine->lifeline_fd < 3) ||
                       c->confine->oom_score_adj < -1000 || c->confine->oom_score_adj > 1000))
        return smolvm_err(err, SMOLVM_EINVAL, "vmm: invalid confinement");
    switch (c->network) {
    case SMOLVM_NET_NONE: break;
    case SMOLVM_NET_USER:
        if (c->n_hostfwds > SMOLVM_FORWARDS_MAX + 1)
            return smolvm_err(err, SMOLVM_EINVAL, "vmm: too many forwards (%zu)", c->n_hostfwds);
        for (i = 0; i < c->n_hostfwds; i++)
            if ((r = check_fwd(&c->hostfwds[i], err)) < 0)
                return r;
        if (c->mac && !smolvm_vmm_valid_mac(c->mac))
            return smolvm_err(err, SMOLVM_EINVAL, "vmm: invalid mac '%s'", c->mac);
        break;
    case SMOLVM_NET_NAT:
        if (!smolvm_vmm_valid_ifname(c->tap_name))
            return smolvm_err(err, SMOLVM_EINVAL, "vmm: invalid tap name '%s'",
                              c->tap_name ? c->tap_name : "(null)");
        if (!smolvm_vmm_valid_mac(c->mac))
            return smolvm_err(err, SMOLVM_EINVAL, "vmm: invalid mac '%s'",
                              c->mac ? c->mac : "(null)");
        break;
    default: return smolvm_err(err, SMOLVM_EINVAL, "vmm: network must be resolved");
    }
    return 0;
}

/* ---------------------------------------------------------------- confinement */

#define CAPBIT(c) (UINT64_C(1) << (c))
/* What QEMU needs until it drops to its own uid: -runas, -chroot, and TUNSETIFF on the
 * TAP the library made. Everything else leaves the bounding set before exec. */
#define QEMU_START_CAPS                                                                            \
    (CAPBIT(CAP_SETUID) | CAPBIT(CAP_SETGID) | CAPBIT(CAP_SYS_CHROOT) | CAPBIT(CAP_NET_ADMIN))

/* The options that confine QEMU (docs/security.md): seccomp always; with a uid of its
 * own, QEMU opens its files and devices as the caller, then chroots into an empty
 * directory and changes uid and gid itself, which leaves it no capabilities. */
static void confine_argv(const smolvm_vmm_config *c, argv_buf *a)
{
    const smolvm_vmm_confine *k = c->confine;
    bool runas = k && k->uid;

    /* elevateprivileges=deny would kill QEMU at its own -runas setuid(). Once it runs
     * as a uid with nothing to gain and no_new_privs, set*id() can change nothing. */
    argv_push(a, "-sandbox");
    argv_pushf(a, "on,obsolete=deny,elevateprivileges=%s,spawn=deny,resourcecontrol=deny",
               runas ? "allow" : "deny");
    if (runas) {
        argv_push(a, "-runas");
        argv_pushf(a, "%u:%u", (unsigned)k->uid, (unsigned)k->uid);
    }
    if (runas && k->chroot_dir) {
        argv_push(a, "-chroot");
        argv_push(a, k->chroot_dir);
    }
}

/* What the spawned process does to itself before exec: cgroups, oom score, lifeline,
 * bounding set, no_new_privs (proc.h). */
static void confine_spawn(const smolvm_vmm_config *c, smolvm_spawn_confine *sc)
{
    const smolvm_vmm_confine *k = c->confine;

    *sc = (smolvm_spawn_confine){.lifeline_fd = -1, .no_new_privs = true};
    if (!k)
        return;
    sc->cgroup_procs_fds = k->cgroup_procs_fds;
    sc->n_cgroup_procs_fds = k->n_cgroup_procs_fds;
    sc->set_oom_score_adj = k->oom_score_adj != 0;
    sc->oom_score_adj = k->oom_score_adj;
    sc->lifeline_fd = k->lifeline_fd;
    if (k->uid)
        sc->bounding_keep = QEMU_START_CAPS;
}

/* ---------------------------------------------------------------- command line */

/* disk_fds: the root disk opened read-write and read-only (-1: QEMU opens the path). */
static int build_argv(const smolvm_vmm_config *c, int qmp_fd, bool incoming, const int disk_fds[2],
                      argv_buf *a, smolvm_error **err)
{
    _cleanup_free_ char *disk = qemu_escape(c->disk);
    _cleanup_free_ char *config = c->config_disk ? qemu_escape(c->config_disk) : NULL;
    _cleanup_free_ char *mem_file = c->mem_file ? qemu_escape(c->mem_file) : NULL;
    _cleanup_free_ char *ro_cmdline =
        c->disk_read_only ? smolvm_vmm_ro_cmdline(c->cmdline, NULL) : NULL;
    bool backend = c->mem_fd >= 3 || c->mem_file;
    size_t i;

    if (!disk || (c->config_disk && !config) || (c->mem_file && !mem_file) ||
        (c->disk_read_only && !ro_cmdline))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");

    argv_push(a, QEMU_BINARY);
    /* acpi=off: without ACPI QEMU appends virtio_mmio.device= to the kernel command
     * line, which is how our guest kernel finds its devices. rtc=on: without it the
     * guest clock starts at 1970 (TLS fails) and boots measured 2x slower. */
    argv_push(a, "-M");
    argv_pushf(a, "microvm,acpi=off,rtc=on,isa-serial=on%s",
               backend ? ",memory-backend=" MEM_ID : "");
    /* Guest RAM on a file backend (docs/templates.md): the supervisor's memfd, mapped
     * shared (QEMU reopens it through /proc before any chroot), or a template's memory
     * file, mapped privately. The memfd's holder can save the RAM of a paused VM
     * without QEMU copying it through the migration stream. */
    if (c->mem_fd >= 3) {
        argv_push(a, "-object");
        argv_pushf(a,
                   "memory-backend-file,id=" MEM_ID ",size=%uM,mem-path=/proc/self/fd/%d,share=on",
                   c->memory_mib, c->mem_fd);
    } else if (c->mem_file) {
        argv_push(a, "-object");
        argv_pushf(a, "memory-backend-file,id=" MEM_ID ",size=%uM,mem-path=%s,share=off",
                   c->memory_mib, mem_file);
    }
    argv_push(a, "-accel");
    if (c->accel == SMOLVM_ACCEL_KVM) {
        argv_push(a, "kvm");
        argv_push(a, "-cpu");
        /* Some hosts refuse the MSR behind arch-capabilities ("failed to set MSR
         * 0x10a"); without it the guest assumes it is vulnerable and mitigates. */
        argv_push(a, "host,-arch-capabilities");
    } else {
        argv_pushf(a, "tcg,tb-size=%d%s", SMOLVM_VMM_TCG_TB_MIB,
                   c->vcpus > 1 ? ",thread=multi" : "");
        argv_push(a, "-cpu");
        /* Everything TCG can emulate: wheels built for x86-64-v2 need SSE4.2/POPCNT,
         * which qemu64 lacks. */
        argv_push(a, "max");
    }
    argv_push(a, "-m");
    argv_pushf(a, "%u", c->memory_mib);
    argv_push(a, "-smp");
    argv_pushf(a, "%u", c->vcpus);
    argv_push(a, "-nodefaults");
    argv_push(a, "-no-user-config");
    argv_push(a, "-nographic");
    argv_push(a, "-no-reboot");
    confine_argv(c, a);
    argv_push(a, "-kernel");
    argv_push(a, c->kernel);
    argv_push(a, "-append");
    argv_push(a, ro_cmdline ? ro_cmdline : c->cmdline);

    /* Root disk first: it becomes /dev/vda. cache=writeback (QEMU's default, stated
     * so it is a decision): guest flushes reach the host file, so a VMM killed after
     * the guest synced loses nothing and a qcow2 overlay stays consistent. A shared
     * base is opened read-only: QEMU refuses every guest write to it. */
    if (disk_fds[0] >= 0) {
        /* Through an fd set holding the file both read-write and read-only: QEMU reopens
         * the disk read-only when a migration ends (and read-write when the VM goes on),
         * which a chrooted QEMU could not do by path. */
        argv_push(a, "-add-fd");
        argv_pushf(a, "fd=%d,set=" QEMU_DISK_FDSET, disk_fds[0]);
        argv_push(a, "-add-fd");
        argv_pushf(a, "fd=%d,set=" QEMU_DISK_FDSET, disk_fds[1]);
        /* No image locks: the read-only and read-write descriptions would take them
         * against each other when QEMU switches between them (one VMM per VM dir is
         * the library's own rule: the pidfile lock). */
        argv_push(a, "-drive");
        argv_pushf(a,
                   "file=/dev/fdset/" QEMU_DISK_FDSET
                   ",format=%s,if=none,id=root,cache=writeback,discard=unmap,file.locking=off",
                   c->disk_format);
    } else {
        argv_push(a, "-drive");
        argv_pushf(a, "file=%s,format=%s,if=none,id=root,cache=writeback,%s", disk, c->disk_format,
                   c->disk_read_only ? "readonly=on" : "discard=unmap");
    }
    argv_push(a, "-device");
    argv_push(a, "virtio-blk-device,drive=root");
    if (config) {
        argv_push(a, "-drive");
        argv_pushf(a, "file=%s,format=raw,if=none,id=config,readonly=on", config);
        argv_push(a, "-device");
        argv_push(a, "virtio-blk-device,drive=config");
    }

    switch (c->network) {
    case SMOLVM_NET_USER: {
        _cleanup_free_ char *fwds = strdup("");

        for (i = 0; fwds && i < c->n_hostfwds; i++) {
            const smolvm_vmm_hostfwd *f = &c->hostfwds[i];
            char *n = smolvm_strdupf("%s,hostfwd=tcp:%s:%d-:%d", fwds,
                                     f->host_address ? f->host_address : "127.0.0.1", f->host_port,
                                     f->guest_port);

            free(fwds);
            fwds = n;
        }
        if (!fwds)
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        /* restrict=on, always: the guest cannot open any connection, only answer
         * forwarded ones (restrict=off would also open the host's loopback services
         * through 10.0.2.2). Egress policies need network "nat". */
        argv_push(a, "-netdev");
        argv_pushf(a, "user,id=" NETDEV_ID ",restrict=on,ipv6=off%s", fwds);
        argv_push(a, "-device");
        if (c->mac)
            argv_pushf(a, "virtio-net-device,netdev=" NETDEV_ID ",mac=%s", c->mac);
        else
            argv_push(a, "virtio-net-device,netdev=" NETDEV_ID);
        break;
    }
    case SMOLVM_NET_NAT:
        argv_push(a, "-netdev");
        argv_pushf(a, "tap,id=" NETDEV_ID ",ifname=%s,script=no,downscript=no", c->tap_name);
        argv_push(a, "-device");
        argv_pushf(a, "virtio-net-device,netdev=" NETDEV_ID ",mac=%s", c->mac);
        break;
    default: break;
    }

    /* Seeds the guest's entropy pool, so sshd's first getrandom() does not block. */
    argv_push(a, "-device");
    argv_push(a, "virtio-rng-device");
    /* Serial console into the supervisor's pipe, which keeps console.log bounded. A
     * file chardev takes the pipe through an fd set (append=on: a pipe cannot be
     * truncated). */
    argv_push(a, "-add-fd");
    argv_pushf(a, "fd=%d,set=" QEMU_CONSOLE_FDSET, c->console_fd);
    argv_push(a, "-chardev");
    argv_push(a, "file,id=console,path=/dev/fdset/" QEMU_CONSOLE_FDSET ",append=on");
    argv_push(a, "-serial");
    argv_push(a, "chardev:console");
    /* The guest's channels (docs/guest-protocol.md, docs/agent-protocol.md): hvc0 and
     * the agent port on one virtio-serial bus, each an already connected socket. */
    argv_push(a, "-device");
    argv_push(a, "virtio-serial-device");
    argv_push(a, "-chardev");
    argv_pushf(a, "socket,id=ctl,fd=%d", c->ctl_fd);
    argv_push(a, "-device");
    argv_push(a, "virtconsole,chardev=ctl");
    if (c->agent_fd >= 0) {
        argv_push(a, "-chardev");
        argv_pushf(a, "socket,id=agent,fd=%d", c->agent_fd);
        argv_push(a, "-device");
        argv_push(a, "virtserialport,chardev=agent,name=" SMOLVM_AGENT_PORT_NAME);
    }
    /* QMP on a socket we bound before the spawn: connecting cannot race its creation. */
    argv_push(a, "-chardev");
    argv_pushf(a, "socket,id=qmp,fd=%d,server=on,wait=off", qmp_fd);
    argv_push(a, "-mon");
    argv_push(a, "chardev=qmp,mode=control");
    argv_push(a, "-pidfile");
    argv_pushf(a, "%s/" SMOLVM_VMM_PIDFILE, c->dir);
    argv_push(a, "-S");
    if (incoming) {
        argv_push(a, "-incoming");
        argv_push(a, "defer"); /* the stream comes as an fd over QMP (migrate-incoming) */
    }
    if (a->oom)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    return 0;
}

/* ---------------------------------------------------------------- helpers */

/* The last lines QEMU wrote to its log since offset, joined with "; ". */
static char *log_tail(const char *path, off_t offset)
{
    return smolvm_file_tail(path, offset, LOG_TAIL_MAX, LOG_TAIL_LINES, "; ");
}

static int qmp_open(const char *dir, smolvm_qmp **q, int64_t deadline, smolvm_error **err)
{
    _cleanup_free_ char *path = smolvm_vmm_path(dir, QMP_SOCK);

    if (!path)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    return smolvm_qmp_connect(q, path, deadline, err);
}

static int qmp_simple(const char *dir, const char *command, int64_t deadline, smolvm_error **err)
{
    _cleanup_(smolvm_qmp_freep) smolvm_qmp *q = NULL;
    int r;

    r = qmp_open(dir, &q, deadline, err);
    if (r < 0)
        return r;
    return smolvm_qmp_execute(q, command, NULL, NULL, deadline, err);
}

/* The pid in dir's pidfile and its start time; 0 when there is a live process. */
static int read_pidfile(const char *dir, pid_t *pid, uint64_t *start)
{
    _cleanup_free_ char *path = smolvm_vmm_path(dir, SMOLVM_VMM_PIDFILE);
    _cleanup_free_ char *text = NULL;
    char *end;
    long v;

    if (!path || smolvm_read_file(path, 64, &text, NULL, NULL) < 0)
        return -1;
    errno = 0;
    v = strtol(text, &end, 10);
    if (errno || end == text || v <= 0 || v > INT32_MAX)
        return -1;
    *pid = (pid_t)v;
    return smolvm_pid_start_time(*pid, start, NULL);
}

/* Is a VMM holding the pidfile's lock (QEMU locks it for its lifetime)? */
static pid_t pidfile_locked(const char *path)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};

    if (fd < 0)
        return 0;
    if (fcntl(fd, F_GETLK, &fl) < 0 || fl.l_type == F_UNLCK)
        return 0;
    return fl.l_pid > 0 ? fl.l_pid : 1;
}

/* ---------------------------------------------------------------- ops */

static int qemu_available(int accel, smolvm_error **err)
{
    const char *path = getenv("PATH");
    _cleanup_free_ char *copy = strdup(path && *path ? path : "/usr/bin:/bin");
    char *dir, *save = NULL;
    int found = 0;

    if (!copy)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    for (dir = strtok_r(copy, ":", &save); dir && !found; dir = strtok_r(NULL, ":", &save)) {
        _cleanup_free_ char *p = smolvm_strdupf("%s/" QEMU_BINARY, dir);

        found = p && access(p, X_OK) == 0;
    }
    if (!found)
        return smolvm_err(err, SMOLVM_EHOST,
                          "'" QEMU_BINARY "' not found in PATH "
                          "(install the package 'qemu-system-x86')");
    if (accel == SMOLVM_ACCEL_KVM) {
        _cleanup_close_ int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);

        if (fd < 0) {
            int e = errno;

            smolvm_err_errno(err, e, "open '/dev/kvm'");
            return e == EACCES ? smolvm_err_hint(err, "add your user to group 'kvm'")
                               : smolvm_err_hint(err, "use accel 'tcg'");
        }
    }
    return 0;
}

static void remove_runtime_files(const char *dir)
{
    static const char *const names[] = {QMP_SOCK, SMOLVM_VMM_PIDFILE};

    smolvm_vmm_remove_files(dir, names, SMOLVM_ARRAY_SIZE(names));
}

/* After a failed start: kill the VMM, remove what it left, and say what QEMU said. */
static int fail_started(const char *dir, const char *log_path, off_t log_offset, pid_t pid,
                        uint64_t start, int r, smolvm_error **err)
{
    _cleanup_free_ char *tail = NULL;
    int exited;

    /* A closed QMP connection usually means QEMU is on its way out: give it a moment
     * to finish, so the error can be QEMU's own words. */
    if (r == SMOLVM_EVMM)
        (void)smolvm_pid_wait_exit(pid, start, smolvm_now_ms() + 1000, NULL);
    exited = !smolvm_pid_alive(pid, start);

    (void)smolvm_pid_kill(pid, start, smolvm_now_ms() + CLEANUP_KILL_MS, NULL);
    (void)waitpid(pid, NULL, 0); /* our child: reaped here, before anyone else looks */
    remove_runtime_files(dir);
    tail = log_tail(log_path, log_offset);
    if (exited && tail) {
        /* QEMU's own complaint says more than "connection closed". */
        smolvm_error *old = err ? *err : NULL;

        if (err)
            *err = NULL;
        smolvm_error_free(old);
        return smolvm_err(err, SMOLVM_EVMM, "qemu exited: %s", tail);
    }
    if (tail)
        smolvm_err_hint(err, "qemu log: %s", tail);
    return r;
}

/* A launched QEMU, stopped (-S), with QMP connected: what spawn and restore share. */
typedef struct launched {
    smolvm_qmp *q;
    pid_t pid;
    uint64_t start;
    char *log_path;
    off_t log_offset;
} launched;

static void launched_done(launched *l)
{
    l->q = smolvm_qmp_free(l->q);
    free(l->log_path);
    l->log_path = NULL;
}

/* After launch succeeded and something later failed: nothing of the VMM stays. */
static int launched_fail(const smolvm_vmm_config *cfg, launched *l, int r, smolvm_error **err)
{
    l->q = smolvm_qmp_free(l->q);
    r = fail_started(cfg->dir, l->log_path, l->log_offset, l->pid, l->start, r, err);
    launched_done(l);
    return r;
}

static int launch(const smolvm_vmm_config *cfg, bool incoming, launched *l, int64_t deadline,
                  smolvm_error **err)
{
    _cleanup_free_ char *qmp_path = NULL, *pid_path = NULL;
    _cleanup_close_ int listen_fd = -1, disk_rw = -1, disk_ro = -1;
    argv_buf argv = {0};
    struct stat st;
    pid_t held;
    int keep[8], r;
    size_t n_keep = 0;
    smolvm_spawn_req req = {0};
    smolvm_spawn_confine confine;

    *l = (launched){0};
    if ((r = check_config(cfg, err)) < 0)
        return r;
    qmp_path = smolvm_vmm_path(cfg->dir, QMP_SOCK);
    pid_path = smolvm_vmm_path(cfg->dir, SMOLVM_VMM_PIDFILE);
    l->log_path = smolvm_vmm_path(cfg->dir, SMOLVM_VMM_STDERR_LOG);
    if (!qmp_path || !pid_path || !l->log_path) {
        launched_done(l);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    /* Never pull the sockets from under a VMM that still runs in this dir. */
    held = pidfile_locked(pid_path);
    if (held) {
        launched_done(l);
        return smolvm_err(err, SMOLVM_EEXIST, "a vmm (pid %ld) is already running in '%s'",
                          (long)held, cfg->dir);
    }
    remove_runtime_files(cfg->dir);
    if (stat(l->log_path, &st) == 0)
        l->log_offset = st.st_size;

    if ((r = smolvm_unix_listen(qmp_path, &listen_fd, err)) < 0) {
        launched_done(l);
        return r;
    }
    /* A writable qcow2 overlay goes through an fd set (build_argv says why). */
    if (strcmp(cfg->disk_format, "qcow2") == 0) {
        disk_rw = open(cfg->disk, O_RDWR | O_CLOEXEC);
        disk_ro = disk_rw >= 0 ? open(cfg->disk, O_RDONLY | O_CLOEXEC) : -1;
        if (disk_ro < 0) {
            r = smolvm_err_errno(err, errno, "open '%s'", cfg->disk);
            (void)unlink(qmp_path);
            launched_done(l);
            return r;
        }
    }
    r = build_argv(cfg, listen_fd, incoming, (int[2]){disk_rw, disk_ro}, &argv, err);
    confine_spawn(cfg, &confine);
    if (disk_rw >= 0) {
        keep[n_keep++] = disk_rw;
        keep[n_keep++] = disk_ro;
    }
    keep[n_keep++] = listen_fd;
    keep[n_keep++] = cfg->console_fd;
    keep[n_keep++] = cfg->ctl_fd;
    if (cfg->agent_fd >= 0)
        keep[n_keep++] = cfg->agent_fd;
    if (cfg->mem_fd >= 3)
        keep[n_keep++] = cfg->mem_fd;
    if (confine.lifeline_fd >= 0)
        keep[n_keep++] = confine.lifeline_fd;
    req = (smolvm_spawn_req){
        .argv = argv.v,
        .log_path = l->log_path,
        .keep_fds = keep,
        .n_keep = n_keep,
        .stdout_fd = -1,
        .detached = false,
        .confine = &confine,
    };
    if (r == 0)
        r = smolvm_spawn(&req, &l->pid, err);
    argv_buf_free(&argv);
    if (r < 0) {
        (void)unlink(qmp_path);
        launched_done(l);
        return r;
    }
    /* Only QEMU holds the listening socket now, so if it dies our connection sees EOF
     * instead of waiting for a greeting that cannot come. */
    (void)close(TAKE_FD(listen_fd));
    if (smolvm_pid_start_time(l->pid, &l->start, NULL) < 0 || !smolvm_pid_alive(l->pid, l->start)) {
        /* Already gone: nothing to kill, only its words to collect. */
        _cleanup_free_ char *tail = log_tail(l->log_path, l->log_offset);

        (void)waitpid(l->pid, NULL, 0);
        remove_runtime_files(cfg->dir);
        launched_done(l);
        return smolvm_err(err, SMOLVM_EVMM, "qemu exited: %s", tail ? tail : "no output");
    }
    r = smolvm_qmp_connect(&l->q, qmp_path, deadline, err);
    if (r < 0)
        return launched_fail(cfg, l, r, err);
    return 0;
}

static int qemu_spawn(const smolvm_vmm_config *cfg, int64_t *out_pid, uint64_t *out_start,
                      int64_t deadline, smolvm_error **err)
{
    launched l;
    int r;

    if ((r = launch(cfg, false, &l, deadline, err)) < 0)
        return r;
    /* The channels are connected sockets, so nothing the guest writes can be lost: the
     * CPUs can run as soon as QMP answers. */
    r = smolvm_qmp_execute(l.q, "cont", NULL, NULL, deadline, err);
    if (r < 0)
        return launched_fail(cfg, &l, r, err);
    *out_pid = l.pid;
    *out_start = l.start;
    launched_done(&l);
    return 0;
}

/* ---------------------------------------------------------------- migration */

/* The settings both ends of a migration need: MIGRATION events (waited for, not
 * polled), RAM in or out of the stream, no bandwidth cap. */
static int migration_setup(smolvm_qmp *q, bool shared_mem, int64_t deadline, smolvm_error **err)
{
    json_t *caps = json_pack("{s:[{s:s, s:b}, {s:s, s:b}]}", "capabilities", "capability", "events",
                             "state", 1, "capability", "x-ignore-shared", "state", (int)shared_mem);
    json_t *params = json_pack("{s:I}", "max-bandwidth", (json_int_t)MIGRATE_BANDWIDTH);
    int r;

    if (!caps || !params) {
        json_decref(caps);
        json_decref(params);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    r = smolvm_qmp_execute(q, "migrate-set-capabilities", caps, NULL, deadline, err);
    if (r == 0)
        r = smolvm_qmp_execute(q, "migrate-set-parameters", params, NULL, deadline, err);
    json_decref(caps);
    json_decref(params);
    return r;
}

/* Wait for the migration to end; its failure in QEMU's words. */
static int migration_wait(smolvm_qmp *q, const char *what, int64_t deadline, smolvm_error **err)
{
    for (;;) {
        json_t *ev = NULL, *info = NULL;
        const char *status;
        int r = smolvm_qmp_wait_event(q, "MIGRATION", &ev, deadline, err);

        if (r < 0)
            return smolvm_err_wrap(err, "%s", what);
        status = json_string_value(json_object_get(json_object_get(ev, "data"), "status"));
        if (status && strcmp(status, "completed") == 0) {
            json_decref(ev);
            return 0;
        }
        if (!status || (strcmp(status, "failed") && strcmp(status, "cancelled"))) {
            json_decref(ev);
            continue; /* setup, active, device, ... */
        }
        json_decref(ev);
        /* query-migrate has the reason (error-desc), while it lasts. */
        if (smolvm_qmp_execute(q, "query-migrate", NULL, &info, deadline, NULL) == 0) {
            const char *desc = json_string_value(json_object_get(info, "error-desc"));

            r = smolvm_err(err, SMOLVM_EVMM, "%s: %s", what, desc ? desc : "migration failed");
            json_decref(info);
            return r;
        }
        return smolvm_err(err, SMOLVM_EVMM, "%s: the migration failed", what);
    }
}

static int uri_args(json_t **out)
{
    *out = json_pack("{s:s}", "uri", "fd:" STATE_FDNAME);
    return *out ? 0 : SMOLVM_ENOMEM;
}

static int qemu_restore(const smolvm_vmm_config *cfg, const smolvm_vmm_snapshot *snap,
                        int64_t *out_pid, uint64_t *out_start, int64_t deadline, smolvm_error **err)
{
    _cleanup_close_ int fd = -1;
    json_t *args = NULL;
    launched l;
    int r;

    if (!snap->state_path || snap->state_path[0] != '/')
        return smolvm_err(err, SMOLVM_EINVAL, "vmm: restore needs an absolute state path");
    if (snap->shared_mem && cfg->mem_fd < 3 && !cfg->mem_file)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "vmm: a snapshot without its memory needs a memory file or memfd");
    fd = open(snap->state_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return smolvm_err_errno(err, errno, "open '%s'", snap->state_path);
    if ((r = launch(cfg, true, &l, deadline, err)) < 0)
        return r;
    r = migration_setup(l.q, snap->shared_mem, deadline, err);
    if (r == 0)
        r = smolvm_qmp_getfd(l.q, STATE_FDNAME, fd, deadline, err);
    if (r == 0 && (r = uri_args(&args)) < 0)
        smolvm_err(err, r, "out of memory");
    if (r == 0)
        r = smolvm_qmp_execute(l.q, "migrate-incoming", args, NULL, deadline, err);
    json_decref(args);
    if (r == 0)
        r = migration_wait(l.q, "restore", deadline, err);
    if (r == 0)
        r = smolvm_qmp_execute(l.q, "cont", NULL, NULL, deadline, err);
    if (r < 0)
        return launched_fail(cfg, &l, r, err);
    *out_pid = l.pid;
    *out_start = l.start;
    launched_done(&l);
    return 0;
}

static int qemu_snapshot(const char *dir, const smolvm_vmm_snapshot *snap, int64_t deadline,
                         smolvm_error **err)
{
    _cleanup_(smolvm_qmp_freep) smolvm_qmp *q = NULL;
    _cleanup_close_ int fd = -1;
    json_t *args = NULL;
    int r;

    if (!snap->state_path || snap->state_path[0] != '/')
        return smolvm_err(err, SMOLVM_EINVAL, "vmm: snapshot needs an absolute state path");
    if ((r = qmp_open(dir, &q, deadline, err)) < 0)
        return r;
    if ((r = smolvm_qmp_execute(q, "stop", NULL, NULL, deadline, err)) < 0)
        return r;
    fd = open(snap->state_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return smolvm_err_errno(err, errno, "create '%s'", snap->state_path);
    r = migration_setup(q, snap->shared_mem, deadline, err);
    if (r == 0)
        r = smolvm_qmp_getfd(q, STATE_FDNAME, fd, deadline, err);
    if (r == 0 && (r = uri_args(&args)) < 0)
        smolvm_err(err, r, "out of memory");
    if (r == 0)
        r = smolvm_qmp_execute(q, "migrate", args, NULL, deadline, err);
    json_decref(args);
    if (r == 0)
        r = migration_wait(q, "snapshot", deadline, err);
    /* Written through QEMU's copy of the fd: ours makes it durable. */
    if (r == 0 && fsync(fd) < 0)
        r = smolvm_err_errno(err, errno, "fsync '%s'", snap->state_path);
    if (r < 0)
        (void)unlink(snap->state_path);
    return r;
}

static int qemu_pause(const char *dir, int64_t deadline, smolvm_error **err)
{
    return qmp_simple(dir, "stop", deadline, err);
}

static int qemu_resume(const char *dir, int64_t deadline, smolvm_error **err)
{
    return qmp_simple(dir, "cont", deadline, err);
}

static int qemu_quit(const char *dir, int64_t deadline, smolvm_error **err)
{
    _cleanup_(smolvm_qmp_freep) smolvm_qmp *q = NULL;
    uint64_t start = 0;
    pid_t pid = 0;
    int have_pid, r;

    have_pid = read_pidfile(dir, &pid, &start) == 0;
    r = qmp_open(dir, &q, deadline, err);
    if (r < 0)
        return r;
    r = smolvm_qmp_execute(q, "quit", NULL, NULL, deadline, err);
    if (r < 0 && r != SMOLVM_EVMM)
        return r;
    if (r < 0) {
        /* QEMU may exit before its reply is read; what counts is that it exits. */
        smolvm_error *ignored = err ? *err : NULL;

        if (err)
            *err = NULL;
        r = have_pid ? smolvm_pid_wait_exit(pid, start, deadline, err) : 0;
        if (r < 0) {
            smolvm_error_free(err ? *err : NULL);
            if (err)
                *err = ignored;
            return SMOLVM_EVMM;
        }
        smolvm_error_free(ignored);
        return 0;
    }
    if (have_pid)
        return smolvm_pid_wait_exit(pid, start, deadline, err);
    return smolvm_qmp_wait_closed(q, deadline, err);
}

static int hmp(const char *dir, const char *line, char **out, int64_t deadline, smolvm_error **err)
{
    _cleanup_(smolvm_qmp_freep) smolvm_qmp *q = NULL;
    json_t *args, *ret = NULL;
    int r;

    r = qmp_open(dir, &q, deadline, err);
    if (r < 0)
        return r;
    args = json_pack("{s:s}", "command-line", line);
    if (!args)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    r = smolvm_qmp_execute(q, "human-monitor-command", args, &ret, deadline, err);
    json_decref(args);
    if (r < 0)
        return r;
    *out = strdup(json_string_value(ret) ? json_string_value(ret) : "");
    json_decref(ret);
    if (!*out)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    /* HMP ends its lines with \r\n. */
    (*out)[strcspn(*out, "\r\n")] = '\0';
    return 0;
}

static int qemu_hostfwd_add(const char *dir, const smolvm_vmm_hostfwd *fwd, int64_t deadline,
                            smolvm_error **err)
{
    _cleanup_free_ char *line = NULL, *out = NULL;
    const char *addr = fwd->host_address ? fwd->host_address : "127.0.0.1";
    int r;

    if ((r = check_fwd(fwd, err)) < 0)
        return r;
    line = smolvm_strdupf("hostfwd_add " NETDEV_ID " tcp:%s:%d-:%d", addr, fwd->host_port,
                          fwd->guest_port);
    if (!line)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    r = hmp(dir, line, &out, deadline, err);
    if (r < 0)
        return r;
    /* Success prints nothing; QEMU's only failure mode worth a code is a bound port. */
    if (*out)
        return smolvm_err(err, SMOLVM_EEXIST, "forward %s:%d: %s (is the port in use?)", addr,
                          fwd->host_port, out);
    return 0;
}

static int qemu_hostfwd_remove(const char *dir, const smolvm_vmm_hostfwd *fwd, int64_t deadline,
                               smolvm_error **err)
{
    _cleanup_free_ char *line = NULL, *out = NULL;
    const char *addr = fwd->host_address ? fwd->host_address : "127.0.0.1";
    int r;

    if ((r = check_fwd(fwd, err)) < 0)
        return r;
    line = smolvm_strdupf("hostfwd_remove " NETDEV_ID " tcp:%s:%d", addr, fwd->host_port);
    if (!line)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    r = hmp(dir, line, &out, deadline, err);
    if (r < 0)
        return r;
    if (strstr(out, "removed"))
        return 0;
    if (strstr(out, "not found"))
        return smolvm_err(err, SMOLVM_ENOENT, "no forward for %s:%d", addr, fwd->host_port);
    return smolvm_err(err, SMOLVM_EVMM, "remove forward %s:%d: %s", addr, fwd->host_port, out);
}

static int qemu_describe(const char *dir, int64_t deadline, char **out, smolvm_error **err)
{
    _cleanup_(smolvm_qmp_freep) smolvm_qmp *q = NULL;
    json_t *status = NULL, *version = NULL, *obj;
    int r;

    r = qmp_open(dir, &q, deadline, err);
    if (r < 0)
        return r;
    r = smolvm_qmp_execute(q, "query-status", NULL, &status, deadline, err);
    if (r == 0)
        r = smolvm_qmp_execute(q, "query-version", NULL, &version, deadline, err);
    if (r < 0) {
        json_decref(status);
        return r;
    }
    obj = json_pack("{s:s, s:o, s:o}", "backend", "qemu", "status", status, "version", version);
    return smolvm_vmm_describe_text(out, obj, err);
}

const smolvm_vmm_ops smolvm_vmm_qemu = {
    .name = "qemu",
    .available = qemu_available,
    .spawn = qemu_spawn,
    .pause = qemu_pause,
    .resume = qemu_resume,
    .quit = qemu_quit,
    .hostfwd_add = qemu_hostfwd_add,
    .hostfwd_remove = qemu_hostfwd_remove,
    .describe = qemu_describe,
    .snapshot = qemu_snapshot,
    .restore = qemu_restore,
};
