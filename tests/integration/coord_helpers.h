/* Helpers for the coordinator integration tests (lock, runs, leader, alert):
 * server addresses from the environment, a bounded loop runner, blocking
 * libpq/Redis checks for setup and inspection (never on the code under test),
 * and a TCP proxy that can freeze one client's traffic to Redis. */
#ifndef ORGSYNC_TEST_COORD_HELPERS_H
#define ORGSYNC_TEST_COORD_HELPERS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <uv.h>

#include "common/redis.h"
#include "common/timeutil.h"

/* ---- environment ------------------------------------------------------ */

static inline const char *th_env_or_fail(const char *name)
{
    const char *v = getenv(name);

    if (!v || !*v) {
        fprintf(stderr,
                "%s is not set: run this test through tests/run.sh (it starts PostgreSQL "
                "and Redis)\n",
                name);
        fail_msg("%s missing", name);
    }
    return v;
}

/* A name unique to this process, so tests sharing the servers never meet. */
static inline void th_unique(char *out, size_t len, const char *prefix)
{
    static unsigned seq;
    snprintf(out, len, "%s-%d-%u-%u", prefix, (int)getpid(), (unsigned)(time_wall_ms() % 100000),
             ++seq);
}

/* ---- loop ------------------------------------------------------------- */

static inline void th_noop_timer(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until *flag is non-zero or timeout_ms passes. Returns 1 if the
 * flag was set. A 5 ms ticker keeps uv_run from sleeping past the deadline. */
static inline int th_run_until(uv_loop_t *loop, volatile int *flag, int timeout_ms)
{
    uv_timer_t tick;
    uint64_t end = time_mono_us() + (uint64_t)timeout_ms * 1000;

    uv_timer_init(loop, &tick);
    uv_timer_start(&tick, th_noop_timer, 5, 5);
    while (!(flag && *flag) && time_mono_us() < end)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return flag ? *flag != 0 : 0;
}

static inline void th_run_for(uv_loop_t *loop, int ms)
{
    th_run_until(loop, NULL, ms);
}

/* Drains every handle, then closes the loop; fails if handles are left. */
static inline void th_loop_finish(uv_loop_t *loop)
{
    int i;

    for (i = 0; i < 200 && uv_loop_alive(loop); i++)
        uv_run(loop, UV_RUN_NOWAIT), usleep(1000);
    assert_int_equal(uv_loop_close(loop), 0);
}

/* ---- blocking Redis (inspection only) --------------------------------- */

static inline redisContext *th_redis_connect(const char *url)
{
    char host[256], pw[256], err[256];
    int port, db;
    redisContext *c;
    redisReply *r;

    assert_int_equal(
        redis_url_parse(url, host, sizeof(host), &port, pw, sizeof(pw), &db, err, sizeof(err)), 0);
    c = redisConnect(host, port);
    assert_non_null(c);
    assert_int_equal(c->err, 0);
    if (pw[0]) {
        r = redisCommand(c, "AUTH %s", pw);
        freeReplyObject(r);
    }
    r = redisCommand(c, "SELECT %d", db);
    assert_non_null(r);
    freeReplyObject(r);
    return c;
}

static inline int th_redis_port(const char *url)
{
    char host[256], pw[256], err[256];
    int port, db;

    assert_int_equal(
        redis_url_parse(url, host, sizeof(host), &port, pw, sizeof(pw), &db, err, sizeof(err)), 0);
    return port;
}

/* GET key into out ("" if absent); returns PTTL (-2 absent). */
static inline long long th_redis_get(redisContext *c, const char *key, char *out, size_t len)
{
    redisReply *r = redisCommand(c, "GET %s", key);
    long long pttl;

    assert_non_null(r);
    snprintf(out, len, "%s", r->type == REDIS_REPLY_STRING ? r->str : "");
    freeReplyObject(r);
    r = redisCommand(c, "PTTL %s", key);
    assert_non_null(r);
    pttl = r->integer;
    freeReplyObject(r);
    return pttl;
}

/* ---- blocking PostgreSQL (setup and inspection only) ------------------ */

static inline PGconn *th_pg_connect(const char *dsn)
{
    PGconn *c = PQconnectdb(dsn);

    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("cannot connect to PostgreSQL: %s", PQerrorMessage(c));
    return c;
}

/* Runs sql; returns the first column of the first row (or "" when no row) in
 * out. Fails the test on an error. */
static inline void th_pg_exec(PGconn *c, const char *sql, char *out, size_t len)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);

    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
        fail_msg("SQL failed: %s\n%s", sql, PQresultErrorMessage(r));
    if (out) {
        if (st == PGRES_TUPLES_OK && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
            snprintf(out, len, "%s", PQgetvalue(r, 0, 0));
        else
            snprintf(out, len, "%s", "");
    }
    PQclear(r);
}

static inline long long th_pg_ll(PGconn *c, const char *fmt, ...)
{
    char sql[2048], out[64];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(sql, sizeof(sql), fmt, ap);
    va_end(ap);
    th_pg_exec(c, sql, out, sizeof(out));
    return out[0] ? strtoll(out, NULL, 10) : -1;
}

static inline void th_pg_str(PGconn *c, char *out, size_t len, const char *fmt, ...)
{
    char sql[2048];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(sql, sizeof(sql), fmt, ap);
    va_end(ap);
    th_pg_exec(c, sql, out, len);
}

/* ---- a freezable TCP proxy -------------------------------------------- */

/* Forwards 127.0.0.1:<port> to 127.0.0.1:<target>. While frozen, nothing is
 * read from either side: a client's commands sit in the socket buffers and its
 * replies never come, as if its network (or Redis, for it alone) had stalled. */
typedef struct th_pipe {
    uv_tcp_t down, up; /* client side, server side */
    uv_connect_t creq;
    struct th_proxy *px;
    int up_ok, closing, closed;
    struct th_pipe *next;
} th_pipe;

typedef struct th_proxy {
    uv_loop_t *loop;
    uv_tcp_t listener;
    int target, port, frozen;
    th_pipe *pipes;
} th_proxy;

typedef struct th_wreq {
    uv_write_t w;
    uv_buf_t b;
} th_wreq;

static inline void th_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    (void)h;
    b->base = malloc(sz);
    b->len = b->base ? sz : 0;
}

static inline void th_write_done(uv_write_t *w, int status)
{
    th_wreq *r = (th_wreq *)w;
    (void)status;
    free(r->b.base);
    free(r);
}

static inline void th_pipe_closed(uv_handle_t *h)
{
    th_pipe *p = h->data;
    p->closed++;
}

static inline void th_pipe_close(th_pipe *p)
{
    if (p->closing)
        return;
    p->closing = 1;
    uv_close((uv_handle_t *)&p->down, th_pipe_closed);
    uv_close((uv_handle_t *)&p->up, th_pipe_closed);
}

static inline void th_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    th_pipe *p = s->data;
    uv_stream_t *other =
        s == (uv_stream_t *)&p->down ? (uv_stream_t *)&p->up : (uv_stream_t *)&p->down;
    th_wreq *w;

    if (n < 0) {
        free(b->base);
        th_pipe_close(p);
        return;
    }
    if (n == 0 || p->closing) {
        free(b->base);
        return;
    }
    w = malloc(sizeof(*w));
    assert_non_null(w);
    w->b = uv_buf_init(b->base, (unsigned)n);
    if (uv_write(&w->w, other, &w->b, 1, th_write_done)) {
        free(b->base);
        free(w);
        th_pipe_close(p);
    }
}

static inline void th_pipe_start(th_pipe *p)
{
    if (p->closing || !p->up_ok)
        return;
    uv_read_start((uv_stream_t *)&p->down, th_alloc, th_on_read);
    uv_read_start((uv_stream_t *)&p->up, th_alloc, th_on_read);
}

static inline void th_on_up(uv_connect_t *req, int status)
{
    th_pipe *p = req->data;

    if (status) {
        th_pipe_close(p);
        return;
    }
    p->up_ok = 1;
    if (!p->px->frozen)
        th_pipe_start(p);
}

static inline void th_on_conn(uv_stream_t *srv, int status)
{
    th_proxy *px = srv->data;
    th_pipe *p;
    struct sockaddr_in a;

    if (status)
        return;
    p = calloc(1, sizeof(*p));
    assert_non_null(p);
    p->px = px;
    uv_tcp_init(px->loop, &p->down);
    uv_tcp_init(px->loop, &p->up);
    p->down.data = p->up.data = p->creq.data = p;
    p->next = px->pipes;
    px->pipes = p;
    if (uv_accept(srv, (uv_stream_t *)&p->down)) {
        th_pipe_close(p);
        return;
    }
    uv_ip4_addr("127.0.0.1", px->target, &a);
    if (uv_tcp_connect(&p->creq, &p->up, (struct sockaddr *)&a, th_on_up))
        th_pipe_close(p);
}

static inline void th_proxy_start(th_proxy *px, uv_loop_t *loop, int target)
{
    struct sockaddr_in a;
    struct sockaddr_storage ss;
    int len = sizeof(ss);

    memset(px, 0, sizeof(*px));
    px->loop = loop;
    px->target = target;
    uv_tcp_init(loop, &px->listener);
    px->listener.data = px;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_bind(&px->listener, (struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&px->listener, 16, th_on_conn), 0);
    uv_tcp_getsockname(&px->listener, (struct sockaddr *)&ss, &len);
    px->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static inline void th_proxy_freeze(th_proxy *px, int frozen)
{
    th_pipe *p;

    px->frozen = frozen;
    for (p = px->pipes; p; p = p->next) {
        if (p->closing || !p->up_ok)
            continue;
        if (frozen) {
            uv_read_stop((uv_stream_t *)&p->down);
            uv_read_stop((uv_stream_t *)&p->up);
        } else {
            th_pipe_start(p);
        }
    }
}

static inline void th_proxy_stop(th_proxy *px)
{
    th_pipe *p, *next;

    uv_close((uv_handle_t *)&px->listener, NULL);
    for (p = px->pipes; p; p = p->next)
        th_pipe_close(p);
    uv_run(px->loop, UV_RUN_NOWAIT);
    for (p = px->pipes; p; p = next) {
        next = p->next;
        while (p->closed < 2)
            uv_run(px->loop, UV_RUN_ONCE);
        free(p);
    }
    px->pipes = NULL;
}

#endif
