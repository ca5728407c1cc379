/*
 * hedge.c - when to send a second attempt of a call that is taking too long
 * (hedged requests, Dean and Barroso, "The Tail at Scale", CACM 2013).
 *
 * A training step waits for the slowest of its ~1,500 judge calls, and a
 * provider that stalls now and then holds the whole step for the stall. So
 * once an attempt has been on the wire longer than a high percentile
 * (OPENROUTER_HEDGE, say p99) of what recent attempts to the same endpoint
 * and model took, the engine sends the same request again; the first reply
 * wins and the other transfer is aborted (hedge_run.c runs that part). This file
 * holds the policy:
 *
 * - The estimate. Per (endpoint, model), a histogram of the durations of
 *   attempts that succeeded, on log-spaced buckets (10% apart), in which
 *   each new sample weighs a little more than the one before (exponential
 *   decay over about EST_WINDOW samples), so the estimate follows a provider
 *   that slows down or speeds up. The delay is the upper edge of the bucket
 *   holding the percentile: rounding makes hedges rarer, never more common.
 *   A first attempt that lost to its hedge took at least the delay: it is
 *   counted just under it, in the percentile's own bucket. Left out, the
 *   slow tail that hedging cuts off would vanish from the estimate, which
 *   would sink with every win (measured: twice the hedges on a clean step);
 *   counted at its age, a provider that stalls more often than the
 *   percentile allows would push the delay up into its stalls. A hedge
 *   that lost is not counted.
 * - The floor. No hedge before EST_MIN_SAMPLES successes of that endpoint
 *   and model (a cold start knows nothing), nor before HEDGE_FLOOR_MS of an
 *   attempt (a second attempt of a fast call saves too little to pay).
 * - The budget. A token bucket: each call that ends adds
 *   OPENROUTER_HEDGE_BUDGET tokens (default 0.05), up to a small burst; a
 *   hedge takes one. So hedges never exceed that share of the calls ended
 *   plus the burst, even when every reply is slow. Credited as calls end
 *   rather than start: the end of a step, when nothing starts any more, is
 *   where the stragglers are.
 * - The governor first. No hedge to an endpoint the governor is holding
 *   back (a cooldown, or a cut in the last HEDGE_QUIET_MS), nor to one that
 *   answered a rate limit recently: a hedge there would be one more attempt
 *   the endpoint has just refused.
 *
 * The one rule that keeps it correct: this file only says whether a hedge
 * may go; the engine thread owns every request, and a hedge is an attempt
 * like any other (it takes a slot of the cap and of its governor's limit).
 * Everything here is the engine thread's alone, except the two settings,
 * which are atomics.
 */
#include "ord.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define EST_BINS 96
#define EST_MIN_MS 5.0        /* bucket 0 holds everything faster */
#define EST_RATIO 1.1         /* bucket b >= 1: [5 ms * 1.1^(b-1), 5 ms * 1.1^b) */
#define EST_WINDOW 1000.0     /* samples: older ones weigh 1/e after about this many */
#define EST_MIN_SAMPLES 128
#define EST_KEPT 64           /* estimates kept; beyond, idle ones are forgotten */
#define HEDGE_FLOOR_MS 100
#define HEDGE_QUIET_MS 10000

struct ord_hest {
    struct ord_hest *next;
    char *url, *model;
    uint64_t key_hash;            /* the endpoint's key, as its governor keeps it */
    long users;                   /* calls admitted that point here */
    double bin[EST_BINS];
    double total, weight;         /* sum of bin[]; the weight of the next sample */
    uint64_t n;                   /* samples ever recorded */
    uint64_t delay_n;             /* n when delay_ms was computed */
    double delay_q;               /* the percentile delay_ms was computed for */
    int64_t delay_ms;
    int64_t last_rl_ms;           /* last rate-limit answer for this endpoint and model */
};

struct ord_hedges {
    ord_hest *list;
    long count;
    double tokens;                /* the budget's bucket */
};

/* ---- settings: any thread */
static _Atomic double g_quantile = ORD_HEDGE_DEFAULT_Q; /* 0: off */
static _Atomic double g_budget = ORD_HEDGE_DEFAULT_BUDGET;

void ord_hedge_configure(double quantile, double budget)
{
    if (quantile >= 0)
        atomic_store(&g_quantile, quantile);
    if (budget >= 0)
        atomic_store(&g_budget, budget);
}

double ord_hedge_quantile(void) { return atomic_load(&g_quantile); }
double ord_hedge_budget(void) { return atomic_load(&g_budget); }

/* The bucket can hold a few hedges: stragglers come a few at a time. */
double ord_hedge_burst(double budget)
{
    double b = budget * 200.0;
    return b < 2.0 ? 2.0 : b;
}

/* ---- the engine's table */
ord_hedges *ord_hedges_new(void)
{
    return calloc(1, sizeof(ord_hedges));
}

static void hest_free(ord_hest *h)
{
    free(h->url);
    free(h->model);
    free(h);
}

void ord_hedges_free(ord_hedges *t)
{
    if (!t)
        return;
    for (ord_hest *h = t->list, *n; h; h = n) {
        n = h->next;
        hest_free(h);
    }
    free(t);
}

ord_hest *ord_hest_get(ord_hedges *t, const ord_gov *g, const char *model)
{
    if (!t || !model)
        return NULL;
    for (ord_hest *h = t->list; h; h = h->next)
        if (h->key_hash == g->key_hash && strcmp(h->model, model) == 0 && strcmp(h->url, g->url) == 0) {
            h->users++;
            return h;
        }
    if (t->count >= EST_KEPT) {
        for (ord_hest **p = &t->list; *p;) {
            ord_hest *h = *p;
            if (h->users == 0) {
                *p = h->next;
                hest_free(h);
                t->count--;
            } else {
                p = &h->next;
            }
        }
    }
    ord_hest *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->url = strdup(g->url);
    h->model = strdup(model);
    if (!h->url || !h->model) {
        hest_free(h);
        return NULL;
    }
    h->key_hash = g->key_hash;
    h->weight = 1.0;
    h->delay_ms = -1;
    h->users = 1;
    h->next = t->list;
    t->list = h;
    t->count++;
    return h;
}

void ord_hest_put(ord_hest *h)
{
    if (h)
        h->users--;
}

static double bucket_top_ms(int b)
{
    return EST_MIN_MS * pow(EST_RATIO, b);
}

void ord_hest_record(ord_hest *h, int64_t ms)
{
    if (!h)
        return;
    int b = 0;
    if ((double)ms >= EST_MIN_MS)
        b = 1 + (int)(log((double)ms / EST_MIN_MS) / log(EST_RATIO));
    if (b >= EST_BINS)
        b = EST_BINS - 1;
    /* Rather than shrink every bucket per sample, the next sample weighs
     * more; renormalised long before a double could overflow. */
    h->weight *= 1.0 + 1.0 / EST_WINDOW;
    h->bin[b] += h->weight;
    h->total += h->weight;
    h->n++;
    if (h->weight > 1e12) {
        for (int i = 0; i < EST_BINS; i++)
            h->bin[i] /= h->weight;
        h->total /= h->weight;
        h->weight = 1.0;
    }
}

int64_t ord_hest_delay_ms(ord_hest *h)
{
    double q = atomic_load(&g_quantile);
    if (!h || q <= 0 || h->n < EST_MIN_SAMPLES)
        return -1;
    /* Recomputed every few samples: a percentile moves slowly. */
    if (h->delay_ms >= 0 && q == h->delay_q && h->n - h->delay_n < 8)
        return h->delay_ms;
    double want = q * h->total, seen = 0;
    int b = 0;
    for (; b < EST_BINS - 1; b++) {
        seen += h->bin[b];
        if (seen >= want)
            break;
    }
    double ms = bucket_top_ms(b);
    h->delay_ms = ms < HEDGE_FLOOR_MS ? HEDGE_FLOOR_MS : (int64_t)ceil(ms);
    h->delay_q = q;
    h->delay_n = h->n;
    return h->delay_ms;
}

void ord_hest_censored(ord_hest *h)
{
    if (h && h->delay_ms > 1)
        ord_hest_record(h, h->delay_ms - 1);
}

void ord_hest_rate_limited(ord_hest *h, int64_t now)
{
    if (h)
        h->last_rl_ms = now;
}

/* ---- the budget */
void ord_hedge_credit(ord_hedges *t)
{
    if (!t)
        return;
    double budget = atomic_load(&g_budget), burst = ord_hedge_burst(budget);
    t->tokens += budget;
    if (t->tokens > burst)
        t->tokens = burst;
}

int ord_hedge_take(ord_hedges *t, const ord_gov *g, const ord_hest *h, int64_t now)
{
    if (!t)
        return 0;
    double burst = ord_hedge_burst(atomic_load(&g_budget));
    if (t->tokens > burst) /* the budget was lowered since */
        t->tokens = burst;
    if (t->tokens < 1.0)
        return 0;
    if (h->last_rl_ms && now - h->last_rl_ms < HEDGE_QUIET_MS)
        return 0;
    if (ord_gov_holding(g, now, HEDGE_QUIET_MS))
        return 0;
    t->tokens -= 1.0;
    return 1;
}

void ord_hedge_refund(ord_hedges *t)
{
    if (!t)
        return;
    double burst = ord_hedge_burst(atomic_load(&g_budget));
    t->tokens = t->tokens + 1.0 < burst ? t->tokens + 1.0 : burst;
}
