#!/usr/bin/env bash
# Schema version 2 (sql/002): users and departments lose their foreign key to
# enterprises, and a trigger keeps what the key guaranteed. Upgrading a version 1
# database that holds data keeps the data; deleting or truncating enterprises
# removes their rows; a corp_id with rows cannot change. The later migrations
# apply on top of it: 005 starts each existing environment's revision at 1.
. "$(dirname "$0")/../lib/testlib.sh"

DSN=$(fresh_db)
trap 'drop_db "$DSN"' EXIT
q() { psql -qAtX -v ON_ERROR_STOP=1 "$DSN" -c "$1" 2>&1; }

# A version 1 database, as an earlier binary's migrate left it, with data.
q "DROP SCHEMA public CASCADE; CREATE SCHEMA public" >/dev/null
psql -qAtX -v ON_ERROR_STOP=1 "$DSN" -1 -f "$ORGSYNC_SRC/sql/001_init.sql" >/dev/null
q "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,
     applied_at timestamptz NOT NULL DEFAULT now());
   INSERT INTO schema_migrations (version, name) VALUES (1, '001_init.sql')" >/dev/null
q "INSERT INTO enterprises (corp_id, name, corp_secret) VALUES ('ww1', 'One', 's1'), ('ww2', 'Two', 's2');
   INSERT INTO departments (corp_id, dept_id, name) VALUES ('ww1', 1, 'd'), ('ww2', 1, 'd');
   INSERT INTO users (corp_id, userid, department) VALUES ('ww1', 'a', '{1}'), ('ww1', 'b', '{1}'),
     ('ww2', 'a', '{1}');
   INSERT INTO sync_runs (env, job, trigger, scheduled_for, state)
     VALUES ('old', 'directory-sync', 'cli', now() - interval '1 day', 'succeeded'),
            ('old', 'directory-sync', 'cli', now(), 'succeeded')" >/dev/null
eq "version 1 has the foreign keys" 2 "$(q "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND confrelid = 'enterprises'::regclass")"

out=$(ORGSYNC_PG_DSN="$DSN" "$ORGSYNC_BIN" migrate 2>/dev/null)
check "migrate applies 002 to 009" grep -q "migrated to schema version 9 (8 files applied)" <<<"$out"
eq "003: checkpoints keep userids" "userids|ARRAY" "$(q "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'sync_checkpoints' AND column_name = 'userids'")"
eq "no foreign key to enterprises left" 0 "$(q "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND confrelid = 'enterprises'::regclass")"
eq "the data is kept" "3|2|2" "$(q "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM departments), (SELECT count(*) FROM sync_runs)")"
eq "005: an existing environment starts at revision 1" "old|directory-sync|1" "$(q "SELECT env, job, revision FROM sync_revisions")"

# Deleting an enterprise deletes its users, departments and department digests
# (008), and only those.
q "INSERT INTO department_digests (corp_id, dept_id, digest, userids) VALUES
   ('ww1', 1, decode(repeat('ab', 16), 'hex'), '{a,b}'), ('ww2', 1, NULL, '{a}')" >/dev/null
q "DELETE FROM enterprises WHERE corp_id = 'ww1'" >/dev/null
eq "delete: its users, departments and digests are gone, the other's stay" "ww2|ww2|ww2" \
    "$(q "SELECT (SELECT string_agg(DISTINCT corp_id, ',') FROM users), (SELECT string_agg(DISTINCT corp_id, ',') FROM departments), (SELECT string_agg(DISTINCT corp_id, ',') FROM department_digests)")"

# A users row deleted by hand drops the digests of its enterprise (009): they
# would otherwise say users holds what it no longer does.
eq "009: digests keep members and dropped userids" "dropped|members" \
    "$(q "SELECT string_agg(column_name, '|' ORDER BY column_name) FROM information_schema.columns WHERE table_name = 'department_digests' AND column_name IN ('members', 'dropped')")"
q "UPDATE department_digests SET digest = decode(repeat('cd', 16), 'hex')" >/dev/null
q "DELETE FROM users WHERE corp_id = 'ww2' AND userid = (SELECT min(userid) FROM users WHERE corp_id = 'ww2')" >/dev/null
eq "009: a users row deleted by hand drops its enterprise's digests" 0 \
    "$(q "SELECT count(*) FROM department_digests WHERE digest IS NOT NULL")"

# A corp_id that rows refer to cannot change; one without rows can.
out=$(q "UPDATE enterprises SET corp_id = 'ww9' WHERE corp_id = 'ww2'" || true)
check "rename with rows is refused, saying why" grep -q "enterprise ww2 has synced users or departments" <<<"$out"
eq "refused rename changed nothing" ww2 "$(q "SELECT corp_id FROM enterprises")"
q "INSERT INTO enterprises (corp_id, name, corp_secret) VALUES ('ww3', 'Three', 's3')" >/dev/null
check "rename without rows is allowed" q "UPDATE enterprises SET corp_id = 'ww4' WHERE corp_id = 'ww3'"

# TRUNCATE enterprises takes every user and department with it.
q "TRUNCATE enterprises" >/dev/null
eq "truncate: no users or departments left" "0|0" "$(q "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM departments)")"

# What the sync's writes rely on (ENTERPRISE_CTE in worker/sync/directory_sync.c):
# a write that holds the enterprise row FOR KEY SHARE makes a delete wait, and
# the delete's trigger then removes what the write added.
q "INSERT INTO enterprises (corp_id, name, corp_secret) VALUES ('ww5', 'Five', 's5')" >/dev/null
psql -qAtX -v ON_ERROR_STOP=1 "$DSN" -c "BEGIN" \
    -c "SELECT 1 FROM enterprises WHERE corp_id = 'ww5' FOR KEY SHARE" \
    -c "INSERT INTO users (corp_id, userid) VALUES ('ww5', 'late')" \
    -c "SELECT pg_sleep(2)" -c "COMMIT" >/dev/null &
writer=$!
# The delete starts once the writer holds the lock and sleeps, however slow the
# machine is to start psql.
for _ in $(seq 1 100); do
    [ "$(q "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(2)' AND state = 'active'")" = 1 ] && break
    sleep 0.05
done
t0=$(date +%s%N)
q "DELETE FROM enterprises WHERE corp_id = 'ww5'" >/dev/null
waited=$((($(date +%s%N) - t0) / 1000000))
wait "$writer"
check "the delete waited for the write (${waited} ms)" test "$waited" -ge 300
eq "the write's rows went with the enterprise" 0 "$(q "SELECT count(*) FROM users WHERE corp_id = 'ww5'")"
finish
