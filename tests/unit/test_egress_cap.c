/* The per-egress cap's pure parts: egress ids, their keys, the default from a host
 * name, and reading the script's answer (the Redis side: it.egress_cap). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "common/egress_cap.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

static void test_id_valid(void **state)
{
    char id[80];
    (void)state;
    assert_true(egress_cap_id_valid("host-a"));
    assert_true(egress_cap_id_valid("203.0.113.7"));
    assert_true(egress_cap_id_valid("2001:db8::5"));
    assert_true(egress_cap_id_valid("A.b_c:d-9"));
    assert_false(egress_cap_id_valid(NULL));
    assert_false(egress_cap_id_valid(""));
    assert_false(egress_cap_id_valid("a b"));
    assert_false(egress_cap_id_valid("a/b"));
    assert_false(egress_cap_id_valid("a{b}"));
    assert_false(egress_cap_id_valid("a*"));
    assert_false(egress_cap_id_valid("caf\xc3\xa9"));
    memset(id, 'x', 64);
    id[64] = '\0';
    assert_true(egress_cap_id_valid(id));
    id[64] = 'x';
    id[65] = '\0';
    assert_false(egress_cap_id_valid(id));
}

static void test_id_from_host(void **state)
{
    char out[65], small[4], host[100];
    (void)state;
    egress_cap_id_from_host("web-1.example.com", out, sizeof(out));
    assert_string_equal(out, "web-1.example.com");
    egress_cap_id_from_host("we b/1", out, sizeof(out));
    assert_string_equal(out, "we_b_1");
    egress_cap_id_from_host("", out, sizeof(out));
    assert_string_equal(out, "localhost");
    egress_cap_id_from_host(NULL, out, sizeof(out));
    assert_string_equal(out, "localhost");
    memset(host, 'h', sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    egress_cap_id_from_host(host, out, sizeof(out));
    assert_int_equal(strlen(out), 64);
    assert_true(egress_cap_id_valid(out));
    egress_cap_id_from_host("abcdef", small, sizeof(small));
    assert_string_equal(small, "abc");
}

static void test_keys(void **state)
{
    char s[96], m[96], tiny[20];
    (void)state;
    assert_int_equal(egress_cap_keys("host-a", s, m, sizeof(s)), 0);
    assert_string_equal(s, "orgsync:egress:host-a:s");
    assert_string_equal(m, "orgsync:egress:host-a:m");
    /* Not under an environment: one IP, one budget. */
    assert_null(strstr(s, "dev"));
    assert_int_equal(egress_cap_keys("bad id", s, m, sizeof(s)), -EINVAL);
    assert_int_equal(egress_cap_keys("host-a", tiny, tiny, sizeof(tiny)), -EINVAL);
}

/* A fake reply of n integers (INT64_MIN: a string element instead). */
typedef struct fake {
    redisReply top;
    redisReply el[6];
    redisReply *ptrs[6];
} fake;

static redisReply *mk(fake *f, int n, const long long *v)
{
    memset(f, 0, sizeof(*f));
    f->top.type = REDIS_REPLY_ARRAY;
    f->top.elements = (size_t)n;
    f->top.element = f->ptrs;
    for (int i = 0; i < n; i++) {
        f->ptrs[i] = &f->el[i];
        if (v[i] == INT64_MIN) {
            f->el[i].type = REDIS_REPLY_STRING;
            f->el[i].str = (char *)"7";
            f->el[i].len = 1;
        } else {
            f->el[i].type = REDIS_REPLY_INTEGER;
            f->el[i].integer = v[i];
        }
    }
    return &f->top;
}

static void test_parse(void **state)
{
    static const long long admitted[] = {0, 0, 50, 70};
    static const long long wait[] = {1, 59800, 50, 50};
    static const struct {
        int n;
        long long v[5];
    } bad[] = {
        {4, {2, 0, 1, 1}},         /* unknown status */
        {4, {-1, 0, 1, 1}},        /* negative status */
        {4, {1, 0, 50, 50}},       /* a wait of 0 */
        {4, {0, 5, 1, 1}},         /* admitted with a wait */
        {4, {0, 0, -1, 1}},        /* a negative count */
        {4, {0, 0, 1, INT64_MIN}}, /* a string element */
        {3, {0, 0, 1}},            /* too short */
        {5, {0, 0, 1, 1, 1}},      /* too long */
    };
    fake f;
    egress_answer a;
    redisReply str = {0};
    (void)state;

    memset(&a, 0xff, sizeof(a));
    assert_int_equal(egress_cap_parse(mk(&f, 4, admitted), &a), 0);
    assert_int_equal(a.status, EGRESS_ADMITTED);
    assert_int_equal(a.wait_ms, 0);
    assert_int_equal(a.in_minute, 50);
    assert_int_equal(a.in_hour, 70);
    assert_int_equal(egress_cap_parse(mk(&f, 4, wait), &a), 0);
    assert_int_equal(a.status, EGRESS_WAIT);
    assert_int_equal(a.wait_ms, 59800);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (egress_cap_parse(mk(&f, bad[i].n, bad[i].v), &a) != -EIO)
            fail_msg("bad case %zu parsed", i);
    str.type = REDIS_REPLY_STRING;
    str.str = (char *)"OK";
    str.len = 2;
    assert_int_equal(egress_cap_parse(&str, &a), -EIO);
    assert_int_equal(egress_cap_parse(NULL, &a), -EIO);
}

/* Arguments the cap refuses without Redis. */
static void test_new_refuses(void **state)
{
    redis_client *not_used = (redis_client *)&not_used; /* never dereferenced */
    (void)state;
    assert_null(egress_cap_new(NULL, "a", 1, 1));
    assert_null(egress_cap_new(not_used, "bad id", 1, 1));
    assert_null(egress_cap_new(not_used, "a", 0, 1));
    assert_null(egress_cap_new(not_used, "a", 1, 0));
    assert_int_equal(egress_cap_admit(NULL, NULL, NULL), -EINVAL);
    egress_cap_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_id_valid),    cmocka_unit_test(test_id_from_host),
        cmocka_unit_test(test_keys),        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_new_refuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
