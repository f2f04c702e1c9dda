#!/usr/bin/env bash
# Simulator CPU per answer for a fixed, sync-shaped workload: what `orgsync sync`
# asks of it in tests/bench/sync/run.sh, without PostgreSQL, Redis or orgsync.
#
#   tests/bench/sim/cpu.sh [SIM_BINARY ...]
#
# For each binary (default: build-bench/orgsync-sim, built Release if missing):
# starts it with CORPS (200) x DEPTS (50) x USERS (40) and LATENCY_MS (5), then asks
# every enterprise's department/list and every department's user/list once, like a
# full sync (each answer is asked for once, so none comes from a cache), PAR (16) at
# a time with curl --parallel, and prints the simulator's CPU seconds (utime+stime
# from /proc) for those requests. Give the old and the new binary in one call to
# compare them on the same machine state; ROUNDS (1) repeats the pair, interleaved.
# PERF=1 also records a perf profile of each run into perf.<n>.txt here.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/../../.." && pwd)
if [ $# = 0 ]; then
    BUILD=$SRC/build-bench
    if [ ! -x "$BUILD/orgsync-sim" ]; then
        cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
        cmake --build "$BUILD" -j"$(nproc)" --target orgsync-sim >/dev/null
    fi
    set -- "$BUILD/orgsync-sim"
fi
CORPS=${CORPS:-200} DEPTS=${DEPTS:-50} USERS=${USERS:-40} LATENCY_MS=${LATENCY_MS:-5}
PAR=${PAR:-16} ROUNDS=${ROUNDS:-1}
TCK=$(getconf CLK_TCK)
TMP=$(mktemp -d)
SIM_PID=
cleanup() {
    [ -n "$SIM_PID" ] && kill "$SIM_PID" 2>/dev/null && wait "$SIM_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

run_one() { # BINARY
    "$1" --port 0 --quiet --enterprises "$CORPS" --departments "$DEPTS" --users-per-dept "$USERS" \
        --latency-ms "$LATENCY_MS" --rate 100000000 --max-inflight 100000 >"$TMP/out" 2>"$TMP/err" &
    SIM_PID=$!
    for _ in $(seq 1 400); do grep -q '^listening' "$TMP/out" 2>/dev/null && break; sleep 0.05; done
    local base
    base=http://127.0.0.1:$(awk 'NR==1 {print $2}' "$TMP/out")
    python3 - "$base" "$CORPS" "$DEPTS" >"$TMP/urls" <<'PY'
import json, sys, urllib.request
base, corps, depts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(1, corps + 1):
    cid = "wwsim%04d" % i
    with urllib.request.urlopen(f"{base}/cgi-bin/gettoken?corpid={cid}&corpsecret=secret-{cid}") as r:
        tok = json.load(r)["access_token"]
    print(f'url = "{base}/cgi-bin/department/list?access_token={tok}"\noutput = "/dev/null"')
    for d in range(1, depts + 1):
        print(f'url = "{base}/cgi-bin/user/list?access_token={tok}&department_id={d}"\noutput = "/dev/null"')
PY
    curl -fsS -X POST "$base/sim/reset-stats" >/dev/null
    local c0 c1 t0 t1 hwm perf_pid=
    if [ "${PERF:-0}" = 1 ]; then
        perf record -g -p "$SIM_PID" -o "$TMP/perf.data" 2>/dev/null &
        perf_pid=$!
        sleep 0.5
    fi
    c0=$(awk '{print $14 + $15}' "/proc/$SIM_PID/stat")
    t0=$(date +%s.%N)
    curl -s --no-progress-meter --parallel --parallel-max "$PAR" -K "$TMP/urls"
    t1=$(date +%s.%N)
    c1=$(awk '{print $14 + $15}' "/proc/$SIM_PID/stat")
    hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$SIM_PID/status")
    if [ -n "$perf_pid" ]; then
        kill -INT "$perf_pid"
        wait "$perf_pid" || true
        RUN=$((${RUN:-0} + 1))
        perf report -i "$TMP/perf.data" --no-children --stdio -g none --sort dso,sym 2>/dev/null |
            grep -v '^$' >"perf.$RUN.txt" || true
    fi
    curl -fsS "$base/sim/stats" | python3 -c '
import json, sys
t = json.load(sys.stdin)["total"]
cpu, wall, tck, name = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
print("%-36s %6d requests %s  CPU %.2f s (%.0f us per request)  wall %.2f s  peak RSS %.0f MB" %
      (name, t["requests"], t["errcodes"], cpu / tck, cpu / tck / t["requests"] * 1e6, wall,
       float(sys.argv[5]) / 1024))' \
        "$((c1 - c0))" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" "$TCK" "$1" "$hwm"
    kill "$SIM_PID"
    wait "$SIM_PID" 2>/dev/null || true
    SIM_PID=
}

echo "simulator: $CORPS enterprises x $DEPTS departments x $USERS members, latency $LATENCY_MS ms;" \
    "every department/list and user/list once, $PAR at a time"
for _ in $(seq 1 "$ROUNDS"); do
    for bin in "$@"; do run_one "$bin"; done
done
