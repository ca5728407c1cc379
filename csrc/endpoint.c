/*
 * endpoint.c - where a call goes, with which key, and under which model
 * name: the base URL and key (from the call's kwargs, else the environment),
 * the checks on that URL (is it OpenRouter, is it loopback), the request URL,
 * and the mapping of model names towards OpenRouter. GIL held.
 *
 * The rule: one function (ord_endpoint_resolve) decides the key and the base
 * URL, for the calls (request.c) and for `python -m openrouter_direct check`
 * (ord_mod_endpoint below), so the check tests what a call would use.
 */
#include "ord.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *strip_prefix(const char *model)
{
    /* LiteLLM's spelling: openrouter/<provider>/<model>. */
    if (strncmp(model, "openrouter/", 11) == 0 && strchr(model + 11, '/'))
        return model + 11;
    return model;
}

static int is_openrouter(const char *base)
{
    const char *host = strstr(base, "://");
    host = host ? host + 3 : base;
    size_t n = strcspn(host, ":/?#");
    /* openrouter.ai or any subdomain of it */
    return (n == 13 && strncasecmp(host, "openrouter.ai", 13) == 0) ||
           (n > 13 && host[n - 14] == '.' && strncasecmp(host + n - 13, "openrouter.ai", 13) == 0);
}

static int is_loopback(const char *base)
{
    const char *host = strstr(base, "://");
    host = host ? host + 3 : base;
    const char *at = strchr(host, '@'); /* user:pass@host */
    if (at && at < host + strcspn(host, "/?#"))
        host = at + 1;
    size_t n = host[0] == '[' ? strcspn(host, "]") + 1 : strcspn(host, ":/?#");
    /* 127.0.0.0/8 as an address: a name such as 127.evil.example is any host. */
    char ip[INET_ADDRSTRLEN];
    struct in_addr addr;
    if (n < sizeof ip) {
        memcpy(ip, host, n);
        ip[n] = '\0';
        if (inet_pton(AF_INET, ip, &addr) == 1)
            return (ntohl(addr.s_addr) >> 24) == 127;
    }
    return (n == 9 && strncasecmp(host, "localhost", 9) == 0) ||
           (n == 5 && strncmp(host, "[::1]", 5) == 0) ||
           (n > 10 && strncasecmp(host + n - 10, ".localhost", 10) == 0);
}

/* DR-Tulu's default judges are bare OpenAI names, which OpenRouter rejects. */
static int is_bare_openai(const char *m)
{
    if (strchr(m, '/'))
        return 0;
    return strncmp(m, "gpt-", 4) == 0 || strncmp(m, "chatgpt-", 8) == 0 || strncmp(m, "o1", 2) == 0 ||
           strncmp(m, "o3", 2) == 0 || strncmp(m, "o4", 2) == 0;
}

/* Looks model up in OPENROUTER_MODEL_MAP ("a=b,c=d"); copies the target to out. */
static int custom_map(const char *map, const char *model, char *out, size_t outsz)
{
    size_t mlen = strlen(model);
    for (const char *p = map; p && *p;) {
        const char *end = p + strcspn(p, ",");
        const char *eq = memchr(p, '=', (size_t)(end - p));
        while (p < end && *p == ' ')
            p++;
        if (eq) {
            const char *k_end = eq;
            while (k_end > p && k_end[-1] == ' ')
                k_end--;
            const char *v = eq + 1, *v_end = end;
            while (v < v_end && *v == ' ')
                v++;
            while (v_end > v && v_end[-1] == ' ')
                v_end--;
            if ((size_t)(k_end - p) == mlen && strncmp(p, model, mlen) == 0 && v_end > v &&
                (size_t)(v_end - v) < outsz) {
                memcpy(out, v, (size_t)(v_end - v));
                out[v_end - v] = '\0';
                return 1;
            }
        }
        p = *end ? end + 1 : end;
    }
    return 0;
}

/* The model name to send. Mapping happens only towards OpenRouter itself:
 * another server (vLLM, say) gets names exactly as given. */
const char *ord_map_model(const char *map, const char *name, int openrouter, char *out, size_t outsz,
                          int *auto_mapped)
{
    const char *m = strip_prefix(name);
    *auto_mapped = 0;
    if (!openrouter)
        return m;
    if (custom_map(map, m, out, outsz))
        return out;
    if (is_bare_openai(m) && strlen(m) + 8 < outsz) {
        snprintf(out, outsz, "openai/%s", m);
        *auto_mapped = 1;
        return out;
    }
    return m;
}


/* The key and the base URL a call uses: the ones passed to it (api_key,
 * api_base or base_url; NULL: not passed), else the environment's, else
 * OpenRouter. */
void ord_endpoint_resolve(ord_endpoint *ep, const char *key, const char *base, const ord_env *env)
{
    ep->key_source = key ? "api_key" : NULL;
    if (!key && (key = env->v[ORD_E_OPENAI_API_KEY]))
        ep->key_source = "OPENAI_API_KEY";
    if (!key && (key = env->v[ORD_E_OPENROUTER_API_KEY]))
        ep->key_source = "OPENROUTER_API_KEY";
    if (!base)
        base = env->v[ORD_E_OPENAI_API_BASE];
    if (!base)
        base = ORD_DEFAULT_BASE;
    ep->key = key;
    ep->base = base;
    ep->openrouter = is_openrouter(base);
    /* The key would cross the network in clear. */
    ep->plain_http = strncasecmp(base, "http://", 7) == 0 && !is_loopback(base);
}

char *ord_endpoint_url(const char *base)
{
    size_t n = strlen(base);
    while (n > 0 && base[n - 1] == '/')
        n--;
    const char *suffix = "/chat/completions";
    char *url = malloc(n + strlen(suffix) + 1);
    if (!url)
        return NULL;
    memcpy(url, base, n);
    strcpy(url + n, suffix);
    return url;
}

/* d[name] = s decoded as os.environ decodes (surrogateescape), or None. */
static int put_text(PyObject *d, const char *name, const char *s)
{
    PyObject *v = s ? PyUnicode_DecodeFSDefault(s) : Py_NewRef(Py_None);
    int rc = v ? PyDict_SetItemString(d, name, v) : -1;
    Py_XDECREF(v);
    return rc;
}

/* _native.endpoint(base_url=None) -> dict: what a call made now without
 * api_key or api_base would use: base, url, openrouter, plain_http, key,
 * key_source, proxy, noproxy (the strings libcurl is given) and cainfo. */
PyObject *ord_mod_endpoint(PyObject *module, PyObject *args)
{
    (void)module;
    const char *base = NULL;
    if (!PyArg_ParseTuple(args, "|z:endpoint", &base))
        return NULL;
    ord_env env;
    ord_env_scan(&env);
    ord_endpoint ep;
    ord_endpoint_resolve(&ep, NULL, base, &env);
    const char *proxy, *noproxy;
    ord_env_proxy(&env, ep.base, &proxy, &noproxy);
    char *url = ord_endpoint_url(ep.base);
    PyObject *d = url ? PyDict_New() : PyErr_NoMemory();
    if (d && (put_text(d, "base", ep.base) < 0 || put_text(d, "url", url) < 0 ||
              PyDict_SetItemString(d, "openrouter", ep.openrouter ? Py_True : Py_False) < 0 ||
              PyDict_SetItemString(d, "plain_http", ep.plain_http ? Py_True : Py_False) < 0 ||
              put_text(d, "key", ep.key) < 0 || put_text(d, "key_source", ep.key_source) < 0 ||
              put_text(d, "proxy", proxy) < 0 || put_text(d, "noproxy", noproxy) < 0 ||
              put_text(d, "cainfo", ord_env_cainfo(&env)) < 0))
        Py_CLEAR(d);
    free(url);
    return d;
}
