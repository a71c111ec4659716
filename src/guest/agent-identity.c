/* SPDX-License-Identifier: MIT */
/*
 * The `identity` op (docs/agent-protocol.md, "Identity"): what a clone of a template
 * must not share with its siblings. Parsed and checked here; applied by a hook
 * (agent_identity_apply in the guest, a recorder in the host tests), then the agent
 * forgets the template's process history.
 */
#define _GNU_SOURCE
#include "agent-internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/random.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ENTROPY_MIN 32
#define ENTROPY_MAX 512
#define RUN_DIR "/run/smolvm"

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* Standard base64, padding optional; the decoded length or -1. */
static long b64_decode(const char *in, uint8_t *out, size_t outlen)
{
    unsigned acc = 0;
    int bits = 0;
    size_t n = 0;
    for (; *in && *in != '='; in++) {
        int v = b64_value((unsigned char)*in);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n == outlen)
                return -1;
            out[n++] = (uint8_t)(acc >> bits);
        }
    }
    while (*in == '=')
        in++;
    return *in ? -1 : (long)n;
}

static int valid_hostname(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '.'))
            return 0;
    return 1;
}

static int parse_mac(const char *s, uint8_t mac[6])
{
    unsigned v[6];
    char tail;
    if (strlen(s) != 17 || sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%c", &v[0], &v[1], &v[2], &v[3], &v[4],
                                  &v[5], &tail) != 6)
        return -1;
    for (int i = 0; i < 6; i++)
        mac[i] = (uint8_t)v[i];
    return mac[0] & 1 ? -1 : 0; /* a multicast address is no interface's */
}

static int valid_ip(const char *s)
{
    struct in_addr a;
    return inet_pton(AF_INET, s, &a) == 1;
}

void identity_request(struct conn *c, uint32_t id, json_t *req)
{
    struct agent *a = c->agent;
    struct agent_identity ident = {.prefix = -1};
    uint8_t entropy[ENTROPY_MAX];
    const char *b64 = NULL, *code = "EIO", *where = "";
    long long time_ms = -1, prefix = -1;
    char err[512];
    json_t *net = json_object_get(req, "net");

    if (req_string(req, "entropy", &b64, err, sizeof(err)) < 0 ||
        req_int(req, "time_ms", 0, 1LL << 50, &time_ms, err, sizeof(err)) < 0 ||
        req_string(req, "hostname", &ident.hostname, err, sizeof(err)) < 0)
        goto invalid;
    if (b64) {
        long n = strlen(b64) <= 4 * ((ENTROPY_MAX + 2) / 3)
                     ? b64_decode(b64, entropy, sizeof(entropy))
                     : -1;
        if (n < ENTROPY_MIN) {
            snprintf(err, sizeof(err), "'entropy': expected base64 of %d..%d bytes", ENTROPY_MIN,
                     ENTROPY_MAX);
            goto invalid;
        }
        ident.entropy = entropy;
        ident.entropy_len = (size_t)n;
    }
    if (time_ms >= 0) {
        ident.has_time = 1;
        ident.time_ms = time_ms;
    }
    if (ident.hostname && !valid_hostname(ident.hostname)) {
        snprintf(err, sizeof(err), "'hostname': expected 1-63 of [A-Za-z0-9.-]");
        goto invalid;
    }
    if (net && !json_is_null(net)) {
        uint8_t mac[6];
        if (!json_is_object(net)) {
            snprintf(err, sizeof(err), "'net': expected an object");
            goto invalid;
        }
        if (req_string(net, "ip", &ident.ip, err, sizeof(err)) < 0 ||
            req_string(net, "gateway", &ident.gateway, err, sizeof(err)) < 0 ||
            req_string(net, "mac", &ident.mac, err, sizeof(err)) < 0 ||
            req_string(net, "dns", &ident.dns, err, sizeof(err)) < 0 ||
            req_int(net, "prefix", 0, 32, &prefix, err, sizeof(err)) < 0)
            goto invalid_net;
        if (!ident.ip || !valid_ip(ident.ip) || prefix < 0) {
            snprintf(err, sizeof(err), "'ip' and 'prefix' (0..32) are required, ip as a.b.c.d");
            goto invalid_net;
        }
        if ((ident.gateway && !valid_ip(ident.gateway)) || (ident.dns && !valid_ip(ident.dns))) {
            snprintf(err, sizeof(err), "'gateway' and 'dns': expected a.b.c.d");
            goto invalid_net;
        }
        if (ident.mac && parse_mac(ident.mac, mac) < 0) {
            snprintf(err, sizeof(err), "'mac': expected a unicast xx:xx:xx:xx:xx:xx");
            goto invalid_net;
        }
        ident.has_net = 1;
        ident.prefix = (int)prefix;
    }
    int rc = a->o.identity ? a->o.identity(&ident, a->o.payload, &code, err, sizeof(err))
                           : agent_identity_apply(&ident, NULL, &code, err, sizeof(err));
    memset(entropy, 0, sizeof(entropy));
    if (rc < 0) {
        conn_error(c, id, code, "identity: %s", err);
        return;
    }
    procs_clear(a);
    conn_send_json(c, SMOLVM_AGENT_REPLY, id, SMOLVM_AGENT_FIN, json_object());
    return;
invalid_net:
    where = "'net': ";
invalid:
    memset(entropy, 0, sizeof(entropy));
    conn_error(c, id, "EINVAL", "identity: %s%s", where, err);
}

/* ------------------------------------------------------------------ applying it */

static int fail(const char **code, char *err, size_t errlen, const char *what)
{
    int e = errno;
    *code = agent_errno_code(e);
    snprintf(err, errlen, "%s: %s", what, strerror(e));
    return -1;
}

static int write_text(const char *path, const char *text)
{
    char tmp[256];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return -1;
    size_t n = strlen(text);
    ssize_t w = write(fd, text, n);
    if (close(fd) < 0 || w != (ssize_t)n) {
        (void)unlink(tmp);
        return -1;
    }
    return rename(tmp, path);
}

static void sin_of(struct sockaddr *sa, const char *ip)
{
    struct sockaddr_in *in = (struct sockaddr_in *)sa;
    memset(in, 0, sizeof(*in));
    in->sin_family = AF_INET;
    (void)inet_pton(AF_INET, ip, &in->sin_addr);
}

static int apply_net(const struct agent_identity *id, const char **code, char *err, size_t errlen)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq ifr;
    int rc = -1;

    if (fd < 0)
        return fail(code, err, errlen, "socket");
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "eth0");
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0) {
        fail(code, err, errlen, "eth0");
        goto out;
    }
    short flags = ifr.ifr_flags;
    if (id->mac) {
        uint8_t mac[6];
        (void)parse_mac(id->mac, mac);
        /* The MAC changes only with the link down (which also drops its routes). */
        ifr.ifr_flags = (short)(flags & ~IFF_UP);
        if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0) {
            fail(code, err, errlen, "eth0 down");
            goto out;
        }
        memset(&ifr.ifr_hwaddr, 0, sizeof(ifr.ifr_hwaddr));
        ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
        memcpy(ifr.ifr_hwaddr.sa_data, mac, 6);
        if (ioctl(fd, SIOCSIFHWADDR, &ifr) < 0) {
            fail(code, err, errlen, "eth0 SIOCSIFHWADDR");
            goto out;
        }
    }
    ifr.ifr_flags = (short)(flags | IFF_UP);
    if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0) {
        fail(code, err, errlen, "eth0 up");
        goto out;
    }
    sin_of(&ifr.ifr_addr, id->ip);
    if (ioctl(fd, SIOCSIFADDR, &ifr) < 0) {
        fail(code, err, errlen, "eth0 SIOCSIFADDR");
        goto out;
    }
    struct sockaddr_in *m = (struct sockaddr_in *)&ifr.ifr_netmask;
    memset(m, 0, sizeof(*m));
    m->sin_family = AF_INET;
    m->sin_addr.s_addr = id->prefix ? htonl(~0u << (32 - id->prefix)) : 0;
    if (ioctl(fd, SIOCSIFNETMASK, &ifr) < 0) {
        fail(code, err, errlen, "eth0 SIOCSIFNETMASK");
        goto out;
    }
    if (id->gateway) {
        struct rtentry rt;
        memset(&rt, 0, sizeof(rt));
        sin_of(&rt.rt_dst, "0.0.0.0");
        sin_of(&rt.rt_genmask, "0.0.0.0");
        sin_of(&rt.rt_gateway, id->gateway);
        rt.rt_flags = RTF_UP | RTF_GATEWAY;
        rt.rt_dev = ifr.ifr_name;
        /* The old default route went with the old address (or the link down). */
        if (ioctl(fd, SIOCADDRT, &rt) < 0 && errno != EEXIST) {
            fail(code, err, errlen, "default route SIOCADDRT");
            goto out;
        }
    }
    if (id->dns) {
        char text[64];
        snprintf(text, sizeof(text), "nameserver %s\n", id->dns);
        if (write_text(RUN_DIR "/resolv.conf", text) < 0) {
            fail(code, err, errlen, RUN_DIR "/resolv.conf");
            goto out;
        }
    }
    rc = 0;
out:
    close(fd);
    return rc;
}

int agent_identity_apply(const struct agent_identity *id, void *payload, const char **code,
                         char *err, size_t errlen)
{
    (void)payload;
    if (id->entropy_len) {
        /* struct rand_pool_info: two ints, then the bytes */
        int pool[2 + ENTROPY_MAX / sizeof(int)];
        struct rand_pool_info *info = (struct rand_pool_info *)pool;
        int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
        info->entropy_count = (int)(id->entropy_len * 8); /* credited: the kernel reseeds */
        info->buf_size = (int)id->entropy_len;
        memcpy(&pool[2], id->entropy, id->entropy_len);
        int rc = fd < 0 ? -1 : ioctl(fd, RNDADDENTROPY, info);
        /* Credited entropy only reseeds the crng on the kernel's schedule (up to a
         * minute): a clone and its siblings would read the same bytes until then.
         * Reseed now. */
        if (rc == 0)
            rc = ioctl(fd, RNDRESEEDCRNG);
        int e = errno;
        memset(&pool, 0, sizeof(pool));
        if (fd >= 0)
            close(fd);
        errno = e;
        if (rc < 0)
            return fail(code, err, errlen, "RNDADDENTROPY");
    }
    if (id->has_time) {
        struct timespec ts = {.tv_sec = id->time_ms / 1000,
                              .tv_nsec = (id->time_ms % 1000) * 1000000};
        if (clock_settime(CLOCK_REALTIME, &ts) < 0)
            return fail(code, err, errlen, "clock_settime");
    }
    if (id->hostname) {
        char text[512];
        if (sethostname(id->hostname, strlen(id->hostname)) < 0)
            return fail(code, err, errlen, "sethostname");
        snprintf(text, sizeof(text), "%s\n", id->hostname);
        if (write_text(RUN_DIR "/hostname", text) < 0)
            return fail(code, err, errlen, RUN_DIR "/hostname");
        /* The same file our init writes at boot. */
        snprintf(text, sizeof(text),
                 "127.0.0.1\tlocalhost\n127.0.1.1\t%s\n"
                 "::1\tlocalhost ip6-localhost ip6-loopback\n",
                 id->hostname);
        if (write_text(RUN_DIR "/hosts", text) < 0)
            return fail(code, err, errlen, RUN_DIR "/hosts");
    }
    if (id->has_net && apply_net(id, code, err, errlen) < 0)
        return -1;
    return 0;
}
