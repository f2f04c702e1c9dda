/* GET /v1/candidates: the hosts that compete for the leader lock, as the fair
 * candidacy hash in Redis shows them (coordinator/candidacy.h), and what can be
 * told from it about each one's chances: live or not, code version older than
 * the newest live one, when it last led, its place in the order of the next
 * fire. Read-only: one script reads Redis's clock, the hash and this host's
 * egress refusal key, and writes nothing. */
#include "worker/api/api_routes.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/timeutil.h"
#include "coordinator/candidacy.h"
#include "coordinator/gate.h"

/* KEYS: the candidates hash, this host's egress refusal key (may be absent).
 * Reply: {now_ms, refusal or "", field1, value1, field2, value2, ...}. */
static redis_script read_script = {
    .src = "local t = redis.call('TIME')\n"
           "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
           "local out = {now, ''}\n"
           "if KEYS[2] then out[2] = redis.call('GET', KEYS[2]) or '' end\n"
           "local all = redis.call('HGETALL', KEYS[1])\n"
           "for i = 1, #all do out[#out + 1] = all[i] end\n"
           "return out\n",
};

typedef struct hosts_op {
    api *a;
    http_req *req;
} hosts_op;

typedef struct cand {
    candidacy_entry e; /* instance, version, led_ms */
    long long seen_ms;
    int live;
} cand;

static int by_instance(const void *x, const void *y)
{
    return strcmp(((const cand *)x)->e.instance, ((const cand *)y)->e.instance);
}

/* "<version>|<seen ms>|<led ms>" (the version may not hold '|' in practice,
 * but the two numbers are taken from the end, as the script does). 0 or -1. */
static int parse_value(const char *v, size_t len, cand *c)
{
    char tmp[256], *p2, *p1, *end;
    if (len >= sizeof tmp)
        return -1;
    memcpy(tmp, v, len);
    tmp[len] = '\0';
    p2 = strrchr(tmp, '|');
    if (!p2)
        return -1;
    *p2 = '\0';
    p1 = strrchr(tmp, '|');
    if (!p1)
        return -1;
    *p1 = '\0';
    c->seen_ms = strtoll(p1 + 1, &end, 10);
    if (*end || end == p1 + 1)
        return -1;
    c->e.led_ms = strtoll(p2 + 1, &end, 10);
    if (*end || end == p2 + 1)
        return -1;
    if (strlen(tmp) >= sizeof c->e.version)
        return -1;
    memcpy(c->e.version, tmp, strlen(tmp) + 1);
    return 0;
}

static void put_ms(jw *w, const char *key, long long ms)
{
    char t[32];
    if (ms <= 0) {
        jw_knull(w, key);
        return;
    }
    time_rfc3339((time_t)(ms / 1000), (int)(ms % 1000), t);
    jw_kstr(w, key, t);
}

/* 1 when instance runs on the host of ours ("host/w2" and "host/w1", or equal):
 * the egress id is a host's setting, so only for those is its refusal known. */
static int same_host(const char *instance, const char *ours)
{
    const char *s1 = strchr(instance, '/'), *s2 = strchr(ours, '/');
    size_t n1 = s1 ? (size_t)(s1 - instance) : strlen(instance);
    size_t n2 = s2 ? (size_t)(s2 - ours) : strlen(ours);
    return n1 == n2 && !strncmp(instance, ours, n1);
}

/* Appends one reason to why ("; "-separated), truncating safely. */
__attribute__((format(printf, 4, 5))) static void why_add(char *why, size_t cap, size_t *wn,
                                                          const char *fmt, ...)
{
    va_list ap;
    if (*wn && *wn + 2 < cap) {
        memcpy(why + *wn, "; ", 3);
        *wn += 2;
    }
    if (*wn >= cap)
        return;
    va_start(ap, fmt);
    int n = vsnprintf(why + *wn, cap - *wn, fmt, ap);
    va_end(ap);
    if (n > 0)
        *wn += (size_t)n < cap - *wn ? (size_t)n : cap - *wn - 1;
}

static void reply_candidates(hosts_op *op, const redisReply *r)
{
    api *a = op->a;
    const settings *s = a->d.settings;
    long long now = r->element[0]->integer;
    const redisReply *refusal = r->element[1];
    const char *refused = refusal->type == REDIS_REPLY_STRING && refusal->len ? refusal->str : NULL;
    size_t n = (r->elements - 2) / 2;
    cand *c = calloc(n ? n : 1, sizeof(*c));
    candidacy_entry *live = calloc(n ? n : 1, sizeof(*live));
    const char *newest = NULL;
    size_t nc = 0, nlive = 0;
    buf b;
    jw w;

    if (!c || !live) {
        http_reply_error(op->req, 503, "out_of_memory", "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const redisReply *f = r->element[2 + 2 * i], *v = r->element[3 + 2 * i];
        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
            f->len >= sizeof c[nc].e.instance || parse_value(v->str, v->len, &c[nc]))
            continue; /* not written by candidacy.c: leave it out */
        memcpy(c[nc].e.instance, f->str, f->len);
        c[nc].live = now - c[nc].seen_ms <= CANDIDACY_LIVE_MS;
        if (c[nc].live) {
            live[nlive++] = c[nc].e;
            if (!newest || gate_version_cmp(c[nc].e.version, newest) > 0)
                newest = c[nc].e.version;
        }
        nc++;
    }
    qsort(c, nc, sizeof(*c), by_instance);

    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kstr(&w, "env", s->env);
    jw_kstr(&w, "job", API_JOB);
    put_ms(&w, "now", now);
    jw_kint(&w, "live_ms", CANDIDACY_LIVE_MS);
    jw_kstr(&w, "newest_version", newest);
    jw_kint(&w, "live", (long long)nlive);
    jw_key(&w, "candidates");
    jw_arr_begin(&w);
    for (size_t i = 0; i < nc; i++) {
        const cand *x = &c[i];
        candidacy_view v;
        char why[512];
        size_t wn = 0;
        int version_ok = !newest || gate_version_cmp(x->e.version, newest) >= 0;
        int egress_known = s->egress_id[0] && same_host(x->e.instance, s->instance);

        why[0] = '\0';
        if (!x->live)
            why_add(why, sizeof why, &wn, "not live: last heartbeat %lld s ago",
                    (now - x->seen_ms) / 1000);
        else if (!version_ok)
            why_add(why, sizeof why, &wn, "code version %s is older than %s", x->e.version, newest);
        if (egress_known && refused)
            why_add(why, sizeof why, &wn, "the upstream refused egress %s: %s", s->egress_id,
                    refused);
        jw_obj_begin(&w);
        jw_kstr(&w, "instance", x->e.instance);
        jw_kstr(&w, "code_version", x->e.version);
        put_ms(&w, "last_seen", x->seen_ms);
        jw_kint(&w, "seen_ms_ago", now - x->seen_ms);
        put_ms(&w, "last_led", x->e.led_ms);
        jw_kbool(&w, "live", x->live);
        jw_kbool(&w, "version_ok", version_ok);
        /* the order of the next fire among the live competitors (0 tries first) */
        if (x->live && version_ok &&
            candidacy_rank_compute(live, (int)nlive, x->e.instance, x->e.version, 0, &v) == 0 &&
            v.rank >= 0)
            jw_kint(&w, "rank", v.rank);
        else
            jw_knull(&w, "rank");
        if (egress_known) {
            jw_kstr(&w, "egress_id", s->egress_id);
            jw_kstr(&w, "egress_refused", refused);
        }
        jw_kbool(&w, "eligible", why[0] == '\0');
        jw_kstr(&w, "why_not", why[0] ? why : NULL);
        jw_obj_end(&w);
    }
    jw_arr_end(&w);
    jw_obj_end(&w);
    api_reply_json(op->req, 200, &b);
out:
    free(c);
    free(live);
}

static void on_read(void *arg, redisReply *reply, const char *err)
{
    hosts_op *op = arg;
    if (!api_unref(op->a))
        goto done;
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 2 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER || reply->elements % 2) {
        log_warn("api: candidates lookup failed", LF_S("err", err ? err : "malformed reply"));
        http_reply_error(op->req, 503, "dependency_down", err ? err : "malformed reply from Redis");
        goto done;
    }
    reply_candidates(op, reply);
done:
    free(op);
}

static void on_candidates(http_req *req, void *arg)
{
    api *a = arg;
    const settings *s = a->d.settings;
    char key[256], ekey[256];
    const char *argv[2] = {key, ekey};
    int nkeys = 1;
    hosts_op *op;

    if (candidacy_key(s->env, API_JOB, key, sizeof key)) {
        http_reply_error(req, 503, "internal", "candidates key too long");
        return;
    }
    if (s->egress_id[0] && candidacy_egress_key(s->env, s->egress_id, ekey, sizeof ekey) == 0)
        nkeys = 2;
    op = calloc(1, sizeof(*op));
    if (!op) {
        http_reply_error(req, 503, "out_of_memory", "out of memory");
        return;
    }
    op->a = a;
    op->req = req;
    api_ref(a);
    if (redis_eval(a->d.redis, &read_script, nkeys, nkeys, argv, on_read, op)) {
        api_unref(a);
        free(op);
        http_reply_error(req, 503, "dependency_down", "could not query Redis");
    }
}

int api_hosts_register(api *a)
{
    return http_server_route(a->srv, "GET", "/v1/candidates", on_candidates, a);
}
