#!/usr/bin/env bash
# Throwaway PostgreSQL and Redis servers for tests, benchmarks and the demo.
#
#   eval "$(tests/servers.sh start-pg DIR)"     -> PG_PORT, PG_DSN (superuser), PG_DIR
#   tests/servers.sh restart-pg DIR | stop-pg DIR
#   eval "$(tests/servers.sh start-redis DIR)"  -> REDIS_PORT, REDIS_URL
#   tests/servers.sh restart-redis DIR | stop-redis DIR
#
# PostgreSQL refuses to run as root, so as root the server runs as the
# unprivileged 'postgres' account (created by Debian's postgresql-common).
# Servers listen on 127.0.0.1 only, on a free port, with durability off:
# they hold test data that lives as long as one test run.
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

# Ports are picked below the kernel's ephemeral range (32768 and up), so an
# outgoing connection cannot take one between this check and the server's bind;
# a start that still loses a race is retried on another port.
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((15000 + RANDOM % 17000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    echo "servers.sh: no free port found" >&2
    return 1
}

as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

pg_running() { as_pg "$PGBIN/pg_ctl" -D "$1/pgdata" status >/dev/null 2>&1; }

start_pg() {
    local dir=$1 port
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$dir"
        if ! runuser -u postgres -- test -x "$dir"; then
            echo "servers.sh: user postgres cannot reach $dir (a parent directory is private; chmod 755 it)" >&2
            return 1
        fi
    fi
    if [ ! -d "$dir/pgdata" ]; then
        as_pg "$PGBIN/initdb" -D "$dir/pgdata" -U postgres --auth=trust -E UTF8 --no-locale \
            >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; return 1; }
    fi
    local try
    for try in 1 2 3 4 5; do
        port=$(free_port)
        if as_pg "$PGBIN/pg_ctl" -D "$dir/pgdata" -l "$dir/pg.log" -w -t 30 \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
            start >/dev/null; then
            break
        fi
        [ "$try" = 5 ] && { tail -20 "$dir/pg.log" >&2; return 1; }
    done
    echo "$port" >"$dir/pg.port"
    echo "PG_DIR=$dir"
    echo "PG_PORT=$port"
    echo "PG_DSN='host=127.0.0.1 port=$port user=postgres dbname=postgres'"
}

restart_pg() {
    local dir=$1
    # restart reuses the options of the last start (postmaster.opts), so the port stays.
    as_pg "$PGBIN/pg_ctl" -D "$dir/pgdata" -l "$dir/pg.log" -w -t 30 -m fast restart >/dev/null
}

stop_pg() {
    local dir=$1
    if [ -d "$dir/pgdata" ] && pg_running "$dir"; then
        as_pg "$PGBIN/pg_ctl" -D "$dir/pgdata" -w -t 30 -m immediate stop >/dev/null || true
    fi
}

start_redis_on() {
    local dir=$1 port=$2
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize yes --pidfile "$dir/redis.pid" --dir "$dir" --logfile "$dir/redis.log" >/dev/null
    for _ in $(seq 1 100); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "servers.sh: redis did not start on $port" >&2
    tail -20 "$dir/redis.log" >&2 || true
    return 1
}

start_redis() {
    local dir=$1 port
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    local try
    for try in 1 2 3 4 5; do
        port=$(free_port)
        start_redis_on "$dir" "$port" && break
        [ "$try" = 5 ] && return 1
    done
    echo "$port" >"$dir/redis.port"
    echo "REDIS_PORT=$port"
    echo "REDIS_URL=redis://127.0.0.1:$port/0"
}

stop_redis() {
    local dir=$1 port
    [ -f "$dir/redis.port" ] || return 0
    port=$(cat "$dir/redis.port")
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    for _ in $(seq 1 100); do
        redis-cli -p "$port" ping >/dev/null 2>&1 || return 0
        sleep 0.05
    done
    [ -f "$dir/redis.pid" ] && kill -9 "$(cat "$dir/redis.pid")" 2>/dev/null || true
}

restart_redis() {
    local dir=$1
    stop_redis "$dir"
    start_redis_on "$dir" "$(cat "$dir/redis.port")"
}

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start-pg|restart-pg|stop-pg|start-redis|restart-redis|stop-redis DIR" >&2; exit 2; }
case $cmd in
start-pg) start_pg "$dir" ;;
restart-pg) restart_pg "$dir" ;;
stop-pg) stop_pg "$dir" ;;
start-redis) start_redis "$dir" ;;
restart-redis) restart_redis "$dir" ;;
stop-redis) stop_redis "$dir" ;;
*) echo "servers.sh: unknown command $cmd" >&2; exit 2 ;;
esac
