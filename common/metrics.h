/* Per-process metrics in Prometheus text format (GET /metrics).
 *
 *   metrics_counter_add(M_UPSTREAM_REQUESTS, "api=\"user/list\",errcode=\"0\"", 1);
 *   metrics_gauge_set(M_LOCK_HELD, NULL, 1);
 *   metrics_observe(M_RUN_DURATION, "state=\"succeeded\"", 12.5);
 *
 * One registry per process, used from the loop thread only (no locking). A
 * series is a metric name plus a label string (the text between the braces,
 * already escaped by the caller, or NULL for none). The number of series is
 * bounded (METRICS_MAX_SERIES): past it new series are dropped and counted in
 * orgsync_metrics_dropped_series_total, so a hostile label value can never
 * grow memory without bound. Label values that come from outside (routes,
 * errcodes) must come from a small set: pass the route pattern, not the path.
 *
 * A metric that was never described is rendered as "untyped". The well-known
 * metrics below are described by metrics_init(); calling it more than once is
 * harmless. */
#ifndef ORGSYNC_METRICS_H
#define ORGSYNC_METRICS_H

#include <stddef.h>

#define METRICS_MAX_SERIES 2048
#define METRICS_MAX_NAME 96
#define METRICS_MAX_LABELS 192

typedef enum { METRIC_COUNTER = 0, METRIC_GAUGE, METRIC_HISTOGRAM } metric_type;

/* Well-known names (use these, so every module writes the same series). */
#define M_LOCK_HELD "orgsync_lock_held"                               /* gauge 0/1, labels job */
#define M_LEADER_CHANGES "orgsync_leader_changes_total"               /* counter, labels job */
#define M_RUNS "orgsync_runs"                                         /* gauge, labels state */
#define M_RUN_DURATION "orgsync_run_duration_seconds"                 /* histogram, labels state */
#define M_DEPARTMENTS_SYNCED "orgsync_departments_synced_total"       /* counter */
#define M_MEMBERS_SYNCED "orgsync_members_synced_total"               /* counter */
#define M_DEPARTMENTS_UNCHANGED "orgsync_departments_unchanged_total" /* counter */
#define M_UPSTREAM_REQUESTS "orgsync_upstream_requests_total"         /* counter, api, errcode */
#define M_UPSTREAM_DURATION "orgsync_upstream_request_duration_seconds" /* histogram, api */
#define M_PACING_WAITS "orgsync_pacing_waits_total"               /* counter, labels corp? none */
#define M_PACING_WAIT_SECONDS "orgsync_pacing_wait_seconds_total" /* counter */
#define M_RETRIES "orgsync_retries_total"                         /* counter, labels api */
#define M_HTTP_REQUESTS "orgsync_http_requests_total"             /* counter, route, status */
#define M_HTTP_DURATION "orgsync_http_request_duration_seconds"   /* histogram, route */
#define M_PG_ERRORS "orgsync_pg_errors_total"                     /* counter */
#define M_REDIS_ERRORS "orgsync_redis_errors_total"               /* counter */
#define M_LOOKUPS "orgsync_lookups_total"                         /* counter, source */
#define M_DROPPED_SERIES "orgsync_metrics_dropped_series_total"   /* counter */
#define M_EGRESS_CALLS "orgsync_egress_calls"       /* gauge, labels window="60s"|"3600s" */
#define M_EGRESS_LIMIT "orgsync_egress_limit"       /* gauge, labels window */
#define M_EGRESS_WAITS "orgsync_egress_waits_total" /* counter */
#define M_ALERTS "orgsync_alerts_total"             /* counter, labels kind */
#define M_BUILD_INFO "orgsync_build_info"           /* gauge 1, labels version, commit, ... */
#define M_WORKER_INFO "orgsync_worker_info"         /* gauge 1, labels worker, orgsync_instance */
#define M_WORKERS_UP "orgsync_workers_up"           /* gauge: live workers of this host */
#define M_LAST_SUCCESS "orgsync_last_success_timestamp_seconds" /* gauge, labels env, corp_id? */
#define M_PROC_CPU "process_cpu_seconds_total"                  /* counter, labels worker */
#define M_PROC_RSS "process_resident_memory_bytes"              /* gauge, labels worker */
#define M_PROC_START "process_start_time_seconds"               /* gauge, labels worker */
#define M_PROC_FDS "process_open_fds"                           /* gauge, labels worker */
#define M_PROC_MAX_FDS "process_max_fds"                        /* gauge, labels worker */

/* Describes the well-known metrics above. */
void metrics_init(void);
/* Sets (or replaces) the TYPE and HELP lines of a metric. help is copied.
 * 0, or -ENOMEM / -EINVAL. */
int metrics_describe(const char *name, metric_type type, const char *help);

/* Adds v (>= 0) to a counter series, creating it at 0 first. */
void metrics_counter_add(const char *name, const char *labels, double v);
/* Sets a counter series to an absolute value (for counters kept elsewhere, e.g.
 * pg_pool_stats, copied in before rendering): the value restored by
 * metrics_restore, if any, plus v. */
void metrics_counter_set(const char *name, const char *labels, double v);
/* Sets a gauge series. */
void metrics_gauge_set(const char *name, const char *labels, double v);
/* Adds v (may be negative) to a gauge series. */
void metrics_gauge_add(const char *name, const char *labels, double v);
/* Records one observation (seconds) in a histogram with fixed buckets
 * 0.001 0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5 10 30 60 300 900 3600 +Inf. */
void metrics_observe(const char *name, const char *labels, double seconds);

/* Series as plain data: what a worker publishes for the host's aggregate
 * (common/metrics_host.h). */
#define METRICS_NBUCKETS 17
typedef struct metrics_sample {
    char name[METRICS_MAX_NAME];
    char labels[METRICS_MAX_LABELS];
    int type;     /* metric_type */
    double value; /* counter, gauge; histogram: sum */
    unsigned long long count;
    unsigned long long buckets[METRICS_NBUCKETS]; /* non-cumulative; +Inf is count */
} metrics_sample;

/* Copies at most max series of the registry into out (unordered); returns how
 * many were copied. */
size_t metrics_snapshot(metrics_sample *out, size_t max);
/* Makes the counters and histograms of in the registry's starting values (a
 * restarted worker continues its predecessor's counts, so that the host's sums
 * never go back). Gauges are ignored. A counter restored here keeps its
 * restored value as a base under metrics_counter_set, which then sets base + v. */
void metrics_restore(const metrics_sample *in, size_t n);
/* Renders n samples (sorted here, in place, by name then labels) with the
 * registry's TYPE and HELP lines, in the text format of metrics_render. Samples
 * with equal name and labels must have been merged by the caller. Caller frees;
 * NULL on out of memory. */
char *metrics_render_samples(metrics_sample *s, size_t n, size_t *len);
/* The described type of a metric; fallback when it was never described. */
metric_type metrics_type_of(const char *name, metric_type fallback);

/* A handle on one series, for a hot path that updates the same series again and
 * again (the HTTP metrics of every request): bound once by name and labels, then
 * updated with neither formatting nor hashing.
 *
 *   metrics_handle h = {0};
 *   if (!metrics_handle_live(&h))
 *       metrics_handle_bind(&h, M_HTTP_REQUESTS, labels, METRIC_COUNTER);
 *   metrics_handle_add(&h, 1);
 *
 * metrics_reset is the only call that frees series: it starts a new generation,
 * and a handle bound in an earlier one is no longer live, so that it is never
 * followed to a freed series (updating through it does nothing; bind it again).
 * A zeroed handle is not live. Same single-thread rule as the registry. */
typedef struct metrics_handle {
    void *series;           /* the registry's; NULL when the series could not be made */
    unsigned long long gen; /* the registry's generation when bound */
} metrics_handle;

/* Binds h to the series (name, labels), creating it with type when absent, as
 * metrics_counter_add or metrics_observe would; a series that cannot be made
 * (table full, bad name) is counted as dropped as they count it. 0, or -1 with h
 * not live. A histogram handle binds only to a histogram series. */
int metrics_handle_bind(metrics_handle *h, const char *name, const char *labels, metric_type type);
/* 1 if h is bound to a series of the registry's current generation. */
int metrics_handle_live(const metrics_handle *h);
/* metrics_counter_add and metrics_observe through a handle; nothing if it is not
 * live. */
void metrics_handle_add(const metrics_handle *h, double v);
void metrics_handle_observe(const metrics_handle *h, double seconds);

/* Current value of a counter or gauge series (tests); 0 if absent. */
double metrics_value(const char *name, const char *labels);

/* The whole registry as Prometheus text exposition format 0.0.4, metrics
 * sorted by name. Caller frees. NULL on out of memory. */
char *metrics_render(size_t *len);

/* Forgets every series and description (tests, and at exit for leak checks). */
void metrics_reset(void);

#endif
