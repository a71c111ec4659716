/* SPDX-License-Identifier: MIT */
/* The SSH session to a guest: TCP connect, handshake, pinned host key, key auth.
 * libssh2 runs in non-blocking mode and every wait is a poll() bounded by a deadline,
 * so a guest that stops answering can never hang the caller. */
#include "ssh-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <string.h>
#include <sys/socket.h>

#include "base64.h"
#include "error.h"
#include "util.h"

#define SSH_USER "root"
#define HOST_PUB_MAX 4096
/* Bound for the polite goodbye in smolvm_ssh_free: a dead guest must not delay it. */
#define SSH_CLOSE_GRACE_MS 1000

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_rc;

static void init_libssh2(void)
{
    /* libssh2_init is not thread-safe; libssh2_exit is never called (other users of
     * libssh2 in the process may still need it). */
    init_rc = libssh2_init(0);
}

int smolvm_ssh_wait(smolvm_ssh *s, int64_t deadline)
{
    struct pollfd p = {.fd = s->fd, .events = 0};
    int dir = libssh2_session_block_directions(s->session);
    int r;

    if (dir & LIBSSH2_SESSION_BLOCK_INBOUND)
        p.events |= POLLIN;
    if (dir & LIBSSH2_SESSION_BLOCK_OUTBOUND)
        p.events |= POLLOUT;
    if (!p.events)
        p.events = POLLIN;
    for (;;) {
        int left = smolvm_remaining_ms(deadline);

        if (left <= 0)
            return SMOLVM_SSH_RC_TIMEOUT;
        r = poll(&p, 1, left);
        if (r > 0)
            return 0;
        if (r == 0)
            return SMOLVM_SSH_RC_TIMEOUT;
        if (errno != EINTR)
            return LIBSSH2_ERROR_BAD_SOCKET;
        /* An interrupt ends the wait like a deadline: a command is then killed. */
        if (smolvm_interrupted())
            return SMOLVM_SSH_RC_TIMEOUT;
    }
}

/* Errors after which the transport's state is unknown: the session is done. */
static bool transport_error(int rc)
{
    switch (rc) {
    case LIBSSH2_ERROR_SOCKET_NONE:
    case LIBSSH2_ERROR_BANNER_RECV:
    case LIBSSH2_ERROR_BANNER_SEND:
    case LIBSSH2_ERROR_INVALID_MAC:
    case LIBSSH2_ERROR_KEX_FAILURE:
    case LIBSSH2_ERROR_SOCKET_SEND:
    case LIBSSH2_ERROR_KEY_EXCHANGE_FAILURE:
    case LIBSSH2_ERROR_TIMEOUT:
    case LIBSSH2_ERROR_DECRYPT:
    case LIBSSH2_ERROR_SOCKET_DISCONNECT:
    case LIBSSH2_ERROR_PROTO:
    case LIBSSH2_ERROR_SOCKET_TIMEOUT:
    case LIBSSH2_ERROR_SOCKET_RECV:
    case LIBSSH2_ERROR_ENCRYPT:
    case LIBSSH2_ERROR_BAD_SOCKET:
    case SMOLVM_SSH_RC_TIMEOUT: return true;
    default: return false;
    }
}

int smolvm_ssh_fail(smolvm_ssh *s, int rc, smolvm_error **err, const char *fmt, ...)
{
    _cleanup_free_ char *ctx = NULL;
    char *lmsg = NULL;
    va_list ap;

    va_start(ap, fmt);
    if (vasprintf(&ctx, fmt, ap) < 0)
        ctx = NULL;
    va_end(ap);
    if (transport_error(rc))
        s->broken = true;
    if (rc == SMOLVM_SSH_RC_TIMEOUT)
        return smolvm_err(err, SMOLVM_ETIMEDOUT, "%s: timed out", ctx ? ctx : "ssh");
    (void)libssh2_session_last_error(s->session, &lmsg, NULL, 0);
    if (rc == LIBSSH2_ERROR_SOCKET_DISCONNECT || rc == LIBSSH2_ERROR_SOCKET_RECV ||
        rc == LIBSSH2_ERROR_SOCKET_SEND)
        return smolvm_err(err, SMOLVM_ESSH, "%s: connection to '%s' lost (%s)", ctx ? ctx : "ssh",
                          s->peer, lmsg && *lmsg ? lmsg : "no details");
    return smolvm_err(err, SMOLVM_ESSH, "%s: %s", ctx ? ctx : "ssh",
                      lmsg && *lmsg ? lmsg : "ssh error");
}

int smolvm_ssh_usable(smolvm_ssh *s, smolvm_error **err)
{
    if (!s)
        return smolvm_err(err, SMOLVM_EINVAL, "no ssh session");
    if (s->broken)
        return smolvm_err(err, SMOLVM_ESSH, "ssh connection to '%s' is closed", s->peer);
    return 0;
}

/* ---------------------------------------------------------------- TCP */

static int connect_once(const struct sockaddr *sa, socklen_t salen, int64_t deadline, int *fd_out)
{
    _cleanup_close_ int fd = -1;
    struct pollfd p;
    socklen_t len = sizeof(int);
    int one = 1, soerr = 0, r;

    fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno;
    if (connect(fd, sa, salen) < 0) {
        if (errno != EINPROGRESS)
            return errno;
        p = (struct pollfd){.fd = fd, .events = POLLOUT};
        do {
            r = poll(&p, 1, smolvm_remaining_ms(deadline));
        } while (r < 0 && errno == EINTR);
        if (r < 0)
            return errno;
        if (r == 0)
            return ETIMEDOUT;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
            return errno;
        if (soerr)
            return soerr;
    }
    /* Commands are small request/response exchanges: Nagle would add 40 ms stalls. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    *fd_out = TAKE_FD(fd);
    return 0;
}

static int tcp_connect(const char *host, int port, int64_t deadline, int *fd_out,
                       smolvm_error **err)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char portstr[16];
    int backoff_ms = 5, e, r;

    (void)snprintf(portstr, sizeof(portstr), "%d", port);
    /* Numeric only: a name lookup would be a wait without a deadline. */
    r = getaddrinfo(host, portstr, &hints, &ai);
    if (r != 0)
        return smolvm_err(err, SMOLVM_EINVAL, "connect to '%s': not a numeric address (%s)", host,
                          gai_strerror(r));
    for (;;) {
        e = connect_once(ai->ai_addr, ai->ai_addrlen, deadline, fd_out);
        if (e != ECONNREFUSED || smolvm_remaining_ms(deadline) <= 0)
            break;
        /* The guest reported ready only once sshd's port was bound, so a refusal is a
         * race (e.g. a forward not yet in place), not a boot in progress: retry
         * quickly with a short backoff until the deadline. */
        (void)poll(NULL, 0,
                   backoff_ms < smolvm_remaining_ms(deadline) ? backoff_ms
                                                              : smolvm_remaining_ms(deadline));
        if (backoff_ms < 200)
            backoff_ms *= 2;
    }
    freeaddrinfo(ai);
    if (e == ETIMEDOUT)
        return smolvm_err(err, SMOLVM_ETIMEDOUT, "connect to '%s' port %d: timed out", host, port);
    if (e)
        return smolvm_err(err, SMOLVM_ESSH, "connect to '%s' port %d: %s", host, port, strerror(e));
    return 0;
}

/* ---------------------------------------------------------------- host key */

/* The key blob of an "ssh-ed25519 AAAA... [comment]" line. */
static int parse_host_pub(const char *line, unsigned char *blob, size_t *blob_len,
                          smolvm_error **err)
{
    static const char type[] = "ssh-ed25519 ";
    const char *b64, *end;
    long n;

    if (strlen(line) > HOST_PUB_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "pinned host key is too long");
    if (strncmp(line, type, sizeof(type) - 1) != 0)
        return smolvm_err(err, SMOLVM_EINVAL, "pinned host key is not an 'ssh-ed25519' key");
    b64 = line + sizeof(type) - 1;
    end = b64 + strcspn(b64, " \t\r\n");
    n = smolvm_base64_decode(blob, HOST_PUB_MAX, b64, (size_t)(end - b64));
    if (n < 0)
        return smolvm_err(err, SMOLVM_EINVAL, "pinned host key is not valid base64");
    *blob_len = (size_t)n;
    return 0;
}

static int check_host_key(smolvm_ssh *s, const char *host_pub, smolvm_error **err)
{
    unsigned char want[HOST_PUB_MAX];
    size_t want_len = 0, got_len = 0;
    int type = 0, r;
    const char *got;

    r = parse_host_pub(host_pub, want, &want_len, err);
    if (r < 0)
        return r;
    got = libssh2_session_hostkey(s->session, &got_len, &type);
    if (!got)
        return smolvm_err(err, SMOLVM_ESSH, "connect to '%s': server sent no host key", s->peer);
    /* Pinned, never trust-on-first-use: anything but the exact key generated for this
     * VM means we are not talking to its sshd. */
    if (type != LIBSSH2_HOSTKEY_TYPE_ED25519 || got_len != want_len ||
        memcmp(got, want, want_len) != 0)
        return smolvm_err(err, SMOLVM_ESSH,
                          "connect to '%s': host key does not match the one generated for "
                          "this vm (refusing to connect)",
                          s->peer);
    return 0;
}

/* ---------------------------------------------------------------- session */

int smolvm_ssh_connect(smolvm_ssh **out, const char *host, int port, const char *key_path,
                       const char *host_pub, int64_t deadline, smolvm_error **err)
{
    _cleanup_free_ char *pub_path = NULL;
    smolvm_ssh *s = NULL;
    int rc, r;

    if (!out || !host || !key_path || !host_pub)
        return smolvm_err(err, SMOLVM_EINVAL, "ssh connect: missing argument");
    if (port <= 0 || port > 65535)
        return smolvm_err(err, SMOLVM_EINVAL, "ssh connect: invalid port %d", port);
    (void)pthread_once(&init_once, init_libssh2);
    if (init_rc != 0)
        return smolvm_err(err, SMOLVM_ESSH, "initialise libssh2 failed");
    pub_path = smolvm_strdupf("%s.pub", key_path);
    s = calloc(1, sizeof(*s));
    if (!pub_path || !s) {
        free(s);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    s->fd = -1;
    s->peer = smolvm_strdupf("%s:%d", host, port);
    if (!s->peer) {
        r = smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        goto fail;
    }
    r = tcp_connect(host, port, deadline, &s->fd, err);
    if (r < 0)
        goto fail;
    s->session = libssh2_session_init();
    if (!s->session) {
        r = smolvm_err(err, SMOLVM_ENOMEM, "create ssh session: out of memory");
        goto fail;
    }
    libssh2_session_set_blocking(s->session, 0);
    /* Only ed25519 is pinned; asking for it makes a server with several host keys
     * present the one we can check. */
    (void)libssh2_session_method_pref(s->session, LIBSSH2_METHOD_HOSTKEY, "ssh-ed25519");
    SMOLVM_SSH_RETRY(s, deadline, rc, libssh2_session_handshake(s->session, s->fd));
    if (rc) {
        r = smolvm_ssh_fail(s, rc, err, "ssh handshake with '%s'", s->peer);
        goto fail;
    }
    r = check_host_key(s, host_pub, err);
    if (r < 0)
        goto fail;
    SMOLVM_SSH_RETRY(
        s, deadline, rc,
        libssh2_userauth_publickey_fromfile(s->session, SSH_USER, pub_path, key_path, NULL));
    if (rc) {
        r = smolvm_ssh_fail(s, rc, err, "authenticate as '%s' to '%s' with key '%s'", SSH_USER,
                            s->peer, key_path);
        if (r == SMOLVM_ESSH &&
            (rc == LIBSSH2_ERROR_FILE || rc == LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED))
            r = smolvm_err_hint(err, "is the key file readable and an openssh ed25519 key?");
        goto fail;
    }
    *out = s;
    return 0;
fail:
    /* Nothing polite is owed to a half-set-up session. */
    s->broken = true;
    (void)smolvm_ssh_free(s);
    return r;
}

smolvm_ssh *smolvm_ssh_free(smolvm_ssh *s)
{
    int64_t deadline;
    int rc;

    if (!s)
        return NULL;
    deadline = smolvm_now_ms() + SSH_CLOSE_GRACE_MS;
    if (s->session && !s->broken) {
        if (s->sftp) {
            SMOLVM_SSH_RETRY(s, deadline, rc, libssh2_sftp_shutdown(s->sftp));
            if (rc == 0)
                s->sftp = NULL;
        }
        SMOLVM_SSH_RETRY(s, deadline, rc,
                         libssh2_session_disconnect(s->session, "smolvm: closing"));
    }
    /* With the socket shut down, whatever libssh2 still wants to send fails at once
     * instead of waiting, so the frees below cannot block or return EAGAIN. */
    if (s->fd >= 0)
        (void)shutdown(s->fd, SHUT_RDWR);
    if (s->session) {
        if (s->sftp)
            (void)libssh2_sftp_shutdown(s->sftp);
        (void)libssh2_session_free(s->session);
    }
    if (s->fd >= 0)
        (void)close(s->fd);
    free(s->peer);
    free(s);
    return NULL;
}
