#!/usr/bin/env bash
# sql/005: the revision of an environment's runs, which every progress answer
# carries (docs/API.md "Caching"). A statement that writes sync_runs or
# sync_progress bumps it once per table it writes, however many rows; one that
# changes nothing does not; environments count apart; and two writers of one
# environment bump in commit order: the second waits for the first to commit,
# so a reader that sees revision N sees every write up to N and none after.
. "$(dirname "$0")/../lib/testlib.sh"

DSN=$(fresh_db)
trap 'drop_db "$DSN"' EXIT
q() { psql -qAtX -v ON_ERROR_STOP=1 "$DSN" -c "$1" 2>&1; }
rev() { q "SELECT coalesce((SELECT revision FROM sync_revisions WHERE env = '${1:-e1}' AND job = 'directory-sync'), 0)"; }

eq "no revision before any run" 0 "$(rev)"
run=$(q "INSERT INTO sync_runs (env, job, trigger, scheduled_for) VALUES ('e1', 'directory-sync', 'cli', now()) RETURNING run_id")
eq "a new run: revision 1" 1 "$(rev)"
q "INSERT INTO sync_progress (run_id, corp_id) SELECT $run, 'ww' || i FROM generate_series(1, 5) i" >/dev/null
eq "five progress rows in one statement: one bump" 2 "$(rev)"
q "UPDATE sync_progress SET departments_done = departments_done + 1 WHERE run_id = $run" >/dev/null
eq "one statement updating five rows: one bump" 3 "$(rev)"
q "UPDATE sync_progress SET departments_done = 0 WHERE run_id = $run AND corp_id = 'nobody'" >/dev/null
eq "a statement that changes no row: no bump" 3 "$(rev)"
q "UPDATE sync_runs SET heartbeat_at = now() WHERE run_id = $run" >/dev/null
eq "a run's own columns: one bump" 4 "$(rev)"
# As the sync's statements do (sql_progress_init: an INSERT and an UPDATE of
# sync_progress; the claim: sync_runs) several writes in one statement.
q "WITH a AS (UPDATE sync_runs SET state = 'running' WHERE run_id = $run RETURNING 1),
        b AS (UPDATE sync_progress SET state = 'running' WHERE run_id = $run RETURNING 1),
        c AS (INSERT INTO sync_progress (run_id, corp_id) VALUES ($run, 'ww9') RETURNING 1)
   SELECT 1" >/dev/null
eq "a statement writing runs, and progress twice: one bump per table and kind of write" 7 "$(rev)"
q "INSERT INTO sync_runs (env, job, trigger, scheduled_for) VALUES ('e2', 'directory-sync', 'cli', now())" >/dev/null
eq "another environment counts apart" "7|1" "$(rev e1)|$(rev e2)"
q "INSERT INTO sync_runs (env, job, trigger, scheduled_for) VALUES ('e1', 'directory-sync', 'cli', now()) ON CONFLICT DO NOTHING" >/dev/null
eq "a run that is not inserted (one per fire): no bump" 7 "$(rev)"

# Two writers of one environment. The first holds its transaction open after
# its write; the second's statement writes another enterprise's row, then its
# bump waits for the first to commit, and gets the next revision.
psql -qAtX -v ON_ERROR_STOP=1 "$DSN" -c "BEGIN" \
    -c "UPDATE sync_progress SET requests = requests + 1 WHERE run_id = $run AND corp_id = 'ww1'" \
    -c "SELECT 'first ' || revision FROM sync_revisions WHERE env = 'e1'" \
    -c "SELECT pg_sleep(1.5)" -c "COMMIT" >"$ORGSYNC_TEST_TMP/rev1.$$" &
first=$!
for _ in $(seq 1 100); do
    [ "$(q "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(1.5)' AND state = 'active'")" = 1 ] && break
    sleep 0.05
done
eq "while the first is not committed, readers see the old revision" 7 "$(rev)"
eq "... and the old numbers" 0 "$(q "SELECT requests FROM sync_progress WHERE run_id = $run AND corp_id = 'ww1'")"
t0=$(date +%s%N)
second=$(psql -qAtX -v ON_ERROR_STOP=1 "$DSN" -c "BEGIN" \
    -c "UPDATE sync_progress SET requests = requests + 1 WHERE run_id = $run AND corp_id = 'ww2'" \
    -c "SELECT 'second ' || revision FROM sync_revisions WHERE env = 'e1'" -c "COMMIT")
waited=$((($(date +%s%N) - t0) / 1000000))
wait "$first"
check "the second writer's bump waited for the first's commit (${waited} ms)" test "$waited" -ge 300
eq "the first got revision 8" "first 8" "$(grep first "$ORGSYNC_TEST_TMP/rev1.$$")"
eq "the second, committed after it, got 9" "second 9" "$second"
eq "a reader sees both" "9|1|1" "$(rev)|$(q "SELECT string_agg(requests::text, '|' ORDER BY corp_id) FROM sync_progress WHERE run_id = $run AND corp_id IN ('ww1', 'ww2')")"
rm -f "$ORGSYNC_TEST_TMP/rev1.$$"
finish
