#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) in their own build
# directory, replays every saved regression input, then fuzzes each target for
# FUZZ_SECONDS (default 60) starting from the seed corpus. Exits non-zero if any
# target crashes, leaks or hangs; the crashing input is copied into
# tests/fuzz/regressions/<target>/ so it becomes a regression test (commit it
# with the fix).
#
#   tests/fuzz/run.sh                      # every target, 60 s each
#   FUZZ_SECONDS=10 tests/fuzz/run.sh json # one target
#
# FUZZ_BUILD_DIR (default <repo>/build-fuzz) picks the build directory. Without
# clang, or when clang cannot link libFuzzer (Debian: libclang-rt-14-dev), it
# says so and exits FUZZ_SKIP_RC (default 0; tests/run.sh sets 77 so that its
# closing line can report the skip).
set -euo pipefail

SRC=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${FUZZ_BUILD_DIR:-$SRC/build-fuzz}
SECONDS_EACH=${FUZZ_SECONDS:-60}
TARGETS=${*:-router json request answer}

WORK=$(mktemp -d /tmp/orgsync-fuzz.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

skip() {
    echo "fuzz: $*; skipping the fuzz targets"
    exit "${FUZZ_SKIP_RC:-0}"
}
command -v clang >/dev/null 2>&1 || skip "clang not found (Debian: clang)"
printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' \
    >"$WORK/probe.c"
clang -fsanitize=fuzzer,address,undefined "$WORK/probe.c" -o "$WORK/probe" >"$WORK/probe.log" 2>&1 ||
    skip "clang cannot link libFuzzer with ASan and UBSan (Debian: libclang-rt-14-dev)"

echo "== fuzz build ($BUILD, clang, libFuzzer + ASan + UBSan)"
CC=clang cmake -S "$SRC" -B "$BUILD" -DORGSYNC_FUZZ=ON -DORGSYNC_SANITIZE=ON \
    -DORGSYNC_WERROR=ON -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Debug >/dev/null
targets=""
for t in $TARGETS; do targets="$targets fuzz_$t"; done
# shellcheck disable=SC2086
if ! cmake --build "$BUILD" -j"$(nproc)" --target $targets >"$BUILD/fuzz-build.log" 2>&1; then
    tail -40 "$BUILD/fuzz-build.log" >&2
    echo "fuzz: build failed (log: $BUILD/fuzz-build.log)" >&2
    exit 1
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=0
for t in $TARGETS; do
    bin="$BUILD/tests/fuzz/fuzz_$t"
    dict=()
    [ -f "$SRC/tests/fuzz/$t.dict" ] && dict=(-dict="$SRC/tests/fuzz/$t.dict")
    reg="$SRC/tests/fuzz/regressions/$t"
    mapfile -t regs < <(find "$reg" -maxdepth 1 -type f ! -name '.*' 2>/dev/null | sort)
    if [ "${#regs[@]}" -gt 0 ]; then
        echo "== fuzz_$t: replaying ${#regs[@]} regression input(s)"
        if ! "$bin" "${regs[@]}" >"$WORK/$t.replay.log" 2>&1; then
            tail -40 "$WORK/$t.replay.log"
            echo "fuzz_$t: a regression input fails again" >&2
            failed=1
            continue
        fi
    fi
    echo "== fuzz_$t: ${SECONDS_EACH} s"
    mkdir -p "$WORK/$t/corpus" "$WORK/$t/artifacts"
    cp "$SRC/tests/fuzz/corpus/$t"/* "$WORK/$t/corpus/" 2>/dev/null || true
    set +e
    "$bin" "$WORK/$t/corpus" "${dict[@]}" -max_total_time="$SECONDS_EACH" -max_len=8192 \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$WORK/$t/artifacts/" >"$WORK/$t.log" 2>&1
    rc=$?
    set -e
    grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)" "$WORK/$t.log" || true
    if [ "$rc" != 0 ] || [ -n "$(ls -A "$WORK/$t/artifacts")" ]; then
        grep -v '^#' "$WORK/$t.log" | tail -40
        mkdir -p "$reg"
        for a in "$WORK/$t/artifacts"/*; do
            [ -e "$a" ] || continue
            cp "$a" "$reg/"
            echo "fuzz_$t: saved $(basename "$a") to tests/fuzz/regressions/$t/" >&2
        done
        echo "fuzz_$t: FAILED (exit $rc)" >&2
        failed=1
    else
        echo "fuzz_$t: no crash"
    fi
done
exit $failed
