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
 * - Adaptive pacing. A rate limit counts starts, so the governor paces
 *   starts. Before the first rate-limit signal (429; 503 with Retry-After;
 *   the 402 of OpenRouter's in-flight budget) nothing is paced and the calls
 *   on the wire start low and triple per round trip (slow start), so that 64
 *   processes starting at once do not burst 64 x cap into one limit. A
 *   signal sets the paced rate to BETA times the rate the endpoint admitted
 *   (counted at the start of each attempt over the last seconds), at most
 *   once per round trip. From there the rate climbs back within a second to
 *   just under that level, holds it for a few seconds, then probes upwards
 *   by doubling until the endpoint says no again: probing costs a cooldown
 *   (below), so it is done rarely where the level held, and a raised limit
 *   is found in a second or two once the probe begins. An additive floor,
 *   the same for every process, is what makes the shares of independent
 *   processes converge (AIMD; Chiu and Jain, 1989): the signals hit each in
 *   proportion to its rate, the floor lifts each by the same amount.
 *   The calls on the wire stay bounded too, by what the paced rate needs
 *   (Little's law, with headroom), so an in-flight limit is met as well.
 *   Latency is not a signal here: an LLM's latency is its output length.
 * - One cooldown per endpoint. Retry-After (or retry-after-ms) stops new
 *   attempts to the endpoint until it passes, plus a little jitter so that
 *   processes do not resume in lockstep; then the pacing spreads the starts.
 * - A call turned away by a rate limit goes back to its queue, behind the
 *   calls already waiting, and does not spend num_retries; it spends
 *   OPENROUTER_RATE_LIMIT_WAIT.
 *
 * The one rule: governor state is the engine thread's alone; other threads
 * see only the copies stats.c publishes under its stats lock, and the
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
 * BETA: the cut, applied to the start rate the endpoint admitted (and to
 * the calls in flight then). RFC 8312's CUBIC uses 0.7 of a window that
 * overshot; a paced rate overshoots by little, so the cut can be gentler.
 * PLATEAU, UP, PROBE, DOUBLE: after a cut the rate is back at PLATEAU times
 * the admitted rate after UP seconds, holds until PROBE seconds, then
 * doubles every DOUBLE seconds. Each probe that finds the same level costs
 * one Retry-After of pause for the process it hits, so PROBE trades the
 * time a lone process loses (about a cooldown per PROBE + 2 s) against how
 * soon a raised limit is found (about PROBE + 1 s at worst, much less when
 * many processes probe at different times). The shape is CUBIC's (concave
 * to the last level, flat near it, then convex), scaled to the rate itself
 * so that 1 process at 100 calls/s and 8 at 12 each probe at the same pace.
 * AI: the same additive growth for every process, in calls/s per second;
 * the scaled shape alone keeps unequal shares unequal. 1 left 4 processes
 * that started unequally at 9 and 83 calls/s for 15 s; 4 brings them
 * together within a few seconds (Jain 0.97 -> 0.99+). Figures:
 * bench/ratelimit.py, docs/GOVERNOR.md. */
#define GOV_BETA 0.9
#define GOV_PLATEAU 0.98
#define GOV_UP_S 1.0
#define GOV_PROBE_S 5.0
#define GOV_DOUBLE_S 2.0
#define GOV_AI 4.0          /* calls/s per second, after a cut */
#define GOV_SLOW_START_GROWTH 2.0 /* calls added per success in slow start: x3 a round trip */
#define GOV_INITIAL 8       /* slow start begins here (or at the cap) */
#define GOV_MIN_RTT_MS 20.0 /* a round trip is at least this, for the cut guard */
#define GOV_BURST_S 0.01    /* pacing lets this much of a second's starts leave at once */
#define GOV_RATE_MAX 1e6    /* starts/s: past this, pacing holds nothing back */
#define GOV_HEADROOM 1.5    /* calls in flight allowed over what the paced rate needs */

uint64_t ord_key_hash(const char *key)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)(key ? key : ""); *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h;
}

static void limit_changed(ord_gov *g, const char *why);
static void settle_cut(ord_gov *g, int64_t now);

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
    g->slow_start = 1;
    g->rate = g->rate_max = g->rate_base = g->tokens = 0;
    g->epoch_ms = g->cut_guard_ms = g->cool_until_ms = g->tok_ms = 0;
    g->cut_pending = 0;
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

/* pthread_atfork child handler: the engine thread may have held the lock at
 * the fork, and it does not exist in the child; the events are the parent's. */
void ord_policy_after_fork_child(void)
{
    pthread_mutex_init(&g_ev_mu, NULL);
    g_ev_head = g_ev_len = 0;
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

/* Attempts started, and those turned away by a rate limit, per 100 ms over
 * the last 10 s (a 4 s window and the cooldown after it): what the endpoint
 * admitted, measured where it decides (at the start), not where replies
 * come back one latency later. */
#define BIN_MS 100
#define BINS 100
static void bins_advance(ord_gov *g, int64_t now)
{
    if (g->bin_t == 0 || now - g->bin_t >= BINS * BIN_MS) { /* first use, or idle: afresh */
        memset(g->st_bins, 0, sizeof g->st_bins);
        memset(g->rl_bins, 0, sizeof g->rl_bins);
        g->bin_t = g->bin_origin_ms = now;
        return;
    }
    while (now - g->bin_t >= BIN_MS) {
        memmove(g->st_bins + 1, g->st_bins, (BINS - 1) * sizeof g->st_bins[0]);
        memmove(g->rl_bins + 1, g->rl_bins, (BINS - 1) * sizeof g->rl_bins[0]);
        g->st_bins[0] = g->rl_bins[0] = 0;
        g->bin_t += BIN_MS;
    }
}

static void bin_add(uint16_t *bin)
{
    if (*bin < UINT16_MAX)
        (*bin)++;
}

/* Counts in the bins from `from` to now. */
static long bins_sum(const ord_gov *g, const uint16_t *bins, int64_t from)
{
    long n = 0;
    for (int k = 0; k < BINS && g->bin_t - (int64_t)k * BIN_MS + BIN_MS > from; k++)
        n += bins[k];
    return n;
}

/* The paced rate after a cut, by the time t since attempts could go again:
 * back up to just under the rate the endpoint turned away within GOV_UP_S
 * (concave, fast at first), held there until GOV_PROBE_S, then doubled every
 * GOV_DOUBLE_S until the endpoint says no again; never below an additive
 * floor. Time-based, so it does not depend on how many replies happen to
 * come back. */
static void rate_grow(ord_gov *g, int64_t now)
{
    if (g->rate <= 0 || now <= g->epoch_ms)
        return;
    double t = (double)(now - g->epoch_ms) / 1000.0;
    double plateau = GOV_PLATEAU * g->rate_max;
    double r = plateau;
    if (t < GOV_UP_S) {
        double left = 1.0 - t / GOV_UP_S;
        r = plateau - (plateau - g->rate_base) * left * left * left;
    } else if (t > GOV_PROBE_S) {
        r = plateau * exp2((t - GOV_PROBE_S) / GOV_DOUBLE_S);
    }
    double floor_r = g->rate_base + GOV_AI * t;
    if (r < floor_r)
        r = floor_r;
    if (r > GOV_RATE_MAX)
        r = GOV_RATE_MAX;
    if (r > g->rate)
        g->rate = r;
}

int64_t ord_gov_gate(ord_gov *g, int64_t now, long cap)
{
    if (!ord_policy_adaptive())
        return 0; /* the engine's process-wide cap is the only bound */
    if (now < g->cool_until_ms)
        return g->cool_until_ms;
    if (g->cut_pending)
        settle_cut(g, now);
    if (g->rate > 0) {
        rate_grow(g, now);
        /* Little's law: the calls in flight the paced rate needs, with room
         * for replies slower than usual; the rate is what binds. */
        double need = GOV_HEADROOM * g->rate * g->srtt_ms / 1000.0;
        if (g->limit < need)
            g->limit = need < (double)cap ? need : (double)cap;
    }
    long lim = (long)g->limit;
    if (lim > cap)
        lim = cap;
    if (lim < 1)
        lim = 1;
    if (g->n_active >= lim) {
        g->held_ms = now; /* starts held back by us, not by the endpoint */
        return -1;
    }
    if (g->rate > 0) {
        double burst = g->rate * GOV_BURST_S;
        if (burst < 1.0)
            burst = 1.0;
        if (g->tok_ms > 0 && now > g->tok_ms)
            g->tokens += g->rate * (double)(now - g->tok_ms) / 1000.0;
        g->tok_ms = now;
        if (g->tokens > burst)
            g->tokens = burst;
        if (g->tokens < 1.0) {
            int64_t wait = (int64_t)ceil((1.0 - g->tokens) * 1000.0 / g->rate);
            return now + (wait > 0 ? wait : 1);
        }
    }
    return 0;
}

void ord_gov_started(ord_gov *g, int64_t now)
{
    bins_advance(g, now);
    bin_add(&g->st_bins[0]);
    if (g->rate > 0)
        g->tokens -= 1.0;
}

void ord_gov_succeeded(ord_gov *g, ord_req *r, int64_t now, long cap)
{
    double ms = (double)(now - r->t_attempt_ms);
    g->srtt_ms = g->srtt_ms > 0 ? 0.875 * g->srtt_ms + 0.125 * ms : ms;
    g->rl_streak = 0;
    g->succeeded++;
    if (!ord_policy_adaptive() || g->rate > 0)
        return; /* once pacing, the rate grows with time (rate_grow) */
    /* Slow start: the limit triples per round trip (a rate-limit answer
     * comes back at once, so the overshoot it costs is a few calls per
     * process). Grow only while the limit is what holds calls back: a
     * limit that was never used says nothing about the endpoint. */
    if (g->n_pending == 0 && (double)(g->n_active + 1) < floor(g->limit))
        return;
    g->limit += GOV_SLOW_START_GROWTH;
    if (g->limit > (double)cap)
        g->limit = (double)cap;
    limit_changed(g, "slow start");
}

/* The signals that mean "fewer calls, please" rather than "this call failed". */
static int rate_limit_signal(const ord_req *r, ord_reason reason)
{
    if (reason != ORD_HTTP_STATUS && reason != ORD_PROVIDER_ERROR)
        return 0;
    return r->status == 429 || (r->status == 503 && r->retry_after_ms >= 0) ||
           (r->status == 402 && r->inflight_budget);
}

/* A signal starts a cooldown at once; what it means for the rate is settled
 * when the cooldown ends (settle_cut), because the answers to the other
 * attempts of the same burst arrive a moment after the first: counted at
 * the first, they would pass for admitted. Nothing starts in between, so
 * the attempts counted are exactly those of the window before the signal. */
static void cut(ord_gov *g, int64_t now)
{
    bins_advance(g, now);
    bin_add(&g->rl_bins[0]);
    if (now < g->cut_guard_ms || g->cut_pending)
        return; /* this round trip was answered already */
    g->cut_pending = 1;
    g->cut_at_ms = now;
    g->cut_inflight = g->n_active + 1;
    g->cut_probing = g->rate_max > 0 && now - g->epoch_ms > (int64_t)(GOV_PROBE_S * 1000);
    /* While pacing, counted from when attempts could go again (a cooldown
     * in the window would pass for a rate the endpoint did not admit), over
     * up to 4 s: a token bucket admits its burst on top of its rate, so the
     * longer the window, the nearer the count comes to the rate. In slow
     * start, the last second: earlier, the ramp was below any limit. */
    int64_t from = g->rate > 0 ? g->epoch_ms : now - 1000;
    if (g->rate > 0 && from < now - 4000)
        from = now - 4000;
    g->cut_from_ms = from > g->bin_origin_ms ? from : g->bin_origin_ms;
    g->cut_held = g->rate > 0 && g->held_ms >= g->cut_from_ms;
    g->cut_guard_ms = now + (int64_t)rtt_ms(g);
}

static void settle_cut(ord_gov *g, int64_t now)
{
    g->cut_pending = 0;
    bins_advance(g, now);
    double seen = -1;
    if (now - g->cut_from_ms < BINS * BIN_MS) { /* the bins still hold the window */
        long admitted = bins_sum(g, g->st_bins, g->cut_from_ms) - bins_sum(g, g->rl_bins, g->cut_from_ms);
        /* At least one bin's time, so that the first calls of a burst are
         * not taken for a rate of thousands a second. */
        double secs = (double)(g->cut_at_ms - g->cut_from_ms) / 1000.0;
        if (secs < BIN_MS / 1000.0)
            secs = BIN_MS / 1000.0;
        seen = (double)admitted / secs;
    }
    if (seen <= 0 && g->rate <= 0) {
        /* Nothing admitted to measure a rate with: fewer calls on the wire,
         * and slow start goes on from there until a signal can be measured. */
        g->limit = (double)g->cut_inflight * GOV_BETA;
        if (g->limit < 1.0)
            g->limit = 1.0;
        g->slow_start = 2;
        limit_changed(g, "rate limited");
        return;
    }
    /* The rate it turned away: what it admitted, or the paced rate if that
     * is lower (a window spent below the pace) or if the calls on the wire,
     * not the endpoint, held starts back in the window: then the count says
     * what we sent, and cutting to it would feed on itself. */
    double base = g->rate > 0 && (seen <= 0 || g->rate < seen || g->cut_held) ? g->rate : seen;
    /* Said no while probing past a level it held without a word: it admits
     * at least that level (the window's mean also counts the climb to it). */
    if (g->cut_probing && base < GOV_PLATEAU * g->rate_max)
        base = GOV_PLATEAU * g->rate_max;
    /* The level to climb back to: a little under the rate turned away, so
     * that each signal takes a little of a process's share for good (the
     * signals hit each process in proportion to its rate, so the larger
     * give way: CUBIC's fast convergence), while the additive floor gives
     * every process the same. The first cut's measure counts the endpoint's
     * burst allowance on top of its rate (the bucket was full when slow
     * start began): hold the cut rate instead of climbing back to it. */
    g->rate_max = base * (g->slow_start ? GOV_BETA : (1.0 + GOV_BETA) / 2.0);
    g->rate = g->rate_base = base * GOV_BETA;
    g->tokens = 0;
    /* Calls in flight: a cut of what was on the wire, but never below what
     * the new rate needs (Little's law, with headroom), so that a rate limit
     * is met by pacing and an in-flight limit by both. */
    double inflight = (double)g->cut_inflight * GOV_BETA;
    double need = GOV_HEADROOM * g->rate * g->srtt_ms / 1000.0;
    double lim = inflight > need ? inflight : need;
    g->limit = lim < g->limit || g->slow_start ? lim : g->limit;
    if (g->limit < 1.0)
        g->limit = 1.0;
    g->slow_start = 0;
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
    g->tok_ms = until;
    g->tokens = 0;
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
        wait = r->retry_after_ms; /* capped where it is read (handles.c, on_header) */
    else
        wait = backoff_ms(r, spent, rng);
    *due = now + wait;
    return ORD_NEXT_RETRY;
}

/* ---- queries for the hedging policy (hedge.c), engine thread */

/* Whether the governor is holding this endpoint back now: rate-limit
 * answers since the last success, a cooldown, or a cut (or the end of its
 * cooldown) less than quiet_ms ago. slow_start is 1 only until the first
 * cut (or a reset). */
int ord_gov_holding(const ord_gov *g, int64_t now, int64_t quiet_ms)
{
    if (g->rl_streak > 0 || now < g->cool_until_ms)
        return 1;
    return g->slow_start != 1 && now < g->epoch_ms + quiet_ms;
}

int ord_rate_limit_answer(const ord_req *r, ord_reason reason)
{
    return rate_limit_signal(r, reason);
}
