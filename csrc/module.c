/*
 * module.c - the Python face of the extension (openrouter_direct._native):
 * multi-phase init, module state, and the functions the thin Python package
 * calls once per call: submit (async), call (sync), cancel (stats() is built
 * in metrics.c).
 *
 * The rule: the GIL is released only around waiting (the sync call's poll and
 * joining the engine at exit), and nothing inside those windows touches a
 * Python object.
 */
#include "ord.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

static int g_curl_ready;             /* curl_global_init done (process-wide) */
static pthread_mutex_t g_init_mu = PTHREAD_MUTEX_INITIALIZER;

ord_state *ord_get_state(PyObject *module)
{
    return (ord_state *)PyModule_GetState(module);
}

static void atfork_child(void)
{
    ord_engine_after_fork_child();
    ord_policy_after_fork_child();
}

/* A fork happened since this module last looked: the parent's channels
 * belong to an engine that does not exist here. */
static void check_fork(PyObject *module)
{
    ord_state *st = ord_get_state(module);
    unsigned gen = atomic_load(&ord_fork_generation);
    if (st->fork_gen != gen) {
        ord_channels_forget_after_fork(module);
        st->fork_gen = gen;
    }
}

/* A str for C text that came from a server or the environment: neither need
 * be UTF-8 (a shell can export any bytes), and a failed call must still come
 * back as "" and a log line, never a UnicodeDecodeError. */
static PyObject *lenient_str(const char *s)
{
    return PyUnicode_DecodeUTF8(s, (Py_ssize_t)strlen(s), "replace");
}

static PyObject *attempt_list(ord_req *r)
{
    int n = r->attempts < ORD_ATTEMPT_LOG ? r->attempts : ORD_ATTEMPT_LOG;
    PyObject *list = PyList_New(n);
    if (!list)
        return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *t = Py_BuildValue("(lsI)", r->log[i].status,
                                    r->log[i].curl_code ? curl_easy_strerror(r->log[i].curl_code) : "",
                                    r->log[i].ms);
        if (!t) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, t);
    }
    return list;
}

PyObject *ord_result_object(PyObject *module, ord_req *r, int *is_exception)
{
    ord_state *st = ord_get_state(module);
    *is_exception = 0;
    if (r->debug && st->attempt_hook && r->attempts > 0) {
        PyObject *log = attempt_list(r);
        PyObject *model = log ? lenient_str(r->model ? r->model : "") : NULL;
        PyObject *res = model ? PyObject_CallFunction(st->attempt_hook, "KOO", (unsigned long long)r->seq,
                                                      model, log)
                              : NULL;
        Py_XDECREF(log);
        Py_XDECREF(model);
        if (!res)
            PyErr_WriteUnraisable(st->attempt_hook);
        Py_XDECREF(res);
    }
    if (r->reason == ORD_OK && r->raw) /* the engine kept the reply; _api.py reads it */
        return PyBytes_FromStringAndSize(r->buf ? r->buf : "", r->buf ? (Py_ssize_t)r->buf_len : 0);
    if (r->reason == ORD_OK)
        return PyUnicode_DecodeUTF8(r->content ? r->content : "", (Py_ssize_t)r->content_len, "replace");

    const ord_reason_info *info = ord_reason_get(r->reason);
    const char *exc_name = info->exc_name;
    if (!exc_name)
        exc_name = ord_status_exc_name(r->status);
    if (!st->fail_hook)
        return PyUnicode_FromString("");
    PyObject *status = r->status > 0 ? PyLong_FromLong(r->status) : Py_NewRef(Py_None);
    /* A server's message need not be valid UTF-8; the caller must still get "". */
    PyObject *msg = lenient_str(r->message ? r->message : "unknown error");
    PyObject *model = lenient_str(r->model ? r->model : ""); /* OPENROUTER_MODEL_MAP's bytes */
    if (!status || !msg || !model) {
        Py_XDECREF(status);
        Py_XDECREF(msg);
        Py_XDECREF(model);
        return NULL;
    }
    PyObject *value = PyObject_CallFunction(st->fail_hook, "(sNNNKiOs)", info->name, status, msg,
                                            model, (unsigned long long)r->seq,
                                            r->attempts, r->strict ? Py_True : Py_False, exc_name);
    if (!value)
        return NULL;
    *is_exception = PyExceptionInstance_Check(value);
    return value;
}

static int parse_call_args(PyObject *const *args, Py_ssize_t nargs, ord_call_args *a)
{
    if (nargs != 6 && nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "expected 6 or 7 arguments");
        return -1;
    }
    a->raw = 0;
    if (nargs == 7 && (a->raw = PyObject_IsTrue(args[6])) < 0)
        return -1;
    a->model = args[0];
    a->user_prompt = args[1];
    a->system_prompt = args[2];
    a->messages = args[3];
    a->kwargs = args[4] == Py_None ? NULL : args[4];
    if (a->kwargs && !PyDict_Check(a->kwargs)) {
        PyErr_SetString(PyExc_TypeError, "kwargs must be a dict");
        return -1;
    }
    a->default_max_tokens = PyLong_AsLong(args[5]);
    if (a->default_max_tokens == -1 && PyErr_Occurred())
        return -1;
    return 0;
}

/* Tell the Python side about something worth one WARNING per process. */
static int warn_once(ord_state *st, const char *kind, PyObject *subject, const char *detail)
{
    if (!st->warn_hook)
        return 0;
    PyObject *text = lenient_str(detail); /* a model or URL from the environment's bytes */
    if (!text)
        return -1;
    PyObject *key = Py_BuildValue("(sO)", kind, subject ? subject : text);
    int seen = key ? PySet_Contains(st->warned, key) : -1;
    /* Every failure returns -1 with its exception set, PySet_Add's included. */
    if (seen == 0 && PySet_Add(st->warned, key) < 0)
        seen = -1;
    Py_XDECREF(key);
    if (seen != 0) {
        Py_DECREF(text);
        return seen < 0 ? -1 : 0;
    }
    PyObject *res = PyObject_CallFunction(st->warn_hook, "sOO", kind, subject ? subject : text, text);
    Py_DECREF(text);
    Py_XDECREF(res);
    return res ? 0 : -1;
}

static ord_req *make_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ord_call_args a;
    if (parse_call_args(args, nargs, &a) < 0)
        return NULL;
    ord_req *r = ord_build_request(&a);
    if (!r)
        return NULL;
    ord_state *st = ord_get_state(module);
    if (r->auto_mapped && warn_once(st, "model", a.model, r->model) < 0) {
        ord_req_decref(r);
        return NULL;
    }
    if (r->plain_http && warn_once(st, "plain_http", NULL, r->url) < 0) {
        ord_req_decref(r);
        return NULL;
    }
    if (st->debug_enabled) {
        PyObject *d = PyObject_CallNoArgs(st->debug_enabled);
        if (!d) {
            ord_req_decref(r);
            return NULL;
        }
        r->debug = PyObject_IsTrue(d) == 1;
        Py_DECREF(d);
    }
    return r;
}

/* The running loop (new reference), or None. asyncio is looked up on first
 * use rather than at import: importing it costs ~25 ms, and a caller that
 * awaits us has imported it already. */
static PyObject *running_loop(ord_state *st)
{
    if (!st->get_running_loop) {
        PyObject *asyncio = PyImport_ImportModule("asyncio");
        if (!asyncio)
            return NULL;
        st->get_running_loop = PyObject_GetAttrString(asyncio, "_get_running_loop");
        Py_DECREF(asyncio);
        if (!st->get_running_loop)
            return NULL;
    }
    return PyObject_CallNoArgs(st->get_running_loop);
}

/* Resolve a future now, with the result of a request that never reached
 * (or was refused by) the engine. */
static int resolve_now(PyObject *module, PyObject *fut, ord_req *r)
{
    ord_state *st = ord_get_state(module);
    int is_exc;
    PyObject *value = ord_result_object(module, r, &is_exc);
    if (!value)
        return -1;
    PyObject *res = PyObject_CallMethodOneArg(fut, is_exc ? st->str_set_exception : st->str_set_result, value);
    Py_DECREF(value);
    if (!res)
        return -1;
    Py_DECREF(res);
    return 0;
}

static void fail_refused(ord_req *r, int rc)
{
    if (rc == -1) {
        ord_req_fail(r, ORD_SHUTDOWN, 0, "the interpreter is exiting; the call was not sent");
    } else if (rc == -3) {
        char msg[160];
        snprintf(msg, sizeof msg, "OPENROUTER_MAX_COST is spent (%.6g of %.6g credits): the call was not sent",
                 ord_engine_cost(), ord_policy_max_cost());
        ord_req_fail(r, ORD_BUDGET, 0, msg);
    } else
        ord_req_fail(r, ORD_CONNECTION, 0, "could not start the engine thread");
    ord_engine_count_immediate(r);
}

/* submit(model, user_prompt, system_prompt, messages, kwargs, default_max_tokens)
 *   -> (future, key); key is None when the future is already resolved. */
static PyObject *mod_submit(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ord_state *st = ord_get_state(module);
    check_fork(module);
    PyObject *loop = running_loop(st);
    if (!loop)
        return NULL;
    if (loop == Py_None) {
        Py_DECREF(loop);
        PyErr_SetString(PyExc_RuntimeError, "run_openrouter_async must be awaited inside a running event loop");
        return NULL;
    }
    PyObject *fut = NULL, *ch = NULL, *key = NULL, *out = NULL;
    ord_req *r = make_request(module, args, nargs);
    if (!r)
        goto done;
    fut = PyObject_CallMethodNoArgs(loop, st->str_create_future);
    if (!fut)
        goto done;
    if (r->reason != ORD_OK) {
        ord_engine_count_immediate(r);
        if (resolve_now(module, fut, r) == 0)
            out = PyTuple_Pack(2, fut, Py_None);
        goto done;
    }
    ch = ord_channel_for_loop(module, loop);
    if (!ch)
        goto done;
    r->chan = ord_channel_native(ch);
    ord_chan_incref(r->chan);
    key = PyLong_FromVoidPtr(r);
    if (!key || ord_channel_track(ch, r, fut) < 0)
        goto done;
    int rc = ord_engine_submit(r);
    if (rc != 0) {
        ord_req *again;
        ord_channel_untrack(ch, key, NULL, &again);
        fail_refused(r, rc);
        if (resolve_now(module, fut, r) == 0)
            out = PyTuple_Pack(2, fut, Py_None);
        goto done;
    }
    r = NULL; /* the submitter's reference now lives in the channel's map */
    out = PyTuple_Pack(2, fut, key);
done:
    if (r)
        ord_req_decref(r);
    Py_XDECREF(key);
    Py_XDECREF(ch);
    Py_XDECREF(fut);
    Py_DECREF(loop);
    return out;
}

/* cancel(key[, fut]): the awaiting task was cancelled (or its coroutine
 * closed); abort the transfer. */
static PyObject *mod_cancel(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ord_state *st = ord_get_state(module);
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "cancel() takes a key and optionally its future (%zd given)", nargs);
        return NULL;
    }
    PyObject *key = args[0], *fut = nargs == 2 && args[1] != Py_None ? args[1] : NULL;
    /* No channels after the module was cleared (interpreter teardown): a
     * coroutine closed that late has no call left to find. */
    if (key == Py_None || !st->channels)
        Py_RETURN_NONE;
    PyObject *loop = running_loop(st);
    if (!loop)
        return NULL;
    PyObject *ch = loop != Py_None ? PyDict_GetItemWithError(st->channels, loop) : NULL;
    Py_DECREF(loop);
    if (!ch && PyErr_Occurred())
        return NULL;
    ord_req *r = NULL;
    if (ch && ord_channel_untrack(ch, key, fut, &r) < 0)
        return NULL;
    /* Not in the running loop's channel: the coroutine may be closed outside
     * its loop (a loop closed with the call still awaiting, the task
     * collected later, with no loop or another one running). Look in every
     * channel, matching the future itself so that a reused address cannot
     * cancel another call; otherwise the call would stay on the wire until
     * its timeout. */
    if (!r && fut) {
        PyObject *k, *v;
        Py_ssize_t pos = 0;
        while (!r && PyDict_Next(st->channels, &pos, &k, &v))
            if (v != ch && ord_channel_untrack(v, key, fut, &r) < 0)
                return NULL;
    }
    if (r) {
        ord_engine_cancel(r);
        ord_req_decref(r);
    }
    Py_RETURN_NONE;
}

/* call(...same as submit...) -> str: waits with the GIL released. */
static PyObject *mod_call(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    check_fork(module);
    ord_req *r = make_request(module, args, nargs);
    if (!r)
        return NULL;
    int is_exc = 0;
    PyObject *value = NULL;
    ord_chan *chan = NULL;
    if (r->reason != ORD_OK) {
        ord_engine_count_immediate(r);
        value = ord_result_object(module, r, &is_exc);
        goto done;
    }
    chan = ord_chan_new();
    if (!chan) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    r->chan = chan;
    ord_chan_incref(chan);
    int rc = ord_engine_submit(r);
    if (rc != 0) {
        fail_refused(r, rc);
        value = ord_result_object(module, r, &is_exc);
        goto done;
    }
    ord_req *got = NULL;
    while (!got) {
        struct pollfd p = {.fd = chan->fd, .events = POLLIN};
        int n;
        Py_BEGIN_ALLOW_THREADS
        n = poll(&p, 1, -1);
        Py_END_ALLOW_THREADS
        if (n < 0 && errno != EINTR) {
            PyErr_SetFromErrno(PyExc_OSError);
            ord_engine_cancel(r);
            goto done;
        }
        if (n < 0) {
            /* A signal: let Python run its handler (Ctrl-C raises here). */
            if (PyErr_CheckSignals() < 0) {
                ord_engine_cancel(r);
                goto done;
            }
            continue;
        }
        got = ord_chan_take(chan);
    }
    value = ord_result_object(module, got, &is_exc);
    ord_req_decref(got); /* the queue's reference; r keeps the submitter's */
done:
    if (chan) {
        ord_chan_close(chan);
        ord_chan_decref(chan);
    }
    ord_req_decref(r);
    if (value && is_exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(value), value);
        Py_DECREF(value);
        return NULL;
    }
    return value;
}

/* set_limit(n) -> previous limit; set_limit(None) only reads it. */
static PyObject *mod_set_limit(PyObject *module, PyObject *arg)
{
    (void)module;
    long prev = ord_engine_get_limit();
    if (arg != Py_None) {
        if (!PyLong_Check(arg) || PyBool_Check(arg)) {
            PyErr_SetString(PyExc_TypeError, "max_concurrent_calls must be an int");
            return NULL;
        }
        long n = PyLong_AsLong(arg);
        if (n == -1 && PyErr_Occurred())
            return NULL;
        if (n < 1) {
            PyErr_SetString(PyExc_ValueError, "max_concurrent_calls must be at least 1");
            return NULL;
        }
        ord_engine_set_limit(n);
    }
    return PyLong_FromLong(prev);
}

/* set_governor(adaptive, rate_limit_wait_s, max_cost): a negative value
 * leaves that setting as it is. Returns the settings in force. */
static PyObject *mod_set_governor(PyObject *module, PyObject *args)
{
    (void)module;
    int adaptive;
    double wait_s, max_cost;
    if (!PyArg_ParseTuple(args, "idd", &adaptive, &wait_s, &max_cost))
        return NULL;
    if (!(wait_s == wait_s) || !(max_cost == max_cost)) { /* NaN */
        PyErr_SetString(PyExc_ValueError, "set_governor: NaN");
        return NULL;
    }
    ord_policy_configure(adaptive, wait_s, max_cost);
    return Py_BuildValue("{sOsdsd}", "adaptive", ord_policy_adaptive() ? Py_True : Py_False,
                         "rate_limit_wait", ord_policy_rate_limit_wait(), "max_cost", ord_policy_max_cost());
}

/* set_hedge(quantile, budget): quantile 0 turns hedging off; a negative
 * value leaves that setting as it is. Returns the settings in force. */
static PyObject *mod_set_hedge(PyObject *module, PyObject *args)
{
    (void)module;
    double q, budget;
    if (!PyArg_ParseTuple(args, "dd", &q, &budget))
        return NULL;
    if (!(q == q) || !(budget == budget) || q >= 1.0 || budget > 1.0) {
        PyErr_SetString(PyExc_ValueError, "set_hedge: quantile must be in [0, 1), budget in [0, 1]");
        return NULL;
    }
    ord_hedge_configure(q, budget);
    return Py_BuildValue("{sdsd}", "hedge", ord_hedge_quantile(), "hedge_budget", ord_hedge_budget());
}

static PyObject *mod_reset_governor(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    (void)module;
    ord_engine_reset_governors();
    Py_RETURN_NONE;
}

/* governor_events() -> [(url, from, to, why)]: limit changes since the last
 * call, for the DEBUG log. */
static PyObject *mod_governor_events(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    (void)module;
    ord_gov_event ev[64];
    PyObject *list = PyList_New(0);
    int n;
    while (list && (n = ord_gov_events_take(ev, 64)) > 0) {
        for (int i = 0; i < n; i++) {
            /* The URL is the caller's bytes, cut to fit: not always UTF-8. */
            PyObject *url = PyUnicode_DecodeUTF8(ev[i].url, (Py_ssize_t)strlen(ev[i].url), "replace");
            PyObject *t = url ? Py_BuildValue("(Nllz)", url, ev[i].from, ev[i].to, ev[i].why) : NULL;
            if (!t || PyList_Append(list, t) < 0) {
                Py_XDECREF(t);
                Py_CLEAR(list);
                break;
            }
            Py_DECREF(t);
        }
    }
    return list;
}

static PyObject *mod_set_hooks(PyObject *module, PyObject *args)
{
    ord_state *st = ord_get_state(module);
    PyObject *fail, *attempt, *debug, *warn;
    if (!PyArg_ParseTuple(args, "OOOO", &fail, &attempt, &debug, &warn))
        return NULL;
    Py_XSETREF(st->warn_hook, Py_NewRef(warn));
    Py_XSETREF(st->fail_hook, Py_NewRef(fail));
    Py_XSETREF(st->attempt_hook, Py_NewRef(attempt));
    Py_XSETREF(st->debug_enabled, Py_NewRef(debug));
    Py_RETURN_NONE;
}

/* shutdown(): fail what is in flight and stop the engine (interpreter exit). */
static PyObject *mod_shutdown(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    (void)module;
    Py_BEGIN_ALLOW_THREADS
    ord_engine_shutdown();
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef mod_methods[] = {
    {"submit", (PyCFunction)(void (*)(void))mod_submit, METH_FASTCALL,
     "submit(model, user_prompt, system_prompt, messages, kwargs, default_max_tokens[, raw]) -> (future, key); raw: the reply as bytes, failures raise"},
    {"call", (PyCFunction)(void (*)(void))mod_call, METH_FASTCALL,
     "call(model, user_prompt, system_prompt, messages, kwargs, default_max_tokens[, raw]) -> str or bytes"},
    {"cancel", (PyCFunction)(void (*)(void))mod_cancel, METH_FASTCALL,
     "cancel(key[, fut]): abort the call of a cancelled task (fut: its future, to find it outside its loop)."},
    {"stats", ord_mod_stats, METH_NOARGS, "Process-wide counters."},
    {"endpoint", ord_mod_endpoint, METH_VARARGS, "endpoint(base_url=None) -> what a call would use."},
    {"latency_histogram", ord_mod_latency_histogram, METH_NOARGS,
     "latency_histogram() -> tuple of bucket counts since start (see latency_buckets)."},
    {"latency_buckets", ord_mod_latency_buckets, METH_NOARGS,
     "latency_buckets() -> tuple of each bucket's latency in ms."},
    {"set_limit", mod_set_limit, METH_O, "set_limit(n or None) -> previous cap on calls on the wire."},
    {"set_hooks", mod_set_hooks, METH_VARARGS, "set_hooks(fail, attempt, debug_enabled, warn)."},
    {"set_governor", mod_set_governor, METH_VARARGS,
     "set_governor(adaptive, rate_limit_wait_s, max_cost); negative: unchanged."},
    {"set_hedge", mod_set_hedge, METH_VARARGS,
     "set_hedge(quantile, budget): quantile in (0, 1), 0 for off; negative: unchanged."},
    {"governor_events", mod_governor_events, METH_NOARGS, "Limit changes since the last call."},
    {"reset_governor", mod_reset_governor, METH_NOARGS,
     "Every endpoint back to slow start with no cooldown (tests; a new run)."},
    {"shutdown", mod_shutdown, METH_NOARGS, "Fail in-flight calls and stop the engine."},
    {NULL, NULL, 0, NULL},
};

static int intern(PyObject **slot, const char *s)
{
    *slot = PyUnicode_InternFromString(s);
    return *slot ? 0 : -1;
}

static int mod_exec(PyObject *module)
{
    /* The engine, its cap and its exit hook are process-wide, while each
     * interpreter would get a module of its own and register its own
     * shutdown: a subinterpreter ending would stop the engine under the main
     * interpreter's calls. Refused, at import, whatever the kind of
     * subinterpreter (the slot below covers only isolated ones on 3.12+). */
    if (PyInterpreterState_Get() != PyInterpreterState_Main()) {
        PyErr_SetString(PyExc_ImportError,
                        "openrouter_direct._native does not support subinterpreters: "
                        "import it in the main interpreter only");
        return -1;
    }
    curl_version_info_data *vi = curl_version_info(CURLVERSION_NOW);
    if (vi->version_num < LIBCURL_VERSION_NUM) {
        PyErr_Format(PyExc_ImportError,
                     "openrouter_direct was built against libcurl %s but this process loaded libcurl "
                     "%s; install libcurl %s or newer, or rebuild the package",
                     LIBCURL_VERSION, vi->version, LIBCURL_VERSION);
        return -1;
    }
    pthread_mutex_lock(&g_init_mu);
    if (!g_curl_ready) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            pthread_mutex_unlock(&g_init_mu);
            PyErr_SetString(PyExc_ImportError, "curl_global_init failed");
            return -1;
        }
        pthread_atfork(NULL, NULL, atfork_child);
        g_curl_ready = 1;
    }
    pthread_mutex_unlock(&g_init_mu);

    ord_state *st = ord_get_state(module);
    st->fork_gen = atomic_load(&ord_fork_generation);
    st->channel_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &ord_channel_spec, NULL);
    if (!st->channel_type)
        return -1;
    st->channels = PyDict_New();
    st->warned = PySet_New(NULL);
    if (!st->channels || !st->warned)
        return -1;
    if (intern(&st->str_done, "done") < 0 || intern(&st->str_set_result, "set_result") < 0 ||
        intern(&st->str_set_exception, "set_exception") < 0 || intern(&st->str_add_reader, "add_reader") < 0 ||
        intern(&st->str_remove_reader, "remove_reader") < 0 || intern(&st->str_is_closed, "is_closed") < 0 ||
        intern(&st->str_create_future, "create_future") < 0)
        return -1;
    if (PyModule_AddStringConstant(module, "curl_version", vi->version) < 0 ||
        PyModule_AddStringConstant(module, "built_with_curl", LIBCURL_VERSION) < 0)
        return -1;
    return 0;
}

static int mod_traverse(PyObject *module, visitproc visit, void *arg)
{
    ord_state *st = ord_get_state(module);
    Py_VISIT(st->channel_type);
    Py_VISIT(st->channels);
    Py_VISIT(st->get_running_loop);
    Py_VISIT(st->fail_hook);
    Py_VISIT(st->attempt_hook);
    Py_VISIT(st->debug_enabled);
    Py_VISIT(st->warn_hook);
    Py_VISIT(st->warned);
    return 0;
}

static int mod_clear(PyObject *module)
{
    ord_state *st = ord_get_state(module);
    Py_CLEAR(st->channel_type);
    Py_CLEAR(st->channels);
    Py_CLEAR(st->get_running_loop);
    Py_CLEAR(st->fail_hook);
    Py_CLEAR(st->attempt_hook);
    Py_CLEAR(st->debug_enabled);
    Py_CLEAR(st->warn_hook);
    Py_CLEAR(st->warned);
    Py_CLEAR(st->str_done);
    Py_CLEAR(st->str_set_result);
    Py_CLEAR(st->str_set_exception);
    Py_CLEAR(st->str_add_reader);
    Py_CLEAR(st->str_remove_reader);
    Py_CLEAR(st->str_is_closed);
    Py_CLEAR(st->str_create_future);
    return 0;
}

static void mod_free(void *module)
{
    mod_clear((PyObject *)module);
}

static PyModuleDef_Slot mod_slots[] = {
    {Py_mod_exec, mod_exec},
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef mod_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "openrouter_direct._native",
    .m_doc = "libcurl + cJSON engine of openrouter_direct.",
    .m_size = sizeof(ord_state),
    .m_methods = mod_methods,
    .m_slots = mod_slots,
    .m_traverse = mod_traverse,
    .m_clear = mod_clear,
    .m_free = mod_free,
};

PyMODINIT_FUNC PyInit__native(void)
{
    return PyModuleDef_Init(&mod_def);
}
