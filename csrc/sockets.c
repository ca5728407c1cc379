/*
 * sockets.c - libcurl's sockets and timer on the engine's epoll set
 * (CURLMOPT_SOCKETFUNCTION, CURLMOPT_TIMERFUNCTION, and the open and close
 * socket callbacks), and handing the ready ones back to libcurl. The engine
 * drives libcurl with curl_multi_socket_action, so each wake-up costs the
 * sockets that are ready, not all of them: with 2,048 calls in flight,
 * poll() over every socket per wake-up was most of the engine's time.
 *
 * The rule: engine thread only, and watched[fd] says what the epoll set
 * holds for fd; it may keep a socket registered that libcurl no longer
 * waits on only if that socket is ours (FD_OURS), whose close we see.
 */
#include "engine_int.h"

#include <stdatomic.h>
#include <string.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/socket.h>

/* Per fd, a byte of state. A kept-alive connection stays in the epoll set
 * between calls: libcurl drops its interest (CURL_POLL_REMOVE) when a
 * transfer ends and asks again when the next one starts, and following that
 * literally costs three epoll_ctl calls per call (docs/TUNING.md). That is safe only for sockets whose
 * close we see, so libcurl opens and closes its connections through our
 * callbacks (FD_OURS); any other fd it hands us (the threaded resolver's)
 * is added and deleted exactly as asked. */
enum {
    FD_IN = 1, FD_OUT = 2, /* the events registered */
    FD_REG = 4,            /* in the epoll set */
    FD_WANT = 8,           /* libcurl is waiting on it now */
    FD_OURS = 16,          /* opened by eng_on_open_socket: its close comes to eng_on_close_socket */
};

static unsigned char *fd_slot(engine *e, curl_socket_t fd)
{
    if (fd < 0)
        return NULL;
    if ((size_t)fd >= e->watched_cap) {
        size_t cap = e->watched_cap ? e->watched_cap : 1024;
        while (cap <= (size_t)fd)
            cap *= 2;
        atomic_store(&e->watched_moving, 1);
        unsigned char *w = realloc(e->watched, cap);
        if (!w) {
            atomic_store(&e->watched_moving, 0);
            return NULL;
        }
        memset(w + e->watched_cap, 0, cap - e->watched_cap);
        e->watched = w;
        e->watched_cap = cap;
        atomic_store(&e->watched_moving, 0);
    }
    return &e->watched[fd];
}

static unsigned fd_state(const engine *e, int fd)
{
    return fd >= 0 && (size_t)fd < e->watched_cap ? e->watched[fd] : 0;
}

static int fd_register(engine *e, curl_socket_t fd, unsigned mask)
{
    unsigned char *s = fd_slot(e, fd);
    if (!s)
        return -1;
    if ((*s & (FD_OURS | FD_REG)) == (FD_OURS | FD_REG) && (*s & (FD_IN | FD_OUT)) == mask)
        return 0;
    struct epoll_event ev = {0};
    ev.data.fd = fd;
    ev.events = ((mask & FD_IN) ? EPOLLIN : 0) | ((mask & FD_OUT) ? EPOLLOUT : 0);
    int op = (*s & FD_REG) ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(e->ep, op, fd, &ev) < 0) {
        /* Our record can be wrong only for an fd whose close we did not
         * see: the kernel knows better, try the other way. */
        int other = op == EPOLL_CTL_ADD ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
        if (epoll_ctl(e->ep, other, fd, &ev) < 0)
            return -1;
    }
    *s = (unsigned char)((*s & FD_OURS) | FD_REG | mask);
    return 0;
}

/* Deleting matters after a fork: the child's copy of a socket keeps its
 * registration here alive past our close. */
static void fd_unregister(engine *e, curl_socket_t fd)
{
    if (fd_state(e, fd) & FD_REG)
        epoll_ctl(e->ep, EPOLL_CTL_DEL, fd, NULL);
    if (fd >= 0 && (size_t)fd < e->watched_cap)
        e->watched[fd] &= FD_OURS;
}

/* CURLMOPT_SOCKETFUNCTION */
int eng_on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    (void)socketp;
    engine *e = userp;
    if (what == CURL_POLL_REMOVE) {
        unsigned st = fd_state(e, fd);
        if ((st & FD_OURS) && !(st & FD_OUT))
            e->watched[fd] &= (unsigned char)~FD_WANT; /* parked: see the top of this file */
        else
            fd_unregister(e, fd);
        return 0;
    }
    unsigned mask = ((what & CURL_POLL_IN) ? FD_IN : 0) | ((what & CURL_POLL_OUT) ? FD_OUT : 0);
    if (fd_register(e, fd, mask) < 0)
        return -1;
    e->watched[fd] |= FD_WANT;
    return 0;
}

/* CURLOPT_OPENSOCKETFUNCTION: the default's socket(), plus close-on-exec
 * (a subprocess of the trainer has no use for our connections). */
curl_socket_t eng_on_open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *a)
{
    engine *e = clientp;
    (void)purpose;
    int fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
    if (fd < 0)
        return CURL_SOCKET_BAD;
    unsigned char *s = fd_slot(e, fd);
    if (!s) {
        close(fd);
        return CURL_SOCKET_BAD;
    }
    *s = FD_OURS; /* a new socket: what the number meant before is gone */
    return fd;
}

/* CURLOPT_CLOSESOCKETFUNCTION */
int eng_on_close_socket(void *clientp, curl_socket_t fd)
{
    engine *e = clientp;
    fd_unregister(e, fd);
    if (fd >= 0 && (size_t)fd < e->watched_cap)
        e->watched[fd] = 0;
    return close(fd);
}

/* CURLMOPT_TIMERFUNCTION: libcurl wants socket_action(TIMEOUT) then. */
int eng_on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    engine *e = userp;
    e->timer_due = timeout_ms < 0 ? -1 : ord_now_ms() + timeout_ms;
    return 0;
}

/* What epoll_wait found: the wake-up counter is read (the loop looks at its
 * inbox at the top anyway); libcurl's sockets go to curl_multi_socket_action. */
void eng_sockets_ready(engine *e, const struct epoll_event *evs, int n)
{
    int running;
    for (int i = 0; i < n; i++) {
        int fd = evs[i].data.fd;
        if (fd == e->wake_fd) {
            uint64_t v;
            ssize_t got = read(e->wake_fd, &v, sizeof v);
            (void)got;
            continue;
        }
        unsigned st = fd_state(e, fd);
        if (!(st & FD_WANT)) {
            /* A parked connection that the server closed (or wrote to
             * unasked): libcurl finds out when it next picks it, so
             * stop listening until then. Or a stale registration. */
            if (st & FD_REG)
                fd_unregister(e, fd);
            else
                epoll_ctl(e->ep, EPOLL_CTL_DEL, fd, NULL);
            continue;
        }
        uint32_t x = evs[i].events;
        int flags = ((x & EPOLLIN) ? CURL_CSELECT_IN : 0) | ((x & EPOLLOUT) ? CURL_CSELECT_OUT : 0) |
                    ((x & (EPOLLERR | EPOLLHUP)) ? CURL_CSELECT_ERR : 0);
        curl_multi_socket_action(e->multi, fd, flags, &running);
    }
}

/* A forked child's part of closing the abandoned engine's descriptors
 * (engine.c, close_inherited): the sockets libcurl opened through
 * eng_on_open_socket. If the fork caught the engine thread growing
 * watched[], the table may be freed memory, and they stay open. */
void eng_sockets_close_inherited(engine *e)
{
    if (!atomic_load(&e->watched_moving))
        for (size_t fd = 0; fd < e->watched_cap; fd++)
            if (e->watched[fd] & FD_OURS)
                close((int)fd);
}
