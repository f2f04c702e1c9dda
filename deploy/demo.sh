#!/usr/bin/env bash
# orgsync demo: the whole system on one machine, in one command.
#
#   deploy/demo.sh          # 20 enterprises x 30 departments x 20 members, with pauses to watch
#   deploy/demo.sh --ci     # a smaller directory, no pauses, plain output (used by the tests)
#
# Starts a throwaway PostgreSQL, Redis and the WeCom simulator, migrates,
# registers the simulator's enterprises, starts three `orgsync serve` "hosts"
# (own instance ids and ports, 2 workers each, ORGSYNC_SCHEDULE=on), asks for a
# run, shows its progress by polling one host's API, kills the leader's host
# halfway to show failover and resume, and ends with a summary. Everything it
# started is stopped at exit and on Ctrl-C.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
CI_MODE=0
ENTERPRISES=20 DEPARTMENTS=30 MEMBERS=20 LATENCY_MS=20
for a in "$@"; do
    case $a in
    --ci) CI_MODE=1 ENTERPRISES=6 DEPARTMENTS=40 MEMBERS=5 LATENCY_MS=5 ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown option $a (try --help)" >&2; exit 2 ;;
    esac
done

. "$SRC/tests/lib/deps.sh"
# shellcheck source=tests/lib/sim.sh
. "$SRC/tests/lib/sim.sh"
deps_ensure demo

BUILD=${ORGSYNC_DEMO_BUILD_DIR:-$SRC/build-demo}
say() { printf '\033[1m== %s\033[0m\n' "$*"; }
[ "$CI_MODE" = 1 ] || [ ! -t 1 ] && say() { printf '== %s\n' "$*"; }
pause() { [ "$CI_MODE" = 1 ] || sleep "$1"; }

if [ -z "${ORGSYNC_DEMO_NO_BUILD:-}" ]; then
    say "building orgsync (Release) in $BUILD"
    # The demo needs the daemon and the simulator only: no tests, so no cmocka.
    cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF >/dev/null
    cmake --build "$BUILD" -j"$(nproc)" --target orgsync orgsync-sim >"$BUILD.log" 2>&1 ||
        { tail -40 "$BUILD.log" >&2; echo "build failed" >&2; exit 1; }
fi
BIN=$BUILD/orgsync
SIM=$BUILD/orgsync-sim

TMP=$(mktemp -d /tmp/orgsync-demo.XXXXXX)
chmod 755 "$TMP"
PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null || true; done
    "$SRC/tests/servers.sh" stop-redis "$TMP/redis" >/dev/null 2>&1 || true
    "$SRC/tests/servers.sh" stop-pg "$TMP/pg" >/dev/null 2>&1 || true
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'echo; echo "interrupted"; exit 130' INT
trap 'exit 143' TERM

say "starting PostgreSQL, Redis and the WeCom simulator ($ENTERPRISES enterprises x $DEPARTMENTS departments x $MEMBERS members)"
eval "$("$SRC/tests/servers.sh" start-pg "$TMP/pg")"
eval "$("$SRC/tests/servers.sh" start-redis "$TMP/redis")"
psql -qX -v ON_ERROR_STOP=1 "$PG_DSN" -c "CREATE ROLE orgsync LOGIN" -c "CREATE DATABASE orgsync OWNER orgsync" >/dev/null
export ORGSYNC_PG_DSN="host=127.0.0.1 port=$PG_PORT user=orgsync dbname=orgsync"
export ORGSYNC_REDIS_URL=$REDIS_URL

setsid "$SIM" --port 0 --quiet --enterprises "$ENTERPRISES" --departments "$DEPARTMENTS" \
    --users-per-dept "$MEMBERS" --seed 7 --latency-ms "$LATENCY_MS" >"$TMP/sim.out" 2>"$TMP/sim.err" &
PIDS+=($!)
sim_wait_port "$TMP/sim.out" "$TMP/sim.err" || exit 1

export ORGSYNC_LOG_LEVEL=warn
say "migrating and registering the enterprises"
"$BIN" migrate >/dev/null
for i in $(seq 1 "$ENTERPRISES"); do
    corp=$(printf 'wwsim%04d' "$i")
    DEMO_SECRET="secret-$corp" "$BIN" enterprise add --corp-id "$corp" --secret-env DEMO_SECRET \
        --name "Demo enterprise $i" >/dev/null
done

ADMIN_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
export ORGSYNC_ENV=demo ORGSYNC_SCHEDULE=on ORGSYNC_WORKERS=2 ORGSYNC_SCHEDULER_WORKERS=1,2
export ORGSYNC_UPSTREAM_URL=$SIM_URL ORGSYNC_ADMIN_TOKEN=$ADMIN_TOKEN ORGSYNC_LOCK_TTL_MS=3000
export ORGSYNC_CRON="0 0 2 * * *" ORGSYNC_LOG_LEVEL=warn
HOSTS=(host-a host-b host-c)
declare -A HOST_PORT HOST_PID
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Three consecutive free ports below the ephemeral range (32768 and up).
while :; do
    port=$((15000 + RANDOM % 17000))
    port_free "$port" && port_free $((port + 1)) && port_free $((port + 2)) && break
done
for h in "${HOSTS[@]}"; do
    HOST_PORT[$h]=$port
    ORGSYNC_INSTANCE=$h ORGSYNC_HTTP_ADDR="127.0.0.1:$port" setsid "$BIN" serve \
        >"$TMP/$h.out" 2>"$TMP/$h.log" &
    HOST_PID[$h]=$!
    PIDS+=($!)
    disown "$!" # its kill -9 is part of the show, not news from bash
    port=$((port + 1))
done
say "three orgsync hosts: ${HOSTS[*]} on ports ${HOST_PORT[*]} (2 workers each)"
API="http://127.0.0.1:${HOST_PORT[host-a]}"
for _ in $(seq 1 100); do
    curl -fsS -m 5 "$API/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS -m 5 "$API/readyz" >/dev/null || { tail -20 "$TMP/host-a.log" >&2; echo "host-a is not ready" >&2; exit 1; }
pause 1

say "asking for a run: POST /v1/runs"
RUN_ID=$(curl -fsS -m 5 -X POST -H "Authorization: Bearer $ADMIN_TOKEN" "$API/v1/runs" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["run_id"])')
echo "run $RUN_ID"

# The leader's host: its instance id starts with the host name.
leader_host() {
    curl -fsS -m 5 "$API/v1/leader" 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
i = d.get("instance") or ""
print(i.split("/")[0].split(":")[0] if i else "")' 2>/dev/null || true
}

START=$(date +%s.%N)
KILLED="" LEADERS=""
draw() { # draw JSON-of-run leader
    python3 - "$1" "$2" "$CI_MODE" <<'PY'
import json, sys
run = json.loads(sys.argv[1]); leader = sys.argv[2] or "nobody"; ci = sys.argv[3] == "1"
ents = run.get("enterprises", [])
done = sum(e["departments_done"] for e in ents); total = sum(e["departments_total"] for e in ents)
members = sum(e["users_upserted"] for e in ents)
eta = run.get("eta_seconds")
if ci:
    print(f"run {run['run_id']} {run['state']} {run['percent']}% departments {done}/{total} members {members} leader {leader}")
    sys.exit()
width = 40
fill = int(width * run["percent"] / 100)
pct = int(run["percent"])
lines = [f"run {run['run_id']}  state {run['state']}  leader {leader}  ETA {eta if eta is not None else '-'} s",
         f"[{'#' * fill}{'.' * (width - fill)}] {pct:3d}%  departments {done}/{total}  members {members}"]
for e in ents[:12]:
    f = int(20 * e["percent"] / 100)
    lines.append(f"  {e['corp_id']:<10} [{'#' * f}{'.' * (20 - f)}] {int(e['percent']):3d}% {e['state']:<9} "
                 f"{e['departments_done']}/{e['departments_total']} depts {e['users_upserted']} members")
if len(ents) > 12:
    lines.append(f"  ... and {len(ents) - 12} more enterprises")
sys.stdout.write("\033[H\033[J" + "\n".join(lines) + "\n")
PY
}

STATE=pending
DEADLINE=$(($(date +%s) + 180))
while :; do
    if [ "$(date +%s)" -gt "$DEADLINE" ]; then
        echo "demo: the run did not finish within 180 s; the hosts' logs:" >&2
        for h in "${HOSTS[@]}"; do echo "--- $h" >&2; tail -15 "$TMP/$h.log" >&2; done
        exit 1
    fi
    RUN=$(curl -fsS -m 5 "$API/v1/runs/$RUN_ID" 2>/dev/null || echo '')
    [ -n "$RUN" ] || { sleep 0.5; continue; }
    STATE=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["state"])' "$RUN")
    PCT=$(python3 -c 'import json,sys; print(int(json.loads(sys.argv[1])["percent"]))' "$RUN")
    L=$(leader_host)
    [ -n "$L" ] && case " $LEADERS " in *" $L "*) ;; *) LEADERS="$LEADERS $L" ;; esac
    draw "$RUN" "$L"
    case $STATE in succeeded | partial | failed) break ;; esac
    if [ -z "$KILLED" ] && [ "$PCT" -ge 40 ] && [ -n "$L" ]; then
        KILLED=$L
        [ "$CI_MODE" = 1 ] || { echo; say "halfway: killing the leader's host $L (kill -9 of its process group)"; sleep 2; }
        [ "$CI_MODE" = 1 ] && echo "killing leader host $L"
        kill -KILL -- "-${HOST_PID[$L]}" 2>/dev/null || true
        # API answers must come from a live host.
        for h in "${HOSTS[@]}"; do
            [ "$h" = "$L" ] && continue
            API="http://127.0.0.1:${HOST_PORT[$h]}"
            break
        done
    fi
    sleep 0.5
done
END=$(date +%s.%N)

MEMBERS_SYNCED=$(psql -qAtX "$ORGSYNC_PG_DSN" -c "SELECT count(*) FROM users WHERE deleted_at IS NULL")
EXPECTED=$(curl -fsS -m 5 "$SIM_URL/sim/org" | python3 -c '
import json, sys
print(sum(len(c["users"]) for c in json.load(sys.stdin)["corps"]))')
REFETCH=$(curl -fsS -m 5 "$SIM_URL/sim/stats" | python3 -c '
import json, sys
print(sum(c["refetched_ok_departments"] for c in json.load(sys.stdin)["corps"]))')
# The run row names the leader that finished it: a takeover that began and ended
# between two polls of /v1/leader is still seen.
FINAL=$(psql -qAtX "$ORGSYNC_PG_DSN" -c "SELECT leader_instance FROM sync_runs WHERE run_id = $RUN_ID")
FINAL=${FINAL%%/*}
FINAL=${FINAL%%:*}
[ -n "$FINAL" ] && case " $LEADERS " in *" $FINAL "*) ;; *) LEADERS="$LEADERS $FINAL" ;; esac
CHANGES=$(($(wc -w <<<"$LEADERS") - 1))
[ "$CHANGES" -lt 0 ] && CHANGES=0

echo
say "summary"
printf '  run %s: %s\n' "$RUN_ID" "$STATE"
printf '  members synced: %s (the simulator has %s)\n' "$MEMBERS_SYNCED" "$EXPECTED"
printf '  time: %.1f s\n' "$(python3 -c "print($END - $START)")"
printf '  leaders seen:%s (leader changes: %s; killed: %s)\n' "$LEADERS" "$CHANGES" "${KILLED:-none}"
printf '  departments fetched twice: %s\n' "$REFETCH"
echo
echo "Where to look next (while this demo runs; it cleans up when it exits):"
echo "  progress page:  $API/"
echo "  API:            curl $API/v1/runs/latest"
echo "  database:       psql '$ORGSYNC_PG_DSN' -c 'SELECT * FROM sync_runs'"
echo "  docs:           README.md, docs/OPERATIONS.md, docs/API.md"
[ "$CI_MODE" = 1 ] && echo "ports: $SIM_PORT $PG_PORT $REDIS_PORT ${HOST_PORT[*]}" && echo "dir: $TMP"
if [ "$CI_MODE" = 0 ] && [ -t 0 ]; then
    echo
    read -r -p "Press Enter to stop everything and clean up. " _ || true
fi
[ "$STATE" = succeeded ] && [ "$MEMBERS_SYNCED" = "$EXPECTED" ]
