/*
 * request.c - from a Python call to a ready-to-send request: the JSON body
 * (cJSON), the URL and the header list. Runs with the GIL held, once per
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

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define JSON_MAX_DEPTH 64

/* Extra output bytes each input byte needs inside a JSON string. */
static unsigned char json_extra[256];

static void json_extra_init(void)
{
    for (int c = 0; c < 0x20; c++)
        json_extra[c] = 5; /* \u00XX */
    json_extra['\b'] = json_extra['\f'] = json_extra['\n'] = json_extra['\r'] = json_extra['\t'] = 1;
    json_extra['"'] = json_extra['\\'] = 1;
}

/* A JSON string node for s[0..n), escaped here and handed to cJSON as a raw
 * value. Two reasons: cJSON_CreateString stops at a NUL, which a Python str
 * may hold; and cJSON's printer escapes byte by byte with a bounds check per
 * byte, which was a fifth of the instructions of a whole call for a 4 KB
 * prompt (callgrind). Here runs of plain bytes are copied whole, and the
 * printer then copies the raw text with one memcpy. *raw_bytes grows by the
 * escaped length, so the body's size is known before printing. */
static cJSON *json_string(const char *s, Py_ssize_t n, size_t *raw_bytes)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, json_extra_init);
    char *q = malloc((size_t)n * 6 + 3); /* worst case: every byte \u00XX */
    cJSON *item = q ? cJSON_CreateRaw("") : NULL;
    if (!item) {
        free(q);
        return NULL;
    }
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    size_t o = 0;
    q[o++] = '"';
    while (p < end) {
        const unsigned char *run = p;
        while (p < end && !json_extra[*p])
            p++;
        memcpy(q + o, run, (size_t)(p - run));
        o += (size_t)(p - run);
        if (p == end)
            break;
        unsigned char c = *p++;
        if (json_extra[c] == 1) {
            q[o++] = '\\';
            q[o++] = c == '\b' ? 'b' : c == '\f' ? 'f' : c == '\n' ? 'n' : c == '\r' ? 'r' : c == '\t' ? 't' : (char)c;
        } else {
            memcpy(q + o, "\\u00", 4);
            q[o + 4] = hex[c >> 4];
            q[o + 5] = hex[c & 15];
            o += 6;
        }
    }
    q[o++] = '"';
    q[o] = '\0';
    *raw_bytes += o;
    /* The node owns q now: cJSON_Delete frees valuestring with free(). */
    free(item->valuestring);
    item->valuestring = q;
    return item;
}

static cJSON *to_json(PyObject *o, const char *what, int depth, size_t *raw);

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

static cJSON *to_json_inner(PyObject *o, const char *what, int depth, size_t *raw)
{
    if (o == Py_None)
        return cJSON_CreateNull();
    if (o == Py_True)
        return cJSON_CreateTrue();
    if (o == Py_False)
        return cJSON_CreateFalse();
    if (PyUnicode_Check(o)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(o, &n);
        if (!s) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s: a str that is not valid Unicode cannot be sent as JSON",
                         what);
            return NULL;
        }
        return json_string(s, n, raw);
    }
    /* Numbers go in as text, as json.dumps writes them: cJSON prints a
     * double with 15 significant digits whenever that reads back within
     * DBL_EPSILON, which turns 2**53 into 9.00719925474099e+15 and
     * 0.1 + 0.2 into 0.3. */
    if (PyLong_Check(o)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (v == -1 && PyErr_Occurred())
            return NULL;
        if (!overflow) {
            char num[32];
            snprintf(num, sizeof num, "%lld", v);
            return cJSON_CreateRaw(num);
        }
        PyObject *text = PyLong_Type.tp_repr(o); /* int subclasses too (IntEnum) */
        if (!text)
            return NULL;
        cJSON *item = cJSON_CreateRaw(PyUnicode_AsUTF8(text));
        Py_DECREF(text);
        return item;
    }
    if (PyFloat_Check(o)) {
        double d = PyFloat_AS_DOUBLE(o);
        if (!isfinite(d)) {
            PyErr_Format(PyExc_TypeError, "%s: %R is not a JSON number", what, o);
            return NULL;
        }
        char *text = PyOS_double_to_string(d, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
        if (!text)
            return NULL;
        cJSON *item = cJSON_CreateRaw(text);
        PyMem_Free(text);
        return item;
    }
    if (PyDict_Check(o)) {
        cJSON *obj = cJSON_CreateObject();
        if (!obj)
            return NULL;
        PyObject *k, *v;
        Py_ssize_t pos = 0;
        while (PyDict_Next(o, &pos, &k, &v)) {
            PyObject *kstr = json_key(k, what);
            Py_ssize_t klen = 0;
            const char *ks = kstr ? PyUnicode_AsUTF8AndSize(kstr, &klen) : NULL;
            if (ks && (size_t)klen != strlen(ks)) {
                /* cJSON keeps keys as C strings. */
                PyErr_Format(PyExc_TypeError, "%s: a JSON object key with a NUL character cannot be sent",
                             what);
                Py_DECREF(kstr);
                cJSON_Delete(obj);
                return NULL;
            }
            cJSON *item = ks ? to_json(v, what, depth + 1, raw) : NULL;
            if (!item) {
                if (kstr && !ks) {
                    PyErr_Clear();
                    PyErr_Format(PyExc_TypeError, "%s: a key that is not valid Unicode", what);
                }
                Py_XDECREF(kstr);
                cJSON_Delete(obj);
                return NULL;
            }
            cJSON_AddItemToObject(obj, ks, item);
            Py_DECREF(kstr);
        }
        return obj;
    }
    if (PyList_Check(o) || PyTuple_Check(o)) {
        cJSON *arr = cJSON_CreateArray();
        if (!arr)
            return NULL;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
        for (Py_ssize_t i = 0; i < n; i++) {
            cJSON *item = to_json(PySequence_Fast_GET_ITEM(o, i), what, depth + 1, raw);
            if (!item) {
                cJSON_Delete(arr);
                return NULL;
            }
            cJSON_AddItemToArray(arr, item);
        }
        return arr;
    }
    PyErr_Format(PyExc_TypeError, "%s: object of type %.100s cannot be sent as JSON", what,
                 Py_TYPE(o)->tp_name);
    return NULL;
}

static cJSON *to_json(PyObject *o, const char *what, int depth, size_t *raw)
{
    if (depth > JSON_MAX_DEPTH) {
        PyErr_Format(PyExc_TypeError, "%s: nested more than %d levels deep", what, JSON_MAX_DEPTH);
        return NULL;
    }
    cJSON *item = to_json_inner(o, what, depth, raw);
    if (!item && !PyErr_Occurred())
        PyErr_NoMemory();
    return item;
}

/* ---- environment and kwargs ---- */

static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return (v && *v) ? v : NULL;
}

static double env_double(const char *name, double dflt)
{
    const char *v = env_nonempty(name);
    if (!v)
        return dflt;
    char *end;
    double d = strtod(v, &end);
    return (end != v && d >= 0 && isfinite(d)) ? d : dflt;
}

static int env_true(const char *name)
{
    const char *v = env_nonempty(name);
    return v && (strcmp(v, "1") == 0 || strcasecmp(v, "true") == 0 || strcasecmp(v, "yes") == 0);
}

/* kwargs that LiteLLM interprets and OpenRouter must never see. */
static const char *const interpreted[] = {
    "num_retries", "max_retries", "timeout", "api_key", "api_base", "base_url",
    "extra_headers", "drop_params", "fallbacks", "raise_on_error", NULL,
};

static int is_interpreted(const char *k)
{
    for (int i = 0; interpreted[i]; i++)
        if (strcmp(k, interpreted[i]) == 0)
            return 1;
    return 0;
}

static PyObject *kw(PyObject *kwargs, const char *name)
{
    /* Most calls pass no kwargs; PyDict_GetItemString makes a str each time. */
    if (!kwargs || PyDict_GET_SIZE(kwargs) == 0)
        return NULL;
    PyObject *v = PyDict_GetItemString(kwargs, name);
    return v == Py_None ? NULL : v;
}

static int kw_str(PyObject *kwargs, const char *name, const char **out)
{
    PyObject *v = kw(kwargs, name);
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
    free(line);
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
static int build_headers(ord_req *r, const char *key, PyObject *extra)
{
    const char *referer = env_nonempty("OPENROUTER_REFERER");
    const char *title = env_nonempty("OPENROUTER_TITLE");
    struct {
        const char *name, *value;
    } std[] = {
        {"HTTP-Referer", referer ? referer : "http://localhost:3000"},
        {"X-Title", title ? title : "DR-Tulu Training"},
        {"Content-Type", "application/json"},
    };
    size_t keylen = strlen(key);
    char *auth = malloc(keylen + 8);
    if (!auth) {
        PyErr_NoMemory();
        return -1;
    }
    snprintf(auth, keylen + 8, "Bearer %s", key);
    int rc = overridden(extra, "Authorization") ? 0 : add_header(&r->headers, "Authorization", auth);
    memset(auth, 0, keylen + 8);
    free(auth);
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

static int read_limits(ord_req *r, PyObject *kwargs)
{
    PyObject *nr = kw(kwargs, "num_retries");
    if (!nr)
        nr = kw(kwargs, "max_retries");
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
    double timeout = env_double("LITELLM_DEFAULT_TIMEOUT", 600.0);
    PyObject *t = kw(kwargs, "timeout");
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
    r->base_delay_ms = fmin(env_double("OPENROUTER_RETRY_BASE_DELAY", 0.5), day_s) * 1000.0;
    r->max_delay_ms = fmin(env_double("OPENROUTER_RETRY_MAX_DELAY", 8.0), day_s) * 1000.0;
    double cap = env_double("OPENROUTER_MAX_RESPONSE_BYTES", 64.0 * 1024 * 1024);
    r->max_response = (curl_off_t)(cap < 1 ? 64.0 * 1024 * 1024 : fmin(cap, 0x1p62));
    PyObject *strict = kwargs ? PyDict_GetItemString(kwargs, "raise_on_error") : NULL;
    if (strict && strict != Py_None) {
        int s = PyObject_IsTrue(strict);
        if (s < 0)
            return -1;
        r->strict = s;
    } else {
        r->strict = env_true("OPENROUTER_RAISE_ON_ERROR");
    }
    return 0;
}

static cJSON *build_messages(const ord_call_args *a, size_t *raw)
{
    if (a->messages != Py_None)
        return to_json(a->messages, "messages", 0, raw);
    cJSON *msgs = cJSON_CreateArray();
    if (!msgs)
        return NULL;
    PyObject *prompts[2] = {a->system_prompt, a->user_prompt};
    const char *roles[2] = {"system", "user"};
    for (int i = 0; i < 2; i++) {
        if (prompts[i] == Py_None)
            continue;
        cJSON *m = cJSON_CreateObject();
        cJSON *content = m ? to_json(prompts[i], roles[i], 0, raw) : NULL;
        if (!content) {
            cJSON_Delete(m);
            cJSON_Delete(msgs);
            return NULL;
        }
        cJSON_AddStringToObject(m, "role", roles[i]);
        cJSON_AddItemToObject(m, "content", content);
        cJSON_AddItemToArray(msgs, m);
    }
    return msgs;
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
    return strncmp(host, "127.", 4) == 0 || (n == 9 && strncasecmp(host, "localhost", 9) == 0) ||
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
static int custom_map(const char *model, char *out, size_t outsz)
{
    const char *map = getenv("OPENROUTER_MODEL_MAP");
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
static const char *map_model(const char *name, int openrouter, char *out, size_t outsz, int *auto_mapped)
{
    const char *m = strip_prefix(name);
    *auto_mapped = 0;
    if (!openrouter)
        return m;
    if (custom_map(m, out, outsz))
        return out;
    if (is_bare_openai(m) && strlen(m) + 8 < outsz) {
        snprintf(out, outsz, "openai/%s", m);
        *auto_mapped = 1;
        return out;
    }
    return m;
}

static char *build_body(const ord_call_args *a, const char *model, PyObject *fallbacks, int openrouter)
{
    size_t raw = 0; /* bytes of string values, already escaped */
    cJSON *root = cJSON_CreateObject();
    cJSON *msgs = root ? build_messages(a, &raw) : NULL;
    if (!msgs) {
        cJSON_Delete(root);
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        return NULL;
    }
    cJSON_AddStringToObject(root, "model", model);
    cJSON_AddItemToObject(root, "messages", msgs);
    cJSON_AddNumberToObject(root, "temperature", 0);
    cJSON_AddNumberToObject(root, "max_tokens", (double)a->default_max_tokens);
    cJSON_AddNumberToObject(root, "top_p", 1.0);
    cJSON_AddNumberToObject(root, "frequency_penalty", 0);
    cJSON_AddNumberToObject(root, "presence_penalty", 0);
    if (fallbacks && PySequence_Fast_GET_SIZE(fallbacks) > 0) {
        cJSON *models = cJSON_CreateArray();
        cJSON_AddItemToArray(models, cJSON_CreateString(model));
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fallbacks); i++) {
            const char *f = PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(fallbacks, i));
            if (!f) {
                cJSON_Delete(models);
                cJSON_Delete(root);
                return NULL;
            }
            char buf[512];
            int ignored;
            cJSON_AddItemToArray(models, cJSON_CreateString(map_model(f, openrouter, buf, sizeof buf, &ignored)));
        }
        cJSON_AddItemToObject(root, "models", models);
    }
    if (a->kwargs) {
        PyObject *k, *v;
        Py_ssize_t pos = 0;
        while (PyDict_Next(a->kwargs, &pos, &k, &v)) {
            Py_ssize_t klen;
            const char *ks = PyUnicode_AsUTF8AndSize(k, &klen);
            if (ks && (size_t)klen != strlen(ks)) {
                PyErr_SetString(PyExc_TypeError, "a keyword argument name with a NUL character cannot be sent");
                ks = NULL;
            }
            if (!ks) {
                cJSON_Delete(root);
                return NULL;
            }
            if (is_interpreted(ks))
                continue;
            /* None means "not set", as in LiteLLM: it also removes a default. */
            if (v == Py_None) {
                cJSON_DeleteItemFromObjectCaseSensitive(root, ks);
                continue;
            }
            cJSON *item = to_json(v, ks, 0, &raw);
            if (!item) {
                cJSON_Delete(root);
                return NULL;
            }
            if (cJSON_GetObjectItemCaseSensitive(root, ks))
                cJSON_ReplaceItemInObjectCaseSensitive(root, ks, item);
            else
                cJSON_AddItemToObject(root, ks, item);
        }
    }
    /* Print into a buffer sized from the strings' lengths: the growing
     * buffer of cJSON_PrintUnformatted re-copies the prompt several times.
     * The structure around the strings (keys, numbers, punctuation) fits in
     * the 4 KB margin unless kwargs are large; then the growing path. */
    size_t cap = raw + 4096;
    char *body = cap < INT_MAX ? malloc(cap) : NULL;
    if (!body || !cJSON_PrintPreallocated(root, body, (int)cap, 0)) {
        free(body);
        body = cJSON_PrintUnformatted(root);
    }
    cJSON_Delete(root);
    if (!body)
        PyErr_NoMemory();
    return body;
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

ord_req *ord_build_request(const ord_call_args *a)
{
    PyObject *extra = kw(a->kwargs, "extra_headers");
    PyObject *fallbacks = kw(a->kwargs, "fallbacks");
    if (check_types(a, extra, fallbacks) < 0)
        return NULL;
    const char *model_full = PyUnicode_AsUTF8(a->model);
    if (!model_full)
        return NULL;

    const char *key = NULL, *base = NULL;
    if (kw_str(a->kwargs, "api_key", &key) < 0 || kw_str(a->kwargs, "api_base", &base) < 0 ||
        (!base && kw_str(a->kwargs, "base_url", &base) < 0))
        return NULL;
    if (!key)
        key = env_nonempty("OPENAI_API_KEY");
    if (!key)
        key = env_nonempty("OPENROUTER_API_KEY");
    if (!base)
        base = env_nonempty("OPENAI_API_BASE");
    if (!base)
        base = "https://openrouter.ai/api/v1";
    int openrouter = is_openrouter(base);
    char mapped[512];
    int auto_mapped;
    const char *model = map_model(model_full, openrouter, mapped, sizeof mapped, &auto_mapped);

    ord_req *r = ord_req_new();
    if (!r) {
        PyErr_NoMemory();
        return NULL;
    }
    r->model = strdup(model);
    r->url = build_url(base);
    const char *ca = env_nonempty("SSL_CERT_FILE");
    if (!ca)
        ca = env_nonempty("CURL_CA_BUNDLE");
    if (ca)
        r->cainfo = strdup(ca);
    if (!r->model || !r->url || (ca && !r->cainfo)) {
        PyErr_NoMemory();
        goto error;
    }
    if (read_limits(r, a->kwargs) < 0)
        goto error;
    r->auto_mapped = auto_mapped;
    /* The key would cross the network in clear. */
    r->plain_http = strncasecmp(base, "http://", 7) == 0 && !is_loopback(base);
    r->body = build_body(a, model, fallbacks, openrouter);
    if (!r->body)
        goto error;
    r->body_len = strlen(r->body);

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
    if (build_headers(r, key, extra) < 0)
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
    curl_slist_free_all(r->headers);
    free(r->cainfo);
    if (r->secret) {
        /* Don't leave the key lying in freed heap memory. */
        volatile char *p = r->secret;
        while (*p)
            *p++ = 0;
        free(r->secret);
    }
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
