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
 * records no digest otherwise). A department that no longer lists the member
 * keeps its digest (a member moved out of a department written earlier in the
 * run: sql/009).
 *
 * `rows` is a query of (corp_id, dept_id, userid), kept as the CTE invr; `gate`
 * a condition on other CTEs only: when it is false (nothing was written) no
 * digest is read. The digests are found through the primary key from two
 * arrays (the enterprises, the departments) that PostgreSQL computes once,
 * then each is checked against invr: a join of the rows with department_digests
 * was planned as a sort (tests/bench/README.md "Tenth pass") or a hash of every
 * digest ("Eleventh pass") for every statement. */
#define DIGESTS_INVALIDATE(rows, gate)                                                             \
    "invr AS (" rows "), "                                                                         \
    "inv AS (UPDATE department_digests t SET digest = NULL WHERE (" gate ") "                      \
    "  AND t.corp_id = ANY (ARRAY(SELECT DISTINCT c FROM invr AS r(c, d, u))) "                    \
    "  AND t.dept_id = ANY (ARRAY(SELECT DISTINCT d::bigint FROM invr AS r(c, d, u))) "            \
    "  AND t.digest IS NOT NULL AND EXISTS (SELECT 1 FROM invr AS r(c, d, u) "                     \
    "  WHERE r.c = t.corp_id AND r.d = t.dept_id AND r.u = ANY (t.userids)) RETURNING 1)"

#endif
