/*
 * engine_int.h - what the engine's files share, and no other file sees: the
 * engine struct and the functions one engine file calls in another. Included
 * only by engine.c, call.c, hedge_run.c, queue.c, handles.c, sockets.c and
 * stats.c; the rest of the extension reaches the engine through ord.h's
 * ord_engine_* functions.
 *
 * The rule: everything in struct engine below "engine thread only" is
 * touched by the engine thread alone (so these functions take no lock but
 * the stats lock); other threads go through the inbox and cancel list under
 * e->mu (engine.c). Names here carry the eng_ prefix.
 *
 * The files, callers first: each calls only those below it (and ord.h's
 * ord_now_ms and ord_engine_get_limit), but for the pair call.c <->
 * hedge_run.c: a hedge is an attempt of its call, so finishing a call drops
 * its hedges and a hedge's end concludes its call.
 *   engine.c     lifecycle (start, submit, cancel, shutdown, fork) and the
 *                event loop: admit, start what the gates allow, wait.
 *   call.c       a call on the engine thread: start an attempt, read its
 *                outcome, ask policy.c what next, finish, cancel.
 *   hedge_run.c  hedges on the wire: launch, who wins, abort the other.
 *   queue.c      per-endpoint pending lists, the governor registry, the
 *                backoff heap.
 *   handles.c    easy handles, their setup and callbacks, the URL cache,
 *                the response buffer pool.
 *   sockets.c    libcurl's sockets and timer on our epoll set.
 *   stats.c      counters, the latency histogram, the published gauges.
 */
#ifndef ORD_ENGINE_INT_H
#define ORD_ENGINE_INT_H

#include "ord.h"

#include <sys/epoll.h>


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

/* ---- call.c */
void eng_start(engine *e, ord_req *r);
void eng_detach(engine *e, ord_req *r);
ord_reason eng_attempt_outcome(ord_req *r, CURLcode rc, long status, ord_usage *usage);
void eng_conclude(engine *e, ord_req *r, ord_reason reason, const ord_usage *usage, long status, int64_t now,
                  const ord_req *timed);
void eng_finish(engine *e, ord_req *r, ord_reason reason, const ord_usage *u, long http_status);
int eng_reap(engine *e);
void eng_cancel_one(engine *e, ord_req *r);
void eng_fail_everything(engine *e, ord_req *inbox);
int eng_budget_spent(const engine *e);
void eng_fail_budget(engine *e, ord_req *r);

/* ---- hedge_run.c */
void eng_hedge_drop(engine *e, ord_req *h);
void eng_hedge_lost_start(engine *e, ord_req *h);
int eng_stand_aside(engine *e, ord_req *p, ord_reason reason);
void eng_hedge_done(engine *e, ord_req *h, CURLcode rc, long status, int64_t now);
void eng_hedge_scan(engine *e, int64_t now);

/* ---- queue.c */
void eng_pend_push_back(engine *e, ord_req *r);
void eng_pend_push_front(engine *e, ord_req *r);
void eng_pend_unlink(engine *e, ord_req *r);
ord_gov *eng_gov_for(engine *e, const ord_req *r);
int eng_heap_push(engine *e, ord_req *r);
void eng_heap_remove(engine *e, ord_req *r);

/* ---- handles.c */
CURL *eng_easy_get(engine *e);
void eng_easy_put(engine *e, CURL *h);
void eng_setup_easy(engine *e, CURL *h, ord_req *r);
void eng_url_release(ord_req *r);
void eng_buf_reuse(engine *e, ord_req *r);
void eng_release_buf(engine *e, ord_req *r);
void eng_handles_free(engine *e);

/* ---- sockets.c */
int eng_on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp);
int eng_on_timer(CURLM *multi, long timeout_ms, void *userp);
curl_socket_t eng_on_open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *a);
int eng_on_close_socket(void *clientp, curl_socket_t fd);
void eng_sockets_ready(engine *e, const struct epoll_event *evs, int n);
void eng_sockets_close_inherited(engine *e);

/* ---- stats.c: g_stats and the gauges under g_stats_mu */
extern pthread_mutex_t g_stats_mu;
extern ord_stats g_stats;
void eng_hist_add(double ms);
void eng_count_status(long status);
void eng_set_gauges_locked(const engine *e);
void eng_publish_gauges(engine *e);
void eng_stats_after_fork(void);

#endif /* ORD_ENGINE_INT_H */
