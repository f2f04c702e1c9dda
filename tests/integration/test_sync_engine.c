/* The directory sync job against the simulator, real PostgreSQL and Redis: the
 * mirror equals GET /sim/org, pacing holds, tokens expiring mid-run, failing and
 * vanished departments, malformed answers, bans, the daily quota, resume from
 * checkpoints, fencing and a lost lease. The job runs as a leader session would
 * run it: a leader_fence row and a 'running' run row made here. */
#include "tests/integration/sync_helpers.h"

#include "common/alert.h"
#include "common/timeutil.h"
#include "worker/wecom/wecom.h"

#include <hiredis/hiredis.h>
#include <stdarg.h>

static char g_log_path[512];

/* Log lines go to a file the tests grep (alerts are log lines). */
static int log_contains(const char *needle)
{
    FILE *f = fopen(g_log_path, "r");
    char line[4096];
    int found = 0;
    if (!f)
        return 0;
    while (!found && fgets(line, sizeof(line), f))
        found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

static void log_truncate(void)
{
    FILE *f = fopen(g_log_path, "w");
    if (f)
        fclose(f);
}

typedef struct fixture {
    sh_db db;
    sh_sim sim;
    PGconn *pg;
    char env[48];
    sh_kv kv[12];
    sh_run r;
} fixture;

/* A database, a simulator with flags, n enterprises, and a loop with clients.
 * extra_kv: more settings (NULL-terminated pairs), may be NULL. */
static void fx_up(fixture *f, const char *tag, const char *const *sim_args, int ncorps,
                  const sh_kv *extra_kv)
{
    int k = 0;
    static int seq;
    memset(f, 0, sizeof(*f));
    sh_db_create(&f->db, tag);
    sh_sim_start(&f->sim, sim_args);
    f->pg = sh_connect(f->db.dsn);
    sh_add_enterprises(f->pg, ncorps);
    snprintf(f->env, sizeof(f->env), "t%s%d_%d", tag, (int)getpid(), ++seq);
    f->kv[k++] = (sh_kv){"ORGSYNC_ENV", f->env};
    f->kv[k++] = (sh_kv){"ORGSYNC_PG_DSN", f->db.dsn};
    f->kv[k++] = (sh_kv){"ORGSYNC_REDIS_URL", sh_need_env("ORGSYNC_TEST_REDIS_URL")};
    f->kv[k++] = (sh_kv){"ORGSYNC_UPSTREAM_URL", f->sim.url};
    f->kv[k++] = (sh_kv){"ORGSYNC_INSTANCE", "test-sync"};
    for (int i = 0; extra_kv && extra_kv[i].k && k < 11; i++)
        f->kv[k++] = extra_kv[i];
    f->kv[k] = (sh_kv){NULL, NULL};
    sh_run_init(&f->r, f->kv);
}

static void fx_down(fixture *f)
{
    directory_sync_set_tuning(NULL);
    sh_run_close(&f->r);
    PQfinish(f->pg);
    sh_sim_stop(&f->sim);
    sh_db_drop(&f->db);
}

/* One whole run (fresh run row, token 1): returns its id. */
static long long fx_sync(fixture *f, const char *want_state)
{
    long long run = sh_make_run(f->pg, f->env, 1, NULL);
    sh_run_job(&f->r, run, 1, 1, NULL, 0, 60000);
    if (want_state && strcmp(f->r.state, want_state) != 0)
        fail_msg("run %lld ended '%s' (%s), expected '%s'", run, f->r.state, f->r.error,
                 want_state);
    sh_end_run(f->pg, run, f->r.state[0] ? f->r.state : "abandoned");
    return run;
}

static PGresult *progress_row(fixture *f, long long run, const char *corp)
{
    char id[24];
    const char *p[2] = {id, corp};
    snprintf(id, sizeof(id), "%lld", run);
    PGresult *r = sh_exec(f->pg,
                          "SELECT state, departments_total, departments_done, users_upserted, "
                          "users_deleted, requests, retries, errors, coalesce(last_error, '') "
                          "FROM sync_progress WHERE run_id = $1::bigint AND corp_id = $2",
                          2, p);
    if (PQntuples(r) != 1)
        fail_msg("no progress row for %s in run %lld", corp, run);
    return r;
}

/* Sum of today's quota counters of one enterprise in Redis. */
static long long quota_sum(fixture *f, const char *corp)
{
    static const char *const apis[] = {"gettoken", "department/list", "user/list", "user/get",
                                       "user/getuserid"};
    char host[256], pw[256], perr[128], day[9];
    int port, db;
    long long sum = 0;
    redisContext *c;

    assert_int_equal(redis_url_parse(f->r.s.redis_url, host, sizeof(host), &port, pw, sizeof(pw),
                                     &db, perr, sizeof(perr)),
                     0);
    c = redisConnect(host, port);
    assert_true(c && !c->err);
    if (db)
        freeReplyObject(redisCommand(c, "SELECT %d", db));
    wecom_quota_day(time(NULL), day);
    for (size_t i = 0; i < 5; i++) {
        redisReply *r =
            redisCommand(c, "GET orgsync:%s:quota:%s:%s:%s", f->env, corp, apis[i], day);
        if (r && r->type == REDIS_REPLY_STRING)
            sum += atoll(r->str);
        freeReplyObject(r);
    }
    redisFree(c);
    return sum;
}

/* The enterprise's progress row of the run says state, and its last_error
 * contains why (unless why is NULL). */
static void assert_ended(fixture *f, long long run, const char *corp, const char *state,
                         const char *why)
{
    PGresult *p = progress_row(f, run, corp);

    assert_string_equal(PQgetvalue(p, 0, 0), state);
    if (why && !strstr(PQgetvalue(p, 0, 8), why))
        fail_msg("%s: last_error \"%s\" does not say \"%s\"", corp, PQgetvalue(p, 0, 8), why);
    PQclear(p);
}

/* Makes PostgreSQL refuse (check_violation, with message) every row of corp
 * written into table, through a row trigger called name. */
static void fx_refuse(fixture *f, const char *name, const char *table, const char *corp,
                      const char *message)
{
    char sql[512];

    snprintf(sql, sizeof(sql),
             "CREATE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.corp_id = "
             "'%s' THEN RAISE EXCEPTION '%s' USING ERRCODE = 'check_violation'; END IF; RETURN "
             "NEW; END $$",
             name, corp, message);
    PQclear(sh_exec(f->pg, sql, 0, NULL));
    snprintf(sql, sizeof(sql),
             "CREATE TRIGGER %s BEFORE INSERT OR UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION %s()",
             name, table, name);
    PQclear(sh_exec(f->pg, sql, 0, NULL));
}

/* ---- tests ------------------------------------------------------------------------ */

/* A fresh mirror equals the upstream; the next sync applies removals, moves,
 * renames, added and removed departments; pacing and the in-flight cap hold. */
static void test_full_sync_then_mutations(void **state)
{
    const char *args[] = {"--enterprises",
                          "3",
                          "--departments",
                          "12",
                          "--users-per-dept",
                          "6",
                          "--latency-ms",
                          "15",
                          "--jitter-ms",
                          "10",
                          NULL};
    const sh_kv extra[] = {{"ORGSYNC_UPSTREAM_MAX_INFLIGHT", "2"}, {NULL, NULL}};
    fixture f;
    long long run;
    json_object *st, *mut;
    char corp[16], url[256];
    (void)state;

    fx_up(&f, "full", args, 3, extra);
    /* An extra empty department, removed again before the second sync. */
    sh_sim_post(&f.sim, "/sim/mutate",
                "{\"corp_id\":\"wwsim0001\",\"ops\":[{\"op\":\"add_dept\",\"parentid\":1,"
                "\"name\":\"临时部门\"}]}");
    run = fx_sync(&f, "succeeded");
    st = sh_sim_stats(&f.sim);
    for (int i = 1; i <= 3; i++) {
        snprintf(corp, sizeof(corp), "wwsim%04d", i);
        int users = sh_assert_org(f.pg, &f.sim, corp);
        PGresult *p = progress_row(&f, run, corp);
        json_object *cs = sh_corp_stats(st, corp);
        int depts = i == 1 ? 13 : 12;
        assert_string_equal(PQgetvalue(p, 0, 0), "succeeded");
        assert_int_equal(atoi(PQgetvalue(p, 0, 1)), depts);
        assert_int_equal(atoi(PQgetvalue(p, 0, 2)), depts);
        assert_int_equal(atoi(PQgetvalue(p, 0, 3)), users);
        assert_int_equal(atoi(PQgetvalue(p, 0, 4)), 0);
        /* Every upstream call is counted: in the progress row and in Redis. */
        assert_int_equal(atoll(PQgetvalue(p, 0, 5)), sh_get_int(cs, "requests"));
        assert_int_equal(quota_sum(&f, corp), sh_get_int(cs, "requests"));
        /* gettoken + department/list + one user/list per department, none twice. */
        assert_int_equal(sh_get_int(cs, "requests"), depts + 2);
        assert_int_equal(sh_get_int(cs, "refetched_departments"), 0);
        PQclear(p);
    }
    assert_true(sh_get_int(st, "total.max_inflight") <= 2);
    assert_int_equal(sh_get_int(st, "total.inflight_violations"), 0);
    json_object_put(st);
    sh_assert_paced(&f.sim, 10);
    /* Members in two departments are stored once, with both. */
    assert_true(sh_scalar(f.pg, "SELECT count(*) FROM users WHERE cardinality(department) > 1", 0,
                          NULL) > 0);

    snprintf(url, sizeof(url), "%s/sim/mutate", f.sim.url);
    mut = sh_http("POST", url,
                  "{\"corp_id\":\"wwsim0001\",\"random\":{\"add\":3,\"remove\":4,\"rename\":3,"
                  "\"move\":3},\"ops\":[{\"op\":\"remove_dept\",\"id\":13},{\"op\":\"rename_dept\","
                  "\"id\":5,\"name\":\"改名后的部门\"},{\"op\":\"add_dept\",\"parentid\":2,"
                  "\"name\":\"新部门\"}]}");
    int removed = (int)json_object_array_length(sh_get(mut, "removed"));
    json_object_put(mut);
    assert_int_equal(removed, 4);
    sh_sim_post(&f.sim, "/sim/mutate",
                "{\"corp_id\":\"wwsim0002\",\"random\":{\"remove\":2,\"move\":2}}");
    long long first = run;
    run = fx_sync(&f, "succeeded");
    /* Only members that changed were written again: wwsim0003's rows are all
     * the first run's; wwsim0001's 3 new, 3 renamed and 3 moved members (some
     * may be the same) are the second's. The checkpoints' userids are used up. */
    char q[256];
    snprintf(q, sizeof(q),
             "SELECT count(*) FROM users WHERE corp_id = 'wwsim0003' AND sync_run_id = %lld",
             first);
    assert_int_equal(
        sh_scalar(f.pg, q, 0, NULL),
        sh_scalar(f.pg, "SELECT count(*) FROM users WHERE corp_id = 'wwsim0003'", 0, NULL));
    snprintf(q, sizeof(q),
             "SELECT count(*) FROM users WHERE corp_id = 'wwsim0001' AND sync_run_id = %lld", run);
    long long rewritten = sh_scalar(f.pg, q, 0, NULL);
    assert_true(rewritten >= 3 && rewritten <= 9);
    assert_int_equal(
        sh_scalar(f.pg, "SELECT count(*) FROM sync_checkpoints WHERE userids IS NOT NULL", 0, NULL),
        0);
    for (int i = 1; i <= 3; i++) {
        snprintf(corp, sizeof(corp), "wwsim%04d", i);
        sh_assert_org(f.pg, &f.sim, corp);
    }
    /* The second run (a new client, as a new process would be) took the tokens
     * from Redis: no gettoken beyond the first one per enterprise. */
    st = sh_sim_stats(&f.sim);
    for (int i = 1; i <= 3; i++) {
        snprintf(corp, sizeof(corp), "wwsim%04d", i);
        assert_int_equal(sh_get_int(sh_corp_stats(st, corp), "by_path.gettoken"), 1);
    }
    json_object_put(st);
    PGresult *p = progress_row(&f, run, "wwsim0001");
    assert_int_equal(atoi(PQgetvalue(p, 0, 4)), 4);
    PQclear(p);
    p = progress_row(&f, run, "wwsim0002");
    assert_int_equal(atoi(PQgetvalue(p, 0, 4)), 2);
    PQclear(p);
    assert_int_equal(sh_scalar(f.pg,
                               "SELECT count(*) FROM departments WHERE corp_id = 'wwsim0001' AND "
                               "dept_id = 13 AND deleted_at IS NOT NULL",
                               0, NULL),
                     1);
    sh_assert_paced(&f.sim, 10);
    fx_down(&f);
}

typedef struct token_ctx {
    fixture *f;
    int step;
} token_ctx;

static void expire_tokens_tick(sh_run *r)
{
    token_ctx *t = r->user;
    json_object *st;
    long long n;

    if (t->step >= 2)
        return;
    st = sh_sim_stats(&t->f->sim);
    n = sh_get_int(st, "total.by_path.user/list");
    json_object_put(st);
    if (t->step == 0 && n >= 10) {
        sh_sim_post(&t->f->sim, "/sim/expire-tokens?mode=expire", "");
        t->step = 1;
    } else if (t->step == 1 && n >= 25) {
        sh_sim_post(&t->f->sim, "/sim/expire-tokens?mode=invalid", "");
        t->step = 2;
    }
}

/* Tokens expired (42001) and then invalidated (40014) mid-run: every enterprise
 * drops its token, fetches a new one, retries once, alerts, and finishes. */
static void test_tokens_expire_mid_run(void **state)
{
    const char *args[] = {"--enterprises",
                          "2",
                          "--departments",
                          "20",
                          "--users-per-dept",
                          "3",
                          "--latency-ms",
                          "5",
                          NULL};
    fixture f;
    token_ctx t;
    json_object *st;
    (void)state;

    fx_up(&f, "tok", args, 2, NULL);
    t.f = &f;
    t.step = 0;
    f.r.user = &t;
    f.r.on_tick = expire_tokens_tick;
    log_truncate();
    fx_sync(&f, "succeeded");
    assert_int_equal(t.step, 2);
    sh_assert_org(f.pg, &f.sim, "wwsim0001");
    sh_assert_org(f.pg, &f.sim, "wwsim0002");
    st = sh_sim_stats(&f.sim);
    assert_true(sh_get_int(st, "total.errcodes.42001") >= 1);
    assert_true(sh_get_int(st, "total.errcodes.40014") >= 1);
    /* One token at first, and new ones after each expiry. */
    assert_true(sh_get_int(st, "total.tokens_issued") >= 3);
    json_object_put(st);
    assert_true(log_contains("token_invalid"));
    sh_assert_paced(&f.sim, 10);
    /* The cached token is the one the upstream issued last. */
    fx_down(&f);
}

/* A department that keeps failing: its enterprise ends failed, deletes nobody
 * (though members were removed upstream), the other enterprise deletes; the run
 * is partial. */
static void test_failing_department_deletes_nobody(void **state)
{
    const char *args[] = {
        "--enterprises", "2", "--departments", "8", "--users-per-dept", "4", NULL};
    fixture f;
    long long run;
    PGresult *p;
    (void)state;

    fx_up(&f, "fail", args, 2, NULL);
    directory_sync_set_tuning(&(directory_sync_tuning){.backoff_base_ms = 5});
    fx_sync(&f, "succeeded");
    sh_sim_post(&f.sim, "/sim/mutate", "{\"corp_id\":\"wwsim0001\",\"random\":{\"remove\":3}}");
    sh_sim_post(&f.sim, "/sim/mutate", "{\"corp_id\":\"wwsim0002\",\"random\":{\"remove\":3}}");
    sh_sim_post(&f.sim, "/sim/faults", "{\"fail_dept\":3,\"fail_dept_corp\":\"wwsim0001\"}");
    run = fx_sync(&f, "partial");
    assert_non_null(strstr(f.r.error, "wwsim0001"));
    p = progress_row(&f, run, "wwsim0001");
    assert_string_equal(PQgetvalue(p, 0, 0), "failed");
    assert_int_equal(atoi(PQgetvalue(p, 0, 4)), 0);
    assert_true(atoi(PQgetvalue(p, 0, 7)) >= 1);
    assert_non_null(strstr(PQgetvalue(p, 0, 8), "department 3"));
    assert_non_null(strstr(PQgetvalue(p, 0, 8), "nobody deleted"));
    /* Retried before giving up: errcode -1 three times. */
    assert_true(atoi(PQgetvalue(p, 0, 6)) >= 3);
    PQclear(p);
    assert_int_equal(sh_scalar(f.pg,
                               "SELECT count(*) FROM users WHERE corp_id = 'wwsim0001' AND "
                               "deleted_at IS NOT NULL",
                               0, NULL),
                     0);
    p = progress_row(&f, run, "wwsim0002");
    assert_string_equal(PQgetvalue(p, 0, 0), "succeeded");
    assert_int_equal(atoi(PQgetvalue(p, 0, 4)), 3);
    PQclear(p);
    sh_assert_org(f.pg, &f.sim, "wwsim0002");

    /* With the fault gone, the next sync catches up and deletes. */
    sh_sim_post(&f.sim, "/sim/faults", "{\"reset\":true}");
    fx_sync(&f, "succeeded");
    sh_assert_org(f.pg, &f.sim, "wwsim0001");
    fx_down(&f);
}

typedef struct meet_ctx {
    fixture *f;
    char uid[32];
    long long dept;
    int stored;
} meet_ctx;

/* Once two departments are written, a realtime lookup (as it were) stores a
 * member that only the last department lists. */
static void meet_tick(sh_run *r)
{
    meet_ctx *c = r->user;
    char dept[24];
    const char *p[2] = {c->uid, dept};

    if (c->stored || sh_scalar(c->f->pg, "SELECT count(*) FROM sync_checkpoints", 0, NULL) < 2)
        return;
    snprintf(dept, sizeof(dept), "%lld", c->dept);
    assert_int_equal(sh_scalar(c->f->pg,
                               "SELECT count(*) FROM sync_checkpoints WHERE dept_id = $1::bigint",
                               1, &p[1]),
                     0);
    PQclear(sh_exec(c->f->pg,
                    "INSERT INTO users (corp_id, userid, name, department, raw) VALUES "
                    "('wwsim0001', $1, 'stored by a lookup', ARRAY[$2::int], '{}')",
                    2, p));
    c->stored = 1;
}

/* An enterprise's first sync inserts its members without ON CONFLICT; a member
 * that something else stored meanwhile makes that statement fail on the primary
 * key, and the same departments are written again through ON CONFLICT: the run
 * succeeds and the mirror equals the upstream. */
static void test_first_sync_meets_a_stored_member(void **state)
{
    const char *args[] = {
        "--enterprises", "1", "--departments", "10", "--users-per-dept", "3", NULL};
    fixture f;
    meet_ctx mc;
    char url[256];
    json_object *org, *users;
    long long run;
    PGresult *p;
    (void)state;

    fx_up(&f, "meet", args, 1, NULL);
    memset(&mc, 0, sizeof(mc));
    mc.f = &f;
    mc.dept = 10;
    snprintf(url, sizeof(url), "%s/sim/org?corp_id=wwsim0001", f.sim.url);
    org = sh_http("GET", url, NULL);
    users = sh_get(json_object_array_get_idx(sh_get(org, "corps"), 0), "users");
    for (size_t i = 0; i < json_object_array_length(users) && !mc.uid[0]; i++) {
        json_object *u = json_object_array_get_idx(users, i), *d = sh_get(u, "department");
        if (json_object_array_length(d) == 1 &&
            json_object_get_int64(json_object_array_get_idx(d, 0)) == mc.dept)
            snprintf(mc.uid, sizeof(mc.uid), "%s", sh_jstr(u, "userid"));
    }
    json_object_put(org);
    assert_true(mc.uid[0] != '\0');
    f.r.user = &mc;
    f.r.on_tick = meet_tick;
    log_truncate();
    run = fx_sync(&f, "succeeded");
    assert_true(mc.stored);
    assert_true(log_contains("a member was written meanwhile, upserting from now on"));
    sh_assert_org(f.pg, &f.sim, "wwsim0001");
    p = progress_row(&f, run, "wwsim0001");
    assert_int_equal(atoi(PQgetvalue(p, 0, 2)), 10);
    assert_int_equal(atoi(PQgetvalue(p, 0, 3)), 30);
    PQclear(p);
    fx_down(&f);
}

/* With one member write at a time, statements carry several enterprises. One
 * whose rows PostgreSQL refuses (a trigger here) fails only its own
 * departments: the statement is written again one enterprise at a time. */
static void test_refused_enterprise_fails_alone(void **state)
{
    const char *args[] = {
        "--enterprises", "3", "--departments", "12", "--users-per-dept", "3", NULL};
    fixture f;
    long long run;
    PGresult *p;
    (void)state;

    fx_up(&f, "refuse", args, 3, NULL);
    directory_sync_set_tuning(&(directory_sync_tuning){.writes_max = 1});
    fx_refuse(&f, "refuse_corp", "users", "wwsim0002", "refused by the test");
    /* Every members statement lasts 0.05 s or more (the statement trigger fires
     * once per statement, though it has two INSERTs into users: 52 ms in psql),
     * so that while one is written the other enterprises' answers (one each
     * 0.1 s, an enterprise) queue up, and the next statement carries several. */
    PQclear(sh_exec(f.pg,
                    "CREATE FUNCTION slow_write() RETURNS trigger LANGUAGE plpgsql AS $$ "
                    "BEGIN PERFORM pg_sleep(0.05); RETURN NULL; END $$",
                    0, NULL));
    PQclear(sh_exec(f.pg,
                    "CREATE TRIGGER slow_write BEFORE INSERT ON users "
                    "FOR EACH STATEMENT EXECUTE FUNCTION slow_write()",
                    0, NULL));
    log_truncate();
    run = fx_sync(&f, "partial");
    assert_true(log_contains("writing its enterprises apart"));
    assert_ended(&f, run, "wwsim0002", "failed", "refused by the test");
    for (int i = 1; i <= 3; i += 2) {
        char corp[16];
        snprintf(corp, sizeof(corp), "wwsim%04d", i);
        p = progress_row(&f, run, corp);
        assert_string_equal(PQgetvalue(p, 0, 0), "succeeded");
        assert_int_equal(atoi(PQgetvalue(p, 0, 2)), 12);
        PQclear(p);
        sh_assert_org(f.pg, &f.sim, corp);
    }
    fx_down(&f);
}

/* When the departments of an enterprise cannot be written, that enterprise fails
 * with the database's reason and writes no member; the others go on. */
static void test_department_write_fails(void **state)
{
    const char *args[] = {
        "--enterprises", "2", "--departments", "6", "--users-per-dept", "2", NULL};
    fixture f;
    long long run;
    (void)state;

    fx_up(&f, "deptfail", args, 2, NULL);
    fx_refuse(&f, "refuse_dept", "departments", "wwsim0001", "departments refused");
    run = fx_sync(&f, "partial");
    assert_ended(&f, run, "wwsim0001", "failed", "departments refused");
    assert_int_equal(
        sh_scalar(f.pg, "SELECT count(*) FROM users WHERE corp_id = 'wwsim0001'", 0, NULL), 0);
    assert_ended(&f, run, "wwsim0002", "succeeded", NULL);
    sh_assert_org(f.pg, &f.sim, "wwsim0002");
    fx_down(&f);
}

/* A department the upstream no longer knows (60003) is recorded and skipped; a
 * malformed answer that persists fails its department with a clear error; one
 * that does not persist is retried away. */
static void test_unknown_and_malformed(void **state)
{
    const char *args[] = {
        "--enterprises", "2", "--departments", "6", "--users-per-dept", "3", NULL};
    fixture f;
    long long run;
    PGresult *p;
    (void)state;

    fx_up(&f, "malf", args, 2, NULL);
    directory_sync_set_tuning(&(directory_sync_tuning){.backoff_base_ms = 5});
    sh_sim_post(&f.sim, "/sim/faults",
                "{\"fail_dept\":4,\"fail_dept_corp\":\"wwsim0001\",\"fail_dept_errcode\":60003,"
                "\"malformed_next\":2,\"paths\":\"user/list\"}");
    run = fx_sync(&f, "succeeded");
    p = progress_row(&f, run, "wwsim0001");
    assert_string_equal(PQgetvalue(p, 0, 0), "succeeded");
    assert_non_null(strstr(PQgetvalue(p, 0, 8), "60003"));
    assert_int_equal(atoi(PQgetvalue(p, 0, 2)), 6);
    PQclear(p);
    sh_assert_org(f.pg, &f.sim, "wwsim0002");

    /* Every user/list answer of wwsim0002 truncated: each department fails. */
    sh_sim_post(&f.sim, "/sim/faults",
                "{\"reset\":true,\"malformed\":1.0,\"paths\":\"user/list\"}");
    run = fx_sync(&f, "failed");
    p = progress_row(&f, run, "wwsim0002");
    assert_string_equal(PQgetvalue(p, 0, 0), "failed");
    assert_non_null(strstr(PQgetvalue(p, 0, 8), "malformed"));
    assert_int_equal(atoi(PQgetvalue(p, 0, 7)), 6);
    PQclear(p);
    fx_down(&f);
}

/* 45009 pauses the enterprise and alerts; if it persists, the department fails. */
static void test_ban_pauses_and_alerts(void **state)
{
    const char *args[] = {
        "--enterprises", "1", "--departments", "5", "--users-per-dept", "2", NULL};
    fixture f;
    long long run;
    uint64_t t0;
    (void)state;

    fx_up(&f, "ban", args, 1, NULL);
    directory_sync_set_tuning(&(directory_sync_tuning){.ban_pause_ms = 40});
    sh_sim_post(&f.sim, "/sim/faults", "{\"fail_dept\":2,\"fail_dept_errcode\":45009}");
    log_truncate();
    t0 = time_mono_us();
    run = fx_sync(&f, "failed");
    /* Five pauses of 40, 80, 160, 320, 640 ms before giving up. */
    assert_true(time_mono_us() - t0 >= 1240000);
    assert_ended(&f, run, "wwsim0001", "failed", "45009");
    assert_true(log_contains("\"ban\""));
    sh_assert_paced(&f.sim, 10);
    fx_down(&f);
}

/* ORGSYNC_DAILY_QUOTA: the enterprise stops cleanly before exceeding it. */
static void test_daily_quota(void **state)
{
    const char *args[] = {
        "--enterprises", "1", "--departments", "12", "--users-per-dept", "2", NULL};
    const sh_kv extra[] = {{"ORGSYNC_DAILY_QUOTA", "8"}, {NULL, NULL}};
    fixture f;
    long long run;
    PGresult *p;
    json_object *st;
    (void)state;

    fx_up(&f, "quota", args, 1, extra);
    run = fx_sync(&f, "failed");
    p = progress_row(&f, run, "wwsim0001");
    assert_string_equal(PQgetvalue(p, 0, 0), "failed");
    assert_string_equal(PQgetvalue(p, 0, 8), "daily quota");
    assert_int_equal(atoi(PQgetvalue(p, 0, 4)), 0);
    PQclear(p);
    st = sh_sim_stats(&f.sim);
    assert_int_equal(sh_get_int(st, "total.requests"), 8);
    json_object_put(st);
    assert_int_equal(quota_sum(&f, "wwsim0001"), 8);
    /* The quota is per day: a second sync sends nothing at all. */
    run = fx_sync(&f, "failed");
    st = sh_sim_stats(&f.sim);
    assert_int_equal(sh_get_int(st, "total.requests"), 8);
    json_object_put(st);
    fx_down(&f);
}

typedef struct stop_ctx {
    fixture *f;
    int after;
    int stopped;
} stop_ctx;

static void stop_tick(sh_run *r)
{
    stop_ctx *c = r->user;
    if (c->stopped)
        return;
    long long done = sh_scalar(c->f->pg, "SELECT count(*) FROM sync_checkpoints", 0, NULL);
    if (done >= c->after) {
        c->stopped = 1;
        directory_sync_ops.stop(&r->run, "test stop");
    }
}

/* A run stopped midway is resumed by the next attempt from its checkpoints: no
 * checkpointed department is fetched again, the result equals the upstream. */
static void test_resume_from_checkpoints(void **state)
{
    const char *args[] = {
        "--enterprises", "3", "--departments", "15", "--users-per-dept", "3", NULL};
    fixture f;
    stop_ctx sc;
    long long run, before;
    PGresult *ck;
    json_object *st;
    (void)state;

    fx_up(&f, "resume", args, 3, NULL);
    sc.f = &f;
    sc.after = 12;
    sc.stopped = 0;
    f.r.user = &sc;
    f.r.on_tick = stop_tick;
    run = sh_make_run(f.pg, f.env, 1, NULL);
    sh_run_job(&f.r, run, 1, 1, NULL, 0, 60000);
    assert_true(sc.stopped);
    assert_string_equal(f.r.state, ""); /* stopped: resumable */
    ck = sh_exec(f.pg, "SELECT corp_id, dept_id FROM sync_checkpoints ORDER BY 1, 2", 0, NULL);
    before = PQntuples(ck);
    assert_true(before >= 12 && before < 45);

    /* Attempt 2, new leader token, same run. */
    f.r.on_tick = NULL;
    PQclear(sh_exec(f.pg, "UPDATE leader_fence SET token = 2", 0, NULL));
    sh_run_job(&f.r, run, 2, 2, NULL, 0, 60000);
    assert_string_equal(f.r.state, "succeeded");
    sh_end_run(f.pg, run, f.r.state);
    st = sh_sim_stats(&f.sim);
    for (int i = 0; i < PQntuples(ck); i++) {
        char path[64];
        snprintf(path, sizeof(path), "user_list_ok.%s", PQgetvalue(ck, i, 1));
        json_object *cs = sh_corp_stats(st, PQgetvalue(ck, i, 0));
        if (sh_get_int(cs, path) != 1)
            fail_msg("%s department %s checkpointed in attempt 1 but fetched %lld times",
                     PQgetvalue(ck, i, 0), PQgetvalue(ck, i, 1), sh_get_int(cs, path));
    }
    /* At most the departments in flight at the stop were fetched twice: per
     * enterprise one being fetched, and answers waiting for or in a write (at most
     * 2 x 4 when PostgreSQL lags; one or two here, where it keeps up). */
    long long refetched = 0;
    for (int i = 1; i <= 3; i++) {
        char corp[16];
        snprintf(corp, sizeof(corp), "wwsim%04d", i);
        refetched += sh_get_int(sh_corp_stats(st, corp), "refetched_ok_departments");
    }
    if (refetched > 3 * 9)
        fail_msg("%lld departments fetched twice", refetched);
    json_object_put(st);
    PQclear(ck);
    for (int i = 1; i <= 3; i++) {
        char corp[16];
        snprintf(corp, sizeof(corp), "wwsim%04d", i);
        int users = sh_assert_org(f.pg, &f.sim, corp);
        PGresult *p = progress_row(&f, run, corp);
        assert_string_equal(PQgetvalue(p, 0, 0), "succeeded");
        assert_int_equal(atoi(PQgetvalue(p, 0, 2)), 15);
        assert_int_equal(atoi(PQgetvalue(p, 0, 3)), users);
        PQclear(p);
    }
    fx_down(&f);
}

typedef struct fence_ctx {
    fixture *f;
    int moved;
    long long at_move;
} fence_ctx;

static void fence_tick(sh_run *r)
{
    fence_ctx *c = r->user;
    if (c->moved)
        return;
    if (sh_scalar(c->f->pg, "SELECT count(*) FROM sync_checkpoints", 0, NULL) >= 5) {
        /* A successor claims the fence: once this commits, no write of ours applies. */
        PQclear(sh_exec(c->f->pg, "UPDATE leader_fence SET token = 99", 0, NULL));
        c->at_move = sh_scalar(c->f->pg, "SELECT count(*) FROM sync_checkpoints", 0, NULL);
        c->moved = 1;
    }
}

/* A stale leader's writes change nothing, and the job steps down. */
static void test_fenced_out(void **state)
{
    const char *args[] = {
        "--enterprises", "2", "--departments", "15", "--users-per-dept", "2", NULL};
    fixture f;
    fence_ctx fc = {0};
    long long run;
    (void)state;

    fx_up(&f, "fence", args, 2, NULL);
    fc.f = &f;
    f.r.user = &fc;
    f.r.on_tick = fence_tick;
    run = sh_make_run(f.pg, f.env, 1, NULL);
    sh_run_job(&f.r, run, 1, 1, NULL, 0, 60000);
    assert_true(fc.moved);
    assert_string_equal(f.r.state, "");
    assert_true(f.r.fenced_out_calls >= 1);
    assert_int_equal(sh_scalar(f.pg, "SELECT count(*) FROM sync_checkpoints", 0, NULL), fc.at_move);
    assert_int_equal(sh_scalar(f.pg,
                               "SELECT count(*) FROM sync_progress WHERE state IN ('succeeded', "
                               "'failed')",
                               0, NULL),
                     0);
    fx_down(&f);
}

typedef struct lease_ctx {
    fixture *f;
    long long requests_at_loss;
} lease_ctx;

static void lease_tick(sh_run *r)
{
    lease_ctx *c = r->user;
    if (!r->lease)
        return;
    json_object *st = sh_sim_stats(&c->f->sim);
    long long n = sh_get_int(st, "total.requests");
    json_object_put(st);
    if (n >= 8) {
        r->lease = 0;
        c->requests_at_loss = n;
    }
}

/* The lease expires: no new upstream request, no new write, the job stops. */
static void test_lease_lost_stops(void **state)
{
    const char *args[] = {
        "--enterprises", "2", "--departments", "20", "--users-per-dept", "2", NULL};
    fixture f;
    lease_ctx lc = {0};
    long long run;
    json_object *st;
    (void)state;

    fx_up(&f, "lease", args, 2, NULL);
    lc.f = &f;
    f.r.user = &lc;
    f.r.on_tick = lease_tick;
    run = sh_make_run(f.pg, f.env, 1, NULL);
    sh_run_job(&f.r, run, 1, 1, NULL, 0, 60000);
    assert_string_equal(f.r.state, "");
    assert_true(lc.requests_at_loss >= 8);
    st = sh_sim_stats(&f.sim);
    /* Requests already in flight when the lease went (one per enterprise) may land. */
    assert_true(sh_get_int(st, "total.requests") <= lc.requests_at_loss + 2);
    json_object_put(st);
    (void)run;
    fx_down(&f);
}

typedef struct stall_ctx {
    fixture *f;
    PGconn *locker;
    uint64_t locked_at;
    int state; /* 0 waiting, 1 locked, 2 released */
} stall_ctx;

static void stall_tick(sh_run *r)
{
    stall_ctx *c = r->user;
    if (c->state == 0 &&
        sh_scalar(c->f->pg, "SELECT count(*) FROM sync_checkpoints", 0, NULL) >= 4) {
        /* PostgreSQL stalls for a while: every department write waits. */
        c->locker = sh_connect(c->f->db.dsn);
        sh_exec0(c->locker, "BEGIN");
        sh_exec0(c->locker, "LOCK TABLE sync_checkpoints IN EXCLUSIVE MODE");
        c->locked_at = time_mono_us();
        c->state = 1;
    } else if (c->state == 1 && time_mono_us() - c->locked_at > 1500000) {
        sh_exec0(c->locker, "COMMIT");
        PQfinish(c->locker);
        c->locker = NULL;
        c->state = 2;
    }
}

/* Writes that fell behind catch up several departments per statement; the
 * result is the same, and fetching paused instead of piling answers up. */
static void test_writes_catch_up_after_a_stall(void **state)
{
    const char *args[] = {
        "--enterprises", "2", "--departments", "30", "--users-per-dept", "3", NULL};
    fixture f;
    stall_ctx sc = {0};
    long long run;
    (void)state;

    fx_up(&f, "stall", args, 2, NULL);
    sc.f = &f;
    f.r.user = &sc;
    f.r.on_tick = stall_tick;
    run = fx_sync(&f, "succeeded");
    assert_int_equal(sc.state, 2);
    for (int i = 1; i <= 2; i++) {
        char corp[16];
        snprintf(corp, sizeof(corp), "wwsim%04d", i);
        int users = sh_assert_org(f.pg, &f.sim, corp);
        PGresult *p = progress_row(&f, run, corp);
        assert_int_equal(atoi(PQgetvalue(p, 0, 2)), 30);
        assert_int_equal(atoi(PQgetvalue(p, 0, 3)), users);
        PQclear(p);
    }
    /* One statement's checkpoints share its transaction's now(). */
    assert_true(sh_scalar(f.pg,
                          "SELECT max(n) FROM (SELECT count(*) AS n FROM sync_checkpoints "
                          "GROUP BY corp_id, done_at) x",
                          0, NULL) >= 2);
    /* While writes waited, each enterprise fetched at most a few answers ahead. */
    json_object *st = sh_sim_stats(&f.sim);
    assert_int_equal(sh_get_int(sh_corp_stats(st, "wwsim0001"), "refetched_departments"), 0);
    assert_int_equal(sh_get_int(sh_corp_stats(st, "wwsim0002"), "refetched_departments"), 0);
    json_object_put(st);
    sh_assert_paced(&f.sim, 10);
    fx_down(&f);
}

/* HTTP 500s and a request that never answers are retried with backoff; the
 * sync still ends with everything. */
static void test_http_errors_and_timeouts_retried(void **state)
{
    const char *args[] = {
        "--enterprises", "1", "--departments", "8", "--users-per-dept", "3", NULL};
    fixture f;
    long long run;
    PGresult *p;
    json_object *st;
    (void)state;

    fx_up(&f, "retry", args, 1, NULL);
    directory_sync_set_tuning(&(directory_sync_tuning){.timeout_ms = 400, .backoff_base_ms = 5});
    sh_sim_post(&f.sim, "/sim/faults",
                "{\"http500_next\":3,\"hang_next\":1,\"busy_next\":2,\"paths\":\"user/list\"}");
    run = fx_sync(&f, "succeeded");
    sh_assert_org(f.pg, &f.sim, "wwsim0001");
    st = sh_sim_stats(&f.sim);
    assert_int_equal(sh_get_int(st, "total.faults.http500"), 3);
    assert_int_equal(sh_get_int(st, "total.faults.hang"), 1);
    assert_int_equal(sh_get_int(st, "total.faults.busy"), 2);
    p = progress_row(&f, run, "wwsim0001");
    assert_int_equal(atoi(PQgetvalue(p, 0, 6)), 6); /* retries */
    assert_int_equal(atoll(PQgetvalue(p, 0, 5)), sh_get_int(st, "total.requests"));
    PQclear(p);
    json_object_put(st);
    sh_assert_paced(&f.sim, 10);
    fx_down(&f);
}

typedef struct burst {
    int answered, ok;
} burst;

static void on_burst(void *arg, const wecom_result *res)
{
    burst *b = arg;
    b->answered++;
    b->ok += res->status == WECOM_OK;
}

/* One client at full rate: once the shared window is full, each admission
 * books the moment its call may go (no admission is refused and asked again),
 * and the window holding only this client's calls, its own pacing holds it.
 * At 5 per second the window stays full unless sends run 25% behind the
 * pacing, so a loaded machine still books. */
static void test_one_client_books_the_window(void **state)
{
    const char *args[] = {
        "--enterprises", "1", "--departments", "5", "--users-per-dept", "1", NULL};
    fixture f;
    wecom *w;
    wecom_stats ws;
    burst b = {0};
    json_object *st;
    uint64_t t0;
    (void)state;

    fx_up(&f, "book", args, 1, NULL);
    w = wecom_new(&f.r.loop, f.r.http, f.r.redis,
                  &(wecom_opts){.base_url = f.sim.url, .env = f.env, .rate = 5});
    assert_non_null(w);
    assert_int_equal(wecom_corp_set(w, "wwsim0001", "secret-wwsim0001"), 0);
    for (int k = 0; k < 15; k++)
        assert_int_equal(wecom_user_list(w, "wwsim0001", 1 + k % 5, on_burst, &b), 0);
    t0 = time_mono_us();
    while (b.answered < 15 && time_mono_us() - t0 < 20000000)
        uv_run(&f.r.loop, UV_RUN_ONCE);
    assert_int_equal(b.ok, 15);
    wecom_get_stats(w, &ws);
    assert_int_equal(ws.shared_waits, 0);
    assert_true(ws.shared_booked > 0);
    assert_int_equal(ws.shared_booked_own, ws.shared_booked);
    st = sh_sim_stats(&f.sim);
    assert_int_equal(sh_get_int(st, "total.requests"), 16);
    assert_true(sh_get_int(st, "total.max_1s") <= 5);
    assert_int_equal(sh_get_int(st, "total.violations"), 0);
    json_object_put(st);
    wecom_close(w, NULL, NULL);
    fx_down(&f);
}

/* Two clients (two processes, as far as pacing goes) sending for the same
 * enterprise at once stay within its rate together: the window is in Redis,
 * and a client keeps to the moment it was booked for when the window holds
 * the other's calls too. */
static void test_two_clients_share_the_window(void **state)
{
    const char *args[] = {
        "--enterprises", "1", "--departments", "5", "--users-per-dept", "1", NULL};
    fixture f;
    wecom *w[2];
    burst b = {0};
    json_object *st;
    uint64_t t0;
    unsigned long booked_shared = 0;
    (void)state;

    fx_up(&f, "share", args, 1, NULL);
    for (int i = 0; i < 2; i++) {
        w[i] = wecom_new(&f.r.loop, f.r.http, f.r.redis,
                         &(wecom_opts){.base_url = f.sim.url, .env = f.env, .rate = 10});
        assert_non_null(w[i]);
        assert_int_equal(wecom_corp_set(w[i], "wwsim0001", "secret-wwsim0001"), 0);
        for (int k = 0; k < 15; k++)
            assert_int_equal(wecom_user_list(w[i], "wwsim0001", 1 + k % 5, on_burst, &b), 0);
    }
    t0 = time_mono_us();
    while (b.answered < 30 && time_mono_us() - t0 < 20000000)
        uv_run(&f.r.loop, UV_RUN_ONCE);
    assert_int_equal(b.ok, 30);
    for (int i = 0; i < 2; i++) {
        wecom_stats ws;
        wecom_get_stats(w[i], &ws);
        booked_shared += ws.shared_booked - ws.shared_booked_own;
    }
    assert_true(booked_shared > 0);
    /* 31 calls (one gettoken) at 10 per second take three seconds at least. */
    assert_true(time_mono_us() - t0 >= 3000000);
    st = sh_sim_stats(&f.sim);
    assert_int_equal(sh_get_int(st, "total.requests"), 31);
    assert_true(sh_get_int(st, "total.max_1s") <= 10);
    assert_int_equal(sh_get_int(st, "total.violations"), 0);
    json_object_put(st);
    wecom_close(w[0], NULL, NULL);
    wecom_close(w[1], NULL, NULL);
    fx_down(&f);
}

/* ORGSYNC_UPSTREAM_MAX_INFLIGHT is per process: two clients on one loop (the
 * sync's and the lookup's, in a worker) share it. */
static void test_clients_share_the_inflight_cap(void **state)
{
    const char *args[] = {"--enterprises",
                          "2",
                          "--departments",
                          "3",
                          "--users-per-dept",
                          "1",
                          "--latency-ms",
                          "60",
                          NULL};
    fixture f;
    wecom *w[2];
    burst b = {0};
    json_object *st;
    uint64_t t0;
    (void)state;

    fx_up(&f, "cap", args, 2, NULL);
    for (int i = 0; i < 2; i++) {
        char corp[16], secret[32];
        snprintf(corp, sizeof(corp), "wwsim%04d", i + 1);
        snprintf(secret, sizeof(secret), "secret-%s", corp);
        w[i] = wecom_new(&f.r.loop, f.r.http, f.r.redis,
                         &(wecom_opts){.base_url = f.sim.url, .env = f.env, .max_inflight = 1});
        assert_non_null(w[i]);
        assert_int_equal(wecom_corp_set(w[i], corp, secret), 0);
        for (int k = 0; k < 3; k++)
            assert_int_equal(wecom_user_list(w[i], corp, 1 + k, on_burst, &b), 0);
    }
    t0 = time_mono_us();
    while (b.answered < 6 && time_mono_us() - t0 < 20000000)
        uv_run(&f.r.loop, UV_RUN_ONCE);
    assert_int_equal(b.ok, 6);
    st = sh_sim_stats(&f.sim);
    assert_int_equal(sh_get_int(st, "total.requests"), 8);
    assert_int_equal(sh_get_int(st, "total.max_inflight"), 1);
    json_object_put(st);
    wecom_close(w[0], NULL, NULL);
    wecom_close(w[1], NULL, NULL);
    fx_down(&f);
}

/* --corp: only the named enterprises run. */
static void test_corp_filter(void **state)
{
    const char *args[] = {
        "--enterprises", "3", "--departments", "4", "--users-per-dept", "2", NULL};
    const char *only[] = {"wwsim0002"};
    fixture f;
    long long run;
    (void)state;

    fx_up(&f, "filter", args, 3, NULL);
    run = sh_make_run(f.pg, f.env, 1, "{wwsim0002}");
    sh_run_job(&f.r, run, 1, 1, only, 1, 60000);
    assert_string_equal(f.r.state, "succeeded");
    assert_int_equal(sh_scalar(f.pg, "SELECT count(*) FROM sync_progress", 0, NULL), 1);
    assert_int_equal(
        sh_scalar(f.pg, "SELECT count(*) FROM users WHERE corp_id <> 'wwsim0002'", 0, NULL), 0);
    sh_assert_org(f.pg, &f.sim, "wwsim0002");
    fx_down(&f);
}

/* The users rows' (userid, xmax) of an enterprise, one string: a row that a
 * statement wrote or locked (ON CONFLICT locks the rows it probes) has a new
 * xmax. */
static char *row_versions(fixture *f, const char *corp)
{
    const char *p[1] = {corp};
    PGresult *r = sh_exec(f->pg,
                          "SELECT string_agg(userid || ':' || xmin::text || ':' || xmax::text, ',' "
                          "ORDER BY userid) FROM users WHERE corp_id = $1",
                          1, p);
    char *out = strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    assert_non_null(out);
    return out;
}

static long long run_count(fixture *f, const char *sql, long long run)
{
    char id[24];
    const char *p[1] = {id};
    snprintf(id, sizeof(id), "%lld", run);
    return sh_scalar(f->pg, sql, 1, p);
}

/* A count from SQL formatted with printf's arguments (ids the test chose). */
__attribute__((format(printf, 2, 3))) static long long countf(fixture *f, const char *fmt, ...)
{
    char q[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(q, sizeof(q), fmt, ap);
    va_end(ap);
    return sh_scalar(f->pg, q, 0, NULL);
}

/* Issue 20: an unchanged department costs no member write. A later sync of an
 * unchanged directory writes no users row (not even a row lock: every row's
 * xmax stays) and checkpoints every department as unchanged; deletions stay
 * exact (a removed member is deleted, a renamed one rewritten). A member that
 * a write changes through one department invalidates the digests of the others
 * it is in, so a department whose answer comes back to what it was is written
 * in full: here a member of two departments is renamed while one of them fails
 * (a partial run writes it through the other), then renamed back. */
static void test_unchanged_departments_write_nothing(void **state)
{
    const char *args[] = {
        "--enterprises", "2", "--departments", "8", "--users-per-dept", "5", NULL};
    fixture f;
    long long run;
    char url[256], ops[512], uid[80] = "", name[128] = "";
    long long d1 = 0, d2 = 0;
    (void)state;

    fx_up(&f, "digest", args, 2, NULL);
    directory_sync_set_tuning(&(directory_sync_tuning){.backoff_base_ms = 5});
    run = fx_sync(&f, "succeeded");
    long long depts = sh_scalar(f.pg, "SELECT count(*) FROM departments", 0, NULL);
    /* A digest and the userids of each department, and no userids left in the
     * checkpoints. */
    assert_int_equal(sh_scalar(f.pg,
                               "SELECT count(*) FROM department_digests WHERE digest IS NOT NULL",
                               0, NULL),
                     depts);
    assert_int_equal(
        sh_scalar(f.pg,
                  "SELECT count(DISTINCT (corp_id, x)) FROM department_digests, unnest(userids) x",
                  0, NULL),
        sh_scalar(f.pg, "SELECT count(*) FROM users", 0, NULL));

    /* Nothing changed: nothing written, every department unchanged. */
    char *before1 = row_versions(&f, "wwsim0001"), *before2 = row_versions(&f, "wwsim0002");
    run = fx_sync(&f, "succeeded");
    char *after1 = row_versions(&f, "wwsim0001"), *after2 = row_versions(&f, "wwsim0002");
    assert_string_equal(before1, after1);
    assert_string_equal(before2, after2);
    free(before1);
    free(before2);
    free(after1);
    free(after2);
    assert_int_equal(run_count(&f,
                               "SELECT count(*) FROM sync_checkpoints WHERE run_id = $1::bigint "
                               "AND unchanged",
                               run),
                     depts);
    assert_int_equal(run_count(&f,
                               "SELECT sum(users_upserted) FROM sync_progress WHERE run_id = "
                               "$1::bigint",
                               run),
                     sh_scalar(f.pg, "SELECT count(*) FROM users", 0, NULL));
    sh_assert_org(f.pg, &f.sim, "wwsim0001");
    sh_assert_org(f.pg, &f.sim, "wwsim0002");
    assert_int_equal(sh_scalar(f.pg,
                               "SELECT count(*) FROM enterprises WHERE members_settled_run IS NULL",
                               0, NULL),
                     0);

    /* A member that another writer stored (no sync_run_id) and no department
     * lists: a sync that finds every department unchanged still deletes it. */
    sh_exec0(f.pg, "INSERT INTO users (corp_id, userid, department, raw, synced_at) VALUES "
                   "('wwsim0002', 'ghost', '{1}', '{\"userid\": \"ghost\"}', now() - interval "
                   "'1 hour')");
    run = fx_sync(&f, "succeeded");
    assert_int_equal(run_count(&f,
                               "SELECT count(*) FROM sync_checkpoints WHERE run_id = $1::bigint "
                               "AND NOT unchanged",
                               run),
                     0);
    PGresult *g = progress_row(&f, run, "wwsim0002");
    assert_int_equal(atoi(PQgetvalue(g, 0, 4)), 1);
    PQclear(g);
    sh_assert_org(f.pg, &f.sim, "wwsim0002");

    /* A member removed, one renamed: only their departments are written, the
     * removed member is deleted. */
    sh_sim_post(&f.sim, "/sim/mutate",
                "{\"corp_id\":\"wwsim0001\",\"random\":{\"remove\":1,\"rename\":1}}");
    run = fx_sync(&f, "succeeded");
    PGresult *p = progress_row(&f, run, "wwsim0001");
    assert_int_equal(atoi(PQgetvalue(p, 0, 4)), 1);
    PQclear(p);
    long long unchanged = run_count(&f,
                                    "SELECT count(*) FROM sync_checkpoints WHERE run_id = "
                                    "$1::bigint AND unchanged",
                                    run);
    assert_true(unchanged >= depts - 4 && unchanged <= depts - 1);
    sh_assert_org(f.pg, &f.sim, "wwsim0001");
    sh_assert_org(f.pg, &f.sim, "wwsim0002");

    /* A member of two departments (d1, d2) of wwsim0002. */
    snprintf(url, sizeof(url), "%s/sim/org?corp_id=wwsim0002", f.sim.url);
    json_object *org = sh_http("GET", url, NULL);
    json_object *users = sh_get(json_object_array_get_idx(sh_get(org, "corps"), 0), "users");
    for (size_t i = 0; i < json_object_array_length(users) && !uid[0]; i++) {
        json_object *u = json_object_array_get_idx(users, i), *dep = sh_get(u, "department");
        if (json_object_array_length(dep) != 2)
            continue;
        snprintf(uid, sizeof(uid), "%s", sh_jstr(u, "userid"));
        snprintf(name, sizeof(name), "%s", sh_jstr(u, "name"));
        d1 = json_object_get_int64(json_object_array_get_idx(dep, 0));
        d2 = json_object_get_int64(json_object_array_get_idx(dep, 1));
    }
    json_object_put(org);
    if (!uid[0])
        fail_msg("the simulator made no member of two departments");

    snprintf(ops, sizeof(ops),
             "{\"corp_id\":\"wwsim0002\",\"ops\":[{\"op\":\"rename\",\"userid\":\"%s\","
             "\"name\":\"renamed for a moment\"}]}",
             uid);
    sh_sim_post(&f.sim, "/sim/mutate", ops);
    snprintf(ops, sizeof(ops), "{\"fail_dept\":%lld,\"fail_dept_corp\":\"wwsim0002\"}", d1);
    sh_sim_post(&f.sim, "/sim/faults", ops);
    char q[256], dig1[64];
    assert_int_equal(countf(&f,
                            "SELECT count(*) FROM department_digests WHERE corp_id = 'wwsim0002' "
                            "AND dept_id = %lld AND digest IS NOT NULL",
                            d1),
                     1);
    snprintf(q, sizeof(q),
             "SELECT encode(digest, 'hex') FROM department_digests WHERE corp_id = 'wwsim0002' "
             "AND dept_id = %lld",
             d1);
    PGresult *r = sh_exec(f.pg, q, 0, NULL);
    snprintf(dig1, sizeof(dig1), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    fx_sync(&f, "partial");
    /* d2 wrote the renamed member: d1's digest no longer holds. */
    assert_int_equal(countf(&f,
                            "SELECT count(*) FROM department_digests WHERE corp_id = 'wwsim0002' "
                            "AND dept_id = %lld AND digest IS NULL",
                            d1),
                     1);

    /* Renamed back: d1 answers what it answered at first, and is written. */
    snprintf(ops, sizeof(ops),
             "{\"corp_id\":\"wwsim0002\",\"ops\":[{\"op\":\"rename\",\"userid\":\"%s\","
             "\"name\":\"%s\"}]}",
             uid, name);
    sh_sim_post(&f.sim, "/sim/mutate", ops);
    sh_sim_post(&f.sim, "/sim/faults", "{\"reset\":true}");
    run = fx_sync(&f, "succeeded");
    snprintf(q, sizeof(q),
             "SELECT encode(digest, 'hex') FROM department_digests WHERE corp_id = 'wwsim0002' "
             "AND dept_id = %lld",
             d1);
    r = sh_exec(f.pg, q, 0, NULL);
    assert_string_equal(PQgetvalue(r, 0, 0), dig1); /* the same answer as at first */
    PQclear(r);
    snprintf(q, sizeof(q),
             "SELECT count(*) FROM sync_checkpoints WHERE run_id = $1::bigint AND corp_id = "
             "'wwsim0002' AND dept_id = %lld AND NOT unchanged",
             d1);
    assert_int_equal(run_count(&f, q, run), 1);
    (void)d2;
    sh_assert_org(f.pg, &f.sim, "wwsim0002");
    fx_down(&f);
}

/* Row versions that changed between two row_versions strings (same rows). */
static int versions_changed(const char *before, const char *after)
{
    int n = 0;
    const char *a = before, *b = after;

    while (*a || *b) {
        size_t la = strcspn(a, ","), lb = strcspn(b, ",");
        n += la != lb || memcmp(a, b, la) != 0;
        a += la + (a[la] == ',');
        b += lb + (b[lb] == ',');
    }
    return n;
}

/* The simulator's directory of one enterprise (json-c, the caller puts it). */
static json_object *sim_corp(fixture *f, const char *corp)
{
    char url[256];

    snprintf(url, sizeof(url), "%s/sim/org?corp_id=%s", f->sim.url, corp);
    json_object *org = sh_http("GET", url, NULL);
    json_object *c = json_object_get(json_object_array_get_idx(sh_get(org, "corps"), 0));
    json_object_put(org);
    return c;
}

/* Issue 20, sql/009: a changed department sends only its changed members (the
 * others keep their row versions, not even locked), and the deletions of an
 * enterprise whose last complete run read the departments' lists check only
 * the members that may have gone: one a department stopped listing (even in a
 * run that did not complete, its department unchanged since), and the members
 * of a department that vanished. The data stays what the simulator holds. */
static void test_changed_departments_send_changed_members(void **state)
{
    const char *args[] = {
        "--enterprises", "1", "--departments", "6", "--users-per-dept", "6", NULL};
    fixture f;
    long long run, gone_dept = 0, other_dept = 0, leaf = 0;
    char ops[1024], gone[80] = "", q[512];
    (void)state;

    fx_up(&f, "hashes", args, 1, NULL);
    directory_sync_set_tuning(&(directory_sync_tuning){.backoff_base_ms = 5});
    fx_sync(&f, "succeeded");
    assert_int_equal(sh_scalar(f.pg,
                               "SELECT count(*) FROM department_digests WHERE members IS NULL "
                               "OR octet_length(members) = 0",
                               0, NULL),
                     0);

    /* One member renamed: its row alone gets a new version. */
    char *before = row_versions(&f, "wwsim0001");
    sh_sim_post(&f.sim, "/sim/mutate", "{\"corp_id\":\"wwsim0001\",\"random\":{\"rename\":1}}");
    run = fx_sync(&f, "succeeded");
    char *after = row_versions(&f, "wwsim0001");
    assert_int_equal(versions_changed(before, after), 1);
    free(before);
    free(after);
    assert_true(run_count(&f,
                          "SELECT count(*) FROM sync_checkpoints WHERE run_id = $1::bigint "
                          "AND NOT unchanged",
                          run) >= 1);
    sh_assert_org(f.pg, &f.sim, "wwsim0001");

    /* A member of one department removed upstream while another department
     * fails: the run deletes nobody, and its department keeps it as dropped. */
    json_object *c = sim_corp(&f, "wwsim0001"), *users = sh_get(c, "users");
    for (size_t i = 0; i < json_object_array_length(users) && !gone[0]; i++) {
        json_object *u = json_object_array_get_idx(users, i), *dep = sh_get(u, "department");
        if (json_object_array_length(dep) != 1)
            continue;
        snprintf(gone, sizeof(gone), "%s", sh_jstr(u, "userid"));
        gone_dept = json_object_get_int64(json_object_array_get_idx(dep, 0));
    }
    json_object *depts = sh_get(c, "departments");
    for (size_t i = 0; i < json_object_array_length(depts); i++) {
        json_object *d = json_object_array_get_idx(depts, i);
        long long id = json_object_get_int64(sh_get(d, "id"));
        int parent_of_other = 0;
        for (size_t k = 0; k < json_object_array_length(depts); k++)
            parent_of_other |= json_object_get_int64(
                                   sh_get(json_object_array_get_idx(depts, k), "parentid")) == id;
        if (id != gone_dept && id != 1 && !other_dept)
            other_dept = id;
        if (id != gone_dept && id != 1 && id != other_dept && !parent_of_other && !leaf)
            leaf = id;
    }
    json_object_put(c);
    if (!gone[0] || !other_dept || !leaf)
        fail_msg("the simulator made no member of one department, or too few departments");
    snprintf(ops, sizeof(ops),
             "{\"corp_id\":\"wwsim0001\",\"ops\":[{\"op\":\"remove\",\"userid\":\"%s\"}]}", gone);
    sh_sim_post(&f.sim, "/sim/mutate", ops);
    snprintf(ops, sizeof(ops), "{\"fail_dept\":%lld,\"fail_dept_corp\":\"wwsim0001\"}", other_dept);
    sh_sim_post(&f.sim, "/sim/faults", ops);
    fx_sync(&f, "failed");
    assert_int_equal(
        countf(&f,
               "SELECT count(*) FROM users WHERE corp_id = 'wwsim0001' AND userid = '%s' "
               "AND deleted_at IS NULL",
               gone),
        1);
    assert_int_equal(countf(&f,
                            "SELECT count(*) FROM department_digests WHERE corp_id = 'wwsim0001' "
                            "AND dept_id = %lld AND '%s' = ANY (dropped)",
                            gone_dept, gone),
                     1);

    /* The next complete run finds that department unchanged, and still
     * deletes the member; nothing waits in dropped after it. */
    sh_sim_post(&f.sim, "/sim/faults", "{\"reset\":true}");
    run = fx_sync(&f, "succeeded");
    snprintf(q, sizeof(q),
             "SELECT count(*) FROM sync_checkpoints WHERE run_id = $1::bigint AND dept_id = %lld "
             "AND unchanged",
             gone_dept);
    assert_int_equal(run_count(&f, q, run), 1);
    assert_int_equal(
        countf(&f,
               "SELECT count(*) FROM users WHERE corp_id = 'wwsim0001' AND userid = '%s' "
               "AND deleted_at IS NOT NULL",
               gone),
        1);
    assert_int_equal(
        sh_scalar(f.pg, "SELECT count(*) FROM department_digests WHERE dropped <> '{}'", 0, NULL),
        0);
    sh_assert_org(f.pg, &f.sim, "wwsim0001");

    /* A department emptied (its members moved to the root, one removed) and
     * removed: the moved members stay, the removed one goes, its digest goes. */
    c = sim_corp(&f, "wwsim0001");
    users = sh_get(c, "users");
    size_t o = (size_t)snprintf(ops, sizeof(ops), "{\"corp_id\":\"wwsim0001\",\"ops\":[");
    int moved = 0, removed = 0;
    for (size_t i = 0; i < json_object_array_length(users); i++) {
        json_object *u = json_object_array_get_idx(users, i), *dep = sh_get(u, "department");
        int in_leaf = 0;
        for (size_t k = 0; k < json_object_array_length(dep); k++)
            in_leaf |= json_object_get_int64(json_object_array_get_idx(dep, k)) == leaf;
        if (!in_leaf)
            continue;
        o += (size_t)snprintf(ops + o, sizeof(ops) - o, "%s{\"op\":\"%s\",\"userid\":\"%s\"%s}",
                              moved + removed ? "," : "", removed ? "move" : "remove",
                              sh_jstr(u, "userid"), removed ? ",\"department\":[1]" : "");
        moved += removed;
        removed = 1;
    }
    json_object_put(c);
    o +=
        (size_t)snprintf(ops + o, sizeof(ops) - o, ",{\"op\":\"remove_dept\",\"id\":%lld}]}", leaf);
    assert_true(o < sizeof(ops));
    assert_true(moved >= 1);
    sh_sim_post(&f.sim, "/sim/mutate", ops);
    run = fx_sync(&f, "succeeded");
    PGresult *p = progress_row(&f, run, "wwsim0001");
    assert_int_equal(atoi(PQgetvalue(p, 0, 4)), 1); /* users_deleted */
    PQclear(p);
    assert_int_equal(countf(&f,
                            "SELECT count(*) FROM department_digests WHERE corp_id = 'wwsim0001' "
                            "AND dept_id = %lld",
                            leaf),
                     0);
    sh_assert_org(f.pg, &f.sim, "wwsim0001");
    fx_down(&f);
}

/* After a failure too: the simulator must not outlive its test. */
static int teardown(void **state)
{
    (void)state;
    directory_sync_set_tuning(NULL);
    sh_sim_kill_all();
    return 0;
}

int main(void)
{
    const char *tmp = getenv("ORGSYNC_TEST_TMP");
    FILE *logf;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_full_sync_then_mutations, teardown),
        cmocka_unit_test_teardown(test_tokens_expire_mid_run, teardown),
        cmocka_unit_test_teardown(test_failing_department_deletes_nobody, teardown),
        cmocka_unit_test_teardown(test_first_sync_meets_a_stored_member, teardown),
        cmocka_unit_test_teardown(test_refused_enterprise_fails_alone, teardown),
        cmocka_unit_test_teardown(test_department_write_fails, teardown),
        cmocka_unit_test_teardown(test_unknown_and_malformed, teardown),
        cmocka_unit_test_teardown(test_ban_pauses_and_alerts, teardown),
        cmocka_unit_test_teardown(test_daily_quota, teardown),
        cmocka_unit_test_teardown(test_resume_from_checkpoints, teardown),
        cmocka_unit_test_teardown(test_fenced_out, teardown),
        cmocka_unit_test_teardown(test_lease_lost_stops, teardown),
        cmocka_unit_test_teardown(test_corp_filter, teardown),
        cmocka_unit_test_teardown(test_unchanged_departments_write_nothing, teardown),
        cmocka_unit_test_teardown(test_changed_departments_send_changed_members, teardown),
        cmocka_unit_test_teardown(test_writes_catch_up_after_a_stall, teardown),
        cmocka_unit_test_teardown(test_http_errors_and_timeouts_retried, teardown),
        cmocka_unit_test_teardown(test_one_client_books_the_window, teardown),
        cmocka_unit_test_teardown(test_two_clients_share_the_window, teardown),
        cmocka_unit_test_teardown(test_clients_share_the_inflight_cap, teardown),
    };
    if (!tmp || !getenv("ORGSYNC_TEST_PG_ADMIN_DSN") || !getenv("ORGSYNC_TEST_REDIS_URL") ||
        !getenv("ORGSYNC_SIM_BIN")) {
        fprintf(stderr, "it.sync_engine: ORGSYNC_TEST_* / ORGSYNC_SIM_BIN missing: run it under "
                        "tests/run.sh\n");
        return 1;
    }
    snprintf(g_log_path, sizeof(g_log_path), "%s/sync_engine.%d.log", tmp, (int)getpid());
    logf = fopen(g_log_path, "a");
    if (!logf)
        return 1;
    setvbuf(logf, NULL, _IOLBF, 0);
    log_init(LOG_INFO, 1, "test-sync", 0);
    log_set_stream(logf);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    log_set_stream(NULL);
    fclose(logf);
    return rc;
}
