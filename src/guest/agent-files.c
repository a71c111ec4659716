/* SPDX-License-Identifier: MIT */
/*
 * File operations (docs/agent-protocol.md, "Files"): read_file and write_file are
 * streams paced by the windows; stat, list, mkdir and remove answer at once. The agent
 * is root in the guest and follows the guest's permissions and symlinks; what it
 * sends back is bounded (a frame, 10000 list entries) and names are valid UTF-8.
 */
#define _GNU_SOURCE
#include "agent-internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define READ_MAX_DEFAULT (256LL * 1024 * 1024)
#define PATH_BUF (2 * SMOLVM_AGENT_PATH_MAX + 64)

/* The request's path as a path of this system (under file_root when fuzzing). */
static int get_path(struct conn *c, json_t *req, const char *op, char *out, int *failed,
                    uint32_t id)
{
    const char *path = NULL, *root = c->agent->o.file_root;
    char err[128];

    if (req_string(req, "path", &path, err, sizeof(err)) < 0 || !path) {
        conn_error(c, id, "EINVAL", "%s: 'path': expected a string", op);
        return -1;
    }
    if (path[0] != '/' || strlen(path) > SMOLVM_AGENT_PATH_MAX) {
        conn_error(c, id, "EINVAL", "%s: 'path': expected an absolute path of at most %d bytes", op,
                   SMOLVM_AGENT_PATH_MAX);
        return -1;
    }
    if (root) {
        for (const char *p = path; (p = strstr(p, "..")); p += 2)
            if ((p == path || p[-1] == '/') && (p[2] == '/' || p[2] == '\0')) {
                conn_error(c, id, "EPERM", "%s: '..' is refused here", op);
                return -1;
            }
        snprintf(out, PATH_BUF, "%s%s", root, path);
    } else {
        snprintf(out, PATH_BUF, "%s", path);
    }
    (void)failed;
    return 0;
}

/* The path as the client named it, for messages. */
static const char *shown(struct conn *c, const char *path)
{
    const char *root = c->agent->o.file_root;
    return root && strncmp(path, root, strlen(root)) == 0 ? path + strlen(root) : path;
}

static int mkdir_p(char *path, mode_t mode)
{
    struct stat st;
    if (stat(path, &st) == 0)
        return S_ISDIR(st.st_mode) ? 0 : (errno = ENOTDIR, -1);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        int rc = mkdir(path, 0755);
        *p = '/';
        if (rc < 0 && errno != EEXIST)
            return -1;
    }
    if (mkdir(path, mode) < 0 && errno != EEXIST)
        return -1;
    return 0;
}

static const char *type_of(mode_t m)
{
    return S_ISREG(m) ? "file" : S_ISDIR(m) ? "dir" : S_ISLNK(m) ? "link" : "other";
}

/* ------------------------------------------------------------------ read_file */

int file_pump(struct stream *s)
{
    struct conn *c = s->conn;
    uint8_t *buf = c->agent->scratch;

    if (s->send_window == 0)
        return 0;
    size_t want = s->send_window < c->data_max ? s->send_window : c->data_max;
    ssize_t n = read(s->fd, buf, want);
    if (n < 0 && errno == EINTR)
        return 0;
    if (n < 0) {
        conn_error(c, s->id, agent_errno_code(errno), "read_file: %s", strerror(errno));
        return 1;
    }
    if (n == 0) {
        conn_send(c, SMOLVM_AGENT_EOF, s->id, SMOLVM_AGENT_FIN, 1, NULL, 0);
        file_reset(s);
        stream_close(s);
        return 1;
    }
    if ((uint64_t)n > s->left) { /* it grew past max while we read it */
        conn_error(c, s->id, "EFBIG", "read_file: the file grew over 'max' while read");
        return 1;
    }
    s->left -= (uint64_t)n;
    struct iovec v = {.iov_base = buf, .iov_len = (size_t)n};
    conn_send(c, SMOLVM_AGENT_DATA, s->id, 0, 1, &v, 1);
    s->send_window -= (uint32_t)n;
    return 1;
}

static void read_file(struct conn *c, uint32_t id, json_t *req, const char *path)
{
    long long max = READ_MAX_DEFAULT;
    uint32_t window;
    char err[128];
    struct stat st;

    if (req_int(req, "max", 0, 1LL << 50, &max, err, sizeof(err)) < 0 ||
        req_window(req, &window, err, sizeof(err)) < 0) {
        conn_error(c, id, "EINVAL", "read_file: %s", err);
        return;
    }
    /* O_NONBLOCK: opening a FIFO must not hang the agent. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        conn_error(c, id, agent_errno_code(errno), "read_file '%s': %s", shown(c, path),
                   strerror(errno));
        return;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        conn_error(c, id, "EINVAL", "read_file '%s': not a regular file", shown(c, path));
        return;
    }
    if (st.st_size > max) {
        close(fd);
        conn_error(c, id, "EFBIG", "read_file '%s': %lld bytes, over 'max' (%lld)", shown(c, path),
                   (long long)st.st_size, max);
        return;
    }
    struct stream *s = stream_new(c, id, S_READ);
    if (!s) {
        close(fd);
        conn_error(c, id, "EIO", "read_file: out of memory");
        return;
    }
    s->fd = fd;
    s->left = (uint64_t)max;
    s->send_window = window;
    conn_send_json(
        c, SMOLVM_AGENT_REPLY, id, 0,
        json_pack("{s:I, s:i}", "size", (json_int_t)st.st_size, "mode", (int)(st.st_mode & 07777)));
}

/* ------------------------------------------------------------------ write_file */

static void write_fail(struct stream *s, int e, const char *what)
{
    struct conn *c = s->conn;
    conn_error(c, s->id, agent_errno_code(e), "write_file '%s': %s: %s", shown(c, s->path), what,
               strerror(e));
}

void file_data(struct stream *s, const uint8_t *p, size_t n)
{
    size_t done = 0;
    if (s->kind != S_WRITE || s->fd < 0)
        return;
    while (done < n) {
        ssize_t w = write(s->fd, p + done, n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            write_fail(s, w < 0 ? errno : EIO, "write");
            return;
        }
        done += (size_t)w;
    }
    s->written += n;
    /* Written through: the client may send as much again. */
    uint8_t inc[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
    struct iovec v = {.iov_base = inc, .iov_len = 4};
    conn_send(s->conn, SMOLVM_AGENT_WINDOW, s->id, 0, 0, &v, 1);
    s->recv_window += (uint32_t)n;
}

void file_eof(struct stream *s)
{
    struct conn *c = s->conn;
    if (s->kind != S_WRITE || s->fd < 0)
        return;
    if (fsync(s->fd) < 0) {
        write_fail(s, errno, "fsync");
        return;
    }
    int rc = close(s->fd);
    s->fd = -1;
    if (rc < 0) {
        write_fail(s, errno, "close");
        return;
    }
    if (rename(s->tmp, s->path) < 0) {
        write_fail(s, errno, "rename");
        return;
    }
    free(s->tmp);
    s->tmp = NULL; /* it is the file now */
    conn_send_json(c, SMOLVM_AGENT_REPLY, s->id, SMOLVM_AGENT_FIN,
                   json_pack("{s:I}", "size", (json_int_t)s->written));
    stream_close(s);
}

void file_reset(struct stream *s)
{
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    if (s->kind == S_WRITE && s->tmp) {
        (void)unlink(s->tmp);
        free(s->tmp);
        s->tmp = NULL;
    }
}

static void write_file(struct conn *c, uint32_t id, json_t *req, char *path)
{
    long long mode = 0644;
    int mkdirs = 0;
    char err[128], dir[PATH_BUF], tmp[PATH_BUF + 32];
    struct stat st;

    if (req_int(req, "mode", 0, 0x7fffffff, &mode, err, sizeof(err)) < 0 ||
        req_bool(req, "mkdirs", &mkdirs, err, sizeof(err)) < 0) {
        conn_error(c, id, "EINVAL", "write_file: %s", err);
        return;
    }
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/')
        path[--len] = '\0';
    if (strcmp(path, "/") == 0 || (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))) {
        conn_error(c, id, "EINVAL", "write_file '%s': is a directory", shown(c, path));
        return;
    }
    snprintf(dir, sizeof(dir), "%s", path);
    char *d = dirname(dir);
    if (mkdirs && mkdir_p(d, 0755) < 0) {
        conn_error(c, id, agent_errno_code(errno), "write_file '%s': mkdir '%s': %s",
                   shown(c, path), shown(c, d), strerror(errno));
        return;
    }
    /* A temporary file in the same directory, renamed over path once complete: a
     * reader never sees half a file, and a failure leaves the old one. */
    snprintf(tmp, sizeof(tmp), "%s/.smolvm-write-XXXXXX", strcmp(d, "/") ? d : "");
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        conn_error(c, id, agent_errno_code(errno), "write_file '%s': %s", shown(c, path),
                   strerror(errno));
        return;
    }
    if (fchmod(fd, (mode_t)(mode & 07777)) < 0) {
        int e = errno;
        close(fd);
        (void)unlink(tmp);
        conn_error(c, id, agent_errno_code(e), "write_file '%s': chmod: %s", shown(c, path),
                   strerror(e));
        return;
    }
    struct stream *s = stream_new(c, id, S_WRITE);
    if (!s || !(s->path = strdup(path)) || !(s->tmp = strdup(tmp))) {
        close(fd);
        (void)unlink(tmp);
        if (s)
            stream_close(s);
        conn_error(c, id, "EIO", "write_file: out of memory");
        return;
    }
    s->fd = fd;
    s->recv_window = STDIN_WINDOW;
    conn_send_json(c, SMOLVM_AGENT_REPLY, id, 0,
                   json_pack("{s:I}", "window", (json_int_t)STDIN_WINDOW));
}

/* ------------------------------------------------------------------ the others */

static void stat_path(struct conn *c, uint32_t id, const char *path)
{
    struct stat st;
    if (lstat(path, &st) < 0) {
        conn_error(c, id, agent_errno_code(errno), "stat '%s': %s", shown(c, path),
                   strerror(errno));
        return;
    }
    conn_send_json(c, SMOLVM_AGENT_REPLY, id, SMOLVM_AGENT_FIN,
                   json_pack("{s:s, s:I, s:i, s:I}", "type", type_of(st.st_mode), "size",
                             (json_int_t)st.st_size, "mode", (int)(st.st_mode & 07777), "mtime_ms",
                             (json_int_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000));
}

struct entry {
    char *name;
    struct stat st;
};

static int entry_cmp(const void *a, const void *b)
{
    return strcmp(((const struct entry *)a)->name, ((const struct entry *)b)->name);
}

static void list_dir(struct conn *c, uint32_t id, const char *path)
{
    DIR *dir = opendir(path);
    struct entry *ents;
    size_t n = 0;
    int truncated = 0;
    struct dirent *de;

    if (!dir) {
        conn_error(c, id, agent_errno_code(errno), "list '%s': %s", shown(c, path),
                   strerror(errno));
        return;
    }
    if (!(ents = calloc(SMOLVM_AGENT_LIST_MAX, sizeof(*ents)))) {
        closedir(dir);
        conn_error(c, id, "EIO", "list: out of memory");
        return;
    }
    while ((de = readdir(dir))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (n == SMOLVM_AGENT_LIST_MAX) {
            truncated = 1;
            break;
        }
        if (fstatat(dirfd(dir), de->d_name, &ents[n].st, AT_SYMLINK_NOFOLLOW) < 0)
            continue; /* gone meanwhile */
        if (!(ents[n].name = strdup(de->d_name)))
            break;
        n++;
    }
    closedir(dir);
    qsort(ents, n, sizeof(*ents), entry_cmp);
    json_t *items = json_array();
    for (size_t i = 0; i < n; i++) {
        char name[3 * 256 + 4];
        agent_utf8(name, sizeof(name), ents[i].name, strlen(ents[i].name));
        json_array_append_new(items, json_pack("{s:s, s:s, s:I, s:i}", "name", name, "type",
                                               type_of(ents[i].st.st_mode), "size",
                                               (json_int_t)ents[i].st.st_size, "mode",
                                               (int)(ents[i].st.st_mode & 07777)));
        free(ents[i].name);
    }
    free(ents);
    conn_reply_chunked(c, id, "entries", items, json_pack("{s:b}", "truncated", truncated));
}

static void make_dir(struct conn *c, uint32_t id, json_t *req, char *path)
{
    long long mode = 0755;
    int parents = 0;
    char err[128];
    if (req_int(req, "mode", 0, 0x7fffffff, &mode, err, sizeof(err)) < 0 ||
        req_bool(req, "parents", &parents, err, sizeof(err)) < 0) {
        conn_error(c, id, "EINVAL", "mkdir: %s", err);
        return;
    }
    int rc = parents ? mkdir_p(path, (mode_t)(mode & 07777)) : mkdir(path, (mode_t)(mode & 07777));
    /* Exactly the mode asked for, whatever the umask. */
    if (rc == 0 && (rc = chmod(path, (mode_t)(mode & 07777))) < 0 && parents)
        rc = 0; /* an existing directory we may not change is still there */
    if (rc < 0) {
        conn_error(c, id, agent_errno_code(errno), "mkdir '%s': %s", shown(c, path),
                   strerror(errno));
        return;
    }
    conn_send_json(c, SMOLVM_AGENT_REPLY, id, SMOLVM_AGENT_FIN, json_object());
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    return (flag == FTW_DP ? rmdir(path) : unlink(path)) < 0 ? -1 : 0;
}

static void remove_path(struct conn *c, uint32_t id, json_t *req, const char *path)
{
    int recursive = 0;
    char err[128];
    struct stat st;
    if (req_bool(req, "recursive", &recursive, err, sizeof(err)) < 0) {
        conn_error(c, id, "EINVAL", "remove: %s", err);
        return;
    }
    int rc = lstat(path, &st);
    if (rc == 0) {
        if (!S_ISDIR(st.st_mode))
            rc = unlink(path);
        else if (recursive)
            rc = nftw(path, remove_one, 16, FTW_DEPTH | FTW_PHYS);
        else
            rc = rmdir(path);
    }
    if (rc < 0) {
        conn_error(c, id, agent_errno_code(errno), "remove '%s': %s", shown(c, path),
                   strerror(errno));
        return;
    }
    conn_send_json(c, SMOLVM_AGENT_REPLY, id, SMOLVM_AGENT_FIN, json_object());
}

void files_request(struct conn *c, uint32_t id, const char *op, json_t *req)
{
    char path[PATH_BUF];
    int failed = 0;
    if (get_path(c, req, op, path, &failed, id) < 0)
        return;
    if (strcmp(op, "read_file") == 0)
        read_file(c, id, req, path);
    else if (strcmp(op, "write_file") == 0)
        write_file(c, id, req, path);
    else if (strcmp(op, "stat") == 0)
        stat_path(c, id, path);
    else if (strcmp(op, "list") == 0)
        list_dir(c, id, path);
    else if (strcmp(op, "mkdir") == 0)
        make_dir(c, id, req, path);
    else
        remove_path(c, id, req, path);
}
