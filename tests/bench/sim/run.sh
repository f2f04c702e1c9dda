#!/usr/bin/env bash
# Simulator throughput: user/list answers per second with wrk, 64 keep-alive
# connections, one wrk thread (the simulator is one thread on one core).
#
#   tests/bench/sim/run.sh [SIM_BINARY]
#
# SIM_BINARY defaults to $ORGSYNC_SIM_BIN, else build-bench/orgsync-sim, built
# without sanitizers (Release) if missing. DURATION (default 10s), CONNECTIONS (64),
# DEPARTMENTS (100) and MEMBERS (20, members whose main department it is; about 10%
# more join as second departments) tune the run. The rate limits (per enterprise and
# per source IP: wrk's one address would pass 20,000 a minute in a second) are set
# out of reach.
# The simulator is one thread, so it never uses more than one core.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/../../.." && pwd)
SIM=${1:-${ORGSYNC_SIM_BIN:-}}
if [ -z "$SIM" ]; then
    BUILD=$SRC/build-bench
    SIM=$BUILD/orgsync-sim
    if [ ! -x "$SIM" ]; then
        cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
        cmake --build "$BUILD" -j"$(nproc)" --target orgsync-sim >/dev/null
    fi
fi
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
DEPARTMENTS=${DEPARTMENTS:-100}
MEMBERS=${MEMBERS:-20}
command -v wrk >/dev/null || { echo "wrk is required" >&2; exit 1; }

TMP=$(mktemp -d)
SIM_PID=
cleanup() {
    [ -n "$SIM_PID" ] && kill "$SIM_PID" 2>/dev/null && wait "$SIM_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

# PIN=1 pins the simulator to CPU 0 and wrk to CPU 1 (worse on a shared machine,
# where another process may own one of them).
PIN_SIM=() PIN_WRK=()
if [ "${PIN:-0}" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    PIN_SIM=(taskset -c 0) PIN_WRK=(taskset -c 1)
fi
"${PIN_SIM[@]}" "$SIM" --port 0 --quiet --departments "$DEPARTMENTS" --users-per-dept "$MEMBERS" \
    --rate 100000000 --max-inflight 100000 --ip-per-min 100000000 --ip-per-hour 100000000 \
    >"$TMP/out" 2>"$TMP/err" &
SIM_PID=$!
for _ in $(seq 1 100); do grep -q '^listening' "$TMP/out" 2>/dev/null && break; sleep 0.05; done
PORT=$(awk 'NR==1 {print $2}' "$TMP/out")
[ -n "$PORT" ] || { cat "$TMP/err" >&2; exit 1; }
BASE=http://127.0.0.1:$PORT
TOKEN=$(curl -fsS "$BASE/cgi-bin/gettoken?corpid=wwsim0001&corpsecret=secret-wwsim0001" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
AVG=$(curl -fsS "$BASE/sim/org" | python3 -c '
import json, sys
c = json.load(sys.stdin)["corps"][0]
print("%.1f" % (sum(d["members"] for d in c["departments"]) / len(c["departments"])))')
BYTES=$(curl -fsS "$BASE/cgi-bin/user/list?access_token=$TOKEN&department_id=2" | wc -c)
echo "simulator: $DEPARTMENTS departments, $AVG members per user/list on average, ~$BYTES bytes per answer"
echo "${PIN_WRK[*]:+${PIN_WRK[*]} }wrk -t1 -c$CONNECTIONS -d$DURATION -s tests/bench/sim/user_list.lua $BASE -- TOKEN $DEPARTMENTS"
"${PIN_WRK[@]}" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s "$SRC/tests/bench/sim/user_list.lua" "$BASE" -- "$TOKEN" "$DEPARTMENTS"
curl -fsS "$BASE/sim/stats" | python3 -c '
import json, sys
t = json.load(sys.stdin)["total"]
print("simulator counted %d requests, errcodes %s, most in one second %d" %
      (t["requests"], t["errcodes"], t["max_1s"]))'
