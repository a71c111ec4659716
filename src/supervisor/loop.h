/* SPDX-License-Identifier: MIT */
/*
 * The supervisor's event loop: epoll over file descriptors, one callback each, and
 * one-shot timers on a timerfd. Single-threaded; callbacks run from sv_loop_run and may
 * add or remove any watch, including their own. No busy polling: the loop sleeps in
 * epoll_wait until an fd is ready or the nearest timer is due.
 */
#ifndef SMOLVM_SV_LOOP_H
#define SMOLVM_SV_LOOP_H

#include <stdint.h>
#include <sys/epoll.h>

typedef struct sv_loop sv_loop;

/* Called when fd is ready; events is the epoll mask (EPOLLIN, EPOLLOUT, EPOLLHUP...). */
typedef void (*sv_io_fn)(sv_loop *loop, int fd, uint32_t events, void *data);
/* Called once when a timer is due. */
typedef void (*sv_timer_fn)(sv_loop *loop, void *data);

sv_loop *sv_loop_new(void);
/* Frees the loop; watched fds are not closed (their owners close them). */
sv_loop *sv_loop_free(sv_loop *loop);

/* Watch fd for events (EPOLLIN/EPOLLOUT; EPOLLHUP/EPOLLERR are always reported).
 * One watch per fd. Returns 0 or -errno. */
int sv_loop_add(sv_loop *loop, int fd, uint32_t events, sv_io_fn fn, void *data);
/* Change the events of a watched fd. */
int sv_loop_mod(sv_loop *loop, int fd, uint32_t events);
/* Stop watching fd (before closing it). Unknown fds are ignored. */
void sv_loop_del(sv_loop *loop, int fd);

/* A one-shot timer at monotonic time due_ms (sv_now_ms clock). Returns an id > 0, or
 * -errno. sv_loop_cancel with that id before it fires cancels it (unknown ids are
 * ignored). */
int64_t sv_loop_timer(sv_loop *loop, int64_t due_ms, sv_timer_fn fn, void *data);
void sv_loop_cancel(sv_loop *loop, int64_t id);

/* Run until sv_loop_stop. Returns 0, or -errno if epoll failed. */
int sv_loop_run(sv_loop *loop);
void sv_loop_stop(sv_loop *loop);

/* CLOCK_MONOTONIC in milliseconds. */
int64_t sv_now_ms(void);

#endif
