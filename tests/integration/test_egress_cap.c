/* common/egress_cap.c against the real test Redis (ORGSYNC_TEST_REDIS_URL): one cap
 * shared by independent clients, ids independent of each other, the hour's cap,
 * key lifetimes, the wait's arithmetic at chosen instants (egress_cap_admit_at) and
 * by Redis's own clock, a brute-force check of every sliding window, a script cache
 * flush, and Redis down or mute. */
#include <errno.h>
#include <unistd.h>

#include "common/egress_cap.h"
#include "common/metrics.h"
#include "tests/integration/redis_helpers.h"

typedef struct fixture {
    tloop l;
    redis_client *c1, *c2; /* two independent connections, like two processes */
    char id[EGRESS_ID_MAX + 1];
    char ids[4][EGRESS_ID_MAX + 1]; /* whose keys teardown deletes */
    int nids;
} fixture;

typedef struct adm {
    int calls;
    int status;
    long long wait, in_min, in_hour;
} adm;

static const char *redis_url(void)
{
    const char *u = getenv("ORGSYNC_TEST_REDIS_URL");

    if (!u || !*u)
        fail_msg("ORGSYNC_TEST_REDIS_URL is not set: run under tests/run.sh");
    return u;
}

static void cmd(fixture *f, redis_client *c, result *r, const char *fmt, const char *a,
                const char *b)
{
    memset(r, 0, sizeof(*r));
    r->loop = &f->l.loop;
    assert_int_equal(redis_cmd(c, on_result, r, fmt, a, b), 0);
    tloop_wait(&f->l, r, 3000);
}

static void del_keys(fixture *f, const char *id)
{
    char s[96], m[96];
    result r;

    assert_int_equal(egress_cap_keys(id, s, m, sizeof(s)), 0);
    cmd(f, f->c1, &r, "DEL %s %s", s, m);
    assert_false(r.has_err);
}

/* A fresh id of this process (the server is shared), remembered for teardown. */
static const char *new_id(fixture *f, const char *name)
{
    char *id;

    assert_true(f->nids < 4);
    id = f->ids[f->nids++];
    snprintf(id, EGRESS_ID_MAX + 1, "it-%d-%s", (int)getpid(), name);
    del_keys(f, id);
    return id;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    tloop_init(&f->l);
    f->c1 = tloop_client(&f->l, &(redis_opts){.url = redis_url()});
    f->c2 = tloop_client(&f->l, &(redis_opts){.url = redis_url()});
    assert_non_null(f->c1);
    assert_non_null(f->c2);
    tloop_wait_connected(&f->l, f->c1, 3000);
    tloop_wait_connected(&f->l, f->c2, 3000);
    snprintf(f->id, sizeof(f->id), "%s", new_id(f, "main"));
    metrics_reset();
    metrics_init();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    int rc, i;

    for (i = 0; i < f->nids && f->c1; i++)
        del_keys(f, f->ids[i]);
    rc = tloop_close(&f->l);
    metrics_reset();
    free(f);
    return rc;
}

static void on_adm(void *arg, int status, long long wait_ms, long long in_minute, long long in_hour)
{
    adm *a = arg;

    a->calls++;
    a->status = status;
    a->wait = wait_ms;
    a->in_min = in_minute;
    a->in_hour = in_hour;
}

static int pred_adm(void *p)
{
    return ((adm *)p)->calls > 0;
}

static void adm_wait(fixture *f, adm *a)
{
    if (!tloop_run_until(&f->l, pred_adm, a, 5000))
        fail_msg("no admission answer within 5 s");
    assert_int_equal(a->calls, 1);
}

/* One admission by Redis's clock (now_ms < 0) or at now_ms. */
static adm admit(fixture *f, egress_cap *e, long long now_ms)
{
    adm a;

    memset(&a, 0, sizeof(a));
    if (now_ms < 0)
        assert_int_equal(egress_cap_admit(e, on_adm, &a), 0);
    else
        assert_int_equal(egress_cap_admit_at(e, now_ms, on_adm, &a), 0);
    assert_int_equal(a.calls, 0); /* never from inside the call */
    adm_wait(f, &a);
    return a;
}

/* Redis's clock in ms. */
static long long redis_now(fixture *f)
{
    result r;

    cmd(f, f->c1, &r, "TIME", NULL, NULL);
    assert_int_equal(r.elements, 2);
    return atoll(r.el[0]) * 1000 + atoll(r.el[1]) / 1000;
}

/* Sum of the counts in one of the id's hashes ('s' or 'm'). */
static long long hash_sum(fixture *f, const char *id, char which, long long *fields)
{
    char s[96], m[96];
    result r;
    long long sum = 0;

    assert_int_equal(egress_cap_keys(id, s, m, sizeof(s)), 0);
    cmd(f, f->c1, &r, "HVALS %s", which == 's' ? s : m, NULL);
    assert_int_equal(r.type, REDIS_REPLY_ARRAY);
    if (fields)
        *fields = (long long)r.elements;
    /* on_result copies only 4 elements: sum in Lua instead. */
    {
        char src[] = "local t = 0 for _, v in ipairs(redis.call('HVALS', KEYS[1])) do "
                     "t = t + tonumber(v) end return t";
        memset(&r, 0, sizeof(r));
        assert_int_equal(redis_cmd(f->c1, on_result, &r, "EVAL %s 1 %s", src, which == 's' ? s : m),
                         0);
        tloop_wait(&f->l, &r, 3000);
        assert_int_equal(r.type, REDIS_REPLY_INTEGER);
        sum = r.integer;
    }
    return sum;
}

/* ---- tests ---------------------------------------------------------------------- */

/* Two clients (two connections, as two processes or hosts would have), one id: 60
 * admissions sent at once, alternating, give exactly 50 admitted; the next waits
 * until the oldest second leaves: (b0 + 61) * 1000 - now, by Redis's clock. */
static void test_shared_between_clients(void **state)
{
    fixture *f = *state;
    egress_cap *e1 = egress_cap_new(f->c1, f->id, 50, 1000);
    egress_cap *e2 = egress_cap_new(f->c2, f->id, 50, 1000);
    static adm a[60];
    adm last;
    int admitted = 0, waited = 0, i;
    long long t0, t1, lo, hi;

    assert_non_null(e1);
    assert_non_null(e2);
    assert_true(metrics_value(M_EGRESS_LIMIT, "window=\"60s\"") == 50);
    assert_true(metrics_value(M_EGRESS_LIMIT, "window=\"3600s\"") == 1000);
    t0 = redis_now(f);
    memset(a, 0, sizeof(a));
    for (i = 0; i < 60; i++)
        assert_int_equal(egress_cap_admit(i % 2 ? e2 : e1, on_adm, &a[i]), 0);
    for (i = 0; i < 60; i++) {
        adm_wait(f, &a[i]);
        if (a[i].status == EGRESS_ADMITTED) {
            admitted++;
            assert_int_equal(a[i].wait, 0);
            assert_true(a[i].in_min >= 1 && a[i].in_min <= 50);
        } else {
            assert_int_equal(a[i].status, EGRESS_WAIT);
            assert_int_equal(a[i].in_min, 50);
            waited++;
        }
    }
    assert_int_equal(admitted, 50);
    assert_int_equal(waited, 10);
    /* The 51st (from either client) waits, with the bucket arithmetic's answer. */
    last = admit(f, e2, -1);
    t1 = redis_now(f);
    assert_int_equal(last.status, EGRESS_WAIT);
    assert_int_equal(last.in_min, 50);
    assert_int_equal(last.in_hour, 50);
    /* b0 (the first admission's second) is in [t0/1000, t1/1000], now in [t0, t1]. */
    lo = (t0 / 1000 + 61) * 1000 - t1;
    hi = (t1 / 1000 + 61) * 1000 - t0;
    if (last.wait < lo || last.wait > hi)
        fail_msg("wait %lld ms outside [%lld, %lld]", last.wait, lo, hi);
    assert_true(last.wait >= 1 && last.wait <= 61000);
    /* Counted once each, in both windows' hashes. */
    assert_int_equal(hash_sum(f, f->id, 's', NULL), 50);
    assert_int_equal(hash_sum(f, f->id, 'm', NULL), 50);
    /* Metrics: the sums the last admission saw, and every wait counted. */
    assert_true(metrics_value(M_EGRESS_CALLS, "window=\"60s\"") == 50);
    assert_true(metrics_value(M_EGRESS_CALLS, "window=\"3600s\"") == 50);
    assert_true(metrics_value(M_EGRESS_WAITS, NULL) == 11);
    egress_cap_free(e1);
    egress_cap_free(e2);
}

/* Another egress id is another budget; caps may differ per process only in what
 * each admits (the counts are shared). */
static void test_ids_independent(void **state)
{
    fixture *f = *state;
    const char *other = new_id(f, "other");
    egress_cap *a = egress_cap_new(f->c1, f->id, 5, 100);
    egress_cap *b = egress_cap_new(f->c2, other, 5, 100);
    adm r;
    int i;

    for (i = 0; i < 5; i++)
        assert_int_equal(admit(f, a, -1).status, EGRESS_ADMITTED);
    assert_int_equal(admit(f, a, -1).status, EGRESS_WAIT);
    for (i = 0; i < 5; i++) {
        r = admit(f, b, -1);
        assert_int_equal(r.status, EGRESS_ADMITTED);
        assert_int_equal(r.in_min, i + 1);
    }
    assert_int_equal(admit(f, b, -1).status, EGRESS_WAIT);
    assert_int_equal(hash_sum(f, f->id, 's', NULL), 5);
    assert_int_equal(hash_sum(f, other, 's', NULL), 5);
    egress_cap_free(a);
    egress_cap_free(b);
}

/* per_hour below what the minute allows: the hour binds, and its wait is the
 * oldest minute's departure, (m0 + 61) * 60000 - now. */
static void test_hour_cap_binds(void **state)
{
    fixture *f = *state;
    egress_cap *e = egress_cap_new(f->c1, f->id, 50, 20);
    const long long base = 1700000000000LL + 12345; /* minute 28333333, 32,345 ms in */
    adm r;
    int i;

    for (i = 0; i < 20; i++) {
        r = admit(f, e, base + i * 1000);
        assert_int_equal(r.status, EGRESS_ADMITTED);
        assert_int_equal(r.in_hour, i + 1);
    }
    /* 20 in the last minute (below 50) but 20 in the hour. */
    r = admit(f, e, base + 20000);
    assert_int_equal(r.status, EGRESS_WAIT);
    assert_int_equal(r.in_min, 20);
    assert_int_equal(r.in_hour, 20);
    assert_int_equal(r.wait, (28333333LL + 61) * 60000 - (base + 20000));
    /* 30 minutes on: the minute window is empty, the hour still full. */
    r = admit(f, e, base + 30 * 60000);
    assert_int_equal(r.status, EGRESS_WAIT);
    assert_int_equal(r.in_min, 0);
    assert_int_equal(r.wait, (28333333LL + 61) * 60000 - (base + 30 * 60000));
    /* One ms before the oldest minute leaves: still full; at it: admitted. */
    r = admit(f, e, (28333333LL + 61) * 60000 - 1);
    assert_int_equal(r.status, EGRESS_WAIT);
    assert_int_equal(r.wait, 1);
    r = admit(f, e, (28333333LL + 61) * 60000);
    assert_int_equal(r.status, EGRESS_ADMITTED);
    assert_int_equal(r.in_hour, 1);
    egress_cap_free(e);
}

/* The minute's arithmetic at chosen instants: the 61 seconds that can overlap a
 * window ending now are all counted (a call 59,001 ms after 50 others waits), the
 * wait is to the millisecond, and old seconds are pruned. */
static void test_minute_arithmetic(void **state)
{
    fixture *f = *state;
    egress_cap *e = egress_cap_new(f->c1, f->id, 50, 1000);
    const long long s0 = 1700000000LL, base = s0 * 1000 + 999;
    long long fields;
    adm r;
    int i;

    for (i = 0; i < 50; i++)
        assert_int_equal(admit(f, e, base).status, EGRESS_ADMITTED);
    r = admit(f, e, base + 1); /* the next second */
    assert_int_equal(r.status, EGRESS_WAIT);
    assert_int_equal(r.wait, (s0 + 61) * 1000 - (base + 1));
    assert_int_equal(r.wait, 60000);
    /* Second s0 + 60 overlaps a window that holds s0's last ms: still counted. */
    r = admit(f, e, (s0 + 60) * 1000);
    assert_int_equal(r.status, EGRESS_WAIT);
    assert_int_equal(r.wait, 1000);
    r = admit(f, e, (s0 + 61) * 1000 - 1);
    assert_int_equal(r.status, EGRESS_WAIT);
    assert_int_equal(r.wait, 1);
    r = admit(f, e, (s0 + 61) * 1000);
    assert_int_equal(r.status, EGRESS_ADMITTED);
    assert_int_equal(r.in_min, 1);
    assert_int_equal(r.in_hour, 51);
    /* s0's field was dropped: one second is left in the minute hash. */
    assert_int_equal(hash_sum(f, f->id, 's', &fields), 1);
    assert_int_equal(fields, 1);
    /* Spread calls: 25 in s0+100, 25 in s0+130; the wait is for s0+100 to leave. */
    for (i = 0; i < 25; i++)
        assert_int_equal(admit(f, e, (s0 + 100) * 1000 + 10).status, EGRESS_ADMITTED);
    for (i = 0; i < 25; i++)
        assert_int_equal(admit(f, e, (s0 + 130) * 1000 + 10).status, EGRESS_ADMITTED);
    r = admit(f, e, (s0 + 140) * 1000);
    assert_int_equal(r.status, EGRESS_WAIT);
    assert_int_equal(r.in_min, 50);
    assert_int_equal(r.wait, (s0 + 161) * 1000 - (s0 + 140) * 1000);
    egress_cap_free(e);
}

/* Redis's clock stepping back (a wall clock set back): calls stamped in its
 * future are still counted, and waited for until their bucket leaves. */
static void test_clock_steps_back(void **state)
{
    fixture *f = *state;
    egress_cap *e = egress_cap_new(f->c1, f->id, 10, 1000);
    const long long s0 = 1700000000LL, t = s0 * 1000 + 200;
    adm r;
    int i;

    for (i = 0; i < 10; i++)
        assert_int_equal(admit(f, e, t).status, EGRESS_ADMITTED);
    r = admit(f, e, t - 5000);
    assert_int_equal(r.status, EGRESS_WAIT);
    assert_int_equal(r.in_min, 10);
    assert_int_equal(r.wait, (s0 + 61) * 1000 - (t - 5000));
    r = admit(f, e, t - 3600000); /* an hour back: the minute bucket too */
    assert_int_equal(r.status, EGRESS_WAIT);
    assert_int_equal(r.in_hour, 10);
    egress_cap_free(e);
}

/* Every admission's keys get a lifetime: 62 s for the seconds, 62 min for minutes. */
static void test_keys_expire(void **state)
{
    fixture *f = *state;
    egress_cap *e = egress_cap_new(f->c1, f->id, 10, 100);
    char s[96], m[96];
    result r;

    assert_int_equal(admit(f, e, -1).status, EGRESS_ADMITTED);
    assert_int_equal(egress_cap_keys(f->id, s, m, sizeof(s)), 0);
    cmd(f, f->c1, &r, "PTTL %s", s, NULL);
    if (r.integer < 61000 || r.integer > 62000)
        fail_msg("seconds hash PTTL %lld", r.integer);
    cmd(f, f->c1, &r, "PTTL %s", m, NULL);
    if (r.integer < 61 * 60000 || r.integer > 62 * 60000)
        fail_msg("minutes hash PTTL %lld", r.integer);
    egress_cap_free(e);
}

/* By Redis's own clock: a minute filled 59 s ago frees up within 2 s, and a call
 * asked again after the wait it was given is admitted. */
static void test_wait_then_admitted(void **state)
{
    fixture *f = *state;
    egress_cap *e = egress_cap_new(f->c1, f->id, 50, 1000);
    char s[96], m[96], field[32];
    long long now;
    result r;
    adm a;
    uint64_t t0;

    assert_int_equal(egress_cap_keys(f->id, s, m, sizeof(s)), 0);
    now = redis_now(f);
    snprintf(field, sizeof(field), "%lld", now / 1000 - 59);
    memset(&r, 0, sizeof(r));
    assert_int_equal(redis_cmd(f->c1, on_result, &r, "HSET %s %s 50", s, field), 0);
    tloop_wait(&f->l, &r, 3000);
    assert_false(r.has_err);
    a = admit(f, e, -1);
    assert_int_equal(a.status, EGRESS_WAIT);
    assert_int_equal(a.in_min, 50);
    if (a.wait < 1 || a.wait > 2000)
        fail_msg("wait %lld ms, expected 1..2000", a.wait);
    t0 = uv_now(&f->l.loop);
    tloop_run_for(&f->l, (uint64_t)a.wait);
    assert_true(uv_now(&f->l.loop) - t0 >= (uint64_t)a.wait);
    a = admit(f, e, -1);
    assert_int_equal(a.status, EGRESS_ADMITTED);
    assert_int_equal(a.in_min, 1);
    egress_cap_free(e);
}

/* xorshift: reproducible steps. */
static uint64_t rnd(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* A random walk over three simulated hours at chosen instants: no window of
 * 60,000 ms holds more than per_min admitted calls, none of 3,600,000 ms more than
 * per_hour (checked by brute force over the admission times, not by buckets);
 * every wait is exact: one ms earlier still waits, at it the call is admitted. */
static void test_sliding_windows(void **state)
{
    fixture *f = *state;
    enum { PER_MIN = 7, PER_HOUR = 60, STEPS = 1500 };
    egress_cap *e = egress_cap_new(f->c1, f->id, PER_MIN, PER_HOUR);
    static long long at[STEPS * 2];
    long long t = 1700000000000LL + 777;
    int n = 0, waits = 0, probes = 0, hour_waits = 0, i, lo_m = 0, lo_h = 0;
    long long min_m, min_h;
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    adm r;

    for (i = 0; i < STEPS; i++) {
        r = admit(f, e, t);
        if (r.status == EGRESS_ADMITTED) {
            at[n++] = t;
            t += (long long)(rnd(&x) % 4000); /* often several calls in a second */
            continue;
        }
        assert_int_equal(r.status, EGRESS_WAIT);
        assert_true(r.wait >= 1);
        waits++;
        if (r.in_hour >= PER_HOUR)
            hour_waits++;
        if (rnd(&x) % 2 == 0) {
            /* The wait is the earliest instant: at wait - 1 still refused. */
            if (r.wait > 1) {
                adm early = admit(f, e, t + r.wait - 1);
                assert_int_equal(early.status, EGRESS_WAIT);
                assert_int_equal(early.wait, 1);
            }
            t += r.wait;
            r = admit(f, e, t);
            if (r.status != EGRESS_ADMITTED)
                fail_msg("not admitted at the wait it was given (t=%lld)", t);
            at[n++] = t;
            probes++;
        } else {
            t += (long long)(rnd(&x) % (unsigned long long)r.wait);
        }
    }
    /* Brute force over windows ending at each admission. */
    for (i = 0; i < n; i++) {
        while (at[lo_m] <= at[i] - 60000)
            lo_m++;
        while (at[lo_h] <= at[i] - 3600000)
            lo_h++;
        if (i - lo_m + 1 > PER_MIN)
            fail_msg("%d calls in the 60 s ending at %lld", i - lo_m + 1, at[i]);
        if (i - lo_h + 1 > PER_HOUR)
            fail_msg("%d calls in the hour ending at %lld", i - lo_h + 1, at[i]);
    }
    /* The walk really pressed on both caps. */
    assert_true(waits > 100);
    assert_true(probes > 50);
    assert_true(hour_waits > 10);
    assert_true(t - 1700000000000LL > 3 * 3600000LL);
    /* Not over-strict either: the closest a call came to the PER_MIN-th call before
     * it (the shortest span of PER_MIN + 1 calls) is within the bucket's second of
     * 60 s, and within the bucket's minute of an hour for PER_HOUR + 1. */
    min_m = min_h = -1;
    for (i = PER_MIN; i < n; i++)
        if (min_m < 0 || at[i] - at[i - PER_MIN] < min_m)
            min_m = at[i] - at[i - PER_MIN];
    for (i = PER_HOUR; i < n; i++)
        if (min_h < 0 || at[i] - at[i - PER_HOUR] < min_h)
            min_h = at[i] - at[i - PER_HOUR];
    if (min_m <= 60000 || min_m > 61000)
        fail_msg("shortest span of %d calls: %lld ms", PER_MIN + 1, min_m);
    if (min_h <= 3600000 || min_h > 61 * 60000)
        fail_msg("shortest span of %d calls: %lld ms", PER_HOUR + 1, min_h);
    egress_cap_free(e);
}

/* A script cache flush (a Redis restart, a failover) is survived: EVALSHA answers
 * NOSCRIPT and the EVAL fallback admits and counts. */
static void test_script_flush(void **state)
{
    fixture *f = *state;
    egress_cap *e = egress_cap_new(f->c1, f->id, 10, 100);
    redis_stats a, b;
    result r;
    adm x;

    assert_int_equal(admit(f, e, -1).status, EGRESS_ADMITTED);
    cmd(f, f->c2, &r, "SCRIPT FLUSH", NULL, NULL);
    assert_string_equal(r.str, "OK");
    redis_get_stats(f->c1, &a);
    x = admit(f, e, -1);
    redis_get_stats(f->c1, &b);
    assert_int_equal(x.status, EGRESS_ADMITTED);
    assert_int_equal(x.in_min, 2);
    assert_int_equal(b.commands - a.commands, 2); /* EVALSHA, then EVAL */
    assert_int_equal(b.errors, a.errors);
    assert_int_equal(hash_sum(f, f->id, 's', NULL), 2);
    egress_cap_free(e);
}

/* Nothing listens: an error at once (next loop turn), not a hang, nothing counted. */
static void test_redis_down(void **state)
{
    fixture *f = *state;
    redis_client *dead = tloop_client(
        &f->l, &(redis_opts){.url = "redis://127.0.0.1:1/0", .connect_timeout_ms = 500});
    egress_cap *e;
    adm a;
    uint64_t t0;

    assert_non_null(dead);
    e = egress_cap_new(dead, f->id, 10, 100);
    assert_non_null(e);
    t0 = uv_now(&f->l.loop);
    a = admit(f, e, -1);
    assert_int_equal(a.status, -ENOTCONN);
    assert_int_equal(a.wait, 0);
    assert_true(uv_now(&f->l.loop) - t0 < 1000);
    egress_cap_free(e);
    assert_int_equal(tloop_close_client(&f->l, dead), 0);
    assert_int_equal(hash_sum(f, f->id, 's', NULL), 0);
}

/* A server that completes the handshake (answers SELECT) and then never answers:
 * the admission fails with -ETIMEDOUT after the command timeout. */
typedef struct mute {
    uv_tcp_t srv;
    uv_tcp_t conn;
    uv_write_t wr;
    int accepted, answered;
    char rbuf[4096];
} mute;

static void mute_alloc(uv_handle_t *h, size_t size, uv_buf_t *buf)
{
    mute *m = h->data;
    (void)size;
    *buf = uv_buf_init(m->rbuf, sizeof(m->rbuf));
}

static void mute_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    static char ok[] = "+OK\r\n";
    mute *m = s->data;
    uv_buf_t b = uv_buf_init(ok, 5);
    (void)buf;
    if (n > 0 && !m->answered) {
        m->answered = 1;
        uv_write(&m->wr, s, &b, 1, NULL);
    }
}

static void mute_on_conn(uv_stream_t *srv, int status)
{
    mute *m = srv->data;

    if (status < 0 || m->accepted)
        return;
    uv_tcp_init(srv->loop, &m->conn);
    m->conn.data = m;
    if (uv_accept(srv, (uv_stream_t *)&m->conn) == 0) {
        m->accepted = 1;
        uv_read_start((uv_stream_t *)&m->conn, mute_alloc, mute_read);
    } else {
        uv_close((uv_handle_t *)&m->conn, NULL);
    }
}

static void test_redis_mute(void **state)
{
    fixture *f = *state;
    struct sockaddr_in addr;
    struct sockaddr_storage bound;
    int namelen = sizeof(bound);
    char url[64];
    redis_client *c;
    egress_cap *e;
    static mute m;
    adm a;
    uint64_t t0;

    memset(&m, 0, sizeof(m));
    uv_tcp_init(&f->l.loop, &m.srv);
    m.srv.data = &m;
    uv_ip4_addr("127.0.0.1", 0, &addr);
    assert_int_equal(uv_tcp_bind(&m.srv, (const struct sockaddr *)&addr, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&m.srv, 4, mute_on_conn), 0);
    uv_tcp_getsockname(&m.srv, (struct sockaddr *)&bound, &namelen);
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/0",
             ntohs(((struct sockaddr_in *)&bound)->sin_port));
    c = tloop_client(&f->l, &(redis_opts){.url = url, .command_timeout_ms = 300});
    assert_non_null(c);
    tloop_wait_connected(&f->l, c, 3000);
    e = egress_cap_new(c, f->id, 10, 100);
    t0 = uv_now(&f->l.loop);
    a = admit(f, e, -1);
    assert_int_equal(a.status, -ETIMEDOUT);
    assert_true(uv_now(&f->l.loop) - t0 >= 300);
    egress_cap_free(e);
    assert_int_equal(tloop_close_client(&f->l, c), 0);
    if (m.accepted)
        uv_close((uv_handle_t *)&m.conn, NULL);
    uv_close((uv_handle_t *)&m.srv, NULL);
    uv_run(&f->l.loop, UV_RUN_NOWAIT);
}

/* Freeing the cap with admissions pending: each callback once, now, -ECANCELED; the
 * late replies go nowhere; admissions asked from those callbacks are refused. */
typedef struct freeing {
    int calls, cancelled, again;
    egress_cap *e;
} freeing;

static void on_freed(void *arg, int status, long long wait_ms, long long in_minute,
                     long long in_hour)
{
    freeing *s = arg;
    (void)wait_ms;
    (void)in_minute;
    (void)in_hour;
    s->calls++;
    if (status == -ECANCELED)
        s->cancelled++;
    if (egress_cap_admit(s->e, on_freed, s) == -ECANCELED)
        s->again++;
}

static void test_free_with_pending(void **state)
{
    fixture *f = *state;
    static freeing s;
    int i;

    memset(&s, 0, sizeof(s));
    s.e = egress_cap_new(f->c1, f->id, 10, 100);
    assert_non_null(s.e);
    for (i = 0; i < 3; i++)
        assert_int_equal(egress_cap_admit(s.e, on_freed, &s), 0);
    egress_cap_free(s.e);
    assert_int_equal(s.calls, 3);
    assert_int_equal(s.cancelled, 3);
    assert_int_equal(s.again, 3);
    tloop_run_for(&f->l, 200);
    assert_int_equal(s.calls, 3);
    /* The admissions themselves reached Redis and were counted. */
    assert_int_equal(hash_sum(f, f->id, 's', NULL), 3);
}

/* Closing the Redis client under a pending admission: -ECANCELED, once. */
static void test_client_closing(void **state)
{
    fixture *f = *state;
    redis_client *c = tloop_client(&f->l, &(redis_opts){.url = redis_url()});
    egress_cap *e;
    adm a;

    assert_non_null(c);
    tloop_wait_connected(&f->l, c, 3000);
    e = egress_cap_new(c, f->id, 10, 100);
    memset(&a, 0, sizeof(a));
    assert_int_equal(egress_cap_admit(e, on_adm, &a), 0);
    assert_int_equal(tloop_close_client(&f->l, c), 0);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.status, -ECANCELED);
    egress_cap_free(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_shared_between_clients, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ids_independent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hour_cap_binds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_minute_arithmetic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_clock_steps_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keys_expire, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wait_then_admitted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sliding_windows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_script_flush, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_mute, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_with_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_closing, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
