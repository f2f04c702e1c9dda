/* Route registration: builds the api object, calls each route module's
 * registrar (api_routes.h), and frees the object on close; HTTP metrics. No
 * route file uses anything of this one. */
#include "worker/api/api_routes.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/metrics.h"
#include "worker/api/api_cache.h"
#include "worker/api/lookup.h"

static void api_free(api *a)
{
    api_cache_free(a);
    lookup_free(a->lk);
    free(a->succ);
    free(a);
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
static void http_labels(api_http_series *e, const char *route, const char *method, int status)
{
    char labels[METRICS_MAX_LABELS];
    snprintf(labels, sizeof labels, "route=\"%s\",method=\"%s\",status=\"%d\"",
             route ? route : "unmatched", method, status);
    metrics_handle_bind(&e->requests, M_HTTP_REQUESTS, labels, METRIC_COUNTER);
    snprintf(labels, sizeof labels, "route=\"%s\"", route ? route : "unmatched");
    metrics_handle_bind(&e->duration, M_HTTP_DURATION, labels, METRIC_HISTOGRAM);
}

/* The series of (route, method, status), bound once per registry generation, so
 * a request costs two increments: no formatting, no hashing of labels. The route
 * is keyed by its pointer: patterns are owned by a->srv's router, which never
 * drops one and outlives the observer (api_close removes it first). */
static void observe(void *arg, const char *method, const char *route, int status, double seconds)
{
    api *a = arg;
    api_http_series tmp, *e = NULL;
    if (!method)
        method = "";
    size_t ml = strlen(method);
    if (status > 0 && ml < sizeof e->method) {
        size_t i = ((uintptr_t)route >> 4 ^ (size_t)status * 31 ^ ml) & (API_HTTP_SERIES - 1);
        for (size_t n = 0; n < API_HTTP_SERIES; n++, i = (i + 1) & (API_HTTP_SERIES - 1)) {
            api_http_series *s = &a->http_series[i];
            if (s->status == 0) {
                s->route = route;
                memcpy(s->method, method, ml + 1);
                s->status = status;
                e = s;
                break;
            }
            if (s->status == status && s->route == route && strcmp(s->method, method) == 0) {
                e = s;
                break;
            }
        }
    }
    if (!e) { /* table full (or an odd key): found by name, as before */
        memset(&tmp, 0, sizeof tmp);
        e = &tmp;
    }
    /* Not live: new, the registry was reset since, or the series was dropped. */
    if (!metrics_handle_live(&e->requests) || !metrics_handle_live(&e->duration))
        http_labels(e, route, method, status);
    metrics_handle_add(&e->requests, 1);
    metrics_handle_observe(&e->duration, seconds);
}

/* The series /metrics copies in from the clients' own statistics. */
static void describe_api_metrics(void)
{
    metrics_describe("orgsync_http_connections", METRIC_GAUGE,
                     "Open HTTP client connections of the live workers");
    metrics_describe("orgsync_pg_timeouts_total", METRIC_COUNTER, "PostgreSQL query timeouts");
    metrics_describe("orgsync_pg_reconnects_total", METRIC_COUNTER, "PostgreSQL reconnections");
    metrics_describe("orgsync_redis_timeouts_total", METRIC_COUNTER, "Redis command timeouts");
    metrics_describe("orgsync_redis_reconnects_total", METRIC_COUNTER, "Redis reconnections");
    metrics_describe("orgsync_upstream_calls_total", METRIC_COUNTER,
                     "Upstream calls made by the workers of this host (all APIs)");
    metrics_describe("orgsync_upstream_token_refreshes_total", METRIC_COUNTER,
                     "Access tokens fetched by the workers of this host");
    metrics_describe("orgsync_upstream_bans_total", METRIC_COUNTER,
                     "Upstream frequency or concurrency refusals (45009, 45033)");
    metrics_describe("orgsync_upstream_inflight", METRIC_GAUGE, "Upstream calls in flight now");
    /* Unlabelled counters exist from the start (at 0), so that a rate() or an
     * alert on them has a series before the first event. */
    static const char *const zero[] = {M_PACING_WAITS,          M_PACING_WAIT_SECONDS,
                                       M_EGRESS_WAITS,          M_DEPARTMENTS_SYNCED,
                                       M_DEPARTMENTS_UNCHANGED, M_MEMBERS_SYNCED};
    for (size_t i = 0; i < sizeof(zero) / sizeof(zero[0]); i++)
        metrics_counter_add(zero[i], NULL, 0);
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
    a->destroy = api_free;
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
        err = api_hosts_register(a);
    if (!err)
        err = api_runs_register(a);
    if (!err)
        err = api_users_register(a);
    if (!err)
        err = api_callbacks_register(a);
    if (err)
        goto fail;
    http_server_set_observer(srv, observe, a);
    *out = a;
    return 0;
fail:
    /* Only out of memory or a programming error gets here; routes already added
     * point at a, so api.h tells the caller to close srv without serving. */
    log_error("api: route registration failed", LF_I("err", err));
    api_free(a);
    return err;
}
