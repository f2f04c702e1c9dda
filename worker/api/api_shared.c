/* What every route file shares: the api object's lifetime, admin and read
 * authentication, PostgreSQL and parsing helpers, column readers. */
#include "worker/api/api_shared.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/timeutil.h"

void api_ref(api *a)
{
    a->pending++;
}

int api_unref(api *a)
{
    a->pending--;
    if (!a->closing)
        return 1;
    if (a->pending == 0)
        a->destroy(a);
    return 0;
}

/* ---- auth ---- */

/* The token of an "Authorization: Bearer <token>" header, or NULL. */
static const char *bearer(http_req *req)
{
    const char *h = http_req_header(req, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return NULL;
    h += 7;
    while (*h == ' ')
        h++;
    return h;
}

static void unauthorized(http_req *req, const char *challenge, const char *message)
{
    http_req_add_header(req, "WWW-Authenticate", challenge);
    http_reply_error(req, 401, "unauthorized", message);
}

/* A configured (non-empty) token equals the presented one, in constant time. */
static int token_matches(const char *presented, const char *configured)
{
    return configured[0] && hash_ct_equal(presented, configured);
}

int api_admin_ok(api *a, http_req *req)
{
    const settings *s = a->d.settings;
    const char *h;

    if (!s->admin_token[0]) {
        http_reply_error(req, 403, "admin_disabled",
                         "admin routes are disabled: ORGSYNC_ADMIN_TOKEN is not set");
        return 0;
    }
    if (!(h = bearer(req))) {
        unauthorized(req, "Bearer", "missing bearer token");
        return 0;
    }
    if (!token_matches(h, s->admin_token)) {
        unauthorized(req, "Bearer error=\"invalid_token\"", "wrong bearer token");
        return 0;
    }
    if (a->d.read_only) {
        http_reply_error(req, 403, "read_only", "this deployment is read-only");
        return 0;
    }
    return 1;
}

int api_read_ok(api *a, http_req *req)
{
    const settings *s = a->d.settings;
    const char *h;
    int ok;

    if (s->public_reads)
        return 1;
    if (!s->read_token[0] && !s->admin_token[0]) {
        unauthorized(req, "Bearer",
                     "directory reads need a bearer token and none is configured: set "
                     "ORGSYNC_READ_TOKEN (or ORGSYNC_PUBLIC_READS=on to serve them to anyone)");
        return 0;
    }
    if (!(h = bearer(req))) {
        unauthorized(req, "Bearer",
                     "missing bearer token: directory reads need ORGSYNC_READ_TOKEN or "
                     "ORGSYNC_ADMIN_TOKEN");
        return 0;
    }
    /* Both compared, so the time taken says nothing about which one is set. */
    ok = token_matches(h, s->read_token);
    ok |= token_matches(h, s->admin_token);
    if (!ok) {
        unauthorized(req, "Bearer error=\"invalid_token\"", "wrong bearer token");
        return 0;
    }
    return 1;
}

void api_reply_json(http_req *req, int status, buf *b)
{
    if (b->oom)
        http_reply_error(req, 503, "out_of_memory", "out of memory");
    else
        http_reply(req, status, "application/json", b->data, b->len);
    buf_free(b);
}

int api_pg_query(api *a, const char *sql, int n, const char *const *p, pg_result_cb cb, void *arg)
{
    if (!pg_pool_ready(a->d.pg))
        return PG_ECLOSING;
    return pg_query(a->d.pg, sql, n, p, cb, arg);
}

int api_pg_failed(api *a, const char *what, const char *err)
{
    (void)a;
    log_warn("api: query failed", LF_S("query", what), LF_S("err", err ? err : "?"));
    metrics_counter_add(M_PG_ERRORS, "source=\"api\"", 1);
    return 503;
}

/* ---- parsing ---- */

int api_parse_nonneg_ll(const char *s, long long *out)
{
    long long v = 0;
    if (!s || !*s || strlen(s) > 18)
        return -1;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (*p - '0');
    }
    *out = v;
    return 0;
}

int api_parse_pos_ll(const char *s, long long max, long long *out)
{
    long long v;
    if (api_parse_nonneg_ll(s, &v) || v < 1 || v > max)
        return -1;
    *out = v;
    return 0;
}

static int all_digits(const char *s, size_t min, size_t max)
{
    size_t n = strlen(s);
    if (n < min || n > max)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

int api_valid_mobile(const char *s)
{
    if (!s)
        return 0;
    if (s[0] == '+')
        return all_digits(s + 1, 6, 15);
    return s[0] == '1' && all_digits(s, 11, 11);
}

/* ---- result columns ---- */

const char *api_col(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        return NULL;
    return PQgetvalue(r, row, col);
}

long long api_col_ll(const PGresult *r, int row, int col)
{
    const char *v = api_col(r, row, col);
    return v ? strtoll(v, NULL, 10) : 0;
}

void api_kepoch(jw *w, const char *key, const PGresult *r, int row, int col)
{
    const char *v = api_col(r, row, col);
    char out[32];
    if (!v) {
        jw_knull(w, key);
        return;
    }
    double t = strtod(v, NULL);
    long long sec = (long long)t;
    if (t < 0 && (double)sec != t)
        sec--; /* floor, for times before 1970 */
    int ms = (int)((t - (double)sec) * 1000.0 + 0.5);
    if (ms >= 1000) {
        sec++;
        ms -= 1000;
    }
    time_rfc3339((time_t)sec, ms, out);
    jw_kstr(w, key, out);
}

void api_kll_or_null(jw *w, const char *key, const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        jw_knull(w, key);
    else
        jw_kint(w, key, api_col_ll(r, row, col));
}
