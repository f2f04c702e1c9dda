#!/usr/bin/env bash
# Redis ACL users (issue 18, item 6): redis://user:password@host:port/db logs in
# with AUTH user password. A redis-server of our own has a user `orgsync` allowed
# only the commands and keys orgsync needs, and a default user with ANOTHER
# password, so a client that dropped the user name (AUTH password, i.e. the
# default user) is refused. `orgsync serve` connects as that user and a run
# succeeds with no command denied (ACL LOG stays empty); with a wrong password it
# logs a clear AUTH error naming the user and never becomes ready to lead.
. "$(dirname "$0")/../lib/testlib.sh"
. "$(dirname "$0")/serve_helpers.sh"
: "${ORGSYNC_SIM_BIN:?ORGSYNC_SIM_BIN missing}"
serve_trap

RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$SV_DIR" \
    >"$SV_DIR/redis-acl.log" 2>&1 &
SV_EXTRA_PIDS+=($!)
T=10 wait_for redis-cli -p "$RPORT" ping || { not_ok "redis-server did not start"; exit 1; }
r() { redis-cli -p "$RPORT" --user admin --pass adminpw --no-auth-warning --raw "$@"; }
# The commands orgsync sends (directly and inside its Lua scripts), on its keys only.
redis-cli -p "$RPORT" ACL SETUSER admin on '>adminpw' '~*' '&*' '+@all' >/dev/null
r ACL SETUSER orgsync on '>acl-pw-1' '~orgsync:*' resetchannels -@all \
    +select +ping +get +set +del +exists +expire +pexpire +pttl +incr \
    +hget +hset +hdel +hgetall +hincrby +zadd +zcard +zrange +zremrangebyscore \
    +eval +evalsha +time >/dev/null
r ACL SETUSER default on '>some-other-password' >/dev/null
eq "the ACL user exists" orgsync "$(r ACL USERS | grep -x orgsync)"

SV_ENV="acl$$"
SDB=$(fresh_db)
SV_DBS+=("$SDB")
serve_sim 2 --enterprises 1 --departments 4 --users-per-dept 2 --seed 5
serve_corps "$SDB" 1

SV_REDIS_URL="redis://orgsync:acl-pw-1@127.0.0.1:$RPORT/0"
serve_start a 0
serve_wait_ready a
T=15 wait_for grep -q '"redis connected"' "$SV_DIR/a.log" || not_ok "a never connected to Redis"
rid=$(serve_request_run a)
check "a run was requested ($rid)" test "${rid:-0}" -gt 0
T=30 wait_for run_is "$rid" succeeded || not_ok "run $rid did not succeed (state $(run_state "$rid"))"
check "the data matches the upstream" serve_data_equals_sim "$SDB"
clients=$(r CLIENT LIST | grep -c ' user=orgsync ' || true)
check "orgsync's connections are logged in as user orgsync ($clients)" test "$clients" -ge 1
eq "no connection of orgsync is the default user" 0 "$(r CLIENT LIST | grep -v ' user=admin ' | grep -c ' user=default ' || true)"
eq "no command or key was denied (ACL LOG)" "" "$(r ACL LOG)"
eq "the fence counter is in the user's keys" 1 "$(r EXISTS "orgsync:$SV_ENV:fence:$SV_JOB")"
serve_stop a
eq "a stopped cleanly" 0 "$SV_RC"

# A wrong password: a clear error naming the user, and no lead.
SV_REDIS_URL="redis://orgsync:wrong-pw@127.0.0.1:$RPORT/0"
serve_start b 1
T=15 wait_for grep -q '"redis AUTH failed"' "$SV_DIR/b.log" || not_ok "no AUTH error logged"
line=$(grep -m1 '"redis AUTH failed"' "$SV_DIR/b.log")
check "the error names the user: $line" grep -q '"user":"orgsync"' <<<"$line"
check "the error says why (WRONGPASS)" grep -q 'WRONGPASS' <<<"$line"
check "the password is not logged" bash -c '! grep -q wrong-pw "$1"/b.log' _ "$SV_DIR"
eq "b is never connected as orgsync" 0 "$(r CLIENT LIST | grep -c ' user=orgsync ' || true)"
check "no sanitizer report" serve_logs_clean
finish
