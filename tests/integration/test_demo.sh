#!/usr/bin/env bash
# deploy/demo.sh --ci, the README's first command, end to end. It builds
# orgsync and the simulator itself from this source tree (Release, tests off:
# what a new user's first command does) into a scratch build directory, runs
# the whole system (simulator, PostgreSQL, Redis, three orgsync hosts), kills
# the leader's host while the run is far from done, and must show another host
# take over and finish it; then nothing may be left behind.
. "$(dirname "$0")/../lib/testlib.sh"

OUT="$ORGSYNC_TEST_TMP/demo.$$.out"
BUILD="$ORGSYNC_TEST_TMP/demo-build.$$"
set +e
ORGSYNC_DEMO_BUILD_DIR=$BUILD timeout 540 "$ORGSYNC_SRC/deploy/demo.sh" --ci </dev/null >"$OUT" 2>&1
rc=$?
set -e
eq "demo exits 0" 0 "$rc"
check "it built orgsync and the simulator itself, in the scratch build directory" \
    test -x "$BUILD/orgsync" -a -x "$BUILD/orgsync-sim"
check "it built them without the tests (no cmocka needed)" grep -q '^BUILD_TESTING:BOOL=OFF$' "$BUILD/CMakeCache.txt"
check "the run succeeded" grep -q "^  run [0-9]*: succeeded" "$OUT"
check "members synced equal the simulator's" grep -Eq "^  members synced: ([0-9]+) \(the simulator has \1\)" "$OUT"

# The failover, from the summary:
#   leaders seen: host-b host-a (leader changes: 1; killed: host-b)
#   kill: host-b, 2.5 s into the run, with 150 of 480 departments done (the run still running)
#   takeover: host-a/w1 took the lock 2.5 s after the kill, ... did the remaining 330 departments ...
killed=$(sed -nE 's/^  leaders seen:.*; killed: (host-[a-z])\)$/\1/p' "$OUT")
changes=$(sed -nE 's/^  leaders seen:.*\(leader changes: ([0-9]+);.*/\1/p' "$OUT")
check "a leader's host was killed" test -n "$killed"
check "the leader changed at least once (got '${changes}')" test "${changes:-0}" -ge 1
read -r kdone ktotal < <(sed -nE 's/^  kill: .* with ([0-9]+) of ([0-9]+) departments done.*/\1 \2/p' "$OUT") || true
check "the kill landed with the run clearly unfinished: at most 60 % done (${kdone:-?} of ${ktotal:-?} departments)" \
    test -n "${kdone:-}" -a -n "${ktotal:-}" -a "$((10 * ${kdone:-1}))" -le "$((6 * ${ktotal:-0}))"
successor=$(sed -nE 's/^  takeover: (host-[a-z])[^ ]* .*/\1/p' "$OUT")
check "another host took over and finished the run (killed ${killed:-?}, finished by ${successor:-nobody})" \
    test -n "$successor" -a "$successor" != "${killed:-}"
check "the summary says after how long" grep -Eq "^  takeover: .* took the lock [0-9.]+ s after the kill" "$OUT"
remaining=$(sed -nE 's/^  takeover: .* did the remaining ([0-9]+) departments.*/\1/p' "$OUT")
check "the successor did departments of its own (${remaining:-none})" test "${remaining:-0}" -gt 0
check "it reports departments fetched twice" grep -Eq "^  departments fetched twice: [0-9]+" "$OUT"

check "it says it stops everything as it exits" grep -q "^The demo exits now and stops everything it started" "$OUT"
check "it does not offer links as live when it is exiting" bash -c "! grep -q 'Everything is still running' '$OUT'"
ports=$(sed -n 's/^ports: //p' "$OUT")
check "it reported the ports it used" test -n "$ports"
sleep 0.5
for p in $ports; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then not_ok "port $p still open after the demo"; else ok "port $p closed"; fi
done
dir=$(sed -n 's/^dir: //p' "$OUT")
check "it reported its scratch directory" test -n "$dir"
check "its scratch directory is gone" test ! -e "$dir"
[ "$T_FAILS" = 0 ] || cat "$OUT"
rm -rf "$BUILD"
finish
