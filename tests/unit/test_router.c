/* Router: patterns, parameters, percent-decoding, 404 versus 405, traversal and
 * over-long parameters. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/router.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static int H_HEALTH, H_RUNS, H_RUN, H_RUN_LATEST, H_RUNS_POST, H_USERS, H_PROGRESS, H_DEPT_USER;

static int setup(void **state)
{
    router *r = router_new();
    assert_non_null(r);
    assert_int_equal(router_add(r, "GET", "/healthz", &H_HEALTH, NULL), 0);
    assert_int_equal(router_add(r, "GET", "/v1/runs", &H_RUNS, NULL), 0);
    assert_int_equal(router_add(r, "POST", "/v1/runs", &H_RUNS_POST, "post-arg"), 0);
    /* Registered before the literal it must lose to. */
    assert_int_equal(router_add(r, "GET", "/v1/runs/{run_id}", &H_RUN, NULL), 0);
    assert_int_equal(router_add(r, "GET", "/v1/runs/latest", &H_RUN_LATEST, NULL), 0);
    assert_int_equal(router_add(r, "GET", "/v1/enterprises/{corp_id}/users", &H_USERS, NULL), 0);
    assert_int_equal(router_add(r, "GET", "/v1/enterprises/{corp_id}/progress", &H_PROGRESS, NULL),
                     0);
    assert_int_equal(router_add(r, "GET",
                                "/v1/enterprises/{corp_id}/departments/{dept}/users/{user}",
                                &H_DEPT_USER, NULL),
                     0);
    *state = r;
    return 0;
}

static int teardown(void **state)
{
    router_free(*state);
    return 0;
}

static void test_literal_routes(void **state)
{
    router *r = *state;
    struct router_match m;
    assert_int_equal(router_match(r, "GET", "/healthz", &m), 0);
    assert_ptr_equal(m.handler, &H_HEALTH);
    assert_string_equal(m.pattern, "/healthz");
    assert_int_equal(m.nparams, 0);

    assert_int_equal(router_match(r, "POST", "/v1/runs", &m), 0);
    assert_ptr_equal(m.handler, &H_RUNS_POST);
    assert_string_equal((const char *)m.arg, "post-arg");

    /* A query string is not part of the path. */
    assert_int_equal(router_match(r, "GET", "/v1/runs?limit=5", &m), 0);
    assert_ptr_equal(m.handler, &H_RUNS);
}

static void test_params(void **state)
{
    router *r = *state;
    struct router_match m;
    assert_int_equal(router_match(r, "GET", "/v1/runs/42", &m), 0);
    assert_ptr_equal(m.handler, &H_RUN);
    assert_string_equal(m.pattern, "/v1/runs/{run_id}");
    assert_int_equal(m.nparams, 1);
    assert_string_equal(m.names[0], "run_id");
    assert_string_equal(m.values[0], "42");

    assert_int_equal(router_match(r, "GET", "/v1/enterprises/ww123/progress", &m), 0);
    assert_ptr_equal(m.handler, &H_PROGRESS);
    assert_string_equal(m.names[0], "corp_id");
    assert_string_equal(m.values[0], "ww123");

    assert_int_equal(router_match(r, "GET", "/v1/enterprises/c1/departments/7/users/zhang", &m), 0);
    assert_ptr_equal(m.handler, &H_DEPT_USER);
    assert_int_equal(m.nparams, 3);
    assert_string_equal(m.names[0], "corp_id");
    assert_string_equal(m.values[0], "c1");
    assert_string_equal(m.names[1], "dept");
    assert_string_equal(m.values[1], "7");
    assert_string_equal(m.names[2], "user");
    assert_string_equal(m.values[2], "zhang");
}

static void test_literal_beats_param(void **state)
{
    router *r = *state;
    struct router_match m;
    assert_int_equal(router_match(r, "GET", "/v1/runs/latest", &m), 0);
    assert_ptr_equal(m.handler, &H_RUN_LATEST);
    assert_int_equal(m.nparams, 0);
}

static void test_percent_decoding(void **state)
{
    router *r = *state;
    struct router_match m;
    assert_int_equal(router_match(r, "GET", "/v1/enterprises/a%20b%2Bc%e4%b8%ad/users", &m), 0);
    assert_ptr_equal(m.handler, &H_USERS);
    assert_string_equal(m.values[0], "a b+c\xe4\xb8\xad");
    /* '+' is literal in a path. */
    assert_int_equal(router_match(r, "GET", "/v1/enterprises/a+b/users", &m), 0);
    assert_string_equal(m.values[0], "a+b");
    /* An encoded literal segment still matches the literal. */
    assert_int_equal(router_match(r, "GET", "/%68ealthz", &m), 0);
    assert_ptr_equal(m.handler, &H_HEALTH);
    /* Bad escapes, an encoded NUL, an encoded '/' never match. */
    assert_int_equal(router_match(r, "GET", "/v1/enterprises/a%2/users", &m), 404);
    assert_int_equal(router_match(r, "GET", "/v1/enterprises/a%zz/users", &m), 404);
    assert_int_equal(router_match(r, "GET", "/v1/enterprises/a%00b/users", &m), 404);
    assert_int_equal(router_match(r, "GET", "/v1/enterprises/a%2Fb/users", &m), 404);
    assert_int_equal(router_match(r, "GET", "/v1/runs/%", &m), 404);
}

static void test_decode_helper(void **state)
{
    (void)state;
    char out[8];
    assert_int_equal(router_percent_decode("a+b%21", 6, 1, out, sizeof out), 4);
    assert_string_equal(out, "a b!");
    assert_int_equal(router_percent_decode("a+b", 3, 0, out, sizeof out), 3);
    assert_string_equal(out, "a+b");
    /* Exactly fills 7 bytes + NUL, then one more does not fit. */
    assert_int_equal(router_percent_decode("abcdefg", 7, 0, out, sizeof out), 7);
    assert_int_equal(router_percent_decode("abcdefgh", 8, 0, out, sizeof out), -1);
    assert_int_equal(router_percent_decode("%4", 2, 0, out, sizeof out), -1);
    assert_int_equal(router_percent_decode("%00", 3, 0, out, sizeof out), -1);
}

static void test_404_vs_405(void **state)
{
    router *r = *state;
    struct router_match m;
    assert_int_equal(router_match(r, "GET", "/nope", &m), 404);
    assert_null(m.handler);
    assert_int_equal(router_match(r, "GET", "/v1/runs/1/extra", &m), 404);
    assert_int_equal(router_match(r, "GET", "/", &m), 404);
    assert_int_equal(router_match(r, "GET", "", &m), 404);
    assert_int_equal(router_match(r, "GET", "healthz", &m), 404);
    /* Trailing slash and empty segments are different paths. */
    assert_int_equal(router_match(r, "GET", "/healthz/", &m), 404);
    assert_int_equal(router_match(r, "GET", "/v1//runs", &m), 404);
    assert_int_equal(router_match(r, "GET", "/v1/enterprises//users", &m), 404);

    assert_int_equal(router_match(r, "DELETE", "/v1/runs", &m), 405);
    assert_null(m.handler);
    assert_string_equal(m.allow, "GET, POST");
    assert_int_equal(router_match(r, "POST", "/healthz", &m), 405);
    assert_string_equal(m.allow, "GET");
    /* The parameter route and the literal both know the path: GET once. */
    assert_int_equal(router_match(r, "PUT", "/v1/runs/latest", &m), 405);
    assert_string_equal(m.allow, "GET");
    /* HEAD is served by GET routes. */
    assert_int_equal(router_match(r, "HEAD", "/healthz", &m), 0);
    assert_ptr_equal(m.handler, &H_HEALTH);
}

static void test_traversal(void **state)
{
    router *r = *state;
    struct router_match m;
    assert_int_equal(router_match(r, "GET", "/v1/runs/..", &m), 404);
    assert_int_equal(router_match(r, "GET", "/v1/runs/.", &m), 404);
    assert_int_equal(router_match(r, "GET", "/v1/runs/%2e%2e", &m), 404);
    assert_int_equal(router_match(r, "GET", "/v1/runs/%2E", &m), 404);
    assert_int_equal(router_match(r, "GET", "/v1/enterprises/../users", &m), 404);
    assert_int_equal(router_match(r, "GET", "/v1/x/../runs", &m), 404);
    assert_int_equal(router_match(r, "GET", "/v1/./runs", &m), 404);
    /* Dots inside a value are fine. */
    assert_int_equal(router_match(r, "GET", "/v1/runs/a..b", &m), 0);
    assert_string_equal(m.values[0], "a..b");
    assert_int_equal(router_match(r, "GET", "/v1/runs/...", &m), 0);
}

static void test_long_params(void **state)
{
    router *r = *state;
    struct router_match m;
    char path[2048], val[600];
    memset(val, 'x', 255);
    val[255] = '\0';
    snprintf(path, sizeof path, "/v1/runs/%s", val);
    assert_int_equal(router_match(r, "GET", path, &m), 0);
    assert_int_equal(strlen(m.values[0]), 255);
    memset(val, 'x', 256);
    val[256] = '\0';
    snprintf(path, sizeof path, "/v1/runs/%s", val);
    assert_int_equal(router_match(r, "GET", path, &m), 404);
    /* 255 decoded bytes from 765 encoded ones fit; 256 do not. */
    for (int i = 0; i < 255; i++)
        memcpy(path + 9 + 3 * i, "%41", 3);
    memcpy(path, "/v1/runs/", 9);
    path[9 + 3 * 255] = '\0';
    assert_int_equal(router_match(r, "GET", path, &m), 0);
    assert_int_equal(strlen(m.values[0]), 255);
    assert_int_equal(m.values[0][0], 'A');
    strcat(path, "%41");
    assert_int_equal(router_match(r, "GET", path, &m), 404);
    /* Too many segments: no match, no overflow. */
    char deep[512] = "";
    for (int i = 0; i < 100; i++)
        strcat(deep, "/a");
    assert_int_equal(router_match(r, "GET", deep, &m), 404);
}

static void test_bad_patterns(void **state)
{
    (void)state;
    router *r = router_new();
    assert_non_null(r);
    assert_int_equal(router_add(r, "GET", "nope", &H_RUN, NULL), -EINVAL);
    assert_int_equal(router_add(r, "GET", "/a/{", &H_RUN, NULL), -EINVAL);
    assert_int_equal(router_add(r, "GET", "/a/{}", &H_RUN, NULL), -EINVAL);
    assert_int_equal(router_add(r, "GET", "/a/x{y}", &H_RUN, NULL), -EINVAL);
    assert_int_equal(router_add(r, "GET", "/a/{x}/{x}", &H_RUN, NULL), -EINVAL);
    assert_int_equal(router_add(r, "GET", "/a//b", &H_RUN, NULL), -EINVAL);
    assert_int_equal(router_add(r, "GET", "/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}", &H_RUN, NULL),
                     -EINVAL);
    assert_int_equal(router_add(r, "GET", "/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}", &H_RUN, NULL), 0);
    assert_int_equal(router_add(r, "GET", "/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}", &H_RUN, NULL),
                     -EEXIST);
    assert_int_equal(router_add(r, "GET", "/", &H_HEALTH, NULL), 0);
    struct router_match m;
    assert_int_equal(router_match(r, "GET", "/", &m), 0);
    assert_ptr_equal(m.handler, &H_HEALTH);
    assert_int_equal(router_match(r, "GET", "/1/2/3/4/5/6/7/8", &m), 0);
    assert_int_equal(m.nparams, 8);
    assert_string_equal(m.names[7], "h");
    assert_string_equal(m.values[7], "8");
    router_free(r);
}

static void test_many_routes(void **state)
{
    (void)state;
    router *r = router_new();
    char pat[64];
    static int handlers[100];
    for (int i = 0; i < 100; i++) {
        snprintf(pat, sizeof pat, "/r%d/{id}", i);
        assert_int_equal(router_add(r, "GET", pat, &handlers[i], NULL), 0);
    }
    struct router_match m;
    assert_int_equal(router_match(r, "GET", "/r77/abc", &m), 0);
    assert_ptr_equal(m.handler, &handlers[77]);
    assert_string_equal(m.values[0], "abc");
    router_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_literal_routes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_params, setup, teardown),
        cmocka_unit_test_setup_teardown(test_literal_beats_param, setup, teardown),
        cmocka_unit_test_setup_teardown(test_percent_decoding, setup, teardown),
        cmocka_unit_test(test_decode_helper),
        cmocka_unit_test_setup_teardown(test_404_vs_405, setup, teardown),
        cmocka_unit_test_setup_teardown(test_traversal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_params, setup, teardown),
        cmocka_unit_test(test_bad_patterns),
        cmocka_unit_test(test_many_routes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
