/*
 * stats.c - the engine's figures for stats() and metrics(): counters by
 * outcome, reason and HTTP status, tokens and cost, the latency histogram
 * (every finished, not cancelled call), and the gauges (calls on the wire,
 * calls waiting, each endpoint's published governor figures).
 *
 * The rule: all of it is read and written under g_stats_mu only, held
 * briefly (the engine takes it about once per completion) and with nothing
 * taken inside it. The engine thread writes; any thread reads a copy.
 * metrics.c turns the histogram into Python objects.
 */
#include "engine_int.h"

#include <math.h>
#include <string.h>

#define HIST_BUCKETS 512
#define HIST_BASE 1.05
#define HIST_MIN_MS 0.01

pthread_mutex_t g_stats_mu = PTHREAD_MUTEX_INITIALIZER;
ord_stats g_stats;
static uint32_t g_hist[HIST_BUCKETS];

void eng_hist_add(double ms)
{
    int b = 0;
    if (ms > HIST_MIN_MS)
        b = (int)(log(ms / HIST_MIN_MS) / log(HIST_BASE)) + 1;
    if (b >= HIST_BUCKETS)
        b = HIST_BUCKETS - 1;
    g_hist[b]++;
}

/* The bucket's geometric middle: within 2.5% of any value in it. */
static double hist_quantile(uint64_t total, double q)
{
    if (!total)
        return -1.0;
    uint64_t want = (uint64_t)ceil(q * (double)total), seen = 0;
    if (want == 0)
        want = 1;
    for (int b = 0; b < HIST_BUCKETS; b++) {
        seen += g_hist[b];
        if (seen >= want)
            return b == 0 ? HIST_MIN_MS : HIST_MIN_MS * pow(HIST_BASE, b - 0.5);
    }
    return -1.0;
}

void ord_engine_count_immediate(ord_req *r)
{
    pthread_mutex_lock(&g_stats_mu);
    g_stats.calls++;
    g_stats.failed++;
    g_stats.by_reason[r->reason]++;
    pthread_mutex_unlock(&g_stats_mu);
}

void ord_engine_snapshot(ord_stats *out)
{
    pthread_mutex_lock(&g_stats_mu);
    *out = g_stats;
    uint64_t total = 0;
    for (int b = 0; b < HIST_BUCKETS; b++)
        total += g_hist[b];
    out->p50 = hist_quantile(total, 0.50);
    out->p95 = hist_quantile(total, 0.95);
    out->p99 = hist_quantile(total, 0.99);
    pthread_mutex_unlock(&g_stats_mu);
    out->limit = ord_engine_get_limit();
}

void eng_count_status(long status)
{
    if (status > 0 && status < ORD_HTTP_STATUS_END)
        g_stats.status_count[status]++;
}

/* Calls on the wire, and calls waiting for a slot or a retry; g_stats_mu held. */
void eng_set_gauges_locked(const engine *e)
{
    g_stats.in_flight = e->n_active;
    g_stats.queued = e->n_pending + (long)e->heap_len;
    long cap = ord_engine_get_limit();
    for (ord_gov *g = e->govs; g; g = g->next) {
        long lim = ord_policy_adaptive() ? (long)g->limit : cap;
        g->pub.limit = lim < cap ? lim : cap;
        g->pub.in_flight = g->n_active;
        g->pub.queued = g->n_pending;
        g->pub.rate_limited = g->rate_limited;
        g->pub.waited_calls = g->waited_calls;
        g->pub.succeeded = g->succeeded;
        g->pub.rate = ord_policy_adaptive() ? g->rate : 0.0;
        g->pub.cooldown_s = (double)g->cooldown_ms / 1000.0;
        g->pub.cost = g->cost;
    }
}

void eng_publish_gauges(engine *e)
{
    pthread_mutex_lock(&g_stats_mu);
    eng_set_gauges_locked(e);
    pthread_mutex_unlock(&g_stats_mu);
}

double ord_engine_cost(void)
{
    pthread_mutex_lock(&g_stats_mu);
    double c = g_stats.cost;
    pthread_mutex_unlock(&g_stats_mu);
    return c;
}

/* ---- the latency histogram, for metrics.c ---- */

size_t ord_engine_hist_copy(uint32_t *out, size_t n)
{
    if (n > HIST_BUCKETS)
        n = HIST_BUCKETS;
    pthread_mutex_lock(&g_stats_mu);
    memcpy(out, g_hist, n * sizeof *out);
    pthread_mutex_unlock(&g_stats_mu);
    return HIST_BUCKETS;
}

double ord_engine_hist_value(size_t b)
{
    return b == 0 ? HIST_MIN_MS : HIST_MIN_MS * pow(HIST_BASE, (double)b - 0.5);
}

/* pthread_atfork child handler's part (engine.c): the child starts counting afresh. */
void eng_stats_after_fork(void)
{
    pthread_mutex_init(&g_stats_mu, NULL);
    memset(&g_stats, 0, sizeof g_stats);
    memset(g_hist, 0, sizeof g_hist);
}
