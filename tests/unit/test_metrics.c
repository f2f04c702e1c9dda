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

/* Handles: the same series as the name-and-labels calls, and never followed to a
 * series that metrics_reset freed (ASan would report the use after free). */
static void test_handles(void **state)
{
    (void)state;
    const char *lb = "route=\"/v1/runs/latest\",method=\"GET\",status=\"200\"";
    metrics_handle zero = {0}, req, dur, bad;
    assert_false(metrics_handle_live(&zero));
    metrics_handle_add(&zero, 1); /* nothing, and no crash */
    metrics_handle_observe(&zero, 1);

    assert_int_equal(metrics_handle_bind(&req, M_HTTP_REQUESTS, lb, METRIC_COUNTER), 0);
    assert_int_equal(
        metrics_handle_bind(&dur, M_HTTP_DURATION, "route=\"/v1/runs/latest\"", METRIC_HISTOGRAM),
        0);
    assert_true(metrics_handle_live(&req) && metrics_handle_live(&dur));
    metrics_handle_add(&req, 2);
    metrics_handle_add(&req, -1); /* a counter never goes down */
    metrics_counter_add(M_HTTP_REQUESTS, lb, 1);
    metrics_handle_observe(&dur, 0.02);
    metrics_observe(M_HTTP_DURATION, "route=\"/v1/runs/latest\"", 0.0005);
    assert_true(metrics_value(M_HTTP_REQUESTS, lb) == 3);
    assert_true(metrics_value(M_HTTP_DURATION, "route=\"/v1/runs/latest\"") == 2);
    char *s = render();
    assert_non_null(strstr(s, "orgsync_http_request_duration_seconds_bucket{route=\"/v1/runs/"
                              "latest\",le=\"0.001\"} 1\n"));
    assert_non_null(strstr(s, "orgsync_http_request_duration_seconds_bucket{route=\"/v1/runs/"
                              "latest\",le=\"0.025\"} 2\n"));
    free(s);
    /* a histogram handle does not bind to a series of another type */
    assert_int_equal(metrics_handle_bind(&bad, M_HTTP_REQUESTS, lb, METRIC_HISTOGRAM), -1);
    assert_false(metrics_handle_live(&bad));

    /* reset frees the series: the handles are stale and do nothing */
    metrics_reset();
    assert_false(metrics_handle_live(&req));
    assert_false(metrics_handle_live(&dur));
    metrics_handle_add(&req, 5);
    metrics_handle_observe(&dur, 0.02);
    assert_true(metrics_value(M_HTTP_REQUESTS, lb) == 0);
    /* bound again: a new series, from 0 */
    assert_int_equal(metrics_handle_bind(&req, M_HTTP_REQUESTS, lb, METRIC_COUNTER), 0);
    metrics_handle_add(&req, 1);
    assert_true(metrics_value(M_HTTP_REQUESTS, lb) == 1);
}

/* A handle that cannot be bound (the table is full) counts as dropped each time,
 * as metrics_counter_add does. */
static void test_handle_bounded(void **state)
{
    (void)state;
    char labels[64];
    metrics_handle h;
    for (int i = 0; i < METRICS_MAX_SERIES; i++) {
        snprintf(labels, sizeof labels, "k=\"%d\"", i);
        metrics_counter_add("orgsync_test_total", labels, 1);
    }
    assert_int_equal(metrics_handle_bind(&h, "orgsync_test_total", "k=\"new\"", METRIC_COUNTER),
                     -1);
    assert_false(metrics_handle_live(&h));
    assert_int_equal(metrics_handle_bind(&h, "orgsync_test_total", "k=\"new\"", METRIC_COUNTER),
                     -1);
    /* an existing series still binds */
    assert_int_equal(metrics_handle_bind(&h, "orgsync_test_total", "k=\"7\"", METRIC_COUNTER), 0);
    metrics_handle_add(&h, 1);
    assert_true(metrics_value("orgsync_test_total", "k=\"7\"") == 2);
    char *s = render();
    assert_non_null(strstr(s, "orgsync_metrics_dropped_series_total 2\n"));
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_counter_and_gauge, setup, teardown),
        cmocka_unit_test_setup_teardown(test_histogram, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_describe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handles, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handle_bounded, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
