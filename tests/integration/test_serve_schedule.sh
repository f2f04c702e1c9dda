#!/usr/bin/env bash
# The schedule: a run asked for through POST /v1/runs starts within a second; a
# fire missed while nobody led runs once when leaders appear (two instances
# start together, one run); a fire is computed in ORGSYNC_TZ.
. "$(dirname "$0")/../lib/testlib.sh"
. "$(dirname "$0")/serve_helpers.sh"
serve_trap

SV_ENV="sch$$"
SDB=$(fresh_db)
SV_DBS+=("$SDB")
serve_sim 2 --enterprises 1 --departments 3 --users-per-dept 2 --seed 8 --rate 50
serve_corps "$SDB" 1

# 1. Manual runs: the leader picks each up within a second (NOTIFY), from any
#    instance's API.
serve_start a 0
serve_start b 1
serve_wait_ready a b
sleep 1
worst=0
for via in a b a; do
    rid=$(serve_request_run "$via")
    T=5 wait_for run_is "$rid" succeeded || not_ok "manual run $rid did not finish"
    lag=$(psql_q "SELECT (extract(epoch FROM started_at - created_at) * 1000)::int FROM sync_runs WHERE run_id = $rid")
    echo "manual run $rid (asked via $via) started ${lag} ms after the request"
    [ "$lag" -gt "$worst" ] && worst=$lag
done
check "every manual run started within a second (worst ${worst} ms)" test "$worst" -lt 1000
eq "manual runs are 'manual'" 3 "$(psql_q "SELECT count(*) FROM sync_runs WHERE env = '$SV_ENV' AND trigger = 'manual'")"
for n in a b; do serve_stop "$n"; done

# 2. Missed fire: the last scheduled run was three minutes ago and nobody led
#    since; with a per-minute cron the fire at the start of this minute has no
#    run. Two instances start together: it runs once, at once (not at the next
#    minute).
psql_q "INSERT INTO sync_runs (env, job, trigger, scheduled_for, state, attempt, finished_at)
        VALUES ('$SV_ENV', '$SV_JOB', 'schedule', date_trunc('minute', now()) - interval '3 minutes', 'succeeded', 1, now())" >/dev/null
while [ $(($(date +%s) % 60)) -ge 56 ]; do sleep 0.5; done # not across a minute boundary
start_s=$(date +%s)
serve_start a 0 ORGSYNC_CRON='* * * * *'
serve_start b 1 ORGSYNC_CRON='* * * * *'
caught_up() { [ "$(psql_q "SELECT count(*) FROM sync_runs WHERE env = '$SV_ENV' AND trigger = 'schedule' AND scheduled_for > now() - interval '2 minutes' AND state = 'succeeded'")" -ge 1 ]; }
T=8 wait_for caught_up
check "the missed fire ran as soon as leaders appeared" caught_up
fire=$(psql_q "SELECT extract(epoch FROM min(scheduled_for))::bigint FROM sync_runs WHERE env = '$SV_ENV' AND trigger = 'schedule' AND scheduled_for > now() - interval '2 minutes'")
eq "it is the latest fire at or before the start (minute boundary)" $((start_s / 60 * 60)) "$fire"
sleep 1
eq "it ran once" 1 "$(psql_q "SELECT count(*) FROM sync_runs WHERE env = '$SV_ENV' AND scheduled_for = to_timestamp($fire)")"
check "the catch-up was logged" grep -q '"scheduler: a fire has no run; catching up"' "$SV_DIR/a.log" "$SV_DIR/b.log"
for n in a b; do serve_stop "$n"; done

# 3. The cron is read in ORGSYNC_TZ: "at second 0 of minute M in Asia/Kolkata"
#    (UTC+05:30) fires at M+30 minutes of UTC's hour. The next such fire is
#    far; check the fire time the worker logs at debug level.
m=$(( (10#$(date -u +%M) + 2) % 60 )) # 10#: "08" is not octal
serve_start k 0 ORGSYNC_CRON="0 $m * * * *" ORGSYNC_TZ=Asia/Kolkata ORGSYNC_LOG_LEVEL=debug
serve_wait_ready k
T=5 wait_for grep -q '"scheduler: next fire"' "$SV_DIR/k.log"
at_ms=$(sed -n 's/.*"scheduler: next fire".*"at_ms":\([0-9]*\).*/\1/p' "$SV_DIR/k.log" | head -1)
eq "the fire's UTC minute is M+30 (Kolkata is UTC+05:30)" $(( (m + 30) % 60 )) "$(date -u -d "@$((at_ms / 1000))" +%-M)"
serve_stop k
check "no sanitizer report in the logs" serve_logs_clean
finish
