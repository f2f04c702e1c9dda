/* Run rows and fencing against a real PostgreSQL: duplicate creates, claim and
 * resume (attempt+1, same run_id), heartbeat, finish, abandon, NOTIFY, and the
 * fence: a stale token writes nothing, a late older token never lowers it, and a
 * successor's claim waits for a stale leader's write already under way. */
#include "tests/integration/coord_helpers.h"

#include "common/log.h"
#include "common/pg.h"
#include "coordinator/fence.h"
#include "coordinator/runs.h"

#define JOB "directory-sync"

typedef struct fixture {
    uv_loop_t loop;
    pg_pool *pg;
    PGconn *db;
    char env[64];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    const char *dsn = th_env_or_fail("ORGSYNC_TEST_PG_DSN");

    uv_loop_init(&f->loop);
    f->pg = pg_pool_new(&f->loop, &(pg_pool_opts){.dsn = dsn, .size = 3});
    assert_non_null(f->pg);
    f->db = th_pg_connect(dsn);
    th_unique(f->env, sizeof(f->env), "truns");
    *state = f;
    return 0;
}

static int pool_closed;
static void on_pool_closed(void *arg)
{
    (void)arg;
    pool_closed = 1;
}

static int teardown(void **state)
{
    fixture *f = *state;

    pool_closed = 0;
    pg_pool_close(f->pg, on_pool_closed, NULL);
    th_run_until(&f->loop, &pool_closed, 5000);
    assert_int_equal(pool_closed, 1);
    PQfinish(f->db);
    th_loop_finish(&f->loop);
    free(f);
    return 0;
}

/* ---- callback recorders ------------------------------------------------ */

typedef struct created {
    int calls, created;
    long long run_id;
    char state[16], err[256];
} created;

static void on_created(void *arg, const runs_created *r, const char *err)
{
    created *c = arg;
    c->calls++;
    snprintf(c->err, sizeof(c->err), "%s", err ? err : "");
    if (r) {
        c->created = r->created;
        c->run_id = r->run_id;
        snprintf(c->state, sizeof(c->state), "%s", r->state);
    }
}

typedef struct written {
    int calls, held;
    char err[256];
} written;

static void on_written(void *arg, int held, const char *err)
{
    written *w = arg;
    w->calls++;
    w->held = held;
    snprintf(w->err, sizeof(w->err), "%s", err ? err : "");
}

typedef struct claimed {
    int calls, held, got;
    long long run_id, sched_ms;
    int attempt, ncorps;
    char prev[16], trigger[16], corps[4][32], err[256];
} claimed;

static void on_claimed(void *arg, int held, const runs_claimed *r, const char *err)
{
    claimed *c = arg;
    int i;

    c->calls++;
    c->held = held;
    c->got = r != NULL;
    snprintf(c->err, sizeof(c->err), "%s", err ? err : "");
    if (!r)
        return;
    c->run_id = r->run_id;
    c->attempt = r->attempt;
    c->sched_ms = r->scheduled_for_ms;
    snprintf(c->prev, sizeof(c->prev), "%s", r->prev_state);
    snprintf(c->trigger, sizeof(c->trigger), "%s", r->trigger);
    c->ncorps = r->ncorp_ids;
    for (i = 0; i < r->ncorp_ids && i < 4; i++)
        snprintf(c->corps[i], sizeof(c->corps[i]), "%s", r->corp_ids[i]);
}

/* ---- synchronous wrappers (run the loop until the callback) ------------ */

static created do_create(fixture *f, const char *trigger, long long sched_ms,
                         const char *const *corps, int ncorps)
{
    created c = {0};
    runs_new rq = {.env = f->env,
                   .job = JOB,
                   .trigger = trigger,
                   .scheduled_for_ms = sched_ms,
                   .corp_ids = corps,
                   .ncorp_ids = ncorps};

    assert_int_equal(runs_create(f->pg, &rq, on_created, &c), 0);
    assert_true(th_run_until(&f->loop, &c.calls, 10000));
    assert_string_equal(c.err, "");
    return c;
}

static runs_leader leader(fixture *f, long long token, const char *inst)
{
    runs_leader ld = {
        .env = f->env, .job = JOB, .token = token, .instance = inst, .code_version = "test-1"};
    return ld;
}

static int do_fence(fixture *f, long long token, const char *inst)
{
    runs_leader ld = leader(f, token, inst);
    written w = {0};

    assert_int_equal(runs_fence_claim(f->pg, &ld, on_written, &w), 0);
    assert_true(th_run_until(&f->loop, &w.calls, 10000));
    assert_string_equal(w.err, "");
    return w.held;
}

static claimed do_claim(fixture *f, long long token, const char *inst, long long run_id)
{
    runs_leader ld = leader(f, token, inst);
    claimed c = {0};

    assert_int_equal(runs_claim(f->pg, &ld, run_id, on_claimed, &c), 0);
    assert_true(th_run_until(&f->loop, &c.calls, 10000));
    return c;
}

static written do_heartbeat(fixture *f, long long token, long long run_id)
{
    runs_leader ld = leader(f, token, "x");
    written w = {0};

    assert_int_equal(runs_heartbeat(f->pg, &ld, run_id, on_written, &w), 0);
    assert_true(th_run_until(&f->loop, &w.calls, 10000));
    return w;
}

static written do_finish(fixture *f, long long token, long long run_id, const char *state,
                         const char *error)
{
    runs_leader ld = leader(f, token, "x");
    written w = {0};

    assert_int_equal(runs_finish(f->pg, &ld, run_id, state, error, on_written, &w), 0);
    assert_true(th_run_until(&f->loop, &w.calls, 10000));
    return w;
}

static void row(fixture *f, long long run_id, const char *col, char *out, size_t len)
{
    th_pg_str(f->db, out, len, "SELECT %s FROM sync_runs WHERE run_id = %lld", col, run_id);
}

/* ---- tests ------------------------------------------------------------- */

static void test_create_duplicates(void **state)
{
    fixture *f = *state;
    long long fire = 1795000000000LL, fire2 = fire + 86400000LL;
    created a, b, c, d, e;
    char s[64];

    a = do_create(f, "manual", 0, NULL, 0);
    assert_int_equal(a.created, 1);
    assert_string_equal(a.state, "pending");
    /* a second request while one is unfinished finds that one */
    b = do_create(f, "cli", 0, NULL, 0);
    assert_int_equal(b.created, 0);
    assert_int_equal(b.run_id, a.run_id);
    c = do_create(f, "schedule", fire, NULL, 0);
    assert_int_equal(c.created, 0);
    assert_int_equal(c.run_id, a.run_id);
    assert_int_equal(th_pg_ll(f->db, "SELECT count(*) FROM sync_runs WHERE env = '%s'", f->env), 1);

    assert_int_equal(do_fence(f, 1, "l1"), 1);
    assert_int_equal(do_claim(f, 1, "l1", 0).run_id, a.run_id);
    assert_int_equal(do_finish(f, 1, a.run_id, "succeeded", NULL).held, 1);

    /* the fire now gets its own run, once */
    d = do_create(f, "schedule", fire, NULL, 0);
    assert_int_equal(d.created, 1);
    assert_true(d.run_id != a.run_id);
    row(f, d.run_id, "(extract(epoch FROM scheduled_for) * 1000)::bigint", s, sizeof(s));
    assert_int_equal(strtoll(s, NULL, 10), fire);
    e = do_create(f, "schedule", fire, NULL, 0);
    assert_int_equal(e.created, 0);
    assert_int_equal(e.run_id, d.run_id);
    assert_int_equal(do_claim(f, 1, "l1", d.run_id).run_id, d.run_id);
    assert_int_equal(do_finish(f, 1, d.run_id, "failed", "boom").held, 1);
    /* the same fire after it ran: the finished run, not a new one */
    e = do_create(f, "schedule", fire, NULL, 0);
    assert_int_equal(e.created, 0);
    assert_int_equal(e.run_id, d.run_id);
    assert_string_equal(e.state, "failed");

    /* five fires of the same instant at once: one row */
    {
        created cs[5];
        runs_new rq = {.env = f->env, .job = JOB, .trigger = "schedule", .scheduled_for_ms = fire2};
        int i, made = 0;

        memset(cs, 0, sizeof(cs));
        for (i = 0; i < 5; i++)
            assert_int_equal(runs_create(f->pg, &rq, on_created, &cs[i]), 0);
        for (i = 0; i < 5; i++) {
            assert_true(th_run_until(&f->loop, &cs[i].calls, 10000));
            assert_string_equal(cs[i].err, "");
            made += cs[i].created;
            assert_int_equal(cs[i].run_id, cs[0].run_id);
        }
        assert_int_equal(made, 1);
    }
    assert_int_equal(th_pg_ll(f->db, "SELECT count(*) FROM sync_runs WHERE env = '%s'", f->env), 3);
    /* bad trigger is refused before anything is sent */
    {
        created x = {0};
        runs_new rq = {.env = f->env, .job = JOB, .trigger = "cron"};
        assert_int_equal(runs_create(f->pg, &rq, on_created, &x), PG_EINVAL);
    }
}

static void test_claim_resume_finish(void **state)
{
    fixture *f = *state;
    const char *corps[] = {"wwcorpA", "we\"ird\\id"};
    created a;
    claimed c1, c2, none;
    written w;
    char s[128], hb_before[64], hb_after[64];

    a = do_create(f, "cli", 0, corps, 2);
    assert_int_equal(a.created, 1);

    /* leader 1 */
    assert_int_equal(do_fence(f, 10, "host1:1"), 1);
    c1 = do_claim(f, 10, "host1:1", 0);
    assert_int_equal(c1.held, 1);
    assert_int_equal(c1.got, 1);
    assert_int_equal(c1.run_id, a.run_id);
    assert_int_equal(c1.attempt, 1);
    assert_string_equal(c1.prev, "pending");
    assert_string_equal(c1.trigger, "cli");
    assert_int_equal(c1.ncorps, 2);
    assert_string_equal(c1.corps[0], "wwcorpA");
    assert_string_equal(c1.corps[1], "we\"ird\\id");
    row(f, a.run_id,
        "state || ' ' || leader_instance || ' ' || fencing_token || ' ' || code_version", s,
        sizeof(s));
    assert_string_equal(s, "running host1:1 10 test-1");
    w = do_heartbeat(f, 10, a.run_id);
    assert_int_equal(w.held, 1);
    assert_string_equal(w.err, "");
    /* nothing else to claim while it runs under our own token */
    none = do_claim(f, 10, "host1:1", 0);
    assert_int_equal(none.held, 1);
    assert_int_equal(none.got, 0);

    /* leader 1 vanishes; leader 2 takes the fence and resumes the same run */
    assert_int_equal(do_fence(f, 11, "host2:2"), 1);
    row(f, a.run_id, "heartbeat_at::text", hb_before, sizeof(hb_before));
    c2 = do_claim(f, 11, "host2:2", 0);
    assert_int_equal(c2.held, 1);
    assert_int_equal(c2.run_id, a.run_id);
    assert_int_equal(c2.attempt, 2);
    assert_string_equal(c2.prev, "abandoned");
    assert_int_equal(c2.ncorps, 2);
    row(f, a.run_id, "state || ' ' || leader_instance || ' ' || fencing_token || ' ' || attempt", s,
        sizeof(s));
    assert_string_equal(s, "running host2:2 11 2");
    row(f, a.run_id, "heartbeat_at::text", hb_before, sizeof(hb_before));

    /* the stale leader's writes change nothing and tell it so */
    usleep(20000);
    w = do_heartbeat(f, 10, a.run_id);
    assert_int_equal(w.held, 0);
    assert_string_equal(w.err, "");
    w = do_finish(f, 10, a.run_id, "succeeded", NULL);
    assert_int_equal(w.held, 0);
    row(f, a.run_id, "state", s, sizeof(s));
    assert_string_equal(s, "running");
    row(f, a.run_id, "heartbeat_at::text", hb_after, sizeof(hb_after));
    assert_string_equal(hb_after, hb_before);

    /* a stale claim cannot take the run back either */
    none = do_claim(f, 10, "host1:1", 0);
    assert_int_equal(none.held, 0);
    assert_int_equal(none.got, 0);

    w = do_finish(f, 11, a.run_id, "partial", "corp X failed");
    assert_int_equal(w.held, 1);
    assert_string_equal(w.err, "");
    row(f, a.run_id, "state || ' ' || error || ' ' || (finished_at IS NOT NULL)", s, sizeof(s));
    assert_string_equal(s, "partial corp X failed true");
    /* finishing twice: the row is no longer running under this token */
    w = do_finish(f, 11, a.run_id, "succeeded", NULL);
    assert_int_equal(w.held, 1);
    assert_string_not_equal(w.err, "");
    row(f, a.run_id, "state", s, sizeof(s));
    assert_string_equal(s, "partial");
}

typedef struct found {
    int calls;
    long long run_id;
    int attempt;
    char state[16], leader[64], err[128];
} found;

static void on_found(void *arg, const runs_resumable *r, const char *err)
{
    found *x = arg;
    x->calls++;
    snprintf(x->err, sizeof(x->err), "%s", err ? err : "");
    if (r) {
        x->run_id = r->run_id;
        x->attempt = r->attempt;
        snprintf(x->state, sizeof(x->state), "%s", r->state ? r->state : "");
        snprintf(x->leader, sizeof(x->leader), "%s", r->leader_instance ? r->leader_instance : "");
    }
}

static found do_find(fixture *f)
{
    found x = {0};
    assert_int_equal(runs_find_resumable(f->pg, f->env, JOB, on_found, &x), 0);
    assert_true(th_run_until(&f->loop, &x.calls, 10000));
    assert_string_equal(x.err, "");
    return x;
}

static void test_abandon_and_find(void **state)
{
    fixture *f = *state;
    created a;
    claimed c;
    written w = {0};
    found x;
    runs_leader ld = leader(f, 3, "h:3");
    char s[128];

    x = do_find(f);
    assert_int_equal(x.run_id, 0);
    a = do_create(f, "manual", 0, NULL, 0);
    x = do_find(f);
    assert_int_equal(x.run_id, a.run_id);
    assert_string_equal(x.state, "pending");
    assert_int_equal(do_fence(f, 3, "h:3"), 1);
    c = do_claim(f, 3, "h:3", a.run_id);
    assert_int_equal(c.attempt, 1);
    assert_int_equal(runs_abandon(f->pg, &ld, a.run_id, "shutting down", on_written, &w), 0);
    assert_true(th_run_until(&f->loop, &w.calls, 10000));
    assert_int_equal(w.held, 1);
    row(f, a.run_id, "state || ' ' || error", s, sizeof(s));
    assert_string_equal(s, "abandoned shutting down");
    x = do_find(f);
    assert_int_equal(x.run_id, a.run_id);
    assert_string_equal(x.state, "abandoned");
    assert_string_equal(x.leader, "h:3");
    assert_int_equal(x.attempt, 1);
    c = do_claim(f, 3, "h:3", 0);
    assert_int_equal(c.run_id, a.run_id);
    assert_int_equal(c.attempt, 2);
    assert_string_equal(c.prev, "abandoned");
    assert_int_equal(do_finish(f, 3, a.run_id, "succeeded", NULL).held, 1);
    x = do_find(f);
    assert_int_equal(x.run_id, 0);
}

static void test_fence_only_rises(void **state)
{
    fixture *f = *state;
    char s[64];

    assert_int_equal(do_fence(f, 5, "a:5"), 1);
    assert_int_equal(do_fence(f, 7, "b:7"), 1);
    /* a late claim with an older token never lowers the fence */
    assert_int_equal(do_fence(f, 6, "c:6"), 0);
    assert_int_equal(do_fence(f, 5, "a:5"), 0);
    assert_int_equal(do_fence(f, 7, "b:7"), 0); /* not even the same one twice */
    th_pg_str(f->db, s, sizeof(s),
              "SELECT token || ' ' || instance FROM leader_fence WHERE env = '%s' AND job = '%s'",
              f->env, JOB);
    assert_string_equal(s, "7 b:7");
}

/* A stale leader's write already under way holds the fence row FOR SHARE: the
 * successor's claim waits for it, and once the claim is in, the stale leader's
 * next write finds the fence gone and changes nothing. */
static void test_fence_waits_for_write_under_way(void **state)
{
    fixture *f = *state;
    const char *dsn = th_env_or_fail("ORGSYNC_TEST_PG_DSN");
    PGconn *stale = th_pg_connect(dsn), *succ = th_pg_connect(dsn);
    char sql[1024], out[64];
    PGresult *r;
    created a;
    int i, busy = 1;

    a = do_create(f, "manual", 0, NULL, 0);
    assert_int_equal(do_fence(f, 20, "stale:20"), 1);
    assert_int_equal(do_claim(f, 20, "stale:20", 0).run_id, a.run_id);

    /* the stale leader's fenced write, in an open transaction */
    th_pg_exec(stale, "BEGIN", NULL, 0);
    snprintf(sql, sizeof(sql),
             "WITH " FENCE_CTE ", u AS (UPDATE sync_runs SET error = 'stale write' WHERE run_id = "
             "$4::bigint AND EXISTS (SELECT 1 FROM fence) RETURNING 1) SELECT EXISTS (SELECT 1 "
             "FROM fence) AS fenced, (SELECT count(*) FROM u)");
    {
        char id[24];
        const char *p[4] = {f->env, JOB, "20", id};
        snprintf(id, sizeof(id), "%lld", a.run_id);
        r = PQexecParams(stale, sql, 4, NULL, p, NULL, NULL, 0);
        assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
        assert_string_equal(PQgetvalue(r, 0, 0), "t");
        assert_string_equal(PQgetvalue(r, 0, 1), "1");
        PQclear(r);
    }
    /* the successor's claim blocks on the shared row lock */
    {
        const char *p[4] = {f->env, JOB, "21", "succ:21"};
        assert_int_equal(PQsendQueryParams(succ, FENCE_CLAIM_SQL, 4, NULL, p, NULL, NULL, 0), 1);
    }
    for (i = 0; i < 30; i++) {
        usleep(10000);
        PQconsumeInput(succ);
        if (!PQisBusy(succ)) {
            busy = 0;
            break;
        }
    }
    assert_int_equal(busy, 1);
    th_pg_exec(stale, "COMMIT", NULL, 0);
    r = PQgetResult(succ);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_int_equal(PQntuples(r), 1);
    assert_string_equal(PQgetvalue(r, 0, 0), "21");
    PQclear(r);
    while ((r = PQgetResult(succ)))
        PQclear(r);

    /* the write that committed first stays; the next stale write is refused */
    row(f, a.run_id, "error", out, sizeof(out));
    assert_string_equal(out, "stale write");
    {
        char id[24];
        const char *p[4] = {f->env, JOB, "20", id};
        snprintf(id, sizeof(id), "%lld", a.run_id);
        r = PQexecParams(stale, sql, 4, NULL, p, NULL, NULL, 0);
        assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
        assert_string_equal(PQgetvalue(r, 0, 0), "f");
        assert_string_equal(PQgetvalue(r, 0, 1), "0");
        PQclear(r);
    }
    assert_int_equal(do_heartbeat(f, 20, a.run_id).held, 0);
    assert_int_equal(do_heartbeat(f, 21, a.run_id).held, 1); /* held, but not its run yet */
    PQfinish(stale);
    PQfinish(succ);
}

typedef struct notified {
    int calls;
    char channel[80], payload[32];
} notified;

static void on_notify(void *arg, const char *channel, const char *payload)
{
    notified *n = arg;
    n->calls++;
    snprintf(n->channel, sizeof(n->channel), "%s", channel);
    snprintf(n->payload, sizeof(n->payload), "%s", payload ? payload : "");
}

static int listen_ready_flag(fixture *f)
{
    uint64_t end = time_mono_us() + 5000000;
    while (!pg_listen_ready(f->pg) && time_mono_us() < end)
        th_run_for(&f->loop, 10);
    return pg_listen_ready(f->pg);
}

static void test_request_now_notifies(void **state)
{
    fixture *f = *state;
    char channel[64], want[32];
    notified n = {0};
    created c = {0}, d = {0};
    runs_new rq = {.env = f->env, .job = JOB, .trigger = "manual"};

    assert_int_equal(runs_channel(f->env, channel, sizeof(channel)), 0);
    assert_true(strncmp(channel, "orgsync_runs_", 13) == 0);
    assert_int_equal(pg_listen(f->pg, channel, on_notify, &n), 0);
    assert_true(listen_ready_flag(f));
    assert_int_equal(runs_request_now(f->pg, &rq, on_created, &c), 0);
    assert_true(th_run_until(&f->loop, &c.calls, 10000));
    assert_int_equal(c.created, 1);
    assert_true(th_run_until(&f->loop, &n.calls, 5000));
    snprintf(want, sizeof(want), "%lld", c.run_id);
    assert_string_equal(n.payload, want);
    assert_string_equal(n.channel, channel);
    /* a second request answers the same run and still wakes the leader */
    assert_int_equal(runs_request_now(f->pg, &rq, on_created, &d), 0);
    assert_true(th_run_until(&f->loop, &d.calls, 10000));
    assert_int_equal(d.created, 0);
    assert_int_equal(d.run_id, c.run_id);
    assert_true(th_run_until(&f->loop, &n.calls, 5000) && n.calls >= 1);
    {
        uint64_t end = time_mono_us() + 5000000;
        while (n.calls < 2 && time_mono_us() < end)
            th_run_for(&f->loop, 10);
    }
    assert_int_equal(n.calls, 2);
    /* long environment names still give a valid channel (63 bytes at most) */
    {
        char env[64], ch[64];
        memset(env, 'e', 63);
        env[63] = '\0';
        assert_int_equal(runs_channel(env, ch, sizeof(ch)), 0);
        assert_true(strlen(ch) <= 63);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_duplicates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claim_resume_finish, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abandon_and_find, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fence_only_rises, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fence_waits_for_write_under_way, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_now_notifies, setup, teardown),
    };

    log_init(LOG_WARN, 0, "test_runs", 0);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
