/* SPDX-License-Identifier: MIT */
/*
 * Host-side helpers of smolvm.core for the `smolvm` command and the recipe runner
 * (lua/smolvm/session.lua, recipe.lua): what Lua's standard library cannot do.
 *
 *   tty_raw(fd)        -> raw | nil, msg, code   the terminal in raw mode; raw:restore()
 *                                                (also __gc/__close, exit, SIGINT/TERM)
 *   tty_size(fd)       -> rows, cols | nil, msg, code
 *   winch(on)          -> true       watch SIGWINCH (poll then says when it came)
 *   poll(fds, ms)      -> ready, winch | nil, "interrupted", "EINTR"
 *   read_fd(fd, max)   -> data ("" at end of file) | nil, msg, code ("EAGAIN")
 *   mkdtemp(prefix)    -> path | nil, msg, code
 *   follow(path)       -> follower: f:read(ms) -> chunk | nil, msg, code; f:close()
 *
 * One terminal is raw at a time (a process has one). Its saved mode is kept here so
 * that smolvm-lua's signal handler can put it back at once (tcsetattr is
 * async-signal-safe) and an exit that skips the Lua side still does (atexit).
 *
 * follow() reads a file as it grows and across its rotation (the supervisor renames
 * console.log to console.log.1 and starts a new console.log): inotify on the
 * directory wakes it, nothing polls on a timer. When the directory itself goes (the
 * VM was deleted) read says so ("ENOENT").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "binding.h"

#define RAW_MT "smolvm.rawtty"
#define FOLLOW_MT "smolvm.follow"
#define POLL_MAX 64
#define READ_MAX (1024 * 1024)
#define FOLLOW_CHUNK 65536

static const struct {
    int e;
    const char *code;
} codes[] = {
    {EAGAIN, "EAGAIN"}, {ENOENT, "ENOENT"}, {EINTR, "EINTR"},
    {ENOTTY, "ENOTTY"}, {EACCES, "EPERM"},  {EPERM, "EPERM"},
    {ENOMEM, "ENOMEM"}, {ENOSPC, "ENOSPC"}, {EINVAL, "EINVAL"},
};

/* nil, "what: strerror", code (a SMOLVM-style name where one fits, else "EIO"). */
static int push_errno(lua_State *L, const char *what, int e)
{
    const char *code = "EIO";
    size_t i;

    for (i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
        if (codes[i].e == e)
            code = codes[i].code;
    lua_pushnil(L);
    if (e == EINTR)
        lua_pushstring(L, what);
    else
        lua_pushfstring(L, "%s: %s", what, strerror(e));
    lua_pushstring(L, code);
    return 3;
}

static int check_fd(lua_State *L, int idx)
{
    lua_Integer fd = luaL_checkinteger(L, idx);

    luaL_argcheck(L, fd >= 0 && fd <= INT_MAX, idx, "not a file descriptor");
    return (int)fd;
}

/* ---------------------------------------------------------------- raw terminal */

static struct termios saved_mode;
static volatile sig_atomic_t saved_fd = -1;
static int atexit_done;

void smolvm_lua_tty_restore(void)
{
    int fd = saved_fd;

    if (fd >= 0) {
        saved_fd = -1;
        (void)tcsetattr(fd, TCSANOW, &saved_mode);
    }
}

typedef struct rawtty {
    int fd; /* -1 once restored */
} rawtty;

static void raw_restore(rawtty *r)
{
    if (r->fd >= 0 && saved_fd == r->fd)
        smolvm_lua_tty_restore();
    r->fd = -1;
}

static int l_tty_raw(lua_State *L)
{
    int fd = check_fd(L, 1);
    struct termios raw;
    rawtty *r;

    if (saved_fd >= 0)
        return luaL_error(L, "tty_raw: a terminal is already in raw mode");
    r = lua_newuserdata(L, sizeof(*r));
    r->fd = -1;
    luaL_setmetatable(L, RAW_MT);
    if (tcgetattr(fd, &saved_mode) < 0)
        return push_errno(L, "terminal mode", errno);
    raw = saved_mode;
    cfmakeraw(&raw);
    if (!atexit_done) {
        atexit_done = 1;
        (void)atexit(smolvm_lua_tty_restore);
    }
    saved_fd = fd;
    if (tcsetattr(fd, TCSANOW, &raw) < 0) {
        int e = errno;

        saved_fd = -1;
        return push_errno(L, "raw terminal mode", e);
    }
    r->fd = fd;
    return 1;
}

static int l_raw_restore(lua_State *L)
{
    raw_restore(luaL_checkudata(L, 1, RAW_MT));
    lua_pushboolean(L, 1);
    return 1;
}

static int l_raw_gc(lua_State *L)
{
    rawtty *r = lua_touserdata(L, 1);

    if (r)
        raw_restore(r);
    return 0;
}

static int l_tty_size(lua_State *L)
{
    struct winsize ws;

    if (ioctl(check_fd(L, 1), TIOCGWINSZ, &ws) < 0)
        return push_errno(L, "terminal size", errno);
    if (ws.ws_row == 0 || ws.ws_col == 0)
        return push_errno(L, "terminal size", ENOTTY);
    lua_pushinteger(L, ws.ws_row);
    lua_pushinteger(L, ws.ws_col);
    return 2;
}

/* ---------------------------------------------------------------- SIGWINCH */

static int winch_pipe[2] = {-1, -1};
static int winch_on;
static struct sigaction winch_old;

static void on_winch(int sig)
{
    int e = errno;

    (void)sig;
    if (winch_pipe[1] >= 0)
        (void)!write(winch_pipe[1], "w", 1);
    errno = e;
}

static int l_winch(lua_State *L)
{
    int on = lua_toboolean(L, 1);
    struct sigaction sa;

    if (on && !winch_on) {
        if (winch_pipe[0] < 0 && pipe2(winch_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
            return push_errno(L, "SIGWINCH pipe", errno);
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_winch;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = SA_RESTART;
        if (sigaction(SIGWINCH, &sa, &winch_old) < 0)
            return push_errno(L, "SIGWINCH handler", errno);
        winch_on = 1;
    } else if (!on && winch_on) {
        (void)sigaction(SIGWINCH, &winch_old, NULL);
        winch_on = 0;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* Empty the SIGWINCH pipe; whether anything was in it. */
static int winch_drain(void)
{
    char buf[64];
    int got = 0;

    if (winch_pipe[0] < 0)
        return 0;
    while (read(winch_pipe[0], buf, sizeof(buf)) > 0)
        got = 1;
    return got;
}

/* ---------------------------------------------------------------- poll */

static int l_poll(lua_State *L)
{
    struct pollfd p[POLL_MAX + 1];
    lua_Integer ms = luaL_checkinteger(L, 2);
    int n, i, r, winch;

    luaL_checktype(L, 1, LUA_TTABLE);
    n = (int)lua_rawlen(L, 1);
    luaL_argcheck(L, n <= POLL_MAX, 1, "too many descriptors");
    for (i = 0; i < n; i++) {
        lua_rawgeti(L, 1, i + 1);
        p[i].fd = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : -1;
        p[i].events = POLLIN;
        p[i].revents = 0;
        lua_pop(L, 1);
        if (p[i].fd < 0) {
            p[i].fd = -1;
            ms = 0; /* no connection: the caller's read reports it now */
        }
    }
    p[n].fd = winch_on ? winch_pipe[0] : -1;
    p[n].events = POLLIN;
    p[n].revents = 0;
    if (ms > INT_MAX)
        ms = INT_MAX;
    r = poll(p, (nfds_t)n + 1, ms < 0 ? -1 : (int)ms);
    if (r < 0 && errno != EINTR)
        return push_errno(L, "poll", errno);
    winch = winch_on && winch_drain();
    if (r < 0 && !winch)
        return push_errno(L, "interrupted", EINTR);
    lua_createtable(L, n, 0);
    for (i = 0; i < n; i++) {
        lua_pushboolean(L, p[i].fd < 0 || (r > 0 && (p[i].revents & (POLLIN | POLLHUP | POLLERR))));
        lua_rawseti(L, -2, i + 1);
    }
    lua_pushboolean(L, winch);
    return 2;
}

/* ---------------------------------------------------------------- read, mkdtemp */

static int l_read_fd(lua_State *L)
{
    int fd = check_fd(L, 1);
    lua_Integer max = luaL_optinteger(L, 2, 65536);
    char *buf;
    ssize_t n;

    luaL_argcheck(L, max > 0 && max <= READ_MAX, 2, "size out of range");
    buf = lua_newuserdata(L, (size_t)max); /* collected with the call's frame */
    do
        n = read(fd, buf, (size_t)max);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return push_errno(L, "read", errno);
    lua_pushlstring(L, buf, (size_t)n);
    return 1;
}

static int l_mkdtemp(lua_State *L)
{
    const char *prefix = luaL_checkstring(L, 1);
    size_t len = strlen(prefix);
    char *tmpl;

    luaL_argcheck(L, len > 0 && len < PATH_MAX - 7, 1, "prefix length out of range");
    tmpl = lua_newuserdata(L, len + 7);
    memcpy(tmpl, prefix, len);
    memcpy(tmpl + len, "XXXXXX", 7);
    if (!mkdtemp(tmpl))
        return push_errno(L, "mkdtemp", errno);
    lua_pushstring(L, tmpl);
    return 1;
}

/* ---------------------------------------------------------------- follow */

typedef struct follower {
    int fd;    /* the file being read, -1 while there is none */
    dev_t dev; /* ... and which file it is */
    ino_t ino;
    int ifd;    /* inotify on the directory, -1 once closed */
    int gone;   /* the directory was removed */
    char *path; /* the name being followed */
} follower;

static void follow_close(follower *f)
{
    if (f->fd >= 0)
        (void)close(f->fd);
    f->fd = -1;
    if (f->ifd >= 0)
        (void)close(f->ifd);
    f->ifd = -1;
    free(f->path);
    f->path = NULL;
}

/* Open the followed name if it exists now (from its start). */
static void follow_open_file(follower *f)
{
    struct stat st;
    int fd = open(f->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);

    if (fd < 0)
        return;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        (void)close(fd);
        return;
    }
    f->fd = fd;
    f->dev = st.st_dev;
    f->ino = st.st_ino;
}

/* The name now points at another file (rotation) or at none. */
static int follow_replaced(follower *f)
{
    struct stat st;

    if (stat(f->path, &st) < 0)
        return 1;
    return st.st_dev != f->dev || st.st_ino != f->ino;
}

static int l_follow(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    follower *f = lua_newuserdata(L, sizeof(*f));
    char *dir, *slash;

    f->fd = f->ifd = -1;
    f->gone = 0;
    f->path = NULL;
    luaL_setmetatable(L, FOLLOW_MT);
    if (!(f->path = strdup(path)) || !(dir = strdup(path)))
        return push_errno(L, "follow", ENOMEM);
    slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        strcpy(dir, ".");
    f->ifd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    if (f->ifd < 0 ||
        inotify_add_watch(f->ifd, dir,
                          IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE |
                              IN_DELETE_SELF | IN_MOVE_SELF | IN_CLOSE_WRITE) < 0) {
        int e = errno;

        free(dir);
        follow_close(f);
        return push_errno(L, "watch the log's directory", e);
    }
    free(dir);
    follow_open_file(f);
    return 1;
}

/* Read what the inotify descriptor holds; notes the directory's removal. */
static void follow_drain(follower *f)
{
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t n;

    while ((n = read(f->ifd, buf, sizeof(buf))) > 0) {
        char *p = buf;

        while (p + sizeof(struct inotify_event) <= buf + n) {
            struct inotify_event *ev = (struct inotify_event *)p;

            if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED))
                f->gone = 1;
            p += sizeof(*ev) + ev->len;
        }
    }
}

static int64_t mono_ms(void)
{
    struct timespec ts;

    (void)clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* f:read(timeout_ms) -> chunk | nil, msg, code ("ETIMEDOUT": nothing new in time;
 * "ENOENT": the directory was removed; "EINTR": a signal came). timeout < 0 waits
 * without limit, 0 only looks. */
static int l_follow_read(lua_State *L)
{
    follower *f = luaL_checkudata(L, 1, FOLLOW_MT);
    lua_Integer ms = luaL_optinteger(L, 2, -1);
    int64_t deadline = ms < 0 ? -1 : mono_ms() + (ms > INT_MAX ? INT_MAX : ms);
    char buf[FOLLOW_CHUNK];

    if (f->ifd < 0)
        smolvm_lua_closed_error(L, "follower");
    for (;;) {
        struct pollfd p = {.fd = f->ifd, .events = POLLIN};
        int64_t left;
        int r;

        if (f->fd < 0)
            follow_open_file(f);
        if (f->fd >= 0) {
            ssize_t n = read(f->fd, buf, sizeof(buf));
            struct stat st;

            if (n > 0) {
                lua_pushlstring(L, buf, (size_t)n);
                return 1;
            }
            if (n < 0 && errno != EAGAIN && errno != EINTR)
                return push_errno(L, "read the log", errno);
            /* At the end: truncated in place (start again), or replaced by a new file
             * (everything written to the old one before the switch is read by now). */
            if (fstat(f->fd, &st) == 0 && lseek(f->fd, 0, SEEK_CUR) > st.st_size) {
                (void)lseek(f->fd, 0, SEEK_SET);
                continue;
            }
            if (follow_replaced(f)) {
                /* The old file may have grown between the end read above and the
                 * switch: take that first (nothing is written to it after). */
                n = read(f->fd, buf, sizeof(buf));
                if (n > 0) {
                    lua_pushlstring(L, buf, (size_t)n);
                    return 1;
                }
                (void)close(f->fd);
                f->fd = -1;
                follow_open_file(f);
                if (f->fd >= 0)
                    continue;
            }
        }
        if (f->gone) {
            lua_pushnil(L);
            lua_pushliteral(L, "the log's directory was removed");
            lua_pushliteral(L, "ENOENT");
            return 3;
        }
        left = deadline < 0 ? -1 : deadline - mono_ms();
        if (deadline >= 0 && left <= 0)
            break;
        r = poll(&p, 1, left < 0 ? -1 : (int)left);
        if (r < 0 && errno == EINTR)
            return push_errno(L, "interrupted", EINTR);
        if (r < 0)
            return push_errno(L, "poll", errno);
        if (r == 0)
            break;
        follow_drain(f); /* then look at the file again */
    }
    lua_pushnil(L);
    lua_pushliteral(L, "timed out");
    lua_pushliteral(L, "ETIMEDOUT");
    return 3;
}

static int l_follow_close(lua_State *L)
{
    follow_close(luaL_checkudata(L, 1, FOLLOW_MT));
    lua_pushboolean(L, 1);
    return 1;
}

static int l_follow_gc(lua_State *L)
{
    follower *f = lua_touserdata(L, 1);

    if (f)
        follow_close(f);
    return 0;
}

/* ---------------------------------------------------------------- registration */

static const luaL_Reg hostio_funcs[] = {
    {"tty_raw", l_tty_raw}, {"tty_size", l_tty_size}, {"winch", l_winch},   {"poll", l_poll},
    {"read_fd", l_read_fd}, {"mkdtemp", l_mkdtemp},   {"follow", l_follow}, {NULL, NULL},
};

static const luaL_Reg raw_methods[] = {{"restore", l_raw_restore}, {NULL, NULL}};
static const luaL_Reg follow_methods[] = {
    {"read", l_follow_read}, {"close", l_follow_close}, {NULL, NULL}};

static void new_type(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc)
{
    luaL_newmetatable(L, name);
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__close");
    lua_createtable(L, 0, 2);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

void smolvm_lua_open_hostio(lua_State *L)
{
    new_type(L, RAW_MT, raw_methods, l_raw_gc);
    new_type(L, FOLLOW_MT, follow_methods, l_follow_gc);
    luaL_setfuncs(L, hostio_funcs, 0);
}
