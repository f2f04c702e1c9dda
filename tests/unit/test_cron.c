/* cron_parse and cron_next: syntax, errors, calendar edges, time zones, DST,
 * and a cross-check against a naive minute-by-minute scan. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "common/backoff.h"
#include "common/cron.h"
#include "common/timeutil.h"

static time_t utc(const char *s)
{
    struct tm tm;

    memset(&tm, 0, sizeof(tm));
    if (sscanf(s, "%d-%d-%dT%d:%d:%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec) != 6)
        fail_msg("bad time literal %s", s);
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return timegm(&tm);
}

/* Asserts that expr, in tz, fires next after `after` at `expect` (UTC). */
static void check_next(const char *expr, const char *tz, const char *after, const char *expect)
{
    cron_expr c;
    char err[128] = "";
    time_t next = 0;
    char got[32], want[32];

    if (cron_parse(&c, expr, err, sizeof(err)) != 0)
        fail_msg("parse '%s' failed: %s", expr, err);
    if (cron_next(&c, tz, utc(after), &next) != 0)
        fail_msg("'%s' in %s after %s: no next fire", expr, tz ? tz : "UTC", after);
    time_rfc3339(next, -1, got);
    time_rfc3339(utc(expect), -1, want);
    if (strcmp(got, want) != 0)
        fail_msg("'%s' in %s after %sZ: got %s, want %s", expr, tz ? tz : "UTC", after, got, want);
}

static void check_parse_error(const char *expr, const char *want_substr)
{
    cron_expr c;
    char err[128] = "";

    if (cron_parse(&c, expr, err, sizeof(err)) != -1)
        fail_msg("'%s' parsed but should not", expr);
    if (!strstr(err, want_substr))
        fail_msg("'%s': error '%s' lacks '%s'", expr, err, want_substr);
}

static void test_parse_errors(void **state)
{
    (void)state;
    check_parse_error("", "expected 5 or 6 fields, got 0");
    check_parse_error("   ", "got 0");
    check_parse_error("* * * *", "expected 5 or 6 fields, got 4");
    check_parse_error("* * * * * * *", "got more than 6");
    check_parse_error("60 * * * *", "minute: value 60 out of range 0-59");
    check_parse_error("60 * * * * *", "second: value 60 out of range 0-59");
    check_parse_error("* 24 * * *", "hour: value 24 out of range 0-23");
    check_parse_error("* * 0 * *", "day-of-month: value 0 out of range 1-31");
    check_parse_error("* * 32 * *", "day-of-month: value 32");
    check_parse_error("* * * 13 *", "month: value 13 out of range 1-12");
    check_parse_error("* * * 0 *", "month: value 0");
    check_parse_error("* * * * 8", "day-of-week: value 8 out of range 0-7");
    check_parse_error("5-3 * * * *", "minute: range 5-3 is backwards");
    check_parse_error("*/0 * * * *", "minute: step 0 out of range");
    check_parse_error("*/60 * * * *", "minute: step 60 out of range");
    check_parse_error("*/ * * * *", "minute: step needs a number");
    check_parse_error("* * * FOO *", "month: unknown name 'FOO'");
    check_parse_error("* * * * MONDAY", "day-of-week: unknown name 'MONDAY'");
    check_parse_error("JAN * * * *", "minute: unexpected character 'J'");
    check_parse_error("1,,2 * * * *", "minute: unexpected character ','");
    check_parse_error("1, * * * *", "minute: missing value");
    check_parse_error("1- * * * *", "minute: missing value");
    check_parse_error("1x * * * *", "minute: unexpected character 'x'");
    check_parse_error("-1 * * * *", "minute: unexpected character '-'");
    check_parse_error("99999999999 * * * *", "minute: number too large");
    check_parse_error("0 0 30 2 *", "no selected day occurs");
    check_parse_error("0 0 31 4,6,9,11 *", "no selected day occurs");

    /* A NULL err buffer is allowed; NULL expression is an error. */
    cron_expr c;
    assert_int_equal(cron_parse(&c, "bad", NULL, 0), -1);
    assert_int_equal(cron_parse(&c, NULL, NULL, 0), -1);
    /* A tiny err buffer truncates safely. */
    char small[8];
    assert_int_equal(cron_parse(&c, "61 * * * *", small, sizeof(small)), -1);
    assert_int_equal(strlen(small), 7);
}

static void test_parse_fields(void **state)
{
    cron_expr c;
    char err[128];

    (void)state;
    assert_int_equal(cron_parse(&c, "*/15 * * * *", err, sizeof(err)), 0);
    assert_true(c.min == ((1ULL << 0) | (1ULL << 15) | (1ULL << 30) | (1ULL << 45)));
    assert_true(c.sec == 1); /* 5 fields: seconds = 0 */
    assert_true(c.hour == 0xFFFFFF);
    assert_true(c.dom == 0xFFFFFFFEu);
    assert_true(c.mon == 0x1FFE);
    assert_true(c.dow == 0x7F);
    assert_true(c.dom_any && c.dow_any);

    assert_int_equal(cron_parse(&c, "1-5/2 10-12/1 1,15 jan,Mar,DEC MON-fri", err, sizeof(err)), 0);
    assert_true(c.min == ((1ULL << 1) | (1ULL << 3) | (1ULL << 5)));
    assert_true(c.hour == ((1u << 10) | (1u << 11) | (1u << 12)));
    assert_true(c.dom == ((1u << 1) | (1u << 15)));
    assert_true(c.mon == ((1u << 1) | (1u << 3) | (1u << 12)));
    assert_true(c.dow == 0x3E);
    assert_false(c.dom_any);
    assert_false(c.dow_any);

    /* dow 7 is Sunday; 5-7 wraps onto 0. */
    assert_int_equal(cron_parse(&c, "0 0 * * 7", err, sizeof(err)), 0);
    assert_true(c.dow == 1);
    assert_int_equal(cron_parse(&c, "0 0 * * 5-7", err, sizeof(err)), 0);
    assert_true(c.dow == ((1u << 5) | (1u << 6) | 1u));
    assert_int_equal(cron_parse(&c, "0 0 * * sun,SAT", err, sizeof(err)), 0);
    assert_true(c.dow == ((1u << 6) | 1u));
    assert_int_equal(cron_parse(&c, "0 0 * * */2", err, sizeof(err)), 0);
    assert_true(c.dow == ((1u << 0) | (1u << 2) | (1u << 4) | (1u << 6)));
    assert_true(c.dow_any); /* starts with '*': Vixie treats it as unrestricted */

    /* "a/n" = a through the maximum, step n. */
    assert_int_equal(cron_parse(&c, "50/3 * * * *", err, sizeof(err)), 0);
    assert_true(c.min == ((1ULL << 50) | (1ULL << 53) | (1ULL << 56) | (1ULL << 59)));

    /* 6 fields: seconds first. Extra whitespace is fine. */
    assert_int_equal(cron_parse(&c, "  30\t0 2 * * *  ", err, sizeof(err)), 0);
    assert_true(c.sec == (1ULL << 30));
    assert_true(c.min == 1);
    assert_true(c.hour == (1u << 2));
    assert_int_equal(cron_parse(&c, "0-59 * * * * *", err, sizeof(err)), 0);
    assert_true(c.sec == 0x0FFFFFFFFFFFFFFFULL);

    /* Feb 29 alone is valid (leap years). */
    assert_int_equal(cron_parse(&c, "0 0 29 2 *", err, sizeof(err)), 0);
    /* A day that no selected month has is fine when dow can still match (OR). */
    assert_int_equal(cron_parse(&c, "0 0 30 2 MON", err, sizeof(err)), 0);
}

static void test_next_basic_utc(void **state)
{
    (void)state;
    check_next("0 0 2 * * *", "UTC", "2026-11-24T12:00:00", "2026-11-25T02:00:00");
    check_next("0 0 2 * * *", NULL, "2026-11-24T01:59:59", "2026-11-24T02:00:00");
    /* Strictly after. */
    check_next("0 0 2 * * *", "UTC", "2026-11-25T02:00:00", "2026-11-26T02:00:00");
    check_next("*/15 * * * *", "UTC", "2026-11-24T12:07:30", "2026-11-24T12:15:00");
    check_next("*/15 * * * *", "UTC", "2026-11-24T23:59:00", "2026-11-25T00:00:00");
    check_next("* * * * *", "UTC", "2026-11-24T12:00:00", "2026-11-24T12:01:00");
    check_next("* * * * * *", "UTC", "2026-11-24T12:00:00", "2026-11-24T12:00:01");
    check_next("*/10 * * * * *", "UTC", "2026-11-24T12:00:05", "2026-11-24T12:00:10");
    check_next("15,45 30 * * * *", "UTC", "2026-11-24T12:30:45", "2026-11-24T13:30:15");
    check_next("0 8-10,14 * * *", "UTC", "2026-11-24T10:00:00", "2026-11-24T14:00:00");
    check_next("0 8-10,14 * * *", "UTC", "2026-11-24T14:00:00", "2026-11-25T08:00:00");
    check_next("1-5/2 * * * *", "UTC", "2026-11-24T12:03:00", "2026-11-24T12:05:00");
    check_next("1-5/2 * * * *", "UTC", "2026-11-24T12:05:00", "2026-11-24T13:01:00");
    /* 5 vs 6 fields: "30 * * * *" is minute 30; with 6 fields it is second 30. */
    check_next("30 * * * *", "UTC", "2026-11-24T12:00:00", "2026-11-24T12:30:00");
    check_next("30 * * * * *", "UTC", "2026-11-24T12:00:00", "2026-11-24T12:00:30");
    /* Year end and month names. */
    check_next("0 0 1 1 *", "UTC", "2026-12-31T23:59:59", "2027-01-01T00:00:00");
    check_next("0 0 1 jan,JUL *", "UTC", "2027-01-01T00:00:00", "2027-07-01T00:00:00");
    check_next("0 12 * DEC *", "UTC", "2027-01-05T00:00:00", "2027-12-01T12:00:00");
}

static void test_next_month_ends_and_leap(void **state)
{
    (void)state;
    /* The 31st skips short months. */
    check_next("0 0 31 * *", "UTC", "2026-01-31T00:00:00", "2026-03-31T00:00:00");
    check_next("0 0 31 * *", "UTC", "2026-03-31T00:00:00", "2026-05-31T00:00:00");
    check_next("0 0 31 * *", "UTC", "2026-05-31T00:00:00", "2026-07-31T00:00:00");
    check_next("0 0 31 * *", "UTC", "2026-07-31T00:00:00", "2026-08-31T00:00:00");
    check_next("0 0 31 * *", "UTC", "2026-08-31T00:00:00", "2026-10-31T00:00:00");
    check_next("0 0 31 * *", "UTC", "2026-10-31T00:00:00", "2026-12-31T00:00:00");
    check_next("0 0 30 * *", "UTC", "2027-01-30T00:00:00", "2027-03-30T00:00:00");
    /* Feb 29 only in leap years (2100 is not one, 2000 was). */
    check_next("0 0 29 2 *", "UTC", "2026-03-01T00:00:00", "2028-02-29T00:00:00");
    check_next("0 0 29 2 *", "UTC", "2028-02-29T00:00:00", "2032-02-29T00:00:00");
    check_next("0 0 29 2 *", "UTC", "1999-03-01T00:00:00", "2000-02-29T00:00:00");
    check_next("0 0 * 2 *", "UTC", "2027-02-28T00:00:00", "2028-02-01T00:00:00");
    check_next("0 0 * 2 *", "UTC", "2028-02-28T00:00:00", "2028-02-29T00:00:00");
    /* Past 2096, the next Feb 29 is in 2104: more than 5 years away. */
    cron_expr c;
    time_t next = 0;
    assert_int_equal(cron_parse(&c, "0 0 29 2 *", NULL, 0), 0);
    assert_int_equal(cron_next(&c, "UTC", utc("2096-03-01T00:00:00"), &next), -1);
}

static void test_next_dom_dow(void **state)
{
    (void)state;
    /* Both restricted: the 13th OR a Friday (Vixie). 2026-11-24 is a Tuesday. */
    check_next("0 0 13 * 5", "UTC", "2026-11-24T00:00:00", "2026-11-27T00:00:00");
    check_next("0 0 13 * FRI", "UTC", "2026-12-12T00:00:00", "2026-12-13T00:00:00");
    /* dom '*': only the weekday counts. */
    check_next("0 0 * * MON", "UTC", "2026-11-24T00:00:00", "2026-11-30T00:00:00");
    check_next("0 9 * * 1-5", "UTC", "2026-11-27T10:00:00", "2026-11-30T09:00:00");
    check_next("0 0 * * 0", "UTC", "2026-11-24T00:00:00", "2026-11-29T00:00:00");
    check_next("0 0 * * 7", "UTC", "2026-11-24T00:00:00", "2026-11-29T00:00:00");
    /* dow '*': only the day of month counts. */
    check_next("0 0 15 * *", "UTC", "2026-11-24T00:00:00", "2026-12-15T00:00:00");
    /* A field starting with '*' counts as unrestricted: AND, so odd days that
     * are Mondays. */
    check_next("0 0 */2 * MON", "UTC", "2026-11-24T00:00:00", "2026-12-07T00:00:00");
    /* OR rule can fire on days the dom list never reaches (Feb 30 + Monday). */
    check_next("0 0 30 2 MON", "UTC", "2027-01-31T00:00:00", "2027-02-01T00:00:00");
}

static void test_next_timezones(void **state)
{
    (void)state;
    /* No DST: 02:00 CST = 18:00Z the day before. */
    check_next("0 0 2 * * *", "Asia/Shanghai", "2026-11-24T12:00:00", "2026-11-24T18:00:00");
    check_next("0 0 2 * * *", "Asia/Shanghai", "2026-11-24T18:00:00", "2026-11-25T18:00:00");
    check_next("0 0 2 * * *", "Asia/Shanghai", "2026-07-01T00:00:00", "2026-07-01T18:00:00");
    /* Date boundaries are local: Monday 00:30 in Shanghai is Sunday 16:30Z. */
    check_next("30 0 * * MON", "Asia/Shanghai", "2026-11-24T00:00:00", "2026-11-29T16:30:00");
    check_next("0 0 1 * *", "Asia/Shanghai", "2026-11-24T00:00:00", "2026-11-30T16:00:00");
    /* Europe/Berlin outside DST changes: CET (+1) and CEST (+2). */
    check_next("0 2 * * *", "Europe/Berlin", "2026-01-10T00:00:00", "2026-01-10T01:00:00");
    check_next("0 2 * * *", "Europe/Berlin", "2026-07-10T02:00:00", "2026-07-11T00:00:00");
}

static void test_next_dst_new_york(void **state)
{
    (void)state;
    /* Spring forward 2026-03-08: 02:00 EST -> 03:00 EDT. 02:30 does not exist
     * that day, so the daily 02:30 job skips it. */
    check_next("30 2 * * *", "America/New_York", "2026-03-07T00:00:00", "2026-03-07T07:30:00");
    check_next("30 2 * * *", "America/New_York", "2026-03-07T07:30:00", "2026-03-09T06:30:00");
    check_next("*/30 * * * *", "America/New_York", "2026-03-08T06:45:00",
               "2026-03-08T07:00:00"); /* 01:45 EST -> 03:00 EDT */
    check_next("0 3 * * *", "America/New_York", "2026-03-08T06:00:00", "2026-03-08T07:00:00");
    /* Fall back 2026-11-01: 02:00 EDT -> 01:00 EST. 01:30 happens twice;
     * the job fires once, at the first (EDT) occurrence. */
    check_next("30 1 * * *", "America/New_York", "2026-10-31T12:00:00", "2026-11-01T05:30:00");
    check_next("30 1 * * *", "America/New_York", "2026-11-01T05:30:00", "2026-11-02T06:30:00");
    /* Starting inside the repeated hour (01:00 EST, second pass). */
    check_next("30 1 * * *", "America/New_York", "2026-11-01T06:00:00", "2026-11-02T06:30:00");
    /* A half-hourly job: 01:00 EDT, 01:30 EDT, then 02:00 EST; the repeated
     * 01:00 and 01:30 EST are not fired again. */
    check_next("*/30 * * * *", "America/New_York", "2026-11-01T04:59:00", "2026-11-01T05:00:00");
    check_next("*/30 * * * *", "America/New_York", "2026-11-01T05:00:00", "2026-11-01T05:30:00");
    check_next("*/30 * * * *", "America/New_York", "2026-11-01T05:30:00", "2026-11-01T07:00:00");
    /* Daily 02:30 around fall back: EDT before, EST after. */
    check_next("30 2 * * *", "America/New_York", "2026-10-31T12:00:00", "2026-11-01T07:30:00");
}

static void test_next_dst_berlin(void **state)
{
    (void)state;
    /* Spring forward 2026-03-29: 02:00 CET -> 03:00 CEST. */
    check_next("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00", "2026-03-30T00:30:00");
    check_next("0 30 2 * * *", "Europe/Berlin", "2026-03-28T01:30:00", "2026-03-30T00:30:00");
    /* Fall back 2026-10-25: 03:00 CEST -> 02:00 CET; 02:30 repeats. */
    check_next("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00", "2026-10-25T00:30:00");
    check_next("30 2 * * *", "Europe/Berlin", "2026-10-25T00:30:00", "2026-10-26T01:30:00");
    check_next("30 2 * * *", "Europe/Berlin", "2026-10-25T01:00:00", "2026-10-26T01:30:00");
}

static void test_tz_validation_and_restore(void **state)
{
    cron_expr c;
    time_t next = 0;

    (void)state;
    assert_int_equal(cron_tz_valid("Asia/Shanghai"), 1);
    assert_int_equal(cron_tz_valid("America/New_York"), 1);
    assert_int_equal(cron_tz_valid("UTC"), 1);
    assert_int_equal(cron_tz_valid("Mars/Olympus_Mons"), 0);
    assert_int_equal(cron_tz_valid(""), 0);
    assert_int_equal(cron_tz_valid(NULL), 0);
    assert_int_equal(cron_tz_valid("../../etc/passwd"), 0);
    assert_int_equal(cron_tz_valid("/etc/passwd"), 0);
    assert_int_equal(cron_tz_valid("Asia"), 0); /* a directory */
    assert_int_equal(cron_tz_valid("EST5EDT,M3.2.0,M11.1.0"), 0);

    assert_int_equal(cron_parse(&c, "0 0 * * *", NULL, 0), 0);
    assert_int_equal(cron_next(&c, "Mars/Olympus_Mons", utc("2026-01-01T00:00:00"), &next), -1);

    /* The caller's TZ is restored, whether set or not. */
    setenv("TZ", "Europe/Berlin", 1);
    tzset();
    assert_int_equal(cron_next(&c, "Asia/Shanghai", utc("2026-01-01T00:00:00"), &next), 0);
    assert_string_equal(getenv("TZ"), "Europe/Berlin");
    unsetenv("TZ");
    tzset();
    assert_int_equal(cron_next(&c, "Asia/Shanghai", utc("2026-01-01T00:00:00"), &next), 0);
    assert_null(getenv("TZ"));
}

/* ---- naive oracle: scan minute by minute in the process's TZ ---- */

static int bit(uint64_t m, int v)
{
    return (int)((m >> v) & 1);
}

static int naive_matches(const cron_expr *c, const struct tm *tm)
{
    int dom_ok = bit(c->dom, tm->tm_mday), dow_ok = bit(c->dow, tm->tm_wday);
    int day_ok = (c->dom_any || c->dow_any) ? (dom_ok && dow_ok) : (dom_ok || dow_ok);

    return bit(c->min, tm->tm_min) && bit(c->hour, tm->tm_hour) && bit(c->mon, tm->tm_mon + 1) &&
           day_ok && bit(c->sec, tm->tm_sec);
}

/* First minute-aligned t > after whose local wall time matches and was not
 * already shown by an earlier instant (within the last 2 hours). */
static time_t naive_next(const cron_expr *c, time_t after, int max_minutes)
{
    time_t t = after - after % 60 + 60;

    for (int i = 0; i < max_minutes; i++, t += 60) {
        struct tm tm, prev;
        int repeat = 0;
        localtime_r(&t, &tm);
        if (!naive_matches(c, &tm))
            continue;
        for (int back = 30; back <= 120; back += 30) {
            time_t p = t - back * 60;
            localtime_r(&p, &prev);
            if (prev.tm_hour == tm.tm_hour && prev.tm_min == tm.tm_min &&
                prev.tm_mday == tm.tm_mday)
                repeat = 1;
        }
        if (!repeat)
            return t;
    }
    return (time_t)-1;
}

static void random_list(uint64_t *rng, char *out, size_t outlen, int lo, int hi, int nmax)
{
    int n = 1 + (int)(backoff_rand(rng) % (uint64_t)nmax);
    size_t len = 0;

    out[0] = '\0';
    for (int i = 0; i < n; i++) {
        int a = lo + (int)(backoff_rand(rng) % (uint64_t)(hi - lo + 1));
        len += (size_t)snprintf(out + len, outlen - len, "%s%d", i ? "," : "", a);
    }
}

static void test_next_matches_naive_scan(void **state)
{
    /* Each zone with one of its 2026 DST changes (UTC instant); starts are
     * drawn from 6 hours before to 2 hours after it. Shanghai has none. */
    static const struct {
        const char *tz, *change;
    } cases[] = {
        {"America/New_York", "2026-03-08T07:00:00"},
        {"America/New_York", "2026-11-01T06:00:00"},
        {"Europe/Berlin", "2026-03-29T01:00:00"},
        {"Europe/Berlin", "2026-10-25T01:00:00"},
        {"Australia/Lord_Howe", "2026-04-04T15:00:00"},
        {"Australia/Lord_Howe", "2026-10-03T15:30:00"},
        {"Asia/Shanghai", "2026-06-15T00:00:00"},
    };
    const int ncases = (int)(sizeof(cases) / sizeof(cases[0]));
    uint64_t rng = 12345;
    int checked = 0;

    (void)state;
    for (int trial = 0; trial < 240; trial++) {
        const char *tz = cases[trial % ncases].tz;
        char mins[64], hours[64], dows[64], expr[256];
        cron_expr c;
        time_t after, got = 0, want;

        random_list(&rng, mins, sizeof(mins), 0, 59, 3);
        random_list(&rng, hours, sizeof(hours), 0, 23, 4);
        /* Half the trials include the hours DST changes touch (01-03). */
        if (trial % 2)
            snprintf(hours + strlen(hours), sizeof(hours) - strlen(hours), ",%d",
                     1 + (int)(backoff_rand(&rng) % 3));
        if (trial % 3 == 0)
            random_list(&rng, dows, sizeof(dows), 0, 6, 3);
        else
            strcpy(dows, "*");
        snprintf(expr, sizeof(expr), "%s %s * * %s", mins, hours, dows);
        assert_int_equal(cron_parse(&c, expr, NULL, 0), 0);
        after = utc(cases[trial % ncases].change) - 6 * 3600 +
                (time_t)(backoff_rand(&rng) % (8 * 3600));

        setenv("TZ", tz, 1);
        tzset();
        want = naive_next(&c, after, 9 * 24 * 60);
        unsetenv("TZ");
        tzset();
        assert_true(want != (time_t)-1);
        assert_int_equal(cron_next(&c, tz, after, &got), 0);
        if (got != want) {
            char a[32], g[32], w[32];
            time_rfc3339(after, -1, a);
            time_rfc3339(got, -1, g);
            time_rfc3339(want, -1, w);
            fail_msg("'%s' in %s after %s: got %s, naive %s", expr, tz, a, g, w);
        }
        checked++;
    }
    assert_int_equal(checked, 240);
}

/* The search jumps by field: even rare schedules cost little. */
static void test_next_is_fast(void **state)
{
    cron_expr c;
    time_t t = utc("2026-01-01T00:00:00");
    uint64_t t0 = time_mono_us(), elapsed;

    (void)state;
    assert_int_equal(cron_parse(&c, "0 0 29 2 MON", NULL, 0), 0);
    for (int i = 0; i < 200; i++)
        assert_int_equal(cron_next(&c, "Europe/Berlin", t, &t), 0);
    assert_int_equal(cron_parse(&c, "59 59 23 31 12 *", NULL, 0), 0);
    for (int i = 0; i < 200; i++)
        assert_int_equal(cron_next(&c, "America/New_York", t, &t), 0);
    elapsed = time_mono_us() - t0;
    printf("cron_next: 400 rare-schedule calls in %llu us\n", (unsigned long long)elapsed);
    assert_true(elapsed < 5000000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_parse_fields),
        cmocka_unit_test(test_next_basic_utc),
        cmocka_unit_test(test_next_month_ends_and_leap),
        cmocka_unit_test(test_next_dom_dow),
        cmocka_unit_test(test_next_timezones),
        cmocka_unit_test(test_next_dst_new_york),
        cmocka_unit_test(test_next_dst_berlin),
        cmocka_unit_test(test_tz_validation_and_restore),
        cmocka_unit_test(test_next_matches_naive_scan),
        cmocka_unit_test(test_next_is_fast),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
