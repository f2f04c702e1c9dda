#!/usr/bin/env bash
# SIGSTOP of the leader past its TTL, takeover, SIGCONT: the stale leader writes
# nothing after the takeover (an audit trigger records which instance wrote each
# row, by application_name) and sends at most one more upstream request per
# enterprise before it stops; the run finishes and the data equals the
# simulator's.
. "$(dirname "$0")/../lib/testlib.sh"
. "$(dirname "$0")/../integration/serve_helpers.sh"
serve_trap

SV_ENV="stop$$"
TTL=2000
SDB=$(fresh_db)
SV_DBS+=("$SDB")
serve_audit_install "$SDB"
serve_sim 3 --enterprises 3 --departments 30 --users-per-dept 4 --seed 9 --rate 20
serve_corps "$SDB" 3
for n in a b c; do
    serve_start "$n" $(( $(printf '%d' "'$n") - 97 )) ORGSYNC_LOCK_TTL_MS=$TTL ORGSYNC_DEPT_RATE=15
done
serve_wait_ready a b c

rid=$(serve_request_run a)
T=5 wait_for run_is "$rid" running || not_ok "run $rid did not start"
done_depts() { psql_q "SELECT coalesce(sum(departments_done), 0) FROM sync_progress WHERE run_id = $rid"; }
T=10 wait_for eval '[ "$(done_depts)" -ge 20 ]' || true
leader=$(serve_leader)
stale=${leader%%/*}
check "a leader is mid-run ($leader)" test -n "$stale"
sim_idx=$(( $(printf '%d' "'$stale") - 97 ))
stale_port=${SIM_PORTS[$sim_idx]}

kill -STOP -- "-${SV_PID[$stale]}"
t_stop=$(ms_now)
attempt2() { [ "$(psql_q "SELECT attempt FROM sync_runs WHERE run_id = $rid")" -ge 2 ]; }
T=10 wait_for attempt2 || not_ok "nobody took over from the paused leader"
took=$(($(ms_now) - t_stop))
echo "takeover ${took} ms after SIGSTOP (TTL ${TTL} ms)"
check "taken over within TTL + 1 s (${took} ms)" test "$took" -le $((TTL + 1000))
takeover_ts=$(psql_q "SELECT acquired_at FROM leader_fence WHERE env = '$SV_ENV'")
new_leader=$(serve_leader)
check "the new leader ($new_leader) is another instance" bash -c '[ -n "$1" ] && [ "${1%%/*}" != "$2" ]' _ "$new_leader" "$stale"
sleep 0.5 # the new leader is writing
before=$(sim_port_requests "$stale_port")
kill -CONT -- "-${SV_PID[$stale]}"
T=30 wait_for run_is "$rid" succeeded || not_ok "run $rid did not finish"
sleep 1
after=$(sim_port_requests "$stale_port")
echo "stale leader: $before upstream requests before SIGCONT, $after after"
check "the stale leader sent at most one more request per enterprise ($((after - before)) <= 3)" \
    test $((after - before)) -le 3
wrote_before=$(psql_q "SELECT count(*) FROM write_audit WHERE app = '$stale' AND ts <= '$takeover_ts'")
wrote_after=$(psql_q "SELECT count(*) FROM write_audit WHERE app = '$stale' AND ts > '$takeover_ts'")
check "the audit saw the stale leader write before the takeover ($wrote_before rows)" test "$wrote_before" -gt 0
eq "the stale leader wrote nothing after the takeover" 0 "$wrote_after"
check "the stale leader stepped down" grep -q '"leader stepping down"' "$SV_DIR/$stale.log"
eq "one run, attempt 2, succeeded" "succeeded 2" "$(psql_q "SELECT state || ' ' || attempt FROM sync_runs WHERE run_id = $rid")"
eq "one run in all" 1 "$(runs_in)"
check "data equals the simulator's" serve_data_equals_sim "$SDB"
# The stale instance is a standby again and stops cleanly.
serve_stop "$stale"
eq "the stale instance exits 0 on SIGTERM" 0 "$SV_RC"
check "no sanitizer report in the logs" serve_logs_clean
finish
