/*
 * request.c - from a Python call to a ready-to-send request: the call's
 * arguments and kwargs read and checked, the limits (retries, timeouts,
 * response cap) set, and the JSON body written (with jsonw.c). The key and
 * URL come from endpoint.c, the environment from env.c, the header list from
 * headers.c. Runs with the GIL held, once per call; everything it produces is
 * plain C memory owned by the ord_req (reqlife.c).
 *
 * The rule: programming mistakes (wrong types, values JSON cannot carry)
 * raise TypeError here, at the call. Configuration problems (no key, CR/LF in
 * a header) are not exceptions: they come back as a request that has already
 * failed, so that the caller gets "" and a log line like any failed call.
 */
#include "ord.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* kwargs that LiteLLM interprets and OpenRouter must never see; the call
 * reads all of them but drop_params. */
enum {
    K_num_retries, K_max_retries, K_timeout, K_api_key, K_api_base, K_base_url, K_extra_headers,
    K_drop_params, K_fallbacks, K_raise_on_error, K_hedge, K_COUNT
};

static const ord_named kw_names[K_COUNT] = {
    ORD_NAMED("num_retries"), ORD_NAMED("max_retries"), ORD_NAMED("timeout"), ORD_NAMED("api_key"),
    ORD_NAMED("api_base"), ORD_NAMED("base_url"), ORD_NAMED("extra_headers"), ORD_NAMED("drop_params"),
    ORD_NAMED("fallbacks"), ORD_NAMED("raise_on_error"), ORD_NAMED("hedge"),
};

static int is_interpreted(const char *k, size_t n)
{
    return ord_name_index(kw_names, K_COUNT, k, n) >= 0;
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

/* The kwargs the call reads, found in one pass over the dict: a
 * PyDict_GetItemString per name would make and hash a str each time, with
 * the GIL held (docs/TUNING.md). */
static void kw_scan(PyObject *kwargs, kw_view *kv)
{
    memset(kv, 0, sizeof *kv);
    if (!kwargs)
        return;
    PyObject *k, *v;
    Py_ssize_t pos = 0, n;
    while (PyDict_Next(kwargs, &pos, &k, &v)) {
        const char *s = key_utf8(k, &n); /* NULL: not one of ours; check_types judges the keys */
        int i = s ? ord_name_index(kw_names, K_COUNT, s, (size_t)n) : -1;
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

static int read_limits(ord_req *r, const kw_view *kv, const ord_env *env)
{
    PyObject *nr = kv->v[K_num_retries];
    if (!nr)
        nr = kv->v[K_max_retries];
    r->max_retries = ORD_MAX_RETRIES_DEFAULT;
    if (nr) {
        if (!PyLong_Check(nr) || PyBool_Check(nr)) {
            PyErr_Format(PyExc_TypeError, "num_retries must be an int, not %.100s", Py_TYPE(nr)->tp_name);
            return -1;
        }
        long v = PyLong_AsLong(nr);
        if (v == -1 && PyErr_Occurred())
            return -1;
        r->max_retries = v < 0 ? 0 : v > ORD_MAX_RETRIES_CAP ? ORD_MAX_RETRIES_CAP : (int)v;
    }
    double timeout = ord_env_double(env, ORD_E_LITELLM_DEFAULT_TIMEOUT, ORD_DEFAULT_TIMEOUT_S);
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
        timeout = ORD_DEFAULT_TIMEOUT_S;
    if (timeout > year_s)
        timeout = year_s;
    r->timeout_ms = (long)ceil(timeout * 1000.0);
    r->connect_timeout_ms =
        r->timeout_ms < ORD_CONNECT_TIMEOUT_MAX_MS ? r->timeout_ms : ORD_CONNECT_TIMEOUT_MAX_MS;
    r->base_delay_ms = fmin(ord_env_double(env, ORD_E_OPENROUTER_RETRY_BASE_DELAY, 0.5), day_s) * 1000.0;
    r->max_delay_ms = fmin(ord_env_double(env, ORD_E_OPENROUTER_RETRY_MAX_DELAY, 8.0), day_s) * 1000.0;
    double cap = ord_env_double(env, ORD_E_OPENROUTER_MAX_RESPONSE_BYTES, ORD_MAX_RESPONSE_DEFAULT);
    r->max_response = (curl_off_t)(cap < 1 ? ORD_MAX_RESPONSE_DEFAULT : fmin(cap, 0x1p62));
    PyObject *strict = kv->v[K_raise_on_error];
    if (strict) {
        int s = PyObject_IsTrue(strict);
        if (s < 0)
            return -1;
        r->strict = s;
    } else {
        r->strict = ord_env_true(env, ORD_E_OPENROUTER_RAISE_ON_ERROR);
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

static int write_messages(ord_jw *w, const ord_call_args *a)
{
    if (a->messages != Py_None)
        return ord_jw_value(w, a->messages, "messages", 0);
    PyObject *prompts[2] = {a->system_prompt, a->user_prompt};
    const char *roles[2] = {"system", "user"};
    int first = 1;
    ORD_JW_LIT(w, "[");
    for (int i = 0; i < 2; i++) {
        if (prompts[i] == Py_None)
            continue;
        if (!first)
            ORD_JW_LIT(w, ",");
        first = 0;
        ORD_JW_LIT(w, "{\"role\":\"");
        ord_jw_put(w, roles[i], strlen(roles[i]));
        ORD_JW_LIT(w, "\",\"content\":");
        if (ord_jw_value(w, prompts[i], roles[i], 0) < 0)
            return -1;
        ORD_JW_LIT(w, "}");
    }
    ORD_JW_LIT(w, "]");
    return 0;
}

enum { M_MODEL, M_MESSAGES, M_NUMBER, M_MODELS, M_KWARG };
typedef struct {
    const char *key;
    int kind;
    const char *number;  /* M_NUMBER: the value's text */
    PyObject *value;     /* set: a kwarg's value (borrowed), replacing ours */
    int dropped;         /* a kwarg set it to None */
} member;

static int write_models(ord_jw *w, const char *model, PyObject *fallbacks, int openrouter, const char *map)
{
    ORD_JW_LIT(w, "[");
    ord_jw_string(w, model, strlen(model));
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fallbacks); i++) {
        Py_ssize_t n;
        const char *f = PyUnicode_AsUTF8AndSize(PySequence_Fast_GET_ITEM(fallbacks, i), &n);
        if (!f)
            return -1;
        char buf[512];
        int ignored;
        const char *m = ord_map_model(map, f, openrouter, buf, sizeof buf, &ignored);
        ORD_JW_LIT(w, ",");
        ord_jw_string(w, m, m == f ? (size_t)n : strlen(m));
    }
    ORD_JW_LIT(w, "]");
    return 0;
}

static char *build_body(const ord_call_args *a, const char *model, PyObject *fallbacks, int openrouter,
                        const char *map, size_t *body_len)
{
    char max_tokens[24];
    ord_dec_ll(max_tokens, a->default_max_tokens);
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
    ord_jw w = {0};
    int rc = ord_jw_reserve(&w, guess);
    int first = 1;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (m[i].dropped)
            continue;
        ord_jw_put(&w, first ? "{" : ",", 1);
        first = 0;
        ord_jw_string(&w, m[i].key, strlen(m[i].key));
        ORD_JW_LIT(&w, ":");
        if (m[i].value)
            rc = ord_jw_value(&w, m[i].value, m[i].key, 0);
        else if (m[i].kind == M_MODEL)
            ord_jw_string(&w, model, strlen(model));
        else if (m[i].kind == M_MESSAGES)
            rc = write_messages(&w, a);
        else if (m[i].kind == M_NUMBER)
            ord_jw_put(&w, m[i].number, strlen(m[i].number));
        else if (m[i].kind == M_MODELS)
            rc = write_models(&w, model, fallbacks, openrouter, map);
    }
    PyMem_Free(m);
    if (first)
        ORD_JW_LIT(&w, "{");
    ORD_JW_LIT(&w, "}");
    if (rc == 0 && ord_jw_reserve(&w, 1) == 0)
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

/* The proxy settings env.c found, copied into r for libcurl. */
static int take_proxy(ord_req *r, const char *base, const ord_env *env)
{
    const char *proxy, *noproxy;
    ord_env_proxy(env, base, &proxy, &noproxy);
    r->proxy = proxy ? strdup(proxy) : NULL;
    r->noproxy = noproxy ? strdup(noproxy) : NULL;
    return (proxy && !r->proxy) || (noproxy && !r->noproxy) ? -1 : 0;
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
    ord_env env;
    ord_env_scan(&env);
    ord_endpoint ep;
    ord_endpoint_resolve(&ep, key, base, &env);
    key = ep.key;
    base = ep.base;
    int openrouter = ep.openrouter;
    char mapped[512];
    int auto_mapped;
    const char *map = env.v[ORD_E_OPENROUTER_MODEL_MAP];
    const char *model = ord_map_model(map, model_full, openrouter, mapped, sizeof mapped, &auto_mapped);

    ord_req *r = ord_req_new();
    if (!r) {
        PyErr_NoMemory();
        return NULL;
    }
    r->model = strdup(model);
    r->url = ord_endpoint_url(base);
    const char *ca = ord_env_cainfo(&env);
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
    r->plain_http = ep.plain_http;
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
    if (ord_take_headers(r, key, extra, &env) < 0)
        goto error;
    return r;
error:
    ord_req_decref(r);
    return NULL;
}
