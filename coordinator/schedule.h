/* The scheduler of one competing worker (SPEC §2 ORGSYNC_CRON/TZ, §5 POST
 * /v1/runs, §7; DESIGN §3 "Schedule"). It decides WHEN to try for the lock; a
 * leader session (coordinator/leader.h) does the rest.
 *
 * Four reasons to try, each one lock attempt (no waiting: a busy lock means
 * someone else is on it):
 *   fire     the next cron fire, computed in ORGSYNC_TZ; a session with create=1
 *            and scheduled_for = the fire, so UNIQUE(env, job, scheduled_for)
 *            keeps it to one run however many leaders try.
 *   catch-up a fire that has no run (missed while nobody led, or while Redis was
 *            down, or while this leader was still busy with the previous run):
 *            the latest fire at or before now is run once when someone can lead.
 *   orphan   the lock is free but a run is unfinished (its leader died, was
 *            paused past its lease, or lost Redis): taken over as soon as the
 *            lock is free, not at the next fire (session with create=0).
 *   manual   NOTIFY on runs_channel(env) from POST /v1/runs: tried at once.
 * fire, catch-up and orphan attempts wait rank * grace first (fair candidacy,
 * coordinator/candidacy.h); a candidate with older code does not try at all.
 *
 * How it watches: every poll_ms it reads the lock holder (one Redis call); only
 * when the lock is free and either it was held at the last look, a NOTIFY came,
 * or catchup_check_ms passed, does it ask PostgreSQL for an unfinished run and
 * for the latest scheduled fire. So a standby costs Redis a few calls a second
 * and PostgreSQL almost nothing.
 *
 * Redis losing its data (a restart without persistence) resets the fencing
 * counter below leader_fence; the leader session repairs that itself
 * (coordinator/leader.h), and the scheduler simply tries again at its next
 * look. */
#ifndef ORGSYNC_SCHEDULE_H
#define ORGSYNC_SCHEDULE_H

#include "common/http_client.h"
#include "common/pg.h"
#include "common/redis.h"
#include "common/settings.h"
#include "coordinator/candidacy.h"
#include "coordinator/gate.h"
#include "coordinator/job.h"

#include <stdint.h>
#include <uv.h>

typedef struct schedule schedule;

typedef struct schedule_opts {
    uv_loop_t *loop;
    const settings *settings; /* env, instance, cron, tz, lock_ttl_ms, code_version (copied) */
    pg_pool *pg;
    redis_client *redis;
    http_client *http;
    const job_ops *ops;
    /* The worker's gate: read before every attempt, its version verdict
     * updated from the candidacy. Must outlive the schedule. */
    gate *gate;
    int fair;              /* 1: rank by least-recently-led (default); 0: plain SET NX race */
    int grace_ms;          /* per rank; 0: 200 */
    int poll_ms;           /* lock watch; 0: 250 */
    int catchup_check_ms;  /* PostgreSQL look while the lock stays free; 0: 5000 */
    int heartbeat_ms;      /* run heartbeats; 0: leader.c default */
    int stop_timeout_ms;   /* job stop bound on shutdown; 0: leader.c default */
    int cand_heartbeat_ms; /* candidacy heartbeats; 0: 1000 */
    /* 1: a continuous job (worker/sync/callback_apply.h): no cron fires; whenever
     * the lock is free it competes (rank grace as usual) with create=1, so the
     * unfinished run is resumed or, if none, one is created and runs until its
     * leader stops. */
    int continuous;
    /* Continuous jobs only: NULL, or a query answering one boolean: the job
     * is started only while it answers true (asked when the lock is free, at
     * most every catchup_check_ms), so a deployment that does not use the job
     * never runs it. */
    const char *wanted_sql;
} schedule_opts;

/* Starts watching (strings copied). 0 and *out set, or a negative errno. */
int schedule_start(const schedule_opts *opts, schedule **out);

/* A NOTIFY arrived on runs_channel(env) (the caller owns the LISTEN, so that
 * a notification can never reach a freed schedule). */
void schedule_notify(schedule *s, const char *payload);

/* Graceful end: a leader session in progress is shut down (job stopped, run
 * left resumable, lock released), our candidate entry removed, handles closed;
 * then done(arg) (may be NULL) from a loop callback, and s is freed. */
void schedule_close(schedule *s, void (*done)(void *arg), void *arg);

/* Reload: fires from now on follow cron in tz (the next fire is computed again
 * at once; a fire already owed is still run). 0, or -EINVAL (bad cron or zone:
 * the old schedule stays, err says why). */
int schedule_set_cron(schedule *s, const char *cron, const char *tz, char *err, size_t errlen);

typedef struct schedule_stats {
    int leading;             /* 1 while our session holds a trusted lease */
    long long run_id;        /* run our job works on, 0 if none */
    long long next_fire_ms;  /* wall ms of the next fire, 0 unknown */
    unsigned long fires;     /* fire times reached */
    unsigned long attempts;  /* sessions started */
    unsigned long led;       /* sessions that ran at least one run */
    unsigned long takeovers; /* orphans taken over */
} schedule_stats;
void schedule_stats_get(const schedule *s, schedule_stats *out);

/* Pure: the latest fire at or before now_s that is later than after_s, or 0 if
 * none (cron read in tz). Bounded search. For the catch-up. */
time_t schedule_latest_fire(const char *cron, const char *tz, time_t after_s, time_t now_s);

#endif
