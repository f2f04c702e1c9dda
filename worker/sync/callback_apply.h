/* worker/sync/: the "callback-apply" job: applies the WeCom change callbacks
 * that every worker stored in callback_inbox (worker/api/api_callbacks.c).
 *
 * A second job of the coordinator with its own lock (lock:callback-apply) and
 * fence row, so it may run on another host than the nightly directory sync,
 * under the same gate (ORGSYNC_SCHEDULE, worker ids, read-only, version). Its
 * run is continuous: while CALLBACK_APPLY_WANTED_SQL holds (within 5 s of an
 * enterprise getting callback keys) the scheduler starts it whenever the lock
 * is free
 * (schedule_opts.continuous) and it never ends on its own; a leader that stops
 * or dies leaves the run resumable and the next holder goes on with it.
 *
 * Every APPLY_POLL_MS (at once after a full batch) it reads up to APPLY_BATCH
 * pending events and coalesces them by what they name: one fetch per member
 * (user/get) or department (department/list of it, then its user/list), however
 * many events named it, so a burst costs one upstream call per member. The
 * fetches go through the job's own WeCom client: per-enterprise pacing shared
 * in Redis with every other process (the nightly sync included), the
 * per-process in-flight cap and the per-egress caps, and no call once the lease
 * is not trusted. Each result is written by ONE fenced statement (FENCE_CTE)
 * that upserts the rows, or marks them deleted, and marks the events applied
 * (applied_at, outcome): a member is marked deleted only when user/get answered
 * 60111/46004 (not found) and a department only on 60003. A fetch that fails
 * leaves its events pending (attempts counted, retried after a pause); after
 * APPLY_MAX_ATTEMPTS they are marked applied with outcome "failed: ..." and the
 * next scheduled full run reconciles them. update_tag is marked "ignored" (tags
 * are not mirrored). Events of an unknown or disabled enterprise are "ignored".
 *
 * Metrics (this process, while it leads): orgsync_callback_inbox_depth,
 * orgsync_callback_lag_seconds (age of the oldest pending event),
 * orgsync_callback_apply_seconds (histogram, stored -> row written) and
 * orgsync_callback_events_applied_total{outcome}. An alert "callback_lag" is
 * raised when the oldest pending event is older than ORGSYNC_CALLBACK_LAG_ALERT_S
 * (settings; APPLY_LAG_ALERT_S when 0) seconds (once,
 * then again only after the lag came back under it). */
#ifndef ORGSYNC_CALLBACK_APPLY_H
#define ORGSYNC_CALLBACK_APPLY_H

#include "coordinator/job.h"

#define CALLBACK_APPLY_JOB "callback-apply"
#define APPLY_POLL_MS 200
#define APPLY_BATCH 500
#define APPLY_MAX_ATTEMPTS 5
#define APPLY_LAG_ALERT_S 60

extern const job_ops callback_apply_ops;

/* The job is wanted (schedule_opts.wanted_sql) while an enabled enterprise has
 * callback keys, or events wait: a deployment without callbacks never runs it. */
#define CALLBACK_APPLY_WANTED_SQL                                                                  \
    "SELECT EXISTS (SELECT 1 FROM enterprises WHERE enabled AND callback_token IS NOT NULL) OR "   \
    "EXISTS (SELECT 1 FROM callback_inbox WHERE applied_at IS NULL)"

#endif
