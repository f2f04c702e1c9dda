/* Pure parts of the coordinator's serve side: version ordering and the gate's
 * reasons (gate.c), ranking by least-recently-led (candidacy.c), and the
 * catch-up's latest fire (schedule.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>
#include <time.h>

#include "common/settings.h"
#include "coordinator/candidacy.h"
#include "coordinator/gate.h"
#include "coordinator/schedule.h"

static void test_version_cmp(void **state)
{
    (void)state;
    assert_true(gate_version_cmp("1.2.3", "1.2.3") == 0);
    assert_true(gate_version_cmp("1.2.3", "1.2.4") < 0);
    assert_true(gate_version_cmp("1.10.0", "1.9.9") > 0);
    assert_true(gate_version_cmp("0.1.0", "0.0.1") > 0);
    assert_true(gate_version_cmp("2.0", "2.0.0") < 0);
    assert_true(gate_version_cmp("1.2.3-rc1", "1.2.3") < 0);
    assert_true(gate_version_cmp("1.2.3", "1.2.3-rc1") > 0);
    assert_true(gate_version_cmp("1.2.3-rc1", "1.2.3-rc2") < 0);
    assert_true(gate_version_cmp("10.0.0", "9.99.99") > 0);
}

static settings base_settings(void)
{
    settings s;
    memset(&s, 0, sizeof(s));
    strcpy(s.env, "prod");
    s.schedule = 1;
    s.scheduler_workers[1] = 1;
    s.worker_id = 1;
    s.read_only = READ_ONLY_AUTO;
    strcpy(s.code_version, "0.1.0");
    return s;
}

static void test_gate_reasons(void **state)
{
    settings s = base_settings();
    char why[256];
    gate g;

    (void)state;
    gate_init(&g, &s);
    assert_true(gate_may_schedule(&g));
    /* auto: not eligible until the role has been probed */
    assert_int_equal(gate_read_only(&g), GATE_UNKNOWN);
    assert_false(gate_eligible(&g));
    gate_why_not(&g, why, sizeof(why));
    assert_non_null(strstr(why, "read-only check pending"));
    g.role_can_write = GATE_YES;
    assert_true(gate_eligible(&g));
    assert_int_equal(gate_why_not(&g, why, sizeof(why)), 0);
    assert_string_equal(why, "");
    g.role_can_write = GATE_NO;
    assert_false(gate_eligible(&g));
    gate_why_not(&g, why, sizeof(why));
    assert_non_null(strstr(why, "database role cannot write"));

    s.schedule = 0;
    s.worker_id = 3;
    s.read_only = READ_ONLY_ON;
    gate_init(&g, &s);
    g.version_older = GATE_YES;
    strcpy(g.newest_version, "0.2.0");
    assert_false(gate_may_schedule(&g));
    gate_why_not(&g, why, sizeof(why));
    assert_non_null(strstr(why, "schedule off"));
    assert_non_null(strstr(why, "worker id 3 not in ORGSYNC_SCHEDULER_WORKERS"));
    assert_non_null(strstr(why, "ORGSYNC_READ_ONLY=on"));
    assert_non_null(strstr(why, "0.1.0 is older than 0.2.0"));
    assert_non_null(strstr(why, "environment prod"));
    /* truncation stays terminated */
    gate_why_not(&g, why, 10);
    assert_int_equal(strlen(why), 9);
}

static candidacy_entry ent(const char *inst, const char *ver, long long led)
{
    candidacy_entry e;
    memset(&e, 0, sizeof(e));
    strcpy(e.instance, inst);
    strcpy(e.version, ver);
    e.led_ms = led;
    return e;
}

static void test_rank_least_recently_led(void **state)
{
    candidacy_entry e[3];
    candidacy_view v;

    (void)state;
    e[0] = ent("a", "1.0.0", 3000);
    e[1] = ent("b", "1.0.0", 1000);
    e[2] = ent("c", "1.0.0", 0); /* never led: first */
    assert_int_equal(candidacy_rank_compute(e, 3, "c", "1.0.0", 200, &v), 0);
    assert_int_equal(v.rank, 0);
    assert_int_equal(v.delay_ms, 0);
    assert_int_equal(candidacy_rank_compute(e, 3, "b", "1.0.0", 200, &v), 0);
    assert_int_equal(v.rank, 1);
    assert_int_equal(v.delay_ms, 200);
    assert_int_equal(candidacy_rank_compute(e, 3, "a", "1.0.0", 200, &v), 0);
    assert_int_equal(v.rank, 2);
    assert_int_equal(v.competitors, 3);
    /* ties by instance name, so every candidate computes the same order */
    e[0].led_ms = e[1].led_ms = 0;
    assert_int_equal(candidacy_rank_compute(e, 3, "a", "1.0.0", 200, &v), 0);
    assert_int_equal(v.rank, 0);
    assert_int_equal(candidacy_rank_compute(e, 3, "b", "1.0.0", 200, &v), 0);
    assert_int_equal(v.rank, 1);
    /* not among the entries */
    assert_int_equal(candidacy_rank_compute(e, 3, "zz", "1.0.0", 200, &v), -1);
    assert_int_equal(v.rank, -1);
}

static void test_rank_version_gate(void **state)
{
    candidacy_entry e[3];
    candidacy_view v;

    (void)state;
    e[0] = ent("old", "0.9.0", 0);
    e[1] = ent("new1", "1.0.0", 5000);
    e[2] = ent("new2", "1.0.0", 4000);
    assert_int_equal(candidacy_rank_compute(e, 3, "old", "0.9.0", 200, &v), 0);
    assert_false(v.version_ok);
    assert_int_equal(v.rank, -1);
    assert_string_equal(v.newest_version, "1.0.0");
    /* the older one does not count ahead of the newer ones */
    assert_int_equal(candidacy_rank_compute(e, 3, "new2", "1.0.0", 200, &v), 0);
    assert_true(v.version_ok);
    assert_int_equal(v.rank, 0);
    assert_int_equal(v.competitors, 2);
    assert_int_equal(v.live, 3);
}

static void test_latest_fire(void **state)
{
    time_t now = 1700000000; /* 2023-11-14T22:13:20Z */
    (void)state;
    /* every minute: the start of the current minute */
    assert_int_equal(schedule_latest_fire("* * * * *", "UTC", now - 3600, now), now - 20);
    /* nothing since the last run */
    assert_int_equal(schedule_latest_fire("* * * * *", "UTC", now - 20, now), 0);
    assert_int_equal(schedule_latest_fire("* * * * *", "UTC", 0, now), 0);
    /* every second after a long outage: the last second, found quickly */
    assert_int_equal(schedule_latest_fire("* * * * * *", "UTC", now - 30 * 86400, now), now);
    /* daily at 02:00 Shanghai (18:00 UTC): yesterday's 18:00 UTC was missed */
    assert_int_equal(schedule_latest_fire("0 0 2 * * *", "Asia/Shanghai", now - 3 * 86400, now),
                     1699984800);
    /* a weekly fire 5 days ago with the last run before it */
    assert_int_equal(schedule_latest_fire("0 0 * * 4", "UTC", now - 20 * 86400, now), 1699488000);
    assert_int_equal(schedule_latest_fire("not a cron", "UTC", now - 100, now), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_version_cmp),
        cmocka_unit_test(test_gate_reasons),
        cmocka_unit_test(test_rank_least_recently_led),
        cmocka_unit_test(test_rank_version_gate),
        cmocka_unit_test(test_latest_fire),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
