/*
 * reader.c - the usual successful reply, read in one pass without building a
 * tree. No GIL (engine thread), plain C.
 *
 * cJSON builds a node, a key copy and a string copy per value, and runs
 * localeconv + strtod for each of a reply's numbers, to then read three
 * members: on the engine thread that was a large share of a call's work
 * (docs/TUNING.md). ord_read_usual walks the bytes once and keeps only
 * choices[0].message.content and usage's three numbers.
 *
 * It answers only for the usual shape: one JSON object, no "error" (or a null
 * one), "choices" an array whose first element is an object with a "message"
 * object, and content a string or null. For anything else it gives up, and
 * also for whatever cJSON might read differently from it: a key with an
 * escape or a NUL in it, a number that is not plain JSON or is longer than
 * 63 bytes (cJSON reads [0-9+-.eE] greedily and then strtod; 1.7.15 as
 * released stops after 63 bytes, Debian's patched build does not), a NUL in the
 * content (cJSON's strings end there), nesting deeper than SCAN_DEPTH, bytes
 * after the object.
 *
 * The rule: giving up leaves r and the usage as they were, and the reply goes
 * to cJSON (response.c) as before; so cJSON still decides every error and
 * every odd reply, and fuzz/response_fuzzer.c checks on each input this file
 * takes that the two agree. Members are looked up as
 * cJSON_GetObjectItemCaseSensitive does: the first one with the name counts,
 * whatever its type.
 */
#include "ord.h"

#include <locale.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A JSON number as a C long, or 0 when it is not a sane integer code or
 * count: converting an out-of-range double is undefined behaviour in C. */
long ord_sane_long(double d, double max)
{
    return (d >= 0 && d <= max) ? (long)d : 0;
}

/* usage's three numbers, each NULL when absent or not a number. */
void ord_usage_from(ord_usage *u, const double *prompt, const double *completion, const double *cost)
{
    if (prompt)
        u->prompt_tokens = ord_sane_long(*prompt, 1e15);
    if (completion)
        u->completion_tokens = ord_sane_long(*completion, 1e15);
    if (cost && isfinite(*cost))
        u->cost = *cost;
    u->has_usage = 1;
}

#define SCAN_DEPTH 64

typedef struct {
    const unsigned char *p, *end;
} scan;

static void sc_ws(scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
        s->p++;
}

static int sc_word(scan *s, const char *w, size_t n)
{
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, w, n) != 0)
        return 0;
    s->p += n;
    return 1;
}

static int hex4(const unsigned char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
            d = (c | 0x20) - 'a' + 10;
        else
            return 0;
        v = v << 4 | d;
    }
    *out = v;
    return 1;
}

/* The code point of the \u escape at p (one, or a surrogate pair); its length
 * in *n. 0 for what cJSON refuses: bad hex, a lone or reversed surrogate. */
static unsigned u_escape(const unsigned char *p, const unsigned char *end, int *n)
{
    unsigned hi, lo;
    if (end - p < 6 || !hex4(p + 2, &hi) || (hi >= 0xDC00 && hi <= 0xDFFF))
        return 0;
    if (hi < 0xD800 || hi > 0xDBFF) {
        *n = 6;
        return hi ? hi : 0x110000; /* \u0000: a value of its own, told apart from failure */
    }
    if (end - p < 12 || p[6] != '\\' || p[7] != 'u' || !hex4(p + 8, &lo) || lo < 0xDC00 ||
        lo > 0xDFFF)
        return 0;
    *n = 12;
    return 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
}

#define SC_ESCAPE 1 /* a string has a backslash escape */
#define SC_RAW 2    /* a string has a raw control byte (NUL included) */

/* At an opening quote: steps past the string; its text (between the quotes)
 * in [*a, *b), and in *odd SC_ESCAPE and SC_RAW as it has them. 0: cJSON
 * refuses it. Raw control bytes are taken, as cJSON takes them. */
static int sc_string(scan *s, const unsigned char **a, const unsigned char **b, int *odd)
{
    const unsigned char *p = s->p + 1;
    *odd = 0;
    for (;;) {
        p = ord_plain_run(p, s->end);
        if (p >= s->end)
            return 0;
        if (*p == '"')
            break;
        if (*p != '\\') {
            *odd |= SC_RAW;
            p++;
            continue;
        }
        *odd |= SC_ESCAPE;
        if (s->end - p < 2)
            return 0;
        int n = 2;
        switch (p[1]) {
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
            break;
        case 'u':
            if (!u_escape(p, s->end, &n))
                return 0;
            break;
        default:
            return 0;
        }
        p += n;
    }
    *a = s->p + 1;
    *b = p;
    s->p = p + 1;
    return 1;
}

static int is_digit(unsigned c)
{
    return c - '0' < 10;
}

/* A number exactly as JSON writes it, and followed by nothing cJSON would
 * take as more of it: then strtod, in cJSON, ends where this does. */
static int sc_number(scan *s)
{
    const unsigned char *p = s->p, *e = s->end;
    if (p < e && *p == '-')
        p++;
    if (p >= e || !is_digit(*p))
        return 0;
    if (*p == '0')
        p++;
    else
        while (p < e && is_digit(*p))
            p++;
    if (p < e && *p == '.') {
        if (++p >= e || !is_digit(*p))
            return 0;
        while (p < e && is_digit(*p))
            p++;
    }
    if (p < e && (*p | 0x20) == 'e') {
        if (++p < e && (*p == '+' || *p == '-'))
            p++;
        if (p >= e || !is_digit(*p))
            return 0;
        while (p < e && is_digit(*p))
            p++;
    }
    if (p < e && (is_digit(*p) || *p == '.' || *p == '+' || *p == '-' || (*p | 0x20) == 'e'))
        return 0;
    if (p - s->p > 63)
        return 0;
    s->p = p;
    return 1;
}

/* The value of a number sc_number accepted at a, as cJSON computes it:
 * strtod with the locale's decimal point. A token count, a plain integer of
 * up to 15 digits, is exact as a double and needs no strtod. */
static int number_value(const unsigned char *a, const unsigned char *b, double *out)
{
    size_t n = (size_t)(b - a);
    uint64_t v = 0;
    size_t i = 0;
    while (i < n && n <= 15 && is_digit(a[i]))
        v = v * 10 + (a[i++] - '0');
    if (i == n) {
        *out = (double)v;
        return 1;
    }
    char tmp[64];
    char dot = localeconv()->decimal_point[0];
    for (i = 0; i < n; i++)
        tmp[i] = a[i] == '.' ? dot : (char)a[i];
    tmp[n] = '\0';
    char *stop;
    *out = strtod(tmp, &stop);
    /* 0: a locale whose decimal point strtod does not take back; cJSON decides */
    return stop == tmp + n;
}

static int sc_value(scan *s, int depth);

/* The next entry of an object or array whose opening was stepped over
 * (close: '}' or ']'): 1 with s->p at it, 0 after close, -1 when not sure.
 * *count: entries so far (0 to start). */
static inline int sc_next(scan *s, int *count, unsigned char close)
{
    sc_ws(s);
    if (s->p >= s->end)
        return -1;
    if (*s->p == close) {
        s->p++;
        return 0;
    }
    if ((*count)++) {
        if (*s->p != ',')
            return -1;
        s->p++;
        sc_ws(s);
    }
    return 1;
}

/* The next member of an object, as sc_next, with its key in [*k, *k + *kn)
 * and s->p at its value. plain: the key must have no escape and no raw
 * control byte (a NUL would end it for cJSON's strcmp), to be compared byte
 * for byte. */
static int sc_member(scan *s, int *count, int plain, const unsigned char **k, size_t *kn)
{
    int m = sc_next(s, count, '}');
    if (m != 1)
        return m;
    const unsigned char *b;
    int odd;
    if (s->p >= s->end || *s->p != '"' || !sc_string(s, k, &b, &odd))
        return -1;
    *kn = (size_t)(b - *k);
    if (plain && odd)
        return -1;
    sc_ws(s);
    if (s->p >= s->end || *s->p != ':')
        return -1;
    s->p++;
    sc_ws(s);
    return 1;
}

/* The rest of the object or array whose '{' or '[' was stepped over. */
static int sc_rest(scan *s, int is_object, int count, int depth)
{
    const unsigned char *k;
    size_t kn;
    int m;
    while ((m = is_object ? sc_member(s, &count, 0, &k, &kn) : sc_next(s, &count, ']')) == 1)
        if (!sc_value(s, depth))
            return 0;
    return m == 0;
}

/* Steps over one value; depth: the containers it sits in. */
static int sc_value(scan *s, int depth)
{
    if (s->p >= s->end)
        return 0;
    switch (*s->p) {
    case '"': {
        const unsigned char *a, *b;
        int odd;
        return sc_string(s, &a, &b, &odd);
    }
    case '{':
    case '[':
        if (depth >= SCAN_DEPTH)
            return 0;
        return sc_rest(s, *s->p++ == '{', 0, depth + 1);
    case 't':
        return sc_word(s, "true", 4);
    case 'f':
        return sc_word(s, "false", 5);
    case 'n':
        return sc_word(s, "null", 4);
    default:
        return sc_number(s);
    }
}

static int key_is(const unsigned char *k, size_t kn, const char *name, size_t n)
{
    return kn == n && memcmp(k, name, n) == 0;
}
#define KEY_IS(k, kn, lit) key_is((k), (kn), "" lit, sizeof(lit) - 1)

typedef struct {
    int found;                    /* choices[0].message was an object */
    int null;                     /* content: null or absent (""), else [a, b) */
    const unsigned char *a, *b;
    int odd;                      /* SC_ESCAPE, SC_RAW */
    int has_usage;
    double num[3];                /* prompt_tokens, completion_tokens, cost */
    int has_num[3];
} usual;

/* The first choice: an object whose first "message" is an object. */
static int read_choice(scan *s, usual *u, int depth)
{
    if (s->p >= s->end || *s->p != '{')
        return 0;
    s->p++;
    const unsigned char *k;
    size_t kn;
    int count = 0, m, seen = 0;
    while ((m = sc_member(s, &count, 1, &k, &kn)) == 1) {
        if (seen || !KEY_IS(k, kn, "message")) {
            if (!sc_value(s, depth + 1))
                return 0;
            continue;
        }
        seen = 1;
        if (s->p >= s->end || *s->p != '{')
            return 0;
        s->p++;
        int mcount = 0, mm, seen_content = 0;
        u->null = 1;
        while ((mm = sc_member(s, &mcount, 1, &k, &kn)) == 1) {
            if (seen_content || !KEY_IS(k, kn, "content")) {
                if (!sc_value(s, depth + 2))
                    return 0;
                continue;
            }
            seen_content = 1;
            if (s->p < s->end && *s->p == '"') {
                if (!sc_string(s, &u->a, &u->b, &u->odd))
                    return 0;
                u->null = 0;
            } else if (!sc_word(s, "null", 4)) {
                return 0; /* a list of parts, or not content at all: cJSON's to judge */
            }
        }
        if (mm < 0)
            return 0;
        u->found = 1;
    }
    return m == 0;
}

static int read_usage(scan *s, usual *u, int depth)
{
    if (s->p >= s->end || *s->p != '{')
        return sc_value(s, depth); /* not an object: no usage, as in take_usage */
    s->p++;
    u->has_usage = 1;
    int seen[3] = {0, 0, 0};
    const unsigned char *k;
    size_t kn;
    int count = 0, m;
    while ((m = sc_member(s, &count, 1, &k, &kn)) == 1) {
        int i = KEY_IS(k, kn, "prompt_tokens") ? 0 : KEY_IS(k, kn, "completion_tokens") ? 1
              : KEY_IS(k, kn, "cost")            ? 2 : 3;
        const unsigned char *a = s->p;
        if (!sc_value(s, depth + 1))
            return 0;
        if (i == 3 || seen[i]++)
            continue;
        if (*a == '-' || is_digit(*a)) {
            if (!number_value(a, s->p, &u->num[i]))
                return 0;
            u->has_num[i] = 1;
        }
    }
    return m == 0;
}

/* The reply's content and usage when it has the usual shape (see the top). */
int ord_read_usual(ord_req *r, ord_usage *usage)
{
    scan s = {(const unsigned char *)r->buf, (const unsigned char *)r->buf + r->buf_len};
    usual u;
    memset(&u, 0, sizeof u);
    sc_ws(&s);
    if (s.p >= s.end || *s.p != '{')
        return 0;
    s.p++;
    const unsigned char *k;
    size_t kn;
    int count = 0, m, seen_error = 0, seen_choices = 0, seen_usage = 0;
    while ((m = sc_member(&s, &count, 1, &k, &kn)) == 1) {
        int ok;
        if (!seen_error && KEY_IS(k, kn, "error")) {
            seen_error = 1;
            ok = sc_word(&s, "null", 4); /* any other error value: cJSON's to judge */
        } else if (!seen_choices && KEY_IS(k, kn, "choices")) {
            seen_choices = 1;
            int items = 0;
            ok = s.p < s.end && *s.p++ == '[' && sc_next(&s, &items, ']') == 1 &&
                 read_choice(&s, &u, 2) && sc_rest(&s, 0, items, 2);
        } else if (!seen_usage && KEY_IS(k, kn, "usage")) {
            seen_usage = 1;
            ok = read_usage(&s, &u, 1);
        } else {
            ok = sc_value(&s, 1);
        }
        if (!ok)
            return 0;
    }
    sc_ws(&s);
    if (m < 0 || !u.found || s.p != s.end)
        return 0;

    size_t n = u.null ? 0 : (size_t)(u.b - u.a);
    char *out = malloc(n + 1);
    if (!out)
        return 0;
    size_t o = 0;
    for (const unsigned char *p = u.a; p < u.b;) {
        const unsigned char *run = p;
        while (p < u.b && *p != '\\') {
            const unsigned char *q = ord_plain_run(p, u.b);
            p = q > p ? q : p + 1; /* past a raw control byte */
        }
        memcpy(out + o, run, (size_t)(p - run));
        o += (size_t)(p - run);
        if (p >= u.b)
            break;
        static const char plain[] = "\"\\/\b\f\n\r\t", from[] = "\"\\/bfnrt";
        const char *f = memchr(from, p[1], sizeof from - 1);
        if (f) {
            out[o++] = plain[f - from];
            p += 2;
            continue;
        }
        int len;
        unsigned cp = u_escape(p, u.b, &len); /* sc_string checked it */
        p += len;
        if (cp == 0x110000) {
            free(out); /* \u0000: cJSON's string ends there */
            return 0;
        }
        if (cp < 0x80) {
            out[o++] = (char)cp;
        } else if (cp < 0x800) {
            out[o++] = (char)(0xC0 | cp >> 6);
            out[o++] = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out[o++] = (char)(0xE0 | cp >> 12);
            out[o++] = (char)(0x80 | (cp >> 6 & 0x3F));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        } else {
            out[o++] = (char)(0xF0 | cp >> 18);
            out[o++] = (char)(0x80 | (cp >> 12 & 0x3F));
            out[o++] = (char)(0x80 | (cp >> 6 & 0x3F));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    if ((u.odd & SC_RAW) && memchr(out, '\0', o)) {
        free(out); /* a raw NUL: cJSON's string ends there */
        return 0;
    }
    out[o] = '\0';
    r->content = out;
    r->content_len = o;
    if (u.has_usage)
        ord_usage_from(usage, u.has_num[0] ? &u.num[0] : NULL, u.has_num[1] ? &u.num[1] : NULL,
                       u.has_num[2] ? &u.num[2] : NULL);
    return 1;
}
