/* SPDX-License-Identifier: MIT */
/*
 * bench/lifecycle: N runs of create -> start -> first command -> 50 warm `true`
 * commands -> stop -> delete, through the public C API, beside baselines measured in
 * the same run on the same kernel and disk:
 *   - plain QEMU booted by hand to the init's ready message (bench/image-boot.py),
 *   - one fresh OpenSSH connection running `true` (what start adds after ready),
 *   - OpenSSH with a ControlMaster running `true` (the warm-command baseline).
 * Prints median/min/max per phase and the ratios the targets are stated in.
 *
 *   build/bench-lifecycle [-n RUNS] [-w WARM] [-v] [-N]
 * -v prints the library's debug log (boot milestones) with timestamps to stderr.
 * -N uses network "nat" (root, and a namespace with a default route: run it inside a
 *    test namespace, never on a machine's own network) instead of "user".
 */
#define _GNU_SOURCE
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "smolvm.h"

enum { P_CREATE, P_START, P_FIRST, P_WARM, P_STOP, P_DELETE, P_STOPDEL, P_TOTAL, NPHASES };
static const char *const phase_names[NPHASES] = {
    "create", "start (to commands)", "first command", "warm command (median)", "stop",
    "delete", "stop+delete",         "full lifecycle"};

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void die(const char *what, smolvm_error *e)
{
    fprintf(stderr, "bench-lifecycle: %s: %s\n", what, smolvm_error_message(e));
    exit(1);
}

static int run_true(smolvm_vm *vm)
{
    smolvm_run_result *r = NULL;
    smolvm_error *e = NULL;

    if (smolvm_vm_run(&r, vm, "true", NULL, &e) < 0)
        die("run", e);
    smolvm_run_result_free(r);
    return 0;
}

/* Time a shell command (fork/exec of ssh included: that is what OpenSSH costs). */
static double time_shell(const char *cmd)
{
    double t0 = now_ms();

    if (system(cmd) != 0) {
        fprintf(stderr, "bench-lifecycle: baseline command failed: %s\n", cmd);
        exit(1);
    }
    return now_ms() - t0;
}

/* OpenSSH against a running smolvm VM, with its pinned host key and our client key. */
static void ssh_baselines(smolvm_vm *vm, const char *state_dir, int warm, double *fresh,
                          double *master)
{
    char *info_json = NULL, cmd[2048], dir[] = "/tmp/smolvm-bench.XXXXXX";
    smolvm_error *e = NULL;
    json_t *info;
    const char *hostkey;
    double *v = calloc((size_t)warm, sizeof(double));
    int port, i;
    FILE *kh;
    char *pub = NULL;
    size_t cap = 0;

    if (smolvm_vm_info_json(&info_json, vm, &e) < 0)
        die("info", e);
    info = json_loads(info_json, 0, NULL);
    port = (int)json_integer_value(json_object_get(info, "ssh_port"));
    hostkey = json_string_value(json_object_get(info, "host_key"));
    if (!mkdtemp(dir) || !hostkey || !port || !v) {
        fprintf(stderr, "bench-lifecycle: no ssh port or host key in vm info\n");
        exit(1);
    }
    FILE *hk = fopen(hostkey, "r");
    if (!hk || getline(&pub, &cap, hk) < 0) {
        fprintf(stderr, "bench-lifecycle: cannot read '%s'\n", hostkey);
        exit(1);
    }
    fclose(hk);
    snprintf(cmd, sizeof(cmd), "%s/known_hosts", dir);
    kh = fopen(cmd, "w");
    fprintf(kh, "[127.0.0.1]:%d %s", port, pub);
    fclose(kh);
#define SSH_OPTS                                                                                   \
    "ssh -q -p %d -i %s/id_ed25519 -o IdentitiesOnly=yes -o BatchMode=yes "                        \
    "-o StrictHostKeyChecking=yes -o UserKnownHostsFile=%s/known_hosts"
    snprintf(cmd, sizeof(cmd), SSH_OPTS " root@127.0.0.1 true", port, state_dir, dir);
    for (i = 0; i < 3; i++)
        v[i] = time_shell(cmd);
    *fresh = median(v, 3);
    snprintf(cmd, sizeof(cmd),
             SSH_OPTS " -o ControlMaster=yes -o ControlPath=%s/cm -fN "
                      "root@127.0.0.1",
             port, state_dir, dir, dir);
    time_shell(cmd);
    snprintf(cmd, sizeof(cmd), SSH_OPTS " -o ControlPath=%s/cm root@127.0.0.1 true", port,
             state_dir, dir, dir);
    time_shell(cmd); /* first use of the master */
    for (i = 0; i < warm; i++)
        v[i] = time_shell(cmd);
    *master = median(v, warm);
    snprintf(cmd, sizeof(cmd), "ssh -q -o ControlPath=%s/cm -O exit x 2>/dev/null; rm -rf %s", dir,
             dir);
    if (system(cmd) != 0)
        fprintf(stderr, "bench: closing the ssh master failed (harmless)\n");
    json_decref(info);
    free(info_json);
    free(pub);
    free(v);
}

/* bench/image-boot.py prints "spawn->ready ... median min max"; take the median. */
static double plain_qemu_ready(int runs, int kvm)
{
    char cmd[512], line[512];
    double med = -1, mn, mx;
    FILE *p;

    /* The same machine smolvm runs: 2 vCPUs, 512 MiB, and multi-threaded TCG where
     * there is no KVM (what smolvm's QEMU backend uses for more than one vCPU). */
    snprintf(cmd, sizeof(cmd),
             "python3 %s/bench/image-boot.py -n %d --smp 2 --memory 512 --accel %s",
             SMOLVM_SOURCE_DIR, runs, kvm ? "kvm" : "tcg,thread=multi");
    p = popen(cmd, "r");
    while (p && fgets(line, sizeof(line), p)) {
        char *s = strstr(line, "ready");

        if (strncmp(line, "spawn", 5) == 0 && s && !strstr(line, "banner") &&
            sscanf(line + strcspn(line, "0123456789"), "%lfs %lfs %lfs", &med, &mn, &mx) == 3)
            med *= 1000;
    }
    if (p)
        pclose(p);
    return med;
}

static double t_origin;

static void on_log(int level, const char *msg, void *payload)
{
    (void)level;
    (void)payload;
    fprintf(stderr, "%9.1f ms  %s\n", now_ms() - t_origin, msg);
}

int main(int argc, char **argv)
{
    smolvm_ctx_options copts = SMOLVM_CTX_OPTIONS_INIT;
    int runs = 5, warm = 50, opt, i, k, nat = 0;
    smolvm_ctx *ctx = NULL;
    smolvm_error *e = NULL;
    double *ph[NPHASES], *w, fresh = 0, master = 0, baseline;

    while ((opt = getopt(argc, argv, "n:w:vN")) != -1) {
        if (opt == 'N') {
            nat = 1;
        } else if (opt == 'v') {
            copts.log = on_log;
            copts.log_level = SMOLVM_LOG_DEBUG;
        } else if (opt == 'n')
            runs = atoi(optarg);
        else if (opt == 'w')
            warm = atoi(optarg);
        else {
            fprintf(stderr, "usage: %s [-n RUNS] [-w WARM] [-v] [-N]\n", argv[0]);
            return 2;
        }
    }
    if (runs < 1 || warm < 3)
        return 2;
    t_origin = now_ms();
    if (smolvm_ctx_new(&ctx, &copts, &e) < 0)
        die("context", e);
    for (k = 0; k < NPHASES; k++)
        ph[k] = calloc((size_t)runs, sizeof(double));
    w = calloc((size_t)warm, sizeof(double));

    for (i = 0; i < runs; i++) {
        smolvm_vm_options o = SMOLVM_VM_OPTIONS_INIT;
        smolvm_vm *vm = NULL;
        double t0 = now_ms(), t;

        o.network = nat ? SMOLVM_NET_NAT : SMOLVM_NET_USER;
        t_origin = now_ms();
        if (smolvm_vm_create(&vm, ctx, &o, &e) < 0)
            die("create", e);
        ph[P_CREATE][i] = (t = now_ms()) - t0;
        if (smolvm_vm_start(vm, 120000, &e) < 0)
            die("start", e);
        ph[P_START][i] = now_ms() - t;
        t = now_ms();
        run_true(vm);
        ph[P_FIRST][i] = now_ms() - t;
        for (k = 0; k < warm; k++) {
            t = now_ms();
            run_true(vm);
            w[k] = now_ms() - t;
        }
        ph[P_WARM][i] = median(w, warm);
        if (i == 0 && !nat)
            ssh_baselines(vm, smolvm_ctx_state_dir(ctx), warm, &fresh, &master);
        t = now_ms();
        if (smolvm_vm_stop(vm, 5000, &e) < 0)
            die("stop", e);
        ph[P_STOP][i] = now_ms() - t;
        t = now_ms();
        if (smolvm_vm_delete(vm, &e) < 0)
            die("delete", e);
        ph[P_DELETE][i] = now_ms() - t;
        ph[P_STOPDEL][i] = ph[P_STOP][i] + ph[P_DELETE][i];
        ph[P_TOTAL][i] = now_ms() - t0;
        smolvm_vm_free(vm);
        fprintf(stderr, "run %d/%d: start %.0f ms, warm %.1f ms, stop+delete %.0f ms\n", i + 1,
                runs, ph[P_START][i], ph[P_WARM][i], ph[P_STOPDEL][i]);
    }
    {
        char *doc = NULL;

        /* Same accelerator as smolvm chose: "accel" detail says kvm or tcg. */
        if (smolvm_doctor_json(&doc, ctx, NULL) == 0)
            baseline = plain_qemu_ready(runs, strstr(doc, "uses kvm") != NULL);
        else
            baseline = plain_qemu_ready(runs, 0);
        free(doc);
    }

    printf("\nsmolvm lifecycle, %d runs (%d warm commands each), QEMU microvm\n", runs, warm);
    printf("%-26s %9s %9s %9s\n", "phase (ms)", "median", "min", "max");
    for (k = 0; k < NPHASES; k++) {
        double mn, mx;

        median(ph[k], runs);
        mn = ph[k][0];
        mx = ph[k][runs - 1];
        printf("%-26s %9.1f %9.1f %9.1f\n", phase_names[k], median(ph[k], runs), mn, mx);
    }
    if (nat) {
        /* Baselines are user-network runs; compare with a plain run of this bench. */
        printf("\n(network nat: compare with a run without -N for the network's cost)\n");
        smolvm_ctx_free(ctx);
        return 0;
    }
    printf("\nbaselines, same kernel and disk\n");
    printf("%-40s %9.1f\n", "plain QEMU spawn -> ready (median)", baseline);
    printf("%-40s %9.1f\n", "OpenSSH fresh connection `true`", fresh);
    printf("%-40s %9.1f\n", "OpenSSH ControlMaster `true` (median)", master);
    printf("\nratios (target <= 1.00)\n");
    printf("%-40s %9.2f\n", "start / (plain ready + fresh ssh)",
           median(ph[P_START], runs) / (baseline + fresh));
    printf("%-40s %9.2f\n", "warm command / ControlMaster", median(ph[P_WARM], runs) / master);
    printf("%-40s %9.2f\n", "stop+delete / 100 ms", median(ph[P_STOPDEL], runs) / 100.0);
    smolvm_ctx_free(ctx);
    return 0;
}
