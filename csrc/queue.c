/*
 * queue.c - where a call waits on the engine thread: its endpoint's pending
 * list (FIFO, intrusive through prev/next), the registry of endpoints and
 * their governors (policy.c), and the backoff heap of calls waiting to retry
 * (a min-heap on due_ms).
 *
 * The rule: engine thread only, and a call is in at most one of these at a
 * time, as its state says (ORD_ST_PENDING: a pending list, ORD_ST_BACKOFF:
 * the heap). The governor list is also read by stats() under g_stats_mu, so
 * it changes only with that lock held.
 */
#include "engine_int.h"

#include <stdlib.h>
#include <string.h>

/* ---- pending queues, one per endpoint (FIFO, intrusive) ---- */
void eng_pend_push_back(engine *e, ord_req *r)
{
    ord_gov *g = r->gov;
    r->prev = g->pend_tail;
    r->next = NULL;
    if (g->pend_tail)
        g->pend_tail->next = r;
    else
        g->pend_head = r;
    g->pend_tail = r;
    r->state = ORD_ST_PENDING;
    g->n_pending++;
    e->n_pending++;
}

/* A retry that has waited its turn goes ahead of new calls. */
void eng_pend_push_front(engine *e, ord_req *r)
{
    ord_gov *g = r->gov;
    r->prev = NULL;
    r->next = g->pend_head;
    if (g->pend_head)
        g->pend_head->prev = r;
    else
        g->pend_tail = r;
    g->pend_head = r;
    r->state = ORD_ST_PENDING;
    g->n_pending++;
    e->n_pending++;
}

void eng_pend_unlink(engine *e, ord_req *r)
{
    ord_gov *g = r->gov;
    if (r->prev)
        r->prev->next = r->next;
    else
        g->pend_head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        g->pend_tail = r->prev;
    r->prev = r->next = NULL;
    g->n_pending--;
    e->n_pending--;
}

/* The governor of r's endpoint, made on first use; NULL when out of memory.
 * Only a hash of the key is kept. */
#define GOVS_KEPT 32 /* past this many endpoints, idle ones are forgotten */

/* Endpoints that no call holds any more go, when there are many (a process
 * that cycles keys, or a test suite with a key per test); g_stats_mu held. */
static void govs_forget_idle(engine *e)
{
    for (ord_gov **p = &e->govs; *p;) {
        ord_gov *g = *p;
        if (g->calls_live == 0) {
            *p = g->next;
            if (e->last_gov == g)
                e->last_gov = NULL;
            ord_gov_free(g);
        } else {
            p = &g->next;
        }
    }
}

ord_gov *eng_gov_for(engine *e, const ord_req *r)
{
    uint64_t kh = ord_key_hash(r->secret);
    ord_gov *g = e->last_gov;
    if (g && g->key_hash == kh && strcmp(g->url, r->url) == 0)
        return g;
    int key_no = 0, n = 0;
    for (g = e->govs; g; g = g->next, n++) {
        if (strcmp(g->url, r->url) != 0)
            continue;
        if (g->key_hash == kh)
            return e->last_gov = g;
        if (g->key_no > key_no)
            key_no = g->key_no;
    }
    if (n >= GOVS_KEPT) {
        pthread_mutex_lock(&g_stats_mu);
        govs_forget_idle(e);
        pthread_mutex_unlock(&g_stats_mu);
    }
    ord_gov **tail = &e->govs;
    while (*tail)
        tail = &(*tail)->next;
    g = ord_gov_new(r->url, kh, key_no + 1, ord_engine_get_limit());
    if (!g)
        return NULL;
    pthread_mutex_lock(&g_stats_mu);
    *tail = g;
    pthread_mutex_unlock(&g_stats_mu);
    return e->last_gov = g;
}

/* ---- backoff heap ---- */
static void heap_swap(engine *e, size_t a, size_t b)
{
    ord_req *t = e->heap[a];
    e->heap[a] = e->heap[b];
    e->heap[b] = t;
    e->heap[a]->heap_idx = a;
    e->heap[b]->heap_idx = b;
}

static void heap_up(engine *e, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (e->heap[p]->due_ms <= e->heap[i]->due_ms)
            break;
        heap_swap(e, p, i);
        i = p;
    }
}

static void heap_down(engine *e, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < e->heap_len && e->heap[l]->due_ms < e->heap[m]->due_ms)
            m = l;
        if (r < e->heap_len && e->heap[r]->due_ms < e->heap[m]->due_ms)
            m = r;
        if (m == i)
            return;
        heap_swap(e, i, m);
        i = m;
    }
}

int eng_heap_push(engine *e, ord_req *r)
{
    if (e->heap_len == e->heap_cap) {
        size_t cap = e->heap_cap ? e->heap_cap * 2 : 64;
        ord_req **h = realloc(e->heap, cap * sizeof *h);
        if (!h)
            return -1;
        e->heap = h;
        e->heap_cap = cap;
    }
    r->heap_idx = e->heap_len;
    e->heap[e->heap_len++] = r;
    heap_up(e, r->heap_idx);
    r->state = ORD_ST_BACKOFF;
    return 0;
}

void eng_heap_remove(engine *e, ord_req *r)
{
    size_t i = r->heap_idx;
    e->heap_len--;
    if (i != e->heap_len) {
        e->heap[i] = e->heap[e->heap_len];
        e->heap[i]->heap_idx = i;
        heap_down(e, i);
        heap_up(e, i);
    }
}
