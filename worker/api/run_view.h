/* A run and its per-enterprise progress as JSON: the query, the column
 * layout, and the builders shared by the HTTP API (worker/api/api_runs.c),
 * `orgsync status` and the progress display of `orgsync sync`, so that all
 * three say the same percent and ETA. */
#ifndef ORGSYNC_RUN_VIEW_H
#define ORGSYNC_RUN_VIEW_H

#include <libpq-fe.h>
#include <stddef.h>

#include "common/buf.h"

/* The revision of the environment of run r (sql/005_progress_revision.sql) as
 * the statement's snapshot sees it: every run and progress answer carries it,
 * and ?min_revision= compares with it (docs/API.md "Caching"). 0 before any run. */
#define RUN_REVISION                                                                               \
    "coalesce((SELECT v.revision FROM sync_revisions v WHERE v.env = r.env AND v.job = r.job), "   \
    "0)"

/* Run columns, shared by the detail and list queries (indexes below). */
#define RUN_COLS                                                                                   \
    "r.run_id, r.env, r.job, r.trigger, r.state, r.leader_instance, r.fencing_token, r.attempt, "  \
    "r.code_version, r.error, array_to_json(r.corp_ids)::text, extract(epoch FROM "                \
    "r.scheduled_for), extract(epoch FROM r.created_at), extract(epoch FROM r.started_at), "       \
    "extract(epoch FROM r.heartbeat_at), extract(epoch FROM r.finished_at), extract(epoch FROM "   \
    "now()), " RUN_REVISION
enum {
    RC_ID = 0,
    RC_ENV,
    RC_JOB,
    RC_TRIGGER,
    RC_STATE,
    RC_LEADER,
    RC_TOKEN,
    RC_ATTEMPT,
    RC_VERSION,
    RC_ERROR,
    RC_CORPS,
    RC_SCHEDULED,
    RC_CREATED,
    RC_STARTED,
    RC_HEARTBEAT,
    RC_FINISHED,
    RC_NOW,
    RC_REVISION,
    RC_N
};

/* The one definition of an enterprise's percent, in tenths of a percent (an
 * integer, so that every mean below is exact): 1000 once succeeded or failed;
 * else departments_done / departments_total floored to a tenth and capped at
 * 99.9 (deletions remain); 0 while the total is unknown. A column of
 * PROGRESS_COLS, and summed by the run list's aggregate. */
#define ENT_TENTHS_SQL                                                                             \
    "(CASE WHEN p.state IN ('succeeded', 'failed') THEN 1000 WHEN p.departments_total > 0 THEN "   \
    "least(999, (1000::bigint * p.departments_done) / p.departments_total) ELSE 0 END)"

#define PROGRESS_COLS                                                                              \
    "p.corp_id, p.state, p.departments_total, p.departments_done, p.users_upserted, "              \
    "p.users_deleted, p.requests, p.retries, p.errors, p.last_error, extract(epoch FROM "          \
    "p.started_at), extract(epoch FROM p.updated_at), extract(epoch FROM p.finished_at), "         \
    "p.api_mode, p.roster_members, p.roster_done, (SELECT array_to_json(e.fields_missing)::text "  \
    "FROM enterprises e WHERE e.corp_id = p.corp_id), (SELECT e.api_mode_reason FROM "             \
    "enterprises e WHERE e.corp_id = p.corp_id), (SELECT e.name FROM enterprises e WHERE "         \
    "e.corp_id = p.corp_id), " EXPORT_COLS ", " ENT_TENTHS_SQL

/* The member source of the run (the export job's row says export unless it
 * failed; else the enterprise's record), why, and the export job as JSON. */
#define EXPORT_COLS                                                                                \
    "coalesce((SELECT CASE WHEN x.state <> 'failed' THEN 'export' END FROM sync_exports x "        \
    "WHERE x.run_id = p.run_id AND x.corp_id = p.corp_id), (SELECT e.member_source_used FROM "     \
    "enterprises e WHERE e.corp_id = p.corp_id)), (SELECT e.member_source_reason FROM "            \
    "enterprises e WHERE e.corp_id = p.corp_id), (SELECT json_build_object('jobid', x.jobid, "     \
    "'state', x.state, 'job_status', x.job_status, 'polls', x.polls, 'files', "                    \
    "coalesce(jsonb_array_length(x.data_list), 0), 'files_done', x.parts_done, 'members', "        \
    "x.members, 'error', x.error, 'phase', CASE x.state WHEN 'creating' THEN 'export: creating "   \
    "the job' WHEN 'waiting' THEN 'export: waiting for job ' || x.jobid WHEN 'downloading' THEN "  \
    "'export: reading the files of job ' || x.jobid WHEN 'done' THEN 'export: job ' || x.jobid "   \
    "|| ' read' ELSE 'export: job ' || coalesce(x.jobid, '-') || ' failed' END)::text FROM "       \
    "sync_exports x WHERE x.run_id = p.run_id AND x.corp_id = p.corp_id)"
enum {
    PC_CORP = 0,
    PC_STATE,
    PC_TOTAL,
    PC_DONE,
    PC_UPSERTED,
    PC_DELETED,
    PC_REQUESTS,
    PC_RETRIES,
    PC_ERRORS,
    PC_LAST_ERROR,
    PC_STARTED,
    PC_UPDATED,
    PC_FINISHED,
    PC_API_MODE,       /* legacy or modern: what this run uses (NULL before it decided) */
    PC_ROSTER_MEMBERS, /* memberships of the roster read so far (modern) */
    PC_ROSTER_DONE,
    PC_FIELDS_MISSING, /* JSON array: member fields the last successful sync never got */
    PC_MODE_REASON,    /* why the enterprise uses its mode */
    PC_NAME,           /* enterprises.name (NULL if the enterprise was deleted since) */
    PC_MEMBER_SOURCE,  /* user_list or export: what this run reads members with */
    PC_SOURCE_REASON,  /* why (enterprises.member_source_reason) */
    PC_EXPORT,         /* the run's export job as JSON, NULL without one */
    PC_TENTHS,         /* ENT_TENTHS_SQL: the enterprise's percent in tenths */
    PC_N
};

/* One run with its progress rows. $1 env, $2 job, $3 run id (NULL: the latest). */
extern const char run_view_sql[];

int run_view_finished(const char *state);
double run_view_col_d(const PGresult *r, int row, int col);
double run_view_ent_percent(const PGresult *r, int row, int c0);
/* ETA in whole seconds, rounded up: (now - started) * left / done; 0 once
 * finished, -1 while there is no rate yet (the API's null). */
long long run_view_eta(int finished, double started, double now, double done, double left);
/* The eta_seconds of enterprise `row` (progress columns from c0), -1 for null. */
long long run_view_ent_eta(const PGresult *r, int row, int c0, double now);
/* A run's percent from its state and the sum of its nent enterprises' percents
 * in tenths (ENT_TENTHS_SQL): 100 once finished, 0 while pending or without
 * enterprises, else their mean rounded half up to a tenth, at most 99.9. */
double run_view_percent(const char *state, long long sum_tenths, int nent);
/* The run's percent and eta_seconds (-1 for null) from a run_view_sql result
 * with at least one row: the figures run_view_json writes, for a caller that
 * shows them without JSON (the live display of `orgsync sync`). */
void run_view_run_progress(const PGresult *res, double *percent, long long *eta);
void run_view_put_eta(jw *w, int finished, double started, double now, double done, double left);
void run_view_put_enterprise(jw *w, const PGresult *r, int row, int c0, double now);
void run_view_put_fields(jw *w, const PGresult *r, int row);
void run_view_put_progress(jw *w, const PGresult *r, int row, long long sum_tenths, int nent);
/* The run object (SPEC §5) from a run_view_sql result with at least one row;
 * malloc'ed (caller frees), NULL when out of memory. */
char *run_view_json(const PGresult *res, size_t *len);

#endif
