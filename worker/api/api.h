/* worker/api/: the HTTP API every worker serves: routes, realtime lookup, progress page.
 *
 * The HTTP API of SPEC §5, served by every worker from PostgreSQL (and Redis for
 * the leader and the lookup caches). The caller owns the loop, the clients and
 * the server; the API only registers routes on it.
 *
 *   api *a;
 *   api_deps d = {.loop = loop, .settings = &s, .pg = pg, .redis = rc, .wecom = wc};
 *   api_register(srv, &d, &a);
 *   ...
 *   api_close(a);                 // before http_server_close / pg_pool_close / redis_close
 *
 * Progress answers (runs, latest, one run, one enterprise's progress) are cached per
 * worker for at most cache_ms (250 by default), and concurrent misses for the same
 * answer share one query, so a polling storm costs PostgreSQL a few queries a second
 * per worker whatever the number of clients. Each carries the revision of the runs it
 * shows, and ?min_revision=N never gets an older one (worker/api/api_cache.h). */
#ifndef ORGSYNC_API_H
#define ORGSYNC_API_H

#include <uv.h>

#include "common/http_server.h"
#include "common/pg.h"
#include "common/redis.h"
#include "common/settings.h"

typedef struct api api;
struct wecom; /* worker/wecom/wecom.h: the upstream client (realtime lookup only) */

/* What only the answering worker knows about leadership (DESIGN §3 "An
 * explainable gate"), filled in by the serve engineer's callback. */
typedef struct api_leader_local {
    int eligible;             /* 1 if this worker competes for the lock */
    char why_not[256];        /* "" when eligible, else every reason, "; "-separated */
    int is_leader;            /* 1 if this worker holds the lock now */
    long long lease_ms_left;  /* trusted lease left, -1 when not leading */
    long long last_renew_ms;  /* latency of the last lock renewal, -1 unknown */
    long long leader_changes; /* leadership changes this process has seen */
} api_leader_local;

typedef void (*api_leader_local_fn)(void *arg, api_leader_local *out);

typedef struct api_deps {
    uv_loop_t *loop;
    const settings *settings; /* env, admin_token, lookup_budget, instance, ... */
    pg_pool *pg;
    redis_client *redis;
    /* NULL: POST /v1/users/realtime-lookup answers 503 (no upstream configured). */
    struct wecom *wecom;
    /* NULL: /v1/leader reports eligibility as unknown. */
    api_leader_local_fn leader_local;
    void *leader_local_arg;
    /* 1: write endpoints are refused with 403 (ORGSYNC_READ_ONLY on, or auto and
     * the role cannot write). */
    int read_only;
    /* NULL: never draining. Else, while *draining is nonzero (the worker got
     * SIGTERM and is about to stop), GET /readyz answers 503 "draining" without
     * probing anything, so that a load balancer stops sending to this worker. */
    const int *draining;
    /* Progress cache lifetime; 0 means 250 ms, negative disables caching (tests). */
    int cache_ms;
} api_deps;

/* Registers every route of SPEC §5 on srv and sets srv's observer (HTTP metrics).
 * deps is copied (the pointers in it must outlive the api). 0 and *out set, or a
 * negative errno (out of memory): then close srv without serving, since routes
 * registered before the failure are left pointing at freed memory. */
int api_register(http_server *srv, const api_deps *deps, api **out);

/* From now on no request is answered by the api (requests still waiting for
 * PostgreSQL or Redis are left to the server, which frees them on close); the api
 * frees itself once its last pending callback has run. Call it before closing the
 * server, the pool and the Redis client. NULL is a no-op. */
void api_close(api *a);

/* Refreshes the series this worker copies from its clients' statistics, its
 * lock state and /proc into the metrics registry (GET /metrics does it too);
 * serve.c calls it every second before metrics_host_publish(). NULL: no-op. */
void api_metrics_refresh(api *a);

/* The job whose runs and leader the API reports. */
#define API_JOB "directory-sync"

#endif
