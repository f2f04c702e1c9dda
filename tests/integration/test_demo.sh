#!/usr/bin/env bash
# deploy/demo.sh --ci: the whole system end to end (simulator, PostgreSQL, Redis,
# three orgsync hosts, a run, the leader killed halfway, failover and resume),
# then nothing left behind.
. "$(dirname "$0")/../lib/testlib.sh"

OUT="$ORGSYNC_TEST_TMP/demo.$$.out"
set +e
ORGSYNC_DEMO_NO_BUILD=1 ORGSYNC_DEMO_BUILD_DIR=$(dirname "$ORGSYNC_BIN") \
    timeout 240 "$ORGSYNC_SRC/deploy/demo.sh" --ci >"$OUT" 2>&1
rc=$?
set -e
eq "demo exits 0" 0 "$rc"
check "the run succeeded" grep -q "^  run [0-9]*: succeeded" "$OUT"
check "members synced equal the simulator's" grep -Eq "^  members synced: ([0-9]+) \(the simulator has \1\)" "$OUT"
check "the leader was killed and another took over" grep -Eq "leader changes: [1-9][0-9]*; killed: host-" "$OUT"
check "it says where to look next" grep -q "progress page:  http://127.0.0.1:" "$OUT"
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
finish
