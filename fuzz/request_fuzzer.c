/*
 * request_fuzzer.c - libFuzzer harness for the request builder (csrc/request.c
 * and the files it builds with: env.c, endpoint.c, jsonw.c, headers.c, reqlife.c).
 *
 * ord_build_request takes Python objects, so this harness embeds CPython:
 * LLVMFuzzerInitialize starts an interpreter and imports fuzz/request_oracle.py,
 * whose decode() turns the fuzz bytes into the arguments of one call (prompts,
 * messages and kwargs parsed as JSON, header values and the key through the
 * environment) and whose check() judges the body built from them.
 *
 * Invariants, any failure aborts (and libFuzzer keeps the input):
 *  - the builder either returns a request with no exception pending, or NULL
 *    with one of the exceptions a call may raise for arguments it cannot send
 *    (never MemoryError: that means a NULL came back without an exception;
 *    never SystemError: that means an exception was left pending);
 *  - a request that was not refused has a body of body_len bytes that cJSON
 *    parses and that says what was asked (request_oracle.check);
 *  - no header line carries CR or LF; a request refused for a header says so;
 *  - the key never appears in a failure message.
 *
 * Memory errors are ASan's to find. The builder runs with the GIL held, as in
 * the extension; the engine, the channels and the sequence counter are stubbed.
 */
#include "../csrc/request.c"
#include "../csrc/env.c"
#include "../csrc/endpoint.c"
#include "../csrc/jsonw.c"
#include "../csrc/headers.c"
#include "../csrc/reqlife.c"
#include "../csrc/response.c"
#include "../csrc/reader.c"
#include "../csrc/policy.c"

#include <stdint.h>

/* Stubs for the parts of the extension the builder links against. */
uint64_t ord_next_seq(void)
{
    static uint64_t seq;
    return ++seq;
}

void ord_chan_decref(ord_chan *c)
{
    (void)c;
}

static PyObject *g_decode, *g_check, *g_allowed, *g_skip;

/* A key the fuzzer made up may be "utf-" or "code": text any message holds.
 * Real keys are ~70 characters; only keys of 16 or more are looked for. */
#define KEY_MIN_LEN 16

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    setenv("PYTHONMALLOC", "malloc", 1); /* every object is an ASan-tracked block */
    Py_InitializeEx(0);
    PyObject *sys_path = PySys_GetObject("path");
    PyObject *dir = PyUnicode_FromString(ORD_FUZZ_DIR);
    if (!sys_path || !dir || PyList_Insert(sys_path, 0, dir) < 0)
        abort();
    Py_DECREF(dir);
    PyObject *oracle = PyImport_ImportModule("request_oracle");
    if (!oracle) {
        PyErr_Print();
        abort();
    }
    g_decode = PyObject_GetAttrString(oracle, "decode");
    g_check = PyObject_GetAttrString(oracle, "check");
    g_allowed = PyObject_GetAttrString(oracle, "ALLOWED_ERRORS");
    g_skip = PyObject_GetAttrString(oracle, "Skip");
    if (!g_decode || !g_check || !g_allowed || !g_skip)
        abort();
    Py_DECREF(oracle);
    return 0;
}

static void fail(const char *what, const char *detail)
{
    fprintf(stderr, "request_fuzzer: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    abort();
}

static void check_request(ord_req *r, PyObject *args, const char *key)
{
    for (struct curl_slist *h = r->headers; h; h = h->next)
        if (strpbrk(h->data, "\r\n"))
            fail("CR/LF reached a header line", h->data);
    if (r->message && key && strlen(key) >= KEY_MIN_LEN && strstr(r->message, key))
        fail("the key appears in a failure message", r->message);
    if (r->reason == ORD_BAD_HEADER) {
        /* A key that is itself a piece of the reason is masked in it, as a key is
         * everywhere (the fuzzer learns "CR or LF" from this very check). */
        int masked = key && *key && strstr(ORD_BAD_HEADER_MESSAGE, key);
        if (!r->message || (!strstr(r->message, "CR or LF") && !masked))
            fail("a refused header without saying why", r->message);
        return;
    }
    if (r->reason != ORD_OK && r->reason != ORD_CONFIG)
        fail("unexpected failure reason", ord_reason_get(r->reason)->name);
    if (!r->body || strlen(r->body) != r->body_len)
        fail("body length does not match body_len", NULL);
    cJSON *doc = cJSON_ParseWithLength(r->body, r->body_len);
    if (!doc)
        fail("cJSON cannot parse the body", r->body);
    cJSON_Delete(doc);
    if (!r->url || !r->model)
        fail("no url or model", NULL);
    PyObject *body = PyBytes_FromStringAndSize(r->body, (Py_ssize_t)r->body_len);
    PyObject *call = body ? PyTuple_Pack(6, body, PyTuple_GET_ITEM(args, 0), PyTuple_GET_ITEM(args, 1),
                                         PyTuple_GET_ITEM(args, 2), PyTuple_GET_ITEM(args, 3),
                                         PyTuple_GET_ITEM(args, 4))
                           : NULL;
    PyObject *complaint = call ? PyObject_Call(g_check, call, NULL) : NULL;
    Py_XDECREF(call);
    Py_XDECREF(body);
    if (!complaint) {
        PyErr_Print();
        fail("the oracle raised", NULL);
    }
    if (complaint != Py_None)
        fail("the body is not what was asked", PyUnicode_AsUTF8(complaint));
    Py_DECREF(complaint);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    PyObject *raw = PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)size);
    PyObject *args = raw ? PyObject_CallOneArg(g_decode, raw) : NULL;
    Py_XDECREF(raw);
    if (!args) {
        if (!PyErr_ExceptionMatches(g_skip)) {
            PyErr_Print();
            fail("decode raised", NULL);
        }
        PyErr_Clear();
        return 0;
    }
    PyObject *key_obj = PyTuple_GET_ITEM(args, 5);
    const char *key = PyBytes_AsString(key_obj);

    ord_call_args a = {
        .model = PyTuple_GET_ITEM(args, 0),
        .user_prompt = PyTuple_GET_ITEM(args, 1),
        .system_prompt = PyTuple_GET_ITEM(args, 2),
        .messages = PyTuple_GET_ITEM(args, 3),
        .kwargs = PyTuple_GET_ITEM(args, 4),
        .default_max_tokens = 16384,
    };
    if (a.messages == NULL)
        a.messages = Py_None;
    ord_req *r = ord_build_request(&a);
    if (!r) {
        if (!PyErr_Occurred())
            fail("NULL without an exception", NULL);
        if (PyErr_ExceptionMatches(PyExc_MemoryError) || !PyErr_ExceptionMatches(g_allowed)) {
            PyErr_Print();
            fail("the builder raised an exception a call must not raise", NULL);
        }
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyObject *text = value ? PyObject_Str(value) : NULL;
        const char *msg = text ? PyUnicode_AsUTF8(text) : NULL;
        if (msg && key && strlen(key) >= KEY_MIN_LEN && strstr(msg, key))
            fail("the key appears in an exception", msg);
        PyErr_Clear();
        Py_XDECREF(text);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
    } else {
        if (PyErr_Occurred()) {
            PyErr_Print();
            fail("a request came back with a Python exception pending", NULL);
        }
        check_request(r, args, key);
        ord_req_decref(r);
    }
    Py_DECREF(args);
    return 0;
}
