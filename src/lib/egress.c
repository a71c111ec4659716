/* SPDX-License-Identifier: MIT */
/* Egress policies (egress.h): entries checked and normalised, resolution against the
 * network, the stored form, the split into CIDRs and names. */
#include "util.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <string.h>

#include "egress.h"
#include "error.h"

#define ENTRY_SHOWN 80 /* bytes of a bad entry quoted in a message */

static const char ENTRY_FORMS[] = "a domain name ('pypi.org'), '*.suffix', '*' or an IPv4 "
                                  "address or CIDR ('198.51.100.0/24')";

static bool looks_numeric(const char *s)
{
    return s[0] && strspn(s, "0123456789./") == strlen(s);
}

/* "a.b.c.d" or "a.b.c.d/len" with no host bits set. */
static int check_cidr(const char *s, smolvm_error **err)
{
    const char *slash = strchr(s, '/');
    size_t alen = slash ? (size_t)(slash - s) : strlen(s);
    char addr[16];
    struct in_addr a;
    long plen = 32;

    if (alen == 0 || alen >= sizeof(addr))
        goto bad;
    memcpy(addr, s, alen);
    addr[alen] = '\0';
    if (inet_pton(AF_INET, addr, &a) != 1)
        goto bad;
    if (slash) {
        char *end = NULL;

        if (slash[1] < '0' || slash[1] > '9' || strlen(slash + 1) > 2)
            goto bad;
        plen = strtol(slash + 1, &end, 10);
        if (*end || plen < 0 || plen > 32)
            goto bad;
    }
    {
        uint32_t ip = ntohl(a.s_addr), mask = plen ? ~0u << (32 - plen) : 0;

        if (ip & ~mask) {
            struct in_addr net = {.s_addr = htonl(ip & mask)};
            char hint[INET_ADDRSTRLEN];

            (void)inet_ntop(AF_INET, &net, hint, sizeof(hint));
            return smolvm_err(err, SMOLVM_EINVAL, "'%s' has host bits set (did you mean '%s/%ld'?)",
                              s, hint, plen);
        }
    }
    return 0;
bad:
    return smolvm_err(err, SMOLVM_EINVAL,
                      "invalid address '%s' (expected a.b.c.d or a.b.c.d/len, len 0..32)", s);
}

/* A host name (lowercase already): labels of [a-z0-9_-], 1..63 bytes, no '-' at
 * either end, the last one not all digits. */
static bool valid_name(const char *s)
{
    const char *label = s, *p;
    bool digits = true;

    if (!*s)
        return false;
    for (p = s;; p++) {
        if (*p == '.' || *p == '\0') {
            size_t len = (size_t)(p - label);

            if (len == 0 || len > 63 || label[0] == '-' || p[-1] == '-')
                return false;
            if (*p == '\0')
                return !digits;
            label = p + 1;
            digits = true;
            continue;
        }
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '_'))
            return false;
        if (*p < '0' || *p > '9')
            digits = false;
    }
}

/* Check one entry and write its normalised form (out may be NULL). */
static int entry_norm(const char *in, char out[SMOLVM_EGRESS_ENTRY_MAX + 1], smolvm_error **err)
{
    char low[SMOLVM_EGRESS_ENTRY_MAX + 1];
    size_t len = in ? strlen(in) : 0, i;
    int r;

    if (!in || len == 0)
        return smolvm_err(err, SMOLVM_EINVAL, "expected %s, got an empty string", ENTRY_FORMS);
    for (i = 0; i < len; i++)
        if ((unsigned char)in[i] <= 0x20 || (unsigned char)in[i] >= 0x7f)
            return smolvm_err(err, SMOLVM_EINVAL,
                              "expected %s, got a string with a space, a control or a "
                              "non-ASCII character",
                              ENTRY_FORMS);
    if (len > SMOLVM_EGRESS_ENTRY_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "'%.*s...' is longer than %d bytes", ENTRY_SHOWN, in,
                          SMOLVM_EGRESS_ENTRY_MAX);
    for (i = 0; i <= len; i++)
        low[i] = (char)tolower((unsigned char)in[i]);
    if (looks_numeric(low)) {
        if ((r = check_cidr(low, err)) < 0)
            return r;
    } else if (strcmp(low, "*") != 0 && !valid_name(strncmp(low, "*.", 2) == 0 ? low + 2 : low)) {
        if (low[len - 1] == '.' && len > 1) {
            low[len - 1] = '\0';
            if (valid_name(strncmp(low, "*.", 2) == 0 ? low + 2 : low))
                return smolvm_err(err, SMOLVM_EINVAL,
                                  "'%s': a name without the final dot, please ('%s')", in, low);
        }
        return smolvm_err(err, SMOLVM_EINVAL, "expected %s, got '%s'", ENTRY_FORMS, in);
    }
    if (out)
        memcpy(out, low, len + 1);
    return 0;
}

int smolvm_egress_entry_check(const char *entry, smolvm_error **err)
{
    return entry_norm(entry, NULL, err);
}

bool smolvm_egress_entry_is_cidr(const char *entry)
{
    return entry && looks_numeric(entry);
}

void smolvm_egress_policy_clear(smolvm_egress_policy *p)
{
    for (size_t i = 0; p->allow && i < p->n_allow; i++)
        free(p->allow[i]);
    free(p->allow);
    memset(p, 0, sizeof(*p));
}

int smolvm_egress_policy_copy(smolvm_egress_policy *out, const smolvm_egress *in, const char *field,
                              smolvm_error **err)
{
    smolvm_egress_policy p = {0};
    size_t n = 0;
    int r;

    memset(out, 0, sizeof(*out));
    if (!smolvm_egress_mode_to_string(in->mode))
        return smolvm_err(err, SMOLVM_EINVAL,
                          "%s: invalid mode '%d' (expected internet, none or allow)", field,
                          (int)in->mode);
    if (in->mode != SMOLVM_EGRESS_ALLOW && in->allow)
        return smolvm_err(err, SMOLVM_EINVAL, "%s.allow: only with mode 'allow', not '%s'", field,
                          smolvm_egress_mode_to_string(in->mode));
    p.mode = in->mode;
    if (in->mode != SMOLVM_EGRESS_ALLOW) {
        *out = p;
        return 0;
    }
    while (in->allow && in->allow[n])
        n++;
    if (n > SMOLVM_EGRESS_ALLOW_MAX)
        return smolvm_err(err, SMOLVM_EINVAL, "%s.allow: at most %d entries, got %zu", field,
                          SMOLVM_EGRESS_ALLOW_MAX, n);
    if (!(p.allow = calloc(n + 1, sizeof(*p.allow))))
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        char norm[SMOLVM_EGRESS_ENTRY_MAX + 1];

        if ((r = entry_norm(in->allow[i], norm, err)) < 0) {
            smolvm_egress_policy_clear(&p);
            (void)smolvm_err_wrap(err, "%s.allow[%zu]", field, i + 1);
            return r;
        }
        if (!(p.allow[i] = strdup(norm))) {
            smolvm_egress_policy_clear(&p);
            return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
        }
        p.n_allow = i + 1;
    }
    *out = p;
    return 0;
}

int smolvm_egress_policy_dup(smolvm_egress_policy *out, const smolvm_egress_policy *in,
                             smolvm_error **err)
{
    smolvm_egress e = {in->mode, (const char *const *)in->allow};

    return smolvm_egress_policy_copy(out, &e, "egress", err);
}

int smolvm_egress_check_network(smolvm_egress_mode mode, smolvm_net_mode network,
                                smolvm_error **err)
{
    const char *what = mode == SMOLVM_EGRESS_ALLOW ? "an allow list" : "'internet'";

    if (network == SMOLVM_NET_NAT || mode == SMOLVM_EGRESS_DEFAULT || mode == SMOLVM_EGRESS_NONE)
        return 0;
    if (network == SMOLVM_NET_USER)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "egress: %s needs network 'nat' (QEMU user networking cannot enforce "
                          "an egress policy: its guests get no outbound connections at all; "
                          "use network = \"nat\")",
                          what);
    return smolvm_err(err, SMOLVM_EINVAL,
                      "egress: %s needs network 'nat' (network 'none' has no NIC: its egress is "
                      "'none')",
                      what);
}

int smolvm_egress_policy_resolve(smolvm_egress_policy *p, smolvm_net_mode network,
                                 smolvm_error **err)
{
    int r;

    if ((r = smolvm_egress_check_network(p->mode, network, err)) < 0)
        return r;
    if (network == SMOLVM_NET_NAT) {
        if (p->mode == SMOLVM_EGRESS_DEFAULT)
            p->mode = SMOLVM_EGRESS_INTERNET;
        return 0;
    }
    /* user: closed to the outside; none: no NIC */
    smolvm_egress_policy_clear(p);
    p->mode = SMOLVM_EGRESS_NONE;
    return 0;
}

json_t *smolvm_egress_policy_to_json(const smolvm_egress_policy *p)
{
    json_t *list, *o;

    if (p->mode != SMOLVM_EGRESS_ALLOW)
        return json_string(smolvm_egress_mode_to_string(p->mode));
    if (!(list = json_array()))
        return NULL;
    for (size_t i = 0; i < p->n_allow; i++)
        if (json_array_append_new(list, json_string(p->allow[i])) < 0) {
            json_decref(list);
            return NULL;
        }
    o = json_pack("{s:o}", "allow", list);
    return o;
}

int smolvm_egress_policy_from_json(smolvm_egress_policy *out, const json_t *j, smolvm_error **err)
{
    const char *allow[SMOLVM_EGRESS_ALLOW_MAX + 1];
    smolvm_egress e = {SMOLVM_EGRESS_ALLOW, allow};
    json_t *list, *v;
    size_t i;

    memset(out, 0, sizeof(*out));
    if (json_is_string(j)) {
        e.mode = smolvm_egress_mode_from_string(json_string_value(j));
        if (e.mode != SMOLVM_EGRESS_INTERNET && e.mode != SMOLVM_EGRESS_NONE &&
            e.mode != SMOLVM_EGRESS_DEFAULT)
            return smolvm_err(err, SMOLVM_EINVAL, "egress: unknown mode '%.40s'",
                              json_string_value(j));
        e.allow = NULL;
        return smolvm_egress_policy_copy(out, &e, "egress", err);
    }
    list = json_object_get(j, "allow");
    if (!json_is_object(j) || json_object_size(j) != 1 || !json_is_array(list) ||
        json_array_size(list) > SMOLVM_EGRESS_ALLOW_MAX)
        return smolvm_err(err, SMOLVM_EINVAL,
                          "egress: expected \"internet\", \"none\" or "
                          "{\"allow\": [...]}");
    json_array_foreach (list, i, v) {
        if (!json_is_string(v))
            return smolvm_err(err, SMOLVM_EINVAL, "egress.allow[%zu]: expected a string", i + 1);
        allow[i] = json_string_value(v);
    }
    allow[json_array_size(list)] = NULL;
    return smolvm_egress_policy_copy(out, &e, "egress", err);
}

int smolvm_egress_policy_net(smolvm_net_egress *out, const char ***cidrs,
                             const smolvm_egress_policy *p, bool have_resolver, smolvm_error **err)
{
    smolvm_net_egress e = SMOLVM_NET_EGRESS_INIT;
    const char **c = NULL, **names = NULL;
    size_t nc = 0, nn = 0;
    int r;

    switch (p->mode) {
    case SMOLVM_EGRESS_INTERNET: e.mode = SMOLVM_NET_EGRESS_INTERNET; break;
    case SMOLVM_EGRESS_NONE: e.mode = SMOLVM_NET_EGRESS_NONE; break;
    case SMOLVM_EGRESS_ALLOW: e.mode = SMOLVM_NET_EGRESS_ALLOW; break;
    default: return smolvm_err(err, SMOLVM_EINVAL, "egress: the policy is not resolved");
    }
    if ((r = smolvm_egress_policy_split(p, &c, &nc, &names, &nn, err)) < 0)
        return r;
    if (nn && !have_resolver) {
        r = smolvm_err(err, SMOLVM_EINVAL,
                       "egress: the allow list has names ('%s'%s) but this host has no resolver "
                       "to ask for them (set SMOLVM_DNS=ADDRESS, or a non-loopback nameserver in "
                       "/etc/resolv.conf)",
                       names[0], nn > 1 ? ", ..." : "");
        free(c);
        free(names);
        return r;
    }
    free(names);
    e.allow = c;
    e.n_allow = nc;
    e.dns = have_resolver && p->mode != SMOLVM_EGRESS_NONE;
    *out = e;
    *cidrs = c;
    return 0;
}

int smolvm_egress_policy_split(const smolvm_egress_policy *p, const char ***cidrs, size_t *n_cidrs,
                               const char ***names, size_t *n_names, smolvm_error **err)
{
    const char **c = calloc(p->n_allow + 1, sizeof(*c)), **n = calloc(p->n_allow + 1, sizeof(*n));
    size_t nc = 0, nn = 0;

    if (!c || !n) {
        free(c);
        free(n);
        return smolvm_err(err, SMOLVM_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < p->n_allow; i++) {
        if (smolvm_egress_entry_is_cidr(p->allow[i]))
            c[nc++] = p->allow[i];
        else
            n[nn++] = p->allow[i];
    }
    *cidrs = c;
    *names = n;
    if (n_cidrs)
        *n_cidrs = nc;
    if (n_names)
        *n_names = nn;
    return 0;
}
