/* Process metrics of the calling process from /proc (Linux), under the names
 * Prometheus client libraries use: process_cpu_seconds_total,
 * process_resident_memory_bytes, process_start_time_seconds, process_open_fds,
 * process_max_fds. metrics_host adds the worker label.
 *
 * Reading /proc/self is served from kernel memory (no disk), so it is done on
 * the loop thread; a file that cannot be read leaves its series as they were. */
#ifndef ORGSYNC_PROC_METRICS_H
#define ORGSYNC_PROC_METRICS_H

/* Refreshes the process_* series of the registry. */
void proc_metrics_update(void);

#endif
