/* Fencing (SPEC §3 leader_fence, DESIGN §3).
 *
 * Every write a leader makes is ONE statement (or one transaction) that begins
 * with the fence CTE below, and guards each of its writes with EXISTS (SELECT 1
 * FROM fence). Parameters $1, $2, $3 are always env, job and the leader's
 * fencing token; the statement's own parameters start at $4.
 *
 * FOR SHARE makes the check hold until commit: a successor's UPDATE of the
 * fence row waits for writes already under way, and once it has committed, a
 * stale leader's statement re-reads the row, finds another token, and writes
 * nothing. Such a statement must also return `EXISTS (SELECT 1 FROM fence) AS
 * fenced` so the writer learns it is stale and steps down. */
#ifndef ORGSYNC_FENCE_H
#define ORGSYNC_FENCE_H

#define FENCE_CTE                                                                                  \
    "fence AS (SELECT 1 FROM leader_fence WHERE env = $1 AND job = $2 AND token = $3::bigint "     \
    "FOR SHARE)"

/* Records a newly acquired token: only ever raises it, so an older token that
 * arrives late can never take the fence back. Parameters: env, job, token,
 * instance. Returns one row (token) when this token now holds the fence. */
#define FENCE_CLAIM_SQL                                                                            \
    "INSERT INTO leader_fence AS f (env, job, token, instance) VALUES ($1, $2, $3::bigint, $4) "   \
    "ON CONFLICT (env, job) DO UPDATE SET token = EXCLUDED.token, instance = EXCLUDED.instance, "  \
    "acquired_at = now() WHERE f.token < EXCLUDED.token RETURNING token"

#endif
