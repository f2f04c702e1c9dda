/* What the real upstream enforces, judged by arrival time: a per-enterprise rate over
 * any trailing second, per source IP calls over any trailing minute and hour, a
 * per-path concurrency cap, and access tokens (one kind per credential) that expire.
 *
 * The rate window is a ring of arrival times (all arrivals in the last second), so
 * the check is exact for any burst shape: arrival n is refused when, counting it,
 * more than `rate` arrivals fall in (t - 1 s, t]. Two requests exactly 1 s apart are
 * in different windows, so a client pacing at exactly 1/rate never trips it. The
 * per-IP minute is the same ring over 60 s (exact); the per-IP hour counts arrivals
 * in per-second buckets (exact to the second), so 600,000 an hour cost 28 KiB per
 * address, not a ring of 600,000 times. */
#include "tests/sim/sim.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WINDOW_US 1000000ULL
#define IP_MINUTE_US 60000000ULL

const char *const sim_cred_names[SIM_CRED_COUNT] = {"app", "contact"};

void sim_window_init(sim_window *w)
{
    memset(w, 0, sizeof(*w));
}

void sim_window_init_span(sim_window *w, uint64_t span_us)
{
    sim_window_init(w);
    w->span_us = span_us;
}

void sim_window_free(sim_window *w)
{
    free(w->t);
    sim_window_init_span(w, w->span_us);
}

void sim_window_clear(sim_window *w)
{
    w->head = w->len = w->admitted = 0;
}

static int window_grow(sim_window *w)
{
    size_t ncap = w->cap ? w->cap * 2 : 16;
    uint64_t *t = malloc(ncap * sizeof(*t));
    if (!t)
        return -ENOMEM;
    for (size_t i = 0; i < w->len; i++)
        t[i] = w->t[(w->head + i) & (w->cap - 1)];
    free(w->t);
    w->t = t;
    w->cap = ncap;
    w->head = 0;
    return 0;
}

static void window_prune(sim_window *w, uint64_t now_us)
{
    uint64_t span = w->span_us ? w->span_us : WINDOW_US;
    while (w->len) {
        uint64_t e = w->t[w->head];
        if ((e >> 1) + span > now_us)
            break;
        w->admitted -= e & 1;
        w->head = (w->head + 1) & (w->cap - 1);
        w->len--;
    }
}

size_t sim_window_count(sim_window *w, uint64_t now_us, int count_rejected)
{
    window_prune(w, now_us);
    return count_rejected ? w->len : w->admitted;
}

int sim_window_push(sim_window *w, uint64_t now_us, int admitted)
{
    if (w->len == w->cap && window_grow(w) != 0)
        return -ENOMEM;
    w->t[(w->head + w->len) & (w->cap - 1)] = (now_us << 1) | (uint64_t)(admitted != 0);
    w->len++;
    w->admitted += (size_t)(admitted != 0);
    return 0;
}

int sim_window_arrive(sim_window *w, uint64_t now_us, uint32_t limit, int count_rejected,
                      uint32_t *in_window)
{
    int ok = sim_window_count(w, now_us, count_rejected) < limit;
    if (sim_window_push(w, now_us, ok) != 0) {
        /* No memory to remember it: admitted and forgotten. */
        if (in_window)
            *in_window = (uint32_t)w->len + 1;
        return 1;
    }
    if (in_window)
        *in_window = (uint32_t)w->len;
    return ok;
}

/* ---- per-second buckets over an hour ---- */

void sim_buckets_free(sim_buckets *b)
{
    free(b->all);
    free(b->admitted);
    memset(b, 0, sizeof(*b));
}

void sim_buckets_clear(sim_buckets *b)
{
    if (b->all) {
        memset(b->all, 0, SIM_HOUR_BUCKETS * sizeof(*b->all));
        memset(b->admitted, 0, SIM_HOUR_BUCKETS * sizeof(*b->admitted));
    }
    b->sec = 0;
    b->n_all = b->n_admitted = 0;
}

/* Empties the buckets of the seconds after b->sec up to now's (they may hold arrivals
 * of an hour ago), so that the buckets hold exactly the last 3600 seconds. */
static void buckets_advance(sim_buckets *b, uint64_t sec)
{
    if (!b->all || sec <= b->sec)
        return;
    if (sec - b->sec >= SIM_HOUR_BUCKETS) {
        sim_buckets_clear(b);
    } else {
        for (uint64_t t = b->sec + 1; t <= sec; t++) {
            size_t i = (size_t)(t % SIM_HOUR_BUCKETS);
            b->n_all -= b->all[i];
            b->n_admitted -= b->admitted[i];
            b->all[i] = b->admitted[i] = 0;
        }
    }
    b->sec = sec;
}

uint64_t sim_buckets_count(sim_buckets *b, uint64_t now_us, int count_rejected)
{
    buckets_advance(b, now_us / 1000000);
    return count_rejected ? b->n_all : b->n_admitted;
}

int sim_buckets_push(sim_buckets *b, uint64_t now_us, int admitted)
{
    uint64_t sec = now_us / 1000000;
    if (!b->all) {
        b->all = calloc(SIM_HOUR_BUCKETS, sizeof(*b->all));
        b->admitted = calloc(SIM_HOUR_BUCKETS, sizeof(*b->admitted));
        if (!b->all || !b->admitted) {
            sim_buckets_free(b);
            return -ENOMEM;
        }
        b->sec = sec;
    }
    buckets_advance(b, sec);
    size_t i = (size_t)(sec % SIM_HOUR_BUCKETS);
    b->all[i]++;
    b->n_all++;
    if (admitted) {
        b->admitted[i]++;
        b->n_admitted++;
    }
    return 0;
}

int sim_limits_init(sim_limits *l, int ncorps, uint64_t seed)
{
    memset(l, 0, sizeof(*l));
    l->ncorps = ncorps;
    l->rate = 10;
    l->max_inflight = 60;
    l->inflight_errcode = 45009;
    l->token_ttl_s = 7200;
    l->count_rejected = 1;
    l->ip_per_min = 20000;
    l->ip_per_hour = 600000;
    l->token_rng = sim_mix(seed, 0x746f6b656e);
    sim_map_init(&l->by_token);
    sim_map_init(&l->ip_index);
    l->win = calloc((size_t)ncorps, sizeof(*l->win));
    l->banned_until_us = calloc((size_t)ncorps, sizeof(*l->banned_until_us));
    l->cur_token = malloc((size_t)ncorps * SIM_CRED_COUNT * sizeof(*l->cur_token));
    if (!l->win || !l->banned_until_us || !l->cur_token) {
        sim_limits_free(l);
        return -ENOMEM;
    }
    for (int i = 0; i < ncorps * SIM_CRED_COUNT; i++)
        l->cur_token[i] = -1;
    return 0;
}

void sim_limits_free(sim_limits *l)
{
    if (l->win)
        for (int i = 0; i < l->ncorps; i++)
            sim_window_free(&l->win[i]);
    free(l->win);
    free(l->banned_until_us);
    free(l->cur_token);
    free(l->tokens);
    sim_map_free(&l->by_token);
    for (size_t i = 0; i < l->nip; i++) {
        sim_window_free(&l->ipw[i].minute);
        sim_buckets_free(&l->ipw[i].hour);
    }
    free(l->ipw);
    sim_map_free(&l->ip_index);
    memset(l, 0, sizeof(*l));
}

int sim_limits_arrive(sim_limits *l, int corp, uint64_t now_us)
{
    /* A banned enterprise's arrivals still count: limit 0 records them as refused. */
    if (l->banned_until_us[corp] > now_us)
        return sim_window_arrive(&l->win[corp], now_us, 0, l->count_rejected, NULL);
    int ok = sim_window_arrive(&l->win[corp], now_us, l->rate, l->count_rejected, NULL);
    if (!ok && l->ban_ms)
        l->banned_until_us[corp] = now_us + (uint64_t)l->ban_ms * 1000;
    return ok;
}

/* The windows of a source address, made on its first arrival; NULL without memory. */
static sim_ipwin *ip_windows(sim_limits *l, const char *ip)
{
    int64_t idx;
    if (sim_map_get(&l->ip_index, ip, &idx))
        return &l->ipw[idx];
    if (l->nip == l->ipcap) {
        size_t ncap = l->ipcap ? l->ipcap * 2 : 8;
        sim_ipwin *n = realloc(l->ipw, ncap * sizeof(*n));
        if (!n)
            return NULL;
        l->ipw = n;
        l->ipcap = ncap;
    }
    if (sim_map_put(&l->ip_index, ip, (int64_t)l->nip) != 0)
        return NULL;
    sim_ipwin *w = &l->ipw[l->nip++];
    memset(w, 0, sizeof(*w));
    sim_window_init_span(&w->minute, IP_MINUTE_US);
    return w;
}

int sim_limits_ip_arrive(sim_limits *l, const char *ip, uint64_t now_us)
{
    sim_ipwin *w = ip && *ip ? ip_windows(l, ip) : NULL;
    int verdict = SIM_IP_OK;
    if (!w)
        return SIM_IP_OK;
    /* Judged against both windows first, then recorded in both with one verdict, so
     * that with count_rejected 0 both agree on what was admitted. */
    if (sim_window_count(&w->minute, now_us, l->count_rejected) >= l->ip_per_min)
        verdict = SIM_IP_OVER_MIN;
    else if (sim_buckets_count(&w->hour, now_us, l->count_rejected) >= l->ip_per_hour)
        verdict = SIM_IP_OVER_HOUR;
    /* A failed allocation forgets the arrival: it is not refused for it. */
    (void)sim_window_push(&w->minute, now_us, verdict == SIM_IP_OK);
    (void)sim_buckets_push(&w->hour, now_us, verdict == SIM_IP_OK);
    return verdict;
}

int sim_limits_token(sim_limits *l, int corp, uint64_t now_us, const char **value,
                     uint32_t *expires_in, int *fresh)
{
    return sim_limits_cred_token(l, corp, SIM_CRED_APP, now_us, value, expires_in, fresh);
}

int sim_limits_cred_token(sim_limits *l, int corp, sim_cred cred, uint64_t now_us,
                          const char **value, uint32_t *expires_in, int *fresh)
{
    int64_t *slot = &l->cur_token[corp * SIM_CRED_COUNT + (int)cred];
    int64_t cur = *slot;
    /* Like the real upstream: the same token while it is valid, a new one after. */
    if (cur >= 0 && l->tokens[cur].expires_us > now_us) {
        *value = l->tokens[cur].value;
        *expires_in = (uint32_t)((l->tokens[cur].expires_us - now_us + 999999) / 1000000);
        *fresh = 0;
        return 0;
    }
    if (l->ntokens == l->tcap) {
        size_t ncap = l->tcap ? l->tcap * 2 : 16;
        sim_token *t = realloc(l->tokens, ncap * sizeof(*t));
        if (!t)
            return -ENOMEM;
        l->tokens = t;
        l->tcap = ncap;
    }
    sim_token *t = &l->tokens[l->ntokens];
    uint64_t a = sim_rng_next(&l->token_rng), b = sim_rng_next(&l->token_rng);
    snprintf(t->value, sizeof(t->value), "simtok%04d%016llx%016llx", corp + 1,
             (unsigned long long)a, (unsigned long long)b);
    t->corp = corp;
    t->cred = cred;
    t->expires_us = now_us + (uint64_t)l->token_ttl_s * 1000000;
    int err = sim_map_put(&l->by_token, t->value, (int64_t)l->ntokens);
    if (err)
        return err;
    *slot = (int64_t)l->ntokens++;
    *value = t->value;
    *expires_in = l->token_ttl_s;
    *fresh = 1;
    return 0;
}

sim_tok_state sim_limits_check_cred_token(const sim_limits *l, const char *value, uint64_t now_us,
                                          int *corp, sim_cred *cred)
{
    int64_t idx;
    if (!value || !sim_map_get(&l->by_token, value, &idx))
        return SIM_TOK_UNKNOWN;
    *corp = l->tokens[idx].corp;
    if (cred)
        *cred = l->tokens[idx].cred;
    return l->tokens[idx].expires_us > now_us ? SIM_TOK_OK : SIM_TOK_EXPIRED;
}

sim_tok_state sim_limits_check_token(const sim_limits *l, const char *value, uint64_t now_us,
                                     int *corp)
{
    return sim_limits_check_cred_token(l, value, now_us, corp, NULL);
}

int sim_limits_expire_tokens(sim_limits *l, int corp, uint64_t now_us, int invalidate)
{
    int n = 0;
    for (size_t i = 0; i < l->ntokens; i++) {
        sim_token *t = &l->tokens[i];
        if (corp >= 0 && t->corp != corp)
            continue;
        if (t->expires_us > now_us) {
            t->expires_us = now_us;
            n++;
        }
        if (invalidate)
            sim_map_del(&l->by_token, t->value);
    }
    for (int i = 0; i < l->ncorps; i++)
        if (corp < 0 || i == corp)
            for (int k = 0; k < SIM_CRED_COUNT; k++)
                l->cur_token[i * SIM_CRED_COUNT + k] = -1;
    return n;
}
