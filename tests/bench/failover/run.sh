#!/usr/bin/env bash
# Failover under kill -9: three `orgsync serve` instances (2 workers each) on a
# throwaway PostgreSQL and Redis, the simulator upstream. KILLS times: ask for a
# run, kill -9 the leader's whole process group at a random point of it, time
# the takeover (kill -> the run claimed again by another instance), let the run
# end, restart the killed instance. Prints the takeover times (median, max),
# departments fetched twice, runs that ended in a terminal state, and whether
# the data equals the simulator's after each run.
#
#   tests/bench/failover/run.sh
#
# Binaries: $ORGSYNC_BIN / $ORGSYNC_SIM_BIN, else a Release build in
# build-bench/ (made if missing). KILLS (20), TTL_MS (2000), ENTERPRISES (3),
# DEPARTMENTS (30), RATE (15 per enterprise; the simulator allows 20) tune it.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/../../.." && pwd)
KILLS=${KILLS:-20}
TTL_MS=${TTL_MS:-2000}
ENTERPRISES=${ENTERPRISES:-3}
DEPARTMENTS=${DEPARTMENTS:-30}
RATE=${RATE:-15}
if [ -z "${ORGSYNC_BIN:-}" ]; then
    BUILD=$SRC/build-bench
    if [ ! -x "$BUILD/orgsync" ] || [ ! -x "$BUILD/orgsync-sim" ]; then
        cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
        cmake --build "$BUILD" -j"$(nproc)" --target orgsync orgsync-sim >/dev/null
    fi
    ORGSYNC_BIN=$BUILD/orgsync
    ORGSYNC_SIM_BIN=$BUILD/orgsync-sim
fi
export ORGSYNC_BIN ORGSYNC_SIM_BIN ORGSYNC_SRC=$SRC

TMP=$(mktemp -d /tmp/orgsync-failover.XXXXXX)
chmod 755 "$TMP"
stop_servers() {
    "$SRC/tests/servers.sh" stop-redis "$TMP/redis" || true
    "$SRC/tests/servers.sh" stop-pg "$TMP/pg" || true
    rm -rf "$TMP"
}
eval "$("$SRC/tests/servers.sh" start-pg "$TMP/pg")"
eval "$("$SRC/tests/servers.sh" start-redis "$TMP/redis")"
psql -qX -v ON_ERROR_STOP=1 "$PG_DSN" -c "CREATE ROLE orgsync LOGIN" -c "CREATE DATABASE orgsync OWNER orgsync" >/dev/null
ORGSYNC_PG_DSN="host=127.0.0.1 port=$PG_PORT user=orgsync dbname=orgsync" "$ORGSYNC_BIN" migrate >/dev/null 2>&1
export ORGSYNC_TEST_PG_ADMIN_DSN="$PG_DSN" ORGSYNC_TEST_REDIS_URL="$REDIS_URL" ORGSYNC_TEST_TMP="$TMP"
export ORGSYNC_TEST_PG_DSN="host=127.0.0.1 port=$PG_PORT user=orgsync dbname=orgsync_test"

# The test helpers do the process bookkeeping (and the cleanup on any exit).
# shellcheck source=tests/lib/testlib.sh
. "$SRC/tests/lib/testlib.sh"
# shellcheck source=tests/integration/serve_helpers.sh
. "$SRC/tests/integration/serve_helpers.sh"
SV_CLEANUP_HOOK=stop_servers
serve_trap
SV_ENV=bench
SDB=$(fresh_db)
SV_DBS+=("$SDB")
serve_sim 3 --enterprises "$ENTERPRISES" --departments "$DEPARTMENTS" --users-per-dept 4 --seed 17 --rate 20
serve_corps "$SDB" "$ENTERPRISES"
start_one() { serve_start "$1" $(( $(printf '%d' "'$1") - 97 )) ORGSYNC_LOCK_TTL_MS="$TTL_MS" ORGSYNC_DEPT_RATE="$RATE"; }
for n in a b c; do start_one "$n"; done
serve_wait_ready a b c
sleep 1.5

total=$((ENTERPRISES * DEPARTMENTS))
takeovers=() refetched_total=0 refetched_max=0 terminal=0 equal=0 done_kills=0 tries=0
echo "failover bench: $KILLS kills, TTL ${TTL_MS} ms, $ENTERPRISES enterprises x $DEPARTMENTS departments, ${RATE}/s each"
while [ "$done_kills" -lt "$KILLS" ] && [ "$tries" -lt $((KILLS * 2)) ]; do
    tries=$((tries + 1))
    curl -fsS -X POST "$SIM_URL/sim/reset-stats" >/dev/null
    via=a
    [ -n "${SV_PID[a]:-}" ] || via=b
    rid=$(serve_request_run "$via")
    T=5 wait_for run_is "$rid" running || { echo "run $rid did not start"; continue; }
    # A random point of the run (it takes about DEPARTMENTS / RATE seconds).
    sleep "$(python3 -c "import random; print(round(random.uniform(0.1, 0.85 * $DEPARTMENTS / $RATE), 2))")"
    leader=$(serve_leader)
    victim=${leader%%/*}
    if ! run_is "$rid" running || [ -z "$victim" ] || [ -z "${SV_PID[$victim]:-}" ]; then
        echo "run $rid: ended before the kill; again"
        T=30 wait_for eval '! run_is "$rid" running' || true
        continue
    fi
    at=$(psql_q "SELECT coalesce(sum(departments_done), 0) FROM sync_progress WHERE run_id = $rid")
    t0=$(ms_now)
    kill -KILL -- "-${SV_PID[$victim]}"
    wait "${SV_PID[$victim]}" 2>/dev/null || true
    unset "SV_PID[$victim]"
    if T=20 wait_for eval '[ "$(psql_q "SELECT attempt FROM sync_runs WHERE run_id = $rid")" -ge 2 ]'; then
        took=$(($(ms_now) - t0))
        takeovers+=("$took")
    else
        took=none
    fi
    T=60 wait_for eval 'case "$(run_state "$rid")" in succeeded | partial | failed) true ;; *) false ;; esac' || true
    st=$(run_state "$rid")
    case $st in succeeded | partial | failed) terminal=$((terminal + 1)) ;; esac
    rf=$(sim_stat '[.corps[].refetched_ok_departments] | add')
    refetched_total=$((refetched_total + rf))
    [ "$rf" -gt "$refetched_max" ] && refetched_max=$rf
    eqs=no
    serve_data_equals_sim "$SDB" && { eqs=yes; equal=$((equal + 1)); }
    done_kills=$((done_kills + 1))
    printf 'kill %2d: run %s killed %s at %d/%d departments; takeover %s ms; ended %s; fetched twice %s; data equal %s\n' \
        "$done_kills" "$rid" "$victim" "$at" "$total" "$took" "$st" "$rf" "$eqs"
    start_one "$victim"
    serve_wait_ready "$victim"
    sleep 1 # its candidate entry is live again
done

sorted=$(printf '%s\n' "${takeovers[@]}" | sort -n)
n=${#takeovers[@]}
median=$( [ "$n" -gt 0 ] && sed -n "$(((n + 1) / 2))p" <<<"$sorted" || echo -)
max=$( [ "$n" -gt 0 ] && tail -1 <<<"$sorted" || echo -)
echo
echo "kills: $done_kills; takeovers: $n; takeover ms: median $median, max $max (TTL $TTL_MS)"
echo "departments fetched twice: $refetched_total in all, at most $refetched_max in one run ($ENTERPRISES enterprises in flight)"
echo "runs ended in a terminal state: $terminal of $done_kills"
echo "data equal to the simulator's after the run: $equal of $done_kills"
