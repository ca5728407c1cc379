/*
 * metrics.c - the engine's latency histogram as Python objects.
 *
 * od.metrics() reports p50/p95 latency over the interval since its last
 * read, which the cumulative quantiles of stats() cannot give: it keeps the
 * previous bucket counts and subtracts. This file only copies the counts out
 * (stats.c owns them, under its stats mutex) and names each bucket's value;
 * the subtraction and the quantiles are a few hundred integers once per
 * training step, done in _metrics.py.
 *
 * The rule: nothing here holds the stats mutex while touching Python.
 */
#include "ord.h"

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
