/* The per-egress cap: one Lua script per admission, over two hashes of buckets
 * (see egress_cap.h for the arithmetic and why it holds). */
#include "common/egress_cap.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/metrics.h"

#define KEY_MAX 96

/* KEYS[1] the seconds hash, KEYS[2] the minutes hash; ARGV[1] per_min, ARGV[2]
 * per_hour, ARGV[3] now in ms ("" = Redis's clock; only tests pass one). Returns
 * {0, 0, in_minute, in_hour} admitted and counted, or {1, wait_ms, in_minute,
 * in_hour} not counted. For each window (w = 1 seconds, w = 2 minutes; u its bucket
 * in ms, c the current bucket): fields older than c - 60 (and any field that is not
 * a number) are dropped, the rest summed; a sum at its cap waits until, oldest
 * bucket first, enough have left ((b + 61) * u) that the rest is below the cap. If
 * none would (counts that are not positive), it waits for the current bucket's
 * departure, the latest of any bucket not stamped in the future. */
static redis_script admit_script = {
    "redis.replicate_commands() "
    "local now = tonumber(ARGV[3]) "
    "if not now then local t = redis.call('TIME') "
    "now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) end "
    "local caps = {tonumber(ARGV[1]), tonumber(ARGV[2])} local units = {1000, 60000} "
    "local sums, waits, cur = {}, {}, {} "
    "for w = 1, 2 do "
    "local u = units[w] local c = math.floor(now / u) cur[w] = c "
    "local f = redis.call('HGETALL', KEYS[w]) local sum, b = 0, {} "
    "for i = 1, #f, 2 do local n, k = tonumber(f[i]), tonumber(f[i + 1]) "
    "if n == nil or k == nil or n < c - 60 then redis.call('HDEL', KEYS[w], f[i]) "
    "else sum = sum + k b[#b + 1] = {n, k} end end "
    "sums[w] = sum waits[w] = 0 "
    "if sum >= caps[w] then waits[w] = (c + 61) * u - now "
    "table.sort(b, function(x, y) return x[1] < y[1] end) local left = sum "
    "for _, e in ipairs(b) do left = left - e[2] "
    "if left < caps[w] then waits[w] = (e[1] + 61) * u - now break end end end end "
    "if waits[1] > 0 or waits[2] > 0 then "
    "return {1, math.max(waits[1], waits[2], 1), sums[1], sums[2]} end "
    "redis.call('HINCRBY', KEYS[1], cur[1], 1) redis.call('PEXPIRE', KEYS[1], 62000) "
    "redis.call('HINCRBY', KEYS[2], cur[2], 1) redis.call('PEXPIRE', KEYS[2], 3720000) "
    "return {0, 0, sums[1] + 1, sums[2] + 1}",
    ""};

typedef struct eg_req eg_req;
struct eg_req {
    eg_req *prev, *next;
    egress_cap *e; /* NULL once the cap is freed: the reply is then dropped */
    egress_cap_cb cb;
    void *arg;
};

struct egress_cap {
    redis_client *rc;
    char id[EGRESS_ID_MAX + 1];
    char key_s[KEY_MAX], key_m[KEY_MAX];
    char per_min[16], per_hour[16];
    eg_req *pending;
    int freeing;
};

static int id_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '.' || ch == '_' || ch == ':' || ch == '-';
}

int egress_cap_id_valid(const char *id)
{
    size_t n;

    if (!id)
        return 0;
    n = strlen(id);
    if (n == 0 || n > EGRESS_ID_MAX)
        return 0;
    for (; *id; id++)
        if (!id_char(*id))
            return 0;
    return 1;
}

void egress_cap_id_from_host(const char *host, char *out, size_t outlen)
{
    size_t i, n;

    if (!out || outlen == 0)
        return;
    if (!host || !*host)
        host = "localhost";
    n = strlen(host);
    if (n > EGRESS_ID_MAX)
        n = EGRESS_ID_MAX;
    if (n > outlen - 1)
        n = outlen - 1;
    for (i = 0; i < n; i++)
        out[i] = id_char(host[i]) ? host[i] : '_';
    out[n] = '\0';
}

int egress_cap_keys(const char *id, char *sec_key, char *min_key, size_t keylen)
{
    int a, b;

    if (!egress_cap_id_valid(id) || !sec_key || !min_key)
        return -EINVAL;
    a = snprintf(sec_key, keylen, "orgsync:egress:%s:s", id);
    b = snprintf(min_key, keylen, "orgsync:egress:%s:m", id);
    if (a < 0 || b < 0 || (size_t)a >= keylen || (size_t)b >= keylen)
        return -EINVAL;
    return 0;
}

int egress_cap_parse(const redisReply *reply, egress_answer *out)
{
    const redisReply *const *el;
    int i;

    if (!reply || !out || reply->type != REDIS_REPLY_ARRAY || reply->elements != 4)
        return -EIO;
    el = (const redisReply *const *)reply->element;
    for (i = 0; i < 4; i++)
        if (!el[i] || el[i]->type != REDIS_REPLY_INTEGER || el[i]->integer < 0)
            return -EIO;
    if (el[0]->integer == EGRESS_ADMITTED) {
        if (el[1]->integer != 0)
            return -EIO;
    } else if (el[0]->integer == EGRESS_WAIT) {
        if (el[1]->integer < 1)
            return -EIO;
    } else {
        return -EIO;
    }
    out->status = (int)el[0]->integer;
    out->wait_ms = el[1]->integer;
    out->in_minute = el[2]->integer;
    out->in_hour = el[3]->integer;
    return 0;
}

static void set_gauges(long long in_minute, long long in_hour)
{
    metrics_gauge_set(M_EGRESS_CALLS, "window=\"60s\"", (double)in_minute);
    metrics_gauge_set(M_EGRESS_CALLS, "window=\"3600s\"", (double)in_hour);
}

egress_cap *egress_cap_new(redis_client *rc, const char *egress_id, int per_min, int per_hour)
{
    egress_cap *e;

    if (!rc || !egress_cap_id_valid(egress_id) || per_min < 1 || per_hour < 1)
        return NULL;
    e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    e->rc = rc;
    snprintf(e->id, sizeof(e->id), "%s", egress_id);
    if (egress_cap_keys(e->id, e->key_s, e->key_m, sizeof(e->key_s)) < 0) {
        free(e);
        return NULL;
    }
    snprintf(e->per_min, sizeof(e->per_min), "%d", per_min);
    snprintf(e->per_hour, sizeof(e->per_hour), "%d", per_hour);
    metrics_gauge_set(M_EGRESS_LIMIT, "window=\"60s\"", per_min);
    metrics_gauge_set(M_EGRESS_LIMIT, "window=\"3600s\"", per_hour);
    return e;
}

static void unlink_req(egress_cap *e, eg_req *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        e->pending = q->next;
    if (q->next)
        q->next->prev = q->prev;
    q->prev = q->next = NULL;
}

static int transport_status(const char *err)
{
    if (strcmp(err, REDIS_ERR_TIMEOUT) == 0)
        return -ETIMEDOUT;
    if (strcmp(err, REDIS_ERR_CLOSING) == 0)
        return -ECANCELED;
    return -ENOTCONN; /* not connected, disconnected */
}

static void on_reply(void *arg, redisReply *reply, const char *err)
{
    eg_req *q = arg;
    egress_cap *e = q->e;
    egress_cap_cb cb = q->cb;
    void *cb_arg = q->arg;
    egress_answer a = {0, 0, 0, 0};
    int status;

    if (!e) { /* the cap was freed; its callback already ran */
        free(q);
        return;
    }
    unlink_req(e, q);
    free(q);
    if (err && !reply) {
        status = transport_status(err);
    } else if (err || egress_cap_parse(reply, &a) < 0) {
        log_warn("egress cap: unexpected answer from Redis", LF_S("egress", e->id),
                 LF_S("error", err ? err : "malformed reply"));
        status = -EIO;
    } else {
        status = a.status;
        set_gauges(a.in_minute, a.in_hour);
        if (status == EGRESS_WAIT)
            metrics_counter_add(M_EGRESS_WAITS, NULL, 1);
    }
    if (status < 0)
        memset(&a, 0, sizeof(a));
    /* e is not touched after this: the callback may free it. */
    cb(cb_arg, status, a.wait_ms, a.in_minute, a.in_hour);
}

static int admit(egress_cap *e, const char *now, egress_cap_cb cb, void *arg)
{
    const char *argv[5];
    eg_req *q;
    int rc;

    if (!e || !cb)
        return -EINVAL;
    if (e->freeing)
        return -ECANCELED;
    q = calloc(1, sizeof(*q));
    if (!q)
        return -ENOMEM;
    q->e = e;
    q->cb = cb;
    q->arg = arg;
    argv[0] = e->key_s;
    argv[1] = e->key_m;
    argv[2] = e->per_min;
    argv[3] = e->per_hour;
    argv[4] = now;
    rc = redis_eval(e->rc, &admit_script, 2, 5, argv, on_reply, q);
    if (rc < 0) {
        free(q);
        return rc;
    }
    q->next = e->pending;
    if (e->pending)
        e->pending->prev = q;
    e->pending = q;
    return 0;
}

int egress_cap_admit(egress_cap *e, egress_cap_cb cb, void *arg)
{
    return admit(e, "", cb, arg);
}

int egress_cap_admit_at(egress_cap *e, long long now_ms, egress_cap_cb cb, void *arg)
{
    char now[24];

    if (now_ms < 0)
        return -EINVAL;
    snprintf(now, sizeof(now), "%lld", now_ms);
    return admit(e, now, cb, arg);
}

void egress_cap_free(egress_cap *e)
{
    eg_req *q;

    if (!e || e->freeing)
        return;
    e->freeing = 1;
    while ((q = e->pending) != NULL) {
        unlink_req(e, q);
        q->e = NULL; /* on_reply frees it when Redis answers or gives up */
        q->cb(q->arg, -ECANCELED, 0, 0, 0);
    }
    free(e);
}
