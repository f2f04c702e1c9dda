#!/usr/bin/env bash
# /metrics after a run on a one-worker host (so the worker that synced is the
# one that answers): run duration, departments and members synced, upstream
# requests by API and errcode, pacing waits, lock and leader figures.
. "$(dirname "$0")/../lib/testlib.sh"
. "$(dirname "$0")/serve_helpers.sh"
serve_trap

SV_ENV="met$$"
SDB=$(fresh_db)
SV_DBS+=("$SDB")
serve_sim 1 --enterprises 2 --departments 6 --users-per-dept 3 --seed 4
serve_corps "$SDB" 2
serve_start a 0 ORGSYNC_WORKERS=1
serve_wait_ready a
rid=$(serve_request_run a)
T=30 wait_for run_is "$rid" succeeded || not_ok "run $rid did not succeed"
m=$(curl -fsS "http://127.0.0.1:${SV_HTTP[a]}/metrics")
val() { awk -v k="$1" '$1 == k {print $2}' <<<"$m"; }
members=$(psql -qAtX "$SDB" -c "SELECT sum(users_upserted) FROM sync_progress WHERE run_id = $rid")

eq "departments synced" 12 "$(val orgsync_departments_synced_total)"
eq "members synced" "$members" "$(val orgsync_members_synced_total)"
eq "user/list answers with errcode 0" 12 "$(val 'orgsync_upstream_requests_total{api="user/list",errcode="0"}')"
eq "department/list answers" 2 "$(val 'orgsync_upstream_requests_total{api="department/list",errcode="0"}')"
check "pacing waits counted" awk -v v="$(val orgsync_pacing_waits_total)" 'BEGIN { exit !(v > 0) }'
eq "one succeeded run timed" 1 "$(val 'orgsync_run_duration_seconds_count{state="succeeded"}')"
check "runs by state" grep -q "^orgsync_runs{env=\"$SV_ENV\",orgsync_job=\"directory-sync\",state=\"succeeded\"} 1" <<<"$m"
check "leader changes counted" grep -q "^orgsync_leader_changes_total{env=\"$SV_ENV\",orgsync_job=\"directory-sync\"} [1-9]" <<<"$m"
check "HTTP requests by route and status" grep -q '^orgsync_http_requests_total{.*route="/v1/runs".*status="202"' <<<"$m"
# the new figures: last success (overall and per enterprise), build, process
last=$(psql -qAtX "$SDB" -c "SELECT extract(epoch FROM finished_at)::bigint FROM sync_runs WHERE run_id = $rid")
check "last success overall" awk -v v="$(val "orgsync_last_success_timestamp_seconds{env=\"$SV_ENV\",orgsync_job=\"directory-sync\"}")" -v t="$last" 'BEGIN { exit !(v >= t - 1 && v <= t + 1) }'
check "last success of each enterprise" test "$(grep -c '^orgsync_last_success_timestamp_seconds{.*corp_id="wwsim000[12]"} 1[0-9]*' <<<"$m")" = 2
check "build info" grep -q '^orgsync_build_info{version="[0-9.]*",commit="[0-9a-f]*\(unknown\)*",schema_version="[0-9]*",.*} 1$' <<<"$m"
check "process CPU of worker 1" grep -q '^process_cpu_seconds_total{worker="1"} [0-9.]*$' <<<"$m"
check "process RSS of worker 1" awk -v v="$(val 'process_resident_memory_bytes{worker="1"}')" 'BEGIN { exit !(v > 1000000) }'
check "process fds of worker 1" awk -v v="$(val 'process_open_fds{worker="1"}')" 'BEGIN { exit !(v > 3) }'
check "process start time of worker 1" awk -v v="$(val 'process_start_time_seconds{worker="1"}')" -v now="$(date +%s)" 'BEGIN { exit !(v > now - 600 && v <= now + 1) }'
eq "one live worker" 1 "$(val orgsync_workers_up)"
check "no label named instance or job (Prometheus owns those)" bash -c '! grep -Eq "[{,](instance|job)=" <<<"$1"' _ "$m"

# Two more runs; in the last, wwsim0002 fails (60011 on one department). Each
# enterprise's last success is the end of the last run that synced it: the
# worker reads only runs newer than its previous scrape and keeps the rest.
ended() { psql -qAtX "$SDB" -c "SELECT extract(epoch FROM finished_at) FROM sync_progress WHERE run_id = $1 AND corp_id = '$2'"; }
near() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "" && b != "" && a - b < 0.01 && b - a < 0.01) }'; }
corp_last() { val "orgsync_last_success_timestamp_seconds{env=\"$SV_ENV\",orgsync_job=\"directory-sync\",corp_id=\"$1\"}"; }
rid2=$(serve_request_run a)
T=30 wait_for run_is "$rid2" succeeded || not_ok "run $rid2 did not succeed"
m=$(curl -fsS "http://127.0.0.1:${SV_HTTP[a]}/metrics")
check "wwsim0002: run $rid2" near "$(corp_last wwsim0002)" "$(ended "$rid2" wwsim0002)"
curl -fsS -X POST -d '{"fail_dept":2,"fail_dept_corp":"wwsim0002","fail_dept_errcode":60011}' "$SIM_URL/sim/faults" >/dev/null
rid3=$(serve_request_run a)
T=30 wait_for run_is "$rid3" partial || not_ok "run $rid3 did not end partial"
m=$(curl -fsS "http://127.0.0.1:${SV_HTTP[a]}/metrics")
check "wwsim0001: run $rid3" near "$(corp_last wwsim0001)" "$(ended "$rid3" wwsim0001)"
check "wwsim0002 (failed in run $rid3): still run $rid2" near "$(corp_last wwsim0002)" "$(ended "$rid2" wwsim0002)"
check "the environment's last success: run $rid2" near \
    "$(val "orgsync_last_success_timestamp_seconds{env=\"$SV_ENV\",orgsync_job=\"directory-sync\"}")" \
    "$(psql -qAtX "$SDB" -c "SELECT extract(epoch FROM finished_at) FROM sync_runs WHERE run_id = $rid2")"
check "the upstream_forbidden alert is counted" grep -q '^orgsync_alerts_total{kind="upstream_forbidden"} [1-9]' <<<"$m"
check "valid exposition: every sample line is 'name{labels} value'" \
    bash -c '! grep -v "^#" <<<"$1" | grep -Ev "^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? [-+0-9.eEInfa]+$" | grep -q .' _ "$m"
finish
