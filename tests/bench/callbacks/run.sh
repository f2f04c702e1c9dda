#!/usr/bin/env bash
# Change callbacks end to end (issue 17, docs/CALLBACKS.md): two `orgsync serve`
# instances (2 workers each) on a throwaway PostgreSQL and Redis, the simulator
# upstream calling back instance a. After a first full sync, ROUNDS rounds
# (ROUND_MS apart) each rename PER_ROUND members of every one of ENTERPRISES
# enterprises (EVENTS = ROUNDS x PER_ROUND x ENTERPRISES change_contact events),
# then it waits until the inbox is empty. Prints the stored -> row-written
# latency (callback_inbox.applied_at - received_at) p50/p99/max, the upstream
# calls spent per event (the simulator's request count), the most requests any
# enterprise got in one second against ORGSYNC_DEPT_RATE, and whether the data
# equals the simulator's.
#
#   tests/bench/callbacks/run.sh
#
# Binaries: $ORGSYNC_BIN / $ORGSYNC_SIM_BIN, else a Release build in
# build-bench/ (made if missing). ENTERPRISES (20), ROUNDS (10), PER_ROUND (5),
# ROUND_MS (500), RATE (10) tune it.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/../../.." && pwd)
ENTERPRISES=${ENTERPRISES:-20}
ROUNDS=${ROUNDS:-10}
PER_ROUND=${PER_ROUND:-5}
ROUND_MS=${ROUND_MS:-500}
RATE=${RATE:-10}
if [ -z "${ORGSYNC_BIN:-}" ]; then
    BUILD=$SRC/build-bench
    if [ ! -x "$BUILD/orgsync" ] || [ ! -x "$BUILD/orgsync-sim" ]; then
        cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF >/dev/null
        cmake --build "$BUILD" -j"$(nproc)" --target orgsync orgsync-sim >/dev/null
    fi
    ORGSYNC_BIN=$BUILD/orgsync
    ORGSYNC_SIM_BIN=$BUILD/orgsync-sim
fi
export ORGSYNC_BIN ORGSYNC_SIM_BIN ORGSYNC_SRC=$SRC

TMP=$(mktemp -d /tmp/orgsync-callbacks.XXXXXX)
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

# shellcheck source=tests/lib/testlib.sh
. "$SRC/tests/lib/testlib.sh"
# shellcheck source=tests/integration/serve_helpers.sh
. "$SRC/tests/integration/serve_helpers.sh"
SV_CLEANUP_HOOK=stop_servers
serve_trap
SV_ENV=bench
SDB=$(fresh_db)
SV_DBS+=("$SDB")
TOKEN=BenchToken1
AESKEY=abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG
serve_sim 2 --enterprises "$ENTERPRISES" --departments 5 --users-per-dept 10 --seed 17 --rate "$RATE"
serve_corps "$SDB" "$ENTERPRISES"
psql_q "UPDATE enterprises SET callback_token = '$TOKEN', callback_aeskey = '$AESKEY'" >/dev/null
serve_start a 0 ORGSYNC_DEPT_RATE="$RATE" ORGSYNC_LOG_LEVEL=warn
serve_start b 1 ORGSYNC_DEPT_RATE="$RATE" ORGSYNC_LOG_LEVEL=warn
serve_wait_ready a b
rid=$(serve_request_run a)
T=120 wait_for run_is "$rid" succeeded || { echo "the first sync did not finish"; exit 1; }
A="http://127.0.0.1:${SV_HTTP[a]}"
events=$((ROUNDS * PER_ROUND * ENTERPRISES))
echo "callbacks bench: $events events ($ROUNDS rounds x $PER_ROUND renames x $ENTERPRISES enterprises, ${ROUND_MS} ms apart), rate ${RATE}/s per enterprise"

for i in $(seq 1 "$ENTERPRISES"); do
    c=wwsim$(printf %04d "$i")
    curl -fsS -X POST "$SIM_URL/sim/callbacks" -d "{\"corp_id\":\"$c\",\"url\":\"$A/v1/callbacks/wecom/$c\",\"token\":\"$TOKEN\",\"aeskey\":\"$AESKEY\"}" >/dev/null
done
sleep 1 # the first sync's calls leave the rate windows
curl -fsS -X POST "$SIM_URL/sim/reset-stats" >/dev/null
t0=$(ms_now)
for r in $(seq 1 "$ROUNDS"); do
    for i in $(seq 1 "$ENTERPRISES"); do
        curl -fsS -X POST "$SIM_URL/sim/mutate" -d "{\"corp_id\":\"wwsim$(printf %04d "$i")\",\"random\":{\"rename\":$PER_ROUND}}" >/dev/null
    done
    sleep "$(awk "BEGIN{print $ROUND_MS/1000}")"
done
delivered() { [ "$(curl -fsS "$SIM_URL/sim/callbacks" | jq '.stats.delivered')" -ge "$events" ]; }
T=120 wait_for delivered || echo "not every callback was delivered"
drained() { [ "$(psql_q "SELECT count(*) FROM callback_inbox WHERE applied_at IS NULL")" = 0 ]; }
T=300 wait_for drained || echo "the inbox did not drain"
t1=$(ms_now)

stats=$(curl -fsS "$SIM_URL/sim/stats")
calls=$(jq '.total.requests' <<<"$stats")
getcalls=$(jq '.total.by_path["user/get"]' <<<"$stats")
tokcalls=$(jq '.total.by_path["gettoken"]' <<<"$stats")
max1s=$(jq '[.corps[].max_1s] | max' <<<"$stats")
viol=$(jq '.total.violations' <<<"$stats")
stored=$(psql_q "SELECT count(*) FROM callback_inbox")
echo "events sent $events, stored $stored (distinct events; same member renamed twice in one second: one), all applied in $((t1 - t0)) ms"
psql_q "SELECT 'stored -> row written: p50 ' || round((percentile_cont(0.5) WITHIN GROUP (ORDER BY d)) * 1000) ||
    ' ms, p99 ' || round((percentile_cont(0.99) WITHIN GROUP (ORDER BY d)) * 1000) || ' ms, max ' ||
    round(max(d) * 1000) || ' ms' FROM (SELECT extract(epoch FROM applied_at - received_at)::numeric AS d
    FROM callback_inbox) x"
echo "upstream calls: $calls ($getcalls user/get, $tokcalls gettoken), $(awk "BEGIN{printf \"%.2f\", $calls/$events}") per event sent, $(awk "BEGIN{printf \"%.2f\", $calls/$stored}") per event stored"
echo "pacing: most requests to one enterprise in any 1 s window $max1s (limit $RATE); 45009 refusals $viol"
serve_data_equals_sim "$SDB" && echo "data equal to the simulator's: yes" || echo "data equal to the simulator's: NO"
finish >/dev/null
