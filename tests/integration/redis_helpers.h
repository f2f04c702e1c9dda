/* Helpers shared by the Redis integration tests: a loop with a guard timer, and a
 * callback that copies what a reply said (a reply lives only during its callback). */
#ifndef ORGSYNC_TEST_REDIS_HELPERS_H
#define ORGSYNC_TEST_REDIS_HELPERS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/redis.h"

typedef struct result {
    int calls;
    int type; /* REDIS_REPLY_*, or 0 when reply was NULL */
    long long integer;
    char str[512];
    size_t len;
    size_t elements;
    char el[4][128];
    int has_err;
    int err_is_reply_str; /* err pointed at reply->str */
    char err[256];
    uint64_t at; /* uv_now() when the callback ran */
    uv_loop_t *loop;
} result;

static inline void on_result(void *arg, redisReply *reply, const char *err)
{
    result *r = arg;
    size_t i;

    r->calls++;
    r->at = r->loop ? uv_now(r->loop) : 0;
    r->has_err = err != NULL;
    snprintf(r->err, sizeof(r->err), "%s", err ? err : "");
    r->err_is_reply_str = reply && err == reply->str;
    r->type = reply ? reply->type : 0;
    r->len = 0;
    r->str[0] = '\0';
    r->elements = 0;
    if (!reply)
        return;
    r->integer = reply->integer;
    if (reply->str) {
        r->len = reply->len;
        memcpy(r->str, reply->str, reply->len < sizeof(r->str) ? reply->len : sizeof(r->str) - 1);
        r->str[reply->len < sizeof(r->str) ? reply->len : sizeof(r->str) - 1] = '\0';
    }
    r->elements = reply->elements;
    for (i = 0; i < reply->elements && i < 4; i++) {
        redisReply *e = reply->element[i];
        if (e->type == REDIS_REPLY_STRING || e->type == REDIS_REPLY_STATUS)
            snprintf(r->el[i], sizeof(r->el[i]), "%.*s", (int)e->len, e->str);
        else if (e->type == REDIS_REPLY_INTEGER)
            snprintf(r->el[i], sizeof(r->el[i]), "%lld", e->integer);
        else
            snprintf(r->el[i], sizeof(r->el[i]), "<type %d>", e->type);
    }
}

typedef struct tloop {
    uv_loop_t loop;
    uv_timer_t guard, tick;
    int expired;
    redis_client *clients[8]; /* closed by tloop_close if a failed test left them */
} tloop;

static inline void tloop_on_guard(uv_timer_t *t)
{
    ((tloop *)t->data)->expired = 1;
}

static inline void tloop_on_tick(uv_timer_t *t)
{
    (void)t; /* only wakes uv_run(UV_RUN_ONCE) so predicates get re-checked */
}

static inline void tloop_init(tloop *l)
{
    memset(l, 0, sizeof(*l));
    assert_int_equal(uv_loop_init(&l->loop), 0);
    uv_timer_init(&l->loop, &l->guard);
    uv_timer_init(&l->loop, &l->tick);
    l->guard.data = l;
    l->tick.data = l;
}

/* Runs the loop until pred(p) holds or ms pass; returns pred(p). */
static inline int tloop_run_until(tloop *l, int (*pred)(void *), void *p, uint64_t ms)
{
    l->expired = 0;
    uv_timer_start(&l->guard, tloop_on_guard, ms, 0);
    uv_timer_start(&l->tick, tloop_on_tick, 5, 5);
    while (!(pred && pred(p)) && !l->expired)
        uv_run(&l->loop, UV_RUN_ONCE);
    uv_timer_stop(&l->guard);
    uv_timer_stop(&l->tick);
    return pred ? pred(p) : 1;
}

static inline void tloop_run_for(tloop *l, uint64_t ms)
{
    (void)tloop_run_until(l, NULL, NULL, ms);
}

static inline int pred_calls(void *p)
{
    return ((result *)p)->calls > 0;
}

static inline int pred_flag(void *p)
{
    return *(int *)p != 0;
}

/* Waits for one callback on r; fails the test if it does not come. */
static inline void tloop_wait(tloop *l, result *r, uint64_t ms)
{
    if (!tloop_run_until(l, pred_calls, r, ms))
        fail_msg("no reply within %llu ms", (unsigned long long)ms);
}

static inline void tloop_on_closed(void *arg)
{
    (*(int *)arg)++;
}

/* A client that tloop_close will close if the test does not. */
static inline redis_client *tloop_client(tloop *l, const redis_opts *o)
{
    redis_client *c = redis_new(&l->loop, o);
    size_t i;

    for (i = 0; c && i < sizeof(l->clients) / sizeof(l->clients[0]); i++) {
        if (!l->clients[i]) {
            l->clients[i] = c;
            break;
        }
    }
    return c;
}

/* Closes c and waits for its done callback (which must come exactly once). */
static inline int tloop_close_client(tloop *l, redis_client *c)
{
    int closed = 0;
    size_t i;

    for (i = 0; i < sizeof(l->clients) / sizeof(l->clients[0]); i++)
        if (l->clients[i] == c)
            l->clients[i] = NULL;
    redis_close(c, tloop_on_closed, &closed);
    if (!tloop_run_until(l, pred_flag, &closed, 5000))
        return -1;
    return closed == 1 ? 0 : -1;
}

static inline void tloop_count_open(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h)) {
        (*(int *)arg)++;
        uv_close(h, NULL);
    }
}

/* Closes every client still tracked, then the loop. Returns 0, or -1 if a close
 * did not finish or a handle was left open (those are closed here so the loop
 * can be freed, and the test is failed by the teardown's return value). */
static inline int tloop_close(tloop *l)
{
    int rc = 0, open = 0;
    size_t i;

    for (i = 0; i < sizeof(l->clients) / sizeof(l->clients[0]); i++) {
        if (l->clients[i] && tloop_close_client(l, l->clients[i]) < 0) {
            print_error("redis_close did not finish\n");
            rc = -1;
        }
    }
    uv_close((uv_handle_t *)&l->guard, NULL);
    uv_close((uv_handle_t *)&l->tick, NULL);
    uv_walk(&l->loop, tloop_count_open, &open);
    if (open) {
        print_error("%d libuv handles left open after close\n", open);
        rc = -1;
    }
    uv_run(&l->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&l->loop) != 0) {
        print_error("uv_loop_close: busy\n");
        rc = -1;
    }
    return rc;
}

static inline int pred_connected(void *p)
{
    return redis_connected(p);
}

static inline void tloop_wait_connected(tloop *l, redis_client *c, uint64_t ms)
{
    if (!tloop_run_until(l, pred_connected, c, ms))
        fail_msg("redis client not connected within %llu ms", (unsigned long long)ms);
}

#endif
