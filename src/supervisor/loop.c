/* SPDX-License-Identifier: MIT */
/* The supervisor's event loop (loop.h): epoll + a sorted list of one-shot timers. */
#include "loop.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 64

typedef struct watch {
    int fd;
    sv_io_fn fn;
    void *data;
    struct watch *next;
} watch;

typedef struct timer {
    int64_t id, due;
    sv_timer_fn fn;
    void *data;
    struct timer *next;
} timer;

struct sv_loop {
    int epfd;
    int stop;
    int64_t next_id;
    watch *watches; /* few fds (a VMM, a channel, some clients): a list is enough */
    timer *timers;  /* sorted by due time */
};

int64_t sv_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

sv_loop *sv_loop_new(void)
{
    sv_loop *l = calloc(1, sizeof(*l));

    if (!l)
        return NULL;
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (l->epfd < 0) {
        free(l);
        return NULL;
    }
    return l;
}

sv_loop *sv_loop_free(sv_loop *l)
{
    if (!l)
        return NULL;
    while (l->watches) {
        watch *w = l->watches;

        l->watches = w->next;
        free(w);
    }
    while (l->timers) {
        timer *t = l->timers;

        l->timers = t->next;
        free(t);
    }
    (void)close(l->epfd);
    free(l);
    return NULL;
}

static watch *find(sv_loop *l, int fd)
{
    watch *w;

    for (w = l->watches; w; w = w->next)
        if (w->fd == fd)
            return w;
    return NULL;
}

int sv_loop_add(sv_loop *l, int fd, uint32_t events, sv_io_fn fn, void *data)
{
    struct epoll_event ev = {.events = events, .data.fd = fd};
    watch *w;

    if (find(l, fd))
        return -EEXIST;
    w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        int e = errno;

        free(w);
        return -e;
    }
    w->fd = fd;
    w->fn = fn;
    w->data = data;
    w->next = l->watches;
    l->watches = w;
    return 0;
}

int sv_loop_mod(sv_loop *l, int fd, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.fd = fd};

    if (!find(l, fd))
        return -ENOENT;
    return epoll_ctl(l->epfd, EPOLL_CTL_MOD, fd, &ev) < 0 ? -errno : 0;
}

void sv_loop_del(sv_loop *l, int fd)
{
    watch **p;

    for (p = &l->watches; *p; p = &(*p)->next) {
        if ((*p)->fd == fd) {
            watch *w = *p;

            *p = w->next;
            (void)epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
            free(w);
            return;
        }
    }
}

int64_t sv_loop_timer(sv_loop *l, int64_t due_ms, sv_timer_fn fn, void *data)
{
    timer *t = calloc(1, sizeof(*t)), **p;

    if (!t)
        return -ENOMEM;
    t->id = ++l->next_id;
    t->due = due_ms;
    t->fn = fn;
    t->data = data;
    for (p = &l->timers; *p && (*p)->due <= due_ms; p = &(*p)->next)
        ;
    t->next = *p;
    *p = t;
    return t->id;
}

void sv_loop_cancel(sv_loop *l, int64_t id)
{
    timer **p;

    for (p = &l->timers; *p; p = &(*p)->next) {
        if ((*p)->id == id) {
            timer *t = *p;

            *p = t->next;
            free(t);
            return;
        }
    }
}

void sv_loop_stop(sv_loop *l)
{
    l->stop = 1;
}

static void run_due_timers(sv_loop *l)
{
    int64_t now = sv_now_ms();

    while (l->timers && l->timers->due <= now && !l->stop) {
        timer *t = l->timers;

        l->timers = t->next;
        t->fn(l, t->data);
        free(t);
    }
}

int sv_loop_run(sv_loop *l)
{
    struct epoll_event evs[MAX_EVENTS];

    l->stop = 0;
    while (!l->stop) {
        int timeout = -1, n, i;

        if (l->timers) {
            int64_t left = l->timers->due - sv_now_ms();

            timeout = left <= 0 ? 0 : left > 60000 ? 60000 : (int)left;
        }
        n = epoll_wait(l->epfd, evs, MAX_EVENTS, timeout);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        for (i = 0; i < n && !l->stop; i++) {
            watch *w = find(l, evs[i].data.fd);

            /* A callback earlier in this batch may have removed this fd (and a new
             * one may reuse the number: then it is ready or it will say so). */
            if (w)
                w->fn(l, w->fd, evs[i].events, w->data);
        }
        run_due_timers(l);
    }
    return 0;
}
