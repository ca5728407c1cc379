/*
 * request.c - from a Python call to a ready-to-send request: the JSON body
 * (written directly, see jw below), the URL and the header list. Runs with the GIL held, once per
 * call; everything it produces is plain C memory owned by the ord_req.
 *
 * Programming mistakes (wrong types, values JSON cannot carry) raise
 * TypeError here, at the call. Configuration problems (no key, CR/LF in a
 * header) are not exceptions: they come back as a request that has already
 * failed, so that the caller gets "" and a log line like any failed call.
 *
 * The end of the file holds the request's lifetime: a reference count,
 * because the submitter, the engine and a pending cancel each hold one and
 * may let go from different threads.
 */
#include "ord.h"

#include <arpa/inet.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define JSON_MAX_DEPTH 64

/* ---- the JSON body, written straight into one growing buffer ----
 *
 * Not through a cJSON tree: building one costs a malloc per node and per
 * key, cJSON's printer escapes byte by byte with a bounds check each, and it
 * prints every number through sprintf and sscanf. For DR-Tulu's 4.2 KB judge
 * call that was about 3 µs of the 8 µs the caller's thread spent per call
 * (perf, bench/profile.py). The output is what json.dumps(..., ensure_ascii=
 * False, separators=(",", ":")) writes. cJSON still parses every reply. */
typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} jw;

static int jw_reserve(jw *w, size_t more)
{
    if (w->oom)
        return -1;
    if (w->len + more < w->cap)
        return 0;
    if (more > SIZE_MAX / 4 - w->len)
        goto fail;
    /* The first reservation is the body's estimated size, taken exactly: a
     * call waiting in a gather of thousands holds its body all that time.
     * After that, doubling. */
    size_t cap = w->cap > SIZE_MAX / 4 ? 0 : w->cap * 2;
    if (cap < w->len + more + 1)
        cap = w->len + more + 1;
    char *p = realloc(w->p, cap);
    if (!p)
        goto fail;
    w->p = p;
    w->cap = cap;
    return 0;
fail:
    w->oom = 1;
    return -1;
}

static void jw_put(jw *w, const char *s, size_t n)
{
    if (jw_reserve(w, n) == 0) {
        memcpy(w->p + w->len, s, n);
        w->len += n;
    }
}

/* s: a string literal (sizeof counts its bytes) */
#define JW_LIT(w, s) jw_put((w), "" s, sizeof(s) - 1)

/* v in decimal, as "%lld" writes it, NUL-terminated in out (24 bytes);
 * returns the length. snprintf's format parsing cost ~700 instructions for
 * the max_tokens of every call. */
static int dec_ll(char *out, long long v)
{
    char tmp[24];
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    int n = 0, k = 0;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        out[k++] = '-';
    while (n)
        out[k++] = tmp[--n];
    out[k] = '\0';
    return k;
}

static void jw_string(jw *w, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    /* Most strings need no escapes: reserve the plain size now and grow
     * again only when an escape turns up. */
    if (jw_reserve(w, n + 2) < 0)
        return;
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    w->p[w->len++] = '"';
    while (p < end) {
        const unsigned char *run = p;
        p = ord_plain_run(p, end);
        size_t k = (size_t)(p - run);
        if (jw_reserve(w, k + 7) < 0)
            return;
        memcpy(w->p + w->len, run, k);
        w->len += k;
        if (p == end)
            break;
        unsigned char c = *p++;
        char *o = w->p + w->len;
        o[0] = '\\';
        switch (c) {
        case '"': case '\\': o[1] = (char)c; w->len += 2; break;
        case '\b': o[1] = 'b'; w->len += 2; break;
        case '\f': o[1] = 'f'; w->len += 2; break;
        case '\n': o[1] = 'n'; w->len += 2; break;
        case '\r': o[1] = 'r'; w->len += 2; break;
        case '\t': o[1] = 't'; w->len += 2; break;
        default:
            memcpy(o + 1, "u00", 3);
            o[4] = hex[c >> 4];
            o[5] = hex[c & 15];
            w->len += 6;
        }
    }
    if (jw_reserve(w, 1) == 0)
        w->p[w->len++] = '"';
}

static int jw_value(jw *w, PyObject *o, const char *what, int depth);

/* Object keys as json.dumps writes them: str as is; int, float, bool and
 * None spelled as JSON (logit_bias={50256: -100} is a real use). */
static PyObject *json_key(PyObject *k, const char *what)
{
    if (PyUnicode_Check(k))
        return Py_NewRef(k);
    if (k == Py_True)
        return PyUnicode_FromString("true");
    if (k == Py_False)
        return PyUnicode_FromString("false");
    if (k == Py_None)
        return PyUnicode_FromString("null");
    if (PyLong_Check(k))
        return PyObject_Str(k);
    if (PyFloat_Check(k) && isfinite(PyFloat_AS_DOUBLE(k)))
        return PyObject_Repr(k);
    PyErr_Format(PyExc_TypeError, "%s: JSON object keys must be str, int, float, bool or None, not %.100s",
                 what, Py_TYPE(k)->tp_name);
    return NULL;
}

/* A str's UTF-8, or a TypeError saying which argument held it. */
static const char *utf8_of(PyObject *s, Py_ssize_t *n, const char *what, const char *role)
{
    const char *u = PyUnicode_AsUTF8AndSize(s, n);
    if (!u) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: %s that is not valid Unicode cannot be sent as JSON", what,
                     role);
    }
    return u;
}

static int jw_value_inner(jw *w, PyObject *o, const char *what, int depth)
{
    if (o == Py_None) {
        JW_LIT(w, "null");
        return 0;
    }
    if (o == Py_True) {
        JW_LIT(w, "true");
        return 0;
    }
    if (o == Py_False) {
        JW_LIT(w, "false");
        return 0;
    }
    if (PyUnicode_Check(o)) {
        Py_ssize_t n;
        const char *s = utf8_of(o, &n, what, "a str");
        if (!s)
            return -1;
        jw_string(w, s, (size_t)n);
        return 0;
    }
    /* Numbers as json.dumps writes them: repr, so 2**53 and 0.1 + 0.2
     * keep every digit. */
    if (PyLong_Check(o)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (v == -1 && PyErr_Occurred())
            return -1;
        if (!overflow) {
            char num[24];
            jw_put(w, num, (size_t)dec_ll(num, v));
            return 0;
        }
        PyObject *text = PyLong_Type.tp_repr(o); /* int subclasses too (IntEnum) */
        Py_ssize_t n;
        const char *s = text ? PyUnicode_AsUTF8AndSize(text, &n) : NULL;
        if (s)
            jw_put(w, s, (size_t)n);
        Py_XDECREF(text);
        return s ? 0 : -1;
    }
    if (PyFloat_Check(o)) {
        double d = PyFloat_AS_DOUBLE(o);
        if (!isfinite(d)) {
            PyErr_Format(PyExc_TypeError, "%s: %R is not a JSON number", what, o);
            return -1;
        }
        char *text = PyOS_double_to_string(d, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
        if (!text)
            return -1;
        jw_put(w, text, strlen(text));
        PyMem_Free(text);
        return 0;
    }
    if (PyDict_Check(o)) {
        PyObject *k, *v;
        Py_ssize_t pos = 0;
        int first = 1;
        JW_LIT(w, "{");
        while (PyDict_Next(o, &pos, &k, &v)) {
            /* str() of an int-subclass key runs Python code, which may
             * change the dict: hold the pair while writing it. */
            Py_INCREF(k);
            Py_INCREF(v);
            PyObject *kstr = json_key(k, what);
            Py_DECREF(k);
            if (!kstr) {
                Py_DECREF(v);
                return -1;
            }
            Py_ssize_t klen = 0;
            const char *ks = utf8_of(kstr, &klen, what, "a key");
            if (ks && (size_t)klen != strlen(ks)) {
                /* The body would carry it (as \u0000), but OpenRouter's
                 * providers differ on such keys: refuse rather than guess. */
                PyErr_Format(PyExc_TypeError, "%s: a JSON object key with a NUL character cannot be sent",
                             what);
                ks = NULL;
            }
            if (ks) {
                if (!first)
                    JW_LIT(w, ",");
                jw_string(w, ks, (size_t)klen);
                JW_LIT(w, ":");
            }
            Py_DECREF(kstr);
            int rc = ks ? jw_value(w, v, what, depth + 1) : -1;
            Py_DECREF(v);
            if (rc < 0)
                return -1;
            first = 0;
        }
        JW_LIT(w, "}");
        return 0;
    }
    if (PyList_Check(o) || PyTuple_Check(o)) {
        Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
        JW_LIT(w, "[");
        for (Py_ssize_t i = 0; i < n; i++) {
            if (i)
                JW_LIT(w, ",");
            /* Python code run for a key inside (see the dict case) may
             * shrink the list: hold the item, and re-read the length. */
            PyObject *item = Py_NewRef(PySequence_Fast_GET_ITEM(o, i));
            int rc = jw_value(w, item, what, depth + 1);
            Py_DECREF(item);
            if (rc < 0)
                return -1;
            n = PySequence_Fast_GET_SIZE(o);
        }
        JW_LIT(w, "]");
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "%s: object of type %.100s cannot be sent as JSON", what,
                 Py_TYPE(o)->tp_name);
    return -1;
}

static int jw_value(jw *w, PyObject *o, const char *what, int depth)
{
    if (depth > JSON_MAX_DEPTH) {
        PyErr_Format(PyExc_TypeError, "%s: nested more than %d levels deep", what, JSON_MAX_DEPTH);
        return -1;
    }
    if (jw_value_inner(w, o, what, depth) < 0)
        return -1;
    if (w->oom) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* ---- environment and kwargs ---- */

/* The variables a call reads, found in one pass over the environment. A
 * dozen getenv calls each walked all of it: in a trainer's environment of a
 * hundred or more variables (CUDA_*, NCCL_*, ...) that was µs per call with
 * the GIL held. The proxy variables are read here too, for libcurl (see
 * take_proxy). */
enum {
    E_OPENAI_API_KEY, E_OPENROUTER_API_KEY, E_OPENAI_API_BASE, E_OPENROUTER_REFERER,
    E_OPENROUTER_TITLE, E_OPENROUTER_MODEL_MAP, E_LITELLM_DEFAULT_TIMEOUT,
    E_OPENROUTER_RETRY_BASE_DELAY, E_OPENROUTER_RETRY_MAX_DELAY, E_OPENROUTER_MAX_RESPONSE_BYTES,
    E_OPENROUTER_RAISE_ON_ERROR, E_SSL_CERT_FILE, E_CURL_CA_BUNDLE,
    E_no_proxy, E_NO_PROXY, E_http_proxy, E_https_proxy, E_HTTPS_PROXY, E_all_proxy, E_ALL_PROXY,
    E_COUNT
};

typedef struct {
    const char *name;
    size_t len;
} named;
#define NAMED(s) {s, sizeof s - 1}

/* The index of the n bytes at s in table, or -1. */
static int name_index(const named *table, int count, const char *s, size_t n)
{
    for (int i = 0; i < count; i++)
        if (table[i].len == n && memcmp(table[i].name, s, n) == 0)
            return i;
    return -1;
}

static const named env_names[E_COUNT] = {
    NAMED("OPENAI_API_KEY"), NAMED("OPENROUTER_API_KEY"), NAMED("OPENAI_API_BASE"),
    NAMED("OPENROUTER_REFERER"), NAMED("OPENROUTER_TITLE"), NAMED("OPENROUTER_MODEL_MAP"),
    NAMED("LITELLM_DEFAULT_TIMEOUT"), NAMED("OPENROUTER_RETRY_BASE_DELAY"),
    NAMED("OPENROUTER_RETRY_MAX_DELAY"), NAMED("OPENROUTER_MAX_RESPONSE_BYTES"),
    NAMED("OPENROUTER_RAISE_ON_ERROR"), NAMED("SSL_CERT_FILE"), NAMED("CURL_CA_BUNDLE"),
    NAMED("no_proxy"), NAMED("NO_PROXY"), NAMED("http_proxy"), NAMED("https_proxy"),
    NAMED("HTTPS_PROXY"), NAMED("all_proxy"), NAMED("ALL_PROXY"),
};

/* Values point into environ, as getenv's do. They stay valid for the whole
 * call even if Python code run meanwhile changes os.environ: glibc's setenv
 * and unsetenv never free a string they replace or remove. */
typedef struct {
    const char *v[E_COUNT]; /* NULL: unset or empty */
} env_view;

extern char **environ;

/* Bit n set: some name we read is n characters long. */
static uint64_t env_lengths(void)
{
    static uint64_t mask; /* the GIL guards it, like every caller */
    if (!mask)
        for (int i = 0; i < E_COUNT; i++)
            mask |= 1ULL << env_names[i].len;
    return mask;
}

static void env_scan(env_view *env)
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
        int i = name_index(env_names, E_COUNT, s, n);
        if (i >= 0 && !env->v[i]) /* the first one wins, as with getenv */
            env->v[i] = eq + 1;
    }
}

static double env_double(const env_view *env, int which, double dflt)
{
    const char *v = env->v[which];
    if (!v)
        return dflt;
    char *end;
    double d = strtod(v, &end);
    return (end != v && d >= 0 && isfinite(d)) ? d : dflt;
}

static int env_true(const env_view *env, int which)
{
    const char *v = env->v[which];
    return v && (strcmp(v, "1") == 0 || strcasecmp(v, "true") == 0 || strcasecmp(v, "yes") == 0);
}

/* kwargs that LiteLLM interprets and OpenRouter must never see; the call
 * reads all of them but drop_params. */
enum {
    K_num_retries, K_max_retries, K_timeout, K_api_key, K_api_base, K_base_url, K_extra_headers,
    K_drop_params, K_fallbacks, K_raise_on_error, K_hedge, K_COUNT
};

static const named kw_names[K_COUNT] = {
    NAMED("num_retries"), NAMED("max_retries"), NAMED("timeout"), NAMED("api_key"),
    NAMED("api_base"), NAMED("base_url"), NAMED("extra_headers"), NAMED("drop_params"),
    NAMED("fallbacks"), NAMED("raise_on_error"), NAMED("hedge"),
};

static int is_interpreted(const char *k, size_t n)
{
    return name_index(kw_names, K_COUNT, k, n) >= 0;
}

/* A dict key's UTF-8, or NULL (no error set) for a key that is not a str. */
static const char *key_utf8(PyObject *k, Py_ssize_t *n)
{
    const char *s = PyUnicode_Check(k) ? PyUnicode_AsUTF8AndSize(k, n) : NULL;
    if (!s)
        PyErr_Clear();
    return s;
}

typedef struct {
    PyObject *v[K_COUNT]; /* borrowed from kwargs (a private copy); NULL: absent or None */
} kw_view;

/* The kwargs the call reads, found in one pass over the dict. A
 * PyDict_GetItemString per name made and hashed a str each time: nine of
 * them were about 6,000 instructions per call (callgrind), with the GIL. */
static void kw_scan(PyObject *kwargs, kw_view *kv)
{
    memset(kv, 0, sizeof *kv);
    if (!kwargs)
        return;
    PyObject *k, *v;
    Py_ssize_t pos = 0, n;
    while (PyDict_Next(kwargs, &pos, &k, &v)) {
        const char *s = key_utf8(k, &n); /* NULL: not one of ours; check_types judges the keys */
        int i = s ? name_index(kw_names, K_COUNT, s, (size_t)n) : -1;
        if (i >= 0)
            kv->v[i] = v == Py_None ? NULL : v;
    }
}

/* d[name] for a dict of a few str keys, such as a message: comparing them
 * costs less than making and hashing a str to look it up. */
static PyObject *small_dict_get(PyObject *d, const char *name, size_t len)
{
    PyObject *k, *v;
    Py_ssize_t pos = 0, n;
    while (PyDict_Check(d) && PyDict_Next(d, &pos, &k, &v)) {
        const char *s = key_utf8(k, &n);
        if (s && (size_t)n == len && memcmp(s, name, len) == 0)
            return v;
    }
    return NULL;
}

static int kw_str(const kw_view *kv, int which, const char **out)
{
    PyObject *v = kv->v[which];
    const char *name = kw_names[which].name;
    if (!v)
        return 0;
    if (!PyUnicode_Check(v)) {
        PyErr_Format(PyExc_TypeError, "%s must be a str, not %.100s", name, Py_TYPE(v)->tp_name);
        return -1;
    }
    *out = PyUnicode_AsUTF8(v);
    return *out ? 0 : -1;
}

static int has_crlf(const char *s)
{
    return strpbrk(s, "\r\n") != NULL;
}

/* Appends "Name: value"; returns 0, -1 on memory, 1 on CR/LF. */
/* Key-bearing text is wiped before it is freed, so that no copy of the key
 * lies in freed heap memory (a core dump, a later buffer's slack). Through
 * volatile stores: a memset just before free() may be optimised away. */
static void wipe_free(char *s)
{
    if (!s)
        return;
    volatile char *p = s;
    while (*p)
        *p++ = 0;
    free(s);
}

/* Every line, not only Authorization: extra_headers may carry secrets too. */
static void free_header_list(struct curl_slist *list)
{
    for (struct curl_slist *l = list; l; l = l->next) {
        volatile char *p = l->data;
        while (p && *p)
            *p++ = 0;
    }
    curl_slist_free_all(list);
}

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
    wipe_free(line); /* it may hold the key */
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
         * (engine.c still sets it for a proxy's CONNECT, which does not see
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
    wipe_free(auth);
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
        ord_req_fail(r, ORD_BAD_HEADER, 0,
                     "a header value contains CR or LF (OPENROUTER_TITLE, OPENROUTER_REFERER, the "
                     "API key or extra_headers); the call was not sent");
    return rc;
}


/* ---- the header list, shared between calls ----
 *
 * Nearly every call of a process sends the same headers (one key, one
 * referer, one title, no extra_headers), and building the list costs a dozen
 * small allocations. So the list of the last such call is kept and shared,
 * reference counted, by every later call that would build the same one. Only
 * touched with the GIL held, except the count, which the engine thread may
 * drop last. */
struct ord_hdrs {
    atomic_int refs;
    struct curl_slist *list;
    char *key, *referer, *title;  /* what the list was built from; NULL: unset */
};

static struct ord_hdrs *g_hdrs;  /* the cached list; GIL held */


void ord_hdrs_decref(struct ord_hdrs *h)
{
    if (!h || atomic_fetch_sub_explicit(&h->refs, 1, memory_order_acq_rel) != 1)
        return;
    free_header_list(h->list);
    wipe_free(h->key);
    free(h->referer);
    free(h->title);
    free(h);
}

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
static int take_headers(ord_req *r, const char *key, PyObject *extra, const env_view *env)
{
    const char *referer = env->v[E_OPENROUTER_REFERER];
    const char *title = env->v[E_OPENROUTER_TITLE];
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
        wipe_free(h->key);
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

static int check_types(const ord_call_args *a, PyObject *extra, PyObject *fallbacks)
{
    if (!PyUnicode_Check(a->model)) {
        PyErr_Format(PyExc_TypeError, "model_name must be a str, not %.100s", Py_TYPE(a->model)->tp_name);
        return -1;
    }
    if (a->messages != Py_None) {
        if (!PyList_Check(a->messages) && !PyTuple_Check(a->messages)) {
            PyErr_Format(PyExc_TypeError, "messages must be a list of dicts, not %.100s",
                         Py_TYPE(a->messages)->tp_name);
            return -1;
        }
        Py_ssize_t n = PySequence_Fast_GET_SIZE(a->messages);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *m = PySequence_Fast_GET_ITEM(a->messages, i);
            if (!PyDict_Check(m)) {
                PyErr_Format(PyExc_TypeError, "messages[%zd] must be a dict, not %.100s", i,
                             Py_TYPE(m)->tp_name);
                return -1;
            }
        }
    } else {
        if (a->user_prompt == Py_None) {
            PyErr_SetString(PyExc_TypeError, "either user_prompt or messages is required");
            return -1;
        }
        if (!PyUnicode_Check(a->user_prompt)) {
            PyErr_Format(PyExc_TypeError, "user_prompt must be a str, not %.100s",
                         Py_TYPE(a->user_prompt)->tp_name);
            return -1;
        }
        if (a->system_prompt != Py_None && !PyUnicode_Check(a->system_prompt)) {
            PyErr_Format(PyExc_TypeError, "system_prompt must be a str or None, not %.100s",
                         Py_TYPE(a->system_prompt)->tp_name);
            return -1;
        }
    }
    if (extra) {
        if (!PyDict_Check(extra)) {
            PyErr_SetString(PyExc_TypeError, "extra_headers must be a dict of str to str");
            return -1;
        }
        PyObject *k, *v;
        Py_ssize_t pos = 0;
        while (PyDict_Next(extra, &pos, &k, &v)) {
            if (!PyUnicode_Check(k) || !PyUnicode_Check(v)) {
                PyErr_SetString(PyExc_TypeError, "extra_headers must be a dict of str to str");
                return -1;
            }
            if (!PyUnicode_AsUTF8(k) || !PyUnicode_AsUTF8(v)) {
                PyErr_Clear();
                PyErr_SetString(PyExc_TypeError, "extra_headers: a name or value that is not valid Unicode");
                return -1;
            }
        }
    }
    if (fallbacks) {
        if (!PyList_Check(fallbacks) && !PyTuple_Check(fallbacks)) {
            PyErr_SetString(PyExc_TypeError, "fallbacks must be a list of model names");
            return -1;
        }
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fallbacks); i++)
            if (!PyUnicode_Check(PySequence_Fast_GET_ITEM(fallbacks, i))) {
                PyErr_SetString(PyExc_TypeError, "fallbacks must be a list of model names (str)");
                return -1;
            }
    }
    return 0;
}

static int read_limits(ord_req *r, const kw_view *kv, const env_view *env)
{
    PyObject *nr = kv->v[K_num_retries];
    if (!nr)
        nr = kv->v[K_max_retries];
    r->max_retries = 5;
    if (nr) {
        if (!PyLong_Check(nr) || PyBool_Check(nr)) {
            PyErr_Format(PyExc_TypeError, "num_retries must be an int, not %.100s", Py_TYPE(nr)->tp_name);
            return -1;
        }
        long v = PyLong_AsLong(nr);
        if (v == -1 && PyErr_Occurred())
            return -1;
        r->max_retries = v < 0 ? 0 : v > 1000 ? 1000 : (int)v;
    }
    double timeout = env_double(env, E_LITELLM_DEFAULT_TIMEOUT, 600.0);
    PyObject *t = kv->v[K_timeout];
    if (t) {
        if (!(PyLong_Check(t) || PyFloat_Check(t)) || PyBool_Check(t)) {
            PyErr_Format(PyExc_TypeError, "timeout must be a number of seconds, not %.100s",
                         Py_TYPE(t)->tp_name);
            return -1;
        }
        timeout = PyFloat_AsDouble(t);
        if (timeout == -1.0 && PyErr_Occurred())
            return -1;
    }
    /* Clamped before any conversion to an integer: out of range, that
     * conversion is undefined behaviour (timeout=1e40 from the fuzzer). A
     * year is "no timeout" for any call. */
    const double year_s = 365.0 * 86400.0, day_s = 86400.0;
    if (!(timeout > 0) || !isfinite(timeout))
        timeout = 600.0;
    if (timeout > year_s)
        timeout = year_s;
    r->timeout_ms = (long)ceil(timeout * 1000.0);
    r->connect_timeout_ms = r->timeout_ms < 10000 ? r->timeout_ms : 10000;
    r->base_delay_ms = fmin(env_double(env, E_OPENROUTER_RETRY_BASE_DELAY, 0.5), day_s) * 1000.0;
    r->max_delay_ms = fmin(env_double(env, E_OPENROUTER_RETRY_MAX_DELAY, 8.0), day_s) * 1000.0;
    double cap = env_double(env, E_OPENROUTER_MAX_RESPONSE_BYTES, 64.0 * 1024 * 1024);
    r->max_response = (curl_off_t)(cap < 1 ? 64.0 * 1024 * 1024 : fmin(cap, 0x1p62));
    PyObject *strict = kv->v[K_raise_on_error];
    if (strict) {
        int s = PyObject_IsTrue(strict);
        if (s < 0)
            return -1;
        r->strict = s;
    } else {
        r->strict = env_true(env, E_OPENROUTER_RAISE_ON_ERROR);
    }
    PyObject *hedge = kv->v[K_hedge]; /* hedge=False: never a second attempt */
    if (hedge) {
        int h = PyObject_IsTrue(hedge);
        if (h < 0)
            return -1;
        r->no_hedge = !h;
    }
    return 0;
}

static int write_messages(jw *w, const ord_call_args *a)
{
    if (a->messages != Py_None)
        return jw_value(w, a->messages, "messages", 0);
    PyObject *prompts[2] = {a->system_prompt, a->user_prompt};
    const char *roles[2] = {"system", "user"};
    int first = 1;
    JW_LIT(w, "[");
    for (int i = 0; i < 2; i++) {
        if (prompts[i] == Py_None)
            continue;
        if (!first)
            JW_LIT(w, ",");
        first = 0;
        JW_LIT(w, "{\"role\":\"");
        jw_put(w, roles[i], strlen(roles[i]));
        JW_LIT(w, "\",\"content\":");
        if (jw_value(w, prompts[i], roles[i], 0) < 0)
            return -1;
        JW_LIT(w, "}");
    }
    JW_LIT(w, "]");
    return 0;
}

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
static const char *map_model(const char *map, const char *name, int openrouter, char *out, size_t outsz,
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

/* One top-level member of the body: ours (written by kind) or a kwarg's. */
enum { M_MODEL, M_MESSAGES, M_NUMBER, M_MODELS, M_KWARG };
typedef struct {
    const char *key;
    int kind;
    const char *number;  /* M_NUMBER: the value's text */
    PyObject *value;     /* set: a kwarg's value (borrowed), replacing ours */
    int dropped;         /* a kwarg set it to None */
} member;

static int write_models(jw *w, const char *model, PyObject *fallbacks, int openrouter, const char *map)
{
    JW_LIT(w, "[");
    jw_string(w, model, strlen(model));
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fallbacks); i++) {
        Py_ssize_t n;
        const char *f = PyUnicode_AsUTF8AndSize(PySequence_Fast_GET_ITEM(fallbacks, i), &n);
        if (!f)
            return -1;
        char buf[512];
        int ignored;
        const char *m = map_model(map, f, openrouter, buf, sizeof buf, &ignored);
        JW_LIT(w, ",");
        jw_string(w, m, m == f ? (size_t)n : strlen(m));
    }
    JW_LIT(w, "]");
    return 0;
}

static char *build_body(const ord_call_args *a, const char *model, PyObject *fallbacks, int openrouter,
                        const char *map, size_t *body_len)
{
    char max_tokens[24];
    dec_ll(max_tokens, a->default_max_tokens);
    /* DR-Tulu's judge defaults, in the order LiteLLM sends them. */
    member fixed[] = {
        {"model", M_MODEL, NULL, NULL, 0},
        {"messages", M_MESSAGES, NULL, NULL, 0},
        {"temperature", M_NUMBER, "0", NULL, 0},
        {"max_tokens", M_NUMBER, max_tokens, NULL, 0},
        {"top_p", M_NUMBER, "1", NULL, 0},
        {"frequency_penalty", M_NUMBER, "0", NULL, 0},
        {"presence_penalty", M_NUMBER, "0", NULL, 0},
        {"models", M_MODELS, NULL, NULL, 0},
    };
    const size_t n_fixed = sizeof fixed / sizeof fixed[0];
    enum { M_FIXED_MAX_TOKENS = 3 }; /* fixed[]'s max_tokens entry */
    if (!fallbacks || PySequence_Fast_GET_SIZE(fallbacks) == 0)
        fixed[n_fixed - 1].dropped = 1;

    Py_ssize_t n_kw = a->kwargs ? PyDict_GET_SIZE(a->kwargs) : 0;
    member *m = PyMem_Calloc(n_fixed + (size_t)n_kw, sizeof *m);
    if (!m) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(m, fixed, sizeof fixed);
    size_t n = n_fixed;
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    int completion_cap = 0; /* max_completion_tokens given, with any value */
    while (n_kw && PyDict_Next(a->kwargs, &pos, &k, &v)) {
        Py_ssize_t klen;
        const char *ks = PyUnicode_AsUTF8AndSize(k, &klen);
        if (ks && (size_t)klen != strlen(ks)) {
            PyErr_SetString(PyExc_TypeError, "a keyword argument name with a NUL character cannot be sent");
            ks = NULL;
        }
        if (!ks) {
            PyMem_Free(m);
            return NULL;
        }
        if (is_interpreted(ks, (size_t)klen))
            continue;
        size_t i = 0;
        while (i < n_fixed && strcmp(m[i].key, ks) != 0)
            i++;
        if (strcmp(ks, "max_completion_tokens") == 0)
            completion_cap = 1;
        if (i == n_fixed) {
            /* None means "not set", as in LiteLLM: it also removes a default. */
            if (v == Py_None)
                continue;
            i = n++;
            m[i].key = ks;
            m[i].kind = M_KWARG;
        }
        m[i].value = v == Py_None ? NULL : v;
        m[i].dropped = v == Py_None;
    }
    /* open-instruct's _apply_async_chat_defaults: the default max_tokens only
     * when the caller caps neither max_tokens nor max_completion_tokens. */
    if (completion_cap && !m[M_FIXED_MAX_TOKENS].value)
        m[M_FIXED_MAX_TOKENS].dropped = 1;

    /* Sized for the prompts (their ASCII length, plus room for escapes and
     * the rest): one allocation for a typical call. */
    size_t guess = 1024;
    if (a->messages == Py_None) {
        PyObject *prompts[2] = {a->system_prompt, a->user_prompt};
        for (int i = 0; i < 2; i++)
            if (prompts[i] != Py_None && PyUnicode_IS_COMPACT_ASCII(prompts[i]))
                guess += (size_t)PyUnicode_GET_LENGTH(prompts[i]) + 64;
    } else {
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(a->messages); i++) {
            PyObject *c = small_dict_get(PySequence_Fast_GET_ITEM(a->messages, i), "content", 7);
            if (c && PyUnicode_Check(c) && PyUnicode_IS_COMPACT_ASCII(c))
                guess += (size_t)PyUnicode_GET_LENGTH(c) + 64;
        }
    }
    jw w = {0};
    int rc = jw_reserve(&w, guess);
    int first = 1;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (m[i].dropped)
            continue;
        jw_put(&w, first ? "{" : ",", 1);
        first = 0;
        jw_string(&w, m[i].key, strlen(m[i].key));
        JW_LIT(&w, ":");
        if (m[i].value)
            rc = jw_value(&w, m[i].value, m[i].key, 0);
        else if (m[i].kind == M_MODEL)
            jw_string(&w, model, strlen(model));
        else if (m[i].kind == M_MESSAGES)
            rc = write_messages(&w, a);
        else if (m[i].kind == M_NUMBER)
            jw_put(&w, m[i].number, strlen(m[i].number));
        else if (m[i].kind == M_MODELS)
            rc = write_models(&w, model, fallbacks, openrouter, map);
    }
    PyMem_Free(m);
    if (first)
        JW_LIT(&w, "{");
    JW_LIT(&w, "}");
    if (rc == 0 && jw_reserve(&w, 1) == 0)
        w.p[w.len] = '\0';
    if (rc < 0 || w.oom) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        free(w.p);
        return NULL;
    }
    if (w.cap > w.len + 1 + 4096) {
        char *p = realloc(w.p, w.len + 1); /* the estimate was far off: give the rest back */
        if (p)
            w.p = p;
    }
    *body_len = w.len;
    return w.p;
}

/* The proxy libcurl would find in the environment, found here instead, and
 * given to it as CURLOPT_PROXY / CURLOPT_NOPROXY (NULL: none, sent as "").
 * Left to itself, libcurl reads five or six variables with getenv for every
 * transfer: on the engine thread, where it races with os.environ changes
 * made under the GIL, and at a cost that grows with the environment. Its
 * rules (7.88, url.c detect_proxy): <scheme>_proxy in lower case, then
 * upper case except HTTP_PROXY (left out on purpose, a CGI header can set
 * it), then all_proxy, ALL_PROXY; no_proxy before NO_PROXY; an empty value
 * is unset. libcurl still applies no_proxy's host matching itself. */
static int take_proxy(ord_req *r, const char *base, const env_view *env)
{
    const char *proxy;
    if (strncasecmp(base, "https://", 8) == 0)
        proxy = env->v[E_https_proxy] ? env->v[E_https_proxy] : env->v[E_HTTPS_PROXY];
    else
        proxy = env->v[E_http_proxy];
    if (!proxy)
        proxy = env->v[E_all_proxy] ? env->v[E_all_proxy] : env->v[E_ALL_PROXY];
    const char *noproxy = env->v[E_no_proxy] ? env->v[E_no_proxy] : env->v[E_NO_PROXY];
    r->proxy = proxy ? strdup(proxy) : NULL;
    r->noproxy = noproxy ? strdup(noproxy) : NULL;
    return (proxy && !r->proxy) || (noproxy && !r->noproxy) ? -1 : 0;
}

static char *build_url(const char *base)
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

static ord_req *build_request(const ord_call_args *a);

/* On a private copy of kwargs: writing the body runs Python code (str() of an
 * int-subclass key, say) that could empty the caller's dict, while the
 * names, values and texts borrowed from it (the key, the base URL, the
 * members still to write) are used after. Nothing else can reach the copy. */
ord_req *ord_build_request(const ord_call_args *a)
{
    ord_call_args own = *a;
    if (a->kwargs && !(own.kwargs = PyDict_Copy(a->kwargs)))
        return NULL;
    ord_req *r = build_request(&own);
    Py_XDECREF(own.kwargs);
    return r;
}

static ord_req *build_request(const ord_call_args *a)
{
    kw_view kv;
    kw_scan(a->kwargs, &kv);
    PyObject *extra = kv.v[K_extra_headers];
    PyObject *fallbacks = kv.v[K_fallbacks];
    if (check_types(a, extra, fallbacks) < 0)
        return NULL;
    const char *model_full = PyUnicode_AsUTF8(a->model);
    if (!model_full)
        return NULL;

    const char *key = NULL, *base = NULL;
    if (kw_str(&kv, K_api_key, &key) < 0 || kw_str(&kv, K_api_base, &base) < 0 ||
        (!base && kw_str(&kv, K_base_url, &base) < 0))
        return NULL;
    env_view env;
    env_scan(&env);
    if (!key)
        key = env.v[E_OPENAI_API_KEY];
    if (!key)
        key = env.v[E_OPENROUTER_API_KEY];
    if (!base)
        base = env.v[E_OPENAI_API_BASE];
    if (!base)
        base = "https://openrouter.ai/api/v1";
    int openrouter = is_openrouter(base);
    char mapped[512];
    int auto_mapped;
    const char *map = env.v[E_OPENROUTER_MODEL_MAP];
    const char *model = map_model(map, model_full, openrouter, mapped, sizeof mapped, &auto_mapped);

    ord_req *r = ord_req_new();
    if (!r) {
        PyErr_NoMemory();
        return NULL;
    }
    r->model = strdup(model);
    r->url = build_url(base);
    const char *ca = env.v[E_SSL_CERT_FILE];
    if (!ca)
        ca = env.v[E_CURL_CA_BUNDLE];
    if (ca)
        r->cainfo = strdup(ca);
    if (!r->model || !r->url || (ca && !r->cainfo) || take_proxy(r, base, &env) < 0) {
        PyErr_NoMemory();
        goto error;
    }
    if (read_limits(r, &kv, &env) < 0)
        goto error;
    r->raw = a->raw;
    if (r->raw)
        r->strict = 1; /* a raw call has no "" to return: failures raise */
    r->auto_mapped = auto_mapped;
    /* The key would cross the network in clear. */
    r->plain_http = strncasecmp(base, "http://", 7) == 0 && !is_loopback(base);
    r->body = build_body(a, model, fallbacks, openrouter, map, &r->body_len);
    if (!r->body)
        goto error;

    if (!key) {
        ord_req_fail(r, ORD_CONFIG, 0,
                     "no API key: set OPENAI_API_KEY or OPENROUTER_API_KEY, or pass api_key=");
        return r;
    }
    r->secret = strdup(key);
    if (!r->secret) {
        PyErr_NoMemory();
        goto error;
    }
    if (take_headers(r, key, extra, &env) < 0)
        goto error;
    return r;
error:
    ord_req_decref(r);
    return NULL;
}

/* ---- request lifetime (any thread) ---- */

ord_req *ord_req_new(void)
{
    ord_req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    atomic_init(&r->refs, 1);
    atomic_init(&r->cancelled, 0);
    r->seq = ord_next_seq();
    r->retry_after_ms = -1;
    r->should_retry = -1;
    return r;
}

void ord_req_incref(ord_req *r)
{
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
}

void ord_req_decref(ord_req *r)
{
    if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (r->chan)
        ord_chan_decref(r->chan);
    free(r->url);
    free(r->body);
    if (r->shared_headers)
        ord_hdrs_decref(r->shared_headers);
    else
        free_header_list(r->headers);
    free(r->cainfo);
    free(r->proxy);
    free(r->noproxy);
    wipe_free(r->secret); /* don't leave the key lying in freed heap memory */
    free(r->model);
    free(r->buf);
    free(r->content);
    free(r->message);
    free(r);
}

void ord_req_fail(ord_req *r, ord_reason reason, long status, const char *msg)
{
    r->reason = reason;
    r->status = status;
    free(r->message);
    r->message = ord_redact(msg, r->secret);
}
