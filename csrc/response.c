/*
 * response.c - what a finished attempt says: the reply's content and usage,
 * or its error. Runs on the engine thread without the GIL: plain C and cJSON
 * only. The usual successful reply is read by reader.c; every other reply
 * (errors, lists of parts, odd shapes) by cJSON here. What to do about a
 * failure is policy.c's to decide.
 *
 * The rule: no failure message leaves this file unredacted (set_message,
 * set_message_excerpt): a server or proxy may echo the key it was sent.
 */
#include "ord.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>


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
            code = ord_sane_long(c->valuedouble, 999);
        else if (cJSON_IsString(c))
            code = ord_sane_long(strtod(c->valuestring, NULL), 999);
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(err, "message");
        if (cJSON_IsString(m))
            msg = m->valuestring;
        const cJSON *meta = cJSON_GetObjectItemCaseSensitive(err, "metadata");
        const cJSON *pn = cJSON_GetObjectItemCaseSensitive(meta, "provider_name");
        if (cJSON_IsString(pn))
            provider = pn->valuestring;
        /* OpenRouter's 402 with this source is a wait, not "out of credits". */
        const cJSON *ls = cJSON_GetObjectItemCaseSensitive(meta, "limit_source");
        r->inflight_budget = cJSON_IsString(ls) && strcmp(ls->valuestring, "openrouter_in_flight_budget") == 0;
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
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(usage, "prompt_tokens");
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(usage, "completion_tokens");
    const cJSON *cost = cJSON_GetObjectItemCaseSensitive(usage, "cost");
    ord_usage_from(u, cJSON_IsNumber(pt) ? &pt->valuedouble : NULL,
                   cJSON_IsNumber(ct) ? &ct->valuedouble : NULL,
                   cJSON_IsNumber(cost) ? &cost->valuedouble : NULL);
}

/* The replies left to cJSON (ord_read_usual, reader.c, takes the usual success):
 * errors, lists of parts, odd shapes. cJSON allocates through its default
 * hooks, which are process-wide: another library in the process may set its
 * own (cJSON_InitHooks), so this file sets none and lets every tree go with
 * cJSON_Delete, which frees through whatever hooks made it. */
static ord_reason parse_with_cjson(ord_req *r, long http_status, ord_usage *usage)
{
    cJSON *root = r->buf_len ? cJSON_ParseWithLength(r->buf, r->buf_len) : NULL;
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
    cJSON_Delete(root);
    return reason;
}

ord_reason ord_parse_reply(ord_req *r, long http_status, ord_usage *usage)
{
    if (http_status >= 200 && http_status < 300 && ord_read_usual(r, usage)) {
        r->status = http_status;
        return ORD_OK;
    }
    return parse_with_cjson(r, http_status, usage);
}
