/* SPDX-License-Identifier: MIT */
/* SSH commands and SFTP against a real sshd started by the test on 127.0.0.1 (a random
 * free port, a temp config, host key made by smolvm_ssh_keygen). The "guest" is this
 * host, so remote paths are checked directly. Needs root and /usr/sbin/sshd (skips
 * with 77 otherwise). */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "error.h"
#include "ssh.h"
#include "util.h"

#define SSHD "/usr/sbin/sshd"

static char tmpdir[256];
static char client_key[512], host_key[512], other_key[512];
static pid_t sshd_pid = -1;
static int sshd_port;
static smolvm_ssh *ssh;

static char *slurp(const char *path)
{
    char *data = NULL;
    size_t len;
    smolvm_error *err = NULL;

    if (smolvm_read_file(path, 1 << 20, &data, &len, &err) < 0) {
        fprintf(stderr, "read %s: %s\n", path, smolvm_error_message(err));
        smolvm_error_free(err);
        return NULL;
    }
    return data;
}

static char *path_in(const char *fmt, ...)
{
    static char buf[8][1024];
    static int next;
    char rel[512];
    va_list ap;
    char *out = buf[next++ % 8];

    va_start(ap, fmt);
    (void)vsnprintf(rel, sizeof(rel), fmt, ap);
    va_end(ap);
    (void)snprintf(out, sizeof(buf[0]), "%s/%s", tmpdir, rel);
    return out;
}

static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port = -1;

    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static int connect_with(const char *pinned_pub_path, smolvm_ssh **out, smolvm_error **err)
{
    char *pin = slurp(pinned_pub_path);
    int r;

    if (!pin)
        return -1;
    r = smolvm_ssh_connect(out, "127.0.0.1", sshd_port, client_key, pin, smolvm_now_ms() + 10000,
                           err);
    free(pin);
    return r;
}

static void dump_sshd_log(void)
{
    char *log = slurp(path_in("sshd.log"));

    if (log)
        fprintf(stderr, "--- sshd.log ---\n%s----------------\n", log);
    free(log);
}

static int start_sshd(void **state)
{
    smolvm_error *err = NULL;
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char *pub, cfg[4096];
    FILE *f;
    int r;

    (void)state;
    (void)snprintf(tmpdir, sizeof(tmpdir), "%s/smolvm-test-ssh-XXXXXX", base);
    assert_non_null(mkdtemp(tmpdir));
    (void)snprintf(client_key, sizeof(client_key), "%s/client", tmpdir);
    (void)snprintf(host_key, sizeof(host_key), "%s/hostkey", tmpdir);
    (void)snprintf(other_key, sizeof(other_key), "%s/otherhost", tmpdir);
    r = smolvm_ssh_keygen(client_key, "smolvm-test", &err);
    if (r == 0)
        r = smolvm_ssh_keygen(host_key, "host", &err);
    if (r == 0)
        r = smolvm_ssh_keygen(other_key, "other", &err);
    if (r < 0)
        fprintf(stderr, "keygen: %s\n", smolvm_error_message(err));
    assert_int_equal(r, 0);
    pub = slurp(path_in("client.pub"));
    assert_non_null(pub);
    assert_int_equal(
        smolvm_write_file_atomic(path_in("authorized_keys"), pub, strlen(pub), 0600, &err), 0);
    free(pub);
    /* sshd insists on its privilege separation directory. */
    (void)mkdir("/run/sshd", 0755);

    sshd_port = free_port();
    assert_true(sshd_port > 0);
    (void)snprintf(cfg, sizeof(cfg),
                   "Port %d\nListenAddress 127.0.0.1\nHostKey %s\nAuthorizedKeysFile %s\n"
                   "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                   "KbdInteractiveAuthentication no\nUsePAM no\nPidFile none\n"
                   "StrictModes no\nSubsystem sftp internal-sftp\nLogLevel INFO\n"
                   "MaxStartups 100\n",
                   sshd_port, host_key, path_in("authorized_keys"));
    f = fopen(path_in("sshd_config"), "w");
    assert_non_null(f);
    fputs(cfg, f);
    fclose(f);

    f = fopen(path_in("empty"), "w");
    assert_non_null(f);
    fclose(f);
    sshd_pid = fork();
    assert_true(sshd_pid >= 0);
    if (sshd_pid == 0) {
        static const char *const rcfiles[] = {"/root/.bashrc", "/etc/bash.bashrc"};
        int fd = open(path_in("sshd.log"), O_WRONLY | O_CREAT | O_TRUNC, 0600);

        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        /* bash sources these for commands run by sshd. Hide this host's versions
         * (they may print, or be slow: pyenv init costs ~200 ms per command) in a
         * private mount namespace, so the test sees only smolvm's own behaviour. */
        if (unshare(CLONE_NEWNS) == 0 && mount(NULL, "/", "none", MS_REC | MS_PRIVATE, NULL) == 0) {
            for (size_t i = 0; i < sizeof(rcfiles) / sizeof(rcfiles[0]); i++)
                if (access(rcfiles[i], F_OK) == 0)
                    (void)mount(path_in("empty"), rcfiles[i], "none", MS_BIND, NULL);
        } else {
            fprintf(stderr, "test_ssh: no private mount namespace, using the host's rc files\n");
        }
        execl(SSHD, SSHD, "-D", "-e", "-f", path_in("sshd_config"), (char *)NULL);
        _exit(127);
    }
    /* connect retries refused connections until sshd listens. */
    r = connect_with(path_in("hostkey.pub"), &ssh, &err);
    if (r < 0) {
        fprintf(stderr, "connect: %s\n", smolvm_error_message(err));
        dump_sshd_log();
    }
    assert_int_equal(r, 0);
    return 0;
}

static int stop_sshd(void **state)
{
    smolvm_error *err = NULL;

    (void)state;
    ssh = smolvm_ssh_free(ssh);
    if (sshd_pid > 0) {
        kill(sshd_pid, SIGTERM);
        waitpid(sshd_pid, NULL, 0);
    }
    if (tmpdir[0])
        (void)smolvm_rm_rf(tmpdir, &err);
    smolvm_error_free(err);
    return 0;
}

static smolvm_run_result *run(const char *cmd, const smolvm_run_options *opts)
{
    smolvm_run_result *res = NULL;
    smolvm_error *err = NULL;
    int r = smolvm_ssh_exec(ssh, cmd, NULL, opts, &res, &err);

    if (r < 0)
        fprintf(stderr, "run '%s': %s\n", cmd, smolvm_error_message(err));
    assert_int_equal(r, 0);
    smolvm_error_free(err);
    return res;
}

/* ---------------------------------------------------------------- commands */

static void test_output_exit_stderr(void **state)
{
    smolvm_run_result *res = run("echo hello; echo oops >&2; exit 3", NULL);

    (void)state;
    assert_string_equal(res->out, "hello\n");
    assert_int_equal(res->out_len, 6);
    assert_string_equal(res->err, "oops\n");
    assert_int_equal(res->exit_code, 3);
    assert_string_equal(res->signal, "");
    assert_int_equal(res->truncated, 0);
    smolvm_run_result_free(res);

    res = run("true", NULL);
    assert_int_equal(res->exit_code, 0);
    assert_int_equal(res->out_len, 0);
    assert_int_equal(res->err_len, 0);
    assert_string_equal(res->err, "");
    smolvm_run_result_free(res);
}

static void test_signal(void **state)
{
    smolvm_run_result *res = run("kill -TERM $$", NULL);

    (void)state;
    assert_int_equal(res->exit_code, -1);
    assert_string_equal(res->signal, "TERM");
    smolvm_run_result_free(res);
}

static void test_stdin(void **state)
{
    smolvm_run_options o = SMOLVM_RUN_OPTIONS_INIT;
    smolvm_run_result *res;
    size_t big = 3u << 20;
    char *data = malloc(big);

    (void)state;
    o.stdin_data = "abc\0def";
    o.stdin_len = 7;
    res = run("cat", &o);
    assert_int_equal(res->out_len, 7);
    assert_memory_equal(res->out, "abc\0def", 7);
    smolvm_run_result_free(res);

    /* More than the channel window, echoed back while it is still being sent. */
    assert_non_null(data);
    for (size_t i = 0; i < big; i++)
        data[i] = (char)(i * 7);
    o.stdin_data = data;
    o.stdin_len = big;
    res = run("cat", &o);
    assert_int_equal(res->out_len, big);
    assert_memory_equal(res->out, data, big);
    smolvm_run_result_free(res);

    /* A command that ignores its stdin still finishes. */
    res = run("echo done", &o);
    assert_string_equal(res->out, "done\n");
    smolvm_run_result_free(res);
    free(data);

    o.stdin_data = NULL;
    o.stdin_len = 0;
    res = run("cat; echo end", &o);
    assert_string_equal(res->out, "end\n");
    smolvm_run_result_free(res);
}

static void test_env(void **state)
{
    const char *base[] = {"A=base", "B=x y", NULL};
    const char *env[] = {"A=over", "Q=it's \"q\" $HOME `id` \\n\n;", "_u9=", NULL};
    smolvm_run_options o = SMOLVM_RUN_OPTIONS_INIT;
    smolvm_run_result *res = NULL;
    smolvm_error *err = NULL;

    (void)state;
    o.env = env;
    assert_int_equal(smolvm_ssh_exec(ssh,
                                     "printf '%s|%s|%s|%s' \"$A\" \"$B\" \"$Q\" \"${_u9-unset}\"",
                                     base, &o, &res, &err),
                     0);
    assert_string_equal(res->out, "over|x y|it's \"q\" $HOME `id` \\n\n;|");
    smolvm_run_result_free(res);

    /* Names the wrapper uses internally are the user's to set too. */
    env[0] = "smolvm_c=mine";
    env[1] = "smolvm_g=g";
    env[2] = NULL;
    assert_int_equal(smolvm_ssh_exec(ssh, "echo \"$smolvm_c $smolvm_g\"", NULL, &o, &res, &err), 0);
    assert_string_equal(res->out, "mine g\n");
    smolvm_run_result_free(res);
}

static void expect_einval_env(const char *entry)
{
    const char *env[] = {entry, NULL};
    smolvm_run_options o = SMOLVM_RUN_OPTIONS_INIT;
    smolvm_run_result *res = NULL;
    smolvm_error *err = NULL;

    o.env = env;
    assert_int_equal(smolvm_ssh_exec(ssh, "true", NULL, &o, &res, &err), SMOLVM_EINVAL);
    assert_null(res);
    assert_non_null(strstr(smolvm_error_message(err), "environment"));
    smolvm_error_free(err);
}

static void test_env_bad_name(void **state)
{
    smolvm_run_result *res;

    (void)state;
    expect_einval_env("1A=x");
    expect_einval_env("A-B=x");
    expect_einval_env("A B=x");
    expect_einval_env("=x");
    expect_einval_env("NOEQUALS");
    expect_einval_env("X;rm -rf /=1");
    res = run("echo still", NULL);
    assert_string_equal(res->out, "still\n");
    smolvm_run_result_free(res);
}

static void test_cwd(void **state)
{
    smolvm_run_options o = SMOLVM_RUN_OPTIONS_INIT;
    smolvm_run_result *res = NULL;
    smolvm_error *err = NULL;
    char *dir = path_in("cwd a'b $x");
    char *expect;

    (void)state;
    assert_int_equal(mkdir(dir, 0755), 0);
    o.cwd = dir;
    res = run("pwd", &o);
    assert_non_null(expect = smolvm_strdupf("%s\n", dir));
    assert_string_equal(res->out, expect);
    free(expect);
    smolvm_run_result_free(res);

    /* Default: root's home. */
    res = run("pwd", NULL);
    assert_string_equal(res->out, "/root\n");
    smolvm_run_result_free(res);

    /* A missing cwd is an error and the command does not run anywhere else. */
    o.cwd = path_in("no-such-dir");
    res = NULL;
    assert_int_equal(smolvm_ssh_exec(ssh, "touch ran-anyway", NULL, &o, &res, &err), SMOLVM_ENOENT);
    assert_null(res);
    assert_non_null(strstr(smolvm_error_message(err), "no-such-dir"));
    smolvm_error_free(err);
    assert_int_equal(access("/root/ran-anyway", F_OK), -1);
}

/* Gone or a zombie (reaped by whoever inherits it). */
static int pid_alive(pid_t pid)
{
    char path[64], buf[512], *p;
    FILE *f;

    (void)snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    f = fopen(path, "r");
    if (!f)
        return 0;
    p = fgets(buf, sizeof(buf), f);
    fclose(f);
    if (!p || !(p = strrchr(buf, ')')))
        return 0;
    return p[2] != 'Z';
}

static void test_timeout_kills(void **state)
{
    smolvm_run_options o = SMOLVM_RUN_OPTIONS_INIT;
    smolvm_run_result *res = NULL;
    smolvm_error *err = NULL;
    char *cmd, *pids;
    int shell_pid = 0, sleep_pid = 0, alive = 1;
    int64_t t0;

    (void)state;
    cmd = smolvm_strdupf(
        "sleep 300 & echo \"$$ $!\" > '%s.tmp'; mv '%s.tmp' '%s'; echo started; wait",
        path_in("pids"), path_in("pids"), path_in("pids"));
    o.timeout_ms = 700;
    t0 = smolvm_now_ms();
    assert_int_equal(smolvm_ssh_exec(ssh, cmd, NULL, &o, &res, &err), SMOLVM_ETIMEDOUT);
    free(cmd);
    assert_null(res);
    assert_string_equal(smolvm_error_message(err), "command timed out after 700 ms");
    smolvm_error_free(err);
    fprintf(stderr, "timeout returned after %lld ms\n", (long long)(smolvm_now_ms() - t0));
    assert_true(smolvm_now_ms() - t0 < 700 + 3000);

    pids = slurp(path_in("pids"));
    assert_non_null(pids);
    assert_int_equal(sscanf(pids, "%d %d", &shell_pid, &sleep_pid), 2);
    free(pids);
    for (int i = 0; i < 100 && alive; i++) {
        alive = pid_alive(shell_pid) || pid_alive(sleep_pid);
        if (alive)
            (void)poll(NULL, 0, 20);
    }
    assert_false(alive);

    /* The session survives the kill. */
    res = run("echo after", NULL);
    assert_string_equal(res->out, "after\n");
    smolvm_run_result_free(res);
}

static void test_timeout_closed_output(void **state)
{
    smolvm_run_options o = SMOLVM_RUN_OPTIONS_INIT;
    smolvm_run_result *res = NULL;
    smolvm_error *err = NULL;

    (void)state;
    /* Pipes closed but the process runs on: still bounded by the timeout. */
    o.timeout_ms = 500;
    assert_int_equal(smolvm_ssh_exec(ssh, "exec >/dev/null 2>&1; sleep 300", NULL, &o, &res, &err),
                     SMOLVM_ETIMEDOUT);
    smolvm_error_free(err);
    res = run("echo after", NULL);
    assert_string_equal(res->out, "after\n");
    smolvm_run_result_free(res);
}

static void test_truncation(void **state)
{
    smolvm_run_options o = SMOLVM_RUN_OPTIONS_INIT;
    smolvm_run_result *res;

    (void)state;
    o.output_limit = 1000;
    res = run("head -c 5000000 /dev/zero; head -c 50 /dev/zero >&2; exit 4", &o);
    assert_int_equal(res->out_len, 1000);
    assert_int_equal(res->err_len, 50);
    assert_int_equal(res->truncated, 1);
    assert_int_equal(res->exit_code, 4);
    smolvm_run_result_free(res);

    res = run("head -c 1000 /dev/zero", &o);
    assert_int_equal(res->out_len, 1000);
    assert_int_equal(res->truncated, 0);
    smolvm_run_result_free(res);
}

static void test_marker_not_spoofable(void **state)
{
    smolvm_run_result *res;

    (void)state;
    /* A command printing something like the marker keeps its stderr as is. */
    res = run("echo 'smolvm-run-0000000000000000 1 nocwd' >&2", NULL);
    assert_string_equal(res->err, "smolvm-run-0000000000000000 1 nocwd\n");
    assert_int_equal(res->exit_code, 0);
    smolvm_run_result_free(res);
}

static void test_bad_options(void **state)
{
    smolvm_run_options o = SMOLVM_RUN_OPTIONS_INIT;
    smolvm_run_result *res = NULL;
    smolvm_error *err = NULL;

    (void)state;
    o.timeout_ms = -1;
    assert_int_equal(smolvm_ssh_exec(ssh, "true", NULL, &o, &res, &err), SMOLVM_EINVAL);
    err = smolvm_error_free(err);
    o.timeout_ms = 0;
    o.version = 99;
    assert_int_equal(smolvm_ssh_exec(ssh, "true", NULL, &o, &res, &err), SMOLVM_EINVAL);
    err = smolvm_error_free(err);
    assert_int_equal(smolvm_ssh_exec(ssh, NULL, NULL, NULL, &res, &err), SMOLVM_EINVAL);
    err = smolvm_error_free(err);
}

/* ---------------------------------------------------------------- connection */

static void test_host_key_mismatch(void **state)
{
    smolvm_ssh *s = NULL;
    smolvm_error *err = NULL;

    (void)state;
    assert_int_equal(connect_with(path_in("otherhost.pub"), &s, &err), SMOLVM_ESSH);
    assert_null(s);
    assert_non_null(strstr(smolvm_error_message(err), "host key does not match"));
    smolvm_error_free(err);
    err = NULL;
    assert_int_equal(smolvm_ssh_connect(&s, "127.0.0.1", sshd_port, client_key,
                                        "ssh-rsa AAAAB3NzaC1yc2E=", smolvm_now_ms() + 5000, &err),
                     SMOLVM_EINVAL);
    smolvm_error_free(err);
}

static void test_connect_refused_deadline(void **state)
{
    smolvm_ssh *s = NULL;
    smolvm_error *err = NULL;
    char *pin = slurp(path_in("hostkey.pub"));
    int64_t t0 = smolvm_now_ms();

    (void)state;
    assert_int_equal(
        smolvm_ssh_connect(&s, "127.0.0.1", free_port(), client_key, pin, t0 + 300, &err),
        SMOLVM_ESSH);
    assert_true(smolvm_now_ms() - t0 < 1000);
    assert_non_null(strstr(smolvm_error_message(err), "refused"));
    smolvm_error_free(err);
    free(pin);
}

static void test_dropped_connection(void **state)
{
    smolvm_ssh *s = NULL;
    smolvm_run_result *res = NULL;
    smolvm_error *err = NULL;
    int r;

    (void)state;
    assert_int_equal(connect_with(path_in("hostkey.pub"), &s, &err), 0);
    /* The command's parent is sshd's process for this connection. */
    r = smolvm_ssh_exec(s, "kill -KILL $PPID; sleep 5", NULL, NULL, &res, &err);
    assert_int_equal(r, SMOLVM_ESSH);
    assert_null(res);
    err = smolvm_error_free(err);
    assert_int_equal(smolvm_ssh_exec(s, "true", NULL, NULL, &res, &err), SMOLVM_ESSH);
    assert_non_null(strstr(smolvm_error_message(err), "closed"));
    smolvm_error_free(err);
    smolvm_ssh_free(s);
}

/* ---------------------------------------------------------------- files */

static void test_upload_download(void **state)
{
    smolvm_error *err = NULL;
    size_t len = (5u << 20) + 123, got_len = 0;
    char *data = malloc(len), *got = NULL;
    char *src = path_in("src.bin"), *remote = path_in("up/a/b/file.bin");
    char *back = path_in("down/x/y/file.bin");
    struct stat st;
    int fd;

    (void)state;
    assert_non_null(data);
    for (size_t i = 0; i < len; i++)
        data[i] = (char)(i * 31 + (i >> 12));
    fd = open(src, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    /* Group/other write bits that a 022 umask would strip. */
    assert_int_equal(fchmod(fd, 0767), 0);
    close(fd);

    if (smolvm_ssh_upload(ssh, src, remote, 0, &err) < 0)
        fail_msg("upload: %s", smolvm_error_message(err));
    assert_int_equal(stat(remote, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0767);
    assert_int_equal(st.st_size, (off_t)len);
    assert_int_equal(smolvm_read_file(remote, len + 1, &got, &got_len, &err), 0);
    assert_int_equal(got_len, len);
    assert_memory_equal(got, data, len);
    free(got);

    /* The guest's mode within the umask (022 here). */
    assert_int_equal(chmod(remote, 0741), 0);
    (void)umask(022);
    if (smolvm_ssh_download(ssh, remote, back, 0, 0, &err) < 0)
        fail_msg("download: %s", smolvm_error_message(err));
    assert_int_equal(stat(back, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0741);
    assert_int_equal(smolvm_read_file(back, len + 1, &got, &got_len, &err), 0);
    assert_int_equal(got_len, len);
    assert_memory_equal(got, data, len);
    free(got);
    free(data);

    /* Overwrite keeps working and replaces the content. */
    assert_int_equal(smolvm_ssh_write(ssh, remote, "x", 1, 0600, 0, &err), 0);
    assert_int_equal(smolvm_ssh_download(ssh, remote, back, 0, 0, &err), 0);
    assert_int_equal(stat(back, &st), 0);
    assert_int_equal(st.st_size, 1);
    assert_int_equal(st.st_mode & 07777, 0600);
}

/* Files from the guest never bring setuid, setgid, sticky or world-writable bits onto
 * the host, whatever the guest's mode and our umask (H1 in docs/security.md). */
static void test_download_modes(void **state)
{
    static const struct {
        unsigned guest, umask, host;
    } cases[] = {
        {04755, 022, 0755}, /* a setuid copy of a shell: just an executable */
        {06777, 022, 0755}, {06777, 0, 0775},  {01777, 0, 0775}, /* never o+w, not even umask 0 */
        {02750, 027, 0750}, {0640, 077, 0600}, {0444, 022, 0444},
    };
    smolvm_error *err = NULL;
    char *remote = path_in("modes/sh"), *back = path_in("modes-back/sh");
    mode_t old = umask(022);
    struct stat st;

    (void)state;
    assert_int_equal(smolvm_mkdir_p(path_in("modes"), 0755, &err), 0);
    assert_int_equal(smolvm_copy_file("/bin/sh", remote, 0755, &err), 0);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(chmod(remote, cases[i].guest), 0);
        (void)umask(cases[i].umask);
        if (smolvm_ssh_download(ssh, remote, back, 0, 0, &err) < 0)
            fail_msg("download: %s", smolvm_error_message(err));
        assert_int_equal(stat(back, &st), 0);
        if ((st.st_mode & 07777) != cases[i].host)
            fail_msg("guest mode %04o, umask %03o: host file has %04o, expected %04o",
                     cases[i].guest, cases[i].umask, st.st_mode & 07777, cases[i].host);
        assert_false(st.st_mode & (S_ISUID | S_ISGID | S_ISVTX | S_IWOTH));
        assert_int_equal(st.st_uid, 0); /* a root-owned file: the bits would have mattered */
    }
    (void)umask(old);
}

/* No file (not even part of one) in dir whose name starts with prefix. */
static void assert_no_file_like(const char *dir, const char *prefix)
{
    char cmd[1200];

    (void)snprintf(cmd, sizeof(cmd), "ls -A '%s' | grep -q '^%s'", dir, prefix);
    if (system(cmd) == 0)
        fail_msg("'%s' has a file starting with '%s'", dir, prefix);
}

/* Downloads and reads stop at their cap: from the size the guest gives and from what
 * arrives when the size says less (a /proc file has size 0); nothing is left behind
 * and a file already at the host path stays as it was (H4). */
static void test_download_cap(void **state)
{
    smolvm_error *err = NULL;
    char *remote = path_in("cap/five-k"), *dst = path_in("cap-back/f"), *data = NULL;
    char maps[64];
    size_t len;
    int64_t t0;

    (void)state;
    data = calloc(1, 5000);
    assert_non_null(data);
    assert_int_equal(smolvm_ssh_write(ssh, remote, data, 5000, 0644, 0, &err), 0);
    free(data);
    data = NULL;
    assert_int_equal(smolvm_mkdir_p(path_in("cap-back"), 0755, &err), 0);

    assert_int_equal(smolvm_ssh_download(ssh, remote, dst, 4999, 0, &err), SMOLVM_ENOSPC);
    assert_non_null(strstr(smolvm_error_message(err), "larger than 4999 bytes"));
    err = smolvm_error_free(err);
    assert_int_equal(access(dst, F_OK), -1);
    assert_no_file_like(path_in("cap-back"), "f");
    assert_int_equal(smolvm_ssh_download(ssh, remote, dst, 5000, 0, &err), 0);
    assert_int_equal(access(dst, F_OK), 0);

    /* sftp-server's own memory map: a regular file of size 0 with a few KiB in it. */
    (void)snprintf(maps, sizeof(maps), "/proc/self/maps");
    assert_int_equal(smolvm_write_file_atomic(dst, "kept", 4, 0644, &err), 0);
    t0 = smolvm_now_ms();
    assert_int_equal(smolvm_ssh_download(ssh, maps, dst, 256, 0, &err), SMOLVM_ENOSPC);
    assert_non_null(strstr(smolvm_error_message(err), "larger than 256 bytes"));
    err = smolvm_error_free(err);
    assert_int_equal(smolvm_read_file(dst, 100, &data, &len, &err), 0);
    assert_string_equal(data, "kept");
    free(data);
    data = NULL;
    assert_no_file_like(path_in("cap-back"), "f.smolvm");
    /* read_file: the same from what arrives. */
    assert_int_equal(smolvm_ssh_read(ssh, maps, 256, &data, &len, 0, &err), SMOLVM_ENOSPC);
    assert_null(data);
    err = smolvm_error_free(err);
    /* The session is fine after a refused transfer. */
    assert_int_equal(smolvm_ssh_read(ssh, remote, 0, &data, &len, 0, &err), 0);
    assert_int_equal(len, 5000);
    free(data);
    assert_true(smolvm_now_ms() - t0 < 10000);
}

/* ---------------------------------------------------------------- a slow peer */

/* A TCP proxy in front of sshd that lets CHUNK bytes through per TICK_MS in each
 * direction (25 KiB/s): a peer that keeps sending, just slowly. */
#define PROXY_CHUNK 512
#define PROXY_TICK_MS 20

typedef struct slow_proxy {
    int listen_fd, port, stop[2];
    pthread_t thread;
} slow_proxy;

static bool pass_some(int from, int to)
{
    char buf[PROXY_CHUNK];
    ssize_t n = read(from, buf, sizeof(buf));

    if (n <= 0)
        return false;
    for (ssize_t off = 0; off < n;) {
        ssize_t w = write(to, buf + off, (size_t)(n - off));

        if (w <= 0)
            return false;
        off += w;
    }
    return true;
}

static void *proxy_main(void *arg)
{
    slow_proxy *p = arg;
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)sshd_port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct pollfd pa[2] = {{.fd = p->listen_fd, .events = POLLIN},
                           {.fd = p->stop[0], .events = POLLIN}};
    int c, up;

    if (poll(pa, 2, 30000) != 1 || !(pa[0].revents & POLLIN))
        return NULL;
    c = accept(p->listen_fd, NULL, NULL);
    up = socket(AF_INET, SOCK_STREAM, 0);
    if (c >= 0 && up >= 0 && connect(up, (struct sockaddr *)&a, sizeof(a)) == 0) {
        for (;;) {
            struct pollfd f[3] = {{.fd = c, .events = POLLIN},
                                  {.fd = up, .events = POLLIN},
                                  {.fd = p->stop[0], .events = POLLIN}};
            struct timespec tick = {0, PROXY_TICK_MS * 1000000L};

            if (poll(f, 3, 30000) <= 0 || f[2].revents)
                break;
            if ((f[0].revents & (POLLIN | POLLHUP)) && !pass_some(c, up))
                break;
            if ((f[1].revents & (POLLIN | POLLHUP)) && !pass_some(up, c))
                break;
            (void)nanosleep(&tick, NULL); /* the rate limit itself */
        }
    }
    if (c >= 0)
        close(c);
    if (up >= 0)
        close(up);
    return NULL;
}

static void proxy_start(slow_proxy *p)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);

    p->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(p->listen_fd >= 0);
    assert_int_equal(bind(p->listen_fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(p->listen_fd, 1), 0);
    assert_int_equal(getsockname(p->listen_fd, (struct sockaddr *)&a, &len), 0);
    p->port = ntohs(a.sin_port);
    assert_int_equal(pipe2(p->stop, O_CLOEXEC), 0);
    assert_int_equal(pthread_create(&p->thread, NULL, proxy_main, p), 0);
}

static void proxy_stop(slow_proxy *p)
{
    (void)write(p->stop[1], "x", 1);
    (void)pthread_join(p->thread, NULL);
    close(p->listen_fd);
    close(p->stop[0]);
    close(p->stop[1]);
}

/* A session through a fresh slow proxy. */
static smolvm_ssh *slow_session(slow_proxy *p)
{
    smolvm_error *err = NULL;
    smolvm_ssh *s = NULL;
    char *pin = slurp(path_in("hostkey.pub"));

    proxy_start(p);
    assert_non_null(pin);
    if (smolvm_ssh_connect(&s, "127.0.0.1", p->port, client_key, pin, smolvm_now_ms() + 30000,
                           &err) < 0)
        fail_msg("connect through the slow proxy: %s", smolvm_error_message(err));
    free(pin);
    return s;
}

/* The call timed out near its deadline (not at the 30 s idle time, not after the 80 s
 * the transfer would take), said so, and left the session broken. */
static void assert_deadline_hit(int r, smolvm_error *err, int64_t t0, smolvm_ssh *s)
{
    int64_t took = smolvm_now_ms() - t0;
    smolvm_run_result *res = NULL;
    smolvm_error *e2 = NULL;

    if (r != SMOLVM_ETIMEDOUT)
        fail_msg("expected a timeout, got %d after %lld ms: %s", r, (long long)took,
                 err ? smolvm_error_message(err) : "none");
    /* The deadline as the call saw it: the 1500 ms given, less what passed before the
     * call began (a millisecond or so, more under valgrind). */
    {
        const char *m = strstr(smolvm_error_message(err), "within the call's deadline (");
        long ms = m ? strtol(m + strlen("within the call's deadline ("), NULL, 10) : 0;

        if (!m || ms < 1300 || ms > 1500)
            fail_msg("the timeout does not name the call's deadline: %s",
                     smolvm_error_message(err));
    }
    /* Under valgrind (SMOLVM_TEST_NO_TIMING) everything is 20x slower, so only the lower
     * bound holds there. */
    if (took < 1400 || (took > 5000 && !getenv("SMOLVM_TEST_NO_TIMING")))
        fail_msg("the call took %lld ms for a 1500 ms deadline", (long long)took);
    assert_int_equal(smolvm_ssh_exec(s, "true", NULL, NULL, &res, &e2), SMOLVM_ESSH);
    smolvm_error_free(e2);
}

/* A peer that trickles data never holds an SFTP call past the call's deadline: each
 * chunk arrives well within the idle time, the transfer as a whole would take 80 s
 * (M5). A file small enough for the same pace goes through. */
static void test_sftp_deadline(void **state)
{
    size_t big = 2u << 20;
    char *data = calloc(1, big), *got = NULL, *dst = path_in("slow-back/big");
    smolvm_error *err = NULL;
    slow_proxy p;
    smolvm_ssh *s;
    size_t len;
    int64_t t0;
    int r;

    (void)state;
    assert_non_null(data);
    assert_int_equal(smolvm_ssh_write(ssh, path_in("slow/big"), data, big, 0644, 0, &err), 0);
    assert_int_equal(smolvm_ssh_write(ssh, path_in("slow/small"), data, 4096, 0644, 0, &err), 0);
    assert_int_equal(smolvm_write_file_atomic(path_in("slow-big-src"), data, big, 0644, &err), 0);

    /* In time: through the same pace, 4 KiB in well under 10 s. */
    s = slow_session(&p);
    if (smolvm_ssh_read(s, path_in("slow/small"), 0, &got, &len, smolvm_now_ms() + 10000, &err) < 0)
        fail_msg("read through the slow proxy: %s", smolvm_error_message(err));
    assert_int_equal(len, 4096);
    free(got);
    got = NULL;

    /* download */
    t0 = smolvm_now_ms();
    r = smolvm_ssh_download(s, path_in("slow/big"), dst, 0, t0 + 1500, &err);
    assert_deadline_hit(r, err, t0, s);
    err = smolvm_error_free(err);
    assert_int_equal(access(dst, F_OK), -1);
    assert_no_file_like(path_in("slow-back"), "big");
    smolvm_ssh_free(s);
    proxy_stop(&p);

    /* read_file */
    s = slow_session(&p);
    t0 = smolvm_now_ms();
    r = smolvm_ssh_read(s, path_in("slow/big"), 4u << 20, &got, &len, t0 + 1500, &err);
    assert_deadline_hit(r, err, t0, s);
    assert_null(got);
    err = smolvm_error_free(err);
    smolvm_ssh_free(s);
    proxy_stop(&p);

    /* upload and write */
    s = slow_session(&p);
    t0 = smolvm_now_ms();
    r = smolvm_ssh_upload(s, path_in("slow-big-src"), path_in("slow/up"), t0 + 1500, &err);
    assert_deadline_hit(r, err, t0, s);
    err = smolvm_error_free(err);
    smolvm_ssh_free(s);
    proxy_stop(&p);
    s = slow_session(&p);
    t0 = smolvm_now_ms();
    r = smolvm_ssh_write(s, path_in("slow/w"), data, big, 0644, t0 + 1500, &err);
    assert_deadline_hit(r, err, t0, s);
    err = smolvm_error_free(err);
    smolvm_ssh_free(s);
    proxy_stop(&p);
    free(data);
}

static void test_write_read(void **state)
{
    smolvm_error *err = NULL;
    char *remote = path_in("w/deep/er/f.txt"), *data = NULL;
    size_t len = 0;
    struct stat st;

    (void)state;
    if (smolvm_ssh_write(ssh, remote, "hello\0world", 11, 0640, 0, &err) < 0)
        fail_msg("write: %s", smolvm_error_message(err));
    assert_int_equal(stat(remote, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0640);
    assert_int_equal(smolvm_ssh_read(ssh, remote, 0, &data, &len, 0, &err), 0);
    assert_int_equal(len, 11);
    assert_memory_equal(data, "hello\0world", 12); /* NUL-terminated too */
    free(data);

    /* Empty file, default mode. */
    assert_int_equal(smolvm_ssh_write(ssh, path_in("w/empty"), "", 0, 0, 0, &err), 0);
    assert_int_equal(stat(path_in("w/empty"), &st), 0);
    assert_int_equal(st.st_mode & 07777, 0644);
    assert_int_equal(smolvm_ssh_read(ssh, path_in("w/empty"), 0, &data, &len, 0, &err), 0);
    assert_int_equal(len, 0);
    assert_string_equal(data, "");
    free(data);

    /* The read limit. */
    data = NULL;
    assert_int_equal(smolvm_ssh_read(ssh, remote, 5, &data, &len, 0, &err), SMOLVM_ENOSPC);
    assert_null(data);
    assert_non_null(strstr(smolvm_error_message(err), "larger than 5 bytes"));
    err = smolvm_error_free(err);
    assert_int_equal(smolvm_ssh_read(ssh, remote, 11, &data, &len, 0, &err), 0);
    free(data);

    /* A directory is not a file. */
    assert_int_equal(smolvm_ssh_read(ssh, path_in("w"), 0, &data, &len, 0, &err), SMOLVM_EINVAL);
    smolvm_error_free(err);
}

static void test_missing_paths(void **state)
{
    smolvm_error *err = NULL;
    char *data = NULL;
    size_t len;

    (void)state;
    assert_int_equal(smolvm_ssh_read(ssh, "/nope-smolvm", 0, &data, &len, 0, &err), SMOLVM_ENOENT);
    assert_string_equal(smolvm_error_message(err), "read '/nope-smolvm' in guest: no such file");
    err = smolvm_error_free(err);
    assert_int_equal(smolvm_ssh_download(ssh, "/nope-smolvm", path_in("dl"), 0, 0, &err),
                     SMOLVM_ENOENT);
    assert_non_null(strstr(smolvm_error_message(err), "'/nope-smolvm'"));
    err = smolvm_error_free(err);
    assert_int_equal(access(path_in("dl"), F_OK), -1);
    assert_int_equal(smolvm_ssh_upload(ssh, path_in("no-local"), path_in("x"), 0, &err),
                     SMOLVM_ENOENT);
    assert_non_null(strstr(smolvm_error_message(err), "no-local"));
    err = smolvm_error_free(err);
    /* A parent that is a file. */
    assert_int_equal(smolvm_ssh_write(ssh, path_in("w/deep/er/f.txt/sub"), "x", 1, 0, 0, &err),
                     SMOLVM_EINVAL);
    assert_non_null(strstr(smolvm_error_message(err), "not a directory"));
    err = smolvm_error_free(err);
}

/* ---------------------------------------------------------------- keys, timing */

static void test_keygen(void **state)
{
    smolvm_error *err = NULL;
    char *path = path_in("k/key"), *pub;
    struct stat st;

    (void)state;
    assert_int_equal(mkdir(path_in("k"), 0700), 0);
    assert_int_equal(smolvm_ssh_keygen(path, "a comment", &err), 0);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    pub = slurp(path_in("k/key.pub"));
    assert_non_null(pub);
    assert_int_equal(strncmp(pub, "ssh-ed25519 AAAA", 16), 0);
    assert_non_null(strstr(pub, " a comment\n"));
    free(pub);
    /* Replaces an existing pair. */
    assert_int_equal(smolvm_ssh_keygen(path, "again", &err), 0);
    pub = slurp(path_in("k/key.pub"));
    assert_non_null(strstr(pub, " again\n"));
    free(pub);
    assert_int_equal(smolvm_ssh_keygen(path, "two\nlines", &err), SMOLVM_EINVAL);
    err = smolvm_error_free(err);
    assert_int_equal(smolvm_ssh_keygen(path_in("missing-dir/key"), NULL, &err), SMOLVM_ENOENT);
    smolvm_error_free(err);
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

    return x < y ? -1 : x > y;
}

static void test_latency(void **state)
{
    enum { N = 50, K = 10 };
    int64_t t[N], k[K];
    smolvm_error *err = NULL;

    (void)state;
    for (int i = 0; i < N; i++) {
        int64_t t0 = smolvm_now_ms();
        smolvm_run_result *res = run("true", NULL);

        t[i] = smolvm_now_ms() - t0;
        smolvm_run_result_free(res);
    }
    qsort(t, N, sizeof(t[0]), cmp64);
    for (int i = 0; i < K; i++) {
        int64_t t0 = smolvm_now_ms();

        assert_int_equal(smolvm_ssh_keygen(path_in("lat-key"), NULL, &err), 0);
        k[i] = smolvm_now_ms() - t0;
    }
    qsort(k, K, sizeof(k[0]), cmp64);
    fprintf(stderr, "exec 'true' against local sshd: median %lld ms (min %lld, max %lld, n=%d)\n",
            (long long)t[N / 2], (long long)t[0], (long long)t[N - 1], N);
    fprintf(stderr, "keygen: median %lld ms (min %lld, max %lld, n=%d)\n", (long long)k[K / 2],
            (long long)k[0], (long long)k[K - 1], K);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_output_exit_stderr),
        cmocka_unit_test(test_signal),
        cmocka_unit_test(test_stdin),
        cmocka_unit_test(test_env),
        cmocka_unit_test(test_env_bad_name),
        cmocka_unit_test(test_cwd),
        cmocka_unit_test(test_timeout_kills),
        cmocka_unit_test(test_timeout_closed_output),
        cmocka_unit_test(test_truncation),
        cmocka_unit_test(test_marker_not_spoofable),
        cmocka_unit_test(test_bad_options),
        cmocka_unit_test(test_host_key_mismatch),
        cmocka_unit_test(test_connect_refused_deadline),
        cmocka_unit_test(test_dropped_connection),
        cmocka_unit_test(test_upload_download),
        cmocka_unit_test(test_download_modes),
        cmocka_unit_test(test_download_cap),
        cmocka_unit_test(test_sftp_deadline),
        cmocka_unit_test(test_write_read),
        cmocka_unit_test(test_missing_paths),
        cmocka_unit_test(test_keygen),
        cmocka_unit_test(test_latency),
    };

    if (geteuid() != 0) {
        printf("skip: needs root (sshd for the test runs as root and logs in as root)\n");
        return 77;
    }
    if (access(SSHD, X_OK) != 0) {
        printf("skip: %s not found (apt-get install openssh-server)\n", SSHD);
        return 77;
    }
    if (access("/usr/bin/ssh-keygen", X_OK) != 0) {
        printf("skip: /usr/bin/ssh-keygen not found (apt-get install openssh-client)\n");
        return 77;
    }
    return cmocka_run_group_tests(tests, start_sshd, stop_sshd);
}
