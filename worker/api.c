/* The API object: registration, lifetime, the per-worker progress cache, admin
 * authentication and the helpers every route file shares. */
#include "worker/api_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/timeutil.h"
#include "worker/lookup.h"

static void api_free(api *a)
{
    for (int i = 0; i < API_CACHE_SLOTS; i++) {
        api_centry *e = a->cache[i];
        if (!e)
            continue; /* none is loading: each load holds a reference */
        free(e->body);
        free(e->waiters);
        free(e);
    }
    lookup_free(a->lk);
    free(a);
}

void api_ref(api *a)
{
    a->pending++;
}

int api_unref(api *a)
{
    a->pending--;
    if (!a->closing)
        return 1;
    if (a->pending == 0)
        api_free(a);
    return 0;
}

void api_close(api *a)
{
    if (!a || a->closing)
        return;
    a->closing = 1;
    if (a->srv)
        http_server_set_observer(a->srv, NULL, NULL);
    if (a->pending == 0)
        api_free(a);
}

/* HTTP metrics: the route pattern (never the raw path) keeps the series bounded. */
static void observe(void *arg, const char *method, const char *route, int status, double seconds)
{
    char labels[METRICS_MAX_LABELS];
    (void)arg;
    if (!route)
        route = "unmatched";
    snprintf(labels, sizeof labels, "route=\"%s\",method=\"%s\",status=\"%d\"", route,
             method ? method : "", status);
    metrics_counter_add(M_HTTP_REQUESTS, labels, 1);
    snprintf(labels, sizeof labels, "route=\"%s\"", route);
    metrics_observe(M_HTTP_DURATION, labels, seconds);
}

/* The series /metrics copies in from the clients' own statistics. */
static void describe_api_metrics(void)
{
    metrics_describe("orgsync_worker_info", METRIC_GAUGE, "The worker that answered this scrape");
    metrics_describe("orgsync_http_connections", METRIC_GAUGE, "Open HTTP client connections");
    metrics_describe("orgsync_pg_timeouts_total", METRIC_COUNTER, "PostgreSQL query timeouts");
    metrics_describe("orgsync_pg_reconnects_total", METRIC_COUNTER, "PostgreSQL reconnections");
    metrics_describe("orgsync_redis_timeouts_total", METRIC_COUNTER, "Redis command timeouts");
    metrics_describe("orgsync_redis_reconnects_total", METRIC_COUNTER, "Redis reconnections");
    metrics_describe("orgsync_upstream_calls_total", METRIC_COUNTER,
                     "Upstream calls made by this process (all APIs)");
    metrics_describe("orgsync_upstream_token_refreshes_total", METRIC_COUNTER,
                     "Access tokens fetched by this process");
    metrics_describe("orgsync_upstream_bans_total", METRIC_COUNTER,
                     "Upstream frequency or concurrency refusals (45009, 45033)");
    metrics_describe("orgsync_upstream_inflight", METRIC_GAUGE, "Upstream calls in flight now");
}

int api_register(http_server *srv, const api_deps *deps, api **out)
{
    int err;
    api *a;

    if (!srv || !deps || !deps->loop || !deps->settings || !deps->pg || !deps->redis || !out)
        return -EINVAL;
    a = calloc(1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    a->d = *deps;
    a->srv = srv;
    a->cache_ms = deps->cache_ms == 0 ? 250 : deps->cache_ms;
    a->lk = lookup_new(deps->loop, deps->settings, deps->pg, deps->redis, deps->wecom);
    if (!a->lk) {
        err = -ENOMEM;
        goto fail;
    }
    metrics_init();
    describe_api_metrics();
    err = api_health_register(a);
    if (!err)
        err = api_runs_register(a);
    if (!err)
        err = api_users_register(a);
    if (err)
        goto fail;
    http_server_set_observer(srv, observe, a);
    *out = a;
    return 0;
fail:
    /* Only out of memory or a programming error gets here; routes already added
     * point at a, so api.h tells the caller to close srv without serving. */
    log_error("api: route registration failed", LF_I("err", err));
    lookup_free(a->lk);
    free(a);
    return err;
}

/* ---- cache ---- */

static void centry_free(api_centry *e)
{
    free(e->body);
    free(e->waiters);
    free(e);
}

static int add_waiter(api_centry *e, http_req *req)
{
    if (e->nwait == e->capwait) {
        size_t cap = e->capwait ? e->capwait * 2 : 4;
        http_req **w = realloc(e->waiters, cap * sizeof(*w));
        if (!w)
            return -ENOMEM;
        e->waiters = w;
        e->capwait = cap;
    }
    e->waiters[e->nwait++] = req;
    return 0;
}

/* The slot for key: its entry, else an empty slot, else the least recently
 * expired entry that is not loading; -1 when every slot is loading. */
static int cache_slot(api *a, const char *key)
{
    int empty = -1, oldest = -1;
    for (int i = 0; i < API_CACHE_SLOTS; i++) {
        api_centry *e = a->cache[i];
        if (!e) {
            if (empty < 0)
                empty = i;
            continue;
        }
        if (strcmp(e->key, key) == 0)
            return i;
        if (!e->loading && (oldest < 0 || e->expires_us < a->cache[oldest]->expires_us))
            oldest = i;
    }
    return empty >= 0 ? empty : oldest;
}

static void reply_entry(api_centry *e, http_req *req)
{
    if (e->body)
        http_reply(req, e->status, "application/json", e->body, e->len);
    else
        http_reply_error(req, 503, "unavailable", "answer not available");
}

/* A hot answer is refreshed in the background during the last fifth of its
 * life, so polls keep being answered from memory and never queue behind the
 * query; an answer is still never older than cache_ms (counted from when its
 * query was sent). */
static void refresh_ahead(api *a, api_centry *e, api_fill_fn fill, uint64_t now)
{
    e->loading = 1;
    e->started_us = now;
    api_ref(a);
    if (fill(a, e) == 0)
        return;
    api_unref(a);
    e->loading = 0; /* keep the answer we have until it expires */
}

void api_cached(api *a, http_req *req, const char *key, api_centry_init init, const void *arg,
                api_fill_fn fill)
{
    uint64_t now = time_mono_us();
    api_centry *e = NULL;
    int slot = a->cache_ms > 0 ? cache_slot(a, key) : -1;

    if (slot >= 0 && a->cache[slot] && strcmp(a->cache[slot]->key, key) == 0) {
        e = a->cache[slot];
        if (e->body && e->expires_us > now) {
            reply_entry(e, req);
            if (!e->loading && now + (uint64_t)a->cache_ms * 200 > e->expires_us)
                refresh_ahead(a, e, fill, now);
            return;
        }
        if (e->loading) {
            if (add_waiter(e, req))
                http_reply_error(req, 503, "out_of_memory", "out of memory");
            return;
        }
        free(e->body);
        e->body = NULL;
    } else {
        e = calloc(1, sizeof(*e));
        if (!e) {
            http_reply_error(req, 503, "out_of_memory", "out of memory");
            return;
        }
        snprintf(e->key, sizeof e->key, "%s", key);
        e->a = a;
        if (slot >= 0) {
            if (a->cache[slot])
                centry_free(a->cache[slot]);
            a->cache[slot] = e;
        } else {
            e->transient = 1; /* caching off, or every slot busy loading */
        }
    }
    e->nwait = 0;
    e->run_id = 0;
    e->limit = 0;
    e->corp[0] = '\0';
    if (init)
        init(e, arg);
    if (add_waiter(e, req)) {
        http_reply_error(req, 503, "out_of_memory", "out of memory");
        goto drop;
    }
    e->loading = 1;
    e->started_us = now;
    api_ref(a);
    if (fill(a, e) == 0)
        return;
    api_unref(a);
    e->loading = 0;
    http_reply_error(req, 503, "database_unavailable", "could not query PostgreSQL");
    e->nwait = 0;
drop:
    if (!e->transient)
        for (int i = 0; i < API_CACHE_SLOTS; i++)
            if (a->cache[i] == e)
                a->cache[i] = NULL;
    centry_free(e);
}

void api_cache_done(api_centry *e, int status, char *body, size_t len)
{
    api *a = e->a;
    /* a dependency failure is not remembered: the next poll tries again */
    uint64_t expires = status >= 500 ? 0 : e->started_us + (uint64_t)a->cache_ms * 1000;

    if (a->closing) { /* nobody to answer: the entry goes with this callback */
        for (int i = 0; i < API_CACHE_SLOTS; i++)
            if (a->cache[i] == e)
                a->cache[i] = NULL;
        e->transient = 1;
    }
    int live = api_unref(a); /* may free a: not used below unless live */
    e->loading = 0;
    free(e->body);
    e->body = body;
    e->len = body ? len : 0;
    e->status = status;
    e->expires_us = expires;
    if (live)
        for (size_t i = 0; i < e->nwait; i++)
            reply_entry(e, e->waiters[i]);
    e->nwait = 0;
    if (e->transient) {
        centry_free(e);
    } else if (status >= 500) {
        for (int i = 0; i < API_CACHE_SLOTS; i++)
            if (a->cache[i] == e)
                a->cache[i] = NULL;
        centry_free(e);
    }
}

void api_cache_error(api_centry *e, int status, const char *code, const char *message)
{
    buf b;
    jw w;
    size_t len = 0;

    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_key(&w, "error");
    jw_obj_begin(&w);
    jw_kstr(&w, "code", code);
    jw_kstr(&w, "message", message);
    jw_obj_end(&w);
    jw_obj_end(&w);
    char *body = b.oom ? NULL : buf_detach(&b, &len);
    buf_free(&b);
    api_cache_done(e, status, body, len);
}

/* ---- auth ---- */

int api_admin_ok(api *a, http_req *req)
{
    const settings *s = a->d.settings;
    const char *h = http_req_header(req, "Authorization");

    if (!s->admin_token[0]) {
        http_reply_error(req, 403, "admin_disabled",
                         "admin routes are disabled: ORGSYNC_ADMIN_TOKEN is not set");
        return 0;
    }
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) {
        http_req_add_header(req, "WWW-Authenticate", "Bearer");
        http_reply_error(req, 401, "unauthorized", "missing bearer token");
        return 0;
    }
    h += 7;
    while (*h == ' ')
        h++;
    if (!hash_ct_equal(h, s->admin_token)) {
        http_req_add_header(req, "WWW-Authenticate", "Bearer error=\"invalid_token\"");
        http_reply_error(req, 401, "unauthorized", "wrong bearer token");
        return 0;
    }
    if (a->d.read_only) {
        http_reply_error(req, 403, "read_only", "this deployment is read-only");
        return 0;
    }
    return 1;
}

int api_pg_query(api *a, const char *sql, int n, const char *const *p, pg_result_cb cb, void *arg)
{
    if (!pg_pool_ready(a->d.pg))
        return PG_ECLOSING;
    return pg_query(a->d.pg, sql, n, p, cb, arg);
}

int api_pg_failed(api *a, const char *what, const char *err)
{
    (void)a;
    log_warn("api: query failed", LF_S("query", what), LF_S("err", err ? err : "?"));
    metrics_counter_add(M_PG_ERRORS, "source=\"api\"", 1);
    return 503;
}

/* ---- parsing ---- */

int api_parse_pos_ll(const char *s, long long max, long long *out)
{
    long long v = 0;
    if (!s || !*s || strlen(s) > 18)
        return -1;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (*p - '0');
    }
    if (v < 1 || v > max)
        return -1;
    *out = v;
    return 0;
}

static int all_digits(const char *s, size_t min, size_t max)
{
    size_t n = strlen(s);
    if (n < min || n > max)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

int api_valid_mobile(const char *s)
{
    if (!s)
        return 0;
    if (s[0] == '+')
        return all_digits(s + 1, 6, 15);
    return s[0] == '1' && all_digits(s, 11, 11);
}

/* ---- result columns ---- */

const char *api_col(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        return NULL;
    return PQgetvalue(r, row, col);
}

long long api_col_ll(const PGresult *r, int row, int col)
{
    const char *v = api_col(r, row, col);
    return v ? strtoll(v, NULL, 10) : 0;
}

void api_kepoch(jw *w, const char *key, const PGresult *r, int row, int col)
{
    const char *v = api_col(r, row, col);
    char out[32];
    if (!v) {
        jw_knull(w, key);
        return;
    }
    double t = strtod(v, NULL);
    long long sec = (long long)t;
    if (t < 0 && (double)sec != t)
        sec--; /* floor, for times before 1970 */
    int ms = (int)((t - (double)sec) * 1000.0 + 0.5);
    if (ms >= 1000) {
        sec++;
        ms -= 1000;
    }
    time_rfc3339((time_t)sec, ms, out);
    jw_kstr(w, key, out);
}

void api_kll_or_null(jw *w, const char *key, const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        jw_knull(w, key);
    else
        jw_kint(w, key, api_col_ll(r, row, col));
}
