/* A job is what a leader runs (the directory sync is the only one today). The
 * coordinator knows nothing of WeCom, departments or members: it hands a job a
 * run (id, fencing token, attempt) and the shared clients, and the job tells
 * it when it has finished. */
#ifndef ORGSYNC_JOB_H
#define ORGSYNC_JOB_H

#include "common/http_client.h"
#include "common/pg.h"
#include "common/redis.h"
#include "common/settings.h"

#include <uv.h>

typedef struct job_run job_run;

struct job_run {
    /* Given by the coordinator, valid until finished() has been called. */
    uv_loop_t *loop;
    const settings *settings;
    pg_pool *pg;
    redis_client *redis;
    http_client *http;
    const char *env;             /* settings->env: $1 of every fenced statement */
    const char *job;             /* the job's name: $2 */
    long long fencing_token;     /* $3 */
    long long run_id;            /* the sync_runs row, already 'running' */
    int attempt;                 /* 1 for a fresh run; higher when resumed */
    const char *const *corp_ids; /* NULL: every enabled enterprise; else only these */
    int ncorp_ids;

    /* 1 while the leader's lease is trusted (monotonic deadline not passed).
     * The job checks it before every upstream request and every write. */
    int (*lease_valid)(job_run *run);
    /* The job calls this once a fenced write found its token stale. */
    void (*fenced_out)(job_run *run);
    /* The job calls this when the upstream refused this host's egress (its IP
     * is not trusted, or may not use a credential): the coordinator stops this
     * host competing for a while and says why (GET /v1/leader). May be NULL. */
    void (*egress_refused)(job_run *run, const char *why);
    /* The job calls this exactly once when it has stopped. state is
     * "succeeded", "partial" or "failed" for a run that ended, or NULL when it
     * stopped early (stop() was called, or it was fenced out) and the run must
     * stay resumable. error may be NULL. */
    void (*finished)(job_run *run, const char *state, const char *error);
    void *coord;     /* the coordinator's own */
    void *job_state; /* the job's own */
};

typedef struct job_ops {
    const char *name; /* "directory-sync" */
    /* Begins (or resumes, from its checkpoints) the run. 0, or a negative
     * error and finished() will not be called. */
    int (*start)(job_run *run);
    /* Stop now: no new upstream request, no new write. In-flight work ends or
     * is dropped; then finished(run, NULL, reason). Safe to call once at any
     * time after start() succeeded and before finished(). */
    void (*stop)(job_run *run, const char *reason);
} job_ops;

#endif
