#!/usr/bin/env bash
# Benchmark of `orgsync sync` against the simulator (issue 4, item 9).
#
#   tests/bench/sync/run.sh                       # 200 x 50 x 40, latency 5 ms
#   CORPS=20 DEPTS=20 USERS=10 tests/bench/sync/run.sh
#   SYNCS=3 tests/bench/sync/run.sh               # then two more syncs, members already stored
#   SYNCS=3 CHANGE_PCT=1 tests/bench/sync/run.sh  # ... with 1% of each enterprise's members
#                                                 # changed before each later sync (renamed,
#                                                 # moved, added, removed: 6:2:1:1)
#   MODE=modern tests/bench/sync/run.sh           # the API as it is today: a new egress (48009
#                                                 # to the contact-sync secret on the legacy calls),
#                                                 # department/simplelist + user/list_id + user/list
#   SOURCE=export CORPS=1 DEPTS=5000 USERS=20 tests/bench/sync/run.sh   # members from one
#                                                 # export job (--member-source export; user_list,
#                                                 # the default, or auto)
#   MODE=modern IP_PER_MIN=250 CORPS=40 DEPTS=10 USERS=20 tests/bench/sync/run.sh  # wide: the per-IP limit (simulator and
#                                                 # ORGSYNC_EGRESS_MAX_PER_MIN) is the floor
#
# Builds Release binaries (no sanitizers) in BUILD_DIR (default build-bench)
# unless BIN / SIM_BIN name the orgsync / orgsync-sim binaries to use,
# starts a private PostgreSQL and Redis (tests/servers.sh) and the simulator,
# registers the enterprises, runs one `orgsync sync` and prints:
#   wall time and its ratio to the floor set by the rate (the largest
#   per-enterprise request count / ORGSYNC_DEPT_RATE), achieved requests per
#   second per enterprise, the most requests for one enterprise in any 1 s window
#   (the simulator's count), peak RSS of the syncing process, members written per
#   second, whether PostgreSQL holds every member, and (VERIFY=1, the default, in
#   legacy mode) whether every live member's stored object equals the
#   simulator's and no other member is live; for later syncs, PostgreSQL's CPU as
#   a ratio of the first sync's.
# Figures are printed, not judged: this is not a pass/fail timing test.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/../../.." && pwd)
# shellcheck source=tests/lib/sim.sh
. "$SRC/tests/lib/sim.sh"
BUILD_DIR=${BUILD_DIR:-$SRC/build-bench}
CORPS=${CORPS:-200}
DEPTS=${DEPTS:-50}
USERS=${USERS:-40}
LATENCY_MS=${LATENCY_MS:-5}
RATE=${RATE:-10}
MODE=${MODE:-legacy}     # legacy: the 2019 API; modern: a new egress, --api-mode auto finds modern
IP_PER_MIN=${IP_PER_MIN:-} # the per-egress minute limit (simulator and orgsync), unset: 20000
case $MODE in legacy | modern) ;; *) echo "bench: MODE is legacy or modern" >&2; exit 2 ;; esac
SOURCE=${SOURCE:-user_list} # the enterprises' member source (sql/007)
CHANGE_PCT=${CHANGE_PCT:-0} # later syncs: percent of each enterprise's members changed before each
VERIFY=${VERIFY:-1}
case $SOURCE in user_list | export | auto) ;; *) echo "bench: SOURCE is user_list, export or auto" >&2; exit 2 ;; esac

for tool in jq psql curl; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 2; }
done
# GNU time reports the sync's peak RSS and CPU from the kernel (getrusage) when it
# exits, so the bench needs no polling loop competing for the two CPUs.
[ -x /usr/bin/time ] || { echo "bench: /usr/bin/time is required (apt-get install time)" >&2; exit 2; }

# BIN and SIM_BIN name other builds (an older commit's, to compare like with like in
# one session); what is not given is built here.
targets=
[ -n "${BIN:-}" ] || targets="orgsync"
[ -n "${SIM_BIN:-}" ] || targets="$targets orgsync-sim"
if [ -n "$targets" ]; then
    echo "== build ($BUILD_DIR, Release:$targets)"
    cmake -S "$SRC" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DORGSYNC_SANITIZE=OFF >/dev/null
    # shellcheck disable=SC2086 # targets is a list
    cmake --build "$BUILD_DIR" -j"$(nproc)" --target $targets >"$BUILD_DIR/bench-build.log" 2>&1 ||
        { tail -30 "$BUILD_DIR/bench-build.log" >&2; exit 1; }
fi
BIN=${BIN:-$BUILD_DIR/orgsync}
SIM_BIN=${SIM_BIN:-$BUILD_DIR/orgsync-sim}

TMP=$(mktemp -d /tmp/orgsync-bench.XXXXXX)
chmod 755 "$TMP"
SIM_PID=
cleanup() {
    [ -n "${PG_EXPLAIN_MS:-}" ] && cp "$TMP/pg/pg.log" "${PG_EXPLAIN_LOG:-/tmp/orgsync-bench-explain.log}" 2>/dev/null
    [ -n "$SIM_PID" ] && kill "$SIM_PID" 2>/dev/null && wait "$SIM_PID" 2>/dev/null || true
    "$SRC/tests/servers.sh" stop-redis "$TMP/redis" || true
    "$SRC/tests/servers.sh" stop-pg "$TMP/pg" || true
    rm -rf "$TMP"
}
trap cleanup EXIT

echo "== servers"
# A free port can be taken between the check and the bind: try again then.
for _ in 1 2 3; do
    out=$("$SRC/tests/servers.sh" start-pg "$TMP/pg" 2>"$TMP/pg-start.err") && break
    out=
done
[ -n "$out" ] || { cat "$TMP/pg-start.err" >&2; exit 1; }
eval "$out"
for _ in 1 2 3; do
    out=$("$SRC/tests/servers.sh" start-redis "$TMP/redis" 2>"$TMP/redis-start.err") && break
    out=
done
[ -n "$out" ] || { cat "$TMP/redis-start.err" >&2; exit 1; }
eval "$out"
psql -q -X -v ON_ERROR_STOP=1 "$PG_DSN" -c "CREATE ROLE orgsync LOGIN" -c "CREATE DATABASE orgsync OWNER orgsync"
export ORGSYNC_PG_DSN="host=127.0.0.1 port=$PG_PORT user=orgsync dbname=orgsync"
export ORGSYNC_REDIS_URL="$REDIS_URL"
export ORGSYNC_ENV=bench
export ORGSYNC_DEPT_RATE=$RATE
export ORGSYNC_LOG_LEVEL=${ORGSYNC_LOG_LEVEL:-warn}
"$BIN" migrate >/dev/null
# PG_STATEMENTS=1: after each sync, the statements that cost PostgreSQL the most
# (pg_stat_statements: calls, total execution and planning time, mean execution
# time, the first words).
if [ "${PG_STATEMENTS:-0}" = 1 ]; then
    psql -q -X -v ON_ERROR_STOP=1 "$PG_DSN" -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'"
    "$SRC/tests/servers.sh" restart-pg "$TMP/pg"
    psql -q -X -v ON_ERROR_STOP=1 "$PG_DSN" -c "ALTER SYSTEM SET pg_stat_statements.track_planning = on" \
        -c "SELECT pg_reload_conf()" >/dev/null
    psql -q -X -v ON_ERROR_STOP=1 "$PG_DSN" -d orgsync -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" 2>/dev/null ||
        psql -q -X -v ON_ERROR_STOP=1 "host=127.0.0.1 port=$PG_PORT user=postgres dbname=orgsync" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"
fi
statements() {
    [ "${PG_STATEMENTS:-0}" = 1 ] || return 0
    local su="host=127.0.0.1 port=$PG_PORT user=postgres dbname=orgsync"
    psql -qX "$su" -c "SELECT calls, round(total_exec_time) AS total_ms, round(total_plan_time) AS plan_ms,
        round(mean_exec_time::numeric, 2) AS mean_ms, left(regexp_replace(query, '\s+', ' ', 'g'), 90) AS query
        FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'orgsync')
        ORDER BY total_exec_time DESC LIMIT 8"
}

# PG_EXPLAIN_MS=N: the plans (EXPLAIN ANALYZE) of statements over N ms, in
# PG_EXPLAIN_LOG (default /tmp/orgsync-bench-explain.log) when the bench ends.
if [ -n "${PG_EXPLAIN_MS:-}" ]; then
    psql -q -X -v ON_ERROR_STOP=1 "$PG_DSN" -c "ALTER DATABASE orgsync SET session_preload_libraries = 'auto_explain'" \
        -c "ALTER DATABASE orgsync SET auto_explain.log_min_duration = '${PG_EXPLAIN_MS}ms'" \
        -c "ALTER DATABASE orgsync SET auto_explain.log_analyze = on" \
        -c "ALTER DATABASE orgsync SET auto_explain.log_nested_statements = on"
fi

echo "== simulator: $CORPS enterprises x $DEPTS departments x $USERS members, latency $LATENCY_MS ms"
SIM_FLAGS=()
[ "$MODE" = modern ] && SIM_FLAGS+=(--contact-legacy-ips none)
[ -n "$IP_PER_MIN" ] && SIM_FLAGS+=(--ip-per-min "$IP_PER_MIN") && export ORGSYNC_EGRESS_MAX_PER_MIN=$IP_PER_MIN
"$SIM_BIN" --port 0 --quiet --enterprises "$CORPS" --departments "$DEPTS" \
    --users-per-dept "$USERS" --latency-ms "$LATENCY_MS" --rate "$RATE" "${SIM_FLAGS[@]}" \
    >"$TMP/sim.out" 2>"$TMP/sim.err" &
SIM_PID=$!
sim_wait_port "$TMP/sim.out" "$TMP/sim.err" || exit 1
export ORGSYNC_UPSTREAM_URL=$SIM_URL
USERS_TOTAL=$(curl -sf "$ORGSYNC_UPSTREAM_URL/sim/org" | jq '[.corps[].users_total] | add')

psql -q -X -v ON_ERROR_STOP=1 "$ORGSYNC_PG_DSN" -c "
    INSERT INTO enterprises (corp_id, name, corp_secret, contact_secret, member_source)
    SELECT format('wwsim%s', lpad(i::text, 4, '0')), format('Sim %s', i),
           format('secret-wwsim%s', lpad(i::text, 4, '0')),
           CASE WHEN '$MODE' = 'modern' THEN format('contact-wwsim%s', lpad(i::text, 4, '0')) END,
           '$SOURCE'
    FROM generate_series(1, $CORPS) AS i"

# CPU seconds a process and its reaped children used (utime+stime+cutime+cstime):
# PostgreSQL's backends are reaped by the postmaster, so its total covers them.
TCK=$(getconf CLK_TCK)
cpu_of() { awk -v t="$TCK" '{printf "%.2f", ($14 + $15 + $16 + $17) / t}' "/proc/$1/stat" 2>/dev/null || echo 0; }
PG_PID=$(head -1 "$PG_DIR/pgdata/postmaster.pid")
REDIS_PID=$(cat "$TMP/redis/redis.pid")
pg_cpu() { # postmaster + every live child
    local sum
    sum=$(cpu_of "$PG_PID")
    for c in $(pgrep -P "$PG_PID"); do sum=$(awk -v a="$sum" -v b="$(cpu_of "$c")" 'BEGIN {print a + b}'); done
    echo "$sum"
}
# One `orgsync sync`, its figures printed under the label $1.
sync_once() {
    [ "${PG_STATEMENTS:-0}" = 1 ] && psql -qAtX "host=127.0.0.1 port=$PG_PORT user=postgres dbname=orgsync" -c "SELECT pg_stat_statements_reset()" >/dev/null
    PG_CPU0=$(pg_cpu)
    SIM_CPU0=$(cpu_of "$SIM_PID")
    REDIS_CPU0=$(cpu_of "$REDIS_PID")

    LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
    echo "== orgsync sync$1"
    start=$(date +%s.%N)
    set +e
    /usr/bin/time -f "%M %U %S" -o "$TMP/sync.time" "$BIN" sync >"$TMP/sync.out" 2>"$TMP/sync.err"
    SYNC_RC=$?
    set -e
    end=$(date +%s.%N)
    # (a failed sync adds a "Command exited with non-zero status" line before the figures)
    read -r HWM SYNC_U SYNC_S < <(tail -1 "$TMP/sync.time")
    SYNC_CPU=$(awk -v u="$SYNC_U" -v s="$SYNC_S" 'BEGIN {printf "%.2f", u + s}')
    sleep 0.2 # let the postmaster reap the last backends
    PG_CPU=$(awk -v a="$(pg_cpu)" -v b="$PG_CPU0" 'BEGIN {printf "%.2f", a - b}')
    SIM_CPU=$(awk -v a="$(cpu_of "$SIM_PID")" -v b="$SIM_CPU0" 'BEGIN {printf "%.2f", a - b}')
    REDIS_CPU=$(awk -v a="$(cpu_of "$REDIS_PID")" -v b="$REDIS_CPU0" 'BEGIN {printf "%.2f", a - b}')
    tail -3 "$TMP/sync.out" | sed 's/^/  /'
    if [ "$SYNC_RC" != 0 ]; then
        echo "orgsync sync exited $SYNC_RC" >&2
        tail -20 "$TMP/sync.err" >&2
    fi

    STATS=$(curl -sf "$ORGSYNC_UPSTREAM_URL/sim/stats")
    PG_USERS=$(psql -qAtX "$ORGSYNC_PG_DSN" -c "SELECT count(*) FROM users WHERE deleted_at IS NULL")
    MODES=$(psql -qAtX "$ORGSYNC_PG_DSN" -c "SELECT string_agg(DISTINCT coalesce(api_mode, '?'), ',') FROM sync_progress WHERE run_id = (SELECT max(run_id) FROM sync_runs)")
    SOURCES=$(psql -qAtX "$ORGSYNC_PG_DSN" -c "SELECT string_agg(DISTINCT coalesce(member_source_used, 'user_list'), ',') FROM enterprises")
    jq -r --arg t0 "$start" --arg t1 "$end" --arg rate "$RATE" --arg hwm "$HWM" \
        --arg pgusers "$PG_USERS" --arg want "$USERS_TOTAL" --arg rc "$SYNC_RC" \
        --arg ipmin "${IP_PER_MIN:-20000}" --arg modes "$MODES" --arg sources "$SOURCES" '
      def r2: (. * 100 | round) / 100;
      (($t1 | tonumber) - ($t0 | tonumber)) as $wall | ($rate | tonumber) as $rate |
      [.corps[] | {n: .requests,
                   span: ((.last_request_ms - .first_request_ms) / 1000),
                   max1s: .max_1s, viol: .violations}] as $c |
      ($c | map(.n) | max) as $maxreq |
      # the floor: the slowest enterprise at its rate, or every call through one
      # egress under the per-IP minute limit L, whichever is longer: call i (from
      # 0) cannot go before 60 * floor(i / L) s, so N calls need 60 * floor((N-1) / L)
      (60 * (((.total.requests - 1) / ($ipmin | tonumber)) | floor)) as $ipfloor |
      ([$maxreq / $rate, $ipfloor] | max) as $floor |
      ($c | map(select(.span > 0) | (.n - 1) / .span) | sort) as $rps |
      "== results",
      "wall time                     \($wall | r2) s",
      "API mode used                 \($modes)",
      "member source used            \($sources)",
      "floor                         \($floor | r2) s  (\($maxreq) requests for one enterprise at \($rate)/s: \($maxreq / $rate | r2) s; \(.total.requests) through one egress at \($ipmin)/min: \($ipfloor | r2) s)",
      "wall / floor                  \($wall / $floor | r2)  (goal <= 1.25)",
      "requests/s per enterprise     min \($rps[0] | r2)  median \($rps[($rps | length) / 2 | floor] | r2)  max \($rps[-1] | r2)  (goal >= 9.5)",
      "max requests in any 1 s       \($c | map(.max1s) | max)  (limit \($rate)); violations \($c | map(.viol) | add)",
      "per-IP: most in any 60 s      \([.ips[]?.max_60s] | max // 0)  (limit \($ipmin)); violations \([.ips[]?.ip_violations] | add // 0)",
      "upstream requests             \(.total.requests) total (\(.total.by_path | to_entries | map(select(.value > 0) | "\(.key) \(.value)") | join(", "))), max in flight \(.total.max_inflight)",
      "export files                  \(.export.jobs | map(.parts) | add // 0) files of \(.export.jobs | length) jobs, \(.export.file_range_requests) range requests, \(.export.file_bytes) bytes",
      "peak RSS of orgsync sync      \(($hwm | tonumber) / 1024 | r2) MB  (goal <= 64)",
      "members written per second    \(($pgusers | tonumber) / $wall | round)  (\($pgusers) of \($want) members in PostgreSQL)",
      "orgsync sync exit status      \($rc)"
    ' <<<"$STATS"
    echo "departments unchanged         $(psql -qAtX "$ORGSYNC_PG_DSN" -c "SELECT count(*) FILTER (WHERE unchanged) || ' of ' || count(*) || ' written as a checkpoint only (sql/008); digests not trusted now: ' || (SELECT count(*) FROM department_digests WHERE digest IS NULL) FROM sync_checkpoints WHERE run_id = (SELECT max(run_id) FROM sync_runs)")"
    echo "CPU seconds used              postgres $PG_CPU, orgsync sync $SYNC_CPU, simulator $SIM_CPU, redis $REDIS_CPU ($(nproc) CPUs; load before: $LOAD0)"
    awk -v p="$PG_CPU" -v o="$SYNC_CPU" -v s="$SIM_CPU" -v r="$REDIS_CPU" -v t0="$start" -v t1="$end" -v n="$(nproc)" \
        'BEGIN {printf "CPU busy during the sync       %.0f%% of %d CPUs x wall time\n", 100 * (p + o + s + r) / ((t1 - t0) * n), n}'
}

# Every live member's stored object (raw) against the simulator's, and no other
# member live: the objects with sorted keys, one line per member, compared whole.
verify_data() {
    [ "$VERIFY" = 1 ] || return 0
    if [ "$MODE" != legacy ]; then
        echo "data identical to the simulator  not compared (MODE=$MODE: the app's answers lack fields)"
        return 0
    fi
    # the fields GET /sim/org shows (its user/list answers carry more)
    local keep='{c, u: (.u | {userid, name, mobile, email, position, status, gender, department, order, is_leader_in_dept, main_department})}'
    curl -sf "$ORGSYNC_UPSTREAM_URL/sim/org" |
        jq -cS ".corps[] | .corp_id as \$c | .users[] | {c: \$c, u: .} | $keep" | sort >"$TMP/want.jsonl"
    psql -qAtX "$ORGSYNC_PG_DSN" -c "SELECT jsonb_build_object('c', corp_id, 'u', raw) FROM users WHERE deleted_at IS NULL" |
        jq -cS "$keep" | sort >"$TMP/got.jsonl"
    local n differ
    n=$(wc -l <"$TMP/want.jsonl")
    differ=$(comm -3 "$TMP/want.jsonl" "$TMP/got.jsonl" | wc -l)
    if [ "$differ" = 0 ]; then
        echo "data identical to the simulator  yes ($n members, each with the 11 fields /sim/org shows)"
    else
        echo "data identical to the simulator  NO: $differ lines differ of $n members"
        comm -3 "$TMP/want.jsonl" "$TMP/got.jsonl" | head -4 | cut -c1-400
    fi
}

# CHANGE_PCT of each enterprise's members changed in the simulator.
mutate_directory() {
    local per n rename move add remove i
    per=$(awk -v t="$USERS_TOTAL" -v c="$CORPS" 'BEGIN {print t / c}')
    n=$(awk -v p="$per" -v pct="$CHANGE_PCT" 'BEGIN {printf "%d", p * pct / 100 + 0.5}')
    [ "$n" -gt 0 ] || return 0
    move=$((n / 5)); add=$((n / 10)); remove=$((n / 10)); rename=$((n - move - add - remove))
    for i in $(seq 1 "$CORPS"); do
        curl -sf -X POST "$ORGSYNC_UPSTREAM_URL/sim/mutate" -d "{\"corp_id\":\"$(printf 'wwsim%04d' "$i")\",
            \"random\":{\"add\":$add,\"remove\":$remove,\"rename\":$rename,\"move\":$move}}" >/dev/null
    done
    echo "== changed: $n members per enterprise (rename $rename, move $move, add $add, remove $remove)"
}

sync_once ""
FIRST_PG_CPU=$PG_CPU
statements
verify_data
# SYNCS=N: N-1 more syncs of the same directory, every member already stored (the
# schedule's usual run), CHANGE_PCT percent of them changed before each; the
# simulator's counts start again for each.
for i in $(seq 2 "${SYNCS:-1}"); do
    curl -sf -X POST "$ORGSYNC_UPSTREAM_URL/sim/reset-stats" >/dev/null
    mutate_directory
    USERS_TOTAL=$(curl -sf "$ORGSYNC_UPSTREAM_URL/sim/org" | jq '[.corps[].users_total] | add')
    if [ "$CHANGE_PCT" = 0 ]; then
        sync_once " $i (every member already stored, no change)"
    else
        sync_once " $i (every member already stored, $CHANGE_PCT% changed)"
    fi
    awk -v a="$PG_CPU" -v b="$FIRST_PG_CPU" 'BEGIN {printf "PostgreSQL CPU / first sync    %.3f\n", a / b}'
    statements
    verify_data
done

# PostgreSQL's own floor for these rows, measured now on the same server: COPY (its
# cheapest way in) of the same members, text as the sync sends it, into a copy of
# users with the same indexes. The sync's PostgreSQL CPU over this is what the
# upsert, the checkpoints and the progress rows cost on top of storing the rows.
if [ "$PG_USERS" -gt 0 ]; then
    psql -qX -v ON_ERROR_STOP=1 "$ORGSYNC_PG_DSN" -c "\\copy users TO '$TMP/users.csv' csv" \
        -c "CREATE TABLE bench_copy (LIKE users INCLUDING ALL)" >/dev/null
    psql -qX -v ON_ERROR_STOP=1 "$PG_DSN" -c "CHECKPOINT" >/dev/null # as the superuser
    sleep 0.2
    c0=$(pg_cpu)
    t0=$(date +%s.%N)
    psql -qX -v ON_ERROR_STOP=1 "$ORGSYNC_PG_DSN" -c "\\copy bench_copy FROM '$TMP/users.csv' csv" >/dev/null
    t1=$(date +%s.%N)
    sleep 0.2
    awk -v a="$(pg_cpu)" -v b="$c0" -v t0="$t0" -v t1="$t1" -v pg="$FIRST_PG_CPU" -v n="$PG_USERS" \
        'BEGIN {printf "PostgreSQL floor (COPY)       %.2f CPU s, %.2f s wall for the same %d rows; sync / COPY = %.2f\n", a - b, t1 - t0, n, pg / (a - b)}'
fi
