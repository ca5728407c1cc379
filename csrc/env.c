/*
 * env.c - the environment a call reads, found in one pass over environ.
 * GIL held, once per call.
 *
 * A getenv per variable walks the whole environment each time; in a trainer's
 * environment of a hundred or more variables (CUDA_*, NCCL_*, ...) a dozen
 * such walks per call, with the GIL held, were a measurable cost
 * (docs/TUNING.md). So one scan fills an ord_env, indexed by ORD_E_*, and
 * the call reads that. The proxy variables are read here too, for libcurl
 * (ord_env_proxy).
 *
 * The rule: the view points into environ and is used within the call that
 * scanned it; a new call scans again, so a change to os.environ is seen by
 * the next call, never half-way through one. To read a new variable, add it to
 * the ORD_E_ enum in ord.h and to env_names below, in the same place.
 */
#include "ord.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* The index of the n bytes at s in table, or -1. */
int ord_name_index(const ord_named *table, int count, const char *s, size_t n)
{
    for (int i = 0; i < count; i++)
        if (table[i].len == n && memcmp(table[i].name, s, n) == 0)
            return i;
    return -1;
}

static const ord_named env_names[ORD_E_COUNT] = {
    ORD_NAMED("OPENAI_API_KEY"), ORD_NAMED("OPENROUTER_API_KEY"), ORD_NAMED("OPENAI_API_BASE"),
    ORD_NAMED("OPENROUTER_REFERER"), ORD_NAMED("OPENROUTER_TITLE"), ORD_NAMED("OPENROUTER_MODEL_MAP"),
    ORD_NAMED("LITELLM_DEFAULT_TIMEOUT"), ORD_NAMED("OPENROUTER_RETRY_BASE_DELAY"),
    ORD_NAMED("OPENROUTER_RETRY_MAX_DELAY"), ORD_NAMED("OPENROUTER_MAX_RESPONSE_BYTES"),
    ORD_NAMED("OPENROUTER_RAISE_ON_ERROR"), ORD_NAMED("SSL_CERT_FILE"), ORD_NAMED("CURL_CA_BUNDLE"),
    ORD_NAMED("no_proxy"), ORD_NAMED("NO_PROXY"), ORD_NAMED("http_proxy"), ORD_NAMED("https_proxy"),
    ORD_NAMED("HTTPS_PROXY"), ORD_NAMED("all_proxy"), ORD_NAMED("ALL_PROXY"),
};

extern char **environ;

/* Bit n set: some name we read is n characters long. */
static uint64_t env_lengths(void)
{
    static uint64_t mask; /* the GIL guards it, like every caller */
    if (!mask)
        for (int i = 0; i < ORD_E_COUNT; i++)
            mask |= 1ULL << env_names[i].len;
    return mask;
}

void ord_env_scan(ord_env *env)
{
    memset(env, 0, sizeof *env);
    for (char **p = environ; p && *p; p++) {
        const char *s = *p;
        /* Every name we read starts with one of these. */
        switch (s[0]) {
        case 'O': case 'L': case 'S': case 'C': case 'n': case 'N': case 'h': case 'H':
        case 'a': case 'A':
            break;
        default:
            continue;
        }
        const char *eq = strchr(s, '=');
        if (!eq || !eq[1])
            continue;
        size_t n = (size_t)(eq - s);
        if (n >= 64 || !(env_lengths() & (1ULL << n)))
            continue;
        int i = ord_name_index(env_names, ORD_E_COUNT, s, n);
        if (i >= 0 && !env->v[i]) /* the first one wins, as with getenv */
            env->v[i] = eq + 1;
    }
}

double ord_env_double(const ord_env *env, int which, double dflt)
{
    const char *v = env->v[which];
    if (!v)
        return dflt;
    char *end;
    double d = strtod(v, &end);
    return (end != v && d >= 0 && isfinite(d)) ? d : dflt;
}

int ord_env_true(const ord_env *env, int which)
{
    const char *v = env->v[which];
    return v && (strcmp(v, "1") == 0 || strcasecmp(v, "true") == 0 || strcasecmp(v, "yes") == 0);
}

/* The proxy libcurl would find in the environment for base, found here
 * instead (request.c gives it to libcurl as CURLOPT_PROXY / CURLOPT_NOPROXY;
 * NULL: none). Left to itself, libcurl reads five or six variables with
 * getenv for every transfer: on the engine thread, where it races with
 * os.environ changes made under the GIL, and at a cost that grows with the
 * environment. The rules are libcurl's (see docs/TUNING.md for where they come
 * from): <scheme>_proxy in lower case, then upper case except HTTP_PROXY (left
 * out on purpose, a CGI header can set it), then all_proxy, ALL_PROXY;
 * no_proxy before NO_PROXY; an empty value is unset. libcurl still applies
 * no_proxy's host matching itself. */
void ord_env_proxy(const ord_env *env, const char *base, const char **proxy, const char **noproxy)
{
    const char *p;
    if (strncasecmp(base, "https://", 8) == 0)
        p = env->v[ORD_E_https_proxy] ? env->v[ORD_E_https_proxy] : env->v[ORD_E_HTTPS_PROXY];
    else
        p = env->v[ORD_E_http_proxy];
    if (!p)
        p = env->v[ORD_E_all_proxy] ? env->v[ORD_E_all_proxy] : env->v[ORD_E_ALL_PROXY];
    *proxy = p;
    *noproxy = env->v[ORD_E_no_proxy] ? env->v[ORD_E_no_proxy] : env->v[ORD_E_NO_PROXY];
}

/* The CA bundle libcurl is told to use, or NULL for its default. */
const char *ord_env_cainfo(const ord_env *env)
{
    return env->v[ORD_E_SSL_CERT_FILE] ? env->v[ORD_E_SSL_CERT_FILE] : env->v[ORD_E_CURL_CA_BUNDLE];
}
