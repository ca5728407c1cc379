/*
 * deliver.c - completion queues: how a finished request gets from the
 * engine thread back to whoever waits for it. Any thread, no Python.
 *
 * A queue (ord_chan) is a mutex-protected list of finished requests plus an
 * eventfd. The engine appends and writes the eventfd only when the queue
 * turns non-empty, so a waiter that is slow to win the GIL (a busy trainer
 * thread) is woken once and then takes the whole batch: one GIL acquisition
 * per batch, not per call.
 *
 * Two kinds of waiter: an asyncio loop, through its Channel object
 * (channel.c), and a synchronous caller (module.c), which polls a bare
 * ord_chan itself.
 *
 * The rule: the fd is written only under the channel's mutex and only while
 * closed == 0; ord_chan_close sets closed under the same mutex before it
 * closes the fd, so the engine can never write into a reused descriptor.
 */
#include "ord.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

ord_chan *ord_chan_new(void)
{
    ord_chan *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->fd < 0) {
        int e = errno;
        free(c);
        errno = e;
        return NULL;
    }
    pthread_mutex_init(&c->mu, NULL);
    atomic_init(&c->refs, 1);
    return c;
}

void ord_chan_incref(ord_chan *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void ord_chan_decref(ord_chan *c)
{
    if (!c || atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
        return;
    /* Last reference: nobody can post any more. */
    for (ord_req *r = c->head, *n; r; r = n) {
        n = r->done_next;
        ord_req_decref(r);
    }
    if (!c->closed && c->fd >= 0)
        close(c->fd);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

void ord_chan_post(ord_chan *c, ord_req *r)
{
    int drop = 0;
    r->done_next = NULL;
    pthread_mutex_lock(&c->mu);
    if (c->closed) {
        drop = 1;
    } else {
        int was_empty = c->head == NULL;
        if (c->tail)
            c->tail->done_next = r;
        else
            c->head = r;
        c->tail = r;
        if (was_empty) {
            uint64_t one = 1;
            /* EAGAIN only when the counter is saturated: already readable. */
            ssize_t n = write(c->fd, &one, sizeof one);
            (void)n;
        }
    }
    pthread_mutex_unlock(&c->mu);
    if (drop)
        ord_req_decref(r);
}

ord_req *ord_chan_take(ord_chan *c)
{
    uint64_t v;
    /* Reset the counter before taking the queue: a post that lands after
     * the take sees an empty queue and writes again. */
    ssize_t n = read(c->fd, &v, sizeof v);
    (void)n;
    pthread_mutex_lock(&c->mu);
    ord_req *head = c->head;
    c->head = c->tail = NULL;
    pthread_mutex_unlock(&c->mu);
    return head;
}

void ord_chan_close(ord_chan *c)
{
    pthread_mutex_lock(&c->mu);
    ord_req *head = NULL;
    if (!c->closed) {
        c->closed = 1;
        close(c->fd);
        head = c->head;
        c->head = c->tail = NULL;
    }
    pthread_mutex_unlock(&c->mu);
    for (ord_req *r = head, *n; r; r = n) {
        n = r->done_next;
        ord_req_decref(r);
    }
}
