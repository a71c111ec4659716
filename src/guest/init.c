/* SPDX-License-Identifier: MIT */
/*
 * smolvm-init: PID 1 of the smolvm guest (installed as /sbin/smolvm-init).
 *
 * Boot: mount the API filesystems, read the config disk, set the hostname, start the
 * agent (/usr/sbin/smolvm-agent, with the config disk's env), write the SSH keys, bind
 * port 22, report "ready" on /dev/hvc0. Then one poll loop: accept a connection -> fork
 * `sshd -i`; SIGCHLD -> reap (we are every orphan's parent; a dead agent is restarted
 * after a backoff);
 * "poweroff" on hvc0, SIGTERM, SIGINT (Ctrl-Alt-Del) -> kill everything, sync,
 * remount / read-only, reboot (with reboot=t and -no-reboot the VMM exits).
 * The contract with the host is docs/guest-protocol.md.
 */
#define _GNU_SOURCE
#include "guest.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <poll.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define KILL_GRACE_MS 2000 /* SIGTERM -> SIGKILL */
#define KILL_WAIT_MS 1000  /* SIGKILL -> give up waiting and power off anyway */

#define AGENT_PATH "/usr/sbin/smolvm-agent"
#define AGENT_NO_CHANNEL 3         /* its exit status when the VM has no agent channel */
#define AGENT_BACKOFF_MIN_MS 100   /* restart delay after a crash, doubling... */
#define AGENT_BACKOFF_MAX_MS 10000 /* ...up to this */
#define AGENT_STABLE_MS 30000      /* an agent that ran this long restarts at once */

static int hvc_fd = -1;    /* control channel to the host (absent on Firecracker) */
static int serial_fd = -1; /* ttyS0: the VM's console.log */

extern char **environ;

static pid_t agent_pid = -1;
static long agent_started_at, agent_restart_at = -1;
static int agent_backoff_ms = AGENT_BACKOFF_MIN_MS;
static const sigset_t *agent_sigmask;

static long uptime_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static void write_all(int fd, const char *s, size_t len)
{
    while (fd >= 0 && len > 0) {
        ssize_t n = write(fd, s, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return; /* the console is best effort: never block boot on it */
        s += n;
        len -= (size_t)n;
    }
}

void guest_log(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    int n = snprintf(line, sizeof(line), "smolvm: ");
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof(line) - 2)
        n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    write_all(serial_fd, line, (size_t)n);
}

/* "smolvm-<event> ..." to the host on hvc0, "smolvm: ..." to the serial log. */
static void report(const char *event, const char *stage)
{
    char line[128];
    long ms = uptime_ms();
    int n;
    if (stage)
        n = snprintf(line, sizeof(line), "smolvm-%s %s %ld\n", event, stage, ms);
    else
        n = snprintf(line, sizeof(line), "smolvm-%s %ld\n", event, ms);
    write_all(hvc_fd, line, (size_t)n);
    guest_log("%s %ld", stage ? stage : event, ms);
}

/* A boot failure the host should hear about now rather than at its deadline. */
static void report_error(const char *msg)
{
    char line[600];
    int n = snprintf(line, sizeof(line), "smolvm-error %ld %s\n", uptime_ms(), msg);
    if (n > (int)sizeof(line) - 1)
        n = (int)sizeof(line) - 1;
    write_all(hvc_fd, line, (size_t)n);
    guest_log("error: %s", msg);
}

static void mount_one(const char *src, const char *dst, const char *type, unsigned long flags,
                      const char *data, mode_t mode)
{
    (void)mkdir(dst, mode);
    if (mount(src, dst, type, flags, data) < 0 && errno != EBUSY)
        guest_log("mount %s on %s: %s", type, dst, strerror(errno));
}

static void mount_all(void)
{
    const unsigned long nosuid_nodev = MS_NOSUID | MS_NODEV;
    mount_one("proc", "/proc", "proc", nosuid_nodev | MS_NOEXEC, NULL, 0555);
    mount_one("sysfs", "/sys", "sysfs", nosuid_nodev | MS_NOEXEC, NULL, 0555);
    /* Usually already there (DEVTMPFS_MOUNT): EBUSY is fine. */
    mount_one("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755", 0755);
    mount_one("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
              "gid=5,mode=0620,ptmxmode=0666", 0755);
    mount_one("tmpfs", "/dev/shm", "tmpfs", nosuid_nodev, "mode=1777", 1777);
    mount_one("tmpfs", "/run", "tmpfs", nosuid_nodev, "mode=0755", 0755);
    mount_one("tmpfs", "/tmp", "tmpfs", nosuid_nodev, "mode=1777", 1777);
    mount_one("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid_nodev | MS_NOEXEC, NULL, 0555);
    /* devtmpfs has no /dev/fd; bash process substitution and many scripts need it. */
    (void)symlink("/proc/self/fd", "/dev/fd");
    (void)symlink("/proc/self/fd/0", "/dev/stdin");
    (void)symlink("/proc/self/fd/1", "/dev/stdout");
    (void)symlink("/proc/self/fd/2", "/dev/stderr");
}

/* ip= brings lo up only when it configures a NIC; with network "none" we must. */
static void loopback_up(void)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq ifr = {0};
    if (fd < 0)
        return;
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) == 0 && !(ifr.ifr_flags & IFF_UP)) {
        ifr.ifr_flags |= IFF_UP;
        if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
            guest_log("lo up: %s", strerror(errno));
    }
    close(fd);
}

static void write_text(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        guest_log("write %s: %s", path, strerror(errno));
        return;
    }
    write_all(fd, text, strlen(text));
    close(fd);
}

/*
 * /etc/hostname, /etc/hosts and /etc/resolv.conf in the image are symlinks into
 * /run/smolvm, so per-VM identity never touches the (possibly shared) root disk.
 */
static void set_identity(const char *hostname)
{
    char buf[512];
    if (!hostname)
        hostname = "smolvm";
    if (sethostname(hostname, strlen(hostname)) < 0)
        guest_log("sethostname: %s", strerror(errno));
    snprintf(buf, sizeof(buf), "%s\n", hostname);
    write_text(GUEST_RUN_DIR "/hostname", buf);
    snprintf(buf, sizeof(buf),
             "127.0.0.1\tlocalhost\n127.0.1.1\t%s\n"
             "::1\tlocalhost ip6-localhost ip6-loopback\n",
             hostname);
    write_text(GUEST_RUN_DIR "/hosts", buf);

    /* smolvm.dns=<resolver> from the kernel command line (not secret). */
    char cmdline[4096] = "";
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, cmdline, sizeof(cmdline) - 1);
        cmdline[n > 0 ? n : 0] = '\0';
        close(fd);
    }
    strcpy(buf, "");
    for (char *tok = strtok(cmdline, " \n"); tok; tok = strtok(NULL, " \n"))
        if (strncmp(tok, "smolvm.dns=", 11) == 0 && strlen(tok) < 64)
            snprintf(buf + strlen(buf), sizeof(buf) - strlen(buf), "nameserver %s\n", tok + 11);
    write_text(GUEST_RUN_DIR "/resolv.conf", buf);
}

static void open_consoles(void)
{
    serial_fd = open("/dev/ttyS0", O_WRONLY | O_NOCTTY | O_CLOEXEC);
    if (serial_fd < 0)
        serial_fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
    hvc_fd = open("/dev/hvc0", O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
    if (hvc_fd >= 0) {
        /* Raw: no echo of host commands back to the host, no \n -> \r\n. */
        struct termios t;
        if (tcgetattr(hvc_fd, &t) == 0) {
            cfmakeraw(&t);
            (void)tcsetattr(hvc_fd, TCSANOW, &t);
        }
    }
}

/* smolvm.overlay=/dev/vdX (Firecracker, disk = "isolated"): the root disk is the shared
 * read-only base; writes go to an overlayfs upper layer on the given per-VM ext4 disk.
 * Before anything else touches /: the new root is pivoted in under everything. */
static void overlay_root(void)
{
    char cmdline[4096] = "", dev[32] = "", *p;
    const char *mnt = "/mnt";
    int fd;
    ssize_t n;

    (void)mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    n = fd >= 0 ? read(fd, cmdline, sizeof(cmdline) - 1) : -1;
    if (fd >= 0)
        close(fd);
    (void)umount2("/proc", MNT_DETACH);
    if (n <= 0 || !(p = strstr(cmdline, "smolvm.overlay=")))
        return;
    p += 15;
    n = (ssize_t)strcspn(p, " \n");
    if (n <= 0 || n >= (ssize_t)sizeof(dev) || strncmp(p, "/dev/", 5) != 0) {
        report_error("smolvm.overlay: expected a /dev/ path");
        return;
    }
    memcpy(dev, p, (size_t)n);
    if (mount(dev, mnt, "ext4", MS_NOATIME, NULL) < 0) {
        char msg[96];
        snprintf(msg, sizeof(msg), "overlay: mount %s: %s", dev, strerror(errno));
        report_error(msg);
        return;
    }
    (void)mkdir("/mnt/upper", 0755);
    (void)mkdir("/mnt/work", 0755);
    (void)mkdir("/mnt/root", 0755);
    /* pivot_root(".", "."): the documented way to swap roots without a spare dir. */
    if (mount("overlay", "/mnt/root", "overlay", 0,
              "lowerdir=/,upperdir=/mnt/upper,workdir=/mnt/work") < 0 ||
        chdir("/mnt/root") < 0 || syscall(SYS_pivot_root, ".", ".") < 0 ||
        umount2(".", MNT_DETACH) < 0 || chdir("/") < 0) {
        char msg[96];
        snprintf(msg, sizeof(msg), "overlay root on %s: %s", dev, strerror(errno));
        report_error(msg);
        return;
    }
    guest_log("root: overlay, writes on %s", dev);
}

/* posix_spawn (no fork: copying our page tables is what costs under TCG), in a session
 * of its own, with the default signal mask, our environment and the serial console as
 * stdout/stderr. */
static void agent_start(void)
{
    char *argv[] = {"smolvm-agent", NULL};
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    pid_t pid;

    agent_restart_at = -1;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    if (serial_fd >= 0) {
        posix_spawn_file_actions_adddup2(&fa, serial_fd, 1);
        posix_spawn_file_actions_adddup2(&fa, serial_fd, 2);
    } else {
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_adddup2(&fa, 1, 2);
    }
    posix_spawnattr_setsigmask(&attr, agent_sigmask);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK);
    int e = posix_spawn(&pid, AGENT_PATH, &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (e != 0) {
        /* An image without the agent serves SSH only; nothing to retry. */
        guest_log("agent: spawn %s: %s", AGENT_PATH, strerror(e));
        return;
    }
    agent_pid = pid;
    agent_started_at = now_ms();
}

/* The agent ended: start it again after a bounded, growing delay. */
static void agent_exited(int status)
{
    long ran = now_ms() - agent_started_at;
    agent_pid = -1;
    if (WIFEXITED(status) && WEXITSTATUS(status) == AGENT_NO_CHANNEL) {
        guest_log("agent: no channel to the host; not restarted");
        return;
    }
    if (ran >= AGENT_STABLE_MS)
        agent_backoff_ms = AGENT_BACKOFF_MIN_MS;
    if (WIFSIGNALED(status))
        guest_log("agent: killed by signal %d after %ld ms; restart in %d ms", WTERMSIG(status),
                  ran, agent_backoff_ms);
    else
        guest_log("agent: exited with status %d after %ld ms; restart in %d ms",
                  WEXITSTATUS(status), ran, agent_backoff_ms);
    agent_restart_at = now_ms() + agent_backoff_ms;
    agent_backoff_ms =
        agent_backoff_ms * 2 > AGENT_BACKOFF_MAX_MS ? AGENT_BACKOFF_MAX_MS : agent_backoff_ms * 2;
}

static void reap(void)
{
    pid_t pid;
    int status;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
        if (pid == agent_pid)
            agent_exited(status);
}

/* Wait (on the signalfd, no sleeping) until every process is gone or the deadline. */
static int wait_all_gone(int sfd, long timeout_ms)
{
    long deadline = now_ms() + timeout_ms;
    for (;;) {
        pid_t pid;
        while ((pid = waitpid(-1, NULL, WNOHANG)) > 0)
            ;
        if (pid < 0 && errno == ECHILD)
            return 0;
        long left = deadline - now_ms();
        if (left <= 0)
            return -1;
        struct pollfd p = {.fd = sfd, .events = POLLIN};
        if (poll(&p, 1, (int)left) > 0) {
            struct signalfd_siginfo si;
            (void)read(sfd, &si, sizeof(si));
        }
    }
}

static void __attribute__((noreturn)) power_off(int sfd, const char *why)
{
    guest_log("power off (%s) %ld", why, uptime_ms());
    /* PID 1 is exempt from kill(-1): this reaches every other process. */
    kill(-1, SIGTERM);
    kill(-1, SIGCONT);
    if (wait_all_gone(sfd, KILL_GRACE_MS) < 0) {
        kill(-1, SIGKILL);
        if (wait_all_gone(sfd, KILL_WAIT_MS) < 0)
            guest_log("some processes did not exit");
    }
    sync();
    (void)umount2("/tmp", MNT_DETACH);
    (void)umount2("/dev/shm", MNT_DETACH);
    /* Read-only root means ext4 is clean: no journal replay on the next boot. */
    if (mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL) < 0)
        guest_log("remount / read-only: %s", strerror(errno));
    sync();
    report("poweroff", NULL);
    if (hvc_fd >= 0)
        (void)tcdrain(hvc_fd);
    reboot(RB_AUTOBOOT);
    /* Only reached if reboot failed; PID 1 must not return. */
    for (;;)
        pause();
}

/* Handle what the host wrote on hvc0; returns 1 on "poweroff". */
static int read_control(void)
{
    static char buf[256];
    static size_t len;
    for (;;) {
        ssize_t n = read(hvc_fd, buf + len, sizeof(buf) - 1 - len);
        if (n <= 0)
            return 0; /* EAGAIN: all read; EOF: nothing more */
        len += (size_t)n;
        char *nl;
        while ((nl = memchr(buf, '\n', len))) {
            *nl = '\0';
            if (nl > buf && nl[-1] == '\r')
                nl[-1] = '\0';
            int off = strcmp(buf, "poweroff") == 0;
            len -= (size_t)(nl + 1 - buf);
            memmove(buf, nl + 1, len);
            if (off)
                return 1;
        }
        if (len == sizeof(buf) - 1)
            len = 0; /* an overlong line is noise: drop it */
    }
}

int main(void)
{
    sigset_t mask, orig;
    char err[256];

    /* Ctrl-Alt-Del becomes SIGINT to us instead of an immediate reboot. */
    (void)reboot(RB_DISABLE_CAD);
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGPWR);
    sigaddset(&mask, SIGHUP);
    sigprocmask(SIG_BLOCK, &mask, &orig);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);

    /* /dev is normally there (DEVTMPFS_MOUNT); mount it early so we can report. */
    if (access("/dev/ttyS0", F_OK) < 0)
        (void)mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    open_consoles();
    overlay_root();
    report("boot", "init");
    setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
    setenv("HOME", "/root", 1); /* the kernel gives PID 1 HOME=/; commands expect root's */
    umask(022);
    mount_all();
    (void)mkdir(GUEST_RUN_DIR, 0755);
    loopback_up();
    report("boot", "mounted");

    struct guest_config cfg;
    int listen_fd = -1;
    if (config_load(&cfg, err, sizeof(err)) < 0) {
        report_error(err);
        cfg.hostname = NULL;
        set_identity(NULL);
    } else {
        set_identity(cfg.hostname);
        for (size_t i = 0; i < cfg.n_env; i++)
            (void)putenv((char *)cfg.env[i]);
        report("boot", "config");
        /* The agent gets this environment (the config disk's env) as its commands' base,
         * and reports its own readiness (HELLO) on its channel. */
        agent_sigmask = &orig;
        agent_start();
        if (agent_pid > 0)
            report("boot", "agent");
        if (sshd_setup(&cfg, err, sizeof(err)) < 0 ||
            (listen_fd = sshd_listen(err, sizeof(err))) < 0) {
            report_error(err);
        } else {
            report("boot", "sshd");
            report("ready", NULL);
        }
    }

    for (;;) {
        struct pollfd p[3] = {
            {.fd = sfd, .events = POLLIN},
            {.fd = listen_fd, .events = POLLIN},
            {.fd = hvc_fd, .events = POLLIN},
        };
        int timeout = -1;
        if (agent_restart_at >= 0) {
            long left = agent_restart_at - now_ms();
            timeout = left > 0 ? (int)left : 0;
        }
        int np = poll(p, 3, timeout);
        if (agent_restart_at >= 0 && now_ms() >= agent_restart_at)
            agent_start();
        if (np < 0) {
            if (errno != EINTR)
                guest_log("poll: %s", strerror(errno));
            continue;
        }
        if (p[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof(si)) == sizeof(si)) {
                if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT || si.ssi_signo == SIGPWR)
                    power_off(sfd, strsignal((int)si.ssi_signo));
            }
            reap();
        }
        if (p[1].revents & POLLIN) {
            int conn;
            while ((conn = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
                if (sshd_spawn(conn, serial_fd, &orig) < 0)
                    guest_log("fork sshd: %s", strerror(errno));
                close(conn);
            }
        }
        if (p[2].revents & POLLIN && read_control())
            power_off(sfd, "poweroff from host");
        if (p[2].revents & (POLLHUP | POLLERR | POLLNVAL) && !(p[2].revents & POLLIN)) {
            /* Not expected of a tty we do not control; stop rather than spin.
             * SIGTERM/SIGINT still power off. */
            guest_log("hvc0 hung up; control channel closed");
            close(hvc_fd);
            hvc_fd = -1;
        }
    }
}
