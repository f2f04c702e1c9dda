/* Fair candidacy: heartbeats into the candidates hash and ranks by
 * least-recently-led (see candidacy.h). */
#include "coordinator/candidacy.h"

#include "common/log.h"
#include "coordinator/gate.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MODE_BEAT, MODE_LED, MODE_LEAVE };

struct candidacy {
    uv_loop_t *loop;
    redis_client *redis;
    char key[256];
    char egress_key[256]; /* candidacy_egress_key of our egress */
    char *instance, *version;
    int heartbeat_ms, live_ms, grace_ms, prune_ms;

    uv_timer_t beat;
    int beat_inflight;
    int pending; /* Redis calls in flight */
    int timer_open;
    int closing;
    void (*done)(void *arg);
    void *done_arg;

    int have_view;
    candidacy_view view;
    int logged_version_ok; /* -1 not yet logged */
};

typedef struct cand_op {
    candidacy *c;
    int mode;
    candidacy_rank_cb cb;
    void *arg;
} cand_op;

/* One script for every call: Redis's clock stamps the entry, so candidates on
 * hosts with skewed clocks agree on who led last; the same call returns the
 * live entries, pruning the long dead. ARGV: instance, version, mode, live_ms,
 * prune_ms. Reply: {now_ms, inst1, ver1, led1, inst2, ...}. */
static redis_script beat_script = {
    .src = "if redis.replicate_commands then redis.replicate_commands() end\n"
           "local t = redis.call('TIME')\n"
           "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
           "local key, inst, mode = KEYS[1], ARGV[1], ARGV[3]\n"
           "local live, prune = tonumber(ARGV[4]), tonumber(ARGV[5])\n"
           "if mode == 'leave' then redis.call('HDEL', key, inst) return {now} end\n"
           "local led = '0'\n"
           "local cur = redis.call('HGET', key, inst)\n"
           "if cur then led = string.match(cur, '|(%d+)$') or '0' end\n"
           "if mode == 'led' then led = string.format('%d', now) end\n"
           "redis.call('HSET', key, inst, ARGV[2] .. '|' .. string.format('%d', now) .. '|' .. "
           "led)\n"
           "local all = redis.call('HGETALL', key)\n"
           "local out = {now}\n"
           "for i = 1, #all, 2 do\n"
           "  local v, seen, l = string.match(all[i + 1], '^(.*)|(%d+)|(%d+)$')\n"
           "  seen = tonumber(seen or '0')\n"
           "  if now - seen > prune then redis.call('HDEL', key, all[i])\n"
           "  elseif now - seen <= live then\n"
           "    out[#out + 1] = all[i]; out[#out + 1] = v; out[#out + 1] = l\n"
           "  end\n"
           "end\n"
           "redis.call('PEXPIRE', key, prune)\n"
           "out[#out + 1] = redis.call('GET', KEYS[2]) or ''\n"
           "return out\n",
};

int candidacy_egress_key(const char *env, const char *egress_id, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "orgsync:%s:egress_refused:%s", env, egress_id);
    return (n < 0 || (size_t)n >= outlen) ? -1 : 0;
}

int candidacy_key(const char *env, const char *job, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "orgsync:%s:candidates:%s", env, job);
    return (n < 0 || (size_t)n >= outlen) ? -1 : 0;
}

/* ---- ranking (pure) --------------------------------------------------- */

static int entry_before(const candidacy_entry *a, const candidacy_entry *b)
{
    if (a->led_ms != b->led_ms)
        return a->led_ms < b->led_ms;
    return strcmp(a->instance, b->instance) < 0;
}

int candidacy_rank_compute(const candidacy_entry *e, int n, const char *self,
                           const char *self_version, int grace_ms, candidacy_view *v)
{
    const candidacy_entry *me = NULL;
    const char *newest = self_version;
    int i;

    memset(v, 0, sizeof(*v));
    v->rank = -1;
    v->live = n;
    for (i = 0; i < n; i++) {
        if (gate_version_cmp(e[i].version, newest) > 0)
            newest = e[i].version;
        if (!strcmp(e[i].instance, self))
            me = &e[i];
    }
    snprintf(v->newest_version, sizeof(v->newest_version), "%s", newest);
    v->version_ok = gate_version_cmp(self_version, newest) >= 0;
    for (i = 0; i < n; i++)
        if (!gate_version_cmp(e[i].version, newest))
            v->competitors++;
    if (!me)
        return -1;
    if (!v->version_ok)
        return 0;
    v->rank = 0;
    for (i = 0; i < n; i++)
        if (&e[i] != me && !gate_version_cmp(e[i].version, newest) && entry_before(&e[i], me))
            v->rank++;
    v->delay_ms = (long long)v->rank * grace_ms;
    return 0;
}

/* ---- Redis ------------------------------------------------------------ */

static void maybe_free(candidacy *c)
{
    if (!c->closing || c->pending > 0 || c->timer_open)
        return;
    if (c->done)
        c->done(c->done_arg);
    free(c->instance);
    free(c->version);
    free(c);
}

/* Parses the script's reply into entries; returns how many, or -1. */
static int parse_reply(const redisReply *r, candidacy_entry *e, int max)
{
    size_t i;
    int n = 0;

    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 1)
        return -1;
    /* {now, (instance, version, led)..., egress refusal} */
    for (i = 1; i + 3 < r->elements + 0 && n < max; i += 3) {
        const redisReply *inst = r->element[i], *ver = r->element[i + 1], *led = r->element[i + 2];
        if (inst->type != REDIS_REPLY_STRING || ver->type != REDIS_REPLY_STRING ||
            led->type != REDIS_REPLY_STRING)
            return -1;
        snprintf(e[n].instance, sizeof(e[n].instance), "%s", inst->str);
        snprintf(e[n].version, sizeof(e[n].version), "%s", ver->str);
        e[n].led_ms = strtoll(led->str, NULL, 10);
        n++;
    }
    return n;
}

static void note_view(candidacy *c, const candidacy_view *v)
{
    c->view = *v;
    c->have_view = 1;
    if (c->logged_version_ok == v->version_ok)
        return;
    c->logged_version_ok = v->version_ok;
    if (!v->version_ok)
        log_warn("not competing for the lock: a live candidate runs newer code",
                 LF_S("code_version", c->version), LF_S("newest_version", v->newest_version),
                 LF_I("live_candidates", v->live));
    else
        log_info("competing for the lock", LF_S("code_version", c->version),
                 LF_I("live_candidates", v->live), LF_I("competitors", v->competitors));
}

static void on_reply(void *arg, redisReply *reply, const char *err)
{
    cand_op *op = arg;
    candidacy *c = op->c;
    candidacy_entry *e = NULL;
    candidacy_view v;
    const char *why = err;
    int n;

    c->pending--;
    if (op->mode != MODE_LED && op->mode != MODE_LEAVE)
        c->beat_inflight = 0;
    if (!why && op->mode != MODE_LEAVE) {
        e = calloc(CANDIDACY_MAX, sizeof(*e));
        n = e ? parse_reply(reply, e, CANDIDACY_MAX) : -1;
        if (n < 0)
            why = e ? "malformed candidates reply" : "out of memory";
        else if (candidacy_rank_compute(e, n, c->instance, c->version, c->grace_ms, &v) != 0)
            why = "our entry is missing from the candidates";
        else {
            const redisReply *last = reply->element[reply->elements - 1];
            if (last->type == REDIS_REPLY_STRING)
                snprintf(v.egress_refused, sizeof(v.egress_refused), "%s", last->str);
            note_view(c, &v);
        }
    }
    if (op->cb && !c->closing)
        op->cb(op->arg, why ? NULL : &v, why);
    free(e);
    free(op);
    maybe_free(c);
}

static int send_op(candidacy *c, int mode, candidacy_rank_cb cb, void *arg)
{
    static const char *const modes[] = {"beat", "led", "leave"};
    char live[16], prune[16];
    const char *argv[7];
    cand_op *op = calloc(1, sizeof(*op));
    int rc;

    if (!op)
        return -ENOMEM;
    op->c = c;
    op->mode = mode;
    op->cb = cb;
    op->arg = arg;
    snprintf(live, sizeof(live), "%d", c->live_ms);
    snprintf(prune, sizeof(prune), "%d", c->prune_ms);
    argv[0] = c->key;
    argv[1] = c->egress_key;
    argv[2] = c->instance;
    argv[3] = c->version;
    argv[4] = modes[mode];
    argv[5] = live;
    argv[6] = prune;
    rc = redis_eval(c->redis, &beat_script, 2, 7, argv, on_reply, op);
    if (rc) {
        free(op);
        return rc;
    }
    c->pending++;
    return 0;
}

static void beat_tick(uv_timer_t *t)
{
    candidacy *c = t->data;

    /* A heartbeat still waiting (Redis slow or down) is not doubled up. */
    if (c->closing || c->beat_inflight)
        return;
    if (send_op(c, MODE_BEAT, NULL, NULL) == 0)
        c->beat_inflight = 1;
}

candidacy *candidacy_new(uv_loop_t *loop, redis_client *redis, const candidacy_opts *o)
{
    candidacy *c;

    if (!loop || !redis || !o || !o->env || !o->job || !o->instance || !o->code_version ||
        strchr(o->instance, '|') || strchr(o->code_version, '|'))
        return NULL;
    c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->loop = loop;
    c->redis = redis;
    c->instance = strdup(o->instance);
    c->version = strdup(o->code_version);
    if (!c->instance || !c->version || candidacy_key(o->env, o->job, c->key, sizeof(c->key)) ||
        candidacy_egress_key(o->env, o->egress_id ? o->egress_id : "", c->egress_key,
                             sizeof(c->egress_key))) {
        free(c->instance);
        free(c->version);
        free(c);
        return NULL;
    }
    c->heartbeat_ms = o->heartbeat_ms > 0 ? o->heartbeat_ms : CANDIDACY_HEARTBEAT_MS;
    c->live_ms = o->live_ms > 0 ? o->live_ms : 3 * c->heartbeat_ms + 500;
    c->grace_ms = o->grace_ms > 0 ? o->grace_ms : 200;
    c->prune_ms = o->prune_ms > 0 ? o->prune_ms : 600000;
    c->logged_version_ok = -1;
    uv_timer_init(loop, &c->beat);
    c->beat.data = c;
    c->timer_open = 1;
    uv_timer_start(&c->beat, beat_tick, 0, (uint64_t)c->heartbeat_ms);
    return c;
}

int candidacy_rank(candidacy *c, candidacy_rank_cb cb, void *arg)
{
    if (!c || !cb)
        return -EINVAL;
    if (c->closing)
        return -ESHUTDOWN;
    return send_op(c, MODE_BEAT, cb, arg);
}

void candidacy_mark_led(candidacy *c)
{
    if (c && !c->closing && send_op(c, MODE_LED, NULL, NULL) != 0)
        log_warn("could not record leadership in the candidates hash");
}

int candidacy_last_view(const candidacy *c, candidacy_view *out)
{
    if (!c || !c->have_view)
        return -1;
    *out = c->view;
    return 0;
}

static void on_timer_closed(uv_handle_t *h)
{
    candidacy *c = h->data;

    c->timer_open = 0;
    maybe_free(c);
}

void candidacy_close(candidacy *c, int leave, void (*done)(void *arg), void *arg)
{
    if (!c || c->closing)
        return;
    /* The leave is sent before closing is set, so send_op accepts it; its
     * reply only frees the op. */
    if (leave)
        send_op(c, MODE_LEAVE, NULL, NULL);
    c->closing = 1;
    c->done = done;
    c->done_arg = arg;
    uv_timer_stop(&c->beat);
    uv_close((uv_handle_t *)&c->beat, on_timer_closed);
}
