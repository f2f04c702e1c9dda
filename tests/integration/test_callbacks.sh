#!/usr/bin/env bash
# WeCom change callbacks (issue 17): two instances of `orgsync serve`, the
# simulator calling back the first one's /v1/callbacks/wecom/{corp_id} with real
# encrypted events when its directory is mutated. Members and departments
# created, renamed, moved and deleted show in PostgreSQL within seconds without
# a scheduled run (the whole directory then equals the simulator's); duplicates
# are stored once; bad signatures, stale timestamps, replays and a wrong corp
# are refused and change nothing; the GET check answers the echostr; a worker
# killed (-9) right after answering loses nothing. Prints the event-to-row
# latencies it measured (mutation sent -> row visible in PostgreSQL).
. "$(dirname "$0")/../lib/testlib.sh"
. "$(dirname "$0")/serve_helpers.sh"
serve_trap

SV_ENV="cb$$"
SDB=$(fresh_db)
SV_DBS+=("$SDB")
serve_sim 2 --enterprises 2 --departments 4 --users-per-dept 3 --seed 17 --rate 50
serve_corps "$SDB" 2
C=wwsim0001
TOKEN=Tok3nForCallbacks
AESKEY=abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG

# ---- the command: validation, and the keys never echoed ----
export ORGSYNC_PG_DSN="$SDB"
set +e
out=$(CBT=$TOKEN CBK=short "$ORGSYNC_BIN" enterprise set --corp-id $C --callback-token-env CBT \
    --callback-aeskey-env CBK 2>&1)
eq "a malformed EncodingAESKey is a usage error" 2 "$?"
check "it names the setting" grep -q -- "--callback-aeskey-env: CBK must hold an EncodingAESKey" <<<"$out"
out=$(CBT=$TOKEN "$ORGSYNC_BIN" enterprise set --corp-id $C --callback-token-env CBT 2>&1)
eq "the token alone is a usage error" 2 "$?"
out=$(CBT=$TOKEN CBK=$AESKEY "$ORGSYNC_BIN" enterprise set --corp-id $C --callback-token-env CBT \
    --callback-aeskey-env CBK 2>&1)
eq "enterprise set takes the callback keys" 0 "$?"
set -e
check "the keys are not printed" bash -c "! grep -q -e '$TOKEN' -e '$AESKEY' <<<'$out'"
eq "they are stored" "$TOKEN|$AESKEY" "$(psql_q "SELECT callback_token || '|' || callback_aeskey FROM enterprises WHERE corp_id = '$C'")"
# wwsim0002 gets the same keys: a message for wwsim0001 sent to its URL must
# still be refused (the receive id names the corp).
CBT=$TOKEN CBK=$AESKEY "$ORGSYNC_BIN" enterprise set --corp-id wwsim0002 --callback-token-env CBT \
    --callback-aeskey-env CBK >/dev/null
check "enterprise list shows callbacks configured" grep -q "$C .* yes .* yes" <<<"$("$ORGSYNC_BIN" enterprise list)"
unset ORGSYNC_PG_DSN

serve_start a 0 ORGSYNC_CALLBACK_LAG_ALERT_S=1
serve_start b 1 ORGSYNC_CALLBACK_LAG_ALERT_S=1
serve_start ro 0 ORGSYNC_READ_ONLY=on ORGSYNC_SCHEDULE=off ORGSYNC_WORKERS=1
serve_wait_ready a b ro
A="http://127.0.0.1:${SV_HTTP[a]}"
B="http://127.0.0.1:${SV_HTTP[b]}"

# A first full sync, so that updates and deletions have rows to change.
rid=$(serve_request_run a)
T=20 wait_for run_is "$rid" succeeded || not_ok "the first sync did not finish"
check "PostgreSQL equals the simulator after the sync" serve_data_equals_sim "$SDB"
# The digests of the departments a callback's member is in (sql/008) stop holding
# once the callback writes it: the next sync writes those departments in full.
trusted_digests() { psql_q "SELECT count(*) FROM department_digests d JOIN users u ON u.corp_id = d.corp_id
    AND d.dept_id = ANY (u.department) WHERE u.corp_id = '$C' AND u.userid = '$1' AND d.digest IS NOT NULL"; }
check "the first sync kept digests of u000001's departments" test "$(trusted_digests u000001)" -gt 0

# ---- crafting requests by hand (python3 + the openssl CLI, not our code) ----
# craft CORP TS NONCE XML -> "sig encrypted"
craft() {
    python3 - "$@" <<'EOF'
import base64, hashlib, os, struct, subprocess, sys
corp, ts, nonce, msg = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].encode()
key = base64.b64decode("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG=")
pt = os.urandom(16) + struct.pack(">I", len(msg)) + msg + corp.encode()
pad = 32 - len(pt) % 32
pt += bytes([pad]) * pad
ct = subprocess.run(["openssl", "enc", "-aes-256-cbc", "-nopad", "-K", key.hex(), "-iv", key[:16].hex()],
                    input=pt, capture_output=True, check=True).stdout
enc = base64.b64encode(ct).decode()
sig = hashlib.sha1("".join(sorted(["Tok3nForCallbacks", ts, nonce, enc])).encode()).hexdigest()
print(sig, enc)
EOF
}
event_xml() { # CORP CHANGE USERID [CREATETIME]
    echo "<xml><ToUserName><![CDATA[$1]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName><CreateTime>${4:-$(date +%s)}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[change_contact]]></Event><ChangeType><![CDATA[$2]]></ChangeType><UserID><![CDATA[$3]]></UserID></xml>"
}
# post URL_BASE PATH_CORP SIG TS NONCE ENC -> HTTP status, body in $SV_DIR/post.out
post() {
    curl -sS -o "$SV_DIR/post.out" -w '%{http_code}' -X POST -H 'Content-Type: text/xml' \
        --data-binary "<xml><ToUserName><![CDATA[$2]]></ToUserName><Encrypt><![CDATA[$6]]></Encrypt><AgentID><![CDATA[1]]></AgentID></xml>" \
        "$1/v1/callbacks/wecom/$2?msg_signature=$3&timestamp=$4&nonce=$5"
}
inbox() { psql_q "SELECT count(*) FROM callback_inbox"; }

# ---- the GET check ----
ts=$(date +%s)
read -r sig enc <<<"$(craft $C "$ts" n1 "echo-4711")"
encq=$(jq -rn --arg v "$enc" '$v|@uri')
eq "GET answers the decrypted echostr" "echo-4711" \
    "$(curl -fsS "$B/v1/callbacks/wecom/$C?msg_signature=$sig&timestamp=$ts&nonce=n1&echostr=$encq")"
gt=$(curl -fsS -o /dev/null -w '%{time_total}' "$B/v1/callbacks/wecom/$C?msg_signature=$sig&timestamp=$ts&nonce=n1&echostr=$encq")
echo "GET check answered in ${gt} s"
check "the GET check answers within WeCom's 1 s" awk "BEGIN{exit !($gt < 1)}"
eq "GET with a bad signature is 403" 403 \
    "$(curl -sS -o /dev/null -w '%{http_code}' "$B/v1/callbacks/wecom/$C?msg_signature=0$sig&timestamp=$ts&nonce=n1&echostr=$encq")"

# ---- refusals change nothing ----
before=$(inbox)
ts=$(date +%s)
read -r sig enc <<<"$(craft $C "$ts" n2 "$(event_xml $C update_user u000001)")"
eq "a bad signature is refused" 403 "$(post "$A" $C "$(printf %040d 0)" "$ts" n2 "$enc")"
check "with the error shape" jq -e '.error.code == "bad_signature"' "$SV_DIR/post.out"
eq "a wrong corp is refused" 403 "$(post "$A" wwsim0002 "$sig" "$ts" n2 "$enc")"
check "as wrong_corp" jq -e '.error.code == "wrong_corp"' "$SV_DIR/post.out"
old=$((ts - 400))
read -r sig2 enc2 <<<"$(craft $C "$old" n3 "$(event_xml $C update_user u000001)")"
eq "a stale timestamp is refused" 403 "$(post "$A" $C "$sig2" "$old" n3 "$enc2")"
read -r sig3 enc3 <<<"$(craft $C "$ts" n4 "<xml><ToUserName><![CDATA[$C]]></ToUserName><MsgType>event</MsgType></xml>")"
eq "a malformed message is refused" 400 "$(post "$A" $C "$sig3" "$ts" n4 "$enc3")"
eq "an unknown enterprise is 404" 404 "$(post "$A" wwnobody "$sig" "$ts" n2 "$enc")"
eq "a read-only deployment stores no callback" 403 "$(post "http://127.0.0.1:${SV_HTTP[ro]}" $C "$sig" "$ts" n2 "$enc")"
check "as read_only" jq -e '.error.code == "read_only"' "$SV_DIR/post.out"
eq "refusals stored nothing" "$before" "$(inbox)"
eq "the same request accepted" 200 "$(post "$A" $C "$sig" "$ts" n2 "$enc")"
eq "and replayed: refused" 409 "$(post "$B" $C "$sig" "$ts" n2 "$enc")"
check "as replayed" jq -e '.error.code == "replayed"' "$SV_DIR/post.out"
eq "stored once" $((before + 1)) "$(inbox)"

# ---- the simulator calls back: every event sent twice (duplicate 1) ----
curl -fsS -X POST "$SIM_URL/sim/callbacks" -d "{\"corp_id\":\"$C\",\"url\":\"$A/v1/callbacks/wecom/$C\",
    \"token\":\"$TOKEN\",\"aeskey\":\"$AESKEY\",\"duplicate\":1,\"reorder\":true}" >/dev/null
LAT=()
has_rows() { [ "$(psql_q "SELECT count(*) FROM $1")" -ge 1 ]; }
# measure DESCRIPTION SQL_CONDITION MUTATION_JSON: mutate, wait for the row.
measure() {
    local t0 t1
    t0=$(ms_now)
    curl -fsS -X POST "$SIM_URL/sim/mutate" -d "$3" >/dev/null || { not_ok "$1: mutate failed"; return; }
    if T=10 wait_for has_rows "$2"; then
        t1=$(ms_now)
        LAT+=($((t1 - t0)))
        ok "$1 in PostgreSQL after $((t1 - t0)) ms"
    else
        not_ok "$1: not in PostgreSQL within 10 s"
    fi
}
measure "a new member" "users WHERE corp_id = '$C' AND userid = 'cbnew1' AND deleted_at IS NULL AND department = '{2}'" \
    "{\"corp_id\":\"$C\",\"ops\":[{\"op\":\"add\",\"userid\":\"cbnew1\",\"name\":\"New One\",\"department\":[2]}]}"
measure "a renamed member" "users WHERE corp_id = '$C' AND userid = 'u000001' AND name = 'Renamed'" \
    "{\"corp_id\":\"$C\",\"ops\":[{\"op\":\"rename\",\"userid\":\"u000001\",\"name\":\"Renamed\"}]}"
eq "the callback's write dropped them" 0 "$(trusted_digests u000001)"
measure "a moved member" "users WHERE corp_id = '$C' AND userid = 'u000002' AND department = '{3,4}'" \
    "{\"corp_id\":\"$C\",\"ops\":[{\"op\":\"move\",\"userid\":\"u000002\",\"department\":[3,4]}]}"
measure "a deleted member" "users WHERE corp_id = '$C' AND userid = 'u000003' AND deleted_at IS NOT NULL" \
    "{\"corp_id\":\"$C\",\"ops\":[{\"op\":\"remove\",\"userid\":\"u000003\"}]}"
measure "a new department" "departments WHERE corp_id = '$C' AND dept_id = 5 AND name = 'CB Dept' AND parent_id = 2 AND deleted_at IS NULL" \
    "{\"corp_id\":\"$C\",\"ops\":[{\"op\":\"add_dept\",\"parentid\":2,\"name\":\"CB Dept\"}]}"
measure "a renamed department" "departments WHERE corp_id = '$C' AND dept_id = 5 AND name = 'CB Dept 2'" \
    "{\"corp_id\":\"$C\",\"ops\":[{\"op\":\"rename_dept\",\"id\":5,\"name\":\"CB Dept 2\"}]}"
measure "a deleted department" "departments WHERE corp_id = '$C' AND dept_id = 5 AND deleted_at IS NOT NULL" \
    "{\"corp_id\":\"$C\",\"ops\":[{\"op\":\"remove_dept\",\"id\":5}]}"
# A burst of random changes, reordered and duplicated.
curl -fsS -X POST "$SIM_URL/sim/mutate" -d "{\"corp_id\":\"$C\",\"random\":{\"add\":5,\"rename\":5,\"move\":5,\"remove\":3}}" >/dev/null
pending() { [ "$(psql_q "SELECT count(*) FROM callback_inbox WHERE applied_at IS NULL")" = 0 ]; }
T=15 wait_for pending
check "every event applied" pending
check "PostgreSQL equals the simulator, without a scheduled run" serve_data_equals_sim "$SDB"
eq "no scheduled or manual run besides the first" 1 "$(psql_q "SELECT count(*) FROM sync_runs WHERE env = '$SV_ENV' AND job = 'directory-sync'")"
# A full run afterwards reconciles and agrees (deletes nothing the callbacks wrote).
rid=$(serve_request_run b)
T=20 wait_for run_is "$rid" succeeded || not_ok "the second sync did not finish"
check "after a full run PostgreSQL still equals the simulator" serve_data_equals_sim "$SDB"
stats=$(curl -fsS "$SIM_URL/sim/callbacks")
events=$(jq .stats.events <<<"$stats")
delivered=$(jq .stats.delivered <<<"$stats")
eq "the simulator delivered every event twice" $((events * 2)) "$delivered"
eq "each stored once" 0 "$(psql_q "SELECT count(*) FROM (SELECT 1 FROM callback_inbox GROUP BY corp_id, change_type, target, create_time HAVING count(*) > 1) d")"
check "the duplicates were answered as duplicates" grep -q '"callback: duplicate event"' "$SV_DIR/a.log"
eq "the applier ran as its own job" 1 "$(psql_q "SELECT count(*) FROM sync_runs WHERE env = '$SV_ENV' AND job = 'callback-apply' AND state = 'running'")"
eq "under its own fence" 1 "$(psql_q "SELECT count(*) FROM leader_fence WHERE env = '$SV_ENV' AND job = 'callback-apply'")"
prog=$(curl -fsS "$B/v1/enterprises/$C/progress")
eq "progress: no callback waiting" 0 "$(jq .callbacks.waiting <<<"$prog")"
eq "progress: every stored callback applied" "$(psql_q "SELECT count(*) FROM callback_inbox WHERE corp_id = '$C'")" "$(jq .callbacks.applied <<<"$prog")"
check "progress: when the last was applied" jq -e '.callbacks.last_applied_at | test("Z$")' <<<"$prog"
sum=$(curl -fsS "$A/v1/callbacks")
eq "GET /v1/callbacks: nothing waiting" 0 "$(jq .waiting <<<"$sum")"
eq "GET /v1/callbacks: the enterprise's applied count" "$(jq .callbacks.applied <<<"$prog")" "$(jq -r ".enterprises[] | select(.corp_id == \"$C\") | .applied" <<<"$sum")"
check "the progress page has the callbacks table" bash -c "curl -fsS '$A/' | grep -q 'id=\"callbacks\"'"
# Metrics are per process: ask every worker (SO_REUSEPORT picks one per
# connection) until the applying one answers.
applier_metrics() {
    local i
    for i in $(seq 1 30); do
        curl -fsS "$A/metrics" "$B/metrics" | grep -E '^orgsync_callback_(apply_seconds_count|inbox_depth)' >"$SV_DIR/m.txt"
        [ "$(grep -c . "$SV_DIR/m.txt")" -ge 2 ] && return 0
    done
    return 1
}
check "metrics: the inbox depth and the store-to-row latency" applier_metrics
cat "$SV_DIR/m.txt"
check "delete_user was confirmed upstream (user/get)" test "$(sim_stat '.total.by_path["user/get"]')" -ge 1

# ---- the upstream fails: the event waits, the lag shows and is alerted ----
curl -fsS -X POST "$SIM_URL/sim/callbacks" -d "{\"corp_id\":\"$C\",\"url\":null}" >/dev/null
alerts() { cat "$SV_DIR/a.log" "$SV_DIR/b.log" | grep '"msg":"alert"' | grep -c '"kind":"callback_lag"' || true; }
alerts_before=$(alerts)
curl -fsS -X POST "$SIM_URL/sim/faults" -d '{"http500":1,"paths":["user/get"]}' >/dev/null
ts=$(date +%s)
read -r sig enc <<<"$(craft $C "$ts" n7 "$(event_xml $C update_user u000004 "$ts")")"
eq "an event while user/get fails: accepted" 200 "$(post "$B" $C "$sig" "$ts" n7 "$enc")"
# (The progress answer is cached per worker for 250 ms; GET /v1/callbacks is not.)
lagging() {
    curl -fsS "$B/v1/enterprises/$C/progress" >"$SV_DIR/lag.json" &&
        jq -e '.callbacks.waiting >= 1' "$SV_DIR/lag.json" &&
        curl -fsS "$B/v1/callbacks" >"$SV_DIR/lag2.json" &&
        jq -e ".waiting >= 1 and .lag_seconds > 1" "$SV_DIR/lag2.json"
}
T=10 wait_for lagging
check "progress shows it waiting, with its lag" lagging
lagging >/dev/null || { jq -c .callbacks "$SV_DIR/lag.json"; cat "$SV_DIR/lag2.json"; psql_q "SELECT event_id, target, applied_at, outcome, attempts, received_at, now() FROM callback_inbox WHERE applied_at IS NULL OR applied_at > now() - interval '15 seconds'"; }
alerted() { [ "$(alerts)" -gt "$alerts_before" ]; }
T=10 wait_for alerted
check "the lag past ORGSYNC_CALLBACK_LAG_ALERT_S is alerted" alerted
curl -fsS -X POST "$SIM_URL/sim/faults" -d '{"reset":true}' >/dev/null
T=20 wait_for pending
eq "once the upstream answers, it is applied" upserted "$(psql_q "SELECT outcome FROM callback_inbox WHERE target = 'u000004' AND create_time = $ts")"

# ---- kill -9 right after answering: nothing lost ----
curl -fsS -X POST "$SIM_URL/sim/mutate" -d "{\"corp_id\":\"$C\",\"ops\":[{\"op\":\"add\",\"userid\":\"cbkill\",\"department\":[1]}]}" >/dev/null
ts=$(date +%s)
read -r sig enc <<<"$(craft $C "$ts" n9 "$(event_xml $C create_user cbkill "$ts")")"
code=$(post "$A" $C "$sig" "$ts" n9 "$enc")
kill -KILL -- "-${SV_PID[a]}"
unset "SV_PID[a]"
eq "the event was answered 200 before the kill" 200 "$code"
eq "it is in the inbox" 1 "$(psql_q "SELECT count(*) FROM callback_inbox WHERE target = 'cbkill'")"
T=15 wait_for has_rows "users WHERE corp_id = '$C' AND userid = 'cbkill' AND deleted_at IS NULL" || true
eq "the surviving instance applied it" 1 "$(psql_q "SELECT count(*) FROM users WHERE corp_id = '$C' AND userid = 'cbkill' AND deleted_at IS NULL")"
eq "b leads the applier now" b "$(rcli GET "orgsync:$SV_ENV:lock:callback-apply" | cut -d'|' -f1 | cut -d/ -f1)"

# ---- kill -9 of the applying leader mid-burst: nothing lost ----
serve_start c 0
serve_wait_ready c
declare -A URL=([b]="$B" [c]="http://127.0.0.1:${SV_HTTP[c]}")
L=$(rcli GET "orgsync:$SV_ENV:lock:callback-apply" | cut -d'|' -f1 | cut -d/ -f1)
R=b
[ "$L" = b ] && R=c
echo "the applier leads on $L; callbacks go to $R; $L is killed mid-burst"
curl -fsS -X POST "$SIM_URL/sim/callbacks" -d "{\"corp_id\":\"$C\",\"url\":\"${URL[$R]}/v1/callbacks/wecom/$C\",
    \"token\":\"$TOKEN\",\"aeskey\":\"$AESKEY\",\"duplicate\":0.3,\"reorder\":true}" >/dev/null
# An event applied 8 days ago: the next leader prunes it when it starts.
psql_q "INSERT INTO callback_inbox (corp_id, create_time, change_type, kind, target, msg_signature, received_at, applied_at, outcome)
        VALUES ('$C', 1, 'update_user', 'user', 'ancient', 'old-signature', now() - interval '8 days', now() - interval '8 days', 'upserted')" >/dev/null
# Slow answers (150 ms each, one at a time per enterprise): the burst takes
# the leader several seconds, and it dies in the middle of it.
curl -fsS -X POST "$SIM_URL/sim/faults" -d '{"latency_ms":150}' >/dev/null
applied_start=$(psql_q "SELECT count(*) FROM callback_inbox WHERE applied_at IS NOT NULL")
curl -fsS -X POST "$SIM_URL/sim/mutate" -d "{\"corp_id\":\"$C\",\"random\":{\"add\":15,\"rename\":15,\"move\":15,\"remove\":5}}" >/dev/null
sleep 1.5
applied_before=$(psql_q "SELECT count(*) FROM callback_inbox WHERE applied_at IS NOT NULL")
waiting_before=$(psql_q "SELECT count(*) FROM callback_inbox WHERE applied_at IS NULL")
kill -KILL -- "-${SV_PID[$L]}"
unset "SV_PID[$L]"
echo "killed $L with $((applied_before - applied_start)) events of the burst applied and $waiting_before waiting"
check "the kill came mid-burst (events still waiting)" test "$waiting_before" -gt 0
curl -fsS -X POST "$SIM_URL/sim/faults" -d '{"reset":true}' >/dev/null
T=20 wait_for pending
check "every event of the burst applied after the leader died" pending
check "PostgreSQL equals the simulator" serve_data_equals_sim "$SDB"
eq "applied events older than 7 days pruned by the new leader" 0 "$(psql_q "SELECT count(*) FROM callback_inbox WHERE target = 'ancient'")"
eq "$R leads the applier now" "$R" "$(rcli GET "orgsync:$SV_ENV:lock:callback-apply" | cut -d'|' -f1 | cut -d/ -f1)"

# ---- the simulator retries a POST not answered 200 (here: 403 from the
#      read-only instance), 2 more times, then gives up ----
curl -fsS -X POST "$SIM_URL/sim/callbacks" -d "{\"corp_id\":\"$C\",\"url\":\"http://127.0.0.1:${SV_HTTP[ro]}/v1/callbacks/wecom/$C\",
    \"token\":\"$TOKEN\",\"aeskey\":\"$AESKEY\",\"retries\":2,\"retry_delay_ms\":100}" >/dev/null
s0=$(curl -fsS "$SIM_URL/sim/callbacks")
curl -fsS -X POST "$SIM_URL/sim/mutate" -d "{\"corp_id\":\"$C\",\"ops\":[{\"op\":\"add\",\"userid\":\"cbretry\",\"department\":[1]}]}" >/dev/null
gave_up() { [ "$(curl -fsS "$SIM_URL/sim/callbacks" | jq .stats.failed)" -gt "$(jq .stats.failed <<<"$s0")" ]; }
T=10 wait_for gave_up
s1=$(curl -fsS "$SIM_URL/sim/callbacks")
eq "the simulator tried 3 times in all" 3 $(($(jq .stats.posts <<<"$s1") - $(jq .stats.posts <<<"$s0")))
eq "2 of them retries" 2 $(($(jq .stats.retried <<<"$s1") - $(jq .stats.retried <<<"$s0")))
eq "then gave up" 1 $(($(jq .stats.failed <<<"$s1") - $(jq .stats.failed <<<"$s0")))

# ---- the figures ----
if [ ${#LAT[@]} -gt 0 ]; then
    sorted=$(printf '%s\n' "${LAT[@]}" | sort -n)
    n=${#LAT[@]}
    echo "event-to-row latency over $n changes (mutate sent -> row in PostgreSQL):" \
        "median $(sed -n "$(((n + 1) / 2))p" <<<"$sorted") ms, max $(tail -1 <<<"$sorted") ms"
    psql_q "SELECT 'store-to-row (inbox): n=' || count(*) || ' median ' ||
        round((percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM applied_at - received_at)) * 1000)::numeric) ||
        ' ms, max ' || round((max(extract(epoch FROM applied_at - received_at)) * 1000)::numeric) || ' ms'
        FROM callback_inbox WHERE outcome IN ('upserted', 'deleted')"
fi
check "no sanitizer report" serve_logs_clean
finish
