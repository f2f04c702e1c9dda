/* SQL shared by every writer of the users table: the digests of the
 * departments a write touches (sql/008_department_digests.sql). Used by the
 * directory sync (worker/sync/directory_sync.c), the change callbacks' applier
 * (worker/sync/callback_apply.c) and the realtime lookup (worker/api/lookup.c). */
#ifndef ORGSYNC_DIGESTS_SQL_H
#define ORGSYNC_DIGESTS_SQL_H

/* Department digests (sql/008) hold only while what the sync last wrote for a
 * department's members is what users holds. Any write that changes a member
 * (the sync's own, for another department or a later answer; a callback; a
 * realtime lookup; the roster's rows) or deletes one sets to NULL the digests of
 * the departments that list it (their userids), among those it was in and is
 * in now, read from its row before and after the statement: a department lists
 * a member only if the member's department array names it (sync_batch_parse
 * records no digest otherwise). `rows` is a query of (corp_id, dept_id,
 * userid); `gate` a condition on other CTEs only: when it is false (nothing was
 * written) the digests are not even read. The rows are grouped per enterprise
 * so that each department is found through the primary key (a join of them was
 * planned, once the table had statistics, as a sort of every digest per
 * statement: tests/bench/README.md "Tenth pass"). A department that no longer
 * lists the member keeps its digest (a member moved out of a department written
 * earlier in the run: sql/009). */
#define DIGESTS_INVALIDATE(rows, gate)                                                             \
    "inv AS (UPDATE department_digests t SET digest = NULL FROM (SELECT c, array_agg(d) AS ds, "   \
    "  array_agg(u) AS us FROM (" rows ") AS p(c, d, u) GROUP BY c) AS v WHERE (" gate ") "        \
    "  AND t.corp_id = v.c AND t.dept_id = ANY (v.ds) AND t.digest IS NOT NULL "                   \
    "  AND t.userids && v.us RETURNING 1)"

#endif
