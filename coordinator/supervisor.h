/* The process supervisor of `orgsync serve` (SPEC §1): forks N worker
 * processes, restarts a crashed one with backoff, passes SIGTERM/SIGINT on and
 * waits, bounded, for a graceful end.
 *
 * It deliberately has no libuv loop: a forked child would inherit the loop's
 * signal pipe, and a signal delivered to the child would then be read by the
 * parent's loop. The parent blocks its signals and waits on a signalfd and the
 * workers' ready pipe with poll(); a child unblocks them, closes the parent's
 * descriptors and runs the worker function with a loop of its own.
 *
 * Rules:
 *   - each worker gets ORGSYNC_WORKER_ID = 1..N in its environment and as the
 *     argument of run(); it reports ready with supervisor_worker_ready() once it
 *     serves (the HTTP listener is up);
 *   - a worker that exits after it was ready is restarted after a backoff that
 *     doubles for every crash in a row (base .. cap, jittered), logged; a worker
 *     that stayed up for stable_ms resets its count;
 *   - a worker that exits with status 2 (configuration error), or exits before
 *     ready start_failures_max times in a row, ends the supervisor: the others are
 *     stopped and supervisor_run returns 2 or 1 ("workers cannot start");
 *   - SIGTERM or SIGINT: every worker gets SIGTERM; after stop_timeout_ms the
 *     ones still running get SIGKILL. Returns 0 when every worker exited 0;
 *   - SIGHUP: reload() runs in the supervisor; the bytes it returns go, as one
 *     message, to every running worker's control socket
 *     (supervisor_control_fd()). Workers ignore SIGHUP itself;
 *   - systemd (Type=notify, common/sd_notify.h): READY=1 once every worker is
 *     ready at the same time, STATUS= (workers ready, which worker leads) when
 *     it changes, RELOADING=1 then READY=1 around a reload, STOPPING=1 at the
 *     stop, WATCHDOG=1 every half $WATCHDOG_USEC from this loop (so a stuck
 *     supervisor is restarted). Without $NOTIFY_SOCKET none of this is sent;
 *   - a worker dies with the supervisor (PR_SET_PDEATHSIG, SIGTERM), so a
 *     killed supervisor leaves no orphans behind;
 *   - a reaped worker is marked gone in the host's metrics segment
 *     (common/metrics_host.h; a no-op when the caller mapped none), so that its
 *     gauges leave the host's /metrics while its counters stay. */
#ifndef ORGSYNC_SUPERVISOR_H
#define ORGSYNC_SUPERVISOR_H

#include <stddef.h>

/* Runs in the child; its return value is the child's exit status. */
typedef int (*supervisor_worker_fn)(void *arg, int worker_id);

typedef struct supervisor_opts {
    int workers; /* 1 .. SETTINGS_MAX_WORKERS */
    supervisor_worker_fn run;
    void *arg;
    int restart_base_ms;    /* 0: 500 */
    int restart_cap_ms;     /* 0: 30000 */
    int stable_ms;          /* 0: 10000 */
    int start_failures_max; /* 0: 3 */
    int stop_timeout_ms;    /* 0: 30000 */
    /* SIGHUP, in the supervisor: 0 with *msg and *len set to what every worker
     * gets (valid until the next call), or -1 to send nothing (the reload
     * failed; the callback logged why). NULL: SIGHUP is logged and ignored. */
    int (*reload)(void *arg, const void **msg, size_t *len);
} supervisor_opts;

/* Blocks until the end (this is the parent's whole life). Returns the exit
 * status for the process: 0 graceful, 1 runtime failure, 2 configuration. */
int supervisor_run(const supervisor_opts *opts);

/* Called by a worker once it serves: tells the supervisor it started. A no-op
 * outside a supervised worker. */
void supervisor_worker_ready(int worker_id);

/* Called by a worker when it starts or stops leading (for STATUS=). */
void supervisor_worker_leading(int worker_id, int leading);

/* In a worker: the SOCK_SEQPACKET socket reload messages arrive on (one
 * recv() = one message), -1 outside a supervised worker. The worker owns
 * reading it; it is not closed for it. */
int supervisor_control_fd(void);

#endif
