/* Settings: defaults, every validation, the config file and its precedence. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "common/egress_cap.h"
#include "common/settings.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A fake environment: NAME=VALUE strings, NULL-terminated. */
static const char *fake_get(const char *name, void *arg)
{
    const char *const *env = arg;
    size_t n = strlen(name);
    for (; env && *env; env++)
        if (strncmp(*env, name, n) == 0 && (*env)[n] == '=')
            return *env + n + 1;
    return NULL;
}

static char *write_tmp(const char *text);

static int load(settings *s, const char *file, const char *const *env, char *err)
{
    return settings_load_from(s, file, fake_get, (void *)env, err, 512);
}

static void test_defaults(void **state)
{
    settings s;
    char err[512] = "";
    (void)state;
    assert_int_equal(load(&s, NULL, NULL, err), 0);
    assert_string_equal(s.env, "dev");
    assert_int_equal(s.schedule, 0);
    assert_true(settings_may_schedule_worker(&s, 1));
    assert_false(settings_may_schedule_worker(&s, 2));
    assert_true(s.workers >= 1);
    assert_string_equal(s.pg_dsn, "postgresql:///orgsync");
    assert_string_equal(s.redis_url, "redis://127.0.0.1:6379/0");
    assert_int_equal(s.read_only, READ_ONLY_AUTO);
    assert_string_equal(s.http_addr, "127.0.0.1:8080");
    assert_string_equal(s.cron, "0 0 2 * * *");
    assert_string_equal(s.tz, "Asia/Shanghai");
    assert_int_equal(s.lock_ttl_ms, 15000);
    assert_true(s.dept_rate == 10.0);
    assert_int_equal(s.upstream_max_inflight, 50);
    assert_string_equal(s.upstream_url, "https://qyapi.weixin.qq.com");
    assert_int_equal(s.daily_quota, 0);
    assert_int_equal(s.lookup_budget, 60);
    assert_string_equal(s.admin_token, "");
    assert_true(strchr(s.instance, ':') != NULL);
    assert_int_equal(s.egress_max_per_min, 20000);
    assert_int_equal(s.egress_max_per_hour, 600000);
    assert_string_equal(s.upstream_bind, "");
}

/* The egress id defaults to the host name (the instance's part before ':pid'). */
static void test_egress_id_default(void **state)
{
    settings s;
    char err[512] = "", host[65] = "", want[65];
    (void)state;
    assert_int_equal(load(&s, NULL, NULL, err), 0);
    assert_int_equal(gethostname(host, sizeof(host) - 1), 0);
    egress_cap_id_from_host(host, want, sizeof(want));
    assert_string_equal(s.egress_id, want);
    assert_true(egress_cap_id_valid(s.egress_id));
    assert_int_equal(strncmp(s.instance, host, strlen(host)), 0);
}

/* The upstream's per-IP limits are the most the caps accept; an IPv6 bind address
 * and an egress id with ':' (an IP as id) are fine; an empty bind from the
 * environment clears one from the file. */
static void test_egress_settings(void **state)
{
    const char *env[] = {"ORGSYNC_EGRESS_ID=203.0.113.7",
                         "ORGSYNC_EGRESS_MAX_PER_MIN=20000",
                         "ORGSYNC_EGRESS_MAX_PER_HOUR=1",
                         "ORGSYNC_UPSTREAM_BIND=2001:db8::5",
                         "ORGSYNC_EGRESS_REFUSED_TTL=90",
                         "ORGSYNC_DRAIN_MS=15000",
                         "ORGSYNC_EXPORT_RANGE_KB=8192",
                         "ORGSYNC_EXPORT_AUTO_DEPTS=0",
                         NULL};
    const char *env2[] = {"ORGSYNC_EGRESS_ID=2001:db8::5", "ORGSYNC_EGRESS_MAX_PER_MIN=1",
                          "ORGSYNC_EGRESS_MAX_PER_HOUR=600000", "ORGSYNC_UPSTREAM_BIND=", NULL};
    char *path = write_tmp("ORGSYNC_UPSTREAM_BIND=127.0.0.2\n"
                           "ORGSYNC_EGRESS_ID=from-file_1\n");
    settings s;
    char err[512] = "";
    (void)state;
    assert_int_equal(load(&s, NULL, env, err), 0);
    assert_string_equal(s.egress_id, "203.0.113.7");
    assert_int_equal(s.egress_max_per_min, 20000);
    assert_int_equal(s.egress_max_per_hour, 1);
    assert_int_equal(s.export_range_kb, 8192);
    assert_int_equal(s.export_auto_depts, 0);
    assert_string_equal(s.upstream_bind, "2001:db8::5");
    assert_int_equal(s.egress_refused_ttl_s, 90);
    assert_int_equal(s.drain_ms, 15000);
    assert_int_equal(load(&s, path, NULL, err), 0);
    assert_int_equal(s.egress_refused_ttl_s, 3600); /* the default */
    assert_int_equal(s.drain_ms, 0);                /* the default */
    assert_string_equal(s.upstream_bind, "127.0.0.2");
    assert_string_equal(s.egress_id, "from-file_1");
    assert_int_equal(load(&s, path, env2, err), 0);
    assert_string_equal(s.upstream_bind, "");
    assert_string_equal(s.egress_id, "2001:db8::5");
    assert_int_equal(s.egress_max_per_min, 1);
    assert_int_equal(s.egress_max_per_hour, 600000);
    unlink(path);
}

static void test_valid_values(void **state)
{
    const char *env[] = {"ORGSYNC_ENV=prod-eu_1",
                         "ORGSYNC_SCHEDULE=on",
                         "ORGSYNC_SCHEDULER_WORKERS=1,3",
                         "ORGSYNC_WORKERS=4",
                         "ORGSYNC_INSTANCE=host-a:w1",
                         "ORGSYNC_PG_DSN=host=127.0.0.1 port=5432 dbname=x",
                         "ORGSYNC_REDIS_URL=redis://:pw@10.0.0.1:6380/2",
                         "ORGSYNC_READ_ONLY=on",
                         "ORGSYNC_HTTP_ADDR=0.0.0.0:9090",
                         "ORGSYNC_CRON=*/5 * * * *",
                         "ORGSYNC_TZ=UTC",
                         "ORGSYNC_LOCK_TTL_MS=3000",
                         "ORGSYNC_DEPT_RATE=2.5",
                         "ORGSYNC_UPSTREAM_MAX_INFLIGHT=60",
                         "ORGSYNC_UPSTREAM_URL=http://127.0.0.1:9999///",
                         "ORGSYNC_DAILY_QUOTA=5000",
                         "ORGSYNC_LOOKUP_BUDGET=0",
                         "ORGSYNC_ADMIN_TOKEN=0123456789abcdef",
                         "ORGSYNC_ALERT_WEBHOOK=http://127.0.0.1:1/hook",
                         "ORGSYNC_LOG_LEVEL=debug",
                         "ORGSYNC_LOG_FORMAT=text",
                         NULL};
    settings s;
    char err[512] = "";
    (void)state;
    assert_int_equal(load(&s, NULL, env, err), 0);
    assert_string_equal(s.env, "prod-eu_1");
    assert_int_equal(s.schedule, 1);
    assert_true(settings_may_schedule_worker(&s, 1));
    assert_false(settings_may_schedule_worker(&s, 2));
    assert_true(settings_may_schedule_worker(&s, 3));
    assert_int_equal(s.workers, 4);
    assert_string_equal(s.instance, "host-a:w1");
    assert_int_equal(s.read_only, READ_ONLY_ON);
    assert_string_equal(s.http_addr, "0.0.0.0:9090");
    assert_int_equal(s.lock_ttl_ms, 3000);
    assert_true(s.dept_rate == 2.5);
    assert_int_equal(s.upstream_max_inflight, 60);
    assert_string_equal(s.upstream_url, "http://127.0.0.1:9999");
    assert_int_equal(s.daily_quota, 5000);
    assert_int_equal(s.lookup_budget, 0);
    assert_string_equal(s.admin_token, "0123456789abcdef");
    assert_int_equal(s.log_level, 0);
    assert_int_equal(s.log_json, 0);
}

/* Each bad value fails with a message that names the setting. */
static void test_bad_values(void **state)
{
    static const char *const cases[][2] = {
        {"ORGSYNC_DEPT_RATE=abc", "ORGSYNC_DEPT_RATE"},
        {"ORGSYNC_DEPT_RATE=0", "ORGSYNC_DEPT_RATE"},
        {"ORGSYNC_DEPT_RATE=10x", "ORGSYNC_DEPT_RATE"},
        {"ORGSYNC_ENV=Prod", "ORGSYNC_ENV"},
        {"ORGSYNC_ENV=a:b", "ORGSYNC_ENV"},
        {"ORGSYNC_SCHEDULE=maybe", "ORGSYNC_SCHEDULE"},
        {"ORGSYNC_SCHEDULER_WORKERS=0", "ORGSYNC_SCHEDULER_WORKERS"},
        {"ORGSYNC_SCHEDULER_WORKERS=1,,x", "ORGSYNC_SCHEDULER_WORKERS"},
        {"ORGSYNC_WORKERS=0", "ORGSYNC_WORKERS"},
        {"ORGSYNC_WORKERS=-3", "ORGSYNC_WORKERS"},
        {"ORGSYNC_INSTANCE=a|b", "ORGSYNC_INSTANCE"},
        {"ORGSYNC_INSTANCE=a b", "ORGSYNC_INSTANCE"},
        {"ORGSYNC_PG_DSN=host=x bogus", "ORGSYNC_PG_DSN"},
        {"ORGSYNC_REDIS_URL=http://x", "ORGSYNC_REDIS_URL"},
        {"ORGSYNC_READ_ONLY=yes", "ORGSYNC_READ_ONLY"},
        {"ORGSYNC_HTTP_ADDR=localhost:80", "ORGSYNC_HTTP_ADDR"},
        {"ORGSYNC_HTTP_ADDR=127.0.0.1:99999", "ORGSYNC_HTTP_ADDR"},
        {"ORGSYNC_CRON=* * *", "ORGSYNC_CRON"},
        {"ORGSYNC_CRON=61 * * * *", "ORGSYNC_CRON"},
        {"ORGSYNC_TZ=Mars/Olympus", "ORGSYNC_TZ"},
        {"ORGSYNC_LOCK_TTL_MS=10", "ORGSYNC_LOCK_TTL_MS"},
        {"ORGSYNC_UPSTREAM_MAX_INFLIGHT=61", "ORGSYNC_UPSTREAM_MAX_INFLIGHT"},
        {"ORGSYNC_UPSTREAM_URL=ftp://x", "ORGSYNC_UPSTREAM_URL"},
        {"ORGSYNC_DAILY_QUOTA=-1", "ORGSYNC_DAILY_QUOTA"},
        {"ORGSYNC_LOOKUP_BUDGET=ten", "ORGSYNC_LOOKUP_BUDGET"},
        {"ORGSYNC_ADMIN_TOKEN=short", "ORGSYNC_ADMIN_TOKEN"},
        {"ORGSYNC_ALERT_WEBHOOK=mailto:x", "ORGSYNC_ALERT_WEBHOOK"},
        {"ORGSYNC_LOG_LEVEL=loud", "ORGSYNC_LOG_LEVEL"},
        {"ORGSYNC_LOG_FORMAT=xml", "ORGSYNC_LOG_FORMAT"},
        {"ORGSYNC_EGRESS_ID=", "ORGSYNC_EGRESS_ID"},
        {"ORGSYNC_EGRESS_ID=a b", "ORGSYNC_EGRESS_ID"},
        {"ORGSYNC_EGRESS_ID=egress/1", "ORGSYNC_EGRESS_ID"},
        {"ORGSYNC_EGRESS_ID=x{y}", "ORGSYNC_EGRESS_ID"},
        {"ORGSYNC_EGRESS_ID=0123456789012345678901234567890123456789012345678901234567890123"
         "4",
         "ORGSYNC_EGRESS_ID"},
        {"ORGSYNC_EGRESS_MAX_PER_MIN=0", "ORGSYNC_EGRESS_MAX_PER_MIN"},
        {"ORGSYNC_EGRESS_MAX_PER_MIN=20001", "ORGSYNC_EGRESS_MAX_PER_MIN"},
        {"ORGSYNC_EGRESS_MAX_PER_MIN=1e3", "ORGSYNC_EGRESS_MAX_PER_MIN"},
        {"ORGSYNC_EGRESS_MAX_PER_MIN=", "ORGSYNC_EGRESS_MAX_PER_MIN"},
        {"ORGSYNC_EGRESS_MAX_PER_HOUR=0", "ORGSYNC_EGRESS_MAX_PER_HOUR"},
        {"ORGSYNC_EGRESS_MAX_PER_HOUR=600001", "ORGSYNC_EGRESS_MAX_PER_HOUR"},
        {"ORGSYNC_EGRESS_MAX_PER_HOUR=-5", "ORGSYNC_EGRESS_MAX_PER_HOUR"},
        {"ORGSYNC_EGRESS_REFUSED_TTL=0", "ORGSYNC_EGRESS_REFUSED_TTL"},
        {"ORGSYNC_EGRESS_REFUSED_TTL=604801", "ORGSYNC_EGRESS_REFUSED_TTL"},
        {"ORGSYNC_EGRESS_REFUSED_TTL=1h", "ORGSYNC_EGRESS_REFUSED_TTL"},
        {"ORGSYNC_DRAIN_MS=-1", "ORGSYNC_DRAIN_MS"},
        {"ORGSYNC_DRAIN_MS=15001", "ORGSYNC_DRAIN_MS"},
        {"ORGSYNC_DRAIN_MS=2s", "ORGSYNC_DRAIN_MS"},
        {"ORGSYNC_EXPORT_RANGE_KB=3", "ORGSYNC_EXPORT_RANGE_KB"},
        {"ORGSYNC_EXPORT_RANGE_KB=8193", "ORGSYNC_EXPORT_RANGE_KB"},
        {"ORGSYNC_EXPORT_RANGE_KB=1M", "ORGSYNC_EXPORT_RANGE_KB"},
        {"ORGSYNC_EXPORT_AUTO_DEPTS=-1", "ORGSYNC_EXPORT_AUTO_DEPTS"},
        {"ORGSYNC_EXPORT_AUTO_DEPTS=lots", "ORGSYNC_EXPORT_AUTO_DEPTS"},
        {"ORGSYNC_UPSTREAM_BIND=localhost", "ORGSYNC_UPSTREAM_BIND"},
        {"ORGSYNC_UPSTREAM_BIND=eth0", "ORGSYNC_UPSTREAM_BIND"},
        {"ORGSYNC_UPSTREAM_BIND=127.0.0.1:80", "ORGSYNC_UPSTREAM_BIND"},
        {"ORGSYNC_UPSTREAM_BIND=10.0.0.256", "ORGSYNC_UPSTREAM_BIND"},
        {"ORGSYNC_UPSTREAM_BIND=[::1]", "ORGSYNC_UPSTREAM_BIND"},
        {"ORGSYNC_UPSTREAM_BIND=host!10.0.0.1", "ORGSYNC_UPSTREAM_BIND"},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *env[] = {cases[i][0], NULL};
        settings s;
        char err[512] = "";
        int rc = load(&s, NULL, env, err);
        if (rc != -1 || strncmp(err, cases[i][1], strlen(cases[i][1])) != 0 || strchr(err, '\n'))
            fail_msg("%s: rc=%d err='%s'", cases[i][0], rc, err);
    }
}

/* The admin token never appears in an error message. */
static void test_secret_not_echoed(void **state)
{
    const char *env[] = {"ORGSYNC_ADMIN_TOKEN=hunter2", NULL};
    settings s;
    char err[512] = "";
    (void)state;
    assert_int_equal(load(&s, NULL, env, err), -1);
    assert_null(strstr(err, "hunter2"));
}

static char *write_tmp(const char *text)
{
    static char path[64];
    int fd;
    snprintf(path, sizeof(path), "/tmp/orgsync-settings-XXXXXX");
    fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void test_config_file_and_precedence(void **state)
{
    const char *env[] = {"ORGSYNC_WORKERS=7", NULL};
    char *path = write_tmp("# comment\n\n"
                           "ORGSYNC_ENV=staging\n"
                           "export ORGSYNC_WORKERS=3\n"
                           "ORGSYNC_CRON = \"0 */10 * * * *\"\n"
                           "ORGSYNC_TZ='UTC'\n");
    settings s;
    char err[512] = "";
    (void)state;
    assert_int_equal(load(&s, path, env, err), 0);
    assert_string_equal(s.env, "staging");
    assert_int_equal(s.workers, 7); /* the environment wins over the file */
    assert_string_equal(s.cron, "0 */10 * * * *");
    assert_string_equal(s.tz, "UTC");
    unlink(path);
}

static void test_config_file_errors(void **state)
{
    settings s;
    char err[512] = "";
    char *path;
    (void)state;
    path = write_tmp("ORGSYNC_SCHEDUEL=on\n");
    assert_int_equal(load(&s, path, NULL, err), -1);
    assert_non_null(strstr(err, "unknown setting 'ORGSYNC_SCHEDUEL'"));
    assert_non_null(strstr(err, ":1:"));
    unlink(path);
    path = write_tmp("ORGSYNC_ENV=x\njust words\n");
    assert_int_equal(load(&s, path, NULL, err), -1);
    assert_non_null(strstr(err, ":2: expected KEY=VALUE"));
    unlink(path);
    path = write_tmp("ORGSYNC_DEPT_RATE=fast\n");
    assert_int_equal(load(&s, path, NULL, err), -1);
    assert_non_null(strstr(err, "ORGSYNC_DEPT_RATE"));
    unlink(path);
    assert_int_equal(load(&s, "/nonexistent/orgsync.conf", NULL, err), -1);
    assert_non_null(strstr(err, "cannot read /nonexistent/orgsync.conf"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_valid_values),
        cmocka_unit_test(test_egress_id_default),
        cmocka_unit_test(test_egress_settings),
        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_secret_not_echoed),
        cmocka_unit_test(test_config_file_and_precedence),
        cmocka_unit_test(test_config_file_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
