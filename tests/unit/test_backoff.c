/* backoff_full_jitter_ms: bounds, cap, saturation and distribution. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <cmocka.h>

#include "common/backoff.h"

static void test_bounds_and_cap(void **state)
{
    uint64_t rng = 42;

    (void)state;
    for (unsigned attempt = 0; attempt < 70; attempt++) {
        uint64_t ceil = attempt >= 32 ? 10000 : (uint64_t)200 << attempt;
        if (ceil > 10000)
            ceil = 10000;
        for (int i = 0; i < 2000; i++) {
            uint32_t d = backoff_full_jitter_ms(attempt, 200, 10000, &rng);
            if (d > ceil)
                fail_msg("attempt %u: %u > %llu", attempt, d, (unsigned long long)ceil);
        }
    }
    /* Degenerate inputs. */
    for (int i = 0; i < 100; i++) {
        assert_int_equal(backoff_full_jitter_ms(5, 0, 10000, &rng), 0);
        assert_int_equal(backoff_full_jitter_ms(5, 200, 0, &rng), 0);
        assert_true(backoff_full_jitter_ms(0, 1, 10000, &rng) <= 1);
        /* No overflow at the extremes (UBSan would abort). */
        assert_true(backoff_full_jitter_ms(31, UINT32_MAX, UINT32_MAX, &rng) <= UINT32_MAX);
        assert_true(backoff_full_jitter_ms(UINT32_MAX, UINT32_MAX, 777, &rng) <= 777);
    }
}

/* Over many draws the whole window is used, both ends are reachable, and the
 * histogram is flat. */
static void test_distribution(void **state)
{
    uint64_t rng = backoff_seed();
    enum { N = 200000, B = 10 };
    unsigned hist[B] = {0};
    uint32_t lo = UINT32_MAX, hi = 0;
    double sum = 0;

    (void)state;
    for (int i = 0; i < N; i++) {
        uint32_t d = backoff_full_jitter_ms(3, 200, 10000, &rng); /* window [0, 1600] */
        assert_true(d <= 1600);
        hist[d * B / 1601]++;
        sum += d;
        if (d < lo)
            lo = d;
        if (d > hi)
            hi = d;
    }
    assert_true(lo <= 2);
    assert_true(hi >= 1598);
    printf("mean %.1f (expect 800), min %u, max %u\n", sum / N, lo, hi);
    assert_true(sum / N > 784 && sum / N < 816);
    for (int b = 0; b < B; b++) {
        double expect = (double)N / B;
        if (hist[b] < expect * 0.95 || hist[b] > expect * 1.05)
            fail_msg("bucket %d has %u draws, expected about %.0f", b, hist[b], expect);
    }

    /* Capped window: attempt 10 would be 204800 ms, capped at 10000. */
    sum = 0;
    hi = 0;
    for (int i = 0; i < N; i++) {
        uint32_t d = backoff_full_jitter_ms(10, 200, 10000, &rng);
        sum += d;
        if (d > hi)
            hi = d;
    }
    assert_true(hi <= 10000 && hi >= 9990);
    assert_true(sum / N > 4900 && sum / N < 5100);

    /* Window [0, 1]: both values, about half each. */
    unsigned ones = 0;
    for (int i = 0; i < 10000; i++)
        ones += backoff_full_jitter_ms(0, 1, 100, &rng);
    assert_true(ones > 4700 && ones < 5300);
}

static void test_seed_and_determinism(void **state)
{
    uint64_t a = 7, b = 7, z = 0;
    uint64_t s1 = backoff_seed(), s2 = backoff_seed();
    int same = 1;

    (void)state;
    assert_true(s1 != 0 && s2 != 0);
    assert_true(s1 != s2); /* the clocks moved between calls */
    for (int i = 0; i < 100; i++)
        assert_int_equal(backoff_full_jitter_ms(4, 200, 10000, &a),
                         backoff_full_jitter_ms(4, 200, 10000, &b));
    a = 1;
    b = 2;
    for (int i = 0; i < 100; i++)
        if (backoff_full_jitter_ms(4, 200, 10000, &a) != backoff_full_jitter_ms(4, 200, 10000, &b))
            same = 0;
    assert_false(same);
    /* A zero state must not get stuck at zero. */
    backoff_rand(&z);
    assert_true(z != 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bounds_and_cap),
        cmocka_unit_test(test_distribution),
        cmocka_unit_test(test_seed_and_determinism),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
