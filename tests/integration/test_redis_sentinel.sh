#!/usr/bin/env bash
# Redis Sentinel discovery (issue 18, item 6). One master, one replica and three
# sentinels (`redis-server --sentinel`, the same binary as redis-server), all on
# free ports; two `orgsync serve` hosts with
#   ORGSYNC_REDIS_URL=redis-sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/orgsync-m?db=0
# A run is going on when SENTINEL FAILOVER promotes the replica: the run still
# succeeds, every host reconnects to the new master (found through the
# sentinels and confirmed with ROLE), the lock and fence counter live on the new
# master, and fencing tokens never go back. Then the new master's fence counter
# is set back to 0, as if a failover had lost the last INCRs (replication is
# asynchronous): the next run still succeeds with a token above every earlier
# one, because the leader raises the counter from PostgreSQL's leader_fence row
# (coordinator/leader.c, fence repair).
. "$(dirname "$0")/../lib/testlib.sh"
. "$(dirname "$0")/serve_helpers.sh"
: "${ORGSYNC_SIM_BIN:?ORGSYNC_SIM_BIN missing}"
serve_trap

M=orgsync-m
P1=$(free_port)
P2=$(free_port)
start_redis() { # port [args...]
    local port=$1
    shift
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$SV_DIR" "$@" \
        >"$SV_DIR/redis-$port.log" 2>&1 &
    SV_EXTRA_PIDS+=($!)
    T=10 wait_for redis-cli -p "$port" ping || { not_ok "redis-server on $port did not start"; exit 1; }
}
start_redis "$P1"
start_redis "$P2" --replicaof 127.0.0.1 "$P1"
T=15 wait_for bash -c "redis-cli -p $P2 INFO replication | grep -q master_link_status:up" ||
    not_ok "the replica did not sync"

SENTINELS=()
for i in 1 2 3; do
    sp=$(free_port)
    SENTINELS+=("$sp")
    cat >"$SV_DIR/sentinel$i.conf" <<CONF
port $sp
bind 127.0.0.1
dir $SV_DIR
sentinel monitor $M 127.0.0.1 $P1 2
sentinel down-after-milliseconds $M 1000
sentinel failover-timeout $M 10000
sentinel parallel-syncs $M 1
CONF
    redis-server "$SV_DIR/sentinel$i.conf" --sentinel >"$SV_DIR/sentinel$i.out" 2>&1 &
    SV_EXTRA_PIDS+=($!)
done
for sp in "${SENTINELS[@]}"; do
    T=10 wait_for redis-cli -p "$sp" ping || { not_ok "sentinel $sp did not start"; exit 1; }
done
sentinel_master_port() { redis-cli -p "$1" --raw SENTINEL get-master-addr-by-name "$M" | sed -n 2p; }
sentinels_know() { # every sentinel sees the replica and the other sentinels
    local sp
    for sp in "${SENTINELS[@]}"; do
        [ "$(redis-cli -p "$sp" --raw SENTINEL master "$M" | awk 'p {print; exit} $0 == "num-other-sentinels" {p=1}')" = 2 ] || return 1
        [ "$(redis-cli -p "$sp" --raw SENTINEL master "$M" | awk 'p {print; exit} $0 == "num-slaves" {p=1}')" = 1 ] || return 1
    done
}
T=30 wait_for sentinels_know || not_ok "the sentinels did not find each other and the replica"
eq "the sentinels name the first master" "$P1" "$(sentinel_master_port "${SENTINELS[0]}")"

SV_ENV="sent$$"
SDB=$(fresh_db)
SV_DBS+=("$SDB")
serve_sim 2 --enterprises 1 --departments 40 --users-per-dept 2 --seed 7
serve_corps "$SDB" 1
SV_REDIS_URL="redis-sentinel://127.0.0.1:${SENTINELS[0]},127.0.0.1:${SENTINELS[1]},127.0.0.1:${SENTINELS[2]}/$M?db=0"
# A lease that outlives the failover (a few seconds without a confirmed renewal).
for h in a b; do
    serve_start "$h" "$([ $h = a ] && echo 0 || echo 1)" ORGSYNC_DEPT_RATE=8 ORGSYNC_LOCK_TTL_MS=15000
done
serve_wait_ready a b
for h in a b; do
    T=15 wait_for grep -q "\"redis connected to the master named by the sentinels\".*\"port\":$P1" "$SV_DIR/$h.log" ||
        not_ok "$h did not connect to the master on $P1 through the sentinels"
done
r1() { redis-cli -p "$P1" --raw "$@" 2>/dev/null; }
r2() { redis-cli -p "$P2" --raw "$@" 2>/dev/null; }

rid=$(serve_request_run a)
check "a run was requested ($rid)" test "${rid:-0}" -gt 0
T=15 wait_for run_running "$rid" || not_ok "run $rid never ran"
T=10 wait_for bash -c "[ \"\$(redis-cli -p $P1 --raw GET orgsync:$SV_ENV:lock:$SV_JOB)\" != '' ]" ||
    not_ok "no lock on the first master"
lock_before=$(r1 GET "orgsync:$SV_ENV:lock:$SV_JOB")
fence_before=$(r1 GET "orgsync:$SV_ENV:fence:$SV_JOB")
sleep 1
check "run $rid is still running when the failover starts" run_running "$rid"
eq "SENTINEL FAILOVER accepted" OK "$(redis-cli -p "${SENTINELS[1]}" --raw SENTINEL FAILOVER "$M")"
T=30 wait_for bash -c "[ \"\$(redis-cli -p ${SENTINELS[0]} --raw SENTINEL get-master-addr-by-name $M | sed -n 2p)\" = $P2 ]" ||
    not_ok "the sentinels did not move the master to $P2"
T=15 wait_for bash -c "redis-cli -p $P2 --raw ROLE | head -1 | grep -qx master" || not_ok "$P2 is not master"
for h in a b; do
    T=20 wait_for grep -q "\"redis connected to the master named by the sentinels\".*\"port\":$P2" "$SV_DIR/$h.log" ||
        not_ok "$h did not reconnect to the new master on $P2"
done
T=60 wait_for bash -c "[ \"\$(psql -qAtX '$SDB' -c 'SELECT state FROM sync_runs WHERE run_id = $rid')\" != running ]"
eq "the run going on through the failover succeeded" succeeded "$(run_state "$rid")"
eq "... in one attempt" 1 "$(psql_q "SELECT attempt FROM sync_runs WHERE run_id = $rid")"
check "the data matches the upstream" serve_data_equals_sim "$SDB"
fence_after=$(r2 GET "orgsync:$SV_ENV:fence:$SV_JOB")
check "the fence counter on the new master ($fence_after) did not go back (was $fence_before)" \
    test "${fence_after:-0}" -ge "${fence_before:-1}"
tok1=$(psql_q "SELECT fencing_token FROM sync_runs WHERE run_id = $rid")
check "the run's token $tok1 is the lock's (${lock_before#*|})" test "$tok1" = "${lock_before#*|}"

# The lock moves to the new master: the next run is led under a lock held there.
rid2=$(serve_request_run b)
T=15 wait_for run_running "$rid2" || true
lock2=$(r2 GET "orgsync:$SV_ENV:lock:$SV_JOB")
T=60 wait_for run_is "$rid2" succeeded || not_ok "run $rid2 after the failover did not succeed ($(run_state "$rid2"))"
tok2=$(psql_q "SELECT fencing_token FROM sync_runs WHERE run_id = $rid2")
check "run $rid2's token $tok2 was held on the new master (lock seen: '$lock2')" test "${lock2#*|}" = "$tok2"
check "tokens went up ($tok1 -> $tok2)" test "$tok2" -gt "$tok1"
eq "the old master holds no lock of ours" "" "$(r1 GET "orgsync:$SV_ENV:lock:$SV_JOB")"

# A failover that lost the last INCRs: the counter restarts below the fence row.
r2 SET "orgsync:$SV_ENV:fence:$SV_JOB" 0 >/dev/null
rid3=$(serve_request_run a)
T=60 wait_for run_is "$rid3" succeeded || not_ok "run $rid3 after a lost counter did not succeed ($(run_state "$rid3"))"
tok3=$(psql_q "SELECT fencing_token FROM sync_runs WHERE run_id = $rid3")
check "the token still went up after the counter was lost ($tok2 -> $tok3)" test "${tok3:-0}" -gt "$tok2"
eq "fencing tokens never go back, in run order" 0 \
    "$(psql_q "SELECT count(*) FROM (SELECT fencing_token < lag(fencing_token) OVER (ORDER BY run_id) AS back FROM sync_runs WHERE env = '$SV_ENV') t WHERE back")"
eq "leader_fence holds the last token" "$tok3" "$(psql_q "SELECT token FROM leader_fence WHERE env = '$SV_ENV' AND job = '$SV_JOB'")"
check "the fencing counter was repaired from PostgreSQL (logged)" grep -q 'fencing counter was behind' "$SV_DIR/a.log" "$SV_DIR/b.log"
check "no sanitizer report" serve_logs_clean
finish
