#!/usr/bin/env bash
# A PostgreSQL primary switch under a multi-host DSN (issue 18, item 6):
#   host=localhost,localhost port=A,B target_session_attrs=read-write
# A is a primary, B its streaming replica (pg_basebackup -R, hot standby: libpq
# skips it while it is read-only). An `orgsync serve` runs a sync on A; then A
# stops and B is promoted. The serve reconnects to B (the new primary) by
# itself and the next run succeeds there, its fencing token above the one the
# replica got from A. The serve runs under strace: /etc/hosts (glibc's lookup
# of "localhost") is only ever opened by thread-pool threads, never by a
# process's main thread, which runs the event loop.
. "$(dirname "$0")/../lib/testlib.sh"
. "$(dirname "$0")/serve_helpers.sh"
: "${ORGSYNC_SIM_BIN:?ORGSYNC_SIM_BIN missing}"
serve_trap

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
stop_dbs() {
    local d
    for d in "$SV_DIR/pga" "$SV_DIR/pgb"; do
        [ -d "$d/pgdata" ] && as_pg "$PGBIN/pg_ctl" -D "$d/pgdata" -w -t 30 -m immediate stop >/dev/null 2>&1
    done
    return 0
}
SV_CLEANUP_HOOK=stop_dbs
chmod 755 "$SV_DIR"

eval "$("$ORGSYNC_SRC/tests/servers.sh" start-pg "$SV_DIR/pga")"
PA=$PG_PORT
psql -qX -v ON_ERROR_STOP=1 "host=127.0.0.1 port=$PA user=postgres dbname=postgres" \
    -c "CREATE ROLE orgsync LOGIN" -c "CREATE DATABASE orgsync OWNER orgsync" >/dev/null
ORGSYNC_PG_DSN="host=127.0.0.1 port=$PA user=orgsync dbname=orgsync" "$ORGSYNC_BIN" migrate >/dev/null
# The replica: a base backup of A that follows it (standby.signal, primary_conninfo).
PB=$(free_port)
mkdir -p "$SV_DIR/pgb"
[ "$(id -u)" = 0 ] && chown postgres: "$SV_DIR/pgb"
as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$PA" -U postgres -D "$SV_DIR/pgb/pgdata" -R -X stream \
    >"$SV_DIR/basebackup.log" 2>&1 || { cat "$SV_DIR/basebackup.log"; not_ok "pg_basebackup failed"; exit 1; }
as_pg "$PGBIN/pg_ctl" -D "$SV_DIR/pgb/pgdata" -l "$SV_DIR/pgb/pg.log" -w -t 30 \
    -o "-p $PB -k $SV_DIR/pgb -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null ||
    { tail -20 "$SV_DIR/pgb/pg.log"; not_ok "the replica did not start"; exit 1; }
qa() { psql -qAtX "host=127.0.0.1 port=$PA user=orgsync dbname=orgsync" -c "$1"; }
qb() { psql -qAtX "host=127.0.0.1 port=$PB user=orgsync dbname=orgsync" -c "$1"; }
eq "B is a replica" t "$(qb "SELECT pg_is_in_recovery()")"

SV_ENV="pgsw$$"
serve_sim 1 --enterprises 1 --departments 6 --users-per-dept 2 --seed 23
SDB="host=127.0.0.1 port=$PA user=orgsync dbname=orgsync"
serve_corps "$SDB" 1
T=10 wait_for bash -c "[ \"\$(psql -qAtX 'host=127.0.0.1 port=$PB user=orgsync dbname=orgsync' -c 'SELECT count(*) FROM enterprises')\" = 1 ]" ||
    not_ok "the replica did not follow A"

DSN="host=localhost,localhost port=$PA,$PB user=orgsync dbname=orgsync target_session_attrs=read-write connect_timeout=3"
port=$(free_port)
SV_HTTP[a]=$port
env ORGSYNC_ENV="$SV_ENV" ORGSYNC_SCHEDULE=on ORGSYNC_WORKERS=2 ORGSYNC_SCHEDULER_WORKERS=1 \
    ORGSYNC_INSTANCE=a ORGSYNC_PG_DSN="$DSN application_name=a" \
    ORGSYNC_REDIS_URL="$SV_REDIS_URL" ORGSYNC_CRON="0 0 0 1 1 *" ORGSYNC_TZ=UTC \
    ORGSYNC_LOCK_TTL_MS=2000 ORGSYNC_UPSTREAM_URL="http://127.0.0.1:${SIM_PORTS[0]}" \
    ORGSYNC_HTTP_ADDR="127.0.0.1:$port" ORGSYNC_ADMIN_TOKEN="$SV_ADMIN" ORGSYNC_LOG_LEVEL=info \
    ASAN_OPTIONS=detect_leaks=0 \
    setsid strace -f -qq -e trace=openat,clone,clone3,fork,vfork -o "$SV_DIR/strace.out" \
    "$ORGSYNC_BIN" serve >>"$SV_DIR/a.log" 2>&1 &
SV_PID[a]=$!
T=30 serve_wait_ready a

rid=$(serve_request_run a)
check "run 1 requested ($rid)" test "${rid:-0}" -gt 0
T=60 wait_for run_is "$rid" succeeded || not_ok "run $rid did not succeed on A ($(run_state "$rid"))"
tok1=$(qa "SELECT token FROM leader_fence WHERE env = '$SV_ENV'")
eq "the serve's sessions are on A, none on the replica" 0 \
    "$(qb "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'a'")"
T=10 wait_for bash -c "[ \"\$(psql -qAtX 'host=127.0.0.1 port=$PB user=orgsync dbname=orgsync' -c \"SELECT state FROM sync_runs WHERE run_id = $rid\")\" = succeeded ]" ||
    not_ok "run $rid did not reach the replica"

# The switch: A goes away, B is promoted.
as_pg "$PGBIN/pg_ctl" -D "$SV_DIR/pga/pgdata" -w -t 30 -m fast stop >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$SV_DIR/pgb/pgdata" -w -t 30 promote >/dev/null
eq "B is the primary now" f "$(qb "SELECT pg_is_in_recovery()")"
SDB="host=127.0.0.1 port=$PB user=orgsync dbname=orgsync"

req() { rid2=$(curl -fsS -X POST -H "Authorization: Bearer $SV_ADMIN" "http://127.0.0.1:${SV_HTTP[a]}/v1/runs" | jq -r .run_id) && [ "${rid2:-0}" -gt 0 ] 2>/dev/null; }
T=30 wait_for req || not_ok "no run could be requested after the switch"
rid2=$(qb "SELECT max(run_id) FROM sync_runs WHERE env = '$SV_ENV'")
check "run 2 ($rid2) is a new run" test "${rid2:-0}" -gt "$rid"
T=60 wait_for run_is "$rid2" succeeded || not_ok "run $rid2 did not succeed on B ($(run_state "$rid2"))"
check "the data matches the upstream (on B)" serve_data_equals_sim "$SDB"
tok2=$(qb "SELECT token FROM leader_fence WHERE env = '$SV_ENV'")
check "the fencing token went up across the switch ($tok1 -> $tok2)" test "${tok2:-0}" -gt "${tok1:-0}"
check "the serve logged reconnecting to B" grep -q "\"pg reconnected\".*\"port\":\"$PB\"" "$SV_DIR/a.log"
check "B serves the serve's sessions" test "$(qb "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'a'")" -ge 1

# Stop the serve itself (strace, its parent, exits once it has): TERM, then wait.
sp=${SV_PID[a]}
op=$(pgrep -P "$sp" -x orgsync || true)
check "the serve runs under strace ($op)" test -n "$op"
[ -n "$op" ] && kill -TERM "$op"
SV_RC=0
wait "$sp" || SV_RC=$?
unset "SV_PID[a]"
check "the serve stopped (strace exit $SV_RC)" test "$SV_RC" -eq 0
# Threads are the children of clone(... CLONE_THREAD ...); a process's main
# thread (its loop) is not.
# strace splits a call another thread interrupts: "<unfinished ...>", then
# "<... clone3 resumed> ... = TID" on the same caller.
threads=$(awk '/clone3?\(.*CLONE_THREAD/ { if (/<unfinished/) pend[$1] = 1; else print $NF; next }
    /<\.\.\. clone3? resumed>/ && pend[$1] { print $NF; delete pend[$1] }' "$SV_DIR/strace.out" | sort -u)
hosts_tids=$(awk '/openat\(.*"\/etc\/hosts"/ { print $1 }' "$SV_DIR/strace.out" | sort -u)
check "names were looked up (/etc/hosts opened)" test -n "$hosts_tids"
on_loop=$(comm -23 <(echo "$hosts_tids") <(echo "$threads"))
eq "no lookup on a loop thread (main-thread openers: '$on_loop')" "" "$on_loop"
check "no sanitizer report" serve_logs_clean
finish
