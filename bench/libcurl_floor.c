/*
 * libcurl_floor.c - libcurl alone on the bench workload: C, one thread, no Python.
 *
 *   libcurl_floor URL N BODY_FILE CA_FILE|-    prints one JSON line
 *
 * One multi handle, 64 easy handles, each re-added as soon as its transfer
 * finishes; the same body, headers and transfer settings as openrouter_direct
 * (HTTP/2 over TLS with PIPEWAIT, keep-alive, handles reset between calls).
 * Driven by curl_multi_perform + curl_multi_poll, the loop most libcurl
 * programs use. It is the reference for what libcurl itself costs per call on
 * this machine: whatever openrouter_direct adds on top is Python, asyncio and
 * our engine. suite.py builds it with gcc and runs it beside wrk.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define IN_FLIGHT 64
#define WARMUP 2000

static const char *g_url, *g_ca;
static char *g_body;
static long g_body_len;
static struct curl_slist *g_headers;

static size_t discard(char *data, size_t size, size_t n, void *ud)
{
    (void)data;
    (void)ud;
    return size * n;
}

static double wall_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double cpu_s(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           (double)(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

static void setup(CURL *h)
{
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, g_url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)g_body_len);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, g_body);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, g_headers);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(h, CURLOPT_PIPEWAIT, strncmp(g_url, "https://", 8) == 0 ? 1L : 0L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    if (g_ca)
        curl_easy_setopt(h, CURLOPT_CAINFO, g_ca);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s URL N BODY_FILE CA_FILE|-\n", argv[0]);
        return 2;
    }
    g_url = argv[1];
    long n = atol(argv[2]);
    g_ca = strcmp(argv[4], "-") == 0 ? NULL : argv[4];
    FILE *f = fopen(argv[3], "rb");
    if (!f || fseek(f, 0, SEEK_END) != 0 || (g_body_len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        perror(argv[3]);
        return 2;
    }
    g_body = malloc((size_t)g_body_len + 1);
    if (!g_body || fread(g_body, 1, (size_t)g_body_len, f) != (size_t)g_body_len) {
        perror(argv[3]);
        return 2;
    }
    fclose(f);
    const char *lines[] = {
        "Authorization: Bearer sk-or-bench-0000000000000000000000000000000000000000",
        "HTTP-Referer: http://localhost:3000", "X-Title: DR-Tulu Training",
        "Content-Type: application/json", "Expect:",
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
        g_headers = curl_slist_append(g_headers, lines[i]);

    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURLM *m = curl_multi_init();
    curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)IN_FLIGHT + 16);
    long total = n + WARMUP, started = 0, done = 0, failed = 0;
    for (int i = 0; i < IN_FLIGHT && started < total; i++, started++) {
        CURL *h = curl_easy_init();
        setup(h);
        curl_multi_add_handle(m, h);
    }
    double w0 = 0, c0 = 0;
    while (done < total) {
        int running;
        curl_multi_perform(m, &running);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(m, &left))) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            CURL *h = msg->easy_handle;
            long code = 0;
            curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
            if (msg->data.result != CURLE_OK || code != 200)
                failed++;
            curl_multi_remove_handle(m, h);
            if (++done == WARMUP) {
                w0 = wall_s();
                c0 = cpu_s();
            }
            if (started < total) {
                setup(h);
                curl_multi_add_handle(m, h);
                started++;
            } else {
                curl_easy_cleanup(h);
            }
        }
        if (done < total)
            curl_multi_poll(m, NULL, 0, 1000, NULL);
    }
    double w = wall_s() - w0, c = cpu_s() - c0;
    printf("{\"calls_per_s\": %.1f, \"cpu_us_per_call\": %.2f, \"n\": %ld, \"errors\": %ld, "
           "\"libcurl\": \"%s\"}\n",
           (double)n / w, c / (double)n * 1e6, n, failed, curl_version_info(CURLVERSION_NOW)->version);
    curl_multi_cleanup(m);
    curl_slist_free_all(g_headers);
    free(g_body);
    curl_global_cleanup();
    return failed ? 1 : 0;
}
