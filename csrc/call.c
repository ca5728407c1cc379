/*
 * call.c - a call's life on the engine thread, from its first attempt to
 * its delivery: start an attempt on an easy handle, take it off the wire,
 * read what it ended with (response.c), ask policy.c what next (finish,
 * retry after a backoff, or back to the queue), finish (count it, post it
 * to its channel), and the ways out of the engine's structures: cancel,
 * shutdown, the cost budget.
 *
 * The rule: engine thread only, and a call is finished once (state
 * ORD_ST_DONE): finishing it drops its hedges first (hedge_run.c), since a
 * hedge borrows what the call owns, then hands the engine's reference to the
 * channel (or drops it, when cancelled).
 */
#include "engine_int.h"

#include <stdio.h>
#include <stdlib.h>

/* The engine's reference goes to the channel (or is dropped if cancelled).
 * http_status: the last attempt's, to count (0: none). */
void eng_finish(engine *e, ord_req *r, ord_reason reason, const ord_usage *u, long http_status)
{
    while (r->partner)
        eng_hedge_drop(e, r->partner); /* first: a hedge borrows what r owns */
    /* The budget grows as calls end: at the end of a step, when no call
     * starts any more, its last calls still pay for the stragglers' hedges. */
    if (r->hest)
        ord_hedge_credit(e->hedges);
    ord_hest_put(r->hest);
    r->hest = NULL;
    r->state = ORD_ST_DONE;
    if (r->gov)
        r->gov->calls_live--;
    r->reason = reason;
    if (!(r->raw && reason == ORD_OK)) /* a raw call's reply goes on with it (freed with r) */
        eng_release_buf(e, r);
    double ms = (double)(ord_now_ms() - r->t_submit_ms);
    pthread_mutex_lock(&g_stats_mu);
    eng_count_status(http_status);
    /* Gauges first: whoever reads stats() after this call returns must not
     * still see it in flight. */
    eng_set_gauges_locked(e);
    if (reason == ORD_CANCELLED) {
        g_stats.cancelled++;
    } else {
        if (reason == ORD_OK)
            g_stats.succeeded++;
        else
            g_stats.failed++;
        g_stats.by_reason[reason]++;
        eng_hist_add(ms);
    }
    if (u && u->has_usage) {
        g_stats.prompt_tokens += (uint64_t)(u->prompt_tokens > 0 ? u->prompt_tokens : 0);
        g_stats.completion_tokens += (uint64_t)(u->completion_tokens > 0 ? u->completion_tokens : 0);
        g_stats.cost += u->cost;
        e->cost += u->cost;
        if (r->gov)
            r->gov->cost += u->cost;
    }
    pthread_mutex_unlock(&g_stats_mu);
    if (reason == ORD_CANCELLED || atomic_load(&r->cancelled))
        ord_req_decref(r);
    else
        ord_chan_post(r->chan, r);
}

void eng_start(engine *e, ord_req *r)
{
    CURL *h = eng_easy_get(e);
    eng_buf_reuse(e, r);
    r->buf_len = 0;
    r->too_large = 0;
    r->retry_after_ms = -1;
    r->should_retry = -1;
    r->inflight_budget = 0;
    r->errbuf[0] = '\0';
    r->attempts++;
    r->t_attempt_ms = ord_now_ms();
    r->hedged = 0;
    if (!h && r->is_hedge) {
        eng_hedge_lost_start(e, r);
        return;
    }
    if (!h) {
        ord_req_fail(r, ORD_CONNECTION, 0, "could not create a libcurl handle (out of memory)");
        eng_finish(e, r, ORD_CONNECTION, NULL, 0);
        return;
    }
    eng_setup_easy(e, h, r);
    if (curl_multi_add_handle(e->multi, h) != CURLM_OK) {
        eng_easy_put(e, h);
        eng_url_release(r);
        if (r->is_hedge) {
            eng_hedge_lost_start(e, r);
            return;
        }
        ord_req_fail(r, ORD_CONNECTION, 0, "libcurl refused the transfer");
        eng_finish(e, r, ORD_CONNECTION, NULL, 0);
        return;
    }
    r->easy = h;
    r->state = ORD_ST_ACTIVE;
    r->gov->n_active++;
    r->prev = NULL;
    r->next = e->act_head;
    if (e->act_head)
        e->act_head->prev = r;
    e->act_head = r;
    e->n_active++;
    if (r->is_hedge) {
        pthread_mutex_lock(&g_stats_mu);
        g_stats.hedges++;
        pthread_mutex_unlock(&g_stats_mu);
    }
}

void eng_detach(engine *e, ord_req *r)
{
    curl_multi_remove_handle(e->multi, r->easy);
    eng_easy_put(e, r->easy);
    r->easy = NULL;
    eng_url_release(r);
    if (r->prev)
        r->prev->next = r->next;
    else
        e->act_head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
    e->n_active--;
    r->gov->n_active--;
}

/* What r's attempt ended with: fills r->content (or the kept reply) or
 * r->message and r->status. */
ord_reason eng_attempt_outcome(ord_req *r, CURLcode rc, long status, ord_usage *usage)
{
    free(r->message);
    r->message = NULL;
    if (rc == CURLE_OK)
        return ord_parse_reply(r, status, usage);
    ord_reason reason = r->too_large ? ORD_TOO_LARGE : ord_curl_reason(rc);
    char msg[CURL_ERROR_SIZE + 96];
    if (reason == ORD_TOO_LARGE)
        snprintf(msg, sizeof msg, "reply larger than %lld bytes (OPENROUTER_MAX_RESPONSE_BYTES)",
                 (long long)r->max_response);
    else
        snprintf(msg, sizeof msg, "%s", r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc));
    r->message = ord_redact(msg, r->secret);
    r->status = status;
    return reason;
}

/* What becomes of call r once its attempt ended with reason; timed is the
 * attempt that answered (r itself, or the hedge that won). */
void eng_conclude(engine *e, ord_req *r, ord_reason reason, const ord_usage *usage, long status, int64_t now,
                     const ord_req *timed)
{
    if (reason == ORD_OK) {
        ord_gov_succeeded(r->gov, (ord_req *)timed, now, ord_engine_get_limit());
        ord_hest_record(r->hest, now - timed->t_attempt_ms);
        eng_finish(e, r, ORD_OK, usage, status);
        return;
    }
    if (ord_rate_limit_answer(r, reason))
        ord_hest_rate_limited(r->hest, now); /* also when the governor is off */
    int64_t due = now;
    switch (ord_policy_after(r->gov, r, &reason, status, now, &e->rng, &due)) {
    case ORD_NEXT_REQUEUE:
        /* Behind the calls already waiting: at the front, a call that keeps
         * being turned away would take the one slot a cut left, every time. */
        eng_pend_push_back(e, r);
        pthread_mutex_lock(&g_stats_mu);
        eng_count_status(status);
        g_stats.rate_limited++;
        pthread_mutex_unlock(&g_stats_mu);
        return;
    case ORD_NEXT_RETRY:
        r->due_ms = due;
        if (eng_heap_push(e, r) == 0) {
            pthread_mutex_lock(&g_stats_mu);
            eng_count_status(status);
            g_stats.retries++;
            pthread_mutex_unlock(&g_stats_mu);
            return;
        }
        break;
    case ORD_NEXT_FINISH:
        break;
    }
    if (reason == ORD_RATE_LIMITED) {
        pthread_mutex_lock(&g_stats_mu);
        g_stats.rate_limited++;
        pthread_mutex_unlock(&g_stats_mu);
    }
    eng_finish(e, r, reason, usage, status);
}

static void on_done(engine *e, ord_req *r, CURLcode rc)
{
    long status = 0;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    int64_t now = ord_now_ms();
    int slot = r->attempts - 1 < ORD_ATTEMPT_LOG ? r->attempts - 1 : ORD_ATTEMPT_LOG - 1;
    r->log[slot] = (ord_attempt){status, (int)rc, (uint32_t)(now - r->t_attempt_ms)};
    eng_detach(e, r);

    if (r->is_hedge) {
        eng_hedge_done(e, r, rc, status, now);
        return;
    }
    if (atomic_load(&r->cancelled)) {
        eng_finish(e, r, ORD_CANCELLED, NULL, status);
        return;
    }
    ord_usage usage = {0};
    ord_reason reason = eng_attempt_outcome(r, rc, status, &usage);
    if (r->partner && reason != ORD_OK && eng_stand_aside(e, r, reason))
        return;
    eng_conclude(e, r, reason, &usage, status, now, r);
}

/* Take r out of whichever engine structure holds it. Returns 0 when it had
 * finished already (its result is simply not delivered). */
static int take_out(engine *e, ord_req *r)
{
    switch (r->state) {
    case ORD_ST_PENDING:
        eng_pend_unlink(e, r);
        return 1;
    case ORD_ST_ACTIVE:
        eng_detach(e, r);
        return 1;
    case ORD_ST_BACKOFF:
        eng_heap_remove(e, r);
        return 1;
    case ORD_ST_HEDGED: /* in no structure: its hedge goes when it finishes */
        return 1;
    default:
        return 0;
    }
}

void eng_cancel_one(engine *e, ord_req *r)
{
    if (take_out(e, r))
        eng_finish(e, r, ORD_CANCELLED, NULL, 0);
}

static void fail_shutdown(engine *e, ord_req *r)
{
    if (r->is_hedge)
        r = r->partner; /* the call fails; finishing it takes its hedges along */
    take_out(e, r);
    ord_req_fail(r, ORD_SHUTDOWN, 0, "the interpreter is exiting");
    eng_finish(e, r, ORD_SHUTDOWN, NULL, 0);
}

void eng_fail_everything(engine *e, ord_req *inbox)
{
    for (ord_req *r = inbox, *n; r; r = n) {
        n = r->next;
        fail_shutdown(e, r); /* in no structure yet: take_out leaves it be */
    }
    for (ord_gov *g = e->govs; g; g = g->next)
        while (g->pend_head)
            fail_shutdown(e, g->pend_head);
    while (e->heap_len)
        fail_shutdown(e, e->heap[0]);
    while (e->act_head)
        fail_shutdown(e, e->act_head);
}

int eng_reap(engine *e)
{
    CURLMsg *m;
    int left, finished = 0;
    while ((m = curl_multi_info_read(e->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        ord_req *r = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        on_done(e, r, m->data.result);
        finished++;
    }
    return finished;
}

/* Once OPENROUTER_MAX_COST is spent, nothing more goes on the wire. */
int eng_budget_spent(const engine *e)
{
    double mc = ord_policy_max_cost();
    return mc > 0 && e->cost >= mc;
}

void eng_fail_budget(engine *e, ord_req *r)
{
    char msg[160];
    snprintf(msg, sizeof msg, "OPENROUTER_MAX_COST is spent (%.6g of %.6g credits): the call was not sent",
             e->cost, ord_policy_max_cost());
    ord_req_fail(r, ORD_BUDGET, 0, msg);
    eng_finish(e, r, ORD_BUDGET, NULL, 0);
}
