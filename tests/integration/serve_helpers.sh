# Helpers for the multi-process `orgsync serve` tests (sourced after
# tests/lib/testlib.sh). Every process started here is stopped by serve_cleanup,
# which the sourcing test installs as its EXIT trap (serve_trap).
#
#   serve_trap                       # trap: stop everything, drop the databases
#   SDB=$(fresh_db); serve_sim 3 --enterprises 2 --departments 5 --users-per-dept 3
#   serve_corps "$SDB" 2             # enterprises wwsim0001.. with the sim's secrets
#   serve_start a 0 ORGSYNC_CRON='*/3 * * * * *'   # name, sim port index, extra env
#   serve_leader                     # "a/w1" or ""
#   serve_data_equals_sim "$SDB"     # 0 when PostgreSQL holds what /sim/org says

SV_DIR="$ORGSYNC_TEST_TMP/serve.$$"
mkdir -p "$SV_DIR"
declare -A SV_PID SV_HTTP
SV_DBS=()
SV_EXTRA_PIDS=()
SV_ENV=${SV_ENV:-prod}
SV_JOB=directory-sync
SV_ADMIN=test-admin-token-0123456789abcdef

serve_cleanup() {
    local rc=$? n p
    trap - EXIT
    for n in "${!SV_PID[@]}"; do
        p=${SV_PID[$n]}
        kill -CONT -- "-$p" 2>/dev/null || true
        kill -TERM -- "-$p" 2>/dev/null || true
    done
    for _ in $(seq 1 50); do
        local alive=0
        for n in "${!SV_PID[@]}"; do
            kill -0 -- "-${SV_PID[$n]}" 2>/dev/null && alive=1
        done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for n in "${!SV_PID[@]}"; do kill -KILL -- "-${SV_PID[$n]}" 2>/dev/null || true; done
    for p in "${SV_EXTRA_PIDS[@]}" ${SIM_PID:-}; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${SV_EXTRA_PIDS[@]}" ${SIM_PID:-}; do wait "$p" 2>/dev/null || true; done
    if [ -n "${SV_CLEANUP_HOOK:-}" ]; then $SV_CLEANUP_HOOK || true; fi
    for n in "${SV_DBS[@]}"; do drop_db "$n"; done
    if [ "$rc" != 0 ] || [ "$T_FAILS" != 0 ]; then
        for n in "$SV_DIR"/*.log; do
            [ -f "$n" ] || continue
            echo "---- last lines of $n"
            tail -25 "$n"
        done
    fi
    if [ -n "${SV_KEEP:-}" ]; then echo "kept $SV_DIR"; else rm -rf "$SV_DIR"; fi
    exit "$rc"
}
serve_trap() { trap serve_cleanup EXIT; }

redis_port() { sed -n 's#^redis://[^:]*:\([0-9]*\).*#\1#p' <<<"$1"; }
SV_REDIS_URL=${SV_REDIS_URL:-$ORGSYNC_TEST_REDIS_URL}
rcli() { redis-cli -p "$(redis_port "$SV_REDIS_URL")" --raw "$@" 2>/dev/null; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until "$@" succeeds, polling every 0.1 s, for at most $T seconds (default 10).
wait_for() {
    local t=${T:-10} end
    end=$(($(date +%s%N) + t * 1000000000))
    while ! "$@" >/dev/null 2>&1; do
        [ "$(date +%s%N)" -gt "$end" ] && return 1
        sleep 0.1
    done
}

ms_now() { echo $(($(date +%s%N) / 1000000)); }

# serve_sim NPORTS SIM_FLAGS...: one simulator with NPORTS listeners (one per
# instance, so its per-port counters tell who called). Sets SIM_PID, SIM_PORTS[].
serve_sim() {
    local nports=$1 args=() out="$SV_DIR/sim.out"
    shift
    for _ in $(seq 1 "$nports"); do args+=(--port 0); done
    "$ORGSYNC_SIM_BIN" "${args[@]}" --quiet "$@" >"$out" 2>"$SV_DIR/sim.err" &
    SIM_PID=$!
    T=5 wait_for grep -q '^listening' "$out" || { cat "$SV_DIR/sim.err" >&2; return 1; }
    read -r -a SIM_PORTS <<<"$(sed -n 's/^listening //p' "$out" | head -1)"
    SIM_URL="http://127.0.0.1:${SIM_PORTS[0]}"
}

# serve_corps DSN N: enterprises wwsim0001..N with the simulator's secrets.
serve_corps() {
    local dsn=$1 n=$2 i
    for i in $(seq 1 "$n"); do
        psql -qAtX "$dsn" -c "INSERT INTO enterprises (corp_id, name, corp_secret)
            VALUES ('wwsim$(printf %04d "$i")', 'c$i', 'secret-wwsim$(printf %04d "$i")')" >/dev/null
    done
}

# serve_start NAME SIMPORT_INDEX [VAR=VALUE...]: an `orgsync serve` in its own
# process group, logging to $SV_DIR/NAME.log. Defaults suit a fast test; the
# extra assignments override them. Its HTTP port is SV_HTTP[NAME].
serve_start() {
    local name=$1 idx=$2 port
    shift 2
    port=$(free_port)
    SV_HTTP[$name]=$port
    env ORGSYNC_ENV="$SV_ENV" ORGSYNC_SCHEDULE=on ORGSYNC_WORKERS=2 ORGSYNC_SCHEDULER_WORKERS=1 \
        ORGSYNC_INSTANCE="$name" ORGSYNC_PG_DSN="$SDB application_name=$name" \
        ORGSYNC_REDIS_URL="$SV_REDIS_URL" ORGSYNC_CRON="0 0 0 1 1 *" ORGSYNC_TZ=UTC \
        ORGSYNC_LOCK_TTL_MS=2000 ORGSYNC_UPSTREAM_URL="http://127.0.0.1:${SIM_PORTS[$idx]}" \
        ORGSYNC_HTTP_ADDR="127.0.0.1:$port" ORGSYNC_ADMIN_TOKEN="$SV_ADMIN" \
        ORGSYNC_LOG_LEVEL=info "$@" \
        setsid "$ORGSYNC_BIN" serve >>"$SV_DIR/$name.log" 2>&1 &
    SV_PID[$name]=$!
}

serve_ready() { curl -fsS "http://127.0.0.1:${SV_HTTP[$1]}/healthz" >/dev/null; }
# The names of the workers of NAME that serve (with ORGSYNC_WORKERS=2: a/w1, a/w2).
serve_wait_ready() {
    local n
    for n in "$@"; do T=${T:-15} wait_for serve_ready "$n" || { not_ok "$n did not start serving"; return 1; }; done
}

# Graceful stop of one instance; its exit status in SV_RC (not a subshell:
# only this shell can wait for it).
serve_stop() {
    local name=$1 pid=${SV_PID[$1]}
    kill -TERM "$pid" 2>/dev/null || true
    SV_RC=0
    wait "$pid" || SV_RC=$?
    unset "SV_PID[$name]"
}

serve_leader() {
    local v
    v=$(rcli GET "orgsync:$SV_ENV:lock:$SV_JOB")
    echo "${v%|*}"
}

psql_q() { psql -qAtX "$SDB" -c "$1"; }

# POST /v1/runs through instance NAME; prints the run id.
serve_request_run() {
    curl -fsS -X POST -H "Authorization: Bearer $SV_ADMIN" "http://127.0.0.1:${SV_HTTP[$1]}/v1/runs" | jq -r .run_id
}

# Runs of this test's environment in a state (or any with "").
runs_in() { psql_q "SELECT count(*) FROM sync_runs WHERE env = '$SV_ENV'${1:+ AND state = '$1'}"; }
runs_at_least() { [ "$(runs_in "$1")" -ge "$2" ]; }

run_state() { psql_q "SELECT state FROM sync_runs WHERE run_id = $1"; }
run_is() { [ "$(run_state "$1")" = "$2" ]; }
run_running() { [ "$(run_state "$1")" = running ]; }

sim_stat() { curl -fsS "$SIM_URL/sim/stats" | jq -r "$1"; }
sim_port_requests() { curl -fsS "$SIM_URL/sim/stats" | jq -r ".ports[] | select(.port == $1) | .requests"; }

# PostgreSQL (members and departments not deleted) equals GET /sim/org.
serve_data_equals_sim() {
    local dsn=$1
    curl -fsS "$SIM_URL/sim/org" | jq -r '.corps[] | .corp_id as $c | .users[] |
        [$c, .userid, .name, (.mobile // ""), (.email // ""), (.position // ""), (.status | tostring),
         (.department | sort | map(tostring) | join(",")), (.main_department | tostring)] | join("|")' |
        LC_ALL=C sort >"$SV_DIR/want.users"
    psql -qAtX "$dsn" -c "SELECT corp_id || '|' || userid || '|' || coalesce(name, '') || '|' ||
        coalesce(mobile, '') || '|' || coalesce(email, '') || '|' || coalesce(position, '') || '|' ||
        coalesce(status::text, '') || '|' || array_to_string(ARRAY(SELECT unnest(department) ORDER BY 1), ',')
        || '|' || coalesce(main_department::text, '') FROM users WHERE deleted_at IS NULL" |
        LC_ALL=C sort >"$SV_DIR/got.users"
    curl -fsS "$SIM_URL/sim/org" | jq -r '.corps[] | .corp_id as $c | .departments[] |
        [$c, (.id | tostring), .name, (.parentid | tostring)] | join("|")' | LC_ALL=C sort >"$SV_DIR/want.depts"
    psql -qAtX "$dsn" -c "SELECT corp_id || '|' || dept_id || '|' || name || '|' || coalesce(parent_id::text, '')
        FROM departments WHERE deleted_at IS NULL" | LC_ALL=C sort >"$SV_DIR/got.depts"
    [ -s "$SV_DIR/want.users" ] && cmp -s "$SV_DIR/want.users" "$SV_DIR/got.users" &&
        cmp -s "$SV_DIR/want.depts" "$SV_DIR/got.depts"
}

# No sanitizer report in any instance's log.
serve_logs_clean() {
    ! grep -l -E 'AddressSanitizer|LeakSanitizer|runtime error:' "$SV_DIR"/*.log
}

# An audit of every row a connection writes, by application_name (= instance
# name): tells which instance wrote what, and when, by the database's clock.
serve_audit_install() {
    psql -qAtX -v ON_ERROR_STOP=1 "$1" >/dev/null <<'SQL'
CREATE TABLE write_audit (app text, tbl text, ts timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION write_audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO write_audit (app, tbl) VALUES (current_setting('application_name'), TG_TABLE_NAME);
    RETURN NULL;
END $$;
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['users', 'departments', 'sync_checkpoints', 'sync_progress', 'sync_runs', 'leader_fence'] LOOP
        EXECUTE format('CREATE TRIGGER audit_%s AFTER INSERT OR UPDATE OR DELETE ON %I FOR EACH ROW EXECUTE FUNCTION write_audit_fn()', t, t);
    END LOOP;
END $$;
SQL
}
