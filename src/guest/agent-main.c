/* SPDX-License-Identifier: MIT */
/*
 * smolvm-agent: the guest side of the agent protocol (docs/agent-protocol.md),
 * installed as /usr/sbin/smolvm-agent and started by our PID 1 (init.c) with the VM's
 * environment. Finds its channel to the host, then serves it forever:
 *   1. the virtio-serial port named org.smolvm.agent.0 (/sys/class/virtio-ports/X/name,
 *      device /dev/X), opened non-blocking; the host may come and go;
 *   2. else vsock: connect to the host (CID 2) port 1024, again whenever it drops
 *      (Firecracker forwards a guest-initiated connection to <uds>_1024).
 * Exit status 3: no channel at all (init does not restart it then).
 */
#define _GNU_SOURCE
#include "agent.h"
#include "agent-proto.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define EXIT_NO_CHANNEL 3

static int find_port(char *dev, size_t devlen)
{
    DIR *d = opendir("/sys/class/virtio-ports");
    struct dirent *de;
    int found = 0;
    if (!d)
        return 0;
    while (!found && (de = readdir(d))) {
        char path[512], name[128];
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", de->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, name, sizeof(name) - 1);
        close(fd);
        if (n <= 0)
            continue;
        name[n] = '\0';
        name[strcspn(name, "\n")] = '\0';
        if (strcmp(name, SMOLVM_AGENT_PORT_NAME) == 0) {
            snprintf(dev, devlen, "/dev/%s", de->d_name);
            found = 1;
        }
    }
    closedir(d);
    return found;
}

/* Is there a guest-to-host vsock transport (a virtio-vsock device)? */
static int have_vsock(void)
{
    unsigned int cid = VMADDR_CID_ANY;
    int fd = open("/dev/vsock", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    int rc = ioctl(fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid);
    close(fd);
    return rc == 0 && cid != VMADDR_CID_ANY && cid > VMADDR_CID_HOST;
}

static int vsock_connect(void *payload)
{
    (void)payload;
    struct sockaddr_vm sa = {
        .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = SMOLVM_AGENT_VSOCK_PORT};
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int main(int argc, char **argv)
{
    struct agent_options o = {.listen_fd = -1};
    char dev[300];

    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN);
    /* 0-2 must exist so that pipes and ptys never land on them. */
    for (int fd = open("/dev/null", O_RDWR); fd >= 0 && fd <= 2; fd = open("/dev/null", O_RDWR))
        ;
    /* The base environment of commands is ours, from init (the config disk's env). */
    if (!getenv("HOME"))
        setenv("HOME", "/root", 1);
    if (!getenv("PATH"))
        setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);

    if (find_port(dev, sizeof(dev))) {
        int fd = open(dev, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
            fprintf(stderr, "smolvm-agent: open %s: %s\n", dev, strerror(errno));
            return 1;
        }
        fprintf(stderr, "smolvm-agent: serving %s (%s)\n", dev, SMOLVM_AGENT_PORT_NAME);
        return agent_run(&o, fd, AGENT_CHANNEL_PORT) < 0 ? 1 : 0;
    }
    if (have_vsock()) {
        fprintf(stderr, "smolvm-agent: serving vsock port %d on the host\n",
                SMOLVM_AGENT_VSOCK_PORT);
        o.connect = vsock_connect;
        return agent_run(&o, -1, AGENT_CHANNEL_SOCKET) < 0 ? 1 : 0;
    }
    fprintf(stderr, "smolvm-agent: no channel (no virtio-serial port '%s', no vsock device)\n",
            SMOLVM_AGENT_PORT_NAME);
    return EXIT_NO_CHANNEL;
}
