/* Async Redis client: hiredis 0.14.1 contexts driven by the libuv adapter, with
 * our own timers for what hiredis lacks (connect and command timeouts, reconnects).
 *
 * Lifetimes, the part that is easy to get wrong:
 *  - A request handed to hiredis (redis_req) is freed only by our hiredis reply
 *    callback, which hiredis calls exactly once per command: with the reply, or with
 *    NULL when it frees the context. `done` records that the user's callback already
 *    ran (timeout, drop, close), so a late reply is freed and otherwise ignored.
 *  - A connection (redis_conn) is never freed from inside a hiredis callback. When we
 *    give one up it becomes a zombie: detached from the client at once, freed with
 *    redisAsyncFree on the next loop turn (the idle handle). When hiredis frees a
 *    context on its own (connect error, EOF, protocol error) it tells us through a
 *    NULL reply or the connect/disconnect callbacks; we then forget its pointer.
 *  - Failures of commands that never reached hiredis (not connected, closing) are
 *    delivered from the idle handle too, never from inside redis_cmd.
 *  - The client is freed only after every zombie is gone, every failure delivered,
 *    every address lookup returned and our three handles closed. */
#include "common/redis.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <hiredis/async.h>
#include <hiredis/adapters/libuv.h>
#include <openssl/evp.h>

#include "common/log.h"

#define DEFAULT_TIMEOUT_MS 2000
#define BACKOFF_BASE_MS 100
#define BACKOFF_CAP_MS 5000

enum { ST_WAIT, ST_CONNECTING, ST_READY, ST_CLOSING };
enum { RQ_USER, RQ_EVALSHA, RQ_AUTH, RQ_SELECT, RQ_ASK, RQ_ROLE };
/* What the current connection is for: the one server of a redis:// URL; a
 * sentinel being asked for the master's address; the master it named. */
enum { PH_DIRECT, PH_SENTINEL, PH_MASTER };

typedef struct redis_conn {
    struct redis_conn *next; /* in the zombie list */
    redis_client *c;
    redisAsyncContext *ac; /* NULL once hiredis has freed it */
} redis_conn;

typedef struct redis_req {
    struct redis_req *prev, *next;
    redis_client *c;
    redis_conn *conn; /* the connection it was sent on (handshake requests) */
    int kind;
    int done; /* the user's callback has run (or moved to an EVAL fallback) */
    uint64_t deadline;
    redis_cb cb;
    void *arg;
    char *fallback; /* RQ_EVALSHA: the formatted EVAL to send on NOSCRIPT */
    int fallback_len;
    const char *fail_err; /* deferred failure text */
} redis_req;

typedef struct req_list {
    redis_req *head, *tail;
    size_t n;
} req_list;

typedef struct redis_resolve {
    uv_getaddrinfo_t req;
    redis_client *c;
} redis_resolve;

struct redis_client {
    uv_loop_t *loop;
    redis_url_info u; /* the parsed URL (credentials included) */
    char host[256];   /* the current connection's target */
    int port;
    int phase;        /* PH_* of the current (or next) connection */
    int sentinel_idx; /* the sentinel asked next */
    int have_master;  /* master_host/port were just named by a sentinel */
    char master_host[256];
    int master_port;
    int connect_timeout_ms, command_timeout_ms;
    int state;
    int closing, close_started, handles_left;
    redis_conn *conn;       /* current connection, NULL while waiting or resolving */
    redis_conn *zombies;    /* given up, to be freed on the next loop turn */
    redis_resolve *resolve; /* current address lookup */
    int resolves;           /* lookups in flight, current or stale */
    req_list pending;       /* sent on conn, oldest first (so earliest deadline first) */
    req_list deferred;      /* never sent; fail on the next loop turn */
    uv_timer_t conn_timer;  /* backoff delay in ST_WAIT, connect timeout in ST_CONNECTING */
    uv_timer_t cmd_timer;   /* deadline of pending.head */
    uv_idle_t idle;         /* deferred work: failures, zombies, finishing a close */
    unsigned attempt;
    int ever_connected;
    uint64_t rng;
    redis_stats stats;
    void (*done)(void *arg);
    void *done_arg;
};

static void start_connect(redis_client *c);
static void on_reply(redisAsyncContext *ac, void *r, void *privdata);
static void on_idle(uv_idle_t *h);
static void on_cmd_timeout(uv_timer_t *t);

/* ---- small helpers ---------------------------------------------------- */

static void list_push(req_list *l, redis_req *q)
{
    q->next = NULL;
    q->prev = l->tail;
    if (l->tail)
        l->tail->next = q;
    else
        l->head = q;
    l->tail = q;
    l->n++;
}

static void list_unlink(req_list *l, redis_req *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        l->head = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else
        l->tail = q->prev;
    q->prev = q->next = NULL;
    l->n--;
}

static void req_free(redis_req *q)
{
    if (q->fallback)
        redisFreeCommand(q->fallback);
    free(q);
}

static void deliver(redis_client *c, redis_req *q, redisReply *reply, const char *err)
{
    q->done = 1;
    if (err)
        c->stats.errors++;
    q->cb(q->arg, reply, err);
}

static void kick(redis_client *c)
{
    if (!c->close_started)
        uv_idle_start(&c->idle, on_idle);
}

/* xorshift64*: jitter only needs to spread clients apart, not to be secret. */
static uint64_t rng_next(redis_client *c)
{
    uint64_t x = c->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    c->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static uint64_t backoff_delay(redis_client *c)
{
    uint64_t cap = BACKOFF_BASE_MS;
    unsigned i;

    for (i = 0; i < c->attempt && cap < BACKOFF_CAP_MS; i++)
        cap *= 2;
    if (cap > BACKOFF_CAP_MS)
        cap = BACKOFF_CAP_MS;
    return rng_next(c) % (cap + 1);
}

/* ---- failing requests ------------------------------------------------- */

/* Fails every request in l (already detached from the client), oldest first.
 * Requests whose deadline is at or before expired_at get "timeout". Each is
 * unlinked before its callback runs, so a callback may call anything. */
static void fail_list(redis_client *c, req_list *l, const char *err, uint64_t expired_at)
{
    redis_req *q;

    while ((q = l->head) != NULL) {
        list_unlink(l, q);
        if (expired_at && q->deadline <= expired_at) {
            c->stats.timeouts++;
            deliver(c, q, NULL, REDIS_ERR_TIMEOUT);
        } else {
            deliver(c, q, NULL, err);
        }
        /* Still owned by hiredis: on_reply frees it when the context lets go. */
    }
}

static void defer_fail(redis_client *c, redis_req *q, const char *err)
{
    if (c->close_started) {
        /* Misuse (a command after close finished its deferred work): there is no
         * handle left to defer with, so fail here rather than lose the callback. */
        deliver(c, q, NULL, err);
        req_free(q);
        return;
    }
    q->fail_err = err;
    list_push(&c->deferred, q);
    kick(c);
}

/* ---- connection state ------------------------------------------------- */

static void on_conn_timer(uv_timer_t *t);

static void schedule_reconnect(redis_client *c)
{
    uint64_t delay;

    if (c->closing)
        return;
    if (c->state == ST_CONNECTING)
        c->stats.connect_failures++;
    /* A sentinel that failed us: ask the next one. A master that failed (or is
     * not a master any more): ask again from the sentinels. */
    if (c->u.sentinel && c->phase == PH_SENTINEL)
        c->sentinel_idx = (c->sentinel_idx + 1) % c->u.naddrs;
    c->have_master = 0;
    delay = backoff_delay(c);
    c->attempt++;
    c->state = ST_WAIT;
    log_debug("redis reconnect scheduled", LF_S("host", c->host), LF_I("port", c->port),
              LF_I("attempt", c->attempt), LF_I("delay_ms", delay));
    uv_timer_start(&c->conn_timer, on_conn_timer, delay, 0);
}

static void arm_cmd_timer(redis_client *c);

/* Gives up the current connection (if any): it becomes a zombie freed on the next
 * loop turn, every pending request fails, and a reconnect is scheduled unless the
 * client is closing. Safe from inside hiredis callbacks. */
static void conn_abandon(redis_client *c, const char *err, uint64_t expired_at)
{
    redis_conn *conn = c->conn;
    req_list l = c->pending;

    memset(&c->pending, 0, sizeof(c->pending));
    uv_timer_stop(&c->cmd_timer);
    if (conn) {
        c->conn = NULL;
        conn->next = c->zombies;
        c->zombies = conn;
        kick(c);
    }
    if (!c->closing)
        schedule_reconnect(c);
    fail_list(c, &l, err, expired_at);
}

/* hiredis is freeing conn's context by itself: forget the pointer, and if it was
 * our current connection, fail what was pending on it and reconnect. */
static void conn_lost(redis_conn *conn, const redisAsyncContext *ac, const char *what)
{
    redis_client *c = conn->c;

    conn->ac = NULL;
    if (conn != c->conn)
        return;
    /* ac->c.err, not ac->err: hiredis copies the error to ac->err only after the
     * connect callback has run. */
    log_warn(what, LF_S("host", c->host), LF_I("port", c->port),
             LF_S("err", ac->c.err ? ac->c.errstr : "closed by server"));
    conn_abandon(c, REDIS_ERR_DISCONNECTED, 0);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    redis_conn *conn = ac->data;

    if (status != REDIS_OK)
        conn_lost(conn, ac, "redis connect failed");
    /* On success we wait for the handshake (AUTH, SELECT) to answer. */
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    conn_lost(ac->data, ac, "redis connection lost");
}

static void on_ready(redis_client *c)
{
    uv_timer_stop(&c->conn_timer);
    c->state = ST_READY;
    c->attempt = 0;
    if (c->ever_connected)
        c->stats.reconnects++;
    c->ever_connected = 1;
    if (c->u.sentinel)
        log_info("redis connected to the master named by the sentinels", LF_S("host", c->host),
                 LF_I("port", c->port), LF_S("master", c->u.master), LF_I("db", c->u.db));
    else
        log_info("redis connected", LF_S("host", c->host), LF_I("port", c->port),
                 LF_I("db", c->u.db));
}

/* The adapter's poll callback ignores a non-zero status. libuv reports a socket
 * error (ECONNREFUSED while connecting, a reset later) as UV_EBADF and stops the
 * handle, so with the adapter alone hiredis never learns of it and the connection
 * just hangs until one of our timeouts. Our callback lets hiredis look (it reads
 * the real error with getsockopt/read and frees the context); the adapter's
 * struct, attach and cleanup stay in use. */
static void poll_cb(uv_poll_t *h, int status, int events)
{
    redisLibuvEvents *p = h->data;

    if (status < 0)
        events = UV_READABLE | UV_WRITABLE;
    if (p->context && (events & UV_READABLE))
        redisAsyncHandleRead(p->context);
    if (p->context && (events & UV_WRITABLE))
        redisAsyncHandleWrite(p->context);
    if (status < 0 && p->context && p->events)
        uv_poll_start(&p->handle, p->events, poll_cb); /* libuv stopped it */
}

static void poll_update(redisLibuvEvents *p)
{
    if (p->events)
        uv_poll_start(&p->handle, p->events, poll_cb);
    else
        uv_poll_stop(&p->handle);
}

static void ev_add_read(void *d)
{
    ((redisLibuvEvents *)d)->events |= UV_READABLE;
    poll_update(d);
}

static void ev_del_read(void *d)
{
    ((redisLibuvEvents *)d)->events &= ~UV_READABLE;
    poll_update(d);
}

static void ev_add_write(void *d)
{
    ((redisLibuvEvents *)d)->events |= UV_WRITABLE;
    poll_update(d);
}

static void ev_del_write(void *d)
{
    ((redisLibuvEvents *)d)->events &= ~UV_WRITABLE;
    poll_update(d);
}

static int send_handshake(redis_client *c, redis_conn *conn, int kind, const char *fmt, ...)
{
    redis_req *q = calloc(1, sizeof(*q));
    va_list ap;
    int rc;

    if (!q)
        return -ENOMEM;
    q->c = c;
    q->conn = conn;
    q->kind = kind;
    va_start(ap, fmt);
    rc = redisvAsyncCommand(conn->ac, on_reply, q, fmt, ap);
    va_end(ap);
    if (rc != REDIS_OK) {
        free(q);
        return -EIO;
    }
    return 0;
}

/* AUTH [user] password when a password is set (with a user: Redis 6 ACLs), then
 * for a sentinel the question, for a server SELECT (always sent, so a server that
 * accepts but does not answer is caught by the connect timeout) and, for a
 * master named by the sentinels, ROLE to confirm it still is one. */
static int send_auth(redis_client *c, redis_conn *conn, const char *user, const char *pw)
{
    if (!pw[0])
        return 0;
    if (user[0])
        return send_handshake(c, conn, RQ_AUTH, "AUTH %s %s", user, pw);
    return send_handshake(c, conn, RQ_AUTH, "AUTH %s", pw);
}

static int send_handshakes(redis_client *c, redis_conn *conn)
{
    if (c->phase == PH_SENTINEL)
        return send_auth(c, conn, c->u.sentinel_user, c->u.sentinel_password) < 0 ||
                       send_handshake(c, conn, RQ_ASK, "SENTINEL get-master-addr-by-name %s",
                                      c->u.master) < 0
                   ? -1
                   : 0;
    if (send_auth(c, conn, c->u.user, c->u.password) < 0 ||
        send_handshake(c, conn, RQ_SELECT, "SELECT %d", c->u.db) < 0)
        return -1;
    if (c->phase == PH_MASTER && send_handshake(c, conn, RQ_ROLE, "ROLE") < 0)
        return -1;
    return 0;
}

static void connect_ip(redis_client *c, const char *ip)
{
    redisAsyncContext *ac = redisAsyncConnect(ip, c->port);
    redis_conn *conn = NULL;

    if (!ac || ac->err) {
        log_warn("redis connect failed", LF_S("host", c->host), LF_I("port", c->port),
                 LF_S("err", ac ? ac->errstr : "out of memory"));
        goto fail;
    }
    if (redisLibuvAttach(ac, c->loop) != REDIS_OK) {
        log_error("redis: cannot attach to the loop", LF_S("host", c->host));
        goto fail;
    }
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    conn = calloc(1, sizeof(*conn));
    if (!conn)
        goto fail;
    conn->c = c;
    conn->ac = ac;
    ac->data = conn;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* Keepalive lets the kernel notice a peer that vanished while we were idle. */
    redisEnableKeepAlive(&ac->c);
    c->conn = conn;
    /* The handshake is queued now and written once the socket connects; the
     * connection counts as up only when SELECT (always sent, so a server that
     * accepts but does not answer is caught by the connect timeout) has answered. */
    if (send_handshakes(c, conn) < 0)
        conn_abandon(c, REDIS_ERR_DISCONNECTED, 0);
    return;

fail:
    if (ac)
        redisAsyncFree(ac); /* not attached to us yet and not inside hiredis: safe */
    conn_abandon(c, REDIS_ERR_DISCONNECTED, 0);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    redis_resolve *r = (redis_resolve *)req;
    redis_client *c = r->c;
    int current = c->resolve == r;
    char ip[INET6_ADDRSTRLEN];
    int rc = status;

    c->resolves--;
    if (current)
        c->resolve = NULL;
    free(r);
    if (!current || c->closing) {
        uv_freeaddrinfo(res);
        kick(c); /* a close may have been waiting for this lookup */
        return;
    }
    if (rc == 0 && !res)
        rc = UV_EAI_NONAME;
    if (rc == 0)
        rc = uv_ip_name(res->ai_addr, ip, sizeof(ip));
    uv_freeaddrinfo(res);
    if (rc < 0) {
        log_warn("redis host lookup failed", LF_S("host", c->host), LF_S("err", uv_strerror(rc)));
        conn_abandon(c, REDIS_ERR_DISCONNECTED, 0);
        return;
    }
    connect_ip(c, ip);
}

static int host_is_numeric(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];

    return uv_inet_pton(AF_INET, host, buf) == 0 || uv_inet_pton(AF_INET6, host, buf) == 0;
}

/* hiredis resolves names with a blocking getaddrinfo(), so a name is looked up
 * on libuv's thread pool first and hiredis only ever sees a numeric address. */
static void start_resolve(redis_client *c)
{
    struct addrinfo hints;
    redis_resolve *r = calloc(1, sizeof(*r));
    int rc;

    if (!r) {
        conn_abandon(c, REDIS_ERR_DISCONNECTED, 0);
        return;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    r->c = c;
    rc = uv_getaddrinfo(c->loop, &r->req, on_resolved, c->host, NULL, &hints);
    if (rc < 0) {
        free(r);
        log_warn("redis host lookup failed", LF_S("host", c->host), LF_S("err", uv_strerror(rc)));
        conn_abandon(c, REDIS_ERR_DISCONNECTED, 0);
        return;
    }
    c->resolve = r;
    c->resolves++;
}

static void start_connect(redis_client *c)
{
    c->state = ST_CONNECTING;
    if (!c->u.sentinel) {
        c->phase = PH_DIRECT;
    } else if (c->have_master) {
        c->phase = PH_MASTER;
        snprintf(c->host, sizeof(c->host), "%s", c->master_host);
        c->port = c->master_port;
    } else {
        c->phase = PH_SENTINEL;
        snprintf(c->host, sizeof(c->host), "%s", c->u.addrs[c->sentinel_idx].host);
        c->port = c->u.addrs[c->sentinel_idx].port;
    }
    uv_timer_start(&c->conn_timer, on_conn_timer, (uint64_t)c->connect_timeout_ms, 0);
    if (host_is_numeric(c->host))
        connect_ip(c, c->host);
    else
        start_resolve(c);
}

static void on_conn_timer(uv_timer_t *t)
{
    redis_client *c = t->data;

    if (c->state == ST_WAIT) {
        start_connect(c);
        return;
    }
    if (c->state != ST_CONNECTING)
        return;
    log_warn("redis connect timed out", LF_S("host", c->host), LF_I("port", c->port),
             LF_I("timeout_ms", c->connect_timeout_ms));
    if (c->resolve) {
        /* The lookup cannot be stopped once a pool thread runs it; its answer is
         * ignored when it comes (on_resolved sees it is no longer current). */
        uv_cancel((uv_req_t *)&c->resolve->req);
        c->resolve = NULL;
    }
    conn_abandon(c, REDIS_ERR_DISCONNECTED, 0);
}

/* ---- commands and replies --------------------------------------------- */

static void arm_cmd_timer(redis_client *c)
{
    uint64_t now, delay;

    if (!c->pending.head) {
        uv_timer_stop(&c->cmd_timer);
        return;
    }
    now = uv_now(c->loop);
    delay = c->pending.head->deadline > now ? c->pending.head->deadline - now : 0;
    uv_timer_start(&c->cmd_timer, on_cmd_timeout, delay, 0);
}

/* Redis < 6: "ERR Client sent AUTH, but no password is set"; 6 and later: "ERR
 * AUTH <password> called without any password configured for the default user". */
static int auth_not_needed(const char *err)
{
    return strstr(err, "no password is set") || strstr(err, "without any password configured");
}

/* SENTINEL get-master-addr-by-name answers [ip, port], or nil for a name it does
 * not monitor. The sentinel connection is let go (freed on the next loop turn)
 * and the master connected to at once. */
static void sentinel_answer(redis_client *c, const redisReply *reply)
{
    redis_conn *conn = c->conn;
    long port = 0;
    char *endp = NULL;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_STRING ||
        reply->element[0]->len >= sizeof(c->master_host) || reply->element[0]->len == 0) {
        log_warn("redis sentinel does not know the master", LF_S("host", c->host),
                 LF_I("port", c->port), LF_S("master", c->u.master));
        conn_abandon(c, REDIS_ERR_DISCONNECTED, 0);
        return;
    }
    port = strtol(reply->element[1]->str, &endp, 10);
    if (!endp || *endp || port <= 0 || port > 65535) {
        log_warn("redis sentinel answered a bad port", LF_S("host", c->host), LF_I("port", c->port),
                 LF_S("master", c->u.master));
        conn_abandon(c, REDIS_ERR_DISCONNECTED, 0);
        return;
    }
    memcpy(c->master_host, reply->element[0]->str, reply->element[0]->len);
    c->master_host[reply->element[0]->len] = '\0';
    c->master_port = (int)port;
    c->have_master = 1;
    log_debug("redis sentinel named the master", LF_S("sentinel", c->host),
              LF_I("sentinel_port", c->port), LF_S("master", c->u.master),
              LF_S("host", c->master_host), LF_I("port", c->master_port));
    c->conn = NULL;
    conn->next = c->zombies;
    c->zombies = conn;
    kick(c);
    start_connect(c);
}

/* ROLE answers ["master", offset, replicas] on a master. Anything else (a
 * replica, a sentinel) means the sentinel's answer is stale: ask again. */
static void role_answer(redis_client *c, const redisReply *reply)
{
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        strcmp(reply->element[0]->str, "master") != 0) {
        log_warn("redis: the server the sentinels named is not a master; asking again",
                 LF_S("host", c->host), LF_I("port", c->port), LF_S("master", c->u.master),
                 LF_S("role", reply->type == REDIS_REPLY_ARRAY && reply->elements >= 1 &&
                                      reply->element[0]->type == REDIS_REPLY_STRING
                                  ? reply->element[0]->str
                                  : "?"));
        conn_abandon(c, REDIS_ERR_DISCONNECTED, 0);
        return;
    }
    on_ready(c);
}

static void handshake_reply(redis_req *q, const redisAsyncContext *ac, redisReply *reply)
{
    redis_client *c = q->c;

    if (q->conn != c->conn)
        return; /* an abandoned connection: nothing it says matters */
    if (!reply) {
        conn_lost(q->conn, ac, "redis connection lost");
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR && q->kind == RQ_AUTH && auth_not_needed(reply->str)) {
        /* A password the server does not ask for: it lets everyone in anyway, and
         * tolerating it lets clients get the password before the server does. */
        log_warn("redis: a password is configured but the server has none", LF_S("host", c->host),
                 LF_I("port", c->port));
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        /* Error texts from AUTH/SELECT never contain the password. */
        const char *what = q->kind == RQ_AUTH     ? "redis AUTH failed"
                           : q->kind == RQ_SELECT ? "redis SELECT failed"
                           : q->kind == RQ_ASK    ? "redis sentinel refused the master's address"
                                                  : "redis ROLE failed";
        const char *user = c->phase == PH_SENTINEL ? c->u.sentinel_user : c->u.user;
        log_error(what, LF_S("host", c->host), LF_I("port", c->port),
                  LF_S("user", user[0] ? user : "default"), LF_S("err", reply->str));
        conn_abandon(c, REDIS_ERR_DISCONNECTED, 0);
        return;
    }
    if (q->kind == RQ_ASK) {
        sentinel_answer(c, reply);
        return;
    }
    if (q->kind == RQ_ROLE) {
        role_answer(c, reply);
        return;
    }
    if (q->kind == RQ_SELECT && c->phase == PH_DIRECT)
        on_ready(c);
}

static int submit(redis_client *c, int kind, redis_cb cb, void *arg, const char *cmd, int len,
                  char *fallback, int fallback_len);

static void user_reply(redis_req *q, const redisAsyncContext *ac, redisReply *reply)
{
    redis_client *c = q->c;

    /* Invariant: a request not yet done is in c->pending and was sent on c->conn. */
    if (!reply) {
        /* hiredis is freeing the context (q is still in pending, so it is failed
         * with the others, in order). */
        conn_lost(q->conn, ac, "redis connection lost");
        return;
    }
    list_unlink(&c->pending, q);
    arm_cmd_timer(c);
    if (reply->type == REDIS_REPLY_ERROR) {
        if (q->kind == RQ_EVALSHA && strncmp(reply->str, "NOSCRIPT", 8) == 0 &&
            submit(c, RQ_USER, q->cb, q->arg, q->fallback, q->fallback_len, NULL, 0) == 0) {
            q->done = 1; /* its callback now belongs to the EVAL */
            return;
        }
        if (c->u.sentinel && strncmp(reply->str, "READONLY", 8) == 0) {
            /* The master we have became a replica (a failover whose sentinels
             * did not kill our connection): drop it, ask the sentinels again. */
            redis_conn *conn = q->conn;
            deliver(c, q, reply, reply->str);
            if (c->conn == conn && !c->closing) {
                log_warn("redis master is read-only now (failed over?): asking the sentinels",
                         LF_S("host", c->host), LF_I("port", c->port));
                conn_abandon(c, REDIS_ERR_DISCONNECTED, 0);
            }
            return;
        }
        deliver(c, q, reply, reply->str);
        return;
    }
    deliver(c, q, reply, NULL);
}

static void on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    redis_req *q = privdata;

    if (!q->done) {
        if (q->kind != RQ_USER && q->kind != RQ_EVALSHA)
            handshake_reply(q, ac, r);
        else
            user_reply(q, ac, r);
    }
    req_free(q);
}

static void on_cmd_timeout(uv_timer_t *t)
{
    redis_client *c = t->data;
    uint64_t now = uv_now(c->loop);

    if (!c->pending.head || c->pending.head->deadline > now) {
        arm_cmd_timer(c);
        return;
    }
    /* Replies come in order, so every later reply waits behind the one that is
     * late: the connection is useless (a half-open TCP connection would stay so
     * forever). Drop it; the late reply, if it ever comes, goes nowhere. */
    log_warn("redis command timed out, dropping the connection", LF_S("host", c->host),
             LF_I("port", c->port), LF_I("timeout_ms", c->command_timeout_ms),
             LF_I("pending", c->pending.n));
    conn_abandon(c, REDIS_ERR_DISCONNECTED, now);
}

static int submit(redis_client *c, int kind, redis_cb cb, void *arg, const char *cmd, int len,
                  char *fallback, int fallback_len)
{
    redis_req *q = calloc(1, sizeof(*q));

    if (!q) {
        if (fallback)
            redisFreeCommand(fallback);
        return -ENOMEM;
    }
    q->c = c;
    q->kind = kind;
    q->cb = cb;
    q->arg = arg;
    q->fallback = fallback;
    q->fallback_len = fallback_len;
    if (c->state != ST_READY) {
        defer_fail(c, q, c->closing ? REDIS_ERR_CLOSING : REDIS_ERR_NOT_CONNECTED);
        return 0;
    }
    q->conn = c->conn;
    if (redisAsyncFormattedCommand(c->conn->ac, on_reply, q, cmd, (size_t)len) != REDIS_OK) {
        /* Only when hiredis is already tearing the context down. */
        defer_fail(c, q, REDIS_ERR_DISCONNECTED);
        return 0;
    }
    q->deadline = uv_now(c->loop) + (uint64_t)c->command_timeout_ms;
    list_push(&c->pending, q);
    if (c->pending.head == q)
        arm_cmd_timer(c);
    c->stats.commands++;
    return 0;
}

int redis_cmd(redis_client *c, redis_cb cb, void *arg, const char *fmt, ...)
{
    char *cmd = NULL;
    va_list ap;
    int len, rc;

    if (!c || !cb || !fmt)
        return -EINVAL;
    va_start(ap, fmt);
    len = redisvFormatCommand(&cmd, fmt, ap);
    va_end(ap);
    if (len < 0)
        return len == -2 ? -EINVAL : -ENOMEM;
    rc = submit(c, RQ_USER, cb, arg, cmd, len, NULL, 0);
    redisFreeCommand(cmd);
    return rc;
}

int redis_cmdv(redis_client *c, redis_cb cb, void *arg, int argc, const char **argv,
               const size_t *argvlen)
{
    char *cmd = NULL;
    int len, rc;

    if (!c || !cb || argc <= 0 || !argv)
        return -EINVAL;
    len = redisFormatCommandArgv(&cmd, argc, argv, argvlen);
    if (len < 0)
        return -ENOMEM;
    rc = submit(c, RQ_USER, cb, arg, cmd, len, NULL, 0);
    redisFreeCommand(cmd);
    return rc;
}

static int script_sha(redis_script *s)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0, i;

    if (!EVP_Digest(s->src, strlen(s->src), md, &mdlen, EVP_sha1(), NULL) || mdlen != 20)
        return -ENOMEM;
    for (i = 0; i < mdlen; i++) {
        s->sha[2 * i] = hex[md[i] >> 4];
        s->sha[2 * i + 1] = hex[md[i] & 15];
    }
    s->sha[40] = '\0';
    return 0;
}

int redis_eval(redis_client *c, redis_script *s, int nkeys, int argc, const char **argv,
               redis_cb cb, void *arg)
{
    const char **v = NULL;
    char *cmd = NULL, *fallback = NULL;
    char nk[16];
    int len, fallback_len, rc = -ENOMEM, i;

    if (!c || !s || !s->src || !cb || nkeys < 0 || argc < nkeys || (argc > 0 && !argv))
        return -EINVAL;
    if (!s->sha[0] && script_sha(s) < 0)
        return -ENOMEM;
    v = malloc(sizeof(*v) * (size_t)(argc + 3));
    if (!v)
        goto cleanup;
    snprintf(nk, sizeof(nk), "%d", nkeys);
    v[2] = nk;
    for (i = 0; i < argc; i++)
        v[3 + i] = argv[i];
    v[0] = "EVALSHA";
    v[1] = s->sha;
    len = redisFormatCommandArgv(&cmd, argc + 3, v, NULL);
    if (len < 0)
        goto cleanup;
    /* Formatted now: the caller's argv need not outlive this call. */
    v[0] = "EVAL";
    v[1] = s->src;
    fallback_len = redisFormatCommandArgv(&fallback, argc + 3, v, NULL);
    if (fallback_len < 0)
        goto cleanup;
    rc = submit(c, RQ_EVALSHA, cb, arg, cmd, len, fallback, fallback_len);
    fallback = NULL; /* submit owns it now */

cleanup:
    if (fallback)
        redisFreeCommand(fallback);
    if (cmd)
        redisFreeCommand(cmd);
    free(v);
    return rc;
}

/* ---- deferred work and closing ---------------------------------------- */

static void on_handle_closed(uv_handle_t *h)
{
    redis_client *c = h->data;
    void (*done)(void *) = c->done;
    void *arg = c->done_arg;

    if (--c->handles_left > 0)
        return;
    explicit_bzero(&c->u, sizeof(c->u));
    free(c);
    if (done)
        done(arg);
}

static void maybe_finish_close(redis_client *c)
{
    if (!c->closing || c->close_started || c->deferred.head || c->zombies || c->resolves > 0 ||
        c->pending.head)
        return;
    c->close_started = 1;
    c->handles_left = 3;
    uv_close((uv_handle_t *)&c->conn_timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->cmd_timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->idle, on_handle_closed);
}

static void on_idle(uv_idle_t *h)
{
    redis_client *c = h->data;
    req_list l = c->deferred;
    redis_req *q;
    redis_conn *z;

    uv_idle_stop(&c->idle);
    memset(&c->deferred, 0, sizeof(c->deferred));
    /* Failures added by these callbacks go to a fresh list, for the next turn. */
    while ((q = l.head) != NULL) {
        list_unlink(&l, q);
        deliver(c, q, NULL, q->fail_err);
        req_free(q);
    }
    while ((z = c->zombies) != NULL) {
        c->zombies = z->next;
        if (z->ac) {
            redisAsyncContext *ac = z->ac;
            /* Runs our reply callback (NULL reply) for each request still queued
             * on it, all already failed, and the disconnect callback. */
            redisAsyncFree(ac);
        }
        free(z);
    }
    maybe_finish_close(c);
}

void redis_close(redis_client *c, void (*done)(void *arg), void *arg)
{
    if (!c || c->closing)
        return;
    c->closing = 1;
    c->done = done;
    c->done_arg = arg;
    c->state = ST_CLOSING;
    uv_timer_stop(&c->conn_timer);
    if (c->resolve) {
        uv_cancel((uv_req_t *)&c->resolve->req);
        c->resolve = NULL;
    }
    kick(c); /* even with nothing to free, the close finishes on the idle turn */
    conn_abandon(c, REDIS_ERR_CLOSING, 0);
}

/* ---- construction and queries ----------------------------------------- */

redis_client *redis_new(uv_loop_t *loop, const redis_opts *opts)
{
    redis_client *c;
    char err[160];

    if (!loop || !opts)
        return NULL;
    c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    if (redis_url_parse_full(opts->url, &c->u, err, sizeof(err)) < 0) {
        log_error("redis URL invalid", LF_S("err", err));
        explicit_bzero(&c->u, sizeof(c->u));
        free(c);
        return NULL;
    }
    c->loop = loop;
    snprintf(c->host, sizeof(c->host), "%s", c->u.addrs[0].host);
    c->port = c->u.addrs[0].port;
    c->connect_timeout_ms =
        opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : DEFAULT_TIMEOUT_MS;
    c->command_timeout_ms =
        opts->command_timeout_ms > 0 ? opts->command_timeout_ms : DEFAULT_TIMEOUT_MS;
    c->rng = (uv_hrtime() ^ (uint64_t)(uintptr_t)c) | 1;
    uv_timer_init(loop, &c->conn_timer);
    uv_timer_init(loop, &c->cmd_timer);
    uv_idle_init(loop, &c->idle);
    c->conn_timer.data = c;
    c->cmd_timer.data = c;
    c->idle.data = c;
    start_connect(c);
    return c;
}

int redis_connected(const redis_client *c)
{
    return c && c->state == ST_READY;
}

void redis_get_stats(const redis_client *c, redis_stats *out)
{
    if (!out)
        return;
    if (!c) {
        memset(out, 0, sizeof(*out));
        return;
    }
    *out = c->stats;
}

/* ---- URL parsing ------------------------------------------------------ */

static int url_fail(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
    return -1;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Copies [s, e) into out, decoding %XX escapes (so a password may hold '@' or '/'). */
static int pct_decode(const char *s, const char *e, char *out, size_t outlen)
{
    size_t n = 0;

    while (s < e) {
        char ch = *s++;
        if (ch == '%') {
            int hi = s < e ? hexval(s[0]) : -1, lo = s + 1 < e ? hexval(s[1]) : -1;
            if (hi < 0 || lo < 0)
                return -1;
            ch = (char)(hi * 16 + lo);
            s += 2;
            if (ch == '\0')
                return -1;
        }
        if (n + 1 >= outlen)
            return -2;
        out[n++] = ch;
    }
    out[n] = '\0';
    return 0;
}

static int parse_uint(const char *s, const char *e, long max, long *out)
{
    long v = 0;

    if (s == e)
        return -1;
    for (; s < e; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        v = v * 10 + (*s - '0');
        if (v > max)
            return -1;
    }
    *out = v;
    return 0;
}

static int host_char_ok(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '.' || ch == '-' || ch == '_';
}

/* One host[:port] of [s, e) into a. */
static int parse_hostport(const char *s, const char *e, int defport, redis_addr *a, char *err,
                          size_t errlen)
{
    const char *hs, *he, *p;
    long v;

    if (s < e && *s == '[') {
        hs = s + 1;
        he = memchr(hs, ']', (size_t)(e - hs));
        if (!he)
            return url_fail(err, errlen, "missing ']' after an IPv6 address");
        for (p = hs; p < he; p++)
            if (!(host_char_ok(*p) || *p == ':'))
                return url_fail(err, errlen, "bad character in the host");
        p = he + 1;
    } else {
        hs = s;
        for (he = hs; he < e && *he != ':'; he++)
            if (!host_char_ok(*he))
                return url_fail(err, errlen, "bad character in the host");
        p = he;
    }
    if (he == hs)
        return url_fail(err, errlen, "missing host");
    if ((size_t)(he - hs) >= sizeof(a->host))
        return url_fail(err, errlen, "host too long");
    memcpy(a->host, hs, (size_t)(he - hs));
    a->host[he - hs] = '\0';
    a->port = defport;
    if (p < e && *p == ':') {
        p++;
        if (p == e)
            return url_fail(err, errlen, "missing port after ':'");
        if (parse_uint(p, e, 65535, &v) < 0 || v == 0)
            return url_fail(err, errlen, "bad port (expected 1-65535)");
        a->port = (int)v;
    } else if (p < e) {
        return url_fail(err, errlen, "unexpected text after the host");
    }
    return 0;
}

static int decode_field(const char *s, const char *e, char *out, size_t outlen, const char *what,
                        char *err, size_t errlen)
{
    char msg[96];
    int rc = pct_decode(s, e, out, outlen);

    if (rc == 0)
        return 0;
    snprintf(msg, sizeof(msg), rc == -1 ? "bad %%-escape in the %s" : "%s too long", what);
    return url_fail(err, errlen, msg);
}

/* ?db=N&sentinel_user=U&sentinel_password=P (redis-sentinel:// only). */
static int parse_query(const char *q, const char *end, redis_url_info *u, char *err, size_t errlen)
{
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *pe = amp ? amp : end;
        const char *eq = memchr(q, '=', (size_t)(pe - q));
        long v;

        if (!eq)
            return url_fail(err, errlen, "query parameters must be key=value");
        if ((size_t)(eq - q) == 2 && strncmp(q, "db", 2) == 0) {
            if (parse_uint(eq + 1, pe, INT_MAX, &v) < 0)
                return url_fail(err, errlen, "bad database number in db= (expected 0, 1, ...)");
            u->db = (int)v;
        } else if ((size_t)(eq - q) == 13 && strncmp(q, "sentinel_user", 13) == 0) {
            if (decode_field(eq + 1, pe, u->sentinel_user, sizeof(u->sentinel_user),
                             "sentinel user", err, errlen))
                return -1;
        } else if ((size_t)(eq - q) == 17 && strncmp(q, "sentinel_password", 17) == 0) {
            if (decode_field(eq + 1, pe, u->sentinel_password, sizeof(u->sentinel_password),
                             "sentinel password", err, errlen))
                return -1;
        } else {
            return url_fail(
                err, errlen,
                "unknown query parameter (known: db, sentinel_user, sentinel_password)");
        }
        q = amp ? amp + 1 : end;
    }
    return 0;
}

int redis_url_parse_full(const char *url, redis_url_info *u, char *err, size_t errlen)
{
    const char *p, *at, *end, *hosts_end, *s;
    long v;

    if (!u)
        return url_fail(err, errlen, "no place to store the result");
    memset(u, 0, sizeof(*u));
    if (!url || !*url)
        return url_fail(err, errlen, "is empty");
    if (strncasecmp(url, "rediss://", 9) == 0)
        return url_fail(err, errlen, "TLS (rediss://) is not supported");
    if (strncasecmp(url, "redis://", 8) == 0) {
        p = url + 8;
    } else if (strncasecmp(url, "redis-sentinel://", 17) == 0) {
        u->sentinel = 1;
        p = url + 17;
    } else {
        return url_fail(err, errlen,
                        "must start with redis:// (redis://[[user]:password@]host:port/db) or "
                        "redis-sentinel://");
    }
    end = p + strlen(p);
    /* The last '@' ends the credentials: hosts, ports, db and the master's name
     * never contain one (a sentinel query's password must escape it as %40). */
    s = u->sentinel ? memchr(p, '?', (size_t)(end - p)) : NULL;
    at = NULL;
    for (const char *q = p; q < (s ? s : end); q++)
        if (*q == '@')
            at = q;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (!colon)
            return url_fail(err, errlen,
                            "credentials must be written [user]:password@ (with a colon)");
        if (decode_field(p, colon, u->user, sizeof(u->user), "user name", err, errlen) ||
            decode_field(colon + 1, at, u->password, sizeof(u->password), "password", err, errlen))
            return -1;
        if (u->user[0] && !u->password[0])
            return url_fail(err, errlen, "a user name needs a password (user:password@)");
        p = at + 1;
    }
    /* The host part ends at the first '/' outside IPv6 brackets. */
    for (hosts_end = p; hosts_end < end && *hosts_end != '/'; hosts_end++)
        if (*hosts_end == '[')
            while (hosts_end < end && *hosts_end != ']')
                hosts_end++;
    if (hosts_end > end)
        hosts_end = end;
    if (!u->sentinel) {
        if (parse_hostport(p, hosts_end, 6379, &u->addrs[0], err, errlen))
            return -1;
        u->naddrs = 1;
        p = hosts_end;
        if (*p == '/' && p + 1 < end) {
            if (parse_uint(p + 1, end, INT_MAX, &v) < 0)
                return url_fail(err, errlen, "bad database number (expected /0, /1, ...)");
            u->db = (int)v;
        }
        return 0;
    }
    while (p <= hosts_end) {
        const char *comma = p;
        while (comma < hosts_end && *comma != ',') {
            if (*comma == '[')
                while (comma < hosts_end && *comma != ']')
                    comma++;
            if (comma < hosts_end)
                comma++;
        }
        if (u->naddrs == REDIS_MAX_SENTINELS)
            return url_fail(err, errlen, "too many sentinels (at most 8)");
        if (parse_hostport(p, comma, 26379, &u->addrs[u->naddrs], err, errlen))
            return -1;
        u->naddrs++;
        p = comma + 1;
    }
    p = hosts_end;
    if (*p != '/' || p + 1 >= end || p[1] == '?')
        return url_fail(err, errlen,
                        "missing master name (redis-sentinel://host:port,host:port/mastername)");
    p++;
    s = memchr(p, '?', (size_t)(end - p));
    if (decode_field(p, s ? s : end, u->master, sizeof(u->master), "master name", err, errlen))
        return -1;
    for (const char *q = u->master; *q; q++)
        if (!host_char_ok(*q))
            return url_fail(err, errlen, "bad character in the master name");
    if (s && parse_query(s + 1, end, u, err, errlen))
        return -1;
    return 0;
}

int redis_url_parse(const char *url, char *host, size_t hostlen, int *port, char *password,
                    size_t pwlen, int *db, char *err, size_t errlen)
{
    redis_url_info *u;
    int rc = -1;

    if (!host || !hostlen || !port || !password || !pwlen || !db)
        return url_fail(err, errlen, "no place to store the result");
    u = malloc(sizeof(*u));
    if (!u)
        return url_fail(err, errlen, "out of memory");
    if (redis_url_parse_full(url, u, err, errlen) < 0)
        goto out;
    if (u->sentinel) {
        url_fail(err, errlen, "a redis-sentinel:// URL names no single server");
        goto out;
    }
    if (strlen(u->addrs[0].host) >= hostlen) {
        url_fail(err, errlen, "host too long");
        goto out;
    }
    if (strlen(u->password) >= pwlen) {
        url_fail(err, errlen, "password too long");
        goto out;
    }
    strcpy(host, u->addrs[0].host);
    strcpy(password, u->password);
    *port = u->addrs[0].port;
    *db = u->db;
    rc = 0;
out:
    explicit_bzero(u, sizeof(*u));
    free(u);
    return rc;
}
