/* The callback-apply job (see callback_apply.h): poll the inbox, coalesce,
 * fetch again upstream, write through fenced statements. */
#include "worker/sync/callback_apply.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "common/alert.h"
#include "common/buf.h"
#include "common/digests_sql.h"
#include "common/log.h"
#include "common/metrics.h"
#include "coordinator/fence.h"
#include "worker/wecom/wecom.h"

#define M_INBOX_DEPTH "orgsync_callback_inbox_depth"
#define M_LAG "orgsync_callback_lag_seconds"
#define M_APPLY_SECONDS "orgsync_callback_apply_seconds"
#define M_APPLIED "orgsync_callback_events_applied_total"
#define RETRY_PAUSE_MS 1000

typedef struct ap_job ap_job;

/* What one fetch covers: a member or a department of one enterprise, and the
 * pending events that named it. */
typedef struct ap_task {
    ap_job *j;
    char corp[72];
    char kind[12]; /* user, department, tag, ignore */
    char target[72];
    buf ids; /* "{1,2,3}" */
    int nids;
    char *dept_json; /* department: its department/list object */
    char why[200];   /* ignore: why */
} ap_task;

struct ap_job {
    job_run *run;
    wecom *wc;
    uv_timer_t timer;
    char token[24];
    int stopping;
    int end_called;
    int inflight; /* tasks and queries not yet back */
    int batch_full;
    int batch_failed;
    int lag_alerted;
    unsigned long ticks;
    char stop_reason[160];
};

static void tick(uv_timer_t *t);
static void end_check(ap_job *j);

static int gate(void *arg)
{
    ap_job *j = arg;
    return !j->stopping && (!j->run->lease_valid || j->run->lease_valid(j->run));
}

static void on_alert(void *arg, const char *kind, const char *corp_id, const char *message)
{
    ap_job *j = arg;
    alert_raise(kind, message, corp_id, j->run->run_id);
}

static void job_stop(ap_job *j, const char *reason)
{
    if (j->stopping)
        return;
    j->stopping = 1;
    snprintf(j->stop_reason, sizeof j->stop_reason, "%s", reason ? reason : "stopped");
    log_warn("callback apply: stopping", LF_I("run_id", j->run->run_id),
             LF_S("reason", j->stop_reason));
    uv_timer_stop(&j->timer);
    end_check(j);
}

/* ---- the end ---- */

static void on_timer_closed(uv_handle_t *h)
{
    ap_job *j = h->data;
    job_run *run = j->run;
    char reason[160];

    snprintf(reason, sizeof reason, "%s", j->stop_reason);
    free(j);
    run->job_state = NULL;
    run->finished(run, NULL, reason);
}

static void end_check(ap_job *j)
{
    if (!j->stopping || j->end_called)
        return;
    if (j->wc) {
        wecom *wc = j->wc;
        j->wc = NULL;
        wecom_close(wc, NULL, NULL); /* queued fetches come back STOPPED, right here */
        if (j->end_called)
            return;
    }
    if (j->inflight > 0)
        return;
    j->end_called = 1;
    uv_close((uv_handle_t *)&j->timer, on_timer_closed);
}

/* ---- one batch ---- */

static void batch_done_one(ap_job *j)
{
    if (--j->inflight > 0)
        return;
    if (j->stopping) {
        end_check(j);
        return;
    }
    uv_timer_start(&j->timer, tick,
                   j->batch_failed ? RETRY_PAUSE_MS
                   : j->batch_full ? 0
                                   : APPLY_POLL_MS,
                   0);
}

static void task_free(ap_task *t)
{
    buf_free(&t->ids);
    free(t->dept_json);
    free(t);
}

/* Writes a task's outcome. One fenced statement: the members ($4, a JSON
 * array of user/get or user/list objects) and the department ($6) upserted,
 * or the member ($7) or department ($8) marked deleted, and the events ($10)
 * marked applied with outcome $9 (or, with $11 true, only their attempts
 * counted, applied once they reach APPLY_MAX_ATTEMPTS). Returns whether the
 * fence held, and the applied events' store-to-row latencies. */
/* (clang-format would indent the SQL after DIGESTS_INVALIDATE) */
/* clang-format off */
static const char write_sql[] =
    "WITH " FENCE_CTE ", "
    "src AS (SELECT j FROM jsonb_array_elements(coalesce($4::jsonb, '[]')) j "
    "  WHERE EXISTS (SELECT 1 FROM fence) AND jsonb_typeof(j->'userid') = 'string'), "
    "up AS (INSERT INTO users AS t (corp_id, userid, name, mobile, email, position, status, "
    "  department, main_department, raw, synced_at, deleted_at) "
    "  SELECT $5, j->>'userid', j->>'name', j->>'mobile', j->>'email', j->>'position', "
    "  (j->>'status')::int, CASE WHEN jsonb_typeof(j->'department') = 'array' THEN "
    "  ARRAY(SELECT jsonb_array_elements_text(j->'department')::int) ELSE '{}' END, "
    "  (j->>'main_department')::int, j, now(), NULL FROM src "
    "  ON CONFLICT (corp_id, userid) DO UPDATE SET name = EXCLUDED.name, "
    "  mobile = CASE WHEN EXCLUDED.raw ? 'mobile' THEN EXCLUDED.mobile ELSE t.mobile END, "
    "  email = CASE WHEN EXCLUDED.raw ? 'email' THEN EXCLUDED.email ELSE t.email END, "
    "  position = EXCLUDED.position, status = EXCLUDED.status, department = EXCLUDED.department, "
    "  main_department = EXCLUDED.main_department, raw = EXCLUDED.raw, synced_at = now(), "
    /* not the sync's write (sql/008: users_unsynced) */
    "  sync_run_id = NULL, deleted_at = NULL RETURNING userid, department), "
    /* the digests of the departments the members were and are in (sql/008) */
    DIGESTS_INVALIDATE("SELECT $5, unnest(department), userid FROM up UNION SELECT $5, "
                       "unnest(o.department), o.userid FROM users o WHERE o.corp_id = $5 "
                       "AND (o.userid = $7 OR o.userid IN (SELECT j->>'userid' FROM src))",
                       "EXISTS (SELECT 1 FROM fence)") ", "
    "dep AS (INSERT INTO departments AS d (corp_id, dept_id, name, parent_id, \"order\", "
    "  synced_at, deleted_at) SELECT $5, ($6::jsonb->>'id')::bigint, $6::jsonb->>'name', "
    "  ($6::jsonb->>'parentid')::bigint, ($6::jsonb->>'order')::bigint, now(), NULL "
    "  WHERE $6::jsonb IS NOT NULL AND EXISTS (SELECT 1 FROM fence) "
    "  ON CONFLICT (corp_id, dept_id) DO UPDATE SET name = EXCLUDED.name, parent_id = "
    "  EXCLUDED.parent_id, \"order\" = EXCLUDED.\"order\", synced_at = now(), deleted_at = NULL "
    "  RETURNING 1), "
    "du AS (UPDATE users SET deleted_at = now() WHERE corp_id = $5 AND userid = $7 "
    "  AND deleted_at IS NULL AND EXISTS (SELECT 1 FROM fence) RETURNING 1), "
    "dd AS (UPDATE departments SET deleted_at = now() WHERE corp_id = $5 AND dept_id = $8::bigint "
    "  AND deleted_at IS NULL AND EXISTS (SELECT 1 FROM fence) RETURNING 1), "
    "ev AS (UPDATE callback_inbox SET attempts = attempts + 1, outcome = $9, "
    "  applied_at = CASE WHEN NOT $11::boolean OR attempts + 1 >= " /* */
    "  %d THEN clock_timestamp() END WHERE event_id = ANY ($10::bigint[]) AND applied_at IS NULL "
    "  AND EXISTS (SELECT 1 FROM fence) RETURNING received_at, applied_at) "
    "SELECT EXISTS (SELECT 1 FROM fence), (SELECT count(*) FROM up), "
    "  (SELECT string_agg(extract(epoch FROM applied_at - received_at)::text, ',') FROM ev "
    "   WHERE applied_at IS NOT NULL)";
/* clang-format on */

static char write_sql_text[sizeof(write_sql) + 16];

static void on_written(void *arg, PGresult *res, const char *err)
{
    ap_task *t = arg;
    ap_job *j = t->j;

    if (err) {
        log_warn("callback apply: write failed", LF_S("corp_id", t->corp), LF_S("error", err));
        j->batch_failed = 1;
    } else if (PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] != 't') {
        log_warn("callback apply: fenced out", LF_I("run_id", j->run->run_id));
        if (j->run->fenced_out)
            j->run->fenced_out(j->run);
        job_stop(j, "fenced out");
    } else if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 2)) {
        const char *p = PQgetvalue(res, 0, 2);
        while (*p) {
            char *end;
            double s = strtod(p, &end);
            if (end == p)
                break;
            metrics_observe(M_APPLY_SECONDS, NULL, s);
            p = *end == ',' ? end + 1 : end;
        }
    }
    task_free(t);
    batch_done_one(j);
}

/* outcome: "upserted", "deleted", "ignored: ...", "failed: ..."; retry 1 keeps
 * the events pending (until their last attempt). */
static void write_task(ap_task *t, const char *members, const char *dept, const char *del_user,
                       const char *del_dept, const char *outcome, int retry)
{
    ap_job *j = t->j;
    const char *p[11];
    char labels[64];

    if (j->stopping || !gate(j)) {
        task_free(t);
        batch_done_one(j);
        return;
    }
    if (retry)
        j->batch_failed = 1;
    p[0] = j->run->env;
    p[1] = j->run->job;
    p[2] = j->token;
    p[3] = members;
    p[4] = t->corp;
    p[5] = dept;
    p[6] = del_user;
    p[7] = del_dept;
    p[8] = outcome;
    p[9] = t->ids.data;
    p[10] = retry ? "t" : "f";
    snprintf(labels, sizeof labels, "outcome=\"%.*s\"", (int)strcspn(outcome, ":"), outcome);
    metrics_counter_add(M_APPLIED, labels, t->nids);
    if (pg_query(j->run->pg, write_sql_text, 11, p, on_written, t) != 0) {
        j->batch_failed = 1;
        task_free(t);
        batch_done_one(j);
    }
}

static int not_found(const wecom_result *r, int code1, int code2)
{
    return r->status == WECOM_E_ERRCODE && (r->errcode == code1 || r->errcode == code2);
}

static void fetch_failed(ap_task *t, const char *api, const wecom_result *r)
{
    char outcome[240];
    snprintf(outcome, sizeof outcome, "failed: %s: %.200s", api,
             r->error ? r->error : wecom_status_name(r->status));
    log_warn("callback apply: fetch failed", LF_S("corp_id", t->corp), LF_S("api", api),
             LF_S("target", t->target), LF_S("error", outcome));
    write_task(t, NULL, NULL, NULL, NULL, outcome, 1);
}

static void on_user_get(void *arg, const wecom_result *r)
{
    ap_task *t = arg;
    char *arr;
    const char *o;

    if (r->status == WECOM_OK) {
        o = json_object_to_json_string_ext(r->json, JSON_C_TO_STRING_PLAIN);
        arr = malloc(strlen(o) + 3);
        if (!arr) {
            fetch_failed(t, "user/get",
                         &(wecom_result){.status = WECOM_E_MALFORMED, .error = "out of memory"});
            return;
        }
        sprintf(arr, "[%s]", o);
        write_task(t, arr, NULL, NULL, NULL, "upserted", 0);
        free(arr);
        return;
    }
    if (not_found(r, 60111, 46004)) { /* confirmed upstream: the member is gone */
        write_task(t, NULL, NULL, t->target, NULL, "deleted", 0);
        return;
    }
    fetch_failed(t, "user/get", r);
}

static void on_dept_users(void *arg, const wecom_result *r)
{
    ap_task *t = arg;
    json_object *list;
    char *dept;

    if (r->status != WECOM_OK) {
        if (not_found(r, 60003, 60003)) {
            write_task(t, NULL, NULL, NULL, t->target, "deleted", 0);
            return;
        }
        fetch_failed(t, "user/list", r);
        return;
    }
    dept = t->dept_json;
    t->dept_json = NULL;
    if (!json_object_object_get_ex(r->json, "userlist", &list) ||
        !json_object_is_type(list, json_type_array))
        write_task(t, "[]", dept, NULL, NULL, "upserted", 0);
    else
        write_task(t, json_object_to_json_string_ext(list, JSON_C_TO_STRING_PLAIN), dept, NULL,
                   NULL, "upserted", 0);
    free(dept);
}

static void on_dept_list(void *arg, const wecom_result *r)
{
    ap_task *t = arg;
    json_object *arr, *d, *id;
    long long want = strtoll(t->target, NULL, 10);
    int rc;

    if (not_found(r, 60003, 60003)) { /* confirmed upstream: the department is gone */
        write_task(t, NULL, NULL, NULL, t->target, "deleted", 0);
        return;
    }
    if (r->status != WECOM_OK) {
        fetch_failed(t, "department/list", r);
        return;
    }
    if (json_object_object_get_ex(r->json, "department", &arr) &&
        json_object_is_type(arr, json_type_array))
        for (size_t i = 0; i < json_object_array_length(arr); i++) {
            d = json_object_array_get_idx(arr, i);
            if (json_object_object_get_ex(d, "id", &id) && json_object_get_int64(id) == want) {
                t->dept_json = strdup(json_object_to_json_string_ext(d, JSON_C_TO_STRING_PLAIN));
                break;
            }
        }
    if (!t->dept_json) {
        fetch_failed(t, "department/list",
                     &(wecom_result){.status = WECOM_E_MALFORMED,
                                     .error = "department/list did not list the department"});
        return;
    }
    if (t->j->stopping || !t->j->wc) {
        ap_job *j = t->j;
        task_free(t);
        batch_done_one(j);
        return;
    }
    rc = wecom_user_list(t->j->wc, t->corp, want, on_dept_users, t);
    if (rc)
        fetch_failed(t, "user/list",
                     &(wecom_result){.status = WECOM_E_STOPPED, .error = "could not queue"});
}

static void start_task(ap_task *t)
{
    ap_job *j = t->j;
    int rc;

    if (!strcmp(t->kind, "ignore")) {
        write_task(t, NULL, NULL, NULL, NULL, t->why, 0);
        return;
    }
    if (!strcmp(t->kind, "tag")) {
        write_task(t, NULL, NULL, NULL, NULL, "ignored: tags are not mirrored", 0);
        return;
    }
    if (!strcmp(t->kind, "user"))
        rc = wecom_user_get(j->wc, t->corp, t->target, on_user_get, t);
    else
        rc = wecom_department_list(j->wc, t->corp, strtoll(t->target, NULL, 10), on_dept_list, t);
    if (rc)
        fetch_failed(
            t, "queue",
            &(wecom_result){.status = WECOM_E_STOPPED, .error = "could not queue the request"});
}

/* Columns: event_id, corp_id, kind, target, new_target, secret (NULL: unknown
 * or disabled enterprise), depth, lag seconds. Ordered so that one target's
 * events are next to each other. */
static const char batch_sql[] =
    "SELECT i.event_id, i.corp_id, i.kind, i.target, coalesce(i.new_target, ''), "
    "  CASE WHEN e.enabled THEN e.corp_secret END, count(*) OVER (), "
    "  extract(epoch FROM clock_timestamp() - min(i.received_at) OVER ()) "
    "FROM (SELECT * FROM callback_inbox WHERE applied_at IS NULL ORDER BY event_id LIMIT $1) i "
    "LEFT JOIN enterprises e ON e.corp_id = i.corp_id ORDER BY i.corp_id, i.kind, i.target, "
    "i.event_id";

static ap_task *task_new(ap_job *j, const char *corp, const char *kind, const char *target)
{
    ap_task *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->j = j;
    snprintf(t->corp, sizeof t->corp, "%s", corp);
    snprintf(t->kind, sizeof t->kind, "%s", kind);
    snprintf(t->target, sizeof t->target, "%s", target);
    buf_init(&t->ids);
    return t;
}

static void note_lag(ap_job *j, double depth, double lag)
{
    char msg[160];
    metrics_gauge_set(M_INBOX_DEPTH, NULL, depth);
    metrics_gauge_set(M_LAG, NULL, lag);
    int limit = j->run->settings->callback_lag_alert_s > 0 ? j->run->settings->callback_lag_alert_s
                                                           : APPLY_LAG_ALERT_S;
    if (lag > limit && !j->lag_alerted) {
        j->lag_alerted = 1;
        snprintf(msg, sizeof msg,
                 "the oldest pending change callback is %.0f s old (threshold %d s), %.0f waiting",
                 lag, limit, depth);
        alert_raise("callback_lag", msg, NULL, j->run->run_id);
    } else if (lag <= limit) {
        j->lag_alerted = 0;
    }
}

static void on_batch(void *arg, PGresult *res, const char *err)
{
    ap_job *j = arg;
    ap_task *t = NULL;
    ap_task **list = NULL;
    int n = err ? 0 : PQntuples(res), nt = 0;

    if (err) {
        log_warn("callback apply: cannot read the inbox", LF_S("error", err));
        j->batch_failed = 1;
    }
    if (n > 0 && !j->stopping) {
        note_lag(j, strtod(PQgetvalue(res, 0, 6), NULL), strtod(PQgetvalue(res, 0, 7), NULL));
        list = calloc((size_t)n * 2, sizeof(*list));
    } else if (!err && !j->stopping) {
        note_lag(j, 0, 0);
    }
    j->batch_full = n >= APPLY_BATCH;
    for (int i = 0; list && i < n; i++) {
        const char *id = PQgetvalue(res, i, 0), *corp = PQgetvalue(res, i, 1);
        const char *kind = PQgetvalue(res, i, 2), *target = PQgetvalue(res, i, 3);
        const char *newt = PQgetvalue(res, i, 4);
        int known = !PQgetisnull(res, i, 5);
        const char *k = known ? kind : "ignore";

        if (known && wecom_corp_set(j->wc, corp, PQgetvalue(res, i, 5)) != 0)
            k = "ignore";
        if (!t || strcmp(t->corp, corp) || strcmp(t->kind, k) || strcmp(t->target, target)) {
            t = task_new(j, corp, k, target);
            if (!t)
                break;
            if (!known)
                snprintf(t->why, sizeof t->why, "ignored: unknown or disabled enterprise");
            else if (strcmp(k, kind))
                snprintf(t->why, sizeof t->why, "ignored: bad secret");
            buf_puts(&t->ids, "{");
            list[nt++] = t;
        }
        buf_printf(&t->ids, "%s%s", t->nids++ ? "," : "", id);
        /* A changed userid: the new one is fetched too (the old one then answers
         * not found and is marked deleted). */
        if (newt[0] && strcmp(newt, target) && !strcmp(k, "user")) {
            ap_task *t2 = task_new(j, corp, "user", newt);
            if (t2) {
                buf_printf(&t2->ids, "{%s", id);
                t2->nids = 1;
                list[nt++] = t2;
            }
        }
    }
    for (int i = 0; i < nt; i++)
        buf_puts(&list[i]->ids, "}");
    if (nt > 0)
        log_debug("callback apply: batch", LF_I("events", n), LF_I("fetches", nt));
    j->inflight += nt;
    for (int i = 0; i < nt; i++) {
        if (list[i]->ids.oom) {
            task_free(list[i]);
            batch_done_one(j);
            continue;
        }
        start_task(list[i]);
    }
    free(list);
    batch_done_one(j); /* the batch query itself */
}

/* Applied events are kept APPLY_KEEP_DAYS (far beyond the route's 300 s replay
 * window), then removed, 1000 at a time, by the leader (fenced). */
#define APPLY_KEEP_DAYS 7
#define PRUNE_EVERY_TICKS 300
static const char prune_sql[] =
    "WITH " FENCE_CTE " DELETE FROM callback_inbox WHERE event_id IN (SELECT event_id FROM "
    "callback_inbox WHERE applied_at < now() - interval '7 days' AND EXISTS (SELECT 1 FROM fence) "
    "ORDER BY event_id LIMIT 1000)";

static void on_pruned(void *arg, PGresult *res, const char *err)
{
    ap_job *j = arg;
    if (err)
        log_warn("callback apply: pruning applied events failed", LF_S("error", err));
    else if (atoi(PQcmdTuples(res)) > 0)
        log_info("callback apply: pruned applied events", LF_S("rows", PQcmdTuples(res)),
                 LF_I("older_than_days", APPLY_KEEP_DAYS));
    batch_done_one(j);
}

static void tick(uv_timer_t *timer)
{
    ap_job *j = timer->data;
    const char *p[1];
    char lim[16];

    if (j->stopping)
        return;
    if (!gate(j)) {
        job_stop(j, "lease not valid");
        return;
    }
    j->batch_failed = 0;
    if (++j->ticks % PRUNE_EVERY_TICKS == 1) {
        const char *pp[3] = {j->run->env, j->run->job, j->token};
        j->inflight++;
        if (pg_query(j->run->pg, prune_sql, 3, pp, on_pruned, j) != 0)
            j->inflight--;
    }
    snprintf(lim, sizeof lim, "%d", APPLY_BATCH);
    p[0] = lim;
    j->inflight++;
    if (pg_query(j->run->pg, batch_sql, 1, p, on_batch, j) != 0) {
        j->batch_failed = 1;
        batch_done_one(j);
    }
}

/* ---- job_ops ---- */

static void describe(void)
{
    metrics_describe(M_INBOX_DEPTH, METRIC_GAUGE,
                     "Change callbacks stored and not applied yet (seen by the applying leader)");
    metrics_describe(M_LAG, METRIC_GAUGE, "Age of the oldest pending change callback, seconds");
    metrics_describe(M_APPLY_SECONDS, METRIC_HISTOGRAM,
                     "Change callbacks: seconds from stored in the inbox to its row written");
    metrics_describe(M_APPLIED, METRIC_COUNTER, "Change callbacks applied, by outcome");
}

static int ap_start(job_run *run)
{
    const settings *s = run->settings;
    ap_job *j;

    if (!run || !run->loop || !run->pg || !run->redis || !run->http || !run->finished || !s)
        return -EINVAL;
    if (!write_sql_text[0])
        snprintf(write_sql_text, sizeof write_sql_text, write_sql, APPLY_MAX_ATTEMPTS);
    j = calloc(1, sizeof(*j));
    if (!j)
        return -ENOMEM;
    j->run = run;
    snprintf(j->token, sizeof j->token, "%lld", run->fencing_token);
    j->wc = wecom_new(run->loop, run->http, run->redis,
                      &(wecom_opts){.base_url = s->upstream_url,
                                    .env = run->env,
                                    .instance = s->instance,
                                    .rate = s->dept_rate,
                                    .max_inflight = s->upstream_max_inflight,
                                    .daily_quota = s->daily_quota,
                                    .egress_id = s->egress_id,
                                    .egress_per_min = s->egress_max_per_min,
                                    .egress_per_hour = s->egress_max_per_hour,
                                    .gate = gate,
                                    .gate_arg = j,
                                    .alert = on_alert,
                                    .alert_arg = j});
    if (!j->wc) {
        free(j);
        return -ENOMEM;
    }
    metrics_init();
    describe();
    uv_timer_init(run->loop, &j->timer);
    j->timer.data = j;
    run->job_state = j;
    log_info("callback apply: started", LF_I("run_id", run->run_id), LF_I("attempt", run->attempt),
             LF_I("fencing_token", run->fencing_token));
    uv_timer_start(&j->timer, tick, 0, 0);
    return 0;
}

static void ap_stop(job_run *run, const char *reason)
{
    ap_job *j = run ? run->job_state : NULL;
    if (j)
        job_stop(j, reason ? reason : "stopped");
}

const job_ops callback_apply_ops = {CALLBACK_APPLY_JOB, ap_start, ap_stop};
