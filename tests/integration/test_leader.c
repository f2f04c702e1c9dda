/* Leader sessions against real Redis and PostgreSQL, with a small test job:
 * a run to success, fail-fast and bounded waits, shutdown (run left abandoned
 * and resumed by the next leader with attempt+1), a lease lost mid-run (job
 * stopped at once, alert raised, successor resumes after expiry), fenced out
 * mid-run, a job that ignores stop(), a fire that already ran, and a resumed run
 * followed by the requested one. */
#include "tests/integration/coord_helpers.h"

#include "common/alert.h"
#include "common/log.h"
#include "common/pg.h"
#include "common/settings.h"
#include "coordinator/leader.h"
#include "coordinator/lock.h"

#define JOB "directory-sync"

/* ---- the test job ------------------------------------------------------ */

enum { J_FINISH, J_FOREVER, J_IGNORE_STOP };

typedef struct tjob {
    int mode;
    int finish_after_ms;
    const char *final_state;
    int sync_finish_on_stop; /* call finished() from inside stop() */

    int starts, stops, finishes;
    char stop_reason[128];
    long long run_id, token;
    int attempt, ncorps;
    char corp0[32];
    int ticks, ticks_invalid_working; /* ticks that did "work" without a valid lease */
    int lease_went_invalid;
    job_run *run;
    uv_timer_t t, tick;
    int handles;
} tjob;

static tjob *J; /* the job instance the next start() uses */

static void tjob_closed(uv_handle_t *h)
{
    tjob *j = h->data;
    j->handles--;
}

static void tjob_end(tjob *j, const char *state, const char *err)
{
    job_run *run = j->run;

    uv_timer_stop(&j->t);
    uv_timer_stop(&j->tick);
    j->finishes++;
    j->run = NULL;
    run->finished(run, state, err);
}

static void tjob_fire(uv_timer_t *t)
{
    tjob *j = t->data;
    if (j->run)
        tjob_end(j, j->stops ? NULL : j->final_state, NULL);
}

static void tjob_tick(uv_timer_t *t)
{
    tjob *j = t->data;

    if (!j->run || j->stops)
        return;
    j->ticks++;
    /* A job checks the lease before each unit of work and does none without it. */
    if (!j->run->lease_valid(j->run))
        j->lease_went_invalid++;
}

static int tjob_start(job_run *run)
{
    tjob *j = J;

    j->starts++;
    j->run = run;
    j->run_id = run->run_id;
    j->token = run->fencing_token;
    j->attempt = run->attempt;
    j->ncorps = run->ncorp_ids;
    snprintf(j->corp0, sizeof(j->corp0), "%s", run->ncorp_ids ? run->corp_ids[0] : "");
    run->job_state = j;
    if (!j->handles) {
        uv_timer_init(run->loop, &j->t);
        uv_timer_init(run->loop, &j->tick);
        j->t.data = j->tick.data = j;
        j->handles = 2;
    }
    if (j->mode == J_FINISH)
        uv_timer_start(&j->t, tjob_fire, (uint64_t)j->finish_after_ms, 0);
    uv_timer_start(&j->tick, tjob_tick, 10, 10);
    return 0;
}

static void tjob_stop(job_run *run, const char *reason)
{
    tjob *j = run->job_state;

    j->stops++;
    snprintf(j->stop_reason, sizeof(j->stop_reason), "%s", reason ? reason : "");
    if (j->mode == J_IGNORE_STOP)
        return;
    if (j->sync_finish_on_stop) {
        tjob_end(j, NULL, reason);
        return;
    }
    uv_timer_start(&j->t, tjob_fire, 5, 0);
}

static const job_ops tjob_ops = {.name = JOB, .start = tjob_start, .stop = tjob_stop};

static void tjob_close(uv_loop_t *loop, tjob *j)
{
    if (j->handles == 2) {
        uv_close((uv_handle_t *)&j->t, tjob_closed);
        uv_close((uv_handle_t *)&j->tick, tjob_closed);
    }
    while (j->handles)
        uv_run(loop, UV_RUN_ONCE);
}

/* ---- fixture ----------------------------------------------------------- */

typedef struct fixture {
    uv_loop_t loop;
    pg_pool *pg;
    redis_client *redis;
    PGconn *db;
    redisContext *direct;
    char env[64], key[256];
    settings st;
} fixture;

typedef struct kv {
    const char *k, *v;
} kv;

static kv *env_table;

static const char *table_get(const char *name, void *arg)
{
    kv *t = arg;
    for (; t && t->k; t++)
        if (!strcmp(t->k, name))
            return t->v;
    return NULL;
}

static void load_settings(fixture *f, settings *s, const char *instance, const char *ttl)
{
    char err[256];
    kv t[] = {{"ORGSYNC_ENV", f->env},
              {"ORGSYNC_INSTANCE", instance},
              {"ORGSYNC_LOCK_TTL_MS", ttl},
              {"ORGSYNC_CODE_VERSION", "9.9.9-test"},
              {NULL, NULL}};

    (void)env_table;
    assert_int_equal(settings_load_from(s, NULL, table_get, t, err, sizeof(err)), 0);
}

static redis_client *client(fixture *f, const char *url, int cmd_timeout)
{
    redis_client *c =
        redis_new(&f->loop, &(redis_opts){.url = url, .command_timeout_ms = cmd_timeout});
    uint64_t end = time_mono_us() + 5000000;

    assert_non_null(c);
    while (!redis_connected(c) && time_mono_us() < end)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_true(redis_connected(c));
    return c;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    const char *dsn = th_env_or_fail("ORGSYNC_TEST_PG_DSN");
    const char *url = th_env_or_fail("ORGSYNC_TEST_REDIS_URL");

    uv_loop_init(&f->loop);
    th_unique(f->env, sizeof(f->env), "tlead");
    lock_key(f->env, JOB, f->key, sizeof(f->key));
    f->pg = pg_pool_new(&f->loop, &(pg_pool_opts){.dsn = dsn, .size = 3});
    assert_non_null(f->pg);
    f->redis = client(f, url, 0);
    f->db = th_pg_connect(dsn);
    f->direct = th_redis_connect(url);
    load_settings(f, &f->st, "leader-a:1", "2000");
    assert_int_equal(alert_init(&f->loop, NULL, NULL, f->env, "leader-a:1"), 0);
    *state = f;
    return 0;
}

static int closed;
static void on_closed(void *arg)
{
    (void)arg;
    closed++;
}

static int teardown(void **state)
{
    fixture *f = *state;
    int want;

    closed = 0;
    alert_close(0, on_closed, NULL);
    redis_close(f->redis, on_closed, NULL);
    pg_pool_close(f->pg, on_closed, NULL);
    want = 3;
    {
        uint64_t end = time_mono_us() + 5000000;
        while (closed < want && time_mono_us() < end)
            uv_run(&f->loop, UV_RUN_ONCE);
    }
    assert_int_equal(closed, want);
    PQfinish(f->db);
    redisFree(f->direct);
    th_loop_finish(&f->loop);
    free(f);
    return 0;
}

/* ---- session helpers --------------------------------------------------- */

typedef struct outcome {
    int done;
    leader_result r;
    char state[16], error[256];
    int ev[8];
    char holder[160];
    long long started_run;
} outcome;

static void on_done(void *arg, const leader_result *r)
{
    outcome *o = arg;

    o->done++;
    o->r = *r;
    snprintf(o->state, sizeof(o->state), "%s", r->state ? r->state : "");
    snprintf(o->error, sizeof(o->error), "%s", r->error ? r->error : "");
    o->r.state = NULL;
    o->r.error = NULL;
}

static void on_event(void *arg, const leader_event *ev)
{
    outcome *o = arg;

    if (ev->kind >= 0 && ev->kind < 8)
        o->ev[ev->kind]++;
    if (ev->kind == LEADER_EV_WAITING)
        snprintf(o->holder, sizeof(o->holder), "%s", ev->holder ? ev->holder : "");
    if (ev->kind == LEADER_EV_RUN_STARTED)
        o->started_run = ev->run_id;
}

static leader_opts opts(fixture *f, const settings *s, redis_client *rc, outcome *o)
{
    leader_opts lo = {
        .loop = &f->loop,
        .settings = s,
        .pg = f->pg,
        .redis = rc ? rc : f->redis,
        .ops = &tjob_ops,
        .heartbeat_ms = 100,
        .stop_timeout_ms = 2000,
        .on_event = on_event,
        .on_done = on_done,
        .arg = o,
    };
    return lo;
}

static leader_session *start(leader_opts *lo)
{
    leader_session *s = NULL;
    assert_int_equal(leader_session_start(lo, &s), 0);
    assert_non_null(s);
    return s;
}

static void run_col(fixture *f, long long run_id, const char *col, char *out, size_t len)
{
    th_pg_str(f->db, out, len, "SELECT %s FROM sync_runs WHERE run_id = %lld", col, run_id);
}

/* ---- tests ------------------------------------------------------------- */

static void test_run_to_success(void **state)
{
    fixture *f = *state;
    tjob j = {.mode = J_FINISH, .finish_after_ms = 400, .final_state = "succeeded"};
    outcome o = {0};
    const char *corps[] = {"corpA"};
    leader_opts lo = opts(f, &f->st, NULL, &o);
    char s[256], v[160];

    J = &j;
    lo.create = 1;
    lo.trigger = "cli";
    lo.corp_ids = corps;
    lo.ncorp_ids = 1;
    start(&lo);
    assert_true(th_run_until(&f->loop, &o.done, 10000));
    assert_int_equal(o.r.status, LEADER_DONE);
    assert_string_equal(o.state, "succeeded");
    assert_string_equal(o.error, "");
    assert_int_equal(o.r.runs_done, 1);
    assert_true(o.r.run_id > 0);
    assert_int_equal(o.r.attempt, 1);
    assert_int_equal(j.starts, 1);
    assert_int_equal(j.stops, 0);
    assert_int_equal(j.run_id, o.r.run_id);
    assert_int_equal(j.token, o.r.fencing_token);
    assert_int_equal(j.ncorps, 1);
    assert_string_equal(j.corp0, "corpA");
    assert_int_equal(j.lease_went_invalid, 0);
    assert_int_equal(o.ev[LEADER_EV_ACQUIRED], 1);
    assert_int_equal(o.ev[LEADER_EV_RUN_STARTED], 1);
    assert_int_equal(o.ev[LEADER_EV_RUN_FINISHED], 1);
    assert_int_equal(o.started_run, o.r.run_id);
    run_col(f, o.r.run_id,
            "state || ' ' || trigger || ' ' || attempt || ' ' || fencing_token || ' ' || "
            "leader_instance || ' ' || code_version || ' ' || corp_ids::text || ' ' || "
            "(heartbeat_at > started_at) || ' ' || (finished_at IS NOT NULL)",
            s, sizeof(s));
    {
        char want[256];
        snprintf(want, sizeof(want), "succeeded cli 1 %lld leader-a:1 9.9.9-test {corpA} true true",
                 o.r.fencing_token);
        assert_string_equal(s, want);
    }
    th_pg_str(f->db, s, sizeof(s), "SELECT token FROM leader_fence WHERE env = '%s'", f->env);
    assert_int_equal(strtoll(s, NULL, 10), o.r.fencing_token);
    assert_int_equal(th_redis_get(f->direct, f->key, v, sizeof(v)), -2); /* released */
    tjob_close(&f->loop, &j);
}

static void test_busy_wait_shutdown_resume(void **state)
{
    fixture *f = *state;
    tjob ja = {.mode = J_FOREVER},
         jc = {.mode = J_FINISH, .finish_after_ms = 100, .final_state = "succeeded"};
    outcome oa = {0}, ob = {0}, ob2 = {0}, oc = {0};
    settings sb;
    leader_opts la = opts(f, &f->st, NULL, &oa), lb, lc;
    leader_session *sa;
    char s[256], v[160];
    long long run_id;

    load_settings(f, &sb, "leader-b:2", "2000");
    J = &ja;
    la.create = 1;
    la.trigger = "manual";
    sa = start(&la);
    {
        uint64_t end = time_mono_us() + 5000000;
        while (!ja.starts && time_mono_us() < end)
            th_run_for(&f->loop, 10);
    }
    assert_int_equal(ja.starts, 1);
    assert_int_equal(leader_session_is_leader(sa), 1);
    run_id = leader_session_run_id(sa);
    assert_true(run_id > 0);

    /* --no-wait: fails fast naming the holder */
    lb = opts(f, &sb, NULL, &ob);
    lb.create = 1;
    lb.trigger = "cli";
    start(&lb);
    assert_true(th_run_until(&f->loop, &ob.done, 5000));
    assert_int_equal(ob.r.status, LEADER_BUSY);
    assert_non_null(strstr(ob.error, "leader-a:1|"));
    assert_int_equal(ob.ev[LEADER_EV_WAITING], 1);
    assert_int_equal(ob.r.fencing_token, 0);

    /* a bounded wait gives up in time */
    lb = opts(f, &sb, NULL, &ob2);
    lb.wait = 1;
    lb.wait_timeout_ms = 400;
    {
        uint64_t t0 = time_mono_us();
        start(&lb);
        assert_true(th_run_until(&f->loop, &ob2.done, 5000));
        assert_int_equal(ob2.r.status, LEADER_BUSY);
        assert_true(time_mono_us() - t0 < 1500000);
    }

    /* shutdown: job stopped, run left abandoned, lock released */
    leader_session_shutdown(sa, "SIGTERM");
    assert_true(th_run_until(&f->loop, &oa.done, 5000));
    assert_int_equal(oa.r.status, LEADER_SHUTDOWN);
    assert_int_equal(ja.stops, 1);
    assert_string_equal(ja.stop_reason, "SIGTERM");
    assert_int_equal(ja.finishes, 1);
    run_col(f, run_id, "state || ' ' || attempt || ' ' || error", s, sizeof(s));
    assert_string_equal(s, "abandoned 1 SIGTERM");
    assert_int_equal(th_redis_get(f->direct, f->key, v, sizeof(v)), -2);

    /* the next leader (create 0: only resume) picks it up: same id, attempt 2 */
    J = &jc;
    lc = opts(f, &sb, NULL, &oc);
    start(&lc);
    assert_true(th_run_until(&f->loop, &oc.done, 10000));
    assert_int_equal(oc.r.status, LEADER_DONE);
    assert_int_equal(oc.r.run_id, run_id);
    assert_int_equal(oc.r.attempt, 2);
    assert_int_equal(jc.attempt, 2);
    assert_true(oc.r.fencing_token > oa.r.fencing_token);
    run_col(f, run_id, "state || ' ' || attempt || ' ' || leader_instance", s, sizeof(s));
    assert_string_equal(s, "succeeded 2 leader-b:2");

    /* and with nothing left to resume, a resume-only session does nothing */
    memset(&oc, 0, sizeof(oc));
    lc = opts(f, &sb, NULL, &oc);
    start(&lc);
    assert_true(th_run_until(&f->loop, &oc.done, 5000));
    assert_int_equal(oc.r.status, LEADER_NOTHING);
    assert_int_equal(th_redis_get(f->direct, f->key, v, sizeof(v)), -2);
    tjob_close(&f->loop, &ja);
    tjob_close(&f->loop, &jc);
}

static void test_lease_lost_mid_run(void **state)
{
    fixture *f = *state;
    th_proxy px;
    char purl[128], s[256], v[160];
    redis_client *frozen_rc;
    tjob ja = {.mode = J_FOREVER, .sync_finish_on_stop = 1},
         jb = {.mode = J_FINISH, .finish_after_ms = 100, .final_state = "succeeded"};
    outcome oa = {0}, ob = {0};
    settings sb;
    leader_opts la, lb;
    alert_stats as0, as1;
    uint64_t freeze_at, lost_at;
    long long run_id;

    th_proxy_start(&px, &f->loop, th_redis_port(th_env_or_fail("ORGSYNC_TEST_REDIS_URL")));
    snprintf(purl, sizeof(purl), "redis://127.0.0.1:%d/0", px.port);
    frozen_rc = client(f, purl, 20000);
    load_settings(f, &sb, "leader-b:2", "2000");

    J = &ja;
    la = opts(f, &f->st, frozen_rc, &oa);
    la.create = 1;
    la.trigger = "schedule";
    la.scheduled_for_ms = 1795000000000LL;
    start(&la);
    {
        uint64_t end = time_mono_us() + 5000000;
        while (!ja.starts && time_mono_us() < end)
            th_run_for(&f->loop, 10);
    }
    assert_int_equal(ja.starts, 1);
    run_id = ja.run_id;
    th_run_for(&f->loop, 300);
    alert_stats_get(&as0);
    th_proxy_freeze(&px, 1);
    freeze_at = time_mono_us();
    assert_true(th_run_until(&f->loop, &oa.done, 5000));
    lost_at = time_mono_us();
    assert_int_equal(oa.r.status, LEADER_LOST);
    assert_string_equal(oa.error, "lease expired");
    assert_int_equal(ja.stops, 1);
    assert_string_equal(ja.stop_reason, "lease expired");
    assert_int_equal(oa.ev[LEADER_EV_LOST], 1);
    assert_true(lost_at - freeze_at < 1500000 + 400000); /* lease 1500 ms + slack */
    alert_stats_get(&as1);
    assert_int_equal(as1.raised, as0.raised + 1); /* lock_lost */
    /* the run stays resumable: running under the lost token, not finished */
    run_col(f, run_id, "state || ' ' || attempt", s, sizeof(s));
    assert_string_equal(s, "running 1");
    /* the old key still lives in Redis (the lease ended first) */
    assert_true(th_redis_get(f->direct, f->key, v, sizeof(v)) > 0);

    /* a standby waiting for the lock takes over once the key expires and
     * resumes the same run */
    J = &jb;
    lb = opts(f, &sb, NULL, &ob);
    lb.wait = 1;
    start(&lb);
    assert_true(th_run_until(&f->loop, &ob.done, 10000));
    assert_int_equal(ob.r.status, LEADER_DONE);
    assert_int_equal(ob.r.run_id, run_id);
    assert_int_equal(ob.r.attempt, 2);
    assert_true(ob.ev[LEADER_EV_WAITING] >= 1);
    run_col(f, run_id, "state || ' ' || attempt || ' ' || leader_instance", s, sizeof(s));
    assert_string_equal(s, "succeeded 2 leader-b:2");

    th_proxy_freeze(&px, 0);
    closed = 0;
    redis_close(frozen_rc, on_closed, NULL);
    th_run_until(&f->loop, &closed, 5000);
    closed = 0;
    th_proxy_stop(&px);
    tjob_close(&f->loop, &ja);
    tjob_close(&f->loop, &jb);
}

static void test_fenced_out_mid_run(void **state)
{
    fixture *f = *state;
    tjob j = {.mode = J_FOREVER};
    outcome o = {0};
    leader_opts lo = opts(f, &f->st, NULL, &o);
    char s[256], v[160];

    J = &j;
    lo.create = 1;
    lo.trigger = "cli";
    start(&lo);
    {
        uint64_t end = time_mono_us() + 5000000;
        while (!j.starts && time_mono_us() < end)
            th_run_for(&f->loop, 10);
    }
    assert_int_equal(j.starts, 1);
    /* a successor's claim, as if Redis had lost our key */
    th_pg_str(f->db, s, sizeof(s),
              "UPDATE leader_fence SET token = token + 100, instance = 'usurper' WHERE env = '%s' "
              "RETURNING token",
              f->env);
    assert_true(th_run_until(&f->loop, &o.done, 5000));
    assert_int_equal(o.r.status, LEADER_FENCED);
    assert_int_equal(j.stops, 1);
    assert_string_equal(j.stop_reason, "fenced out");
    assert_int_equal(j.lease_went_invalid, 0);
    run_col(f, j.run_id, "state", s, sizeof(s));
    assert_string_equal(s, "running"); /* the successor will abandon and resume it */
    /* our own key was given back (compare-and-delete) */
    assert_int_equal(th_redis_get(f->direct, f->key, v, sizeof(v)), -2);
    tjob_close(&f->loop, &j);
}

/* The job itself reports a stale fenced write. */
static void job_fences_out(uv_timer_t *t)
{
    tjob *j = t->data;
    if (j->run)
        j->run->fenced_out(j->run);
}

static void test_job_reports_fenced_out(void **state)
{
    fixture *f = *state;
    tjob j = {.mode = J_FOREVER, .sync_finish_on_stop = 1};
    outcome o = {0};
    leader_opts lo = opts(f, &f->st, NULL, &o);
    uv_timer_t t;

    J = &j;
    lo.create = 1;
    lo.trigger = "cli";
    lo.heartbeat_ms = 60000; /* only the job can notice */
    start(&lo);
    {
        uint64_t end = time_mono_us() + 5000000;
        while (!j.starts && time_mono_us() < end)
            th_run_for(&f->loop, 10);
    }
    uv_timer_init(&f->loop, &t);
    t.data = &j;
    uv_timer_start(&t, job_fences_out, 50, 0);
    assert_true(th_run_until(&f->loop, &o.done, 5000));
    uv_close((uv_handle_t *)&t, NULL);
    th_run_for(&f->loop, 5); /* t lives on this stack: let its close finish */
    assert_int_equal(o.r.status, LEADER_FENCED);
    assert_int_equal(j.stops, 1);
    tjob_close(&f->loop, &j);
}

static void test_job_ignores_stop(void **state)
{
    fixture *f = *state;
    tjob j = {.mode = J_IGNORE_STOP};
    outcome o = {0};
    leader_opts lo = opts(f, &f->st, NULL, &o);
    leader_session *s;
    char col[128], v[160];
    uint64_t t0;

    J = &j;
    lo.create = 1;
    lo.trigger = "cli";
    lo.stop_timeout_ms = 300;
    s = start(&lo);
    {
        uint64_t end = time_mono_us() + 5000000;
        while (!j.starts && time_mono_us() < end)
            th_run_for(&f->loop, 10);
    }
    t0 = time_mono_us();
    leader_session_shutdown(s, "SIGTERM");
    leader_session_shutdown(s, "again"); /* harmless */
    assert_true(th_run_until(&f->loop, &o.done, 5000));
    assert_true(time_mono_us() - t0 < 1500000);
    assert_int_equal(o.r.status, LEADER_SHUTDOWN);
    assert_string_equal(o.error, "job did not stop in time");
    run_col(f, j.run_id, "state", col, sizeof(col));
    assert_string_equal(col, "abandoned");
    assert_int_equal(th_redis_get(f->direct, f->key, v, sizeof(v)), -2);
    /* the job finally stops: the session's memory is released then (ASan
     * checks this is neither a leak nor a use after free) */
    assert_non_null(j.run);
    assert_int_equal(j.run->lease_valid(j.run), 0);
    tjob_end(&j, NULL, "late");
    tjob_close(&f->loop, &j);
}

static void test_fire_already_done(void **state)
{
    fixture *f = *state;
    tjob j = {.mode = J_FINISH, .finish_after_ms = 50, .final_state = "partial"};
    outcome o1 = {0}, o2 = {0};
    leader_opts lo = opts(f, &f->st, NULL, &o1);
    alert_stats a0, a1;

    J = &j;
    lo.create = 1;
    lo.trigger = "schedule";
    lo.scheduled_for_ms = 1795003600000LL;
    alert_stats_get(&a0);
    start(&lo);
    assert_true(th_run_until(&f->loop, &o1.done, 10000));
    assert_int_equal(o1.r.status, LEADER_DONE);
    assert_string_equal(o1.state, "partial");
    alert_stats_get(&a1);
    assert_int_equal(a1.raised, a0.raised + 1); /* run_failed for partial */

    lo = opts(f, &f->st, NULL, &o2);
    lo.create = 1;
    lo.trigger = "schedule";
    lo.scheduled_for_ms = 1795003600000LL;
    start(&lo);
    assert_true(th_run_until(&f->loop, &o2.done, 10000));
    assert_int_equal(o2.r.status, LEADER_DONE);
    assert_int_equal(o2.r.already_done, 1);
    assert_int_equal(o2.r.runs_done, 0);
    assert_int_equal(o2.r.run_id, o1.r.run_id);
    assert_string_equal(o2.state, "partial");
    assert_int_equal(j.starts, 1);
    tjob_close(&f->loop, &j);
}

static void test_resume_then_requested(void **state)
{
    fixture *f = *state;
    tjob ja = {.mode = J_FOREVER},
         jb = {.mode = J_FINISH, .finish_after_ms = 50, .final_state = "succeeded"};
    outcome oa = {0}, ob = {0};
    leader_opts la = opts(f, &f->st, NULL, &oa), lb;
    leader_session *sa;
    const char *corps[] = {"only-this"};
    char s[128];
    long long old_run;

    J = &ja;
    la.create = 1;
    la.trigger = "manual";
    sa = start(&la);
    {
        uint64_t end = time_mono_us() + 5000000;
        while (!ja.starts && time_mono_us() < end)
            th_run_for(&f->loop, 10);
    }
    old_run = ja.run_id;
    leader_session_shutdown(sa, "restart");
    assert_true(th_run_until(&f->loop, &oa.done, 5000));

    J = &jb;
    lb = opts(f, &f->st, NULL, &ob);
    lb.create = 1;
    lb.trigger = "cli";
    lb.corp_ids = corps;
    lb.ncorp_ids = 1;
    start(&lb);
    assert_true(th_run_until(&f->loop, &ob.done, 10000));
    assert_int_equal(ob.r.status, LEADER_DONE);
    assert_int_equal(ob.r.runs_done, 2);
    assert_int_equal(jb.starts, 2);
    assert_true(ob.r.run_id != old_run);
    assert_string_equal(jb.corp0, "only-this"); /* the last run was ours */
    run_col(f, old_run, "state || ' ' || attempt", s, sizeof(s));
    assert_string_equal(s, "succeeded 2");
    run_col(f, ob.r.run_id, "state || ' ' || trigger || ' ' || corp_ids::text", s, sizeof(s));
    assert_string_equal(s, "succeeded cli {only-this}");
    tjob_close(&f->loop, &ja);
    tjob_close(&f->loop, &jb);
}

/* Redis lost its data: the fencing counter starts again below the fence row.
 * The session raises the counter and leads with a token above the row. */
static void test_fence_counter_repair(void **state)
{
    fixture *f = *state;
    tjob j = {.mode = J_FINISH, .finish_after_ms = 20, .final_state = "succeeded"};
    outcome o1 = {0}, o2 = {0};
    leader_opts lo;
    char fk[256], v[64];
    redisReply *rr;

    J = &j;
    th_pg_str(f->db, v, sizeof(v),
              "INSERT INTO leader_fence (env, job, token, instance) VALUES ('%s', '%s', 41, "
              "'old-life') RETURNING token",
              f->env, JOB);
    lock_fence_key(f->env, JOB, fk, sizeof(fk));
    rr = redisCommand(f->direct, "DEL %s", fk);
    freeReplyObject(rr);

    lo = opts(f, &f->st, NULL, &o1);
    lo.create = 1;
    lo.trigger = "cli";
    start(&lo);
    assert_true(th_run_until(&f->loop, &o1.done, 10000));
    assert_int_equal(o1.r.status, LEADER_DONE);
    assert_string_equal(o1.state, "succeeded");
    assert_int_equal(o1.r.fencing_token, 42);
    assert_int_equal(o1.ev[LEADER_EV_ACQUIRED], 2); /* token 1 refused, then 42 */
    th_redis_get(f->direct, fk, v, sizeof(v));
    assert_string_equal(v, "42");
    th_pg_str(f->db, v, sizeof(v), "SELECT token FROM leader_fence WHERE env = '%s'", f->env);
    assert_string_equal(v, "42");

    /* a counter already above the row is left alone: no refusal, no repair */
    th_pg_str(f->db, v, sizeof(v),
              "UPDATE leader_fence SET token = 1000 WHERE env = '%s' RETURNING token", f->env);
    rr = redisCommand(f->direct, "SET %s 5000", fk);
    freeReplyObject(rr);
    lo = opts(f, &f->st, NULL, &o2);
    lo.create = 1;
    lo.trigger = "cli";
    start(&lo);
    assert_true(th_run_until(&f->loop, &o2.done, 10000));
    assert_int_equal(o2.r.status, LEADER_DONE);
    assert_int_equal(o2.r.fencing_token, 5001);
    assert_int_equal(o2.ev[LEADER_EV_ACQUIRED], 1);
    th_redis_get(f->direct, fk, v, sizeof(v));
    assert_string_equal(v, "5001");
    tjob_close(&f->loop, &j);
}

typedef struct info_rec {
    int calls, is_null;
    char instance[160], err[128];
    long long token, since, pttl;
} info_rec;

static void on_info(void *arg, const leader_info *i, const char *err)
{
    info_rec *r = arg;
    r->calls++;
    snprintf(r->err, sizeof(r->err), "%s", err ? err : "");
    if (!i)
        return;
    r->is_null = i->instance == NULL;
    snprintf(r->instance, sizeof(r->instance), "%s", i->instance ? i->instance : "");
    r->token = i->fencing_token;
    r->since = i->since_ms;
    r->pttl = i->pttl_ms;
}

static void test_leader_lookup(void **state)
{
    fixture *f = *state;
    tjob j = {.mode = J_FOREVER, .sync_finish_on_stop = 1};
    outcome o = {0};
    leader_opts lo = opts(f, &f->st, NULL, &o);
    leader_session *s;
    info_rec r = {0};
    uint64_t wall = time_wall_ms();

    assert_int_equal(leader_lookup(f->redis, f->pg, f->env, JOB, on_info, &r), 0);
    assert_true(th_run_until(&f->loop, &r.calls, 5000));
    assert_string_equal(r.err, "");
    assert_int_equal(r.is_null, 1);

    J = &j;
    lo.create = 1;
    lo.trigger = "cli";
    s = start(&lo);
    {
        uint64_t end = time_mono_us() + 5000000;
        while (!j.starts && time_mono_us() < end)
            th_run_for(&f->loop, 10);
    }
    memset(&r, 0, sizeof(r));
    assert_int_equal(leader_lookup(f->redis, f->pg, f->env, JOB, on_info, &r), 0);
    assert_true(th_run_until(&f->loop, &r.calls, 5000));
    assert_string_equal(r.instance, "leader-a:1");
    assert_int_equal(r.token, j.token);
    assert_true(r.since >= (long long)wall - 2000 && r.since <= (long long)time_wall_ms() + 2000);
    assert_true(r.pttl > 0);
    {
        lock_stats ps;
        lock_process_stats(&ps);
        assert_int_equal(ps.held, 1);
        assert_int_equal(ps.token, j.token);
        assert_true(ps.lease_left_ms > 0);
    }
    leader_session_shutdown(s, "done");
    assert_true(th_run_until(&f->loop, &o.done, 5000));
    tjob_close(&f->loop, &j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_run_to_success, setup, teardown),
        cmocka_unit_test_setup_teardown(test_busy_wait_shutdown_resume, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_lost_mid_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fenced_out_mid_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_job_reports_fenced_out, setup, teardown),
        cmocka_unit_test_setup_teardown(test_job_ignores_stop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fire_already_done, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_then_requested, setup, teardown),
        cmocka_unit_test_setup_teardown(test_leader_lookup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fence_counter_repair, setup, teardown),
    };

    log_init(LOG_WARN, 0, "test_leader", 0);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
