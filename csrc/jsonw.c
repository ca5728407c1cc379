/*
 * jsonw.c - the JSON writer: Python values written as JSON text straight into
 * one growing buffer, byte for byte what json.dumps(..., ensure_ascii=False,
 * separators=(",", ":")) writes. request.c writes each call's body with it;
 * it knows nothing of requests. GIL held (it reads Python objects).
 *
 * Not through a cJSON tree: building one costs a malloc per node and per key,
 * cJSON's printer escapes byte by byte, and it prints every number through
 * sprintf and sscanf; on the caller's thread, with the GIL held, that was a
 * large share of a call's cost (docs/TUNING.md).
 *
 * The rule: a failed allocation sets w->oom and every later write is a no-op,
 * so a writer can write on and check once; ord_jw_value turns oom into
 * MemoryError, and every other failure there is a TypeError naming the
 * argument ("what") that held the value.
 */
#include "ord.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 64

int ord_jw_reserve(ord_jw *w, size_t more)
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

void ord_jw_put(ord_jw *w, const char *s, size_t n)
{
    if (ord_jw_reserve(w, n) == 0) {
        memcpy(w->p + w->len, s, n);
        w->len += n;
    }
}

/* v in decimal, as "%lld" writes it, NUL-terminated in out (24 bytes);
 * returns the length. Not snprintf: its format parsing is most of the cost
 * of writing the max_tokens every call carries. */
int ord_dec_ll(char *out, long long v)
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

void ord_jw_string(ord_jw *w, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    /* Most strings need no escapes: reserve the plain size now and grow
     * again only when an escape turns up. */
    if (ord_jw_reserve(w, n + 2) < 0)
        return;
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    w->p[w->len++] = '"';
    while (p < end) {
        const unsigned char *run = p;
        p = ord_plain_run(p, end);
        size_t k = (size_t)(p - run);
        if (ord_jw_reserve(w, k + 7) < 0)
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
    if (ord_jw_reserve(w, 1) == 0)
        w->p[w->len++] = '"';
}

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

static int jw_value_inner(ord_jw *w, PyObject *o, const char *what, int depth)
{
    if (o == Py_None) {
        ORD_JW_LIT(w, "null");
        return 0;
    }
    if (o == Py_True) {
        ORD_JW_LIT(w, "true");
        return 0;
    }
    if (o == Py_False) {
        ORD_JW_LIT(w, "false");
        return 0;
    }
    if (PyUnicode_Check(o)) {
        Py_ssize_t n;
        const char *s = utf8_of(o, &n, what, "a str");
        if (!s)
            return -1;
        ord_jw_string(w, s, (size_t)n);
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
            ord_jw_put(w, num, (size_t)ord_dec_ll(num, v));
            return 0;
        }
        PyObject *text = PyLong_Type.tp_repr(o); /* int subclasses too (IntEnum) */
        Py_ssize_t n;
        const char *s = text ? PyUnicode_AsUTF8AndSize(text, &n) : NULL;
        if (s)
            ord_jw_put(w, s, (size_t)n);
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
        ord_jw_put(w, text, strlen(text));
        PyMem_Free(text);
        return 0;
    }
    if (PyDict_Check(o)) {
        PyObject *k, *v;
        Py_ssize_t pos = 0;
        int first = 1;
        ORD_JW_LIT(w, "{");
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
                    ORD_JW_LIT(w, ",");
                ord_jw_string(w, ks, (size_t)klen);
                ORD_JW_LIT(w, ":");
            }
            Py_DECREF(kstr);
            int rc = ks ? ord_jw_value(w, v, what, depth + 1) : -1;
            Py_DECREF(v);
            if (rc < 0)
                return -1;
            first = 0;
        }
        ORD_JW_LIT(w, "}");
        return 0;
    }
    if (PyList_Check(o) || PyTuple_Check(o)) {
        Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
        ORD_JW_LIT(w, "[");
        for (Py_ssize_t i = 0; i < n; i++) {
            if (i)
                ORD_JW_LIT(w, ",");
            /* Python code run for a key inside (see the dict case) may
             * shrink the list: hold the item, and re-read the length. */
            PyObject *item = Py_NewRef(PySequence_Fast_GET_ITEM(o, i));
            int rc = ord_jw_value(w, item, what, depth + 1);
            Py_DECREF(item);
            if (rc < 0)
                return -1;
            n = PySequence_Fast_GET_SIZE(o);
        }
        ORD_JW_LIT(w, "]");
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "%s: object of type %.100s cannot be sent as JSON", what,
                 Py_TYPE(o)->tp_name);
    return -1;
}

int ord_jw_value(ord_jw *w, PyObject *o, const char *what, int depth)
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
