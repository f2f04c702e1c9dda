/* time_rfc3339 formatting and the monotonic clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <cmocka.h>

#include "common/timeutil.h"

static void test_rfc3339(void **state)
{
    char out[32];

    (void)state;
    time_rfc3339(0, -1, out);
    assert_string_equal(out, "1970-01-01T00:00:00Z");
    time_rfc3339(1795521600, -1, out);
    assert_string_equal(out, "2026-11-24T12:00:00Z");
    time_rfc3339(1795521600, 7, out);
    assert_string_equal(out, "2026-11-24T12:00:00.007Z");
    time_rfc3339(951868799, 999, out);
    assert_string_equal(out, "2000-02-29T23:59:59.999Z");
    time_rfc3339(951868799, 1000, out); /* out of range: no fraction */
    assert_string_equal(out, "2000-02-29T23:59:59Z");
}

static void test_clocks(void **state)
{
    struct timespec d = {0, 20 * 1000 * 1000};
    uint64_t a, b, w;

    (void)state;
    a = time_mono_us();
    nanosleep(&d, NULL);
    b = time_mono_us();
    assert_true(b - a >= 20000);
    assert_true(b - a < 2000000);
    w = time_wall_ms();
    assert_true(w > 1700000000000ULL); /* after 2023 */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc3339),
        cmocka_unit_test(test_clocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
