/* Helpers for the directory sync integration tests: a private database copy, a
 * simulator process, blocking HTTP to its control routes, a job_run driven on
 * a real loop with real PostgreSQL, Redis and HTTP clients, and the check that
 * PostgreSQL holds exactly what GET /sim/org says.
 *
 * Blocking calls (libpq, curl easy) are fine here: they run in the test, between
 * or beside loop turns, never inside the code under test. */
#ifndef ORGSYNC_TEST_SYNC_HELPERS_H
#define ORGSYNC_TEST_SYNC_HELPERS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <json-c/json.h>
#include <libpq-fe.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "common/buf.h"
#include "common/http_client.h"
#include "common/log.h"
#include "common/pg.h"
#include "common/redis.h"
#include "common/settings.h"
#include "coordinator/job.h"
#include "worker/sync/directory_sync.h"

static inline const char *sh_need_env(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v) {
        fprintf(stderr, "%s is not set: run this test under tests/run.sh\n", name);
        fail_msg("%s is not set: run this test under tests/run.sh", name);
    }
    return v;
}

/* ---- PostgreSQL ------------------------------------------------------------------ */

static inline PGresult *sh_exec(PGconn *c, const char *sql, int n, const char *const *p)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, p, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        fail_msg("SQL failed: %s\n%s", PQresultErrorMessage(r), sql);
    return r;
}

static inline void sh_exec0(PGconn *c, const char *sql)
{
    PQclear(sh_exec(c, sql, 0, NULL));
}

/* First column of the first row as a number. */
static inline long long sh_scalar(PGconn *c, const char *sql, int n, const char *const *p)
{
    PGresult *r = sh_exec(c, sql, n, p);
    long long v = PQntuples(r) > 0 && !PQgetisnull(r, 0, 0) ? atoll(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    return v;
}

static inline PGconn *sh_connect(const char *dsn)
{
    PGconn *c = PQconnectdb(dsn);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("cannot connect (%s): %s", dsn, PQerrorMessage(c));
    return c;
}

typedef struct sh_db {
    char name[64];
    char dsn[1024];
} sh_db;

/* A fresh migrated database of this test's own (CREATE DATABASE ... TEMPLATE orgsync). */
static inline void sh_db_create(sh_db *d, const char *tag)
{
    const char *admin = sh_need_env("ORGSYNC_TEST_PG_ADMIN_DSN");
    const char *app = sh_need_env("ORGSYNC_TEST_PG_DSN");
    char sql[256];
    PGconn *c = sh_connect(admin);

    snprintf(d->name, sizeof(d->name), "t_sync_%s_%d", tag, (int)getpid());
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", d->name);
    sh_exec0(c, sql);
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s TEMPLATE orgsync OWNER orgsync", d->name);
    sh_exec0(c, sql);
    PQfinish(c);
    /* A later keyword wins in a libpq conninfo string. */
    snprintf(d->dsn, sizeof(d->dsn), "%s dbname=%s", app, d->name);
}

static inline void sh_db_drop(sh_db *d)
{
    char sql[256];
    PGconn *c = PQconnectdb(getenv("ORGSYNC_TEST_PG_ADMIN_DSN"));
    if (PQstatus(c) == CONNECTION_OK) {
        snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", d->name);
        PQclear(PQexec(c, sql));
    }
    PQfinish(c);
}

/* ---- the simulator --------------------------------------------------------------- */

typedef struct sh_sim {
    pid_t pid;
    int port;
    char url[128];
} sh_sim;

/* Every simulator started, so a failed test (cmocka longjmps out of it) still
 * stops its simulator: sh_sim_kill_all() from a teardown and at exit. */
static pid_t sh_sim_pids[32];

static inline void sh_sim_kill_all(void)
{
    for (size_t i = 0; i < sizeof(sh_sim_pids) / sizeof(sh_sim_pids[0]); i++) {
        if (sh_sim_pids[i] > 0) {
            kill(sh_sim_pids[i], SIGTERM);
            waitpid(sh_sim_pids[i], NULL, 0);
            sh_sim_pids[i] = 0;
        }
    }
}

static inline void sh_sim_track(pid_t pid)
{
    static int registered;
    if (!registered) {
        atexit(sh_sim_kill_all);
        registered = 1;
    }
    for (size_t i = 0; i < sizeof(sh_sim_pids) / sizeof(sh_sim_pids[0]); i++) {
        if (sh_sim_pids[i] <= 0) {
            sh_sim_pids[i] = pid;
            return;
        }
    }
}

static inline void sh_sim_untrack(pid_t pid)
{
    for (size_t i = 0; i < sizeof(sh_sim_pids) / sizeof(sh_sim_pids[0]); i++)
        if (sh_sim_pids[i] == pid)
            sh_sim_pids[i] = 0;
}

/* argv: extra flags, NULL-terminated. */
static inline void sh_sim_start(sh_sim *s, const char *const *extra)
{
    const char *bin = sh_need_env("ORGSYNC_SIM_BIN");
    const char *argv[64];
    int n = 0, fds[2];
    char line[256];
    FILE *f;

    argv[n++] = bin;
    argv[n++] = "--port";
    argv[n++] = "0";
    argv[n++] = "--quiet";
    for (int i = 0; extra && extra[i] && n < 62; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    if (pipe(fds))
        fail_msg("pipe failed");
    s->pid = fork();
    if (s->pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    if (s->pid > 0)
        sh_sim_track(s->pid);
    f = fdopen(fds[0], "r");
    if (!f || !fgets(line, sizeof(line), f) || sscanf(line, "listening %d", &s->port) != 1)
        fail_msg("simulator did not start (%s)", bin);
    fclose(f);
    snprintf(s->url, sizeof(s->url), "http://127.0.0.1:%d", s->port);
}

static inline void sh_sim_stop(sh_sim *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGTERM);
        waitpid(s->pid, NULL, 0);
        sh_sim_untrack(s->pid);
        s->pid = 0;
    }
}

static size_t sh_curl_write(char *p, size_t sz, size_t n, void *arg)
{
    buf_append(arg, p, sz * n);
    return sz * n;
}

/* Blocking request to the simulator's control routes. Returns the parsed body. */
static inline json_object *sh_http(const char *method, const char *url, const char *body)
{
    CURL *e = curl_easy_init();
    buf b;
    long status = 0;
    json_object *j;
    struct curl_slist *h = NULL;

    buf_init(&b);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sh_curl_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 10000L);
    if (!strcmp(method, "POST")) {
        h = curl_slist_append(h, "Content-Type: application/json");
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body ? body : "");
    }
    if (curl_easy_perform(e) != CURLE_OK)
        fail_msg("%s %s failed", method, url);
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(e);
    curl_slist_free_all(h);
    if (status != 200)
        fail_msg("%s %s: HTTP %ld: %s", method, url, status, b.data ? b.data : "");
    j = json_tokener_parse(b.data ? b.data : "");
    buf_free(&b);
    if (!j)
        fail_msg("%s %s: not JSON", method, url);
    return j;
}

static inline void sh_sim_post(const sh_sim *s, const char *path, const char *body)
{
    char url[256];
    snprintf(url, sizeof(url), "%s%s", s->url, path);
    json_object_put(sh_http("POST", url, body));
}

static inline json_object *sh_get(json_object *o, const char *path)
{
    char key[64];
    const char *p = path;
    while (o && *p) {
        size_t n = strcspn(p, ".");
        snprintf(key, sizeof(key), "%.*s", (int)n, p);
        if (!json_object_object_get_ex(o, key, &o))
            return NULL;
        p += n;
        if (*p == '.')
            p++;
    }
    return o;
}

static inline long long sh_get_int(json_object *o, const char *path)
{
    json_object *v = sh_get(o, path);
    return v ? json_object_get_int64(v) : -1;
}

/* The stats object of one enterprise (owned by root). */
static inline json_object *sh_corp_stats(json_object *root, const char *corp_id)
{
    json_object *arr = sh_get(root, "corps");
    for (size_t i = 0; arr && i < json_object_array_length(arr); i++) {
        json_object *c = json_object_array_get_idx(arr, i);
        json_object *id = sh_get(c, "corp_id");
        if (id && !strcmp(json_object_get_string(id), corp_id))
            return c;
    }
    return NULL;
}

static inline json_object *sh_sim_stats(const sh_sim *s)
{
    char url[256];
    snprintf(url, sizeof(url), "%s/sim/stats", s->url);
    return sh_http("GET", url, NULL);
}

/* Every enterprise: no rate violation, at most `rate` arrivals in any second. */
static inline void sh_assert_paced(const sh_sim *s, int rate)
{
    json_object *st = sh_sim_stats(s), *arr = sh_get(st, "corps");
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        json_object *c = json_object_array_get_idx(arr, i);
        long long v = sh_get_int(c, "violations"), m = sh_get_int(c, "max_1s");
        if (v != 0 || m > rate)
            fail_msg("%s: %lld rate violations, max %lld requests in 1 s (limit %d)",
                     json_object_get_string(sh_get(c, "corp_id")), v, m, rate);
    }
    json_object_put(st);
}

/* ---- PostgreSQL against GET /sim/org --------------------------------------------- */

static int sh_cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int sh_cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return x < y ? -1 : x > y;
}

static inline char *sh_sorted_ints(json_object *arr)
{
    int v[64], n = 0;
    buf b;
    for (size_t i = 0; arr && i < json_object_array_length(arr) && n < 64; i++)
        v[n++] = json_object_get_int(json_object_array_get_idx(arr, i));
    qsort(v, (size_t)n, sizeof(int), sh_cmp_int);
    buf_init(&b);
    buf_puts(&b, "{");
    for (int i = 0; i < n; i++)
        buf_printf(&b, "%s%d", i ? "," : "", v[i]);
    buf_puts(&b, "}");
    return buf_detach(&b, NULL);
}

static inline const char *sh_jstr(json_object *o, const char *k)
{
    json_object *v;
    return json_object_object_get_ex(o, k, &v) && v ? json_object_get_string(v) : "";
}

/* Compares two sorted line lists, failing with the first difference. */
static inline void sh_compare_lines(const char *what, char **want, int nw, char **got, int ng)
{
    int i = 0, k = 0;
    while (i < nw || k < ng) {
        int c = i >= nw ? 1 : k >= ng ? -1 : strcmp(want[i], got[k]);
        if (c < 0)
            fail_msg("%s: upstream has %s, PostgreSQL does not (%d vs %d rows)", what, want[i], nw,
                     ng);
        if (c > 0)
            fail_msg("%s: PostgreSQL has %s, upstream does not (%d vs %d rows)", what, got[k], nw,
                     ng);
        i++;
        k++;
    }
}

static inline void sh_free_lines(char **v, int n)
{
    for (int i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static inline char *sh_line(const char *fmt, ...)
{
    va_list ap;
    buf b;
    buf_init(&b);
    va_start(ap, fmt);
    char tmp[2048];
    vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    buf_puts(&b, tmp);
    return buf_detach(&b, NULL);
}

/* Live members and departments of corp_id in PostgreSQL equal the upstream's
 * directory exactly (userid, name, mobile, email, position, status, department
 * set, main department; department id, name, parent, order); everything else of
 * that enterprise carries deleted_at. Returns the member count. */
static inline int sh_assert_org(PGconn *pg, const sh_sim *s, const char *corp_id)
{
    char url[256];
    json_object *org, *corp, *users, *depts;
    char **want, **got;
    int nw = 0, ng = 0, nusers;
    const char *p[1] = {corp_id};
    PGresult *r;

    snprintf(url, sizeof(url), "%s/sim/org?corp_id=%s", s->url, corp_id);
    org = sh_http("GET", url, NULL);
    corp = json_object_array_get_idx(sh_get(org, "corps"), 0);
    users = sh_get(corp, "users");
    depts = sh_get(corp, "departments");
    nusers = (int)json_object_array_length(users);

    want = calloc((size_t)nusers + 1, sizeof(char *));
    for (int i = 0; i < nusers; i++) {
        json_object *u = json_object_array_get_idx(users, i);
        char *d = sh_sorted_ints(sh_get(u, "department"));
        want[nw++] =
            sh_line("%s|%s|%s|%s|%s|%lld|%s|%lld", sh_jstr(u, "userid"), sh_jstr(u, "name"),
                    sh_jstr(u, "mobile"), sh_jstr(u, "email"), sh_jstr(u, "position"),
                    sh_get_int(u, "status"), d, sh_get_int(u, "main_department"));
        free(d);
    }
    qsort(want, (size_t)nw, sizeof(char *), sh_cmp_str);
    r = sh_exec(pg,
                "SELECT userid, name, mobile, email, position, status, "
                "(SELECT coalesce(array_agg(x ORDER BY x), '{}') FROM unnest(department) x)::text,"
                " main_department FROM users WHERE corp_id = $1 AND deleted_at IS NULL",
                1, p);
    ng = PQntuples(r);
    got = calloc((size_t)ng + 1, sizeof(char *));
    for (int i = 0; i < ng; i++)
        got[i] = sh_line("%s|%s|%s|%s|%s|%s|%s|%s", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                         PQgetvalue(r, i, 2), PQgetvalue(r, i, 3), PQgetvalue(r, i, 4),
                         PQgetvalue(r, i, 5), PQgetvalue(r, i, 6), PQgetvalue(r, i, 7));
    PQclear(r);
    qsort(got, (size_t)ng, sizeof(char *), sh_cmp_str);
    sh_compare_lines(corp_id, want, nw, got, ng);
    sh_free_lines(want, nw);
    sh_free_lines(got, ng);

    nw = (int)json_object_array_length(depts);
    want = calloc((size_t)nw + 1, sizeof(char *));
    for (int i = 0; i < nw; i++) {
        json_object *d = json_object_array_get_idx(depts, i);
        want[i] = sh_line("%lld|%s|%lld|%lld", sh_get_int(d, "id"), sh_jstr(d, "name"),
                          sh_get_int(d, "parentid"), sh_get_int(d, "order"));
    }
    qsort(want, (size_t)nw, sizeof(char *), sh_cmp_str);
    r = sh_exec(pg,
                "SELECT dept_id, name, parent_id, \"order\" FROM departments "
                "WHERE corp_id = $1 AND deleted_at IS NULL",
                1, p);
    ng = PQntuples(r);
    got = calloc((size_t)ng + 1, sizeof(char *));
    for (int i = 0; i < ng; i++)
        got[i] = sh_line("%s|%s|%s|%s", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                         PQgetvalue(r, i, 2), PQgetvalue(r, i, 3));
    PQclear(r);
    qsort(got, (size_t)ng, sizeof(char *), sh_cmp_str);
    sh_compare_lines(corp_id, want, nw, got, ng);
    sh_free_lines(want, nw);
    sh_free_lines(got, ng);
    json_object_put(org);
    return nusers;
}

/* ---- running the job ------------------------------------------------------------- */

typedef struct sh_kv {
    const char *k, *v;
} sh_kv;

static const char *sh_settings_get(const char *name, void *arg)
{
    for (const sh_kv *kv = arg; kv && kv->k; kv++)
        if (!strcmp(kv->k, name))
            return kv->v;
    return NULL;
}

typedef struct sh_run sh_run;
struct sh_run {
    uv_loop_t loop;
    uv_timer_t tick;
    settings s;
    pg_pool *pg;
    redis_client *redis;
    http_client *http;
    job_run run;
    int finished;
    char state[32]; /* "" when stopped (NULL state) */
    char error[1024];
    int fenced_out_calls;
    int lease; /* what lease_valid answers */
    void (*on_tick)(sh_run *r);
    void *user;
    int closed;
};

static int sh_lease_valid(job_run *run)
{
    return ((sh_run *)run->coord)->lease;
}

static void sh_fenced_out(job_run *run)
{
    ((sh_run *)run->coord)->fenced_out_calls++;
}

static void sh_finished(job_run *run, const char *state, const char *error)
{
    sh_run *r = run->coord;
    r->finished++;
    snprintf(r->state, sizeof(r->state), "%s", state ? state : "");
    snprintf(r->error, sizeof(r->error), "%s", error ? error : "");
}

static void sh_on_tick(uv_timer_t *t)
{
    sh_run *r = t->data;
    if (r->on_tick && !r->finished)
        r->on_tick(r);
}

/* Settings from pairs (ORGSYNC_PG_DSN etc. are filled in by the caller). */
static inline void sh_run_init(sh_run *r, const sh_kv *kv)
{
    char err[256];
    memset(r, 0, sizeof(*r));
    if (settings_load_from(&r->s, NULL, sh_settings_get, (void *)kv, err, sizeof(err)))
        fail_msg("settings: %s", err);
    assert_int_equal(uv_loop_init(&r->loop), 0);
    r->pg = pg_pool_new(&r->loop, &(pg_pool_opts){.dsn = r->s.pg_dsn, .size = 4});
    r->redis = redis_new(&r->loop, &(redis_opts){.url = r->s.redis_url});
    r->http = http_client_new(&r->loop, NULL);
    assert_non_null(r->pg);
    assert_non_null(r->redis);
    assert_non_null(r->http);
    uv_timer_init(&r->loop, &r->tick);
    r->tick.data = r;
    r->lease = 1;
}

/* Runs one attempt of run_id with token until the job calls finished() (or
 * timeout_ms passes: a test failure). */
static inline void sh_run_job(sh_run *r, long long run_id, long long token, int attempt,
                              const char *const *corps, int ncorps, int timeout_ms)
{
    uint64_t deadline = uv_now(&r->loop) + (uint64_t)timeout_ms;
    memset(&r->run, 0, sizeof(r->run));
    r->finished = 0;
    r->state[0] = r->error[0] = '\0';
    r->run.loop = &r->loop;
    r->run.settings = &r->s;
    r->run.pg = r->pg;
    r->run.redis = r->redis;
    r->run.http = r->http;
    r->run.env = r->s.env;
    r->run.job = DIRECTORY_SYNC_JOB;
    r->run.fencing_token = token;
    r->run.run_id = run_id;
    r->run.attempt = attempt;
    r->run.corp_ids = corps;
    r->run.ncorp_ids = ncorps;
    r->run.lease_valid = sh_lease_valid;
    r->run.fenced_out = sh_fenced_out;
    r->run.finished = sh_finished;
    r->run.coord = r;
    assert_int_equal(directory_sync_ops.start(&r->run), 0);
    uv_timer_start(&r->tick, sh_on_tick, 20, 20);
    while (!r->finished) {
        uv_run(&r->loop, UV_RUN_ONCE);
        uv_update_time(&r->loop);
        if (uv_now(&r->loop) > deadline)
            fail_msg("the job did not finish within %d ms", timeout_ms);
    }
    uv_timer_stop(&r->tick);
    assert_int_equal(r->finished, 1);
    assert_null(r->run.job_state);
}

static void sh_closed(void *arg)
{
    (*(int *)arg)++;
}

static void sh_handle_closed(uv_handle_t *h)
{
    (*(int *)h->data)++;
}

static inline void sh_run_close(sh_run *r)
{
    int n = 0;
    pg_pool_close(r->pg, sh_closed, &n);
    redis_close(r->redis, sh_closed, &n);
    http_client_close(r->http, sh_closed, &n);
    r->tick.data = &n;
    uv_close((uv_handle_t *)&r->tick, sh_handle_closed);
    while (n < 4)
        uv_run(&r->loop, UV_RUN_ONCE);
    /* Whatever the job left closing (the upstream client) finishes too. */
    uv_run(&r->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&r->loop), 0);
}

/* A leader_fence row and a 'running' run for env, like a leader session makes. */
static inline long long sh_make_run(PGconn *pg, const char *env, long long token,
                                    const char *corps_literal)
{
    char tok[24];
    const char *p[3] = {env, tok, corps_literal};
    snprintf(tok, sizeof(tok), "%lld", token);
    PQclear(sh_exec(pg,
                    "INSERT INTO leader_fence (env, job, token, instance) VALUES ($1, "
                    "'directory-sync', $2::bigint, 'test') ON CONFLICT (env, job) DO UPDATE "
                    "SET token = EXCLUDED.token",
                    2, p));
    return sh_scalar(pg,
                     "INSERT INTO sync_runs (env, job, trigger, scheduled_for, state, "
                     "leader_instance, fencing_token, attempt, corp_ids, started_at) VALUES ($1, "
                     "'directory-sync', 'cli', clock_timestamp(), 'running', 'test', $2::bigint, "
                     "1, $3::text[], now()) RETURNING run_id",
                     3, p);
}

/* What the coordinator does with finished(): the run row takes the state. */
static inline void sh_end_run(PGconn *pg, long long run_id, const char *state)
{
    char id[24];
    const char *p[2] = {id, state};
    snprintf(id, sizeof(id), "%lld", run_id);
    PQclear(sh_exec(pg,
                    "UPDATE sync_runs SET state = $2, finished_at = now() WHERE run_id = "
                    "$1::bigint",
                    2, p));
}

static inline void sh_add_enterprises(PGconn *pg, int n)
{
    char id[32], secret[48], name[48];
    const char *p[3] = {id, name, secret};
    for (int i = 1; i <= n; i++) {
        snprintf(id, sizeof(id), "wwsim%04d", i);
        snprintf(secret, sizeof(secret), "secret-wwsim%04d", i);
        snprintf(name, sizeof(name), "Sim %d", i);
        PQclear(sh_exec(pg,
                        "INSERT INTO enterprises (corp_id, name, corp_secret) VALUES ($1, $2, $3)"
                        " ON CONFLICT DO NOTHING",
                        3, p));
    }
}

#endif
