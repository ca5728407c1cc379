/*
 * channel.c - the Python Channel type: one per asyncio loop, the loop's end
 * of a completion queue (deliver.c). GIL held, on the loop's own thread.
 *
 * Its eventfd is registered with loop.add_reader; Channel.drain takes the
 * queue's whole batch and resolves the futures it finds in its map (key: the
 * request's address). Channels live as long as their loop; a channel whose
 * loop has been closed is swept when the next channel is made, so
 * asyncio.run() per call holds at most one stale descriptor.
 *
 * The rule: a future is resolved only here, on its loop's thread, and only if
 * it is not done already (a cancelled task's future is left alone); each
 * request still in the map holds the submitter's reference, released when it
 * is resolved, cancelled or the channel is closed.
 */
#include "ord.h"

#include <unistd.h>

typedef struct {
    PyObject_HEAD
    ord_chan *chan;     /* NULL once closed or abandoned after fork */
    PyObject *loop;
    PyObject *futures;  /* dict: int(address of ord_req) -> Future */
    PyObject *module;
} ChannelObject;

ord_chan *ord_channel_native(PyObject *channel)
{
    return ((ChannelObject *)channel)->chan;
}

int ord_channel_track(PyObject *channel, ord_req *r, PyObject *future)
{
    ChannelObject *ch = (ChannelObject *)channel;
    PyObject *key = PyLong_FromVoidPtr(r);
    if (!key)
        return -1;
    int rc = PyDict_SetItem(ch->futures, key, future);
    Py_DECREF(key);
    return rc;
}

/* Removes key from the map. *out is the request when the call was still
 * waiting (the caller then owns the submitter's reference), else NULL.
 * expect: when not NULL, the key counts only if it maps to this very future
 * (a key is an address, which a later call may reuse). */
int ord_channel_untrack(PyObject *channel, PyObject *key, PyObject *expect, ord_req **out)
{
    ChannelObject *ch = (ChannelObject *)channel;
    *out = NULL;
    PyObject *fut = PyDict_GetItemWithError(ch->futures, key);
    if (!fut)
        return PyErr_Occurred() ? -1 : 0;
    if (expect && fut != expect)
        return 0;
    if (PyDict_DelItem(ch->futures, key) < 0)
        return -1;
    *out = PyLong_AsVoidPtr(key);
    return 0;
}

/* Resolve one future unless someone else already did (cancelled, say). */
static void resolve(ChannelObject *ch, ord_state *st, PyObject *fut, ord_req *r)
{
    PyObject *done = PyObject_CallMethodNoArgs(fut, st->str_done);
    if (!done) {
        PyErr_WriteUnraisable(fut);
        return;
    }
    int is_done = PyObject_IsTrue(done);
    Py_DECREF(done);
    if (is_done)
        return;
    int is_exc = 0;
    PyObject *value = ord_result_object(ch->module, r, &is_exc);
    PyObject *res = NULL;
    if (value) {
        res = PyObject_CallMethodOneArg(fut, is_exc ? st->str_set_exception : st->str_set_result,
                                        value);
        Py_DECREF(value);
    } else {
        /* Never leave the awaiting task hanging: hand it the error. */
        PyObject *type, *exc, *tb;
        PyErr_Fetch(&type, &exc, &tb);
        PyErr_NormalizeException(&type, &exc, &tb);
        res = exc ? PyObject_CallMethodOneArg(fut, st->str_set_exception, exc) : NULL;
        Py_XDECREF(type);
        Py_XDECREF(exc);
        Py_XDECREF(tb);
    }
    if (!res)
        PyErr_WriteUnraisable(fut);
    Py_XDECREF(res);
}

static PyObject *channel_drain(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    ChannelObject *ch = (ChannelObject *)self;
    if (!ch->chan)
        Py_RETURN_NONE;
    ord_state *st = ord_get_state(ch->module);
    ord_req *r = ord_chan_take(ch->chan);
    while (r) {
        ord_req *next = r->done_next;
        ord_req *owned = NULL;
        PyObject *key = PyLong_FromVoidPtr(r);
        PyObject *fut = key ? PyDict_GetItemWithError(ch->futures, key) : NULL;
        if (fut) {
            Py_INCREF(fut);
            if (PyDict_DelItem(ch->futures, key) == 0)
                owned = r;
            resolve(ch, st, fut, r);
            Py_DECREF(fut);
        }
        if (PyErr_Occurred())
            PyErr_WriteUnraisable(self);
        Py_XDECREF(key);
        if (owned)
            ord_req_decref(owned);  /* the submitter's reference */
        ord_req_decref(r);          /* the queue's reference */
        r = next;
    }
    Py_RETURN_NONE;
}

/* Each request still keyed in the map holds a submitter reference: cancel
 * it and let go. After ord_chan_close the engine's later posts for this
 * channel are turned away, and the fd is closed. */
static void release_native(ChannelObject *ch)
{
    if (ch->futures) {
        PyObject *key, *value;
        Py_ssize_t pos = 0;
        while (PyDict_Next(ch->futures, &pos, &key, &value)) {
            ord_req *r = PyLong_AsVoidPtr(key);
            ord_engine_cancel(r);
            ord_req_decref(r);
        }
        PyDict_Clear(ch->futures);
    }
    ord_chan_close(ch->chan);
    ord_chan_decref(ch->chan);
    ch->chan = NULL;
}

/* Detach from the engine when the loop has gone (the sweep): stop watching
 * the fd unless the loop is closed already, then release. */
static void channel_close(ChannelObject *ch, int loop_closed)
{
    if (!ch->chan)
        return;
    if (!loop_closed && ch->loop) {
        ord_state *st = ord_get_state(ch->module);
        PyObject *fd = PyLong_FromLong(ch->chan->fd);
        PyObject *res = fd ? PyObject_CallMethodOneArg(ch->loop, st->str_remove_reader, fd) : NULL;
        Py_XDECREF(fd);
        if (!res)
            PyErr_Clear(); /* the loop may be half torn down; the fd goes anyway */
        Py_XDECREF(res);
    }
    release_native(ch);
}

static int loop_is_closed(ord_state *st, PyObject *loop)
{
    PyObject *res = PyObject_CallMethodNoArgs(loop, st->str_is_closed);
    if (!res) {
        PyErr_Clear();
        return 1;
    }
    int closed = PyObject_IsTrue(res);
    Py_DECREF(res);
    return closed == 1;
}

static void sweep_closed_loops(PyObject *module)
{
    ord_state *st = ord_get_state(module);
    PyObject *items = PyDict_Items(st->channels);
    if (!items) {
        PyErr_Clear();
        return;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *pair = PyList_GET_ITEM(items, i);
        PyObject *loop = PyTuple_GET_ITEM(pair, 0);
        if (!loop_is_closed(st, loop))
            continue;
        channel_close((ChannelObject *)PyTuple_GET_ITEM(pair, 1), 1);
        if (PyDict_DelItem(st->channels, loop) < 0)
            PyErr_Clear();
    }
    Py_DECREF(items);
}

PyObject *ord_channel_for_loop(PyObject *module, PyObject *loop)
{
    ord_state *st = ord_get_state(module);
    if (!st->channels) {
        PyErr_SetString(PyExc_RuntimeError, "openrouter_direct._native was torn down (interpreter exit)");
        return NULL;
    }
    PyObject *ch = PyDict_GetItemWithError(st->channels, loop);
    if (ch) {
        Py_INCREF(ch);
        return ch;
    }
    if (PyErr_Occurred())
        return NULL;
    sweep_closed_loops(module);

    ChannelObject *obj = PyObject_GC_New(ChannelObject, st->channel_type);
    if (!obj)
        return NULL;
    obj->chan = NULL;
    obj->loop = Py_NewRef(loop);
    obj->module = Py_NewRef(module);
    obj->futures = PyDict_New();
    PyObject_GC_Track(obj);
    if (!obj->futures)
        goto error;
    obj->chan = ord_chan_new();
    if (!obj->chan) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto error;
    }
    PyObject *drain = PyObject_GetAttrString((PyObject *)obj, "drain");
    PyObject *fd = PyLong_FromLong(obj->chan->fd);
    PyObject *res = (drain && fd) ? PyObject_CallMethodObjArgs(loop, st->str_add_reader, fd, drain, NULL)
                                  : NULL;
    Py_XDECREF(drain);
    Py_XDECREF(fd);
    if (!res)
        goto error;
    Py_DECREF(res);
    if (PyDict_SetItem(st->channels, loop, (PyObject *)obj) < 0) {
        channel_close(obj, 0);
        goto error;
    }
    return (PyObject *)obj;
error:
    Py_DECREF(obj); /* dealloc releases the native part, if any */
    return NULL;
}

/* In a forked child the parent's engine thread is gone and may have died
 * holding a channel's mutex: never lock one. Nor may the child tell the
 * inherited loop to stop watching the fd: the loop's epoll instance is
 * shared with the parent, and removing the fd there would silence the
 * parent's channel. Closing the child's copy of the fd leaves the parent's
 * registration alone. The native parts are leaked. */
void ord_channels_forget_after_fork(PyObject *module)
{
    ord_state *st = ord_get_state(module);
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(st->channels, &pos, &key, &value)) {
        ChannelObject *ch = (ChannelObject *)value;
        if (!ch->chan)
            continue;
        close(ch->chan->fd);
        ch->chan = NULL;
        PyDict_Clear(ch->futures);
    }
    PyDict_Clear(st->channels);
}

static int channel_traverse(ChannelObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->loop);
    Py_VISIT(self->futures);
    Py_VISIT(self->module);
    return 0;
}

static int channel_clear(ChannelObject *self)
{
    /* The cycle collector may clear a channel before its dealloc: its map
     * holds the submitter's reference to each call it still tracks, which
     * must be released (and the calls cancelled), not dropped with the map. */
    if (self->chan)
        release_native(self);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->futures);
    Py_CLEAR(self->module);
    return 0;
}

static void channel_dealloc(ChannelObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->chan)
        release_native(self);
    channel_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef channel_methods[] = {
    {"drain", channel_drain, METH_NOARGS, "Resolve the futures of finished calls (loop thread)."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot channel_slots[] = {
    {Py_tp_dealloc, channel_dealloc},
    {Py_tp_traverse, channel_traverse},
    {Py_tp_clear, channel_clear},
    {Py_tp_methods, channel_methods},
    {Py_tp_doc, "A loop's completion channel (internal)."},
    {0, NULL},
};

PyType_Spec ord_channel_spec = {
    .name = "openrouter_direct._native.Channel",
    .basicsize = sizeof(ChannelObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = channel_slots,
};
