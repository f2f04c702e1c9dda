/* The leader lock against a real Redis: mutual exclusion, renewal, a lease that
 * ends on the holder's own clock before the key expires, takeover, compare-and-
 * delete, EVALSHA after SCRIPT FLUSH. */
#include "tests/integration/coord_helpers.h"

#include "common/log.h"
#include "coordinator/lock.h"

#define JOB "directory-sync"
/* Long enough that a loaded machine (sanitizers, parallel tests) does not miss a
 * renewal by accident: lease 1500 ms, renewal every 666 ms. */
#define TTL 2000
#define LEASE (TTL - 500)

typedef struct acq {
    int calls, status;
    long long token, pttl;
    char holder[160];
    uint64_t at_us;
} acq;

static void on_acq(void *arg, lock *l, int status, long long token, const char *holder,
                   long long pttl)
{
    acq *a = arg;

    (void)l;
    a->calls++;
    a->status = status;
    a->token = token;
    a->pttl = pttl;
    a->at_us = time_mono_us();
    snprintf(a->holder, sizeof(a->holder), "%s", holder ? holder : "");
}

typedef struct rel {
    int calls, status;
} rel;

static void on_rel(void *arg, lock *l, int status)
{
    rel *r = arg;

    (void)l;
    r->calls++;
    r->status = status;
}

typedef struct lost {
    int calls;
    char why[64];
    uint64_t at_us;
    /* what Redis said at the moment we lost (blocking check from the callback) */
    redisContext *rc;
    char key[256];
    char value_at_loss[160];
    long long pttl_at_loss;
    int lease_valid_at_loss;
    lock *l;
} lost;

static void on_lost(void *arg, lock *l, const char *why)
{
    lost *x = arg;

    x->calls++;
    x->at_us = time_mono_us();
    snprintf(x->why, sizeof(x->why), "%s", why);
    x->lease_valid_at_loss = lock_lease_valid(l);
    if (x->rc)
        x->pttl_at_loss = th_redis_get(x->rc, x->key, x->value_at_loss, sizeof(x->value_at_loss));
}

typedef struct fixture {
    uv_loop_t loop;
    const char *url;
    char env[64];
    char key[256];
    redisContext *direct;
} fixture;

static int closed_count;
static void on_closed(void *arg)
{
    (void)arg;
    closed_count++;
}

static redis_client *client(fixture *f, const char *url, int cmd_timeout_ms)
{
    redis_client *c =
        redis_new(&f->loop, &(redis_opts){.url = url, .command_timeout_ms = cmd_timeout_ms});
    uint64_t end = time_mono_us() + 5000000;

    assert_non_null(c);
    while (!redis_connected(c) && time_mono_us() < end)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_true(redis_connected(c));
    return c;
}

static lock *mklock(fixture *f, redis_client *c, const char *inst, int ttl, lost *lx)
{
    lock *l = lock_new(&f->loop, c,
                       &(lock_opts){.env = f->env,
                                    .job = JOB,
                                    .instance = inst,
                                    .ttl_ms = ttl,
                                    .on_lost = lx ? on_lost : NULL,
                                    .arg = lx});
    assert_non_null(l);
    if (lx) {
        lx->l = l;
        lx->rc = f->direct;
        snprintf(lx->key, sizeof(lx->key), "%s", f->key);
    }
    return l;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));

    f->url = th_env_or_fail("ORGSYNC_TEST_REDIS_URL");
    uv_loop_init(&f->loop);
    th_unique(f->env, sizeof(f->env), "tlock");
    lock_key(f->env, JOB, f->key, sizeof(f->key));
    f->direct = th_redis_connect(f->url);
    closed_count = 0;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;

    redisFree(f->direct);
    th_loop_finish(&f->loop);
    free(f);
    return 0;
}

static void close_client(fixture *f, redis_client *c)
{
    int before = closed_count;
    redis_close(c, on_closed, NULL);
    while (closed_count == before)
        uv_run(&f->loop, UV_RUN_ONCE);
}

static void close_lock(fixture *f, lock *l)
{
    int before = closed_count;
    lock_close(l, on_closed, NULL);
    while (closed_count == before)
        uv_run(&f->loop, UV_RUN_ONCE);
}

static int both_called(acq *a, int n)
{
    int i;
    for (i = 0; i < n; i++)
        if (!a[i].calls)
            return 0;
    return 1;
}

/* Four contenders, each on its own connection, ask in the same loop turn:
 * exactly one wins; the others see the winner's value. */
static void test_contenders_exactly_one(void **state)
{
    fixture *f = *state;
    redis_client *c[4];
    lock *l[4];
    acq a[4];
    char inst[32], value[160];
    int i, winners = 0, w = -1, round;

    for (i = 0; i < 4; i++) {
        c[i] = client(f, f->url, 0);
        snprintf(inst, sizeof(inst), "host%d:%d", i, 100 + i);
        l[i] = mklock(f, c[i], inst, 5000, NULL);
    }
    for (round = 0; round < 3; round++) {
        memset(a, 0, sizeof(a));
        winners = 0;
        for (i = 0; i < 4; i++)
            assert_int_equal(lock_acquire(l[i], on_acq, &a[i]), 0);
        /* a second attempt while one is under way is refused */
        assert_int_equal(lock_acquire(l[0], on_acq, &a[0]), LOCK_ESTATE);
        for (i = 0; i < 200 && !both_called(a, 4); i++)
            uv_run(&f->loop, UV_RUN_ONCE);
        assert_true(both_called(a, 4));
        for (i = 0; i < 4; i++) {
            if (a[i].status == 0) {
                winners++;
                w = i;
            } else {
                assert_int_equal(a[i].status, LOCK_EBUSY);
            }
        }
        assert_int_equal(winners, 1);
        th_redis_get(f->direct, f->key, value, sizeof(value));
        snprintf(inst, sizeof(inst), "host%d:%d|%lld", w, 100 + w, a[w].token);
        assert_string_equal(value, inst);
        for (i = 0; i < 4; i++) {
            assert_int_equal(lock_lease_valid(l[i]), i == w);
            if (i != w) {
                assert_string_equal(a[i].holder, inst);
                assert_true(a[i].pttl > 0 && a[i].pttl <= 5000);
            }
        }
        assert_int_equal(lock_token(l[w]), a[w].token);
        {
            rel r = {0};
            assert_int_equal(lock_release(l[w], on_rel, &r), 0);
            assert_int_equal(lock_lease_valid(l[w]), 0);
            th_run_until(&f->loop, &r.calls, 2000);
            assert_int_equal(r.status, 1);
        }
        assert_true(th_redis_get(f->direct, f->key, value, sizeof(value)) == -2);
    }
    /* tokens only grow, and waiting did not burn any: 3 rounds, 3 tokens */
    {
        char fk[256], v[32];
        lock_fence_key(f->env, JOB, fk, sizeof(fk));
        th_redis_get(f->direct, fk, v, sizeof(v));
        assert_string_equal(v, "3");
    }
    for (i = 0; i < 4; i++) {
        close_lock(f, l[i]);
        close_client(f, c[i]);
    }
}

/* Renewal every ttl/3 keeps the lease valid, without a gap, for several TTLs. */
typedef struct sampler {
    lock *l;
    int samples, invalid;
} sampler;

static void sample(uv_timer_t *t)
{
    sampler *s = t->data;
    s->samples++;
    if (!lock_lease_valid(s->l))
        s->invalid++;
}

static void test_renewal_keeps_lock(void **state)
{
    fixture *f = *state;
    redis_client *c = client(f, f->url, 0);
    lost lx = {0};
    lock *l = mklock(f, c, "renewer:1", TTL, &lx);
    acq a = {0};
    sampler s = {.l = l};
    uv_timer_t t;
    lock_stats st;
    char value[160], want[160];
    long long pttl;

    assert_int_equal(lock_acquire(l, on_acq, &a), 0);
    th_run_until(&f->loop, &a.calls, 2000);
    assert_int_equal(a.status, 0);
    uv_timer_init(&f->loop, &t);
    t.data = &s;
    uv_timer_start(&t, sample, 20, 20);
    th_run_for(&f->loop, 3 * TTL);
    uv_timer_stop(&t);
    uv_close((uv_handle_t *)&t, NULL);
    th_run_for(&f->loop, 5); /* t lives on this stack: let its close finish */
    assert_int_equal(lx.calls, 0);
    assert_true(s.samples > 100);
    assert_int_equal(s.invalid, 0);
    lock_stats_get(l, &st);
    assert_true(st.renewals >= 8);
    assert_int_equal(st.losses, 0);
    assert_int_equal(st.held, 1);
    assert_int_equal(st.token, a.token);
    assert_true(st.last_renew_latency_ms >= 0 && st.last_renew_latency_ms < 500);
    assert_true(st.lease_left_ms > 0 && st.lease_left_ms <= LEASE);
    pttl = th_redis_get(f->direct, f->key, value, sizeof(value));
    snprintf(want, sizeof(want), "renewer:1|%lld", a.token);
    assert_string_equal(value, want);
    assert_true(pttl > 0);
    {
        lock_stats ps;
        lock_process_stats(&ps);
        assert_int_equal(ps.held, 1);
        assert_int_equal(ps.token, a.token);
        assert_true(ps.renewals >= st.renewals);
    }
    close_lock(f, l); /* close without release: the key stays and expires */
    assert_true(th_redis_get(f->direct, f->key, value, sizeof(value)) > 0);
    close_client(f, c);
}

/* The holder's traffic is frozen (renewals sent, never answered): it must stop
 * trusting its lease on its own clock while the key still exists, a contender
 * gets the lock only once the key expired, and the old holder's release then
 * leaves the successor's lock alone. */
static void test_frozen_holder_loses_lease_first(void **state)
{
    fixture *f = *state;
    th_proxy px;
    char purl[128], value[160], want[160];
    redis_client *ca, *cb;
    lost lx = {0};
    lock *la, *lb;
    acq a = {0}, b = {0};
    rel r = {0};
    uint64_t freeze_at;
    int i;

    th_proxy_start(&px, &f->loop, th_redis_port(f->url));
    snprintf(purl, sizeof(purl), "redis://127.0.0.1:%d/0", px.port);
    /* A long command timeout, so the stuck renewal is not cut short by a
     * reconnect: the lease alone must end it. */
    ca = client(f, purl, 20000);
    cb = client(f, f->url, 0);
    la = mklock(f, ca, "frozen:1", TTL, &lx);
    lb = mklock(f, cb, "standby:2", TTL, NULL);

    assert_int_equal(lock_acquire(la, on_acq, &a), 0);
    th_run_until(&f->loop, &a.calls, 2000);
    assert_int_equal(a.status, 0);
    th_run_for(&f->loop, TTL / 3 + 300); /* at least one renewal confirmed */
    assert_int_equal(lx.calls, 0);
    th_proxy_freeze(&px, 1);
    freeze_at = time_mono_us();

    /* The standby polls; it must not win while the frozen holder's key lives. */
    while (!lx.calls && time_mono_us() - freeze_at < 3000000) {
        memset(&b, 0, sizeof(b));
        assert_int_equal(lock_acquire(lb, on_acq, &b), 0);
        th_run_until(&f->loop, &b.calls, 1000);
        assert_int_equal(b.status, LOCK_EBUSY);
        th_run_until(&f->loop, &lx.calls, 50);
    }
    assert_int_equal(lx.calls, 1);
    assert_string_equal(lx.why, "lease expired");
    assert_int_equal(lx.lease_valid_at_loss, 0);
    assert_int_equal(lock_lease_valid(la), 0);
    /* lost within the lease (ttl - margin) of the last confirmed send, so less
     * than that after the freeze, plus scheduling slack */
    assert_true(lx.at_us - freeze_at < (uint64_t)LEASE * 1000 + 300000);
    /* ... and at that moment Redis still held its key, with time left on it */
    snprintf(want, sizeof(want), "frozen:1|%lld", a.token);
    assert_string_equal(lx.value_at_loss, want);
    assert_true(lx.pttl_at_loss > 0);

    /* Takeover once the key expires. */
    for (i = 0; i < 100; i++) {
        memset(&b, 0, sizeof(b));
        assert_int_equal(lock_acquire(lb, on_acq, &b), 0);
        th_run_until(&f->loop, &b.calls, 1000);
        if (b.status == 0)
            break;
        assert_int_equal(b.status, LOCK_EBUSY);
        th_run_for(&f->loop, 25);
    }
    assert_int_equal(b.status, 0);
    assert_true(b.token > a.token);
    fprintf(
        stderr,
        "figures (ttl 2000 ms, margin 500 ms): lease lost %.0f ms after the freeze with %lld ms "
        "left on the key; standby acquired %.0f ms after the loss\n",
        (double)(lx.at_us - freeze_at) / 1000.0, lx.pttl_at_loss,
        (double)(b.at_us - lx.at_us) / 1000.0);
    assert_true(b.at_us >= lx.at_us + (uint64_t)(lx.pttl_at_loss - 60) * 1000);

    /* Thaw: the stuck renewal's late reply must not revive the old holder, and
     * its compare-and-delete must not delete the successor's lock. */
    th_proxy_freeze(&px, 0);
    th_run_for(&f->loop, 300);
    assert_int_equal(lock_lease_valid(la), 0);
    assert_int_equal(lx.calls, 1);
    assert_int_equal(lock_release(la, on_rel, &r), 0);
    th_run_until(&f->loop, &r.calls, 3000);
    assert_int_equal(r.status, 0);
    snprintf(want, sizeof(want), "standby:2|%lld", b.token);
    assert_true(th_redis_get(f->direct, f->key, value, sizeof(value)) > 0);
    assert_string_equal(value, want);
    assert_int_equal(lock_lease_valid(lb), 1);

    close_lock(f, la);
    close_lock(f, lb);
    close_client(f, ca);
    close_client(f, cb);
    th_proxy_stop(&px);
}

/* The key vanishes under a live holder (Redis lost it, or an operator deleted
 * it) and a successor takes it: the holder's next renewal reports the loss at
 * once, and its release leaves the successor alone. */
static void test_taken_over(void **state)
{
    fixture *f = *state;
    redis_client *c = client(f, f->url, 0);
    lost lx = {0};
    lock *la = mklock(f, c, "old:1", TTL, &lx);
    lock *lb = mklock(f, c, "new:2", TTL, NULL);
    acq a = {0}, b = {0};
    rel r = {0};
    redisReply *rr;
    char value[160], want[160];

    assert_int_equal(lock_acquire(la, on_acq, &a), 0);
    th_run_until(&f->loop, &a.calls, 2000);
    assert_int_equal(a.status, 0);
    rr = redisCommand(f->direct, "DEL %s", f->key);
    freeReplyObject(rr);
    assert_int_equal(lock_acquire(lb, on_acq, &b), 0);
    th_run_until(&f->loop, &b.calls, 2000);
    assert_int_equal(b.status, 0);
    th_run_until(&f->loop, &lx.calls, TTL); /* next renewal within ttl/3 */
    assert_int_equal(lx.calls, 1);
    assert_string_equal(lx.why, "lock taken over");
    assert_int_equal(lock_lease_valid(la), 0);
    assert_int_equal(lock_release(la, on_rel, &r), 0);
    th_run_until(&f->loop, &r.calls, 2000);
    assert_int_equal(r.status, 0);
    snprintf(want, sizeof(want), "new:2|%lld", b.token);
    th_redis_get(f->direct, f->key, value, sizeof(value));
    assert_string_equal(value, want);
    /* nothing left to release twice */
    assert_int_equal(lock_release(la, on_rel, &r), LOCK_ESTATE);
    close_lock(f, la);
    close_lock(f, lb);
    close_client(f, c);
}

static long long cached_scripts(redisContext *c)
{
    redisReply *r = redisCommand(c, "INFO memory");
    const char *p;
    long long n = -1;

    assert_non_null(r);
    p = strstr(r->str, "number_of_cached_scripts:");
    if (p)
        n = strtoll(p + strlen("number_of_cached_scripts:"), NULL, 10);
    freeReplyObject(r);
    return n;
}

/* A Redis restart empties the script cache: renewal and release must fall back
 * from EVALSHA to EVAL and keep working. */
static void test_evalsha_after_script_flush(void **state)
{
    fixture *f = *state;
    redis_client *c = client(f, f->url, 0);
    lost lx = {0};
    lock *l = mklock(f, c, "flush:1", TTL, &lx);
    acq a = {0};
    rel r = {0};
    redisReply *rr;
    lock_stats st0, st1;
    redis_stats rs0, rs1;
    char value[160];

    assert_int_equal(lock_acquire(l, on_acq, &a), 0);
    th_run_until(&f->loop, &a.calls, 2000);
    assert_int_equal(a.status, 0);
    /* Counted before the flush, right after the acquisition, when no renewal is
     * in flight: a renewal the loop sends later is in both counts. (Counted
     * after, on a slow machine a renewal sent before could end after.) */
    lock_stats_get(l, &st0);
    redis_get_stats(c, &rs0);
    rr = redisCommand(f->direct, "SCRIPT FLUSH");
    freeReplyObject(rr);
    assert_int_equal(cached_scripts(f->direct), 0);
    /* Two renewals take TTL * 2 / 3; a loaded machine may delay them, so wait
     * for them up to three TTLs (the lease would be lost first if they failed). */
    for (int waited = 0; waited < TTL * 3; waited += 50) {
        th_run_for(&f->loop, 50);
        lock_stats_get(l, &st1);
        if (st1.renewals >= st0.renewals + 2)
            break;
    }
    redis_get_stats(c, &rs1);
    assert_int_equal(lx.calls, 0);
    assert_true(st1.renewals >= st0.renewals + 2);
    assert_int_equal(st1.renew_failures, st0.renew_failures);
    assert_true(cached_scripts(f->direct) >= 1); /* the EVAL fallback loaded it */
    /* the first renewal after the flush cost two commands (EVALSHA, EVAL) */
    assert_true(rs1.commands - rs0.commands >= st1.renewals - st0.renewals + 1);
    assert_int_equal(lock_lease_valid(l), 1);

    rr = redisCommand(f->direct, "SCRIPT FLUSH");
    freeReplyObject(rr);
    assert_int_equal(lock_release(l, on_rel, &r), 0);
    th_run_until(&f->loop, &r.calls, 2000);
    assert_int_equal(r.status, 1);
    assert_int_equal(th_redis_get(f->direct, f->key, value, sizeof(value)), -2);
    close_lock(f, l);
    close_client(f, c);
}

typedef struct holder {
    int calls;
    char instance[160];
    int is_null;
    long long token, pttl;
    char err[128];
} holder;

static void on_holder(void *arg, const char *instance, long long token, long long pttl,
                      const char *err)
{
    holder *h = arg;
    h->calls++;
    h->is_null = instance == NULL;
    snprintf(h->instance, sizeof(h->instance), "%s", instance ? instance : "");
    h->token = token;
    h->pttl = pttl;
    snprintf(h->err, sizeof(h->err), "%s", err ? err : "");
}

static void test_holder_lookup(void **state)
{
    fixture *f = *state;
    redis_client *c = client(f, f->url, 0);
    lock *l =
        lock_new(&f->loop, c, &(lock_opts){.env = f->env, .job = JOB, .instance = "host|bar:7"});
    holder h = {0};
    acq a = {0};

    assert_null(l); /* '|' is the separator: refused in an instance */
    l = mklock(f, c, "host-a:7", 3000, NULL);
    assert_int_equal(lock_holder_get(c, f->env, JOB, on_holder, &h), 0);
    th_run_until(&f->loop, &h.calls, 2000);
    assert_int_equal(h.is_null, 1);
    assert_string_equal(h.err, "");
    assert_int_equal(lock_acquire(l, on_acq, &a), 0);
    th_run_until(&f->loop, &a.calls, 2000);
    memset(&h, 0, sizeof(h));
    assert_int_equal(lock_holder_get(c, f->env, JOB, on_holder, &h), 0);
    th_run_until(&f->loop, &h.calls, 2000);
    assert_string_equal(h.instance, "host-a:7");
    assert_int_equal(h.token, a.token);
    assert_true(h.pttl > 0 && h.pttl <= 3000);
    lock_forget(l);
    assert_int_equal(lock_lease_valid(l), 0);
    close_lock(f, l);
    close_client(f, c);
}

static void test_value_parse(void **state)
{
    char inst[64];
    long long t = 0;

    (void)state;
    assert_int_equal(lock_value_parse("h:1|42", inst, sizeof(inst), &t), 0);
    assert_string_equal(inst, "h:1");
    assert_int_equal(t, 42);
    assert_int_equal(lock_value_parse("a|b|9", inst, sizeof(inst), &t), 0);
    assert_string_equal(inst, "a|b");
    assert_int_equal(t, 9);
    assert_int_equal(lock_value_parse("nobar", inst, sizeof(inst), &t), -1);
    assert_int_equal(lock_value_parse("|5", inst, sizeof(inst), &t), -1);
    assert_int_equal(lock_value_parse("h|", inst, sizeof(inst), &t), -1);
    assert_int_equal(lock_value_parse("h|0", inst, sizeof(inst), &t), -1);
    assert_int_equal(lock_value_parse("h|12x", inst, sizeof(inst), &t), -1);
    assert_int_equal(lock_value_parse("toolonginstance|1", inst, 4, &t), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_value_parse),
        cmocka_unit_test_setup_teardown(test_contenders_exactly_one, setup, teardown),
        cmocka_unit_test_setup_teardown(test_renewal_keeps_lock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_frozen_holder_loses_lease_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_taken_over, setup, teardown),
        cmocka_unit_test_setup_teardown(test_evalsha_after_script_flush, setup, teardown),
        cmocka_unit_test_setup_teardown(test_holder_lookup, setup, teardown),
    };

    log_init(LOG_WARN, 0, "test_lock", 0);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
