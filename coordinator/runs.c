/* Run rows: every statement is one round trip on the pool; every leader write
 * is fenced (coordinator/fence.h) and reports whether our token still held. */
#include "coordinator/runs.h"

#include "common/buf.h"
#include "common/log.h"
#include "coordinator/fence.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PARAMS 8
#define CREATE_TRIES 3

/* scheduled_for: $4 is ms since the epoch, NULL for now(). */
#define SCHED_EXPR "coalesce(to_timestamp($4::bigint / 1000.0), now())"

/* A duplicate is normal (two fires, a second POST while a run is pending), so
 * the insert does nothing on any unique conflict and the same statement reads
 * the row it collided with: first the same fire, else the unfinished run. Under
 * READ COMMITTED the read may not see a row committed after the statement began;
 * then no row comes back and we try again. */
static const char create_sql[] =
    "WITH ins AS ("
    " INSERT INTO sync_runs (env, job, trigger, scheduled_for, corp_ids)"
    " VALUES ($1, $2, $3, " SCHED_EXPR ", $5::text[])"
    " ON CONFLICT DO NOTHING RETURNING run_id, state)"
    " SELECT run_id, true AS created, state FROM ins"
    " UNION ALL"
    " (SELECT run_id, false, state FROM sync_runs"
    "  WHERE NOT EXISTS (SELECT 1 FROM ins) AND env = $1 AND job = $2"
    "  AND (scheduled_for = " SCHED_EXPR " OR state IN ('pending', 'running', 'abandoned'))"
    "  ORDER BY (scheduled_for = " SCHED_EXPR ") DESC, run_id DESC LIMIT 1)";

static const char notify_sql[] = "SELECT pg_notify($1, $2)";

/* A 'running' row under an older token belongs to a leader that is gone (we
 * hold the fence now): it becomes 'abandoned' first, so the log and the row's
 * error show that attempt ended without finishing. */
static const char abandon_stale_sql[] =
    "WITH " FENCE_CTE ", ab AS ("
    " UPDATE sync_runs SET state = 'abandoned',"
    "  error = 'leader ' || coalesce(leader_instance, '?') || ' vanished during attempt ' || "
    "attempt"
    " WHERE env = $1 AND job = $2 AND state = 'running'"
    "  AND fencing_token IS DISTINCT FROM $3::bigint AND EXISTS (SELECT 1 FROM fence)"
    " RETURNING run_id, leader_instance, fencing_token, attempt)"
    " SELECT EXISTS (SELECT 1 FROM fence) AS fenced, ab.run_id, ab.leader_instance,"
    " ab.fencing_token, ab.attempt FROM (SELECT 1) AS one LEFT JOIN ab ON true";

static const char claim_sql[] =
    "WITH " FENCE_CTE ", r AS ("
    " SELECT run_id, state FROM sync_runs"
    " WHERE env = $1 AND job = $2 AND state IN ('pending', 'abandoned')"
    "  AND ($4::bigint = 0 OR run_id = $4::bigint)"
    " ORDER BY run_id LIMIT 1 FOR UPDATE),"
    " c AS ("
    " UPDATE sync_runs AS s SET state = 'running', attempt = s.attempt + 1,"
    "  leader_instance = $5, fencing_token = $3::bigint, code_version = $6,"
    "  started_at = coalesce(s.started_at, now()), heartbeat_at = now(),"
    "  finished_at = NULL, error = NULL"
    " FROM r WHERE s.run_id = r.run_id AND EXISTS (SELECT 1 FROM fence)"
    " RETURNING s.run_id, s.attempt, r.state AS prev_state, s.trigger,"
    "  (extract(epoch FROM s.scheduled_for) * 1000)::bigint AS scheduled_for_ms,"
    "  to_json(s.corp_ids)::text AS corp_ids)"
    " SELECT EXISTS (SELECT 1 FROM fence) AS fenced, c.* FROM (SELECT 1) AS one LEFT JOIN c ON "
    "true";

/* Our own running row only: a heartbeat or finish for a run that a successor
 * took over changes nothing even if the fence were somehow ours again. */
#define OWN_RUN                                                                                    \
    "run_id = $4::bigint AND env = $1 AND job = $2 AND state = 'running'"                          \
    " AND fencing_token = $3::bigint AND EXISTS (SELECT 1 FROM fence)"
#define FENCED_COUNT " SELECT EXISTS (SELECT 1 FROM fence) AS fenced, (SELECT count(*) FROM u) AS n"

static const char heartbeat_sql[] =
    "WITH " FENCE_CTE ", u AS (UPDATE sync_runs SET heartbeat_at = now() WHERE " OWN_RUN
    " RETURNING run_id)" FENCED_COUNT;

static const char finish_sql[] =
    "WITH " FENCE_CTE ", u AS (UPDATE sync_runs SET state = $5, error = $6, finished_at = now(),"
    " heartbeat_at = now() WHERE " OWN_RUN " RETURNING run_id)" FENCED_COUNT;

static const char abandon_sql[] =
    "WITH " FENCE_CTE ", u AS (UPDATE sync_runs SET state = 'abandoned', error = $5,"
    " heartbeat_at = now() WHERE " OWN_RUN " RETURNING run_id)" FENCED_COUNT;

static const char find_sql[] =
    "SELECT run_id, state, leader_instance,"
    " coalesce(extract(epoch FROM now() - heartbeat_at)::float8, -1), attempt"
    " FROM sync_runs WHERE env = $1 AND job = $2 AND state IN ('pending', 'running', 'abandoned')"
    " ORDER BY run_id LIMIT 1";

enum { Q_CREATE, Q_NOTIFY, Q_FENCE, Q_ABANDON_STALE, Q_CLAIM, Q_WRITE, Q_FIND };

typedef union runs_any_cb {
    runs_create_cb create;
    runs_write_cb write;
    runs_claim_cb claim;
    runs_find_cb find;
} runs_any_cb;

/* One request in flight; owns copies of its parameters so it can retry or
 * chain a second statement after the caller's arguments are gone. */
typedef struct runs_req {
    pg_pool *pg;
    int kind;
    int tries;
    int notify;       /* Q_CREATE: NOTIFY afterwards */
    const char *what; /* Q_WRITE: "heartbeat", "finish", "abandon" (static) */
    int nparams;
    char *params[MAX_PARAMS];
    runs_created created; /* Q_CREATE result, kept for the NOTIFY step */
    char created_state[16];
    runs_any_cb cb;
    void *arg;
} runs_req;

static void req_free(runs_req *q)
{
    int i;

    for (i = 0; i < q->nparams; i++)
        free(q->params[i]);
    free(q);
}

static runs_req *req_new(pg_pool *pg, int kind, runs_any_cb cb, void *arg, int nparams,
                         const char *const *params)
{
    runs_req *q = calloc(1, sizeof(*q));
    int i;

    if (!q)
        return NULL;
    q->pg = pg;
    q->kind = kind;
    q->cb = cb;
    q->arg = arg;
    q->nparams = nparams;
    for (i = 0; i < nparams; i++) {
        if (params[i] && !(q->params[i] = strdup(params[i]))) {
            req_free(q);
            return NULL;
        }
    }
    return q;
}

static void on_result(void *arg, PGresult *res, const char *err);

static int req_send(runs_req *q, const char *sql)
{
    return pg_query(q->pg, sql, q->nparams, (const char *const *)q->params, on_result, q);
}

static int is_true(const PGresult *res, int row, int col)
{
    return !PQgetisnull(res, row, col) && PQgetvalue(res, row, col)[0] == 't';
}

static long long get_ll(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? 0 : strtoll(PQgetvalue(res, row, col), NULL, 10);
}

/* {"a","b"} for a text[] parameter; NULL when there is no filter. */
static char *corp_array(const char *const *ids, int n)
{
    buf b;
    const char *p;
    int i;

    if (!ids || n <= 0)
        return NULL;
    buf_init(&b);
    buf_puts(&b, "{");
    for (i = 0; i < n; i++) {
        buf_puts(&b, i ? ",\"" : "\"");
        for (p = ids[i] ? ids[i] : ""; *p; p++) {
            if (*p == '"' || *p == '\\')
                buf_append(&b, "\\", 1);
            buf_append(&b, p, 1);
        }
        buf_puts(&b, "\"");
    }
    buf_puts(&b, "}");
    if (b.oom) {
        buf_free(&b);
        return NULL;
    }
    return buf_detach(&b, NULL);
}

int runs_channel(const char *env, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "orgsync_runs_%.50s", env ? env : "");
    return (n < 0 || (size_t)n >= outlen) ? -1 : 0;
}

/* ---- create and request ---------------------------------------------- */

static int create_start(pg_pool *pg, const runs_new *rq, int notify, runs_create_cb cb, void *arg)
{
    char ms[24];
    char *corps = NULL;
    const char *params[5];
    runs_req *q;
    int rc;

    if (!pg || !rq || !rq->env || !rq->job || !rq->trigger || !cb)
        return PG_EINVAL;
    if (strcmp(rq->trigger, "schedule") && strcmp(rq->trigger, "manual") &&
        strcmp(rq->trigger, "cli"))
        return PG_EINVAL;
    snprintf(ms, sizeof(ms), "%lld", rq->scheduled_for_ms);
    if (rq->corp_ids && rq->ncorp_ids > 0 && !(corps = corp_array(rq->corp_ids, rq->ncorp_ids)))
        return PG_ENOMEM;
    params[0] = rq->env;
    params[1] = rq->job;
    params[2] = rq->trigger;
    params[3] = rq->scheduled_for_ms > 0 ? ms : NULL;
    params[4] = corps;
    q = req_new(pg, Q_CREATE, (runs_any_cb){.create = cb}, arg, 5, params);
    free(corps);
    if (!q)
        return PG_ENOMEM;
    q->notify = notify;
    rc = req_send(q, create_sql);
    if (rc)
        req_free(q);
    return rc;
}

int runs_create(pg_pool *pg, const runs_new *rq, runs_create_cb cb, void *arg)
{
    return create_start(pg, rq, 0, cb, arg);
}

int runs_request_now(pg_pool *pg, const runs_new *rq, runs_create_cb cb, void *arg)
{
    return create_start(pg, rq, 1, cb, arg);
}

static void create_fail(runs_req *q, const char *err)
{
    q->cb.create(q->arg, NULL, err);
    req_free(q);
}

static void create_result(runs_req *q, PGresult *res, const char *err)
{
    char channel[64], id[24];
    int rc;

    if (err) {
        create_fail(q, err);
        return;
    }
    if (PQntuples(res) < 1) {
        /* Collided with a row our snapshot cannot see yet: read again. */
        if (++q->tries < CREATE_TRIES && req_send(q, create_sql) == 0)
            return;
        create_fail(q, "run insert collided with a row it cannot read");
        return;
    }
    q->created.run_id = get_ll(res, 0, 0);
    q->created.created = is_true(res, 0, 1);
    snprintf(q->created_state, sizeof(q->created_state), "%s", PQgetvalue(res, 0, 2));
    q->created.state = q->created_state;
    log_info(q->created.created ? "run created" : "run request matched an existing run",
             LF_I("run_id", q->created.run_id), LF_S("trigger", q->params[2]),
             LF_S("state", q->created_state));
    if (!q->notify) {
        q->cb.create(q->arg, &q->created, NULL);
        req_free(q);
        return;
    }
    /* Second step: wake the leader. The run exists whatever happens next. */
    runs_channel(q->params[0], channel, sizeof(channel));
    snprintf(id, sizeof(id), "%lld", q->created.run_id);
    {
        const char *np[2] = {channel, id};
        q->kind = Q_NOTIFY;
        rc = pg_query(q->pg, notify_sql, 2, np, on_result, q);
    }
    if (rc) {
        log_warn("run NOTIFY not sent", LF_I("run_id", q->created.run_id), LF_I("error", rc));
        q->cb.create(q->arg, &q->created, NULL);
        req_free(q);
    }
}

static void notify_result(runs_req *q, const char *err)
{
    if (err)
        log_warn("run NOTIFY failed", LF_I("run_id", q->created.run_id), LF_S("error", err));
    q->cb.create(q->arg, &q->created, NULL);
    req_free(q);
}

/* ---- fenced writes ---------------------------------------------------- */

static int leader_ok(const runs_leader *ld)
{
    return ld && ld->env && ld->job && ld->token > 0 && ld->instance;
}

int runs_fence_claim(pg_pool *pg, const runs_leader *ld, runs_write_cb cb, void *arg)
{
    char tok[24];
    const char *params[4];
    runs_req *q;
    int rc;

    if (!pg || !leader_ok(ld) || !cb)
        return PG_EINVAL;
    snprintf(tok, sizeof(tok), "%lld", ld->token);
    params[0] = ld->env;
    params[1] = ld->job;
    params[2] = tok;
    params[3] = ld->instance;
    if (!(q = req_new(pg, Q_FENCE, (runs_any_cb){.write = cb}, arg, 4, params)))
        return PG_ENOMEM;
    rc = req_send(q, FENCE_CLAIM_SQL);
    if (rc)
        req_free(q);
    return rc;
}

static void fence_result(runs_req *q, PGresult *res, const char *err)
{
    int held = !err && PQntuples(res) == 1;

    if (!err)
        log_info(held ? "fence claimed" : "fence not claimed: a newer token holds it",
                 LF_S("job", q->params[1]), LF_S("fencing_token", q->params[2]));
    q->cb.write(q->arg, held, err);
    req_free(q);
}

int runs_claim(pg_pool *pg, const runs_leader *ld, long long run_id, runs_claim_cb cb, void *arg)
{
    char tok[24], id[24];
    const char *params[6];
    runs_req *q;
    int rc;

    if (!pg || !leader_ok(ld) || !cb || run_id < 0)
        return PG_EINVAL;
    snprintf(tok, sizeof(tok), "%lld", ld->token);
    snprintf(id, sizeof(id), "%lld", run_id);
    params[0] = ld->env;
    params[1] = ld->job;
    params[2] = tok;
    params[3] = id;
    params[4] = ld->instance;
    params[5] = ld->code_version;
    if (!(q = req_new(pg, Q_ABANDON_STALE, (runs_any_cb){.claim = cb}, arg, 6, params)))
        return PG_ENOMEM;
    /* The abandon statement takes $1..$3 only; extra text parameters would
     * make PostgreSQL refuse the statement, so send just those. */
    rc = pg_query(pg, abandon_stale_sql, 3, (const char *const *)q->params, on_result, q);
    if (rc)
        req_free(q);
    return rc;
}

static void claim_fail(runs_req *q, int held, const char *err)
{
    q->cb.claim(q->arg, held, NULL, err);
    req_free(q);
}

static void abandon_stale_result(runs_req *q, PGresult *res, const char *err)
{
    int i, rc;

    if (err) {
        claim_fail(q, 0, err);
        return;
    }
    if (PQntuples(res) < 1 || !is_true(res, 0, 0)) {
        claim_fail(q, 0, NULL);
        return;
    }
    for (i = 0; i < PQntuples(res); i++)
        if (!PQgetisnull(res, i, 1))
            log_warn("run abandoned: its leader is gone", LF_I("run_id", get_ll(res, i, 1)),
                     LF_S("old_leader", PQgetisnull(res, i, 2) ? "" : PQgetvalue(res, i, 2)),
                     LF_I("old_fencing_token", get_ll(res, i, 3)),
                     LF_I("attempt", get_ll(res, i, 4)));
    q->kind = Q_CLAIM;
    rc = req_send(q, claim_sql);
    if (rc)
        claim_fail(q, 1, "claim not sent");
}

/* to_json(text[]) -> owned array of owned strings. */
static int parse_corps(const char *json, char ***out, int *n)
{
    struct json_object *a = json_tokener_parse(json);
    size_t i, len;
    char **v = NULL;

    *out = NULL;
    *n = 0;
    if (!a || !json_object_is_type(a, json_type_array)) {
        json_object_put(a);
        return -1;
    }
    len = json_object_array_length(a);
    if (len > 0 && !(v = calloc(len, sizeof(*v)))) {
        json_object_put(a);
        return -1;
    }
    for (i = 0; i < len; i++) {
        const char *s = json_object_get_string(json_object_array_get_idx(a, i));
        if (!(v[i] = strdup(s ? s : ""))) {
            while (i > 0)
                free(v[--i]);
            free(v);
            json_object_put(a);
            return -1;
        }
    }
    json_object_put(a);
    *out = v;
    *n = (int)len;
    return 0;
}

static void claim_result(runs_req *q, PGresult *res, const char *err)
{
    runs_claimed c;
    char **corps = NULL;
    int held, ncorps = 0, i;

    if (err) {
        claim_fail(q, 0, err);
        return;
    }
    held = PQntuples(res) >= 1 && is_true(res, 0, 0);
    if (!held || PQgetisnull(res, 0, 1)) {
        claim_fail(q, held, NULL);
        return;
    }
    memset(&c, 0, sizeof(c));
    c.run_id = get_ll(res, 0, 1);
    c.attempt = (int)get_ll(res, 0, 2);
    c.prev_state = PQgetvalue(res, 0, 3);
    c.trigger = PQgetvalue(res, 0, 4);
    c.scheduled_for_ms = get_ll(res, 0, 5);
    if (!PQgetisnull(res, 0, 6) && strcmp(PQgetvalue(res, 0, 6), "null") &&
        parse_corps(PQgetvalue(res, 0, 6), &corps, &ncorps)) {
        /* The row is ours and running; a caller that cannot read the filter
         * must not run it for every enterprise instead. */
        claim_fail(q, 1, "cannot parse the run's corp_ids");
        return;
    }
    c.corp_ids = (const char *const *)corps;
    c.ncorp_ids = ncorps;
    log_info("run claimed", LF_I("run_id", c.run_id), LF_I("attempt", c.attempt),
             LF_S("prev_state", c.prev_state), LF_S("fencing_token", q->params[2]));
    q->cb.claim(q->arg, 1, &c, NULL);
    for (i = 0; i < ncorps; i++)
        free(corps[i]);
    free(corps);
    req_free(q);
}

static int write_start(pg_pool *pg, const runs_leader *ld, long long run_id, const char *sql,
                       const char *what, const char *p5, const char *p6, int nparams,
                       runs_write_cb cb, void *arg)
{
    char tok[24], id[24];
    const char *params[6];
    runs_req *q;
    int rc;

    if (!pg || !leader_ok(ld) || !cb || run_id <= 0)
        return PG_EINVAL;
    snprintf(tok, sizeof(tok), "%lld", ld->token);
    snprintf(id, sizeof(id), "%lld", run_id);
    params[0] = ld->env;
    params[1] = ld->job;
    params[2] = tok;
    params[3] = id;
    params[4] = p5;
    params[5] = p6;
    if (!(q = req_new(pg, Q_WRITE, (runs_any_cb){.write = cb}, arg, nparams, params)))
        return PG_ENOMEM;
    q->what = what;
    rc = req_send(q, sql);
    if (rc)
        req_free(q);
    return rc;
}

int runs_heartbeat(pg_pool *pg, const runs_leader *ld, long long run_id, runs_write_cb cb,
                   void *arg)
{
    return write_start(pg, ld, run_id, heartbeat_sql, "heartbeat", NULL, NULL, 4, cb, arg);
}

int runs_finish(pg_pool *pg, const runs_leader *ld, long long run_id, const char *state,
                const char *error, runs_write_cb cb, void *arg)
{
    if (!state ||
        (strcmp(state, "succeeded") && strcmp(state, "partial") && strcmp(state, "failed")))
        return PG_EINVAL;
    return write_start(pg, ld, run_id, finish_sql, "finish", state, error, 6, cb, arg);
}

int runs_abandon(pg_pool *pg, const runs_leader *ld, long long run_id, const char *reason,
                 runs_write_cb cb, void *arg)
{
    return write_start(pg, ld, run_id, abandon_sql, "abandon", reason ? reason : "abandoned", NULL,
                       5, cb, arg);
}

static void write_result(runs_req *q, PGresult *res, const char *err)
{
    int held = 0;

    if (!err) {
        held = PQntuples(res) == 1 && is_true(res, 0, 0);
        if (held && get_ll(res, 0, 1) == 0)
            err = "run is not running under this token";
        else if (!held)
            log_warn("fenced write refused: a newer leader holds the fence", LF_S("write", q->what),
                     LF_S("run_id", q->params[3]), LF_S("fencing_token", q->params[2]));
    }
    q->cb.write(q->arg, held, err);
    req_free(q);
}

/* ---- read only -------------------------------------------------------- */

int runs_find_resumable(pg_pool *pg, const char *env, const char *job, runs_find_cb cb, void *arg)
{
    const char *params[2] = {env, job};
    runs_req *q;
    int rc;

    if (!pg || !env || !job || !cb)
        return PG_EINVAL;
    if (!(q = req_new(pg, Q_FIND, (runs_any_cb){.find = cb}, arg, 2, params)))
        return PG_ENOMEM;
    rc = req_send(q, find_sql);
    if (rc)
        req_free(q);
    return rc;
}

static void find_result(runs_req *q, PGresult *res, const char *err)
{
    runs_resumable r;

    memset(&r, 0, sizeof(r));
    if (err) {
        q->cb.find(q->arg, NULL, err);
    } else {
        if (PQntuples(res) > 0) {
            r.run_id = get_ll(res, 0, 0);
            r.state = PQgetvalue(res, 0, 1);
            r.leader_instance = PQgetisnull(res, 0, 2) ? NULL : PQgetvalue(res, 0, 2);
            r.heartbeat_age_s = strtod(PQgetvalue(res, 0, 3), NULL);
            r.attempt = (int)get_ll(res, 0, 4);
        }
        q->cb.find(q->arg, &r, NULL);
    }
    req_free(q);
}

static void on_result(void *arg, PGresult *res, const char *err)
{
    runs_req *q = arg;

    switch (q->kind) {
    case Q_CREATE:
        create_result(q, res, err);
        break;
    case Q_NOTIFY:
        notify_result(q, err);
        break;
    case Q_FENCE:
        fence_result(q, res, err);
        break;
    case Q_ABANDON_STALE:
        abandon_stale_result(q, res, err);
        break;
    case Q_CLAIM:
        claim_result(q, res, err);
        break;
    case Q_WRITE:
        write_result(q, res, err);
        break;
    default:
        find_result(q, res, err);
        break;
    }
}
