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
 * Hedges (hedge.c decides when): a slow attempt may get a second one, an
 * ord_req of its own that borrows the call's request; see "hedges" below
 * for who wins and what a failure of either means.
 *
 * fork: the child gets no engine thread, and the parent's may have held any
 * lock at the moment of fork. The child abandons the old engine (it must not
 * clean up handles whose sockets the parent still uses), closes its copies of
 * the engine's descriptors, and builds a fresh one on its first call.
 */
#include "ord.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* Response buffers kept for the next call: a 4 KB malloc and free per call
 * was glibc's slow path (larger than its per-thread cache) and a heap
 * consolidation each time. Bounded in number and size. */
#define SPARE_BUFS 64
#define SPARE_MAX_CAP (64 * 1024)

/* Parsed URLs, handed to libcurl with CURLOPT_CURLU. Given CURLOPT_URL,
 * libcurl parses the string and builds it back on every transfer, a
 * measurable share of the engine thread (docs/TUNING.md); with a handle it
 * only copies it. A process sends to one or two URLs; an entry is
 * replaced only while no transfer uses it, since libcurl reads the handle
 * until the transfer is removed. */
#define URL_CACHE 8

struct ord_url {
    char *text;
    CURLU *h;
    long users;      /* attempts using it now */
    uint64_t used;   /* tick of its last use: the oldest idle entry goes first */
};

typedef struct {
    pthread_mutex_t mu;            /* inbox, cancels, stopping */
    ord_req *inbox_head, *inbox_tail;
    ord_req *cancels;
    int stopping;                  /* no new submissions; thread winds down */
    pthread_t thread;
    CURLM *multi;
    CURLSH *share;
    int wake_fd;                   /* eventfd in the epoll set: commands waiting */
    int ep;                        /* epoll set of libcurl's sockets + wake_fd */

    /* engine thread only */
    ord_gov *govs, *last_gov;      /* one per endpoint; appended under g_stats_mu */
    ord_req *act_head;             /* on the wire; linked through prev/next too */
    double cost;                   /* usage.cost of every reply, for the cost guard */
    long n_pending, n_active;
    ord_req **heap;                /* backoff timers, min-heap on due_ms */
    size_t heap_len, heap_cap;
    CURL **pool;                   /* idle easy handles */
    size_t pool_len, pool_cap;
    uint64_t rng;
    int64_t timer_due;             /* libcurl's timeout (monotonic ms), -1: none */
    long cache_for;                /* the cap CURLMOPT_MAXCONNECTS was sized for */
    unsigned char *watched;        /* watched[fd]: FD_* state of each fd libcurl gave us */
    size_t watched_cap;
    atomic_int watched_moving;     /* set while watched is reallocated: a child forked then
                                    * cannot trust it (ord_engine_after_fork_child) */
    struct spare { char *buf; size_t cap; } spare[SPARE_BUFS]; /* response buffers to reuse */
    int n_spare;
    struct ord_url urls[URL_CACHE];
    uint64_t url_tick;
    unsigned gov_reset_seen;
    ord_hedges *hedges;            /* latency estimates and the hedge budget; NULL: no hedging */
    int64_t hedge_scan_ms;         /* when to look for attempts to hedge next */
} engine;

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

/* ---- stats: a mutex, held briefly by the engine per completion ---- */
#define HIST_BUCKETS 512
#define HIST_BASE 1.05
#define HIST_MIN_MS 0.01

static pthread_mutex_t g_stats_mu = PTHREAD_MUTEX_INITIALIZER;
static ord_stats g_stats;
static uint32_t g_hist[HIST_BUCKETS];

static void hist_add(double ms)
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

/* ---- pending queues, one per endpoint (FIFO, intrusive) ---- */
static void pend_push_back(engine *e, ord_req *r)
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
static void pend_push_front(engine *e, ord_req *r)
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

static void pend_unlink(engine *e, ord_req *r)
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

static ord_gov *gov_for(engine *e, const ord_req *r)
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

static int heap_push(engine *e, ord_req *r)
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

static void heap_remove(engine *e, ord_req *r)
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

/* ---- easy handles ---- */
static size_t on_write(char *data, size_t size, size_t n, void *ud)
{
    ord_req *r = ud;
    size_t len = size * n;
    if ((curl_off_t)(r->buf_len + len) > r->max_response) {
        r->too_large = 1;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (r->buf_len + len + 1 > r->buf_cap) {
        size_t cap = r->buf_cap ? r->buf_cap : 4096;
        while (cap < r->buf_len + len + 1)
            cap *= 2;
        char *b = realloc(r->buf, cap);
        if (!b)
            return 0;
        r->buf = b;
        r->buf_cap = cap;
    }
    memcpy(r->buf + r->buf_len, data, len);
    r->buf_len += len;
    r->buf[r->buf_len] = '\0';
    return len;
}

static int header_is(const char *line, size_t len, const char *name, const char **value)
{
    size_t n = strlen(name);
    if (len <= n || strncasecmp(line, name, n) != 0 || line[n] != ':')
        return 0;
    const char *v = line + n + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    *value = v;
    return 1;
}

/* Retry hints. A header line is not NUL-terminated: copy the short ones. */
static size_t on_header(char *data, size_t size, size_t n, void *ud)
{
    ord_req *r = ud;
    size_t len = size * n;
    char line[256];
    /* Only "HTTP/", "retry-after*" and "x-should-retry" lines matter. */
    unsigned char c0 = len ? (unsigned char)(data[0] | 0x20) : 0;
    if (len >= sizeof line || (c0 != 'h' && c0 != 'r' && c0 != 'x'))
        return len;
    memcpy(line, data, len);
    line[len] = '\0';
    const char *v;
    if (len > 5 && strncmp(line, "HTTP/", 5) == 0) {
        r->retry_after_ms = -1; /* a new response (after a 100, say) */
        r->should_retry = -1;
    } else if (header_is(line, len, "retry-after-ms", &v)) {
        char *end;
        double ms = strtod(v, &end);
        if (end != v && ms >= 0)
            r->retry_after_ms = ms < ORD_RETRY_AFTER_CAP_MS ? (int64_t)ms : ORD_RETRY_AFTER_CAP_MS;
    } else if (header_is(line, len, "retry-after", &v) && r->retry_after_ms < 0) {
        char *end;
        double s = strtod(v, &end);
        if (end != v && s >= 0) {
            r->retry_after_ms = s * 1000 < ORD_RETRY_AFTER_CAP_MS ? (int64_t)(s * 1000) : ORD_RETRY_AFTER_CAP_MS;
        } else {
            time_t when = curl_getdate(v, NULL); /* an HTTP date */
            if (when != -1) {
                time_t now = time(NULL);
                int64_t ms = when > now ? (int64_t)(when - now) * 1000 : 0;
                r->retry_after_ms = ms < ORD_RETRY_AFTER_CAP_MS ? ms : ORD_RETRY_AFTER_CAP_MS;
            }
        }
    } else if (header_is(line, len, "x-should-retry", &v)) {
        r->should_retry = strncasecmp(v, "true", 4) == 0 ? 1 : strncasecmp(v, "false", 5) == 0 ? 0 : -1;
    }
    return len;
}

static CURL *easy_get(engine *e)
{
    if (e->pool_len)
        return e->pool[--e->pool_len];
    return curl_easy_init();
}

static void easy_put(engine *e, CURL *h)
{
    /* Needed, though setting up again costs: a handle reused without it
     * keeps per-transfer state, such as libcurl's count of resends on dead
     * reused connections, which then runs out across calls
     * (tests/test_fault_matrix.py caught it). */
    curl_easy_reset(h);
    if (e->pool_len == e->pool_cap) {
        size_t cap = e->pool_cap ? e->pool_cap * 2 : 64;
        CURL **p = realloc(e->pool, cap * sizeof *p);
        if (!p) {
            curl_easy_cleanup(h);
            return;
        }
        e->pool = p;
        e->pool_cap = cap;
    }
    e->pool[e->pool_len++] = h;
}

/* The entry for url, taken for one attempt; NULL when none is free or the
 * URL does not parse: then libcurl gets the string and reports what is wrong
 * with it as it always did. */
static struct ord_url *url_take(engine *e, const char *url)
{
    struct ord_url *victim = NULL;
    for (int i = 0; i < URL_CACHE; i++) {
        struct ord_url *u = &e->urls[i];
        if (u->text && strcmp(u->text, url) == 0) {
            u->users++;
            u->used = ++e->url_tick;
            return u;
        }
        if (u->users == 0 && (!victim || u->used < victim->used))
            victim = u;
    }
    if (!victim)
        return NULL;
    CURLU *h = curl_url();
    char *text = strdup(url);
    /* the flags libcurl itself parses CURLOPT_URL with */
    if (!h || !text ||
        curl_url_set(h, CURLUPART_URL, url, CURLU_GUESS_SCHEME | CURLU_NON_SUPPORT_SCHEME) != CURLUE_OK) {
        curl_url_cleanup(h);
        free(text);
        return NULL;
    }
    curl_url_cleanup(victim->h);
    free(victim->text);
    *victim = (struct ord_url){text, h, 1, ++e->url_tick};
    return victim;
}

/* The attempt's easy handle has left the multi handle: libcurl is done
 * reading the URL handle. */
static void url_release(ord_req *r)
{
    if (r->url_ent)
        r->url_ent->users--;
    r->url_ent = NULL;
}

static curl_socket_t on_open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *a);
static int on_close_socket(void *clientp, curl_socket_t fd);

static void setup_easy(engine *e, CURL *h, ord_req *r)
{
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_SHARE, e->share);
    r->url_ent = url_take(e, r->url);
    if (r->url_ent)
        curl_easy_setopt(h, CURLOPT_CURLU, r->url_ent->h);
    else
        curl_easy_setopt(h, CURLOPT_URL, r->url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, r->body);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, r->headers);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(h, CURLOPT_PRIVATE, r);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, r->timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, r->connect_timeout_ms);
    curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, r->max_response);
    curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    /* Over TLS, ALPN tells at the handshake whether HTTP/2 multiplexing is
     * on: wait for that rather than open a second connection. Over plain
     * HTTP/1.1 the answer would only come with the first response, so a
     * stalled call would hold back the next one: never wait there. */
    curl_easy_setopt(h, CURLOPT_PIPEWAIT, strncasecmp(r->url, "https://", 8) == 0 ? 1L : 0L);
    /* A judge call can sit silent for minutes: keep NAT entries alive. */
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, 30L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, 15L);
    curl_easy_setopt(h, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    curl_easy_setopt(h, CURLOPT_OPENSOCKETDATA, e);
    curl_easy_setopt(h, CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
    curl_easy_setopt(h, CURLOPT_CLOSESOCKETDATA, e);
    /* Set even when empty: then libcurl does not look in the environment. */
    curl_easy_setopt(h, CURLOPT_PROXY, r->proxy ? r->proxy : "");
    if (r->proxy) /* the CONNECT to a proxy does not carry the header list */
        curl_easy_setopt(h, CURLOPT_USERAGENT, ORD_USER_AGENT);
    curl_easy_setopt(h, CURLOPT_NOPROXY, r->noproxy ? r->noproxy : "");
    if (r->cainfo)
        curl_easy_setopt(h, CURLOPT_CAINFO, r->cainfo);
}

/* ---- request lifecycle on the engine thread ---- */
static void count_status(long status)
{
    if (status > 0 && status < ORD_HTTP_STATUS_END)
        g_stats.status_count[status]++;
}

/* Calls on the wire, and calls waiting for a slot or a retry; g_stats_mu held. */
static void set_gauges_locked(const engine *e)
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

/* Only the parsed result travels on: the body buffer stays with the engine. */
static void release_buf(engine *e, ord_req *r)
{
    if (r->buf && r->buf_cap <= SPARE_MAX_CAP && e->n_spare < SPARE_BUFS)
        e->spare[e->n_spare++] = (struct spare){r->buf, r->buf_cap};
    else
        free(r->buf);
    r->buf = NULL;
    r->buf_len = r->buf_cap = 0;
}

/* The engine's reference goes to the channel (or is dropped if cancelled).
 * http_status: the last attempt's, to count (0: none). */
static void hedge_drop(engine *e, ord_req *h);

static void finish(engine *e, ord_req *r, ord_reason reason, const ord_usage *u, long http_status)
{
    while (r->partner)
        hedge_drop(e, r->partner); /* first: a hedge borrows what r owns */
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
        release_buf(e, r);
    double ms = (double)(ord_now_ms() - r->t_submit_ms);
    pthread_mutex_lock(&g_stats_mu);
    count_status(http_status);
    /* Gauges first: whoever reads stats() after this call returns must not
     * still see it in flight. */
    set_gauges_locked(e);
    if (reason == ORD_CANCELLED) {
        g_stats.cancelled++;
    } else {
        if (reason == ORD_OK)
            g_stats.succeeded++;
        else
            g_stats.failed++;
        g_stats.by_reason[reason]++;
        hist_add(ms);
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

static void hedge_lost_start(engine *e, ord_req *h);

static void start(engine *e, ord_req *r)
{
    CURL *h = easy_get(e);
    if (!r->buf && e->n_spare) {
        struct spare sp = e->spare[--e->n_spare];
        r->buf = sp.buf;
        r->buf_cap = sp.cap;
    }
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
        hedge_lost_start(e, r);
        return;
    }
    if (!h) {
        ord_req_fail(r, ORD_CONNECTION, 0, "could not create a libcurl handle (out of memory)");
        finish(e, r, ORD_CONNECTION, NULL, 0);
        return;
    }
    setup_easy(e, h, r);
    if (curl_multi_add_handle(e->multi, h) != CURLM_OK) {
        easy_put(e, h);
        url_release(r);
        if (r->is_hedge) {
            hedge_lost_start(e, r);
            return;
        }
        ord_req_fail(r, ORD_CONNECTION, 0, "libcurl refused the transfer");
        finish(e, r, ORD_CONNECTION, NULL, 0);
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

static void detach(engine *e, ord_req *r)
{
    curl_multi_remove_handle(e->multi, r->easy);
    easy_put(e, r->easy);
    r->easy = NULL;
    url_release(r);
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
static ord_reason attempt_outcome(ord_req *r, CURLcode rc, long status, ord_usage *usage)
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
static void conclude(engine *e, ord_req *r, ord_reason reason, const ord_usage *usage, long status, int64_t now,
                     const ord_req *timed)
{
    if (reason == ORD_OK) {
        ord_gov_succeeded(r->gov, (ord_req *)timed, now, ord_engine_get_limit());
        ord_hest_record(r->hest, now - timed->t_attempt_ms);
        finish(e, r, ORD_OK, usage, status);
        return;
    }
    if (ord_rate_limit_answer(r, reason))
        ord_hest_rate_limited(r->hest, now); /* also when the governor is off */
    int64_t due = now;
    switch (ord_policy_after(r->gov, r, &reason, status, now, &e->rng, &due)) {
    case ORD_NEXT_REQUEUE:
        /* Behind the calls already waiting: at the front, a call that keeps
         * being turned away would take the one slot a cut left, every time. */
        pend_push_back(e, r);
        pthread_mutex_lock(&g_stats_mu);
        count_status(status);
        g_stats.rate_limited++;
        pthread_mutex_unlock(&g_stats_mu);
        return;
    case ORD_NEXT_RETRY:
        r->due_ms = due;
        if (heap_push(e, r) == 0) {
            pthread_mutex_lock(&g_stats_mu);
            count_status(status);
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
    finish(e, r, reason, usage, status);
}

/* ---- hedges: a second attempt of a slow call (hedge.c says when) ----
 *
 * A hedge is an ord_req of its own (its transfer, buffer and outcome) that
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
 *   first (finish()), so a hedge never outlives what it borrows.
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
    release_buf(e, h);
    /* borrowed from the call: not h's to free */
    h->url = h->body = h->cainfo = h->proxy = h->noproxy = h->secret = h->model = NULL;
    h->headers = NULL;
    h->shared_headers = NULL;
    h->partner = NULL;
    ord_req_decref(h);
}

/* The hedge could not get a transfer: as if it had never been sent. */
static void hedge_lost_start(engine *e, ord_req *h)
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
    detach(e, a);
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

static void hedge_drop(engine *e, ord_req *h)
{
    if (h->state == ORD_ST_PENDING) {
        pend_unlink(e, h);
        ord_hedge_refund(e->hedges); /* never sent */
    } else if (h->state == ORD_ST_ACTIVE) {
        abort_attempt(e, h);
    }
    hedge_free(e, h);
}

/* Call p's own attempt failed (reason) while it has hedges. 1: those on the
 * wire stand in and p waits for them; 0: they are gone, p goes on alone. */
static int stand_aside(engine *e, ord_req *p, ord_reason reason)
{
    int rate_limited = ord_rate_limit_answer(p, reason);
    for (ord_req *h = p->partner, *next; h; h = next) {
        next = h->sibling;
        if (h->state != ORD_ST_ACTIVE || rate_limited)
            hedge_drop(e, h);
    }
    if (!p->partner)
        return 0;
    p->state = ORD_ST_HEDGED;
    return 1;
}

/* Hedge h's attempt ended (h is off the wire already). */
static void hedge_done(engine *e, ord_req *h, CURLcode rc, long status, int64_t now)
{
    ord_req *p = h->partner;
    ord_usage u = {0};
    ord_reason reason = attempt_outcome(h, rc, status, &u);
    if (atomic_load(&p->cancelled)) {
        /* cancel_one will finish a call still on the wire; one waiting for
         * this hedge has nothing left to wait for */
        hedge_free(e, h);
        if (p->state == ORD_ST_HEDGED)
            finish(e, p, ORD_CANCELLED, NULL, status);
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
            release_buf(e, p);
            p->buf = h->buf;
            p->buf_len = h->buf_len;
            p->buf_cap = h->buf_cap;
            h->buf = NULL;
            h->buf_len = h->buf_cap = 0;
        }
        hedge_unlink(h); /* finish drops the other hedges, not h: it still times the success */
        conclude(e, p, ORD_OK, &u, status, now, h);
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
            hedge_drop(e, p->partner);
        p->state = ORD_ST_ACTIVE; /* as it was when its attempt ended */
        conclude(e, p, reason, &u, status, now, p);
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
    count_status(status);
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
    pend_push_front(e, h);
    p->hedged++;
}

static void on_done(engine *e, ord_req *r, CURLcode rc)
{
    long status = 0;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    int64_t now = ord_now_ms();
    int slot = r->attempts - 1 < ORD_ATTEMPT_LOG ? r->attempts - 1 : ORD_ATTEMPT_LOG - 1;
    r->log[slot] = (ord_attempt){status, (int)rc, (uint32_t)(now - r->t_attempt_ms)};
    detach(e, r);

    if (r->is_hedge) {
        hedge_done(e, r, rc, status, now);
        return;
    }
    if (atomic_load(&r->cancelled)) {
        finish(e, r, ORD_CANCELLED, NULL, status);
        return;
    }
    ord_usage usage = {0};
    ord_reason reason = attempt_outcome(r, rc, status, &usage);
    if (r->partner && reason != ORD_OK && stand_aside(e, r, reason))
        return;
    conclude(e, r, reason, &usage, status, now, r);
}

/* Take r out of whichever engine structure holds it. Returns 0 when it had
 * finished already (its result is simply not delivered). */
static int take_out(engine *e, ord_req *r)
{
    switch (r->state) {
    case ORD_ST_PENDING:
        pend_unlink(e, r);
        return 1;
    case ORD_ST_ACTIVE:
        detach(e, r);
        return 1;
    case ORD_ST_BACKOFF:
        heap_remove(e, r);
        return 1;
    case ORD_ST_HEDGED: /* in no structure: its hedge goes when it finishes */
        return 1;
    default:
        return 0;
    }
}

static void cancel_one(engine *e, ord_req *r)
{
    if (take_out(e, r))
        finish(e, r, ORD_CANCELLED, NULL, 0);
}

static void fail_shutdown(engine *e, ord_req *r)
{
    if (r->is_hedge)
        r = r->partner; /* the call fails; finishing it takes its hedges along */
    take_out(e, r);
    ord_req_fail(r, ORD_SHUTDOWN, 0, "the interpreter is exiting");
    finish(e, r, ORD_SHUTDOWN, NULL, 0);
}

static void fail_everything(engine *e, ord_req *inbox)
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

static void publish_gauges(engine *e)
{
    pthread_mutex_lock(&g_stats_mu);
    set_gauges_locked(e);
    pthread_mutex_unlock(&g_stats_mu);
}

/* ---- libcurl's sockets and timer, on our epoll set ----
 *
 * Per fd, a byte of state. A kept-alive connection stays in the epoll set
 * between calls: libcurl drops its interest (CURL_POLL_REMOVE) when a
 * transfer ends and asks again when the next one starts, and following that
 * literally costs three epoll_ctl calls per call (docs/TUNING.md). That is safe only for sockets whose
 * close we see, so libcurl opens and closes its connections through our
 * callbacks (FD_OURS); any other fd it hands us (the threaded resolver's)
 * is added and deleted exactly as asked. */
enum {
    FD_IN = 1, FD_OUT = 2, /* the events registered */
    FD_REG = 4,            /* in the epoll set */
    FD_WANT = 8,           /* libcurl is waiting on it now */
    FD_OURS = 16,          /* opened by on_open_socket: its close comes to on_close_socket */
};

static unsigned char *fd_slot(engine *e, curl_socket_t fd)
{
    if (fd < 0)
        return NULL;
    if ((size_t)fd >= e->watched_cap) {
        size_t cap = e->watched_cap ? e->watched_cap : 1024;
        while (cap <= (size_t)fd)
            cap *= 2;
        atomic_store(&e->watched_moving, 1);
        unsigned char *w = realloc(e->watched, cap);
        if (!w) {
            atomic_store(&e->watched_moving, 0);
            return NULL;
        }
        memset(w + e->watched_cap, 0, cap - e->watched_cap);
        e->watched = w;
        e->watched_cap = cap;
        atomic_store(&e->watched_moving, 0);
    }
    return &e->watched[fd];
}

static unsigned fd_state(const engine *e, int fd)
{
    return fd >= 0 && (size_t)fd < e->watched_cap ? e->watched[fd] : 0;
}

static int fd_register(engine *e, curl_socket_t fd, unsigned mask)
{
    unsigned char *s = fd_slot(e, fd);
    if (!s)
        return -1;
    if ((*s & (FD_OURS | FD_REG)) == (FD_OURS | FD_REG) && (*s & (FD_IN | FD_OUT)) == mask)
        return 0;
    struct epoll_event ev = {0};
    ev.data.fd = fd;
    ev.events = ((mask & FD_IN) ? EPOLLIN : 0) | ((mask & FD_OUT) ? EPOLLOUT : 0);
    int op = (*s & FD_REG) ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(e->ep, op, fd, &ev) < 0) {
        /* Our record can be wrong only for an fd whose close we did not
         * see: the kernel knows better, try the other way. */
        int other = op == EPOLL_CTL_ADD ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
        if (epoll_ctl(e->ep, other, fd, &ev) < 0)
            return -1;
    }
    *s = (unsigned char)((*s & FD_OURS) | FD_REG | mask);
    return 0;
}

/* Deleting matters after a fork: the child's copy of a socket keeps its
 * registration here alive past our close. */
static void fd_unregister(engine *e, curl_socket_t fd)
{
    if (fd_state(e, fd) & FD_REG)
        epoll_ctl(e->ep, EPOLL_CTL_DEL, fd, NULL);
    if (fd >= 0 && (size_t)fd < e->watched_cap)
        e->watched[fd] &= FD_OURS;
}

/* CURLMOPT_SOCKETFUNCTION */
static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    (void)socketp;
    engine *e = userp;
    if (what == CURL_POLL_REMOVE) {
        unsigned st = fd_state(e, fd);
        if ((st & FD_OURS) && !(st & FD_OUT))
            e->watched[fd] &= (unsigned char)~FD_WANT; /* parked: see the top of this part */
        else
            fd_unregister(e, fd);
        return 0;
    }
    unsigned mask = ((what & CURL_POLL_IN) ? FD_IN : 0) | ((what & CURL_POLL_OUT) ? FD_OUT : 0);
    if (fd_register(e, fd, mask) < 0)
        return -1;
    e->watched[fd] |= FD_WANT;
    return 0;
}

/* CURLOPT_OPENSOCKETFUNCTION: the default's socket(), plus close-on-exec
 * (a subprocess of the trainer has no use for our connections). */
static curl_socket_t on_open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *a)
{
    engine *e = clientp;
    (void)purpose;
    int fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
    if (fd < 0)
        return CURL_SOCKET_BAD;
    unsigned char *s = fd_slot(e, fd);
    if (!s) {
        close(fd);
        return CURL_SOCKET_BAD;
    }
    *s = FD_OURS; /* a new socket: what the number meant before is gone */
    return fd;
}

/* CURLOPT_CLOSESOCKETFUNCTION */
static int on_close_socket(void *clientp, curl_socket_t fd)
{
    engine *e = clientp;
    fd_unregister(e, fd);
    if (fd >= 0 && (size_t)fd < e->watched_cap)
        e->watched[fd] = 0;
    return close(fd);
}

/* CURLMOPT_TIMERFUNCTION: libcurl wants socket_action(TIMEOUT) then. */
static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    engine *e = userp;
    e->timer_due = timeout_ms < 0 ? -1 : ord_now_ms() + timeout_ms;
    return 0;
}

static int reap(engine *e)
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

/* A new call enters its endpoint's queue. */
static void admit(engine *e, ord_req *r)
{
    r->gov = gov_for(e, r);
    if (!r->gov) {
        ord_req_fail(r, ORD_CONNECTION, 0, "out of memory for the endpoint's governor");
        finish(e, r, ORD_CONNECTION, NULL, 0);
        return;
    }
    r->gov->calls_live++; /* until finish: a call in backoff still points at it */
    r->hest = ord_hest_get(e->hedges, r->gov, r->model);
    pend_push_back(e, r);
}

/* Once OPENROUTER_MAX_COST is spent, nothing more goes on the wire. */
static int budget_spent(const engine *e)
{
    double mc = ord_policy_max_cost();
    return mc > 0 && e->cost >= mc;
}

static void fail_budget(engine *e, ord_req *r)
{
    char msg[160];
    snprintf(msg, sizeof msg, "OPENROUTER_MAX_COST is spent (%.6g of %.6g credits): the call was not sent",
             e->cost, ord_policy_max_cost());
    ord_req_fail(r, ORD_BUDGET, 0, msg);
    finish(e, r, ORD_BUDGET, NULL, 0);
}

/* Gives each attempt that has run past its endpoint and model's delay a
 * hedge, when hedge.c allows one, and sets when to look again: at the
 * earliest time another attempt comes due, and at least every floor (an
 * attempt that starts later comes due no sooner than a floor after now). */
#define HEDGE_SCAN_MS 100
static void hedge_scan(engine *e, int64_t now)
{
    if (now < e->hedge_scan_ms)
        return;
    int64_t next = now + HEDGE_SCAN_MS;
    if (ord_hedge_quantile() > 0 && !budget_spent(e)) {
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
            if (budget_spent(e)) {
                while (g->pend_head) {
                    ord_req *r = g->pend_head;
                    if (r->is_hedge) {
                        hedge_drop(e, r);
                        continue;
                    }
                    pend_unlink(e, r);
                    fail_budget(e, r);
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
            pend_unlink(e, r);
            start(e, r);
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
                cancel_one(e, c);
                ord_req_decref(c);
            }
            fail_everything(e, inbox);
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
            cancel_one(e, c);
            ord_req_decref(c); /* the cancel list's reference */
        }
        int64_t now = ord_now_ms();
        while (e->heap_len && e->heap[0]->due_ms <= now) {
            ord_req *r = e->heap[0];
            heap_remove(e, r);
            pend_push_front(e, r);
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
        hedge_scan(e, now);
        int64_t gate_due = start_ready(e, now, limit);
        if (e->timer_due >= 0 && e->timer_due <= ord_now_ms()) {
            e->timer_due = -1;
            curl_multi_socket_action(e->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        }
        int finished = reap(e);
        publish_gauges(e);
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
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == e->wake_fd) {
                uint64_t v;
                ssize_t got = read(e->wake_fd, &v, sizeof v);
                (void)got;
                continue;
            }
            unsigned st = fd_state(e, fd);
            if (!(st & FD_WANT)) {
                /* A parked connection that the server closed (or wrote to
                 * unasked): libcurl finds out when it next picks it, so
                 * stop listening until then. Or a stale registration. */
                if (st & FD_REG)
                    fd_unregister(e, fd);
                else
                    epoll_ctl(e->ep, EPOLL_CTL_DEL, fd, NULL);
                continue;
            }
            uint32_t x = evs[i].events;
            int flags = ((x & EPOLLIN) ? CURL_CSELECT_IN : 0) | ((x & EPOLLOUT) ? CURL_CSELECT_OUT : 0) |
                        ((x & (EPOLLERR | EPOLLHUP)) ? CURL_CSELECT_ERR : 0);
            curl_multi_socket_action(e->multi, fd, flags, &running);
        }
        reap(e);
    }
    return NULL;
}

/* ---- lifecycle, called from any thread ---- */

static void engine_free(engine *e)
{
    for (size_t i = 0; i < e->pool_len; i++)
        curl_easy_cleanup(e->pool[i]);
    for (int i = 0; i < e->n_spare; i++)
        free(e->spare[i].buf);
    for (int i = 0; i < URL_CACHE; i++) {
        curl_url_cleanup(e->urls[i].h);
        free(e->urls[i].text);
    }
    for (ord_gov *g = e->govs, *n; g; g = n) {
        n = g->next;
        ord_gov_free(g);
    }
    ord_hedges_free(e->hedges);
    free(e->pool);
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
    curl_multi_setopt(e->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(e->multi, CURLMOPT_SOCKETDATA, e);
    curl_multi_setopt(e->multi, CURLMOPT_TIMERFUNCTION, on_timer);
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

double ord_engine_cost(void)
{
    pthread_mutex_lock(&g_stats_mu);
    double c = g_stats.cost;
    pthread_mutex_unlock(&g_stats_mu);
    return c;
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
 * opened through on_open_socket are known to be ours; if the fork caught
 * the engine thread growing watched[], the table may be freed memory, and
 * those sockets stay open rather than risk closing one of the child's own.
 * libcurl's internal descriptors (its resolver's, its wake-up pair) are not
 * known here and stay. */
static void close_inherited(engine *e)
{
    if (!atomic_load(&e->watched_moving))
        for (size_t fd = 0; fd < e->watched_cap; fd++)
            if (e->watched[fd] & FD_OURS)
                close((int)fd);
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
    pthread_mutex_init(&g_stats_mu, NULL);
    memset(&g_stats, 0, sizeof g_stats);
    memset(g_hist, 0, sizeof g_hist);
    atomic_fetch_add(&ord_fork_generation, 1);
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
