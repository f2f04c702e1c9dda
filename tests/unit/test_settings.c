/* Settings: defaults, every validation, the config file and its precedence;
 * secrets from NAME, NAME_FILE and $CREDENTIALS_DIRECTORY/NAME. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "common/egress_cap.h"
#include "common/redis.h"
#include "common/secret.h"
#include "common/settings.h"

#include <libpq-fe.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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
    assert_int_equal(s.callback_lag_alert_s, 60);
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
                         "ORGSYNC_CALLBACK_LAG_ALERT_S=5",
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
    assert_int_equal(s.callback_lag_alert_s, 5);
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
        {"ORGSYNC_CALLBACK_LAG_ALERT_S=0", "ORGSYNC_CALLBACK_LAG_ALERT_S"},
        {"ORGSYNC_CALLBACK_LAG_ALERT_S=1m", "ORGSYNC_CALLBACK_LAG_ALERT_S"},
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
    const char *env2[] = {"ORGSYNC_ALERT_WEBHOOK=ftp://hooks/SECRETKEY", NULL};
    settings s;
    char err[512] = "";
    (void)state;
    assert_int_equal(load(&s, NULL, env, err), -1);
    assert_null(strstr(err, "hunter2"));
    assert_int_equal(load(&s, NULL, env2, err), -1);
    assert_null(strstr(err, "SECRETKEY"));
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

/* ---- secrets from files and credentials ---- */

/* A fresh private directory; files are written into it by put(). */
static char *tmp_dir(void)
{
    static char dir[64];
    snprintf(dir, sizeof(dir), "/tmp/orgsync-secrets-XXXXXX");
    assert_non_null(mkdtemp(dir));
    return dir;
}

static const char *put(const char *dir, const char *name, const char *text)
{
    static char paths[8][256];
    static int next;
    char *path = paths[next++ % 8];
    FILE *f;
    snprintf(path, 256, "%s/%s", dir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void rm_dir(const char *dir)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* load() with an error expected: the message starts with want_prefix, holds
 * each of the NULL-terminated must[] and never the secret. */
static void expect_err(const char *const *env, const char *want_prefix, const char *secret,
                       const char *const *must)
{
    settings s;
    char err[512] = "";
    int rc = load(&s, NULL, env, err);
    if (rc != -1 || strncmp(err, want_prefix, strlen(want_prefix)) != 0 || strchr(err, '\n'))
        fail_msg("%s: rc=%d err='%s'", env[0], rc, err);
    if (secret && strstr(err, secret))
        fail_msg("the secret is in the message: '%s'", err);
    for (; must && *must; must++)
        if (!strstr(err, *must))
            fail_msg("'%s' is not in '%s'", *must, err);
}

/* Every secret setting reads NAME_FILE; trailing \n or \r\n is dropped. */
static void test_secret_files(void **state)
{
    char *dir = tmp_dir();
    char e[6][320];
    const char *env[7];
    settings s;
    char err[512] = "";
    (void)state;
    snprintf(e[0], sizeof e[0], "ORGSYNC_ADMIN_TOKEN_FILE=%s",
             put(dir, "admin", "admin-token-0123456789\n"));
    snprintf(e[1], sizeof e[1], "ORGSYNC_READ_TOKEN_FILE=%s",
             put(dir, "read", "read-token-0123456789\r\n"));
    snprintf(e[2], sizeof e[2], "ORGSYNC_PG_PASSWORD_FILE=%s", put(dir, "pg", "pg pass'word\n\n"));
    snprintf(e[3], sizeof e[3], "ORGSYNC_REDIS_PASSWORD_FILE=%s", put(dir, "redis", "p@ss:/w%rd"));
    snprintf(e[4], sizeof e[4], "ORGSYNC_ALERT_WEBHOOK_FILE=%s",
             put(dir, "hook", "https://hooks.example/k/SECRETKEY\n"));
    snprintf(e[5], sizeof e[5], "ORGSYNC_CACHE_KEY_FILE=%s",
             put(dir, "cache", "cache-key-0123456789abcdef\n"));
    for (int i = 0; i < 6; i++)
        env[i] = e[i];
    env[6] = NULL;
    if (load(&s, NULL, env, err))
        fail_msg("%s", err);
    assert_string_equal(s.admin_token, "admin-token-0123456789");
    assert_string_equal(s.read_token, "read-token-0123456789");
    assert_string_equal(s.pg_password, "pg pass'word");
    assert_string_equal(s.pg_dsn, "postgresql:///orgsync"); /* the password is kept apart */
    assert_string_equal(s.alert_webhook, "https://hooks.example/k/SECRETKEY");
    assert_string_equal(s.cache_key, "cache-key-0123456789abcdef");
    /* the Redis password is written into the URL, %-escaped, and reads back */
    assert_string_equal(s.redis_url, "redis://:p%40ss%3A%2Fw%25rd@127.0.0.1:6379/0");
    {
        char host[64], pw[64], uerr[128];
        int port, db;
        assert_int_equal(redis_url_parse(s.redis_url, host, sizeof host, &port, pw, sizeof pw, &db,
                                         uerr, sizeof uerr),
                         0);
        assert_string_equal(pw, "p@ss:/w%rd");
        assert_string_equal(host, "127.0.0.1");
    }
    /* every secret setting has a _FILE form that the config file accepts */
    {
        char cfg[256];
        snprintf(cfg, sizeof cfg, "ORGSYNC_ADMIN_TOKEN_FILE=%s/admin\n", dir);
        char *path = write_tmp(cfg);
        assert_int_equal(load(&s, path, NULL, err), 0);
        assert_string_equal(s.admin_token, "admin-token-0123456789");
        unlink(path);
        path = write_tmp("ORGSYNC_ENV_FILE=/x\n");
        assert_int_equal(load(&s, path, NULL, err), -1);
        assert_non_null(strstr(err, "unknown setting 'ORGSYNC_ENV_FILE'"));
        unlink(path);
    }
    for (int i = 0; settings_secret_names[i]; i++) {
        char name[80];
        int known = 0;
        snprintf(name, sizeof name, "%s_FILE", settings_secret_names[i]);
        for (int j = 0; settings_names[j]; j++)
            known |= !strcmp(settings_names[j], settings_secret_names[i]);
        assert_true(known);
    }
    rm_dir(dir);
}

/* Bad files: unreadable, a directory, empty, two lines, too long, or both NAME
 * and NAME_FILE; each message names the setting and the path, never the value. */
static void test_secret_file_errors(void **state)
{
    char *dir = tmp_dir();
    char a[320], b[320];
    const char *env[3] = {a, NULL, NULL};
    const char *p;
    (void)state;

    snprintf(a, sizeof a, "ORGSYNC_ADMIN_TOKEN_FILE=%s/missing", dir);
    expect_err(env, "ORGSYNC_ADMIN_TOKEN_FILE: cannot read ", NULL,
               (const char *[]){"/missing", "No such file", NULL});
    snprintf(a, sizeof a, "ORGSYNC_READ_TOKEN_FILE=%s", dir);
    expect_err(env, "ORGSYNC_READ_TOKEN_FILE: cannot read ", NULL,
               (const char *[]){dir, "directory", NULL});
    p = put(dir, "empty", "");
    snprintf(a, sizeof a, "ORGSYNC_PG_PASSWORD_FILE=%s", p);
    expect_err(env, "ORGSYNC_PG_PASSWORD_FILE: ", NULL, (const char *[]){p, "is empty", NULL});
    p = put(dir, "newline", "\r\n\n");
    snprintf(a, sizeof a, "ORGSYNC_REDIS_PASSWORD_FILE=%s", p);
    expect_err(env, "ORGSYNC_REDIS_PASSWORD_FILE: ", NULL, (const char *[]){p, "is empty", NULL});
    p = put(dir, "two", "line-one-secret\nline-two-secret\n");
    snprintf(a, sizeof a, "ORGSYNC_CACHE_KEY_FILE=%s", p);
    expect_err(env, "ORGSYNC_CACHE_KEY_FILE: ", "line-one-secret",
               (const char *[]){p, "more than one line", NULL});
    {
        char big[1100];
        memset(big, 'x', sizeof big - 1);
        big[sizeof big - 1] = '\0';
        p = put(dir, "big", big);
        snprintf(a, sizeof a, "ORGSYNC_ADMIN_TOKEN_FILE=%s", p);
        expect_err(env, "ORGSYNC_ADMIN_TOKEN_FILE: ", NULL, (const char *[]){p, "more than", NULL});
    }
    /* too short for a token: the setting's own check, saying where it came from */
    p = put(dir, "short", "hunter2\n");
    snprintf(a, sizeof a, "ORGSYNC_ADMIN_TOKEN_FILE=%s", p);
    expect_err(env, "ORGSYNC_ADMIN_TOKEN: expected 16 to 255 characters", "hunter2",
               (const char *[]){p, NULL});
    /* a webhook that is not a URL is not echoed (it may hold a key) */
    p = put(dir, "hook", "mailto:SECRETKEY\n");
    snprintf(a, sizeof a, "ORGSYNC_ALERT_WEBHOOK_FILE=%s", p);
    expect_err(env, "ORGSYNC_ALERT_WEBHOOK: expected an http:// or https:// URL", "SECRETKEY",
               (const char *[]){p, NULL});
    /* both */
    p = put(dir, "ok", "admin-token-0123456789\n");
    snprintf(a, sizeof a, "ORGSYNC_ADMIN_TOKEN_FILE=%s", p);
    snprintf(b, sizeof b, "ORGSYNC_ADMIN_TOKEN=other-token-0123456789");
    env[1] = b;
    expect_err(env, "ORGSYNC_ADMIN_TOKEN: both ORGSYNC_ADMIN_TOKEN and ORGSYNC_ADMIN_TOKEN_FILE",
               "other-token", NULL);
    /* an empty NAME_FILE or NAME counts as unset */
    {
        const char *env2[] = {"ORGSYNC_ADMIN_TOKEN_FILE=", "ORGSYNC_ADMIN_TOKEN=", NULL};
        settings s;
        char err[512];
        assert_int_equal(load(&s, NULL, env2, err), 0);
        assert_string_equal(s.admin_token, "");
    }
    rm_dir(dir);
}

/* $CREDENTIALS_DIRECTORY/NAME (systemd LoadCredential=) is the third source. */
static void test_credentials_directory(void **state)
{
    char *dir = tmp_dir();
    char cd[320], a[320];
    settings s;
    char err[512] = "";
    (void)state;
    snprintf(cd, sizeof cd, "CREDENTIALS_DIRECTORY=%s", dir);
    {
        const char *env[] = {cd, NULL};
        /* an empty directory: nothing set, no error */
        assert_int_equal(load(&s, NULL, env, err), 0);
        assert_string_equal(s.admin_token, "");
        put(dir, "ORGSYNC_ADMIN_TOKEN", "cred-admin-token-0123\n");
        put(dir, "ORGSYNC_READ_TOKEN", "cred-read-token-01234");
        put(dir, "ORGSYNC_PG_PASSWORD", "pgcred\n");
        put(dir, "ORGSYNC_REDIS_PASSWORD", "rediscred\n");
        if (load(&s, NULL, env, err))
            fail_msg("%s", err);
        assert_string_equal(s.admin_token, "cred-admin-token-0123");
        assert_string_equal(s.read_token, "cred-read-token-01234");
        assert_string_equal(s.pg_password, "pgcred");
        assert_string_equal(s.redis_url, "redis://:rediscred@127.0.0.1:6379/0");
        /* the lower-case or short names are not looked at */
        put(dir, "admin_token", "x");
    }
    {
        /* a credential and the variable too: an error naming both */
        const char *env[] = {cd, "ORGSYNC_ADMIN_TOKEN=env-admin-token-0123", NULL};
        expect_err(env, "ORGSYNC_ADMIN_TOKEN: set by ORGSYNC_ADMIN_TOKEN and by the credential ",
                   "env-admin-token", (const char *[]){dir, NULL});
        snprintf(a, sizeof a, "ORGSYNC_READ_TOKEN_FILE=%s/ORGSYNC_ADMIN_TOKEN", dir);
        const char *env2[] = {cd, a, NULL};
        expect_err(env2, "ORGSYNC_READ_TOKEN: set by ORGSYNC_READ_TOKEN_FILE and by the credential",
                   NULL, NULL);
    }
    {
        /* an empty credential, and one that is a directory */
        const char *env[] = {cd, NULL};
        put(dir, "ORGSYNC_CACHE_KEY", "\n");
        expect_err(env, "ORGSYNC_CACHE_KEY (credential): ", NULL,
                   (const char *[]){dir, "is empty", NULL});
        snprintf(a, sizeof a, "%s/ORGSYNC_CACHE_KEY", dir);
        unlink(a);
        assert_int_equal(mkdir(a, 0700), 0);
        expect_err(env, "ORGSYNC_CACHE_KEY (credential): cannot read ", NULL,
                   (const char *[]){"directory", NULL});
    }
    rm_dir(dir);
}

/* The secret lookup itself, as `orgsync enterprise --secret-env VAR` uses it. */
static void test_secret_lookup_names(void **state)
{
    char out[64], from[300], err[512];
    const char *env[] = {"CORP_A=abc", NULL};
    (void)state;
    assert_true(secret_name_valid("CORP_A"));
    assert_true(secret_name_valid("_x9"));
    assert_false(secret_name_valid(""));
    assert_false(secret_name_valid("9X"));
    assert_false(secret_name_valid("../etc/passwd"));
    assert_false(secret_name_valid("A-B"));
    assert_int_equal(secret_lookup("CORP_A", fake_get, (void *)env, NULL, out, sizeof out, from,
                                   sizeof from, err, sizeof err),
                     1);
    assert_string_equal(out, "abc");
    assert_string_equal(from, "");
    assert_int_equal(secret_lookup("CORP_B", fake_get, (void *)env, "/nonexistent", out, sizeof out,
                                   from, sizeof from, err, sizeof err),
                     0);
    assert_int_equal(secret_lookup("../x", fake_get, (void *)env, NULL, out, sizeof out, from,
                                   sizeof from, err, sizeof err),
                     -1);
}

/* The Redis and PostgreSQL passwords cannot be given twice. */
static void test_passwords_once(void **state)
{
    const char *env1[] = {"ORGSYNC_REDIS_URL=redis://:inurl@10.0.0.1:6380/2",
                          "ORGSYNC_REDIS_PASSWORD=given-twice", NULL};
    const char *env2[] = {"ORGSYNC_PG_DSN=host=x password=inline",
                          "ORGSYNC_PG_PASSWORD=given-twice", NULL};
    const char *env3[] = {"ORGSYNC_PG_DSN=postgresql://u:inline@h/db",
                          "ORGSYNC_PG_PASSWORD=given-twice", NULL};
    const char *env4[] = {"ORGSYNC_REDIS_URL=redis://app:@10.0.0.1:6380/2",
                          "ORGSYNC_REDIS_PASSWORD=pw", NULL};
    const char *env5[] = {"ORGSYNC_REDIS_URL=redis://:@[::1]:6380/2", "ORGSYNC_REDIS_PASSWORD=pw",
                          NULL};
    settings s;
    char err[512];
    (void)state;
    expect_err(env1, "ORGSYNC_REDIS_PASSWORD: ORGSYNC_REDIS_URL already holds a password", "inurl",
               NULL);
    expect_err(env2, "ORGSYNC_PG_PASSWORD: ORGSYNC_PG_DSN already holds a password", "inline",
               NULL);
    expect_err(env3, "ORGSYNC_PG_PASSWORD: ORGSYNC_PG_DSN already holds a password", "inline",
               NULL);
    /* a user name with an empty password (Redis ACL) gets the password added */
    assert_int_equal(load(&s, NULL, env4, err), 0);
    assert_string_equal(s.redis_url, "redis://app:pw@10.0.0.1:6380/2");
    assert_int_equal(load(&s, NULL, env5, err), 0);
    assert_string_equal(s.redis_url, "redis://:pw@[::1]:6380/2");
}

/* The read token: a token like the admin one, not the same, not with public reads. */
static void test_read_token_settings(void **state)
{
    const char *ok[] = {"ORGSYNC_READ_TOKEN=read-token-0123456789", NULL};
    const char *pub[] = {"ORGSYNC_PUBLIC_READS=on", NULL};
    const char *same[] = {"ORGSYNC_READ_TOKEN=same-token-0123456789",
                          "ORGSYNC_ADMIN_TOKEN=same-token-0123456789", NULL};
    const char *both[] = {"ORGSYNC_READ_TOKEN=read-token-0123456789", "ORGSYNC_PUBLIC_READS=on",
                          NULL};
    const char *bad[] = {"ORGSYNC_PUBLIC_READS=maybe", NULL};
    const char *spaces[] = {"ORGSYNC_READ_TOKEN=read token 0123456789", NULL};
    settings s;
    char err[512];
    (void)state;
    assert_int_equal(load(&s, NULL, NULL, err), 0);
    assert_string_equal(s.read_token, "");
    assert_int_equal(s.public_reads, 0);
    assert_string_equal(s.cache_key, "");
    assert_int_equal(load(&s, NULL, ok, err), 0);
    assert_string_equal(s.read_token, "read-token-0123456789");
    assert_int_equal(load(&s, NULL, pub, err), 0);
    assert_int_equal(s.public_reads, 1);
    expect_err(same, "ORGSYNC_READ_TOKEN: must differ from ORGSYNC_ADMIN_TOKEN", "same-token",
               NULL);
    expect_err(both, "ORGSYNC_PUBLIC_READS: ", "read-token", NULL);
    expect_err(bad, "ORGSYNC_PUBLIC_READS: expected on or off", NULL, NULL);
    expect_err(spaces, "ORGSYNC_READ_TOKEN: expected printable characters", "read token", NULL);
}

/* Files the DSN names are checked at start-up, where the unit's sandbox would
 * hide them; a DSN with a password is never quoted in an error. */
static void test_pg_dsn_files(void **state)
{
    char *dir = tmp_dir();
    char a[400], home_root[600];
    const char *env[] = {a, NULL};
    settings s;
    char err[512];
    struct passwd *pw = getpwuid(getuid());
    (void)state;
    const char *cert = put(dir, "root.crt", "not really a certificate\n");
    snprintf(a, sizeof a, "ORGSYNC_PG_DSN=host=db sslmode=verify-full sslrootcert=%s", cert);
    assert_int_equal(load(&s, NULL, env, err), 0);
    snprintf(a, sizeof a, "ORGSYNC_PG_DSN=host=db sslmode=verify-ca sslrootcert=%s/none", dir);
    expect_err(env, "ORGSYNC_PG_DSN: sslrootcert ", NULL, (const char *[]){"/none", NULL});
    snprintf(a, sizeof a, "ORGSYNC_PG_DSN=host=db sslmode=verify-full passfile=%s/nopass", dir);
    expect_err(env, "ORGSYNC_PG_DSN: passfile ", NULL, (const char *[]){"/nopass", NULL});
    snprintf(home_root, sizeof home_root, "%s/.postgresql/root.crt", pw ? pw->pw_dir : "~");
    if (access(home_root, R_OK) != 0) {
        snprintf(a, sizeof a, "ORGSYNC_PG_DSN=host=db sslmode=verify-full");
        expect_err(env, "ORGSYNC_PG_DSN: sslmode=verify-full needs", NULL,
                   (const char *[]){"sslrootcert=", "ProtectHome", NULL});
    }
    snprintf(a, sizeof a, "ORGSYNC_PG_DSN=host=db sslmode=verify-full sslrootcert=system");
    if (PQlibVersion() < 160000)
        expect_err(env, "ORGSYNC_PG_DSN: sslrootcert=system needs libpq 16", NULL, NULL);
    else
        assert_int_equal(load(&s, NULL, env, err), 0);
    snprintf(a, sizeof a, "ORGSYNC_PG_DSN=host=db sslmode=require");
    assert_int_equal(load(&s, NULL, env, err), 0);
    /* no TLS on a Unix-domain socket: nothing to check */
    snprintf(a, sizeof a, "ORGSYNC_PG_DSN=host=/var/run/postgresql sslmode=verify-full");
    assert_int_equal(load(&s, NULL, env, err), 0);
    snprintf(a, sizeof a, "ORGSYNC_PG_DSN=dbname=orgsync sslmode=verify-full");
    assert_int_equal(load(&s, NULL, env, err), 0);
    snprintf(a, sizeof a, "ORGSYNC_PG_DSN=host=/a,db sslmode=verify-full sslrootcert=%s/none", dir);
    expect_err(env, "ORGSYNC_PG_DSN: sslrootcert ", NULL, NULL);
    snprintf(a, sizeof a, "ORGSYNC_PG_DSN=host=db password=hunter2 bogus");
    expect_err(env, "ORGSYNC_PG_DSN: not a valid libpq connection string", "hunter2", NULL);
    snprintf(a, sizeof a, "ORGSYNC_PG_DSN=postgresql://u:hunter2@[::1/db");
    expect_err(env, "ORGSYNC_PG_DSN: not a valid libpq connection string", "hunter2", NULL);
    rm_dir(dir);
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
        cmocka_unit_test(test_secret_files),
        cmocka_unit_test(test_secret_file_errors),
        cmocka_unit_test(test_credentials_directory),
        cmocka_unit_test(test_secret_lookup_names),
        cmocka_unit_test(test_passwords_once),
        cmocka_unit_test(test_read_token_settings),
        cmocka_unit_test(test_pg_dsn_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
