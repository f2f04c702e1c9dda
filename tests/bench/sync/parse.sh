#!/usr/bin/env bash
# What orgsync's reading of user/list answers costs, in instructions (callgrind):
# one simulated enterprise's answers (50 departments x 40 members, as in run.sh)
# through js_check, js_root, sync_batch_parse and sync_batch_params, ROUNDS times.
#
#   tests/bench/sync/parse.sh                     # Release build in build-bench
#   ROUNDS=5 PARSE_BIN=/other/bench_sync_parse tests/bench/sync/parse.sh
#
# Instruction counts repeat from run to run, where times on a shared machine do
# not; they compare builds of this path, not the whole sync (run.sh does that).
set -euo pipefail

SRC=$(cd "$(dirname "$0")/../../.." && pwd)
# shellcheck source=tests/lib/sim.sh
. "$SRC/tests/lib/sim.sh"
BUILD_DIR=${BUILD_DIR:-$SRC/build-bench}
ROUNDS=${ROUNDS:-5}
DEPTS=${DEPTS:-50}
USERS=${USERS:-40}

for tool in curl jq valgrind; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 2; }
done
echo "== build ($BUILD_DIR, Release)"
cmake -S "$SRC" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DORGSYNC_SANITIZE=OFF >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)" --target bench_sync_parse orgsync-sim \
    >"$BUILD_DIR/bench-build.log" 2>&1 || { tail -30 "$BUILD_DIR/bench-build.log" >&2; exit 1; }
PARSE_BIN=${PARSE_BIN:-$BUILD_DIR/bench_sync_parse}

TMP=$(mktemp -d /tmp/orgsync-parse.XXXXXX)
SIM_PID=
cleanup() {
    if [ -n "$SIM_PID" ]; then
        kill "$SIM_PID" 2>/dev/null || true
        wait "$SIM_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

"$BUILD_DIR/orgsync-sim" --port 0 --quiet --enterprises 1 --departments "$DEPTS" \
    --users-per-dept "$USERS" --rate 100000 --max-inflight 1000 >"$TMP/sim.out" 2>"$TMP/sim.err" &
SIM_PID=$!
sim_wait_port "$TMP/sim.out" "$TMP/sim.err" || exit 1
URL="$SIM_URL/cgi-bin"
TOKEN=$(curl -sf "$URL/gettoken?corpid=wwsim0001&corpsecret=secret-wwsim0001" | jq -r .access_token)
for d in $(seq 1 "$DEPTS"); do
    curl -sf "$URL/user/list?access_token=$TOKEN&department_id=$d" >"$TMP/answer$d.json"
done

echo "== $PARSE_BIN, $ROUNDS rounds of $DEPTS answers"
valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.out" "$PARSE_BIN" "$ROUNDS" \
    "$TMP"/answer*.json >"$TMP/parse.out" 2>"$TMP/cg.err" ||
    { cat "$TMP/parse.out" "$TMP/cg.err" >&2; exit 1; }
IR=$(sed -n 's/.*I *refs: *\([0-9,]*\).*/\1/p' "$TMP/cg.err" | tr -d ,)
read -r NDEPT _ NMEM _ NBYTES _ <"$TMP/parse.out"
echo "read                          $NDEPT departments, $NMEM members, $NBYTES bytes"
awk -v ir="$IR" -v d="$NDEPT" -v b="$NBYTES" 'BEGIN {
    printf "instructions                  %d (%.0f per department, %.1f per byte)\n", ir, ir / d, ir / b }'
