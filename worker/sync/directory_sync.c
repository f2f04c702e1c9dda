/* The directory sync job. Each enterprise is a small state machine on the loop;
 * the job ends when every enterprise has ended (or at once when stopped).
 *
 * Writes: every write is ONE fenced statement (coordinator/fence.h) that also
 * carries the progress counters, so a department's members, its checkpoint and
 * the enterprise's progress commit together or not at all, and a stale leader
 * changes nothing. A statement writes the waiting departments of several
 * enterprises (see DS_STMT_DEPTS_MAX), but an enterprise is in one statement at
 * a time: its progress counters then only ever move forward, and two statements
 * never lock the same rows (members, checkpoints, progress) in opposite orders.
 * A statement PostgreSQL refuses is written again one enterprise at a time, so
 * one enterprise's data fails only its own departments.
 *
 * The members of a department go to PostgreSQL as the upstream's own text of
 * each member (checked in worker/sync/sync_batch.c, which only puts the keys in the
 * order jsonb stores them): PostgreSQL extracts the columns with jsonb's ->>
 * operator, so no value is rebuilt in C and the raw column holds the member the
 * upstream sent, field for field. */
#include "worker/sync/directory_sync.h"

#include "common/alert.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/timeutil.h"
#include "coordinator/fence.h"
#include "worker/sync/sync_batch.h"
#include "worker/sync/sync_modern.h"
#include "worker/sync/uid_set.h"
#include "worker/wecom/export_file.h"
#include "worker/wecom/wecom.h"

#include "common/buf.h"
#include "common/digests_sql.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DS_ERR_MAX 512
/* Transient database failures (timeout, lost connection) of one write are retried. */
#define DS_WRITE_ATTEMPTS 3
/* Departments of one enterprise written by one statement, at most: the answers
 * that piled up for an enterprise while it waited for a write go together. It
 * also bounds what a leader that dies can leave to fetch again: 1 in flight + 8
 * waiting + 8 writing. */
#define DS_BATCH_MAX 8
/* Statements writing members in flight at once (the pool has 4 connections),
 * and departments one of them carries, from as many enterprises as are waiting
 * for a write (oldest first). While PostgreSQL is busy, enterprises queue up,
 * and the next statement takes many of them: fewer, bigger statements cost
 * PostgreSQL less, and no answer waits longer than a connection takes to come
 * free. A statement's own cost (executor start-up, locks, progress rows,
 * commit) is about 0.2 ms of PostgreSQL's CPU. In the full benchmark, writing
 * one enterprise a statement made 4,500 transactions; statements of up to 16
 * or 32 departments made 1,150 or 800, and PostgreSQL used less CPU
 * (tests/bench/README.md, "Fourth pass"). Two statements in flight rather
 * than four: PostgreSQL used less CPU and upstream requests went out closer
 * to the rate in 6 of 6 pairs, and at twice the members the run was shorter
 * in 2 of 2 ("Fifth pass"); one would leave PostgreSQL a single CPU. */
#define DS_WRITES_MAX 2
#define DS_STMT_DEPTS_MAX 32
/* Answers held in memory (waiting or being written) across the job: fetching
 * pauses above it, so memory follows this bound, not the directory's size. */
#define DS_BUFFER_MAX (16u << 20)

typedef struct ds_job ds_job;
typedef struct ds_corp ds_corp;

typedef enum {
    CS_PENDING = 0,
    CS_LISTING,
    CS_ROSTER,
    CS_EXPORT, /* creating or polling the export job */
    CS_DEPTS,  /* fetching members: user/list per department, or the export's files */
    CS_FINAL,
    CS_ENDED
} corp_state;

/* The member source "export" (docs/ARCHITECTURE.md "Export jobs"):
 * export/user members per file (the upstream allows 10^4..10^6); files are
 * read in ranges of DS_EXPORT_RANGE bytes, each range's members one write (a
 * pseudo-department checkpoint, id -(export_idbase * 10^9 + file * 10^6 + range + 1)), so memory is
 * bounded by a range (ORGSYNC_EXPORT_RANGE_KB, default 1 MiB) and the members it
 * completes, whatever the file size. */
#define DS_EXPORT_BLOCK 100000
#define DS_EXPORT_RANGE ((uint64_t)c->job->run->settings->export_range_kb << 10)
#define DS_EXPORT_RANGE_TRIES 5
#define DS_EXPORT_READY_MAX 2
/* get_result polls: 250 ms, doubling, at most 8 s apart. */
#define DS_EXPORT_POLL_MS 250
#define DS_EXPORT_POLL_CAP_MS 8000
/* auto: export above ORGSYNC_EXPORT_AUTO_DEPTS departments (default 100,
 * tests/bench/README.md "Ninth pass"). */
#define DS_EXPORT_AUTO_DEPTS (c->job->run->settings->export_auto_depts)

/* A department's digest as stored (sql/008). */
typedef struct ds_digest {
    long long dept;
    char d[SYNC_DIGEST_HEX]; /* hex, as sync_batch_parse keeps it */
} ds_digest;

typedef struct ds_part {
    char *url;
    uint64_t size;
    char md5[33];
} ds_part;

enum { EXW_NONE = 0, EXW_POLL, EXW_RANGE };

/* user/list_id rows per page: the most the upstream allows. */
#define DS_ROSTER_LIMIT 10000

struct ds_corp {
    ds_job *job;
    char corp_id[72];
    char *secret;
    char *contact_secret; /* NULL: none */
    char api_mode[8];     /* as configured: auto, legacy or modern */
    /* The API mode of this run (DESIGN: docs/ARCHITECTURE.md "Today's API"):
     * legacy reads department/list and user/list with dir_cred; modern reads the
     * tree from department/simplelist, the roster from user/list_id (both with
     * dir_cred) and member details from user/list with the app secret. */
    int modern;
    int mode_decided;             /* set by the probe (or the resumed progress row) */
    char mode_reason[DS_ERR_MAX]; /* why this mode, for enterprises.api_mode_reason */
    wecom_cred dir_cred;          /* the contact-sync secret when there is one, else the app's */
    json_object *simplelist;      /* the tree, held while the app's department/list is asked */
    char *roster_cursor;          /* the next roster page's cursor; NULL: the first */
    int roster_pages, roster_done;
    long long roster_members;
    unsigned fields_present; /* sync_fields_present over the answers that had members */
    int member_answers;
    int permanent; /* a forbidden errcode (sync_forbidden): the enterprise fails, nobody deleted */
    char *roster_pending; /* the page being written: its next_cursor */
    int roster_rows;
    corp_state state;
    int ok;           /* ended succeeded */
    int missing;      /* asked for by --corp, but unknown or disabled */
    long long *depts; /* user/list still to fetch, in id order */
    int ndepts, next;
    int total;
    int fetching;                  /* a wecom request is outstanding */
    ds_batch *ready[DS_BATCH_MAX]; /* fetched, waiting for a write, in order */
    int nready;
    ds_batch *writing[DS_BATCH_MAX]; /* in the statement being written */
    int nwriting;
    int starved;        /* a fetch waits for the job's answer buffer to drain */
    int final_attempts; /* of its final write (member writes count in ds_write) */
    int failed_depts;
    int quota_hit;
    char last_error[DS_ERR_MAX];
    char note[DS_ERR_MAX]; /* recorded, not an error (60003) */
    /* Counters not yet written (added to the progress row by the next write). */
    long long d_requests, d_retries, d_errors;
    /* In flight with the write, restored if it fails. */
    long long w_requests, w_retries, w_errors;
    long long users_seen;
    /* During the enterprise's first sync (no users row when its departments
     * were written), the userids sent so far: a member not among them goes in
     * with a plain INSERT (sql_users $7). Emptied, and fresh cleared, for
     * good once a plain INSERT meets a row after all. */
    int fresh;
    uid_set written;
    /* The digests of its departments' last answers, by dept id: an answer with
     * the same digest is written as its checkpoint only (sql/008). */
    ds_digest *digests;
    int ndigests;
    /* What users holds for its members, as far as the sync may trust it
     * (member_map.h): a changed department sends only the members not in it. */
    member_map mmap;
    long long unchanged; /* departments found unchanged by this attempt */
    int queued;          /* in the job's write queue */
    int alone;           /* its next write carries no other enterprise (see on_written) */
    /* The member source: as configured (user_list, export, auto), and this
     * run's, with why (enterprises.member_source_used / _reason). */
    char member_source[12];
    int use_export;
    char source_reason[DS_ERR_MAX];
    /* The export job (sync_exports): its id, key, credential, files. */
    char *ex_jobid;
    char ex_key[EXPORT_KEY_LEN + 1];
    wecom_cred ex_cred;
    int ex_resumed; /* polling a job an earlier attempt created */
    int ex_polls, ex_polls_unsaved, ex_status;
    int ex_wait;            /* EXW_*: what the job's timer does for it */
    uint64_t ex_wait_until; /* monotonic us */
    ds_part *ex_parts;
    int ex_nparts, ex_part, ex_pass, ex_range, ex_tries;
    uint64_t ex_off;
    export_file ex_file;
    int ex_file_open;
    int ex_complete, ex_failed;
    long long ex_idbase; /* see export_idbase */
    int ex_renewed;      /* a 403 on a file made a new job once */
    uint64_t ex_members;
    char *ex_data_list; /* data_list's JSON, stored with the job */
};

struct ds_job {
    job_run *run;
    wecom *wc;
    ds_corp *corps;
    int ncorps;
    int ended, succeeded;
    int db_inflight;
    int stopping;
    int decided; /* every enterprise ended: end_state says how the run went */
    int end_called;
    const char *end_state; /* "succeeded" | "partial" | "failed" | NULL (stopped) */
    char end_error[DS_ERR_MAX];
    uv_timer_t closer;
    char token[24], run_id[24];
    uint64_t started_us;
    size_t buffered; /* bytes of answers held, see DS_BUFFER_MAX */
    /* Enterprises waiting for a member write, oldest first (a ring of ncorps:
     * an enterprise is in it at most once), and member writes in flight. */
    ds_corp **wq;
    int wq_head, wq_n;
    int writes;
    uv_timer_t ex_timer; /* export polls and range retries, every 50 ms while any waits */
    int ex_timer_on;
    int http_inflight; /* export file ranges */
};

/* One statement writing the departments of one or more enterprises. */
typedef struct ds_write {
    ds_job *job;
    int ncorps;
    int attempts;
    ds_corp *corps[DS_STMT_DEPTS_MAX];
} ds_write;

static directory_sync_tuning tuning;

void directory_sync_set_tuning(const directory_sync_tuning *t)
{
    if (t)
        tuning = *t;
    else
        memset(&tuning, 0, sizeof(tuning));
}

/* ---- SQL ---------------------------------------------------------------------------- */

#define Q_PROGRESS_INIT "ds_progress_init"
#define Q_PROGRESS_READ "ds_progress_read"
#define Q_DEPTS "ds_departments"
#define Q_USERS "ds_users"
#define Q_CORP_OK "ds_corp_succeeded"
#define Q_CORP_FAIL "ds_corp_failed"
#define Q_ROSTER "ds_roster_page"
#define Q_EXPORT_READ "ds_export_read"
#define Q_EXPORT_SAVE "ds_export_save"

/* The enterprise's row, locked for the statement ($5 corp): since users and
 * departments keep no foreign key (sql/002), a delete of the enterprise waits
 * for the write, and its trigger then removes what the write added; a write
 * after the delete finds no row and adds nothing. One lock per statement, where
 * the key took one per row. */
#define ENTERPRISE_CTE "ent AS (SELECT 1 FROM enterprises WHERE corp_id = $5 FOR KEY SHARE)"

/* ON CONFLICT ... DO UPDATE ... WHERE: a member whose stored text is the
 * upstream's now (unchanged since an earlier run, or written by this run for
 * another of its departments) is left as it is, which saves PostgreSQL a new
 * row version and its index entries: in the schedule's usual run, nearly every
 * member. What the run saw is in its checkpoints (sql_corp_ok), so a member
 * need not be written to count as seen. A member deleted earlier comes back.
 * The columns are read from raw, so raw alone tells whether anything changed. */
#define SKIP_UNCHANGED                                                                             \
    "WHERE (u.raw IS DISTINCT FROM EXCLUDED.raw AND u.raw IS DISTINCT FROM " MERGED_RAW ") "       \
    "OR u.deleted_at IS NOT NULL OR u.sync_run_id IS NULL"

/* A field the upstream did not send is not a field it cleared: a new app
 * (created after 2022-06-20) gets no mobile or email, and must not wipe what a
 * complete credential stored. So a stored member takes the keys the answer
 * has (raw: the stored object with the answer's keys over it), and each column
 * changes only when its key was sent (sent as null or "": cleared). The cheap
 * test comes first: a complete answer equal to the stored text needs no merge. */
#define MERGED_RAW "(coalesce(u.raw, '{}'::jsonb) || EXCLUDED.raw)"
#define KEEP_UNSENT                                                                                \
    "name = CASE WHEN EXCLUDED.raw ? 'name' THEN EXCLUDED.name ELSE u.name END, "                  \
    "mobile = CASE WHEN EXCLUDED.raw ? 'mobile' THEN EXCLUDED.mobile ELSE u.mobile END, "          \
    "email = CASE WHEN EXCLUDED.raw ? 'email' THEN EXCLUDED.email ELSE u.email END, "              \
    "position = CASE WHEN EXCLUDED.raw ? 'position' THEN EXCLUDED.position ELSE u.position END, "  \
    "status = CASE WHEN EXCLUDED.raw ? 'status' THEN EXCLUDED.status ELSE u.status END, "

/* The users row of each row r of a data-modifying CTE (corp_id, userid) as it
 * was before the statement (every CTE reads the statement's snapshot), as
 * "o": one primary-key probe per row written. OFFSET 0 keeps PostgreSQL from
 * turning it into a join, which it planned as a hash of all of users built by
 * every statement (the benchmark's later syncs cost PostgreSQL 66 CPU s). */
#define WAS_ROW(r)                                                                                 \
    "LATERAL (SELECT department FROM users x WHERE x.corp_id = " r ".corp_id AND x.userid = " r    \
    ".userid OFFSET 0) AS o"

/* $4 run_id, $5 corp_ids text[]. Enterprises of an earlier attempt that are no
 * longer part of the run end 'failed' instead of staying 'pending' forever. */
static const char sql_progress_init[] =
    "WITH " FENCE_CTE ", "
    "ins AS (INSERT INTO sync_progress (run_id, corp_id) SELECT $4::bigint, c "
    "  FROM unnest($5::text[]) AS c WHERE EXISTS (SELECT 1 FROM fence) "
    "  ON CONFLICT (run_id, corp_id) DO NOTHING RETURNING 1), "
    "gone AS (UPDATE sync_progress SET state = 'failed', last_error = 'enterprise is no longer "
    "  enabled', finished_at = now(), updated_at = now() WHERE run_id = $4::bigint "
    "  AND NOT (corp_id = ANY ($5::text[])) AND state IN ('pending', 'running') "
    "  AND EXISTS (SELECT 1 FROM fence) RETURNING 1) "
    "SELECT EXISTS (SELECT 1 FROM fence) AS fenced";

/* What an earlier attempt of the run left: each enterprise's state, its API
 * mode and how far its roster got (a successor resumes mid-roster). */
static const char sql_progress_read[] =
    "SELECT corp_id, state, users_upserted, coalesce(api_mode, ''), roster_cursor, roster_pages, "
    "  roster_done, roster_members FROM sync_progress WHERE run_id = $1::bigint";

/* $4 run, $5 corp, $6 department/list answer (or the tree sync_modern_departments
 * built), $7 total, $8 ids bigint[], $9..$11 requests, retries, errors, $12 the API
 * mode of the run, $13 why (NULL: a resumed attempt, the enterprise's record
 * stands). A department without a name (modern: outside the app's range) keeps
 * the stored one. Returns fenced, this run's checkpoints, whether the
 * enterprise has no users row (its first sync: see ds_corp.written), and the
 * digests of its departments' last answers ("id:hex,...", NULL: none; see
 * ds_corp.digests). */
static const char sql_departments[] =
    "WITH " FENCE_CTE ", " ENTERPRISE_CTE ", "
    "src AS (SELECT DISTINCT ON (d.id) d.id, d.name, d.parentid, d.\"order\" "
    "  FROM jsonb_to_recordset($6::jsonb -> 'department') AS d(id bigint, name text, "
    "  parentid bigint, \"order\" bigint) WHERE EXISTS (SELECT 1 FROM fence) "
    "  AND EXISTS (SELECT 1 FROM ent) ORDER BY d.id), "
    "up AS (INSERT INTO departments AS t (corp_id, dept_id, name, parent_id, \"order\", "
    "  sync_run_id, synced_at, deleted_at) SELECT $5, id, coalesce(name, ''), parentid, "
    "  \"order\", $4::bigint, now(), NULL FROM src ON CONFLICT (corp_id, dept_id) DO UPDATE "
    "  SET name = CASE WHEN EXCLUDED.name <> '' THEN EXCLUDED.name ELSE t.name END, "
    "  parent_id = EXCLUDED.parent_id, \"order\" = EXCLUDED.\"order\", "
    "  sync_run_id = EXCLUDED.sync_run_id, synced_at = EXCLUDED.synced_at, deleted_at = NULL "
    "  RETURNING 1), "
    "mode AS (UPDATE enterprises SET api_mode_used = $12::text, api_mode_reason = $13::text, "
    "  api_mode_at = now() WHERE corp_id = $5 AND $13::text IS NOT NULL "
    "  AND EXISTS (SELECT 1 FROM fence) RETURNING 1), "
    "pr AS (UPDATE sync_progress SET state = 'running', departments_total = $7::int, "
    "  api_mode = $12::text, "
    "  departments_done = (SELECT count(*) FROM sync_checkpoints k WHERE k.run_id = $4::bigint "
    "    AND k.corp_id = $5 AND k.dept_id = ANY ($8::bigint[])), "
    "  started_at = coalesce(started_at, now()), updated_at = now(), "
    "  requests = requests + $9::bigint, retries = retries + $10::bigint, "
    "  errors = errors + $11::bigint "
    "  WHERE run_id = $4::bigint AND corp_id = $5 AND EXISTS (SELECT 1 FROM fence) RETURNING 1) "
    "SELECT EXISTS (SELECT 1 FROM fence) AS fenced, (SELECT count(*) FROM up), "
    "  (SELECT coalesce(array_agg(dept_id ORDER BY dept_id), '{}')::text FROM sync_checkpoints "
    "   WHERE run_id = $4::bigint AND corp_id = $5), "
    "  NOT EXISTS (SELECT 1 FROM users WHERE corp_id = $5) AS first_sync, "
    "  (SELECT string_agg(dept_id || ':' || encode(digest, 'hex'), ',' ORDER BY dept_id) "
    "   FROM department_digests WHERE corp_id = $5 AND digest IS NOT NULL) AS digests, "
    "  (SELECT string_agg(encode(members, 'hex'), '') FROM department_digests "
    "   WHERE corp_id = $5 AND digest IS NOT NULL AND members IS NOT NULL) AS members";

/* The members of departments of one or more enterprises, their checkpoints and
 * the enterprises' progress counters, in one statement. $4 run;
 * $5 a JSON array with an object per enterprise (keys in jsonb's order):
 *   c  corp id;
 *   d  its departments: [{"d": dept, "n": members the department lists, "p":
 *      members counted here, "s": unknown upstream (60003: its row loses this
 *      run's mark, so it is deleted if the enterprise succeeds)}, ...];
 *   e, q, r  errors, requests, retries to add to its progress row;
 *   t  a note for last_error, or null;
 * $6 [[corp id, [member, ...]], ...]: the members to write that may be in users
 * already, each member once, in userid order (see sync_batch_params);
 * $7 the same for the members surely not in users yet.
 *
 * The members go in as the upstream's text, cast to jsonb once, and are
 * inserted straight from it: nothing to sort or deduplicate in PostgreSQL, and
 * they pass through no CTE (a CTE keeps a copy of its rows, and an UPDATE ...
 * FROM one copies each row it joins). Each enterprise's row is locked (FOR KEY
 * SHARE: see ENTERPRISE_CTE), and an enterprise without one writes no member
 * and no checkpoint.
 *
 * The columns come out of each member with ->> (the department array's JSON
 * text becomes an int[] literal by its brackets: sync_batch_parse let through
 * only arrays of 32-bit integers): the same values as jsonb_to_record, whose
 * extraction cost PostgreSQL 3 to 7 times as much (psql, 80,000 simulated
 * members in 229 arrays, five alternating runs: 811-1,150 ms with
 * jsonb_to_record, 399-503 ms with ->>, 316-352 ms for reading the arrays
 * alone).
 *
 * $7's members (only during an enterprise's first sync: see ds_corp.written)
 * take a plain INSERT: no arbiter probe and no speculative insertion. (psql,
 * the benchmark's 400,000 rows into an empty users in one statement,
 * alternating: 3.1-4.1 s with ON CONFLICT in 5 runs, 2.2-2.5 s without in 6.) Should a
 * row have appeared meanwhile (a realtime lookup stored that member), the
 * statement fails on the primary key, changes nothing, and is written again
 * with every member in $6.
 *
 * departments_done counts real departments only (an export's ranges are
 * checkpointed under negative ids, see DS_EXPORT_BLOCK). users_upserted counts
 * each member once, in the department that is its main
 * one ("p", counted in C), and only for departments newly checkpointed here. */
#define USERS_COLUMNS                                                                              \
    "(corp_id, userid, name, mobile, email, position, status, department, main_department, raw, "  \
    "sync_run_id, synced_at, deleted_at)"
#define USERS_SELECT                                                                               \
    "SELECT g->>0, e->>'userid', e->>'name', e->>'mobile', e->>'email', e->>'position', "          \
    "  (e->>'status')::int, coalesce(translate(e->>'department', '[]', '{}')::int[], '{}'), "      \
    "  (e->>'main_department')::int, e, $4::bigint, now(), NULL "
/* (clang-format would indent the SQL after DIGESTS_INVALIDATE) */
/* clang-format off */
static const char sql_users[] =
    "WITH " FENCE_CTE ", "
    "g AS (SELECT x->>'c' AS c, x->'d' AS d, (x->>'q')::bigint AS q, (x->>'r')::bigint AS r, "
    "  (x->>'e')::bigint AS e, x->>'t' AS t FROM jsonb_array_elements($5::jsonb) AS x "
    "  WHERE EXISTS (SELECT 1 FROM fence)), "
    "ent AS (SELECT corp_id FROM enterprises WHERE corp_id IN (SELECT c FROM g) "
    "  ORDER BY corp_id FOR KEY SHARE), "
    "depts AS (SELECT g.c, y.d, y.h, y.m, y.p, y.s, y.n, y.u, y.x FROM g, jsonb_to_recordset(g.d) "
    "  AS y(d bigint, h text, m text, n int, p bigint, s boolean, u jsonb, x boolean) "
    "  WHERE g.c IN (SELECT corp_id FROM ent)), "
    "up AS (INSERT INTO users AS u " USERS_COLUMNS " " USERS_SELECT
    "  FROM jsonb_array_elements($6::jsonb) AS g, jsonb_array_elements(g->1) AS e "
    "  WHERE g->>0 IN (SELECT corp_id FROM ent) "
    "  ON CONFLICT (corp_id, userid) DO UPDATE SET " KEEP_UNSENT
    "  department = EXCLUDED.department, main_department = EXCLUDED.main_department, "
    "  raw = " MERGED_RAW ", sync_run_id = EXCLUDED.sync_run_id, synced_at = EXCLUDED.synced_at, "
    "  deleted_at = NULL " SKIP_UNCHANGED " RETURNING u.corp_id, u.userid, u.department), "
    "ins AS (INSERT INTO users " USERS_COLUMNS " " USERS_SELECT
    "  FROM jsonb_array_elements($7::jsonb) AS g, jsonb_array_elements(g->1) AS e "
    "  WHERE g->>0 IN (SELECT corp_id FROM ent) RETURNING 1), "
    /* Members another writer stored meanwhile (a callback, a lookup: sql/008),
     * read through users_unsynced: a department listing one keeps no digest,
     * for the member may have been left out as unchanged (member_map.h). */
    "uns AS (SELECT q.c, z.userid FROM (SELECT DISTINCT c FROM depts) AS q, LATERAL (SELECT "
    "  userid FROM users z WHERE z.corp_id = q.c AND z.sync_run_id IS NULL "
    "  AND z.deleted_at IS NULL OFFSET 0) AS z), "
    /* Every department answered keeps its userids; the ones it no longer lists
     * wait in dropped for the enterprise's deletions (sql/009). */
    "dg AS (INSERT INTO department_digests AS t (corp_id, dept_id, digest, members, userids, "
    "  run_id) SELECT c, d, CASE WHEN h IS NOT NULL AND NOT EXISTS (SELECT 1 FROM uns "
    "  WHERE uns.c = depts.c AND uns.userid = ANY (l.ids)) THEN decode(h, 'hex') END, "
    "  CASE WHEN h IS NOT NULL THEN decode(m, 'hex') END, l.ids, $4::bigint FROM depts, "
    "  LATERAL (SELECT ARRAY(SELECT jsonb_array_elements_text(u)) AS ids) AS l WHERE NOT x "
    "  ON CONFLICT (corp_id, dept_id) DO UPDATE SET digest = EXCLUDED.digest, "
    "  members = EXCLUDED.members, dropped = CASE WHEN t.userids = EXCLUDED.userids "
    "  THEN t.dropped ELSE ARRAY(SELECT unnest(t.dropped) UNION SELECT unnest(t.userids) "
    "  EXCEPT SELECT unnest(EXCLUDED.userids)) END, userids = EXCLUDED.userids, "
    "  run_id = EXCLUDED.run_id, updated_at = now() RETURNING 1), " DIGESTS_INVALIDATE(
        /* (not ins: a member inserted there was listed by no department written
         * before, for that department would have inserted it: no digest names
         * it; and not the departments dg writes) */
        "SELECT q.c, q.d, q.u FROM (SELECT corp_id, unnest(department), userid FROM up UNION "
        "SELECT up.corp_id, unnest(o.department), up.userid FROM up, " WAS_ROW("up") ") AS "
        "q(c, d, u) WHERE NOT EXISTS (SELECT 1 FROM depts WHERE depts.c = q.c "
        "AND depts.d = q.d AND NOT depts.x)",
        "EXISTS (SELECT 1 FROM up)") ", "
    "gone AS (UPDATE departments t SET sync_run_id = NULL FROM depts "
    "  WHERE depts.s AND t.corp_id = depts.c AND t.dept_id = depts.d "
    "  AND EXISTS (SELECT 1 FROM depts WHERE s) RETURNING 1), "
    "cp AS (INSERT INTO sync_checkpoints (run_id, corp_id, dept_id, users, userids, unchanged) "
    "  SELECT $4::bigint, c, d, n, CASE WHEN h IS NULL AND NOT x THEN "
    "  ARRAY(SELECT jsonb_array_elements_text(u)) END, x FROM depts "
    "  ON CONFLICT DO NOTHING RETURNING corp_id, dept_id), "
    "k AS (SELECT cp.corp_id, count(*) FILTER (WHERE cp.dept_id > 0) AS done, sum(depts.p) "
    "  AS users FROM cp "
    "  JOIN depts ON depts.c = cp.corp_id AND depts.d = cp.dept_id GROUP BY cp.corp_id), "
    "pr AS (UPDATE sync_progress s SET departments_done = s.departments_done + "
    "  coalesce(k.done, 0), users_upserted = s.users_upserted + coalesce(k.users, 0), "
    "  requests = s.requests + g.q, retries = s.retries + g.r, errors = s.errors + g.e, "
    "  last_error = coalesce(g.t, s.last_error), updated_at = now() "
    "  FROM g LEFT JOIN k ON k.corp_id = g.c "
    "  WHERE s.run_id = $4::bigint AND s.corp_id = g.c RETURNING 1) "
    "SELECT EXISTS (SELECT 1 FROM fence) AS fenced, "
    "  (SELECT count(*) FROM up) + (SELECT count(*) FROM ins), "
    "  (SELECT count(*) FROM gone), (SELECT count(*) FROM pr)";
/* clang-format on */

/* $4 run, $5 corp, $6..$8 counters, $9 note for last_error or NULL, $10 the member
 * fields no answer carried (text[], NULL: no answer had members), $11 whether
 * the run read its members through the departments' lists alone (user_list,
 * legacy mode: no export, no roster). Only after every department succeeded
 * (and, in modern mode, the whole roster was read): whoever this run did not
 * see is gone. Seen: listed by a department this run checkpointed (its userids,
 * whichever attempt of the run wrote it, and its department_digests row),
 * written by this run (a checkpoint written before schema 3 has no userids:
 * its members were all written then),
 * or listed by the run's roster (sync_roster: the complete list of members,
 * whatever the app may read). A roster member that no department's details
 * listed (outside the app's visible range) gets a row of what the roster says
 * (userid, departments), and keeps any fields stored. The checkpoints' userids
 * and the roster are dropped once used: the run's record keeps the counts, not
 * the lists.
 *
 * Which members to look at (sql/009): after a run that read its members
 * through the lists alone and completed this statement, every live member the
 * sync wrote is listed by some department's department_digests row
 * (members_settled_run). From then on, a member can only stop being listed by
 * leaving a department's list (its userids then wait in dropped), by its
 * department vanishing (a row the run did not checkpoint), or be a member
 * another writer stored (sync_run_id NULL). So when the last complete run was
 * such a run and this one is too, only those candidates are checked against
 * the lists of the run's departments ("inc"); otherwise every live member is
 * ("full"). */
/* (clang-format would indent the SQL after DIGESTS_INVALIDATE) */
/* clang-format off */
static const char sql_corp_ok[] =
    "WITH " FENCE_CTE ", "
    "lists AS (SELECT $11::boolean AND NOT EXISTS (SELECT 1 FROM sync_roster "
    "  WHERE run_id = $4::bigint AND corp_id = $5) AND NOT EXISTS (SELECT 1 FROM "
    "  sync_checkpoints k WHERE k.run_id = $4::bigint AND k.corp_id = $5 AND k.dept_id <= 0) "
    "  AS yes), "
    "inc AS (SELECT (SELECT yes FROM lists) AND coalesce((SELECT members_settled_run IS NOT NULL "
    "  FROM enterprises WHERE corp_id = $5), false) AS yes), "
    /* (UNION ALL: a userid twice does no harm, so nothing is hashed to remove it) */
    "cand AS (SELECT x.userid FROM department_digests g, unnest(g.dropped) AS x(userid) "
    "  WHERE g.corp_id = $5 AND g.dropped <> '{}' AND (SELECT yes FROM inc) "
    "  UNION ALL SELECT x.userid FROM department_digests g, unnest(g.userids) AS x(userid) "
    "  WHERE g.corp_id = $5 AND (SELECT yes FROM inc) AND NOT EXISTS (SELECT 1 "
    "  FROM sync_checkpoints k WHERE k.run_id = $4::bigint AND k.corp_id = $5 "
    "  AND k.dept_id = g.dept_id) "
    "  UNION ALL SELECT userid FROM users WHERE corp_id = $5 AND sync_run_id IS NULL "
    "  AND deleted_at IS NULL AND (SELECT yes FROM inc)), "
    "ca AS (SELECT array_agg(userid) AS a FROM cand), "
    "seen AS (SELECT x.userid FROM sync_checkpoints k, unnest(k.userids) AS x(userid) "
    "  WHERE k.run_id = $4::bigint AND k.corp_id = $5 AND NOT (SELECT yes FROM inc) "
    "  UNION ALL SELECT x.userid FROM sync_checkpoints k JOIN department_digests g "
    "  ON g.corp_id = k.corp_id AND g.dept_id = k.dept_id, unnest(g.userids) AS x(userid) "
    "  WHERE k.run_id = $4::bigint AND k.corp_id = $5 AND NOT (SELECT yes FROM inc)), "
    /* the candidates' lists only: the rows of the run's departments naming one */
    "seen_inc AS (SELECT x.userid FROM sync_checkpoints k JOIN department_digests g "
    "  ON g.corp_id = k.corp_id AND g.dept_id = k.dept_id, unnest(g.userids) AS x(userid) "
    "  WHERE k.run_id = $4::bigint AND k.corp_id = $5 AND g.userids && (SELECT a FROM ca) "
    "  UNION ALL SELECT x.userid FROM sync_checkpoints k, unnest(k.userids) AS x(userid) "
    "  WHERE k.run_id = $4::bigint AND k.corp_id = $5 AND k.userids && (SELECT a FROM ca)), "
    "ro AS (SELECT x.userid, array_agg(DISTINCT x.dept ORDER BY x.dept) AS depts "
    "  FROM sync_roster r, unnest(r.userids, r.depts) AS x(userid, dept) "
    "  WHERE r.run_id = $4::bigint AND r.corp_id = $5 GROUP BY x.userid), "
    "ri AS (INSERT INTO users AS u (corp_id, userid, department, raw, sync_run_id, synced_at) "
    "  SELECT $5, ro.userid, ro.depts, jsonb_build_object('userid', ro.userid, 'department', "
    "  to_jsonb(ro.depts)), $4::bigint, now() FROM ro WHERE EXISTS (SELECT 1 FROM fence) "
    "  AND NOT EXISTS (SELECT 1 FROM seen WHERE seen.userid = ro.userid) "
    "  ON CONFLICT (corp_id, userid) DO UPDATE SET department = EXCLUDED.department, "
    "  raw = coalesce(u.raw, '{}'::jsonb) || EXCLUDED.raw, sync_run_id = EXCLUDED.sync_run_id, "
    "  synced_at = EXCLUDED.synced_at, deleted_at = NULL "
    "  WHERE u.department IS DISTINCT FROM EXCLUDED.department OR u.deleted_at IS NOT NULL "
    "  RETURNING u.corp_id, u.userid, u.department), "
    "kr AS (DELETE FROM sync_roster WHERE run_id = $4::bigint AND corp_id = $5 "
    "  AND EXISTS (SELECT 1 FROM fence) RETURNING 1), "
    "fm AS (UPDATE enterprises SET fields_missing = coalesce($10::text[], fields_missing), "
    "  members_settled_run = CASE WHEN (SELECT yes FROM lists) THEN $4::bigint END "
    "  WHERE corp_id = $5 AND EXISTS (SELECT 1 FROM fence) RETURNING 1), "
    /* The members no longer there: a set difference, which PostgreSQL does by
     * hashing or sorting whatever it estimates the sizes to be (NOT EXISTS
     * against seen was planned as a nested loop once the checkpoints' statistics
     * said few rows: a third sync of the benchmark cost PostgreSQL 141 CPU s,
     * tests/bench/README.md "Tenth pass"). Not a member written after this run
     * began by someone else (a change callback, a realtime lookup): fresher than
     * what the run saw. */
    "gone AS (SELECT userid FROM users WHERE corp_id = $5 AND deleted_at IS NULL "
    "  AND sync_run_id IS DISTINCT FROM $4::bigint AND NOT (SELECT yes FROM inc) "
    "  AND NOT coalesce(users.synced_at > (SELECT created_at FROM sync_runs WHERE run_id = "
    "  $4::bigint), false) "
    "  EXCEPT SELECT userid FROM seen EXCEPT SELECT userid FROM ro), "
    "gone_inc AS (SELECT userid FROM users WHERE corp_id = $5 AND userid = ANY ((SELECT a "
    "  FROM ca)::text[]) AND deleted_at IS NULL AND sync_run_id IS DISTINCT FROM $4::bigint "
    "  AND NOT coalesce(users.synced_at > (SELECT created_at FROM sync_runs WHERE run_id = "
    "  $4::bigint), false) "
    "  EXCEPT SELECT userid FROM seen_inc), "
    "du AS (UPDATE users SET deleted_at = now() WHERE corp_id = $5 AND deleted_at IS NULL "
    "  AND userid IN (SELECT userid FROM gone UNION ALL SELECT userid FROM gone_inc) "
    "  AND EXISTS (SELECT 1 FROM fence) RETURNING userid, department), "
    "ku AS (UPDATE sync_checkpoints SET userids = NULL WHERE run_id = $4::bigint AND corp_id = $5 "
    "  AND userids IS NOT NULL AND EXISTS (SELECT 1 FROM fence) RETURNING 1), "
    "dd AS (UPDATE departments SET deleted_at = now() WHERE corp_id = $5 AND deleted_at IS NULL "
    "  AND sync_run_id IS DISTINCT FROM $4::bigint AND NOT coalesce(departments.synced_at > "
    "  (SELECT created_at FROM sync_runs WHERE run_id = $4::bigint), false) "
    "  AND EXISTS (SELECT 1 FROM fence) RETURNING dept_id), "
    /* The digests of departments gone, or (after a run by the lists) not
     * answered: the lists stay those of this run's departments. The others'
     * dropped userids were just checked. */
    "dg AS (DELETE FROM department_digests g WHERE corp_id = $5 AND EXISTS (SELECT 1 FROM fence) "
    "  AND (dept_id IN (SELECT dept_id FROM dd) OR ((SELECT yes FROM lists) AND NOT EXISTS "
    "  (SELECT 1 FROM sync_checkpoints k WHERE k.run_id = $4::bigint AND k.corp_id = $5 "
    "  AND k.dept_id = g.dept_id))) RETURNING 1), "
    "dk AS (UPDATE department_digests g SET dropped = '{}' WHERE corp_id = $5 "
    "  AND dropped <> '{}' AND (SELECT yes FROM lists) AND EXISTS (SELECT 1 FROM fence) "
    "  AND dept_id NOT IN (SELECT dept_id FROM dd) AND EXISTS (SELECT 1 FROM sync_checkpoints k "
    "  WHERE k.run_id = $4::bigint AND k.corp_id = $5 AND k.dept_id = g.dept_id) RETURNING 1), " DIGESTS_INVALIDATE(
        "SELECT $5, unnest(department), userid FROM du UNION SELECT $5, unnest(department), "
        "userid FROM ri UNION SELECT $5, unnest(o.department), ri.userid FROM ri, " WAS_ROW("ri"),
        "EXISTS (SELECT 1 FROM du) OR EXISTS (SELECT 1 FROM ri)") ", "
    "pr AS (UPDATE sync_progress SET state = 'succeeded', users_deleted = users_deleted + "
    "  (SELECT count(*) FROM du), users_upserted = users_upserted + (SELECT count(*) FROM ri), "
    "  requests = requests + $6::bigint, "
    "  retries = retries + $7::bigint, errors = errors + $8::bigint, "
    "  last_error = coalesce($9, last_error), finished_at = now(), updated_at = now() "
    "  WHERE run_id = $4::bigint AND corp_id = $5 AND EXISTS (SELECT 1 FROM fence) RETURNING 1) "
    "SELECT EXISTS (SELECT 1 FROM fence) AS fenced, (SELECT count(*) FROM du), "
    "  (SELECT count(*) FROM dd)";
/* clang-format on */

/* $4 run, $5 corp, $6 last_error, $7..$9 counters. */
static const char sql_corp_fail[] =
    "WITH " FENCE_CTE ", "
    "pr AS (UPDATE sync_progress SET state = 'failed', last_error = $6, "
    "  requests = requests + $7::bigint, retries = retries + $8::bigint, "
    "  errors = errors + $9::bigint, started_at = coalesce(started_at, now()), "
    "  finished_at = now(), updated_at = now() "
    "  WHERE run_id = $4::bigint AND corp_id = $5 AND EXISTS (SELECT 1 FROM fence) RETURNING 1) "
    "SELECT EXISTS (SELECT 1 FROM fence) AS fenced";

/* $4 run, $5 corp, $6 page number, $7 userids text[], $8 depts int[], $9 the
 * page's next_cursor ("" on the last), $10..$12 requests, retries, errors. One
 * roster page and the progress that says where the roster is, together. */
static const char sql_roster_page[] =
    "WITH " FENCE_CTE ", " ENTERPRISE_CTE ", "
    "pg AS (INSERT INTO sync_roster (run_id, corp_id, page, userids, depts) "
    "  SELECT $4::bigint, $5, $6::int, $7::text[], $8::int[] WHERE EXISTS (SELECT 1 FROM fence) "
    "  AND EXISTS (SELECT 1 FROM ent) ON CONFLICT DO NOTHING RETURNING 1), "
    "pr AS (UPDATE sync_progress SET roster_cursor = nullif($9::text, ''), "
    "  roster_pages = $6::int + 1, "
    "  roster_members = roster_members + cardinality($7::text[]), roster_done = ($9::text = ''), "
    "  requests = requests + $10::bigint, retries = retries + $11::bigint, "
    "  errors = errors + $12::bigint, updated_at = now() "
    "  WHERE run_id = $4::bigint AND corp_id = $5 AND EXISTS (SELECT 1 FROM fence) RETURNING 1) "
    "SELECT EXISTS (SELECT 1 FROM fence) AS fenced";

/* $1 run, $2 corp: the export job an earlier attempt of the run stored, and
 * whether it may still be used (its URLs valid for 5 more minutes, or not
 * known yet and the job under 2 hours old). */
static const char sql_export_read[] =
    "SELECT jobid, credential, encoding_aeskey, state, "
    "  CASE WHEN urls_expire_at IS NOT NULL THEN urls_expire_at > now() + interval '5 minutes' "
    "  ELSE created_at > now() - interval '2 hours' END AND state <> 'failed' AND jobid IS NOT "
    "  NULL AS usable FROM sync_exports WHERE run_id = $1::bigint AND corp_id = $2";

/* $4 run, $5 corp; the export job's row ($10 state NULL: no row is written):
 * $6 jobid, $7 credential, $8 encoding_aeskey, $9 block_size, $10 state, $11
 * get_result's status, $12 polls to add, $13 data_list (NULL: keep the stored
 * one if the job is the same), $14 parts done, $15 members, $16 error; the
 * enterprise's member source of this run ($17, $18 why; $18 NULL: unchanged);
 * $19..$21 requests, retries, errors for the progress row. When the export is
 * done every department counts as done. src reads ent too: ent must lock the
 * enterprise's row before src updates it, for a lock taken after the update
 * (in the same statement) finds no row, and the job's row would not be
 * written (measured: without it the export/user refusal left no sync_exports
 * row). */
static const char sql_export_save[] =
    "WITH " FENCE_CTE ", " ENTERPRISE_CTE ", "
    "ex AS (INSERT INTO sync_exports AS x (run_id, corp_id, jobid, credential, encoding_aeskey, "
    "  block_size, state, job_status, polls, data_list, urls_expire_at, parts_done, members, "
    "  error) SELECT $4::bigint, $5, $6, $7, $8, $9::int, $10, $11::int, $12::int, $13::jsonb, "
    "  CASE WHEN $13::jsonb IS NOT NULL THEN now() + interval '2 hours' END, $14::int, "
    "  $15::bigint, $16 WHERE $10::text IS NOT NULL AND EXISTS (SELECT 1 FROM fence) "
    "  AND EXISTS (SELECT 1 FROM ent) "
    "  ON CONFLICT (run_id, corp_id) DO UPDATE SET jobid = EXCLUDED.jobid, "
    "  credential = EXCLUDED.credential, encoding_aeskey = EXCLUDED.encoding_aeskey, "
    "  block_size = EXCLUDED.block_size, state = EXCLUDED.state, "
    "  job_status = coalesce(EXCLUDED.job_status, x.job_status), polls = x.polls + EXCLUDED.polls, "
    "  data_list = CASE WHEN EXCLUDED.data_list IS NOT NULL THEN EXCLUDED.data_list "
    "    WHEN EXCLUDED.jobid IS NOT DISTINCT FROM x.jobid THEN x.data_list END, "
    "  urls_expire_at = CASE WHEN EXCLUDED.data_list IS NOT NULL THEN EXCLUDED.urls_expire_at "
    "    WHEN EXCLUDED.jobid IS NOT DISTINCT FROM x.jobid THEN x.urls_expire_at END, "
    "  parts_done = EXCLUDED.parts_done, members = EXCLUDED.members, error = EXCLUDED.error, "
    "  created_at = CASE WHEN EXCLUDED.state = 'creating' THEN now() ELSE x.created_at END, "
    "  updated_at = now() RETURNING 1), "
    "src AS (UPDATE enterprises SET member_source_used = $17, member_source_reason = $18, "
    "  member_source_at = now() WHERE corp_id = $5 AND $18::text IS NOT NULL "
    "  AND EXISTS (SELECT 1 FROM fence) AND EXISTS (SELECT 1 FROM ent) RETURNING 1), "
    "pr AS (UPDATE sync_progress SET departments_done = CASE WHEN $10::text = 'done' "
    "  THEN departments_total ELSE departments_done END, requests = requests + $19::bigint, "
    "  retries = retries + $20::bigint, errors = errors + $21::bigint, updated_at = now() "
    "  WHERE run_id = $4::bigint AND corp_id = $5 AND EXISTS (SELECT 1 FROM fence) RETURNING 1) "
    "SELECT EXISTS (SELECT 1 FROM fence) AS fenced";

static const char sql_enterprises[] =
    "SELECT corp_id, corp_secret, contact_secret, api_mode, member_source FROM enterprises "
    "WHERE enabled "
    "AND ($1::text[] IS NULL OR corp_id = ANY ($1::text[])) ORDER BY corp_id";

static int prepare_all(pg_pool *pg)
{
    static const struct {
        const char *name, *sql;
    } stmts[] = {
        {Q_PROGRESS_INIT, sql_progress_init},
        {Q_PROGRESS_READ, sql_progress_read},
        {Q_DEPTS, sql_departments},
        {Q_USERS, sql_users},
        {Q_CORP_OK, sql_corp_ok},
        {Q_CORP_FAIL, sql_corp_fail},
        {Q_ROSTER, sql_roster_page},
        {Q_EXPORT_READ, sql_export_read},
        {Q_EXPORT_SAVE, sql_export_save},
    };
    for (size_t i = 0; i < sizeof(stmts) / sizeof(stmts[0]); i++) {
        /* Registered once per pool: a second job on the same pool finds them there. */
        int rc = pg_pool_prepare(pg, stmts[i].name, stmts[i].sql);
        if (rc && rc != PG_EEXIST)
            return rc;
    }
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------ */

static void ds_end_check(ds_job *j);
static void corp_pump(ds_corp *c);
static void corp_finish(ds_corp *c);
static void job_stop(ds_job *j, const char *reason);

static int lease_ok(ds_job *j)
{
    if (j->stopping)
        return 0;
    if (j->run->lease_valid && !j->run->lease_valid(j->run)) {
        job_stop(j, "lease not valid");
        return 0;
    }
    return 1;
}

/* A false `fenced` column: a successor holds the fence. */
static int check_fenced(ds_job *j, PGresult *res)
{
    if (PQntuples(res) >= 1 && PQgetvalue(res, 0, 0)[0] == 't')
        return 1;
    log_warn("directory sync: fenced out, stopping", LF_I("run_id", j->run->run_id),
             LF_I("fencing_token", j->run->fencing_token));
    if (!j->stopping) {
        if (j->run->fenced_out)
            j->run->fenced_out(j->run);
        job_stop(j, "fenced out");
    }
    return 0;
}

/* $1..$4 of every fenced statement (coordinator/fence.h): env, job, token, run. */
static void fence_params(const ds_job *j, const char **p)
{
    p[0] = j->run->env;
    p[1] = j->run->job;
    p[2] = j->token;
    p[3] = j->run_id;
}

static void fmt_ll(char *out, size_t n, long long v)
{
    snprintf(out, n, "%lld", v);
}

/* Transient database failures are worth another try; a server error about the
 * data is not. */
static int db_transient(const char *err)
{
    return !strcmp(err, "timeout") || !strcmp(err, "connection lost") ||
           strstr(err, "could not serialize") || strstr(err, "deadlock detected");
}

/* Takes the counters that the next write carries; as text too, unless req is
 * NULL (the member write puts them in its JSON). */
static void take_counters(ds_corp *c, char *req, char *ret, char *errs)
{
    c->w_requests = c->d_requests;
    c->w_retries = c->d_retries;
    c->w_errors = c->d_errors;
    c->d_requests = c->d_retries = c->d_errors = 0;
    if (!req)
        return;
    fmt_ll(req, 24, c->w_requests);
    fmt_ll(ret, 24, c->w_retries);
    fmt_ll(errs, 24, c->w_errors);
}

static void restore_counters(ds_corp *c)
{
    c->d_requests += c->w_requests;
    c->d_retries += c->w_retries;
    c->d_errors += c->w_errors;
    c->w_requests = c->w_retries = c->w_errors = 0;
}

static void add_result(ds_corp *c, const wecom_result *res)
{
    c->d_requests += res->requests;
    c->d_retries += res->retries;
}

static void corp_error(ds_corp *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void corp_error(ds_corp *c, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(c->last_error, sizeof(c->last_error), fmt, ap);
    va_end(ap);
    c->d_errors++;
}

/* ---- JSON checks -------------------------------------------------------------------- */

static int is_int(json_object *o)
{
    return o && json_object_is_type(o, json_type_int);
}

/* A member field of the given type, or absent/null. */
static int field_ok(json_object *m, const char *k, json_type t)
{
    json_object *v;

    if (!json_object_object_get_ex(m, k, &v) || !v)
        return 1;
    return json_object_is_type(v, t);
}

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

/* Collects department ids (sorted, unique) from a department/list answer. */
static int check_departments(json_object *root, long long **ids, int *nids, char *why, size_t n)
{
    json_object *arr, *d, *id;
    size_t len;
    long long *v;
    int k = 0;

    if (!json_object_object_get_ex(root, "department", &arr) ||
        !json_object_is_type(arr, json_type_array)) {
        snprintf(why, n, "no department array");
        return -1;
    }
    len = json_object_array_length(arr);
    v = malloc((len ? len : 1) * sizeof(*v));
    if (!v) {
        snprintf(why, n, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        d = json_object_array_get_idx(arr, i);
        if (!d || !json_object_is_type(d, json_type_object) ||
            !json_object_object_get_ex(d, "id", &id) || !is_int(id) ||
            json_object_get_int64(id) <= 0 || !field_ok(d, "name", json_type_string) ||
            !field_ok(d, "parentid", json_type_int) || !field_ok(d, "order", json_type_int)) {
            snprintf(why, n, "department entry %zu is malformed", i);
            free(v);
            return -1;
        }
        v[k++] = json_object_get_int64(id);
    }
    qsort(v, (size_t)k, sizeof(*v), cmp_ll);
    int u = 0;
    for (int i = 0; i < k; i++)
        if (u == 0 || v[u - 1] != v[i])
            v[u++] = v[i];
    *ids = v;
    *nids = u;
    return 0;
}

/* "{1,2,3}" */
static char *ids_literal(const long long *ids, int n)
{
    size_t cap = 3 + (size_t)n * 21;
    char *s = malloc(cap), *p;

    if (!s)
        return NULL;
    p = s;
    *p++ = '{';
    for (int i = 0; i < n; i++)
        p += snprintf(p, cap - (size_t)(p - s), "%s%lld", i ? "," : "", ids[i]);
    *p++ = '}';
    *p = '\0';
    return s;
}

/* ---- the per-department write ------------------------------------------------------- */

static void job_write_pump(ds_job *j);
static void on_written(void *arg, PGresult *res, const char *err);

static void writing_free(ds_corp *c)
{
    for (int i = 0; i < c->nwriting; i++) {
        c->job->buffered -= sync_batch_bytes(c->writing[i]);
        sync_batch_free(c->writing[i]);
    }
    c->nwriting = 0;
}

/* The write queue: a ring of ncorps slots. */
static void wq_push(ds_job *j, ds_corp *c, int front)
{
    if (front) {
        j->wq_head = (j->wq_head + j->ncorps - 1) % j->ncorps;
        j->wq[j->wq_head] = c;
    } else {
        j->wq[(j->wq_head + j->wq_n) % j->ncorps] = c;
    }
    j->wq_n++;
    c->queued = 1;
}

static ds_corp *wq_pop(ds_job *j)
{
    ds_corp *c = j->wq[j->wq_head];

    j->wq_head = (j->wq_head + 1) % j->ncorps;
    j->wq_n--;
    c->queued = 0;
    return c;
}

/* The three arrays sql_users takes ($5 enterprises, $6 members that may be in
 * users, $7 members surely not), one writer each. */
typedef struct write_params {
    buf b[3];
    jw w[3];
} write_params;

/* Appends an enterprise's part of the arrays. 0, or -ENOMEM. */
static int write_group(write_params *wp, ds_corp *c)
{
    sync_params sp;
    jw *meta = &wp->w[0];

    if (sync_batch_params(c->writing, c->nwriting, c->fresh ? &c->written : NULL, &c->mmap, &sp))
        return -ENOMEM;
    jw_obj_begin(meta);
    jw_kstr(meta, "c", c->corp_id);
    jw_key(meta, "d");
    jw_raw(meta, sp.depts);
    jw_kint(meta, "e", c->w_errors);
    jw_kint(meta, "q", c->w_requests);
    jw_kint(meta, "r", c->w_retries);
    if (c->note[0])
        jw_kstr(meta, "t", c->note);
    else
        jw_knull(meta, "t");
    jw_obj_end(meta);
    for (int k = 1; k <= 2; k++) {
        const char *members = k == 1 ? sp.members : sp.fresh;
        if (!members)
            continue;
        jw_arr_begin(&wp->w[k]);
        jw_str(&wp->w[k], c->corp_id);
        jw_raw(&wp->w[k], members);
        jw_arr_end(&wp->w[k]);
    }
    sync_params_free(&sp);
    return 0;
}

/* Sends w's statement (again, after a failure). On an error nothing is sent:
 * its departments fail and w is freed. */
static void write_issue(ds_write *w)
{
    ds_job *j = w->job;
    const char *p[7];
    write_params wp;
    int rc = 0;

    if (!lease_ok(j)) {
        free(w); /* the batches stay with their enterprises, freed with the job */
        return;
    }
    for (int i = 0; i < w->ncorps; i++)
        take_counters(w->corps[i], NULL, NULL, NULL);
    for (int k = 0; k < 3; k++) {
        buf_init(&wp.b[k]);
        jw_init(&wp.w[k], &wp.b[k]);
        jw_arr_begin(&wp.w[k]);
    }
    for (int i = 0; i < w->ncorps && !rc; i++)
        rc = write_group(&wp, w->corps[i]);
    for (int k = 0; k < 3; k++) {
        jw_arr_end(&wp.w[k]);
        if (!rc && wp.b[k].oom)
            rc = -ENOMEM;
    }
    if (!rc) {
        fence_params(j, p);
        p[4] = wp.b[0].data;
        p[5] = wp.b[1].data;
        p[6] = wp.b[2].data;
        rc = pg_query_prepared(j->run->pg, Q_USERS, 7, p, on_written, w);
    }
    for (int k = 0; k < 3; k++)
        buf_free(&wp.b[k]);
    if (rc) {
        for (int i = 0; i < w->ncorps; i++) {
            ds_corp *c = w->corps[i];
            restore_counters(c);
            corp_error(c, "department %lld: cannot queue the write (%d)", c->writing[0]->dept_id,
                       rc);
            c->failed_depts += c->nwriting;
            member_map_free(&c->mmap); /* it may say what was not written */
            c->alone = 0;
            writing_free(c);
        }
        for (int i = 0; i < w->ncorps; i++)
            corp_pump(w->corps[i]);
        free(w);
        return;
    }
    for (int i = 0; i < w->ncorps; i++)
        w->corps[i]->note[0] = '\0';
    j->db_inflight++;
    j->writes++;
}

/* Starts member writes while fewer than DS_WRITES_MAX are in flight: each takes
 * the enterprises at the head of the queue, with every department they hold
 * ready, up to DS_STMT_DEPTS_MAX departments. */
static void job_write_pump(ds_job *j)
{
    int max = tuning.writes_max > 0 ? tuning.writes_max : DS_WRITES_MAX;

    while (!j->stopping && j->writes < max && j->wq_n) {
        ds_write *w = calloc(1, sizeof(*w));
        int depts = 0;

        if (!w)
            return; /* the queue waits for the next write to end */
        w->job = j;
        while (j->wq_n && w->ncorps < DS_STMT_DEPTS_MAX) {
            ds_corp *c = j->wq[j->wq_head];
            int n = c->nwriting ? c->nwriting : c->nready;
            if (w->ncorps && (c->alone || depts + n > DS_STMT_DEPTS_MAX))
                break;
            wq_pop(j);
            if (!c->nwriting) {
                memcpy(c->writing, c->ready, (size_t)n * sizeof(c->ready[0]));
                c->nready = 0;
                c->nwriting = n;
            }
            w->corps[w->ncorps++] = c;
            depts += n;
            if (c->alone)
                break;
        }
        write_issue(w);
    }
}

/* A plain INSERT of sql_users met a row of users: something else wrote a member
 * of an enterprise of the statement during its first sync. */
static int met_row(const ds_write *w, const PGresult *res)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    int fresh = 0;

    for (int i = 0; i < w->ncorps; i++)
        fresh |= w->corps[i]->fresh;
    return fresh && state && !strcmp(state, "23505");
}

static void on_written(void *arg, PGresult *res, const char *err)
{
    ds_write *w = arg;
    ds_job *j = w->job;
    int depts = 0;

    j->db_inflight--;
    j->writes--;
    if (j->stopping) {
        for (int i = 0; i < w->ncorps; i++)
            writing_free(w->corps[i]);
        free(w);
        ds_end_check(j);
        return;
    }
    if (err) {
        for (int i = 0; i < w->ncorps; i++)
            restore_counters(w->corps[i]);
    }
    if (err && met_row(w, res)) {
        /* The statement wrote nothing: the same departments again, every member
         * through ON CONFLICT, as for the rest of these enterprises. */
        for (int i = 0; i < w->ncorps; i++) {
            ds_corp *c = w->corps[i];
            if (c->fresh)
                log_info("directory sync: a member was written meanwhile, upserting from now on",
                         LF_S("corp_id", c->corp_id), LF_I("dept_id", c->writing[0]->dept_id));
            c->fresh = 0;
            uid_set_free(&c->written);
        }
        write_issue(w);
        return;
    }
    if (err && db_transient(err) && ++w->attempts < DS_WRITE_ATTEMPTS) {
        log_warn("directory sync: department write failed, retrying",
                 LF_S("corp_id", w->corps[0]->corp_id), LF_I("enterprises", w->ncorps),
                 LF_S("error", err));
        write_issue(w);
        return;
    }
    if (err && w->ncorps > 1) {
        /* One enterprise's data may be what PostgreSQL refused: each goes again
         * on its own, first in the queue, so only the culprit's departments fail. */
        log_warn("directory sync: department write failed, writing its enterprises apart",
                 LF_I("enterprises", w->ncorps), LF_S("error", err));
        for (int i = w->ncorps - 1; i >= 0; i--) {
            w->corps[i]->alone = 1;
            wq_push(j, w->corps[i], 1);
        }
        free(w);
        job_write_pump(j);
        return;
    }
    if (err) {
        ds_corp *c = w->corps[0];
        long long first = c->writing[0]->dept_id;
        corp_error(c, "department %lld: database: %.300s", first, err);
        log_error("directory sync: department write failed", LF_S("corp_id", c->corp_id),
                  LF_I("dept_id", first), LF_I("departments", c->nwriting), LF_S("error", err));
        c->failed_depts += c->nwriting;
        member_map_free(&c->mmap); /* it says what this statement did not write */
    } else if (!check_fenced(j, res)) {
        for (int i = 0; i < w->ncorps; i++)
            writing_free(w->corps[i]);
        free(w);
        ds_end_check(j);
        return;
    } else {
        for (int i = 0; i < w->ncorps; i++) {
            ds_corp *c = w->corps[i];
            for (int k = 0; k < c->nwriting; k++)
                c->users_seen += c->writing[k]->members;
            depts += c->nwriting;
        }
        metrics_counter_add(M_DEPARTMENTS_SYNCED, NULL, depts);
        metrics_counter_add(M_MEMBERS_SYNCED, NULL, strtod(PQgetvalue(res, 0, 1), NULL));
    }
    for (int i = 0; i < w->ncorps; i++) {
        w->corps[i]->alone = 0;
        writing_free(w->corps[i]);
    }
    for (int i = 0; i < w->ncorps && !j->stopping; i++)
        corp_pump(w->corps[i]);
    free(w);
    job_write_pump(j);
    /* Memory freed: enterprises that waited for the buffer may fetch again. */
    if (j->buffered < DS_BUFFER_MAX && !j->stopping)
        for (int i = 0; i < j->ncorps && !j->stopping; i++)
            if (j->corps[i].starved)
                corp_pump(&j->corps[i]);
}

/* ---- what no retry fixes ------------------------------------------------------------ */

/* A forbidden errcode (sync_modern.h): the enterprise stops fetching and fails
 * with what to do about it, once, with an alert of its own kind. */
static void corp_forbidden(ds_corp *c, const char *api, wecom_cred cred, const wecom_result *res)
{
    char msg[DS_ERR_MAX];

    sync_forbidden_message(api, wecom_cred_name(cred), res->errcode, res->errmsg, msg, sizeof(msg));
    if (!c->permanent) {
        log_error("directory sync: the upstream refuses this credential or egress",
                  LF_S("corp_id", c->corp_id), LF_I("errcode", res->errcode), LF_S("error", msg));
        alert_raise(ALERT_UPSTREAM_FORBIDDEN, msg, c->corp_id, c->job->run->run_id);
        if (c->job->run->egress_refused && (res->errcode == 60020 || res->errcode == 48009))
            c->job->run->egress_refused(c->job->run, msg);
    }
    c->permanent = 1;
    snprintf(c->last_error, sizeof(c->last_error), "%s", msg);
    c->d_errors++;
}

/* ---- department digests (sql/008) --------------------------------------------------- */

static int cmp_digest(const void *a, const void *b)
{
    const ds_digest *x = a, *y = b;
    return (x->dept > y->dept) - (x->dept < y->dept);
}

/* Parses sql_departments' "id:hex,..." (in id order) into c->digests. Without
 * memory, or on text it cannot read, there are none: every answer is written,
 * which is only slower. */
static void digests_load(ds_corp *c, const char *text)
{
    size_t cap = 1;
    const char *p = text;
    int n = 0;

    free(c->digests);
    c->digests = NULL;
    c->ndigests = 0;
    if (!*text)
        return;
    for (const char *q = text; *q; q++)
        cap += *q == ',';
    c->digests = malloc(cap * sizeof(*c->digests));
    if (!c->digests)
        return;
    while (*p) {
        char *end;
        ds_digest *d = &c->digests[n];
        d->dept = strtoll(p, &end, 10);
        if (end == p || *end != ':')
            goto bad;
        p = end + 1;
        if (strspn(p, "0123456789abcdef") != SYNC_DIGEST_HEX)
            goto bad;
        memcpy(d->d, p, SYNC_DIGEST_HEX);
        p += SYNC_DIGEST_HEX;
        if (*p && *p++ != ',')
            goto bad;
        n++;
    }
    c->ndigests = n;
    return;
bad:
    log_warn("directory sync: unreadable department digests, writing every answer",
             LF_S("corp_id", c->corp_id));
    free(c->digests);
    c->digests = NULL;
}

/* Whether b's department last answered these very members (and nothing has
 * written them since: sql/008). */
static int digest_unchanged(const ds_corp *c, const ds_batch *b)
{
    ds_digest key = {.dept = b->dept_id}, *d;

    if (!b->record || !c->ndigests)
        return 0;
    d = bsearch(&key, c->digests, (size_t)c->ndigests, sizeof(*d), cmp_digest);
    return d && !memcmp(d->d, b->digest, SYNC_DIGEST_HEX);
}

/* ---- fetching ----------------------------------------------------------------------- */

static void on_user_list(void *arg, const wecom_result *res);

static void fetch_next(ds_corp *c)
{
    ds_job *j = c->job;
    int rc;

    /* Legacy: the directory credential reads everything. Modern: details come
     * from the app, within its visible range (c->depts is that range). */
    rc = wecom_user_list_text_as(j->wc, c->corp_id, c->modern ? WECOM_CRED_APP : c->dir_cred,
                                 c->depts[c->next], on_user_list, c);
    if (rc) {
        corp_error(c, "department %lld: cannot queue user/list (%d)", c->depts[c->next], rc);
        c->failed_depts++;
        c->next++;
        return;
    }
    c->next++;
    c->fetching = 1;
}

static void on_user_list(void *arg, const wecom_result *res)
{
    ds_corp *c = arg;
    ds_job *j = c->job;
    long long dept = c->depts[c->next - 1];
    ds_batch *b;
    char why[200];
    int n;

    c->fetching = 0;
    add_result(c, res);
    if (j->stopping || res->status == WECOM_E_STOPPED) {
        ds_end_check(j);
        if (!j->stopping)
            job_stop(j, "upstream client stopped");
        return;
    }
    if (res->status == WECOM_E_QUOTA) {
        c->quota_hit = 1;
        log_warn("directory sync: daily quota reached, enterprise stops",
                 LF_S("corp_id", c->corp_id));
        corp_pump(c);
        return;
    }
    if (res->status == WECOM_E_ERRCODE && res->errcode == 60003) {
        /* The department vanished since department/list: nothing to fetch. */
        snprintf(c->note, sizeof(c->note), "department %lld: unknown upstream (60003), skipped",
                 dept);
        log_info("directory sync: department unknown upstream, skipped",
                 LF_S("corp_id", c->corp_id), LF_I("dept_id", dept));
        n = 0;
        b = calloc(1, sizeof(*b));
        if (!b)
            goto oom;
        b->dept_id = dept;
        c->ready[c->nready++] = b;
        corp_pump(c);
        return;
    }
    if (res->status == WECOM_E_ERRCODE && sync_forbidden(res->errcode)) {
        corp_forbidden(c, "user/list", c->modern ? WECOM_CRED_APP : c->dir_cred, res);
        c->failed_depts++;
        corp_pump(c);
        return;
    }
    if (res->status != WECOM_OK) {
        corp_error(c, "department %lld: %s", dept, res->error ? res->error : "failed");
        log_warn("directory sync: department failed", LF_S("corp_id", c->corp_id),
                 LF_I("dept_id", dept), LF_S("error", c->last_error));
        c->failed_depts++;
        corp_pump(c);
        return;
    }
    b = calloc(1, sizeof(*b));
    if (!b)
        goto oom;
    b->dept_id = dept;
    n = sync_batch_parse(b, res->body, res->body_len, why, sizeof(why));
    if (n < 0) {
        free(b);
        corp_error(c, "department %lld: malformed user/list answer: %s", dept, why);
        log_warn("directory sync: department failed", LF_S("corp_id", c->corp_id),
                 LF_I("dept_id", dept), LF_S("error", c->last_error));
        c->failed_depts++;
        corp_pump(c);
        return;
    }
    if (n > 0) {
        c->fields_present |= sync_fields_present(res->body, res->body_len);
        c->member_answers++;
    }
    if (digest_unchanged(c, b)) {
        /* Only its counts are written: its text is not needed any more. */
        b->unchanged = 1;
        free(b->body);
        free(b->m);
        b->body = NULL;
        b->m = NULL;
        b->len = 0;
        c->unchanged++;
        metrics_counter_add(M_DEPARTMENTS_UNCHANGED, NULL, 1);
    }
    j->buffered += sync_batch_bytes(b);
    c->ready[c->nready++] = b;
    corp_pump(c);
    return;
oom:
    corp_error(c, "department %lld: out of memory", dept);
    c->failed_depts++;
    corp_pump(c);
}

/* Moves the enterprise forward: start the next fetch and the next write if their
 * slots are free; end the enterprise when nothing is left. */
static void export_pump(ds_corp *c);

/* Unchanged departments cost a statement of their own for little: their
 * checkpoints wait until DS_BATCH_MAX of them are ready (0.8 s of answers at
 * 10/s), a changed one joins them, or the enterprise fetches nothing more.
 * With CORPS=50, a later sync of an unchanged directory went from 0.25x to
 * 0.14x of the first sync's PostgreSQL CPU (tests/bench/README.md, "Tenth
 * pass"); a leader that dies loses no more than the DS_BATCH_MAX ready
 * departments it could already lose. An enterprise with digests (a later
 * sync) sends only the changed members of a changed department (member_map.h),
 * so its changed departments wait too ("Eleventh pass"). */
static int hold_ready(const ds_corp *c)
{
    if (c->nready >= DS_BATCH_MAX || c->fetching == 0 || c->quota_hit || c->permanent ||
        c->next >= c->ndepts)
        return 0;
    if (c->ndigests)
        return 1;
    for (int i = 0; i < c->nready; i++)
        if (!c->ready[i]->unchanged)
            return 0;
    return 1;
}

static void corp_pump(ds_corp *c)
{
    ds_job *j = c->job;

    if (j->stopping || c->state != CS_DEPTS)
        return;
    if (c->use_export) {
        export_pump(c);
        if (j->stopping || c->state != CS_DEPTS)
            return;
    }
    c->starved = 0;
    while (!c->fetching && c->nready < DS_BATCH_MAX && !c->quota_hit && !c->permanent &&
           c->next < c->ndepts) {
        if (j->buffered >= DS_BUFFER_MAX) {
            c->starved = 1;
            break;
        }
        if (!lease_ok(j))
            return;
        fetch_next(c);
    }
    /* After the next fetch started: hold_ready waits only while one is out. */
    if (!c->nwriting && c->nready && !c->queued && !hold_ready(c)) {
        wq_push(j, c, 0);
        job_write_pump(j);
        if (j->stopping)
            return;
    }
    if (!c->fetching && !c->nready && !c->nwriting && !c->ex_wait &&
        (c->quota_hit || c->permanent || c->next >= c->ndepts) &&
        (!c->use_export || c->ex_complete || c->ex_failed))
        corp_finish(c);
}

/* ---- the department list ------------------------------------------------------------ */

static void on_departments_written(void *arg, PGresult *res, const char *err);

static void corp_fail(ds_corp *c, const char *why);

static void departments_write(ds_corp *c, const char *body);
static void modern_start(ds_corp *c);

/* The common start of every answer of the enterprise's first steps: 0 when the
 * answer may be used, else the enterprise (or the job) has been dealt with. */
static int listing_answer(ds_corp *c, const wecom_result *res, const char *api, wecom_cred cred)
{
    ds_job *j = c->job;

    add_result(c, res);
    if (j->stopping || res->status == WECOM_E_STOPPED) {
        ds_end_check(j);
        if (!j->stopping)
            job_stop(j, "upstream client stopped");
        return -1;
    }
    if (res->status == WECOM_E_QUOTA) {
        c->quota_hit = 1;
        corp_fail(c, "daily quota");
        return -1;
    }
    if (res->status == WECOM_E_ERRCODE && sync_forbidden(res->errcode)) {
        corp_forbidden(c, api, cred, res);
        corp_fail(c, c->last_error);
        return -1;
    }
    if (res->status != WECOM_OK) {
        corp_error(c, "%s", res->error ? res->error : "failed");
        corp_fail(c, c->last_error);
        return -1;
    }
    return 0;
}

static void on_department_list(void *arg, const wecom_result *res)
{
    ds_corp *c = arg;
    char why[200];

    /* auto: the legacy call is the probe. 48009 to the contact-sync secret means
     * this egress came after 2022-08-15: the modern calls are what it may use. */
    if (res->status == WECOM_E_ERRCODE && res->errcode == 48009 && !c->mode_decided &&
        !strcmp(c->api_mode, "auto") && c->dir_cred == WECOM_CRED_CONTACT) {
        char ip[64];
        add_result(c, res);
        sync_forbidden_ip(res->errmsg, ip, sizeof(ip));
        snprintf(c->mode_reason, sizeof(c->mode_reason),
                 "auto: department/list with the contact-sync secret answered 48009 (api "
                 "forbidden)%s%s: modern (department/simplelist, user/list_id)",
                 ip[0] ? " from egress IP " : "", ip);
        log_info("directory sync: legacy calls forbidden, using the modern API",
                 LF_S("corp_id", c->corp_id));
        c->modern = 1;
        c->mode_decided = 1;
        modern_start(c);
        return;
    }
    if (listing_answer(c, res, "department/list", c->dir_cred))
        return;
    if (!c->mode_decided) {
        if (!strcmp(c->api_mode, "legacy"))
            snprintf(c->mode_reason, sizeof(c->mode_reason),
                     "legacy: set by the operator (--api-mode legacy)");
        else
            snprintf(c->mode_reason, sizeof(c->mode_reason),
                     "auto: department/list with the %s is permitted: legacy",
                     wecom_cred_name(c->dir_cred));
        c->mode_decided = 1;
    }
    if (check_departments(res->json, &c->depts, &c->ndepts, why, sizeof(why))) {
        corp_error(c, "department/list: malformed answer: %s", why);
        corp_fail(c, c->last_error);
        return;
    }
    departments_write(c, res->body);
}

/* Modern, 2: the app's department/list names the departments and says which the
 * app may read members of. */
static void on_app_departments(void *arg, const wecom_result *res)
{
    ds_corp *c = arg;
    char why[200], *tree = NULL;
    int rc;

    if (listing_answer(c, res, "department/list", WECOM_CRED_APP))
        return;
    rc = sync_modern_departments(c->simplelist, res->json, &tree, &c->depts, &c->ndepts, why,
                                 sizeof(why));
    json_object_put(c->simplelist);
    c->simplelist = NULL;
    if (rc) {
        corp_error(c, "%s", why);
        corp_fail(c, c->last_error);
        return;
    }
    departments_write(c, tree);
    free(tree);
}

/* Modern, 1: the whole tree. */
static void on_simplelist(void *arg, const wecom_result *res)
{
    ds_corp *c = arg;
    int rc;

    if (listing_answer(c, res, "department/simplelist", c->dir_cred))
        return;
    c->simplelist = json_object_get(res->json);
    rc = wecom_department_list_as(c->job->wc, c->corp_id, WECOM_CRED_APP, 0, on_app_departments, c);
    if (rc) {
        corp_error(c, "cannot queue department/list (%d)", rc);
        corp_fail(c, c->last_error);
    }
}

static void modern_start(ds_corp *c)
{
    int rc = wecom_department_simplelist(c->job->wc, c->corp_id, c->dir_cred, on_simplelist, c);

    c->state = CS_LISTING;
    if (rc) {
        corp_error(c, "cannot queue department/simplelist (%d)", rc);
        corp_fail(c, c->last_error);
    }
}

/* The departments (body: a department/list answer or the merged tree) and the
 * run's mode, in one fenced statement; c->depts are the ones to fetch. */
static void departments_write(ds_corp *c, const char *body)
{
    ds_job *j = c->job;
    char total[24], req[24], ret[24], errs[24];
    char *ids = NULL;
    const char *p[13];
    int rc;

    c->total = c->ndepts;
    ids = ids_literal(c->depts, c->ndepts);
    if (!ids) {
        corp_error(c, "out of memory");
        corp_fail(c, c->last_error);
        return;
    }
    if (!lease_ok(j)) {
        free(ids);
        return;
    }
    fmt_ll(total, sizeof(total), c->ndepts);
    take_counters(c, req, ret, errs);
    fence_params(j, p);
    p[4] = c->corp_id;
    p[5] = body;
    p[6] = total;
    p[7] = ids;
    p[8] = req;
    p[9] = ret;
    p[10] = errs;
    p[11] = c->modern ? "modern" : "legacy";
    p[12] = c->mode_reason[0] ? c->mode_reason : NULL;
    /* libpq copies the parameters, so the answer need not outlive this callback. */
    rc = pg_query_prepared(j->run->pg, Q_DEPTS, 13, p, on_departments_written, c);
    free(ids);
    if (rc) {
        restore_counters(c);
        corp_error(c, "cannot queue the department write (%d)", rc);
        corp_fail(c, c->last_error);
        return;
    }
    j->db_inflight++;
}

/* ---- the roster (modern) ------------------------------------------------------------ */

static void on_roster(void *arg, const wecom_result *res);
static void on_roster_written(void *arg, PGresult *res, const char *err);

static void roster_next(ds_corp *c)
{
    ds_job *j = c->job;
    int rc;

    if (!lease_ok(j))
        return;
    c->state = CS_ROSTER;
    rc = wecom_user_list_id(j->wc, c->corp_id, c->dir_cred, c->roster_cursor, DS_ROSTER_LIMIT,
                            on_roster, c);
    if (rc) {
        corp_error(c, "cannot queue user/list_id (%d)", rc);
        corp_fail(c, c->last_error);
    }
}

static void on_roster(void *arg, const wecom_result *res)
{
    ds_corp *c = arg;
    ds_job *j = c->job;
    char why[200], page[24], req[24], ret[24], errs[24], *uids = NULL, *depts = NULL;
    const char *next = "", *p[12];
    int rows = 0, rc;

    if (listing_answer(c, res, "user/list_id", c->dir_cred))
        return;
    if (sync_modern_roster_page(res->json, &uids, &depts, &rows, &next, why, sizeof(why))) {
        corp_error(c, "%s", why);
        corp_fail(c, c->last_error);
        return;
    }
    free(c->roster_pending);
    c->roster_pending = strdup(next);
    if (!c->roster_pending || !lease_ok(j)) {
        free(uids);
        free(depts);
        if (!c->roster_pending) {
            corp_error(c, "out of memory");
            corp_fail(c, c->last_error);
        }
        return;
    }
    c->roster_rows = rows;
    fmt_ll(page, sizeof(page), c->roster_pages);
    take_counters(c, req, ret, errs);
    fence_params(j, p);
    p[4] = c->corp_id;
    p[5] = page;
    p[6] = uids;
    p[7] = depts;
    p[8] = next;
    p[9] = req;
    p[10] = ret;
    p[11] = errs;
    rc = pg_query_prepared(j->run->pg, Q_ROSTER, 12, p, on_roster_written, c);
    free(uids);
    free(depts);
    if (rc) {
        restore_counters(c);
        corp_error(c, "cannot queue the roster write (%d)", rc);
        corp_fail(c, c->last_error);
        return;
    }
    j->db_inflight++;
}

/* The common start of the answer to one enterprise's own write (its
 * departments, a roster page): 0 when the write committed and the job goes on;
 * else the enterprise (or the job) has been dealt with. what names the step in
 * the error. */
static int corp_write_back(ds_corp *c, PGresult *res, const char *err, const char *what)
{
    ds_job *j = c->job;

    j->db_inflight--;
    if (j->stopping) {
        ds_end_check(j);
        return -1;
    }
    if (err) {
        restore_counters(c);
        corp_error(c, "%s: database: %.300s", what, err);
        log_error("directory sync: enterprise write failed", LF_S("corp_id", c->corp_id),
                  LF_S("step", what), LF_S("error", err));
        corp_fail(c, c->last_error);
        return -1;
    }
    if (!check_fenced(j, res)) {
        ds_end_check(j);
        return -1;
    }
    return 0;
}

static void on_roster_written(void *arg, PGresult *res, const char *err)
{
    ds_corp *c = arg;

    if (corp_write_back(c, res, err, "user/list_id"))
        return;
    c->roster_pages++;
    c->roster_members += c->roster_rows;
    free(c->roster_cursor);
    c->roster_cursor = NULL;
    if (!c->roster_pending[0]) {
        c->roster_done = 1;
        log_info("directory sync: roster read", LF_S("corp_id", c->corp_id),
                 LF_I("pages", c->roster_pages), LF_I("memberships", c->roster_members));
        c->state = CS_DEPTS;
        corp_pump(c);
        return;
    }
    c->roster_cursor = c->roster_pending;
    c->roster_pending = NULL;
    roster_next(c);
}

/* Parses "{1,2,3}" and drops those departments from the fetch list. */
static void skip_checkpointed(ds_corp *c, const char *arr)
{
    const char *p = arr;
    int w = 0, k = 0, n = 0;
    long long *done = malloc((strlen(arr) / 2 + 1) * sizeof(*done));

    if (!done)
        return; /* fetching again is safe, only slower */
    while (*p) {
        char *end;
        long long v;
        if (*p < '0' || *p > '9') {
            p++;
            continue;
        }
        v = strtoll(p, &end, 10);
        done[n++] = v;
        p = end;
    }
    qsort(done, (size_t)n, sizeof(*done), cmp_ll);
    for (int i = 0; i < c->ndepts; i++) {
        while (k < n && done[k] < c->depts[i])
            k++;
        if (k < n && done[k] == c->depts[i])
            continue;
        c->depts[w++] = c->depts[i];
    }
    free(done);
    if (w < c->ndepts)
        log_info("directory sync: resuming enterprise from checkpoints",
                 LF_S("corp_id", c->corp_id), LF_I("departments_done", c->ndepts - w),
                 LF_I("departments_left", w));
    c->ndepts = w;
}

static int source_choose(ds_corp *c);
static void export_begin(ds_corp *c);
static void export_record_source(ds_corp *c);

static void on_departments_written(void *arg, PGresult *res, const char *err)
{
    ds_corp *c = arg;

    if (corp_write_back(c, res, err, "department/list"))
        return;
    skip_checkpointed(c, PQgetvalue(res, 0, 2));
    c->fresh = PQgetvalue(res, 0, 3)[0] == 't';
    /* (an enterprise without users rows trusts no digest: sql/009) */
    digests_load(c, PQgetisnull(res, 0, 4) || c->fresh ? "" : PQgetvalue(res, 0, 4));
    if (member_map_load_hex(&c->mmap,
                            PQgetisnull(res, 0, 5) || c->fresh ? "" : PQgetvalue(res, 0, 5)))
        log_warn("directory sync: unreadable member hashes, sending every member of a changed "
                 "department",
                 LF_S("corp_id", c->corp_id));
    if (c->modern && !c->roster_done) {
        roster_next(c);
        return;
    }
    if (source_choose(c)) {
        export_begin(c);
        return;
    }
    if (c->source_reason[0])
        export_record_source(c); /* why user/list; the members go on meanwhile */
    c->state = CS_DEPTS;
    corp_pump(c);
}

/* ---- members from an export job ------------------------------------------------------ */

/* What follows a save of the export's row. */
enum { EXA_NONE = 0, EXA_CREATE, EXA_POLL, EXA_DOWNLOAD, EXA_FALLBACK };

typedef struct ex_save {
    ds_corp *c;
    int action;
} ex_save;

static void export_create(ds_corp *c);
static void export_poll(ds_corp *c);
static void on_export_created(void *arg, const wecom_result *res);
static void on_export_read(void *arg, PGresult *res, const char *err);
static void export_fail(ds_corp *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static const char *cred_key(wecom_cred cred)
{
    return cred == WECOM_CRED_CONTACT ? "contact" : "app";
}

/* Whether this run reads members from an export job (1) or user/list (0), and
 * why, into c->source_reason. */
static int source_choose(ds_corp *c)
{
    const char *src = c->member_source;

    c->use_export = 0;
    c->source_reason[0] = '\0';
    if (!src[0] || !strcmp(src, "user_list"))
        return 0;
    if (c->modern) {
        snprintf(c->source_reason, sizeof(c->source_reason),
                 "%s: the run uses the modern API (user/list per department within the app's "
                 "visible range): user_list",
                 src);
    } else if (!strcmp(src, "export")) {
        snprintf(c->source_reason, sizeof(c->source_reason),
                 "export: set by the operator (--member-source export)");
        c->use_export = 1;
    } else if (c->total > DS_EXPORT_AUTO_DEPTS) {
        snprintf(c->source_reason, sizeof(c->source_reason),
                 "auto: %d departments, more than %d: export", c->total, DS_EXPORT_AUTO_DEPTS);
        c->use_export = 1;
    } else {
        snprintf(c->source_reason, sizeof(c->source_reason),
                 "auto: %d departments, at most %d: user_list", c->total, DS_EXPORT_AUTO_DEPTS);
    }
    return c->use_export;
}

static void on_export_saved(void *arg, PGresult *res, const char *err);

/* One fenced statement: the export's row in state (NULL: no row), the member
 * source when source_reason is set (then cleared: written once), and the
 * progress counters; then `action`. */
static void export_save(ds_corp *c, const char *state, const char *error, int action)
{
    ds_job *j = c->job;
    char block[24], status[24], polls[24], parts[24], members[24], req[24], ret[24], errs[24];
    const char *p[21];
    ex_save *sv;
    int rc;

    if (!lease_ok(j))
        return;
    sv = malloc(sizeof(*sv));
    if (!sv) {
        corp_error(c, "export: out of memory");
        corp_fail(c, c->last_error);
        return;
    }
    sv->c = c;
    sv->action = action;
    fmt_ll(block, sizeof(block), DS_EXPORT_BLOCK);
    fmt_ll(status, sizeof(status), c->ex_status);
    fmt_ll(polls, sizeof(polls), c->ex_polls_unsaved);
    fmt_ll(parts, sizeof(parts), c->ex_part);
    fmt_ll(members, sizeof(members), (long long)c->ex_members);
    take_counters(c, req, ret, errs);
    fence_params(j, p);
    p[4] = c->corp_id;
    p[5] = c->ex_jobid;
    p[6] = cred_key(c->ex_cred);
    p[7] = c->ex_key;
    p[8] = block;
    p[9] = c->ex_key[0] ? state : NULL;
    p[10] = c->ex_status >= 0 ? status : NULL;
    p[11] = polls;
    p[12] = action == EXA_DOWNLOAD ? c->ex_data_list : NULL;
    p[13] = parts;
    p[14] = members;
    p[15] = error;
    p[16] = c->use_export ? "export" : "user_list";
    p[17] = c->source_reason[0] ? c->source_reason : NULL;
    p[18] = req;
    p[19] = ret;
    p[20] = errs;
    rc = pg_query_prepared(j->run->pg, Q_EXPORT_SAVE, 21, p, on_export_saved, sv);
    if (rc) {
        free(sv);
        restore_counters(c);
        corp_error(c, "export: cannot queue the job's write (%d)", rc);
        corp_fail(c, c->last_error);
        return;
    }
    c->ex_polls_unsaved = 0;
    c->source_reason[0] = '\0';
    j->db_inflight++;
}

static void on_ex_timer(uv_timer_t *t);

static void export_record_source(ds_corp *c)
{
    export_save(c, NULL, NULL, EXA_NONE);
}

static void ex_wait(ds_corp *c, int what, uint64_t ms)
{
    ds_job *j = c->job;

    c->ex_wait = what;
    c->ex_wait_until = time_mono_us() + ms * 1000;
    if (!j->ex_timer_on) {
        j->ex_timer_on = 1;
        uv_timer_start(&j->ex_timer, on_ex_timer, 50, 50);
    }
}

static void on_export_saved(void *arg, PGresult *res, const char *err)
{
    ex_save *sv = arg;
    ds_corp *c = sv->c;
    ds_job *j = c->job;
    int action = sv->action;

    free(sv);
    j->db_inflight--;
    if (j->stopping) {
        ds_end_check(j);
        return;
    }
    if (err) {
        restore_counters(c);
        log_error("directory sync: export job write failed", LF_S("corp_id", c->corp_id),
                  LF_S("error", err));
        if (action == EXA_NONE || action == EXA_FALLBACK) {
            /* Only the record of the job or the source is lost; the members go on. */
            if (action == EXA_FALLBACK) {
                c->state = CS_DEPTS;
                corp_pump(c);
            }
            return;
        }
        export_fail(c, "export: database: %.300s", err);
        return;
    }
    if (!check_fenced(j, res)) {
        ds_end_check(j);
        return;
    }
    switch (action) {
    case EXA_CREATE: {
        int rc = wecom_export_user(j->wc, c->corp_id, c->ex_cred, c->ex_key, DS_EXPORT_BLOCK,
                                   on_export_created, c);
        if (rc) {
            corp_error(c, "cannot queue export/user (%d)", rc);
            corp_fail(c, c->last_error);
            return;
        }
        c->fetching = 1;
        break;
    }
    case EXA_POLL:
        ex_wait(c, EXW_POLL, DS_EXPORT_POLL_MS);
        break;
    case EXA_DOWNLOAD:
        c->state = CS_DEPTS;
        c->next = c->ndepts; /* no user/list: the files hold every member */
        corp_pump(c);
        break;
    case EXA_FALLBACK:
        c->state = CS_DEPTS;
        corp_pump(c);
        break;
    default:
        break;
    }
}

/* The export is refused or failed upstream: this run reads user/list, and the
 * enterprise's record says why. */
static void export_fallback(ds_corp *c, const char *why)
{
    log_warn("directory sync: export refused, falling back to user/list",
             LF_S("corp_id", c->corp_id), LF_S("reason", why));
    c->use_export = 0;
    snprintf(c->source_reason, sizeof(c->source_reason), "%.400s: user_list", why);
    export_save(c, "failed", why, EXA_FALLBACK);
}

static void export_fail(ds_corp *c, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(c->last_error, sizeof(c->last_error), fmt, ap);
    va_end(ap);
    c->d_errors++;
    c->ex_failed = 1;
    c->failed_depts++;
    log_error("directory sync: export failed, nobody deleted", LF_S("corp_id", c->corp_id),
              LF_S("error", c->last_error));
    if (c->ex_file_open) {
        export_file_free(&c->ex_file);
        c->ex_file_open = 0;
    }
    export_save(c, "failed", c->last_error, EXA_NONE);
    if (c->state == CS_EXPORT) {
        c->state = CS_DEPTS;
        c->next = c->ndepts;
    }
    corp_pump(c);
}

static void export_begin(ds_corp *c)
{
    ds_job *j = c->job;
    const char *p[2] = {j->run_id, c->corp_id};
    int rc;

    c->state = CS_EXPORT;
    c->ex_status = -1;
    rc = pg_query_prepared(j->run->pg, Q_EXPORT_READ, 2, p, on_export_read, c);
    if (rc) {
        corp_error(c, "cannot queue the export job read (%d)", rc);
        corp_fail(c, c->last_error);
        return;
    }
    j->db_inflight++;
}

static void on_export_read(void *arg, PGresult *res, const char *err)
{
    ds_corp *c = arg;
    ds_job *j = c->job;

    j->db_inflight--;
    if (j->stopping) {
        ds_end_check(j);
        return;
    }
    if (err) {
        corp_error(c, "export: reading the stored job: %.300s", err);
        corp_fail(c, c->last_error);
        return;
    }
    if (PQntuples(res) == 1 && PQgetvalue(res, 0, 4)[0] == 't' &&
        export_key_ok(PQgetvalue(res, 0, 2))) {
        /* An earlier attempt of this run created it: poll the same job. */
        c->ex_jobid = strdup(PQgetvalue(res, 0, 0));
        if (!c->ex_jobid) {
            corp_error(c, "out of memory");
            corp_fail(c, c->last_error);
            return;
        }
        snprintf(c->ex_key, sizeof(c->ex_key), "%s", PQgetvalue(res, 0, 2));
        c->ex_cred =
            !strcmp(PQgetvalue(res, 0, 1), "contact") ? WECOM_CRED_CONTACT : WECOM_CRED_APP;
        c->ex_resumed = 1;
        log_info("directory sync: resuming the stored export job", LF_S("corp_id", c->corp_id),
                 LF_S("jobid", c->ex_jobid), LF_S("state", PQgetvalue(res, 0, 3)));
        if (c->source_reason[0])
            export_save(c, "waiting", NULL, EXA_POLL);
        else
            ex_wait(c, EXW_POLL, 0);
        return;
    }
    export_create(c);
}

static void export_create(ds_corp *c)
{
    free(c->ex_jobid);
    c->ex_jobid = NULL;
    c->ex_resumed = 0;
    c->ex_polls = 0;
    c->ex_status = -1;
    c->ex_cred = c->dir_cred;
    if (export_key_new(c->ex_key)) {
        corp_error(c, "export: no random bytes for the encoding_aeskey");
        corp_fail(c, c->last_error);
        return;
    }
    /* The key is stored before the job exists: a successor can read its files. */
    export_save(c, "creating", NULL, EXA_CREATE);
}

static void on_export_created(void *arg, const wecom_result *res)
{
    ds_corp *c = arg;
    ds_job *j = c->job;
    json_object *v;
    char why[DS_ERR_MAX];

    c->fetching = 0;
    add_result(c, res);
    if (j->stopping || res->status == WECOM_E_STOPPED) {
        ds_end_check(j);
        if (!j->stopping)
            job_stop(j, "upstream client stopped");
        return;
    }
    if (res->status != WECOM_OK || !json_object_object_get_ex(res->json, "jobid", &v) ||
        !json_object_is_type(v, json_type_string) || !json_object_get_string_len(v)) {
        if (res->status == WECOM_OK)
            snprintf(why, sizeof(why), "export/user answered no jobid");
        else if (res->status == WECOM_E_ERRCODE)
            snprintf(why, sizeof(why), "export/user with the %s refused: errcode %d (%.200s)",
                     wecom_cred_name(c->ex_cred), res->errcode, res->errmsg ? res->errmsg : "");
        else
            snprintf(why, sizeof(why), "export/user failed: %.300s",
                     res->error ? res->error : "failed");
        export_fallback(c, why);
        return;
    }
    c->ex_jobid = strdup(json_object_get_string(v));
    if (!c->ex_jobid) {
        corp_error(c, "out of memory");
        corp_fail(c, c->last_error);
        return;
    }
    log_info("directory sync: export job created", LF_S("corp_id", c->corp_id),
             LF_S("jobid", c->ex_jobid), LF_S("credential", wecom_cred_name(c->ex_cred)));
    c->ex_status = 0;
    export_save(c, "waiting", NULL, EXA_POLL);
}

static void on_export_result(void *arg, const wecom_result *res);

static void export_poll(ds_corp *c)
{
    ds_job *j = c->job;
    int rc;

    if (!lease_ok(j))
        return;
    rc = wecom_export_get_result(j->wc, c->corp_id, c->ex_cred, c->ex_jobid, on_export_result, c);
    if (rc) {
        corp_error(c, "cannot queue export/get_result (%d)", rc);
        corp_fail(c, c->last_error);
        return;
    }
    c->fetching = 1;
}

/* data_list: [{"url", "size", "md5"}] into c->ex_parts. 0 or -1 with why. */
static int parse_data_list(ds_corp *c, json_object *root, char *why, size_t n)
{
    json_object *arr, *e, *u, *sz, *md;
    size_t len;

    if (!json_object_object_get_ex(root, "data_list", &arr) ||
        !json_object_is_type(arr, json_type_array) || !(len = json_object_array_length(arr))) {
        snprintf(why, n, "export/get_result: status 2 without a data_list");
        return -1;
    }
    c->ex_parts = calloc(len, sizeof(*c->ex_parts));
    if (!c->ex_parts) {
        snprintf(why, n, "out of memory");
        return -1;
    }
    c->ex_nparts = (int)len;
    for (size_t i = 0; i < len; i++) {
        e = json_object_array_get_idx(arr, i);
        if (!json_object_object_get_ex(e, "url", &u) || !json_object_is_type(u, json_type_string) ||
            !json_object_object_get_ex(e, "size", &sz) || !is_int(sz) ||
            json_object_get_int64(sz) <= 0 || !json_object_object_get_ex(e, "md5", &md) ||
            !json_object_is_type(md, json_type_string) || json_object_get_string_len(md) != 32) {
            snprintf(why, n, "export/get_result: data_list entry %zu is malformed", i);
            return -1;
        }
        c->ex_parts[i].url = strdup(json_object_get_string(u));
        if (!c->ex_parts[i].url) {
            snprintf(why, n, "out of memory");
            return -1;
        }
        c->ex_parts[i].size = (uint64_t)json_object_get_int64(sz);
        snprintf(c->ex_parts[i].md5, sizeof(c->ex_parts[i].md5), "%s", json_object_get_string(md));
    }
    c->ex_data_list = strdup(json_object_to_json_string_ext(arr, JSON_C_TO_STRING_PLAIN));
    if (!c->ex_data_list) {
        snprintf(why, n, "out of memory");
        return -1;
    }
    return 0;
}

static long long export_idbase(const ds_corp *c);

static void on_export_result(void *arg, const wecom_result *res)
{
    ds_corp *c = arg;
    ds_job *j = c->job;
    json_object *st;
    char why[DS_ERR_MAX];
    int status;

    c->fetching = 0;
    add_result(c, res);
    if (j->stopping || res->status == WECOM_E_STOPPED) {
        ds_end_check(j);
        if (!j->stopping)
            job_stop(j, "upstream client stopped");
        return;
    }
    c->ex_polls++;
    c->ex_polls_unsaved++;
    if (res->status != WECOM_OK || !json_object_object_get_ex(res->json, "status", &st) ||
        !is_int(st)) {
        if (res->status == WECOM_E_ERRCODE)
            snprintf(why, sizeof(why), "export/get_result of job %s: errcode %d (%.200s)",
                     c->ex_jobid, res->errcode, res->errmsg ? res->errmsg : "");
        else
            snprintf(why, sizeof(why), "export/get_result of job %s: %.300s", c->ex_jobid,
                     res->status == WECOM_OK ? "no status"
                     : res->error            ? res->error
                                             : "failed");
        if (c->ex_resumed && res->status == WECOM_E_ERRCODE) {
            /* The stored job is not ours to poll any more: a new one. */
            log_warn("directory sync: the stored export job cannot be polled, creating another",
                     LF_S("corp_id", c->corp_id), LF_S("reason", why));
            export_create(c);
            return;
        }
        export_fallback(c, why);
        return;
    }
    status = (int)json_object_get_int64(st);
    c->ex_status = status;
    if (status == 3) {
        snprintf(why, sizeof(why), "export job %s failed upstream (status 3)", c->ex_jobid);
        export_fallback(c, why);
        return;
    }
    if (status != 2) {
        /* Not started or running: again, later (doubling, capped). */
        uint64_t ms = DS_EXPORT_POLL_MS;
        for (int i = 1; i < c->ex_polls && ms < DS_EXPORT_POLL_CAP_MS; i++)
            ms *= 2;
        if (ms > DS_EXPORT_POLL_CAP_MS)
            ms = DS_EXPORT_POLL_CAP_MS;
        if (c->ex_polls_unsaved >= 1 && c->ex_polls <= 3)
            export_save(c, "waiting", NULL, EXA_NONE);
        ex_wait(c, EXW_POLL, ms);
        return;
    }
    if (parse_data_list(c, res->json, why, sizeof(why))) {
        export_fail(c, "%s", why);
        return;
    }
    c->ex_idbase = export_idbase(c);
    log_info("directory sync: export job done", LF_S("corp_id", c->corp_id),
             LF_S("jobid", c->ex_jobid), LF_I("files", c->ex_nparts), LF_I("polls", c->ex_polls));
    export_save(c, "downloading", NULL, EXA_DOWNLOAD);
}

/* The id space of this job's pseudo-department checkpoints, 1..10^6: from the
 * jobid and the range size, so a successor reading the same files in the same
 * ranges finds its own checkpoints (same members under the same id), while
 * another job (or another range size: other members per range) never meets a
 * checkpoint that lists other members under its id (the checkpoint insert keeps
 * the first). Two jobs of one run share a space with odds of 1 in 10^6. */
static long long export_idbase(const ds_corp *c)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (const char *p = c->ex_jobid; p && *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    h = (h ^ (uint64_t)c->job->run->settings->export_range_kb) * 1099511628211ULL;
    return (long long)(h % 1000000ULL) + 1;
}

/* A range's members, as one pseudo-department batch. 0 or -1 (the export failed). */
static int export_batch(ds_corp *c, const char *text, size_t len, uint32_t members)
{
    ds_batch *b;
    char why[200];

    if (!members)
        return 0;
    b = calloc(1, sizeof(*b));
    if (!b) {
        export_fail(c, "export: out of memory");
        return -1;
    }
    b->dept_id =
        -(c->ex_idbase * 1000000000LL + (long long)c->ex_part * 1000000LL + c->ex_range + 1);
    if (sync_batch_parse(b, text, len, why, sizeof(why)) < 0) {
        free(b);
        export_fail(c, "export file %d: %s", c->ex_part + 1, why);
        return -1;
    }
    /* Every member is in one file once: each counts here. A range of a file is
     * no department: no digest is kept for it (sql/008). */
    b->primary = b->members;
    b->record = 0;
    c->fields_present |= sync_fields_present(text, len);
    c->member_answers++;
    c->ex_members += (uint64_t)b->members;
    c->job->buffered += sync_batch_bytes(b);
    c->ready[c->nready++] = b;
    return 0;
}

static void on_range(void *arg, const http_response *res);

/* A file's URL answered 403 (expired, e.g. a successor past the 2 hours): the
 * files go, and a new job is made, once per run attempt. What the old files
 * gave stays written; the new job's ranges have their own checkpoint ids. */
static void export_renew(ds_corp *c)
{
    log_warn("directory sync: an export file's URL is refused (expired?), making a new job",
             LF_S("corp_id", c->corp_id), LF_S("jobid", c->ex_jobid));
    if (c->ex_file_open) {
        export_file_free(&c->ex_file);
        c->ex_file_open = 0;
    }
    for (int k = 0; k < c->ex_nparts; k++)
        free(c->ex_parts[k].url);
    free(c->ex_parts);
    c->ex_parts = NULL;
    free(c->ex_data_list);
    c->ex_data_list = NULL;
    c->ex_nparts = c->ex_part = c->ex_pass = c->ex_range = c->ex_tries = 0;
    c->ex_off = 0;
    c->ex_renewed = 1;
    c->state = CS_EXPORT;
    export_create(c);
}

/* Starts the next range of the current file if the write queue has room. */
static void export_pump(ds_corp *c)
{
    ds_job *j = c->job;
    ds_part *pt;
    char err[200];
    uint64_t to;
    int rc;

    if (c->ex_complete || c->ex_failed || c->fetching || c->ex_wait || !c->ex_nparts)
        return;
    /* A range's members are a large batch (about 1,700 members a MiB): two
     * waiting are enough to keep a write busy, and bound memory lower than
     * DS_BATCH_MAX of them would (peak RSS, 5,000 x 20 members: 64 MB with 8). */
    if (c->nready >= DS_EXPORT_READY_MAX || j->buffered >= DS_BUFFER_MAX) {
        c->starved = 1;
        return;
    }
    if (!lease_ok(j))
        return;
    pt = &c->ex_parts[c->ex_part];
    if (!c->ex_file_open) {
        if (export_file_init(&c->ex_file, c->ex_key, pt->size, pt->md5,
                             c->ex_pass ? EXPORT_FILE_DECODE : EXPORT_FILE_VERIFY, err,
                             sizeof(err))) {
            export_fail(c, "export file %d: %s", c->ex_part + 1, err);
            return;
        }
        c->ex_file_open = 1;
        c->ex_off = 0;
        c->ex_range = 0;
    }
    to = c->ex_off + DS_EXPORT_RANGE - 1;
    if (to >= pt->size)
        to = pt->size - 1;
    rc = http_client_get_range(j->run->http, pt->url, c->ex_off, to,
                               tuning.timeout_ms > 0 ? tuning.timeout_ms * 3 : 60000, on_range, c);
    if (rc) {
        export_fail(c, "export file %d: cannot queue the download (%d)", c->ex_part + 1, rc);
        return;
    }
    c->fetching = 1;
    j->http_inflight++;
}

static void on_range(void *arg, const http_response *res)
{
    ds_corp *c = arg;
    ds_job *j = c->job;
    ds_part *pt = &c->ex_parts[c->ex_part];
    uint64_t want = pt->size - c->ex_off < DS_EXPORT_RANGE ? pt->size - c->ex_off : DS_EXPORT_RANGE;
    char err[300];
    const char *text;
    size_t len;
    uint32_t members;

    c->fetching = 0;
    j->http_inflight--;
    if (j->stopping) {
        ds_end_check(j);
        return;
    }
    if (res->error ||
        (res->status != 206 && !(res->status == 200 && c->ex_off == 0 && want == pt->size)) ||
        res->body_len != want) {
        char what[160];
        if (res->error)
            snprintf(what, sizeof(what), "%.120s", res->error);
        else if (res->status != 206 && res->status != 200)
            snprintf(what, sizeof(what), "HTTP %ld", res->status);
        else
            snprintf(what, sizeof(what), "%zu bytes of %llu", res->body_len,
                     (unsigned long long)want);
        if (++c->ex_tries < DS_EXPORT_RANGE_TRIES && res->status != 403) {
            uint64_t ms = (uint64_t)(tuning.backoff_base_ms ? tuning.backoff_base_ms : 200)
                          << (c->ex_tries - 1);
            log_warn("directory sync: export download failed, resuming with Range",
                     LF_S("corp_id", c->corp_id), LF_I("file", c->ex_part + 1),
                     LF_I("from_byte", (long long)c->ex_off), LF_S("error", what));
            c->d_retries++;
            ex_wait(c, EXW_RANGE, ms);
            return;
        }
        if (res->status == 403 && !c->ex_renewed) {
            export_renew(c);
            return;
        }
        export_fail(c, "export file %d: download at byte %llu failed: %s%s", c->ex_part + 1,
                    (unsigned long long)c->ex_off, what,
                    res->status == 403 ? " (the URL expired?)" : "");
        return;
    }
    c->ex_tries = 0;
    if (export_file_feed(&c->ex_file, res->body, res->body_len, err, sizeof(err))) {
        export_fail(c, "export file %d: %s", c->ex_part + 1, err);
        return;
    }
    c->ex_off += res->body_len;
    if (c->ex_off == pt->size && export_file_finish(&c->ex_file, err, sizeof(err))) {
        export_fail(c, "export file %d: %s", c->ex_part + 1, err);
        return;
    }
    if (c->ex_pass == 1) {
        export_file_take(&c->ex_file, &text, &len, &members);
        if (export_batch(c, text, len, members))
            return;
    }
    c->ex_range++;
    if (c->ex_off == pt->size) {
        export_file_free(&c->ex_file);
        c->ex_file_open = 0;
        if (c->ex_pass == 0) {
            c->ex_pass = 1; /* verified: now read its members */
        } else {
            c->ex_pass = 0;
            c->ex_part++;
            log_info("directory sync: export file read", LF_S("corp_id", c->corp_id),
                     LF_I("file", c->ex_part), LF_I("files", c->ex_nparts),
                     LF_I("members", (long long)c->ex_members));
            if (c->ex_part == c->ex_nparts) {
                c->ex_complete = 1;
                export_save(c, "done", NULL, EXA_NONE);
            }
        }
    }
    corp_pump(c);
}

static void on_ex_timer(uv_timer_t *t)
{
    ds_job *j = t->data;
    uint64_t now = time_mono_us();
    int waiting = 0;

    for (int i = 0; i < j->ncorps && !j->stopping; i++) {
        ds_corp *c = &j->corps[i];
        int what = c->ex_wait;
        if (!what)
            continue;
        if (now < c->ex_wait_until) {
            waiting = 1;
            continue;
        }
        c->ex_wait = 0;
        if (what == EXW_POLL)
            export_poll(c);
        else
            corp_pump(c);
    }
    if (!waiting || j->stopping) {
        for (int i = 0; i < j->ncorps && !waiting; i++)
            waiting = j->corps[i].ex_wait != 0;
        if (!waiting || j->stopping) {
            uv_timer_stop(&j->ex_timer);
            j->ex_timer_on = 0;
        }
    }
}

/* ---- ending an enterprise ----------------------------------------------------------- */

static void on_corp_final(void *arg, PGresult *res, const char *err);

static void corp_final_write(ds_corp *c, int ok, const char *why)
{
    ds_job *j = c->job;
    char req[24], ret[24], errs[24], fields[128];
    const char *p[11];
    int rc;

    if (!lease_ok(j))
        return;
    c->state = CS_FINAL;
    c->ok = ok;
    c->fresh = 0; /* no member is written after this */
    uid_set_free(&c->written);
    free(c->digests);
    c->digests = NULL;
    c->ndigests = 0;
    member_map_free(&c->mmap);
    if (c->unchanged)
        log_info("directory sync: unchanged departments written as checkpoints only",
                 LF_S("corp_id", c->corp_id), LF_I("departments", c->unchanged));
    take_counters(c, req, ret, errs);
    fence_params(j, p);
    p[4] = c->corp_id;
    if (ok) {
        p[5] = req;
        p[6] = ret;
        p[7] = errs;
        p[8] = c->note[0] ? c->note : NULL;
        sync_fields_missing_literal(c->fields_present, fields, sizeof(fields));
        p[9] = c->member_answers ? fields : NULL;
        p[10] = !c->modern && !c->use_export ? "t" : "f";
        rc = pg_query_prepared(j->run->pg, Q_CORP_OK, 11, p, on_corp_final, c);
    } else {
        p[5] = why;
        p[6] = req;
        p[7] = ret;
        p[8] = errs;
        rc = pg_query_prepared(j->run->pg, Q_CORP_FAIL, 9, p, on_corp_final, c);
    }
    if (rc) {
        /* Nothing more can be written for it: leave the row as it is (a resumed run
         * finishes it) and count the enterprise as failed. */
        restore_counters(c);
        log_error("directory sync: cannot queue the final write", LF_S("corp_id", c->corp_id),
                  LF_I("rc", rc));
        c->ok = 0;
        c->state = CS_ENDED;
        j->ended++;
        ds_end_check(j);
        return;
    }
    j->db_inflight++;
}

static void corp_fail(ds_corp *c, const char *why)
{
    if (why != c->last_error)
        snprintf(c->last_error, sizeof(c->last_error), "%s", why);
    log_warn("directory sync: enterprise failed", LF_S("corp_id", c->corp_id),
             LF_S("error", c->last_error));
    corp_final_write(c, 0, c->last_error);
}

static void corp_finish(ds_corp *c)
{
    if (c->permanent) {
        corp_fail(c, c->last_error);
        return;
    }
    if (c->modern && !c->roster_done) {
        corp_fail(c, "user/list_id: the roster was not read to its end, nobody deleted");
        return;
    }
    if (c->quota_hit) {
        corp_fail(c, "daily quota");
        return;
    }
    if (c->use_export && !c->ex_complete) {
        char why[DS_ERR_MAX];
        snprintf(why, sizeof(why),
                 "export: not every file was read and verified, nobody "
                 "deleted; last: %.400s",
                 c->last_error);
        corp_fail(c, why);
        return;
    }
    if (c->failed_depts > 0) {
        char why[DS_ERR_MAX];
        snprintf(why, sizeof(why), "%d of %d departments failed, nobody deleted; last: %.400s",
                 c->failed_depts, c->total, c->last_error);
        corp_fail(c, why);
        return;
    }
    corp_final_write(c, 1, NULL);
}

static void on_corp_final(void *arg, PGresult *res, const char *err)
{
    ds_corp *c = arg;
    ds_job *j = c->job;

    j->db_inflight--;
    if (j->stopping) {
        ds_end_check(j);
        return;
    }
    if (err) {
        restore_counters(c);
        if (db_transient(err) && ++c->final_attempts < DS_WRITE_ATTEMPTS) {
            corp_final_write(c, c->ok, c->ok ? NULL : c->last_error);
            return;
        }
        log_error("directory sync: final enterprise write failed", LF_S("corp_id", c->corp_id),
                  LF_S("error", err));
        snprintf(c->last_error, sizeof(c->last_error), "database: %.300s", err);
        c->ok = 0;
    } else if (!check_fenced(j, res)) {
        ds_end_check(j);
        return;
    } else if (c->ok) {
        log_info("directory sync: enterprise succeeded", LF_S("corp_id", c->corp_id),
                 LF_I("departments", c->total), LF_I("users_deleted", atoll(PQgetvalue(res, 0, 1))),
                 LF_I("departments_deleted", atoll(PQgetvalue(res, 0, 2))));
    }
    c->state = CS_ENDED;
    j->ended++;
    if (c->ok)
        j->succeeded++;
    ds_end_check(j);
}

/* ---- starting ----------------------------------------------------------------------- */

static void corp_start(ds_corp *c)
{
    ds_job *j = c->job;
    int rc;

    rc = wecom_corp_set(j->wc, c->corp_id, c->secret);
    if (rc == 0)
        rc = wecom_corp_set_contact(j->wc, c->corp_id, c->contact_secret);
    c->dir_cred = c->contact_secret ? WECOM_CRED_CONTACT : WECOM_CRED_APP;
    if (rc == 0 && !c->mode_decided && !strcmp(c->api_mode, "modern")) {
        c->modern = 1;
        c->mode_decided = 1;
        snprintf(c->mode_reason, sizeof(c->mode_reason),
                 "modern: set by the operator (--api-mode modern)");
    }
    if (rc == 0 && c->modern) {
        modern_start(c);
        return;
    }
    if (rc == 0)
        rc = wecom_department_list_as(j->wc, c->corp_id, c->dir_cred, 0, on_department_list, c);
    if (rc) {
        corp_error(c, "cannot queue department/list (%d)", rc);
        corp_fail(c, c->last_error);
        return;
    }
    c->state = CS_LISTING;
}

static void on_progress_read(void *arg, PGresult *res, const char *err)
{
    ds_job *j = arg;

    j->db_inflight--;
    if (j->stopping) {
        ds_end_check(j);
        return;
    }
    if (err) {
        snprintf(j->end_error, sizeof(j->end_error), "reading progress: %.300s", err);
        job_stop(j, j->end_error);
        return;
    }
    for (int r = 0; r < PQntuples(res); r++) {
        const char *corp = PQgetvalue(res, r, 0), *st = PQgetvalue(res, r, 1);
        for (int i = 0; i < j->ncorps; i++) {
            ds_corp *c = &j->corps[i];
            if (strcmp(c->corp_id, corp) != 0)
                continue;
            if (!strcmp(st, "succeeded") || !strcmp(st, "failed")) {
                /* Ended in an earlier attempt of this run: done. */
                c->state = CS_ENDED;
                c->ok = st[0] == 's';
                j->ended++;
                j->succeeded += c->ok;
                continue;
            }
            /* The mode an earlier attempt chose stands (its record is in
             * enterprises already), and a roster goes on where it stopped. */
            if (PQgetvalue(res, r, 3)[0]) {
                c->modern = !strcmp(PQgetvalue(res, r, 3), "modern");
                c->mode_decided = 1;
            }
            if (!PQgetisnull(res, r, 4) && !(c->roster_cursor = strdup(PQgetvalue(res, r, 4)))) {
                job_stop(j, "out of memory");
                return;
            }
            c->roster_pages = atoi(PQgetvalue(res, r, 5));
            c->roster_done = PQgetvalue(res, r, 6)[0] == 't';
            c->roster_members = atoll(PQgetvalue(res, r, 7));
            if (c->roster_pages > 0 && !c->roster_done)
                log_info("directory sync: resuming the roster", LF_S("corp_id", c->corp_id),
                         LF_I("pages_done", c->roster_pages));
        }
    }
    log_info("directory sync: starting", LF_I("run_id", j->run->run_id),
             LF_I("attempt", j->run->attempt), LF_I("enterprises", j->ncorps),
             LF_I("already_ended", j->ended));
    for (int i = 0; i < j->ncorps && !j->stopping; i++) {
        ds_corp *c = &j->corps[i];
        if (c->state != CS_PENDING)
            continue;
        if (c->missing)
            corp_fail(c, "no such enabled enterprise");
        else
            corp_start(c);
    }
    ds_end_check(j);
}

static void on_progress_init(void *arg, PGresult *res, const char *err)
{
    ds_job *j = arg;
    const char *p[1] = {j->run_id};
    int rc;

    j->db_inflight--;
    if (j->stopping) {
        ds_end_check(j);
        return;
    }
    if (err) {
        snprintf(j->end_error, sizeof(j->end_error), "creating progress rows: %.300s", err);
        job_stop(j, j->end_error);
        return;
    }
    if (!check_fenced(j, res)) {
        ds_end_check(j);
        return;
    }
    rc = pg_query_prepared(j->run->pg, Q_PROGRESS_READ, 1, p, on_progress_read, j);
    if (rc) {
        job_stop(j, "cannot queue the progress read");
        return;
    }
    j->db_inflight++;
}

/* "{"a","b"}": corp ids are [A-Za-z0-9_-] (schema CHECK), quoted anyway. */
static char *corps_literal(ds_corp *corps, int n)
{
    size_t cap = 3;
    char *s, *p;

    for (int i = 0; i < n; i++)
        cap += strlen(corps[i].corp_id) + 3;
    s = malloc(cap);
    if (!s)
        return NULL;
    p = s;
    *p++ = '{';
    for (int i = 0; i < n; i++)
        p += snprintf(p, cap - (size_t)(p - s), "%s\"%s\"", i ? "," : "", corps[i].corp_id);
    *p++ = '}';
    *p = '\0';
    return s;
}

static void on_enterprises(void *arg, PGresult *res, const char *err)
{
    ds_job *j = arg;
    const char *p[5];
    char *lit;
    int n, rc;

    j->db_inflight--;
    if (j->stopping) {
        ds_end_check(j);
        return;
    }
    if (err) {
        snprintf(j->end_error, sizeof(j->end_error), "reading enterprises: %.300s", err);
        job_stop(j, j->end_error);
        return;
    }
    n = PQntuples(res);
    j->corps = calloc((size_t)(n + j->run->ncorp_ids + 1), sizeof(*j->corps));
    if (!j->corps) {
        job_stop(j, "out of memory");
        return;
    }
    for (int i = 0; i < n; i++) {
        ds_corp *c = &j->corps[i];
        c->job = j;
        snprintf(c->corp_id, sizeof(c->corp_id), "%s", PQgetvalue(res, i, 0));
        c->secret = strdup(PQgetvalue(res, i, 1));
        if (!PQgetisnull(res, i, 2) && PQgetvalue(res, i, 2)[0])
            c->contact_secret = strdup(PQgetvalue(res, i, 2));
        snprintf(c->api_mode, sizeof(c->api_mode), "%s", PQgetvalue(res, i, 3));
        snprintf(c->member_source, sizeof(c->member_source), "%s", PQgetvalue(res, i, 4));
        j->ncorps = i + 1;
        if (!c->secret ||
            (!PQgetisnull(res, i, 2) && PQgetvalue(res, i, 2)[0] && !c->contact_secret)) {
            job_stop(j, "out of memory");
            return;
        }
    }
    /* An enterprise asked for by name that is unknown or disabled is part of the
     * run, and fails: `orgsync sync --corp typo` must not report success. */
    for (int k = 0; k < j->run->ncorp_ids; k++) {
        const char *want = j->run->corp_ids[k];
        int found = 0;
        for (int i = 0; i < j->ncorps && !found; i++)
            found = strcmp(j->corps[i].corp_id, want) == 0;
        if (found || strlen(want) >= sizeof(j->corps[0].corp_id))
            continue;
        ds_corp *c = &j->corps[j->ncorps++];
        c->job = j;
        c->missing = 1;
        snprintf(c->corp_id, sizeof(c->corp_id), "%s", want);
        log_warn("directory sync: requested enterprise is unknown or disabled",
                 LF_S("corp_id", want));
    }
    j->wq = calloc((size_t)j->ncorps + 1, sizeof(*j->wq));
    lit = j->wq ? corps_literal(j->corps, j->ncorps) : NULL;
    if (!lit) {
        job_stop(j, "out of memory");
        return;
    }
    fence_params(j, p);
    p[4] = lit;
    if (!lease_ok(j)) {
        free(lit);
        return;
    }
    rc = pg_query_prepared(j->run->pg, Q_PROGRESS_INIT, 5, p, on_progress_init, j);
    free(lit);
    if (rc) {
        job_stop(j, "cannot queue the progress rows");
        return;
    }
    j->db_inflight++;
}

/* ---- ending the job ----------------------------------------------------------------- */

static void job_free(ds_job *j)
{
    for (int i = 0; i < j->ncorps; i++) {
        ds_corp *c = &j->corps[i];
        free(c->secret);
        free(c->contact_secret);
        free(c->roster_cursor);
        free(c->roster_pending);
        json_object_put(c->simplelist);
        free(c->depts);
        free(c->digests);
        member_map_free(&c->mmap);
        uid_set_free(&c->written);
        for (int k = 0; k < c->nready; k++)
            sync_batch_free(c->ready[k]);
        for (int k = 0; k < c->nwriting; k++)
            sync_batch_free(c->writing[k]);
        free(c->ex_jobid);
        free(c->ex_data_list);
        for (int k = 0; k < c->ex_nparts; k++)
            free(c->ex_parts[k].url);
        free(c->ex_parts);
        if (c->ex_file_open)
            export_file_free(&c->ex_file);
    }
    free(j->corps);
    free(j->wq);
    free(j);
}

static void on_closer_closed(uv_handle_t *h);

static void on_ex_timer_closed(uv_handle_t *h)
{
    ds_job *j = h->data;
    uv_close((uv_handle_t *)&j->closer, on_closer_closed);
}

static void on_closer_closed(uv_handle_t *h)
{
    ds_job *j = h->data;
    job_run *run = j->run;
    const char *state = j->end_state;
    char err[DS_ERR_MAX];

    snprintf(err, sizeof(err), "%s", j->end_error);
    log_info("directory sync: finished", LF_I("run_id", run->run_id),
             LF_S("state", state ? state : "stopped"), LF_S("error", err[0] ? err : NULL),
             LF_D("seconds", (double)(time_mono_us() - j->started_us) / 1e6));
    job_free(j);
    run->job_state = NULL;
    run->finished(run, state, err[0] ? err : NULL);
}

/* The run's verdict from its enterprises. */
static void decide(ds_job *j)
{
    buf b;
    int failed = j->ncorps - j->succeeded;

    if (failed == 0) {
        j->end_state = "succeeded";
        return;
    }
    j->end_state = j->succeeded == 0 ? "failed" : "partial";
    buf_init(&b);
    buf_printf(&b, "%d of %d enterprises failed:", failed, j->ncorps);
    for (int i = 0, shown = 0; i < j->ncorps; i++) {
        ds_corp *c = &j->corps[i];
        if (c->ok)
            continue;
        if (shown++ == 5) {
            buf_puts(&b, " ...");
            break;
        }
        buf_printf(&b, " %s (%.80s)", c->corp_id, c->last_error[0] ? c->last_error : "failed");
    }
    snprintf(j->end_error, sizeof(j->end_error), "%s", b.data ? b.data : "enterprises failed");
    buf_free(&b);
}

/* Ends the job once nothing of it is in flight. finished() is called from a
 * close callback, never from inside start() or stop(). */
static void ds_end_check(ds_job *j)
{
    if (j->end_called)
        return;
    if (!j->stopping && !j->decided) {
        if (!j->corps || j->ended < j->ncorps)
            return;
        decide(j);
        j->decided = 1;
        j->stopping = 1; /* nothing more to send or write */
    }
    if (j->wc) {
        wecom *wc = j->wc;
        j->wc = NULL;
        /* Answers to requests still queued come back as STOPPED, right here, and
         * may end the job re-entrantly. */
        wecom_close(wc, NULL, NULL);
        if (j->end_called)
            return;
    }
    if (j->db_inflight > 0 || j->http_inflight > 0)
        return;
    j->end_called = 1;
    /* The export timer closes first; its close callback closes the closer,
     * whose callback frees the job. */
    uv_timer_stop(&j->ex_timer);
    uv_close((uv_handle_t *)&j->ex_timer, on_ex_timer_closed);
}

static void job_stop(ds_job *j, const char *reason)
{
    if (j->stopping)
        return;
    j->stopping = 1;
    if (reason && !j->end_error[0])
        snprintf(j->end_error, sizeof(j->end_error), "%s", reason);
    log_warn("directory sync: stopping", LF_I("run_id", j->run->run_id),
             LF_S("reason", reason ? reason : ""));
    ds_end_check(j);
}

/* ---- job_ops ------------------------------------------------------------------------ */

static int gate(void *arg)
{
    ds_job *j = arg;
    return !j->stopping && (!j->run->lease_valid || j->run->lease_valid(j->run));
}

static void on_alert(void *arg, const char *kind, const char *corp_id, const char *message)
{
    ds_job *j = arg;
    alert_raise(kind, message, corp_id, j->run->run_id);
}

static char *corp_ids_literal(const job_run *run)
{
    size_t cap = 3;
    char *s, *p;

    for (int i = 0; i < run->ncorp_ids; i++)
        cap += strlen(run->corp_ids[i]) * 2 + 3;
    s = malloc(cap);
    if (!s)
        return NULL;
    p = s;
    *p++ = '{';
    for (int i = 0; i < run->ncorp_ids; i++) {
        if (i)
            *p++ = ',';
        *p++ = '"';
        for (const char *q = run->corp_ids[i]; *q; q++) {
            if (*q == '"' || *q == '\\')
                *p++ = '\\';
            *p++ = *q;
        }
        *p++ = '"';
    }
    *p++ = '}';
    *p = '\0';
    return s;
}

static int ds_start(job_run *run)
{
    const settings *s = run->settings;
    ds_job *j;
    char *filter = NULL;
    const char *p[1];
    int rc;

    if (!run || !run->loop || !run->pg || !run->redis || !run->http || !run->finished || !s)
        return -EINVAL;
    rc = prepare_all(run->pg);
    if (rc)
        return rc;
    j = calloc(1, sizeof(*j));
    if (!j)
        return -ENOMEM;
    j->run = run;
    j->started_us = time_mono_us();
    fmt_ll(j->token, sizeof(j->token), run->fencing_token);
    fmt_ll(j->run_id, sizeof(j->run_id), run->run_id);
    j->wc = wecom_new(run->loop, run->http, run->redis,
                      &(wecom_opts){.base_url = s->upstream_url,
                                    .env = run->env,
                                    .instance = s->instance,
                                    .rate = s->dept_rate,
                                    .max_inflight = s->upstream_max_inflight,
                                    .daily_quota = s->daily_quota,
                                    .egress_id = s->egress_id,
                                    .egress_per_min = s->egress_max_per_min,
                                    .egress_per_hour = s->egress_max_per_hour,
                                    .timeout_ms = tuning.timeout_ms,
                                    .backoff_base_ms = tuning.backoff_base_ms,
                                    .ban_pause_ms = tuning.ban_pause_ms,
                                    .gate = gate,
                                    .gate_arg = j,
                                    .alert = on_alert,
                                    .alert_arg = j});
    if (!j->wc) {
        free(j);
        return -ENOMEM;
    }
    if (run->ncorp_ids > 0 && !(filter = corp_ids_literal(run))) {
        wecom_close(j->wc, NULL, NULL);
        free(j);
        return -ENOMEM;
    }
    p[0] = filter;
    rc = pg_query(run->pg, sql_enterprises, 1, p, on_enterprises, j);
    free(filter);
    if (rc) {
        wecom_close(j->wc, NULL, NULL);
        free(j);
        return rc;
    }
    uv_timer_init(run->loop, &j->closer);
    j->closer.data = j;
    uv_timer_init(run->loop, &j->ex_timer);
    j->ex_timer.data = j;
    j->db_inflight = 1;
    run->job_state = j;
    return 0;
}

static void ds_stop(job_run *run, const char *reason)
{
    ds_job *j = run ? run->job_state : NULL;

    if (!j)
        return;
    job_stop(j, reason ? reason : "stopped");
}

const job_ops directory_sync_ops = {DIRECTORY_SYNC_JOB, ds_start, ds_stop};
