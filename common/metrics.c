/* Per-process metrics registry. A fixed open-addressing table of series keyed by
 * (name, labels): bounded memory whatever the callers pass, no locking (one loop
 * thread per process). Rendering sorts by name so the output is stable and each
 * metric's TYPE/HELP lines come once, right before its series. */
#include "common/metrics.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"

#define TABLE_SIZE (METRICS_MAX_SERIES * 2) /* load factor at most 1/2 */
#define MAX_DESCS 128

static const double bucket_bounds[METRICS_NBUCKETS] = {
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600};
#define NBUCKETS METRICS_NBUCKETS

typedef struct series {
    char name[METRICS_MAX_NAME];
    char labels[METRICS_MAX_LABELS];
    metric_type type;
    double value; /* counter, gauge; histogram: sum */
    double base;  /* counter: the value metrics_restore gave it */
    uint64_t count;
    uint64_t buckets[NBUCKETS]; /* non-cumulative; +Inf is count */
} series;

typedef struct desc {
    char name[METRICS_MAX_NAME];
    metric_type type;
    char *help;
} desc;

static series *table[TABLE_SIZE];
static size_t nseries;
static desc descs[MAX_DESCS];
static size_t ndescs;
static double dropped;
/* Bumped by metrics_reset, which frees every series: a handle of an older
 * generation points at freed memory and is not live (metrics.h). Starts at 1 so
 * that a zeroed handle is never live. */
static unsigned long long generation = 1;

static uint64_t fnv1a(const char *name, const char *labels)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    h = (h ^ 0xff) * 1099511628211ULL; /* separator: ("ab","c") != ("a","bc") */
    for (const char *p = labels; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return h;
}

static int valid_name(const char *name)
{
    if (!name || !*name || strlen(name) >= METRICS_MAX_NAME)
        return 0;
    for (const char *p = name; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
              (p != name && c >= '0' && c <= '9')))
            return 0;
    }
    return 1;
}

static desc *find_desc(const char *name)
{
    for (size_t i = 0; i < ndescs; i++)
        if (strcmp(descs[i].name, name) == 0)
            return &descs[i];
    return NULL;
}

/* The series for (name, labels), created with the given type when absent; NULL
 * when the arguments are unusable or the table is full (counted as dropped). */
static series *lookup(const char *name, const char *labels, metric_type type, int create)
{
    if (!labels)
        labels = "";
    if (!valid_name(name) || strlen(labels) >= METRICS_MAX_LABELS)
        goto drop;
    size_t i = (size_t)(fnv1a(name, labels) % TABLE_SIZE);
    for (;;) {
        series *s = table[i];
        if (!s)
            break;
        if (strcmp(s->name, name) == 0 && strcmp(s->labels, labels) == 0)
            return s;
        i = (i + 1) % TABLE_SIZE;
    }
    if (!create)
        return NULL;
    /* The drop counter itself always gets its slot, so a full table can say so. */
    if (nseries >= METRICS_MAX_SERIES && strcmp(name, M_DROPPED_SERIES) != 0)
        goto drop;
    series *s = calloc(1, sizeof(*s));
    if (!s)
        goto drop;
    strcpy(s->name, name);
    strcpy(s->labels, labels);
    s->type = type;
    table[i] = s;
    nseries++;
    return s;
drop:
    if (create)
        dropped += 1;
    return NULL;
}

void metrics_init(void)
{
    static const struct {
        const char *name;
        metric_type type;
        const char *help;
    } known[] = {
        {M_LOCK_HELD, METRIC_GAUGE, "1 while a worker of this host holds the leader lock"},
        {M_LEADER_CHANGES, METRIC_COUNTER,
         "Leadership acquisitions and losses seen by the workers of this host"},
        {M_RUNS, METRIC_GAUGE, "Runs of this environment by state (from PostgreSQL)"},
        {M_RUN_DURATION, METRIC_HISTOGRAM, "Duration of runs led by a worker of this host"},
        {M_DEPARTMENTS_SYNCED, METRIC_COUNTER, "Departments synced by the workers of this host"},
        {M_DEPARTMENTS_UNCHANGED, METRIC_COUNTER,
         "Departments whose answer equalled their last one: no member written (sql/008)"},
        {M_MEMBERS_SYNCED, METRIC_COUNTER,
         "Members written by the workers of this host (new, changed or restored)"},
        {M_UPSTREAM_REQUESTS, METRIC_COUNTER, "Upstream requests by API and errcode"},
        {M_UPSTREAM_DURATION, METRIC_HISTOGRAM, "Upstream request latency by API"},
        {M_PACING_WAITS, METRIC_COUNTER, "Upstream requests that waited for a pacing slot"},
        {M_PACING_WAIT_SECONDS, METRIC_COUNTER, "Total time spent waiting for pacing slots"},
        {M_RETRIES, METRIC_COUNTER, "Upstream retries by API"},
        {M_HTTP_REQUESTS, METRIC_COUNTER, "HTTP API requests by route and status"},
        {M_HTTP_DURATION, METRIC_HISTOGRAM, "HTTP API latency by route"},
        {M_PG_ERRORS, METRIC_COUNTER, "PostgreSQL errors (queries failed, timeouts)"},
        {M_REDIS_ERRORS, METRIC_COUNTER, "Redis errors (error replies, transport failures)"},
        {M_LOOKUPS, METRIC_COUNTER, "Realtime lookups by outcome"},
        {M_DROPPED_SERIES, METRIC_COUNTER, "Series not recorded because the registry was full"},
        {M_EGRESS_CALLS, METRIC_GAUGE,
         "Upstream calls counted for this egress IP in the window ending at the last "
         "admission (every process sharing the egress id)"},
        {M_EGRESS_LIMIT, METRIC_GAUGE, "The per-egress-IP cap of upstream calls by window"},
        {M_EGRESS_WAITS, METRIC_COUNTER,
         "Upstream calls of this host that had to wait for the per-egress-IP cap"},
        {M_ALERTS, METRIC_COUNTER, "Operator alerts raised on this host, by kind"},
        {M_BUILD_INFO, METRIC_GAUGE, "The orgsync build this host runs (always 1)"},
        {M_WORKER_INFO, METRIC_GAUGE, "One series per live worker of this host (always 1)"},
        {M_WORKERS_UP, METRIC_GAUGE, "Live workers of this host"},
        {M_LAST_SUCCESS, METRIC_GAUGE,
         "Unix time of the last succeeded run of this environment, and per enabled "
         "enterprise the last run that synced it (0: never), from PostgreSQL"},
        {M_PROC_CPU, METRIC_COUNTER, "User and system CPU time of the worker process"},
        {M_PROC_RSS, METRIC_GAUGE, "Resident memory of the worker process"},
        {M_PROC_START, METRIC_GAUGE, "Start time of the worker process since the Unix epoch"},
        {M_PROC_FDS, METRIC_GAUGE, "Open file descriptors of the worker process"},
        {M_PROC_MAX_FDS, METRIC_GAUGE, "File descriptor limit of the worker process"},
    };
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        metrics_describe(known[i].name, known[i].type, known[i].help);
}

int metrics_describe(const char *name, metric_type type, const char *help)
{
    if (!valid_name(name) || !help)
        return -EINVAL;
    char *h = strdup(help);
    if (!h)
        return -ENOMEM;
    desc *d = find_desc(name);
    if (!d) {
        if (ndescs >= MAX_DESCS) {
            free(h);
            return -ENOMEM;
        }
        d = &descs[ndescs++];
        strcpy(d->name, name);
    } else {
        free(d->help);
    }
    d->type = type;
    d->help = h;
    return 0;
}

void metrics_counter_add(const char *name, const char *labels, double v)
{
    if (!(v >= 0)) /* also refuses NaN: a counter never goes down */
        return;
    series *s = lookup(name, labels, METRIC_COUNTER, 1);
    if (s)
        s->value += v;
}

void metrics_counter_set(const char *name, const char *labels, double v)
{
    series *s = lookup(name, labels, METRIC_COUNTER, 1);
    if (s)
        s->value = s->base + v;
}

void metrics_gauge_set(const char *name, const char *labels, double v)
{
    series *s = lookup(name, labels, METRIC_GAUGE, 1);
    if (s)
        s->value = v;
}

void metrics_gauge_add(const char *name, const char *labels, double v)
{
    series *s = lookup(name, labels, METRIC_GAUGE, 1);
    if (s)
        s->value += v;
}

static void observe_series(series *s, double seconds)
{
    for (size_t i = 0; i < NBUCKETS; i++) {
        if (seconds <= bucket_bounds[i]) {
            s->buckets[i]++;
            break;
        }
    }
    s->count++;
    s->value += seconds;
}

void metrics_observe(const char *name, const char *labels, double seconds)
{
    if (isnan(seconds))
        return;
    series *s = lookup(name, labels, METRIC_HISTOGRAM, 1);
    if (s && s->type == METRIC_HISTOGRAM)
        observe_series(s, seconds);
}

int metrics_handle_bind(metrics_handle *h, const char *name, const char *labels, metric_type type)
{
    series *s = lookup(name, labels, type, 1);
    if (s && type == METRIC_HISTOGRAM && s->type != METRIC_HISTOGRAM)
        s = NULL; /* what metrics_observe would ignore */
    h->series = s;
    h->gen = generation;
    return s ? 0 : -1;
}

int metrics_handle_live(const metrics_handle *h)
{
    return h->series && h->gen == generation;
}

void metrics_handle_add(const metrics_handle *h, double v)
{
    if (v >= 0 && metrics_handle_live(h))
        ((series *)h->series)->value += v;
}

void metrics_handle_observe(const metrics_handle *h, double seconds)
{
    if (!isnan(seconds) && metrics_handle_live(h))
        observe_series(h->series, seconds);
}

double metrics_value(const char *name, const char *labels)
{
    series *s = lookup(name, labels, METRIC_COUNTER, 0);
    if (!s)
        return 0;
    return s->type == METRIC_HISTOGRAM ? (double)s->count : s->value;
}

static int cmp_sample(const void *a, const void *b)
{
    const metrics_sample *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : strcmp(x->labels, y->labels);
}

static const char *type_name(metric_type t)
{
    switch (t) {
    case METRIC_COUNTER:
        return "counter";
    case METRIC_GAUGE:
        return "gauge";
    case METRIC_HISTOGRAM:
        return "histogram";
    }
    return "untyped";
}

/* Prometheus wants +Inf/-Inf/NaN spelled out; %.17g keeps doubles exact. */
static void put_value(buf *b, double v)
{
    if (isnan(v))
        buf_puts(b, "NaN");
    else if (isinf(v))
        buf_puts(b, v > 0 ? "+Inf" : "-Inf");
    else if (v == (double)(long long)v && fabs(v) < 1e15)
        buf_printf(b, "%lld", (long long)v);
    else
        buf_printf(b, "%.17g", v);
}

static void put_header(buf *b, const char *name, metric_type fallback)
{
    desc *d = find_desc(name);
    if (d) {
        buf_printf(b, "# HELP %s ", name);
        for (const char *p = d->help; *p; p++) { /* HELP escapes \ and newline */
            if (*p == '\\')
                buf_puts(b, "\\\\");
            else if (*p == '\n')
                buf_puts(b, "\\n");
            else
                buf_append(b, p, 1);
        }
        buf_printf(b, "\n# TYPE %s %s\n", name, type_name(d->type));
    } else {
        buf_printf(b, "# TYPE %s %s\n", name, type_name(fallback));
    }
}

static void put_histogram(buf *b, const metrics_sample *s)
{
    const char *sep = s->labels[0] ? "," : "";
    unsigned long long cum = 0;
    for (size_t i = 0; i < NBUCKETS; i++) {
        cum += s->buckets[i];
        buf_printf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", s->name, s->labels, sep, bucket_bounds[i],
                   cum);
    }
    buf_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", s->name, s->labels, sep, s->count);
    if (s->labels[0])
        buf_printf(b, "%s_sum{%s} ", s->name, s->labels);
    else
        buf_printf(b, "%s_sum ", s->name);
    put_value(b, s->value);
    if (s->labels[0])
        buf_printf(b, "\n%s_count{%s} %llu\n", s->name, s->labels, s->count);
    else
        buf_printf(b, "\n%s_count %llu\n", s->name, s->count);
}

static void to_sample(const series *s, metrics_sample *m)
{
    memcpy(m->name, s->name, sizeof(m->name));
    memcpy(m->labels, s->labels, sizeof(m->labels));
    m->type = (int)s->type;
    m->value = s->value;
    m->count = s->count;
    for (size_t i = 0; i < NBUCKETS; i++)
        m->buckets[i] = s->buckets[i];
}

size_t metrics_snapshot(metrics_sample *out, size_t max)
{
    size_t n = 0;
    if (dropped > 0)
        metrics_counter_set(M_DROPPED_SERIES, NULL, dropped);
    for (size_t i = 0; i < TABLE_SIZE && n < max; i++)
        if (table[i])
            to_sample(table[i], &out[n++]);
    return n;
}

void metrics_restore(const metrics_sample *in, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const metrics_sample *m = &in[i];
        char name[METRICS_MAX_NAME], labels[METRICS_MAX_LABELS];
        series *s;
        if (m->type != METRIC_COUNTER && m->type != METRIC_HISTOGRAM)
            continue;
        /* the sample comes from shared memory: never trust its terminators */
        snprintf(name, sizeof name, "%.*s", (int)sizeof(m->name) - 1, m->name);
        snprintf(labels, sizeof labels, "%.*s", (int)sizeof(m->labels) - 1, m->labels);
        s = lookup(name, labels, (metric_type)m->type, 1);
        if (!s || s->type != (metric_type)m->type || !(m->value >= 0))
            continue;
        s->value = m->value;
        if (s->type == METRIC_COUNTER) {
            s->base = m->value;
            continue;
        }
        s->count = m->count;
        for (size_t b = 0; b < NBUCKETS; b++)
            s->buckets[b] = m->buckets[b];
    }
}

metric_type metrics_type_of(const char *name, metric_type fallback)
{
    desc *d = find_desc(name);
    return d ? d->type : fallback;
}

char *metrics_render_samples(metrics_sample *all, size_t n, size_t *len)
{
    buf b;
    char *out = NULL;

    buf_init(&b);
    qsort(all, n, sizeof(*all), cmp_sample);
    for (size_t i = 0; i < n; i++) {
        metrics_sample *s = &all[i];
        if (i == 0 || strcmp(all[i - 1].name, s->name) != 0)
            put_header(&b, s->name, (metric_type)s->type);
        if (s->type == METRIC_HISTOGRAM) {
            put_histogram(&b, s);
            continue;
        }
        if (s->labels[0])
            buf_printf(&b, "%s{%s} ", s->name, s->labels);
        else
            buf_printf(&b, "%s ", s->name);
        put_value(&b, s->value);
        buf_puts(&b, "\n");
    }
    if (!b.oom)
        out = buf_detach(&b, len);
    buf_free(&b);
    return out;
}

char *metrics_render(size_t *len)
{
    metrics_sample *all = malloc((nseries + 1) * sizeof(*all));
    char *out;
    size_t n;

    if (!all)
        return NULL;
    n = metrics_snapshot(all, nseries + 1);
    out = metrics_render_samples(all, n, len);
    free(all);
    return out;
}

void metrics_reset(void)
{
    for (size_t i = 0; i < TABLE_SIZE; i++) {
        free(table[i]);
        table[i] = NULL;
    }
    nseries = 0;
    for (size_t i = 0; i < ndescs; i++)
        free(descs[i].help);
    ndescs = 0;
    dropped = 0;
    generation++; /* every handle bound until now points at freed series */
}
