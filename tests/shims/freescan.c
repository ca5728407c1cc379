/* LD_PRELOAD shim: counts heap blocks freed while they still hold a secret, except libcurl's
 * own copy of a whole request (it holds every header it sent; not this package's memory). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <string.h>

static void (*real_free)(void *);
static char needle[512];
static size_t needle_len;
static int hits;

void freescan_set(const char *s)
{
    size_t n = strlen(s);
    needle_len = 0;
    if (n < sizeof needle) {
        memcpy(needle, s, n);
        needle_len = n;
    }
}
int freescan_hits(void) { return __atomic_load_n(&hits, __ATOMIC_SEQ_CST); }
void freescan_reset(void) { __atomic_store_n(&hits, 0, __ATOMIC_SEQ_CST); }

void free(void *p)
{
    if (!real_free) {
        static int starting;
        if (starting)
            return; /* a free inside dlsym, before the real one is known: leaked */
        starting = 1;
        real_free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
        starting = 0;
    }
    size_t n = p ? malloc_usable_size(p) : 0;
    if (n && needle_len && memmem(p, n, needle, needle_len) &&
        !memmem(p, n, "HTTP/1.1\r\n", 10))
        __atomic_add_fetch(&hits, 1, __ATOMIC_SEQ_CST);
    real_free(p);
}
