/* Reload: which settings a SIGHUP takes and which it reports as needing a
 * restart (common/settings_reload.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "common/settings_reload.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *fake_get(const char *name, void *arg)
{
    const char *const *env = arg;
    size_t n = strlen(name);
    for (; env && *env; env++)
        if (strncmp(*env, name, n) == 0 && (*env)[n] == '=')
            return *env + n + 1;
    return NULL;
}

static settings *load(const char *const *env)
{
    settings *s = malloc(sizeof(*s));
    char err[512];

    assert_non_null(s);
    assert_int_equal(settings_load_from(s, NULL, fake_get, (void *)env, err, sizeof(err)), 0);
    return s;
}

static void test_nothing_changed(void **state)
{
    const char *env[] = {"ORGSYNC_CRON=0 0 2 * * *", "ORGSYNC_HTTP_ADDR=127.0.0.1:9000", NULL};
    settings *a = load(env), *b = load(env);
    settings_changes ch;
    (void)state;
    settings_reload_apply(a, b, &ch);
    assert_string_equal(ch.reloaded, "");
    assert_string_equal(ch.needs_restart, "");
    free(a);
    free(b);
}

static void test_reloadable_taken_others_kept(void **state)
{
    const char *before[] = {"ORGSYNC_LOG_LEVEL=info",
                            "ORGSYNC_CRON=0 0 2 * * *",
                            "ORGSYNC_TZ=UTC",
                            "ORGSYNC_HTTP_ADDR=127.0.0.1:9000",
                            "ORGSYNC_WORKERS=2",
                            "ORGSYNC_ADMIN_TOKEN=old-token-0123456789",
                            NULL};
    const char *after[] = {"ORGSYNC_LOG_LEVEL=debug",
                           "ORGSYNC_LOG_FORMAT=text",
                           "ORGSYNC_CRON=*/5 * * * * *",
                           "ORGSYNC_TZ=Asia/Shanghai",
                           "ORGSYNC_ALERT_WEBHOOK=https://hooks.example/x?key=s3cret",
                           "ORGSYNC_HTTP_ADDR=127.0.0.1:9001",
                           "ORGSYNC_WORKERS=3",
                           "ORGSYNC_ADMIN_TOKEN=new-token-0123456789",
                           NULL};
    settings *cur = load(before), *fresh = load(after);
    settings_changes ch;
    (void)state;
    settings_reload_apply(cur, fresh, &ch);
    assert_string_equal(ch.reloaded, "ORGSYNC_CRON,ORGSYNC_TZ,ORGSYNC_ALERT_WEBHOOK,"
                                     "ORGSYNC_LOG_LEVEL,ORGSYNC_LOG_FORMAT");
    assert_string_equal(ch.needs_restart, "ORGSYNC_WORKERS,ORGSYNC_HTTP_ADDR,ORGSYNC_ADMIN_TOKEN");
    /* Reloadable values taken; the rest kept as they were. */
    assert_string_equal(cur->cron, "*/5 * * * * *");
    assert_string_equal(cur->tz, "Asia/Shanghai");
    assert_string_equal(cur->alert_webhook, "https://hooks.example/x?key=s3cret");
    assert_int_equal(cur->log_json, 0);
    assert_string_equal(cur->http_addr, "127.0.0.1:9000");
    assert_int_equal(cur->workers, 2);
    assert_string_equal(cur->admin_token, "old-token-0123456789");
    /* Names only, never values (the token, the webhook's key). */
    assert_null(strstr(ch.needs_restart, "token-"));
    assert_null(strstr(ch.reloaded, "s3cret"));
    /* Applying the same again changes nothing more. */
    settings_reload_apply(cur, fresh, &ch);
    assert_string_equal(ch.reloaded, "");
    assert_string_equal(ch.needs_restart, "ORGSYNC_WORKERS,ORGSYNC_HTTP_ADDR,ORGSYNC_ADMIN_TOKEN");
    free(cur);
    free(fresh);
}

static void test_webhook_removed(void **state)
{
    const char *before[] = {"ORGSYNC_ALERT_WEBHOOK=http://127.0.0.1:1/h", NULL};
    const char *after[] = {NULL};
    settings *cur = load(before), *fresh = load(after);
    settings_changes ch;
    (void)state;
    settings_reload_apply(cur, fresh, &ch);
    assert_string_equal(ch.reloaded, "ORGSYNC_ALERT_WEBHOOK");
    assert_string_equal(cur->alert_webhook, "");
    free(cur);
    free(fresh);
}

/* The same scheduler workers written another way ("2,1" for "1,2") is no change. */
static void test_same_workers_other_text(void **state)
{
    const char *env[] = {NULL};
    settings *cur = load(env), *fresh = load(env);
    settings_changes ch;
    (void)state;
    fresh->scheduler_workers_text[0] = 'x'; /* a change outside the named fields */
    settings_reload_apply(cur, fresh, &ch);
    assert_string_equal(ch.needs_restart, "");
    fresh->scheduler_workers[2] = 1;
    settings_reload_apply(cur, fresh, &ch);
    assert_string_equal(ch.needs_restart, "ORGSYNC_SCHEDULER_WORKERS");
    free(cur);
    free(fresh);
}

static void test_reloadable_names(void **state)
{
    (void)state;
    assert_true(settings_reloadable("ORGSYNC_LOG_LEVEL"));
    assert_true(settings_reloadable("ORGSYNC_CRON"));
    assert_true(settings_reloadable("ORGSYNC_ALERT_WEBHOOK"));
    assert_false(settings_reloadable("ORGSYNC_HTTP_ADDR"));
    assert_false(settings_reloadable("ORGSYNC_PG_DSN"));
    assert_false(settings_reloadable("ORGSYNC_NOPE"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nothing_changed),
        cmocka_unit_test(test_reloadable_taken_others_kept),
        cmocka_unit_test(test_webhook_removed),
        cmocka_unit_test(test_same_workers_other_text),
        cmocka_unit_test(test_reloadable_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
