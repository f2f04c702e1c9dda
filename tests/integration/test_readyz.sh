#!/usr/bin/env bash
# GET /readyz on real `orgsync serve` processes (issue 18, item 7): ready on
# PostgreSQL alone (Redis down is reported, not fatal), 503 when PostgreSQL is
# down, and 503 while a worker drains after SIGTERM (ORGSYNC_DRAIN_MS) while the
# rest of the API still answers, until the port closes.
. "$(dirname "$0")/../lib/testlib.sh"
. "$(dirname "$0")/serve_helpers.sh"
serve_trap

SV_ENV="readyz$$"
SDB=$(fresh_db)
SV_DBS+=("$SDB")
# Nothing here calls the upstream (the schedule is off): a port with no listener.
SIM_PORTS=("$(free_port)")
DEAD=$(free_port)

code() { curl -sS -o /dev/null -w '%{http_code}' "$1" 2>/dev/null || true; }
body() { curl -sS "$1" 2>/dev/null || true; }

# Redis down (nothing listens on its port): ready, Redis reported down.
serve_start nr 0 ORGSYNC_SCHEDULE=off ORGSYNC_WORKERS=1 ORGSYNC_REDIS_URL="redis://127.0.0.1:$DEAD/0"
# PostgreSQL down: not ready.
serve_start np 0 ORGSYNC_SCHEDULE=off ORGSYNC_WORKERS=1 ORGSYNC_READ_ONLY=off \
    ORGSYNC_PG_DSN="host=127.0.0.1 port=$DEAD dbname=x user=x connect_timeout=1"
# Healthy, with a drain window.
serve_start dr 0 ORGSYNC_SCHEDULE=off ORGSYNC_WORKERS=2 ORGSYNC_DRAIN_MS=3000
serve_wait_ready nr np dr
NR="http://127.0.0.1:${SV_HTTP[nr]}"
NP="http://127.0.0.1:${SV_HTTP[np]}"
DR="http://127.0.0.1:${SV_HTTP[dr]}"

pg_ok() { [ "$(body "$1/readyz" | jq -r .postgres)" = ok ]; }
redis_ok() { [ "$(body "$1/readyz" | jq -r .redis)" = ok ]; }

T=15 check "redis down: PostgreSQL connects" wait_for pg_ok "$NR"
eq "redis down: /readyz is 200" 200 "$(code "$NR/readyz")"
r=$(body "$NR/readyz")
eq "redis down: status ready" ready "$(jq -r .status <<<"$r")"
eq "redis down: postgres ok" ok "$(jq -r .postgres <<<"$r")"
check "redis down: redis reported down ($(jq -r .redis <<<"$r"))" test "$(jq -r .redis <<<"$r")" != ok
eq "redis down: degraded" true "$(jq -r .degraded <<<"$r")"
eq "redis down: not draining" false "$(jq -r .draining <<<"$r")"
eq "redis down: /v1/leader is 503" 503 "$(code "$NR/v1/leader")"
check "redis down: reads from PostgreSQL still answer" test "$(code "$NR/v1/runs/latest")" = 404

T=15 check "postgres down: Redis connects" wait_for redis_ok "$NP"
eq "postgres down: /readyz is 503" 503 "$(code "$NP/readyz")"
r=$(body "$NP/readyz")
eq "postgres down: error code" dependency_down "$(jq -r .error.code <<<"$r")"
check "postgres down: the message names postgres" grep -q '^postgres: ' <<<"$(jq -r .error.message <<<"$r")"
check "postgres down: postgres reported down" test "$(jq -r .postgres <<<"$r")" != ok
eq "postgres down: redis ok" ok "$(jq -r .redis <<<"$r")"
eq "postgres down: /healthz still 200" 200 "$(code "$NP/healthz")"

# Draining: SIGTERM, then /readyz answers 503 from every worker while the API
# still serves, until the window ends and the port closes.
dr_ready() { [ "$(code "$DR/readyz")" = 200 ]; }
T=15 check "healthy: ready" wait_for dr_ready
eq "healthy: not draining" false "$(body "$DR/readyz" | jq -r .draining)"
t0=$(ms_now)
kill -TERM "${SV_PID[dr]}"
dr_draining() { [ "$(code "$DR/readyz")" = 503 ]; }
T=2 check "draining: /readyz turns 503" wait_for dr_draining
t1=$(ms_now)
codes=$(for _ in $(seq 1 10); do code "$DR/readyz"; echo; done | sort -u | tr '\n' ' ')
eq "draining: every answer from both workers is 503" "503 " "$codes"
r=$(body "$DR/readyz")
eq "draining: status" draining "$(jq -r .status <<<"$r")"
eq "draining: error code" draining "$(jq -r .error.code <<<"$r")"
eq "draining: /healthz still 200" 200 "$(code "$DR/healthz")"
eq "draining: reads still answered" 404 "$(code "$DR/v1/runs/latest")"
check "draining: the 503 came within 1 s of SIGTERM ($((t1 - t0)) ms)" test $((t1 - t0)) -lt 1000
rc=0
wait "${SV_PID[dr]}" || rc=$?
t2=$(ms_now)
unset "SV_PID[dr]"
eq "draining: serve exits 0" 0 "$rc"
check "draining: the API served for the window ($((t2 - t0)) ms >= 2900)" test $((t2 - t0)) -ge 2900
eq "drained: the port is closed" 000 "$(code "$DR/healthz")"
check "drained: the log says so" grep -q "draining" "$SV_DIR/dr.log"
check "no sanitizer report in any log" serve_logs_clean
finish
