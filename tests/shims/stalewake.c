/* LD_PRELOAD shim: counts wake-ups written to an eventfd after it was closed.
 *
 * An eventfd's number is recorded when eventfd() makes it and marked when close() closes it
 * (until eventfd() hands the number out again); a write of the 8-byte value 1 (a wake-up, as
 * the engine and the channels write them) to a marked number is counted: it went to a closed
 * descriptor, or to whatever file took that number since. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define MAX_FD 4096
static unsigned char state[MAX_FD]; /* 0: not an eventfd of ours, 1: open eventfd, 2: closed */
static int stale;

int stalewake_count(void) { return __atomic_load_n(&stale, __ATOMIC_SEQ_CST); }

int eventfd(unsigned int initval, int flags)
{
    static int (*real)(unsigned int, int);
    if (!real)
        real = (int (*)(unsigned int, int))dlsym(RTLD_NEXT, "eventfd");
    int fd = real(initval, flags);
    if (fd >= 0 && fd < MAX_FD)
        __atomic_store_n(&state[fd], 1, __ATOMIC_SEQ_CST);
    return fd;
}

int close(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "close");
    if (fd >= 0 && fd < MAX_FD && __atomic_load_n(&state[fd], __ATOMIC_SEQ_CST) == 1)
        __atomic_store_n(&state[fd], 2, __ATOMIC_SEQ_CST);
    return real(fd);
}

ssize_t write(int fd, const void *buf, size_t n)
{
    static ssize_t (*real)(int, const void *, size_t);
    if (!real)
        real = (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    uint64_t v;
    if (n == sizeof v && fd >= 0 && fd < MAX_FD &&
        __atomic_load_n(&state[fd], __ATOMIC_SEQ_CST) == 2) {
        memcpy(&v, buf, sizeof v);
        if (v == 1)
            __atomic_add_fetch(&stale, 1, __ATOMIC_SEQ_CST);
    }
    return real(fd, buf, n);
}
