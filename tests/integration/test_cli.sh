#!/usr/bin/env bash
# The orgsync command line: version, usage errors before any connection,
# migrate (idempotent, refuses a newer schema), enterprise add/list/disable/enable.
. "$(dirname "$0")/../lib/testlib.sh"

DSN=$(fresh_db)
trap 'drop_db "$DSN"' EXIT
# The database starts as a copy of the migrated template; start this test
# from an empty schema to see migrate build it.
psql -qAtX "$DSN" -c "DROP SCHEMA public CASCADE; CREATE SCHEMA public" >/dev/null 2>&1

out=$("$ORGSYNC_BIN" version)
check "version names the schema version" grep -q "schema version 9" <<<"$out"

# Usage and configuration errors: exit 2, one line naming the setting, no network.
set +e
# LeakSanitizer cannot run under ptrace, so it is off for the traced run.
out=$(ASAN_OPTIONS=detect_leaks=0 ORGSYNC_DEPT_RATE=abc strace -f -qq -e trace=connect -o "$ORGSYNC_TEST_TMP/strace.$$" \
    "$ORGSYNC_BIN" migrate 2>&1)
rc=$?
set -e
eq "bad ORGSYNC_DEPT_RATE exits 2" 2 "$rc"
check "the message names ORGSYNC_DEPT_RATE" grep -q "^orgsync: ORGSYNC_DEPT_RATE: expected" <<<"$out"
eq "the message is one line" 1 "$(wc -l <<<"$out")"
eq "nothing connected anywhere" 0 "$(grep -c 'connect(' "$ORGSYNC_TEST_TMP/strace.$$" || true)"
# serve too: the supervisor must not fork workers (nor connect) on a bad setting.
set +e
out=$(ASAN_OPTIONS=detect_leaks=0 ORGSYNC_DEPT_RATE=abc strace -f -qq -e trace=connect,clone,fork,vfork -o "$ORGSYNC_TEST_TMP/strace.serve.$$" \
    "$ORGSYNC_BIN" serve 2>&1)
rc=$?
set -e
eq "serve: bad ORGSYNC_DEPT_RATE exits 2" 2 "$rc"
check "serve: the message names ORGSYNC_DEPT_RATE" grep -q "^orgsync: ORGSYNC_DEPT_RATE: expected" <<<"$out"
eq "serve: nothing connected anywhere" 0 "$(grep -c 'connect(' "$ORGSYNC_TEST_TMP/strace.serve.$$" || true)"
eq "serve: no worker forked" 0 "$(grep -cE '(clone|fork)\(' "$ORGSYNC_TEST_TMP/strace.serve.$$" || true)"

# --help for every command: usage on stdout, exit 0, before the settings are read
# (a bad setting does not matter) and before anything connects or forks.
declare -A FLAGS=(
    [serve]="ORGSYNC_DRAIN_MS"
    [status]="--run --json"
    [sync]="--corp --no-wait"
    [migrate]=""
    [enterprise]="add set list disable enable --corp-id --secret-env --contact-secret-env --no-contact-secret --api-mode --name"
    [version]="--version"
)
for c in serve status sync migrate enterprise version; do
    for h in --help -h; do
        set +e
        out=$(ASAN_OPTIONS=detect_leaks=0 ORGSYNC_DEPT_RATE=abc strace -f -qq -e trace=connect,clone,fork,vfork \
            -o "$ORGSYNC_TEST_TMP/strace.help.$$" "$ORGSYNC_BIN" "$c" "$h" 2>"$ORGSYNC_TEST_TMP/help.err.$$")
        rc=$?
        set -e
        eq "$c $h exits 0" 0 "$rc"
        check "$c $h prints its usage on stdout" grep -q "^usage: orgsync .*$c" <<<"$out"
        eq "$c $h: nothing on stderr" "" "$(cat "$ORGSYNC_TEST_TMP/help.err.$$")"
        eq "$c $h: nothing connected, no fork" 0 "$(grep -cE 'connect\(|(clone|fork)\(' "$ORGSYNC_TEST_TMP/strace.help.$$" || true)"
    done
    for f in ${FLAGS[$c]}; do
        check "$c --help mentions $f" grep -q -- "$f" <<<"$out"
    done
    eq "orgsync help $c is $c --help" "$out" "$("$ORGSYNC_BIN" help "$c")"
done
out=$("$ORGSYNC_BIN" enterprise add --corp-id x --help)
check "--help after other arguments still prints usage" grep -q "^usage: orgsync .*enterprise" <<<"$out"
for h in --help -h help; do
    out=$(ORGSYNC_DEPT_RATE=abc "$ORGSYNC_BIN" "$h" 2>&1)
    eq "orgsync $h exits 0" 0 $?
    for c in serve migrate sync status enterprise version; do
        check "orgsync $h lists $c" grep -q "^  $c " <<<"$out"
    done
done
eq "orgsync --version prints what version prints" "$("$ORGSYNC_BIN" version)" "$(ORGSYNC_DEPT_RATE=abc "$ORGSYNC_BIN" --version)"

# Unknown flags: exit 2, one line on stderr naming the flag, nothing on stdout.
usage_err() { # DESCRIPTION FLAG ARGS...: exits 2, names FLAG in one line on stderr
    local d=$1 flag=$2 rc
    shift 2
    set +e
    "$ORGSYNC_BIN" "$@" >"$ORGSYNC_TEST_TMP/ue.out.$$" 2>"$ORGSYNC_TEST_TMP/ue.err.$$"
    rc=$?
    set -e
    eq "$d exits 2" 2 "$rc"
    eq "$d: one line on stderr" 1 "$(wc -l <"$ORGSYNC_TEST_TMP/ue.err.$$")"
    check "$d: names $flag" grep -q -- "$flag" "$ORGSYNC_TEST_TMP/ue.err.$$"
    eq "$d: nothing on stdout" 0 "$(wc -c <"$ORGSYNC_TEST_TMP/ue.out.$$")"
}
usage_err "serve --frob" --frob serve --frob
usage_err "status --frob" --frob status --frob
usage_err "status --run x" --run status --run x
usage_err "sync --frob" --frob sync --frob
usage_err "migrate --frob" --frob migrate --frob
usage_err "enterprise add --frob" --frob enterprise add --frob
usage_err "version --frob" --frob version --frob
usage_err "orgsync --frob" --frob --frob
usage_err "orgsync --version --frob" --frob --version --frob
usage_err "orgsync help frob" frob help frob

set +e
"$ORGSYNC_BIN" frobnicate >/dev/null 2>&1; eq "unknown command exits 2" 2 $?
"$ORGSYNC_BIN" migrate --force >/dev/null 2>&1; eq "unknown flag exits 2" 2 $?
"$ORGSYNC_BIN" --config /nonexistent version >/dev/null 2>&1; eq "missing config file exits 2" 2 $?
set -e

# migrate: applies, then changes nothing the second time.
export ORGSYNC_PG_DSN="$DSN"
out=$("$ORGSYNC_BIN" migrate 2>/dev/null)
check "first migrate applies 001 to 009" grep -q "migrated to schema version 9 (9 files applied)" <<<"$out"
# pg_dump writes a random \restrict key into every dump: compare without it.
schema() { pg_dump -s --no-owner "$DSN" | grep -v '^\\\(un\)\?restrict' | md5sum; }
dump1=$(schema)
rows1=$(psql -qAtX "$DSN" -c "SELECT count(*), max(applied_at) FROM schema_migrations")
out=$("$ORGSYNC_BIN" migrate 2>/dev/null)
check "second migrate is a no-op" grep -q "nothing to do" <<<"$out"
eq "schema unchanged by the second migrate" "$dump1" "$(schema)"
eq "schema_migrations unchanged" "$rows1" "$(psql -qAtX "$DSN" -c "SELECT count(*), max(applied_at) FROM schema_migrations")"
tables=$(psql -qAtX "$DSN" -c "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname='public'")
eq "every SPEC table exists" "callback_inbox,department_digests,departments,enterprises,leader_fence,schema_migrations,sync_checkpoints,sync_exports,sync_progress,sync_revisions,sync_roster,sync_runs,users" "$tables"
check "users is indexed on mobile" psql -qAtX "$DSN" -c "SELECT 1 FROM pg_indexes WHERE tablename='users' AND indexdef LIKE '%(mobile)%'" -o /dev/null
set +e
psql -qAtX "$DSN" -c "INSERT INTO sync_runs (env, job, trigger, scheduled_for) VALUES ('x','j','schedule','2026-01-01T00:00:00Z')" >/dev/null
psql -qAtX "$DSN" -c "UPDATE sync_runs SET state='succeeded'" >/dev/null
psql -qAtX "$DSN" -c "INSERT INTO sync_runs (env, job, trigger, scheduled_for) VALUES ('x','j','schedule','2026-01-01T00:00:00Z')" >/dev/null 2>&1
eq "one run per (env, job, scheduled_for)" 1 $?
set -e

# A database newer than the binary: refused, exit 1, nothing changed.
psql -qAtX "$DSN" -c "INSERT INTO schema_migrations (version, name) VALUES (99, '099_future.sql')" >/dev/null
set +e
out=$("$ORGSYNC_BIN" migrate 2>&1)
rc=$?
set -e
eq "newer schema: exit 1" 1 "$rc"
check "newer schema: says why" grep -q "schema version 99, newer than this binary knows (9)" <<<"$out"
psql -qAtX "$DSN" -c "DELETE FROM schema_migrations WHERE version = 99" >/dev/null

# enterprise add reads the secret from the named variable, never argv.
export WW1_SECRET="s3cret-value-1"
out=$("$ORGSYNC_BIN" enterprise add --corp-id ww1 --secret-env WW1_SECRET --name "First Corp" 2>&1)
eq "enterprise add" "added enterprise ww1" "$out"
eq "secret stored" "s3cret-value-1" "$(psql -qAtX "$DSN" -c "SELECT corp_secret FROM enterprises WHERE corp_id='ww1'")"
out=$(WW1_SECRET=rotated "$ORGSYNC_BIN" enterprise add --corp-id ww1 --secret-env WW1_SECRET --name "First Corp" 2>&1)
eq "enterprise add again updates" "updated enterprise ww1" "$out"
out=$("$ORGSYNC_BIN" enterprise list)
check "list shows the enterprise" grep -q "^ww1 .*yes .*First Corp" <<<"$out"
check "list never shows the secret" bash -c '! grep -q rotated <<<"$1"' _ "$out"
"$ORGSYNC_BIN" enterprise disable --corp-id ww1 >/dev/null
eq "disable" f "$(psql -qAtX "$DSN" -c "SELECT enabled FROM enterprises WHERE corp_id='ww1'")"
"$ORGSYNC_BIN" enterprise enable --corp-id ww1 >/dev/null
eq "enable" t "$(psql -qAtX "$DSN" -c "SELECT enabled FROM enterprises WHERE corp_id='ww1'")"
set +e
"$ORGSYNC_BIN" enterprise add --corp-id ww2 --secret-env NOPE_UNSET --name x >/dev/null 2>&1; eq "unset secret variable exits 2" 2 $?
"$ORGSYNC_BIN" enterprise add --corp-id "bad id;drop" --secret-env WW1_SECRET --name x >/dev/null 2>&1; eq "bad corp id exits 2" 2 $?
"$ORGSYNC_BIN" enterprise disable --corp-id nosuch >/dev/null 2>&1; eq "unknown corp exits 1" 1 $?
"$ORGSYNC_BIN" enterprise remove >/dev/null 2>&1; eq "unknown subcommand exits 2" 2 $?
set -e

# Two credentials and the API mode (schema 4).
q() { psql -qAtX "$DSN" -c "$1"; }
eq "a new enterprise is auto, without a contact-sync secret" "auto|t" "$(q "SELECT api_mode, contact_secret IS NULL FROM enterprises WHERE corp_id='ww1'")"
out=$(CONTACT=c0ntact "$ORGSYNC_BIN" enterprise set --corp-id ww1 --contact-secret-env CONTACT --api-mode modern 2>&1)
eq "set changes what it is given" "updated enterprise ww1" "$out"
eq "contact secret and mode stored, the rest kept" "c0ntact|modern|rotated|First Corp" "$(q "SELECT contact_secret, api_mode, corp_secret, name FROM enterprises WHERE corp_id='ww1'")"
out=$("$ORGSYNC_BIN" enterprise list)
check "list says a contact-sync secret is set and the mode" grep -q "^ww1 .*yes .*yes .*modern" <<<"$out"
check "list never shows the contact secret" bash -c '! grep -q c0ntact <<<"$1"' _ "$out"
"$ORGSYNC_BIN" enterprise set --corp-id ww1 --no-contact-secret --api-mode auto >/dev/null
eq "--no-contact-secret clears it" "t|auto" "$(q "SELECT contact_secret IS NULL, api_mode FROM enterprises WHERE corp_id='ww1'")"
out=$(WW2=s2 C2=c2 "$ORGSYNC_BIN" enterprise add --corp-id ww2 --secret-env WW2 --contact-secret-env C2 --api-mode legacy --name Two 2>&1)
eq "add with both secrets" "added enterprise ww2" "$out"
eq "both stored" "s2|c2|legacy" "$(q "SELECT corp_secret, contact_secret, api_mode FROM enterprises WHERE corp_id='ww2'")"
set +e
err=$("$ORGSYNC_BIN" enterprise set --corp-id ww1 --api-mode fast 2>&1); rc=$?
eq "a bad --api-mode exits 2" 2 "$rc"
check "and names the option" grep -q -- "--api-mode" <<<"$err"
err=$("$ORGSYNC_BIN" enterprise set --corp-id ww1 --contact-secret-env NOPE_UNSET 2>&1); rc=$?
eq "an unset contact secret variable exits 2" 2 "$rc"
check "and names the option" grep -q -- "--contact-secret-env" <<<"$err"
"$ORGSYNC_BIN" enterprise set --corp-id ww1 >/dev/null 2>&1; eq "set with nothing to change exits 2" 2 $?
"$ORGSYNC_BIN" enterprise set --corp-id nosuch --api-mode auto >/dev/null 2>&1; eq "set of an unknown corp exits 1" 1 $?
set -e
eq "refused sets changed nothing" "auto|t" "$(q "SELECT api_mode, contact_secret IS NULL FROM enterprises WHERE corp_id='ww1'")"
finish
