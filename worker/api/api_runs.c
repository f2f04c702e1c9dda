/* Runs and progress: GET /v1/runs, /v1/runs/latest, /v1/runs/{run_id},
 * /v1/enterprises/{corp_id}/progress (all through the per-worker cache) and
 * POST /v1/runs.
 *
 * Percent and ETA are defined once, in worker/api/run_view.c. Every answer of a
 * GET here says the revision of the runs it shows, and each takes
 * ?min_revision=N: never an answer of a lower revision (api_cache.h). */
#include "worker/api/api_cache.h"
#include "worker/api/api_routes.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "coordinator/runs.h"
#include "worker/api/run_view.h"

/* The runs with their enterprise count and the sum of their percents in tenths
 * (ENT_TENTHS_SQL, the one definition): run_view_percent makes the run's. */
static const char list_sql[] =
    "SELECT " RUN_COLS ", a.n, a.tenths FROM (SELECT * FROM sync_runs WHERE env = $1 AND job = $2 "
    "ORDER BY run_id DESC LIMIT $3::int) r LEFT JOIN LATERAL (SELECT count(*) AS n, "
    "coalesce(sum(" ENT_TENTHS_SQL "), 0) AS tenths FROM sync_progress p WHERE p.run_id = "
    "r.run_id) a ON true ORDER BY r.run_id DESC";

/* The enterprise's row in the latest run that has one; known = it exists at all. */
static const char progress_sql[] =
    "SELECT EXISTS (SELECT 1 FROM enterprises WHERE corp_id = $3) AS known, x.*, cb.* FROM (SELECT "
    "1) "
    "AS one LEFT JOIN LATERAL (SELECT r.run_id, r.state AS run_state, " PROGRESS_COLS
    ", extract(epoch FROM now()), " RUN_REVISION " FROM sync_runs r JOIN sync_progress p ON "
    "p.run_id = r.run_id WHERE r.env = $1 AND r.job = $2 AND p.corp_id = $3 ORDER BY r.run_id "
    "DESC LIMIT 1) x ON true, LATERAL (SELECT count(*) FILTER (WHERE applied_at IS NULL) AS "
    "cb_waiting, count(*) FILTER (WHERE applied_at IS NOT NULL) AS cb_applied, coalesce(extract("
    "epoch FROM now() - min(received_at) FILTER (WHERE applied_at IS NULL)), 0) AS cb_lag, "
    "extract(epoch FROM max(applied_at)) AS cb_last FROM callback_inbox WHERE corp_id = $3) cb";

/* ?min_revision=N: 0 when absent; -1 (answered 400) when not an integer from 0
 * to 999999999999999999. */
static int min_revision(http_req *req, long long *out)
{
    const char *s = http_req_query(req, "min_revision");
    *out = 0;
    if (!s || api_parse_nonneg_ll(s, out) == 0)
        return 0;
    http_reply_error(req, 400, "bad_request",
                     "min_revision must be an integer from 0 to 999999999999999999");
    return -1;
}

static char *detach(buf *b, size_t *len)
{
    char *s = b->oom ? NULL : buf_detach(b, len);
    buf_free(b);
    return s;
}

/* ---- one run ---- */

static void on_run(void *arg, PGresult *res, const char *err)
{
    api_centry *e = arg;
    size_t len = 0;
    char *body;

    if (err) {
        api_pg_failed(e->a, "run", err);
        api_cache_error(e, 503, "database_unavailable", "could not query PostgreSQL");
        return;
    }
    if (PQntuples(res) == 0) {
        api_cache_error(e, 404, "not_found", e->run_id ? "no run with that id" : "no run yet");
        return;
    }
    body = run_view_json(res, &len);
    if (!body)
        api_cache_error(e, 503, "out_of_memory", "out of memory");
    else
        api_cache_done(e, 200, body, len, api_col_ll(res, 0, RC_REVISION));
}

static int fill_run(api *a, api_centry *e)
{
    char id[24];
    const char *p[] = {a->d.settings->env, API_JOB, NULL};
    if (e->run_id) {
        snprintf(id, sizeof id, "%lld", e->run_id);
        p[2] = id;
    }
    return api_pg_query(a, run_view_sql, 3, p, on_run, e);
}

static void init_run(api_centry *e, const void *arg)
{
    e->run_id = *(const long long *)arg;
}

static void on_run_latest(http_req *req, void *arg)
{
    long long id = 0, min_rev;
    if (min_revision(req, &min_rev))
        return;
    api_cached(arg, req, "run:latest", min_rev, init_run, &id, fill_run);
}

static void on_run_id(http_req *req, void *arg)
{
    long long id, min_rev;
    char key[48];
    if (api_parse_pos_ll(http_req_param(req, "run_id"), 999999999999999999LL, &id)) {
        http_reply_error(req, 400, "bad_request", "run_id must be a positive integer");
        return;
    }
    if (min_revision(req, &min_rev))
        return;
    snprintf(key, sizeof key, "run:%lld", id);
    api_cached(arg, req, key, min_rev, init_run, &id, fill_run);
}

/* ---- the list ---- */

static void on_list(void *arg, PGresult *res, const char *err)
{
    api_centry *e = arg;
    buf b;
    jw w;
    size_t len = 0;

    if (err) {
        api_pg_failed(e->a, "runs", err);
        api_cache_error(e, 503, "database_unavailable", "could not query PostgreSQL");
        return;
    }
    /* the environment's revision: the same on every row (0 without runs) */
    long long rev = PQntuples(res) ? api_col_ll(res, 0, RC_REVISION) : 0;
    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kint(&w, "revision", rev);
    jw_key(&w, "runs");
    jw_arr_begin(&w);
    for (int i = 0; i < PQntuples(res); i++) {
        int nent = (int)api_col_ll(res, i, RC_N);
        jw_obj_begin(&w);
        run_view_put_fields(&w, res, i);
        run_view_put_progress(&w, res, i, api_col_ll(res, i, RC_N + 1), nent);
        jw_kint(&w, "enterprises_total", nent);
        jw_obj_end(&w);
    }
    jw_arr_end(&w);
    jw_obj_end(&w);
    char *body = detach(&b, &len);
    if (!body)
        api_cache_error(e, 503, "out_of_memory", "out of memory");
    else
        api_cache_done(e, 200, body, len, rev);
}

static int fill_list(api *a, api_centry *e)
{
    char lim[16];
    snprintf(lim, sizeof lim, "%d", e->limit);
    const char *p[] = {a->d.settings->env, API_JOB, lim};
    return api_pg_query(a, list_sql, 3, p, on_list, e);
}

static void init_list(api_centry *e, const void *arg)
{
    e->limit = *(const int *)arg;
}

static void on_runs(http_req *req, void *arg)
{
    const char *ls = http_req_query(req, "limit");
    long long lim = 20, min_rev;
    char key[32];
    if (ls && api_parse_pos_ll(ls, 100, &lim)) {
        http_reply_error(req, 400, "bad_request", "limit must be an integer from 1 to 100");
        return;
    }
    if (min_revision(req, &min_rev))
        return;
    int l = (int)lim;
    snprintf(key, sizeof key, "runs:%d", l);
    api_cached(arg, req, key, min_rev, init_list, &l, fill_list);
}

/* ---- one enterprise's progress ---- */

static void on_progress(void *arg, PGresult *res, const char *err)
{
    api_centry *e = arg;
    buf b;
    jw w;
    size_t len = 0;

    if (err) {
        api_pg_failed(e->a, "progress", err);
        api_cache_error(e, 503, "database_unavailable", "could not query PostgreSQL");
        return;
    }
    if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
        api_cache_error(e, 404, "not_found", "no enterprise with that corp_id");
        return;
    }
    if (PQgetisnull(res, 0, 1)) {
        api_cache_error(e, 404, "not_found", "this enterprise has not been in any run yet");
        return;
    }
    /* columns: known, run_id, run_state, PROGRESS_COLS..., now, revision */
    long long rev = api_col_ll(res, 0, 3 + PC_N + 1);
    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kint(&w, "run_id", api_col_ll(res, 0, 1));
    jw_kstr(&w, "run_state", PQgetvalue(res, 0, 2));
    jw_kint(&w, "revision", rev);
    jw_key(&w, "enterprise");
    run_view_put_enterprise(&w, res, 0, 3, run_view_col_d(res, 0, 3 + PC_N));
    /* Change callbacks (callback_inbox): waiting, applied, how old the oldest
     * waiting one is, when the last one was applied. */
    jw_key(&w, "callbacks");
    jw_obj_begin(&w);
    jw_kint(&w, "waiting", api_col_ll(res, 0, 3 + PC_N + 2));
    jw_kint(&w, "applied", api_col_ll(res, 0, 3 + PC_N + 3));
    jw_kdbl(&w, "lag_seconds", run_view_col_d(res, 0, 3 + PC_N + 4));
    api_kepoch(&w, "last_applied_at", res, 0, 3 + PC_N + 5);
    jw_obj_end(&w);
    jw_obj_end(&w);
    char *body = detach(&b, &len);
    if (!body)
        api_cache_error(e, 503, "out_of_memory", "out of memory");
    else
        api_cache_done(e, 200, body, len, rev);
}

static int fill_progress(api *a, api_centry *e)
{
    const char *p[] = {a->d.settings->env, API_JOB, e->corp};
    return api_pg_query(a, progress_sql, 3, p, on_progress, e);
}

static void init_progress(api_centry *e, const void *arg)
{
    snprintf(e->corp, sizeof e->corp, "%s", (const char *)arg);
}

static void on_enterprise_progress(http_req *req, void *arg)
{
    const char *corp = http_req_param(req, "corp_id");
    char key[API_CACHE_KEY];
    long long min_rev;
    if (!corp_id_valid(corp)) {
        http_reply_error(req, 400, "bad_request", "corp_id must be 1-64 of [A-Za-z0-9_-]");
        return;
    }
    if (min_revision(req, &min_rev))
        return;
    snprintf(key, sizeof key, "progress:%s", corp);
    api_cached(arg, req, key, min_rev, init_progress, corp, fill_progress);
}

/* ---- POST /v1/runs ---- */

typedef struct post_op {
    api *a;
    http_req *req;
} post_op;

static void on_requested(void *arg, const runs_created *r, const char *err)
{
    post_op *op = arg;
    if (api_unref(op->a)) {
        if (err) {
            api_pg_failed(op->a, "request run", err);
            http_reply_error(op->req, 503, "database_unavailable", "could not create the run");
        } else {
            char body[96];
            int fresh = r->created;
            snprintf(body, sizeof body, "{\"run_id\":%lld,\"state\":\"%s\",\"created\":%s}",
                     r->run_id, r->state && strlen(r->state) < 16 ? r->state : "pending",
                     fresh ? "true" : "false");
            log_info("api: run requested", LF_I("run_id", r->run_id), LF_I("created", fresh));
            http_reply_json(op->req, fresh ? 202 : 200, body);
        }
    }
    free(op);
}

static void on_post_run(http_req *req, void *arg)
{
    api *a = arg;
    if (!api_admin_ok(a, req))
        return;
    /* found by fuzz_request: with the database down the pool would hold the
     * request until its query timeout; answer now */
    if (!pg_pool_ready(a->d.pg)) {
        http_reply_error(req, 503, "database_unavailable", "PostgreSQL is not connected");
        return;
    }
    post_op *op = calloc(1, sizeof(*op));
    if (!op) {
        http_reply_error(req, 503, "out_of_memory", "out of memory");
        return;
    }
    runs_new rq = {.env = a->d.settings->env, .job = API_JOB, .trigger = "manual"};
    op->a = a;
    op->req = req;
    api_ref(a);
    if (runs_request_now(a->d.pg, &rq, on_requested, op)) {
        api_unref(a);
        free(op);
        http_reply_error(req, 503, "database_unavailable", "could not create the run");
    }
}

int api_runs_register(api *a)
{
    int err = http_server_route(a->srv, "GET", "/v1/runs", on_runs, a);
    if (!err)
        err = http_server_route(a->srv, "POST", "/v1/runs", on_post_run, a);
    if (!err)
        err = http_server_route(a->srv, "GET", "/v1/runs/latest", on_run_latest, a);
    if (!err)
        err = http_server_route(a->srv, "GET", "/v1/runs/{run_id}", on_run_id, a);
    if (!err)
        err = http_server_route(a->srv, "GET", "/v1/enterprises/{corp_id}/progress",
                                on_enterprise_progress, a);
    return err;
}
