/* Route registration: builds the api object, calls each route module's
 * registrar (api_routes.h), and frees the object on close; HTTP metrics. No
 * route file uses anything of this one. */
#include "worker/api/api_routes.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

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
