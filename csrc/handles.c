/*
 * handles.c - what an attempt's transfer is made of, kept for reuse: easy
 * handles (a pool of idle ones), their setup and the write and header
 * callbacks (the reply's body, the retry hints), the parsed-URL cache, and
 * the pool of response buffers.
 *
 * The rule: engine thread only; the callbacks run inside libcurl on that
 * thread and touch only their own request. A URL cache entry is replaced
 * only while no transfer uses it (users == 0), since libcurl reads the
 * handle until the transfer is removed from the multi handle.
 */
#include "engine_int.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

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

CURL *eng_easy_get(engine *e)
{
    if (e->pool_len)
        return e->pool[--e->pool_len];
    return curl_easy_init();
}

void eng_easy_put(engine *e, CURL *h)
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
void eng_url_release(ord_req *r)
{
    if (r->url_ent)
        r->url_ent->users--;
    r->url_ent = NULL;
}

void eng_setup_easy(engine *e, CURL *h, ord_req *r)
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
    curl_easy_setopt(h, CURLOPT_OPENSOCKETFUNCTION, eng_on_open_socket);
    curl_easy_setopt(h, CURLOPT_OPENSOCKETDATA, e);
    curl_easy_setopt(h, CURLOPT_CLOSESOCKETFUNCTION, eng_on_close_socket);
    curl_easy_setopt(h, CURLOPT_CLOSESOCKETDATA, e);
    /* Set even when empty: then libcurl does not look in the environment. */
    curl_easy_setopt(h, CURLOPT_PROXY, r->proxy ? r->proxy : "");
    if (r->proxy) /* the CONNECT to a proxy does not carry the header list */
        curl_easy_setopt(h, CURLOPT_USERAGENT, ORD_USER_AGENT);
    curl_easy_setopt(h, CURLOPT_NOPROXY, r->noproxy ? r->noproxy : "");
    if (r->cainfo)
        curl_easy_setopt(h, CURLOPT_CAINFO, r->cainfo);
}

/* Only the parsed result travels on: the body buffer stays with the engine. */
void eng_release_buf(engine *e, ord_req *r)
{
    if (r->buf && r->buf_cap <= SPARE_MAX_CAP && e->n_spare < SPARE_BUFS)
        e->spare[e->n_spare++] = (struct spare){r->buf, r->buf_cap};
    else
        free(r->buf);
    r->buf = NULL;
    r->buf_len = r->buf_cap = 0;
}

/* A kept response buffer for r's next attempt, when r has none. */
void eng_buf_reuse(engine *e, ord_req *r)
{
    if (!r->buf && e->n_spare) {
        struct spare sp = e->spare[--e->n_spare];
        r->buf = sp.buf;
        r->buf_cap = sp.cap;
    }
}

/* engine_free's part: the idle handles, kept buffers and URL entries. */
void eng_handles_free(engine *e)
{
    for (size_t i = 0; i < e->pool_len; i++)
        curl_easy_cleanup(e->pool[i]);
    for (int i = 0; i < e->n_spare; i++)
        free(e->spare[i].buf);
    for (int i = 0; i < URL_CACHE; i++) {
        curl_url_cleanup(e->urls[i].h);
        free(e->urls[i].text);
    }
    free(e->pool);
}
