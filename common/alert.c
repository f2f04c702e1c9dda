/* Operator alerts: a log line always, and a webhook POST when configured (see
 * alert.h). One module-wide sender per process: alerts come from everywhere
 * (leader, WeCom client) and must never wait on each other or on the webhook.
 *
 * At most one POST is in flight; the rest wait in a bounded ring. A try that
 * fails (transport error, timeout, non-2xx) is retried after a full-jitter
 * backoff, ALERT_ATTEMPTS tries in all; then the alert is given up and counted.
 * Every try is bounded by the post timeout, so the queue always moves. */
#include "common/alert.h"

#include "common/backoff.h"
#include "common/buf.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/timeutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_POST_TIMEOUT_MS 5000
#define DEFAULT_BACKOFF_BASE_MS 500
#define BACKOFF_CAP_MS 8000

typedef struct alert_item {
    char kind[32];
    char *body;
    size_t len;
} alert_item;

typedef struct alert_state {
    int inited;
    uv_loop_t *loop;
    http_client *http;
    char *url, *env, *instance;
    int queue_max, post_timeout_ms, backoff_base_ms;

    alert_item *ring[ALERT_QUEUE_MAX];
    int head, count;
    alert_item *inflight; /* being posted, or waiting for its retry */
    int posting;          /* an HTTP request is out for inflight */
    unsigned attempt;
    uint64_t rng;

    uv_timer_t retry_timer, flush_timer;
    int closing, handles_open;
    void (*done)(void *arg);
    void *done_arg;

    alert_stats st;
} alert_state;

static alert_state A;

static void pump(void);
static void send_inflight(void);

static void item_free(alert_item *it)
{
    if (!it)
        return;
    free(it->body);
    free(it);
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

int alert_init(uv_loop_t *loop, http_client *http, const char *webhook_url, const char *env,
               const char *instance)
{
    if (A.inited || !loop)
        return -EINVAL;
    if (webhook_url && !*webhook_url)
        webhook_url = NULL;
    if (webhook_url && !http)
        return -EINVAL;
    memset(&A, 0, sizeof(A));
    A.loop = loop;
    A.http = http;
    A.url = dup_or_null(webhook_url);
    A.env = strdup(env ? env : "");
    A.instance = strdup(instance ? instance : "");
    if ((webhook_url && !A.url) || !A.env || !A.instance) {
        free(A.url);
        free(A.env);
        free(A.instance);
        memset(&A, 0, sizeof(A));
        return -ENOMEM;
    }
    A.queue_max = ALERT_QUEUE_MAX;
    A.post_timeout_ms = DEFAULT_POST_TIMEOUT_MS;
    A.backoff_base_ms = DEFAULT_BACKOFF_BASE_MS;
    A.rng = backoff_seed();
    uv_timer_init(loop, &A.retry_timer);
    uv_timer_init(loop, &A.flush_timer);
    A.handles_open = 2;
    A.inited = 1;
    return 0;
}

int alert_set_webhook(const char *webhook_url)
{
    char *url = NULL;

    if (!A.inited || A.closing)
        return -EINVAL;
    if (webhook_url && *webhook_url) {
        if (!A.http)
            return -EINVAL;
        if (!(url = strdup(webhook_url)))
            return -ENOMEM;
    }
    /* A request in flight has its own copy of the old URL (curl copies it). */
    free(A.url);
    A.url = url;
    if (!A.url && !A.posting) {
        /* Drops what is queued and a retry in waiting (send_inflight without a URL). */
        uv_timer_stop(&A.retry_timer);
        if (A.inflight)
            send_inflight();
        else
            pump();
    }
    return 0;
}

void alert_set_limits(int queue_max, int post_timeout_ms, int backoff_base_ms)
{
    if (queue_max > 0)
        A.queue_max = queue_max < ALERT_QUEUE_MAX ? queue_max : ALERT_QUEUE_MAX;
    if (post_timeout_ms > 0)
        A.post_timeout_ms = post_timeout_ms;
    if (backoff_base_ms > 0)
        A.backoff_base_ms = backoff_base_ms;
}

static char *build_body(const char *kind, const char *message, const char *corp_id,
                        long long run_id, size_t *len)
{
    uint64_t ms = time_wall_ms();
    char ts[32];
    buf b;
    jw w;

    time_rfc3339((time_t)(ms / 1000), (int)(ms % 1000), ts);
    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kstr(&w, "kind", kind);
    jw_kstr(&w, "message", message);
    jw_kstr(&w, "env", A.env);
    jw_kstr(&w, "instance", A.instance);
    jw_kstr(&w, "corp_id", corp_id); /* NULL writes null */
    if (run_id)
        jw_kint(&w, "run_id", run_id);
    else
        jw_knull(&w, "run_id");
    jw_kstr(&w, "ts", ts);
    jw_obj_end(&w);
    if (b.oom) {
        buf_free(&b);
        return NULL;
    }
    return buf_detach(&b, len);
}

void alert_raise(const char *kind, const char *message, const char *corp_id, long long run_id)
{
    alert_item *it;
    int error_level;

    if (!kind)
        kind = "unknown";
    if (!message)
        message = "";
    /* kinds are short [a-z_] names chosen by the code: a bounded label */
    char label[64];
    snprintf(label, sizeof label, "kind=\"%.40s\"", kind);
    error_level = !strcmp(kind, ALERT_RUN_FAILED) || !strcmp(kind, ALERT_LOCK_LOST);
    if (error_level)
        log_error("alert", LF_S("kind", kind), LF_S("message", message), LF_S("corp_id", corp_id),
                  LF_I("run_id", run_id));
    else
        log_warn("alert", LF_S("kind", kind), LF_S("message", message), LF_S("corp_id", corp_id),
                 LF_I("run_id", run_id));
    metrics_counter_add(M_ALERTS, label, 1);
    if (!A.inited)
        return;
    A.st.raised++;
    if (!A.url || A.closing)
        return;
    it = calloc(1, sizeof(*it));
    if (!it || !(it->body = build_body(kind, message, corp_id, run_id, &it->len))) {
        free(it);
        A.st.dropped++;
        log_warn("alert dropped: out of memory", LF_S("kind", kind));
        return;
    }
    snprintf(it->kind, sizeof(it->kind), "%s", kind);
    if (A.count == A.queue_max) {
        /* Full: the oldest goes. A flood of one kind must not hide the newest. */
        alert_item *old = A.ring[A.head];
        A.head = (A.head + 1) % ALERT_QUEUE_MAX;
        A.count--;
        A.st.dropped++;
        log_warn("alert queue full, oldest dropped", LF_S("kind", old->kind));
        item_free(old);
    }
    A.ring[(A.head + A.count) % ALERT_QUEUE_MAX] = it;
    A.count++;
    pump();
}

/* ---- delivery --------------------------------------------------------- */

static void send_inflight(void);

static void finish_close_if_idle(void);

static void on_retry(uv_timer_t *t)
{
    (void)t;
    if (A.inflight)
        send_inflight();
}

static void on_post(void *arg, const http_response *res)
{
    alert_item *it = arg;
    uint32_t delay;

    A.posting = 0;
    if (!res->error && res->status >= 200 && res->status < 300) {
        A.st.sent++;
        item_free(it);
        A.inflight = NULL;
        pump();
        return;
    }
    A.attempt++;
    if (A.attempt >= ALERT_ATTEMPTS ||
        (A.closing && !uv_is_active((uv_handle_t *)&A.flush_timer))) {
        A.st.failed++;
        log_warn("alert webhook failed, alert given up", LF_S("kind", it->kind),
                 LF_I("status", res->status), LF_S("error", res->error ? res->error : ""),
                 LF_I("attempts", A.attempt));
        item_free(it);
        A.inflight = NULL;
        pump();
        return;
    }
    A.st.retries++;
    delay = backoff_full_jitter_ms(A.attempt, (uint32_t)A.backoff_base_ms, BACKOFF_CAP_MS, &A.rng);
    uv_timer_start(&A.retry_timer, on_retry, delay, 0);
}

static void send_inflight(void)
{
    int rc;

    if (!A.url) {
        /* The webhook was removed by a reload: nowhere to send it. */
        A.st.dropped++;
        item_free(A.inflight);
        A.inflight = NULL;
        pump();
        return;
    }

    rc = http_client_post(A.http, A.url, "application/json", A.inflight->body, A.inflight->len,
                          A.post_timeout_ms, on_post, A.inflight);
    if (rc) {
        /* Not even queued in curl: count it as failed, never spin on it. */
        A.st.failed++;
        log_warn("alert webhook request not sent", LF_S("kind", A.inflight->kind),
                 LF_I("error", rc));
        item_free(A.inflight);
        A.inflight = NULL;
        pump();
        return;
    }
    A.posting = 1;
}

static void pump(void)
{
    while (!A.inflight && A.count > 0) {
        A.inflight = A.ring[A.head];
        A.ring[A.head] = NULL;
        A.head = (A.head + 1) % ALERT_QUEUE_MAX;
        A.count--;
        A.attempt = 0;
        send_inflight();
        /* send_inflight may have given up at once (and pumped again): loop. */
    }
    if (A.closing)
        finish_close_if_idle();
}

/* ---- closing ---------------------------------------------------------- */

static void drop_queued(void)
{
    while (A.count > 0) {
        item_free(A.ring[A.head]);
        A.ring[A.head] = NULL;
        A.head = (A.head + 1) % ALERT_QUEUE_MAX;
        A.count--;
        A.st.dropped++;
    }
    if (A.inflight && !A.posting) {
        /* Waiting for a retry: give it up now. */
        uv_timer_stop(&A.retry_timer);
        item_free(A.inflight);
        A.inflight = NULL;
        A.st.dropped++;
    }
}

static void on_closed(uv_handle_t *h)
{
    void (*done)(void *);
    void *arg;

    (void)h;
    if (--A.handles_open > 0)
        return;
    done = A.done;
    arg = A.done_arg;
    free(A.url);
    free(A.env);
    free(A.instance);
    memset(&A, 0, sizeof(A));
    if (done)
        done(arg);
}

static void finish_close_if_idle(void)
{
    if (A.inflight || A.count > 0 || A.handles_open < 2 ||
        uv_is_closing((uv_handle_t *)&A.retry_timer))
        return;
    uv_timer_stop(&A.flush_timer);
    uv_close((uv_handle_t *)&A.retry_timer, on_closed);
    uv_close((uv_handle_t *)&A.flush_timer, on_closed);
}

static void on_flush_deadline(uv_timer_t *t)
{
    (void)t;
    if (A.count || A.inflight)
        log_warn("alerts left undelivered at close",
                 LF_I("queued", A.count + (A.inflight ? 1 : 0)));
    drop_queued();
    finish_close_if_idle();
}

void alert_close(int flush_ms, void (*done)(void *arg), void *arg)
{
    if (!A.inited || A.closing) {
        if (!A.inited && done)
            done(arg);
        return;
    }
    A.closing = 1;
    A.done = done;
    A.done_arg = arg;
    if (flush_ms > 0 && (A.count || A.inflight)) {
        uv_timer_start(&A.flush_timer, on_flush_deadline, (uint64_t)flush_ms, 0);
        return;
    }
    drop_queued();
    finish_close_if_idle();
}

void alert_stats_get(alert_stats *out)
{
    *out = A.st;
    out->queued = (unsigned long)A.count + (A.inflight ? 1 : 0);
}
