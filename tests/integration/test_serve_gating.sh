#!/usr/bin/env bash
# The gate: beside a production leader, four deployments that must never run
# production's job run for several fires: ORGSYNC_SCHEDULE=off, a read-only
# database role (ORGSYNC_READ_ONLY=auto), an older code version, and staging as
# shipped (deploy/env/staging.env: ORGSYNC_ENV=staging, schedule off, reader
# role). None takes production's lock or calls the upstream, and each says why
# in GET /v1/leader. A staging deployment with the schedule switched on runs
# only under its own keys and rows. When the newer leader leaves, the older
# version competes again (the gate is not a dead end).
. "$(dirname "$0")/../lib/testlib.sh"
. "$(dirname "$0")/serve_helpers.sh"
serve_trap

SV_ENV="gate$$"
STG_ENV="stg$$"
SDB=$(fresh_db)
SV_DBS+=("$SDB")
dbname=$(sed -n 's/.*dbname=\([^ ]*\).*/\1/p' <<<"$SDB")
ADMIN_DB="${ORGSYNC_TEST_PG_ADMIN_DSN/dbname=postgres/dbname=$dbname}"
# Roles are cluster-wide and another test may be creating them right now.
psql -qX -v ON_ERROR_STOP=1 "$ADMIN_DB" -f "$ORGSYNC_SRC/sql/roles.sql" >/dev/null 2>&1 ||
    psql -qX -v ON_ERROR_STOP=1 "$ADMIN_DB" -f "$ORGSYNC_SRC/sql/roles.sql" >/dev/null
READER_DSN="${SDB/user=orgsync/user=orgsync_reader}"

serve_sim 6 --enterprises 2 --departments 4 --users-per-dept 3 --seed 3 --rate 50
serve_corps "$SDB" 2
CRON='*/2 * * * * *'
serve_start P 0 ORGSYNC_CRON="$CRON"
serve_start off 1 ORGSYNC_CRON="$CRON" ORGSYNC_SCHEDULE=off
serve_start ro 2 ORGSYNC_CRON="$CRON" ORGSYNC_PG_DSN="$READER_DSN application_name=ro" ORGSYNC_READ_ONLY=auto
serve_start old 3 ORGSYNC_CRON="$CRON" ORGSYNC_CODE_VERSION=0.0.9
serve_start stg 4 ORGSYNC_CRON="$CRON" ORGSYNC_ENV=staging ORGSYNC_SCHEDULE=off \
    ORGSYNC_PG_DSN="$READER_DSN application_name=stg" ORGSYNC_READ_ONLY=auto
serve_start stgon 5 ORGSYNC_CRON="$CRON" ORGSYNC_ENV="$STG_ENV"
serve_wait_ready P off ro old stg stgon

# Watch the production lock for 8 s (four fires).
holders=""
end=$(($(ms_now) + 8000))
while [ "$(ms_now)" -lt "$end" ]; do
    h=$(serve_leader)
    [ -n "$h" ] && holders+="$h"$'\n'
    sleep 0.05
done
holders=$(sort -u <<<"$holders" | grep -v '^$' | paste -sd, -)
eq "only the production leader ever held production's lock" "P/w1" "$holders"
prod_runs=$(runs_in succeeded)
check "production ran its fires ($prod_runs runs)" test "$prod_runs" -ge 3
eq "every production run was led by P" "P/w1" \
    "$(psql_q "SELECT string_agg(DISTINCT leader_instance, ',') FROM sync_runs WHERE env = '$SV_ENV'")"
eq "production's fence is P's" "P/w1" "$(psql_q "SELECT instance FROM leader_fence WHERE env = '$SV_ENV'")"
check "P called the upstream" test "$(sim_port_requests "${SIM_PORTS[0]}")" -gt 0
i=1
for n in off ro old stg; do
    eq "$n never called the upstream" 0 "$(sim_port_requests "${SIM_PORTS[$i]}")"
    i=$((i + 1))
done
eq "no staging run in production's rows" 0 "$(psql_q "SELECT count(*) FROM sync_runs WHERE env = 'staging'")"
eq "nobody took the shipped staging lock" "" "$(rcli GET "orgsync:staging:lock:$SV_JOB")"
eq "candidates: only P and old heartbeat (off and ro never compete)" "P/w1,old/w1" \
    "$(rcli HKEYS "orgsync:$SV_ENV:candidates:$SV_JOB" | sort | paste -sd, -)"
# Staging with the schedule on: its own lock, its own rows, never production's.
check "staging (schedule on) ran in its own namespace" test \
    "$(psql_q "SELECT count(*) FROM sync_runs WHERE env = '$STG_ENV' AND leader_instance = 'stgon/w1'")" -ge 1
eq "staging's fence row is its own" "stgon/w1" "$(psql_q "SELECT instance FROM leader_fence WHERE env = '$STG_ENV'")"

# Each explains itself on GET /v1/leader (worker 1: the scheduler worker).
why_of() {
    local n=$1 j
    for _ in $(seq 1 20); do
        j=$(curl -fsS "http://127.0.0.1:${SV_HTTP[$n]}/v1/leader")
        if [ "$(jq -r .this_worker.worker_id <<<"$j")" = 1 ]; then
            jq -r '"\(.this_worker.eligible)|\(.this_worker.why_not)"' <<<"$j"
            return
        fi
    done
}
w=$(why_of P); check "P is eligible ($w)" grep -q '^true|null$' <<<"$w"
w=$(why_of off); check "off: not eligible, schedule off ($w)" grep -q '^false|.*schedule off' <<<"$w"
w=$(why_of ro); check "ro: not eligible, read-only role ($w)" grep -q '^false|.*database role cannot write' <<<"$w"
w=$(why_of old); check "old: not eligible, older version ($w)" grep -q '^false|.*0.0.9 is older than 0.1.0' <<<"$w"
w=$(why_of stg); check "stg: not eligible, schedule off in staging ($w)" grep -q '^false|.*schedule off.*environment staging' <<<"$w"
check "old logged why it does not compete" grep -q 'a live candidate runs newer code' "$SV_DIR/old.log"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $SV_ADMIN" "http://127.0.0.1:${SV_HTTP[ro]}/v1/runs")
eq "the read-only deployment refuses POST /v1/runs" 403 "$code"

# The newer leader leaves: the older version is the newest live one and leads.
serve_stop P
eq "P exits 0" 0 "$SV_RC"
old_led() { [ "$(psql_q "SELECT count(*) FROM sync_runs WHERE env = '$SV_ENV' AND leader_instance = 'old/w1' AND state = 'succeeded'")" -ge 1 ]; }
T=10 wait_for old_led
check "with P gone, old leads a fire" old_led
eq "still nobody else called the upstream" "0 0 0" \
    "$(sim_port_requests "${SIM_PORTS[1]}") $(sim_port_requests "${SIM_PORTS[2]}") $(sim_port_requests "${SIM_PORTS[4]}")"
check "no sanitizer report in the logs" serve_logs_clean
finish
