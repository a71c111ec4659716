/* SPDX-License-Identifier: MIT */
/* The loopback forward proxy (proxy.h): listeners, connections, and the copy loop. */
#include "proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "error.h"

#define DEFAULT_MAX_CONNS 256
#define DEFAULT_BUF (64 * 1024)
#define DEFAULT_CONNECT_MS 10000

typedef struct half {
    char *buf;
    size_t len, off; /* bytes read from the source and not yet written */
    int eof;         /* the source sent FIN */
    int shut;        /* passed on: the sink's writing half is shut */
} half;

typedef struct fwd fwd;

typedef struct conn {
    struct conn *next;
    sv_proxy *p;
    fwd *f;
    int cfd, gfd;             /* client (host side), guest */
    int connecting;           /* the guest connect is in progress */
    int c_watched, g_watched; /* the fd is in the loop */
    int c_hup, g_hup;         /* the fd reported HUP: watched only while it has work */
    int64_t timer;
    half up;   /* client -> guest */
    half down; /* guest -> client */
} conn;

struct fwd {
    fwd *next;
    sv_proxy *p;
    int lfd;
    int paused; /* not accepting: the proxy is at its cap */
    struct sockaddr_in host, guest;
};

struct sv_proxy {
    sv_loop *loop;
    size_t max_conns, buf_size;
    int connect_ms;
    fwd *fwds;
    conn *conns;
    size_t n_conns, n_fwds;
};

size_t sv_proxy_connections(const sv_proxy *p)
{
    return p ? p->n_conns : 0;
}

int sv_proxy_new(sv_proxy **out, sv_loop *loop, const sv_proxy_options *o, smolvm_error **err)
{
    sv_proxy *p;

    if (!loop || (o && o->version != SV_PROXY_OPTIONS_VERSION))
        return smolvm_err(err, SMOLVM_EINVAL, "proxy: missing loop or unknown options version");
    if (o && (o->max_conns > SV_PROXY_MAX_CONNS || o->buf_size > SV_PROXY_MAX_BUF ||
              o->connect_timeout_ms < 0))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "proxy: options out of range (at most %d connections, %d bytes of "
                          "buffer per direction)",
                          SV_PROXY_MAX_CONNS, SV_PROXY_MAX_BUF);
    if (!(p = calloc(1, sizeof(*p))))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    p->loop = loop;
    p->max_conns = o && o->max_conns ? o->max_conns : DEFAULT_MAX_CONNS;
    p->buf_size = o && o->buf_size ? o->buf_size : DEFAULT_BUF;
    p->connect_ms = o && o->connect_timeout_ms ? o->connect_timeout_ms : DEFAULT_CONNECT_MS;
    *out = p;
    return 0;
}

/* ---------------------------------------------------------------- connections */

static void resume_listeners(sv_proxy *p)
{
    for (fwd *f = p->fwds; f && p->n_conns < p->max_conns; f = f->next)
        if (f->paused && sv_loop_mod(p->loop, f->lfd, EPOLLIN) == 0)
            f->paused = 0;
}

static void close_fd(sv_loop *loop, int fd, int reset)
{
    if (fd < 0)
        return;
    if (reset) { /* tell the peer the connection broke (RST), not that it ended */
        struct linger l = {1, 0};

        (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    }
    sv_loop_del(loop, fd);
    (void)close(fd);
}

static void conn_close(conn *c, int reset)
{
    sv_proxy *p = c->p;

    for (conn **pp = &p->conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    if (c->timer > 0)
        sv_loop_cancel(p->loop, c->timer);
    close_fd(p->loop, c->cfd, reset);
    close_fd(p->loop, c->gfd, reset);
    free(c->up.buf);
    free(c->down.buf);
    free(c);
    p->n_conns--;
    resume_listeners(p);
}

/* Move one direction along: read when its buffer is empty, write what it holds, pass
 * an EOF on once everything before it is written. -1 on a broken connection. */
static int pump(sv_proxy *p, int src, int dst, half *h)
{
    if (h->len == 0 && !h->eof) {
        ssize_t n = recv(src, h->buf, p->buf_size, MSG_DONTWAIT);

        if (n > 0) {
            h->len = (size_t)n;
            h->off = 0;
        } else if (n == 0) {
            h->eof = 1;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            return -1;
        }
    }
    if (h->len > 0) {
        ssize_t w = send(dst, h->buf + h->off, h->len, MSG_DONTWAIT | MSG_NOSIGNAL);

        if (w > 0) {
            h->off += (size_t)w;
            h->len -= (size_t)w;
        } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            return -1;
        }
    }
    if (h->eof && h->len == 0 && !h->shut) {
        if (shutdown(dst, SHUT_WR) < 0 && errno != ENOTCONN)
            return -1;
        h->shut = 1;
    }
    return 0;
}

/* Watch for what each side can do next: read a source whose buffer is empty, write a
 * sink that has bytes waiting. */
static void on_conn(sv_loop *loop, int fd, uint32_t events, void *data);

/* A socket whose halves are both shut reports HUP on every wait, whatever it is asked
 * for: such a socket stays in the loop only while there is something to do with it
 * (data left to read), and is added back when there is. */
static int watch(conn *c, int fd, uint32_t ev, int *watched, int hup)
{
    sv_loop *loop = c->p->loop;

    if (!ev && hup) {
        if (*watched)
            sv_loop_del(loop, fd);
        *watched = 0;
        return 0;
    }
    if (!*watched) {
        if (sv_loop_add(loop, fd, ev, on_conn, c) < 0)
            return -1;
        *watched = 1;
        return 0;
    }
    return sv_loop_mod(loop, fd, ev);
}

static int rearm(conn *c)
{
    uint32_t cev = (!c->up.eof && c->up.len == 0 ? EPOLLIN : 0) | (c->down.len ? EPOLLOUT : 0);
    uint32_t gev = (!c->down.eof && c->down.len == 0 ? EPOLLIN : 0) | (c->up.len ? EPOLLOUT : 0);

    if (watch(c, c->cfd, cev, &c->c_watched, c->c_hup) < 0 ||
        watch(c, c->gfd, gev, &c->g_watched, c->g_hup) < 0)
        return -1;
    return 0;
}

static void on_conn(sv_loop *loop, int fd, uint32_t events, void *data)
{
    conn *c = data;
    sv_proxy *p = c->p;

    (void)loop;
    if (c->connecting) {
        int soerr = 0;
        socklen_t sl = sizeof(soerr);

        if (fd == c->cfd) { /* the client gave up while the guest was being reached */
            if (events & (EPOLLERR | EPOLLHUP))
                conn_close(c, 1);
            return;
        }
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        if (getsockopt(c->gfd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr) {
            conn_close(c, 1); /* the guest refused or is unreachable: so is the client */
            return;
        }
        c->connecting = 0;
        if (c->timer > 0)
            sv_loop_cancel(p->loop, c->timer);
        c->timer = 0;
    }
    if (pump(p, c->cfd, c->gfd, &c->up) < 0 || pump(p, c->gfd, c->cfd, &c->down) < 0) {
        conn_close(c, 1);
        return;
    }
    if (c->up.shut && c->down.shut) { /* both ended in order */
        conn_close(c, 0);
        return;
    }
    if (events & EPOLLERR) {
        conn_close(c, 1);
        return;
    }
    if (events & EPOLLHUP) {
        if (fd == c->cfd)
            c->c_hup = 1;
        else
            c->g_hup = 1;
    }
    if (rearm(c) < 0)
        conn_close(c, 1);
}

static void on_connect_timeout(sv_loop *loop, void *data)
{
    conn *c = data;

    (void)loop;
    c->timer = 0;
    if (c->connecting)
        conn_close(c, 1);
}

static void accept_one(fwd *f, int cfd)
{
    sv_proxy *p = f->p;
    conn *c = calloc(1, sizeof(*c));
    int r;

    if (c)
        c->gfd = -1;
    if (!c || !(c->up.buf = malloc(p->buf_size)) || !(c->down.buf = malloc(p->buf_size)))
        goto fail;
    c->p = p;
    c->f = f;
    c->cfd = cfd;
    c->gfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->gfd < 0)
        goto fail;
    r = connect(c->gfd, (struct sockaddr *)&f->guest, sizeof(f->guest));
    if (r < 0 && errno != EINPROGRESS)
        goto fail;
    c->connecting = 1;
    if (sv_loop_add(p->loop, c->cfd, 0, on_conn, c) < 0)
        goto fail;
    if (sv_loop_add(p->loop, c->gfd, EPOLLOUT, on_conn, c) < 0) {
        sv_loop_del(p->loop, c->cfd);
        goto fail;
    }
    c->c_watched = c->g_watched = 1;
    c->timer = sv_loop_timer(p->loop, sv_now_ms() + p->connect_ms, on_connect_timeout, c);
    if (c->timer < 0)
        c->timer = 0; /* no deadline timer: the kernel's connect timeout still ends it */
    c->next = p->conns;
    p->conns = c;
    p->n_conns++;
    return;
fail:
    if (c) {
        if (c->gfd >= 0)
            (void)close(c->gfd);
        free(c->up.buf);
        free(c->down.buf);
        free(c);
    }
    close_fd(p->loop, cfd, 1);
}

static void on_listen(sv_loop *loop, int fd, uint32_t events, void *data)
{
    fwd *f = data;
    sv_proxy *p = f->p;

    (void)events;
    while (p->n_conns < p->max_conns) {
        int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (cfd < 0)
            return; /* EAGAIN, or an aborted connection: nothing to do */
        accept_one(f, cfd);
    }
    /* at the cap: the rest wait in the backlog until a connection ends */
    for (fwd *g = p->fwds; g; g = g->next)
        if (!g->paused && sv_loop_mod(loop, g->lfd, 0) == 0)
            g->paused = 1;
}

/* ---------------------------------------------------------------- forwards */

static int parse_addr(const char *text, int port, const char *what, struct sockaddr_in *out,
                      smolvm_error **err)
{
    memset(out, 0, sizeof(*out));
    out->sin_family = AF_INET;
    if (!text || inet_pton(AF_INET, text, &out->sin_addr) != 1)
        return smolvm_err(err, SMOLVM_EINVAL, "proxy: invalid %s address '%s'", what,
                          text ? text : "(null)");
    if (port < 1 || port > 65535)
        return smolvm_err(err, SMOLVM_EINVAL, "proxy: invalid %s port '%d' (expected 1..65535)",
                          what, port);
    out->sin_port = htons((uint16_t)port);
    return 0;
}

static fwd *find_fwd(sv_proxy *p, const struct sockaddr_in *host)
{
    for (fwd *f = p->fwds; f; f = f->next)
        if (f->host.sin_addr.s_addr == host->sin_addr.s_addr && f->host.sin_port == host->sin_port)
            return f;
    return NULL;
}

int sv_proxy_add(sv_proxy *p, const char *host_addr, int host_port, const char *guest_ip,
                 int guest_port, smolvm_error **err)
{
    struct sockaddr_in host, guest;
    fwd *f;
    int r, one = 1;
    char shown[INET_ADDRSTRLEN];

    if (!host_addr)
        host_addr = "127.0.0.1";
    if ((r = parse_addr(host_addr, host_port, "host", &host, err)) < 0 ||
        (r = parse_addr(guest_ip, guest_port, "guest", &guest, err)) < 0)
        return r;
    (void)inet_ntop(AF_INET, &host.sin_addr, shown, sizeof(shown));
    if (find_fwd(p, &host))
        return smolvm_err(err, SMOLVM_EEXIST, "proxy: '%s:%d' is already forwarded", shown,
                          host_port);
    if (p->n_fwds >= SV_PROXY_MAX_FORWARDS)
        return smolvm_err(err, SMOLVM_ENOSPC, "proxy: too many forwards (at most %d)",
                          SV_PROXY_MAX_FORWARDS);
    if (!(f = calloc(1, sizeof(*f))))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    f->p = p;
    f->host = host;
    f->guest = guest;
    f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (f->lfd < 0) {
        r = smolvm_err_errno(err, errno, "proxy: socket");
        goto fail;
    }
    /* REUSEADDR: connections of an earlier forward in TIME_WAIT do not block it */
    (void)setsockopt(f->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(f->lfd, (struct sockaddr *)&host, sizeof(host)) < 0) {
        int e = errno;

        r = e == EADDRINUSE ? smolvm_err(err, SMOLVM_EEXIST, "proxy: host port '%s:%d' is in use",
                                         shown, host_port)
                            : smolvm_err_errno(err, e, "proxy: bind '%s:%d'", shown, host_port);
        goto fail;
    }
    if (listen(f->lfd, 128) < 0) {
        r = smolvm_err_errno(err, errno, "proxy: listen on '%s:%d'", shown, host_port);
        goto fail;
    }
    f->paused = p->n_conns >= p->max_conns;
    if ((r = sv_loop_add(p->loop, f->lfd, f->paused ? 0 : EPOLLIN, on_listen, f)) < 0) {
        r = smolvm_err_errno(err, -r, "proxy: watch '%s:%d'", shown, host_port);
        goto fail;
    }
    f->next = p->fwds;
    p->fwds = f;
    p->n_fwds++;
    return 0;
fail:
    if (f->lfd >= 0)
        (void)close(f->lfd);
    free(f);
    return r;
}

static void fwd_close(sv_proxy *p, fwd *f)
{
    for (conn *c = p->conns, *next; c; c = next) {
        next = c->next;
        if (c->f == f)
            conn_close(c, 1);
    }
    close_fd(p->loop, f->lfd, 0);
    free(f);
    p->n_fwds--;
}

int sv_proxy_remove(sv_proxy *p, const char *host_addr, int host_port)
{
    struct sockaddr_in host;

    if (parse_addr(host_addr ? host_addr : "127.0.0.1", host_port, "host", &host, NULL) < 0)
        return SMOLVM_EINVAL;
    for (fwd **pp = &p->fwds; *pp; pp = &(*pp)->next) {
        fwd *f = *pp;

        if (f->host.sin_addr.s_addr == host.sin_addr.s_addr && f->host.sin_port == host.sin_port) {
            *pp = f->next;
            fwd_close(p, f);
            resume_listeners(p);
            return 0;
        }
    }
    return SMOLVM_ENOENT;
}

sv_proxy *sv_proxy_free(sv_proxy *p)
{
    if (!p)
        return NULL;
    while (p->conns)
        conn_close(p->conns, 1);
    while (p->fwds) {
        fwd *f = p->fwds;

        p->fwds = f->next;
        fwd_close(p, f);
    }
    free(p);
    return NULL;
}
