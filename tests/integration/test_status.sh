#!/usr/bin/env bash
# orgsync status: the latest run or a given one, as a table or as the same JSON
# the API answers; clear errors for a bad or unknown run id.
. "$(dirname "$0")/../lib/testlib.sh"
. "$(dirname "$0")/serve_helpers.sh"
serve_trap

SV_ENV="st$$"
SDB=$(fresh_db)
SV_DBS+=("$SDB")
export ORGSYNC_PG_DSN="$SDB" ORGSYNC_REDIS_URL="$ORGSYNC_TEST_REDIS_URL" ORGSYNC_ENV="$SV_ENV"
export ORGSYNC_LOG_LEVEL=warn

set +e
out=$("$ORGSYNC_BIN" status 2>&1); rc=$?
set -e
eq "no run yet: exit 1" 1 "$rc"
check "no run yet: says so" grep -q "no run yet in environment $SV_ENV" <<<"$out"

serve_sim 2 --enterprises 2 --departments 4 --users-per-dept 3 --seed 5 --rate 50
serve_corps "$SDB" 2
ORGSYNC_UPSTREAM_URL="http://127.0.0.1:${SIM_PORTS[0]}" ORGSYNC_DEPT_RATE=40 \
    "$ORGSYNC_BIN" sync >"$SV_DIR/sync.out" 2>&1 || { cat "$SV_DIR/sync.out"; not_ok "sync failed"; }

json=$("$ORGSYNC_BIN" status --json)
eq "json: state" succeeded "$(jq -r .state <<<"$json")"
eq "json: percent" 100 "$(jq -r .percent <<<"$json")"
eq "json: enterprises" "wwsim0001 wwsim0002" "$(jq -r '[.enterprises[].corp_id] | join(" ")' <<<"$json")"
eq "json: members" 24 "$(jq '[.enterprises[].users_upserted] | add' <<<"$json")"
rid=$(jq -r .run_id <<<"$json")

# The same answer as the API of a running worker (minus nothing: same builder).
serve_start a 1 ORGSYNC_WORKERS=1 ORGSYNC_SCHEDULE=off
serve_wait_ready a
api=$(curl -fsS "http://127.0.0.1:${SV_HTTP[a]}/v1/runs/$rid")
eq "status --json equals GET /v1/runs/{id}" "$(jq -S . <<<"$api")" "$(jq -S . <<<"$("$ORGSYNC_BIN" status --json --run "$rid")")"

table=$("$ORGSYNC_BIN" status)
check "table: the run line" grep -q "^run $rid (cli, attempt 1): succeeded, 100% done" <<<"$table"
check "table: an enterprise row" grep -Eq "^wwsim0001 +succeeded +100 +4/4 +12 " <<<"$table"
check "table: recent runs" grep -q "^recent runs (env $SV_ENV):" <<<"$table"

set +e
"$ORGSYNC_BIN" status --run 99999 >/dev/null 2>&1; eq "unknown run: exit 1" 1 $?
"$ORGSYNC_BIN" status --run abc >/dev/null 2>&1; eq "non-integer run id: exit 2" 2 $?
"$ORGSYNC_BIN" status --run "1;DROP TABLE users" >/dev/null 2>&1; eq "injection-shaped run id: exit 2" 2 $?
"$ORGSYNC_BIN" status --verbose >/dev/null 2>&1; eq "unknown flag: exit 2" 2 $?
set -e
eq "users intact" 24 "$(psql -qAtX "$SDB" -c "SELECT count(*) FROM users")"
finish
