#!/usr/bin/env bash
# Members from WeCom's export job (member source export), end to end against the
# simulator's export jobs (tests/sim/README.md "Export jobs"): data identical to
# the simulator over several files, a download fault resumed with Range, an md5
# mismatch that deletes nobody, a refusal that falls back to user/list with its
# reason, auto's threshold, and a leader killed while waiting for the job whose
# successor polls the same job (one job created in all).
# shellcheck source=tests/lib/testlib.sh
. "$(dirname "$0")/../lib/testlib.sh"
: "${ORGSYNC_SIM_BIN:?ORGSYNC_SIM_BIN missing}"

DSN=$(fresh_db)
SIM_PIDS=()
cleanup() {
    for p in "${SIM_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -n "${SYNC_PID:-}" ] && kill -9 "$SYNC_PID" 2>/dev/null || true
    [ -n "${SERVE_PID:-}" ] && kill -TERM "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null || true
    drop_db "$DSN"
}
trap cleanup EXIT
export ORGSYNC_PG_DSN="$DSN" ORGSYNC_REDIS_URL="$ORGSYNC_TEST_REDIS_URL"
export ORGSYNC_ENV="texport$$" ORGSYNC_LOG_LEVEL=warn ORGSYNC_DEPT_RATE=50
# Files of ~60 KiB read in 16 KiB ranges: several ranges per file.
export ORGSYNC_EXPORT_RANGE_KB=16
sql() { psql -qAtX "$DSN" -c "$1"; }
OUT="$ORGSYNC_TEST_TMP/export.$$"

start_sim --enterprises 1 --departments 30 --users-per-dept 10 --latency-ms 2 --seed 7 --rate 50
SIM_PIDS+=("$SIM_PID")
export ORGSYNC_UPSTREAM_URL="$SIM_URL"
C=wwsim0001
xset() { curl -sf -X POST "$SIM_URL/sim/export" -d "$1" >/dev/null; }
xstats() { curl -sf "$SIM_URL/sim/export"; }
stats() { curl -sf "$SIM_URL/sim/stats?corp_id=$C"; }
mutate() { curl -sf -X POST "$SIM_URL/sim/mutate" -d "{\"corp_id\":\"$C\",\"random\":$1}" >/dev/null; }
# Live members as the upstream would give them, from the simulator and PostgreSQL.
org_users() { curl -sf "$SIM_URL/sim/org?corp_id=$C" | jq -r '.corps[0].users[] |
    "\(.userid)|\(.name)|\(.mobile)|{\(.department | sort | map(tostring) | join(","))}"' | sort; }
pg_users() { sql "SELECT userid || '|' || coalesce(name, '') || '|' || coalesce(mobile, '') || '|' ||
    (SELECT coalesce(array_agg(x ORDER BY x), '{}') FROM unnest(department) x)::text
    FROM users WHERE corp_id = '$C' AND deleted_at IS NULL" | sort; }
org_depts() { curl -sf "$SIM_URL/sim/org?corp_id=$C" | jq -r '.corps[0].departments[] | "\(.id)|\(.name)|\(.parentid)"' | sort; }
pg_depts() { sql "SELECT dept_id || '|' || name || '|' || parent_id FROM departments WHERE corp_id = '$C' AND deleted_at IS NULL" | sort; }
sync() { # sync [env...]: runs one sync, sets RC
    set +e
    env "$@" "$ORGSYNC_BIN" sync >"$OUT.out" 2>"$OUT.err"
    RC=$?
    set -e
}
used() { sql "SELECT member_source_used FROM enterprises WHERE corp_id = '$C'"; }
live() { sql "SELECT count(*) FROM users WHERE corp_id = '$C' AND deleted_at IS NULL"; }

SECRET="secret-$C" "$ORGSYNC_BIN" enterprise add --corp-id "$C" --secret-env SECRET --name Sim \
    --member-source export >/dev/null
set +e
"$ORGSYNC_BIN" enterprise set --corp-id "$C" --member-source everything >/dev/null 2>"$OUT.usage"
urc=$?
set -e
eq "a bad --member-source is a usage error" 2 "$urc"
check "naming the option and the choices" grep -q -- "--member-source: expected user_list, export or auto" "$OUT.usage"

# ---- 1. export, several files: the data is the simulator's, no user/list at all
xset '{"queue_ms": 300, "run_ms": 300, "part_max": 100}'
sync
eq "export sync exits 0" 0 "$RC"
eq "members equal /sim/org" "$(org_users | md5sum)" "$(pg_users | md5sum)"
eq "departments equal /sim/org" "$(org_depts | md5sum)" "$(pg_depts | md5sum)"
eq "raw is each member as user/list sends it" \
    "$(curl -sf "$SIM_URL/cgi-bin/user/get?access_token=$(curl -sf "$SIM_URL/cgi-bin/gettoken?corpid=$C&corpsecret=secret-$C" | jq -r .access_token)&userid=u000005" | jq -S 'del(.errcode, .errmsg)')" \
    "$(sql "SELECT raw FROM users WHERE userid = 'u000005'" | jq -S .)"
S=$(stats)
eq "no user/list was asked" 0 "$(jq '.corps[0].by_path["user/list"] // 0' <<<"$S")"
eq "one export job" 1 "$(xstats | jq .jobs_created)"
files=$(xstats | jq '.jobs[0].parts')
check "several files ($files)" test "$files" -ge 3
check "the job was polled more than once (status 0/1 first)" test "$(jq '.corps[0].by_path["export/get_result"]' <<<"$S")" -ge 2
check "files read in ranges" test "$(xstats | jq .file_range_requests)" -gt $((files * 2))
eq "the enterprise records export" export "$(used)"
check "and why" grep -q "export: set by the operator" <<<"$(sql "SELECT member_source_reason FROM enterprises")"
eq "the stored job is done, every file" "done|$files|$(live)" "$(sql "SELECT state || '|' || parts_done || '|' || members FROM sync_exports")"
J=$("$ORGSYNC_BIN" status --json)
eq "status --json: the run's member source" export "$(jq -r '.enterprises[0].member_source' <<<"$J")"
check "status --json: the job's phase" grep -q "export: job jobid_.* read" <<<"$(jq -r '.enterprises[0].export.phase' <<<"$J")"
eq "progress counts every department done" "t" "$(sql "SELECT departments_done = departments_total AND state = 'succeeded' FROM sync_progress ORDER BY run_id DESC LIMIT 1")"
eq "users_upserted counts each member once" "$(live)" "$(sql "SELECT users_upserted FROM sync_progress ORDER BY run_id DESC LIMIT 1")"
check "enterprise list shows the source" grep -q "export" <<<"$("$ORGSYNC_BIN" enterprise list)"

# ---- 2. a download fault mid-file: resumed with Range from where it stopped
mutate '{"add": 4, "remove": 3, "rename": 3, "move": 3}'
xset '{"reset_stats": true, "file_fail_after": 2, "file_fail_next": 2}'
sync
eq "with two faulty range requests: exits 0" 0 "$RC"
eq "two faults were served" 2 "$(xstats | jq .file_faults)"
check "the retry resumed at a byte offset past 0" grep -q '"from_byte":[1-9]' "$OUT.err"
eq "members equal /sim/org after mutations (3 removed)" "$(org_users | md5sum)" "$(pg_users | md5sum)"
eq "the removed ones are marked deleted" 3 "$(sql "SELECT count(*) FROM users WHERE deleted_at IS NOT NULL")"

# ---- 2b. the URLs expire while a fault holds the download: a new job, once
mutate '{"rename": 2, "remove": 1}'
xset '{"reset_stats": true, "url_ttl_s": 2, "file_fail_after": 0, "file_fail_next": 4}'
sync
eq "URLs expired mid-download: exits 0" 0 "$RC"
check "the expired URL was refused" test "$(xstats | jq .file_expired)" -ge 1
eq "a second job was made" 2 "$(xstats | jq .jobs_created)"
check "and said why" grep -q "URL is refused (expired?), making a new job" "$OUT.err"
eq "members equal /sim/org" "$(org_users | md5sum)" "$(pg_users | md5sum)"
eq "the removed one is marked deleted" 4 "$(sql "SELECT count(*) FROM users WHERE deleted_at IS NOT NULL")"
xset '{"url_ttl_s": 7200}'

# ---- 3. md5 mismatch: an error, and nobody deleted
mutate '{"remove": 2}'
before=$(live)
xset '{"bad_md5": true}'
sync
eq "md5 mismatch: exits 1" 1 "$RC"
err=$(sql "SELECT last_error FROM sync_progress ORDER BY run_id DESC LIMIT 1")
check "the error says md5 mismatch" grep -q "md5 mismatch" <<<"$err"
check "and that nobody was deleted" grep -q "nobody deleted" <<<"$err"
eq "nobody deleted" "$before" "$(live)"
eq "the stored job says failed" failed "$(sql "SELECT state FROM sync_exports ORDER BY run_id DESC LIMIT 1")"
xset '{"bad_md5": false}'

# ---- 4. refused: user/list instead, with the reason recorded
xset '{"refuse": 48009, "reset_stats": true}'
curl -sf -X POST "$SIM_URL/sim/reset-stats" >/dev/null
sync
eq "export refused: exits 0" 0 "$RC"
eq "the run used user_list" user_list "$(used)"
check "the reason names export/user and 48009" grep -q "export/user with the app secret refused: errcode 48009" <<<"$(sql "SELECT member_source_reason FROM enterprises")"
check "user/list was used" test "$(stats | jq '.corps[0].by_path["user/list"]')" -ge 30
eq "members equal /sim/org (the 2 removed now deleted)" "$(org_users | md5sum)" "$(pg_users | md5sum)"
check "status shows the refusal" grep -q "failed (export/user with the app secret refused: errcode 48009" <<<"$("$ORGSYNC_BIN" status)"
xset '{"refuse": 0}'

# ---- 4b. the job fails upstream (status 3): user/list too, with the reason
xset '{"fail": true}'
sync
eq "export job failed (status 3): exits 0" 0 "$RC"
eq "the run used user_list" user_list "$(used)"
check "the reason says status 3" grep -q "failed upstream (status 3): user_list" <<<"$(sql "SELECT member_source_reason FROM enterprises")"
xset '{"fail": false}'

# ---- 5. auto: export above the threshold only
"$ORGSYNC_BIN" enterprise set --corp-id "$C" --member-source auto >/dev/null
sync ORGSYNC_EXPORT_AUTO_DEPTS=1000
eq "auto under the threshold: exits 0" 0 "$RC"
eq "auto with 30 departments <= 1000: user_list" user_list "$(used)"
check "and why" grep -q "auto: 30 departments, at most 1000: user_list" <<<"$(sql "SELECT member_source_reason FROM enterprises")"
sync ORGSYNC_EXPORT_AUTO_DEPTS=10
eq "auto over the threshold: exits 0" 0 "$RC"
eq "auto with 30 departments > 10: export" export "$(used)"

# ---- 6. the leader dies while waiting for the job: the next polls the same job
mutate '{"add": 3, "remove": 2}'
xset '{"queue_ms": 6000, "run_ms": 500, "reset_stats": true}'
ORGSYNC_EXPORT_AUTO_DEPTS=10 ORGSYNC_LOCK_TTL_MS=1500 "$ORGSYNC_BIN" sync >"$OUT.kill.out" 2>&1 &
SYNC_PID=$!
for _ in $(seq 1 200); do
    st=$(sql "SELECT x.state FROM sync_exports x JOIN sync_runs r USING (run_id) WHERE r.state = 'running'")
    [ "$st" = waiting ] && break
    sleep 0.05
done
eq "the job is stored as waiting" waiting "$st"
jobid=$(sql "SELECT x.jobid FROM sync_exports x JOIN sync_runs r USING (run_id) WHERE r.state = 'running'")
check "any instance reports it: export: waiting for job $jobid" grep -q "export: waiting for job $jobid" <<<"$("$ORGSYNC_BIN" status)"
# ... and the HTTP API of a process that does not lead (ORGSYNC_SCHEDULE=off)
HPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ORGSYNC_SCHEDULE=off ORGSYNC_WORKERS=1 ORGSYNC_HTTP_ADDR="127.0.0.1:$HPORT" ORGSYNC_INSTANCE=api \
    "$ORGSYNC_BIN" serve >"$OUT.serve" 2>&1 &
SERVE_PID=$!
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$HPORT/healthz" >/dev/null && break; sleep 0.05; done
eq "GET /v1/runs/latest: export: waiting for job $jobid" "export: waiting for job $jobid" \
    "$(curl -fs "http://127.0.0.1:$HPORT/v1/runs/latest" | jq -r '.enterprises[0].export.phase')"
eq "GET /v1/enterprises/$C/progress: the same" "export: waiting for job $jobid" \
    "$(curl -fs "http://127.0.0.1:$HPORT/v1/enterprises/$C/progress" | jq -r '.enterprise.export.phase')"
kill -TERM "$SERVE_PID" 2>/dev/null || true
wait "$SERVE_PID" 2>/dev/null || true
SERVE_PID=
kill -9 "$SYNC_PID" 2>/dev/null || true
wait "$SYNC_PID" 2>/dev/null || true
SYNC_PID=
sleep 2
sync ORGSYNC_EXPORT_AUTO_DEPTS=10 ORGSYNC_LOCK_TTL_MS=1500 ORGSYNC_LOG_LEVEL=info
eq "the next sync exits 0" 0 "$RC"
eq "it resumed the same run" 1 "$(sql "SELECT count(*) FROM sync_runs WHERE state = 'succeeded' AND attempt >= 2")"
eq "one export job was created in all" 1 "$(xstats | jq .jobs_created)"
check "the successor polled the stored job" grep -q "resuming the stored export job.*$jobid" "$OUT.err"
eq "members equal /sim/org" "$(org_users | md5sum)" "$(pg_users | md5sum)"
finish
