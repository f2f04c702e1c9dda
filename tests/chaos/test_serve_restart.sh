#!/usr/bin/env bash
# Redis restarted mid-run (it comes back empty: no lock, no fencing counter, no
# candidates), then PostgreSQL restarted mid-run: each run finishes or is resumed,
# and the data equals the simulator's. Private servers, so restarting them
# disturbs no other test.
. "$(dirname "$0")/../lib/testlib.sh"
. "$(dirname "$0")/../integration/serve_helpers.sh"
serve_trap

PRIV="$SV_DIR/servers"
mkdir -p "$PRIV"
chmod 755 "$SV_DIR" "$PRIV"
stop_private() {
    "$ORGSYNC_SRC/tests/servers.sh" stop-redis "$PRIV/redis" || true
    "$ORGSYNC_SRC/tests/servers.sh" stop-pg "$PRIV/pg" || true
}
SV_CLEANUP_HOOK=stop_private
eval "$("$ORGSYNC_SRC/tests/servers.sh" start-pg "$PRIV/pg")"
eval "$("$ORGSYNC_SRC/tests/servers.sh" start-redis "$PRIV/redis")"
psql -qX -v ON_ERROR_STOP=1 "$PG_DSN" -c "CREATE ROLE orgsync LOGIN" -c "CREATE DATABASE orgsync OWNER orgsync" >/dev/null
SDB="host=127.0.0.1 port=$PG_PORT user=orgsync dbname=orgsync"
ORGSYNC_PG_DSN="$SDB" "$ORGSYNC_BIN" migrate >/dev/null 2>&1
SV_REDIS_URL=$REDIS_URL
SV_ENV="rst$$"

serve_sim 2 --enterprises 3 --departments 30 --users-per-dept 4 --seed 21 --rate 20
serve_corps "$SDB" 3
for n in a b; do
    serve_start "$n" $(( $(printf '%d' "'$n") - 97 )) ORGSYNC_LOCK_TTL_MS=2000 ORGSYNC_DEPT_RATE=15
done
serve_wait_ready a b

# One run; its leader is mid-way when f (restart-redis or restart-pg) happens.
run_with() {
    local what=$1 rid
    rid=$(serve_request_run a)
    T=5 wait_for run_is "$rid" running || not_ok "$what: run $rid did not start"
    done_depts() { psql_q "SELECT coalesce(sum(departments_done), 0) FROM sync_progress WHERE run_id = $rid"; }
    T=10 wait_for eval '[ "$(done_depts)" -ge 25 ]' || true
    echo "$what: restarting at $(done_depts) of 90 departments (leader $(serve_leader))"
    # The port may be taken meanwhile as some connection's ephemeral port
    # (servers.sh picks ports inside ip_local_port_range): try a few times.
    for try in 1 2 3 4 5; do
        "$ORGSYNC_SRC/tests/servers.sh" "$what" "$PRIV/${what#restart-}" && break
        echo "$what: attempt $try failed; again"
        sleep 0.5
    done
    # Ended: a final state (a failed read, empty, is not one).
    T=60 wait_for eval 'case "$(run_state "$rid")" in succeeded | partial | failed) true ;; *) false ;; esac' ||
        not_ok "$what: run $rid did not end"
    eq "$what: run $rid succeeded" succeeded "$(run_state "$rid")"
    echo "$what: run $rid ended $(psql_q "SELECT state || ' after ' || attempt || ' attempt(s), leader ' || leader_instance FROM sync_runs WHERE run_id = $rid")"
    check "$what: data equals the simulator's" serve_data_equals_sim "$SDB"
    eq "$what: no run left unfinished" 0 "$(psql_q "SELECT count(*) FROM sync_runs WHERE state IN ('pending', 'running', 'abandoned')")"
}

# A deployment that has led for a while: tokens well above what a fresh
# counter hands out after the restart.
rcli SET "orgsync:$SV_ENV:fence:$SV_JOB" 50 >/dev/null
run_with restart-redis
check "the fencing counter was raised past the fence row" \
    grep -q 'fencing counter was behind the fence row' "$SV_DIR/a.log" "$SV_DIR/b.log"

# Change the directory so the next run has real work (adds, removes, moves).
curl -fsS -X POST "$SIM_URL/sim/mutate" -H 'Content-Type: application/json' \
    -d '{"corp_id":"wwsim0001","random":{"add":5,"remove":3,"rename":3,"move":3}}' >/dev/null
run_with restart-pg

for n in a b; do
    serve_stop "$n"
    eq "$n exits 0 on SIGTERM" 0 "$SV_RC"
done
check "no sanitizer report in the logs" serve_logs_clean
finish
