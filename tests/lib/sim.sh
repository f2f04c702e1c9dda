# shellcheck shell=bash
# The simulator's address, for scripts that start it with --port 0 (sourced by
# tests/lib/testlib.sh, the benchmarks and deploy/demo.sh).
#
#   orgsync-sim --port 0 ... >"$OUT" 2>"$ERR" &
#   sim_wait_port "$OUT" "$ERR" || exit 1       # sets SIM_PORT and SIM_URL

# Waits (up to 10 s) for the "listening PORT" line the simulator prints once it
# is bound; else shows its errors and returns 1.
sim_wait_port() {
    local out=$1 err=$2
    SIM_PORT=
    for _ in $(seq 1 200); do
        SIM_PORT=$(sed -n 's/^listening \([0-9]*\).*/\1/p' "$out" | head -1)
        [ -n "$SIM_PORT" ] && break
        sleep 0.05
    done
    [ -n "$SIM_PORT" ] || { cat "$err" >&2; echo "simulator did not start" >&2; return 1; }
    SIM_URL="http://127.0.0.1:$SIM_PORT"
}
