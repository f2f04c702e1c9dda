/* common/redis.c across Redis restarts, on a PRIVATE server (tests/servers.sh
 * start-redis) so that restarting it disturbs no other test. */
#include <unistd.h>

#include "tests/integration/redis_helpers.h"

typedef struct fixture {
    tloop l;
    redis_client *c;
    char dir[512];
    char url[128];
    FILE *watch; /* stops the server when we close it or when this process dies */
    char script_src[128];
    redis_script script;
} fixture;

static int servers(const char *cmd, const char *dir, char *url, size_t urllen)
{
    const char *src = getenv("ORGSYNC_SRC");
    char line[512], sh[1200];
    FILE *p;
    int rc;

    if (!src || !*src) {
        print_error("ORGSYNC_SRC is not set: run under tests/run.sh\n");
        return -1;
    }
    snprintf(sh, sizeof(sh), "'%s/tests/servers.sh' %s '%s'", src, cmd, dir);
    p = popen(sh, "r");
    if (!p)
        return -1;
    while (fgets(line, sizeof(line), p)) {
        if (url && strncmp(line, "REDIS_URL=", 10) == 0) {
            line[strcspn(line, "\r\n")] = '\0';
            size_t n = strlen(line + 10);
            if (n < urllen)
                memcpy(url, line + 10, n + 1);
        }
    }
    rc = pclose(p);
    return rc == 0 ? 0 : -1;
}

static int setup(void **state)
{
    const char *tmp = getenv("ORGSYNC_TEST_TMP");
    fixture *f;

    if (!tmp || !*tmp || !getenv("ORGSYNC_SRC")) {
        print_error("ORGSYNC_TEST_TMP / ORGSYNC_SRC are not set: run under tests/run.sh\n");
        return -1; /* cmocka reports the test as failed */
    }
    f = calloc(1, sizeof(*f));
    if (!f)
        return -1;
    snprintf(f->dir, sizeof(f->dir), "%s/redis-restart-%d", tmp, (int)getpid());
    snprintf(f->script_src, sizeof(f->script_src),
             "-- restart test\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])");
    f->script.src = f->script_src;
    if (servers("start-redis", f->dir, f->url, sizeof(f->url)) < 0 || !f->url[0]) {
        print_error("tests/servers.sh start-redis %s failed\n", f->dir);
        goto fail;
    }
    /* A crash (an ASan abort) skips the teardown; this shell's stdin reaches EOF
     * however we end, and it then stops the server. */
    {
        char sh[1200];
        snprintf(sh, sizeof(sh), "read _; '%s/tests/servers.sh' stop-redis '%s' >/dev/null 2>&1",
                 getenv("ORGSYNC_SRC"), f->dir);
        f->watch = popen(sh, "we");
        if (!f->watch)
            goto fail;
    }
    tloop_init(&f->l);
    f->c = tloop_client(
        &f->l,
        &(redis_opts){.url = f->url, .connect_timeout_ms = 1000, .command_timeout_ms = 3000});
    if (!f->c) {
        tloop_close(&f->l);
        goto fail;
    }
    *state = f;
    return 0;

fail:
    /* cmocka skips the teardown when setup fails: clean up here. */
    if (f->watch)
        pclose(f->watch);
    servers("stop-redis", f->dir, NULL, 0);
    free(f);
    return -1;
}

/* Stops the server whatever happened in the test. */
static int teardown(void **state)
{
    fixture *f = *state;
    int rc = tloop_close(&f->l);

    if (pclose(f->watch) != 0) /* EOF: the watcher stops the server */
        rc = -1;
    free(f);
    return rc;
}

static void cmd_wait(fixture *f, result *r, const char *fmt, const char *a)
{
    memset(r, 0, sizeof(*r));
    assert_int_equal(redis_cmd(f->c, on_result, r, fmt, a), 0);
    tloop_wait(&f->l, r, 4000);
    assert_int_equal(r->calls, 1);
}

/* Runs the script; returns how many commands it took (1 = EVALSHA hit, 2 = the
 * NOSCRIPT fallback) and checks the value INCRBY returned. */
static unsigned long eval_incr(fixture *f, long long expect)
{
    const char *argv[2] = {"restart:counter", "5"};
    redis_stats a, b;
    result r;

    memset(&r, 0, sizeof(r));
    redis_get_stats(f->c, &a);
    assert_int_equal(redis_eval(f->c, &f->script, 1, 2, argv, on_result, &r), 0);
    tloop_wait(&f->l, &r, 4000);
    redis_get_stats(f->c, &b);
    if (r.has_err)
        fail_msg("eval failed: %s", r.err);
    assert_int_equal(r.type, REDIS_REPLY_INTEGER);
    assert_int_equal(r.integer, expect);
    return b.commands - a.commands;
}

static int pred_two(void *p)
{
    result *r = p;
    return r[0].calls > 0 && r[1].calls > 0;
}

static void test_restart(void **state)
{
    fixture *f = *state;
    result blocked[2], r;
    redis_stats st;

    tloop_wait_connected(&f->l, f->c, 4000);
    assert_int_equal(eval_incr(f, 5), 2);  /* fresh server: NOSCRIPT, then EVAL */
    assert_int_equal(eval_incr(f, 10), 1); /* cached */
    cmd_wait(f, &r, "SET restart:key %s", "before");
    assert_string_equal(r.str, "OK");

    /* Two commands the server holds when it goes away. */
    memset(blocked, 0, sizeof(blocked));
    assert_int_equal(redis_cmd(f->c, on_result, &blocked[0], "BLPOP restart:list 20"), 0);
    assert_int_equal(redis_cmd(f->c, on_result, &blocked[1], "BLPOP restart:list 20"), 0);
    tloop_run_for(&f->l, 100);
    assert_int_equal(blocked[0].calls + blocked[1].calls, 0);

    /* The loop does not run meanwhile: the client sees it all at once after. */
    assert_int_equal(servers("restart-redis", f->dir, NULL, 0), 0);
    assert_true(tloop_run_until(&f->l, pred_two, blocked, 3000));
    assert_int_equal(blocked[0].calls, 1);
    assert_int_equal(blocked[1].calls, 1);
    assert_string_equal(blocked[0].err, REDIS_ERR_DISCONNECTED);
    assert_string_equal(blocked[1].err, REDIS_ERR_DISCONNECTED);
    assert_int_equal(blocked[0].type, 0);

    /* Not back yet: a command now fails at once rather than waiting. */
    assert_false(redis_connected(f->c));
    memset(&r, 0, sizeof(r));
    assert_int_equal(redis_cmd(f->c, on_result, &r, "PING"), 0);
    tloop_wait(&f->l, &r, 1000);
    assert_string_equal(r.err, REDIS_ERR_NOT_CONNECTED);

    /* A new connection comes up on its own. */
    tloop_wait_connected(&f->l, f->c, 5000);
    redis_get_stats(f->c, &st);
    assert_int_equal(st.reconnects, 1);

    /* The restart emptied the script cache (and, without persistence, the data):
     * EVALSHA falls back to EVAL again. */
    assert_int_equal(eval_incr(f, 5), 2);
    assert_int_equal(eval_incr(f, 10), 1);
    cmd_wait(f, &r, "GET %s", "restart:key");
    assert_int_equal(r.type, REDIS_REPLY_NIL);
    cmd_wait(f, &r, "SET restart:key %s", "after");
    assert_false(r.has_err);
    assert_string_equal(r.str, "OK");
    /* One connection on the new server: ours, not a leftover. */
    cmd_wait(f, &r, "INFO %s", "clients");
    assert_non_null(strstr(r.str, "connected_clients:1\r\n"));
}

/* The server is down for a while: commands fail fast, attempts back off, and
 * the client returns once the server does. */
static void test_outage(void **state)
{
    fixture *f = *state;
    redis_stats st;
    result r;
    char url[128];

    tloop_wait_connected(&f->l, f->c, 4000);
    assert_int_equal(servers("stop-redis", f->dir, NULL, 0), 0);
    tloop_run_for(&f->l, 800);
    assert_false(redis_connected(f->c));
    redis_get_stats(f->c, &st);
    /* Refused connects are seen at once; backoff keeps them few (full jitter
     * over 100, 200, 400, 800 ms windows). */
    if (st.connect_failures < 2 || st.connect_failures > 40)
        fail_msg("%lu connect failures in 800 ms", st.connect_failures);
    memset(&r, 0, sizeof(r));
    assert_int_equal(redis_cmd(f->c, on_result, &r, "PING"), 0);
    tloop_wait(&f->l, &r, 1000);
    assert_string_equal(r.err, REDIS_ERR_NOT_CONNECTED);

    /* restart-redis starts it again on the same port. */
    assert_int_equal(servers("restart-redis", f->dir, url, sizeof(url)), 0);
    tloop_wait_connected(&f->l, f->c, 8000);
    cmd_wait(f, &r, "ECHO %s", "back");
    assert_string_equal(r.str, "back");
    redis_get_stats(f->c, &st);
    assert_int_equal(st.reconnects, 1);
}

/* requirepass set on the private server: a wrong password never becomes
 * connected (and keeps retrying), the right one does, again after its connection
 * is killed. A password the server does not ask for is tolerated. */
static void test_auth(void **state)
{
    fixture *f = *state;
    char good[200], bad[200];
    const char *hostport = f->url + strlen("redis://");
    redis_client *ok, *wrong;
    static result r, id;
    redis_stats st;

    tloop_wait_connected(&f->l, f->c, 4000);
    snprintf(good, sizeof(good), "redis://:p%%40ss%%20word@%s", hostport);
    snprintf(bad, sizeof(bad), "redis://:nope@%s", hostport);

    /* No requirepass yet: the password is sent, refused as unneeded, and we go on. */
    ok = tloop_client(&f->l, &(redis_opts){.url = good});
    assert_non_null(ok);
    tloop_wait_connected(&f->l, ok, 4000);
    assert_int_equal(tloop_close_client(&f->l, ok), 0);

    /* f->c stays logged in (setting requirepass does not log out connections). */
    cmd_wait(f, &r, "CONFIG SET requirepass %s", "p@ss word");
    assert_string_equal(r.str, "OK");
    ok = tloop_client(&f->l, &(redis_opts){.url = good});
    wrong = tloop_client(&f->l, &(redis_opts){.url = bad, .connect_timeout_ms = 300});
    assert_non_null(ok);
    assert_non_null(wrong);
    tloop_wait_connected(&f->l, ok, 4000);
    memset(&id, 0, sizeof(id));
    assert_int_equal(redis_cmd(ok, on_result, &id, "CLIENT ID"), 0);
    tloop_wait(&f->l, &id, 3000);
    assert_int_equal(id.type, REDIS_REPLY_INTEGER);
    tloop_run_for(&f->l, 400);
    assert_false(redis_connected(wrong));
    redis_get_stats(wrong, &st);
    assert_true(st.connect_failures >= 1);

    /* The reconnect logs in again. */
    memset(&r, 0, sizeof(r));
    assert_int_equal(redis_cmd(f->c, on_result, &r, "CLIENT KILL ID %lld", id.integer), 0);
    tloop_wait(&f->l, &r, 3000);
    assert_int_equal(r.integer, 1);
    tloop_wait_connected(&f->l, ok, 4000);
    memset(&r, 0, sizeof(r));
    assert_int_equal(redis_cmd(ok, on_result, &r, "ECHO %s", "authed"), 0);
    tloop_wait(&f->l, &r, 3000);
    assert_string_equal(r.str, "authed");
    redis_get_stats(ok, &st);
    assert_int_equal(st.reconnects, 1);
    assert_false(redis_connected(wrong));

    /* servers.sh stops the server without a password. */
    cmd_wait(f, &r, "CONFIG SET requirepass %s", "");
    assert_int_equal(tloop_close_client(&f->l, ok), 0);
    assert_int_equal(tloop_close_client(&f->l, wrong), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
