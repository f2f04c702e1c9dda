/* common/metrics_host: the host aggregate over forked workers — counters summed
 * and kept across a worker's restart, gauges of live workers only (max for the
 * lock, sum otherwise), process_* per worker, counter_set on top of a restored
 * base. Workers are real forked processes sharing the segment. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/metrics.h"
#include "common/metrics_host.h"

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
    metrics_host_shutdown();
    metrics_reset();
    return 0;
}

/* The value of the sample line "key value" in text; -1 when absent. */
static double sample(const char *text, const char *key)
{
    size_t k = strlen(key);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (!strncmp(p, key, k) && p[k] == ' ')
            return strtod(p + k + 1, NULL);
    return -1;
}

/* A worker process: attaches as id, counts, sets its gauges, publishes, exits. */
static void run_worker(int id, double requests, double lock, double conns, double pg_errors)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        metrics_reset();
        metrics_init();
        metrics_host_attach(id);
        metrics_counter_add(M_HTTP_REQUESTS, "route=\"/healthz\"", requests);
        metrics_observe(M_HTTP_DURATION, "route=\"/healthz\"", 0.002);
        metrics_gauge_set(M_LOCK_HELD, "orgsync_job=\"j\"", lock);
        metrics_gauge_set("orgsync_http_connections", NULL, conns);
        /* a counter kept elsewhere, copied in (starts at 0 in every process) */
        metrics_counter_set(M_PG_ERRORS, "source=\"pool\"", pg_errors);
        metrics_gauge_set(M_PROC_RSS, NULL, 1000 * id);
        metrics_host_publish();
        _exit(0);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static char *render(void)
{
    size_t len = 0;
    char *s = metrics_host_render(NULL, 0, &len);
    assert_non_null(s);
    assert_int_equal(strlen(s), len);
    return s;
}

static void test_sum_restart_and_gauges(void **state)
{
    (void)state;
    assert_int_equal(metrics_host_init(3), 0);
    /* this process is worker 1: it answers */
    metrics_host_attach(1);
    metrics_counter_add(M_HTTP_REQUESTS, "route=\"/healthz\"", 1);

    /* worker 2 runs and (as far as gauges go) stays live: the test keeps its
     * slot live since no supervisor reaps it */
    run_worker(2, 5, 1, 3, 7);
    char *s = render();
    assert_true(sample(s, "orgsync_http_requests_total{route=\"/healthz\"}") == 6);
    assert_true(sample(s, "orgsync_http_request_duration_seconds_count{route=\"/healthz\"}") == 1);
    assert_true(sample(s, "orgsync_lock_held{orgsync_job=\"j\"}") == 1);
    assert_true(sample(s, "orgsync_http_connections") == 3);
    assert_true(sample(s, "orgsync_pg_errors_total{source=\"pool\"}") == 7);
    assert_true(sample(s, "process_resident_memory_bytes{worker=\"2\"}") == 2000);
    assert_true(sample(s, "orgsync_workers_up") == 2);
    free(s);

    /* worker 2 is reaped: its gauges go, its counts stay */
    metrics_host_exited(2);
    s = render();
    assert_true(sample(s, "orgsync_http_requests_total{route=\"/healthz\"}") == 6);
    assert_true(sample(s, "orgsync_lock_held{orgsync_job=\"j\"}") == -1);
    assert_true(sample(s, "orgsync_http_connections") == -1);
    assert_true(sample(s, "process_resident_memory_bytes{worker=\"2\"}") == -1);
    assert_true(sample(s, "orgsync_workers_up") == 1);
    free(s);

    /* its successor continues from its counts (a set counter on top of them),
     * so nothing goes back */
    run_worker(2, 2, 0, 1, 1);
    s = render();
    assert_true(sample(s, "orgsync_http_requests_total{route=\"/healthz\"}") == 8);
    assert_true(sample(s, "orgsync_http_request_duration_seconds_count{route=\"/healthz\"}") == 2);
    assert_true(sample(s, "orgsync_pg_errors_total{source=\"pool\"}") == 8);
    assert_true(sample(s, "orgsync_lock_held{orgsync_job=\"j\"}") == 0);
    free(s);

    /* the lock is a max over workers, connections a sum */
    metrics_gauge_set(M_LOCK_HELD, "orgsync_job=\"j\"", 1);
    metrics_gauge_set("orgsync_http_connections", NULL, 2);
    s = render();
    assert_true(sample(s, "orgsync_lock_held{orgsync_job=\"j\"}") == 1);
    assert_true(sample(s, "orgsync_http_connections") == 3);
    /* worker 3 never started: no slot of its own shows */
    assert_null(strstr(s, "worker=\"3\""));
    free(s);
}

static void test_extra_and_without_segment(void **state)
{
    (void)state;
    metrics_host_attach(4); /* no segment: just the id */
    metrics_gauge_set(M_PROC_FDS, NULL, 9);
    metrics_counter_add(M_ALERTS, "kind=\"ban\"", 1);
    metrics_sample x = {.type = METRIC_GAUGE, .value = 1};
    snprintf(x.name, sizeof x.name, "%s", M_BUILD_INFO);
    snprintf(x.labels, sizeof x.labels, "version=\"1\"");
    size_t len;
    char *s = metrics_host_render(&x, 1, &len);
    assert_non_null(s);
    assert_true(sample(s, "process_open_fds{worker=\"4\"}") == 9);
    assert_true(sample(s, "orgsync_alerts_total{kind=\"ban\"}") == 1);
    assert_true(sample(s, "orgsync_build_info{version=\"1\"}") == 1);
    assert_true(sample(s, "orgsync_workers_up") == 1);
    assert_non_null(strstr(s, "# TYPE orgsync_build_info gauge\n"));
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sum_restart_and_gauges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_extra_and_without_segment, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
