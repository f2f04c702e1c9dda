/* A leader session: one turn of leadership for one job, from lock to release.
 *
 *   acquire lock (wait, or fail fast) -> claim the fence (FENCE_CLAIM_SQL; no row
 *   means a newer token exists: give up) -> claim the unfinished run, or create
 *   the requested one and claim it -> ops->start(job_run) -> while it runs: renew
 *   the lock (lock.c), heartbeat the run row every heartbeat_ms -> finished():
 *   finish the row, then the next run if any -> release the lock -> on_done.
 *
 * Which runs a session works on, in order (at most 3 per session):
 *   1. the unfinished run of env+job, if there is one (Guarantee 3: a run that lost
 *      its leader is resumed, same run_id, attempt+1);
 *   2. then, if opts->create is set and step 1 did not already run the same
 *      scheduled_for, the requested run: runs_create(); a duplicate of a finished
 *      fire is not run again (result.status LEADER_DONE with that run_id and
 *      result.already_done 1).
 * With create 0 the session only resumes or picks up a pending run (a standby
 * taking over an orphan, or a leader woken by NOTIFY for a manual request); if
 * there is none it releases the lock and reports LEADER_NOTHING.
 *
 * Failure handling:
 *   - the fence claim is refused (a newer token is in leader_fence): once per
 *     session, the Redis fencing counter is raised to the fence row's token (it
 *     only ever goes up: this repairs a Redis that lost its data and restarted
 *     INCR from 1), our lock is given back and acquired again; a second refusal
 *     ends the session with LEADER_FENCED.
 *   - lease lost (lock.c on_lost) or the job/heartbeat found the fence taken
 *     (fenced_out): ops->stop() at once, log + alert "lock_lost", no more writes;
 *     the run stays 'running' under the lost token and the next leader marks it
 *     abandoned and resumes it. The lock is NOT released after "lock taken over"
 *     (it is someone else's) nor after "lease expired" (the key has about a
 *     margin left and Redis may be what is stuck); after "fenced out" a
 *     compare-and-delete is sent, which can only ever delete our own value.
 *   - leader_session_shutdown() (SIGTERM in the caller): ops->stop(), wait up to
 *     stop_timeout_ms for finished(), mark the run 'abandoned' (fenced), release
 *     the lock. A job that does not finish in time is reported (LEADER_SHUTDOWN
 *     with error "job did not stop in time"), the lock is released anyway; the
 *     job's later writes are fenced only once a successor claims, so a job
 *     MUST honour stop().
 *   - a run whose job finished with "failed" or "partial" raises alert
 *     "run_failed" (partial: message says which).
 *
 * Progress: the session does not relay per-enterprise progress; `orgsync sync`
 * draws its display from sync_progress in PostgreSQL (the job writes it, with its
 * fenced writes), using the run_id it gets from the LEADER_EV_RUN_STARTED event.
 *
 * Everything runs on opts->loop; on_event and on_done are called from loop
 * callbacks, never from inside leader_session_start(). */
#ifndef ORGSYNC_LEADER_H
#define ORGSYNC_LEADER_H

#include "common/http_client.h"
#include "common/pg.h"
#include "common/redis.h"
#include "common/settings.h"
#include "coordinator/job.h"

#include <uv.h>

typedef struct leader_session leader_session;

typedef enum {
    LEADER_DONE = 0,     /* every run it worked on ended (see state) */
    LEADER_NOTHING = 1,  /* create 0 and no unfinished run: lock taken and released */
    LEADER_BUSY = 2,     /* wait 0 (or wait_timeout_ms passed) and someone else holds the lock */
    LEADER_FENCED = 3,   /* a newer token holds the fence (at claim or later) */
    LEADER_LOST = 4,     /* the lease expired or the lock was taken over mid-run */
    LEADER_SHUTDOWN = 5, /* leader_session_shutdown() was called */
    LEADER_ERROR = 6,    /* PostgreSQL/Redis failure or job start failure; see error */
} leader_status;

typedef struct leader_result {
    leader_status status;
    long long run_id;        /* the last run worked on (or found), 0 if none */
    int attempt;             /* of that run */
    const char *state;       /* its final state ("succeeded", "partial", "failed"),
                                or NULL if it was left resumable or never ran */
    const char *error;       /* why, for anything but a clean end; may be NULL */
    long long fencing_token; /* 0 if the lock was never acquired */
    int runs_done;           /* runs that reached a final state in this session */
    int already_done;        /* the requested fire had already run */
} leader_result;

typedef enum {
    LEADER_EV_WAITING = 1,  /* lock busy, will retry; holder = its lock value */
    LEADER_EV_ACQUIRED,     /* token set */
    LEADER_EV_RUN_STARTED,  /* run_id, attempt set; job started */
    LEADER_EV_RUN_FINISHED, /* run_id, state set */
    LEADER_EV_LOST,         /* error = why */
} leader_event_kind;

typedef struct leader_event {
    leader_event_kind kind;
    long long token;
    long long run_id;
    int attempt;
    const char *holder; /* WAITING: "<instance>|<token>" of the holder */
    const char *state;
    const char *error;
} leader_event;

typedef struct leader_opts {
    uv_loop_t *loop;
    const settings *settings; /* env, instance, lock_ttl_ms, code_version */
    pg_pool *pg;
    redis_client *redis;
    http_client *http;
    const job_ops *ops; /* job name = ops->name */

    int wait;            /* 1: retry until the lock is free (or wait_timeout_ms); 0: LEADER_BUSY */
    int wait_timeout_ms; /* 0: wait forever */

    /* The run to create when step 1 finds nothing (or after it). */
    int create;
    const char *trigger;         /* "schedule" | "manual" | "cli" */
    long long scheduled_for_ms;  /* 0 = now */
    const char *const *corp_ids; /* NULL: every enabled enterprise */
    int ncorp_ids;

    int heartbeat_ms;    /* 0: 2000 */
    int stop_timeout_ms; /* 0: 10000 */
    int lock_margin_ms;  /* 0: lock.c default */

    void (*on_event)(void *arg, const leader_event *ev); /* may be NULL */
    /* Called once at the very end, after every handle is closed; the session is
     * freed right after it returns. r and its strings are valid during the call. */
    void (*on_done)(void *arg, const leader_result *r);
    void *arg;
} leader_opts;

/* Starts the session (strings and arrays in opts are copied). 0 and *out set, or
 * a negative errno (on_done will not be called). */
int leader_session_start(const leader_opts *opts, leader_session **out);

/* Ends the session early (SIGTERM, serve shutdown): stops the job, waits for it
 * (bounded), leaves the run abandoned/resumable, releases the lock, then on_done
 * with LEADER_SHUTDOWN. Safe to call at any point before on_done, more than once. */
void leader_session_shutdown(leader_session *s, const char *reason);

/* 1 while the session holds a trusted lease. */
int leader_session_is_leader(const leader_session *s);
/* The run the job is working on now (0 if none). */
long long leader_session_run_id(const leader_session *s);

/* For GET /v1/leader: who holds the lock (Redis) and since when (leader_fence in
 * PostgreSQL, when its token matches). instance NULL when nobody leads; since_ms
 * 0 when unknown. The lock's per-process figures (lease left, renewal latency,
 * changes) come from lock_process_stats() in coordinator/lock.h. */
typedef struct leader_info {
    const char *instance;
    long long fencing_token;
    long long since_ms; /* wall ms, leader_fence.acquired_at */
    long long pttl_ms;  /* remaining ttl of the lock key, -1 if none */
} leader_info;
typedef void (*leader_info_cb)(void *arg, const leader_info *info, const char *err);
int leader_lookup(redis_client *redis, pg_pool *pg, const char *env, const char *job,
                  leader_info_cb cb, void *arg);

#endif
