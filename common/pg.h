/* Async PostgreSQL on one libuv loop: non-blocking libpq driven by uv_poll on
 * PQsocket. A small pool of connections serves parameterised queries (text
 * format); pg_acquire leases one connection exclusively for a transaction;
 * pg_listen keeps a dedicated connection for LISTEN/NOTIFY.
 *
 * Nothing here blocks the loop: host names are resolved with uv_getaddrinfo,
 * connecting uses PQconnectStartParams/PQconnectPoll, queries
 * PQsendQueryParams/PQsendQueryPrepared. A timed-out query drops its connection
 * (which reconnects at once) and a best-effort PQcancel runs on the libuv
 * threadpool so the server stops the abandoned statement. A lost connection
 * reconnects with full-jitter exponential backoff (200 ms base, 5 s cap). */
#ifndef ORGSYNC_PG_H
#define ORGSYNC_PG_H

#include <libpq-fe.h>
#include <uv.h>

typedef struct pg_pool pg_pool;
typedef struct pg_conn pg_conn; /* one leased connection, for a transaction */

/* res is owned by the pool and valid only during the callback. err is NULL on
 * success (COMMAND_OK / TUPLES_OK); otherwise a message ("timeout", "connection lost",
 * "pool closing", or the server's error text) and res may be non-NULL for a server
 * error so the caller can read PQresultErrorField(res, PG_DIAG_SQLSTATE). */
typedef void (*pg_result_cb)(void *arg, PGresult *res, const char *err);
/* Every callback runs on the loop, exactly once per accepted request, and never
 * from inside the API call that submitted it (pg_pool_close excepted: it calls
 * pending callbacks before returning). err, like res, is valid only during the
 * callback. Timeouts count from submission, so waiting for a connection counts. */

typedef struct pg_pool_opts {
    const char *dsn;
    int size;
    int query_timeout_ms;
    int connect_timeout_ms;
    int queue_max; /* requests waiting for a connection; 0: PG_QUEUE_MAX */
    /* NULL or "": the DSN's own (or libpq's passfile). Else given to libpq as the
     * password keyword, never written into the DSN (ORGSYNC_PG_PASSWORD). */
    const char *password;
} pg_pool_opts; /* defaults if 0: size 2, 10000, 5000 */

/* Bound on queries (and acquire requests) waiting for a free connection; past
 * it pg_query returns PG_EQUEUEFULL and the callback is not called. */
#define PG_QUEUE_MAX 1024

/* Negative error codes returned by the int functions below (0 is success). When
 * a function returns an error, its callback is never called. */
#define PG_EINVAL (-22)     /* bad argument (NULL, nparams < 0, c not leased) */
#define PG_ENOMEM (-12)     /* allocation failed */
#define PG_EQUEUEFULL (-11) /* PG_QUEUE_MAX requests already waiting */
#define PG_ECLOSING (-32)   /* pg_pool_close was called */
#define PG_EEXIST (-17)     /* a statement of that name is already registered */
#define PG_ENOENT (-2)      /* no statement of that name was registered */
#define PG_EBUSY (-16)      /* the leased connection already runs a query */

/* starts connecting; never blocks. NULL if opts->dsn does not parse (or no memory). */
pg_pool *pg_pool_new(uv_loop_t *loop, const pg_pool_opts *opts);
/* registered once; prepared on each connection before first use, and again after
 * every reconnect (lazily: the first pg_query_prepared of it on a connection sends
 * the PREPARE). Registering the same name again with the same SQL is a no-op. */
int pg_pool_prepare(pg_pool *p, const char *name, const char *sql);
int pg_query(pg_pool *p, const char *sql, int nparams, const char *const *params, pg_result_cb cb,
             void *arg);
int pg_query_prepared(pg_pool *p, const char *name, int nparams, const char *const *params,
                      pg_result_cb cb, void *arg);

typedef void (*pg_conn_cb)(void *arg, pg_conn *c, const char *err);
/* exclusive connection (for BEGIN ... COMMIT); on error c is NULL and err says why */
int pg_acquire(pg_pool *p, pg_conn_cb cb, void *arg);
/* One query at a time per leased connection (PG_EBUSY otherwise). The pool's
 * query timeout applies; a timeout or lost connection makes the lease broken:
 * later queries on it fail with "connection lost" until it is released. */
int pg_conn_query(pg_conn *c, const char *sql, int nparams, const char *const *params,
                  pg_result_cb cb, void *arg);
int pg_conn_query_prepared(pg_conn *c, const char *name, int nparams, const char *const *params,
                           pg_result_cb cb, void *arg);
/* rolls back an open transaction first, or drops a broken connection. If a
 * query on c is still in flight, the release happens after its callback. c is
 * invalid afterwards. */
void pg_release(pg_conn *c);

typedef void (*pg_notify_cb)(void *arg, const char *channel, const char *payload);
/* dedicated connection; LISTEN re-issued after reconnect. channel is an SQL
 * identifier (quoted by the pool). */
int pg_listen(pg_pool *p, const char *channel, pg_notify_cb cb, void *arg);

int pg_pool_ready(const pg_pool *p); /* 1 when at least one connection is up */
/* 1 when the listener connection is up and has LISTENed on every channel
 * registered so far (a NOTIFY sent after this is delivered). */
int pg_listen_ready(const pg_pool *p);

/* queries: accepted queries (pool and leased); errors: queries whose callback got
 * an err (timeouts included); timeouts: queries and acquires that timed out;
 * reconnects: connections re-established after having been up. */
typedef struct pg_stats {
    unsigned long queries, errors, timeouts, reconnects;
} pg_stats;
void pg_pool_stats(const pg_pool *p, pg_stats *out);

/* pending callbacks get err "pool closing"; done called after every handle closed.
 * Leased connections are dropped (their transactions roll back on the server).
 * After pg_pool_close returns, API calls fail with PG_ECLOSING; once done has
 * run (done may be NULL), p and every pg_conn are freed. */
void pg_pool_close(pg_pool *p, void (*done)(void *arg), void *arg);

#endif
