/* The API's input checks (worker/api/api_shared.h): run ids and limits, corp ids,
 * mobiles and the realtime lookup body. Hostile shapes must be refused here,
 * before any query is built. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "worker/api/api_shared.h"

static void test_positive_integers(void **state)
{
    (void)state;
    long long v = 0;
    assert_int_equal(api_parse_pos_ll("42", 100, &v), 0);
    assert_int_equal(v, 42);
    assert_int_equal(api_parse_pos_ll("100", 100, &v), 0);
    const char *bad[] = {NULL,
                         "",
                         "0",
                         "-1",
                         "+1",
                         " 1",
                         "1 ",
                         "1.0",
                         "1e3",
                         "0x10",
                         "101",
                         "abc",
                         "1;DROP TABLE x",
                         "99999999999999999999",
                         "１"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(api_parse_pos_ll(bad[i], 100, &v), -1);
    assert_int_equal(api_parse_pos_ll("999999999999999999", 999999999999999999LL, &v), 0);
}

/* ?min_revision=: 0 allowed (nothing seen yet), digits only, at most 18. */
static void test_revisions(void **state)
{
    (void)state;
    long long v = -1;
    assert_int_equal(api_parse_nonneg_ll("0", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(api_parse_nonneg_ll("1234", &v), 0);
    assert_int_equal(v, 1234);
    assert_int_equal(api_parse_nonneg_ll("999999999999999999", &v), 0);
    assert_true(v == 999999999999999999LL);
    const char *bad[] = {NULL,
                         "",
                         "-1",
                         "+1",
                         " 1",
                         "1 ",
                         "1.0",
                         "1e3",
                         "0x10",
                         "abc",
                         "1;DROP TABLE x",
                         "9999999999999999999",
                         "１"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = 7;
        assert_int_equal(api_parse_nonneg_ll(bad[i], &v), -1);
        assert_int_equal(v, 7); /* untouched */
    }
}

static void test_corp_ids(void **state)
{
    (void)state;
    assert_true(corp_id_valid("wwsim0001"));
    assert_true(corp_id_valid("a-b_C9"));
    char long_id[66];
    memset(long_id, 'a', 65);
    long_id[65] = '\0';
    assert_false(corp_id_valid(long_id));
    long_id[64] = '\0';
    assert_true(corp_id_valid(long_id));
    const char *bad[] = {NULL,   "",      "ww'x", "ww x",  "../etc",
                         "ww/x", "ww%00", "ww\"", "ww;--", "ww\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(corp_id_valid(bad[i]));
}

static void test_mobiles(void **state)
{
    (void)state;
    assert_true(api_valid_mobile("13800000000"));
    assert_true(api_valid_mobile("19912345678"));
    assert_true(api_valid_mobile("+8613800000000"));
    assert_true(api_valid_mobile("+123456"));
    const char *bad[] = {NULL,
                         "",
                         "1380000000",
                         "138000000000",
                         "23800000000",
                         "1380000000a",
                         "+12345",
                         "+1234567890123456",
                         "+",
                         "++8613800000000",
                         " 13800000000",
                         "138-0000-0000",
                         "' OR '1'='1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(api_valid_mobile(bad[i]));
}

static int body(const char *s, char *corp, char *mobile)
{
    const char *why = NULL;
    int rc = api_lookup_body_parse(s, strlen(s), corp, 72, mobile, 24, &why);
    if (rc)
        assert_non_null(why);
    return rc;
}

static void test_lookup_body(void **state)
{
    (void)state;
    char corp[72], mobile[24];
    assert_int_equal(body("{\"corp_id\":\"wwsim0001\",\"mobile\":\"13800000000\"}", corp, mobile),
                     0);
    assert_string_equal(corp, "wwsim0001");
    assert_string_equal(mobile, "13800000000");
    assert_int_equal(
        body(" {\"mobile\":\"+8613800000000\",\"corp_id\":\"x\",\"extra\":[1]} ", corp, mobile), 0);
    const char *bad[] = {
        "",
        "{",
        "null",
        "[\"wwsim0001\",\"13800000000\"]",
        "{\"corp_id\":\"wwsim0001\"}",
        "{\"mobile\":\"13800000000\"}",
        "{\"corp_id\":1,\"mobile\":\"13800000000\"}",
        "{\"corp_id\":\"wwsim0001\",\"mobile\":13800000000}",
        "{\"corp_id\":\"ww sim\",\"mobile\":\"13800000000\"}",
        "{\"corp_id\":\"wwsim0001\",\"mobile\":\"13800000000\\u0000x\"}",
        "{\"corp_id\":\"wwsim0001\\u0000\",\"mobile\":\"13800000000\"}",
        "{\"corp_id\":\"wwsim0001\",\"mobile\":\"13800000000\"}{}",
        "{\"corp_id\":\"wwsim0001\",\"mobile\":\"13800000000\"} x",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (body(bad[i], corp, mobile) == 0)
            fail_msg("accepted: %s", bad[i]);
    /* deep nesting is refused, not recursed into */
    char deep[4096];
    size_t n = 0;
    n += (size_t)sprintf(deep, "{\"corp_id\":\"a\",\"mobile\":\"13800000000\",\"x\":");
    for (int i = 0; i < 1000; i++)
        deep[n++] = '[';
    deep[n] = '\0';
    assert_int_equal(body(deep, corp, mobile), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_positive_integers), cmocka_unit_test(test_revisions),
        cmocka_unit_test(test_corp_ids),          cmocka_unit_test(test_mobiles),
        cmocka_unit_test(test_lookup_body),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
