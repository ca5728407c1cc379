/*
 * engine.c - the native engine: one thread, one curl multi handle, for the
 * whole process.
 *
 * Why one: libcurl caches connections, TLS sessions and DNS per multi handle
 * and multiplexes HTTP/2 only inside one, and the cap on calls on the wire
 * (OPENROUTER_MAX_CONCURRENT_CALLS) is process-wide. A single owner thread
 * also makes that cap a plain counter: a call waits in its endpoint's queue
 * until active < cap and that endpoint's governor (policy.c) lets it go, and
 * a call backing off before a retry holds no slot. What happens after an
 * attempt (finish, retry, back to the queue) is policy.c's decision.
 *
 * The thread drives libcurl with curl_multi_socket_action over its own
 * epoll set, so each wake-up costs the sockets that are ready, not all of
 * them: with 2,048 calls in flight, poll() over every socket per wake-up
 * was most of the engine's time.
 *
 * Other threads talk to the engine only through the inbox and the cancel
 * list, under e->mu, followed by a write to e->wake_fd. Everything else (the
 * multi handle, easy handles, pending list, backoff heap, epoll set) belongs
 * to the engine thread alone. The engine never touches a Python object: finished
 * requests are posted to their channel (deliver.c).
 *
 * This file is the engine's lifecycle (start, submit, cancel, shutdown,
 * fork) and its event loop; the loop's parts are in the files engine_int.h
 * lists: a call's attempts (call.c), hedges (hedge_run.c, hedge.c decides
 * when), queues (queue.c), handles (handles.c), sockets (sockets.c), figures
 * (stats.c).
 *
 * fork: the child gets no engine thread, and the parent's may have held any
 * lock at the moment of fork. The child abandons the old engine (it must not
 * clean up handles whose sockets the parent still uses), closes its copies of
 * the engine's descriptors, and builds a fresh one on its first call.
 */
#include "engine_int.h"

#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

static void wake(engine *e)
{
    uint64_t one = 1;
    ssize_t n = write(e->wake_fd, &one, sizeof one);
    (void)n; /* EAGAIN: the counter is saturated, the engine is awake anyway */
}

#ifdef ORD_TEST_HOOKS
/* Test builds only (OPENROUTER_DIRECT_TEST_HOOKS=1): sleep as long as the
 * named variable says, so that a test can make the other side of a race win
 * its window (tests/test_c_review.py). Not compiled into a normal build. */
static void test_pause(const char *var)
{
    const char *ms = getenv(var);
    if (ms)
        usleep((useconds_t)atoi(ms) * 1000);
}
#else
#define test_pause(var) ((void)0)
#endif

static engine *g_engine;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER; /* g_engine, g_shut */
static int g_shut;                 /* shutdown happened: refuse for good */
static atomic_long g_limit;        /* 0 until first read from the environment */
static atomic_uint_fast64_t g_seq;
static atomic_uint g_gov_reset;    /* bumped by ord_engine_reset_governors */
atomic_uint ord_fork_generation;

int64_t ord_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t ord_next_seq(void)
{
    return atomic_fetch_add(&g_seq, 1) + 1;
}

static long limit_from_env(void)
{
    const char *v = getenv("OPENROUTER_MAX_CONCURRENT_CALLS");
    long n = v ? strtol(v, NULL, 10) : 0;
    return n > 0 ? n : 10;
}

long ord_engine_get_limit(void)
{
    long n = atomic_load(&g_limit);
    if (n == 0) {
        long expected = 0;
        atomic_compare_exchange_strong(&g_limit, &expected, limit_from_env());
        n = atomic_load(&g_limit);
    }
    return n;
}

void ord_engine_reset_governors(void)
{
    atomic_fetch_add(&g_gov_reset, 1);
    pthread_mutex_lock(&g_mu);
    if (g_engine)
        wake(g_engine);
    pthread_mutex_unlock(&g_mu);
}

void ord_engine_set_limit(long n)
{
    atomic_store(&g_limit, n);
    pthread_mutex_lock(&g_mu);
    if (g_engine)
        wake(g_engine);
    pthread_mutex_unlock(&g_mu);
}

/* A new call enters its endpoint's queue. */
static void admit(engine *e, ord_req *r)
{
    r->gov = eng_gov_for(e, r);
    if (!r->gov) {
        ord_req_fail(r, ORD_CONNECTION, 0, "out of memory for the endpoint's governor");
        eng_finish(e, r, ORD_CONNECTION, NULL, 0);
        return;
    }
    r->gov->calls_live++; /* until finish: a call in backoff still points at it */
    r->hest = ord_hest_get(e->hedges, r->gov, r->model);
    eng_pend_push_back(e, r);
}

/* Starts what the cap and each endpoint's governor allow, one call per
 * endpoint in turn so that no endpoint starves another. Returns the earliest
 * time a gate opens for a waiting call (0: none is waiting on time). */
static int64_t start_ready(engine *e, int64_t now, long cap)
{
    int64_t next = 0;
    int progress = 1;
    while (progress && e->n_pending && e->n_active < cap) {
        progress = 0;
        next = 0;
        for (ord_gov *g = e->govs; g && e->n_active < cap; g = g->next) {
            if (!g->pend_head)
                continue;
            if (eng_budget_spent(e)) {
                while (g->pend_head) {
                    ord_req *r = g->pend_head;
                    if (r->is_hedge) {
                        eng_hedge_drop(e, r);
                        continue;
                    }
                    eng_pend_unlink(e, r);
                    eng_fail_budget(e, r);
                }
                continue;
            }
            int64_t at = ord_gov_gate(g, now, cap);
            if (at != 0) {
                if (at > 0 && (next == 0 || at < next))
                    next = at;
                continue;
            }
            ord_req *r = g->pend_head;
            eng_pend_unlink(e, r);
            eng_start(e, r);
            ord_gov_started(g, now);
            progress = 1;
        }
    }
    return next;
}

static void *engine_main(void *arg)
{
    engine *e = arg;
    pthread_setname_np(pthread_self(), "openrouter-eng"); /* shows in top, gdb, py-spy */
    struct epoll_event evs[256];
    int running;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        ord_req *inbox = e->inbox_head;
        ord_req *cancels = e->cancels;
        int stopping = e->stopping;
        e->inbox_head = e->inbox_tail = NULL;
        e->cancels = NULL;
        pthread_mutex_unlock(&e->mu);

        if (stopping) {
            for (ord_req *c = cancels, *n; c; c = n) {
                n = c->cancel_next;
                eng_cancel_one(e, c);
                ord_req_decref(c);
            }
            eng_fail_everything(e, inbox);
            break;
        }
        /* Read after taking the inbox: a call submitted after a reset finds it done. */
        unsigned reset = atomic_load(&g_gov_reset);
        if (reset != e->gov_reset_seen) {
            e->gov_reset_seen = reset;
            for (ord_gov *g = e->govs; g; g = g->next)
                ord_gov_reset(g, ord_engine_get_limit());
        }
        for (ord_req *r = inbox, *n; r; r = n) {
            n = r->next;
            admit(e, r);
        }
        for (ord_req *c = cancels, *n; c; c = n) {
            n = c->cancel_next;
            eng_cancel_one(e, c);
            ord_req_decref(c); /* the cancel list's reference */
        }
        int64_t now = ord_now_ms();
        while (e->heap_len && e->heap[0]->due_ms <= now) {
            ord_req *r = e->heap[0];
            eng_heap_remove(e, r);
            eng_pend_push_front(e, r);
        }
        long limit = ord_engine_get_limit();
        if (limit != e->cache_for) {
            /* libcurl's default keeps 4 idle connections per easy handle
             * *currently added*: when the calls in flight dip, it closes
             * connections that the next burst must open again. Keep enough
             * for the cap instead. */
            long keep = limit < LONG_MAX - 16 ? limit + 16 : LONG_MAX; /* set_limit takes any long */
            curl_multi_setopt(e->multi, CURLMOPT_MAXCONNECTS, keep);
            e->cache_for = limit;
        }
        eng_hedge_scan(e, now);
        int64_t gate_due = start_ready(e, now, limit);
        if (e->timer_due >= 0 && e->timer_due <= ord_now_ms()) {
            e->timer_due = -1;
            curl_multi_socket_action(e->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        }
        int finished = eng_reap(e);
        eng_publish_gauges(e);
        if (finished && e->n_pending && e->n_active < limit)
            continue; /* slots just freed: start the waiting calls now */

        now = ord_now_ms();
        int64_t wait = 1000;
        if (gate_due > 0 && gate_due - now < wait)
            wait = gate_due - now;
        if (e->timer_due >= 0 && e->timer_due - now < wait)
            wait = e->timer_due - now;
        if (e->heap_len && e->heap[0]->due_ms - now < wait)
            wait = e->heap[0]->due_ms - now;
        if (e->n_active && ord_hedge_quantile() > 0 && e->hedge_scan_ms - now < wait)
            wait = e->hedge_scan_ms - now;
        if (wait < 0)
            wait = 0;
        int n = epoll_wait(e->ep, evs, (int)(sizeof evs / sizeof evs[0]), (int)wait);
        eng_sockets_ready(e, evs, n);
        eng_reap(e);
    }
    return NULL;
}

/* ---- lifecycle, called from any thread ---- */

static void engine_free(engine *e)
{
    eng_handles_free(e);
    for (ord_gov *g = e->govs, *n; g; g = n) {
        n = g->next;
        ord_gov_free(g);
    }
    ord_hedges_free(e->hedges);
    free(e->heap);
    curl_multi_cleanup(e->multi);
    curl_share_cleanup(e->share);
    close(e->ep);
    close(e->wake_fd);
    free(e->watched);
    pthread_mutex_destroy(&e->mu);
    free(e);
}

static engine *engine_start(void)
{
    engine *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    pthread_mutex_init(&e->mu, NULL);
    e->timer_due = -1;
    e->ep = epoll_create1(EPOLL_CLOEXEC);
    e->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    e->multi = curl_multi_init();
    e->share = curl_share_init();
    e->hedges = ord_hedges_new(); /* NULL: calls are simply never hedged */
    if (e->ep < 0 || e->wake_fd < 0 || !e->multi || !e->share)
        goto fail;
    struct epoll_event wev = {.events = EPOLLIN, .data.fd = e->wake_fd};
    if (epoll_ctl(e->ep, EPOLL_CTL_ADD, e->wake_fd, &wev) < 0)
        goto fail;
    curl_multi_setopt(e->multi, CURLMOPT_SOCKETFUNCTION, eng_on_socket);
    curl_multi_setopt(e->multi, CURLMOPT_SOCKETDATA, e);
    curl_multi_setopt(e->multi, CURLMOPT_TIMERFUNCTION, eng_on_timer);
    curl_multi_setopt(e->multi, CURLMOPT_TIMERDATA, e);
    /* Only the engine thread uses these handles, so the share needs no
     * lock callbacks: it just lets reused and new easy handles resume TLS
     * sessions and skip DNS. */
    curl_share_setopt(e->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    curl_share_setopt(e->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl_multi_setopt(e->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    e->rng = (uint64_t)ord_now_ms() * 0x9E3779B97F4A7C15ULL ^ (uint64_t)getpid();
    if (!e->rng)
        e->rng = 1;

    /* Signals belong to the main thread: Python handles them there. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&e->thread, NULL, engine_main, e);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        goto fail;
    return e;
fail:
    if (e->multi)
        curl_multi_cleanup(e->multi);
    if (e->share)
        curl_share_cleanup(e->share);
    if (e->ep >= 0)
        close(e->ep);
    if (e->wake_fd >= 0)
        close(e->wake_fd);
    ord_hedges_free(e->hedges);
    pthread_mutex_destroy(&e->mu);
    free(e);
    return NULL;
}

int ord_engine_endpoints(ord_endpoint_stats *out, int max)
{
    int n = 0;
    pthread_mutex_lock(&g_mu);
    engine *e = g_engine;
    pthread_mutex_lock(&g_stats_mu);
    for (ord_gov *g = e ? e->govs : NULL; g && n < max; g = g->next, n++) {
        ord_endpoint_stats *o = &out[n];
        snprintf(o->url, sizeof o->url, "%s", g->url);
        o->key_no = g->key_no;
        o->limit = g->pub.limit;
        o->in_flight = g->pub.in_flight;
        o->queued = g->pub.queued;
        o->rate_limited = g->pub.rate_limited;
        o->waited_calls = g->pub.waited_calls;
        o->succeeded = g->pub.succeeded;
        o->rate = g->pub.rate;
        o->cooldown_s = g->pub.cooldown_s;
        o->cost = g->pub.cost;
    }
    pthread_mutex_unlock(&g_stats_mu);
    pthread_mutex_unlock(&g_mu);
    return n;
}

int ord_engine_submit(ord_req *r)
{
    double mc = ord_policy_max_cost();
    if (mc > 0 && ord_engine_cost() >= mc)
        return -3;
    pthread_mutex_lock(&g_mu);
    if (g_shut) {
        pthread_mutex_unlock(&g_mu);
        return -1;
    }
    if (!g_engine)
        g_engine = engine_start();
    engine *e = g_engine;
    if (!e) {
        pthread_mutex_unlock(&g_mu);
        return -2;
    }
    ord_req_incref(r); /* the engine's reference */
    r->t_submit_ms = ord_now_ms();
    r->next = NULL;
    pthread_mutex_lock(&e->mu);
    int was_empty = e->inbox_head == NULL;
    if (e->inbox_tail)
        e->inbox_tail->next = r;
    else
        e->inbox_head = r;
    e->inbox_tail = r;
    pthread_mutex_unlock(&e->mu);
    /* The engine takes the whole inbox at once: one wake-up per batch. Under
     * g_mu, as in cancel and set_limit: once g_mu is let go, a shutdown may
     * free e and its wake_fd number may already name another file. */
    if (was_empty)
        wake(e);
    pthread_mutex_unlock(&g_mu);
    test_pause("ORD_TEST_PAUSE_AFTER_SUBMIT_MS");

    pthread_mutex_lock(&g_stats_mu);
    g_stats.calls++;
    pthread_mutex_unlock(&g_stats_mu);
    return 0;
}

void ord_engine_cancel(ord_req *r)
{
    if (atomic_exchange(&r->cancelled, 1))
        return;
    pthread_mutex_lock(&g_mu);
    engine *e = g_engine;
    if (e && !g_shut) {
        ord_req_incref(r);
        pthread_mutex_lock(&e->mu);
        r->cancel_next = e->cancels;
        e->cancels = r;
        pthread_mutex_unlock(&e->mu);
        wake(e);
    }
    pthread_mutex_unlock(&g_mu);
}

void ord_engine_shutdown(void)
{
    test_pause("ORD_TEST_PAUSE_BEFORE_SHUTDOWN_MS");
    pthread_mutex_lock(&g_mu);
    engine *e = g_engine;
    g_shut = 1;
    g_engine = NULL;
    pthread_mutex_unlock(&g_mu);
    if (!e)
        return;
    pthread_mutex_lock(&e->mu);
    e->stopping = 1;
    pthread_mutex_unlock(&e->mu);
    wake(e);
    pthread_join(e->thread, NULL);
    engine_free(e);
}

/* The child's copies of the abandoned engine's descriptors: without this a
 * DataLoader worker keeps the parent's connections half-open until it exits
 * (close-on-exec only helps exec), and the epoll set and eventfd with them.
 * Closing a copy leaves the parent's socket alone. Only the sockets libcurl
 * opened through eng_on_open_socket are known to be ours; if the fork caught
 * the engine thread growing watched[], the table may be freed memory, and
 * those sockets stay open rather than risk closing one of the child's own.
 * libcurl's internal descriptors (its resolver's, its wake-up pair) are not
 * known here and stay. */
static void close_inherited(engine *e)
{
    eng_sockets_close_inherited(e);
    close(e->ep);
    close(e->wake_fd);
}

/* pthread_atfork child handler: runs in the only thread of the child. */
void ord_engine_after_fork_child(void)
{
    if (g_engine)
        close_inherited(g_engine);
    g_engine = NULL; /* abandoned, see the top of this file */
    g_shut = 0;
    pthread_mutex_init(&g_mu, NULL);
    eng_stats_after_fork();
    atomic_fetch_add(&ord_fork_generation, 1);
}
