/* common/metrics: counters, gauges, histograms, the text format and the bound on
 * series. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/metrics.h"

static int setup(void **state)
{
    (void)state;
    metrics_reset();
    metrics_init();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    metrics_reset();
    return 0;
}

static char *render(void)
{
    size_t len = 0;
    char *s = metrics_render(&len);
    assert_non_null(s);
    assert_int_equal(strlen(s), len);
    return s;
}

static void test_counter_and_gauge(void **state)
{
    (void)state;
    metrics_counter_add(M_UPSTREAM_REQUESTS, "api=\"user/list\",errcode=\"0\"", 2);
    metrics_counter_add(M_UPSTREAM_REQUESTS, "api=\"user/list\",errcode=\"0\"", 3);
    metrics_counter_add(M_UPSTREAM_REQUESTS, "api=\"user/list\",errcode=\"0\"", -7); /* ignored */
    metrics_gauge_set(M_LOCK_HELD, "job=\"directory-sync\"", 1);
    metrics_gauge_add(M_LOCK_HELD, "job=\"directory-sync\"", -1);
    assert_true(metrics_value(M_UPSTREAM_REQUESTS, "api=\"user/list\",errcode=\"0\"") == 5);
    assert_true(metrics_value(M_LOCK_HELD, "job=\"directory-sync\"") == 0);

    char *s = render();
    assert_non_null(strstr(s, "# TYPE orgsync_upstream_requests_total counter\n"));
    assert_non_null(
        strstr(s, "orgsync_upstream_requests_total{api=\"user/list\",errcode=\"0\"} 5\n"));
    assert_non_null(strstr(s, "# TYPE orgsync_lock_held gauge\n"));
    assert_non_null(strstr(s, "orgsync_lock_held{job=\"directory-sync\"} 0\n"));
    /* one TYPE line per metric even with several series */
    metrics_counter_add(M_UPSTREAM_REQUESTS, "api=\"gettoken\",errcode=\"0\"", 1);
    free(s);
    s = render();
    char *first = strstr(s, "# TYPE orgsync_upstream_requests_total");
    assert_non_null(first);
    assert_null(strstr(first + 1, "# TYPE orgsync_upstream_requests_total"));
    free(s);
}

static void test_histogram(void **state)
{
    (void)state;
    metrics_observe(M_HTTP_DURATION, "route=\"/healthz\"", 0.0005);
    metrics_observe(M_HTTP_DURATION, "route=\"/healthz\"", 0.02);
    metrics_observe(M_HTTP_DURATION, "route=\"/healthz\"", 5000);
    metrics_observe(M_RUN_DURATION, NULL, 2);
    char *s = render();
    assert_non_null(strstr(
        s, "orgsync_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.001\"} 1\n"));
    assert_non_null(strstr(
        s, "orgsync_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.025\"} 2\n"));
    assert_non_null(strstr(
        s, "orgsync_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"3600\"} 2\n"));
    assert_non_null(strstr(
        s, "orgsync_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"+Inf\"} 3\n"));
    assert_non_null(
        strstr(s, "orgsync_http_request_duration_seconds_count{route=\"/healthz\"} 3\n"));
    assert_non_null(strstr(s, "orgsync_run_duration_seconds_bucket{le=\"2.5\"} 1\n"));
    assert_non_null(strstr(s, "orgsync_run_duration_seconds_sum 2\n"));
    assert_non_null(strstr(s, "orgsync_run_duration_seconds_count 1\n"));
    free(s);
}

static void test_bounded(void **state)
{
    (void)state;
    char labels[64];
    for (int i = 0; i < METRICS_MAX_SERIES + 100; i++) {
        snprintf(labels, sizeof labels, "k=\"%d\"", i);
        metrics_counter_add("orgsync_test_total", labels, 1);
    }
    /* a bad name and over-long labels are refused, not stored */
    metrics_counter_add("bad name", NULL, 1);
    char *s = render();
    assert_non_null(strstr(s, "orgsync_metrics_dropped_series_total 101\n"));
    assert_null(strstr(s, "bad name"));
    free(s);
}

static void test_describe(void **state)
{
    (void)state;
    assert_int_equal(metrics_describe("orgsync_x", METRIC_GAUGE, "line\\one\nline two"), 0);
    assert_true(metrics_describe("9bad", METRIC_GAUGE, "x") < 0);
    metrics_gauge_set("orgsync_x", NULL, 1.5);
    metrics_gauge_set("orgsync_undescribed", NULL, 3);
    char *s = render();
    assert_non_null(strstr(s, "# HELP orgsync_x line\\\\one\\nline two\n# TYPE orgsync_x gauge\n"
                              "orgsync_x 1.5\n"));
    assert_non_null(strstr(s, "# TYPE orgsync_undescribed gauge\norgsync_undescribed 3\n"));
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_counter_and_gauge, setup, teardown),
        cmocka_unit_test_setup_teardown(test_histogram, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_describe, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
