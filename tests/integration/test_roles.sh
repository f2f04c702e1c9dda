#!/usr/bin/env bash
# sql/roles.sql: the writer can write; the reader reads everything but corp_secret
# and writes nothing. Applying it twice is harmless.
. "$(dirname "$0")/../lib/testlib.sh"

DSN=$(fresh_db)
trap 'drop_db "$DSN"' EXIT
ADMIN=${DSN/user=orgsync/user=postgres}
for _ in 1 2; do
    psql -qAtX -v ON_ERROR_STOP=1 "$ADMIN" -f "$ORGSYNC_SRC/sql/roles.sql" >/dev/null
done
ok "roles.sql applies twice"
psql -qAtX "$DSN" -c "INSERT INTO enterprises (corp_id, name, corp_secret) VALUES ('ww1', 'One', 'topsecret')" >/dev/null

W=${DSN/user=orgsync/user=orgsync_writer}
R=${DSN/user=orgsync/user=orgsync_reader}
q() { psql -qAtX "$1" -c "$2" 2>&1; }

eq "writer reads the secret" topsecret "$(q "$W" "SELECT corp_secret FROM enterprises")"
check "writer writes users" q "$W" "INSERT INTO users (corp_id, userid) VALUES ('ww1', 'u1')"
check "writer creates runs (sequence)" q "$W" "INSERT INTO sync_runs (env, job, trigger, scheduled_for) VALUES ('t','j','cli',now())"
check "writer cannot touch schema_migrations" grep -q "permission denied" <<<"$(q "$W" "DELETE FROM schema_migrations")"
check "writer cannot change the schema" grep -q "must be owner\|permission denied" <<<"$(q "$W" "DROP TABLE users")"

eq "reader lists enterprises" "ww1|One" "$(q "$R" "SELECT corp_id, name FROM enterprises")"
check "reader cannot read contact_secret" grep -q "permission denied" <<<"$(q "$R" "SELECT contact_secret FROM enterprises")"
eq "reader reads the api mode" "auto" "$(q "$R" "SELECT api_mode FROM enterprises")"
check "reader cannot read callback_token" grep -q "permission denied" <<<"$(q "$R" "SELECT callback_token FROM enterprises")"
check "reader cannot read callback_aeskey" grep -q "permission denied" <<<"$(q "$R" "SELECT callback_aeskey FROM enterprises")"
eq "reader counts the callback inbox" 0 "$(q "$R" "SELECT count(*) FROM callback_inbox")"
check "writer stores callback events" q "$W" "INSERT INTO callback_inbox (corp_id, create_time, change_type, kind, target, msg_signature) VALUES ('ww1', 1, 'create_user', 'user', 'u1', 'x')"
check "reader cannot write the callback inbox" grep -q "permission denied" <<<"$(q "$R" "DELETE FROM callback_inbox")"
check "reader cannot read corp_secret" grep -q "permission denied" <<<"$(q "$R" "SELECT corp_secret FROM enterprises")"
check "reader cannot SELECT *" grep -q "permission denied" <<<"$(q "$R" "SELECT * FROM enterprises")"
eq "reader reads users" "u1" "$(q "$R" "SELECT userid FROM users")"
check "reader cannot write users" grep -q "permission denied" <<<"$(q "$R" "UPDATE users SET name='x'")"
check "reader cannot create runs" grep -q "permission denied" <<<"$(q "$R" "INSERT INTO sync_runs (env, job, trigger, scheduled_for) VALUES ('t','j','cli',now())")"
eq "reader has no INSERT on users (what READ_ONLY=auto checks)" f "$(q "$R" "SELECT has_table_privilege('users', 'INSERT')")"
eq "writer has INSERT on users" t "$(q "$W" "SELECT has_table_privilege('users', 'INSERT')")"
# The revision (sql/005): the reader reads it for the API; the writer bumps it
# through the triggers, which need no privilege of its own on the table.
eq "reader reads the revision" "t|1" "$(q "$R" "SELECT count(*) = 1, max(revision) FROM sync_revisions WHERE env = 't'")"
check "reader cannot write the revision" grep -q "permission denied" <<<"$(q "$R" "UPDATE sync_revisions SET revision = 0")"
psql -qAtX "$ADMIN" -c "REVOKE ALL ON sync_revisions FROM orgsync_writer" >/dev/null
check "writer without privileges on sync_revisions still writes runs" q "$W" "UPDATE sync_runs SET heartbeat_at = now() WHERE env = 't'"
eq "and bumps the revision" 2 "$(q "$R" "SELECT revision FROM sync_revisions WHERE env = 't'")"
# Export jobs (sql/007): the reader sees their state (the API reports it), not the key
# that decrypts their files; the writer stores both.
check "writer stores an export job" q "$W" "INSERT INTO sync_exports (run_id, corp_id, jobid, credential, encoding_aeskey, block_size) SELECT min(run_id), 'ww1', 'j1', 'app', 'key', 10000 FROM sync_runs"
eq "reader reads the job's state" "j1|creating" "$(q "$R" "SELECT jobid, state FROM sync_exports")"
check "reader cannot read encoding_aeskey" grep -q "permission denied" <<<"$(q "$R" "SELECT encoding_aeskey FROM sync_exports")"
eq "reader reads the member source" "user_list" "$(q "$R" "SELECT member_source FROM enterprises")"
psql -qAtX "$ADMIN" -c "DROP OWNED BY orgsync_writer; DROP OWNED BY orgsync_reader" >/dev/null 2>&1 || true
finish
