/* common/redis.c against the real test Redis (ORGSYNC_TEST_REDIS_URL): commands,
 * binary safety, error replies, scripts, timeouts, pipelining, disconnects and
 * closing with work in flight. */
#include <errno.h>
#include <unistd.h>

#include "tests/integration/redis_helpers.h"

typedef struct fixture {
    tloop l;
    redis_client *c;
    char prefix[64]; /* keys of this process only: the server is shared */
} fixture;

static const char *redis_url(void)
{
    const char *u = getenv("ORGSYNC_TEST_REDIS_URL");

    if (!u || !*u)
        fail_msg("ORGSYNC_TEST_REDIS_URL is not set: run under tests/run.sh");
    return u;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    tloop_init(&f->l);
    snprintf(f->prefix, sizeof(f->prefix), "orgsync:test:redis:%d:", (int)getpid());
    f->c = tloop_client(&f->l, &(redis_opts){.url = redis_url()});
    assert_non_null(f->c);
    tloop_wait_connected(&f->l, f->c, 3000);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    int rc = tloop_close(&f->l);

    free(f);
    return rc;
}

static void key(fixture *f, char *out, size_t len, const char *name)
{
    snprintf(out, len, "%s%s", f->prefix, name);
}

/* Sends one command and waits for its reply. */
#define CMD(f, r, ...)                                                                             \
    do {                                                                                           \
        memset((r), 0, sizeof(*(r)));                                                              \
        (r)->loop = &(f)->l.loop;                                                                  \
        assert_int_equal(redis_cmd((f)->c, on_result, (r), __VA_ARGS__), 0);                       \
        tloop_wait(&(f)->l, (r), 3000);                                                            \
        assert_int_equal((r)->calls, 1);                                                           \
    } while (0)

static void test_set_get(void **state)
{
    fixture *f = *state;
    char k[128];
    static result r;

    key(f, k, sizeof(k), "setget");
    CMD(f, &r, "SET %s %s", k, "hello");
    assert_false(r.has_err);
    assert_int_equal(r.type, REDIS_REPLY_STATUS);
    assert_string_equal(r.str, "OK");
    CMD(f, &r, "GET %s", k);
    assert_int_equal(r.type, REDIS_REPLY_STRING);
    assert_string_equal(r.str, "hello");
    CMD(f, &r, "DEL %s", k);
    assert_int_equal(r.integer, 1);
    CMD(f, &r, "GET %s", k);
    assert_false(r.has_err);
    assert_int_equal(r.type, REDIS_REPLY_NIL);
}

/* The lock's primitive: only one SET NX wins while the key lives; PX expires it. */
static void test_set_nx_px(void **state)
{
    fixture *f = *state;
    char k[128];
    static result r;

    key(f, k, sizeof(k), "nxpx");
    CMD(f, &r, "DEL %s", k);
    CMD(f, &r, "SET %s %s NX PX %d", k, "first", 300);
    assert_int_equal(r.type, REDIS_REPLY_STATUS);
    assert_string_equal(r.str, "OK");
    CMD(f, &r, "SET %s %s NX PX %d", k, "second", 300);
    assert_false(r.has_err);
    assert_int_equal(r.type, REDIS_REPLY_NIL);
    CMD(f, &r, "GET %s", k);
    assert_string_equal(r.str, "first");
    CMD(f, &r, "PTTL %s", k);
    assert_true(r.integer > 0 && r.integer <= 300);
    tloop_run_for(&f->l, 400);
    CMD(f, &r, "GET %s", k);
    assert_int_equal(r.type, REDIS_REPLY_NIL);
    CMD(f, &r, "SET %s %s NX PX %d", k, "third", 300);
    assert_string_equal(r.str, "OK");
    CMD(f, &r, "GET %s", k);
    assert_string_equal(r.str, "third");
    CMD(f, &r, "DEL %s", k);
}

static void test_binary_argv(void **state)
{
    fixture *f = *state;
    static const char val[] = "a\0b\r\n$3\r\n*1\r\n\xff";
    const size_t vlen = sizeof(val) - 1;
    char k[128];
    const char *argv[3];
    size_t lens[3];
    static result r;

    key(f, k, sizeof(k), "bin\r\nkey with space");
    argv[0] = "SET";
    argv[1] = k;
    argv[2] = val;
    lens[0] = 3;
    lens[1] = strlen(k);
    lens[2] = vlen;
    memset(&r, 0, sizeof(r));
    assert_int_equal(redis_cmdv(f->c, on_result, &r, 3, argv, lens), 0);
    tloop_wait(&f->l, &r, 3000);
    assert_string_equal(r.str, "OK");
    CMD(f, &r, "STRLEN %b", k, strlen(k));
    assert_int_equal(r.integer, (long long)vlen);
    CMD(f, &r, "GET %b", k, strlen(k));
    assert_int_equal(r.type, REDIS_REPLY_STRING);
    assert_int_equal(r.len, vlen);
    assert_memory_equal(r.str, val, vlen);
    CMD(f, &r, "DEL %b", k, strlen(k));
    assert_int_equal(r.integer, 1);
    /* Bad arguments are refused without a callback. */
    assert_int_equal(redis_cmdv(f->c, on_result, &r, 0, argv, lens), -EINVAL);
    assert_int_equal(redis_cmd(f->c, NULL, &r, "PING"), -EINVAL);
}

static void test_error_reply(void **state)
{
    fixture *f = *state;
    redis_stats before, after;
    char k[128];
    static result r;

    key(f, k, sizeof(k), "notanumber");
    CMD(f, &r, "SET %s %s", k, "abc");
    redis_get_stats(f->c, &before);
    CMD(f, &r, "INCR %s", k);
    assert_true(r.has_err);
    assert_int_equal(r.type, REDIS_REPLY_ERROR);
    assert_true(r.err_is_reply_str);
    assert_non_null(strstr(r.err, "not an integer"));
    CMD(f, &r, "NOSUCHCOMMAND %s", "x");
    assert_true(r.has_err);
    assert_true(r.err_is_reply_str);
    assert_int_equal(strncmp(r.err, "ERR", 3), 0);
    redis_get_stats(f->c, &after);
    assert_int_equal(after.errors - before.errors, 2);
    /* An error reply is an answer, not a broken connection. */
    assert_true(redis_connected(f->c));
    CMD(f, &r, "DEL %s", k);
    assert_false(r.has_err);
    assert_int_equal(after.reconnects, 0);
}

static void eval_wait(fixture *f, redis_script *s, int nkeys, int argc, const char **argv,
                      result *r)
{
    memset(r, 0, sizeof(*r));
    assert_int_equal(redis_eval(f->c, s, nkeys, argc, argv, on_result, r), 0);
    tloop_wait(&f->l, r, 3000);
    assert_int_equal(r->calls, 1);
}

static void test_eval_fallback(void **state)
{
    fixture *f = *state;
    char src[160], k[128];
    redis_script s;
    redis_stats a, b, d;
    const char *argv[2];
    static result r;

    key(f, k, sizeof(k), "evalkey");
    /* Source unique to this process, so no parallel test can load it for us. */
    snprintf(src, sizeof(src), "-- test_redis %d\nreturn {KEYS[1], ARGV[1], 'v1'}", (int)getpid());
    memset(&s, 0, sizeof(s));
    s.src = src;
    argv[0] = k;
    argv[1] = "arg\0ignored";
    CMD(f, &r, "SCRIPT FLUSH");
    assert_string_equal(r.str, "OK");

    redis_get_stats(f->c, &a);
    eval_wait(f, &s, 1, 2, argv, &r);
    redis_get_stats(f->c, &b);
    assert_false(r.has_err);
    assert_int_equal(r.type, REDIS_REPLY_ARRAY);
    assert_int_equal(r.elements, 3);
    assert_string_equal(r.el[0], k);
    assert_string_equal(r.el[1], "arg");
    assert_string_equal(r.el[2], "v1");
    /* EVALSHA answered NOSCRIPT, then EVAL: two commands for one callback. */
    assert_int_equal(b.commands - a.commands, 2);
    assert_int_equal(b.errors, a.errors);

    /* Now cached: one EVALSHA. */
    eval_wait(f, &s, 1, 2, argv, &r);
    redis_get_stats(f->c, &d);
    assert_int_equal(r.elements, 3);
    assert_string_equal(r.el[2], "v1");
    assert_int_equal(d.commands - b.commands, 1);

    /* Our lazily computed SHA-1 is the server's. */
    CMD(f, &r, "SCRIPT LOAD %s", src);
    assert_int_equal(r.type, REDIS_REPLY_STRING);
    assert_string_equal(r.str, s.sha);

    /* A script error is delivered as an error reply. */
    {
        redis_script bad = {.src = "return redis.call('INCR', KEYS[1])", .sha = {0}};
        const char *bk[1];
        char nk[128];
        key(f, nk, sizeof(nk), "evalstr");
        CMD(f, &r, "SET %s %s", nk, "abc");
        bk[0] = nk;
        eval_wait(f, &bad, 1, 1, bk, &r);
        assert_true(r.has_err);
        assert_true(r.err_is_reply_str);
        assert_non_null(strstr(r.err, "not an integer"));
        CMD(f, &r, "DEL %s", nk);
    }
    assert_int_equal(redis_eval(f->c, &s, 3, 2, argv, on_result, &r), -EINVAL);
}

/* A second client pauses the server; our command must time out on our timer,
 * long before the pause ends, and the client must come back afterwards. */
static void test_command_timeout(void **state)
{
    fixture *f = *state;
    redis_client *pauser, *c;
    static result r, first, second;
    redis_stats st;
    uint64_t t0;

    c = tloop_client(&f->l, &(redis_opts){.url = redis_url(), .command_timeout_ms = 150});
    assert_non_null(c);
    tloop_wait_connected(&f->l, c, 3000);
    pauser = f->c;

    memset(&r, 0, sizeof(r));
    assert_int_equal(redis_cmd(pauser, on_result, &r, "CLIENT PAUSE %d ALL", 600), 0);
    tloop_wait(&f->l, &r, 3000);
    assert_false(r.has_err);
    t0 = uv_now(&f->l.loop);

    memset(&first, 0, sizeof(first));
    memset(&second, 0, sizeof(second));
    first.loop = second.loop = &f->l.loop;
    assert_int_equal(redis_cmd(c, on_result, &first, "PING"), 0);
    tloop_run_for(&f->l, 60);
    assert_int_equal(redis_cmd(c, on_result, &second, "PING"), 0);
    tloop_wait(&f->l, &first, 3000);
    tloop_wait(&f->l, &second, 3000);
    assert_string_equal(first.err, REDIS_ERR_TIMEOUT);
    assert_int_equal(first.type, 0);
    assert_true(first.at - t0 >= 140 && first.at - t0 < 450);
    /* The connection is dropped with the late reply still owed on it: the
     * command behind it fails at the same moment, not at its own deadline. */
    assert_string_equal(second.err, REDIS_ERR_DISCONNECTED);
    assert_true(second.at - first.at < 30);
    redis_get_stats(c, &st);
    assert_int_equal(st.timeouts, 1);

    /* Back once the pause is over, on a new connection. */
    tloop_wait_connected(&f->l, c, 3000);
    memset(&r, 0, sizeof(r));
    assert_int_equal(redis_cmd(c, on_result, &r, "PING"), 0);
    tloop_wait(&f->l, &r, 3000);
    assert_false(r.has_err);
    assert_string_equal(r.str, "PONG");
    redis_get_stats(c, &st);
    assert_int_equal(st.reconnects, 1);
    /* Each callback ran exactly once, the late reply went nowhere. */
    assert_int_equal(first.calls, 1);
    assert_int_equal(second.calls, 1);
    assert_int_equal(tloop_close_client(&f->l, c), 0);
}

typedef struct pipe_state {
    int calls, errors, out_of_order;
    long long last;
} pipe_state;

static void on_incr(void *arg, redisReply *reply, const char *err)
{
    pipe_state *p = arg;

    p->calls++;
    if (err || !reply || reply->type != REDIS_REPLY_INTEGER) {
        p->errors++;
        return;
    }
    if (reply->integer != p->last + 1)
        p->out_of_order++;
    p->last = reply->integer;
}

static int pred_pipe_done(void *arg)
{
    return ((pipe_state *)arg)->calls >= 1000;
}

static void test_pipeline_1000(void **state)
{
    fixture *f = *state;
    static pipe_state p;
    char k[128];
    static result r;
    uint64_t t0;
    int i;

    memset(&p, 0, sizeof(p));
    key(f, k, sizeof(k), "pipeline");
    CMD(f, &r, "DEL %s", k);
    uv_update_time(&f->l.loop);
    t0 = uv_hrtime();
    for (i = 0; i < 1000; i++)
        assert_int_equal(redis_cmd(f->c, on_incr, &p, "INCR %s", k), 0);
    assert_int_equal(p.calls, 0); /* nothing answered from inside redis_cmd */
    assert_true(tloop_run_until(&f->l, pred_pipe_done, &p, 5000));
    print_message("1000 pipelined INCR: %.1f ms\n", (double)(uv_hrtime() - t0) / 1e6);
    assert_int_equal(p.calls, 1000);
    assert_int_equal(p.errors, 0);
    assert_int_equal(p.out_of_order, 0);
    assert_int_equal(p.last, 1000);
    CMD(f, &r, "GET %s", k);
    assert_string_equal(r.str, "1000");
    CMD(f, &r, "DEL %s", k);
}

/* Another client kills our connection while a blocking command waits on it. */
static void test_server_drops_connection(void **state)
{
    fixture *f = *state;
    redis_client *killer;
    static result id, pending, r;
    redis_stats st;
    char k[128];

    key(f, k, sizeof(k), "never-pushed");
    killer = tloop_client(&f->l, &(redis_opts){.url = redis_url()});
    assert_non_null(killer);
    tloop_wait_connected(&f->l, killer, 3000);
    CMD(f, &id, "CLIENT ID");
    memset(&pending, 0, sizeof(pending));
    assert_int_equal(redis_cmd(f->c, on_result, &pending, "BLPOP %s 5", k), 0);
    tloop_run_for(&f->l, 50);
    memset(&r, 0, sizeof(r));
    assert_int_equal(redis_cmd(killer, on_result, &r, "CLIENT KILL ID %lld", id.integer), 0);
    tloop_wait(&f->l, &r, 3000);
    assert_int_equal(r.integer, 1);
    tloop_wait(&f->l, &pending, 3000);
    assert_string_equal(pending.err, REDIS_ERR_DISCONNECTED);
    assert_int_equal(pending.type, 0);
    tloop_wait_connected(&f->l, f->c, 3000);
    CMD(f, &r, "PING");
    assert_string_equal(r.str, "PONG");
    redis_get_stats(f->c, &st);
    assert_int_equal(st.reconnects, 1);
    assert_int_equal(pending.calls, 1);
    assert_int_equal(tloop_close_client(&f->l, killer), 0);
}

typedef struct close_state {
    int calls, closing_errs, others, extra_sent, calls_at_done, done;
    redis_client *c;
    result extra;
} close_state;

static void on_pending_close(void *arg, redisReply *reply, const char *err)
{
    close_state *s = arg;

    (void)reply;
    s->calls++;
    if (err && strcmp(err, REDIS_ERR_CLOSING) == 0)
        s->closing_errs++;
    else
        s->others++;
    /* A callback that reacts by sending again must be told "closing" too. */
    if (!s->extra_sent) {
        s->extra_sent = 1;
        assert_int_equal(redis_cmd(s->c, on_result, &s->extra, "PING"), 0);
    }
}

static void on_close_done(void *arg)
{
    close_state *s = arg;

    s->done++;
    s->calls_at_done = s->calls + s->extra.calls;
}

static void test_close_with_pending(void **state)
{
    fixture *f = *state;
    static close_state s;
    int i;

    memset(&s, 0, sizeof(s));
    s.c = f->c;
    for (i = 0; i < 100; i++)
        assert_int_equal(redis_cmd(f->c, on_pending_close, &s, "PING"), 0);
    f->l.clients[0] = NULL; /* closed here, with our own done callback */
    redis_close(f->c, on_close_done, &s);
    f->c = NULL;
    assert_true(tloop_run_until(&f->l, pred_flag, &s.done, 3000));
    assert_int_equal(s.done, 1);
    assert_int_equal(s.calls, 100);
    assert_int_equal(s.closing_errs, 100);
    assert_int_equal(s.others, 0);
    assert_int_equal(s.extra.calls, 1);
    assert_string_equal(s.extra.err, REDIS_ERR_CLOSING);
    /* done came after every callback. */
    assert_int_equal(s.calls_at_done, 101);
    /* Nothing more is called afterwards. */
    tloop_run_for(&f->l, 100);
    assert_int_equal(s.calls, 100);
    assert_int_equal(s.done, 1);
}

/* Close while replies are on the wire: each callback once, no leak, no late call. */
static void test_close_mid_flight(void **state)
{
    fixture *f = *state;
    static close_state s;
    int i;

    memset(&s, 0, sizeof(s));
    s.c = f->c;
    s.extra_sent = 1;
    for (i = 0; i < 200; i++)
        assert_int_equal(redis_cmd(f->c, on_pending_close, &s, "PING"), 0);
    /* One loop turn: the commands are written, some replies may be read. */
    uv_run(&f->l.loop, UV_RUN_NOWAIT);
    f->l.clients[0] = NULL;
    redis_close(f->c, on_close_done, &s);
    f->c = NULL;
    assert_true(tloop_run_until(&f->l, pred_flag, &s.done, 3000));
    assert_int_equal(s.calls, 200);
    assert_int_equal(s.calls_at_done, 200);
    tloop_run_for(&f->l, 100);
    assert_int_equal(s.calls, 200);
}

/* Nothing listens on the port: commands fail with "not connected", never from
 * inside redis_cmd, and closing a client that never connected completes. */
static void test_not_connected(void **state)
{
    fixture *f = *state;
    redis_client *c;
    static result r;
    redis_stats st;

    c = tloop_client(&f->l,
                     &(redis_opts){.url = "redis://127.0.0.1:1/0", .connect_timeout_ms = 5000});
    assert_non_null(c);
    tloop_run_for(&f->l, 50);
    assert_false(redis_connected(c));
    memset(&r, 0, sizeof(r));
    assert_int_equal(redis_cmd(c, on_result, &r, "PING"), 0);
    assert_int_equal(r.calls, 0);
    tloop_wait(&f->l, &r, 1000);
    assert_int_equal(r.calls, 1);
    assert_string_equal(r.err, REDIS_ERR_NOT_CONNECTED);
    redis_get_stats(c, &st);
    assert_int_equal(st.commands, 0);
    assert_int_equal(st.errors, 1);
    /* A refused connect is noticed at once (not after the 5 s connect timeout)
     * and retried after a short backoff (at most 100 ms, then 200, 400). */
    tloop_run_for(&f->l, 700);
    redis_get_stats(c, &st);
    if (st.connect_failures < 2)
        fail_msg("only %lu connect failures in 750 ms", st.connect_failures);
    assert_int_equal(st.reconnects, 0);
    assert_int_equal(tloop_close_client(&f->l, c), 0);
    assert_null(redis_new(&f->l.loop, &(redis_opts){.url = "http://x"}));
}

/* A server that accepts TCP but never answers: the handshake times out, the
 * connection is abandoned and a new one is tried. */
typedef struct hole {
    uv_tcp_t srv;
    uv_tcp_t conns[16];
    int accepted;
} hole;

static void hole_on_conn(uv_stream_t *srv, int status)
{
    hole *h = srv->data;

    if (status < 0 || h->accepted >= 16)
        return;
    uv_tcp_init(srv->loop, &h->conns[h->accepted]);
    if (uv_accept(srv, (uv_stream_t *)&h->conns[h->accepted]) == 0)
        h->accepted++;
    else
        uv_close((uv_handle_t *)&h->conns[h->accepted], NULL);
}

static void test_connect_timeout(void **state)
{
    fixture *f = *state;
    struct sockaddr_in addr;
    struct sockaddr_storage bound;
    int namelen = sizeof(bound), i;
    char url[64];
    redis_client *c;
    static hole h;

    memset(&h, 0, sizeof(h));
    uv_tcp_init(&f->l.loop, &h.srv);
    h.srv.data = &h;
    uv_ip4_addr("127.0.0.1", 0, &addr);
    assert_int_equal(uv_tcp_bind(&h.srv, (const struct sockaddr *)&addr, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&h.srv, 16, hole_on_conn), 0);
    uv_tcp_getsockname(&h.srv, (struct sockaddr *)&bound, &namelen);
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/0",
             ntohs(((struct sockaddr_in *)&bound)->sin_port));

    c = tloop_client(&f->l, &(redis_opts){.url = url, .connect_timeout_ms = 150});
    assert_non_null(c);
    tloop_run_for(&f->l, 900);
    assert_false(redis_connected(c));
    /* 900 ms = at least 3 attempts of 150 ms plus backoffs of at most 100, 200, 400. */
    assert_true(h.accepted >= 3);
    assert_int_equal(tloop_close_client(&f->l, c), 0);
    for (i = 0; i < h.accepted; i++)
        uv_close((uv_handle_t *)&h.conns[i], NULL);
    uv_close((uv_handle_t *)&h.srv, NULL);
    uv_run(&f->l.loop, UV_RUN_NOWAIT);
}

/* A host name goes through the thread-pool resolver, not a blocking lookup. */
static void test_hostname(void **state)
{
    fixture *f = *state;
    char url[128];
    const char *u = redis_url();
    const char *port = strrchr(u, ':');
    redis_client *c;
    static result r;

    assert_non_null(port);
    snprintf(url, sizeof(url), "redis://localhost%s", port);
    c = tloop_client(&f->l, &(redis_opts){.url = url});
    assert_non_null(c);
    tloop_wait_connected(&f->l, c, 3000);
    memset(&r, 0, sizeof(r));
    assert_int_equal(redis_cmd(c, on_result, &r, "PING"), 0);
    tloop_wait(&f->l, &r, 3000);
    assert_string_equal(r.str, "PONG");
    assert_int_equal(tloop_close_client(&f->l, c), 0);
}

/* The /db part of the URL selects the database on every (re)connection. */
static void test_select_db(void **state)
{
    fixture *f = *state;
    char url[160], k[128];
    const char *u = redis_url();
    const char *slash = strrchr(u, '/');
    redis_client *db3;
    static result r;

    assert_non_null(slash);
    snprintf(url, sizeof(url), "%.*s/3", (int)(slash - u), u);
    key(f, k, sizeof(k), "in-db3");
    db3 = tloop_client(&f->l, &(redis_opts){.url = url});
    assert_non_null(db3);
    tloop_wait_connected(&f->l, db3, 3000);
    memset(&r, 0, sizeof(r));
    assert_int_equal(redis_cmd(db3, on_result, &r, "SET %s %s", k, "three"), 0);
    tloop_wait(&f->l, &r, 3000);
    assert_string_equal(r.str, "OK");
    CMD(f, &r, "GET %s", k); /* the fixture's client is on db 0 */
    assert_int_equal(r.type, REDIS_REPLY_NIL);
    CMD(f, &r, "SELECT %d", 3);
    CMD(f, &r, "GET %s", k);
    assert_string_equal(r.str, "three");
    CMD(f, &r, "DEL %s", k);
    CMD(f, &r, "SELECT %d", 0);
    assert_int_equal(tloop_close_client(&f->l, db3), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_set_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_nx_px, setup, teardown),
        cmocka_unit_test_setup_teardown(test_binary_argv, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_reply, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eval_fallback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_command_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipeline_1000, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_drops_connection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_with_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_mid_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_connected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostname, setup, teardown),
        cmocka_unit_test_setup_teardown(test_select_db, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
