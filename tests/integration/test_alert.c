/* Alerts: the webhook POST and its JSON, retries on 500, giving up after three
 * tries, a webhook that never answers stalling nothing (bounded queue, drop
 * oldest), flush on close, and log-only mode. The receiver is an http_server in
 * the test, on the same loop. */
#include "tests/integration/coord_helpers.h"

#include "common/alert.h"
#include "common/http_client.h"
#include "common/http_server.h"
#include "common/log.h"

#include <json-c/json.h>

#define MAX_SEEN 32

typedef struct receiver {
    http_server *srv;
    int port;
    int plan[MAX_SEEN]; /* status per arriving request; 0 = never answer */
    int nplan;
    int seen;
    char bodies[MAX_SEEN][1024];
    char ctype[64];
} receiver;

static void on_hook(http_req *req, void *arg)
{
    receiver *r = arg;
    size_t len;
    const char *body = http_req_body(req, &len);
    int status = r->seen < r->nplan ? r->plan[r->seen] : 200;
    const char *ct = http_req_header(req, "Content-Type");

    if (r->seen < MAX_SEEN)
        snprintf(r->bodies[r->seen], sizeof(r->bodies[0]), "%.*s", (int)len, body ? body : "");
    snprintf(r->ctype, sizeof(r->ctype), "%s", ct ? ct : "");
    r->seen++;
    if (status == 0)
        return; /* never answered: freed when the client gives up and closes */
    http_reply_json(req, status, status < 300 ? "{\"ok\":true}" : "{\"error\":\"no\"}");
}

typedef struct fixture {
    uv_loop_t loop;
    http_client *http;
    receiver rx;
    char url[128];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    char err[128];

    uv_loop_init(&f->loop);
    f->http = http_client_new(&f->loop, NULL);
    assert_non_null(f->http);
    f->rx.srv = http_server_new(&f->loop, NULL);
    assert_non_null(f->rx.srv);
    assert_int_equal(http_server_route(f->rx.srv, "POST", "/hook", on_hook, &f->rx), 0);
    assert_int_equal(http_server_listen(f->rx.srv, "127.0.0.1:0", err, sizeof(err)), 0);
    f->rx.port = http_server_port(f->rx.srv, 0);
    snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%d/hook", f->rx.port);
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
    uint64_t end = time_mono_us() + 5000000;

    closed = 0;
    alert_close(0, on_closed, NULL); /* a no-op done if a test closed it already */
    while (closed < 1 && time_mono_us() < end)
        uv_run(&f->loop, UV_RUN_ONCE);
    http_client_close(f->http, on_closed, NULL);
    http_server_close(f->rx.srv, on_closed, NULL);
    while (closed < 3 && time_mono_us() < end)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(closed, 3);
    th_loop_finish(&f->loop);
    free(f);
    return 0;
}

static void wait_seen(fixture *f, int n, int timeout_ms)
{
    uint64_t end = time_mono_us() + (uint64_t)timeout_ms * 1000;
    while (f->rx.seen < n && time_mono_us() < end)
        th_run_for(&f->loop, 5);
}

static void wait_stats(fixture *f, unsigned long sent, unsigned long failed, int timeout_ms)
{
    uint64_t end = time_mono_us() + (uint64_t)timeout_ms * 1000;
    alert_stats st;

    do {
        th_run_for(&f->loop, 5);
        alert_stats_get(&st);
    } while ((st.sent < sent || st.failed < failed) && time_mono_us() < end);
}

static const char *jstr(struct json_object *o, const char *k)
{
    struct json_object *v;
    if (!json_object_object_get_ex(o, k, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

static int jnull(struct json_object *o, const char *k)
{
    struct json_object *v = NULL;
    return json_object_object_get_ex(o, k, &v) && v == NULL;
}

static void test_posts_json(void **state)
{
    fixture *f = *state;
    struct json_object *o, *v;
    alert_stats st;
    const char *ts;

    assert_int_equal(alert_init(&f->loop, f->http, f->url, "prod", "host-1:77"), 0);
    assert_int_equal(alert_init(&f->loop, f->http, f->url, "prod", "x"), -EINVAL); /* once */
    alert_raise(ALERT_LOCK_LOST, "lease expired \"quoted\"", "wwcorp1", 42);
    alert_raise(ALERT_BAN, "45009", NULL, 0);
    wait_seen(f, 2, 5000);
    assert_int_equal(f->rx.seen, 2);
    assert_string_equal(f->rx.ctype, "application/json");

    o = json_tokener_parse(f->rx.bodies[0]);
    assert_non_null(o);
    assert_string_equal(jstr(o, "kind"), "lock_lost");
    assert_string_equal(jstr(o, "message"), "lease expired \"quoted\"");
    assert_string_equal(jstr(o, "env"), "prod");
    assert_string_equal(jstr(o, "instance"), "host-1:77");
    assert_string_equal(jstr(o, "corp_id"), "wwcorp1");
    assert_true(json_object_object_get_ex(o, "run_id", &v));
    assert_true(json_object_is_type(v, json_type_int));
    assert_int_equal(json_object_get_int64(v), 42);
    ts = jstr(o, "ts");
    assert_non_null(ts);
    assert_true(strlen(ts) >= 20 && ts[4] == '-' && ts[10] == 'T' && ts[strlen(ts) - 1] == 'Z');
    json_object_put(o);

    o = json_tokener_parse(f->rx.bodies[1]);
    assert_non_null(o);
    assert_string_equal(jstr(o, "kind"), "ban");
    assert_true(jnull(o, "corp_id"));
    assert_true(jnull(o, "run_id"));
    json_object_put(o);

    wait_stats(f, 2, 0, 2000);
    alert_stats_get(&st);
    assert_int_equal(st.raised, 2);
    assert_int_equal(st.sent, 2);
    assert_int_equal(st.retries, 0);
    assert_int_equal(st.queued, 0);
}

static void test_retries_then_gives_up(void **state)
{
    fixture *f = *state;
    alert_stats st;
    int i;

    assert_int_equal(alert_init(&f->loop, f->http, f->url, "prod", "h:1"), 0);
    alert_set_limits(0, 2000, 20);
    /* two failures then success: delivered on the third try */
    f->rx.plan[0] = 500;
    f->rx.plan[1] = 503;
    f->rx.plan[2] = 204;
    /* then three failures: given up */
    f->rx.plan[3] = 500;
    f->rx.plan[4] = 500;
    f->rx.plan[5] = 500;
    f->rx.nplan = 6;
    alert_raise(ALERT_RUN_FAILED, "first", NULL, 1);
    alert_raise(ALERT_RUN_FAILED, "second", NULL, 2);
    wait_stats(f, 1, 1, 5000);
    alert_stats_get(&st);
    assert_int_equal(f->rx.seen, 6);
    assert_int_equal(st.sent, 1);
    assert_int_equal(st.failed, 1);
    assert_int_equal(st.retries, 4);
    for (i = 0; i < 3; i++)
        assert_non_null(strstr(f->rx.bodies[i], "\"first\""));
    for (i = 3; i < 6; i++)
        assert_non_null(strstr(f->rx.bodies[i], "\"second\""));
    /* and the sender goes on with the next one */
    alert_raise(ALERT_TOKEN_INVALID, "third", "c", 0);
    wait_stats(f, 2, 1, 5000);
    alert_stats_get(&st);
    assert_int_equal(st.sent, 2);
    assert_int_equal(f->rx.seen, 7);
}

typedef struct lagmeter {
    uint64_t last_us, max_gap_us;
    int ticks;
} lagmeter;

static void lag_tick(uv_timer_t *t)
{
    lagmeter *m = t->data;
    uint64_t now = time_mono_us();
    if (m->last_us && now - m->last_us > m->max_gap_us)
        m->max_gap_us = now - m->last_us;
    m->last_us = now;
    m->ticks++;
}

/* A webhook that accepts connections and never answers: alert_raise stays
 * instant, the loop stays responsive, the queue stays bounded (oldest dropped),
 * each stuck try ends at the post timeout, and close is bounded. */
static void test_never_stalls(void **state)
{
    fixture *f = *state;
    alert_stats st;
    lagmeter m = {0};
    uv_timer_t t;
    uint64_t t0, spent;
    int i;

    assert_int_equal(alert_init(&f->loop, f->http, f->url, "prod", "h:1"), 0);
    alert_set_limits(4, 150, 10);
    for (i = 0; i < MAX_SEEN; i++)
        f->rx.plan[i] = 0;
    f->rx.nplan = MAX_SEEN;
    uv_timer_init(&f->loop, &t);
    t.data = &m;
    uv_timer_start(&t, lag_tick, 10, 10);

    t0 = time_mono_us();
    for (i = 0; i < 10; i++) {
        char msg[32];
        snprintf(msg, sizeof(msg), "alert %d", i);
        alert_raise(ALERT_BAN, msg, "c", 0);
    }
    spent = time_mono_us() - t0;
    assert_true(spent < 100000); /* ten raises, no waiting on the webhook */
    alert_stats_get(&st);
    /* one taken out to send, four queued, the five oldest of the rest dropped */
    assert_int_equal(st.queued, 5);
    assert_int_equal(st.dropped, 5);

    th_run_for(&f->loop, 1200);
    alert_stats_get(&st);
    /* each try is cut at 150 ms: the first alert failed after 3 tries and the
     * queue moved on to the next ones */
    assert_true(st.failed >= 1);
    assert_true(f->rx.seen >= 4);
    assert_true(m.ticks > 60);
    assert_true(m.max_gap_us < 100000);
    /* the survivors are the newest: alert 0, then 6..9 (1..5 were dropped) */
    assert_non_null(strstr(f->rx.bodies[0], "alert 0"));
    assert_non_null(strstr(f->rx.bodies[3], "alert 6"));

    /* close with a short flush: bounded by flush + one post timeout */
    closed = 0;
    t0 = time_mono_us();
    alert_close(100, on_closed, NULL);
    assert_true(th_run_until(&f->loop, &closed, 3000));
    assert_true(time_mono_us() - t0 < 600000);
    uv_close((uv_handle_t *)&t, NULL);
    th_run_for(&f->loop, 5); /* t lives on this stack: let its close finish */
    /* raising after close only logs */
    alert_raise(ALERT_BAN, "after close", NULL, 0);
}

static void test_flush_on_close(void **state)
{
    fixture *f = *state;
    alert_stats st;

    assert_int_equal(alert_init(&f->loop, f->http, f->url, "prod", "h:1"), 0);
    alert_raise(ALERT_LOCK_LOST, "one", NULL, 0);
    alert_raise(ALERT_LOCK_LOST, "two", NULL, 0);
    alert_raise(ALERT_LOCK_LOST, "three", NULL, 0);
    closed = 0;
    alert_close(3000, on_closed, NULL);
    alert_stats_get(&st);
    assert_true(th_run_until(&f->loop, &closed, 5000));
    assert_int_equal(f->rx.seen, 3);
    assert_non_null(strstr(f->rx.bodies[2], "three"));
}

static void test_log_only(void **state)
{
    fixture *f = *state;
    FILE *tmp = tmpfile();
    char line[2048] = "";
    alert_stats st;
    size_t n;

    assert_non_null(tmp);
    assert_int_equal(alert_init(&f->loop, NULL, NULL, "dev", "h:1"), 0);
    log_init(LOG_INFO, 1, "test_alert", 0);
    log_set_stream(tmp);
    alert_raise(ALERT_TOKEN_INVALID, "token dropped", "wwcorp9", 0);
    log_set_stream(NULL);
    log_init(LOG_WARN, 0, "test_alert", 0);
    rewind(tmp);
    n = fread(line, 1, sizeof(line) - 1, tmp);
    line[n] = '\0';
    fclose(tmp);
    assert_non_null(strstr(line, "\"level\":\"warn\""));
    assert_non_null(strstr(line, "\"kind\":\"token_invalid\""));
    assert_non_null(strstr(line, "\"corp_id\":\"wwcorp9\""));
    th_run_for(&f->loop, 100);
    assert_int_equal(f->rx.seen, 0);
    alert_stats_get(&st);
    assert_int_equal(st.raised, 1);
    assert_int_equal(st.sent, 0);
    /* a webhook without a client is refused */
    closed = 0;
    alert_close(0, on_closed, NULL);
    assert_true(th_run_until(&f->loop, &closed, 2000));
    assert_int_equal(alert_init(&f->loop, NULL, f->url, "dev", "h:1"), -EINVAL);
}

/* Reload: removing the webhook drops what is queued and the alert waiting for
 * its retry (nothing is posted any more); setting one again delivers. */
static void test_set_webhook(void **state)
{
    fixture *f = *state;
    alert_stats st;

    assert_int_equal(alert_set_webhook(f->url), -EINVAL); /* not initialised */
    assert_int_equal(alert_init(&f->loop, f->http, f->url, "prod", "h:1"), 0);
    alert_set_limits(0, 2000, 300);
    f->rx.plan[0] = 500; /* the first try fails: a retry waits 0..300 ms */
    f->rx.nplan = 1;
    alert_raise(ALERT_RUN_FAILED, "one", NULL, 1);
    alert_raise(ALERT_RUN_FAILED, "two", NULL, 2);
    alert_raise(ALERT_RUN_FAILED, "three", NULL, 3);
    wait_seen(f, 1, 2000);
    assert_int_equal(f->rx.seen, 1);
    th_run_for(&f->loop, 20); /* the 500 is in: "one" waits for its retry */
    assert_int_equal(alert_set_webhook(NULL), 0);
    th_run_for(&f->loop, 600);
    alert_stats_get(&st);
    assert_int_equal(f->rx.seen, 1); /* nothing posted after the removal */
    assert_int_equal(st.dropped, 3);
    assert_int_equal(st.queued, 0);
    /* raised without a webhook: logged only */
    alert_raise(ALERT_BAN, "logged only", "ww1", 0);
    th_run_for(&f->loop, 100);
    assert_int_equal(f->rx.seen, 1);
    /* a webhook again: delivered */
    assert_int_equal(alert_set_webhook(f->url), 0);
    alert_raise(ALERT_LOCK_LOST, "after reload", NULL, 4);
    wait_stats(f, 1, 0, 3000);
    assert_int_equal(f->rx.seen, 2);
    assert_non_null(strstr(f->rx.bodies[1], "\"after reload\""));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_posts_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retries_then_gives_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_never_stalls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flush_on_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_webhook, setup, teardown),
    };

    log_init(LOG_WARN, 0, "test_alert", 0);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
