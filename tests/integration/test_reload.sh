#!/usr/bin/env bash
# SIGHUP reloads `orgsync serve` without restarting a worker: the --config
# file is read again; the log level, the schedule (cron) and the alert webhook
# change at once in every worker; a changed port is logged as needing a
# restart and left alone; a bad file changes nothing and the daemon serves on.
. "$(dirname "$0")/../lib/testlib.sh"
. "$(dirname "$0")/serve_helpers.sh"
serve_trap

SV_ENV="rld$$"
SDB=$(fresh_db)
SV_DBS+=("$SDB")
serve_sim 1 --enterprises 1 --departments 2 --users-per-dept 1 --seed 5
# A wrong secret: every run fails, and a failed run raises an alert.
psql_q "INSERT INTO enterprises (corp_id, name, corp_secret) VALUES ('wwsim0001', 'c1', 'not-the-secret')" >/dev/null

# hook NAME: a webhook receiver; each POST body is one line of $SV_DIR/NAME.hook.
hook() {
    python3 -c '
import http.server, sys
out = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(out, "ab") as f:
            f.write(body.replace(b"\n", b" ") + b"\n")
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()' "$SV_DIR/$1.hook" >"$SV_DIR/$1.port" &
    SV_EXTRA_PIDS+=($!)
    T=5 wait_for test -s "$SV_DIR/$1.port"
    touch "$SV_DIR/$1.hook"
}
hook old
hook new
HOOK_OLD="http://127.0.0.1:$(cat "$SV_DIR/old.port")/hook"
HOOK_NEW="http://127.0.0.1:$(cat "$SV_DIR/new.port")/hook"
PORT=$(free_port)
PORT2=$(free_port)
CONF="$SV_DIR/orgsync.env"
LOG="$SV_DIR/a.log"

cat >"$CONF" <<CONF
# as an operator would keep it: /etc/orgsync/orgsync.env
ORGSYNC_LOG_LEVEL=info
ORGSYNC_CRON=0 0 0 1 1 *
ORGSYNC_TZ=UTC
ORGSYNC_HTTP_ADDR=127.0.0.1:$PORT
ORGSYNC_ALERT_WEBHOOK=$HOOK_OLD
CONF
env ORGSYNC_ENV="$SV_ENV" ORGSYNC_SCHEDULE=on ORGSYNC_WORKERS=2 ORGSYNC_INSTANCE=a \
    ORGSYNC_PG_DSN="$SDB" ORGSYNC_REDIS_URL="$SV_REDIS_URL" ORGSYNC_LOCK_TTL_MS=2000 \
    ORGSYNC_UPSTREAM_URL="$SIM_URL" ORGSYNC_ADMIN_TOKEN="$SV_ADMIN" \
    setsid "$ORGSYNC_BIN" --config "$CONF" serve >>"$LOG" 2>&1 &
SV_PID[a]=$!
SV_HTTP[a]=$PORT
sup=${SV_PID[a]}
serve_wait_ready a
T=10 wait_for grep -q '"supervisor: every worker serves' "$LOG"
workers_before=$(sed -n 's/.*"supervisor: worker started".*"pid":\([0-9]*\).*/\1/p' "$LOG" | sort | tr '\n' ' ')

# Before: info level (no debug line), alerts go to the old webhook.
rid=$(serve_request_run a)
T=10 wait_for run_is "$rid" failed || not_ok "run $rid did not fail as it should"
T=10 wait_for grep -q run_failed "$SV_DIR/old.hook" || true
check "before: the failed run's alert went to the old webhook" grep -q '"kind":"run_failed"' "$SV_DIR/old.hook"
eq "before: no debug line at info level" 0 "$(grep -c '"level":"debug"' "$LOG" || true)"
eq "before: no scheduled run (cron is once a year)" 0 "$(psql_q "SELECT count(*) FROM sync_runs WHERE env = '$SV_ENV' AND trigger = 'schedule'")"

# Reload: debug level, a fire every 2 seconds, the new webhook, and another port.
sed -i -e 's/^ORGSYNC_LOG_LEVEL=.*/ORGSYNC_LOG_LEVEL=debug/' \
    -e 's#^ORGSYNC_CRON=.*#ORGSYNC_CRON=*/2 * * * * *#' \
    -e "s#^ORGSYNC_HTTP_ADDR=.*#ORGSYNC_HTTP_ADDR=127.0.0.1:$PORT2#" \
    -e "s#^ORGSYNC_ALERT_WEBHOOK=.*#ORGSYNC_ALERT_WEBHOOK=$HOOK_NEW#" "$CONF"
old_alerts=$(wc -l <"$SV_DIR/old.hook")
hup_line=$(wc -l <"$LOG")
kill -HUP "$sup"
T=5 wait_for eval '[ "$(grep -c "\"serve: reload applied\"" "$LOG")" -ge 2 ]' || true
after() { tail -n +"$((hup_line + 1))" "$LOG"; }
check "the supervisor is still running" kill -0 "$sup"
check "it logged the reloaded settings" bash -c 'grep "\"reload: settings changed\"" "$1" | grep -q "\"settings\":\"ORGSYNC_CRON,ORGSYNC_ALERT_WEBHOOK,ORGSYNC_LOG_LEVEL\""' _ "$LOG"
check "it logged that the port needs a restart" bash -c 'grep "\"reload: changed settings need a restart" "$1" | grep -q "\"settings\":\"ORGSYNC_HTTP_ADDR\""' _ "$LOG"
eq "both workers applied it" 2 "$(grep -c '"serve: reload applied".*"settings":"ORGSYNC_CRON,ORGSYNC_ALERT_WEBHOOK,ORGSYNC_LOG_LEVEL"' "$LOG" || true)"
check "no value of the webhook URL in the log" bash -c '! after | grep -q "$1"' _ "$(cat "$SV_DIR/new.port")/hook"
scheduled() { [ "$(psql_q "SELECT count(*) FROM sync_runs WHERE env = '$SV_ENV' AND trigger = 'schedule'")" -ge 2 ]; }
T=10 wait_for scheduled || true
check "the new cron fires: scheduled runs every 2 s" scheduled
check "the scheduler logged its new schedule" grep -q '"scheduler: schedule changed".*"cron":"\*/2 \* \* \* \* \*"' "$LOG"
debug_workers=$(after | grep '"level":"debug"' | sed -n 's/.*"worker_id":\([0-9]*\).*/\1/p' | sort -u | tr '\n' ' ')
check "debug lines now come from the workers ($debug_workers)" bash -c 'after() { tail -n +'"$((hup_line + 1))"' "$1"; }; after "$1" | grep "\"level\":\"debug\"" | grep -q "\"worker_id\":1"' _ "$LOG"
T=10 wait_for eval '[ "$(grep -c run_failed "$SV_DIR/new.hook")" -ge 1 ]' || true
check "alerts now go to the new webhook" grep -q '"kind":"run_failed"' "$SV_DIR/new.hook"
sleep 0.5
eq "... and no longer to the old one" "$old_alerts" "$(wc -l <"$SV_DIR/old.hook")"
check "the API still serves on the old port" serve_ready a
check "nothing listens on the new port (it needs a restart)" bash -c '! curl -fsS -m 2 "http://127.0.0.1:$1/healthz"' _ "$PORT2"
workers_after=$(sed -n 's/.*"supervisor: worker started".*"pid":\([0-9]*\).*/\1/p' "$LOG" | sort | tr '\n' ' ')
eq "no worker was restarted" "$workers_before" "$workers_after"

# A bad file: an error naming the setting, nothing changes, it serves on.
sed -i 's#^ORGSYNC_CRON=.*#ORGSYNC_CRON=every tuesday#' "$CONF"
kill -HUP "$sup"
T=5 wait_for grep -q '"reload: the settings are not valid; nothing changed"' "$LOG" || true
check "a bad file: the reload is refused, naming ORGSYNC_CRON" grep -q '"reload: the settings are not valid; nothing changed".*ORGSYNC_CRON' "$LOG"
bad_line=$(grep -n '"reload: the settings are not valid' "$LOG" | tail -1 | cut -d: -f1)
sleep 3
fires=$(tail -n +"${bad_line:-1}" "$LOG" | grep -c '"level":"debug","msg":"scheduler: fire"' || true)
check "... the 2-second schedule and the debug level go on ($fires fires logged in 3 s)" test "$fires" -ge 1
check "... and it still serves" serve_ready a

serve_stop a
eq "SIGTERM after reloads: exit 0" 0 "$SV_RC"
check "no sanitizer report in the logs" serve_logs_clean
finish
