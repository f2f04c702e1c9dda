#!/usr/bin/env bash
# The one test command.
#
#   tests/run.sh [ctest arguments...]      e.g. tests/run.sh -R it.sync
#
# Installs what is missing (as root, with apt-get), builds with AddressSanitizer
# and UBSan, starts a throwaway PostgreSQL and Redis on free ports, migrates a
# template database, runs ctest, and stops everything it started, whether the
# tests pass, fail or are interrupted. Exits with ctest's status.
#
# BUILD_DIR (default build-test) picks the build directory; ORGSYNC_TEST_JOBS
# (default 2) how many tests run at once; ORGSYNC_NO_BUILD=1 reuses the build
# as it is; ORGSYNC_KEEP_TMP=1 keeps the servers' files of a failed run;
# ORGSYNC_NO_FUZZ=1 skips the fuzzers that a full run ends with. The closing
# line says how many tests passed and failed, and what became of fuzzing.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$SRC/build-test}
JOBS=${ORGSYNC_TEST_JOBS:-2}

# shellcheck source=tests/lib/deps.sh
. "$SRC/tests/lib/deps.sh"
deps_ensure test

if [ -n "${ORGSYNC_NO_BUILD:-}" ]; then
    echo "== build skipped (ORGSYNC_NO_BUILD); using $BUILD_DIR as it is"
else
echo "== build ($BUILD_DIR, ASan+UBSan)"
cmake -S "$SRC" -B "$BUILD_DIR" -DORGSYNC_SANITIZE=ON -DORGSYNC_WERROR=ON -DBUILD_TESTING=ON >/dev/null
if ! cmake --build "$BUILD_DIR" -j"$(nproc)" >"$BUILD_DIR/build.log" 2>&1; then
    grep -v '^\[ *[0-9]*%\]' "$BUILD_DIR/build.log" | tail -60 >&2
    echo "build failed (full log: $BUILD_DIR/build.log)" >&2
    exit 1
fi
fi

TMP=$(mktemp -d /tmp/orgsync-test.XXXXXX)
chmod 755 "$TMP"
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    "$SRC/tests/servers.sh" stop-redis "$TMP/redis" || true
    "$SRC/tests/servers.sh" stop-pg "$TMP/pg" || true
    # Whatever a test left behind (simulators, orgsync processes) goes too.
    pkill -9 -f "$BUILD_DIR/(orgsync|orgsync-sim)( |$)" 2>/dev/null || true
    if [ "$rc" = 0 ] || [ -z "${ORGSYNC_KEEP_TMP:-}" ]; then
        rm -rf "$TMP"
    else
        echo "kept $TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== servers"
eval "$("$SRC/tests/servers.sh" start-pg "$TMP/pg")"
eval "$("$SRC/tests/servers.sh" start-redis "$TMP/redis")"
psql -q -X -v ON_ERROR_STOP=1 "$PG_DSN" <<SQL
CREATE ROLE orgsync LOGIN;
CREATE DATABASE orgsync OWNER orgsync;
SQL
# 'orgsync' is a pristine migrated template that no test connects to, so
# that any test can CREATE DATABASE ... TEMPLATE orgsync for a copy of its
# own at any time; tests that need no isolation share orgsync_test.
ORGSYNC_PG_DSN="host=127.0.0.1 port=$PG_PORT user=orgsync dbname=orgsync" "$BUILD_DIR/orgsync" migrate >/dev/null
psql -q -X -v ON_ERROR_STOP=1 "$PG_DSN" -c "CREATE DATABASE orgsync_test TEMPLATE orgsync OWNER orgsync"
APP_DSN="host=127.0.0.1 port=$PG_PORT user=orgsync dbname=orgsync_test"
echo "postgresql on $PG_PORT, redis on $REDIS_PORT"

export ORGSYNC_TEST_PG_DSN="$APP_DSN"
export ORGSYNC_TEST_PG_ADMIN_DSN="$PG_DSN"
export ORGSYNC_TEST_PG_PORT="$PG_PORT"
export ORGSYNC_TEST_REDIS_URL="$REDIS_URL"
export ORGSYNC_TEST_TMP="$TMP"
export ORGSYNC_SRC="$SRC"
export ORGSYNC_BIN="$BUILD_DIR/orgsync"
export ORGSYNC_SIM_BIN="$BUILD_DIR/orgsync-sim"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

echo "== ctest"
set +e
ctest --test-dir "$BUILD_DIR" --output-on-failure -j"$JOBS" "$@" 2>&1 | tee "$TMP/ctest.log"
rc=${PIPESTATUS[0]}
set -e
summary=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$TMP/ctest.log" | tail -1)

# The fuzz targets (libFuzzer, built with clang) run 60 s each on a full run;
# a filtered run (ctest arguments given) or ORGSYNC_NO_FUZZ=1 skips them. A
# skip is never silent: the closing line says so.
fuzz_rc=0
if [ $# -gt 0 ]; then
    fuzz_note="fuzzing skipped (a filtered run)"
elif [ -n "${ORGSYNC_NO_FUZZ:-}" ]; then
    fuzz_note="fuzzing skipped (ORGSYNC_NO_FUZZ)"
else
    echo "== fuzz"
    FUZZ_SKIP_RC=77 "$SRC/tests/fuzz/run.sh" || fuzz_rc=$?
    case $fuzz_rc in
    0) fuzz_note="fuzzing: no crash" ;;
    77) fuzz_note="fuzzing SKIPPED (no clang or libFuzzer, see the fuzz: line above)" fuzz_rc=0 ;;
    *) fuzz_note="fuzzing FAILED (exit $fuzz_rc)" ;;
    esac
fi

if [ -n "$summary" ]; then
    total=$(sed -E 's/.* out of ([0-9]+).*/\1/' <<<"$summary")
    failed=$(sed -E 's/.*, ([0-9]+) tests? failed.*/\1/' <<<"$summary")
    echo "$((total - failed)) passed, $failed failed; $fuzz_note"
else
    echo "ctest gave no summary (exit $rc); $fuzz_note"
fi
[ "$rc" = 0 ] || exit "$rc"
exit "$fuzz_rc"
