/* SPDX-License-Identifier: MIT */
/*
 * What the agent's files share: agent-conn.c (event loop, connections, framing,
 * streams, flow control), agent-exec.c (processes, PTYs, the process table, the
 * output ring), agent-files.c (file operations), agent-identity.c (identity).
 */
#ifndef SMOLVM_GUEST_AGENT_INTERNAL_H
#define SMOLVM_GUEST_AGENT_INTERNAL_H

#include "agent-proto.h"
#include "agent.h"

#include <jansson.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#define OUTQ_LOW (64u * 1024)    /* pump DATA only while the out queue is below this */
#define OUTQ_HIGH (1024u * 1024) /* stop reading requests while replies pile up */
#define STDIN_WINDOW SMOLVM_AGENT_WINDOW_DEFAULT
#define RING_SEGS 512     /* fd changes remembered in an output ring */
#define CMD_KEEP 1024     /* bytes of a command line kept for ps/attach */
#define KILL_WAIT_MS 2000 /* after SIGKILL: wait this long for the group to empty */
/* virtio_console takes at most 32 KiB per write(), each into a buffer of its own: on a
 * port a frame is written whole, in one such buffer. */
#define PORT_WRITE_MAX (32u * 1024)

enum watch_kind { W_SIGNAL, W_LISTEN, W_CONN, W_OUT, W_IN };

/* What an epoll event points to. */
struct watch {
    enum watch_kind kind;
    void *obj;
    int idx;
    int fd;
    uint32_t events; /* registered; 0: not in the epoll set */
};

/* A byte queue. */
struct buf {
    uint8_t *p;
    size_t start, len, cap;
};

enum stream_kind { S_EXEC, S_ATTACH, S_READ, S_WRITE };

struct proc;
struct conn;

struct stream {
    struct conn *conn;
    uint32_t id;
    enum stream_kind kind;
    uint32_t send_window; /* DATA bytes we may still send */
    uint32_t recv_window; /* DATA bytes the peer may still send us */
    /* S_EXEC, S_ATTACH */
    struct proc *proc;
    struct stream *next_reader, *prev_reader;
    uint64_t cursor; /* absolute position in proc's output */
    uint8_t eof_sent[3];
    int keep; /* on_reset "keep" */
    /* S_READ */
    int fd;
    uint64_t left; /* bytes still allowed by max */
    /* S_WRITE */
    char *path, *tmp;
    uint64_t written;
};

enum conn_state {
    C_OPEN,       /* serving */
    C_DOWN,       /* port: host side not connected; waiting for SIGIO */
    C_DRAIN,      /* port: after GOAWAY, input ignored until the host reconnects */
    C_CONNECTING, /* vsock connect in progress */
    C_WAIT,       /* vsock: reconnect at reconnect_at */
    C_DEAD,       /* to be freed */
};

struct conn {
    struct agent *agent;
    enum agent_channel kind;
    enum conn_state state;
    int reconnecting; /* the primary vsock channel: reconnect instead of dying */
    struct watch w;
    int hello_seen;
    uint32_t last_id;
    smolvm_agent_reader *reader;
    struct buf out;
    struct stream *streams[SMOLVM_AGENT_STREAMS_MAX];
    unsigned n_streams, rr;
    int64_t reconnect_at;
    int backoff_ms;
    int poweroff_pending;
    int broken;      /* a write failed: handled outside any stream iteration */
    size_t data_max; /* DATA payload per frame on this channel */
};

struct ring {
    uint8_t *buf;
    size_t cap;    /* grows to SMOLVM_AGENT_REPLAY_MAX */
    uint64_t head; /* bytes ever written */
    uint64_t tail; /* oldest byte kept */
    struct {
        uint64_t start;
        uint8_t fd;
    } segs[RING_SEGS]; /* where the fd changes, oldest first, circular */
    unsigned seg_first, seg_count;
};

#define EOF_OPEN UINT64_MAX

struct proc {
    struct agent *agent;
    pid_t pid;
    char *cmd;
    int64_t started_ms; /* realtime */
    int64_t t0;         /* monotonic */
    uint64_t seq;
    int running, status, timed_out, killed, exit_ready;
    int64_t duration_ms, deadline, kill_deadline;
    int pty;
    int has_stdin;
    struct watch w_out[2]; /* [0] stdout or the pty master, [1] stderr */
    struct watch w_in;     /* stdin pipe, or a dup of the pty master */
    struct ring ring;
    uint64_t eof_at[3]; /* [1], [2]: where that fd ended; EOF_OPEN while open */
    struct stream *readers;
    struct stream *stdin_owner;
    struct buf inbuf;
    int stdin_eof; /* close stdin once inbuf is written */
};

struct agent {
    struct agent_options o;
    int ep;
    struct watch w_sig, w_listen;
    char **env;
    size_t n_env;
    struct conn **conns;
    size_t n_conns;
    struct proc *procs[SMOLVM_AGENT_PROCS_MAX];
    size_t n_procs;
    uint64_t seq;
    uint8_t scratch[SMOLVM_AGENT_FRAME_MAX];
    uint8_t wbuf[PORT_WRITE_MAX]; /* a frame made contiguous for a port */
    int64_t poweroff_at;
    int poweroff_done;
};

/* agent-conn.c */
int64_t agent_now_ms(void);      /* CLOCK_MONOTONIC */
int64_t agent_realtime_ms(void); /* CLOCK_REALTIME */
int64_t agent_uptime_ms(void);   /* CLOCK_BOOTTIME */
const char *agent_errno_code(int e);
int agent_watch(struct agent *a, struct watch *w, uint32_t events);
void agent_unwatch_close(struct agent *a, struct watch *w);
int buf_append(struct buf *b, const void *p, size_t n);
void buf_free(struct buf *b);
void buf_consume(struct buf *b, size_t n);
/* Frames to the peer. Payload iovecs are copied if they cannot be written at once. */
void conn_send(struct conn *c, uint8_t type, uint32_t stream, uint8_t flags, uint8_t fd,
               const struct iovec *iov, int iovcnt);
void conn_send_json(struct conn *c, uint8_t type, uint32_t stream, uint8_t flags, json_t *obj);
/* ERROR (FIN) with code and a formatted message; closes the stream if it is open. */
void conn_error(struct conn *c, uint32_t stream, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* REPLY frames carrying the array items under key, as many as needed to stay within
 * a frame, then the final one with FIN and extra's members. Steals items and extra. */
void conn_reply_chunked(struct conn *c, uint32_t stream, const char *key, json_t *items,
                        json_t *extra);
struct stream *stream_new(struct conn *c, uint32_t id, enum stream_kind kind);
void stream_close(struct stream *s); /* forget it; sends nothing */
/* Copy s into out (at most n bytes), replacing invalid UTF-8 with U+FFFD; NUL-terminated. */
void agent_utf8(char *out, size_t outlen, const char *s, size_t n);

/* Request members, type-checked. 0: ok (absent leaves *out as is); -1: message in err. */
int req_string(json_t *req, const char *key, const char **out, char *err, size_t errlen);
int req_bool(json_t *req, const char *key, int *out, char *err, size_t errlen);
int req_int(json_t *req, const char *key, long long min, long long max, long long *out, char *err,
            size_t errlen);
int req_window(json_t *req, uint32_t *out, char *err, size_t errlen);

/* agent-exec.c */
void exec_request(struct conn *c, uint32_t id, json_t *req);
void attach_request(struct conn *c, uint32_t id, json_t *req);
void ps_request(struct conn *c, uint32_t id, json_t *req);
void exec_control(struct stream *s, json_t *ctl);
void exec_stdin(struct stream *s, const uint8_t *p, size_t n);
void exec_stdin_eof(struct stream *s);
void exec_reset(struct stream *s); /* RESET or connection gone: on_reset */
int exec_pump(struct stream *s);   /* one frame as the window allows, EOF, EXIT; 1 if any */
void proc_event(struct proc *p, int which, uint32_t events);
void procs_reap(struct agent *a);
void procs_tick(struct agent *a, int64_t now); /* deadlines */
int64_t procs_next_deadline(struct agent *a);
void procs_update(struct agent *a); /* epoll interest, stdin */
void procs_clear(struct agent *a);  /* identity: forget history */
void procs_kill_all(struct agent *a);
void proc_free(struct proc *p);

/* agent-files.c */
void files_request(struct conn *c, uint32_t id, const char *op, json_t *req);
int file_pump(struct stream *s); /* 1 if it sent or ended */
void file_data(struct stream *s, const uint8_t *p, size_t n);
void file_eof(struct stream *s);
void file_reset(struct stream *s);

/* agent-identity.c */
void identity_request(struct conn *c, uint32_t id, json_t *req);

#endif
