/*
 * metrics.c - the engine's figures as Python objects: the stats() dict, and
 * the latency histogram for od.metrics().
 *
 * stats() is cumulative: counters, tokens and cost, failures by reason,
 * HTTP statuses, p50/p95/p99 since start, each endpoint's governor and the
 * hedges, all from one ord_engine_snapshot copy (stats.c).
 *
 * od.metrics() reports p50/p95 latency over the interval since its last
 * read, which the cumulative quantiles of stats() cannot give: it keeps the
 * previous bucket counts and subtracts. This file only copies the counts out
 * (stats.c owns them, under its stats mutex) and names each bucket's value;
 * the subtraction and the quantiles are a few hundred integers once per
 * training step, done in _metrics.py.
 *
 * The rule: the GIL is held, and nothing here holds the stats mutex while
 * touching Python: the engine's figures are copied out first.
 */
#include "ord.h"

#include <string.h>

#define ORD_METRICS_MAX_BUCKETS 1024

PyObject *ord_mod_latency_histogram(PyObject *module, PyObject *ignored)
{
    (void)module;
    (void)ignored;
    uint32_t counts[ORD_METRICS_MAX_BUCKETS];
    size_t n = ord_engine_hist_copy(counts, ORD_METRICS_MAX_BUCKETS);
    if (n > ORD_METRICS_MAX_BUCKETS)
        n = ORD_METRICS_MAX_BUCKETS;
    PyObject *t = PyTuple_New((Py_ssize_t)n);
    if (!t)
        return NULL;
    for (size_t b = 0; b < n; b++) {
        PyObject *v = PyLong_FromUnsignedLong(counts[b]);
        if (!v) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, (Py_ssize_t)b, v);
    }
    return t;
}

PyObject *ord_mod_latency_buckets(PyObject *module, PyObject *ignored)
{
    (void)module;
    (void)ignored;
    uint32_t unused[1];
    size_t n = ord_engine_hist_copy(unused, 0);
    if (n > ORD_METRICS_MAX_BUCKETS)
        n = ORD_METRICS_MAX_BUCKETS;
    PyObject *t = PyTuple_New((Py_ssize_t)n);
    if (!t)
        return NULL;
    for (size_t b = 0; b < n; b++) {
        PyObject *v = PyFloat_FromDouble(ord_engine_hist_value(b));
        if (!v) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, (Py_ssize_t)b, v);
    }
    return t;
}

static int dict_set_u64(PyObject *d, const char *k, uint64_t v)
{
    PyObject *o = PyLong_FromUnsignedLongLong(v);
    int rc = o ? PyDict_SetItemString(d, k, o) : -1;
    Py_XDECREF(o);
    return rc;
}

static PyObject *ms_or_none(double v)
{
    return v < 0 ? Py_NewRef(Py_None) : PyFloat_FromDouble(v);
}

/* stats()["endpoints"]: {url (or "url #2" for a second key): {...}} */
static int add_endpoints(PyObject *d)
{
    enum { MAX_SHOWN = 64 };
    ord_endpoint_stats *eps = PyMem_Malloc(MAX_SHOWN * sizeof *eps);
    if (!eps) {
        PyErr_NoMemory();
        return -1;
    }
    int n = ord_engine_endpoints(eps, MAX_SHOWN);
    PyObject *all = PyDict_New();
    int rc = all ? 0 : -1;
    for (int i = 0; i < n && rc == 0; i++) {
        const ord_endpoint_stats *o = &eps[i];
        PyObject *one = Py_BuildValue(
            "{slsdslslsKsKsKsdsd}", "limit", o->limit, "rate", o->rate, "in_flight", o->in_flight, "queued", o->queued,
            "rate_limited", (unsigned long long)o->rate_limited, "waited_calls",
            (unsigned long long)o->waited_calls, "succeeded", (unsigned long long)o->succeeded,
            "cooldown_s", o->cooldown_s, "cost", o->cost);
        PyObject *name = o->key_no > 1 ? PyUnicode_FromFormat("%s #%d", o->url, o->key_no)
                                       : PyUnicode_DecodeUTF8(o->url, (Py_ssize_t)strlen(o->url), "replace");
        rc = (one && name) ? PyDict_SetItem(all, name, one) : -1;
        Py_XDECREF(one);
        Py_XDECREF(name);
    }
    PyMem_Free(eps);
    if (rc == 0)
        rc = PyDict_SetItemString(d, "endpoints", all);
    Py_XDECREF(all);
    return rc;
}

/* stats()["hedge"]: hedges sent, won, and what they cost. */
static int add_hedge(PyObject *d, const ord_stats *s)
{
    PyObject *h = Py_BuildValue("{sKsKsKsKsdsKsKsd}", "sent", (unsigned long long)s->hedges, "won",
                                (unsigned long long)s->hedges_won, "aborted",
                                (unsigned long long)s->hedges_aborted, "failed",
                                (unsigned long long)s->hedges_failed, "time_saved_s",
                                s->hedge_saved_ms / 1000.0, "aborted_prompt_tokens",
                                (unsigned long long)s->hedge_waste_prompt, "aborted_completion_tokens",
                                (unsigned long long)s->hedge_waste_completion, "aborted_cost",
                                s->hedge_waste_cost);
    int rc = h ? PyDict_SetItemString(d, "hedge", h) : -1;
    Py_XDECREF(h);
    return rc;
}

/* _native.stats(): the process-wide counters, as one dict. */
PyObject *ord_mod_stats(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    (void)module;
    ord_stats s;
    ord_engine_snapshot(&s);
    PyObject *d = PyDict_New(), *by = PyDict_New(), *st = PyDict_New(), *lat = NULL;
    if (!d || !by || !st)
        goto error;
    if (dict_set_u64(d, "calls", s.calls) < 0 || dict_set_u64(d, "succeeded", s.succeeded) < 0 ||
        dict_set_u64(d, "failed", s.failed) < 0 || dict_set_u64(d, "cancelled", s.cancelled) < 0 ||
        dict_set_u64(d, "retries", s.retries) < 0 || dict_set_u64(d, "in_flight", (uint64_t)s.in_flight) < 0 ||
        dict_set_u64(d, "queued", (uint64_t)s.queued) < 0 ||
        dict_set_u64(d, "prompt_tokens", s.prompt_tokens) < 0 ||
        dict_set_u64(d, "completion_tokens", s.completion_tokens) < 0 ||
        dict_set_u64(d, "max_concurrent_calls", (uint64_t)s.limit) < 0 ||
        dict_set_u64(d, "rate_limited", s.rate_limited) < 0)
        goto error;
    if (add_endpoints(d) < 0 || add_hedge(d, &s) < 0)
        goto error;
    PyObject *cost = PyFloat_FromDouble(s.cost);
    if (!cost || PyDict_SetItemString(d, "cost", cost) < 0) {
        Py_XDECREF(cost);
        goto error;
    }
    Py_DECREF(cost);
    for (int i = 1; i < ORD_REASON_COUNT; i++)
        if (s.by_reason[i] && i != ORD_CANCELLED && dict_set_u64(by, ord_reason_get(i)->name, s.by_reason[i]) < 0)
            goto error;
    for (int code = 1; code < ORD_HTTP_STATUS_END; code++) {
        if (!s.status_count[code])
            continue;
        PyObject *k = PyLong_FromLong(code), *v = PyLong_FromUnsignedLongLong(s.status_count[code]);
        int rc = (k && v) ? PyDict_SetItem(st, k, v) : -1;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (rc < 0)
            goto error;
    }
    lat = Py_BuildValue("{sNsNsN}", "p50", ms_or_none(s.p50), "p95", ms_or_none(s.p95), "p99",
                        ms_or_none(s.p99));
    if (!lat || PyDict_SetItemString(d, "failed_by_reason", by) < 0 ||
        PyDict_SetItemString(d, "http_status", st) < 0 || PyDict_SetItemString(d, "latency_ms", lat) < 0)
        goto error;
    Py_DECREF(by);
    Py_DECREF(st);
    Py_DECREF(lat);
    return d;
error:
    Py_XDECREF(d);
    Py_XDECREF(by);
    Py_XDECREF(st);
    Py_XDECREF(lat);
    return NULL;
}
