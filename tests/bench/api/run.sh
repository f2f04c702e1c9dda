#!/usr/bin/env bash
# Benchmark of the progress polling endpoint (issue 6, item 7):
#   wrk, 64 connections, 10 s, GET /v1/runs/latest for a run of 200 enterprises,
#   against one `orgsync serve` host with 2 workers; then the same JSON served as
#   a static file by nginx (2 workers) in the same run, as the ceiling.
#
#   tests/bench/api/run.sh
#   CORPS=200 CONNS=64 DURATION=10s THREADS=2 tests/bench/api/run.sh
#
# Builds a Release binary (no sanitizers) in BUILD_DIR (default build-bench-api),
# starts a private PostgreSQL and Redis (tests/servers.sh), writes a running run
# with CORPS progress rows directly in PostgreSQL (no sync is needed to measure
# reads), starts `orgsync serve` and nginx, and prints requests/s and p50/p99
# latency for both with the ratio, plus how many queries PostgreSQL ran for the
# orgsync run (the per-worker cache at work). Client, servers and PostgreSQL share
# the machine. Figures are printed, not judged.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/../../.." && pwd)
BUILD_DIR=${BUILD_DIR:-$SRC/build-bench-api}
CORPS=${CORPS:-200}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
DURATION=${DURATION:-10s}
WORKERS=${WORKERS:-2}

for tool in wrk nginx psql curl; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is required (tests/lib/deps.sh bench)" >&2; exit 2; }
done

echo "== build ($BUILD_DIR, Release)"
cmake -S "$SRC" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DORGSYNC_SANITIZE=OFF >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)" --target orgsync >"$BUILD_DIR/bench-build.log" 2>&1 ||
    { tail -30 "$BUILD_DIR/bench-build.log" >&2; exit 1; }

TMP=$(mktemp -d /tmp/orgsync-bench-api.XXXXXX)
chmod 755 "$TMP"
SERVE_PID=
NGINX_PID=
cleanup() {
    if [ -n "$SERVE_PID" ]; then
        kill -TERM "$SERVE_PID" 2>/dev/null || true
        wait "$SERVE_PID" 2>/dev/null || true
    fi
    if [ -n "$NGINX_PID" ]; then
        kill -QUIT "$NGINX_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$NGINX_PID" 2>/dev/null || break; sleep 0.1; done
    fi
    "$SRC/tests/servers.sh" stop-redis "$TMP/redis" || true
    "$SRC/tests/servers.sh" stop-pg "$TMP/pg" || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

echo "== servers"
eval "$("$SRC/tests/servers.sh" start-pg "$TMP/pg")"
eval "$("$SRC/tests/servers.sh" start-redis "$TMP/redis")"
psql -q -X -v ON_ERROR_STOP=1 "$PG_DSN" -c "CREATE ROLE orgsync LOGIN" -c "CREATE DATABASE orgsync OWNER orgsync"
APP_DSN="host=127.0.0.1 port=$PG_PORT user=orgsync dbname=orgsync"
export ORGSYNC_PG_DSN="$APP_DSN"
export ORGSYNC_REDIS_URL="$REDIS_URL"
export ORGSYNC_ENV=bench
export ORGSYNC_LOG_LEVEL=${ORGSYNC_LOG_LEVEL:-warn}
export ORGSYNC_SCHEDULE=off
"$BUILD_DIR/orgsync" migrate >/dev/null

echo "== a running run of $CORPS enterprises"
psql -q -X -v ON_ERROR_STOP=1 "$APP_DSN" <<SQL
INSERT INTO enterprises (corp_id, name, corp_secret)
  SELECT format('wwsim%s', lpad(i::text, 4, '0')), format('Enterprise %s', i), 'unused'
  FROM generate_series(1, $CORPS) i;
INSERT INTO sync_runs (env, job, trigger, scheduled_for, state, leader_instance, fencing_token,
                       attempt, started_at, heartbeat_at)
  VALUES ('bench', 'directory-sync', 'schedule', now() - interval '5 min', 'running', 'bench:1',
          1, 1, now() - interval '5 min', now());
INSERT INTO sync_progress (run_id, corp_id, state, departments_total, departments_done,
                           users_upserted, requests, retries, errors, started_at, updated_at,
                           finished_at)
  SELECT currval('sync_runs_run_id_seq'), format('wwsim%s', lpad(i::text, 4, '0')),
         CASE WHEN i % 3 = 0 THEN 'succeeded' WHEN i % 3 = 1 THEN 'running' ELSE 'pending' END,
         50, CASE WHEN i % 3 = 0 THEN 50 WHEN i % 3 = 1 THEN i % 50 ELSE 0 END,
         40 * (i % 50), i % 50 + 2, i % 4, 0,
         CASE WHEN i % 3 = 2 THEN NULL ELSE now() - interval '5 min' END, now(),
         CASE WHEN i % 3 = 0 THEN now() - interval '1 min' END
  FROM generate_series(1, $CORPS) i;
SQL

PORT=$(free_port)
NGINX_PORT=$(free_port)
echo "== orgsync serve ($WORKERS workers) on $PORT"
ORGSYNC_WORKERS=$WORKERS ORGSYNC_HTTP_ADDR="127.0.0.1:$PORT" ORGSYNC_INSTANCE=bench-host \
    "$BUILD_DIR/orgsync" serve >"$TMP/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$PORT/v1/runs/latest" >"$TMP/latest.json" ||
    { echo "bench: orgsync serve does not answer" >&2; tail -20 "$TMP/serve.log" >&2; exit 1; }
echo "   /v1/runs/latest: $(wc -c <"$TMP/latest.json") bytes, $(grep -o '"corp_id"' "$TMP/latest.json" | wc -l) enterprises"

echo "== nginx ($WORKERS workers) on $NGINX_PORT serving the same JSON"
mkdir -p "$TMP/nginx/www/v1/runs" "$TMP/nginx/logs"
cp "$TMP/latest.json" "$TMP/nginx/www/v1/runs/latest"
cat >"$TMP/nginx/nginx.conf" <<NGINX
worker_processes $WORKERS;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    default_type application/json;
    keepalive_requests 1000000;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=16 inactive=60s;
    client_body_temp_path $TMP/nginx/tmp_body;
    proxy_temp_path $TMP/nginx/tmp_proxy;
    fastcgi_temp_path $TMP/nginx/tmp_fastcgi;
    uwsgi_temp_path $TMP/nginx/tmp_uwsgi;
    scgi_temp_path $TMP/nginx/tmp_scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT reuseport;
        root $TMP/nginx/www;
    }
}
NGINX
nginx -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx" >"$TMP/nginx/logs/stdout" 2>&1 &
NGINX_PID=$!
for _ in $(seq 1 50); do
    curl -sf "http://127.0.0.1:$NGINX_PORT/v1/runs/latest" >/dev/null 2>&1 && break
    sleep 0.1
done
cmp -s "$TMP/latest.json" <(curl -sf "http://127.0.0.1:$NGINX_PORT/v1/runs/latest") ||
    { echo "bench: nginx does not serve the file" >&2; cat "$TMP/nginx/logs/"* >&2; exit 1; }

queries() {
    psql -At -X "$APP_DSN" -c "SELECT xact_commit FROM pg_stat_database WHERE datname = 'orgsync'"
}

# wrk --latency prints "50%  1.23ms" lines; normalise to milliseconds.
to_ms() {
    awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.2f", v}'
}

bench() { # name url
    local out="$TMP/wrk-$1.txt"
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$2" >"$out" 2>&1
    local rps p50 p99 errs
    rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$out")
    p50=$(awk '$1 == "50%" {print $2}' "$out" | to_ms)
    p99=$(awk '$1 == "99%" {print $2}' "$out" | to_ms)
    errs=$(awk '/Non-2xx or 3xx responses:/ {print $NF} /Socket errors:/ {print "socket errors: " $0}' "$out")
    printf '%-28s %10s req/s   p50 %7s ms   p99 %7s ms   %s\n' "$1" "$rps" "$p50" "$p99" "${errs:-all 2xx}"
    eval "RPS_$3=$rps"
}

echo "== wrk -t$THREADS -c$CONNS -d$DURATION --latency"
q0=$(queries)
bench "orgsync serve ($WORKERS workers)" "http://127.0.0.1:$PORT/v1/runs/latest" ORG
q1=$(queries)
bench "nginx static ($WORKERS workers)" "http://127.0.0.1:$NGINX_PORT/v1/runs/latest" NGX
echo "orgsync / nginx: $(awk -v a="$RPS_ORG" -v b="$RPS_NGX" 'BEGIN {printf "%.2f", a / b}')"
echo "PostgreSQL transactions in database orgsync during the orgsync run: $((q1 - q0))"
echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
