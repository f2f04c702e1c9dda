#!/usr/bin/env bash
# Fair candidacy (DESIGN §3): three candidates, one of them 20 ms further from
# Redis (each way) through a delay proxy. Over 30 fires (one a second) each
# leads between 23% and 43% of them. The same with plain SET NX and no fairness
# (ORGSYNC_FAIRNESS=off) is the baseline: its shares are printed, not judged.
. "$(dirname "$0")/../lib/testlib.sh"
. "$(dirname "$0")/../integration/serve_helpers.sh"
serve_trap

FIRES=30
SDB=$(fresh_db)
SV_DBS+=("$SDB")
SIM_PORTS=(1 1 1) # no enterprise: a run asks the upstream nothing

python3 "$(dirname "$0")/delay_proxy.py" --target "127.0.0.1:$(redis_port "$SV_REDIS_URL")" \
    --delay-ms 20 >"$SV_DIR/proxy.out" 2>"$SV_DIR/proxy.err" &
SV_EXTRA_PIDS+=($!)
T=5 wait_for grep -q '^listening' "$SV_DIR/proxy.out" || { cat "$SV_DIR/proxy.err"; exit 1; }
FAR_URL="redis://127.0.0.1:$(sed -n 's/^listening //p' "$SV_DIR/proxy.out")/0"
# The proxy really adds the delay: a PING through it takes >= 40 ms.
t0=$(ms_now)
redis-cli -u "$FAR_URL" PING >/dev/null
check "the proxy delays ($(($(ms_now) - t0)) ms for a PING)" test $(($(ms_now) - t0)) -ge 40

# shares ENV: prints "a=N b=N c=N" for the first $FIRES fires after $FROM.
shares() {
    psql_q "SELECT string_agg(i || '=' || n, ' ' ORDER BY i) FROM (
              SELECT split_part(leader_instance, '/', 1) AS i, count(*) AS n FROM (
                SELECT leader_instance FROM sync_runs WHERE env = '$1' AND trigger = 'schedule'
                  AND scheduled_for > to_timestamp($FROM / 1000.0) ORDER BY scheduled_for LIMIT $FIRES) f
              GROUP BY 1) s"
}
fires_done() {
    [ "$(psql_q "SELECT count(*) FROM sync_runs WHERE env = '$1' AND trigger = 'schedule'
                 AND scheduled_for > to_timestamp($FROM / 1000.0) AND state <> 'running'")" -ge "$FIRES" ]
}

round() { # round ENV [extra env for every instance]
    local env=$1 n
    shift
    SV_ENV=$env
    serve_start a 0 ORGSYNC_WORKERS=1 ORGSYNC_CRON='* * * * * *' "$@"
    serve_start b 1 ORGSYNC_WORKERS=1 ORGSYNC_CRON='* * * * * *' "$@"
    SV_REDIS_URL=$FAR_URL serve_start c 2 ORGSYNC_WORKERS=1 ORGSYNC_CRON='* * * * * *' "$@"
    serve_wait_ready a b c
    sleep 1.5 # every candidate has heartbeated (fair) / is polling (plain)
    FROM=$(($(ms_now) + 1000))
    T=$((FIRES + 30)) wait_for fires_done "$env" || not_ok "$env: $FIRES fires did not run in time"
    for n in a b c; do serve_stop "$n"; done
}

round "fair$$"
fair=$(shares "fair$$")
echo "fair candidacy, $FIRES fires: $fair"
for n in a b c; do
    k=$(sed -n "s/.*\b$n=\([0-9]*\).*/\1/p" <<<"$fair")
    k=${k:-0}
    pct=$((k * 100 / FIRES))
    check "fair: $n led $k of $FIRES fires (${pct}%, want 23%..43%)" \
        bash -c '[ $(($1 * 100)) -ge $((23 * $2)) ] && [ $(($1 * 100)) -le $((43 * $2)) ]' _ "$k" "$FIRES"
done
eq "fair: one run per fire" "$FIRES" \
    "$(psql_q "SELECT count(DISTINCT scheduled_for) FROM (SELECT scheduled_for FROM sync_runs WHERE env = 'fair$$' AND trigger = 'schedule' AND scheduled_for > to_timestamp($FROM / 1000.0) ORDER BY scheduled_for LIMIT $FIRES) f")"

round "plain$$" ORGSYNC_FAIRNESS=off
plain=$(shares "plain$$")
echo "baseline (plain SET NX, no fairness), $FIRES fires: $plain"
check "baseline ran its fires" test -n "$plain"
check "no sanitizer report in the logs" serve_logs_clean
finish
