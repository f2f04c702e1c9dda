#!/usr/bin/env bash
# orgsync demo: the whole system on one machine, in one command.
#
#   deploy/demo.sh          # 20 enterprises x 100 departments x 20 members; waits for Enter at the end
#   deploy/demo.sh --keep   # the same, but keeps everything running until Ctrl-C at the end
#   deploy/demo.sh --ci     # 6 x 80 x 5, plain output, stops everything at the end (used by the tests)
#
# Builds orgsync and the WeCom simulator (Release, without the tests), starts a
# throwaway PostgreSQL, Redis and the simulator, migrates, registers the
# simulator's enterprises, starts three `orgsync serve` "hosts" (own instance
# ids and ports, 2 workers each, ORGSYNC_SCHEDULE=on), asks for a run and shows
# its progress from one host's API. When a poll shows the run 30 % done, it kills the
# leader's host (kill -9 of its process group); another host takes the lock
# once it expires (3 s) and resumes the run from its checkpoints. The summary
# shows who took over, after how long, and what was fetched twice. Everything
# it started is stopped when it exits and on Ctrl-C.
#
# Each enterprise is paced at ORGSYNC_DEPT_RATE=10 requests/s, so a run takes
# about DEPARTMENTS/10 s plus the lock's expiry: ~13 s here, ~11 s with --ci.
# ORGSYNC_DEMO_BUILD_DIR (default <repo>/build-demo) picks the build directory;
# ORGSYNC_DEMO_NO_BUILD=1 uses the binaries there as they are.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
CI_MODE=0 KEEP=0
ENTERPRISES=20 DEPARTMENTS=100 MEMBERS=20 LATENCY_MS=20
KILL_AT=30 # percent of the run done when the leader's host is killed
for a in "$@"; do
    case $a in
    --ci) CI_MODE=1 ENTERPRISES=6 DEPARTMENTS=80 MEMBERS=5 LATENCY_MS=5 ;;
    --keep) KEEP=1 ;;
    -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
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
    cmake --build "$BUILD" -j"$(nproc)" --target orgsync orgsync-sim >"$BUILD/demo-build.log" 2>&1 ||
        { tail -40 "$BUILD/demo-build.log" >&2; echo "build failed (log: $BUILD/demo-build.log)" >&2; exit 1; }
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
sql() { psql -qAtX -F' ' -v ON_ERROR_STOP=1 "$ORGSYNC_PG_DSN" -c "$1"; }

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
LOCK_TTL_MS=3000
export ORGSYNC_ENV=demo ORGSYNC_SCHEDULE=on ORGSYNC_WORKERS=2 ORGSYNC_SCHEDULER_WORKERS=1,2
export ORGSYNC_UPSTREAM_URL=$SIM_URL ORGSYNC_ADMIN_TOKEN=$ADMIN_TOKEN ORGSYNC_LOCK_TTL_MS=$LOCK_TTL_MS
export ORGSYNC_DEPT_RATE=10 ORGSYNC_CRON="0 0 2 * * *" ORGSYNC_LOG_LEVEL=warn
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
    # setsid: each host is a process group of its own, so that kill -9 of the
    # group takes its supervisor and workers at once, like a host dying.
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

# One poll of a host's API: GET /v1/runs/ID and /v1/leader, the display (one
# line with --ci, a screen otherwise) on stdout, and "state percent leader-host"
# into the file named by the 4th argument.
cat >"$TMP/poll.py" <<'PY'
import json, sys, urllib.request
api, run_id, ci, vars_file, events_file, header = sys.argv[1:7]
ci = ci == "1"

def get(path):
    try:
        with urllib.request.urlopen(api + path, timeout=5) as r:
            return json.load(r)
    except Exception:
        return None

run = get(f"/v1/runs/{run_id}")
ld = get("/v1/leader")
inst = (ld or {}).get("instance") or ""
leader = inst.split("/")[0].split(":")[0] if inst else ""
with open(vars_file, "w") as f:
    if run is None:
        f.write(f"unknown 0 {leader or '-'}\n")
        sys.exit()
    f.write(f"{run['state']} {int(run['percent'])} {leader or '-'}\n")
ents = run.get("enterprises", [])
done = sum(e["departments_done"] for e in ents)
total = sum(e["departments_total"] for e in ents)
members = sum(e["users_upserted"] for e in ents)
if ci:
    print(f"run {run['run_id']} {run['state']} {run['percent']}% departments {done}/{total} "
          f"members {members} leader {inst or 'nobody'}")
    sys.exit()
eta = run.get("eta_seconds")
width = 40
fill = int(width * run["percent"] / 100)
lines = [header, "",
         f"run {run['run_id']}  state {run['state']}  leader {inst or 'nobody'}  "
         f"ETA {eta if eta is not None else '-'} s",
         f"[{'#' * fill}{'.' * (width - fill)}] {int(run['percent']):3d}%  "
         f"departments {done}/{total}  members {members}"]
for e in ents[:12]:
    f = int(20 * e["percent"] / 100)
    lines.append(f"  {e['corp_id']:<10} [{'#' * f}{'.' * (20 - f)}] {int(e['percent']):3d}% "
                 f"{e['state']:<9} {e['departments_done']}/{e['departments_total']} depts "
                 f"{e['users_upserted']} members")
if len(ents) > 12:
    lines.append(f"  ... and {len(ents) - 12} more enterprises")
try:
    with open(events_file) as f:
        events = [l.rstrip("\n") for l in f]
except OSError:
    events = []
if events:
    lines += ["", "what happened:"] + ["  " + e for e in events]
sys.stdout.write("\033[H\033[J" + "\n".join(lines) + "\n")
PY
: >"$TMP/events"
SHOW_LINE=""
show() { # one poll: draw, and set STATE, PCT, L
    local out
    out=$(python3 "$TMP/poll.py" "$API" "$RUN_ID" "$CI_MODE" "$TMP/poll.vars" "$TMP/events" \
        "orgsync demo: $ENTERPRISES enterprises x $DEPARTMENTS departments x $MEMBERS members, hosts ${HOSTS[*]}
progress page (live while the demo runs): $API/")
    read -r STATE PCT L <"$TMP/poll.vars"
    [ "$L" = - ] && L=""
    if [ "$CI_MODE" = 1 ]; then
        [ "$out" = "$SHOW_LINE" ] || echo "$out"
        SHOW_LINE=$out
    else
        printf '%s\n' "$out"
    fi
}
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }
event() { # something worth keeping on the screen
    echo "$*" >>"$TMP/events"
    [ "$CI_MODE" = 0 ] || echo "$*"
}

say "asking for a run: POST /v1/runs"
RUN_ID=$(curl -fsS -m 5 -X POST -H "Authorization: Bearer $ADMIN_TOKEN" "$API/v1/runs" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["run_id"])')
echo "run $RUN_ID"
START=$(date +%s.%N)

KILLED="" KILL_TS="" MISSED="" TAKEOVER="" LEADERS=""
STATE=pending PCT=0 L=""
DEADLINE=$(($(date +%s) + 180))
while :; do
    if [ "$(date +%s)" -gt "$DEADLINE" ]; then
        echo "demo: the run did not finish within 180 s; the hosts' logs:" >&2
        for h in "${HOSTS[@]}"; do echo "--- $h" >&2; tail -15 "$TMP/$h.log" >&2; done
        exit 1
    fi
    show
    [ "$STATE" = unknown ] && { sleep 0.3; continue; }
    [ -n "$L" ] && case " $LEADERS " in *" $L "*) ;; *) LEADERS="$LEADERS $L" ;; esac
    case $STATE in succeeded | partial | failed) break ;; esac
    if [ -n "$KILLED" ] && [ -z "$TAKEOVER" ] && [ -n "$L" ] && [ "$L" != "$KILLED" ]; then
        TAKEOVER=$L
        event "$L took over (seen on the API $(since "$KILL_TS" "$(date +%s.%N)") s after the kill)"
    fi
    if [ -z "$KILLED" ] && [ "$STATE" = running ] && [ "$PCT" -ge "$KILL_AT" ] && [ -n "$L" ]; then
        # The announcement and the kill go together: no pause between them.
        KILLED=$L
        event "killing the leader's host $L at $PCT % (kill -9 of its process group)"
        kill -KILL -- "-${HOST_PID[$L]}" 2>/dev/null || kill -KILL "${HOST_PID[$L]}" 2>/dev/null || true
        KILL_TS=$(date +%s.%N)
        # What the run looked like when the kill landed (nothing of the dead
        # host's can change it any more).
        read -r KSTATE KDONE KTOTAL < <(sql "SELECT r.state, coalesce(sum(p.departments_done), 0),
            coalesce(sum(p.departments_total), 0) FROM sync_runs r LEFT JOIN sync_progress p
            ON p.run_id = r.run_id WHERE r.run_id = $RUN_ID GROUP BY r.state") || true
        KSTATE=${KSTATE:-unknown} KDONE=${KDONE:-0} KTOTAL=${KTOTAL:-0}
        if [ "$KSTATE" = running ] && [ "$KDONE" -lt "$KTOTAL" ]; then
            event "$L is dead with $KDONE of $KTOTAL departments done; nobody leads until its lock expires (TTL $((LOCK_TTL_MS / 1000)) s)"
        else
            MISSED="the run was already $KSTATE ($KDONE of $KTOTAL departments done) when the kill landed"
            event "$MISSED: no failover to show"
        fi
        # API answers must come from a live host.
        for h in "${HOSTS[@]}"; do
            [ "$h" = "$L" ] && continue
            API="http://127.0.0.1:${HOST_PORT[$h]}"
            break
        done
    fi
    sleep 0.3
done
END=$(date +%s.%N)

MEMBERS_SYNCED=$(sql "SELECT count(*) FROM users WHERE deleted_at IS NULL")
EXPECTED=$(curl -fsS -m 5 "$SIM_URL/sim/org" | python3 -c '
import json, sys
print(sum(len(c["users"]) for c in json.load(sys.stdin)["corps"]))')
REFETCH=$(curl -fsS -m 5 "$SIM_URL/sim/stats" | python3 -c '
import json, sys
print(sum(c["refetched_ok_departments"] for c in json.load(sys.stdin)["corps"]))')
# The run row names the leader that finished it: a takeover that began and ended
# between two polls of /v1/leader is still seen.
read -r FINAL_INST ATTEMPT < <(sql "SELECT leader_instance, attempt FROM sync_runs WHERE run_id = $RUN_ID") || true
FINAL=${FINAL_INST%%/*}
FINAL=${FINAL%%:*}
[ -n "$FINAL" ] && case " $LEADERS " in *" $FINAL "*) ;; *) LEADERS="$LEADERS $FINAL" ;; esac
CHANGES=$(($(wc -w <<<"$LEADERS") - 1))
[ "$CHANGES" -lt 0 ] && CHANGES=0

# The takeover, from PostgreSQL: when the successor took the lock (its fence
# row), and when it finished its first department (its first checkpoint; the
# dead host wrote none after the kill).
TAKEOVER_LINE="none"
if [ -n "$KILL_TS" ] && [ -z "$MISSED" ] && [ -n "$FINAL" ] && [ "$FINAL" != "$KILLED" ]; then
    read -r FENCE_INST FENCE_TS < <(sql "SELECT instance, extract(epoch FROM acquired_at)
        FROM leader_fence WHERE env = 'demo' AND job = 'directory-sync'") || true
    read -r FIRST_TS AFTER < <(sql "SELECT coalesce(extract(epoch FROM min(done_at))::text, '-'), count(*)
        FROM sync_checkpoints WHERE run_id = $RUN_ID AND done_at > to_timestamp($KILL_TS)") || true
    TAKEOVER_LINE="$FINAL_INST"
    [ -n "$FENCE_TS" ] && [ "$FENCE_INST" = "$FINAL_INST" ] &&
        TAKEOVER_LINE="$TAKEOVER_LINE took the lock $(since "$KILL_TS" "$FENCE_TS") s after the kill,"
    [ -n "$FIRST_TS" ] && [ "$FIRST_TS" != - ] &&
        TAKEOVER_LINE="$TAKEOVER_LINE finished its first department $(since "$KILL_TS" "$FIRST_TS") s after it,"
    TAKEOVER_LINE="$TAKEOVER_LINE did the remaining ${AFTER:-?} departments and finished the run (attempt $ATTEMPT)"
fi

echo
say "summary"
printf '  run %s: %s\n' "$RUN_ID" "$STATE"
printf '  members synced: %s (the simulator has %s)\n' "$MEMBERS_SYNCED" "$EXPECTED"
printf '  time: %s s\n' "$(since "$START" "$END")"
printf '  leaders seen:%s (leader changes: %s; killed: %s)\n' "$LEADERS" "$CHANGES" "${KILLED:-none}"
if [ -n "$KILLED" ] && [ -z "$MISSED" ]; then
    printf '  kill: %s, %s s into the run, with %s of %s departments done (the run still running)\n' \
        "$KILLED" "$(since "$START" "$KILL_TS")" "$KDONE" "$KTOTAL"
fi
printf '  takeover: %s\n' "$TAKEOVER_LINE"
printf '  departments fetched twice: %s (the resume skips what the dead leader checkpointed)\n' "$REFETCH"

# Did the demo show what it promises?
PROBLEM=""
if [ "$STATE" != succeeded ]; then
    PROBLEM="the run ended $STATE"
elif [ "$MEMBERS_SYNCED" != "$EXPECTED" ]; then
    PROBLEM="$MEMBERS_SYNCED members synced, the simulator has $EXPECTED"
elif [ -z "$KILLED" ]; then
    PROBLEM="the run finished before it was $KILL_AT % done on a poll: no leader was killed"
elif [ -n "$MISSED" ]; then
    PROBLEM=$MISSED
elif [ "$FINAL" = "$KILLED" ] || [ "$CHANGES" -lt 1 ]; then
    PROBLEM="no other host took over from $KILLED"
fi
[ -z "$PROBLEM" ] || echo "demo: the failover did not show: $PROBLEM" >&2

echo
if [ "$KEEP" = 1 ] || { [ "$CI_MODE" = 0 ] && [ -t 0 ]; }; then
    echo "Everything is still running. Where to look next:"
    echo "  progress page:  $API/"
    echo "  API:            curl $API/v1/runs/$RUN_ID"
    echo "  database:       psql '$ORGSYNC_PG_DSN' -c 'SELECT * FROM sync_runs'"
    echo "  hosts' logs:    $TMP/host-*.log"
    echo "  docs:           README.md, docs/OPERATIONS.md, docs/API.md"
    echo
    if [ "$KEEP" = 1 ]; then
        echo "Press Ctrl-C to stop everything and clean up."
        KEEP_RC=0
        [ -z "$PROBLEM" ] || KEEP_RC=1
        trap 'echo; exit "$KEEP_RC"' INT TERM
        while :; do sleep 1; done
    fi
    read -r -p "Press Enter to stop everything and clean up. " _ || true
else
    echo "The demo exits now and stops everything it started: its progress page, API and"
    echo "database go with it. To look around afterwards, run deploy/demo.sh in a terminal"
    echo "(it waits for Enter) or with --keep (it waits for Ctrl-C)."
    echo "Docs: README.md, docs/OPERATIONS.md, docs/API.md"
fi
[ "$CI_MODE" = 1 ] && echo "ports: $SIM_PORT $PG_PORT $REDIS_PORT ${HOST_PORT[*]}" && echo "dir: $TMP"
[ -z "$PROBLEM" ]
