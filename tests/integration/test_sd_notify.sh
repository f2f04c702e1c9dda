#!/usr/bin/env bash
# systemd's notification protocol (Type=notify), against a stand-in for the
# manager's socket (tests/lib/notify_listen.py), as `orgsync serve` meets it
# under the unit in deploy/systemd/: READY=1 only once every worker serves,
# STATUS= with the workers and who leads, WATCHDOG=1 every half
# $WATCHDOG_USEC from the supervisor's loop (and none while that loop is
# stopped), RELOADING=1 then READY=1 around a SIGHUP, STOPPING=1 at SIGTERM;
# every message from the main process (NotifyAccess=main); an abstract ('@')
# and a path socket; WATCHDOG_PID naming another process means no pings.
. "$(dirname "$0")/../lib/testlib.sh"
. "$(dirname "$0")/serve_helpers.sh"
serve_trap

SV_ENV="sdn$$"
SDB=$(fresh_db)
SV_DBS+=("$SDB")
serve_sim 1 --enterprises 1 --departments 20 --users-per-dept 2 --seed 3 --rate 50
serve_corps "$SDB" 1

# listen ADDRESS NAME: a notification socket; its messages go to $SV_DIR/NAME.notify.
listen() {
    python3 "$ORGSYNC_SRC/tests/lib/notify_listen.py" "$1" "$SV_DIR/$2.notify" >"$SV_DIR/$2.listen" 2>&1 &
    SV_EXTRA_PIDS+=($!)
    T=5 wait_for grep -q listening "$SV_DIR/$2.listen"
}
msgs() { cut -d' ' -f3- "$SV_DIR/$1.notify"; }
has_msg() { msgs "$1" | grep -q -- "$2"; }

# 1. An abstract socket, a 600 ms watchdog (pings every 300 ms), two workers.
listen "@orgsync-test-$$" a
serve_start a 0 NOTIFY_SOCKET="@orgsync-test-$$" WATCHDOG_USEC=600000 ORGSYNC_DEPT_RATE=10
serve_wait_ready a
T=10 wait_for has_msg a '^READY=1' || not_ok "no READY=1"
sup=${SV_PID[a]}
ready_line=$(grep -n '"supervisor: every worker serves' "$SV_DIR/a.log" | head -1 | cut -d: -f1)
serving_before=$(head -n "${ready_line:-0}" "$SV_DIR/a.log" | grep -c '"serve: worker serving"' || true)
eq "READY=1 was sent after both workers served" 2 "$serving_before"
eq "READY=1 was sent once" 1 "$(msgs a | grep -c '^READY=1')"
check "READY=1 came with STATUS= naming 2/2 workers ready" bash -c 'grep -q "READY=1|STATUS=serving: 2/2 workers ready" "$1"' _ "$SV_DIR/a.notify"

# Who leads shows in STATUS while a run goes (20 departments at 10/s: 2 s).
rid=$(serve_request_run a)
T=10 wait_for has_msg a 'STATUS=serving: 2/2 workers ready; leading: worker 1' || true
check "STATUS named worker 1 as leading during run $rid" has_msg a 'STATUS=serving: 2/2 workers ready; leading: worker 1'
T=20 wait_for run_is "$rid" succeeded || not_ok "run $rid did not finish"
T=5 wait_for eval '[ "$(msgs a | grep STATUS= | tail -1)" = "STATUS=serving: 2/2 workers ready; not leading" ]' || true
eq "after the run STATUS says not leading" "STATUS=serving: 2/2 workers ready; not leading" "$(msgs a | grep STATUS= | tail -1)"

# Watchdog: every gap between pings near 300 ms (none above 450, none below 200).
sleep 2
gaps=$(grep ' WATCHDOG=1$' "$SV_DIR/a.notify" | awk 'NR > 1 { print $1 - prev } { prev = $1 }')
n=$(wc -l <<<"$gaps")
max=$(sort -n <<<"$gaps" | tail -1)
min=$(sort -n <<<"$gaps" | head -1)
echo "watchdog: $((n + 1)) pings, gaps ${min}..${max} ms (WATCHDOG_USEC=600000: every 300 ms)"
check "at least 10 pings so far ($((n + 1)))" test "$n" -ge 9
check "no gap between pings above 450 ms (max $max)" test "$max" -le 450
check "no ping sooner than 200 ms after the last (min $min)" test "$min" -ge 200

# A stopped supervisor loop stops the pings (that is what trips systemd's watchdog).
# (counted once stopped, after a moment: a ping sent just before the stop may
# still be on its way to the listener, and it is not one sent while stopped)
kill -STOP "$sup"
sleep 0.3
before=$(grep -c ' WATCHDOG=1$' "$SV_DIR/a.notify")
sleep 1.2
during=$(grep -c ' WATCHDOG=1$' "$SV_DIR/a.notify")
kill -CONT "$sup"
eq "no ping while the supervisor was stopped" "$before" "$during"
T=3 wait_for eval '[ "$(grep -c " WATCHDOG=1$" "$SV_DIR/a.notify")" -gt '"$during"' ]' || true
check "pings resumed after SIGCONT" test "$(grep -c ' WATCHDOG=1$' "$SV_DIR/a.notify")" -gt "$during"

# Reload: RELOADING=1 (with MONOTONIC_USEC) then READY=1.
kill -HUP "$sup"
T=5 wait_for eval '[ "$(msgs a | grep -c "^READY=1")" -ge 2 ]' || true
check "SIGHUP: RELOADING=1 with MONOTONIC_USEC" has_msg a '^RELOADING=1|MONOTONIC_USEC=[0-9]*|STATUS=reloading'
check "... then READY=1 again" test "$(msgs a | grep -c '^READY=1')" -ge 2
rl=$(msgs a | grep -n '^RELOADING=1' | head -1 | cut -d: -f1)
rd=$(msgs a | grep -n '^READY=1' | sed -n 2p | cut -d: -f1)
check "... in that order ($rl < $rd)" test "${rl:-99999}" -lt "${rd:-0}"
check "the supervisor still runs after SIGHUP" kill -0 "$sup"

# Stop: STOPPING=1, exit 0; every message came from the supervisor's pid.
serve_stop a
eq "SIGTERM: exit 0" 0 "$SV_RC"
check "SIGTERM: STOPPING=1 with a STATUS" has_msg a '^STOPPING=1|STATUS=stopping: '
others=$(awk -v p="$sup" '$2 != p' "$SV_DIR/a.notify" | wc -l)
eq "every message came from the main process (pid $sup)" 0 "$others"

# 2. A path socket; WATCHDOG_PID names another process: READY, but no pings.
listen "$SV_DIR/notify.sock" b
serve_start b 0 NOTIFY_SOCKET="$SV_DIR/notify.sock" WATCHDOG_USEC=200000 WATCHDOG_PID=1 ORGSYNC_SCHEDULE=off
serve_wait_ready b
T=10 wait_for has_msg b '^READY=1' || true
check "a path socket gets READY=1" has_msg b '^READY=1'
sleep 1
eq "WATCHDOG_PID=1 (not us): no WATCHDOG=1" 0 "$(msgs b | grep -c '^WATCHDOG=1' || true)"
serve_stop b
check "... and STOPPING=1" has_msg b '^STOPPING=1'

# 3. Without NOTIFY_SOCKET nothing changes: it serves and stops cleanly.
serve_start c 0 ORGSYNC_SCHEDULE=off
serve_wait_ready c
serve_stop c
eq "without NOTIFY_SOCKET: exit 0" 0 "$SV_RC"
check "no sanitizer report in the logs" serve_logs_clean
finish
