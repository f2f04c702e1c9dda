/* redis_url_parse: accepted forms, defaults, and every rejection with its message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "common/redis.h"

typedef struct parsed {
    char host[64];
    char pw[32];
    int port, db, rc;
    char err[128];
} parsed;

static parsed parse(const char *url)
{
    parsed p;

    memset(&p, 0, sizeof(p));
    /* Poison the outputs so a default that is never written shows up. */
    p.port = -7;
    p.db = -7;
    strcpy(p.pw, "stale");
    p.rc = redis_url_parse(url, p.host, sizeof(p.host), &p.port, p.pw, sizeof(p.pw), &p.db, p.err,
                           sizeof(p.err));
    return p;
}

static void expect_ok(const char *url, const char *host, int port, const char *pw, int db)
{
    parsed p = parse(url);

    if (p.rc != 0)
        fail_msg("%s: rejected: %s", url, p.err);
    assert_string_equal(p.host, host);
    assert_int_equal(p.port, port);
    assert_string_equal(p.pw, pw);
    assert_int_equal(p.db, db);
}

static void expect_err(const char *url, const char *needle)
{
    parsed p = parse(url);

    if (p.rc != -1)
        fail_msg("%s: accepted (host=%s port=%d db=%d)", url ? url : "(null)", p.host, p.port,
                 p.db);
    if (!strstr(p.err, needle))
        fail_msg("%s: error '%s' lacks '%s'", url ? url : "(null)", p.err, needle);
}

static void test_valid(void **state)
{
    (void)state;
    expect_ok("redis://127.0.0.1:6379/0", "127.0.0.1", 6379, "", 0);
    expect_ok("redis://localhost", "localhost", 6379, "", 0);
    expect_ok("redis://localhost/", "localhost", 6379, "", 0);
    expect_ok("redis://cache.example.internal:7000", "cache.example.internal", 7000, "", 0);
    expect_ok("redis://h:1/15", "h", 1, "", 15);
    expect_ok("redis://h:65535/3", "h", 65535, "", 3);
    expect_ok("REDIS://H:6380/2", "H", 6380, "", 2);
    expect_ok("redis://[::1]:6390/4", "::1", 6390, "", 4);
    expect_ok("redis://[::1]", "::1", 6379, "", 0);
}

static void test_password(void **state)
{
    (void)state;
    expect_ok("redis://:s3cret@10.0.0.5:6379/1", "10.0.0.5", 6379, "s3cret", 1);
    /* A user name (Redis 6 ACL style): the one-server form returns the password. */
    expect_ok("redis://default:pw@h/0", "h", 6379, "pw", 0);
    /* Percent-escapes let a password hold the URL's own delimiters. */
    expect_ok("redis://:p%40ss%2Fw%3a@h:1/2", "h", 1, "p@ss/w:", 2);
    /* The last '@' ends the credentials even when an earlier one is not escaped. */
    expect_ok("redis://:a@b@h:2/0", "h", 2, "a@b", 0);
    /* Empty password: no AUTH. */
    expect_ok("redis://:@h:3", "h", 3, "", 0);
    expect_err("redis://secret@h:1/0", "colon");
    expect_err("redis://:bad%zzescape@h/0", "%-escape");
    expect_err("redis://:bad%4@h/0", "%-escape");
    expect_err("redis://:nul%00@h/0", "%-escape");
    expect_err("redis://:0123456789012345678901234567890123456789@h/0", "password too long");
}

static void test_bad_scheme(void **state)
{
    (void)state;
    expect_err(NULL, "empty");
    expect_err("", "empty");
    expect_err("127.0.0.1:6379", "redis://");
    expect_err("http://127.0.0.1:6379/0", "redis://");
    expect_err("redis:/127.0.0.1:6379/0", "redis://");
    expect_err("rediss://h:6379/0", "TLS");
    /* The one-server form refuses a sentinel URL (it names no server). */
    expect_err("redis-sentinel://h:26379/mymaster", "no single server");
}

static redis_url_info full_ok(const char *url)
{
    redis_url_info u;
    char err[160] = "";

    if (redis_url_parse_full(url, &u, err, sizeof(err)) != 0)
        fail_msg("%s: rejected: %s", url, err);
    return u;
}

static void full_err(const char *url, const char *needle)
{
    redis_url_info u;
    char err[160] = "";

    if (redis_url_parse_full(url, &u, err, sizeof(err)) != -1)
        fail_msg("%s: accepted", url);
    if (!strstr(err, needle))
        fail_msg("%s: error '%s' lacks '%s'", url, err, needle);
}

/* The user name is kept (AUTH user password, Redis 6 ACLs). */
static void test_acl_user(void **state)
{
    redis_url_info u;

    (void)state;
    u = full_ok("redis://orgsync:s3cret@10.0.0.5:6380/2");
    assert_int_equal(u.sentinel, 0);
    assert_string_equal(u.user, "orgsync");
    assert_string_equal(u.password, "s3cret");
    assert_int_equal(u.naddrs, 1);
    assert_string_equal(u.addrs[0].host, "10.0.0.5");
    assert_int_equal(u.addrs[0].port, 6380);
    assert_int_equal(u.db, 2);
    u = full_ok("redis://:pw@h");
    assert_string_equal(u.user, "");
    assert_string_equal(u.password, "pw");
    u = full_ok("redis://us%40er:p%3Aw@h/0");
    assert_string_equal(u.user, "us@er");
    assert_string_equal(u.password, "p:w");
    u = full_ok("redis://h");
    assert_string_equal(u.user, "");
    assert_string_equal(u.password, "");
    full_err("redis://user:@h/0", "needs a password");
    full_err("redis://us%zzer:pw@h/0", "%-escape in the user name");
}

static void test_sentinel(void **state)
{
    redis_url_info u;

    (void)state;
    u = full_ok("redis-sentinel://s1:26380,10.0.0.2,[::1]:26381/mymaster");
    assert_int_equal(u.sentinel, 1);
    assert_int_equal(u.naddrs, 3);
    assert_string_equal(u.addrs[0].host, "s1");
    assert_int_equal(u.addrs[0].port, 26380);
    assert_string_equal(u.addrs[1].host, "10.0.0.2");
    assert_int_equal(u.addrs[1].port, 26379);
    assert_string_equal(u.addrs[2].host, "::1");
    assert_int_equal(u.addrs[2].port, 26381);
    assert_string_equal(u.master, "mymaster");
    assert_int_equal(u.db, 0);
    assert_string_equal(u.password, "");
    u = full_ok("redis-sentinel://app:pw@s1/m-1?db=3&sentinel_password=sp%26x&sentinel_user=sen");
    assert_string_equal(u.user, "app");
    assert_string_equal(u.password, "pw");
    assert_string_equal(u.master, "m-1");
    assert_int_equal(u.db, 3);
    assert_string_equal(u.sentinel_user, "sen");
    assert_string_equal(u.sentinel_password, "sp&x");
    assert_int_equal(u.naddrs, 1);
    assert_int_equal(u.addrs[0].port, 26379);
    full_err("redis-sentinel://s1:26379", "missing master name");
    full_err("redis-sentinel://s1:26379/", "missing master name");
    full_err("redis-sentinel://s1:26379/?db=1", "missing master name");
    full_err("redis-sentinel://s1,/m", "missing host");
    full_err("redis-sentinel://,s1/m", "missing host");
    full_err("redis-sentinel:///m", "missing host");
    full_err("redis-sentinel://s1:0/m", "bad port");
    full_err("redis-sentinel://s1/m?db=x", "db=");
    full_err("redis-sentinel://s1/m?timeout=1", "unknown query parameter");
    full_err("redis-sentinel://s1/m?db", "key=value");
    full_err("redis-sentinel://s1/m/0", "master name");
    full_err("redis-sentinel://a,b,c,d,e,f,g,h,i/m", "too many sentinels");
}

static void test_bad_host_port(void **state)
{
    (void)state;
    expect_err("redis://", "missing host");
    expect_err("redis://:6379/0", "missing host");
    expect_err("redis://:pw@/0", "missing host");
    expect_err("redis://h:/0", "missing port");
    expect_err("redis://h:0/0", "bad port");
    expect_err("redis://h:65536/0", "bad port");
    expect_err("redis://h:99999999999999999999/0", "bad port");
    expect_err("redis://h:12ab/0", "bad port");
    expect_err("redis://h:-1/0", "bad port");
    expect_err("redis://ho st:1/0", "bad character");
    expect_err("redis://[::1/0", "']'");
    expect_err("redis://[::1]x/0", "unexpected");
    expect_err("redis://a-very-long-host-name-that-does-not-fit-in-64-bytes.region.example.com/0",
               "host too long");
}

static void test_bad_db(void **state)
{
    (void)state;
    expect_err("redis://h:1/x", "database");
    expect_err("redis://h:1/-1", "database");
    expect_err("redis://h:1/1/2", "database");
    expect_err("redis://h:1/0?timeout=1", "database");
    expect_err("redis://h:1/99999999999", "database");
}

/* The error text never echoes the URL, so it never leaks the password. */
static void test_error_has_no_secret(void **state)
{
    parsed p;

    (void)state;
    p = parse("redis://:hunter2@h:bad/0");
    assert_int_equal(p.rc, -1);
    assert_null(strstr(p.err, "hunter2"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),      cmocka_unit_test(test_password),
        cmocka_unit_test(test_bad_scheme), cmocka_unit_test(test_bad_host_port),
        cmocka_unit_test(test_bad_db),     cmocka_unit_test(test_error_has_no_secret),
        cmocka_unit_test(test_acl_user),   cmocka_unit_test(test_sentinel),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
