/* SPDX-License-Identifier: MIT */
/*
 * The agent protocol's wire format (docs/agent-protocol.md), shared by the guest
 * agent, the supervisor and the library. Only framing lives here: what a frame's
 * JSON says is each side's business. No allocation, no I/O: callers own buffers.
 */
#ifndef SMOLVM_AGENT_PROTO_H
#define SMOLVM_AGENT_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define SMOLVM_AGENT_VERSION 1
#define SMOLVM_AGENT_HEADER_SIZE 12
#define SMOLVM_AGENT_FRAME_MAX 65536 /* payload bytes */
#define SMOLVM_AGENT_WINDOW_DEFAULT 262144u
#define SMOLVM_AGENT_WINDOW_MAX (16u * 1024 * 1024)
#define SMOLVM_AGENT_STREAMS_MAX 256
#define SMOLVM_AGENT_PROCS_MAX 1024
#define SMOLVM_AGENT_REPLAY_MAX 65536
#define SMOLVM_AGENT_PATH_MAX 4096
#define SMOLVM_AGENT_ENV_MAX 256
#define SMOLVM_AGENT_ARGV_MAX 4096
#define SMOLVM_AGENT_LIST_MAX 10000

/* Where the agent listens: the virtio-serial port name (QEMU) and the vsock port. */
#define SMOLVM_AGENT_PORT_NAME "org.smolvm.agent.0"
#define SMOLVM_AGENT_VSOCK_PORT 1024

typedef enum smolvm_agent_type {
    SMOLVM_AGENT_HELLO = 1,
    SMOLVM_AGENT_REQUEST = 2,
    SMOLVM_AGENT_REPLY = 3,
    SMOLVM_AGENT_DATA = 4,
    SMOLVM_AGENT_WINDOW = 5,
    SMOLVM_AGENT_EOF = 6,
    SMOLVM_AGENT_EXIT = 7,
    SMOLVM_AGENT_CONTROL = 8,
    SMOLVM_AGENT_ERROR = 9,
    SMOLVM_AGENT_RESET = 10,
    SMOLVM_AGENT_GOAWAY = 11,
    _SMOLVM_AGENT_TYPE_MAX,
} smolvm_agent_type;

#define SMOLVM_AGENT_FIN 0x01u /* flags: the sender's last frame on this stream */

enum { SMOLVM_AGENT_FD_STDIN = 0, SMOLVM_AGENT_FD_STDOUT = 1, SMOLVM_AGENT_FD_STDERR = 2 };

typedef struct smolvm_agent_header {
    uint32_t length; /* payload bytes, 0..SMOLVM_AGENT_FRAME_MAX */
    uint32_t stream;
    uint8_t type; /* smolvm_agent_type */
    uint8_t flags;
    uint8_t fd;
} smolvm_agent_header;

/* Write h as 12 bytes. h must be valid (the caller built it). */
void smolvm_agent_header_encode(uint8_t out[SMOLVM_AGENT_HEADER_SIZE],
                                const smolvm_agent_header *h);

/* Parse and check 12 bytes against every header rule of docs/agent-protocol.md, in its
 * order (length bound, known type, flags, reserved byte, fd, the stream-0 rules, payload
 * sizes of WINDOW/EOF/RESET, FIN on EXIT/ERROR). Returns 0, or -1 with *why a static
 * description of the first violation (h untouched). */
int smolvm_agent_header_decode(const uint8_t in[SMOLVM_AGENT_HEADER_SIZE], smolvm_agent_header *h,
                               const char **why);

/* "HELLO", "DATA", ...; "?" for an unknown type. Static. */
const char *smolvm_agent_type_name(int type);

/*
 * Incremental reader for a byte stream of frames. Read into the free space
 * (smolvm_agent_reader_space + _commit), then take whole frames with _next. Memory is
 * fixed: one maximal frame. Not thread-safe; one per connection.
 */
typedef struct smolvm_agent_reader {
    uint8_t buf[SMOLVM_AGENT_HEADER_SIZE + SMOLVM_AGENT_FRAME_MAX];
    size_t start, len; /* unconsumed bytes are buf[start .. start+len) */
} smolvm_agent_reader;

void smolvm_agent_reader_init(smolvm_agent_reader *r);
/* Where the next bytes may be written and how many fit (never 0 while the reader is
 * not in error: a frame in progress always has room to complete). */
uint8_t *smolvm_agent_reader_space(smolvm_agent_reader *r, size_t *avail);
void smolvm_agent_reader_commit(smolvm_agent_reader *r, size_t n);
/* 1: a whole frame, its header in *h and payload in *payload (borrowed until the next
 * call on r); 0: more bytes needed; -1: protocol error (*why says which). */
int smolvm_agent_reader_next(smolvm_agent_reader *r, smolvm_agent_header *h,
                             const uint8_t **payload, const char **why);

#endif
