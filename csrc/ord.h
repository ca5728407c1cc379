/*
 * ord.h - the one internal header of openrouter_direct's extension.
 *
 * The data path, one file per stage (docs/ARCHITECTURE.md walks it):
 *   module.c    Python glue: argument checks, submit/call/cancel/stats, module state.
 *   request.c   a Python call -> a ready-to-send request (GIL held), with:
 *     env.c       the environment a call reads, in one pass (and libcurl's proxy rules);
 *     endpoint.c  the key and base URL, URL checks, model-name mapping;
 *     jsonw.c     the JSON writer the body is written with;
 *     headers.c   the header list, shared between calls that send the same one;
 *     reqlife.c   a request's reference count, and freeing what it owns.
 *   engine.c    the native engine thread: its lifecycle and event loop, the
 *               process-wide cap (never touches Python), with, sharing
 *               engine_int.h:
 *     call.c      a call's attempts: start, outcome, retry or finish, cancel;
 *     hedge_run.c hedges on the wire: launch, who wins, abort the other;
 *     queue.c     per-endpoint pending lists and governors, the backoff heap;
 *     handles.c   easy handles and their callbacks, URL cache, buffer pool;
 *     sockets.c   libcurl's sockets and timer on the engine's epoll set;
 *     stats.c     counters, the latency histogram, the published gauges.
 *   policy.c    what to do after an attempt: the failure table, the retry
 *               decision, backoff, and the governor (adaptive concurrency,
 *               cooldowns, rate-limit waits, the cost guard). No GIL.
 *   hedge.c     when a slow attempt gets a second one (hedged requests): the
 *               latency estimate, the trigger, the budget. No GIL.
 *   response.c  response body -> content / error (no GIL): the cJSON path and
 *               the redaction of the key from messages; the usual reply goes to
 *     reader.c    the one-pass reader of a successful reply's usual shape.
 *   deliver.c   completion queues: engine -> waiter, in batches (any thread).
 *   channel.c   the Python Channel type: a loop's queue, resolving its futures.
 *   metrics.c   the engine's figures as Python objects: stats(), and the
 *               latency histogram for od.metrics() intervals.
 *
 * Within a stage the calls run one way: request.c -> endpoint.c -> env.c,
 * request.c -> headers.c -> reqlife.c, request.c -> jsonw.c (which needs
 * nothing); response.c -> reader.c; channel.c -> deliver.c; engine.c ->
 * call.c <-> hedge_run.c -> queue.c, handles.c -> sockets.c, stats.c (the
 * one pair that calls both ways: engine_int.h says why).
 *
 * The rule that keeps it correct: a struct ord_req never points at a Python
 * object. Python references live only in structures touched with the GIL held
 * (channels' future maps, module state); the engine sees plain C memory.
 */
#ifndef ORD_H
#define ORD_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

/* setup.py defines it from openrouter_direct.__version__, the one place the
 * version is written; the fuzzing harnesses, built without setup.py, send a
 * bare name. */
#ifndef ORD_USER_AGENT
#define ORD_USER_AGENT "openrouter_direct"
#endif

/* ---- limits and defaults, named once */
/* The reason a header is refused (headers.c); the request fuzzer checks that
 * a refusal says it. */
#define ORD_BAD_HEADER_MESSAGE                                                                     \
    "a header value contains CR or LF (OPENROUTER_TITLE, OPENROUTER_REFERER, the API key or "      \
    "extra_headers); the call was not sent"
#define ORD_RETRY_AFTER_CAP_MS 60000      /* longest Retry-After honoured */
#define ORD_RATE_LIMIT_WAIT_S 600.0       /* OPENROUTER_RATE_LIMIT_WAIT default */
#define ORD_DEFAULT_BASE "https://openrouter.ai/api/v1" /* OPENAI_API_BASE default */
#define ORD_DEFAULT_TIMEOUT_S 600.0       /* LITELLM_DEFAULT_TIMEOUT default, LiteLLM's */
#define ORD_CONNECT_TIMEOUT_MAX_MS 10000  /* a connect gets at most this of the timeout */
#define ORD_MAX_RETRIES_DEFAULT 5         /* num_retries default, DR-Tulu's */
#define ORD_MAX_RETRIES_CAP 1000          /* more num_retries count as this many */
#define ORD_MAX_RESPONSE_DEFAULT (64.0 * 1024 * 1024) /* OPENROUTER_MAX_RESPONSE_BYTES default */
#define ORD_HTTP_STATUS_END 600           /* statuses counted one by one: 1..599 */
#define ORD_HEDGE_DEFAULT_Q 0.995         /* OPENROUTER_HEDGE default: p99.5 (docs/HEDGING.md) */
#define ORD_HEDGE_DEFAULT_BUDGET 0.05     /* OPENROUTER_HEDGE_BUDGET default */

/* ---- JSON strings, 16 bytes at a time ---- */

/* The first byte in [p, end) that a JSON string must escape (a control
 * character, '"' or '\\'), or end. Prompts are kilobytes of text with an
 * escape every line or so, so the scan goes 16 bytes at a time (SSE2, part of
 * every x86-64) or 8 (the "has a zero byte" trick, elsewhere); in both, the
 * lowest flagged byte is exact. Used to write strings (jsonw.c) and to
 * read them (reader.c). */
#if defined(__SSE2__)
#include <emmintrin.h>
static inline const unsigned char *ord_plain_run(const unsigned char *p, const unsigned char *end)
{
    const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'), ctl = _mm_set1_epi8(0x1f);
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)p);
        __m128i m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, bslash)),
                                 _mm_cmpeq_epi8(_mm_max_epu8(x, ctl), ctl)); /* x <= 0x1f */
        int bits = _mm_movemask_epi8(m);
        if (bits)
            return p + __builtin_ctz((unsigned)bits);
        p += 16;
    }
    while (p < end && *p >= 0x20 && *p != '"' && *p != '\\')
        p++;
    return p;
}
#else
static inline const unsigned char *ord_plain_run(const unsigned char *p, const unsigned char *end)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    while (end - p >= 8) {
        uint64_t x;
        memcpy(&x, p, 8);
        uint64_t q = x ^ (ones * '"'), b = x ^ (ones * '\\');
        uint64_t t = ((x - ones * 0x20) | (q - ones) | (b - ones)) & ~x & highs;
        if (t) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            return p + (__builtin_ctzll(t) >> 3);
#else
            break;
#endif
        }
        p += 8;
    }
    while (p < end && *p >= 0x20 && *p != '"' && *p != '\\')
        p++;
    return p;
}
#endif

/* ---- failure reasons: one table (policy.c) maps each to its name, its
 * retry decision and the strict-mode exception class. */
typedef enum {
    ORD_OK = 0,
    ORD_HTTP_STATUS,      /* non-2xx HTTP status */
    ORD_PROVIDER_ERROR,   /* HTTP 200 whose body carries an error object */
    ORD_CONNECTION,       /* refused, reset, closed before the whole response */
    ORD_TIMEOUT,          /* an attempt ran past its timeout */
    ORD_INVALID_RESPONSE, /* a complete 2xx reply that is not a chat completion */
    ORD_TOO_LARGE,        /* reply larger than OPENROUTER_MAX_RESPONSE_BYTES */
    ORD_TLS,              /* certificate or handshake failure */
    ORD_CONFIG,           /* no API key */
    ORD_BAD_URL,          /* the base URL is malformed or of an unsupported scheme */
    ORD_BAD_HEADER,       /* CR/LF in a header value */
    ORD_SHUTDOWN,         /* interpreter exiting */
    ORD_CANCELLED,        /* the awaiting task was cancelled */
    ORD_RATE_LIMITED,     /* rate-limited past OPENROUTER_RATE_LIMIT_WAIT */
    ORD_BUDGET,           /* OPENROUTER_MAX_COST spent: refused before sending */
    ORD_REASON_COUNT
} ord_reason;

typedef struct {
    const char *name;      /* as logged and as counted in stats()["failed_by_reason"] */
    int retryable;         /* -1: decided by the HTTP/error code */
    const char *exc_name;  /* strict-mode class in openrouter_direct.errors; NULL: by code */
} ord_reason_info;

const ord_reason_info *ord_reason_get(ord_reason r);
int ord_status_retryable(long code);
const char *ord_status_exc_name(long code);

/* ---- one attempt, as kept for the DEBUG log */
typedef struct {
    long status;      /* HTTP status, 0 when none arrived */
    int curl_code;    /* CURLcode of the attempt */
    uint32_t ms;      /* wall milliseconds of the attempt */
} ord_attempt;

#define ORD_ATTEMPT_LOG 16

struct ord_chan;
struct ord_gov;
struct ord_hest;

/* A header list shared between calls that send the same headers (headers.c
 * keeps the last one; reqlife.c frees it with its last reference). */
struct ord_hdrs {
    atomic_int refs;
    struct curl_slist *list;
    char *key, *referer, *title;  /* what the list was built from; NULL: unset */
};

/* Request states, owned by the engine thread. HEDGED: the call's own
 * attempt failed while its hedge was on the wire; it waits for the hedge. */
enum { ORD_ST_NEW, ORD_ST_PENDING, ORD_ST_ACTIVE, ORD_ST_BACKOFF, ORD_ST_DONE, ORD_ST_HEDGED };

/* A call from submission to delivery. Reference counted: the submitter's
 * reference is dropped when the result is delivered (or the call is
 * cancelled); the engine's when it is done with it. */
typedef struct ord_req {
    atomic_int refs;
    atomic_int cancelled;
    uint64_t seq;                 /* request id shown in logs */
    struct ord_chan *chan;        /* counted reference */

    /* what to send (built by request.c, immutable once submitted) */
    char *url;
    char *body;
    size_t body_len;
    struct curl_slist *headers;
    struct ord_hdrs *shared_headers; /* when set, headers belongs to it (headers.c) */
    char *cainfo;                 /* NULL: libcurl's default bundle */
    char *proxy, *noproxy;        /* from the environment (env.c); NULL: none */
    char *secret;                 /* the key, only to redact it from messages */
    char *model;                  /* for log lines */
    long timeout_ms;
    long connect_timeout_ms;
    int max_retries;
    double base_delay_ms, max_delay_ms;
    curl_off_t max_response;
    int strict, debug;
    int auto_mapped;              /* model was a bare OpenAI name given a prefix */
    int plain_http;               /* http:// to a host that is not loopback */
    int raw;                      /* the caller wants the whole reply: buf is kept on success
                                   * and delivered as bytes (strict mode implied) */
    int no_hedge;                 /* hedge=False: never a second attempt */

    /* engine state */
    int state;
    CURL *easy;
    struct ord_url *url_ent; /* engine thread: the parsed URL its attempt uses, or NULL */
    struct ord_req *prev, *next;  /* pending list links */
    size_t heap_idx;              /* position in the backoff heap */
    int64_t due_ms;               /* backoff deadline (monotonic ms) */
    int64_t t_submit_ms, t_attempt_ms;
    int attempts;
    char *buf;                    /* response body of the current attempt */
    size_t buf_len, buf_cap;
    int too_large;
    int64_t retry_after_ms;       /* -1: none sent */
    int should_retry;             /* x-should-retry: -1 unset, 0/1 */
    int inflight_budget;          /* a 402 whose limit_source is the in-flight budget */
    struct ord_gov *gov;          /* engine thread: its endpoint's governor */
    int rl_waits;                 /* attempts turned away by a rate limit (not retries) */
    /* Hedging (hedge_run.c). A hedge is an ord_req of its own whose request
     * fields (url, body, headers, ...) are borrowed from its call: it never
     * outlives the call's time in the engine, since finishing a call drops
     * its hedge first. */
    int is_hedge;
    struct ord_req *partner;      /* a call's newest hedge, or a hedge's call; NULL: none */
    struct ord_req *sibling;      /* a hedge's older sibling (same call) */
    int hedged;                   /* hedges sent for the call's current attempt */
    struct ord_hest *hest;        /* the call's latency estimate (hedge.c), or NULL */
    char errbuf[CURL_ERROR_SIZE];
    ord_attempt log[ORD_ATTEMPT_LOG];

    /* result */
    ord_reason reason;
    long status;                  /* last HTTP status, or error object's code */
    char *content;                /* reply text on success (malloc) */
    size_t content_len;
    char *message;                /* failure description (malloc, key redacted) */
    struct ord_req *done_next;    /* channel completion queue link */
    struct ord_req *cancel_next;  /* engine cancel list link */
} ord_req;

/* ---- reqlife.c: a request's lifetime (any thread) */
ord_req *ord_req_new(void);
void ord_req_incref(ord_req *r);
void ord_req_decref(ord_req *r);
void ord_hdrs_decref(struct ord_hdrs *h);
/* Record a failure that happens before the request reaches the engine. */
void ord_req_fail(ord_req *r, ord_reason reason, long status, const char *msg);
/* Free text or a header list that may hold the key, wiping it first. */
void ord_wipe_free(char *s);
void ord_free_header_list(struct curl_slist *list);

/* ---- response.c: parse one finished attempt (no GIL) */
typedef struct {
    long prompt_tokens, completion_tokens;
    double cost;
    int has_usage;
} ord_usage;

/* Fills r->content or r->message/r->status and returns the reason. */
ord_reason ord_parse_reply(ord_req *r, long http_status, ord_usage *usage);
ord_reason ord_curl_reason(CURLcode code);
char *ord_redact(const char *msg, const char *secret);

/* ---- reader.c: the usual reply in one pass (no GIL) */
/* 1: r->content and *usage are set, the reply is ORD_OK. 0: r and *usage are
 * untouched, and cJSON must read the reply. */
int ord_read_usual(ord_req *r, ord_usage *usage);
/* A JSON number as a C long, or 0 when it is not in [0, max]. */
long ord_sane_long(double d, double max);
/* Sets usage's three numbers, each NULL when absent or not a number: one
 * function for both readers, so that they store usage alike. */
void ord_usage_from(ord_usage *u, const double *prompt, const double *completion, const double *cost);

/* ---- deliver.c: completion queues (any thread) */
typedef struct ord_chan {
    atomic_int refs;
    pthread_mutex_t mu;
    int fd;                       /* eventfd: written when the queue turns non-empty */
    int closed;                   /* under mu: posts are dropped, fd is no longer ours */
    ord_req *head, *tail;         /* completed requests, in order */
} ord_chan;

ord_chan *ord_chan_new(void);     /* NULL with errno set */
void ord_chan_incref(ord_chan *c);
void ord_chan_decref(ord_chan *c);
void ord_chan_post(ord_chan *c, ord_req *r);   /* takes the caller's reference to r */
ord_req *ord_chan_take(ord_chan *c);           /* the whole queue; caller owns the refs */
void ord_chan_close(ord_chan *c);              /* marks closed, closes fd, drops queued */

/* ---- policy.c: retry, backoff and the governor (engine thread, no GIL)
 *
 * One governor per endpoint (request URL + key). The engine owns them and
 * keeps each endpoint's waiting calls in its queue; it asks the governor
 * whether the next one may start, and what to do after each attempt. */
typedef struct ord_gov {
    struct ord_gov *next;
    char *url;                    /* the request URL, as shown in stats() */
    uint64_t key_hash;            /* the key is never kept here, only its hash */
    int key_no;                   /* 1 for the first key seen with this URL, 2 ... */
    ord_req *pend_head, *pend_tail; /* waiting for a slot (engine thread) */
    long n_pending, n_active;
    long calls_live;              /* calls admitted and not finished: it may not go */

    /* control (engine thread only) */
    double limit;                 /* calls on the wire allowed now, 1..cap */
    int slow_start;               /* no rate measured yet: 1 growing fast, 2 after an early signal */
    double rate;                  /* starts per second allowed; 0: not pacing (no signal yet) */
    double rate_max;              /* the start rate the endpoint last turned away */
    double rate_base;             /* the rate set by the last cut */
    double tokens;                /* starts that may leave now, while pacing */
    int64_t tok_ms;               /* when tokens were last filled */
    int64_t epoch_ms;             /* when attempts could go again after the last cut */
    int64_t cut_guard_ms;         /* no second cut before: one round trip */
    int cut_pending;              /* a signal came; the rate is settled when the cooldown ends */
    int cut_probing;              /* ... and it came while probing past the held level */
    int cut_held;                 /* ... and the calls on the wire held starts back before it */
    int64_t held_ms;              /* when the calls on the wire last held a start back */
    long cut_inflight;            /* calls on the wire when it came */
    int64_t cut_at_ms, cut_from_ms; /* when it came; the start of the window it settles on */
    int64_t cool_until_ms;        /* no new attempts before this */
    double srtt_ms;               /* smoothed attempt time of successes */
    int rl_streak;                /* rate-limit answers since the last success */
    uint16_t st_bins[100];        /* attempts started per 100 ms, the last 10 s */
    uint16_t rl_bins[100];         /* of those, answered with a rate-limit signal */
    int64_t bin_t;                /* start of the newest bin */
    int64_t bin_origin_ms;        /* when the bins began counting */
    long shown_limit;             /* last limit reported (DEBUG events) */
    uint64_t rate_limited, waited_calls, succeeded;
    int64_t cooldown_ms;          /* time new attempts were held, in total */
    double cost;

    /* copied by the engine under its stats lock, for stats() */
    struct {
        long limit, in_flight, queued;
        uint64_t rate_limited, waited_calls, succeeded;
        double rate, cooldown_s, cost;
    } pub;
} ord_gov;

typedef enum { ORD_NEXT_FINISH, ORD_NEXT_RETRY, ORD_NEXT_REQUEUE } ord_next;

ord_gov *ord_gov_new(const char *url, uint64_t key_hash, int key_no, long cap);
void ord_gov_free(ord_gov *g);
void ord_gov_reset(ord_gov *g, long cap);  /* back to slow start, no cooldown */
void ord_engine_reset_governors(void);     /* any thread: every endpoint, before the next call */
uint64_t ord_key_hash(const char *key);
/* 0: the next waiting call may start now; >0: not before that time (ms);
 * -1: not until an attempt of this endpoint ends. */
int64_t ord_gov_gate(ord_gov *g, int64_t now, long cap);
void ord_gov_started(ord_gov *g, int64_t now);
/* After an attempt ended with reason (not OK unless ok_ms >= 0): FINISH,
 * RETRY at *due, or REQUEUE (rate-limited: back to the queue, no retry
 * spent). May turn reason into ORD_RATE_LIMITED (with r->message). */
ord_next ord_policy_after(ord_gov *g, ord_req *r, ord_reason *reason, long http_status, int64_t now,
                          uint64_t *rng, int64_t *due);
void ord_gov_succeeded(ord_gov *g, ord_req *r, int64_t now, long cap);
/* Settings, from any thread. */
void ord_policy_configure(int adaptive, double rate_limit_wait_s, double max_cost);
int ord_policy_adaptive(void);
double ord_policy_max_cost(void);
double ord_policy_rate_limit_wait(void);
/* DEBUG events: limit changes, drained by the Python side. */
typedef struct {
    char url[96];
    long from, to;
    char why[24];
} ord_gov_event;
int ord_gov_events_take(ord_gov_event *out, int max);
void ord_policy_after_fork_child(void); /* atfork child: the event ring's lock */
void ord_gov_event_add(const ord_gov *g, long from, long to, const char *why);

/* ---- hedge.c: hedged requests (engine thread, no GIL, but the settings)
 * Settings, from any thread; a negative value leaves one as it is;
 * quantile 0: hedging off. */
void ord_hedge_configure(double quantile, double budget);
double ord_hedge_quantile(void);
double ord_hedge_budget(void);
double ord_hedge_burst(double budget);
typedef struct ord_hedges ord_hedges;  /* the engine's estimates and budget */
typedef struct ord_hest ord_hest;      /* one (endpoint, model)'s latency estimate */
ord_hedges *ord_hedges_new(void);
void ord_hedges_free(ord_hedges *t);
/* The estimate for a call to g with model, counted until ord_hest_put; NULL
 * when out of memory (the call is simply never hedged). */
ord_hest *ord_hest_get(ord_hedges *t, const ord_gov *g, const char *model);
void ord_hest_put(ord_hest *h);
void ord_hest_record(ord_hest *h, int64_t ms);      /* a successful attempt's duration */
void ord_hest_censored(ord_hest *h);                /* an attempt that lost to its hedge */
void ord_hest_rate_limited(ord_hest *h, int64_t now);
/* How long an attempt runs before it is hedged; -1: not now (off, or cold). */
int64_t ord_hest_delay_ms(ord_hest *h);
void ord_hedge_credit(ord_hedges *t);               /* a call ended */
/* 1: a hedge may go now (its token is taken); 0: not now. */
int ord_hedge_take(ord_hedges *t, const ord_gov *g, const ord_hest *h, int64_t now);
void ord_hedge_refund(ord_hedges *t);               /* a hedge that never went */

/* policy.c, for hedge.c and the engine */
int ord_gov_holding(const ord_gov *g, int64_t now, int64_t quiet_ms);
int ord_rate_limit_answer(const ord_req *r, ord_reason reason);

/* ---- the engine: engine.c; the figures (ord_stats, the histogram) in stats.c */
typedef struct {
    uint64_t calls, succeeded, failed, cancelled, retries;
    /* hedges: sent, won, aborted (either attempt, when the other won),
     * failed (a hedge's own failure); what aborted attempts were billed */
    uint64_t hedges, hedges_won, hedges_aborted, hedges_failed;
    double hedge_saved_ms;
    uint64_t hedge_waste_prompt, hedge_waste_completion;
    double hedge_waste_cost;
    uint64_t by_reason[ORD_REASON_COUNT];
    uint64_t status_count[ORD_HTTP_STATUS_END];
    uint64_t prompt_tokens, completion_tokens;
    double cost;
    long in_flight, queued;
    long limit;
    double p50, p95, p99;         /* ms; negative when no data */
    uint64_t rate_limited;        /* rate-limit answers, all endpoints */
} ord_stats;

/* Per-endpoint figures for stats(); fills at most max, returns how many. */
typedef struct {
    char url[512];
    int key_no;
    long limit, in_flight, queued;
    uint64_t rate_limited, waited_calls, succeeded;
    double rate, cooldown_s, cost;  /* rate: starts/s allowed, 0 when not pacing */
} ord_endpoint_stats;
int ord_engine_endpoints(ord_endpoint_stats *out, int max);
double ord_engine_cost(void);          /* usage.cost of every reply so far */

/* 0; -1 when shutting down, -3 when the cost budget is spent (r untouched) */
int ord_engine_submit(ord_req *r);
void ord_engine_cancel(ord_req *r);
void ord_engine_shutdown(void);         /* call without the GIL: joins the thread */
void ord_engine_set_limit(long n);
long ord_engine_get_limit(void);
void ord_engine_snapshot(ord_stats *out);
void ord_engine_count_immediate(ord_req *r);  /* a call that failed before the engine */
void ord_engine_after_fork_child(void);
extern atomic_uint ord_fork_generation;  /* bumped in a forked child (engine.c) */
int64_t ord_now_ms(void);
uint64_t ord_next_seq(void);
/* The latency histogram (every finished, not cancelled call): copies up to n
 * bucket counts into out and returns the number of buckets; a bucket's
 * value in ms is ord_engine_hist_value(b) (its geometric middle). */
size_t ord_engine_hist_copy(uint32_t *out, size_t n);
double ord_engine_hist_value(size_t b);

/* ---- metrics.c (GIL held): stats() and the histogram for od.metrics() */
PyObject *ord_mod_stats(PyObject *module, PyObject *ignored);
PyObject *ord_mod_latency_histogram(PyObject *module, PyObject *ignored);
PyObject *ord_mod_latency_buckets(PyObject *module, PyObject *ignored);

/* ---- env.c (GIL held): the variables a call reads, found in one pass over
 * the environment. A new variable: an entry here and in env.c's env_names. */
enum {
    ORD_E_OPENAI_API_KEY, ORD_E_OPENROUTER_API_KEY, ORD_E_OPENAI_API_BASE,
    ORD_E_OPENROUTER_REFERER, ORD_E_OPENROUTER_TITLE, ORD_E_OPENROUTER_MODEL_MAP,
    ORD_E_LITELLM_DEFAULT_TIMEOUT, ORD_E_OPENROUTER_RETRY_BASE_DELAY,
    ORD_E_OPENROUTER_RETRY_MAX_DELAY, ORD_E_OPENROUTER_MAX_RESPONSE_BYTES,
    ORD_E_OPENROUTER_RAISE_ON_ERROR, ORD_E_SSL_CERT_FILE, ORD_E_CURL_CA_BUNDLE,
    ORD_E_no_proxy, ORD_E_NO_PROXY, ORD_E_http_proxy, ORD_E_https_proxy, ORD_E_HTTPS_PROXY,
    ORD_E_all_proxy, ORD_E_ALL_PROXY,
    ORD_E_COUNT
};

/* Values point into environ, as getenv's do. They stay valid for the whole
 * call even if Python code run meanwhile changes os.environ: glibc's setenv
 * and unsetenv never free a string they replace or remove. */
typedef struct {
    const char *v[ORD_E_COUNT]; /* NULL: unset or empty */
} ord_env;

void ord_env_scan(ord_env *env);
double ord_env_double(const ord_env *env, int which, double dflt);  /* dflt: unset, bad, < 0 */
int ord_env_true(const ord_env *env, int which);                  /* 1, true, yes */
/* The proxy and no_proxy libcurl would take from the environment for base. */
void ord_env_proxy(const ord_env *env, const char *base, const char **proxy, const char **noproxy);
const char *ord_env_cainfo(const ord_env *env);                   /* NULL: libcurl's default */

/* A table of names, looked up by length and bytes (env.c, request.c's kwargs). */
typedef struct {
    const char *name;
    size_t len;
} ord_named;
#define ORD_NAMED(s) {s, sizeof s - 1}
int ord_name_index(const ord_named *table, int count, const char *s, size_t n);  /* -1: absent */

/* ---- endpoint.c (GIL held): where a call goes, with which key */
typedef struct {
    const char *key;              /* NULL: none */
    const char *key_source;       /* "api_key", "OPENAI_API_KEY", "OPENROUTER_API_KEY"; NULL: none */
    const char *base;             /* the base URL */
    int openrouter;               /* openrouter.ai or a subdomain: model names are mapped */
    int plain_http;               /* http:// to a host that is not loopback */
} ord_endpoint;
void ord_endpoint_resolve(ord_endpoint *ep, const char *key, const char *base, const ord_env *env);
char *ord_endpoint_url(const char *base);  /* malloc: base + "/chat/completions" */
/* The model name to send (out holds it when mapped); *auto_mapped: a bare
 * OpenAI name was given the openai/ prefix. */
const char *ord_map_model(const char *map, const char *name, int openrouter, char *out, size_t outsz,
                          int *auto_mapped);
PyObject *ord_mod_endpoint(PyObject *module, PyObject *args);  /* _native.endpoint */

/* ---- jsonw.c (GIL held): JSON text into one growing buffer */
typedef struct {
    char *p;
    size_t len, cap;
    int oom;                      /* an allocation failed: later writes do nothing */
} ord_jw;
int ord_jw_reserve(ord_jw *w, size_t more);
void ord_jw_put(ord_jw *w, const char *s, size_t n);
#define ORD_JW_LIT(w, s) ord_jw_put((w), "" s, sizeof(s) - 1)  /* s: a string literal */
void ord_jw_string(ord_jw *w, const char *s, size_t n);
/* Any JSON-able Python value; -1 with TypeError (naming what) or MemoryError. */
int ord_jw_value(ord_jw *w, PyObject *o, const char *what, int depth);
int ord_dec_ll(char *out, long long v);  /* out: 24 bytes; returns the length */

/* ---- headers.c (GIL held): r->headers, shared or its own. Returns 0, -1
 * (exception set), or 1 (a header with CR/LF: r already failed). */
int ord_take_headers(ord_req *r, const char *key, PyObject *extra, const ord_env *env);

/* ---- request.c (GIL held) */
typedef struct {
    PyObject *model, *user_prompt, *system_prompt, *messages, *kwargs;
    long default_max_tokens;
    int raw;                      /* 7th argument of submit/call: deliver the reply's bytes */
} ord_call_args;

/* Builds a request from the Python call. Returns NULL with a Python
 * exception set for programming errors (TypeError); configuration problems
 * come back as a request already failed (r->reason != ORD_OK). */
ord_req *ord_build_request(const ord_call_args *a);

/* ---- module state (GIL held) */
typedef struct {
    PyTypeObject *channel_type;
    PyObject *channels;          /* dict: event loop -> Channel */
    PyObject *get_running_loop;  /* asyncio._get_running_loop */
    PyObject *fail_hook;         /* callable(info tuple) -> str or exception */
    PyObject *attempt_hook;      /* callable(seq, model, attempts) for DEBUG lines */
    PyObject *debug_enabled;     /* callable() -> bool */
    PyObject *warn_hook;         /* callable(kind, subject, detail): once per (kind, subject) */
    PyObject *warned;            /* set of (kind, subject) already warned about */
    PyObject *str_done, *str_set_result, *str_set_exception, *str_add_reader,
        *str_remove_reader, *str_is_closed, *str_create_future;
    unsigned fork_gen;           /* ord_fork_generation when channels were made */
} ord_state;

ord_state *ord_get_state(PyObject *module);
extern PyType_Spec ord_channel_spec;

/* channel.c: the channel of the running loop, made on first use. */
PyObject *ord_channel_for_loop(PyObject *module, PyObject *loop);
int ord_channel_track(PyObject *channel, ord_req *r, PyObject *future);
int ord_channel_untrack(PyObject *channel, PyObject *key, PyObject *expect, ord_req **out);
void ord_channels_forget_after_fork(PyObject *module);
ord_chan *ord_channel_native(PyObject *channel);
/* The Python value for a finished request: str, or an exception instance
 * (*is_exception set) in strict mode. NULL on error. */
PyObject *ord_result_object(PyObject *module, ord_req *r, int *is_exception);

#endif /* ORD_H */
