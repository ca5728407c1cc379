/*
 * policy.c - what to do after an attempt, and how many attempts may be on
 * the wire: the failure table, the retry decision, the backoff, and the
 * governor. Runs on the engine thread without the GIL (the table is also
 * read with the GIL held, to name reasons); the engine only asks.
 *
 * The governor makes each process behave like one polite client of each
 * endpoint (request URL + key), so that the many processes of a training run
 * (one per vLLM Ray actor) share a rate limit with no coordinator:
 *
 * - Adaptive concurrency. The calls on the wire per endpoint move between 1
 *   and the configured cap. A rate-limit signal (429; 503 with Retry-After;
 *   the 402 of OpenRouter's in-flight budget) cuts the limit to BETA times
 *   what the endpoint sustained (the calls it admitted that are still in
 *   flight, or its rate of successes times a round trip if lower), at most
 *   once per round trip. Successes grow it back the way CUBIC (RFC 8312) grows a congestion
 *   window: concave up to the level of the last cut, flat near it, then
 *   convex, so the endpoint is probed rarely where it last said no, and a
 *   raised limit is found within a few seconds. Independent processes that
 *   see the same 429s cut by the same factor and so converge to fair shares,
 *   as AIMD does (Chiu and Jain, 1989). Before the first signal the limit
 *   starts low and doubles per round trip (slow start), so that 64 processes
 *   starting at once do not burst 64 x cap into one limit.
 *   Latency is not a signal here: an LLM's latency is its output length.
 * - One cooldown per endpoint. Retry-After (or retry-after-ms) stops new
 *   attempts to the endpoint until it passes, plus a little jitter so that
 *   processes do not resume in lockstep; then starts are spread over one
 *   round trip instead of leaving as one burst.
 * - A call turned away by a rate limit goes back to its queue, behind the
 *   calls already waiting, and does not spend num_retries; it spends
 *   OPENROUTER_RATE_LIMIT_WAIT.
 *
 * The one rule: governor state is the engine thread's alone; other threads
 * see only the copies engine.c publishes under its stats lock, and the
 * settings below, which are atomics.
 */
#include "ord.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the failure table */
static const ord_reason_info reason_table[ORD_REASON_COUNT] = {
    [ORD_OK] = {"ok", 0, NULL},
    [ORD_HTTP_STATUS] = {"http_status", -1, NULL},
    [ORD_PROVIDER_ERROR] = {"provider_error", -1, NULL},
    [ORD_CONNECTION] = {"connection", 1, "APIConnectionError"},
    [ORD_TIMEOUT] = {"timeout", 1, "APITimeoutError"},
    [ORD_INVALID_RESPONSE] = {"invalid_response", 1, "OpenRouterError"},
    /* A larger reply will be as large next time. */
    [ORD_TOO_LARGE] = {"too_large", 0, "OpenRouterError"},
    /* A certificate that failed verification will fail again. */
    [ORD_TLS] = {"tls", 0, "APIConnectionError"},
    [ORD_CONFIG] = {"config", 0, "AuthenticationError"},
    [ORD_BAD_URL] = {"bad_url", 0, "OpenRouterError"},
    [ORD_BAD_HEADER] = {"bad_header", 0, "OpenRouterError"},
    [ORD_SHUTDOWN] = {"shutdown", 0, "OpenRouterError"},
    [ORD_CANCELLED] = {"cancelled", 0, NULL},
    [ORD_RATE_LIMITED] = {"rate_limited", 0, "RateLimitError"},
    [ORD_BUDGET] = {"budget", 0, "BudgetExceededError"},
};

const ord_reason_info *ord_reason_get(ord_reason r)
{
    if ((unsigned)r >= ORD_REASON_COUNT)
        r = ORD_CONNECTION;
    return &reason_table[r];
}

/* openai-python's rule. */
int ord_status_retryable(long code)
{
    return code == 408 || code == 409 || code == 429 || code >= 500;
}

const char *ord_status_exc_name(long code)
{
    if (code == 401)
        return "AuthenticationError";
    if (code == 429)
        return "RateLimitError";
    return "APIStatusError";
}

/* ---- settings */
static atomic_int g_adaptive = 1;
static _Atomic double g_rl_wait_s = ORD_RATE_LIMIT_WAIT_S;
static _Atomic double g_max_cost = 0.0; /* 0: no guard */

void ord_policy_configure(int adaptive, double rate_limit_wait_s, double max_cost)
{
    if (adaptive >= 0)
        atomic_store(&g_adaptive, adaptive);
    if (rate_limit_wait_s >= 0)
        atomic_store(&g_rl_wait_s, rate_limit_wait_s);
    if (max_cost >= 0)
        atomic_store(&g_max_cost, max_cost);
}

int ord_policy_adaptive(void) { return atomic_load(&g_adaptive); }
double ord_policy_max_cost(void) { return atomic_load(&g_max_cost); }
double ord_policy_rate_limit_wait(void) { return atomic_load(&g_rl_wait_s); }

/* ---- the governor's constants.
 * BETA: the cut. RFC 8312's CUBIC uses 0.7 of a window that overshot; this
 * cut is taken from the calls the endpoint actually admitted (those still in
 * flight when it said no), so it can be gentler.
 * K: the seconds to grow back to the level of the last cut. CUBIC derives K
 * from a constant in segments per s^3, which makes growth depend on the
 * window's size; here the cubic is scaled to the level itself, so 1 process
 * at 40 calls and 8 processes at 5 each probe at the same pace, and shares
 * stay fair. With K = 2 s and BETA = 0.9, the limit is within 4% of the
 * last level from 0.5 s to 3.5 s after a cut's cooldown, and has doubled
 * 6.3 s after it: a limit that was raised is found within seconds
 * (bench/ratelimit.py, docs/GOVERNOR.md). */
#define GOV_BETA 0.9
#define GOV_K_S 2.0
#define GOV_AI 0.5          /* calls per round trip, at the least, after a cut */
#define GOV_INITIAL 8       /* slow start begins here (or at the cap) */
#define GOV_MIN_RTT_MS 20.0 /* a round trip is at least this, for the cut guard and pacing */

uint64_t ord_key_hash(const char *key)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)(key ? key : ""); *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h;
}

static void limit_changed(ord_gov *g, const char *why);

ord_gov *ord_gov_new(const char *url, uint64_t key_hash, int key_no, long cap)
{
    ord_gov *g = calloc(1, sizeof *g);
    if (!g || !(g->url = strdup(url))) {
        free(g);
        return NULL;
    }
    g->key_hash = key_hash;
    g->key_no = key_no;
    g->limit = cap < GOV_INITIAL ? (double)cap : GOV_INITIAL;
    g->slow_start = 1;
    g->shown_limit = (long)g->limit;
    return g;
}

void ord_gov_reset(ord_gov *g, long cap)
{
    g->limit = cap < GOV_INITIAL ? (double)cap : GOV_INITIAL;
    g->w_max = 0;
    g->slow_start = 1;
    g->epoch_ms = g->cut_guard_ms = g->cool_until_ms = g->pace_until_ms = g->next_start_ms = 0;
    g->rl_streak = 0;
    limit_changed(g, "reset");
}

void ord_gov_free(ord_gov *g)
{
    if (g)
        free(g->url);
    free(g);
}

/* ---- DEBUG events: a small ring, drained by the Python side with the GIL */
#define EVENTS 256
static pthread_mutex_t g_ev_mu = PTHREAD_MUTEX_INITIALIZER;
static ord_gov_event g_ev[EVENTS];
static int g_ev_head, g_ev_len;

void ord_gov_event_add(const ord_gov *g, long from, long to, const char *why)
{
    pthread_mutex_lock(&g_ev_mu);
    int i = (g_ev_head + g_ev_len) % EVENTS;
    if (g_ev_len == EVENTS)
        g_ev_head = (g_ev_head + 1) % EVENTS; /* the oldest goes */
    else
        g_ev_len++;
    snprintf(g_ev[i].url, sizeof g_ev[i].url, "%s", g->url);
    g_ev[i].from = from;
    g_ev[i].to = to;
    snprintf(g_ev[i].why, sizeof g_ev[i].why, "%s", why);
    pthread_mutex_unlock(&g_ev_mu);
}

int ord_gov_events_take(ord_gov_event *out, int max)
{
    pthread_mutex_lock(&g_ev_mu);
    int n = g_ev_len < max ? g_ev_len : max;
    for (int k = 0; k < n; k++)
        out[k] = g_ev[(g_ev_head + k) % EVENTS];
    g_ev_head = (g_ev_head + n) % EVENTS;
    g_ev_len -= n;
    pthread_mutex_unlock(&g_ev_mu);
    return n;
}

static void limit_changed(ord_gov *g, const char *why)
{
    long now = (long)g->limit;
    if (now != g->shown_limit) {
        ord_gov_event_add(g, g->shown_limit, now, why);
        g->shown_limit = now;
    }
}

/* ---- jitter: xorshift64*, no need for a strong generator */
static double uniform(uint64_t *rng)
{
    *rng ^= *rng >> 12;
    *rng ^= *rng << 25;
    *rng ^= *rng >> 27;
    return (double)((*rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

/* Exponential backoff with jitter down to 75%, openai-python's shape. */
static int64_t backoff_ms(const ord_req *r, int n, uint64_t *rng)
{
    double d = r->base_delay_ms * pow(2.0, n - 1);
    if (d > r->max_delay_ms)
        d = r->max_delay_ms;
    return (int64_t)(d * (1.0 - 0.25 * uniform(rng)));
}

static double rtt_ms(const ord_gov *g)
{
    return g->srtt_ms > GOV_MIN_RTT_MS ? g->srtt_ms : GOV_MIN_RTT_MS;
}

int64_t ord_gov_gate(ord_gov *g, int64_t now, long cap)
{
    if (!ord_policy_adaptive())
        return 0; /* the engine's process-wide cap is the only bound */
    if (now < g->cool_until_ms)
        return g->cool_until_ms;
    long lim = (long)g->limit;
    if (lim > cap)
        lim = cap;
    if (lim < 1)
        lim = 1;
    if (g->n_active >= lim)
        return -1;
    if (now < g->pace_until_ms && now < g->next_start_ms)
        return g->next_start_ms;
    return 0;
}

void ord_gov_started(ord_gov *g, int64_t now)
{
    if (now < g->pace_until_ms) {
        double gap = rtt_ms(g) / (g->limit > 1 ? g->limit : 1);
        int64_t base = g->next_start_ms > now ? g->next_start_ms : now;
        g->next_start_ms = base + (int64_t)ceil(gap);
    }
}

/* Successes in the last second, by 250 ms bins: the rate the endpoint admitted. */
#define OK_BIN_MS 250
static void ok_bins_advance(ord_gov *g, int64_t now)
{
    if (g->ok_bin_t == 0)
        g->ok_bin_t = now;
    while (now - g->ok_bin_t >= OK_BIN_MS) {
        memmove(g->ok_bins + 1, g->ok_bins, 3 * sizeof g->ok_bins[0]);
        g->ok_bins[0] = 0;
        g->ok_bin_t += OK_BIN_MS;
        if (now - g->ok_bin_t > 4 * OK_BIN_MS) { /* idle: start afresh */
            memset(g->ok_bins, 0, sizeof g->ok_bins);
            g->ok_bin_t = now;
        }
    }
}

void ord_gov_succeeded(ord_gov *g, ord_req *r, int64_t now, long cap)
{
    ok_bins_advance(g, now);
    g->ok_bins[0]++;
    double ms = (double)(now - r->t_attempt_ms);
    g->srtt_ms = g->srtt_ms > 0 ? 0.875 * g->srtt_ms + 0.125 * ms : ms;
    g->rl_streak = 0;
    g->succeeded++;
    if (!ord_policy_adaptive())
        return;
    /* Grow only while the limit is what holds calls back: a limit that was
     * never used says nothing about the endpoint. */
    if (g->n_pending == 0 && (double)(g->n_active + 1) < floor(g->limit))
        return;
    double inc;
    if (g->slow_start) {
        inc = 1.0;
    } else {
        double t = (double)(now - g->epoch_ms) / 1000.0 - GOV_K_S;
        if (t < -GOV_K_S)
            t = -GOV_K_S; /* still cooling down */
        double a = (1.0 - GOV_BETA) / (GOV_K_S * GOV_K_S * GOV_K_S);
        double target = g->w_max * (1.0 + a * t * t * t);
        inc = target > g->limit ? (target - g->limit) / g->limit : 0.0;
        /* The cubic alone scales with each process's level, which keeps
         * unequal shares unequal; the same additive step for everyone is
         * what makes shares converge (AIMD; CUBIC's "TCP-friendly" floor). */
        if (inc < GOV_AI / g->limit)
            inc = GOV_AI / g->limit;
        if (inc > 1.0)
            inc = 1.0; /* at most doubling per round trip */
    }
    g->limit += inc;
    if (g->limit > (double)cap)
        g->limit = (double)cap;
    limit_changed(g, g->slow_start ? "slow start" : "growing");
}

/* The signals that mean "fewer calls, please" rather than "this call failed". */
static int rate_limit_signal(const ord_req *r, ord_reason reason)
{
    if (reason != ORD_HTTP_STATUS && reason != ORD_PROVIDER_ERROR)
        return 0;
    return r->status == 429 || (r->status == 503 && r->retry_after_ms >= 0) ||
           (r->status == 402 && r->inflight_budget);
}

static void cut(ord_gov *g, int64_t now)
{
    if (now < g->cut_guard_ms)
        return; /* this round trip was answered already */
    double admitted = (double)(g->n_active + 1);
    double base = g->limit < admitted ? g->limit : admitted;
    /* What was in flight includes what a burst allowance let through; the
     * rate of successes over the last second, times a round trip, is what
     * the endpoint sustains. Trusted only with enough successes to count,
     * and not in slow start, where the last second's rate lags the ramp. */
    ok_bins_advance(g, now);
    uint32_t ok = g->ok_bins[0] + g->ok_bins[1] + g->ok_bins[2] + g->ok_bins[3];
    if (!g->slow_start && ok >= 8 && g->srtt_ms > 0) {
        double sustained = (double)ok * g->srtt_ms / 1000.0;
        if (sustained < base)
            base = sustained > base / 2 ? sustained : base / 2;
    }
    /* Turned away below the last level: others want a share too, so give
     * back more before probing again (CUBIC's fast convergence). */
    g->w_max = g->w_max > 0 && base < g->w_max ? base * (1.0 + GOV_BETA) / 2.0 : base;
    g->limit = base * GOV_BETA;
    if (g->limit < 1.0)
        g->limit = 1.0;
    g->slow_start = 0;
    g->epoch_ms = now;
    g->cut_guard_ms = now + (int64_t)rtt_ms(g);
    limit_changed(g, "rate limited");
}

static void cool(ord_gov *g, const ord_req *r, int64_t now, uint64_t *rng)
{
    int64_t wait;
    if (r->retry_after_ms >= 0) {
        wait = r->retry_after_ms; /* capped at ORD_RETRY_AFTER_CAP_MS where it is read */
        /* Up to a tenth more (and 20 ms), so processes resume apart. */
        wait += (int64_t)(uniform(rng) * (0.1 * (double)wait + 20.0));
    } else {
        wait = backoff_ms(r, g->rl_streak, rng);
    }
    int64_t until = now + wait;
    if (until <= g->cool_until_ms)
        return;
    int64_t from = g->cool_until_ms > now ? g->cool_until_ms : now;
    g->cooldown_ms += until - from;
    g->cool_until_ms = until;
    g->epoch_ms = until; /* growth starts when attempts may go again */
    g->next_start_ms = until;
    g->pace_until_ms = until + (int64_t)rtt_ms(g);
}

ord_next ord_policy_after(ord_gov *g, ord_req *r, ord_reason *reason, long http_status, int64_t now,
                          uint64_t *rng, int64_t *due)
{
    int adaptive = ord_policy_adaptive();
    if (adaptive && rate_limit_signal(r, *reason)) {
        g->rate_limited++;
        g->rl_streak++;
        cut(g, now);
        cool(g, r, now, rng);
        double waited_s = (double)(now - r->t_submit_ms) / 1000.0;
        double budget_s = ord_policy_rate_limit_wait();
        double resume_s = (double)(g->cool_until_ms - r->t_submit_ms) / 1000.0;
        if (resume_s <= budget_s) {
            if (r->rl_waits++ == 0)
                g->waited_calls++;
            return ORD_NEXT_REQUEUE;
        }
        char msg[640];
        snprintf(msg, sizeof msg,
                 "gave up after waiting %.1f s for the rate limit (OPENROUTER_RATE_LIMIT_WAIT=%g s; "
                 "%d rate-limited answer(s); limit now %ld call(s) on the wire); last answer: HTTP %ld: %s",
                 waited_s, budget_s, r->rl_waits + 1, (long)g->limit, r->status,
                 r->message ? r->message : "");
        free(r->message);
        r->message = strdup(msg);
        *reason = ORD_RATE_LIMITED;
        return ORD_NEXT_FINISH;
    }
    int retry = ord_reason_get(*reason)->retryable;
    if (retry < 0)
        retry = (*reason == ORD_PROVIDER_ERROR && r->status == 0) || ord_status_retryable(r->status);
    if (r->should_retry >= 0 && http_status > 0)
        retry = r->should_retry;
    int spent = r->attempts - r->rl_waits; /* rate-limit waits are not retries */
    if (!retry || spent > r->max_retries)
        return ORD_NEXT_FINISH;
    int64_t wait;
    if (r->retry_after_ms >= 0)
        wait = r->retry_after_ms; /* capped where it is read (engine.c, on_header) */
    else
        wait = backoff_ms(r, spent, rng);
    *due = now + wait;
    return ORD_NEXT_RETRY;
}

/* ---- queries for the hedging policy (hedge.c), engine thread */

/* Whether the governor is holding this endpoint back now: rate-limit
 * answers since the last success, a cooldown, or a cut (or the end of its
 * cooldown) less than quiet_ms ago. */
int ord_gov_holding(const ord_gov *g, int64_t now, int64_t quiet_ms)
{
    if (g->rl_streak > 0 || now < g->cool_until_ms)
        return 1;
    return !g->slow_start && now < g->epoch_ms + quiet_ms;
}

int ord_rate_limit_answer(const ord_req *r, ord_reason reason)
{
    return rate_limit_signal(r, reason);
}
