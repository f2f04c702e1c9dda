/* pacer: one at a time, sends on a schedule of one per interval, a late send's
 * lateness made up by the next (up to catch-up), and simulated 10 requests/s
 * runs over 10 s of simulated time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <cmocka.h>

#include "common/backoff.h"
#include "common/pacer.h"

static void test_init(void **state)
{
    pacer p;

    (void)state;
    pacer_init(&p, 10, 0);
    assert_int_equal(p.interval_us, 100000);
    pacer_init(&p, 10, 2500);
    assert_int_equal(p.interval_us, 102500);
    pacer_init(&p, 3, 0); /* 333333.3 rounds up, never faster than the rate */
    assert_int_equal(p.interval_us, 333334);
    pacer_init(&p, 0, 500);
    assert_int_equal(p.interval_us, 500);
    pacer_init(&p, 10, 0);
    assert_int_equal(p.catchup_us, 50000);
}

static void test_one_at_a_time_and_spacing(void **state)
{
    pacer p;
    uint64_t t0 = 5000000;

    (void)state;
    pacer_init(&p, 10, 0);
    assert_int_equal(pacer_wait_us(&p, t0), 0); /* first send: at once */
    assert_int_equal(pacer_start(&p, t0), 0);
    assert_true(pacer_wait_us(&p, t0 + 1) == UINT64_MAX);
    assert_int_equal(pacer_start(&p, t0 + 500000), -1); /* in flight */
    pacer_done(&p);
    assert_int_equal(pacer_wait_us(&p, t0 + 10000), 90000);
    assert_int_equal(pacer_start(&p, t0 + 99999), -1);
    assert_int_equal(pacer_wait_us(&p, t0 + 99999), 1);
    assert_int_equal(pacer_start(&p, t0 + 100000), 0);
    pacer_done(&p);
    /* A failed request counts the same: done() just ends it. */
    assert_int_equal(pacer_wait_us(&p, t0 + 100000), 100000);
}

/* A send that starts late keeps the schedule: the next is due one interval after
 * the late one's due moment. Later than catch-up, the schedule starts over. */
static void test_late_send_keeps_schedule(void **state)
{
    pacer p;

    (void)state;
    pacer_init(&p, 10, 0);
    assert_int_equal(pacer_start(&p, 0), 0); /* due: 100 ms, 200 ms, ... */
    pacer_done(&p);
    assert_int_equal(pacer_start(&p, 130000), 0); /* 30 ms late */
    pacer_done(&p);
    assert_int_equal(pacer_wait_us(&p, 130000), 70000); /* still due at 200 ms */
    assert_int_equal(pacer_start(&p, 199999), -1);
    assert_int_equal(pacer_start(&p, 250000), 0); /* 50 ms late: catch-up, no more */
    pacer_done(&p);
    assert_int_equal(pacer_wait_us(&p, 250000), 50000);
    assert_int_equal(pacer_start(&p, 380000), 0); /* 80 ms late: start over */
    pacer_done(&p);
    assert_int_equal(pacer_wait_us(&p, 380000), 50000); /* 380 - 50 + 100 */
    assert_int_equal(pacer_start(&p, 430000), 0);
    pacer_done(&p);
    assert_int_equal(pacer_wait_us(&p, 430000), 100000);
}

/* A request longer than the interval: the next may go as soon as it ends. */
static void test_long_request(void **state)
{
    pacer p;

    (void)state;
    pacer_init(&p, 10, 0);
    assert_int_equal(pacer_start(&p, 0), 0);
    assert_true(pacer_wait_us(&p, 150000) == UINT64_MAX);
    assert_int_equal(pacer_start(&p, 250000), -1);
    pacer_done(&p);
    assert_int_equal(pacer_wait_us(&p, 250000), 0);
    assert_int_equal(pacer_start(&p, 250000), 0); /* 150 ms late: from 200 ms */
    pacer_done(&p);
    assert_int_equal(pacer_wait_us(&p, 260000), 40000);
}

typedef struct sim_result {
    uint64_t sends[400];
    int n;
} sim_result;

/* Drives the pacer like a loop would: a timer armed for pacer_wait_us fires
 * up to max_late_us late; each request lasts a random time. */
static void simulate(pacer *p, uint64_t rng, uint64_t dur_lo, uint64_t dur_hi, uint64_t max_late_us,
                     uint64_t sim_us, sim_result *r)
{
    uint64_t now = 1000000, end = now + sim_us, done_at = 0;

    r->n = 0;
    while (now < end) {
        if (p->in_flight) {
            now = done_at;
            pacer_done(p);
            continue;
        }
        uint64_t wait = pacer_wait_us(p, now);
        if (wait) {
            now += wait + (max_late_us ? backoff_rand(&rng) % (max_late_us + 1) : 0);
            continue;
        }
        if (now >= end)
            break;
        assert_int_equal(pacer_start(p, now), 0);
        assert_true(r->n < 400);
        r->sends[r->n++] = now - 1000000;
        done_at = now + dur_lo + backoff_rand(&rng) % (dur_hi - dur_lo + 1);
    }
}

static int max_in_any_second(const sim_result *r)
{
    int best = 0;

    for (int i = 0; i < r->n; i++) {
        int c = 0;
        for (int j = i; j < r->n && r->sends[j] < r->sends[i] + 1000000; j++)
            c++;
        if (c > best)
            best = c;
    }
    return best;
}

/* Every send at or after its place in the schedule (i intervals after the
 * first), and at most late_us after it; the smallest gap between two sends. */
static uint64_t on_schedule(const sim_result *r, uint64_t interval, uint64_t late_us)
{
    uint64_t min_gap = UINT64_MAX;

    for (int i = 0; i < r->n; i++) {
        assert_true(r->sends[i] >= (uint64_t)i * interval);
        assert_true(r->sends[i] <= (uint64_t)i * interval + late_us);
        if (i && r->sends[i] - r->sends[i - 1] < min_gap)
            min_gap = r->sends[i] - r->sends[i - 1];
    }
    return min_gap;
}

static void test_simulated_10rps(void **state)
{
    static sim_result r;
    pacer p;
    uint64_t gap;

    (void)state;
    /* Requests of 5-90 ms, timers up to 3 ms late: every send within 3 ms of
     * its place, 100 in 10 s. */
    pacer_init(&p, 10, 0);
    simulate(&p, 99, 5000, 90000, 3000, 10000000, &r);
    gap = on_schedule(&r, 100000, 3000);
    printf("sent %d in 10 s, max %d in any 1 s window, min gap %llu us\n", r.n,
           max_in_any_second(&r), (unsigned long long)gap);
    assert_int_equal(r.n, 100);
    assert_true(gap >= 97000);
    /* The pacer alone may let one more into a second (a late send, then one
     * on time): the upstream's window is kept by its caller (worker/wecom/wecom.c). */
    assert_true(max_in_any_second(&r) <= 11);

    /* A busy CPU: timers up to 40 ms late. Lateness does not add up: still
     * 100 sends in 10 s (spacing each send from the previous one gave 82-84). */
    pacer_init(&p, 10, 0);
    simulate(&p, 5, 5000, 50000, 40000, 10000000, &r);
    gap = on_schedule(&r, 100000, 40000);
    assert_int_equal(r.n, 100);
    assert_true(gap >= 60000);

    /* Requests of 50-250 ms: never two in flight, never ahead of the schedule,
     * and a slow request delays only the next ones. */
    pacer_init(&p, 10, 0);
    simulate(&p, 7, 50000, 250000, 1000, 10000000, &r);
    for (int i = 1; i < r.n; i++)
        assert_true(r.sends[i] >= (uint64_t)i * 100000 && r.sends[i] - r.sends[i - 1] >= 50000);
    assert_true(r.n >= 40); /* mean request 150 ms: about 66 */

    /* A margin slows the rate slightly but never exceeds it. */
    pacer_init(&p, 10, 2000);
    simulate(&p, 3, 1000, 20000, 0, 10000000, &r);
    on_schedule(&r, 102000, 0);
    assert_int_equal(r.n, 99); /* 0, 102 ms, ... 9.996 s */
    assert_true(max_in_any_second(&r) <= 10);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init),
        cmocka_unit_test(test_one_at_a_time_and_spacing),
        cmocka_unit_test(test_late_send_keeps_schedule),
        cmocka_unit_test(test_long_request),
        cmocka_unit_test(test_simulated_10rps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
