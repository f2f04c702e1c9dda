# Shared helpers for bash integration tests (sourced). They run under
# tests/run.sh, which exports ORGSYNC_TEST_* (servers), ORGSYNC_BIN and
# ORGSYNC_SIM_BIN.
set -euo pipefail

: "${ORGSYNC_TEST_PG_ADMIN_DSN:?run under tests/run.sh (ORGSYNC_TEST_PG_ADMIN_DSN missing)}"
: "${ORGSYNC_TEST_REDIS_URL:?run under tests/run.sh (ORGSYNC_TEST_REDIS_URL missing)}"
: "${ORGSYNC_BIN:?ORGSYNC_BIN missing}"

# shellcheck source=tests/lib/sim.sh
. "$(dirname "${BASH_SOURCE[0]}")/sim.sh"

T_FAILS=0
T_PASSES=0
T_NAME=$(basename "$0" .sh)

ok() { T_PASSES=$((T_PASSES + 1)); echo "ok   - $*"; }
not_ok() { T_FAILS=$((T_FAILS + 1)); echo "FAIL - $*"; }
check() { # check "description" command...
    local d=$1
    shift
    if "$@"; then ok "$d"; else not_ok "$d"; fi
}
eq() { # eq "description" expected actual
    if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1: expected '$2', got '$3'"; fi
}
finish() {
    echo "$T_PASSES passed, $T_FAILS failed"
    [ "$T_FAILS" = 0 ]
}

# A fresh migrated database of this test's own: prints its DSN.
fresh_db() {
    local name="t_${T_NAME}_$$_${1:-0}"
    psql -qAtX -v ON_ERROR_STOP=1 "$ORGSYNC_TEST_PG_ADMIN_DSN" \
        -c "DROP DATABASE IF EXISTS $name" -c "CREATE DATABASE $name TEMPLATE orgsync OWNER orgsync" >/dev/null
    echo "${ORGSYNC_TEST_PG_DSN/dbname=orgsync_test/dbname=$name}"
}

drop_db() {
    local dsn=$1 name
    name=$(sed -n 's/.*dbname=\([^ ]*\).*/\1/p' <<<"$dsn")
    psql -qAtX "$ORGSYNC_TEST_PG_ADMIN_DSN" -c "DROP DATABASE IF EXISTS $name WITH (FORCE)" >/dev/null 2>&1 || true
}

# Starts the simulator with the given flags; sets SIM_PID, SIM_PORT, SIM_URL.
start_sim() {
    local out="$ORGSYNC_TEST_TMP/sim.$$.$RANDOM"
    "$ORGSYNC_SIM_BIN" --port 0 --quiet "$@" >"$out" 2>"$out.err" &
    SIM_PID=$!
    sim_wait_port "$out" "$out.err"
}
