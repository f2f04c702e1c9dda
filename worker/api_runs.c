/* Runs and progress: GET /v1/runs, /v1/runs/latest, /v1/runs/{run_id},
 * /v1/enterprises/{corp_id}/progress (all through the per-worker cache) and
 * POST /v1/runs.
 *
 * Percent and ETA (docs/API.md):
 *   enterprise percent: 100 once succeeded or failed; else departments_done /
 *     departments_total, floored to 0.1 and capped at 99.9 (deletions remain);
 *     0 while the total is unknown.
 *   run percent: 100 once finished (succeeded, partial, failed), 0 while pending,
 *     else the mean of its enterprises' percents.
 *   ETA: from this run's observed rate, measured with PostgreSQL's clock so every
 *     worker on every host computes the same figure: enterprise = elapsed since its
 *     start * (total - done) / done; run = elapsed since the run started *
 *     (100 - percent) / percent. 0 once finished, null when there is no rate yet. */
#include "worker/api_internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "coordinator/runs.h"

/* Run columns, shared by the detail and list queries (indexes below). */
#define RUN_COLS                                                                                   \
    "r.run_id, r.env, r.job, r.trigger, r.state, r.leader_instance, r.fencing_token, r.attempt, "  \
    "r.code_version, r.error, array_to_json(r.corp_ids)::text, extract(epoch FROM "                \
    "r.scheduled_for), extract(epoch FROM r.created_at), extract(epoch FROM r.started_at), "       \
    "extract(epoch FROM r.heartbeat_at), extract(epoch FROM r.finished_at), extract(epoch FROM "   \
    "now())"
enum {
    RC_ID = 0,
    RC_ENV,
    RC_JOB,
    RC_TRIGGER,
    RC_STATE,
    RC_LEADER,
    RC_TOKEN,
    RC_ATTEMPT,
    RC_VERSION,
    RC_ERROR,
    RC_CORPS,
    RC_SCHEDULED,
    RC_CREATED,
    RC_STARTED,
    RC_HEARTBEAT,
    RC_FINISHED,
    RC_NOW,
    RC_N
};

#define PROGRESS_COLS                                                                              \
    "p.corp_id, p.state, p.departments_total, p.departments_done, p.users_upserted, "              \
    "p.users_deleted, p.requests, p.retries, p.errors, p.last_error, extract(epoch FROM "          \
    "p.started_at), extract(epoch FROM p.updated_at), extract(epoch FROM p.finished_at)"
enum {
    PC_CORP = 0,
    PC_STATE,
    PC_TOTAL,
    PC_DONE,
    PC_UPSERTED,
    PC_DELETED,
    PC_REQUESTS,
    PC_RETRIES,
    PC_ERRORS,
    PC_LAST_ERROR,
    PC_STARTED,
    PC_UPDATED,
    PC_FINISHED,
    PC_N
};

/* $3 NULL: the latest run. */
static const char run_sql[] =
    "WITH r AS (SELECT * FROM sync_runs WHERE env = $1 AND job = $2 AND ($3::bigint IS NULL OR "
    "run_id = $3::bigint) ORDER BY run_id DESC LIMIT 1) SELECT " RUN_COLS ", " PROGRESS_COLS
    " FROM r LEFT JOIN sync_progress p ON p.run_id = r.run_id ORDER BY p.corp_id";

/* The enterprise percent formula again, in SQL, for the list's aggregate. */
static const char list_sql[] =
    "SELECT " RUN_COLS ", a.n, a.pct FROM (SELECT * FROM sync_runs WHERE env = $1 AND job = $2 "
    "ORDER BY run_id DESC LIMIT $3::int) r LEFT JOIN LATERAL (SELECT count(*) AS n, avg(CASE WHEN "
    "p.state IN ('succeeded', 'failed') THEN 100 WHEN p.departments_total > 0 THEN least(99.9, "
    "floor(1000.0 * p.departments_done / p.departments_total) / 10) ELSE 0 END) AS pct FROM "
    "sync_progress p WHERE p.run_id = r.run_id) a ON true ORDER BY r.run_id DESC";

/* The enterprise's row in the latest run that has one; known = it exists at all. */
static const char progress_sql[] =
    "SELECT EXISTS (SELECT 1 FROM enterprises WHERE corp_id = $3) AS known, x.* FROM (SELECT 1) "
    "AS one LEFT JOIN LATERAL (SELECT r.run_id, r.state AS run_state, " PROGRESS_COLS
    ", extract(epoch FROM now()) FROM sync_runs r JOIN sync_progress p ON p.run_id = r.run_id "
    "WHERE r.env = $1 AND r.job = $2 AND p.corp_id = $3 ORDER BY r.run_id DESC LIMIT 1) x ON true";

static int run_finished(const char *state)
{
    return !strcmp(state, "succeeded") || !strcmp(state, "partial") || !strcmp(state, "failed");
}

static double col_d(const PGresult *r, int row, int col)
{
    const char *v = api_col(r, row, col);
    return v ? strtod(v, NULL) : NAN;
}

static double ent_percent(const PGresult *r, int row, int c0)
{
    const char *st = PQgetvalue(r, row, c0 + PC_STATE);
    long long total = api_col_ll(r, row, c0 + PC_TOTAL), done = api_col_ll(r, row, c0 + PC_DONE);
    if (!strcmp(st, "succeeded") || !strcmp(st, "failed"))
        return 100;
    if (total <= 0)
        return 0;
    double p = floor(1000.0 * (double)done / (double)total) / 10;
    return p > 99.9 ? 99.9 : p;
}

/* Writes eta_seconds: elapsed * left / done, rounded up; null without a rate. */
static void put_eta(jw *w, int finished, double started, double now, double done, double left)
{
    if (finished) {
        jw_kint(w, "eta_seconds", 0);
        return;
    }
    if (isnan(started) || isnan(now) || done <= 0 || now <= started) {
        jw_knull(w, "eta_seconds");
        return;
    }
    double eta = (now - started) * left / done;
    jw_kint(w, "eta_seconds", (long long)ceil(eta < 0 ? 0 : eta));
}

static void put_enterprise(jw *w, const PGresult *r, int row, int c0, double now)
{
    const char *st = PQgetvalue(r, row, c0 + PC_STATE);
    long long total = api_col_ll(r, row, c0 + PC_TOTAL), done = api_col_ll(r, row, c0 + PC_DONE);
    int fin = !strcmp(st, "succeeded") || !strcmp(st, "failed");

    jw_obj_begin(w);
    jw_kstr(w, "corp_id", PQgetvalue(r, row, c0 + PC_CORP));
    jw_kstr(w, "state", st);
    jw_kint(w, "departments_total", total);
    jw_kint(w, "departments_done", done);
    jw_kint(w, "users_upserted", api_col_ll(r, row, c0 + PC_UPSERTED));
    jw_kint(w, "users_deleted", api_col_ll(r, row, c0 + PC_DELETED));
    jw_kint(w, "requests", api_col_ll(r, row, c0 + PC_REQUESTS));
    jw_kint(w, "retries", api_col_ll(r, row, c0 + PC_RETRIES));
    jw_kint(w, "errors", api_col_ll(r, row, c0 + PC_ERRORS));
    jw_kstr(w, "last_error", api_col(r, row, c0 + PC_LAST_ERROR));
    jw_kdbl(w, "percent", ent_percent(r, row, c0));
    put_eta(w, fin, col_d(r, row, c0 + PC_STARTED), now, (double)done,
            total > done ? (double)(total - done) : 0);
    api_kepoch(w, "started_at", r, row, c0 + PC_STARTED);
    api_kepoch(w, "updated_at", r, row, c0 + PC_UPDATED);
    api_kepoch(w, "finished_at", r, row, c0 + PC_FINISHED);
    jw_obj_end(w);
}

/* The run's own fields (row 0 of a run query, or one row of the list). */
static void put_run_fields(jw *w, const PGresult *r, int row)
{
    jw_kint(w, "run_id", api_col_ll(r, row, RC_ID));
    jw_kstr(w, "env", api_col(r, row, RC_ENV));
    jw_kstr(w, "job", api_col(r, row, RC_JOB));
    jw_kstr(w, "trigger", api_col(r, row, RC_TRIGGER));
    jw_kstr(w, "state", api_col(r, row, RC_STATE));
    jw_kint(w, "attempt", api_col_ll(r, row, RC_ATTEMPT));
    jw_kstr(w, "leader_instance", api_col(r, row, RC_LEADER));
    api_kll_or_null(w, "fencing_token", r, row, RC_TOKEN);
    jw_kstr(w, "code_version", api_col(r, row, RC_VERSION));
    jw_key(w, "corp_ids");
    if (api_col(r, row, RC_CORPS))
        jw_raw(w, api_col(r, row, RC_CORPS));
    else
        jw_null(w);
    api_kepoch(w, "scheduled_for", r, row, RC_SCHEDULED);
    api_kepoch(w, "created_at", r, row, RC_CREATED);
    api_kepoch(w, "started_at", r, row, RC_STARTED);
    api_kepoch(w, "heartbeat_at", r, row, RC_HEARTBEAT);
    api_kepoch(w, "finished_at", r, row, RC_FINISHED);
    jw_kstr(w, "error", api_col(r, row, RC_ERROR));
}

/* percent and eta_seconds of a run from the mean enterprise percent. */
static void put_run_progress(jw *w, const PGresult *r, int row, double mean, int nent)
{
    const char *st = PQgetvalue(r, row, RC_STATE);
    int fin = run_finished(st);
    double pct = fin ? 100 : !strcmp(st, "pending") || nent == 0 ? 0 : floor(mean * 10 + 0.5) / 10;
    jw_kdbl(w, "percent", pct);
    put_eta(w, fin, col_d(r, row, RC_STARTED), col_d(r, row, RC_NOW), pct, 100 - pct);
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
    buf b;
    jw w;
    size_t len = 0;

    if (err) {
        api_pg_failed(e->a, "run", err);
        api_cache_error(e, 503, "database_unavailable", "could not query PostgreSQL");
        return;
    }
    if (PQntuples(res) == 0) {
        api_cache_error(e, 404, "not_found", e->run_id ? "no run with that id" : "no run yet");
        return;
    }
    int n = PQntuples(res), nent = 0;
    double sum = 0, now = col_d(res, 0, RC_NOW);
    for (int i = 0; i < n; i++) {
        if (PQgetisnull(res, i, RC_N + PC_CORP))
            continue; /* a run with no progress rows yet: one row of NULLs */
        sum += ent_percent(res, i, RC_N);
        nent++;
    }
    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    put_run_fields(&w, res, 0);
    put_run_progress(&w, res, 0, nent ? sum / nent : 0, nent);
    jw_kint(&w, "enterprises_total", nent);
    jw_key(&w, "enterprises");
    jw_arr_begin(&w);
    for (int i = 0; i < n; i++)
        if (!PQgetisnull(res, i, RC_N + PC_CORP))
            put_enterprise(&w, res, i, RC_N, now);
    jw_arr_end(&w);
    jw_obj_end(&w);
    char *body = detach(&b, &len);
    if (!body)
        api_cache_error(e, 503, "out_of_memory", "out of memory");
    else
        api_cache_done(e, 200, body, len);
}

static int fill_run(api *a, api_centry *e)
{
    char id[24];
    const char *p[] = {a->d.settings->env, API_JOB, NULL};
    if (e->run_id) {
        snprintf(id, sizeof id, "%lld", e->run_id);
        p[2] = id;
    }
    return api_pg_query(a, run_sql, 3, p, on_run, e);
}

static void init_run(api_centry *e, const void *arg)
{
    e->run_id = *(const long long *)arg;
}

static void on_run_latest(http_req *req, void *arg)
{
    long long id = 0;
    api_cached(arg, req, "run:latest", init_run, &id, fill_run);
}

static void on_run_id(http_req *req, void *arg)
{
    long long id;
    char key[48];
    if (api_parse_pos_ll(http_req_param(req, "run_id"), 999999999999999999LL, &id)) {
        http_reply_error(req, 400, "bad_request", "run_id must be a positive integer");
        return;
    }
    snprintf(key, sizeof key, "run:%lld", id);
    api_cached(arg, req, key, init_run, &id, fill_run);
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
    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_key(&w, "runs");
    jw_arr_begin(&w);
    for (int i = 0; i < PQntuples(res); i++) {
        int nent = (int)api_col_ll(res, i, RC_N);
        jw_obj_begin(&w);
        put_run_fields(&w, res, i);
        put_run_progress(&w, res, i, nent ? col_d(res, i, RC_N + 1) : 0, nent);
        jw_kint(&w, "enterprises_total", nent);
        jw_obj_end(&w);
    }
    jw_arr_end(&w);
    jw_obj_end(&w);
    char *body = detach(&b, &len);
    if (!body)
        api_cache_error(e, 503, "out_of_memory", "out of memory");
    else
        api_cache_done(e, 200, body, len);
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
    long long lim = 20;
    char key[32];
    if (ls && api_parse_pos_ll(ls, 100, &lim)) {
        http_reply_error(req, 400, "bad_request", "limit must be an integer from 1 to 100");
        return;
    }
    int l = (int)lim;
    snprintf(key, sizeof key, "runs:%d", l);
    api_cached(arg, req, key, init_list, &l, fill_list);
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
    /* columns: known, run_id, run_state, PROGRESS_COLS..., now */
    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kint(&w, "run_id", api_col_ll(res, 0, 1));
    jw_kstr(&w, "run_state", PQgetvalue(res, 0, 2));
    jw_key(&w, "enterprise");
    put_enterprise(&w, res, 0, 3, col_d(res, 0, 3 + PC_N));
    jw_obj_end(&w);
    char *body = detach(&b, &len);
    if (!body)
        api_cache_error(e, 503, "out_of_memory", "out of memory");
    else
        api_cache_done(e, 200, body, len);
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
    if (!api_valid_corp_id(corp)) {
        http_reply_error(req, 400, "bad_request", "corp_id must be 1-64 of [A-Za-z0-9_-]");
        return;
    }
    snprintf(key, sizeof key, "progress:%s", corp);
    api_cached(arg, req, key, init_progress, corp, fill_progress);
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
