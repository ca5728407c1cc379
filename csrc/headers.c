/*
 * headers.c - a call's header list: the standard headers, the key as a
 * Bearer token, the caller's extra_headers, and the list shared between calls
 * that would build the same one. GIL held, once per call.
 *
 * Nearly every call of a process sends the same headers (one key, one
 * referer, one title, no extra_headers), and building the list costs a dozen
 * small allocations on the caller's thread. So the list of the last such call
 * is kept and shared, reference counted, by every later call that would build
 * the same one.
 *
 * The rules: no header line may hold CR or LF (a call that would send one
 * fails as bad_header, unsent); the cache (g_hdrs) is touched only with the
 * GIL held, except the count, which the engine thread may drop last
 * (ord_hdrs_decref, reqlife.c).
 */
#include "ord.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int has_crlf(const char *s)
{
    return strpbrk(s, "\r\n") != NULL;
}

/* Appends "Name: value"; returns 0, -1 on memory, 1 on CR/LF. */

/* Appends "Name: value"; returns 0, -1 on memory, 1 on CR/LF. */
static int add_header(struct curl_slist **list, const char *name, const char *value)
{
    if (has_crlf(name) || has_crlf(value))
        return 1;
    size_t n = strlen(name) + strlen(value) + 3;
    char *line = malloc(n);
    if (!line)
        return -1;
    snprintf(line, n, "%s: %s", name, value);
    struct curl_slist *l = curl_slist_append(*list, line);
    ord_wipe_free(line); /* it may hold the key */
    if (!l)
        return -1;
    *list = l;
    return 0;
}

static int overridden(PyObject *extra, const char *name)
{
    if (!extra)
        return 0;
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    while (PyDict_Next(extra, &pos, &k, &v)) {
        const char *ks = PyUnicode_Check(k) ? PyUnicode_AsUTF8(k) : NULL;
        if (!ks)
            PyErr_Clear(); /* check_types has vouched for every key already */
        else if (strcasecmp(ks, name) == 0)
            return 1;
    }
    return 0;
}

/* Returns 0, -1 (exception set), or 1 (bad header: r already failed). */
static int build_headers(ord_req *r, const char *key, PyObject *extra, const char *referer,
                         const char *title)
{
    struct {
        const char *name, *value;
    } std[] = {
        {"HTTP-Referer", referer ? referer : "http://localhost:3000"},
        {"X-Title", title ? title : "DR-Tulu Training"},
        /* OpenRouter's newer name for X-Title; both go out until the old one is dropped. */
        {"X-OpenRouter-Title", title ? title : "DR-Tulu Training"},
        {"Content-Type", "application/json"},
        /* In the list rather than CURLOPT_USERAGENT, which libcurl formats
         * into a header line of its own on every transfer, byte by byte
         * (handles.c still sets it for a proxy's CONNECT, which does not see
         * this list). */
        {"User-Agent", ORD_USER_AGENT},
    };
    size_t keylen = strlen(key);
    char *auth = malloc(keylen + 8);
    if (!auth) {
        PyErr_NoMemory();
        return -1;
    }
    snprintf(auth, keylen + 8, "Bearer %s", key);
    int rc = overridden(extra, "Authorization") ? 0 : add_header(&r->headers, "Authorization", auth);
    ord_wipe_free(auth);
    for (size_t i = 0; rc == 0 && i < sizeof std / sizeof std[0]; i++)
        if (!overridden(extra, std[i].name))
            rc = add_header(&r->headers, std[i].name, std[i].value);
    if (extra) {
        PyObject *k, *v;
        Py_ssize_t pos = 0;
        while (rc == 0 && PyDict_Next(extra, &pos, &k, &v)) {
            const char *ks = PyUnicode_AsUTF8(k), *vs = PyUnicode_AsUTF8(v);
            if (!ks || !vs)
                return -1;
            rc = add_header(&r->headers, ks, vs);
        }
    }
    if (rc == 0) {
        /* A large POST must not wait a round trip for "100 Continue". */
        struct curl_slist *l = curl_slist_append(r->headers, "Expect:");
        rc = l ? 0 : -1;
        if (l)
            r->headers = l;
    }
    if (rc < 0) {
        PyErr_NoMemory();
        return -1;
    }
    if (rc == 1)
        ord_req_fail(r, ORD_BAD_HEADER, 0, ORD_BAD_HEADER_MESSAGE);
    return rc;
}

static struct ord_hdrs *g_hdrs;  /* the cached list; GIL held */

static int same_opt(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

static char *dup_opt(const char *s, int *oom)
{
    char *d = s ? strdup(s) : NULL;
    if (s && !d)
        *oom = 1;
    return d;
}

/* r's headers: the shared list when it fits, else a list of its own (which
 * becomes the shared one when the call has no extra_headers). Returns as
 * build_headers. */
int ord_take_headers(ord_req *r, const char *key, PyObject *extra, const ord_env *env)
{
    const char *referer = env->v[ORD_E_OPENROUTER_REFERER];
    const char *title = env->v[ORD_E_OPENROUTER_TITLE];
    int plain = !extra || PyDict_GET_SIZE(extra) == 0;
    struct ord_hdrs *h = g_hdrs;
    if (plain && h && strcmp(h->key, key) == 0 && same_opt(h->referer, referer) &&
        same_opt(h->title, title)) {
        atomic_fetch_add_explicit(&h->refs, 1, memory_order_relaxed);
        r->headers = h->list;
        r->shared_headers = h;
        return 0;
    }
    int rc = build_headers(r, key, extra, referer, title);
    if (rc != 0 || !plain)
        return rc;
    /* Share this one from now on. Out of memory here only means no cache. */
    int oom = 0;
    h = calloc(1, sizeof *h);
    if (!h)
        return 0;
    h->key = dup_opt(key, &oom);
    h->referer = dup_opt(referer, &oom);
    h->title = dup_opt(title, &oom);
    if (oom) {
        ord_wipe_free(h->key);
        free(h->referer);
        free(h->title);
        free(h);
        return 0;
    }
    atomic_init(&h->refs, 2); /* the cache's and r's */
    h->list = r->headers;
    r->shared_headers = h;
    ord_hdrs_decref(g_hdrs);
    g_hdrs = h;
    return 0;
}
