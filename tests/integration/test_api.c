/* The HTTP API (SPEC §5) against real PostgreSQL, Redis and the WeCom simulator.
 *
 * An in-process worker (loop + pg pool + Redis + HTTP client + wecom + HTTP server
 * + api_register) runs on its own thread; the test thread plays the client with
 * raw blocking sockets (so it can send hostile bytes) and inspects the database
 * with blocking libpq. The database is a private copy of the migrated template,
 * the Redis namespace (ORGSYNC_ENV) is unique to the process. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <json-c/json.h>
#include <libpq-fe.h>
#include <uv.h>

#include "common/http_client.h"
#include "common/http_server.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/pg.h"
#include "common/redis.h"
#include "common/hash.h"
#include "common/settings.h"
#include "common/timeutil.h"
#include "worker/api/api.h"
#include "worker/api/lookup.h"
#include "worker/wecom/wecom.h"

#define TOKEN "test-admin-token-1234"
#define READ_TOKEN "test-read-token-5678"
#define BUDGET 4

/* ---- environment ---- */

static const char *need_env(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v) {
        fprintf(stderr, "%s is not set: run this test through tests/run.sh\n", name);
        fail_msg("%s missing", name);
    }
    return v;
}

static char g_env[64], g_db[64], g_dsn[1024];
static PGconn *g_pg;       /* blocking, test thread only */
static redisContext *g_rc; /* blocking, test thread only */
static pid_t g_sim_pid;
static int g_sim_port;

static PGresult *sql(const char *q)
{
    PGresult *r = PQexec(g_pg, q);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        fail_msg("SQL failed: %s\n%s", q, PQerrorMessage(g_pg));
    return r;
}

static void sqlx(const char *q)
{
    PQclear(sql(q));
}

static long long sql_ll(const char *q)
{
    PGresult *r = sql(q);
    long long v = PQntuples(r) ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : -1;
    PQclear(r);
    return v;
}

static void admin_sql(const char *q)
{
    PGconn *c = PQconnectdb(need_env("ORGSYNC_TEST_PG_ADMIN_DSN"));
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    PGresult *r = PQexec(c, q);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        fail_msg("admin SQL failed: %s: %s", q, PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
}

/* ---- the simulator ---- */

static void sim_start(void)
{
    int fd[2];
    char line[128];
    assert_int_equal(pipe(fd), 0);
    g_sim_pid = fork();
    assert_true(g_sim_pid >= 0);
    if (g_sim_pid == 0) {
        dup2(fd[1], 1);
        close(fd[0]);
        close(fd[1]);
        execl(need_env("ORGSYNC_SIM_BIN"), "orgsync-sim", "--enterprises", "2", "--departments",
              "3", "--users-per-dept", "3", "--port", "0", (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    FILE *f = fdopen(fd[0], "r");
    assert_non_null(fgets(line, sizeof line, f));
    fclose(f);
    assert_int_equal(sscanf(line, "listening %d", &g_sim_port), 1);
}

static void sim_stop(void)
{
    if (g_sim_pid > 0) {
        kill(g_sim_pid, SIGTERM);
        waitpid(g_sim_pid, NULL, 0);
        g_sim_pid = 0;
    }
}

/* ---- a raw HTTP client ---- */

static int connect_to(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

static void send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return; /* the server may cut us off (413): the reply says so */
        p += w;
        n -= (size_t)w;
    }
}

typedef struct resp {
    int status;
    char *head;
    char *body;
} resp;

static void resp_free(resp *r)
{
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof(*r));
}

/* Reads one response (Content-Length framed) within timeout_ms. */
static int read_resp(int fd, resp *out, int timeout_ms)
{
    size_t cap = 1 << 16, len = 0;
    char *b = malloc(cap);
    uint64_t end = time_mono_us() + (uint64_t)timeout_ms * 1000;
    char *hend = NULL;
    long clen = -1;
    memset(out, 0, sizeof(*out));
    for (;;) {
        if (hend && clen >= 0 && len >= (size_t)(hend + 4 - b) + (size_t)clen)
            break;
        uint64_t now = time_mono_us();
        if (now >= end)
            goto fail;
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, (int)((end - now) / 1000) + 1) <= 0)
            continue;
        if (len + 4096 > cap) {
            cap *= 2;
            b = realloc(b, cap);
        }
        ssize_t n = recv(fd, b + len, cap - len - 1, 0);
        if (n <= 0)
            goto fail;
        len += (size_t)n;
        b[len] = '\0';
        if (!hend && (hend = strstr(b, "\r\n\r\n"))) {
            char *cl = strcasestr(b, "\r\nContent-Length:");
            clen = cl && cl < hend ? strtol(cl + 17, NULL, 10) : 0;
        }
    }
    out->status = atoi(b + 9);
    out->head = strndup(b, (size_t)(hend - b));
    out->body = strndup(hend + 4, (size_t)clen);
    free(b);
    return 0;
fail:
    free(b);
    return -1;
}

static int g_port;

/* One request on a fresh connection. extra: header lines ending "\r\n", or NULL. */
static resp http(const char *method, const char *path, const char *extra, const char *body)
{
    size_t hcap = 4096 + (extra ? strlen(extra) : 0);
    char *head = malloc(hcap);
    resp r;
    int fd = connect_to(g_port);
    size_t blen = body ? strlen(body) : 0;
    snprintf(head, hcap,
             "%s %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n%sContent-Length: %zu\r\n\r\n",
             method, path, extra ? extra : "", blen);
    send_all(fd, head, strlen(head));
    free(head);
    if (blen)
        send_all(fd, body, blen);
    if (read_resp(fd, &r, 10000))
        fail_msg("no answer to %s %s", method, path);
    close(fd);
    return r;
}

static resp get(const char *path)
{
    return http("GET", path, NULL, NULL);
}

/* Directory reads (members, departments, by mobile) need the read token. */
static const char *rauth = "Authorization: Bearer " READ_TOKEN "\r\n";

static resp rget(const char *path)
{
    return http("GET", path, rauth, NULL);
}

static void expect_status(const char *method, const char *path, const char *extra, const char *body,
                          int status)
{
    resp r = http(method, path, extra, body);
    if (r.status != status)
        fail_msg("%s %s: expected %d, got %d: %s", method, path, status, r.status, r.body);
    /* every error answers the documented shape */
    if (status >= 400 && status != 405)
        assert_non_null(strstr(r.body, "{\"error\":{\"code\":"));
    resp_free(&r);
}

static json_object *parse(const char *s)
{
    json_object *o = json_tokener_parse(s);
    if (!o)
        fail_msg("not JSON: %s", s);
    return o;
}

static json_object *jget(json_object *o, const char *k)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(o, k, &v))
        fail_msg("no key %s in %s", k, json_object_to_json_string(o));
    return v;
}

/* ---- the worker under test, on its own thread ---- */

typedef struct worker {
    uv_loop_t loop;
    uv_thread_t th;
    uv_async_t stop;
    uv_async_t reset; /* metrics_reset on the loop thread (test_metrics_reset) */
    uv_sem_t reset_done;
    settings s;
    pg_pool *pg;
    redis_client *rc;
    http_client *http;
    wecom *wc;
    http_server *srv;
    api *a;
    int port;
    char upstream[128];
    const char *dsn, *redis_url;
    int pending_closes;
    uv_sem_t ready;
} worker;

static worker g_w;

static const char *w_getenv(const char *name, void *arg)
{
    worker *w = arg;
    if (!strcmp(name, "ORGSYNC_ENV"))
        return g_env;
    if (!strcmp(name, "ORGSYNC_PG_DSN"))
        return w->dsn;
    if (!strcmp(name, "ORGSYNC_REDIS_URL"))
        return w->redis_url;
    if (!strcmp(name, "ORGSYNC_ADMIN_TOKEN"))
        return TOKEN;
    if (!strcmp(name, "ORGSYNC_READ_TOKEN"))
        return READ_TOKEN;
    if (!strcmp(name, "ORGSYNC_LOOKUP_BUDGET"))
        return "4";
    if (!strcmp(name, "ORGSYNC_UPSTREAM_URL"))
        return w->upstream;
    if (!strcmp(name, "ORGSYNC_INSTANCE"))
        return "apitest:1";
    if (!strcmp(name, "ORGSYNC_LOG_LEVEL"))
        return "warn";
    return NULL;
}

static void on_pg_closed(void *arg)
{
    (void)arg;
}

/* The pool goes last: api and wecom callbacks may query it until they are closed. */
static void on_closed(void *arg)
{
    worker *w = arg;
    if (--w->pending_closes == 0)
        pg_pool_close(w->pg, on_pg_closed, NULL);
}

static void on_stop(uv_async_t *h)
{
    worker *w = h->data;
    api_close(w->a);
    w->pending_closes = 4;
    http_server_close(w->srv, on_closed, w);
    wecom_close(w->wc, on_closed, w);
    http_client_close(w->http, on_closed, w);
    redis_close(w->rc, on_closed, w);
    uv_close((uv_handle_t *)&w->stop, NULL);
    uv_close((uv_handle_t *)&w->reset, NULL);
}

/* What a test's reset does in a process: every series and description freed, the
 * well-known ones described again. The api keeps its handles on the old series. */
static void on_reset(uv_async_t *h)
{
    worker *w = h->data;
    metrics_reset();
    metrics_init();
    uv_sem_post(&w->reset_done);
}

static void worker_metrics_reset(worker *w)
{
    uv_async_send(&w->reset);
    uv_sem_wait(&w->reset_done);
}

static void worker_main(void *arg)
{
    worker *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
}

/* cache_ms as api_deps: 0 the default 250 ms. */
static void worker_start_ms(worker *w, const char *dsn, const char *redis_url, int cache_ms)
{
    char err[256];
    memset(w, 0, sizeof(*w));
    w->dsn = dsn;
    w->redis_url = redis_url;
    snprintf(w->upstream, sizeof w->upstream, "http://127.0.0.1:%d", g_sim_port);
    assert_int_equal(settings_load_from(&w->s, NULL, w_getenv, w, err, sizeof err), 0);
    assert_int_equal(uv_loop_init(&w->loop), 0);
    w->pg = pg_pool_new(&w->loop, &(pg_pool_opts){.dsn = dsn, .size = 2});
    w->rc = redis_new(&w->loop, &(redis_opts){.url = redis_url});
    w->http = http_client_new(&w->loop, NULL);
    assert_non_null(w->pg);
    assert_non_null(w->rc);
    assert_non_null(w->http);
    w->wc = wecom_new(&w->loop, w->http, w->rc,
                      &(wecom_opts){.base_url = w->upstream,
                                    .env = g_env,
                                    .instance = "apitest:1",
                                    .rate = 50,
                                    .max_inflight = 10,
                                    .timeout_ms = 3000});
    assert_non_null(w->wc);
    w->srv = http_server_new(&w->loop, &(http_server_opts){.idle_timeout_ms = 1000});
    assert_non_null(w->srv);
    api_deps d = {.loop = &w->loop,
                  .settings = &w->s,
                  .pg = w->pg,
                  .redis = w->rc,
                  .wecom = w->wc,
                  .cache_ms = cache_ms};
    assert_int_equal(api_register(w->srv, &d, &w->a), 0);
    assert_int_equal(http_server_listen(w->srv, "127.0.0.1:0", err, sizeof err), 0);
    w->port = http_server_port(w->srv, 0);
    uv_async_init(&w->loop, &w->stop, on_stop);
    w->stop.data = w;
    assert_int_equal(uv_sem_init(&w->reset_done, 0), 0);
    uv_async_init(&w->loop, &w->reset, on_reset);
    w->reset.data = w;
    assert_int_equal(uv_thread_create(&w->th, worker_main, w), 0);
}

static void worker_start(worker *w, const char *dsn, const char *redis_url)
{
    worker_start_ms(w, dsn, redis_url, 0);
}

static void worker_stop(worker *w)
{
    uv_async_send(&w->stop);
    uv_thread_join(&w->th);
    assert_int_equal(uv_loop_close(&w->loop), 0);
    uv_sem_destroy(&w->reset_done);
}

/* ---- fixtures ---- */

static void seed(void)
{
    sqlx("INSERT INTO enterprises (corp_id, name, corp_secret) VALUES "
         "('wwsim0001', 'Sim One', 'secret-wwsim0001'), ('wwsim0002', 'Sim Two', "
         "'secret-wwsim0002')");
    /* run 1: finished; run 2: running, started 100 s ago, two enterprises */
    char q[2048];
    snprintf(q, sizeof q,
             "INSERT INTO sync_runs (run_id, env, job, trigger, scheduled_for, state, "
             "leader_instance, fencing_token, attempt, started_at, finished_at) VALUES "
             "(1, '%s', 'directory-sync', 'schedule', '2030-01-01T02:00:00Z', 'succeeded', "
             "'h1:1', 7, 1, '2030-01-01T02:00:00Z', '2030-01-01T02:10:00.250Z'), "
             "(2, '%s', 'directory-sync', 'manual', now() - interval '100 s', 'running', 'h2:9', "
             "8, 1, now() - interval '100 s', NULL)",
             g_env, g_env);
    sqlx(q);
    sqlx("SELECT setval('sync_runs_run_id_seq', 10)");
    sqlx("INSERT INTO sync_progress (run_id, corp_id, state, departments_total, "
         "departments_done, users_upserted, requests, started_at) VALUES "
         "(1, 'wwsim0001', 'succeeded', 3, 3, 9, 5, '2030-01-01T02:00:00Z'), "
         "(2, 'wwsim0001', 'running', 4, 1, 3, 2, now() - interval '100 s'), "
         "(2, 'wwsim0002', 'succeeded', 3, 3, 9, 5, now() - interval '100 s')");
    sqlx("INSERT INTO departments (corp_id, dept_id, name, parent_id, \"order\", synced_at) "
         "VALUES ('wwsim0001', 1, 'Root', 0, 1, now()), ('wwsim0001', 2, 'Sales', 1, 2, now()), "
         "('wwsim0001', 3, 'Gone', 1, 3, now())");
    sqlx("UPDATE departments SET deleted_at = now() WHERE dept_id = 3");
    sqlx("INSERT INTO users (corp_id, userid, name, mobile, status, department, "
         "main_department, synced_at) SELECT 'wwsim0001', 'u' || lpad(i::text, 6, '0'), "
         "'User ' || i, '1390000' || lpad(i::text, 4, '0'), 1, '{1}', 1, now() FROM "
         "generate_series(1, 25) i");
    sqlx("UPDATE users SET deleted_at = now() WHERE userid = 'u000025'");
}

static int group_setup(void **state)
{
    (void)state;
    const char *dsn = need_env("ORGSYNC_TEST_PG_DSN");
    const char *redis_url = need_env("ORGSYNC_TEST_REDIS_URL");
    char q[256], host[128], pw[128], err[128];
    int port, db;

    log_init(LOG_WARN, 1, "apitest", 0);
    snprintf(g_env, sizeof g_env, "apitest%d", (int)getpid());
    snprintf(g_db, sizeof g_db, "api_%d", (int)getpid());
    snprintf(q, sizeof q, "CREATE DATABASE %s TEMPLATE orgsync OWNER orgsync", g_db);
    admin_sql(q);
    snprintf(g_dsn, sizeof g_dsn, "%s dbname=%s", dsn, g_db);
    g_pg = PQconnectdb(g_dsn);
    assert_int_equal(PQstatus(g_pg), CONNECTION_OK);
    seed();
    assert_int_equal(
        redis_url_parse(redis_url, host, sizeof host, &port, pw, sizeof pw, &db, err, sizeof err),
        0);
    g_rc = redisConnect(host, port);
    assert_true(g_rc && !g_rc->err);
    freeReplyObject(redisCommand(g_rc, "SELECT %d", db));
    sim_start();
    worker_start(&g_w, g_dsn, redis_url);
    g_port = g_w.port;
    /* wait until both clients are connected (/readyz is 200 on PostgreSQL alone) */
    for (int i = 0; i < 200; i++) {
        resp r = get("/readyz");
        int up = r.status == 200 && r.body && strstr(r.body, "\"redis\":\"ok\"");
        resp_free(&r);
        if (up)
            break;
        usleep(20000);
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    char q[128];
    worker_stop(&g_w);
    sim_stop();
    if (g_rc)
        redisFree(g_rc);
    PQfinish(g_pg);
    snprintf(q, sizeof q, "DROP DATABASE IF EXISTS %s", g_db);
    admin_sql(q);
    metrics_reset();
    return 0;
}

/* ---- tests ---- */

static void test_health(void **state)
{
    (void)state;
    resp r = get("/healthz");
    assert_int_equal(r.status, 200);
    resp_free(&r);
    r = get("/readyz");
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"postgres\":\"ok\""));
    assert_non_null(strstr(r.body, "\"degraded\":false,\"draining\":false"));
    resp_free(&r);
    expect_status("GET", "/v1/runs/abc", NULL, NULL, 400); /* something to count */
    r = get("/metrics");
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.head, "text/plain"));
    assert_non_null(strstr(r.body, "orgsync_http_requests_total{route=\"/v1/runs/{run_id}\","
                                   "method=\"GET\",status=\"400\"} 1"));
    char want[256];
    snprintf(want, sizeof want,
             "orgsync_runs{env=\"%s\",orgsync_job=\"directory-sync\",state=\"running\"} 1", g_env);
    assert_non_null(strstr(r.body, want));
    snprintf(want, sizeof want,
             "orgsync_runs{env=\"%s\",orgsync_job=\"directory-sync\",state=\"succeeded\"} 1",
             g_env);
    assert_non_null(strstr(r.body, want));
    assert_non_null(strstr(r.body, "# TYPE orgsync_http_request_duration_seconds histogram"));
    snprintf(want, sizeof want, "orgsync_lock_held{env=\"%s\",orgsync_job=\"directory-sync\"} 0",
             g_env);
    assert_non_null(strstr(r.body, want));
    /* an in-process worker outside the supervisor: worker 0, the process's own figures */
    assert_non_null(
        strstr(r.body, "orgsync_worker_info{worker=\"0\",orgsync_instance=\"apitest:1\",pid=\""));
    assert_non_null(strstr(r.body, "orgsync_build_info{version=\""));
    assert_non_null(strstr(r.body, "orgsync_workers_up 1\n"));
    assert_null(strstr(r.body, "instance=\"apitest:1\",worker_id"));
    assert_non_null(strstr(r.body, "# TYPE orgsync_upstream_calls_total counter"));
    resp_free(&r);
}

static void test_run_latest(void **state)
{
    (void)state;
    resp r = get("/v1/runs/latest");
    assert_int_equal(r.status, 200);
    json_object *o = parse(r.body);
    assert_int_equal(json_object_get_int(jget(o, "run_id")), 2);
    assert_string_equal(json_object_get_string(jget(o, "state")), "running");
    assert_string_equal(json_object_get_string(jget(o, "trigger")), "manual");
    assert_string_equal(json_object_get_string(jget(o, "leader_instance")), "h2:9");
    /* wwsim0001: 1 of 4 -> 25.0; wwsim0002 succeeded -> 100; run = mean = 62.5 */
    assert_true(json_object_get_double(jget(o, "percent")) == 62.5);
    /* elapsed 100 s * 37.5 / 62.5 = 60 s (a second of slack for the clock) */
    int eta = json_object_get_int(jget(o, "eta_seconds"));
    assert_true(eta >= 59 && eta <= 62);
    json_object *ents = jget(o, "enterprises");
    assert_int_equal(json_object_array_length(ents), 2);
    json_object *e1 = json_object_array_get_idx(ents, 0);
    assert_string_equal(json_object_get_string(jget(e1, "corp_id")), "wwsim0001");
    assert_true(json_object_get_double(jget(e1, "percent")) == 25.0);
    /* 100 s for 1 department, 3 left -> 300 s */
    int e1eta = json_object_get_int(jget(e1, "eta_seconds"));
    assert_true(e1eta >= 299 && e1eta <= 303);
    assert_int_equal(json_object_get_int(jget(e1, "departments_total")), 4);
    assert_true(json_object_is_type(jget(e1, "last_error"), json_type_null));
    const char *upd = json_object_get_string(jget(e1, "updated_at"));
    assert_int_equal(strlen(upd), 24); /* 2030-01-01T02:00:00.000Z */
    assert_int_equal(upd[23], 'Z');
    json_object *e2 = json_object_array_get_idx(ents, 1);
    assert_int_equal(json_object_get_int(jget(e2, "eta_seconds")), 0);
    json_object_put(o);
    resp_free(&r);

    r = get("/v1/runs/1");
    assert_int_equal(r.status, 200);
    o = parse(r.body);
    assert_true(json_object_get_double(jget(o, "percent")) == 100);
    assert_string_equal(json_object_get_string(jget(o, "finished_at")), "2030-01-01T02:10:00.250Z");
    assert_string_equal(json_object_get_string(jget(o, "scheduled_for")),
                        "2030-01-01T02:00:00.000Z");
    json_object_put(o);
    resp_free(&r);
}

static void test_run_errors(void **state)
{
    (void)state;
    const char *bad[] = {"/v1/runs/abc",
                         "/v1/runs/0",
                         "/v1/runs/-1",
                         "/v1/runs/1.5",
                         "/v1/runs/1%20OR%201=1",
                         "/v1/runs/1%27%3B%20DROP%20TABLE%20sync_runs%3B--",
                         "/v1/runs/99999999999999999999",
                         "/v1/runs?limit=0",
                         "/v1/runs?limit=101",
                         "/v1/runs?limit=abc",
                         "/v1/runs?limit=1;DELETE"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_status("GET", bad[i], NULL, NULL, 400);
    expect_status("GET", "/v1/runs/999999", NULL, NULL, 404);
    expect_status("GET", "/v1/runs/../healthz", NULL, NULL, 404);
    expect_status("GET", "/v1/runs/%2e%2e/latest", NULL, NULL, 404);
    expect_status("GET", "/v1/nope", NULL, NULL, 404);
    expect_status("DELETE", "/v1/runs/1", NULL, NULL, 405);
    expect_status("PUT", "/v1/runs", NULL, NULL, 405);
    assert_int_equal(sql_ll("SELECT count(*) FROM sync_runs"), 2);

    resp r = get("/v1/runs?limit=1");
    assert_int_equal(r.status, 200);
    json_object *o = parse(r.body);
    json_object *runs = jget(o, "runs");
    assert_int_equal(json_object_array_length(runs), 1);
    json_object *r0 = json_object_array_get_idx(runs, 0);
    assert_int_equal(json_object_get_int(jget(r0, "run_id")), 2);
    assert_true(json_object_get_double(jget(r0, "percent")) == 62.5); /* same as the detail */
    json_object_put(o);
    resp_free(&r);
    r = get("/v1/runs");
    o = parse(r.body);
    assert_int_equal(json_object_array_length(jget(o, "runs")), 2);
    json_object_put(o);
    resp_free(&r);
}

static void test_progress(void **state)
{
    (void)state;
    resp r = get("/v1/enterprises/wwsim0001/progress");
    assert_int_equal(r.status, 200);
    json_object *o = parse(r.body);
    assert_int_equal(json_object_get_int(jget(o, "run_id")), 2);
    json_object *e = jget(o, "enterprise");
    assert_int_equal(json_object_get_int(jget(e, "departments_done")), 1);
    json_object_put(o);
    resp_free(&r);
    expect_status("GET", "/v1/enterprises/wwnobody/progress", NULL, NULL, 404);
    expect_status("GET", "/v1/enterprises/ww%27%20OR%201%3D1--/progress", NULL, NULL, 400);
    expect_status("GET", "/v1/enterprises/..%2f..%2fetc/progress", NULL, NULL, 404);
    expect_status("GET", "/v1/enterprises/../../etc/passwd", NULL, NULL, 404);
}

static void test_cache(void **state)
{
    (void)state;
    resp a = get("/v1/enterprises/wwsim0002/progress");
    sqlx("UPDATE sync_progress SET users_upserted = 12345 WHERE run_id = 2 AND corp_id = "
         "'wwsim0002'");
    resp b = get("/v1/enterprises/wwsim0002/progress");
    /* within 250 ms of the first answer the cache may answer; after it, never */
    usleep(300000);
    resp c = get("/v1/enterprises/wwsim0002/progress");
    assert_non_null(strstr(c.body, "\"users_upserted\":12345"));
    assert_null(strstr(a.body, "12345"));
    (void)b;
    resp_free(&a);
    resp_free(&b);
    resp_free(&c);
    /* a storm of 200 polls within the window costs at most a few queries: the
     * answers are byte-identical while the row changes underneath */
    resp first = get("/v1/runs/latest");
    sqlx("UPDATE sync_progress SET requests = requests + 1 WHERE run_id = 2");
    int same = 0;
    uint64_t t0 = time_mono_us();
    for (int i = 0; i < 20 && time_mono_us() - t0 < 150000; i++) {
        resp x = get("/v1/runs/latest");
        same += strcmp(x.body, first.body) == 0;
        resp_free(&x);
    }
    assert_true(same >= 1);
    resp_free(&first);

    /* Sustained polling (the cache refreshes hot answers ahead of expiry): no
     * answer is ever older than 250 ms. The counter goes up every 40 ms; each
     * answer must show at least the value committed 250 ms (+10 ms slack)
     * before the request was sent. */
    long long vals[64];
    uint64_t at[64];
    int nv = 0, polls = 0;
    uint64_t start = time_mono_us(), last = 0;
    while (time_mono_us() - start < 1200000) {
        uint64_t now = time_mono_us();
        if (nv < 64 && now - last >= 40000) {
            vals[nv] = sql_ll("UPDATE sync_progress SET requests = requests + 1 WHERE run_id = 2 "
                              "AND corp_id = 'wwsim0002' RETURNING requests");
            at[nv++] = last = time_mono_us();
        }
        uint64_t sent = time_mono_us();
        resp x = get("/v1/enterprises/wwsim0002/progress");
        json_object *o = parse(x.body);
        long long seen = json_object_get_int64(jget(jget(o, "enterprise"), "requests"));
        json_object_put(o);
        resp_free(&x);
        long long must = 0;
        for (int i = 0; i < nv; i++)
            if (at[i] + 260000 < sent)
                must = vals[i];
        if (seen < must)
            fail_msg("answer older than 250 ms: saw %lld, %lld was committed before", seen, must);
        polls++;
    }
    assert_true(polls > 20);
}

/* ---- revisions and ?min_revision= (docs/API.md "Caching") ---- */

static long long revision_of(const char *body)
{
    json_object *o = parse(body);
    long long v = json_object_get_int64(jget(o, "revision"));
    json_object_put(o);
    return v;
}

/* What sync_revisions holds for this test's environment: bumped once by every
 * statement that writes its runs or progress (sql/005). */
static long long env_revision(void)
{
    char q[256];
    snprintf(q, sizeof q,
             "SELECT revision FROM sync_revisions WHERE env = '%s' AND job = 'directory-sync'",
             g_env);
    return sql_ll(q);
}

static long long json_ll_at(const char *body, const char *path)
{
    json_object *o = parse(body), *v = o;
    char buf[128], *save = NULL;
    snprintf(buf, sizeof buf, "%s", path);
    for (char *k = strtok_r(buf, ".", &save); k; k = strtok_r(NULL, ".", &save))
        v = isdigit((unsigned char)k[0]) ? json_object_array_get_idx(v, (size_t)atoi(k))
                                         : jget(v, k);
    long long r = json_object_get_int64(v);
    json_object_put(o);
    return r;
}

static void test_min_revision(void **state)
{
    (void)state;
    static const char *routes[] = {"/v1/runs/2", "/v1/runs/latest", "/v1/runs?limit=5",
                                   "/v1/enterprises/wwsim0002/progress"};
    static const char *bad[] = {"abc",
                                "-1",
                                "1.5",
                                "",
                                "+1",
                                "1e3",
                                "0x10",
                                "1%20",
                                "9999999999999999999",
                                "1%27%20OR%201%3D1--"};
    char path[256];

    /* A malformed min_revision is 400 on every progress route, before any query. */
    for (size_t r = 0; r < sizeof routes / sizeof routes[0]; r++)
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            snprintf(path, sizeof path, "%s%smin_revision=%s", routes[r],
                     strchr(routes[r], '?') ? "&" : "?", bad[i]);
            expect_status("GET", path, NULL, NULL, 400);
        }
    resp x = get("/v1/runs/2?min_revision=x");
    assert_non_null(strstr(x.body, "min_revision must be an integer"));
    resp_free(&x);

    /* Every answer carries the environment's revision; asking for the current
     * one gets it from every route (nothing newer exists). */
    long long rev = env_revision();
    assert_true(rev > 1);
    for (size_t r = 0; r < sizeof routes / sizeof routes[0]; r++) {
        snprintf(path, sizeof path, "%s%smin_revision=%lld", routes[r],
                 strchr(routes[r], '?') ? "&" : "?", rev);
        x = get(path);
        assert_int_equal(x.status, 200);
        assert_int_equal(revision_of(x.body), rev);
        if (r == 2) /* the list: each run too */
            assert_int_equal(json_ll_at(x.body, "runs.0.revision"), rev);
        resp_free(&x);
    }
}

/* A worker whose cache keeps answers for 60 s (test_min_revision_fresh): what
 * it answers without min_revision is its cached answer, whatever PostgreSQL
 * holds now. Stopped by the teardown even when the test fails. */
static worker g_w60;
static int g_saved_port;

static int long_cache_setup(void **state)
{
    (void)state;
    worker_start_ms(&g_w60, g_dsn, need_env("ORGSYNC_TEST_REDIS_URL"), 60000);
    g_saved_port = g_port;
    g_port = g_w60.port;
    for (int i = 0; i < 200; i++) {
        resp h = get("/readyz");
        int st = h.status;
        resp_free(&h);
        if (st == 200)
            break;
        usleep(20000);
    }
    return 0;
}

static int long_cache_teardown(void **state)
{
    (void)state;
    g_port = g_saved_port;
    worker_stop(&g_w60);
    return 0;
}

static void test_min_revision_fresh(void **state)
{
    (void)state;
    static const char *routes[] = {"/v1/runs/2", "/v1/runs/latest", "/v1/runs?limit=5",
                                   "/v1/enterprises/wwsim0002/progress"};
    char path[256];

    for (size_t r = 0; r < sizeof routes / sizeof routes[0]; r++) {
        const char *sep = strchr(routes[r], '?') ? "&" : "?";
        resp a = get(routes[r]);
        assert_int_equal(a.status, 200);
        long long r0 = revision_of(a.body);
        /* one statement, one revision */
        long long users = sql_ll("UPDATE sync_progress SET users_upserted = users_upserted + 1 "
                                 "WHERE run_id = 2 AND corp_id = 'wwsim0002' "
                                 "RETURNING users_upserted");
        long long r1 = env_revision();
        assert_int_equal(r1, r0 + 1);

        resp b = get(routes[r]); /* cached: the same bytes, the old revision */
        assert_string_equal(b.body, a.body);

        snprintf(path, sizeof path, "%s%smin_revision=%lld", routes[r], sep, r0);
        resp c = get(path); /* the cached answer is good enough */
        assert_string_equal(c.body, a.body);

        snprintf(path, sizeof path, "%s%smin_revision=%lld", routes[r], sep, r1);
        resp d = get(path); /* older than asked: a fresh answer */
        assert_int_equal(d.status, 200);
        assert_int_equal(revision_of(d.body), r1);
        if (r == 3)
            assert_int_equal(json_ll_at(d.body, "enterprise.users_upserted"), users);
        else if (r != 2)
            assert_int_equal(json_ll_at(d.body, "enterprises.1.users_upserted"), users);

        resp e = get(routes[r]); /* and it replaced the cached one */
        assert_string_equal(e.body, d.body);

        /* A revision that does not exist yet: one fresh query, answered with
         * what there is (never a wait for the future). */
        snprintf(path, sizeof path, "%s%smin_revision=999999999999999999", routes[r], sep);
        resp f = get(path);
        assert_int_equal(f.status, 200);
        assert_int_equal(revision_of(f.body), r1);
        resp_free(&a);
        resp_free(&b);
        resp_free(&c);
        resp_free(&d);
        resp_free(&e);
        resp_free(&f);
    }

    /* Many requests for a revision newer than the cached one at once: they
     * share the fills (each waits for at most the one under way and the next),
     * and every one is answered with the newest revision. */
    sqlx("UPDATE sync_progress SET requests = requests + 1 WHERE run_id = 2");
    long long r2 = env_revision();
    enum { N = 24 };
    int fds[N];
    for (int i = 0; i < N; i++) {
        /* half of them ask for a revision no fill can bring: each is answered
         * by the first fill sent after it arrived */
        snprintf(path, sizeof path,
                 "GET /v1/runs/latest?min_revision=%lld HTTP/1.1\r\nHost: t\r\nConnection: "
                 "close\r\n\r\n",
                 i % 2 ? 999999999999999999LL : r2);
        fds[i] = connect_to(g_port);
        send_all(fds[i], path, strlen(path));
    }
    for (int i = 0; i < N; i++) {
        resp z;
        if (read_resp(fds[i], &z, 10000))
            fail_msg("request %d not answered", i);
        close(fds[i]);
        assert_int_equal(z.status, 200);
        assert_int_equal(revision_of(z.body), r2);
        resp_free(&z);
    }
}

static void test_users(void **state)
{
    (void)state;
    resp r = rget("/v1/enterprises/wwsim0001/users?page=2&page_size=10");
    assert_int_equal(r.status, 200);
    json_object *o = parse(r.body);
    assert_int_equal(json_object_get_int(jget(o, "total")), 24);
    json_object *us = jget(o, "users");
    assert_int_equal(json_object_array_length(us), 10);
    assert_string_equal(json_object_get_string(jget(json_object_array_get_idx(us, 0), "userid")),
                        "u000011");
    json_object_put(o);
    resp_free(&r);
    r = rget("/v1/enterprises/wwsim0001/users?page=3&page_size=10");
    o = parse(r.body);
    assert_int_equal(json_object_array_length(jget(o, "users")), 4);
    json_object_put(o);
    resp_free(&r);
    r = rget("/v1/enterprises/wwsim0002/users");
    o = parse(r.body);
    assert_int_equal(json_object_array_length(jget(o, "users")), 0);
    json_object_put(o);
    resp_free(&r);
    expect_status("GET", "/v1/enterprises/wwsim0001/users?page=0", rauth, NULL, 400);
    expect_status("GET", "/v1/enterprises/wwsim0001/users?page_size=1001", rauth, NULL, 400);
    expect_status("GET", "/v1/enterprises/wwsim0001/users?page_size=10%3BDROP", rauth, NULL, 400);
    expect_status("GET", "/v1/enterprises/wwnobody/users", rauth, NULL, 404);

    r = rget("/v1/enterprises/wwsim0001/departments");
    assert_int_equal(r.status, 200);
    o = parse(r.body);
    assert_int_equal(json_object_array_length(jget(o, "departments")), 2); /* one deleted */
    json_object *d = json_object_array_get_idx(jget(o, "departments"), 1);
    assert_string_equal(json_object_get_string(jget(d, "name")), "Sales");
    assert_int_equal(json_object_get_int(jget(d, "parent_id")), 1);
    json_object_put(o);
    resp_free(&r);
    expect_status("GET", "/v1/enterprises/wwnobody/departments", rauth, NULL, 404);
    expect_status("GET", "/v1/enterprises/a%22b/departments", rauth, NULL, 400);
}

static void test_users_by_mobile(void **state)
{
    (void)state;
    long long n = sql_ll("SELECT count(*) FROM users");
    resp r = rget("/v1/users?mobile=13900000007");
    assert_int_equal(r.status, 200);
    json_object *o = parse(r.body);
    json_object *us = jget(o, "users");
    assert_int_equal(json_object_array_length(us), 1);
    json_object *u = json_object_array_get_idx(us, 0);
    assert_string_equal(json_object_get_string(jget(u, "userid")), "u000007");
    assert_string_equal(json_object_get_string(jget(u, "corp_id")), "wwsim0001");
    json_object_put(o);
    resp_free(&r);
    r = rget("/v1/users?mobile=13900000025"); /* deleted */
    assert_non_null(strstr(r.body, "\"users\":[]"));
    resp_free(&r);
    const char *bad[] = {"/v1/users",
                         "/v1/users?mobile=",
                         "/v1/users?mobile=abc",
                         "/v1/users?mobile=1390000000",
                         "/v1/users?mobile=139000000071",
                         "/v1/users?mobile=%27%20OR%20%271%27%3D%271",
                         "/v1/users?mobile=13900000007%27--",
                         "/v1/users?mobile=%2B12"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_status("GET", bad[i], rauth, NULL, 400);
    assert_int_equal(sql_ll("SELECT count(*) FROM users"), n);
}

static long long sim_getuserid_calls(void)
{
    char head[256];
    resp r;
    int fd = connect_to(g_sim_port);
    snprintf(head, sizeof head, "GET /sim/stats HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n");
    send_all(fd, head, strlen(head));
    assert_int_equal(read_resp(fd, &r, 5000), 0);
    close(fd);
    json_object *o = parse(r.body);
    long long n = json_object_get_int64(jget(jget(jget(o, "total"), "by_path"), "user/getuserid"));
    json_object_put(o);
    resp_free(&r);
    return n;
}

static void sim_user_mobile(char *out, size_t outlen)
{
    char head[256];
    resp r;
    int fd = connect_to(g_sim_port);
    snprintf(head, sizeof head,
             "GET /sim/org?corp_id=wwsim0002 HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n");
    send_all(fd, head, strlen(head));
    assert_int_equal(read_resp(fd, &r, 5000), 0);
    close(fd);
    const char *m = strstr(r.body, "\"mobile\":\"");
    assert_non_null(m);
    snprintf(out, outlen, "%.11s", m + 10);
    resp_free(&r);
}

static const char *auth = "Authorization: Bearer " TOKEN "\r\n";

static void test_admin_auth(void **state)
{
    (void)state;
    const char *body = "{\"corp_id\":\"wwsim0001\",\"mobile\":\"13800000000\"}";
    expect_status("POST", "/v1/runs", NULL, NULL, 401);
    expect_status("POST", "/v1/runs", "Authorization: Bearer wrong\r\n", NULL, 401);
    expect_status("POST", "/v1/runs", "Authorization: Basic " TOKEN "\r\n", NULL, 401);
    expect_status("POST", "/v1/runs", "Authorization: Bearer " TOKEN "x\r\n", NULL, 401);
    expect_status("POST", "/v1/users/realtime-lookup", NULL, body, 401);
    expect_status("GET", "/v1/users/realtime-lookup", auth, NULL, 405);
    assert_int_equal(sql_ll("SELECT count(*) FROM sync_runs"), 2);
}

/* Directory reads need the read token (or the admin token); progress, health
 * and metrics stay open (the page, which serve registers, in it.secrets). */
static void test_read_auth(void **state)
{
    (void)state;
    const char *reads[] = {"/v1/enterprises/wwsim0001/users",
                           "/v1/enterprises/wwsim0001/departments", "/v1/users?mobile=13900000007",
                           /* refused before any validation: nothing to probe */
                           "/v1/users", "/v1/enterprises/wwnobody/users"};
    const char *open_routes[] = {"/healthz",
                                 "/metrics",
                                 "/v1/runs/latest",
                                 "/v1/runs?limit=2",
                                 "/v1/enterprises/wwsim0001/progress",
                                 "/v1/leader"};
    for (size_t i = 0; i < sizeof(reads) / sizeof(reads[0]); i++) {
        resp r = get(reads[i]);
        if (r.status != 401)
            fail_msg("%s without a token: %d", reads[i], r.status);
        assert_non_null(strcasestr(r.head, "\r\nWWW-Authenticate: Bearer"));
        assert_non_null(strstr(r.body, "{\"error\":{\"code\":\"unauthorized\""));
        resp_free(&r);
        r = http("GET", reads[i], "Authorization: Bearer " READ_TOKEN "x\r\n", NULL);
        assert_int_equal(r.status, 401);
        assert_non_null(strcasestr(r.head, "\r\nWWW-Authenticate: Bearer error=\"invalid_token\""));
        resp_free(&r);
        expect_status("GET", reads[i], "Authorization: Basic " READ_TOKEN "\r\n", NULL, 401);
        expect_status("GET", reads[i], "Authorization: Bearer test-read-token\r\n", NULL, 401);
    }
    expect_status("GET", reads[0], rauth, NULL, 200);
    expect_status("GET", reads[1], rauth, NULL, 200);
    expect_status("GET", reads[2], rauth, NULL, 200);
    expect_status("GET", reads[3], rauth, NULL, 400);
    expect_status("GET", reads[4], rauth, NULL, 404);
    /* the admin token reads too, with the same answer */
    resp a = rget(reads[0]), b = http("GET", reads[0], "Authorization: Bearer " TOKEN "\r\n", NULL);
    assert_int_equal(b.status, 200);
    assert_string_equal(a.body, b.body);
    resp_free(&a);
    resp_free(&b);
    /* the read token is no admin token */
    expect_status("POST", "/v1/runs", rauth, NULL, 401);
    expect_status("POST", "/v1/users/realtime-lookup", rauth,
                  "{\"corp_id\":\"wwsim0001\",\"mobile\":\"13800000000\"}", 401);
    for (size_t i = 0; i < sizeof(open_routes) / sizeof(open_routes[0]); i++) {
        resp r = get(open_routes[i]);
        if (r.status != 200)
            fail_msg("%s without a token: %d (must stay open)", open_routes[i], r.status);
        resp_free(&r);
    }
}

static void test_post_run(void **state)
{
    (void)state;
    /* run 2 is running: a request answers it, 200 */
    resp r = http("POST", "/v1/runs", auth, NULL);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"run_id\":2"));
    resp_free(&r);
    sqlx("UPDATE sync_runs SET state = 'succeeded', finished_at = now() WHERE run_id = 2");
    r = http("POST", "/v1/runs", auth, NULL);
    assert_int_equal(r.status, 202);
    json_object *o = parse(r.body);
    long long id = json_object_get_int64(jget(o, "run_id"));
    json_object_put(o);
    resp_free(&r);
    assert_true(id > 2);
    char q[256];
    snprintf(q, sizeof q,
             "SELECT count(*) FROM sync_runs WHERE run_id = %lld AND state = 'pending' AND "
             "trigger = 'manual' AND env = '%s'",
             id, g_env);
    assert_int_equal(sql_ll(q), 1);
    r = http("POST", "/v1/runs", auth, NULL);
    assert_int_equal(r.status, 200);
    o = parse(r.body);
    assert_int_equal(json_object_get_int64(jget(o, "run_id")), id);
    json_object_put(o);
    resp_free(&r);
    /* restore: the other tests expect run 2 running and no pending run */
    snprintf(q, sizeof q, "DELETE FROM sync_runs WHERE run_id = %lld", id);
    sqlx(q);
    sqlx("UPDATE sync_runs SET state = 'running', finished_at = NULL WHERE run_id = 2");
}

static void test_realtime_lookup(void **state)
{
    (void)state;
    char body[256], mobile[16];
    long long before = sim_getuserid_calls();

    /* malformed: 400 and no upstream call */
    const char *bad[] = {"",
                         "{",
                         "[]",
                         "{\"corp_id\":\"wwsim0001\"}",
                         "{\"corp_id\":\"wwsim0001\",\"mobile\":\"12ab\"}",
                         "{\"corp_id\":\"wwsim0001\",\"mobile\":13800000000}",
                         "{\"corp_id\":\"ww'; DROP TABLE users;--\",\"mobile\":\"13800000000\"}",
                         "{\"corp_id\":\"wwsim0001\",\"mobile\":\"13800000000\"} trailing"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_status("POST", "/v1/users/realtime-lookup", auth, bad[i], 400);
    expect_status("POST", "/v1/users/realtime-lookup", auth,
                  "{\"corp_id\":\"wwnobody\",\"mobile\":\"13800000000\"}", 404);
    assert_int_equal(sim_getuserid_calls(), before);

    /* unknown mobile: one upstream call, then the negative cache answers */
    snprintf(body, sizeof body, "{\"corp_id\":\"wwsim0001\",\"mobile\":\"17700000001\"}");
    resp r = http("POST", "/v1/users/realtime-lookup", auth, body);
    assert_int_equal(r.status, 404);
    assert_non_null(strstr(r.body, "unknown_mobile"));
    resp_free(&r);
    assert_int_equal(sim_getuserid_calls(), before + 1);
    r = http("POST", "/v1/users/realtime-lookup", auth, body);
    assert_int_equal(r.status, 404);
    assert_non_null(strstr(r.body, "cached"));
    resp_free(&r);
    assert_int_equal(sim_getuserid_calls(), before + 1);
    /* the cache key holds a keyed hash (HMAC under the environment's random key,
     * ORGSYNC_CACHE_KEY being unset here), never the number nor its plain SHA-256 */
    char key[256], name[128], plain[65], plain_key[256];
    assert_int_equal(lookup_cache_key_name(g_env, name, sizeof name), 0);
    redisReply *rr = redisCommand(g_rc, "GET %s", name);
    assert_int_equal(rr->type, REDIS_REPLY_STRING);
    assert_int_equal(rr->len, 64);
    assert_int_equal(lookup_neg_key(g_env, "wwsim0001", "17700000001", rr->str, key, sizeof key),
                     0);
    freeReplyObject(rr);
    rr = redisCommand(g_rc, "EXISTS %s", key);
    assert_int_equal(rr->integer, 1);
    freeReplyObject(rr);
    assert_null(strstr(key, "17700000001"));
    hash_sha256_hex("17700000001", 11, plain);
    assert_null(strstr(key, plain));
    snprintf(plain_key, sizeof plain_key, "orgsync:%s:neg:wwsim0001:%s", g_env, plain);
    rr = redisCommand(g_rc, "EXISTS %s", plain_key);
    assert_int_equal(rr->integer, 0);
    freeReplyObject(rr);

    /* a known mobile: found upstream, stored, answered */
    sim_user_mobile(mobile, sizeof mobile);
    snprintf(body, sizeof body, "{\"corp_id\":\"wwsim0002\",\"mobile\":\"%s\"}", mobile);
    r = http("POST", "/v1/users/realtime-lookup", auth, body);
    assert_int_equal(r.status, 200);
    json_object *o = parse(r.body);
    json_object *u = jget(o, "user");
    assert_string_equal(json_object_get_string(jget(u, "mobile")), mobile);
    assert_string_equal(json_object_get_string(jget(u, "corp_id")), "wwsim0002");
    char q[256];
    snprintf(q, sizeof q,
             "SELECT count(*) FROM users WHERE corp_id = 'wwsim0002' AND mobile = '%s' AND "
             "userid = '%s' AND deleted_at IS NULL",
             mobile, json_object_get_string(jget(u, "userid")));
    assert_int_equal(sql_ll(q), 1);
    json_object_put(o);
    resp_free(&r);
    /* and the PostgreSQL-only lookup now finds it */
    snprintf(q, sizeof q, "/v1/users?mobile=%s", mobile);
    r = rget(q);
    assert_non_null(strstr(r.body, "wwsim0002"));
    resp_free(&r);

    /* the budget (4 an hour, wwsim0002 has used 1): 3 more reach upstream, then 429 */
    for (int i = 0; i < 3; i++) {
        snprintf(body, sizeof body, "{\"corp_id\":\"wwsim0002\",\"mobile\":\"1770000010%d\"}", i);
        expect_status("POST", "/v1/users/realtime-lookup", auth, body, 404);
    }
    long long calls = sim_getuserid_calls();
    snprintf(body, sizeof body, "{\"corp_id\":\"wwsim0002\",\"mobile\":\"17700000200\"}");
    r = http("POST", "/v1/users/realtime-lookup", auth, body);
    assert_int_equal(r.status, 429);
    assert_non_null(strcasestr(r.head, "\r\nRetry-After: "));
    resp_free(&r);
    assert_int_equal(sim_getuserid_calls(), calls);
    /* the other enterprise's budget is its own */
    snprintf(body, sizeof body, "{\"corp_id\":\"wwsim0001\",\"mobile\":\"17700000300\"}");
    expect_status("POST", "/v1/users/realtime-lookup", auth, body, 404);
}

static void test_leader(void **state)
{
    (void)state;
    resp r = get("/v1/leader");
    assert_int_equal(r.status, 200);
    json_object *o = parse(r.body);
    assert_true(json_object_is_type(jget(o, "instance"), json_type_null));
    json_object *me = jget(o, "this_worker");
    assert_false(json_object_get_boolean(jget(me, "eligible")));
    assert_non_null(strstr(json_object_get_string(jget(me, "why_not")), "ORGSYNC_SCHEDULE"));
    json_object_put(o);
    resp_free(&r);

    char q[512];
    snprintf(q, sizeof q,
             "INSERT INTO leader_fence (env, job, token, instance, acquired_at) VALUES ('%s', "
             "'directory-sync', 42, 'h9:1', '2030-01-02T03:04:05.678Z')",
             g_env);
    sqlx(q);
    redisReply *rr =
        redisCommand(g_rc, "SET orgsync:%s:lock:directory-sync h9:1|42 PX 20000", g_env);
    freeReplyObject(rr);
    r = get("/v1/leader");
    assert_int_equal(r.status, 200);
    o = parse(r.body);
    assert_string_equal(json_object_get_string(jget(o, "instance")), "h9:1");
    assert_int_equal(json_object_get_int(jget(o, "fencing_token")), 42);
    assert_string_equal(json_object_get_string(jget(o, "since")), "2030-01-02T03:04:05.678Z");
    json_object_put(o);
    resp_free(&r);
    freeReplyObject(redisCommand(g_rc, "DEL orgsync:%s:lock:directory-sync", g_env));
}

static void test_limits(void **state)
{
    (void)state;
    /* a 10 MB body: 413 at once, and the worker keeps serving */
    size_t big = 10u << 20;
    char *body = malloc(big + 1);
    memset(body, 'a', big);
    body[big] = '\0';
    uint64_t t0 = time_mono_us();
    resp r = http("POST", "/v1/users/realtime-lookup", auth, body);
    assert_int_equal(r.status, 413);
    assert_non_null(strstr(r.body, "{\"error\":{\"code\":"));
    resp_free(&r);
    free(body);
    assert_true(time_mono_us() - t0 < 5000000);
    expect_status("GET", "/healthz", NULL, NULL, 200);

    /* headers over 16 KiB */
    char *hdr = malloc(20000);
    snprintf(hdr, 20000, "X-Big: %0*d\r\n", 18000, 0);
    r = http("GET", "/healthz", hdr, NULL);
    assert_int_equal(r.status, 431);
    resp_free(&r);
    free(hdr);

    /* a slow client trickling a request is cut off at the idle timeout (1 s here) */
    int fd = connect_to(g_port);
    send_all(fd, "GET /healthz HTTP/1.1\r\nHo", 25);
    t0 = time_mono_us();
    char c;
    struct pollfd p = {fd, POLLIN, 0};
    assert_int_equal(poll(&p, 1, 5000), 1);
    ssize_t n = recv(fd, &c, 1, 0);
    double waited = (double)(time_mono_us() - t0) / 1e6;
    close(fd);
    assert_true(n <= 0 || c == 'H'); /* closed (maybe after a 408) */
    assert_true(waited >= 0.8 && waited < 3.0);
    expect_status("GET", "/healthz", NULL, NULL, 200);
    /* malformed request line */
    fd = connect_to(g_port);
    send_all(fd, "GARBAGE\r\n\r\n", 11);
    assert_int_equal(read_resp(fd, &r, 5000), 0);
    assert_int_equal(r.status, 400);
    resp_free(&r);
    close(fd);
}

/* A worker whose dependencies are down answers 503 naming them. */
static void test_dependencies_down(void **state)
{
    (void)state;
    worker w;
    char dsn[256];
    /* ports nothing listens on: bind one and close it */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t al = sizeof a;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, (struct sockaddr *)&a, sizeof a);
    getsockname(fd, (struct sockaddr *)&a, &al);
    int dead = ntohs(a.sin_port);
    close(fd);
    char url[64];
    snprintf(dsn, sizeof dsn, "host=127.0.0.1 port=%d dbname=x user=x connect_timeout=1", dead);
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", dead);
    worker_start(&w, dsn, url);
    int saved = g_port;
    g_port = w.port;
    usleep(100000);
    resp r = get("/readyz");
    assert_int_equal(r.status, 503);
    assert_non_null(strstr(r.body, "postgres: "));
    assert_non_null(strstr(r.body, "redis: "));
    assert_non_null(strstr(r.body, "\"code\":\"dependency_down\""));
    resp_free(&r);
    expect_status("GET", "/healthz", NULL, NULL, 200);
    expect_status("GET", "/v1/runs/latest", NULL, NULL, 503);
    expect_status("GET", "/v1/leader", NULL, NULL, 503);
    expect_status("GET", "/v1/users?mobile=13800000000", rauth, NULL, 503);
    /* at once, not after the pool's query timeout (fuzz_request found that one) */
    uint64_t t0 = time_mono_us();
    expect_status("POST", "/v1/runs", auth, NULL, 503);
    expect_status("POST", "/v1/users/realtime-lookup", auth,
                  "{\"corp_id\":\"wwsim0001\",\"mobile\":\"13800000000\"}", 503);
    assert_true(time_mono_us() - t0 < 2000000);
    r = get("/metrics");
    assert_int_equal(r.status, 200);
    resp_free(&r);
    g_port = saved;
    worker_stop(&w);
}

/* The value of one series line ("name{labels} value") of a /metrics body; -1 if absent. */
static long metrics_line(const char *body, const char *series)
{
    char want[512];
    snprintf(want, sizeof want, "\n%s ", series);
    const char *p = strstr(body, want);
    return p ? strtol(p + strlen(want), NULL, 10) : -1;
}

/* The HTTP metrics keep handles on their series (api.c): a registry reset frees
 * the series, and the next request must count in new ones, never through the old
 * handles (ASan: heap-use-after-free; without it, counts lost). */
static void test_metrics_reset(void **state)
{
    (void)state;
    const char *req400 =
        "orgsync_http_requests_total{route=\"/v1/runs/{run_id}\",method=\"GET\",status=\"400\"}";
    const char *dur = "orgsync_http_request_duration_seconds_count{route=\"/v1/runs/{run_id}\"}";
    expect_status("GET", "/v1/runs/abc", NULL, NULL, 400);
    expect_status("GET", "/v1/runs/abc", NULL, NULL, 400);
    resp r = get("/metrics");
    long before = metrics_line(r.body, req400), before_dur = metrics_line(r.body, dur);
    resp_free(&r);
    assert_true(before >= 2);
    assert_true(before_dur >= before);
    for (int round = 0; round < 2; round++) {
        worker_metrics_reset(&g_w);
        expect_status("GET", "/v1/runs/abc", NULL, NULL, 400);
        expect_status("GET", "/v1/runs/abc", NULL, NULL, 400);
        expect_status("GET", "/v1/runs/abc", NULL, NULL, 400);
        r = get("/metrics");
        assert_int_equal(r.status, 200);
        assert_int_equal(metrics_line(r.body, req400), 3);
        assert_int_equal(metrics_line(r.body, dur), 3);
        /* a series first seen after the reset is counted too */
        assert_int_equal(metrics_line(r.body, "orgsync_http_requests_total{route=\"/metrics\","
                                              "method=\"GET\",status=\"200\"}"),
                         -1);
        resp_free(&r);
        r = get("/metrics");
        assert_int_equal(metrics_line(r.body, "orgsync_http_requests_total{route=\"/metrics\","
                                              "method=\"GET\",status=\"200\"}"),
                         1);
        resp_free(&r);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_health),
        cmocka_unit_test(test_run_latest),
        cmocka_unit_test(test_run_errors),
        cmocka_unit_test(test_progress),
        cmocka_unit_test(test_cache),
        cmocka_unit_test(test_min_revision),
        cmocka_unit_test_setup_teardown(test_min_revision_fresh, long_cache_setup,
                                        long_cache_teardown),
        cmocka_unit_test(test_users),
        cmocka_unit_test(test_users_by_mobile),
        cmocka_unit_test(test_admin_auth),
        cmocka_unit_test(test_read_auth),
        cmocka_unit_test(test_post_run),
        cmocka_unit_test(test_realtime_lookup),
        cmocka_unit_test(test_leader),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_dependencies_down),
        cmocka_unit_test(test_metrics_reset), /* last: it forgets every series */
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
