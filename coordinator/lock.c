/* The leader lock: acquire, renew, release on Redis, and a lease measured on
 * our own monotonic clock (see lock.h for the contract).
 *
 * Every Redis operation carries the lock's epoch at the time it was sent. The
 * epoch moves on whenever a holding ends (release, loss, forget, close), so a
 * reply that arrives late, for a holding that is already over, can never revive
 * or extend it. */
#include "coordinator/lock.h"

#include "common/log.h"
#include "common/timeutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { LK_IDLE, LK_ACQUIRING, LK_HELD, LK_RELEASING };
enum { OP_ACQUIRE, OP_RENEW, OP_RELEASE, OP_CLEANUP };

struct lock {
    uv_loop_t *loop;
    redis_client *redis;
    char *env, *job, *instance;
    char key[256], fence_key[256];
    int ttl_ms, margin_ms, renew_ms;
    void (*on_lost)(void *arg, lock *l, const char *why);
    void *arg;

    int state;
    unsigned epoch;
    long long token; /* current (or last, while value_known) token */
    char value[160]; /* "<instance>|<token>" */
    int value_known; /* a release may still compare against value */
    uint64_t deadline_us;
    int renew_inflight;

    uv_timer_t renew_timer, lease_timer;
    struct lock_op *ops; /* Redis operations in flight */
    int closing, handles_left;
    void (*close_done)(void *arg);
    void *close_arg;

    lock_stats st;
};

typedef struct lock_op {
    struct lock_op *prev, *next; /* in the lock's list of operations in flight */
    lock *l;                     /* NULL once the lock is closed: reply ignored */
    int kind;
    unsigned epoch;
    uint64_t sent_us;
    lock_acquire_cb acquire_cb; /* OP_ACQUIRE */
    lock_release_cb release_cb; /* OP_RELEASE */
    void *arg;
} lock_op;

/* Acquire atomically: when the key is taken nothing is incremented, so waiters
 * do not burn fencing tokens; the token and the SET come from one script, so no
 * other contender can slip between them. */
static redis_script acquire_script = {
    .src = "local v = redis.call('GET', KEYS[1])\n"
           "if v then return {0, v, redis.call('PTTL', KEYS[1])} end\n"
           "local t = redis.call('INCR', KEYS[2])\n"
           "redis.call('SET', KEYS[1], ARGV[1] .. '|' .. t, 'NX', 'PX', ARGV[2])\n"
           "return {1, t}\n",
};
static redis_script renew_script = {
    .src = "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
           "  return redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
           "end\n"
           "return 0\n",
};
static redis_script release_script = {
    .src = "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
           "  return redis.call('DEL', KEYS[1])\n"
           "end\n"
           "return 0\n",
};
static redis_script holder_script = {
    .src = "local v = redis.call('GET', KEYS[1])\n"
           "if not v then return {0} end\n"
           "return {1, v, redis.call('PTTL', KEYS[1])}\n",
};

/* Process-wide figures (lock_process_stats): counters summed over every lock,
 * the rest copied from whichever lock acted last. */
static lock_stats proc_st = {.last_renew_latency_ms = -1};
static uint64_t proc_deadline_us;

/* ---- small helpers ---------------------------------------------------- */

int lock_key(const char *env, const char *job, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "orgsync:%s:lock:%s", env, job);
    return (n < 0 || (size_t)n >= outlen) ? -1 : 0;
}

int lock_fence_key(const char *env, const char *job, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "orgsync:%s:fence:%s", env, job);
    return (n < 0 || (size_t)n >= outlen) ? -1 : 0;
}

int lock_value_parse(const char *value, char *instance, size_t instlen, long long *token)
{
    const char *bar;
    char *end;
    long long t;
    size_t n;

    if (!value || !(bar = strrchr(value, '|')) || bar == value || !bar[1])
        return -1;
    errno = 0;
    t = strtoll(bar + 1, &end, 10);
    if (errno || *end || t <= 0)
        return -1;
    n = (size_t)(bar - value);
    if (instance) {
        if (n >= instlen)
            return -1;
        memcpy(instance, value, n);
        instance[n] = '\0';
    }
    if (token)
        *token = t;
    return 0;
}

static long long left_ms(uint64_t deadline_us)
{
    uint64_t now = time_mono_us();
    return deadline_us > now ? (long long)((deadline_us - now) / 1000) : 0;
}

static void proc_update(const lock *l)
{
    proc_st.held = l->state == LK_HELD;
    proc_st.token = l->state == LK_HELD ? l->token : 0;
    proc_deadline_us = l->state == LK_HELD ? l->deadline_us : 0;
    proc_st.last_renew_latency_ms = l->st.last_renew_latency_ms;
}

#define STAT_INC(l, field)                                                                         \
    do {                                                                                           \
        (l)->st.field++;                                                                           \
        proc_st.field++;                                                                           \
    } while (0)

static void stop_timers(lock *l)
{
    uv_timer_stop(&l->renew_timer);
    uv_timer_stop(&l->lease_timer);
}

static void arm_lease_timer(lock *l);
static void maybe_free(lock *l);

/* Ends the current holding (any cause): no more renewals, lease distrusted,
 * late replies ignored. */
static void end_holding(lock *l)
{
    l->state = LK_IDLE;
    l->epoch++;
    l->renew_inflight = 0;
    stop_timers(l);
    STAT_INC(l, changes);
    proc_update(l);
}

static void declare_lost(lock *l, const char *why)
{
    if (l->state != LK_HELD)
        return;
    end_holding(l);
    STAT_INC(l, losses);
    log_warn("leader lock lost", LF_S("job", l->job), LF_I("fencing_token", l->token),
             LF_S("why", why));
    if (l->on_lost)
        l->on_lost(l->arg, l, why);
}

/* ---- Redis operations ------------------------------------------------- */

static void on_reply(void *arg, redisReply *reply, const char *err);

static int send_op(lock *l, int kind, redis_script *script, const char *arg1, const char *arg2,
                   int nargs, lock_acquire_cb acb, lock_release_cb rcb, void *cbarg)
{
    const char *argv[4];
    lock_op *op = calloc(1, sizeof(*op));
    int argc = 2, rc;

    if (!op)
        return LOCK_ENOMEM;
    op->l = l;
    op->kind = kind;
    op->epoch = l->epoch;
    op->acquire_cb = acb;
    op->release_cb = rcb;
    op->arg = cbarg;
    argv[0] = l->key;
    argv[1] = l->fence_key;
    if (kind != OP_ACQUIRE)
        argc = 1;
    argv[argc++] = arg1;
    if (nargs > 1)
        argv[argc++] = arg2;
    /* The lease counts from the moment the command leaves us: Redis runs it
     * later, so the key lives at least ttl past this instant. */
    op->sent_us = time_mono_us();
    rc = redis_eval(l->redis, script, kind == OP_ACQUIRE ? 2 : 1, argc, argv, on_reply, op);
    if (rc) {
        free(op);
        return rc == -ENOMEM ? LOCK_ENOMEM : LOCK_EREDIS;
    }
    op->next = l->ops;
    if (l->ops)
        l->ops->prev = op;
    l->ops = op;
    return 0;
}

static int reply_int(const redisReply *r, long long *out)
{
    if (!r || r->type != REDIS_REPLY_INTEGER)
        return -1;
    *out = r->integer;
    return 0;
}

static void acquire_done(lock *l, lock_op *op, redisReply *reply, const char *err)
{
    lock_acquire_cb cb = op->acquire_cb;
    long long flag, token = 0, pttl = -1;
    const char *holder = "";

    l->state = LK_IDLE;
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 2 ||
        reply_int(reply->element[0], &flag)) {
        log_warn("leader lock attempt failed", LF_S("job", l->job),
                 LF_S("error", err ? err : "unexpected reply"));
        cb(op->arg, l, LOCK_EREDIS, 0, NULL, -1);
        return;
    }
    if (!flag) {
        if (reply->element[1]->type == REDIS_REPLY_STRING)
            holder = reply->element[1]->str;
        if (reply->elements > 2)
            reply_int(reply->element[2], &pttl);
        cb(op->arg, l, LOCK_EBUSY, 0, holder, pttl);
        return;
    }
    if (reply_int(reply->element[1], &token) || token <= 0) {
        cb(op->arg, l, LOCK_EREDIS, 0, NULL, -1);
        return;
    }
    l->token = token;
    snprintf(l->value, sizeof(l->value), "%s|%lld", l->instance, token);
    l->value_known = 1;
    l->deadline_us = op->sent_us + (uint64_t)(l->ttl_ms - l->margin_ms) * 1000;
    if (time_mono_us() >= l->deadline_us) {
        /* The reply took longer than the whole lease: the key is ours but we may
         * not trust it. Hand it back rather than lead on borrowed time. */
        log_warn("leader lock acquired too late to trust, releasing", LF_S("job", l->job),
                 LF_I("fencing_token", token));
        if (send_op(l, OP_CLEANUP, &release_script, l->value, NULL, 1, NULL, NULL, NULL) == 0)
            l->value_known = 0;
        cb(op->arg, l, LOCK_EREDIS, 0, NULL, -1);
        return;
    }
    l->state = LK_HELD;
    l->st.last_renew_latency_ms = (double)(time_mono_us() - op->sent_us) / 1000.0;
    STAT_INC(l, acquisitions);
    STAT_INC(l, changes);
    proc_update(l);
    arm_lease_timer(l); /* also starts the renewals */
    log_info("leader lock acquired", LF_S("job", l->job), LF_I("fencing_token", token),
             LF_I("ttl_ms", l->ttl_ms));
    cb(op->arg, l, 0, token, NULL, -1);
}

static void renew_tick(uv_timer_t *t);

static void renew_done(lock *l, lock_op *op, redisReply *reply, const char *err)
{
    long long ok;
    uint64_t now = time_mono_us(), nd;

    if (op->epoch != l->epoch || l->state != LK_HELD)
        return; /* a late reply for a holding that is over */
    l->renew_inflight = 0;
    if (now >= l->deadline_us) {
        /* Confirmed or not, it came after the lease ended: too late. */
        declare_lost(l, "lease expired");
        return;
    }
    if (err || reply_int(reply, &ok)) {
        STAT_INC(l, renew_failures);
        log_warn("leader lock renewal failed", LF_S("job", l->job),
                 LF_S("error", err ? err : "unexpected reply"),
                 LF_I("lease_left_ms", left_ms(l->deadline_us)));
        /* Try again soon rather than a full period later; the lease timer
         * decides when it is too late. */
        uv_timer_start(&l->renew_timer, renew_tick, (uint64_t)(l->renew_ms / 4 + 1),
                       (uint64_t)l->renew_ms);
        return;
    }
    if (!ok) {
        declare_lost(l, "lock taken over");
        return;
    }
    STAT_INC(l, renewals);
    l->st.last_renew_latency_ms = (double)(now - op->sent_us) / 1000.0;
    nd = op->sent_us + (uint64_t)(l->ttl_ms - l->margin_ms) * 1000;
    if (nd > l->deadline_us)
        l->deadline_us = nd;
    proc_update(l);
    arm_lease_timer(l);
}

static void release_done(lock *l, lock_op *op, redisReply *reply, const char *err)
{
    lock_release_cb cb = op->release_cb;
    long long n;
    int status;

    l->state = LK_IDLE;
    if (err || reply_int(reply, &n))
        status = LOCK_EREDIS;
    else
        status = n > 0 ? 1 : 0;
    log_info("leader lock released", LF_S("job", l->job), LF_I("fencing_token", l->token),
             LF_S("result", status == 1   ? "deleted"
                            : status == 0 ? "not ours"
                                          : "error"));
    cb(op->arg, l, status);
}

static void on_reply(void *arg, redisReply *reply, const char *err)
{
    lock_op *op = arg;
    lock *l = op->l;

    if (!l) { /* the lock was closed meanwhile */
        free(op);
        return;
    }
    if (op->prev)
        op->prev->next = op->next;
    else
        l->ops = op->next;
    if (op->next)
        op->next->prev = op->prev;
    switch (op->kind) {
    case OP_ACQUIRE:
        acquire_done(l, op, reply, err);
        break;
    case OP_RENEW:
        renew_done(l, op, reply, err);
        break;
    case OP_RELEASE:
        release_done(l, op, reply, err);
        break;
    default: /* OP_CLEANUP: best effort, nobody waits */
        break;
    }
    free(op);
}

/* ---- timers ----------------------------------------------------------- */

static void renew_tick(uv_timer_t *t)
{
    lock *l = t->data;
    char ttl[24];
    int rc;

    if (l->state != LK_HELD || l->renew_inflight)
        return; /* one renewal at a time; the lease timer watches the deadline */
    snprintf(ttl, sizeof(ttl), "%d", l->ttl_ms);
    rc = send_op(l, OP_RENEW, &renew_script, l->value, ttl, 2, NULL, NULL, NULL);
    if (rc) {
        STAT_INC(l, renew_failures);
        return;
    }
    l->renew_inflight = 1;
}

static void lease_tick(uv_timer_t *t)
{
    lock *l = t->data;

    if (l->state != LK_HELD)
        return;
    if (time_mono_us() >= l->deadline_us) {
        declare_lost(l, "lease expired");
        return;
    }
    arm_lease_timer(l); /* the loop clock has ms resolution: fired a hair early */
}

static void arm_lease_timer(lock *l)
{
    uint64_t now = time_mono_us();
    uint64_t ms = l->deadline_us > now ? (l->deadline_us - now + 999) / 1000 : 0;

    uv_timer_start(&l->lease_timer, lease_tick, ms, 0);
    if (!uv_is_active((uv_handle_t *)&l->renew_timer))
        uv_timer_start(&l->renew_timer, renew_tick, (uint64_t)l->renew_ms, (uint64_t)l->renew_ms);
}

/* ---- public API ------------------------------------------------------- */

lock *lock_new(uv_loop_t *loop, redis_client *redis, const lock_opts *o)
{
    lock *l;

    if (!loop || !redis || !o || !o->env || !o->job || !o->instance || strchr(o->instance, '|'))
        return NULL;
    l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->loop = loop;
    l->redis = redis;
    l->env = strdup(o->env);
    l->job = strdup(o->job);
    l->instance = strdup(o->instance);
    if (!l->env || !l->job || !l->instance || lock_key(o->env, o->job, l->key, sizeof(l->key)) ||
        lock_fence_key(o->env, o->job, l->fence_key, sizeof(l->fence_key)) ||
        strlen(o->instance) > 120)
        goto fail;
    l->ttl_ms = o->ttl_ms > 0 ? o->ttl_ms : 15000;
    l->margin_ms = o->margin_ms > 0 ? o->margin_ms : (l->ttl_ms / 10 > 500 ? l->ttl_ms / 10 : 500);
    l->renew_ms = l->ttl_ms / 3 > 0 ? l->ttl_ms / 3 : 1;
    if (l->margin_ms >= l->ttl_ms)
        goto fail;
    l->on_lost = o->on_lost;
    l->arg = o->arg;
    l->st.last_renew_latency_ms = -1;
    uv_timer_init(loop, &l->renew_timer);
    uv_timer_init(loop, &l->lease_timer);
    l->renew_timer.data = l;
    l->lease_timer.data = l;
    l->handles_left = 2;
    return l;
fail:
    free(l->env);
    free(l->job);
    free(l->instance);
    free(l);
    return NULL;
}

int lock_acquire(lock *l, lock_acquire_cb cb, void *arg)
{
    char ttl[24];
    int rc;

    if (!l || !cb)
        return LOCK_ESTATE;
    if (l->closing || l->state != LK_IDLE)
        return LOCK_ESTATE;
    snprintf(ttl, sizeof(ttl), "%d", l->ttl_ms);
    rc = send_op(l, OP_ACQUIRE, &acquire_script, l->instance, ttl, 2, cb, NULL, arg);
    if (rc)
        return rc;
    STAT_INC(l, attempts);
    l->state = LK_ACQUIRING;
    return 0;
}

int lock_lease_valid(const lock *l)
{
    return l && l->state == LK_HELD && time_mono_us() < l->deadline_us;
}

long long lock_lease_left_ms(const lock *l)
{
    return l && l->state == LK_HELD ? left_ms(l->deadline_us) : 0;
}

long long lock_token(const lock *l)
{
    return l && l->state == LK_HELD ? l->token : 0;
}

int lock_held(const lock *l)
{
    return l && l->state == LK_HELD;
}

int lock_release(lock *l, lock_release_cb cb, void *arg)
{
    int rc;

    if (!l || !cb || l->closing || !l->value_known || (l->state != LK_HELD && l->state != LK_IDLE))
        return LOCK_ESTATE;
    if (l->state == LK_HELD)
        end_holding(l);
    rc = send_op(l, OP_RELEASE, &release_script, l->value, NULL, 1, NULL, cb, arg);
    if (rc)
        return rc;
    l->value_known = 0;
    l->state = LK_RELEASING;
    return 0;
}

void lock_forget(lock *l)
{
    if (!l)
        return;
    if (l->state == LK_HELD)
        end_holding(l);
    l->value_known = 0;
}

static void on_timer_closed(uv_handle_t *h)
{
    lock *l = h->data;

    l->handles_left--;
    maybe_free(l);
}

static void maybe_free(lock *l)
{
    void (*done)(void *);
    void *arg;

    if (!l->closing || l->handles_left > 0)
        return;
    done = l->close_done;
    arg = l->close_arg;
    free(l->env);
    free(l->job);
    free(l->instance);
    free(l);
    if (done)
        done(arg);
}

void lock_close(lock *l, void (*done)(void *arg), void *arg)
{
    lock_op *op;

    if (!l || l->closing)
        return;
    if (l->state == LK_HELD)
        end_holding(l);
    l->closing = 1;
    l->epoch++;
    /* Replies still in flight may take a command timeout to come back (a
     * stalled Redis is exactly when we close): detach them instead of waiting. */
    for (op = l->ops; op; op = op->next)
        op->l = NULL;
    l->ops = NULL;
    l->close_done = done;
    l->close_arg = arg;
    stop_timers(l);
    uv_close((uv_handle_t *)&l->renew_timer, on_timer_closed);
    uv_close((uv_handle_t *)&l->lease_timer, on_timer_closed);
}

void lock_stats_get(const lock *l, lock_stats *out)
{
    *out = l->st;
    out->held = lock_lease_valid(l);
    out->token = out->held ? l->token : 0;
    out->lease_left_ms = lock_lease_left_ms(l);
}

void lock_process_stats(lock_stats *out)
{
    *out = proc_st;
    out->lease_left_ms = proc_st.held ? left_ms(proc_deadline_us) : 0;
    if (!out->lease_left_ms) {
        out->held = 0;
        out->token = 0;
    }
}

/* ---- holder lookup ---------------------------------------------------- */

typedef struct holder_ctx {
    lock_holder_cb cb;
    void *arg;
} holder_ctx;

static void on_holder(void *arg, redisReply *r, const char *err)
{
    holder_ctx *h = arg;
    char inst[160];
    long long flag, token = 0, pttl = -1;

    if (err) {
        h->cb(h->arg, NULL, 0, -1, err);
    } else if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
               reply_int(r->element[0], &flag)) {
        h->cb(h->arg, NULL, 0, -1, "unexpected reply");
    } else if (!flag || r->elements < 3 || r->element[1]->type != REDIS_REPLY_STRING) {
        h->cb(h->arg, NULL, 0, -1, NULL);
    } else if (lock_value_parse(r->element[1]->str, inst, sizeof(inst), &token)) {
        h->cb(h->arg, NULL, 0, -1, "malformed lock value");
    } else {
        reply_int(r->element[2], &pttl);
        h->cb(h->arg, inst, token, pttl, NULL);
    }
    free(h);
}

int lock_holder_get(redis_client *redis, const char *env, const char *job, lock_holder_cb cb,
                    void *arg)
{
    char key[256];
    const char *argv[1] = {key};
    holder_ctx *h;
    int rc;

    if (!redis || !env || !job || !cb || lock_key(env, job, key, sizeof(key)))
        return -EINVAL;
    h = malloc(sizeof(*h));
    if (!h)
        return -ENOMEM;
    h->cb = cb;
    h->arg = arg;
    rc = redis_eval(redis, &holder_script, 1, 1, argv, on_holder, h);
    if (rc)
        free(h);
    return rc;
}
