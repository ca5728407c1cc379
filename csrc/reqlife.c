/*
 * reqlife.c - a request's lifetime, and the memory it owns: the reference
 * count, the failure recorded before a request reaches the engine, and the
 * freeing of everything it points at. Any thread: the submitter, the engine
 * and a pending cancel each hold a reference and may let go from different
 * threads; the last one frees.
 *
 * The rule: text that may hold the key (the key itself, header lines, the
 * shared header list's copy of the key) is wiped before it is freed, so that
 * no copy lies in freed heap memory; everything else is plainly freed. This
 * file only frees and counts: it builds nothing (request.c, headers.c do).
 */
#include "ord.h"

#include <stdlib.h>

/* Key-bearing text is wiped before it is freed, so that no copy of the key
 * lies in freed heap memory (a core dump, a later buffer's slack). Through
 * volatile stores: a memset just before free() may be optimised away. */
void ord_wipe_free(char *s)
{
    if (!s)
        return;
    volatile char *p = s;
    while (*p)
        *p++ = 0;
    free(s);
}

/* Every line, not only Authorization: extra_headers may carry secrets too. */
void ord_free_header_list(struct curl_slist *list)
{
    for (struct curl_slist *l = list; l; l = l->next) {
        volatile char *p = l->data;
        while (p && *p)
            *p++ = 0;
    }
    curl_slist_free_all(list);
}

/* The shared header list (headers.c): the last reference frees it. */
void ord_hdrs_decref(struct ord_hdrs *h)
{
    if (!h || atomic_fetch_sub_explicit(&h->refs, 1, memory_order_acq_rel) != 1)
        return;
    ord_free_header_list(h->list);
    ord_wipe_free(h->key);
    free(h->referer);
    free(h->title);
    free(h);
}

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
    if (r->shared_headers)
        ord_hdrs_decref(r->shared_headers);
    else
        ord_free_header_list(r->headers);
    free(r->cainfo);
    free(r->proxy);
    free(r->noproxy);
    ord_wipe_free(r->secret); /* don't leave the key lying in freed heap memory */
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
