/* SPDX-License-Identifier: MIT */
/* The Firecracker REST client: libcurl over the API unix socket, jansson for JSON. */
#include "util.h"

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "error.h"
#include "vmm/fc-api.h"

#define REPLY_MAX (1 << 20) /* Firecracker's answers are small; a larger one is wrong */
#define FAULT_MAX 400       /* characters of a fault_message quoted in an error */

struct smolvm_fc_api {
    CURL *curl;
    char *sock_path;
};

typedef struct reply_buf {
    char *data;
    size_t len;
    int overflow;
} reply_buf;

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result = CURLE_FAILED_INIT;

static void curl_init_once(void)
{
    curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int smolvm_fc_api_new(smolvm_fc_api **out, const char *sock_path, smolvm_error **err)
{
    smolvm_fc_api *api;

    (void)pthread_once(&curl_once, curl_init_once);
    if (curl_init_result != CURLE_OK)
        return smolvm_err(err, SMOLVM_EIO, "curl_global_init: %s",
                          curl_easy_strerror(curl_init_result));
    api = calloc(1, sizeof(*api));
    if (!api)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    api->sock_path = strdup(sock_path);
    api->curl = curl_easy_init();
    if (!api->sock_path || !api->curl) {
        smolvm_fc_api_free(api);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    *out = api;
    return 0;
}

smolvm_fc_api *smolvm_fc_api_free(smolvm_fc_api *api)
{
    if (!api)
        return NULL;
    if (api->curl)
        curl_easy_cleanup(api->curl);
    free(api->sock_path);
    free(api);
    return NULL;
}

int smolvm_fc_valid_id(const char *s)
{
    size_t n = s ? strlen(s) : 0, i;

    /* Firecracker's validate_id: ASCII alphanumeric or '_', 1..64 characters. */
    if (n == 0 || n > SMOLVM_FC_ID_MAX)
        return 0;
    for (i = 0; i < n; i++)
        if (!(s[i] >= 'a' && s[i] <= 'z') && !(s[i] >= 'A' && s[i] <= 'Z') &&
            !(s[i] >= '0' && s[i] <= '9') && s[i] != '_')
            return 0;
    return 1;
}

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    reply_buf *b = userdata;
    size_t n = size * nmemb;
    char *nd;

    if (b->len + n > REPLY_MAX) {
        b->overflow = 1;
        return 0;
    }
    nd = realloc(b->data, b->len + n + 1);
    if (!nd)
        return 0;
    memcpy(nd + b->len, ptr, n);
    b->data = nd;
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

/* "<fault_message>" of an error answer, or the raw body, or "no details". */
static char *fault_text(const reply_buf *b)
{
    json_t *j = b->data ? json_loads(b->data, 0, NULL) : NULL;
    const char *msg = json_string_value(json_object_get(j, "fault_message"));
    char *out;

    if (msg)
        out = smolvm_strdupf("%.*s", FAULT_MAX, msg);
    else if (b->len)
        out = smolvm_strdupf("%.*s", FAULT_MAX, b->data);
    else
        out = strdup("no details");
    json_decref(j);
    if (out)
        out[strcspn(out, "\r\n")] = '\0';
    return out;
}

int smolvm_fc_api_call(smolvm_fc_api *api, const char *method, const char *path, json_t *body,
                       json_t **reply, int64_t deadline, smolvm_error **err)
{
    _cleanup_free_ char *url = NULL, *text = NULL, *fault = NULL;
    struct curl_slist *headers = NULL, *h;
    reply_buf b = {0};
    CURLcode rc;
    long status = 0;
    int left = smolvm_remaining_ms(deadline), r = 0;

    if (reply)
        *reply = NULL;
    if (left <= 0)
        return smolvm_err(err, SMOLVM_ETIMEDOUT, "%s %s: deadline passed before the request",
                          method, path);
    url = smolvm_strdupf("http://localhost%s", path);
    if (body && !(text = json_dumps(body, JSON_COMPACT)))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    if (!url)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    /* No "Expect: 100-continue" round trip; Firecracker answers in one go. */
    h = curl_slist_append(NULL, "Accept: application/json");
    if (h)
        headers = h;
    if (h && body)
        h = curl_slist_append(headers, "Content-Type: application/json");
    if (h)
        h = curl_slist_append(headers, "Expect:");
    if (!h) {
        curl_slist_free_all(headers);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }

    curl_easy_reset(api->curl);
    (void)curl_easy_setopt(api->curl, CURLOPT_UNIX_SOCKET_PATH, api->sock_path);
    (void)curl_easy_setopt(api->curl, CURLOPT_URL, url);
    (void)curl_easy_setopt(api->curl, CURLOPT_CUSTOMREQUEST, method);
    (void)curl_easy_setopt(api->curl, CURLOPT_HTTPHEADER, headers);
    (void)curl_easy_setopt(api->curl, CURLOPT_NOSIGNAL, 1L);
    (void)curl_easy_setopt(api->curl, CURLOPT_TIMEOUT_MS, (long)left);
    (void)curl_easy_setopt(api->curl, CURLOPT_WRITEFUNCTION, on_data);
    (void)curl_easy_setopt(api->curl, CURLOPT_WRITEDATA, &b);
    (void)curl_easy_setopt(api->curl, CURLOPT_PROTOCOLS_STR, "http");
    if (body) {
        (void)curl_easy_setopt(api->curl, CURLOPT_POSTFIELDS, text);
        (void)curl_easy_setopt(api->curl, CURLOPT_POSTFIELDSIZE, (long)strlen(text));
    } else if (strcmp(method, "GET") == 0) {
        (void)curl_easy_setopt(api->curl, CURLOPT_HTTPGET, 1L);
    }
    rc = curl_easy_perform(api->curl);
    curl_slist_free_all(headers);
    if (rc == CURLE_OK)
        (void)curl_easy_getinfo(api->curl, CURLINFO_RESPONSE_CODE, &status);

    if (rc == CURLE_COULDNT_CONNECT)
        r = smolvm_err(err, SMOLVM_ESTATE, "%s %s: cannot connect to '%s' (is the vm running?)",
                       method, path, api->sock_path);
    else if (rc == CURLE_OPERATION_TIMEDOUT)
        r = smolvm_err(err, SMOLVM_ETIMEDOUT, "%s %s: firecracker did not answer in time", method,
                       path);
    else if (rc == CURLE_WRITE_ERROR && b.overflow)
        r = smolvm_err(err, SMOLVM_EVMM, "%s %s: answer larger than %d bytes", method, path,
                       REPLY_MAX);
    else if (rc != CURLE_OK)
        r = smolvm_err(err, SMOLVM_EVMM, "%s %s: %s", method, path, curl_easy_strerror(rc));
    else if (status < 200 || status > 299) {
        fault = fault_text(&b);
        r = smolvm_err(err, SMOLVM_EVMM, "%s %s: firecracker answered %ld: %s", method, path,
                       status, fault ? fault : "no details");
    } else if (reply && status == 200) {
        json_error_t je;

        *reply = b.data ? json_loads(b.data, 0, &je) : NULL;
        if (!*reply)
            r = smolvm_err(err, SMOLVM_EVMM, "%s %s: the answer is not JSON", method, path);
    }
    free(b.data);
    return r;
}

/* PUT with a body built by json_pack; the body is consumed. */
static int put(smolvm_fc_api *api, const char *path, json_t *body, int64_t deadline,
               smolvm_error **err)
{
    int r;

    if (!body)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    r = smolvm_fc_api_call(api, "PUT", path, body, NULL, deadline, err);
    json_decref(body);
    return r;
}

int smolvm_fc_put_machine_config(smolvm_fc_api *api, unsigned vcpus, unsigned mem_mib,
                                 int64_t deadline, smolvm_error **err)
{
    if (vcpus < 1 || vcpus > 32)
        return smolvm_err(err, SMOLVM_EINVAL, "firecracker: vcpu count %u out of range 1..32",
                          vcpus);
    if (mem_mib < 1)
        return smolvm_err(err, SMOLVM_EINVAL, "firecracker: memory size must be positive");
    return put(api, "/machine-config",
               json_pack("{s:I, s:I, s:b}", "vcpu_count", (json_int_t)vcpus, "mem_size_mib",
                         (json_int_t)mem_mib, "smt", 0),
               deadline, err);
}

int smolvm_fc_put_boot_source(smolvm_fc_api *api, const char *kernel, const char *boot_args,
                              int64_t deadline, smolvm_error **err)
{
    json_t *b = json_pack("{s:s}", "kernel_image_path", kernel);

    if (b && boot_args && json_object_set_new(b, "boot_args", json_string(boot_args)) < 0) {
        json_decref(b);
        b = NULL;
    }
    return put(api, "/boot-source", b, deadline, err);
}

int smolvm_fc_put_drive(smolvm_fc_api *api, const smolvm_fc_drive *d, int64_t deadline,
                        smolvm_error **err)
{
    _cleanup_free_ char *path = NULL;

    if (!smolvm_fc_valid_id(d->id))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "firecracker: drive id '%s' is not 1-64 of [A-Za-z0-9_]",
                          d->id ? d->id : "(null)");
    path = smolvm_strdupf("/drives/%s", d->id);
    if (!path)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    return put(api, path,
               json_pack("{s:s, s:s, s:b, s:b, s:s}", "drive_id", d->id, "path_on_host", d->path,
                         "is_root_device", d->root, "is_read_only", d->read_only, "cache_type",
                         "Writeback"),
               deadline, err);
}

int smolvm_fc_put_network_interface(smolvm_fc_api *api, const char *iface_id,
                                    const char *host_dev_name, const char *guest_mac,
                                    int64_t deadline, smolvm_error **err)
{
    _cleanup_free_ char *path = NULL;
    json_t *b;

    if (!smolvm_fc_valid_id(iface_id))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "firecracker: interface id '%s' is not 1-64 of [A-Za-z0-9_]",
                          iface_id ? iface_id : "(null)");
    path = smolvm_strdupf("/network-interfaces/%s", iface_id);
    if (!path)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    b = json_pack("{s:s, s:s}", "iface_id", iface_id, "host_dev_name", host_dev_name);
    if (b && guest_mac && json_object_set_new(b, "guest_mac", json_string(guest_mac)) < 0) {
        json_decref(b);
        b = NULL;
    }
    return put(api, path, b, deadline, err);
}

int smolvm_fc_put_vsock(smolvm_fc_api *api, unsigned guest_cid, const char *uds_path,
                        int64_t deadline, smolvm_error **err)
{
    if (guest_cid < 3)
        return smolvm_err(err, SMOLVM_EINVAL, "firecracker: vsock guest cid %u is below 3",
                          guest_cid);
    return put(api, "/vsock",
               json_pack("{s:I, s:s}", "guest_cid", (json_int_t)guest_cid, "uds_path", uds_path),
               deadline, err);
}

int smolvm_fc_put_logger(smolvm_fc_api *api, const char *log_path, const char *level,
                         int64_t deadline, smolvm_error **err)
{
    return put(api, "/logger",
               json_pack("{s:s, s:s, s:b}", "log_path", log_path, "level", level, "show_level", 1),
               deadline, err);
}

int smolvm_fc_put_metrics(smolvm_fc_api *api, const char *metrics_path, int64_t deadline,
                          smolvm_error **err)
{
    return put(api, "/metrics", json_pack("{s:s}", "metrics_path", metrics_path), deadline, err);
}

int smolvm_fc_put_entropy(smolvm_fc_api *api, int64_t deadline, smolvm_error **err)
{
    return put(api, "/entropy", json_object(), deadline, err);
}

int smolvm_fc_action(smolvm_fc_api *api, const char *action, int64_t deadline, smolvm_error **err)
{
    return put(api, "/actions", json_pack("{s:s}", "action_type", action), deadline, err);
}

int smolvm_fc_patch_vm(smolvm_fc_api *api, int paused, int64_t deadline, smolvm_error **err)
{
    json_t *b = json_pack("{s:s}", "state", paused ? "Paused" : "Resumed");
    int r;

    if (!b)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    r = smolvm_fc_api_call(api, "PATCH", "/vm", b, NULL, deadline, err);
    json_decref(b);
    return r;
}

int smolvm_fc_snapshot_create(smolvm_fc_api *api, const char *snapshot_path, const char *mem_path,
                              int64_t deadline, smolvm_error **err)
{
    return put(api, "/snapshot/create",
               json_pack("{s:s, s:s, s:s}", "snapshot_path", snapshot_path, "mem_file_path",
                         mem_path, "snapshot_type", "Full"),
               deadline, err);
}

int smolvm_fc_snapshot_load(smolvm_fc_api *api, const smolvm_fc_load *l, int64_t deadline,
                            smolvm_error **err)
{
    /* mem_backend, not the deprecated mem_file_path. */
    json_t *b =
        json_pack("{s:s, s:{s:s, s:s}, s:b}", "snapshot_path", l->snapshot_path, "mem_backend",
                  "backend_type", "File", "backend_path", l->mem_path, "resume_vm", l->resume);

    if (b && l->vsock_uds &&
        json_object_set_new(b, "vsock_override", json_pack("{s:s}", "uds_path", l->vsock_uds)) <
            0) {
        json_decref(b);
        b = NULL;
    }
    if (b && l->tap &&
        json_object_set_new(
            b, "network_overrides",
            json_pack("[{s:s, s:s}]", "iface_id", "eth0", "host_dev_name", l->tap)) < 0) {
        json_decref(b);
        b = NULL;
    }
    return put(api, "/snapshot/load", b, deadline, err);
}

int smolvm_fc_describe(smolvm_fc_api *api, json_t **info, int64_t deadline, smolvm_error **err)
{
    json_t *j = NULL;
    int r = smolvm_fc_api_call(api, "GET", "/", NULL, &j, deadline, err);

    if (r < 0)
        return r;
    if (!json_is_string(json_object_get(j, "state"))) {
        json_decref(j);
        return smolvm_err(err, SMOLVM_EVMM, "GET /: the answer has no 'state'");
    }
    *info = j;
    return 0;
}

int smolvm_fc_version(smolvm_fc_api *api, char **version, int64_t deadline, smolvm_error **err)
{
    json_t *j = NULL;
    const char *v;
    int r = smolvm_fc_api_call(api, "GET", "/version", NULL, &j, deadline, err);

    if (r < 0)
        return r;
    v = json_string_value(json_object_get(j, "firecracker_version"));
    *version = v ? strdup(v) : NULL;
    json_decref(j);
    if (!v)
        return smolvm_err(err, SMOLVM_EVMM,
                          "GET /version: the answer has no "
                          "'firecracker_version'");
    if (!*version)
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    return 0;
}
