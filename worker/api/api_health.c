/* GET /healthz, /readyz, /metrics and /v1/leader: the process, its
 * dependencies, its counters, and who leads. */
#include "worker/api/api_routes.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/metrics.h"
#include "common/metrics_host.h"
#include "common/proc_metrics.h"
#include "common/timeutil.h"
#include "version.h"
#include "coordinator/leader.h"
#include "coordinator/lock.h"
#include "worker/wecom/wecom.h"

/* ---- /healthz ---- */

static void on_healthz(http_req *req, void *arg)
{
    (void)arg;
    http_reply_json(req, 200, "{\"status\":\"ok\"}");
}

/* ---- /readyz: both checks run at once; the answer waits for both ----
 *
 * Ready means this worker can answer reads, which need PostgreSQL only: Redis
 * down is reported (the "redis" field, "degraded") but not fatal. 503 when
 * PostgreSQL does not answer, and while the worker drains before it stops. */

typedef struct ready_op {
    api *a;
    http_req *req;
    int left;
    char pg[128], redis[128]; /* "ok" or why not */
} ready_op;

static void ready_finish(ready_op *op)
{
    if (--op->left > 0)
        return;
    if (api_unref(op->a)) {
        buf b;
        jw w;
        int pg_ok = !strcmp(op->pg, "ok"), redis_ok = !strcmp(op->redis, "ok");
        char msg[300];
        buf_init(&b);
        jw_init(&w, &b);
        jw_obj_begin(&w);
        if (pg_ok) {
            jw_kstr(&w, "status", "ready");
        } else {
            snprintf(msg, sizeof msg, "postgres: %s%s%s", op->pg,
                     redis_ok ? "" : "; redis: ", redis_ok ? "" : op->redis);
            jw_key(&w, "error");
            jw_obj_begin(&w);
            jw_kstr(&w, "code", "dependency_down");
            jw_kstr(&w, "message", msg);
            jw_obj_end(&w);
        }
        jw_kstr(&w, "postgres", op->pg);
        jw_kstr(&w, "redis", op->redis);
        /* reads are served, but what needs Redis (the leader lock and lookup,
         * the realtime lookup's shared caches) is not */
        jw_kbool(&w, "degraded", !redis_ok);
        jw_kbool(&w, "draining", 0);
        jw_obj_end(&w);
        api_reply_json(op->req, pg_ok ? 200 : 503, &b);
    }
    free(op);
}

static void on_ready_pg(void *arg, PGresult *res, const char *err)
{
    ready_op *op = arg;
    (void)res;
    snprintf(op->pg, sizeof op->pg, "%s", err ? err : "ok");
    if (err)
        metrics_counter_add(M_PG_ERRORS, "source=\"api\"", 1);
    ready_finish(op);
}

static void on_ready_redis(void *arg, redisReply *reply, const char *err)
{
    ready_op *op = arg;
    (void)reply;
    snprintf(op->redis, sizeof op->redis, "%s", err ? err : "ok");
    if (err)
        metrics_counter_add(M_REDIS_ERRORS, "source=\"api\"", 1);
    ready_finish(op);
}

static void on_readyz(http_req *req, void *arg)
{
    api *a = arg;
    ready_op *op;

    if (a->d.draining && *a->d.draining) {
        static const char body[] =
            "{\"error\":{\"code\":\"draining\",\"message\":\"shutting down\"},"
            "\"status\":\"draining\",\"draining\":true}";
        http_reply(req, 503, "application/json", body, sizeof body - 1);
        return;
    }
    op = calloc(1, sizeof(*op));
    if (!op) {
        http_reply_error(req, 503, "out_of_memory", "out of memory");
        return;
    }
    op->a = a;
    op->req = req;
    op->left = 2;
    api_ref(a);
    /* a pool with no live connection would queue the probe until its timeout:
     * say so at once instead */
    if (!pg_pool_ready(a->d.pg) || pg_query(a->d.pg, "SELECT 1", 0, NULL, on_ready_pg, op)) {
        snprintf(op->pg, sizeof op->pg, "not connected");
        op->left--;
    }
    if (!redis_connected(a->d.redis) || redis_cmd(a->d.redis, on_ready_redis, op, "PING")) {
        snprintf(op->redis, sizeof op->redis, "not connected");
        op->left--;
    }
    if (op->left == 0) {
        op->left = 1;
        ready_finish(op);
    }
}

/* ---- /metrics: the host's aggregate (common/metrics_host.h) ----
 *
 * Each worker refreshes the series it copies from its clients' statistics and
 * from /proc (api_metrics_refresh, also called every second by serve.c) and
 * publishes them; the worker that answers adds what is environment-wide, read
 * from PostgreSQL at scrape time so that every worker and every host says the
 * same: runs by state, the last success overall and per enabled enterprise,
 * and the build. */

typedef struct metrics_op {
    api *a;
    http_req *req;
} metrics_op;

/* A Prometheus label value: \, " and newline escaped. */
static void label_value(const char *in, char *out, size_t cap)
{
    size_t n = 0;
    for (const char *p = in ? in : ""; *p && n + 3 < cap; p++) {
        if (*p == '\\' || *p == '"') {
            out[n++] = '\\';
            out[n++] = *p;
        } else if (*p == '\n') {
            out[n++] = '\\';
            out[n++] = 'n';
        } else {
            out[n++] = *p;
        }
    }
    out[n] = '\0';
}

/* snprintf that says when the text did not fit (the sample is then left out:
 * a cut label would not parse). 0 or -1. */
__attribute__((format(printf, 3, 4))) static int fmt(char *out, size_t cap, const char *f, ...)
{
    va_list ap;
    int n;
    va_start(ap, f);
    n = vsnprintf(out, cap, f, ap);
    va_end(ap);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

/* env="...",orgsync_job="directory-sync" */
static void env_labels(const api *a, char *out, size_t cap)
{
    char env[sizeof(a->d.settings->env) * 2];
    label_value(a->d.settings->env, env, sizeof env);
    snprintf(out, cap, "env=\"%s\",orgsync_job=\"%s\"", env, API_JOB);
}

void api_metrics_refresh(api *a)
{
    pg_stats ps;
    redis_stats rs;
    lock_stats ls;
    char labels[METRICS_MAX_LABELS];
    char inst[128]; /* a longer name is cut (at a character, never inside an escape) */

    if (!a || a->closing)
        return;
    pg_pool_stats(a->d.pg, &ps);
    redis_get_stats(a->d.redis, &rs);
    metrics_counter_set(M_PG_ERRORS, "source=\"pool\"", (double)ps.errors);
    metrics_counter_set("orgsync_pg_timeouts_total", NULL, (double)ps.timeouts);
    metrics_counter_set("orgsync_pg_reconnects_total", NULL, (double)ps.reconnects);
    metrics_counter_set(M_REDIS_ERRORS, "source=\"client\"", (double)rs.errors);
    metrics_counter_set("orgsync_redis_timeouts_total", NULL, (double)rs.timeouts);
    metrics_counter_set("orgsync_redis_reconnects_total", NULL, (double)rs.reconnects);
    metrics_gauge_set("orgsync_http_connections", NULL, http_server_conn_count(a->srv));
    if (a->d.wecom) {
        /* process totals kept by the upstream client; the per-API, per-errcode
         * series (M_UPSTREAM_REQUESTS) are for the client itself to add */
        wecom_stats ws;
        wecom_get_stats(a->d.wecom, &ws);
        metrics_counter_set("orgsync_upstream_calls_total", NULL, (double)ws.requests);
        metrics_counter_set(M_RETRIES, "source=\"wecom\"", (double)ws.retries);
        metrics_counter_set("orgsync_upstream_token_refreshes_total", NULL,
                            (double)ws.token_refreshes);
        metrics_counter_set("orgsync_upstream_bans_total", NULL, (double)ws.bans);
        metrics_gauge_set("orgsync_upstream_inflight", NULL, (double)ws.inflight);
    }
    /* the aggregate adds worker="<id>" */
    label_value(a->d.settings->instance, inst, sizeof inst);
    if (fmt(labels, sizeof labels, "orgsync_instance=\"%s\",pid=\"%d\"", inst, (int)getpid()) == 0)
        metrics_gauge_set(M_WORKER_INFO, labels, 1);
    lock_process_stats(&ls);
    env_labels(a, labels, sizeof labels);
    metrics_gauge_set(M_LOCK_HELD, labels, ls.held);
    metrics_counter_set(M_LEADER_CHANGES, labels, (double)ls.changes);
    proc_metrics_update();
}

/* One enterprise's last success (Unix time, 0: none seen). */
struct api_success {
    char corp_id[72];
    double t;
};

static int cmp_success(const void *k, const void *e)
{
    return strcmp(k, ((const struct api_success *)e)->corp_id);
}

/* The cached last success of corp_id raised to t (t <= 0: only looked up);
 * returns the cached value, or t when the cache cannot grow. */
static double api_success_merge(api *a, const char *corp_id, double t)
{
    struct api_success *e = NULL;
    size_t lo = 0, hi = a->nsucc;

    if (strlen(corp_id) >= sizeof e->corp_id)
        return t;
    while (lo < hi) { /* the insertion point */
        size_t mid = (lo + hi) / 2;
        int c = cmp_success(corp_id, &a->succ[mid]);
        if (c == 0) {
            e = &a->succ[mid];
            break;
        }
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    if (!e) {
        if (a->nsucc == a->capsucc) {
            size_t cap = a->capsucc ? a->capsucc * 2 : 64;
            struct api_success *v = realloc(a->succ, cap * sizeof(*v));
            if (!v)
                return t;
            a->succ = v;
            a->capsucc = cap;
        }
        memmove(&a->succ[lo + 1], &a->succ[lo], (a->nsucc - lo) * sizeof(*a->succ));
        e = &a->succ[lo];
        snprintf(e->corp_id, sizeof e->corp_id, "%s", corp_id);
        e->t = 0;
        a->nsucc++;
    }
    if (t > e->t)
        e->t = t;
    return e->t;
}

static int extra_push(metrics_sample *x, size_t *n, size_t cap, const char *name,
                      const char *labels, double v)
{
    if (*n >= cap)
        return -1;
    memset(&x[*n], 0, sizeof x[*n]);
    snprintf(x[*n].name, sizeof x[*n].name, "%s", name);
    snprintf(x[*n].labels, sizeof x[*n].labels, "%s", labels);
    x[*n].type = METRIC_GAUGE;
    x[*n].value = v;
    (*n)++;
    return 0;
}

static void metrics_reply(metrics_op *op, PGresult *res)
{
    api *a = op->a;
    size_t len = 0, n = 0, cap = 16 + (res ? (size_t)PQntuples(res) : 0);
    metrics_sample *x = calloc(cap, sizeof(*x));
    char env[METRICS_MAX_LABELS], labels[METRICS_MAX_LABELS], v[2][160];
    char *text = NULL;

    if (!x)
        goto oom;
    api_metrics_refresh(a);
    env_labels(a, env, sizeof env);
    label_value(a->d.settings->env, v[0], sizeof v[0]);
    label_value(a->d.settings->code_version, v[1], sizeof v[1]);
    if (fmt(labels, sizeof labels,
            "version=\"%s\",commit=\"%s\",schema_version=\"%d\",code_version=\"%s\",env=\"%s\"",
            ORGSYNC_VERSION, ORGSYNC_COMMIT, ORGSYNC_SCHEMA_VERSION, v[1], v[0]) == 0)
        extra_push(x, &n, cap, M_BUILD_INFO, labels, 1);
    /* rows: (kind, key, value) from the query in on_metrics */
    for (int r = 0; res && r < PQntuples(res); r++) {
        const char *kind = PQgetvalue(res, r, 0), *key = PQgetvalue(res, r, 1);
        double val = PQgetisnull(res, r, 2) ? 0 : strtod(PQgetvalue(res, r, 2), NULL);
        char k[160];
        int rc;
        if (!strcmp(kind, "mark")) {
            /* marks only grow; an older answer arriving late must not move it back
             * past rows a newer one has seen (it would only cost a re-read) */
            if ((long long)val > a->succ_mark)
                a->succ_mark = (long long)val;
            continue;
        }
        if (!strcmp(kind, "corp"))
            val = api_success_merge(a, key, val);
        label_value(key, k, sizeof k);
        if (!strcmp(kind, "state"))
            rc = fmt(labels, sizeof labels, "%s,state=\"%s\"", env, k);
        else if (!strcmp(kind, "corp"))
            rc = fmt(labels, sizeof labels, "%s,corp_id=\"%s\"", env, k);
        else
            rc = fmt(labels, sizeof labels, "%s", env);
        if (rc == 0)
            extra_push(x, &n, cap, !strcmp(kind, "state") ? M_RUNS : M_LAST_SUCCESS, labels, val);
    }
    text = metrics_host_render(x, n, &len);
    free(x);
    if (!text)
        goto oom;
    http_reply(op->req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
    return;
oom:
    http_reply_error(op->req, 503, "out_of_memory", "out of memory");
}

static void on_env_figures(void *arg, PGresult *res, const char *err)
{
    metrics_op *op = arg;
    if (api_unref(op->a)) {
        if (err)
            api_pg_failed(op->a, "metrics environment figures", err);
        /* PostgreSQL down: the host's own series are still worth scraping */
        metrics_reply(op, err ? NULL : res);
    }
    free(op);
}

/* Every state (0 when none), the last succeeded run, per enabled enterprise the
 * latest end of a succeeded sync_progress row in runs from $3 on (NULL: none
 * there), and the next $3: the first run from $3 on that may still change
 * (pending, running, abandoned), else the one after the last. Finished runs'
 * rows never change, so the cache in api_success_merge only needs what is newer:
 * the first scrape of a worker reads sync_progress once, later ones a range of
 * its primary key. */
static const char env_figures_sql[] =
    "WITH st AS (SELECT state, count(*) AS n FROM sync_runs WHERE env = $1 AND job = $2 "
    "GROUP BY state) "
    "SELECT 'state', s, coalesce((SELECT n FROM st WHERE st.state = s), 0)::float8 "
    "FROM unnest(ARRAY['pending','running','succeeded','partial','failed','abandoned']) s "
    "UNION ALL "
    "SELECT 'last', '', (SELECT extract(epoch FROM finished_at) FROM sync_runs "
    "WHERE env = $1 AND job = $2 AND state = 'succeeded' ORDER BY run_id DESC LIMIT 1)::float8 "
    "UNION ALL "
    "SELECT 'corp', e.corp_id, w.t FROM enterprises e LEFT JOIN ("
    "SELECT p.corp_id, extract(epoch FROM max(p.finished_at))::float8 AS t "
    "FROM sync_progress p JOIN sync_runs r ON r.run_id = p.run_id "
    "WHERE p.run_id >= $3::bigint AND p.state = 'succeeded' AND r.env = $1 AND r.job = $2 "
    "GROUP BY p.corp_id) w ON w.corp_id = e.corp_id WHERE e.enabled "
    "UNION ALL "
    "SELECT 'mark', '', coalesce((SELECT min(run_id) FROM sync_runs WHERE env = $1 AND job = $2 "
    "AND run_id >= $3::bigint AND state IN ('pending','running','abandoned')), "
    "(SELECT max(run_id) + 1 FROM sync_runs WHERE env = $1 AND job = $2), $3::bigint)::float8";

static void on_metrics(http_req *req, void *arg)
{
    api *a = arg;
    metrics_op *op = calloc(1, sizeof(*op));
    char mark[24];
    const char *p[] = {a->d.settings->env, API_JOB, mark};
    if (!op) {
        http_reply_error(req, 503, "out_of_memory", "out of memory");
        return;
    }
    snprintf(mark, sizeof mark, "%lld", a->succ_mark);
    op->a = a;
    op->req = req;
    api_ref(a);
    if (pg_pool_ready(a->d.pg) && pg_query(a->d.pg, env_figures_sql, 3, p, on_env_figures, op) == 0)
        return;
    api_unref(a);
    metrics_reply(op, NULL);
    free(op);
}

/* ---- /v1/leader ---- */

typedef struct leader_op {
    api *a;
    http_req *req;
} leader_op;

/* Why this worker would not compete, from the settings, when the serve engineer's
 * callback is not wired (tests, a worker without a scheduler). */
static void local_from_settings(api *a, api_leader_local *out)
{
    const settings *s = a->d.settings;
    size_t n = 0;
    out->why_not[0] = '\0';
#define WHY(text)                                                                                  \
    n += (size_t)snprintf(out->why_not + n, n < sizeof out->why_not ? sizeof out->why_not - n : 0, \
                          "%s%s", n ? "; " : "", text)
    if (!s->schedule)
        WHY("schedule off (ORGSYNC_SCHEDULE)");
    if (!settings_may_schedule_worker(s, s->worker_id))
        WHY("worker id not in ORGSYNC_SCHEDULER_WORKERS");
    if (a->d.read_only || s->read_only == READ_ONLY_ON)
        WHY("read-only (ORGSYNC_READ_ONLY)");
#undef WHY
    out->eligible = out->why_not[0] == '\0';
}

static void on_leader_info(void *arg, const leader_info *info, const char *err)
{
    leader_op *op = arg;
    api *a = op->a;
    if (!api_unref(a))
        goto done;
    if (err) {
        log_warn("api: leader lookup failed", LF_S("err", err));
        http_reply_error(op->req, 503, "dependency_down", err);
        goto done;
    }
    api_leader_local loc = {0};
    lock_stats ls;
    char t[32];
    buf b;
    jw w;

    lock_process_stats(&ls);
    loc.lease_ms_left = ls.held ? ls.lease_left_ms : -1;
    loc.last_renew_ms = ls.last_renew_latency_ms < 0 ? -1 : (long long)ls.last_renew_latency_ms;
    loc.leader_changes = (long long)ls.changes;
    loc.is_leader = ls.held;
    if (a->d.leader_local)
        a->d.leader_local(a->d.leader_local_arg, &loc);
    else
        local_from_settings(a, &loc);

    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kstr(&w, "instance", info->instance);
    if (info->instance)
        jw_kint(&w, "fencing_token", info->fencing_token);
    else
        jw_knull(&w, "fencing_token");
    if (info->instance && info->since_ms > 0) {
        time_rfc3339((time_t)(info->since_ms / 1000), (int)(info->since_ms % 1000), t);
        jw_kstr(&w, "since", t);
    } else {
        jw_knull(&w, "since");
    }
    if (info->instance && info->pttl_ms >= 0)
        jw_kint(&w, "lock_ttl_ms", info->pttl_ms);
    else
        jw_knull(&w, "lock_ttl_ms");
    jw_key(&w, "this_worker");
    jw_obj_begin(&w);
    jw_kstr(&w, "instance", a->d.settings->instance);
    jw_kint(&w, "worker_id", a->d.settings->worker_id);
    jw_kbool(&w, "eligible", loc.eligible);
    if (loc.eligible)
        jw_knull(&w, "why_not");
    else
        jw_kstr(&w, "why_not", loc.why_not);
    jw_kbool(&w, "is_leader", loc.is_leader);
    if (loc.lease_ms_left >= 0)
        jw_kint(&w, "lease_ms_left", loc.lease_ms_left);
    else
        jw_knull(&w, "lease_ms_left");
    if (loc.last_renew_ms >= 0)
        jw_kint(&w, "last_renew_ms", loc.last_renew_ms);
    else
        jw_knull(&w, "last_renew_ms");
    jw_kint(&w, "leader_changes", loc.leader_changes);
    jw_obj_end(&w);
    jw_obj_end(&w);
    api_reply_json(op->req, 200, &b);
done:
    free(op);
}

static void on_leader(http_req *req, void *arg)
{
    api *a = arg;
    leader_op *op = calloc(1, sizeof(*op));
    if (!op) {
        http_reply_error(req, 503, "out_of_memory", "out of memory");
        return;
    }
    op->a = a;
    op->req = req;
    api_ref(a);
    if (leader_lookup(a->d.redis, a->d.pg, a->d.settings->env, API_JOB, on_leader_info, op)) {
        api_unref(a);
        free(op);
        http_reply_error(req, 503, "dependency_down", "could not query the lock");
    }
}

int api_health_register(api *a)
{
    int err = http_server_route(a->srv, "GET", "/healthz", on_healthz, a);
    if (!err)
        err = http_server_route(a->srv, "GET", "/readyz", on_readyz, a);
    if (!err)
        err = http_server_route(a->srv, "GET", "/metrics", on_metrics, a);
    if (!err)
        err = http_server_route(a->srv, "GET", "/v1/leader", on_leader, a);
    return err;
}
