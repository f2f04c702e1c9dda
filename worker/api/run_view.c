/* A run and its per-enterprise progress as JSON (SPEC §5 shapes): the one
 * definition of percent and ETA, used by the HTTP API, `orgsync status` and the
 * live display of `orgsync sync`.
 *
 * Percent and ETA (docs/API.md):
 *   enterprise percent: 100 once succeeded or failed; else departments_done /
 *     departments_total, floored to 0.1 and capped at 99.9 (deletions remain);
 *     0 while the total is unknown. Computed by PostgreSQL, in integer tenths,
 *     by ENT_TENTHS_SQL (run_view.h) and nowhere else.
 *   run percent: 100 once finished (succeeded, partial, failed), 0 while pending,
 *     else the mean of its enterprises' percents, rounded half up to 0.1 with
 *     integer arithmetic (run_view_percent), for the detail and the list alike.
 *   ETA: from this run's observed rate, measured with PostgreSQL's clock so every
 *     worker on every host computes the same figure: enterprise = elapsed since its
 *     start * (total - done) / done; run = elapsed since the run started *
 *     (100 - percent) / percent. 0 once finished, null when there is no rate yet. */
#include "worker/api/run_view.h"

#include "worker/api/api_shared.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* $3 NULL: the latest run. */
const char run_view_sql[] =
    "WITH r AS (SELECT * FROM sync_runs WHERE env = $1 AND job = $2 AND ($3::bigint IS NULL OR "
    "run_id = $3::bigint) ORDER BY run_id DESC LIMIT 1) SELECT " RUN_COLS ", " PROGRESS_COLS
    " FROM r LEFT JOIN sync_progress p ON p.run_id = r.run_id ORDER BY p.corp_id";

int run_view_finished(const char *state)
{
    return !strcmp(state, "succeeded") || !strcmp(state, "partial") || !strcmp(state, "failed");
}

double run_view_col_d(const PGresult *r, int row, int col)
{
    const char *v = api_col(r, row, col);
    return v ? strtod(v, NULL) : NAN;
}

double run_view_ent_percent(const PGresult *r, int row, int c0)
{
    return (double)api_col_ll(r, row, c0 + PC_TENTHS) / 10;
}

long long run_view_eta(int finished, double started, double now, double done, double left)
{
    if (finished)
        return 0;
    if (isnan(started) || isnan(now) || done <= 0 || now <= started)
        return -1;
    double eta = (now - started) * left / done;
    return (long long)ceil(eta < 0 ? 0 : eta);
}

long long run_view_ent_eta(const PGresult *r, int row, int c0, double now)
{
    const char *st = PQgetvalue(r, row, c0 + PC_STATE);
    long long total = api_col_ll(r, row, c0 + PC_TOTAL), done = api_col_ll(r, row, c0 + PC_DONE);
    int fin = !strcmp(st, "succeeded") || !strcmp(st, "failed");

    return run_view_eta(fin, run_view_col_d(r, row, c0 + PC_STARTED), now, (double)done,
                        total > done ? (double)(total - done) : 0);
}

static void put_eta_value(jw *w, long long eta)
{
    if (eta < 0)
        jw_knull(w, "eta_seconds");
    else
        jw_kint(w, "eta_seconds", eta);
}

/* Writes eta_seconds: elapsed * left / done, rounded up; null without a rate. */
void run_view_put_eta(jw *w, int finished, double started, double now, double done, double left)
{
    put_eta_value(w, run_view_eta(finished, started, now, done, left));
}

void run_view_put_enterprise(jw *w, const PGresult *r, int row, int c0, double now)
{
    const char *st = PQgetvalue(r, row, c0 + PC_STATE);
    long long total = api_col_ll(r, row, c0 + PC_TOTAL), done = api_col_ll(r, row, c0 + PC_DONE);
    long long eta = run_view_ent_eta(r, row, c0, now);

    jw_obj_begin(w);
    jw_kstr(w, "corp_id", PQgetvalue(r, row, c0 + PC_CORP));
    jw_kstr(w, "name", api_col(r, row, c0 + PC_NAME));
    jw_kstr(w, "state", st);
    jw_kint(w, "departments_total", total);
    jw_kint(w, "departments_done", done);
    jw_kint(w, "users_upserted", api_col_ll(r, row, c0 + PC_UPSERTED));
    jw_kint(w, "users_deleted", api_col_ll(r, row, c0 + PC_DELETED));
    jw_kint(w, "requests", api_col_ll(r, row, c0 + PC_REQUESTS));
    jw_kint(w, "retries", api_col_ll(r, row, c0 + PC_RETRIES));
    jw_kint(w, "errors", api_col_ll(r, row, c0 + PC_ERRORS));
    jw_kstr(w, "last_error", api_col(r, row, c0 + PC_LAST_ERROR));
    jw_kdbl(w, "percent", run_view_ent_percent(r, row, c0));
    put_eta_value(w, eta);
    api_kepoch(w, "started_at", r, row, c0 + PC_STARTED);
    api_kepoch(w, "updated_at", r, row, c0 + PC_UPDATED);
    api_kepoch(w, "finished_at", r, row, c0 + PC_FINISHED);
    jw_kstr(w, "api_mode", api_col(r, row, c0 + PC_API_MODE));
    jw_kstr(w, "api_mode_reason", api_col(r, row, c0 + PC_MODE_REASON));
    jw_kint(w, "roster_members", api_col_ll(r, row, c0 + PC_ROSTER_MEMBERS));
    jw_kbool(w, "roster_done",
             api_col(r, row, c0 + PC_ROSTER_DONE) &&
                 api_col(r, row, c0 + PC_ROSTER_DONE)[0] == 't');
    jw_key(w, "fields_missing");
    if (api_col(r, row, c0 + PC_FIELDS_MISSING))
        jw_raw(w, api_col(r, row, c0 + PC_FIELDS_MISSING));
    else
        jw_null(w);
    jw_kstr(w, "member_source", api_col(r, row, c0 + PC_MEMBER_SOURCE));
    jw_kstr(w, "member_source_reason", api_col(r, row, c0 + PC_SOURCE_REASON));
    /* {"jobid", "state", "job_status", "polls", "files", "files_done", "members",
     * "error", "phase": "export: waiting for job N", ...} or null. */
    jw_key(w, "export");
    if (api_col(r, row, c0 + PC_EXPORT))
        jw_raw(w, api_col(r, row, c0 + PC_EXPORT));
    else
        jw_null(w);
    jw_obj_end(w);
}

/* The run's own fields (row 0 of a run query, or one row of the list). */
void run_view_put_fields(jw *w, const PGresult *r, int row)
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
    jw_kint(w, "revision", api_col_ll(r, row, RC_REVISION));
}

double run_view_percent(const char *state, long long sum_tenths, int nent)
{
    if (run_view_finished(state))
        return 100;
    if (!strcmp(state, "pending") || nent <= 0 || sum_tenths <= 0)
        return 0;
    /* floor(sum / nent + 1/2), in tenths; 99.9 at most until the run is over */
    long long t = (2 * sum_tenths + nent) / (2LL * nent);
    return (double)(t > 999 ? 999 : t) / 10;
}

/* percent and eta_seconds of a run from its enterprises' percents. */
void run_view_put_progress(jw *w, const PGresult *r, int row, long long sum_tenths, int nent)
{
    const char *st = PQgetvalue(r, row, RC_STATE);
    double pct = run_view_percent(st, sum_tenths, nent);
    jw_kdbl(w, "percent", pct);
    run_view_put_eta(w, run_view_finished(st), run_view_col_d(r, row, RC_STARTED),
                     run_view_col_d(r, row, RC_NOW), pct, 100 - pct);
}

/* The sum of the enterprise percents (tenths) of a run_view_sql result; *nent
 * of them. */
static long long ent_sum(const PGresult *res, int *nent)
{
    int n = PQntuples(res);
    long long sum = 0;

    *nent = 0;
    for (int i = 0; i < n; i++) {
        if (PQgetisnull(res, i, RC_N + PC_CORP))
            continue; /* a run with no progress rows yet: one row of NULLs */
        sum += api_col_ll(res, i, RC_N + PC_TENTHS);
        (*nent)++;
    }
    return sum;
}

void run_view_run_progress(const PGresult *res, double *percent, long long *eta)
{
    const char *st = PQgetvalue(res, 0, RC_STATE);
    int nent;
    long long sum = ent_sum(res, &nent);

    *percent = run_view_percent(st, sum, nent);
    *eta = run_view_eta(run_view_finished(st), run_view_col_d(res, 0, RC_STARTED),
                        run_view_col_d(res, 0, RC_NOW), *percent, 100 - *percent);
}

/* Builds the run object from a run_view_sql result with at least one row. */
char *run_view_json(const PGresult *res, size_t *len)
{
    int n = PQntuples(res), nent;
    long long sum = ent_sum(res, &nent);
    double now = run_view_col_d(res, 0, RC_NOW);
    char *body;
    buf b;
    jw w;

    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    run_view_put_fields(&w, res, 0);
    run_view_put_progress(&w, res, 0, sum, nent);
    jw_kint(&w, "enterprises_total", nent);
    jw_key(&w, "enterprises");
    jw_arr_begin(&w);
    for (int i = 0; i < n; i++)
        if (!PQgetisnull(res, i, RC_N + PC_CORP))
            run_view_put_enterprise(&w, res, i, RC_N, now);
    jw_arr_end(&w);
    jw_obj_end(&w);
    body = b.oom ? NULL : buf_detach(&b, len);
    buf_free(&b);
    return body;
}
