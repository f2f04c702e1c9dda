/* Operator alerts (SPEC §2 ORGSYNC_ALERT_WEBHOOK).
 *
 *   alert_init(loop, http, settings->alert_webhook[0] ? settings->alert_webhook : NULL,
 *              settings->env, settings->instance);
 *   alert_raise(ALERT_LOCK_LOST, "lease expired", NULL, run_id);
 *   ...
 *   alert_close(2000, on_closed, arg);   // before closing the http client
 *
 * Every alert is a log line at once (error for run_failed and lock_lost, warn for
 * the rest). With a webhook, it is also POSTed as JSON
 *   {"kind","message","env","instance","corp_id","run_id","ts"}
 * (corp_id null when none, run_id null when 0, ts RFC 3339 UTC of when it was
 * raised), one at a time in order, each tried up to 3 times (a non-2xx status or a
 * transport error is a failure) with full-jitter backoff between tries. Nothing
 * here blocks or waits on the webhook: alert_raise only queues. The queue is
 * bounded (ALERT_QUEUE_MAX); when full the OLDEST queued alert is dropped and
 * counted.
 *
 * One alert sender per process (module state), used from the loop thread only.
 * alert_raise before alert_init (or after alert_close) only logs. */
#ifndef ORGSYNC_ALERT_H
#define ORGSYNC_ALERT_H

#include "common/http_client.h"

#include <uv.h>

/* The kinds raised today (others may add theirs: any short [a-z_] string). */
#define ALERT_RUN_FAILED "run_failed"
#define ALERT_LOCK_LOST "lock_lost"
#define ALERT_TOKEN_INVALID "token_invalid"
#define ALERT_BAN "ban"
/* 48009, 60020 or 60011: the credential, egress IP or visible range cannot do a call */
#define ALERT_UPSTREAM_FORBIDDEN "upstream_forbidden"

#define ALERT_QUEUE_MAX 64
#define ALERT_ATTEMPTS 3

/* webhook_url NULL or "": log only. Strings are copied. 0, or -EINVAL (already
 * initialised, or a webhook without an http client) / -ENOMEM. */
int alert_init(uv_loop_t *loop, http_client *http, const char *webhook_url, const char *env,
               const char *instance);

/* Reload (SIGHUP): alerts raised from now on go to webhook_url (NULL or "":
 * log only; what is still queued is then dropped, counted). The alert being
 * retried keeps its place. 0, -EINVAL (not initialised, closing, or a webhook
 * without an http client) or -ENOMEM (the old URL is kept). */
int alert_set_webhook(const char *webhook_url);

/* Tunables, for tests (call after alert_init). 0 keeps the current value.
 * Defaults: queue ALERT_QUEUE_MAX (at most that), post timeout 5000 ms, backoff
 * base 500 ms (cap 8 s). */
void alert_set_limits(int queue_max, int post_timeout_ms, int backoff_base_ms);

/* Logs and queues. message, corp_id (may be NULL) are copied. Never blocks,
 * never fails (out of memory: logged and counted as dropped). */
void alert_raise(const char *kind, const char *message, const char *corp_id, long long run_id);

typedef struct alert_stats {
    unsigned long raised;  /* alert_raise calls */
    unsigned long sent;    /* delivered (2xx) */
    unsigned long failed;  /* given up after ALERT_ATTEMPTS tries */
    unsigned long retries; /* tries beyond the first */
    unsigned long dropped; /* pushed out of a full queue, or left over at close */
    unsigned long queued;  /* waiting now (including the one in flight) */
} alert_stats;
void alert_stats_get(alert_stats *out);

/* Keeps delivering what is queued for at most flush_ms (0: drop at once), then
 * drops the rest (counted), waits for the request in flight to end, closes the
 * timer and calls done(arg) from a loop callback (at once if alert_init was never
 * called). Must be called before the http client is closed. After done,
 * alert_init may be called again. */
void alert_close(int flush_ms, void (*done)(void *arg), void *arg);

#endif
