/* SPDX-License-Identifier: MIT */
#include "util.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <string.h>

#include "agent-client.h"
#include "error.h"
#include "proc.h"
#include "vm-supervisor.h"

#define REPORT_MAX 1200

const char *smolvm_sv_binary(const smolvm_ctx *ctx)
{
    Dl_info info;

    if (ctx->supervisor)
        return ctx->supervisor;
    /* A library in the build tree (tests, the README's first command) runs the build
     * tree's supervisor, not a possibly older installed one. */
    if (dladdr((void *)smolvm_sv_binary, &info) && info.dli_fname &&
        strncmp(info.dli_fname, SMOLVM_BUILD_DIR "/", strlen(SMOLVM_BUILD_DIR) + 1) == 0)
        return SMOLVM_BUILD_DIR "/smolvm-supervisor";
    if (access(SMOLVM_SUPERVISOR_INSTALLED, X_OK) == 0)
        return SMOLVM_SUPERVISOR_INSTALLED;
    return SMOLVM_BUILD_DIR "/smolvm-supervisor";
}

/* Read the supervisor's one-line report until EOF or the deadline. */
static int read_report(int fd, char *buf, size_t cap, int64_t deadline, smolvm_error **err)
{
    size_t n = 0;

    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        ssize_t r;
        int w = poll(&p, 1, smolvm_remaining_ms(deadline));

        if (w < 0 && errno == EINTR) {
            if (smolvm_interrupted())
                return smolvm_err(err, SMOLVM_EINTR, "interrupted while the vmm started");
            continue;
        }
        if (w < 0)
            return smolvm_err_errno(err, errno, "supervisor: poll");
        if (w == 0)
            return smolvm_err(err, SMOLVM_ETIMEDOUT,
                              "the supervisor did not start the vmm in time");
        r = read(fd, buf + n, cap - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return smolvm_err_errno(err, errno, "supervisor: read its report");
        n += (size_t)r;
        if (r == 0 || n == cap - 1 || memchr(buf, '\n', n))
            break;
    }
    buf[n] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
    return 0;
}

int smolvm_sv_launch(smolvm_sv_pids *out, smolvm_ctx *ctx, const smolvm_sv_spec *spec,
                     int64_t deadline, smolvm_error **err)
{
    _cleanup_free_ char *log = smolvm_strdupf("%s/%s", spec->dir, SMOLVM_SV_LOG);
    _cleanup_close_ int rd = -1, wr = -1;
    const char *bin = smolvm_sv_binary(ctx);
    char fdtext[16], report[REPORT_MAX], *argv[5];
    long long vmm_pid = 0;
    uint64_t vmm_start = 0;
    int pipefd[2], r, code;
    pid_t pid;

    if (!log)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if ((r = smolvm_sv_spec_write(spec, err)) < 0)
        return r;
    if (pipe2(pipefd, O_CLOEXEC) < 0)
        return smolvm_err_errno(err, errno, "pipe");
    rd = pipefd[0];
    wr = pipefd[1];
    (void)snprintf(fdtext, sizeof(fdtext), "%d", wr);
    argv[0] = (char *)bin;
    argv[1] = (char *)"--status-fd";
    argv[2] = fdtext;
    argv[3] = spec->dir;
    argv[4] = NULL;
    if ((r = smolvm_spawn_detached(argv, log, wr, &pid, err)) < 0)
        return smolvm_err_hint(err, "the supervisor is '%s'; set SMOLVM_SUPERVISOR to another",
                               bin);
    (void)close(TAKE_FD(wr));
    out->sv_pid = pid;
    if (smolvm_pid_start_time(pid, &out->sv_start, NULL) < 0)
        out->sv_start = 0;
    if ((r = read_report(rd, report, sizeof(report), deadline, err)) < 0)
        return r;
    if (sscanf(report, "ok %lld %" SCNu64, &vmm_pid, &vmm_start) == 2 && vmm_pid > 0) {
        out->vmm_pid = (pid_t)vmm_pid;
        out->vmm_start = vmm_start;
        return 0;
    }
    if (sscanf(report, "error %d", &code) == 1) {
        const char *msg = report + 6;

        msg += strspn(msg, "-0123456789");
        msg += strspn(msg, " ");
        return smolvm_err(err, code < 0 && code >= _SMOLVM_CODE_MIN ? code : SMOLVM_EVMM, "%s",
                          msg);
    }
    {
        _cleanup_free_ char *tail = smolvm_file_tail(log, 0, 1024, 4, "; ");

        return smolvm_err(err, SMOLVM_EVMM, "the supervisor exited without a report%s%s",
                          tail ? ": " : "", tail ? tail : "");
    }
}

int smolvm_sv_call(json_t **out, const char *dir, json_t *req, int64_t deadline, smolvm_error **err)
{
    _cleanup_free_ char *path = smolvm_strdupf("%s/%s", dir, SMOLVM_SV_SOCK);
    smolvm_agent *a = NULL;
    json_t *reply = NULL;
    int r;

    if (!path) {
        json_decref(req);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    r = smolvm_agent_connect(&a, path, false, deadline, err);
    if (r == 0)
        r = smolvm_agent_call(&reply, a, req, deadline, err);
    else
        json_decref(req);
    if (out && r == 0)
        *out = json_incref(reply);
    json_decref(reply);
    smolvm_agent_free(a);
    return r;
}

static int call(const char *dir, json_t *req, int64_t deadline, smolvm_error **err)
{
    return smolvm_sv_call(NULL, dir, req, deadline, err);
}

int smolvm_sv_poweroff(const char *dir, int64_t deadline, smolvm_error **err)
{
    return call(dir, json_pack("{s:s}", "op", "poweroff"), deadline, err);
}

int smolvm_sv_keep(const char *dir, int64_t deadline, smolvm_error **err)
{
    return call(dir, json_pack("{s:s}", "op", "keep"), deadline, err);
}

int smolvm_sv_egress(const char *dir, const smolvm_egress_policy *policy, int64_t deadline,
                     smolvm_error **err)
{
    json_t *p = smolvm_egress_policy_to_json(policy);

    if (!p)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    return call(dir, json_pack("{s:s, s:o}", "op", "egress", "egress", p), deadline, err);
}

int smolvm_sv_forward(const char *dir, bool add, const char *host_address, int host_port,
                      int guest_port, int64_t deadline, smolvm_error **err)
{
    return call(dir,
                json_pack("{s:s, s:s, s:i, s:i}", "op", add ? "forward" : "unforward",
                          "host_address", host_address, "host_port", host_port, "guest_port",
                          guest_port),
                deadline, err);
}
