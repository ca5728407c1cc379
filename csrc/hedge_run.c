/*
 * hedge_run.c - hedges on the wire: a second attempt of a slow call, given
 * when hedge.c allows one (eng_hedge_scan), then who wins, and the other
 * attempt taken off the wire. hedge.c holds the policy (estimates, trigger,
 * budget); this file only runs it. docs/HEDGING.md has the rules in prose.
 *
 * The rule: engine thread only, and a hedge never outlives its call's time
 * in the engine (eng_finish drops a call's hedges first), since it borrows
 * the call's request.
 */
#include "engine_int.h"

#include <stdlib.h>

/* A hedge is an ord_req of its own (its transfer, buffer and outcome) that
 * borrows the request of its call. hedge->partner is its call; a call's
 * hedges are a list from call->partner (newest first) through ->sibling.
 * An attempt of a call gets at most HEDGES_MAX of them: when its hedge runs
 * past the delay too (a provider that stalls 1% of attempts stalls a hedge
 * now and then), it gets another; only one waits for a slot at a time, and
 * none follows a hedge that failed. The rules:
 * - The first success wins. The other attempt is taken off the wire at
 *   once, here on the engine thread (never in a libcurl callback): removed
 *   from the multi handle mid-transfer, its connection is closed, so the
 *   server sees the client go.
 * - A hedge is not a retry: it spends no num_retries. Its failure while the
 *   call's own attempt runs is dropped.
 * - The call's own attempt failing while its hedge runs leaves the hedge
 *   to stand in (state HEDGED): no retry starts on top, and the hedge's
 *   outcome becomes that attempt's (if it fails too, the policy decides as
 *   for any failed attempt: one retry spent for the pair).
 * - A rate-limit answer to either attempt ends the hedge, and the call
 *   waits like any other; the governor counts the answer either way.
 * - Finishing a call (reply, failure, cancel, shutdown) drops its hedge
 *   first (eng_finish()), so a hedge never outlives what it borrows.
 */
#define HEDGES_MAX 2 /* per attempt of a call */

static ord_req *hedge_new(ord_req *p)
{
    ord_req *h = ord_req_new();
    if (!h)
        return NULL;
    h->url = p->url;
    h->body = p->body;
    h->body_len = p->body_len;
    h->headers = p->headers;
    h->shared_headers = p->shared_headers;
    h->cainfo = p->cainfo;
    h->proxy = p->proxy;
    h->noproxy = p->noproxy;
    h->secret = p->secret;
    h->model = p->model;
    h->timeout_ms = p->timeout_ms;
    h->connect_timeout_ms = p->connect_timeout_ms;
    h->base_delay_ms = p->base_delay_ms;
    h->max_delay_ms = p->max_delay_ms;
    h->max_response = p->max_response;
    h->strict = p->strict;
    h->raw = p->raw;
    h->t_submit_ms = p->t_submit_ms;
    h->gov = p->gov;
    h->is_hedge = 1;
    h->partner = p;
    h->sibling = p->partner;
    p->partner = h;
    return h;
}

/* Takes h off its call's list. */
static void hedge_unlink(ord_req *h)
{
    ord_req *p = h->partner;
    if (!p)
        return;
    for (ord_req **at = &p->partner; *at; at = &(*at)->sibling)
        if (*at == h) {
            *at = h->sibling;
            break;
        }
    h->sibling = NULL;
    h->partner = NULL;
}

/* Frees a hedge that is in no engine structure any more. */
static void hedge_free(engine *e, ord_req *h)
{
    hedge_unlink(h);
    eng_release_buf(e, h);
    /* borrowed from the call: not h's to free */
    h->url = h->body = h->cainfo = h->proxy = h->noproxy = h->secret = h->model = NULL;
    h->headers = NULL;
    h->shared_headers = NULL;
    h->partner = NULL;
    ord_req_decref(h);
}

/* The hedge could not get a transfer: as if it had never been sent. */
void eng_hedge_lost_start(engine *e, ord_req *h)
{
    ord_hedge_refund(e->hedges);
    hedge_free(e, h);
}

/* Takes attempt a off the wire because the call ended without it. A reply
 * that had arrived whole by then was generated, and likely billed: its
 * usage is counted as the cost of hedging. */
static void abort_attempt(engine *e, ord_req *a)
{
    long status = 0;
    curl_off_t length = -1;
    ord_usage u = {0};
    curl_easy_getinfo(a->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(a->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length);
    if (status == 200 && length > 0 && (curl_off_t)a->buf_len == length) {
        ord_parse_reply(a, status, &u);
        free(a->content);
        a->content = NULL;
        a->content_len = 0;
    }
    eng_detach(e, a);
    pthread_mutex_lock(&g_stats_mu);
    g_stats.hedges_aborted++;
    if (u.has_usage) {
        g_stats.hedge_waste_prompt += (uint64_t)(u.prompt_tokens > 0 ? u.prompt_tokens : 0);
        g_stats.hedge_waste_completion += (uint64_t)(u.completion_tokens > 0 ? u.completion_tokens : 0);
        g_stats.hedge_waste_cost += u.cost;
        g_stats.cost += u.cost;
        e->cost += u.cost;
        a->gov->cost += u.cost;
    }
    pthread_mutex_unlock(&g_stats_mu);
}

void eng_hedge_drop(engine *e, ord_req *h)
{
    if (h->state == ORD_ST_PENDING) {
        eng_pend_unlink(e, h);
        ord_hedge_refund(e->hedges); /* never sent */
    } else if (h->state == ORD_ST_ACTIVE) {
        abort_attempt(e, h);
    }
    hedge_free(e, h);
}

/* Call p's own attempt failed (reason) while it has hedges. 1: those on the
 * wire stand in and p waits for them; 0: they are gone, p goes on alone. */
int eng_stand_aside(engine *e, ord_req *p, ord_reason reason)
{
    int rate_limited = ord_rate_limit_answer(p, reason);
    for (ord_req *h = p->partner, *next; h; h = next) {
        next = h->sibling;
        if (h->state != ORD_ST_ACTIVE || rate_limited)
            eng_hedge_drop(e, h);
    }
    if (!p->partner)
        return 0;
    p->state = ORD_ST_HEDGED;
    return 1;
}

/* Hedge h's attempt ended (h is off the wire already). */
void eng_hedge_done(engine *e, ord_req *h, CURLcode rc, long status, int64_t now)
{
    ord_req *p = h->partner;
    ord_usage u = {0};
    ord_reason reason = eng_attempt_outcome(h, rc, status, &u);
    if (atomic_load(&p->cancelled)) {
        /* cancel_one will finish a call still on the wire; one waiting for
         * this hedge has nothing left to wait for */
        hedge_free(e, h);
        if (p->state == ORD_ST_HEDGED)
            eng_finish(e, p, ORD_CANCELLED, NULL, status);
        return;
    }
    if (reason == ORD_OK) {
        int was_active = p->state == ORD_ST_ACTIVE;
        if (was_active) {
            ord_hest_censored(p->hest);
            abort_attempt(e, p);
        }
        pthread_mutex_lock(&g_stats_mu);
        g_stats.hedges_won++;
        if (was_active) /* how much longer the first attempt had run than the hedge needed */
            g_stats.hedge_saved_ms += (double)((now - p->t_attempt_ms) - (now - h->t_attempt_ms));
        pthread_mutex_unlock(&g_stats_mu);
        free(p->content);
        p->content = h->content;
        p->content_len = h->content_len;
        h->content = NULL;
        free(p->message);
        p->message = NULL;
        p->status = h->status;
        if (p->raw) { /* the reply itself is the result */
            eng_release_buf(e, p);
            p->buf = h->buf;
            p->buf_len = h->buf_len;
            p->buf_cap = h->buf_cap;
            h->buf = NULL;
            h->buf_len = h->buf_cap = 0;
        }
        hedge_unlink(h); /* finish drops the other hedges, not h: it still times the success */
        eng_conclude(e, p, ORD_OK, &u, status, now, h);
        hedge_free(e, h);
        return;
    }
    int rate_limited = ord_rate_limit_answer(h, reason);
    p->hedged = HEDGES_MAX; /* what failed once would likely fail again: no more for this attempt */
    pthread_mutex_lock(&g_stats_mu);
    g_stats.hedges_failed++;
    pthread_mutex_unlock(&g_stats_mu);
    int others = 0; /* p's other hedges on the wire */
    for (const ord_req *o = p->partner; o; o = o->sibling)
        others += o != h && o->state == ORD_ST_ACTIVE;
    if (p->state == ORD_ST_HEDGED && !others) {
        /* the last one standing in failed: that is how p's attempt ended */
        p->status = h->status;
        free(p->message);
        p->message = h->message;
        h->message = NULL;
        p->retry_after_ms = h->retry_after_ms;
        p->should_retry = h->should_retry;
        p->inflight_budget = h->inflight_budget;
        p->too_large = h->too_large;
        hedge_free(e, h);
        while (p->partner) /* one still waiting for a slot: not sent, and not needed now */
            eng_hedge_drop(e, p->partner);
        p->state = ORD_ST_ACTIVE; /* as it was when its attempt ended */
        eng_conclude(e, p, reason, &u, status, now, p);
        return;
    }
    if (rate_limited) {
        /* The governor hears it as from any attempt; what it decides for
         * the hedge itself is moot, since the hedge goes. Counted as a
         * call that waited only through the call's own attempts. */
        int64_t due = now;
        h->rl_waits = 1;
        ord_hest_rate_limited(p->hest, now);
        ord_policy_after(p->gov, h, &reason, status, now, &e->rng, &due);
    }
    pthread_mutex_lock(&g_stats_mu);
    eng_count_status(status);
    if (rate_limited)
        g_stats.rate_limited++;
    pthread_mutex_unlock(&g_stats_mu);
    hedge_free(e, h);
}

static void hedge_launch(engine *e, ord_req *p)
{
    ord_req *h = hedge_new(p);
    if (!h) {
        ord_hedge_refund(e->hedges);
        return;
    }
    /* Ahead of the calls waiting for a slot, as a retry is: it is late already. */
    eng_pend_push_front(e, h);
    p->hedged++;
}

/* Gives each attempt that has run past its endpoint and model's delay a
 * hedge, when hedge.c allows one, and sets when to look again: at the
 * earliest time another attempt comes due, and at least every floor (an
 * attempt that starts later comes due no sooner than a floor after now). */
#define HEDGE_SCAN_MS 100
void eng_hedge_scan(engine *e, int64_t now)
{
    if (now < e->hedge_scan_ms)
        return;
    int64_t next = now + HEDGE_SCAN_MS;
    if (ord_hedge_quantile() > 0 && !eng_budget_spent(e)) {
        /* Oldest first: when tokens are short, the attempt that has waited
         * longest gets one (the list runs newest first). */
        ord_req *oldest = e->act_head;
        while (oldest && oldest->next)
            oldest = oldest->next;
        for (ord_req *r = oldest; r; r = r->prev) {
            /* the newest attempt of a call decides: its own, or its newest hedge's */
            ord_req *p = r->is_hedge ? r->partner : r;
            if (r != (p->partner ? p->partner : p))
                continue;
            if (p->no_hedge || !p->hest || p->hedged >= HEDGES_MAX || atomic_load(&p->cancelled))
                continue;
            int64_t delay = ord_hest_delay_ms(p->hest);
            if (delay < 0)
                continue;
            int64_t due = r->t_attempt_ms + delay;
            if (due > now) {
                if (due < next)
                    next = due;
                continue;
            }
            if (ord_hedge_take(e->hedges, p->gov, p->hest, now))
                hedge_launch(e, p);
        }
    }
    e->hedge_scan_ms = next;
}
