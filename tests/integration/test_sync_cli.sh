#!/usr/bin/env bash
# `orgsync sync` end to end: usage errors, a full sync whose result equals GET
# /sim/org, progress lines and summary, exit status on a failing enterprise,
# --no-wait against a held lock, and a sync killed mid-run (kill -9) that the
# next `orgsync sync` resumes from its checkpoints without fetching the
# checkpointed departments again; and progress lines whose percent and ETA are
# run_view's (what `orgsync status` and the API say).
# shellcheck source=tests/lib/testlib.sh
. "$(dirname "$0")/../lib/testlib.sh"
: "${ORGSYNC_SIM_BIN:?ORGSYNC_SIM_BIN missing}"
: "${ORGSYNC_TEST_PG_DSN:?run under tests/run.sh (ORGSYNC_TEST_PG_DSN missing)}"

DB="t_sync_cli_$$"
SIM_PIDS=()
cleanup() {
    for p in "${SIM_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -n "${SYNC_PID:-}" ] && kill -9 "$SYNC_PID" 2>/dev/null || true
    psql -qAtX "$ORGSYNC_TEST_PG_ADMIN_DSN" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

psql -qAtX -v ON_ERROR_STOP=1 "$ORGSYNC_TEST_PG_ADMIN_DSN" \
    -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB TEMPLATE orgsync OWNER orgsync" >/dev/null
export ORGSYNC_PG_DSN="$ORGSYNC_TEST_PG_DSN dbname=$DB"
export ORGSYNC_REDIS_URL="$ORGSYNC_TEST_REDIS_URL"
export ORGSYNC_ENV="tcli$$"
export ORGSYNC_LOG_LEVEL=warn
REDIS_PORT=$(sed -n 's#^redis://[^:]*:\([0-9]*\).*#\1#p' <<<"$ORGSYNC_TEST_REDIS_URL")
sql() { psql -qAtX "$ORGSYNC_PG_DSN" -c "$1"; }

add_corps() { # add_corps N
    for i in $(seq 1 "$1"); do
        c=$(printf 'wwsim%04d' "$i")
        SECRET="secret-$c" "$ORGSYNC_BIN" enterprise add --corp-id "$c" --secret-env SECRET \
            --name "Sim $i" >/dev/null
    done
}

# Live members of one enterprise, as "userid|name|mobile|{sorted departments}" lines.
org_users() { curl -sf "$SIM_URL/sim/org?corp_id=$1" | jq -r '.corps[0].users[] |
    "\(.userid)|\(.name)|\(.mobile)|{\(.department | sort | map(tostring) | join(","))}"' | sort; }
pg_users() { sql "SELECT userid || '|' || name || '|' || mobile || '|' ||
    (SELECT coalesce(array_agg(x ORDER BY x), '{}') FROM unnest(department) x)::text
    FROM users WHERE corp_id = '$1' AND deleted_at IS NULL" | sort; }

# ---- usage errors: exit 2 before connecting anywhere
set +e
ORGSYNC_PG_DSN="host=192.0.2.1 connect_timeout=30" "$ORGSYNC_BIN" sync --bogus >/dev/null 2>"$ORGSYNC_TEST_TMP/cli.$$.err"
rc=$?
set -e
eq "unknown flag is a usage error" 2 "$rc"
check "the message names the flag" grep -q -- "--bogus" "$ORGSYNC_TEST_TMP/cli.$$.err"
set +e
"$ORGSYNC_BIN" sync --corp 'bad id!' >/dev/null 2>&1
eq "a malformed --corp is a usage error" 2 "$?"
"$ORGSYNC_BIN" sync --corp >/dev/null 2>&1
eq "--corp without a value is a usage error" 2 "$?"
set -e

# ---- a full sync
start_sim --enterprises 3 --departments 10 --users-per-dept 5 --latency-ms 5
SIM_PIDS+=("$SIM_PID")
export ORGSYNC_UPSTREAM_URL="$SIM_URL"
add_corps 3
set +e
"$ORGSYNC_BIN" sync >"$ORGSYNC_TEST_TMP/cli.$$.out" 2>"$ORGSYNC_TEST_TMP/cli.$$.err"
rc=$?
set -e
eq "sync exits 0 when every enterprise succeeded" 0 "$rc"
check "summary line" grep -q "^run 1 succeeded in .*3 enterprises (3 succeeded, 0 failed), 30/30 departments" "$ORGSYNC_TEST_TMP/cli.$$.out"
for c in wwsim0001 wwsim0002 wwsim0003; do
    eq "$c: PostgreSQL equals /sim/org" "$(org_users $c | md5sum)" "$(pg_users $c | md5sum)"
done
eq "one run, succeeded" "1|succeeded|cli" "$(sql "SELECT count(*), max(state), max(trigger) FROM sync_runs")"
eq "zero rate violations" 0 "$(curl -sf "$SIM_URL/sim/stats" | jq '[.corps[].violations] | add')"

# ---- a failing enterprise: exit 1, the summary says which and why
curl -sf -X POST "$SIM_URL/sim/faults" -d '{"fail_dept":2,"fail_dept_corp":"wwsim0002","fail_dept_errcode":-1}' >/dev/null
curl -sf -X POST "$SIM_URL/sim/mutate" -d '{"corp_id":"wwsim0002","random":{"remove":2}}' >/dev/null
set +e
"$ORGSYNC_BIN" sync >"$ORGSYNC_TEST_TMP/cli.$$.out" 2>&1
rc=$?
set -e
eq "sync exits 1 when an enterprise failed" 1 "$rc"
check "summary: partial" grep -q "^run 2 partial" "$ORGSYNC_TEST_TMP/cli.$$.out"
check "summary names the failed enterprise and department" grep -q "wwsim0002 .*failed.*department 2" "$ORGSYNC_TEST_TMP/cli.$$.out"
eq "the failed enterprise deleted nobody" 0 "$(sql "SELECT count(*) FROM users WHERE corp_id = 'wwsim0002' AND deleted_at IS NOT NULL")"
curl -sf -X POST "$SIM_URL/sim/faults" -d '{"reset":true}' >/dev/null

# ---- --corp: only that enterprise, and it catches up (deletions included)
set +e
"$ORGSYNC_BIN" sync --corp wwsim0002 >"$ORGSYNC_TEST_TMP/cli.$$.out" 2>&1
rc=$?
set -e
eq "sync --corp exits 0" 0 "$rc"
eq "the run covered one enterprise" 1 "$(sql "SELECT count(*) FROM sync_progress WHERE run_id = 3")"
eq "wwsim0002 equals /sim/org after the catch-up" "$(org_users wwsim0002 | md5sum)" "$(pg_users wwsim0002 | md5sum)"

# ---- --corp naming an unknown enterprise: it fails, and so does the command
set +e
"$ORGSYNC_BIN" sync --corp wwsim0001 --corp nosuchcorp >"$ORGSYNC_TEST_TMP/cli.$$.out" 2>&1
rc=$?
set -e
eq "sync --corp with an unknown enterprise exits 1" 1 "$rc"
check "the summary says why" grep -q "nosuchcorp .*failed.*no such enabled enterprise" "$ORGSYNC_TEST_TMP/cli.$$.out"

# ---- SIGTERM: stops at once, the run stays resumable (abandoned), the next sync finishes it
kill "$SIM_PID" 2>/dev/null || true
start_sim --enterprises 3 --departments 40 --users-per-dept 2 --latency-ms 5
SIM_PIDS+=("$SIM_PID")
export ORGSYNC_UPSTREAM_URL="$SIM_URL"
"$ORGSYNC_BIN" sync >"$ORGSYNC_TEST_TMP/cli.$$.term" 2>&1 &
SYNC_PID=$!
for _ in $(seq 1 200); do
    [ "$(sql "SELECT count(*) FROM sync_checkpoints k JOIN sync_runs r USING (run_id) WHERE r.state = 'running'")" -ge 10 ] && break
    sleep 0.05
done
t0=$(date +%s%N)
kill -TERM "$SYNC_PID"
set +e
wait "$SYNC_PID"
rc=$?
set -e
SYNC_PID=
ms=$((($(date +%s%N) - t0) / 1000000))
eq "SIGTERM: exit 1" 1 "$rc"
check "SIGTERM: stopped within 3 s ($ms ms)" test "$ms" -lt 3000
eq "SIGTERM: the run is left abandoned" "abandoned" "$(sql "SELECT state FROM sync_runs ORDER BY run_id DESC LIMIT 1")"
set +e
"$ORGSYNC_BIN" sync >"$ORGSYNC_TEST_TMP/cli.$$.out" 2>&1
rc=$?
set -e
eq "the next sync resumes and ends it" "0 succeeded 2" "$rc $(sql "SELECT state, attempt FROM sync_runs ORDER BY run_id DESC LIMIT 1" | tr '|' ' ')"

# ---- --no-wait while someone else holds the lock
redis-cli -p "$REDIS_PORT" SET "orgsync:$ORGSYNC_ENV:lock:directory-sync" "elsewhere|999999" PX 5000 >/dev/null
set +e
"$ORGSYNC_BIN" sync --no-wait >/dev/null 2>"$ORGSYNC_TEST_TMP/cli.$$.err"
rc=$?
set -e
eq "--no-wait with the lock held exits 1" 1 "$rc"
check "it says another process holds the lock" grep -q "another process holds the lock" "$ORGSYNC_TEST_TMP/cli.$$.err"
redis-cli -p "$REDIS_PORT" DEL "orgsync:$ORGSYNC_ENV:lock:directory-sync" >/dev/null

# ---- killed mid-run, started again: resumes the same run from its checkpoints
kill "$SIM_PID" 2>/dev/null || true
start_sim --enterprises 3 --departments 40 --users-per-dept 3 --latency-ms 5
SIM_PIDS+=("$SIM_PID")
export ORGSYNC_UPSTREAM_URL="$SIM_URL"
export ORGSYNC_LOCK_TTL_MS=1500
export ORGSYNC_ENV="tcli$$b"
sql "SET client_min_messages = warning; TRUNCATE sync_runs CASCADE; DELETE FROM users; DELETE FROM departments" >/dev/null
"$ORGSYNC_BIN" sync >"$ORGSYNC_TEST_TMP/cli.$$.kill.out" 2>&1 &
SYNC_PID=$!
for _ in $(seq 1 200); do
    [ "$(sql "SELECT count(*) FROM sync_checkpoints")" -ge 30 ] && break
    sleep 0.05
done
kill -9 "$SYNC_PID"
wait "$SYNC_PID" 2>/dev/null || true
SYNC_PID=
sql "SELECT corp_id || ' ' || dept_id FROM sync_checkpoints ORDER BY 1" >"$ORGSYNC_TEST_TMP/cli.$$.ck"
before=$(wc -l <"$ORGSYNC_TEST_TMP/cli.$$.ck")
check "killed mid-run (30..119 of 120 departments checkpointed: $before)" test "$before" -ge 30 -a "$before" -lt 120
eq "the run was left running" "running" "$(sql "SELECT state FROM sync_runs")"
RUN=$(sql "SELECT run_id FROM sync_runs")
set +e
"$ORGSYNC_BIN" sync >"$ORGSYNC_TEST_TMP/cli.$$.out" 2>&1
rc=$?
set -e
eq "the second sync exits 0" 0 "$rc"
check "it resumed the run (attempt 2)" grep -q "^resuming run $RUN (attempt 2)" "$ORGSYNC_TEST_TMP/cli.$$.out"
check "run $RUN succeeded" grep -q "^run $RUN succeeded" "$ORGSYNC_TEST_TMP/cli.$$.out"
eq "no second run was started" "1|succeeded|2" "$(sql "SELECT count(*), max(state), max(attempt) FROM sync_runs")"
STATS=$(curl -sf "$SIM_URL/sim/stats")
twice=0
while read -r corp dept; do
    n=$(jq --arg c "$corp" --arg d "$dept" '.corps[] | select(.corp_id == $c) | .user_list_ok[$d] // 0' <<<"$STATS")
    [ "$n" = 1 ] || twice=$((twice + 1))
done <"$ORGSYNC_TEST_TMP/cli.$$.ck"
eq "no department checkpointed before the kill was fetched again" 0 "$twice"
refetched=$(jq '[.corps[].refetched_ok_departments] | add' <<<"$STATS")
# In flight per enterprise: one being fetched, and at most 2 x 4 answers waiting
# for or in a write (worker/sync/directory_sync.c DS_BATCH_MAX).
check "at most the departments in flight at the kill were fetched twice ($refetched)" test "$refetched" -le 27
for c in wwsim0001 wwsim0002 wwsim0003; do
    eq "$c: PostgreSQL equals /sim/org after the resume" "$(org_users $c | md5sum)" "$(pg_users $c | md5sum)"
done
eq "zero rate violations across the kill" 0 "$(jq '[.corps[].violations] | add' <<<"$STATS")"
eq "at most 10 requests for one enterprise in any second" 1 "$(jq '[.corps[].max_1s] | max <= 10 | if . then 1 else 0 end' <<<"$STATS")"

# ---- progress lines say what `orgsync status` (and the API) say: run_view's percent
# One enterprise of 100 departments and two of 4: the small ones are done within a
# second, the big one takes about 12 s at 8 requests per second, so mid-run the mean
# of the enterprises' percents (run_view, docs/API.md) and departments done / total
# differ by tens of points. Each progress line is checked (a) against run_view's
# formula applied to its own departments=D/T (the small enterprises finished, so the
# big one has done D-8 of T-8), and (b) against `orgsync status --json` read right
# after the line appeared: percent only grows, and by at most what the departments
# finished in between account for, so neither depends on timing; (c) its eta against
# run_view's ETA rule applied to its own percent and elapsed= (loosely).
kill "$SIM_PID" 2>/dev/null || true
start_sim --enterprises 3 --departments 4 --users-per-dept 2 --latency-ms 5
SIM_PIDS+=("$SIM_PID")
export ORGSYNC_UPSTREAM_URL="$SIM_URL"
export ORGSYNC_ENV="tcli$$p"
export ORGSYNC_DEPT_RATE=8
unset ORGSYNC_LOCK_TTL_MS
ops=$(jq -cn '[range(96) | {op: "add_dept"}]')
curl -sf -X POST "$SIM_URL/sim/mutate" -d "{\"corp_id\":\"wwsim0001\",\"ops\":$ops}" >/dev/null
eq "wwsim0001 has 100 departments, the others 4" "100 4 4" \
    "$(curl -sf "$SIM_URL/sim/org" | jq -r '[.corps[].departments_total] | map(tostring) | join(" ")')"
OUT="$ORGSYNC_TEST_TMP/cli.$$.progress"
"$ORGSYNC_BIN" sync >"$OUT" 2>&1 &
SYNC_PID=$!
seen=0 checked=0 bad=0
: >"$OUT.checks"
while kill -0 "$SYNC_PID" 2>/dev/null; do
    # Only whole lines (the last field ends them).
    mapfile -t lines < <(grep -E '^progress .* elapsed=[0-9]+s$' "$OUT" || true)
    if [ "${#lines[@]}" -gt "$seen" ]; then
        line=${lines[${#lines[@]} - 1]}
        seen=${#lines[@]}
        run=$(sed -n 's/.* run=\([0-9]*\) .*/\1/p' <<<"$line")
        st=$("$ORGSYNC_BIN" status --run "$run" --json 2>/dev/null || true)
        echo "line:   $line" >>"$OUT.checks"
        echo "status: $(jq -c '{state, percent, eta_seconds, d: ([.enterprises[].departments_done] | add)}' <<<"$st" 2>/dev/null)" >>"$OUT.checks"
        # Every line with requests made has their rate: 3 enterprises at 8 a second
        # at most (doubled: the counters move as departments are written).
        rate=$(sed -n 's|.* requests=\([0-9]*\) rate=\([0-9.]*\)/s .*|\1 \2|p' <<<"$line")
        if ! awk -v r="$rate" 'BEGIN { split(r, x, " "); exit !(x[1] == 0 || (x[2] > 0 && x[2] <= 48)) }'; then
            echo "check:  rate: '$rate' (requests, rate/s)" >>"$OUT.checks"
            bad=$((bad + 1))
        fi
        # Mid-run with the two small enterprises done: the lines this check is about.
        grep -q ' succeeded=2 failed=0 running=1 pending=0 ' <<<"$line" || continue
        [ "$(jq -r .state <<<"$st" 2>/dev/null)" = running ] || continue
        checked=$((checked + 1))
        verdict=$(awk -v line="$line" -v sp="$(jq -r .percent <<<"$st")" \
            -v sd="$(jq '[.enterprises[].departments_done] | add' <<<"$st")" '
            function fl(x) { return int(x) }       # x >= 0 here
            BEGIN {
                n = split(line, f, " ")
                for (i = 1; i <= n; i++) { split(f[i], kv, "="); v[kv[1]] = kv[2] }
                p = v["percent"] + 0; split(v["departments"], dt, "/"); d = dt[1]; t = dt[2]
                big = fl(1000 * (d - 8) / (t - 8)) / 10; if (big > 99.9) big = 99.9
                want = fl((big + 100 + 100) / 3 * 10 + 0.5) / 10
                old = 100 * d / t
                if (old - want < 10 && want - old < 10) { print "setup: dept-weighted " old " too close to " want; exit }
                if (p - want > 0.05 || want - p > 0.05) { print "line percent " p ", run_view says " want; exit }
                # Each department of the big enterprise moves the run by 1/3 point.
                slack = (sd - d) / 3 + 0.2
                if (p > sp + 0.05 || sp - p > slack) { print "line percent " p ", status " sp " (" sd - d " departments later)"; exit }
                # ETA: run_view rule, elapsed * (100 - percent) / percent (elapsed= is
                # the command'"'"'s own clock, within a second of the run'"'"'s start).
                e = v["eta"]; es = 0
                if (e ~ /^[0-9]+s$/) es = e + 0
                else if (e ~ /^[0-9]+m[0-9]+s$/) { split(e, ms, "m"); es = ms[1] * 60 + ms[2] }
                else { print "eta " e " is not a duration"; exit }
                ew = (v["elapsed"] + 0) * (100 - p) / p
                if (es - ew > 2 + ew / 5 || ew - es > 2 + ew / 5) { print "eta " e ", run_view rule says about " ew "s"; exit }
                print "ok"
            }')
        echo "check:  $verdict" >>"$OUT.checks"
        [ "$verdict" = ok ] || bad=$((bad + 1))
    fi
    sleep 0.1
done
set +e
wait "$SYNC_PID"
rc=$?
set -e
SYNC_PID=
eq "the progress sync exits 0" 0 "$rc"
check "at least one progress line mid-run with the small enterprises done ($checked of $seen)" test "$checked" -ge 1
eq "progress lines agree with run_view and orgsync status ($(grep -c '^check:  ok' "$OUT.checks") ok)" 0 "$bad"
if [ "$bad" != 0 ] || [ "$checked" -lt 1 ]; then cat "$OUT.checks"; fi
unset ORGSYNC_DEPT_RATE

finish
