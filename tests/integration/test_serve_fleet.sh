#!/usr/bin/env bash
# Three `orgsync serve` instances x 2 workers on one PostgreSQL, one Redis and the
# simulator: exactly one leader per fire, leadership rotates, every instance
# answers progress the same, and SIGTERM ends each one cleanly with the lock
# released.
. "$(dirname "$0")/../lib/testlib.sh"
. "$(dirname "$0")/serve_helpers.sh"
serve_trap

SV_ENV="fleet$$"
SDB=$(fresh_db)
SV_DBS+=("$SDB")
serve_sim 3 --enterprises 2 --departments 5 --users-per-dept 3 --seed 11 --rate 50
serve_corps "$SDB" 2

CRON='*/3 * * * * *'
for n in a b c; do
    i=$(( $(printf '%d' "'$n") - 97 ))
    serve_start "$n" "$i" ORGSYNC_CRON="$CRON" ORGSYNC_DEPT_RATE=40
done
serve_wait_ready a b c

# Four fires (every 3 s).
T=30 wait_for runs_at_least succeeded 4 ||
    not_ok "four scheduled runs did not succeed in time"
sleep 0.3
runs=$(psql_q "SELECT count(*) FROM sync_runs WHERE env = '$SV_ENV'")
check "at least four runs" test "$runs" -ge 4
eq "every run is a schedule fire, at a 3 s boundary" 0 \
    "$(psql_q "SELECT count(*) FROM sync_runs WHERE env = '$SV_ENV' AND (trigger <> 'schedule' OR extract(second FROM scheduled_for)::int % 3 <> 0)")"
eq "one run per fire" "$runs" "$(psql_q "SELECT count(DISTINCT scheduled_for) FROM sync_runs WHERE env = '$SV_ENV'")"
eq "each run had one attempt by one leader" 0 \
    "$(psql_q "SELECT count(*) FROM sync_runs WHERE env = '$SV_ENV' AND state = 'succeeded' AND attempt <> 1")"
leaders=$(psql_q "SELECT string_agg(DISTINCT leader_instance, ',' ORDER BY leader_instance) FROM sync_runs WHERE env = '$SV_ENV' AND state = 'succeeded'")
check "only scheduler workers (worker 1) lead: $leaders" bash -c '[[ "$1" =~ ^([abc]/w1,?)+$ ]]' _ "$leaders"
# Fair candidacy: over four fires the least-recently-led goes first, so all three lead.
eq "leadership rotated over the three instances" "a/w1,b/w1,c/w1" "$leaders"

# Exactly one leader per fire: the upstream saw each department fetched once per run.
done_runs=$(psql_q "SELECT count(*) FROM sync_runs WHERE env = '$SV_ENV' AND state = 'succeeded'")
inflight=$(psql_q "SELECT count(*) FROM sync_runs WHERE env = '$SV_ENV' AND state <> 'succeeded'")
ul=$(sim_stat '.total.by_path["user/list"]')
if [ "$inflight" = 0 ]; then
    eq "user/list calls = runs x departments (no fire worked twice)" $((done_runs * 10)) "$ul"
else
    check "user/list calls within runs x departments (a run in flight)" test "$ul" -le $(((done_runs + 1) * 10))
fi
eq "the upstream never refused for rate" 0 "$(sim_stat '.total.violations')"

# Every instance, every worker, answers the same progress for a finished run.
rid=$(psql_q "SELECT min(run_id) FROM sync_runs WHERE env = '$SV_ENV' AND state = 'succeeded'")
ref=$(curl -fsS "http://127.0.0.1:${SV_HTTP[a]}/v1/runs/$rid")
check "run $rid answered with its enterprises" bash -c 'jq -e ".run_id == $2 and .state == \"succeeded\" and (.enterprises | length) == 2 and .percent == 100" <<<"$1" >/dev/null' _ "$ref" "$rid"
same=1
for n in a b c; do
    for _ in 1 2 3 4; do
        got=$(curl -fsS "http://127.0.0.1:${SV_HTTP[$n]}/v1/runs/$rid")
        [ "$got" = "$ref" ] || { same=0; echo "differs on $n: $got"; }
    done
done
eq "all instances and workers answer run $rid the same" 1 "$same"
check "data equals the simulator's" serve_data_equals_sim "$SDB"

# /v1/leader explains the gate: worker 1 eligible, worker 2 not.
w_elig=""
for _ in $(seq 1 12); do
    w_elig+=$(curl -fsS "http://127.0.0.1:${SV_HTTP[b]}/v1/leader" | jq -r '"\(.this_worker.worker_id):\(.this_worker.eligible);"')
done
check "worker 1 reports eligible" grep -q '1:true' <<<"$w_elig"
check "worker 2 reports not eligible" grep -q '2:false' <<<"$w_elig"
why=""
for _ in $(seq 1 12); do
    [ -n "$why" ] && break
    why=$(curl -fsS "http://127.0.0.1:${SV_HTTP[b]}/v1/leader" | jq -r 'select(.this_worker.worker_id == 2) | .this_worker.why_not')
done
check "worker 2 says why: $why" grep -q 'worker id 2 not in ORGSYNC_SCHEDULER_WORKERS' <<<"$why"
cands=$(rcli HLEN "orgsync:$SV_ENV:candidates:$SV_JOB")
eq "three live candidates in the candidates hash" 3 "$cands"

# Graceful stop: each exits 0; once all are gone no lock is left and no run is running.
for n in a b c; do
    serve_stop "$n"
    eq "SIGTERM: $n exits 0" 0 "$SV_RC"
done
eq "no lock left behind" "" "$(rcli GET "orgsync:$SV_ENV:lock:$SV_JOB")"
eq "no run left running" 0 "$(psql_q "SELECT count(*) FROM sync_runs WHERE env = '$SV_ENV' AND state = 'running'")"
eq "candidates left the hash" 0 "$(rcli HLEN "orgsync:$SV_ENV:candidates:$SV_JOB")"
check "no sanitizer report in the logs" serve_logs_clean
finish
