/* worker/sync/: the directory-sync job that the coordinator runs (plan, fetch, write).
 *
 * The directory sync job ("directory-sync", SPEC §3 §7, DESIGN §3 "The sync
 * engine"): mirrors every enabled enterprise's departments and members into
 * PostgreSQL, enterprises in parallel on one loop.
 *
 * Per enterprise: department/list -> one fenced statement upserting the
 * departments (and reading this run's checkpoints) -> for each department not
 * checkpointed yet: user/list -> one fenced statement that upserts its members,
 * writes its checkpoint row and adds to the enterprise's progress counters ->
 * after the last one, only if every department succeeded: one fenced statement
 * that marks members and departments not seen in this run deleted and ends the
 * enterprise 'succeeded'; otherwise the enterprise ends 'failed' with the reason
 * in last_error and nobody is deleted.
 *
 * Writes of one enterprise go one statement at a time; answers that arrive
 * while one is running wait, and go together (up to 8 departments) in the next
 * statement, which also carries other enterprises' waiting departments, so a
 * slow PostgreSQL costs fewer statements, not more memory. Memory is bounded
 * by departments in flight: per enterprise one user/list being fetched and at
 * most 8 waiting and 8 being written, and fetching pauses while 16 MiB of
 * answers wait across the job.
 *
 * The run ends "succeeded" (every enterprise succeeded), "partial" (some
 * failed) or "failed" (all failed). A stopped or fenced-out job leaves the run
 * resumable: a later attempt of the same run skips enterprises already ended and
 * departments already checkpointed. */
#ifndef ORGSYNC_DIRECTORY_SYNC_H
#define ORGSYNC_DIRECTORY_SYNC_H

#include "coordinator/job.h"

#include <stdint.h>

#define DIRECTORY_SYNC_JOB "directory-sync"

extern const job_ops directory_sync_ops;

/* Knobs that tests turn down (0 keeps the default: upstream timeout 10000 ms,
 * backoff base 200 ms, first ban pause 1000 ms, 4 member writes in flight).
 * Process-wide; applies to jobs started afterwards. */
typedef struct directory_sync_tuning {
    int timeout_ms;
    uint32_t backoff_base_ms;
    uint32_t ban_pause_ms;
    int writes_max; /* 1 makes every statement take all the enterprises waiting */
} directory_sync_tuning;
void directory_sync_set_tuning(const directory_sync_tuning *t);

#endif
