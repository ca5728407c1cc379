/*
 * response.c - what a finished attempt means. Runs on the engine thread
 * without the GIL: plain C and cJSON only.
 *
 * The one table below is the whole failure policy: for each reason, the name
 * that is logged and counted, whether it is retried, and which strict-mode
 * exception it raises. HTTP statuses (and the codes of error objects that
 * arrive with a 200) are decided by ord_status_retryable /
 * ord_status_exc_name, the same rule openai-python uses (408, 409, 429, 5xx).
 */
#include "ord.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
#define ORD_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ORD_ASAN 1
#endif
#endif
#ifdef ORD_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

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
};

const ord_reason_info *ord_reason_get(ord_reason r)
{
    if ((unsigned)r >= ORD_REASON_COUNT)
        r = ORD_CONNECTION;
    return &reason_table[r];
}

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

ord_reason ord_curl_reason(CURLcode code)
{
    switch (code) {
    case CURLE_OK:
        return ORD_OK;
    case CURLE_OPERATION_TIMEDOUT:
        return ORD_TIMEOUT;
    case CURLE_FILESIZE_EXCEEDED:
        return ORD_TOO_LARGE;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        return ORD_BAD_URL;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
        return ORD_TLS;
    default:
        /* refused, reset, resolve, partial file, recv/send errors, got
         * nothing: the server or the path to it may well be back soon. */
        return ORD_CONNECTION;
    }
}

/* Replace every occurrence of secret in msg: a server or proxy may echo what
 * it was sent, and the key must never reach a log line. */
char *ord_redact(const char *msg, const char *secret)
{
    size_t slen = secret ? strlen(secret) : 0;
    size_t mlen = strlen(msg);
    if (slen < 4 || !strstr(msg, secret))
        return strdup(msg);
    char *out = malloc(mlen + 1); /* "***" is never longer than the secret */
    if (!out)
        return NULL;
    size_t o = 0;
    for (const char *p = msg; *p;) {
        if (strncmp(p, secret, slen) == 0) {
            memcpy(out + o, "***", 3);
            o += 3;
            p += slen;
        } else {
            out[o++] = *p++;
        }
    }
    out[o] = '\0';
    return out;
}

#define MESSAGE_MAX 1024 /* bytes of a failure description kept for the log line */

/* Cut an already redacted text at max bytes. Redaction came first, so a key
 * straddling the cut is gone; but the cut can still end in the head of a
 * later copy of the key that redaction shortened the text into: a tail that
 * is a prefix of the key (4 bytes or more) is masked too. */
static void cut_redacted(char *text, size_t max, const char *secret, int cut_before)
{
    size_t len = strlen(text);
    if (len <= max && !cut_before)
        return;
    if (len > max)
        text[max] = '\0';
    else
        max = len; /* the text was cut before redaction: its tail may be a key's head */
    size_t slen = secret ? strlen(secret) : 0;
    for (size_t k = slen > max ? max : slen; k >= 4 && slen > 0; k--) {
        if (memcmp(text + max - k, secret, k) == 0) {
            memcpy(text + max - k, "***", 4);
            return;
        }
    }
}

static void set_message(ord_req *r, const char *msg)
{
    free(r->message);
    r->message = ord_redact(msg, r->secret);
    if (r->message)
        cut_redacted(r->message, MESSAGE_MAX, r->secret, 0); /* a split UTF-8 sequence is replaced when decoded */
}

/* A short, printable excerpt of a body that is not the JSON we expected.
 * The window read is longer than the excerpt by the key's length, so a key
 * that starts inside the excerpt is redacted whole before the cut. */
static void set_message_excerpt(ord_req *r, const char *prefix)
{
    enum { EXCERPT = 120 };
    size_t extra = r->secret ? strlen(r->secret) : 0;
    size_t n = r->buf_len < EXCERPT + extra ? r->buf_len : EXCERPT + extra;
    size_t plen = strlen(prefix);
    char *tmp = malloc(plen + n + 3);
    if (!tmp)
        return;
    memcpy(tmp, prefix, plen);
    size_t o = plen;
    if (n) {
        tmp[o++] = ':';
        tmp[o++] = ' ';
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)r->buf[i];
            tmp[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : ' ';
        }
    }
    tmp[o] = '\0';
    free(r->message);
    r->message = ord_redact(tmp, r->secret);
    free(tmp);
    if (r->message)
        cut_redacted(r->message, plen + 2 + EXCERPT, r->secret, n < r->buf_len);
}

/* A JSON number as a C long, or 0 when it is not a sane integer code or
 * count: converting an out-of-range double is undefined behaviour in C. */
static long sane_long(double d, double max)
{
    return (d >= 0 && d <= max) ? (long)d : 0;
}

/* {"error": {"code": 502, "message": "...", "metadata": {"provider_name": ...}}}
 * Returns 1 when obj carries an error object; sets r->status from its code
 * (0 when it has none) and r->message. */
static int take_error_object(ord_req *r, const cJSON *root)
{
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(root, "error");
    if (!err || cJSON_IsNull(err))
        return 0;
    long code = 0;
    const char *msg = NULL;
    const char *provider = NULL;
    if (cJSON_IsObject(err)) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(err, "code");
        if (cJSON_IsNumber(c))
            code = sane_long(c->valuedouble, 999);
        else if (cJSON_IsString(c))
            code = sane_long(strtod(c->valuestring, NULL), 999);
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(err, "message");
        if (cJSON_IsString(m))
            msg = m->valuestring;
        const cJSON *meta = cJSON_GetObjectItemCaseSensitive(err, "metadata");
        const cJSON *pn = cJSON_GetObjectItemCaseSensitive(meta, "provider_name");
        if (cJSON_IsString(pn))
            provider = pn->valuestring;
    } else if (cJSON_IsString(err)) {
        msg = err->valuestring;
    }
    if (!msg)
        msg = "error object without a message";
    size_t n = strlen(msg) + (provider ? strlen(provider) : 0) + 16;
    char *full = malloc(n);
    if (full) {
        snprintf(full, n, "%s%s%s%s", msg, provider ? " (provider " : "", provider ? provider : "",
                 provider ? ")" : "");
        set_message(r, full);
        free(full);
    }
    r->status = code;
    return 1;
}

/* content may be a string, null, or a list of parts whose texts are joined. */
static int take_content(ord_req *r, const cJSON *content)
{
    if (!content || cJSON_IsNull(content)) {
        r->content = strdup("");
        r->content_len = 0;
        return r->content != NULL;
    }
    if (cJSON_IsString(content)) {
        r->content_len = strlen(content->valuestring);
        r->content = malloc(r->content_len + 1);
        if (!r->content)
            return 0;
        memcpy(r->content, content->valuestring, r->content_len + 1);
        return 1;
    }
    if (!cJSON_IsArray(content))
        return 0;
    size_t total = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, content)
    {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (cJSON_IsString(t))
            total += strlen(t->valuestring);
    }
    r->content = malloc(total + 1);
    if (!r->content)
        return 0;
    size_t o = 0;
    cJSON_ArrayForEach(part, content)
    {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (cJSON_IsString(t)) {
            size_t n = strlen(t->valuestring);
            memcpy(r->content + o, t->valuestring, n);
            o += n;
        }
    }
    r->content[o] = '\0';
    r->content_len = o;
    return 1;
}

static void take_usage(const cJSON *root, ord_usage *u)
{
    const cJSON *usage = cJSON_GetObjectItemCaseSensitive(root, "usage");
    if (!cJSON_IsObject(usage))
        return;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(usage, "prompt_tokens");
    if (cJSON_IsNumber(v))
        u->prompt_tokens = sane_long(v->valuedouble, 1e15);
    v = cJSON_GetObjectItemCaseSensitive(usage, "completion_tokens");
    if (cJSON_IsNumber(v))
        u->completion_tokens = sane_long(v->valuedouble, 1e15);
    v = cJSON_GetObjectItemCaseSensitive(usage, "cost");
    if (cJSON_IsNumber(v) && isfinite(v->valuedouble))
        u->cost = v->valuedouble;
    u->has_usage = 1;
}

/* ---- an arena for cJSON's allocations while a reply is parsed ----
 *
 * cJSON allocates every node, key and string of a tree on its own: about 70
 * malloc/free pairs for one chat completion, two thirds of all the engine
 * thread's mallocs (perf probe on malloc) and several µs per call. While a
 * thread parses a reply here, those allocations come from its arena and are
 * all let go at once when the next parse starts.
 *
 * cJSON's hooks are process-wide (libcjson is a shared library, and another
 * extension may use it too), so the hooks are plain malloc and free except
 * on the thread the arena is lent to, inside ord_parse_reply, and for
 * pointers from the arena. Another user of libcjson sees no difference; if it installs hooks
 * of its own, ours are simply not called. Under ASan the arena is poisoned
 * between parses, so a pointer into a freed tree is still caught. */
#define ARENA_BYTES (64 * 1024)

typedef struct {
    char *base;
    size_t used;
    int active;
    int spilled; /* this parse took memory from malloc too */
} arena;

/* One arena, lent to one thread at a time: in practice the engine thread,
 * the only one that parses replies. A thread-local arena cost a
 * __tls_get_addr in every hook call (an extension is built with the
 * general-dynamic TLS model), about 0.7% of the engine's time. Only the
 * owner touches g_arena; the hooks of every other thread see an owner that
 * is not themselves and go straight to malloc and free. */
static arena g_arena;
static atomic_ulong g_arena_owner; /* the pthread_t using g_arena; 0: none */
_Static_assert(sizeof(pthread_t) == sizeof(unsigned long), "pthread_t is an integer on Linux");

static int arena_mine(void)
{
    return atomic_load_explicit(&g_arena_owner, memory_order_relaxed) == (unsigned long)pthread_self();
}

static int in_arena(const void *p)
{
    uintptr_t b = (uintptr_t)g_arena.base, q = (uintptr_t)p;
    return b && q >= b && q < b + ARENA_BYTES;
}

static void *arena_malloc(size_t n)
{
    if (arena_mine()) {
        arena *a = &g_arena;
        size_t need = (n + 15) & ~(size_t)15;
        if (a->active && need >= n && need <= ARENA_BYTES - a->used) {
            void *p = a->base + a->used;
            a->used += need;
            UNPOISON(p, n);
            return p;
        }
        a->spilled |= a->active;
    }
    return malloc(n); /* large strings, and everybody else */
}

static void arena_free(void *p)
{
    if (!(arena_mine() && in_arena(p)))
        free(p);
}

static void install_hooks(void)
{
    cJSON_Hooks h = {arena_malloc, arena_free};
    cJSON_InitHooks(&h);
}

/* *arena_only: the whole tree lives in the arena, so it needs no cJSON_Delete
 * (about 5,000 instructions per reply, walking ~70 nodes to free nothing):
 * the next parse reuses the memory. */
static cJSON *parse_json(const char *buf, size_t len, int *arena_only)
{
    *arena_only = 0;
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, install_hooks);
    unsigned long self = (unsigned long)pthread_self(), none = 0;
    if (atomic_load_explicit(&g_arena_owner, memory_order_acquire) != self &&
        !atomic_compare_exchange_strong_explicit(&g_arena_owner, &none, self, memory_order_acquire,
                                                 memory_order_relaxed))
        return cJSON_ParseWithLength(buf, len); /* lent to another thread: plain malloc */
    arena *a = &g_arena;
    if (!a->base) {
        a->base = malloc(ARENA_BYTES);
        if (a->base)
            POISON(a->base, ARENA_BYTES);
    }
    if (a->base) {
        POISON(a->base, a->used);
        a->used = 0;
        a->active = 1;
        a->spilled = 0;
    }
    cJSON *root = cJSON_ParseWithLength(buf, len);
    *arena_only = a->active && !a->spilled;
    a->active = 0;
    return root;
}

void ord_parse_thread_done(void)
{
    if (!arena_mine())
        return;
    free(g_arena.base);
    g_arena = (arena){0};
    atomic_store_explicit(&g_arena_owner, 0, memory_order_release);
}

/* The owner may have been a thread of the parent: the arena's memory was
 * copied into the child and is the child's to reuse. */
void ord_parse_after_fork_child(void)
{
    g_arena.used = 0;
    g_arena.active = 0;
    atomic_store_explicit(&g_arena_owner, 0, memory_order_relaxed);
}

ord_reason ord_parse_reply(ord_req *r, long http_status, ord_usage *usage)
{
    int arena_only = 0;
    cJSON *root = r->buf_len ? parse_json(r->buf, r->buf_len, &arena_only) : NULL;
    ord_reason reason;
    r->status = http_status;

    if (http_status < 200 || http_status >= 300) {
        if (!(root && take_error_object(r, root)))
            set_message_excerpt(r, "unexpected reply");
        r->status = http_status; /* the HTTP status decides, not the body's code */
        reason = ORD_HTTP_STATUS;
        goto done;
    }
    if (!root) {
        set_message_excerpt(r, r->buf_len ? "reply is not valid JSON" : "empty reply");
        reason = ORD_INVALID_RESPONSE;
        goto done;
    }
    if (take_error_object(r, root)) {
        reason = ORD_PROVIDER_ERROR;
        goto done;
    }
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(root, "choices");
    const cJSON *first = cJSON_GetArrayItem(choices, 0);
    const cJSON *message = cJSON_GetObjectItemCaseSensitive(first, "message");
    if (!cJSON_IsObject(message)) {
        set_message_excerpt(r, "reply has no choices[0].message");
        reason = ORD_INVALID_RESPONSE;
        goto done;
    }
    if (!take_content(r, cJSON_GetObjectItemCaseSensitive(message, "content"))) {
        free(r->content);
        r->content = NULL;
        set_message(r, "choices[0].message.content is neither text, null nor a list of parts");
        reason = ORD_INVALID_RESPONSE;
        goto done;
    }
    take_usage(root, usage);
    reason = ORD_OK;
done:
    if (!arena_only)
        cJSON_Delete(root);
    return reason;
}
