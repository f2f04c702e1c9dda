#!/usr/bin/env bash
# The WeCom contacts API as it is today, end to end against the simulator's
# switches (tests/sim/README.md "Policy"): every API mode, both credentials, the
# errcodes no retry fixes, fields a new app does not get, a visible range, an
# untrusted egress (ORGSYNC_UPSTREAM_BIND gives this "host" its own 127.0.0.x),
# and a leader killed in the middle of a roster that the next sync resumes.
# shellcheck source=tests/lib/testlib.sh
. "$(dirname "$0")/../lib/testlib.sh"
: "${ORGSYNC_SIM_BIN:?ORGSYNC_SIM_BIN missing}"

DSN=$(fresh_db)
SIM_PIDS=()
cleanup() {
    for p in "${SIM_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -n "${SYNC_PID:-}" ] && kill -9 "$SYNC_PID" 2>/dev/null || true
    drop_db "$DSN"
}
trap cleanup EXIT
export ORGSYNC_PG_DSN="$DSN" ORGSYNC_REDIS_URL="$ORGSYNC_TEST_REDIS_URL"
export ORGSYNC_ENV="tmodes$$" ORGSYNC_LOG_LEVEL=warn
sql() { psql -qAtX "$DSN" -c "$1"; }
OUT="$ORGSYNC_TEST_TMP/modes.$$"

start_sim --enterprises 1 --departments 8 --users-per-dept 4 --latency-ms 2 --seed 11
SIM_PIDS+=("$SIM_PID")
export ORGSYNC_UPSTREAM_URL="$SIM_URL"
C=wwsim0001
policy() { curl -sf -X POST "$SIM_URL/sim/policy" -d "$1" >/dev/null; }
stats() { curl -sf "$SIM_URL/sim/stats?corp_id=$C"; }
# Live members as "userid|name|mobile|{sorted departments}", from the simulator and PostgreSQL.
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
mode() { sql "SELECT api_mode_used FROM enterprises WHERE corp_id = '$C'"; }

SECRET="secret-$C" CONTACT="contact-$C" "$ORGSYNC_BIN" enterprise add --corp-id "$C" \
    --secret-env SECRET --contact-secret-env CONTACT --name Sim >/dev/null

# ---- 1. legacy: the contact-sync secret may still call the legacy API
sync
eq "auto + legacy-permitted: sync exits 0" 0 "$RC"
eq "auto chose legacy" legacy "$(mode)"
check "and says why" grep -q "auto: department/list with the contact-sync secret is permitted" <<<"$(sql "SELECT api_mode_reason FROM enterprises")"
eq "legacy: members equal /sim/org" "$(org_users | md5sum)" "$(pg_users | md5sum)"
eq "legacy: departments equal /sim/org" "$(org_depts | md5sum)" "$(pg_depts | md5sum)"
eq "legacy read no roster" 0 "$(stats | jq '.corps[0].by_path["user/list_id"] // 0')"
eq "the progress row says legacy" legacy "$(sql "SELECT api_mode FROM sync_progress ORDER BY run_id DESC LIMIT 1")"
eq "every field came" "{}" "$(sql "SELECT fields_missing FROM enterprises")"

# ---- 2. a new egress: 48009 to the contact-sync secret; auto goes modern
policy '{"contact_legacy_ips": []}'
curl -sf -X POST "$SIM_URL/sim/mutate" -d "{\"corp_id\":\"$C\",\"random\":{\"add\":3,\"remove\":2,\"rename\":2,\"move\":2}}" >/dev/null
curl -sf -X POST "$SIM_URL/sim/reset-stats" >/dev/null
sync
eq "auto + 48009: sync exits 0" 0 "$RC"
eq "auto chose modern" modern "$(mode)"
check "and says it was 48009" grep -q "48009" <<<"$(sql "SELECT api_mode_reason FROM enterprises")"
eq "modern: members equal /sim/org after mutations" "$(org_users | md5sum)" "$(pg_users | md5sum)"
eq "modern: departments equal /sim/org" "$(org_depts | md5sum)" "$(pg_depts | md5sum)"
S=$(stats)
eq "one probe answered 48009, nothing else" 1 "$(jq '.corps[0].errcodes["48009"] // 0' <<<"$S")"
check "the roster was read (user/list_id)" test "$(jq '.corps[0].by_path["user/list_id"]' <<<"$S")" -ge 1
check "the tree came from department/simplelist" test "$(jq '.corps[0].by_path["department/simplelist"]' <<<"$S")" -ge 1
eq "zero rate violations" 0 "$(jq '.corps[0].violations' <<<"$S")"
eq "the roster is dropped once used" 0 "$(sql "SELECT count(*) FROM sync_roster")"
eq "progress shows the roster" "t" "$(sql "SELECT roster_done AND roster_members > 0 FROM sync_progress ORDER BY run_id DESC LIMIT 1")"
check "the API's enterprise shows the mode" grep -q '"api_mode":"modern"' <<<"$(ORGSYNC_PG_DSN="$DSN" "$ORGSYNC_BIN" status --json)"

# ---- 3. legacy forced on that egress: the enterprise fails at once, nobody deleted
"$ORGSYNC_BIN" enterprise set --corp-id "$C" --api-mode legacy >/dev/null
curl -sf -X POST "$SIM_URL/sim/mutate" -d "{\"corp_id\":\"$C\",\"random\":{\"remove\":2}}" >/dev/null
live=$(sql "SELECT count(*) FROM users WHERE deleted_at IS NULL")
curl -sf -X POST "$SIM_URL/sim/reset-stats" >/dev/null
sync
eq "forced legacy + 48009: sync exits 1" 1 "$RC"
err=$(sql "SELECT last_error FROM sync_progress ORDER BY run_id DESC LIMIT 1")
check "the error names the API and credential" grep -q "department/list with the contact-sync secret: errcode 48009" <<<"$err"
check "and what to do" grep -q -- "--api-mode auto or modern" <<<"$err"
eq "no retry of a forbidden call" 1 "$(stats | jq '.corps[0].errcodes["48009"] // 0')"
eq "nobody deleted" "$live" "$(sql "SELECT count(*) FROM users WHERE deleted_at IS NULL")"
"$ORGSYNC_BIN" enterprise set --corp-id "$C" --api-mode auto >/dev/null

# ---- 4. a new app: no mobile or email, and what was stored stays
sync
eq "back to auto: exits 0" 0 "$RC"
mobiles=$(sql "SELECT count(*) FROM users WHERE mobile IS NOT NULL AND deleted_at IS NULL")
check "members have mobiles" test "$mobiles" -gt 0
"$ORGSYNC_BIN" enterprise set --corp-id "$C" --no-contact-secret >/dev/null
policy '{"app_new": true, "contact_legacy_ips": null}'
curl -sf -X POST "$SIM_URL/sim/mutate" -d "{\"corp_id\":\"$C\",\"random\":{\"rename\":3}}" >/dev/null
sync
eq "new app, app secret only: exits 0" 0 "$RC"
eq "no stored mobile was wiped" "$mobiles" "$(sql "SELECT count(*) FROM users WHERE mobile IS NOT NULL AND deleted_at IS NULL")"
eq "renames still applied" "$(org_users | cut -d'|' -f1,2 | md5sum)" "$(pg_users | cut -d'|' -f1,2 | md5sum)"
check "the missing fields are recorded" grep -q "mobile,email" <<<"$(sql "SELECT array_to_string(fields_missing, ',') FROM enterprises")"
check "enterprise list shows them" grep -q "mobile,email" <<<"$("$ORGSYNC_BIN" enterprise list)"
check "the run JSON shows them" grep -q '"fields_missing":\["mobile","email"' <<<"$("$ORGSYNC_BIN" status --json)"
check "orgsync status shows them" grep -q "$C: legacy API, fields not provided: mobile,email" <<<"$("$ORGSYNC_BIN" status)"

# ---- 5. a visible range: the roster still covers everyone, deletions exact
policy '{"reset": true}'
policy '{"visible_depts": [2]}'
CONTACT="contact-$C" "$ORGSYNC_BIN" enterprise set --corp-id "$C" --contact-secret-env CONTACT --api-mode modern >/dev/null
curl -sf -X POST "$SIM_URL/sim/mutate" -d "{\"corp_id\":\"$C\",\"random\":{\"remove\":2,\"add\":2}}" >/dev/null
sync
eq "modern with a narrow app range: exits 0" 0 "$RC"
eq "every member is there, by the roster" "$(org_users | cut -d'|' -f1,4 | md5sum)" "$(pg_users | cut -d'|' -f1,4 | md5sum)"
eq "no 60011: the app was only asked within its range" 0 "$(stats | jq '.corps[0].errcodes["60011"] // 0')"

# ---- 6. an untrusted egress: 60020, named with its IP; a trusted one syncs
policy '{"reset": true}'
policy '{"trusted_ips": ["127.0.0.1"]}'
curl -sf -X POST "$SIM_URL/sim/reset-stats" >/dev/null
sync ORGSYNC_UPSTREAM_BIND=127.0.0.2
eq "untrusted egress: exits 1" 1 "$RC"
err=$(sql "SELECT last_error FROM sync_progress ORDER BY run_id DESC LIMIT 1")
check "names the API, the credential and the errcode" grep -q "with the app secret: errcode 60020" <<<"$err"
check "names the egress IP and the fix" grep -q "add 127.0.0.2 to the app's trusted IPs" <<<"$err"
eq "no retry of 60020" 1 "$(stats | jq '.corps[0].errcodes["60020"] // 0')"
sync ORGSYNC_UPSTREAM_BIND=127.0.0.1
eq "trusted egress: exits 0" 0 "$RC"
eq "and its data is right" "$(org_users | cut -d'|' -f1,4 | md5sum)" "$(pg_users | cut -d'|' -f1,4 | md5sum)"

# ---- 7. a leader killed mid-roster: the next one resumes from the stored cursor
policy '{"reset": true}'
curl -sf -X POST "$SIM_URL/sim/limits" -d '{"list_id_page_max": 5}' >/dev/null
curl -sf -X POST "$SIM_URL/sim/faults" -d '{"latency_ms": 60}' >/dev/null
curl -sf -X POST "$SIM_URL/sim/mutate" -d "{\"corp_id\":\"$C\",\"random\":{\"add\":3}}" >/dev/null
curl -sf -X POST "$SIM_URL/sim/reset-stats" >/dev/null
memberships=$(curl -sf "$SIM_URL/sim/org?corp_id=$C" | jq '[.corps[0].users[].department | length] | add')
pages=$(( (memberships + 4) / 5 ))
ORGSYNC_LOCK_TTL_MS=1500 "$ORGSYNC_BIN" sync >"$OUT.kill.out" 2>&1 &
SYNC_PID=$!
for _ in $(seq 1 200); do
    p=$(sql "SELECT roster_pages FROM sync_progress ORDER BY run_id DESC LIMIT 1")
    [ -n "$p" ] && [ "$p" -ge 3 ] && break
    sleep 0.05
done
kill -9 "$SYNC_PID" 2>/dev/null || true
wait "$SYNC_PID" 2>/dev/null || true
SYNC_PID=
at_kill=$(sql "SELECT roster_pages FROM sync_progress ORDER BY run_id DESC LIMIT 1")
check "killed mid-roster ($at_kill of $pages pages stored)" test "$at_kill" -ge 3 -a "$at_kill" -lt "$pages"
sleep 2
sync ORGSYNC_LOCK_TTL_MS=1500
eq "the next sync exits 0" 0 "$RC"
eq "it resumed the same run" 1 "$(sql "SELECT count(*) FROM sync_runs WHERE state = 'succeeded' AND attempt >= 2")"
calls=$(stats | jq '.corps[0].by_path["user/list_id"]')
check "pages fetched once, at most one twice ($calls calls for $pages pages)" test "$calls" -le $((pages + 1))
eq "members equal /sim/org" "$(org_users | cut -d'|' -f1,4 | md5sum)" "$(pg_users | cut -d'|' -f1,4 | md5sum)"
finish
