/* common/pg against a real PostgreSQL: queries, parameters, prepared
 * statements, leased transactions, errors, timeouts, LISTEN/NOTIFY, a busy
 * pool of 2 and closing with work pending.
 *
 * Needs ORGSYNC_TEST_PG_DSN and ORGSYNC_TEST_PG_ADMIN_DSN (tests/run.sh). Each
 * run works in a database of its own, created here and dropped at the end. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/pg.h"

static char g_dbname[64];
static char g_dsn[1024];
static const char *g_admin_dsn;

/* ---- blocking helpers (test setup only, never on a loop) ---------------- */

static void admin_exec(const char *sql)
{
    PGconn *c = PQconnectdb(g_admin_dsn);
    PGresult *r;

    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("admin connect: %s", PQerrorMessage(c));
    r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
}

static int group_setup(void **state)
{
    const char *dsn = getenv("ORGSYNC_TEST_PG_DSN");
    char sql[256];

    (void)state;
    g_admin_dsn = getenv("ORGSYNC_TEST_PG_ADMIN_DSN");
    if (!dsn || !*dsn || !g_admin_dsn || !*g_admin_dsn) {
        fprintf(stderr, "ORGSYNC_TEST_PG_DSN / ORGSYNC_TEST_PG_ADMIN_DSN not set: "
                        "run through tests/run.sh\n");
        return -1;
    }
    snprintf(g_dbname, sizeof(g_dbname), "orgsync_pgtest_%ld", (long)getpid());
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", g_dbname);
    admin_exec(sql);
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s OWNER orgsync TEMPLATE template0", g_dbname);
    admin_exec(sql);
    /* In a conninfo string a later keyword wins. */
    snprintf(g_dsn, sizeof(g_dsn), "%s dbname=%s application_name=test_pg", dsn, g_dbname);
    return 0;
}

static int group_teardown(void **state)
{
    char sql[256];

    (void)state;
    if (!g_dbname[0])
        return 0;
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", g_dbname);
    admin_exec(sql);
    return 0;
}

/* ---- loop harness -------------------------------------------------------- */

typedef struct tloop {
    uv_loop_t loop;
    uv_timer_t guard;
    int guard_fired;
    pg_pool *pool;
    int closed;
} tloop;

typedef int (*pred_fn)(void *arg);

static void guard_cb(uv_timer_t *t)
{
    ((tloop *)t->data)->guard_fired = 1;
}

/* Runs the loop until pred holds or ms pass; returns pred's final value. */
static int run_until(tloop *t, pred_fn pred, void *arg, int ms)
{
    t->guard_fired = 0;
    uv_timer_start(&t->guard, guard_cb, (uint64_t)ms, 0);
    while (!pred(arg) && !t->guard_fired)
        uv_run(&t->loop, UV_RUN_ONCE);
    uv_timer_stop(&t->guard);
    return pred(arg);
}

static int flag_set(void *arg)
{
    return *(int *)arg != 0;
}

static int pool_is_ready(void *arg)
{
    return pg_pool_ready(arg);
}

static int listen_is_ready(void *arg)
{
    return pg_listen_ready(arg);
}

static void sleep_loop(tloop *t, int ms)
{
    int never = 0;

    run_until(t, flag_set, &never, ms);
}

static pg_pool *open_pool(tloop *t, const char *dsn, int size, int timeout_ms, int wait_ready)
{
    pg_pool_opts o = {.dsn = dsn, .size = size, .query_timeout_ms = timeout_ms};

    assert_int_equal(uv_loop_init(&t->loop), 0);
    uv_timer_init(&t->loop, &t->guard);
    t->guard.data = t;
    t->closed = 0;
    t->pool = pg_pool_new(&t->loop, &o);
    assert_non_null(t->pool);
    if (wait_ready)
        assert_true(run_until(t, pool_is_ready, t->pool, 10000));
    return t->pool;
}

static void on_closed(void *arg)
{
    ((tloop *)arg)->closed++;
}

/* Closes the pool and proves every handle is gone: uv_loop_close fails with
 * UV_EBUSY if anything is still open. */
static void close_pool(tloop *t)
{
    if (t->pool) {
        pg_pool_close(t->pool, on_closed, t);
        assert_true(run_until(t, flag_set, &t->closed, 10000));
        assert_int_equal(t->closed, 1);
        t->pool = NULL;
    }
    uv_close((uv_handle_t *)&t->guard, NULL);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&t->loop), 0);
}

/* ---- result capture ------------------------------------------------------ */

#define MAXV 4

typedef struct qres {
    int calls;
    int ok;
    char err[256];
    char sqlstate[6];
    int has_res;
    int ntuples;
    char val[MAXV][256];
    int isnull[MAXV];
    uint64_t at_ms; /* loop time when the callback ran */
    uv_loop_t *loop;
} qres;

static void on_result(void *arg, PGresult *res, const char *err)
{
    qres *q = arg;
    const char *st;
    int i;

    q->calls++;
    q->ok = err == NULL;
    q->has_res = res != NULL;
    if (q->loop)
        q->at_ms = uv_now(q->loop);
    snprintf(q->err, sizeof(q->err), "%s", err ? err : "");
    st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    snprintf(q->sqlstate, sizeof(q->sqlstate), "%s", st ? st : "");
    if (!res)
        return;
    q->ntuples = PQntuples(res);
    for (i = 0; i < MAXV && i < PQnfields(res) && q->ntuples > 0; i++) {
        q->isnull[i] = PQgetisnull(res, 0, i);
        snprintf(q->val[i], sizeof(q->val[i]), "%s", PQgetvalue(res, 0, i));
    }
}

static int q_done(void *arg)
{
    return ((qres *)arg)->calls > 0;
}

/* Runs one pool query to completion. */
static void query(tloop *t, qres *q, const char *sql, int n, const char *const *params)
{
    memset(q, 0, sizeof(*q));
    q->loop = &t->loop;
    assert_int_equal(pg_query(t->pool, sql, n, params, on_result, q), 0);
    assert_true(run_until(t, q_done, q, 15000));
    assert_int_equal(q->calls, 1);
}

static void query_ok(tloop *t, qres *q, const char *sql, int n, const char *const *params)
{
    query(t, q, sql, n, params);
    if (!q->ok)
        fail_msg("%s: %s", sql, q->err);
}

/* ---- tests --------------------------------------------------------------- */

static void test_simple_query(void **state)
{
    tloop t;
    qres q;
    pg_stats st;

    (void)state;
    open_pool(&t, g_dsn, 2, 5000, 1);
    query_ok(&t, &q, "SELECT 1 + 1, current_database()", 0, NULL);
    assert_int_equal(q.ntuples, 1);
    assert_string_equal(q.val[0], "2");
    assert_string_equal(q.val[1], g_dbname);
    query_ok(&t, &q, "SELECT 1 WHERE false", 0, NULL);
    assert_int_equal(q.ntuples, 0);
    pg_pool_stats(t.pool, &st);
    assert_int_equal(st.queries, 2);
    assert_int_equal(st.errors, 0);
    close_pool(&t);
}

static void test_parameters(void **state)
{
    /* Shaped like an injection: in a parameter it must stay plain data. */
    const char *evil = "O'Reilly\"; DROP TABLE victims; --";
    const char *p1[] = {evil, NULL, "41"};
    const char *p2[] = {"1", evil};
    const char *p3[] = {"x' OR '1'='1"};
    tloop t;
    qres q;

    (void)state;
    open_pool(&t, g_dsn, 2, 5000, 1);
    query_ok(&t, &q, "SELECT $1::text, $2::text IS NULL, $3::int + 1, $2::text", 3, p1);
    assert_string_equal(q.val[0], evil);
    assert_string_equal(q.val[1], "t");
    assert_string_equal(q.val[2], "42");
    assert_true(q.isnull[3]);

    query_ok(&t, &q, "CREATE TABLE victims (id int PRIMARY KEY, name text)", 0, NULL);
    query_ok(&t, &q, "INSERT INTO victims VALUES ($1, $2)", 2, p2);
    query_ok(&t, &q, "SELECT name FROM victims WHERE id = 1", 0, NULL);
    assert_string_equal(q.val[0], evil);
    /* The classic tautology matches nothing when it is a value. */
    query_ok(&t, &q, "SELECT count(*) FROM victims WHERE name = $1", 1, p3);
    assert_string_equal(q.val[0], "0");
    query_ok(&t, &q, "DROP TABLE victims", 0, NULL);
    close_pool(&t);
}

static void test_prepared(void **state)
{
    const char *args[2];
    char a[16], b[16], want[16];
    qres qs[6];
    tloop t;
    qres q;
    int i;

    (void)state;
    open_pool(&t, g_dsn, 2, 5000, 1);
    assert_int_equal(pg_pool_prepare(t.pool, "add", "SELECT $1::int + $2::int"), 0);
    assert_int_equal(pg_pool_prepare(t.pool, "add", "SELECT $1::int + $2::int"), 0);
    assert_int_equal(pg_pool_prepare(t.pool, "add", "SELECT 0"), PG_EEXIST);
    assert_int_equal(pg_pool_prepare(t.pool, "broken", "SELEC nope"), 0);
    assert_int_equal(pg_query_prepared(t.pool, "nope", 0, NULL, on_result, &q), PG_ENOENT);

    /* Six at once over two connections: each gets prepared on both. */
    for (i = 0; i < 6; i++) {
        memset(&qs[i], 0, sizeof(qs[i]));
        snprintf(a, sizeof(a), "%d", i);
        snprintf(b, sizeof(b), "%d", 100 * i);
        args[0] = a;
        args[1] = b;
        assert_int_equal(pg_query_prepared(t.pool, "add", 2, args, on_result, &qs[i]), 0);
    }
    for (i = 0; i < 6; i++) {
        assert_true(run_until(&t, q_done, &qs[i], 10000));
        assert_true(qs[i].ok);
        snprintf(want, sizeof(want), "%d", 101 * i);
        assert_string_equal(qs[i].val[0], want);
    }
    /* It is a server-side prepared statement, under its own name. */
    assert_int_equal(pg_pool_prepare(t.pool, "self",
                                     "SELECT count(*) FROM pg_prepared_statements "
                                     "WHERE name = 'self' AND from_sql = false"),
                     0);
    memset(&q, 0, sizeof(q));
    assert_int_equal(pg_query_prepared(t.pool, "self", 0, NULL, on_result, &q), 0);
    assert_true(run_until(&t, q_done, &q, 10000));
    assert_true(q.ok);
    assert_string_equal(q.val[0], "1");

    /* A statement that does not parse fails its callers with the server's error. */
    memset(&q, 0, sizeof(q));
    assert_int_equal(pg_query_prepared(t.pool, "broken", 0, NULL, on_result, &q), 0);
    assert_true(run_until(&t, q_done, &q, 10000));
    assert_false(q.ok);
    assert_string_equal(q.sqlstate, "42601");
    /* ... and the connection still works. */
    query_ok(&t, &q, "SELECT 7", 0, NULL);
    assert_string_equal(q.val[0], "7");
    close_pool(&t);
}

/* A transaction on a leased connection, driven step by step from callbacks. */
typedef struct txn {
    tloop *t;
    pg_conn *c;
    int acquired;
    char acquire_err[64];
    qres q;
} txn;

static void on_acquired(void *arg, pg_conn *c, const char *err)
{
    txn *x = arg;

    x->acquired++;
    x->c = c;
    snprintf(x->acquire_err, sizeof(x->acquire_err), "%s", err ? err : "");
}

static void acquire(tloop *t, txn *x)
{
    memset(x, 0, sizeof(*x));
    x->t = t;
    assert_int_equal(pg_acquire(t->pool, on_acquired, x), 0);
    /* Never called from inside pg_acquire. */
    assert_int_equal(x->acquired, 0);
    assert_true(run_until(t, flag_set, &x->acquired, 10000));
    assert_int_equal(x->acquired, 1);
    assert_non_null(x->c);
}

static void conn_query(txn *x, const char *sql, int n, const char *const *params)
{
    memset(&x->q, 0, sizeof(x->q));
    x->q.loop = &x->t->loop;
    assert_int_equal(pg_conn_query(x->c, sql, n, params, on_result, &x->q), 0);
    assert_int_equal(x->q.calls, 0);
    assert_true(run_until(x->t, q_done, &x->q, 10000));
}

static void test_transaction(void **state)
{
    const char *one[] = {"1"};
    tloop t;
    txn x;
    qres q, busy;
    int i;

    (void)state;
    open_pool(&t, g_dsn, 2, 5000, 1);
    query_ok(&t, &q, "CREATE TABLE tx (id int)", 0, NULL);

    /* BEGIN / INSERT / ROLLBACK leaves nothing. */
    acquire(&t, &x);
    conn_query(&x, "BEGIN", 0, NULL);
    assert_true(x.q.ok);
    conn_query(&x, "INSERT INTO tx VALUES ($1)", 1, one);
    assert_true(x.q.ok);
    conn_query(&x, "SELECT count(*) FROM tx", 0, NULL);
    assert_string_equal(x.q.val[0], "1"); /* visible inside */
    query_ok(&t, &q, "SELECT count(*) FROM tx", 0, NULL);
    assert_string_equal(q.val[0], "0"); /* not outside */
    /* One query at a time on a lease. */
    memset(&x.q, 0, sizeof(x.q));
    assert_int_equal(pg_conn_query(x.c, "SELECT 1", 0, NULL, on_result, &x.q), 0);
    assert_int_equal(pg_conn_query(x.c, "SELECT 2", 0, NULL, on_result, &busy), PG_EBUSY);
    assert_true(run_until(&t, q_done, &x.q, 10000));
    conn_query(&x, "ROLLBACK", 0, NULL);
    assert_true(x.q.ok);
    pg_release(x.c);
    query_ok(&t, &q, "SELECT count(*) FROM tx", 0, NULL);
    assert_string_equal(q.val[0], "0");

    /* Released in the middle of a transaction: the pool rolls it back. */
    acquire(&t, &x);
    conn_query(&x, "BEGIN", 0, NULL);
    conn_query(&x, "INSERT INTO tx VALUES ($1)", 1, one);
    assert_true(x.q.ok);
    pg_release(x.c);
    /* Released after an error, too (transaction in the aborted state). */
    acquire(&t, &x);
    conn_query(&x, "BEGIN", 0, NULL);
    conn_query(&x, "INSERT INTO tx VALUES ($1)", 1, one);
    conn_query(&x, "SELECT 1/0", 0, NULL);
    assert_string_equal(x.q.sqlstate, "22012");
    pg_release(x.c);
    /* Both connections are back, outside any transaction, and nothing was kept. */
    for (i = 0; i < 4; i++) {
        query_ok(&t, &q, "SELECT count(*), now() = statement_timestamp() FROM tx", 0, NULL);
        assert_string_equal(q.val[0], "0");
    }
    /* The ROLLBACKs may still be on their way while the queries above ran on
     * the other connection; a session left in a transaction would stay so. */
    for (i = 0; i < 40; i++) {
        query_ok(&t, &q,
                 "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                 "AND application_name = 'test_pg' AND state LIKE 'idle in transaction%'",
                 0, NULL);
        if (strcmp(q.val[0], "0") == 0)
            break;
        sleep_loop(&t, 50);
    }
    assert_string_equal(q.val[0], "0");

    /* A committed transaction is kept. */
    acquire(&t, &x);
    conn_query(&x, "BEGIN", 0, NULL);
    conn_query(&x, "INSERT INTO tx VALUES ($1)", 1, one);
    conn_query(&x, "COMMIT", 0, NULL);
    assert_true(x.q.ok);
    pg_release(x.c);
    query_ok(&t, &q, "SELECT count(*) FROM tx", 0, NULL);
    assert_string_equal(q.val[0], "1");
    query_ok(&t, &q, "DROP TABLE tx", 0, NULL);
    close_pool(&t);
}

static void test_sql_error(void **state)
{
    tloop t;
    qres q;
    pg_stats st;

    (void)state;
    open_pool(&t, g_dsn, 2, 5000, 1);
    query(&t, &q, "SELECT * FROM no_such_table", 0, NULL);
    assert_false(q.ok);
    assert_true(q.has_res);
    assert_string_equal(q.sqlstate, "42P01");
    assert_non_null(strstr(q.err, "no_such_table"));
    query(&t, &q, "SELECT 1/0", 0, NULL);
    assert_false(q.ok);
    assert_string_equal(q.sqlstate, "22012");
    query(&t, &q, "SELECT $1::int", 0, NULL); /* parameter missing */
    assert_false(q.ok);
    assert_true(q.err[0] != '\0');
    query_ok(&t, &q, "SELECT 'still fine'", 0, NULL);
    pg_pool_stats(t.pool, &st);
    assert_int_equal(st.queries, 4);
    assert_int_equal(st.errors, 3);
    close_pool(&t);
}

static void test_timeout(void **state)
{
    tloop t;
    qres q, q2, probe;
    pg_stats st;
    txn x;
    uint64_t t0;
    int i, gone = 0;

    (void)state;
    open_pool(&t, g_dsn, 1, 300, 1);
    memset(&q, 0, sizeof(q));
    memset(&q2, 0, sizeof(q2));
    q.loop = q2.loop = &t.loop;
    uv_update_time(&t.loop);
    t0 = uv_now(&t.loop);
    assert_int_equal(pg_query(t.pool, "SELECT pg_sleep(5)", 0, NULL, on_result, &q), 0);
    /* Queued behind it on the only connection: waiting counts too. */
    assert_int_equal(pg_query(t.pool, "SELECT 2", 0, NULL, on_result, &q2), 0);
    assert_true(run_until(&t, q_done, &q, 3000));
    assert_true(run_until(&t, q_done, &q2, 3000));
    assert_string_equal(q.err, "timeout");
    assert_string_equal(q2.err, "timeout");
    assert_false(q.has_res);
    assert_in_range(q.at_ms - t0, 290, 1500);
    assert_in_range(q2.at_ms - t0, 290, 1500);
    pg_pool_stats(t.pool, &st);
    assert_int_equal(st.timeouts, 2);

    /* The pool works afterwards ... */
    assert_true(run_until(&t, pool_is_ready, t.pool, 5000));
    query_ok(&t, &q, "SELECT 'after'", 0, NULL);
    assert_string_equal(q.val[0], "after");
    /* ... and the abandoned pg_sleep was cancelled on the server, well before
     * its 5 s were up. */
    for (i = 0; i < 20 && !gone; i++) {
        query(&t, &probe,
              "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(5)' "
              "AND state = 'active'",
              0, NULL);
        assert_true(probe.ok);
        gone = strcmp(probe.val[0], "0") == 0;
        if (!gone)
            sleep_loop(&t, 100);
    }
    assert_true(gone);

    /* On a lease: the timed-out lease is broken until released. */
    acquire(&t, &x);
    conn_query(&x, "SELECT pg_sleep(5)", 0, NULL);
    assert_string_equal(x.q.err, "timeout");
    conn_query(&x, "SELECT 1", 0, NULL);
    assert_string_equal(x.q.err, "connection lost");
    pg_release(x.c);
    assert_true(run_until(&t, pool_is_ready, t.pool, 5000));
    query_ok(&t, &q, "SELECT 'after lease'", 0, NULL);
    close_pool(&t);
}

typedef struct note {
    int count;
    char channel[64];
    char payload[256];
} note;

static void on_notify(void *arg, const char *channel, const char *payload)
{
    note *n = arg;

    n->count++;
    snprintf(n->channel, sizeof(n->channel), "%s", channel);
    snprintf(n->payload, sizeof(n->payload), "%s", payload);
}

static void test_listen_notify(void **state)
{
    const char *p1[] = {"orgsync_runs", "run 42: it's \"done\""};
    const char *p2[] = {"Mixed Case", "second"};
    const char *p3[] = {"not_listened", "x"};
    note n1 = {0}, n2 = {0};
    tloop t;
    qres q;

    (void)state;
    open_pool(&t, g_dsn, 2, 5000, 1);
    assert_int_equal(pg_listen(t.pool, "orgsync_runs", on_notify, &n1), 0);
    assert_int_equal(pg_listen(t.pool, "Mixed Case", on_notify, &n2), 0);
    assert_false(pg_listen_ready(t.pool)); /* nothing happens inside the call */
    assert_true(run_until(&t, listen_is_ready, t.pool, 10000));

    query_ok(&t, &q, "SELECT pg_notify($1, $2)", 2, p1);
    assert_true(run_until(&t, flag_set, &n1.count, 5000));
    assert_int_equal(n1.count, 1);
    assert_string_equal(n1.channel, "orgsync_runs");
    assert_string_equal(n1.payload, p1[1]);

    query_ok(&t, &q, "SELECT pg_notify($1, $2)", 2, p2);
    query_ok(&t, &q, "SELECT pg_notify($1, $2)", 2, p3);
    assert_true(run_until(&t, flag_set, &n2.count, 5000));
    sleep_loop(&t, 200);
    assert_int_equal(n1.count, 1);
    assert_int_equal(n2.count, 1);
    assert_string_equal(n2.channel, "Mixed Case");
    assert_string_equal(n2.payload, "second");
    close_pool(&t);
}

typedef struct many {
    int done, ok, wrong;
    int pids[8];
    int npids;
} many;

typedef struct one_q {
    many *m;
    int i;
} one_q;

static void on_many(void *arg, PGresult *res, const char *err)
{
    one_q *o = arg;
    many *m = o->m;
    int pid, j, seen = 0;

    m->done++;
    if (err) {
        fprintf(stderr, "query %d: %s\n", o->i, err);
        return;
    }
    m->ok++;
    if (atoi(PQgetvalue(res, 0, 0)) != 2 * o->i)
        m->wrong++;
    pid = atoi(PQgetvalue(res, 0, 1));
    for (j = 0; j < m->npids; j++)
        seen |= m->pids[j] == pid;
    if (!seen && m->npids < 8)
        m->pids[m->npids++] = pid;
}

static int many_done(void *arg)
{
    return ((many *)arg)->done == 500;
}

static void test_many_concurrent(void **state)
{
    static one_q qs[500];
    const char *args[1];
    char buf[16];
    many m = {0};
    tloop t;
    pg_stats st;
    uint64_t t0;
    int i;

    (void)state;
    open_pool(&t, g_dsn, 2, 10000, 0); /* submitted before any connection is up */
    for (i = 0; i < 500; i++) {
        qs[i].m = &m;
        qs[i].i = i;
        snprintf(buf, sizeof(buf), "%d", i);
        args[0] = buf; /* copied by pg_query */
        assert_int_equal(
            pg_query(t.pool, "SELECT $1::int * 2, pg_backend_pid()", 1, args, on_many, &qs[i]), 0);
    }
    uv_update_time(&t.loop);
    t0 = uv_now(&t.loop);
    assert_true(run_until(&t, many_done, &m, 30000));
    uv_update_time(&t.loop);
    print_message("500 queries through a pool of 2 (connecting included): %llu ms\n",
                  (unsigned long long)(uv_now(&t.loop) - t0));
    assert_int_equal(m.ok, 500);
    assert_int_equal(m.wrong, 0);
    /* A pool of 2 used 2 server sessions, no more. */
    assert_in_range(m.npids, 1, 2);
    pg_pool_stats(t.pool, &st);
    assert_int_equal(st.queries, 500);
    assert_int_equal(st.errors, 0);
    close_pool(&t);
}

static void test_queue_full(void **state)
{
    pg_pool_opts o = {.dsn = "host=127.0.0.1 port=1",
                      .size = 1,
                      .queue_max = 3,
                      .query_timeout_ms = 300,
                      .connect_timeout_ms = 200};
    qres q[3];
    tloop t;
    int i;

    (void)state;
    assert_int_equal(uv_loop_init(&t.loop), 0);
    uv_timer_init(&t.loop, &t.guard);
    t.guard.data = &t;
    t.closed = 0;
    t.pool = pg_pool_new(&t.loop, &o);
    assert_non_null(t.pool);
    for (i = 0; i < 3; i++) {
        memset(&q[i], 0, sizeof(q[i]));
        assert_int_equal(pg_query(t.pool, "SELECT 1", 0, NULL, on_result, &q[i]), 0);
    }
    assert_int_equal(pg_query(t.pool, "SELECT 1", 0, NULL, on_result, &q[0]), PG_EQUEUEFULL);
    /* Nothing listens on port 1: the queries time out waiting. */
    for (i = 0; i < 3; i++) {
        assert_true(run_until(&t, q_done, &q[i], 3000));
        assert_string_equal(q[i].err, "timeout");
    }
    assert_false(pg_pool_ready(t.pool));
    close_pool(&t);

    o.dsn = "this is not a conninfo";
    assert_int_equal(uv_loop_init(&t.loop), 0);
    assert_null(pg_pool_new(&t.loop, &o));
    assert_int_equal(uv_loop_close(&t.loop), 0);
}

/* A host name, so the pool resolves it off the loop (uv_getaddrinfo). */
static void test_host_name(void **state)
{
    char dsn[1200];
    tloop t;
    qres q;

    (void)state;
    snprintf(dsn, sizeof(dsn), "%s host=localhost", g_dsn);
    open_pool(&t, dsn, 1, 5000, 1);
    query_ok(&t, &q, "SELECT inet_client_addr() IS NOT NULL", 0, NULL);
    assert_string_equal(q.val[0], "t");
    close_pool(&t);
}

typedef struct closing {
    int calls[12];
    char err[12][32];
    int acquired;
    char acquire_err[32];
} closing;

typedef struct cl_one {
    closing *c;
    int i;
} cl_one;

static void on_closing_result(void *arg, PGresult *res, const char *err)
{
    cl_one *o = arg;

    (void)res;
    o->c->calls[o->i]++;
    snprintf(o->c->err[o->i], sizeof(o->c->err[o->i]), "%s", err ? err : "(ok)");
}

static void on_closing_acquire(void *arg, pg_conn *c, const char *err)
{
    closing *cl = arg;

    cl->acquired++;
    assert_null(c);
    snprintf(cl->acquire_err, sizeof(cl->acquire_err), "%s", err ? err : "(ok)");
}

static void test_close_pending(void **state)
{
    closing cl;
    cl_one ones[12];
    tloop t;
    uint64_t t0;
    int i;

    (void)state;
    memset(&cl, 0, sizeof(cl));
    open_pool(&t, g_dsn, 2, 10000, 1);
    for (i = 0; i < 10; i++) {
        ones[i].c = &cl;
        ones[i].i = i;
        assert_int_equal(
            pg_query(t.pool, "SELECT pg_sleep(3)", 0, NULL, on_closing_result, &ones[i]), 0);
    }
    assert_int_equal(pg_acquire(t.pool, on_closing_acquire, &cl), 0);
    /* Let two of them reach the server, the rest stay queued. */
    sleep_loop(&t, 200);
    uv_update_time(&t.loop);
    t0 = uv_now(&t.loop);
    pg_pool_close(t.pool, on_closed, &t);
    for (i = 0; i < 10; i++) {
        assert_int_equal(cl.calls[i], 1);
        assert_string_equal(cl.err[i], "pool closing");
    }
    assert_int_equal(cl.acquired, 1);
    assert_string_equal(cl.acquire_err, "pool closing");
    assert_int_equal(pg_query(t.pool, "SELECT 1", 0, NULL, on_closing_result, &ones[0]),
                     PG_ECLOSING);
    pg_pool_close(t.pool, on_closed, &t); /* a second close is harmless */
    assert_true(run_until(&t, flag_set, &t.closed, 5000));
    uv_update_time(&t.loop);
    assert_true(uv_now(&t.loop) - t0 < 1000); /* did not wait for pg_sleep */
    t.pool = NULL;
    for (i = 0; i < 10; i++)
        assert_int_equal(cl.calls[i], 1);
    close_pool(&t);
}

/* Closing before the loop ever ran: connections not even started. */
static void test_close_immediately(void **state)
{
    tloop t;
    qres q;

    (void)state;
    open_pool(&t, g_dsn, 3, 5000, 0);
    memset(&q, 0, sizeof(q));
    assert_int_equal(pg_query(t.pool, "SELECT 1", 0, NULL, on_result, &q), 0);
    assert_int_equal(pg_listen(t.pool, "x", on_notify, NULL), 0);
    close_pool(&t);
    assert_int_equal(q.calls, 1);
    assert_string_equal(q.err, "pool closing");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple_query),  cmocka_unit_test(test_parameters),
        cmocka_unit_test(test_prepared),      cmocka_unit_test(test_transaction),
        cmocka_unit_test(test_sql_error),     cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_listen_notify), cmocka_unit_test(test_many_concurrent),
        cmocka_unit_test(test_queue_full),    cmocka_unit_test(test_host_name),
        cmocka_unit_test(test_close_pending), cmocka_unit_test(test_close_immediately),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
