/* Evidence for tests: what each enterprise, each listening port (one client each),
 * each source address (one simulated host each), and each (port, enterprise) and
 * (enterprise, address) pair asked for, how fast, and what it got back.
 *
 * max_1s and max_60s are exact: the most arrivals in any window is reached by a
 * window ending at some arrival, and every arrival measures the window ending at it.
 * max_3600s counts whole seconds (the arrival's second and the 3599 before it). */
#include "tests/sim/sim.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/timeutil.h"

static void counters_init(sim_counters *c)
{
    memset(c, 0, sizeof(*c));
    sim_window_init(&c->win);
}

static void counters_free(sim_counters *c)
{
    sim_window_free(&c->win);
    free(c->ul_calls);
    free(c->ul_ok);
    c->ul_calls = c->ul_ok = NULL;
    c->ul_cap = 0;
}

static void counters_reset(sim_counters *c)
{
    sim_window w = c->win;
    uint32_t *calls = c->ul_calls, *ok = c->ul_ok;
    int cap = c->ul_cap;
    uint32_t inflight = c->inflight;
    sim_window_clear(&w);
    if (cap) {
        memset(calls, 0, (size_t)cap * sizeof(*calls));
        memset(ok, 0, (size_t)cap * sizeof(*ok));
    }
    memset(c, 0, sizeof(*c));
    c->win = w;
    c->ul_calls = calls;
    c->ul_ok = ok;
    c->ul_cap = cap;
    c->inflight = c->max_inflight = inflight;
}

int sim_stats_init(sim_stats *st, int ncorps, const int *ports, int nports, uint64_t now_us)
{
    memset(st, 0, sizeof(*st));
    sim_map_init(&st->ip_index);
    if (nports < 0 || nports > SIM_MAX_PORTS)
        return -EINVAL;
    st->ncorps = ncorps;
    st->nports = nports;
    memcpy(st->ports, ports, (size_t)nports * sizeof(int));
    st->start_mono_us = now_us;
    st->start_wall_ms = time_wall_ms();
    counters_init(&st->total);
    st->corp = calloc((size_t)ncorps, sizeof(*st->corp));
    st->port = calloc((size_t)(nports ? nports : 1), sizeof(*st->port));
    st->port_corp = calloc((size_t)(nports ? nports : 1) * (size_t)ncorps, sizeof(*st->port_corp));
    st->corp_ip = calloc((size_t)ncorps, sizeof(*st->corp_ip));
    st->ncorp_ip = calloc((size_t)ncorps, sizeof(*st->ncorp_ip));
    if (!st->corp || !st->port || !st->port_corp || !st->corp_ip || !st->ncorp_ip) {
        sim_stats_free(st);
        return -ENOMEM;
    }
    /* calloc already gave empty windows: an all-zero sim_counters is initialised. */
    return 0;
}

void sim_stats_free(sim_stats *st)
{
    counters_free(&st->total);
    for (int i = 0; st->corp && i < st->ncorps; i++)
        counters_free(&st->corp[i]);
    for (int i = 0; st->port && i < st->nports; i++)
        counters_free(&st->port[i]);
    for (int i = 0; st->port_corp && i < st->nports * st->ncorps; i++)
        counters_free(&st->port_corp[i]);
    for (int i = 0; st->corp_ip && i < st->ncorps; i++) {
        for (int j = 0; j < st->ncorp_ip[i]; j++)
            counters_free(&st->corp_ip[i][j]);
        free(st->corp_ip[i]);
    }
    for (int i = 0; i < st->nips; i++) {
        counters_free(&st->ips[i].c);
        sim_window_free(&st->ips[i].minute);
        sim_buckets_free(&st->ips[i].hour);
    }
    free(st->corp);
    free(st->port);
    free(st->port_corp);
    free(st->corp_ip);
    free(st->ncorp_ip);
    free(st->ips);
    sim_map_free(&st->ip_index);
    memset(st, 0, sizeof(*st));
}

int sim_stats_port_index(const sim_stats *st, int port)
{
    for (int i = 0; i < st->nports; i++)
        if (st->ports[i] == port)
            return i;
    return -1;
}

static void count_code(sim_counters *c, int code)
{
    for (int i = 0; i < c->ncodes; i++) {
        if (c->codes[i].code == code) {
            c->codes[i].n++;
            return;
        }
    }
    if (c->ncodes < SIM_MAX_CODES) {
        c->codes[c->ncodes].code = code;
        c->codes[c->ncodes++].n = 1;
    }
}

static int ensure_dept(sim_counters *c, int dept)
{
    if (dept < c->ul_cap)
        return 0;
    int ncap = c->ul_cap ? c->ul_cap : 64;
    while (ncap <= dept)
        ncap *= 2;
    uint32_t *calls = realloc(c->ul_calls, (size_t)ncap * sizeof(*calls));
    if (!calls)
        return -ENOMEM;
    c->ul_calls = calls;
    uint32_t *ok = realloc(c->ul_ok, (size_t)ncap * sizeof(*ok));
    if (!ok)
        return -ENOMEM;
    c->ul_ok = ok;
    memset(calls + c->ul_cap, 0, (size_t)(ncap - c->ul_cap) * sizeof(*calls));
    memset(ok + c->ul_cap, 0, (size_t)(ncap - c->ul_cap) * sizeof(*ok));
    c->ul_cap = ncap;
    return 0;
}

/* Index of a source address in st->ips, added on first sight; -1 for none or no memory. */
static int ip_slot(sim_stats *st, const char *ip)
{
    int64_t idx;
    if (!ip || !*ip)
        return -1;
    if (sim_map_get(&st->ip_index, ip, &idx))
        return (int)idx;
    if (st->nips == st->ipcap) {
        int ncap = st->ipcap ? st->ipcap * 2 : 8;
        sim_ipstats *n = realloc(st->ips, (size_t)ncap * sizeof(*n));
        if (!n)
            return -1;
        st->ips = n;
        st->ipcap = ncap;
    }
    if (sim_map_put(&st->ip_index, ip, st->nips) != 0)
        return -1;
    sim_ipstats *e = &st->ips[st->nips];
    memset(e, 0, sizeof(*e));
    snprintf(e->ip, sizeof(e->ip), "%s", ip);
    counters_init(&e->c);
    sim_window_init_span(&e->minute, 60000000ULL);
    return st->nips++;
}

/* The counters of (corp, address), grown to the addresses known; NULL without memory. */
static sim_counters *corp_ip_counters(sim_stats *st, int corp, int ip)
{
    if (ip >= st->ncorp_ip[corp]) {
        sim_counters *n = realloc(st->corp_ip[corp], (size_t)st->nips * sizeof(*n));
        if (!n)
            return NULL;
        for (int j = st->ncorp_ip[corp]; j < st->nips; j++)
            counters_init(&n[j]);
        st->corp_ip[corp] = n;
        st->ncorp_ip[corp] = st->nips;
    }
    return &st->corp_ip[corp][ip];
}

static void counters_hit(sim_counters *c, const sim_hit *h, uint64_t now_us)
{
    uint32_t n = 0;
    c->requests++;
    c->by_path[h->path]++;
    sim_window_arrive(&c->win, now_us, UINT32_MAX, 1, &n);
    if (n > c->max_1s)
        c->max_1s = n;
    if (!c->first_us)
        c->first_us = now_us;
    c->last_us = now_us;
    c->violations += (uint64_t)(h->violation != 0);
    c->inflight_violations += (uint64_t)(h->inflight_violation != 0);
    c->tokens_issued += (uint64_t)(h->token_issued != 0);
    c->ip_violations += (uint64_t)(h->ip_violation != 0);
    c->forbidden += (uint64_t)(h->forbidden != 0);
    c->no_privilege += (uint64_t)(h->no_privilege != 0);
    c->untrusted_ip += (uint64_t)(h->untrusted_ip != 0);
    if (h->fault != SIM_F_NONE)
        c->faults[h->fault]++;
    if (h->errcode != SIM_NO_CODE)
        count_code(c, h->errcode);
    if (h->path == SIM_P_USER_LIST && h->dept > 0 && ensure_dept(c, h->dept) == 0) {
        c->ul_calls[h->dept]++;
        if (h->errcode == 0 && h->fault == SIM_F_NONE)
            c->ul_ok[h->dept]++;
    }
}

void sim_stats_record(sim_stats *st, const sim_hit *h, uint64_t now_us)
{
    counters_hit(&st->total, h, now_us);
    if (h->port >= 0)
        counters_hit(&st->port[h->port], h, now_us);
    if (h->corp >= 0)
        counters_hit(&st->corp[h->corp], h, now_us);
    if (h->port >= 0 && h->corp >= 0)
        counters_hit(&st->port_corp[h->port * st->ncorps + h->corp], h, now_us);
    int ip = ip_slot(st, h->ip);
    if (ip < 0)
        return;
    sim_ipstats *e = &st->ips[ip];
    counters_hit(&e->c, h, now_us);
    sim_window_count(&e->minute, now_us, 1); /* drops what left the minute */
    if (sim_window_push(&e->minute, now_us, 1) == 0 && e->minute.len > e->max_60s)
        e->max_60s = (uint32_t)e->minute.len;
    if (sim_buckets_push(&e->hour, now_us, 1) == 0 && e->hour.n_all > e->max_3600s)
        e->max_3600s = e->hour.n_all;
    if (h->corp >= 0) {
        sim_counters *ci = corp_ip_counters(st, h->corp, ip);
        if (ci)
            counters_hit(ci, h, now_us);
    }
}

static void counters_inflight(sim_counters *c, int delta)
{
    if (delta < 0 && c->inflight == 0)
        return; /* a reset in between: never wrap */
    c->inflight = (uint32_t)((int64_t)c->inflight + delta);
    if (c->inflight > c->max_inflight)
        c->max_inflight = c->inflight;
}

void sim_stats_inflight(sim_stats *st, int port, int corp, int delta)
{
    sim_stats_inflight_ip(st, port, corp, NULL, delta);
}

void sim_stats_inflight_ip(sim_stats *st, int port, int corp, const char *ip, int delta)
{
    counters_inflight(&st->total, delta);
    if (port >= 0)
        counters_inflight(&st->port[port], delta);
    if (corp >= 0)
        counters_inflight(&st->corp[corp], delta);
    if (port >= 0 && corp >= 0)
        counters_inflight(&st->port_corp[port * st->ncorps + corp], delta);
    int i = ip_slot(st, ip);
    if (i < 0)
        return;
    counters_inflight(&st->ips[i].c, delta);
    if (corp >= 0) {
        sim_counters *ci = corp_ip_counters(st, corp, i);
        if (ci)
            counters_inflight(ci, delta);
    }
}

void sim_stats_reset(sim_stats *st)
{
    counters_reset(&st->total);
    for (int i = 0; i < st->ncorps; i++)
        counters_reset(&st->corp[i]);
    for (int i = 0; i < st->nports; i++)
        counters_reset(&st->port[i]);
    for (int i = 0; i < st->nports * st->ncorps; i++)
        counters_reset(&st->port_corp[i]);
    for (int i = 0; i < st->ncorps; i++)
        for (int j = 0; j < st->ncorp_ip[i]; j++)
            counters_reset(&st->corp_ip[i][j]);
    for (int i = 0; i < st->nips; i++) {
        sim_ipstats *e = &st->ips[i];
        counters_reset(&e->c);
        sim_window_clear(&e->minute);
        sim_buckets_clear(&e->hour);
        e->max_60s = 0;
        e->max_3600s = 0;
    }
}

void sim_counters_refetches(const sim_counters *c, uint64_t *calls_gt1, uint64_t *ok_gt1)
{
    *calls_gt1 = *ok_gt1 = 0;
    for (int i = 0; i < c->ul_cap; i++) {
        *calls_gt1 += c->ul_calls[i] > 1;
        *ok_gt1 += c->ul_ok[i] > 1;
    }
}

static void write_time(jw *w, const sim_stats *st, const char *key, uint64_t us)
{
    char ts[32], kms[48];
    snprintf(kms, sizeof(kms), "%s_ms", key);
    if (!us) {
        jw_knull(w, key);
        jw_knull(w, kms);
        return;
    }
    uint64_t since_ms = (us - st->start_mono_us) / 1000;
    uint64_t wall = st->start_wall_ms + since_ms;
    time_rfc3339((time_t)(wall / 1000), (int)(wall % 1000), ts);
    jw_kstr(w, key, ts);
    /* Milliseconds since the simulator started: easy arithmetic for tests. */
    jw_kdbl(w, kms, (double)(us - st->start_mono_us) / 1000.0);
}

static void write_dept_counts(jw *w, const char *key, const uint32_t *v, int n)
{
    char k[16];
    jw_key(w, key);
    jw_obj_begin(w);
    for (int i = 0; i < n; i++) {
        if (!v[i])
            continue;
        snprintf(k, sizeof(k), "%d", i);
        jw_kint(w, k, v[i]);
    }
    jw_obj_end(w);
}

/* The counters' keys, into an open object. */
static void write_counters(jw *w, const sim_stats *st, const sim_counters *c)
{
    char k[16];
    uint64_t refetched, refetched_ok, fetched = 0;
    jw_kint(w, "requests", (long long)c->requests);
    jw_key(w, "by_path");
    jw_obj_begin(w);
    for (int p = 0; p < SIM_P_COUNT; p++)
        jw_kint(w, sim_path_names[p], (long long)c->by_path[p]);
    jw_obj_end(w);
    jw_kint(w, "max_1s", c->max_1s);
    jw_kint(w, "violations", (long long)c->violations);
    jw_kint(w, "inflight_violations", (long long)c->inflight_violations);
    jw_kint(w, "tokens_issued", (long long)c->tokens_issued);
    jw_kint(w, "ip_violations", (long long)c->ip_violations);
    jw_kint(w, "forbidden", (long long)c->forbidden);
    jw_kint(w, "no_privilege", (long long)c->no_privilege);
    jw_kint(w, "untrusted_ip", (long long)c->untrusted_ip);
    jw_kint(w, "inflight", c->inflight);
    jw_kint(w, "max_inflight", c->max_inflight);
    jw_key(w, "faults");
    jw_obj_begin(w);
    for (int f = SIM_F_NONE + 1; f < SIM_F_COUNT; f++)
        jw_kint(w, sim_fault_names[f], (long long)c->faults[f]);
    jw_obj_end(w);
    jw_key(w, "errcodes");
    jw_obj_begin(w);
    for (int i = 0; i < c->ncodes; i++) {
        snprintf(k, sizeof(k), "%d", c->codes[i].code);
        jw_kint(w, k, (long long)c->codes[i].n);
    }
    jw_obj_end(w);
    write_dept_counts(w, "user_list_calls", c->ul_calls, c->ul_cap);
    write_dept_counts(w, "user_list_ok", c->ul_ok, c->ul_cap);
    for (int i = 0; i < c->ul_cap; i++)
        fetched += c->ul_ok[i] > 0;
    sim_counters_refetches(c, &refetched, &refetched_ok);
    jw_kint(w, "departments_fetched", (long long)fetched);
    jw_kint(w, "refetched_departments", (long long)refetched);
    jw_kint(w, "refetched_ok_departments", (long long)refetched_ok);
    write_time(w, st, "first_request", c->first_us);
    write_time(w, st, "last_request", c->last_us);
}

int sim_stats_json(const sim_stats *st, const sim_dir *d, const char *corp_filter, jw *w)
{
    int only = -1;
    if (corp_filter) {
        for (int i = 0; i < d->ncorps && only < 0; i++)
            if (strcmp(d->corps[i].corp_id, corp_filter) == 0)
                only = i;
        if (only < 0)
            return -ENOENT;
    }
    jw_key(w, "total");
    jw_obj_begin(w);
    write_counters(w, st, &st->total);
    jw_obj_end(w);
    jw_key(w, "corps");
    jw_arr_begin(w);
    for (int i = 0; i < st->ncorps; i++) {
        if (only >= 0 && i != only)
            continue;
        jw_obj_begin(w);
        jw_kstr(w, "corp_id", d->corps[i].corp_id);
        write_counters(w, st, &st->corp[i]);
        jw_key(w, "by_port");
        jw_arr_begin(w);
        for (int p = 0; p < st->nports; p++) {
            jw_obj_begin(w);
            jw_kint(w, "port", st->ports[p]);
            write_counters(w, st, &st->port_corp[p * st->ncorps + i]);
            jw_obj_end(w);
        }
        jw_arr_end(w);
        jw_key(w, "by_ip");
        jw_arr_begin(w);
        for (int j = 0; j < st->ncorp_ip[i]; j++) {
            if (!st->corp_ip[i][j].requests && !st->corp_ip[i][j].inflight)
                continue; /* an address that only called for other enterprises */
            jw_obj_begin(w);
            jw_kstr(w, "ip", st->ips[j].ip);
            write_counters(w, st, &st->corp_ip[i][j]);
            jw_obj_end(w);
        }
        jw_arr_end(w);
        jw_obj_end(w);
    }
    jw_arr_end(w);
    jw_key(w, "ips");
    jw_arr_begin(w);
    for (int j = 0; j < st->nips; j++) {
        const sim_ipstats *e = &st->ips[j];
        jw_obj_begin(w);
        jw_kstr(w, "ip", e->ip);
        write_counters(w, st, &e->c);
        jw_kint(w, "max_60s", e->max_60s);
        jw_kint(w, "max_3600s", (long long)e->max_3600s);
        jw_obj_end(w);
    }
    jw_arr_end(w);
    jw_key(w, "ports");
    jw_arr_begin(w);
    for (int p = 0; p < st->nports; p++) {
        jw_obj_begin(w);
        jw_kint(w, "port", st->ports[p]);
        write_counters(w, st, &st->port[p]);
        jw_obj_end(w);
    }
    jw_arr_end(w);
    return 0;
}
