/* The host's aggregate of its workers' metrics (see metrics_host.h): a shared
 * anonymous mapping of one double-buffered slot per worker, and the merge. */
#include "common/metrics_host.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define READ_TRIES 8

typedef struct host_slot {
    _Atomic uint64_t gen; /* publications completed; buf[gen & 1] is the last, 0: none */
    _Atomic int pid;      /* of the worker that attached last; 0: never */
    _Atomic int live;     /* attached and not yet reaped */
    uint32_t n[2];
    metrics_sample buf[2][METRICS_HOST_MAX_SERIES];
} host_slot;

static host_slot *slots; /* [0 .. nslots-1] is worker 1 .. nslots */
static size_t nslots, map_len;
static int self_id;

int metrics_host_init(int workers)
{
    void *p;

    if (workers < 1 || slots)
        return -EINVAL;
    map_len = (size_t)workers * sizeof(host_slot);
    /* Pages are only touched as far as a worker's registry reaches. */
    p = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1,
             0);
    if (p == MAP_FAILED)
        return -errno;
    slots = p;
    nslots = (size_t)workers;
    return 0;
}

void metrics_host_shutdown(void)
{
    if (slots)
        munmap(slots, map_len);
    slots = NULL;
    nslots = 0;
    self_id = 0;
}

static host_slot *slot_of(int worker_id)
{
    if (!slots || worker_id < 1 || (size_t)worker_id > nslots)
        return NULL;
    return &slots[worker_id - 1];
}

void metrics_host_exited(int worker_id)
{
    host_slot *s = slot_of(worker_id);
    if (s)
        atomic_store_explicit(&s->live, 0, memory_order_release);
}

/* A consistent copy of the slot's last publication into out (capacity
 * METRICS_HOST_MAX_SERIES); how many samples, 0 when none or when the writer
 * kept publishing through every try. */
static size_t read_slot(host_slot *s, metrics_sample *out)
{
    for (int t = 0; t < READ_TRIES; t++) {
        uint64_t g1 = atomic_load_explicit(&s->gen, memory_order_acquire), g2;
        size_t n;
        if (g1 == 0)
            return 0;
        n = s->n[g1 & 1];
        if (n > METRICS_HOST_MAX_SERIES)
            n = METRICS_HOST_MAX_SERIES;
        memcpy(out, s->buf[g1 & 1], n * sizeof(*out));
        atomic_thread_fence(memory_order_acquire);
        g2 = atomic_load_explicit(&s->gen, memory_order_relaxed);
        if (g1 == g2)
            return n;
    }
    return 0;
}

void metrics_host_publish(void)
{
    host_slot *s = slot_of(self_id);
    uint64_t g;
    unsigned idx;

    if (!s)
        return;
    g = atomic_load_explicit(&s->gen, memory_order_relaxed);
    idx = (unsigned)((g + 1) & 1);
    /* The previous publication's generation must be visible before this one
     * overwrites the other buffer (a reader of that buffer then retries). */
    atomic_thread_fence(memory_order_seq_cst);
    s->n[idx] = (uint32_t)metrics_snapshot(s->buf[idx], METRICS_HOST_MAX_SERIES);
    atomic_store_explicit(&s->gen, g + 1, memory_order_release);
}

void metrics_host_attach(int worker_id)
{
    host_slot *s;
    metrics_sample *prev;
    size_t n;

    self_id = worker_id;
    s = slot_of(worker_id);
    if (!s)
        return;
    prev = malloc(METRICS_HOST_MAX_SERIES * sizeof(*prev));
    if (prev) {
        /* this worker is the slot's only writer from now on: no retry needed,
         * but the same reader keeps it simple */
        n = read_slot(s, prev);
        metrics_restore(prev, n);
        free(prev);
    }
    atomic_store_explicit(&s->pid, (int)getpid(), memory_order_relaxed);
    metrics_host_publish();
    atomic_store_explicit(&s->live, 1, memory_order_release);
}

/* ---- the merge --------------------------------------------------------- */

typedef enum { AGG_SUM, AGG_MAX, AGG_PER_WORKER } agg_rule;

static agg_rule rule_of(const char *name)
{
    if (!strncmp(name, "process_", 8) || !strcmp(name, M_WORKER_INFO))
        return AGG_PER_WORKER;
    if (!strcmp(name, M_LOCK_HELD) || !strcmp(name, M_EGRESS_CALLS) ||
        !strcmp(name, M_EGRESS_LIMIT))
        return AGG_MAX;
    return AGG_SUM;
}

typedef struct acc {
    metrics_sample *v;
    size_t n, cap;
} acc;

static int acc_push(acc *a, const metrics_sample *m)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 256;
        metrics_sample *v = realloc(a->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = *m;
    return 0;
}

/* Adds one worker's samples under the rules above. */
static int add_worker(acc *a, const metrics_sample *in, size_t n, int worker_id, int live)
{
    for (size_t i = 0; i < n; i++) {
        metrics_sample m = in[i];
        agg_rule r;
        m.name[sizeof(m.name) - 1] = '\0';
        m.labels[sizeof(m.labels) - 1] = '\0';
        r = rule_of(m.name);
        if (m.type == METRIC_GAUGE && !live)
            continue;
        if (r == AGG_PER_WORKER) {
            char labels[METRICS_MAX_LABELS];
            int len = snprintf(labels, sizeof labels, "worker=\"%d\"%s%s", worker_id,
                               m.labels[0] ? "," : "", m.labels);
            if (len < 0 || (size_t)len >= sizeof labels)
                continue;
            memcpy(m.labels, labels, sizeof labels);
        }
        if (acc_push(a, &m))
            return -ENOMEM;
    }
    return 0;
}

static int cmp_key(const void *x, const void *y)
{
    const metrics_sample *a = x, *b = y;
    int c = strcmp(a->name, b->name);
    return c ? c : strcmp(a->labels, b->labels);
}

/* Folds samples of equal name and labels into the first one. */
static size_t merge(metrics_sample *v, size_t n)
{
    size_t out = 0;

    qsort(v, n, sizeof(*v), cmp_key);
    for (size_t i = 0; i < n; i++) {
        metrics_sample *d = out ? &v[out - 1] : NULL;
        if (!d || cmp_key(d, &v[i]) != 0) {
            v[out++] = v[i];
            continue;
        }
        if (d->type != v[i].type) /* one name, two types: keep the first */
            continue;
        if (d->type == METRIC_GAUGE && rule_of(d->name) == AGG_MAX) {
            if (v[i].value > d->value)
                d->value = v[i].value;
            continue;
        }
        d->value += v[i].value;
        d->count += v[i].count;
        for (size_t b = 0; b < METRICS_NBUCKETS; b++)
            d->buckets[b] += v[i].buckets[b];
    }
    return out;
}

char *metrics_host_render(const metrics_sample *extra, size_t n_extra, size_t *len)
{
    acc a = {0};
    metrics_sample *tmp = malloc(METRICS_HOST_MAX_SERIES * sizeof(*tmp)), up = {0};
    char *out = NULL;
    int live_workers = 0, err = 0;
    size_t n;

    if (!tmp)
        return NULL;
    if (!slots) {
        n = metrics_snapshot(tmp, METRICS_HOST_MAX_SERIES);
        err = add_worker(&a, tmp, n, self_id, 1);
        live_workers = 1;
    } else {
        metrics_host_publish();
        for (size_t i = 0; i < nslots && !err; i++) {
            int live = atomic_load_explicit(&slots[i].live, memory_order_acquire);
            n = read_slot(&slots[i], tmp);
            live_workers += live;
            err = add_worker(&a, tmp, n, (int)i + 1, live);
        }
    }
    snprintf(up.name, sizeof up.name, "%s", M_WORKERS_UP);
    up.type = METRIC_GAUGE;
    up.value = live_workers;
    if (!err)
        err = acc_push(&a, &up);
    for (size_t i = 0; i < n_extra && !err; i++)
        err = acc_push(&a, &extra[i]);
    if (!err) {
        n = merge(a.v, a.n);
        out = metrics_render_samples(a.v, n, len);
    }
    free(a.v);
    free(tmp);
    return out;
}
