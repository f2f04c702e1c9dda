#!/usr/bin/env bash
# The supervisor: a crashed worker is restarted with backoff while the others
# serve on; SIGTERM to a leader's supervisor mid-run ends it gracefully (lock
# released, run left resumable) so another instance resumes at once, not a TTL
# later; and a supervisor whose workers cannot start exits non-zero.
. "$(dirname "$0")/../lib/testlib.sh"
. "$(dirname "$0")/serve_helpers.sh"
serve_trap

SV_ENV="sup$$"
TTL=6000
SDB=$(fresh_db)
SV_DBS+=("$SDB")
serve_sim 2 --enterprises 2 --departments 30 --users-per-dept 3 --seed 4 --rate 20
serve_corps "$SDB" 2
serve_start a 0 ORGSYNC_LOCK_TTL_MS=$TTL ORGSYNC_DEPT_RATE=15
serve_start b 1 ORGSYNC_LOCK_TTL_MS=$TTL ORGSYNC_DEPT_RATE=15
serve_wait_ready a b

# 1. A worker crashes: restarted with backoff, logged; the instance keeps serving.
w2=$(sed -n 's/.*"supervisor: worker started".*"worker_id":2,"pid":\([0-9]*\).*/\1/p' "$SV_DIR/a.log" | tail -1)
check "worker 2 of a has a pid ($w2)" test -n "$w2"
kill -KILL "$w2"
restarted() { grep '"supervisor: worker ready"' "$SV_DIR/a.log" | grep -c '"worker_id":2' | grep -q '^2$'; }
T=10 wait_for restarted
check "worker 2 was restarted and is ready again" restarted
check "the crash and the backoff were logged" grep -q '"supervisor: worker exited; restarting after backoff".*"worker_id":2.*"signal":9' "$SV_DIR/a.log"
check "a still answers /healthz" serve_ready a
w2b=$(sed -n 's/.*"supervisor: worker started".*"worker_id":2,"pid":\([0-9]*\).*/\1/p' "$SV_DIR/a.log" | tail -1)
check "the new worker 2 is another process ($w2 -> $w2b)" test "$w2" != "$w2b"

# 2. SIGTERM to the leader mid-run: it stops its job, leaves the run abandoned,
#    releases the lock; the other instance resumes it well before the TTL.
rid=$(serve_request_run a)
T=5 wait_for run_is "$rid" running || not_ok "run $rid did not start"
done_depts() { psql_q "SELECT coalesce(sum(departments_done), 0) FROM sync_progress WHERE run_id = $rid"; }
T=10 wait_for eval '[ "$(done_depts)" -ge 15 ]' || true
leader=$(serve_leader)
victim=${leader%%/*}
check "a leader is mid-run ($leader)" test -n "$victim"
t0=$(ms_now)
serve_stop "$victim"
stopped_ms=$(($(ms_now) - t0))
eq "the leader's supervisor exits 0 after SIGTERM" 0 "$SV_RC"
check "it stopped within the bound (${stopped_ms} ms)" test "$stopped_ms" -le 20000
check "its session ended as a shutdown" grep -q '"leader session ended".*"status":5' "$SV_DIR/$victim.log"
check "the leader released the lock" grep -q '"leader lock released"' "$SV_DIR/$victim.log"
attempt2() { [ "$(psql_q "SELECT attempt FROM sync_runs WHERE run_id = $rid")" -ge 2 ]; }
T=10 wait_for attempt2 || not_ok "nobody resumed the run"
took=$(($(ms_now) - t0))
echo "resumed ${took} ms after SIGTERM (TTL ${TTL} ms)"
check "resumed before the TTL could have run out (${took} ms < ${TTL} ms)" test "$took" -lt "$TTL"
heir=$([ "$victim" = a ] && echo b || echo a)
check "the heir claimed a run the leader had left abandoned" grep -q '"run claimed".*"prev_state":"abandoned"' "$SV_DIR/$heir.log"
check "... not one it had to abandon itself (the leader was gone)" bash -c '! grep -q "run abandoned: its leader is gone" "$1"' _ "$SV_DIR/$heir.log"
T=30 wait_for run_is "$rid" succeeded || not_ok "run $rid did not finish"
eq "the run succeeded" succeeded "$(run_state "$rid")"
check "data equals the simulator's" serve_data_equals_sim "$SDB"

# 3. Workers that cannot start (the port is taken by a socket without
#    SO_REUSEPORT): the supervisor gives up and exits non-zero.
python3 -c 'import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True); time.sleep(60)' >"$SV_DIR/squat.out" &
SV_EXTRA_PIDS+=($!)
T=5 wait_for test -s "$SV_DIR/squat.out"
port=$(cat "$SV_DIR/squat.out")
t0=$(ms_now)
set +e
ORGSYNC_ENV="$SV_ENV" ORGSYNC_PG_DSN="$SDB" ORGSYNC_REDIS_URL="$SV_REDIS_URL" ORGSYNC_WORKERS=2 \
    ORGSYNC_HTTP_ADDR="127.0.0.1:$port" ORGSYNC_READ_ONLY=off timeout 60 "$ORGSYNC_BIN" serve >"$SV_DIR/nostart.log" 2>&1
rc=$?
set -e
eq "workers cannot start: exit 1" 1 "$rc"
check "... within 15 s ($(($(ms_now) - t0)) ms)" test $(($(ms_now) - t0)) -le 15000
check "... saying why" grep -q '"supervisor: worker cannot start; stopping"' "$SV_DIR/nostart.log"
check "... and the listen error" grep -q '"serve: cannot serve HTTP"' "$SV_DIR/nostart.log"
check "no sanitizer report in the logs" serve_logs_clean
finish
