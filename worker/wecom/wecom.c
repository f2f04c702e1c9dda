/* The WeCom client. Each enterprise is a small state machine that works on the
 * head of its own request queue, one asynchronous step at a time (a Redis
 * command, a timer, a semaphore wait or one upstream call), so an enterprise
 * never has two upstream calls in flight and every step's callback knows
 * exactly which request it belongs to: the head.
 *
 * Pacing is measured where the upstream measures it. The upstream counts
 * arrivals in any one-second window; an arrival lies between our send and our
 * receipt of the answer. So a call may go out only when (a) 1/rate has passed
 * since the previous send, and (b) more than one second has passed since the
 * answer to the call floor(rate) calls back ARRIVED here: then the upstream's
 * arrival times of those two calls are over a second apart whatever the jitter
 * in between. (a) spreads calls evenly, (b) carries the guarantee. */
#include "worker/wecom/wecom.h"

#include "common/backoff.h"
#include "common/buf.h"
#include "common/egress_cap.h"
#include "common/log.h"
#include "common/loop_sem.h"
#include "common/metrics.h"
#include "common/pacer.h"
#include "common/timeutil.h"
#include "worker/wecom/json_scan.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const wecom_api_names[WECOM_API_COUNT] = {
    "gettoken",       "department/list",       "user/list",    "user/get",
    "user/getuserid", "department/simplelist", "user/list_id", "department/get",
    "export/user",    "export/get_result",
};

const char *wecom_cred_name(wecom_cred cred)
{
    return cred == WECOM_CRED_CONTACT ? "contact-sync secret" : "app secret";
}

/* Safety margin of the arrival window: the upstream may stamp arrivals with a
 * millisecond clock that truncates. */
#define WC_WINDOW_US 1000000ULL
#define WC_WINDOW_MARGIN_US 2000ULL
/* How long a process waits for another one's token refresh, and how often it
 * looks. The refresh key expires on its own if its holder dies. */
#define WC_REFRESH_LOCK_MS 10000
#define WC_REFRESH_POLL_MS 50
#define WC_REFRESH_MAX_POLLS 300
/* A token read from Redis is trusted locally at most this long, so a token
 * another process replaced is picked up soon even without an error. */
#define WC_LOCAL_TOKEN_MAX_US 60000000ULL
#define WC_TOKEN_MAX 512
/* An instance name (ORGSYNC_INSTANCE's limit): with "|salt|seq" after it, it
 * fits the refresh key's value and the window's members whole, so no two
 * clients' values can be cut to the same text. */
#define WC_INSTANCE_MAX 127
#define WC_ERR_MAX 320

typedef enum wc_phase {
    PH_IDLE = 0,
    PH_KICK,         /* timer(0): start the head on a later loop turn */
    PH_TOKEN_GET,    /* Redis: cached token */
    PH_TOKEN_LOCK,   /* Redis: SET refresh key NX */
    PH_TOKEN_POLL,   /* timer: another process is refreshing */
    PH_TOKEN_SET,    /* Redis: store the new token */
    PH_TOKEN_UNLOCK, /* Redis: release the refresh key */
    PH_TOKEN_DROP,   /* Redis: compare-and-delete a refused token */
    PH_WAIT,         /* timer: a backoff or ban pause before the next step */
    PH_PACE,         /* timer: a pause, before the admission */
    PH_HOLD,         /* timer: admitted, local pacing before the send */
    PH_ADMIT,        /* Redis: quota counter */
    PH_EGRESS,       /* Redis: the egress's minute and hour caps */
    PH_EGRESS_WAIT,  /* timer: the egress is at its cap */
    PH_SEM,          /* waiting for a global in-flight slot */
    PH_HTTP,         /* upstream call in flight */
} wc_phase;

typedef struct wc_req wc_req;
typedef struct wc_corp wc_corp;

struct wc_req {
    wc_req *next;
    wecom_api api;
    char *query; /* without access_token, already escaped; may be "" */
    char *post;  /* JSON body for POST, else NULL */
    wecom_cb cb;
    void *arg;
    int requests, retries;
    int net_failures, busy_failures, ban_pauses, token_retried;
    int refresh_polls;
    int text_only; /* no json-c tree in the result */
    wecom_cred cred;
    int errcode;
    char errmsg[160];         /* of the last answer that had an errcode */
    wecom_status fail_status; /* of the last retried failure */
    char err[WC_ERR_MAX];
    char used_token[WC_TOKEN_MAX];
};

struct wc_corp {
    loop_sem_waiter semw; /* first: the granted callback finds its corp */
    wc_corp *next;
    wecom *w;
    char *corp_id;
    /* One token per credential; the token steps work for the head's. */
    struct wc_cred {
        char *secret; /* NULL: not configured */
        char token[WC_TOKEN_MAX];
        uint64_t token_exp_us; /* local trust deadline, monotonic */
        char new_token[WC_TOKEN_MAX];
        long long new_token_ttl_ms;
        char lock_value[WC_INSTANCE_MAX + 20];
    } cred[WECOM_CRED_COUNT];
    wc_req *head, *tail;
    wc_phase phase;
    int call_token; /* the call in progress is gettoken, not the head's own */
    uv_timer_t timer;
    pacer pacer;
    uint64_t *ring; /* answer times of the last ring_n calls */
    int ring_n, ring_len, ring_pos;
    uint64_t paused_until_us;
    uint64_t admitted_for_us; /* the shared window's moment for the admitted call */
    int ban_level, ban_alerted;
    char member[WC_INSTANCE_MAX + 40]; /* this call's entry in the shared window */
    int member_live;
};

struct wecom {
    uv_loop_t *loop;
    http_client *http;
    redis_client *redis;
    char *base_url, *env, *instance;
    wecom_opts o;
    struct wc_shared *shared; /* the in-flight cap, shared by every client on the loop */
    egress_cap *egress;       /* the per-egress caps, shared through Redis; NULL: none */
    int egress_warned;
    uint64_t rng;
    wc_corp *corps;
    int closing;
    int pending; /* outstanding Redis/HTTP callbacks and open handles */
    uv_timer_t closer;
    void (*done)(void *);
    void *done_arg;
    wecom_stats stats;
    int admit_warned;
    uint64_t member_salt, member_seq;
};

/* ORGSYNC_UPSTREAM_MAX_INFLIGHT bounds a process's calls, and a worker has two
 * clients (the sync's and the realtime lookup's): one semaphore per loop, shared
 * by every client on it, counted by reference. One loop per process (and per
 * thread at most), so a plain list suffices. */
typedef struct wc_shared {
    struct wc_shared *next;
    uv_loop_t *loop;
    loop_sem sem;
    int refs;
} wc_shared;

static wc_shared *shared_list;

static wc_shared *shared_get(uv_loop_t *loop, int max_inflight)
{
    wc_shared *sh;

    for (sh = shared_list; sh; sh = sh->next)
        if (sh->loop == loop) {
            sh->refs++;
            return sh;
        }
    sh = calloc(1, sizeof(*sh));
    if (!sh)
        return NULL;
    sh->loop = loop;
    sh->refs = 1;
    loop_sem_init(&sh->sem, max_inflight);
    sh->next = shared_list;
    shared_list = sh;
    return sh;
}

static void shared_put(wc_shared *sh)
{
    wc_shared **pp;

    if (!sh || --sh->refs > 0)
        return;
    for (pp = &shared_list; *pp; pp = &(*pp)->next)
        if (*pp == sh) {
            *pp = sh->next;
            break;
        }
    free(sh);
}

static redis_script token_get_script = {
    "local v = redis.call('GET', KEYS[1]) if not v then return nil end "
    "return {v, redis.call('PTTL', KEYS[1])}",
    ""};
static redis_script cad_script = {
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end "
    "return 0",
    ""};
/* Admission of one upstream call, shared by every process (SPEC §7.2 holds for
 * the fleet, not just for one process): the rate window, then the quota.
 *
 * KEYS[1..n]: the enterprise's quota counters of today, one per API; the last
 * key: its window, a sorted set of calls scored by when each call's answer came
 * back (Redis clock, ms), or, while in flight, by an upper bound far ahead.
 * ARGV: which API (1-based), the daily quota (0 = none), the counters' TTL (s),
 * calls allowed per window, the window (ms), this call's member, the in-flight
 * bound (ms), the prefix of this client's members. Returns {0, n, ms, mine}
 * admitted (n = the API's count today), to be sent no sooner than ms from now;
 * {-1, 0} quota reached; {-2, ms} ask again after ms. Nothing is counted unless
 * admitted.
 *
 * A full window admits the call for the moment it has room: when the entry
 * per places from the newest is a window old, if that call has ended. The
 * place is booked at once, scored from that moment, so the admission's round
 * trip overlaps the wait instead of following it; a later caller counts the
 * booking as a call in flight. If that call has not ended (in flight, or a
 * booking), when the place comes free is not known yet: ask again when the
 * oldest entry leaves the window. mine = 1 when every call in the full window
 * is this client's: its own pacing (pace_wait_us) knows when those answers
 * came, sooner than Redis's clock does, and holds the same rule. */
static redis_script admit_script = {
    "redis.replicate_commands() "
    "local t = redis.call('TIME') local now = t[1] * 1000 + t[2] / 1000 "
    "local nq = #KEYS - 1 local w = KEYS[#KEYS] local win = tonumber(ARGV[5]) local per = "
    "tonumber(ARGV[4]) "
    "redis.call('ZREMRANGEBYSCORE', w, '-inf', now - win) "
    "local m = redis.call('ZCARD', w) local at = now local mine = 0 "
    "if m >= per then "
    "local b = tonumber(redis.call('ZRANGE', w, m - per, m - per, 'WITHSCORES')[2]) "
    "if b > now then local o = redis.call('ZRANGE', w, 0, 0, 'WITHSCORES') "
    "return {-2, math.max(1, math.ceil(tonumber(o[2]) + win - now))} end "
    "at = b + win mine = 1 for _, e in ipairs(redis.call('ZRANGE', w, 0, -1)) do "
    "if string.sub(e, 1, #ARGV[8]) ~= ARGV[8] then mine = 0 break end end end "
    "local q = tonumber(ARGV[2]) "
    "if q > 0 then local sum = 0 "
    "for i = 1, nq do sum = sum + (tonumber(redis.call('GET', KEYS[i])) or 0) end "
    "if sum >= q then return {-1, 0} end end "
    "local k = KEYS[tonumber(ARGV[1])] local n = redis.call('INCR', k) "
    "if n == 1 then redis.call('EXPIRE', k, tonumber(ARGV[3])) end "
    "redis.call('ZADD', w, at + tonumber(ARGV[7]), ARGV[6]) "
    "redis.call('PEXPIRE', w, math.ceil(at - now + win + tonumber(ARGV[7]))) "
    "return {0, n, math.ceil(at - now), mine}",
    ""};
/* The call's answer came back: its window entry now ends here (KEYS[1] window,
 * ARGV[1] member). Scored by Redis's clock when this arrives, which is after the
 * upstream counted the call. */
static redis_script answered_script = {
    "redis.replicate_commands() "
    "local t = redis.call('TIME') "
    "return redis.call('ZADD', KEYS[1], 'XX', t[1] * 1000 + t[2] / 1000, ARGV[1])",
    ""};

static void corp_step(wc_corp *c);
static void call_begin(wc_corp *c);
static void hold_then_send(wc_corp *c);

const char *wecom_status_name(wecom_status s)
{
    static const char *const names[] = {"ok",    "errcode", "http",  "timeout", "malformed", "busy",
                                        "token", "banned",  "quota", "redis",   "stopped"};
    if ((unsigned)s < sizeof(names) / sizeof(names[0]))
        return names[s];
    return "unknown";
}

void wecom_quota_day(time_t t, char out[9])
{
    struct tm tm;
    time_t local = t + 8 * 3600; /* the upstream's day: China Standard Time, no DST */

    gmtime_r(&local, &tm);
    snprintf(out, 9, "%04u%02u%02u", (unsigned)(tm.tm_year + 1900) % 10000u,
             (unsigned)(tm.tm_mon + 1) % 100u, (unsigned)tm.tm_mday % 100u);
}

/* ---- small helpers ------------------------------------------------------------------ */

static uint64_t ms_ceil(uint64_t us)
{
    return (us + 999) / 1000;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

/* Percent-encodes everything but RFC 3986 unreserved characters. */
static int url_escape(const char *s, char *out, size_t outlen)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;

    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        int plain = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                    (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.' || ch == '~';
        if (o + (plain ? 1 : 3) >= outlen)
            return -ENAMETOOLONG;
        if (plain) {
            out[o++] = (char)ch;
        } else {
            out[o++] = '%';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        }
    }
    out[o] = '\0';
    return 0;
}

static void key_of(const wecom *w, char *out, size_t len, const char *what, const char *corp,
                   const char *suffix)
{
    snprintf(out, len, "orgsync:%s:%s:%s%s", w->env, what, corp, suffix ? suffix : "");
}

static void set_err(wc_req *r, wecom_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(wc_req *r, wecom_status st, const char *fmt, ...)
{
    va_list ap;

    r->fail_status = st;
    va_start(ap, fmt);
    vsnprintf(r->err, sizeof(r->err), fmt, ap);
    va_end(ap);
}

static void release_pending(wecom *w);

/* ---- completing requests ------------------------------------------------------------ */

/* Pops the head, answers it and moves on to the next request. */
static void req_complete(wc_corp *c, wecom_status st, int errcode, json_object *json,
                         const char *body, size_t body_len)
{
    wecom *w = c->w;
    wc_req *r = c->head;
    wecom_result res;

    c->head = r->next;
    if (!c->head)
        c->tail = NULL;
    c->phase = PH_IDLE;
    c->call_token = 0;
    memset(&res, 0, sizeof(res));
    res.status = st;
    res.errcode = errcode;
    res.error = st == WECOM_OK ? NULL : r->err;
    res.json = json;
    res.body = body;
    res.body_len = body_len;
    res.requests = r->requests;
    res.retries = r->retries;
    res.errmsg = r->errmsg;
    if (st != WECOM_OK && !r->err[0])
        snprintf(r->err, sizeof(r->err), "%s: %s", wecom_api_names[r->api], wecom_status_name(st));
    r->cb(r->arg, &res);
    free(r->query);
    free(r->post);
    free(r);
    /* The callback may have closed the client; the closer keeps w alive. */
    if (!w->closing)
        corp_step(c);
}

static void req_fail(wc_corp *c, wecom_status st)
{
    req_complete(c, st, c->head->errcode, NULL, NULL, 0);
}

/* ---- timers ------------------------------------------------------------------------- */

static void on_corp_timer(uv_timer_t *t)
{
    wc_corp *c = t->data;

    if (c->w->closing)
        return;
    switch (c->phase) {
    case PH_KICK:
    case PH_WAIT:
    case PH_TOKEN_POLL:
        c->phase = PH_IDLE;
        corp_step(c);
        break;
    case PH_PACE:
        call_begin(c);
        break;
    case PH_HOLD:
    case PH_EGRESS_WAIT:
        hold_then_send(c);
        break;
    default:
        break;
    }
}

static void corp_timer(wc_corp *c, wc_phase ph, uint64_t ms)
{
    c->phase = ph;
    uv_timer_start(&c->timer, on_corp_timer, ms, 0);
}

/* ---- Redis steps -------------------------------------------------------------------- */

static void on_token_get(void *arg, redisReply *reply, const char *err);
static void on_token_lock(void *arg, redisReply *reply, const char *err);
static void on_token_set(void *arg, redisReply *reply, const char *err);
static void on_token_unlock(void *arg, redisReply *reply, const char *err);
static void on_token_drop(void *arg, redisReply *reply, const char *err);
static void on_admit(void *arg, redisReply *reply, const char *err);

/* Every Redis/HTTP callback starts here: in a closing client it only counts down. */
static int op_back(wc_corp *c)
{
    wecom *w = c->w;

    w->pending--;
    if (w->closing) {
        release_pending(w);
        return 0;
    }
    return 1;
}

/* A Redis failure in a step is retried like a network failure of the call. */
static void redis_step_failed(wc_corp *c, const char *what, const char *err);

static int redis_started(wc_corp *c, wc_phase ph, int rc, const char *what)
{
    if (rc == 0) {
        c->phase = ph;
        c->w->pending++;
        return 0;
    }
    redis_step_failed(c, what, rc == -ENOMEM ? "out of memory" : "cannot queue command");
    return rc;
}

/* The credential the head's request uses. */
static struct wc_cred *head_cred(wc_corp *c)
{
    return &c->cred[c->head ? c->head->cred : WECOM_CRED_APP];
}

/* token:<corp> for the app secret (SPEC §4), token:<corp>:contact for the
 * contact-sync secret; suffix (":refresh") after either. */
static void token_key(wc_corp *c, char *out, size_t len, const char *suffix)
{
    char sfx[32];
    snprintf(sfx, sizeof(sfx), "%s%s",
             c->head && c->head->cred == WECOM_CRED_CONTACT ? ":contact" : "",
             suffix ? suffix : "");
    key_of(c->w, out, len, "token", c->corp_id, sfx);
}

static void token_get(wc_corp *c)
{
    char key[256];
    const char *argv[1] = {key};

    token_key(c, key, sizeof(key), NULL);
    redis_started(c, PH_TOKEN_GET,
                  redis_eval(c->w->redis, &token_get_script, 1, 1, argv, on_token_get, c),
                  "token cache");
}

static void token_lock(wc_corp *c)
{
    struct wc_cred *cr = head_cred(c);
    char key[256];

    token_key(c, key, sizeof(key), ":refresh");
    snprintf(cr->lock_value, sizeof(cr->lock_value), "%s|%llx", c->w->instance,
             (unsigned long long)backoff_rand(&c->w->rng));
    redis_started(c, PH_TOKEN_LOCK,
                  redis_cmd(c->w->redis, on_token_lock, c, "SET %s %s NX PX %d", key,
                            cr->lock_value, WC_REFRESH_LOCK_MS),
                  "token refresh key");
}

static void on_token_get(void *arg, redisReply *reply, const char *err)
{
    wc_corp *c = arg;

    if (!op_back(c))
        return;
    if (err) {
        redis_step_failed(c, "token cache", err);
        return;
    }
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
        reply->element[0]->type == REDIS_REPLY_STRING && reply->element[0]->len > 0 &&
        reply->element[0]->len < WC_TOKEN_MAX) {
        long long pttl =
            reply->element[1]->type == REDIS_REPLY_INTEGER ? reply->element[1]->integer : 0;
        uint64_t trust = pttl > 0 ? (uint64_t)pttl * 1000 : WC_LOCAL_TOKEN_MAX_US;
        if (trust > WC_LOCAL_TOKEN_MAX_US)
            trust = WC_LOCAL_TOKEN_MAX_US;
        struct wc_cred *cr = head_cred(c);
        memcpy(cr->token, reply->element[0]->str, reply->element[0]->len);
        cr->token[reply->element[0]->len] = '\0';
        cr->token_exp_us = time_mono_us() + trust;
        c->phase = PH_IDLE;
        corp_step(c);
        return;
    }
    token_lock(c);
}

static void on_token_lock(void *arg, redisReply *reply, const char *err)
{
    wc_corp *c = arg;
    wc_req *r;

    if (!op_back(c))
        return;
    if (err) {
        redis_step_failed(c, "token refresh key", err);
        return;
    }
    r = c->head;
    if (reply->type == REDIS_REPLY_STATUS) {
        /* Ours: fetch a token with a gettoken call of this request. */
        c->call_token = 1;
        call_begin(c);
        return;
    }
    if (++r->refresh_polls > WC_REFRESH_MAX_POLLS) {
        set_err(r, WECOM_E_TOKEN, "gettoken: another process held the refresh key for %d ms",
                WC_REFRESH_MAX_POLLS * WC_REFRESH_POLL_MS);
        req_fail(c, WECOM_E_TOKEN);
        return;
    }
    corp_timer(c, PH_TOKEN_POLL, WC_REFRESH_POLL_MS);
}

/* gettoken answered: store the token for everyone, then release the key. */
static void token_store(wc_corp *c, const char *token, long long expires_in)
{
    struct wc_cred *cr = head_cred(c);
    char key[256], px[32];
    long long margin = expires_in / 10 < 300 ? expires_in / 10 : 300;
    long long ttl_ms = (expires_in - margin) * 1000;

    if (ttl_ms < 1000)
        ttl_ms = 1000;
    snprintf(cr->new_token, sizeof(cr->new_token), "%s", token);
    cr->new_token_ttl_ms = ttl_ms;
    snprintf(px, sizeof(px), "%lld", ttl_ms);
    token_key(c, key, sizeof(key), NULL);
    c->w->stats.token_refreshes++;
    if (redis_cmd(c->w->redis, on_token_set, c, "SET %s %s PX %s", key, token, px) == 0) {
        c->phase = PH_TOKEN_SET;
        c->w->pending++;
        return;
    }
    /* Not shared, but good for this process: go on as if Redis had failed. */
    c->w->pending++;
    on_token_set(c, NULL, "cannot queue command");
}

static void on_token_set(void *arg, redisReply *reply, const char *err)
{
    wc_corp *c = arg;
    struct wc_cred *cr = head_cred(c);
    char key[256];
    const char *argv[2] = {key, cr->lock_value};
    uint64_t trust;

    (void)reply;
    if (!op_back(c))
        return;
    /* Even if Redis failed to store it, the token is good for this process. */
    if (err)
        log_warn("wecom: could not cache token", LF_S("corp_id", c->corp_id), LF_S("error", err));
    trust = (uint64_t)cr->new_token_ttl_ms * 1000;
    if (trust > WC_LOCAL_TOKEN_MAX_US)
        trust = WC_LOCAL_TOKEN_MAX_US;
    memcpy(cr->token, cr->new_token, sizeof(cr->token));
    cr->token_exp_us = time_mono_us() + trust;
    token_key(c, key, sizeof(key), ":refresh");
    if (redis_eval(c->w->redis, &cad_script, 1, 2, argv, on_token_unlock, c) == 0) {
        c->phase = PH_TOKEN_UNLOCK;
        c->w->pending++;
        return;
    }
    c->phase = PH_IDLE;
    corp_step(c);
}

static void on_token_unlock(void *arg, redisReply *reply, const char *err)
{
    wc_corp *c = arg;

    (void)reply;
    (void)err; /* the key expires anyway */
    if (!op_back(c))
        return;
    c->phase = PH_IDLE;
    corp_step(c);
}

/* The upstream refused the token: forget it (in Redis only if nobody replaced
 * it yet), then the head fetches or reads a fresh one and is sent again. */
static void token_drop(wc_corp *c, const char *used)
{
    struct wc_cred *cr = head_cred(c);
    char key[256];
    const char *argv[2] = {key, used};

    if (strcmp(cr->token, used) == 0) {
        cr->token[0] = '\0';
        cr->token_exp_us = 0;
    }
    token_key(c, key, sizeof(key), NULL);
    redis_started(c, PH_TOKEN_DROP,
                  redis_eval(c->w->redis, &cad_script, 1, 2, argv, on_token_drop, c),
                  "token cache");
}

static void on_token_drop(void *arg, redisReply *reply, const char *err)
{
    wc_corp *c = arg;

    (void)reply;
    if (!op_back(c))
        return;
    if (err)
        log_warn("wecom: could not drop refused token", LF_S("corp_id", c->corp_id),
                 LF_S("error", err));
    c->phase = PH_IDLE;
    corp_step(c);
}

/* ---- the upstream call -------------------------------------------------------------- */

/* Microseconds until this process's pacing lets a call go (0 = now): the
 * pacer's schedule (one per 1/rate, a late call's lateness made up by the next
 * ones), the moment the shared window admitted the call for, and the arrival
 * window over the last answers. The window is what keeps the upstream's
 * count: the schedule only spreads the calls over the second. */
static uint64_t pace_wait_us(const wc_corp *c, uint64_t now)
{
    uint64_t wait = pacer_wait_us(&c->pacer, now), next;

    if (c->admitted_for_us > now && c->admitted_for_us - now > wait)
        wait = c->admitted_for_us - now;
    if (c->ring_len == c->ring_n) {
        /* ring[ring_pos] is the oldest: the answer ring_n calls back. */
        next = c->ring[c->ring_pos] + WC_WINDOW_US + WC_WINDOW_MARGIN_US;
        if (next > now && next - now > wait)
            wait = next - now;
    }
    return wait;
}

static void admit(wc_corp *c);

/* A call starts with its admission (shared window, quota), after any pause.
 * The admission is asked for before the local pacing wait, not after it, so its
 * round trip overlaps the wait instead of adding to every interval: admitting
 * early only makes the shared window more conservative, since the call counts
 * from its admission on. */
static void call_begin(wc_corp *c)
{
    uint64_t now = time_mono_us();

    if (c->paused_until_us > now) {
        corp_timer(c, PH_PACE, ms_ceil(c->paused_until_us - now));
        return;
    }
    admit(c);
}

static void on_egress(void *arg, int status, long long wait_ms, long long in_minute,
                      long long in_hour);

/* Admitted: wait for local pacing, then for the egress's caps (the upstream's
 * per-IP limits, shared by every enterprise and process leaving from this
 * egress), then for an in-flight slot. The egress is asked last so that a call
 * it counts is sent at once, and a wait for it holds no slot. */
static void hold_then_send(wc_corp *c)
{
    uint64_t wait = pace_wait_us(c, time_mono_us());
    wecom *w = c->w;

    if (wait > 0) {
        metrics_counter_add(M_PACING_WAITS, NULL, 1);
        metrics_counter_add(M_PACING_WAIT_SECONDS, NULL, (double)wait / 1e6);
        corp_timer(c, PH_HOLD, ms_ceil(wait));
        return;
    }
    if (w->egress && egress_cap_admit(w->egress, on_egress, c) == 0) {
        c->phase = PH_EGRESS;
        w->pending++;
        return;
    }
    c->phase = PH_SEM;
    loop_sem_wait(&w->shared->sem, &c->semw);
}

static void on_egress(void *arg, int status, long long wait_ms, long long in_minute,
                      long long in_hour)
{
    wc_corp *c = arg;
    wecom *w = c->w;

    (void)in_minute;
    (void)in_hour;
    if (!op_back(c))
        return;
    if (status == EGRESS_WAIT) {
        w->stats.egress_waits++;
        corp_timer(c, PH_EGRESS_WAIT, (uint64_t)(wait_ms > 0 ? wait_ms : 1));
        return;
    }
    /* Like the shared window: without Redis the caps cannot be counted, and the
     * sync goes on under its per-enterprise pacing rather than stop. */
    if (status < 0 && !w->egress_warned) {
        log_warn("wecom: egress caps unavailable, calls not counted against them",
                 LF_I("err", status));
        w->egress_warned = 1;
    }
    c->phase = PH_SEM;
    loop_sem_wait(&w->shared->sem, &c->semw);
}

static void admit(wc_corp *c)
{
    wecom *w = c->w;
    wecom_api api = c->call_token ? WECOM_API_GETTOKEN : c->head->api;
    char keys[WECOM_API_COUNT + 1][256], day[9], which[16], quota[24], per[16], win[24],
        inflight[24], mine[WC_INSTANCE_MAX + 20];
    const char *argv[WECOM_API_COUNT + 9];

    if (w->o.gate && !w->o.gate(w->o.gate_arg)) {
        set_err(c->head, WECOM_E_STOPPED, "%s: not sent: stopped (lease not valid)",
                wecom_api_names[api]);
        req_fail(c, WECOM_E_STOPPED);
        return;
    }
    wecom_quota_day(time(NULL), day);
    for (int i = 0; i < WECOM_API_COUNT; i++) {
        snprintf(keys[i], sizeof(keys[i]), "orgsync:%s:quota:%s:%s:%s", w->env, c->corp_id,
                 wecom_api_names[i], day);
        argv[i] = keys[i];
    }
    key_of(w, keys[WECOM_API_COUNT], sizeof(keys[0]), "rate", c->corp_id, NULL);
    argv[WECOM_API_COUNT] = keys[WECOM_API_COUNT];
    snprintf(which, sizeof(which), "%d", (int)api + 1);
    snprintf(quota, sizeof(quota), "%ld", w->o.daily_quota);
    snprintf(per, sizeof(per), "%d", c->ring_n);
    snprintf(win, sizeof(win), "%llu",
             (unsigned long long)((WC_WINDOW_US + WC_WINDOW_MARGIN_US) / 1000));
    snprintf(inflight, sizeof(inflight), "%d", w->o.timeout_ms + 1000);
    snprintf(mine, sizeof(mine), "%s|%llx|", w->instance, (unsigned long long)w->member_salt);
    snprintf(c->member, sizeof(c->member), "%s%llu", mine, (unsigned long long)++w->member_seq);
    argv[WECOM_API_COUNT + 1] = which;
    argv[WECOM_API_COUNT + 2] = quota;
    argv[WECOM_API_COUNT + 3] = "172800"; /* two days: yesterday's stays readable */
    argv[WECOM_API_COUNT + 4] = per;
    argv[WECOM_API_COUNT + 5] = win;
    argv[WECOM_API_COUNT + 6] = c->member;
    argv[WECOM_API_COUNT + 7] = inflight;
    argv[WECOM_API_COUNT + 8] = mine;
    redis_started(c, PH_ADMIT,
                  redis_eval(w->redis, &admit_script, WECOM_API_COUNT + 1, WECOM_API_COUNT + 9,
                             argv, on_admit, c),
                  "admission");
}

static void on_sem_granted(loop_sem_waiter *sw);
static void answered(wc_corp *c);

static void on_admit(void *arg, redisReply *reply, const char *err)
{
    wc_corp *c = arg;
    wecom *w = c->w;

    if (!op_back(c))
        return;
    c->member_live = 0;
    c->admitted_for_us = 0;
    if (err || reply->type != REDIS_REPLY_ARRAY || reply->elements < 2 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER ||
        reply->element[1]->type != REDIS_REPLY_INTEGER ||
        (reply->element[0]->integer == 0 &&
         (reply->elements != 4 || reply->element[2]->type != REDIS_REPLY_INTEGER ||
          reply->element[3]->type != REDIS_REPLY_INTEGER))) {
        /* Without a quota, Redis only adds the fleet-wide view of the window (this
         * process's own pacing still holds), so an outage must not stop the sync;
         * with a quota, nothing is sent uncounted. */
        if (w->o.daily_quota > 0) {
            redis_step_failed(c, "admission", err ? err : "unexpected reply");
            return;
        }
        if (!w->admit_warned)
            log_warn("wecom: shared admission unavailable, calls neither counted nor shared",
                     LF_S("error", err ? err : "unexpected reply"));
        w->admit_warned = 1;
    } else if (reply->element[0]->integer == -1) {
        set_err(c->head, WECOM_E_QUOTA, "daily quota of %ld upstream calls reached",
                w->o.daily_quota);
        req_fail(c, WECOM_E_QUOTA);
        return;
    } else if (reply->element[0]->integer == -2) {
        /* Another process (or an earlier run) used this second's share. */
        w->stats.shared_waits++;
        corp_timer(c, PH_PACE, (uint64_t)reply->element[1]->integer);
        return;
    } else {
        /* Counted from the reply's arrival, which is after Redis's now. If
         * every call in the window is this client's, the arrival window over
         * its own answers (pace_wait_us) is the same rule with this host's
         * earlier receipt times instead of Redis's: that one is enough. */
        c->member_live = 1;
        if (reply->element[2]->integer > 0) {
            w->stats.shared_booked++;
            if (reply->element[3]->integer)
                w->stats.shared_booked_own++;
            else
                c->admitted_for_us = time_mono_us() + (uint64_t)reply->element[2]->integer * 1000;
        }
    }
    hold_then_send(c);
}

static void on_http(void *arg, const http_response *res);

static int build_url(wc_corp *c, char **out)
{
    wecom *w = c->w;
    wc_req *r = c->head;
    char id[200], sec[400], tok[3 * WC_TOKEN_MAX];
    size_t need;
    char *url;
    int rc;

    if (c->call_token) {
        if ((rc = url_escape(c->corp_id, id, sizeof(id))) ||
            (rc = url_escape(head_cred(c)->secret, sec, sizeof(sec))))
            return rc;
        need = strlen(w->base_url) + strlen(id) + strlen(sec) + 64;
        if (!(url = malloc(need)))
            return -ENOMEM;
        snprintf(url, need, "%s/cgi-bin/gettoken?corpid=%s&corpsecret=%s", w->base_url, id, sec);
    } else {
        if ((rc = url_escape(head_cred(c)->token, tok, sizeof(tok))))
            return rc;
        need = strlen(w->base_url) + strlen(tok) + strlen(r->query) + 64;
        if (!(url = malloc(need)))
            return -ENOMEM;
        snprintf(url, need, "%s/cgi-bin/%s?access_token=%s%s%s", w->base_url,
                 wecom_api_names[r->api], tok, r->query[0] ? "&" : "", r->query);
    }
    *out = url;
    return 0;
}

static void on_sem_granted(loop_sem_waiter *sw)
{
    wc_corp *c = (wc_corp *)sw;
    wecom *w = c->w;
    wc_req *r = c->head;
    char *url = NULL;
    int rc;

    /* The lease may have ended while this call waited for pacing. */
    if (w->o.gate && !w->o.gate(w->o.gate_arg)) {
        answered(c);
        loop_sem_release(&w->shared->sem);
        set_err(r, WECOM_E_STOPPED, "%s: not sent: stopped (lease not valid)",
                wecom_api_names[c->call_token ? WECOM_API_GETTOKEN : r->api]);
        req_fail(c, WECOM_E_STOPPED);
        return;
    }
    w->stats.inflight++;
    if (w->stats.inflight > w->stats.max_inflight)
        w->stats.max_inflight = w->stats.inflight;
    rc = build_url(c, &url);
    if (rc == 0) {
        if (!c->call_token)
            snprintf(r->used_token, sizeof(r->used_token), "%s", head_cred(c)->token);
        pacer_start(&c->pacer, time_mono_us());
        if (r->post && !c->call_token)
            rc = http_client_post(w->http, url, "application/json", r->post, strlen(r->post),
                                  w->o.timeout_ms, on_http, c);
        else
            rc = http_client_get(w->http, url, w->o.timeout_ms, on_http, c);
        if (rc)
            pacer_done(&c->pacer);
    }
    free(url);
    if (rc) {
        w->stats.inflight--;
        answered(c);
        loop_sem_release(&w->shared->sem);
        set_err(r, WECOM_E_HTTP, "%s: cannot send (%s)", wecom_api_names[r->api], strerror(-rc));
        req_fail(c, WECOM_E_HTTP);
        return;
    }
    c->phase = PH_HTTP;
    w->pending++;
    r->requests++;
    w->stats.requests++;
}

/* A retryable failure: back off and go again, or give up. */
static void retry_or_fail(wc_corp *c, int *counter, int limit, wecom_status st)
{
    wecom *w = c->w;
    wc_req *r = c->head;
    uint32_t delay;

    if (*counter >= limit) {
        req_fail(c, st);
        return;
    }
    delay = backoff_full_jitter_ms((unsigned)*counter, w->o.backoff_base_ms, w->o.backoff_cap_ms,
                                   &w->rng);
    (*counter)++;
    r->retries++;
    w->stats.retries++;
    log_debug("wecom: retrying", LF_S("corp_id", c->corp_id), LF_S("error", r->err),
              LF_I("delay_ms", delay));
    if (c->call_token) {
        /* Keep the refresh key ours: go straight back to the gettoken call. */
        corp_timer(c, PH_PACE, delay);
        return;
    }
    c->paused_until_us = time_mono_us() + (uint64_t)delay * 1000;
    c->phase = PH_IDLE;
    corp_step(c);
}

static void redis_step_failed(wc_corp *c, const char *what, const char *err)
{
    wc_req *r = c->head;

    set_err(r, WECOM_E_REDIS, "%s: redis: %s", what, err);
    c->phase = PH_IDLE;
    retry_or_fail(c, &r->net_failures, c->w->o.max_retries, WECOM_E_REDIS);
}

static void alert(wc_corp *c, const char *kind, const char *msg)
{
    wecom *w = c->w;

    if (w->o.alert)
        w->o.alert(w->o.alert_arg, kind, c->corp_id, msg);
}

/* An answer checked without building a tree (json_scan.h): the root object,
 * its integer errcode and its errmsg. */
typedef struct answer {
    js_val root;
    int errcode;
    char errmsg[128];
} answer;

static int parse_body(const char *body, size_t len, answer *a, char *why, size_t whylen)
{
    js_val v;
    long long ec;

    if (!body || len == 0) {
        snprintf(why, whylen, "empty body");
        return -1;
    }
    if (js_check(body, len, why, whylen))
        return -1;
    js_root(body, len, &a->root);
    if (a->root.type != JS_OBJECT || !js_get(&a->root, "errcode", &v) || !js_int(&v, &ec) ||
        ec < INT_MIN || ec > INT_MAX) {
        snprintf(why, whylen, "no integer errcode");
        return -1;
    }
    a->errcode = (int)ec;
    a->errmsg[0] = '\0';
    if (js_get(&a->root, "errmsg", &v))
        js_str_copy(&v, a->errmsg, sizeof(a->errmsg));
    return 0;
}

/* Answer times feed the arrival window (see the top of the file). */
static void ring_push(wc_corp *c, uint64_t t)
{
    if (c->ring_len < c->ring_n) {
        c->ring[(c->ring_pos + c->ring_len) % c->ring_n] = t;
        c->ring_len++;
        return;
    }
    c->ring[c->ring_pos] = t;
    c->ring_pos = (c->ring_pos + 1) % c->ring_n;
}

static void on_answered(void *arg, redisReply *reply, const char *err)
{
    wecom *w = arg;

    (void)reply;
    (void)err; /* if lost, the entry ends at its in-flight bound instead */
    w->pending--;
    if (w->closing)
        release_pending(w);
}

/* Fire and forget: the next admission goes on the same connection after it. */
static void answered(wc_corp *c)
{
    wecom *w = c->w;
    char key[256];
    const char *argv[2] = {key, c->member};

    if (!c->member_live)
        return;
    c->member_live = 0;
    key_of(w, key, sizeof(key), "rate", c->corp_id, NULL);
    if (redis_eval(w->redis, &answered_script, 1, 2, argv, on_answered, w) == 0)
        w->pending++;
}

/* Upstream answers by API and outcome (an errcode, or http/timeout/malformed). */
static void count_answer(wecom_api api, const char *outcome, double seconds)
{
    char labels[96];
    snprintf(labels, sizeof(labels), "api=\"%s\",errcode=\"%s\"", wecom_api_names[api], outcome);
    metrics_counter_add(M_UPSTREAM_REQUESTS, labels, 1);
    snprintf(labels, sizeof(labels), "api=\"%s\"", wecom_api_names[api]);
    metrics_observe(M_UPSTREAM_DURATION, labels, seconds);
}

static void gettoken_answered(wc_corp *c, const answer *a)
{
    wc_req *r = c->head;
    js_val t, e;
    char token[WC_TOKEN_MAX];
    long long exp = 0;
    int n;

    c->call_token = 0;
    if (a->errcode != 0) {
        r->errcode = a->errcode;
        set_err(r, WECOM_E_TOKEN, "gettoken: errcode %d (%.120s)", a->errcode, a->errmsg);
        req_fail(c, WECOM_E_TOKEN);
        return;
    }
    n = js_get(&a->root, "access_token", &t) ? js_str_copy(&t, token, sizeof(token)) : -1;
    if (n <= 0 || n >= WC_TOKEN_MAX) {
        set_err(r, WECOM_E_MALFORMED, "gettoken: answer without a usable access_token");
        req_fail(c, WECOM_E_MALFORMED);
        return;
    }
    if (!js_get(&a->root, "expires_in", &e) || !js_int(&e, &exp) || exp <= 0)
        exp = 7200;
    token_store(c, token, exp);
}

static int is_token_error(int ec)
{
    return ec == 40014 || ec == 42001 || ec == 40001;
}

static void ban(wc_corp *c, int errcode, const char *errmsg)
{
    wecom *w = c->w;
    wc_req *r = c->head;
    uint64_t pause = w->o.ban_pause_ms;
    char msg[256];

    for (int i = 0; i < c->ban_level && pause < w->o.ban_pause_cap_ms; i++)
        pause *= 2;
    if (pause > w->o.ban_pause_cap_ms)
        pause = w->o.ban_pause_cap_ms;
    r->errcode = errcode;
    set_err(r, WECOM_E_BANNED, "%s: errcode %d (%.120s)", wecom_api_names[r->api], errcode, errmsg);
    if (r->ban_pauses >= w->o.ban_retries) {
        req_fail(c, WECOM_E_BANNED);
        return;
    }
    r->ban_pauses++;
    r->retries++;
    w->stats.retries++;
    w->stats.bans++;
    c->ban_level++;
    c->paused_until_us = time_mono_us() + pause * 1000;
    snprintf(msg, sizeof(msg), "upstream limit errcode %d on %s: enterprise paused %llu ms",
             errcode, wecom_api_names[r->api], (unsigned long long)pause);
    log_warn("wecom: enterprise paused", LF_S("corp_id", c->corp_id), LF_I("errcode", errcode),
             LF_I("pause_ms", pause));
    if (!c->ban_alerted)
        alert(c, "ban", msg);
    c->ban_alerted = 1;
    c->phase = PH_IDLE;
    corp_step(c);
}

static void on_http(void *arg, const http_response *res)
{
    wc_corp *c = arg;
    wecom *w = c->w;
    wc_req *r;
    wecom_api api;
    json_object *j = NULL;
    json_tokener *tok = NULL;
    answer a;
    int errcode = 0;
    char why[160];

    w->stats.inflight--;
    loop_sem_release(&w->shared->sem);
    pacer_done(&c->pacer);
    ring_push(c, time_mono_us());
    answered(c);
    if (!op_back(c))
        return;
    r = c->head;
    api = c->call_token ? WECOM_API_GETTOKEN : r->api;
    if (res->error || res->status != 200) {
        wecom_status st = res->timed_out ? WECOM_E_TIMEOUT : WECOM_E_HTTP;
        count_answer(api, res->timed_out ? "timeout" : "http", res->seconds);
        if (res->error)
            set_err(r, st, "%s: %s", wecom_api_names[api], res->error);
        else
            set_err(r, st, "%s: HTTP %ld", wecom_api_names[api], res->status);
        retry_or_fail(c, &r->net_failures, w->o.max_retries, st);
        return;
    }
    if (parse_body(res->body, res->body_len, &a, why, sizeof(why))) {
        count_answer(api, "malformed", res->seconds);
        set_err(r, WECOM_E_MALFORMED, "%s: malformed answer: %s", wecom_api_names[api], why);
        retry_or_fail(c, &r->net_failures, w->o.max_retries, WECOM_E_MALFORMED);
        return;
    }
    errcode = a.errcode;
    snprintf(r->errmsg, sizeof(r->errmsg), "%s", a.errmsg);
    {
        char code[16];
        snprintf(code, sizeof(code), "%d", errcode);
        count_answer(api, code, res->seconds);
    }
    if (errcode == 45009 || errcode == 45033) {
        ban(c, errcode, a.errmsg);
        return;
    }
    c->ban_level = 0;
    c->ban_alerted = 0;
    if (errcode == -1) {
        r->errcode = errcode;
        set_err(r, WECOM_E_BUSY, "%s: errcode -1 (%.120s)", wecom_api_names[api], a.errmsg);
        retry_or_fail(c, &r->busy_failures, w->o.busy_retries, WECOM_E_BUSY);
        return;
    }
    if (c->call_token) {
        gettoken_answered(c, &a);
        return;
    }
    if (is_token_error(errcode)) {
        char msg[200];
        r->errcode = errcode;
        set_err(r, WECOM_E_TOKEN, "%s: errcode %d (%.120s)", wecom_api_names[api], errcode,
                a.errmsg);
        w->stats.token_invalidations++;
        snprintf(msg, sizeof(msg), "access token refused with errcode %d on %s%s", errcode,
                 wecom_api_names[api], r->token_retried ? " after a refresh" : "");
        log_warn("wecom: access token refused", LF_S("corp_id", c->corp_id),
                 LF_I("errcode", errcode), LF_I("after_refresh", r->token_retried));
        alert(c, "token_invalid", msg);
        if (r->token_retried) {
            req_fail(c, WECOM_E_TOKEN);
            return;
        }
        r->token_retried = 1;
        r->retries++;
        w->stats.retries++;
        token_drop(c, r->used_token);
        return;
    }
    r->errcode = errcode;
    if (errcode != 0)
        set_err(r, WECOM_E_ERRCODE, "%s with the %s: errcode %d (%.160s)", wecom_api_names[api],
                wecom_cred_name(r->cred), errcode, a.errmsg);
    /* Text-only requests skip the tree: the text was checked, which is all they need. */
    if (!r->text_only) {
        tok = json_tokener_new();
        if (tok) {
            j = json_tokener_parse_ex(tok, res->body, (int)res->body_len);
            json_tokener_free(tok);
        }
        if (!j) {
            set_err(r, WECOM_E_MALFORMED, "%s: answer not representable: out of memory",
                    wecom_api_names[api]);
            req_fail(c, WECOM_E_MALFORMED);
            return;
        }
    }
    req_complete(c, errcode == 0 ? WECOM_OK : WECOM_E_ERRCODE, errcode, j, res->body,
                 res->body_len);
    json_object_put(j);
}

/* ---- the state machine -------------------------------------------------------------- */

/* Decides the head's next step when nothing is in progress. */
static void corp_step(wc_corp *c)
{
    uint64_t now = time_mono_us();

    if (c->phase != PH_IDLE || !c->head || c->w->closing)
        return;
    if (c->paused_until_us > now) {
        corp_timer(c, PH_WAIT, ms_ceil(c->paused_until_us - now));
        return;
    }
    struct wc_cred *cr = head_cred(c);
    if (!cr->token[0] || now >= cr->token_exp_us) {
        cr->token[0] = '\0';
        token_get(c);
        return;
    }
    call_begin(c);
}

static wc_corp *corp_find(const wecom *w, const char *corp_id)
{
    for (wc_corp *c = w->corps; c; c = c->next)
        if (strcmp(c->corp_id, corp_id) == 0)
            return c;
    return NULL;
}

static int enqueue(wecom *w, const char *corp_id, wecom_api api, wecom_cred cred, char *query,
                   char *post, int text_only, wecom_cb cb, void *arg)
{
    wc_corp *c;
    wc_req *r;

    if (!w || !corp_id || !cb || !query) {
        free(query);
        free(post);
        return query ? -EINVAL : -ENOMEM;
    }
    if (w->closing) {
        free(query);
        free(post);
        return -ESHUTDOWN;
    }
    c = corp_find(w, corp_id);
    if (!c || (unsigned)cred >= WECOM_CRED_COUNT || !c->cred[cred].secret) {
        free(query);
        free(post);
        return -ENOENT;
    }
    r = calloc(1, sizeof(*r));
    if (!r) {
        free(query);
        free(post);
        return -ENOMEM;
    }
    r->api = api;
    r->cred = cred;
    r->text_only = text_only;
    r->query = query;
    r->post = post;
    r->cb = cb;
    r->arg = arg;
    if (c->tail)
        c->tail->next = r;
    else
        c->head = r;
    c->tail = r;
    /* Start on a later loop turn, so no callback runs inside this call. */
    if (c->phase == PH_IDLE && c->head == r)
        corp_timer(c, PH_KICK, 0);
    return 0;
}

static char *query_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *query_printf(const char *fmt, ...)
{
    va_list ap;
    char tmp[1024];
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(tmp))
        return NULL;
    return xstrdup(tmp);
}

int wecom_department_list(wecom *w, const char *corp_id, long long dept_id, wecom_cb cb, void *arg)
{
    return wecom_department_list_as(w, corp_id, WECOM_CRED_APP, dept_id, cb, arg);
}

int wecom_department_list_as(wecom *w, const char *corp_id, wecom_cred cred, long long dept_id,
                             wecom_cb cb, void *arg)
{
    char *q = dept_id > 0 ? query_printf("id=%lld", dept_id) : xstrdup("");
    return enqueue(w, corp_id, WECOM_API_DEPT_LIST, cred, q, NULL, 0, cb, arg);
}

int wecom_department_simplelist(wecom *w, const char *corp_id, wecom_cred cred, wecom_cb cb,
                                void *arg)
{
    return enqueue(w, corp_id, WECOM_API_DEPT_SIMPLELIST, cred, xstrdup(""), NULL, 0, cb, arg);
}

int wecom_user_list(wecom *w, const char *corp_id, long long dept_id, wecom_cb cb, void *arg)
{
    if (dept_id <= 0)
        return -EINVAL;
    return enqueue(w, corp_id, WECOM_API_USER_LIST, WECOM_CRED_APP,
                   query_printf("department_id=%lld", dept_id), NULL, 0, cb, arg);
}

int wecom_user_list_text(wecom *w, const char *corp_id, long long dept_id, wecom_cb cb, void *arg)
{
    return wecom_user_list_text_as(w, corp_id, WECOM_CRED_APP, dept_id, cb, arg);
}

int wecom_user_list_text_as(wecom *w, const char *corp_id, wecom_cred cred, long long dept_id,
                            wecom_cb cb, void *arg)
{
    if (dept_id <= 0)
        return -EINVAL;
    return enqueue(w, corp_id, WECOM_API_USER_LIST, cred,
                   query_printf("department_id=%lld", dept_id), NULL, 1, cb, arg);
}

/* The JSON body a writer put in b, handed over (b is left empty); NULL on out
 * of memory. */
static char *post_body(buf *b)
{
    char *post = b->oom ? NULL : buf_detach(b, NULL);
    buf_free(b);
    return post;
}

int wecom_user_list_id(wecom *w, const char *corp_id, wecom_cred cred, const char *cursor,
                       int limit, wecom_cb cb, void *arg)
{
    buf b;
    jw j;
    char *post;

    if (limit < 1 || limit > 10000 || (cursor && strlen(cursor) > 1024))
        return -EINVAL;
    buf_init(&b);
    jw_init(&j, &b);
    jw_obj_begin(&j);
    if (cursor && *cursor)
        jw_kstr(&j, "cursor", cursor);
    jw_kint(&j, "limit", limit);
    jw_obj_end(&j);
    if (!(post = post_body(&b)))
        return -ENOMEM;
    return enqueue(w, corp_id, WECOM_API_USER_LIST_ID, cred, xstrdup(""), post, 0, cb, arg);
}

int wecom_export_user(wecom *w, const char *corp_id, wecom_cred cred, const char *aeskey,
                      long block_size, wecom_cb cb, void *arg)
{
    buf b;
    jw j;
    char *post;

    if (!aeskey || strlen(aeskey) != 43 || block_size < 10000 || block_size > 1000000)
        return -EINVAL;
    buf_init(&b);
    jw_init(&j, &b);
    jw_obj_begin(&j);
    jw_kstr(&j, "encoding_aeskey", aeskey);
    jw_kint(&j, "block_size", block_size);
    jw_obj_end(&j);
    if (!(post = post_body(&b)))
        return -ENOMEM;
    return enqueue(w, corp_id, WECOM_API_EXPORT_USER, cred, xstrdup(""), post, 0, cb, arg);
}

int wecom_export_get_result(wecom *w, const char *corp_id, wecom_cred cred, const char *jobid,
                            wecom_cb cb, void *arg)
{
    char esc[400];

    if (!jobid || !*jobid || url_escape(jobid, esc, sizeof(esc)))
        return -EINVAL;
    return enqueue(w, corp_id, WECOM_API_EXPORT_GET_RESULT, cred, query_printf("jobid=%s", esc),
                   NULL, 0, cb, arg);
}

int wecom_user_get(wecom *w, const char *corp_id, const char *userid, wecom_cb cb, void *arg)
{
    char esc[400];

    if (!userid || !*userid || url_escape(userid, esc, sizeof(esc)))
        return -EINVAL;
    return enqueue(w, corp_id, WECOM_API_USER_GET, WECOM_CRED_APP, query_printf("userid=%s", esc),
                   NULL, 0, cb, arg);
}

int wecom_getuserid(wecom *w, const char *corp_id, const char *mobile, wecom_cb cb, void *arg)
{
    buf b;
    jw j;
    char *post;

    if (!mobile || !*mobile || strlen(mobile) > 64)
        return -EINVAL;
    buf_init(&b);
    jw_init(&j, &b);
    jw_obj_begin(&j);
    jw_kstr(&j, "mobile", mobile);
    jw_obj_end(&j);
    if (!(post = post_body(&b)))
        return -ENOMEM;
    return enqueue(w, corp_id, WECOM_API_GETUSERID, WECOM_CRED_APP, xstrdup(""), post, 0, cb, arg);
}

/* ---- lifecycle ---------------------------------------------------------------------- */

/* Sets (or, with secret NULL, clears) one credential's secret; a changed secret
 * forgets this process's token for it. */
static int cred_set(struct wc_cred *cr, const char *secret)
{
    char *s = NULL;

    if (cr->secret && secret && strcmp(cr->secret, secret) == 0)
        return 0;
    if (secret && !(s = xstrdup(secret)))
        return -ENOMEM;
    free(cr->secret);
    cr->secret = s;
    cr->token[0] = '\0';
    cr->token_exp_us = 0;
    return 0;
}

static int secret_ok(const char *secret)
{
    return secret && *secret && strlen(secret) <= 128;
}

int wecom_corp_set(wecom *w, const char *corp_id, const char *secret)
{
    wc_corp *c;

    if (!w || !corp_id || !*corp_id || !secret_ok(secret) || strlen(corp_id) > 64 || w->closing)
        return -EINVAL;
    c = corp_find(w, corp_id);
    if (c)
        return cred_set(&c->cred[WECOM_CRED_APP], secret);
    c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->w = w;
    c->semw.granted = on_sem_granted;
    c->corp_id = xstrdup(corp_id);
    c->ring_n = w->o.rate >= 1 ? (int)w->o.rate : 1;
    if (c->ring_n > 10000)
        c->ring_n = 10000;
    c->ring = calloc((size_t)c->ring_n, sizeof(*c->ring));
    if (!c->corp_id || !c->ring || cred_set(&c->cred[WECOM_CRED_APP], secret)) {
        free(c->corp_id);
        free(c->ring);
        free(c);
        return -ENOMEM;
    }
    pacer_init(&c->pacer, w->o.rate, 0);
    uv_timer_init(w->loop, &c->timer);
    c->timer.data = c;
    c->next = w->corps;
    w->corps = c;
    return 0;
}

int wecom_corp_set_contact(wecom *w, const char *corp_id, const char *secret)
{
    wc_corp *c = w ? corp_find(w, corp_id) : NULL;

    if (!c)
        return -ENOENT;
    if (secret && !secret_ok(secret))
        return -EINVAL;
    return cred_set(&c->cred[WECOM_CRED_CONTACT], secret);
}

int wecom_corp_has_contact(const wecom *w, const char *corp_id)
{
    const wc_corp *c = w ? corp_find(w, corp_id) : NULL;
    return c && c->cred[WECOM_CRED_CONTACT].secret;
}

wecom *wecom_new(uv_loop_t *loop, http_client *http, redis_client *redis, const wecom_opts *opts)
{
    wecom *w;

    if (!loop || !http || !redis || !opts || !opts->base_url || !opts->env) {
        log_error("wecom: missing loop, client or option");
        return NULL;
    }
    if (opts->instance && strlen(opts->instance) > WC_INSTANCE_MAX) {
        log_error("wecom: instance name too long", LF_I("max", WC_INSTANCE_MAX));
        return NULL;
    }
    w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->loop = loop;
    w->http = http;
    w->redis = redis;
    w->o = *opts;
    w->base_url = xstrdup(opts->base_url);
    w->env = xstrdup(opts->env);
    w->instance = xstrdup(opts->instance ? opts->instance : "orgsync");
    if (!w->base_url || !w->env || !w->instance) {
        free(w->base_url);
        free(w->env);
        free(w->instance);
        free(w);
        return NULL;
    }
    /* A trailing slash would double in every URL. */
    for (size_t n = strlen(w->base_url); n > 0 && w->base_url[n - 1] == '/'; n--)
        w->base_url[n - 1] = '\0';
    if (w->o.rate <= 0)
        w->o.rate = 10;
    if (w->o.max_inflight <= 0)
        w->o.max_inflight = 50;
    if (w->o.timeout_ms <= 0)
        w->o.timeout_ms = 10000;
    w->o.max_retries = w->o.max_retries == 0 ? 4 : w->o.max_retries < 0 ? 0 : w->o.max_retries;
    w->o.busy_retries = w->o.busy_retries == 0 ? 3 : w->o.busy_retries < 0 ? 0 : w->o.busy_retries;
    if (!w->o.backoff_base_ms)
        w->o.backoff_base_ms = 200;
    if (!w->o.backoff_cap_ms)
        w->o.backoff_cap_ms = 10000;
    if (!w->o.ban_pause_ms)
        w->o.ban_pause_ms = 1000;
    if (!w->o.ban_pause_cap_ms)
        w->o.ban_pause_cap_ms = 60000;
    if (w->o.ban_retries <= 0)
        w->o.ban_retries = 5;
    w->o.base_url = w->base_url;
    w->o.env = w->env;
    w->o.instance = w->instance;
    w->shared = shared_get(loop, w->o.max_inflight);
    if (!w->shared) {
        free(w->base_url);
        free(w->env);
        free(w->instance);
        free(w);
        return NULL;
    }
    if (opts->egress_id && *opts->egress_id) {
        w->egress = egress_cap_new(
            redis, opts->egress_id,
            opts->egress_per_min > 0 ? opts->egress_per_min : EGRESS_UPSTREAM_PER_MIN,
            opts->egress_per_hour > 0 ? opts->egress_per_hour : EGRESS_UPSTREAM_PER_HOUR);
        if (!w->egress) {
            shared_put(w->shared);
            free(w->base_url);
            free(w->env);
            free(w->instance);
            free(w);
            return NULL;
        }
    }
    w->rng = backoff_seed();
    w->member_salt = backoff_rand(&w->rng);
    uv_timer_init(loop, &w->closer);
    w->closer.data = w;
    return w;
}

void wecom_get_stats(const wecom *w, wecom_stats *out)
{
    *out = w->stats;
}

static void free_all(wecom *w)
{
    wc_corp *c = w->corps, *n;

    for (; c; c = n) {
        n = c->next;
        free(c->corp_id);
        for (int i = 0; i < WECOM_CRED_COUNT; i++)
            free(c->cred[i].secret);
        free(c->ring);
        free(c);
    }
    shared_put(w->shared);
    free(w->base_url);
    free(w->env);
    free(w->instance);
    free(w);
}

static void release_pending(wecom *w)
{
    if (w->pending > 0)
        return;
    void (*done)(void *) = w->done;
    void *arg = w->done_arg;
    free_all(w);
    if (done)
        done(arg);
}

static void on_timer_closed(uv_handle_t *h)
{
    wecom *w = ((wc_corp *)h->data)->w;

    w->pending--;
    release_pending(w);
}

static void on_closer_closed(uv_handle_t *h)
{
    wecom *w = h->data;

    w->pending--;
    release_pending(w);
}

void wecom_close(wecom *w, void (*done)(void *arg), void *arg)
{
    if (!w || w->closing)
        return;
    w->closing = 1;
    w->done = done;
    w->done_arg = arg;
    for (wc_corp *c = w->corps; c; c = c->next) {
        if (c->phase == PH_SEM)
            loop_sem_cancel(&w->shared->sem, &c->semw);
        while (c->head) {
            wc_req *r = c->head;
            wecom_result res;
            c->head = r->next;
            memset(&res, 0, sizeof(res));
            res.status = WECOM_E_STOPPED;
            res.error = "stopped: client closing";
            res.requests = r->requests;
            res.retries = r->retries;
            r->cb(r->arg, &res);
            free(r->query);
            free(r->post);
            free(r);
        }
        c->tail = NULL;
        c->phase = PH_IDLE;
        answered(c); /* an admitted call that will not be sent frees its place */
        w->pending++;
        uv_close((uv_handle_t *)&c->timer, on_timer_closed);
    }
    /* Admissions still asked of the egress caps come back now, cancelled (each
     * holds a corp whose timer close is still pending, so w outlives them). */
    if (w->egress) {
        egress_cap *e = w->egress;
        w->egress = NULL;
        egress_cap_free(e);
    }
    /* The closer handle guarantees w outlives this call even with nothing pending. */
    w->pending++;
    uv_close((uv_handle_t *)&w->closer, on_closer_closed);
}
