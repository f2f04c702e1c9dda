/* worker/api/: the HTTP API of SPEC §5 (routes, realtime lookup, progress page).
 *
 * Shared by the route files only: the api object and its pending-callback count
 * (which lets api_close free it safely), admin authentication, PostgreSQL and
 * parsing helpers, and column readers. Nothing here knows a route; the routes are
 * registered by api.c alone (api_routes.h), so no route file depends back on it. */
#ifndef ORGSYNC_API_SHARED_H
#define ORGSYNC_API_SHARED_H

#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "common/buf.h"
#include "common/metrics.h"
#include "worker/api/api.h"
#include "worker/wecom/corp_id.h"

typedef struct api_centry api_centry;
typedef struct lookup lookup;

#define API_CACHE_SLOTS 64
#define API_HTTP_SERIES 64 /* a power of two */

/* The HTTP metrics series of one (route, method, status), found once (api.c). */
typedef struct api_http_series {
    const char *route; /* the router's pattern, which outlives the observer; NULL: none */
    char method[16];
    int status; /* 0: a free slot */
    metrics_handle requests, duration;
} api_http_series;

struct api {
    api_deps d;
    http_server *srv;
    lookup *lk;
    int closing;
    int pending;             /* callbacks still to come; api_close frees at 0 */
    void (*destroy)(api *a); /* frees a (set by api.c, which owns what a holds) */
    int cache_ms;
    api_centry *cache[API_CACHE_SLOTS];
    /* GET /metrics: each enterprise's last success, kept between scrapes so that
     * only runs from succ_mark on are read again (api_health.c) */
    struct api_success *succ; /* sorted by corp_id */
    size_t nsucc, capsucc;
    long long succ_mark;
    api_http_series http_series[API_HTTP_SERIES]; /* open addressing, never emptied */
};

/* Pending-callback accounting: every async call the api starts takes one
 * reference and gives it back in its callback; api_unref answers whether the
 * api is still serving (0 after api_close: then do not touch the request). */
void api_ref(api *a);
int api_unref(api *a);

/* Checks the bearer token on an admin route; answers 401/403 itself and returns
 * 0 when the request may not go on, 1 when it may. */
int api_admin_ok(api *a, http_req *req);

/* The same for directory reads (members, departments, members by mobile):
 * open with ORGSYNC_PUBLIC_READS=on; else the bearer token must be
 * ORGSYNC_READ_TOKEN or ORGSYNC_ADMIN_TOKEN (constant-time compares), and
 * anything else is 401 with WWW-Authenticate, including when neither token is
 * configured (reads are then refused to everyone, with a message saying what
 * to set). Read-only deployments serve reads. */
int api_read_ok(api *a, http_req *req);

/* Answers req with the JSON a writer put in b (503 out_of_memory if b ran out),
 * and frees b. */
void api_reply_json(http_req *req, int status, buf *b);

/* pg_query, but failing at once (PG_ECLOSING) while the pool has no live
 * connection: a worker whose database is down answers 503 now, not after the
 * pool's query timeout. */
int api_pg_query(api *a, const char *sql, int n, const char *const *p, pg_result_cb cb, void *arg);

/* Logs a PostgreSQL failure and counts it; returns the status to answer (503). */
int api_pg_failed(api *a, const char *what, const char *err);

/* Parsing helpers shared by the routes: 0 ok, -1 bad. */
int api_parse_pos_ll(const char *s, long long max, long long *out);
/* 0 to 999999999999999999, digits only (a revision: ?min_revision=). */
int api_parse_nonneg_ll(const char *s, long long *out);
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

#endif
