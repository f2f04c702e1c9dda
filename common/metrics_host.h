/* One /metrics per host: the workers of `orgsync serve` publish their registries
 * (common/metrics.h) into a shared memory segment that the supervisor maps
 * before it forks, and whichever worker answers GET /metrics renders the
 * aggregate of every slot. A scrape therefore sees the same host whichever
 * worker SO_REUSEPORT hands it to.
 *
 *   supervisor, before the first fork:  metrics_host_init(workers);
 *   supervisor, when it reaps worker i: metrics_host_exited(i);
 *   worker i, before anything counts:   metrics_host_attach(i);
 *   worker, every second and at exit:   metrics_host_publish();
 *   worker answering /metrics:          metrics_host_render(extra, n, &len);
 *
 * Aggregation (docs/API.md "GET /metrics"):
 *   - counters and histograms are summed over every slot, live or dead. A dead
 *     worker's last published values stay in its slot, and its successor
 *     starts from them (metrics_host_attach restores them), so a sum never goes
 *     back across a worker restart. At most the last second of a crashed
 *     worker's counts is lost (a graceful exit publishes last);
 *   - gauges come from live workers only: orgsync_lock_held and the egress
 *     gauges take the maximum, the others (connections, in-flight calls) the sum;
 *   - process_* and orgsync_worker_info stay per worker, with a worker="<id>"
 *     label added (process_cpu_seconds_total, a counter, also for a dead
 *     worker, so that it never goes back either);
 *   - orgsync_workers_up is the number of live workers;
 *   - extra samples (environment-wide figures read at scrape time, build info)
 *     are rendered as given.
 *
 * Concurrency: each slot has one writer (its worker, on its loop thread) and is
 * double-buffered under a generation counter (a seqlock): a reader copies the
 * buffer of the last complete publication and retries if a newer one began
 * meanwhile, so a worker killed mid-publication leaves its previous one intact.
 * Nothing here blocks: publishing and rendering are memory copies and a sort.
 *
 * Without metrics_host_init (tests, one-shot commands) the aggregate is this
 * process's registry alone, rendered by the same rules. */
#ifndef ORGSYNC_METRICS_HOST_H
#define ORGSYNC_METRICS_HOST_H

#include <stddef.h>

#include "common/metrics.h"

/* Series per worker slot; a registry larger than this publishes its first ones
 * (METRICS_MAX_SERIES bounds the registry to the same number). */
#define METRICS_HOST_MAX_SERIES METRICS_MAX_SERIES

/* Maps the shared segment for workers 1..workers. 0, -EINVAL or -errno. */
int metrics_host_init(int workers);
/* The supervisor saw worker_id exit: its gauges leave the aggregate. */
void metrics_host_exited(int worker_id);
/* In worker worker_id: restores the counters and histograms its predecessor
 * published, marks the slot live with this pid and publishes. Without a
 * segment it only records the id (the worker label of process metrics). */
void metrics_host_attach(int worker_id);
/* Publishes this process's registry into its slot (no-op without a segment). */
void metrics_host_publish(void);
/* Publishes, then renders the host aggregate plus extra (may be NULL when
 * n_extra is 0). Caller frees; NULL on out of memory. */
char *metrics_host_render(const metrics_sample *extra, size_t n_extra, size_t *len);

/* Unmaps the segment (tests; the supervisor at exit). */
void metrics_host_shutdown(void);

#endif
