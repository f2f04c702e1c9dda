/* Run rows (SPEC §3 sync_runs): create, claim, heartbeat, finish, find
 * resumable. All async on the pg pool; nothing blocks.
 *
 * Lifecycle of a row:
 *   pending --claim--> running --finish--> succeeded | partial | failed
 *                        |  ^
 *              abandon   v  | claim (attempt+1, same run_id)
 *                      abandoned
 * A 'running' row whose leader is gone is marked 'abandoned' by the next leader
 * (logged, so history shows it) before that leader claims it. The partial unique
 * index sync_runs_one_active allows one unfinished (pending, running, abandoned)
 * run per env+job, so there is at most one run to claim.
 *
 * Leader writes (fence claim, abandon, claim, heartbeat, finish) are each one
 * statement beginning with FENCE_CTE (coordinator/fence.h); their callbacks get
 * `held`: 1 if the caller's token still held the fence (the write applied), 0 if
 * a successor holds it (nothing was written: step down, call fenced_out()).
 * Creating a pending run is not a leader write (the API and the scheduler do it
 * without the lock) and is not fenced.
 *
 * Manual requests: runs_request_now() inserts a pending run and sends
 * `NOTIFY <channel>, '<run_id>'` on the channel runs_channel() names:
 * "orgsync_runs_<env>" (env cut to its first 50 characters, so the name stays
 * within PostgreSQL's 63-byte identifiers). The scheduler LISTENs on it. */
#ifndef ORGSYNC_RUNS_H
#define ORGSYNC_RUNS_H

#include "common/pg.h"

#include <stddef.h>

/* The identity every fenced write carries. Strings must outlive the call. */
typedef struct runs_leader {
    const char *env;
    const char *job;
    long long token;          /* fencing token from the lock */
    const char *instance;     /* ORGSYNC_INSTANCE: sync_runs.leader_instance */
    const char *code_version; /* sync_runs.code_version; may be NULL */
} runs_leader;

/* A run to create. scheduled_for_ms: wall-clock ms since the epoch (the cron fire
 * time for "schedule"); 0 means now() on the server, which is what manual and cli
 * requests use. corp_ids NULL (or ncorp_ids 0): every enabled enterprise. */
typedef struct runs_new {
    const char *env;
    const char *job;
    const char *trigger; /* "schedule" | "manual" | "cli" */
    long long scheduled_for_ms;
    const char *const *corp_ids;
    int ncorp_ids;
} runs_new;

/* What runs_create found or made. state is the row's state ("pending" when just
 * created). created 0 means a duplicate: the row with the same scheduled_for
 * (which may be finished: that fire already ran), else the one unfinished run. */
typedef struct runs_created {
    long long run_id;
    int created;
    const char *state;
} runs_created;
/* r is NULL when err is set; valid only during the callback. */
typedef void (*runs_create_cb)(void *arg, const runs_created *r, const char *err);

/* Inserts a pending run honouring UNIQUE(env, job, scheduled_for) and the
 * one-unfinished-run index: a duplicate answers the existing run, not an error.
 * 0 (cb called once) or a negative error (PG_E*) and cb is not called. */
int runs_create(pg_pool *pg, const runs_new *rq, runs_create_cb cb, void *arg);

/* runs_create, then NOTIFY runs_channel(env) with the run id as payload (also for a
 * duplicate, so a leader that missed the first notification still wakes). For
 * POST /v1/runs: created 1 -> 202, created 0 with an unfinished state -> 200. */
int runs_request_now(pg_pool *pg, const runs_new *rq, runs_create_cb cb, void *arg);

/* "orgsync_runs_<env>" cut to 63 bytes; 0, or -1 when out is too small. */
int runs_channel(const char *env, char *out, size_t outlen);

/* Records a newly acquired token in leader_fence (FENCE_CLAIM_SQL): only ever
 * raises it. held 1: this token now holds the fence; 0: a newer token is already
 * there (give up: a successor exists). */
typedef void (*runs_write_cb)(void *arg, int held, const char *err);
int runs_fence_claim(pg_pool *pg, const runs_leader *ld, runs_write_cb cb, void *arg);

/* The run a leader works on, after runs_claim. Strings valid during the callback. */
typedef struct runs_claimed {
    long long run_id;
    int attempt;            /* 1 for a fresh run, higher when resumed */
    const char *prev_state; /* "pending" or "abandoned" (a 'running' row was
                               abandoned first, by this same claim) */
    const char *trigger;
    long long scheduled_for_ms;
    const char *const *corp_ids; /* NULL: every enabled enterprise */
    int ncorp_ids;
} runs_claimed;
/* held 0: fenced out (nothing changed). held 1 and r NULL: nothing to claim.
 * err set: the statement failed (r NULL, held meaningless). */
typedef void (*runs_claim_cb)(void *arg, int held, const runs_claimed *r, const char *err);

/* Claims the unfinished run (run_id 0: whichever there is; else that one only, if
 * unfinished): first, fenced, any 'running' row of an older token becomes
 * 'abandoned' (logged with its old leader), then the row becomes 'running' with
 * attempt+1, leader_instance, fencing_token, code_version, heartbeat_at = now()
 * (started_at kept if set). The run keeps its run_id. */
int runs_claim(pg_pool *pg, const runs_leader *ld, long long run_id, runs_claim_cb cb, void *arg);

/* heartbeat_at = now() on our running row. held 0: fenced out. */
int runs_heartbeat(pg_pool *pg, const runs_leader *ld, long long run_id, runs_write_cb cb,
                   void *arg);

/* Ends our running row: state "succeeded" | "partial" | "failed", finished_at =
 * now(), error (may be NULL). held 0: fenced out, the row was left alone. */
int runs_finish(pg_pool *pg, const runs_leader *ld, long long run_id, const char *state,
                const char *error, runs_write_cb cb, void *arg);

/* Leaves our running row resumable: state 'abandoned', error = reason. For a
 * leader that stops early (shutdown, lease lost while it could still write). */
int runs_abandon(pg_pool *pg, const runs_leader *ld, long long run_id, const char *reason,
                 runs_write_cb cb, void *arg);

/* Not fenced, read only: the unfinished run of env+job, if any (run_id 0 if none),
 * with its state, leader_instance and seconds since its last heartbeat (-1 if
 * never). Lets a standby see an orphan it should take over. */
typedef struct runs_resumable {
    long long run_id; /* 0: none */
    const char *state;
    const char *leader_instance; /* may be NULL */
    double heartbeat_age_s;
    int attempt;
} runs_resumable;
typedef void (*runs_find_cb)(void *arg, const runs_resumable *r, const char *err);
int runs_find_resumable(pg_pool *pg, const char *env, const char *job, runs_find_cb cb, void *arg);

#endif
