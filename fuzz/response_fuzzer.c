/*
 * response_fuzzer.c - libFuzzer harness for the response parser
 * (ord_parse_reply in csrc/response.c, with csrc/reader.c): pure C, no interpreter.
 *
 * Input: byte 0 picks the HTTP status (200 most of the time, else one of the
 * statuses OpenRouter sends), the rest is the response body exactly as libcurl
 * would hand it over (not NUL-terminated by the sender; the engine appends a
 * NUL after the last byte, and so does this harness).
 *
 * Invariants, any failure aborts:
 *  - a 2xx reply that the fast reader takes, cJSON reads the same way (see
 *    ord_read_usual): a success with the same content and the same usage;
 *  - the outcome is one of ok / http_status / provider_error / invalid_response,
 *    and a non-2xx status is always http_status carrying that status;
 *  - success yields content of content_len bytes, no longer than the body;
 *  - failure yields a message of at most 1 KB (it may hold a newline when the
 *    server's own message does: the log line quotes it as sent);
 *  - the message never holds the key, and, when the body held it (a proxy
 *    repeating the Authorization header, say), it does not end with a piece of
 *    it cut off where the message was truncated.
 *
 * ORD_FUZZ_TOLERATE=key_truncation (a defect this harness found, fixed in
 * f2b77c2; for runs against an older build) stops counting a piece of the
 * key cut off where the message is truncated
 * (a server message over 1 KB, or the 120-byte excerpt of a body that is not
 * JSON): ord_redact ran after the cut and missed the partial key. The whole
 * key is always checked.
 */
#include "../csrc/response.c"
#include "../csrc/reader.c"
#include "../csrc/policy.c"

#include <stdint.h>

#define SECRET "sk-or-v1-7f3a9c2e5b8d1f4a6c0e9b2d7a5f3c1e"

static const long statuses[] = {200, 200, 200, 200, 201, 204, 400, 401, 402, 403, 404, 408, 429, 500, 502, 503};

/* The message ends with the first n >= 20 characters of the key, and every
 * occurrence of those n characters in the body is the start of the whole key:
 * a key cut off where the message was truncated. (A body may itself hold a
 * cut key, say before a NUL that ends a JSON string for cJSON: quoting that
 * is no leak.) */
static int ends_with_cut_key(const char *msg, const uint8_t *body, size_t size)
{
    size_t m = strlen(msg), k = strlen(SECRET);
    for (size_t n = 20; n < k; n++) {
        if (m < n || memcmp(msg + m - n, SECRET, n) != 0)
            continue;
        for (const uint8_t *p = body; (p = memmem(p, size - (size_t)(p - body), SECRET, n));
             p++)
            if ((size_t)(body + size - p) < k || memcmp(p, SECRET, k) != 0)
                return 0;
        return 1;
    }
    return 0;
}

/* Every reply the fast reader (ord_read_usual) takes, cJSON reads the same way:
 * a success with the same content, byte for byte, and the same usage. */
static void check_readers_agree(const ord_req *in, long status)
{
    ord_req f, c;
    ord_usage fu, cu;
    memset(&f, 0, sizeof f);
    memset(&fu, 0, sizeof fu);
    memset(&cu, 0, sizeof cu);
    f.buf = in->buf;
    f.buf_len = in->buf_len;
    f.secret = in->secret;
    c = f;
    if (!ord_read_usual(&f, &fu))
        return;
    ord_reason reason = parse_with_cjson(&c, status, &cu);
    if (reason != ORD_OK || !c.content || c.content_len != f.content_len ||
        memcmp(c.content, f.content, f.content_len) != 0 || cu.has_usage != fu.has_usage ||
        cu.prompt_tokens != fu.prompt_tokens || cu.completion_tokens != fu.completion_tokens ||
        memcmp(&cu.cost, &fu.cost, sizeof cu.cost) != 0) {
        fprintf(stderr, "response_fuzzer: the fast reader took a reply cJSON reads otherwise "
                        "(cJSON: %s, %zu bytes; fast: %zu bytes)\n",
                ord_reason_get(reason)->name, c.content ? c.content_len : 0, f.content_len);
        abort();
    }
    free(f.content);
    free(c.content);
    free(c.message);
}

static int tolerate_key_truncation;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *t = getenv("ORD_FUZZ_TOLERATE");
    tolerate_key_truncation = t && strstr(t, "key_truncation") != NULL;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    long status = statuses[data[0] % (sizeof statuses / sizeof statuses[0])];
    ord_req r;
    memset(&r, 0, sizeof r);
    r.buf_len = size - 1;
    r.buf = malloc(r.buf_len + 1);
    if (!r.buf)
        return 0;
    memcpy(r.buf, data + 1, r.buf_len);
    r.buf[r.buf_len] = '\0';
    r.buf_cap = r.buf_len + 1;
    r.secret = (char *)SECRET;

    ord_usage usage;
    memset(&usage, 0, sizeof usage);
    ord_reason reason = ord_parse_reply(&r, status, &usage);

    if (reason != ORD_OK && reason != ORD_HTTP_STATUS && reason != ORD_PROVIDER_ERROR &&
        reason != ORD_INVALID_RESPONSE)
        abort();
    if ((status < 200 || status >= 300) && (reason != ORD_HTTP_STATUS || r.status != status))
        abort();
    if (reason == ORD_OK) {
        if (!r.content || strlen(r.content) != r.content_len || r.content_len > r.buf_len)
            abort();
        if (r.message)
            abort();
    } else {
        if (!r.message || r.content)
            abort();
        size_t n = strlen(r.message);
        if (n > 1024)
            abort();
        /* The whole key never; a key cut where the message was truncated only
         * counts when the body held the whole key (a body may hold text that
         * merely looks like part of it). */
        int body_has_key = memmem(data, size, SECRET, strlen(SECRET)) != NULL;
        if (strstr(r.message, SECRET) ||
            (body_has_key && !tolerate_key_truncation && ends_with_cut_key(r.message, data, size))) {
            fprintf(stderr, "response_fuzzer: the key leaks into the message: %s\n", r.message);
            abort();
        }
    }
    if (status >= 200 && status < 300)
        check_readers_agree(&r, status);
    free(r.buf);
    free(r.content);
    free(r.message);
    return 0;
}
