/* common/pg across PostgreSQL restarts, on a PRIVATE server (tests/servers.sh
 * start-pg) so that restarting it disturbs no other test.
 *
 * A query in flight when the server restarts fails with "connection lost" (it
 * is never retried behind the caller's back); the pool reconnects by itself,
 * re-prepares its statements and re-LISTENs; later queries succeed. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/pg.h"

typedef struct fixture {
    char dir[512];
    char dsn[256];
    FILE *watch; /* stops the server when we close it or when this process dies */
    uv_loop_t loop;
    uv_timer_t guard;
    int guard_fired;
    pg_pool *pool;
    int closed;
} fixture;

/* Runs tests/servers.sh CMD DIR; with dsn, picks PG_DSN='...' from its output. */
static int servers(const char *cmd, const char *dir, char *dsn, size_t dsnlen)
{
    const char *src = getenv("ORGSYNC_SRC");
    char line[512], sh[1200];
    size_t n;
    FILE *p;

    if (!src || !*src) {
        print_error("ORGSYNC_SRC is not set: run under tests/run.sh\n");
        return -1;
    }
    snprintf(sh, sizeof(sh), "'%s/tests/servers.sh' %s '%s'", src, cmd, dir);
    p = popen(sh, "r");
    if (!p)
        return -1;
    while (fgets(line, sizeof(line), p)) {
        if (dsn && strncmp(line, "PG_DSN='", 8) == 0) {
            char *v = line + 8;

            v[strcspn(v, "'\r\n")] = '\0';
            n = strlen(v);
            if (n < dsnlen)
                memcpy(dsn, v, n + 1);
        }
    }
    return pclose(p) == 0 ? 0 : -1;
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int setup(void **state)
{
    const char *tmp = getenv("ORGSYNC_TEST_TMP");
    char sh[1200];
    fixture *f;
    int attempt;

    if (!tmp || !*tmp || !getenv("ORGSYNC_SRC")) {
        print_error("ORGSYNC_TEST_TMP / ORGSYNC_SRC are not set: run under tests/run.sh\n");
        return -1; /* cmocka reports the test as failed */
    }
    f = calloc(1, sizeof(*f));
    if (!f)
        return -1;
    snprintf(f->dir, sizeof(f->dir), "%s/pg-restart-%d", tmp, (int)getpid());
    /* servers.sh picks a port that was free a moment ago; another process may
     * take it before postgres binds it, so try a few times. */
    for (attempt = 0; attempt < 3; attempt++) {
        f->dsn[0] = '\0';
        if (servers("start-pg", f->dir, f->dsn, sizeof(f->dsn)) == 0 && f->dsn[0])
            break;
    }
    if (!f->dsn[0]) {
        print_error("tests/servers.sh start-pg %s failed\n", f->dir);
        goto fail;
    }
    /* A crash (an ASan abort) skips the teardown; this shell's stdin reaches EOF
     * however we end, and it then stops the server. */
    snprintf(sh, sizeof(sh), "read _; '%s/tests/servers.sh' stop-pg '%s' >/dev/null 2>&1",
             getenv("ORGSYNC_SRC"), f->dir);
    f->watch = popen(sh, "we");
    if (!f->watch)
        goto fail;
    *state = f;
    return 0;
fail:
    servers("stop-pg", f->dir, NULL, 0);
    free(f);
    return -1;
}

static int teardown(void **state)
{
    fixture *f = *state;
    int rc = 0;

    if (pclose(f->watch) != 0) /* EOF: the watcher stops the server */
        rc = -1;
    free(f);
    return rc;
}

/* ---- loop harness -------------------------------------------------------- */

typedef int (*pred_fn)(void *arg);

static void guard_cb(uv_timer_t *t)
{
    ((fixture *)t->data)->guard_fired = 1;
}

static int run_until(fixture *f, pred_fn pred, void *arg, int ms)
{
    f->guard_fired = 0;
    uv_timer_start(&f->guard, guard_cb, (uint64_t)ms, 0);
    while (!pred(arg) && !f->guard_fired)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_timer_stop(&f->guard);
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

typedef struct want_reconnects {
    pg_pool *pool;
    unsigned long n;
} want_reconnects;

static int reconnected(void *arg)
{
    want_reconnects *w = arg;
    pg_stats st;

    pg_pool_stats(w->pool, &st);
    return st.reconnects >= w->n;
}

static void open_pool(fixture *f, int timeout_ms)
{
    pg_pool_opts o = {
        .dsn = f->dsn, .size = 2, .query_timeout_ms = timeout_ms, .connect_timeout_ms = 2000};

    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->guard);
    f->guard.data = f;
    f->closed = 0;
    f->pool = pg_pool_new(&f->loop, &o);
    assert_non_null(f->pool);
}

static void on_closed(void *arg)
{
    ((fixture *)arg)->closed++;
}

static void close_pool(fixture *f)
{
    pg_pool_close(f->pool, on_closed, f);
    assert_true(run_until(f, flag_set, &f->closed, 10000));
    f->pool = NULL;
    uv_close((uv_handle_t *)&f->guard, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

typedef struct qres {
    int calls;
    int ok;
    int has_res;
    char err[256];
    char val[256];
} qres;

static void on_result(void *arg, PGresult *res, const char *err)
{
    qres *q = arg;

    q->calls++;
    q->ok = err == NULL;
    q->has_res = res != NULL;
    snprintf(q->err, sizeof(q->err), "%s", err ? err : "");
    if (res && !err && PQntuples(res) > 0)
        snprintf(q->val, sizeof(q->val), "%s", PQgetvalue(res, 0, 0));
}

static int q_done(void *arg)
{
    return ((qres *)arg)->calls > 0;
}

static void query_ok(fixture *f, const char *sql, int n, const char *const *params, qres *q)
{
    memset(q, 0, sizeof(*q));
    assert_int_equal(pg_query(f->pool, sql, n, params, on_result, q), 0);
    assert_true(run_until(f, q_done, q, 10000));
    if (!q->ok)
        fail_msg("%s: %s", sql, q->err);
}

static void prepared_ok(fixture *f, const char *arg, const char *want)
{
    const char *params[] = {arg};
    qres q[4];
    int i;

    /* Four at once, so both connections run it. */
    for (i = 0; i < 4; i++) {
        memset(&q[i], 0, sizeof(q[i]));
        assert_int_equal(pg_query_prepared(f->pool, "triple", 1, params, on_result, &q[i]), 0);
    }
    for (i = 0; i < 4; i++) {
        assert_true(run_until(f, q_done, &q[i], 10000));
        if (!q[i].ok)
            fail_msg("prepared: %s", q[i].err);
        assert_string_equal(q[i].val, want);
    }
}

typedef struct note {
    int count;
    char payload[64];
} note;

static void on_notify(void *arg, const char *channel, const char *payload)
{
    note *n = arg;

    (void)channel;
    n->count++;
    snprintf(n->payload, sizeof(n->payload), "%s", payload);
}

static void notify_roundtrip(fixture *f, note *n, const char *payload)
{
    const char *params[] = {"restart_chan", payload};
    qres q;

    assert_true(run_until(f, listen_is_ready, f->pool, 10000));
    n->count = 0;
    query_ok(f, "SELECT pg_notify($1, $2)", 2, params, &q);
    assert_true(run_until(f, flag_set, &n->count, 5000));
    assert_string_equal(n->payload, payload);
}

/* ---- tests --------------------------------------------------------------- */

static void test_restart_mid_query(void **state)
{
    fixture *f = *state;
    want_reconnects w;
    note n = {0};
    qres sleeper, next, q;
    pg_stats st;
    double t0;

    open_pool(f, 20000);
    assert_int_equal(pg_pool_prepare(f->pool, "triple", "SELECT $1::int * 3"), 0);
    assert_int_equal(pg_listen(f->pool, "restart_chan", on_notify, &n), 0);
    assert_true(run_until(f, pool_is_ready, f->pool, 10000));
    query_ok(f, "SELECT 'before'", 0, NULL, &q);
    prepared_ok(f, "7", "21");
    notify_roundtrip(f, &n, "before");

    /* A long query is on the server when it restarts. */
    memset(&sleeper, 0, sizeof(sleeper));
    assert_int_equal(pg_query(f->pool, "SELECT pg_sleep(30)", 0, NULL, on_result, &sleeper), 0);
    {
        int never = 0;
        run_until(f, flag_set, &never, 300);
    }
    assert_int_equal(sleeper.calls, 0);
    t0 = now_s();
    assert_int_equal(servers("restart-pg", f->dir, NULL, 0), 0);
    print_message("restart-pg took %.2f s\n", now_s() - t0);

    /* Submitted before the pool has seen the restart. */
    memset(&next, 0, sizeof(next));
    assert_int_equal(pg_query(f->pool, "SELECT 'next'", 0, NULL, on_result, &next), 0);

    assert_true(run_until(f, q_done, &sleeper, 5000));
    assert_int_equal(sleeper.calls, 1);
    assert_string_equal(sleeper.err, "connection lost");
    assert_false(sleeper.has_res);

    /* The next query is not sent into a dead session (the idle connection got
     * the server's FATAL): it waits for a fresh connection and succeeds. */
    assert_true(run_until(f, q_done, &next, 10000));
    assert_int_equal(next.calls, 1);
    if (!next.ok)
        fail_msg("query submitted right after the restart: %s", next.err);
    assert_string_equal(next.val, "next");

    /* Both pool connections and the listener come back by themselves. */
    w.pool = f->pool;
    w.n = 3;
    assert_true(run_until(f, reconnected, &w, 10000));
    assert_true(pg_pool_ready(f->pool));
    print_message("reconnected %.2f s after the restart began\n", now_s() - t0);

    /* Statements are prepared again on the new sessions ... */
    prepared_ok(f, "8", "24");
    /* ... LISTEN was re-issued ... */
    notify_roundtrip(f, &n, "after");
    /* ... and plain queries work. */
    query_ok(f, "SELECT 'after'", 0, NULL, &q);
    assert_string_equal(q.val, "after");

    pg_pool_stats(f->pool, &st);
    assert_true(st.reconnects >= 3);
    assert_true(st.errors >= 1);
    close_pool(f);
    /* An idle check that the second call was also exactly once. */
    assert_int_equal(sleeper.calls, 1);
    assert_int_equal(next.calls, 1);
}

/* The server is down for a while: queries fail by their timeout, connect
 * attempts back off (capped at 5 s), and the pool recovers on its own. */
static void test_server_down_then_up(void **state)
{
    fixture *f = *state;
    qres down, q;
    double t0, t_up, waited;

    open_pool(f, 1000);
    assert_int_equal(pg_pool_prepare(f->pool, "triple", "SELECT $1::int * 3"), 0);
    assert_true(run_until(f, pool_is_ready, f->pool, 10000));
    prepared_ok(f, "2", "6");

    assert_int_equal(servers("stop-pg", f->dir, NULL, 0), 0);
    t0 = now_s();
    memset(&down, 0, sizeof(down));
    assert_int_equal(pg_query(f->pool, "SELECT 1", 0, NULL, on_result, &down), 0);
    assert_true(run_until(f, q_done, &down, 5000));
    assert_false(down.ok);
    /* Either the dead connection was used, or the query waited and timed out. */
    assert_true(strcmp(down.err, "connection lost") == 0 || strcmp(down.err, "timeout") == 0);
    {
        int never = 0;
        run_until(f, flag_set, &never, 2500); /* several failed connect attempts */
    }
    assert_false(pg_pool_ready(f->pool));

    /* restart-pg starts a stopped server with its last options (same port). */
    assert_int_equal(servers("restart-pg", f->dir, NULL, 0), 0);
    t_up = now_s();
    assert_true(run_until(f, pool_is_ready, f->pool, 8000));
    waited = now_s() - t_up;
    print_message("down %.2f s; ready %.2f s after the server was back\n", t_up - t0, waited);
    /* Backoff is capped at 5 s: never much longer than that. */
    assert_true(waited < 6.0);
    prepared_ok(f, "5", "15");
    query_ok(f, "SELECT 'recovered'", 0, NULL, &q);
    close_pool(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_restart_mid_query, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_down_then_up, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
