/* worker/uid_set: "added" only for a userid never added; grows without losing
 * what it holds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "worker/sync/uid_set.h"

#define N 20000

static void test_added_once(void **state)
{
    uid_set s;
    char id[32];
    int added = 0;
    (void)state;

    uid_set_init(&s);
    for (int i = 0; i < N; i++) {
        int n = snprintf(id, sizeof(id), "u%06d", i);
        added += uid_set_add(&s, id, (size_t)n);
    }
    /* Two of 20,000 userids share a 32-bit hash with odds of about 1 in 20:
     * then the second is "maybe" (safe), so allow a few. */
    assert_in_range(added, N - 3, N);
    assert_int_equal(s.n, (size_t)added);
    assert_true(s.cap >= 2 * s.n); /* at most half full */
    /* The property the sync relies on: once added, never "added" again, across
     * every growth of the table. */
    for (int i = 0; i < N; i++) {
        int n = snprintf(id, sizeof(id), "u%06d", i);
        assert_int_equal(uid_set_add(&s, id, (size_t)n), 0);
    }
    assert_int_equal(s.n, (size_t)added);
    uid_set_free(&s);
    assert_null(s.slot);
    assert_int_equal(s.n, 0);
}

/* Userids are bytes: a prefix, the empty userid and bytes above 0x7f are their
 * own. */
static void test_bytes(void **state)
{
    uid_set s;
    (void)state;

    uid_set_init(&s);
    assert_int_equal(uid_set_add(&s, "ab", 2), 1);
    assert_int_equal(uid_set_add(&s, "ab", 1), 1);
    assert_int_equal(uid_set_add(&s, "", 0), 1);
    assert_int_equal(uid_set_add(&s, "\xe5\xbc\xa0", 3), 1);
    assert_int_equal(uid_set_add(&s, "a", 1), 0);
    assert_int_equal(uid_set_add(&s, "", 0), 0);
    assert_int_equal(uid_set_add(&s, "\xe5\xbc\xa0", 3), 0);
    uid_set_free(&s);
    uid_set_free(&s); /* freeing twice is harmless */
}

/* A userid already there changes nothing, even with the table half full (the
 * next new one grows it). */
static void test_present_does_not_grow(void **state)
{
    uid_set s;
    char id[32];
    size_t cap;
    (void)state;

    uid_set_init(&s);
    for (int i = 0; (s.n + 1) * 2 <= s.cap || s.cap == 0; i++) {
        int n = snprintf(id, sizeof(id), "u%06d", i);
        uid_set_add(&s, id, (size_t)n);
    }
    cap = s.cap;
    assert_int_equal(uid_set_add(&s, "u000000", 7), 0);
    assert_int_equal(s.cap, cap);
    assert_int_equal(uid_set_add(&s, "new", 3), 1);
    assert_true(s.cap > cap);
    uid_set_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_added_once),
        cmocka_unit_test(test_bytes),
        cmocka_unit_test(test_present_does_not_grow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
