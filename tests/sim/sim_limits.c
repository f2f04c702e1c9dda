/* What the real upstream enforces, judged by arrival time: a per-enterprise rate over
 * any trailing second, a per-path concurrency cap, and access tokens that expire.
 *
 * The rate window is a ring of arrival times (all arrivals in the last second), so
 * the check is exact for any burst shape: arrival n is refused when, counting it,
 * more than `rate` arrivals fall in (t - 1 s, t]. Two requests exactly 1 s apart are
 * in different windows, so a client pacing at exactly 1/rate never trips it. */
#include "tests/sim/sim.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WINDOW_US 1000000ULL

void sim_window_init(sim_window *w)
{
    memset(w, 0, sizeof(*w));
}

void sim_window_free(sim_window *w)
{
    free(w->t);
    sim_window_init(w);
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
    while (w->len) {
        uint64_t e = w->t[w->head];
        if ((e >> 1) + WINDOW_US > now_us)
            break;
        w->admitted -= e & 1;
        w->head = (w->head + 1) & (w->cap - 1);
        w->len--;
    }
}

int sim_window_arrive(sim_window *w, uint64_t now_us, uint32_t limit, int count_rejected,
                      uint32_t *in_window)
{
    window_prune(w, now_us);
    size_t counted = count_rejected ? w->len : w->admitted;
    int ok = counted < limit;
    if (w->len == w->cap && window_grow(w) != 0) {
        if (in_window)
            *in_window = (uint32_t)w->len + 1;
        return 1;
    }
    w->t[(w->head + w->len) & (w->cap - 1)] = (now_us << 1) | (uint64_t)ok;
    w->len++;
    w->admitted += (size_t)ok;
    if (in_window)
        *in_window = (uint32_t)w->len;
    return ok;
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
    l->token_rng = sim_mix(seed, 0x746f6b656e);
    sim_map_init(&l->by_token);
    l->win = calloc((size_t)ncorps, sizeof(*l->win));
    l->banned_until_us = calloc((size_t)ncorps, sizeof(*l->banned_until_us));
    l->cur_token = malloc((size_t)ncorps * sizeof(*l->cur_token));
    if (!l->win || !l->banned_until_us || !l->cur_token) {
        sim_limits_free(l);
        return -ENOMEM;
    }
    for (int i = 0; i < ncorps; i++)
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

int sim_limits_token(sim_limits *l, int corp, uint64_t now_us, const char **value,
                     uint32_t *expires_in, int *fresh)
{
    int64_t cur = l->cur_token[corp];
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
    t->expires_us = now_us + (uint64_t)l->token_ttl_s * 1000000;
    int err = sim_map_put(&l->by_token, t->value, (int64_t)l->ntokens);
    if (err)
        return err;
    l->cur_token[corp] = (int64_t)l->ntokens++;
    *value = t->value;
    *expires_in = l->token_ttl_s;
    *fresh = 1;
    return 0;
}

sim_tok_state sim_limits_check_token(const sim_limits *l, const char *value, uint64_t now_us,
                                     int *corp)
{
    int64_t idx;
    if (!value || !sim_map_get(&l->by_token, value, &idx))
        return SIM_TOK_UNKNOWN;
    *corp = l->tokens[idx].corp;
    return l->tokens[idx].expires_us > now_us ? SIM_TOK_OK : SIM_TOK_EXPIRED;
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
            l->cur_token[i] = -1;
    return n;
}
