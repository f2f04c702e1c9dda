/* The one definition of a run's percent and ETA (worker/api/run_view.c): the
 * mean of the enterprises' tenths, rounded half up with integer arithmetic, so
 * the run list, the run detail and `orgsync sync` cannot round differently. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "worker/api/run_view.h"

static void test_run_percent_states(void **state)
{
    (void)state;
    assert_true(run_view_percent("succeeded", 0, 0) == 100);
    assert_true(run_view_percent("partial", 10, 3) == 100);
    assert_true(run_view_percent("failed", 0, 2) == 100);
    assert_true(run_view_percent("pending", 1500, 2) == 0);
    assert_true(run_view_percent("running", 0, 0) == 0); /* no enterprise yet */
    assert_true(run_view_percent("running", 0, 4) == 0);
}

static void test_run_percent_rounding(void **state)
{
    (void)state;
    /* 25.0 and 100: 62.5 */
    assert_true(run_view_percent("running", 250 + 1000, 2) == 62.5);
    /* 0.1 and 0.0: mean 0.05, half up to 0.1 */
    assert_true(run_view_percent("running", 1, 2) == 0.1);
    /* 0.1, 0.0, 0.0: 0.033 -> 0.0 */
    assert_true(run_view_percent("running", 1, 3) == 0);
    /* 33.3, 33.3, 33.4 = 100.0 / 3 = 33.33 -> 33.3 */
    assert_true(run_view_percent("running", 333 + 333 + 334, 3) == 33.3);
    /* 0.3 * 3 + 99.9 = 100.8 / 4 = 25.2; 99.9 * 2 + 0.2 * 2 = 200.2 / 4 = 50.05 -> 50.1 */
    assert_true(run_view_percent("running", 3 * 3 + 999, 4) == 25.2);
    assert_true(run_view_percent("running", 999 * 2 + 2 * 2, 4) == 50.1);
    /* never 100 before the run is over, however many enterprises are done */
    assert_true(run_view_percent("running", 1000 * 999 + 999, 1000) == 99.9);
}

static void test_eta(void **state)
{
    (void)state;
    assert_int_equal(run_view_eta(1, 0, 100, 1, 1), 0);        /* finished */
    assert_int_equal(run_view_eta(0, 100, 100, 1, 1), -1);     /* no time elapsed */
    assert_int_equal(run_view_eta(0, 0, 100, 0, 100), -1);     /* no rate yet */
    assert_int_equal(run_view_eta(0, 0, 100, 62.5, 37.5), 60); /* the run of it.api */
    assert_int_equal(run_view_eta(0, 0, 100, 3, 1), 34);       /* 33.3 rounded up */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_percent_states),
        cmocka_unit_test(test_run_percent_rounding),
        cmocka_unit_test(test_eta),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
