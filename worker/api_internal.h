/* Shared by worker/api_*.c only: the api object, the pending-callback count that
 * lets api_close free it safely, the progress cache and small reply helpers. */
#ifndef ORGSYNC_API_INTERNAL_H
#define ORGSYNC_API_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "common/buf.h"
#include "worker/api.h"
#include "worker/corp_id.h"

typedef struct api_centry api_centry;
typedef struct lookup lookup;

#define API_CACHE_SLOTS 64
#define API_CACHE_KEY 96

struct api {
    api_deps d;
    http_server *srv;
    lookup *lk;
    int closing;
    int pending; /* callbacks still to come; api_close frees at 0 */
    int cache_ms;
    api_centry *cache[API_CACHE_SLOTS];
};

/* Fills one cache entry: starts the query and later calls api_cache_done. 0, or a
 * negative error (the entry is then answered 503). */
typedef int (*api_fill_fn)(api *a, api_centry *e);

/* A cached answer, or one being computed for the requests waiting on it. */
struct api_centry {
    api *a;
    char key[API_CACHE_KEY];
    int status;
    char *body;
    size_t len;
    uint64_t expires_us; /* started_us + cache_ms: never older than that */
    uint64_t started_us; /* when the query that made (or will make) the body was sent */
    int loading;
    int transient; /* not in the table: freed once answered */
    http_req **waiters;
    size_t nwait, capwait;
    /* the query's arguments, set by the route before filling */
    long long run_id; /* 0: latest */
    int limit;
    char corp[72];
};

/* Pending-callback accounting: every async call the api starts takes one
 * reference and gives it back in its callback; api_unref answers whether the
 * api is still serving (0 after api_close: then do not touch the request). */
void api_ref(api *a);
int api_unref(api *a);

/* Answers req from the cache entry `key`, filling it with fill when stale. The
 * route sets the entry's arguments through init (called only when a fill starts). */
typedef void (*api_centry_init)(api_centry *e, const void *arg);
void api_cached(api *a, http_req *req, const char *key, api_centry_init init, const void *arg,
                api_fill_fn fill);
/* Completes a fill: stores (status, body) for cache_ms unless status is 5xx, and
 * answers every waiter. Takes ownership of body (malloc'ed, may be NULL for an
 * error reply built from code/message). */
void api_cache_done(api_centry *e, int status, char *body, size_t len);
/* Same with an error body {"error":{"code","message"}}. */
void api_cache_error(api_centry *e, int status, const char *code, const char *message);

/* Checks the bearer token on an admin route; answers 401/403 itself and returns
 * 0 when the request may not go on, 1 when it may. */
int api_admin_ok(api *a, http_req *req);

/* pg_query, but failing at once (PG_ECLOSING) while the pool has no live
 * connection: a worker whose database is down answers 503 now, not after the
 * pool's query timeout. */
int api_pg_query(api *a, const char *sql, int n, const char *const *p, pg_result_cb cb, void *arg);

/* Logs a PostgreSQL failure and counts it; returns the status to answer (503). */
int api_pg_failed(api *a, const char *what, const char *err);

/* Parsing helpers shared by the routes: 0 ok, -1 bad. */
int api_parse_pos_ll(const char *s, long long max, long long *out);
/* SPEC §5 mobile format (docs/API.md): 11 digits starting with 1, or '+' and 6 to
 * 15 digits. 1 if valid. */
int api_valid_mobile(const char *s);

/* The realtime lookup body: a JSON object with string corp_id and mobile (other
 * keys ignored), nothing after it. 0 with both copied, or -1 and *why says what is
 * wrong. len may exceed INT_MAX only in theory (bodies are capped at 64 KiB). */
int api_lookup_body_parse(const char *body, size_t len, char *corp, size_t clen, char *mobile,
                          size_t mlen, const char **why);

/* Column helpers on a PGresult: NULL-aware. */
const char *api_col(const PGresult *r, int row, int col); /* NULL when SQL NULL */
long long api_col_ll(const PGresult *r, int row, int col);
/* Writes key: RFC 3339 UTC with milliseconds from an epoch-seconds column, or null. */
void api_kepoch(jw *w, const char *key, const PGresult *r, int row, int col);
/* Writes key: integer or null. */
void api_kll_or_null(jw *w, const char *key, const PGresult *r, int row, int col);

/* SQL expressions shared by the routes and the realtime lookup, so a member or
 * a department has one JSON shape wherever it is answered (row_to_json: compact,
 * keys in this order). The table alias must be u (users) or d (departments). */
#define API_SQL_TS(col) "to_char((" col ") AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
#define API_SQL_USER_JSON                                                                          \
    "(SELECT row_to_json(t)::text FROM (SELECT u.corp_id, u.userid, u.name, u.mobile, u.email, "   \
    "u.position, u.status, u.department, u.main_department, " API_SQL_TS(                          \
        "u.synced_at") " AS synced_at) t)"
#define API_SQL_DEPT_JSON                                                                          \
    "(SELECT row_to_json(t)::text FROM (SELECT d.dept_id, d.name, d.parent_id, "                   \
    "d.\"order\", " API_SQL_TS("d.synced_at") " AS synced_at) t)"

/* Route registration, per file. */
int api_health_register(api *a);
int api_runs_register(api *a);
int api_users_register(api *a);

#endif
