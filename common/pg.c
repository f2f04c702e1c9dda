/* Async PostgreSQL on one libuv loop.
 *
 * Each connection ("slot") is a small state machine: DOWN (waiting out a
 * backoff) -> RESOLVING (uv_getaddrinfo, so no DNS on the loop) -> CONNECTING
 * (PQconnectPoll driven by uv_poll) -> UP. An UP slot runs at most one
 * operation at a time: a caller's query, the PREPARE that precedes a prepared
 * query's first use on that connection, the ROLLBACK of a released lease, or a
 * LISTEN on the listener connection.
 *
 * Requests wait in one FIFO queue until a slot is free. Every request owns a
 * uv_timer_t that measures its timeout from submission (so waiting counts) and
 * doubles as a zero-delay "deliver later" trigger: an API call never runs a
 * caller's callback synchronously (except pg_pool_close), which keeps callers
 * free of re-entrancy surprises.
 *
 * Timeouts drop the connection rather than waiting on PQcancel, which blocks:
 * the slot reconnects at once, the caller hears "timeout" at the deadline, and
 * a best-effort cancel runs on the libuv threadpool (at most one at a time per
 * pool) so the server stops the abandoned statement and frees its locks. */
#include "common/pg.h"

#include "common/backoff.h"
#include "common/log.h"
#include "common/pg_hosts.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PG_BACKOFF_BASE_MS 200
#define PG_BACKOFF_CAP_MS 5000

typedef enum { SL_DOWN, SL_RESOLVING, SL_CONNECTING, SL_UP } slot_state;
typedef enum { OP_NONE, OP_QUERY, OP_PREPARE, OP_ROLLBACK, OP_LISTEN } slot_op;
typedef enum { RQ_QUERY, RQ_PREPARED, RQ_ACQUIRE } req_kind;
typedef enum { RW_NONE, RW_QUEUED, RW_SLOT, RW_DEFERRED } req_where;

typedef struct pg_req pg_req;
typedef struct pg_resolve pg_resolve;

struct pg_req {
    uv_timer_t timer; /* timeout from submission; also the deferred-delivery trigger */
    pg_pool *pool;
    pg_req *prev, *next;   /* queue links (RW_QUEUED) */
    pg_req *lprev, *lnext; /* every unfinished request, so close can finish them all */
    req_kind kind;
    req_where where;
    pg_conn *slot; /* RW_SLOT: the connection running it */
    int stmt;      /* RQ_PREPARED: index into pool->stmts */
    char *sql;     /* RQ_QUERY: owned copy */
    int nparams;
    char **params; /* owned copies; NULL entries are SQL NULL */
    pg_result_cb cb;
    pg_conn_cb ccb;
    void *arg;
    const char *deferred_err;
    int finished;
};

struct pg_conn {
    pg_pool *pool;
    int id;       /* 1..size; 0 for the listener (logs) */
    int listener; /* the dedicated LISTEN connection, not part of the query pool */
    slot_state state;
    PGconn *conn;
    uv_poll_t *poll; /* heap: freed in its close callback */
    int poll_events;
    uv_timer_t timer; /* backoff, connect timeout, internal operation timeout */
    pg_resolve *resolving;
    slot_op op;
    pg_req *req;
    PGresult *res;
    unsigned char *prepared; /* per registered statement: prepared on this connection */
    int listened;            /* channels [0, listened) have been LISTENed on this connection */
    int leased, broken, release_pending;
    unsigned attempt;
    int ever_up;
    int fatal; /* the server sent FATAL outside a query: the session is ending */
    char errbuf[256];
};

/* One connect's lookups: the names of the host list, one after the other, each
 * on the thread pool (the same request reissued for the next name). */
struct pg_resolve {
    uv_getaddrinfo_t req;
    pg_pool *pool;
    pg_conn *slot;  /* NULL once abandoned (connect timeout, close) */
    pg_hosts hosts; /* the pool's list, addresses filled in as they come */
    int idx;        /* the entry being looked up */
};

typedef struct pg_cancel_work {
    uv_work_t work;
    pg_pool *pool;
    PGcancel *cancel;
    char errbuf[256];
    int ok;
} pg_cancel_work;

typedef struct pg_stmt {
    char *name;
    char *sql;
} pg_stmt;

typedef struct pg_chan {
    char *name;
    pg_notify_cb cb;
    void *arg;
} pg_chan;

struct pg_pool {
    uv_loop_t *loop;
    char *dsn;
    char *password; /* pg_pool_opts.password, or NULL */
    char *options;  /* the connection's options: PG_SESSION_OPTIONS, then the DSN's */
    int size, query_timeout_ms, connect_timeout_ms, queue_max;
    /* The DSN parsed once into keyword/value arrays, so each connect can add a
     * hostaddr resolved off the loop. */
    PQconninfoOption *conninfo;
    const char **kw;
    const char **val;
    int host_idx, hostaddr_idx, port_idx; /* indexes of "host", "hostaddr", "port" in kw */
    const char *orig_host, *orig_hostaddr, *orig_port;
    pg_hosts *hosts; /* host names to resolve before each connect, or NULL */
    pg_conn *slots;
    pg_conn *listener;
    pg_stmt *stmts;
    int nstmts, capstmts;
    pg_chan *chans;
    int nchans, capchans;
    pg_req *qhead, *qtail;
    int qlen;
    pg_req *live;
    /* "Dispatch the queue soon": the check handle runs after the loop has
     * polled (idle keeps that poll from blocking), so a connection whose server
     * went away is seen as lost before a query is sent on it. */
    uv_check_t kick;
    uv_idle_t kick_idle;
    pg_stats stats;
    uint64_t rng;
    unsigned handles;       /* initialised handles whose close callback has not run */
    unsigned works;         /* threadpool requests not yet completed */
    int api_depth;          /* >0 while inside a public API call: callbacks are deferred */
    pg_cancel_work *cancel; /* the one cancel in flight, if any */
    int closing, freed;
    void (*done)(void *arg);
    void *done_arg;
};

static void slot_timer_cb(uv_timer_t *t);
static void poll_cb(uv_poll_t *h, int status, int events);
static void req_timer_cb(uv_timer_t *t);
static void pump_slot(pg_conn *s);
static void pump_listener(pg_conn *s);
static void slot_lost(pg_conn *s, const char *why);

/* ---- small helpers ---------------------------------------------------- */

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);

    if (d)
        memcpy(d, s, n);
    return d;
}

/* Copies a libpq message without its trailing newline(s). */
static const char *trim_msg(const char *msg, char *buf, size_t len)
{
    size_t n;

    if (!msg || !*msg)
        msg = "unknown error";
    n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        n--;
    if (n >= len)
        n = len - 1;
    memcpy(buf, msg, n);
    buf[n] = '\0';
    return buf;
}

static void pool_maybe_free(pg_pool *p);

static void handle_closed(uv_handle_t *h)
{
    pg_pool *p = h->data;

    p->handles--;
    pool_maybe_free(p);
}

static void poll_closed(uv_handle_t *h)
{
    pg_conn *s = h->data;
    pg_pool *p = s->pool;

    free(h);
    p->handles--;
    pool_maybe_free(p);
}

/* ---- requests ------------------------------------------------------- */

static void req_free(pg_req *r)
{
    int i;

    for (i = 0; i < r->nparams; i++)
        free(r->params[i]);
    free(r->params);
    free(r->sql);
    free(r);
}

static void req_closed(uv_handle_t *h)
{
    pg_req *r = h->data;
    pg_pool *p = r->pool;

    req_free(r);
    p->handles--;
    pool_maybe_free(p);
}

static void queue_unlink(pg_pool *p, pg_req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        p->qhead = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        p->qtail = r->prev;
    r->prev = r->next = NULL;
    p->qlen--;
}

static void queue_push(pg_pool *p, pg_req *r)
{
    r->prev = p->qtail;
    r->next = NULL;
    if (p->qtail)
        p->qtail->next = r;
    else
        p->qhead = r;
    p->qtail = r;
    p->qlen++;
    r->where = RW_QUEUED;
}

static void live_unlink(pg_pool *p, pg_req *r)
{
    if (r->lprev)
        r->lprev->lnext = r->lnext;
    else
        p->live = r->lnext;
    if (r->lnext)
        r->lnext->lprev = r->lprev;
    r->lprev = r->lnext = NULL;
}

/* Detaches r from wherever it waits; the caller then delivers the outcome. */
static void req_detach(pg_req *r)
{
    if (r->where == RW_QUEUED)
        queue_unlink(r->pool, r);
    else if (r->where == RW_SLOT && r->slot && r->slot->req == r)
        r->slot->req = NULL;
    r->where = RW_NONE;
    r->slot = NULL;
}

/* Delivers the outcome now: exactly once, then the request is freed once its
 * timer has closed. */
static void req_finish_now(pg_req *r, PGresult *res, pg_conn *c, const char *err)
{
    pg_pool *p = r->pool;

    if (r->finished)
        return;
    r->finished = 1;
    req_detach(r);
    live_unlink(p, r);
    uv_close((uv_handle_t *)&r->timer, req_closed);
    if (r->kind == RQ_ACQUIRE) {
        r->ccb(r->arg, c, err);
        return;
    }
    if (err)
        p->stats.errors++;
    r->cb(r->arg, res, err);
}

/* Delivers an error outcome, deferring it to the next loop turn when we are
 * inside an API call (the caller's stack must not see its own callback). Only
 * our own static messages are deferred, never a server result. */
static void req_fail(pg_req *r, const char *err)
{
    if (r->finished)
        return;
    if (r->pool->api_depth > 0) {
        req_detach(r);
        r->where = RW_DEFERRED;
        r->deferred_err = err;
        uv_timer_start(&r->timer, req_timer_cb, 0, 0);
        return;
    }
    req_finish_now(r, NULL, NULL, err);
}

static pg_req *req_new(pg_pool *p, req_kind kind, int nparams, const char *const *params)
{
    pg_req *r = calloc(1, sizeof(*r));
    int i;

    if (!r)
        return NULL;
    r->pool = p;
    r->kind = kind;
    if (nparams > 0) {
        r->params = calloc((size_t)nparams, sizeof(char *));
        if (!r->params)
            goto fail;
        r->nparams = nparams;
        for (i = 0; i < nparams; i++) {
            if (!params[i])
                continue;
            r->params[i] = xstrdup(params[i]);
            if (!r->params[i])
                goto fail;
        }
    }
    return r;
fail:
    req_free(r);
    return NULL;
}

/* Arms the timeout and links the request among the live ones. */
static void req_start(pg_pool *p, pg_req *r)
{
    uv_timer_init(p->loop, &r->timer);
    r->timer.data = r;
    p->handles++;
    uv_timer_start(&r->timer, req_timer_cb, (uint64_t)p->query_timeout_ms, 0);
    r->lnext = p->live;
    if (p->live)
        p->live->lprev = r;
    p->live = r;
}

/* ---- connection plumbing --------------------------------------------- */

static void kick_cb(uv_check_t *h);

static void kick_idle_cb(uv_idle_t *h)
{
    (void)h;
}

/* Dispatch the queue on the next loop turn (never from inside an API call). */
static void kick(pg_pool *p)
{
    if (!p->closing) {
        uv_idle_start(&p->kick_idle, kick_idle_cb);
        uv_check_start(&p->kick, kick_cb);
    }
}

static int poll_open(pg_conn *s, int events)
{
    pg_pool *p = s->pool;
    int fd = PQsocket(s->conn);
    uv_poll_t *h;
    int err;

    if (fd < 0)
        return UV_EBADF;
    h = malloc(sizeof(*h));
    if (!h)
        return UV_ENOMEM;
    err = uv_poll_init(p->loop, h, fd);
    if (err) {
        free(h);
        return err;
    }
    h->data = s;
    p->handles++;
    s->poll = h;
    s->poll_events = events;
    return uv_poll_start(h, events, poll_cb);
}

/* Closing stops polling at once (libuv removes the fd from epoll inside
 * uv_close), so it must come before libpq closes the socket. */
static void poll_close(pg_conn *s)
{
    if (!s->poll)
        return;
    uv_close((uv_handle_t *)s->poll, poll_closed);
    s->poll = NULL;
    s->poll_events = 0;
}

static int poll_set(pg_conn *s, int events)
{
    if (!s->poll || events == s->poll_events)
        return 0;
    s->poll_events = events;
    return uv_poll_start(s->poll, events, poll_cb);
}

static void resolve_abandon(pg_conn *s)
{
    if (!s->resolving)
        return;
    uv_cancel((uv_req_t *)&s->resolving->req);
    s->resolving->slot = NULL;
    s->resolving = NULL;
}

/* Forgets the server connection; the caller decides what happens next. */
static void conn_drop(pg_conn *s)
{
    resolve_abandon(s);
    poll_close(s);
    if (s->conn) {
        PQfinish(s->conn);
        s->conn = NULL;
    }
    if (s->res) {
        PQclear(s->res);
        s->res = NULL;
    }
    s->op = OP_NONE;
    uv_timer_stop(&s->timer);
    s->state = SL_DOWN;
}

static void schedule_connect(pg_conn *s, uint64_t delay_ms)
{
    s->state = SL_DOWN;
    if (!s->pool->closing)
        uv_timer_start(&s->timer, slot_timer_cb, delay_ms, 0);
}

static uint64_t backoff_next(pg_conn *s)
{
    return backoff_full_jitter_ms(s->attempt++, PG_BACKOFF_BASE_MS, PG_BACKOFF_CAP_MS,
                                  &s->pool->rng);
}

/* libpq hands errors that arrive outside a query (the FATAL a server sends
 * idle sessions when it shuts down) to the notice receiver, and the socket's
 * EOF may only come with a later read. Noting the FATAL lets us drop the
 * session at once instead of sending the next query into it. */
static void notice_cb(void *arg, const PGresult *res)
{
    pg_conn *s = arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    char buf[256];

    trim_msg(PQresultErrorMessage(res), buf, sizeof(buf));
    if (sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0)) {
        s->fatal = 1;
        snprintf(s->errbuf, sizeof(s->errbuf), "%s", buf);
        return;
    }
    log_debug("pg notice", LF_I("conn", s->id), LF_S("message", buf));
}

static void connect_failed(pg_conn *s, const char *why)
{
    char buf[256];
    uint64_t delay;

    trim_msg(why, buf, sizeof(buf)); /* why may live inside the PGconn we drop */
    conn_drop(s);
    delay = backoff_next(s);
    log_warn("pg connect failed", LF_I("conn", s->id), LF_S("error", buf),
             LF_I("attempt", s->attempt), LF_I("retry_ms", delay));
    schedule_connect(s, delay);
}

static void on_connected(pg_conn *s)
{
    pg_pool *p = s->pool;
    int err;

    uv_timer_stop(&s->timer);
    if (PQsetnonblocking(s->conn, 1) != 0) {
        connect_failed(s, PQerrorMessage(s->conn));
        return;
    }
    s->state = SL_UP;
    s->attempt = 0;
    /* A new session knows none of our statements or channels. */
    if (s->prepared && p->capstmts > 0)
        memset(s->prepared, 0, (size_t)p->capstmts);
    s->listened = 0;
    if (s->ever_up) {
        p->stats.reconnects++;
        /* Which server of a host list answered (a primary switch shows here). */
        log_info("pg reconnected", LF_I("conn", s->id),
                 LF_S("host", PQhost(s->conn) ? PQhost(s->conn) : ""),
                 LF_S("hostaddr", PQhostaddr(s->conn) ? PQhostaddr(s->conn) : ""),
                 LF_S("port", PQport(s->conn) ? PQport(s->conn) : ""));
    }
    s->ever_up = 1;
    err = poll_open(s, UV_READABLE);
    if (err) {
        slot_lost(s, uv_strerror(err));
        return;
    }
    if (s->listener)
        pump_listener(s);
    else
        pump_slot(s);
}

/* One step of PQconnectPoll. libpq may close and reopen its socket during a
 * step (another address, SSL fallback), possibly under the same number, so the
 * poll handle is recreated for every step instead of being reused. */
static void connect_step(pg_conn *s)
{
    PostgresPollingStatusType st;
    int err = 0;

    poll_close(s);
    st = PQconnectPoll(s->conn);
    switch (st) {
    case PGRES_POLLING_READING:
        err = poll_open(s, UV_READABLE);
        break;
    case PGRES_POLLING_WRITING:
        err = poll_open(s, UV_WRITABLE);
        break;
    case PGRES_POLLING_OK:
        on_connected(s);
        return;
    default:
        connect_failed(s, PQerrorMessage(s->conn));
        return;
    }
    if (err)
        connect_failed(s, uv_strerror(err));
}

/* hosts/hostaddrs/ports: comma lists built from the resolved names (ports NULL:
 * the DSN's), or all NULL to use the DSN as it is. */
static void connect_with(pg_conn *s, const char *hosts, const char *hostaddrs, const char *ports)
{
    pg_pool *p = s->pool;
    PGconn *c;
    int err;

    if (hostaddrs) {
        p->val[p->host_idx] = hosts;
        p->val[p->hostaddr_idx] = hostaddrs;
        if (ports)
            p->val[p->port_idx] = ports;
    }
    c = PQconnectStartParams(p->kw, p->val, 0); /* copies the values */
    p->val[p->host_idx] = p->orig_host;
    p->val[p->hostaddr_idx] = p->orig_hostaddr;
    p->val[p->port_idx] = p->orig_port;
    if (!c) {
        connect_failed(s, "out of memory");
        return;
    }
    s->conn = c;
    if (PQstatus(c) == CONNECTION_BAD) {
        connect_failed(s, PQerrorMessage(c));
        return;
    }
    PQsetNoticeReceiver(c, notice_cb, s);
    s->fatal = 0;
    s->state = SL_CONNECTING;
    /* Right after PQconnectStart libpq waits for the socket to be writable. */
    err = poll_open(s, UV_WRITABLE);
    if (err)
        connect_failed(s, uv_strerror(err));
}

static int resolve_next(pg_conn *s, pg_resolve *r);

/* Every name of the list has been looked up: hand libpq host=, hostaddr= (and
 * port= when there is one per host), one entry per address, in list order. */
static void connect_resolved(pg_conn *s, const pg_hosts *h)
{
    char *hosts = NULL, *hostaddrs = NULL, *ports = NULL;
    char err[128];

    if (pg_hosts_build(h, &hosts, &hostaddrs, &ports, err, sizeof(err)) < 0) {
        connect_failed(s, err);
        return;
    }
    connect_with(s, hosts, hostaddrs, ports);
    free(hosts);
    free(hostaddrs);
    free(ports);
}

static void resolve_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    pg_resolve *r = (pg_resolve *)req;
    pg_pool *p = r->pool;
    pg_conn *s = r->slot;
    struct addrinfo *ai;

    p->works--;
    if (!s) {
        uv_freeaddrinfo(res);
        free(r);
        pool_maybe_free(p);
        return;
    }
    if (status < 0) {
        /* libpq would skip a host it cannot resolve and try the next one. */
        log_warn("pg host lookup failed", LF_S("host", r->hosts.e[r->idx].name),
                 LF_S("err", uv_strerror(status)));
    } else {
        for (ai = res; ai; ai = ai->ai_next)
            pg_hosts_add_addr(&r->hosts.e[r->idx], ai->ai_addr);
    }
    uv_freeaddrinfo(res);
    r->idx++;
    if (resolve_next(s, r) > 0)
        return;
    s->resolving = NULL;
    connect_resolved(s, &r->hosts);
    free(r);
}

/* Looks up the next name from r->idx on; 1 when a lookup is under way, 0 when
 * every name is done (or one could not be started: it is skipped). */
static int resolve_next(pg_conn *s, pg_resolve *r)
{
    pg_pool *p = s->pool;
    struct addrinfo hints;
    int err;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    for (; r->idx < r->hosts.n; r->idx++) {
        if (r->hosts.e[r->idx].kind != PGH_NAME)
            continue;
        err = uv_getaddrinfo(p->loop, &r->req, resolve_cb, r->hosts.e[r->idx].name, NULL, &hints);
        if (err) {
            log_warn("pg host lookup failed", LF_S("host", r->hosts.e[r->idx].name),
                     LF_S("err", uv_strerror(err)));
            continue;
        }
        p->works++;
        return 1;
    }
    return 0;
}

static void start_connect(pg_conn *s)
{
    pg_pool *p = s->pool;
    pg_resolve *r;

    if (p->closing)
        return;
    /* The connect timeout covers resolving and the whole handshake. */
    uv_timer_start(&s->timer, slot_timer_cb, (uint64_t)p->connect_timeout_ms, 0);
    if (!p->hosts) {
        connect_with(s, NULL, NULL, NULL);
        return;
    }
    /* libpq would resolve the names with a blocking getaddrinfo(); resolve them
     * on the threadpool and hand libpq the addresses (hostaddr), keeping host
     * for authentication and SSL. */
    r = calloc(1, sizeof(*r));
    if (!r) {
        connect_failed(s, "out of memory");
        return;
    }
    r->pool = p;
    r->slot = s;
    r->hosts = *p->hosts;
    if (!resolve_next(s, r)) {
        connect_resolved(s, &r->hosts);
        free(r);
        return;
    }
    s->resolving = r;
    s->state = SL_RESOLVING;
}

/* ---- running operations ---------------------------------------------- */

static int result_ok(const PGresult *res)
{
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;

    return res && (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK);
}

static const char *result_err(const PGresult *res, char *buf, size_t len)
{
    const char *m;

    if (!res)
        return "no result";
    m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    if (m && *m)
        return trim_msg(m, buf, len);
    m = PQresultErrorMessage(res);
    if (m && *m)
        return trim_msg(m, buf, len);
    return PQresStatus(PQresultStatus(res));
}

/* Pushes buffered output; asks for writability only while some remains. */
static int slot_flush(pg_conn *s)
{
    int r = PQflush(s->conn);
    int err;

    if (r < 0) {
        slot_lost(s, PQerrorMessage(s->conn));
        return -1;
    }
    err = poll_set(s, r ? UV_READABLE | UV_WRITABLE : UV_READABLE);
    if (err) {
        slot_lost(s, uv_strerror(err));
        return -1;
    }
    return 0;
}

/* Our own statements (ROLLBACK, LISTEN) run under the slot timer. */
static int send_internal(pg_conn *s, slot_op op, const char *sql)
{
    if (!PQsendQueryParams(s->conn, sql, 0, NULL, NULL, NULL, NULL, 0)) {
        slot_lost(s, PQerrorMessage(s->conn));
        return -1;
    }
    s->op = op;
    uv_timer_start(&s->timer, slot_timer_cb, (uint64_t)s->pool->query_timeout_ms, 0);
    return slot_flush(s);
}

static int send_req(pg_conn *s, pg_req *r)
{
    pg_pool *p = s->pool;
    const char *const *params = (const char *const *)r->params;
    pg_stmt *st;
    int ok;

    s->req = r;
    r->where = RW_SLOT;
    r->slot = s;
    if (r->kind == RQ_PREPARED) {
        st = &p->stmts[r->stmt];
        if (!s->prepared[r->stmt]) {
            ok = PQsendPrepare(s->conn, st->name, st->sql, 0, NULL);
            s->op = OP_PREPARE;
        } else {
            ok = PQsendQueryPrepared(s->conn, st->name, r->nparams, params, NULL, NULL, 0);
            s->op = OP_QUERY;
        }
    } else {
        ok = PQsendQueryParams(s->conn, r->sql, r->nparams, NULL, params, NULL, NULL, 0);
        s->op = OP_QUERY;
    }
    if (!ok) {
        slot_lost(s, PQerrorMessage(s->conn));
        return -1;
    }
    return slot_flush(s);
}

static void release_now(pg_conn *s);

/* After a caller's callback ran for this slot: continue with whatever the
 * slot should do next, unless the callback already gave it something. */
static void after_user(pg_conn *s)
{
    if (s->state != SL_UP || s->op != OP_NONE)
        return;
    if (s->leased) {
        if (s->release_pending)
            release_now(s);
        return;
    }
    if (s->listener)
        pump_listener(s);
    else
        pump_slot(s);
}

static void finish_query(pg_conn *s, PGresult *res)
{
    pg_req *r = s->req;
    char buf[256];
    const char *err = NULL;

    s->req = NULL;
    if (!result_ok(res))
        err = result_err(res, buf, sizeof(buf));
    if (r)
        req_finish_now(r, res, NULL, err);
    PQclear(res);
    after_user(s);
}

static void prepare_done(pg_conn *s, PGresult *res)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    pg_req *r = s->req;

    /* 42P05: the session already has it (only if someone PREPAREd by hand). */
    if (r && (result_ok(res) || (state && strcmp(state, "42P05") == 0))) {
        PQclear(res);
        s->prepared[r->stmt] = 1;
        send_req(s, r);
        return;
    }
    finish_query(s, res);
}

static void op_done(pg_conn *s)
{
    PGresult *res = s->res;
    slot_op op = s->op;

    s->res = NULL;
    s->op = OP_NONE;
    switch (op) {
    case OP_QUERY:
        finish_query(s, res);
        break;
    case OP_PREPARE:
        prepare_done(s, res);
        break;
    case OP_ROLLBACK:
        uv_timer_stop(&s->timer);
        if (!result_ok(res)) {
            PQclear(res);
            slot_lost(s, "rollback on release failed");
            break;
        }
        PQclear(res);
        pump_slot(s);
        break;
    case OP_LISTEN:
        uv_timer_stop(&s->timer);
        if (!result_ok(res)) {
            char buf[256];
            log_warn("pg listen failed", LF_S("error", result_err(res, buf, sizeof(buf))));
        }
        PQclear(res);
        s->listened++;
        pump_listener(s);
        break;
    case OP_NONE:
        PQclear(res);
        break;
    }
}

/* Keeps the first error of a statement, else its last result. */
static void keep_result(pg_conn *s, PGresult *r)
{
    if (!s->res) {
        s->res = r;
    } else if (result_ok(s->res)) {
        PQclear(s->res);
        s->res = r;
    } else {
        PQclear(r);
    }
}

static void drain(pg_conn *s, PGconn *c)
{
    PGresult *r;
    ExecStatusType st;

    while (s->conn == c && s->state == SL_UP && s->op != OP_NONE && !PQisBusy(c)) {
        r = PQgetResult(c);
        if (!r) {
            op_done(s);
            continue;
        }
        st = PQresultStatus(r);
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
            PQclear(r);
            slot_lost(s, "COPY is not supported");
            return;
        }
        keep_result(s, r);
    }
}

/* Returns nonzero when a callback changed the slot under us. */
static int deliver_notifies(pg_conn *s, PGconn *c)
{
    pg_pool *p = s->pool;
    PGnotify *n;
    int i;

    while (!p->closing && s->conn == c && (n = PQnotifies(c)) != NULL) {
        for (i = 0; i < p->nchans && !p->closing; i++) {
            if (strcmp(p->chans[i].name, n->relname) == 0)
                p->chans[i].cb(p->chans[i].arg, n->relname, n->extra);
        }
        PQfreemem(n);
    }
    return s->conn != c || s->state != SL_UP;
}

static void slot_io(pg_conn *s, int events)
{
    PGconn *c = s->conn;

    if (events & UV_READABLE) {
        if (!PQconsumeInput(c)) {
            slot_lost(s, PQerrorMessage(c));
            return;
        }
        /* PQconsumeInput only reads; PQisBusy parses what came, which runs
         * the notice receiver for a FATAL that arrived while idle. */
        PQisBusy(c);
        if (s->fatal) {
            slot_lost(s, s->errbuf);
            return;
        }
        if (deliver_notifies(s, c))
            return;
    }
    /* Reading may have made room to write, so flush whenever output waits. */
    if ((s->poll_events & UV_WRITABLE) && slot_flush(s))
        return;
    drain(s, c);
}

static void poll_cb(uv_poll_t *h, int status, int events)
{
    pg_conn *s = h->data;

    if (h != s->poll)
        return;
    /* libuv reports POLLERR as a status (UV_EBADF) and stops the handle; let
     * libpq read the socket error so the message says what happened. */
    if (status < 0) {
        if (s->state == SL_CONNECTING) {
            connect_step(s);
        } else if (s->state == SL_UP) {
            if (!PQconsumeInput(s->conn))
                slot_lost(s, PQerrorMessage(s->conn));
            else
                slot_lost(s, uv_strerror(status));
        }
        return;
    }
    if (s->state == SL_CONNECTING)
        connect_step(s);
    else if (s->state == SL_UP)
        slot_io(s, events);
}

/* ---- losing connections, timeouts, cancel ------------------------------ */

/* The connection broke under us: in-flight work fails with "connection lost"
 * (never retried: the caller decides) and the slot reconnects with backoff. A
 * leased slot waits for pg_release instead, so its holder never finds a fresh
 * session (outside its transaction) behind the same pg_conn. */
static void slot_lost(pg_conn *s, const char *why)
{
    pg_pool *p = s->pool;
    pg_req *r = s->req;
    char buf[256];

    trim_msg(why, buf, sizeof(buf));
    log_warn("pg connection lost", LF_I("conn", s->id), LF_S("error", buf));
    s->req = NULL;
    conn_drop(s);
    if (!p->closing) {
        if (s->leased)
            s->broken = 1;
        else
            schedule_connect(s, backoff_next(s));
    }
    if (r)
        req_fail(r, "connection lost");
    if (s->leased && s->release_pending && s->op == OP_NONE)
        release_now(s);
}

static void cancel_work_cb(uv_work_t *w)
{
    pg_cancel_work *cw = w->data;

    /* PQcancel opens a new connection and blocks: fine on the threadpool. */
    cw->ok = PQcancel(cw->cancel, cw->errbuf, (int)sizeof(cw->errbuf));
}

static void cancel_after_cb(uv_work_t *w, int status)
{
    pg_cancel_work *cw = w->data;
    pg_pool *p = cw->pool;

    if (status == 0 && !cw->ok)
        log_debug("pg cancel failed", LF_S("error", cw->errbuf));
    PQfreeCancel(cw->cancel);
    free(cw);
    p->cancel = NULL;
    p->works--;
    pool_maybe_free(p);
}

/* Best effort: asks the server to stop the statement we abandon, so it does
 * not run on (holding locks) after we hung up. One at a time per pool, so a
 * server that does not answer can tie up at most one threadpool thread. */
static void send_cancel(pg_conn *s)
{
    pg_pool *p = s->pool;
    pg_cancel_work *cw;

    if (p->cancel || !s->conn)
        return;
    cw = calloc(1, sizeof(*cw));
    if (!cw)
        return;
    cw->cancel = PQgetCancel(s->conn);
    if (!cw->cancel) {
        free(cw);
        return;
    }
    cw->pool = p;
    cw->work.data = cw;
    if (uv_queue_work(p->loop, &cw->work, cancel_work_cb, cancel_after_cb) != 0) {
        PQfreeCancel(cw->cancel);
        free(cw);
        return;
    }
    p->works++;
    p->cancel = cw;
}

/* A query overran its deadline while on a connection. We drop the connection
 * rather than wait for PQcancel: the caller hears "timeout" at the deadline
 * whatever the server does, and the slot reconnects right away. */
static void slot_timeout(pg_conn *s, pg_req *r)
{
    pg_pool *p = s->pool;

    p->stats.timeouts++;
    log_warn("pg query timeout", LF_I("conn", s->id), LF_I("timeout_ms", p->query_timeout_ms));
    send_cancel(s);
    s->req = NULL;
    conn_drop(s);
    if (s->leased)
        s->broken = 1;
    else
        schedule_connect(s, 0);
    req_finish_now(r, NULL, NULL, "timeout");
    if (s->leased && s->release_pending)
        release_now(s);
}

static void req_timer_cb(uv_timer_t *t)
{
    pg_req *r = t->data;

    switch (r->where) {
    case RW_DEFERRED:
        req_finish_now(r, NULL, NULL, r->deferred_err);
        break;
    case RW_QUEUED:
        r->pool->stats.timeouts++;
        req_finish_now(r, NULL, NULL, "timeout");
        break;
    case RW_SLOT:
        slot_timeout(r->slot, r);
        break;
    case RW_NONE:
        break;
    }
}

static void slot_timer_cb(uv_timer_t *t)
{
    pg_conn *s = t->data;

    switch (s->state) {
    case SL_DOWN:
        start_connect(s);
        break;
    case SL_RESOLVING:
    case SL_CONNECTING:
        connect_failed(s, "connect timeout");
        break;
    case SL_UP:
        slot_lost(s, "internal statement timeout");
        break;
    }
}

/* ---- dispatch ---------------------------------------------------------- */

static void pump_slot(pg_conn *s)
{
    pg_pool *p = s->pool;
    pg_req *r;

    while (!p->closing && s->state == SL_UP && s->op == OP_NONE && !s->leased && p->qhead) {
        r = p->qhead;
        queue_unlink(p, r);
        r->where = RW_NONE;
        if (r->kind == RQ_ACQUIRE) {
            s->leased = 1;
            s->broken = 0;
            s->release_pending = 0;
            req_finish_now(r, NULL, s, NULL);
            continue; /* the callback may already have released it */
        }
        send_req(s, r);
    }
}

static void pump_listener(pg_conn *s)
{
    pg_pool *p = s->pool;
    const char *name;
    char *ident, *sql;
    size_t n;

    while (!p->closing && s->state == SL_UP && s->op == OP_NONE && s->listened < p->nchans) {
        name = p->chans[s->listened].name;
        ident = PQescapeIdentifier(s->conn, name, strlen(name));
        sql = ident ? malloc(strlen(ident) + 8) : NULL;
        if (!sql) {
            log_warn("pg listen skipped", LF_S("channel", name), LF_S("error", "out of memory"));
            PQfreemem(ident);
            s->listened++;
            continue;
        }
        n = strlen(ident);
        memcpy(sql, "LISTEN ", 7);
        memcpy(sql + 7, ident, n + 1);
        PQfreemem(ident);
        send_internal(s, OP_LISTEN, sql);
        free(sql);
    }
}

static void kick_cb(uv_check_t *h)
{
    pg_pool *p = h->data;
    int i;

    uv_check_stop(&p->kick);
    uv_idle_stop(&p->kick_idle);

    for (i = 0; i < p->size && !p->closing; i++)
        pump_slot(&p->slots[i]);
    if (p->listener && !p->closing)
        pump_listener(p->listener);
}

static void release_now(pg_conn *s)
{
    pg_pool *p = s->pool;

    s->release_pending = 0;
    s->leased = 0;
    if (p->closing)
        return;
    if (s->broken || s->state != SL_UP) {
        /* Its connection was dropped while leased; reconnect now. */
        s->broken = 0;
        if (s->state == SL_DOWN && !uv_is_active((uv_handle_t *)&s->timer))
            schedule_connect(s, 0);
        return;
    }
    switch (PQtransactionStatus(s->conn)) {
    case PQTRANS_IDLE:
        kick(p);
        break;
    case PQTRANS_INTRANS:
    case PQTRANS_INERROR:
        send_internal(s, OP_ROLLBACK, "ROLLBACK");
        break;
    default:
        conn_drop(s);
        schedule_connect(s, 0);
        break;
    }
}

/* ---- pool lifetime ----------------------------------------------------- */

static void slot_timer_closed(uv_handle_t *h)
{
    pg_conn *s = h->data;
    pg_pool *p = s->pool;

    p->handles--;
    pool_maybe_free(p);
}

static void slot_init(pg_pool *p, pg_conn *s, int id)
{
    s->pool = p;
    s->id = id;
    s->state = SL_DOWN;
    uv_timer_init(p->loop, &s->timer);
    s->timer.data = s;
    p->handles++;
}

static void pool_free(pg_pool *p)
{
    int i;

    if (p->slots) {
        for (i = 0; i < p->size; i++)
            free(p->slots[i].prepared);
        free(p->slots);
    }
    if (p->listener) {
        free(p->listener->prepared);
        free(p->listener);
    }
    for (i = 0; i < p->nstmts; i++) {
        free(p->stmts[i].name);
        free(p->stmts[i].sql);
    }
    free(p->stmts);
    for (i = 0; i < p->nchans; i++)
        free(p->chans[i].name);
    free(p->chans);
    free(p->kw);
    free(p->val);
    free(p->hosts);
    if (p->conninfo)
        PQconninfoFree(p->conninfo);
    free(p->dsn);
    if (p->password) {
        explicit_bzero(p->password, strlen(p->password));
        free(p->password);
    }
    free(p->options);
    free(p);
}

static void pool_maybe_free(pg_pool *p)
{
    void (*done)(void *);
    void *arg;

    if (!p->closing || p->handles > 0 || p->works > 0 || p->freed)
        return;
    p->freed = 1;
    done = p->done;
    arg = p->done_arg;
    pool_free(p);
    if (done)
        done(arg);
}

/* Every session runs without JIT compilation. Its statements are short and
 * their plans' estimates are not: a member write's CTEs (estimated at 10,000
 * rows each) passed jit_above_cost, and compiling each statement cost
 * PostgreSQL about 100 ms of CPU, more than executing it (tests/bench/README.md,
 * "Tenth pass"). The DSN's own options (or PGOPTIONS) come after, so an
 * operator's "-c jit=on" still wins. */
#define PG_SESSION_OPTIONS "-c jit=off"

/* Parses the DSN once into keyword/value arrays for PQconnectStartParams and
 * decides whether a host name must be resolved before each connect. */
static int pool_parse_dsn(pg_pool *p)
{
    PQconninfoOption *o;
    char *errmsg = NULL;
    const char *host = NULL, *hostaddr = NULL;
    int n, i;

    p->conninfo = PQconninfoParse(p->dsn, &errmsg);
    if (!p->conninfo) {
        /* libpq's message may quote the DSN, and with it a password. */
        PQfreemem(errmsg);
        log_error("pg invalid connection string");
        return PG_EINVAL;
    }
    for (n = 0, o = p->conninfo; o->keyword; o++)
        n++;
    p->kw = calloc((size_t)n + 1, sizeof(char *));
    p->val = calloc((size_t)n + 1, sizeof(char *));
    if (!p->kw || !p->val)
        return PG_ENOMEM;
    p->host_idx = p->hostaddr_idx = p->port_idx = -1;
    for (i = 0, o = p->conninfo; o->keyword; o++, i++) {
        p->kw[i] = o->keyword;
        p->val[i] = o->val;
        if (strcmp(o->keyword, "hostaddr") == 0)
            p->hostaddr_idx = i;
        else if (strcmp(o->keyword, "host") == 0)
            p->host_idx = i;
        else if (strcmp(o->keyword, "password") == 0 && p->password)
            p->val[i] = p->password;
        else if (strcmp(o->keyword, "port") == 0)
            p->port_idx = i;
        else if (strcmp(o->keyword, "options") == 0) {
            const char *own = o->val && *o->val ? o->val : getenv("PGOPTIONS");
            size_t len = sizeof(PG_SESSION_OPTIONS) + 1 + (own ? strlen(own) : 0);
            if (!(p->options = malloc(len)))
                return PG_ENOMEM;
            snprintf(p->options, len, "%s%s%s", PG_SESSION_OPTIONS, own && *own ? " " : "",
                     own ? own : "");
            p->val[i] = p->options;
        }
    }
    if (p->hostaddr_idx < 0 || p->host_idx < 0 || p->port_idx < 0)
        return PG_EINVAL;
    p->orig_port = p->val[p->port_idx];
    p->orig_host = host = p->val[p->host_idx];
    /* PQconninfoParse leaves out the environment; libpq would apply it. */
    if (!host || !*host)
        host = getenv("PGHOST");
    hostaddr = p->val[p->hostaddr_idx];
    if (!hostaddr || !*hostaddr)
        hostaddr = getenv("PGHOSTADDR");
    p->orig_hostaddr = p->val[p->hostaddr_idx];
    if (host && *host && (!hostaddr || !*hostaddr)) {
        const char *port = p->orig_port && *p->orig_port ? p->orig_port : getenv("PGPORT");
        char err[128];
        pg_hosts *h = malloc(sizeof(*h));

        if (!h)
            return PG_ENOMEM;
        if (pg_hosts_parse(host, port, h, err, sizeof(err)) < 0) {
            log_error("pg invalid connection string", LF_S("err", err));
            free(h);
            return PG_EINVAL;
        }
        if (h->nnames == 0) {
            free(h); /* addresses and sockets only: libpq looks nothing up */
            return 0;
        }
        p->hosts = h;
    }
    return 0;
}

pg_pool *pg_pool_new(uv_loop_t *loop, const pg_pool_opts *opts)
{
    pg_pool *p;
    int i;

    if (!loop || !opts)
        return NULL;
    p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->loop = loop;
    p->size = opts->size > 0 ? opts->size : 2;
    p->query_timeout_ms = opts->query_timeout_ms > 0 ? opts->query_timeout_ms : 10000;
    p->connect_timeout_ms = opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 5000;
    p->queue_max = opts->queue_max > 0 ? opts->queue_max : PG_QUEUE_MAX;
    p->dsn = xstrdup(opts->dsn ? opts->dsn : "");
    if (opts->password && *opts->password && !(p->password = xstrdup(opts->password)))
        goto fail;
    p->slots = calloc((size_t)p->size, sizeof(pg_conn));
    if (!p->dsn || !p->slots || pool_parse_dsn(p) != 0)
        goto fail;
    p->rng = backoff_seed();
    /* From here nothing fails: handles exist and must be closed, not freed. */
    uv_check_init(loop, &p->kick);
    p->kick.data = p;
    p->handles++;
    uv_idle_init(loop, &p->kick_idle);
    p->kick_idle.data = p;
    p->handles++;
    for (i = 0; i < p->size; i++) {
        slot_init(p, &p->slots[i], i + 1);
        schedule_connect(&p->slots[i], 0);
    }
    return p;
fail:
    pool_free(p);
    return NULL;
}

/* Statements are few: a linear search is the simplest honest index. */
static int stmt_find(const pg_pool *p, const char *name)
{
    int i;

    for (i = 0; i < p->nstmts; i++) {
        if (strcmp(p->stmts[i].name, name) == 0)
            return i;
    }
    return -1;
}

static int stmts_grow(pg_pool *p)
{
    int cap = p->capstmts ? p->capstmts * 2 : 8;
    pg_stmt *st;
    unsigned char *f;
    int i;

    for (i = 0; i < p->size; i++) {
        f = realloc(p->slots[i].prepared, (size_t)cap);
        if (!f)
            return PG_ENOMEM;
        memset(f + p->capstmts, 0, (size_t)(cap - p->capstmts));
        p->slots[i].prepared = f;
    }
    st = realloc(p->stmts, (size_t)cap * sizeof(*st));
    if (!st)
        return PG_ENOMEM;
    p->stmts = st;
    p->capstmts = cap;
    return 0;
}

int pg_pool_prepare(pg_pool *p, const char *name, const char *sql)
{
    pg_stmt *st;
    int i, err;

    if (!p || !name || !*name || !sql)
        return PG_EINVAL;
    if (p->closing)
        return PG_ECLOSING;
    i = stmt_find(p, name);
    if (i >= 0)
        return strcmp(p->stmts[i].sql, sql) == 0 ? 0 : PG_EEXIST;
    if (p->nstmts == p->capstmts) {
        err = stmts_grow(p);
        if (err)
            return err;
    }
    st = &p->stmts[p->nstmts];
    st->name = xstrdup(name);
    st->sql = xstrdup(sql);
    if (!st->name || !st->sql) {
        free(st->name);
        free(st->sql);
        return PG_ENOMEM;
    }
    p->nstmts++;
    return 0;
}

static int check_params(int nparams, const char *const *params)
{
    return nparams < 0 || (nparams > 0 && !params) ? PG_EINVAL : 0;
}

static int enqueue(pg_pool *p, pg_req *r)
{
    req_start(p, r);
    queue_push(p, r);
    kick(p);
    return 0;
}

int pg_query(pg_pool *p, const char *sql, int nparams, const char *const *params, pg_result_cb cb,
             void *arg)
{
    pg_req *r;

    if (!p || !sql || !cb || check_params(nparams, params))
        return PG_EINVAL;
    if (p->closing)
        return PG_ECLOSING;
    if (p->qlen >= p->queue_max)
        return PG_EQUEUEFULL;
    r = req_new(p, RQ_QUERY, nparams, params);
    if (!r)
        return PG_ENOMEM;
    r->sql = xstrdup(sql);
    if (!r->sql) {
        req_free(r);
        return PG_ENOMEM;
    }
    r->cb = cb;
    r->arg = arg;
    p->stats.queries++;
    return enqueue(p, r);
}

int pg_query_prepared(pg_pool *p, const char *name, int nparams, const char *const *params,
                      pg_result_cb cb, void *arg)
{
    pg_req *r;
    int i;

    if (!p || !name || !cb || check_params(nparams, params))
        return PG_EINVAL;
    if (p->closing)
        return PG_ECLOSING;
    i = stmt_find(p, name);
    if (i < 0)
        return PG_ENOENT;
    if (p->qlen >= p->queue_max)
        return PG_EQUEUEFULL;
    r = req_new(p, RQ_PREPARED, nparams, params);
    if (!r)
        return PG_ENOMEM;
    r->stmt = i;
    r->cb = cb;
    r->arg = arg;
    p->stats.queries++;
    return enqueue(p, r);
}

int pg_acquire(pg_pool *p, pg_conn_cb cb, void *arg)
{
    pg_req *r;

    if (!p || !cb)
        return PG_EINVAL;
    if (p->closing)
        return PG_ECLOSING;
    if (p->qlen >= p->queue_max)
        return PG_EQUEUEFULL;
    r = req_new(p, RQ_ACQUIRE, 0, NULL);
    if (!r)
        return PG_ENOMEM;
    r->ccb = cb;
    r->arg = arg;
    return enqueue(p, r);
}

static int conn_submit(pg_conn *c, req_kind kind, const char *sql, int stmt, int nparams,
                       const char *const *params, pg_result_cb cb, void *arg)
{
    pg_pool *p = c->pool;
    pg_req *r;

    if (!c->leased || c->release_pending)
        return PG_EINVAL;
    if (c->op != OP_NONE || c->req)
        return PG_EBUSY;
    r = req_new(p, kind, nparams, params);
    if (!r)
        return PG_ENOMEM;
    if (sql) {
        r->sql = xstrdup(sql);
        if (!r->sql) {
            req_free(r);
            return PG_ENOMEM;
        }
    }
    r->stmt = stmt;
    r->cb = cb;
    r->arg = arg;
    p->stats.queries++;
    req_start(p, r);
    p->api_depth++;
    if (c->broken || c->state != SL_UP)
        req_fail(r, "connection lost");
    else
        send_req(c, r);
    p->api_depth--;
    return 0;
}

int pg_conn_query(pg_conn *c, const char *sql, int nparams, const char *const *params,
                  pg_result_cb cb, void *arg)
{
    if (!c || !sql || !cb || check_params(nparams, params))
        return PG_EINVAL;
    if (c->pool->closing)
        return PG_ECLOSING;
    return conn_submit(c, RQ_QUERY, sql, 0, nparams, params, cb, arg);
}

int pg_conn_query_prepared(pg_conn *c, const char *name, int nparams, const char *const *params,
                           pg_result_cb cb, void *arg)
{
    int i;

    if (!c || !name || !cb || check_params(nparams, params))
        return PG_EINVAL;
    if (c->pool->closing)
        return PG_ECLOSING;
    i = stmt_find(c->pool, name);
    if (i < 0)
        return PG_ENOENT;
    return conn_submit(c, RQ_PREPARED, NULL, i, nparams, params, cb, arg);
}

void pg_release(pg_conn *c)
{
    pg_pool *p;

    if (!c || !c->leased)
        return;
    p = c->pool;
    if (c->op != OP_NONE || c->req) {
        /* A query is still running: release once its callback has run. */
        c->release_pending = 1;
        return;
    }
    p->api_depth++;
    release_now(c);
    p->api_depth--;
}

int pg_listen(pg_pool *p, const char *channel, pg_notify_cb cb, void *arg)
{
    pg_chan *ch;
    pg_conn *s;
    int cap;

    if (!p || !channel || !*channel || !cb)
        return PG_EINVAL;
    if (p->closing)
        return PG_ECLOSING;
    if (p->nchans == p->capchans) {
        cap = p->capchans ? p->capchans * 2 : 4;
        ch = realloc(p->chans, (size_t)cap * sizeof(*ch));
        if (!ch)
            return PG_ENOMEM;
        p->chans = ch;
        p->capchans = cap;
    }
    if (!p->listener) {
        s = calloc(1, sizeof(*s));
        if (!s)
            return PG_ENOMEM;
        s->listener = 1;
        slot_init(p, s, 0);
        p->listener = s;
        schedule_connect(s, 0);
    }
    ch = &p->chans[p->nchans];
    ch->name = xstrdup(channel);
    if (!ch->name)
        return PG_ENOMEM;
    ch->cb = cb;
    ch->arg = arg;
    p->nchans++;
    kick(p);
    return 0;
}

int pg_pool_ready(const pg_pool *p)
{
    int i;

    if (!p || p->closing)
        return 0;
    for (i = 0; i < p->size; i++) {
        if (p->slots[i].state == SL_UP)
            return 1;
    }
    return 0;
}

int pg_listen_ready(const pg_pool *p)
{
    const pg_conn *s = p ? p->listener : NULL;

    return s && !p->closing && s->state == SL_UP && s->listened >= p->nchans;
}

void pg_pool_stats(const pg_pool *p, pg_stats *out)
{
    if (!out)
        return;
    if (!p) {
        memset(out, 0, sizeof(*out));
        return;
    }
    *out = p->stats;
}

static void slot_close(pg_conn *s)
{
    conn_drop(s);
    s->leased = 0;
    s->broken = 0;
    s->release_pending = 0;
    uv_close((uv_handle_t *)&s->timer, slot_timer_closed);
}

void pg_pool_close(pg_pool *p, void (*done)(void *arg), void *arg)
{
    int i;

    if (!p || p->closing)
        return;
    p->closing = 1;
    p->done = done;
    p->done_arg = arg;
    /* Connections first, so no callback below can see one still running. */
    for (i = 0; i < p->size; i++)
        slot_close(&p->slots[i]);
    if (p->listener)
        slot_close(p->listener);
    uv_close((uv_handle_t *)&p->kick, handle_closed);
    uv_close((uv_handle_t *)&p->kick_idle, handle_closed);
    if (p->cancel)
        uv_cancel((uv_req_t *)&p->cancel->work);
    while (p->live)
        req_finish_now(p->live, NULL, NULL, "pool closing");
}
